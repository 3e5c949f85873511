-- One shard: the events of the environments routed to it.

-- Event names stored once per environment, referenced by a small integer.
-- VARBINARY so comparison is byte-exact ('a' and 'a ' are different names)
-- on MySQL and MariaDB alike.
CREATE TABLE IF NOT EXISTS event_names (
    id INT UNSIGNED NOT NULL AUTO_INCREMENT,
    env_id INT UNSIGNED NOT NULL,
    name VARBINARY(800) NOT NULL,
    PRIMARY KEY (id),
    UNIQUE KEY event_names_env_name (env_id, name)
) ENGINE=InnoDB;

-- id: the envelope id as 16 bytes (a UUID's own bytes; other client ids
-- hashed with UUIDv5, the original text kept in client_id). UUIDv7 ids are
-- time-ordered, so inserts append to the primary key within an environment.
CREATE TABLE IF NOT EXISTS events (
    env_id INT UNSIGNED NOT NULL,
    id BINARY(16) NOT NULL,
    name_id INT UNSIGNED NOT NULL,
    ts DATETIME(3) NOT NULL,
    received_at DATETIME(3) NOT NULL,
    user_id VARCHAR(200) NULL,
    anonymous_id VARCHAR(200) NULL,
    session_id VARCHAR(200) NULL,
    client_id VARCHAR(64) NULL,
    properties JSON NOT NULL,
    context JSON NOT NULL,
    PRIMARY KEY (env_id, id),
    KEY events_env_ts (env_id, ts),
    KEY events_env_name_ts (env_id, name_id, ts)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin;

-- Derived per-minute counts of inserted events (never of duplicates),
-- flushed from memory every second; rebuildable from events.
CREATE TABLE IF NOT EXISTS event_counts_minute (
    env_id INT UNSIGNED NOT NULL,
    minute DATETIME NOT NULL,
    name_id INT UNSIGNED NOT NULL,
    events BIGINT UNSIGNED NOT NULL,
    PRIMARY KEY (env_id, minute, name_id)
) ENGINE=InnoDB;
