DROP TRIGGER client_grants_changed ON client_grants;
ALTER TABLE client_grants DROP COLUMN acknowledged_at;
ALTER TABLE client_grants DROP COLUMN acknowledged_version;
