//! Prometheus metrics: the names in the interface contract, the recorder, and the gauges that
//! are refreshed from the store. Counters and the lag histogram are recorded where things
//! happen (the engine and the scheduler); `/metrics` renders them all.

use std::sync::OnceLock;

use metrics::{counter, describe_counter, describe_gauge, describe_histogram, gauge};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

use metrics_util::MetricKindMask;

use crate::domain::TokenState;
use crate::notify::DeliveryCounters;
use crate::store::tokens::TokenGauges;

/// Tokens per state (gauge, label `state`).
pub const TOKENS: &str = "tokenwarden_tokens";
/// Each token's expiry as a Unix timestamp (gauge, label `token`).
pub const TOKEN_EXPIRY: &str = "tokenwarden_token_expiry_timestamp_seconds";
/// Sink deliveries (counter, labels `kind` and `outcome`: `delivered`, `failed`).
pub const SINK_DELIVERIES: &str = "tokenwarden_sink_deliveries_total";
/// Versions a sink is behind its token (gauge, label `sink`).
pub const SINK_VERSION_LAG: &str = "tokenwarden_sink_version_lag";
/// Versions a reader is behind a token's current one (gauge, labels `token` and `client`).
pub const CONSUMER_VERSION_LAG: &str = "tokenwarden_consumer_version_lag";
/// Rotation attempts (counter, labels `kind` and `outcome`).
pub const ROTATIONS: &str = "tokenwarden_rotations_total";
/// Actual start minus planned time of scheduled rotations (histogram).
pub const ROTATION_LAG: &str = "tokenwarden_rotation_lag_seconds";
/// From a provider's answer until it is durable in the answer journal (histogram): where a crash
/// loses a grant.
pub const COMMIT_GAP: &str = "tokenwarden_rotation_commit_gap_seconds";
/// Revocations of old deploy tokens through their managers (counter, label `outcome`:
/// `revoked`, `failed`).
pub const REVOCATIONS: &str = "tokenwarden_old_token_revocations_total";
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
    let handle = builder()
        .and_then(|builder| builder.install_recorder())
        .map_err(|err| format!("cannot install the metrics recorder: {err}"))?;
    describe();
    Ok(handle)
}

/// The exporter's configuration: histogram buckets and the idle timeout of gauges.
fn builder() -> Result<PrometheusBuilder, metrics_exporter_prometheus::BuildError> {
    PrometheusBuilder::new()
        .set_buckets_for_metric(Matcher::Full(ROTATION_LAG.to_owned()), LAG_BUCKETS)
        .and_then(|builder| builder.set_buckets_for_metric(Matcher::Full(COMMIT_GAP.to_owned()), GAP_BUCKETS))
        .map(|builder| builder.idle_timeout(MetricKindMask::GAUGE, Some(GAUGE_IDLE_TIMEOUT)))
}

/// Gives every metric its `# HELP` text, and starts the counters whose absence would read as
/// "never happened" (authentication failures, transaction retries) at zero, so they are
/// exported from the first scrape on.
fn describe() {
    describe_gauge!(TOKENS, "Tokens per state.");
    describe_gauge!(TOKEN_EXPIRY, "When each token's current secret expires, as a Unix timestamp in seconds.");
    describe_gauge!(
        CONSUMER_VERSION_LAG,
        "Versions each reader is behind the token's current one, by its last acknowledgement (readers that never acknowledged have no series)."
    );
    describe_counter!(SINK_DELIVERIES, "Sink deliveries by sink kind and outcome.");
    describe_gauge!(SINK_VERSION_LAG, "Versions each sink is behind its token's current one.");
    describe_counter!(ROTATIONS, "Rotation attempts by token kind and outcome.");
    describe_histogram!(ROTATION_LAG, "Seconds from a scheduled rotation's planned time to its start.");
    describe_histogram!(COMMIT_GAP, "Seconds from a provider's answer until it is durable (journaled).");
    describe_counter!(WEBHOOK_DELIVERIES, "Webhook delivery attempts by outcome.");
    describe_counter!(
        REVOCATIONS,
        "Revocations of replaced deploy tokens through their managers, by outcome (revoked, failed)."
    );
    describe_gauge!(
        SCHEDULER_LAST_TICK,
        "When the scheduler loop last completed a pass, as a Unix timestamp in seconds."
    );
    describe_counter!(TRANSACTION_RETRIES, "Write transactions run again after a serialization conflict (PostgreSQL).");
    describe_counter!(API_AUTH_FAILURES, "API requests refused for their credentials, by reason.");
    counter!(TRANSACTION_RETRIES).increment(0);
    for outcome in ["delivered", "failed"] {
        counter!(SINK_DELIVERIES, "kind" => crate::sinks::FILE, "outcome" => outcome).increment(0);
    }
    for reason in AUTH_FAILURE_REASONS {
        counter!(API_AUTH_FAILURES, "reason" => *reason).increment(0);
    }
    for outcome in ["revoked", "failed"] {
        counter!(REVOCATIONS, "outcome" => outcome).increment(0);
    }
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
    for (sink, lag) in &gauges.sink_lags {
        gauge!(SINK_VERSION_LAG, "sink" => sink.clone()).set(*lag as f64);
    }
    for lag in &gauges.consumer_lags {
        gauge!(CONSUMER_VERSION_LAG, "token" => lag.token.clone(), "client" => lag.client.clone())
            .set(lag.versions_behind as f64);
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

/// API requests refused for their credentials (counter, label `reason`, one of
/// [`AUTH_FAILURE_REASONS`]).
pub const API_AUTH_FAILURES: &str = "tokenwarden_api_auth_failures_total";

/// The values of [`API_AUTH_FAILURES`]' `reason` label (see `crate::api::AuthFailure`).
pub const AUTH_FAILURE_REASONS: &[&str] = &["missing", "malformed", "unknown", "revoked", "forbidden"];

/// Counts one request refused for its credentials.
pub fn record_auth_failure(reason: &'static str) {
    counter!(API_AUTH_FAILURES, "reason" => reason).increment(1);
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use super::*;

    /// The metric family each sample line of a Prometheus text exposition belongs to.
    fn families(text: &str) -> BTreeSet<String> {
        text.lines()
            .filter(|line| !line.starts_with('#') && !line.trim().is_empty())
            .map(|line| line.split(['{', ' ']).next().unwrap_or_default())
            .map(|name| {
                ["_bucket", "_sum", "_count"]
                    .iter()
                    .find_map(|suffix| {
                        name.strip_suffix(suffix).filter(|base| text.contains(&format!("# TYPE {base} histogram")))
                    })
                    .unwrap_or(name)
                    .to_owned()
            })
            .collect()
    }

    #[test]
    fn every_metric_is_rendered_with_its_help_and_type() {
        let recorder = builder().unwrap().build_recorder();
        let handle = recorder.handle();
        metrics::with_local_recorder(&recorder, || {
            describe();
            let gauges = TokenGauges {
                per_state: vec![("active".to_owned(), 3)],
                expiries: vec![("t".to_owned(), chrono::Utc::now())],
                sink_lags: vec![("s".to_owned(), 0)],
                consumer_lags: vec![crate::store::consumers::ConsumerLag {
                    token: "t".to_owned(),
                    client: "app".to_owned(),
                    versions_behind: 1,
                }],
            };
            refresh_token_gauges(&gauges);
            refresh_webhook_counters(&DeliveryCounters::default());
            counter!(ROTATIONS, "kind" => "oauth2", "outcome" => "success").increment(1);
            metrics::histogram!(ROTATION_LAG).record(0.5);
            metrics::histogram!(COMMIT_GAP).record(0.001);
            gauge!(SCHEDULER_LAST_TICK).set(1.0);
            record_transaction_retry();
            record_auth_failure("unknown");
        });
        let text = handle.render();
        let found = families(&text);
        for name in [
            TOKENS,
            TOKEN_EXPIRY,
            CONSUMER_VERSION_LAG,
            SINK_VERSION_LAG,
            ROTATIONS,
            ROTATION_LAG,
            COMMIT_GAP,
            WEBHOOK_DELIVERIES,
            SCHEDULER_LAST_TICK,
            TRANSACTION_RETRIES,
            API_AUTH_FAILURES,
            REVOCATIONS,
        ] {
            assert!(found.contains(name), "{name} is not exported:\n{text}");
        }
        for family in found {
            assert!(text.contains(&format!("# HELP {family} ")), "no HELP for {family}:\n{text}");
            assert!(text.contains(&format!("# TYPE {family} ")), "no TYPE for {family}:\n{text}");
        }
    }

    #[test]
    fn authentication_failures_are_exported_at_zero_for_every_reason_before_the_first_one() {
        let recorder = builder().unwrap().build_recorder();
        let handle = recorder.handle();
        metrics::with_local_recorder(&recorder, describe);
        let text = handle.render();
        for reason in AUTH_FAILURE_REASONS {
            let line = format!("{API_AUTH_FAILURES}{{reason=\"{reason}\"}} 0");
            assert!(text.contains(&line), "{line} missing:\n{text}");
        }
    }
}
