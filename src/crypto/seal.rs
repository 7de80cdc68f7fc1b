//! AES-256-GCM sealing of secrets bound to their row and field.
//!
//! Sealed format (version 1): `0x01 | key id (8 bytes) | nonce (12 bytes) | ciphertext+tag`.
//! Associated data: `tokenwarden.v1 \0 table \0 row id \0 field \0 key id`.

use std::fmt;

use aes_gcm::aead::{Aead, KeyInit, Payload};
use aes_gcm::{Aes256Gcm, Nonce};
use secrecy::{ExposeSecret, SecretString};
use sha2::{Digest, Sha256};

use super::{CryptoError, MasterKey};

/// First byte of every sealed value.
const FORMAT_VERSION: u8 = 1;
/// Length of a key id in bytes.
const KEY_ID_LEN: usize = 8;
/// Length of an AES-GCM nonce in bytes.
const NONCE_LEN: usize = 12;
/// Length of the header before the ciphertext.
const HEADER_LEN: usize = 1 + KEY_ID_LEN + NONCE_LEN;

/// Identifies a master key without revealing it: the first 8 bytes of a domain-separated SHA-256.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct KeyId([u8; KEY_ID_LEN]);

impl fmt::Display for KeyId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&hex::encode(self.0))
    }
}

impl fmt::Debug for KeyId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "KeyId({self})")
    }
}

/// Where a sealed value lives; it becomes the associated data, so the value opens only there.
#[derive(Debug, Clone, Copy)]
pub struct SealContext<'a> {
    /// The table, e.g. `tokens`.
    pub table: &'static str,
    /// The row's id.
    pub row: &'a str,
    /// The column, e.g. `refresh_token`.
    pub field: &'static str,
}

impl SealContext<'_> {
    fn associated_data(&self, key_id: &KeyId) -> Vec<u8> {
        let mut aad = Vec::with_capacity(64);
        for part in [b"tokenwarden.v1".as_slice(), self.table.as_bytes(), self.row.as_bytes(), self.field.as_bytes()] {
            aad.extend_from_slice(part);
            aad.push(0);
        }
        aad.extend_from_slice(&key_id.0);
        aad
    }

    fn tampered(&self) -> CryptoError {
        CryptoError::Tampered { table: self.table, row: self.row.to_owned(), field: self.field }
    }

    fn malformed(&self) -> CryptoError {
        CryptoError::Malformed { table: self.table, row: self.row.to_owned(), field: self.field }
    }

    fn cannot_seal(&self) -> CryptoError {
        CryptoError::CannotSeal { table: self.table, row: self.row.to_owned(), field: self.field }
    }
}

/// Seals and opens secrets with the master key; opens values sealed with retired master keys
/// too (during a key rotation, see [`Cipher::with_retired`]).
pub struct Cipher {
    aead: Aes256Gcm,
    key_id: KeyId,
    retired: Vec<(KeyId, Aes256Gcm)>,
}

impl fmt::Debug for Cipher {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Cipher {{ key_id: {} }}", self.key_id)
    }
}

impl Cipher {
    /// Prepares a cipher for `key`.
    pub fn new(key: &MasterKey) -> Self {
        let digest = Sha256::new().chain_update(b"tokenwarden key id\0").chain_update(key.bytes()).finalize();
        let mut id = [0u8; KEY_ID_LEN];
        id.copy_from_slice(&digest[..KEY_ID_LEN]);
        let aead = Aes256Gcm::new(key.bytes().into());
        Self { aead, key_id: KeyId(id), retired: Vec::new() }
    }

    /// This cipher, also opening (never sealing) values sealed with `retired` keys: what a
    /// daemon runs with while `key rotate` re-seals the store under its master key.
    pub fn with_retired(mut self, retired: &[MasterKey]) -> Self {
        for key in retired {
            let other = Cipher::new(key);
            if !self.knows(other.key_id) {
                self.retired.push((other.key_id, other.aead));
            }
        }
        self
    }

    /// Whether this cipher opens values sealed with the key `id`.
    pub fn knows(&self, id: KeyId) -> bool {
        self.aead_for(id).is_some()
    }

    fn aead_for(&self, id: KeyId) -> Option<&Aes256Gcm> {
        if id == self.key_id {
            return Some(&self.aead);
        }
        self.retired.iter().find(|(retired, _)| *retired == id).map(|(_, aead)| aead)
    }

    /// The id of the master key this cipher uses.
    pub fn key_id(&self) -> KeyId {
        self.key_id
    }

    /// Seals `secret` for `context` with a fresh random nonce; fails with
    /// [`CryptoError::CannotSeal`] only for a value AES-GCM cannot encrypt (64 GiB or more).
    pub fn try_seal(&self, context: SealContext<'_>, secret: &SecretString) -> Result<Vec<u8>, CryptoError> {
        let mut nonce_bytes = [0u8; NONCE_LEN];
        rand::fill(&mut nonce_bytes);
        let nonce = Nonce::from(nonce_bytes);
        let aad = context.associated_data(&self.key_id);
        let payload = Payload { msg: secret.expose_secret().as_bytes(), aad: &aad };
        let ciphertext = self.aead.encrypt(&nonce, payload).map_err(|_| context.cannot_seal())?;
        let mut sealed = Vec::with_capacity(HEADER_LEN + ciphertext.len());
        sealed.push(FORMAT_VERSION);
        sealed.extend_from_slice(&self.key_id.0);
        sealed.extend_from_slice(&nonce_bytes);
        sealed.extend_from_slice(&ciphertext);
        Ok(sealed)
    }

    /// The key id recorded in a sealed value, if it is in tokenwarden's format.
    pub fn sealed_key_id(sealed: &[u8]) -> Option<KeyId> {
        if sealed.len() < HEADER_LEN || sealed[0] != FORMAT_VERSION {
            return None;
        }
        let mut id = [0u8; KEY_ID_LEN];
        id.copy_from_slice(&sealed[1..1 + KEY_ID_LEN]);
        Some(KeyId(id))
    }

    /// Opens a value sealed for `context`; fails with [`CryptoError::WrongKey`] when another
    /// master key sealed it, and [`CryptoError::Tampered`] when it was altered or moved.
    pub fn open(&self, context: SealContext<'_>, sealed: &[u8]) -> Result<SecretString, CryptoError> {
        let key_id = Self::sealed_key_id(sealed).ok_or_else(|| context.malformed())?;
        let aead = self.aead_for(key_id).ok_or(CryptoError::WrongKey { sealed_with: key_id, loaded: self.key_id })?;
        let nonce_bytes: [u8; NONCE_LEN] =
            sealed[1 + KEY_ID_LEN..HEADER_LEN].try_into().map_err(|_| context.malformed())?;
        let aad = context.associated_data(&key_id);
        let payload = Payload { msg: &sealed[HEADER_LEN..], aad: &aad };
        let plain = aead.decrypt(&Nonce::from(nonce_bytes), payload).map_err(|_| context.tampered())?;
        let text = String::from_utf8(plain).map_err(|_| context.malformed())?;
        Ok(SecretString::from(text))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn context(row: &str) -> SealContext<'_> {
        SealContext { table: "tokens", row, field: "secret" }
    }

    #[test]
    fn round_trips_and_uses_a_fresh_nonce_each_time() {
        let cipher = Cipher::new(&MasterKey::generate());
        let secret = SecretString::from("glpat-abc123");
        let first = cipher.try_seal(context("row-1"), &secret).unwrap();
        let second = cipher.try_seal(context("row-1"), &secret).unwrap();
        assert_ne!(first, second, "same plaintext must not give the same ciphertext");
        assert!(!first.windows(12).any(|w| w == b"glpat-abc123"));
        assert_eq!(cipher.open(context("row-1"), &first).unwrap().expose_secret(), "glpat-abc123");
    }

    #[test]
    fn ciphertext_moved_to_another_row_or_field_fails_to_open() {
        let cipher = Cipher::new(&MasterKey::generate());
        let sealed = cipher.try_seal(context("row-1"), &SecretString::from("s3cret")).unwrap();
        assert!(matches!(cipher.open(context("row-2"), &sealed), Err(CryptoError::Tampered { .. })));
        let other_field = SealContext { field: "refresh_token", ..context("row-1") };
        assert!(matches!(cipher.open(other_field, &sealed), Err(CryptoError::Tampered { .. })));
    }

    #[test]
    fn wrong_key_is_reported_as_such() {
        let sealed = Cipher::new(&MasterKey::generate()).try_seal(context("r"), &SecretString::from("x")).unwrap();
        let err = Cipher::new(&MasterKey::generate()).open(context("r"), &sealed).unwrap_err();
        assert!(matches!(err, CryptoError::WrongKey { .. }));
        assert!(err.to_string().contains("wrong master key"), "{err}");
    }

    #[test]
    fn a_cipher_with_a_retired_key_opens_what_either_key_sealed_and_seals_with_its_own() {
        let (old, new) = (MasterKey::generate(), MasterKey::generate());
        let sealed_old = Cipher::new(&old).try_seal(context("r"), &SecretString::from("old")).unwrap();
        let keyring = Cipher::new(&new).with_retired(std::slice::from_ref(&old));
        assert_eq!(keyring.open(context("r"), &sealed_old).unwrap().expose_secret(), "old");
        let sealed_new = keyring.try_seal(context("r"), &SecretString::from("new")).unwrap();
        assert_eq!(Cipher::sealed_key_id(&sealed_new), Some(Cipher::new(&new).key_id()));
        assert!(matches!(Cipher::new(&old).open(context("r"), &sealed_new), Err(CryptoError::WrongKey { .. })));
        assert!(
            keyring.knows(Cipher::new(&old).key_id()) && !keyring.knows(Cipher::new(&MasterKey::generate()).key_id())
        );
    }

    #[test]
    fn flipped_bit_and_garbage_fail_cleanly() {
        let cipher = Cipher::new(&MasterKey::generate());
        let mut sealed = cipher.try_seal(context("r"), &SecretString::from("x")).unwrap();
        let last = sealed.len() - 1;
        sealed[last] ^= 1;
        assert!(matches!(cipher.open(context("r"), &sealed), Err(CryptoError::Tampered { .. })));
        assert!(matches!(cipher.open(context("r"), b"short"), Err(CryptoError::Malformed { .. })));
    }
}
