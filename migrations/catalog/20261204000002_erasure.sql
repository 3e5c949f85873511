-- Erasure (README "Erasure"): who asked for a person's events to be removed,
-- when, and how many were; and the people whose later events are dropped at
-- the write for a while (suppression). A person is stored only as a hash of
-- the environment, the kind of id and the id (backend::erasure::person_hash).
CREATE TABLE IF NOT EXISTS suppressions (
    env_id INT UNSIGNED NOT NULL,
    person BINARY(32) NOT NULL,
    until DATETIME NOT NULL,
    PRIMARY KEY (env_id, person),
    KEY suppressions_until (until)
) ENGINE=InnoDB;

CREATE TABLE IF NOT EXISTS erasures (
    id BIGINT UNSIGNED NOT NULL AUTO_INCREMENT,
    env_id INT UNSIGNED NOT NULL,
    id_kind ENUM('user_id', 'anonymous_id') NOT NULL,
    person BINARY(32) NOT NULL,
    requested_by VARCHAR(200) NOT NULL,
    started_at DATETIME(3) NOT NULL,
    finished_at DATETIME(3) NULL,
    -- Rows removed per shard, as JSON text {"shard name": n}, once finished.
    removed TEXT NULL,
    suppressed_until DATETIME NULL,
    PRIMARY KEY (id),
    KEY erasures_env (env_id, started_at)
) ENGINE=InnoDB;
