//! Webhook signatures: how a receiver knows a delivery came from tokenwarden, unaltered and
//! recently.
//!
//! Header: `X-Tokenwarden-Signature: t=<unix seconds>,v1=<hex HMAC-SHA256>` where the MAC is
//! keyed with the client's webhook secret (its UTF-8 bytes, `whsec_…` prefix included) over
//! `"<t>.<raw body>"`. Signing the timestamp with the body lets a receiver reject replays:
//! [`verify`] refuses a timestamp outside its tolerance. Receivers should ignore unknown
//! `key=value` parts and accept any matching `v1` (several appear during a secret change).

use std::time::Duration;

use chrono::{DateTime, TimeDelta, Utc};
use hmac::{Hmac, KeyInit, Mac};
use secrecy::{ExposeSecret, SecretString};
use sha2::Sha256;

/// The header carrying the signature.
pub const SIGNATURE_HEADER: &str = "X-Tokenwarden-Signature";
/// The header naming the event.
pub const EVENT_HEADER: &str = "X-Tokenwarden-Event";
/// The header carrying the delivery id (the body's `id`, stable across retries).
pub const DELIVERY_HEADER: &str = "X-Tokenwarden-Delivery";
/// How far a signature's timestamp may be from the receiver's clock by default.
pub const DEFAULT_TOLERANCE: Duration = Duration::from_secs(300);
/// Length of an HMAC-SHA256 tag in bytes.
const TAG_LEN: usize = 32;

type HmacSha256 = Hmac<Sha256>;

/// Why a signature was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SignatureError {
    /// The header is not `t=<unix seconds>,v1=<64 hex digits>`.
    #[error("malformed signature header: {0}; expected t=<unix seconds>,v1=<64 hex digits>")]
    Malformed(&'static str),
    /// The timestamp is too far from now: a replay, or a clock that is badly off.
    #[error(
        "signature timestamp {timestamp} is {skew_seconds} s away from now (tolerance {tolerance_seconds} s); reject it as a replay or fix the clock"
    )]
    OutsideTolerance {
        /// The signed timestamp (unix seconds).
        timestamp: i64,
        /// How far it is from now, in seconds.
        skew_seconds: i64,
        /// The allowed distance, in seconds.
        tolerance_seconds: u64,
    },
    /// No `v1` matches: the body was altered or another secret signed it.
    #[error("signature does not match the body; it was altered or signed with another webhook secret")]
    Mismatch,
}

/// The MAC over `"<timestamp>.<body>"`, ready for the final update or check.
fn mac_for(secret: &SecretString, timestamp: i64, body: &[u8]) -> HmacSha256 {
    let mut mac = <HmacSha256 as KeyInit>::new_from_slice(secret.expose_secret().as_bytes())
        .expect("HMAC accepts keys of any length");
    mac.update(timestamp.to_string().as_bytes());
    mac.update(b".");
    mac.update(body);
    mac
}

/// The `X-Tokenwarden-Signature` value for `body` sent at `timestamp`.
pub fn sign(secret: &SecretString, timestamp: DateTime<Utc>, body: &[u8]) -> String {
    let seconds = timestamp.timestamp();
    let tag = mac_for(secret, seconds, body).finalize().into_bytes();
    format!("t={seconds},v1={}", hex::encode(tag))
}

/// [`sign`] with `secret`, plus a second `v1` made with `previous` during a secret change, so
/// a receiver that still knows only the previous secret accepts the delivery.
pub fn sign_with(
    secret: &SecretString,
    previous: Option<&SecretString>,
    timestamp: DateTime<Utc>,
    body: &[u8],
) -> String {
    let mut header = sign(secret, timestamp, body);
    if let Some(previous) = previous {
        let tag = mac_for(previous, timestamp.timestamp(), body).finalize().into_bytes();
        header.push_str(&format!(",v1={}", hex::encode(tag)));
    }
    header
}

/// A parsed signature header: the timestamp and every `v1` tag.
struct ParsedHeader {
    timestamp: i64,
    tags: Vec<[u8; TAG_LEN]>,
}

/// Splits `t=…,v1=…[,v1=…]`, ignoring unknown parts.
fn parse(header: &str) -> Result<ParsedHeader, SignatureError> {
    let mut timestamp = None;
    let mut tags = Vec::new();
    for part in header.split(',') {
        let (key, value) = part.trim().split_once('=').ok_or(SignatureError::Malformed("a part has no '='"))?;
        match key {
            "t" => {
                let seconds = value.parse::<i64>().map_err(|_| SignatureError::Malformed("t is not an integer"))?;
                if timestamp.replace(seconds).is_some() {
                    return Err(SignatureError::Malformed("t appears twice"));
                }
            }
            "v1" => {
                let mut tag = [0u8; TAG_LEN];
                hex::decode_to_slice(value, &mut tag)
                    .map_err(|_| SignatureError::Malformed("v1 is not 64 hexadecimal digits"))?;
                tags.push(tag);
            }
            _ => {}
        }
    }
    let timestamp = timestamp.ok_or(SignatureError::Malformed("t is missing"))?;
    if tags.is_empty() {
        return Err(SignatureError::Malformed("v1 is missing"));
    }
    Ok(ParsedHeader { timestamp, tags })
}

/// Checks a signature header against `body`: well formed, signed within `tolerance` of
/// `now` (either side), and a `v1` tag matches (compared in constant time).
pub fn verify(
    secret: &SecretString,
    header: &str,
    body: &[u8],
    now: DateTime<Utc>,
    tolerance: Duration,
) -> Result<(), SignatureError> {
    let parsed = parse(header)?;
    let skew = now.timestamp().saturating_sub(parsed.timestamp).saturating_abs();
    let allowed = TimeDelta::from_std(tolerance).map_or(i64::MAX, |t| t.num_seconds());
    if skew > allowed {
        return Err(SignatureError::OutsideTolerance {
            timestamp: parsed.timestamp,
            skew_seconds: skew,
            tolerance_seconds: tolerance.as_secs(),
        });
    }
    let mac = mac_for(secret, parsed.timestamp, body);
    if parsed.tags.iter().any(|tag| mac.clone().verify_slice(tag).is_ok()) {
        return Ok(());
    }
    Err(SignatureError::Mismatch)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Computed independently with Python:
    /// `hmac.new(secret, b"1764064800." + body, hashlib.sha256).hexdigest()`.
    const KNOWN_SECRET: &str = "whsec_0123456789abcdef";
    const KNOWN_BODY: &str =
        r#"{"id":"0190a1b2-c3d4-7e5f-8a9b-0c1d2e3f4a5b","event":"token.rotated","token":"ci-deploy","version":2}"#;
    const KNOWN_TIMESTAMP: i64 = 1_764_064_800;
    const KNOWN_MAC: &str = "0dbc135cf1b3646eb952f86dd164a12476741cd5b58cc87338596967170cd2d8";

    fn secret() -> SecretString {
        SecretString::from(KNOWN_SECRET)
    }

    fn at(seconds: i64) -> DateTime<Utc> {
        DateTime::from_timestamp(seconds, 0).unwrap()
    }

    fn known_header() -> String {
        format!("t={KNOWN_TIMESTAMP},v1={KNOWN_MAC}")
    }

    #[test]
    fn signing_matches_an_independently_computed_vector() {
        let header = sign(&secret(), at(KNOWN_TIMESTAMP), KNOWN_BODY.as_bytes());
        assert_eq!(header, known_header());
    }

    #[test]
    fn a_fresh_signature_verifies_and_sub_second_time_is_dropped() {
        let now = at(KNOWN_TIMESTAMP) + TimeDelta::milliseconds(750);
        let header = sign(&secret(), now, KNOWN_BODY.as_bytes());
        assert_eq!(header, known_header());
        assert_eq!(verify(&secret(), &header, KNOWN_BODY.as_bytes(), now, DEFAULT_TOLERANCE), Ok(()));
    }

    #[test]
    fn an_altered_body_or_another_secret_is_a_mismatch() {
        let now = at(KNOWN_TIMESTAMP);
        let header = known_header();
        let altered = KNOWN_BODY.replace("\"version\":2", "\"version\":3");
        assert_eq!(
            verify(&secret(), &header, altered.as_bytes(), now, DEFAULT_TOLERANCE),
            Err(SignatureError::Mismatch)
        );
        let other = SecretString::from("whsec_other");
        assert_eq!(
            verify(&other, &header, KNOWN_BODY.as_bytes(), now, DEFAULT_TOLERANCE),
            Err(SignatureError::Mismatch)
        );
    }

    #[test]
    fn a_timestamp_moved_to_make_an_old_signature_fresh_is_a_mismatch() {
        let now = at(KNOWN_TIMESTAMP + 3600);
        let replayed = format!("t={},v1={KNOWN_MAC}", now.timestamp());
        assert_eq!(
            verify(&secret(), &replayed, KNOWN_BODY.as_bytes(), now, DEFAULT_TOLERANCE),
            Err(SignatureError::Mismatch)
        );
    }

    #[test]
    fn a_replay_outside_the_tolerance_is_refused_on_either_side() {
        let body = KNOWN_BODY.as_bytes();
        let header = known_header();
        let tolerance = Duration::from_secs(300);
        assert_eq!(verify(&secret(), &header, body, at(KNOWN_TIMESTAMP + 300), tolerance), Ok(()));
        assert_eq!(verify(&secret(), &header, body, at(KNOWN_TIMESTAMP - 300), tolerance), Ok(()));
        for now in [at(KNOWN_TIMESTAMP + 301), at(KNOWN_TIMESTAMP - 301)] {
            let err = verify(&secret(), &header, body, now, tolerance).unwrap_err();
            assert!(matches!(err, SignatureError::OutsideTolerance { skew_seconds: 301, .. }), "{err}");
        }
    }

    #[test]
    fn malformed_headers_are_refused() {
        let now = at(KNOWN_TIMESTAMP);
        let body = KNOWN_BODY.as_bytes();
        let cases = [
            "",
            "garbage",
            &format!("v1={KNOWN_MAC}"),
            &format!("t={KNOWN_TIMESTAMP}"),
            &format!("t=soon,v1={KNOWN_MAC}"),
            &format!("t={KNOWN_TIMESTAMP},v1=abc"),
            &format!("t={KNOWN_TIMESTAMP},v1={}", "zz".repeat(32)),
            &format!("t={KNOWN_TIMESTAMP},t={KNOWN_TIMESTAMP},v1={KNOWN_MAC}"),
        ];
        for header in cases {
            let err = verify(&secret(), header, body, now, DEFAULT_TOLERANCE).unwrap_err();
            assert!(matches!(err, SignatureError::Malformed(_)), "{header:?}: {err}");
        }
    }

    #[test]
    fn unknown_parts_are_ignored_and_any_matching_v1_is_accepted() {
        let now = at(KNOWN_TIMESTAMP);
        let header = format!("t={KNOWN_TIMESTAMP}, v0=old, v1={}, v1={KNOWN_MAC}", "00".repeat(32));
        assert_eq!(verify(&secret(), &header, KNOWN_BODY.as_bytes(), now, DEFAULT_TOLERANCE), Ok(()));
    }
}
