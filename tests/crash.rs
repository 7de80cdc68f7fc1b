//! Crash points: `tokenwarden serve` is killed with SIGKILL while it holds rotation leases, at
//! each stage of the claim → call → commit protocol, and restarted on the same store. Every
//! token must end `active` or `needs_attention` with a reason — none stuck in `rotating`, none
//! rotated twice — and the simulated GitLab must count no token reuse.
//!
//! The simulator answers every request after a fixed latency, so a kill lands at a known stage:
//! while a rotate or refresh request waits (GitLab has not acted yet), while the recovery probe
//! (`GET …/self`) of a lease left behind waits, or after GitLab rotated but held its answer back
//! (a scripted fault). Tokens are
//! released wave by wave (`token resume`) so each daemon claims exactly the tokens meant for it.

mod common;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use chrono::{Days, Utc};
use common::Sandbox;
use common::serve_process::ServeProcess as Daemon;
use secrecy::ExposeSecret;
use tokenwarden::config::DatabaseUrl;
use tokenwarden::crypto::{Cipher, MasterKey};
use tokenwarden::domain::{TokenName, TokenState};
use tokenwarden::simulator::{Fault, FaultRates, FaultTarget, Simulator, Stats, TokenOwner};
use tokenwarden::store::models::Token;
use tokenwarden::store::tokens::{self, SecretField};
use tokenwarden::store::{DbConnection, connect};

/// Short provider timeouts so leases left by a killed daemon run out quickly: a lease lasts
/// 2 × 1 s + 5 s = 7 s, and an unknown outcome is looked at again after 2 s.
const CONFIG: &str = r#"
[scheduler]
provider_timeout = "1s"
retry_base = "1s"
retry_max = "2s"
"#;

/// Added by the simulator before it acts on any request: the window in which a kill finds a
/// request sent but not yet acted on. Well under the 1 s provider timeout.
const LATENCY_MS: u64 = 400;
/// How long the simulator holds the answer of a rotation it already made (past the timeout).
const HELD_ANSWER_MS: u64 = 3_000;
/// How often the store is polled.
const POLL: Duration = Duration::from_millis(10);

const ROTATION_RESPONSE_LOST: &str = "rotation_response_lost";
const GRANT_LOST: &str = "grant_lost";

/// Killed while their rotate request waits at GitLab (not acted on yet), then killed again while
/// the recovery probe of the lease they left waits at GitLab.
const PROBING: [&str; 4] = ["gl-00", "gl-01", "gl-02", "gl-03"];
/// Killed while their rotate request waits at GitLab (not acted on yet); recovered by the final
/// daemon.
const ROTATE_SENT: [&str; 4] = ["gl-04", "gl-05", "gl-06", "gl-07"];
/// Killed after GitLab rotated them, while it held the answer back.
const ROTATED_ANSWER_HELD: [&str; 4] = ["gl-08", "gl-09", "gl-10", "gl-11"];
/// Killed before their refresh reached GitLab, then killed again while recovery probed them.
const RETRY_KILLED: [&str; 2] = ["grant-0", "grant-1"];
/// Killed before their refresh reached GitLab, then recovered.
const RETRY_RECOVERS: [&str; 2] = ["grant-2", "grant-3"];
/// Lifetime of the grants' first access tokens: short enough (under the 5-minute margin) that
/// they are due at once, long enough that recovery can still probe them (GitLab invalidates an
/// access token when its grant is refreshed, so a valid one proves no refresh happened).
const GRANT_ACCESS_LIFETIME: Duration = Duration::from_secs(150);

#[test]
fn sigkill_while_leases_are_held_leaves_every_token_settled_and_nothing_rotated_twice() {
    let started = Instant::now();
    let mut run = CrashRun::new();
    let sim_url = run.sandbox.gitlab_url();
    run.sandbox.add_gitlab_oauth_provider();

    // Project tokens expiring in two days are due at once (rotate_before is 7 days).
    let expiry = Utc::now().date_naive() + Days::new(2);
    for name in PROBING.iter().chain(&ROTATE_SENT).chain(&ROTATED_ANSWER_HELD) {
        let secret = run.sim().create_access_token(TokenOwner::Project("42".into()), &["api"], expiry).1;
        let args = ["token", "add", name, "--provider", "gitlab", "--kind", "gitlab-project-access-token"];
        run.sandbox.ok(&[&args[..], &["--project", "42", "--secret-stdin"]].concat(), &format!("{secret}\n"));
    }
    // Grants whose access token (refreshed once by `token add`) lives 60 s are due at once
    // (rotate_before is 5 min for OAuth). Refreshes from now on give two hours, so a grant
    // refreshed by a daemon is not due again during the test.
    run.sim().set_expires_in(GRANT_ACCESS_LIFETIME);
    let client_id = run.sim().with_state(|state| state.application_ids().remove(0));
    for name in RETRY_KILLED.iter().chain(&RETRY_RECOVERS) {
        let refresh_token = run.sim().create_grant(&client_id);
        let args = ["token", "add", name, "--provider", "gitlab", "--kind", "gitlab-oauth", "--refresh-token-stdin"];
        run.sandbox.ok(&args, &format!("{refresh_token}\n"));
    }
    run.sim().set_expires_in(Duration::from_secs(7_200));
    let all: Vec<&str> = PROBING
        .iter()
        .chain(&ROTATE_SENT)
        .chain(&ROTATED_ANSWER_HELD)
        .chain(&RETRY_KILLED)
        .chain(&RETRY_RECOVERS)
        .copied()
        .collect();
    for name in &all {
        run.sandbox.ok(&["token", "pause", name], "");
    }
    run.open_db();
    let at_start = run.sim().stats();
    assert_eq!((at_start.rotations, at_start.refreshes), (0, 4), "only the grants' first refreshes so far");
    run.sim().set_rates(FaultRates { latency_ms: LATENCY_MS, ..FaultRates::default() });
    eprintln!("set-up done after {:?} (simulator at {sim_url})", started.elapsed());

    // 1: kill as soon as the daemon holds the leases: rotate and refresh requests still wait at
    // GitLab (a first attempt sends its rotate request at once; only recovery probes first).
    let wave: Vec<&str> = PROBING.iter().chain(&RETRY_KILLED).copied().collect();
    run.kill_round("1-rotate-sent", &wave, |_, _| true);
    // 2: the same stage for tokens the final daemon recovers without being killed again.
    run.kill_round("2-rotate-sent", &ROTATE_SENT, |_, _| true);
    // 3: GitLab rotates, then holds the answer back; kill once it rotated all four.
    for _ in ROTATED_ANSWER_HELD {
        run.sim().push_fault(FaultTarget::Renewal, Fault::SlowAfterCommit { delay_ms: HELD_ANSWER_MS });
    }
    let rotations = run.sim().stats().rotations;
    run.kill_round("3-rotated-answer-held", &ROTATED_ANSWER_HELD, |_, stats| stats.rotations >= rotations + 4);
    assert_eq!(run.sim().stats().faults_injected, 4, "every scripted fault went to a round-3 rotation");
    // 4: more grants killed before their refresh reached GitLab.
    run.kill_round("4-refresh-sent", &RETRY_RECOVERS, |_, _| true);
    // 5: when the first leases run out, a new daemon resolves them — probing the tokens and the
    // grants' old access tokens — and is killed as well.
    run.kill_round("5-recovery", &[], |_, _| true);
    let mid = run.sim().stats();
    assert_eq!((mid.rotations, mid.refreshes), (4, 4), "before the final run, only round 3's rotations happened");

    // The final daemon resolves every lease left behind and runs until nothing is due.
    let daemon = run.start_daemon("final");
    run.wait_until("every token settled and nothing due", Duration::from_secs(40), |tokens, _| {
        let now = Utc::now();
        tokens.iter().all(|t| match t.state {
            TokenState::Active => t.lease_owner.is_none() && t.next_rotation_at.is_some_and(|at| at > now),
            TokenState::NeedsAttention => t.lease_owner.is_none(),
            _ => false,
        })
    });
    let status = daemon.terminate(Duration::from_secs(5));
    assert!(status.success(), "the final daemon stopped with {status}\n{}", run.diagnostics());
    eprintln!("all settled after {:?}", started.elapsed());

    run.check_settled_and_counted(&all);
    run.check_outcome(&PROBING, "active", None, 2);
    run.check_outcome(&ROTATE_SENT, "active", None, 2);
    run.check_outcome(&ROTATED_ANSWER_HELD, "needs_attention", Some(ROTATION_RESPONSE_LOST), 1);
    run.check_outcome(&RETRY_KILLED, "active", None, 3);
    run.check_outcome(&RETRY_RECOVERS, "active", None, 3);
    eprintln!("crash test done in {:?}", started.elapsed());
}

/// The crash point the test above leaves out: GitLab already consumed the refresh token (it
/// refreshed and holds its answer back) when the daemon is killed. The restarted daemon must
/// find out by probing the old access token, not by sending the dead refresh token again.
#[test]
fn sigkill_after_gitlab_used_the_refresh_token_counts_no_reuse() {
    let mut run = CrashRun::new();
    run.sandbox.add_gitlab_oauth_provider();
    run.sim().set_expires_in(GRANT_ACCESS_LIFETIME);
    let client_id = run.sim().with_state(|state| state.application_ids().remove(0));
    let refresh_token = run.sim().create_grant(&client_id);
    let args = ["token", "add", "grant", "--provider", "gitlab", "--kind", "gitlab-oauth", "--refresh-token-stdin"];
    run.sandbox.ok(&args, &format!("{refresh_token}\n"));
    run.sim().set_expires_in(Duration::from_secs(7_200));
    run.open_db();
    run.sim().push_fault(FaultTarget::Renewal, Fault::SlowAfterCommit { delay_ms: HELD_ANSWER_MS });
    run.kill_round("refreshed-answer-held", &["grant"], |_, stats| stats.refreshes >= 2);

    let daemon = run.start_daemon("final");
    run.wait_until("the grant settled", Duration::from_secs(30), |tokens, _| {
        tokens.iter().all(|t| matches!(t.state, TokenState::Active | TokenState::NeedsAttention))
    });
    assert!(daemon.terminate(Duration::from_secs(5)).success());
    run.check_settled_and_counted(&["grant"]);
    run.check_outcome(&["grant"], "needs_attention", Some(GRANT_LOST), 2);
}

/// The store as the daemon sees it, read directly (fast enough to poll every few ms).
struct Db {
    conn: DbConnection,
    cipher: Cipher,
}

impl Db {
    fn open(sandbox: &Sandbox) -> Self {
        let url = DatabaseUrl::parse(&sandbox.database_url()).expect("database URL");
        let conn = connect(&url).expect("open the database");
        let key = MasterKey::read(&sandbox.key_path()).expect("read the master key");
        Self { conn, cipher: Cipher::new(&key) }
    }

    fn tokens(&mut self) -> Vec<Token> {
        tokens::list(&mut self.conn).expect("list tokens")
    }

    fn secret(&mut self, name: &str, field: SecretField) -> Option<String> {
        let name = TokenName::new(name).expect("token name");
        let secret = tokens::read_secret(&mut self.conn, &self.cipher, &name, field).expect("read a secret");
        secret.map(|s| s.expose_secret().to_owned())
    }

    fn history_versions(&mut self, name: &str) -> Vec<i64> {
        let name = TokenName::new(name).expect("token name");
        tokens::history(&mut self.conn, &name).expect("token history").iter().map(|e| e.version).collect()
    }
}

/// One test's sandbox, its store, its config file and the daemons' logs.
struct CrashRun {
    sandbox: Sandbox,
    db: Option<Db>,
    config: PathBuf,
    logs: Vec<PathBuf>,
    rounds: Vec<String>,
}

impl CrashRun {
    fn new() -> Self {
        let sandbox = Sandbox::new();
        let config = sandbox.path().join("crash.toml");
        std::fs::write(&config, CONFIG).expect("write the config file");
        Self { sandbox, db: None, config, logs: Vec::new(), rounds: Vec::new() }
    }

    fn sim(&self) -> &Simulator {
        &self.sandbox.gitlab.sim
    }

    fn open_db(&mut self) {
        self.db = Some(Db::open(&self.sandbox));
    }

    fn db(&mut self) -> &mut Db {
        self.db.as_mut().expect("the store is open")
    }

    /// Starts `tokenwarden serve` on a free port with the test's config.
    fn start_daemon(&mut self, label: &str) -> Daemon {
        let log = self.sandbox.path().join(format!("daemon-{label}.log"));
        let env = [("TOKENWARDEN_DATABASE_URL", self.sandbox.database_url())];
        let daemon = Daemon::start(self.sandbox.path(), &self.config, &log, &env);
        self.logs.push(log);
        daemon
    }

    /// Resumes `wave`, starts a daemon, waits until it holds the lease of every token of the
    /// wave (and of the grants whose leases ran out, in the recovery round) and `ready` holds,
    /// then SIGKILLs it and checks the leases are left behind.
    fn kill_round(&mut self, label: &str, wave: &[&str], mut ready: impl FnMut(&[Token], &Stats) -> bool) {
        for name in wave {
            self.sandbox.ok(&["token", "resume", name], "");
        }
        let recovery = wave.is_empty();
        let daemon = self.start_daemon(label);
        let since_start = Instant::now();
        let owner = daemon.owner_tag();
        let held: Vec<String> = if recovery {
            RETRY_KILLED.iter().chain(&PROBING).map(|s| (*s).to_owned()).collect()
        } else {
            wave.iter().map(|s| (*s).to_owned()).collect()
        };
        let limit = if recovery { Duration::from_secs(15) } else { Duration::from_secs(10) };
        self.wait_until(&format!("round {label}: leases of {held:?} held by the daemon"), limit, |tokens, stats| {
            let holds = |name: &String| {
                tokens.iter().any(|t| {
                    t.name.as_str() == name
                        && t.state == TokenState::Rotating
                        && t.lease_owner.as_deref().is_some_and(|o| o.contains(&owner))
                })
            };
            held.iter().all(holds) && ready(tokens, stats)
        });
        daemon.kill();
        let killed_after = since_start.elapsed();
        let stats = self.sim().stats();
        let tokens = self.db().tokens();
        let rotating: Vec<&str> =
            tokens.iter().filter(|t| t.state == TokenState::Rotating).map(|t| t.name.as_str()).collect();
        for name in &held {
            assert!(rotating.contains(&name.as_str()), "round {label}: {name} not left rotating after the kill");
        }
        self.rounds.push(format!(
            "round {label}: killed {killed_after:?} after start holding {rotating:?}; simulator {stats:?}"
        ));
        eprintln!("{}", self.rounds.last().expect("just pushed"));
    }

    /// Polls the store and the simulator until `done`, or fails with diagnostics.
    fn wait_until(&mut self, what: &str, limit: Duration, mut done: impl FnMut(&[Token], &Stats) -> bool) {
        let deadline = Instant::now() + limit;
        loop {
            let tokens = self.db().tokens();
            let stats = self.sim().stats();
            if done(&tokens, &stats) {
                return;
            }
            if Instant::now() > deadline {
                panic!("timed out after {limit:?} waiting for {what}\n{}", self.diagnostics());
            }
            std::thread::sleep(POLL);
        }
    }

    /// The token list, the simulator's counters, what each round saw, and the daemons' logs.
    fn diagnostics(&self) -> String {
        let mut text = String::new();
        let list = self.sandbox.run(&["token", "list", "--json"], "");
        text.push_str(&format!("token list --json:\n{}\n", String::from_utf8_lossy(&list.stdout)));
        text.push_str(&format!("simulator: {:?}\n", self.sim().stats()));
        for round in &self.rounds {
            text.push_str(&format!("{round}\n"));
        }
        for log in &self.logs {
            let content = std::fs::read_to_string(log).unwrap_or_default();
            let lines: Vec<&str> = content.lines().collect();
            let tail = lines[lines.len().saturating_sub(60)..].join("\n");
            text.push_str(&format!("--- {} (last 60 lines)\n{tail}\n", file_name(log)));
        }
        text
    }

    /// The requirement, for every token: settled, no lease left, the credential in use works
    /// at GitLab, and GitLab's renewals equal the versions gained plus the answers lost.
    fn check_settled_and_counted(&mut self, names: &[&str]) {
        let listed = self.sandbox.token_list();
        let mut listed_names: Vec<&str> = listed.iter().filter_map(|t| t["name"].as_str()).collect();
        let mut expected = names.to_vec();
        listed_names.sort_unstable();
        expected.sort_unstable();
        assert_eq!(listed_names, expected, "the tokens listed");
        let stats = self.sim().stats();
        let diagnostics = self.diagnostics();
        assert_eq!(stats.family_revocations, 0, "GitLab revoked a token family (rotated token reused)\n{diagnostics}");
        assert_eq!(stats.refresh_token_reuses, 0, "a used refresh token was sent again\n{diagnostics}");
        let mut versions_gained = 0;
        let mut answers_lost = 0;
        for token in &listed {
            let name = token["name"].as_str().expect("name");
            let state = token["state"].as_str().expect("state");
            let reason = token["attention_reason"].as_str().unwrap_or_default();
            let version = token["version"].as_i64().expect("version");
            let oauth = token["kind"] == "gitlab-oauth";
            assert_ne!(state, "rotating", "{name} is stuck in rotating\n{diagnostics}");
            assert!(
                token["lease_owner"].is_null() && token["lease_expires_at"].is_null(),
                "{name}: lease left {token}"
            );
            assert!(token["recovery"].is_null(), "{name}: recovery marker left: {token}");
            match state {
                "active" => assert!(reason.is_empty(), "{name} is active with a reason: {token}"),
                "needs_attention" => assert!(
                    [ROTATION_RESPONSE_LOST, GRANT_LOST].contains(&reason),
                    "{name} needs attention for an unexpected reason '{reason}': {token}\n{diagnostics}"
                ),
                other => panic!("{name} ended in state {other}, not active or needs_attention\n{diagnostics}"),
            }
            assert_eq!(self.db().history_versions(name), (1..=version).collect::<Vec<_>>(), "{name}: history");
            versions_gained += u64::try_from(version - 1).expect("version starts at 1");

            // Was the credential the store holds consumed at GitLab (renewed, answer never stored)?
            let secret = self.db().secret(name, SecretField::Secret);
            let consumed = if oauth {
                let refresh = self.db().secret(name, SecretField::RefreshToken).expect("a grant has a refresh token");
                !self.sim().with_state(|s| s.refresh_token_is_live(&refresh))
            } else {
                let secret = secret.clone().expect("an access token has a secret");
                self.sim().with_state(|s| s.access_token(&secret).map(|t| t.rotated)).expect("GitLab knows the token")
            };
            if consumed {
                answers_lost += 1;
                let lost = if oauth { GRANT_LOST } else { ROTATION_RESPONSE_LOST };
                assert_eq!((state, reason), ("needs_attention", lost), "{name}: its credential was used up at GitLab");
            }
            if state == "active" {
                let secret = secret.expect("an active token has a secret");
                assert!(self.sim().accepts(&secret), "{name}: GitLab refuses the current secret\n{diagnostics}");
            }
        }
        assert_eq!(
            stats.rotations + stats.refreshes,
            versions_gained + answers_lost,
            "every renewal at GitLab is one stored version or one lost answer (none twice)\n{diagnostics}"
        );
    }

    /// Each of `names` ended in `state` with `reason` at `version`.
    fn check_outcome(&self, names: &[&str], state: &str, reason: Option<&str>, version: i64) {
        for name in names {
            let token = self.sandbox.token_show(name);
            let got = (token["state"].as_str(), token["attention_reason"].as_str(), token["version"].as_i64());
            assert_eq!(got, (Some(state), reason, Some(version)), "{name}: {token}\n{}", self.diagnostics());
        }
    }
}

fn file_name(path: &Path) -> String {
    path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default()
}
