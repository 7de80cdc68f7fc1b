//! `cargo bench --bench sinks`: a rotation storm's sink deliveries. N tokens each have a file
//! sink; every one has a version to deliver at the same instant (as when N rotations commit at
//! once), and the sink dispatcher starts then. It reports how long after that instant each sink
//! held its version (p50 / p99 / max) and how many were delivered. It measures; it asserts
//! nothing. `docs/BENCHMARKS.md` explains the figures (issue 14's target: p99 within 1 s for
//! 1,000 sinks).
//!
//! `TOKENWARDEN_BENCH_SMOKE=1` runs 20 sinks in a second (`benches/common/smoke.rs`).

use std::error::Error;
use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::{Days, Utc};
use tokio::sync::watch;

use tokenwarden::domain::TokenName;
use tokenwarden::engine::{EngineSettings, SystemClock};
use tokenwarden::simulator::harness::{EngineHarness, SeedToken};
use tokenwarden::sinks::dispatcher::SinkDispatcher;
use tokenwarden::sinks::file::{FileFormat, FileSettings};
use tokenwarden::store::models::utc;
use tokenwarden::store::sinks;

#[path = "common/smoke.rs"]
mod smoke;

type BenchResult<T = ()> = Result<T, Box<dyn Error>>;

/// Sinks in the storm.
const SINKS: usize = 1_000;
/// Longest the storm may take.
const DEADLINE: Duration = Duration::from_secs(120);

fn main() -> BenchResult {
    let count = smoke::size(SINKS, 20);
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    runtime.block_on(storm(count))
}

async fn storm(count: usize) -> BenchResult {
    let dir = tempfile::tempdir()?;
    let harness = EngineHarness::start(dir.path(), Arc::new(SystemClock), EngineSettings::default()).await?;
    let later = Utc::now() + Days::new(20);
    let seeds = (0..count).map(|i| SeedToken { name: format!("t{i:05}"), next_rotation_at: later }).collect();
    harness.track_access_tokens_bulk(seeds, (Utc::now() + Days::new(30)).date_naive(), false).await?;
    let out = dir.path().join("out");
    std::fs::create_dir(&out)?;
    let store = harness.context.store.clone();
    let sink_dir = out.clone();
    // Each sink added queues its token's current version: N deliveries pending at once.
    store
        .run(move |conn| {
            for i in 0..count {
                let settings = FileSettings {
                    path: sink_dir.join(format!("t{i:05}.token")),
                    mode: 0o600,
                    format: FileFormat::Raw,
                    env_var: "TOKEN".into(),
                    exec: Vec::new(),
                    exec_timeout_secs: 30,
                };
                let token = TokenName::new(format!("t{i:05}")).expect("a token name");
                let settings = serde_json::to_value(&settings).expect("settings JSON");
                sinks::add(conn, &format!("s{i:05}"), &token, "file", &settings, "bench", Utc::now())?;
            }
            Ok(())
        })
        .await?;
    let (stop, stopped) = watch::channel(false);
    let started = Utc::now();
    let clock = Instant::now();
    let dispatcher = SinkDispatcher::new(store.clone(), harness.context.cipher.clone(), harness.context.http.clone());
    let task = tokio::spawn(dispatcher.run(stopped));
    let delays = loop {
        let all = store.run(sinks::list).await?;
        let delivered: Vec<f64> = all
            .iter()
            .filter_map(|sink| sink.row.delivered_at)
            .map(|at| (utc(at) - started).num_microseconds().unwrap_or(i64::MAX) as f64 / 1000.0)
            .collect();
        if delivered.len() == count || clock.elapsed() > DEADLINE {
            break delivered;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let _ = stop.send(true);
    let _ = task.await;
    let mut sorted = delays.clone();
    sorted.sort_by(f64::total_cmp);
    let at = |q: f64| sorted.get(((sorted.len() as f64 - 1.0) * q).round() as usize).copied().unwrap_or(f64::NAN);
    println!(
        "sink storm: {count} file sinks with a version pending at once; delivered {} of {count}; \
         time from the storm to each delivery: p50 {:.0} ms, p99 {:.0} ms, max {:.0} ms (target: p99 <= 1000 ms)",
        delays.len(),
        at(0.5),
        at(0.99),
        at(1.0)
    );
    Ok(())
}
