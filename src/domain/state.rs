//! The life-cycle states of a tracked token.

use super::string_enum;

string_enum!(
    /// Where a token stands in its rotation life cycle.
    TokenState, "token state", {
        /// Healthy, waiting for its next rotation.
        Active => "active",
        /// A worker holds the lease and is rotating it.
        Rotating => "rotating",
        /// The last attempt failed for a transient reason; the next one is scheduled.
        Retrying => "retrying",
        /// Permanent failure (revoked, `invalid_grant`, lost); a human must act.
        NeedsAttention => "needs_attention",
        /// Paused by an operator; never rotated until resumed.
        Paused => "paused",
        /// Expired without a successful rotation.
        Expired => "expired",
    }
);

impl TokenState {
    /// True when an operator may pause, resume or remove the token now
    /// (everything but a rotation in flight).
    pub fn is_settled(self) -> bool {
        self != TokenState::Rotating
    }
}
