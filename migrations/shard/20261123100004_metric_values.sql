-- Metric values, maintained like the counts: `events` is how many events
-- contributed, `total` the sum of their values (count metrics add 1 each).
CREATE TABLE IF NOT EXISTS metric_values_minute (
    env_id INT UNSIGNED NOT NULL,
    minute DATETIME NOT NULL,
    metric_id INT UNSIGNED NOT NULL,
    events BIGINT UNSIGNED NOT NULL,
    total DOUBLE NOT NULL,
    PRIMARY KEY (env_id, minute, metric_id),
    KEY metric_values_minute_prune (minute)
) ENGINE=InnoDB;

CREATE TABLE IF NOT EXISTS metric_values_second (
    env_id INT UNSIGNED NOT NULL,
    second DATETIME NOT NULL,
    metric_id INT UNSIGNED NOT NULL,
    events INT UNSIGNED NOT NULL,
    total DOUBLE NOT NULL,
    PRIMARY KEY (env_id, second, metric_id),
    KEY metric_values_second_prune (second)
) ENGINE=InnoDB;
