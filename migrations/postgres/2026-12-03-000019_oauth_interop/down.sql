ALTER TABLE token_history DROP COLUMN scopes;
ALTER TABLE tokens DROP COLUMN refresh_token_rotates;
ALTER TABLE providers DROP COLUMN revocation_url;
ALTER TABLE providers DROP COLUMN authorization_url;
ALTER TABLE providers DROP COLUMN issuer;
ALTER TABLE providers DROP COLUMN client_auth;
