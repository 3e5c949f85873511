-- Mergeable HyperLogLog sketches of distinct users (user_id, else
-- anonymous_id) and sessions, per environment and hour and per day.
-- period: 0 hour, 1 day; kind: 0 users, 1 sessions.
CREATE TABLE IF NOT EXISTS unique_sketches (
    env_id INT UNSIGNED NOT NULL,
    period TINYINT UNSIGNED NOT NULL,
    kind TINYINT UNSIGNED NOT NULL,
    start DATETIME NOT NULL,
    sketch MEDIUMBLOB NOT NULL,
    PRIMARY KEY (env_id, period, kind, start),
    KEY unique_sketches_prune (start)
) ENGINE=InnoDB;
