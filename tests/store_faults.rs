//! The store's disk fills up in the middle of a rotation: `tokenwarden serve` on a SQLite store
//! in a small tmpfs, a forced rotation whose provider call succeeds while the commit cannot be
//! written. The daemon must report not-ready while writes fail, keep trying to store the result
//! (not forget a rotation GitLab made), lose nothing committed before, and be ready again with
//! the new secret stored once space is freed.
//!
//! Mounting needs root (as `scripts/test` runs in CI, where `TOKENWARDEN_REQUIRE_MOUNT=1` makes a
//! refused mount a failure); elsewhere the test says why it was skipped.

mod common;

use std::io::Write;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::Sandbox;
use tokenwarden::simulator::FaultRates;

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

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
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

#[test]
fn a_full_disk_during_a_rotation_makes_the_daemon_unready_and_the_result_is_stored_once_space_returns() {
    let sandbox = Sandbox::new();
    let Some(disk) = SmallDisk::mount(&sandbox.path().join("disk")) else { return };
    let url = format!("sqlite://{}", disk.dir.join("tokenwarden.db").display());
    let config = sandbox.path().join("faults.toml");
    std::fs::write(&config, CONFIG).unwrap();
    let cli = |args: &[&str], stdin: &str| {
        let out = sandbox.cmd().env("TOKENWARDEN_DATABASE_URL", &url).args(args).write_stdin(stdin).output().unwrap();
        assert!(out.status.success(), "{args:?}: {}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8(out.stdout).unwrap()
    };
    cli(&["provider", "add", "gitlab", "--kind", "gitlab", "--url", &sandbox.gitlab_url()], "");
    let old = sandbox.gitlab.token(tokenwarden::simulator::TokenOwner::Project("42".into()));
    let add =
        ["token", "add", "ci", "--provider", "gitlab", "--kind", "gitlab-project-access-token", "--project", "42"];
    cli(&[&add[..], &["--secret-stdin"]].concat(), &format!("{old}\n"));
    let operator: serde_json::Value =
        serde_json::from_str(&cli(&["client", "add", "ops", "--role", "operator"], "")).unwrap();
    let key = operator["api_key"].as_str().unwrap().to_owned();

    let port = free_port();
    let log = sandbox.path().join("serve.log");
    let daemon: Child = Command::new(assert_cmd::cargo::cargo_bin("tokenwarden"))
        .current_dir(sandbox.path())
        .env_clear()
        .env("TOKENWARDEN_DATABASE_URL", &url)
        .arg("--config")
        .arg(&config)
        .args(["serve", "--listen", &format!("127.0.0.1:{port}")])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    let daemon = KillOnDrop(daemon);
    let base = format!("http://127.0.0.1:{port}");
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    runtime.block_on(async {
        wait_for("the daemon to be ready", Duration::from_secs(10), &base, 200).await;
        // GitLab answers after 600 ms (within the 1 s timeout): the lease is taken and committed
        // at once, then the disk fills while the rotate request waits at GitLab.
        sandbox.gitlab.sim.set_rates(FaultRates { latency_ms: 600, ..FaultRates::default() });
        let rotate = {
            let (base, key) = (base.clone(), key.clone());
            tokio::spawn(async move {
                http().post(format!("{base}/v1/tokens/ci/rotate")).bearer_auth(key).send().await.map(|r| r.status())
            })
        };
        tokio::time::sleep(Duration::from_millis(200)).await;
        let filler = disk.fill();
        let reason = wait_for("not ready while the disk is full", Duration::from_secs(20), &base, 503).await;
        assert!(reason.contains("store"), "{reason}");
        let stats = sandbox.gitlab.sim.stats();
        assert_eq!(stats.rotations, 1, "GitLab rotated the token; its answer waits to be stored");
        std::fs::remove_file(filler).unwrap();
        wait_for("ready once space is back", Duration::from_secs(20), &base, 200).await;
        let status = rotate.await.unwrap().unwrap();
        assert!(status == 200 || status == 503, "the forced rotation answered {status}");
    });
    drop(daemon);
    let shown: serde_json::Value = serde_json::from_str(&cli(&["token", "show", "ci", "--json"], "")).unwrap();
    assert_eq!(shown["version"], 2, "the rotation GitLab made was stored once space returned: {shown}");
    assert_eq!(shown["state"], "active", "{shown}");
    let stats = sandbox.gitlab.sim.stats();
    assert_eq!((stats.rotations, stats.family_revocations), (1, 0), "stored, not rotated again");
    let listed = cli(&["client", "list", "--json"], "");
    assert!(listed.contains("\"ops\""), "what was committed before is still there: {listed}");
    let log = std::fs::read_to_string(&log).unwrap();
    assert!(log.contains("disk is full"), "the daemon said why it could not store the result:\n{log}");
}

/// A daemon killed when the test ends, however it ends.
struct KillOnDrop(Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}
