//! `token create` killed with SIGKILL at random moments (issue 13, point 6): whatever the moment —
//! before its claim, while GitLab's create waits, after GitLab made the token and before the
//! answer is stored — once the daemon has run, GitLab holds at most one live token of each name,
//! and each live token is the one tokenwarden stores. The daemon's sweep finds the creates left
//! holding their lease (`create_interrupted`) and heals them through the manager: what the dead
//! create made is revoked and the token made once more.

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
use tokenwarden::store::{DbConnection, connect};

/// Short provider timeouts (a lease lasts 2 × 1 s + 5 s) and a sweep every second.
const CONFIG: &str = r#"
[scheduler]
provider_timeout = "1s"

[maintenance]
sweep = "* * * * * *"
"#;

/// Added by the simulator before it answers any request: the windows a kill can land in.
const LATENCY_MS: u64 = 60;
/// `token create` runs killed.
const RUNS: usize = 24;

fn db(sandbox: &Sandbox) -> (DbConnection, Cipher) {
    let url = DatabaseUrl::parse(&sandbox.database_url()).expect("database URL");
    let conn = connect(&url).expect("open the database");
    let key = MasterKey::read(&sandbox.key_path()).expect("read the master key");
    (conn, Cipher::new(&key))
}

#[test]
fn creates_killed_anywhere_leave_one_live_token_per_name_and_only_tokens_tokenwarden_holds() {
    let sandbox = Sandbox::new();
    sandbox.add_gitlab_provider();
    let manager = sandbox.gitlab.token(TokenOwner::Personal);
    let add =
        ["token", "add", "mgr", "--provider", "gitlab", "--kind", "gitlab-personal-access-token", "--secret-stdin"];
    sandbox.ok(&add, &format!("{manager}\n"));
    sandbox.gitlab.sim.with_state(|state| state.memberships.insert(Namespace::Project("42".into()), 40));
    sandbox.gitlab.sim.set_rates(FaultRates { latency_ms: LATENCY_MS, ..FaultRates::default() });
    let config = sandbox.path().join("crash.toml");
    std::fs::write(&config, CONFIG).unwrap();

    for run in 0..RUNS {
        let name = format!("t{run:02}");
        let mut child = Command::new(assert_cmd::cargo::cargo_bin("tokenwarden"))
            .current_dir(sandbox.path())
            .env("TOKENWARDEN_DATABASE_URL", sandbox.database_url())
            .args(["--config", config.to_str().unwrap(), "token", "create", &name, "--provider", "gitlab"])
            .args(["--kind", "gitlab-project-access-token", "--project", "42", "--manager", "mgr", "--scope", "api"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start token create");
        // The start-up, the list, the claim, the create and the commit take a few latencies: the
        // kills are spread evenly over twice that, so a slow machine still lands some of them
        // between the claim and the commit (and some land after it: a stored token).
        let window = 6 * LATENCY_MS + 100;
        std::thread::sleep(Duration::from_millis(window * run as u64 / RUNS as u64));
        let _ = child.kill();
        let _ = child.wait();
    }

    // The leases of the killed creates run out; the daemon's claims flag them and its sweep heals.
    std::thread::sleep(Duration::from_secs(8));
    let log = sandbox.path().join("serve.log");
    let env = [("TOKENWARDEN_DATABASE_URL", sandbox.database_url())];
    let mut daemon = ServeProcess::start(sandbox.path(), &config, &log, &env);
    daemon.wait_for_api(&log, Duration::from_secs(20));
    let (mut conn, cipher) = db(&sandbox);
    let deadline = Instant::now() + Duration::from_secs(40);
    loop {
        let list = tokens::list(&mut conn).unwrap();
        let unsettled: Vec<String> = list
            .iter()
            .filter(|t| t.name.as_str() != "mgr" && t.state.as_str() != "active")
            .map(|t| format!("{} {}", t.name, t.state))
            .collect();
        if unsettled.is_empty() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "not healed: {unsettled:?}\n{}",
            std::fs::read_to_string(&log).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    daemon.terminate(Duration::from_secs(10));

    let now = chrono::Utc::now();
    let (mut stored, mut healed) = (0, 0);
    for run in 0..RUNS {
        let name = format!("t{run:02}");
        let gitlab_name = format!("tokenwarden: {name}");
        let live: Vec<String> = sandbox.gitlab.sim.with_state(|state| {
            state
                .issued_secrets()
                .into_iter()
                .filter(|s| state.look_up(s, now).is_some_and(|t| t.name == gitlab_name))
                .collect()
        });
        let token = TokenName::new(name.clone()).unwrap();
        let secret = match tokens::read_secret(&mut conn, &cipher, &token, SecretField::Secret) {
            Ok(secret) => secret.map(|s| s.expose_secret().to_owned()),
            Err(_) => None,
        };
        match secret {
            Some(secret) => {
                stored += 1;
                let history = tokens::history(&mut conn, &token).unwrap();
                healed += usize::from(history.iter().any(|entry| entry.event == "healed"));
                assert_eq!(live, vec![secret], "{name}: one live token at GitLab, the one stored");
            }
            None => assert!(live.is_empty(), "{name}: not stored, so nothing of its name may live at GitLab: {live:?}"),
        }
    }
    eprintln!(
        "{RUNS} creates killed: {stored} stored ({healed} of them healed after the kill), {} never claimed",
        RUNS - stored
    );
    assert!(healed >= 1, "some kills must land between the claim and the commit: {stored} stored, {healed} healed");
}
