//! The simulator's model of GitLab: access tokens in families, OAuth applications and grants,
//! and the counters tests assert on. Pure state transitions, no HTTP, so the semantics in
//! `../shared/gitlab-api.md` can be read (and tested) in one place.

use std::collections::HashMap;

use chrono::{DateTime, Days, NaiveDate, Utc};
use serde::Serialize;

use super::authorization::{AuthorizeError, AuthorizeRequest, CODE_LIFETIME, CodeRecord, SimUser};
use super::variables::{Namespace, Variables};

/// Longest lifetime GitLab accepts for an access token.
pub const MAX_LIFETIME_DAYS: u64 = 365;
/// Expiry GitLab gives a rotated token when the request names none.
pub const DEFAULT_ROTATION_DAYS: u64 = 7;
/// OAuth access-token lifetime GitLab uses (two hours).
pub const DEFAULT_EXPIRES_IN_SECONDS: u64 = 7200;

/// Whose access token it is, which decides the rotate endpoint that accepts it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TokenOwner {
    /// A personal access token.
    Personal,
    /// A project access token of this project (id or path, as given).
    Project(String),
    /// A group access token of this group (id or path, as given).
    Group(String),
}

/// One access token as GitLab keeps it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AccessToken {
    /// GitLab's id (new on every rotation).
    pub id: u64,
    /// The family every rotation of one original token belongs to.
    pub family: u64,
    /// The token's name (kept across rotations).
    pub name: String,
    /// Whose it is.
    pub owner: TokenOwner,
    /// Its scopes.
    pub scopes: Vec<String>,
    /// It stops working at 00:00 UTC of this date.
    pub expires_at: NaiveDate,
    /// When it was created.
    pub created_at: DateTime<Utc>,
    /// Revoked (by rotation, by reuse detection, or by an operator).
    pub revoked: bool,
    /// Revoked because it was rotated: presenting it to a rotate endpoint is reuse.
    pub rotated: bool,
    /// A project or group access token's role in its project or group (Maintainer unless
    /// created with another).
    pub access_level: u8,
}

impl AccessToken {
    /// Whether GitLab accepts it at `now`.
    pub fn is_active(&self, now: DateTime<Utc>) -> bool {
        !self.revoked && now.date_naive() < self.expires_at
    }
}

/// Why a rotation was refused, mapped to GitLab's statuses by the handlers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RotateError {
    /// 401: revoked, expired or unknown. `reuse` is set when this presentation revoked the family.
    Unauthorized {
        /// True when the token had been rotated already, so its family was revoked now.
        reuse: bool,
    },
    /// 403: the token may not rotate itself.
    Forbidden,
    /// 404: the project or group in the path is not the token's.
    NotFound,
    /// 405: not a token of that kind.
    WrongKind,
    /// 400: a bad `expires_at`.
    BadExpiry(String),
}

/// An OAuth application.
#[derive(Debug, Clone)]
struct Application {
    secret: String,
    order: u64,
    /// The redirect URIs registered for the authorization-code grant.
    redirect_uris: Vec<String>,
}

/// What a refresh token belongs to and whether it was used.
#[derive(Debug, Clone)]
struct RefreshRecord {
    client_id: String,
    /// The grant every refresh token of one authorisation belongs to (a renewal's family).
    grant: u64,
    used: bool,
    revoked: bool,
    /// The access token issued with it, invalidated when it is used.
    access_token: Option<String>,
    /// The user who authorised the grant.
    user: SimUser,
}

/// An OAuth access token issued by a refresh.
#[derive(Debug, Clone)]
struct OauthAccess {
    expires_at: DateTime<Utc>,
    revoked: bool,
    /// The grant's user.
    user: SimUser,
}

/// Why a refresh was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RefreshError {
    /// 401 `invalid_client`: unknown client or wrong secret.
    InvalidClient,
    /// 400 `invalid_grant`: unknown, used, revoked, or another client's refresh token.
    InvalidGrant,
}

/// A successful refresh.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refreshed {
    /// The new access token.
    pub access_token: String,
    /// The new refresh token; `None` when the provider keeps the old one
    /// ([`GitlabState::keep_refresh_tokens`]).
    pub refresh_token: Option<String>,
    /// Its lifetime in seconds.
    pub expires_in: u64,
    /// When it was created (Unix seconds).
    pub created_at: i64,
}

/// One renewal GitLab performed: which family, when, and whether its answer was cut off.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Renewal {
    /// The access token's family, or the OAuth grant's id (see [`GitlabState::family_of`]).
    pub family: u64,
    /// When GitLab acted (by the simulator's clock).
    pub at: DateTime<Utc>,
    /// The answer was cut off after GitLab acted (`Fault::DropAfterCommit`).
    pub dropped: bool,
}

/// Counters that tests and the benchmark assert on.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct Stats {
    /// Successful access-token rotations.
    pub rotations: u64,
    /// Successful OAuth refreshes.
    pub refreshes: u64,
    /// `GET …/self` look-ups answered.
    pub lookups: u64,
    /// Rotated tokens presented to a rotate endpoint (each revoked a family).
    pub family_revocations: u64,
    /// Used (dead) refresh tokens presented again.
    pub refresh_token_reuses: u64,
    /// Renewal requests that arrived while a `Retry-After` the simulator named was running.
    pub retry_after_violations: u64,
    /// Faults injected (error statuses, rate limits, slow and dropped answers).
    pub faults_injected: u64,
    /// Answers dropped after the renewal was committed.
    pub dropped_after_commit: u64,
    /// Answers replaced by a malformed body (`Fault::Malformed`).
    pub malformed_answers: u64,
    /// Bytes of oversize malformed bodies handed to the connection.
    pub malformed_bytes_sent: u64,
    /// Credentials revoked by their holder (`DELETE …/self`, `POST /oauth/revoke`).
    pub revocations: u64,
}

/// Everything the simulated GitLab knows.
#[derive(Debug, Default)]
pub struct GitlabState {
    next_id: u64,
    /// Every access token, by its secret.
    pub(super) access_tokens: HashMap<String, AccessToken>,
    applications: HashMap<String, Application>,
    refresh_tokens: HashMap<String, RefreshRecord>,
    oauth_access: HashMap<String, OauthAccess>,
    /// Lifetime of OAuth access tokens issued by refreshes, in seconds.
    pub expires_in: u64,
    /// Answer refreshes like providers that do not rotate refresh tokens: no `refresh_token`
    /// in the answer, and the one presented stays usable.
    pub keep_refresh_tokens: bool,
    /// Answer refreshes without `expires_in` (RFC 6749 makes it only RECOMMENDED).
    pub omit_expires_in: bool,
    /// The `scope` refresh answers name (`api` when unset).
    pub oauth_scope: Option<String>,
    /// Accept client credentials at `/oauth/token` only by HTTP Basic, as many OAuth servers
    /// do (GitLab itself also accepts them in the form body).
    pub require_basic_auth: bool,
    /// No renewal request should arrive before this moment (the last `Retry-After`).
    pub blocked_until: Option<DateTime<Utc>>,
    /// The counters.
    pub stats: Stats,
    /// Keep [`Self::renewals`] (off by default: the log grows with every renewal).
    pub record_renewals: bool,
    /// Every renewal performed while [`Self::record_renewals`] is on, in order.
    pub renewals: Vec<Renewal>,
    /// Every `User-Agent` seen on GitLab's endpoints.
    pub user_agents: std::collections::BTreeSet<String>,
    /// The projects' and groups' CI/CD variables.
    pub variables: Variables,
    /// The simulated user's access level in each project and group (the user behind personal
    /// access tokens and OAuth grants); a namespace not listed is one the user cannot see.
    pub memberships: HashMap<Namespace, u8>,
    /// Share (0 to 1) of CI/CD variable requests answered with a 5xx without acting.
    pub variables_error_rate: f64,
    /// Deploy tokens, live and revoked.
    pub(super) deploy_tokens: Vec<super::token_admin::DeployToken>,
    /// Authorization codes issued by the consent page, by code.
    codes: HashMap<String, CodeRecord>,
    /// The user signed in at the consent page (the one who authorises).
    pub signed_in: SimUser,
}

/// Who presents a credential, as far as GitLab's permission checks go.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Presenter {
    /// The bot's project or group for a project or group access token; `Personal` for the
    /// simulated user (a personal access token or an OAuth grant).
    pub owner: TokenOwner,
    /// The credential's scopes.
    pub scopes: Vec<String>,
    /// A project or group access token's role in its own project or group.
    pub access_level: u8,
}

/// A fresh random token text with `prefix`.
pub fn random_secret(prefix: &str) -> String {
    let mut bytes = [0u8; 20];
    rand::fill(&mut bytes);
    format!("{prefix}{}", hex::encode(bytes))
}

impl GitlabState {
    /// An empty GitLab whose OAuth access tokens live two hours.
    pub fn new() -> Self {
        Self { expires_in: DEFAULT_EXPIRES_IN_SECONDS, ..Self::default() }
    }

    pub(super) fn next_id(&mut self) -> u64 {
        self.next_id += 1;
        self.next_id
    }

    /// Creates an access token and returns its id and secret.
    pub fn create_access_token(
        &mut self,
        owner: TokenOwner,
        scopes: Vec<String>,
        expires_at: NaiveDate,
        now: DateTime<Utc>,
    ) -> (u64, String) {
        let id = self.next_id();
        let secret = random_secret("glpat-");
        let token = AccessToken {
            id,
            family: id,
            name: format!("token-{id}"),
            owner,
            scopes,
            expires_at,
            created_at: now,
            revoked: false,
            rotated: false,
            access_level: super::variables::MAINTAINER,
        };
        self.access_tokens.insert(secret.clone(), token);
        (id, secret)
    }

    /// The access token presented with `secret`, if it exists at all.
    pub fn access_token(&self, secret: &str) -> Option<&AccessToken> {
        self.access_tokens.get(secret)
    }

    /// `GET /personal_access_tokens/self`: the token if active (never triggers reuse detection).
    pub fn look_up(&mut self, secret: &str, now: DateTime<Utc>) -> Option<AccessToken> {
        self.stats.lookups += 1;
        self.access_tokens.get(secret).filter(|token| token.is_active(now)).cloned()
    }

    /// Self-rotation through the endpoint for `endpoint_owner`: revokes the presented token and
    /// creates its successor in one step; a rotated token presented again revokes its family.
    pub fn rotate(
        &mut self,
        secret: &str,
        endpoint_owner: &TokenOwner,
        expires_at: Option<&str>,
        now: DateTime<Utc>,
    ) -> Result<(AccessToken, String), RotateError> {
        let Some(token) = self.access_tokens.get(secret).cloned() else {
            return Err(RotateError::Unauthorized { reuse: false });
        };
        if token.rotated {
            self.revoke_family(token.family);
            self.stats.family_revocations += 1;
            return Err(RotateError::Unauthorized { reuse: true });
        }
        if !token.is_active(now) {
            return Err(RotateError::Unauthorized { reuse: false });
        }
        check_endpoint(&token.owner, endpoint_owner)?;
        if !token.scopes.iter().any(|scope| scope == "api" || scope == "self_rotate") {
            return Err(RotateError::Forbidden);
        }
        let new_expiry = requested_expiry(expires_at, now)?;
        let id = self.next_id();
        let new_secret = random_secret("glpat-");
        let successor = AccessToken { id, expires_at: new_expiry, created_at: now, ..token.clone() };
        if let Some(old) = self.access_tokens.get_mut(secret) {
            old.revoked = true;
            old.rotated = true;
        }
        self.access_tokens.insert(new_secret.clone(), successor.clone());
        self.stats.rotations += 1;
        self.note_renewal(successor.family, now);
        Ok((successor, new_secret))
    }

    /// Revokes every token of `family` (what GitLab's reuse detection does).
    fn revoke_family(&mut self, family: u64) {
        for token in self.access_tokens.values_mut().filter(|token| token.family == family) {
            token.revoked = true;
        }
    }

    /// Revokes the token presented with `secret` (an operator revoking it outside tokenwarden).
    pub fn revoke(&mut self, secret: &str) -> bool {
        match self.access_tokens.get_mut(secret) {
            Some(token) => {
                token.revoked = true;
                true
            }
            None => false,
        }
    }

    /// Replaces the scopes of the token presented with `secret` (a token issued without the
    /// scope that lets it rotate itself).
    pub fn set_scopes(&mut self, secret: &str, scopes: &[&str]) -> bool {
        match self.access_tokens.get_mut(secret) {
            Some(token) => {
                token.scopes = scopes.iter().map(|scope| (*scope).to_owned()).collect();
                true
            }
            None => false,
        }
    }

    /// Gives the application `client_id` a new secret (an admin rotated it); the old one stops
    /// working at once. Returns the new secret.
    pub fn rotate_application_secret(&mut self, client_id: &str) -> Option<String> {
        let application = self.applications.get_mut(client_id)?;
        application.secret = random_secret("gloas-");
        Some(application.secret.clone())
    }

    /// Registers an OAuth application and returns its client id and secret.
    pub fn create_application(&mut self) -> (String, String) {
        let client_id = random_secret("app-");
        let secret = random_secret("gloas-");
        let order = self.next_id();
        let application = Application { secret: secret.clone(), order, redirect_uris: Vec::new() };
        self.applications.insert(client_id.clone(), application);
        (client_id, secret)
    }

    /// The client ids of every registered application, oldest first.
    pub fn application_ids(&self) -> Vec<String> {
        let mut ids: Vec<String> = self.applications.keys().cloned().collect();
        ids.sort_by_key(|id| self.applications[id].order);
        ids
    }

    /// Issues a grant to `client_id` (the user authorised it) and returns its refresh token.
    pub fn create_grant(&mut self, client_id: &str) -> Option<String> {
        if !self.applications.contains_key(client_id) {
            return None;
        }
        let refresh_token = random_secret("glrt-");
        let grant = self.next_id();
        let record = RefreshRecord {
            client_id: client_id.to_owned(),
            grant,
            used: false,
            revoked: false,
            access_token: None,
            user: self.signed_in.clone(),
        };
        self.refresh_tokens.insert(refresh_token.clone(), record);
        Some(refresh_token)
    }

    /// `POST /oauth/token` with `grant_type=refresh_token`: a new pair, the used refresh token
    /// (and the access token it had) dead at once.
    pub fn refresh(
        &mut self,
        client_id: &str,
        client_secret: Option<&str>,
        refresh_token: &str,
        now: DateTime<Utc>,
    ) -> Result<Refreshed, RefreshError> {
        self.authenticate_client(client_id, client_secret)?;
        let Some(record) = self.refresh_tokens.get_mut(refresh_token) else {
            return Err(RefreshError::InvalidGrant);
        };
        if record.used {
            self.stats.refresh_token_reuses += 1;
            return Err(RefreshError::InvalidGrant);
        }
        if record.revoked || record.client_id != client_id {
            return Err(RefreshError::InvalidGrant);
        }
        let access_token = random_secret("gloat-");
        let (grant, user) = (record.grant, record.user.clone());
        let previous_access = record.access_token.replace(access_token.clone());
        record.used = !self.keep_refresh_tokens;
        if let Some(access) = previous_access.and_then(|token| self.oauth_access.get_mut(&token)) {
            access.revoked = true;
        }
        let new_refresh =
            (!self.keep_refresh_tokens).then(|| self.issue_refresh_token(client_id, grant, &access_token, &user));
        self.issue_access_token(&access_token, user, now);
        self.stats.refreshes += 1;
        self.note_renewal(grant, now);
        Ok(Refreshed {
            access_token,
            refresh_token: new_refresh,
            expires_in: self.expires_in,
            created_at: now.timestamp(),
        })
    }

    /// `DELETE /personal_access_tokens/self`: revokes an active token presented by itself;
    /// `false` (GitLab's 401) for an unknown, revoked or expired one.
    pub fn revoke_self(&mut self, secret: &str, now: DateTime<Utc>) -> bool {
        match self.access_tokens.get_mut(secret) {
            Some(token) if token.is_active(now) => {
                token.revoked = true;
                self.stats.revocations += 1;
                true
            }
            _ => false,
        }
    }

    /// `POST /oauth/revoke` (RFC 7009) by client `client_id`: revokes the refresh token or
    /// access token `token` of that client's grant, with the access token issued with it. An
    /// unknown token, or another client's, changes nothing and is not an error (RFC 7009).
    pub fn revoke_oauth(
        &mut self,
        client_id: &str,
        client_secret: Option<&str>,
        token: &str,
    ) -> Result<(), RefreshError> {
        self.authenticate_client(client_id, client_secret)?;
        let record = self.refresh_tokens.iter_mut().find(|(refresh, record)| {
            record.client_id == client_id
                && (refresh.as_str() == token || record.access_token.as_deref() == Some(token))
        });
        if let Some((_, record)) = record {
            record.revoked = true;
            if let Some(access) = record.access_token.clone().and_then(|access| self.oauth_access.get_mut(&access)) {
                access.revoked = true;
            }
            self.stats.revocations += 1;
        }
        Ok(())
    }

    /// Revokes a grant's refresh token (the user revoked the application).
    pub fn revoke_refresh_token(&mut self, refresh_token: &str) -> bool {
        match self.refresh_tokens.get_mut(refresh_token) {
            Some(record) => {
                record.revoked = true;
                true
            }
            None => false,
        }
    }

    /// The family of an access token or the grant of a refresh token, as [`Renewal::family`]
    /// names it.
    pub fn family_of(&self, secret: &str) -> Option<u64> {
        self.access_tokens
            .get(secret)
            .map(|token| token.family)
            .or_else(|| self.refresh_tokens.get(secret).map(|record| record.grant))
    }

    fn note_renewal(&mut self, family: u64, at: DateTime<Utc>) {
        if self.record_renewals {
            self.renewals.push(Renewal { family, at, dropped: false });
        }
    }

    /// Marks the latest renewal as cut off; called under the same lock as the renewal.
    pub fn mark_last_renewal_dropped(&mut self) {
        if let Some(renewal) = self.renewals.last_mut() {
            renewal.dropped = true;
        }
    }

    /// Whether `refresh_token` can still be used.
    pub fn refresh_token_is_live(&self, refresh_token: &str) -> bool {
        self.refresh_tokens.get(refresh_token).is_some_and(|record| !record.used && !record.revoked)
    }

    /// Every secret this GitLab ever issued or was given: tokens, refresh tokens, access
    /// tokens and application secrets (for tests that grep outputs for leaks).
    pub fn issued_secrets(&self) -> Vec<String> {
        self.access_tokens
            .keys()
            .chain(self.refresh_tokens.keys())
            .chain(self.oauth_access.keys())
            .cloned()
            .chain(self.applications.values().map(|app| app.secret.clone()))
            .collect()
    }

    /// `GET /oauth/token/info`: the seconds an active OAuth access token has left, or `None`
    /// when it is unknown, expired or invalidated by a refresh.
    pub fn oauth_token_info(&mut self, access_token: &str, now: DateTime<Utc>) -> Option<i64> {
        self.stats.lookups += 1;
        let access = self.oauth_access.get(access_token).filter(|access| !access.revoked && access.expires_at > now)?;
        Some((access.expires_at - now).num_seconds())
    }

    /// Whether an OAuth access token works at `now`.
    pub fn oauth_access_is_active(&self, access_token: &str, now: DateTime<Utc>) -> bool {
        self.oauth_access.get(access_token).is_some_and(|access| !access.revoked && access.expires_at > now)
    }

    /// `invalid_client` unless `client_id` is an application and `client_secret` its secret.
    fn authenticate_client(&self, client_id: &str, client_secret: Option<&str>) -> Result<(), RefreshError> {
        match self.applications.get(client_id) {
            Some(app) if client_secret == Some(app.secret.as_str()) => Ok(()),
            _ => Err(RefreshError::InvalidClient),
        }
    }

    /// A new refresh token of `grant`, issued with `access_token`.
    fn issue_refresh_token(&mut self, client_id: &str, grant: u64, access_token: &str, user: &SimUser) -> String {
        let refresh_token = random_secret("glrt-");
        let record = RefreshRecord {
            client_id: client_id.to_owned(),
            grant,
            used: false,
            revoked: false,
            access_token: Some(access_token.to_owned()),
            user: user.clone(),
        };
        self.refresh_tokens.insert(refresh_token.clone(), record);
        refresh_token
    }

    /// Records `access_token` as issued to `user` at `now`, living [`Self::expires_in`].
    fn issue_access_token(&mut self, access_token: &str, user: SimUser, now: DateTime<Utc>) {
        let lifetime = i64::try_from(self.expires_in).ok().and_then(chrono::TimeDelta::try_seconds);
        let expires_at =
            lifetime.and_then(|lifetime| now.checked_add_signed(lifetime)).unwrap_or(DateTime::<Utc>::MAX_UTC);
        self.oauth_access.insert(access_token.to_owned(), OauthAccess { expires_at, revoked: false, user });
    }

    /// Registers `uri` as a redirect URI of application `client_id`; `false` for an unknown one.
    pub fn register_redirect_uri(&mut self, client_id: &str, uri: &str) -> bool {
        let Some(application) = self.applications.get_mut(client_id) else {
            return false;
        };
        application.redirect_uris.push(uri.to_owned());
        true
    }

    /// What the consent page checks before showing anything: a known client, one of its
    /// redirect URIs (only the port may differ on a loopback address), `response_type=code`, and
    /// `S256` when a challenge is sent.
    pub fn check_authorize(&self, request: &AuthorizeRequest) -> Result<(), AuthorizeError> {
        let application = self.applications.get(&request.client_id).ok_or(AuthorizeError::UnknownClient)?;
        if !application.redirect_uris.iter().any(|registered| redirect_matches(registered, &request.redirect_uri)) {
            return Err(AuthorizeError::RedirectMismatch);
        }
        if request.response_type != "code" {
            return Err(AuthorizeError::UnsupportedResponseType);
        }
        match request.code_challenge_method.as_deref() {
            None | Some("S256") => Ok(()),
            Some(_) => Err(AuthorizeError::UnsupportedChallengeMethod),
        }
    }

    /// The user approved `request` on the consent page: a single-use code for it, bound to the
    /// challenge, the redirect URI and the signed-in user.
    pub fn issue_code(&mut self, request: &AuthorizeRequest, now: DateTime<Utc>) -> Result<String, AuthorizeError> {
        self.check_authorize(request)?;
        let code = random_secret("");
        let record = CodeRecord {
            client_id: request.client_id.clone(),
            redirect_uri: request.redirect_uri.clone(),
            challenge: request.code_challenge.clone(),
            scope: request.scope.clone(),
            user: self.signed_in.clone(),
            expires_at: now + CODE_LIFETIME,
            used: false,
        };
        self.codes.insert(code.clone(), record);
        Ok(code)
    }

    /// `POST /oauth/token` with `grant_type=authorization_code`: the code (once, in time, with
    /// its redirect URI and PKCE verifier) becomes a grant: an access token and a refresh token.
    /// Returns them and the scope granted.
    pub fn exchange_code(
        &mut self,
        client_id: &str,
        client_secret: Option<&str>,
        code: &str,
        redirect_uri: &str,
        verifier: Option<&str>,
        now: DateTime<Utc>,
    ) -> Result<(Refreshed, String), RefreshError> {
        self.authenticate_client(client_id, client_secret)?;
        let Some(record) = self.codes.get_mut(code) else {
            return Err(RefreshError::InvalidGrant);
        };
        if !record.accepts(client_id, redirect_uri, verifier, now) {
            return Err(RefreshError::InvalidGrant);
        }
        record.used = true;
        let (user, scope) = (record.user.clone(), record.scope.clone());
        let (grant, access_token) = (self.next_id(), random_secret("gloat-"));
        let refresh_token = self.issue_refresh_token(client_id, grant, &access_token, &user);
        self.issue_access_token(&access_token, user, now);
        let issued = Refreshed {
            access_token,
            refresh_token: Some(refresh_token),
            expires_in: self.expires_in,
            created_at: now.timestamp(),
        };
        Ok((issued, scope))
    }

    /// The user behind an accepted token (`GET /api/v4/user`): a grant's user for an OAuth
    /// access token, the signed-in user for a personal access token, a bot for a project or
    /// group access token.
    pub fn user_of(&self, secret: &str, now: DateTime<Utc>) -> Option<SimUser> {
        if let Some(access) = self.oauth_access.get(secret).filter(|access| !access.revoked && access.expires_at > now)
        {
            return Some(access.user.clone());
        }
        let token = self.access_tokens.get(secret).filter(|token| token.is_active(now))?;
        Some(match &token.owner {
            TokenOwner::Personal => self.signed_in.clone(),
            TokenOwner::Project(id) | TokenOwner::Group(id) => {
                SimUser { id: 1_000_000 + token.family, username: format!("bot_{id}_{}", token.family) }
            }
        })
    }

    /// Who presents `secret` (an access token or an OAuth access token), if GitLab accepts it now.
    pub fn presenter(&self, secret: &str, now: DateTime<Utc>) -> Option<Presenter> {
        if let Some(token) = self.access_tokens.get(secret).filter(|token| token.is_active(now)) {
            let (owner, scopes, access_level) = (token.owner.clone(), token.scopes.clone(), token.access_level);
            return Some(Presenter { owner, scopes, access_level });
        }
        self.oauth_access_is_active(secret, now).then(|| Presenter {
            owner: TokenOwner::Personal,
            scopes: self.oauth_scope.as_deref().unwrap_or("api").split(' ').map(str::to_owned).collect(),
            access_level: 0,
        })
    }

    /// The access level `presenter` has in `namespace`: a project or group access token's bot
    /// has its token's level in its own project or group only; the user has
    /// [`Self::memberships`].
    pub fn access_level(&self, presenter: &Presenter, namespace: &Namespace) -> Option<u8> {
        match (&presenter.owner, namespace) {
            (TokenOwner::Personal, _) => self.memberships.get(namespace).copied(),
            (TokenOwner::Project(have), Namespace::Project(asked))
            | (TokenOwner::Group(have), Namespace::Group(asked))
                if same_resource(have, asked) =>
            {
                Some(presenter.access_level)
            }
            _ => None,
        }
    }
}

/// Whether a redirect URI sent matches a registered one: exactly, or (RFC 8252) a loopback
/// `http` address that differs only in its port.
fn redirect_matches(registered: &str, sent: &str) -> bool {
    if registered == sent {
        return true;
    }
    let (Ok(registered), Ok(sent)) = (url::Url::parse(registered), url::Url::parse(sent)) else {
        return false;
    };
    let loopback = |url: &url::Url| matches!(url.host_str(), Some("127.0.0.1" | "localhost" | "[::1]"));
    loopback(&registered)
        && registered.scheme() == "http"
        && registered.scheme() == sent.scheme()
        && registered.host_str() == sent.host_str()
        && registered.path() == sent.path()
        && registered.query() == sent.query()
}

/// 405 when the token is not of the endpoint's kind, 404 when it belongs to another
/// project or group.
fn check_endpoint(owner: &TokenOwner, endpoint: &TokenOwner) -> Result<(), RotateError> {
    match (owner, endpoint) {
        (TokenOwner::Personal, TokenOwner::Personal) => Ok(()),
        (TokenOwner::Project(have), TokenOwner::Project(asked))
        | (TokenOwner::Group(have), TokenOwner::Group(asked)) => {
            if same_resource(have, asked) {
                Ok(())
            } else {
                Err(RotateError::NotFound)
            }
        }
        _ => Err(RotateError::WrongKind),
    }
}

/// Project and group ids compare after URL-decoding (`a%2Fb` is `a/b`).
fn same_resource(have: &str, asked: &str) -> bool {
    let decode =
        |text: &str| url::form_urlencoded::parse(format!("x={text}").as_bytes()).next().map(|(_, v)| v.into_owned());
    decode(have) == decode(asked)
}

/// The expiry a rotation asks for: a date after today, at most 365 days ahead; none → 7 days.
fn requested_expiry(expires_at: Option<&str>, now: DateTime<Utc>) -> Result<NaiveDate, RotateError> {
    let today = now.date_naive();
    let Some(text) = expires_at else {
        return Ok(today + Days::new(DEFAULT_ROTATION_DAYS));
    };
    let date = NaiveDate::parse_from_str(text, "%Y-%m-%d")
        .map_err(|_| RotateError::BadExpiry(format!("expires_at '{text}' is not a date")))?;
    if date <= today {
        return Err(RotateError::BadExpiry("expires_at must be in the future".into()));
    }
    if date > today + Days::new(MAX_LIFETIME_DAYS) {
        return Err(RotateError::BadExpiry(format!("expires_at must be at most {MAX_LIFETIME_DAYS} days ahead")));
    }
    Ok(date)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn now() -> DateTime<Utc> {
        DateTime::parse_from_rfc3339("2026-11-25T10:00:00Z").unwrap().with_timezone(&Utc)
    }

    fn date(text: &str) -> NaiveDate {
        NaiveDate::parse_from_str(text, "%Y-%m-%d").unwrap()
    }

    fn project_token(state: &mut GitlabState) -> String {
        let owner = TokenOwner::Project("42".into());
        state.create_access_token(owner, vec!["api".into()], date("2026-12-25"), now()).1
    }

    #[test]
    fn rotation_revokes_the_old_token_at_once_and_issues_a_new_id() {
        let mut state = GitlabState::new();
        let old = project_token(&mut state);
        let old_id = state.access_token(&old).unwrap().id;
        let (successor, new) =
            state.rotate(&old, &TokenOwner::Project("42".into()), Some("2027-02-01"), now()).unwrap();
        assert_ne!(successor.id, old_id);
        assert_eq!(successor.expires_at, date("2027-02-01"));
        assert!(state.look_up(&old, now()).is_none());
        assert!(state.look_up(&new, now()).is_some());
    }

    #[test]
    fn every_renewal_is_logged_under_the_family_its_first_secret_names() {
        let mut state = GitlabState::new();
        let unlogged = project_token(&mut state);
        state.rotate(&unlogged, &TokenOwner::Project("42".into()), None, now()).unwrap();
        assert!(state.renewals.is_empty(), "nothing is logged unless asked");
        state.record_renewals = true;
        let token = project_token(&mut state);
        let (client_id, client_secret) = state.create_application();
        let refresh = state.create_grant(&client_id).unwrap();
        let (token_family, grant) = (state.family_of(&token).unwrap(), state.family_of(&refresh).unwrap());
        assert_ne!(token_family, grant);
        let (_, rotated) = state.rotate(&token, &TokenOwner::Project("42".into()), None, now()).unwrap();
        let later = now() + chrono::TimeDelta::seconds(5);
        let refreshed = state.refresh(&client_id, Some(&client_secret), &refresh, later).unwrap();
        state.mark_last_renewal_dropped();
        assert_eq!(state.family_of(&rotated), Some(token_family));
        assert_eq!(state.family_of(&refreshed.refresh_token.unwrap()), Some(grant));
        assert_eq!(
            state.renewals,
            vec![
                Renewal { family: token_family, at: now(), dropped: false },
                Renewal { family: grant, at: later, dropped: true },
            ]
        );
    }

    #[test]
    fn presenting_a_rotated_token_to_rotate_revokes_the_whole_family() {
        let mut state = GitlabState::new();
        let old = project_token(&mut state);
        let endpoint = TokenOwner::Project("42".into());
        let (_, new) = state.rotate(&old, &endpoint, Some("2027-01-01"), now()).unwrap();
        assert_eq!(
            state.rotate(&old, &endpoint, Some("2027-01-01"), now()),
            Err(RotateError::Unauthorized { reuse: true })
        );
        assert!(state.look_up(&new, now()).is_none(), "the newest token of the family is revoked too");
        assert_eq!(state.stats.family_revocations, 1);
    }

    #[test]
    fn looking_up_a_rotated_token_is_not_reuse() {
        let mut state = GitlabState::new();
        let old = project_token(&mut state);
        let (_, new) = state.rotate(&old, &TokenOwner::Project("42".into()), None, now()).unwrap();
        assert!(state.look_up(&old, now()).is_none());
        assert!(state.look_up(&new, now()).is_some());
        assert_eq!(state.stats.family_revocations, 0);
    }

    #[test]
    fn expired_tokens_stop_working_at_midnight_utc_of_their_date() {
        let mut state = GitlabState::new();
        let (_, secret) =
            state.create_access_token(TokenOwner::Personal, vec!["api".into()], date("2026-11-26"), now());
        let last_minute = DateTime::parse_from_rfc3339("2026-11-25T23:59:59Z").unwrap().with_timezone(&Utc);
        let midnight = DateTime::parse_from_rfc3339("2026-11-26T00:00:00Z").unwrap().with_timezone(&Utc);
        assert!(state.look_up(&secret, last_minute).is_some());
        assert!(state.look_up(&secret, midnight).is_none());
    }

    #[test]
    fn rotation_checks_scope_kind_resource_and_expiry() {
        let mut state = GitlabState::new();
        let read_only =
            state.create_access_token(TokenOwner::Personal, vec!["read_api".into()], date("2026-12-25"), now()).1;
        assert_eq!(state.rotate(&read_only, &TokenOwner::Personal, None, now()), Err(RotateError::Forbidden));
        let project = project_token(&mut state);
        assert_eq!(state.rotate(&project, &TokenOwner::Personal, None, now()), Err(RotateError::WrongKind));
        assert_eq!(state.rotate(&project, &TokenOwner::Project("7".into()), None, now()), Err(RotateError::NotFound));
        for bad in ["2026-11-25", "2028-01-01", "tomorrow"] {
            let result = state.rotate(&project, &TokenOwner::Project("42".into()), Some(bad), now());
            assert!(matches!(result, Err(RotateError::BadExpiry(_))), "{bad}");
        }
        let by_path = state.create_access_token(
            TokenOwner::Project("group/app".into()),
            vec!["self_rotate".into()],
            date("2026-12-25"),
            now(),
        );
        assert!(state.rotate(&by_path.1, &TokenOwner::Project("group%2Fapp".into()), None, now()).is_ok());
    }

    #[test]
    fn a_provider_that_keeps_refresh_tokens_answers_without_one_and_the_old_one_still_works() {
        let mut state = GitlabState::new();
        state.keep_refresh_tokens = true;
        let (client_id, client_secret) = state.create_application();
        let refresh = state.create_grant(&client_id).unwrap();
        let first = state.refresh(&client_id, Some(&client_secret), &refresh, now()).unwrap();
        assert_eq!(first.refresh_token, None);
        let second = state.refresh(&client_id, Some(&client_secret), &refresh, now()).unwrap();
        assert!(!state.oauth_access_is_active(&first.access_token, now()), "the old access token is replaced");
        assert!(state.oauth_access_is_active(&second.access_token, now()));
        assert_eq!(state.stats.refresh_token_reuses, 0);
    }

    #[test]
    fn a_refresh_token_works_once_and_its_reuse_is_counted() {
        let mut state = GitlabState::new();
        let (client_id, client_secret) = state.create_application();
        let refresh = state.create_grant(&client_id).unwrap();
        let first = state.refresh(&client_id, Some(&client_secret), &refresh, now()).unwrap();
        assert!(state.oauth_access_is_active(&first.access_token, now()));
        assert_eq!(state.refresh(&client_id, Some(&client_secret), &refresh, now()), Err(RefreshError::InvalidGrant));
        assert_eq!(state.stats.refresh_token_reuses, 1);
        let first_refresh = first.refresh_token.clone().expect("GitLab issues a new refresh token");
        let second = state.refresh(&client_id, Some(&client_secret), &first_refresh, now()).unwrap();
        assert_ne!(second.refresh_token, first.refresh_token);
        assert!(
            !state.oauth_access_is_active(&first.access_token, now()),
            "a refresh invalidates the old access token"
        );
        assert!(state.oauth_access_is_active(&second.access_token, now()));
    }

    #[test]
    fn a_wrong_client_secret_is_invalid_client_and_does_not_use_the_grant() {
        let mut state = GitlabState::new();
        let (client_id, _) = state.create_application();
        let refresh = state.create_grant(&client_id).unwrap();
        assert_eq!(state.refresh(&client_id, Some("wrong"), &refresh, now()), Err(RefreshError::InvalidClient));
        assert!(state.refresh_token_is_live(&refresh));
    }
}
