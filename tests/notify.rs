//! Webhook delivery from the outbox to real HTTP receivers on loopback, on a manual clock:
//! every request is signed, retries keep the delivery id, every attempt is recorded, a dead
//! or hanging receiver never holds up another client, a delivery failing for a day is
//! abandoned, a crash loses nothing, two dispatchers on one database never send one delivery
//! twice at once, `token.failed` and `token.needs_attention` reach receivers, and the
//! maintenance job prunes delivered rows with their attempts.

mod common;

use std::collections::{HashSet, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::routing::post;
use chrono::{DateTime, Days, NaiveDate, TimeDelta, Utc};
use common::engine_setup::{Setup, engine_settings, setup_with, start_time};
use common::markdown::readme_block;
use secrecy::SecretString;
use tokenwarden::domain::ClientRole;
use tokenwarden::engine::{Clock, ForcedRotation, ManualClock, RotationOutcome, rotate_now};
use tokenwarden::notify::signature::DEFAULT_TOLERANCE;
use tokenwarden::notify::{Dispatcher, DispatcherHandle, DispatcherSettings, SignatureError, verify};
use tokenwarden::simulator::TokenOwner;
use tokenwarden::simulator::harness::EngineHarness;
use tokenwarden::store::clients::{self, NewClient};
use tokenwarden::store::outbox::{self, AfterFailure, Attempt, Delivery, Event, FailureRecorded};
use tokenwarden::store::{Store, StoreError};
use tokio::sync::watch;
use tokio::task::JoinHandle;

fn in_days(days: u64) -> NaiveDate {
    start_time().date_naive() + Days::new(days)
}

async fn setup() -> Setup {
    setup_with(engine_settings(Duration::from_secs(2))).await
}

/// What a test receiver does with one request.
#[derive(Debug, Clone, Copy)]
enum Reply {
    /// Answer with this status.
    Status(u16),
    /// Never answer.
    Hang,
}

/// One request as a receiver saw it, with its signature checked on arrival.
#[derive(Debug, Clone)]
struct Received {
    event: String,
    delivery: String,
    content_type: String,
    body: Vec<u8>,
    signature: String,
    verified: Result<(), SignatureError>,
}

#[derive(Debug, Default)]
struct ReceiverState {
    script: VecDeque<Reply>,
    received: Vec<Received>,
}

#[derive(Debug, Clone)]
struct ReceiverContext {
    state: Arc<Mutex<ReceiverState>>,
    secret: SecretString,
    clock: ManualClock,
}

/// A webhook receiver on loopback: checks each signature with [`verify`] at the test
/// clock's time, then answers as scripted (200 once the script is used up).
#[derive(Debug, Clone)]
struct Receiver {
    url: String,
    state: Arc<Mutex<ReceiverState>>,
}

fn header(headers: &HeaderMap, name: &str) -> String {
    headers.get(name).map(|v| v.to_str().unwrap().to_owned()).unwrap_or_default()
}

async fn receive(State(context): State<ReceiverContext>, headers: HeaderMap, body: Bytes) -> StatusCode {
    let signature = header(&headers, "x-tokenwarden-signature");
    let verified = verify(&context.secret, &signature, &body, context.clock.now(), DEFAULT_TOLERANCE);
    let signature = signature.clone();
    let reply = {
        let mut state = context.state.lock().unwrap();
        state.received.push(Received {
            event: header(&headers, "x-tokenwarden-event"),
            delivery: header(&headers, "x-tokenwarden-delivery"),
            content_type: header(&headers, "content-type"),
            body: body.to_vec(),
            signature,
            verified,
        });
        state.script.pop_front().unwrap_or(Reply::Status(200))
    };
    match reply {
        Reply::Status(status) => StatusCode::from_u16(status).unwrap(),
        Reply::Hang => std::future::pending().await,
    }
}

impl Receiver {
    async fn start(secret: &str, clock: &ManualClock, script: Vec<Reply>) -> Self {
        let state = Arc::new(Mutex::new(ReceiverState { script: script.into(), received: Vec::new() }));
        let context = ReceiverContext {
            state: state.clone(),
            secret: SecretString::from(secret.to_owned()),
            clock: clock.clone(),
        };
        let app = Router::new().route("/hook", post(receive)).with_state(context);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/hook", listener.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        Self { url, state }
    }

    fn received(&self) -> Vec<Received> {
        self.state.lock().unwrap().received.clone()
    }

    /// Polls (in real time, briefly) until at least `count` requests arrived.
    async fn wait_for(&self, count: usize, within: Duration) -> Vec<Received> {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            let received = self.received();
            if received.len() >= count {
                return received;
            }
            assert!(tokio::time::Instant::now() < deadline, "only {} of {count} requests arrived", received.len());
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}

/// A URL where nothing listens.
fn dead_url() -> String {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    drop(listener);
    format!("http://127.0.0.1:{port}/hook")
}

/// Subscribes an operator client (it receives every token's events) with a webhook.
async fn subscribe(harness: &EngineHarness, name: &str, url: &str, secret: &str) {
    let new = NewClient {
        name: name.parse().unwrap(),
        role: ClientRole::Operator,
        grants: Vec::new(),
        webhook_url: Some(url.to_owned()),
    };
    let (cipher, now) = (harness.context.cipher.clone(), harness.now());
    let secret = Some(SecretString::from(secret.to_owned()));
    harness.context.store.run(move |conn| clients::insert(conn, &cipher, &new, secret, "test", now)).await.unwrap();
}

/// Tracks a personal access token and rotates it now, which queues `token.rotated`.
async fn rotate(harness: &EngineHarness, name: &str) {
    if harness.token(name).await.is_err() {
        harness.track_access_token(name, TokenOwner::Personal, in_days(3)).await.unwrap();
    }
    match rotate_now(&harness.context, &name.parse().unwrap(), "test").await.unwrap() {
        ForcedRotation::Attempted(report) => {
            assert!(matches!(report.outcome, RotationOutcome::Rotated { .. }), "{:?}", report.outcome)
        }
        other => panic!("expected a rotation, got {other:?}"),
    }
}

/// A running dispatcher; it stops when this is dropped.
struct Running {
    handle: DispatcherHandle,
    task: JoinHandle<()>,
    _stop: watch::Sender<bool>,
}

fn start_dispatcher(harness: &EngineHarness, store: Store) -> Running {
    let context = &harness.context;
    let dispatcher = Dispatcher::new(store, context.cipher.clone(), context.clock.clone(), context.http.clone())
        .with_settings(DispatcherSettings::default());
    let handle = dispatcher.handle();
    let (stop, stopped) = watch::channel(false);
    let task = tokio::spawn(dispatcher.run(stopped));
    handle.wake();
    Running { handle, task, _stop: stop }
}

async fn deliveries(harness: &EngineHarness, token: &str) -> Vec<Delivery> {
    let token = token.to_owned();
    harness.context.store.run(move |conn| outbox::deliveries_for_token(conn, &token)).await.unwrap()
}

/// Polls (in real time, briefly) until the token's only delivery satisfies `done`.
async fn wait_for_delivery(harness: &EngineHarness, token: &str, done: impl Fn(&Delivery) -> bool) -> Delivery {
    for _ in 0..500 {
        let mut all = deliveries(harness, token).await;
        assert_eq!(all.len(), 1, "one subscriber, one delivery");
        let delivery = all.remove(0);
        if done(&delivery) {
            return delivery;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("the delivery never reached the expected state: {:?}", deliveries(harness, token).await);
}

/// Polls (in real time, briefly) until the counters read (delivered, failed, abandoned); an
/// attempt is counted as it is recorded, so a counter may trail the row by a moment.
async fn wait_for_counters(handle: &DispatcherHandle, expected: (u64, u64, u64)) {
    let counters = handle.counters();
    let read = || (counters.delivered(), counters.failed(), counters.abandoned());
    for _ in 0..500 {
        if read() == expected {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(read(), expected, "(delivered, failed, abandoned)");
}

fn json(body: &[u8]) -> serde_json::Value {
    serde_json::from_slice(body).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rotation_is_delivered_signed_with_the_committed_payload() {
    let Setup { harness, clock, _dir } = setup().await;
    let receiver = Receiver::start("whsec_ops", &clock, Vec::new()).await;
    subscribe(&harness, "ops", &receiver.url, "whsec_ops").await;
    let running = start_dispatcher(&harness, harness.context.store.clone());

    rotate(&harness, "t").await;
    running.handle.wake();
    let received = receiver.wait_for(1, Duration::from_secs(5)).await;
    let delivery = wait_for_delivery(&harness, "t", |d| d.delivered_at.is_some()).await;

    let request = &received[0];
    assert_eq!(request.verified, Ok(()), "the receiver verifies the signature");
    assert_eq!(request.event, "token.rotated");
    assert_eq!(request.content_type, "application/json");
    assert_eq!(request.body, delivery.payload.as_bytes(), "the body is the committed payload, byte for byte");
    let body = json(&request.body);
    assert_eq!(body["id"], request.delivery.as_str());
    assert_eq!(request.delivery, delivery.id);
    assert_eq!(
        (body["event"].as_str(), body["token"].as_str(), body["version"].as_i64()),
        (Some("token.rotated"), Some("t"), Some(2))
    );
    assert!(body.get("secret").is_none(), "never the secret");
    assert_eq!((delivery.attempts, delivery.delivered_at), (1, Some(start_time())));
    assert_eq!((delivery.leased_until, delivery.lease_owner), (None, None), "the lease is released");
    wait_for_counters(&running.handle, (1, 0, 0)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn during_a_webhook_secret_overlap_deliveries_verify_with_the_old_and_the_new_secret_and_after_it_only_the_new() {
    let Setup { harness, clock, _dir } = setup().await;
    // The receiver still knows only the secret the client had.
    let receiver = Receiver::start("whsec_old", &clock, Vec::new()).await;
    subscribe(&harness, "ops", &receiver.url, "whsec_old").await;
    let new_secret = SecretString::from("whsec_new".to_owned());
    let (cipher, now, stored) = (harness.context.cipher.clone(), harness.now(), new_secret.clone());
    let overlap = TimeDelta::hours(1);
    harness
        .context
        .store
        .run(move |conn| {
            clients::rotate_webhook_secret(conn, &cipher, &"ops".parse().unwrap(), &stored, overlap, "test", now)
        })
        .await
        .unwrap();
    let running = start_dispatcher(&harness, harness.context.store.clone());

    rotate(&harness, "t").await;
    running.handle.wake();
    let during = receiver.wait_for(1, Duration::from_secs(5)).await.remove(0);
    assert_eq!(during.verified, Ok(()), "the old secret still verifies during the overlap: {}", during.signature);
    assert_eq!(verify(&new_secret, &during.signature, &during.body, clock.now(), DEFAULT_TOLERANCE), Ok(()));
    assert_eq!(during.signature.matches("v1=").count(), 2, "{}", during.signature);

    clock.advance(TimeDelta::hours(1) + TimeDelta::seconds(1));
    rotate(&harness, "t").await;
    running.handle.wake();
    let after = receiver.wait_for(2, Duration::from_secs(5)).await.remove(1);
    assert_eq!(after.verified, Err(SignatureError::Mismatch), "the overlap is over: {}", after.signature);
    assert_eq!(verify(&new_secret, &after.signature, &after.body, clock.now(), DEFAULT_TOLERANCE), Ok(()));
    assert_eq!(after.signature.matches("v1=").count(), 1, "{}", after.signature);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_receiver_gets_the_same_delivery_id_on_every_retry_until_it_accepts() {
    let Setup { harness, clock, _dir } = setup().await;
    let script = vec![Reply::Status(500), Reply::Status(500), Reply::Status(500)];
    let receiver = Receiver::start("whsec_ops", &clock, script).await;
    subscribe(&harness, "ops", &receiver.url, "whsec_ops").await;
    let running = start_dispatcher(&harness, harness.context.store.clone());
    rotate(&harness, "t").await;
    running.handle.wake();

    for attempt in 1..=3 {
        let delivery = wait_for_delivery(&harness, "t", |d| d.attempts == attempt && d.lease_owner.is_none()).await;
        assert_eq!(delivery.delivered_at, None);
        assert_eq!(delivery.last_error.as_deref(), Some("the receiver answered HTTP 500"));
        let wait = delivery.next_attempt_at - clock.now();
        let ceiling = TimeDelta::seconds(10 << (attempt - 1));
        assert!(wait >= TimeDelta::seconds(1) && wait <= ceiling, "attempt {attempt}: waits {wait}, at most {ceiling}");
        clock.set(delivery.next_attempt_at);
    }
    let delivery = wait_for_delivery(&harness, "t", |d| d.delivered_at.is_some()).await;
    assert_eq!(delivery.attempts, 4);
    let received = receiver.received();
    assert_eq!(received.len(), 4);
    for request in &received {
        assert_eq!(request.delivery, delivery.id, "one delivery id across retries");
        assert_eq!(json(&request.body)["id"], delivery.id.as_str());
        assert_eq!(request.verified, Ok(()), "each retry is signed afresh");
    }
    wait_for_counters(&running.handle, (1, 3, 0)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_or_hanging_receiver_does_not_delay_delivery_to_a_healthy_one() {
    let Setup { harness, clock, _dir } = setup().await;
    let hanging = Receiver::start("whsec_hanging", &clock, vec![Reply::Hang; 10]).await;
    let healthy = Receiver::start("whsec_healthy", &clock, Vec::new()).await;
    subscribe(&harness, "dead", &dead_url(), "whsec_dead").await;
    subscribe(&harness, "hanging", &hanging.url, "whsec_hanging").await;
    subscribe(&harness, "healthy", &healthy.url, "whsec_healthy").await;
    let running = start_dispatcher(&harness, harness.context.store.clone());

    rotate(&harness, "t").await;
    running.handle.wake();
    let quickly = Duration::from_secs(3);
    healthy.wait_for(1, quickly).await;
    hanging.wait_for(1, quickly).await;
    rotate(&harness, "t").await;
    running.handle.wake();
    let received = healthy.wait_for(2, quickly).await;
    assert!(received.iter().all(|r| r.verified.is_ok()));
    assert_eq!(hanging.received().len(), 1, "the hanging client has one delivery in flight, not two");

    let dead =
        wait_for_client(&harness, "dead", |ds| ds.iter().any(|d| d.attempts == 1 && d.lease_owner.is_none())).await;
    assert!(dead.iter().all(|d| d.delivered_at.is_none()));
    let failed = dead.iter().find(|d| d.attempts == 1).unwrap();
    assert!(failed.last_error.as_deref().unwrap().starts_with("cannot connect to the receiver"), "{failed:?}");
    wait_for_client(&harness, "healthy", |ds| ds.iter().all(|d| d.delivered_at.is_some() && d.attempts == 1)).await;
    let stuck = wait_for_client(&harness, "hanging", |_| true).await;
    assert_eq!(stuck.iter().filter(|d| d.lease_owner.is_some()).count(), 1, "{stuck:?}");
    assert!(stuck.iter().all(|d| d.attempts == 0 && d.delivered_at.is_none()), "{stuck:?}");
}

/// The JSON body a receiver must get for `event` about token `t` at `version`, given the
/// delivery id and the token's expiry.
fn expected_body(id: &str, event: &str, version: i64, expires_at: DateTime<Utc>) -> serde_json::Value {
    serde_json::json!({
        "id": id,
        "event": event,
        "token": "t",
        "version": version,
        "expires_at": expires_at.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
        "occurred_at": start_time().to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
    })
}

/// Forces a rotation of `t` and returns how it ended.
async fn force(harness: &EngineHarness) -> RotationOutcome {
    match rotate_now(&harness.context, &"t".parse().unwrap(), "test").await.unwrap() {
        ForcedRotation::Attempted(report) => report.outcome,
        other => panic!("expected an attempt, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failure_streak_and_a_permanent_failure_are_delivered_signed_with_their_bodies() {
    use tokenwarden::simulator::{Fault, FaultTarget};
    use tokenwarden::store::rotation::FAILED_EVENT_THRESHOLD;

    let Setup { harness, clock, _dir } = setup().await;
    let receiver = Receiver::start("whsec_ops", &clock, Vec::new()).await;
    subscribe(&harness, "ops", &receiver.url, "whsec_ops").await;
    let secret = harness.track_access_token("t", TokenOwner::Personal, in_days(30)).await.unwrap();
    let expires_at = harness.token("t").await.unwrap().expires_at.unwrap();
    let running = start_dispatcher(&harness, harness.context.store.clone());

    for failure in 1..=FAILED_EVENT_THRESHOLD {
        harness.sim.push_fault(FaultTarget::Renewal, Fault::Status { status: 503 });
        assert!(matches!(force(&harness).await, RotationOutcome::Retrying { .. }), "failure {failure}");
        let queued = deliveries(&harness, "t").await;
        let expected = usize::from(failure == FAILED_EVENT_THRESHOLD);
        assert_eq!(queued.len(), expected, "token.failed is queued at failure number {FAILED_EVENT_THRESHOLD} only");
    }
    running.handle.wake();
    let failed = wait_for_delivery(&harness, "t", |d| d.delivered_at.is_some()).await;
    let received = receiver.wait_for(1, Duration::from_secs(5)).await;
    let request = &received[0];
    assert_eq!((request.event.as_str(), request.verified.clone()), ("token.failed", Ok(())));
    assert_eq!(request.delivery, failed.id);
    assert_eq!(json(&request.body), expected_body(&failed.id, "token.failed", 1, expires_at));

    harness.sim.with_state(|state| state.revoke(&secret));
    assert!(matches!(force(&harness).await, RotationOutcome::NeedsAttention { .. }));
    running.handle.wake();
    let received = receiver.wait_for(2, Duration::from_secs(5)).await;
    let request = &received[1];
    let all = deliveries(&harness, "t").await;
    let attention = all.iter().find(|d| d.event == "token.needs_attention").expect("queued");
    assert_eq!((request.event.as_str(), request.verified.clone()), ("token.needs_attention", Ok(())));
    assert_eq!(request.delivery, attention.id);
    let mut expected = expected_body(&attention.id, "token.needs_attention", 1, expires_at);
    expected["reason"] = "revoked".into();
    expected["remedy"] = "replace".into();
    assert_eq!(json(&request.body), expected, "a needs_attention body says why and what to do");
    wait_for_row(&harness, &attention.id, |d| d.delivered_at.is_some() && d.attempts == 1).await;
    assert_eq!(receiver.received().len(), 2, "one delivery per event");
    let stats = harness.sim.stats();
    assert_eq!((stats.rotations, stats.family_revocations), (0, 0), "{stats:?}");
}

/// Polls (in real time, briefly) until the deliveries about token `t` to `client` satisfy `done`.
async fn wait_for_client(harness: &EngineHarness, client: &str, done: impl Fn(&[Delivery]) -> bool) -> Vec<Delivery> {
    let clients = harness.context.store.run(clients::list).await.unwrap();
    let id = clients.into_iter().find(|c| c.name.as_str() == client).unwrap().id;
    for _ in 0..500 {
        let mine: Vec<Delivery> = deliveries(harness, "t").await.into_iter().filter(|d| d.client_id == id).collect();
        if done(&mine) {
            return mine;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("deliveries to {client} never reached the expected state: {:?}", deliveries(harness, "t").await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_delivery_still_failing_a_day_after_it_was_queued_is_abandoned() {
    let Setup { harness, clock, _dir } = setup().await;
    let receiver = Receiver::start("whsec_ops", &clock, vec![Reply::Status(503); 10]).await;
    subscribe(&harness, "ops", &receiver.url, "whsec_ops").await;
    let running = start_dispatcher(&harness, harness.context.store.clone());
    rotate(&harness, "t").await;
    running.handle.wake();
    let queued = wait_for_delivery(&harness, "t", |d| d.attempts == 1 && d.lease_owner.is_none()).await;

    clock.set(queued.created_at + TimeDelta::hours(23));
    let delivery = wait_for_delivery(&harness, "t", |d| d.attempts == 2 && d.lease_owner.is_none()).await;
    assert_eq!(delivery.abandoned_at, None, "still retried 23 hours in");
    assert!(delivery.next_attempt_at <= clock.now() + TimeDelta::hours(1), "no wait is longer than an hour");

    clock.set(queued.created_at + TimeDelta::hours(24));
    let delivery = wait_for_delivery(&harness, "t", |d| d.abandoned_at.is_some()).await;
    assert_eq!((delivery.attempts, delivery.delivered_at), (3, None));
    assert_eq!(delivery.abandoned_at, Some(clock.now()));
    assert_eq!(delivery.last_error.as_deref(), Some("the receiver answered HTTP 503"));
    wait_for_counters(&running.handle, (0, 3, 1)).await;

    let later = clock.now() + TimeDelta::days(2);
    let claimed = harness
        .context
        .store
        .run(move |conn| outbox::claim_due(conn, "probe", later, TimeDelta::minutes(1), 10, &[]))
        .await;
    assert!(claimed.unwrap().is_empty(), "an abandoned delivery is never sent again");
    let pending = harness.context.store.run(|conn| outbox::pending_for_token(conn, "t")).await.unwrap();
    assert!(pending.is_empty());
    assert_eq!(receiver.received().len(), 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crash_after_sending_loses_nothing_and_the_next_dispatcher_sends_the_same_id() {
    let Setup { harness, clock, _dir } = setup().await;
    let receiver = Receiver::start("whsec_ops", &clock, vec![Reply::Hang]).await;
    subscribe(&harness, "ops", &receiver.url, "whsec_ops").await;
    rotate(&harness, "t").await;
    let queued = wait_for_delivery(&harness, "t", |_| true).await;

    let first = start_dispatcher(&harness, harness.context.store.clone());
    receiver.wait_for(1, Duration::from_secs(5)).await;
    let claimed = wait_for_delivery(&harness, "t", |d| d.lease_owner.is_some()).await;
    first.task.abort();
    assert!(first.task.await.unwrap_err().is_cancelled(), "the first dispatcher died without recording anything");
    assert_eq!((claimed.attempts, claimed.delivered_at), (0, None));

    let second = start_dispatcher(&harness, harness.context.store.clone());
    clock.set(claimed.leased_until.unwrap());
    let delivery = wait_for_delivery(&harness, "t", |d| d.delivered_at.is_some()).await;
    assert_eq!(delivery.id, queued.id);
    assert_eq!(delivery.attempts, 1);
    let received = receiver.received();
    assert_eq!(received.len(), 2, "sent again once the dead dispatcher's lease ran out");
    assert!(received.iter().all(|r| r.delivery == queued.id && r.verified.is_ok()));
    assert_eq!(second.handle.counters().delivered(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_dispatchers_on_one_database_send_each_delivery_once() {
    let Setup { harness, clock, _dir } = setup().await;
    let receiver = Receiver::start("whsec_shared", &clock, Vec::new()).await;
    for client in ["a", "b", "c", "d"] {
        subscribe(&harness, client, &receiver.url, "whsec_shared").await;
    }
    for token in ["t1", "t2", "t3", "t4", "t5"] {
        rotate(&harness, token).await;
    }
    let other_process = Store::open(harness.context.store.url()).unwrap();
    let first = start_dispatcher(&harness, harness.context.store.clone());
    let second = start_dispatcher(&harness, other_process);

    receiver.wait_for(20, Duration::from_secs(10)).await;
    for token in ["t1", "t2", "t3", "t4", "t5"] {
        for delivery in deliveries(&harness, token).await {
            wait_for_row(&harness, &delivery.id, |d| d.delivered_at.is_some() && d.attempts == 1).await;
        }
    }
    let received = receiver.received();
    assert_eq!(received.len(), 20, "each of 4 clients × 5 rotations is sent exactly once");
    let ids: HashSet<String> = received.into_iter().map(|r| r.delivery).collect();
    assert_eq!(ids.len(), 20);
    let (a, b) = (first.handle.counters().delivered(), second.handle.counters().delivered());
    assert_eq!(a + b, 20, "{a} + {b}");
}

/// Polls (in real time, briefly) until delivery `id` satisfies `done`.
async fn wait_for_row(harness: &EngineHarness, id: &str, done: impl Fn(&Delivery) -> bool) -> Delivery {
    for _ in 0..500 {
        let id = id.to_owned();
        let delivery = harness.context.store.run(move |conn| outbox::find(conn, &id)).await.unwrap().unwrap();
        if done(&delivery) {
            return delivery;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("delivery {id} never reached the expected state");
}

/// Queues one `token.rotated` for token `t` to every subscriber, as a rotation commit would.
async fn enqueue(harness: &EngineHarness) -> Result<usize, StoreError> {
    let now = harness.now();
    harness
        .context
        .store
        .run(move |conn| conn.write_transaction(|conn| outbox::enqueue(conn, Event::Rotated, "t", 2, None, now)))
        .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_claim_gives_each_client_one_delivery_and_an_expired_lease_fences_its_old_holder() {
    let Setup { harness, _dir, .. } = setup().await;
    subscribe(&harness, "a", "http://127.0.0.1:9/a", "whsec_a").await;
    subscribe(&harness, "b", "http://127.0.0.1:9/b", "whsec_b").await;
    for _ in 0..3 {
        assert_eq!(enqueue(&harness).await.unwrap(), 2);
    }
    let store = harness.context.store.clone();
    let now = harness.now();
    let lease = TimeDelta::minutes(1);
    let claim = |owner: &'static str, at: DateTime<Utc>| {
        let store = store.clone();
        async move { store.run(move |conn| outbox::claim_due(conn, owner, at, lease, 10, &[])).await.unwrap() }
    };

    let (first, second) = tokio::join!(claim("one", now), claim("two", now));
    assert_eq!(first.len() + second.len(), 2, "one delivery per client, whoever claims");
    let held: Vec<_> = first.iter().chain(&second).collect();
    assert_ne!(held[0].client_id, held[1].client_id);
    let oldest = deliveries(&harness, "t").await;
    assert!(held.iter().all(|d| oldest.iter().take(2).any(|o| o.id == d.id)), "oldest first");
    assert!(claim("three", now + TimeDelta::seconds(59)).await.is_empty(), "clients with a live lease wait");

    let taken_over = claim("three", now + lease).await;
    assert_eq!(taken_over.len(), 2, "a lease that ran out passes on");
    let stale = held[0];
    let (id, retry) = (stale.id.clone(), AfterFailure::RetryAt(now + TimeDelta::hours(1)));
    let owner = if first.iter().any(|d| d.id == stale.id) { "one" } else { "two" };
    let late = attempt_at(now + lease, None, Some("late"));
    let recorded =
        store.run(move |conn| outbox::record_failure(conn, &id, owner, &late, now + lease, retry)).await.unwrap();
    assert_eq!(recorded, FailureRecorded::LeaseLost, "the old holder cannot reschedule it");
    let row = wait_for_row(&harness, &stale.id, |_| true).await;
    assert_eq!((row.lease_owner.as_deref(), row.attempts), (Some("three"), 0));
}

/// An attempt made at `at` that took 5 ms.
fn attempt_at(at: DateTime<Utc>, status: Option<u16>, error: Option<&str>) -> Attempt {
    Attempt { attempted_at: at, status, error: error.map(str::to_owned), duration: Duration::from_millis(5) }
}

async fn attempts(harness: &EngineHarness, id: &str) -> Vec<Attempt> {
    let id = id.to_owned();
    harness.context.store.run(move |conn| outbox::attempts(conn, &id)).await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delivered_rows_and_their_attempts_are_pruned_after_the_retention_and_pending_ones_never() {
    let Setup { harness, _dir, .. } = setup().await;
    subscribe(&harness, "a", "http://127.0.0.1:9/a", "whsec_a").await;
    enqueue(&harness).await.unwrap();
    enqueue(&harness).await.unwrap();
    let store = harness.context.store.clone();
    let now = harness.now();
    let claimed =
        store.run(move |conn| outbox::claim_due(conn, "one", now, TimeDelta::minutes(1), 10, &[])).await.unwrap();
    let id = claimed[0].id.clone();
    let delivered = id.clone();
    let ok = attempt_at(now, Some(204), None);
    assert!(store.run(move |conn| outbox::record_success(conn, &delivered, &ok, now)).await.unwrap());
    assert_eq!(attempts(&harness, &id).await.len(), 1);

    let kept = store.run(move |conn| outbox::prune_delivered(conn, now)).await.unwrap();
    assert_eq!(kept, 0, "delivered at the cut-off is kept");
    let pruned = store.run(move |conn| outbox::prune_delivered(conn, now + TimeDelta::days(30))).await.unwrap();
    assert_eq!(pruned, 1);
    let left = deliveries(&harness, "t").await;
    assert_eq!(left.len(), 1);
    assert_eq!(left[0].delivered_at, None, "the pending delivery stays");
    assert!(attempts(&harness, &id).await.is_empty(), "the pruned delivery's attempts went with it");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_attempt_is_recorded_with_its_status_or_error_and_duration_and_no_url() {
    let Setup { harness, clock, _dir } = setup().await;
    let script = vec![Reply::Status(500), Reply::Status(502), Reply::Status(500)];
    let receiver = Receiver::start("whsec_ops", &clock, script).await;
    subscribe(&harness, "ops", &receiver.url, "whsec_ops").await;
    let dead = dead_url();
    subscribe(&harness, "dead", &dead, "whsec_dead").await;
    let running = start_dispatcher(&harness, harness.context.store.clone());
    rotate(&harness, "t").await;
    running.handle.wake();

    let ops =
        wait_for_client(&harness, "ops", |ds| ds.iter().all(|d| d.attempts == 1 && d.lease_owner.is_none())).await;
    let mut sent_at = vec![clock.now()];
    for attempt in 2..=4 {
        let delivery =
            wait_for_row(&harness, &ops[0].id, |d| d.attempts == attempt - 1 && d.lease_owner.is_none()).await;
        clock.set(delivery.next_attempt_at);
        sent_at.push(clock.now());
        wait_for_row(&harness, &ops[0].id, |d| d.attempts == attempt && d.lease_owner.is_none()).await;
    }
    let delivery = wait_for_row(&harness, &ops[0].id, |d| d.delivered_at.is_some()).await;
    assert_eq!(delivery.attempts, 4);
    assert_eq!(receiver.received().len(), 4);

    let recorded = attempts(&harness, &delivery.id).await;
    assert_eq!(recorded.len(), 4, "3 failures then a success are 4 attempts: {recorded:?}");
    let outcomes: Vec<(Option<u16>, Option<&str>)> = recorded.iter().map(|a| (a.status, a.error.as_deref())).collect();
    assert_eq!(
        outcomes,
        [
            (Some(500), Some("the receiver answered HTTP 500")),
            (Some(502), Some("the receiver answered HTTP 502")),
            (Some(500), Some("the receiver answered HTTP 500")),
            (Some(200), None),
        ]
    );
    let times: Vec<DateTime<Utc>> = recorded.iter().map(|a| a.attempted_at).collect();
    assert_eq!(times, sent_at, "each attempt at the moment it was sent");
    assert!(recorded.iter().all(|a| a.duration < Duration::from_secs(5)), "{recorded:?}");

    let failed = wait_for_client(&harness, "dead", |ds| ds.iter().all(|d| d.attempts >= 1)).await;
    let refused = attempts(&harness, &failed[0].id).await;
    assert_eq!(refused[0].status, None, "no answer, no status");
    let error = refused[0].error.as_deref().unwrap();
    assert!(error.starts_with("cannot connect to the receiver"), "{error}");
    let port = dead.rsplit(':').next().unwrap().trim_end_matches("/hook");
    assert!(!error.contains("/hook") && !error.contains(port), "no URL in the stored error: {error}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_prune_job_removes_delivered_rows_and_their_attempts_past_the_retention_and_keeps_pending_ones() {
    use tokenwarden::config::{HumanDuration, MaintenanceConfig};
    use tokenwarden::engine::maintenance::{self, MaintenanceContext};
    use tokenwarden::engine::{Limits, Scheduler};

    let Setup { harness, clock, _dir } = setup().await;
    let receiver = Receiver::start("whsec_ops", &clock, Vec::new()).await;
    subscribe(&harness, "ops", &receiver.url, "whsec_ops").await;
    subscribe(&harness, "later", "http://127.0.0.1:9/later", "whsec_later").await;
    harness.track_access_token("recent", TokenOwner::Personal, in_days(60)).await.unwrap();
    let running = start_dispatcher(&harness, harness.context.store.clone());
    rotate(&harness, "old").await;
    running.handle.wake();
    wait_for_client_deliveries(&harness, "old", |ds| ds.iter().any(|d| d.delivered_at.is_some())).await;
    clock.advance(TimeDelta::days(5));
    rotate(&harness, "recent").await;
    running.handle.wake();
    wait_for_client_deliveries(&harness, "recent", |ds| ds.iter().any(|d| d.delivered_at.is_some())).await;
    drop(running);
    let old = deliveries(&harness, "old").await;
    let delivered_old = old.iter().find(|d| d.delivered_at.is_some()).unwrap().clone();
    assert_eq!(attempts(&harness, &delivered_old.id).await.len(), 1);

    clock.advance(TimeDelta::days(1));
    let config = MaintenanceConfig { outbox_retention: HumanDuration::days(4), ..MaintenanceConfig::default() };
    let context = MaintenanceContext {
        engine: harness.context.clone(),
        scheduler: Scheduler::new(harness.context.clone(), Limits::default()).handle(),
        deliveries: None,
        audit_retention: TimeDelta::days(365),
    };
    let mut jobs = maintenance::start(&config, context).await.unwrap();
    jobs.shutdown().await.unwrap();

    let old = deliveries(&harness, "old").await;
    assert_eq!(old.len(), 1, "delivered 6 days ago, past the 4-day retention: gone; the pending one stays: {old:?}");
    assert_eq!(old[0].delivered_at, None);
    assert!(attempts(&harness, &delivered_old.id).await.is_empty(), "its attempts went with it");
    let recent = deliveries(&harness, "recent").await;
    assert_eq!(recent.len(), 2, "delivered a day ago: kept");
    let kept = recent.iter().find(|d| d.delivered_at.is_some()).unwrap();
    assert_eq!(attempts(&harness, &kept.id).await.len(), 1);
}

/// Polls (in real time, briefly) until the deliveries about `token` satisfy `done`.
async fn wait_for_client_deliveries(
    harness: &EngineHarness,
    token: &str,
    done: impl Fn(&[Delivery]) -> bool,
) -> Vec<Delivery> {
    for _ in 0..500 {
        let all = deliveries(harness, token).await;
        if done(&all) {
            return all;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("deliveries about {token} never reached the expected state: {:?}", deliveries(harness, token).await);
}

/// What the README's Python and shell snippets say about one delivery: (python, shell) exit codes.
fn run_readme_snippets(dir: &std::path::Path, secret: &str, signature: &str, body: &[u8]) -> (i32, i32) {
    use std::process::Command;
    let python = format!(
        "{}\n\nimport os, sys\nbody = open(sys.argv[1], 'rb').read()\nsecret, signature = os.environ['WEBHOOK_SECRET'], os.environ['SIGNATURE']\nok = verify_signature(secret, signature, body)\nseen = set()\nfirst, again = handle(secret, signature, body, seen), handle(secret, signature, body, seen)\nassert (first, again) == ((204, 200) if ok else (401, 401)), (first, again)\nsys.exit(0 if ok else 1)\n",
        readme_block("python", "def verify_signature")
    );
    std::fs::write(dir.join("verify.py"), python).unwrap();
    std::fs::write(dir.join("verify.sh"), readme_block("sh", "openssl dgst")).unwrap();
    std::fs::write(dir.join("body.json"), body).unwrap();
    let run = |program: &str, script: &str| {
        let out = Command::new(program)
            .current_dir(dir)
            .arg(script)
            .arg("body.json")
            .env("WEBHOOK_SECRET", secret)
            .env("SIGNATURE", signature)
            .output()
            .unwrap_or_else(|err| panic!("cannot run {program}: {err}"));
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!stderr.contains("Traceback") && !stderr.contains("not found"), "{program} {script}: {stderr}");
        out.status.code().unwrap()
    };
    (run("python3", "verify.py"), run("sh", "verify.sh"))
}

#[test]
fn the_readme_verification_snippets_accept_tokenwardens_signatures_and_reject_forged_stale_or_altered_ones() {
    use tokenwarden::notify::sign;
    let dir = tempfile::tempdir().unwrap();
    let secret = "whsec_5f1c0e9a7b3d2c4e6f8a0b1c2d3e4f5a6b7c8d9e0f1a2b3c4d5e6f7a8b9c0d1e";
    let key = SecretString::from(secret.to_owned());
    let body = br#"{"id":"0193a7c4-5b1e-7d2a-9c41-2f0e8b6d1a37","event":"token.rotated","token":"dbt-ci","version":8,"expires_at":"2027-02-23T00:00:00Z","occurred_at":"2026-11-25T10:00:03Z"}"#;
    let now = Utc::now();
    let valid = sign(&key, now, body);
    assert_eq!(run_readme_snippets(dir.path(), secret, &valid, body), (0, 0), "a real signature: {valid}");

    let (t, v1) = valid.split_once(',').unwrap();
    let rotated = format!("{t},v1={},{v1},scheme=future", "0".repeat(64));
    assert_eq!(
        run_readme_snippets(dir.path(), secret, &rotated, body),
        (0, 0),
        "any matching v1; unknown parts ignored"
    );

    let other_secret = sign(&SecretString::from("whsec_other".to_owned()), now, body);
    let stale = sign(&key, now - TimeDelta::minutes(6), body);
    let future = sign(&key, now + TimeDelta::minutes(6), body);
    let mut altered = body.to_vec();
    altered.extend_from_slice(b" ");
    for (what, signature, body) in [
        ("signed with another secret", other_secret.as_str(), &body[..]),
        ("six minutes old", stale.as_str(), &body[..]),
        ("six minutes ahead", future.as_str(), &body[..]),
        ("the body was altered", valid.as_str(), &altered[..]),
        ("no timestamp", v1, &body[..]),
        ("garbage", "t=soon,v1=nope", &body[..]),
    ] {
        assert_eq!(run_readme_snippets(dir.path(), secret, signature, body), (1, 1), "{what} must be rejected");
    }
    assert_eq!(verify(&key, &valid, body, now, DEFAULT_TOLERANCE), Ok(()), "and tokenwarden's own check agrees");
}
