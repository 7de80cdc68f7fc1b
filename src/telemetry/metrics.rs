//! Prometheus metrics: the names in the interface contract, the recorder, and the gauges that
//! are refreshed from the store. Counters and the lag histogram are recorded where things
//! happen (the engine and the scheduler); `/metrics` renders them all.

use std::sync::OnceLock;

use metrics::{counter, gauge};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

use metrics_util::MetricKindMask;

use crate::domain::TokenState;
use crate::notify::DeliveryCounters;
use crate::store::tokens::TokenGauges;

/// Tokens per state (gauge, label `state`).
pub const TOKENS: &str = "tokenwarden_tokens";
/// Each token's expiry as a Unix timestamp (gauge, label `token`).
pub const TOKEN_EXPIRY: &str = "tokenwarden_token_expiry_timestamp_seconds";
/// Rotation attempts (counter, labels `kind` and `outcome`).
pub const ROTATIONS: &str = "tokenwarden_rotations_total";
/// Actual start minus planned time of scheduled rotations (histogram).
pub const ROTATION_LAG: &str = "tokenwarden_rotation_lag_seconds";
/// From a provider's answer to its committed result (histogram): where a crash loses a grant.
pub const COMMIT_GAP: &str = "tokenwarden_rotation_commit_gap_seconds";
/// Webhook delivery attempts (counter, label `outcome`: `delivered`, `failed`, `abandoned`).
pub const WEBHOOK_DELIVERIES: &str = "tokenwarden_webhook_deliveries_total";
/// When the scheduler loop last completed a pass (gauge, Unix seconds).
pub const SCHEDULER_LAST_TICK: &str = "tokenwarden_scheduler_last_tick_timestamp_seconds";

/// Buckets of the lag histogram, in seconds: from a millisecond to an hour.
const LAG_BUCKETS: &[f64] = &[0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0, 30.0, 60.0, 300.0, 3600.0];
/// Buckets of the commit-gap histogram, in seconds.
const GAP_BUCKETS: &[f64] = &[0.0001, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.05, 0.1, 1.0];

/// A gauge not set for this long disappears (a removed token's expiry stops being exported);
/// longer than any sensible metrics refresh interval.
const GAUGE_IDLE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(15 * 60);

static HANDLE: OnceLock<Result<PrometheusHandle, String>> = OnceLock::new();

/// Installs the process-wide Prometheus recorder (once; later calls return the same handle).
pub fn install() -> Result<PrometheusHandle, String> {
    HANDLE.get_or_init(build).clone()
}

fn build() -> Result<PrometheusHandle, String> {
    PrometheusBuilder::new()
        .set_buckets_for_metric(Matcher::Full(ROTATION_LAG.to_owned()), LAG_BUCKETS)
        .and_then(|builder| builder.set_buckets_for_metric(Matcher::Full(COMMIT_GAP.to_owned()), GAP_BUCKETS))
        .map(|builder| builder.idle_timeout(MetricKindMask::GAUGE, Some(GAUGE_IDLE_TIMEOUT)))
        .and_then(|builder| builder.install_recorder())
        .map_err(|err| format!("cannot install the metrics recorder: {err}"))
}

/// Per-token expiry series exported at most: every token that needs a look (not scheduled),
/// then the scheduled ones soonest to expire. A series not set for [`GAUGE_IDLE_TIMEOUT`]
/// disappears, so the set follows the tokens as they rotate.
pub const TOKEN_EXPIRY_SERIES_LIMIT: i64 = 10_000;

/// Sets the per-state counts (every state, zeros included) and the exported tokens' expiries.
pub fn refresh_token_gauges(gauges: &TokenGauges) {
    for state in TokenState::ALL {
        let count = gauges.per_state.iter().find(|(name, _)| name == state.as_str()).map_or(0, |(_, count)| *count);
        gauge!(TOKENS, "state" => state.as_str()).set(count as f64);
    }
    for (name, expires_at) in &gauges.expiries {
        gauge!(TOKEN_EXPIRY, "token" => name.clone()).set(expires_at.timestamp() as f64);
    }
}

/// Copies the dispatcher's delivery counters into the exported counter.
pub fn refresh_webhook_counters(counters: &DeliveryCounters) {
    counter!(WEBHOOK_DELIVERIES, "outcome" => "delivered").absolute(counters.delivered());
    counter!(WEBHOOK_DELIVERIES, "outcome" => "failed").absolute(counters.failed());
    counter!(WEBHOOK_DELIVERIES, "outcome" => "abandoned").absolute(counters.abandoned());
}

/// PostgreSQL write transactions run again after losing a race with another replica (counter).
pub const TRANSACTION_RETRIES: &str = "tokenwarden_store_transaction_retries_total";

/// Counts one write transaction run again after a serialization conflict.
pub fn record_transaction_retry() {
    counter!(TRANSACTION_RETRIES).increment(1);
}
