//! Hostile provider answers: garbage JSON, a 10 MB body, the token's field missing, of the wrong
//! type or under an unexpected name — sent by the GitLab simulator *after* it acted, as a broken
//! proxy or a buggy provider would. Each is rejected with a clear error that never quotes a
//! token; the stored secret and version stay as they were; and because the provider may have
//! renewed, a rejected renewal answer is an unknown outcome resolved by probing (never by
//! renewing blindly), while a rejected look-up is simply retried.

mod common;

use std::time::Duration;

use chrono::{Days, NaiveDate, TimeDelta};
use common::engine_setup::{Setup, engine_settings, setup_with, start_time};
use tokenwarden::domain::TokenName;
use tokenwarden::engine::{ForcedRotation, RotationOutcome, rotate_now};
use tokenwarden::providers::HttpSettings;
use tokenwarden::simulator::harness::EngineHarness;
use tokenwarden::simulator::{Fault, FaultTarget, Malformation, TokenOwner};

fn in_days(days: u64) -> NaiveDate {
    start_time().date_naive() + Days::new(days)
}

/// Ten megabytes: ten times the providers' response limit.
const TEN_MB: u64 = 10 * 1024 * 1024;

/// Every malformation, with a name for its token.
const MALFORMATIONS: [(&str, Malformation); 5] = [
    ("garbage", Malformation::GarbageJson),
    ("oversize", Malformation::Oversize { bytes: TEN_MB }),
    ("missing", Malformation::MissingField),
    ("wrong-type", Malformation::WrongType),
    ("elsewhere", Malformation::TokenInUnexpectedField),
];

/// Prefixes of every secret the simulator issues (tokens, access and refresh tokens).
const SECRET_PREFIXES: [&str; 4] = ["glpat-", "gloat-", "glrt-", "gloas-"];

async fn setup() -> Setup {
    setup_with(engine_settings(Duration::from_secs(5))).await
}

async fn force(harness: &EngineHarness, name: &str) -> RotationOutcome {
    let name: TokenName = name.parse().unwrap();
    match rotate_now(&harness.context, &name, "test").await.unwrap() {
        ForcedRotation::Attempted(report) => report.outcome,
        other => panic!("expected an attempt, got {other:?}"),
    }
}

/// The error text of a retried attempt.
fn retried(outcome: RotationOutcome, what: &str) -> String {
    match outcome {
        RotationOutcome::Retrying { error, .. } => error,
        other => panic!("{what}: expected a retry, got {other:?}"),
    }
}

/// Asserts that `text` quotes no secret the simulator issued.
fn assert_no_secret(text: &str, what: &str) {
    for prefix in SECRET_PREFIXES {
        assert!(!text.contains(prefix), "{what} quotes a secret ({prefix}…): {text}");
    }
}

/// What a clear error about this malformation says, for GitLab's rotate answer or an OAuth
/// refresh answer.
fn clear_reason(malformation: Malformation, oauth: bool) -> &'static str {
    match (malformation, oauth) {
        (Malformation::GarbageJson, _) => "not valid JSON",
        (Malformation::Oversize { .. }, _) => "larger than 1048576 bytes",
        (Malformation::WrongType, _) => "wrong type",
        (Malformation::MissingField | Malformation::TokenInUnexpectedField, false) => "without a token field",
        (Malformation::MissingField | Malformation::TokenInUnexpectedField, true) => "missing field `access_token`",
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_malformed_rotate_answer_is_an_unknown_outcome_that_keeps_the_stored_token_and_quotes_no_secret() {
    let Setup { harness, clock, .. } = setup().await;
    for (name, malformation) in MALFORMATIONS {
        let old = harness.track_access_token(name, TokenOwner::Project("42".into()), in_days(3)).await.unwrap();
        harness.sim.push_fault(FaultTarget::Renewal, Fault::Malformed { answer: malformation });
        let error = retried(force(&harness, name).await, name);
        assert!(error.contains("outcome unknown"), "{name}: GitLab may have rotated: {error}");
        assert!(error.contains(clear_reason(malformation, false)), "{name}: {error}");
        assert_no_secret(&error, name);
        let token = harness.token(name).await.unwrap();
        assert_eq!((token.version, token.recovery.as_deref()), (1, Some("probe")), "{name}");
        assert_no_secret(token.last_error.as_deref().unwrap_or_default(), name);
        assert_eq!(harness.secret(name).await.unwrap().as_deref(), Some(old.as_str()), "{name}: secret unchanged");
    }
    assert_eq!(harness.sim.stats().rotations, 5, "GitLab acted on every request before the answer broke");

    clock.advance(TimeDelta::minutes(1));
    for (name, _) in MALFORMATIONS {
        let RotationOutcome::NeedsAttention { reason, error } = force(&harness, name).await else {
            panic!("{name}: the probe finds the old token rotated away");
        };
        assert_eq!(reason, "rotation_response_lost", "{name}: {error}");
        assert_eq!(harness.token(name).await.unwrap().version, 1, "{name}");
    }
    let stats = harness.sim.stats();
    assert_eq!((stats.rotations, stats.family_revocations), (5, 0), "probed, never rotated again blindly");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_malformed_refresh_answer_is_an_unknown_outcome_and_the_dead_refresh_token_is_never_sent() {
    let Setup { harness, clock, .. } = setup().await;
    for (name, malformation) in MALFORMATIONS {
        harness.track_grant(name).await.unwrap();
        assert!(matches!(force(&harness, name).await, RotationOutcome::Rotated { version: 2, .. }), "{name}");
        let (access, refresh) = (harness.secret(name).await.unwrap(), harness.refresh_token(name).await.unwrap());
        harness.sim.push_fault(FaultTarget::Renewal, Fault::Malformed { answer: malformation });
        let error = retried(force(&harness, name).await, name);
        assert!(error.contains("outcome unknown"), "{name}: the refresh may have happened: {error}");
        assert!(error.contains(clear_reason(malformation, true)), "{name}: {error}");
        assert_no_secret(&error, name);
        let token = harness.token(name).await.unwrap();
        assert_eq!((token.version, token.recovery.as_deref()), (2, Some("retry_once")), "{name}");
        assert_no_secret(token.last_error.as_deref().unwrap_or_default(), name);
        assert_eq!(harness.secret(name).await.unwrap(), access, "{name}: access token unchanged");
        assert_eq!(harness.refresh_token(name).await.unwrap(), refresh, "{name}: refresh token unchanged");
    }

    clock.advance(TimeDelta::minutes(1));
    for (name, _) in MALFORMATIONS {
        let RotationOutcome::NeedsAttention { reason, error } = force(&harness, name).await else {
            panic!("{name}: the probe finds the access token invalidated by the refresh");
        };
        assert_eq!(reason, "grant_lost", "{name}: {error}");
    }
    let stats = harness.sim.stats();
    assert_eq!((stats.refreshes, stats.refresh_token_reuses), (10, 0), "the dead refresh token was never sent");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_malformed_look_up_answer_is_retried_and_never_leads_to_a_blind_rotation() {
    let Setup { harness, clock, .. } = setup().await;
    for (name, malformation) in MALFORMATIONS {
        let old = harness.track_access_token(name, TokenOwner::Personal, in_days(3)).await.unwrap();
        harness.sim.push_fault(FaultTarget::Renewal, Fault::Status { status: 504 });
        retried(force(&harness, name).await, name);
        clock.advance(TimeDelta::minutes(1));
        harness.sim.push_fault(FaultTarget::Lookup, Fault::Malformed { answer: malformation });
        let error = retried(force(&harness, name).await, name);
        assert!(error.starts_with("transient provider error"), "{name}: a look-up changes nothing: {error}");
        assert_no_secret(&error, name);
        assert_eq!(harness.secret(name).await.unwrap().as_deref(), Some(old.as_str()), "{name}");
    }
    assert_eq!(harness.sim.stats().rotations, 0, "no rotation without a readable probe");

    clock.advance(TimeDelta::minutes(10));
    for (name, _) in MALFORMATIONS {
        let outcome = force(&harness, name).await;
        assert!(matches!(outcome, RotationOutcome::Rotated { version: 2, .. }), "{name}: {outcome:?}");
        assert!(harness.sim.accepts(&harness.secret(name).await.unwrap().unwrap()), "{name}");
    }
    assert_eq!(harness.sim.stats().family_revocations, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_ten_megabyte_answer_is_abandoned_after_about_the_one_mebibyte_limit() {
    let Setup { harness, .. } = setup().await;
    harness.track_access_token("big", TokenOwner::Personal, in_days(3)).await.unwrap();
    harness.sim.push_fault(FaultTarget::Renewal, Fault::Malformed { answer: Malformation::Oversize { bytes: TEN_MB } });
    let error = retried(force(&harness, "big").await, "big");
    assert!(error.contains("larger than 1048576 bytes"), "{error}");
    tokio::time::sleep(Duration::from_millis(200)).await;
    let sent = harness.sim.stats().malformed_bytes_sent;
    println!("a {TEN_MB}-byte answer: {sent} bytes sent before the client gave up");
    assert!(sent < 3 * 1024 * 1024, "the client stopped reading at its limit, yet {sent} of {TEN_MB} bytes were sent");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_answer_declaring_more_than_the_limit_is_refused_without_waiting_for_its_body() {
    use tokenwarden::providers::gitlab::{AccessTokenScope, GitlabAccessTokens};
    use tokenwarden::providers::{Credential, ProviderError, TokenProvider, build_http_client};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let server = tokio::spawn(async move {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let (mut socket, _) = listener.accept().await.unwrap();
        let mut request = [0u8; 4096];
        let _ = socket.read(&mut request).await;
        let head = format!("HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {TEN_MB}\r\n\r\n");
        socket.write_all(head.as_bytes()).await.unwrap();
        tokio::time::sleep(Duration::from_secs(30)).await;
    });
    let settings = HttpSettings { timeout: Duration::from_secs(20), connect_timeout: Duration::from_secs(1) };
    let provider = GitlabAccessTokens::new(build_http_client(settings).unwrap(), &url, AccessTokenScope::Personal);
    let credential = Credential {
        secret: Some("glpat-presented".to_owned().into()),
        refresh_token: None,
        requested_expiry: in_days(30),
        requested_at: start_time(),
    };
    let started = std::time::Instant::now();
    let err = provider.renew(&credential).await.unwrap_err();
    assert!(matches!(&err, ProviderError::Unknown { message } if message.contains("larger than")), "{err:?}");
    assert!(started.elapsed() < Duration::from_secs(5), "refused at the header, not after a timeout");
    server.abort();
}
