//! `token remove --revoke`: the credential is revoked at GitLab (the simulator) before the token
//! is removed; a failed revocation keeps the token exactly as it was unless `--force`; an
//! interrupted one leaves the token needing attention, never rotated.

mod common;

use common::Sandbox;
use diesel::connection::SimpleConnection;
use diesel::{Connection, SqliteConnection};
use tokenwarden::simulator::{Fault, FaultTarget};

/// The audit rows of `token remove` for `name`, as `audit` prints them in JSON.
fn removal_audit(sandbox: &Sandbox, name: &str) -> Vec<serde_json::Value> {
    let rows: Vec<serde_json::Value> =
        serde_json::from_str(&sandbox.ok(&["audit", "--token", name, "--json"], "")).unwrap();
    rows.into_iter().filter(|row| row["action"] == "token.remove").collect()
}

/// Every OAuth access and refresh token the simulator issued that still works.
fn live_oauth_credentials(sandbox: &Sandbox) -> Vec<String> {
    let secrets = sandbox.gitlab.sim.with_state(|state| state.issued_secrets());
    secrets
        .into_iter()
        .filter(|secret| {
            (secret.starts_with("gloat-") && sandbox.gitlab.sim.accepts(secret))
                || (secret.starts_with("glrt-") && sandbox.gitlab.sim.with_state(|s| s.refresh_token_is_live(secret)))
        })
        .collect()
}

#[test]
fn a_project_token_is_revoked_at_gitlab_before_it_is_removed_and_readers_need_yes_first() {
    let sandbox = Sandbox::new();
    sandbox.add_gitlab_provider();
    let secret = sandbox.add_project_token("ci");
    sandbox.ok(&["client", "add", "dbt", "--role", "reader", "--grant", "ci"], "");

    let stderr = sandbox.fails(&["token", "remove", "ci", "--revoke"], "", 2);
    assert!(stderr.contains("granted to client(s) dbt") && stderr.contains("--yes"), "{stderr}");
    assert!(sandbox.gitlab.sim.accepts(&secret), "nothing is revoked before the grants are settled");

    let stderr = sandbox.fails(&["token", "remove", "ci", "--revoke", "--yes"], "", 0);
    assert!(
        stderr.contains("revoked token 'ci' at its provider and removed it and the grants of client(s) dbt"),
        "{stderr}"
    );
    assert!(!sandbox.gitlab.sim.accepts(&secret), "GitLab no longer accepts the token");
    assert_eq!(sandbox.gitlab.sim.stats().revocations, 1);
    assert!(sandbox.token_list().is_empty());
    let audit = removal_audit(&sandbox, "ci");
    assert_eq!(audit.len(), 1, "{audit:?}");
    assert!(audit[0]["detail"].as_str().unwrap().contains("revoked=at_provider"), "{audit:?}");
}

#[test]
fn an_oauth_grant_is_revoked_with_its_access_token() {
    let sandbox = Sandbox::new();
    sandbox.add_gitlab_oauth_provider();
    let client_id = sandbox.gitlab.sim.with_state(|state| state.application_ids().remove(0));
    let refresh_token = sandbox.gitlab.sim.create_grant(&client_id);
    sandbox.ok(
        &["token", "add", "grant", "--provider", "gitlab", "--kind", "gitlab-oauth", "--refresh-token-stdin"],
        &format!("{refresh_token}\n"),
    );
    assert_eq!(live_oauth_credentials(&sandbox).len(), 2, "the stored access and refresh tokens work");

    sandbox.ok(&["token", "remove", "grant", "--revoke"], "");
    assert_eq!(live_oauth_credentials(&sandbox), Vec::<String>::new(), "both are revoked");
    assert!(sandbox.token_list().is_empty());
}

#[test]
fn a_failed_revocation_keeps_the_token_as_it_was_and_force_removes_it_anyway() {
    let sandbox = Sandbox::new();
    sandbox.add_gitlab_provider();
    let secret = sandbox.add_project_token("ci");
    let before = sandbox.token_show("ci");

    sandbox.gitlab.sim.push_fault(FaultTarget::Renewal, Fault::Status { status: 503 });
    let stderr = sandbox.fails(&["token", "remove", "ci", "--revoke"], "", 1);
    assert_eq!(stderr.trim_end().lines().count(), 1, "{stderr}");
    assert!(stderr.contains("was not removed") && stderr.contains("503"), "{stderr}");
    let after = sandbox.token_show("ci");
    for field in ["state", "version", "next_rotation_at", "lease_owner", "attempt_count"] {
        assert_eq!(after[field], before[field], "{field} is back as it was");
    }
    assert!(sandbox.gitlab.sim.accepts(&secret));
    sandbox.ok(&["token", "rotate", "ci"], "");
    assert_eq!(sandbox.token_show("ci")["version"], 2, "the lease was released: a rotation works");

    sandbox.gitlab.sim.push_fault(FaultTarget::Renewal, Fault::Status { status: 503 });
    let stderr = sandbox.fails(&["token", "remove", "ci", "--revoke", "--force"], "", 0);
    assert!(stderr.contains("removed token 'ci' anyway (--force)"), "{stderr}");
    assert!(stderr.contains("may still work at the provider"), "{stderr}");
    assert!(sandbox.token_list().is_empty());
    assert!(removal_audit(&sandbox, "ci")[0]["detail"].as_str().unwrap().contains("forced=true"));

    let stderr = sandbox.fails(&["token", "remove", "ci", "--force"], "", 2);
    assert!(stderr.contains("--revoke"), "--force needs --revoke: {stderr}");
}

#[test]
fn a_token_gitlab_no_longer_accepts_is_removed_without_a_revocation() {
    let sandbox = Sandbox::new();
    sandbox.add_gitlab_provider();
    let secret = sandbox.add_project_token("ci");
    sandbox.gitlab.sim.with_state(|state| state.revoke(&secret));
    let stderr = sandbox.fails(&["token", "remove", "ci", "--revoke"], "", 0);
    assert!(stderr.contains("no longer accepted token 'ci'"), "{stderr}");
    assert_eq!(sandbox.gitlab.sim.stats().revocations, 0);
    assert!(sandbox.token_list().is_empty());
}

#[test]
fn an_interrupted_revocation_needs_attention_and_is_never_rotated_until_run_again() {
    let sandbox = Sandbox::new();
    sandbox.add_gitlab_provider();
    let secret = sandbox.add_project_token("ci");
    // What a `token remove --revoke` killed while holding the lease leaves behind.
    let mut conn = SqliteConnection::establish(&sandbox.db_path().display().to_string()).unwrap();
    conn.batch_execute(
        "UPDATE tokens SET state = 'rotating', lease_owner = 'cli-dead (revoking)', \
         lease_expires_at = '2000-01-01 00:00:00', attempt_id = 'dead-attempt' WHERE name = 'ci'",
    )
    .unwrap();
    drop(conn);
    let before = sandbox.gitlab.sim.stats();

    sandbox.fails(&["token", "rotate", "ci"], "", 1);
    let token = sandbox.token_show("ci");
    assert_eq!(token["state"], "needs_attention", "{token}");
    assert_eq!(token["attention_reason"], "revoke_interrupted", "{token}");
    assert_eq!(token["remedy"], "remove_again", "{token}");
    assert!(token["last_error"].as_str().unwrap().contains("token remove ci --revoke"), "{token}");
    let stats = sandbox.gitlab.sim.stats();
    assert_eq!((stats.rotations, stats.lookups), (0, before.lookups), "nothing was sent to GitLab: {stats:?}");

    sandbox.ok(&["token", "remove", "ci", "--revoke"], "");
    assert!(!sandbox.gitlab.sim.accepts(&secret));
    assert!(sandbox.token_list().is_empty());
}

#[test]
fn a_generic_oauth2_provider_revokes_at_the_endpoint_discovery_found_with_basic_client_auth() {
    let sandbox = Sandbox::new();
    let (client_id, client_secret) = sandbox.gitlab.sim.create_application();
    let issuer = sandbox.gitlab_url();
    let add = ["provider", "add", "sim", "--kind", "oauth2", "--issuer", &issuer, "--client-id", &client_id];
    sandbox.ok(&[&add[..], &["--client-secret-stdin"]].concat(), &format!("{client_secret}\n"));
    let refresh_token = sandbox.gitlab.sim.create_grant(&client_id);
    sandbox.ok(
        &["token", "add", "g", "--provider", "sim", "--kind", "oauth2", "--refresh-token-stdin"],
        &format!("{refresh_token}\n"),
    );
    assert_eq!(live_oauth_credentials(&sandbox).len(), 2);
    let stderr = sandbox.fails(&["token", "remove", "g", "--revoke"], "", 0);
    assert!(stderr.contains("revoked token 'g' at its provider"), "{stderr}");
    assert_eq!(live_oauth_credentials(&sandbox), Vec::<String>::new());
}

#[test]
fn a_generic_oauth2_provider_without_a_revocation_endpoint_needs_force() {
    let sandbox = Sandbox::new();
    let (client_id, client_secret) = sandbox.gitlab.sim.create_application();
    let token_url = format!("{}/oauth/token", sandbox.gitlab_url());
    sandbox.ok(
        &[
            "provider",
            "add",
            "op",
            "--kind",
            "oauth2",
            "--token-url",
            &token_url,
            "--client-id",
            &client_id,
            "--client-auth",
            "post",
            "--client-secret-stdin",
        ],
        &format!("{client_secret}\n"),
    );
    let refresh_token = sandbox.gitlab.sim.create_grant(&client_id);
    sandbox.ok(
        &["token", "add", "g", "--provider", "op", "--kind", "oauth2", "--refresh-token-stdin"],
        &format!("{refresh_token}\n"),
    );
    let stderr = sandbox.fails(&["token", "remove", "g", "--revoke"], "", 1);
    assert!(stderr.contains("no revocation endpoint") && stderr.contains("--force"), "{stderr}");
    assert_eq!(sandbox.token_show("g")["state"], "active");
    sandbox.fails(&["token", "remove", "g", "--revoke", "--force"], "", 0);
    assert!(sandbox.token_list().is_empty());
}
