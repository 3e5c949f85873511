-- Each environment's retention of raw events, in days of event time (NULL:
-- kept for ever). `backend serve` deletes older events, ledger rows and
-- refusal samples from the environment's shards (README "Retention"); the
-- counter tables keep their own retention. The edge reads the same number
-- from its keys' KV records, for its dead letters' expirationTtl.
ALTER TABLE environments
    ADD COLUMN retention_days INT UNSIGNED NULL;
