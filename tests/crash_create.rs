//! `token create` killed with SIGKILL at random moments (issue 13, point 6): whatever the moment —
//! before its claim, while GitLab's create waits, after GitLab made the token and before the
//! answer is stored — once the daemon has run, GitLab holds at most one live token of each name,
//! and each live token is the one tokenwarden stores. The daemon's sweep finds the creates left
//! holding their lease (`create_interrupted`) and heals them through the manager: what the dead
//! create made is revoked and the token made once more.

mod common;

use std::time::{Duration, Instant};

use common::Sandbox;
use common::killed::{db, kill_during, live, sandbox_with_manager, slow_down, tokenwarden};
use common::serve_process::ServeProcess;
use secrecy::ExposeSecret;
use tokenwarden::domain::TokenName;
use tokenwarden::store::tokens::{self, SecretField};

/// `token create` runs killed.
const RUNS: usize = 24;

#[test]
fn creates_killed_anywhere_leave_one_live_token_per_name_and_only_tokens_tokenwarden_holds() {
    let sandbox = Sandbox::new();
    let (config, _) = sandbox_with_manager(&sandbox);
    slow_down(&sandbox);
    for run in 0..RUNS {
        let mut create = tokenwarden(&sandbox, &config);
        create.args(["token", "create", &format!("t{run:02}"), "--provider", "gitlab"]);
        create.args(["--kind", "gitlab-project-access-token", "--project", "42", "--manager", "mgr", "--scope", "api"]);
        kill_during(create, run, RUNS);
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

    let (mut stored, mut healed) = (0, 0);
    for run in 0..RUNS {
        let name = format!("t{run:02}");
        let gitlab_name = format!("tokenwarden: {name}");
        let live = live(&sandbox, &gitlab_name);
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
