-- Sessions of the operator console (`/ui`): the cookie carries a random id, the row only its
-- SHA-256; each session belongs to an operator client (gone with it) and carries the CSRF token
-- its forms must send back. Sessions end after 12 hours or at sign-out.
CREATE TABLE ui_sessions (
    id_hash TEXT PRIMARY KEY NOT NULL,
    client_id TEXT NOT NULL REFERENCES clients (id) ON DELETE CASCADE,
    csrf_token TEXT NOT NULL,
    created_at TIMESTAMP NOT NULL,
    expires_at TIMESTAMP NOT NULL
);
CREATE INDEX ui_sessions_expiry ON ui_sessions (expires_at);
