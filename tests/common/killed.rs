//! Helpers of the tests that kill `tokenwarden` processes working on managed tokens
//! (`crash_create`, `crash_deploy`, `crash_heal`): a sandbox with a manager, processes started
//! and killed at spread moments, and what GitLab holds live under a name.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use tokenwarden::config::DatabaseUrl;
use tokenwarden::crypto::{Cipher, MasterKey};
use tokenwarden::simulator::variables::Namespace;
use tokenwarden::simulator::{FaultRates, Simulator, TokenOwner};
use tokenwarden::store::{DbConnection, connect};

use super::Sandbox;

/// Short provider timeouts (a lease lasts 2 × 1 s + 5 s) and a sweep every second.
pub const CONFIG: &str = r#"
[scheduler]
provider_timeout = "1s"

[maintenance]
sweep = "* * * * * *"
"#;

/// Added by the simulator before it answers any request: the windows a kill can land in.
pub const LATENCY_MS: u64 = 60;

/// A sandbox with a GitLab provider, a manager `mgr` ([`add_manager`]) and the config file
/// [`CONFIG`]; returns the config's path and the manager's secret.
pub fn sandbox_with_manager(sandbox: &Sandbox) -> (PathBuf, String) {
    sandbox.add_gitlab_provider();
    let manager = add_manager(sandbox);
    let config = sandbox.path().join("crash.toml");
    std::fs::write(&config, CONFIG).unwrap();
    (config, manager)
}

/// Tracks `mgr`, a personal token of a Maintainer of project 42, at the sandbox's provider
/// `gitlab`; returns its secret.
pub fn add_manager(sandbox: &Sandbox) -> String {
    let manager = sandbox.gitlab.token(TokenOwner::Personal);
    let add =
        ["token", "add", "mgr", "--provider", "gitlab", "--kind", "gitlab-personal-access-token", "--secret-stdin"];
    sandbox.ok(&add, &format!("{manager}\n"));
    sandbox.gitlab.sim.with_state(|state| state.memberships.insert(Namespace::Project("42".into()), 40));
    manager
}

/// Makes `name` with `token create` (kind `kind`, scope `scope`, in project 42, through `mgr`).
pub fn create(sandbox: &Sandbox, config: &Path, name: &str, kind: &str, scope: &str) {
    let status = tokenwarden(sandbox, config)
        .args(["token", "create", name, "--provider", "gitlab", "--kind", kind])
        .args(["--project", "42", "--manager", "mgr", "--scope", scope])
        .status()
        .expect("run token create");
    assert!(status.success(), "token create {name}");
}

/// Lets the leases of killed processes run out, then runs the daemon until the tokens `names`
/// are settled ([`wait_until_settled`]); returns them.
pub fn daemon_until_settled(
    sandbox: &Sandbox,
    config: &Path,
    names: &[String],
) -> Vec<tokenwarden::store::models::Token> {
    std::thread::sleep(Duration::from_secs(8));
    let log = sandbox.path().join("serve.log");
    let env = [("TOKENWARDEN_DATABASE_URL", sandbox.database_url())];
    let mut daemon = super::serve_process::ServeProcess::start(sandbox.path(), config, &log, &env);
    daemon.wait_for_api(&log, Duration::from_secs(20));
    let settled = wait_until_settled(sandbox, names, &log);
    daemon.terminate(Duration::from_secs(10));
    settled
}

/// Every request to the simulator from now on waits [`LATENCY_MS`] first.
pub fn slow_down(sandbox: &Sandbox) {
    sandbox.gitlab.sim.set_rates(FaultRates { latency_ms: LATENCY_MS, ..FaultRates::default() });
}

/// `tokenwarden --config CONFIG …` on the sandbox's store, its output discarded.
pub fn tokenwarden(sandbox: &Sandbox, config: &Path) -> Command {
    let mut command = Command::new(assert_cmd::cargo::cargo_bin("tokenwarden"));
    command
        .current_dir(sandbox.path())
        .env("TOKENWARDEN_DATABASE_URL", sandbox.database_url())
        .args(["--config", config.to_str().unwrap()])
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    command
}

/// Starts `command` and kills it with SIGKILL after run `run` of `runs`' share of a window of a
/// few simulator latencies (start-up, claim, list, create, commit), so the kills are spread over
/// the whole of the work and some land after it.
pub fn kill_during(mut command: Command, run: usize, runs: usize) {
    let mut child = command.spawn().expect("start tokenwarden");
    let window = 6 * LATENCY_MS + 100;
    std::thread::sleep(Duration::from_millis(window * run as u64 / runs as u64));
    let _ = child.kill();
    let _ = child.wait();
}

/// A connection to the sandbox's store and its cipher.
pub fn db(sandbox: &Sandbox) -> (DbConnection, Cipher) {
    let url = DatabaseUrl::parse(&sandbox.database_url()).expect("database URL");
    let conn = connect(&url).expect("open the database");
    let key = MasterKey::read(&sandbox.key_path()).expect("read the master key");
    (conn, Cipher::new(&key))
}

/// The secrets of the live tokens the sandbox's GitLab holds under `gitlab_name` now ([`live_in`]).
pub fn live(sandbox: &Sandbox, gitlab_name: &str) -> Vec<String> {
    live_in(&sandbox.gitlab.sim, gitlab_name, chrono::Utc::now())
}

/// The secrets of the live tokens `sim` holds under `gitlab_name` at `now`: project 42's deploy
/// tokens and access tokens.
pub fn live_in(sim: &Simulator, gitlab_name: &str, now: chrono::DateTime<chrono::Utc>) -> Vec<String> {
    sim.with_state(|state| {
        let mut live: Vec<String> = state
            .deploy_tokens_of(&Namespace::Project("42".into()))
            .into_iter()
            .filter(|token| token.name == gitlab_name && state.deploy_token_works(&token.secret, now))
            .map(|token| token.secret)
            .collect();
        live.extend(
            state.issued_secrets().into_iter().filter(|s| state.look_up(s, now).is_some_and(|t| t.name == gitlab_name)),
        );
        live
    })
}

/// Waits (at most 40 s) until each of the tokens `names` is active, waits for no revocation, and
/// GitLab holds exactly one live token of its GitLab name (`tokenwarden: NAME`): the stored one.
/// Returns the tokens then; panics with what is unsettled and the daemon's `log` otherwise.
pub fn wait_until_settled(sandbox: &Sandbox, names: &[String], log: &Path) -> Vec<tokenwarden::store::models::Token> {
    use secrecy::ExposeSecret;
    use tokenwarden::domain::TokenName;
    use tokenwarden::store::{pending_revocations, tokens};
    let (mut conn, cipher) = db(sandbox);
    let deadline = std::time::Instant::now() + Duration::from_secs(40);
    loop {
        let (mut settled, mut unsettled) = (Vec::new(), Vec::new());
        for name in names {
            let name = TokenName::new(name.clone()).unwrap();
            let token = tokens::find(&mut conn, &name).unwrap();
            let stored = tokens::read_secret(&mut conn, &cipher, &name, tokens::SecretField::Secret).unwrap();
            let stored = stored.map(|secret| vec![secret.expose_secret().to_owned()]);
            let live = live(sandbox, &format!("tokenwarden: {name}"));
            let waiting = pending_revocations::pending_for(&mut conn, &token.id).unwrap().len();
            if token.state.as_str() == "active" && waiting == 0 && stored == Some(live.clone()) {
                settled.push(token);
            } else {
                unsettled.push(format!(
                    "{name} {} v{} live={} waiting={waiting}",
                    token.state,
                    token.version,
                    live.len()
                ));
            }
        }
        if unsettled.is_empty() {
            return settled;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "not settled: {unsettled:?}\n{}",
            std::fs::read_to_string(log).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}
