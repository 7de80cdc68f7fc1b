//! Who is calling: `Authorization: Bearer <api_key>`, checked against the stored hashes, and
//! what that caller may do. Unknown or missing key: 401; known but not allowed: 403; a reader
//! asking about a token it was not granted gets 404, so token names do not leak.

use axum::extract::FromRequestParts;
use axum::http::StatusCode;
use axum::http::header::AUTHORIZATION;
use axum::http::request::Parts;

use super::{ApiError, AppState};
use crate::domain::ClientRole;
use crate::store::clients;
use crate::store::models::Client;
use crate::store::tokens::ReadAs;

/// An authenticated API client. Its `grants` are not loaded: a reader's access to one token is
/// checked in the statement that reads the token ([`Caller::read_as`]).
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

    /// Whose reads the store should allow: any token for an operator, the granted ones for a
    /// reader (see [`crate::store::tokens::read_current_as`]).
    pub fn read_as(&self) -> ReadAs<'_> {
        match self.0.role {
            ClientRole::Operator => ReadAs::Operator,
            ClientRole::Reader => ReadAs::Reader { client_id: &self.0.id },
        }
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

    /// A key the store accepted less than [`super::KEY_CACHE_TTL`] ago is taken from
    /// [`AppState::keys`] (its hash still compared in constant time); any other key is checked
    /// against the store, and remembered if accepted.
    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, Self::Rejection> {
        let unauthorized = |message: &str| ApiError::new(StatusCode::UNAUTHORIZED, "unauthorized", message);
        let Some(key) = bearer(parts) else {
            return Err(unauthorized("send an API key as `Authorization: Bearer <api_key>`"));
        };
        if let Some(client) = state.keys.client(key) {
            return Ok(Caller(client));
        }
        let (presented, asked_at) = (key.to_owned(), state.keys.now());
        let found = state.store_call(move |conn| clients::authenticate_key(conn, &presented)).await?;
        let Some(client) = found else {
            return Err(unauthorized("unknown API key"));
        };
        state.keys.remember(key, &client, asked_at);
        Ok(Caller(client))
    }
}
