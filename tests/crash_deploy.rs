//! Deploy-token rotations killed with SIGKILL at random moments (issue 13, point 6): before the
//! claim, while GitLab's create of the successor waits, after GitLab made it and before the
//! answer is stored, after the commit with the old token's revocation queued. Once the daemon has
//! run (its scheduler reclaims the interrupted rotations, revoking what a dead attempt made
//! before making a successor; its revocation worker revokes the old tokens), GitLab holds exactly
//! one live deploy token of each name, the one tokenwarden stores, and no revocation waits.

mod common;

use std::time::Duration;

use common::Sandbox;
use common::killed::{kill_during, sandbox_with_manager, slow_down, tokenwarden, wait_until_settled};
use common::serve_process::ServeProcess;

/// Deploy tokens, each rotated once by a process that is killed.
const RUNS: usize = 12;

#[test]
fn deploy_rotations_killed_anywhere_leave_one_live_token_per_name_the_stored_one() {
    let sandbox = Sandbox::new();
    let config = sandbox_with_manager(&sandbox);
    let names: Vec<String> = (0..RUNS).map(|run| format!("d{run:02}")).collect();
    for name in &names {
        let status = tokenwarden(&sandbox, &config)
            .args(["token", "create", name, "--provider", "gitlab", "--kind", "gitlab-deploy-token"])
            .args(["--project", "42", "--manager", "mgr", "--scope", "read_registry"])
            .status()
            .expect("run token create");
        assert!(status.success(), "token create {name}");
    }
    slow_down(&sandbox);
    for (run, name) in names.iter().enumerate() {
        let mut rotate = tokenwarden(&sandbox, &config);
        rotate.args(["token", "rotate", name]);
        kill_during(rotate, run, RUNS);
    }

    // The leases of the killed rotations run out; the daemon reclaims and finishes them.
    std::thread::sleep(Duration::from_secs(8));
    let log = sandbox.path().join("serve.log");
    let env = [("TOKENWARDEN_DATABASE_URL", sandbox.database_url())];
    let mut daemon = ServeProcess::start(sandbox.path(), &config, &log, &env);
    daemon.wait_for_api(&log, Duration::from_secs(20));
    let settled = wait_until_settled(&sandbox, &names, &log);
    daemon.terminate(Duration::from_secs(10));
    let rotated = settled.iter().filter(|token| token.version > 1).count();
    eprintln!("{RUNS} deploy rotations killed: {rotated} ended rotated, each name one live token, the stored one");
    assert!(rotated >= 1, "some kills must land after the claim");
}
