//! Signing in to the console: the session cookie (`tokenwarden_session`: HttpOnly,
//! SameSite=Strict, Secure when `public_url` is https), the [`Operator`] extractor every console
//! page takes (no live session: back to the sign-in form), and the CSRF check of every form.

use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use axum::http::{HeaderMap, HeaderValue, header};
use axum::response::{IntoResponse, Redirect, Response};
use secrecy::{ExposeSecret, SecretString};
use subtle::ConstantTimeEq;

use crate::api::AppState;
use crate::store::ui_sessions::{self, SESSION_LIFETIME, Session};

/// The cookie's name.
pub const COOKIE: &str = "tokenwarden_session";

/// The session cookie's value in `headers`, if any.
pub fn cookie_value(headers: &HeaderMap) -> Option<SecretString> {
    headers.get_all(header::COOKIE).iter().filter_map(|value| value.to_str().ok()).find_map(|cookies| {
        cookies
            .split(';')
            .filter_map(|pair| pair.trim().split_once('='))
            .find(|(name, value)| *name == COOKIE && !value.is_empty() && value.len() <= 128)
            .map(|(_, value)| SecretString::from(value.to_owned()))
    })
}

/// `Set-Cookie` for a new session (or, with `None`, one that deletes it).
pub fn set_cookie(id: Option<&SecretString>, secure: bool) -> HeaderValue {
    let secure = if secure { "; Secure" } else { "" };
    let text = match id {
        Some(id) => format!(
            "{COOKIE}={}; Path=/; HttpOnly; SameSite=Strict; Max-Age={}{secure}",
            id.expose_secret(),
            SESSION_LIFETIME.num_seconds()
        ),
        None => format!("{COOKIE}=; Path=/; HttpOnly; SameSite=Strict; Max-Age=0{secure}"),
    };
    HeaderValue::from_str(&text).unwrap_or_else(|_| HeaderValue::from_static("tokenwarden_session=; Max-Age=0"))
}

/// A signed-in operator, with their session's CSRF token.
#[derive(Debug, Clone)]
pub struct Operator {
    /// The session.
    pub session: Session,
}

impl Operator {
    /// Whether a form's `csrf` field is this session's token.
    pub fn accepts(&self, presented: &str) -> bool {
        bool::from(presented.as_bytes().ct_eq(self.session.csrf_token.as_bytes()))
    }

    /// The actor recorded for what this operator does (their client name).
    pub fn actor(&self) -> &str {
        self.session.client.as_str()
    }
}

impl FromRequestParts<AppState> for Operator {
    type Rejection = Response;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, Self::Rejection> {
        let to_sign_in = || Redirect::to("/ui").into_response();
        let Some(id) = cookie_value(&parts.headers) else {
            return Err(to_sign_in());
        };
        let now = state.engine.clock.now();
        match state.store_call(move |conn| ui_sessions::find(conn, &id, now)).await {
            Ok(Some(session)) => Ok(Self { session }),
            Ok(None) => Err(to_sign_in()),
            Err(err) => Err(super::page::message(err.status, "The store is not available", &err.message, None)),
        }
    }
}
