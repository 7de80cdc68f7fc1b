ALTER TABLE client_grants ADD COLUMN token_name TEXT COLLATE "C";
UPDATE client_grants g SET token_name = t.name FROM tokens t WHERE t.id = g.token_id;
ALTER TABLE client_grants DROP CONSTRAINT client_grants_pkey;
ALTER TABLE client_grants DROP COLUMN token_id;
ALTER TABLE client_grants ALTER COLUMN token_name SET NOT NULL;
ALTER TABLE client_grants ADD PRIMARY KEY (client_id, token_name);
CREATE INDEX client_grants_token ON client_grants (token_name);
