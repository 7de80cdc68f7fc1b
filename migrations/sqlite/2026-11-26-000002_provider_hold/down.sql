DROP INDEX tokens_expiry;
ALTER TABLE providers DROP COLUMN not_before;
