//! `cargo bench --bench postgres`: the PostgreSQL backend at 1,000,000 tokens. Batch claims
//! (`rotation::claim_due`, `FOR NO KEY UPDATE SKIP LOCKED`) and commits (`Store::commit_answer`, the engine's group commit)
//! by 1, 2 and 3 "replicas" against an instant provider (no HTTP: a claim is committed at
//! once with a freshly sealed fake secret), the rotation lag of due tokens spread over a window,
//! the memory of real `tokenwarden serve` replicas on the same schema, the dead tuples all that
//! leaves, and `EXPLAIN (ANALYZE, BUFFERS)` of the store's claim and next-due queries, custom and
//! generic. It prints figures next to their targets and asserts nothing; `docs/BENCHMARKS.md`
//! (section "PostgreSQL benchmark") explains every figure.
//!
//! The server comes from `TOKENWARDEN_BENCH_POSTGRES_URL` (or `TOKENWARDEN_TEST_POSTGRES_URL`);
//! without either the bench says so and exits successfully (a smoke run fails). It works in a
//! fresh schema that it drops at the end. Name phases to run only those (seeding always runs):
//! `cargo bench --bench postgres -- explain throughput lag rss`. `TOKENWARDEN_BENCH_SMOKE=1`
//! runs every phase at tiny sizes in seconds (see `benches/common/smoke.rs`).

use std::error::Error;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitCode, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, LazyLock};
use std::time::{Duration, Instant};

use chrono::{DateTime, TimeDelta, Utc};
use diesel::connection::{Instrumentation, InstrumentationEvent, SimpleConnection};
use diesel::prelude::*;
use diesel::sql_types::{BigInt, Text};
use secrecy::SecretString;

use tokenwarden::config::{DatabaseUrl, PolicyDefaults};
use tokenwarden::crypto::{Cipher, MasterKey};
use tokenwarden::domain::{Policy, PolicyOverrides, TokenKind, TokenName};
use tokenwarden::engine::policy::plan_rotation;
use tokenwarden::store::rotation::{self, ClaimMode, ProviderRoom, Success};
use tokenwarden::store::tokens::{SecretField, secret_context};
use tokenwarden::store::{DbConnection, Store, StoreError, connect, meta};

#[path = "common/pg_schema.rs"]
mod pg_schema;
#[path = "common/smoke.rs"]
mod smoke;

use pg_schema::BenchSchema;

type BenchResult<T = ()> = Result<T, Box<dyn Error + Send + Sync>>;
/// One line of the summary: figure, measured value, target, and whether it was met (`None`
/// for figures without a target).
type SummaryLine = (String, String, String, Option<bool>);

/// The server's URL, preferred.
const URL_VAR: &str = "TOKENWARDEN_BENCH_POSTGRES_URL";
/// The test suite's server URL, used when the bench's own is not set.
const TEST_URL_VAR: &str = "TOKENWARDEN_TEST_POSTGRES_URL";
/// The phases, in the order they run.
const PHASES: [&str; 4] = ["explain", "throughput", "lag", "rss"];

/// Providers the tokens are spread over (round robin), so the per-provider rooms add up to the
/// overall limit.
const PROVIDERS: i64 = 8;
/// Workers per provider, as `Limits::default().per_provider`.
const PER_PROVIDER: usize = 8;
/// Replica counts measured.
const REPLICAS: [usize; 3] = [1, 2, 3];
/// Longest a throughput run may take.
const THROUGHPUT_DEADLINE: Duration = Duration::from_secs(60);
/// Longest wait for a lag run's tokens after the last of them is due.
const LAG_GRACE: Duration = Duration::from_secs(20);
/// A replica with nothing to claim sleeps until the next due token, but at most this long.
const IDLE_POLL: Duration = Duration::from_millis(100);
/// The lease a claim takes (the scheduler's default is longer; nothing here outlives it).
const LEASE: TimeDelta = TimeDelta::seconds(60);
/// Longest wait for a `serve` replica to get ready (migrations, key check, re-plan, first sweep
/// and metrics refresh at 1,000,000 tokens).
const SERVE_READY_DEADLINE: Duration = Duration::from_secs(120);

/// The sizes of a run: the real ones, or tiny ones in a smoke run ([`smoke::SMOKE_ENV`]).
#[derive(Clone, Copy)]
struct Sizes {
    /// Tokens in the table.
    tokens: i64,
    /// Tokens due at once in each throughput run (its own set of the table).
    throughput_due: i64,
    /// Tokens due in each lag run (its own set of the table), spread evenly over `lag_window`:
    /// 167 a second, the rate of 10,000 a minute, in a real run.
    lag_due: i64,
    /// The window the lag run's tokens fall due in.
    lag_window: TimeDelta,
    /// How long after the lag run's start its first token is due.
    lag_first_due_after: TimeDelta,
    /// `serve` replicas started for the memory figure.
    serve_replicas: usize,
    /// How long the memory of the `serve` replicas is watched after they all logged readiness.
    serve_settle: Duration,
}

/// This run's sizes.
static SIZES: LazyLock<Sizes> = LazyLock::new(|| Sizes {
    tokens: smoke::size(1_000_000, 3_000),
    throughput_due: smoke::size(10_000, 200),
    lag_due: smoke::size(5_000, 60),
    lag_window: smoke::size(TimeDelta::seconds(30), TimeDelta::seconds(1)),
    lag_first_due_after: smoke::size(TimeDelta::seconds(3), TimeDelta::seconds(1)),
    serve_replicas: smoke::size(3, 1),
    serve_settle: smoke::size(Duration::from_secs(15), Duration::from_secs(1)),
});

/// Target: rotation lag p99, in milliseconds.
const LAG_P99_TARGET_MS: f64 = 100.0;
/// Target: resident memory of one `serve` replica, in MB.
const RSS_TARGET_MB: f64 = 128.0;

fn main() -> ExitCode {
    let Some(admin_url) = std::env::var(URL_VAR).ok().or_else(|| std::env::var(TEST_URL_VAR).ok()) else {
        println!("skipped: set {URL_VAR} (or {TEST_URL_VAR}) to a postgres:// URL to run the PostgreSQL benchmark");
        // A smoke run is CI making sure the bench works: skipping would hide that it cannot.
        return if smoke::smoke() { ExitCode::FAILURE } else { ExitCode::SUCCESS };
    };
    match run(&admin_url) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("postgres bench failed: {err}");
            ExitCode::FAILURE
        }
    }
}

fn run(admin_url: &str) -> BenchResult {
    let Sizes { tokens, throughput_due, lag_due, lag_window, lag_first_due_after, .. } = *SIZES;
    let wanted: Vec<String> = std::env::args().skip(1).filter(|arg| !arg.starts_with('-')).collect();
    let phases: Vec<&str> = PHASES.into_iter().filter(|p| wanted.is_empty() || wanted.iter().any(|w| w == p)).collect();
    if phases.is_empty() {
        return Err(format!("no such phase in {wanted:?}; phases are {PHASES:?}").into());
    }
    let started = Instant::now();
    if smoke::smoke() {
        println!("smoke run ({}=1): every phase at tiny sizes; the figures mean nothing", smoke::SMOKE_ENV);
    }
    let mut admin = PgConnection::establish(admin_url)?;
    println!("tokenwarden PostgreSQL benchmark: store functions and `serve` replicas against {tokens} tokens");
    println!("machine: {}", machine());
    println!("server: {}", scalar(&mut admin, "SELECT version() AS value")?);
    println!(
        "note: PostgreSQL runs on the same {} cores as the bench (and the serve replicas); every figure includes \
         the contention",
        cpus()
    );
    let schema = BenchSchema::create(admin_url)?;
    println!("schema: {} (dropped at the end)", schema.name);
    let dir = tempfile::tempdir()?;
    let key_file = dir.path().join("master.key");
    let cipher = Cipher::new(&MasterKey::create(&key_file)?);

    let store_url = DatabaseUrl::parse(&schema.url)?;
    let store = Store::open(&store_url)?;
    let mut setup = connect(&store_url)?;
    meta::verify_or_record_key(&mut setup, &cipher)?;
    let mut conn = PgConnection::establish(&schema.url)?;
    seed(&mut conn)?;

    let mut results: Vec<SummaryLine> = Vec::new();
    let bench = Bench { store_url: store_url.clone(), cipher: Arc::new(cipher), policy: gitlab_policy() };
    if phases.contains(&"explain") {
        explain_phase(&mut conn, &mut setup)?;
    }
    if phases.contains(&"throughput") {
        println!();
        println!(
            "(b) claim throughput: {throughput_due} of the {tokens} tokens due at once (a fresh set per run), {PROVIDERS} \
             providers; each replica is a Store of its own (pool of 8) looping claim_due(room {PER_PROVIDER} per \
             provider = {} overall) and committing every claim at once (Store::commit_answer, group-committed)",
            PER_PROVIDER * PROVIDERS as usize
        );
        for (set, replicas) in REPLICAS.into_iter().enumerate() {
            let range = token_range(throughput_due * set as i64 + 1, throughput_due);
            let due = Utc::now() - TimeDelta::minutes(1);
            make_due(&mut conn, &range, due, TimeDelta::zero())?;
            let cpu_before = cpu_seconds()?;
            let outcome =
                bench.run_replicas(replicas, throughput_due as usize, Instant::now() + THROUGHPUT_DEADLINE)?;
            let rate = outcome.committed as f64 / outcome.elapsed.as_secs_f64();
            let cpu = 100.0 * (cpu_seconds()? - cpu_before) / outcome.elapsed.as_secs_f64();
            println!(
                "    {replicas} replica(s): {} committed in {:.2} s = {rate:.0}/s; {} claim batches ({:.1} claims each, \
                 claim p50 {:.1} ms / p99 {:.1} ms); commit p50 {:.1} ms / p99 {:.1} ms; lost leases {}, errors {}{}; \
                 bench process CPU {cpu:.0} % of a core (PostgreSQL has the rest)",
                outcome.committed,
                outcome.elapsed.as_secs_f64(),
                outcome.batches,
                outcome.committed as f64 / outcome.batches.max(1) as f64,
                outcome.claim_ms.p50,
                outcome.claim_ms.p99,
                outcome.commit_ms.p50,
                outcome.commit_ms.p99,
                outcome.lost,
                outcome.errors,
                outcome.describe_split()
            );
            results.push((
                format!("claim+commit throughput, {replicas} replica(s)"),
                format!("{rate:.0}/s"),
                "-".into(),
                None,
            ));
        }
    }
    if phases.contains(&"lag") {
        println!();
        println!(
            "(c) rotation lag: {lag_due} of the {tokens} tokens due one every {} ms over {} s (the rate of 10,000 a \
             minute), a fresh set per run; replicas as in (b); an idle replica sleeps until the next due token \
             (rotation::due_by, limit 1), at most {} ms; lag = commit time - next_rotation_at",
            (lag_window / i32::try_from(lag_due)?).num_milliseconds(),
            lag_window.num_seconds(),
            IDLE_POLL.as_millis()
        );
        for (set, replicas) in REPLICAS.into_iter().enumerate() {
            let range = token_range(throughput_due * REPLICAS.len() as i64 + lag_due * set as i64 + 1, lag_due);
            let first_due = Utc::now() + lag_first_due_after;
            let spacing = lag_window / i32::try_from(lag_due)?;
            make_due(&mut conn, &range, first_due, spacing)?;
            let last_due = first_due + spacing * i32::try_from(lag_due - 1)?;
            let deadline = Instant::now() + (last_due - Utc::now()).to_std().unwrap_or_default() + LAG_GRACE;
            let mut outcome = bench.run_replicas(replicas, lag_due as usize, deadline)?;
            let lag = Percentiles::of(&mut outcome.lags_ms);
            println!(
                "    {replicas} replica(s): {} committed; lag {}; lost leases {}, errors {}{}",
                outcome.committed,
                lag.show(),
                outcome.lost,
                outcome.errors,
                outcome.describe_split()
            );
            results.push((
                format!("rotation lag p99, {replicas} replica(s)"),
                format!("{:.1} ms (p50 {:.1}, max {:.1})", lag.p99, lag.p50, lag.max),
                format!("<= {LAG_P99_TARGET_MS} ms"),
                Some(lag.p99 <= LAG_P99_TARGET_MS),
            ));
        }
    }
    drop(store);
    drop(setup);
    let store_url = store_url.clone();
    if phases.iter().any(|p| *p == "throughput" || *p == "lag") {
        println!();
        std::thread::sleep(Duration::from_secs(1));
        let stats = TableStats::read(&mut conn)?;
        println!(
            "(d) the tokens table after the runs (connections of the runs closed, so their statistics are in; \
             autovacuum = {} on this server):",
            scalar(&mut conn, "SELECT current_setting('autovacuum') AS value")?
        );
        println!("    {}", stats.show());
        results.push(("n_dead_tup of tokens after the runs".into(), stats.n_dead_tup.to_string(), "-".into(), None));
        let mut probe = connect(&store_url)?;
        let claim = planned_claim_sql(&mut probe)?;
        println!("    the planned claim (custom plan, provider p1, nothing due now) before VACUUM:");
        print_plan(
            &mut conn,
            &claim,
            &[format!("TIMESTAMP '{}'", timestamp(Utc::now())), "'p1'".into(), "8".into()],
            "force_custom_plan",
            "bench_dead",
        )?;
        let vacuum = Instant::now();
        conn.batch_execute("VACUUM tokens")?;
        println!("    VACUUM tokens took {:.2} s; the same claim after it:", vacuum.elapsed().as_secs_f64());
        print_plan(
            &mut conn,
            &claim,
            &[format!("TIMESTAMP '{}'", timestamp(Utc::now())), "'p1'".into(), "8".into()],
            "force_custom_plan",
            "bench_dead",
        )?;
        std::thread::sleep(Duration::from_millis(1500));
        println!("    after VACUUM: {}", TableStats::read(&mut conn)?.show());
    }
    if phases.contains(&"rss") {
        println!();
        for (figure, measured, target, met) in rss_phase(admin_url, &schema, &key_file, dir.path())? {
            results.push((figure, measured, target, met));
        }
        let stats = TableStats::read(&mut conn)?;
        println!("    the tokens table after the serve replicas: {}", stats.show());
    }
    drop(conn);
    drop(schema);
    println!();
    println!(
        "summary ({:.0} s in all; load average now {}, PostgreSQL and the bench share the cores)",
        started.elapsed().as_secs_f64(),
        load_average()
    );
    println!("  {:<44} {:>34}   {:<12} verdict", "figure", "measured", "target");
    for (figure, measured, target, met) in results {
        let verdict = match met {
            Some(true) => "met",
            Some(false) => "MISSED",
            None => "-",
        };
        println!("  {figure:<44} {measured:>34}   {target:<12} {verdict}");
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// The schema and its 1,000,000 tokens.
// ---------------------------------------------------------------------------------------------

/// The default policy for GitLab personal access tokens (what `serve` plans with).
fn gitlab_policy() -> Policy {
    Policy::resolve(TokenKind::GitlabPersonalAccessToken, &PolicyOverrides::default(), &PolicyDefaults::default())
}

/// `tok-0000001` … `tok-1000000`: the name of the `i`th token (1-based).
fn token_name(i: i64) -> String {
    format!("tok-{i:07}")
}

/// The names of `count` tokens from the `first`th on (an inclusive range of names).
fn token_range(first: i64, count: i64) -> (String, String) {
    (token_name(first), token_name(first + count - 1))
}

/// One provider row per provider id `p0` … `p7`, and the tokens in one `INSERT … SELECT` over
/// `generate_series`: GitLab personal access tokens issued 1 to 19 days ago, expiring 30 days after
/// issue, planned exactly as `serve` plans them under the default policy (20.1 days after
/// issue, minus up to an hour of jitter from SHA-256 of the name; so `serve`'s start-up re-plan
/// finds nothing to change), secrets NULL (nothing here reads them), then `VACUUM ANALYZE`.
fn seed(conn: &mut PgConnection) -> BenchResult {
    let Sizes { tokens, .. } = *SIZES;
    let started = Instant::now();
    conn.batch_execute(&format!(
        "INSERT INTO providers (id, name, kind, url, created_at, updated_at)
         SELECT 'p' || p, 'bench-' || p, 'gitlab', 'http://127.0.0.1:9', LOCALTIMESTAMP, LOCALTIMESTAMP
         FROM generate_series(0, {last_provider}) AS p;
         INSERT INTO tokens (id, name, provider_id, kind, state, version, issued_at, expires_at, next_rotation_at,
                             attempt_count, scopes, created_at, updated_at)
         SELECT '00000000-0000-7000-8000-' || lpad(to_hex(i), 12, '0'), t.name, 'p' || (i % {PROVIDERS}),
                'gitlab-personal-access-token', 'active', 1, t.issued, t.issued + interval '30 days',
                t.issued + interval '1736640 seconds' - interval '1 hour'
                    * (('x' || substr(encode(sha256(convert_to(t.name, 'UTF8')), 'hex'), 1, 13))::bit(52)::bigint
                       / 4503599627370496.0),
                0, 'api', LOCALTIMESTAMP, LOCALTIMESTAMP
         FROM generate_series(1, {tokens}) AS i,
              LATERAL (SELECT 'tok-' || lpad(i::text, 7, '0') AS name,
                              LOCALTIMESTAMP - interval '19 days' + interval '18 days' * (i::float8 / {tokens}) AS issued) t;",
        last_provider = PROVIDERS - 1
    ))?;
    let inserted = started.elapsed();
    conn.batch_execute("VACUUM ANALYZE tokens")?;
    conn.batch_execute("VACUUM ANALYZE providers")?;
    println!(
        "seeded {tokens} tokens over {PROVIDERS} providers with one INSERT … SELECT in {:.1} s, VACUUM ANALYZE {:.1} s; \
         table {}, tokens_due {}, tokens_lease {}, name index {}",
        inserted.as_secs_f64(),
        (started.elapsed() - inserted).as_secs_f64(),
        scalar(conn, "SELECT pg_size_pretty(pg_relation_size('tokens')) AS value")?,
        scalar(conn, "SELECT pg_size_pretty(pg_relation_size('tokens_due')) AS value")?,
        scalar(conn, "SELECT pg_size_pretty(pg_relation_size('tokens_lease')) AS value")?,
        scalar(conn, "SELECT pg_size_pretty(pg_relation_size('tokens_name_key')) AS value")?,
    );
    Ok(())
}

/// Makes the tokens named in `range` (inclusive) due: the `k`th of them at `first + k × spacing`.
fn make_due(
    conn: &mut PgConnection,
    (first, last): &(String, String),
    at: DateTime<Utc>,
    spacing: TimeDelta,
) -> BenchResult {
    let at = timestamp(at);
    let spacing_us = spacing.num_microseconds().unwrap_or(0);
    conn.batch_execute(&format!(
        "UPDATE tokens SET next_rotation_at = TIMESTAMP '{at}'
             + interval '1 microsecond' * {spacing_us} * (substr(name, 5)::bigint - substr('{first}', 5)::bigint)
         WHERE name BETWEEN '{first}' AND '{last}'"
    ))?;
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// (a) EXPLAIN of the SQL the store sends.
// ---------------------------------------------------------------------------------------------

/// One line of `EXPLAIN` output.
#[derive(QueryableByName)]
struct PlanLine {
    #[diesel(sql_type = Text, column_name = "QUERY PLAN")]
    line: String,
}

/// A statement as Diesel sent it (placeholders `$1` …) and the binds it carried (Debug form).
struct Captured {
    sql: String,
    binds: String,
}

/// The statements `run` sends on `conn`, captured through Diesel's instrumentation.
fn statements_of(
    conn: &mut DbConnection,
    run: impl FnOnce(&mut DbConnection) -> BenchResult,
) -> BenchResult<Vec<Captured>> {
    let captured = Arc::new(std::sync::Mutex::new(Vec::new()));
    let sink = captured.clone();
    conn.set_instrumentation(move |event: InstrumentationEvent<'_>| {
        if let InstrumentationEvent::StartQuery { query, .. } = event {
            let text = query.to_string();
            let (sql, binds) = text.split_once(" -- binds: ").unwrap_or((&text, ""));
            sink.lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .push(Captured { sql: sql.to_owned(), binds: binds.to_owned() });
        }
    });
    let outcome = run(conn);
    conn.set_instrumentation(None::<Box<dyn Instrumentation>>);
    outcome?;
    let statements = std::mem::take(&mut *captured.lock().unwrap_or_else(std::sync::PoisonError::into_inner));
    Ok(statements)
}

/// The one captured statement that contains every one of `needles`.
fn pick<'a>(statements: &'a [Captured], needles: &[&str]) -> BenchResult<&'a Captured> {
    let mut found = statements.iter().filter(|s| needles.iter().all(|n| s.sql.contains(n)));
    let first = found.next().ok_or_else(|| format!("no captured statement contains {needles:?}"))?;
    if found.next().is_some() {
        return Err(format!("several captured statements contain {needles:?}").into());
    }
    Ok(first)
}

/// Number of distinct placeholders in `sql`.
fn placeholders(sql: &str) -> usize {
    (1..=99).take_while(|n| sql.contains(&format!("${n}"))).count()
}

/// The planned-claim statement of `claim_due` (one provider), as Diesel sends it.
fn planned_claim_sql(store_conn: &mut DbConnection) -> BenchResult<String> {
    let rooms = vec![ProviderRoom { provider_id: "p1".into(), room: PER_PROVIDER, ahead: 0 }];
    let long_ago = Utc::now() - TimeDelta::days(3650);
    let statements = statements_of(store_conn, |c| {
        rotation::claim_due(c, &rooms, "explain", LEASE, LEASE, long_ago)?;
        Ok(())
    })?;
    Ok(pick(&statements, &["next_rotation_at\" <= ", "FOR NO KEY UPDATE"])?.sql.clone())
}

/// A time as a PostgreSQL `TIMESTAMP` literal's text (UTC, microseconds).
fn timestamp(at: DateTime<Utc>) -> String {
    at.naive_utc().format("%Y-%m-%d %H:%M:%S%.6f").to_string()
}

/// PREPAREs `sql` as `name`, prints `EXPLAIN (ANALYZE, BUFFERS) EXECUTE name(args)` under
/// `plan_cache_mode = mode` in a transaction that is rolled back, and DEALLOCATEs it.
fn print_plan(conn: &mut PgConnection, sql: &str, args: &[String], mode: &str, name: &str) -> BenchResult {
    conn.batch_execute(&format!("PREPARE {name} AS {sql}"))?;
    conn.batch_execute(&format!("BEGIN; SET LOCAL plan_cache_mode = {mode}"))?;
    let plan = diesel::sql_query(format!("EXPLAIN (ANALYZE, BUFFERS) EXECUTE {name}({})", args.join(", ")))
        .load::<PlanLine>(conn);
    conn.batch_execute("ROLLBACK")?;
    conn.batch_execute(&format!("DEALLOCATE {name}"))?;
    println!("  [{mode}]");
    for line in plan? {
        println!("    {}", line.line);
    }
    Ok(())
}

/// `EXPLAIN (ANALYZE, BUFFERS)` of the claim and next-due statements the store sends, with a
/// custom and a generic plan each, at 1,000,000 tokens with 10,000 of them due.
fn explain_phase(conn: &mut PgConnection, store_conn: &mut DbConnection) -> BenchResult {
    let Sizes { tokens, throughput_due, .. } = *SIZES;
    println!();
    let (first, last) = token_range(1, throughput_due);
    let due = Utc::now() - TimeDelta::minutes(1);
    make_due(conn, &(first.clone(), last), due, TimeDelta::zero())?;
    conn.batch_execute("ANALYZE tokens")?;
    println!(
        "(a) query plans at {tokens} tokens, {throughput_due} of them due (those of (b)'s first run), none rotating; \
         the SQL is what Diesel sent, captured through its instrumentation, PREPAREd and run with \
         EXPLAIN (ANALYZE, BUFFERS) EXECUTE in a transaction that is rolled back, once with plan_cache_mode = \
         force_custom_plan and once with force_generic_plan"
    );
    let long_ago = Utc::now() - TimeDelta::days(3650);
    let rooms = vec![ProviderRoom { provider_id: "p1".into(), room: PER_PROVIDER, ahead: 0 }];
    let claim_sql = statements_of(store_conn, |c| {
        rotation::claim_due(c, &rooms, "explain", LEASE, LEASE, long_ago)?;
        Ok(())
    })?;
    let excluded = vec!["p0".to_owned()];
    let due_sql = statements_of(store_conn, |c| {
        rotation::due_by(c, long_ago, 512, &excluded)?;
        Ok(())
    })?;
    let name = TokenName::new(token_name(tokens))?;
    let by_name_sql = statements_of(store_conn, |c| {
        rotation::claim(c, &name, ClaimMode::Scheduled, "explain", LEASE, Utc::now())?;
        Ok(())
    })?;
    let ts = format!("TIMESTAMP '{}'", timestamp(Utc::now()));
    let limit = PER_PROVIDER.to_string();
    let cases: Vec<(&str, &Captured, Vec<String>)> = vec![
        (
            "claim_due, planned (next_rotation_at <= now)",
            pick(&claim_sql, &["next_rotation_at\" <= ", "FOR NO KEY UPDATE"])?,
            vec![ts.clone(), "'p1'".into(), limit.clone()],
        ),
        (
            "claim_due, unplanned (next_rotation_at IS NULL)",
            pick(&claim_sql, &["IS NULL", "FOR NO KEY UPDATE"])?,
            vec!["'p1'".into(), limit.clone()],
        ),
        (
            "claim_due, stale lease (state = 'rotating', lease_expires_at <= now)",
            pick(&claim_sql, &["lease_expires_at\" <= ", "FOR NO KEY UPDATE"])?,
            vec![ts.clone(), "'p1'".into(), limit.clone()],
        ),
        (
            "due_by, planned (the scheduler's window, 512 rows)",
            pick(&due_sql, &["next_rotation_at\" <= "])?,
            vec![
                format!("TIMESTAMP '{}'", timestamp(Utc::now() + TimeDelta::days(3650))),
                "ARRAY['p0']".into(),
                "512".into(),
            ],
        ),
        ("due_by, unplanned", pick(&due_sql, &["IS NULL"])?, vec!["ARRAY['p0']".into(), "512".into()]),
        (
            "due_by, stale lease",
            pick(&due_sql, &["lease_expires_at\" <= "])?,
            vec![ts.clone(), "ARRAY['p0']".into(), "512".into()],
        ),
        (
            "claim by name (rotation::claim)",
            pick(&by_name_sql, &["\"tokens\".\"name\" = "])?,
            vec![format!("'{}'", token_name(tokens))],
        ),
    ];
    for (index, (label, statement, args)) in cases.iter().enumerate() {
        let expected = placeholders(&statement.sql);
        if expected != args.len() {
            return Err(format!(
                "{label}: {expected} placeholders but {} arguments; binds were {}",
                args.len(),
                statement.binds
            )
            .into());
        }
        println!();
        println!("  -- {label}");
        println!("  {}", statement.sql);
        println!("  -- binds as Diesel sent them: {}; EXECUTE with ({})", statement.binds, args.join(", "));
        for mode in ["force_custom_plan", "force_generic_plan"] {
            print_plan(conn, &statement.sql, args, mode, &format!("bench_plan_{index}"))?;
        }
    }
    // Put the due tokens back out of reach, so the first throughput run starts from the same state.
    let far = Utc::now() + TimeDelta::days(20);
    make_due(conn, &token_range(1, throughput_due), far, TimeDelta::zero())?;
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// (b), (c) Replicas claiming and committing.
// ---------------------------------------------------------------------------------------------

/// What every replica needs.
struct Bench {
    store_url: DatabaseUrl,
    cipher: Arc<Cipher>,
    policy: Policy,
}

/// What a run of replicas did.
#[derive(Default)]
struct RunOutcome {
    committed: usize,
    by_replica: Vec<usize>,
    batches: usize,
    lost: usize,
    errors: usize,
    elapsed: Duration,
    lags_ms: Vec<f64>,
    claim_ms: Percentiles,
    commit_ms: Percentiles,
}

impl RunOutcome {
    /// `; split a / b / c` for more than one replica.
    fn describe_split(&self) -> String {
        if self.by_replica.len() < 2 {
            return String::new();
        }
        let split: Vec<String> = self.by_replica.iter().map(ToString::to_string).collect();
        format!("; split {}", split.join(" / "))
    }
}

/// What one replica did.
#[derive(Default)]
struct ReplicaOutcome {
    committed: usize,
    batches: usize,
    lost: usize,
    errors: usize,
    last_commit: Option<Instant>,
    lags_ms: Vec<f64>,
    claim_ms: Vec<f64>,
    commit_ms: Vec<f64>,
}

impl Bench {
    /// Runs `replicas` replicas until `expected` commits in all or `deadline`.
    fn run_replicas(&self, replicas: usize, expected: usize, deadline: Instant) -> BenchResult<RunOutcome> {
        let stores: Vec<Store> = (0..replicas).map(|_| Store::open(&self.store_url)).collect::<Result<_, _>>()?;
        let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
        let committed = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let started = Instant::now();
        let outcomes = runtime.block_on(async {
            let mut tasks = Vec::new();
            for (index, store) in stores.iter().enumerate() {
                let replica = Replica {
                    store: store.clone(),
                    owner: format!("bench-replica-{index}"),
                    cipher: self.cipher.clone(),
                    policy: self.policy,
                    committed: committed.clone(),
                    stop: stop.clone(),
                };
                tasks.push(tokio::spawn(replica.run()));
            }
            while committed.load(Ordering::Relaxed) < expected && Instant::now() < deadline {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            stop.store(true, Ordering::Relaxed);
            let mut outcomes = Vec::new();
            for task in tasks {
                outcomes.push(task.await?);
            }
            Ok::<_, Box<dyn Error + Send + Sync>>(outcomes)
        })?;
        runtime.shutdown_timeout(Duration::from_secs(5));
        drop(stores);
        let mut run = RunOutcome::default();
        let (mut claims, mut commits) = (Vec::new(), Vec::new());
        let mut last = started;
        for outcome in outcomes {
            run.committed += outcome.committed;
            run.by_replica.push(outcome.committed);
            run.batches += outcome.batches;
            run.lost += outcome.lost;
            run.errors += outcome.errors;
            run.lags_ms.extend(outcome.lags_ms);
            claims.extend(outcome.claim_ms);
            commits.extend(outcome.commit_ms);
            last = last.max(outcome.last_commit.unwrap_or(started));
        }
        run.elapsed = last.duration_since(started);
        run.claim_ms = Percentiles::of(&mut claims);
        run.commit_ms = Percentiles::of(&mut commits);
        if run.committed < expected {
            println!("    gave up waiting: {} of {expected} committed", run.committed);
        }
        Ok(run)
    }
}

/// One replica: a Store of its own, claiming due tokens in batches and committing each claim.
struct Replica {
    store: Store,
    owner: String,
    cipher: Arc<Cipher>,
    policy: Policy,
    committed: Arc<std::sync::atomic::AtomicUsize>,
    stop: Arc<AtomicBool>,
}

impl Replica {
    async fn run(self) -> ReplicaOutcome {
        let mut outcome = ReplicaOutcome::default();
        let rooms: Vec<ProviderRoom> = (0..PROVIDERS)
            .map(|p| ProviderRoom { provider_id: format!("p{p}"), room: PER_PROVIDER, ahead: 0 })
            .collect();
        while !self.stop.load(Ordering::Relaxed) {
            let (rooms, owner, now, started) = (rooms.clone(), self.owner.clone(), Utc::now(), Instant::now());
            let claimed =
                self.store.run(move |conn| rotation::claim_due(conn, &rooms, &owner, LEASE, LEASE, now)).await;
            let claims = match claimed {
                Ok(claims) => claims.claimed,
                Err(err) => {
                    outcome.errors += 1;
                    eprintln!("{}: claim failed: {err}", self.owner);
                    tokio::time::sleep(IDLE_POLL).await;
                    continue;
                }
            };
            outcome.claim_ms.push(started.elapsed().as_secs_f64() * 1000.0);
            if claims.is_empty() {
                self.idle().await;
                continue;
            }
            outcome.batches += 1;
            let mut commits = Vec::with_capacity(claims.len());
            for claim in claims {
                let (store, cipher, policy) = (self.store.clone(), self.cipher.clone(), self.policy);
                commits.push(tokio::spawn(async move {
                    let (lease, planned_at, name) = (claim.lease(), claim.planned_at, claim.token.name.to_string());
                    let started = Instant::now();
                    let now = Utc::now();
                    let committed = match fake_success(&cipher, &lease.token_id, &name, now, &policy) {
                        Ok(success) => {
                            let answer = rotation::Answer {
                                lease,
                                success,
                                actor: "bench".into(),
                                now,
                                authorized: None,
                                origin: Default::default(),
                            };
                            store.commit_answer(answer).await.map(|_| Utc::now())
                        }
                        Err(err) => Err(err),
                    };
                    (committed, planned_at, started.elapsed())
                }));
            }
            for commit in commits {
                match commit.await {
                    Ok((Ok(at), planned_at, took)) => {
                        outcome.committed += 1;
                        outcome.last_commit = Some(Instant::now());
                        outcome.commit_ms.push(took.as_secs_f64() * 1000.0);
                        if let Some(planned) = planned_at {
                            outcome.lags_ms.push(millis(at - planned));
                        }
                        self.committed.fetch_add(1, Ordering::Relaxed);
                    }
                    Ok((Err(StoreError::LeaseLost { .. }), _, _)) => outcome.lost += 1,
                    Ok((Err(err), _, _)) => {
                        outcome.errors += 1;
                        eprintln!("{}: commit failed: {err}", self.owner);
                    }
                    Err(err) => {
                        outcome.errors += 1;
                        eprintln!("{}: commit task failed: {err}", self.owner);
                    }
                }
            }
        }
        outcome
    }

    /// Sleeps until the next due token (as the scheduler's window would), at most [`IDLE_POLL`].
    async fn idle(&self) {
        let horizon = Utc::now() + TimeDelta::days(1);
        let next = self.store.run(move |conn| rotation::due_by(conn, horizon, 1, &[])).await;
        let wait = match next {
            Ok(next) => next
                .first()
                .and_then(|token| (token.due_at - Utc::now()).to_std().ok())
                .map_or(IDLE_POLL, |wait| wait.min(IDLE_POLL)),
            Err(_) => IDLE_POLL,
        };
        tokio::time::sleep(wait).await;
    }
}

/// What an instant provider answers: a new secret (sealed for the row, as the engine seals it),
/// valid 30 days, planned under the default policy like a real rotation.
fn fake_success(
    cipher: &Cipher,
    token_id: &str,
    name: &str,
    now: DateTime<Utc>,
    policy: &Policy,
) -> Result<Success, StoreError> {
    let secret = SecretString::from(format!("glpat-bench-{}", uuid::Uuid::now_v7().simple()));
    let sealed = cipher.try_seal(secret_context(token_id, SecretField::Secret), &secret)?;
    let expires_at = now + TimeDelta::days(30);
    Ok(Success {
        secret: sealed,
        refresh_token: None,
        expires_at: Some(expires_at),
        issued_at: now,
        external_id: None,
        next_rotation_at: Some(plan_rotation(name, now, expires_at, policy)),
        refresh_token_rotates: None,
        scope: None,
        username: None,
        retire: None,
    })
}

// ---------------------------------------------------------------------------------------------
// (d) Table statistics.
// ---------------------------------------------------------------------------------------------

#[derive(QueryableByName)]
struct TableStats {
    #[diesel(sql_type = BigInt)]
    n_live_tup: i64,
    #[diesel(sql_type = BigInt)]
    n_dead_tup: i64,
    #[diesel(sql_type = BigInt)]
    n_tup_upd: i64,
    #[diesel(sql_type = BigInt)]
    n_tup_hot_upd: i64,
    #[diesel(sql_type = BigInt)]
    autovacuum_count: i64,
    #[diesel(sql_type = BigInt)]
    autoanalyze_count: i64,
    #[diesel(sql_type = Text)]
    table_size: String,
    #[diesel(sql_type = Text)]
    due_size: String,
}

impl TableStats {
    fn read(conn: &mut PgConnection) -> BenchResult<Self> {
        conn.batch_execute("SELECT pg_stat_clear_snapshot()")?;
        Ok(diesel::sql_query(
            "SELECT n_live_tup, n_dead_tup, n_tup_upd, n_tup_hot_upd, autovacuum_count, autoanalyze_count,
                    pg_size_pretty(pg_relation_size('tokens')) AS table_size,
                    pg_size_pretty(pg_relation_size('tokens_due')) AS due_size
             FROM pg_stat_user_tables WHERE relid = 'tokens'::regclass",
        )
        .get_result(conn)?)
    }

    fn show(&self) -> String {
        format!(
            "n_live_tup {}, n_dead_tup {}, updates {} (HOT {}), autovacuum runs {}, autoanalyze runs {}, table {}, \
             tokens_due {}",
            self.n_live_tup,
            self.n_dead_tup,
            self.n_tup_upd,
            self.n_tup_hot_upd,
            self.autovacuum_count,
            self.autoanalyze_count,
            self.table_size,
            self.due_size
        )
    }
}

// ---------------------------------------------------------------------------------------------
// (e) Memory of real `serve` replicas.
// ---------------------------------------------------------------------------------------------

/// A `serve` process and where its log goes.
struct Served {
    child: Child,
    log: PathBuf,
}

impl Served {
    fn start(binary: &Path, url: &str, key_file: &Path, config: &Path, log: PathBuf) -> BenchResult<Self> {
        let child = Command::new(binary)
            .arg("serve")
            .env_clear()
            .env("TOKENWARDEN_DATABASE_URL", url)
            .env("TOKENWARDEN_MASTER_KEY_FILE", key_file)
            .env("TOKENWARDEN_CONFIG", config)
            .env("TOKENWARDEN_LISTEN", "127.0.0.1:0")
            .env("TOKENWARDEN_LOG_FORMAT", "text")
            .env("RUST_LOG", "info")
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log)?)
            .spawn()?;
        Ok(Self { child, log })
    }

    fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// VmRSS and VmHWM in kB.
    fn memory(&self) -> Option<(u64, u64)> {
        let status = format!("/proc/{}/status", self.child.id());
        Some((proc_field(&status, "VmRSS:")?, proc_field(&status, "VmHWM:")?))
    }

    /// SIGTERM, then SIGKILL after 10 s.
    fn stop(mut self) {
        let _ = Command::new("kill").arg("-TERM").arg(self.child.id().to_string()).status();
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The `tokenwarden` binary cargo built with this bench (release for `cargo bench`, the test
/// profile for a smoke run through `cargo test --bench postgres`).
fn serve_binary() -> BenchResult<PathBuf> {
    let binary = PathBuf::from(env!("CARGO_BIN_EXE_tokenwarden"));
    if !binary.exists() {
        return Err(format!("{} is missing; run the bench through cargo", binary.display()).into());
    }
    Ok(binary)
}

/// Starts `count` serve replicas on `url`, waits until each logged that it serves and that its
/// start-up re-plan finished, watches their memory for [`Sizes::serve_settle`], and stops them.
/// Returns each replica's (VmRSS, VmHWM) in kB, its start-up time and its re-plan log line.
fn watch_serve(
    binary: &Path,
    url: &str,
    key_file: &Path,
    config: &Path,
    dir: &Path,
    label: &str,
    count: usize,
) -> BenchResult<Vec<(u64, u64, f64, String)>> {
    let Sizes { serve_settle, .. } = *SIZES;
    let started = Instant::now();
    let served: Vec<Served> = (0..count)
        .map(|i| Served::start(binary, url, key_file, config, dir.join(format!("{label}-{i}.log"))))
        .collect::<BenchResult<_>>()?;
    let mut ready_after: Vec<Option<f64>> = vec![None; count];
    let mut timeline = Vec::new();
    let mut next_sample = Instant::now();
    while ready_after.iter().any(Option::is_none) && started.elapsed() < SERVE_READY_DEADLINE {
        if Instant::now() >= next_sample {
            next_sample += Duration::from_millis(500);
            if let Some((rss, _)) = served.first().and_then(Served::memory) {
                timeline.push(format!("{:.1}s {:.0}", started.elapsed().as_secs_f64(), rss as f64 / 1024.0));
            }
        }
        for (i, replica) in served.iter().enumerate() {
            let log = replica.log_text();
            if ready_after[i].is_none() && log.contains("tokenwarden is serving") && log.contains("re-planned tokens") {
                ready_after[i] = Some(started.elapsed().as_secs_f64());
            }
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let settle = Instant::now();
    while settle.elapsed() < serve_settle {
        std::thread::sleep(Duration::from_millis(500));
        if let Some((rss, _)) = served.first().and_then(Served::memory) {
            timeline.push(format!("{:.0}s {:.0}", started.elapsed().as_secs_f64(), rss as f64 / 1024.0));
        }
    }
    if count > 1 || label != "empty" {
        println!("    VmRSS of replica 0 over time (seconds since start, MB): {}", timeline.join(", "));
    }
    let mut figures = Vec::new();
    for (i, replica) in served.into_iter().enumerate() {
        let (rss, hwm) = replica.memory().unwrap_or((0, 0));
        let log = replica.log_text();
        let replan = log.lines().find(|l| l.contains("re-planned tokens")).unwrap_or("(no re-plan line)").to_owned();
        let problems: Vec<&str> = log.lines().filter(|l| l.contains("ERROR") || l.contains("WARN")).take(3).collect();
        if !problems.is_empty() {
            println!("    {label} replica {i} logged: {}", problems.join(" | "));
        }
        figures.push((rss, hwm, ready_after[i].unwrap_or(f64::NAN), replan));
        replica.stop();
    }
    Ok(figures)
}

/// Memory of real `serve` replicas: one on an empty schema (the baseline), then
/// [`Sizes::serve_replicas`] at once on the 1,000,000 tokens.
fn rss_phase(admin_url: &str, schema: &BenchSchema, key_file: &Path, dir: &Path) -> BenchResult<Vec<SummaryLine>> {
    let Sizes { tokens, serve_replicas, serve_settle, .. } = *SIZES;
    let binary = serve_binary()?;
    let config = dir.join("tokenwarden.toml");
    // The hourly validation asks GitLab about every access token; there is no GitLab here.
    std::fs::write(&config, "[maintenance]\nvalidate = \"0 0 0 1 1 *\"\n")?;
    println!(
        "(e) memory of real `tokenwarden serve` replicas ({}): none of the {tokens} tokens is due (the runs' tokens \
         were committed with plans weeks ahead), so the replicas start (migrations, key check, start-up re-plan, \
         sweep, metrics refresh) and then idle; the hourly validation is scheduled away (no GitLab here); \
         VmRSS/VmHWM from /proc/PID/status {} s after the last replica logged that it serves and re-planned",
        binary.display(),
        serve_settle.as_secs()
    );
    let mut results = Vec::new();
    let empty = BenchSchema::create(admin_url)?;
    let baseline = watch_serve(&binary, &empty.url, key_file, &config, dir, "empty", 1)?;
    drop(empty);
    for (rss, hwm, ready, _) in &baseline {
        println!("    1 replica on an empty schema: ready after {ready:.1} s; VmRSS {} VmHWM {}", mb(*rss), mb(*hwm));
    }
    let figures = watch_serve(&binary, &schema.url, key_file, &config, dir, "full", serve_replicas)?;
    let mut worst = 0;
    for (i, (rss, hwm, ready, replan)) in figures.iter().enumerate() {
        println!(
            "    replica {i} of {serve_replicas} on {tokens} tokens: ready after {ready:.1} s; VmRSS {} VmHWM {}",
            mb(*rss),
            mb(*hwm)
        );
        println!("        {}", replan.trim());
        worst = worst.max(*rss);
    }
    let peak = figures.iter().map(|f| f.1).max().unwrap_or(0);
    let worst_mb = worst as f64 / 1024.0;
    results.push((
        format!("serve VmRSS, worst of {serve_replicas} replicas ({tokens} tokens)"),
        format!("{} (VmHWM {})", mb(worst), mb(peak)),
        format!("<= {RSS_TARGET_MB} MB"),
        Some(worst_mb <= RSS_TARGET_MB),
    ));
    if let Some((rss, _, _, _)) = baseline.first() {
        results.push(("serve VmRSS, empty schema".into(), mb(*rss), "-".into(), None));
    }
    Ok(results)
}

// ---------------------------------------------------------------------------------------------
// Helpers.
// ---------------------------------------------------------------------------------------------

#[derive(QueryableByName)]
struct Scalar {
    #[diesel(sql_type = Text)]
    value: String,
}

/// The text of a one-row, one-column (`value`) query.
fn scalar(conn: &mut PgConnection, sql: &str) -> BenchResult<String> {
    Ok(diesel::sql_query(sql).get_result::<Scalar>(conn)?.value)
}

/// p50, p99 and max of a sample, in milliseconds (nearest rank).
#[derive(Default)]
struct Percentiles {
    count: usize,
    p50: f64,
    p99: f64,
    max: f64,
}

impl Percentiles {
    fn of(values: &mut [f64]) -> Self {
        values.sort_by(f64::total_cmp);
        let rank = |q: f64| -> f64 {
            if values.is_empty() {
                return f64::NAN;
            }
            let index = ((q * values.len() as f64).ceil() as usize).clamp(1, values.len()) - 1;
            values[index]
        };
        Self { count: values.len(), p50: rank(0.50), p99: rank(0.99), max: rank(1.0) }
    }

    fn show(&self) -> String {
        format!("p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms ({} samples)", self.p50, self.p99, self.max, self.count)
    }
}

/// A time span in milliseconds, with microsecond precision.
fn millis(delta: TimeDelta) -> f64 {
    delta.num_microseconds().map_or(f64::NAN, |us| us as f64 / 1000.0)
}

/// This process's CPU time (user + system), from `/proc/self/stat` (100 ticks a second).
fn cpu_seconds() -> BenchResult<f64> {
    let stat = std::fs::read_to_string("/proc/self/stat")?;
    let after_name = stat.rsplit_once(')').map(|(_, rest)| rest).ok_or("unreadable /proc/self/stat")?;
    let fields: Vec<&str> = after_name.split_whitespace().collect();
    let ticks = |index: usize| -> BenchResult<f64> {
        Ok(fields.get(index).ok_or("short /proc/self/stat")?.parse::<u64>()? as f64)
    };
    Ok((ticks(11)? + ticks(12)?) / 100.0)
}

/// kB as `12.3 MB`.
fn mb(kb: u64) -> String {
    format!("{:.1} MB", kb as f64 / 1024.0)
}

fn cpus() -> usize {
    std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0)
}

/// The 1, 5 and 15 minute load averages, from `/proc/loadavg`.
fn load_average() -> String {
    let text = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    text.split_whitespace().take(3).collect::<Vec<_>>().join(" ")
}

/// CPUs, CPU model, memory, kernel and load average, from /proc.
fn machine() -> String {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let model = cpuinfo
        .lines()
        .find_map(|line| line.strip_prefix("model name").and_then(|rest| rest.split(':').nth(1)))
        .map_or("unknown CPU", str::trim)
        .to_owned();
    let memory_kb = proc_field("/proc/meminfo", "MemTotal:").unwrap_or(0);
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    format!(
        "{} CPUs ({model}), {:.1} GiB RAM, Linux {}; load average before the run {}",
        cpus(),
        memory_kb as f64 / 1024.0 / 1024.0,
        kernel.trim(),
        load_average()
    )
}

/// A value in kB from a `/proc` file of `Name:   123 kB` lines.
fn proc_field(path: &str, name: &str) -> Option<u64> {
    let text = std::fs::read_to_string(path).ok()?;
    text.lines().find_map(|line| line.strip_prefix(name)?.split_whitespace().next()?.parse().ok())
}
