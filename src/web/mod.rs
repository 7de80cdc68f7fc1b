//! The browser-facing pages, beside the JSON API on the same listener: the OAuth callback's
//! pages ([`callback`]) and the operator console under `/ui` ([`console`], [`token_page`]).
//! Server-rendered HTML (maud), no JavaScript, a strict Content-Security-Policy ([`page`]).

pub mod callback;
pub mod console;
pub mod page;
pub mod session;
pub mod timeline;
pub mod token_page;

use axum::Router;
use axum::routing::{get, post};

use crate::api::AppState;

/// The routes of the pages.
pub fn router() -> Router<AppState> {
    Router::new()
        .route("/oauth/callback", get(callback::callback))
        .route(page::STYLESHEET_PATH, get(page::stylesheet))
        .route("/ui", get(console::home))
        .route("/ui/sign-in", post(console::sign_in))
        .route("/ui/sign-out", post(console::sign_out))
        .route("/ui/tokens/{name}", get(token_page::show))
        .route("/ui/tokens/{name}/{action}", post(token_page::act))
}
