//! `tokenwarden serve` as a process: starts on a fresh directory, answers health checks,
//! and stops cleanly on SIGTERM and SIGINT.

mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::{Child, Command};
use std::time::{Duration, Instant};

use common::Sandbox;
use common::serve_process::{JsonLogged, start_json_logged};

/// A running daemon, the address it listens on, and the log lines it wrote until it served.
struct Daemon {
    child: Child,
    addr: SocketAddr,
    startup: Vec<serde_json::Value>,
}

impl Daemon {
    /// Starts `serve` on an ephemeral port and waits for its "serving" log line.
    fn start(sandbox: &Sandbox) -> Daemon {
        let JsonLogged { child, addr, startup, rest } = start_json_logged(sandbox);
        let startup = startup.iter().map(|line| serde_json::from_str(line).unwrap_or_default()).collect();
        std::thread::spawn(move || rest.for_each(drop));
        Daemon { child, addr, startup }
    }

    /// Sends a signal by name and waits up to `limit` for the process to exit.
    fn stop_with(mut self, signal: &str, limit: Duration) -> std::process::ExitStatus {
        let pid = self.child.id().to_string();
        assert!(Command::new("kill").args([&format!("-{signal}"), &pid]).status().unwrap().success());
        let started = Instant::now();
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            if started.elapsed() > limit {
                let _ = self.child.kill();
                panic!("serve did not stop within {limit:?} of SIG{signal}");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

/// A minimal HTTP/1.1 GET; returns the status code and body.
fn get(addr: SocketAddr, path: &str) -> (u16, String) {
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(2)).unwrap();
    stream.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    write!(stream, "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n").unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).unwrap();
    let status = response.split(' ').nth(1).and_then(|s| s.parse().ok()).expect("status line");
    let body = response.split("\r\n\r\n").nth(1).unwrap_or_default().to_owned();
    (status, body)
}

/// Polls `/readyz` (5 s at most): ready once the scheduler's first pass has ticked, which runs
/// beside the dispatchers' first passes and may come a moment after the API listens.
fn wait_until_ready(addr: std::net::SocketAddr) {
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    loop {
        let (status, body) = get(addr, "/readyz");
        if status == 200 {
            return;
        }
        assert!(std::time::Instant::now() < deadline, "not ready 5 s after start: {status} {body}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn serve_answers_health_checks_and_stops_on_sigterm_within_two_seconds() {
    let sandbox = Sandbox::new();
    let daemon = Daemon::start(&sandbox);
    let (status, body) = get(daemon.addr, "/healthz");
    assert_eq!(status, 200, "{body}");
    wait_until_ready(daemon.addr);
    assert_eq!(get(daemon.addr, "/nope").0, 404);
    assert!(sandbox.db_path().exists(), "the store was created");
    assert!(sandbox.key_path().exists(), "the master key was created beside the database");
    let status = daemon.stop_with("TERM", Duration::from_secs(2));
    assert!(status.success(), "{status}");
}

#[test]
fn serve_stops_on_sigint_and_restarts_on_the_same_store() {
    let sandbox = Sandbox::new();
    let first = Daemon::start(&sandbox);
    assert!(first.stop_with("INT", Duration::from_secs(2)).success());
    let second = Daemon::start(&sandbox);
    // Ready once the scheduler's first pass on the reopened store has ticked (it runs beside the
    // dispatchers' first passes, so it may come a moment after the API listens).
    wait_until_ready(second.addr);
    assert!(second.stop_with("TERM", Duration::from_secs(2)).success());
}

#[test]
fn serve_refuses_a_busy_port_with_exit_1_on_one_line_before_creating_anything() {
    let sandbox = Sandbox::new();
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    let stderr = sandbox.fails(&["serve", "--listen", &addr], "", 1);
    assert!(stderr.contains("cannot listen on"), "{stderr}");
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(!sandbox.db_path().exists() && !sandbox.key_path().exists(), "nothing was created");
}

/// The startup log entries at WARN level whose message mentions the master key.
fn key_warnings(daemon: &Daemon) -> Vec<String> {
    daemon
        .startup
        .iter()
        .filter(|entry| entry["level"] == "WARN")
        .filter_map(|entry| entry["fields"]["message"].as_str())
        .filter(|message| message.contains("master key"))
        .map(str::to_owned)
        .collect()
}

#[test]
fn serve_warns_when_it_generates_the_master_key_and_writes_it_with_mode_0600() {
    use std::os::unix::fs::PermissionsExt;
    let sandbox = Sandbox::new();
    let first = Daemon::start(&sandbox);
    let warnings = key_warnings(&first);
    assert_eq!(warnings.len(), 1, "{:?}", first.startup);
    let key = sandbox.key_path();
    assert!(warnings[0].contains(&format!("created a new master key file {}", key.display())), "{warnings:?}");
    assert!(warnings[0].contains("back it up"), "{warnings:?}");
    let mode = std::fs::metadata(&key).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600, "key file mode {mode:o}");
    assert!(first.stop_with("TERM", Duration::from_secs(2)).success());

    let second = Daemon::start(&sandbox);
    assert!(key_warnings(&second).is_empty(), "an existing key is not announced again: {:?}", second.startup);
    assert!(second.stop_with("TERM", Duration::from_secs(2)).success());
}
