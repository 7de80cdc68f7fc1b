//! The authorisation callback (`GET /oauth/callback?code=…&state=…`): uses the link up, claims
//! the token's lease, exchanges the code (the provider call), journals the answer, learns who
//! consented, and commits the grant through the same answer path as a refresh — version + 1,
//! `token.authorized` and `token.rotated`, sinks — or puts the token back exactly as it was.
//!
//! What the process dying at each step means: before the claim, nothing happened (the link is
//! used; the user asks for a new one). Between the claim and the journal, the code may be spent
//! and its grant unseen: the lease runs out and the next claim marks the grant lost
//! (`needs_attention`, `grant_lost`, remedy `reauthorize`), as for a lost refresh answer. After
//! the journal, the next claim commits a first grant (its owner unknown) but drops an answer
//! whose user was not checked when the token's grant has an owner (lost, as before). After the
//! commit, the grant is stored.

use secrecy::SecretString;
use tracing::{info, warn};

use crate::domain::{Policy, ProviderKind, TokenName};
use crate::engine::protocol::{commit_answer, seal_answer};
use crate::engine::{EngineContext, RotationOutcome, build_oauth_client};
use crate::providers::gitlab_user::current_user;
use crate::providers::oauth::{CodeExchange, OauthRefresher};
use crate::providers::{Credential, ProviderError, Renewed, TokenProvider};
use crate::store::StoreError;
use crate::store::answer_journal;
use crate::store::authorization_claim::{self, AuthorizationClaim, Prior};
use crate::store::authorizations::{self, Consumed, Pending};
use crate::store::grant_owners::GrantOwner;
use crate::store::rotation::{Answer, Authorized, Claim};

use super::pkce::state_hash;

/// The callback's query, as the provider sent it (every field optional: anyone can call it).
#[derive(Debug, Default, Clone, serde::Deserialize)]
pub struct CallbackQuery {
    /// The authorisation code.
    pub code: Option<String>,
    /// The state the link carried.
    pub state: Option<String>,
    /// The provider's error code (`access_denied` when the user declined).
    pub error: Option<String>,
}

/// How a callback ended; each becomes a page (or a redirect to `return_to`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CallbackOutcome {
    /// The grant is stored.
    Connected {
        /// The token.
        token: TokenName,
        /// Its new version.
        version: i64,
        /// Who consented, when the provider says.
        user: Option<String>,
        /// Where to send the browser.
        return_to: Option<String>,
    },
    /// The user declined at the provider; the token is unchanged.
    Declined {
        /// The token.
        token: TokenName,
        /// Where to send the browser.
        return_to: Option<String>,
    },
    /// No usable link: unknown, used, expired, or the query lacks what it needs (400).
    BadLink(&'static str),
    /// The provider refused the code or did not answer; the token is unchanged (502).
    ProviderFailed {
        /// The token.
        token: TokenName,
        /// What happened, in words safe to show (never the code or the state).
        message: String,
    },
    /// Another user consented than the one who owns the grant; the grant is unchanged (409).
    WrongUser {
        /// The token.
        token: TokenName,
        /// The grant's owner.
        owner: String,
    },
    /// The token cannot take the grant now (a rotation holds it, or it changed) (409).
    Conflict {
        /// The token.
        token: TokenName,
        /// Why.
        message: String,
    },
    /// The store failed (503); what the user should do is in the message.
    Unavailable(String),
}

/// Handles one callback.
pub async fn complete(context: &EngineContext, query: CallbackQuery) -> CallbackOutcome {
    let Some(state) = query.state.filter(|state| !state.is_empty() && state.len() <= 512) else {
        return CallbackOutcome::BadLink("The link has no state");
    };
    let (cipher, hash, now) = (context.cipher.clone(), state_hash(&state), context.clock.now());
    let consumed = context.store.run(move |conn| authorizations::consume(conn, &cipher, &hash, now)).await;
    let pending = match consumed {
        Ok(Consumed::Ready(pending)) => pending,
        Ok(Consumed::Unknown) => return CallbackOutcome::BadLink("This link is not known"),
        Ok(Consumed::Used { .. }) => return CallbackOutcome::BadLink("This link was used already"),
        Ok(Consumed::Expired { .. }) => return CallbackOutcome::BadLink("This link has expired"),
        Err(err) => return unavailable(&err),
    };
    let token = pending.token_name.clone();
    if let Some(error) = query.error {
        return if error == "access_denied" {
            info!(token = %token, "the user declined the authorisation");
            CallbackOutcome::Declined { token, return_to: pending.return_to }
        } else {
            CallbackOutcome::ProviderFailed {
                token,
                message: "the provider answered with an error instead of a code".into(),
            }
        };
    }
    let Some(code) = query.code.filter(|code| !code.is_empty() && code.len() <= 4096) else {
        return CallbackOutcome::BadLink("The link came back without a code");
    };
    exchange(context, &pending, SecretString::from(code)).await
}

/// Claims the token, exchanges the code, checks the user and commits.
async fn exchange(context: &EngineContext, pending: &Pending, code: SecretString) -> CallbackOutcome {
    let token = pending.token_name.clone();
    let claimed = {
        let (pending_owner, lease, now) = (context.owner.clone(), context.lease(), context.clock.now());
        let pending = pending.clone();
        context.store.run(move |conn| authorization_claim::claim(conn, &pending, &pending_owner, lease, now)).await
    };
    let (claim, prior) = match claimed {
        Ok(AuthorizationClaim::Claimed { claim, prior }) => (claim, prior),
        Ok(AuthorizationClaim::Busy { .. }) => {
            return CallbackOutcome::Conflict {
                token,
                message:
                    "a rotation of this token is running right now; nothing changed — ask for a new link in a minute"
                        .into(),
            };
        }
        Ok(AuthorizationClaim::Changed(message)) => return CallbackOutcome::Conflict { token, message },
        Err(err) => return unavailable(&err),
    };
    let client = match build_oauth_client(context, &pending.provider) {
        Ok(client) => client,
        Err(message) => {
            return put_back(context, &claim, &prior, CallbackOutcome::ProviderFailed { token, message }).await;
        }
    };
    let exchange = CodeExchange {
        code: &code,
        verifier: &pending.verifier,
        redirect_uri: &pending.redirect_uri,
        requested_at: context.clock.now(),
    };
    let renewed = match client.exchange_code(&exchange).await {
        Ok(renewed) => renewed,
        Err(err) => {
            warn!(token = %token, error = %err, "the provider did not exchange the authorisation code");
            let failed = CallbackOutcome::ProviderFailed { token, message: describe_refusal(&err) };
            return put_back(context, &claim, &prior, failed).await;
        }
    };
    let issued = Issued::of(&renewed);
    let is_gitlab = pending.provider.kind == ProviderKind::Gitlab.as_str();
    // The answer becomes durable before anything else happens, even before its user is known.
    let policy = Policy::resolve(claim.token.kind, &claim.token.policy_overrides, &context.policy);
    let awaiting = Some(Authorized { user: None, awaiting_user: is_gitlab });
    let (mut answer, assumed_lifetime) =
        match seal_answer(context, &claim, &policy, renewed, &pending.requested_by, awaiting) {
            Ok(sealed) => sealed,
            Err(err) => return CallbackOutcome::Unavailable(format!("the grant could not be sealed ({err})")),
        };
    journal(context, &answer).await;
    let user = match learn_user(context, pending, &issued.access_token).await {
        Ok(user) => user,
        Err(err) => {
            warn!(token = %token, error = %err, "could not learn who authorised the grant");
            issued.revoke_quietly(&client, &token).await;
            let message = format!("the provider did not say who authorised the grant ({err}); nothing changed");
            return put_back(context, &claim, &prior, CallbackOutcome::ProviderFailed { token, message }).await;
        }
    };
    if let (Some(owner), Some(user)) = (&prior.owner, &user)
        && owner.id != user.id
    {
        warn!(token = %token, owner = %owner.username, consented = %user.username, "a different user re-authorised the grant");
        issued.revoke_quietly(&client, &token).await;
        let refused = CallbackOutcome::WrongUser { token, owner: owner.username.clone() };
        return put_back(context, &claim, &prior, refused).await;
    }
    let username = user.as_ref().map(|user| user.username.clone());
    answer.authorized = Some(Authorized { user, awaiting_user: false });
    match commit_answer(context, &claim, answer, assumed_lifetime).await.0 {
        RotationOutcome::Rotated { version, .. } => {
            info!(token = %token, version, user = username.as_deref().unwrap_or("-"), "grant authorised and stored");
            CallbackOutcome::Connected { token, version, user: username, return_to: pending.return_to.clone() }
        }
        RotationOutcome::LeaseLost => CallbackOutcome::Conflict {
            token,
            message: "the token was taken over while the grant was being stored; authorise again".into(),
        },
        other => CallbackOutcome::Unavailable(format!(
            "the grant could not be stored ({other:?}); the token will be marked for re-authorisation — authorise again"
        )),
    }
}

/// Journals the answer (one short transaction) so that it survives the process; a failure is
/// logged and left to the commit, which writes the journal again and retries.
async fn journal(context: &EngineContext, answer: &Answer) {
    let (answers, now) = (vec![answer.clone()], context.clock.now());
    if let Err(err) = context.store.run(move |conn| answer_journal::write(conn, &answers, now)).await {
        warn!(token = %answer.lease.token_name, error = %err, "could not journal the authorisation's answer yet");
    }
}

/// The new grant's tokens, kept to ask who it belongs to and to revoke it if it is not stored.
struct Issued {
    access_token: SecretString,
    refresh_token: Option<SecretString>,
    issued_at: chrono::DateTime<chrono::Utc>,
}

impl Issued {
    fn of(renewed: &Renewed) -> Self {
        Self {
            access_token: renewed.secret.clone(),
            refresh_token: renewed.refresh_token.clone(),
            issued_at: renewed.issued_at,
        }
    }

    /// Revokes a grant that will not be stored, so it does not linger at the provider.
    async fn revoke_quietly(&self, client: &OauthRefresher, token: &TokenName) {
        let credential = Credential {
            secret: Some(self.access_token.clone()),
            refresh_token: self.refresh_token.clone(),
            requested_expiry: self.issued_at.date_naive(),
            requested_at: self.issued_at,
        };
        if let Err(err) = client.revoke(&credential).await {
            warn!(token = %token, error = %err, "could not revoke the grant that was not stored");
        }
    }
}

/// GitLab: who the new access token belongs to. Other providers: unknown (`None`).
async fn learn_user(
    context: &EngineContext,
    pending: &Pending,
    access_token: &SecretString,
) -> Result<Option<GrantOwner>, ProviderError> {
    if pending.provider.kind != ProviderKind::Gitlab.as_str() {
        return Ok(None);
    }
    let base_url = pending.provider.url.as_deref().unwrap_or_default();
    let user = current_user(&context.http, base_url, access_token).await?;
    Ok(Some(GrantOwner { id: user.id, username: user.username }))
}

/// Puts the token back as it was and answers `outcome`.
async fn put_back(context: &EngineContext, claim: &Claim, prior: &Prior, outcome: CallbackOutcome) -> CallbackOutcome {
    let (lease, before, created, now) = (claim.lease(), claim.before.clone(), prior.created, context.clock.now());
    match context.store.run(move |conn| authorization_claim::release(conn, &lease, &before, created, now)).await {
        Ok(()) => outcome,
        Err(err) => {
            warn!(token = %claim.token.name, error = %err, "could not put the token back after a failed authorisation");
            outcome
        }
    }
}

/// A provider's refusal in words for the page: the reason code, never the provider's text
/// (which might quote what it was sent).
fn describe_refusal(err: &ProviderError) -> String {
    match err {
        ProviderError::Permanent { reason, .. } if reason == "invalid_grant" => {
            "the provider refused the authorisation code (invalid_grant: expired, used, or not issued for this link)"
                .into()
        }
        ProviderError::Permanent { reason, .. } => format!("the provider refused the authorisation code ({reason})"),
        ProviderError::Transient { .. } | ProviderError::Unknown { .. } => {
            "the provider did not answer the code exchange; nothing changed — ask for a new link and try again".into()
        }
    }
}

fn unavailable(err: &StoreError) -> CallbackOutcome {
    warn!(error = %err, "the authorisation callback could not use the store");
    CallbackOutcome::Unavailable("tokenwarden's store is not available; nothing changed — try again shortly".into())
}
