-- Named numeric aggregates an environment defines over one event name:
-- sum or avg of a numeric property, or a count.
CREATE TABLE IF NOT EXISTS metrics (
    id INT UNSIGNED NOT NULL AUTO_INCREMENT,
    env_id INT UNSIGNED NOT NULL,
    name VARCHAR(64) NOT NULL,
    event_name VARCHAR(200) NOT NULL,
    aggregate VARCHAR(8) NOT NULL,
    property VARCHAR(64) NULL,
    created_at DATETIME(3) NOT NULL DEFAULT CURRENT_TIMESTAMP(3),
    PRIMARY KEY (id),
    UNIQUE KEY metrics_env_name (env_id, name),
    CONSTRAINT metrics_env_fk FOREIGN KEY (env_id) REFERENCES environments (id)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_unicode_ci;
