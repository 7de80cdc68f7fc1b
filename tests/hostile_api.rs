//! Hostile input to the HTTP API: schemathesis fuzzes a real `tokenwarden serve` from its own
//! `/openapi.json`, once with an operator's key, once with a reader's and once with none.
//!
//! Every run must pass schemathesis' checks (no server error, responses as the schema says,
//! invalid input rejected, authentication enforced); every error must be the contract's JSON
//! `{"error","message"}`; no 5xx but a documented 503 may appear; and the store must end exactly
//! as the *accepted* requests explain — a forced rotation answered 2xx bumps its token's version
//! and writes its history and audit rows, a secret read answered 2xx writes one audit row, and
//! nothing a rejected request sent changes anything.
//!
//! schemathesis comes from PyPI (`pip install schemathesis`; `scripts/test` installs it). Without
//! it the test prints a skip note, or fails when `TOKENWARDEN_REQUIRE_FUZZ=1` (CI).
//! `TOKENWARDEN_FUZZ_EXAMPLES` (default 40 per operation) and `TOKENWARDEN_FUZZ_SEED` tune a run.

mod common;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use base64::Engine;
use common::Sandbox;
use common::serve_process::{JsonLogged, start_json_logged};
use diesel::connection::SimpleConnection;
use diesel::prelude::*;
use diesel::sql_types::{BigInt, Text};

/// Default examples per API operation and phase: about 400–700 requests per run, seconds each.
const DEFAULT_EXAMPLES: u32 = 40;

/// A running `tokenwarden serve` and the log lines it writes.
struct Daemon {
    child: Child,
    addr: SocketAddr,
    log: Arc<Mutex<Vec<String>>>,
}

impl Daemon {
    /// Starts `serve` on an ephemeral port and waits for its "serving" log line.
    fn start(sandbox: &Sandbox) -> Daemon {
        let JsonLogged { child, addr, startup, rest } = start_json_logged(sandbox);
        let log = Arc::new(Mutex::new(startup));
        let sink = log.clone();
        std::thread::spawn(move || rest.map_while(Result::ok).for_each(|line| sink.lock().unwrap().push(line)));
        Daemon { child, addr, log }
    }

    /// Log lines that report a panic or an ERROR-level event.
    fn failures_logged(&self) -> Vec<String> {
        let log = self.log.lock().unwrap();
        log.iter().filter(|line| line.contains("panicked") || line.contains(r#""level":"ERROR""#)).cloned().collect()
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The schemathesis command, if installed.
fn schemathesis() -> Option<String> {
    let found = Command::new("schemathesis").arg("--version").output().is_ok_and(|out| out.status.success());
    found.then(|| "schemathesis".to_owned())
}

/// A store with a GitLab provider (with an OAuth application) at the simulator, active project
/// tokens `alpha`, `0` and `00`, a paused one `beta`, an OAuth grant `gamma`, an operator `op`
/// and a reader `rd` granted `alpha` and `0`. Returns the operator's and the reader's keys.
///
/// `0` and `00` are names schemathesis tries on its own (the shortest strings the name's
/// pattern allows), so the reader's run, which cannot list tokens, reads one token it was
/// granted and is refused one it was not.
fn seed(sandbox: &Sandbox) -> (String, String) {
    let sim = &sandbox.gitlab.sim;
    let (client_id, client_secret) = sim.create_application();
    let url = sandbox.gitlab_url();
    let provider = ["provider", "add", "gitlab", "--kind", "gitlab", "--url", &url, "--client-id", &client_id];
    sandbox.ok(&[&provider[..], &["--client-secret-stdin"]].concat(), &format!("{client_secret}\n"));
    for name in ["alpha", "0", "00"] {
        sandbox.add_project_token(name);
    }
    sandbox.add_project_token("beta");
    sandbox.ok(&["token", "pause", "beta"], "");
    let grant = sim.create_grant(&client_id);
    let kind = ["--kind", "gitlab-oauth", "--refresh-token-stdin"];
    sandbox.ok(&[&["token", "add", "gamma", "--provider", "gitlab"][..], &kind].concat(), &format!("{grant}\n"));
    let key = |args: &[&str]| {
        let printed: serde_json::Value = serde_json::from_str(&sandbox.ok(args, "")).expect("client JSON");
        printed["api_key"].as_str().expect("api_key").to_owned()
    };
    let operator = key(&["client", "add", "op", "--role", "operator"]);
    let reader = key(&["client", "add", "rd", "--role", "reader", "--grant", "alpha", "--grant", "0"]);
    (operator, reader)
}

/// One request schemathesis sent and the answer it got.
#[derive(Debug)]
struct Interaction {
    method: String,
    path: String,
    status: u16,
    content_type: Option<String>,
    body: Vec<u8>,
}

/// What one schemathesis run did.
struct FuzzRun {
    passed: bool,
    output: String,
    cases_generated: Option<u64>,
    interactions: Vec<Interaction>,
}

/// Runs schemathesis against the daemon with `key` (if any) and reads its NDJSON report.
fn fuzz(command: &str, daemon: &Daemon, key: Option<&str>, work: &Path, examples: u32, seed: u64) -> FuzzRun {
    let report = work.join("report.ndjson");
    let _ = std::fs::remove_file(&report);
    let mut cmd = Command::new(command);
    cmd.current_dir(work)
        .args(["run", &format!("http://{}/openapi.json", daemon.addr)])
        .args(["--checks", "all", "--workers", "1", "--max-examples", &examples.to_string()])
        .args(["--seed", &seed.to_string(), "--request-timeout", "30"])
        .args(["--report", "ndjson", "--report-ndjson-path"])
        .arg(&report)
        .env("NO_COLOR", "1")
        .env("SCHEMATHESIS_TELEMETRY", "false");
    if let Some(key) = key {
        cmd.args(["--header", &format!("Authorization: Bearer {key}")]);
    }
    let out = cmd.output().expect("run schemathesis");
    let output = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    let report = std::fs::read_to_string(&report).unwrap_or_default();
    FuzzRun {
        passed: out.status.success(),
        cases_generated: generated_count(&output),
        interactions: interactions(&report),
        output,
    }
}

/// The "N generated" figure from schemathesis' summary.
fn generated_count(output: &str) -> Option<u64> {
    let line = output.lines().find(|line| line.contains(" generated"))?;
    line.split_whitespace().take_while(|word| !word.starts_with("generated")).last()?.parse().ok()
}

/// Every request and answer in a schemathesis NDJSON report.
fn interactions(report: &str) -> Vec<Interaction> {
    let mut found = Vec::new();
    for line in report.lines() {
        let event: serde_json::Value = serde_json::from_str(line).unwrap_or_default();
        let Some(recorded) = event["ScenarioFinished"]["recorder"]["interactions"].as_object() else { continue };
        found.extend(recorded.values().filter_map(interaction));
    }
    found
}

fn interaction(recorded: &serde_json::Value) -> Option<Interaction> {
    let (request, response) = (&recorded["request"], &recorded["response"]);
    let uri = request["uri"].as_str()?;
    let path = uri.splitn(4, '/').nth(3).map(|rest| format!("/{}", rest.split('?').next().unwrap_or(rest)))?;
    let content = &response["content"];
    let body = match (content["$base64"].as_str(), content.as_str()) {
        (Some(encoded), _) => base64::engine::general_purpose::STANDARD.decode(encoded).unwrap_or_default(),
        (None, Some(text)) => text.as_bytes().to_vec(),
        (None, None) => Vec::new(),
    };
    Some(Interaction {
        method: request["method"].as_str()?.to_owned(),
        path,
        status: u16::try_from(response["status_code"].as_u64()?).ok()?,
        content_type: response["headers"]["content-type"][0].as_str().map(str::to_owned),
        body,
    })
}

/// What is wrong with an answer by the contract: a 5xx other than 503, or an error whose body
/// is not JSON `{"error","message"}`.
fn contract_violation(interaction: &Interaction) -> Option<String> {
    let Interaction { method, path, status, .. } = interaction;
    if *status >= 500 && *status != 503 {
        return Some(format!("{method} {path} answered {status}"));
    }
    if *status < 400 || method == "HEAD" {
        return None;
    }
    let body: serde_json::Value = serde_json::from_slice(&interaction.body).unwrap_or_default();
    let is_error_body = body["error"].is_string() && body["message"].is_string() && body.as_object()?.len() == 2;
    let is_json = interaction.content_type.as_deref() == Some("application/json");
    if is_error_body && is_json {
        return None;
    }
    let text = String::from_utf8_lossy(&interaction.body);
    Some(format!("{method} {path} answered {status} without the JSON error body: {text:?}"))
}

/// Decodes `%XX` escapes in a path segment.
fn percent_decode(segment: &str) -> String {
    let bytes = segment.as_bytes();
    let mut decoded = Vec::with_capacity(bytes.len());
    let mut index = 0;
    while index < bytes.len() {
        let escaped =
            bytes.get(index + 1..index + 3).and_then(|hex| u8::from_str_radix(std::str::from_utf8(hex).ok()?, 16).ok());
        match (bytes[index], escaped) {
            (b'%', Some(byte)) => {
                decoded.push(byte);
                index += 3;
            }
            (byte, _) => {
                decoded.push(byte);
                index += 1;
            }
        }
    }
    String::from_utf8_lossy(&decoded).into_owned()
}

/// Per token name, how many forced rotations and secret reads were answered 2xx.
#[derive(Debug, Default)]
struct Accepted {
    rotations: BTreeMap<String, i64>,
    secret_reads: BTreeMap<String, i64>,
    /// Accepted `PATCH /v1/tokens/{name}`: each changes the token's policy and plan, and a plan
    /// it made due is rotated by the scheduler.
    updates: BTreeMap<String, i64>,
    /// Accepted `POST /v1/tokens/{name}/ack`: each records the reader's version and an audit row.
    acks: BTreeMap<String, i64>,
    /// Accepted `POST /v1/authorizations`, by the token named in the answer: each records a
    /// consent link and an audit row, and changes no token.
    links: BTreeMap<String, i64>,
}

fn accepted(interactions: &[Interaction]) -> Accepted {
    let mut accepted = Accepted::default();
    for interaction in interactions.iter().filter(|i| (200..300).contains(&i.status)) {
        if interaction.method == "POST" && interaction.path == "/v1/authorizations" {
            let answer: serde_json::Value = serde_json::from_slice(&interaction.body).unwrap_or_default();
            let token = answer["token"].as_str().unwrap_or_default().to_owned();
            *accepted.links.entry(token).or_default() += 1;
            continue;
        }
        let segments: Vec<&str> = interaction.path.trim_start_matches('/').split('/').collect();
        let counter = match (interaction.method.as_str(), segments.as_slice()) {
            ("POST", ["v1", "tokens", _, "rotate"]) => &mut accepted.rotations,
            ("GET", ["v1", "tokens", _, "secret"]) => &mut accepted.secret_reads,
            ("PATCH", ["v1", "tokens", _]) => &mut accepted.updates,
            ("POST", ["v1", "tokens", _, "ack"]) => &mut accepted.acks,
            _ => continue,
        };
        *counter.entry(percent_decode(segments[2])).or_default() += 1;
    }
    accepted
}

#[derive(QueryableByName)]
struct Row {
    #[diesel(sql_type = Text)]
    key: String,
    #[diesel(sql_type = BigInt)]
    n: i64,
    #[diesel(sql_type = Text)]
    rest: String,
}

/// What the store holds: every token row in full, the number of rows of every other table,
/// and the audit log counted by action and target.
#[derive(Debug, Clone, PartialEq)]
struct Snapshot {
    tokens: BTreeMap<String, (i64, String)>,
    counts: BTreeMap<String, i64>,
    audit: BTreeMap<String, i64>,
}

const TOKEN_ROW: &str = "SELECT name AS key, version AS n, state || '|' || coalesce(hex(secret), '') || '|' || \
     coalesce(hex(refresh_token), '') || '|' || coalesce(external_id, '') || '|' || coalesce(expires_at, '') || '|' || \
     coalesce(next_rotation_at, '') || '|' || attempt_count || '|' || coalesce(last_error, '') || '|' || \
     coalesce(attention_reason, '') || '|' || coalesce(lease_owner, '') || '|' || updated_at AS rest FROM tokens";

fn snapshot(db: &Path) -> Snapshot {
    let mut conn = SqliteConnection::establish(&db.display().to_string()).expect("open the store");
    conn.batch_execute("PRAGMA busy_timeout = 5000").expect("busy timeout");
    let rows = |sql: &str, conn: &mut SqliteConnection| diesel::sql_query(sql).load::<Row>(conn).expect(sql);
    let tokens = rows(TOKEN_ROW, &mut conn).into_iter().map(|r| (r.key, (r.n, r.rest))).collect();
    let tables = ["providers", "clients", "client_grants", "token_history", "outbox", "webhook_attempts", "meta"];
    let count_sql = tables
        .iter()
        .map(|table| format!("SELECT '{table}' AS key, COUNT(*) AS n, '' AS rest FROM {table}"))
        .collect::<Vec<_>>()
        .join(" UNION ALL ");
    let counts = rows(&count_sql, &mut conn).into_iter().map(|r| (r.key, r.n)).collect();
    let audit_sql = "SELECT action || ' ' || target_name AS key, COUNT(*) AS n, '' AS rest FROM audit_log GROUP BY 1";
    let audit = rows(audit_sql, &mut conn).into_iter().map(|r| (r.key, r.n)).collect();
    Snapshot { tokens, counts, audit }
}

/// The store `before` should turn into after `accepted` requests and nothing else: rotated
/// tokens one version up per rotation (their other fields are the rotation's), every other
/// token untouched, one history and audit row per rotation, one audit row per secret read, per acknowledgement and
/// per policy update. A token whose policy an accepted update changed may also have been
/// rotated by the scheduler (the new plan made it due): never fewer versions than accepted
/// rotations, and still one history and audit row per version.
fn matches_expectation(before: &Snapshot, after: &Snapshot, accepted: &Accepted) -> Result<(), String> {
    let mut problems = Vec::new();
    let mut rotated: BTreeMap<String, i64> = BTreeMap::new();
    for (name, (version, rest)) in &before.tokens {
        let rotations = accepted.rotations.get(name).copied().unwrap_or(0);
        let updates = accepted.updates.get(name).copied().unwrap_or(0);
        let Some((now_version, now_rest)) = after.tokens.get(name) else {
            problems.push(format!("token {name} disappeared"));
            continue;
        };
        let explained =
            if updates > 0 { *now_version >= version + rotations } else { *now_version == version + rotations };
        if !explained {
            problems
                .push(format!("token {name}: version {version} -> {now_version} after {rotations} accepted rotations"));
        }
        if rotations == 0 && updates == 0 && now_rest != rest {
            problems.push(format!("token {name} changed without an accepted rotation:\n  {rest}\n  {now_rest}"));
        }
        if now_version > version {
            rotated.insert(name.clone(), now_version - version);
        }
    }
    if after.tokens.len() != before.tokens.len() {
        problems.push(format!("tokens {:?} -> {:?}", before.tokens.keys(), after.tokens.keys()));
    }
    let mut counts = before.counts.clone();
    *counts.entry("token_history".to_owned()).or_default() += rotated.values().sum::<i64>();
    if counts != after.counts {
        problems.push(format!("row counts: expected {counts:?}, found {:?}", after.counts));
    }
    let mut audit = before.audit.clone();
    for (name, n) in &rotated {
        *audit.entry(format!("token.rotate {name}")).or_default() += n;
    }
    for (name, n) in &accepted.updates {
        *audit.entry(format!("token.update {name}")).or_default() += n;
    }
    for (name, n) in &accepted.secret_reads {
        *audit.entry(format!("token.secret_read {name}")).or_default() += n;
    }
    for (name, n) in &accepted.acks {
        *audit.entry(format!("token.acknowledged {name}")).or_default() += n;
    }
    for (name, n) in &accepted.links {
        *audit.entry(format!("token.authorize_link {name}")).or_default() += n;
    }
    if audit != after.audit {
        problems.push(format!("audit rows: expected {audit:?}, found {:?}", after.audit));
    }
    if problems.is_empty() { Ok(()) } else { Err(problems.join("\n")) }
}

/// Waits (the audit log is written in batches) until the store matches the expectation.
fn assert_store_explained(db: &Path, before: &Snapshot, accepted: &Accepted, label: &str) {
    let started = Instant::now();
    loop {
        let after = snapshot(db);
        match matches_expectation(before, &after, accepted) {
            Ok(()) => return,
            Err(problems) if started.elapsed() > Duration::from_secs(5) => {
                panic!("{label}: the store changed beyond what accepted requests explain:\n{problems}")
            }
            Err(_) => std::thread::sleep(Duration::from_millis(100)),
        }
    }
}

fn env_number<T: std::str::FromStr>(name: &str) -> Option<T> {
    std::env::var(name).ok()?.parse().ok()
}

#[test]
fn fuzzed_requests_with_any_key_get_contract_answers_and_rejected_ones_change_nothing() {
    let Some(command) = schemathesis() else {
        let required = std::env::var("TOKENWARDEN_REQUIRE_FUZZ").is_ok_and(|v| v == "1");
        assert!(!required, "TOKENWARDEN_REQUIRE_FUZZ=1 but schemathesis is not installed (pip install schemathesis)");
        eprintln!("SKIPPED: schemathesis is not installed (pip install schemathesis); the API was not fuzzed");
        return;
    };
    let sandbox = Sandbox::new();
    let (operator, reader) = seed(&sandbox);
    let daemon = Daemon::start(&sandbox);
    let work = tempfile::tempdir().expect("work dir");
    let examples = env_number("TOKENWARDEN_FUZZ_EXAMPLES").unwrap_or(DEFAULT_EXAMPLES);
    let seed = env_number("TOKENWARDEN_FUZZ_SEED").unwrap_or_else(|| u64::from(rand::random::<u32>()));
    let (mut total_cases, mut total_requests) = (0, 0);
    for (label, key) in [("operator", Some(operator.as_str())), ("reader", Some(reader.as_str())), ("no key", None)] {
        let before = snapshot(&sandbox.db_path());
        let started = Instant::now();
        let run = fuzz(&command, &daemon, key, work.path(), examples, seed);
        let tail: String =
            run.output.lines().rev().take(80).collect::<Vec<_>>().into_iter().rev().collect::<Vec<_>>().join("\n");
        assert!(run.passed, "{label}: schemathesis found failures (seed {seed}):\n{tail}");
        assert!(!run.interactions.is_empty(), "{label}: the report holds no requests:\n{tail}");
        let violations: Vec<String> = run.interactions.iter().filter_map(contract_violation).collect();
        assert!(
            violations.is_empty(),
            "{label}: {} answers break the contract:\n{}",
            violations.len(),
            violations.join("\n")
        );
        let accepted = accepted(&run.interactions);
        assert_store_explained(&sandbox.db_path(), &before, &accepted, label);
        let cases = run.cases_generated.unwrap_or(0);
        println!(
            "fuzzed with {label}: {cases} cases generated, {} requests, accepted rotations {:?}, secret reads {:?}, acknowledgements {:?}, in {:.1} s (seed {seed})",
            run.interactions.len(),
            accepted.rotations,
            accepted.secret_reads,
            accepted.acks,
            started.elapsed().as_secs_f64()
        );
        total_cases += cases;
        total_requests += run.interactions.len();
    }
    let failures = daemon.failures_logged();
    assert!(failures.is_empty(), "the daemon logged panics or errors:\n{}", failures.join("\n"));
    println!("API fuzzing total: {total_cases} cases generated, {total_requests} requests, seed {seed}");
}
