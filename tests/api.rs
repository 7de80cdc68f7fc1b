//! The internal HTTP API end to end: the full authorisation matrix, forced rotation (which a
//! client going away never cancels), secret reads (audited), bad input that changes nothing
//! and is answered in JSON, readiness, and the OpenAPI document describing all of it.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Days, TimeDelta, Utc};
use reqwest::{Method, StatusCode};
use serde_json::Value;
use tokenwarden::api::{AppState, DetachedRotations, KEY_CACHE_TTL, router, routes};
use tokenwarden::crypto::ApiKey;
use tokenwarden::domain::ClientRole;
use tokenwarden::engine::{EngineSettings, ManualClock, Scheduler};
use tokenwarden::simulator::harness::EngineHarness;
use tokenwarden::simulator::{FaultRates, TokenOwner};
use tokenwarden::store::clients;
use tokenwarden::store::{audit, tokens};

struct Api {
    harness: EngineHarness,
    clock: Arc<ManualClock>,
    url: String,
    http: reqwest::Client,
    keys: Keys,
    rotations: DetachedRotations,
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
    harness.add_client(name, role, grants, None).await.unwrap()
}

async fn start(scheduler: bool) -> Api {
    start_with(scheduler, |_| {}).await
}

/// Starts the API on loopback with two tokens (`alpha`, `beta`) and three clients;
/// `configure` may change the state before the router is built.
async fn start_with(scheduler: bool, configure: impl FnOnce(&mut AppState)) -> Api {
    let dir = tempfile::tempdir().unwrap();
    let clock = Arc::new(ManualClock::new(start_time()));
    let harness = EngineHarness::start(dir.path(), clock.clone(), EngineSettings::default()).await.unwrap();
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
    let mut state = AppState {
        scheduler: handle,
        metrics: tokenwarden::telemetry::metrics::install().ok(),
        ..AppState::new(harness.context.store.clone(), harness.context.clone())
    };
    configure(&mut state);
    let rotations = state.rotations.clone();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, router(state)).await.unwrap() });
    Api { harness, clock, url, http: reqwest::Client::new(), keys, rotations, _dir: dir }
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

    /// `GET /openapi.json`, parsed.
    async fn openapi(&self) -> Value {
        let (status, document) = self.call(Method::GET, "/openapi.json", None, None).await;
        assert_eq!(status, StatusCode::OK, "{document}");
        document
    }

    /// Polls (in real time, bounded) until `name` is active at `version`.
    async fn wait_for_version(&self, name: &str, version: i64) {
        for _ in 0..200 {
            let token = self.harness.token(name).await.unwrap();
            if token.version == version && token.state.as_str() == "active" {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let token = self.harness.token(name).await.unwrap();
        panic!("{name} never reached version {version}: version {} in state {}", token.version, token.state);
    }
}

/// The statuses the document declares for one operation.
fn documented_statuses(document: &Value, method: &Method, path: &str) -> BTreeSet<u16> {
    let template = path.replace("/alpha", "/{name}").replace("/nope", "/{name}");
    let operation = &document["paths"][template.as_str()][method.as_str().to_lowercase()];
    let responses = operation["responses"].as_object().unwrap_or_else(|| panic!("{method} {template} undocumented"));
    responses.keys().map(|status| status.parse().unwrap()).collect()
}

/// The properties and required properties of a component schema, following `allOf` and `$ref`.
fn schema_fields(schemas: &Value, name: &str) -> (BTreeSet<String>, BTreeSet<String>) {
    let mut fields = (BTreeSet::new(), BTreeSet::new());
    let mut pending = vec![schemas[name].clone()];
    while let Some(schema) = pending.pop() {
        if let Some(reference) = schema["$ref"].as_str() {
            pending.push(schemas[reference.trim_start_matches("#/components/schemas/")].clone());
            continue;
        }
        pending.extend(schema["allOf"].as_array().cloned().unwrap_or_default());
        fields.0.extend(schema["properties"].as_object().into_iter().flat_map(|p| p.keys().cloned()));
        fields
            .1
            .extend(schema["required"].as_array().into_iter().flatten().filter_map(|f| f.as_str().map(String::from)));
    }
    fields
}

/// A key shaped like a real one, with the lookup part of an existing client's key (so the
/// client's row is found) but a different secret (so only the hash comparison refuses it).
fn wrong_secret_for(key: &str) -> String {
    let lookup = ApiKey::lookup_of(key).expect("a well-formed key");
    let forged = format!("tw_{lookup}_{}", "A".repeat(43));
    assert_ne!(forged, key);
    assert_eq!(ApiKey::lookup_of(&forged), Some(lookup));
    forged
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_endpoint_enforces_the_authorisation_matrix_and_answers_only_documented_statuses() {
    let api = start(false).await;
    let keys = &api.keys;
    let wrong_secret = wrong_secret_for(&keys.operator);
    let callers: [(&str, Option<&str>); 6] = [
        ("no key", None),
        ("malformed key", Some("tw_AAAAAAAAAAAA_notakey")),
        ("the operator's lookup with a wrong secret", Some(&wrong_secret)),
        ("granted reader", Some(&keys.granted_reader)),
        ("other reader", Some(&keys.other_reader)),
        ("operator", Some(&keys.operator)),
    ];
    let matrix: [(Method, &str, [u16; 6]); 10] = [
        (Method::GET, "/healthz", [200, 200, 200, 200, 200, 200]),
        (Method::GET, "/readyz", [200, 200, 200, 200, 200, 200]),
        (Method::GET, "/metrics", [200, 200, 200, 200, 200, 200]),
        (Method::GET, "/openapi.json", [200, 200, 200, 200, 200, 200]),
        (Method::GET, "/v1/tokens", [401, 401, 401, 403, 403, 200]),
        (Method::GET, "/v1/tokens/alpha", [401, 401, 401, 200, 404, 200]),
        (Method::GET, "/v1/tokens/alpha/secret", [401, 401, 401, 200, 404, 200]),
        (Method::GET, "/v1/tokens/nope", [401, 401, 401, 404, 404, 404]),
        (Method::GET, "/v1/tokens/nope/secret", [401, 401, 401, 404, 404, 404]),
        (Method::POST, "/v1/tokens/alpha/rotate", [401, 401, 401, 403, 403, 200]),
    ];
    let document = api.openapi().await;
    for (method, path, expected) in matrix {
        let documented = documented_statuses(&document, &method, path);
        for ((who, key), status) in callers.iter().zip(expected) {
            let (got, body) = api.call(method.clone(), path, *key, None).await;
            assert_eq!(got.as_u16(), status, "{method} {path} as {who}: {body}");
            assert!(documented.contains(&status), "{method} {path} answered {status}, not in {documented:?}");
            if status >= 400 {
                assert!(body["error"].is_string() && body["message"].is_string(), "JSON error body: {body}");
            }
        }
    }
    assert_eq!(api.version("alpha").await, 2, "exactly the operator's rotation happened");
    assert_eq!(api.harness.sim.stats().rotations, 1);
    let audited = api.harness.context.store.run(|conn| audit::list(conn, Some("alpha"))).await.unwrap();
    let mut reads: Vec<_> =
        audited.iter().filter(|row| row.action == "token.secret_read").map(|row| row.actor.as_str()).collect();
    reads.sort_unstable();
    assert_eq!(reads, ["dbt", "ops"], "only the granted reader's and the operator's reads got through");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unknown_token_and_an_ungranted_one_look_the_same_to_a_reader() {
    let api = start(false).await;
    for suffix in ["", "/secret"] {
        let (status_ungranted, ungranted) =
            api.call(Method::GET, &format!("/v1/tokens/beta{suffix}"), Some(&api.keys.granted_reader), None).await;
        let (status_unknown, unknown) =
            api.call(Method::GET, &format!("/v1/tokens/gamma{suffix}"), Some(&api.keys.granted_reader), None).await;
        assert_eq!((status_ungranted, status_unknown), (StatusCode::NOT_FOUND, StatusCode::NOT_FOUND), "{suffix}");
        assert_eq!(ungranted["error"], unknown["error"]);
        assert_eq!(
            ungranted["message"].as_str().unwrap().replace("beta", "X"),
            unknown["message"].as_str().unwrap().replace("gamma", "X")
        );
    }
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
async fn bad_requests_get_their_documented_status_and_a_json_error_and_change_nothing() {
    let api = start(false).await;
    let operator = api.keys.operator.as_str();
    let document = api.openapi().await;
    let cases: [BadRequest; 11] = [
        (Method::POST, "/v1/tokens/alpha/rotate", Some(b"{not json".to_vec()), 400, "bad_json"),
        (Method::POST, "/v1/tokens/alpha/rotate", Some(br#"{"reason": 5}"#.to_vec()), 400, "bad_json"),
        (Method::POST, "/v1/tokens/alpha/rotate", Some(vec![b' '; 65 * 1024]), 413, "body_too_large"),
        (Method::POST, "/v1/tokens/nope/rotate", None, 404, "unknown_token"),
        (Method::POST, "/v1/tokens/%FF/rotate", None, 400, "bad_path"),
        (Method::GET, "/v1/tokens/%FF", None, 400, "bad_path"),
        (Method::GET, "/v1/tokens/%FF/secret", None, 400, "bad_path"),
        (Method::GET, "/v1/tokens/%C3%28/secret", None, 400, "bad_path"),
        (Method::GET, "/v1/tokens?state=bogus", None, 400, "bad_query"),
        (Method::GET, "/v1/tokens?colour=red", None, 400, "bad_query"),
        (Method::DELETE, "/v1/tokens/alpha", None, 405, "method_not_allowed"),
    ];
    for (method, path, body, status, code) in cases {
        let response = api.http.request(method.clone(), format!("{}{path}", api.url)).bearer_auth(operator);
        let response = match body {
            Some(body) => response.header("content-type", "application/json").body(body),
            None => response,
        };
        let response = response.send().await.unwrap();
        let got = response.status().as_u16();
        let content_type = response.headers().get("content-type").map(|v| v.to_str().unwrap().to_owned());
        let text = response.text().await.unwrap();
        let answer: Value = serde_json::from_str(&text).unwrap_or_else(|_| panic!("{method} {path}: not JSON: {text}"));
        assert_eq!((got, answer["error"].as_str()), (status, Some(code)), "{method} {path}: {answer}");
        assert!(answer["message"].as_str().is_some_and(|m| !m.is_empty()), "{method} {path}: {answer}");
        assert_eq!(content_type.as_deref(), Some("application/json"), "{method} {path}");
        if method != Method::DELETE {
            let path = path.split('?').next().unwrap().replace("%FF", "alpha").replace("%C3%28", "alpha");
            let documented = documented_statuses(&document, &method, &path);
            assert!(documented.contains(&status), "{method} {path}: {status} is not documented in {documented:?}");
        }
    }
    assert_eq!(api.version("alpha").await, 1);
    assert_eq!(api.harness.sim.stats().rotations, 0, "no rejected request reached the provider");
    let (got, _) = api.call(Method::GET, "/v1/nothing-here", Some(operator), None).await;
    assert_eq!(got, StatusCode::NOT_FOUND);
    let (got, body) = api.call(Method::GET, "/v1/tokens/%FF/secret", None, None).await;
    assert_eq!((got, body["error"].as_str()), (StatusCode::UNAUTHORIZED, Some("unauthorized")), "the key first");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_token_list_can_be_narrowed_to_one_state() {
    let api = start(false).await;
    let name = "beta".parse().unwrap();
    let now = api.harness.now();
    api.harness.context.store.run(move |conn| tokens::pause(conn, &name, "test", now)).await.unwrap();
    let operator = Some(api.keys.operator.as_str());
    let names = |list: &Value| -> Vec<String> {
        list.as_array().unwrap().iter().map(|token| token["name"].as_str().unwrap().to_owned()).collect()
    };
    let (status, all) = api.call(Method::GET, "/v1/tokens", operator, None).await;
    assert_eq!((status, names(&all)), (StatusCode::OK, vec!["alpha".to_owned(), "beta".to_owned()]));
    let (_, paused) = api.call(Method::GET, "/v1/tokens?state=paused", operator, None).await;
    assert_eq!(names(&paused), ["beta"]);
    let (_, attention) = api.call(Method::GET, "/v1/tokens?state=needs_attention", operator, None).await;
    assert_eq!(names(&attention), Vec::<String>::new());
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
    let gauges = api.harness.context.store.run(|conn| tokens::gauges(conn, 10)).await.unwrap();
    tokenwarden::telemetry::metrics::refresh_token_gauges(&gauges);
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_route_the_router_serves_is_in_the_openapi_document_and_nothing_else_is() {
    let api = start(false).await;
    let document = api.openapi().await;
    let version = document["openapi"].as_str().unwrap();
    assert!(version.starts_with("3."), "OpenAPI 3.x, not {version}");
    assert_eq!(document["info"]["title"], "tokenwarden");

    let served: BTreeSet<(String, String)> =
        routes().into_iter().map(|route| (route.method.to_owned(), route.path.to_owned())).collect();
    let mut documented = BTreeSet::new();
    for (path, item) in document["paths"].as_object().unwrap() {
        for method in ["get", "put", "post", "delete", "options", "head", "patch", "trace"] {
            if item.get(method).is_some() {
                documented.insert((method.to_owned(), path.clone()));
            }
        }
    }
    assert_eq!(served, documented, "the router's routes and the document's operations differ");
    for expected in ["/healthz", "/readyz", "/metrics", "/openapi.json", "/v1/tokens", "/v1/tokens/{name}/rotate"] {
        assert!(served.iter().any(|(_, path)| path == expected), "{expected} is served");
    }

    for (method, path) in &served {
        let method: Method = method.to_uppercase().parse().unwrap();
        let concrete = path.replace("{name}", "alpha");
        // A PATCH needs something to change and an acknowledgement a version (and a reader);
        // every other operation succeeds for the operator without a body.
        let (key, request) = match (method.as_str(), path.as_str()) {
            ("PATCH", _) => (&api.keys.operator, Some(br#"{"gitlab_name": "alpha"}"#.to_vec())),
            (_, "/v1/tokens/{name}/ack") => (&api.keys.granted_reader, Some(br#"{"version": 1}"#.to_vec())),
            (_, "/v1/authorizations") => {
                (&api.keys.operator, Some(br#"{"token": "linked", "provider": "gitlab"}"#.to_vec()))
            }
            _ => (&api.keys.operator, None),
        };
        let (status, body) = api.call(method.clone(), &concrete, Some(key), request).await;
        assert!(
            !matches!(body["error"].as_str(), Some("not_found" | "method_not_allowed")),
            "{method} {path} is listed but the router does not serve it: {status} {body}"
        );
        assert!(status.is_success(), "{method} {concrete}: {status} {body}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_v1_operation_requires_the_bearer_key_and_documents_its_json_errors() {
    let api = start(false).await;
    let document = api.openapi().await;
    let scheme = &document["components"]["securitySchemes"]["bearer"];
    assert_eq!((scheme["type"].as_str(), scheme["scheme"].as_str()), (Some("http"), Some("bearer")), "{scheme}");

    let error = &document["components"]["schemas"]["ErrorBody"];
    assert_eq!(error["properties"]["error"]["type"], "string", "{error}");
    assert_eq!(error["properties"]["message"]["type"], "string", "{error}");
    let required: BTreeSet<&str> = error["required"].as_array().unwrap().iter().filter_map(Value::as_str).collect();
    assert_eq!(required, BTreeSet::from(["error", "message"]));

    let errors: [(&str, &str, &[u16]); 4] = [
        ("get", "/v1/tokens", &[400, 401, 403, 503]),
        ("get", "/v1/tokens/{name}", &[400, 401, 404, 503]),
        ("get", "/v1/tokens/{name}/secret", &[400, 401, 404, 409, 503]),
        ("post", "/v1/tokens/{name}/rotate", &[400, 401, 403, 404, 409, 413, 502, 503]),
    ];
    for (method, path, statuses) in errors {
        let operation = &document["paths"][path][method];
        assert_eq!(operation["security"], serde_json::json!([{"bearer": []}]), "{method} {path}");
        for status in statuses {
            let response = &operation["responses"][status.to_string()];
            let schema = &response["content"]["application/json"]["schema"]["$ref"];
            assert_eq!(schema, "#/components/schemas/ErrorBody", "{method} {path} {status}: {response}");
        }
        assert!(operation["responses"]["200"].is_object(), "{method} {path} documents its success");
    }
    for path in ["/healthz", "/readyz", "/metrics", "/openapi.json"] {
        let operation = &document["paths"][path]["get"];
        assert!(operation.get("security").is_none(), "{path} needs no key: {operation}");
    }
    assert!(document.get("security").is_none(), "no document-wide key requirement (health needs none)");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_documented_token_metadata_has_no_secret_and_matches_what_is_served() {
    let api = start(false).await;
    let document = api.openapi().await;
    let schemas = &document["components"]["schemas"];
    let properties: BTreeSet<String> = schemas["Token"]["properties"].as_object().unwrap().keys().cloned().collect();
    for secret in ["secret", "refresh_token", "access_token", "api_key", "webhook_secret", "client_secret"] {
        assert!(!properties.contains(secret), "Token documents a `{secret}` field");
    }
    assert!(schemas["TokenSecret"]["properties"]["secret"].is_object(), "only the secret endpoint has one");
    let ok_schema = |path: &str| {
        document["paths"][path]["get"]["responses"]["200"]["content"]["application/json"]["schema"]["$ref"].clone()
    };
    assert_eq!(ok_schema("/v1/tokens/{name}"), "#/components/schemas/TokenDetail");
    assert_eq!(ok_schema("/v1/tokens/{name}/secret"), "#/components/schemas/TokenSecret");
    let (detail, detail_required) = schema_fields(schemas, "TokenDetail");
    assert!(properties.is_subset(&detail) && detail.contains("consumers"), "{detail:?}");

    let (_, served) = api.call(Method::GET, "/v1/tokens/alpha", Some(&api.keys.operator), None).await;
    let served: BTreeSet<String> = served.as_object().unwrap().keys().cloned().collect();
    assert!(served.is_subset(&detail), "served but undocumented: {:?}", served.difference(&detail));
    let required = schemas["Token"]["required"].as_array().unwrap();
    assert!(required.iter().all(|field| served.contains(field.as_str().unwrap())), "{required:?} vs {served:?}");
    assert!(detail_required.is_subset(&served), "{detail_required:?} vs {served:?}");
    let secret = api.harness.secret("alpha").await.unwrap().unwrap();
    assert!(!document.to_string().contains(&secret));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_disconnects_mid_rotation_does_not_cancel_it() {
    let api = start(false).await;
    api.harness.sim.set_rates(FaultRates { latency_ms: 1500, ..FaultRates::default() });
    let impatient = reqwest::Client::builder().timeout(Duration::from_millis(300)).build().unwrap();
    let url = format!("{}/v1/tokens/alpha/rotate", api.url);
    let gave_up = impatient.post(url).bearer_auth(&api.keys.operator).send().await.unwrap_err();
    assert!(gave_up.is_timeout(), "{gave_up}");
    assert_eq!(api.harness.sim.stats().rotations, 0, "the client left before GitLab answered");

    api.wait_for_version("alpha", 2).await;
    let stats = api.harness.sim.stats();
    assert_eq!(stats.rotations, 1);
    assert_eq!((stats.family_revocations, stats.refresh_token_reuses), (0, 0), "{stats:?}");
    let secret = api.harness.secret("alpha").await.unwrap().unwrap();
    assert!(api.harness.sim.accepts(&secret), "the committed secret is the one GitLab issued");
    let token = api.harness.token("alpha").await.unwrap();
    assert_eq!((token.lease_owner, token.last_error), (None, None));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_forced_rotation_that_outlasts_the_wait_answers_503_and_still_commits() {
    let api = start_with(false, |state| state.forced_rotation_wait = Duration::from_millis(200)).await;
    api.harness.sim.set_rates(FaultRates { latency_ms: 1000, ..FaultRates::default() });
    let (status, body) = api.call(Method::POST, "/v1/tokens/alpha/rotate", Some(&api.keys.operator), None).await;
    assert_eq!((status, body["error"].as_str()), (StatusCode::SERVICE_UNAVAILABLE, Some("rotation_in_progress")));
    assert_eq!(body["message"], "rotation still in progress; see GET /v1/tokens/alpha");
    assert_eq!(api.rotations.running(), 1, "the rotation carries on");
    assert_eq!(api.harness.token("alpha").await.unwrap().state.as_str(), "rotating");

    tokio::time::timeout(Duration::from_secs(15), api.rotations.idle()).await.expect("the rotation finishes");
    let token = api.harness.token("alpha").await.unwrap();
    assert_eq!((token.version, token.state.as_str()), (2, "active"), "committed before it counted as finished");
    let stats = api.harness.sim.stats();
    assert_eq!((stats.rotations, stats.family_revocations), (1, 0), "{stats:?}");
    let (status, body) = api.call(Method::GET, "/v1/tokens/alpha", Some(&api.keys.operator), None).await;
    assert_eq!((status, body["version"].as_i64()), (StatusCode::OK, Some(2)));
}

#[tokio::test]
async fn a_removed_client_is_refused_once_the_key_cache_ttl_has_passed() {
    let api = start(false).await;
    let (operator, reader) = (api.keys.operator.clone(), api.keys.granted_reader.clone());
    for key in [&operator, &reader] {
        let (status, body) = api.call(Method::GET, "/v1/tokens/alpha/secret", Some(key), None).await;
        assert_eq!(status, StatusCode::OK, "{body}");
    }
    let now = api.harness.now();
    for name in ["ops", "dbt"] {
        let name = name.parse().unwrap();
        api.harness.context.store.run(move |conn| clients::remove(conn, &name, "test", now)).await.unwrap();
    }
    // Within the TTL the operator's key is still taken from the cache (the documented bound);
    // the reader's grants went with it, so the reader is refused at once.
    let (status, body) = api.call(Method::GET, "/v1/tokens/alpha/secret", Some(&operator), None).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let (status, body) = api.call(Method::GET, "/v1/tokens/alpha/secret", Some(&reader), None).await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{body}");

    api.clock.advance(TimeDelta::from_std(KEY_CACHE_TTL).unwrap());
    for key in [&operator, &reader] {
        let (status, body) = api.call(Method::GET, "/v1/tokens/alpha/secret", Some(key), None).await;
        assert_eq!((status, body["error"].as_str()), (StatusCode::UNAUTHORIZED, Some("unauthorized")), "{body}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn patch_changes_a_tokens_policy_in_place_for_an_operator_only_and_refuses_bad_settings() {
    let api = start(false).await;
    let document = api.openapi().await;
    let documented = documented_statuses(&document, &Method::PATCH, "/v1/tokens/alpha");
    let planned = api.harness.token("alpha").await.unwrap().next_rotation_at;
    let body = |json: &str| Some(json.as_bytes().to_vec());
    let change = r#"{"lifetime": "90d", "margin": "10d", "rotate_at_fraction": 0.5, "gitlab_name": "alpha bot"}"#;
    let cases: [(Option<&str>, &str, &str, u16); 9] = [
        (None, "alpha", change, 401),
        (Some(&api.keys.granted_reader), "alpha", change, 403),
        (Some(&api.keys.operator), "nope", change, 404),
        (Some(&api.keys.operator), "alpha", "{}", 400),
        (Some(&api.keys.operator), "alpha", r#"{"lifetime": "400d"}"#, 400),
        (Some(&api.keys.operator), "alpha", r#"{"lifetime": "soon"}"#, 400),
        (Some(&api.keys.operator), "alpha", r#"{"rotate_before": "40d"}"#, 409),
        (Some(&api.keys.operator), "alpha", r#"{"owner": "me"}"#, 400),
        (Some(&api.keys.operator), "alpha", change, 200),
    ];
    for (key, name, json, expected) in cases {
        let (status, answer) = api.call(Method::PATCH, &format!("/v1/tokens/{name}"), key, body(json)).await;
        assert_eq!(status.as_u16(), expected, "{name} {json}: {answer}");
        assert!(documented.contains(&expected), "{expected} not in {documented:?}");
        if expected == 200 {
            assert_eq!(answer["policy_overrides"]["lifetime"], "90d", "{answer}");
            assert_eq!(answer["policy_overrides"]["rotate_before"], "10d", "{answer}");
            assert_eq!(answer["gitlab_name"], "alpha bot");
            assert_eq!(answer["version"], 1, "no new version");
        } else {
            assert_eq!(api.harness.token("alpha").await.unwrap().next_rotation_at, planned, "{json}: unchanged");
        }
    }
    assert_ne!(api.harness.token("alpha").await.unwrap().next_rotation_at, planned, "re-planned at once");
    let audited = api.harness.context.store.run(|conn| audit::list(conn, Some("alpha"))).await.unwrap();
    assert!(audited.iter().any(|row| row.action == "token.update" && row.actor == "ops"), "audited as the operator");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_granted_reader_acknowledges_versions_and_operators_see_who_lags() {
    let api = start(false).await;
    let api = &api;
    let ack = |key: &str, name: &str, body: &str| {
        let (key, path, body) = (key.to_owned(), format!("/v1/tokens/{name}/ack"), body.as_bytes().to_vec());
        async move { api.call(Method::POST, &path, Some(&key), Some(body)).await }
    };
    let reader = api.keys.granted_reader.clone();

    let (status, body) = ack(&reader, "alpha", r#"{"version": 1}"#).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!((body["client"].as_str(), body["acknowledged_version"].as_i64()), (Some("dbt"), Some(1)));
    assert!(body["acknowledged_at"].is_string(), "{body}");

    // Refusals: a version the token never had, an ungranted or unknown token, an operator, bad JSON.
    for (key, name, request, status, error) in [
        (&reader, "alpha", r#"{"version": 2}"#, 409, "conflict"),
        (&reader, "alpha", r#"{"version": 0}"#, 409, "conflict"),
        (&reader, "beta", r#"{"version": 1}"#, 404, "unknown_token"),
        (&reader, "gamma", r#"{"version": 1}"#, 404, "unknown_token"),
        (&api.keys.operator, "alpha", r#"{"version": 1}"#, 403, "forbidden"),
        (&reader, "alpha", r#"{"version": "1"}"#, 400, "bad_json"),
        (&reader, "alpha", r#"{"version": 1, "extra": true}"#, 400, "bad_json"),
        (&reader, "alpha", r#"{}"#, 400, "bad_json"),
    ] {
        let (got, body) = ack(key, name, request).await;
        assert_eq!(got.as_u16(), status, "{name} {request}: {body}");
        assert!(body["message"].is_string(), "{body}");
        assert_eq!(body["error"], error, "{body}");
    }

    let (status, rotated) = api.call(Method::POST, "/v1/tokens/alpha/rotate", Some(&api.keys.operator), None).await;
    assert_eq!(status, StatusCode::OK, "{rotated}");
    let (_, shown) = api.call(Method::GET, "/v1/tokens/alpha", Some(&api.keys.operator), None).await;
    assert_eq!(shown["version"], 2, "{shown}");
    assert_eq!(shown["consumers"].as_array().unwrap().len(), 1, "{shown}");
    assert_eq!(shown["consumers"][0]["client"], "dbt");
    assert_eq!(shown["consumers"][0]["acknowledged_version"], 1);
    let gauges = api.harness.context.store.run(|conn| tokens::gauges(conn, 10)).await.unwrap();
    tokenwarden::telemetry::metrics::refresh_token_gauges(&gauges);
    let metrics = api.http.get(format!("{}/metrics", api.url)).send().await.unwrap().text().await.unwrap();
    assert!(metrics.contains(r#"tokenwarden_consumer_version_lag{token="alpha",client="dbt"} 1"#), "{metrics}");

    let (status, body) = ack(&reader, "alpha", r#"{"version": 2}"#).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let (_, shown) = api.call(Method::GET, "/v1/tokens/alpha", Some(&reader), None).await;
    assert_eq!(shown["consumers"][0]["acknowledged_version"], 2, "{shown}");
    let gauges = api.harness.context.store.run(|conn| tokens::gauges(conn, 10)).await.unwrap();
    tokenwarden::telemetry::metrics::refresh_token_gauges(&gauges);
    let metrics = api.http.get(format!("{}/metrics", api.url)).send().await.unwrap().text().await.unwrap();
    assert!(metrics.contains(r#"tokenwarden_consumer_version_lag{token="alpha",client="dbt"} 0"#), "{metrics}");

    let rows = api.harness.context.store.run(|conn| audit::list(conn, Some("alpha"))).await.unwrap();
    let acks: Vec<_> = rows
        .iter()
        .filter(|row| row.action == "token.acknowledged")
        .map(|row| (row.actor.as_str(), row.detail.as_deref()))
        .collect();
    assert_eq!(acks.len(), 2, "{acks:?}");
    assert!(acks.contains(&("dbt", Some("version=1"))) && acks.contains(&("dbt", Some("version=2"))), "{acks:?}");
}
