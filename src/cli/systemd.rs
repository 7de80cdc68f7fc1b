//! systemd integration for `tokenwarden serve`: readiness, stopping and the watchdog.
//!
//! It exists so that the unit in `systemd/tokenwarden.service` can use `Type=notify` (units
//! ordered after tokenwarden start only once the store is open and the API listens) and
//! `WatchdogSec=` (a scheduler loop that stops ticking gets the process restarted, even though
//! the process itself is still alive and `/healthz` still answers). Outside systemd — no
//! `NOTIFY_SOCKET` in the environment — every function here does nothing but log at debug level.

use std::time::Duration;

use chrono::{DateTime, Utc};
use sd_notify::NotifyState;
use tokio::task::JoinHandle;
use tokio::time::MissedTickBehavior;
use tracing::{debug, info, warn};

use crate::engine::SchedulerHandle;

/// The environment variable systemd sets for `Type=notify` services.
const NOTIFY_SOCKET: &str = "NOTIFY_SOCKET";

/// Tells systemd the daemon is ready (store open, API listening); call once, after both are up.
pub fn notify_ready() {
    send(&[NotifyState::Ready, NotifyState::Status("serving: store open, API listening, scheduler running")]);
}

/// Tells systemd the daemon is shutting down, so a slow graceful stop is not taken for a hang.
pub fn notify_stopping() {
    send(&[NotifyState::Stopping, NotifyState::Status("shutting down: finishing in-flight work")]);
}

/// Starts petting systemd's watchdog while the scheduler loop keeps ticking; `None` when
/// `WatchdogSec=` is not set for this process (or it does not run under systemd at all).
///
/// The task sends `WATCHDOG=1` every half of the watchdog interval, but only while the
/// scheduler's heartbeat ([`SchedulerHandle::last_tick`]) is no older than the interval: a
/// wedged loop stops the petting and systemd kills and restarts the process.
pub fn spawn_watchdog(handle: SchedulerHandle) -> Option<JoinHandle<()>> {
    let Some(interval) = sd_notify::watchdog_enabled().filter(|interval| !interval.is_zero()) else {
        debug!("systemd watchdog not enabled (WATCHDOG_USEC unset); not petting it");
        return None;
    };
    if std::env::var_os(NOTIFY_SOCKET).is_none() {
        debug!("systemd watchdog requested but NOTIFY_SOCKET is unset; not petting it");
        return None;
    }
    info!(interval_ms = interval.as_millis(), "petting the systemd watchdog while the scheduler ticks");
    Some(tokio::spawn(pet_while_fresh(handle, interval)))
}

/// The watchdog loop: every `interval / 2`, pet if the heartbeat is fresh, otherwise hold off.
async fn pet_while_fresh(handle: SchedulerHandle, interval: Duration) {
    // Before its first pass the scheduler has no heartbeat; it gets one interval from here.
    let started = Utc::now();
    let mut ticker = tokio::time::interval(interval / 2);
    ticker.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let mut stalled = false;
    loop {
        ticker.tick().await;
        let heartbeat = handle.last_tick().or(Some(started));
        if heartbeat_is_fresh(heartbeat, Utc::now(), interval) {
            if stalled {
                info!("the scheduler loop is ticking again; petting the systemd watchdog");
                stalled = false;
            }
            send(&[NotifyState::Watchdog]);
        } else if !stalled {
            warn!(
                last_tick = handle.last_tick().map(|at| at.to_rfc3339()),
                "the scheduler loop has not ticked within the watchdog interval; \
                 no longer petting the systemd watchdog, so systemd will restart tokenwarden"
            );
            send(&[NotifyState::Status("scheduler loop stalled; waiting for the systemd watchdog")]);
            stalled = true;
        }
    }
}

/// Whether the scheduler's heartbeat `last_tick` is recent enough at `now` to pet a watchdog
/// of `interval`: no heartbeat is never fresh, and neither is one more than `interval` away
/// in either direction (a tick far in the future means the wall clock jumped).
fn heartbeat_is_fresh(last_tick: Option<DateTime<Utc>>, now: DateTime<Utc>, interval: Duration) -> bool {
    let Some(last_tick) = last_tick else {
        return false;
    };
    let Ok(limit) = chrono::TimeDelta::from_std(interval) else {
        return false;
    };
    let age = now.signed_duration_since(last_tick);
    age <= limit && age >= -limit
}

/// Sends `states` to systemd; a debug-level no-op outside systemd, a warning if sending fails.
fn send(states: &[NotifyState<'_>]) {
    if std::env::var_os(NOTIFY_SOCKET).is_none() {
        debug!(?states, "not running under systemd (NOTIFY_SOCKET unset); skipping notification");
        return;
    }
    if let Err(err) = sd_notify::notify(states) {
        warn!(error = %err, ?states, "cannot notify systemd");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(seconds: i64) -> DateTime<Utc> {
        DateTime::from_timestamp(1_700_000_000 + seconds, 0).unwrap()
    }

    const INTERVAL: Duration = Duration::from_secs(30);

    #[test]
    fn a_recent_heartbeat_is_fresh() {
        assert!(heartbeat_is_fresh(Some(at(0)), at(0), INTERVAL));
        assert!(heartbeat_is_fresh(Some(at(0)), at(1), INTERVAL));
        assert!(heartbeat_is_fresh(Some(at(0)), at(29), INTERVAL));
    }

    #[test]
    fn a_heartbeat_exactly_one_interval_old_is_still_fresh() {
        assert!(heartbeat_is_fresh(Some(at(0)), at(30), INTERVAL));
    }

    #[test]
    fn a_heartbeat_older_than_the_interval_is_stale() {
        assert!(!heartbeat_is_fresh(Some(at(0)), at(31), INTERVAL));
        assert!(!heartbeat_is_fresh(Some(at(0)), at(3_600), INTERVAL));
    }

    #[test]
    fn no_heartbeat_is_stale() {
        assert!(!heartbeat_is_fresh(None, at(0), INTERVAL));
    }

    #[test]
    fn a_heartbeat_slightly_ahead_of_now_is_fresh_but_far_ahead_is_not() {
        assert!(heartbeat_is_fresh(Some(at(2)), at(0), INTERVAL));
        assert!(!heartbeat_is_fresh(Some(at(600)), at(0), INTERVAL));
    }

    #[test]
    fn sub_second_intervals_are_honoured() {
        let interval = Duration::from_millis(500);
        let last = at(0);
        assert!(heartbeat_is_fresh(Some(last), last + chrono::TimeDelta::milliseconds(400), interval));
        assert!(!heartbeat_is_fresh(Some(last), last + chrono::TimeDelta::milliseconds(600), interval));
    }

    #[test]
    fn notifications_outside_systemd_are_no_ops() {
        if std::env::var_os(NOTIFY_SOCKET).is_none() {
            notify_ready();
            notify_stopping();
        }
    }
}
