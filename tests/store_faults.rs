//! The store's disk fills up in the middle of a rotation: `tokenwarden serve` on a SQLite store
//! in a small tmpfs, a forced rotation whose provider call succeeds while the commit cannot be
//! written. The daemon must report not-ready while writes fail, keep trying to store the result
//! (not forget a rotation GitLab made), lose nothing committed before, and be ready again with
//! the new secret stored once space is freed.
//!
//! Mounting needs root (as `scripts/test` runs in CI, where `TOKENWARDEN_REQUIRE_MOUNT=1` makes a
//! refused mount a failure); elsewhere the test says why it was skipped.
//!
//! On PostgreSQL the same story runs through a TCP proxy the test cuts: the server drops off in
//! the middle of a rotation (every connection closed, new ones refused) and comes back.

mod common;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use common::Sandbox;
use common::postgres::TestSchema;
use common::proxy::CuttableProxy;
use common::serve_process::ServeProcess;
use tokenwarden::simulator::{FaultRates, TokenOwner};

/// The tmpfs holding the database: room for the store, not much more.
const DISK_SIZE: &str = "8m";
/// Short provider timeouts, so the forced rotation's API wait (two leases) stays short.
const CONFIG: &str = "[scheduler]\nprovider_timeout = \"1s\"\n";

/// A tmpfs mounted on a directory for the test's lifetime.
struct SmallDisk {
    dir: PathBuf,
}

impl SmallDisk {
    /// Mounts a tmpfs of [`DISK_SIZE`] on `dir`, or `None` (after saying why) when mounting is
    /// not allowed here and not required.
    fn mount(dir: &Path) -> Option<Self> {
        std::fs::create_dir_all(dir).unwrap();
        let size = format!("size={DISK_SIZE},mode=0700");
        let mounted = Command::new("mount").args(["-t", "tmpfs", "-o", &size, "tmpfs"]).arg(dir).output();
        match mounted {
            Ok(out) if out.status.success() => Some(Self { dir: dir.to_owned() }),
            other => {
                let why = match other {
                    Ok(out) => String::from_utf8_lossy(&out.stderr).trim().to_owned(),
                    Err(err) => err.to_string(),
                };
                let required = std::env::var("TOKENWARDEN_REQUIRE_MOUNT").is_ok_and(|v| v != "0");
                assert!(!required, "TOKENWARDEN_REQUIRE_MOUNT is set but a tmpfs cannot be mounted: {why}");
                eprintln!("skipped: cannot mount a small tmpfs here ({why}); run as root to test a full disk");
                None
            }
        }
    }

    /// Writes a file until the disk is full; returns its path.
    fn fill(&self) -> PathBuf {
        let path = self.dir.join("filler");
        let mut file = std::fs::File::create(&path).unwrap();
        let chunk = vec![0u8; 16 * 1024];
        loop {
            match file.write_all(&chunk).and_then(|()| file.sync_all()) {
                Ok(()) => {}
                Err(err) if err.raw_os_error() == Some(28) => return path,
                Err(err) => panic!("filling the disk: {err}"),
            }
        }
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.dir).status();
    }
}

fn http() -> reqwest::Client {
    tokenwarden::providers::build_http_client(tokenwarden::providers::HttpSettings::default()).unwrap()
}

/// `/readyz`'s status and body.
async fn readiness(base: &str) -> (u16, String) {
    match http().get(format!("{base}/readyz")).send().await {
        Ok(response) => (response.status().as_u16(), response.text().await.unwrap_or_default()),
        Err(err) => (0, err.to_string()),
    }
}

async fn wait_for(what: &str, limit: Duration, base: &str, status: u16) -> String {
    let started = Instant::now();
    loop {
        let (got, body) = readiness(base).await;
        if got == status {
            return body;
        }
        assert!(started.elapsed() < limit, "timed out waiting for {what}: last /readyz {got} {body}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A sandbox whose store is at `url`, with provider `gitlab`, token `ci` (a project access token
/// at the simulator) and an operator client.
struct Setup {
    sandbox: Sandbox,
    url: String,
    key: PathBuf,
    config: PathBuf,
    operator_key: String,
}

impl Setup {
    fn new(sandbox: Sandbox, url: String) -> Self {
        let config = sandbox.path().join("faults.toml");
        std::fs::write(&config, CONFIG).unwrap();
        let key = sandbox.path().join("master.key");
        tokenwarden::crypto::MasterKey::create(&key).unwrap();
        let mut setup = Self { sandbox, url, key, config, operator_key: String::new() };
        setup.cli(&["provider", "add", "gitlab", "--kind", "gitlab", "--url", &setup.sandbox.gitlab_url()], "");
        let old = setup.sandbox.gitlab.token(TokenOwner::Project("42".into()));
        let add =
            ["token", "add", "ci", "--provider", "gitlab", "--kind", "gitlab-project-access-token", "--project", "42"];
        setup.cli(&[&add[..], &["--secret-stdin"]].concat(), &format!("{old}\n"));
        let operator: serde_json::Value =
            serde_json::from_str(&setup.cli(&["client", "add", "ops", "--role", "operator"], "")).unwrap();
        setup.operator_key = operator["api_key"].as_str().unwrap().to_owned();
        setup
    }

    fn cli(&self, args: &[&str], stdin: &str) -> String {
        let out = (self.sandbox.cmd())
            .env("TOKENWARDEN_DATABASE_URL", &self.url)
            .env("TOKENWARDEN_MASTER_KEY_FILE", &self.key)
            .args(args)
            .write_stdin(stdin)
            .output()
            .unwrap();
        assert!(out.status.success(), "{args:?}: {}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8(out.stdout).unwrap()
    }

    /// Starts `serve` on the store and returns it, its API's base URL and its log's path.
    fn serve(&self) -> (ServeProcess, String, PathBuf) {
        let log = self.sandbox.path().join("serve.log");
        let env = [
            ("TOKENWARDEN_DATABASE_URL", self.url.clone()),
            ("TOKENWARDEN_MASTER_KEY_FILE", self.key.display().to_string()),
            ("RUST_LOG", "info".to_owned()),
        ];
        let mut daemon = ServeProcess::start(self.sandbox.path(), &self.config, &log, &env);
        let base = daemon.wait_for_api(&log, Duration::from_secs(20));
        (daemon, base, log)
    }

    /// Forces a rotation of `ci` through the API whose GitLab request waits 600 ms (within the
    /// 1 s timeout): the lease is taken and committed at once, then the test breaks the store
    /// while the request waits at GitLab.
    fn start_slow_rotation(&self, base: &str) -> tokio::task::JoinHandle<Result<u16, String>> {
        self.sandbox.gitlab.sim.set_rates(FaultRates { latency_ms: 600, ..FaultRates::default() });
        let (url, key) = (format!("{base}/v1/tokens/ci/rotate"), self.operator_key.clone());
        tokio::spawn(async move {
            let response = http().post(url).bearer_auth(key).send().await.map_err(|err| err.to_string())?;
            Ok(response.status().as_u16())
        })
    }

    /// Waits until GitLab has made the rotation the daemon asked for.
    async fn until_gitlab_rotated(&self) {
        let started = Instant::now();
        while self.sandbox.gitlab.sim.stats().rotations == 0 {
            assert!(started.elapsed() < Duration::from_secs(10), "GitLab never received the rotation");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// After the store recovered: the rotation GitLab made is stored (version 2, active), made
    /// once, what was committed before is still there, and the log says why it had to wait.
    fn assert_rotation_stored_once(&self, log: &Path, why: &str) {
        let started = Instant::now();
        let shown = loop {
            let shown: serde_json::Value =
                serde_json::from_str(&self.cli(&["token", "show", "ci", "--json"], "")).unwrap();
            if shown["version"] == 2 || started.elapsed() > Duration::from_secs(30) {
                break shown;
            }
            std::thread::sleep(Duration::from_millis(100));
        };
        assert_eq!(shown["version"], 2, "the rotation GitLab made was stored once the store recovered: {shown}");
        assert_eq!(shown["state"], "active", "{shown}");
        let stats = self.sandbox.gitlab.sim.stats();
        assert_eq!((stats.rotations, stats.family_revocations), (1, 0), "stored, not rotated again");
        let listed = self.cli(&["client", "list", "--json"], "");
        assert!(listed.contains("\"ops\""), "what was committed before is still there: {listed}");
        let log = std::fs::read_to_string(log).unwrap();
        assert!(log.contains(why), "the daemon said why it could not store the result ({why}):\n{log}");
    }
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap()
}

#[test]
fn a_full_disk_during_a_rotation_makes_the_daemon_unready_and_the_result_is_stored_once_space_returns() {
    let sandbox = Sandbox::new();
    let Some(disk) = SmallDisk::mount(&sandbox.path().join("disk")) else { return };
    let url = format!("sqlite://{}", disk.dir.join("tokenwarden.db").display());
    let setup = Setup::new(sandbox, url);
    let (daemon, base, log) = setup.serve();
    runtime().block_on(async {
        wait_for("the daemon to be ready", Duration::from_secs(10), &base, 200).await;
        let rotate = setup.start_slow_rotation(&base);
        tokio::time::sleep(Duration::from_millis(200)).await;
        let filler = disk.fill();
        let reason = wait_for("not ready while the disk is full", Duration::from_secs(20), &base, 503).await;
        assert!(reason.contains("store"), "{reason}");
        setup.until_gitlab_rotated().await;
        std::fs::remove_file(filler).unwrap();
        wait_for("ready once space is back", Duration::from_secs(20), &base, 200).await;
        let status = rotate.await.unwrap().unwrap();
        assert!(status == 200 || status == 503, "the forced rotation answered {status}");
    });
    drop(daemon);
    setup.assert_rotation_stored_once(&log, "disk is full");
}

#[test]
fn postgres_dropping_off_during_a_rotation_makes_the_daemon_unready_and_it_recovers_when_the_server_returns() {
    let Some(schema) = TestSchema::create() else { return };
    let proxy = CuttableProxy::start(schema.server_addr());
    let setup = Setup::new(Sandbox::new(), schema.url_via(proxy.addr));
    let (daemon, base, log) = setup.serve();
    runtime().block_on(async {
        wait_for("the daemon to be ready", Duration::from_secs(10), &base, 200).await;
        let rotate = setup.start_slow_rotation(&base);
        tokio::time::sleep(Duration::from_millis(200)).await;
        proxy.cut();
        let reason = wait_for("not ready while the server is gone", Duration::from_secs(20), &base, 503).await;
        assert!(reason.contains("store"), "{reason}");
        setup.until_gitlab_rotated().await;
        tokio::time::sleep(Duration::from_secs(1)).await;
        proxy.restore();
        wait_for("ready once the server is back", Duration::from_secs(30), &base, 200).await;
        let status = rotate.await.unwrap();
        assert!(matches!(status, Ok(200 | 503)), "the forced rotation answered {status:?}");
    });
    drop(daemon);
    setup.assert_rotation_stored_once(&log, "cannot store a rotation result yet");
}

/// Each pooled connection the server dropped fails one call at most (it is closed then, not
/// returned to the pool); after that every call works.
#[test]
fn after_postgres_drops_every_connection_reads_work_again_once_the_server_is_back() {
    let Some(schema) = TestSchema::create() else { return };
    let proxy = CuttableProxy::start(schema.server_addr());
    let url = tokenwarden::config::DatabaseUrl::parse(&schema.url_via(proxy.addr)).unwrap();
    let store = tokenwarden::store::Store::open(&url).unwrap();
    let runtime = runtime();
    let list = || runtime.block_on(store.run(tokenwarden::store::tokens::list));
    assert!(list().unwrap().is_empty());
    proxy.cut();
    let failed = list().expect_err("no server, no answer");
    assert!(failed.to_string().contains("database"), "{failed}");
    proxy.restore();
    let failures = (0..10).take_while(|_| list().is_err()).count();
    assert!(
        failures <= 2,
        "{failures} reads failed after the server came back (the pool held at most two connections)"
    );
    for attempt in 1..=5 {
        let listed = list();
        assert!(listed.is_ok(), "read {attempt} after the first that worked: {listed:?}");
    }
}
