-- Public API keys (`sk_…`), one environment each: the key the apps send to
-- either door (the edge, the backend's public API). Only the lowercase hex
-- SHA-256 is stored, the same text the edge's KV record is keyed by.
CREATE TABLE IF NOT EXISTS api_keys (
    id INT UNSIGNED NOT NULL AUTO_INCREMENT,
    env_id INT UNSIGNED NOT NULL,
    -- The key's first 12 characters, to list and revoke it by; NULL for a
    -- key imported by its hash alone.
    prefix VARCHAR(16) NULL,
    key_hash CHAR(64) CHARACTER SET ascii NOT NULL,
    created_at DATETIME(3) NOT NULL DEFAULT CURRENT_TIMESTAMP(3),
    revoked_at DATETIME(3) NULL,
    PRIMARY KEY (id),
    UNIQUE KEY api_keys_hash (key_hash),
    KEY api_keys_env (env_id, prefix),
    CONSTRAINT api_keys_env_fk FOREIGN KEY (env_id) REFERENCES environments (id)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_unicode_ci;
