//! The README's "Try it in five minutes" block, run as it stands: the simulator and the daemon
//! on their documented ports, the seeding `curl`s and the operator walkthrough, in an empty
//! directory with the built `tokenwarden` and `tokenwarden-sim` first on `PATH`.

mod common;

use std::fs::File;
use std::net::TcpListener;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::markdown::readme_block;

/// How long the whole block may take before the test gives up on it.
const LIMIT: Duration = Duration::from_secs(120);

/// The ports the README's block uses (the simulator's and the daemon's defaults).
const PORTS: [u16; 2] = [8929, 8787];

/// The process group of the shell running the block: everything it started in the background
/// is killed when the test ends, whatever happened.
struct ProcessGroup(u32);

impl Drop for ProcessGroup {
    fn drop(&mut self) {
        let group = format!("-{}", self.0);
        let _ = Command::new("kill").args(["-KILL", "--", &group]).stderr(Stdio::null()).status();
    }
}

/// What the block printed and how it ended.
struct Run {
    success: bool,
    stdout: String,
    stderr: String,
}

/// Runs `script` with bash (`-euo pipefail`) in `dir` with the package's binaries first on `PATH`;
/// its output goes to files in `logs`.
fn run_script(script: &str, dir: &Path, logs: &Path) -> Run {
    let binaries = Path::new(env!("CARGO_BIN_EXE_tokenwarden")).parent().unwrap().to_owned();
    let path = format!("{}:{}", binaries.display(), std::env::var("PATH").unwrap_or_default());
    let (stdout, stderr) = (logs.join("stdout"), logs.join("stderr"));
    let mut child = Command::new("bash")
        .args(["-euo", "pipefail", "-c", script])
        .current_dir(dir)
        .env("PATH", path)
        .env_remove("TOKENWARDEN_DATABASE_URL")
        .env_remove("TOKENWARDEN_CONFIG")
        .env_remove("TOKENWARDEN_MASTER_KEY_FILE")
        .env_remove("TOKENWARDEN_LISTEN")
        .stdin(Stdio::null())
        .stdout(File::create(&stdout).unwrap())
        .stderr(File::create(&stderr).unwrap())
        .process_group(0)
        .spawn()
        .expect("start bash");
    let _group = ProcessGroup(child.id());
    let deadline = Instant::now() + LIMIT;
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait for bash") {
            break status;
        }
        assert!(Instant::now() < deadline, "the README block did not finish within {LIMIT:?}");
        std::thread::sleep(Duration::from_millis(50));
    };
    let read = |file: &Path| std::fs::read_to_string(file).unwrap_or_default();
    Run { success: status.success(), stdout: read(&stdout), stderr: read(&stderr) }
}

#[test]
fn the_try_it_block_runs_as_written_and_reads_the_rotated_secret() {
    for port in PORTS {
        assert!(
            TcpListener::bind(("127.0.0.1", port)).is_ok(),
            "port {port} is in use: the README's block needs it free (stop whatever listens there)"
        );
    }
    let script = readme_block("sh", "tokenwarden-sim --listen");
    let (dir, logs) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let Run { success, stdout, stderr } = run_script(&script, dir.path(), logs.path());
    assert!(success, "the block failed:\n{stdout}\n{stderr}");

    let history = stdout.lines().filter(|line| line.contains("rotated") && line.starts_with('2')).count();
    assert_eq!(history, 1, "token history shows version 2 rotated once:\n{stdout}");
    let read = stdout.find("\"name\": \"demo-ci\"").expect("the reader's secret read is printed");
    assert!(stdout[read..].contains("\"version\": 2"), "the reader reads the rotated version 2:\n{stdout}");
    assert!(
        stdout.lines().any(|line| line.starts_with("TOKENWARDEN OK - 2 tokens")),
        "check says both tokens are OK:\n{stdout}"
    );
    for line in stdout.lines().filter(|line| line.starts_with("demo-oauth")) {
        assert!(line.contains("active"), "the OAuth grant is active after its first refresh: {line}");
    }

    let key = std::fs::metadata(dir.path().join("tokenwarden.key")).expect("serve created tokenwarden.key here");
    assert_eq!(key.permissions().mode() & 0o777, 0o600, "the master key is private");
    assert!(dir.path().join("tokenwarden.db").exists(), "serve created tokenwarden.db here");
    let secrets = ["pat.json", "grant.json", "app.json"]
        .map(|file| std::fs::read_to_string(dir.path().join(file)).expect("seed file"))
        .join("\n");
    for field in ["token", "refresh_token", "client_secret"] {
        for value in secrets.split(&format!("\"{field}\":\"")).skip(1) {
            let secret = value.split('"').next().unwrap();
            assert!(!stderr.contains(secret), "the {field} appears in a log:\n{stderr}");
        }
    }
}

#[test]
fn the_simulator_help_says_what_it_is_and_how_to_seed_it() {
    let output = Command::new(env!("CARGO_BIN_EXE_tokenwarden-sim")).arg("--help").output().unwrap();
    assert!(output.status.success());
    let help = String::from_utf8(output.stdout).unwrap();
    assert!(help.contains("simulated GitLab for tests and demos"), "{help}");
    assert!(!help.contains("Keeps GitLab and OAuth 2.0 credentials alive"), "it is not tokenwarden:\n{help}");
    for route in ["/-/sim/access_tokens", "/-/sim/applications", "/-/sim/grants", "/-/sim/settings", "/-/sim/stats"] {
        assert!(help.contains(route), "--help names {route}:\n{help}");
    }
}
