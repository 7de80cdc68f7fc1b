-- tokenwarden's initial schema (SQLite). Times are UTC in TIMESTAMP columns; every
-- secret is an AES-256-GCM ciphertext in a BLOB bound to its table, row and field.

CREATE TABLE meta (
    name TEXT PRIMARY KEY NOT NULL,
    value BLOB NOT NULL
);

CREATE TABLE providers (
    id TEXT PRIMARY KEY NOT NULL,
    name TEXT NOT NULL UNIQUE,
    kind TEXT NOT NULL CHECK (kind IN ('gitlab', 'oauth2')),
    url TEXT,
    token_url TEXT,
    client_id TEXT,
    client_secret BLOB,
    redirect_uri TEXT,
    created_at TIMESTAMP NOT NULL,
    updated_at TIMESTAMP NOT NULL
);

CREATE TABLE tokens (
    id TEXT PRIMARY KEY NOT NULL,
    name TEXT NOT NULL UNIQUE,
    provider_id TEXT NOT NULL REFERENCES providers (id) ON DELETE RESTRICT,
    kind TEXT NOT NULL,
    resource TEXT,
    external_id TEXT,
    secret BLOB,
    refresh_token BLOB,
    version BIGINT NOT NULL DEFAULT 1,
    state TEXT NOT NULL CHECK (state IN ('active', 'rotating', 'retrying', 'needs_attention', 'paused', 'expired')),
    issued_at TIMESTAMP,
    expires_at TIMESTAMP,
    next_rotation_at TIMESTAMP,
    lifetime_seconds BIGINT,
    rotate_before_seconds BIGINT,
    rotate_at_fraction DOUBLE,
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

CREATE INDEX tokens_provider ON tokens (provider_id);
CREATE INDEX tokens_due ON tokens (next_rotation_at) WHERE state IN ('active', 'retrying');
CREATE INDEX tokens_lease ON tokens (lease_expires_at) WHERE state = 'rotating';

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
    name TEXT NOT NULL UNIQUE,
    role TEXT NOT NULL CHECK (role IN ('operator', 'reader')),
    api_key_lookup TEXT NOT NULL UNIQUE,
    api_key_hash BLOB NOT NULL,
    webhook_url TEXT,
    webhook_secret BLOB,
    created_at TIMESTAMP NOT NULL,
    updated_at TIMESTAMP NOT NULL
);

CREATE TABLE client_grants (
    client_id TEXT NOT NULL REFERENCES clients (id) ON DELETE CASCADE,
    token_name TEXT NOT NULL,
    PRIMARY KEY (client_id, token_name)
);

CREATE INDEX client_grants_token ON client_grants (token_name);

CREATE TABLE outbox (
    id TEXT PRIMARY KEY NOT NULL,
    client_id TEXT NOT NULL REFERENCES clients (id) ON DELETE CASCADE,
    event TEXT NOT NULL,
    token_name TEXT NOT NULL,
    payload TEXT NOT NULL,
    created_at TIMESTAMP NOT NULL,
    next_attempt_at TIMESTAMP NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0,
    delivered_at TIMESTAMP,
    last_error TEXT
);

CREATE INDEX outbox_pending ON outbox (next_attempt_at) WHERE delivered_at IS NULL;

CREATE TABLE audit_log (
    id TEXT PRIMARY KEY NOT NULL,
    occurred_at TIMESTAMP NOT NULL,
    actor TEXT NOT NULL,
    action TEXT NOT NULL,
    target_kind TEXT NOT NULL,
    target_name TEXT NOT NULL,
    detail TEXT
);

CREATE INDEX audit_log_target ON audit_log (target_name, occurred_at);
CREATE INDEX audit_log_time ON audit_log (occurred_at);
