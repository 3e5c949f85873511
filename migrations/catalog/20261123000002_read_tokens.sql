-- Read-only stats tokens, one environment each; only SHA-256 hashes are stored.
CREATE TABLE IF NOT EXISTS read_tokens (
    id INT UNSIGNED NOT NULL AUTO_INCREMENT,
    env_id INT UNSIGNED NOT NULL,
    prefix VARCHAR(16) NOT NULL,
    token_hash BINARY(32) NOT NULL,
    created_at DATETIME(3) NOT NULL DEFAULT CURRENT_TIMESTAMP(3),
    revoked_at DATETIME(3) NULL,
    PRIMARY KEY (id),
    UNIQUE KEY read_tokens_hash (token_hash),
    KEY read_tokens_env (env_id, prefix),
    CONSTRAINT read_tokens_env_fk FOREIGN KEY (env_id) REFERENCES environments (id)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_unicode_ci;
