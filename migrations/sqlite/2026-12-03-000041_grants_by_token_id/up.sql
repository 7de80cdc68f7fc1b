-- A grant names the token it was given for by identity, not by name: a token removed and
-- added again under the same name is another credential, readable only by clients granted it
-- anew. Existing grants are converted through the token that has the name now; a grant of a
-- name no token has (given before the token existed) granted nothing yet and is dropped.
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
