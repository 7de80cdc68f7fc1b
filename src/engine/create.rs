//! `token create`: a project or group access token or a deploy token made at GitLab through a
//! managing credential, under the new token's own lease (claim → call → commit, see
//! [`crate::store::creation`]). An unknown outcome is never answered with a blind second create:
//! the tokens of that GitLab name made since the claim are listed through the manager and
//! revoked, and only then is the token created once more.

use chrono::TimeDelta;
use secrecy::SecretString;
use tracing::{info, warn};

use super::EngineContext;
use super::policy::requested_gitlab_expiry;
use super::protocol::{commit_answer, seal_answer};
use crate::domain::{Policy, PolicyOverrides, ProviderName, TokenKind, TokenName};
use crate::providers::gitlab_admin::{CreatedToken, Family, Namespace, NewAccessToken, Place, TokenAdmin};
use crate::providers::{ProviderError, Renewed};
use crate::store::creation::{self, ManagedSpec, NewManagedToken};
use crate::store::models::ProviderRow;
use crate::store::models::Token;
use crate::store::pending_revocations::Retirement;
use crate::store::rotation::{self, AnswerOrigin, Claim, Failure};
use crate::store::tokens::{self, SecretField};
use crate::store::{StoreError, providers};

/// What `token create` is asked.
#[derive(Debug, Clone)]
pub struct CreateRequest {
    /// The token's name in tokenwarden.
    pub name: TokenName,
    /// The GitLab provider.
    pub provider: ProviderName,
    /// `gitlab-project-access-token`, `gitlab-group-access-token` or `gitlab-deploy-token`.
    pub kind: TokenKind,
    /// The project or group.
    pub namespace: Namespace,
    /// The managing token (a Maintainer's or Owner's, with the `api` scope).
    pub manager: TokenName,
    /// Its name at GitLab (default `tokenwarden: NAME`).
    pub gitlab_name: Option<String>,
    /// Its scopes.
    pub scopes: Vec<String>,
    /// Its role (10 Guest … 50 Owner).
    pub access_level: u8,
    /// Policy overrides.
    pub policy: PolicyOverrides,
    /// Deploy tokens: how long an old one outlives its successor at most (default 1 h).
    pub overlap: Option<TimeDelta>,
}

/// Why a token was not created.
#[derive(Debug, thiserror::Error)]
pub enum CreateError {
    /// The request cannot work (unknown manager, wrong kind, a name GitLab already uses).
    #[error("{0}")]
    Invalid(String),
    /// GitLab refused (its explanation) or failed; nothing is left behind.
    #[error("{0}")]
    Refused(String),
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Creates the token and stores it as version 1.
pub async fn create_token(context: &EngineContext, request: CreateRequest, actor: &str) -> Result<Token, CreateError> {
    let (admin, provider_id, place) = prepare(context, &request).await?;
    let gitlab_name = request.gitlab_name.clone().unwrap_or_else(|| format!("tokenwarden: {}", request.name));
    let existing = admin.active_named(&place, &gitlab_name).await.map_err(refused)?;
    if let Some(token) = existing.first() {
        return Err(CreateError::Invalid(format!(
            "GitLab already has an active token named {gitlab_name:?} there (id {}); give another --gitlab-name or revoke that one",
            token.id
        )));
    }
    let policy = Policy::resolve(request.kind, &request.policy, &context.policy);
    let new = NewAccessToken {
        name: gitlab_name.clone(),
        scopes: request.scopes.clone(),
        access_level: request.access_level,
        expires_at: requested_gitlab_expiry(context.clock.now(), &policy),
    };
    let managed = NewManagedToken {
        name: request.name.clone(),
        kind: request.kind,
        provider_id,
        resource_kind: request.namespace.kind_name().to_owned(),
        resource: request.namespace.id().to_owned(),
        gitlab_name,
        manager_id: String::new(),
        access_level: i32::from(request.access_level),
        scopes: request.scopes.join(" "),
        policy: request.policy,
        overlap: request.overlap,
    };
    let claim = claim(context, managed, &request.manager).await?;
    match make(&admin, &place, &new, context.clock.now(), &[]).await {
        Made::Created(created) => commit(context, &claim, &policy, created, actor, AnswerOrigin::Created, None).await,
        Made::Nothing(err) => Err(give_up(context, &claim, refused(err)).await),
        // What GitLab made could not be revoked: the token stays, flagged, so that the live
        // token at GitLab is one tokenwarden knows about.
        Made::Unresolved(err) => Err(flag_unresolved(context, &claim, &new.name, &err).await),
    }
}

/// What a create ended with.
pub(crate) enum Made {
    /// GitLab made it and said so.
    Created(CreatedToken),
    /// GitLab made nothing that is live (a refusal, a failure, or what it made was revoked).
    Nothing(ProviderError),
    /// GitLab may hold a live token of that name that could not be revoked.
    Unresolved(ProviderError),
}

/// Creates `new`, resolving a lost answer by revoking the tokens of its name made since `since`
/// (through the manager) and creating once more; a second lost answer is resolved the same way.
/// `known` are GitLab ids of live tokens of that name tokenwarden holds (never revoked here).
pub(crate) async fn make(
    admin: &TokenAdmin,
    place: &Place,
    new: &NewAccessToken,
    since: chrono::DateTime<chrono::Utc>,
    known: &[u64],
) -> Made {
    let mut created = admin.create(place, new).await;
    for round in 0..2 {
        let Err(err @ ProviderError::Unknown { .. }) = &created else { break };
        warn!(name = %new.name, error = %err, "the create's outcome is unknown; revoking what it may have made");
        if let Err(err) = revoke_made_since(admin, place, &new.name, since, known).await {
            return Made::Unresolved(err);
        }
        if round == 0 {
            created = admin.create(place, new).await;
        }
    }
    match created {
        Ok(created) => Made::Created(created),
        Err(err) => Made::Nothing(err),
    }
}

/// Checks the provider, the kind and the manager; opens the manager's current secret.
async fn prepare(context: &EngineContext, request: &CreateRequest) -> Result<(TokenAdmin, String, Place), CreateError> {
    let Some(place) = place_of(request.kind, request.namespace.clone()) else {
        return Err(CreateError::Invalid(format!(
            "token create makes project and group access tokens and deploy tokens, not a {}",
            request.kind
        )));
    };
    let (admin, provider) = open_admin(context, &request.provider, request.kind, &request.manager).await?;
    Ok((admin, provider.id, place))
}

/// Where a managed token of `kind` in `namespace` lives (`None`: a kind no manager makes, or a
/// project access token asked of a group and the other way round).
pub(crate) fn place_of(kind: TokenKind, namespace: Namespace) -> Option<Place> {
    let family = match (kind, &namespace) {
        (TokenKind::GitlabProjectAccessToken, Namespace::Project(_))
        | (TokenKind::GitlabGroupAccessToken, Namespace::Group(_)) => Family::AccessTokens,
        (TokenKind::GitlabDeployToken, _) => Family::DeployTokens,
        _ => return None,
    };
    Some(Place { namespace, family })
}

/// Where the managed token `spec` describes lives.
pub(crate) fn place_of_spec(kind: TokenKind, spec: &ManagedSpec) -> Option<Place> {
    place_of(kind, Namespace::from_parts(&spec.resource_kind, &spec.resource)?)
}

/// What committing a managed token's successor retires: the old one, revoked through the manager
/// at once for an access token, and for a deploy token once every reader acknowledged the
/// successor or `spec.overlap` after now.
pub(crate) fn retirement(kind: TokenKind, spec: &ManagedSpec, now: chrono::DateTime<chrono::Utc>) -> Retirement {
    let overlap = if kind.is_deploy_token() { spec.overlap } else { TimeDelta::zero() };
    Retirement {
        manager_id: spec.manager_id.clone(),
        token_kind: kind.to_string(),
        resource_kind: spec.resource_kind.clone(),
        resource: spec.resource.clone(),
        not_after: now + overlap,
    }
}

/// Checks that `manager` is a GitLab credential of `provider` (which may hold tokens of `kind`)
/// and opens its current secret: the client that acts with it.
pub(crate) async fn open_admin(
    context: &EngineContext,
    provider: &ProviderName,
    kind: TokenKind,
    manager: &TokenName,
) -> Result<(TokenAdmin, ProviderRow), CreateError> {
    let (cipher, provider_name, manager_name) = (context.cipher.clone(), provider.clone(), manager.clone());
    let (provider, secret): (ProviderRow, Option<SecretString>) = context
        .store
        .run(move |conn| {
            let provider = providers::find_row(conn, &provider_name)?;
            tokens::check_compatible(kind, &provider)?;
            let manager = tokens::find(conn, &manager_name)?;
            if manager.provider != provider_name {
                return Err(StoreError::InvalidInput(format!(
                    "the manager '{}' belongs to provider '{}', not '{}'",
                    manager.name, manager.provider, provider_name
                )));
            }
            if manager.kind == TokenKind::Oauth2 {
                return Err(StoreError::InvalidInput(format!(
                    "the manager '{}' is not a GitLab credential",
                    manager.name
                )));
            }
            let secret = tokens::read_secret(conn, &cipher, &manager_name, SecretField::Secret)?;
            Ok((provider, secret))
        })
        .await?;
    let secret =
        secret.ok_or_else(|| CreateError::Invalid(format!("the manager '{manager}' has no current secret yet")))?;
    let url = provider
        .url
        .clone()
        .ok_or_else(|| CreateError::Invalid(format!("provider '{}' has no --url", provider.name)))?;
    Ok((TokenAdmin::new(context.http.clone(), &url, secret, manager.as_str()), provider))
}

/// Writes the new token's row with its manager and takes its lease.
async fn claim(
    context: &EngineContext,
    mut managed: NewManagedToken,
    manager: &TokenName,
) -> Result<Claim, CreateError> {
    let (owner, lease, now, manager) = (context.owner.clone(), context.lease(), context.clock.now(), manager.clone());
    Ok(context
        .store
        .run(move |conn| {
            managed.manager_id = tokens::find(conn, &manager)?.id;
            creation::claim_new(conn, &managed, &owner, lease, now)
        })
        .await?)
}

/// Revokes every active token named `name` created since `since` (give or take a minute of clock
/// difference) that is not `known`: before the claim GitLab had no other, so each is one this
/// create made. (Deploy tokens carry no creation time: every unknown one of the name goes.)
pub(crate) async fn revoke_made_since(
    admin: &TokenAdmin,
    place: &Place,
    name: &str,
    since: chrono::DateTime<chrono::Utc>,
    known: &[u64],
) -> Result<usize, ProviderError> {
    let mut revoked = 0;
    for token in admin.active_named(place, name).await? {
        if !known.contains(&token.id) && token.created_at.is_none_or(|at| at >= since - TimeDelta::minutes(1)) {
            admin.revoke(place, token.id).await?;
            revoked += 1;
        }
    }
    info!(name, revoked, "revoked what an unknown create outcome made");
    Ok(revoked)
}

/// Removes the new token's row (nothing live was made) and answers `error`.
async fn give_up(context: &EngineContext, claim: &Claim, error: CreateError) -> CreateError {
    let lease = claim.lease();
    if let Err(err) = context.store.run(move |conn| creation::abandon(conn, &lease)).await {
        warn!(token = %claim.token.name, error = %err, "could not remove the token that was not created");
    }
    error
}

/// Marks the new token `needs_attention` (`create_interrupted`) because a token GitLab may have
/// made under `gitlab_name` could not be revoked.
async fn flag_unresolved(
    context: &EngineContext,
    claim: &Claim,
    gitlab_name: &str,
    err: &ProviderError,
) -> CreateError {
    let error = format!(
        "the create's outcome was unknown and what it made could not be revoked ({err}): GitLab may hold an active token \
         named {gitlab_name:?}; revoke it at GitLab, then `tokenwarden token remove {}` and create it again",
        claim.token.name
    );
    let failure = Failure::NeedsAttention { reason: creation::CREATE_INTERRUPTED.to_owned(), error: error.clone() };
    let (lease, now) = (claim.lease(), context.clock.now());
    let stored =
        context.store.run(move |conn| rotation::commit_failure(conn, &lease, &failure, "scheduler", now)).await;
    if let Err(err) = stored {
        warn!(token = %claim.token.name, error = %err, "could not flag the token; its lease runs out and flags it");
    }
    CreateError::Refused(error)
}

/// Stores the created token (version + 1) through the answer path; `retire`: the previous
/// secret stays valid until then (deploy tokens).
pub(crate) async fn commit(
    context: &EngineContext,
    claim: &Claim,
    policy: &Policy,
    created: CreatedToken,
    actor: &str,
    origin: AnswerOrigin,
    retire: Option<Retirement>,
) -> Result<Token, CreateError> {
    let answer = seal_created(context, claim, policy, created, actor, origin, retire).map_err(StoreError::from)?;
    match commit_answer(context, claim, answer, false).await.0 {
        super::RotationOutcome::Rotated { .. } => {
            context.revocations.notify_one();
            let name = claim.token.name.clone();
            Ok(context.store.run(move |conn| tokens::find(conn, &name)).await?)
        }
        other => Err(CreateError::Refused(format!(
            "GitLab created the token but it could not be stored ({other:?}); the token will need attention when its lease runs out — revoke it at GitLab"
        ))),
    }
}

/// The answer that stores `created` as the claimed token's next version.
pub(crate) fn seal_created(
    context: &EngineContext,
    claim: &Claim,
    policy: &Policy,
    created: CreatedToken,
    actor: &str,
    origin: AnswerOrigin,
    retire: Option<Retirement>,
) -> Result<crate::store::rotation::Answer, crate::crypto::CryptoError> {
    let username = created.username;
    let renewed = Renewed {
        secret: created.secret,
        refresh_token: None,
        expires_at: Some(created.expires_at),
        issued_at: context.clock.now(),
        external_id: Some(created.id),
        refresh_token_rotates: None,
        assumed_lifetime: false,
        scope: (!created.scopes.is_empty()).then(|| created.scopes.join(" ")),
    };
    let (mut answer, _) = seal_answer(context, claim, policy, renewed, actor, None)?;
    answer.origin = origin;
    answer.success.username = username;
    answer.success.retire = retire;
    Ok(answer)
}

pub(crate) fn refused(err: ProviderError) -> CreateError {
    CreateError::Refused(match err {
        ProviderError::Permanent { message, .. } => message,
        ProviderError::Transient { message, .. } => {
            format!("GitLab failed ({message}); nothing was created — try again")
        }
        ProviderError::Unknown { message } => {
            format!("GitLab's answer was lost twice ({message}); what it made was revoked — try again")
        }
    })
}
