-- Sinks put a token's current secret where a consumer reads it (a file, a GitLab CI/CD
-- variable). Each rotation writes a row per sink of its token into sink_deliveries in its own
-- transaction (the outbox); the sink dispatcher delivers the token's current version and
-- records it on the sink. Removing a token removes its sinks.
CREATE TABLE sinks (
    id TEXT PRIMARY KEY NOT NULL,
    name TEXT NOT NULL UNIQUE,
    token_id TEXT NOT NULL REFERENCES tokens (id) ON DELETE CASCADE,
    kind TEXT NOT NULL CHECK (kind IN ('file', 'gitlab-ci-variable')),
    settings TEXT NOT NULL,
    state TEXT NOT NULL CHECK (state IN ('pending', 'current', 'needs_attention')),
    delivered_version BIGINT,
    delivered_at TIMESTAMP,
    attempts INTEGER NOT NULL DEFAULT 0,
    next_attempt_at TIMESTAMP NOT NULL,
    lease_until TIMESTAMP,
    last_error TEXT,
    created_at TIMESTAMP NOT NULL
);
CREATE INDEX sinks_token ON sinks (token_id);

CREATE TABLE sink_deliveries (
    id TEXT PRIMARY KEY NOT NULL,
    sink_id TEXT NOT NULL REFERENCES sinks (id) ON DELETE CASCADE,
    version BIGINT NOT NULL,
    created_at TIMESTAMP NOT NULL
);
CREATE INDEX sink_deliveries_sink ON sink_deliveries (sink_id, version);
-- Other replicas' dispatchers notice new deliveries at once (store::changes).
CREATE TRIGGER sink_deliveries_changed AFTER INSERT ON sink_deliveries
    FOR EACH STATEMENT EXECUTE FUNCTION tokenwarden_notify_change();
