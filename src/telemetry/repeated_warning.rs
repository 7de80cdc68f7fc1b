//! A warning about a condition that lasts (the store unreachable, say) and would otherwise be
//! logged on every poll: the first failure is logged at once, then at most one line per
//! interval with how many failures it stands for, and one line when the condition clears.

use std::fmt::Display;
use std::time::{Duration, Instant};

use tracing::{info, warn};

/// How often a lasting failure is logged again.
pub const REPEAT_INTERVAL: Duration = Duration::from_secs(60);

/// The state of one repeated warning; owned by the loop that polls.
#[derive(Debug)]
pub struct RepeatedWarning {
    message: &'static str,
    interval: Duration,
    failing_since_log: Option<Instant>,
    not_logged: u64,
}

impl RepeatedWarning {
    /// A warning logged as `message`, repeated at most once per `interval`.
    pub fn new(message: &'static str, interval: Duration) -> Self {
        Self { message, interval, failing_since_log: None, not_logged: 0 }
    }

    /// Notes one failure; logs it when none was logged within the interval. Returns whether it
    /// logged.
    pub fn failed(&mut self, error: &dyn Display) -> bool {
        let due = self.failing_since_log.is_none_or(|logged| logged.elapsed() >= self.interval);
        if !due {
            self.not_logged += 1;
            return false;
        }
        warn!(error = %error, failures_since_last_line = self.not_logged, "{}", self.message);
        self.failing_since_log = Some(Instant::now());
        self.not_logged = 0;
        true
    }

    /// Notes `result`: a success is [`RepeatedWarning::succeeded`] and gives its value, a
    /// failure is [`RepeatedWarning::failed`] and gives `None`.
    pub fn note<T, E: Display>(&mut self, result: Result<T, E>) -> Option<T> {
        match result {
            Ok(value) => {
                self.succeeded();
                Some(value)
            }
            Err(err) => {
                self.failed(&err);
                None
            }
        }
    }

    /// Notes a success; logs once that the condition cleared when a failure was logged.
    /// Returns whether it logged.
    pub fn succeeded(&mut self) -> bool {
        if self.failing_since_log.take().is_none() {
            return false;
        }
        info!(failures_since_last_line = std::mem::take(&mut self.not_logged), "cleared: {}", self.message);
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::telemetry::captured_log::lines_logged;

    #[test]
    fn a_lasting_failure_is_one_line_per_interval_and_one_when_it_clears() {
        let mut warning = RepeatedWarning::new("the store is unreachable", Duration::from_secs(3600));
        let lines = lines_logged(|| {
            for _ in 0..1_000 {
                warning.failed(&"connection refused");
            }
            warning.succeeded();
            warning.succeeded();
        });
        assert_eq!(lines.len(), 2, "{lines:#?}");
        assert!(lines[0].contains("the store is unreachable") && lines[0].contains("connection refused"), "{lines:#?}");
        assert!(lines[1].contains("cleared") && lines[1].contains("failures_since_last_line=999"), "{lines:#?}");

        let mut every_time = RepeatedWarning::new("again", Duration::ZERO);
        assert!(lines_logged(|| assert!(every_time.failed(&"x") && every_time.failed(&"x"))).len() == 2);
    }
}
