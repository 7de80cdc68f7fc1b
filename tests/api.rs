//! The internal HTTP API end to end: the full authorisation matrix, forced rotation, secret
//! reads (audited), bad input that changes nothing, and readiness.

use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Days, Utc};
use reqwest::{Method, StatusCode};
use serde_json::Value;
use tokenwarden::api::{AppState, router};
use tokenwarden::domain::ClientRole;
use tokenwarden::engine::{EngineSettings, ManualClock, Scheduler};
use tokenwarden::simulator::TokenOwner;
use tokenwarden::simulator::harness::EngineHarness;
use tokenwarden::store::clients::{self, NewClient};
use tokenwarden::store::{audit, tokens};

struct Api {
    harness: EngineHarness,
    url: String,
    http: reqwest::Client,
    keys: Keys,
    _dir: tempfile::TempDir,
}

/// One API key per kind of caller.
struct Keys {
    operator: String,
    granted_reader: String,
    other_reader: String,
}

fn start_time() -> DateTime<Utc> {
    DateTime::parse_from_rfc3339("2026-11-25T10:00:00Z").unwrap().with_timezone(&Utc)
}

async fn add_client(harness: &EngineHarness, name: &str, role: ClientRole, grants: &[&str]) -> String {
    let new = NewClient {
        name: name.parse().unwrap(),
        role,
        grants: grants.iter().map(|g| g.parse().unwrap()).collect(),
        webhook_url: None,
    };
    let (cipher, now) = (harness.context.cipher.clone(), harness.now());
    let created = harness.context.store.run(move |conn| clients::insert(conn, &cipher, &new, None, "test", now)).await;
    created.unwrap().api_key.expose().to_owned()
}

async fn start(scheduler: bool) -> Api {
    let dir = tempfile::tempdir().unwrap();
    let clock = Arc::new(ManualClock::new(start_time()));
    let harness = EngineHarness::start(dir.path(), clock, EngineSettings::default()).await.unwrap();
    let expires = start_time().date_naive() + Days::new(60);
    for name in ["alpha", "beta"] {
        harness.track_access_token(name, TokenOwner::Personal, expires).await.unwrap();
    }
    let keys = Keys {
        operator: add_client(&harness, "ops", ClientRole::Operator, &[]).await,
        granted_reader: add_client(&harness, "dbt", ClientRole::Reader, &["alpha"]).await,
        other_reader: add_client(&harness, "bi", ClientRole::Reader, &["beta"]).await,
    };
    let handle = scheduler.then(|| Scheduler::new(harness.context.clone(), Default::default()).handle());
    let state = AppState {
        store: harness.context.store.clone(),
        engine: harness.context.clone(),
        scheduler: handle,
        metrics: tokenwarden::telemetry::metrics::install().ok(),
    };
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, router(state)).await.unwrap() });
    Api { harness, url, http: reqwest::Client::new(), keys, _dir: dir }
}

impl Api {
    async fn call(&self, method: Method, path: &str, key: Option<&str>, body: Option<Vec<u8>>) -> (StatusCode, Value) {
        let mut request = self.http.request(method, format!("{}{path}", self.url));
        if let Some(key) = key {
            request = request.bearer_auth(key);
        }
        if let Some(body) = body {
            request = request.header("content-type", "application/json").body(body);
        }
        let response = request.send().await.unwrap();
        let status = response.status();
        let text = response.text().await.unwrap();
        (status, serde_json::from_str(&text).unwrap_or(Value::String(text)))
    }

    async fn version(&self, name: &str) -> i64 {
        self.harness.token(name).await.unwrap().version
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_endpoint_enforces_the_authorisation_matrix() {
    let api = start(false).await;
    let keys = &api.keys;
    let callers: [(&str, Option<&str>); 5] = [
        ("no key", None),
        ("bad key", Some("tw_AAAAAAAAAAAA_notakey")),
        ("granted reader", Some(&keys.granted_reader)),
        ("other reader", Some(&keys.other_reader)),
        ("operator", Some(&keys.operator)),
    ];
    let matrix: [(Method, &str, [u16; 5]); 6] = [
        (Method::GET, "/v1/tokens", [401, 401, 403, 403, 200]),
        (Method::GET, "/v1/tokens/alpha", [401, 401, 200, 404, 200]),
        (Method::GET, "/v1/tokens/alpha/secret", [401, 401, 200, 404, 200]),
        (Method::GET, "/v1/tokens/nope", [401, 401, 404, 404, 404]),
        (Method::GET, "/v1/tokens/nope/secret", [401, 401, 404, 404, 404]),
        (Method::POST, "/v1/tokens/alpha/rotate", [401, 401, 403, 403, 200]),
    ];
    for (method, path, expected) in matrix {
        for ((who, key), status) in callers.iter().zip(expected) {
            let (got, body) = api.call(method.clone(), path, *key, None).await;
            assert_eq!(got.as_u16(), status, "{method} {path} as {who}: {body}");
            if status >= 400 {
                assert!(body["error"].is_string() && body["message"].is_string(), "JSON error body: {body}");
            }
        }
    }
    assert_eq!(api.version("alpha").await, 2, "exactly the operator's rotation happened");
    assert_eq!(api.harness.sim.stats().rotations, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unknown_token_and_an_ungranted_one_look_the_same_to_a_reader() {
    let api = start(false).await;
    let (status_ungranted, ungranted) =
        api.call(Method::GET, "/v1/tokens/beta", Some(&api.keys.granted_reader), None).await;
    let (status_unknown, unknown) =
        api.call(Method::GET, "/v1/tokens/gamma", Some(&api.keys.granted_reader), None).await;
    assert_eq!((status_ungranted, status_unknown), (StatusCode::NOT_FOUND, StatusCode::NOT_FOUND));
    assert_eq!(ungranted["error"], unknown["error"]);
    assert_eq!(
        ungranted["message"].as_str().unwrap().replace("beta", "X"),
        unknown["message"].as_str().unwrap().replace("gamma", "X")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reader_reads_the_current_secret_and_the_read_is_audited() {
    let api = start(false).await;
    let (status, body) = api.call(Method::GET, "/v1/tokens/alpha/secret", Some(&api.keys.granted_reader), None).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["name"], "alpha");
    assert_eq!(body["version"], 1);
    let secret = body["secret"].as_str().unwrap().to_owned();
    assert_eq!(Some(secret.clone()), api.harness.secret("alpha").await.unwrap());
    assert!(api.harness.sim.accepts(&secret));
    assert!(body["expires_at"].is_string());

    let (status, rotated) = api.call(Method::POST, "/v1/tokens/alpha/rotate", Some(&api.keys.operator), None).await;
    assert_eq!(status, StatusCode::OK, "{rotated}");
    assert_eq!(rotated["version"], 2);
    let (_, body) = api.call(Method::GET, "/v1/tokens/alpha/secret", Some(&api.keys.granted_reader), None).await;
    assert_eq!(body["version"], 2);
    assert_ne!(body["secret"].as_str().unwrap(), secret);

    let rows = api.harness.context.store.run(|conn| audit::list(conn, Some("alpha"))).await.unwrap();
    let reads: Vec<_> = rows.iter().filter(|row| row.action == "token.secret_read").collect();
    assert_eq!(reads.len(), 2);
    assert!(reads.iter().all(|row| row.actor == "dbt"));
    assert!(rows.iter().any(|row| row.action == "token.rotate" && row.actor == "ops"));
    assert!(rows.iter().all(|row| !row.detail.clone().unwrap_or_default().contains(&secret)));
}

/// A request and the status and error code it must get.
type BadRequest = (Method, &'static str, Option<Vec<u8>>, u16, &'static str);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_requests_get_their_status_and_change_nothing() {
    let api = start(false).await;
    let operator = Some(api.keys.operator.as_str());
    let cases: [BadRequest; 5] = [
        (Method::POST, "/v1/tokens/alpha/rotate", Some(b"{not json".to_vec()), 400, "bad_json"),
        (Method::POST, "/v1/tokens/alpha/rotate", Some(br#"{"reason": 5}"#.to_vec()), 400, "bad_json"),
        (Method::POST, "/v1/tokens/alpha/rotate", Some(vec![b' '; 65 * 1024]), 413, "body_too_large"),
        (Method::DELETE, "/v1/tokens/alpha", None, 405, "method_not_allowed"),
        (Method::POST, "/v1/tokens/nope/rotate", None, 404, "unknown_token"),
    ];
    for (method, path, body, status, code) in cases {
        let (got, answer) = api.call(method.clone(), path, operator, body).await;
        assert_eq!((got.as_u16(), answer["error"].as_str()), (status, Some(code)), "{method} {path}: {answer}");
    }
    assert_eq!(api.version("alpha").await, 1);
    assert_eq!(api.harness.sim.stats().rotations, 0, "no rejected request reached the provider");
    let (got, _) = api.call(Method::GET, "/v1/nothing-here", operator, None).await;
    assert_eq!(got, StatusCode::NOT_FOUND);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forced_rotation_answers_409_when_paused_and_502_when_the_provider_refuses() {
    let api = start(false).await;
    let operator = Some(api.keys.operator.as_str());
    let name = "alpha".parse().unwrap();
    let now = api.harness.now();
    api.harness.context.store.run(move |conn| tokens::pause(conn, &name, "test", now)).await.unwrap();
    let (status, body) = api.call(Method::POST, "/v1/tokens/alpha/rotate", operator, None).await;
    assert_eq!((status, body["error"].as_str()), (StatusCode::CONFLICT, Some("conflict")), "{body}");

    let secret = api.harness.secret("beta").await.unwrap().unwrap();
    api.harness.sim.with_state(|state| state.revoke(&secret));
    let (status, body) =
        api.call(Method::POST, "/v1/tokens/beta/rotate", operator, Some(b"{\"reason\":\"test\"}".to_vec())).await;
    assert_eq!((status, body["error"].as_str()), (StatusCode::BAD_GATEWAY, Some("provider_error")), "{body}");
    assert!(body["message"].as_str().unwrap().contains("revoked"), "{body}");
    assert_eq!(api.harness.token("beta").await.unwrap().state.as_str(), "needs_attention");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readiness_fails_when_the_store_does_not_answer_or_the_scheduler_never_ticked() {
    let api = start(true).await;
    let (status, body) = api.call(Method::GET, "/readyz", None, None).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
    assert!(body["message"].as_str().unwrap().contains("scheduler"), "{body}");

    let api = start(false).await;
    let (status, _) = api.call(Method::GET, "/readyz", None, None).await;
    assert_eq!(status, StatusCode::OK);
    let blockers: Vec<_> = (0..8)
        .map(|_| {
            let store = api.harness.context.store.clone();
            tokio::spawn(async move {
                store
                    .run(|_| {
                        std::thread::sleep(Duration::from_secs(4));
                        Ok(())
                    })
                    .await
            })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(200)).await;
    let (status, body) = api.call(Method::GET, "/readyz", None, None).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
    assert!(body["message"].as_str().unwrap().contains("store"), "{body}");
    let (status, _) = api.call(Method::GET, "/healthz", None, None).await;
    assert_eq!(status, StatusCode::OK, "liveness does not depend on the store");
    for blocker in blockers {
        blocker.await.unwrap().unwrap();
    }
    let (status, _) = api.call(Method::GET, "/readyz", None, None).await;
    assert_eq!(status, StatusCode::OK, "ready again once the store answers");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_are_served_without_a_key_and_count_rotations_and_token_states() {
    let api = start(false).await;
    let (status, _) = api.call(Method::POST, "/v1/tokens/alpha/rotate", Some(&api.keys.operator), None).await;
    assert_eq!(status, StatusCode::OK);
    let rows = api.harness.context.store.run(tokens::gauges).await.unwrap();
    tokenwarden::telemetry::metrics::refresh_token_gauges(&rows);
    let response = api.http.get(format!("{}/metrics", api.url)).send().await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert!(response.headers()["content-type"].to_str().unwrap().starts_with("text/plain"));
    let text = response.text().await.unwrap();
    for expected in [
        r#"tokenwarden_rotations_total{kind="gitlab-personal-access-token",outcome="success"}"#,
        r#"tokenwarden_tokens{state="active"} 2"#,
        r#"tokenwarden_tokens{state="needs_attention"} 0"#,
        r#"tokenwarden_token_expiry_timestamp_seconds{token="alpha"}"#,
        "tokenwarden_rotation_commit_gap_seconds_bucket",
    ] {
        assert!(text.contains(expected), "{expected} missing from:\n{text}");
    }
    let secret = api.harness.secret("alpha").await.unwrap().unwrap();
    assert!(!text.contains(&secret), "no secret in metrics");
}
