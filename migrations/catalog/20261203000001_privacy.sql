-- Each environment's privacy policy, applied at both doors before an event
-- leaves them (intake::enrich::Policy): what becomes of the client's
-- address, how much of its location is kept, and what becomes of bots'
-- events. The edge reads the same settings from its keys' KV records.
ALTER TABLE environments
    ADD COLUMN ip_policy ENUM('drop', 'truncate', 'keep') NOT NULL DEFAULT 'truncate',
    ADD COLUMN geo_policy ENUM('full', 'city', 'country', 'none') NOT NULL DEFAULT 'city',
    ADD COLUMN bot_policy ENUM('keep', 'flag', 'drop') NOT NULL DEFAULT 'flag';
