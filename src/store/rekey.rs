//! Re-sealing every stored secret under a new master key (`tokenwarden key rotate`), online and
//! in batches, and counting how far that got (`tokenwarden key status`).
//!
//! Each sealed value names the key that sealed it, so a pass simply re-seals every value not yet
//! under the target key, a batch per transaction; a crash loses at most the batch in flight and
//! the next run goes on where it stopped. A value is replaced only if it is still the one that
//! was read (compare-and-set): a daemon that committed a new secret meanwhile sealed it with its
//! own master key, and the next pass takes it. The key-check row moves to the target key last,
//! once nothing is left under another key.

use std::collections::BTreeMap;

use diesel::prelude::*;

use super::schema::{answer_journal, authorizations, clients, providers, tokens};
use super::{DbConnection, StoreError};
use crate::crypto::{Cipher, KeyId, SealContext};

/// Values re-sealed per transaction.
const BATCH: i64 = 200;
/// Passes over the store before `reseal_all` reports what is left (daemons may seal new values
/// with an older key while it runs).
const MAX_PASSES: usize = 3;

/// How many sealed values each master key holds.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct KeyStatus {
    /// Sealed values by the id of the key that sealed them.
    pub values_by_key: BTreeMap<String, usize>,
    /// The key the key-check row is sealed with (the key the store is "sealed with").
    pub key_check: Option<String>,
}

impl KeyStatus {
    /// Whether every sealed value and the key-check row are under one key: no retired key is
    /// needed any more (true of an empty store too).
    pub fn done(&self) -> bool {
        match &self.key_check {
            None => self.values_by_key.is_empty(),
            Some(key) => self.values_by_key.keys().all(|id| id == key),
        }
    }

    /// Values sealed with any key other than `key`.
    pub fn left_under_other_keys(&self, key: KeyId) -> usize {
        let key = key.to_string();
        self.values_by_key.iter().filter(|(id, _)| **id != key).map(|(_, count)| count).sum()
    }
}

/// Every sealed column as (table, column), for tests and diagnostics; the same columns as
/// [`for_each_sealed_column`] (tests/key_rotation.rs re-seals each; a unit test checks that every
/// binary column of the schema is here or is known not to be a sealed secret).
pub const SEALED_COLUMNS: &[(&str, &str)] = &[
    ("tokens", "secret"),
    ("tokens", "refresh_token"),
    ("answer_journal", "secret"),
    ("answer_journal", "refresh_token"),
    ("providers", "client_secret"),
    ("clients", "webhook_secret"),
    ("clients", "previous_webhook_secret"),
    ("authorizations", "verifier"),
];

/// One sealed column: the rows' id, the column, and where its values are bound.
macro_rules! for_each_sealed_column {
    ($visit:ident) => {
        $visit!(tokens::table, tokens::id, tokens::secret, "tokens", "secret");
        $visit!(tokens::table, tokens::id, tokens::refresh_token, "tokens", "refresh_token");
        // Answers journaled but not committed yet, sealed for their token's row.
        $visit!(answer_journal::table, answer_journal::token_id, answer_journal::secret, "tokens", "secret");
        $visit!(
            answer_journal::table,
            answer_journal::token_id,
            answer_journal::refresh_token,
            "tokens",
            "refresh_token"
        );
        $visit!(providers::table, providers::id, providers::client_secret, "providers", "client_secret");
        $visit!(clients::table, clients::id, clients::webhook_secret, "clients", "webhook_secret");
        // The secret before `client rotate-webhook-secret`, sealed where it was sealed.
        $visit!(clients::table, clients::id, clients::previous_webhook_secret, "clients", "webhook_secret");
        // PKCE verifiers of consent links not used yet.
        $visit!(authorizations::table, authorizations::id, authorizations::verifier, "authorizations", "verifier");
    };
}

/// Counts the sealed values by key, and the key-check row's key.
pub fn status(conn: &mut DbConnection) -> Result<KeyStatus, StoreError> {
    let mut status = KeyStatus::default();
    macro_rules! count {
        ($table:expr, $id:expr, $column:expr, $name:literal, $field:literal) => {
            let values: Vec<Option<Vec<u8>>> = $table.filter($column.is_not_null()).select($column).load(conn)?;
            for value in values.iter().flatten() {
                let key = Cipher::sealed_key_id(value).map_or_else(|| "unreadable".to_owned(), |id| id.to_string());
                *status.values_by_key.entry(key).or_default() += 1;
            }
        };
    }
    for_each_sealed_column!(count);
    status.key_check = super::meta::sealing_key_id(conn)?.map(|id| id.to_string());
    Ok(status)
}

/// Re-seals every value not sealed with `keyring`'s master key (which must open the others: its
/// retired keys), in batches; then, when nothing is left under another key, moves the key-check
/// row to it. Returns how many values were re-sealed and the status after.
pub fn reseal_all(conn: &mut DbConnection, keyring: &Cipher) -> Result<(usize, KeyStatus), StoreError> {
    let target = keyring.key_id();
    let mut resealed = 0;
    for _ in 0..MAX_PASSES {
        let before = resealed;
        macro_rules! reseal {
            ($table:expr, $id:expr, $column:expr, $name:literal, $field:literal) => {
                let mut after = String::new();
                loop {
                    let rows: Vec<(String, Option<Vec<u8>>)> = $table
                        .filter($id.gt(&after))
                        .filter($column.is_not_null())
                        .order($id.asc())
                        .select(($id, $column))
                        .limit(BATCH)
                        .load(conn)?;
                    let Some((last, _)) = rows.last() else { break };
                    after = last.clone();
                    resealed += conn.write_transaction(|conn| {
                        let mut changed = 0;
                        for (id, sealed) in &rows {
                            let Some(sealed) = sealed else { continue };
                            if Cipher::sealed_key_id(sealed) == Some(target) {
                                continue;
                            }
                            let context = SealContext { table: $name, row: id, field: $field };
                            let fresh = keyring.try_seal(context, &keyring.open(context, sealed)?)?;
                            changed += diesel::update($table.filter($id.eq(id)).filter($column.eq(sealed)))
                                .set($column.eq(fresh))
                                .execute(conn)?;
                        }
                        Ok::<_, StoreError>(changed)
                    })?;
                }
            };
        }
        for_each_sealed_column!(reseal);
        if resealed == before {
            break;
        }
    }
    if status(conn)?.left_under_other_keys(target) == 0 {
        super::meta::reseal_key_check(conn, keyring)?;
    }
    Ok((resealed, status(conn)?))
}

#[cfg(test)]
mod tests {
    use super::SEALED_COLUMNS;

    /// Binary columns that hold no value sealed with the master key: API-key hashes, and the
    /// key-check row (re-sealed by `meta::reseal_key_check`).
    const NOT_SEALED_SECRETS: &[(&str, &str)] =
        &[("clients", "api_key_hash"), ("clients", "previous_key_hash"), ("meta", "value")];

    /// Every `Binary` column of the schema, as (table, column).
    fn binary_columns() -> Vec<(String, String)> {
        let mut columns = Vec::new();
        let mut table = String::new();
        for line in include_str!("schema.rs").lines().map(str::trim) {
            if let Some((name, rest)) = line.split_once(" (")
                && rest.ends_with(") {")
                && !name.contains(' ')
            {
                table = name.to_string();
                continue;
            }
            if let Some((column, kind)) = line.split_once(" -> ")
                && kind.contains("Binary")
            {
                columns.push((table.clone(), column.trim_start_matches("r#").to_string()));
            }
        }
        columns
    }

    #[test]
    fn every_binary_column_is_re_sealed_or_known_not_to_be_sealed() {
        let columns = binary_columns();
        assert!(columns.contains(&("tokens".into(), "secret".into())), "the schema scan found {columns:?}");
        for (table, column) in &columns {
            let known = |list: &[(&str, &str)]| list.iter().any(|(t, c)| t == table && c == column);
            assert!(
                known(SEALED_COLUMNS) || known(NOT_SEALED_SECRETS),
                "{table}.{column} is binary but key rotation does not re-seal it: add it to SEALED_COLUMNS and \
                 for_each_sealed_column, or to NOT_SEALED_SECRETS if it is not sealed with the master key"
            );
        }
        for (table, column) in SEALED_COLUMNS {
            assert!(columns.iter().any(|(t, c)| t == table && c == column), "{table}.{column} is not in the schema");
        }
    }
}
