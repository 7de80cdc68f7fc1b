-- A grant names the token it was given for by identity, not by name: a token removed and
-- added again under the same name is another credential, readable only by clients granted it
-- anew. Existing grants are converted through the token that has the name now. A grant of a
-- name no token has (given before the token existed) granted nothing yet and is dropped: each
-- is recorded in the audit log, so an operator can grant it again once the token exists
-- (`tokenwarden audit` shows `client.grant_dropped`).
INSERT INTO audit_log (id, occurred_at, actor, action, target_kind, target_name, detail)
    SELECT lower(hex(randomblob(16))), CURRENT_TIMESTAMP, 'migration', 'client.grant_dropped', 'client', c.name,
           'token=' || g.token_name || ' (no token had this name; grant it again once the token exists)'
    FROM client_grants g JOIN clients c ON c.id = g.client_id
    WHERE NOT EXISTS (SELECT 1 FROM tokens t WHERE t.name = g.token_name);
CREATE TABLE client_grants_by_id (
    client_id TEXT NOT NULL REFERENCES clients (id) ON DELETE CASCADE,
    token_id TEXT NOT NULL REFERENCES tokens (id) ON DELETE CASCADE,
    PRIMARY KEY (client_id, token_id)
);
INSERT INTO client_grants_by_id (client_id, token_id)
    SELECT g.client_id, t.id FROM client_grants g JOIN tokens t ON t.name = g.token_name;
DROP TABLE client_grants;
ALTER TABLE client_grants_by_id RENAME TO client_grants;
CREATE INDEX client_grants_token ON client_grants (token_id);
