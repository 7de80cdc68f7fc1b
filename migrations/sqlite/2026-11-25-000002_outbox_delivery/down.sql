DROP INDEX outbox_token;
DROP INDEX outbox_delivered;
DROP INDEX outbox_leased;
DROP INDEX outbox_pending;

ALTER TABLE outbox DROP COLUMN abandoned_at;
ALTER TABLE outbox DROP COLUMN lease_owner;
ALTER TABLE outbox DROP COLUMN leased_until;

CREATE INDEX outbox_pending ON outbox (next_attempt_at) WHERE delivered_at IS NULL;
