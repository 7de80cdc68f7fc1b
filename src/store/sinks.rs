//! Sinks: where a token's current secret is put for a consumer, and the outbox of versions
//! each must receive (`sink_deliveries`, written in the transaction that committed the
//! version). The sink dispatcher ([`crate::sinks`]) claims a sink with versions pending,
//! delivers the token's *current* version (never an older one than the sink holds), and
//! records the outcome here.

use chrono::{DateTime, NaiveDateTime, TimeDelta, Utc};
use diesel::dsl::exists;
use diesel::prelude::*;
use diesel::sql_types::{BigInt, Timestamp};
use secrecy::SecretString;
use serde::Serialize;

use super::audit::{self, AuditTarget};
use super::models::{naive, new_id, utc};
use super::schema::{sink_deliveries, sinks, tokens};
use super::tokens::{SecretField, secret_context};
use super::{DbConnection, StoreError};
use crate::crypto::Cipher;
use crate::domain::TokenName;

/// A sink as stored, with its delivery state.
#[derive(Debug, Clone, Serialize, Queryable, Selectable)]
#[diesel(table_name = sinks)]
pub struct SinkRow {
    /// Internal row id.
    #[serde(skip)]
    pub id: String,
    /// Unique name.
    pub name: String,
    /// The token's row id.
    #[serde(skip)]
    pub token_id: String,
    /// `file` or `gitlab-ci-variable`.
    pub kind: String,
    /// The kind's settings as JSON (path, mode, format, … — never a secret).
    #[serde(skip)]
    pub settings: String,
    /// `pending`, `current` or `needs_attention`.
    pub state: String,
    /// The version the sink holds.
    pub delivered_version: Option<i64>,
    /// When it got it.
    #[serde(serialize_with = "as_utc")]
    pub delivered_at: Option<NaiveDateTime>,
    /// Failed attempts since the last delivery.
    pub attempts: i32,
    /// When the next attempt may run.
    #[serde(skip)]
    pub next_attempt_at: NaiveDateTime,
    /// A dispatcher's claim.
    #[serde(skip)]
    pub lease_until: Option<NaiveDateTime>,
    /// Why the last attempt failed.
    pub last_error: Option<String>,
    /// When it was added.
    #[serde(serialize_with = "always_utc")]
    pub created_at: NaiveDateTime,
}

fn always_utc<S: serde::Serializer>(value: &NaiveDateTime, serializer: S) -> Result<S::Ok, S::Error> {
    utc(*value).serialize(serializer)
}

fn as_utc<S: serde::Serializer>(value: &Option<NaiveDateTime>, serializer: S) -> Result<S::Ok, S::Error> {
    value.map(utc).serialize(serializer)
}

/// Failed attempts after which a sink shows `needs_attention` (it is still retried).
pub const ATTENTION_AFTER_ATTEMPTS: i32 = 3;

/// A sink and the token it follows, for listing.
#[derive(Debug, Clone, Serialize)]
pub struct Sink {
    /// The sink.
    #[serde(flatten)]
    pub row: SinkRow,
    /// The token's name.
    pub token: String,
    /// The token's current version.
    pub token_version: i64,
    /// The kind's settings.
    pub settings: serde_json::Value,
}

/// Adds a sink for token `token` and queues the token's current version for it; audited.
pub fn add(
    conn: &mut DbConnection,
    name: &str,
    token: &TokenName,
    kind: &str,
    settings: &serde_json::Value,
    actor: &str,
    now: DateTime<Utc>,
) -> Result<Sink, StoreError> {
    conn.write_transaction(|conn| {
        let (token_id, version): (String, i64) = tokens::table
            .filter(tokens::name.eq(token.as_str()))
            .select((tokens::id, tokens::version))
            .get_result(conn)
            .optional()?
            .ok_or_else(|| StoreError::NotFound { what: "token", name: token.to_string() })?;
        let id = new_id();
        diesel::insert_into(sinks::table)
            .values((
                sinks::id.eq(&id),
                sinks::name.eq(name),
                sinks::token_id.eq(&token_id),
                sinks::kind.eq(kind),
                sinks::settings.eq(settings.to_string()),
                sinks::state.eq("pending"),
                sinks::attempts.eq(0),
                sinks::next_attempt_at.eq(naive(now)),
                sinks::created_at.eq(naive(now)),
            ))
            .execute(conn)
            .map_err(StoreError::on_unique("sink", name))?;
        diesel::insert_into(sink_deliveries::table)
            .values((
                sink_deliveries::id.eq(format!("{id}:{version}")),
                sink_deliveries::sink_id.eq(&id),
                sink_deliveries::version.eq(version),
                sink_deliveries::created_at.eq(naive(now)),
            ))
            .execute(conn)?;
        let detail = format!("kind={kind} token={token}");
        audit::record(conn, now, actor, "sink.add", AuditTarget { kind: "sink", name }, Some(detail))?;
        find(conn, name)
    })
}

/// Every sink, by name.
pub fn list(conn: &mut DbConnection) -> Result<Vec<Sink>, StoreError> {
    let rows: Vec<(SinkRow, String, i64)> = sinks::table
        .inner_join(tokens::table)
        .order(sinks::name.asc())
        .select((SinkRow::as_select(), tokens::name, tokens::version))
        .load(conn)?;
    rows.into_iter().map(sink).collect()
}

/// One sink by name.
pub fn find(conn: &mut DbConnection, name: &str) -> Result<Sink, StoreError> {
    let row: (SinkRow, String, i64) = sinks::table
        .inner_join(tokens::table)
        .filter(sinks::name.eq(name))
        .select((SinkRow::as_select(), tokens::name, tokens::version))
        .get_result(conn)
        .optional()?
        .ok_or_else(|| StoreError::NotFound { what: "sink", name: name.to_owned() })?;
    sink(row)
}

fn sink((row, token, token_version): (SinkRow, String, i64)) -> Result<Sink, StoreError> {
    let settings = serde_json::from_str(&row.settings)
        .map_err(|err| StoreError::Corrupt(format!("sink {}: settings are not JSON: {err}", row.name)))?;
    Ok(Sink { row, token, token_version, settings })
}

/// Removes a sink (and its pending deliveries); audited.
pub fn remove(conn: &mut DbConnection, name: &str, actor: &str, now: DateTime<Utc>) -> Result<(), StoreError> {
    conn.write_transaction(|conn| {
        let id: String = sinks::table
            .filter(sinks::name.eq(name))
            .select(sinks::id)
            .get_result(conn)
            .optional()?
            .ok_or_else(|| StoreError::NotFound { what: "sink", name: name.to_owned() })?;
        diesel::delete(sink_deliveries::table.filter(sink_deliveries::sink_id.eq(&id))).execute(conn)?;
        diesel::delete(sinks::table.filter(sinks::id.eq(&id))).execute(conn)?;
        audit::record(conn, now, actor, "sink.remove", AuditTarget { kind: "sink", name }, None)
    })
}

/// Queues `version` of token `token_id` for each of its sinks; call inside the transaction
/// that committed the version. One statement, which writes nothing for a token without sinks.
pub fn enqueue(conn: &mut DbConnection, token_id: &str, version: i64, now: DateTime<Utc>) -> Result<usize, StoreError> {
    let rows = sinks::table.filter(sinks::token_id.eq(token_id)).select((
        sinks::id.concat(format!(":{version}")),
        sinks::id,
        version.into_sql::<BigInt>(),
        naive(now).into_sql::<Timestamp>(),
    ));
    Ok(diesel::insert_into(sink_deliveries::table)
        .values(rows)
        .into_columns((
            sink_deliveries::id,
            sink_deliveries::sink_id,
            sink_deliveries::version,
            sink_deliveries::created_at,
        ))
        .execute(conn)?)
}

/// A due sink, its token's name, version, sealed secret and expiry.
type DueRow = (SinkRow, String, i64, Option<Vec<u8>>, Option<NaiveDateTime>);

/// A claimed sink with what to deliver: the token's current version and secret.
#[derive(Debug)]
pub struct ClaimedSink {
    /// The sink.
    pub row: SinkRow,
    /// The token's name.
    pub token: String,
    /// The version to deliver (the token's current one).
    pub version: i64,
    /// The current secret.
    pub secret: SecretString,
    /// When it expires.
    pub expires_at: Option<DateTime<Utc>>,
    /// The claim's fencing value (the lease end it set).
    pub lease_until: NaiveDateTime,
}

/// Claims up to `limit` sinks with a version pending that are due and not leased, each for
/// `lease(sink)`; opens the token's current secret for each. A sink that already holds the current version
/// has its pending rows cleared instead (nothing older is ever delivered).
pub fn claim_due(
    conn: &mut DbConnection,
    cipher: &Cipher,
    limit: i64,
    lease: impl Fn(&SinkRow) -> TimeDelta,
    now: DateTime<Utc>,
) -> Result<Vec<ClaimedSink>, StoreError> {
    conn.write_transaction(|conn| {
        let pending = exists(sink_deliveries::table.filter(sink_deliveries::sink_id.eq(sinks::id)));
        let free = sinks::lease_until.is_null().or(sinks::lease_until.lt(naive(now)));
        let rows: Vec<DueRow> = sinks::table
            .inner_join(tokens::table)
            .filter(pending)
            .filter(free)
            .filter(sinks::next_attempt_at.le(naive(now)))
            .order(sinks::next_attempt_at.asc())
            .limit(limit)
            .select((SinkRow::as_select(), tokens::name, tokens::version, tokens::secret, tokens::expires_at))
            .load(conn)?;
        let mut claimed = Vec::new();
        for (row, token, version, sealed, expires_at) in rows {
            let lease_until = naive(now + lease(&row));
            if row.delivered_version.is_some_and(|held| held >= version) {
                clear_delivered(conn, &row.id, version)?;
                continue;
            }
            let Some(sealed) = sealed else {
                // Nothing to deliver yet (a grant not refreshed yet): look again in a minute.
                diesel::update(sinks::table.filter(sinks::id.eq(&row.id)))
                    .set(sinks::next_attempt_at.eq(naive(now + TimeDelta::minutes(1))))
                    .execute(conn)?;
                continue;
            };
            let secret = cipher.open(secret_context(&row.token_id, SecretField::Secret), &sealed)?;
            diesel::update(sinks::table.filter(sinks::id.eq(&row.id)))
                .set(sinks::lease_until.eq(lease_until))
                .execute(conn)?;
            claimed.push(ClaimedSink { row, token, version, secret, expires_at: expires_at.map(utc), lease_until });
        }
        Ok(claimed)
    })
}

fn clear_delivered(conn: &mut DbConnection, sink_id: &str, version: i64) -> Result<(), StoreError> {
    diesel::delete(
        sink_deliveries::table
            .filter(sink_deliveries::sink_id.eq(sink_id))
            .filter(sink_deliveries::version.le(version)),
    )
    .execute(conn)?;
    Ok(())
}

/// Records a delivery of `version`: the sink holds it (never moving backwards), its pending
/// rows up to it are done, the lease is released. Fenced by the claim's lease.
pub fn record_delivered(
    conn: &mut DbConnection,
    claimed: &ClaimedSink,
    now: DateTime<Utc>,
) -> Result<bool, StoreError> {
    conn.write_transaction(|conn| {
        let held =
            sinks::table.filter(sinks::id.eq(&claimed.row.id)).filter(sinks::lease_until.eq(claimed.lease_until));
        let changed = diesel::update(held)
            .set((
                sinks::delivered_version.eq(claimed.version),
                sinks::delivered_at.eq(naive(now)),
                sinks::state.eq("current"),
                sinks::attempts.eq(0),
                sinks::last_error.eq(None::<String>),
                sinks::lease_until.eq(None::<NaiveDateTime>),
                sinks::next_attempt_at.eq(naive(now)),
            ))
            .execute(conn)?;
        if changed == 1 {
            clear_delivered(conn, &claimed.row.id, claimed.version)?;
        }
        Ok(changed == 1)
    })
}

/// Records a failed attempt: retried at `retry_at`; after [`ATTENTION_AFTER_ATTEMPTS`] the
/// sink shows `needs_attention` with the error. Fenced by the claim's lease.
pub fn record_failure(
    conn: &mut DbConnection,
    claimed: &ClaimedSink,
    error: &str,
    retry_at: DateTime<Utc>,
) -> Result<i32, StoreError> {
    conn.write_transaction(|conn| {
        let attempts = claimed.row.attempts + 1;
        let state = if attempts >= ATTENTION_AFTER_ATTEMPTS { "needs_attention" } else { "pending" };
        diesel::update(
            sinks::table.filter(sinks::id.eq(&claimed.row.id)).filter(sinks::lease_until.eq(claimed.lease_until)),
        )
        .set((
            sinks::attempts.eq(attempts),
            sinks::state.eq(state),
            sinks::last_error.eq(error),
            sinks::lease_until.eq(None::<NaiveDateTime>),
            sinks::next_attempt_at.eq(naive(retry_at)),
        ))
        .execute(conn)?;
        Ok(attempts)
    })
}

/// The earliest moment a sink with versions pending may be claimed (its next attempt, or the
/// end of another dispatcher's lease on it), if any.
pub fn next_due(conn: &mut DbConnection) -> Result<Option<DateTime<Utc>>, StoreError> {
    let pending = exists(sink_deliveries::table.filter(sink_deliveries::sink_id.eq(sinks::id)));
    let times: Vec<(NaiveDateTime, Option<NaiveDateTime>)> =
        sinks::table.filter(pending).select((sinks::next_attempt_at, sinks::lease_until)).load(conn)?;
    Ok(times.into_iter().map(|(next, lease)| lease.map_or(next, |lease| lease.max(next))).min().map(utc))
}

/// Sinks that need attention, with their last error, by name.
pub fn needing_attention(conn: &mut DbConnection) -> Result<Vec<(String, String)>, StoreError> {
    let rows: Vec<(String, Option<String>)> = sinks::table
        .filter(sinks::state.eq("needs_attention"))
        .select((sinks::name, sinks::last_error))
        .order(sinks::name.asc())
        .load(conn)?;
    Ok(rows.into_iter().map(|(name, error)| (name, error.unwrap_or_default())).collect())
}

/// Each sink's versions behind its token (for `tokenwarden_sink_version_lag`).
pub fn version_lags(conn: &mut DbConnection) -> Result<Vec<(String, i64)>, StoreError> {
    let rows: Vec<(String, i64, Option<i64>)> = sinks::table
        .inner_join(tokens::table)
        .select((sinks::name, tokens::version, sinks::delivered_version))
        .load(conn)?;
    Ok(rows.into_iter().map(|(name, current, held)| (name, (current - held.unwrap_or(0)).max(0))).collect())
}

/// A managing credential for a sink that writes at a provider: the provider's base URL and
/// the manager token's current secret.
pub struct ManagingCredential {
    /// The provider's base URL.
    pub base_url: String,
    /// The manager's current secret.
    pub secret: SecretString,
}

/// The current secret of token `manager` and the URL of `provider`, which the manager must
/// belong to. A manager that needs attention or has expired is refused with why (its secret
/// would only be refused by the provider).
pub fn managing_credential(
    conn: &mut DbConnection,
    cipher: &Cipher,
    manager: &str,
    provider: &str,
) -> Result<ManagingCredential, StoreError> {
    let name: TokenName = manager
        .parse()
        .map_err(|err| StoreError::Corrupt(format!("the sink's manager '{manager}' is not a token name: {err}")))?;
    let (token, secret) = super::tokens::read_current(conn, cipher, &name)?;
    if token.provider.as_str() != provider {
        return Err(StoreError::InvalidInput(format!(
            "manager token '{manager}' belongs to provider '{}', not '{provider}'",
            token.provider
        )));
    }
    if matches!(token.state, crate::domain::TokenState::NeedsAttention | crate::domain::TokenState::Expired) {
        return Err(StoreError::InvalidInput(format!(
            "manager token '{manager}' is {} ({}); it must be repaired before it can write here",
            token.state,
            token.last_error.as_deref().unwrap_or("no error recorded")
        )));
    }
    let secret = secret.ok_or_else(|| {
        StoreError::InvalidInput(format!("manager token '{manager}' has no current secret yet (not refreshed yet)"))
    })?;
    let row = super::providers::find_row(conn, &token.provider)?;
    let base_url = row.url.ok_or_else(|| StoreError::InvalidInput(format!("provider '{provider}' has no URL")))?;
    Ok(ManagingCredential { base_url, secret })
}
