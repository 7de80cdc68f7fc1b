//! Healing a managed token (see [`crate::store::healing`]): through its manager, the live tokens
//! of its GitLab name that are not the stored one (the successor a lost rotation answer made, or
//! what an interrupted create or heal made) are revoked, a token is made again with the same
//! name, scopes, access level and policy ([`super::create::make`], which never creates blindly
//! after a lost answer), and committed as the next version (history `healed`, notifications as
//! for a rotation); the stored token, if it still works, is revoked last.

use tracing::{info, warn};

use super::EngineContext;
use super::create::{CreateError, Made, commit, make, namespace_of, open_admin, refused};
use super::policy::requested_gitlab_expiry;
use crate::domain::{Policy, TokenName};
use crate::providers::gitlab_admin::NewAccessToken;
use crate::store::healing::{self, HealClaim};
use crate::store::models::Token;
use crate::store::rotation::AnswerOrigin;

/// Heals `name` (`forced`: `token heal NAME`, whatever its state; else only when due).
pub async fn heal(context: &EngineContext, name: &TokenName, actor: &str, forced: bool) -> Result<Token, CreateError> {
    let (owner, lease, now, token_name) = (context.owner.clone(), context.lease(), context.clock.now(), name.clone());
    let HealClaim { claim, before, spec } =
        context.store.run(move |conn| healing::claim(conn, &token_name, forced, &owner, lease, now)).await?;
    let held = claim.lease();
    let fail = |error: CreateError| {
        let (lease, before, message, now) = (held.clone(), before.clone(), error.to_string(), context.clock.now());
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
    let Some(namespace) = namespace_of(token.kind, &spec.resource) else {
        return Err(fail(CreateError::Invalid(format!("a {} is not healed", token.kind))).await);
    };
    let admin = match open_admin(context, &token.provider, token.kind, &spec.manager).await {
        Ok((admin, _)) => admin,
        Err(err) => return Err(fail(err).await),
    };
    let ours = token.external_id.clone();
    let live = match admin.active_named(&namespace, &spec.gitlab_name).await {
        Ok(live) => live,
        Err(err) => return Err(fail(refused(err)).await),
    };
    for stray in live.iter().filter(|listed| Some(listed.id.to_string()) != ours) {
        info!(token = %token.name, id = stray.id, "revoking a live token of this name tokenwarden does not hold");
        if let Err(err) = admin.revoke(&namespace, stray.id).await {
            return Err(fail(refused(err)).await);
        }
    }
    let policy = Policy::resolve(token.kind, &token.policy_overrides, &context.policy);
    let new = NewAccessToken {
        name: spec.gitlab_name.clone(),
        scopes: spec.scopes.clone(),
        access_level: spec.access_level,
        expires_at: requested_gitlab_expiry(context.clock.now(), &policy),
    };
    let created = match make(&admin, &namespace, &new, context.clock.now()).await {
        Made::Created(created) => created,
        Made::Nothing(err) | Made::Unresolved(err) => return Err(fail(refused(err)).await),
    };
    let healed = commit(context, &claim, &policy, created, actor, AnswerOrigin::Healed).await?;
    if let Some(old) = ours.and_then(|id| id.parse::<u64>().ok())
        && let Err(err) = admin.revoke(&namespace, old).await
    {
        warn!(token = %healed.name, error = %err, "the replaced token could not be revoked; revoke it at GitLab");
    }
    info!(token = %healed.name, version = healed.version, "healed through its manager");
    Ok(healed)
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
