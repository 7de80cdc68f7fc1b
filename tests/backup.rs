//! `tokenwarden backup` and `restore`: a copy taken while the daemon rotates holds every version
//! committed before it, restores atomically with the original key, and bad input (an existing
//! target, a missing directory, a truncated or foreign file, a newer schema, a running daemon)
//! is one line and changes nothing.

mod common;

use std::collections::BTreeMap;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use common::Sandbox;
use common::serve_process::ServeProcess;
use diesel::Connection;
use diesel::connection::SimpleConnection;
use secrecy::ExposeSecret;
use tokenwarden::config::DatabaseUrl;
use tokenwarden::crypto::{Cipher, MasterKey};
use tokenwarden::store::tokens::{self, SecretField};
use tokenwarden::store::{DbConnection, connect};

/// Token versions in the SQLite store at `path`, by name.
fn versions(path: &Path) -> BTreeMap<String, i64> {
    let mut conn = connect(&DatabaseUrl::Sqlite(path.to_owned())).unwrap();
    tokens::list(&mut conn).unwrap().into_iter().map(|t| (t.name.to_string(), t.version)).collect()
}

/// A connection to a scratch copy of `file` (opening a file as a store writes beside it).
fn open_copy(file: &Path, scratch: &Path) -> DbConnection {
    std::fs::copy(file, scratch).unwrap();
    connect(&DatabaseUrl::Sqlite(scratch.to_owned())).unwrap()
}

fn one_line_exit(sandbox: &Sandbox, args: &[&str], code: i32, expected: &str) {
    let stderr = sandbox.fails(args, "", code);
    assert_eq!(stderr.lines().count(), 1, "{args:?}: {stderr}");
    assert!(stderr.contains(expected), "{args:?}: expected {expected:?} in: {stderr}");
}

fn sandbox_with_tokens(names: &[&str]) -> Sandbox {
    let sandbox = Sandbox::new();
    sandbox.add_gitlab_provider();
    for name in names {
        sandbox.add_project_token(name);
    }
    sandbox
}

#[test]
fn backup_refuses_an_existing_target_a_missing_directory_and_postgres_with_one_line() {
    let sandbox = sandbox_with_tokens(&["ci"]);
    let taken = sandbox.path().join("taken.db");
    std::fs::write(&taken, b"keep me").unwrap();
    let taken_arg = taken.to_str().unwrap();
    one_line_exit(&sandbox, &["backup", "--to", taken_arg], 2, "exists already");
    assert_eq!(std::fs::read(&taken).unwrap(), b"keep me", "never overwritten");
    let missing = sandbox.path().join("no-such-dir/b.db");
    one_line_exit(&sandbox, &["backup", "--to", missing.to_str().unwrap()], 2, "does not exist");
    assert!(!missing.parent().unwrap().exists());
    let pg = ["--database-url", "postgres://tw:hunter2@db.internal/tw", "backup", "--to", "/tmp/x.db"];
    one_line_exit(&sandbox, &pg, 2, "pg_dump");
    let pg = ["--database-url", "postgres://tw:hunter2@db.internal/tw", "restore", "--from", taken_arg];
    one_line_exit(&sandbox, &pg, 2, "pg_restore");
    let elsewhere = Sandbox::new();
    one_line_exit(&elsewhere, &["backup", "--to", "b.db"], 2, "no tokenwarden store at");
    assert!(!elsewhere.path().join("b.db").exists() && !elsewhere.db_path().exists());
}

#[test]
fn restore_refuses_a_truncated_file_a_foreign_file_and_a_newer_schema_and_keeps_the_store() {
    let sandbox = sandbox_with_tokens(&["ci"]);
    let backup = sandbox.path().join("good.db");
    sandbox.ok(&["backup", "--to", backup.to_str().unwrap()], "");
    sandbox.ok(&["token", "rotate", "ci"], "");
    let before = versions(&sandbox.db_path());

    let bytes = std::fs::read(&backup).unwrap();
    let truncated = sandbox.path().join("truncated.db");
    std::fs::write(&truncated, &bytes[..bytes.len() - 4096]).unwrap();
    one_line_exit(&sandbox, &["restore", "--from", truncated.to_str().unwrap()], 2, "is truncated");
    let cut_mid_page = sandbox.path().join("cut.db");
    std::fs::write(&cut_mid_page, &bytes[..bytes.len() - 100]).unwrap();
    one_line_exit(&sandbox, &["restore", "--from", cut_mid_page.to_str().unwrap()], 2, "is truncated");
    let text = sandbox.path().join("notes.txt");
    std::fs::write(&text, "not a database at all").unwrap();
    one_line_exit(&sandbox, &["restore", "--from", text.to_str().unwrap()], 2, "not a tokenwarden store");
    let foreign = sandbox.path().join("foreign.db");
    connect(&DatabaseUrl::Sqlite(foreign.clone())).unwrap().batch_execute("CREATE TABLE t (x INTEGER)").unwrap();
    one_line_exit(&sandbox, &["restore", "--from", foreign.to_str().unwrap()], 2, "not a tokenwarden store");
    let newer = sandbox.path().join("newer.db");
    let mut conn = open_copy(&backup, &newer);
    conn.batch_execute("INSERT INTO __diesel_schema_migrations (version) VALUES ('99991231000001'); PRAGMA wal_checkpoint(TRUNCATE); PRAGMA journal_mode = DELETE;").unwrap();
    drop(conn);
    one_line_exit(&sandbox, &["restore", "--from", newer.to_str().unwrap()], 2, "written by a newer tokenwarden");
    one_line_exit(&sandbox, &["restore", "--from", "/nonexistent/b.db"], 2, "cannot read /nonexistent/b.db");

    assert_eq!(versions(&sandbox.db_path()), before, "every refused restore left the store as it was");

    let other = sandbox_with_tokens(&["other"]);
    let other_before = versions(&other.db_path());
    one_line_exit(&other, &["restore", "--from", backup.to_str().unwrap()], 2, "is sealed with master key");
    assert_eq!(versions(&other.db_path()), other_before, "a backup the configured key cannot open is not restored");
    let leftovers: Vec<String> = std::fs::read_dir(sandbox.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|name| name.contains("restore"))
        .collect();
    assert!(leftovers.is_empty(), "no staged copy is left behind: {leftovers:?}");
}

/// Runs forced rotations of `names` round-robin through the CLI until `stop` is set.
fn storm(sandbox: &Sandbox, names: &[&str], stop: &AtomicBool, rotations: &AtomicUsize) {
    for name in names.iter().cycle() {
        if stop.load(Ordering::Relaxed) {
            return;
        }
        if sandbox.run(&["token", "rotate", name], "").status.success() {
            rotations.fetch_add(1, Ordering::Relaxed);
        }
    }
}

fn start_daemon(sandbox: &Sandbox, log: &str) -> (ServeProcess, String) {
    let config = sandbox.path().join("serve.toml");
    std::fs::write(&config, "").unwrap();
    let log = sandbox.path().join(log);
    let mut daemon =
        ServeProcess::start(sandbox.path(), &config, &log, &[("TOKENWARDEN_DATABASE_URL", sandbox.database_url())]);
    let base = daemon.wait_for_api(&log, Duration::from_secs(30));
    (daemon, base)
}

/// `GET /v1/tokens/{name}/secret` with `key`: (version, secret).
fn read_secret(base: &str, key: &str, name: &str) -> (i64, String) {
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    runtime.block_on(async {
        let client =
            tokenwarden::providers::build_http_client(tokenwarden::providers::HttpSettings::default()).unwrap();
        let response = client.get(format!("{base}/v1/tokens/{name}/secret")).bearer_auth(key).send().await.unwrap();
        assert_eq!(response.status(), 200, "{name}");
        let body: serde_json::Value = response.json().await.unwrap();
        (body["version"].as_i64().unwrap(), body["secret"].as_str().unwrap().to_owned())
    })
}

#[test]
fn a_backup_taken_during_a_rotation_storm_restores_every_committed_version_and_serves_reads_with_the_original_key() {
    const NAMES: [&str; 4] = ["t0", "t1", "t2", "t3"];
    let sandbox = sandbox_with_tokens(&NAMES);
    let created: serde_json::Value =
        serde_json::from_str(&sandbox.ok(&["client", "add", "ops", "--role", "operator"], "")).unwrap();
    let api_key = created["api_key"].as_str().unwrap().to_owned();
    let (daemon, _) = start_daemon(&sandbox, "serve-1.log");

    let (stop, rotations) = (Arc::new(AtomicBool::new(false)), Arc::new(AtomicUsize::new(0)));
    let backup = sandbox.path().join("backups").join("tokenwarden-backup.db");
    std::fs::create_dir(backup.parent().unwrap()).unwrap();
    let (before, after) = std::thread::scope(|scope| {
        for half in [&NAMES[..2], &NAMES[2..]] {
            let (stop, rotations, sandbox) = (&stop, &rotations, &sandbox);
            scope.spawn(move || storm(sandbox, half, stop, rotations));
        }
        let started = Instant::now();
        while rotations.load(Ordering::Relaxed) < 8 {
            assert!(started.elapsed() < Duration::from_secs(60), "the storm does not rotate");
            std::thread::sleep(Duration::from_millis(20));
        }
        let before = versions(&sandbox.db_path());
        sandbox.ok(&["backup", "--to", backup.to_str().unwrap()], "");
        let after = versions(&sandbox.db_path());
        let at_backup = rotations.load(Ordering::Relaxed);
        while rotations.load(Ordering::Relaxed) < at_backup + 4 {
            std::thread::sleep(Duration::from_millis(20));
        }
        stop.store(true, Ordering::Relaxed);
        (before, after)
    });
    let mode = std::fs::metadata(&backup).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600, "the backup is private");

    // What the backup holds: every version committed before it started, each version's history
    // row, and the secret GitLab issued for that version, sealed under the original key.
    let key = MasterKey::read(&sandbox.key_path()).unwrap();
    let cipher = Cipher::new(&key);
    let mut conn = open_copy(&backup, &sandbox.path().join("inspect.db"));
    let mut in_backup = BTreeMap::new();
    for token in tokens::list(&mut conn).unwrap() {
        let name = token.name.to_string();
        assert!(before[&name] <= token.version && token.version <= after[&name], "{name}: {before:?} {after:?}");
        let history = tokens::history(&mut conn, &token.name).unwrap();
        let numbers: Vec<i64> = history.iter().map(|entry| entry.version).collect();
        assert_eq!(numbers, (1..=token.version).collect::<Vec<_>>(), "{name}: every committed version");
        let secret = tokens::read_secret(&mut conn, &cipher, &token.name, SecretField::Secret).unwrap().unwrap();
        let secret = secret.expose_secret().to_owned();
        assert!(sandbox.gitlab.sim.with_state(|s| s.access_token(&secret).is_some()), "{name}: a secret GitLab issued");
        in_backup.insert(name, (token.version, secret));
    }
    assert_eq!(in_backup.len(), NAMES.len());
    let live = versions(&sandbox.db_path());
    assert!(live.iter().any(|(name, version)| *version > in_backup[name].0), "the storm went on after the backup");

    let backup_arg = backup.to_str().unwrap();
    one_line_exit(&sandbox, &["restore", "--from", backup_arg], 1, "a tokenwarden daemon is serving this store");
    assert_eq!(versions(&sandbox.db_path()), live, "refused while the daemon runs: nothing changed");
    assert!(daemon.terminate(Duration::from_secs(30)).success());

    let stderr = sandbox.fails(&["restore", "--from", backup_arg], "", 0);
    assert!(stderr.contains("restored") && stderr.contains("kept as"), "{stderr}");
    let restored: BTreeMap<String, i64> = versions(&sandbox.db_path());
    assert_eq!(restored, in_backup.iter().map(|(n, (v, _))| (n.clone(), *v)).collect::<BTreeMap<_, _>>());
    let mode = std::fs::metadata(sandbox.db_path()).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600, "the restored store is private");

    let (daemon, base) = start_daemon(&sandbox, "serve-2.log");
    for (name, (version, secret)) in &in_backup {
        assert_eq!(read_secret(&base, &api_key, name), (*version, secret.clone()), "{name}");
    }
    assert!(daemon.terminate(Duration::from_secs(30)).success());
}

#[test]
fn restore_refuses_while_a_command_or_a_foreign_connection_has_the_store_open_and_changes_nothing() {
    let sandbox = sandbox_with_tokens(&["ci"]);
    let backup = sandbox.path().join("b.db");
    sandbox.fails(&["backup", "--to", backup.to_str().unwrap()], "", 0);
    sandbox.add_project_token("added-after-backup");
    let live = versions(&sandbox.db_path());
    let backup_arg = backup.to_str().unwrap();

    // Any tokenwarden process with the store open (here a Store, as `token rotate` holds one)
    // keeps a restore from replacing the file under its connections.
    let url = DatabaseUrl::Sqlite(sandbox.db_path());
    let open = tokenwarden::store::Store::open_existing(&url).unwrap();
    one_line_exit(&sandbox, &["restore", "--from", backup_arg], 1, "another tokenwarden command has it open");
    assert_eq!(versions(&sandbox.db_path()), live, "refused while a command has the store open");
    drop(open);

    // A connection from outside tokenwarden (an sqlite3 shell) in a read transaction: the log
    // cannot be folded in, so nothing is replaced and the log is not removed.
    let mut foreign = diesel::SqliteConnection::establish(sandbox.db_path().to_str().unwrap()).unwrap();
    foreign.batch_execute("BEGIN; SELECT count(*) FROM tokens;").unwrap();
    one_line_exit(&sandbox, &["restore", "--from", backup_arg], 1, "another process has it open");
    foreign.batch_execute("COMMIT;").unwrap();
    drop(foreign);
    assert_eq!(versions(&sandbox.db_path()), live, "refused while another process reads the store");

    sandbox.fails(&["restore", "--from", backup_arg], "", 0);
    assert!(!versions(&sandbox.db_path()).contains_key("added-after-backup"), "restored once nothing holds it");
}
