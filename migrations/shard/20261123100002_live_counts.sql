-- Per-second counts for the live window (pruned after
-- SLUICE_SECOND_COUNTS_RETENTION_HOURS) and per-minute counts by country.
CREATE TABLE IF NOT EXISTS event_counts_second (
    env_id INT UNSIGNED NOT NULL,
    second DATETIME NOT NULL,
    name_id INT UNSIGNED NOT NULL,
    events INT UNSIGNED NOT NULL,
    PRIMARY KEY (env_id, second, name_id),
    KEY event_counts_second_prune (second)
) ENGINE=InnoDB;

CREATE TABLE IF NOT EXISTS country_counts_minute (
    env_id INT UNSIGNED NOT NULL,
    minute DATETIME NOT NULL,
    country VARBINARY(8) NOT NULL,
    events BIGINT UNSIGNED NOT NULL,
    PRIMARY KEY (env_id, minute, country)
) ENGINE=InnoDB;

ALTER TABLE event_counts_minute ADD KEY event_counts_minute_prune (minute);
