DROP INDEX clients_previous_key_lookup;
ALTER TABLE clients DROP COLUMN previous_webhook_secret_expires_at;
ALTER TABLE clients DROP COLUMN previous_webhook_secret;
ALTER TABLE clients DROP COLUMN previous_key_expires_at;
ALTER TABLE clients DROP COLUMN previous_key_hash;
ALTER TABLE clients DROP COLUMN previous_key_lookup;
