DROP TABLE pending_revocations;
ALTER TABLE token_managers DROP COLUMN overlap_seconds;
ALTER TABLE tokens DROP COLUMN resource_kind;
ALTER TABLE tokens DROP COLUMN username;
