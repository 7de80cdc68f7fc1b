//! Crash chaos: the real `tokenwarden serve` against the in-repo GitLab simulator, killed with
//! SIGKILL at random moments and restarted on the same store, hundreds of times, while the
//! simulator drops a few percent of renewal answers after it has acted on them.
//!
//! The store holds many OAuth grants whose access tokens live seconds (so a grant is refreshed
//! every few seconds, and most kills find refreshes in flight) and GitLab project access tokens
//! that are due at once (added in waves, so kills meet GitLab rotations throughout the run).
//! Grants flagged lost are replaced by fresh ones every 10 kills, so a long run keeps renewing.
//! Each wave also makes a deploy token through a manager (`token create`), due at once: its
//! rotation creates a successor and revokes the old one, so kills meet those too, and at the end
//! GitLab holds exactly one live deploy token of each name, the stored one, with no revocation
//! waiting (issue 13).
//! Each daemon is killed after a random delay, just after it said it is serving, or while it
//! holds rotation leases. A final daemon then runs with no faults until every token is settled
//! and every webhook delivered, and the test checks, against the simulator's own records:
//! no token family revoked, no dead refresh token sent more than once, every token either holds
//! a secret GitLab accepts or needs attention because its credential was used up with the answer
//! lost, GitLab's renewals equal the versions stored plus the answers lost (nothing renewed
//! twice), every lost credential has a cause (below), kills landing in the commit gap are rare
//! (at most one in ten; one in five in restart bursts), and every committed version reached the webhook receiver under one
//! delivery id however often it was sent.
//!
//! Three regimes, one test each (run one after the other):
//! - **blind retry**: access tokens live 20 s, so when a killed daemon's lease runs out the
//!   access token has less than the engine's `PROBE_MARGIN` (30 s) left and recovery is the
//!   single blind retry: a grant whose refresh had reached GitLab is refused as a reuse and
//!   flagged `grant_lost` — at most one reuse per lost grant — and a kill during that retry
//!   costs the grant by design.
//! - **probe**: access tokens live 90 s, so recovery asks GitLab about the old access token and
//!   never sends a refresh token blindly: no reuse at all.
//! - **restart burst** (issue 11): 20 grants whose access tokens live 4 s, so most are due
//!   whenever a daemon starts, and every daemon killed 0.2–1.2 s after its start: the burst of
//!   answers after a crash or a deploy, where the commit gap is widest. A quarter as many kills.
//!
//! Every lost credential is explained from the simulator's log of renewals (family, time, answer
//! cut off or not): its family's last renewal had its answer cut off; or a kill stopped the
//! daemon after GitLab acted and before the commit (the commit gap — the report prints how long
//! after GitLab acted each such kill landed); or GitLab acted after the daemon that asked was
//! dead (the request was on its way: no client can help that); or a kill cut the single blind
//! retry. The report also pairs every `rotated` line the daemons logged with the renewal it
//! stored, giving the whole window from GitLab acting to our commit.
//!
//! Size: `TOKENWARDEN_CHAOS_KILLS` (default 200: the blind-retry test kills 200 daemons, the probe
//! test half as many; about three and a half minutes in all on two cores, a minute of each test
//! waiting out webhook delivery leases left by killed daemons).
//! Replay: `TOKENWARDEN_CHAOS_SEED` (printed at the start). A longer manual run:
//! `TOKENWARDEN_CHAOS_KILLS=2000 cargo test --release --test chaos -- --nocapture`.
//! `TOKENWARDEN_CHAOS_DEBUG=1` prints, for each lost credential, the kill that cut it and what
//! that daemon logged about it; `TOKENWARDEN_CHAOS_LOG` sets the daemons' `RUST_LOG`.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::http::{HeaderMap, StatusCode};
use axum::routing::post;
use chrono::Utc;
use common::Sandbox;
use common::serve_process::ServeProcess;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use secrecy::{ExposeSecret, SecretString};
use tokenwarden::config::DatabaseUrl;
use tokenwarden::crypto::{Cipher, MasterKey};
use tokenwarden::domain::{PolicyOverrides, ProviderName, TokenKind, TokenName, TokenState};
use tokenwarden::notify::signature::DEFAULT_TOLERANCE;
use tokenwarden::notify::verify;
use tokenwarden::simulator::{FaultRates, Renewal, Simulator, Stats, TokenOwner};
use tokenwarden::store::models::Token;
use tokenwarden::store::outbox;
use tokenwarden::store::tokens::{self, NewToken, SecretField};
use tokenwarden::store::{DbConnection, connect, pending_revocations};

/// Kills in CI's setting (overridden by `TOKENWARDEN_CHAOS_KILLS`).
const DEFAULT_KILLS: usize = 200;
/// OAuth grants tracked.
const GRANTS: usize = 120;
/// GitLab project access tokens added (due at once) per wave.
const GITLAB_PER_WAVE: usize = 6;
/// Waves of GitLab tokens, spread evenly over the kills.
const GITLAB_WAVES: usize = 10;
/// Lifetime of access tokens issued once the chaos is over: nothing falls due again.
const SETTLED_LIFETIME: Duration = Duration::from_secs(7_200);
/// Short provider timeouts so leases left by a killed daemon run out quickly: a lease lasts
/// 2 × 1 s + 5 s = 7 s, and an unknown outcome is looked at again after 2 s.
const SCHEDULER_CONFIG: &str = r#"
[scheduler]
provider_timeout = "1s"
retry_base = "1s"
retry_max = "2s"
"#;

/// How a grant whose refresh outcome is unknown (a killed daemon's lease ran out) is recovered.
#[derive(Debug, Clone)]
struct Regime {
    name: &'static str,
    /// Lifetime of the access tokens the simulator issues while the chaos runs.
    access_lifetime: Duration,
    /// `policy.oauth_rotate_before`: with `rotate_at_fraction = 0.9`, a grant is refreshed
    /// `access_lifetime − this` after each refresh.
    rotate_before: &'static str,
    /// Whether grants start with an access token (and its expiry) the engine can probe.
    seed_access_tokens: bool,
    /// OAuth grants kept renewing.
    grants: usize,
    /// Whether waves of GitLab access tokens are added during the run.
    gitlab_waves: bool,
    /// How each daemon's life ends: at the regime's mix of moments, or only after a random
    /// delay in this range (milliseconds after its start).
    kills: KillPlan,
    /// The bound the test asserts: at most one kill in this many lands in the commit gap
    /// (set where a run cannot exceed it by chance; the report prints the measured share).
    gap_kills_one_in: usize,
}

/// When the daemons of a regime are killed.
#[derive(Debug, Clone)]
enum KillPlan {
    /// A mix: after a random delay ([`KILL_DELAY_MS`]), just after serving, or holding leases.
    Mixed,
    /// Only after a random delay in this range of milliseconds.
    RandomDelay(std::ops::Range<u64>),
}

/// Access tokens live 20 s and are refreshed about every 8 s: when a killed daemon's lease
/// (7 s) runs out, the access token has far less than `PROBE_MARGIN` (30 s) left, so recovery
/// is the single blind retry (marked `retry_in_flight` before it is sent). A kill during that
/// retry costs the grant, by design (a third send could be a second reuse).
const BLIND_RETRY: Regime = Regime {
    name: "blind retry",
    access_lifetime: Duration::from_secs(20),
    rotate_before: "12s",
    seed_access_tokens: false,
    grants: GRANTS,
    gitlab_waves: true,
    kills: KillPlan::Mixed,
    gap_kills_one_in: 10,
};
/// Access tokens live 90 s and are refreshed about every 10 s: a lease left by a kill runs out
/// with well over `PROBE_MARGIN` left, so recovery asks GitLab whether the old access token
/// still works and never sends a refresh token blindly. Only a kill between GitLab's refresh and
/// our commit (or a dropped answer) costs a grant.
const PROBE: Regime = Regime {
    name: "probe",
    access_lifetime: Duration::from_secs(90),
    rotate_before: "80s",
    seed_access_tokens: true,
    grants: GRANTS,
    gitlab_waves: true,
    kills: KillPlan::Mixed,
    gap_kills_one_in: 10,
};
/// Restart bursts (issue 11), as a user's restarts would go: 20 grants whose access tokens live
/// 4 s, so most are due whenever a daemon starts, and each daemon killed 0.2–1.2 s after its
/// start — the moment after a deploy, an OOM kill or a node failure, when every overdue answer
/// arrives at once and waits for its commit. Measures how many kills land in the commit gap.
const RESTART_BURST: Regime = Regime {
    name: "restart burst",
    access_lifetime: Duration::from_secs(4),
    rotate_before: "3s",
    seed_access_tokens: true,
    grants: 20,
    gitlab_waves: false,
    kills: KillPlan::RandomDelay(200..1200),
    // With the answer journal: 3 and 6 of 200 in two runs (debug build, 1 in 44 together; the
    // report's "acted on but not yet committed" average 0.05); before it, 4 of 50. A run of 50
    // expects about one: six or more (1 in 8) is beyond chance even at twice that rate.
    gap_kills_one_in: 8,
};

/// The simulator's faults while the chaos runs: every request waits this long before GitLab acts
/// (a kill often finds a request sent but not yet acted on) and a few percent of renewal answers
/// are cut off after GitLab acted.
const CHAOS_FAULTS: FaultRates = FaultRates {
    latency_ms: 40,
    server_error: 0.0,
    rate_limited: 0.0,
    retry_after_seconds: 0,
    stall: 0.0,
    stall_ms: 0,
    slow: 0.0,
    slow_ms: 0,
    drop_after_commit: 0.03,
};
/// How long after a kill GitLab may still act on a request the killed daemon sent: the provider
/// timeout in [`SCHEDULER_CONFIG`] (the simulator acts after its 40 ms latency). No other daemon
/// can renew the token that soon: the killed daemon's lease lasts seconds longer.
const IN_FLIGHT_LIMIT: Duration = Duration::from_secs(1);
/// Range of the random delay before a kill, in milliseconds after the start.
const KILL_DELAY_MS: std::ops::Range<u64> = 50..800;
/// Range of the delay before a kill once the daemon is serving or holds a lease, in
/// milliseconds: shorter than the simulator's latency, so these kills find requests sent but not
/// yet acted on (the recovery paths). A longer delay would aim them at the moment GitLab answers,
/// which a fixed latency makes predictable — real crashes are not; the random-delay kills sample
/// that moment as often as a crash at a random time would.
const AIMED_DELAY_MS: std::ops::Range<u64> = 0..30;
/// How long a kill waits at most for the daemon to say it is serving, or to hold a lease.
const KILL_WAIT_LIMIT: Duration = Duration::from_secs(3);
/// How long the final daemon may take to settle every token and deliver every webhook.
const SETTLE_LIMIT: Duration = Duration::from_secs(120);
/// How often the store and the logs are polled.
const POLL: Duration = Duration::from_millis(5);
/// The line a daemon logs once it is serving.
const SERVING: &str = "tokenwarden is serving";

const ROTATION_RESPONSE_LOST: &str = "rotation_response_lost";
const GRANT_LOST: &str = "grant_lost";

/// One chaos run at a time: the two regimes would otherwise share two cores and change each
/// other's kill timing.
static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());

#[test]
fn hundreds_of_sigkills_with_blind_retries_send_no_dead_refresh_token_twice_and_renew_nothing_twice() {
    let _serial = ONE_AT_A_TIME.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
    let kills = env_number("TOKENWARDEN_CHAOS_KILLS").unwrap_or(DEFAULT_KILLS);
    chaos(BLIND_RETRY, kills);
}

#[test]
fn sigkills_with_probed_recovery_reuse_nothing_and_lose_only_explained_credentials() {
    let _serial = ONE_AT_A_TIME.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
    let kills = env_number("TOKENWARDEN_CHAOS_KILLS").unwrap_or(DEFAULT_KILLS) / 2;
    let report = chaos(PROBE, kills);
    assert_eq!(report.lost_in_retry, 0, "probed recovery never needs the blind retry");
    assert_eq!(report.stats.refresh_token_reuses, 0, "no refresh token was sent after it was used");
}

#[test]
fn restart_bursts_lose_few_credentials_in_the_commit_gap() {
    let _serial = ONE_AT_A_TIME.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
    let kills = env_number("TOKENWARDEN_CHAOS_KILLS").unwrap_or(DEFAULT_KILLS) / 4;
    chaos(RESTART_BURST, kills);
}

/// Seeds the store, kills `kills` daemons at random moments, settles, checks and reports.
fn chaos(regime: Regime, kills: usize) -> Report {
    let started = Instant::now();
    let seed = env_number("TOKENWARDEN_CHAOS_SEED").map_or_else(rand::random::<u64>, |seed| seed as u64);
    eprintln!("chaos ({} regime): {kills} kills, seed {seed} (replay with TOKENWARDEN_CHAOS_SEED={seed})", regime.name);
    let gitlab_waves = regime.gitlab_waves;
    let mut run = ChaosRun::new(regime, seed);
    run.seed_grants(run.regime.grants);
    run.sim().set_rates(CHAOS_FAULTS);
    eprintln!("set-up done after {:?}", started.elapsed());

    let wave_every = kills.div_ceil(GITLAB_WAVES).max(1);
    for kill in 0..kills {
        if gitlab_waves && kill % wave_every == 0 {
            run.add_gitlab_wave(GITLAB_PER_WAVE);
        }
        run.kill_once();
        if (kill + 1) % 10 == 0 {
            run.top_up_grants();
        }
        if (kill + 1) % 50 == 0 {
            eprintln!("{} kills after {:?}: {:?}", kill + 1, started.elapsed(), run.sim().stats());
        }
    }
    let chaos_stats = run.sim().stats();
    eprintln!("chaos over after {:?}: {chaos_stats:?}", started.elapsed());

    run.settle();
    eprintln!("settled after {:?}", started.elapsed());
    let report = run.check();
    report.print(&run, kills, &chaos_stats, started.elapsed());
    if std::env::var_os("TOKENWARDEN_CHAOS_DEBUG").is_some() {
        report.explain_losses(&run);
    }
    report.assert_lost_to_kills_rare(&run.kills, run.regime.gap_kills_one_in);
    report
}

/// An access token, when it was issued and when it expires.
type Access = (String, chrono::DateTime<Utc>, chrono::DateTime<Utc>);

/// A non-negative number from the environment.
fn env_number(name: &str) -> Option<usize> {
    let text = std::env::var(name).ok()?;
    Some(text.trim().parse().unwrap_or_else(|_| panic!("{name}={text} is not a number")))
}

/// A daemon process whose standard error goes to a log file.
struct Daemon {
    process: ServeProcess,
    log: PathBuf,
}

impl Daemon {
    /// Whether it has logged that it is serving.
    fn serving(&self) -> bool {
        std::fs::read_to_string(&self.log).is_ok_and(|text| text.contains(SERVING))
    }
}

impl std::ops::Deref for Daemon {
    type Target = ServeProcess;

    fn deref(&self) -> &ServeProcess {
        &self.process
    }
}

impl std::ops::DerefMut for Daemon {
    fn deref_mut(&mut self) -> &mut ServeProcess {
        &mut self.process
    }
}

/// When a kill lands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum KillMoment {
    /// A random delay after the start.
    RandomDelay,
    /// Just after the daemon logged that it is serving.
    JustServing,
    /// While the daemon holds at least one rotation lease.
    HoldingLeases,
}

/// One webhook request as the receiver saw it.
#[derive(Debug, Clone)]
struct Received {
    delivery: String,
    event: String,
    token: String,
    version: i64,
    verified: bool,
}

/// A webhook receiver on loopback that records every request and answers 204.
struct Receiver {
    url: String,
    received: Arc<Mutex<Vec<Received>>>,
    secret: Arc<Mutex<Option<SecretString>>>,
    _runtime: tokio::runtime::Runtime,
}

impl Receiver {
    fn start() -> Self {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .expect("receiver runtime");
        let received: Arc<Mutex<Vec<Received>>> = Arc::default();
        let secret: Arc<Mutex<Option<SecretString>>> = Arc::default();
        let (sink, key) = (received.clone(), secret.clone());
        let app = axum::Router::new().route(
            "/hook",
            post(move |headers: HeaderMap, body: Bytes| {
                let (sink, key) = (sink.clone(), key.clone());
                async move {
                    let header = |name: &str| headers.get(name).and_then(|v| v.to_str().ok()).unwrap_or("").to_owned();
                    let verified = key.lock().unwrap().as_ref().is_some_and(|secret| {
                        verify(secret, &header("x-tokenwarden-signature"), &body, Utc::now(), DEFAULT_TOLERANCE).is_ok()
                    });
                    let payload: serde_json::Value = serde_json::from_slice(&body).unwrap_or_default();
                    sink.lock().unwrap().push(Received {
                        delivery: header("x-tokenwarden-delivery"),
                        event: header("x-tokenwarden-event"),
                        token: payload["token"].as_str().unwrap_or_default().to_owned(),
                        version: payload["version"].as_i64().unwrap_or_default(),
                        verified,
                    });
                    StatusCode::NO_CONTENT
                }
            }),
        );
        let listener = runtime.block_on(tokio::net::TcpListener::bind("127.0.0.1:0")).expect("bind the receiver");
        let url = format!("http://{}/hook", listener.local_addr().expect("receiver address"));
        runtime.spawn(async move { axum::serve(listener, app).await.expect("serve the receiver") });
        Self { url, received, secret, _runtime: runtime }
    }

    fn received(&self) -> Vec<Received> {
        self.received.lock().unwrap().clone()
    }
}

/// What one kill left behind.
#[derive(Debug)]
struct Kill {
    /// Index of the daemon's log in `ChaosRun::logs`.
    log: usize,
    moment: KillMoment,
    /// When the SIGKILL was sent (to read the daemon's log against).
    at: chrono::DateTime<Utc>,
    after: Duration,
    /// Tokens the killed daemon left in `rotating`: name, version, and whether the single blind
    /// retry was in flight.
    left_rotating: Vec<(String, i64, bool)>,
}

impl Kill {
    /// When the killed daemon was started.
    fn started(&self) -> chrono::DateTime<Utc> {
        self.at - chrono::TimeDelta::from_std(self.after).unwrap_or_default()
    }
}

/// A credential a kill cost in the commit gap: GitLab had renewed it `since_acted` before the
/// kill, and the daemon had not committed the answer yet.
#[derive(Debug)]
struct GapLoss {
    token: String,
    /// Index of the kill in `ChaosRun::kills`.
    kill: usize,
    since_acted: Duration,
}

/// The sandbox, the store, the receiver, the RNG and what every kill did.
struct ChaosRun {
    regime: Regime,
    sandbox: Sandbox,
    /// The OAuth application's client id and secret.
    application: (String, String),
    conn: DbConnection,
    cipher: Cipher,
    config: PathBuf,
    receiver: Receiver,
    rng: StdRng,
    gitlab_tokens: usize,
    deploy_tokens: usize,
    grants: usize,
    /// Refreshes GitLab made while the grants were seeded (before tokenwarden tracked them).
    seeding_refreshes: u64,
    daemons: usize,
    logs: Vec<PathBuf>,
    kills: Vec<Kill>,
    /// Each token's family at the simulator (see `Renewal::family`).
    families: BTreeMap<String, u64>,
}

impl ChaosRun {
    /// A sandbox with provider `gitlab` (an OAuth application at the simulator) and an operator
    /// client whose webhook points at the receiver.
    fn new(regime: Regime, seed: u64) -> Self {
        let sandbox = Sandbox::new();
        sandbox.gitlab.sim.with_state(|state| state.record_renewals = true);
        let (client_id, client_secret) = sandbox.gitlab.sim.create_application();
        let gitlab = sandbox.gitlab_url();
        let args = ["provider", "add", "gitlab", "--kind", "gitlab", "--url", &gitlab, "--client-id", &client_id];
        sandbox.ok(&[&args[..], &["--client-secret-stdin"]].concat(), &format!("{client_secret}\n"));
        let receiver = Receiver::start();
        let added = sandbox.ok(&["client", "add", "chaos", "--role", "operator", "--webhook", &receiver.url], "");
        let added: serde_json::Value = serde_json::from_str(&added).expect("client add JSON");
        let secret = added["webhook_secret"].as_str().expect("a webhook secret").to_owned();
        *receiver.secret.lock().unwrap() = Some(SecretString::from(secret));
        common::killed::add_manager(&sandbox);
        let config = sandbox.path().join("chaos.toml");
        let policy =
            format!("\n[policy]\noauth_rotate_before = \"{}\"\nrotate_at_fraction = 0.9\n", regime.rotate_before);
        std::fs::write(&config, format!("{SCHEDULER_CONFIG}{policy}")).expect("write the config file");
        let url = DatabaseUrl::parse(&sandbox.database_url()).expect("database URL");
        let conn = connect(&url).expect("open the database");
        let cipher = Cipher::new(&MasterKey::read(&sandbox.key_path()).expect("read the master key"));
        Self {
            regime,
            sandbox,
            application: (client_id, client_secret),
            conn,
            cipher,
            config,
            receiver,
            rng: StdRng::seed_from_u64(seed),
            gitlab_tokens: 0,
            deploy_tokens: 0,
            grants: 0,
            seeding_refreshes: 0,
            daemons: 0,
            logs: Vec::new(),
            kills: Vec::new(),
            families: BTreeMap::new(),
        }
    }

    fn sim(&self) -> &Simulator {
        &self.sandbox.gitlab.sim
    }

    fn tokens(&mut self) -> Vec<Token> {
        tokens::list(&mut self.conn).expect("list tokens")
    }

    /// Tracks `count` fresh grants, due at once; the access tokens GitLab issues from now on live
    /// the regime's lifetime. In the probe regime each grant starts with an access token (GitLab
    /// refreshed it once before it was tracked), so even its first recovery can probe.
    fn seed_grants(&mut self, count: usize) {
        self.sim().set_expires_in(self.regime.access_lifetime);
        let (client_id, client_secret) = self.application.clone();
        for _ in 0..count {
            let mut refresh = self.sim().create_grant(&client_id);
            let family = self.sim().with_state(|state| state.family_of(&refresh)).expect("a grant's family");
            let mut access = None;
            if self.regime.seed_access_tokens {
                let now = Utc::now();
                let refreshed = self
                    .sim()
                    .with_state(|state| state.refresh(&client_id, Some(&client_secret), &refresh, now))
                    .expect("refresh a fresh grant");
                self.seeding_refreshes += 1;
                refresh = refreshed.refresh_token.expect("GitLab rotates refresh tokens");
                let lifetime = chrono::TimeDelta::from_std(self.regime.access_lifetime).expect("lifetime");
                access = Some((refreshed.access_token, now, now + lifetime));
            }
            let name = format!("grant-{:03}", self.grants);
            self.grants += 1;
            self.families.insert(name.clone(), family);
            self.insert(&name, TokenKind::GitlabOauth, access, Some(refresh));
        }
    }

    /// Seeds fresh grants for those flagged lost, so a long run keeps the regime's grants renewing
    /// (a grant that needs attention is never renewed again, and kills would find idle daemons).
    fn top_up_grants(&mut self) {
        let flagged = (self.tokens().iter())
            .filter(|t| t.kind == TokenKind::GitlabOauth && t.state == TokenState::NeedsAttention)
            .count();
        let renewing = self.grants - flagged;
        if renewing < self.regime.grants {
            self.seed_grants(self.regime.grants - renewing);
        }
    }

    /// Tracks `count` GitLab project access tokens expiring in two days: due at once.
    fn add_gitlab_wave(&mut self, count: usize) {
        let expiry = Utc::now().date_naive() + chrono::Days::new(2);
        for _ in 0..count {
            let secret = self.sim().create_access_token(TokenOwner::Project("42".into()), &["api"], expiry).1;
            let name = format!("gl-{:03}", self.gitlab_tokens);
            self.gitlab_tokens += 1;
            let family = self.sim().with_state(|state| state.family_of(&secret)).expect("a token's family");
            self.families.insert(name.clone(), family);
            self.insert(&name, TokenKind::GitlabProjectAccessToken, Some((secret, Utc::now(), Utc::now())), None);
        }
        self.add_deploy_token();
    }

    /// Makes a deploy token through the manager `mgr` and makes it due at once.
    fn add_deploy_token(&mut self) {
        use diesel::prelude::*;
        use tokenwarden::store::schema::tokens as columns;
        let name = format!("dp-{:03}", self.deploy_tokens);
        self.deploy_tokens += 1;
        let create = ["token", "create", &name, "--provider", "gitlab", "--kind", "gitlab-deploy-token"];
        self.sandbox
            .ok(&[&create[..], &["--project", "42", "--manager", "mgr", "--scope", "read_registry"]].concat(), "");
        diesel::update(columns::table.filter(columns::name.eq(&name)))
            .set(columns::next_rotation_at.eq(Some(Utc::now().naive_utc())))
            .execute(&mut self.conn)
            .expect("make the deploy token due");
    }

    /// Inserts a token straight into the store (faster than `token add`, which checks it at
    /// GitLab first), due now. `secret` is the access token with, for a grant, when it was issued
    /// and when it expires.
    fn insert(&mut self, name: &str, kind: TokenKind, secret: Option<Access>, refresh: Option<String>) {
        let resource = (kind == TokenKind::GitlabProjectAccessToken).then(|| "42".to_owned());
        let oauth = kind == TokenKind::GitlabOauth;
        let (issued_at, expires_at) = match &secret {
            Some((_, issued, expires)) if oauth => (Some(*issued), Some(*expires)),
            _ => (None, None),
        };
        let new = NewToken {
            name: TokenName::new(name).expect("token name"),
            provider: ProviderName::new("gitlab").expect("provider name"),
            kind,
            resource,
            secret: secret.map(|(secret, _, _)| SecretString::from(secret)),
            refresh_token: refresh.map(SecretString::from),
            policy: PolicyOverrides::default(),
            external_id: None,
            issued_at,
            expires_at,
            next_rotation_at: Some(Utc::now()),
            scopes: None,
        };
        tokens::insert(&mut self.conn, &self.cipher, &new, "chaos", Utc::now()).expect("insert a token");
    }

    /// Starts `tokenwarden serve` on a free port with the test's config.
    fn start_daemon(&mut self) -> Daemon {
        let log = self.sandbox.path().join(format!("daemon-{:05}.log", self.daemons));
        self.daemons += 1;
        self.logs.push(log.clone());
        let env = [
            ("TOKENWARDEN_DATABASE_URL", self.sandbox.database_url()),
            ("RUST_LOG", std::env::var("TOKENWARDEN_CHAOS_LOG").unwrap_or_else(|_| "info".to_owned())),
        ];
        Daemon { process: ServeProcess::start(self.sandbox.path(), &self.config, &log, &env), log }
    }

    /// Starts a daemon, kills it at a random moment, and records what it left behind.
    fn kill_once(&mut self) {
        let (moment, delay_ms) = match &self.regime.kills {
            KillPlan::RandomDelay(range) => (KillMoment::RandomDelay, range.clone()),
            KillPlan::Mixed => match self.rng.random_range(0..10) {
                0..4 => (KillMoment::RandomDelay, KILL_DELAY_MS),
                4..6 => (KillMoment::JustServing, KILL_DELAY_MS),
                _ => (KillMoment::HoldingLeases, KILL_DELAY_MS),
            },
        };
        let delay = Duration::from_millis(self.rng.random_range(delay_ms));
        let jitter = Duration::from_millis(self.rng.random_range(AIMED_DELAY_MS));
        let mut daemon = self.start_daemon();
        let since_start = Instant::now();
        let owner = daemon.owner_tag();
        match moment {
            KillMoment::RandomDelay => std::thread::sleep(delay),
            KillMoment::JustServing => {
                self.wait_for(&mut daemon, |_, daemon| daemon.serving());
                std::thread::sleep(jitter);
            }
            KillMoment::HoldingLeases => {
                self.wait_for(&mut daemon, |run, _| {
                    run.tokens().iter().any(|t| t.lease_owner.as_deref().is_some_and(|o| o.contains(&owner)))
                });
                std::thread::sleep(jitter);
            }
        }
        if let Some(status) = daemon.exited() {
            panic!("daemon {} exited on its own with {status}\n{}", daemon.pid(), self.diagnostics());
        }
        let at = Utc::now();
        daemon.process.kill();
        let after = since_start.elapsed();
        let left_rotating = self
            .tokens()
            .into_iter()
            .filter(|t| t.state == TokenState::Rotating && t.lease_owner.as_deref().is_some_and(|o| o.contains(&owner)))
            .map(|t| (t.name.to_string(), t.version, t.recovery.as_deref() == Some("retry_in_flight")))
            .collect();
        self.kills.push(Kill { log: self.logs.len() - 1, moment, at, after, left_rotating });
    }

    /// Polls until `done` or [`KILL_WAIT_LIMIT`] (a daemon that never holds a lease, because
    /// nothing is due, is killed all the same).
    fn wait_for(&mut self, daemon: &mut Daemon, mut done: impl FnMut(&mut Self, &Daemon) -> bool) {
        let deadline = Instant::now() + KILL_WAIT_LIMIT;
        while Instant::now() < deadline && !done(self, daemon) {
            if let Some(status) = daemon.exited() {
                panic!("daemon {} exited on its own with {status}\n{}", daemon.pid(), self.diagnostics());
            }
            std::thread::sleep(POLL);
        }
    }

    /// Turns the faults off, makes new access tokens live two hours, and runs a final daemon
    /// until every token is settled with nothing due and every delivery is delivered.
    fn settle(&mut self) {
        self.sim().set_rates(FaultRates::default());
        self.sim().set_expires_in(SETTLED_LIFETIME);
        let daemon = self.start_daemon();
        let started = Instant::now();
        let deadline = started + SETTLE_LIMIT;
        let mut shown = Duration::ZERO;
        loop {
            let pending = self.unsettled();
            if pending.is_empty() {
                break;
            }
            if started.elapsed() >= shown + Duration::from_secs(10) {
                shown = started.elapsed();
                eprintln!(
                    "still settling after {shown:?}: {} left, e.g. {:?}",
                    pending.len(),
                    &pending[..pending.len().min(5)]
                );
            }
            assert!(
                Instant::now() < deadline,
                "not settled within {SETTLE_LIMIT:?}: {pending:?}\n{}",
                self.diagnostics()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        let status = daemon.process.terminate(Duration::from_secs(10));
        assert!(status.success(), "the final daemon stopped with {status}\n{}", self.diagnostics());
    }

    /// What keeps the run from being settled: tokens rotating, retrying or due within a
    /// minute, and deliveries not yet delivered.
    fn unsettled(&mut self) -> Vec<String> {
        let soon = Utc::now() + chrono::TimeDelta::minutes(1);
        let mut pending = Vec::new();
        for token in self.tokens() {
            let settled = match token.state {
                TokenState::Active => token.lease_owner.is_none() && token.next_rotation_at.is_some_and(|at| at > soon),
                TokenState::NeedsAttention => token.lease_owner.is_none(),
                _ => false,
            };
            if !settled {
                pending.push(format!("{} {:?}", token.name, token.state));
            }
            let waiting = pending_revocations::pending_for(&mut self.conn, &token.id).expect("pending revocations");
            if !waiting.is_empty() {
                pending.push(format!("{}: {} old tokens waiting for their revocation", token.name, waiting.len()));
            }
            let deliveries =
                outbox::pending_for_token(&mut self.conn, token.name.as_str()).expect("pending deliveries");
            if !deliveries.is_empty() {
                pending.push(format!("{}: {} deliveries pending", token.name, deliveries.len()));
            }
        }
        pending
    }

    /// The final checks; returns the figures for the report.
    fn check(&mut self) -> Report {
        let stats = self.sim().stats();
        let diagnostics = self.diagnostics();
        assert_eq!(
            stats.family_revocations, 0,
            "GitLab revoked a token family (a rotated token reused)\n{diagnostics}"
        );
        let mut report = Report::default();
        for token in self.tokens() {
            self.check_token(&token, &mut report, &diagnostics);
        }
        assert!(
            stats.refresh_token_reuses <= report.grants_lost,
            "{} reuses of dead refresh tokens but only {} grants lost: a dead refresh token was sent more than once\n{diagnostics}",
            stats.refresh_token_reuses,
            report.grants_lost
        );
        assert_eq!(
            stats.rotations + stats.refreshes - self.seeding_refreshes,
            report.versions_gained + report.answers_lost,
            "every renewal at GitLab is one stored version or one lost answer (none twice)\n{diagnostics}"
        );
        self.check_deliveries(&mut report, &diagnostics);
        report.commit_gaps = self.commit_gaps();
        let renewals = self.sim().with_state(|state| state.renewals.clone());
        report.classify_losses(&self.kills, &self.families, &renewals);
        report.acted_to_commit = self.acted_to_commit(&renewals);
        report.answers_awaiting_commit = self.answers_awaiting_commit(&renewals);
        report.stats = stats;
        report
    }

    /// One token: settled, history whole, its credential working at GitLab or flagged lost.
    fn check_token(&mut self, token: &Token, report: &mut Report, diagnostics: &str) {
        let name = token.name.as_str();
        let reason = token.attention_reason.as_deref().unwrap_or_default();
        assert!(token.lease_owner.is_none() && token.lease_expires_at.is_none(), "{name}: lease left: {token:?}");
        assert!(token.recovery.is_none(), "{name}: recovery marker left: {token:?}");
        match token.state {
            TokenState::Active => assert!(reason.is_empty(), "{name} is active with a reason: {token:?}"),
            TokenState::NeedsAttention => assert!(
                [ROTATION_RESPONSE_LOST, GRANT_LOST].contains(&reason),
                "{name} needs attention for an unexpected reason '{reason}': {token:?}\n{diagnostics}"
            ),
            other => panic!("{name} ended {other:?}, not active or needs_attention: {token:?}\n{diagnostics}"),
        }
        let history: Vec<i64> =
            tokens::history(&mut self.conn, &token.name).expect("token history").iter().map(|e| e.version).collect();
        assert_eq!(history, (1..=token.version).collect::<Vec<_>>(), "{name}: history");
        report.versions.insert(name.to_owned(), token.version);
        if token.kind == TokenKind::GitlabDeployToken {
            return self.check_deploy_token(token, report, diagnostics);
        }
        report.versions_gained += u64::try_from(token.version - 1).expect("versions start at 1");

        let oauth = token.kind == TokenKind::GitlabOauth;
        let secret = self.secret(&token.name, SecretField::Secret);
        let consumed = if oauth {
            let refresh = self.secret(&token.name, SecretField::RefreshToken).expect("a grant has a refresh token");
            !self.sim().with_state(|s| s.refresh_token_is_live(&refresh))
        } else {
            let secret = secret.clone().expect("an access token has a secret");
            self.sim().with_state(|s| s.access_token(&secret).map(|t| t.rotated)).expect("GitLab knows the token")
        };
        if consumed {
            report.answers_lost += 1;
            let lost = if oauth { GRANT_LOST } else { ROTATION_RESPONSE_LOST };
            assert_eq!(
                (token.state, reason),
                (TokenState::NeedsAttention, lost),
                "{name}: its credential was used up at GitLab\n{diagnostics}"
            );
            report.lost.push((name.to_owned(), token.version));
        }
        if token.state == TokenState::NeedsAttention {
            if oauth {
                report.grants_lost += 1;
            } else {
                report.gitlab_lost += 1;
            }
        }
        if token.state == TokenState::Active {
            let secret = secret.expect("an active token has a secret");
            assert!(self.sim().accepts(&secret), "{name}: GitLab refuses the current secret\n{diagnostics}");
        }
    }

    /// A deploy token (its successors are creates, not renewals): active, and GitLab holds exactly
    /// one live deploy token of its name, the stored one.
    fn check_deploy_token(&mut self, token: &Token, report: &mut Report, diagnostics: &str) {
        let name = token.name.as_str();
        assert_eq!(token.state, TokenState::Active, "{name}: {token:?}\n{diagnostics}");
        let stored = self.secret(&token.name, SecretField::Secret).expect("a deploy token has a secret");
        let gitlab_name = format!("tokenwarden: {name}");
        let live = common::killed::live(&self.sandbox, &gitlab_name);
        assert_eq!(live, vec![stored], "{name}: one live deploy token at GitLab, the stored one\n{diagnostics}");
        report.deploy_rotations += u64::try_from(token.version - 1).expect("versions start at 1");
    }

    fn secret(&mut self, name: &TokenName, field: SecretField) -> Option<String> {
        let secret = tokens::read_secret(&mut self.conn, &self.cipher, name, field).expect("read a secret");
        secret.map(|s| s.expose_secret().to_owned())
    }

    /// Every stored version above 1 reached the receiver as `token.rotated`, under one delivery
    /// id however often it was sent, signed; nothing arrived for a version never stored.
    fn check_deliveries(&mut self, report: &mut Report, diagnostics: &str) {
        let received = self.receiver.received();
        let mut ids: BTreeMap<(String, i64), BTreeSet<String>> = BTreeMap::new();
        for request in &received {
            assert!(request.verified, "a delivery's signature does not verify: {request:?}");
            if request.event == "token.rotated" {
                ids.entry((request.token.clone(), request.version)).or_default().insert(request.delivery.clone());
            }
        }
        for ((token, version), delivered) in &ids {
            assert_eq!(delivered.len(), 1, "{token} v{version} delivered under several ids: {delivered:?}");
            let stored = report.versions.get(token).copied().unwrap_or_default();
            // A created token's first version is announced too (`token create` commits it through
            // the answer path); tracked tokens start at version 1 unannounced.
            let first = if token.starts_with("dp-") { 1 } else { 2 };
            assert!(*version <= stored && *version >= first, "{token} v{version} delivered, but v{stored} is stored");
        }
        let mut missing = Vec::new();
        for (token, stored) in &report.versions {
            missing.extend(
                (2..=*stored).filter(|v| !ids.contains_key(&(token.clone(), *v))).map(|v| format!("{token} v{v}")),
            );
        }
        assert!(missing.is_empty(), "committed rotations without their webhook: {missing:?}\n{diagnostics}");
        let distinct: BTreeSet<&str> = received.iter().map(|r| r.delivery.as_str()).collect();
        report.requests = received.len();
        report.deliveries = distinct.len();
        report.rotated_deliveries = ids.len();
    }

    /// Every commit gap the daemons logged, sorted.
    fn commit_gaps(&self) -> Vec<Duration> {
        let mut gaps: Vec<Duration> = self.logs.iter().flat_map(|log| commit_gaps_in(log)).collect();
        gaps.sort_unstable();
        gaps
    }

    /// For every `rotated` line a daemon logged, the time since GitLab performed that renewal
    /// (the family's latest renewal before the line): the whole window in which a crash costs
    /// the credential — the answer's way back, reading it, and the commit.
    fn acted_to_commit(&self, renewals: &[Renewal]) -> Vec<Duration> {
        let mut windows: Vec<Duration> =
            self.logs.iter().flat_map(|log| self.acted_to_commit_in(log, renewals)).collect();
        windows.sort_unstable();
        windows
    }

    /// [`Self::acted_to_commit`] for one daemon's log.
    fn acted_to_commit_in(&self, log: &Path, renewals: &[Renewal]) -> Vec<Duration> {
        let text = std::fs::read_to_string(log).unwrap_or_default();
        let mut windows = Vec::new();
        for line in text.lines().filter(|line| line.contains(" rotated ")) {
            let logged = line.split_whitespace().next().and_then(|t| t.parse::<chrono::DateTime<Utc>>().ok());
            let token = line.split(" token=").nth(1).and_then(|rest| rest.split_whitespace().next());
            let family = token.and_then(|token| self.families.get(token));
            let (Some(logged), Some(family)) = (logged, family) else { continue };
            let acted = renewals.iter().rev().find(|r| r.family == *family && r.at <= logged);
            windows.extend(acted.and_then(|r| (logged - r.at).to_std().ok()));
        }
        windows
    }

    /// How many renewals GitLab had performed and a killed daemon had not yet committed, at an
    /// average instant of the daemon's life: the sum of those windows over the sum of the
    /// lifetimes (Little's law). A kill at a uniformly random instant costs that many
    /// credentials on average.
    fn answers_awaiting_commit(&self, renewals: &[Renewal]) -> f64 {
        let windows: Duration =
            self.kills.iter().flat_map(|kill| self.acted_to_commit_in(&self.logs[kill.log], renewals)).sum();
        let lives: Duration = self.kills.iter().map(|kill| kill.after).sum();
        windows.as_secs_f64() / lives.as_secs_f64().max(f64::EPSILON)
    }

    /// The simulator's counters, the last kills and the last daemons' logs.
    fn diagnostics(&self) -> String {
        let mut text = format!("simulator: {:?}\n", self.sim().stats());
        for kill in self.kills.iter().rev().take(10).rev() {
            text.push_str(&format!("{kill:?}\n"));
        }
        for log in self.logs.iter().rev().take(3).rev() {
            let content = std::fs::read_to_string(log).unwrap_or_default();
            let lines: Vec<&str> = content.lines().collect();
            let tail = lines[lines.len().saturating_sub(40)..].join("\n");
            text.push_str(&format!("--- {} (last 40 lines)\n{tail}\n", log.display()));
        }
        text
    }
}

/// The figures the run reports.
#[derive(Debug, Default)]
struct Report {
    versions: BTreeMap<String, i64>,
    versions_gained: u64,
    /// Deploy-token successors stored (creates through the manager, not renewals).
    deploy_rotations: u64,
    answers_lost: u64,
    grants_lost: u64,
    gitlab_lost: u64,
    /// Tokens whose credential was used up with the answer lost, and their version.
    lost: Vec<(String, i64)>,
    requests: usize,
    deliveries: usize,
    rotated_deliveries: usize,
    commit_gaps: Vec<Duration>,
    /// See [`ChaosRun::answers_awaiting_commit`].
    answers_awaiting_commit: f64,
    /// From GitLab acting to the daemon's `rotated` line, for every committed renewal.
    acted_to_commit: Vec<Duration>,
    /// Lost credentials a kill left mid-rotation with the single blind retry in flight.
    lost_in_retry: usize,
    /// Lost credentials GitLab renewed while the daemon lived, whose answer a kill stopped
    /// before it was committed: the commit gap, seen from GitLab.
    lost_in_gap: Vec<GapLoss>,
    /// Lost credentials GitLab renewed after the daemon that asked was killed (the request was
    /// on its way).
    lost_after_kill: usize,
    /// Lost credentials whose answer the simulator cut off.
    lost_to_drops: usize,
    /// Lost credentials none of the above explains.
    unexplained: Vec<String>,
    stats: Stats,
}

impl Report {
    /// Explains every lost credential from the simulator's renewal log: the renewal that used it
    /// up is its family's last, and either its answer was cut off, or a kill stopped the daemon
    /// between GitLab acting and the commit, or GitLab acted after the daemon was dead, or the
    /// kill cut the single blind retry.
    fn classify_losses(&mut self, kills: &[Kill], families: &BTreeMap<String, u64>, renewals: &[Renewal]) {
        for (name, version) in &self.lost {
            let label = format!("{name} v{version}");
            let last = families.get(name).and_then(|family| renewals.iter().rev().find(|r| r.family == *family));
            let Some(renewal) = last else {
                self.unexplained.push(label);
                continue;
            };
            if renewal.dropped {
                self.lost_to_drops += 1;
                continue;
            }
            let cuts: Vec<(usize, bool)> = kills
                .iter()
                .enumerate()
                .filter_map(|(index, kill)| {
                    kill.left_rotating.iter().find(|(n, v, _)| n == name && v == version).map(|(_, _, r)| (index, *r))
                })
                .collect();
            let during =
                cuts.iter().find(|(index, _)| (kills[*index].started()..=kills[*index].at).contains(&renewal.at));
            let after = cuts.iter().rev().find(|(index, _)| {
                let since_kill = (renewal.at - kills[*index].at).to_std().ok();
                since_kill.is_some_and(|since| since <= IN_FLIGHT_LIMIT)
            });
            if cuts.iter().any(|(_, retry)| *retry) {
                self.lost_in_retry += 1;
            } else if let Some((index, _)) = during {
                let since_acted = (kills[*index].at - renewal.at).to_std().unwrap_or_default();
                self.lost_in_gap.push(GapLoss { token: label, kill: *index, since_acted });
            } else if after.is_some() {
                self.lost_after_kill += 1;
            } else {
                let cut_at: Vec<_> =
                    cuts.iter().map(|(index, _)| (kills[*index].started(), kills[*index].at)).collect();
                self.unexplained
                    .push(format!("{label}: renewed at {}; daemons that left it rotating {cut_at:?}", renewal.at));
            }
        }
    }

    /// The kills that cost credentials in the commit gap, and when they landed.
    fn gap_kills(&self, kills: &[Kill]) -> BTreeMap<usize, KillMoment> {
        self.lost_in_gap.iter().map(|loss| (loss.kill, kills[loss.kill].moment)).collect()
    }

    /// For each lost token, the last kill that left it mid-rotation and what that daemon logged
    /// about it.
    fn explain_losses(&self, run: &ChaosRun) {
        for (name, version) in &self.lost {
            let kill =
                run.kills.iter().rev().find(|k| k.left_rotating.iter().any(|(n, v, _)| n == name && v == version));
            let Some(kill) = kill else {
                eprintln!("{name} v{version}: no kill left it mid-rotation (a dropped answer)");
                continue;
            };
            eprintln!("{name} v{version}: {:?} after {:?} ({})", kill.moment, kill.after, run.logs[kill.log].display());
            eprintln!("    killed at {}", kill.at);
            let text = std::fs::read_to_string(&run.logs[kill.log]).unwrap_or_default();
            for line in text.lines().filter(|l| l.contains(name.as_str())) {
                eprintln!("    {line}");
            }
        }
    }

    fn print(&self, run: &ChaosRun, kills: usize, chaos: &Stats, elapsed: Duration) {
        let stats = run.sim().stats();
        let mut moments: BTreeMap<String, usize> = BTreeMap::new();
        for kill in &run.kills {
            *moments.entry(format!("{:?}", kill.moment)).or_default() += 1;
        }
        let holding = run.kills.iter().filter(|k| !k.left_rotating.is_empty()).count();
        let leases_cut: usize = run.kills.iter().map(|k| k.left_rotating.len()).sum();
        let mean_life = run.kills.iter().map(|k| k.after).sum::<Duration>() / u32::try_from(kills.max(1)).unwrap_or(1);
        eprintln!("=== chaos report ({:?})", elapsed);
        eprintln!(
            "kills survived: {kills} {moments:?}; {holding} left leases behind ({leases_cut} leases); mean life {mean_life:?}"
        );
        eprintln!(
            "tokens: {} grants, {} GitLab tokens; renewals at GitLab: {} rotations, {} refreshes ({} during the chaos)",
            run.grants,
            run.gitlab_tokens,
            stats.rotations,
            stats.refreshes,
            chaos.rotations + chaos.refreshes
        );
        eprintln!(
            "faults injected: {} (dropped after commit: {}); probes: {}",
            stats.faults_injected, stats.dropped_after_commit, stats.lookups
        );
        eprintln!(
            "versions stored: {}; answers lost: {} ({} grants and {} GitLab tokens need attention); deploy tokens: {} made, {} successors, one live each",
            self.versions_gained,
            self.answers_lost,
            self.grants_lost,
            self.gitlab_lost,
            run.deploy_tokens,
            self.deploy_rotations
        );
        let gap_kills = self.gap_kills(&run.kills);
        let mut gap_moments: BTreeMap<String, usize> = BTreeMap::new();
        for moment in gap_kills.values() {
            *gap_moments.entry(format!("{moment:?}")).or_default() += 1;
        }
        eprintln!(
            "credentials lost: {} to cut-off answers, {} renewed after the daemon that asked was killed, {} during the single blind retry, {} in the commit gap by {} kills {gap_moments:?}, {} unexplained",
            self.lost_to_drops,
            self.lost_after_kill,
            self.lost_in_retry,
            self.lost_in_gap.len(),
            gap_kills.len(),
            self.unexplained.len()
        );
        let losses: Vec<String> = self
            .lost_in_gap
            .iter()
            .map(|loss| format!("{} {:?} after GitLab acted", loss.token, loss.since_acted))
            .collect();
        eprintln!("commit-gap losses: {losses:?}");
        eprintln!(
            "refresh token reuses: {} (≤ grants lost); family revocations: {}",
            stats.refresh_token_reuses, stats.family_revocations
        );
        eprintln!(
            "webhooks: {} requests, {} distinct deliveries, {} token.rotated (token, version) pairs, {} re-sends",
            self.requests,
            self.deliveries,
            self.rotated_deliveries,
            self.requests - self.deliveries
        );
        eprintln!("answer read → committed (the daemon's commit gap): {}", describe_gaps(&self.commit_gaps));
        eprintln!("GitLab acted → committed: {}", describe_gaps(&self.acted_to_commit));
        eprintln!(
            "renewals acted on but not yet committed, at an average instant of a killed daemon's life: {:.3}",
            self.answers_awaiting_commit
        );
    }

    /// Every lost credential has a cause the run can name, and kills that landed between
    /// GitLab's renewal and our commit are rare: at most one in `one_in` (the regime's bound; in
    /// the mixed regimes one in ten, typically one to four in a hundred; the bound leaves room
    /// for chance, not for a regression to the one in four seen before answers jumped the writer
    /// queue). A single such kill can cost several credentials: the answers that arrive together
    /// are committed together, after the batch before them.
    fn assert_lost_to_kills_rare(&self, kills: &[Kill], one_in: usize) {
        assert!(self.unexplained.is_empty(), "credentials lost for no reason the run knows: {:?}", self.unexplained);
        let gap_kills = self.gap_kills(kills).len();
        let bound = kills.len().div_ceil(one_in).max(3);
        assert!(
            gap_kills <= bound,
            "{gap_kills} of {} kills landed in the commit gap (bound {bound}), costing {:?}",
            kills.len(),
            self.lost_in_gap
        );
    }
}

/// The commit gaps one daemon logged (`commit_gap_us=N` on each `rotated` line).
fn commit_gaps_in(log: &Path) -> Vec<Duration> {
    let text = std::fs::read_to_string(log).unwrap_or_default();
    text.split("commit_gap_us=")
        .skip(1)
        .filter_map(|part| part.split(|c: char| !c.is_ascii_digit()).next().and_then(|n| n.parse().ok()))
        .map(Duration::from_micros)
        .collect()
}

/// Count, median, 99th percentile and maximum of the commit gaps.
fn describe_gaps(gaps: &[Duration]) -> String {
    if gaps.is_empty() {
        return "none logged".to_owned();
    }
    let at = |q: f64| gaps[((gaps.len() - 1) as f64 * q).round() as usize];
    format!("{} commits, p50 {:?}, p99 {:?}, max {:?}", gaps.len(), at(0.5), at(0.99), gaps[gaps.len() - 1])
}
