-- `client rotate-key` and `client rotate-webhook-secret` keep the previous key (as its lookup
-- part and hash) and the previous sealed webhook secret valid until the overlap ends.
ALTER TABLE clients ADD COLUMN previous_key_lookup TEXT;
ALTER TABLE clients ADD COLUMN previous_key_hash BLOB;
ALTER TABLE clients ADD COLUMN previous_key_expires_at TIMESTAMP;
ALTER TABLE clients ADD COLUMN previous_webhook_secret BLOB;
ALTER TABLE clients ADD COLUMN previous_webhook_secret_expires_at TIMESTAMP;
CREATE UNIQUE INDEX clients_previous_key_lookup ON clients (previous_key_lookup);
