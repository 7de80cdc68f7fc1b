//! Queries on tokens and their history.

use chrono::{DateTime, Utc};
use diesel::prelude::*;
use secrecy::SecretString;

use super::audit::{self, AuditTarget};
use super::models::{HistoryEntry, HistoryRow, NewTokenRow, Token, TokenRow, naive, new_id};
use super::providers;
use super::schema::{client_grants, providers as providers_table, token_history, tokens};
use super::{DbConnection, StoreError};
use crate::crypto::{Cipher, SealContext};
use crate::domain::{PolicyOverrides, ProviderName, TokenKind, TokenName, TokenState};

/// What an operator gives to start tracking a token.
#[derive(Debug)]
pub struct NewToken {
    /// Unique name.
    pub name: TokenName,
    /// The provider it belongs to.
    pub provider: ProviderName,
    /// What sort of credential it is.
    pub kind: TokenKind,
    /// Project (for project tokens) or group (for group tokens).
    pub resource: Option<String>,
    /// The access token (GitLab access tokens; OAuth grants once refreshed).
    pub secret: Option<SecretString>,
    /// The refresh token (OAuth grants).
    pub refresh_token: Option<SecretString>,
    /// Per-token policy overrides.
    pub policy: PolicyOverrides,
    /// The provider's id for this token, once known.
    pub external_id: Option<String>,
    /// When the current secret was issued, once known.
    pub issued_at: Option<DateTime<Utc>>,
    /// When the current secret expires, once known.
    pub expires_at: Option<DateTime<Utc>>,
    /// When to rotate first.
    pub next_rotation_at: Option<DateTime<Utc>>,
    /// The token's scopes as the provider reported them.
    pub scopes: Option<String>,
}

/// The two sealed secret columns of `tokens`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SecretField {
    /// The access token or personal/project/group token.
    Secret,
    /// The OAuth refresh token.
    RefreshToken,
}

impl SecretField {
    fn column(self) -> &'static str {
        match self {
            SecretField::Secret => "secret",
            SecretField::RefreshToken => "refresh_token",
        }
    }
}

/// Where a token's secret field is sealed.
pub fn secret_context(row_id: &str, field: SecretField) -> SealContext<'_> {
    SealContext { table: "tokens", row: row_id, field: field.column() }
}

fn seconds(value: Option<crate::config::HumanDuration>) -> Option<i64> {
    value.map(|d| i64::try_from(d.get().as_secs()).unwrap_or(i64::MAX))
}

/// Checks that a token of `kind` may belong to the provider and carries what it needs.
pub fn check_compatible(kind: TokenKind, provider: &super::models::ProviderRow) -> Result<(), StoreError> {
    let invalid = |message: String| Err(StoreError::InvalidInput(message));
    let expected = kind.provider_kind();
    if provider.kind != expected.as_str() {
        return invalid(format!(
            "a {} token needs a '{}' provider, but provider '{}' is '{}'",
            kind, expected, provider.name, provider.kind
        ));
    }
    if kind == TokenKind::GitlabOauth && (provider.client_id.is_none() || provider.client_secret.is_none()) {
        return invalid(format!(
            "provider '{}' has no OAuth client id and secret; add them to refresh gitlab-oauth grants",
            provider.name
        ));
    }
    Ok(())
}

/// Starts tracking a token: one row, its first history entry and an audit row, in one transaction.
pub fn insert(
    conn: &mut DbConnection,
    cipher: &Cipher,
    new: &NewToken,
    actor: &str,
    now: DateTime<Utc>,
) -> Result<Token, StoreError> {
    if new.kind.is_deploy_token() {
        return Err(StoreError::InvalidInput(format!(
            "a {} is made through a manager (`token create --kind {} --manager M`), not added",
            new.kind, new.kind
        )));
    }
    let id = new_id();
    let seal = |field, value: &Option<SecretString>| {
        value.as_ref().map(|s| cipher.try_seal(secret_context(&id, field), s)).transpose()
    };
    let secret = seal(SecretField::Secret, &new.secret)?;
    let refresh_token = seal(SecretField::RefreshToken, &new.refresh_token)?;
    conn.write_transaction(|conn| {
        let provider = providers::find_row(conn, &new.provider)?;
        check_compatible(new.kind, &provider)?;
        let row = NewTokenRow {
            id: id.clone(),
            name: new.name.to_string(),
            provider_id: provider.id.clone(),
            kind: new.kind.to_string(),
            resource: new.resource.clone(),
            external_id: new.external_id.clone(),
            secret: secret.clone(),
            refresh_token: refresh_token.clone(),
            version: 1,
            state: TokenState::Active.to_string(),
            issued_at: new.issued_at.map(naive),
            expires_at: new.expires_at.map(naive),
            next_rotation_at: new.next_rotation_at.map(naive),
            lifetime_seconds: seconds(new.policy.lifetime),
            rotate_before_seconds: seconds(new.policy.rotate_before),
            rotate_at_fraction: new.policy.rotate_at_fraction,
            attempt_count: 0,
            scopes: new.scopes.clone(),
            created_at: naive(now),
            updated_at: naive(now),
        };
        diesel::insert_into(tokens::table)
            .values(&row)
            .execute(conn)
            .map_err(StoreError::on_unique("token", new.name.as_str()))?;
        let history = HistoryRow {
            id: new_id(),
            token_id: id.clone(),
            version: 1,
            event: "added".to_owned(),
            actor: actor.to_owned(),
            expires_at: row.expires_at,
            occurred_at: naive(now),
            scopes: None,
        };
        diesel::insert_into(token_history::table).values(&history).execute(conn)?;
        let target = AuditTarget { kind: "token", name: new.name.as_str() };
        let detail = format!("kind={} provider={}", new.kind, new.provider);
        audit::record(conn, now, actor, "token.add", target, Some(detail))?;
        find(conn, &new.name)
    })
}

/// All tokens, by name.
pub fn list(conn: &mut DbConnection) -> Result<Vec<Token>, StoreError> {
    list_page(conn, None, i64::MAX)
}

/// Up to `limit` tokens whose names sort after `after` (all from the first when `None`), by name:
/// one page of [`list`] for callers that must not hold every token at once.
pub fn list_page(conn: &mut DbConnection, after: Option<&TokenName>, limit: i64) -> Result<Vec<Token>, StoreError> {
    tokens::table
        .inner_join(providers_table::table)
        .filter(tokens::name.gt(after.map_or("", TokenName::as_str)))
        .select((TokenRow::as_select(), providers_table::name))
        .order(tokens::name.asc())
        .limit(limit)
        .load::<(TokenRow, String)>(conn)?
        .into_iter()
        .map(|(row, provider)| Token::from_row(row, &provider))
        .collect()
}

/// The token named `name`.
pub fn find(conn: &mut DbConnection, name: &TokenName) -> Result<Token, StoreError> {
    find_as(conn, name, ReadAs::Operator)
}

/// As [`find`], for `reader`: a token a reader was not granted is [`StoreError::NotFound`],
/// checked in the same statement as the read, exactly as [`read_current_as`] does.
pub fn find_as(conn: &mut DbConnection, name: &TokenName, reader: ReadAs<'_>) -> Result<Token, StoreError> {
    let token = tokens::table
        .inner_join(providers_table::table)
        .filter(tokens::name.eq(name.as_str()))
        .select((TokenRow::as_select(), providers_table::name));
    let found = match reader {
        ReadAs::Operator => token.get_result::<(TokenRow, String)>(conn),
        ReadAs::Reader { client_id } => tokens::table
            .inner_join(providers_table::table)
            .inner_join(client_grants::table.on(grant_of(client_id)))
            .filter(tokens::name.eq(name.as_str()))
            .select((TokenRow::as_select(), providers_table::name))
            .get_result::<(TokenRow, String)>(conn),
    };
    let (row, provider) = found.optional()?.ok_or_else(|| not_found(name))?;
    let mut token = Token::from_row(row, &provider)?;
    if token.kind.is_oauth_grant() {
        token.authorized_as = super::grant_owners::find(conn, &token.id)?;
    }
    Ok(token)
}

/// As [`find_as`], with the token's manager (`token create --manager`) filled in: what `token
/// show` and `GET /v1/tokens/{name}` show (one statement more than the reads need).
pub fn find_shown(conn: &mut DbConnection, name: &TokenName, reader: ReadAs<'_>) -> Result<Token, StoreError> {
    let mut token = find_as(conn, name, reader)?;
    if token.kind.has_gitlab_lifetime() {
        token.manager = super::creation::manager_of(conn, &token.id)?;
    }
    if token.manager.is_some() {
        token.pending_revocations = super::pending_revocations::pending_for(conn, &token.id)?;
    }
    Ok(token)
}

/// The join condition [`grant_of`] builds.
type GrantOf<'a> = diesel::dsl::And<
    diesel::dsl::Eq<client_grants::token_id, tokens::id>,
    diesel::dsl::Eq<client_grants::client_id, &'a str>,
>;

/// Joins a token row to its grant to client `client_id` (the grant's primary key), so a read
/// finds the row only when that client was granted that very token.
fn grant_of(client_id: &str) -> GrantOf<'_> {
    client_grants::token_id.eq(tokens::id).and(client_grants::client_id.eq(client_id))
}

/// What the exported gauges need: tokens per state, and the expiries worth a series each.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TokenGauges {
    /// How many tokens are in each stored state (states without tokens are absent).
    pub per_state: Vec<(String, i64)>,
    /// Token names and expiries: every token outside the scheduled states (needing attention,
    /// expired, paused, being rotated), then the scheduled ones soonest to expire, up to the
    /// limit given to [`gauges`].
    pub expiries: Vec<(String, DateTime<Utc>)>,
    /// How many versions behind each consumer that acknowledged a version is, most behind
    /// first, up to the same limit.
    pub consumer_lags: Vec<super::consumers::ConsumerLag>,
    /// How many versions behind its token each sink is (every sink: there are few).
    pub sink_lags: Vec<(String, i64)>,
}

/// The read behind the exported gauges: the counts per state in one grouped statement, and at
/// most `expiry_limit` expiries, so memory and `/metrics` stay bounded however many tokens
/// there are.
pub fn gauges(conn: &mut DbConnection, expiry_limit: i64) -> Result<TokenGauges, StoreError> {
    let per_state: Vec<(String, i64)> =
        tokens::table.group_by(tokens::state).select((tokens::state, diesel::dsl::count_star())).load(conn)?;
    let unscheduled: Vec<(String, Option<chrono::NaiveDateTime>)> = tokens::table
        .filter(diesel::dsl::sql::<diesel::sql_types::Bool>("tokens.state NOT IN ('active', 'retrying')"))
        .filter(tokens::expires_at.is_not_null())
        .order(tokens::expires_at.asc())
        .limit(expiry_limit)
        .select((tokens::name, tokens::expires_at))
        .load(conn)?;
    let room = expiry_limit.saturating_sub(i64::try_from(unscheduled.len()).unwrap_or(i64::MAX));
    let soonest: Vec<(String, Option<chrono::NaiveDateTime>)> = tokens::table
        .filter(diesel::dsl::sql::<diesel::sql_types::Bool>("tokens.state IN ('active', 'retrying')"))
        .filter(tokens::expires_at.is_not_null())
        .order(tokens::expires_at.asc())
        .limit(room)
        .select((tokens::name, tokens::expires_at))
        .load(conn)?;
    let expiries = unscheduled
        .into_iter()
        .chain(soonest)
        .filter_map(|(name, expires_at)| Some((name, super::models::utc(expires_at?))))
        .collect();
    let consumer_lags = super::consumers::lags(conn, expiry_limit)?;
    let sink_lags = super::sinks::version_lags(conn)?;
    Ok(TokenGauges { per_state, expiries, consumer_lags, sink_lags })
}

/// The token and its current secret, read in one statement so the version and the secret
/// always belong together. Token names are unique, so the row is read without a `LIMIT` (see
/// [`super::clients::authenticate_key`] on why a bound `LIMIT` costs a re-prepare).
pub fn read_current(
    conn: &mut DbConnection,
    cipher: &Cipher,
    name: &TokenName,
) -> Result<(Token, Option<SecretString>), StoreError> {
    read_current_as(conn, cipher, name, ReadAs::Operator)
}

/// Whose read [`read_current_as`] is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReadAs<'a> {
    /// Any token may be read.
    Operator,
    /// Only a token granted to this client (its row id) may be read.
    Reader {
        /// The reading client's id.
        client_id: &'a str,
    },
}

/// As [`read_current`], for `reader`: a token a reader was not granted is
/// [`StoreError::NotFound`], exactly like one that does not exist. The grant is checked in the
/// same statement as the read (`… JOIN client_grants ON token_id = tokens.id AND client_id = …`),
/// one primary-key look-up, so both come from one snapshot and the read costs one statement.
pub fn read_current_as(
    conn: &mut DbConnection,
    cipher: &Cipher,
    name: &TokenName,
    reader: ReadAs<'_>,
) -> Result<(Token, Option<SecretString>), StoreError> {
    let current = tokens::table.inner_join(providers_table::table).filter(tokens::name.eq(name.as_str())).select((
        TokenRow::as_select(),
        providers_table::name,
        tokens::secret,
    ));
    let found = match reader {
        ReadAs::Operator => current.get_result::<(TokenRow, String, Option<Vec<u8>>)>(conn),
        ReadAs::Reader { client_id } => tokens::table
            .inner_join(providers_table::table)
            .inner_join(client_grants::table.on(grant_of(client_id)))
            .filter(tokens::name.eq(name.as_str()))
            .select((TokenRow::as_select(), providers_table::name, tokens::secret))
            .get_result::<(TokenRow, String, Option<Vec<u8>>)>(conn),
    };
    let (row, provider, sealed) = found.optional()?.ok_or_else(|| not_found(name))?;
    let secret = sealed
        .map(|bytes| cipher.open(secret_context(&row.id, SecretField::Secret), &bytes).map_err(StoreError::from))
        .transpose()?;
    Ok((Token::from_row(row, &provider)?, secret))
}

fn not_found(name: &TokenName) -> StoreError {
    StoreError::NotFound { what: "token", name: name.to_string() }
}

/// Opens one of a token's sealed secrets, if it has that field.
pub fn read_secret(
    conn: &mut DbConnection,
    cipher: &Cipher,
    name: &TokenName,
    field: SecretField,
) -> Result<Option<SecretString>, StoreError> {
    let (id, secret, refresh_token) = tokens::table
        .filter(tokens::name.eq(name.as_str()))
        .select((tokens::id, tokens::secret, tokens::refresh_token))
        .get_result::<(String, Option<Vec<u8>>, Option<Vec<u8>>)>(conn)
        .optional()?
        .ok_or_else(|| not_found(name))?;
    let sealed = match field {
        SecretField::Secret => secret,
        SecretField::RefreshToken => refresh_token,
    };
    sealed.map(|bytes| cipher.open(secret_context(&id, field), &bytes).map_err(StoreError::from)).transpose()
}

/// Refuses to change a token while a rotation holds its lease.
fn ensure_settled(token: &Token, doing: &str) -> Result<(), StoreError> {
    if token.state.is_settled() {
        return Ok(());
    }
    Err(StoreError::Conflict(format!(
        "token '{}' is being rotated right now; {doing} it when the rotation has finished",
        token.name
    )))
}

/// Pauses a token (no rotation until resumed); pausing a paused token changes nothing.
pub fn pause(conn: &mut DbConnection, name: &TokenName, actor: &str, now: DateTime<Utc>) -> Result<Token, StoreError> {
    conn.write_transaction(|conn| {
        let token = find(conn, name)?;
        ensure_settled(&token, "pause")?;
        if token.state == TokenState::Paused {
            return Ok(token);
        }
        set_state(conn, &token.id, TokenState::Paused, now)?;
        audit::record(conn, now, actor, "token.pause", token_target(name), Some(format!("was={}", token.state)))?;
        find(conn, name)
    })
}

/// Resumes a paused token: `active` again, or `expired` if it expired meanwhile.
/// Resuming a token that is not paused changes nothing.
pub fn resume(conn: &mut DbConnection, name: &TokenName, actor: &str, now: DateTime<Utc>) -> Result<Token, StoreError> {
    conn.write_transaction(|conn| {
        let token = find(conn, name)?;
        if token.state != TokenState::Paused {
            return Ok(token);
        }
        let state = match token.expires_at {
            Some(expires_at) if expires_at <= now => TokenState::Expired,
            _ => TokenState::Active,
        };
        set_state(conn, &token.id, state, now)?;
        audit::record(conn, now, actor, "token.resume", token_target(name), Some(format!("now={state}")))?;
        find(conn, name)
    })
}

fn set_state(conn: &mut DbConnection, id: &str, state: TokenState, now: DateTime<Utc>) -> Result<(), StoreError> {
    diesel::update(tokens::table.filter(tokens::id.eq(id)))
        .set((tokens::state.eq(state.as_str()), tokens::updated_at.eq(naive(now))))
        .execute(conn)?;
    Ok(())
}

fn token_target(name: &TokenName) -> AuditTarget<'_> {
    AuditTarget { kind: "token", name: name.as_str() }
}

/// Stops tracking a token and forgets its secrets and history (the audit log keeps a row).
/// Every client's grant to read it goes in the same transaction (grants are by token identity:
/// a token added later under the same name is another credential, readable only by clients
/// granted it anew). While clients hold grants, nothing is removed unless `drop_grants` says
/// the operator agreed ([`StoreError::StillGranted`] names them). Returns the names of the
/// clients whose grants were removed.
pub fn remove(
    conn: &mut DbConnection,
    name: &TokenName,
    drop_grants: bool,
    actor: &str,
    now: DateTime<Utc>,
) -> Result<Vec<String>, StoreError> {
    conn.write_transaction(|conn| {
        let token = find(conn, name)?;
        ensure_settled(&token, "remove")?;
        let readers = super::clients::granted(conn, &token.id)?;
        if !readers.is_empty() && !drop_grants {
            return Err(StoreError::StillGranted { token: name.to_string(), clients: readers.join(", ") });
        }
        delete_with_grants(conn, &token.id)?;
        let detail = removal_detail(token.version, &readers);
        audit::record(conn, now, actor, "token.remove", token_target(name), Some(detail))?;
        Ok(readers)
    })
}

/// Deletes token row `token_id` and every grant of it (its sinks go with it by cascade); call
/// inside the removing transaction.
pub(super) fn delete_with_grants(conn: &mut DbConnection, token_id: &str) -> Result<(), StoreError> {
    let managed = super::creation::managed_by(conn, token_id)?;
    if !managed.is_empty() {
        return Err(StoreError::Conflict(format!(
            "it manages {}: remove those first (or they could never be rotated, healed or revoked)",
            managed.join(", ")
        )));
    }
    let waiting = super::pending_revocations::waiting_on_manager(conn, token_id)?;
    if !waiting.is_empty() {
        return Err(StoreError::Conflict(format!(
            "old secrets of {} still wait to be revoked through it: remove it once `token show` lists none",
            waiting.join(", ")
        )));
    }
    diesel::delete(client_grants::table.filter(client_grants::token_id.eq(token_id))).execute(conn)?;
    diesel::delete(tokens::table.filter(tokens::id.eq(token_id))).execute(conn)?;
    Ok(())
}

/// The audit detail of a removal: the version removed and the readers whose grants went.
pub(super) fn removal_detail(version: i64, readers: &[String]) -> String {
    let detail = format!("version={version} grants_removed={}", readers.len());
    if readers.is_empty() { detail } else { format!("{detail} clients={}", readers.join(",")) }
}

/// Takes back a `token add` whose first contact with the provider failed: the token row goes
/// (with any grant of it, which can only have been made in the moment since it was added).
pub fn undo_add(
    conn: &mut DbConnection,
    name: &TokenName,
    actor: &str,
    now: DateTime<Utc>,
    why: &str,
) -> Result<(), StoreError> {
    conn.write_transaction(|conn| {
        let token = find(conn, name)?;
        ensure_settled(&token, "remove")?;
        delete_with_grants(conn, &token.id)?;
        audit::record(conn, now, actor, "token.remove", token_target(name), Some(format!("add undone: {why}")))
    })
}

/// A token's versions, oldest first.
pub fn history(conn: &mut DbConnection, name: &TokenName) -> Result<Vec<HistoryEntry>, StoreError> {
    let token = find(conn, name)?;
    Ok(token_history::table
        .filter(token_history::token_id.eq(&token.id))
        .select(HistoryRow::as_select())
        .order(token_history::version.asc())
        .load(conn)?
        .into_iter()
        .map(HistoryEntry::from)
        .collect())
}

/// What `token update` changes; `None` keeps the current setting.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct TokenChange {
    /// A new lifetime requested when the GitLab token is rotated.
    pub lifetime: Option<crate::config::HumanDuration>,
    /// A new minimum margin before expiry.
    pub rotate_before: Option<crate::config::HumanDuration>,
    /// A new fraction of the lifetime after which to rotate.
    pub rotate_at_fraction: Option<f64>,
    /// The name the token has at GitLab.
    pub gitlab_name: Option<String>,
}

impl TokenChange {
    /// True when it changes nothing.
    pub fn is_empty(&self) -> bool {
        *self == Self::default()
    }

    /// `overrides` with this change's policy settings put in.
    pub fn applied_to(&self, overrides: &PolicyOverrides) -> PolicyOverrides {
        PolicyOverrides {
            lifetime: self.lifetime.or(overrides.lifetime),
            rotate_before: self.rotate_before.or(overrides.rotate_before),
            rotate_at_fraction: self.rotate_at_fraction.or(overrides.rotate_at_fraction),
        }
    }

    /// The audit detail: each setting changed, as `key=value`.
    fn describe(&self) -> String {
        let mut parts = Vec::new();
        if let Some(lifetime) = self.lifetime {
            parts.push(format!("lifetime={lifetime}"));
        }
        if let Some(margin) = self.rotate_before {
            parts.push(format!("rotate_before={margin}"));
        }
        if let Some(fraction) = self.rotate_at_fraction {
            parts.push(format!("rotate_at_fraction={fraction}"));
        }
        if let Some(name) = &self.gitlab_name {
            parts.push(format!("gitlab_name={name:?}"));
        }
        parts.join(" ")
    }
}

/// Longest GitLab token name accepted (GitLab's own limit).
pub const MAX_GITLAB_NAME_CHARS: usize = 255;

/// Checks a GitLab token name: 1 to [`MAX_GITLAB_NAME_CHARS`] characters, none a control character.
pub fn check_gitlab_name(name: &str) -> Result<(), String> {
    let chars = name.chars().count();
    if chars == 0 || chars > MAX_GITLAB_NAME_CHARS || name.chars().any(char::is_control) {
        return Err(format!(
            "the GitLab name must be 1 to {MAX_GITLAB_NAME_CHARS} characters without control characters"
        ));
    }
    Ok(())
}

/// Changes a token's policy (and the name it has at GitLab) in place and re-plans its next
/// rotation at once: `replan` gets the token with its new overrides and answers its new plan
/// (`Ok(None)` keeps the stored one) or why the new policy is refused. Only `active` and
/// `paused` tokens are re-planned (a `retrying` token's next time is a backoff). History is
/// unchanged (no new version); an audit row records the change; the daemon sees the new plan
/// through its change watch. Refused while a rotation holds the token's lease.
pub fn update(
    conn: &mut DbConnection,
    name: &TokenName,
    change: &TokenChange,
    replan: impl Fn(&Token) -> Result<Option<DateTime<Utc>>, String>,
    actor: &str,
    now: DateTime<Utc>,
) -> Result<Token, StoreError> {
    if change.is_empty() {
        return Err(StoreError::InvalidInput(
            "nothing to change: give a lifetime, a margin, a rotation fraction or a GitLab name".into(),
        ));
    }
    if let Some(gitlab_name) = &change.gitlab_name {
        check_gitlab_name(gitlab_name).map_err(StoreError::InvalidInput)?;
    }
    conn.write_transaction(|conn| {
        let mut token = find(conn, name)?;
        ensure_settled(&token, "change")?;
        token.policy_overrides = change.applied_to(&token.policy_overrides);
        let planned = replan(&token).map_err(StoreError::InvalidInput)?;
        let reschedule = matches!(token.state, TokenState::Active | TokenState::Paused);
        let next_rotation_at = match planned {
            Some(at) if reschedule => Some(at),
            _ => token.next_rotation_at,
        };
        let overrides = token.policy_overrides;
        diesel::update(tokens::table.filter(tokens::id.eq(&token.id)))
            .set((
                tokens::lifetime_seconds.eq(seconds(overrides.lifetime)),
                tokens::rotate_before_seconds.eq(seconds(overrides.rotate_before)),
                tokens::rotate_at_fraction.eq(overrides.rotate_at_fraction),
                tokens::gitlab_name.eq(change.gitlab_name.as_ref().or(token.gitlab_name.as_ref())),
                tokens::next_rotation_at.eq(next_rotation_at.map(naive)),
                tokens::updated_at.eq(naive(now)),
            ))
            .execute(conn)?;
        audit::record(conn, now, actor, "token.update", token_target(name), Some(change.describe()))?;
        find(conn, name)
    })
}
