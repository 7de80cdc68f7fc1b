// An OpenID Provider built on panva's certified `oidc-provider`, for tokenwarden's interop tests.
//
// Only configuration lives here: one confidential client that may authenticate at the token
// endpoint with `client_secret_basic` only, the library's development login and consent pages
// (they accept any login), token revocation, and a short access-token lifetime when asked. The
// protocol — discovery, client authentication, codes, refresh tokens, revocation — is the
// library's.
//
// Usage: CLIENT_ID=… CLIENT_SECRET=… REDIRECT_URI=… node oidc_provider_server.mjs
//        [--rotate-refresh-tokens] [--access-token-lifetime SECONDS]
// Prints `listening on http://127.0.0.1:PORT` once it accepts connections.

import http from 'node:http';

import Provider from 'oidc-provider';

const args = process.argv.slice(2);
const rotate = args.includes('--rotate-refresh-tokens');
const lifetimeAt = args.indexOf('--access-token-lifetime');
const accessTokenLifetime = lifetimeAt >= 0 ? Number(args[lifetimeAt + 1]) : 3600;
const stats = { refreshes: 0, revocations: 0 };

const server = http.createServer();
server.listen(0, '127.0.0.1', () => {
  const issuer = `http://127.0.0.1:${server.address().port}`;
  const provider = new Provider(issuer, {
    clients: [{
      client_id: process.env.CLIENT_ID,
      client_secret: process.env.CLIENT_SECRET,
      redirect_uris: [process.env.REDIRECT_URI],
      grant_types: ['authorization_code', 'refresh_token'],
      response_types: ['code'],
      token_endpoint_auth_method: 'client_secret_basic',
    }],
    cookies: { keys: ['tokenwarden-interop-cookie-key'] },
    features: { devInteractions: { enabled: true }, revocation: { enabled: true } },
    pkce: { required: () => false },
    rotateRefreshToken: () => rotate,
    ttl: {
      AccessToken: accessTokenLifetime,
      AuthorizationCode: 60,
      Grant: 86400,
      IdToken: 3600,
      Interaction: 600,
      RefreshToken: 86400,
      Session: 86400,
    },
  });
  provider.on('grant.success', (ctx) => {
    if (ctx.oidc.params.grant_type === 'refresh_token') stats.refreshes += 1;
  });
  provider.on('revocation.success', () => { stats.revocations += 1; });
  provider.on('server_error', (ctx, err) => { console.error('server_error', err); });
  const handle = provider.callback();
  server.on('request', (req, res) => {
    if (req.url === '/_test/stats') {
      res.setHeader('content-type', 'application/json');
      res.end(JSON.stringify(stats));
      return;
    }
    handle(req, res);
  });
  console.log(`listening on ${issuer}`);
});
