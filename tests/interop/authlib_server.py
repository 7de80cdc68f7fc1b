"""An OAuth 2.0 authorization server built on Authlib, for tokenwarden's interop tests.

Only glue lives here: in-memory storage, a login-and-consent form that accepts anyone, and a
discovery document. Client authentication, the authorization-code (with its PKCE extension),
refresh-token and revocation (RFC 7009) endpoints are Authlib's own, with its defaults: its grants accept only
`client_secret_basic` at the token endpoint, and its refresh grant answers without a new
refresh token and keeps the old one valid unless --rotate-refresh-tokens is given.

Usage: CLIENT_ID=… CLIENT_SECRET=… REDIRECT_URI=… python3 authlib_server.py
       [--rotate-refresh-tokens] [--access-token-lifetime SECONDS]
Prints `listening on http://127.0.0.1:PORT` once it accepts connections.
"""

import argparse
import html
import os
import secrets
import sys
import time

os.environ.setdefault("AUTHLIB_INSECURE_TRANSPORT", "1")  # plain http on loopback, for tests only

from authlib.integrations.flask_oauth2 import AuthorizationServer  # noqa: E402
from authlib.oauth2.rfc6749 import grants  # noqa: E402
from authlib.oauth2.rfc6749.models import AuthorizationCodeMixin, ClientMixin, TokenMixin  # noqa: E402
from authlib.oauth2.rfc7009 import RevocationEndpoint  # noqa: E402
from authlib.oauth2.rfc7636 import CodeChallenge  # noqa: E402
from authlib.oauth2.rfc8414 import AuthorizationServerMetadata  # noqa: E402
from flask import Flask, jsonify, request  # noqa: E402
from werkzeug.serving import make_server  # noqa: E402

SCOPE = "read write"


class Client(ClientMixin):
    """The one registered confidential client; it authenticates with HTTP Basic only."""

    def __init__(self, client_id, client_secret, redirect_uri):
        self.client_id, self.client_secret, self.redirect_uri = client_id, client_secret, redirect_uri

    def get_client_id(self):
        return self.client_id

    def get_default_redirect_uri(self):
        return self.redirect_uri

    def get_allowed_scope(self, scope):
        return " ".join(s for s in scope.split() if s in SCOPE.split()) if scope else SCOPE

    def check_redirect_uri(self, redirect_uri):
        return redirect_uri == self.redirect_uri

    def check_client_secret(self, client_secret):
        return secrets.compare_digest(client_secret.encode(), self.client_secret.encode())

    def check_endpoint_auth_method(self, method, endpoint):
        return method == "client_secret_basic"

    def check_response_type(self, response_type):
        return response_type == "code"

    def check_grant_type(self, grant_type):
        return grant_type in ("authorization_code", "refresh_token")


class Code(AuthorizationCodeMixin):
    def __init__(self, code, client_id, redirect_uri, scope, user, challenge, challenge_method):
        self.code, self.client_id, self.redirect_uri, self.scope, self.user = code, client_id, redirect_uri, scope, user
        self.code_challenge, self.code_challenge_method = challenge, challenge_method

    def get_redirect_uri(self):
        return self.redirect_uri

    def get_scope(self):
        return self.scope

    # Read by Authlib's PKCE extension (rfc7636.CodeChallenge) when the code is exchanged.
    def get_code_challenge(self):
        return self.code_challenge

    def get_code_challenge_method(self):
        return self.code_challenge_method


class Token(TokenMixin):
    """A refresh token's grant: its client, user and scope, and whether it was revoked."""

    def __init__(self, client_id, user, scope):
        self.client_id, self.user, self.scope, self.revoked = client_id, user, scope, False
        self.issued_at = time.time()

    def check_client(self, client):
        return client.get_client_id() == self.client_id

    def get_scope(self):
        return self.scope

    def get_expires_in(self):
        return 0

    def is_expired(self):
        return False

    def is_revoked(self):
        return self.revoked

    def get_user(self):
        return self.user

    def get_client(self):
        return CLIENT


CLIENT = None
CODES = {}
REFRESH_TOKENS = {}
ACCESS_TOKENS = {}
STATS = {"refreshes": 0, "revocations": 0}


class CodeGrant(grants.AuthorizationCodeGrant):
    def save_authorization_code(self, code, req):
        data = req.payload.data
        CODES[code] = Code(code, req.client.get_client_id(), req.payload.redirect_uri, req.payload.scope, req.user,
                           data.get("code_challenge"), data.get("code_challenge_method"))

    def query_authorization_code(self, code, client):
        found = CODES.get(code)
        return found if found and found.client_id == client.get_client_id() else None

    def delete_authorization_code(self, authorization_code):
        CODES.pop(authorization_code.code, None)

    def authenticate_user(self, authorization_code):
        return authorization_code.user


class RefreshGrant(grants.RefreshTokenGrant):
    def authenticate_refresh_token(self, refresh_token):
        token = REFRESH_TOKENS.get(refresh_token)
        return token if token and not token.revoked else None

    def authenticate_user(self, refresh_token):
        STATS["refreshes"] += 1
        return refresh_token.user

    def revoke_old_credential(self, refresh_token):
        if self.INCLUDE_NEW_REFRESH_TOKEN:
            refresh_token.revoked = True


class Revocation(RevocationEndpoint):
    def query_token(self, token_string, token_type_hint):
        return REFRESH_TOKENS.get(token_string) or ACCESS_TOKENS.get(token_string)

    def revoke_token(self, token, req):
        STATS["revocations"] += 1
        token.revoked = True


def save_token(token, req):
    grant = Token(req.client.get_client_id(), req.user, token.get("scope"))
    ACCESS_TOKENS[token["access_token"]] = grant
    if "refresh_token" in token:
        REFRESH_TOKENS[token["refresh_token"]] = grant


def build_app(args):
    app = Flask(__name__)
    lifetime = args.access_token_lifetime
    app.config["OAUTH2_TOKEN_EXPIRES_IN"] = {"authorization_code": lifetime, "refresh_token": lifetime}
    app.config["OAUTH2_REFRESH_TOKEN_GENERATOR"] = True
    server = AuthorizationServer(app, query_client=lambda cid: CLIENT if cid == CLIENT.client_id else None,
                                 save_token=save_token)
    RefreshGrant.INCLUDE_NEW_REFRESH_TOKEN = args.rotate_refresh_tokens
    # Authlib's own PKCE (RFC 7636): a code requested with a challenge is exchanged only with
    # its verifier; a request without one (the README's manual example) still works.
    server.register_grant(CodeGrant, [CodeChallenge(required=False)])
    server.register_grant(RefreshGrant)
    server.register_endpoint(Revocation)

    @app.route("/authorize", methods=["GET", "POST"])
    def authorize():
        if request.method == "GET":
            server.get_consent_grant(end_user="pending")
            fields = "".join(f'<input type="hidden" name="{html.escape(k)}" value="{html.escape(v)}">'
                             for k, v in request.args.items())
            # Posted without the query string: the request's parameters travel once, in the form
            # (Authlib's PKCE extension refuses a code_challenge sent twice).
            return f'<form method="post" action="/authorize">{fields}<input name="username"><button name="confirm" value="yes">Allow</button></form>'
        user = request.form.get("username") or "anyone"
        return server.create_authorization_response(grant_user=user if request.form.get("confirm") == "yes" else None)

    @app.route("/oauth/token", methods=["POST"])
    def issue_token():
        return server.create_token_response()

    @app.route("/oauth/revoke", methods=["POST"])
    def revoke_token():
        return server.create_endpoint_response(Revocation.ENDPOINT_NAME)

    @app.route("/.well-known/oauth-authorization-server")
    def metadata():
        base = request.host_url.rstrip("/")
        document = AuthorizationServerMetadata({
            "issuer": base,
            "authorization_endpoint": f"{base}/authorize",
            "token_endpoint": f"{base}/oauth/token",
            "revocation_endpoint": f"{base}/oauth/revoke",
            "response_types_supported": ["code"],
            "grant_types_supported": ["authorization_code", "refresh_token"],
            "token_endpoint_auth_methods_supported": ["client_secret_basic"],
        })
        document.validate()
        return jsonify(dict(document))

    @app.route("/_test/stats")
    def stats():
        return jsonify(STATS)

    return app


def main():
    global CLIENT
    parser = argparse.ArgumentParser()
    parser.add_argument("--rotate-refresh-tokens", action="store_true")
    parser.add_argument("--access-token-lifetime", type=int, default=3600)
    args = parser.parse_args()
    CLIENT = Client(os.environ["CLIENT_ID"], os.environ["CLIENT_SECRET"], os.environ["REDIRECT_URI"])
    http = make_server("127.0.0.1", 0, build_app(args), threaded=True)
    print(f"listening on http://127.0.0.1:{http.server_port}", flush=True)
    http.serve_forever()


if __name__ == "__main__":
    sys.exit(main())
