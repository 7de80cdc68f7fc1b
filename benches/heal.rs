//! `cargo bench --bench heal`: issue 13's healing target. A managed token (made by `token
//! create`) loses a rotation answer: GitLab rotates it and the answer never arrives. The next
//! attempt may go only after the settle time (2 × the provider timeout), finds the old token dead
//! (`rotation_response_lost`) and heals the token at once through its manager. The bench prints,
//! per token, the time from the lost answer to the healed token being stored, next to the settle
//! time (target: within one settle time of it). It measures; it asserts nothing.
//!
//! `TOKENWARDEN_BENCH_SMOKE=1` heals one token.

use std::error::Error;
use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::Days;
use tokenwarden::domain::{PolicyOverrides, TokenName};
use tokenwarden::engine::create::{CreateRequest, create_token};
use tokenwarden::engine::{EngineSettings, SystemClock, rotate_now};
use tokenwarden::providers::HttpSettings;
use tokenwarden::simulator::harness::EngineHarness;
use tokenwarden::simulator::variables::Namespace;
use tokenwarden::simulator::{Fault, FaultTarget, TokenOwner};

#[path = "common/smoke.rs"]
mod smoke;

type BenchResult<T = ()> = Result<T, Box<dyn Error>>;

fn main() -> BenchResult {
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    runtime.block_on(heals(smoke::size(10, 1)))
}

async fn heals(count: usize) -> BenchResult {
    let dir = tempfile::tempdir()?;
    let settings = EngineSettings {
        http: HttpSettings { timeout: Duration::from_secs(1), connect_timeout: Duration::from_secs(1) },
        ..EngineSettings::default()
    };
    let harness = EngineHarness::start(dir.path(), Arc::new(SystemClock), settings).await?;
    let expires = (chrono::Utc::now() + Days::new(300)).date_naive();
    harness.track_access_token("manager", TokenOwner::Personal, expires).await?;
    harness.sim.with_state(|state| state.memberships.insert(Namespace::Project("42".into()), 40));
    let settle = harness.context.settle().to_std()?;
    let mut elapsed_ms = Vec::new();
    for i in 0..count {
        let name: TokenName = format!("ci-{i:02}").parse()?;
        let request = CreateRequest {
            name: name.clone(),
            provider: "gitlab".parse()?,
            kind: "gitlab-project-access-token".parse()?,
            namespace: tokenwarden::providers::gitlab_admin::Namespace::Project("42".into()),
            manager: "manager".parse()?,
            gitlab_name: None,
            scopes: vec!["api".into()],
            access_level: 30,
            policy: PolicyOverrides::default(),
            overlap: None,
        };
        create_token(&harness.context, request, "bench").await.map_err(|err| err.to_string())?;
        harness.sim.push_fault(FaultTarget::Renewal, Fault::DropAfterCommit);
        let lost = Instant::now();
        rotate_now(&harness.context, &name, "bench").await?;
        rotate_now(&harness.context, &name, "bench").await?;
        let healed = harness.token(name.as_str()).await?;
        if healed.version != 2 || healed.state.as_str() != "active" {
            return Err(format!("{name} was not healed: version {} {}", healed.version, healed.state).into());
        }
        elapsed_ms.push(lost.elapsed().as_secs_f64() * 1000.0);
    }
    elapsed_ms.sort_by(f64::total_cmp);
    let at = |p: f64| elapsed_ms[((elapsed_ms.len() as f64 * p) as usize).min(elapsed_ms.len() - 1)];
    println!("heal after a lost rotation answer, {count} managed tokens (provider timeout 1 s):");
    println!("  settle time                    {:.0} ms", settle.as_secs_f64() * 1000.0);
    println!(
        "  lost answer -> healed, stored  p50 {:.0} ms, max {:.0} ms (of which beyond the settle time: p50 {:.1} ms)",
        at(0.5),
        elapsed_ms[elapsed_ms.len() - 1],
        at(0.5) - settle.as_secs_f64() * 1000.0
    );
    Ok(())
}
