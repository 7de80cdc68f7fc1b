-- Issue 19: standard OAuth 2.0 servers.
-- providers.client_auth: how the client authenticates at the token endpoint (basic, post, none).
-- Every provider stored before this migration sent its credentials in the form body, which is
-- what worked for it, so existing rows keep `post`; new oauth2 providers default to `basic`
-- (chosen by `provider add`, not by this column default).
ALTER TABLE providers ADD COLUMN client_auth TEXT NOT NULL DEFAULT 'post';
-- What `provider add --issuer` discovered (RFC 8414 / OpenID Connect discovery).
ALTER TABLE providers ADD COLUMN issuer TEXT;
ALTER TABLE providers ADD COLUMN authorization_url TEXT;
ALTER TABLE providers ADD COLUMN revocation_url TEXT;
-- tokens.refresh_token_rotates: NULL until the first refresh; 1 when the server issued a new
-- refresh token, 0 when it kept the old one (then a lost answer cannot lose the grant).
ALTER TABLE tokens ADD COLUMN refresh_token_rotates INTEGER;
-- token_history.scopes: the scope a refresh answer granted, recorded when it changed.
ALTER TABLE token_history ADD COLUMN scopes TEXT;
