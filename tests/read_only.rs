//! Read-only commands never create a store or a master key: a mistyped database URL or the
//! wrong working directory is an error (`check`: UNKNOWN), never an empty store reported OK.

mod common;

use common::Sandbox;
use common::postgres::TestSchema;
use diesel::connection::SimpleConnection;
use tokenwarden::config::DatabaseUrl;
use tokenwarden::store::connect;

/// The commands that only read (or change what exists) and must not create a store.
const NON_CREATING: &[&[&str]] = &[
    &["token", "list"],
    &["token", "list", "--json"],
    &["token", "show", "ci"],
    &["token", "history", "ci"],
    &["token", "pause", "ci"],
    &["token", "remove", "ci"],
    &["token", "rotate", "ci"],
    &["audit"],
    &["client", "list"],
    &["client", "remove", "dbt"],
    &["provider", "list"],
    &["provider", "remove", "gitlab"],
];

fn files_in(sandbox: &Sandbox) -> Vec<String> {
    common::files_in(sandbox.path())
}

#[test]
fn read_only_commands_on_a_missing_store_fail_with_one_line_and_create_nothing() {
    let sandbox = Sandbox::new();
    for args in NON_CREATING {
        let stderr = sandbox.fails(args, "", 2);
        assert_eq!(stderr.lines().count(), 1, "{args:?}: {stderr}");
        let expected = format!("tokenwarden: no tokenwarden store at {}", sandbox.database_url());
        assert!(stderr.starts_with(&expected), "{args:?}: {stderr}");
        assert_eq!(files_in(&sandbox), Vec::<String>::new(), "{args:?} created a file");
    }
    let out = sandbox.run(&["check"], "");
    assert_eq!(out.status.code(), Some(3));
    let stdout = String::from_utf8_lossy(&out.stdout);
    let expected = format!("TOKENWARDEN UNKNOWN - no tokenwarden store at {}", sandbox.database_url());
    assert!(stdout.starts_with(&expected), "{stdout}");
    assert_eq!(files_in(&sandbox), Vec::<String>::new(), "check created a file");
}

#[test]
fn an_empty_file_is_no_store_either() {
    let sandbox = Sandbox::new();
    std::fs::write(sandbox.db_path(), b"").unwrap();
    let stderr = sandbox.fails(&["token", "list"], "", 2);
    assert!(stderr.contains("no tokenwarden store at"), "{stderr}");
    assert!(!sandbox.key_path().exists());
}

#[test]
fn adding_commands_still_create_the_store_and_key() {
    let sandbox = Sandbox::new();
    sandbox.add_gitlab_provider();
    assert!(sandbox.db_path().exists() && sandbox.key_path().exists());
    assert_eq!(sandbox.ok(&["provider", "list", "--json"], "").matches("\"name\"").count(), 1);
}

#[test]
fn check_on_a_store_without_tokens_is_unknown_unless_allowed() {
    let sandbox = Sandbox::new();
    sandbox.add_gitlab_provider();
    let out = sandbox.run(&["check"], "");
    assert_eq!(out.status.code(), Some(3));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.starts_with("TOKENWARDEN UNKNOWN - the store at sqlite://"), "{stdout}");
    assert!(stdout.contains("tracks no token"), "{stdout}");
    let out = sandbox.run(&["check", "--allow-empty"], "");
    assert_eq!(out.status.code(), Some(0), "{}", String::from_utf8_lossy(&out.stdout));
}

/// Runs SQL on the sandbox's SQLite store.
fn sql(sandbox: &Sandbox, statements: &str) {
    let url = DatabaseUrl::parse(&sandbox.database_url()).unwrap();
    connect(&url).unwrap().batch_execute(statements).unwrap();
}

fn applied_migrations(sandbox: &Sandbox) -> i64 {
    use diesel::RunQueryDsl;
    let url = DatabaseUrl::parse(&sandbox.database_url()).unwrap();
    let mut conn = connect(&url).unwrap();
    diesel::select(diesel::dsl::sql::<diesel::sql_types::BigInt>("(SELECT count(*) FROM __diesel_schema_migrations)"))
        .get_result(&mut conn)
        .unwrap()
}

#[test]
fn an_older_schema_is_reported_not_migrated_by_read_only_commands_and_a_newer_one_is_refused() {
    let sandbox = Sandbox::new();
    sandbox.add_gitlab_provider();
    let all = applied_migrations(&sandbox);
    sql(
        &sandbox,
        "DELETE FROM __diesel_schema_migrations WHERE version = (SELECT max(version) FROM __diesel_schema_migrations)",
    );
    let stderr = sandbox.fails(&["token", "list"], "", 1);
    assert!(stderr.contains("has an older schema (1 migration(s) not applied)"), "{stderr}");
    assert!(stderr.contains("tokenwarden serve"), "says how to migrate: {stderr}");
    let out = sandbox.run(&["check", "--allow-empty"], "");
    assert_eq!(out.status.code(), Some(3));
    assert!(String::from_utf8_lossy(&out.stdout).starts_with("TOKENWARDEN UNKNOWN - the store at"));
    assert_eq!(applied_migrations(&sandbox), all - 1, "a read-only command does not migrate");
    // A backup before the upgrade is exactly when the schema is older: copied as it is.
    let copy = sandbox.path().join("before-upgrade.db");
    let stderr = sandbox.fails(&["backup", "--to", copy.to_str().unwrap()], "", 0);
    assert!(stderr.contains("backed up"), "{stderr}");
    assert!(stderr.contains("older schema"), "says the copy needs migrating: {stderr}");
    assert_eq!(applied_migrations(&sandbox), all - 1, "backup does not migrate either");

    sql(&sandbox, "INSERT INTO __diesel_schema_migrations (version) VALUES ('99991231000001')");
    let stderr = sandbox.fails(&["provider", "list"], "", 1);
    assert!(stderr.contains("written by a newer tokenwarden (schema 99991231000001)"), "{stderr}");
    let url = sandbox.gitlab_url();
    let stderr = sandbox.fails(&["provider", "add", "other", "--kind", "gitlab", "--url", &url], "", 1);
    assert!(stderr.contains("written by a newer tokenwarden"), "a migrating command refuses it too: {stderr}");
}

#[test]
fn check_on_a_postgres_database_without_tokenwarden_tables_is_unknown_with_the_password_hidden() {
    let Some(schema) = TestSchema::create() else { return };
    let mut url = url::Url::parse(schema.url_text()).unwrap();
    url.set_password(Some("hunter2")).unwrap();
    let sandbox = Sandbox::new();
    let out = sandbox.run(&["--database-url", url.as_str(), "check"], "");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(3), "{stdout}");
    assert!(stdout.starts_with("TOKENWARDEN UNKNOWN - no tokenwarden store at postgres://"), "{stdout}");
    assert!(!stdout.contains("hunter2"), "{stdout}");
    let stderr = sandbox.fails(&["--database-url", url.as_str(), "token", "list"], "", 2);
    assert!(stderr.contains("no tokenwarden store at postgres://") && !stderr.contains("hunter2"), "{stderr}");
    let mut conn = connect(&schema.url).unwrap();
    use diesel::RunQueryDsl;
    let tables: bool = diesel::select(diesel::dsl::sql::<diesel::sql_types::Bool>(
        "to_regclass('__diesel_schema_migrations') IS NULL AND to_regclass('tokens') IS NULL",
    ))
    .get_result(&mut conn)
    .unwrap();
    assert!(tables, "nothing was created in the database");
}
