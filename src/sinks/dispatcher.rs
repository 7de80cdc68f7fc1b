//! The sink dispatcher: delivers pending versions to sinks and retries the ones that fail.
//!
//! Each pass claims due sinks with versions pending under a short lease (another dispatcher on
//! the same database leaves them alone), delivers the token's *current* version to each (a
//! sink never receives a version older than it holds, and a backlog of versions is one
//! delivery), and records the outcome. A failure is retried with jittered exponential backoff;
//! after [`ATTENTION_AFTER_ATTEMPTS`] failures the sink shows `needs_attention` (and `check`
//! reports it) while the retries go on. Nothing here touches a token, so a failing sink never
//! delays or fails a rotation. A process killed mid-delivery leaves the rows pending and the
//! lease runs out: the next dispatcher delivers again (at least once, never older).

use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, TimeDelta, Utc};
use secrecy::{ExposeSecret, SecretString};
use tokio::sync::watch;
use tokio::task::JoinSet;
use tracing::{debug, info, warn};

use super::file::{self, Contents, FileSettings};
use super::gitlab_variable::{self, Target, VariableSettings};
use crate::crypto::Cipher;
use crate::engine::backoff::Backoff;
use crate::store::sinks::{self, ATTENTION_AFTER_ATTEMPTS, ClaimedSink, SinkRow};
use crate::store::{Store, StoreError};
use crate::telemetry::metrics::SINK_DELIVERIES;

/// Longest sleep between passes (bounds how late a version committed by another process is
/// delivered).
pub const POLL_INTERVAL: Duration = Duration::from_millis(250);
/// Sinks delivered at once.
const MAX_IN_FLIGHT: i64 = 32;
/// How long a claim outlives the sink's program timeout (the write and the recording).
const LEASE_MARGIN: TimeDelta = TimeDelta::seconds(10);
/// Waits between failed attempts.
const BACKOFF: Backoff = Backoff { base: Duration::from_secs(2), max: Duration::from_secs(600) };

/// How long a claim of a CI/CD variable sink lasts: its three requests (read, then update or
/// create) at their longest.
const VARIABLE_LEASE: TimeDelta = TimeDelta::seconds(120);

/// Delivers sinks until told to stop. Cheap to clone: each delivery holds a clone.
#[derive(Clone)]
pub struct SinkDispatcher {
    store: Store,
    cipher: Arc<Cipher>,
    http: reqwest::Client,
}

impl SinkDispatcher {
    /// A dispatcher over `store`, opening secrets with `cipher` and writing to providers with
    /// `http`.
    pub fn new(store: Store, cipher: Arc<Cipher>, http: reqwest::Client) -> Self {
        Self { store, cipher, http }
    }

    /// Runs passes until `shutdown` turns true; a delivery in flight finishes first.
    pub async fn run(self, mut shutdown: watch::Receiver<bool>) {
        let mut failing = crate::telemetry::repeated_warning::RepeatedWarning::new(
            "sink dispatcher pass failed; retrying",
            crate::telemetry::repeated_warning::REPEAT_INTERVAL,
        );
        loop {
            if *shutdown.borrow() {
                return;
            }
            let wait = match self.pass().await {
                Ok(next) => {
                    failing.succeeded();
                    // A sink already due (more were pending than one pass takes) goes at once.
                    next.map_or(POLL_INTERVAL, |at| (at - Utc::now()).to_std().unwrap_or(Duration::ZERO))
                        .min(POLL_INTERVAL)
                }
                Err(err) => {
                    failing.failed(&err);
                    POLL_INTERVAL
                }
            };
            tokio::select! {
                () = tokio::time::sleep(wait) => {}
                _ = shutdown.changed() => {}
            }
        }
    }

    /// Claims and delivers what is due; returns when the next pending sink falls due.
    async fn pass(&self) -> Result<Option<DateTime<Utc>>, StoreError> {
        let cipher = self.cipher.clone();
        let now = Utc::now();
        let claimed = self.store.run(move |conn| sinks::claim_due(conn, &cipher, MAX_IN_FLIGHT, lease, now)).await?;
        let mut deliveries = JoinSet::new();
        for sink in claimed {
            let via = self.clone();
            deliveries.spawn(async move { deliver_and_record(&via, sink).await });
        }
        while let Some(done) = deliveries.join_next().await {
            if let Ok(Err(err)) = done {
                warn!(error = %err, "cannot record a sink delivery; it will be delivered again");
            }
        }
        self.store.run(sinks::next_due).await
    }
}

/// How long a claim of `sink` keeps other dispatchers away: its program's timeout (a file) or
/// its requests (a CI/CD variable) and a margin, so a dispatcher killed mid-delivery holds it
/// up only that long.
fn lease(sink: &SinkRow) -> TimeDelta {
    if sink.kind == super::GITLAB_CI_VARIABLE {
        return VARIABLE_LEASE + LEASE_MARGIN;
    }
    let timeout = serde_json::from_str::<FileSettings>(&sink.settings).map_or(60, |file| file.exec_timeout_secs);
    TimeDelta::seconds(i64::try_from(timeout).unwrap_or(3600)) + LEASE_MARGIN
}

/// Delivers one claimed sink and records the outcome.
async fn deliver_and_record(via: &SinkDispatcher, sink: ClaimedSink) -> Result<(), StoreError> {
    let store = &via.store;
    let kind = sink.row.kind.clone();
    let outcome = deliver(via, &sink).await;
    let now = Utc::now();
    match outcome {
        Ok(()) => {
            metrics::counter!(SINK_DELIVERIES, "kind" => kind, "outcome" => "delivered").increment(1);
            info!(sink = %sink.row.name, token = %sink.token, version = sink.version, "sink delivered");
            let recorded = store.run(move |conn| sinks::record_delivered(conn, &sink, now)).await?;
            if !recorded {
                debug!("a sink's lease ran out before its delivery was recorded");
            }
        }
        Err(error) => {
            metrics::counter!(SINK_DELIVERIES, "kind" => kind, "outcome" => "failed").increment(1);
            let retry_at = BACKOFF.next_attempt(sink.row.attempts + 1, now, None, None);
            warn!(sink = %sink.row.name, token = %sink.token, version = sink.version, %error, "sink delivery failed; will retry");
            let attempts = store.run(move |conn| sinks::record_failure(conn, &sink, &error, retry_at)).await?;
            if attempts == ATTENTION_AFTER_ATTEMPTS {
                warn!(attempts, "a sink needs attention: its deliveries keep failing");
            }
        }
    }
    Ok(())
}

/// Puts the claimed version where the sink says.
async fn deliver(via: &SinkDispatcher, sink: &ClaimedSink) -> Result<(), String> {
    match sink.row.kind.as_str() {
        super::FILE => {
            let settings: FileSettings =
                serde_json::from_str(&sink.row.settings).map_err(|err| format!("unreadable sink settings: {err}"))?;
            let (to_write, token, version, expires_at) =
                (settings.clone(), sink.token.clone(), sink.version, sink.expires_at);
            let secret = SecretString::from(sink.secret.expose_secret().to_owned());
            tokio::task::spawn_blocking(move || {
                file::write(&to_write, &Contents { token: &token, version, secret: &secret, expires_at })
            })
            .await
            .map_err(|err| format!("the file writer failed: {err}"))??;
            file::run_exec(&settings).await
        }
        super::GITLAB_CI_VARIABLE => {
            let settings: VariableSettings =
                serde_json::from_str(&sink.row.settings).map_err(|err| format!("unreadable sink settings: {err}"))?;
            let (cipher, manager, provider) = (via.cipher.clone(), settings.manager.clone(), settings.provider.clone());
            let credential = via
                .store
                .run(move |conn| sinks::managing_credential(conn, &cipher, &manager, &provider))
                .await
                .map_err(|err| format!("no managing credential: {err}"))?;
            let target = Target { base_url: &credential.base_url, credential: &credential.secret, settings: &settings };
            gitlab_variable::write(&via.http, &target, &sink.secret).await
        }
        other => Err(format!("sink kind {other} is not delivered by this version of tokenwarden")),
    }
}
