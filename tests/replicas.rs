//! Several `tokenwarden serve` replicas sharing one PostgreSQL database, against the in-repo
//! GitLab simulator: a few hundred OAuth grants whose access tokens live seconds, refreshed over
//! and over by three processes at once, then one process killed with SIGKILL in the middle of
//! the storm. Skipped without `TOKENWARDEN_TEST_POSTGRES_URL` (failed with
//! `TOKENWARDEN_REQUIRE_POSTGRES=1`, as `scripts/test` sets).

mod common;

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use chrono::Utc;
use common::TestGitlab;
use common::postgres::TestSchema;
use common::serve_process::ServeProcess;
use secrecy::SecretString;
use tokenwarden::config::{DatabaseUrl, HumanDuration};
use tokenwarden::crypto::{Cipher, MasterKey};
use tokenwarden::domain::{PolicyOverrides, ProviderKind, ProviderName, TokenKind, TokenName, TokenState};
use tokenwarden::simulator::Stats;
use tokenwarden::store::models::Token;
use tokenwarden::store::providers::{self, NewProvider};
use tokenwarden::store::tokens::{self, NewToken};
use tokenwarden::store::{DbConnection, Store, connect, meta};

/// OAuth grants tracked.
const GRANTS: usize = 300;
/// How long each access token the simulator issues lives.
const ACCESS_LIFETIME: Duration = Duration::from_secs(24);
/// Short provider timeouts, so a dead replica's leases run out quickly (2 × 1 s + 5 s = 7 s), and
/// grants refreshed 14 s before their access token expires: about every 10 s. The 14 s margin
/// covers a lease left by a killed replica (7 s) plus its recovery.
const CONFIG: &str = r#"
[scheduler]
provider_timeout = "1s"
retry_base = "1s"
retry_max = "2s"

[policy]
oauth_rotate_before = "14s"
rotate_at_fraction = 0.9
"#;
/// How long all three replicas run before one is killed.
const SHARED_RUN: Duration = Duration::from_secs(30);
/// How long the two survivors run after the kill: past the dead replica's leases and the
/// refresh of everything they held.
const AFTER_KILL: Duration = Duration::from_secs(25);
/// How often the store is looked at.
const POLL: Duration = Duration::from_millis(100);

#[test]
fn three_replicas_share_the_grants_and_survivors_take_over_a_killed_ones_leases() {
    let Some(schema) = TestSchema::create() else { return };
    let gitlab = TestGitlab::start();
    let dir = tempfile::tempdir().unwrap();
    let mut run = ReplicaRun::new(&schema.url, &gitlab, dir.path());
    let started = Instant::now();

    let mut replicas: Vec<Replica> = (0..3).map(|i| run.start_replica(&format!("r{i}"))).collect();
    let mut seen = Observations::default();
    run.watch(&mut seen, SHARED_RUN, &replicas);
    let shared = run.sim_stats(&gitlab);
    eprintln!(
        "after {:?} with three replicas: {shared:?}; leases seen per replica: {:?}",
        started.elapsed(),
        seen.leases
    );
    run.assert_no_reuse(&gitlab, "three replicas");
    seen.assert_nothing_expired(&run);
    assert!(
        shared.refreshes >= u64::try_from(2 * GRANTS).unwrap(),
        "every grant was refreshed at least twice in {SHARED_RUN:?}: {shared:?}\n{}",
        run.logs()
    );
    for replica in &replicas {
        let leases = seen.leases.get(&replica.process.pid()).copied().unwrap_or_default();
        assert!(
            leases >= GRANTS / 10,
            "replica {} took only {leases} leases: {:?}\n{}",
            replica.label,
            seen.leases,
            run.logs()
        );
    }

    // SIGKILL the replica that holds the most leases right now.
    let (victim, held) = run.kill_busiest(&mut replicas);
    eprintln!("killed replica {victim} holding {} leases", held.len());
    assert!(!held.is_empty(), "the killed replica held leases at the kill");
    let mut after = Observations::default();
    run.watch(&mut after, AFTER_KILL, &replicas);
    after.assert_nothing_expired(&run);
    for replica in replicas {
        let status = replica.process.terminate(Duration::from_secs(10));
        assert!(status.success(), "survivor {} did not stop cleanly\n{}", replica.label, run.logs());
    }

    let tokens = run.tokens();
    let victim_owner = owner_tag(victim);
    let mut lost = Vec::new();
    for token in &tokens {
        assert!(
            !token.lease_owner.as_deref().is_some_and(|owner| owner.contains(&victim_owner)),
            "{} still leased by the killed replica: {token:?}",
            token.name
        );
        match token.state {
            TokenState::Active | TokenState::Rotating => {}
            TokenState::NeedsAttention if token.attention_reason.as_deref() == Some("grant_lost") => {
                lost.push(token.name.to_string());
            }
            other => panic!("{} ended {other:?}: {token:?}\n{}", token.name, run.logs()),
        }
    }
    for name in &lost {
        assert!(held.contains(name), "{name} was lost but the killed replica did not hold it");
    }
    // A grant whose refresh reached GitLab in the instant of the kill cannot be told apart from
    // one whose refresh never left (its access token lives less than the probe needs): it gets
    // exactly one retry, which GitLab refuses as a reuse, and is flagged. Nothing else is reused.
    let stats = gitlab.sim.stats();
    assert_eq!(stats.family_revocations, 0, "{stats:?}");
    assert!(
        stats.refresh_token_reuses <= u64::try_from(lost.len()).unwrap(),
        "more reuses than grants lost with the killed replica ({lost:?}): {stats:?}\n{}",
        run.logs()
    );
    // No grant was refreshed twice: every refresh GitLab made is one stored version, or the one
    // answer a lost grant never got.
    let mut versions_gained = 0;
    for token in &tokens {
        let history: Vec<i64> =
            tokens::history(&mut run.conn, &token.name).unwrap().iter().map(|e| e.version).collect();
        assert_eq!(history, (1..=token.version).collect::<Vec<_>>(), "{}: history", token.name);
        versions_gained += u64::try_from(token.version - 1).unwrap();
    }
    let in_flight = u64::try_from(tokens.iter().filter(|t| t.state == TokenState::Rotating).count()).unwrap();
    let lost_answers = u64::try_from(lost.len()).unwrap();
    assert!(
        stats.refreshes >= versions_gained + lost_answers
            && stats.refreshes <= versions_gained + lost_answers + in_flight,
        "refreshes at GitLab {} vs versions stored {versions_gained} + answers lost {lost_answers} (+ {in_flight} in flight)",
        stats.refreshes
    );
    for name in &held {
        let token = tokens.iter().find(|t| t.name.as_str() == name).unwrap();
        assert!(
            token.state == TokenState::NeedsAttention || token.version > after.first_version[name],
            "{name}, held by the killed replica, was not refreshed by a survivor: {token:?}"
        );
    }
    eprintln!("{} grants lost with the killed replica; done after {:?}", lost.len(), started.elapsed());
}

/// The lease-owner fragment that names a process.
fn owner_tag(pid: u32) -> String {
    format!(":{pid}:")
}

/// A `tokenwarden serve` process and its name in the test.
struct Replica {
    label: String,
    process: ServeProcess,
}

/// What the watcher saw while the replicas ran.
#[derive(Default)]
struct Observations {
    /// Distinct leases (token, attempt) seen per replica pid.
    leases: HashMap<u32, usize>,
    seen_leases: HashSet<String>,
    /// Tokens seen past their access token's expiry, with when.
    expired: Vec<String>,
    /// Each token's version when the watch began.
    first_version: HashMap<String, i64>,
}

impl Observations {
    fn assert_nothing_expired(&self, run: &ReplicaRun) {
        assert!(self.expired.is_empty(), "access tokens expired: {:?}\n{}", self.expired, run.logs());
    }
}

/// One test's database, configuration, key and replica logs.
struct ReplicaRun {
    url: String,
    conn: DbConnection,
    config: PathBuf,
    key: PathBuf,
    dir: PathBuf,
    logs: Vec<PathBuf>,
}

impl ReplicaRun {
    /// Migrates the schema, records the master key, registers the simulator's OAuth application
    /// as provider `gitlab` and tracks [`GRANTS`] fresh grants, all due at once.
    fn new(url: &DatabaseUrl, gitlab: &TestGitlab, dir: &Path) -> Self {
        let DatabaseUrl::Postgres(text) = url else { panic!("a PostgreSQL URL") };
        let key_path = dir.join("master.key");
        let key = MasterKey::create(&key_path).unwrap();
        let cipher = Cipher::new(&key);
        Store::open(url).unwrap();
        let mut conn = connect(url).unwrap();
        meta::verify_or_record_key(&mut conn, &cipher).unwrap();
        let (client_id, client_secret) = gitlab.sim.create_application();
        let provider = NewProvider {
            name: ProviderName::new("gitlab").unwrap(),
            kind: ProviderKind::Gitlab,
            url: Some(gitlab.sim.url().to_owned()),
            token_url: None,
            client_id: Some(client_id.clone()),
            client_secret: Some(SecretString::from(client_secret)),
            redirect_uri: Some("https://app.example/callback".into()),
        };
        providers::insert(&mut conn, &cipher, &provider, "test", Utc::now()).unwrap();
        gitlab.sim.set_expires_in(ACCESS_LIFETIME);
        for i in 0..GRANTS {
            let refresh = gitlab.sim.create_grant(&client_id);
            let grant = NewToken {
                name: TokenName::new(format!("grant-{i:03}")).unwrap(),
                provider: ProviderName::new("gitlab").unwrap(),
                kind: TokenKind::GitlabOauth,
                resource: None,
                secret: None,
                refresh_token: Some(SecretString::from(refresh)),
                policy: PolicyOverrides {
                    lifetime: Some(HumanDuration::days(1)),
                    rotate_before: None,
                    rotate_at_fraction: None,
                },
                external_id: None,
                issued_at: None,
                expires_at: None,
                next_rotation_at: Some(Utc::now()),
                scopes: None,
            };
            tokens::insert(&mut conn, &cipher, &grant, "test", Utc::now()).unwrap();
        }
        let config = dir.join("replicas.toml");
        std::fs::write(&config, CONFIG).unwrap();
        Self { url: text.clone(), conn, config, key: key_path, dir: dir.to_owned(), logs: Vec::new() }
    }

    fn start_replica(&mut self, label: &str) -> Replica {
        let log = self.dir.join(format!("replica-{label}.log"));
        let env = [
            ("TOKENWARDEN_DATABASE_URL", self.url.clone()),
            ("TOKENWARDEN_MASTER_KEY_FILE", self.key.display().to_string()),
        ];
        let process = ServeProcess::start(&self.dir, &self.config, &log, &env);
        self.logs.push(log);
        Replica { label: label.to_owned(), process }
    }

    fn tokens(&mut self) -> Vec<Token> {
        tokens::list(&mut self.conn).expect("list tokens")
    }

    fn sim_stats(&self, gitlab: &TestGitlab) -> Stats {
        gitlab.sim.stats()
    }

    /// Polls the store for `length`: counts each replica's distinct leases and notes any active
    /// token whose access token has expired (a grant flagged `grant_lost` is not counted).
    fn watch(&mut self, seen: &mut Observations, length: Duration, replicas: &[Replica]) {
        let deadline = Instant::now() + length;
        for token in self.tokens() {
            seen.first_version.insert(token.name.to_string(), token.version);
        }
        while Instant::now() < deadline {
            let now = Utc::now();
            for token in self.tokens() {
                if let (Some(owner), Some(until)) = (&token.lease_owner, token.lease_expires_at)
                    && seen.seen_leases.insert(format!("{}@{until}", token.name))
                    && let Some(replica) = replicas.iter().find(|r| owner.contains(&r.process.owner_tag()))
                {
                    *seen.leases.entry(replica.process.pid()).or_default() += 1;
                }
                let expired = token.expires_at.is_some_and(|at| at <= now);
                if expired && token.state != TokenState::NeedsAttention {
                    seen.expired
                        .push(format!("{} at {now} (expired {:?}, {:?})", token.name, token.expires_at, token.state));
                }
            }
            std::thread::sleep(POLL);
        }
    }

    /// SIGKILLs the replica holding the most leases; returns its pid and the tokens it held.
    fn kill_busiest(&mut self, replicas: &mut Vec<Replica>) -> (u32, HashSet<String>) {
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            let tokens = self.tokens();
            let held_by = |pid: u32| -> HashSet<String> {
                tokens
                    .iter()
                    .filter(|t| t.state == TokenState::Rotating)
                    .filter(|t| t.lease_owner.as_deref().is_some_and(|o| o.contains(&owner_tag(pid))))
                    .map(|t| t.name.to_string())
                    .collect()
            };
            let (index, held) = replicas
                .iter()
                .enumerate()
                .map(|(i, r)| (i, held_by(r.process.pid())))
                .max_by_key(|(_, held)| held.len())
                .unwrap();
            if !held.is_empty() {
                let victim = replicas.remove(index);
                let pid = victim.process.pid();
                victim.process.kill();
                // What the kill left behind: leases that committed no result.
                let left: HashSet<String> = {
                    let tokens = self.tokens();
                    tokens
                        .iter()
                        .filter(|t| t.state == TokenState::Rotating)
                        .filter(|t| t.lease_owner.as_deref().is_some_and(|o| o.contains(&owner_tag(pid))))
                        .map(|t| t.name.to_string())
                        .collect()
                };
                return (pid, held.union(&left).cloned().collect());
            }
            assert!(Instant::now() < deadline, "no replica held a lease for 15 s\n{}", self.logs());
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    fn assert_no_reuse(&self, gitlab: &TestGitlab, when: &str) {
        let stats = gitlab.sim.stats();
        assert_eq!(
            stats.refresh_token_reuses,
            0,
            "{when}: a refresh token was presented twice: {stats:?}\n{}",
            self.logs()
        );
        assert_eq!(stats.family_revocations, 0, "{when}: {stats:?}");
    }

    /// The last lines of every replica's log.
    fn logs(&self) -> String {
        let mut text = String::new();
        for log in &self.logs {
            let content = std::fs::read_to_string(log).unwrap_or_default();
            let lines: Vec<&str> = content.lines().collect();
            text.push_str(&format!(
                "--- {} (last 40 lines)\n{}\n",
                log.display(),
                lines[lines.len().saturating_sub(40)..].join("\n")
            ));
        }
        text
    }
}
