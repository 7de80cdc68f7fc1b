//! A provider that fails a third of the time: 20 % of renewals answered 5xx, 10 % rate-limited
//! with `Retry-After`, 5 % held past the client's timeout (and then not acted on). On the real
//! clock, OAuth grants whose access tokens live 24 s are refreshed over and over, and GitLab
//! tokens that are due at once are rotated: every token is renewed before its secret expires, no
//! request reaches the provider before the time its `Retry-After` named, and nothing is lost.

use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::{Days, Utc};
use secrecy::SecretString;
use tokenwarden::config::HumanDuration;
use tokenwarden::domain::{PolicyOverrides, ProviderName, TokenKind, TokenName, TokenState};
use tokenwarden::engine::backoff::Backoff;
use tokenwarden::engine::{EngineSettings, Limits, Scheduler, SystemClock};
use tokenwarden::providers::HttpSettings;
use tokenwarden::simulator::harness::{EngineHarness, PROVIDER};
use tokenwarden::simulator::{FaultRates, TokenOwner};
use tokenwarden::store::tokens::{self, NewToken};

/// OAuth grants refreshed again and again.
const GRANTS: usize = 12;
/// GitLab tokens, due at once.
const GITLAB_TOKENS: usize = 8;
/// How long each access token the simulator issues lives.
const ACCESS_LIFETIME: Duration = Duration::from_secs(24);
/// How long the engine runs against the failing provider.
const RUN: Duration = Duration::from_secs(40);

fn settings() -> EngineSettings {
    EngineSettings {
        http: HttpSettings { timeout: Duration::from_millis(400), connect_timeout: Duration::from_millis(400) },
        backoff: Backoff { base: Duration::from_millis(500), max: Duration::from_secs(4) },
        oauth: Default::default(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn through_5xx_rate_limits_and_stalls_every_token_is_renewed_before_it_expires() {
    let dir = tempfile::tempdir().unwrap();
    let harness = EngineHarness::start(dir.path(), Arc::new(SystemClock), settings()).await.unwrap();
    harness.sim.set_expires_in(ACCESS_LIFETIME);
    // Grants renewed 12 s before their access token expires (half its life), each due at once.
    let policy = PolicyOverrides {
        lifetime: None,
        rotate_before: Some(HumanDuration::new(Duration::from_secs(12))),
        rotate_at_fraction: Some(0.5),
    };
    for i in 0..GRANTS {
        let refresh = harness.sim.create_grant(&harness.client_id);
        let grant = NewToken {
            name: TokenName::new(format!("grant-{i:02}")).unwrap(),
            provider: ProviderName::new(PROVIDER).unwrap(),
            kind: TokenKind::GitlabOauth,
            resource: None,
            secret: None,
            refresh_token: Some(SecretString::from(refresh)),
            policy,
            external_id: None,
            issued_at: None,
            expires_at: None,
            next_rotation_at: Some(Utc::now()),
            scopes: None,
        };
        let (cipher, now) = (harness.context.cipher.clone(), Utc::now());
        harness.context.store.run(move |conn| tokens::insert(conn, &cipher, &grant, "test", now)).await.unwrap();
    }
    let (stop, stopped) = tokio::sync::watch::channel(false);
    // One request at a time to the provider: every request after a 429 was sent knowing its
    // `Retry-After`, so any that arrives early is the engine's fault.
    let limits = Limits { max_concurrency: 8, per_provider: 1 };
    tokio::spawn(Scheduler::new(harness.context.clone(), limits).run(stopped));
    // Each grant's first refresh runs before the faults start, as in production a grant is
    // refreshed when it is added: from then on it holds an access token, so a lost answer can be
    // resolved by asking GitLab about it. (A first refresh lost twice in a row, with no access
    // token to ask about, is `grant_lost` by design: see src/engine/protocol.rs.)
    let warm = Instant::now();
    while harness.context.store.run(tokens::list).await.unwrap().iter().any(|token| token.version < 2) {
        assert!(warm.elapsed() < Duration::from_secs(20), "the grants' first refreshes did not finish");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let expires_soon = Utc::now().date_naive() + Days::new(2);
    for i in 0..GITLAB_TOKENS {
        harness.track_access_token(&format!("gitlab-{i}"), TokenOwner::Personal, expires_soon).await.unwrap();
    }
    harness.sim.set_rates(FaultRates {
        server_error: 0.2,
        rate_limited: 0.1,
        retry_after_seconds: 2,
        stall: 0.05,
        stall_ms: 600,
        ..FaultRates::default()
    });

    let started = Instant::now();
    let mut expired_seen = Vec::new();
    while started.elapsed() < RUN {
        let now = Utc::now();
        for token in harness.context.store.run(tokens::list).await.unwrap() {
            let live = matches!(token.state, TokenState::Active | TokenState::Retrying | TokenState::Rotating);
            if live && token.expires_at.is_some_and(|at| at <= now) {
                expired_seen
                    .push(format!("{} expired at {:?} (seen {now}, {:?})", token.name, token.expires_at, token.state));
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    stop.send(true).unwrap();

    let stats = harness.sim.stats();
    eprintln!("after {RUN:?}: {stats:?}");
    assert!(expired_seen.is_empty(), "secrets expired while renewals were still possible: {expired_seen:#?}");
    assert_eq!(stats.retry_after_violations, 0, "a request reached the provider before its Retry-After: {stats:?}");
    assert_eq!((stats.refresh_token_reuses, stats.family_revocations), (0, 0), "{stats:?}");
    assert!(stats.faults_injected >= 8, "the provider failed often (about a third of some 60 renewals): {stats:?}");
    let mut lost_by_design = Vec::new();
    for token in harness.context.store.run(tokens::list).await.unwrap() {
        // The access tokens here live 24 s, less than the 30 s a probe needs (PROBE_MARGIN), so a
        // refresh whose outcome is unknown (a stall) is followed by the single blind retry, and a
        // stall of that retry too makes the grant `grant_lost` by design (src/engine/protocol.rs):
        // explained, bounded below, never a reused refresh token (asserted above).
        let single_retry_lost = token.attention_reason.as_deref() == Some("grant_lost")
            && token.last_error.as_deref().is_some_and(|e| e.contains("had an unknown outcome too"));
        if single_retry_lost {
            lost_by_design.push(token.name.to_string());
            continue;
        }
        // Grants: the refresh before the faults and at least one under them (two or three on a
        // quiet machine; the simulator's stats above count them all).
        let renewed = if token.kind == TokenKind::GitlabOauth { 3 } else { 2 };
        assert!(
            token.version >= renewed
                && matches!(token.state, TokenState::Active | TokenState::Retrying | TokenState::Rotating),
            "{} was not kept alive: {token:?}",
            token.name
        );
        let secret = harness.secret(token.name.as_str()).await.unwrap().unwrap();
        assert!(harness.sim.accepts(&secret), "{}: the stored secret does not work", token.name);
    }
    eprintln!("grants lost to two unknown outcomes in a row (by design): {lost_by_design:?}");
    assert!(lost_by_design.len() <= GRANTS / 4, "too many grants lost to two stalls in a row: {lost_by_design:?}");
}
