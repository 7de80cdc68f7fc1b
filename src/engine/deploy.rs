//! Rotating a deploy token. GitLab has no rotate endpoint for deploy tokens, so the provider call
//! of a rotation is a create through the token's manager: a successor with the same GitLab name,
//! scopes and policy, committed as the next version through the same answer path as any
//! rotation. The old token is not revoked here: the commit queues its revocation
//! ([`crate::store::pending_revocations`]), done once every reader acknowledged the successor or
//! the overlap ended. Before creating, live tokens of the name tokenwarden does not know (what a
//! process killed mid-create made) are revoked, so a crash never leaves one behind; a create
//! whose answer is lost is resolved by [`super::create::make`], never by a blind second create.

use super::EngineContext;
use super::create::{Made, make, open_admin, place_of_spec, retirement};
use super::heal::{known_ids, revoke_strays};
use super::policy::requested_gitlab_expiry;
use crate::domain::Policy;
use crate::providers::ProviderError;
use crate::providers::gitlab_admin::{CreatedToken, NewAccessToken};
use crate::store::creation;
use crate::store::pending_revocations::Retirement;
use crate::store::rotation::Claim;

/// A deploy token's successor, made at GitLab, with what its commit retires.
pub struct Successor {
    /// The new token (its secret is in this answer only).
    pub created: CreatedToken,
    /// The old token's revocation, due after the overlap at the latest.
    pub retire: Retirement,
}

/// Makes the claimed deploy token's successor through its manager.
pub async fn make_successor(
    context: &EngineContext,
    claim: &Claim,
    policy: &Policy,
) -> Result<Successor, ProviderError> {
    let token = &claim.token;
    let token_id = token.id.clone();
    let spec = context
        .store
        .run(move |conn| creation::spec_by_id(conn, &token_id))
        .await
        .map_err(|err| ProviderError::transient(format!("cannot read how the token was made: {err}")))?
        .ok_or_else(|| {
            ProviderError::permanent(
                "no_manager",
                "a deploy token is replaced through its manager, and this one has none: make it with `token create --manager`",
            )
        })?;
    let place = place_of_spec(token.kind, &spec).ok_or_else(|| {
        ProviderError::permanent("provider_misconfigured", "the deploy token's project or group is unknown")
    })?;
    let (admin, _) = open_admin(context, &token.provider, token.kind, &spec.manager)
        .await
        .map_err(|err| ProviderError::permanent("manager_unusable", err.to_string()))?;
    let ours = token.external_id.as_deref().and_then(|id| id.parse::<u64>().ok());
    let known = known_ids(context, &token.id, ours)
        .await
        .map_err(|err| ProviderError::transient(format!("cannot read the pending revocations: {err}")))?;
    revoke_strays(&admin, &place, &spec.gitlab_name, &known, token.name.as_str()).await?;
    let new = NewAccessToken {
        name: spec.gitlab_name.clone(),
        scopes: spec.scopes.clone(),
        access_level: spec.access_level,
        expires_at: requested_gitlab_expiry(context.clock.now(), policy),
    };
    match make(&admin, &place, &new, context.clock.now(), &known).await {
        Made::Created(created) => Ok(Successor { created, retire: retirement(token.kind, &spec, context.clock.now()) }),
        Made::Nothing(err) => Err(err),
        // What the lost create made could not be revoked: the next attempt revokes it first.
        Made::Unresolved(err) => Err(ProviderError::transient(format!(
            "a successor GitLab may have made could not be revoked yet ({err}); the next attempt revokes it first"
        ))),
    }
}
