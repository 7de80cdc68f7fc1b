//! The random values of one authorisation: the `state` (the callback's capability, stored only
//! as its hash) and the PKCE pair (RFC 7636, `S256` always).

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use secrecy::{ExposeSecret, SecretString};
use sha2::{Digest, Sha256};

/// 32 random bytes, base64url without padding (43 characters).
fn random_text() -> SecretString {
    let mut bytes = [0u8; 32];
    rand::fill(&mut bytes);
    SecretString::from(URL_SAFE_NO_PAD.encode(bytes))
}

/// A fresh `state` value.
pub fn new_state() -> SecretString {
    random_text()
}

/// The hash a state is stored and found by: SHA-256, hex.
pub fn state_hash(state: &str) -> String {
    hex::encode(Sha256::digest(state.as_bytes()))
}

/// A PKCE verifier and its `S256` challenge.
#[derive(Debug)]
pub struct Pkce {
    /// The verifier (43 characters of the unreserved set), sent with the code exchange.
    pub verifier: SecretString,
    /// `BASE64URL(SHA256(verifier))`, sent with the authorisation request.
    pub challenge: String,
}

impl Pkce {
    /// A new random pair.
    pub fn generate() -> Self {
        let verifier = random_text();
        let challenge = challenge_of(verifier.expose_secret());
        Self { verifier, challenge }
    }
}

/// The `S256` challenge of `verifier`.
pub fn challenge_of(verifier: &str) -> String {
    URL_SAFE_NO_PAD.encode(Sha256::digest(verifier.as_bytes()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_challenge_matches_rfc_7636_appendix_b() {
        let verifier = "dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXk";
        assert_eq!(challenge_of(verifier), "E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM");
    }

    #[test]
    fn verifiers_and_states_are_long_unreserved_and_never_repeat() {
        let (a, b) = (Pkce::generate(), Pkce::generate());
        let text = a.verifier.expose_secret();
        assert_eq!(text.len(), 43);
        assert!(text.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_'));
        assert_ne!(text, b.verifier.expose_secret());
        assert_ne!(new_state().expose_secret(), new_state().expose_secret());
        assert_eq!(state_hash("x").len(), 64);
    }
}
