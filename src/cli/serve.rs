//! `tokenwarden serve`: open the store, then serve the API until SIGINT or SIGTERM.

use tokio::net::TcpListener;
use tokio::signal::unix::{SignalKind, signal};
use tracing::info;

use std::sync::Arc;

use super::CliError;
use super::context::{open_cipher, open_store};
use super::engine::{engine_context, limits};
use crate::api::{self, AppState};
use crate::config::Settings;
use crate::engine::{Scheduler, maintenance};

/// Runs the daemon until a shutdown signal arrives.
pub async fn run(settings: Settings) -> Result<(), CliError> {
    let mut terminate =
        signal(SignalKind::terminate()).map_err(|err| CliError::Failed(format!("cannot listen for SIGTERM: {err}")))?;
    let mut interrupt =
        signal(SignalKind::interrupt()).map_err(|err| CliError::Failed(format!("cannot listen for SIGINT: {err}")))?;
    let store = open_store(&settings).await?;
    let cipher = open_cipher(&settings, &store).await?;
    let context = Arc::new(engine_context(&settings, store.clone(), cipher, "serve")?);
    let listener = TcpListener::bind(settings.listen)
        .await
        .map_err(|err| CliError::Failed(format!("cannot listen on {}: {err}", settings.listen)))?;
    let local =
        listener.local_addr().map_err(|err| CliError::Failed(format!("cannot read the listening address: {err}")))?;
    info!(listen = %local, database = %settings.database_url, "tokenwarden is serving");
    let scheduler = Scheduler::new(context.clone(), limits(&settings));
    let scheduler_handle = scheduler.handle();
    let (stop_scheduler, stopped) = tokio::sync::watch::channel(false);
    let scheduler_task = tokio::spawn(scheduler.run(stopped));
    let mut jobs = maintenance::start(&settings.maintenance.sweep, context.clone(), scheduler_handle.clone())
        .await
        .map_err(|err| CliError::Failed(format!("cannot start the maintenance jobs: {err}")))?;
    let app = api::router(AppState { store, engine: context.clone(), scheduler: Some(scheduler_handle.clone()) });
    let shutdown = async move {
        tokio::select! {
            _ = terminate.recv() => info!("SIGTERM received; shutting down"),
            _ = interrupt.recv() => info!("SIGINT received; shutting down"),
        }
    };
    axum::serve(listener, app)
        .with_graceful_shutdown(shutdown)
        .await
        .map_err(|err| CliError::Failed(format!("the API server failed: {err}")))?;
    let _ = stop_scheduler.send(true);
    let _ = jobs.shutdown().await;
    let _ = scheduler_task.await;
    info!("stopped");
    Ok(())
}
