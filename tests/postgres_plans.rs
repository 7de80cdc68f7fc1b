//! The claim and next-due statements the store sends to PostgreSQL use the partial indexes
//! `tokens_due` and `tokens_lease` even in a generic plan, the plan a prepared statement gets
//! after five executions (Diesel caches prepared statements per connection).
//!
//! The SQL is captured from `rotation::claim_due` and `rotation::due_by` through Diesel's
//! instrumentation, PREPAREd and explained with `plan_cache_mode = force_generic_plan` and
//! `enable_seqscan = off` (a few thousand rows legitimately favour a sequential scan; the
//! question is whether the index *can* serve the query). A control spells the states as a bound
//! array, the shape that cannot use a partial index in a generic plan, and must not find it:
//! so the check itself can tell a good shape from a bad one.
//!
//! Needs `TOKENWARDEN_TEST_POSTGRES_URL` (skips without it unless `TOKENWARDEN_REQUIRE_POSTGRES=1`).

mod common;

use std::sync::{Arc, Mutex, PoisonError};

use chrono::{DateTime, TimeDelta, Utc};
use diesel::connection::{Instrumentation, InstrumentationEvent, SimpleConnection};
use diesel::prelude::*;
use diesel::sql_types::Text;
use tokenwarden::store::rotation::{self, ProviderRoom};
use tokenwarden::store::{DbConnection, Store, connect};

use common::postgres::TestSchema;

/// Tokens seeded: enough for ANALYZE to give the planner real statistics.
const TOKENS: i64 = 5_000;
/// The states the scheduler rotates, as `rotation.rs` spells them (and the partial indexes).
const SCHEDULED_STATES: &str = "tokens.state IN ('active', 'retrying')";

/// One line of `EXPLAIN` output.
#[derive(QueryableByName)]
struct PlanLine {
    #[diesel(sql_type = Text, column_name = "QUERY PLAN")]
    line: String,
}

/// The statements `run` sends on `conn`, without their binds.
fn statements_of(conn: &mut DbConnection, run: impl FnOnce(&mut DbConnection)) -> Vec<String> {
    let captured = Arc::new(Mutex::new(Vec::new()));
    let sink = captured.clone();
    conn.set_instrumentation(move |event: InstrumentationEvent<'_>| {
        if let InstrumentationEvent::StartQuery { query, .. } = event {
            let text = query.to_string();
            let sql = text.split(" -- binds:").next().unwrap_or_default().to_owned();
            sink.lock().unwrap_or_else(PoisonError::into_inner).push(sql);
        }
    });
    run(conn);
    conn.set_instrumentation(None::<Box<dyn Instrumentation>>);
    captured.lock().unwrap_or_else(PoisonError::into_inner).clone()
}

/// The one statement of `statements` containing every one of `needles`.
fn pick(statements: &[String], needles: &[&str]) -> String {
    let found: Vec<&String> = statements.iter().filter(|s| needles.iter().all(|n| s.contains(n))).collect();
    assert_eq!(found.len(), 1, "exactly one statement contains {needles:?}: {statements:#?}");
    found[0].clone()
}

/// Whether `plan` scans `index` (an index, index-only or bitmap index scan).
fn uses(plan: &str, index: &str) -> bool {
    plan.contains(&format!("using {index} on ")) || plan.contains(&format!("Bitmap Index Scan on {index}"))
}

/// A timestamp literal.
fn ts(at: DateTime<Utc>) -> String {
    format!("TIMESTAMP '{}'", at.naive_utc().format("%Y-%m-%d %H:%M:%S%.6f"))
}

/// The generic plan of `sql` executed with `args`, with sequential scans off, as one string.
fn generic_plan(conn: &mut DbConnection, name: &str, sql: &str, args: &[String]) -> String {
    conn.batch_execute(&format!("PREPARE {name} AS {sql}")).unwrap_or_else(|err| panic!("PREPARE {sql}: {err}"));
    conn.batch_execute("SET enable_seqscan = off; SET plan_cache_mode = force_generic_plan").unwrap();
    let plan: Vec<PlanLine> = diesel::sql_query(format!("EXPLAIN (FORMAT TEXT) EXECUTE {name}({})", args.join(", ")))
        .load(conn)
        .unwrap_or_else(|err| panic!("EXPLAIN EXECUTE {name}: {err}"));
    conn.batch_execute(&format!("RESET enable_seqscan; RESET plan_cache_mode; DEALLOCATE {name}")).unwrap();
    let plan: Vec<String> = plan.into_iter().map(|line| line.line).collect();
    assert!(plan.iter().any(|line| line.contains("$1")), "a generic plan shows its parameters: {plan:#?}");
    plan.join("\n")
}

/// Two providers and [`TOKENS`] tokens in one statement: half due, a tenth rotating with leases
/// that ran out, the rest due in weeks, and a tenth without a plan (always due, so they belong to
/// `p2`, which the claims below leave alone); then ANALYZE.
fn seed(conn: &mut DbConnection) {
    conn.batch_execute(&format!(
        "INSERT INTO providers (id, name, kind, url, created_at, updated_at)
             VALUES ('p1', 'gitlab', 'gitlab', 'http://127.0.0.1:9', LOCALTIMESTAMP, LOCALTIMESTAMP),
                    ('p2', 'gitlab-2', 'gitlab', 'http://127.0.0.1:9', LOCALTIMESTAMP, LOCALTIMESTAMP);
         INSERT INTO tokens (id, name, provider_id, kind, state, issued_at, expires_at, next_rotation_at,
                             lease_owner, lease_expires_at, attempt_id, created_at, updated_at)
         SELECT 'id-' || i, 'tok-' || lpad(i::text, 6, '0'), CASE WHEN i % 10 = 2 THEN 'p2' ELSE 'p1' END,
                'gitlab-personal-access-token',
                CASE WHEN i % 10 = 1 THEN 'rotating' ELSE 'active' END,
                LOCALTIMESTAMP, LOCALTIMESTAMP + interval '30 days',
                CASE WHEN i % 10 = 2 THEN NULL
                     WHEN i % 2 = 0 THEN LOCALTIMESTAMP - interval '1 minute'
                     ELSE LOCALTIMESTAMP + interval '20 days' END,
                CASE WHEN i % 10 = 1 THEN 'dead-replica' END,
                CASE WHEN i % 10 = 1 THEN LOCALTIMESTAMP - interval '1 minute' END,
                CASE WHEN i % 10 = 1 THEN 'attempt-' || i END,
                LOCALTIMESTAMP, LOCALTIMESTAMP
         FROM generate_series(1, {TOKENS}) AS i;
         ANALYZE tokens; ANALYZE providers;"
    ))
    .expect("seed the tokens");
}

#[test]
fn claim_and_next_due_statements_use_the_partial_indexes_in_generic_plans() {
    let Some(schema) = TestSchema::create() else { return };
    drop(Store::open(&schema.url).expect("open the store (runs the migrations)"));
    let mut conn = connect(&schema.url).expect("connect");
    seed(&mut conn);

    // Claim for p1 as of long ago, so nothing is taken and no row changes; the SQL is the same.
    let long_ago = Utc::now() - TimeDelta::days(3650);
    let rooms = vec![ProviderRoom { provider_id: "p1".into(), room: 8, ahead: 0 }];
    let claim = statements_of(&mut conn, |c| {
        let claimed =
            rotation::claim_due(c, &rooms, "test", TimeDelta::seconds(60), TimeDelta::seconds(60), long_ago).unwrap();
        assert!(claimed.claimed.is_empty(), "nothing is due ten years ago");
    });
    let excluded = vec!["p0".to_owned()];
    let due = statements_of(&mut conn, |c| {
        rotation::due_by(c, long_ago, 512, &excluded).unwrap();
    });

    let now = ts(Utc::now());
    let claim_planned = pick(&claim, &["\"next_rotation_at\" <= $1", "FOR NO KEY UPDATE SKIP LOCKED"]);
    let claim_unplanned = pick(&claim, &["\"next_rotation_at\" IS NULL", "FOR NO KEY UPDATE SKIP LOCKED"]);
    let claim_stale = pick(&claim, &["\"lease_expires_at\" <= $1", "FOR NO KEY UPDATE SKIP LOCKED"]);
    let due_planned = pick(&due, &["\"next_rotation_at\" <= $1"]);
    let due_stale = pick(&due, &["\"lease_expires_at\" <= $1"]);
    assert!(claim_planned.contains(SCHEDULED_STATES), "the states are literal SQL: {claim_planned}");
    assert!(due_planned.contains("!= ALL($2)"), "excluded providers are one array parameter: {due_planned}");
    let unfiltered = statements_of(&mut conn, |c| {
        rotation::due_by(c, long_ago, 512, &[]).unwrap();
    });
    assert!(
        unfiltered.iter().all(|sql| !sql.contains("ALL(")),
        "without excluded providers there is no `<> ALL` to misestimate: {unfiltered:#?}"
    );
    let due_unfiltered = pick(&unfiltered, &["\"next_rotation_at\" <= $1"]);
    let plan = generic_plan(&mut conn, "due_unfiltered", &due_unfiltered, &[now.clone(), "512".into()]);
    assert!(
        uses(&plan, "tokens_due") && !plan.contains("Sort"),
        "the next-due read walks tokens_due in order:\n{plan}"
    );

    let (p1, limit, none) = ("'p1'".to_owned(), "8".to_owned(), "ARRAY['p0']".to_owned());
    // (name, statement, arguments, index it must scan, whether that index must also give the
    // order). The claims filter one provider by equality, so their generic plans walk the index
    // in order and stop after LIMIT rows. `due_by` excludes providers with `<> ALL($2)`, whose
    // generic selectivity PostgreSQL guesses from the number of distinct providers: with few of
    // them (two here) it expects almost nothing to pass and prefers a bitmap scan plus a sort, so
    // only the index is checked there (docs/BENCHMARKS.md, PostgreSQL section).
    let cases = [
        ("claim_planned", &claim_planned, vec![now.clone(), p1.clone(), limit.clone()], "tokens_due_provider", true),
        ("claim_unplanned", &claim_unplanned, vec![p1.clone(), limit.clone()], "tokens_due_provider", false),
        ("claim_stale", &claim_stale, vec![now.clone(), p1.clone(), limit.clone()], "tokens_lease", true),
        ("due_planned", &due_planned, vec![now.clone(), none.clone(), "512".into()], "tokens_due", false),
        ("due_stale", &due_stale, vec![now.clone(), none.clone(), "512".into()], "tokens_lease", false),
    ];
    for (name, sql, args, expected, ordered) in cases {
        let plan = generic_plan(&mut conn, name, sql, &args);
        assert!(uses(&plan, expected), "{name}: expected a scan of `{expected}` in the generic plan of\n{sql}\n{plan}");
        if ordered {
            assert!(!plan.contains("Sort"), "{name}: the index gives the order, no sort of every match:\n{plan}");
        }
    }

    // The control: the same claim with the states bound as an array cannot use the partial
    // index in a generic plan, and the check above would have failed for it.
    let bound = claim_planned.replace(SCHEDULED_STATES, "tokens.state = ANY($4)");
    let args = [now, p1, limit, "ARRAY['active', 'retrying']".to_owned()];
    let plan = generic_plan(&mut conn, "claim_bound_states", &bound, &args);
    assert!(!uses(&plan, "tokens_due"), "bound states cannot use the partial index:\n{plan}");
}
