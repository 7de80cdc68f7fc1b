//! The monitoring shipped in contrib/: every `tokenwarden_*` metric name used by the Prometheus
//! alert rules and by the Grafana dashboard's queries is one a running `tokenwarden serve`
//! exports (a renamed metric breaks the build, not an operator's alerting), and every alert
//! rule has a promtool unit test (`promtool test rules` itself runs in scripts/test).

mod common;

use std::collections::BTreeSet;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use chrono::{Days, Utc};
use common::Sandbox;
use common::serve_process::{JsonLogged, ServeProcess, start_json_logged};
use tokenwarden::simulator::TokenOwner;

/// The alert rules, as shipped.
const ALERT_RULES: &str = include_str!("../contrib/prometheus/tokenwarden-alerts.yml");
/// The alert rules' promtool unit tests.
const ALERT_TESTS: &str = include_str!("../contrib/prometheus/tokenwarden-alerts.test.yml");
/// The Grafana dashboard.
const DASHBOARD: &str = include_str!("../contrib/grafana/tokenwarden.json");

/// How long the daemon may take to rotate the due token and export what that records.
const ROTATION_LIMIT: Duration = Duration::from_secs(30);

/// The series names a scrape may hold for each `# TYPE` line of `exposition`: the family, and
/// for a histogram its `_bucket`, `_sum` and `_count` series.
fn exported_names(exposition: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    for line in exposition.lines() {
        let mut words = line.strip_prefix("# TYPE ").unwrap_or_default().split_whitespace();
        let (Some(family), Some(kind)) = (words.next(), words.next()) else { continue };
        names.insert(family.to_owned());
        if kind == "histogram" || kind == "summary" {
            for suffix in ["_bucket", "_sum", "_count"] {
                names.insert(format!("{family}{suffix}"));
            }
        }
    }
    names
}

/// Every `tokenwarden_*` identifier in `text` that is not in `exported` (the bare prefix, as in
/// a comment's "`tokenwarden_*`", names nothing).
fn unknown_names(text: &str, exported: &BTreeSet<String>) -> BTreeSet<String> {
    text.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
        .filter(|word| word.strip_prefix("tokenwarden_").is_some_and(|rest| !rest.is_empty()))
        .filter(|word| !exported.contains(*word))
        .map(str::to_owned)
        .collect()
}

/// Every `tokenwarden_*` identifier in `text`.
fn used_names(text: &str) -> BTreeSet<String> {
    unknown_names(text, &BTreeSet::new())
}

/// `GET /metrics` over a plain connection; returns the whole response.
fn scrape(addr: SocketAddr) -> String {
    let mut stream = TcpStream::connect(addr).expect("connect to the daemon");
    stream.set_read_timeout(Some(Duration::from_secs(10))).expect("read timeout");
    write!(stream, "GET /metrics HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n").expect("send");
    let mut response = String::new();
    stream.read_to_string(&mut response).expect("read /metrics");
    assert!(response.starts_with("HTTP/1.1 200"), "{response}");
    response
}

/// A serve process with a GitLab token inside its 7-day margin, so the scheduler rotates it
/// and the rotation counters and histograms are exported; returns the exposition once they are.
fn exposition_after_a_scheduled_rotation() -> String {
    let sandbox = Sandbox::new();
    sandbox.add_gitlab_provider();
    let expires = Utc::now().date_naive() + Days::new(3);
    let (_, secret) = sandbox.gitlab.sim.create_access_token(TokenOwner::Project("42".into()), &["api"], expires);
    let args = ["token", "add", "due", "--provider", "gitlab", "--kind", "gitlab-project-access-token"];
    sandbox.ok(&[&args[..], &["--project", "42", "--secret-stdin"]].concat(), &format!("{secret}\n"));
    let sink_path = sandbox.path().join("due.token").display().to_string();
    sandbox.ok(&["sink", "add", "due-file", "--token", "due", "--path", &sink_path], "");
    let JsonLogged { child, addr, rest, .. } = start_json_logged(&sandbox);
    let _daemon = ServeProcess::new(child);
    std::thread::spawn(move || rest.map_while(Result::ok).for_each(drop));
    let since = Instant::now();
    loop {
        let text = scrape(addr);
        let names = exported_names(&text);
        let wanted = [
            "tokenwarden_rotations_total",
            "tokenwarden_rotation_lag_seconds",
            "tokenwarden_rotation_commit_gap_seconds",
            "tokenwarden_scheduler_last_tick_timestamp_seconds",
            "tokenwarden_sink_version_lag",
        ];
        if wanted.iter().all(|name| names.contains(*name)) {
            return text;
        }
        assert!(since.elapsed() < ROTATION_LIMIT, "no scheduled rotation showed within {ROTATION_LIMIT:?}:\n{text}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn every_metric_the_alert_rules_and_the_dashboard_use_is_exported_by_a_running_serve() {
    let exposition = exposition_after_a_scheduled_rotation();
    let exported = exported_names(&exposition);
    for (file, text) in [("tokenwarden-alerts.yml", ALERT_RULES), ("tokenwarden.json", DASHBOARD)] {
        let unknown = unknown_names(text, &exported);
        assert!(unknown.is_empty(), "{file} uses metrics the daemon does not export: {unknown:?}\n{exposition}");
    }
    let dashboard: serde_json::Value = serde_json::from_str(DASHBOARD).expect("the dashboard is JSON");
    let queries: Vec<&str> = dashboard["panels"]
        .as_array()
        .expect("panels")
        .iter()
        .flat_map(|panel| panel["targets"].as_array().expect("targets"))
        .map(|target| target["expr"].as_str().expect("expr"))
        .collect();
    let queried = used_names(&queries.join("\n"));
    for family in ["tokenwarden_tokens", "tokenwarden_token_expiry_timestamp_seconds", "tokenwarden_rotations_total"] {
        assert!(queried.contains(family), "the dashboard does not show {family}");
    }
    for family in ["tokenwarden_rotation_lag_seconds", "tokenwarden_rotation_commit_gap_seconds"] {
        assert!(queried.contains(&format!("{family}_bucket")), "the dashboard does not show {family}");
    }
    for family in [
        "tokenwarden_webhook_deliveries_total",
        "tokenwarden_api_auth_failures_total",
        "tokenwarden_scheduler_last_tick_timestamp_seconds",
        "tokenwarden_sink_version_lag",
        "tokenwarden_sink_deliveries_total",
    ] {
        assert!(queried.contains(family), "the dashboard does not show {family}");
    }
}

#[test]
fn a_name_the_daemon_does_not_export_is_reported_and_histogram_series_are_known() {
    let exposition = "# HELP tokenwarden_tokens Tokens per state.\n# TYPE tokenwarden_tokens gauge\n\
        # TYPE tokenwarden_rotation_lag_seconds histogram\n";
    let exported = exported_names(exposition);
    let text = "sum(tokenwarden_tokens) + tokenwarden_rotation_lag_seconds_bucket + \
        rate(tokenwarden_sink_deliveries_total[5m]) + tokenwarden_tokens_bucket";
    let unknown: Vec<String> = unknown_names(text, &exported).into_iter().collect();
    assert_eq!(unknown, ["tokenwarden_sink_deliveries_total", "tokenwarden_tokens_bucket"]);
}

#[test]
fn every_alert_rule_has_a_promtool_test() {
    let alerts: Vec<&str> =
        ALERT_RULES.lines().filter_map(|line| line.trim().strip_prefix("- alert: ")).map(str::trim).collect();
    assert!(alerts.len() >= 7, "too few alert rules found: {alerts:?}");
    for alert in alerts {
        let fires = ALERT_TESTS.contains(&format!("alertname: {alert}\n        exp_alerts:\n          - exp_labels"));
        assert!(fires, "tokenwarden-alerts.test.yml has no test in which {alert} fires");
    }
}
