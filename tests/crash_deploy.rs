//! Deploy-token rotations killed with SIGKILL at random moments (issue 13, point 6): before the
//! claim, while GitLab's create of the successor waits, after GitLab made it and before the
//! answer is stored, after the commit with the old token's revocation queued. Once the daemon has
//! run (its scheduler reclaims the interrupted rotations, revoking what a dead attempt made
//! before making a successor; its revocation worker revokes the old tokens), GitLab holds exactly
//! one live deploy token of each name, the one tokenwarden stores, and no revocation waits.

mod common;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::Sandbox;
use common::serve_process::ServeProcess;
use secrecy::ExposeSecret;
use tokenwarden::config::DatabaseUrl;
use tokenwarden::crypto::{Cipher, MasterKey};
use tokenwarden::domain::TokenName;
use tokenwarden::simulator::variables::Namespace;
use tokenwarden::simulator::{FaultRates, TokenOwner};
use tokenwarden::store::tokens::{self, SecretField};
use tokenwarden::store::{DbConnection, connect, pending_revocations};

/// Short provider timeouts (a lease lasts 2 × 1 s + 5 s).
const CONFIG: &str = r#"
[scheduler]
provider_timeout = "1s"
"#;

/// Added by the simulator before it answers any request: the windows a kill can land in.
const LATENCY_MS: u64 = 60;
/// Deploy tokens, each rotated once by a process that is killed.
const RUNS: usize = 12;

fn db(sandbox: &Sandbox) -> (DbConnection, Cipher) {
    let url = DatabaseUrl::parse(&sandbox.database_url()).expect("database URL");
    let conn = connect(&url).expect("open the database");
    let key = MasterKey::read(&sandbox.key_path()).expect("read the master key");
    (conn, Cipher::new(&key))
}

fn tokenwarden(sandbox: &Sandbox, config: &std::path::Path) -> Command {
    let mut command = Command::new(assert_cmd::cargo::cargo_bin("tokenwarden"));
    command
        .current_dir(sandbox.path())
        .env("TOKENWARDEN_DATABASE_URL", sandbox.database_url())
        .args(["--config", config.to_str().unwrap()])
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    command
}

/// The secrets of the live deploy tokens of project 42 named `gitlab_name`.
fn live(sandbox: &Sandbox, gitlab_name: &str) -> Vec<String> {
    let now = chrono::Utc::now();
    sandbox.gitlab.sim.with_state(|state| {
        state
            .deploy_tokens_of(&Namespace::Project("42".into()))
            .into_iter()
            .filter(|token| token.name == gitlab_name && state.deploy_token_works(&token.secret, now))
            .map(|token| token.secret)
            .collect()
    })
}

#[test]
fn deploy_rotations_killed_anywhere_leave_one_live_token_per_name_the_stored_one() {
    let sandbox = Sandbox::new();
    sandbox.add_gitlab_provider();
    let manager = sandbox.gitlab.token(TokenOwner::Personal);
    let add =
        ["token", "add", "mgr", "--provider", "gitlab", "--kind", "gitlab-personal-access-token", "--secret-stdin"];
    sandbox.ok(&add, &format!("{manager}\n"));
    sandbox.gitlab.sim.with_state(|state| state.memberships.insert(Namespace::Project("42".into()), 40));
    let config = sandbox.path().join("crash.toml");
    std::fs::write(&config, CONFIG).unwrap();
    for run in 0..RUNS {
        let status = tokenwarden(&sandbox, &config)
            .args(["token", "create", &format!("d{run:02}"), "--provider", "gitlab", "--kind", "gitlab-deploy-token"])
            .args(["--project", "42", "--manager", "mgr", "--scope", "read_registry"])
            .status()
            .expect("run token create");
        assert!(status.success(), "token create d{run:02}");
    }
    sandbox.gitlab.sim.set_rates(FaultRates { latency_ms: LATENCY_MS, ..FaultRates::default() });

    for run in 0..RUNS {
        let mut child =
            tokenwarden(&sandbox, &config).args(["token", "rotate", &format!("d{run:02}")]).spawn().expect("rotate");
        // Start-up, the claim, the list, the create and the commit take a few latencies: the
        // kills are spread over twice that.
        let window = 6 * LATENCY_MS + 100;
        std::thread::sleep(Duration::from_millis(window * run as u64 / RUNS as u64));
        let _ = child.kill();
        let _ = child.wait();
    }

    // The leases of the killed rotations run out; the daemon reclaims and finishes them.
    std::thread::sleep(Duration::from_secs(8));
    let log = sandbox.path().join("serve.log");
    let env = [("TOKENWARDEN_DATABASE_URL", sandbox.database_url())];
    let mut daemon = ServeProcess::start(sandbox.path(), &config, &log, &env);
    daemon.wait_for_api(&log, Duration::from_secs(20));
    let (mut conn, cipher) = db(&sandbox);
    let deadline = Instant::now() + Duration::from_secs(40);
    let rotated = loop {
        let mut unsettled = Vec::new();
        let mut rotated = 0;
        for run in 0..RUNS {
            let name = TokenName::new(format!("d{run:02}")).unwrap();
            let token = tokens::find(&mut conn, &name).unwrap();
            rotated += usize::from(token.version > 1);
            let stored = tokens::read_secret(&mut conn, &cipher, &name, SecretField::Secret).unwrap();
            let stored = stored.map(|secret| secret.expose_secret().to_owned());
            let live = live(&sandbox, &format!("tokenwarden: {name}"));
            let waiting = pending_revocations::pending_for(&mut conn, &token.id).unwrap();
            if token.state.as_str() != "active" || !waiting.is_empty() || stored.map(|s| vec![s]) != Some(live.clone())
            {
                unsettled.push(format!(
                    "{name} {} v{} live={} waiting={}",
                    token.state,
                    token.version,
                    live.len(),
                    waiting.len()
                ));
            }
        }
        if unsettled.is_empty() {
            break rotated;
        }
        assert!(
            Instant::now() < deadline,
            "not settled: {unsettled:?}\n{}",
            std::fs::read_to_string(&log).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(200));
    };
    daemon.terminate(Duration::from_secs(10));
    eprintln!("{RUNS} deploy rotations killed: {rotated} ended rotated, each name one live token, the stored one");
    assert!(rotated >= 1, "some kills must land after the claim");
}
