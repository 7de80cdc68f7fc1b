//! The rotation engine against the GitLab simulator, on a manual clock: tokens rotate on
//! time, and every failure class ends where the protocol says — without ever costing a
//! token family or presenting a dead refresh token twice.

mod common;

use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Days, NaiveDate, TimeDelta, Utc};
use common::engine_setup::{Setup, engine_settings, setup_with, start_time};
use tokenwarden::config::{HumanDuration, MaintenanceConfig, PolicyDefaults};
use tokenwarden::domain::{Policy, TokenName, TokenState};
use tokenwarden::engine::maintenance::{MaintenanceContext, plan_under};
use tokenwarden::engine::policy::plan_rotation;
use tokenwarden::engine::{
    EngineContext, EngineSettings, ForcedRotation, Limits, RotationOutcome, Scheduler, rotate_now,
};
use tokenwarden::providers::gitlab::expiry_instant;
use tokenwarden::simulator::harness::EngineHarness;
use tokenwarden::simulator::{Fault, FaultRates, FaultTarget, TokenOwner};
use tokenwarden::store::models::Token;
use tokenwarden::store::tokens;

/// The engine settings of these tests: provider requests time out after 2 s.
fn settings() -> EngineSettings {
    engine_settings(Duration::from_secs(2))
}

async fn setup() -> Setup {
    setup_with(settings()).await
}

fn in_days(days: u64) -> NaiveDate {
    start_time().date_naive() + Days::new(days)
}

fn token_name(name: &str) -> TokenName {
    name.parse().unwrap()
}

/// Starts the scheduler; stops it when the returned sender is dropped.
fn run_scheduler(context: Arc<EngineContext>) -> tokio::sync::watch::Sender<bool> {
    let (stop, stopped) = tokio::sync::watch::channel(false);
    tokio::spawn(Scheduler::new(context, Limits::default()).run(stopped));
    stop
}

/// Polls (in real time, briefly) until the token satisfies `done`.
async fn wait_for(harness: &EngineHarness, name: &str, done: impl Fn(&Token) -> bool) -> Token {
    for _ in 0..500 {
        let token = harness.token(name).await.unwrap();
        if done(&token) {
            return token;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("token {name} never reached the expected state: {:?}", harness.token(name).await.unwrap());
}

/// Lets in-flight work run, to show that nothing happens.
async fn settle_briefly() {
    tokio::time::sleep(Duration::from_millis(300)).await;
}

async fn force(harness: &EngineHarness, name: &str) -> RotationOutcome {
    match rotate_now(&harness.context, &token_name(name), "test").await.unwrap() {
        ForcedRotation::Attempted(report) => report.outcome,
        other => panic!("expected an attempt, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_token_kind_rotates_on_time_and_only_the_new_secret_works() {
    let Setup { harness, clock, .. } = setup().await;
    let owners = [
        ("project", TokenOwner::Project("42".into())),
        ("group", TokenOwner::Group("tools".into())),
        ("personal", TokenOwner::Personal),
    ];
    let mut old_secrets = Vec::new();
    for (name, owner) in owners {
        old_secrets.push(harness.track_access_token(name, owner, in_days(20)).await.unwrap());
    }
    let _stop = run_scheduler(harness.context.clone());
    settle_briefly().await;
    assert_eq!(harness.sim.stats().rotations, 0, "nothing is due yet");

    let planned = harness.token("project").await.unwrap().next_rotation_at.unwrap();
    assert!(planned <= expiry_instant(in_days(20)) - TimeDelta::days(7), "never later than the margin");
    clock.set(planned - TimeDelta::minutes(1));
    settle_briefly().await;
    assert_eq!(harness.token("project").await.unwrap().version, 1, "a minute early is too early");

    clock.advance(TimeDelta::hours(2));
    for (index, name) in ["project", "group", "personal"].into_iter().enumerate() {
        let token = wait_for(&harness, name, |t| t.version == 2).await;
        assert_eq!(token.state, TokenState::Active);
        let new_secret = harness.secret(name).await.unwrap().unwrap();
        assert!(harness.sim.accepts(&new_secret), "{name}: the new secret works");
        assert!(!harness.sim.accepts(&old_secrets[index]), "{name}: the old secret is revoked");
        let rotated_on = token.last_success_at.unwrap().date_naive();
        let expected_expiry = expiry_instant(rotated_on + Days::new(30));
        assert_eq!(token.expires_at, Some(expected_expiry), "{name}: rotated to the 30-day default lifetime");
        assert!(token.next_rotation_at.unwrap() > token.last_success_at.unwrap(), "{name}: the next one is planned");
        let history = history(&harness, name).await;
        assert_eq!(history, vec![(1, "harness".to_owned()), (2, "scheduler".to_owned())]);
    }
    assert_eq!(harness.sim.stats().rotations, 3);
    assert_eq!(harness.sim.stats().family_revocations, 0);
    let agents = harness.sim.with_state(|s| s.user_agents.clone());
    let expected = format!("tokenwarden/{}", env!("CARGO_PKG_VERSION"));
    assert_eq!(agents.into_iter().collect::<Vec<_>>(), vec![expected], "every call names tokenwarden and its version");
}

async fn history(harness: &EngineHarness, name: &str) -> Vec<(i64, String)> {
    let name = token_name(name);
    let entries = harness.context.store.run(move |conn| tokens::history(conn, &name)).await.unwrap();
    entries.into_iter().map(|e| (e.version, e.actor)).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_oauth_grant_is_refreshed_at_once_and_again_before_its_access_token_expires() {
    let Setup { harness, clock, .. } = setup().await;
    harness.sim.set_expires_in(Duration::from_secs(7200));
    let first_refresh = harness.track_grant("grant").await.unwrap();
    let _stop = run_scheduler(harness.context.clone());

    let token = wait_for(&harness, "grant", |t| t.version == 2).await;
    assert_eq!(token.expires_at, Some(start_time() + TimeDelta::hours(2)));
    let planned = token.next_rotation_at.unwrap();
    assert!(planned <= start_time() + TimeDelta::hours(2) - TimeDelta::minutes(5));
    assert!(!harness.sim.with_state(|s| s.refresh_token_is_live(&first_refresh)));
    let access = harness.secret("grant").await.unwrap().unwrap();
    assert!(harness.sim.accepts(&access));

    clock.set(planned);
    wait_for(&harness, "grant", |t| t.version == 3).await;
    let new_access = harness.secret("grant").await.unwrap().unwrap();
    assert!(harness.sim.accepts(&new_access) && !harness.sim.accepts(&access), "only the new access token works");
    let refresh = harness.refresh_token("grant").await.unwrap().unwrap();
    assert!(harness.sim.with_state(|s| s.refresh_token_is_live(&refresh)), "the stored refresh token is the live one");
    assert_eq!(harness.sim.stats().refreshes, 2);
    assert_eq!(harness.sim.stats().refresh_token_reuses, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rate_limit_is_retried_no_sooner_than_retry_after() {
    let Setup { harness, clock, .. } = setup().await;
    harness.track_grant("grant").await.unwrap();
    harness.sim.push_fault(FaultTarget::Renewal, Fault::RateLimited { retry_after_seconds: 120 });

    let outcome = force(&harness, "grant").await;
    let RotationOutcome::Retrying { next_attempt_at, .. } = outcome else { panic!("expected a retry: {outcome:?}") };
    assert!(next_attempt_at >= start_time() + TimeDelta::seconds(120), "{next_attempt_at}");
    let token = harness.token("grant").await.unwrap();
    assert_eq!((token.state, token.attempt_count), (TokenState::Retrying, 1));

    let _stop = run_scheduler(harness.context.clone());
    clock.advance(TimeDelta::seconds(119));
    settle_briefly().await;
    assert_eq!(harness.sim.stats().refreshes, 0, "no request before Retry-After ran out");
    clock.set(next_attempt_at);
    let token = wait_for(&harness, "grant", |t| t.version == 2).await;
    assert_eq!((token.state, token.attempt_count), (TokenState::Active, 0));
    assert_eq!(harness.sim.stats().retry_after_violations, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_errors_back_off_exponentially_and_never_cost_the_grant() {
    let Setup { harness, clock, .. } = setup().await;
    let refresh_token = harness.track_grant("grant").await.unwrap();
    for _ in 0..3 {
        harness.sim.push_fault(FaultTarget::Renewal, Fault::Status { status: 502 });
    }
    let _stop = run_scheduler(harness.context.clone());
    for attempt in 1..=3 {
        let token =
            wait_for(&harness, "grant", |t| t.attempt_count == attempt && t.state == TokenState::Retrying).await;
        assert!(harness.sim.with_state(|s| s.refresh_token_is_live(&refresh_token)), "a 502 did not use the grant");
        let wait = token.next_rotation_at.unwrap() - token.last_failure_at.unwrap();
        let ceiling = TimeDelta::seconds(10 * (1 << (attempt - 1)));
        assert!(wait >= TimeDelta::seconds(1) && wait <= ceiling, "attempt {attempt}: waited {wait}");
        clock.set(token.next_rotation_at.unwrap());
    }
    let token = wait_for(&harness, "grant", |t| t.version == 2).await;
    assert_eq!(token.state, TokenState::Active);
    assert_eq!(harness.sim.stats().refresh_token_reuses, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn permanent_failures_need_attention_and_are_never_retried() {
    let Setup { harness, clock, .. } = setup().await;
    let secret = harness.track_access_token("revoked", TokenOwner::Personal, in_days(3)).await.unwrap();
    harness.sim.with_state(|s| s.revoke(&secret));
    let refresh = harness.track_grant("grant").await.unwrap();
    harness.sim.with_state(|s| s.revoke_refresh_token(&refresh));

    let _stop = run_scheduler(harness.context.clone());
    let token = wait_for(&harness, "revoked", |t| t.state == TokenState::NeedsAttention).await;
    assert_eq!(token.attention_reason.as_deref(), Some("revoked"));
    let grant = wait_for(&harness, "grant", |t| t.state == TokenState::NeedsAttention).await;
    assert_eq!(grant.attention_reason.as_deref(), Some("invalid_grant"));
    let before = harness.sim.stats();
    clock.advance(TimeDelta::days(2));
    settle_briefly().await;
    let after = harness.sim.stats();
    assert_eq!((after.lookups, after.rotations, after.refreshes), (before.lookups, 0, 0), "never retried");
    assert_eq!(harness.sim.stats().refresh_token_reuses, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_gitlab_rotation_answer_needs_attention_without_revoking_the_family() {
    let Setup { harness, clock, .. } = setup().await;
    harness.track_access_token("project", TokenOwner::Project("42".into()), in_days(3)).await.unwrap();
    harness.sim.push_fault(FaultTarget::Renewal, Fault::DropAfterCommit);

    let outcome = force(&harness, "project").await;
    assert!(matches!(outcome, RotationOutcome::Retrying { .. }), "an unknown outcome waits for a probe: {outcome:?}");
    assert_eq!(harness.token("project").await.unwrap().recovery.as_deref(), Some("probe"));
    clock.advance(TimeDelta::minutes(1));
    let _stop = run_scheduler(harness.context.clone());
    let token = wait_for(&harness, "project", |t| t.state == TokenState::NeedsAttention).await;
    assert_eq!(token.attention_reason.as_deref(), Some("rotation_response_lost"));
    let stats = harness.sim.stats();
    assert_eq!((stats.rotations, stats.family_revocations), (1, 0), "probed, never rotated again");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unknown_outcome_where_gitlab_did_not_act_is_rotated_after_the_probe() {
    let Setup { harness, clock, .. } = setup().await;
    harness.track_access_token("project", TokenOwner::Project("42".into()), in_days(3)).await.unwrap();
    harness.sim.push_fault(FaultTarget::Renewal, Fault::Status { status: 504 });

    let outcome = force(&harness, "project").await;
    assert!(matches!(outcome, RotationOutcome::Retrying { .. }), "{outcome:?}");
    clock.advance(TimeDelta::minutes(1));
    let _stop = run_scheduler(harness.context.clone());
    let token = wait_for(&harness, "project", |t| t.version == 2).await;
    assert_eq!(token.state, TokenState::Active);
    assert!(harness.sim.accepts(&harness.secret("project").await.unwrap().unwrap()));
    assert_eq!(harness.sim.stats().family_revocations, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_an_access_token_to_probe_a_lost_oauth_answer_gets_exactly_one_retry() {
    let Setup { harness, clock, .. } = setup().await;
    harness.track_grant("grant").await.unwrap();
    harness.sim.push_fault(FaultTarget::Renewal, Fault::DropAfterCommit);

    let outcome = force(&harness, "grant").await;
    assert!(matches!(outcome, RotationOutcome::Retrying { .. }), "{outcome:?}");
    clock.advance(TimeDelta::minutes(1));
    let _stop = run_scheduler(harness.context.clone());
    let token = wait_for(&harness, "grant", |t| t.state == TokenState::NeedsAttention).await;
    assert_eq!(token.attention_reason.as_deref(), Some("grant_lost"));
    clock.advance(TimeDelta::days(1));
    settle_briefly().await;
    let stats = harness.sim.stats();
    assert_eq!(stats.refreshes, 1, "the first refresh went through at the provider");
    assert_eq!(stats.refresh_token_reuses, 1, "the dead refresh token was sent exactly once more");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_oauth_answer_past_the_timeout_gets_one_retry_and_a_clear_reason() {
    let Setup { harness, clock, .. } = setup().await;
    harness.track_grant("grant").await.unwrap();
    harness.sim.push_fault(FaultTarget::Renewal, Fault::SlowAfterCommit { delay_ms: 3_000 });
    let outcome = force(&harness, "grant").await;
    let RotationOutcome::Retrying { error, .. } = outcome else { panic!("expected a retry: {outcome:?}") };
    assert!(error.contains("outcome unknown"), "{error}");
    clock.advance(TimeDelta::minutes(1));
    let outcome = force(&harness, "grant").await;
    let RotationOutcome::NeedsAttention { reason, .. } = outcome else { panic!("{outcome:?}") };
    assert_eq!(reason, "grant_lost");
    assert_eq!(harness.sim.stats().refresh_token_reuses, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lease_left_by_a_dead_worker_is_resolved_by_probing_never_by_rotating_blindly() {
    let Setup { harness, clock, .. } = setup().await;
    let rotated_away = harness.track_access_token("answered", TokenOwner::Personal, in_days(3)).await.unwrap();
    harness.track_access_token("untouched", TokenOwner::Personal, in_days(3)).await.unwrap();
    for name in ["answered", "untouched"] {
        claim_as_a_worker_that_dies(&harness, name).await;
    }
    // The dead worker's rotation of `answered` reached GitLab; its answer died with it.
    let now = harness.now();
    harness.sim.with_state(|s| s.rotate(&rotated_away, &TokenOwner::Personal, None, now)).unwrap();

    clock.advance(harness.context.lease() + TimeDelta::seconds(1));
    let _stop = run_scheduler(harness.context.clone());
    let answered = wait_for(&harness, "answered", |t| t.state == TokenState::NeedsAttention).await;
    assert_eq!(answered.attention_reason.as_deref(), Some("rotation_response_lost"));
    let untouched = wait_for(&harness, "untouched", |t| t.version == 2).await;
    assert_eq!(untouched.state, TokenState::Active);
    assert_eq!(harness.sim.stats().family_revocations, 0);
}

async fn claim_as_a_worker_that_dies(harness: &EngineHarness, name: &str) {
    use tokenwarden::store::rotation::{self, ClaimMode, ClaimResult};
    let (name, now, lease) = (token_name(name), harness.now(), harness.context.lease());
    let result = harness
        .context
        .store
        .run(move |conn| {
            rotation::claim(conn, &name, ClaimMode::Forced { settle: TimeDelta::zero() }, "dead-worker", lease, now)
        })
        .await
        .unwrap();
    assert!(matches!(result, ClaimResult::Claimed(_)), "{result:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_schedulers_and_a_forced_rotation_never_call_the_provider_twice_for_one_rotation() {
    let Setup { harness, .. } = setup().await;
    harness.sim.set_rates(FaultRates { latency_ms: 100, ..FaultRates::default() });
    for index in 0..20 {
        harness.track_access_token(&format!("t{index}"), TokenOwner::Personal, in_days(3)).await.unwrap();
    }
    let other = EngineContext::new(
        harness.context.store.clone(),
        harness.context.cipher.clone(),
        harness.context.clock.clone(),
        harness.context.policy,
        settings(),
        "second",
    )
    .unwrap();
    let forced = {
        let context = harness.context.clone();
        tokio::spawn(async move { rotate_now(&context, &token_name("t0"), "operator").await })
    };
    let _first = run_scheduler(harness.context.clone());
    let _second = run_scheduler(Arc::new(other));
    for index in 0..20 {
        wait_for(&harness, &format!("t{index}"), |t| t.version == 2).await;
    }
    let forced = forced.await.unwrap().unwrap();
    assert!(
        matches!(forced, ForcedRotation::Attempted(_) | ForcedRotation::CompletedElsewhere { version: 2, .. }),
        "{forced:?}"
    );
    settle_briefly().await;
    let stats = harness.sim.stats();
    assert_eq!(stats.rotations, 20, "one provider call per due rotation");
    assert_eq!(stats.family_revocations, 0);
    for index in 0..20 {
        assert_eq!(harness.token(&format!("t{index}")).await.unwrap().version, 2);
    }
}

/// A grant refreshed once, so it holds an access token a probe can ask about.
async fn refreshed_grant(harness: &EngineHarness, name: &str) {
    harness.track_grant(name).await.unwrap();
    assert!(matches!(force(harness, name).await, RotationOutcome::Rotated { version: 2, .. }));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_oauth_answer_is_detected_by_probing_so_the_dead_refresh_token_is_never_sent() {
    let Setup { harness, clock, .. } = setup().await;
    refreshed_grant(&harness, "grant").await;
    harness.sim.push_fault(FaultTarget::Renewal, Fault::DropAfterCommit);
    assert!(matches!(force(&harness, "grant").await, RotationOutcome::Retrying { .. }));

    clock.advance(TimeDelta::minutes(1));
    let outcome = force(&harness, "grant").await;
    let RotationOutcome::NeedsAttention { reason, error } = outcome else { panic!("{outcome:?}") };
    assert_eq!(reason, "grant_lost");
    assert!(error.contains("not sent again"), "{error}");
    let stats = harness.sim.stats();
    assert_eq!((stats.refreshes, stats.refresh_token_reuses), (2, 0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unknown_oauth_outcome_where_the_provider_did_not_act_is_refreshed_after_the_probe() {
    let Setup { harness, clock, .. } = setup().await;
    refreshed_grant(&harness, "grant").await;
    harness.sim.push_fault(FaultTarget::Renewal, Fault::Status { status: 504 });
    assert!(matches!(force(&harness, "grant").await, RotationOutcome::Retrying { .. }));

    clock.advance(TimeDelta::minutes(1));
    assert!(matches!(force(&harness, "grant").await, RotationOutcome::Rotated { version: 3, .. }));
    let access = harness.secret("grant").await.unwrap().unwrap();
    assert!(harness.sim.accepts(&access));
    assert_eq!(harness.sim.stats().refresh_token_reuses, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_that_died_during_the_single_oauth_retry_leaves_the_grant_lost_without_a_third_send() {
    use tokenwarden::domain::Recovery;
    use tokenwarden::store::rotation::{self, ClaimMode, ClaimResult};
    let Setup { harness, clock, .. } = setup().await;
    harness.track_grant("grant").await.unwrap();
    harness.sim.push_fault(FaultTarget::Renewal, Fault::DropAfterCommit);
    assert!(matches!(force(&harness, "grant").await, RotationOutcome::Retrying { .. }));
    clock.advance(TimeDelta::minutes(1));

    let (name, now, lease) = (token_name("grant"), harness.now(), harness.context.lease());
    harness
        .context
        .store
        .run(move |conn| {
            let ClaimResult::Claimed(claim) = rotation::claim(conn, &name, ClaimMode::Scheduled, "dead", lease, now)?
            else {
                panic!("the retry is due");
            };
            assert_eq!(claim.recovery, Some(Recovery::RetryOnce));
            rotation::mark_recovery(conn, &claim.lease(), Some(Recovery::RetryInFlight), now)
        })
        .await
        .unwrap();
    clock.advance(harness.context.lease() + TimeDelta::seconds(1));
    let _stop = run_scheduler(harness.context.clone());
    let token = wait_for(&harness, "grant", |t| t.state == TokenState::NeedsAttention).await;
    assert_eq!(token.attention_reason.as_deref(), Some("grant_lost"));
    let stats = harness.sim.stats();
    assert_eq!((stats.refreshes, stats.refresh_token_reuses), (1, 0), "the dead refresh token was not sent again");
}

const EVERY_SECOND: &str = "* * * * * *";

fn maintenance_context(harness: &EngineHarness) -> tokenwarden::engine::maintenance::MaintenanceContext {
    tokenwarden::engine::maintenance::MaintenanceContext {
        engine: harness.context.clone(),
        scheduler: Scheduler::new(harness.context.clone(), Limits::default()).handle(),
        deliveries: None,
        audit_retention: TimeDelta::days(30),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_validation_sweep_flags_a_token_revoked_outside_tokenwarden_without_rotating_it() {
    use tokenwarden::engine::maintenance;
    let Setup { harness, .. } = setup().await;
    subscribe_operator(&harness).await;
    let revoked = harness.track_access_token("revoked", TokenOwner::Project("42".into()), in_days(60)).await.unwrap();
    harness.track_access_token("fine", TokenOwner::Personal, in_days(60)).await.unwrap();
    harness.sim.with_state(|state| state.revoke(&revoked));
    let config = MaintenanceConfig { validate: EVERY_SECOND.into(), ..MaintenanceConfig::default() };
    let mut jobs = maintenance::start(&config, maintenance_context(&harness)).await.unwrap();

    let token = wait_for(&harness, "revoked", |t| t.state == TokenState::NeedsAttention).await;
    assert_eq!(token.attention_reason.as_deref(), Some("revoked"));
    assert!(token.last_error.unwrap().contains("validation sweep"));
    assert_eq!(queued_events(&harness, "revoked").await, vec!["token.needs_attention".to_owned()]);
    // The sweep checks both tokens at once: the other look-up may still be on its way when the
    // revoked one is flagged.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while harness.sim.stats().lookups < 2 {
        assert!(std::time::Instant::now() < deadline, "both tokens were looked up");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    jobs.shutdown().await.unwrap();
    assert_eq!(harness.token("fine").await.unwrap().state, TokenState::Active);
    let stats = harness.sim.stats();
    assert_eq!((stats.rotations, stats.family_revocations), (0, 0), "validation never rotates");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pruning_deletes_audit_rows_past_their_retention_only() {
    use tokenwarden::engine::maintenance;
    let Setup { harness, clock, .. } = setup().await;
    harness.track_access_token("old", TokenOwner::Personal, in_days(60)).await.unwrap();
    clock.advance(TimeDelta::days(31));
    harness.track_access_token("new", TokenOwner::Personal, in_days(90)).await.unwrap();
    maintenance::prune(&maintenance_context(&harness)).await;
    let rows = harness.context.store.run(|conn| tokenwarden::store::audit::list(conn, None)).await.unwrap();
    let targets: Vec<&str> = rows.iter().map(|row| row.target_name.as_str()).collect();
    assert!(targets.contains(&"new") && !targets.contains(&"old"), "{targets:?}");
}

/// Subscribes an operator client with a webhook, so events are queued in the outbox.
async fn subscribe_operator(harness: &EngineHarness) {
    use tokenwarden::domain::ClientRole;
    use tokenwarden::store::clients::{self, NewClient};
    let new = NewClient {
        name: "ops".parse().unwrap(),
        role: ClientRole::Operator,
        grants: Vec::new(),
        webhook_url: Some("http://127.0.0.1:9/hook".to_owned()),
    };
    let (cipher, now) = (harness.context.cipher.clone(), harness.now());
    let secret = Some(secrecy::SecretString::from("whsec_test"));
    harness.context.store.run(move |conn| clients::insert(conn, &cipher, &new, secret, "test", now)).await.unwrap();
}

async fn queued_events(harness: &EngineHarness, name: &str) -> Vec<String> {
    let name = name.to_owned();
    let pending = harness
        .context
        .store
        .run(move |conn| tokenwarden::store::outbox::pending_for_token(conn, &name))
        .await
        .unwrap();
    pending.into_iter().map(|(event, _)| event).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cron_sweep_marks_a_token_that_expired_while_failing_and_tells_subscribers() {
    use tokenwarden::engine::maintenance;
    let Setup { harness, clock, .. } = setup().await;
    subscribe_operator(&harness).await;
    harness.track_access_token("failing", TokenOwner::Personal, in_days(1)).await.unwrap();
    harness.sim.set_rates(FaultRates { server_error: 1.0, ..FaultRates::default() });
    assert!(matches!(force(&harness, "failing").await, RotationOutcome::Retrying { .. }));
    let config = MaintenanceConfig { sweep: EVERY_SECOND.into(), ..MaintenanceConfig::default() };
    let mut jobs = maintenance::start(&config, maintenance_context(&harness)).await.unwrap();
    assert_eq!(harness.token("failing").await.unwrap().state, TokenState::Retrying, "not expired yet");

    clock.set(expiry_instant(in_days(1)));
    let token = wait_for(&harness, "failing", |t| t.state == TokenState::Expired).await;
    assert_eq!(token.next_rotation_at, None);
    assert_eq!(queued_events(&harness, "failing").await.last().map(String::as_str), Some("token.needs_attention"));
    jobs.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rotation_and_its_webhook_delivery_are_committed_together() {
    let Setup { harness, .. } = setup().await;
    subscribe_operator(&harness).await;
    harness.track_access_token("t", TokenOwner::Personal, in_days(3)).await.unwrap();
    assert!(queued_events(&harness, "t").await.is_empty());
    assert!(matches!(force(&harness, "t").await, RotationOutcome::Rotated { version: 2, .. }));
    assert_eq!(queued_events(&harness, "t").await, vec!["token.rotated".to_owned()]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_generic_oauth2_grant_is_refreshed_at_its_token_url_and_only_the_new_access_token_works() {
    let Setup { harness, clock, .. } = setup().await;
    let first_refresh = harness.track_generic_grant("generic").await.unwrap();
    let _stop = run_scheduler(harness.context.clone());

    let token = wait_for(&harness, "generic", |t| t.version == 2).await;
    assert_eq!(token.kind.as_str(), "oauth2");
    assert!(!harness.sim.with_state(|s| s.refresh_token_is_live(&first_refresh)), "the used refresh token is spent");
    let access = harness.secret("generic").await.unwrap().unwrap();
    assert!(harness.sim.accepts(&access));

    clock.set(token.next_rotation_at.unwrap());
    wait_for(&harness, "generic", |t| t.version == 3).await;
    assert!(!harness.sim.accepts(&access), "the old access token no longer works");
    assert!(harness.sim.accepts(&harness.secret("generic").await.unwrap().unwrap()));
    let refresh = harness.refresh_token("generic").await.unwrap().unwrap();
    assert!(harness.sim.with_state(|s| s.refresh_token_is_live(&refresh)), "the stored refresh token is the live one");
    assert_eq!(history(&harness, "generic").await.len(), 3, "added, then two refreshes");
    assert_eq!(harness.sim.stats().refresh_token_reuses, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_provider_that_answers_without_a_refresh_token_leaves_the_stored_one_in_place() {
    let Setup { harness, .. } = setup().await;
    harness.sim.set_keep_refresh_tokens(true);
    let refresh = harness.track_generic_grant("generic").await.unwrap();

    assert!(matches!(force(&harness, "generic").await, RotationOutcome::Rotated { version: 2, .. }));
    assert!(matches!(force(&harness, "generic").await, RotationOutcome::Rotated { version: 3, .. }));
    assert_eq!(harness.refresh_token("generic").await.unwrap().as_deref(), Some(refresh.as_str()));
    assert!(harness.sim.accepts(&harness.secret("generic").await.unwrap().unwrap()));
    assert_eq!(harness.sim.stats().refreshes, 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_first_gitlab_rotation_sends_the_rotate_request_alone_without_a_probe() {
    let Setup { harness, .. } = setup().await;
    harness.track_access_token("personal", TokenOwner::Personal, in_days(3)).await.unwrap();

    assert!(matches!(force(&harness, "personal").await, RotationOutcome::Rotated { version: 2, .. }));
    let stats = harness.sim.stats();
    assert_eq!((stats.lookups, stats.rotations), (0, 1), "one request per rotation: {stats:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gitlab_server_error_makes_the_next_attempt_probe_before_rotating() {
    let Setup { harness, clock, .. } = setup().await;
    harness.track_access_token("project", TokenOwner::Project("42".into()), in_days(3)).await.unwrap();
    harness.sim.push_fault(FaultTarget::Renewal, Fault::Status { status: 500 });

    let outcome = force(&harness, "project").await;
    let RotationOutcome::Retrying { next_attempt_at, .. } = outcome else { panic!("expected a retry: {outcome:?}") };
    assert_eq!(harness.sim.stats().lookups, 0, "the first attempt did not probe");
    clock.set(next_attempt_at);
    let _stop = run_scheduler(harness.context.clone());
    let token = wait_for(&harness, "project", |t| t.version == 2).await;
    assert_eq!((token.state, token.recovery), (TokenState::Active, None));
    let stats = harness.sim.stats();
    assert_eq!((stats.lookups, stats.rotations, stats.family_revocations), (1, 1, 0), "probed once, then rotated");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_forced_rotation_right_after_an_unknown_outcome_waits_until_it_has_settled() {
    let Setup { harness, clock, .. } = setup().await;
    harness.track_access_token("project", TokenOwner::Project("42".into()), in_days(3)).await.unwrap();
    harness.sim.push_fault(FaultTarget::Renewal, Fault::Status { status: 504 });
    assert!(matches!(force(&harness, "project").await, RotationOutcome::Retrying { .. }));
    let failed_at = harness.token("project").await.unwrap().last_failure_at.unwrap();

    let forced = {
        let context = harness.context.clone();
        tokio::spawn(async move { rotate_now(&context, &token_name("project"), "operator").await })
    };
    clock.set(failed_at + harness.context.settle() - TimeDelta::milliseconds(1));
    settle_briefly().await;
    assert!(!forced.is_finished(), "the forced rotation waits while the unknown outcome settles");
    assert_eq!(harness.sim.stats().lookups, 0, "nothing was sent while a slow request could still be running");
    clock.set(failed_at + harness.context.settle());
    let ForcedRotation::Attempted(report) = forced.await.unwrap().unwrap() else { panic!("expected an attempt") };
    assert!(matches!(report.outcome, RotationOutcome::Rotated { version: 2, .. }), "{:?}", report.outcome);
    let stats = harness.sim.stats();
    assert_eq!((stats.lookups, stats.rotations, stats.family_revocations), (1, 1, 0), "probed first, then rotated");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retry_after_keeps_every_rotation_of_that_provider_waiting_even_a_forced_one() {
    let Setup { harness, clock, .. } = setup().await;
    harness.track_grant("limited").await.unwrap();
    harness.track_grant("other").await.unwrap();
    harness.sim.push_fault(FaultTarget::Renewal, Fault::RateLimited { retry_after_seconds: 120 });
    assert!(matches!(force(&harness, "limited").await, RotationOutcome::Retrying { .. }));

    let forced = {
        let context = harness.context.clone();
        tokio::spawn(async move { rotate_now(&context, &token_name("other"), "operator").await })
    };
    clock.advance(TimeDelta::seconds(119));
    settle_briefly().await;
    assert!(!forced.is_finished(), "a forced rotation of another token at that provider waits as well");
    assert_eq!(harness.sim.stats().refreshes, 0);
    clock.set(start_time() + TimeDelta::seconds(120));
    let ForcedRotation::Attempted(report) = forced.await.unwrap().unwrap() else { panic!("expected an attempt") };
    assert!(matches!(report.outcome, RotationOutcome::Rotated { version: 2, .. }), "{:?}", report.outcome);
    assert_eq!(harness.sim.stats().retry_after_violations, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_absurd_expires_in_is_capped_so_the_grant_keeps_a_planned_refresh() {
    let Setup { harness, .. } = setup().await;
    harness.sim.set_expires_in(Duration::from_secs(u64::MAX / 2));
    harness.track_grant("grant").await.unwrap();
    let _stop = run_scheduler(harness.context.clone());

    let token = wait_for(&harness, "grant", |t| t.version == 2).await;
    let expires_at = token.expires_at.expect("an expiry is recorded");
    assert!(expires_at <= start_time() + TimeDelta::days(366), "{expires_at}");
    assert!(token.next_rotation_at.is_some_and(|at| at < expires_at), "{token:?}");
    settle_briefly().await;
    assert_eq!(harness.sim.stats().refreshes, 1, "refreshed once, not again and again");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_that_may_not_rotate_itself_or_a_rejected_client_needs_attention_without_a_retry() {
    let Setup { harness, clock, .. } = setup().await;
    let secret = harness.track_access_token("no-scope", TokenOwner::Personal, in_days(3)).await.unwrap();
    harness.sim.with_state(|s| s.set_scopes(&secret, &["read_api"]));
    harness.track_grant("grant").await.unwrap();
    harness.sim.with_state(|s| s.rotate_application_secret(&harness.client_id));

    let _stop = run_scheduler(harness.context.clone());
    let token = wait_for(&harness, "no-scope", |t| t.state == TokenState::NeedsAttention).await;
    assert_eq!(token.attention_reason.as_deref(), Some("forbidden"));
    let grant = wait_for(&harness, "grant", |t| t.state == TokenState::NeedsAttention).await;
    assert_eq!(grant.attention_reason.as_deref(), Some("client_credentials_rejected"));
    assert_eq!(grant.remedy.as_deref(), Some("update_provider"));
    let before = harness.sim.stats();
    clock.advance(TimeDelta::days(2));
    settle_briefly().await;
    assert_eq!(harness.sim.stats(), before, "never retried");
    assert!(harness.sim.accepts(&secret), "the refused token was left as it was");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_refused_before_sending_is_retried_later_and_never_costs_the_grant() {
    let Setup { harness, .. } = setup().await;
    let refresh_token = harness.track_grant("grant").await.unwrap();
    let closed = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap().local_addr().unwrap();
    let unreachable = format!("http://{closed}");
    let context = harness.context.clone();
    context
        .store
        .run(move |conn| {
            use diesel::prelude::*;
            use tokenwarden::store::schema::providers;
            diesel::update(providers::table.filter(providers::name.eq("gitlab")))
                .set(providers::url.eq(unreachable))
                .execute(conn)?;
            Ok(())
        })
        .await
        .unwrap();

    let outcome = force(&harness, "grant").await;
    assert!(matches!(outcome, RotationOutcome::Retrying { .. }), "{outcome:?}");
    let token = harness.token("grant").await.unwrap();
    assert_eq!((token.state, token.recovery, token.attempt_count), (TokenState::Retrying, None, 1));
    assert!(harness.sim.with_state(|s| s.refresh_token_is_live(&refresh_token)), "the grant is intact");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_added_through_another_connection_is_noticed_without_a_wake_up() {
    let Setup { harness, .. } = setup().await;
    harness.track_access_token("early", TokenOwner::Personal, in_days(30)).await.unwrap();
    let _stop = run_scheduler(harness.context.clone());
    settle_briefly().await;
    assert_eq!(harness.sim.stats().rotations, 0, "nothing is due; the engine's clock stands still");

    harness.track_access_token("due", TokenOwner::Personal, in_days(3)).await.unwrap();
    let token = wait_for(&harness, "due", |t| t.version == 2).await;
    assert_eq!(token.state, TokenState::Active);
    assert_eq!(harness.token("early").await.unwrap().version, 1);
}

/// The default policy with GitLab tokens rotated `days` before they expire.
fn gitlab_margin(days: u64) -> PolicyDefaults {
    PolicyDefaults { gitlab_rotate_before: HumanDuration::days(days), ..PolicyDefaults::default() }
}

/// The maintenance context of an engine whose configuration says `policy`.
fn configured(harness: &EngineHarness, policy: PolicyDefaults) -> MaintenanceContext {
    let engine = EngineContext { policy, ..EngineContext::clone(&harness.context) };
    MaintenanceContext { engine: Arc::new(engine), ..maintenance_context(harness) }
}

/// Starts the maintenance jobs as `serve` does, with `policy` configured, and stops them.
async fn start_with_policy(harness: &EngineHarness, policy: PolicyDefaults) {
    tokenwarden::engine::maintenance::replan(&configured(harness, policy)).await.unwrap();
}

/// When the token should rotate under `policy`, as `plan_rotation` computes it.
fn plan_under_policy(token: &Token, policy: &PolicyDefaults) -> DateTime<Utc> {
    let resolved = Policy::resolve(token.kind, &token.policy_overrides, policy);
    plan_rotation(token.name.as_str(), token.issued_at.unwrap(), token.expires_at.unwrap(), &resolved)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_changed_rotate_before_replans_an_active_token_at_the_next_start_earlier_or_later() {
    let Setup { harness, .. } = setup().await;
    harness.track_access_token("t", TokenOwner::Personal, in_days(20)).await.unwrap();
    let under_7_days = harness.token("t").await.unwrap();
    assert_eq!(under_7_days.next_rotation_at, Some(plan_under_policy(&under_7_days, &gitlab_margin(7))));

    start_with_policy(&harness, gitlab_margin(14)).await;
    let under_14_days = harness.token("t").await.unwrap();
    let planned = under_14_days.next_rotation_at.unwrap();
    assert_eq!(planned, plan_under_policy(&under_14_days, &gitlab_margin(14)));
    assert!(planned < under_7_days.next_rotation_at.unwrap(), "a larger margin rotates earlier: {planned}");
    assert!(planned <= expiry_instant(in_days(20)) - TimeDelta::days(14), "never later than the new margin");

    start_with_policy(&harness, gitlab_margin(3)).await;
    let under_3_days = harness.token("t").await.unwrap();
    let planned = under_3_days.next_rotation_at.unwrap();
    assert_eq!(planned, plan_under_policy(&under_3_days, &gitlab_margin(3)));
    assert!(planned > under_7_days.next_rotation_at.unwrap(), "a smaller margin rotates later: {planned}");
    assert_eq!((under_3_days.version, under_3_days.state), (1, TokenState::Active), "re-planning never rotates");
    assert_eq!(harness.sim.stats().rotations, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn paused_retrying_rotating_and_needs_attention_tokens_keep_their_times_when_the_policy_changes() {
    use tokenwarden::store::tokens as token_store;
    let Setup { harness, .. } = setup().await;
    for name in ["paused", "retrying", "rotating", "attention", "active"] {
        harness.track_access_token(name, TokenOwner::Personal, in_days(20)).await.unwrap();
    }
    let (paused, now) = (token_name("paused"), harness.now());
    harness.context.store.run(move |conn| token_store::pause(conn, &paused, "test", now)).await.unwrap();
    harness.sim.push_fault(FaultTarget::Renewal, Fault::Status { status: 502 });
    assert!(matches!(force(&harness, "retrying").await, RotationOutcome::Retrying { .. }));
    claim_as_a_worker_that_dies(&harness, "rotating").await;
    let revoked = harness.secret("attention").await.unwrap().unwrap();
    harness.sim.with_state(|s| s.revoke(&revoked));
    assert!(matches!(force(&harness, "attention").await, RotationOutcome::NeedsAttention { .. }));
    let mut before = Vec::new();
    for name in ["paused", "retrying", "rotating", "attention"] {
        before.push(harness.token(name).await.unwrap());
    }

    start_with_policy(&harness, gitlab_margin(14)).await;
    for token in before {
        let after = harness.token(token.name.as_str()).await.unwrap();
        let (was, is) = ((token.state, token.next_rotation_at), (after.state, after.next_rotation_at));
        assert_eq!(is, was, "{}: left as it was", token.name);
    }
    let active = harness.token("active").await.unwrap();
    assert_eq!(active.next_rotation_at, Some(plan_under_policy(&active, &gitlab_margin(14))), "the active one moved");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_rotated_or_paused_between_the_read_and_the_write_is_not_replanned() {
    use tokenwarden::store::replan;
    use tokenwarden::store::tokens as token_store;
    let Setup { harness, .. } = setup().await;
    for name in ["rotated", "paused", "calm"] {
        harness.track_access_token(name, TokenOwner::Personal, in_days(20)).await.unwrap();
    }
    let (now, policy) = (harness.now(), gitlab_margin(14));
    let scheduled = harness.context.store.run(move |conn| replan::scheduled(conn, now, None, i64::MAX)).await.unwrap();
    let replans = replan::changes(&scheduled, |token| plan_under(&policy, token));
    assert_eq!(replans.len(), 3, "all three differ from the 14-day plan");

    assert!(matches!(force(&harness, "rotated").await, RotationOutcome::Rotated { version: 2, .. }));
    let rotated = harness.token("rotated").await.unwrap();
    let paused = token_name("paused");
    harness.context.store.run(move |conn| token_store::pause(conn, &paused, "test", now)).await.unwrap();
    let paused = harness.token("paused").await.unwrap();
    let applied = harness.context.store.run(move |conn| replan::apply(conn, &replans, now)).await.unwrap();

    assert_eq!(applied, 1, "only the token that did not change meanwhile");
    let after = harness.token("rotated").await.unwrap();
    assert_eq!((after.version, after.next_rotation_at), (2, rotated.next_rotation_at), "the rotation's plan wins");
    let after = harness.token("paused").await.unwrap();
    assert_eq!((after.state, after.next_rotation_at), (TokenState::Paused, paused.next_rotation_at));
    let calm = harness.token("calm").await.unwrap();
    assert_eq!(calm.next_rotation_at, Some(plan_under_policy(&calm, &policy)));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replanning_reads_the_scheduled_tokens_page_by_page_each_once() {
    use tokenwarden::store::replan;
    let Setup { harness, .. } = setup().await;
    for i in 0..5 {
        harness.track_access_token(&format!("t{i}"), TokenOwner::Personal, in_days(20)).await.unwrap();
    }
    let now = harness.now();
    let mut pages = Vec::new();
    let mut after: Option<String> = None;
    loop {
        let from = after.clone();
        let page =
            harness.context.store.run(move |conn| replan::scheduled(conn, now, from.as_deref(), 2)).await.unwrap();
        let Some(last) = page.last() else { break };
        after = Some(last.id.clone());
        pages.push(page.iter().map(|t| t.name.clone()).collect::<Vec<_>>());
    }
    assert_eq!(pages.iter().map(Vec::len).collect::<Vec<_>>(), [2, 2, 1], "{pages:?}");
    let mut names: Vec<String> = pages.concat();
    names.sort();
    assert_eq!(names, ["t0", "t1", "t2", "t3", "t4"], "every token once");
}

/// How many of `names` hold a rotation lease right now.
async fn leased(harness: &EngineHarness, names: &[String]) -> usize {
    let mut leased = 0;
    for name in names {
        if harness.token(name).await.unwrap().state == TokenState::Rotating {
            leased += 1;
        }
    }
    leased
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_busy_provider_gets_claims_ahead_that_a_stopping_scheduler_puts_back_untouched() {
    let Setup { harness, clock, .. } = setup().await;
    let names: Vec<String> = (0..12).map(|i| format!("busy-{i}")).collect();
    for name in &names {
        harness.track_access_token(name, TokenOwner::Personal, in_days(20)).await.unwrap();
    }
    harness.sim.set_rates(FaultRates { latency_ms: 150, ..FaultRates::default() });
    clock.advance(TimeDelta::days(15));
    let limits = Limits { max_concurrency: 2, per_provider: 2 };
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let scheduler = tokio::spawn(Scheduler::new(harness.context.clone(), limits).run(stopped));

    // Two workers rotate; one more token is claimed ahead for the first of them to finish.
    let mut most_leased = 0;
    for _ in 0..200 {
        most_leased = most_leased.max(leased(&harness, &names).await);
        if most_leased > limits.per_provider {
            break;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert_eq!(most_leased, limits.per_provider + 1, "two rotations in flight and one claimed ahead");

    stop.send(true).unwrap();
    scheduler.await.unwrap();
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert_eq!(leased(&harness, &names).await, 0, "nothing is left leased: the claim ahead was put back");
    let mut rotated = 0;
    for name in &names {
        let token = harness.token(name).await.unwrap();
        assert_eq!(token.state, TokenState::Active, "{name}");
        assert_eq!(token.recovery, None, "{name}: put back without a recovery marker, so no probe is needed");
        rotated += usize::from(token.version == 2);
    }
    assert!(rotated < names.len(), "the scheduler stopped before all were rotated");
    assert_eq!(harness.sim.stats().rotations, rotated as u64, "each rotation at GitLab is stored");

    let _stop = run_scheduler(harness.context.clone());
    for name in &names {
        wait_for(&harness, name, |t| t.version == 2).await;
    }
    let stats = harness.sim.stats();
    assert_eq!((stats.rotations, stats.lookups, stats.family_revocations), (12, 0, 0), "{stats:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn claims_ahead_are_put_back_when_their_provider_asks_for_a_pause_and_wait_for_its_end() {
    let Setup { harness, clock, .. } = setup().await;
    let names: Vec<String> = (0..4).map(|i| format!("paused-{i}")).collect();
    for name in &names {
        harness.track_access_token(name, TokenOwner::Personal, in_days(20)).await.unwrap();
    }
    harness.sim.set_rates(FaultRates { latency_ms: 100, ..FaultRates::default() });
    harness.sim.push_fault(FaultTarget::Renewal, Fault::RateLimited { retry_after_seconds: 120 });
    clock.advance(TimeDelta::days(15));
    let limits = Limits { max_concurrency: 1, per_provider: 1 };
    let (_stop, stopped) = tokio::sync::watch::channel(false);
    tokio::spawn(Scheduler::new(harness.context.clone(), limits).run(stopped));

    // The one worker's request is refused with Retry-After; the token claimed ahead for it
    // goes back untouched instead of being sent during the pause.
    let mut retrying = None;
    for _ in 0..200 {
        for name in &names {
            if harness.token(name).await.unwrap().state == TokenState::Retrying {
                retrying = Some(name.clone());
            }
        }
        if retrying.is_some() && leased(&harness, &names).await == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert!(retrying.is_some(), "the rate-limited token waits for its retry");
    settle_briefly().await;
    assert_eq!(leased(&harness, &names).await, 0, "the claim ahead was put back");
    assert_eq!(harness.sim.stats().rotations, 0, "nothing is sent during the pause");

    clock.advance(TimeDelta::seconds(121));
    for name in &names {
        wait_for(&harness, name, |t| t.version == 2).await;
    }
    let stats = harness.sim.stats();
    // Only the refused token's next attempt looks it up first (an attempt after a failure does).
    assert_eq!((stats.rotations, stats.lookups, stats.retry_after_violations), (4, 1, 0), "{stats:?}");
}
