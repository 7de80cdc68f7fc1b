-- providers.not_before: a provider's `Retry-After`, kept in the store so that every process on
-- the database (the daemon, replicas, `tokenwarden token rotate`) honours it: no request to that
-- provider is made before this time.
ALTER TABLE providers ADD COLUMN not_before TIMESTAMP;

-- The expiry sweep reads GitLab tokens whose expiry passed while they were still scheduled; this
-- index spells the states like the sweep's query so SQLite can use it.
CREATE INDEX tokens_expiry ON tokens (expires_at) WHERE state IN ('active', 'retrying');
