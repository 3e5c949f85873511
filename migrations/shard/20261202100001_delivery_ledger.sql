-- The delivery ledger (README "Where did my event go"): per environment and
-- minute of receive time, what happened to the events its doors saw.
-- outcome: accepted | stored | resent | redelivered | lost |
--          rejected:<code> | dropped:<reason>.
-- source: what counted the row (an acceptance, a report, one write); rows
-- are written with INSERT IGNORE, so a source counted twice counts once.
-- Writes add their rows in the same transaction as the events they count.
-- summable: 0 for a row keyed by an acceptance or report id (it stays, so
-- a redelivered report or part counts once); 1 for a write's own row (its
-- source is that write's alone), which the background compaction sums
-- into one row per minute and outcome; 2 for such a sum (source all zeros).
CREATE TABLE IF NOT EXISTS delivery (
    env_id INT UNSIGNED NOT NULL,
    minute DATETIME NOT NULL,
    outcome VARBINARY(80) NOT NULL,
    source BINARY(16) NOT NULL,
    n BIGINT UNSIGNED NOT NULL,
    summable TINYINT UNSIGNED NOT NULL DEFAULT 0,
    PRIMARY KEY (env_id, minute, outcome, source),
    KEY delivery_env_summable (env_id, summable, minute)
) ENGINE=InnoDB;

-- Events the pipeline gave up on (the edge's dead-letter queue), by their
-- acceptance's receive time; one that is stored since with that receive
-- time was replayed. acceptance/n: the request it came in (the event's own
-- key and 1 when it carried none); the ledger counts it as accepted when no
-- write counted it (none of its dead letters stored, no row keyed by it).
CREATE TABLE IF NOT EXISTS dead_letters (
    env_id INT UNSIGNED NOT NULL,
    id BINARY(16) NOT NULL,
    received_at DATETIME(3) NOT NULL,
    minute DATETIME NOT NULL,
    acceptance BINARY(16) NOT NULL,
    n INT UNSIGNED NOT NULL,
    PRIMARY KEY (env_id, id, received_at),
    KEY dead_letters_env_minute (env_id, minute)
) ENGINE=InnoDB;

-- Refused requests as the doors sampled them (a bounded number per minute),
-- for the live debugger.
CREATE TABLE IF NOT EXISTS rejected_samples (
    env_id INT UNSIGNED NOT NULL,
    source BINARY(16) NOT NULL,
    seq SMALLINT UNSIGNED NOT NULL,
    stored_at DATETIME(3) NOT NULL DEFAULT CURRENT_TIMESTAMP(3),
    received_at DATETIME(3) NOT NULL,
    code VARCHAR(64) NOT NULL,
    message VARCHAR(500) NOT NULL,
    body TEXT NOT NULL,
    PRIMARY KEY (env_id, source, seq),
    KEY rejected_samples_env_stored (env_id, stored_at)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin;

-- When each row was stored (its transaction's start), for the live tail:
-- rows arrive out of receive-time order (queue delays, retries).
ALTER TABLE events
    ADD COLUMN stored_at DATETIME(3) NOT NULL DEFAULT CURRENT_TIMESTAMP(3),
    ADD KEY events_env_stored (env_id, stored_at);

CREATE OR REPLACE VIEW events_full AS
SELECT e.env_id, e.id, e.client_id, e.event_type, n.name, e.ts, e.received_at,
       e.user_id, e.anonymous_id, e.session_id, e.group_id, e.previous_id,
       e.properties, e.traits,
       JSON_MERGE_PRESERVE(COALESCE(c.context, '{}'), e.context) AS context,
       e.name_id, e.stored_at
FROM events e
JOIN event_names n ON n.id = e.name_id
LEFT JOIN contexts c ON c.id = e.context_id;
