//! Deploy tokens (issue 13, point 2) against the simulator's GitLab rules: made through a
//! manager; a rotation creates a successor, commits it as the next version and queues the old
//! one's revocation, done when every granted reader acknowledged the new version or when the
//! overlap ends; revocations are durable rows retried with backoff; the secret read carries the
//! username; no live deploy token of the name is ever one tokenwarden does not know.

mod common;

use chrono::{Days, TimeDelta};
use common::engine_setup::{Setup, engine_settings, setup_with, start_time};
use std::time::Duration;
use tokenwarden::domain::{ClientRole, PolicyOverrides, TokenName, TokenState};
use tokenwarden::engine::create::{CreateError, CreateRequest, create_token};
use tokenwarden::engine::retire::revoke_due;
use tokenwarden::engine::rotate_now;
use tokenwarden::providers::gitlab_admin::Namespace;
use tokenwarden::simulator::harness::EngineHarness;
use tokenwarden::simulator::variables::Namespace as SimNamespace;
use tokenwarden::simulator::{Fault, FaultTarget, GitlabState, TokenOwner};
use tokenwarden::store::models::Token;
use tokenwarden::store::{clients, consumers, pending_revocations, tokens};

const GITLAB_NAME: &str = "tokenwarden: registry";

/// An engine whose GitLab has a manager (a personal token with `api`) of a Maintainer of
/// project 42 and of group 7.
async fn with_manager() -> Setup {
    let setup = setup_with(engine_settings(Duration::from_secs(2))).await;
    let expires = start_time().date_naive() + Days::new(300);
    setup.harness.track_access_token("manager", TokenOwner::Personal, expires).await.unwrap();
    setup.harness.sim.with_state(|state| {
        state.memberships.insert(SimNamespace::Project("42".into()), 40);
        state.memberships.insert(SimNamespace::Group("7".into()), 40);
    });
    setup
}

fn request(namespace: Namespace, overlap: Option<TimeDelta>) -> CreateRequest {
    CreateRequest {
        name: "registry".parse().unwrap(),
        provider: "gitlab".parse().unwrap(),
        kind: "gitlab-deploy-token".parse().unwrap(),
        namespace,
        manager: "manager".parse().unwrap(),
        gitlab_name: None,
        scopes: vec!["read_registry".into(), "read_repository".into()],
        access_level: 0,
        policy: PolicyOverrides::default(),
        overlap,
    }
}

/// A project access token `name` made through the same manager.
fn access_request(name: &str) -> CreateRequest {
    let mut access = request(Namespace::Project("42".into()), None);
    access.name = name.parse().unwrap();
    access.kind = "gitlab-project-access-token".parse().unwrap();
    access.scopes = vec!["api".into()];
    access.access_level = 30;
    access
}

/// The secrets of the live tokens named `name` in project 42 at the simulated GitLab.
fn live(setup: &Setup, name: &str) -> Vec<String> {
    common::killed::live_in(&setup.harness.sim, name, setup.harness.now())
}

async fn shown(setup: &Setup) -> Token {
    let name: TokenName = "registry".parse().unwrap();
    setup
        .harness
        .context
        .store
        .run(move |conn| tokens::find_shown(conn, &name, tokens::ReadAs::Operator))
        .await
        .unwrap()
}

/// The reader with `api_key` says it uses `version` of the token.
async fn ack(harness: &EngineHarness, api_key: &str, version: i64) {
    let (key, now) = (api_key.to_owned(), harness.now());
    harness
        .context
        .store
        .run(move |conn| {
            let client = clients::authenticate(conn, &key)?.expect("a known reader");
            consumers::acknowledge(conn, &client.id, client.name.as_str(), &"registry".parse().unwrap(), version, now)
        })
        .await
        .unwrap();
}

async fn rotate(setup: &Setup) {
    rotate_now(&setup.harness.context, &"registry".parse().unwrap(), "test").await.unwrap();
}

#[tokio::test]
async fn a_deploy_token_is_made_through_its_manager_and_read_with_its_username() {
    let setup = with_manager().await;
    let token =
        create_token(&setup.harness.context, request(Namespace::Project("42".into()), None), "ops").await.unwrap();
    assert_eq!((token.version, token.state, token.project.as_deref()), (1, TokenState::Active, Some("42")));
    let username = token.username.clone().expect("GitLab's username for it");
    assert!(username.starts_with("gitlab+deploy-token-"), "{username}");
    let secret = setup.harness.secret("registry").await.unwrap().unwrap();
    assert_eq!(live(&setup, GITLAB_NAME), vec![secret]);
    let expected = start_time().date_naive() + Days::new(30);
    assert_eq!(token.expires_at.map(|at| at.date_naive()), Some(expected), "the policy's lifetime");

    // Group deploy tokens need the Owner role: GitLab's 403 is explained, nothing is kept.
    let mut group = request(Namespace::Group("7".into()), None);
    group.name = "group-registry".parse().unwrap();
    let err = create_token(&setup.harness.context, group, "ops").await.unwrap_err();
    assert!(matches!(err, CreateError::Refused(ref m) if m.contains("Owner")), "{err}");
    assert!(setup.harness.token("group-registry").await.is_err());
}

#[tokio::test]
async fn the_old_token_is_revoked_once_every_reader_acknowledged_its_successor() {
    let setup = with_manager().await;
    create_token(&setup.harness.context, request(Namespace::Project("42".into()), None), "ops").await.unwrap();
    let first = setup.harness.secret("registry").await.unwrap().unwrap();
    let build = setup.harness.add_client("build", ClientRole::Reader, &["registry"], None).await.unwrap();
    let deploy = setup.harness.add_client("deploy", ClientRole::Reader, &["registry"], None).await.unwrap();

    rotate(&setup).await;
    let token = shown(&setup).await;
    let second = setup.harness.secret("registry").await.unwrap().unwrap();
    assert_eq!(token.version, 2);
    assert_ne!(first, second);
    assert_eq!(live(&setup, GITLAB_NAME).len(), 2, "both work during the overlap");
    let pending = &token.pending_revocations;
    assert_eq!(pending.iter().map(|p| (p.version, p.replaced_by_version)).collect::<Vec<_>>(), vec![(1, 2)]);
    let history: Vec<_> = {
        let name: TokenName = "registry".parse().unwrap();
        let entries = setup.harness.context.store.run(move |conn| tokens::history(conn, &name)).await.unwrap();
        entries.into_iter().map(|entry| entry.event).collect()
    };
    assert_eq!(history, vec!["created", "rotated"]);

    assert_eq!(revoke_due(&setup.harness.context).await, 0, "no reader acknowledged yet");
    ack(&setup.harness, &build, 2).await;
    assert_eq!(revoke_due(&setup.harness.context).await, 0, "one reader still uses version 1");
    ack(&setup.harness, &deploy, 2).await;
    assert_eq!(revoke_due(&setup.harness.context).await, 1);
    assert_eq!(live(&setup, GITLAB_NAME), vec![second], "only the successor is left");
    assert!(shown(&setup).await.pending_revocations.is_empty());
    assert_eq!(revoke_due(&setup.harness.context).await, 0, "revoked once");
}

#[tokio::test]
async fn without_acknowledgements_the_old_token_is_revoked_when_the_overlap_ends() {
    let setup = with_manager().await;
    let overlap = Some(TimeDelta::minutes(10));
    create_token(&setup.harness.context, request(Namespace::Project("42".into()), overlap), "ops").await.unwrap();
    setup.harness.add_client("silent", ClientRole::Reader, &["registry"], None).await.unwrap();
    rotate(&setup).await;
    setup.clock.advance(TimeDelta::minutes(9));
    assert_eq!(revoke_due(&setup.harness.context).await, 0, "inside the overlap");
    assert_eq!(live(&setup, GITLAB_NAME).len(), 2);
    setup.clock.advance(TimeDelta::minutes(2));
    assert_eq!(revoke_due(&setup.harness.context).await, 1, "the overlap ended");
    assert_eq!(live(&setup, GITLAB_NAME), vec![setup.harness.secret("registry").await.unwrap().unwrap()]);
}

#[tokio::test]
async fn a_failing_revocation_is_retried_with_backoff_shown_and_kept_in_the_store() {
    let setup = with_manager().await;
    create_token(&setup.harness.context, request(Namespace::Project("42".into()), None), "ops").await.unwrap();
    // A token without readers or sinks: its old secret is due at once.
    rotate(&setup).await;
    for _ in 0..3 {
        setup.harness.sim.push_fault(FaultTarget::Admin, Fault::Status { status: 503 });
    }
    for attempt in 1..=3 {
        assert_eq!(revoke_due(&setup.harness.context).await, 0);
        let pending = shown(&setup).await.pending_revocations;
        assert_eq!(pending.len(), 1);
        assert_eq!(pending[0].attempts, attempt);
        assert!(pending[0].last_error.as_deref().is_some_and(|e| e.contains("503")), "{:?}", pending[0].last_error);
        let retry_at = tokenwarden::store::models::utc(pending[0].next_attempt_at);
        assert!(retry_at > setup.harness.now(), "backs off");
        assert_eq!(revoke_due(&setup.harness.context).await, 0, "not before its retry time");
        setup.clock.set(retry_at);
    }
    let failing = setup
        .harness
        .context
        .store
        .run(|conn| pending_revocations::failing(conn, tokenwarden::engine::retire::WARN_AFTER_ATTEMPTS))
        .await
        .unwrap();
    assert_eq!(
        failing.iter().map(|(token, version, _)| (token.as_str(), *version)).collect::<Vec<_>>(),
        vec![("registry", 1)]
    );
    assert_eq!(live(&setup, GITLAB_NAME).len(), 2, "still valid while it fails");

    // Another process on the same store (a restart) finds the row and finishes it.
    let restarted = tokenwarden::engine::EngineContext::new(
        setup.harness.context.store.clone(),
        setup.harness.context.cipher.clone(),
        setup.harness.context.clock.clone(),
        setup.harness.context.policy,
        setup.harness.context.settings,
        "restarted",
    )
    .unwrap();
    assert_eq!(revoke_due(&restarted).await, 1);
    assert_eq!(live(&setup, GITLAB_NAME).len(), 1);
}

#[tokio::test]
async fn no_live_token_of_the_name_is_one_tokenwarden_does_not_know() {
    let setup = with_manager().await;
    create_token(&setup.harness.context, request(Namespace::Project("42".into()), None), "ops").await.unwrap();
    setup.harness.add_client("build", ClientRole::Reader, &["registry"], None).await.unwrap();

    // The rotation's create answer is lost: what it made is revoked and it creates once more.
    setup.harness.sim.push_fault(FaultTarget::Admin, Fault::DropAfterCommit);
    rotate(&setup).await;
    let token = shown(&setup).await;
    assert_eq!(token.version, 2);
    let mut known: Vec<String> = vec![setup.harness.secret("registry").await.unwrap().unwrap()];
    assert_eq!(live(&setup, GITLAB_NAME).len(), 2, "the successor and the old one in its overlap, nothing else");

    // A process killed after GitLab made a successor left one behind: the next rotation revokes it
    // before making its own, and leaves the old one in its overlap alone.
    let stray = setup.harness.sim.with_state(|state| {
        let fields = [("name".to_owned(), GITLAB_NAME.to_owned()), ("scopes[]".to_owned(), "read_registry".to_owned())];
        state.create_deploy_token(&SimNamespace::Project("42".into()), &fields).unwrap().secret
    });
    rotate(&setup).await;
    assert_eq!(shown(&setup).await.version, 3);
    known.push(setup.harness.secret("registry").await.unwrap().unwrap());
    let now_live = live(&setup, GITLAB_NAME);
    assert!(!now_live.contains(&stray), "the stray was revoked");
    assert_eq!(now_live.len(), 3, "versions 1 and 2 in their overlap, and 3");
    assert_eq!(shown(&setup).await.pending_revocations.len(), 2);
}

#[tokio::test]
async fn a_stray_beyond_the_first_pages_of_a_busy_project_is_still_found_and_revoked() {
    let setup = with_manager().await;
    create_token(&setup.harness.context, request(Namespace::Project("42".into()), None), "ops").await.unwrap();
    // 250 other deploy tokens in the project, then a stray of ours: it is on GitLab's third page
    // of 100 (the lists answer 20 a page unless asked, 100 at most).
    let stray = setup.harness.sim.with_state(|state| {
        let project = SimNamespace::Project("42".into());
        let make = |state: &mut GitlabState, name: &str| {
            let fields = [("name".to_owned(), name.to_owned()), ("scopes[]".to_owned(), "read_registry".to_owned())];
            state.create_deploy_token(&project, &fields).unwrap().secret
        };
        for i in 0..250 {
            make(state, &format!("ci-{i}"));
        }
        make(state, GITLAB_NAME)
    });
    rotate(&setup).await;
    assert_eq!(shown(&setup).await.version, 2);
    let now_live = live(&setup, GITLAB_NAME);
    assert!(!now_live.contains(&stray), "the stray on the third page was revoked");
    assert_eq!(now_live.len(), 2, "version 1 in its overlap, and 2");
    assert_eq!(live(&setup, "ci-0").len(), 1, "other names are left alone");
}

#[tokio::test]
async fn a_healed_deploy_token_keeps_the_old_one_through_its_overlap_and_remove_revokes_through_the_manager() {
    let setup = with_manager().await;
    create_token(&setup.harness.context, request(Namespace::Project("42".into()), None), "ops").await.unwrap();
    setup.harness.add_client("build", ClientRole::Reader, &["registry"], None).await.unwrap();
    let healed = tokenwarden::engine::heal::heal(&setup.harness.context, &"registry".parse().unwrap(), "ops", true)
        .await
        .unwrap();
    assert_eq!(healed.version, 2);
    assert_eq!(live(&setup, GITLAB_NAME).len(), 2, "the old one waits for the reader or the overlap");
    assert_eq!(shown(&setup).await.pending_revocations.len(), 1);

    let removal = tokenwarden::engine::revoke::revoke_and_remove(
        &setup.harness.context,
        &"registry".parse().unwrap(),
        false,
        "ops",
    )
    .await
    .unwrap();
    assert!(matches!(removal.revoked, tokenwarden::engine::revoke::Revoked::AtProvider), "{:?}", removal.revoked);
    assert_eq!(live(&setup, GITLAB_NAME).len(), 1, "the current one was revoked through the manager");
    let store = setup.harness.context.store.clone();
    let remove_manager = move |now| {
        let store = store.clone();
        async move { store.run(move |conn| tokens::remove(conn, &"manager".parse().unwrap(), true, "ops", now)).await }
    };
    let refused = remove_manager(setup.harness.now()).await.unwrap_err();
    assert!(refused.to_string().contains("still wait to be revoked"), "{refused}");
    assert_eq!(revoke_due(&setup.harness.context).await, 1, "its grants went with it: the old one is due at once");
    assert!(live(&setup, GITLAB_NAME).is_empty());
    remove_manager(setup.harness.now()).await.unwrap();
}

/// The GitLab ids of the live tokens named `name`: deploy tokens of project 42, or project access
/// tokens.
fn live_ids(setup: &Setup, name: &str) -> Vec<String> {
    let now = setup.harness.now();
    setup.harness.sim.with_state(|state| {
        let deploy: Vec<String> = state
            .deploy_tokens_of(&SimNamespace::Project("42".into()))
            .into_iter()
            .filter(|token| token.name == name && state.deploy_token_works(&token.secret, now))
            .map(|token| token.id.to_string())
            .collect();
        let access: Vec<String> = state
            .issued_secrets()
            .into_iter()
            .filter_map(|secret| state.look_up(&secret, now))
            .filter(|token| token.name == name)
            .map(|token| token.id.to_string())
            .collect();
        deploy.into_iter().chain(access).collect()
    })
}

/// The GitLab ids tokenwarden knows for token `name`: the stored one and those waiting for their
/// revocation.
async fn known_ids(setup: &Setup, name: &str) -> Vec<String> {
    let name: TokenName = name.parse().unwrap();
    let token = setup
        .harness
        .context
        .store
        .run(move |conn| tokens::find_shown(conn, &name, tokens::ReadAs::Operator))
        .await
        .unwrap();
    token.external_id.into_iter().chain(token.pending_revocations.into_iter().map(|p| p.external_id)).collect()
}

#[tokio::test]
async fn under_admin_faults_deploy_rotations_creates_and_heals_never_leave_a_token_tokenwarden_does_not_know() {
    use rand::{Rng, SeedableRng};
    let setup = {
        let setup = setup_with(engine_settings(Duration::from_millis(300))).await;
        let expires = start_time().date_naive() + Days::new(300);
        setup.harness.track_access_token("manager", TokenOwner::Personal, expires).await.unwrap();
        setup.harness.sim.with_state(|state| state.memberships.insert(SimNamespace::Project("42".into()), 40));
        setup
    };
    let context = &setup.harness.context;
    create_token(context, request(Namespace::Project("42".into()), Some(TimeDelta::minutes(5))), "ops").await.unwrap();
    create_token(context, access_request("ci"), "ops").await.unwrap();
    setup.harness.add_client("build", ClientRole::Reader, &["registry"], None).await.unwrap();

    let seed: u64 = std::env::var("TOKENWARDEN_FAULT_SEED").ok().and_then(|s| s.parse().ok()).unwrap_or(13);
    eprintln!("seed {seed}");
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let faults = [
        Fault::Status { status: 503 },
        Fault::Status { status: 500 },
        Fault::DropAfterCommit,
        Fault::StallBeforeActing { delay_ms: 400 },
        Fault::SlowAfterCommit { delay_ms: 400 },
    ];
    let (mut deploy_rotations, mut heals, mut creates) = (0, 0, 0);
    for step in 0..50 {
        if rng.random_bool(0.6) {
            let fault = faults[rng.random_range(0..faults.len())];
            let target = if rng.random_bool(0.7) { FaultTarget::Admin } else { FaultTarget::Renewal };
            setup.harness.sim.push_fault(target, fault);
        }
        match rng.random_range(0..5) {
            0 | 1 => {
                if let Ok(tokenwarden::engine::ForcedRotation::Attempted(report)) =
                    rotate_now(context, &"registry".parse().unwrap(), "test").await
                {
                    deploy_rotations +=
                        usize::from(matches!(report.outcome, tokenwarden::engine::RotationOutcome::Rotated { .. }));
                }
            }
            2 => {
                let _ = rotate_now(context, &"ci".parse().unwrap(), "test").await;
            }
            3 => {
                heals += usize::from(
                    tokenwarden::engine::heal::heal(context, &"ci".parse().unwrap(), "ops", true).await.is_ok(),
                )
            }
            _ => {
                // A new token made under the fault: stored with its one live token, or not stored
                // and nothing live, or flagged `create_interrupted` naming the one it could not revoke.
                let name = format!("new-{step:02}");
                let new = if rng.random_bool(0.5) {
                    access_request(&name)
                } else {
                    CreateRequest { name: name.parse().unwrap(), ..request(Namespace::Project("42".into()), None) }
                };
                let made = create_token(context, new, "ops").await;
                let live = live_ids(&setup, &format!("tokenwarden: {name}"));
                match (made, setup.harness.token(&name).await) {
                    (Ok(token), _) => {
                        creates += 1;
                        assert_eq!(live, vec![token.external_id.unwrap()], "step {step}: {name}");
                    }
                    (Err(_), Ok(flagged)) => {
                        assert_eq!(flagged.attention_reason.as_deref(), Some("create_interrupted"), "step {step}");
                        assert!(live.len() <= 1, "step {step}: {name}: {live:?}");
                        tokenwarden::engine::heal::heal(context, &flagged.name, "ops", true).await.unwrap();
                    }
                    (Err(err), Err(_)) => {
                        assert!(live.is_empty(), "step {step}: {name} not stored ({err}) but {live:?} live")
                    }
                }
            }
        }
        setup.clock.advance(TimeDelta::seconds(rng.random_range(1..120)));
        revoke_due(context).await;
        // At rest every live deploy token of the name is the stored one or one being revoked; after
        // a failed attempt at most the one its create may have made is not, and the next attempt
        // revokes it before making another.
        let (live, known) = (live_ids(&setup, GITLAB_NAME), known_ids(&setup, "registry").await);
        let unknown = live.iter().filter(|id| !known.contains(id)).count();
        let state = setup.harness.token("registry").await.unwrap().state;
        let allowed = usize::from(state == TokenState::Retrying);
        assert!(unknown <= allowed, "step {step} ({state}): live deploy tokens {live:?}, known {known:?}");
    }

    // The faults stop: whatever failed is finished, and each name has exactly its stored token.
    setup.harness.sim.clear_faults();
    setup.clock.advance(TimeDelta::hours(2));
    for name in ["registry", "ci"] {
        let token = setup.harness.token(name).await.unwrap();
        if token.state != TokenState::Active {
            tokenwarden::engine::heal::heal(context, &name.parse().unwrap(), "ops", true).await.unwrap();
        }
    }
    setup.clock.advance(TimeDelta::minutes(10));
    while revoke_due(context).await > 0 {}
    for (name, gitlab_name) in [("registry", GITLAB_NAME), ("ci", "tokenwarden: ci")] {
        let stored = setup.harness.token(name).await.unwrap().external_id.unwrap();
        assert_eq!(live_ids(&setup, gitlab_name), vec![stored], "{name}: one live token, the stored one");
    }
    eprintln!(
        "seed {seed}: {deploy_rotations} deploy rotations, {heals} forced heals and {creates} creates under faults; {:?}",
        setup.harness.sim.stats()
    );
    assert!(deploy_rotations >= 1 && heals >= 1 && creates >= 1, "the run exercised rotations, heals and creates");
}

#[test]
fn the_command_line_makes_rotates_and_shows_deploy_tokens_and_refuses_bad_flags() {
    let sandbox = common::Sandbox::new();
    common::killed::sandbox_with_manager(&sandbox);
    let create = ["token", "create", "registry", "--provider", "gitlab", "--kind", "gitlab-deploy-token"];
    let create = [&create[..], &["--project", "42", "--manager", "mgr", "--scope", "read_registry"]].concat();

    let bad_scope = [&create[..], &["--scope", "api"]].concat();
    assert!(sandbox.fails(&bad_scope, "", 2).contains("not a deploy token scope"));
    let both = [&create[..], &["--group", "7"]].concat();
    sandbox.fails(&both, "", 2);
    let access = ["token", "create", "ci", "--provider", "gitlab", "--kind", "gitlab-project-access-token"];
    let overlap_on_access =
        [&access[..], &["--project", "42", "--manager", "mgr", "--scope", "api", "--overlap", "1h"]].concat();
    assert!(sandbox.fails(&overlap_on_access, "", 2).contains("--overlap applies to deploy tokens"));
    let added = ["token", "add", "x", "--provider", "gitlab", "--kind", "gitlab-deploy-token", "--project", "42"];
    assert!(sandbox.fails(&[&added[..], &["--secret-stdin"]].concat(), "gldt-x\n", 2).contains("token create"));

    let with_overlap = [&create[..], &["--overlap", "2h", "--lifetime", "400d"]].concat();
    let out = sandbox.run(&with_overlap, "");
    let (stdout, stderr) = (String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "{stderr}");
    assert!(stderr.contains("--lifetime 400d is beyond GitLab's maximum token lifetime: capped at 365d"), "{stderr}");
    let expires =
        sandbox.token_show("registry")["expires_at"].as_str().unwrap().parse::<chrono::DateTime<chrono::Utc>>();
    let days = (expires.unwrap() - chrono::Utc::now()).num_days();
    assert!((363..=365).contains(&days), "expires in {days} days");
    assert!(!stdout.contains("gldt-") && !stderr.contains("gldt-"), "the secret is never printed");
    sandbox.ok(&["client", "add", "puller", "--role", "reader", "--grant", "registry"], "");
    sandbox.ok(&["token", "rotate", "registry"], "");
    let shown = sandbox.ok(&["token", "show", "registry"], "");
    assert!(shown.contains("username") && shown.contains("gitlab+deploy-token-"), "{shown}");
    assert!(shown.contains("pending revocation") && shown.contains("version 1"), "{shown}");
    let token = sandbox.token_show("registry");
    assert_eq!(token["version"], 2, "{token}");
    assert_eq!(token["pending_revocations"][0]["replaced_by_version"], 2, "{token}");
    assert!(token["pending_revocations"][0]["not_after"].as_str().is_some_and(|at| at.ends_with('Z')), "{token}");
}

#[tokio::test]
async fn a_reader_reads_the_username_with_the_secret_and_its_acknowledgement_over_the_api_retires_the_old_token() {
    let setup = with_manager().await;
    create_token(&setup.harness.context, request(Namespace::Project("42".into()), None), "ops").await.unwrap();
    let key = setup.harness.add_client("puller", ClientRole::Reader, &["registry"], None).await.unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}/v1/tokens/registry", listener.local_addr().unwrap());
    let state = tokenwarden::api::AppState::new(setup.harness.context.store.clone(), setup.harness.context.clone());
    tokio::spawn(async move { axum::serve(listener, tokenwarden::api::router(state)).await });
    let http = reqwest::Client::new();

    rotate(&setup).await;
    let read: serde_json::Value =
        http.get(format!("{base}/secret")).bearer_auth(&key).send().await.unwrap().json().await.unwrap();
    let token = shown(&setup).await;
    assert_eq!(read["version"], 2, "{read}");
    assert_eq!(read["username"].as_str(), token.username.as_deref(), "{read}");
    assert!(read["username"].as_str().is_some_and(|name| name.starts_with("gitlab+deploy-token-")), "{read}");
    assert_eq!(read["secret"].as_str(), setup.harness.secret("registry").await.unwrap().as_deref());

    assert_eq!(revoke_due(&setup.harness.context).await, 0, "the reader has not moved on");
    let acked =
        http.post(format!("{base}/ack")).bearer_auth(&key).json(&serde_json::json!({"version": 2})).send().await;
    assert_eq!(acked.unwrap().status(), reqwest::StatusCode::OK);
    assert_eq!(revoke_due(&setup.harness.context).await, 1, "acknowledged: the old one goes");
    assert_eq!(live(&setup, GITLAB_NAME), vec![read["secret"].as_str().unwrap().to_owned()]);
}

/// The same flows on PostgreSQL: the revocation claim's correlated subqueries, the heal's due
/// query and `check`'s broken-manager join are plain SQL both backends must run alike.
#[tokio::test]
async fn on_postgresql_rotations_acknowledgements_revocations_and_heals_work_alike() {
    let Some(schema) = common::postgres::TestSchema::create() else { return };
    let clock = tokenwarden::engine::ManualClock::new(start_time());
    let harness = EngineHarness::start_on(
        schema.url.clone(),
        std::sync::Arc::new(clock.clone()),
        engine_settings(Duration::from_secs(2)),
    )
    .await
    .unwrap();
    let expires = start_time().date_naive() + Days::new(300);
    harness.track_access_token("manager", TokenOwner::Personal, expires).await.unwrap();
    harness.sim.with_state(|state| state.memberships.insert(SimNamespace::Project("42".into()), 40));
    let context = &harness.context;
    create_token(context, request(Namespace::Project("42".into()), None), "ops").await.unwrap();
    let key = harness.add_client("build", ClientRole::Reader, &["registry"], None).await.unwrap();
    rotate_now(context, &"registry".parse().unwrap(), "test").await.unwrap();
    assert_eq!(revoke_due(context).await, 0, "the reader has not acknowledged");
    ack(&harness, &key, 2).await;
    assert_eq!(revoke_due(context).await, 1);

    create_token(context, access_request("ci"), "ops").await.unwrap();
    let healed = tokenwarden::engine::heal::heal(context, &"ci".parse().unwrap(), "ops", true).await.unwrap();
    assert_eq!(healed.version, 2);
    let now = harness.now();
    let due = context.store.run(move |conn| tokenwarden::store::healing::due(conn, now)).await.unwrap();
    assert!(due.is_empty(), "{due:?}");
    let broken = context.store.run(tokenwarden::store::creation::with_broken_manager).await.unwrap();
    assert!(broken.is_empty(), "{broken:?}");
    context
        .store
        .run(|conn| {
            use diesel::prelude::*;
            use tokenwarden::store::schema::tokens as columns;
            diesel::update(columns::table.filter(columns::name.eq("manager")))
                .set(columns::state.eq("needs_attention"))
                .execute(conn)
                .map_err(tokenwarden::store::StoreError::from)
        })
        .await
        .unwrap();
    let broken = context.store.run(tokenwarden::store::creation::with_broken_manager).await.unwrap();
    let manager = ("manager".to_owned(), "needs_attention".to_owned());
    assert_eq!(
        broken,
        vec![("ci".to_owned(), manager.0.clone(), manager.1.clone()), ("registry".to_owned(), manager.0, manager.1)]
    );
    let ci_live = common::killed::live_in(&harness.sim, "tokenwarden: ci", now).len();
    assert_eq!(ci_live, 1, "the replaced access token was revoked through its revocation row");
}
