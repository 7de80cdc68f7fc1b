//! Secret reads over HTTP on loopback, next to `/healthz` on the same server in the same run:
//! requests per second and latency percentiles with 100,000 tokens in SQLite. The reads use a
//! reader client granted exactly the tokens it reads, as a dependent service would (not the
//! operator key). Prints figures; asserts nothing. Run with `cargo bench --bench api`.
//! `TOKENWARDEN_BENCH_SMOKE=1` runs it at tiny sizes in a few seconds and fails on any request
//! error (`benches/common/smoke.rs`).

#[path = "common/smoke.rs"]
mod smoke;

use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, LazyLock};
use std::time::{Duration, Instant};

use chrono::{Days, Utc};
use tokenwarden::api::{AppState, router};
use tokenwarden::domain::ClientRole;
use tokenwarden::engine::{EngineSettings, SystemClock};
use tokenwarden::providers::{HttpSettings, build_http_client};
use tokenwarden::simulator::harness::{EngineHarness, SeedToken};
use tokenwarden::store::clients::{self, NewClient};

/// The sizes of a run: the real ones, or tiny ones in a smoke run ([`smoke::SMOKE_ENV`]).
struct Sizes {
    /// Tokens tracked in the store.
    tokens: usize,
    /// Concurrent client connections, one measurement each: latency at a given rate depends on
    /// how many requests wait at once, so the figures are a curve, not a point.
    connections: &'static [usize],
    /// How long each measurement runs.
    window: Duration,
}

/// This run's sizes.
static SIZES: LazyLock<Sizes> = LazyLock::new(|| Sizes {
    tokens: smoke::size(100_000, 500),
    connections: smoke::size(&[8, 16, 32], &[2]),
    window: smoke::size(Duration::from_secs(10), Duration::from_millis(500)),
});

/// Rate and latency percentiles of one measured endpoint.
struct Figures {
    rate: f64,
    p50_ms: f64,
    p99_ms: f64,
    errors: usize,
}

/// Hammers `paths` (round robin per connection) for [`Sizes::window`] with `connections` clients.
async fn measure(base: &str, key: &str, paths: Arc<Vec<String>>, connections: usize) -> Figures {
    let stop = Arc::new(AtomicBool::new(false));
    let mut tasks = Vec::new();
    for connection in 0..connections {
        let client = build_http_client(HttpSettings::default()).expect("client");
        let (base, key, paths, stop) = (base.to_owned(), key.to_owned(), paths.clone(), stop.clone());
        tasks.push(tokio::spawn(async move {
            let (mut latencies, mut errors, mut next) = (Vec::new(), 0usize, connection * 7919);
            while !stop.load(Ordering::Relaxed) {
                let path = &paths[next % paths.len()];
                next += connections;
                let started = Instant::now();
                let ok = match client.get(format!("{base}{path}")).bearer_auth(&key).send().await {
                    Ok(response) => response.status().is_success() && response.bytes().await.is_ok(),
                    Err(_) => false,
                };
                latencies.push(started.elapsed());
                errors += usize::from(!ok);
            }
            (latencies, errors)
        }));
    }
    tokio::time::sleep(SIZES.window).await;
    stop.store(true, Ordering::Relaxed);
    let (mut all, mut errors) = (Vec::new(), 0);
    for task in tasks {
        let (latencies, failed) = task.await.expect("load task");
        all.extend(latencies);
        errors += failed;
    }
    all.sort();
    let percentile = |p: f64| all[((all.len() as f64 * p) as usize).min(all.len() - 1)].as_secs_f64() * 1000.0;
    Figures {
        rate: all.len() as f64 / SIZES.window.as_secs_f64(),
        p50_ms: percentile(0.50),
        p99_ms: percentile(0.99),
        errors,
    }
}

#[tokio::main(flavor = "multi_thread")]
async fn main() -> ExitCode {
    let Sizes { tokens, connections: connection_counts, window } = *SIZES;
    if smoke::smoke() {
        println!("smoke run ({}=1): tiny sizes; the figures mean nothing", smoke::SMOKE_ENV);
    }
    let dir = tempfile::tempdir().expect("temp dir");
    let harness =
        EngineHarness::start(dir.path(), Arc::new(SystemClock), EngineSettings::default()).await.expect("harness");
    let expires = Utc::now().date_naive() + Days::new(30);
    let later = Utc::now() + chrono::TimeDelta::days(20);
    let seeds: Vec<SeedToken> =
        (0..tokens).map(|i| SeedToken { name: format!("token-{i:06}"), next_rotation_at: later }).collect();
    let started = Instant::now();
    harness.track_access_tokens_bulk(seeds, expires, false).await.expect("seed");
    println!("seeded {tokens} tokens in {:.1} s", started.elapsed().as_secs_f64());
    let read: Vec<String> = (0..tokens).step_by(7).map(|i| format!("token-{i:06}")).collect();
    let new = NewClient {
        name: "bench-reader".parse().unwrap(),
        role: ClientRole::Reader,
        grants: read.iter().map(|name| name.parse().unwrap()).collect(),
        webhook_url: None,
    };
    let (cipher, now) = (harness.context.cipher.clone(), harness.now());
    let created =
        harness.context.store.run(move |conn| clients::insert(conn, &cipher, &new, None, "bench", now)).await.unwrap();
    let key = created.api_key.expose().to_owned();
    println!("reader client granted the {} tokens it reads", read.len());

    let state = AppState::new(harness.context.store.clone(), harness.context.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, router(state)).await.unwrap() });

    let secrets = Arc::new(read.iter().map(|name| format!("/v1/tokens/{name}/secret")).collect::<Vec<_>>());
    let health = Arc::new(vec!["/healthz".to_owned()]);
    println!(
        "{:.1} s per endpoint and connection count, server and load generator share {} cores",
        window.as_secs_f64(),
        std::thread::available_parallelism().map_or(0, |n| n.get())
    );
    println!("connections  endpoint                      requests/s   p50 ms   p99 ms   errors");
    let verdict = |ok: bool| if ok { "met" } else { "MISSED" };
    let (mut verdicts, mut errors) = (Vec::new(), 0);
    for &connections in connection_counts {
        let healthz = measure(&base, &key, health.clone(), connections).await;
        let reads = measure(&base, &key, secrets.clone(), connections).await;
        for (name, f) in [("GET /healthz", &healthz), ("GET /v1/tokens/{name}/secret", &reads)] {
            println!(
                "{connections:>11}  {name:<29} {:>10.0} {:>8.2} {:>8.2} {:>8}",
                f.rate, f.p50_ms, f.p99_ms, f.errors
            );
        }
        errors += healthz.errors + reads.errors;
        verdicts.push(format!(
            "{connections} connections: reads >= 10000/s: {} | p99 <= 5 ms: {} | reads >= 0.5 x healthz ({:.2} x): {}",
            verdict(reads.rate >= 10_000.0),
            verdict(reads.p99_ms <= 5.0),
            reads.rate / healthz.rate,
            verdict(reads.rate >= 0.5 * healthz.rate)
        ));
    }
    for line in verdicts {
        println!("targets at {line}");
    }
    let audited = harness.context.store.run(|conn| tokenwarden::store::audit::list(conn, None)).await.unwrap();
    let reads_audited = audited.iter().filter(|row| row.action == "token.secret_read").count();
    println!("audit rows for secret reads: {reads_audited} (one per successful read)");
    if smoke::smoke() && errors > 0 {
        eprintln!("api bench failed: {errors} requests failed in a smoke run");
        return ExitCode::FAILURE;
    }
    ExitCode::SUCCESS
}
