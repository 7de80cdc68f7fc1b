//! Changing what was set up, from the command line: grants refer to existing tokens by
//! identity, `token remove` names the clients it would cut off, `client update` and
//! `token update` change a client's grants and webhook and a token's policy in place.

mod common;

use common::Sandbox;

fn client_grants(sandbox: &Sandbox, name: &str) -> serde_json::Value {
    let list: serde_json::Value = serde_json::from_str(&sandbox.ok(&["client", "list", "--json"], "")).unwrap();
    let client = list.as_array().unwrap().iter().find(|c| c["name"] == name).expect("client listed");
    client["grants"].clone()
}

#[test]
fn a_grant_of_a_token_that_does_not_exist_is_refused_with_one_line_and_nothing_is_stored() {
    let sandbox = Sandbox::new();
    sandbox.add_gitlab_provider();
    sandbox.add_project_token("ci");
    let stderr =
        sandbox.fails(&["client", "add", "dbt", "--role", "reader", "--grant", "ci", "--grant", "nope"], "", 2);
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(stderr.contains("cannot grant 'nope': no token has that name"), "{stderr}");
    assert_eq!(sandbox.ok(&["client", "list", "--json"], "").trim(), "[]");
}

#[test]
fn removing_a_granted_token_names_its_readers_and_needs_yes_and_a_new_token_of_that_name_is_not_granted() {
    let sandbox = Sandbox::new();
    sandbox.add_gitlab_provider();
    sandbox.add_project_token("ci");
    sandbox.ok(&["client", "add", "dbt", "--role", "reader", "--grant", "ci"], "");
    sandbox.ok(&["client", "add", "bi", "--role", "reader", "--grant", "ci"], "");

    let stderr = sandbox.fails(&["token", "remove", "ci"], "", 2);
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(stderr.contains("granted to client(s) bi, dbt") && stderr.contains("--yes"), "{stderr}");
    assert_eq!(sandbox.token_show("ci")["version"], 1, "nothing removed");
    assert_eq!(client_grants(&sandbox, "dbt"), serde_json::json!(["ci"]));

    let stderr = sandbox.fails(&["token", "remove", "ci", "--yes"], "", 0);
    assert!(stderr.contains("removed token 'ci' and the grants of client(s) bi, dbt"), "{stderr}");
    sandbox.add_project_token("ci");
    assert_eq!(client_grants(&sandbox, "dbt"), serde_json::json!([]), "the new 'ci' is another credential");
    sandbox.ok(&["token", "remove", "ci"], "");
}

#[test]
fn token_update_changes_the_policy_in_place_keeps_the_history_and_is_audited() {
    let sandbox = Sandbox::new();
    sandbox.add_gitlab_provider();
    sandbox.add_project_token("ci");
    let planned = sandbox.token_show("ci")["next_rotation_at"].clone();
    let args = ["token", "update", "ci", "--lifetime", "90d", "--margin", "10d", "--rotate-at-fraction", "0.5"];
    let updated: serde_json::Value =
        serde_json::from_str(&sandbox.ok(&[&args[..], &["--gitlab-name", "dbt ci bot", "--json"]].concat(), ""))
            .unwrap();
    assert_eq!(updated["policy"]["lifetime"], "90d");
    assert_eq!(updated["policy"]["rotate_before"], "10d");
    assert_eq!(updated["policy"]["rotate_at_fraction"], 0.5);
    assert_eq!(updated["gitlab_name"], "dbt ci bot");
    assert_eq!(updated["version"], 1);
    assert_ne!(updated["next_rotation_at"], planned, "re-planned under the new policy");
    sandbox.ok(&["token", "update", "ci", "--rotate-before", "9d"], "");
    assert_eq!(sandbox.token_show("ci")["policy"]["rotate_before"], "9d", "--rotate-before is an alias");
    assert_eq!(sandbox.token_show("ci")["policy"]["lifetime"], "90d", "what is not given is kept");

    let history: serde_json::Value =
        serde_json::from_str(&sandbox.ok(&["token", "history", "ci", "--json"], "")).unwrap();
    assert_eq!(history.as_array().unwrap().len(), 1, "no new version: {history}");
    let audit = sandbox.ok(&["audit", "--token", "ci", "--json"], "");
    assert!(audit.contains("token.update") && audit.contains("lifetime=90d"), "{audit}");

    let before = sandbox.token_show("ci");
    for (args, expected) in [
        (&["token", "update", "nope", "--margin", "1d"][..], "no token named 'nope'"),
        (&["token", "update", "ci"][..], "nothing to change"),
        (&["token", "update", "ci", "--lifetime", "400d"][..], "--lifetime 400d is outside"),
        (&["token", "update", "ci", "--margin", "95d"][..], "--margin 95d is not shorter than the lifetime 90d"),
        (&["token", "update", "ci", "--rotate-at-fraction", "1.5"][..], "--rotate-at-fraction 1.5"),
        (&["token", "update", "ci", "--gitlab-name", ""][..], "GitLab name"),
        (
            &["token", "update", "ci", "--rotate-at-fraction", "0.00001"][..],
            "less than 10 minutes after every rotation",
        ),
    ] {
        let stderr = sandbox.fails(args, "", 2);
        assert_eq!(stderr.lines().count(), 1, "{args:?}: {stderr}");
        assert!(stderr.contains(expected), "{args:?}: expected {expected:?} in {stderr}");
    }
    assert_eq!(sandbox.token_show("ci"), before, "a refused update changes nothing");
}

#[test]
fn a_token_update_reschedules_at_once_and_the_running_daemon_rotates_it() {
    use common::serve_process::ServeProcess;
    use std::time::{Duration, Instant};
    use tokenwarden::simulator::TokenOwner;

    let sandbox = Sandbox::new();
    sandbox.add_gitlab_provider();
    let expires = chrono::Utc::now().date_naive() + chrono::Days::new(10);
    let secret = sandbox.gitlab.sim.create_access_token(TokenOwner::Project("42".into()), &["api"], expires).1;
    let args = ["token", "add", "ci", "--provider", "gitlab", "--kind", "gitlab-project-access-token"];
    sandbox.ok(&[&args[..], &["--project", "42", "--secret-stdin"]].concat(), &format!("{secret}\n"));

    let config = sandbox.path().join("serve.toml");
    std::fs::write(&config, "").unwrap();
    let log = sandbox.path().join("serve.log");
    let mut daemon =
        ServeProcess::start(sandbox.path(), &config, &log, &[("TOKENWARDEN_DATABASE_URL", sandbox.database_url())]);
    daemon.wait_for_api(&log, Duration::from_secs(30));
    assert_eq!(sandbox.token_show("ci")["version"], 1, "not due under the default policy (7d margin)");

    sandbox.ok(&["token", "update", "ci", "--margin", "20d"], "");
    let started = Instant::now();
    while sandbox.token_show("ci")["version"] != 2 {
        assert!(started.elapsed() < Duration::from_secs(15), "the daemon did not rotate the re-planned token");
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(daemon.terminate(Duration::from_secs(30)).success());
}

/// Pending deliveries for `token` in the sandbox's store: (event, payload).
fn pending(sandbox: &Sandbox, token: &str) -> Vec<(String, String)> {
    let url = tokenwarden::config::DatabaseUrl::parse(&sandbox.database_url()).unwrap();
    let mut conn = tokenwarden::store::connect(&url).unwrap();
    tokenwarden::store::outbox::pending_for_token(&mut conn, token).unwrap()
}

#[test]
fn client_update_grants_revokes_and_sets_or_removes_the_webhook_and_refuses_bad_input_changing_nothing() {
    let sandbox = Sandbox::new();
    sandbox.add_gitlab_provider();
    for name in ["ci", "docs", "ops-bot"] {
        sandbox.add_project_token(name);
    }
    sandbox.ok(&["client", "add", "dbt", "--role", "reader", "--grant", "ci"], "");
    sandbox.ok(&["client", "add", "admin", "--role", "operator"], "");

    let updated: serde_json::Value = serde_json::from_str(
        &sandbox
            .ok(&["client", "update", "dbt", "--grant", "docs", "--grant", "ops-bot", "--revoke", "ci", "--json"], ""),
    )
    .unwrap();
    assert_eq!(updated["grants"], serde_json::json!(["docs", "ops-bot"]));
    assert_eq!(client_grants(&sandbox, "dbt"), serde_json::json!(["docs", "ops-bot"]));

    let before = sandbox.ok(&["client", "list", "--json"], "");
    for (args, expected) in [
        (&["client", "update", "dbt", "--grant", "nope"][..], "cannot grant 'nope': no token has that name"),
        (&["client", "update", "dbt", "--grant", "ci", "--revoke", "ci"][..], "both granted and revoked"),
        (&["client", "update", "dbt", "--grant", "ci", "--revoke", "ci-old"][..], "holds no grant of 'ci-old'"),
        (&["client", "update", "dbt"][..], "nothing to change"),
        (&["client", "update", "ghost", "--grant", "ci"][..], "no client named 'ghost'"),
        (&["client", "update", "admin", "--grant", "ci"][..], "is an operator"),
        (&["client", "update", "dbt", "--webhook-url", "ftp://x.example/h"][..], "--webhook-url"),
        (&["client", "update", "dbt", "--webhook-url", "https://x.example/h", "--no-webhook"][..], "--no-webhook"),
    ] {
        let stderr = sandbox.fails(args, "", 2);
        assert_eq!(stderr.lines().count(), 1, "{args:?}: {stderr}");
        assert!(stderr.contains(expected), "{args:?}: expected {expected:?} in {stderr}");
    }
    assert_eq!(sandbox.ok(&["client", "list", "--json"], ""), before, "refused updates change nothing");

    let printed: serde_json::Value = serde_json::from_str(
        &sandbox.ok(&["client", "update", "dbt", "--webhook-url", "https://dbt.example/hooks/tokens"], ""),
    )
    .unwrap();
    assert!(printed["webhook_secret"].as_str().unwrap().starts_with("whsec_"), "a new webhook's secret, once");
    sandbox.ok(&["token", "rotate", "docs"], "");
    assert_eq!(pending(&sandbox, "docs").len(), 1, "the granted reader is notified");
    sandbox.ok(&["token", "rotate", "ci"], "");
    assert!(pending(&sandbox, "ci").is_empty(), "a revoked grant is not notified");

    let stderr = sandbox.fails(&["client", "update", "dbt", "--webhook-url", "https://dbt.example/v2"], "", 0);
    assert!(stderr.contains("webhook https://dbt.example/v2"), "moving the URL keeps the secret: {stderr}");
    sandbox.ok(&["client", "update", "dbt", "--no-webhook"], "");
    assert!(pending(&sandbox, "docs").is_empty(), "pending deliveries are abandoned with the webhook");
    sandbox.ok(&["token", "rotate", "docs"], "");
    assert!(pending(&sandbox, "docs").is_empty());
    let audit = sandbox.ok(&["audit", "--json"], "");
    assert!(audit.contains("client.update") && audit.contains("granted=docs,ops-bot revoked=ci"), "{audit}");
}

#[test]
fn token_show_lists_the_readers_granted_it_as_consumers() {
    let sandbox = Sandbox::new();
    sandbox.add_gitlab_provider();
    sandbox.add_project_token("ci");
    assert_eq!(sandbox.token_show("ci")["consumers"], serde_json::json!([]));
    sandbox.ok(&["client", "add", "dbt", "--role", "reader", "--grant", "ci"], "");
    sandbox.ok(&["client", "add", "ops", "--role", "operator"], "");
    let consumers = sandbox.token_show("ci")["consumers"].clone();
    assert_eq!(
        consumers,
        serde_json::json!([{"client": "dbt", "acknowledged_version": null, "acknowledged_at": null}]),
        "only readers granted the token are its consumers"
    );
    let text = sandbox.ok(&["token", "show", "ci"], "");
    assert!(
        text.lines().any(|line| line.starts_with("consumer:") && line.contains("dbt (has not acknowledged")),
        "{text}"
    );
}
