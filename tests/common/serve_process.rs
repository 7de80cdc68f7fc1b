//! A `tokenwarden serve` process started by a test: its pid and lease-owner tag, SIGKILL,
//! SIGTERM with a deadline, and a kill when the test ends while it still runs.

use std::fs::File;
use std::io::{BufRead, BufReader, Lines};
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, ChildStderr, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use super::Sandbox;

/// How often a stopping process is looked at.
const POLL: Duration = Duration::from_millis(10);

/// A running `serve` process, killed on drop if it still runs.
pub struct ServeProcess {
    child: Child,
}

impl ServeProcess {
    /// Takes charge of a started process.
    pub fn new(child: Child) -> Self {
        Self { child }
    }

    /// Starts `tokenwarden serve --config CONFIG --listen 127.0.0.1:0` in `dir` with only the
    /// environment `env`, its standard error going to a new file `log` and its standard output
    /// to `log` with the extension `stdout`.
    pub fn start(dir: &Path, config: &Path, log: &Path, env: &[(&str, String)]) -> Self {
        Self::start_with(dir, config, log, env, &["--listen", "127.0.0.1:0"])
    }

    /// [`ServeProcess::start`] with `serve_args` after `serve` instead of the loopback listen
    /// address.
    pub fn start_with(dir: &Path, config: &Path, log: &Path, env: &[(&str, String)], serve_args: &[&str]) -> Self {
        let stderr = File::create(log).expect("create the daemon log");
        let stdout = File::create(log.with_extension("stdout")).expect("create the daemon's stdout file");
        let child = Command::new(assert_cmd::cargo::cargo_bin("tokenwarden"))
            .current_dir(dir)
            .env_clear()
            .envs(env.iter().map(|(name, value)| (*name, value.as_str())))
            .arg("--config")
            .arg(config)
            .arg("serve")
            .args(serve_args)
            .stdin(Stdio::null())
            .stdout(stdout)
            .stderr(stderr)
            .spawn()
            .expect("start tokenwarden serve");
        Self::new(child)
    }

    /// Waits up to `limit` for the daemon to log that it serves, and returns its API's base URL
    /// (`http://ADDRESS` from the `listen=` field of that line in `log`).
    pub fn wait_for_api(&mut self, log: &Path, limit: Duration) -> String {
        let deadline = Instant::now() + limit;
        loop {
            let text = std::fs::read_to_string(log).unwrap_or_default();
            let serving = text.lines().find(|line| line.contains("tokenwarden is serving"));
            if let Some(address) = serving.and_then(|line| line.split("listen=").nth(1)?.split_whitespace().next()) {
                return format!("http://{address}");
            }
            if let Some(status) = self.exited() {
                panic!("the daemon exited with {status} before serving:\n{text}");
            }
            assert!(Instant::now() < deadline, "the daemon did not serve within {limit:?}:\n{text}");
            std::thread::sleep(POLL);
        }
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The fragment of a lease owner (`label:host:pid:nonce`) that names this process.
    pub fn owner_tag(&self) -> String {
        format!(":{}:", self.pid())
    }

    /// Its exit status, if it exited.
    pub fn exited(&mut self) -> Option<ExitStatus> {
        self.child.try_wait().expect("wait for the daemon")
    }

    /// SIGKILL, and reap it.
    pub fn kill(mut self) {
        self.child.kill().expect("SIGKILL the daemon");
        self.child.wait().expect("reap the daemon");
    }

    /// SIGTERM, then waits up to `limit` for the exit.
    pub fn terminate(mut self, limit: Duration) -> ExitStatus {
        let pid = self.pid().to_string();
        assert!(Command::new("kill").args(["-TERM", &pid]).status().expect("run kill").success());
        let deadline = Instant::now() + limit;
        loop {
            if let Some(status) = self.exited() {
                return status;
            }
            assert!(Instant::now() < deadline, "the daemon did not stop within {limit:?} of SIGTERM");
            std::thread::sleep(POLL);
        }
    }
}

impl Drop for ServeProcess {
    /// A daemon left behind by a failing test is killed.
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// A `serve` process whose JSON log comes through a pipe, started by [`start_json_logged`].
pub struct JsonLogged {
    /// The process (not killed on drop: the caller owns it).
    pub child: Child,
    /// The address its API listens on.
    pub addr: SocketAddr,
    /// The log lines it wrote up to and including the one naming that address.
    pub startup: Vec<String>,
    /// The log lines still to come.
    pub rest: Lines<BufReader<ChildStderr>>,
}

/// Starts `serve` in `sandbox` on an ephemeral port with JSON logs on standard error, and reads
/// the log until the line that names the address it listens on.
pub fn start_json_logged(sandbox: &Sandbox) -> JsonLogged {
    let mut child = Command::new(assert_cmd::cargo::cargo_bin("tokenwarden"))
        .current_dir(sandbox.path())
        .env_clear()
        .env("TOKENWARDEN_DATABASE_URL", sandbox.database_url())
        .args(["serve", "--listen", "127.0.0.1:0", "--log-format", "json"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start serve");
    let mut rest = BufReader::new(child.stderr.take().expect("stderr")).lines();
    let mut startup = Vec::new();
    let addr = loop {
        let line = rest.next().expect("serve exited before serving").expect("log line");
        let entry: serde_json::Value = serde_json::from_str(&line).unwrap_or_default();
        let listen = entry["fields"]["listen"].as_str().map(str::to_owned);
        startup.push(line);
        if let Some(listen) = listen {
            break listen.parse().expect("listen address");
        }
    };
    JsonLogged { child, addr, startup, rest }
}
