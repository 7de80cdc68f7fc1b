-- Deploy tokens (issue 13): GitLab has no rotate endpoint for them, so a rotation creates a new
-- one and the old one is revoked later. tokens.username is the username the current secret
-- authenticates with; tokens.resource_kind says whether a deploy token's resource is a project
-- or a group (other kinds imply it). token_managers.overlap_seconds is how long an old deploy
-- token stays valid after its successor was committed when not every reader acknowledged it.
ALTER TABLE tokens ADD COLUMN username TEXT;
ALTER TABLE tokens ADD COLUMN resource_kind TEXT;
ALTER TABLE token_managers ADD COLUMN overlap_seconds BIGINT;

-- Old credentials to revoke at GitLab through a manager, written in the transaction that
-- committed their successor (like the outbox), so a crash never forgets one. Kept without a
-- foreign key: removing the token does not cancel the revocation of its old secret.
CREATE TABLE pending_revocations (
    id TEXT PRIMARY KEY NOT NULL,
    token_id TEXT NOT NULL,
    token_name TEXT NOT NULL,
    provider_id TEXT NOT NULL,
    manager_id TEXT NOT NULL,
    token_kind TEXT NOT NULL,
    resource_kind TEXT NOT NULL CHECK (resource_kind IN ('project', 'group')),
    resource TEXT NOT NULL,
    external_id TEXT NOT NULL,
    version BIGINT NOT NULL,
    replaced_by_version BIGINT NOT NULL,
    not_after TIMESTAMP NOT NULL,
    created_at TIMESTAMP NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0,
    next_attempt_at TIMESTAMP NOT NULL,
    lease_until TIMESTAMP,
    last_error TEXT,
    revoked_at TIMESTAMP
);
CREATE INDEX pending_revocations_due ON pending_revocations (revoked_at, next_attempt_at);
CREATE INDEX pending_revocations_token ON pending_revocations (token_id);
CREATE INDEX pending_revocations_manager ON pending_revocations (manager_id);
