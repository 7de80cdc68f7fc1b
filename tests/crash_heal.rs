//! `token heal` killed with SIGKILL at random moments (issue 13, point 6), on project access
//! tokens and deploy tokens made by `token create`: before the claim, while the strays are listed
//! and revoked, while GitLab's create waits, after GitLab made the new token and before it is
//! stored, after the commit and before the old token is revoked. Once the daemon has run (its
//! sweep heals again what an interrupted heal left, `heal_interrupted`; its revocation worker
//! revokes replaced deploy tokens), GitLab holds exactly one live token of each name, the one
//! tokenwarden stores, and no revocation waits.

mod common;

use common::Sandbox;
use common::killed::{create, daemon_until_settled, kill_during, sandbox_with_manager, slow_down, tokenwarden};

/// Managed tokens, each healed once by a process that is killed: even ones project access
/// tokens, odd ones deploy tokens.
const RUNS: usize = 12;

#[test]
fn heals_killed_anywhere_leave_one_live_token_per_name_the_stored_one() {
    let sandbox = Sandbox::new();
    let (config, _) = sandbox_with_manager(&sandbox);
    let names: Vec<String> = (0..RUNS).map(|run| format!("h{run:02}")).collect();
    for (run, name) in names.iter().enumerate() {
        if run % 2 == 0 {
            create(&sandbox, &config, name, "gitlab-project-access-token", "api");
        } else {
            create(&sandbox, &config, name, "gitlab-deploy-token", "read_registry");
        }
    }
    slow_down(&sandbox);
    for (run, name) in names.iter().enumerate() {
        let mut heal = tokenwarden(&sandbox, &config);
        heal.args(["token", "heal", name]);
        kill_during(heal, run, RUNS);
    }
    // The sweep heals again what an interrupted heal left; the worker revokes replaced tokens.
    let settled = daemon_until_settled(&sandbox, &config, &names);
    let healed = settled.iter().filter(|token| token.version > 1).count();
    eprintln!("{RUNS} heals killed: {healed} ended healed, each name one live token, the stored one");
    assert!(healed >= 1, "some kills must land after the claim");
}
