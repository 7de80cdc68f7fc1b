//! The outbox dispatcher: sends committed webhook deliveries and retries the ones that fail.
//!
//! It runs on its own task and only reads and updates outbox rows, so nothing it does can
//! delay or fail a rotation. Each pass claims due deliveries under a short lease (so another
//! dispatcher on the same database leaves them alone), at most one per client and no more
//! than there are free slots, and sends each on its own task: a receiver that hangs holds
//! one slot for at most the request timeout and never delays other clients. A failure is
//! retried with exponential backoff and full jitter; a delivery still failing a day after it
//! was queued is abandoned. Between passes it sleeps until the next delivery falls due, a
//! slot frees up, [`DispatcherHandle::wake`] is called, or the poll interval passes (which is
//! how rows committed by another process are noticed). Every attempt is recorded as a row of
//! its own (status or error, duration). Delivered rows are pruned by the maintenance `prune`
//! job ([`crate::engine::maintenance`]), not here.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use chrono::{DateTime, TimeDelta, Utc};
use reqwest::StatusCode;
use reqwest::header::CONTENT_TYPE;
use tokio::sync::{Notify, watch};
use tokio::task::{Id, JoinError, JoinSet};
use tracing::{debug, error, info, warn};

use super::signature::{DELIVERY_HEADER, EVENT_HEADER, SIGNATURE_HEADER, sign_with};
use crate::crypto::{Cipher, CryptoError};
use crate::engine::SharedClock;
use crate::engine::backoff::Backoff;
use crate::store::outbox::{self, AfterFailure, Attempt, ClaimedDelivery, FailureRecorded};
use crate::store::{Store, StoreError, clients};

/// Least time a claim outlives the request timeout, to record the attempt's result.
const LEASE_RECORD_MARGIN: Duration = Duration::from_secs(30);

/// Tunables of the dispatcher.
#[derive(Debug, Clone, Copy)]
pub struct DispatcherSettings {
    /// Longest wait for a receiver's answer (connect, send, response headers).
    pub request_timeout: Duration,
    /// Deliveries in flight at once, overall (each client has at most one).
    pub max_in_flight: usize,
    /// Longest sleep between passes (bounds how late rows from another process are seen).
    pub poll_interval: Duration,
    /// How long a claim keeps other dispatchers away; at least the request timeout plus
    /// a margin to record the result.
    pub lease: Duration,
    /// Waits between attempts: `base × 2^(n-1)` at most, capped at `max`, fully jittered.
    pub backoff: Backoff,
    /// How long after it was queued a failing delivery is still retried.
    pub retry_window: Duration,
}

impl Default for DispatcherSettings {
    fn default() -> Self {
        Self {
            request_timeout: Duration::from_secs(10),
            max_in_flight: 16,
            poll_interval: Duration::from_secs(1),
            lease: Duration::from_secs(60),
            backoff: Backoff { base: Duration::from_secs(10), max: Duration::from_secs(3600) },
            retry_window: Duration::from_secs(24 * 3600),
        }
    }
}

impl DispatcherSettings {
    /// What to do after the `attempts`-th failed attempt (1 for the first) of a delivery
    /// queued at `created_at`: retry after a jittered backoff while the retry window is open,
    /// abandon once it has closed.
    pub fn after_failure(&self, attempts: i32, created_at: DateTime<Utc>, now: DateTime<Utc>) -> AfterFailure {
        if now - created_at >= delta(self.retry_window) {
            return AfterFailure::Abandon;
        }
        AfterFailure::RetryAt(self.backoff.next_attempt(attempts, now, None, None))
    }

    /// The claim lease actually used: never shorter than the request timeout plus a margin.
    fn effective_lease(&self) -> TimeDelta {
        delta(self.lease.max(self.request_timeout + LEASE_RECORD_MARGIN))
    }
}

/// Converts a duration to a `TimeDelta`, saturating.
fn delta(duration: Duration) -> TimeDelta {
    TimeDelta::from_std(duration).unwrap_or(TimeDelta::MAX)
}

/// Why one attempt to deliver failed; the text is stored as the delivery's `last_error`.
#[derive(Debug, thiserror::Error)]
pub enum DeliveryError {
    /// The client's webhook URL was removed after the delivery was queued.
    #[error("the client has no webhook URL any more")]
    NoWebhookUrl,
    /// The client has a webhook URL but no signing secret.
    #[error("the client has no webhook signing secret; remove it and add it again with --webhook")]
    NoSecret,
    /// The signing secret cannot be opened with the loaded master key.
    #[error("cannot open the client's webhook secret: {0}")]
    Secret(#[from] CryptoError),
    /// The receiver did not answer in time.
    #[error("the receiver did not answer within {} s", .0.as_secs())]
    Timeout(Duration),
    /// No connection could be made.
    #[error("cannot connect to the receiver: {0}")]
    Connect(String),
    /// The request failed after connecting, or could not be built.
    #[error("the request failed: {0}")]
    Request(String),
    /// The receiver answered with a status other than 2xx.
    #[error("the receiver answered HTTP {0}")]
    Status(u16),
}

impl DeliveryError {
    /// The receiver's HTTP status, when it answered.
    pub fn status(&self) -> Option<u16> {
        match self {
            DeliveryError::Status(status) => Some(*status),
            _ => None,
        }
    }

    /// Classifies a failed send; the URL is left out of the text, as it may hold a token.
    fn from_send(err: reqwest::Error, timeout: Duration) -> Self {
        if err.is_timeout() {
            return DeliveryError::Timeout(timeout);
        }
        let connect = err.is_connect();
        let text = describe(err.without_url());
        if connect { DeliveryError::Connect(text) } else { DeliveryError::Request(text) }
    }
}

/// An error and its sources on one line.
fn describe(err: reqwest::Error) -> String {
    let mut text = err.to_string();
    let mut source = std::error::Error::source(&err);
    while let Some(inner) = source {
        text.push_str(": ");
        text.push_str(&inner.to_string());
        source = inner.source();
    }
    text
}

/// Delivery counts for metrics (`tokenwarden_webhook_deliveries_total{outcome}`).
///
/// `delivered + failed` is the number of attempts; `abandoned` counts deliveries given up
/// (their last failed attempt is also in `failed`).
#[derive(Debug, Default)]
pub struct DeliveryCounters {
    delivered: AtomicU64,
    failed: AtomicU64,
    abandoned: AtomicU64,
}

impl DeliveryCounters {
    /// Attempts a receiver accepted (2xx).
    pub fn delivered(&self) -> u64 {
        self.delivered.load(Ordering::Relaxed)
    }

    /// Attempts that failed (non-2xx, timeout, connection error, unusable client settings).
    pub fn failed(&self) -> u64 {
        self.failed.load(Ordering::Relaxed)
    }

    /// Deliveries abandoned after the retry window.
    pub fn abandoned(&self) -> u64 {
        self.abandoned.load(Ordering::Relaxed)
    }
}

/// What the rest of the daemon holds to talk to a running dispatcher.
#[derive(Debug, Clone)]
pub struct DispatcherHandle {
    wake: Arc<Notify>,
    counters: Arc<DeliveryCounters>,
}

impl DispatcherHandle {
    /// Asks the dispatcher to look for due deliveries now (e.g. after a commit that queued
    /// some); without it they are seen within the poll interval.
    pub fn wake(&self) {
        self.wake.notify_one();
    }

    /// The dispatcher's delivery counters.
    pub fn counters(&self) -> Arc<DeliveryCounters> {
        self.counters.clone()
    }
}

/// Sends outbox deliveries; build it with [`Dispatcher::new`] and start [`Dispatcher::run`]
/// on its own task.
#[derive(Debug)]
pub struct Dispatcher {
    store: Store,
    cipher: Arc<Cipher>,
    clock: SharedClock,
    http: reqwest::Client,
    settings: DispatcherSettings,
    owner: String,
    handle: DispatcherHandle,
}

impl Dispatcher {
    /// A dispatcher with default settings. `http` should not follow redirects (the client
    /// from [`crate::providers::build_http_client`] does not); the request timeout is set
    /// per request.
    pub fn new(store: Store, cipher: Arc<Cipher>, clock: SharedClock, http: reqwest::Client) -> Self {
        let handle = DispatcherHandle { wake: Arc::new(Notify::new()), counters: Arc::default() };
        Self { store, cipher, clock, http, settings: DispatcherSettings::default(), owner: owner_id(), handle }
    }

    /// Replaces the settings.
    pub fn with_settings(mut self, settings: DispatcherSettings) -> Self {
        self.settings = settings;
        self
    }

    /// A handle to wake the loop and read its counters.
    pub fn handle(&self) -> DispatcherHandle {
        self.handle.clone()
    }

    /// This dispatcher's lease owner id (`notify:<pid>:<random>`).
    pub fn owner(&self) -> &str {
        &self.owner
    }

    /// Runs until `shutdown` turns true (or its sender is dropped), then waits for the
    /// deliveries in flight, each bounded by the request timeout.
    pub async fn run(self, mut shutdown: watch::Receiver<bool>) {
        let wake = self.handle.wake.clone();
        let shared = Arc::new(Shared {
            store: self.store,
            cipher: self.cipher,
            clock: self.clock,
            http: self.http,
            settings: self.settings,
            owner: self.owner,
            counters: self.handle.counters,
        });
        let max_in_flight = shared.settings.max_in_flight.max(1);
        let mut in_flight = JoinSet::new();
        let mut busy: HashMap<Id, String> = HashMap::new();
        info!(owner = %shared.owner, "webhook dispatcher started");
        loop {
            if *shutdown.borrow() {
                break;
            }
            let now = shared.clock.now();
            let free = max_in_flight.saturating_sub(in_flight.len());
            let mut wake_at = None;
            if free > 0 {
                match shared.claim(now, free, busy.values().cloned().collect()).await {
                    Ok(claimed) => {
                        for delivery in claimed {
                            let client_id = delivery.client_id.clone();
                            let task = in_flight.spawn(attempt(shared.clone(), delivery));
                            busy.insert(task.id(), client_id);
                        }
                        if in_flight.len() < max_in_flight {
                            wake_at = shared.next_wake(now, busy.values().cloned().collect()).await;
                        }
                    }
                    Err(err) => error!(error = %err, "cannot claim webhook deliveries; retrying"),
                }
            }
            let wake_at = wake_at.filter(|at| *at > now);
            tokio::select! {
                changed = shutdown.changed() => {
                    if changed.is_err() {
                        break;
                    }
                }
                () = wake.notified() => {}
                Some(joined) = in_flight.join_next_with_id() => forget(&mut busy, joined),
                () = sleep_until(&shared.clock, wake_at) => {}
                () = tokio::time::sleep(shared.settings.poll_interval) => {}
            }
        }
        if !in_flight.is_empty() {
            info!(in_flight = in_flight.len(), "webhook dispatcher stopping; waiting for deliveries in flight");
        }
        while let Some(joined) = in_flight.join_next_with_id().await {
            forget(&mut busy, joined);
        }
        info!("webhook dispatcher stopped");
    }
}

/// `notify:<pid>:<random>`, unique per dispatcher.
fn owner_id() -> String {
    let mut nonce = [0u8; 4];
    rand::fill(&mut nonce);
    format!("notify:{}:{}", std::process::id(), hex::encode(nonce))
}

/// Sleeps until `at` on `clock`, or forever without a moment.
async fn sleep_until(clock: &SharedClock, at: Option<DateTime<Utc>>) {
    match at {
        Some(at) => clock.sleep_until(at).await,
        None => std::future::pending().await,
    }
}

/// Frees the client of a finished delivery task; a panic is logged (the lease then runs
/// out and the delivery is sent again).
fn forget(busy: &mut HashMap<Id, String>, joined: Result<(Id, ()), JoinError>) {
    let id = match joined {
        Ok((id, ())) => id,
        Err(err) => {
            error!(error = %err, "a webhook delivery task failed; the delivery is retried when its lease runs out");
            err.id()
        }
    };
    busy.remove(&id);
}

/// What the loop and its delivery tasks share.
struct Shared {
    store: Store,
    cipher: Arc<Cipher>,
    clock: SharedClock,
    http: reqwest::Client,
    settings: DispatcherSettings,
    owner: String,
    counters: Arc<DeliveryCounters>,
}

impl Shared {
    /// Claims up to `limit` due deliveries of clients not in `busy_clients`.
    async fn claim(
        &self,
        now: DateTime<Utc>,
        limit: usize,
        busy_clients: Vec<String>,
    ) -> Result<Vec<ClaimedDelivery>, StoreError> {
        let (owner, lease) = (self.owner.clone(), self.settings.effective_lease());
        self.store.run(move |conn| outbox::claim_due(conn, &owner, now, lease, limit, &busy_clients)).await
    }

    /// When to look again; on a store error, after the poll interval.
    async fn next_wake(&self, now: DateTime<Utc>, busy_clients: Vec<String>) -> Option<DateTime<Utc>> {
        match self.store.run(move |conn| outbox::next_wake_at(conn, now, &busy_clients)).await {
            Ok(at) => at,
            Err(err) => {
                warn!(error = %err, "cannot read when the next webhook delivery is due");
                None
            }
        }
    }

    /// POSTs one delivery: the stored payload byte for byte, signed now.
    async fn send(&self, delivery: &ClaimedDelivery) -> Result<StatusCode, DeliveryError> {
        let url = delivery.webhook_url.as_deref().ok_or(DeliveryError::NoWebhookUrl)?;
        let sealed = delivery.sealed_secret.as_deref().ok_or(DeliveryError::NoSecret)?;
        let context = clients::webhook_secret_context(&delivery.client_id);
        let secret = self.cipher.open(context, sealed)?;
        let previous =
            delivery.previous_sealed_secret.as_deref().map(|sealed| self.cipher.open(context, sealed)).transpose()?;
        let body = delivery.payload.clone().into_bytes();
        let signature = sign_with(&secret, previous.as_ref(), self.clock.now(), &body);
        let timeout = self.settings.request_timeout;
        let response = self
            .http
            .post(url)
            .timeout(timeout)
            .header(CONTENT_TYPE, "application/json")
            .header(EVENT_HEADER, &delivery.event)
            .header(DELIVERY_HEADER, &delivery.id)
            .header(SIGNATURE_HEADER, signature)
            .body(body)
            .send()
            .await
            .map_err(|err| DeliveryError::from_send(err, timeout))?;
        let status = response.status();
        if !status.is_success() {
            return Err(DeliveryError::Status(status.as_u16()));
        }
        Ok(status)
    }

    /// Records a successful attempt.
    async fn record_success(&self, delivery: &ClaimedDelivery, status: StatusCode, attempt: Attempt) {
        self.counters.delivered.fetch_add(1, Ordering::Relaxed);
        let (id, now) = (delivery.id.clone(), self.clock.now());
        match self.store.run(move |conn| outbox::record_success(conn, &id, &attempt, now)).await {
            Ok(_) => info!(
                delivery = %delivery.id,
                event = %delivery.event,
                client = %delivery.client_name,
                status = status.as_u16(),
                attempt = delivery.attempts + 1,
                "webhook delivered"
            ),
            Err(err) => error!(
                delivery = %delivery.id,
                error = %err,
                "webhook delivered but not recorded; it will be sent again when its lease runs out"
            ),
        }
    }

    /// Records a failed attempt and schedules the next one, or abandons the delivery.
    async fn record_failure(&self, delivery: &ClaimedDelivery, failure: &DeliveryError, attempt: Attempt) {
        self.counters.failed.fetch_add(1, Ordering::Relaxed);
        let now = self.clock.now();
        let attempts = delivery.attempts + 1;
        let after = self.settings.after_failure(attempts, delivery.created_at, now);
        let (id, owner) = (delivery.id.clone(), self.owner.clone());
        let recorded =
            self.store.run(move |conn| outbox::record_failure(conn, &id, &owner, &attempt, now, after)).await;
        match (recorded, after) {
            (Ok(FailureRecorded::Retrying), AfterFailure::RetryAt(next_attempt_at)) => warn!(
                delivery = %delivery.id,
                client = %delivery.client_name,
                attempt = attempts,
                error = %failure,
                %next_attempt_at,
                "webhook delivery failed; will retry"
            ),
            (Ok(FailureRecorded::Abandoned), _) => {
                self.counters.abandoned.fetch_add(1, Ordering::Relaxed);
                error!(
                    delivery = %delivery.id,
                    client = %delivery.client_name,
                    attempt = attempts,
                    error = %failure,
                    queued_at = %delivery.created_at,
                    "webhook delivery abandoned after its retry window"
                );
            }
            (Ok(_), _) => {
                debug!(delivery = %delivery.id, "webhook failure not recorded: the lease passed to another dispatcher")
            }
            (Err(err), _) => error!(
                delivery = %delivery.id,
                error = %err,
                "cannot record a failed webhook attempt; it is retried when its lease runs out"
            ),
        }
    }
}

/// One attempt at one delivery, recorded on the delivery and as an attempt row (when it was
/// sent, the receiver's status or the error, how long it took).
async fn attempt(shared: Arc<Shared>, delivery: ClaimedDelivery) {
    let (attempted_at, started) = (shared.clock.now(), Instant::now());
    let result = shared.send(&delivery).await;
    let duration = started.elapsed();
    match result {
        Ok(status) => {
            let attempt = Attempt { attempted_at, status: Some(status.as_u16()), error: None, duration };
            shared.record_success(&delivery, status, attempt).await
        }
        Err(failure) => {
            let attempt =
                Attempt { attempted_at, status: failure.status(), error: Some(failure.to_string()), duration };
            shared.record_failure(&delivery, &failure, attempt).await
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn start() -> DateTime<Utc> {
        DateTime::parse_from_rfc3339("2026-11-25T10:00:00Z").unwrap().with_timezone(&Utc)
    }

    #[test]
    fn failures_back_off_from_ten_seconds_doubling_up_to_an_hour() {
        let settings = DispatcherSettings::default();
        let created = start();
        for (attempts, ceiling) in [(1, 10), (2, 20), (3, 40), (9, 2560), (10, 3600), (30, 3600)] {
            let now = created + TimeDelta::hours(1);
            for _ in 0..50 {
                let AfterFailure::RetryAt(at) = settings.after_failure(attempts, created, now) else {
                    panic!("attempt {attempts} must be retried");
                };
                let wait = at - now;
                assert!(wait >= TimeDelta::seconds(1) && wait <= TimeDelta::seconds(ceiling), "{attempts}: {wait}");
            }
        }
    }

    #[test]
    fn failures_are_retried_for_a_day_then_abandoned() {
        let settings = DispatcherSettings::default();
        let created = start();
        let almost = created + TimeDelta::hours(24) - TimeDelta::seconds(1);
        assert!(matches!(settings.after_failure(80, created, almost), AfterFailure::RetryAt(_)));
        assert_eq!(settings.after_failure(81, created, created + TimeDelta::hours(24)), AfterFailure::Abandon);
    }

    #[test]
    fn the_lease_always_outlives_the_request_timeout() {
        let settings = DispatcherSettings { lease: Duration::from_secs(1), ..DispatcherSettings::default() };
        assert!(settings.effective_lease() > delta(settings.request_timeout));
        assert_eq!(DispatcherSettings::default().effective_lease(), TimeDelta::seconds(60));
    }

    #[tokio::test]
    async fn send_errors_never_carry_the_url() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        drop(listener);
        let url = format!("http://user:hunter2@127.0.0.1:{port}/hook?token=s3cr3t");
        let http = crate::providers::build_http_client(crate::providers::HttpSettings::default()).unwrap();
        let err = http.post(url).send().await.unwrap_err();
        let failure = DeliveryError::from_send(err, Duration::from_secs(10));
        let text = failure.to_string();
        assert!(matches!(failure, DeliveryError::Connect(_)), "{text}");
        assert!(!text.contains("s3cr3t") && !text.contains("hunter2") && !text.contains("/hook"), "{text}");
    }
}
