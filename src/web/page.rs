//! The frame every HTML page shares: the layout (maud, server-rendered, no JavaScript), one
//! stylesheet served by tokenwarden itself, and the headers that keep pages from leaking or
//! being framed: `Content-Security-Policy: default-src 'self'`, no referrer (a callback URL
//! carries a code and a state), no caching, no sniffing.

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use maud::{DOCTYPE, Markup, html};

/// Where the stylesheet is served.
pub const STYLESHEET_PATH: &str = "/ui/style.css";

/// The stylesheet: small, readable on a phone, no external fonts.
const STYLESHEET: &str = include_str!("style.css");

/// `GET /ui/style.css`.
pub async fn stylesheet() -> Response {
    let mut response = ([(header::CONTENT_TYPE, "text/css; charset=utf-8")], STYLESHEET).into_response();
    response.headers_mut().insert(header::CACHE_CONTROL, HeaderValue::from_static("public, max-age=3600"));
    response
}

/// A whole page: `title`, optional navigation, and `body`.
pub fn layout(title: &str, nav: Option<Markup>, body: Markup) -> Markup {
    html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                meta name="viewport" content="width=device-width, initial-scale=1";
                title { (title) " · tokenwarden" }
                link rel="stylesheet" href=(STYLESHEET_PATH);
            }
            body {
                header {
                    a.brand href="/ui" { "tokenwarden" }
                    @if let Some(nav) = nav { (nav) }
                }
                main { (body) }
            }
        }
    }
}

/// A page answered with `status` and the page headers.
pub fn respond(status: StatusCode, page: Markup) -> Response {
    with_page_headers((status, page).into_response())
}

/// Adds the headers every page carries.
pub fn with_page_headers(mut response: Response) -> Response {
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static("default-src 'self'; frame-ancestors 'none'; base-uri 'none'"),
    );
    headers.insert(header::REFERRER_POLICY, HeaderValue::from_static("no-referrer"));
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    headers.insert(header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    headers.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    response
}

/// A message page: a heading, a paragraph and an optional hint, answered with `status`.
pub fn message(status: StatusCode, heading: &str, text: &str, hint: Option<&str>) -> Response {
    let class = if status.is_success() { "notice ok" } else { "notice problem" };
    respond(
        status,
        layout(
            heading,
            None,
            html! {
                div class=(class) {
                    h1 { (heading) }
                    p { (text) }
                    @if let Some(hint) = hint { p.hint { (hint) } }
                }
            },
        ),
    )
}
