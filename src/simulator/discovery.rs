//! `GET /.well-known/openid-configuration`, as GitLab (an OpenID provider) serves it: the
//! issuer is the address the request was sent to, so `provider add --issuer` can be tried
//! against the simulator. There is no RFC 8414 document, as at GitLab.

use axum::Json;
use axum::http::{HeaderMap, header};
use serde_json::{Value, json};

/// The discovery document for the host the request named.
pub async fn openid_configuration(headers: HeaderMap) -> Json<Value> {
    let host = headers.get(header::HOST).and_then(|value| value.to_str().ok()).unwrap_or("127.0.0.1");
    let issuer = format!("http://{host}");
    Json(json!({
        "issuer": issuer,
        "authorization_endpoint": format!("{issuer}/oauth/authorize"),
        "token_endpoint": format!("{issuer}/oauth/token"),
        "revocation_endpoint": format!("{issuer}/oauth/revoke"),
        "response_types_supported": ["code"],
        "grant_types_supported": ["authorization_code", "refresh_token"],
        "code_challenge_methods_supported": ["S256"],
        "token_endpoint_auth_methods_supported": ["client_secret_basic", "client_secret_post"],
    }))
}
