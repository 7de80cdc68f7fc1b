//! Who is calling: `Authorization: Bearer <api_key>`, checked against the stored hashes, and
//! what that caller may do. Unknown or missing key: 401; known but not allowed: 403; a reader
//! asking about a token it was not granted gets 404, so token names do not leak.

use axum::extract::FromRequestParts;
use axum::http::StatusCode;
use axum::http::header::AUTHORIZATION;
use axum::http::request::Parts;

use super::{ApiError, AppState};
use crate::domain::{ClientRole, TokenName};
use crate::store::clients;
use crate::store::models::Client;

/// An authenticated API client.
#[derive(Debug, Clone)]
pub struct Caller(pub Client);

impl Caller {
    /// The name recorded as the actor in history and audit rows.
    pub fn actor(&self) -> &str {
        self.0.name.as_str()
    }

    /// Refuses anyone but an operator.
    pub fn require_operator(&self) -> Result<(), ApiError> {
        match self.0.role {
            ClientRole::Operator => Ok(()),
            ClientRole::Reader => Err(ApiError::new(StatusCode::FORBIDDEN, "forbidden", "this needs an operator key")),
        }
    }

    /// Refuses a reader that was not granted `token` — as "no such token", so names do not leak.
    pub fn require_access(&self, token: &TokenName) -> Result<(), ApiError> {
        let granted = self.0.role == ClientRole::Operator || self.0.grants.iter().any(|g| g == token.as_str());
        if granted { Ok(()) } else { Err(ApiError::unknown_token(token.as_str())) }
    }
}

/// The key presented as a bearer token, if the header is well-formed.
fn bearer(parts: &Parts) -> Option<&str> {
    let value = parts.headers.get(AUTHORIZATION)?.to_str().ok()?;
    let (scheme, key) = value.split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then(|| key.trim())
}

impl FromRequestParts<AppState> for Caller {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, Self::Rejection> {
        let unauthorized = |message: &str| ApiError::new(StatusCode::UNAUTHORIZED, "unauthorized", message);
        let Some(key) = bearer(parts).map(str::to_owned) else {
            return Err(unauthorized("send an API key as `Authorization: Bearer <api_key>`"));
        };
        let found = state.store_call(move |conn| clients::authenticate(conn, &key)).await?;
        found.map(Caller).ok_or_else(|| unauthorized("unknown API key"))
    }
}
