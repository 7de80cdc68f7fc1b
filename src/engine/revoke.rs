//! `token remove --revoke`: revoke the credential at its provider, then remove the token —
//! claim → call → commit under the token's rotation lease (see [`crate::store::revocation`]).
//!
//! What happens if the process dies here? Before the call: the lease runs out and the token is
//! marked `needs_attention` (`revoke_interrupted`), never rotated. After the provider revoked it
//! but before the removal: the same, and running the command again finds the credential
//! already invalid and removes the token. A refused or failed revocation keeps the token as it
//! was, unless `--force` removes it anyway.

use crate::domain::{Policy, TokenName};
use crate::providers::{ProviderError, Revocation};
use crate::store::StoreError;
use crate::store::revocation::{self, RevokeClaim};

use super::context::{EngineContext, build_provider};
use super::protocol::{ROTATION_RESPONSE_LOST, open_credential};

/// How the revocation ended for a token that was removed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Revoked {
    /// The provider revoked the credential.
    AtProvider,
    /// The provider no longer accepted it (revoked, expired or rotated before).
    AlreadyInvalid {
        /// The token had lost a rotation answer: a successor credential may live at the
        /// provider, which only its owner (or a managing credential) can revoke.
        successor_may_live: bool,
    },
    /// The revocation failed and `--force` removed the token anyway.
    Forced {
        /// Why the provider did not revoke it.
        error: String,
    },
}

/// A token revoked (or forced) and removed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Removal {
    /// How the revocation ended.
    pub revoked: Revoked,
    /// Readers whose grants of it went with it.
    pub readers: Vec<String>,
}

/// Why the token was not removed.
#[derive(Debug, thiserror::Error)]
pub enum RevokeError {
    /// The store refused or failed (unknown token, a rotation in flight, …).
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The provider did not revoke it; the token is kept as it was.
    #[error("token '{token}' was not removed: the revocation failed: {error}")]
    NotRevoked {
        /// The token.
        token: String,
        /// Why.
        error: String,
    },
}

/// Revokes `name` at its provider and removes it; without `force`, a failed revocation keeps it.
pub async fn revoke_and_remove(
    context: &EngineContext,
    name: &TokenName,
    force: bool,
    actor: &str,
) -> Result<Removal, RevokeError> {
    let (owner, lease, now) = (context.owner.clone(), context.lease(), context.clock.now());
    let claimed = {
        let name = name.clone();
        context.store.run(move |conn| revocation::claim(conn, &name, &owner, lease, now)).await?
    };
    let answer = call_provider(context, &claimed).await;
    let lease = claimed.claim.lease();
    let actor = actor.to_owned();
    let now = context.clock.now();
    let revoked = match answer {
        Ok(Revocation::Revoked) => Revoked::AtProvider,
        Ok(Revocation::AlreadyInvalid) => Revoked::AlreadyInvalid {
            successor_may_live: claimed.attention_reason.as_deref() == Some(ROTATION_RESPONSE_LOST),
        },
        Err(error) if force => Revoked::Forced { error },
        Err(error) => {
            let before = claimed.claim.before.clone();
            let why = error.clone();
            context.store.run(move |conn| revocation::release(conn, &lease, &before, &actor, &why, now)).await?;
            return Err(RevokeError::NotRevoked { token: name.to_string(), error });
        }
    };
    let detail = match &revoked {
        Revoked::AtProvider => "revoked=at_provider".to_owned(),
        Revoked::AlreadyInvalid { .. } => "revoked=already_invalid".to_owned(),
        Revoked::Forced { error } => format!("revoked=failed forced=true error={error}"),
    };
    let readers = context.store.run(move |conn| revocation::remove_revoked(conn, &lease, &actor, &detail, now)).await?;
    Ok(Removal { revoked, readers })
}

/// Opens the credential and asks the provider to revoke it; any failure as one message.
async fn call_provider(context: &EngineContext, claimed: &RevokeClaim) -> Result<Revocation, String> {
    let claim = &claimed.claim;
    let token = &claim.token;
    if token.kind.is_deploy_token() {
        return revoke_through_manager(context, token).await;
    }
    let policy = Policy::resolve(token.kind, &token.policy_overrides, &context.policy);
    let credential = open_credential(context, claim, &policy)?;
    let provider =
        build_provider(context, &claim.provider, token.kind, token.project.as_deref().or(token.group.as_deref()))?;
    provider.revoke(&credential).await.map_err(|err: ProviderError| err.to_string())
}

/// A deploy token cannot revoke itself: `DELETE …/deploy_tokens/:id` through its manager. (Its
/// old secrets still waiting are revoked by the revocation worker once the token is gone.)
async fn revoke_through_manager(
    context: &EngineContext,
    token: &crate::store::models::Token,
) -> Result<Revocation, String> {
    let token_id = token.id.clone();
    let spec = context
        .store
        .run(move |conn| crate::store::creation::spec_by_id(conn, &token_id))
        .await
        .map_err(|err| err.to_string())?
        .ok_or("it has no manager to revoke it through")?;
    let place = super::create::place_of_spec(token.kind, &spec).ok_or("its project or group is unknown")?;
    let Some(id) = token.external_id.as_deref().and_then(|id| id.parse::<u64>().ok()) else {
        return Ok(Revocation::AlreadyInvalid);
    };
    let (admin, _) = super::create::open_admin(context, &token.provider, token.kind, &spec.manager)
        .await
        .map_err(|err| err.to_string())?;
    admin.revoke(&place, id).await.map_err(|err| err.to_string())?;
    Ok(Revocation::Revoked)
}
