-- A grant names the token it was given for by identity, not by name: a token removed and
-- added again under the same name is another credential, readable only by clients granted it
-- anew. Existing grants are converted through the token that has the name now. A grant of a
-- name no token has (given before the token existed) granted nothing yet and is dropped: each
-- is recorded in the audit log, so an operator can grant it again once the token exists
-- (`tokenwarden audit` shows `client.grant_dropped`).
INSERT INTO audit_log (id, occurred_at, actor, action, target_kind, target_name, detail)
    SELECT gen_random_uuid()::text, (now() AT TIME ZONE 'UTC'), 'migration', 'client.grant_dropped', 'client', c.name,
           'token=' || g.token_name || ' (no token had this name; grant it again once the token exists)'
    FROM client_grants g JOIN clients c ON c.id = g.client_id
    WHERE NOT EXISTS (SELECT 1 FROM tokens t WHERE t.name = g.token_name);
ALTER TABLE client_grants ADD COLUMN token_id TEXT;
UPDATE client_grants g SET token_id = t.id FROM tokens t WHERE t.name = g.token_name;
DELETE FROM client_grants WHERE token_id IS NULL;
ALTER TABLE client_grants DROP CONSTRAINT client_grants_pkey;
ALTER TABLE client_grants DROP COLUMN token_name;
ALTER TABLE client_grants ALTER COLUMN token_id SET NOT NULL;
ALTER TABLE client_grants ADD PRIMARY KEY (client_id, token_id);
ALTER TABLE client_grants ADD FOREIGN KEY (token_id) REFERENCES tokens (id) ON DELETE CASCADE;
CREATE INDEX client_grants_token ON client_grants (token_id);
