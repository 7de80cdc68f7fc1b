ALTER TABLE client_grants DROP COLUMN acknowledged_at;
ALTER TABLE client_grants DROP COLUMN acknowledged_version;
