//! The operator console and the consent flow in a real browser (issue 12): Debian's chromium,
//! driven through chromedriver over WebDriver (fantoccini). Each step saves a screenshot under
//! `target/browser-screenshots/` for review.
//!
//! Needs `chromium` and `chromedriver` on the PATH (`scripts/test` installs them). Without them
//! the tests say they were skipped — unless `CI` or `TOKENWARDEN_REQUIRE_BROWSER` is set, where
//! a missing browser fails them.

mod common;

use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use common::served::Served;
use fantoccini::{Client, ClientBuilder, Locator};
use tokenwarden::api::ConsentSettings;
use tokenwarden::domain::{ClientRole, TokenName, TokenState};
use tokenwarden::engine::rotate_now;
use tokenwarden::simulator::harness::EngineHarness;
use tokenwarden::store::tokens;

fn start_time() -> DateTime<Utc> {
    Utc::now()
}

/// Whether a missing browser must fail the tests instead of skipping them.
fn browser_required() -> bool {
    std::env::var_os("CI").is_some() || std::env::var_os("TOKENWARDEN_REQUIRE_BROWSER").is_some()
}

fn installed(program: &str) -> bool {
    Command::new(program)
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// chromedriver on a free loopback port, stopped when dropped.
struct Driver {
    child: Child,
    url: String,
}

impl Drop for Driver {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Driver {
    fn start() -> Option<Self> {
        if !installed("chromedriver") || !installed("chromium") {
            assert!(
                !browser_required(),
                "the browser tests need chromium and chromedriver (scripts/test installs them)"
            );
            eprintln!(
                "skipped: the browser tests need chromium and chromedriver on the PATH (scripts/test installs them)"
            );
            return None;
        }
        let port = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let child = Command::new("chromedriver")
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start chromedriver");
        let driver = Self { child, url: format!("http://127.0.0.1:{port}") };
        let deadline = Instant::now() + Duration::from_secs(20);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < deadline, "chromedriver did not listen");
            std::thread::sleep(Duration::from_millis(50));
        }
        Some(driver)
    }

    async fn browser(&self) -> Client {
        let mut capabilities = serde_json::Map::new();
        let options = serde_json::json!({
            "binary": "/usr/bin/chromium",
            "args": ["--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu", "--window-size=1280,1000"],
        });
        capabilities.insert("goog:chromeOptions".into(), options);
        let connector = hyper_util::client::legacy::connect::HttpConnector::new();
        ClientBuilder::new(connector).capabilities(capabilities).connect(&self.url).await.expect("a browser session")
    }
}

/// tokenwarden's API and console on loopback, the simulated GitLab with tokenwarden's callback
/// registered, and an operator key.
struct Console {
    harness: EngineHarness,
    url: String,
    operator_key: String,
    reader_key: String,
    _dir: tempfile::TempDir,
}

impl Console {
    async fn start() -> Self {
        let Served { harness, url, dir, .. } = Served::start(start_time(), |url| ConsentSettings {
            public_url: url.to_owned(),
            redirect_uri: format!("{url}/oauth/callback"),
            ..ConsentSettings::default()
        })
        .await;
        let operator_key = harness.add_client("alice", ClientRole::Operator, &[], None).await.unwrap();
        let reader_key = harness.add_client("dbt", ClientRole::Reader, &[], None).await.unwrap();
        Self { harness, url, operator_key, reader_key, _dir: dir }
    }

    /// A grant that needs attention: its refresh token was revoked at GitLab.
    async fn broken_grant(&self, name: &str) {
        self.harness.track_grant(name).await.unwrap();
        let token: TokenName = name.parse().unwrap();
        rotate_now(&self.harness.context, &token, "test").await.unwrap();
        let refresh = self.harness.refresh_token(name).await.unwrap().unwrap();
        self.harness.sim.with_state(|state| state.revoke_refresh_token(&refresh));
        rotate_now(&self.harness.context, &token, "test").await.unwrap();
        assert_eq!(self.token(name).await.state, TokenState::NeedsAttention);
    }

    async fn token(&self, name: &str) -> tokenwarden::store::models::Token {
        let name: TokenName = name.parse().unwrap();
        self.harness.context.store.run(move |conn| tokens::find(conn, &name)).await.unwrap()
    }
}

/// Where screenshots go.
fn screenshot_dir() -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target").join("browser-screenshots");
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

async fn screenshot(browser: &Client, name: &str) {
    let png = browser.screenshot().await.expect("a screenshot");
    std::fs::write(screenshot_dir().join(format!("{name}.png")), png).unwrap();
}

/// The page's text; empty while a navigation has no body yet.
async fn text(browser: &Client) -> String {
    match browser.find(Locator::Css("body")).await {
        Ok(body) => body.text().await.unwrap_or_default(),
        Err(_) => String::new(),
    }
}

async fn click(browser: &Client, css: &str) {
    browser.find(Locator::Css(css)).await.unwrap_or_else(|err| panic!("no {css}: {err}")).click().await.unwrap();
}

async fn sign_in(browser: &Client, console: &Console, key: &str) {
    browser.goto(&format!("{}/ui", console.url)).await.unwrap();
    browser.find(Locator::Css("#api_key")).await.unwrap().send_keys(key).await.unwrap();
    click(browser, "#sign-in").await;
}

/// Waits (in real time, bounded) until the page's text contains `wanted`.
async fn wait_for_text(browser: &Client, wanted: &str) -> String {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let body = text(browser).await;
        if body.contains(wanted) {
            return body;
        }
        assert!(Instant::now() < deadline, "the page never said {wanted:?}: {body}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_operator_restores_a_broken_grant_from_the_console_through_the_consent_page() {
    let Some(driver) = Driver::start() else { return };
    let console = Console::start().await;
    console.broken_grant("warehouse").await;
    for name in ["ci-runner", "docs-bot"] {
        console.harness.track_grant(name).await.unwrap();
        rotate_now(&console.harness.context, &name.parse().unwrap(), "test").await.unwrap();
    }
    let before = console.token("warehouse").await;
    let browser = driver.browser().await;

    sign_in(&browser, &console, &console.operator_key).await;
    let overview = wait_for_text(&browser, "Expiry timeline").await;
    assert!(overview.contains("warehouse") && overview.contains("needs_attention"), "{overview}");
    let svg = browser.find(Locator::Css("svg.timeline")).await.unwrap().html(false).await.unwrap();
    assert!(svg.contains("warehouse") && svg.contains("ci-runner"), "each token is on the timeline: {svg}");
    let headers = reqwest::get(format!("{}/ui", console.url)).await.unwrap();
    assert_eq!(
        headers.headers()["content-security-policy"],
        "default-src 'self'; frame-ancestors 'none'; base-uri 'none'"
    );
    screenshot(&browser, "01-overview").await;
    browser.set_window_size(390, 844).await.unwrap();
    browser.refresh().await.unwrap();
    wait_for_text(&browser, "Expiry timeline").await;
    screenshot(&browser, "01b-overview-phone").await;
    browser.set_window_size(1280, 1000).await.unwrap();

    click(&browser, "a[href='/ui/tokens/warehouse']").await;
    let page = wait_for_text(&browser, "History").await;
    assert!(page.contains("invalid_grant") && page.contains("reauthorize"), "{page}");
    screenshot(&browser, "02-token-needs-attention").await;

    click(&browser, "#reauthorize").await;
    wait_for_text(&browser, "Authorize application").await;
    assert!(browser.current_url().await.unwrap().as_str().starts_with(console.harness.sim.url()));
    screenshot(&browser, "03-gitlab-consent").await;
    click(&browser, "#authorize").await;
    let page = wait_for_text(&browser, "Re-authorised").await;
    assert!(browser.current_url().await.unwrap().path().ends_with("/ui/tokens/warehouse"), "back on the token page");
    let after = console.token("warehouse").await;
    assert_eq!((after.state, after.version), (TokenState::Active, before.version + 1));
    assert!(page.contains(&format!("{}", before.version + 1)) && page.contains("Authorised by"), "{page}");
    screenshot(&browser, "04-token-reauthorised").await;

    click(&browser, "#rotate").await;
    wait_for_text(&browser, "Rotated.").await;
    assert_eq!(console.token("warehouse").await.version, before.version + 2);
    screenshot(&browser, "05-rotated").await;

    click(&browser, "#pause").await;
    wait_for_text(&browser, "Paused:").await;
    assert_eq!(console.token("warehouse").await.state, TokenState::Paused);
    click(&browser, "#resume").await;
    wait_for_text(&browser, "Resumed.").await;
    assert_eq!(console.token("warehouse").await.state, TokenState::Active);

    // A declined re-authorisation changes nothing.
    click(&browser, "#reauthorize").await;
    wait_for_text(&browser, "Authorize application").await;
    click(&browser, "#deny").await;
    wait_for_text(&browser, "declined").await;
    assert_eq!(console.token("warehouse").await.version, before.version + 2);
    screenshot(&browser, "06-declined").await;

    // Signing out ends the session: the console asks for a key again.
    click(&browser, "nav button").await;
    wait_for_text(&browser, "Operator API key").await;
    browser.goto(&format!("{}/ui/tokens/warehouse", console.url)).await.unwrap();
    wait_for_text(&browser, "Operator API key").await;
    browser.close().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_used_consent_link_and_a_readers_key_are_refused_with_a_page_that_says_why() {
    let Some(driver) = Driver::start() else { return };
    let console = Console::start().await;
    let browser = driver.browser().await;

    sign_in(&browser, &console, &console.reader_key).await;
    wait_for_text(&browser, "Readers cannot sign in").await;
    screenshot(&browser, "07-reader-refused").await;
    sign_in(&browser, &console, "tw_nope_nope").await;
    wait_for_text(&browser, "Sign in").await;

    // A link handed to a user (no return_to): approve it, then open the callback link again.
    let http = reqwest::Client::new();
    let link: serde_json::Value = http
        .post(format!("{}/v1/authorizations", console.url))
        .bearer_auth(&console.operator_key)
        .json(&serde_json::json!({"token": "carol-gitlab", "provider": "gitlab"}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    browser.goto(link["url"].as_str().unwrap()).await.unwrap();
    click(&browser, "#authorize").await;
    wait_for_text(&browser, "Connected").await;
    let callback = browser.current_url().await.unwrap();
    assert_eq!(callback.path(), "/oauth/callback");
    screenshot(&browser, "08-connected").await;
    assert_eq!(console.token("carol-gitlab").await.version, 1);

    browser.goto(callback.as_str()).await.unwrap();
    let page = wait_for_text(&browser, "This link cannot be used").await;
    let state = callback.query_pairs().find(|(k, _)| k == "state").unwrap().1.into_owned();
    assert!(!page.contains(&state), "the page never shows the state");
    screenshot(&browser, "09-link-reused").await;
    assert_eq!(console.token("carol-gitlab").await.version, 1, "a reused link changes nothing");
    browser.close().await.unwrap();
}
