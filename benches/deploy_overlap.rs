//! `cargo bench --bench deploy_overlap`: issue 13's target for deploy tokens, measured on a
//! SQLite store in a temporary directory against the in-repo GitLab simulator on loopback. A
//! deploy token granted to 100 readers is rotated; every reader acknowledges the new version
//! over the API (`POST /v1/tokens/{name}/ack`, all at once); the revocation worker runs as in
//! the daemon. Measured: from the last acknowledgement's answer to the moment GitLab no longer
//! holds the old token (target ≤ 1 s). It measures; it asserts nothing.
//!
//! `TOKENWARDEN_BENCH_SMOKE=1` runs it with 5 readers and one rotation.

use std::error::Error;
use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::{Days, TimeDelta, Utc};
use tokenwarden::api::{AppState, router};
use tokenwarden::domain::{ClientRole, PolicyOverrides, TokenName};
use tokenwarden::engine::create::{CreateRequest, create_token};
use tokenwarden::engine::{EngineSettings, SystemClock, rotate_now};
use tokenwarden::providers::gitlab_admin::Namespace;
use tokenwarden::simulator::TokenOwner;
use tokenwarden::simulator::harness::EngineHarness;
use tokenwarden::simulator::variables::Namespace as SimNamespace;

#[path = "common/smoke.rs"]
mod smoke;

type BenchResult<T = ()> = Result<T, Box<dyn Error>>;

fn main() -> BenchResult {
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    runtime.block_on(overlaps(smoke::size(100, 5), smoke::size(10, 1)))
}

async fn overlaps(readers: usize, rotations: usize) -> BenchResult {
    let dir = tempfile::tempdir()?;
    let harness = EngineHarness::start(dir.path(), Arc::new(SystemClock), EngineSettings::default()).await?;
    let expires = (Utc::now() + Days::new(300)).date_naive();
    harness.track_access_token("manager", TokenOwner::Personal, expires).await?;
    harness.sim.with_state(|state| state.memberships.insert(SimNamespace::Project("42".into()), 40));
    let name: TokenName = "registry".parse()?;
    let request = CreateRequest {
        name: name.clone(),
        provider: "gitlab".parse()?,
        kind: "gitlab-deploy-token".parse()?,
        namespace: Namespace::Project("42".into()),
        manager: "manager".parse()?,
        gitlab_name: None,
        scopes: vec!["read_registry".into()],
        access_level: 0,
        policy: PolicyOverrides::default(),
        overlap: Some(TimeDelta::hours(1)),
    };
    create_token(&harness.context, request, "bench").await.map_err(|err| err.to_string())?;
    let mut keys = Vec::new();
    for i in 0..readers {
        keys.push(harness.add_client(&format!("reader-{i:03}"), ClientRole::Reader, &["registry"], None).await?);
    }
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let url = format!("http://{}/v1/tokens/registry/ack", listener.local_addr()?);
    let state = AppState::new(harness.context.store.clone(), harness.context.clone());
    tokio::spawn(async move { axum::serve(listener, router(state)).await });
    let (_stop, stopped) = tokio::sync::watch::channel(false);
    tokio::spawn(tokenwarden::engine::retire::run(harness.context.clone(), stopped));
    let _ = rustls::crypto::ring::default_provider().install_default();
    let http = reqwest::Client::new();

    let mut after_last_ack_ms = Vec::new();
    let mut ack_spread_ms = Vec::new();
    for _ in 0..rotations {
        let old: u64 = harness.token("registry").await?.external_id.ok_or("no GitLab id")?.parse()?;
        rotate_now(&harness.context, &name, "bench").await?;
        let version = harness.token("registry").await?.version;
        let started = Instant::now();
        let mut acks = tokio::task::JoinSet::new();
        for key in &keys {
            let (http, url, key) = (http.clone(), url.clone(), key.clone());
            acks.spawn(async move {
                let response =
                    http.post(url).bearer_auth(key).json(&serde_json::json!({ "version": version })).send().await;
                response.map(|r| r.status().is_success()).unwrap_or(false)
            });
        }
        while let Some(done) = acks.join_next().await {
            if !done? {
                return Err("an acknowledgement was refused".into());
            }
        }
        let last_ack = Instant::now();
        let gone = loop {
            let held = harness.sim.with_state(|state| {
                state.deploy_tokens_of(&SimNamespace::Project("42".into())).iter().any(|t| t.id == old)
            });
            if !held {
                break Instant::now();
            }
            if last_ack.elapsed() > Duration::from_secs(30) {
                return Err("the old token was not revoked within 30 s of the last acknowledgement".into());
            }
            tokio::time::sleep(Duration::from_millis(1)).await;
        };
        ack_spread_ms.push((last_ack - started).as_secs_f64() * 1000.0);
        after_last_ack_ms.push((gone - last_ack).as_secs_f64() * 1000.0);
    }
    after_last_ack_ms.sort_by(f64::total_cmp);
    let at =
        |p: f64| after_last_ack_ms[((after_last_ack_ms.len() as f64 * p) as usize).min(after_last_ack_ms.len() - 1)];
    println!("deploy token rotation, {readers} readers acknowledging over the API, {rotations} rotations:");
    ack_spread_ms.sort_by(f64::total_cmp);
    println!("  all acknowledgements answered in  p50 {:.1} ms", ack_spread_ms[ack_spread_ms.len() / 2]);
    println!(
        "  last acknowledgement -> old token revoked at GitLab  p50 {:.1} ms, max {:.1} ms (target <= 1000 ms)",
        at(0.5),
        after_last_ack_ms[after_last_ack_ms.len() - 1]
    );
    Ok(())
}
