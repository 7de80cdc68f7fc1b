//! Facts about the database itself, chiefly which master key sealed its secrets.

use diesel::prelude::*;
use secrecy::SecretString;

use super::schema::meta;
use super::{DbConnection, StoreError};
use crate::crypto::{Cipher, KeyId, SealContext};

/// Name of the row holding a value sealed with the database's master key.
const KEY_CHECK: &str = "key_check";
/// Name of the row the readiness check rewrites to find out whether writes go through.
const WRITE_PROBE: &str = "write_probe";
/// Where the key-check value is bound.
const KEY_CHECK_CONTEXT: SealContext<'static> = SealContext { table: "meta", row: KEY_CHECK, field: "value" };

/// The id of the master key that sealed this database, if any secret was ever sealed.
pub fn sealing_key_id(conn: &mut DbConnection) -> Result<Option<KeyId>, StoreError> {
    let value: Option<Vec<u8>> =
        meta::table.filter(meta::name.eq(KEY_CHECK)).select(meta::value).get_result(conn).optional()?;
    Ok(value.as_deref().and_then(Cipher::sealed_key_id))
}

/// Checks that `cipher` uses the key this database was sealed with, recording it on first use.
/// A wrong key fails here with [`crate::crypto::CryptoError::WrongKey`], before any secret is touched.
/// When two replicas record a key at once on a new database, the one that loses checks its key
/// against the winner's.
pub fn verify_or_record_key(conn: &mut DbConnection, cipher: &Cipher) -> Result<(), StoreError> {
    match verify_or_insert_key(conn, cipher) {
        Err(StoreError::Query(diesel::result::Error::DatabaseError(
            diesel::result::DatabaseErrorKind::UniqueViolation,
            _,
        ))) => verify_or_insert_key(conn, cipher),
        other => other,
    }
}

fn verify_or_insert_key(conn: &mut DbConnection, cipher: &Cipher) -> Result<(), StoreError> {
    conn.write_transaction(|conn| {
        let existing: Option<Vec<u8>> =
            meta::table.filter(meta::name.eq(KEY_CHECK)).select(meta::value).get_result(conn).optional()?;
        match existing {
            Some(sealed) => {
                cipher.open(KEY_CHECK_CONTEXT, &sealed)?;
                Ok(())
            }
            None => {
                let sealed = cipher.try_seal(KEY_CHECK_CONTEXT, &SecretString::from("tokenwarden"))?;
                diesel::insert_into(meta::table)
                    .values((meta::name.eq(KEY_CHECK), meta::value.eq(sealed)))
                    .execute(conn)?;
                Ok(())
            }
        }
    })
}

/// Seals the key-check row again with `cipher`'s master key (which must open the current one):
/// the last step of a key rotation, after which the store counts as sealed with that key.
pub fn reseal_key_check(conn: &mut DbConnection, cipher: &Cipher) -> Result<(), StoreError> {
    conn.write_transaction(|conn| {
        let existing: Option<Vec<u8>> =
            meta::table.filter(meta::name.eq(KEY_CHECK)).select(meta::value).get_result(conn).optional()?;
        let Some(sealed) = existing else { return Ok(()) };
        let fresh = cipher.try_seal(KEY_CHECK_CONTEXT, &cipher.open(KEY_CHECK_CONTEXT, &sealed)?)?;
        diesel::update(meta::table.filter(meta::name.eq(KEY_CHECK))).set(meta::value.eq(fresh)).execute(conn)?;
        Ok(())
    })
}

/// Writes (and commits) a small row, to find out whether the storage accepts writes again after
/// it refused one (full disk, read-only file system).
pub fn probe_write(conn: &mut DbConnection) -> Result<(), StoreError> {
    let stamp = chrono::Utc::now().timestamp_micros().to_be_bytes().to_vec();
    conn.write_transaction(|conn| {
        diesel::delete(meta::table.filter(meta::name.eq(WRITE_PROBE))).execute(conn)?;
        diesel::insert_into(meta::table).values((meta::name.eq(WRITE_PROBE), meta::value.eq(&stamp))).execute(conn)?;
        Ok(())
    })
}
