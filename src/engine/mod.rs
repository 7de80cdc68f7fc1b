//! The rotation engine: policy, scheduler, and the claim → call → commit protocol.
//!
//! Data flows one way: the scheduler finds due tokens in the store, claims a lease, asks a
//! provider for a new secret, and commits it (with history and webhook deliveries) before
//! anything else. [`protocol`] is the one place that says what happens when a provider's
//! answer is lost, a worker dies, or the store refuses a write.

pub mod backoff;
pub mod clock;
mod context;
pub mod create;
pub mod deploy;
mod dispatch;
pub mod heal;
pub mod maintenance;
pub mod metrics_watch;
mod outcome_log;
pub mod policy;
pub mod protocol;
mod ready_claims;
pub mod retire;
pub mod revoke;
pub mod scheduler;
pub mod window;

pub use clock::{Clock, ManualClock, SharedClock, SystemClock};
pub use context::{EngineContext, EngineSettings, build_oauth_client, build_provider};
pub use protocol::{ForcedRotation, RotationOutcome, RotationReport, rotate_now};
pub use scheduler::{Limits, Scheduler, SchedulerHandle};
