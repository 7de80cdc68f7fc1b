//! `tokenwarden-sim`: the in-repo GitLab simulator as a process, for manual runs, chaos
//! runs and benchmarks. Seed it and inject faults through `/-/sim/` (see `simulator::admin`).

use std::net::SocketAddr;
use std::sync::Arc;

use clap::Parser;
use tokenwarden::engine::SystemClock;
use tokenwarden::simulator::Simulator;

/// Runs a simulated GitLab until SIGINT or SIGTERM.
#[derive(Debug, Parser)]
#[command(name = "tokenwarden-sim", version, about)]
struct Args {
    /// Address to listen on (loopback only unless you mean it).
    #[arg(long, default_value = "127.0.0.1:8929")]
    listen: SocketAddr,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt().with_env_filter(tracing_subscriber::EnvFilter::from_default_env()).init();
    let args = Args::parse();
    let simulator = Simulator::bind(args.listen, Arc::new(SystemClock)).await?;
    println!("{}", simulator.url());
    let mut terminate = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = terminate.recv() => {}
    }
    Ok(())
}
