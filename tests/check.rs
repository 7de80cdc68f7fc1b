//! `tokenwarden check` (monitoring exit codes) and `tokenwarden audit`, end to end.

mod common;

use chrono::{Days, Utc};
use common::Sandbox;
use tokenwarden::simulator::{Fault, FaultTarget, TokenOwner};

/// Adds a personal access token expiring in `days` days, issued by the simulator.
fn add_token_expiring_in(sandbox: &Sandbox, name: &str, days: u64) -> String {
    let expires = Utc::now().date_naive() + Days::new(days);
    let secret = sandbox.gitlab.sim.create_access_token(TokenOwner::Personal, &["api"], expires).1;
    let args = ["token", "add", name, "--provider", "gitlab", "--kind", "gitlab-personal-access-token"];
    sandbox.ok(&[&args[..], &["--secret-stdin"]].concat(), &format!("{secret}\n"));
    secret
}

/// Runs `check` and returns its exit code and standard output lines.
fn check(sandbox: &Sandbox, extra: &[&str]) -> (i32, Vec<String>) {
    let out = sandbox.run(&[&["check"], extra].concat(), "");
    let stdout = String::from_utf8_lossy(&out.stdout).lines().map(str::to_owned).collect();
    (out.status.code().unwrap(), stdout)
}

#[test]
fn check_exit_codes_follow_the_worst_token() {
    let sandbox = Sandbox::new();
    sandbox.add_gitlab_provider();
    let (code, lines) = check(&sandbox, &["--allow-empty"]);
    assert_eq!((code, lines[0].as_str()), (0, "TOKENWARDEN OK - 0 tokens: 0 critical, 0 warning, 0 ok"));

    add_token_expiring_in(&sandbox, "healthy", 60);
    assert_eq!(check(&sandbox, &[]).0, 0);

    add_token_expiring_in(&sandbox, "soon", 2);
    let (code, lines) = check(&sandbox, &[]);
    assert_eq!(code, 1, "{lines:?}");
    assert!(lines[0].starts_with("TOKENWARDEN WARNING - 2 tokens: 0 critical, 1 warning, 1 ok"), "{lines:?}");
    assert_eq!(lines.len(), 2);
    assert!(lines[1].starts_with("WARNING: soon: expires in 1d"), "{lines:?}");
    assert_eq!(check(&sandbox, &["--warn", "1d", "--critical", "12h"]).0, 0, "thresholds are the operator's");
    assert_eq!(check(&sandbox, &["--critical", "3d"]).0, 2);

    sandbox.ok(&["token", "remove", "soon"], "");
    sandbox.gitlab.sim.push_fault(FaultTarget::Renewal, Fault::Status { status: 503 });
    sandbox.fails(&["token", "rotate", "healthy"], "", 1);
    let (code, lines) = check(&sandbox, &[]);
    assert_eq!(code, 1, "{lines:?}");
    assert!(lines[1].starts_with("WARNING: healthy: retrying after 1 failed attempt(s)"), "{lines:?}");

    let revoked = add_token_expiring_in(&sandbox, "revoked", 60);
    sandbox.gitlab.sim.with_state(|state| state.revoke(&revoked));
    sandbox.fails(&["token", "rotate", "revoked"], "", 1);
    let (code, lines) = check(&sandbox, &[]);
    assert_eq!(code, 2, "{lines:?}");
    assert!(lines[0].starts_with("TOKENWARDEN CRITICAL - 2 tokens: 1 critical, 1 warning, 0 ok"), "{lines:?}");
    assert!(lines[1].starts_with("CRITICAL: revoked: needs attention: revoked"), "worst first: {lines:?}");
    assert!(lines[2].starts_with("WARNING: healthy"), "{lines:?}");
}

#[test]
fn check_is_unknown_when_the_store_cannot_be_read() {
    let sandbox = Sandbox::new();
    let out = sandbox.run(&["--database-url", "sqlite:///nonexistent/dir/tw.db", "check"], "");
    assert_eq!(out.status.code(), Some(3));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.starts_with("TOKENWARDEN UNKNOWN - no tokenwarden store at sqlite:///nonexistent/dir/tw.db"),
        "{stdout}"
    );
    let out = sandbox.run(&["--config", "/nonexistent/tw.toml", "check"], "");
    assert_eq!(out.status.code(), Some(3), "a bad configuration is UNKNOWN too");
}

#[test]
fn check_answers_any_bad_command_line_with_unknown_exit_3_as_the_readme_says() {
    let sandbox = Sandbox::new();
    for bad in [
        &["check", "--warning", "3d"][..],
        &["check", "--warn", "3x"],
        &["check", "stray-argument"],
        &["--no-such-global", "check"],
    ] {
        let out = sandbox.run(bad, "");
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert_eq!(out.status.code(), Some(3), "{bad:?}: {stdout}");
        assert!(stdout.starts_with("TOKENWARDEN UNKNOWN - "), "{bad:?}: {stdout}");
        assert_eq!(stdout.lines().count(), 1, "{bad:?}: {stdout}");
    }
    let readme = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md")).unwrap();
    let section = readme.split("## Monitoring with `tokenwarden check`").nth(1).unwrap().split("\n## ").next().unwrap();
    assert!(!section.contains("exit 2"), "the README must not promise another code for check's usage errors");
    assert!(section.contains("is UNKNOWN, exit 3"), "the README says what a bad command line gets");
}

#[test]
fn audit_lists_rotations_and_changes_newest_first_and_filters_by_token() {
    let sandbox = Sandbox::new();
    sandbox.add_gitlab_provider();
    let secret = add_token_expiring_in(&sandbox, "ci", 60);
    add_token_expiring_in(&sandbox, "other", 60);
    sandbox.ok(&["token", "rotate", "ci"], "");
    sandbox.ok(&["token", "pause", "ci"], "");
    sandbox.ok(&["client", "add", "dbt", "--role", "reader", "--grant", "ci"], "");

    let all: Vec<serde_json::Value> = serde_json::from_str(&sandbox.ok(&["audit", "--json"], "")).unwrap();
    let actions: Vec<&str> = all.iter().map(|e| e["action"].as_str().unwrap()).collect();
    assert_eq!(actions[0], "client.add", "newest first: {actions:?}");
    for action in ["provider.add", "token.add", "token.rotate", "token.pause"] {
        assert!(actions.contains(&action), "{action} in {actions:?}");
    }
    let ci: Vec<serde_json::Value> =
        serde_json::from_str(&sandbox.ok(&["audit", "--token", "ci", "--json"], "")).unwrap();
    assert!(ci.iter().all(|e| e["target"] == "ci"), "{ci:?}");
    assert_eq!(
        ci.iter().map(|e| e["action"].as_str().unwrap()).collect::<Vec<_>>(),
        ["token.pause", "token.rotate", "token.add"]
    );
    assert!(ci.iter().all(|e| e["actor"] == "cli"));

    let text = sandbox.ok(&["audit", "--since", "1h"], "");
    assert!(text.lines().next().unwrap().starts_with("TIME"), "{text}");
    assert_eq!(text.lines().count(), all.len() + 1);
    assert!(!text.contains(&secret));
}

#[test]
fn audit_token_filter_shows_only_the_token_not_a_provider_or_client_of_the_same_name() {
    let sandbox = Sandbox::new();
    sandbox.add_gitlab_provider();
    sandbox.ok(&["provider", "add", "ci", "--kind", "gitlab", "--url", &sandbox.gitlab_url()], "");
    add_token_expiring_in(&sandbox, "ci", 60);
    sandbox.ok(&["client", "add", "ci", "--role", "operator"], "");
    let rows: Vec<serde_json::Value> =
        serde_json::from_str(&sandbox.ok(&["audit", "--token", "ci", "--json"], "")).unwrap();
    let targets: Vec<(&str, &str)> =
        rows.iter().map(|e| (e["target_kind"].as_str().unwrap(), e["action"].as_str().unwrap())).collect();
    assert_eq!(targets, [("token", "token.add")]);
}

#[test]
fn audit_since_and_limit_keep_the_newest_entries_and_an_impossible_since_is_refused_on_one_line() {
    let sandbox = Sandbox::new();
    sandbox.add_gitlab_provider();
    add_token_expiring_in(&sandbox, "a", 60);
    add_token_expiring_in(&sandbox, "b", 60);
    let newest: Vec<serde_json::Value> =
        serde_json::from_str(&sandbox.ok(&["audit", "--since", "1h", "--limit", "1", "--json"], "")).unwrap();
    assert_eq!(newest.len(), 1);
    assert_eq!((newest[0]["action"].as_str(), newest[0]["target"].as_str()), (Some("token.add"), Some("b")));
    let all: Vec<serde_json::Value> =
        serde_json::from_str(&sandbox.ok(&["audit", "--since", "300000d", "--json"], "")).unwrap();
    assert_eq!(all.len(), 3, "provider and two tokens");

    let out = sandbox.run(&["audit", "--since", "300000000d"], "");
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(stderr.contains("--since 300000000d reaches back further than any date"), "{stderr}");
}
