//! tokenwarden against OAuth 2.0 authorization servers someone else wrote, with their defaults:
//! Authlib's (Python; tests/interop/authlib_server.py) and panva's certified `oidc-provider`
//! (Node.js; tests/interop/oidc_provider_server.mjs). Each registers one client that may
//! authenticate at the token endpoint with HTTP Basic only, so these tests fail if the default
//! client authentication goes back to `post`.
//!
//! Each test signs a user in through the server's own login and consent pages and exchanges the
//! code for the first refresh token, then runs the `tokenwarden` binary: `provider add` (by
//! discovery or by token URL), `token add` with the refresh token on standard input, forced and
//! scheduled refreshes, a server that keeps refresh tokens and one that rotates them, and a
//! grant revoked at the server (→ `needs_attention`, remedy `reauthorize`).
//!
//! The servers need `python3` with `authlib` and `flask`, and `node` with
//! `tests/interop/node_modules` (`npm ci`), both installed by `scripts/test`. Without them the
//! tests say "skipped"; with `TOKENWARDEN_REQUIRE_INTEROP=1` (set by `scripts/test`) they fail.

mod common;

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::Sandbox;
use common::serve_process::ServeProcess;
use secrecy::{ExposeSecret, SecretString};
use tokenwarden::providers::client_auth::basic_authorization;
use tokenwarden::providers::{HttpSettings, build_http_client};

/// The registered client. The secret holds `:`, `%`, `+` and a space, which HTTP Basic carries
/// only when form-URL-encoded first (RFC 6749 allows only printable ASCII in a secret).
const CLIENT_ID: &str = "tw-client";
const CLIENT_SECRET: &str = "s3:cr%t w0rd+1";
/// Registered and never visited: the code is read from the `Location` header.
const REDIRECT_URI: &str = "http://127.0.0.1:9/callback";

/// The two servers and what differs between them.
#[derive(Debug, Clone, Copy)]
enum Kind {
    /// Authlib: RFC 8414 metadata, token endpoint `/oauth/token`.
    Authlib,
    /// oidc-provider: OpenID Connect discovery only, token endpoint `/token`.
    OidcProvider,
}

impl Kind {
    fn interop_dir() -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/interop")
    }

    /// Why the server cannot start here, if it cannot.
    fn missing(self) -> Option<&'static str> {
        match self {
            Kind::Authlib => {
                let ok = Command::new("python3")
                    .args(["-c", "import authlib, flask"])
                    .output()
                    .is_ok_and(|out| out.status.success());
                (!ok).then_some(
                    "python3 with the authlib and flask packages is not installed (scripts/test installs them)",
                )
            }
            Kind::OidcProvider => {
                let node = Command::new("node").arg("--version").output().is_ok_and(|out| out.status.success());
                let installed = Self::interop_dir().join("node_modules/oidc-provider/package.json").is_file();
                (!(node && installed))
                    .then_some("node with tests/interop/node_modules is not installed (scripts/test runs npm ci)")
            }
        }
    }

    fn command(self) -> Command {
        let (program, script) = match self {
            Kind::Authlib => ("python3", "authlib_server.py"),
            Kind::OidcProvider => ("node", "oidc_provider_server.mjs"),
        };
        let mut command = Command::new(program);
        command.current_dir(Self::interop_dir()).arg(script);
        command
    }

    fn token_path(self) -> &'static str {
        match self {
            Kind::Authlib => "/oauth/token",
            Kind::OidcProvider => "/token",
        }
    }

    /// Whether the server refuses the form body from a client registered for Basic. Authlib
    /// does; oidc-provider deliberately accepts either of the two secret methods.
    fn refuses_post(self) -> bool {
        matches!(self, Kind::Authlib)
    }

    /// The scope to ask for: oidc-provider issues refresh tokens for `offline_access` only.
    fn scope(self) -> &'static str {
        match self {
            Kind::Authlib => "read write",
            Kind::OidcProvider => "openid offline_access",
        }
    }
}

/// An authorization server on a free loopback port, killed on drop.
struct Server {
    kind: Kind,
    child: Child,
    url: String,
}

impl Server {
    /// Starts the server with `args`; `None` (after saying "skipped") when it is not installed
    /// and interop tests are not required.
    fn start(kind: Kind, args: &[&str]) -> Option<Self> {
        if let Some(why) = kind.missing() {
            assert!(std::env::var("TOKENWARDEN_REQUIRE_INTEROP").as_deref() != Ok("1"), "{why}");
            eprintln!("skipped: {why}");
            return None;
        }
        let mut child = kind
            .command()
            .args(args)
            .env("CLIENT_ID", CLIENT_ID)
            .env("CLIENT_SECRET", CLIENT_SECRET)
            .env("REDIRECT_URI", REDIRECT_URI)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("start the authorization server");
        let mut line = String::new();
        BufReader::new(child.stdout.take().expect("stdout")).read_line(&mut line).expect("read its address");
        let url = line.trim().strip_prefix("listening on ").unwrap_or_else(|| panic!("no address: {line:?}"));
        Some(Self { kind, url: url.to_owned(), child })
    }

    /// How many refresh grants it served.
    fn refreshes(&self) -> i64 {
        let url = format!("{}/_test/stats", self.url);
        let stats: serde_json::Value =
            block_on(async move { http().get(url).send().await.unwrap().json().await.unwrap() });
        stats["refreshes"].as_i64().unwrap()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// tokenwarden's own HTTP client settings: rustls, no redirects (each one is followed by hand).
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

/// A minimal browser: a cookie jar (every cookie sent everywhere: one server, loopback) and
/// manual redirects, so the code in the last redirect can be read.
struct Browser {
    http: reqwest::Client,
    cookies: BTreeMap<String, String>,
}

/// What the browser does next.
enum Step {
    Get(url::Url),
    Post(url::Url, Vec<(String, String)>),
}

impl Browser {
    async fn send(&mut self, step: Step) -> (url::Url, reqwest::Response) {
        let (url, request) = match step {
            Step::Get(url) => (url.clone(), self.http.get(url)),
            Step::Post(url, form) => (url.clone(), self.http.post(url).form(&form)),
        };
        let cookie: Vec<String> = self.cookies.iter().map(|(k, v)| format!("{k}={v}")).collect();
        let response = request.header("cookie", cookie.join("; ")).send().await.unwrap();
        for value in response.headers().get_all("set-cookie") {
            let pair = value.to_str().unwrap().split(';').next().unwrap();
            if let Some((name, value)) = pair.split_once('=') {
                self.cookies.insert(name.trim().to_owned(), value.to_owned());
            }
        }
        (url, response)
    }
}

/// The value of `name="…"` in one HTML tag, with the entities servers use decoded.
fn attribute(tag: &str, name: &str) -> Option<String> {
    let start = tag.find(&format!(" {name}=\""))? + name.len() + 3;
    let value = &tag[start..start + tag[start..].find('"')?];
    Some(value.replace("&amp;", "&").replace("&#x27;", "'").replace("&#39;", "'").replace("&quot;", "\""))
}

/// The page's first form as the user submits it: its action, hidden fields, the submit button,
/// and any login field filled in (both servers accept any user).
fn submit_form(page_url: &url::Url, html: &str) -> Step {
    let form = &html[html.find("<form").unwrap_or_else(|| panic!("no form on {page_url}: {html}"))..];
    let form = &form[..form.find("</form>").unwrap_or(form.len())];
    let action = attribute(form, "action").map_or_else(|| page_url.clone(), |a| page_url.join(&a).unwrap());
    let mut fields = Vec::new();
    for tag in form.split('<').filter(|tag| tag.starts_with("input") || tag.starts_with("button")) {
        let Some(name) = attribute(tag, "name") else { continue };
        let value = attribute(tag, "value").unwrap_or_else(|| "alice".to_owned());
        fields.push((name, value));
    }
    Step::Post(action, fields)
}

/// A user signs in and consents on the server's own pages; returns the code the server
/// redirects back with.
fn authorization_code(server: &Server) -> String {
    let query = [
        ("response_type", "code"),
        ("client_id", CLIENT_ID),
        ("redirect_uri", REDIRECT_URI),
        ("scope", server.kind.scope()),
        ("state", "interop-state"),
        ("prompt", "consent"),
    ];
    let authorize = match server.kind {
        Kind::Authlib => "authorize",
        Kind::OidcProvider => "auth",
    };
    let start = url::Url::parse_with_params(&format!("{}/{authorize}", server.url), query).unwrap();
    let back = consent(start);
    let code = back.query_pairs().find(|(k, _)| k == "code").map(|(_, v)| v.into_owned());
    code.unwrap_or_else(|| panic!("no code in {back}"))
}

/// Opens `start` (an authorisation request) as a browser, signs in and consents on every page
/// the server shows; returns where the server finally sends the browser (the redirect URI with
/// `code` and `state`).
fn consent(start: url::Url) -> url::Url {
    block_on(async move {
        let mut browser = Browser { http: http(), cookies: BTreeMap::new() };
        let mut step = Step::Get(start);
        for _ in 0..20 {
            let (url, response) = browser.send(step).await;
            if let Some(location) = response.headers().get("location") {
                let next = url.join(location.to_str().unwrap()).unwrap();
                if next.as_str().starts_with(REDIRECT_URI) {
                    return next;
                }
                step = Step::Get(next);
                continue;
            }
            assert_eq!(response.status(), 200, "{url}");
            step = submit_form(&url, &response.text().await.unwrap());
        }
        panic!("the server never redirected back")
    })
}

/// The code from [`authorization_code`] exchanged (with Basic client authentication) for the
/// first refresh token.
fn first_refresh_token(server: &Server) -> String {
    let code = authorization_code(server);
    let token_url = format!("{}{}", server.url, server.kind.token_path());
    block_on(async move {
        let exchange = [("grant_type", "authorization_code"), ("code", &code), ("redirect_uri", REDIRECT_URI)];
        let response = http().post(token_url).header("authorization", basic()).form(&exchange).send().await;
        let token: serde_json::Value = response.unwrap().json().await.unwrap();
        token["refresh_token"].as_str().unwrap_or_else(|| panic!("no refresh token: {token}")).to_owned()
    })
}

/// Revokes `refresh_token` at the server's RFC 7009 endpoint.
fn revoke(revocation_url: &str, refresh_token: &str) {
    let (url, token) = (revocation_url.to_owned(), refresh_token.to_owned());
    let status = block_on(async move {
        let form = [("token", token.as_str()), ("token_type_hint", "refresh_token")];
        http().post(url).header("authorization", basic()).form(&form).send().await.unwrap().status()
    });
    assert_eq!(status, 200);
}

/// A refresh sent by the test itself: the error code, or `ok`.
fn try_refresh(server: &Server, refresh_token: &str) -> String {
    let url = format!("{}{}", server.url, server.kind.token_path());
    let token = refresh_token.to_owned();
    block_on(async move {
        let form = [("grant_type", "refresh_token"), ("refresh_token", token.as_str())];
        let response = http().post(url).header("authorization", basic()).form(&form).send().await;
        let answer: serde_json::Value = response.unwrap().json().await.unwrap();
        answer["error"].as_str().unwrap_or("ok").to_owned()
    })
}

fn add_provider(sandbox: &Sandbox, how: &[&str]) {
    let args =
        [&["provider", "add", "op", "--kind", "oauth2"], how, &["--client-id", CLIENT_ID, "--client-secret-stdin"]];
    sandbox.ok(&args.concat(), &format!("{CLIENT_SECRET}\n"));
}

fn add_grant(sandbox: &Sandbox, name: &str, refresh_token: &str, extra: &[&str]) {
    let args =
        [&["token", "add", name, "--provider", "op", "--kind", "oauth2", "--refresh-token-stdin"], extra].concat();
    sandbox.ok(&args, &format!("{refresh_token}\n"));
}

fn version(sandbox: &Sandbox, name: &str) -> i64 {
    sandbox.token_show(name)["version"].as_i64().unwrap()
}

/// Runs `serve` until the token's version passes `above` (its access token lives seconds).
fn scheduled_refresh(sandbox: &Sandbox, name: &str, above: i64) {
    let config = sandbox.path().join("interop.toml");
    std::fs::write(&config, "").unwrap();
    let log = sandbox.path().join("serve.log");
    let env = [("TOKENWARDEN_DATABASE_URL", sandbox.database_url())];
    let mut daemon = ServeProcess::start(sandbox.path(), &config, &log, &env);
    daemon.wait_for_api(&log, Duration::from_secs(20));
    let deadline = Instant::now() + Duration::from_secs(30);
    while version(sandbox, name) <= above {
        assert!(Instant::now() < deadline, "no scheduled refresh: {}", std::fs::read_to_string(&log).unwrap());
        std::thread::sleep(Duration::from_millis(200));
    }
    daemon.terminate(Duration::from_secs(10));
}

/// A server found by discovery that keeps its refresh tokens (both servers' default for a
/// confidential client): token add, a forced and a scheduled refresh, then the grant revoked at
/// the server.
fn discovered_server_keeping_refresh_tokens(kind: Kind) {
    let Some(server) = Server::start(kind, &["--access-token-lifetime", "6"]) else { return };
    let sandbox = Sandbox::new();
    add_provider(&sandbox, &["--issuer", &server.url]);
    let provider: serde_json::Value =
        serde_json::from_str(&sandbox.ok(&["provider", "show", "op", "--json"], "")).unwrap();
    assert_eq!(provider["client_auth"], "basic", "{provider}");
    assert_eq!(provider["issuer"], server.url.as_str());
    assert_eq!(provider["token_url"], format!("{}{}", server.url, kind.token_path()));
    assert!(provider["authorization_url"].as_str().is_some_and(|u| u.starts_with(&server.url)), "{provider}");
    let revocation_url = provider["revocation_url"].as_str().expect("a revocation endpoint").to_owned();
    let shown = sandbox.ok(&["provider", "show", "op"], "");
    assert!(shown.contains("client auth") && shown.contains(&revocation_url), "{shown}");

    let refresh_token = first_refresh_token(&server);
    add_grant(&sandbox, "w", &refresh_token, &["--rotate-before", "2s"]);
    let token = sandbox.token_show("w");
    assert_eq!((token["state"].as_str(), token["version"].as_i64()), (Some("active"), Some(2)), "{token}");
    assert_eq!(token["refresh_token_rotates"], false, "{token}");
    let shown = sandbox.ok(&["token", "show", "w"], "");
    assert!(shown.contains("no (the server keeps it valid)"), "{shown}");

    sandbox.ok(&["token", "rotate", "w"], "");
    assert_eq!(version(&sandbox, "w"), 3);
    assert_eq!(server.refreshes(), 2);
    scheduled_refresh(&sandbox, "w", 3);
    assert_eq!(sandbox.token_show("w")["state"], "active");

    revoke(&revocation_url, &refresh_token);
    let stderr = sandbox.fails(&["token", "rotate", "w"], "", 1);
    assert!(stderr.contains("invalid_grant"), "{stderr}");
    let token = sandbox.token_show("w");
    assert_eq!(token["state"], "needs_attention", "{token}");
    assert_eq!(token["attention_reason"], "invalid_grant");
    assert_eq!(token["remedy"], "reauthorize");
}

/// A server given by its token URL that rotates refresh tokens: refreshed with Basic by default;
/// switched to `post`, a server that allows Basic only refuses the client and nothing is added.
fn server_rotating_refresh_tokens(kind: Kind) {
    let Some(server) = Server::start(kind, &["--rotate-refresh-tokens"]) else { return };
    let sandbox = Sandbox::new();
    add_provider(&sandbox, &["--token-url", &format!("{}{}", server.url, kind.token_path())]);

    let first = first_refresh_token(&server);
    add_grant(&sandbox, "w", &first, &[]);
    assert_eq!(sandbox.token_show("w")["refresh_token_rotates"], true);
    sandbox.ok(&["token", "rotate", "w"], "");
    sandbox.ok(&["token", "rotate", "w"], "");
    let token = sandbox.token_show("w");
    assert_eq!((token["state"].as_str(), token["version"].as_i64()), (Some("active"), Some(4)), "{token}");
    assert_eq!(server.refreshes(), 3);

    if kind.refuses_post() {
        refused_with_post(&sandbox, &server);
    }
    // Last, as it may make the server revoke the whole grant: the first refresh token is spent.
    assert_eq!(try_refresh(&server, &first), "invalid_grant", "the first refresh token was rotated away");
}

/// With `--client-auth post`, a server that allows Basic only refuses the client: one line
/// naming the method and the flag, and nothing is added.
fn refused_with_post(sandbox: &Sandbox, server: &Server) {
    sandbox.ok(&["provider", "update", "op", "--client-auth", "post"], "");
    let second = first_refresh_token(server);
    let args = ["token", "add", "p", "--provider", "op", "--kind", "oauth2", "--refresh-token-stdin"];
    let stderr = sandbox.fails(&args, &format!("{second}\n"), 1);
    assert!(stderr.contains("client_credentials_rejected") && stderr.contains("--client-auth post"), "{stderr}");
    assert!(stderr.contains("provider update op"), "{stderr}");
    assert_eq!(stderr.trim().lines().count(), 1, "{stderr}");
    assert!(!stderr.contains(&second) && !stderr.contains(CLIENT_SECRET), "{stderr}");
    assert_eq!(sandbox.token_list().len(), 1, "nothing was added");
}

#[test]
fn authlib_found_by_rfc8414_discovery_keeping_refresh_tokens_refreshes_forced_scheduled_and_revoked() {
    discovered_server_keeping_refresh_tokens(Kind::Authlib);
}

#[test]
fn authlib_rotating_refresh_tokens_is_refreshed_with_basic_by_default_and_refuses_post() {
    server_rotating_refresh_tokens(Kind::Authlib);
}

#[test]
fn oidc_provider_found_by_openid_discovery_keeping_refresh_tokens_refreshes_forced_scheduled_and_revoked() {
    discovered_server_keeping_refresh_tokens(Kind::OidcProvider);
}

#[test]
fn oidc_provider_rotating_refresh_tokens_is_refreshed_with_basic_by_default() {
    server_rotating_refresh_tokens(Kind::OidcProvider);
}

/// The consent flow end to end through the `tokenwarden` binary, against Authlib's own
/// authorization-code grant with its PKCE extension: `token authorize` makes the link (S256
/// challenge), a user consents on Authlib's pages, and the daemon's `/oauth/callback` exchanges
/// the code with its verifier and stores the grant, which then refreshes. A code of such a link
/// is refused without its verifier — so Authlib checked the one tokenwarden sent.
#[test]
fn authlib_consent_through_token_authorize_and_the_callback_stores_a_pkce_grant() {
    let Some(server) = Server::start(Kind::Authlib, &[]) else { return };
    let sandbox = Sandbox::new();
    add_provider(&sandbox, &["--issuer", &server.url, "--redirect-uri", REDIRECT_URI]);
    let scopes: Vec<&str> = server.kind.scope().split(' ').flat_map(|scope| ["--scope", scope]).collect();
    let authorize = [&["token", "authorize", "corp-api", "--provider", "op"][..], &scopes].concat();
    let link = url::Url::parse(sandbox.ok(&authorize, "").trim()).unwrap();
    let params: BTreeMap<String, String> = link.query_pairs().into_owned().collect();
    assert_eq!(params["code_challenge_method"], "S256", "{link}");
    assert!(link.as_str().starts_with(&server.url), "the discovered authorization endpoint: {link}");

    // Authlib enforces the challenge: the code of a link is refused without its verifier.
    let unused = url::Url::parse(sandbox.ok(&authorize, "").trim()).unwrap();
    let back_unused = consent(unused);
    let code =
        back_unused.query_pairs().find(|(k, _)| k == "code").unwrap_or_else(|| panic!("{back_unused}")).1.into_owned();
    let token_url = format!("{}{}", server.url, server.kind.token_path());
    let refused: serde_json::Value = block_on(async move {
        let exchange = [("grant_type", "authorization_code"), ("code", &code), ("redirect_uri", REDIRECT_URI)];
        let answer = http().post(token_url).header("authorization", basic()).form(&exchange).send().await.unwrap();
        answer.json().await.unwrap()
    });
    assert!(refused["error"].is_string() && refused.get("access_token").is_none(), "{refused}");

    let back = consent(link);
    let config = sandbox.path().join("interop.toml");
    std::fs::write(&config, "").unwrap();
    let log = sandbox.path().join("serve.log");
    let env = [("TOKENWARDEN_DATABASE_URL", sandbox.database_url())];
    let mut daemon = ServeProcess::start(sandbox.path(), &config, &log, &env);
    let base = daemon.wait_for_api(&log, Duration::from_secs(20));
    // The redirect URI registered at Authlib is never served; the browser's query is delivered to
    // the daemon's callback as a proxy in front of it would.
    let callback = format!("{base}/oauth/callback?{}", back.query().unwrap_or_default());
    let (status, page) = block_on(async move {
        let answer = http().get(callback).send().await.unwrap();
        (answer.status(), answer.text().await.unwrap())
    });
    assert_eq!(status, 200, "{page}\n{}", std::fs::read_to_string(&log).unwrap_or_default());
    assert!(page.contains("Connected"), "{page}");
    daemon.terminate(Duration::from_secs(10));

    let token = sandbox.token_show("corp-api");
    assert_eq!((token["state"].as_str(), token["version"].as_i64()), (Some("active"), Some(1)), "{token}");
    let refreshes = server.refreshes();
    sandbox.ok(&["token", "rotate", "corp-api"], "");
    assert_eq!((version(&sandbox, "corp-api"), server.refreshes()), (2, refreshes + 1), "the stored grant refreshes");
}

/// The README's fenced `sh` block that contains every one of `needles` and not `unlike`.
fn readme_block(needles: &[&str], unlike: &str) -> String {
    let readme = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md")).unwrap();
    let blocks = readme.split("```sh\n").skip(1).filter_map(|rest| rest.split("\n```").next());
    let mut found =
        blocks.filter(|block| needles.iter().all(|needle| block.contains(needle)) && !block.contains(unlike));
    found.next().unwrap_or_else(|| panic!("no sh block in README.md with {needles:?}")).to_owned()
}

#[test]
fn the_readme_worked_example_adds_a_grant_at_authlib() {
    let Some(server) = Server::start(Kind::Authlib, &[]) else { return };
    let sandbox = Sandbox::new();
    std::fs::write(sandbox.path().join("client-secret.txt"), format!("{CLIENT_SECRET}\n")).unwrap();
    let code = authorization_code(&server);
    let script = [
        readme_block(&["provider add corp-sso", "provider show corp-sso"], "token add dbt-ci"),
        readme_block(&["python3 -", "token add corp-api"], "token add dbt-ci"),
    ]
    .join("\n")
    .replace("--client-id tokenwarden", &format!("--client-id {CLIENT_ID}"))
    .replace("enc('tokenwarden')", &format!("enc('{CLIENT_ID}')"))
    .replace("CODE=...", &format!("CODE={code}"))
    .replace("https://tokenwarden.example/callback", REDIRECT_URI)
    .replace("https://login.example.com/oauth/token", &format!("{}/oauth/token", server.url))
    .replace("https://login.example.com", &server.url);
    let binary = assert_cmd::cargo::cargo_bin("tokenwarden");
    let path = format!("{}:{}", binary.parent().unwrap().display(), std::env::var("PATH").unwrap_or_default());
    let out = Command::new("bash")
        .args(["-euo", "pipefail", "-c", &script])
        .current_dir(sandbox.path())
        .env("PATH", path)
        .env("TOKENWARDEN_DATABASE_URL", sandbox.database_url())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{script}\n{stderr}");
    let token = sandbox.token_show("corp-api");
    assert_eq!((token["state"].as_str(), token["version"].as_i64()), (Some("active"), Some(2)), "{token}");
    assert!(!sandbox.path().join("refresh.txt").exists(), "the example removes the refresh token file");
}
