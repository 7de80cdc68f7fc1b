//! Sinks end to end: `sink add` through the CLI, `tokenwarden serve` delivering to a file and to
//! a GitLab CI/CD variable (the simulator's, with GitLab's rules) after a forced rotation, a
//! daemon killed during a delivery, a sink that cannot be written, GitLab refusing or failing.

mod common;

use std::os::unix::fs::PermissionsExt;
use std::time::{Duration, Instant};

use common::serve_process::ServeProcess;
use common::{Sandbox, files_in};
use tokenwarden::simulator::TokenOwner;
use tokenwarden::simulator::variables::{MAINTAINER, Namespace, Variable};

/// Starts `serve` on the sandbox's store with the sandbox's key.
fn serve(sandbox: &Sandbox, log_name: &str) -> ServeProcess {
    let config = sandbox.path().join("config.toml");
    std::fs::write(&config, "").unwrap();
    let log = sandbox.path().join(log_name);
    let env = [
        ("TOKENWARDEN_DATABASE_URL", sandbox.database_url()),
        ("TOKENWARDEN_MASTER_KEY_FILE", sandbox.key_path().display().to_string()),
        ("PATH", std::env::var("PATH").unwrap_or_default()),
    ];
    let mut daemon = ServeProcess::start(sandbox.path(), &config, &log, &env);
    daemon.wait_for_api(&log, Duration::from_secs(30));
    daemon
}

/// Polls (bounded, real time) until `check` holds.
fn wait_until(what: &str, limit: Duration, mut check: impl FnMut() -> bool) {
    let deadline = Instant::now() + limit;
    while !check() {
        assert!(Instant::now() < deadline, "timed out waiting until {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn sink_show(sandbox: &Sandbox, name: &str) -> serde_json::Value {
    serde_json::from_str(&sandbox.ok(&["sink", "show", name, "--json"], "")).unwrap()
}

fn current_secret(sandbox: &Sandbox) -> String {
    let issued = sandbox.gitlab.sim.with_state(|state| state.issued_secrets());
    issued.into_iter().find(|secret| sandbox.gitlab.sim.accepts(secret)).expect("one live token")
}

#[test]
fn each_version_lands_in_the_file_with_its_mode_and_the_program_runs_once_per_version() {
    let sandbox = Sandbox::new();
    sandbox.add_gitlab_provider();
    sandbox.add_project_token("ci");
    let out = sandbox.path().join("out");
    std::fs::create_dir(&out).unwrap();
    let target = out.join("ci.token");
    let runs = sandbox.path().join("runs");
    let script = format!("echo \"$TOKENWARDEN_SINK_FILE $(wc -c < \"$TOKENWARDEN_SINK_FILE\")\" >> {}", runs.display());
    let path = target.display().to_string();
    let args = ["sink", "add", "ci-file", "--token", "ci", "--path", &path, "--exec", "sh", "-c", &script];
    sandbox.ok(&args, "");
    assert_eq!(sink_show(&sandbox, "ci-file")["state"], "pending");

    let daemon = serve(&sandbox, "serve.log");
    let first = current_secret(&sandbox);
    wait_until("version 1 is delivered", Duration::from_secs(20), || {
        std::fs::read_to_string(&target).is_ok_and(|text| text == first)
            && sink_show(&sandbox, "ci-file")["state"] == "current"
    });
    sandbox.ok(&["token", "rotate", "ci"], "");
    let second = current_secret(&sandbox);
    assert_ne!(first, second);
    wait_until("version 2 is delivered", Duration::from_secs(20), || {
        sink_show(&sandbox, "ci-file")["delivered_version"] == 2
    });
    assert_eq!(std::fs::read_to_string(&target).unwrap(), second);
    assert_eq!(std::fs::metadata(&target).unwrap().permissions().mode() & 0o777, 0o600);
    assert_eq!(files_in(&out), ["ci.token"], "no temporary file left");
    let ran = std::fs::read_to_string(&runs).unwrap();
    assert_eq!(ran.lines().count(), 2, "the program ran once per version: {ran}");
    assert!(ran.lines().all(|line| line.starts_with(&path)), "{ran}");
    assert!(!ran.contains(&second), "the program never sees the secret");
    assert!(daemon.terminate(Duration::from_secs(10)).success());

    let listed: Vec<serde_json::Value> = serde_json::from_str(&sandbox.ok(&["sink", "list", "--json"], "")).unwrap();
    assert_eq!(listed.len(), 1);
    assert_eq!((listed[0]["token"].as_str(), listed[0]["token_version"].as_i64()), (Some("ci"), Some(2)));
    assert!(!sandbox.ok(&["sink", "list", "--json"], "").contains(&second), "no secret in the listing");
}

#[test]
fn a_daemon_killed_during_a_delivery_delivers_after_a_restart_and_never_an_older_version() {
    let sandbox = Sandbox::new();
    sandbox.add_gitlab_provider();
    sandbox.add_project_token("ci");
    let target = sandbox.path().join("ci.token");
    let started = sandbox.path().join("started");
    // The first run of the program hangs (the daemon is killed meanwhile); later runs return.
    let script = format!("if [ ! -e {0} ]; then touch {0}; sleep 30; fi", started.display());
    let path = target.display().to_string();
    sandbox.ok(
        &["sink", "add", "s", "--token", "ci", "--path", &path, "--exec-timeout", "2s", "--exec", "sh", "-c", &script],
        "",
    );
    sandbox.ok(&["token", "rotate", "ci"], "");
    let daemon = serve(&sandbox, "serve-1.log");
    wait_until("the program started", Duration::from_secs(20), || started.exists());
    daemon.kill();
    let killed = sink_show(&sandbox, "s");
    assert_eq!(killed["delivered_version"], serde_json::Value::Null, "nothing recorded before the program ended");
    sandbox.ok(&["token", "rotate", "ci"], "");
    let third = current_secret(&sandbox);

    let daemon = serve(&sandbox, "serve-2.log");
    wait_until("version 3 is delivered after the lease ran out", Duration::from_secs(30), || {
        sink_show(&sandbox, "s")["delivered_version"] == 3
    });
    assert_eq!(std::fs::read_to_string(&target).unwrap(), third, "the current version, not the one in flight");
    assert!(daemon.terminate(Duration::from_secs(10)).success());
}

#[test]
fn a_sink_that_cannot_be_written_needs_attention_and_the_rotation_goes_on() {
    let sandbox = Sandbox::new();
    sandbox.add_gitlab_provider();
    sandbox.add_project_token("ci");
    let out = sandbox.path().join("gone");
    std::fs::create_dir(&out).unwrap();
    let path = out.join("ci.token").display().to_string();
    sandbox.ok(&["sink", "add", "s", "--token", "ci", "--path", &path], "");
    std::fs::remove_dir(&out).unwrap();

    let daemon = serve(&sandbox, "serve.log");
    wait_until("the sink needs attention", Duration::from_secs(30), || {
        sink_show(&sandbox, "s")["state"] == "needs_attention"
    });
    let sink = sink_show(&sandbox, "s");
    assert!(sink["last_error"].as_str().unwrap().contains("gone"), "{sink}");
    sandbox.ok(&["token", "rotate", "ci"], "");
    assert_eq!(sandbox.token_show("ci")["state"], "active", "the rotation is unaffected");
    let out_text = String::from_utf8(sandbox.run(&["check"], "").stdout).unwrap();
    assert!(out_text.starts_with("TOKENWARDEN CRITICAL"), "{out_text}");
    assert!(out_text.contains("CRITICAL: sink s: deliveries keep failing"), "{out_text}");

    std::fs::create_dir(&out).unwrap();
    wait_until("the sink recovers", Duration::from_secs(60), || sink_show(&sandbox, "s")["state"] == "current");
    assert_eq!(sink_show(&sandbox, "s")["delivered_version"], 2);
    assert!(daemon.terminate(Duration::from_secs(10)).success());
}

#[test]
fn bad_sink_definitions_are_one_line_and_store_nothing() {
    let sandbox = Sandbox::new();
    sandbox.add_gitlab_provider();
    sandbox.add_project_token("ci");
    let dir = sandbox.path().display().to_string();
    let file = format!("{dir}/t");
    for (args, expected) in [
        (vec!["--token", "ci", "--path", "relative/t"], "must be absolute"),
        (vec!["--token", "ci", "--path", "/nonexistent-dir/t"], "does not exist"),
        (vec!["--token", "ci", "--path", &dir], "is a directory"),
        (vec!["--token", "ci", "--path", &file, "--mode", "0644"], "lets every user read"),
        (vec!["--token", "ci", "--path", &file, "--mode", "9"], "not an octal mode"),
        (vec!["--token", "ci", "--path", &file, "--format", "env", "--env-var", "1X"], "not a variable name"),
        (vec!["--token", "ci", "--path", &file, "--kind", "gitlab-ci-variable"], "are for file sinks"),
        (vec!["--token", "ci", "--path", &file, "--key", "K"], "are for gitlab-ci-variable sinks"),
        (vec!["--token", "ci"], "needs --path"),
        (vec!["--token", "nope", "--path", &file], "nope"),
    ] {
        let stderr = sandbox.fails(&[&["sink", "add", "s"][..], &args].concat(), "", 2);
        assert_eq!(stderr.trim_end().lines().count(), 1, "{args:?}: {stderr}");
        assert!(stderr.contains(expected), "{args:?}: expected {expected:?} in {stderr}");
    }
    assert_eq!(sandbox.ok(&["sink", "list", "--json"], "").trim(), "[]");
    sandbox.ok(&["sink", "add", "s", "--token", "ci", "--path", &file], "");
    let stderr = sandbox.fails(&["sink", "add", "s", "--token", "ci", "--path", &file], "", 2);
    assert!(stderr.contains("already exists"), "{stderr}");
    sandbox.fails(&["sink", "remove", "nope"], "", 2);
    sandbox.ok(&["sink", "remove", "s"], "");
    assert_eq!(sandbox.ok(&["sink", "list", "--json"], "").trim(), "[]");
}

/// Adds a personal access token `admin` (the simulated user's, api scope) as the manager, with
/// `level` in project 42.
fn add_manager(sandbox: &Sandbox, level: u8) {
    let secret = sandbox.gitlab.token(TokenOwner::Personal);
    let args = ["token", "add", "admin", "--provider", "gitlab", "--kind", "gitlab-personal-access-token"];
    sandbox.ok(&[&args[..], &["--secret-stdin"]].concat(), &format!("{secret}\n"));
    sandbox.gitlab.sim.with_state(|state| state.memberships.insert(Namespace::Project("42".into()), level));
}

/// `sink add NAME --token ci --kind gitlab-ci-variable --provider gitlab --manager admin` and `more`.
fn add_variable_sink(sandbox: &Sandbox, name: &str, more: &[&str]) {
    let args = ["sink", "add", name, "--token", "ci", "--kind", "gitlab-ci-variable", "--provider", "gitlab"];
    sandbox.ok(&[&args[..], &["--manager", "admin"], more].concat(), "");
}

/// The live secret of project 42's access token (the sink's token, not the manager).
fn project_secret(sandbox: &Sandbox) -> String {
    let issued = sandbox.gitlab.sim.with_state(|state| state.issued_secrets());
    let project = TokenOwner::Project("42".into());
    let owned = |secret: &String| {
        sandbox.gitlab.sim.with_state(|state| state.access_token(secret).is_some_and(|token| token.owner == project))
    };
    issued.into_iter().find(|secret| owned(secret) && sandbox.gitlab.sim.accepts(secret)).expect("a live project token")
}

fn variables_of_project_42(sandbox: &Sandbox) -> Vec<Variable> {
    sandbox.gitlab.sim.with_state(|state| state.variables.list(&Namespace::Project("42".into())).to_vec())
}

#[test]
fn each_version_lands_in_a_masked_hidden_ci_variable_created_once_then_updated() {
    let sandbox = Sandbox::new();
    sandbox.add_gitlab_provider();
    sandbox.add_project_token("ci");
    add_manager(&sandbox, MAINTAINER);
    add_variable_sink(
        &sandbox,
        "ci-var",
        &["--project", "42", "--key", "CI_TOKEN", "--environment-scope", "production"],
    );

    let daemon = serve(&sandbox, "serve.log");
    wait_until("version 1 is in the variable", Duration::from_secs(20), || {
        sink_show(&sandbox, "ci-var")["delivered_version"] == 1
    });
    let first = project_secret(&sandbox);
    let created = variables_of_project_42(&sandbox);
    assert_eq!(created.len(), 1, "{created:?}");
    let variable = &created[0];
    assert_eq!((variable.key.as_str(), variable.value.as_str()), ("CI_TOKEN", first.as_str()));
    assert!(variable.masked && variable.hidden && variable.raw, "masked, hidden and raw: {variable:?}");
    assert_eq!(variable.environment_scope, "production");
    assert!(!variable.protected);

    sandbox.ok(&["token", "rotate", "ci"], "");
    let second = project_secret(&sandbox);
    assert_ne!(first, second);
    wait_until("version 2 is in the variable", Duration::from_secs(20), || {
        sink_show(&sandbox, "ci-var")["delivered_version"] == 2
    });
    let updated = variables_of_project_42(&sandbox);
    assert_eq!(updated.len(), 1, "updated in place, not created again: {updated:?}");
    assert_eq!(updated[0].value, second);
    assert!(updated[0].masked && updated[0].hidden, "still masked and hidden");
    let shown = sandbox.ok(&["sink", "show", "ci-var"], "");
    assert!(shown.contains("CI_TOKEN") && !shown.contains(&second), "settings shown, never the secret: {shown}");
    assert!(daemon.terminate(Duration::from_secs(10)).success());
}

#[test]
fn gitlab_refusals_are_explained_and_an_unmasked_variable_is_never_written() {
    let sandbox = Sandbox::new();
    sandbox.add_gitlab_provider();
    sandbox.add_project_token("ci");
    add_manager(&sandbox, 30);
    sandbox.gitlab.sim.with_state(|state| {
        state.memberships.insert(Namespace::Project("7".into()), MAINTAINER);
        let fields = [("key", "PLAIN"), ("value", "visible-value")].map(|(k, v)| (k.to_owned(), v.to_owned()));
        state.variables.create(&Namespace::Project("7".into()), &fields).unwrap();
    });
    add_variable_sink(&sandbox, "developer", &["--project", "42", "--key", "CI_TOKEN"]);
    add_variable_sink(&sandbox, "unknown", &["--group", "nowhere", "--key", "CI_TOKEN"]);
    add_variable_sink(&sandbox, "unmasked", &["--project", "7", "--key", "PLAIN"]);

    let daemon = serve(&sandbox, "serve.log");
    for name in ["developer", "unknown", "unmasked"] {
        wait_until(&format!("sink {name} needs attention"), Duration::from_secs(60), || {
            sink_show(&sandbox, name)["state"] == "needs_attention"
        });
    }
    let error = |name: &str| sink_show(&sandbox, name)["last_error"].as_str().unwrap_or_default().to_owned();
    let developer = error("developer");
    assert!(
        developer.contains("403") && developer.contains("Maintainer role") && developer.contains("'admin'"),
        "{developer}"
    );
    let unknown = error("unknown");
    assert!(unknown.contains("group nowhere was not found") && unknown.contains("404"), "{unknown}");
    let unmasked = error("unmasked");
    assert!(unmasked.contains("not masked"), "{unmasked}");
    let plain = sandbox.gitlab.sim.with_state(|state| state.variables.list(&Namespace::Project("7".into())).to_vec());
    assert_eq!(plain[0].value, "visible-value", "the unmasked variable is left alone");
    assert!(variables_of_project_42(&sandbox).is_empty());
    let out_text = String::from_utf8(sandbox.run(&["check"], "").stdout).unwrap();
    assert!(out_text.contains("CRITICAL: sink developer"), "{out_text}");
    assert_eq!(sandbox.token_show("ci")["state"], "active", "the token itself is unaffected");
    assert!(daemon.terminate(Duration::from_secs(10)).success());
}

#[test]
fn with_half_of_the_variable_requests_failing_the_variable_converges_on_the_current_version() {
    let sandbox = Sandbox::new();
    sandbox.add_gitlab_provider();
    sandbox.add_project_token("ci");
    add_manager(&sandbox, MAINTAINER);
    sandbox.gitlab.sim.with_state(|state| state.variables_error_rate = 0.5);
    add_variable_sink(&sandbox, "ci-var", &["--project", "42", "--key", "CI_TOKEN"]);
    let daemon = serve(&sandbox, "serve.log");
    sandbox.ok(&["token", "rotate", "ci"], "");
    sandbox.ok(&["token", "rotate", "ci"], "");
    wait_until("version 3 is in the variable", Duration::from_secs(120), || {
        sink_show(&sandbox, "ci-var")["delivered_version"] == 3
    });
    let variables = variables_of_project_42(&sandbox);
    assert_eq!(variables.len(), 1, "{variables:?}");
    assert_eq!(variables[0].value, project_secret(&sandbox));
    assert!(variables[0].masked && variables[0].hidden);
    assert!(daemon.terminate(Duration::from_secs(10)).success());
}

#[test]
fn bad_ci_variable_sink_definitions_are_one_line_and_store_nothing() {
    let sandbox = Sandbox::new();
    sandbox.add_gitlab_provider();
    sandbox.add_project_token("ci");
    add_manager(&sandbox, MAINTAINER);
    sandbox.ok(&["provider", "add", "other", "--kind", "gitlab", "--url", "http://127.0.0.1:9"], "");
    let base = ["--token", "ci", "--kind", "gitlab-ci-variable"];
    for (args, expected) in [
        (vec!["--provider", "gitlab", "--project", "42", "--key", "K"], "needs --manager"),
        (vec!["--provider", "gitlab", "--manager", "admin", "--key", "K"], "needs --project ID or --group ID"),
        (vec!["--provider", "gitlab", "--manager", "admin", "--project", "42"], "needs --key"),
        (
            vec!["--provider", "gitlab", "--manager", "admin", "--project", "42", "--key", "bad-key"],
            "not a CI/CD variable key",
        ),
        (
            vec!["--provider", "other", "--manager", "admin", "--project", "42", "--key", "K"],
            "belongs to provider 'gitlab'",
        ),
        (vec!["--provider", "gitlab", "--manager", "nobody", "--project", "42", "--key", "K"], "nobody"),
        (vec!["--manager", "admin", "--project", "42", "--key", "K"], "needs --provider"),
    ] {
        let stderr = sandbox.fails(&[&["sink", "add", "s"][..], &base, &args].concat(), "", 2);
        assert_eq!(stderr.trim_end().lines().count(), 1, "{args:?}: {stderr}");
        assert!(stderr.contains(expected), "{args:?}: expected {expected:?} in {stderr}");
    }
    assert_eq!(sandbox.ok(&["sink", "list", "--json"], "").trim(), "[]");
}
