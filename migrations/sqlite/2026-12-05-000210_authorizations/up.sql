-- OAuth authorisations in flight (issue 12): one row per consent link handed out. The state
-- sent to the provider is kept only as its SHA-256 (the callback's capability), the PKCE
-- verifier sealed (and dropped when the link is used); a callback marks the row used before it
-- does anything else, so a link works once. Rows are bound to the token name, provider and kind they were made for, and to
-- the token's row id when they re-authorise an existing token.
CREATE TABLE authorizations (
    id TEXT PRIMARY KEY NOT NULL,
    state_hash TEXT NOT NULL UNIQUE,
    token_name TEXT NOT NULL,
    token_id TEXT,
    provider_id TEXT NOT NULL REFERENCES providers (id) ON DELETE CASCADE,
    kind TEXT NOT NULL,
    scopes TEXT NOT NULL,
    redirect_uri TEXT NOT NULL,
    return_to TEXT,
    verifier BLOB,
    requested_by TEXT NOT NULL,
    created_at TIMESTAMP NOT NULL,
    expires_at TIMESTAMP NOT NULL,
    used_at TIMESTAMP
);
CREATE INDEX authorizations_expiry ON authorizations (expires_at);

-- Who consented to a token's OAuth grant (GitLab's user id and username), learnt at the
-- callback; a re-authorisation by another user is refused.
CREATE TABLE grant_owners (
    token_id TEXT PRIMARY KEY NOT NULL REFERENCES tokens (id) ON DELETE CASCADE,
    user_id TEXT NOT NULL,
    username TEXT NOT NULL,
    authorized_at TIMESTAMP NOT NULL
);

-- Scopes an authorisation at this provider requests (space-separated; NULL: the kind's default).
ALTER TABLE providers ADD COLUMN scopes TEXT;
