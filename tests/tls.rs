//! HTTPS for the API: `serve` with `tls_cert_file` / `tls_key_file` answers over TLS with that
//! certificate, re-reads the files on SIGHUP for new connections while open connections go on,
//! keeps the old certificate when the new files are broken, and refuses to start with plain HTTP
//! outside loopback (unless `allow_plaintext`), with a half TLS configuration, or with a key
//! that does not match the certificate.

mod common;

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::mpsc::{Receiver, channel};
use std::time::{Duration, Instant};

use common::Sandbox;
use common::serve_process::ServeProcess;

/// A self-signed certificate for 127.0.0.1 written as `NAME.crt` / `NAME.key` in `dir`.
fn certificate(dir: &Path, name: &str) -> (PathBuf, PathBuf) {
    let (cert, key) = (dir.join(format!("{name}.crt")), dir.join(format!("{name}.key")));
    let status = Command::new("openssl")
        .args(["req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes", "-days", "2"])
        .args(["-subj", &format!("/CN={name}"), "-addext", "subjectAltName=IP:127.0.0.1"])
        .arg("-keyout")
        .arg(&key)
        .arg("-out")
        .arg(&cert)
        .stderr(Stdio::null())
        .status()
        .expect("run openssl (the tests need it: scripts/test installs it)");
    assert!(status.success(), "openssl req failed");
    (cert, key)
}

/// The subject line of the certificate a new TLS connection to `address` is shown.
fn served_subject(address: &str) -> String {
    let shown = Command::new("sh")
        .arg("-c")
        .arg(format!("openssl s_client -connect {address} </dev/null 2>/dev/null | openssl x509 -noout -subject"))
        .output()
        .expect("run openssl s_client");
    String::from_utf8_lossy(&shown.stdout).trim().to_owned()
}

/// `GET /healthz` over HTTPS with `ca` as the only trusted certificate: the HTTP status.
fn healthz(address: &str, ca: &Path) -> String {
    let out = Command::new("curl")
        .args(["-s", "-o", "/dev/null", "-w", "%{http_code}", "--cacert"])
        .arg(ca)
        .arg(format!("https://{address}/healthz"))
        .output()
        .expect("run curl");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn write_config(dir: &Path, body: &str) -> PathBuf {
    let config = dir.join("tokenwarden.toml");
    std::fs::write(&config, body).unwrap();
    config
}

fn serve_env(sandbox: &Sandbox) -> Vec<(&'static str, String)> {
    vec![("TOKENWARDEN_DATABASE_URL", sandbox.database_url()), ("RUST_LOG", "info".to_owned())]
}

/// One TLS connection held open (`openssl s_client`), to send requests on it over time.
struct OpenConnection {
    child: Child,
    stdin: ChildStdin,
    output: Receiver<u8>,
    seen: String,
}

impl OpenConnection {
    fn open(address: &str) -> Self {
        let mut child = Command::new("openssl")
            .args(["s_client", "-quiet", "-connect", address])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("run openssl s_client");
        let stdin = child.stdin.take().unwrap();
        let mut stdout = child.stdout.take().unwrap();
        let (sender, output) = channel();
        std::thread::spawn(move || {
            let mut byte = [0u8; 1];
            while stdout.read_exact(&mut byte).is_ok() && sender.send(byte[0]).is_ok() {}
        });
        Self { child, stdin, output, seen: String::new() }
    }

    /// Sends `GET /healthz` and waits for the `n`th `200 OK` on this connection.
    fn get_healthz(&mut self, n: usize) {
        self.stdin.write_all(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n").unwrap();
        self.stdin.flush().unwrap();
        let deadline = Instant::now() + Duration::from_secs(10);
        while self.seen.matches("HTTP/1.1 200 OK").count() < n {
            assert!(Instant::now() < deadline, "no answer {n} on the open connection: {:?}", self.seen);
            if let Ok(byte) = self.output.recv_timeout(Duration::from_millis(50)) {
                self.seen.push(byte as char);
            }
        }
    }
}

impl Drop for OpenConnection {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn hangup(daemon: &ServeProcess) {
    assert!(Command::new("kill").args(["-HUP", &daemon.pid().to_string()]).status().unwrap().success());
}

/// Waits until `log` has `count` lines containing `text`.
fn wait_for_log(log: &Path, text: &str, count: usize) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let seen = std::fs::read_to_string(log).unwrap_or_default().matches(text).count();
        if seen >= count {
            return;
        }
        assert!(Instant::now() < deadline, "{text:?} not logged {count} time(s)");
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn https_is_served_and_sighup_swaps_the_certificate_for_new_connections_without_dropping_open_ones() {
    let sandbox = Sandbox::new();
    let dir = sandbox.path();
    let (first_cert, first_key) = certificate(dir, "first");
    let (cert, key) = (dir.join("api.crt"), dir.join("api.key"));
    std::fs::copy(&first_cert, &cert).unwrap();
    std::fs::copy(&first_key, &key).unwrap();
    let config =
        write_config(dir, &format!("tls_cert_file = \"{}\"\ntls_key_file = \"{}\"\n", cert.display(), key.display()));
    let log = dir.join("serve.log");
    let mut daemon = ServeProcess::start(dir, &config, &log, &serve_env(&sandbox));
    let base = daemon.wait_for_api(&log, Duration::from_secs(30));
    let address = base.trim_start_matches("http://").to_owned();
    assert!(
        std::fs::read_to_string(&log).unwrap().contains("scheme=\"https\"")
            || std::fs::read_to_string(&log).unwrap().contains("scheme=https")
    );

    assert_eq!(healthz(&address, &first_cert), "200");
    assert_eq!(served_subject(&address), "subject=CN = first");
    let plain = Command::new("curl")
        .args(["-s", "-o", "/dev/null", "-w", "%{http_code}", &format!("http://{address}/healthz")])
        .output()
        .unwrap();
    assert_ne!(String::from_utf8_lossy(&plain.stdout), "200", "no plain HTTP on the HTTPS port");
    let mut open = OpenConnection::open(&address);
    open.get_healthz(1);

    // A renewal replaces both files, then SIGHUP.
    let (second_cert, second_key) = certificate(dir, "second");
    std::fs::copy(&second_cert, &cert).unwrap();
    std::fs::copy(&second_key, &key).unwrap();
    hangup(&daemon);
    wait_for_log(&log, "reloaded the TLS certificate", 1);
    assert_eq!(served_subject(&address), "subject=CN = second", "new connections get the new certificate");
    assert_eq!(healthz(&address, &second_cert), "200");
    open.get_healthz(2);

    // A broken file (a renewal half-written) keeps the running certificate.
    std::fs::write(&cert, "-----BEGIN CERTIFICATE-----\nnot base64\n").unwrap();
    hangup(&daemon);
    wait_for_log(&log, "could not be reloaded", 1);
    assert_eq!(served_subject(&address), "subject=CN = second", "the previous certificate stays");
    assert_eq!(healthz(&address, &second_cert), "200");
    open.get_healthz(3);
    drop(open);
    assert!(daemon.terminate(Duration::from_secs(30)).success());
}

#[test]
fn plain_http_outside_loopback_a_half_tls_configuration_and_a_mismatched_key_are_refused_at_start() {
    let sandbox = Sandbox::new();
    let dir = sandbox.path();
    let stderr = sandbox.fails(&["serve", "--listen", "0.0.0.0:0"], "", 2);
    assert!(
        stderr.contains("refusing to serve plain HTTP on 0.0.0.0:0") && stderr.contains("allow_plaintext"),
        "{stderr}"
    );
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(!sandbox.db_path().exists(), "refused before the store was created");

    let (cert, _) = certificate(dir, "one");
    let (_, other_key) = certificate(dir, "two");
    let cert_arg = cert.to_str().unwrap();
    let stderr = sandbox.fails(&["serve", "--tls-cert-file", cert_arg], "", 2);
    assert!(stderr.contains("tls_cert_file") && stderr.contains("HTTPS needs tls_key_file too"), "{stderr}");
    let args = ["serve", "--tls-cert-file", cert_arg, "--tls-key-file", other_key.to_str().unwrap()];
    let stderr = sandbox.fails(&args, "", 2);
    assert!(stderr.contains("cannot be used together"), "{stderr}");
    let missing = dir.join("missing.key");
    let stderr =
        sandbox.fails(&["serve", "--tls-cert-file", cert_arg, "--tls-key-file", missing.to_str().unwrap()], "", 2);
    assert!(stderr.contains("missing.key") && stderr.contains("private key"), "{stderr}");
    assert!(!sandbox.db_path().exists(), "nothing was created");

    // Behind a proxy that terminates TLS, plain HTTP on any address is allowed when said so.
    let config = write_config(dir, "allow_plaintext = true\n");
    let log = dir.join("plain.log");
    let mut daemon = ServeProcess::start_with(dir, &config, &log, &serve_env(&sandbox), &["--listen", "0.0.0.0:0"]);
    daemon.wait_for_api(&log, Duration::from_secs(30));
    assert!(daemon.terminate(Duration::from_secs(30)).success());
}
