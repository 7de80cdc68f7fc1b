-- Tokens tokenwarden created at GitLab through a managing credential (`token create --manager`,
-- issue 13): which token manages each, and what it was created with (access level, scopes), so
-- it can be made again the same way. A manager that manages tokens cannot be removed.
CREATE TABLE token_managers (
    token_id TEXT PRIMARY KEY NOT NULL REFERENCES tokens (id) ON DELETE CASCADE,
    manager_id TEXT NOT NULL,
    access_level INTEGER NOT NULL,
    scopes TEXT NOT NULL
);
CREATE INDEX token_managers_manager ON token_managers (manager_id);
