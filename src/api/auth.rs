//! Who is calling: `Authorization: Bearer <api_key>`, checked against the stored hashes, and
//! what that caller may do. Unknown or missing key: 401; known but not allowed: 403; a reader
//! asking about a token it was not granted gets 404, so token names do not leak. Every 401 and
//! 403 is counted and logged by [`AuthFailures`].

use std::net::{IpAddr, SocketAddr};

use axum::extract::{ConnectInfo, FromRequestParts};
use axum::http::StatusCode;
use axum::http::header::AUTHORIZATION;
use axum::http::request::Parts;

use super::auth_failures::{AuthFailure, AuthFailures};
use super::{ApiError, AppState};
use crate::crypto::ApiKey;
use crate::domain::ClientRole;
use crate::store::clients;
use crate::store::models::Client;
use crate::store::tokens::ReadAs;

/// An authenticated API client. Its `grants` are not loaded: a reader's access to one token is
/// checked in the statement that reads the token ([`Caller::read_as`]).
#[derive(Debug, Clone)]
pub struct Caller {
    /// The client whose key was presented.
    pub client: Client,
    /// The address the request came from, when the server recorded it.
    source: Option<IpAddr>,
    /// Where a refusal ([`Caller::require_operator`]) is counted.
    failures: AuthFailures,
}

impl Caller {
    /// The name recorded as the actor in history and audit rows.
    pub fn actor(&self) -> &str {
        self.client.name.as_str()
    }

    /// Refuses anyone but an operator (counted as a `forbidden` authentication failure).
    pub fn require_operator(&self) -> Result<(), ApiError> {
        match self.client.role {
            ClientRole::Operator => Ok(()),
            ClientRole::Reader => {
                self.failures.record(self.source, AuthFailure::Forbidden);
                Err(ApiError::new(StatusCode::FORBIDDEN, "forbidden", "this needs an operator key"))
            }
        }
    }

    /// Whose reads the store should allow: any token for an operator, the granted ones for a
    /// reader (see [`crate::store::tokens::read_current_as`]).
    pub fn read_as(&self) -> ReadAs<'_> {
        match self.client.role {
            ClientRole::Operator => ReadAs::Operator,
            ClientRole::Reader => ReadAs::Reader { client_id: &self.client.id },
        }
    }
}

/// The key presented as a bearer token: `Missing` without an `Authorization` header,
/// `Malformed` when it is not `Bearer <key>`.
fn bearer(parts: &Parts) -> Result<&str, AuthFailure> {
    let header = parts.headers.get(AUTHORIZATION).ok_or(AuthFailure::Missing)?;
    let value = header.to_str().map_err(|_| AuthFailure::Malformed)?;
    let (scheme, key) = value.split_once(' ').ok_or(AuthFailure::Malformed)?;
    let key = key.trim();
    (scheme.eq_ignore_ascii_case("bearer") && !key.is_empty()).then_some(key).ok_or(AuthFailure::Malformed)
}

/// The address the request came from, when the server was started with connection info.
fn source(parts: &Parts) -> Option<IpAddr> {
    parts.extensions.get::<ConnectInfo<SocketAddr>>().map(|ConnectInfo(addr)| addr.ip())
}

impl FromRequestParts<AppState> for Caller {
    type Rejection = ApiError;

    /// A key the store accepted less than [`super::KEY_CACHE_TTL`] ago is taken from
    /// [`AppState::keys`] (its hash still compared in constant time); any other key is checked
    /// against the store, and remembered if accepted.
    ///
    /// A refusal is counted and logged (rate-limited) by [`AppState::auth_failures`].
    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, Self::Rejection> {
        let source = source(parts);
        let refuse = |reason: AuthFailure, message: &str| {
            state.auth_failures.record(source, reason);
            ApiError::new(StatusCode::UNAUTHORIZED, "unauthorized", message)
        };
        let caller = |client: Client| Caller { client, source, failures: state.auth_failures.clone() };
        let key = match bearer(parts) {
            Ok(key) => key,
            Err(reason) => return Err(refuse(reason, "send an API key as `Authorization: Bearer <api_key>`")),
        };
        let Some(lookup) = ApiKey::lookup_of(key) else {
            return Err(refuse(AuthFailure::Malformed, "unknown API key"));
        };
        if let Some(client) = state.keys.client(key) {
            return Ok(caller(client));
        }
        let (presented, asked_at) = (key.to_owned(), state.keys.now());
        let found = state.store_call(move |conn| clients::authenticate_key(conn, &presented)).await?;
        let Some(client) = found else {
            return Err(refuse(state.auth_failures.refused_key(lookup), "unknown API key"));
        };
        state.keys.remember(key, &client, asked_at);
        state.auth_failures.note_accepted(lookup);
        Ok(caller(client))
    }
}
