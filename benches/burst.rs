//! `cargo bench --bench burst`: a restart burst. N OAuth grants are all due when the engine
//! starts (as after a crash, a deploy or a node failure), the provider limit lets every one of
//! them be in flight at once, and the simulator answers after 0 or 20 ms. It reports the window
//! from each provider answer until it is durable (its journal commit) — where a killed process
//! loses a credential the provider has already replaced — and the share of the burst during which at least one answer
//! was uncommitted (the chance that a kill at a random instant of the burst lands inside a
//! window). It measures; it asserts nothing. `docs/BENCHMARKS.md` explains the figures.
//!
//! Each configuration runs on SQLite and, when `TOKENWARDEN_TEST_POSTGRES_URL` names a server,
//! on PostgreSQL too (a fresh schema per burst).
//!
//! `TOKENWARDEN_BENCH_SMOKE=1` runs one small burst per latency in a few seconds
//! (`benches/common/smoke.rs`; CI runs it so the bench cannot break unnoticed).

use std::error::Error;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::{mpsc, watch};

use tokenwarden::config::DatabaseUrl;
use tokenwarden::engine::{EngineSettings, Limits, RotationOutcome, Scheduler, SystemClock};
use tokenwarden::simulator::FaultRates;
use tokenwarden::simulator::harness::EngineHarness;

#[path = "common/pg_schema.rs"]
mod pg_schema;
#[path = "common/smoke.rs"]
mod smoke;

type BenchResult<T = ()> = Result<T, Box<dyn Error + Send + Sync>>;

/// Grants due at start, per burst.
const SIZES: [usize; 3] = [8, 64, 256];
/// The simulator's answer latency, in milliseconds.
const LATENCIES_MS: [u64; 2] = [0, 20];
/// Answers measured per configuration at least (bursts are repeated until there are as many).
const ANSWERS_PER_FIGURE: usize = 512;
/// Rotations in flight at once, overall and against the one provider (the burst's width).
const CONCURRENCY: usize = 64;
/// Longest a burst may take.
const BURST_DEADLINE: Duration = Duration::from_secs(120);

fn main() -> BenchResult {
    let smoke = smoke::smoke();
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    let sizes: &[usize] = smoke::size(&SIZES, &SIZES[..1]);
    let postgres = std::env::var("TOKENWARDEN_TEST_POSTGRES_URL").ok().filter(|url| !url.is_empty());
    println!(
        "restart burst: N OAuth grants due at start, {CONCURRENCY} in flight at once (overall and per provider), \
         fresh store per burst{}",
        if smoke { " (smoke run: one burst per figure)" } else { "" }
    );
    let backends = std::iter::once(None).chain(postgres.as_deref().map(Some));
    for backend in backends {
        println!("{}", if backend.is_some() { "PostgreSQL:" } else { "SQLite:" });
        for latency_ms in LATENCIES_MS {
            for &size in sizes {
                let bursts = smoke::size(ANSWERS_PER_FIGURE.div_ceil(size), 1);
                let mut figures = Figures::default();
                for _ in 0..bursts {
                    runtime.block_on(burst(size, latency_ms, backend, &mut figures))?;
                }
                println!("N = {size:3}, latency {latency_ms:2} ms, {bursts:2} bursts: {}", figures.show());
            }
        }
    }
    Ok(())
}

/// What the bursts of one configuration measured.
#[derive(Debug, Default)]
struct Figures {
    /// Answer → commit, per answer, in milliseconds.
    windows_ms: Vec<f64>,
    /// Time with at least one answer uncommitted, over all bursts.
    exposed: Duration,
    /// From each burst's first answer to its last commit, over all bursts.
    span: Duration,
    /// From the scheduler's start to its first committed rotation, per burst, in milliseconds.
    first_commit_ms: Vec<f64>,
    /// From the scheduler's start to the first provider answer, minus the simulator's
    /// latency: when the first provider request went out, per burst, in milliseconds.
    first_request_ms: Vec<f64>,
}

impl Figures {
    fn show(&mut self) -> String {
        let window = percentiles(&mut self.windows_ms);
        let first = percentiles(&mut self.first_commit_ms);
        let request = percentiles(&mut self.first_request_ms);
        let exposed = 100.0 * self.exposed.as_secs_f64() / self.span.as_secs_f64().max(f64::MIN_POSITIVE);
        format!(
            "answer→durable p50 {:6.2} ms  p99 {:6.2} ms  max {:6.2} ms  | exposed {exposed:5.1} % of the burst  \
             | start→first request p50 {:5.1} ms, →first commit p50 {:6.1} ms",
            window[0], window[1], window[2], request[0], first[0]
        )
    }
}

/// One burst: a fresh engine with `size` grants due, run until every one is refreshed, on a
/// fresh SQLite store or (given a server) a fresh PostgreSQL schema.
async fn burst(size: usize, latency_ms: u64, postgres: Option<&str>, figures: &mut Figures) -> BenchResult {
    let dir = tempfile::tempdir()?;
    let schema = postgres.map(pg_schema::BenchSchema::create).transpose()?;
    let url = match &schema {
        Some(schema) => DatabaseUrl::parse(&schema.url)?,
        None => DatabaseUrl::Sqlite(dir.path().join("tokenwarden.db")),
    };
    let harness = EngineHarness::start_on(url, Arc::new(SystemClock), EngineSettings::default()).await?;
    harness.sim.set_rates(FaultRates { latency_ms, ..FaultRates::default() });
    for i in 0..size {
        harness.track_grant(&format!("burst-{i:04}")).await?;
    }
    let limits = Limits { max_concurrency: CONCURRENCY, per_provider: CONCURRENCY };
    let (sender, mut reports) = mpsc::unbounded_channel();
    let (stop, stopped) = watch::channel(false);
    let started = Instant::now();
    let task = tokio::spawn(Scheduler::new(harness.context.clone(), limits).with_reports(sender).run(stopped));
    let mut windows = Vec::with_capacity(size);
    let deadline = tokio::time::Instant::now() + BURST_DEADLINE;
    while windows.len() < size {
        let report = tokio::time::timeout_at(deadline, reports.recv()).await?.ok_or("the scheduler stopped")?;
        match (&report.outcome, report.commit_gap, report.durable_at) {
            (RotationOutcome::Rotated { .. }, Some(gap), Some(durable)) => windows.push((durable - gap, durable)),
            (outcome, _, _) => return Err(format!("{}: {outcome:?}", report.token).into()),
        }
    }
    let _ = stop.send(true);
    let _ = task.await;
    figures.first_commit_ms.extend(windows.iter().map(|(_, committed)| ms(*committed - started)).reduce(f64::min));
    let latency = Duration::from_millis(latency_ms);
    let first_answer = windows.iter().map(|(answered, _)| *answered).min();
    figures
        .first_request_ms
        .extend(first_answer.map(|answered| ms(answered.saturating_duration_since(started + latency))));
    figures.windows_ms.extend(windows.iter().map(|(answered, committed)| ms(*committed - *answered)));
    let (exposed, span) = exposure(&mut windows);
    figures.exposed += exposed;
    figures.span += span;
    Ok(())
}

/// The union of the windows' lengths, and the span from the first answer to the last commit.
fn exposure(windows: &mut [(Instant, Instant)]) -> (Duration, Duration) {
    windows.sort_by_key(|(answered, _)| *answered);
    let (Some(first), Some(last)) = (windows.first(), windows.iter().map(|(_, end)| *end).max()) else {
        return (Duration::ZERO, Duration::ZERO);
    };
    let (mut covered, mut open) = (Duration::ZERO, *first);
    for &(start, end) in windows.iter() {
        if start > open.1 {
            covered += open.1 - open.0;
            open = (start, end);
        } else {
            open.1 = open.1.max(end);
        }
    }
    covered += open.1 - open.0;
    (covered, last - first.0)
}

/// p50, p99 and max of `values` (NaN when empty).
fn percentiles(values: &mut [f64]) -> [f64; 3] {
    values.sort_by(f64::total_cmp);
    [0.50, 0.99, 1.0].map(|q| {
        let Some(len) = std::num::NonZeroUsize::new(values.len()) else { return f64::NAN };
        values[((q * len.get() as f64).ceil() as usize).clamp(1, len.get()) - 1]
    })
}

fn ms(duration: Duration) -> f64 {
    duration.as_secs_f64() * 1000.0
}
