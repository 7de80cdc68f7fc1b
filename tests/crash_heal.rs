//! `token heal` killed with SIGKILL at random moments (issue 13, point 6), on project access
//! tokens and deploy tokens made by `token create`: before the claim, while the strays are listed
//! and revoked, while GitLab's create waits, after GitLab made the new token and before it is
//! stored, after the commit and before the old token is revoked. Once the daemon has run (its
//! sweep heals again what an interrupted heal left, `heal_interrupted`; its revocation worker
//! revokes replaced deploy tokens), GitLab holds exactly one live token of each name, the one
//! tokenwarden stores, and no revocation waits.

mod common;

use std::time::Duration;

use common::Sandbox;
use common::killed::{kill_during, sandbox_with_manager, slow_down, tokenwarden, wait_until_settled};
use common::serve_process::ServeProcess;

/// Managed tokens, each healed once by a process that is killed: even ones project access
/// tokens, odd ones deploy tokens.
const RUNS: usize = 12;

#[test]
fn heals_killed_anywhere_leave_one_live_token_per_name_the_stored_one() {
    let sandbox = Sandbox::new();
    let config = sandbox_with_manager(&sandbox);
    let names: Vec<String> = (0..RUNS).map(|run| format!("h{run:02}")).collect();
    for (run, name) in names.iter().enumerate() {
        let (kind, scope) = if run % 2 == 0 {
            ("gitlab-project-access-token", "api")
        } else {
            ("gitlab-deploy-token", "read_registry")
        };
        let status = tokenwarden(&sandbox, &config)
            .args(["token", "create", name, "--provider", "gitlab", "--kind", kind])
            .args(["--project", "42", "--manager", "mgr", "--scope", scope])
            .status()
            .expect("run token create");
        assert!(status.success(), "token create {name}");
    }
    slow_down(&sandbox);
    for (run, name) in names.iter().enumerate() {
        let mut heal = tokenwarden(&sandbox, &config);
        heal.args(["token", "heal", name]);
        kill_during(heal, run, RUNS);
    }

    std::thread::sleep(Duration::from_secs(8));
    let log = sandbox.path().join("serve.log");
    let env = [("TOKENWARDEN_DATABASE_URL", sandbox.database_url())];
    let mut daemon = ServeProcess::start(sandbox.path(), &config, &log, &env);
    daemon.wait_for_api(&log, Duration::from_secs(20));
    let settled = wait_until_settled(&sandbox, &names, &log);
    daemon.terminate(Duration::from_secs(10));
    let healed = settled.iter().filter(|token| token.version > 1).count();
    eprintln!("{RUNS} heals killed: {healed} ended healed, each name one live token, the stored one");
    assert!(healed >= 1, "some kills must land after the claim");
}
