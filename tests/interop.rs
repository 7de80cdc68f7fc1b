//! tokenwarden against an OAuth 2.0 authorization server someone else wrote: Authlib's (Python),
//! with its defaults — client authentication at the token endpoint by HTTP Basic only, and
//! refresh answers without a new refresh token unless asked to rotate them.
//!
//! Each test drives a real authorization-code exchange to get the first refresh token, then
//! runs the `tokenwarden` binary: `provider add` (by discovery or by token URL), `token add`
//! with the refresh token on standard input, forced and scheduled refreshes, and a grant revoked
//! at the server. The server accepts only `client_secret_basic`, so these tests fail if the
//! default client authentication goes back to `post`.
//!
//! The server needs `python3` with `authlib` and `flask` (installed by `scripts/test`). Without
//! them the tests say "skipped"; with `TOKENWARDEN_REQUIRE_INTEROP=1` (set by `scripts/test`)
//! they fail instead.

mod common;

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::Sandbox;
use common::serve_process::ServeProcess;
use secrecy::{ExposeSecret, SecretString};
use tokenwarden::providers::client_auth::basic_authorization;
use tokenwarden::providers::{HttpSettings, build_http_client};

/// The registered client. The secret holds `:`, `%`, a space and non-ASCII, which HTTP Basic
/// carries only when form-URL-encoded first.
const CLIENT_ID: &str = "tw-client";
const CLIENT_SECRET: &str = "s3:cr%t wörd+1";
/// Registered and never visited: the code is read from the `Location` header.
const REDIRECT_URI: &str = "http://127.0.0.1:9/callback";

/// An Authlib authorization server on a free loopback port, killed on drop.
struct AuthlibServer {
    child: Child,
    url: String,
}

impl AuthlibServer {
    /// Starts `tests/interop/authlib_server.py` with `args`; `None` when Authlib is missing and
    /// interop tests are not required.
    fn start(args: &[&str]) -> Option<Self> {
        if !python_has(&["authlib", "flask"]) {
            let why = "python3 with the authlib and flask packages is not installed (scripts/test installs them)";
            assert!(std::env::var("TOKENWARDEN_REQUIRE_INTEROP").as_deref() != Ok("1"), "{why}");
            eprintln!("skipped: {why}");
            return None;
        }
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/interop/authlib_server.py");
        let mut child = Command::new("python3")
            .arg(script)
            .args(args)
            .env("CLIENT_ID", CLIENT_ID)
            .env("CLIENT_SECRET", CLIENT_SECRET)
            .env("REDIRECT_URI", REDIRECT_URI)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("start the Authlib server");
        let mut line = String::new();
        BufReader::new(child.stdout.take().expect("stdout")).read_line(&mut line).expect("read its address");
        let url = line.trim().strip_prefix("listening on ").unwrap_or_else(|| panic!("no address: {line:?}"));
        Some(Self { url: url.to_owned(), child })
    }

    /// How many refresh grants and revocations it served.
    fn stats(&self) -> serde_json::Value {
        let url = format!("{}/_test/stats", self.url);
        block_on(async move { http().get(url).send().await.unwrap().json().await.unwrap() })
    }
}

impl Drop for AuthlibServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// True when `python3` can import every module in `modules`.
fn python_has(modules: &[&str]) -> bool {
    let check = format!("import {}", modules.join(", "));
    Command::new("python3").args(["-c", &check]).output().is_ok_and(|out| out.status.success())
}

/// tokenwarden's own HTTP client settings: rustls, no redirects (the code is read from one).
fn http() -> reqwest::Client {
    build_http_client(HttpSettings::default()).unwrap()
}

fn block_on<T>(future: impl std::future::Future<Output = T>) -> T {
    tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(future)
}

/// The client's HTTP Basic credentials, as a client must send them.
fn basic() -> String {
    basic_authorization(CLIENT_ID, &SecretString::from(CLIENT_SECRET)).expose_secret().to_owned()
}

/// A user signs in and consents on the server's form; the code it redirects with is exchanged
/// (with Basic client authentication) for the first refresh token.
fn first_refresh_token(server: &AuthlibServer) -> String {
    let base = server.url.clone();
    block_on(async move {
        let http = http();
        let query = [
            ("response_type", "code"),
            ("client_id", CLIENT_ID),
            ("redirect_uri", REDIRECT_URI),
            ("scope", "read write"),
            ("state", "interop-state"),
        ];
        let authorize = url::Url::parse_with_params(&format!("{base}/authorize"), query).unwrap();
        let page = http.get(authorize).send().await.unwrap();
        assert_eq!(page.status(), 200);
        assert!(page.text().await.unwrap().contains("<form"), "the consent form");
        let mut consent = query.to_vec();
        consent.extend([("username", "alice"), ("confirm", "yes")]);
        let answer = http.post(format!("{base}/authorize")).form(&consent).send().await.unwrap();
        assert_eq!(answer.status(), 302);
        let location = answer.headers()["location"].to_str().unwrap().to_owned();
        let redirected = url::Url::parse(&location).unwrap();
        let code = redirected.query_pairs().find(|(k, _)| k == "code").expect("a code").1.into_owned();
        let exchange = [("grant_type", "authorization_code"), ("code", &code), ("redirect_uri", REDIRECT_URI)];
        let token: serde_json::Value = http
            .post(format!("{base}/oauth/token"))
            .header("authorization", basic())
            .form(&exchange)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        token["refresh_token"].as_str().unwrap_or_else(|| panic!("no refresh token: {token}")).to_owned()
    })
}

/// Revokes `refresh_token` at the server's RFC 7009 endpoint.
fn revoke(server: &AuthlibServer, refresh_token: &str) {
    let (url, token) = (format!("{}/oauth/revoke", server.url), refresh_token.to_owned());
    let status = block_on(async move {
        let form = [("token", token.as_str()), ("token_type_hint", "refresh_token")];
        http().post(url).header("authorization", basic()).form(&form).send().await.unwrap().status()
    });
    assert_eq!(status, 200);
}

/// A refresh sent by the test itself: `error` or `ok`.
fn try_refresh(server: &AuthlibServer, refresh_token: &str) -> String {
    let (url, token) = (format!("{}/oauth/token", server.url), refresh_token.to_owned());
    block_on(async move {
        let form = [("grant_type", "refresh_token"), ("refresh_token", token.as_str())];
        let answer: serde_json::Value =
            http().post(url).header("authorization", basic()).form(&form).send().await.unwrap().json().await.unwrap();
        answer["error"].as_str().unwrap_or("ok").to_owned()
    })
}

fn add_grant(sandbox: &Sandbox, name: &str, refresh_token: &str, extra: &[&str]) {
    let args =
        [&["token", "add", name, "--provider", "op", "--kind", "oauth2", "--refresh-token-stdin"], extra].concat();
    sandbox.ok(&args, &format!("{refresh_token}\n"));
}

#[test]
fn a_discovered_authlib_server_that_keeps_refresh_tokens_is_refreshed_forced_scheduled_and_revoked() {
    let Some(server) = AuthlibServer::start(&["--access-token-lifetime", "6"]) else { return };
    let sandbox = Sandbox::new();
    let add = ["provider", "add", "op", "--kind", "oauth2", "--issuer", &server.url, "--client-id", CLIENT_ID];
    sandbox.ok(&[&add[..], &["--client-secret-stdin"]].concat(), &format!("{CLIENT_SECRET}\n"));
    let provider: serde_json::Value =
        serde_json::from_str(&sandbox.ok(&["provider", "show", "op", "--json"], "")).unwrap();
    assert_eq!(provider["client_auth"], "basic");
    assert_eq!(provider["issuer"], server.url.as_str());
    assert_eq!(provider["token_url"], format!("{}/oauth/token", server.url));
    assert_eq!(provider["authorization_url"], format!("{}/authorize", server.url));
    assert_eq!(provider["revocation_url"], format!("{}/oauth/revoke", server.url));
    let shown = sandbox.ok(&["provider", "show", "op"], "");
    assert!(shown.contains("client auth") && shown.contains("basic") && shown.contains("/oauth/revoke"), "{shown}");

    let refresh_token = first_refresh_token(&server);
    add_grant(&sandbox, "w", &refresh_token, &["--rotate-before", "2s"]);
    let token = sandbox.token_show("w");
    assert_eq!((token["state"].as_str(), token["version"].as_i64()), (Some("active"), Some(2)), "{token}");
    assert_eq!(token["refresh_token_rotates"], false, "Authlib's default keeps the refresh token");
    let shown = sandbox.ok(&["token", "show", "w"], "");
    assert!(shown.contains("refresh token rotates") && shown.contains("no (the server keeps it valid)"), "{shown}");

    sandbox.ok(&["token", "rotate", "w"], "");
    assert_eq!(sandbox.token_show("w")["version"], 3);
    assert_eq!(server.stats()["refreshes"], 2);

    // Scheduled: the access token lives 6 s, so the daemon refreshes it within seconds.
    let config = sandbox.path().join("interop.toml");
    std::fs::write(&config, "").unwrap();
    let log = sandbox.path().join("serve.log");
    let mut daemon =
        ServeProcess::start(sandbox.path(), &config, &log, &[("TOKENWARDEN_DATABASE_URL", sandbox.database_url())]);
    daemon.wait_for_api(&log, Duration::from_secs(20));
    let deadline = Instant::now() + Duration::from_secs(30);
    while sandbox.token_show("w")["version"].as_i64() < Some(4) {
        assert!(Instant::now() < deadline, "no scheduled refresh: {}", std::fs::read_to_string(&log).unwrap());
        std::thread::sleep(Duration::from_millis(200));
    }
    daemon.terminate(Duration::from_secs(10));
    let token = sandbox.token_show("w");
    assert_eq!(token["state"], "active", "{token}");

    revoke(&server, &refresh_token);
    let stderr = sandbox.fails(&["token", "rotate", "w"], "", 1);
    assert!(stderr.contains("invalid_grant"), "{stderr}");
    let token = sandbox.token_show("w");
    assert_eq!(token["state"], "needs_attention", "{token}");
    assert_eq!(token["attention_reason"], "invalid_grant");
    assert_eq!(token["remedy"], "reauthorize");
}

#[test]
fn an_authlib_server_that_rotates_refresh_tokens_is_refreshed_with_basic_by_default_and_refuses_post() {
    let Some(server) = AuthlibServer::start(&["--rotate-refresh-tokens"]) else { return };
    let sandbox = Sandbox::new();
    let token_url = format!("{}/oauth/token", server.url);
    let add = ["provider", "add", "op", "--kind", "oauth2", "--token-url", &token_url, "--client-id", CLIENT_ID];
    sandbox.ok(&[&add[..], &["--client-secret-stdin"]].concat(), &format!("{CLIENT_SECRET}\n"));

    let first = first_refresh_token(&server);
    add_grant(&sandbox, "w", &first, &[]);
    let token = sandbox.token_show("w");
    assert_eq!(token["refresh_token_rotates"], true, "{token}");
    assert_eq!(try_refresh(&server, &first), "invalid_grant", "the first refresh token was rotated away");
    sandbox.ok(&["token", "rotate", "w"], "");
    sandbox.ok(&["token", "rotate", "w"], "");
    let token = sandbox.token_show("w");
    assert_eq!((token["state"].as_str(), token["version"].as_i64()), (Some("active"), Some(4)), "{token}");
    assert_eq!(server.stats()["refreshes"], 3);

    // The same server refuses the form body: a provider set to `post` is told what to change,
    // and nothing is added.
    sandbox.ok(&["provider", "update", "op", "--client-auth", "post"], "");
    let second = first_refresh_token(&server);
    let args = ["token", "add", "p", "--provider", "op", "--kind", "oauth2", "--refresh-token-stdin"];
    let stderr = sandbox.fails(&args, &format!("{second}\n"), 1);
    assert!(stderr.contains("client_credentials_rejected") && stderr.contains("--client-auth post"), "{stderr}");
    assert!(stderr.contains("provider update op"), "{stderr}");
    assert_eq!(stderr.trim().lines().count(), 1, "{stderr}");
    assert_eq!(sandbox.token_list().len(), 1, "nothing was added");
    assert!(!stderr.contains(&second) && !stderr.contains(CLIENT_SECRET), "{stderr}");
}
