//! `GET /oauth/callback`: where the provider sends the user's browser back. No API key — the
//! `state` is the capability. Answers an HTML page, or `303` to the link's `return_to` with
//! `token` and `status` added. No page or header ever repeats the code, the state or anything
//! else of the query.

use axum::extract::{RawQuery, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};

use super::page::{message, with_page_headers};
use crate::api::AppState;
use crate::oauth::{CallbackOutcome, CallbackQuery, complete};

/// The query parameters the callback reads; anything else is ignored, and a parameter given
/// twice counts as missing (a link is never built that way).
fn parse_query(raw: Option<&str>) -> CallbackQuery {
    let mut query = CallbackQuery::default();
    let mut seen = std::collections::HashMap::new();
    for (name, value) in url::form_urlencoded::parse(raw.unwrap_or_default().as_bytes()) {
        *seen.entry(name.clone().into_owned()).or_insert(0) += 1;
        let value = Some(value.into_owned());
        match name.as_ref() {
            "code" => query.code = value,
            "state" => query.state = value,
            "error" => query.error = value,
            _ => {}
        }
    }
    let once = |name: &str, value: Option<String>| value.filter(|_| seen.get(name) == Some(&1));
    CallbackQuery {
        code: once("code", query.code),
        state: once("state", query.state),
        error: once("error", query.error),
    }
}

/// `GET /oauth/callback`.
pub async fn callback(State(state): State<AppState>, RawQuery(raw): RawQuery) -> Response {
    let outcome = complete(&state.engine, parse_query(raw.as_deref())).await;
    page_for(outcome, &state.consent.public_url)
}

/// `return_to` with `token` and `status` added to its query.
fn return_url(return_to: &str, token: &str, status: &str) -> Option<String> {
    let mut url = url::Url::parse(return_to).ok()?;
    url.query_pairs_mut().append_pair("token", token).append_pair("status", status);
    Some(url.into())
}

/// Sends the browser on to `location`. The console's own pages are reached through a page of
/// ours (a refresh, and a link) rather than a redirect: the navigation that brought the browser
/// here started at the provider's site, and a browser sends the `SameSite=Strict` session cookie
/// only on navigations that start on tokenwarden's own site.
fn send_on(location: String, public_url: &str) -> Response {
    if !location.starts_with(&format!("{public_url}/ui/")) {
        return see_other(location);
    }
    let page = super::page::layout(
        "Continue",
        None,
        maud::html! {
            meta http-equiv="refresh" content=(format!("0; url={location}"));
            div.notice.ok { h1 { "Done" } p { a href=(location) id="continue" { "Continue to the console" } } }
        },
    );
    super::page::respond(StatusCode::OK, page)
}

fn see_other(location: String) -> Response {
    let mut response = StatusCode::SEE_OTHER.into_response();
    if let Ok(value) = HeaderValue::from_str(&location) {
        response.headers_mut().insert(header::LOCATION, value);
    }
    with_page_headers(response)
}

/// The answer for an outcome.
pub fn page_for(outcome: CallbackOutcome, public_url: &str) -> Response {
    match outcome {
        CallbackOutcome::Connected { token, return_to: Some(to), .. } => {
            match return_url(&to, token.as_str(), "connected") {
                Some(location) => send_on(location, public_url),
                None => connected_page(token.as_str(), None, None),
            }
        }
        CallbackOutcome::Connected { token, version, user, return_to: None } => {
            connected_page(token.as_str(), Some(version), user.as_deref())
        }
        CallbackOutcome::Declined { token, return_to } => {
            match return_to.and_then(|to| return_url(&to, token.as_str(), "declined")) {
                Some(location) => send_on(location, public_url),
                None => message(
                    StatusCode::FORBIDDEN,
                    "Not connected",
                    &format!("You declined the authorisation, so '{token}' was not changed."),
                    Some("To connect after all, ask for a new link and choose Authorize."),
                ),
            }
        }
        CallbackOutcome::BadLink(why) => message(
            StatusCode::BAD_REQUEST,
            "This link cannot be used",
            &format!("{why}. A consent link works once and for a limited time."),
            Some("Ask for a new link (tokenwarden token authorize, or the console's Re-authorise)."),
        ),
        CallbackOutcome::ProviderFailed { token, message: text } => message(
            StatusCode::BAD_GATEWAY,
            "The provider did not grant access",
            &format!("'{token}' was not changed: {text}."),
            Some("Ask for a new link and try again; if it keeps failing, check the provider's OAuth application."),
        ),
        CallbackOutcome::WrongUser { token, owner } => message(
            StatusCode::CONFLICT,
            "Signed in as a different user",
            &format!(
                "'{token}' belongs to the GitLab user @{owner}, and another user authorised this link; the grant was not changed."
            ),
            Some(
                "Sign in to GitLab as its owner and use a new link, or connect your own account under a new token name.",
            ),
        ),
        CallbackOutcome::Conflict { token, message: text } => {
            message(StatusCode::CONFLICT, "Not connected", &format!("'{token}': {text}"), None)
        }
        CallbackOutcome::Unavailable(text) => message(StatusCode::SERVICE_UNAVAILABLE, "Not connected", &text, None),
    }
}

fn connected_page(token: &str, version: Option<i64>, user: Option<&str>) -> Response {
    let who = user.map(|user| format!(" as GitLab user @{user}")).unwrap_or_default();
    let version = version.map(|v| format!(" (version {v})")).unwrap_or_default();
    message(
        StatusCode::OK,
        "Connected",
        &format!("'{token}' is connected{who}{version}. tokenwarden keeps it alive from now on."),
        Some("You can close this page."),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_parameter_given_twice_counts_as_missing_and_others_are_ignored() {
        let query = parse_query(Some("state=a&state=b&code=c&x=1"));
        assert_eq!((query.state, query.code.as_deref()), (None, Some("c")));
        assert!(parse_query(None).state.is_none());
    }

    #[test]
    fn the_return_url_keeps_its_query_and_gains_token_and_status() {
        let url = return_url("https://p.example/back?x=1", "alice", "connected").unwrap();
        assert_eq!(url, "https://p.example/back?x=1&token=alice&status=connected");
    }
}
