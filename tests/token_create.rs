//! `token create` through a managing credential (issue 13, point 1), against the simulator's
//! GitLab rules: the token is made under its own lease and stored as version 1; GitLab's
//! refusals are explained and leave nothing behind; an unknown outcome is resolved by listing
//! and revoking, never by a blind second create; a create that dies holding its lease is
//! flagged; a manager cannot be removed while it manages tokens.

mod common;

use chrono::{Days, TimeDelta};
use common::engine_setup::{Setup, engine_settings, setup_with, start_time};
use std::time::Duration;
use tokenwarden::domain::{PolicyOverrides, TokenName, TokenState};
use tokenwarden::engine::create::{CreateError, CreateRequest, create_token};
use tokenwarden::simulator::variables::Namespace;
use tokenwarden::simulator::{Fault, FaultTarget, TokenOwner};
use tokenwarden::store::rotation::{self, ClaimMode, ClaimResult};
use tokenwarden::store::{StoreError, creation, tokens};

/// An engine whose GitLab has a manager token (a personal token with `api`) of a user who is
/// `role` in project 42.
async fn with_manager(role: u8) -> Setup {
    let setup = setup_with(engine_settings(Duration::from_secs(2))).await;
    let expires = start_time().date_naive() + Days::new(300);
    setup.harness.track_access_token("manager", TokenOwner::Personal, expires).await.unwrap();
    setup.harness.sim.with_state(|state| state.memberships.insert(Namespace::Project("42".into()), role));
    setup
}

fn request(name: &str, project: &str) -> CreateRequest {
    CreateRequest {
        name: name.parse().unwrap(),
        provider: "gitlab".parse().unwrap(),
        kind: "gitlab-project-access-token".parse().unwrap(),
        namespace: tokenwarden::providers::gitlab_admin::Namespace::Project(project.into()),
        manager: "manager".parse().unwrap(),
        gitlab_name: None,
        scopes: vec!["api".into()],
        access_level: 30,
        policy: PolicyOverrides::default(),
        overlap: None,
    }
}

/// The active tokens at the simulated GitLab named `name`.
fn active_named(setup: &Setup, name: &str) -> Vec<String> {
    let now = setup.harness.now();
    setup.harness.sim.with_state(|state| {
        state
            .issued_secrets()
            .into_iter()
            .filter(|secret| state.look_up(secret, now).is_some_and(|t| t.name == name))
            .collect()
    })
}

#[tokio::test]
async fn a_created_token_is_stored_as_version_one_and_rotates_like_any_other() {
    let setup = with_manager(40).await;
    let token = create_token(&setup.harness.context, request("ci", "42"), "ops").await.unwrap();
    assert_eq!((token.version, token.state), (1, TokenState::Active));
    assert_eq!(token.gitlab_name.as_deref(), Some("tokenwarden: ci"));
    assert_eq!(token.project.as_deref(), Some("42"));
    let expected_expiry = start_time().date_naive() + Days::new(30);
    assert_eq!(token.expires_at.map(|at| at.date_naive()), Some(expected_expiry), "the policy's lifetime");
    let secret = setup.harness.secret("ci").await.unwrap().unwrap();
    assert_eq!(active_named(&setup, "tokenwarden: ci"), vec![secret.clone()], "one live token, the one stored");
    let history = setup.harness.token("ci").await.unwrap();
    assert!(history.next_rotation_at.is_some());
    let name: TokenName = "ci".parse().unwrap();
    let entries = setup.harness.context.store.run(move |conn| tokens::history(conn, &name)).await.unwrap();
    assert_eq!(entries.iter().map(|e| (e.version, e.event.as_str())).collect::<Vec<_>>(), vec![(1, "created")]);

    tokenwarden::engine::rotate_now(&setup.harness.context, &"ci".parse().unwrap(), "test").await.unwrap();
    assert_eq!(setup.harness.token("ci").await.unwrap().version, 2, "it self-rotates with its api scope");
}

#[tokio::test]
async fn gitlabs_refusals_are_explained_and_leave_nothing_behind() {
    let setup = with_manager(30).await;
    let err = create_token(&setup.harness.context, request("ci", "42"), "ops").await.unwrap_err();
    assert!(matches!(err, CreateError::Refused(ref m) if m.contains("Maintainer") && m.contains("manager")), "{err}");
    let err = create_token(&setup.harness.context, request("ci", "999"), "ops").await.unwrap_err();
    assert!(matches!(err, CreateError::Refused(ref m) if m.contains("404")), "{err}");
    assert!(matches!(setup.harness.token("ci").await, Err(StoreError::NotFound { .. })), "nothing stored");
    assert!(active_named(&setup, "tokenwarden: ci").is_empty(), "nothing made at GitLab");

    let mut unknown_manager = request("ci", "42");
    unknown_manager.manager = "nope".parse().unwrap();
    let err = create_token(&setup.harness.context, unknown_manager, "ops").await.unwrap_err();
    assert!(matches!(err, CreateError::Store(StoreError::NotFound { .. })), "{err}");
}

#[tokio::test]
async fn a_name_gitlab_already_uses_is_refused_before_anything_is_made() {
    let setup = with_manager(40).await;
    create_token(&setup.harness.context, request("ci", "42"), "ops").await.unwrap();
    let mut again = request("ci-two", "42");
    again.gitlab_name = Some("tokenwarden: ci".into());
    let err = create_token(&setup.harness.context, again, "ops").await.unwrap_err();
    assert!(matches!(err, CreateError::Invalid(ref m) if m.contains("already has an active token")), "{err}");
    assert_eq!(active_named(&setup, "tokenwarden: ci").len(), 1);
}

#[tokio::test]
async fn an_unknown_outcome_is_resolved_by_revoking_what_was_made_then_creating_once_more() {
    let setup = with_manager(40).await;
    setup.harness.sim.push_fault(FaultTarget::Admin, Fault::DropAfterCommit);
    let token = create_token(&setup.harness.context, request("ci", "42"), "ops").await.unwrap();
    assert_eq!(token.version, 1);
    let secret = setup.harness.secret("ci").await.unwrap().unwrap();
    assert_eq!(active_named(&setup, "tokenwarden: ci"), vec![secret], "the lost one was revoked: one live token");
    assert!(setup.harness.sim.stats().revocations >= 1);

    // Lost twice: what was made is revoked both times and nothing is stored.
    let answered = Fault::SlowAfterCommit { delay_ms: 0 };
    for fault in [Fault::DropAfterCommit, answered, Fault::DropAfterCommit, answered] {
        setup.harness.sim.push_fault(FaultTarget::Admin, fault);
    }
    let err = create_token(&setup.harness.context, request("cd", "42"), "ops").await.unwrap_err();
    assert!(matches!(err, CreateError::Refused(_)), "{err}");
    assert!(active_named(&setup, "tokenwarden: cd").is_empty(), "no live token tokenwarden does not know");
    assert!(matches!(setup.harness.token("cd").await, Err(StoreError::NotFound { .. })));

    // Lost, and what was made cannot be revoked: the token stays, flagged, naming it.
    setup.harness.sim.push_fault(FaultTarget::Admin, Fault::DropAfterCommit);
    setup.harness.sim.push_fault(FaultTarget::Admin, Fault::Status { status: 503 });
    let err = create_token(&setup.harness.context, request("cx", "42"), "ops").await.unwrap_err();
    assert!(matches!(err, CreateError::Refused(ref m) if m.contains("could not be revoked")), "{err}");
    let flagged = setup.harness.token("cx").await.unwrap();
    assert_eq!(
        (flagged.state, flagged.attention_reason.as_deref()),
        (TokenState::NeedsAttention, Some("create_interrupted"))
    );
    assert_eq!(active_named(&setup, "tokenwarden: cx").len(), 1, "the one live token is named by a flagged token");
}

#[tokio::test]
async fn a_create_that_dies_holding_its_lease_is_flagged_and_its_manager_cannot_be_removed() {
    let setup = with_manager(40).await;
    create_token(&setup.harness.context, request("ci", "42"), "ops").await.unwrap();
    let context = setup.harness.context.clone();
    let (lease, now) = (context.lease(), setup.harness.now());
    let (provider_id, manager_id) = {
        let manager: TokenName = "manager".parse().unwrap();
        let found = context.store.run(move |conn| tokens::find(conn, &manager)).await.unwrap();
        let ci = setup.harness.token("ci").await.unwrap();
        let provider = context
            .store
            .run(|conn| tokenwarden::store::providers::find_row(conn, &"gitlab".parse().unwrap()))
            .await
            .unwrap();
        assert_eq!(ci.provider.as_str(), "gitlab");
        (provider.id, found.id)
    };
    let managed = creation::NewManagedToken {
        name: "dying".parse().unwrap(),
        kind: "gitlab-project-access-token".parse().unwrap(),
        provider_id,
        resource_kind: "project".into(),
        resource: "42".into(),
        gitlab_name: "tokenwarden: dying".into(),
        manager_id,
        access_level: 30,
        scopes: "api".into(),
        policy: PolicyOverrides::default(),
        overlap: None,
    };
    let owner = context.owner.clone();
    context.store.run(move |conn| creation::claim_new(conn, &managed, &owner, lease, now)).await.unwrap();
    // The process dies here, the create sent or not. Its lease runs out.
    setup.clock.advance(lease + TimeDelta::seconds(1));
    let now = setup.harness.now();
    let name: TokenName = "dying".parse().unwrap();
    let result = context
        .store
        .run(move |conn| rotation::claim(conn, &name, ClaimMode::Scheduled, "next", TimeDelta::minutes(5), now))
        .await
        .unwrap();
    assert!(matches!(result, ClaimResult::Refused(TokenState::NeedsAttention)), "{result:?}");
    let token = setup.harness.token("dying").await.unwrap();
    assert_eq!(
        (token.attention_reason.as_deref(), token.remedy.as_deref()),
        (Some("create_interrupted"), Some("replace"))
    );
    assert!(token.last_error.unwrap().contains("tokenwarden: dying"));

    let manager: TokenName = "manager".parse().unwrap();
    let removed = context.store.run(move |conn| tokens::remove(conn, &manager, true, "ops", now)).await;
    assert!(
        matches!(removed, Err(StoreError::Conflict(ref m)) if m.contains("ci") && m.contains("dying")),
        "{removed:?}"
    );
}

#[test]
fn the_command_line_creates_without_printing_the_secret_and_explains_refusals() {
    let sandbox = common::Sandbox::new();
    let (_, manager) = common::killed::sandbox_with_manager(&sandbox);
    let create = ["token", "create", "ci", "--provider", "gitlab", "--kind", "gitlab-project-access-token"];
    let create = [&create[..], &["--project", "42", "--manager", "mgr", "--scope", "api"]].concat();

    sandbox.gitlab.sim.with_state(|state| state.memberships.insert(Namespace::Project("42".into()), 30));
    let stderr = sandbox.fails(&create, "", 1);
    assert!(stderr.contains("Maintainer") && stderr.contains("'mgr'"), "{stderr}");
    assert!(sandbox.token_list().iter().all(|t| t["name"] != "ci"), "nothing stored");

    sandbox.gitlab.sim.with_state(|state| state.memberships.insert(Namespace::Project("42".into()), 40));
    let out = sandbox.run(&create, "");
    let (stdout, stderr) = (String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "{stderr}");
    assert!(stderr.contains("created 'ci'") && stderr.contains("tokenwarden: ci"), "{stderr}");
    assert!(!stdout.contains("glpat-") && !stderr.contains("glpat-"), "the secret is never printed");
    let token = sandbox.token_show("ci");
    assert_eq!((token["version"].as_i64(), token["state"].as_str()), (Some(1), Some("active")), "{token}");

    assert!(sandbox.ok(&["token", "show", "ci"], "").contains("mgr"), "token show names the manager");
    assert_eq!(token["manager"], "mgr");

    // A manager that needs attention marks what it manages in `check`.
    sandbox.gitlab.sim.with_state(|state| state.revoke(&manager));
    sandbox.fails(&["token", "rotate", "mgr"], "", 1);
    let out = sandbox.run(&["check"], "");
    let report = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(2), "{report}");
    assert!(report.contains("WARNING: ci: its manager 'mgr' is needs_attention"), "{report}");

    let bad_level = [&create[..], &["--access-level", "admin"]].concat();
    assert!(sandbox.fails(&bad_level, "", 2).contains("--access-level"));
    let stderr = sandbox.fails(&["token", "remove", "mgr", "--yes"], "", 1);
    assert!(stderr.contains("manages ci"), "{stderr}");
}

/// Loses the answer of `name`'s next rotation: GitLab rotates it and the answer never arrives,
/// so the probe after the settle time finds the old token dead (`rotation_response_lost`);
/// returns the token as that probe left it.
async fn lose_a_rotation(setup: &Setup, name: &str) -> tokenwarden::store::models::Token {
    let token: TokenName = name.parse().unwrap();
    setup.harness.sim.push_fault(FaultTarget::Renewal, Fault::DropAfterCommit);
    tokenwarden::engine::rotate_now(&setup.harness.context, &token, "test").await.unwrap();
    setup.clock.advance(TimeDelta::minutes(10));
    tokenwarden::engine::rotate_now(&setup.harness.context, &token, "test").await.unwrap();
    setup.harness.token(name).await.unwrap()
}

#[tokio::test]
async fn a_managed_token_whose_rotation_answer_was_lost_is_healed_at_once_and_once_an_hour_at_most() {
    use tokenwarden::engine::heal::heal_due;
    let setup = with_manager(40).await;
    create_token(&setup.harness.context, request("ci", "42"), "ops").await.unwrap();

    let healed = lose_a_rotation(&setup, "ci").await;
    assert_eq!((healed.state, healed.version), (TokenState::Active, 2), "healed as soon as the loss was found");
    let secret = setup.harness.secret("ci").await.unwrap().unwrap();
    assert_eq!(
        active_named(&setup, "tokenwarden: ci"),
        vec![secret],
        "the lost successor revoked: one live token, ours"
    );
    let name: TokenName = "ci".parse().unwrap();
    let history = setup.harness.context.store.run(move |conn| tokens::history(conn, &name)).await.unwrap();
    assert_eq!(history.last().map(|e| e.event.as_str()), Some("healed"));

    let lost = lose_a_rotation(&setup, "ci").await;
    assert_eq!(
        (lost.state, lost.attention_reason.as_deref()),
        (TokenState::NeedsAttention, Some("rotation_response_lost"))
    );
    assert_eq!(heal_due(&setup.harness.context).await, 0, "at most one heal per token per hour");
    setup.clock.advance(TimeDelta::minutes(61));
    assert_eq!(heal_due(&setup.harness.context).await, 1, "the sweep heals it once the hour has passed");
    assert_eq!(setup.harness.token("ci").await.unwrap().state, TokenState::Active);
    assert_eq!(active_named(&setup, "tokenwarden: ci").len(), 1);
}

#[tokio::test]
async fn a_token_revoked_by_someone_else_is_made_again_only_by_token_heal() {
    use tokenwarden::engine::heal::{heal, heal_due};
    let setup = with_manager(40).await;
    create_token(&setup.harness.context, request("ci", "42"), "ops").await.unwrap();
    let secret = setup.harness.secret("ci").await.unwrap().unwrap();
    setup.harness.sim.with_state(|state| state.revoke(&secret));
    let name: TokenName = "ci".parse().unwrap();
    tokenwarden::engine::rotate_now(&setup.harness.context, &name, "test").await.unwrap();
    let revoked = setup.harness.token("ci").await.unwrap();
    assert_eq!((revoked.state, revoked.attention_reason.as_deref()), (TokenState::NeedsAttention, Some("revoked")));
    assert_eq!(heal_due(&setup.harness.context).await, 0, "never re-created on its own");
    assert!(active_named(&setup, "tokenwarden: ci").is_empty());

    let healed = heal(&setup.harness.context, &name, "ops", true).await.unwrap();
    assert_eq!((healed.state, healed.version), (TokenState::Active, 2));
    assert_eq!(active_named(&setup, "tokenwarden: ci").len(), 1);

    let expires = start_time().date_naive() + Days::new(60);
    setup.harness.track_access_token("pat", TokenOwner::Personal, expires).await.unwrap();
    let err = heal(&setup.harness.context, &"pat".parse().unwrap(), "ops", true).await.unwrap_err();
    assert!(matches!(err, CreateError::Store(StoreError::InvalidInput(ref m)) if m.contains("token create")), "{err}");
}
