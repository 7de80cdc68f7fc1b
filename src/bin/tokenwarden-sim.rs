//! `tokenwarden-sim`: the in-repo GitLab simulator as a process, for manual runs, chaos
//! runs and benchmarks. Seed it and inject faults through `/-/sim/` (see `simulator::admin`).

use std::net::SocketAddr;
use std::sync::Arc;

use clap::Parser;
use tokenwarden::engine::SystemClock;
use tokenwarden::simulator::Simulator;

/// What `--help` says after the options: how to seed the simulator.
const SEEDING: &str = "\
Seeding (JSON bodies, answers in JSON):
  POST /-/sim/access_tokens  {\"owner\":\"project\",\"resource\":\"42\",\"scopes\":[\"api\"],\"expires_at\":\"YYYY-MM-DD\"}
                             owner is personal, project or group (resource: the project or group id)
                             -> {\"id\",\"token\"}
  POST /-/sim/applications   {} -> {\"client_id\",\"client_secret\"} (an OAuth application)
  POST /-/sim/grants         {\"client_id\":\"...\"} -> {\"refresh_token\"} (a user's grant to that application)
  POST /-/sim/redirect_uris  {\"client_id\":\"...\",\"redirect_uri\":\"...\"} (for the consent page, /oauth/authorize)
  PUT  /-/sim/memberships    {\"project\":\"42\",\"access_level\":40} (the user's role: 40 Maintainer, 50 Owner)
  PUT  /-/sim/settings       {\"expires_in\":7200} (lifetime of OAuth access tokens issued from now on, seconds)
  GET  /-/sim/stats          counters: rotations, refreshes, reuse events
  PUT/POST /-/sim/faults     fault rates, or one scripted fault

Point a tokenwarden provider at the printed URL: provider add NAME --kind gitlab --url URL.
It keeps everything in memory and forgets it on exit. See the README's \"Try it in five minutes\".";

/// tokenwarden-sim: a simulated GitLab for tests and demos (never a real GitLab).
///
/// Serves the parts of GitLab's API that tokenwarden uses (access token look-up, rotation and
/// revocation, OAuth refresh, the consent page and the authorization-code grant with PKCE,
/// token info, the current user, CI/CD variables, access and deploy token administration)
/// with GitLab's rules: a rotation revokes the old token at once, a rotated token presented
/// again revokes its family, a refresh token works once, roles and scopes are checked. Seed it with
/// tokens, OAuth applications and grants through its control endpoints under /-/sim/.
#[derive(Debug, Parser)]
#[command(name = "tokenwarden-sim", version, after_long_help = SEEDING)]
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
