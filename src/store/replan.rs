//! Re-planning scheduled tokens after the configured policy changed.
//!
//! A token's `next_rotation_at` is planned when it is added or rotated, under the policy in
//! force then. When an operator changes the policy, [`replan`] brings every `active` token's
//! plan in line with the new one, in three steps a test can also drive one by one:
//!
//! 1. [`scheduled`] reads what a plan needs of each `active` token whose plan still lies ahead,
//!    without the write lock, a page of [`REPLAN_PAGE`] tokens at a time (so a million tokens
//!    never sit in memory at once);
//! 2. [`changes`] keeps the tokens whose plan under the current policy differs from the stored
//!    one by more than [`REPLAN_TOLERANCE`];
//! 3. [`apply`] writes the new plans in write transactions of at most [`REPLAN_BATCH`] rows,
//!    each row fenced on the version, state and plan it was read with, so a rotation (or any
//!    other change) that committed meanwhile wins.
//!
//! `retrying` tokens are left alone (their next time is a backoff, not a plan), as are
//! `rotating`, `paused`, `needs_attention` and `expired` ones, and tokens already due (the
//! scheduler rotates them at once, and that rotation plans under the current policy).

use chrono::{DateTime, NaiveDateTime, TimeDelta, Utc};
use diesel::prelude::*;

use super::models::{naive, parse_stored, stored_duration, utc};
use super::schema::tokens;
use super::{DbConnection, StoreError};
use crate::domain::{PolicyOverrides, TokenKind, TokenState};

/// Most rows updated in one write transaction, so rotations committing meanwhile never wait
/// long for the write lock.
pub const REPLAN_BATCH: usize = 1_000;

/// Tokens read (and re-planned) per page.
pub const REPLAN_PAGE: i64 = 5_000;

/// A stored plan this close to the current one is left as it is.
pub const REPLAN_TOLERANCE: TimeDelta = TimeDelta::seconds(1);

/// What a plan needs of one scheduled (`active`) token.
#[derive(Debug, Clone, PartialEq)]
pub struct ScheduledToken {
    /// The token's row id.
    pub id: String,
    /// Its name (the plan's jitter derives from it).
    pub name: String,
    /// What sort of credential it is (the default margin depends on it).
    pub kind: TokenKind,
    /// Its own policy settings.
    pub overrides: PolicyOverrides,
    /// When its current secret was issued.
    pub issued_at: DateTime<Utc>,
    /// When its current secret expires.
    pub expires_at: DateTime<Utc>,
    /// Its stored plan.
    pub next_rotation_at: DateTime<Utc>,
    /// Its version when read.
    pub version: i64,
}

/// A new plan for one token, with what it was read with (the fence of the write).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Replan {
    /// The token's row id.
    pub id: String,
    /// Its version when read.
    pub version: i64,
    /// Its stored plan when read.
    pub planned: DateTime<Utc>,
    /// Its plan under the current policy.
    pub replanned: DateTime<Utc>,
}

/// What [`replan`] did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ReplanSummary {
    /// `active` tokens with a plan ahead, read.
    pub scheduled: usize,
    /// Of those, tokens whose plan differed from the current policy's.
    pub differing: usize,
    /// Of those, tokens re-planned (the others changed meanwhile and were left as they are).
    pub replanned: usize,
}

type ScheduledRow = (
    String,
    String,
    String,
    Option<i64>,
    Option<i64>,
    Option<f64>,
    Option<NaiveDateTime>,
    Option<NaiveDateTime>,
    Option<NaiveDateTime>,
    i64,
);

/// Up to `limit` `active` tokens with an id after `after` (in id order) that have an issue
/// time, an expiry and a plan later than `now`, with only the columns a plan needs. Reads
/// without taking the write lock; the last token's id is where the next page starts.
pub fn scheduled(
    conn: &mut DbConnection,
    now: DateTime<Utc>,
    after: Option<&str>,
    limit: i64,
) -> Result<Vec<ScheduledToken>, StoreError> {
    let rows: Vec<ScheduledRow> = tokens::table
        .filter(tokens::id.gt(after.unwrap_or_default()))
        .filter(tokens::state.eq(TokenState::Active.as_str()))
        .filter(tokens::issued_at.is_not_null())
        .filter(tokens::expires_at.is_not_null())
        .filter(tokens::next_rotation_at.gt(naive(now)))
        .select((
            tokens::id,
            tokens::name,
            tokens::kind,
            tokens::lifetime_seconds,
            tokens::rotate_before_seconds,
            tokens::rotate_at_fraction,
            tokens::issued_at,
            tokens::expires_at,
            tokens::next_rotation_at,
            tokens::version,
        ))
        .order(tokens::id.asc())
        .limit(limit)
        .load(conn)?;
    let mut scheduled = Vec::with_capacity(rows.len());
    for (id, name, kind, lifetime, rotate_before, fraction, issued_at, expires_at, planned, version) in rows {
        let (Some(issued_at), Some(expires_at), Some(planned)) = (issued_at, expires_at, planned) else {
            continue;
        };
        scheduled.push(ScheduledToken {
            kind: parse_stored("token kind", &kind)?,
            overrides: PolicyOverrides {
                lifetime: stored_duration("lifetime_seconds", lifetime)?,
                rotate_before: stored_duration("rotate_before_seconds", rotate_before)?,
                rotate_at_fraction: fraction,
            },
            id,
            name,
            issued_at: utc(issued_at),
            expires_at: utc(expires_at),
            next_rotation_at: utc(planned),
            version,
        });
    }
    Ok(scheduled)
}

/// The tokens whose plan under `plan` differs from the stored one by more than
/// [`REPLAN_TOLERANCE`], with their new plans.
pub fn changes(scheduled: &[ScheduledToken], plan: impl Fn(&ScheduledToken) -> DateTime<Utc>) -> Vec<Replan> {
    scheduled
        .iter()
        .filter_map(|token| {
            let replanned = plan(token);
            let difference = (replanned - token.next_rotation_at).abs();
            (difference > REPLAN_TOLERANCE).then(|| Replan {
                id: token.id.clone(),
                version: token.version,
                planned: token.next_rotation_at,
                replanned,
            })
        })
        .collect()
}

/// Writes the new plans, [`REPLAN_BATCH`] rows per write transaction. Each row is updated only
/// if it is still `active`, at the version and with the plan it was read with. Returns how
/// many rows were updated.
pub fn apply(conn: &mut DbConnection, replans: &[Replan], now: DateTime<Utc>) -> Result<usize, StoreError> {
    let mut updated = 0;
    for batch in replans.chunks(REPLAN_BATCH) {
        updated += conn.write_transaction(|conn| {
            let mut updated = 0;
            for change in batch {
                let unchanged = tokens::table
                    .filter(tokens::id.eq(&change.id))
                    .filter(tokens::version.eq(change.version))
                    .filter(tokens::state.eq(TokenState::Active.as_str()))
                    .filter(tokens::next_rotation_at.eq(naive(change.planned)));
                updated += diesel::update(unchanged)
                    .set((tokens::next_rotation_at.eq(naive(change.replanned)), tokens::updated_at.eq(naive(now))))
                    .execute(conn)?;
            }
            Ok::<_, StoreError>(updated)
        })?;
    }
    Ok(updated)
}

/// Re-plans every scheduled token whose stored plan differs from `plan`'s: [`scheduled`],
/// [`changes`], then [`apply`], one page of [`REPLAN_PAGE`] tokens at a time.
pub fn replan(
    conn: &mut DbConnection,
    now: DateTime<Utc>,
    plan: impl Fn(&ScheduledToken) -> DateTime<Utc>,
) -> Result<ReplanSummary, StoreError> {
    let mut summary = ReplanSummary::default();
    let mut after: Option<String> = None;
    loop {
        let page = scheduled(conn, now, after.as_deref(), REPLAN_PAGE)?;
        let Some(last) = page.last() else { break };
        after = Some(last.id.clone());
        let replans = changes(&page, &plan);
        summary.scheduled += page.len();
        summary.differing += replans.len();
        summary.replanned += apply(conn, &replans, now)?;
        if i64::try_from(page.len()).unwrap_or(i64::MAX) < REPLAN_PAGE {
            break;
        }
    }
    Ok(summary)
}
