//! API keys (shown once, stored only as a SHA-256 hash) and webhook signing secrets.
//!
//! An API key looks like `tw_<lookup>_<secret>`: the 12-character lookup part finds the
//! client's row through an index, and the hash of the whole key is then compared in
//! constant time. The keys carry 256 bits of randomness, so a fast hash is enough.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use secrecy::{ExposeSecret, SecretString};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

/// Prefix of every API key, so leaked keys are easy to recognise in scanners.
const API_KEY_PREFIX: &str = "tw_";
/// Length of the lookup part in characters.
const LOOKUP_LEN: usize = 12;

/// A freshly generated API key, with what is stored about it.
#[derive(Debug)]
pub struct ApiKey {
    /// The full key, shown to the operator once.
    pub key: SecretString,
    /// The non-secret lookup part, stored in clear and indexed.
    pub lookup: String,
    /// The SHA-256 of the full key, stored.
    pub hash: ApiKeyHash,
}

/// The stored SHA-256 of an API key.
#[derive(Clone, PartialEq, Eq)]
pub struct ApiKeyHash(pub [u8; 32]);

impl std::fmt::Debug for ApiKeyHash {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ApiKeyHash(..)")
    }
}

impl ApiKeyHash {
    /// Hashes a presented key.
    pub fn of(key: &str) -> Self {
        Self(Sha256::digest(key.as_bytes()).into())
    }

    /// Compares a presented key with this hash in constant time.
    pub fn matches(&self, presented: &str) -> bool {
        self.matches_hash(&Self::of(presented))
    }

    /// Compares two hashes in constant time (`==` does not).
    pub fn matches_hash(&self, other: &Self) -> bool {
        other.0.ct_eq(&self.0).into()
    }
}

impl ApiKey {
    /// Generates a key with 256 bits of randomness.
    pub fn generate() -> Self {
        let mut lookup_bytes = [0u8; 9];
        let mut secret_bytes = [0u8; 32];
        rand::fill(&mut lookup_bytes);
        rand::fill(&mut secret_bytes);
        let lookup = URL_SAFE_NO_PAD.encode(lookup_bytes);
        let key = format!("{API_KEY_PREFIX}{lookup}_{}", URL_SAFE_NO_PAD.encode(secret_bytes));
        let hash = ApiKeyHash::of(&key);
        Self { key: SecretString::from(key), lookup, hash }
    }

    /// The lookup part of a presented key, or `None` if it is not shaped like one of ours.
    pub fn lookup_of(presented: &str) -> Option<&str> {
        let rest = presented.strip_prefix(API_KEY_PREFIX)?;
        let lookup = rest.get(..LOOKUP_LEN)?;
        (rest.as_bytes().get(LOOKUP_LEN) == Some(&b'_')).then_some(lookup)
    }

    /// The full key, for showing once.
    pub fn expose(&self) -> &str {
        self.key.expose_secret()
    }
}

/// A fresh webhook signing secret: 32 random bytes, hex encoded.
pub fn generate_webhook_secret() -> SecretString {
    let mut bytes = [0u8; 32];
    rand::fill(&mut bytes);
    SecretString::from(format!("whsec_{}", hex::encode(bytes)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_key_matches_its_hash_and_yields_its_lookup() {
        let key = ApiKey::generate();
        assert!(key.hash.matches(key.expose()));
        assert_eq!(ApiKey::lookup_of(key.expose()), Some(key.lookup.as_str()));
        assert_eq!(key.lookup.len(), LOOKUP_LEN);
    }

    #[test]
    fn other_keys_do_not_match() {
        let key = ApiKey::generate();
        let other = ApiKey::generate();
        assert!(!key.hash.matches(other.expose()));
        assert!(!key.hash.matches(""));
        assert_ne!(key.lookup, other.lookup);
    }

    #[test]
    fn malformed_presented_keys_have_no_lookup() {
        for bad in ["", "tw_", "tw_short", "Bearer x", "tw_abcdefghijklXrest"] {
            assert_eq!(ApiKey::lookup_of(bad), None, "{bad}");
        }
    }

    #[test]
    fn debug_hides_the_key() {
        let key = ApiKey::generate();
        let shown = format!("{key:?}");
        assert!(!shown.contains(key.expose()));
        assert!(shown.contains("REDACTED"));
    }
}
