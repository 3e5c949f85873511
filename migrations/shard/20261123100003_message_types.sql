-- Segment-compatible messages: the type as a tiny integer (0 track,
-- 1 identify, 2 page, 3 screen, 4 group, 5 alias), traits, group and alias ids.
-- Names are per (environment, type), so "page" views and a "page" track
-- event stay apart and counts by name also give counts by type.
ALTER TABLE events
    ADD COLUMN event_type TINYINT UNSIGNED NOT NULL DEFAULT 0 AFTER name_id,
    ADD COLUMN traits JSON NULL,
    ADD COLUMN group_id VARCHAR(200) NULL,
    ADD COLUMN previous_id VARCHAR(200) NULL;

ALTER TABLE event_names
    ADD COLUMN event_type TINYINT UNSIGNED NOT NULL DEFAULT 0 AFTER env_id,
    DROP INDEX event_names_env_name,
    ADD UNIQUE KEY event_names_env_type_name (env_id, event_type, name);
