-- tokenwarden's schema on PostgreSQL: the same tables, columns and constraints as the SQLite
-- tree (migrations/sqlite, all four steps folded into one, since no PostgreSQL install predates
-- it). Times are UTC in TIMESTAMP (without time zone) columns, as Diesel's `Timestamp` expects;
-- every secret is an AES-256-GCM ciphertext in a BYTEA bound to its table, row and field.
-- Names sort with COLLATE "C" so listings come out in the same (byte) order as on SQLite,
-- whatever the server's locale.

CREATE TABLE meta (
    name TEXT PRIMARY KEY NOT NULL,
    value BYTEA NOT NULL
);

CREATE TABLE providers (
    id TEXT PRIMARY KEY NOT NULL,
    name TEXT COLLATE "C" NOT NULL UNIQUE,
    kind TEXT NOT NULL CHECK (kind IN ('gitlab', 'oauth2')),
    url TEXT,
    token_url TEXT,
    client_id TEXT,
    client_secret BYTEA,
    redirect_uri TEXT,
    created_at TIMESTAMP NOT NULL,
    updated_at TIMESTAMP NOT NULL,
    not_before TIMESTAMP
);

CREATE TABLE tokens (
    id TEXT PRIMARY KEY NOT NULL,
    name TEXT COLLATE "C" NOT NULL UNIQUE,
    provider_id TEXT NOT NULL REFERENCES providers (id) ON DELETE RESTRICT,
    kind TEXT NOT NULL,
    resource TEXT,
    external_id TEXT,
    secret BYTEA,
    refresh_token BYTEA,
    version BIGINT NOT NULL DEFAULT 1,
    state TEXT NOT NULL CHECK (state IN ('active', 'rotating', 'retrying', 'needs_attention', 'paused', 'expired')),
    issued_at TIMESTAMP,
    expires_at TIMESTAMP,
    next_rotation_at TIMESTAMP,
    lifetime_seconds BIGINT,
    rotate_before_seconds BIGINT,
    rotate_at_fraction DOUBLE PRECISION,
    lease_owner TEXT,
    lease_expires_at TIMESTAMP,
    attempt_id TEXT,
    attempt_count INTEGER NOT NULL DEFAULT 0,
    last_success_at TIMESTAMP,
    last_failure_at TIMESTAMP,
    last_error TEXT,
    attention_reason TEXT,
    recovery TEXT CHECK (recovery IN ('probe', 'retry_once', 'retry_in_flight')),
    scopes TEXT,
    created_at TIMESTAMP NOT NULL,
    updated_at TIMESTAMP NOT NULL
);

-- Every claim and commit changes `state`, a predicate column of the partial indexes, so no
-- update is HOT: vacuum the table sooner than the default 20 % of dead rows.
ALTER TABLE tokens SET (autovacuum_vacuum_scale_factor = 0.02, autovacuum_analyze_scale_factor = 0.02);

CREATE INDEX tokens_provider ON tokens (provider_id);
-- The states are spelt as literals, like the queries, so even a generic (prepared) plan uses
-- these partial indexes.
CREATE INDEX tokens_due ON tokens (next_rotation_at) WHERE state IN ('active', 'retrying');
CREATE INDEX tokens_lease ON tokens (lease_expires_at) WHERE state = 'rotating';
CREATE INDEX tokens_expiry ON tokens (expires_at) WHERE state IN ('active', 'retrying');

CREATE TABLE token_history (
    id TEXT PRIMARY KEY NOT NULL,
    token_id TEXT NOT NULL REFERENCES tokens (id) ON DELETE CASCADE,
    version BIGINT NOT NULL,
    event TEXT NOT NULL,
    actor TEXT NOT NULL,
    expires_at TIMESTAMP,
    occurred_at TIMESTAMP NOT NULL,
    UNIQUE (token_id, version)
);

CREATE TABLE clients (
    id TEXT PRIMARY KEY NOT NULL,
    name TEXT COLLATE "C" NOT NULL UNIQUE,
    role TEXT NOT NULL CHECK (role IN ('operator', 'reader')),
    api_key_lookup TEXT NOT NULL UNIQUE,
    api_key_hash BYTEA NOT NULL,
    webhook_url TEXT,
    webhook_secret BYTEA,
    created_at TIMESTAMP NOT NULL,
    updated_at TIMESTAMP NOT NULL
);

CREATE TABLE client_grants (
    client_id TEXT NOT NULL REFERENCES clients (id) ON DELETE CASCADE,
    token_name TEXT COLLATE "C" NOT NULL,
    PRIMARY KEY (client_id, token_name)
);

CREATE INDEX client_grants_token ON client_grants (token_name);

CREATE TABLE outbox (
    id TEXT PRIMARY KEY NOT NULL,
    client_id TEXT NOT NULL REFERENCES clients (id) ON DELETE CASCADE,
    event TEXT NOT NULL,
    token_name TEXT COLLATE "C" NOT NULL,
    payload TEXT NOT NULL,
    created_at TIMESTAMP NOT NULL,
    next_attempt_at TIMESTAMP NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0,
    delivered_at TIMESTAMP,
    last_error TEXT,
    leased_until TIMESTAMP,
    lease_owner TEXT,
    abandoned_at TIMESTAMP
);

CREATE INDEX outbox_pending ON outbox (next_attempt_at) WHERE delivered_at IS NULL AND abandoned_at IS NULL;
CREATE INDEX outbox_leased ON outbox (leased_until) WHERE leased_until IS NOT NULL;
CREATE INDEX outbox_delivered ON outbox (delivered_at) WHERE delivered_at IS NOT NULL;
CREATE INDEX outbox_token ON outbox (token_name, created_at);
-- PostgreSQL does not index foreign keys by itself; client removal cascades through this.
CREATE INDEX outbox_client ON outbox (client_id, created_at);

CREATE TABLE webhook_attempts (
    id TEXT PRIMARY KEY NOT NULL,
    delivery_id TEXT NOT NULL REFERENCES outbox (id) ON DELETE CASCADE,
    attempted_at TIMESTAMP NOT NULL,
    status INTEGER,
    error TEXT,
    duration_ms BIGINT NOT NULL
);

CREATE INDEX webhook_attempts_delivery ON webhook_attempts (delivery_id, attempted_at);

CREATE TABLE audit_log (
    id TEXT PRIMARY KEY NOT NULL,
    occurred_at TIMESTAMP NOT NULL,
    actor TEXT NOT NULL,
    action TEXT NOT NULL,
    target_kind TEXT NOT NULL,
    target_name TEXT COLLATE "C" NOT NULL,
    detail TEXT
);

CREATE INDEX audit_log_target ON audit_log (target_name, occurred_at);
CREATE INDEX audit_log_time ON audit_log (occurred_at);

-- Every committed change to tokens or providers, by any replica, the CLI or by hand, tells
-- the other replicas' schedulers to re-read their window (store::changes). NOTIFY is sent at
-- COMMIT and identical notifications within one transaction are folded into one. Channels
-- belong to the whole database, so the payload names the schema, and a watch ignores other
-- schemas' changes.
CREATE FUNCTION tokenwarden_notify_change() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('tokenwarden_changes', TG_TABLE_SCHEMA);
    RETURN NULL;
END;
$$;

CREATE TRIGGER tokens_changed AFTER INSERT OR UPDATE OR DELETE ON tokens
    FOR EACH STATEMENT EXECUTE FUNCTION tokenwarden_notify_change();
CREATE TRIGGER providers_changed AFTER INSERT OR UPDATE OR DELETE ON providers
    FOR EACH STATEMENT EXECUTE FUNCTION tokenwarden_notify_change();
