//! The daemon as a whole (`tokenwarden serve` as a process, the simulator, a webhook receiver):
//! a rotation committed while no daemon runs is delivered once one starts, signed, and the
//! receiver then reads the new secret with its own key; a rotation the scheduler makes on its
//! own is delivered with a signature a receiver checks by the documented scheme alone; a
//! daemon killed before its delivery succeeded leaves it to the next one, same delivery id;
//! and at trace level nothing the simulator issued, no API key and no webhook secret reaches
//! the daemon's output, its arguments (what `ps` shows) or, in plain text, any file it wrote
//! (database, WAL, shared memory), and those files are readable by their owner only.

mod common;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::http::{HeaderMap, StatusCode};
use axum::routing::post;
use chrono::{Days, Utc};
use common::Sandbox;
use common::serve_process::ServeProcess;
use hmac::{Hmac, KeyInit, Mac};
use secrecy::SecretString;
use sha2::Sha256;
use tokenwarden::config::DatabaseUrl;
use tokenwarden::notify::verify;
use tokenwarden::simulator::TokenOwner;
use tokenwarden::store::Store;
use tokenwarden::store::outbox::{self, Delivery};

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

/// `serve` in the sandbox with default settings and `RUST_LOG` at `level`, its standard error
/// going to `log` (standard output beside it); returns it once it serves, with its API's URL.
fn start_daemon(sandbox: &Sandbox, level: &str, log: &std::path::Path) -> (ServeProcess, String) {
    let config = sandbox.path().join("serve.toml");
    std::fs::write(&config, "").unwrap();
    let env = [("TOKENWARDEN_DATABASE_URL", sandbox.database_url()), ("RUST_LOG", level.to_owned())];
    let mut daemon = ServeProcess::start(sandbox.path(), &config, log, &env);
    let base = daemon.wait_for_api(log, Duration::from_secs(20));
    (daemon, base)
}

/// SIGTERM, and a clean exit within 30 s.
fn stop(daemon: ServeProcess) {
    let status = daemon.terminate(Duration::from_secs(30));
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

    let (daemon, base) = start_daemon(sandbox, "info", &sandbox.path().join("serve.log"));
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

    let (status, answer) = get_json(&format!("{base}/v1/tokens/ci/secret"), api_key).await;
    assert_eq!(status, StatusCode::OK, "{answer}");
    assert_eq!(answer["version"], 2);
    assert!(sandbox.gitlab.sim.accepts(answer["secret"].as_str().unwrap()), "the fetched secret works");
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(received.lock().unwrap().len(), 1, "delivered once");
    stop(daemon);
}

/// Everything in the sandbox the daemon and the CLI wrote: the database, its WAL and
/// shared-memory files, the key and the logs, as raw bytes with their permission bits.
fn files_written(sandbox: &Sandbox) -> Vec<(std::path::PathBuf, Vec<u8>, u32)> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::read_dir(sandbox.path())
        .unwrap()
        .map(|entry| entry.unwrap().path())
        .filter(|path| path.is_file())
        .filter_map(|path| {
            let bytes = std::fs::read(&path).ok()?;
            let mode = std::fs::metadata(&path).ok()?.permissions().mode() & 0o777;
            Some((path, bytes, mode))
        })
        .collect()
}

fn contains_bytes(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|window| window == needle)
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

    let log = sandbox.path().join("trace.log");
    let (daemon, base) = start_daemon(sandbox, "trace", &log);
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
    // What `ps` shows of the daemon: its arguments name no secret (they are read from stdin,
    // files and the store, never from the command line).
    let cmdline = std::fs::read(format!("/proc/{}/cmdline", daemon.pid())).unwrap();
    for name in ["ci", "grant"] {
        let rotated = client.post(format!("{base}/v1/tokens/{name}/rotate")).bearer_auth(key).send().await.unwrap();
        assert_eq!(rotated.status(), StatusCode::OK);
        let (status, _) = get_json(&format!("{base}/v1/tokens/{name}/secret"), key).await;
        assert_eq!(status, StatusCode::OK);
    }
    eventually("both deliveries", Duration::from_secs(10), || received.lock().unwrap().len() >= 2).await;
    // The files as they are while the daemon runs (its WAL and shared memory still there), and
    // again after it stopped.
    let mut files = files_written(sandbox);
    assert!(files.iter().any(|(path, _, _)| path.to_string_lossy().ends_with("-wal")), "the WAL was read");
    stop(daemon);
    files.extend(files_written(sandbox));

    let mut output = std::fs::read_to_string(&log).unwrap();
    output.push_str(&std::fs::read_to_string(log.with_extension("stdout")).unwrap());
    assert!(output.contains("TRACE") || output.contains("trace"), "trace logging was on");
    let mut secrets = sandbox.gitlab.sim.with_state(|state| state.issued_secrets());
    assert!(secrets.len() >= 8, "tokens, grants, access tokens and the application secret: {}", secrets.len());
    secrets.push(key.to_owned());
    secrets.push(operator["webhook_secret"].as_str().unwrap().to_owned());
    assert!(files.iter().any(|(path, _, _)| path.extension().is_some_and(|e| e == "db")), "the database was read");
    for secret in &secrets {
        assert!(!output.contains(secret.as_str()), "a secret reached the daemon's output");
        assert!(!contains_bytes(&cmdline, secret.as_bytes()), "a secret is in the daemon's arguments");
        for (path, bytes, _) in &files {
            assert!(!contains_bytes(bytes, secret.as_bytes()), "a secret is in plain text in {}", path.display());
        }
    }
    // The store, its journal files and the master key are the owner's alone.
    for (path, _, mode) in &files {
        if path.file_name().unwrap().to_string_lossy().starts_with("tokenwarden.") {
            assert_eq!(mode & 0o077, 0, "{} is open to others: {mode:o}", path.display());
        }
    }
}

/// Checks a signature header the way the README tells a receiver to, without tokenwarden's
/// code: `t=<unix seconds>,v1=<hex HMAC-SHA256 of "<t>.<raw body>">` keyed with the webhook
/// secret's bytes, and `t` within 5 minutes of now.
fn check_documented_signature(secret: &str, header: &str, body: &[u8]) {
    let parts: Vec<(&str, &str)> = header.split(',').filter_map(|part| part.split_once('=')).collect();
    let timestamp = parts.iter().find(|(key, _)| *key == "t").map(|(_, value)| *value).expect("t=");
    let signatures: Vec<&str> = parts.iter().filter(|(key, _)| *key == "v1").map(|(_, value)| *value).collect();
    let age = Utc::now().timestamp() - timestamp.parse::<i64>().expect("t is unix seconds");
    assert!(age.abs() <= 300, "signed {age} s ago");
    let mut mac = <Hmac<Sha256> as KeyInit>::new_from_slice(secret.as_bytes()).unwrap();
    mac.update(format!("{timestamp}.").as_bytes());
    mac.update(body);
    let expected = hex::encode(mac.finalize().into_bytes());
    assert!(signatures.contains(&expected.as_str()), "no v1 in {header:?} matches the HMAC {expected}");
}

/// Polls `GET /readyz` until the daemon answers 200.
async fn wait_until_ready(base: &str) {
    let client = http_client();
    for _ in 0..200 {
        if client.get(format!("{base}/readyz")).send().await.is_ok_and(|r| r.status().is_success()) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("the daemon at {base} never became ready");
}

#[test]
fn a_scheduled_rotation_is_delivered_signed_by_the_documented_scheme_and_the_receiver_reads_the_new_secret() {
    let sandbox = Sandbox::new();
    runtime().block_on(scheduled_rotation_delivered(&sandbox));
}

async fn scheduled_rotation_delivered(sandbox: &Sandbox) {
    sandbox.add_gitlab_provider();
    let expires_soon = Utc::now().date_naive() + Days::new(2);
    let (_, old_secret) =
        sandbox.gitlab.sim.create_access_token(TokenOwner::Project("42".into()), &["api"], expires_soon);
    let add =
        ["token", "add", "ci", "--provider", "gitlab", "--kind", "gitlab-project-access-token", "--project", "42"];
    sandbox.ok(&[&add[..], &["--secret-stdin"]].concat(), &format!("{old_secret}\n"));
    let (hook, received) = start_receiver().await;
    let created: serde_json::Value = serde_json::from_str(
        &sandbox.ok(&["client", "add", "dbt", "--role", "reader", "--grant", "ci", "--webhook", &hook], ""),
    )
    .unwrap();
    let (api_key, webhook_secret) = (created["api_key"].as_str().unwrap(), created["webhook_secret"].as_str().unwrap());

    let (daemon, base) = start_daemon(sandbox, "info", &sandbox.path().join("serve.log"));
    eventually("the delivery", Duration::from_secs(20), || !received.lock().unwrap().is_empty()).await;
    let (delivery, signature, body) = received.lock().unwrap()[0].clone();
    check_documented_signature(webhook_secret, &signature, &body);
    let event: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(
        (event["event"].as_str(), event["token"].as_str(), event["version"].as_i64(), event["id"].as_str()),
        (Some("token.rotated"), Some("ci"), Some(2), Some(delivery.as_str()))
    );

    let history: serde_json::Value =
        serde_json::from_str(&sandbox.ok(&["token", "history", "ci", "--json"], "")).unwrap();
    let rotated = &history.as_array().unwrap()[1];
    assert_eq!((rotated["version"].as_i64(), rotated["actor"].as_str()), (Some(2), Some("scheduler")), "{history}");

    let (status, answer) = get_json(&format!("{base}/v1/tokens/ci/secret"), api_key).await;
    assert_eq!((status, answer["version"].as_i64()), (StatusCode::OK, Some(2)), "{answer}");
    let new_secret = answer["secret"].as_str().unwrap();
    assert!(sandbox.gitlab.sim.accepts(new_secret), "the secret the receiver fetched works");
    assert!(!sandbox.gitlab.sim.accepts(&old_secret), "the old one was rotated away");
    stop(daemon);
}

/// What the switchable receiver got: (delivery id, signature, body, the status it answered).
type Attempts = Arc<Mutex<Vec<(String, String, Vec<u8>, u16)>>>;

/// A receiver that answers 500 until `accepting` is set, then 204, recording every request.
async fn start_switchable_receiver() -> (String, Attempts, Arc<AtomicBool>) {
    let (attempts, accepting): (Attempts, Arc<AtomicBool>) = (Arc::default(), Arc::default());
    let (sink, switch) = (attempts.clone(), accepting.clone());
    let app = axum::Router::new().route(
        "/hook",
        post(move |headers: HeaderMap, body: Bytes| {
            let (sink, switch) = (sink.clone(), switch.clone());
            async move {
                let header = |name: &str| headers.get(name).and_then(|v| v.to_str().ok()).unwrap_or("").to_owned();
                let status = if switch.load(Ordering::SeqCst) {
                    StatusCode::NO_CONTENT
                } else {
                    StatusCode::INTERNAL_SERVER_ERROR
                };
                let entry = (
                    header("x-tokenwarden-delivery"),
                    header("x-tokenwarden-signature"),
                    body.to_vec(),
                    status.as_u16(),
                );
                sink.lock().unwrap().push(entry);
                status
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/hook", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (url, attempts, accepting)
}

/// The only delivery about `token`, read straight from the database.
async fn only_delivery(store: &Store, token: &str) -> Delivery {
    let token = token.to_owned();
    let mut all = store.run(move |conn| outbox::deliveries_for_token(conn, &token)).await.unwrap();
    assert_eq!(all.len(), 1, "{all:?}");
    all.remove(0)
}

#[test]
fn a_daemon_killed_before_its_delivery_succeeded_leaves_it_to_the_next_one_with_the_same_id() {
    let sandbox = Sandbox::new();
    runtime().block_on(delivery_survives_sigkill(&sandbox));
}

async fn delivery_survives_sigkill(sandbox: &Sandbox) {
    sandbox.add_gitlab_provider();
    sandbox.add_project_token("ci");
    let (hook, attempts, accepting) = start_switchable_receiver().await;
    let created: serde_json::Value =
        serde_json::from_str(&sandbox.ok(&["client", "add", "ops", "--role", "operator", "--webhook", &hook], ""))
            .unwrap();
    let (key, webhook_secret) = (created["api_key"].as_str().unwrap(), created["webhook_secret"].as_str().unwrap());
    let url = DatabaseUrl::parse(&sandbox.database_url()).unwrap();
    let store = tokio::task::spawn_blocking(move || Store::open(&url)).await.unwrap().unwrap();

    let (first, base) = start_daemon(sandbox, "info", &sandbox.path().join("first.log"));
    wait_until_ready(&base).await;
    let rotated = http_client().post(format!("{base}/v1/tokens/ci/rotate")).bearer_auth(key).send().await.unwrap();
    assert_eq!(rotated.status(), StatusCode::OK);
    let mut failed = None;
    for _ in 0..300 {
        let delivery = only_delivery(&store, "ci").await;
        if delivery.attempts >= 1 && delivery.lease_owner.is_none() {
            failed = Some(delivery);
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    first.kill();
    let failed = failed.expect("the first daemon recorded a failed attempt");
    assert_eq!(failed.last_error.as_deref(), Some("the receiver answered HTTP 500"));
    let before_kill: Vec<_> = attempts.lock().unwrap().clone();
    assert!(!before_kill.is_empty() && before_kill.iter().all(|(_, _, _, status)| *status == 500));
    assert!(before_kill.iter().all(|(id, ..)| *id == failed.id), "the first daemon sent only this delivery");

    accepting.store(true, Ordering::SeqCst);
    let killed = only_delivery(&store, "ci").await;
    assert_eq!(killed.delivered_at, None, "nothing was delivered before the kill");
    let due = killed.next_attempt_at.max(killed.leased_until.unwrap_or(killed.next_attempt_at));
    let wait = (due - Utc::now()).to_std().unwrap_or_default() + Duration::from_secs(20);
    let (second, _) = start_daemon(sandbox, "info", &sandbox.path().join("second.log"));
    eventually("the delivery by the restarted daemon", wait, || {
        attempts.lock().unwrap().iter().any(|(_, _, _, status)| *status == 204)
    })
    .await;

    let all = attempts.lock().unwrap().clone();
    let (id, signature, body, _) = all.iter().find(|(.., status)| *status == 204).unwrap().clone();
    assert_eq!(id, failed.id, "the same delivery id the first daemon attempted");
    assert!(all.iter().all(|(other, ..)| *other == id), "one delivery, one id, across both daemons");
    check_documented_signature(webhook_secret, &signature, &body);
    let event: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert_eq!((event["id"].as_str(), event["event"].as_str()), (Some(id.as_str()), Some("token.rotated")));
    assert_eq!(event["version"], 2);
    assert_eq!(body, before_kill[0].2, "byte for byte the body the first daemon sent");

    let mut delivered = only_delivery(&store, "ci").await;
    for _ in 0..100 {
        if delivered.delivered_at.is_some() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
        delivered = only_delivery(&store, "ci").await;
    }
    assert!(delivered.delivered_at.is_some(), "recorded as delivered: {delivered:?}");
    let recorded = {
        let id = id.clone();
        store.run(move |conn| outbox::attempts(conn, &id)).await.unwrap()
    };
    let statuses: Vec<Option<u16>> = recorded.iter().map(|attempt| attempt.status).collect();
    assert_eq!(statuses.last(), Some(&Some(204)), "{recorded:?}");
    assert!(statuses[..statuses.len() - 1].iter().all(|status| *status == Some(500)), "{recorded:?}");
    stop(second);
}
