//! `tokenwarden serve`: open the store, then run the scheduler, the webhook dispatcher, the
//! maintenance jobs, the metrics' change watch and the API until SIGINT or SIGTERM.

use std::sync::Arc;

use tokio::net::TcpListener;
use tokio::signal::unix::{SignalKind, signal};
use tracing::{error, info, warn};

use super::CliError;
use super::context::{KeyCreation, create_store, created_key_file, created_key_notice, open_cipher};
use super::engine::{engine_context, limits};
use super::systemd;
use crate::api::tls::ReloadableTls;
use crate::api::{self, AppState};
use crate::config::Settings;
use crate::engine::maintenance::{self, MaintenanceContext};
use crate::engine::metrics_watch;
use crate::engine::{Scheduler, SystemClock};
use crate::notify::Dispatcher;
use crate::sinks::dispatcher::SinkDispatcher;
use crate::telemetry::metrics;

/// Runs the daemon until a shutdown signal arrives.
pub async fn run(settings: Settings) -> Result<(), CliError> {
    let failed = |what: &str| {
        let what = what.to_owned();
        move |err: std::io::Error| CliError::Failed(format!("{what}: {err}"))
    };
    let mut terminate = signal(SignalKind::terminate()).map_err(failed("cannot listen for SIGTERM"))?;
    let mut interrupt = signal(SignalKind::interrupt()).map_err(failed("cannot listen for SIGINT"))?;
    if settings.tls.is_none() && !settings.allow_plaintext && api::listener::exposes_plaintext(settings.listen) {
        return Err(CliError::Usage(format!(
            "refusing to serve plain HTTP on {}, outside loopback: API keys and secrets would cross the network in clear \
             text; set tls_cert_file and tls_key_file, or allow_plaintext = true behind a proxy that terminates TLS",
            settings.listen
        )));
    }
    let tls =
        settings.tls.clone().map(ReloadableTls::load).transpose().map_err(|err| CliError::Usage(err.to_string()))?;
    let mut hangup = signal(SignalKind::hangup()).map_err(failed("cannot listen for SIGHUP"))?;
    let metrics_handle = metrics::install().map_err(CliError::Failed)?;
    // The address first: a busy port is the likeliest failure, and it should stop the daemon
    // before anything (the database, a new master key) is created.
    let listener = TcpListener::bind(settings.listen)
        .await
        .map_err(|err| CliError::Failed(format!("cannot listen on {}: {err}", settings.listen)))?;
    let local = listener.local_addr().map_err(failed("cannot read the listening address"))?;
    // The store holds its lock file until the daemon exits: `restore` refuses to replace it.
    let store = create_store(&settings).await?;
    let cipher = open_cipher(&settings, &store, KeyCreation::Allowed).await?;
    if let Some(path) = created_key_file() {
        warn!(path = %path.display(), "{}", created_key_notice(&path));
    }
    let context = Arc::new(engine_context(&settings, store.clone(), cipher, "serve")?);
    let scheme = if tls.is_some() { "https" } else { "http" };
    info!(listen = %local, scheme, database = %settings.database_url, "tokenwarden is serving");
    let reloads = tls.clone();
    let reload_task = tokio::spawn(async move {
        while hangup.recv().await.is_some() {
            match &reloads {
                Some(tls) => match tls.reload() {
                    Ok(()) => info!("SIGHUP: reloaded the TLS certificate and key; new connections use them"),
                    Err(err) => {
                        error!(error = %err, "SIGHUP: the TLS files could not be reloaded; still serving the previous ones")
                    }
                },
                None => info!("SIGHUP: nothing to reload (no TLS files configured)"),
            }
        }
    });

    let (stop, stopped) = tokio::sync::watch::channel(false);
    let scheduler = Scheduler::new(context.clone(), limits(&settings));
    let scheduler_handle = scheduler.handle();
    let scheduler_task = tokio::spawn(scheduler.run(stopped.clone()));
    let dispatcher =
        Dispatcher::new(store.clone(), context.cipher.clone(), Arc::new(SystemClock), context.http.clone());
    let deliveries = dispatcher.handle().counters();
    let dispatcher_task = tokio::spawn(dispatcher.run(stopped.clone()));
    let sink_dispatcher = SinkDispatcher::new(store.clone(), context.cipher.clone(), context.http.clone());
    let sink_task = tokio::spawn(sink_dispatcher.run(stopped.clone()));
    let revocation_task = tokio::spawn(crate::engine::retire::run(context.clone(), stopped.clone()));
    let maintenance_context = MaintenanceContext {
        engine: context.clone(),
        scheduler: scheduler_handle.clone(),
        deliveries: Some(deliveries),
        audit_retention: chrono::TimeDelta::from_std(settings.maintenance.audit_retention.get())
            .unwrap_or(chrono::TimeDelta::MAX),
    };
    if let Err(err) = maintenance::replan(&maintenance_context).await {
        tracing::error!(error = %err, "re-planning under the configured policy failed; tokens keep their plans until rotated");
    }
    let metrics_task = tokio::spawn(metrics_watch::run(maintenance_context.clone(), stopped));
    let mut jobs = maintenance::start(&settings.maintenance, maintenance_context)
        .await
        .map_err(|err| CliError::Failed(format!("cannot start the maintenance jobs: {err}")))?;
    let watchdog = systemd::spawn_watchdog(scheduler_handle.clone());

    let state = AppState {
        scheduler: Some(scheduler_handle),
        metrics: Some(metrics_handle),
        consent: crate::api::ConsentSettings::from_settings(&settings),
        ..AppState::new(store, context)
    };
    let forced_rotations = state.rotations.clone();
    let auth_failures = state.auth_failures.clone();
    let periodic_failures = auth_failures.clone();
    let auth_failure_log = tokio::spawn(async move {
        let mut every = tokio::time::interval(api::AUTH_FAILURE_LOG_INTERVAL);
        loop {
            every.tick().await;
            periodic_failures.flush();
        }
    });
    let shutdown = async move {
        tokio::select! {
            _ = terminate.recv() => info!("SIGTERM received; shutting down"),
            _ = interrupt.recv() => info!("SIGINT received; shutting down"),
        }
        systemd::notify_stopping();
    };
    systemd::notify_ready();
    api::listener::serve(listener, api::router(state), tls, shutdown)
        .await
        .map_err(|err| CliError::Failed(format!("the API server failed: {err}")))?;
    reload_task.abort();
    if forced_rotations.running() > 0 {
        info!(running = forced_rotations.running(), "waiting for forced rotations to commit");
    }
    forced_rotations.idle().await;
    let _ = stop.send(true);
    if let Some(watchdog) = watchdog {
        watchdog.abort();
    }
    auth_failure_log.abort();
    // Failures counted since the last periodic line are logged before the daemon stops.
    auth_failures.flush_pending();
    let _ = jobs.shutdown().await;
    let _ = metrics_task.await;
    let _ = scheduler_task.await;
    let _ = dispatcher_task.await;
    let _ = sink_task.await;
    let _ = revocation_task.await;
    info!("stopped");
    Ok(())
}
