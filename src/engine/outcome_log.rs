//! The one log line each rotation attempt ends with. Durations are plain numbers of
//! milliseconds or microseconds: a late scheduled rotation logs `lag_ms`, one started before
//! its plan (a forced rotation) logs `early_by_ms`, never a negative lag.

use tracing::{error, info, warn};

use super::protocol::{RotationOutcome, RotationReport};

/// How the start of an attempt compares with its plan, in milliseconds: `(lag_ms,
/// early_by_ms)`, at most one of them set, neither for an attempt without a plan.
fn offset_from_plan(report: &RotationReport) -> (Option<i64>, Option<i64>) {
    let Some(planned) = report.planned_at else {
        return (None, None);
    };
    let millis = (report.started_at - planned).num_milliseconds();
    if millis >= 0 { (Some(millis), None) } else { (None, Some(millis.saturating_neg())) }
}

/// Logs one line for the attempt, with the numbers that matter (never a secret).
pub(super) fn log_outcome(report: &RotationReport) {
    let (lag_ms, early_by_ms) = offset_from_plan(report);
    let token = &report.token;
    match &report.outcome {
        RotationOutcome::Rotated { version, expires_at } => {
            let commit_gap_us = report.commit_gap.map(|gap| u64::try_from(gap.as_micros()).unwrap_or(u64::MAX));
            let expires_at = expires_at.map(|at| at.to_rfc3339());
            info!(%token, version, expires_at, lag_ms, early_by_ms, commit_gap_us, "rotated")
        }
        RotationOutcome::Retrying { next_attempt_at, error } => {
            warn!(%token, %next_attempt_at, %error, "rotation failed; will retry")
        }
        RotationOutcome::NeedsAttention { reason, error } => {
            error!(%token, %reason, %error, "rotation failed permanently; needs attention")
        }
        RotationOutcome::LeaseLost => warn!(%token, "another worker took the lease over"),
        RotationOutcome::StoreFailed { error } => {
            error!(%token, %error, "could not store the rotation result; it will be recovered")
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use chrono::{DateTime, TimeDelta, Utc};

    use super::*;
    use crate::domain::TokenKind;
    use crate::telemetry::captured_log::lines_logged;

    fn logged(report: &RotationReport) -> String {
        lines_logged(|| log_outcome(report)).join("\n")
    }

    fn rotated(planned_at: Option<DateTime<Utc>>, started_at: DateTime<Utc>) -> RotationReport {
        RotationReport {
            token: "dbt-ci".parse().unwrap(),
            kind: TokenKind::GitlabProjectAccessToken,
            outcome: RotationOutcome::Rotated { version: 2, expires_at: Some(started_at + TimeDelta::days(90)) },
            planned_at,
            started_at,
            commit_gap: Some(Duration::from_micros(250)),
            durable_at: None,
            retry_after: None,
        }
    }

    fn start() -> DateTime<Utc> {
        DateTime::parse_from_rfc3339("2026-12-03T10:00:00Z").unwrap().with_timezone(&Utc)
    }

    #[test]
    fn a_late_scheduled_rotation_logs_its_lag_as_a_plain_number() {
        let line = logged(&rotated(Some(start() - TimeDelta::milliseconds(12)), start()));
        assert!(line.contains("lag_ms=12 "), "{line}");
        assert!(line.contains("commit_gap_us=250"), "{line}");
        assert!(!line.contains("Some(") && !line.contains("early_by_ms"), "{line}");
    }

    #[test]
    fn a_forced_rotation_before_its_plan_logs_how_early_it_was_never_a_negative_lag() {
        let line = logged(&rotated(Some(start() + TimeDelta::days(59) + TimeDelta::milliseconds(5)), start()));
        assert!(line.contains("early_by_ms=5097600005"), "{line}");
        assert!(!line.contains("lag_ms") && !line.contains("=-") && !line.contains("Some("), "{line}");
    }

    #[test]
    fn an_attempt_without_a_plan_logs_neither() {
        let line = logged(&rotated(None, start()));
        assert!(line.contains("rotated") && line.contains("version=2"), "{line}");
        assert!(!line.contains("lag_ms") && !line.contains("early_by_ms") && !line.contains("Some("), "{line}");
    }
}
