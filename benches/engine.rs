//! `cargo bench --bench engine`: the real rotation engine against the in-repo GitLab simulator
//! on loopback, with a fresh SQLite store per run, printing figures next to their targets.
//! It measures; it asserts nothing. `docs/BENCHMARKS.md` explains every figure.
//!
//! Each phase runs in a child process of this binary (re-executed with `TOKENWARDEN_BENCH_PHASE`
//! set), so a phase's CPU time and memory are its own and not what an earlier phase left
//! behind. Name phases to run only those: `cargo bench --bench engine -- idle`.
//! `TOKENWARDEN_BENCH_SMOKE=1` runs every phase at tiny sizes in seconds (`benches/common/smoke.rs`).

use std::error::Error;
use std::io::{BufRead, BufReader};
use std::process::{Command, ExitCode, Stdio};
use std::sync::{Arc, LazyLock};
use std::time::{Duration, Instant};

use chrono::{DateTime, Days, NaiveDate, TimeDelta, Timelike, Utc};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tokio_cron_scheduler::JobScheduler;

use tokenwarden::config::MaintenanceConfig;
use tokenwarden::engine::maintenance::MaintenanceContext;
use tokenwarden::engine::scheduler::WINDOW_HORIZON;
use tokenwarden::engine::window::WINDOW_SIZE;
use tokenwarden::engine::{
    EngineSettings, Limits, RotationOutcome, RotationReport, Scheduler, SchedulerHandle, SystemClock, maintenance,
};
use tokenwarden::simulator::FaultRates;
use tokenwarden::simulator::harness::{EngineHarness, SeedToken};
use tokenwarden::store::rotation;

#[path = "common/smoke.rs"]
mod smoke;

type BenchResult<T = ()> = Result<T, Box<dyn Error>>;

/// Set in a child process to the phase it runs.
const PHASE_ENV: &str = "TOKENWARDEN_BENCH_PHASE";
/// Prefix of the lines a child prints for the final summary.
const RESULT_PREFIX: &str = "RESULT\t";
/// The phases, in the order they run.
const PHASES: [&str; 3] = ["lag", "throughput", "idle"];

/// Tokens written per write transaction while seeding.
const SEED_CHUNK: usize = 10_000;
/// Longest wait for the due tokens after the last of them is due.
const LAG_GRACE: Duration = Duration::from_secs(90);

/// Simulator latency in the throughput phase.
const LATENCY_MS: u64 = 50;
/// Longest a throughput run may take.
const THROUGHPUT_DEADLINE: Duration = Duration::from_secs(60);

/// The sizes of a run: the real ones, or tiny ones in a smoke run ([`smoke::SMOKE_ENV`]).
#[derive(Clone, Copy)]
struct Sizes {
    /// Tokens tracked in the lag and idle phases.
    tracked: usize,
    /// Tokens due within the same minute in the lag phase.
    due_in_minute: usize,
    /// How long after seeding the first of the due tokens is due.
    first_due_after: TimeDelta,
    /// The window the due tokens are spread over.
    due_window: TimeDelta,
    /// The concurrency limits measured.
    concurrency_levels: &'static [usize],
    /// Due tokens per unit of concurrency (≈ 7.5 s of work at the limit in a real run).
    tokens_per_slot: usize,
    /// Settling time before the idle CPU window.
    idle_warmup: Duration,
    /// The idle CPU window.
    idle_window: Duration,
}

/// This run's sizes.
static SIZES: LazyLock<Sizes> = LazyLock::new(|| Sizes {
    tracked: smoke::size(100_000, 500),
    due_in_minute: smoke::size(10_000, 50),
    first_due_after: smoke::size(TimeDelta::seconds(5), TimeDelta::seconds(1)),
    due_window: smoke::size(TimeDelta::seconds(60), TimeDelta::seconds(1)),
    concurrency_levels: smoke::size(&[8, 32, 64], &[2, 4]),
    tokens_per_slot: smoke::size(150, 5),
    idle_warmup: smoke::size(Duration::from_secs(3), Duration::from_millis(200)),
    idle_window: smoke::size(Duration::from_secs(10), Duration::from_secs(1)),
});

/// Target: rotation lag p99, in milliseconds.
const LAG_P99_TARGET_MS: f64 = 50.0;
/// Target: rotations per second as a share of `concurrency / latency`.
const THROUGHPUT_TARGET_RATIO: f64 = 0.9;
/// Target: idle CPU, in percent of one core.
const IDLE_CPU_TARGET_PERCENT: f64 = 0.5;
/// Target: idle resident memory, in MB.
const RSS_TARGET_MB: f64 = 64.0;

fn main() -> ExitCode {
    let outcome = match std::env::var(PHASE_ENV) {
        Ok(phase) => run_phase(&phase),
        Err(_) => orchestrate(),
    };
    match outcome {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("engine bench failed: {err}");
            ExitCode::FAILURE
        }
    }
}

// ---------------------------------------------------------------------------------------------
// The parent: machine, phases in child processes, summary.
// ---------------------------------------------------------------------------------------------

/// Prints the machine, runs the wanted phases in child processes (echoing their output) and
/// prints the summary from their `RESULT` lines.
fn orchestrate() -> BenchResult {
    let wanted: Vec<String> = std::env::args().skip(1).filter(|arg| !arg.starts_with('-')).collect();
    let phases: Vec<&str> = PHASES.into_iter().filter(|p| wanted.is_empty() || wanted.iter().any(|w| w == p)).collect();
    if phases.is_empty() {
        return Err(format!("no such phase in {wanted:?}; phases are {PHASES:?}").into());
    }
    let started = Instant::now();
    println!("tokenwarden engine benchmark: real engine, in-repo GitLab simulator on 127.0.0.1, SQLite");
    if smoke::smoke() {
        println!("smoke run ({}=1): every phase at tiny sizes; the figures mean nothing", smoke::SMOKE_ENV);
    }
    println!("machine: {}", machine());
    let mut results = Vec::new();
    for phase in phases {
        println!();
        let mut child = Command::new(std::env::current_exe()?)
            .env(PHASE_ENV, phase)
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()?;
        let stdout = child.stdout.take().ok_or("no stdout from the phase")?;
        for line in BufReader::new(stdout).lines() {
            let line = line?;
            match line.strip_prefix(RESULT_PREFIX) {
                Some(result) => results.push(result.to_owned()),
                None => println!("{line}"),
            }
        }
        let status = child.wait()?;
        if !status.success() {
            return Err(format!("phase '{phase}' failed ({status})").into());
        }
    }
    println!();
    println!(
        "summary ({:.0} s in all; load average now {}, of which the bench itself is about 1)",
        started.elapsed().as_secs_f64(),
        load_average()
    );
    println!("  {:<40} {:>22}   {:<18} verdict", "figure", "measured", "target");
    for result in results {
        let fields: Vec<&str> = result.split('\t').collect();
        if let [figure, measured, target, verdict] = fields.as_slice() {
            println!("  {figure:<40} {measured:>22}   {target:<18} {verdict}");
        }
    }
    Ok(())
}

/// The 1, 5 and 15 minute load averages, from `/proc/loadavg`.
fn load_average() -> String {
    let text = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    text.split_whitespace().take(3).collect::<Vec<_>>().join(" ")
}

/// CPUs, CPU model, memory, kernel and load average, from /proc.
fn machine() -> String {
    let cpus = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0);
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let model = cpuinfo
        .lines()
        .find_map(|line| line.strip_prefix("model name").and_then(|rest| rest.split(':').nth(1)))
        .map_or("unknown CPU", str::trim)
        .to_owned();
    let memory_kb = proc_field("/proc/meminfo", "MemTotal:").unwrap_or(0);
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    format!(
        "{cpus} CPUs ({model}), {:.1} GiB RAM, Linux {}, tokio workers = {cpus}; load average before the run {} \
         (other work on the machine skews every figure)",
        memory_kb as f64 / 1024.0 / 1024.0,
        kernel.trim(),
        load_average()
    )
}

// ---------------------------------------------------------------------------------------------
// A child: one phase on its own runtime.
// ---------------------------------------------------------------------------------------------

/// Runs one phase on a fresh multi-thread runtime, as `tokenwarden serve` builds it.
fn run_phase(phase: &str) -> BenchResult {
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    let outcome = runtime.block_on(async {
        match phase {
            "lag" => lag_phase().await,
            "throughput" => throughput_phase().await,
            "idle" => idle_phase().await,
            other => Err(format!("unknown phase '{other}'").into()),
        }
    });
    runtime.shutdown_timeout(Duration::from_secs(5));
    outcome
}

/// One line for the summary: figure, measured value, target, and whether it was met (`None`
/// for figures without a target).
fn result(figure: &str, measured: String, target: &str, met: Option<bool>) {
    let verdict = match met {
        Some(true) => "met",
        Some(false) => "MISSED",
        None => "-",
    };
    println!("{RESULT_PREFIX}{figure}\t{measured}\t{target}\t{verdict}");
}

/// A fresh SQLite store in a temporary directory, a simulator and an engine context.
async fn start_harness() -> BenchResult<(tempfile::TempDir, EngineHarness)> {
    let dir = tempfile::tempdir()?;
    let harness = EngineHarness::start(dir.path(), Arc::new(SystemClock), EngineSettings::default()).await?;
    Ok((dir, harness))
}

/// Tracks `count` personal access tokens named `{prefix}-{i}`, due at `due(i)`, in write
/// transactions of [`SEED_CHUNK`] tokens.
async fn seed(
    harness: &EngineHarness,
    prefix: &str,
    count: usize,
    due: impl Fn(usize) -> DateTime<Utc>,
    at_simulator: bool,
) -> BenchResult {
    let expires_on = expires_on();
    for start in (0..count).step_by(SEED_CHUNK) {
        let seeds = (start..(start + SEED_CHUNK).min(count))
            .map(|i| SeedToken { name: format!("{prefix}-{i:06}"), next_rotation_at: due(i) })
            .collect();
        harness.track_access_tokens_bulk(seeds, expires_on, at_simulator).await?;
    }
    Ok(())
}

/// Seeded tokens expire in 30 days (the default GitLab lifetime).
fn expires_on() -> NaiveDate {
    let today = Utc::now().date_naive();
    today.checked_add_days(Days::new(30)).unwrap_or(today)
}

/// Due between 1 and 29 days from now, spread evenly: never due during the benchmark.
fn far_future(now: DateTime<Utc>, i: usize, count: usize) -> DateTime<Utc> {
    let spread_ms = TimeDelta::days(28).num_milliseconds() as f64;
    now + TimeDelta::days(1) + TimeDelta::milliseconds((spread_ms * i as f64 / count as f64) as i64)
}

/// The engine as `tokenwarden serve` runs it: the scheduler and the maintenance sweep (default
/// schedule, every minute), with the scheduler's report stream.
struct Running {
    reports: mpsc::UnboundedReceiver<RotationReport>,
    handle: SchedulerHandle,
    stop: watch::Sender<bool>,
    task: JoinHandle<()>,
    jobs: JobScheduler,
}

/// What the maintenance jobs need, as `serve` builds it (without a webhook dispatcher).
fn maintenance_context(harness: &EngineHarness, handle: &SchedulerHandle) -> MaintenanceContext {
    MaintenanceContext {
        engine: harness.context.clone(),
        scheduler: handle.clone(),
        deliveries: None,
        audit_retention: TimeDelta::days(365),
    }
}

/// Starts the scheduler (reporting every attempt) and the maintenance jobs.
async fn start_engine(harness: &EngineHarness, limits: Limits) -> BenchResult<Running> {
    let (sender, reports) = mpsc::unbounded_channel();
    let (stop, stopped) = watch::channel(false);
    let scheduler = Scheduler::new(harness.context.clone(), limits).with_reports(sender);
    let handle = scheduler.handle();
    let task = tokio::spawn(scheduler.run(stopped));
    let jobs = maintenance::start(&MaintenanceConfig::default(), maintenance_context(harness, &handle)).await?;
    Ok(Running { reports, handle, stop, task, jobs })
}

impl Running {
    /// Stops the maintenance jobs and the scheduler loop.
    async fn stop(mut self) {
        let _ = self.jobs.shutdown().await;
        let _ = self.stop.send(true);
        let _ = tokio::time::timeout(Duration::from_secs(5), self.task).await;
    }
}

/// How attempts ended: rotations counted, anything else counted with a few examples.
#[derive(Debug, Default)]
struct Outcomes {
    rotated: usize,
    other: usize,
    examples: Vec<String>,
}

impl Outcomes {
    /// Counts one attempt.
    fn add(&mut self, report: &RotationReport) {
        if let RotationOutcome::Rotated { .. } = report.outcome {
            self.rotated += 1;
            return;
        }
        self.other += 1;
        if self.examples.len() < 3 {
            self.examples.push(format!("{}: {:?}", report.token, report.outcome));
        }
    }

    /// One line: how many rotated, and what else happened.
    fn describe(&self) -> String {
        if self.other == 0 {
            return format!("{} rotated, nothing else", self.rotated);
        }
        format!("{} rotated, {} other outcomes, e.g. {}", self.rotated, self.other, self.examples.join("; "))
    }
}

// ---------------------------------------------------------------------------------------------
// (a) Rotation lag and commit gap: 100,000 tracked, 10,000 due within one minute.
// ---------------------------------------------------------------------------------------------

/// Lag and commit gap with 100,000 tracked and 10,000 due within one minute.
async fn lag_phase() -> BenchResult {
    let Sizes { tracked, due_in_minute, first_due_after, due_window, .. } = *SIZES;

    let limits = Limits::default();
    println!(
        "(a) rotation lag: {tracked} tokens tracked, {due_in_minute} due within one minute; real clock, no \
         simulator latency, default limits ({} overall, {} per provider), maintenance sweep every minute",
        limits.max_concurrency, limits.per_provider
    );
    let (_dir, harness) = start_harness().await?;
    let seeding = Instant::now();
    let background = tracked - due_in_minute;
    let now = Utc::now();
    seed(&harness, "idle", background, |i| far_future(now, i, background), true).await?;
    let first_due = Utc::now() + first_due_after;
    let spacing = due_window / i32::try_from(due_in_minute)?;
    let due_at = |i: usize| first_due + spacing * i32::try_from(i).unwrap_or(i32::MAX);
    seed(&harness, "due", due_in_minute, due_at, true).await?;
    println!("    seeded {tracked} tokens (store and simulator) in {:.1} s", seeding.elapsed().as_secs_f64());

    let started_at = Utc::now();
    let mut running = start_engine(&harness, limits).await?;
    let last_due = due_at(due_in_minute - 1);
    println!(
        "    engine started; first token due {:.1} s later, last {:.1} s later (one every {} ms)",
        seconds(first_due - started_at),
        seconds(last_due - started_at),
        spacing.num_milliseconds()
    );
    let (cpu_before, wall) = (cpu_seconds()?, Instant::now());
    let deadline = tokio::time::Instant::now() + (last_due - Utc::now()).to_std().unwrap_or_default() + LAG_GRACE;
    let mut lags_ms = Vec::with_capacity(due_in_minute);
    let mut gaps_ms = Vec::with_capacity(due_in_minute);
    let mut outcomes = Outcomes::default();
    while outcomes.rotated < due_in_minute {
        let Ok(Some(report)) = tokio::time::timeout_at(deadline, running.reports.recv()).await else {
            println!("    gave up waiting: only {} of {due_in_minute} rotated", outcomes.rotated);
            break;
        };
        if let Some(planned_at) = report.planned_at {
            lags_ms.push(millis(report.started_at - planned_at));
        }
        if let Some(gap) = report.commit_gap {
            gaps_ms.push(gap.as_secs_f64() * 1000.0);
        }
        outcomes.add(&report);
    }
    let finished = Utc::now();
    let cpu_percent = 100.0 * (cpu_seconds()? - cpu_before) / wall.elapsed().as_secs_f64();
    running.stop().await;
    let stats = harness.sim.stats();

    println!("    outcomes: {}", outcomes.describe());
    println!(
        "    simulator: {} rotations, {} look-ups, {} family revocations",
        stats.rotations, stats.lookups, stats.family_revocations
    );
    println!(
        "    the last rotation finished {:.2} s after the last token was due; process CPU while rotating: {:.0} % \
         of one core",
        seconds(finished - last_due),
        cpu_percent
    );
    let lag = Percentiles::of(&mut lags_ms);
    let gap = Percentiles::of(&mut gaps_ms);
    println!("    rotation lag (started_at - planned_at), {} attempts:", lag.count);
    println!("        {}   target: p99 <= {LAG_P99_TARGET_MS} ms", lag.show());
    println!("    commit gap (provider's answer -> result committed), {} rotations:", gap.count);
    println!("        {}", gap.show());
    result(
        "rotation lag p99 (10k due in 1 min)",
        format!("{:.1} ms", lag.p99),
        "<= 50 ms",
        Some(lag.p99 <= LAG_P99_TARGET_MS),
    );
    result("rotation lag p50 / max", format!("{:.1} / {:.1} ms", lag.p50, lag.max), "", None);
    result("commit gap p50 / p99 / max", format!("{:.2} / {:.1} / {:.1} ms", gap.p50, gap.p99, gap.max), "", None);
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// (b) Throughput at 50 ms simulator latency.
// ---------------------------------------------------------------------------------------------

/// Rotations per second at 50 ms simulator latency for each concurrency limit.
async fn throughput_phase() -> BenchResult {
    let Sizes { concurrency_levels, tokens_per_slot, .. } = *SIZES;

    println!(
        "(b) throughput: simulator latency {LATENCY_MS} ms on every request; {tokens_per_slot} x concurrency \
         tokens, all due at once; a fresh store per run"
    );
    println!(
        "    {:>11} {:>7} {:>12} {:>12} {:>6} {:>13} {:>9} {:>10} {:>6}   outcomes",
        "concurrency", "tokens", "rotations/s", "limit c/lat", "ratio", "attempt p50", "requests", "ratio/req", "CPU"
    );
    for &concurrency in concurrency_levels {
        let (_dir, harness) = start_harness().await?;
        harness.sim.set_rates(FaultRates { latency_ms: LATENCY_MS, ..FaultRates::default() });
        let count = tokens_per_slot * concurrency;
        let now = Utc::now();
        seed(&harness, "due", count, |_| now, true).await?;

        let (cpu_before, started) = (cpu_seconds()?, Instant::now());
        let limits = Limits { max_concurrency: concurrency, per_provider: concurrency };
        let mut running = start_engine(&harness, limits).await?;
        let deadline = tokio::time::Instant::now() + THROUGHPUT_DEADLINE;
        let mut outcomes = Outcomes::default();
        let mut attempts_ms = Vec::with_capacity(count);
        let mut last_rotation = started;
        while outcomes.rotated < count {
            let Ok(Some(report)) = tokio::time::timeout_at(deadline, running.reports.recv()).await else {
                break;
            };
            attempts_ms.push(millis(Utc::now() - report.started_at));
            outcomes.add(&report);
            if let RotationOutcome::Rotated { .. } = report.outcome {
                last_rotation = Instant::now();
            }
        }
        let elapsed = last_rotation.duration_since(started).as_secs_f64();
        let cpu_percent = 100.0 * (cpu_seconds()? - cpu_before) / elapsed;
        running.stop().await;
        let stats = harness.sim.stats();
        let requests = (stats.rotations + stats.lookups) as f64 / stats.rotations.max(1) as f64;
        let rate = outcomes.rotated as f64 / elapsed;
        let limit = concurrency as f64 * 1000.0 / LATENCY_MS as f64;
        let ratio = rate / limit;
        let attempt = Percentiles::of(&mut attempts_ms);
        println!(
            "    {concurrency:>11} {count:>7} {rate:>12.0} {limit:>12.0} {ratio:>6.2} {:>10.1} ms {requests:>9.2} \
             {:>10.2} {cpu_percent:>5.0}%   {}",
            attempt.p50,
            ratio * requests,
            outcomes.describe()
        );
        result(
            &format!("throughput, concurrency {concurrency}"),
            format!("{rate:.0}/s = {ratio:.2} x"),
            &format!(">= {:.0}/s (0.9 x)", THROUGHPUT_TARGET_RATIO * limit),
            Some(ratio >= THROUGHPUT_TARGET_RATIO),
        );
    }
    println!(
        "    limit = concurrency / latency; attempt = claim, provider requests, commit (from the report's \
         started_at to its arrival); requests = simulator requests per rotation, made one after the other, so \
         the ceiling is c / (requests x latency) and ratio/req = rotations/s against it; CPU = this process \
         (engine and simulator), % of one core"
    );
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// (c) Idle CPU and memory: 100,000 tracked, none due.
// ---------------------------------------------------------------------------------------------

/// Idle CPU and memory with 100,000 tracked and none due.
async fn idle_phase() -> BenchResult {
    let Sizes { tracked, idle_warmup, idle_window, .. } = *SIZES;

    println!(
        "(c) idle: {tracked} tokens tracked in the store (due in 1 to 29 days), none due; scheduler and \
         maintenance sweep (every minute) running; CPU over {} s after {} s of settling",
        idle_window.as_secs(),
        idle_warmup.as_secs()
    );
    let (_dir, harness) = start_harness().await?;
    let empty = Memory::now()?;
    let now = Utc::now();
    let seeding = Instant::now();
    seed(&harness, "idle", tracked, |i| far_future(now, i, tracked), false).await?;
    println!("    seeded {tracked} tokens (store only) in {:.1} s", seeding.elapsed().as_secs_f64());
    let seeded = Memory::now()?;

    let mut running = start_engine(&harness, Limits::default()).await?;
    tokio::time::sleep(idle_warmup).await;
    tokio::time::sleep(wait_for_window_between_sweeps(idle_window)).await;
    let (ticks_before, threads_before, wall) = (cpu_seconds()?, thread_cpu(), Instant::now());
    tokio::time::sleep(idle_window).await;
    let window = wall.elapsed().as_secs_f64();
    let window_percent = 100.0 * (cpu_seconds()? - ticks_before) / window;
    let threads_percent = 100.0 * thread_cpu_since(&threads_before) / window;
    let idle = Memory::now()?;
    let rotations = std::iter::from_fn(|| running.reports.try_recv().ok()).count();
    let last_pass = running.handle.last_tick().map_or(f64::NAN, |tick| seconds(Utc::now() - tick));
    let costs = idle_costs(&harness, &running.handle).await?;
    running.stop().await;

    let sweep_percent = 100.0 * costs.sweep_ms / 60_000.0;
    let total = window_percent + sweep_percent;
    println!(
        "    CPU in the window (scheduler passes, no sweep): {window_percent:.2} % of one core from /proc/self/stat \
         (1 tick = {:.2} %), {threads_percent:.3} % from the threads' schedstat; rotations: {rotations}; last \
         scheduler pass {last_pass:.2} s before the window ended",
        100.0 / clock_ticks_per_second() / window
    );
    println!(
        "    the minute's sweep (rotation::expire_overdue) takes {:.1} ms = {sweep_percent:.3} % of a core amortised; \
         idle total {total:.2} %",
        costs.sweep_ms
    );
    println!(
        "    an idle scheduler looks for changes once a second ({:.3} ms: PRAGMA data_version on its own \
         connection) and reads its window of {WINDOW_SIZE} next-due tokens only after a change ({:.3} ms on \
         {tracked} rows, through the tokens_due index)",
        costs.change_check_ms, costs.window_read_ms
    );
    println!("    memory (VmRSS = RssAnon + RssFile + RssShmem; VmHWM = peak RSS):");
    println!("        engine + empty simulator, empty store:  {}", empty.show());
    println!("        after seeding {tracked} tokens:        {}", seeded.show());
    println!("        after {:>2} s idle:                      {}", (idle_warmup + idle_window).as_secs(), idle.show());
    println!(
        "    the process holds the tokio runtime (2 workers + blocking threads), the engine (scheduler, maintenance \
         jobs, reqwest client, r2d2 pool of up to 8 SQLite connections with their page caches), an empty \
         simulator (axum on loopback) and the bench; the seeding ran in this process before the engine started"
    );

    result(
        "idle CPU (100k tracked, none due)",
        format!("{total:.2} %"),
        "<= 0.5 % of a core",
        Some(total <= IDLE_CPU_TARGET_PERCENT),
    );
    let rss_mb = idle.rss_kb as f64 / 1024.0;
    result("RSS, idle (100k tracked)", format!("{rss_mb:.1} MB"), "<= 64 MB", Some(rss_mb <= RSS_TARGET_MB));
    Ok(())
}

/// How long to wait so that a window of `length` starting then holds no sweep: the sweep
/// fires at second 0 of every minute, and the window keeps two seconds clear of it.
fn wait_for_window_between_sweeps(length: Duration) -> Duration {
    let now = Utc::now();
    let second = f64::from(now.second()) + f64::from(now.nanosecond()) / 1e9;
    let (earliest, latest) = (2.0, 58.0 - length.as_secs_f64());
    if (earliest..=latest).contains(&second) {
        return Duration::ZERO;
    }
    let wait = if second < earliest { earliest - second } else { 60.0 - second + earliest };
    Duration::from_secs_f64(wait)
}

/// What the idle engine's periodic work costs, timed directly (mean of a few runs).
struct IdleCosts {
    change_check_ms: f64,
    window_read_ms: f64,
    sweep_ms: f64,
}

/// Times the scheduler's once-a-second change check, a read of its window (what follows a
/// change), and one maintenance sweep.
async fn idle_costs(harness: &EngineHarness, handle: &SchedulerHandle) -> BenchResult<IdleCosts> {
    const RUNS: u32 = 20;
    const SWEEPS: u32 = 3;
    let mut watch = {
        let store = harness.context.store.clone();
        tokio::task::spawn_blocking(move || store.watch_changes()).await??
    };
    let change_check_ms = tokio::task::spawn_blocking(move || {
        let started = Instant::now();
        for _ in 0..RUNS {
            watch.changed()?;
        }
        Ok::<_, tokenwarden::store::StoreError>(started.elapsed().as_secs_f64() * 1000.0 / f64::from(RUNS))
    })
    .await??;
    let horizon = Utc::now() + WINDOW_HORIZON;
    let window_read_ms = harness
        .context
        .store
        .run(move |conn| {
            let started = Instant::now();
            for _ in 0..RUNS {
                rotation::due_by(conn, horizon, WINDOW_SIZE, &[])?;
            }
            Ok(started.elapsed().as_secs_f64() * 1000.0 / f64::from(RUNS))
        })
        .await?;
    let context = maintenance_context(harness, handle);
    let started = Instant::now();
    for _ in 0..SWEEPS {
        maintenance::sweep(&context).await;
    }
    let sweep_ms = started.elapsed().as_secs_f64() * 1000.0 / f64::from(SWEEPS);
    Ok(IdleCosts { change_check_ms, window_read_ms, sweep_ms })
}

// ---------------------------------------------------------------------------------------------
// Measurement helpers.
// ---------------------------------------------------------------------------------------------

/// p50, p99 and max of a sample, in milliseconds (nearest rank).
struct Percentiles {
    count: usize,
    p50: f64,
    p99: f64,
    max: f64,
}

impl Percentiles {
    /// Sorts `values` and takes the percentiles (NaN when empty).
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

    /// `p50 … p99 … max …`.
    fn show(&self) -> String {
        format!("p50 {:8.2} ms   p99 {:8.2} ms   max {:8.2} ms", self.p50, self.p99, self.max)
    }
}

/// A time span in milliseconds, with microsecond precision.
fn millis(delta: TimeDelta) -> f64 {
    delta.num_microseconds().map_or(f64::NAN, |us| us as f64 / 1000.0)
}

/// A time span in seconds.
fn seconds(delta: TimeDelta) -> f64 {
    millis(delta) / 1000.0
}

/// This process's CPU time (user + system), from `/proc/self/stat`.
fn cpu_seconds() -> BenchResult<f64> {
    let stat = std::fs::read_to_string("/proc/self/stat")?;
    // Fields after the command name (which may hold spaces) start at field 3 (`state`);
    // utime and stime are fields 14 and 15.
    let after_name = stat.rsplit_once(')').map(|(_, rest)| rest).ok_or("unreadable /proc/self/stat")?;
    let fields: Vec<&str> = after_name.split_whitespace().collect();
    let ticks = |index: usize| -> BenchResult<f64> {
        Ok(fields.get(index).ok_or("short /proc/self/stat")?.parse::<u64>()? as f64)
    };
    Ok((ticks(11)? + ticks(12)?) / clock_ticks_per_second())
}

/// `getconf CLK_TCK` (100 on Linux, whatever the kernel's HZ).
fn clock_ticks_per_second() -> f64 {
    Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|out| String::from_utf8(out.stdout).ok())
        .and_then(|text| text.trim().parse::<f64>().ok())
        .unwrap_or(100.0)
}

/// CPU time of each live thread of this process, in nanoseconds (first field of
/// `/proc/self/task/<tid>/schedstat`), by thread id.
fn thread_cpu() -> std::collections::HashMap<String, u64> {
    let Ok(tasks) = std::fs::read_dir("/proc/self/task") else {
        return std::collections::HashMap::new();
    };
    tasks
        .filter_map(Result::ok)
        .filter_map(|task| {
            let text = std::fs::read_to_string(task.path().join("schedstat")).ok()?;
            let nanos = text.split_whitespace().next()?.parse().ok()?;
            Some((task.file_name().to_string_lossy().into_owned(), nanos))
        })
        .collect()
}

/// Seconds of CPU the threads alive now used since `before` (threads that ended meanwhile are
/// not counted; the idle engine keeps its threads).
fn thread_cpu_since(before: &std::collections::HashMap<String, u64>) -> f64 {
    let nanos: u64 =
        thread_cpu().iter().map(|(tid, now)| now.saturating_sub(before.get(tid).copied().unwrap_or(0))).sum();
    nanos as f64 / 1e9
}

/// A value in kB from a `/proc` file of `Name:   123 kB` lines.
fn proc_field(path: &str, name: &str) -> Option<u64> {
    let text = std::fs::read_to_string(path).ok()?;
    text.lines().find_map(|line| line.strip_prefix(name)?.split_whitespace().next()?.parse().ok())
}

/// Resident memory from `/proc/self/status`, in kB.
struct Memory {
    rss_kb: u64,
    anon_kb: u64,
    file_kb: u64,
    peak_kb: u64,
}

impl Memory {
    /// This process's memory now.
    fn now() -> BenchResult<Self> {
        let field =
            |name| proc_field("/proc/self/status", name).ok_or_else(|| format!("no {name} in /proc/self/status"));
        Ok(Self {
            rss_kb: field("VmRSS:")?,
            anon_kb: field("RssAnon:")?,
            file_kb: field("RssFile:")?,
            peak_kb: field("VmHWM:")?,
        })
    }

    /// RSS, its anonymous and file-backed parts, and the peak, in MB.
    fn show(&self) -> String {
        let mb = |kb: u64| kb as f64 / 1024.0;
        format!(
            "VmRSS {:5.1} MB (anon {:5.1}, file {:4.1})  VmHWM {:5.1} MB",
            mb(self.rss_kb),
            mb(self.anon_kb),
            mb(self.file_kb),
            mb(self.peak_kb)
        )
    }
}
