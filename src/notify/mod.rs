//! Webhook delivery: tells dependent services that a secret changed.
//!
//! The engine only writes outbox rows, in the transaction that commits the change (see
//! [`crate::store::outbox`]); this module sends them, on its own task, so a slow or dead
//! receiver never holds up a rotation. [`signature`] signs each request so receivers can
//! trust it; [`dispatcher`] claims due rows, sends them concurrently (one in flight per
//! client), and retries failures with backoff for at least a day.

pub mod dispatcher;
pub mod signature;

pub use dispatcher::{DeliveryCounters, DeliveryError, Dispatcher, DispatcherHandle, DispatcherSettings};
pub use signature::{SignatureError, sign, verify};
