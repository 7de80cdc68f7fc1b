//! The browser-facing pages, beside the JSON API on the same listener: the OAuth callback's
//! pages ([`callback`]) and the operator console under `/ui`. Server-rendered HTML (maud), no
//! JavaScript, a strict Content-Security-Policy ([`page`]).

pub mod callback;
pub mod page;

use axum::Router;
use axum::routing::get;

use crate::api::AppState;

/// The routes of the pages.
pub fn router() -> Router<AppState> {
    Router::new().route("/oauth/callback", get(callback::callback)).route(page::STYLESHEET_PATH, get(page::stylesheet))
}
