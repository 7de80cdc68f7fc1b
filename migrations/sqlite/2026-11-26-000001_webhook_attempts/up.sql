-- One row per attempt to deliver a webhook: when it was sent, how it ended (the receiver's
-- HTTP status, and/or why it failed) and how long it took. The error text never holds the
-- receiver's URL or a secret. Rows go when their delivery is pruned (and with it, by the
-- foreign key, when a client's deliveries are removed).
-- Portable types only (TEXT, INTEGER, BIGINT, TIMESTAMP in UTC), as for a PostgreSQL tree.

CREATE TABLE webhook_attempts (
    id TEXT PRIMARY KEY NOT NULL,
    delivery_id TEXT NOT NULL REFERENCES outbox (id) ON DELETE CASCADE,
    attempted_at TIMESTAMP NOT NULL,
    status INTEGER,
    error TEXT,
    duration_ms BIGINT NOT NULL
);

CREATE INDEX webhook_attempts_delivery ON webhook_attempts (delivery_id, attempted_at);
