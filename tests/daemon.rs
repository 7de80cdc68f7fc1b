//! The daemon as a whole (`tokenwarden serve` as a process, the simulator, a webhook receiver):
//! a rotation committed while no daemon runs is delivered once one starts, signed, and the
//! receiver then reads the new secret with its own key; and at trace level nothing the
//! simulator issued, no API key and no webhook secret reaches the daemon's output.

mod common;

use std::fs::File;
use std::net::TcpListener;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::http::{HeaderMap, StatusCode};
use axum::routing::post;
use common::Sandbox;
use secrecy::SecretString;
use tokenwarden::notify::verify;

/// What the receiver got: (delivery id header, signature header, body).
type Received = Arc<Mutex<Vec<(String, String, Vec<u8>)>>>;

/// Starts a webhook receiver on loopback that records every delivery and answers 204.
async fn start_receiver() -> (String, Received) {
    let received: Received = Arc::default();
    let sink = received.clone();
    let app = axum::Router::new().route(
        "/hook",
        post(move |headers: HeaderMap, body: Bytes| {
            let sink = sink.clone();
            async move {
                let header = |name: &str| headers.get(name).and_then(|v| v.to_str().ok()).unwrap_or("").to_owned();
                let entry = (header("x-tokenwarden-delivery"), header("x-tokenwarden-signature"), body.to_vec());
                sink.lock().unwrap().push(entry);
                StatusCode::NO_CONTENT
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/hook", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (url, received)
}

/// An HTTP client with tokenwarden's TLS set-up (reqwest is built without a default provider).
fn http_client() -> reqwest::Client {
    tokenwarden::providers::build_http_client(tokenwarden::providers::HttpSettings::default()).unwrap()
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// `serve` on `port` with `RUST_LOG` at `level`, its output going to `log`.
fn start_daemon(sandbox: &Sandbox, port: u16, level: &str, log: &std::path::Path) -> Child {
    Command::new(assert_cmd::cargo::cargo_bin("tokenwarden"))
        .current_dir(sandbox.path())
        .env_clear()
        .env("TOKENWARDEN_DATABASE_URL", sandbox.database_url())
        .env("RUST_LOG", level)
        .args(["serve", "--listen", &format!("127.0.0.1:{port}")])
        .stdin(Stdio::null())
        .stdout(File::create(log.with_extension("stdout")).unwrap())
        .stderr(File::create(log).unwrap())
        .spawn()
        .expect("start tokenwarden serve")
}

fn stop(mut daemon: Child) {
    let pid = daemon.id().to_string();
    assert!(Command::new("kill").args(["-TERM", &pid]).status().unwrap().success());
    let status = daemon.wait().unwrap();
    assert!(status.success(), "serve exited with {status}");
}

/// Polls `done` (in real time, briefly) until it holds.
async fn eventually(what: &str, limit: Duration, mut done: impl FnMut() -> bool) {
    let started = Instant::now();
    while !done() {
        assert!(started.elapsed() < limit, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn get_json(url: &str, key: &str) -> (StatusCode, serde_json::Value) {
    let response = http_client().get(url).bearer_auth(key).send().await.unwrap();
    let status = response.status();
    (status, response.json().await.unwrap_or_default())
}

/// A runtime for the test's own tasks; the sandbox (whose simulator has a runtime of its own)
/// is made and dropped outside it.
fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap()
}

#[test]
fn a_rotation_committed_with_no_daemon_running_is_delivered_signed_when_one_starts() {
    let sandbox = Sandbox::new();
    runtime().block_on(delivered_after_start(&sandbox));
}

async fn delivered_after_start(sandbox: &Sandbox) {
    sandbox.add_gitlab_provider();
    sandbox.add_project_token("ci");
    let (hook, received) = start_receiver().await;
    let created: serde_json::Value = serde_json::from_str(
        &sandbox.ok(&["client", "add", "dbt", "--role", "reader", "--grant", "ci", "--webhook", &hook], ""),
    )
    .unwrap();
    let (api_key, webhook_secret) = (created["api_key"].as_str().unwrap(), created["webhook_secret"].as_str().unwrap());

    sandbox.ok(&["token", "rotate", "ci"], "");
    assert!(received.lock().unwrap().is_empty(), "the CLI only records the delivery");

    let port = free_port();
    let daemon = start_daemon(sandbox, port, "info", &sandbox.path().join("serve.log"));
    eventually("the delivery", Duration::from_secs(15), || !received.lock().unwrap().is_empty()).await;
    let (delivery, signature, body) = received.lock().unwrap()[0].clone();
    let secret = SecretString::from(webhook_secret.to_owned());
    verify(&secret, &signature, &body, chrono::Utc::now(), Duration::from_secs(300)).expect("a valid signature");
    let event: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(
        (event["event"].as_str(), event["token"].as_str(), event["version"].as_i64()),
        (Some("token.rotated"), Some("ci"), Some(2))
    );
    assert_eq!(event["id"].as_str(), Some(delivery.as_str()));
    assert!(!String::from_utf8_lossy(&body).contains("glpat-"), "never the secret");

    let base = format!("http://127.0.0.1:{port}");
    let (status, answer) = get_json(&format!("{base}/v1/tokens/ci/secret"), api_key).await;
    assert_eq!(status, StatusCode::OK, "{answer}");
    assert_eq!(answer["version"], 2);
    assert!(sandbox.gitlab.sim.accepts(answer["secret"].as_str().unwrap()), "the fetched secret works");
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(received.lock().unwrap().len(), 1, "delivered once");
    stop(daemon);
}

#[test]
fn at_trace_level_the_daemon_never_logs_a_secret_it_handled() {
    let sandbox = Sandbox::new();
    runtime().block_on(nothing_secret_in_trace_output(&sandbox));
}

async fn nothing_secret_in_trace_output(sandbox: &Sandbox) {
    sandbox.add_gitlab_oauth_provider();
    sandbox.add_project_token("ci");
    let client_id = sandbox.gitlab.sim.with_state(|state| state.application_ids().remove(0));
    let refresh = sandbox.gitlab.sim.create_grant(&client_id);
    let add = ["token", "add", "grant", "--provider", "gitlab", "--kind", "gitlab-oauth", "--refresh-token-stdin"];
    sandbox.ok(&add, &format!("{refresh}\n"));
    let (hook, received) = start_receiver().await;
    let operator: serde_json::Value =
        serde_json::from_str(&sandbox.ok(&["client", "add", "ops", "--role", "operator", "--webhook", &hook], ""))
            .unwrap();
    let key = operator["api_key"].as_str().unwrap();

    let port = free_port();
    let log = sandbox.path().join("trace.log");
    let daemon = start_daemon(sandbox, port, "trace", &log);
    let base = format!("http://127.0.0.1:{port}");
    let client = http_client();
    let mut ready = false;
    for _ in 0..100 {
        if client.get(format!("{base}/readyz")).send().await.is_ok_and(|r| r.status().is_success()) {
            ready = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(ready, "the daemon became ready");
    for name in ["ci", "grant"] {
        let rotated = client.post(format!("{base}/v1/tokens/{name}/rotate")).bearer_auth(key).send().await.unwrap();
        assert_eq!(rotated.status(), StatusCode::OK);
        let (status, _) = get_json(&format!("{base}/v1/tokens/{name}/secret"), key).await;
        assert_eq!(status, StatusCode::OK);
    }
    eventually("both deliveries", Duration::from_secs(10), || received.lock().unwrap().len() >= 2).await;
    stop(daemon);

    let mut output = std::fs::read_to_string(&log).unwrap();
    output.push_str(&std::fs::read_to_string(log.with_extension("stdout")).unwrap());
    assert!(output.contains("TRACE") || output.contains("trace"), "trace logging was on");
    let mut secrets = sandbox.gitlab.sim.with_state(|state| state.issued_secrets());
    assert!(secrets.len() >= 8, "tokens, grants, access tokens and the application secret: {}", secrets.len());
    secrets.push(key.to_owned());
    secrets.push(operator["webhook_secret"].as_str().unwrap().to_owned());
    for secret in secrets {
        assert!(!output.contains(&secret), "a secret reached the daemon's output");
    }
}
