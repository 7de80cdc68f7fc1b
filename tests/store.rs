//! The store against a real database: migrations, and a round trip through every table.
//!
//! Each check is a function taking a database URL so the same code runs on every backend.

use chrono::{DurationRound, TimeDelta, Utc};
use diesel::connection::SimpleConnection;
use diesel::prelude::*;
use secrecy::{ExposeSecret, SecretString};
use tokenwarden::config::{DatabaseUrl, HumanDuration};
use tokenwarden::crypto::{Cipher, CryptoError, MasterKey};
use tokenwarden::domain::{
    ClientName, ClientRole, PolicyOverrides, ProviderKind, ProviderName, TokenKind, TokenName, TokenState,
};
use tokenwarden::store::clients::{self, NewClient};
use tokenwarden::store::providers::{self, NewProvider};
use tokenwarden::store::tokens::{self, NewToken, SecretField};
use tokenwarden::store::{
    DbConnection, Store, StoreError, answer_journal, audit, connect, lease_restore, meta, rotation, schema,
};

mod common;

use common::postgres::TestSchema;

/// What a fixture's database lives in; dropped (and with it the database) after the test.
enum Place {
    SqliteDir(#[allow(dead_code)] tempfile::TempDir),
    PostgresSchema(#[allow(dead_code)] TestSchema),
}

struct Fixture {
    _place: Place,
    url: DatabaseUrl,
    conn: DbConnection,
    cipher: Cipher,
    /// The master key `cipher` seals with.
    master: MasterKey,
}

fn sqlite_fixture() -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let url = DatabaseUrl::Sqlite(dir.path().join("store.db"));
    Store::open(&url).unwrap();
    let conn = connect(&url).unwrap();
    let master = MasterKey::generate();
    Fixture { _place: Place::SqliteDir(dir), url, conn, cipher: Cipher::new(&master), master }
}

/// A migrated schema of its own on the test PostgreSQL server, or `None` when the PostgreSQL
/// tests are not configured (see tests/common/postgres.rs).
fn postgres_fixture() -> Option<Fixture> {
    let schema = TestSchema::create()?;
    let url = schema.url.clone();
    Store::open(&url).unwrap();
    let conn = connect(&url).unwrap();
    let master = MasterKey::generate();
    Some(Fixture { _place: Place::PostgresSchema(schema), url, conn, cipher: Cipher::new(&master), master })
}

fn gitlab_provider(conn: &mut DbConnection, cipher: &Cipher, name: &str) {
    let new = NewProvider {
        name: ProviderName::new(name).unwrap(),
        kind: ProviderKind::Gitlab,
        url: Some("https://gitlab.example.com".into()),
        token_url: None,
        client_id: Some("app".into()),
        client_secret: Some(SecretString::from("app-secret")),
        redirect_uri: Some("https://app.example/callback".into()),
    };
    providers::insert(conn, cipher, &new, "test", Utc::now()).unwrap();
}

fn new_token(name: &str, kind: TokenKind, secret: Option<&str>, refresh: Option<&str>) -> NewToken {
    let now = Utc::now().duration_trunc(TimeDelta::microseconds(1)).unwrap();
    NewToken {
        name: TokenName::new(name).unwrap(),
        provider: ProviderName::new("gitlab").unwrap(),
        kind,
        resource: (kind == TokenKind::GitlabProjectAccessToken).then(|| "group%2Fproject".to_owned()),
        secret: secret.map(SecretString::from),
        refresh_token: refresh.map(SecretString::from),
        policy: PolicyOverrides {
            lifetime: Some(HumanDuration::days(60)),
            rotate_before: None,
            rotate_at_fraction: Some(0.5),
        },
        external_id: Some("1234".into()),
        issued_at: Some(now),
        expires_at: Some(now + TimeDelta::days(60)),
        next_rotation_at: Some(now + TimeDelta::days(30)),
        scopes: None,
    }
}

fn migrations_apply_once_and_rerun_harmlessly(url: &DatabaseUrl, tree: &str) {
    Store::open(url).unwrap();
    Store::open(url).unwrap();
    let mut conn = connect(url).unwrap();
    let applied: i64 = diesel::sql_query("SELECT COUNT(*) AS n FROM __diesel_schema_migrations")
        .get_result::<Count>(&mut conn)
        .unwrap()
        .n;
    let shipped = std::fs::read_dir(format!("{}/migrations/{tree}", env!("CARGO_MANIFEST_DIR"))).unwrap().count();
    assert_eq!(applied, i64::try_from(shipped).unwrap());
}

#[derive(QueryableByName)]
struct Count {
    #[diesel(sql_type = diesel::sql_types::BigInt)]
    n: i64,
}

#[test]
fn sqlite_migrations_apply_once_and_rerun_harmlessly() {
    let dir = tempfile::tempdir().unwrap();
    migrations_apply_once_and_rerun_harmlessly(&DatabaseUrl::Sqlite(dir.path().join("m.db")), "sqlite");
}

#[test]
fn postgres_migrations_apply_once_and_rerun_harmlessly() {
    let Some(schema) = TestSchema::create() else { return };
    migrations_apply_once_and_rerun_harmlessly(&schema.url, "postgres");
}

#[test]
fn postgres_migrations_started_by_three_replicas_at_once_are_applied_once() {
    let Some(schema) = TestSchema::create() else { return };
    let start = std::sync::Arc::new(std::sync::Barrier::new(3));
    let replicas: Vec<_> = (0..3)
        .map(|_| {
            let (url, start) = (schema.url.clone(), start.clone());
            std::thread::spawn(move || {
                start.wait();
                Store::open(&url).map(|_| ())
            })
        })
        .collect();
    for replica in replicas {
        replica.join().unwrap().expect("every replica starts");
    }
    migrations_apply_once_and_rerun_harmlessly(&schema.url, "postgres");
}

#[tokio::test(flavor = "current_thread")]
async fn sqlite_store_runs_queries_off_the_async_threads() {
    let f = sqlite_fixture();
    let store = Store::open(&f.url).unwrap();
    let runtime_thread = std::thread::current().id();
    // The query waits for a message that only the runtime's one thread can send: if it ran on
    // that thread, the sender could never run and the query would time out.
    let (tx, rx) = std::sync::mpsc::channel::<()>();
    let query = store.run(move |conn| {
        let thread = std::thread::current().id();
        let released = rx.recv_timeout(std::time::Duration::from_secs(5)).is_ok();
        Ok((thread, released, tokens::list(conn)?.len()))
    });
    let release = async move {
        tokio::task::yield_now().await;
        tx.send(()).unwrap();
    };
    let (result, ()) = tokio::join!(query, release);
    let (query_thread, released, tokens) = result.unwrap();
    assert_ne!(query_thread, runtime_thread, "the query ran on the async thread");
    assert!(released, "the async thread was blocked while the query ran");
    assert_eq!(tokens, 0);
}

#[derive(QueryableByName)]
struct JournalMode {
    #[diesel(sql_type = diesel::sql_types::Text)]
    journal_mode: String,
}

#[derive(QueryableByName)]
struct BusyTimeout {
    #[diesel(sql_type = diesel::sql_types::Integer)]
    timeout: i32,
}

#[derive(QueryableByName)]
struct ForeignKeys {
    #[diesel(sql_type = diesel::sql_types::Integer)]
    foreign_keys: i32,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_pooled_sqlite_connection_uses_wal_a_busy_timeout_and_foreign_keys() {
    let f = sqlite_fixture();
    let store = Store::open(&f.url).unwrap();
    let size = usize::try_from(tokenwarden::store::POOL_SIZE).unwrap();
    // Each query holds its connection until all of them hold one: the pool must hand out
    // every connection it has, and each is checked.
    let barrier = std::sync::Arc::new(std::sync::Barrier::new(size));
    let mut queries = tokio::task::JoinSet::new();
    for _ in 0..size {
        let (barrier, store) = (barrier.clone(), store.clone());
        queries.spawn(async move {
            store
                .run(move |conn| {
                    barrier.wait();
                    let mode = diesel::sql_query("PRAGMA journal_mode").get_result::<JournalMode>(conn)?.journal_mode;
                    let timeout = diesel::sql_query("PRAGMA busy_timeout").get_result::<BusyTimeout>(conn)?.timeout;
                    let foreign_keys =
                        diesel::sql_query("PRAGMA foreign_keys").get_result::<ForeignKeys>(conn)?.foreign_keys;
                    Ok((mode, timeout, foreign_keys))
                })
                .await
        });
    }
    let settings = queries.join_all().await;
    assert_eq!(settings.len(), size);
    let expected_timeout = i32::try_from(tokenwarden::store::SQLITE_BUSY_TIMEOUT_MS).unwrap();
    for setting in settings {
        let (mode, timeout, foreign_keys) = setting.unwrap();
        assert_eq!(mode.to_lowercase(), "wal");
        assert!(timeout > 0);
        assert_eq!(timeout, expected_timeout);
        assert_eq!(foreign_keys, 1);
    }
}

#[test]
fn debug_output_of_structs_holding_secrets_is_redacted() {
    let token = new_token("t", TokenKind::GitlabOauth, Some("access-plain"), Some("refresh-plain"));
    let provider = NewProvider {
        name: ProviderName::new("p").unwrap(),
        kind: ProviderKind::Oauth2,
        url: None,
        token_url: Some("https://auth.example/token".into()),
        client_id: Some("id".into()),
        client_secret: Some(SecretString::from("client-plain")),
        redirect_uri: None,
    };
    let mut f = sqlite_fixture();
    let created = clients::insert(
        &mut f.conn,
        &f.cipher,
        &NewClient { name: ClientName::new("c").unwrap(), role: ClientRole::Reader, grants: vec![], webhook_url: None },
        Some(SecretString::from("whsec_plain")),
        "test",
        Utc::now(),
    )
    .unwrap();
    let shown = format!("{token:?} {provider:?} {created:?} {:?}", f.cipher);
    for plain in ["access-plain", "refresh-plain", "client-plain", "whsec_plain", created.api_key.expose()] {
        assert!(!shown.contains(plain), "{plain} leaked into Debug output");
    }
    assert!(shown.contains("[REDACTED]"));
}

/// Records audit rows about `name` as a token, a provider and a client, `hours_ago` hours back.
fn audit_rows_named(conn: &mut DbConnection, name: &str, hours_ago: i64) {
    let at = Utc::now() - TimeDelta::hours(hours_ago);
    for kind in ["token", "provider", "client"] {
        let target = audit::AuditTarget { kind, name };
        audit::record(conn, at, "test", &format!("{kind}.add"), target, None).unwrap();
    }
}

#[derive(QueryableByName)]
struct PlanStep {
    #[diesel(sql_type = diesel::sql_types::Text)]
    detail: String,
}

/// SQLite's plan for `sql` (`EXPLAIN QUERY PLAN`), its steps joined by ` | `.
fn sqlite_plan(conn: &mut DbConnection, sql: &str) -> String {
    let steps = diesel::sql_query(format!("EXPLAIN QUERY PLAN {sql}")).load::<PlanStep>(conn).unwrap();
    steps.into_iter().map(|step| step.detail).collect::<Vec<_>>().join(" | ")
}

/// The SQL of the statements `run` sends, captured through Diesel's instrumentation.
fn statements_of(conn: &mut DbConnection, run: impl FnOnce(&mut DbConnection)) -> Vec<String> {
    let captured = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let sink = captured.clone();
    conn.set_instrumentation(move |event: diesel::connection::InstrumentationEvent<'_>| {
        if let diesel::connection::InstrumentationEvent::StartQuery { query, .. } = event {
            let text = query.to_string();
            sink.lock().unwrap().push(text.split(" -- binds:").next().unwrap_or_default().to_owned());
        }
    });
    run(conn);
    conn.set_instrumentation(None::<fn(diesel::connection::InstrumentationEvent<'_>)>);
    captured.lock().unwrap().clone()
}

#[test]
fn audit_search_reads_an_index_backwards_instead_of_loading_or_sorting_the_table() {
    let mut f = sqlite_fixture();
    let since = Some(Utc::now() - TimeDelta::days(7));
    let queries = [
        (audit::AuditQuery { token: Some("t".into()), since, limit: Some(50) }, "audit_log_target"),
        (audit::AuditQuery { token: None, since, limit: Some(50) }, "audit_log_time"),
    ];
    for (query, index) in queries {
        let statements = statements_of(&mut f.conn, |conn| {
            audit::search(conn, &query).unwrap();
        });
        assert_eq!(statements.len(), 1, "{statements:?}");
        assert!(statements[0].contains("LIMIT"), "{statements:?}");
        let plan = sqlite_plan(&mut f.conn, &statements[0]);
        assert!(plan.contains(&format!("USING INDEX {index}")), "{query:?}: {plan}");
        assert!(!plan.contains("TEMP B-TREE FOR ORDER BY"), "no sort of every matching row: {query:?}: {plan}");
    }
}

/// A reader client named `name` granted the tokens in `grants`.
fn reader_client(f: &mut Fixture, name: &str, grants: &[&str]) -> String {
    let new = NewClient {
        name: ClientName::new(name).unwrap(),
        role: ClientRole::Reader,
        grants: grants.iter().map(|g| TokenName::new(*g).unwrap()).collect(),
        webhook_url: None,
    };
    clients::insert(&mut f.conn, &f.cipher, &new, None, "test", Utc::now()).unwrap().api_key.expose().to_owned()
}

/// Writes each test once and runs it on both backends: `sqlite::NAME` on a fresh SQLite file,
/// `postgres::NAME` in a fresh schema on the test PostgreSQL server (see tests/common/postgres.rs).
macro_rules! both_backends {
    ($(fn $name:ident($f:ident) $body:block)*) => {
        mod sqlite {
            use super::*;
            $(#[test] fn $name() { let mut $f = sqlite_fixture(); $body })*
        }
        mod postgres {
            use super::*;
            $(#[test] fn $name() { let Some(mut $f) = postgres_fixture() else { return }; $body })*
        }
    };
}

both_backends! {
    fn a_rotated_api_key_works_beside_the_new_one_until_the_overlap_ends(f) {
        let old = reader_client(&mut f, "ci", &[]);
        let name = ClientName::new("ci").unwrap();
        let new = clients::rotate_key(&mut f.conn, &name, chrono::TimeDelta::hours(1), "test", Utc::now()).unwrap();
        let new = new.expose().to_owned();
        assert_ne!(new, old);
        for key in [&old, &new] {
            let client = clients::authenticate_key(&mut f.conn, key).unwrap().expect("both keys work in the overlap");
            assert_eq!(client.name, name);
        }
        let mut wrong = old.clone();
        wrong.pop();
        wrong.push(if old.ends_with('A') { 'B' } else { 'A' });
        assert!(clients::authenticate_key(&mut f.conn, &wrong).unwrap().is_none(), "the old lookup with a wrong secret");
        // The overlap ends.
        diesel::update(schema::clients::table)
            .set(schema::clients::previous_key_expires_at.eq(Some(Utc::now().naive_utc() - chrono::TimeDelta::seconds(1))))
            .execute(&mut f.conn)
            .unwrap();
        assert!(clients::authenticate_key(&mut f.conn, &old).unwrap().is_none(), "refused once the overlap is over");
        assert!(clients::authenticate_key(&mut f.conn, &new).unwrap().is_some());
        // Without an overlap the key in use stops at once, and a key from an earlier overlap too.
        let newest = clients::rotate_key(&mut f.conn, &name, chrono::TimeDelta::zero(), "test", Utc::now()).unwrap();
        assert!(clients::authenticate_key(&mut f.conn, &new).unwrap().is_none());
        assert!(clients::authenticate_key(&mut f.conn, newest.expose()).unwrap().is_some());
        let unknown = ClientName::new("nobody").unwrap();
        let err = clients::rotate_key(&mut f.conn, &unknown, chrono::TimeDelta::zero(), "test", Utc::now()).unwrap_err();
        assert!(matches!(err, StoreError::NotFound { .. }), "{err}");
    }

    fn round_trip_providers(f) {
        gitlab_provider(&mut f.conn, &f.cipher, "gitlab");
        let list = providers::list(&mut f.conn).unwrap();
        assert_eq!(list.len(), 1);
        let provider = &list[0];
        assert_eq!(provider.name.as_str(), "gitlab");
        assert_eq!(provider.kind, ProviderKind::Gitlab);
        assert_eq!(provider.url.as_deref(), Some("https://gitlab.example.com"));
        assert_eq!(provider.client_id.as_deref(), Some("app"));
        assert_eq!(provider.redirect_uri.as_deref(), Some("https://app.example/callback"));
        assert!(provider.has_client_secret);
        let row = providers::find_row(&mut f.conn, &provider.name).unwrap();
        let opened = f.cipher.open(providers::client_secret_context(&row.id), row.client_secret.as_ref().unwrap()).unwrap();
        assert_eq!(opened.expose_secret(), "app-secret");
    }

    fn round_trip_tokens_and_history(f) {
        gitlab_provider(&mut f.conn, &f.cipher, "gitlab");
        let new = new_token("project", TokenKind::GitlabProjectAccessToken, Some("glpat-abc"), None);
        let token = tokens::insert(&mut f.conn, &f.cipher, &new, "test", Utc::now()).unwrap();
        assert_eq!(token.name, new.name);
        assert_eq!(token.kind, TokenKind::GitlabProjectAccessToken);
        assert_eq!(token.project.as_deref(), Some("group%2Fproject"));
        assert_eq!(token.state, TokenState::Active);
        assert_eq!(token.version, 1);
        assert_eq!(token.external_id.as_deref(), Some("1234"));
        assert_eq!(token.issued_at, new.issued_at);
        assert_eq!(token.expires_at, new.expires_at);
        assert_eq!(token.next_rotation_at, new.next_rotation_at);
        assert_eq!(token.policy_overrides, new.policy);
        let found = tokens::find(&mut f.conn, &new.name).unwrap();
        assert_eq!(found.expires_at, new.expires_at);
        let secret = tokens::read_secret(&mut f.conn, &f.cipher, &new.name, SecretField::Secret).unwrap();
        assert_eq!(secret.unwrap().expose_secret(), "glpat-abc");
        assert!(tokens::read_secret(&mut f.conn, &f.cipher, &new.name, SecretField::RefreshToken).unwrap().is_none());

        let grant = new_token("grant", TokenKind::GitlabOauth, None, Some("refresh-1"));
        tokens::insert(&mut f.conn, &f.cipher, &grant, "test", Utc::now()).unwrap();
        let refresh = tokens::read_secret(&mut f.conn, &f.cipher, &grant.name, SecretField::RefreshToken).unwrap();
        assert_eq!(refresh.unwrap().expose_secret(), "refresh-1");

        let history = tokens::history(&mut f.conn, &new.name).unwrap();
        assert_eq!(history.len(), 1);
        assert_eq!((history[0].version, history[0].event.as_str(), history[0].actor.as_str()), (1, "added", "test"));
        assert_eq!(history[0].expires_at, new.expires_at);

        let names: Vec<String> = tokens::list(&mut f.conn).unwrap().iter().map(|t| t.name.to_string()).collect();
        assert_eq!(names, ["grant", "project"]);
    }

    fn pause_resume_and_remove_change_state_and_audit(f) {
        gitlab_provider(&mut f.conn, &f.cipher, "gitlab");
        let new = new_token("t", TokenKind::GitlabPersonalAccessToken, Some("glpat-x"), None);
        tokens::insert(&mut f.conn, &f.cipher, &new, "test", Utc::now()).unwrap();
        assert_eq!(tokens::pause(&mut f.conn, &new.name, "ops", Utc::now()).unwrap().state, TokenState::Paused);
        assert_eq!(tokens::resume(&mut f.conn, &new.name, "ops", Utc::now()).unwrap().state, TokenState::Active);
        tokens::remove(&mut f.conn, &new.name, false, "ops", Utc::now()).unwrap();
        assert!(matches!(tokens::find(&mut f.conn, &new.name), Err(StoreError::NotFound { .. })));
        let actions: Vec<String> = audit::list(&mut f.conn, Some("t")).unwrap().into_iter().map(|r| r.action).collect();
        assert_eq!(actions, ["token.remove", "token.resume", "token.pause", "token.add"]);
    }

    fn resuming_a_token_that_expired_while_paused_marks_it_expired(f) {
        gitlab_provider(&mut f.conn, &f.cipher, "gitlab");
        let mut new = new_token("t", TokenKind::GitlabPersonalAccessToken, Some("glpat-x"), None);
        new.expires_at = Some(Utc::now() - TimeDelta::hours(1));
        tokens::insert(&mut f.conn, &f.cipher, &new, "test", Utc::now()).unwrap();
        tokens::pause(&mut f.conn, &new.name, "ops", Utc::now()).unwrap();
        assert_eq!(tokens::resume(&mut f.conn, &new.name, "ops", Utc::now()).unwrap().state, TokenState::Expired);
    }

    fn a_rotating_token_cannot_be_paused_or_removed(f) {
        gitlab_provider(&mut f.conn, &f.cipher, "gitlab");
        let new = new_token("t", TokenKind::GitlabPersonalAccessToken, Some("glpat-x"), None);
        tokens::insert(&mut f.conn, &f.cipher, &new, "test", Utc::now()).unwrap();
        diesel::update(schema::tokens::table).set(schema::tokens::state.eq("rotating")).execute(&mut f.conn).unwrap();
        assert!(matches!(tokens::pause(&mut f.conn, &new.name, "ops", Utc::now()), Err(StoreError::Conflict(_))));
        assert!(matches!(tokens::remove(&mut f.conn, &new.name, true, "ops", Utc::now()), Err(StoreError::Conflict(_))));
        assert_eq!(tokens::find(&mut f.conn, &new.name).unwrap().state, TokenState::Rotating);
    }

    fn ciphertext_copied_to_another_row_fails_to_open(f) {
        gitlab_provider(&mut f.conn, &f.cipher, "gitlab");
        for (name, secret) in [("a", "glpat-aaa"), ("b", "glpat-bbb")] {
            let new = new_token(name, TokenKind::GitlabPersonalAccessToken, Some(secret), None);
            tokens::insert(&mut f.conn, &f.cipher, &new, "test", Utc::now()).unwrap();
        }
        use schema::tokens::dsl;
        let sealed_a: Option<Vec<u8>> =
            dsl::tokens.filter(dsl::name.eq("a")).select(dsl::secret).first(&mut f.conn).unwrap();
        diesel::update(dsl::tokens.filter(dsl::name.eq("b"))).set(dsl::secret.eq(sealed_a)).execute(&mut f.conn).unwrap();
        let err =
            tokens::read_secret(&mut f.conn, &f.cipher, &TokenName::new("b").unwrap(), SecretField::Secret).unwrap_err();
        assert!(matches!(err, StoreError::Crypto(CryptoError::Tampered { .. })), "{err}");
        let refresh_from_secret: Option<Vec<u8>> =
            dsl::tokens.filter(dsl::name.eq("a")).select(dsl::secret).first(&mut f.conn).unwrap();
        diesel::update(dsl::tokens.filter(dsl::name.eq("a")))
            .set(dsl::refresh_token.eq(refresh_from_secret))
            .execute(&mut f.conn)
            .unwrap();
        let err = tokens::read_secret(&mut f.conn, &f.cipher, &TokenName::new("a").unwrap(), SecretField::RefreshToken)
            .unwrap_err();
        assert!(matches!(err, StoreError::Crypto(CryptoError::Tampered { .. })), "{err}");
    }

    fn round_trip_clients_and_grants(f) {
        gitlab_provider(&mut f.conn, &f.cipher, "gitlab");
        for name in ["a", "b"] {
            let token = new_token(name, TokenKind::GitlabPersonalAccessToken, Some("glpat-x"), None);
            tokens::insert(&mut f.conn, &f.cipher, &token, "test", Utc::now()).unwrap();
        }
        let new = NewClient {
            name: ClientName::new("ci").unwrap(),
            role: ClientRole::Reader,
            grants: vec![TokenName::new("b").unwrap(), TokenName::new("a").unwrap()],
            webhook_url: Some("https://ci.example/hook".into()),
        };
        let created =
            clients::insert(&mut f.conn, &f.cipher, &new, Some(SecretString::from("whsec_x")), "test", Utc::now()).unwrap();
        let list = clients::list(&mut f.conn).unwrap();
        assert_eq!(list.len(), 1);
        assert_eq!(list[0].name, new.name);
        assert_eq!(list[0].role, ClientRole::Reader);
        assert_eq!(list[0].grants, ["a", "b"]);
        assert_eq!(list[0].webhook_url.as_deref(), Some("https://ci.example/hook"));

        let key = created.api_key.expose().to_owned();
        let authenticated = clients::authenticate(&mut f.conn, &key).unwrap().expect("key authenticates");
        assert_eq!(authenticated.name, new.name);
        let mut wrong = key.clone();
        wrong.pop();
        wrong.push(if key.ends_with('A') { 'B' } else { 'A' });
        assert!(clients::authenticate(&mut f.conn, &wrong).unwrap().is_none());
        assert!(clients::authenticate(&mut f.conn, "garbage").unwrap().is_none());

        let sealed: Option<Vec<u8>> =
            schema::clients::table.select(schema::clients::webhook_secret).first(&mut f.conn).unwrap();
        let opened = f.cipher.open(clients::webhook_secret_context(&created.client.id), &sealed.unwrap()).unwrap();
        assert_eq!(opened.expose_secret(), "whsec_x");

        clients::remove(&mut f.conn, &new.name, "test", Utc::now()).unwrap();
        assert!(clients::list(&mut f.conn).unwrap().is_empty());
        let grants: i64 = schema::client_grants::table.count().get_result(&mut f.conn).unwrap();
        assert_eq!(grants, 0, "grants go with their client");
    }

    fn round_trip_outbox(f) {
        let created = clients::insert(
            &mut f.conn,
            &f.cipher,
            &NewClient {
                name: ClientName::new("hooked").unwrap(),
                role: ClientRole::Reader,
                grants: vec![],
                webhook_url: Some("https://x.example".into()),
            },
            None,
            "test",
            Utc::now(),
        )
        .unwrap();
        use schema::outbox::dsl;
        let now = Utc::now().naive_utc();
        diesel::insert_into(dsl::outbox)
            .values((
                dsl::id.eq("delivery-1"),
                dsl::client_id.eq(&created.client.id),
                dsl::event.eq("token.rotated"),
                dsl::token_name.eq("t"),
                dsl::payload.eq("{}"),
                dsl::created_at.eq(now),
                dsl::next_attempt_at.eq(now),
            ))
            .execute(&mut f.conn)
            .unwrap();
        let (id, attempts, delivered): (String, i32, Option<chrono::NaiveDateTime>) =
            dsl::outbox.select((dsl::id, dsl::attempts, dsl::delivered_at)).first(&mut f.conn).unwrap();
        assert_eq!((id.as_str(), attempts, delivered), ("delivery-1", 0, None));
    }

    fn master_key_check_is_recorded_then_enforced(f) {
        assert_eq!(meta::sealing_key_id(&mut f.conn).unwrap(), None);
        meta::verify_or_record_key(&mut f.conn, &f.cipher).unwrap();
        assert_eq!(meta::sealing_key_id(&mut f.conn).unwrap(), Some(f.cipher.key_id()));
        meta::verify_or_record_key(&mut f.conn, &f.cipher).unwrap();
        let other = Cipher::new(&MasterKey::generate());
        let err = meta::verify_or_record_key(&mut f.conn, &other).unwrap_err();
        assert!(matches!(err, StoreError::Crypto(CryptoError::WrongKey { .. })), "{err}");
        assert_eq!(f.url.default_master_key_file().is_some(), matches!(f.url, DatabaseUrl::Sqlite(_)));
    }

    fn audit_search_for_a_token_ignores_providers_and_clients_of_the_same_name(f) {
        audit_rows_named(&mut f.conn, "shared", 1);
        audit_rows_named(&mut f.conn, "other", 1);
        let query = audit::AuditQuery { token: Some("shared".into()), ..Default::default() };
        let rows = audit::search(&mut f.conn, &query).unwrap();
        let found: Vec<(&str, &str)> = rows.iter().map(|r| (r.target_kind.as_str(), r.target_name.as_str())).collect();
        assert_eq!(found, [("token", "shared")]);
    }

    fn audit_search_keeps_rows_since_the_given_time_newest_first_up_to_the_limit(f) {
        for hours_ago in [30, 3, 2, 1] {
            audit_rows_named(&mut f.conn, &format!("t{hours_ago}"), hours_ago);
        }
        let since = Some(Utc::now() - TimeDelta::hours(24));
        let recent = audit::search(&mut f.conn, &audit::AuditQuery { since, ..Default::default() }).unwrap();
        assert_eq!(recent.len(), 9, "three rows for each of the three recent names");
        assert!(recent.iter().all(|r| r.target_name != "t30"));
        assert!(recent.windows(2).all(|w| w[0].occurred_at >= w[1].occurred_at), "newest first");

        let query = audit::AuditQuery { token: Some("t2".into()), since, limit: Some(5) };
        assert_eq!(audit::search(&mut f.conn, &query).unwrap().len(), 1);
        let newest = audit::search(&mut f.conn, &audit::AuditQuery { limit: Some(4), ..Default::default() }).unwrap();
        let names: Vec<&str> = newest.iter().map(|r| r.target_name.as_str()).collect();
        assert_eq!(names, ["t1", "t1", "t1", "t2"]);
    }

    fn removing_a_granted_token_needs_the_operators_word_and_names_the_clients(f) {
        gitlab_provider(&mut f.conn, &f.cipher, "gitlab");
        let t = new_token("t", TokenKind::GitlabPersonalAccessToken, Some("glpat-t"), None);
        tokens::insert(&mut f.conn, &f.cipher, &t, "test", Utc::now()).unwrap();
        reader_client(&mut f, "ci", &["t"]);
        reader_client(&mut f, "billing", &["t"]);
        let refused = tokens::remove(&mut f.conn, &t.name, false, "ops", Utc::now()).unwrap_err();
        assert!(matches!(&refused, StoreError::StillGranted { clients, .. } if clients == "billing, ci"), "{refused:?}");
        assert!(refused.to_string().contains("--yes"), "{refused}");
        assert_eq!(tokens::find(&mut f.conn, &t.name).unwrap().version, 1, "nothing was removed");
        assert_eq!(tokens::remove(&mut f.conn, &t.name, true, "ops", Utc::now()).unwrap(), ["billing", "ci"]);
    }

    fn a_grant_of_a_token_that_does_not_exist_is_refused_and_nothing_is_written(f) {
        gitlab_provider(&mut f.conn, &f.cipher, "gitlab");
        let t = new_token("t", TokenKind::GitlabPersonalAccessToken, Some("glpat-t"), None);
        tokens::insert(&mut f.conn, &f.cipher, &t, "test", Utc::now()).unwrap();
        let new = NewClient {
            name: ClientName::new("ci").unwrap(),
            role: ClientRole::Reader,
            grants: vec![TokenName::new("t").unwrap(), TokenName::new("later").unwrap()],
            webhook_url: None,
        };
        let err = clients::insert(&mut f.conn, &f.cipher, &new, None, "test", Utc::now()).unwrap_err();
        assert!(matches!(&err, StoreError::InvalidInput(m) if m.contains("'later'")), "{err:?}");
        assert!(clients::list(&mut f.conn).unwrap().is_empty(), "no client, no grant");
    }

    fn the_grants_migration_keeps_grants_of_existing_tokens_by_identity_and_drops_dangling_names(f) {
        gitlab_provider(&mut f.conn, &f.cipher, "gitlab");
        let t = new_token("t", TokenKind::GitlabPersonalAccessToken, Some("glpat-t"), None);
        tokens::insert(&mut f.conn, &f.cipher, &t, "test", Utc::now()).unwrap();
        reader_client(&mut f, "ci", &["t"]);
        // Back to name-based grants, as an older tokenwarden left them, with a dangling one.
        let (tree, migration) = match &f.conn {
            DbConnection::Sqlite(_) => ("sqlite", "2026-12-03-000041_grants_by_token_id"),
            DbConnection::Postgres(_) => ("postgres", "2026-12-03-000041_grants_by_token_id"),
        };
        let dir = format!("{}/migrations/{tree}/{migration}", env!("CARGO_MANIFEST_DIR"));
        f.conn.batch_execute(&std::fs::read_to_string(format!("{dir}/down.sql")).unwrap()).unwrap();
        f.conn.batch_execute("DELETE FROM __diesel_schema_migrations WHERE version = '20261203000041'").unwrap();
        f.conn
            .batch_execute("INSERT INTO client_grants (client_id, token_name) SELECT id, 'later' FROM clients")
            .unwrap();
        Store::open(&f.url).unwrap();
        let listed = clients::list(&mut f.conn).unwrap();
        assert_eq!(listed[0].grants, ["t"], "the existing token's grant survives; the dangling name is gone");
        let t_again = TokenName::new("t").unwrap();
        assert_eq!(tokens::remove(&mut f.conn, &t_again, true, "ops", Utc::now()).unwrap(), ["ci"]);
    }

    fn client_update_grants_and_revokes_reads_at_once_and_refuses_a_partly_bad_change_whole(f) {
        use tokenwarden::store::client_update::{self, ClientChange, WebhookChange};
        gitlab_provider(&mut f.conn, &f.cipher, "gitlab");
        for name in ["a", "b"] {
            let token = new_token(name, TokenKind::GitlabPersonalAccessToken, Some("glpat-x"), None);
            tokens::insert(&mut f.conn, &f.cipher, &token, "test", Utc::now()).unwrap();
        }
        let key = reader_client(&mut f, "ci", &["a"]);
        let reader = clients::authenticate_key(&mut f.conn, &key).unwrap().unwrap();
        let name = |n: &str| TokenName::new(n).unwrap();
        let readable = |conn: &mut DbConnection, token: &str| {
            tokens::read_current_as(conn, &f.cipher, &name(token), tokens::ReadAs::Reader { client_id: &reader.id }).is_ok()
        };
        let client = ClientName::new("ci").unwrap();
        let change = |grant: &[&str], revoke: &[&str]| ClientChange {
            grant: grant.iter().map(|n| name(n)).collect(),
            revoke: revoke.iter().map(|n| name(n)).collect(),
            webhook: WebhookChange::Keep,
        };
        let secret = || SecretString::from("whsec_unused");
        let refused = client_update::update(&mut f.conn, &f.cipher, &client, &change(&["b"], &["zzz"]), secret(), "ops", Utc::now());
        assert!(matches!(refused, Err(StoreError::InvalidInput(_))), "{refused:?}");
        assert!(!readable(&mut f.conn, "b"), "the refused change granted nothing");
        let updated = client_update::update(&mut f.conn, &f.cipher, &client, &change(&["b"], &["a"]), secret(), "ops", Utc::now()).unwrap();
        assert_eq!(updated.client.grants, ["b"]);
        assert!(readable(&mut f.conn, "b") && !readable(&mut f.conn, "a"));
    }

    fn removing_a_token_revokes_its_grants_so_a_new_token_of_that_name_is_not_readable(f) {
        gitlab_provider(&mut f.conn, &f.cipher, "gitlab");
        let old = new_token("t", TokenKind::GitlabPersonalAccessToken, Some("glpat-old"), None);
        tokens::insert(&mut f.conn, &f.cipher, &old, "test", Utc::now()).unwrap();
        let keep = new_token("keep", TokenKind::GitlabPersonalAccessToken, Some("glpat-keep"), None);
        tokens::insert(&mut f.conn, &f.cipher, &keep, "test", Utc::now()).unwrap();
        let key = reader_client(&mut f, "ci", &["t", "keep"]);
        assert_eq!(tokens::remove(&mut f.conn, &old.name, true, "ops", Utc::now()).unwrap(), ["ci"]);

        let again = new_token("t", TokenKind::GitlabPersonalAccessToken, Some("glpat-new"), None);
        tokens::insert(&mut f.conn, &f.cipher, &again, "test", Utc::now()).unwrap();
        let client = clients::authenticate(&mut f.conn, &key).unwrap().expect("the key still authenticates");
        assert_eq!(client.grants, ["keep"], "the grant to the removed token is gone, other grants stay");
        let rows = audit::search(&mut f.conn, &audit::AuditQuery { token: Some("t".into()), ..Default::default() });
        assert!(rows.unwrap().iter().any(|r| r.detail.as_deref() == Some("version=1 grants_removed=1 clients=ci")));
        let reader = clients::authenticate_key(&mut f.conn, &key).unwrap().unwrap();
        let read = tokens::read_current_as(&mut f.conn, &f.cipher, &old.name, tokens::ReadAs::Reader { client_id: &reader.id });
        assert!(matches!(read, Err(StoreError::NotFound { .. })), "the new 't' was never granted: {read:?}");
    }

    fn the_secret_read_path_binds_no_limit_so_its_cached_statements_are_not_prepared_again(f) {
        // The bundled SQLite plans with the value bound to a `LIMIT ?` (diesel's `.first()`), which
        // marks the cached statement expired whenever that parameter is bound again: every call
        // would parse and plan it anew. Unique look-ups need no LIMIT.
        gitlab_provider(&mut f.conn, &f.cipher, "gitlab");
        for (name, secret) in [("t", "glpat-t"), ("u", "glpat-u")] {
            let token = new_token(name, TokenKind::GitlabPersonalAccessToken, Some(secret), None);
            tokens::insert(&mut f.conn, &f.cipher, &token, "test", Utc::now()).unwrap();
        }
        let key = reader_client(&mut f, "ci", &["t"]);
        let name = |n: &str| TokenName::new(n).unwrap();
        let mut found = None;
        let statements = statements_of(&mut f.conn, |conn| {
            let client = clients::authenticate_key(conn, &key).unwrap().expect("the key authenticates");
            let reader = tokens::ReadAs::Reader { client_id: &client.id };
            let grants = (tokens::find_as(conn, &name("t"), reader).is_ok(), tokens::find_as(conn, &name("u"), reader).is_ok());
            let (read, secret) = tokens::read_current_as(conn, &f.cipher, &name("t"), reader).unwrap();
            let ungranted = tokens::read_current_as(conn, &f.cipher, &name("u"), reader);
            let (_, operator_reads) = tokens::read_current(conn, &f.cipher, &name("u")).unwrap();
            let missing = tokens::read_current(conn, &f.cipher, &name("missing"));
            let secrets = [secret, operator_reads].map(|s| s.map(|s| s.expose_secret().to_owned()));
            found = Some((grants, read.version, secrets, ungranted.err(), missing.err()));
        });
        let (grants, version, secrets, ungranted, missing) = found.unwrap();
        assert_eq!(grants, (true, false));
        assert_eq!((version, secrets), (1, [Some("glpat-t".to_owned()), Some("glpat-u".to_owned())]));
        assert!(matches!(ungranted, Some(StoreError::NotFound { .. })), "an ungranted token is not found: {ungranted:?}");
        assert!(matches!(missing, Some(StoreError::NotFound { .. })), "{missing:?}");
        assert_eq!(statements.len(), 7, "{statements:?}");
        for statement in &statements {
            assert!(!statement.to_uppercase().contains("LIMIT"), "a bound LIMIT is re-prepared every call: {statement}");
        }
    }

    fn a_batch_claim_takes_the_most_urgent_due_tokens_up_to_the_room_and_leases_them(f) {
        due_tokens(&mut f, 5);
        let rooms = room(&mut f.conn, 3);
        let lease = TimeDelta::seconds(30);
        let claims = claim_due(&mut f.conn, &rooms, "replica-a", lease, Utc::now()).unwrap();
        let names: Vec<&str> = claims.claimed.iter().map(|c| c.token.name.as_str()).collect();
        assert_eq!(names, ["t0", "t1", "t2"], "the three most overdue, most urgent first");
        for claim in &claims.claimed {
            let token = tokens::find(&mut f.conn, &claim.token.name).unwrap();
            assert_eq!(token.state, TokenState::Rotating);
            assert_eq!(token.lease_owner.as_deref(), Some("replica-a"));
        }
        let again = claim_due(&mut f.conn, &rooms, "replica-b", lease, Utc::now()).unwrap();
        let names: Vec<&str> = again.claimed.iter().map(|c| c.token.name.as_str()).collect();
        assert_eq!(names, ["t3", "t4"], "leased tokens are not claimed again");
    }

    fn claims_ahead_are_the_less_urgent_ones_under_the_longer_lease_and_go_back_untouched(f) {
        due_tokens(&mut f, 5);
        let mut rooms = room(&mut f.conn, 2);
        rooms[0].ahead = 2;
        let (lease, ahead_lease, now) = (TimeDelta::seconds(30), TimeDelta::seconds(60), Utc::now());
        let claims = rotation::claim_due(&mut f.conn, &rooms, "replica-a", lease, ahead_lease, now).unwrap();
        let names = |claims: &[rotation::Claim]| -> Vec<String> { claims.iter().map(|c| c.token.name.to_string()).collect() };
        assert_eq!(names(&claims.claimed), ["t0", "t1"], "the most urgent go to the free workers");
        assert_eq!(names(&claims.ahead), ["t2", "t3"], "the next ones wait for a worker");
        assert!(claims.claimed.iter().all(|c| c.lease_expires_at == now + lease));
        assert!(claims.ahead.iter().all(|c| c.lease_expires_at == now + ahead_lease));

        let unstarted: Vec<_> = claims.ahead.iter().map(|c| (c.lease(), c.before.clone())).collect();
        let restored = lease_restore::put_back_unstarted(&mut f.conn, &unstarted, now).unwrap();
        assert_eq!(restored, 2);
        for name in ["t2", "t3"] {
            let token = tokens::find(&mut f.conn, &TokenName::new(name).unwrap()).unwrap();
            assert_eq!((token.state, token.lease_owner), (TokenState::Active, None), "{name}");
        }
        assert_eq!(lease_restore::put_back_unstarted(&mut f.conn, &unstarted, now).unwrap(), 0, "only while held");
        let rooms = room(&mut f.conn, 5);
        let again = claim_due(&mut f.conn, &rooms, "replica-b", lease, now).unwrap();
        assert_eq!(names(&again.claimed), ["t2", "t3", "t4"], "put back, they are claimed again");
    }

    fn an_answer_journaled_by_a_process_that_died_is_committed_when_its_lease_runs_out(f) {
        due_tokens(&mut f, 2);
        let rooms = room(&mut f.conn, 2);
        let start = Utc::now();
        let claims = claim_due(&mut f.conn, &rooms, "dead", TimeDelta::seconds(5), start).unwrap();
        let answers: Vec<rotation::Answer> =
            claims.claimed.iter().map(|claim| journaled_answer(&f.cipher, claim, start)).collect();
        answer_journal::write(&mut f.conn, &answers, start).unwrap();
        assert_eq!(journal_rows(&mut f.conn), 2);
        // The process dies here, before the full commit. While the lease lasts nothing changes.
        let early = claim_due(&mut f.conn, &rooms, "next", TimeDelta::seconds(5), start).unwrap();
        assert!(early.claimed.is_empty());
        assert_eq!(tokens::find(&mut f.conn, &TokenName::new("t0").unwrap()).unwrap().state, TokenState::Rotating);

        let later = start + TimeDelta::seconds(6);
        let recovered = claim_due(&mut f.conn, &rooms, "next", TimeDelta::seconds(5), later).unwrap();
        assert!(recovered.claimed.is_empty(), "committed from the journal, not claimed for a probe or a retry");
        for name in ["t0", "t1"] {
            let name = TokenName::new(name).unwrap();
            let (token, secret) = tokens::read_current(&mut f.conn, &f.cipher, &name).unwrap();
            assert_eq!((token.state, token.version), (TokenState::Active, 2), "{name}");
            assert_eq!(secret.unwrap().expose_secret(), format!("glpat-new-{name}"));
            assert!(token.next_rotation_at.unwrap() > later);
        }
        assert_eq!(journal_rows(&mut f.conn), 0, "the journal is emptied by the commit");
    }

    fn key_rotation_reseals_journaled_answers_so_they_are_committed_under_the_new_key(f) {
        due_tokens(&mut f, 1);
        let rooms = room(&mut f.conn, 1);
        let start = Utc::now();
        let claims = claim_due(&mut f.conn, &rooms, "dead", TimeDelta::seconds(5), start).unwrap();
        let answer = journaled_answer(&f.cipher, &claims.claimed[0], start);
        answer_journal::write(&mut f.conn, &[answer], start).unwrap();
        let new = MasterKey::generate();
        let keyring = Cipher::new(&new).with_retired(std::slice::from_ref(&f.master));
        let (_, status) = tokenwarden::store::rekey::reseal_all(&mut f.conn, &keyring).unwrap();
        assert_eq!(status.left_under_other_keys(keyring.key_id()), 0, "{status:?}");
        let recovered = claim_due(&mut f.conn, &rooms, "next", TimeDelta::seconds(5), start + TimeDelta::seconds(6));
        assert!(recovered.unwrap().claimed.is_empty());
        let new_key_alone = Cipher::new(&new);
        let name = TokenName::new("t0").unwrap();
        let (token, secret) = tokens::read_current(&mut f.conn, &new_key_alone, &name).unwrap();
        assert_eq!((token.version, secret.unwrap().expose_secret()), (2, "glpat-new-t0"));
    }

    fn an_unreadable_journal_row_is_dropped_and_the_token_recovered_as_after_an_unknown_outcome(f) {
        due_tokens(&mut f, 1);
        let rooms = room(&mut f.conn, 1);
        let start = Utc::now();
        let claimed = claim_due(&mut f.conn, &rooms, "dead", TimeDelta::seconds(5), start).unwrap();
        let answer = journaled_answer(&f.cipher, &claimed.claimed[0], start);
        answer_journal::write(&mut f.conn, &[answer], start).unwrap();
        diesel::update(schema::answer_journal::table)
            .set(schema::answer_journal::answer.eq("{not json"))
            .execute(&mut f.conn)
            .unwrap();
        let later = start + TimeDelta::seconds(6);
        let next = claim_due(&mut f.conn, &rooms, "next", TimeDelta::seconds(5), later).unwrap();
        assert_eq!(next.claimed.len(), 1, "claimed again, not stuck behind the row");
        assert!(next.claimed[0].recovery.is_some(), "recovered as after an unknown outcome");
        assert_eq!(journal_rows(&mut f.conn), 0);
    }

    fn a_journaled_answer_of_an_attempt_that_lost_its_lease_is_discarded(f) {
        due_tokens(&mut f, 1);
        let rooms = room(&mut f.conn, 1);
        let start = Utc::now();
        let first = claim_due(&mut f.conn, &rooms, "slow", TimeDelta::seconds(5), start).unwrap();
        let stale = journaled_answer(&f.cipher, &first.claimed[0], start);
        // The lease ran out and another worker took the token (its own attempt, no journal yet).
        let later = start + TimeDelta::seconds(6);
        let second = claim_due(&mut f.conn, &rooms, "next", TimeDelta::seconds(5), later).unwrap();
        assert_eq!(second.claimed.len(), 1);
        // The slow worker's answer arrives now: journaled, then refused by the fence.
        answer_journal::write(&mut f.conn, std::slice::from_ref(&stale), later).unwrap();
        let results = rotation::commit_successes(&mut f.conn, &[stale]).unwrap();
        assert!(matches!(results[0], Err(StoreError::LeaseLost { .. })), "{results:?}");
        assert_eq!(journal_rows(&mut f.conn), 0, "a refused answer leaves no journal row behind");
        let token = tokens::find(&mut f.conn, &TokenName::new("t0").unwrap()).unwrap();
        assert_eq!((token.state, token.version, token.lease_owner.as_deref()), (TokenState::Rotating, 1, Some("next")));
    }

    fn gauges_count_every_state_and_export_a_bounded_set_of_expiries_most_urgent_first(f) {
        gitlab_provider(&mut f.conn, &f.cipher, "gitlab");
        for (name, days) in [("a", 10), ("b", 20), ("c", 30), ("d", 40)] {
            let mut token = new_token(name, TokenKind::GitlabPersonalAccessToken, Some("glpat-x"), None);
            token.expires_at = Some(Utc::now() + TimeDelta::days(days));
            tokens::insert(&mut f.conn, &f.cipher, &token, "test", Utc::now()).unwrap();
        }
        tokens::pause(&mut f.conn, &TokenName::new("d").unwrap(), "ops", Utc::now()).unwrap();
        let gauges = tokens::gauges(&mut f.conn, 2).unwrap();
        let mut per_state = gauges.per_state.clone();
        per_state.sort();
        assert_eq!(per_state, [("active".to_owned(), 3), ("paused".to_owned(), 1)]);
        let names: Vec<&str> = gauges.expiries.iter().map(|(name, _)| name.as_str()).collect();
        assert_eq!(names, ["d", "a"], "the paused token first, then the soonest to expire, two in all");
    }
}

/// Tokens named `t0`, `t1`, … of provider `gitlab`, due `count` seconds ago down to one.
fn due_tokens(f: &mut Fixture, count: usize) {
    gitlab_provider(&mut f.conn, &f.cipher, "gitlab");
    for i in 0..count {
        let mut token = new_token(&format!("t{i}"), TokenKind::GitlabPersonalAccessToken, Some("glpat-x"), None);
        let seconds_ago = i64::try_from(count - i).unwrap();
        token.next_rotation_at = Some(Utc::now() - TimeDelta::seconds(seconds_ago));
        tokens::insert(&mut f.conn, &f.cipher, &token, "test", Utc::now()).unwrap();
    }
}

/// A provider answer for `claim` whose new secret is `glpat-new-NAME`.
fn journaled_answer(cipher: &Cipher, claim: &rotation::Claim, now: chrono::DateTime<Utc>) -> rotation::Answer {
    let lease = claim.lease();
    let secret = SecretString::from(format!("glpat-new-{}", lease.token_name));
    let sealed = cipher.try_seal(tokens::secret_context(&lease.token_id, SecretField::Secret), &secret).unwrap();
    let success = rotation::Success {
        secret: sealed,
        refresh_token: None,
        expires_at: Some(now + TimeDelta::days(60)),
        issued_at: now,
        external_id: Some("5678".into()),
        next_rotation_at: Some(now + TimeDelta::days(30)),
        refresh_token_rotates: None,
        scope: None,
        username: None,
        retire: None,
    };
    rotation::Answer { lease, success, actor: "scheduler".into(), now, authorized: None, origin: Default::default() }
}

fn journal_rows(conn: &mut DbConnection) -> i64 {
    schema::answer_journal::table.count().get_result(conn).unwrap()
}

/// A batch claim that takes nothing ahead of free workers.
fn claim_due(
    conn: &mut DbConnection,
    rooms: &[rotation::ProviderRoom],
    owner: &str,
    lease: TimeDelta,
    now: chrono::DateTime<Utc>,
) -> Result<rotation::DueClaims, StoreError> {
    rotation::claim_due(conn, rooms, owner, lease, lease, now)
}

fn room(conn: &mut DbConnection, room: usize) -> Vec<rotation::ProviderRoom> {
    let provider = providers::find_row(conn, &ProviderName::new("gitlab").unwrap()).unwrap();
    vec![rotation::ProviderRoom { provider_id: provider.id, room, ahead: 0 }]
}

#[test]
fn postgres_a_batch_claim_skips_rows_another_replica_is_claiming_instead_of_waiting() {
    let Some(mut f) = postgres_fixture() else { return };
    due_tokens(&mut f, 4);
    let rooms = room(&mut f.conn, 4);
    // Another replica's claim transaction holds the two most urgent rows locked.
    let mut other = connect(&f.url).unwrap();
    other.batch_execute("BEGIN; SELECT id FROM tokens WHERE name IN ('t0', 't1') FOR NO KEY UPDATE").unwrap();
    let started = std::time::Instant::now();
    let claims = claim_due(&mut f.conn, &rooms, "replica-a", TimeDelta::seconds(30), Utc::now()).unwrap();
    let waited = started.elapsed();
    let names: Vec<&str> = claims.claimed.iter().map(|c| c.token.name.as_str()).collect();
    assert_eq!(names, ["t2", "t3"], "the locked rows are skipped");
    assert!(waited < std::time::Duration::from_secs(2), "the claim waited {waited:?} for the other replica's locks");
    other.batch_execute("ROLLBACK").unwrap();
    let rest = claim_due(&mut f.conn, &rooms, "replica-a", TimeDelta::seconds(30), Utc::now()).unwrap();
    let names: Vec<&str> = rest.claimed.iter().map(|c| c.token.name.as_str()).collect();
    assert_eq!(names, ["t0", "t1"], "released rows are claimable again");
}

#[test]
fn postgres_a_pause_racing_a_claim_is_run_again_and_refused_instead_of_overwriting_the_lease() {
    let Some(mut f) = postgres_fixture() else { return };
    due_tokens(&mut f, 1);
    let name = TokenName::new("t0").unwrap();
    // The pause reads the token as active inside its snapshot, then a claim commits on another
    // connection before the pause writes: REPEATABLE READ aborts the pause, which runs again,
    // sees the lease, and is refused; the claim's lease survives.
    let mut claimer = connect(&f.url).unwrap();
    let rooms = room(&mut f.conn, 1);
    let mut runs = 0;
    let result = f.conn.write_transaction(|conn| {
        runs += 1;
        let token = tokens::find(conn, &name)?;
        if runs == 1 {
            assert_eq!(token.state, TokenState::Active);
            let claims = claim_due(&mut claimer, &rooms, "replica-b", TimeDelta::seconds(30), Utc::now())?;
            assert_eq!(claims.claimed.len(), 1);
        }
        if token.state == TokenState::Rotating {
            return Err(StoreError::Conflict("rotating".into()));
        }
        diesel::update(schema::tokens::table.filter(schema::tokens::name.eq("t0")))
            .set(schema::tokens::state.eq("paused"))
            .execute(conn)?;
        Ok(())
    });
    assert!(matches!(result, Err(StoreError::Conflict(_))), "{result:?}");
    assert_eq!(runs, 2, "the conflicted transaction ran once more");
    let token = tokens::find(&mut f.conn, &name).unwrap();
    assert_eq!((token.state, token.lease_owner.as_deref()), (TokenState::Rotating, Some("replica-b")));
}

#[test]
fn postgres_a_job_lock_is_held_by_one_replica_at_a_time_and_freed_with_its_guard() {
    let Some(f) = postgres_fixture() else { return };
    use tokenwarden::store::job_lock::try_lock;
    // Advisory locks belong to the whole database, which other tests' schemas share: a job name
    // of this test's own.
    let job = format!("test-{}", uuid::Uuid::now_v7().simple());
    let first = try_lock(&f.url, &job).unwrap();
    assert!(first.is_some(), "a free lock is taken");
    assert!(try_lock(&f.url, &job).unwrap().is_none(), "a held lock is not taken twice");
    assert!(try_lock(&f.url, &format!("{job}-other")).unwrap().is_some(), "jobs do not share a lock");
    drop(first);
    assert!(try_lock(&f.url, &job).unwrap().is_some(), "dropping the guard frees the lock");
}

#[test]
fn postgres_a_change_committed_elsewhere_reaches_the_watch_within_a_second_and_only_once() {
    let Some(mut f) = postgres_fixture() else { return };
    gitlab_provider(&mut f.conn, &f.cipher, "gitlab");
    let store = Store::open(&f.url).unwrap();
    let mut watch = store.watch_changes().unwrap();
    assert!(watch.changed().unwrap(), "the first look always counts as a change");
    assert!(!watch.changed().unwrap(), "nothing was committed");
    // An audit row is not a change the scheduler cares about; a new token is.
    audit_rows_named(&mut f.conn, "quiet", 0);
    std::thread::sleep(std::time::Duration::from_millis(200));
    assert!(!watch.changed().unwrap(), "audit rows do not wake the schedulers");
    let token = new_token("t", TokenKind::GitlabPersonalAccessToken, Some("glpat-x"), None);
    tokens::insert(&mut f.conn, &f.cipher, &token, "test", Utc::now()).unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(1);
    while !watch.changed().unwrap() {
        assert!(std::time::Instant::now() < deadline, "the new token was not noticed within a second");
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    assert!(!watch.changed().unwrap(), "and that change is reported once");
}

#[test]
fn sqlite_claims_and_the_next_due_read_walk_their_partial_indexes_instead_of_the_table() {
    let mut f = sqlite_fixture();
    due_tokens(&mut f, 3);
    let rooms = room(&mut f.conn, 2);
    let long_ago = Utc::now() - TimeDelta::days(3650);
    let mut statements = statements_of(&mut f.conn, |conn| {
        claim_due(conn, &rooms, "test", TimeDelta::seconds(60), long_ago).unwrap();
    });
    statements.extend(statements_of(&mut f.conn, |conn| {
        rotation::due_by(conn, long_ago, 512, &[]).unwrap();
    }));
    let expectations = [
        ("`next_rotation_at` <= ?)) AND (`tokens`.`provider_id` = ?)", "tokens_due_provider"),
        ("`next_rotation_at` IS NULL)) AND (`tokens`.`provider_id` = ?)", "tokens_due_provider"),
        ("`lease_expires_at` <= ?)) AND (`tokens`.`provider_id` = ?)", "tokens_lease_provider"),
        ("`next_rotation_at` <= ?)) ORDER BY", "tokens_due"),
    ];
    for (needle, index) in expectations {
        let matching: Vec<&String> = statements.iter().filter(|s| s.contains(needle)).collect();
        assert_eq!(matching.len(), 1, "{needle}: {statements:#?}");
        let plan = sqlite_plan(&mut f.conn, matching[0]);
        assert!(plan.contains(&format!("USING INDEX {index} ")), "{needle}: {plan}");
        assert!(!plan.contains("TEMP B-TREE"), "{needle}: no sort: {plan}");
    }
}

/// Adds a personal access token `name` and claims it as a forced rotation would.
fn claim_new_token(f: &mut Fixture, name: &str) -> rotation::Lease {
    let new = new_token(name, TokenKind::GitlabPersonalAccessToken, Some("glpat-old"), None);
    tokens::insert(&mut f.conn, &f.cipher, &new, "test", Utc::now()).unwrap();
    let forced = rotation::ClaimMode::Forced { settle: TimeDelta::zero() };
    let token = TokenName::new(name).unwrap();
    match rotation::claim(&mut f.conn, &token, forced, "test-owner", TimeDelta::minutes(1), Utc::now()).unwrap() {
        rotation::ClaimResult::Claimed(claim) => claim.lease(),
        other => panic!("{name} was not claimed: {other:?}"),
    }
}

/// What storing a provider's new secret for `lease` commits.
fn answer_for(f: &Fixture, lease: &rotation::Lease) -> rotation::Answer {
    let now = Utc::now().duration_trunc(TimeDelta::microseconds(1)).unwrap();
    let context = tokens::secret_context(&lease.token_id, SecretField::Secret);
    let secret = f.cipher.try_seal(context, &SecretString::from(format!("glpat-new-{}", lease.token_name))).unwrap();
    let success = rotation::Success {
        secret,
        refresh_token: None,
        expires_at: Some(now + TimeDelta::days(30)),
        issued_at: now,
        external_id: Some(format!("id-{}", lease.token_name)),
        next_rotation_at: Some(now + TimeDelta::days(20)),
        refresh_token_rotates: None,
        scope: None,
        username: None,
        retire: None,
    };
    rotation::Answer {
        lease: lease.clone(),
        success,
        actor: "scheduler".into(),
        now,
        authorized: None,
        origin: Default::default(),
    }
}

/// The stored version and the versions in the history of token `name`.
fn versions(f: &mut Fixture, name: &str) -> (i64, Vec<i64>) {
    use schema::{token_history, tokens as t};
    let (id, version): (String, i64) =
        t::table.filter(t::name.eq(name)).select((t::id, t::version)).get_result(&mut f.conn).unwrap();
    let history = token_history::table
        .filter(token_history::token_id.eq(id))
        .order(token_history::version)
        .select(token_history::version)
        .load(&mut f.conn)
        .unwrap();
    (version, history)
}

/// Group commit of providers' answers (`rotation::commit_successes`).
mod group_commit {
    use super::*;

    both_backends! {
        fn a_group_commit_stores_every_answer_but_the_one_whose_lease_was_taken_over(f) {
        gitlab_provider(&mut f.conn, &f.cipher, "gitlab");
            let leases: Vec<_> = ["a", "b", "c"].iter().map(|name| claim_new_token(&mut f, name)).collect();
            // Another worker took token b over after its provider call started.
            diesel::update(schema::tokens::table.filter(schema::tokens::name.eq("b")))
                .set(schema::tokens::attempt_id.eq("another-attempt"))
                .execute(&mut f.conn)
                .unwrap();
            let answers: Vec<_> = leases.iter().map(|lease| answer_for(&f, lease)).collect();

            let results = rotation::commit_successes(&mut f.conn, &answers).unwrap();

            assert_eq!(results[0].as_ref().unwrap(), &2);
            assert!(matches!(results[1], Err(StoreError::LeaseLost { .. })), "{:?}", results[1]);
            assert_eq!(results[2].as_ref().unwrap(), &2);
            assert_eq!(versions(&mut f, "a"), (2, vec![1, 2]));
            assert_eq!(versions(&mut f, "b"), (1, vec![1]));
            assert_eq!(versions(&mut f, "c"), (2, vec![1, 2]));
            let (_, secret) = tokens::read_current(&mut f.conn, &f.cipher, &TokenName::new("c").unwrap()).unwrap();
            assert_eq!(secret.unwrap().expose_secret(), "glpat-new-c");
        }

        fn a_group_commit_keeps_the_other_answers_when_one_fails(f) {
        gitlab_provider(&mut f.conn, &f.cipher, "gitlab");
            let leases: Vec<_> = ["a", "b", "c"].iter().map(|name| claim_new_token(&mut f, name)).collect();
            // Token b's history already has a version 2 row: storing its answer breaks a constraint.
            diesel::sql_query(format!(
                "INSERT INTO token_history (id, token_id, version, event, actor, occurred_at) \
                 VALUES ('planted', '{}', 2, 'rotated', 'test', CURRENT_TIMESTAMP)",
                leases[1].token_id
            ))
            .execute(&mut f.conn)
            .unwrap();
            let answers: Vec<_> = leases.iter().map(|lease| answer_for(&f, lease)).collect();

            let results = rotation::commit_successes(&mut f.conn, &answers).unwrap();

            assert!(matches!(results[1], Err(StoreError::Query(_))), "{:?}", results[1]);
            assert_eq!(versions(&mut f, "a"), (2, vec![1, 2]));
            assert_eq!(versions(&mut f, "c"), (2, vec![1, 2]));
            // Nothing of b's answer was kept: still version 1, still leased to its attempt.
            let (version, _) = versions(&mut f, "b");
            assert_eq!(version, 1);
            let attempt: Option<String> = schema::tokens::table
                .filter(schema::tokens::name.eq("b"))
                .select(schema::tokens::attempt_id)
                .get_result(&mut f.conn)
                .unwrap();
            assert_eq!(attempt.as_deref(), Some(leases[1].attempt_id.as_str()));
        }
    }

    /// On PostgreSQL a concurrent change of one answer's row (an operator's `token update`)
    /// is a serialization conflict for that answer only: it is rolled back to its savepoint,
    /// the others commit, and it is stored in a transaction of its own afterwards.
    #[test]
    fn a_conflict_on_one_answer_is_retried_alone_and_every_answer_is_stored() {
        let Some(mut f) = postgres_fixture() else { return };
        gitlab_provider(&mut f.conn, &f.cipher, "gitlab");
        let leases: Vec<_> = ["a", "b", "c"].iter().map(|name| claim_new_token(&mut f, name)).collect();
        let answers: Vec<_> = leases.iter().map(|lease| answer_for(&f, lease)).collect();
        // Another connection holds b's row locked by an update it has not committed yet.
        let mut other = connect(&f.url).unwrap();
        other.batch_execute("BEGIN").unwrap();
        diesel::update(schema::tokens::table.filter(schema::tokens::name.eq("b")))
            .set(schema::tokens::rotate_before_seconds.eq(Some(3600)))
            .execute(&mut other)
            .unwrap();
        let url = f.url.clone();
        let batch = std::thread::spawn(move || {
            let mut conn = connect(&url).unwrap();
            rotation::commit_successes(&mut conn, &answers).unwrap()
        });
        // Once the batch waits on b's row lock, commit the change under it.
        let mut waiting_on_a_lock = || {
            diesel::select(diesel::dsl::sql::<diesel::sql_types::BigInt>(
                "(SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock' AND datname = current_database())",
            ))
            .get_result::<i64>(&mut f.conn)
            .unwrap()
        };
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while waiting_on_a_lock() == 0 {
            assert!(std::time::Instant::now() < deadline, "the batch never reached b's locked row");
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
        other.batch_execute("COMMIT").unwrap();

        let results = batch.join().unwrap();
        for (name, result) in ["a", "b", "c"].iter().zip(&results) {
            assert_eq!(result.as_ref().ok(), Some(&2), "{name}: {result:?}");
            assert_eq!(versions(&mut f, name), (2, vec![1, 2]), "{name}");
        }
        let margin: Option<i64> = schema::tokens::table
            .filter(schema::tokens::name.eq("b"))
            .select(schema::tokens::rotate_before_seconds)
            .get_result(&mut f.conn)
            .unwrap();
        assert_eq!(margin, Some(3600), "the operator's change is kept too");
    }
}
