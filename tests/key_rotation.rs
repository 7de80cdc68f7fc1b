//! `tokenwarden key rotate` and `key status`: every sealed value moves to the new master key
//! while daemons (two replicas on PostgreSQL) keep refreshing grants, the old key is not needed
//! afterwards, a rotation killed with SIGKILL goes on where it stopped, and bad input is one line
//! that changes nothing.

mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use chrono::Utc;
use common::TestGitlab;
use common::postgres::TestSchema;
use common::serve_process::ServeProcess;
use diesel::sql_types::{Binary, Text};
use diesel::{QueryableByName, RunQueryDsl};
use secrecy::SecretString;
use tokenwarden::config::{DatabaseUrl, HumanDuration};
use tokenwarden::crypto::{Cipher, MasterKey, SealContext};
use tokenwarden::domain::{ClientName, ClientRole, PolicyOverrides, ProviderKind, ProviderName, TokenKind, TokenName};
use tokenwarden::store::authorizations::{self, NewAuthorization};
use tokenwarden::store::clients::{self, NewClient};
use tokenwarden::store::providers::{self, NewProvider};
use tokenwarden::store::rekey::SEALED_COLUMNS;
use tokenwarden::store::tokens::{self, NewToken};
use tokenwarden::store::{DbConnection, Store, connect, meta};

/// Access tokens live 8 s and are refreshed 5 s before they expire: every grant is refreshed
/// every few seconds while a rotation runs.
const CONFIG: &str = r#"
[scheduler]
provider_timeout = "2s"
retry_base = "1s"
retry_max = "2s"

[policy]
oauth_rotate_before = "5s"
rotate_at_fraction = 0.9
"#;

/// A store sealed with an old master key, and a new key file beside it.
struct Keys {
    url_text: String,
    dir: PathBuf,
    old: PathBuf,
    new: PathBuf,
    conn: DbConnection,
}

impl Keys {
    /// Migrates the store at `url`, seals it with a fresh old key and writes a new key file.
    fn new(url: DatabaseUrl, url_text: String, dir: &Path) -> Self {
        let old = dir.join("old.key");
        let new = dir.join("new.key");
        let old_key = MasterKey::create(&old).unwrap();
        MasterKey::create(&new).unwrap();
        Store::open(&url).unwrap();
        let mut conn = connect(&url).unwrap();
        meta::verify_or_record_key(&mut conn, &Cipher::new(&old_key)).unwrap();
        Self { url_text, dir: dir.to_owned(), old, new, conn }
    }

    fn cipher(&self, path: &Path) -> Cipher {
        Cipher::new(&MasterKey::read(path).unwrap())
    }

    /// A provider with an OAuth client secret, `grants` OAuth grants, and a client whose webhook
    /// secret was rotated (so both its current and its previous secret are sealed): a value in
    /// every sealed column.
    fn seed(&mut self, client: (String, String), grants: impl Iterator<Item = String>) {
        let cipher = self.cipher(&self.old.clone());
        let now = Utc::now();
        let provider = NewProvider {
            name: ProviderName::new("gitlab").unwrap(),
            kind: ProviderKind::Gitlab,
            url: Some("http://127.0.0.1:9".into()),
            token_url: None,
            client_id: Some(client.0),
            client_secret: Some(SecretString::from(client.1)),
            redirect_uri: Some("https://app.example/callback".into()),
        };
        providers::insert(&mut self.conn, &cipher, &provider, "test", now).unwrap();
        for (i, refresh) in grants.enumerate() {
            let grant = NewToken {
                name: TokenName::new(format!("grant-{i:04}")).unwrap(),
                provider: ProviderName::new("gitlab").unwrap(),
                kind: TokenKind::GitlabOauth,
                resource: None,
                secret: None,
                refresh_token: Some(SecretString::from(refresh)),
                policy: PolicyOverrides {
                    lifetime: Some(HumanDuration::days(1)),
                    rotate_before: None,
                    rotate_at_fraction: None,
                },
                external_id: None,
                issued_at: None,
                expires_at: None,
                next_rotation_at: Some(now),
                scopes: None,
            };
            tokens::insert(&mut self.conn, &cipher, &grant, "test", now).unwrap();
        }
        // A consent link handed out and not used yet: its PKCE verifier is sealed too.
        let provider_id = providers::find_row(&mut self.conn, &provider.name).unwrap().id;
        let link = NewAuthorization {
            state_hash: "0".repeat(64),
            token_name: TokenName::new("pending-link".to_owned()).unwrap(),
            token_id: None,
            provider_id,
            kind: TokenKind::GitlabOauth,
            scopes: "api".into(),
            redirect_uri: "https://app.example/callback".into(),
            return_to: None,
            verifier: SecretString::from("v".repeat(43)),
            requested_by: "test".into(),
            expires_at: now + chrono::TimeDelta::minutes(10),
        };
        authorizations::insert(&mut self.conn, &cipher, &link, now).unwrap();
        let reader = NewClient {
            name: ClientName::new("consumer").unwrap(),
            role: ClientRole::Reader,
            grants: Vec::new(),
            webhook_url: Some("http://127.0.0.1:9/hook".into()),
        };
        let first = SecretString::from("whsec-first".to_owned());
        clients::insert(&mut self.conn, &cipher, &reader, Some(first), "test", now).unwrap();
        let second = SecretString::from("whsec-second".to_owned());
        let overlap = chrono::TimeDelta::hours(24);
        clients::rotate_webhook_secret(&mut self.conn, &cipher, &reader.name, &second, overlap, "test", now).unwrap();
    }

    /// Points the provider at the simulator (seeded with a placeholder URL).
    fn use_gitlab(&mut self, gitlab: &TestGitlab) {
        diesel::sql_query(format!("UPDATE providers SET url = '{}'", gitlab.sim.url()))
            .execute(&mut self.conn)
            .unwrap();
    }

    /// The environment of a process configured with `master` and the `retired` keys.
    fn env(&self, master: &Path, retired: &[&Path]) -> Vec<(&'static str, String)> {
        let mut env = vec![
            ("TOKENWARDEN_DATABASE_URL", self.url_text.clone()),
            ("TOKENWARDEN_MASTER_KEY_FILE", master.display().to_string()),
        ];
        if !retired.is_empty() {
            let paths: Vec<String> = retired.iter().map(|p| p.display().to_string()).collect();
            env.push(("TOKENWARDEN_RETIRED_MASTER_KEY_FILES", paths.join(":")));
        }
        env
    }

    /// `tokenwarden ARGS` with only `env`, not yet started.
    fn command(&self, env: &[(&str, String)], args: &[&str]) -> Command {
        let mut command = Command::new(assert_cmd::cargo::cargo_bin("tokenwarden"));
        command.current_dir(&self.dir).env_clear().envs(env.iter().map(|(k, v)| (*k, v.as_str()))).args(args);
        command
    }

    /// Runs `tokenwarden ARGS` with `env`; returns (exit code, stdout, stderr).
    fn run(&self, env: &[(&str, String)], args: &[&str]) -> (Option<i32>, String, String) {
        let out = self.command(env, args).stdin(Stdio::null()).output().unwrap();
        let text = |bytes: Vec<u8>| String::from_utf8(bytes).unwrap();
        (out.status.code(), text(out.stdout), text(out.stderr))
    }

    /// Every sealed value in the store: (table, column, row id, sealing key id).
    fn sealed_values(&mut self) -> Vec<SealedValue> {
        let mut values = Vec::new();
        for (table, column) in SEALED_COLUMNS {
            // The answer journal is keyed by its token (one row per token at most).
            let id = if *table == "answer_journal" { "token_id" } else { "id" };
            let sql = format!("SELECT {id} AS id, {column} AS value FROM {table} WHERE {column} IS NOT NULL");
            for row in diesel::sql_query(&sql).load::<RawSealed>(&mut self.conn).expect(&sql) {
                values.push(SealedValue { table, column, row: row.id, sealed: row.value });
            }
        }
        values
    }

    /// Sealed values by the key that sealed them.
    fn counts_by_key(&mut self) -> BTreeMap<String, usize> {
        let mut counts = BTreeMap::new();
        for value in self.sealed_values() {
            let key = Cipher::sealed_key_id(&value.sealed).map(|id| id.to_string()).unwrap_or_default();
            *counts.entry(key).or_default() += 1;
        }
        counts
    }
}

#[derive(QueryableByName)]
struct RawSealed {
    #[diesel(sql_type = Text)]
    id: String,
    #[diesel(sql_type = Binary)]
    value: Vec<u8>,
}

/// One sealed value as stored.
struct SealedValue {
    table: &'static str,
    column: &'static str,
    row: String,
    sealed: Vec<u8>,
}

impl SealedValue {
    /// Opens it with `cipher` (the previous webhook secret is sealed where the current one was).
    fn open_with(&self, cipher: &Cipher) -> Result<SecretString, tokenwarden::crypto::CryptoError> {
        let field = if self.column == "previous_webhook_secret" { "webhook_secret" } else { self.column };
        cipher.open(SealContext { table: self.table, row: &self.row, field }, &self.sealed)
    }
}

fn json(text: &str) -> serde_json::Value {
    serde_json::from_str(text).unwrap_or_else(|err| panic!("not JSON ({err}): {text}"))
}

/// Seeds grants at the simulator, runs `replicas` daemons with the new key as master and the old
/// one retired, rotates the master key under them, and checks that every value moved, that the
/// daemons kept refreshing, and that the new key alone then serves.
fn rotate_under_running_daemons(url: DatabaseUrl, url_text: String, replicas: usize) {
    let gitlab = TestGitlab::start();
    gitlab.sim.set_expires_in(Duration::from_secs(8));
    let dir = tempfile::tempdir().unwrap();
    let mut keys = Keys::new(url, url_text, dir.path());
    let (client_id, client_secret) = gitlab.sim.create_application();
    let grants: Vec<String> = (0..30).map(|_| gitlab.sim.create_grant(&client_id)).collect();
    keys.seed((client_id, client_secret), grants.into_iter());
    keys.use_gitlab(&gitlab);
    let config = dir.path().join("config.toml");
    std::fs::write(&config, CONFIG).unwrap();
    let (old, new) = (keys.old.clone(), keys.new.clone());
    let new_id = keys.cipher(&new).key_id().to_string();
    let old_id = keys.cipher(&old).key_id().to_string();
    let rotating = keys.env(&new, &[&old]);

    let mut daemons: Vec<(ServeProcess, PathBuf)> = (0..replicas)
        .map(|i| {
            let log = dir.path().join(format!("serve-{i}.log"));
            let mut daemon = ServeProcess::start(dir.path(), &config, &log, &rotating);
            daemon.wait_for_api(&log, Duration::from_secs(30));
            (daemon, log)
        })
        .collect();
    let logs = |daemons: &[(ServeProcess, PathBuf)]| -> String {
        daemons.iter().map(|(_, log)| std::fs::read_to_string(log).unwrap_or_default()).collect()
    };
    // Let the daemons refresh the grants once (sealing the new refresh tokens with the new key).
    let deadline = Instant::now() + Duration::from_secs(30);
    while gitlab.sim.stats().refreshes < 30 {
        assert!(Instant::now() < deadline, "the daemons did not refresh: {:?}\n{}", gitlab.sim.stats(), logs(&daemons));
        std::thread::sleep(Duration::from_millis(100));
    }
    let before = keys.counts_by_key();
    // The daemons re-seal what they refresh; the provider's client secret and the two webhook secrets stay
    // under the old key until the rotation moves them.
    let under_old = before.get(&old_id).copied().unwrap_or(0);
    assert!(under_old >= 3, "still under the old key before: {before:?}");

    let (code, stdout, stderr) =
        keys.run(&rotating, &["key", "rotate", "--new-key-file", new.to_str().unwrap(), "--json"]);
    assert_eq!(code, Some(0), "key rotate: {stderr}\n{}", logs(&daemons));
    let report = json(&stdout);
    assert_eq!(report["done"], true, "{report}");
    assert_eq!(report["left"], 0, "{report}");
    assert!(report["resealed"].as_u64().unwrap() >= 3, "{report}");

    // The daemons go on refreshing with the store re-sealed under them.
    let refreshed_at_rotation = gitlab.sim.stats().refreshes;
    let deadline = Instant::now() + Duration::from_secs(30);
    while gitlab.sim.stats().refreshes < refreshed_at_rotation + 30 {
        assert!(Instant::now() < deadline, "no refreshes after the key rotation\n{}", logs(&daemons));
        std::thread::sleep(Duration::from_millis(100));
    }
    let new_cipher = keys.cipher(&new);
    let values = keys.sealed_values();
    // The answer journal holds rows only for the moment between an answer and its commit.
    for (table, column) in SEALED_COLUMNS.iter().filter(|(table, _)| *table != "answer_journal") {
        assert!(values.iter().any(|v| v.table == *table && v.column == *column), "no value in {table}.{column}");
    }
    for value in &values {
        assert!(
            value.open_with(&new_cipher).is_ok(),
            "{}.{} of {} does not open with the new key alone",
            value.table,
            value.column,
            value.row
        );
    }
    let (code, stdout, _) = keys.run(&keys.env(&new, &[]), &["key", "status", "--json"]);
    assert_eq!(code, Some(0));
    let status = json(&stdout);
    assert_eq!(status["done"], true, "{status}");
    assert_eq!(status["status"]["key_check"], new_id, "{status}");
    for (daemon, _) in daemons.drain(..) {
        assert!(daemon.terminate(Duration::from_secs(10)).success());
    }
    let stats = gitlab.sim.stats();
    assert_eq!((stats.family_revocations, stats.refresh_token_reuses), (0, 0), "{stats:?}");

    // The old key file is gone: a daemon with the new key alone starts and refreshes.
    std::fs::remove_file(&old).unwrap();
    let log = dir.path().join("serve-new-only.log");
    let mut daemon = ServeProcess::start(dir.path(), &config, &log, &keys.env(&new, &[]));
    daemon.wait_for_api(&log, Duration::from_secs(30));
    let refreshed = gitlab.sim.stats().refreshes;
    let deadline = Instant::now() + Duration::from_secs(30);
    while gitlab.sim.stats().refreshes < refreshed + 10 {
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        assert!(Instant::now() < deadline, "no refreshes with the new key alone\n{text}");
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(daemon.terminate(Duration::from_secs(10)).success());
    let (code, stdout, stderr) = keys.run(&keys.env(&new, &[]), &["token", "list", "--json"]);
    assert_eq!(code, Some(0), "{stderr}");
    for token in json(&stdout).as_array().unwrap() {
        assert_ne!(token["state"], "needs_attention", "{token}");
    }
}

#[test]
fn key_rotate_reseals_every_secret_while_the_daemon_refreshes_on_sqlite() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("tokenwarden.db");
    rotate_under_running_daemons(DatabaseUrl::Sqlite(path.clone()), format!("sqlite://{}", path.display()), 1);
}

#[test]
fn key_rotate_reseals_every_secret_while_two_replicas_refresh_on_postgres() {
    let Some(schema) = TestSchema::create() else { return };
    rotate_under_running_daemons(schema.url.clone(), schema.url_text().to_owned(), 2);
}

#[test]
fn a_key_rotation_killed_anywhere_goes_on_where_it_stopped() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("tokenwarden.db");
    let mut keys = Keys::new(DatabaseUrl::Sqlite(path.clone()), format!("sqlite://{}", path.display()), dir.path());
    keys.seed(("app".into(), "app-secret".into()), (0..4000).map(|i| format!("refresh-{i}")));
    let (old, new) = (keys.old.clone(), keys.new.clone());
    let new_id = keys.cipher(&new).key_id().to_string();
    let keyring = Cipher::new(&MasterKey::read(&new).unwrap()).with_retired(&[MasterKey::read(&old).unwrap()]);
    let env = keys.env(&new, &[&old]);
    let total = keys.sealed_values().len();

    // Kill the rotation later and later until it finishes on its own; each kill must leave every
    // value readable, and the next run goes on from there.
    let mut delay = Duration::from_millis(20);
    let (mut kills, mut partial) = (0, 0);
    loop {
        let mut child = keys.command(&env, &["key", "rotate", "--new-key-file", new.to_str().unwrap()]);
        let mut child = child.stdin(Stdio::null()).stdout(Stdio::null()).stderr(Stdio::null()).spawn().unwrap();
        std::thread::sleep(delay);
        let finished = child.try_wait().unwrap().is_some_and(|status| status.success());
        if finished {
            break;
        }
        child.kill().unwrap();
        child.wait().unwrap();
        kills += 1;
        let values = keys.sealed_values();
        assert_eq!(values.len(), total, "a kill lost values");
        for value in &values {
            assert!(
                value.open_with(&keyring).is_ok(),
                "{}.{} of {} unreadable after a kill",
                value.table,
                value.column,
                value.row
            );
        }
        let counts = keys.counts_by_key();
        if counts.len() > 1 && counts.get(&new_id).is_some_and(|n| *n > 0) {
            partial += 1;
        }
        assert!(kills < 200, "the rotation never finished");
        delay += Duration::from_millis(15);
    }
    eprintln!("{kills} kills, {partial} of them in the middle of the re-sealing");
    assert!(partial >= 1, "no kill landed while values were being re-sealed ({kills} kills)");
    let counts = keys.counts_by_key();
    assert_eq!(counts, BTreeMap::from([(new_id.clone(), total)]));
    assert_eq!(meta::sealing_key_id(&mut keys.conn).unwrap().map(|id| id.to_string()), Some(new_id));
}

/// Runs a command that must fail with `code` and one line on standard error naming `expected`.
fn one_line(keys: &Keys, env: &[(&str, String)], args: &[&str], code: i32, expected: &str) {
    let (actual, _, stderr) = keys.run(env, args);
    assert_eq!(actual, Some(code), "{args:?}: {stderr}");
    assert_eq!(stderr.trim_end().lines().count(), 1, "{args:?}: {stderr}");
    assert!(stderr.contains(expected), "{args:?}: expected {expected:?} in {stderr}");
}

#[test]
fn bad_key_rotations_are_one_line_and_change_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("tokenwarden.db");
    let mut keys = Keys::new(DatabaseUrl::Sqlite(path.clone()), format!("sqlite://{}", path.display()), dir.path());
    keys.seed(("app".into(), "app-secret".into()), (0..3).map(|i| format!("refresh-{i}")));
    let (old, new) = (keys.old.clone(), keys.new.clone());
    let unchanged = keys.counts_by_key();
    let new_arg = new.to_str().unwrap();
    let old_arg = old.to_str().unwrap();

    one_line(&keys, &keys.env(&old, &[]), &["key", "rotate", "--new-key-file", old_arg], 2, "already sealed with");
    one_line(
        &keys,
        &keys.env(&old, &[]),
        &["key", "rotate", "--new-key-file", new_arg],
        2,
        "master_key_file must name the new key",
    );
    one_line(&keys, &keys.env(&new, &[]), &["key", "rotate", "--new-key-file", new_arg], 1, "retired_master_key_files");
    let missing = dir.path().join("missing.key");
    one_line(
        &keys,
        &keys.env(&new, &[&old]),
        &["key", "rotate", "--new-key-file", missing.to_str().unwrap()],
        2,
        "missing.key",
    );
    let garbage = dir.path().join("garbage.key");
    std::fs::write(&garbage, "not a key\n").unwrap();
    one_line(&keys, &keys.env(&new, &[&garbage]), &["key", "rotate", "--new-key-file", new_arg], 1, "garbage.key");
    one_line(
        &keys,
        &keys.env(&new, &[&old]),
        &["key", "rotate", "--new-key-file", garbage.to_str().unwrap()],
        2,
        "garbage.key",
    );

    // A second rotation while one runs (its lock held) is refused.
    let lock = std::fs::File::create(dir.path().join("tokenwarden.db.key-rotation.lock")).unwrap();
    lock.try_lock().unwrap();
    one_line(
        &keys,
        &keys.env(&new, &[&old]),
        &["key", "rotate", "--new-key-file", new_arg],
        1,
        "another key rotation is running",
    );
    assert_eq!(keys.counts_by_key(), unchanged, "a refused rotation changed nothing");
    drop(lock);

    let (code, _, stderr) = keys.run(&keys.env(&new, &[&old]), &["key", "rotate", "--new-key-file", new_arg]);
    assert_eq!(code, Some(0), "{stderr}");
    one_line(&keys, &keys.env(&new, &[]), &["key", "rotate", "--new-key-file", new_arg], 2, "already sealed with");
}
