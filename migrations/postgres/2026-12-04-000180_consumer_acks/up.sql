-- A reader granted a token says which version it now uses (`POST /v1/tokens/{name}/ack`);
-- `token show` lists it and `tokenwarden_consumer_version_lag` exports how far behind it is.
ALTER TABLE client_grants ADD COLUMN acknowledged_version BIGINT;
ALTER TABLE client_grants ADD COLUMN acknowledged_at TIMESTAMP;
-- Other replicas' gauges follow an acknowledgement like any change to tokens (store::changes).
CREATE TRIGGER client_grants_changed AFTER INSERT OR UPDATE OR DELETE ON client_grants
    FOR EACH STATEMENT EXECUTE FUNCTION tokenwarden_notify_change();
