-- Webhook delivery bookkeeping for the outbox dispatcher.
-- leased_until / lease_owner: a short claim, so two dispatchers (two processes on one
-- database) never send the same delivery at once, and a client has one delivery in flight.
-- abandoned_at: set when a delivery kept failing for the whole retry window.

ALTER TABLE outbox ADD COLUMN leased_until TIMESTAMP;
ALTER TABLE outbox ADD COLUMN lease_owner TEXT;
ALTER TABLE outbox ADD COLUMN abandoned_at TIMESTAMP;

DROP INDEX outbox_pending;
CREATE INDEX outbox_pending ON outbox (next_attempt_at) WHERE delivered_at IS NULL AND abandoned_at IS NULL;
CREATE INDEX outbox_leased ON outbox (leased_until) WHERE leased_until IS NOT NULL;
CREATE INDEX outbox_delivered ON outbox (delivered_at) WHERE delivered_at IS NOT NULL;
CREATE INDEX outbox_token ON outbox (token_name, created_at);
