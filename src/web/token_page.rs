//! A token's console page (`GET /ui/tokens/{name}`: policy, history, audit, consumers) and its
//! actions, each a POST carrying the session's CSRF token: rotate now, pause, resume, and
//! re-authorise (through the provider's consent page and back here).

use axum::Form;
use axum::extract::rejection::FormRejection;
use axum::extract::{Path, RawQuery, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Redirect, Response};
use maud::{Markup, html};

use super::console::{CsrfForm, nav, relative};
use super::page::{layout, message, respond};
use super::session::Operator;
use crate::api::AppState;
use crate::domain::{Policy, TokenName, TokenState};
use crate::engine::{ForcedRotation, RotationOutcome, rotate_now};
use crate::oauth::{LinkRequest, create_link};
use crate::store::audit::{self, AuditQuery};
use crate::store::consumers::{self, Consumer};
use crate::store::models::{AuditRow, HistoryEntry, Token};
use crate::store::tokens;

/// Audit rows shown on a token's page.
const AUDIT_ROWS: u32 = 25;

/// What the page says about the last action: fixed texts chosen by a code in the query, never
/// text taken from the query.
#[derive(Debug, Default)]
pub struct PageQuery {
    /// Set by the console's own actions.
    done: Option<String>,
    /// Set by the authorisation callback (`connected` or `declined`).
    status: Option<String>,
}

impl PageQuery {
    fn parse(raw: Option<&str>) -> Self {
        let mut query = Self::default();
        for (name, value) in url::form_urlencoded::parse(raw.unwrap_or_default().as_bytes()) {
            match name.as_ref() {
                "done" => query.done = Some(value.into_owned()),
                "status" => query.status = Some(value.into_owned()),
                _ => {}
            }
        }
        query
    }

    fn flash(&self) -> Option<(&'static str, bool)> {
        let text = match (self.done.as_deref(), self.status.as_deref()) {
            (_, Some("connected")) => ("Re-authorised: the new grant is stored.", true),
            (_, Some("declined")) => ("The authorisation was declined; nothing changed.", false),
            (Some("rotated"), _) => ("Rotated.", true),
            (Some("rotate_failed"), _) => ("The rotation did not succeed; see the last error below.", false),
            (Some("paused"), _) => ("Paused: it will not be rotated until resumed.", true),
            (Some("resumed"), _) => ("Resumed.", true),
            _ => return None,
        };
        Some(text)
    }
}

/// Everything the page shows.
struct TokenView {
    token: Token,
    history: Vec<HistoryEntry>,
    audit: Vec<AuditRow>,
    consumers: Vec<Consumer>,
}

fn not_found() -> Response {
    message(StatusCode::NOT_FOUND, "No such token", "There is no token of that name.", None)
}

/// `GET /ui/tokens/{name}`.
pub async fn show(
    State(state): State<AppState>,
    operator: Operator,
    Path(raw): Path<String>,
    RawQuery(query): RawQuery,
) -> Response {
    let Ok(name) = raw.parse::<TokenName>() else {
        return not_found();
    };
    let loaded = state
        .store_call(move |conn| {
            let token = tokens::find(conn, &name)?;
            let query = AuditQuery { token: Some(name.to_string()), since: None, limit: Some(AUDIT_ROWS) };
            Ok(TokenView {
                history: tokens::history(conn, &name)?,
                audit: audit::search(conn, &query)?,
                consumers: consumers::of_token(conn, &token.id)?,
                token,
            })
        })
        .await;
    let view = match loaded {
        Ok(view) => view,
        Err(err) if err.status == StatusCode::NOT_FOUND => return not_found(),
        Err(err) => return message(err.status, "The store is not available", &err.message, None),
    };
    let flash = PageQuery::parse(query.as_deref()).flash();
    let policy = Policy::resolve(view.token.kind, &view.token.policy_overrides, &state.engine.policy);
    let title = view.token.name.to_string();
    respond(
        StatusCode::OK,
        layout(&title, Some(nav(&operator)), page(&view, &policy, &operator, flash, state.engine.clock.now())),
    )
}

fn page(
    view: &TokenView,
    policy: &Policy,
    operator: &Operator,
    flash: Option<(&str, bool)>,
    now: chrono::DateTime<chrono::Utc>,
) -> Markup {
    let token = &view.token;
    let time = |at: Option<chrono::DateTime<chrono::Utc>>| {
        at.map_or_else(|| "-".to_owned(), |t| t.format("%Y-%m-%d %H:%M UTC").to_string())
    };
    html! {
        h1 { (token.name) " " span class=(format!("state state-{}", token.state.as_str())) { (token.state.as_str()) } }
        @if let Some((text, ok)) = flash { p class=(if ok { "flash" } else { "flash problem" }) id="flash" { (text) } }
        div.actions {
            (action(token, "rotate", "Rotate now", operator))
            @if token.state == TokenState::Paused { (action(token, "resume", "Resume", operator)) } @else { (action(token, "pause", "Pause", operator)) }
            @if token.kind.is_oauth_grant() { (action(token, "reauthorize", "Re-authorise", operator)) }
        }
        dl.fields {
            dt { "Kind" } dd { (token.kind.as_str()) }
            dt { "Provider" } dd { (token.provider) }
            dt { "Version" } dd id="version" { (token.version) }
            dt { "Expires" } dd { (time(token.expires_at)) " (" (relative(token.expires_at, now)) ")" }
            dt { "Next rotation" } dd { (time(token.next_rotation_at)) }
            @if let Some(owner) = &token.authorized_as { dt { "Authorised by" } dd { "@" (owner.username) " (GitLab id " (owner.id) "), " (time(Some(owner.authorized_at))) } }
            @if let Some(reason) = &token.attention_reason { dt { "Needs attention" } dd.error-text { (reason) @if let Some(remedy) = &token.remedy { " — remedy: " (remedy) } } }
            @if let Some(error) = &token.last_error { dt { "Last error" } dd.error-text { (error) } }
            dt { "Last success" } dd { (time(token.last_success_at)) }
        }
        h2 { "Policy" }
        dl.fields {
            @if token.kind.has_gitlab_lifetime() { dt { "Lifetime" } dd { (policy.lifetime) } }
            dt { "Rotate before expiry" } dd { (policy.rotate_before) }
            dt { "Rotate at fraction" } dd { (policy.rotate_at_fraction) }
        }
        h2 { "History" }
        div.scroll { table {
            thead { tr { th { "Version" } th { "Event" } th { "By" } th { "When" } th { "Expires" } } }
            tbody { @for entry in view.history.iter().rev() {
                tr { td { (entry.version) } td { (entry.event) } td { (entry.actor) } td { (time(Some(entry.occurred_at))) } td { (time(entry.expires_at)) } }
            } }
        } }
        h2 { "Consumers" }
        @if view.consumers.is_empty() { p.hint { "No reader is granted this token." } } @else {
            div.scroll { table {
                thead { tr { th { "Reader" } th { "Acknowledged version" } th { "When" } } }
                tbody { @for consumer in &view.consumers {
                    tr { td { (consumer.client) } td { (consumer.acknowledged_version.map_or_else(|| "-".to_owned(), |v| v.to_string())) } td { (time(consumer.acknowledged_at)) } }
                } }
            } }
        }
        h2 { "Audit" }
        div.scroll { table {
            thead { tr { th { "When" } th { "Who" } th { "What" } th { "Detail" } } }
            tbody { @for row in &view.audit {
                tr { td { (row.occurred_at.format("%Y-%m-%d %H:%M:%S")) } td { (row.actor) } td { (row.action) } td { (row.detail.as_deref().unwrap_or("")) } }
            } }
        } }
    }
}

/// One action's form.
fn action(token: &Token, verb: &str, label: &str, operator: &Operator) -> Markup {
    html! {
        form method="post" action=(format!("/ui/tokens/{}/{verb}", token.name)) {
            input type="hidden" name="csrf" value=(operator.session.csrf_token);
            button type="submit" id=(verb) class=(if verb == "rotate" { "" } else { "secondary" }) { (label) }
        }
    }
}

/// Back to the token's page with a result code.
fn back(name: &TokenName, done: &str) -> Response {
    Redirect::to(&format!("/ui/tokens/{name}?done={done}")).into_response()
}

/// `POST /ui/tokens/{name}/{action}`.
pub async fn act(
    State(state): State<AppState>,
    operator: Operator,
    Path((raw, verb)): Path<(String, String)>,
    form: Result<Form<CsrfForm>, FormRejection>,
) -> Response {
    if !form.is_ok_and(|Form(form)| operator.accepts(&form.csrf)) {
        return message(
            StatusCode::FORBIDDEN,
            "Refused",
            "The form is stale or forged; reload the page and try again.",
            None,
        );
    }
    let Ok(name) = raw.parse::<TokenName>() else {
        return not_found();
    };
    let actor = operator.actor().to_owned();
    let now = state.engine.clock.now();
    let stored = |result: Result<Token, crate::api::ApiError>, done: &str| match result {
        Ok(_) => back(&name, done),
        Err(err) if err.status == StatusCode::NOT_FOUND => not_found(),
        Err(err) => message(err.status, "Not done", &err.message, None),
    };
    match verb.as_str() {
        "rotate" => match rotate_now(&state.engine, &name, &actor).await {
            Ok(ForcedRotation::Attempted(report)) if matches!(report.outcome, RotationOutcome::Rotated { .. }) => {
                back(&name, "rotated")
            }
            Ok(ForcedRotation::CompletedElsewhere { state: TokenState::Active, .. }) => back(&name, "rotated"),
            Ok(_) => back(&name, "rotate_failed"),
            Err(err) => stored(Err(err.into()), ""),
        },
        "pause" => {
            let (n, a) = (name.clone(), actor.clone());
            stored(state.store_call(move |conn| tokens::pause(conn, &n, &a, now)).await, "paused")
        }
        "resume" => {
            let (n, a) = (name.clone(), actor.clone());
            let result = state.store_call(move |conn| tokens::resume(conn, &n, &a, now)).await;
            if let Some(scheduler) = &state.scheduler {
                scheduler.wake();
            }
            stored(result, "resumed")
        }
        "reauthorize" => reauthorize(&state, &name, &actor).await,
        _ => message(StatusCode::NOT_FOUND, "No such action", "The console has no such action.", None),
    }
}

/// Sends the browser to the provider's consent page; the callback brings it back here.
async fn reauthorize(state: &AppState, name: &TokenName, actor: &str) -> Response {
    let n = name.clone();
    let token = match state.store_call(move |conn| tokens::find(conn, &n)).await {
        Ok(token) => token,
        Err(err) if err.status == StatusCode::NOT_FOUND => return not_found(),
        Err(err) => return message(err.status, "Not done", &err.message, None),
    };
    let request = LinkRequest {
        token: name.clone(),
        provider: token.provider,
        kind: Some(token.kind),
        scopes: Vec::new(),
        return_to: Some(format!("{}/ui/tokens/{name}", state.consent.public_url)),
    };
    let consent = &state.consent;
    match create_link(&state.engine, request, &consent.redirect_uri, consent.timeout, actor).await {
        Ok(link) => Redirect::to(&link.url).into_response(),
        Err(err) => {
            let err = crate::api::ApiError::from(err);
            message(err.status, "Cannot re-authorise", &err.message, None)
        }
    }
}
