//! The crash-safe rotation protocol: **claim → call → commit**.
//!
//! ```text
//!                 due / forced                  provider answered
//!   active ──────────────────────► rotating ─────────────────────────► active (version+1)
//!   retrying ──────────────────────►  │  │ commit, fenced by attempt id   (history, outbox)
//!     ▲                               │  │
//!     │ transient (backoff,           │  └─ permanent (401, invalid_grant, …) ──► needs_attention
//!     │ Retry-After honoured)         │
//!     └───────────────────────────────┤
//!                                     └─ lease ran out (worker died) ──► claimed again as a
//!                                        recovery: never a blind repeat (see below)
//! ```
//!
//! 1. **Claim**: one short transaction sets `state=rotating`, the lease owner, the lease
//!    expiry and a fresh attempt id, and commits *before* the provider is called.
//! 2. **Call** the provider outside any transaction, with a timeout.
//! 3. **Commit**: the answer (the sealed new secret and what committing it needs) is first
//!    written to the answer journal, in one short transaction shared with the answers that
//!    arrived at the same moment; then one transaction stores the sealed new secret, bumps the
//!    version, writes the history row, the webhook and sink deliveries and the audit row, plans
//!    the next rotation, releases the lease and deletes the journal row — only if the attempt
//!    id still matches (fencing). Nothing slow runs between the provider's answer and its
//!    journal commit: GitLab has already invalidated the old secret, so this gap is where
//!    credentials die. [`RotationReport::commit_gap`] measures it. A process killed after the
//!    journal commit loses nothing: the next claim of the expired lease commits the journaled
//!    answer.
//!
//! When the outcome is **unknown** (timeout after sending, connection cut mid-answer, an
//! unreadable success body, a result we could not commit, or a lease found expired):
//! - **GitLab access tokens** are never rotated again blindly — presenting a rotated token to a
//!   rotate endpoint makes GitLab revoke the whole token family. The attempt after an unknown
//!   outcome (or after any failed attempt: a 5xx may follow a commit at GitLab) first
//!   probes `GET /personal_access_tokens/self` with the old token (which never triggers reuse
//!   detection), after waiting [`EngineContext::settle`] from the failure so a slow request has
//!   finished. Still active → the rotation did not happen → rotate. 401 → the provider rotated
//!   it and the new secret is lost → `needs_attention`, reason `rotation_response_lost`. A
//!   first attempt sends the rotate request alone: one request per rotation.
//!
//! Waits apply to every process alike because they live in the store: an attempt's next time
//! (`next_rotation_at`, which a forced rotation after an unknown outcome also waits for, up to
//! the settle time) and a provider's `Retry-After` (`providers.not_before`, honoured by every
//! claim for every token of that provider).
//! - **OAuth grants**: a refresh invalidates the access token issued before it, so the next
//!   attempt first asks GitLab's `/oauth/token/info` about the stored access token (when it has
//!   not expired by itself). Still valid → the refresh never happened → refresh. Invalid → the
//!   refresh consumed the grant → `needs_attention`, reason `grant_lost`, and the dead refresh
//!   token is never sent. Where nobody can tell (a generic OAuth 2.0 server, an expired access
//!   token), exactly **one** retry with the stored refresh token, marked `retry_in_flight` under
//!   the lease before it is sent so a crash during it is not retried again; `invalid_grant` or
//!   another unknown outcome then → `grant_lost`.
//! - **OAuth grants at a server that keeps refresh tokens** (its refresh answers carry no new
//!   one, recorded as `refresh_token_rotates = false`): the refresh token presented is still
//!   valid after a refresh, so a lost answer cannot have used the grant up. An unknown outcome or
//!   a lease left behind is retried like a transient failure, as often as needed, and
//!   `invalid_grant` there means the grant was revoked — never `grant_lost`.

use std::time::{Duration, Instant};

use chrono::{DateTime, TimeDelta, Utc};
use secrecy::SecretString;
use tracing::{error, info, warn};

use super::context::{EngineContext, build_provider};
use super::outcome_log;
use super::policy::{plan_rotation, requested_gitlab_expiry};
use crate::domain::{Policy, Recovery, TokenKind, TokenName, TokenState};
use crate::providers::{Credential, ProviderError, Renewed, TokenProvider};
use crate::store::StoreError;
use crate::store::rotation::{self, Answer, Authorized, Claim, ClaimMode, ClaimResult, Failure, GRANT_LOST, Success};
use crate::store::tokens::{SecretField, secret_context};
use crate::telemetry::metrics as telemetry;

/// Reason recorded when GitLab rotated a token but its answer (the new secret) was lost.
pub const ROTATION_RESPONSE_LOST: &str = "rotation_response_lost";
/// Reason recorded when a GitLab token was found revoked or expired before rotating.
pub const REVOKED: &str = "revoked";
/// Least time an OAuth access token must have left for a token-info probe to prove anything.
pub const PROBE_MARGIN: chrono::TimeDelta = chrono::TimeDelta::seconds(30);
/// How long the engine keeps trying to commit a renewed secret while the store fails.
pub const COMMIT_RETRY_WINDOW: Duration = Duration::from_secs(300);

/// How one attempt ended.
#[derive(Debug, Clone, PartialEq)]
pub enum RotationOutcome {
    /// A new secret is committed.
    Rotated {
        /// The new version.
        version: i64,
        /// The new secret's expiry.
        expires_at: Option<DateTime<Utc>>,
    },
    /// A transient failure; the next attempt is scheduled.
    Retrying {
        /// When.
        next_attempt_at: DateTime<Utc>,
        /// Why.
        error: String,
    },
    /// A permanent failure; a human must act.
    NeedsAttention {
        /// A short machine reason.
        reason: String,
        /// The explanation.
        error: String,
    },
    /// Another worker took the lease over; nothing was stored by this attempt.
    LeaseLost,
    /// The result could not be stored; the lease will run out and the next claim resolves the
    /// token as an unknown outcome.
    StoreFailed {
        /// The store's error.
        error: String,
    },
}

/// One attempt's outcome with the timings the benchmark and metrics need.
#[derive(Debug, Clone)]
pub struct RotationReport {
    /// The token.
    pub token: TokenName,
    /// Its kind.
    pub kind: TokenKind,
    /// How it ended.
    pub outcome: RotationOutcome,
    /// When the rotation was planned.
    pub planned_at: Option<DateTime<Utc>>,
    /// When the claim was taken.
    pub started_at: DateTime<Utc>,
    /// From the provider's answer until it was durable (journaled): the window in which a
    /// crash loses a credential.
    pub commit_gap: Option<Duration>,
    /// When the answer became durable (the end of [`Self::commit_gap`]).
    pub durable_at: Option<Instant>,
    /// A `Retry-After` the provider asked for.
    pub retry_after: Option<Duration>,
}

/// The result of a forced rotation.
#[derive(Debug, Clone)]
pub enum ForcedRotation {
    /// This call rotated the token (or recorded its failure).
    Attempted(RotationReport),
    /// Another worker was rotating it; this call waited and did not call the provider.
    /// Carries the state and version the token ended in.
    CompletedElsewhere {
        /// The token's state afterwards.
        state: TokenState,
        /// Its version afterwards.
        version: i64,
    },
    /// The token may not be rotated in its current state (paused, needs attention, expired).
    Refused(TokenState),
}

/// Rotates `name` now through the same lease as the scheduler. If a rotation is in flight,
/// waits for it to finish instead of calling the provider a second time; if the provider asked
/// for a pause (`Retry-After`) or an unknown outcome is still settling, waits for that first.
pub async fn rotate_now(context: &EngineContext, name: &TokenName, actor: &str) -> Result<ForcedRotation, StoreError> {
    loop {
        let (owner, lease, now) = (context.owner.clone(), context.lease(), context.clock.now());
        let claimed = {
            let name = name.clone();
            let mode = ClaimMode::Forced { settle: context.settle() };
            context.store.run(move |conn| rotation::claim(conn, &name, mode, &owner, lease, now)).await?
        };
        match claimed {
            ClaimResult::Claimed(claim) => return Ok(ForcedRotation::Attempted(execute(context, *claim, actor).await)),
            ClaimResult::Refused(state) => return Ok(ForcedRotation::Refused(state)),
            ClaimResult::Wait { until } => context.clock.sleep_until(until).await,
            ClaimResult::NotDue | ClaimResult::GrantLost => {
                return Ok(ForcedRotation::Refused(current(context, name).await?.state));
            }
            ClaimResult::Busy { until, .. } => {
                let token = wait_for_lease(context, name, until).await?;
                if token.state != TokenState::Rotating {
                    return Ok(ForcedRotation::CompletedElsewhere { state: token.state, version: token.version });
                }
            }
        }
    }
}

/// The token's current metadata.
async fn current(context: &EngineContext, name: &TokenName) -> Result<crate::store::models::Token, StoreError> {
    let name = name.clone();
    context.store.run(move |conn| crate::store::tokens::find(conn, &name)).await
}

/// Polls until the token leaves `rotating` or its lease (until `until`) has run out.
async fn wait_for_lease(
    context: &EngineContext,
    name: &TokenName,
    until: DateTime<Utc>,
) -> Result<crate::store::models::Token, StoreError> {
    loop {
        let token = current(context, name).await?;
        if token.state != TokenState::Rotating || context.clock.now() > until {
            return Ok(token);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Runs one claimed attempt to its end: call the provider, then commit the result.
pub async fn execute(context: &EngineContext, claim: Claim, actor: &str) -> RotationReport {
    let started_at = context.clock.now();
    let mut report = RotationReport {
        token: claim.token.name.clone(),
        kind: claim.token.kind,
        outcome: RotationOutcome::LeaseLost,
        planned_at: claim.planned_at,
        started_at,
        commit_gap: None,
        durable_at: None,
        retry_after: None,
    };
    let policy = Policy::resolve(claim.token.kind, &claim.token.policy_overrides, &context.policy);
    let attempt = attempt(context, &claim, &policy).await;
    let answered = Instant::now();
    report.outcome = match attempt {
        Attempt::Renewed(renewed) => {
            let (outcome, durable_at) = commit_renewed(context, &claim, &policy, renewed, actor).await;
            report.commit_gap = durable_at.map(|at| at.saturating_duration_since(answered));
            report.durable_at = durable_at;
            outcome
        }
        Attempt::Replaced(successor) => {
            let (outcome, durable_at) = commit_successor(context, &claim, &policy, *successor, actor).await;
            report.commit_gap = durable_at.map(|at| at.saturating_duration_since(answered));
            report.durable_at = durable_at;
            outcome
        }
        Attempt::Failed(failure, retry_after) => {
            report.retry_after = retry_after;
            commit_failure(context, &claim, failure, actor).await
        }
    };
    outcome_log::log_outcome(&report);
    record_metrics(&report);
    if matches!(&report.outcome, RotationOutcome::NeedsAttention { reason, .. } if reason == ROTATION_RESPONSE_LOST) {
        heal_at_once(context, &report.token).await;
    }
    report
}

/// A token whose rotation answer was just found lost is healed now, not at the next sweep, if
/// `token create` made it (a token without a manager, or healed within the hour, is left as is).
async fn heal_at_once(context: &EngineContext, name: &TokenName) {
    match super::heal::heal(context, name, "healer", false).await {
        Ok(token) => {
            info!(token = %token.name, version = token.version, "healed at once after its rotation answer was lost")
        }
        Err(super::create::CreateError::Store(StoreError::InvalidInput(_) | StoreError::Conflict(_))) => {}
        Err(err) => {
            warn!(token = %name, error = %err, "the heal after a lost rotation answer failed; the sweep tries again")
        }
    }
}

/// What the provider call produced.
enum Attempt {
    Renewed(Renewed),
    /// A deploy token's successor, made through its manager.
    Replaced(Box<super::deploy::Successor>),
    Failed(Failure, Option<Duration>),
}

/// Opens the credential and calls the provider by the rules in the module doc.
async fn attempt(context: &EngineContext, claim: &Claim, policy: &Policy) -> Attempt {
    if claim.token.kind.is_deploy_token() {
        return match super::deploy::make_successor(context, claim, policy).await {
            Ok(successor) => Attempt::Replaced(Box::new(successor)),
            Err(ProviderError::Permanent { reason, message }) => needs_attention(&reason, message),
            Err(err) => retry(context, claim, &err, None),
        };
    }
    let credential = match open_credential(context, claim, policy) {
        Ok(credential) => credential,
        Err(err) => return needs_attention("secret_unreadable", err),
    };
    let token = &claim.token;
    let provider =
        match build_provider(context, &claim.provider, token.kind, token.project.as_deref().or(token.group.as_deref()))
        {
            Ok(provider) => provider,
            Err(err) => return needs_attention("provider_misconfigured", err),
        };
    if token.kind.is_gitlab_access_token() {
        gitlab_attempt(context, claim, provider.as_ref(), &credential).await
    } else {
        oauth_attempt(context, claim, provider.as_ref(), &credential).await
    }
}

/// GitLab: rotate; after an earlier attempt that failed — its outcome unknown, or refused in a
/// way that may follow a commit at GitLab (a 5xx) — probe with the old token first. A probe is
/// one harmless look-up; a first attempt sends the rotate request alone.
async fn gitlab_attempt(
    context: &EngineContext,
    claim: &Claim,
    provider: &dyn TokenProvider,
    credential: &Credential,
) -> Attempt {
    let after_failure = claim.recovery == Some(Recovery::Probe) || claim.token.attempt_count > 0;
    if after_failure && let Some(answer) = probe_before_rotating(context, claim, provider, credential).await {
        return answer;
    }
    match provider.renew(credential).await {
        Ok(renewed) => Attempt::Renewed(renewed),
        Err(ProviderError::Permanent { reason, message }) => needs_attention(&reason, message),
        Err(err @ ProviderError::Unknown { .. }) => unknown_outcome(context, claim, &err, Some(Recovery::Probe)),
        Err(err) => retry(context, claim, &err, None),
    }
}

/// The probe before rotating again (`GET …/self` with the old token, which never triggers
/// reuse detection): `None` when the old token is still active, so no rotation happened and
/// rotating is safe; otherwise the attempt's end. A dead old token after an unknown outcome
/// means the rotation went through and its answer was lost.
async fn probe_before_rotating(
    context: &EngineContext,
    claim: &Claim,
    provider: &dyn TokenProvider,
    credential: &Credential,
) -> Option<Attempt> {
    let dead = |message: String| {
        if claim.recovery != Some(Recovery::Probe) {
            return needs_attention(
                REVOKED,
                format!(
                    "the token was revoked or expired (an earlier failed rotate request may have gone through): {message}"
                ),
            );
        }
        needs_attention(
            ROTATION_RESPONSE_LOST,
            format!(
                "the earlier rotation went through at GitLab but its answer was lost, so the new token is unknown; issue a new token and add it again ({message})"
            ),
        )
    };
    match provider.inspect(credential).await {
        Ok(Some(info)) if !info.active || info.revoked => {
            Some(dead("GitLab reports the old token inactive or revoked".to_owned()))
        }
        Ok(_) => None,
        Err(ProviderError::Permanent { reason, message }) if reason == REVOKED => Some(dead(message)),
        Err(ProviderError::Permanent { reason, message }) => Some(needs_attention(&reason, message)),
        Err(err) => Some(retry(context, claim, &err, claim.recovery)),
    }
}

/// OAuth: one refresh. After an unknown outcome the next attempt first asks whether the old
/// access token still works ([`probe_grant`]); only where nobody can tell is the stored refresh
/// token sent again — exactly once, marked `retry_in_flight` before it leaves.
async fn oauth_attempt(
    context: &EngineContext,
    claim: &Claim,
    provider: &dyn TokenProvider,
    credential: &Credential,
) -> Attempt {
    if claim.token.refresh_token_rotates == Some(false) {
        return non_rotating_attempt(context, claim, provider, credential).await;
    }
    let after_unknown = claim.recovery == Some(Recovery::RetryOnce);
    let mut single_retry = false;
    if after_unknown {
        match probe_grant(context, claim, provider, credential).await {
            GrantProbe::Unused => {}
            GrantProbe::Consumed(message) => {
                return needs_attention(
                    GRANT_LOST,
                    format!(
                        "the access token from before the lost refresh answer is invalid, so that refresh consumed the grant (or the application was revoked); the dead refresh token was not sent again. Re-authorise and run `tokenwarden token reauth` ({message})"
                    ),
                );
            }
            GrantProbe::Failed(err) => return retry(context, claim, &err, claim.recovery),
            GrantProbe::CannotTell => {
                if let Err(err) = mark_retry_in_flight(context, claim).await {
                    let err = ProviderError::transient(format!("cannot record the single retry: {err}"));
                    return retry(context, claim, &err, claim.recovery);
                }
                single_retry = true;
            }
        }
    }
    match provider.renew(credential).await {
        Ok(renewed) => Attempt::Renewed(renewed),
        Err(err @ ProviderError::Transient { .. }) => retry(context, claim, &err, claim.recovery),
        Err(ProviderError::Permanent { reason, message }) if after_unknown && reason == "invalid_grant" => {
            needs_attention(
                GRANT_LOST,
                format!(
                    "the refresh after an unknown outcome was refused, so the earlier refresh consumed the grant; re-authorise and run `tokenwarden token reauth` ({message})"
                ),
            )
        }
        Err(ProviderError::Permanent { reason, message }) => needs_attention(&reason, message),
        Err(err @ ProviderError::Unknown { .. }) if single_retry => needs_attention(
            GRANT_LOST,
            format!(
                "the single retry after an unknown outcome had an unknown outcome too; re-authorise and run `tokenwarden token reauth` ({err})"
            ),
        ),
        Err(err @ ProviderError::Unknown { .. }) => unknown_outcome(context, claim, &err, Some(Recovery::RetryOnce)),
    }
}

/// OAuth at a server known to keep the refresh token valid across refreshes (its answers carry
/// no new one): a lost answer cannot have used the grant up, so an unknown outcome is retried
/// like a transient failure — after the settle time, with the same refresh token, as often as
/// needed — and `invalid_grant` means the grant was revoked, never that a refresh was lost.
async fn non_rotating_attempt(
    context: &EngineContext,
    claim: &Claim,
    provider: &dyn TokenProvider,
    credential: &Credential,
) -> Attempt {
    match provider.renew(credential).await {
        Ok(renewed) => Attempt::Renewed(renewed),
        Err(ProviderError::Permanent { reason, message }) => needs_attention(&reason, message),
        Err(err @ ProviderError::Unknown { .. }) => unknown_outcome(context, claim, &err, None),
        Err(err) => retry(context, claim, &err, None),
    }
}

/// What the old access token says about a refresh whose outcome is unknown.
enum GrantProbe {
    /// It still works: the refresh never happened (a refresh invalidates it), so refreshing is safe.
    Unused,
    /// It is invalid: the refresh happened and its answer is lost.
    Consumed(String),
    /// The probe itself failed for a transient reason; try again later.
    Failed(ProviderError),
    /// No way to tell (no token-info endpoint, no access token, or it expired by itself).
    CannotTell,
}

/// Asks the provider (GitLab's `/oauth/token/info`) about the stored access token, if it has
/// more than [`PROBE_MARGIN`] left — an access token that expired by itself proves nothing.
async fn probe_grant(
    context: &EngineContext,
    claim: &Claim,
    provider: &dyn TokenProvider,
    credential: &Credential,
) -> GrantProbe {
    let now = context.clock.now();
    let valid_for_a_while = claim.token.expires_at.is_some_and(|at| at > now + PROBE_MARGIN);
    if !valid_for_a_while {
        return GrantProbe::CannotTell;
    }
    match provider.inspect(credential).await {
        Ok(Some(_)) => GrantProbe::Unused,
        Ok(None) => GrantProbe::CannotTell,
        Err(ProviderError::Permanent { message, .. }) => GrantProbe::Consumed(message),
        Err(err) => GrantProbe::Failed(err),
    }
}

/// Records, under the lease, that the single retry is about to be sent: if its outcome is lost
/// too (a crash), the next claim marks the grant lost instead of sending it a third time.
async fn mark_retry_in_flight(context: &EngineContext, claim: &Claim) -> Result<(), StoreError> {
    let (lease, now) = (claim.lease(), context.clock.now());
    context.store.run(move |conn| rotation::mark_recovery(conn, &lease, Some(Recovery::RetryInFlight), now)).await
}

/// A transient failure: back off from now (full jitter, `Retry-After` honoured, capped
/// before expiry).
fn retry(context: &EngineContext, claim: &Claim, err: &ProviderError, recovery: Option<Recovery>) -> Attempt {
    let retry_after = match err {
        ProviderError::Transient { retry_after, .. } => *retry_after,
        _ => None,
    };
    let now = context.clock.now();
    let attempt_number = claim.token.attempt_count + 1;
    let next_attempt_at =
        context.settings.backoff.next_attempt(attempt_number, now, claim.token.expires_at, retry_after);
    let provider_not_before = retry_after.and_then(|wait| TimeDelta::from_std(wait).ok()).map(|wait| now + wait);
    let failure = Failure::Retry { next_attempt_at, error: err.to_string(), recovery, provider_not_before };
    Attempt::Failed(failure, retry_after)
}

/// An unknown outcome: the next attempt must start with `recovery` (if any), and not before
/// [`EngineContext::settle`] has passed since this request gave up (counted from now, after the
/// call, so a request the provider is still working on has finished by then) — nor sooner than
/// the ordinary backoff.
fn unknown_outcome(context: &EngineContext, claim: &Claim, err: &ProviderError, recovery: Option<Recovery>) -> Attempt {
    let now = context.clock.now();
    let attempt_number = claim.token.attempt_count + 1;
    let backoff = context.settings.backoff.next_attempt(attempt_number, now, claim.token.expires_at, None);
    let next_attempt_at = backoff.max(now + context.settle());
    let failure = Failure::Retry { next_attempt_at, error: err.to_string(), recovery, provider_not_before: None };
    Attempt::Failed(failure, None)
}

fn needs_attention(reason: &str, error: String) -> Attempt {
    Attempt::Failed(Failure::NeedsAttention { reason: reason.to_owned(), error }, None)
}

/// Opens the sealed secrets the provider needs.
pub(super) fn open_credential(context: &EngineContext, claim: &Claim, policy: &Policy) -> Result<Credential, String> {
    let open = |field: SecretField, sealed: &Option<Vec<u8>>| -> Result<Option<SecretString>, String> {
        sealed
            .as_ref()
            .map(|bytes| context.cipher.open(secret_context(&claim.token.id, field), bytes).map_err(|e| e.to_string()))
            .transpose()
    };
    Ok(Credential {
        secret: open(SecretField::Secret, &claim.sealed_secret)?,
        refresh_token: open(SecretField::RefreshToken, &claim.sealed_refresh_token)?,
        requested_expiry: requested_gitlab_expiry(context.clock.now(), policy),
        requested_at: context.clock.now(),
    })
}

/// Seals and commits a renewed secret — the very next thing after the provider's answer; also
/// returns when the answer became durable (journaled). Retries the commit while the store
/// fails; a result that cannot be stored at all is left to the recovery rules (the lease runs
/// out, the next claim commits the journaled answer or treats the outcome as unknown).
async fn commit_renewed(
    context: &EngineContext,
    claim: &Claim,
    policy: &Policy,
    renewed: Renewed,
    actor: &str,
) -> (RotationOutcome, Option<Instant>) {
    match seal_answer(context, claim, policy, renewed, actor, None) {
        Ok((answer, assumed_lifetime)) => commit_answer(context, claim, answer, assumed_lifetime).await,
        Err(err) => (RotationOutcome::StoreFailed { error: err.to_string() }, None),
    }
}

/// Commits a deploy token's successor as the next version (queuing the old one's revocation in
/// the same transaction) and wakes the revocation worker.
async fn commit_successor(
    context: &EngineContext,
    claim: &Claim,
    policy: &Policy,
    successor: super::deploy::Successor,
    actor: &str,
) -> (RotationOutcome, Option<Instant>) {
    let origin = crate::store::rotation::AnswerOrigin::Rotated;
    match super::create::seal_created(context, claim, policy, successor.created, actor, origin, Some(successor.retire))
    {
        Ok(answer) => {
            let committed = commit_answer(context, claim, answer, false).await;
            context.revocations.notify_one();
            committed
        }
        Err(err) => (RotationOutcome::StoreFailed { error: err.to_string() }, None),
    }
}

/// The answer to store for `renewed`: its secrets sealed for the claimed token's row and its
/// next rotation planned under `policy`; with whether its lifetime was assumed.
pub(crate) fn seal_answer(
    context: &EngineContext,
    claim: &Claim,
    policy: &Policy,
    renewed: Renewed,
    actor: &str,
    authorized: Option<Authorized>,
) -> Result<(Answer, bool), crate::crypto::CryptoError> {
    let seal = |field, secret: &SecretString| context.cipher.try_seal(secret_context(&claim.token.id, field), secret);
    let next_rotation_at = renewed
        .expires_at
        .map(|expires_at| plan_rotation(claim.token.name.as_str(), renewed.issued_at, expires_at, policy));
    let secret = seal(SecretField::Secret, &renewed.secret)?;
    let refresh_token = renewed.refresh_token.as_ref().map(|r| seal(SecretField::RefreshToken, r)).transpose()?;
    let success = Success {
        secret,
        refresh_token,
        expires_at: renewed.expires_at,
        issued_at: renewed.issued_at,
        external_id: renewed.external_id,
        next_rotation_at,
        refresh_token_rotates: renewed.refresh_token_rotates,
        scope: renewed.scope,
        username: None,
        retire: None,
    };
    let answer = Answer {
        lease: claim.lease(),
        success,
        actor: actor.to_owned(),
        now: context.clock.now(),
        authorized,
        origin: Default::default(),
    };
    Ok((answer, renewed.assumed_lifetime))
}

/// Commits a sealed answer (journal, then the token's row with its history, outbox, sinks and
/// audit), retrying while the store fails; each try is stamped with the time it is made.
pub(crate) async fn commit_answer(
    context: &EngineContext,
    claim: &Claim,
    answer: Answer,
    assumed_lifetime: bool,
) -> (RotationOutcome, Option<Instant>) {
    let expires_at = answer.success.expires_at;
    let stamped = |now| Answer { now, ..answer.clone() };
    let committed = commit_with_retries(context, |now| context.store.commit_answer(stamped(now)));
    match committed.await {
        Ok(stored) => {
            // Logged after the commit: nothing but the store's write sits between the
            // provider's answer and the commit (a crash there loses the credential).
            if assumed_lifetime {
                warn_assumed_lifetime(context, claim);
            }
            (RotationOutcome::Rotated { version: stored.version, expires_at }, Some(stored.durable_at))
        }
        Err(StoreError::LeaseLost { .. }) => (RotationOutcome::LeaseLost, None),
        Err(err) => (RotationOutcome::StoreFailed { error: err.to_string() }, None),
    }
}

/// Warns, once per token and process, that the provider gave no `expires_in`, so the access
/// token's expiry is the configured assumption (`oauth.assumed_lifetime`).
fn warn_assumed_lifetime(context: &EngineContext, claim: &Claim) {
    if !context.first_assumed_lifetime(&claim.token.id) {
        return;
    }
    let assumed = crate::config::HumanDuration::new(context.settings.oauth.assumed_lifetime);
    warn!(
        token = %claim.token.name, assumed_lifetime = %assumed,
        "the provider's refresh answer has no expires_in; assuming the access token lives oauth.assumed_lifetime"
    );
}

/// Records a failed attempt (retrying or needs attention) and releases the lease.
async fn commit_failure(context: &EngineContext, claim: &Claim, failure: Failure, actor: &str) -> RotationOutcome {
    let lease = claim.lease();
    let committed = commit_with_retries(context, |now| {
        let (lease, stored, actor) = (lease.clone(), failure.clone(), actor.to_owned());
        context.store.run(move |conn| rotation::commit_failure(conn, &lease, &stored, &actor, now))
    });
    match committed.await {
        Ok(()) => match failure {
            Failure::Retry { next_attempt_at, error, .. } => RotationOutcome::Retrying { next_attempt_at, error },
            Failure::NeedsAttention { reason, error } => RotationOutcome::NeedsAttention { reason, error },
        },
        Err(StoreError::LeaseLost { .. }) => RotationOutcome::LeaseLost,
        Err(err) => RotationOutcome::StoreFailed { error: err.to_string() },
    }
}

/// Runs a fenced write, retrying while the store fails (locked, full, briefly down) for up
/// to [`COMMIT_RETRY_WINDOW`]; a lost lease is final at once. Retrying past the lease's expiry
/// is safe and worth it: the write is fenced by the attempt id, so it lands only if no one has
/// claimed the token since — and a store that fails for us has usually failed for everyone.
async fn commit_with_retries<T, F, Attempt>(context: &EngineContext, write: F) -> Result<T, StoreError>
where
    F: Fn(DateTime<Utc>) -> Attempt,
    Attempt: std::future::Future<Output = Result<T, StoreError>>,
{
    let started = Instant::now();
    let mut pause = Duration::from_millis(50);
    loop {
        match write(context.clock.now()).await {
            Ok(value) => return Ok(value),
            Err(err @ StoreError::LeaseLost { .. }) => return Err(err),
            Err(err) if started.elapsed() < COMMIT_RETRY_WINDOW => {
                error!(error = %err, "cannot store a rotation result yet; retrying");
                tokio::time::sleep(pause).await;
                pause = (pause * 2).min(Duration::from_secs(5));
            }
            Err(err) => return Err(err),
        }
    }
}

/// Counts the attempt by kind and outcome, and records its lag and commit gap.
fn record_metrics(report: &RotationReport) {
    let outcome = match report.outcome {
        RotationOutcome::Rotated { .. } => "success",
        RotationOutcome::Retrying { .. } => "transient_error",
        RotationOutcome::NeedsAttention { .. } => "permanent_error",
        RotationOutcome::LeaseLost => "lease_lost",
        RotationOutcome::StoreFailed { .. } => "store_error",
    };
    metrics::counter!(telemetry::ROTATIONS, "kind" => report.kind.as_str(), "outcome" => outcome).increment(1);
    let lag = report.planned_at.and_then(|planned| (report.started_at - planned).to_std().ok());
    if let Some(lag) = lag {
        metrics::histogram!(telemetry::ROTATION_LAG).record(lag.as_secs_f64());
    }
    if let Some(gap) = report.commit_gap {
        metrics::histogram!(telemetry::COMMIT_GAP).record(gap.as_secs_f64());
    }
}
