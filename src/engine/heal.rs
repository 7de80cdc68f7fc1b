//! Healing a managed token (see [`crate::store::healing`]): through its manager, the live tokens
//! of its GitLab name that are not the stored one (the successor a lost rotation answer made, or
//! what an interrupted create or heal made) are revoked, a token is made again with the same
//! name, scopes, access level and policy ([`super::create::make`], which never creates blindly
//! after a lost answer), and committed as the next version (history `healed`, notifications as
//! for a rotation); the stored token is revoked last, through a revocation row written with the
//! commit ([`crate::store::pending_revocations`]): at once for an access token, after its
//! readers or its overlap for a deploy token, as after a rotation.

use tracing::{info, warn};

use super::EngineContext;
use super::create::{CreateError, Made, commit, make, open_admin, place_of_spec, refused, retirement};
use super::policy::requested_gitlab_expiry;
use crate::domain::{Policy, TokenName};
use crate::providers::ProviderError;
use crate::providers::gitlab_admin::{NewAccessToken, Place, TokenAdmin};
use crate::store::healing::{self, HealClaim};
use crate::store::models::Token;
use crate::store::pending_revocations;
use crate::store::rotation::AnswerOrigin;

/// Heals `name` (`forced`: `token heal NAME`, whatever its state; else only when due).
pub async fn heal(context: &EngineContext, name: &TokenName, actor: &str, forced: bool) -> Result<Token, CreateError> {
    let (owner, lease, now, token_name) = (context.owner.clone(), context.lease(), context.clock.now(), name.clone());
    let HealClaim { claim, spec } =
        context.store.run(move |conn| healing::claim(conn, &token_name, forced, &owner, lease, now)).await?;
    let held = claim.lease();
    let fail = |error: CreateError| {
        let (lease, before, message, now) =
            (held.clone(), claim.before.clone(), error.to_string(), context.clock.now());
        async move {
            let name = lease.token_name.clone();
            let stored = context.store.run(move |conn| healing::release(conn, &lease, &before, &message, now)).await;
            if let Err(err) = stored {
                warn!(token = %name, error = %err, "could not put the token back after a failed heal");
            }
            error
        }
    };
    let token = &claim.token;
    let Some(place) = place_of_spec(token.kind, &spec) else {
        return Err(fail(CreateError::Invalid(format!("a {} is not healed", token.kind))).await);
    };
    let admin = match open_admin(context, &token.provider, token.kind, &spec.manager).await {
        Ok((admin, _)) => admin,
        Err(err) => return Err(fail(err).await),
    };
    let ours = token.external_id.as_deref().and_then(|id| id.parse::<u64>().ok());
    let known = match known_ids(context, &token.id, ours).await {
        Ok(known) => known,
        Err(err) => return Err(fail(err.into()).await),
    };
    if let Err(err) = revoke_strays(&admin, &place, &spec.gitlab_name, &known, token.name.as_str()).await {
        return Err(fail(refused(err)).await);
    }
    let policy = Policy::resolve(token.kind, &token.policy_overrides, &context.policy);
    let new = NewAccessToken {
        name: spec.gitlab_name.clone(),
        scopes: spec.scopes.clone(),
        access_level: spec.access_level,
        expires_at: requested_gitlab_expiry(context.clock.now(), &policy),
    };
    let created = match make(&admin, &place, &new, context.clock.now(), &known).await {
        Made::Created(created) => created,
        Made::Nothing(err) | Made::Unresolved(err) => return Err(fail(refused(err)).await),
    };
    // The replaced token is revoked through a durable row written with the commit: at once for
    // an access token (here, or by the daemon's worker if this process dies first), after the
    // readers or the overlap for a deploy token.
    let retire = retirement(token.kind, &spec, context.clock.now());
    let healed = commit(context, &claim, &policy, created, actor, AnswerOrigin::Healed, Some(retire)).await?;
    super::retire::revoke_due_of(context, &healed.id).await;
    info!(token = %healed.name, version = healed.version, "healed through its manager");
    Ok(healed)
}

/// The GitLab ids of the live tokens of token row `token_id` tokenwarden knows: the stored one
/// and old ones still waiting for their revocation.
pub(crate) async fn known_ids(
    context: &EngineContext,
    token_id: &str,
    ours: Option<u64>,
) -> Result<Vec<u64>, crate::store::StoreError> {
    let token_id = token_id.to_owned();
    let pending = context.store.run(move |conn| pending_revocations::pending_for(conn, &token_id)).await?;
    Ok(ours.into_iter().chain(pending.iter().filter_map(|row| row.external_id.parse().ok())).collect())
}

/// Revokes the live tokens named `gitlab_name` that are not `known` (what a lost answer or a
/// process killed mid-create left at GitLab).
pub(crate) async fn revoke_strays(
    admin: &TokenAdmin,
    place: &Place,
    gitlab_name: &str,
    known: &[u64],
    token: &str,
) -> Result<(), ProviderError> {
    for stray in admin.active_named(place, gitlab_name).await?.iter().filter(|listed| !known.contains(&listed.id)) {
        info!(token, id = stray.id, "revoking a live token of this name tokenwarden does not hold");
        admin.revoke(place, stray.id).await?;
    }
    Ok(())
}

/// Heals every managed token that is due ([`healing::due`]); returns how many were healed.
pub async fn heal_due(context: &EngineContext) -> usize {
    let now = context.clock.now();
    let due = match context.store.run(move |conn| healing::due(conn, now)).await {
        Ok(due) => due,
        Err(err) => {
            warn!(error = %err, "could not list the tokens due for a heal");
            return 0;
        }
    };
    let mut healed = 0;
    for name in due {
        match heal(context, &name, "healer", false).await {
            Ok(_) => healed += 1,
            Err(err) => warn!(token = %name, error = %err, "the heal failed; it is tried again at the next sweep"),
        }
    }
    healed
}
