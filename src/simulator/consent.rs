//! The simulated GitLab's consent page (`GET/POST /oauth/authorize`, with Authorize and Deny)
//! and `GET /api/v4/user`. The code exchange is in `gitlab_api::oauth_token`.
//!
//! A request the page cannot serve (unknown client, unregistered redirect URI, another response
//! type, a challenge method other than S256) gets an error page and is never redirected: the
//! redirect URI itself may be the attacker's. A decision redirects to the redirect URI with
//! `code` and `state`, or `error=access_denied` and `state`.

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{RawQuery, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{Html, IntoResponse, Response};
use serde_json::json;

use super::Shared;
use super::authorization::AuthorizeRequest;
use super::fields::{Fields, field};
use super::gitlab_api::{form_fields, json_response, presented_token};

fn request_of(fields: &Fields) -> AuthorizeRequest {
    let field = |name| field(fields, name).map(str::to_owned);
    AuthorizeRequest {
        client_id: field("client_id").unwrap_or_default(),
        redirect_uri: field("redirect_uri").unwrap_or_default(),
        response_type: field("response_type").unwrap_or_default(),
        state: field("state"),
        scope: field("scope").unwrap_or_else(|| "api".to_owned()),
        code_challenge: field("code_challenge"),
        code_challenge_method: field("code_challenge_method"),
    }
}

/// Escapes text for HTML content and attribute values.
fn escape(text: &str) -> String {
    text.chars()
        .map(|c| match c {
            '&' => "&amp;".to_owned(),
            '<' => "&lt;".to_owned(),
            '>' => "&gt;".to_owned(),
            '"' => "&quot;".to_owned(),
            '\'' => "&#39;".to_owned(),
            other => other.to_string(),
        })
        .collect()
}

fn page(status: StatusCode, title: &str, body: &str) -> Response {
    let html = format!(
        "<!DOCTYPE html><html lang=\"en\"><head><meta charset=\"utf-8\"><title>{title} · GitLab (simulated)</title>\
         <meta name=\"viewport\" content=\"width=device-width, initial-scale=1\"></head>\
         <body style=\"font-family: sans-serif; max-width: 40em; margin: 2em auto\"><h1>{title}</h1>{body}</body></html>",
        title = escape(title)
    );
    (status, Html(html)).into_response()
}

/// `GET /oauth/authorize`: the consent page.
pub async fn show(State(shared): State<Arc<Shared>>, RawQuery(query): RawQuery) -> Response {
    let fields = form_fields(query.as_deref(), b"");
    let request = request_of(&fields);
    let (checked, user) = shared.with_state(|state| (state.check_authorize(&request), state.signed_in.clone()));
    if let Err(err) = checked {
        return page(StatusCode::BAD_REQUEST, "An error has occurred", &format!("<p>{}</p>", escape(err.describe())));
    }
    let hidden: String =
        ["client_id", "redirect_uri", "response_type", "state", "scope", "code_challenge", "code_challenge_method"]
            .iter()
            .filter_map(|name| field(&fields, name).map(|value| (name, value)))
            .map(|(name, value)| format!("<input type=\"hidden\" name=\"{name}\" value=\"{}\">", escape(value)))
            .collect();
    let body = format!(
        "<p>Signed in as <strong>@{user}</strong>.</p>\
         <p>An application is requesting access to your GitLab account with the scopes <code>{scope}</code>.</p>\
         <form method=\"post\" action=\"/oauth/authorize\">{hidden}\
         <button type=\"submit\" name=\"decision\" value=\"authorize\" id=\"authorize\">Authorize</button> \
         <button type=\"submit\" name=\"decision\" value=\"deny\" id=\"deny\">Deny</button></form>",
        user = escape(&user.username),
        scope = escape(&request.scope),
    );
    page(StatusCode::OK, "Authorize application", &body)
}

/// `POST /oauth/authorize`: the user's decision, sent back to the redirect URI.
pub async fn decide(State(shared): State<Arc<Shared>>, body: Bytes) -> Response {
    let fields = form_fields(None, &body);
    let request = request_of(&fields);
    let approved = field(&fields, "decision") == Some("authorize");
    let now = shared.now();
    let outcome = shared.with_state(|state| {
        state.check_authorize(&request)?;
        if approved { state.issue_code(&request, now).map(Some) } else { Ok(None) }
    });
    let answer = match outcome {
        Err(err) => {
            return page(
                StatusCode::BAD_REQUEST,
                "An error has occurred",
                &format!("<p>{}</p>", escape(err.describe())),
            );
        }
        Ok(Some(code)) => vec![("code", code)],
        Ok(None) => vec![
            ("error", "access_denied".to_owned()),
            ("error_description", "The resource owner or authorization server denied the request.".to_owned()),
        ],
    };
    let Ok(mut location) = url::Url::parse(&request.redirect_uri) else {
        return page(
            StatusCode::BAD_REQUEST,
            "An error has occurred",
            "<p>The redirect uri included is not valid.</p>",
        );
    };
    {
        let mut pairs = location.query_pairs_mut();
        for (name, value) in &answer {
            pairs.append_pair(name, value);
        }
        if let Some(state) = &request.state {
            pairs.append_pair("state", state);
        }
    }
    (StatusCode::FOUND, [(header::LOCATION, location.to_string())]).into_response()
}

/// `GET /api/v4/user`: the user behind the presented token.
pub async fn current_user(State(shared): State<Arc<Shared>>, headers: HeaderMap) -> Response {
    let now = shared.now();
    let user = presented_token(&headers).and_then(|token| shared.with_state(|state| state.user_of(&token, now)));
    match user {
        Some(user) => json_response(
            StatusCode::OK,
            json!({"id": user.id, "username": user.username, "name": user.username, "state": "active"}),
        ),
        None => json_response(StatusCode::UNAUTHORIZED, json!({"message": "401 Unauthorized"})),
    }
}
