//! The console's entrance and overview: `GET /ui` (the sign-in form, or the overview when
//! signed in), `POST /ui/sign-in` with an operator API key, `POST /ui/sign-out`.

use axum::Form;
use axum::extract::rejection::FormRejection;
use axum::extract::{RawQuery, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Redirect, Response};
use chrono::{DateTime, Utc};
use maud::{Markup, html};
use serde::Deserialize;

use super::page::{layout, message, respond};
use super::session::{Operator, cookie_value, set_cookie};
use super::timeline;
use crate::api::{AppState, AuthFailure};
use crate::crypto::ApiKey;
use crate::domain::{ClientRole, TokenName, TokenState};
use crate::store::models::Token;
use crate::store::{clients, overview, tokens, ui_sessions};

/// Tokens per page of the overview's table.
pub const PAGE_SIZE: i64 = 50;

/// The navigation of a signed-in page: the overview, who is signed in, and sign-out.
pub fn nav(operator: &Operator) -> Markup {
    html! {
        nav {
            a href="/ui" { "Overview" }
            span.hint { (operator.actor()) }
            form method="post" action="/ui/sign-out" {
                input type="hidden" name="csrf" value=(operator.session.csrf_token);
                button.secondary type="submit" { "Sign out" }
            }
        }
    }
}

/// The overview's query: the page of the table (`after` the last name shown).
#[derive(Debug, Default)]
pub struct OverviewQuery {
    after: Option<String>,
}

/// `GET /ui`: the overview, or the sign-in form.
pub async fn home(
    State(state): State<AppState>,
    operator: Result<Operator, Response>,
    RawQuery(query): RawQuery,
) -> Response {
    let after = url::form_urlencoded::parse(query.unwrap_or_default().as_bytes())
        .find(|(name, _)| name == "after")
        .map(|(_, value)| value.into_owned());
    match operator {
        Ok(operator) => overview_page(&state, &operator, OverviewQuery { after }).await,
        Err(_) => sign_in_page(StatusCode::OK, None),
    }
}

fn sign_in_page(status: StatusCode, problem: Option<&str>) -> Response {
    respond(
        status,
        layout(
            "Sign in",
            None,
            html! {
                div.notice {
                    h1 { "Sign in" }
                    @if let Some(problem) = problem { p.flash.problem { (problem) } }
                    form method="post" action="/ui/sign-in" {
                        label for="api_key" { "Operator API key" }
                        input type="password" id="api_key" name="api_key" autocomplete="off" required;
                        p { button type="submit" id="sign-in" { "Sign in" } }
                    }
                    p.hint { "An operator client's key, from " code { "tokenwarden client add NAME --role operator" } ". Readers cannot sign in." }
                }
            },
        ),
    )
}

/// The sign-in form's fields.
#[derive(Deserialize)]
pub struct SignIn {
    api_key: String,
}

/// `POST /ui/sign-in`.
pub async fn sign_in(State(state): State<AppState>, form: Result<Form<SignIn>, FormRejection>) -> Response {
    let Ok(Form(SignIn { api_key })) = form else {
        return sign_in_page(StatusCode::BAD_REQUEST, Some("Give an API key."));
    };
    let Some(lookup) = ApiKey::lookup_of(api_key.trim()) else {
        state.auth_failures.record(None, AuthFailure::Malformed);
        return sign_in_page(StatusCode::UNAUTHORIZED, Some("That is not an API key."));
    };
    let (presented, lookup) = (api_key.trim().to_owned(), lookup.to_owned());
    let client = match state.store_call(move |conn| clients::authenticate_key(conn, &presented)).await {
        Ok(Some(client)) => client,
        Ok(None) => {
            state.auth_failures.record(None, state.auth_failures.refused_key(&lookup));
            return sign_in_page(StatusCode::UNAUTHORIZED, Some("Unknown API key."));
        }
        Err(err) => return message(err.status, "The store is not available", &err.message, None),
    };
    if client.role != ClientRole::Operator {
        return sign_in_page(
            StatusCode::FORBIDDEN,
            Some("Readers cannot sign in to the console; use an operator's key."),
        );
    }
    let (client_id, now) = (client.id.clone(), state.engine.clock.now());
    match state.store_call(move |conn| ui_sessions::start(conn, &client_id, now)).await {
        Ok(session) => {
            tracing::info!(client = %client.name, "signed in to the console");
            let mut response = Redirect::to("/ui").into_response();
            response
                .headers_mut()
                .insert(header::SET_COOKIE, set_cookie(Some(&session.id), state.consent.secure_cookies));
            response
        }
        Err(err) => message(err.status, "The store is not available", &err.message, None),
    }
}

/// A form that only carries the CSRF token.
#[derive(Deserialize)]
pub struct CsrfForm {
    /// The session's CSRF token.
    pub csrf: String,
}

/// `POST /ui/sign-out`: ends the session.
pub async fn sign_out(
    State(state): State<AppState>,
    operator: Operator,
    headers: HeaderMap,
    form: Result<Form<CsrfForm>, FormRejection>,
) -> Response {
    if !form.is_ok_and(|Form(form)| operator.accepts(&form.csrf)) {
        return message(StatusCode::FORBIDDEN, "Refused", "The form is stale; reload the page and try again.", None);
    }
    if let Some(id) = cookie_value(&headers)
        && let Err(err) = state.store_call(move |conn| ui_sessions::end(conn, &id)).await
    {
        return message(err.status, "The store is not available", &err.message, None);
    }
    let mut response = Redirect::to("/ui").into_response();
    response.headers_mut().insert(header::SET_COOKIE, set_cookie(None, state.consent.secure_cookies));
    response
}

/// What the overview shows.
struct Overview {
    counts: Vec<(TokenState, i64)>,
    points: Vec<overview::ExpiryPoint>,
    page: Vec<Token>,
}

async fn overview_page(state: &AppState, operator: &Operator, query: OverviewQuery) -> Response {
    let after: Option<TokenName> = query.after.and_then(|name| name.parse().ok());
    let first_page = after.is_none();
    let loaded = state
        .store_call(move |conn| {
            Ok(Overview {
                counts: overview::counts_by_state(conn)?,
                points: overview::expiry_points(conn)?,
                page: tokens::list_page(conn, after.as_ref(), PAGE_SIZE + 1)?,
            })
        })
        .await;
    let Overview { counts, points, mut page } = match loaded {
        Ok(loaded) => loaded,
        Err(err) => return message(err.status, "The store is not available", &err.message, None),
    };
    let more = page.len() > usize::try_from(PAGE_SIZE).unwrap_or(usize::MAX);
    page.truncate(usize::try_from(PAGE_SIZE).unwrap_or(usize::MAX));
    let now = state.engine.clock.now();
    let total: i64 = counts.iter().map(|(_, n)| n).sum();
    let body = html! {
        h1 { "Tokens" }
        ul.counts {
            li { strong { (total) } "tokens" }
            @for state in TokenState::ALL {
                @let n = counts.iter().find(|(s, _)| s == state).map_or(0, |(_, n)| *n);
                li class=(format!("count-{}", state.as_str())) { strong { (n) } span class=(format!("state state-{}", state.as_str())) { (state.as_str()) } }
            }
        }
        h2 { "Expiry timeline" }
        (timeline::render(&points, now))
        h2 { "All tokens" }
        div.scroll {
            table {
                thead { tr { th { "Name" } th { "Kind" } th { "Provider" } th { "State" } th { "Version" } th { "Expires in" } th { "Next rotation" } th { "Last error" } } }
                tbody {
                    @for token in &page {
                        tr {
                            td { a href=(format!("/ui/tokens/{}", token.name)) { (token.name) } }
                            td { (token.kind.as_str()) }
                            td { (token.provider) }
                            td { span class=(format!("state state-{}", token.state.as_str())) { (token.state.as_str()) } }
                            td { (token.version) }
                            td { (relative(token.expires_at, now)) }
                            td { (relative(token.next_rotation_at, now)) }
                            td.error-text { (shorten(token.last_error.as_deref().unwrap_or(""), 80)) }
                        }
                    }
                }
            }
        }
        div.pager {
            @if !first_page { a href="/ui" { "← First page" } }
            @if more { @if let Some(last) = page.last() { a href=(format!("/ui?after={}", last.name)) { "Next page →" } } }
        }
    };
    respond(StatusCode::OK, layout("Tokens", Some(nav(operator)), body))
}

/// `in 3d 4h`, `2h ago`, or `-`.
pub fn relative(at: Option<DateTime<Utc>>, now: DateTime<Utc>) -> String {
    let Some(at) = at else { return "-".to_owned() };
    let delta = at - now;
    let seconds = delta.num_seconds().abs();
    let text = match seconds {
        s if s < 120 => format!("{s}s"),
        s if s < 3_600 => format!("{}m", s / 60),
        s if s < 172_800 => format!("{}h {}m", s / 3600, (s % 3600) / 60),
        s => format!("{}d {}h", s / 86_400, (s % 86_400) / 3600),
    };
    if delta.num_seconds() >= 0 { format!("in {text}") } else { format!("{text} ago") }
}

/// At most `limit` characters of `text`, with an ellipsis when cut.
pub fn shorten(text: &str, limit: usize) -> String {
    if text.chars().count() <= limit {
        return text.to_owned();
    }
    let cut: String = text.chars().take(limit).collect();
    format!("{cut}…")
}
