-- Contexts stored once. The parts of an event's context that repeat from
-- event to event (library, user agent, device, os, app, locale, country,
-- colo, ...) are kept once per environment in `contexts` and referenced by
-- `events.context_id`; `events.context` keeps only the keys that change per
-- event (page, ip, campaign, referrer, location, traits). context_id 0 means
-- no shared part (and marks rows written before this migration, whose
-- `context` holds everything).
CREATE TABLE IF NOT EXISTS contexts (
    id INT UNSIGNED NOT NULL AUTO_INCREMENT,
    env_id INT UNSIGNED NOT NULL,
    -- First 16 bytes of the SHA-256 of the shared part's JSON text.
    hash BINARY(16) NOT NULL,
    context JSON NOT NULL,
    PRIMARY KEY (id),
    UNIQUE KEY contexts_env_hash (env_id, hash)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin;

-- events_env_name_ts served no query: counts by name come from the counter
-- tables; per-name scans of raw events use events_env_ts and a filter.
ALTER TABLE events
    ADD COLUMN context_id INT UNSIGNED NOT NULL DEFAULT 0 AFTER properties,
    DROP INDEX events_env_name_ts;

-- Events as a person reads them: names resolved, context whole again.
CREATE OR REPLACE VIEW events_full AS
SELECT e.env_id, e.id, e.client_id, e.event_type, n.name, e.ts, e.received_at,
       e.user_id, e.anonymous_id, e.session_id, e.group_id, e.previous_id,
       e.properties, e.traits,
       JSON_MERGE_PRESERVE(COALESCE(c.context, '{}'), e.context) AS context
FROM events e
JOIN event_names n ON n.id = e.name_id
LEFT JOIN contexts c ON c.id = e.context_id;
