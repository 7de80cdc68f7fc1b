//! OAuth refresh answers as RFC 6749 allows them, against the simulator on a manual clock: a
//! server that keeps its refresh tokens valid (so a lost answer never loses the grant), and a
//! client refused for its credentials, fixed by `provider update` and retried at once; scope
//! changes recorded in history; answers without `expires_in`.

mod common;

use std::time::Duration;

use chrono::TimeDelta;
use common::engine_setup::{Setup, engine_settings, setup_with};
use secrecy::SecretString;
use tokenwarden::domain::{ClientAuth, ProviderName, TokenName, TokenState};
use tokenwarden::engine::{ForcedRotation, RotationOutcome, rotate_now};
use tokenwarden::simulator::harness::{EngineHarness, GENERIC_PROVIDER};
use tokenwarden::simulator::{Fault, FaultTarget};
use tokenwarden::store::providers::{self, ProviderChanges, ProviderUpdated};
use tokenwarden::store::tokens;

async fn setup() -> Setup {
    setup_with(engine_settings(Duration::from_secs(2))).await
}

async fn force(harness: &EngineHarness, name: &str) -> RotationOutcome {
    let name: TokenName = name.parse().unwrap();
    match rotate_now(&harness.context, &name, "test").await.unwrap() {
        ForcedRotation::Attempted(report) => report.outcome,
        other => panic!("expected an attempt, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_that_keeps_refresh_tokens_is_recorded_as_such_and_a_rotating_one_too() {
    let Setup { harness, .. } = setup().await;
    harness.track_generic_grant("rotating").await.unwrap();
    assert!(matches!(force(&harness, "rotating").await, RotationOutcome::Rotated { version: 2, .. }));
    assert_eq!(harness.token("rotating").await.unwrap().refresh_token_rotates, Some(true));

    harness.sim.set_keep_refresh_tokens(true);
    let refresh = harness.track_generic_grant("keeping").await.unwrap();
    assert_eq!(harness.token("keeping").await.unwrap().refresh_token_rotates, None, "unknown before a refresh");
    assert!(matches!(force(&harness, "keeping").await, RotationOutcome::Rotated { version: 2, .. }));
    let token = harness.token("keeping").await.unwrap();
    assert_eq!(token.refresh_token_rotates, Some(false));
    assert_eq!(harness.refresh_token("keeping").await.unwrap().as_deref(), Some(refresh.as_str()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn at_a_server_that_keeps_refresh_tokens_lost_answers_are_retried_and_never_lose_the_grant() {
    let Setup { harness, clock, .. } = setup().await;
    harness.sim.set_keep_refresh_tokens(true);
    harness.track_generic_grant("keeping").await.unwrap();
    assert!(matches!(force(&harness, "keeping").await, RotationOutcome::Rotated { version: 2, .. }));

    // Two answers in a row lost after the server acted: with a rotating server the second
    // would be `grant_lost`; here the refresh token is still valid, so it is simply retried.
    for _ in 0..2 {
        harness.sim.push_fault(FaultTarget::Renewal, Fault::DropAfterCommit);
        let outcome = force(&harness, "keeping").await;
        assert!(matches!(outcome, RotationOutcome::Retrying { .. }), "{outcome:?}");
        assert_eq!(harness.token("keeping").await.unwrap().recovery, None, "no single-retry bookkeeping");
        clock.advance(TimeDelta::minutes(5));
    }
    let outcome = force(&harness, "keeping").await;
    assert!(matches!(outcome, RotationOutcome::Rotated { version: 3, .. }), "{outcome:?}");
    assert!(harness.sim.accepts(&harness.secret("keeping").await.unwrap().unwrap()));
    assert_eq!(harness.sim.stats().refresh_token_reuses, 0);
}

/// `provider update` of the harness's generic OAuth 2.0 provider, at the engine's time.
async fn update_generic_provider(harness: &EngineHarness, changes: ProviderChanges) -> ProviderUpdated {
    let name: ProviderName = GENERIC_PROVIDER.parse().unwrap();
    let (cipher, now) = (harness.context.cipher.clone(), harness.now());
    let update = move |conn: &mut _| providers::update(conn, &cipher, &name, &changes, "test", now);
    harness.context.store.run(update).await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rejected_client_needs_attention_until_provider_update_fixes_the_secret_and_retries_at_once() {
    let Setup { harness, .. } = setup().await;
    harness.track_generic_grant("grant").await.unwrap();
    assert!(matches!(force(&harness, "grant").await, RotationOutcome::Rotated { version: 2, .. }));
    let new_secret = harness.sim.with_state(|s| s.rotate_application_secret(&harness.client_id)).unwrap();

    let RotationOutcome::NeedsAttention { reason, error } = force(&harness, "grant").await else {
        panic!("expected needs_attention")
    };
    assert_eq!(reason, "client_credentials_rejected");
    assert!(error.contains("--client-auth basic") && error.contains("provider update generic-oauth"), "{error}");
    let token = harness.token("grant").await.unwrap();
    assert_eq!(token.remedy.as_deref(), Some("update_provider"));
    let refreshes = harness.sim.stats().refreshes;

    let changes = ProviderChanges { client_secret: Some(SecretString::from(new_secret)), ..Default::default() };
    let updated = update_generic_provider(&harness, changes).await;
    assert_eq!(updated.released, ["grant"]);
    assert_eq!(updated.provider.client_auth, ClientAuth::Basic);
    let token = harness.token("grant").await.unwrap();
    assert_eq!((token.state, token.attention_reason, token.remedy), (TokenState::Active, None, None));
    assert!(token.next_rotation_at.is_some_and(|at| at <= harness.now()), "due at once");

    assert!(matches!(force(&harness, "grant").await, RotationOutcome::Rotated { version: 3, .. }));
    assert_eq!(harness.sim.stats().refreshes, refreshes + 1, "the refused refresh token was still good");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_provider_update_that_does_not_touch_the_client_leaves_refused_tokens_alone() {
    let Setup { harness, .. } = setup().await;
    harness.track_generic_grant("grant").await.unwrap();
    harness.sim.with_state(|s| s.rotate_application_secret(&harness.client_id)).unwrap();
    assert!(matches!(force(&harness, "grant").await, RotationOutcome::NeedsAttention { .. }));

    let url = format!("{}/oauth/token", harness.sim.url());
    let updated =
        update_generic_provider(&harness, ProviderChanges { token_url: Some(url), ..Default::default() }).await;
    assert!(updated.released.is_empty());
    assert_eq!(harness.token("grant").await.unwrap().state, TokenState::NeedsAttention);
}

async fn history(harness: &EngineHarness, name: &str) -> Vec<(i64, Option<String>)> {
    let name: TokenName = name.parse().unwrap();
    let entries = harness.context.store.run(move |conn| tokens::history(conn, &name)).await.unwrap();
    entries.into_iter().map(|e| (e.version, e.scopes)).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_scope_the_provider_changes_is_recorded_in_history_and_on_the_token() {
    let Setup { harness, .. } = setup().await;
    harness.track_generic_grant("grant").await.unwrap();
    assert!(matches!(force(&harness, "grant").await, RotationOutcome::Rotated { version: 2, .. }));
    assert!(matches!(force(&harness, "grant").await, RotationOutcome::Rotated { version: 3, .. }));
    harness.sim.with_state(|s| s.oauth_scope = Some("api read_user".into()));
    assert!(matches!(force(&harness, "grant").await, RotationOutcome::Rotated { version: 4, .. }));
    assert!(matches!(force(&harness, "grant").await, RotationOutcome::Rotated { version: 5, .. }));

    let scopes = history(&harness, "grant").await;
    let expected = [(1, None), (2, Some("api")), (3, None), (4, Some("api read_user")), (5, None)];
    let expected: Vec<(i64, Option<String>)> = expected.into_iter().map(|(v, s)| (v, s.map(str::to_owned))).collect();
    assert_eq!(scopes, expected, "a scope is recorded when it is first learnt and when it changes");
    assert_eq!(harness.token("grant").await.unwrap().scopes.as_deref(), Some("api read_user"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_answer_without_expires_in_gets_the_configured_assumed_lifetime_and_one_warning() {
    let mut settings = engine_settings(Duration::from_secs(2));
    settings.oauth.assumed_lifetime = Duration::from_secs(15 * 60);
    let Setup { harness, .. } = setup_with(settings).await;
    harness.track_generic_grant("told").await.unwrap();
    assert!(matches!(force(&harness, "told").await, RotationOutcome::Rotated { .. }));
    harness.sim.with_state(|s| s.omit_expires_in = true);
    harness.track_generic_grant("silent").await.unwrap();
    assert!(matches!(force(&harness, "silent").await, RotationOutcome::Rotated { .. }));

    let silent = harness.token("silent").await.unwrap();
    assert_eq!(silent.expires_at, Some(harness.now() + TimeDelta::minutes(15)));
    assert!(silent.next_rotation_at.is_some_and(|at| at < harness.now() + TimeDelta::minutes(15)));
    assert!(!harness.context.first_assumed_lifetime(&silent.id), "the silent provider's token was warned about");
    let told = harness.token("told").await.unwrap();
    assert!(harness.context.first_assumed_lifetime(&told.id), "a token with expires_in was not");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lease_left_by_a_dead_worker_at_a_server_that_keeps_refresh_tokens_is_refreshed_normally() {
    use tokenwarden::store::rotation::{self, ClaimMode, ClaimResult};
    let Setup { harness, clock, .. } = setup().await;
    harness.sim.set_keep_refresh_tokens(true);
    let refresh = harness.track_generic_grant("keeping").await.unwrap();
    assert!(matches!(force(&harness, "keeping").await, RotationOutcome::Rotated { version: 2, .. }));

    // A worker claims, its refresh reaches the server, and it dies before committing.
    let (name, now, lease) = ("keeping".parse::<TokenName>().unwrap(), harness.now(), harness.context.lease());
    let claimed = harness
        .context
        .store
        .run(move |conn| {
            rotation::claim(conn, &name, ClaimMode::Forced { settle: TimeDelta::zero() }, "dead", lease, now)
        })
        .await
        .unwrap();
    assert!(matches!(claimed, ClaimResult::Claimed(_)), "{claimed:?}");
    // (The test learns a client secret to send by rotating it, and gives tokenwarden the new one.)
    let secret = harness.sim.with_state(|s| s.rotate_application_secret(&harness.client_id)).unwrap();
    let client_id = harness.client_id.clone();
    harness.sim.with_state(|s| s.refresh(&client_id, Some(&secret), &refresh, now)).unwrap();
    let changes = ProviderChanges { client_secret: Some(SecretString::from(secret)), ..Default::default() };
    assert!(update_generic_provider(&harness, changes).await.released.is_empty());
    clock.advance(harness.context.lease() + TimeDelta::seconds(1));

    let (name, now, lease) = ("keeping".parse::<TokenName>().unwrap(), harness.now(), harness.context.lease());
    let ClaimResult::Claimed(claim) = harness
        .context
        .store
        .run(move |conn| rotation::claim(conn, &name, ClaimMode::Scheduled, "next", lease, now))
        .await
        .unwrap()
    else {
        panic!("the abandoned lease is claimed again")
    };
    assert_eq!(claim.recovery, None, "no single-retry bookkeeping: the refresh token is still good");
    let report = tokenwarden::engine::protocol::execute(&harness.context, *claim, "test").await;
    assert!(matches!(report.outcome, RotationOutcome::Rotated { version: 3, .. }), "{:?}", report.outcome);
    assert_eq!(harness.sim.stats().refresh_token_reuses, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_provider_stored_before_client_auth_existed_keeps_sending_its_credentials_in_the_form() {
    use diesel::RunQueryDsl;
    let Setup { harness, .. } = setup().await;
    // A row written the way older versions wrote it: no client_auth column given.
    let insert = "INSERT INTO providers (id, name, kind, token_url, client_id, created_at, updated_at) \
                  VALUES ('old-row', 'old', 'oauth2', 'https://old.example/token', 'app', \
                  '2026-11-01 00:00:00', '2026-11-01 00:00:00')";
    let run = move |conn: &mut _| diesel::sql_query(insert).execute(conn).map_err(Into::into);
    harness.context.store.run(run).await.unwrap();
    let name: ProviderName = "old".parse().unwrap();
    let old = harness.context.store.run(move |conn| providers::find(conn, &name)).await.unwrap();
    assert_eq!(old.client_auth, ClientAuth::Post);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_that_accepts_only_basic_refreshes_an_oauth2_grant_and_refuses_a_form_body_client() {
    let Setup { harness, .. } = setup().await;
    harness.sim.with_state(|s| s.require_basic_auth = true);
    harness.track_generic_grant("standard").await.unwrap();
    assert!(matches!(force(&harness, "standard").await, RotationOutcome::Rotated { version: 2, .. }));

    // The GitLab provider keeps sending the form body, which this server refuses.
    harness.track_grant("gitlab").await.unwrap();
    let RotationOutcome::NeedsAttention { reason, error } = force(&harness, "gitlab").await else {
        panic!("expected a refusal")
    };
    assert_eq!(reason, "client_credentials_rejected");
    assert!(error.contains("--client-auth post"), "{error}");
}
