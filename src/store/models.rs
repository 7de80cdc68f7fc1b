//! Rows as Diesel reads and writes them, and the typed records the rest of tokenwarden uses.
//!
//! Rows hold plain column values (text, naive UTC timestamps); records hold validated
//! names, enums and `DateTime<Utc>`. Sealed secrets never leave the store in a record.

use chrono::{DateTime, NaiveDateTime, Utc};
use diesel::prelude::*;
use serde::Serialize;

use super::StoreError;
use super::schema::{audit_log, clients, providers, token_history, tokens};
use crate::config::HumanDuration;
use crate::domain::{
    ClientAuth, ClientName, ClientRole, PolicyOverrides, ProviderKind, ProviderName, TokenKind, TokenName, TokenState,
};

/// Converts a stored naive timestamp (always UTC) to `DateTime<Utc>`.
pub fn utc(value: NaiveDateTime) -> DateTime<Utc> {
    value.and_utc()
}

/// Converts a `DateTime<Utc>` to the naive UTC form stored in `TIMESTAMP` columns, cut to
/// whole microseconds: PostgreSQL keeps no finer, so a time stored and read back compares equal
/// to the time that was written on both backends.
pub fn naive(value: DateTime<Utc>) -> NaiveDateTime {
    use chrono::SubsecRound;
    value.naive_utc().trunc_subsecs(6)
}

/// A fresh, time-ordered row id.
pub fn new_id() -> String {
    uuid::Uuid::now_v7().to_string()
}

/// Parses a stored enum or name, reporting a bad value as corruption.
pub(super) fn parse_stored<T: std::str::FromStr>(column: &str, value: &str) -> Result<T, StoreError>
where
    T::Err: std::fmt::Display,
{
    value.parse().map_err(|err| StoreError::Corrupt(format!("{column} '{value}': {err}")))
}

/// Converts stored seconds to a duration, rejecting negative values.
pub(super) fn stored_duration(column: &str, seconds: Option<i64>) -> Result<Option<HumanDuration>, StoreError> {
    seconds
        .map(|s| {
            u64::try_from(s)
                .map(|s| HumanDuration::new(std::time::Duration::from_secs(s)))
                .map_err(|_| StoreError::Corrupt(format!("{column} is negative: {s}")))
        })
        .transpose()
}

/// A row of `providers`.
#[derive(Debug, Clone, Queryable, Selectable, Insertable)]
#[diesel(table_name = providers)]
pub struct ProviderRow {
    pub id: String,
    pub name: String,
    pub kind: String,
    pub url: Option<String>,
    pub token_url: Option<String>,
    pub client_id: Option<String>,
    pub client_secret: Option<Vec<u8>>,
    pub redirect_uri: Option<String>,
    pub created_at: NaiveDateTime,
    pub updated_at: NaiveDateTime,
    /// No request goes to this provider before this time (its last `Retry-After`).
    pub not_before: Option<NaiveDateTime>,
    /// How the OAuth client authenticates at the token endpoint (`basic`, `post`, `none`).
    pub client_auth: String,
    /// The issuer its endpoints were discovered from (`provider add --issuer`).
    pub issuer: Option<String>,
    /// The discovered authorization endpoint.
    pub authorization_url: Option<String>,
    /// The discovered revocation endpoint (RFC 7009).
    pub revocation_url: Option<String>,
    /// Scopes authorisations at this provider request (space-separated; `None`: the default).
    pub scopes: Option<String>,
}

/// A provider as the rest of tokenwarden sees it (without its sealed client secret).
#[derive(Debug, Clone, Serialize)]
pub struct Provider {
    /// Internal row id.
    #[serde(skip)]
    pub id: String,
    /// Unique name.
    pub name: ProviderName,
    /// GitLab or generic OAuth 2.0.
    pub kind: ProviderKind,
    /// GitLab base URL.
    pub url: Option<String>,
    /// OAuth 2.0 token endpoint.
    pub token_url: Option<String>,
    /// OAuth application id.
    pub client_id: Option<String>,
    /// Whether an OAuth client secret is stored.
    pub has_client_secret: bool,
    /// Redirect URI sent with refresh requests.
    pub redirect_uri: Option<String>,
    /// How the OAuth client authenticates at the token endpoint.
    pub client_auth: ClientAuth,
    /// The issuer its endpoints were discovered from, if any.
    pub issuer: Option<String>,
    /// The discovered authorization endpoint.
    pub authorization_url: Option<String>,
    /// The discovered revocation endpoint.
    pub revocation_url: Option<String>,
    /// Scopes authorisations at this provider request (space-separated).
    pub scopes: Option<String>,
    /// When it was added.
    pub created_at: DateTime<Utc>,
}

impl TryFrom<ProviderRow> for Provider {
    type Error = StoreError;

    fn try_from(row: ProviderRow) -> Result<Self, StoreError> {
        Ok(Self {
            name: parse_stored("provider name", &row.name)?,
            kind: parse_stored("provider kind", &row.kind)?,
            has_client_secret: row.client_secret.is_some(),
            client_auth: parse_stored("provider client_auth", &row.client_auth)?,
            issuer: row.issuer,
            authorization_url: row.authorization_url,
            revocation_url: row.revocation_url,
            scopes: row.scopes,
            id: row.id,
            url: row.url,
            token_url: row.token_url,
            client_id: row.client_id,
            redirect_uri: row.redirect_uri,
            created_at: utc(row.created_at),
        })
    }
}

/// The metadata columns of `tokens` (everything but the sealed secrets).
#[derive(Debug, Clone, Queryable, Selectable)]
#[diesel(table_name = tokens)]
pub struct TokenRow {
    pub id: String,
    pub name: String,
    pub provider_id: String,
    pub kind: String,
    pub resource: Option<String>,
    pub external_id: Option<String>,
    pub version: i64,
    pub state: String,
    pub issued_at: Option<NaiveDateTime>,
    pub expires_at: Option<NaiveDateTime>,
    pub next_rotation_at: Option<NaiveDateTime>,
    pub lifetime_seconds: Option<i64>,
    pub rotate_before_seconds: Option<i64>,
    pub rotate_at_fraction: Option<f64>,
    pub lease_owner: Option<String>,
    pub lease_expires_at: Option<NaiveDateTime>,
    pub attempt_id: Option<String>,
    pub attempt_count: i32,
    pub last_success_at: Option<NaiveDateTime>,
    pub last_failure_at: Option<NaiveDateTime>,
    pub last_error: Option<String>,
    pub attention_reason: Option<String>,
    pub recovery: Option<String>,
    pub scopes: Option<String>,
    pub created_at: NaiveDateTime,
    pub updated_at: NaiveDateTime,
    /// 1 when the OAuth server issues a new refresh token on refresh, 0 when it keeps the old.
    pub refresh_token_rotates: Option<i32>,
    /// The token's name at GitLab (set by `token update --gitlab-name`).
    pub gitlab_name: Option<String>,
    /// The username the current secret authenticates with (deploy tokens).
    pub username: Option<String>,
    /// `project` or `group`: where a deploy token lives (other kinds imply it).
    pub resource_kind: Option<String>,
}

/// [`TokenRow::namespace_kind`] of a token in a project.
pub const PROJECT: &str = "project";
/// [`TokenRow::namespace_kind`] of a token in a group.
pub const GROUP: &str = "group";

impl TokenRow {
    /// Where the token's `resource` lives, [`PROJECT`] or [`GROUP`]: implied by a project or
    /// group access token's kind, recorded for a deploy token; `None` for other kinds.
    pub fn namespace_kind(&self, kind: TokenKind) -> Option<&str> {
        match kind {
            TokenKind::GitlabProjectAccessToken => Some(PROJECT),
            TokenKind::GitlabGroupAccessToken => Some(GROUP),
            TokenKind::GitlabDeployToken => self.resource_kind.as_deref(),
            _ => None,
        }
    }
}

/// A new row of `tokens`, secrets already sealed.
#[derive(Debug, Clone, Insertable)]
#[diesel(table_name = tokens)]
pub struct NewTokenRow {
    pub id: String,
    pub name: String,
    pub provider_id: String,
    pub kind: String,
    pub resource: Option<String>,
    pub external_id: Option<String>,
    pub secret: Option<Vec<u8>>,
    pub refresh_token: Option<Vec<u8>>,
    pub version: i64,
    pub state: String,
    pub issued_at: Option<NaiveDateTime>,
    pub expires_at: Option<NaiveDateTime>,
    pub next_rotation_at: Option<NaiveDateTime>,
    pub lifetime_seconds: Option<i64>,
    pub rotate_before_seconds: Option<i64>,
    pub rotate_at_fraction: Option<f64>,
    pub attempt_count: i32,
    pub scopes: Option<String>,
    pub created_at: NaiveDateTime,
    pub updated_at: NaiveDateTime,
}

impl NewTokenRow {
    /// The row of a token whose first secret is still on its way (a consent or a `token create`
    /// in flight): version 0, no secret, `needs_attention` until its claim takes the lease at
    /// once in the same transaction; the provider's answer makes it version 1.
    pub fn placeholder(
        name: &crate::domain::TokenName,
        provider_id: &str,
        kind: crate::domain::TokenKind,
        resource: Option<String>,
        policy: &crate::domain::PolicyOverrides,
        now: DateTime<Utc>,
    ) -> Self {
        let seconds = |value: Option<crate::config::HumanDuration>| {
            value.map(|d| i64::try_from(d.get().as_secs()).unwrap_or(i64::MAX))
        };
        Self {
            id: new_id(),
            name: name.to_string(),
            provider_id: provider_id.to_owned(),
            kind: kind.to_string(),
            resource,
            external_id: None,
            secret: None,
            refresh_token: None,
            version: 0,
            state: crate::domain::TokenState::NeedsAttention.to_string(),
            issued_at: None,
            expires_at: None,
            next_rotation_at: None,
            lifetime_seconds: seconds(policy.lifetime),
            rotate_before_seconds: seconds(policy.rotate_before),
            rotate_at_fraction: policy.rotate_at_fraction,
            attempt_count: 0,
            scopes: None,
            created_at: naive(now),
            updated_at: naive(now),
        }
    }
}

/// A tracked token's metadata (never its secret).
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct Token {
    /// Internal row id.
    #[serde(skip)]
    pub id: String,
    /// Unique name.
    pub name: TokenName,
    /// The provider it belongs to.
    pub provider: ProviderName,
    /// What sort of credential it is.
    pub kind: TokenKind,
    /// Project id or path, for project access tokens.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub project: Option<String>,
    /// Group id or path, for group access tokens.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub group: Option<String>,
    /// The provider's id for the current token (GitLab token id), once known.
    pub external_id: Option<String>,
    /// Starts at 1, +1 on every successful rotation.
    pub version: i64,
    /// Where it stands in its life cycle.
    pub state: TokenState,
    /// When the current secret was issued.
    pub issued_at: Option<DateTime<Utc>>,
    /// When the current secret stops working.
    pub expires_at: Option<DateTime<Utc>>,
    /// When the next rotation is planned.
    pub next_rotation_at: Option<DateTime<Utc>>,
    /// Per-token policy overrides.
    pub policy_overrides: PolicyOverrides,
    /// Which worker holds the rotation lease, if any.
    pub lease_owner: Option<String>,
    /// When that lease runs out.
    pub lease_expires_at: Option<DateTime<Utc>>,
    /// Consecutive failed attempts.
    pub attempt_count: i32,
    /// Last successful rotation.
    pub last_success_at: Option<DateTime<Utc>>,
    /// Last failed attempt.
    pub last_failure_at: Option<DateTime<Utc>>,
    /// The last failure's message.
    pub last_error: Option<String>,
    /// Why a human must act (with `needs_attention`).
    pub attention_reason: Option<String>,
    /// What the human should do about it (with `needs_attention`): `reauthorize`,
    /// `update_provider` or `replace`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub remedy: Option<String>,
    /// For OAuth grants, once refreshed: whether the server issues a new refresh token on each
    /// refresh (`false`: it keeps the current one valid).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub refresh_token_rotates: Option<bool>,
    /// An earlier attempt whose outcome is not known yet (`probe`, `retry_once`, `retry_in_flight`).
    pub recovery: Option<String>,
    /// The token's scopes as the provider reported them.
    pub scopes: Option<String>,
    /// The name the token has at GitLab, when an operator recorded it (`token update --gitlab-name`).
    pub gitlab_name: Option<String>,
    /// The provider's user who authorised the grant in the browser (OAuth grants, once known).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub authorized_as: Option<super::grant_owners::AuthorizedAs>,
    /// The token that made this one at GitLab (`token create --manager`), if any.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub manager: Option<String>,
    /// The username the current secret authenticates with (deploy tokens).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub username: Option<String>,
    /// Old secrets of this token still valid, waiting to be revoked through its manager (an
    /// access token's at once after a heal; a deploy token's once every reader acknowledged the
    /// new version, or the overlap ended).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub pending_revocations: Vec<super::pending_revocations::PendingRevocation>,
    /// When it was added.
    pub created_at: DateTime<Utc>,
    /// When its row last changed.
    pub updated_at: DateTime<Utc>,
}

impl Token {
    /// Builds a record from a row and its provider's name.
    pub fn from_row(row: TokenRow, provider_name: &str) -> Result<Self, StoreError> {
        let kind: TokenKind = parse_stored("token kind", &row.kind)?;
        let state: TokenState = parse_stored("token state", &row.state)?;
        let (project, group) = match row.namespace_kind(kind) {
            Some(PROJECT) => (row.resource, None),
            Some(GROUP) => (None, row.resource),
            _ => (None, None),
        };
        Ok(Self {
            name: parse_stored("token name", &row.name)?,
            provider: parse_stored("provider name", provider_name)?,
            kind,
            project,
            group,
            state,
            policy_overrides: PolicyOverrides {
                lifetime: stored_duration("lifetime_seconds", row.lifetime_seconds)?,
                rotate_before: stored_duration("rotate_before_seconds", row.rotate_before_seconds)?,
                rotate_at_fraction: row.rotate_at_fraction,
            },
            id: row.id,
            external_id: row.external_id,
            version: row.version,
            issued_at: row.issued_at.map(utc),
            expires_at: row.expires_at.map(utc),
            next_rotation_at: row.next_rotation_at.map(utc),
            lease_owner: row.lease_owner,
            lease_expires_at: row.lease_expires_at.map(utc),
            attempt_count: row.attempt_count,
            last_success_at: row.last_success_at.map(utc),
            last_failure_at: row.last_failure_at.map(utc),
            last_error: row.last_error,
            remedy: (state == TokenState::NeedsAttention)
                .then(|| remedy(kind, row.attention_reason.as_deref().unwrap_or_default()).to_owned()),
            attention_reason: row.attention_reason,
            refresh_token_rotates: row.refresh_token_rotates.map(|flag| flag != 0),
            recovery: row.recovery,
            scopes: row.scopes,
            gitlab_name: row.gitlab_name,
            authorized_as: None,
            manager: None,
            username: row.username,
            pending_revocations: Vec::new(),
            created_at: utc(row.created_at),
            updated_at: utc(row.updated_at),
        })
    }
}

/// What a human does about a token in `needs_attention` for `reason`: fix the provider's
/// client credentials (`update_provider`), re-authorise an OAuth grant (`reauthorize`), or
/// issue a new GitLab token and add it again (`replace`), or run an interrupted `token remove
/// --revoke` again (`remove_again`).
pub fn remedy(kind: TokenKind, reason: &str) -> &'static str {
    match reason {
        crate::domain::CLIENT_CREDENTIALS_REJECTED | "provider_misconfigured" => "update_provider",
        super::rotation::REVOKE_INTERRUPTED => "remove_again",
        super::creation::CREATE_INTERRUPTED => "replace",
        _ if kind.is_oauth_grant() => "reauthorize",
        _ => "replace",
    }
}

/// A row of `token_history`.
#[derive(Debug, Clone, Queryable, Selectable, Insertable)]
#[diesel(table_name = token_history)]
pub struct HistoryRow {
    pub id: String,
    pub token_id: String,
    pub version: i64,
    pub event: String,
    pub actor: String,
    pub expires_at: Option<NaiveDateTime>,
    pub occurred_at: NaiveDateTime,
    /// The scope this version was granted, when it differs from the version before.
    pub scopes: Option<String>,
}

/// One version of a token: when it came to be, why, and by whom.
#[derive(Debug, Clone, Serialize)]
pub struct HistoryEntry {
    /// The version number.
    pub version: i64,
    /// `added`, `rotated` or `reauthorized`.
    pub event: String,
    /// `scheduler`, `cli` or a client's name.
    pub actor: String,
    /// Expiry of that version's secret.
    pub expires_at: Option<DateTime<Utc>>,
    /// When it happened.
    pub occurred_at: DateTime<Utc>,
    /// The scope granted with this version, when the provider changed it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub scopes: Option<String>,
}

impl From<HistoryRow> for HistoryEntry {
    fn from(row: HistoryRow) -> Self {
        Self {
            version: row.version,
            event: row.event,
            actor: row.actor,
            expires_at: row.expires_at.map(utc),
            occurred_at: utc(row.occurred_at),
            scopes: row.scopes,
        }
    }
}

/// A row of `clients`.
#[derive(Debug, Clone, Queryable, Selectable, Insertable)]
#[diesel(table_name = clients)]
pub struct ClientRow {
    pub id: String,
    pub name: String,
    pub role: String,
    pub api_key_lookup: String,
    pub api_key_hash: Vec<u8>,
    pub webhook_url: Option<String>,
    pub webhook_secret: Option<Vec<u8>>,
    pub created_at: NaiveDateTime,
    pub updated_at: NaiveDateTime,
}

/// An API client as the rest of tokenwarden sees it (no key, no webhook secret).
#[derive(Debug, Clone, Serialize)]
pub struct Client {
    /// Internal row id.
    #[serde(skip)]
    pub id: String,
    /// Unique name.
    pub name: ClientName,
    /// Operator or reader.
    pub role: ClientRole,
    /// Token names a reader may read.
    pub grants: Vec<String>,
    /// Where webhooks are sent.
    pub webhook_url: Option<String>,
    /// When it was created.
    pub created_at: DateTime<Utc>,
}

impl Client {
    /// Builds a record from a row and its grants.
    pub fn from_row(row: ClientRow, grants: Vec<String>) -> Result<Self, StoreError> {
        Ok(Self {
            name: parse_stored("client name", &row.name)?,
            role: parse_stored("client role", &row.role)?,
            id: row.id,
            grants,
            webhook_url: row.webhook_url,
            created_at: utc(row.created_at),
        })
    }
}

/// A row of `audit_log`.
#[derive(Debug, Clone, Queryable, Selectable, Insertable)]
#[diesel(table_name = audit_log)]
pub struct AuditRow {
    pub id: String,
    pub occurred_at: NaiveDateTime,
    pub actor: String,
    pub action: String,
    pub target_kind: String,
    pub target_name: String,
    pub detail: Option<String>,
}
