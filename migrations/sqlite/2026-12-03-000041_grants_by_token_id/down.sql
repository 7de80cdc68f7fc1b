CREATE TABLE client_grants_by_name (
    client_id TEXT NOT NULL REFERENCES clients (id) ON DELETE CASCADE,
    token_name TEXT NOT NULL,
    PRIMARY KEY (client_id, token_name)
);
INSERT INTO client_grants_by_name (client_id, token_name)
    SELECT g.client_id, t.name FROM client_grants g JOIN tokens t ON t.id = g.token_id;
DROP TABLE client_grants;
ALTER TABLE client_grants_by_name RENAME TO client_grants;
CREATE INDEX client_grants_token ON client_grants (token_name);
