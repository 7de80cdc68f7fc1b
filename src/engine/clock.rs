//! Time for the engine, injectable so tests move time without sleeping.

use std::sync::{Arc, Mutex, PoisonError};

use chrono::{DateTime, TimeDelta, Utc};
use tokio::sync::watch;

/// A source of the current time that can also wait until a moment.
#[async_trait::async_trait]
pub trait Clock: Send + Sync + std::fmt::Debug {
    /// The current time.
    fn now(&self) -> DateTime<Utc>;

    /// Returns once `deadline` has been reached.
    async fn sleep_until(&self, deadline: DateTime<Utc>);
}

/// The shared clock handle the engine carries.
pub type SharedClock = Arc<dyn Clock>;

/// The real wall clock, sleeping with tokio timers.
#[derive(Debug, Default, Clone, Copy)]
pub struct SystemClock;

#[async_trait::async_trait]
impl Clock for SystemClock {
    fn now(&self) -> DateTime<Utc> {
        Utc::now()
    }

    async fn sleep_until(&self, deadline: DateTime<Utc>) {
        let wait = (deadline - Utc::now()).to_std().unwrap_or_default();
        tokio::time::sleep(wait).await;
    }
}

/// A clock that moves only when told to; sleepers wake when it passes their deadline.
#[derive(Debug, Clone)]
pub struct ManualClock {
    now: Arc<Mutex<DateTime<Utc>>>,
    changed: watch::Sender<DateTime<Utc>>,
}

impl ManualClock {
    /// A clock standing at `start`.
    pub fn new(start: DateTime<Utc>) -> Self {
        let (changed, _) = watch::channel(start);
        Self { now: Arc::new(Mutex::new(start)), changed }
    }

    /// Moves the clock forward by `delta` and wakes sleepers whose deadline passed.
    pub fn advance(&self, delta: TimeDelta) {
        let mut now = self.now.lock().unwrap_or_else(PoisonError::into_inner);
        *now += delta;
        self.changed.send_replace(*now);
    }

    /// Sets the clock to `moment` (which may be earlier, to test clock skew).
    pub fn set(&self, moment: DateTime<Utc>) {
        *self.now.lock().unwrap_or_else(PoisonError::into_inner) = moment;
        self.changed.send_replace(moment);
    }
}

#[async_trait::async_trait]
impl Clock for ManualClock {
    fn now(&self) -> DateTime<Utc> {
        *self.now.lock().unwrap_or_else(PoisonError::into_inner)
    }

    async fn sleep_until(&self, deadline: DateTime<Utc>) {
        let mut changes = self.changed.subscribe();
        while self.now() < deadline {
            if changes.changed().await.is_err() {
                return;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn manual_clock_wakes_sleepers_only_when_advanced_past_their_deadline() {
        let clock = ManualClock::new(Utc::now());
        let deadline = clock.now() + TimeDelta::seconds(10);
        let sleeper = {
            let clock = clock.clone();
            tokio::spawn(async move { clock.sleep_until(deadline).await })
        };
        clock.advance(TimeDelta::seconds(5));
        tokio::task::yield_now().await;
        assert!(!sleeper.is_finished());
        clock.advance(TimeDelta::seconds(5));
        tokio::time::timeout(std::time::Duration::from_secs(1), sleeper).await.unwrap().unwrap();
    }
}
