//! Obtaining and restoring OAuth grants through the consent page (issue 12), over HTTP as a
//! platform and a browser use it: `POST /v1/authorizations`, the simulated GitLab's consent
//! page, `GET /oauth/callback` — and every way that can go wrong leaving the token as it was.

mod common;

use std::sync::Arc;

use chrono::TimeDelta;
use common::engine_setup::start_time;
use common::served::Served;
use proptest::prelude::*;
use reqwest::redirect::Policy;
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use tokenwarden::api::ConsentSettings;
use tokenwarden::domain::{ClientRole, TokenName, TokenState};
use tokenwarden::engine::{ManualClock, rotate_now};
use tokenwarden::oauth::pkce::state_hash;
use tokenwarden::simulator::authorization::SimUser;
use tokenwarden::simulator::harness::EngineHarness;
use tokenwarden::store::authorization_claim::{self, AuthorizationClaim};
use tokenwarden::store::authorizations::{self, Consumed};
use tokenwarden::store::rotation::{self, ClaimMode, ClaimResult};
use tokenwarden::store::{answer_journal, outbox, tokens};

/// tokenwarden's API and pages on loopback, a simulated GitLab whose OAuth application has
/// tokenwarden's callback registered, an operator key and a reader granted `shared`.
struct Flow {
    harness: EngineHarness,
    clock: Arc<ManualClock>,
    url: String,
    http: reqwest::Client,
    operator: String,
    _dir: tempfile::TempDir,
}

impl Flow {
    async fn start() -> Self {
        let Served { harness, clock, url, dir } = Served::start(start_time(), |url| ConsentSettings {
            redirect_uri: format!("{url}/oauth/callback"),
            ..ConsentSettings::default()
        })
        .await;
        let operator =
            harness.add_client("ops", ClientRole::Operator, &[], Some("http://127.0.0.1:9/hook")).await.unwrap();
        let http = reqwest::Client::builder().redirect(Policy::none()).build().unwrap();
        Self { harness, clock, url, http, operator, _dir: dir }
    }

    fn sign_in_at_gitlab(&self, id: u64, username: &str) {
        self.harness.sim.with_state(|state| state.signed_in = SimUser { id, username: username.into() });
    }

    async fn api(&self, method: Method, path: &str, key: &str, body: Option<Value>) -> (StatusCode, Value) {
        let mut request = self.http.request(method, format!("{}{path}", self.url)).bearer_auth(key);
        if let Some(body) = body {
            request = request.json(&body);
        }
        let response = request.send().await.unwrap();
        let status = response.status();
        let text = response.text().await.unwrap();
        (status, serde_json::from_str(&text).unwrap_or(Value::String(text)))
    }

    /// `POST /v1/authorizations`; returns the consent URL.
    async fn link(&self, body: Value) -> reqwest::Url {
        let (status, answer) = self.api(Method::POST, "/v1/authorizations", &self.operator, Some(body)).await;
        assert_eq!(status, StatusCode::CREATED, "{answer}");
        reqwest::Url::parse(answer["url"].as_str().unwrap()).unwrap()
    }

    /// Opens the consent page and clicks `decision`; returns where GitLab sends the browser.
    async fn consent(&self, link: &reqwest::Url, decision: &str) -> String {
        let page = self.http.get(link.clone()).send().await.unwrap();
        assert_eq!(page.status(), StatusCode::OK, "the consent page: {}", page.text().await.unwrap());
        let mut form: Vec<(String, String)> = link.query_pairs().into_owned().collect();
        form.push(("decision".into(), decision.into()));
        let answer = self.http.post(format!("{}/oauth/authorize", self.harness.sim.url())).form(&form).send().await;
        let answer = answer.unwrap();
        assert_eq!(answer.status(), StatusCode::FOUND);
        answer.headers()["location"].to_str().unwrap().to_owned()
    }

    /// Follows the provider's redirect to the callback; returns its status, Location and body.
    async fn callback(&self, location: &str) -> (StatusCode, Option<String>, String) {
        assert!(location.starts_with(&self.url), "GitLab redirects to tokenwarden's callback: {location}");
        let answer = self.http.get(location).send().await.unwrap();
        let status = answer.status();
        let headers = answer.headers().clone();
        assert_eq!(headers["content-security-policy"], "default-src 'self'; frame-ancestors 'none'; base-uri 'none'");
        assert_eq!(headers["referrer-policy"], "no-referrer");
        let location = headers.get("location").map(|value| value.to_str().unwrap().to_owned());
        (status, location, answer.text().await.unwrap())
    }

    async fn token(&self, name: &str) -> Option<tokenwarden::store::models::Token> {
        let name: TokenName = name.parse().unwrap();
        self.harness.context.store.run(move |conn| tokens::find(conn, &name)).await.ok()
    }

    async fn history(&self, name: &str) -> Vec<(i64, String)> {
        let name: TokenName = name.parse().unwrap();
        let entries = self.harness.context.store.run(move |conn| tokens::history(conn, &name)).await.unwrap();
        entries.into_iter().map(|entry| (entry.version, entry.event)).collect()
    }

    async fn events(&self, name: &str) -> Vec<Value> {
        let name = name.to_owned();
        let pending = self.harness.context.store.run(move |conn| outbox::pending_for_token(conn, &name)).await;
        pending.unwrap().into_iter().map(|(_, payload)| serde_json::from_str(&payload).unwrap()).collect()
    }
}

fn query_value(url: &str, name: &str) -> Option<String> {
    let url = reqwest::Url::parse(url).unwrap();
    url.query_pairs().find(|(key, _)| key == name).map(|(_, value)| value.into_owned())
}

/// The page never repeats the code or the state it was called with.
fn assert_no_echo(body: &str, location: &str) {
    for name in ["code", "state"] {
        if let Some(value) = query_value(location, name) {
            assert!(!body.contains(&value), "the page repeats the {name}: {body}");
        }
    }
}

#[tokio::test]
async fn a_users_consent_stores_a_new_grant_that_is_then_kept_alive_and_its_link_works_once() {
    let flow = Flow::start().await;
    flow.sign_in_at_gitlab(42, "bob");
    let link = flow.link(json!({"token": "bob-gitlab", "provider": "gitlab"})).await;
    let pairs: std::collections::HashMap<String, String> = link.query_pairs().into_owned().collect();
    assert_eq!(pairs["response_type"], "code");
    assert_eq!(pairs["code_challenge_method"], "S256");
    assert_eq!(pairs["scope"], "api");
    assert_eq!(pairs["redirect_uri"], format!("{}/oauth/callback", flow.url));
    assert_eq!(pairs["code_challenge"].len(), 43);
    assert!(flow.token("bob-gitlab").await.is_none(), "nothing is stored before the user consents");

    let location = flow.consent(&link, "authorize").await;
    let (status, _, body) = flow.callback(&location).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert!(body.contains("Connected") && body.contains("@bob"), "{body}");
    assert_no_echo(&body, &location);

    let token = flow.token("bob-gitlab").await.expect("the grant is stored");
    assert_eq!((token.version, token.state), (1, TokenState::Active));
    let owner = token.authorized_as.clone().expect("who consented is recorded");
    assert_eq!((owner.id.as_str(), owner.username.as_str()), ("42", "bob"));
    assert!(token.next_rotation_at.is_some() && token.expires_at.is_some(), "planned like any grant");
    let secret = flow.harness.secret("bob-gitlab").await.unwrap().unwrap();
    assert!(flow.harness.sim.with_state(|state| state.oauth_access_is_active(&secret, flow.harness.now())));
    assert_eq!(flow.history("bob-gitlab").await, vec![(1, "authorized".to_owned())]);
    let (status, shown) = flow.api(Method::GET, "/v1/tokens/bob-gitlab", &flow.operator, None).await;
    assert_eq!((status, shown["authorized_as"]["username"].as_str()), (StatusCode::OK, Some("bob")));
    let events: Vec<String> = flow.events("bob-gitlab").await.iter().map(|e| e["event"].to_string()).collect();
    assert_eq!(events, ["\"token.authorized\"", "\"token.rotated\""]);

    // The stored refresh token is a live one: the grant rotates like any other.
    let name: TokenName = "bob-gitlab".parse().unwrap();
    rotate_now(&flow.harness.context, &name, "test").await.unwrap();
    assert_eq!(flow.token("bob-gitlab").await.unwrap().version, 2);

    let (status, _, body) = flow.callback(&location).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "a link works once: {body}");
    assert!(body.contains("used already"), "{body}");
    assert_eq!(flow.token("bob-gitlab").await.unwrap().version, 2, "a reused link changes nothing");
}

#[tokio::test]
async fn re_authorising_a_grant_that_needs_attention_keeps_its_name_readers_and_history() {
    let flow = Flow::start().await;
    let refresh_token = flow.harness.track_grant("shared").await.unwrap();
    let reader =
        flow.harness.add_client("dbt", ClientRole::Reader, &["shared"], Some("http://127.0.0.1:9/hook")).await.unwrap();
    let name: TokenName = "shared".parse().unwrap();
    rotate_now(&flow.harness.context, &name, "test").await.unwrap();
    let current = flow.harness.refresh_token("shared").await.unwrap().unwrap();
    assert_ne!(current, refresh_token);
    flow.harness.sim.with_state(|state| state.revoke_refresh_token(&current));
    rotate_now(&flow.harness.context, &name, "test").await.unwrap();
    let dead = flow.token("shared").await.unwrap();
    assert_eq!(dead.state, TokenState::NeedsAttention);
    let attention = flow.events("shared").await.into_iter().find(|e| e["event"] == "token.needs_attention").unwrap();
    assert_eq!(
        (attention["reason"].as_str(), attention["remedy"].as_str()),
        (Some("invalid_grant"), Some("reauthorize"))
    );

    // The remedy: a link for the same token, approved by its user.
    let link = flow
        .link(json!({"token": "shared", "provider": "gitlab", "return_to": "https://platform.example/back?x=1"}))
        .await;
    let location = flow.consent(&link, "authorize").await;
    let (status, redirect, body) = flow.callback(&location).await;
    assert_eq!(status, StatusCode::SEE_OTHER, "{body}");
    assert_eq!(redirect.as_deref(), Some("https://platform.example/back?x=1&token=shared&status=connected"));

    let token = flow.token("shared").await.unwrap();
    assert_eq!((token.version, token.state), (dead.version + 1, TokenState::Active));
    assert_eq!(token.id, dead.id, "the same token: its grants and subscribers stay");
    let history = flow.history("shared").await;
    assert_eq!(history.last(), Some(&(dead.version + 1, "authorized".to_owned())));
    assert_eq!(history.len(), 3, "the earlier versions stay in the history: {history:?}");
    let (status, read) = flow.api(Method::GET, "/v1/tokens/shared/secret", &reader, None).await;
    assert_eq!((status, read["version"].as_i64()), (StatusCode::OK, Some(dead.version + 1)), "{read}");
    let events: Vec<Value> = flow.events("shared").await;
    for event in ["token.authorized", "token.rotated"] {
        let to_each = events.iter().filter(|e| e["event"] == event && e["version"] == dead.version + 1).count();
        assert_eq!(to_each, 2, "{event} goes to the operator and the granted reader: {events:?}");
    }
}

#[tokio::test]
async fn a_re_authorisation_by_another_gitlab_user_is_refused_and_changes_nothing() {
    let flow = Flow::start().await;
    flow.sign_in_at_gitlab(42, "bob");
    let link = flow.link(json!({"token": "bob-gitlab", "provider": "gitlab"})).await;
    let location = flow.consent(&link, "authorize").await;
    assert_eq!(flow.callback(&location).await.0, StatusCode::OK);
    let before = flow.token("bob-gitlab").await.unwrap();
    let secret = flow.harness.secret("bob-gitlab").await.unwrap();

    flow.sign_in_at_gitlab(7, "mallory");
    let link = flow.link(json!({"token": "bob-gitlab", "provider": "gitlab"})).await;
    let location = flow.consent(&link, "authorize").await;
    let (status, _, body) = flow.callback(&location).await;
    assert_eq!(status, StatusCode::CONFLICT, "{body}");
    assert!(body.contains("@bob"), "the page names the grant's owner: {body}");
    let after = flow.token("bob-gitlab").await.unwrap();
    assert_eq!(
        (after.version, after.state, after.authorized_as.clone()),
        (before.version, before.state, before.authorized_as.clone())
    );
    assert_eq!(flow.harness.secret("bob-gitlab").await.unwrap(), secret, "the grant is unchanged");
    let issued = flow.harness.sim.with_state(|state| state.issued_secrets());
    let now = flow.harness.now();
    let live: Vec<_> =
        issued.iter().filter(|s| flow.harness.sim.with_state(|st| st.oauth_access_is_active(s, now))).collect();
    assert_eq!(live, vec![secret.as_ref().unwrap()], "mallory's grant was revoked, not left behind");
}

#[tokio::test]
async fn declined_expired_unknown_and_refused_links_leave_every_token_as_it_was() {
    let flow = Flow::start().await;
    // Declined, without and with return_to.
    let link = flow.link(json!({"token": "new-one", "provider": "gitlab"})).await;
    let location = flow.consent(&link, "deny").await;
    let (status, _, body) = flow.callback(&location).await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{body}");
    assert!(body.contains("declined"), "{body}");
    let link = flow.link(json!({"token": "new-one", "provider": "gitlab", "return_to": "https://p.example/r"})).await;
    let location = flow.consent(&link, "deny").await;
    let (status, redirect, _) = flow.callback(&location).await;
    assert_eq!(
        (status, redirect.as_deref()),
        (StatusCode::SEE_OTHER, Some("https://p.example/r?token=new-one&status=declined"))
    );
    assert!(flow.token("new-one").await.is_none());

    // Expired: consent given after the link's 10 minutes.
    let link = flow.link(json!({"token": "new-one", "provider": "gitlab"})).await;
    flow.clock.advance(TimeDelta::minutes(11));
    let location = flow.consent(&link, "authorize").await;
    let (status, _, body) = flow.callback(&location).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(body.contains("expired"), "{body}");
    assert_no_echo(&body, &location);
    assert!(flow.token("new-one").await.is_none());

    // The provider refuses the code: 502, no placeholder left, the link used up.
    let link = flow.link(json!({"token": "new-one", "provider": "gitlab"})).await;
    let location = flow.consent(&link, "authorize").await;
    let code = query_value(&location, "code").unwrap();
    let tampered = location.replace(&format!("code={code}"), &format!("code={code}x"));
    let (status, _, body) = flow.callback(&tampered).await;
    assert_eq!(status, StatusCode::BAD_GATEWAY, "{body}");
    assert!(body.contains("invalid_grant") && !body.contains(&code), "{body}");
    assert!(flow.token("new-one").await.is_none(), "the placeholder of a failed first authorisation is removed");
    assert_eq!(flow.callback(&location).await.0, StatusCode::BAD_REQUEST, "the link was used up by the failure");

    // An existing grant refused at the provider keeps its state and version.
    flow.harness.track_grant("kept").await.unwrap();
    let before = flow.token("kept").await.unwrap();
    let link = flow.link(json!({"token": "kept", "provider": "gitlab"})).await;
    let location = flow.consent(&link, "authorize").await;
    let code = query_value(&location, "code").unwrap();
    let (status, _, _) = flow.callback(&location.replace(&format!("code={code}"), "code=nope")).await;
    assert_eq!(status, StatusCode::BAD_GATEWAY);
    let after = flow.token("kept").await.unwrap();
    assert_eq!((after.version, after.state, after.lease_owner), (before.version, before.state, None));

    // Unknown and missing states.
    for query in ["state=never-issued&code=abc", "code=abc", "", "error=access_denied"] {
        let (status, _, body) = flow.callback(&format!("{}/oauth/callback?{query}", flow.url)).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{query}: {body}");
        assert!(!body.contains("never-issued"), "{body}");
    }
}

#[tokio::test]
async fn bad_authorization_requests_are_refused_with_a_reason_and_store_nothing() {
    let flow = Flow::start().await;
    flow.harness
        .track_access_token(
            "pat",
            tokenwarden::simulator::TokenOwner::Personal,
            start_time().date_naive() + chrono::Days::new(60),
        )
        .await
        .unwrap();
    let reader = flow.harness.add_client("dbt", ClientRole::Reader, &[], None).await.unwrap();
    let cases = [
        (json!({"token": "x", "provider": "nope"}), StatusCode::NOT_FOUND, "provider"),
        (
            json!({"token": "x", "provider": "gitlab", "kind": "gitlab-personal-access-token"}),
            StatusCode::BAD_REQUEST,
            "not an OAuth grant",
        ),
        (json!({"token": "x", "provider": "gitlab", "scopes": ["a b"]}), StatusCode::BAD_REQUEST, "scope"),
        (
            json!({"token": "x", "provider": "gitlab", "return_to": "javascript:alert(1)"}),
            StatusCode::BAD_REQUEST,
            "return_to",
        ),
        (json!({"token": "Not A Name", "provider": "gitlab"}), StatusCode::BAD_REQUEST, "token"),
        (json!({"token": "pat", "provider": "gitlab"}), StatusCode::CONFLICT, "gitlab-personal-access-token"),
        (json!({"provider": "gitlab"}), StatusCode::BAD_REQUEST, "token"),
    ];
    for (body, expected, mentions) in cases {
        let (status, answer) = flow.api(Method::POST, "/v1/authorizations", &flow.operator, Some(body.clone())).await;
        assert_eq!(status, expected, "{body}: {answer}");
        assert!(answer["message"].as_str().unwrap().contains(mentions), "{body}: {answer}");
    }
    let (status, _) =
        flow.api(Method::POST, "/v1/authorizations", &reader, Some(json!({"token": "x", "provider": "gitlab"}))).await;
    assert_eq!(status, StatusCode::FORBIDDEN, "readers cannot hand out consent links");
    let links = flow
        .harness
        .context
        .store
        .run(|conn| authorizations::purge(conn, TimeDelta::zero(), start_time() + TimeDelta::days(1)))
        .await;
    assert_eq!(links.unwrap(), 0, "no refused request recorded a link");
}

/// Uses a link for `token` and claims its token as the callback does, then "dies": the claim's
/// lease runs out. With `journal` the provider's answer was journaled first (`awaiting_user`:
/// before GitLab said who consented).
async fn die_in_callback(flow: &Flow, token: &str, journal: Option<bool>) {
    let link = flow.link(json!({"token": token, "provider": "gitlab"})).await;
    let state = query_value(link.as_str(), "state").unwrap();
    let context = flow.harness.context.clone();
    let (cipher, now, lease, owner) =
        (context.cipher.clone(), flow.harness.now(), context.lease(), context.owner.clone());
    let hash = state_hash(&state);
    let claimed = context
        .store
        .run(move |conn| {
            let Consumed::Ready(pending) = authorizations::consume(conn, &cipher, &hash, now)? else {
                panic!("the link is ready")
            };
            authorization_claim::claim(conn, &pending, &owner, lease, now)
        })
        .await
        .unwrap();
    let AuthorizationClaim::Claimed { claim, .. } = claimed else { panic!("claimed: {claimed:?}") };
    if let Some(awaiting_user) = journal {
        let sealed = context.cipher.try_seal(
            tokens::secret_context(&claim.token.id, tokens::SecretField::Secret),
            &secrecy::SecretString::from("glpat-journaled".to_owned()),
        );
        let success = rotation::Success {
            secret: sealed.unwrap(),
            refresh_token: None,
            expires_at: Some(now + TimeDelta::hours(2)),
            issued_at: now,
            external_id: None,
            next_rotation_at: Some(now + TimeDelta::minutes(80)),
            refresh_token_rotates: Some(true),
            scope: Some("api".into()),
            username: None,
            retire: None,
        };
        let authorized = Some(rotation::Authorized { user: None, awaiting_user });
        let answer = rotation::Answer {
            lease: claim.lease(),
            success,
            actor: "ops".into(),
            now,
            authorized,
            origin: Default::default(),
        };
        context.store.run(move |conn| answer_journal::write(conn, &[answer], now)).await.unwrap();
    }
    // The process dies here, after GitLab may have exchanged the code. Its lease runs out.
    flow.clock.advance(lease + TimeDelta::seconds(1));
}

async fn claim_after(flow: &Flow, token: &str) -> ClaimResult {
    let (name, now): (TokenName, _) = (token.parse().unwrap(), flow.harness.now());
    let store = &flow.harness.context.store;
    store
        .run(move |conn| rotation::claim(conn, &name, ClaimMode::Scheduled, "next", TimeDelta::minutes(5), now))
        .await
        .unwrap()
}

#[tokio::test]
async fn a_callback_that_dies_before_its_answer_is_journaled_leaves_the_grant_lost_not_half_stored() {
    let flow = Flow::start().await;
    flow.harness.track_grant("victim").await.unwrap();
    die_in_callback(&flow, "victim", None).await;
    let result = claim_after(&flow, "victim").await;
    assert!(matches!(result, ClaimResult::GrantLost), "{result:?}");
    let token = flow.token("victim").await.unwrap();
    assert_eq!(
        (token.state, token.attention_reason.as_deref(), token.remedy.as_deref()),
        (TokenState::NeedsAttention, Some("grant_lost"), Some("reauthorize"))
    );
    assert!(token.last_error.unwrap().contains("authorisation code"));
}

#[tokio::test]
async fn a_first_grant_journaled_before_its_callback_died_is_stored_by_the_next_claim() {
    let flow = Flow::start().await;
    die_in_callback(&flow, "fresh", Some(true)).await;
    let result = claim_after(&flow, "fresh").await;
    assert!(!matches!(result, ClaimResult::GrantLost), "the journaled grant is not lost: {result:?}");
    let token = flow.token("fresh").await.unwrap();
    assert_eq!(token.version, 1, "the journaled answer became version 1");
    assert_eq!(flow.harness.secret("fresh").await.unwrap().as_deref(), Some("glpat-journaled"));
    assert_eq!(flow.history("fresh").await, vec![(1, "authorized".to_owned())]);
}

#[tokio::test]
async fn an_unchecked_answer_is_never_committed_over_a_grant_that_has_an_owner() {
    let flow = Flow::start().await;
    flow.sign_in_at_gitlab(42, "bob");
    let link = flow.link(json!({"token": "bob-gitlab", "provider": "gitlab"})).await;
    let location = flow.consent(&link, "authorize").await;
    assert_eq!(flow.callback(&location).await.0, StatusCode::OK);
    let secret = flow.harness.secret("bob-gitlab").await.unwrap();

    die_in_callback(&flow, "bob-gitlab", Some(true)).await;
    let result = claim_after(&flow, "bob-gitlab").await;
    assert!(matches!(result, ClaimResult::GrantLost), "{result:?}");
    assert_eq!(flow.harness.secret("bob-gitlab").await.unwrap(), secret, "bob's grant was not replaced");
    assert_eq!(flow.token("bob-gitlab").await.unwrap().authorized_as.unwrap().username, "bob");
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, .. ProptestConfig::default() })]

    /// Whatever arrives at the callback, it answers without a server error and never repeats
    /// a value it was sent.
    #[test]
    fn the_callback_never_fails_with_a_server_error_or_echoes_its_query(
        pairs in proptest::collection::vec(
            (prop_oneof![
                Just("code".to_owned()), Just("state".to_owned()), Just("error".to_owned()),
                Just("error_description".to_owned()), "[a-z_]{1,8}"
             ],
             prop_oneof!["[A-Za-z0-9_-]{12,40}", "<script>[a-z]{12}</script>"]),
            0..5,
        )
    ) {
        let (runtime, flow) = callback_target();
        runtime.block_on(async {
            let query: String = url::form_urlencoded::Serializer::new(String::new()).extend_pairs(pairs.iter().map(|(k, v)| (k.to_string(), v.clone()))).finish();
            let answer = flow.http.get(format!("{}/oauth/callback?{query}", flow.url)).send().await.unwrap();
            let status = answer.status();
            let body = answer.text().await.unwrap();
            prop_assert!(status.is_client_error(), "{query}: {status}");
            for (_, value) in &pairs {
                let bare = value.trim_start_matches("<script>").trim_end_matches("</script>");
                prop_assert!(!body.contains(bare), "{query} echoed in {body}");
            }
            prop_assert!(!body.contains("<script"), "{body}");
            Ok(())
        })?;
    }
}

/// One tokenwarden per proptest case would be slow: the cases share one, started once on a
/// runtime that lives as long as the test binary.
fn callback_target() -> &'static (tokio::runtime::Runtime, Flow) {
    static TARGET: std::sync::OnceLock<(tokio::runtime::Runtime, Flow)> = std::sync::OnceLock::new();
    TARGET.get_or_init(|| {
        let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build().unwrap();
        let flow = runtime.block_on(async {
            let flow = Flow::start().await;
            // A few live links, so a random state has real rows to miss.
            for name in ["one", "two", "three"] {
                flow.link(json!({"token": name, "provider": "gitlab"})).await;
            }
            flow
        });
        (runtime, flow)
    })
}
