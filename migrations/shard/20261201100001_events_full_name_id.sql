-- events_full also gives each row's name id, so `backend counters rebuild`
-- can count stored rows with the same function (and the same keys) as the
-- write path.
CREATE OR REPLACE VIEW events_full AS
SELECT e.env_id, e.id, e.client_id, e.event_type, n.name, e.ts, e.received_at,
       e.user_id, e.anonymous_id, e.session_id, e.group_id, e.previous_id,
       e.properties, e.traits,
       JSON_MERGE_PRESERVE(COALESCE(c.context, '{}'), e.context) AS context,
       e.name_id
FROM events e
JOIN event_names n ON n.id = e.name_id
LEFT JOIN contexts c ON c.id = e.context_id;
