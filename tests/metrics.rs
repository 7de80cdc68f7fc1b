//! `/metrics` and the log of a running `tokenwarden serve`, as an operator's monitoring sees
//! them: every `tokenwarden_*` family has `# HELP` and `# TYPE`, token gauges follow a change
//! made by another process within 5 s, and refused API keys are counted by reason and logged at
//! most once a minute per source address, never with the key.

mod common;

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::process::Child;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::Sandbox;
use common::postgres::TestSchema;
use common::serve_process::{JsonLogged, ServeProcess, start_json_logged};
use tokenwarden::config::DatabaseUrl;
use tokenwarden::simulator::TokenOwner;

/// How long a change made by another process may take to show on `/metrics`.
const FOLLOW_LIMIT: Duration = Duration::from_secs(5);

/// A running `serve` whose JSON log lines are collected, killed on drop.
struct Daemon {
    child: Child,
    addr: SocketAddr,
    log: Arc<Mutex<Vec<String>>>,
    started: Instant,
}

impl Daemon {
    fn start(sandbox: &Sandbox) -> Daemon {
        let started = Instant::now();
        let JsonLogged { child, addr, startup, rest } = start_json_logged(sandbox);
        let log = Arc::new(Mutex::new(startup));
        let sink = log.clone();
        std::thread::spawn(move || rest.map_while(Result::ok).for_each(|line| sink.lock().unwrap().push(line)));
        Daemon { child, addr, log, started }
    }

    fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    fn metrics(&self) -> String {
        scrape(&self.url(""))
    }

    /// Polls `/metrics` until `wanted` holds, failing after `limit`; returns the exposition.
    fn metrics_until(&self, limit: Duration, what: &str, wanted: impl Fn(&str) -> bool) -> (String, Duration) {
        scrape_until(&self.url(""), limit, what, wanted)
    }
}

/// `GET {base}/metrics`, which must answer 200.
fn scrape(base: &str) -> String {
    let (status, text) = reqwest_blocking_get(&format!("{base}/metrics"), None);
    assert_eq!(status, 200, "{text}");
    text
}

/// Polls `{base}/metrics` until `wanted` holds, failing after `limit`; returns the exposition and
/// how long it took.
fn scrape_until(base: &str, limit: Duration, what: &str, wanted: impl Fn(&str) -> bool) -> (String, Duration) {
    let since = Instant::now();
    loop {
        let text = scrape(base);
        if wanted(&text) {
            return (text, since.elapsed());
        }
        assert!(since.elapsed() < limit, "{what} did not show on /metrics within {limit:?}:\n{text}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A GET on a runtime of its own; returns the status and body.
fn reqwest_blocking_get(url: &str, key: Option<&str>) -> (u16, String) {
    runtime().block_on(async {
        let mut request = http_client().get(url);
        if let Some(key) = key {
            request = request.bearer_auth(key);
        }
        let response = request.send().await.expect("send");
        (response.status().as_u16(), response.text().await.unwrap_or_default())
    })
}

/// An HTTP client with tokenwarden's TLS set-up (reqwest is built without a default provider).
fn http_client() -> reqwest::Client {
    tokenwarden::providers::build_http_client(tokenwarden::providers::HttpSettings::default()).unwrap()
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime")
}

/// The value of the sample `series` (name and labels exactly as exported), if present.
fn sample(text: &str, series: &str) -> Option<f64> {
    text.lines().find_map(|line| line.strip_prefix(series)?.strip_prefix(' ')?.trim().parse().ok())
}

/// The families of the exposition's `tokenwarden_*` samples (histogram suffixes removed).
fn families(text: &str) -> BTreeSet<String> {
    text.lines()
        .filter(|line| line.starts_with("tokenwarden_"))
        .map(|line| line.split(['{', ' ']).next().unwrap_or_default())
        .map(|name| {
            ["_bucket", "_sum", "_count"]
                .iter()
                .filter_map(|suffix| name.strip_suffix(suffix))
                .find(|base| text.contains(&format!("# TYPE {base} histogram")))
                .unwrap_or(name)
                .to_owned()
        })
        .collect()
}

/// A sandbox with the simulated GitLab as provider `gitlab` and one project access token.
fn sandbox_with_token(name: &str) -> Sandbox {
    let sandbox = Sandbox::new();
    sandbox.add_gitlab_provider();
    sandbox.add_project_token(name);
    sandbox
}

#[test]
fn every_tokenwarden_family_on_a_running_serve_has_help_and_type() {
    let sandbox = sandbox_with_token("dbt-ci");
    let daemon = Daemon::start(&sandbox);
    assert_eq!(reqwest_blocking_get(&daemon.url("/v1/tokens"), Some("tw_not_a_key")).0, 401);
    let (text, _) = daemon.metrics_until(FOLLOW_LIMIT, "the scheduler's first tick", |text| {
        text.contains("tokenwarden_scheduler_last_tick_timestamp_seconds ")
    });
    let found = families(&text);
    for expected in [
        "tokenwarden_tokens",
        "tokenwarden_token_expiry_timestamp_seconds",
        "tokenwarden_scheduler_last_tick_timestamp_seconds",
        "tokenwarden_webhook_deliveries_total",
        "tokenwarden_store_transaction_retries_total",
        "tokenwarden_api_auth_failures_total",
    ] {
        assert!(found.contains(expected), "{expected} is not exported:\n{text}");
    }
    for family in &found {
        assert!(text.contains(&format!("# HELP {family} ")), "no # HELP for {family}:\n{text}");
        assert!(text.contains(&format!("# TYPE {family} ")), "no # TYPE for {family}:\n{text}");
    }
}

#[test]
fn token_gauges_follow_a_pause_and_a_rotation_by_the_cli_within_five_seconds() {
    let sandbox = sandbox_with_token("dbt-ci");
    let daemon = Daemon::start(&sandbox);
    let expiry = r#"tokenwarden_token_expiry_timestamp_seconds{token="dbt-ci"}"#;
    let (before, _) = daemon.metrics_until(FOLLOW_LIMIT, "the token", |text| {
        sample(text, r#"tokenwarden_tokens{state="active"}"#) == Some(1.0) && sample(text, expiry).is_some()
    });
    let expired_before = sample(&before, expiry).unwrap();

    sandbox.ok(&["token", "pause", "dbt-ci"], "");
    let (_, took) = daemon.metrics_until(FOLLOW_LIMIT, "the pause", |text| {
        sample(text, r#"tokenwarden_tokens{state="paused"}"#) == Some(1.0)
            && sample(text, r#"tokenwarden_tokens{state="active"}"#) == Some(0.0)
    });
    eprintln!("a pause by the CLI showed on /metrics after {took:?}");

    sandbox.ok(&["token", "resume", "dbt-ci"], "");
    sandbox.ok(&["token", "rotate", "dbt-ci"], "");
    let version = sandbox.token_show("dbt-ci")["version"].as_i64();
    assert_eq!(version, Some(2), "the CLI rotated it");
    let (_, took) = daemon.metrics_until(FOLLOW_LIMIT, "the rotation's new expiry", |text| {
        sample(text, expiry).is_some_and(|at| at != expired_before)
            && sample(text, r#"tokenwarden_tokens{state="active"}"#) == Some(1.0)
    });
    eprintln!("a rotation by the CLI showed on /metrics after {took:?}");
}

#[test]
fn refused_api_keys_are_counted_by_reason_and_logged_once_a_minute_per_address_without_the_key() {
    let sandbox = sandbox_with_token("dbt-ci");
    let key_of = |out: String| -> String {
        let created: serde_json::Value = serde_json::from_str(&out).expect("client add JSON");
        created["api_key"].as_str().expect("api_key").to_owned()
    };
    let reader = key_of(sandbox.ok(&["client", "add", "bi", "--role", "reader", "--grant", "dbt-ci"], ""));
    let leaving = key_of(sandbox.ok(&["client", "add", "leaving", "--role", "operator"], ""));
    let daemon = Daemon::start(&sandbox);
    let url = daemon.url("/v1/tokens");
    let (unknown_sent, missing_sent, malformed_sent, forbidden_sent) = (2_000, 20, 15, 10);
    let unknown_key = "tw_AAAAAAAAAAAA_presented-key-that-must-never-be-logged-0123456789";
    let mut revoked_sent = 0;
    runtime().block_on(async {
        let http = http_client();
        let status =
            |request: reqwest::RequestBuilder| async move { request.send().await.expect("send").status().as_u16() };
        let burst = Instant::now();
        for _ in 0..unknown_sent {
            assert_eq!(status(http.get(&url).bearer_auth(unknown_key)).await, 401);
        }
        eprintln!("{unknown_sent} requests with an unknown key answered 401 in {:?}", burst.elapsed());
        for _ in 0..missing_sent {
            assert_eq!(status(http.get(&url)).await, 401);
        }
        for _ in 0..malformed_sent {
            assert_eq!(status(http.get(&url).header("authorization", "Basic bm8tc3VjaDprZXk=")).await, 401);
        }
        for _ in 0..forbidden_sent {
            assert_eq!(status(http.get(&url).bearer_auth(&reader)).await, 403);
        }
        assert_eq!(status(http.get(&url).bearer_auth(&leaving)).await, 200, "accepted while it exists");
        sandbox.ok(&["client", "remove", "leaving"], "");
        let deadline = Instant::now() + Duration::from_secs(10);
        while status(http.get(&url).bearer_auth(&leaving)).await != 401 {
            assert!(Instant::now() < deadline, "a removed client's key was still accepted after 10 s");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        revoked_sent += 1;
    });
    let metrics = daemon.metrics();
    let count =
        |reason: &str| sample(&metrics, &format!(r#"tokenwarden_api_auth_failures_total{{reason="{reason}"}}"#));
    assert_eq!(count("unknown"), Some(f64::from(unknown_sent)), "{metrics}");
    assert_eq!(count("missing"), Some(f64::from(missing_sent)), "{metrics}");
    assert_eq!(count("malformed"), Some(f64::from(malformed_sent)), "{metrics}");
    assert_eq!(count("forbidden"), Some(f64::from(forbidden_sent)), "{metrics}");
    assert_eq!(count("revoked"), Some(f64::from(revoked_sent)), "{metrics}");

    let minutes_running = daemon.started.elapsed().as_secs() / 60;
    let log = daemon.log.lock().unwrap().clone();
    let refusals: Vec<&String> = log.iter().filter(|line| line.contains("refused for their credentials")).collect();
    assert!(!refusals.is_empty(), "failed authentication must be logged");
    assert!(
        refusals.len() as u64 <= 1 + minutes_running,
        "at most one line a minute from 127.0.0.1 ({minutes_running} full minutes): {refusals:#?}"
    );
    let first: serde_json::Value = serde_json::from_str(refusals[0]).expect("JSON log line");
    assert_eq!(first["fields"]["source"], "127.0.0.1", "{first}");
    assert_eq!(first["fields"]["failures"], 1, "the first refusal is logged at once: {first}");
    for secret in [unknown_key, reader.as_str(), leaving.as_str()] {
        assert!(!log.iter().any(|line| line.contains(secret)), "a presented key was logged");
    }
}

#[test]
fn token_gauges_follow_a_cli_pause_on_postgresql_within_five_seconds() {
    let Some(schema) = TestSchema::create() else { return };
    let sandbox = Sandbox::new();
    let key = sandbox.path().join("master.key");
    std::fs::write(&key, "ab".repeat(32)).unwrap();
    let DatabaseUrl::Postgres(url) = &schema.url else { panic!("a PostgreSQL URL") };
    let env = [("TOKENWARDEN_DATABASE_URL", url.clone()), ("TOKENWARDEN_MASTER_KEY_FILE", key.display().to_string())];
    let cli = |args: &[&str], stdin: &str| {
        let out = sandbox.cmd().envs(env.iter().map(|(k, v)| (*k, v.as_str()))).args(args).write_stdin(stdin).output();
        let out = out.expect("run tokenwarden");
        assert!(out.status.success(), "{args:?}: {}", String::from_utf8_lossy(&out.stderr));
    };
    cli(&["provider", "add", "gitlab", "--kind", "gitlab", "--url", &sandbox.gitlab_url()], "");
    let secret = sandbox.gitlab.token(TokenOwner::Project("42".into()));
    let add = ["token", "add", "dbt-ci", "--provider", "gitlab", "--kind", "gitlab-project-access-token"];
    cli(&[&add[..], &["--project", "42", "--secret-stdin"]].concat(), &format!("{secret}\n"));
    let config = sandbox.path().join("serve.toml");
    std::fs::write(&config, "").unwrap();
    let log = sandbox.path().join("serve.log");
    let mut daemon = ServeProcess::start(sandbox.path(), &config, &log, &env);
    let base = daemon.wait_for_api(&log, Duration::from_secs(30));
    scrape_until(&base, FOLLOW_LIMIT, "the token", |text| {
        sample(text, r#"tokenwarden_tokens{state="active"}"#) == Some(1.0)
    });

    cli(&["token", "pause", "dbt-ci"], "");
    let (_, took) = scrape_until(&base, FOLLOW_LIMIT, "the pause", |text| {
        sample(text, r#"tokenwarden_tokens{state="paused"}"#) == Some(1.0)
    });
    eprintln!("a pause by the CLI showed on /metrics after {took:?} (PostgreSQL, LISTEN/NOTIFY)");
    drop(schema);
}
