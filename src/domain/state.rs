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

string_enum!(
    /// An earlier attempt whose outcome is not known, and what the next attempt must do about it.
    Recovery, "recovery", {
        /// GitLab: a rotation's answer was lost; probe `…/self` with the old token before
        /// anything else (a 401 there means the rotation happened and its secret is lost).
        Probe => "probe",
        /// OAuth: a refresh's answer was lost; the next refresh is the single allowed retry.
        RetryOnce => "retry_once",
        /// OAuth: the single retry is in flight; if its outcome is lost too, the grant is lost.
        RetryInFlight => "retry_in_flight",
    }
);

/// `needs_attention` reason for a refused client (`invalid_client`): the provider's client id,
/// secret or authentication method is wrong, not the grant — `provider update` fixes it.
pub const CLIENT_CREDENTIALS_REJECTED: &str = "client_credentials_rejected";
