//! Deploy-token rotations killed with SIGKILL at random moments (issue 13, point 6): before the
//! claim, while GitLab's create of the successor waits, after GitLab made it and before the
//! answer is stored, after the commit with the old token's revocation queued. Once the daemon has
//! run (its scheduler reclaims the interrupted rotations, revoking what a dead attempt made
//! before making a successor; its revocation worker revokes the old tokens), GitLab holds exactly
//! one live deploy token of each name, the one tokenwarden stores, and no revocation waits.

mod common;

use common::Sandbox;
use common::killed::{create, daemon_until_settled, kill_during, sandbox_with_manager, slow_down, tokenwarden};

/// Deploy tokens, each rotated once by a process that is killed.
const RUNS: usize = 12;

#[test]
fn deploy_rotations_killed_anywhere_leave_one_live_token_per_name_the_stored_one() {
    let sandbox = Sandbox::new();
    let (config, _) = sandbox_with_manager(&sandbox);
    let names: Vec<String> = (0..RUNS).map(|run| format!("d{run:02}")).collect();
    for name in &names {
        create(&sandbox, &config, name, "gitlab-deploy-token", "read_registry");
    }
    slow_down(&sandbox);
    for (run, name) in names.iter().enumerate() {
        let mut rotate = tokenwarden(&sandbox, &config);
        rotate.args(["token", "rotate", name]);
        kill_during(rotate, run, RUNS);
    }
    // The leases of the killed rotations run out; the daemon reclaims and finishes them.
    let settled = daemon_until_settled(&sandbox, &config, &names);
    let rotated = settled.iter().filter(|token| token.version > 1).count();
    eprintln!("{RUNS} deploy rotations killed: {rotated} ended rotated, each name one live token, the stored one");
    assert!(rotated >= 1, "some kills must land after the claim");
}
