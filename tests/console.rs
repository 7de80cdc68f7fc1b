//! The operator console over HTTP (issue 12): the session cookie's attributes, sessions that end,
//! forms refused without their CSRF token, pagination, and pages that never show a secret. The
//! same pages in a real browser are in `tests/browser.rs`.

mod common;

use std::sync::Arc;

use chrono::{Days, TimeDelta};
use common::engine_setup::start_time;
use common::served::Served;
use reqwest::StatusCode;
use reqwest::redirect::Policy;
use tokenwarden::api::ConsentSettings;
use tokenwarden::domain::{ClientRole, TokenState};
use tokenwarden::engine::ManualClock;
use tokenwarden::simulator::TokenOwner;
use tokenwarden::simulator::harness::{EngineHarness, SeedToken};

struct Console {
    harness: EngineHarness,
    clock: Arc<ManualClock>,
    url: String,
    http: reqwest::Client,
    operator: String,
    _dir: tempfile::TempDir,
}

impl Console {
    async fn start(public_url: Option<&str>) -> Self {
        let Served { harness, clock, url, dir } = Served::start(start_time(), |url| {
            let public_url = public_url.map_or_else(|| url.to_owned(), str::to_owned);
            ConsentSettings {
                secure_cookies: public_url.starts_with("https://"),
                redirect_uri: format!("{public_url}/oauth/callback"),
                public_url,
                ..ConsentSettings::default()
            }
        })
        .await;
        let operator = harness.add_client("ops", ClientRole::Operator, &[], None).await.unwrap();
        let http = reqwest::Client::builder().redirect(Policy::none()).build().unwrap();
        Self { harness, clock, url, http, operator, _dir: dir }
    }

    /// Signs in; returns the `Set-Cookie` header and the cookie to send.
    async fn sign_in(&self) -> (String, String) {
        let answer =
            self.http.post(format!("{}/ui/sign-in", self.url)).form(&[("api_key", &self.operator)]).send().await;
        let answer = answer.unwrap();
        assert_eq!(answer.status(), StatusCode::SEE_OTHER);
        let set_cookie = answer.headers()["set-cookie"].to_str().unwrap().to_owned();
        let cookie = set_cookie.split(';').next().unwrap().to_owned();
        (set_cookie, cookie)
    }

    async fn get(&self, path: &str, cookie: &str) -> (StatusCode, Option<String>, String) {
        let answer = self.http.get(format!("{}{path}", self.url)).header("cookie", cookie).send().await.unwrap();
        let status = answer.status();
        let location = answer.headers().get("location").map(|l| l.to_str().unwrap().to_owned());
        (status, location, answer.text().await.unwrap())
    }

    /// The CSRF token in a page's forms.
    fn csrf(page: &str) -> String {
        let start = page.find("name=\"csrf\" value=\"").expect("a form with a CSRF token") + 19;
        page[start..start + page[start..].find('"').unwrap()].to_owned()
    }
}

#[tokio::test]
async fn the_session_cookie_is_http_only_strict_and_secure_behind_https() {
    let console = Console::start(None).await;
    let (set_cookie, cookie) = console.sign_in().await;
    assert!(set_cookie.starts_with("tokenwarden_session="), "{set_cookie}");
    for attribute in ["HttpOnly", "SameSite=Strict", "Path=/", "Max-Age=43200"] {
        assert!(set_cookie.contains(attribute), "{attribute}: {set_cookie}");
    }
    assert!(!set_cookie.contains("Secure"), "plain http: {set_cookie}");
    let (status, _, page) = console.get("/ui", &cookie).await;
    assert_eq!(status, StatusCode::OK);
    assert!(page.contains("Expiry timeline") && page.contains("Sign out"), "{page}");

    let secure = Console::start(Some("https://tokens.example.com")).await;
    let (set_cookie, _) = secure.sign_in().await;
    assert!(set_cookie.contains("; Secure"), "{set_cookie}");
}

#[tokio::test]
async fn a_session_ends_after_twelve_hours_and_at_sign_out() {
    let console = Console::start(None).await;
    let (_, cookie) = console.sign_in().await;
    console.clock.advance(TimeDelta::hours(11));
    assert_eq!(console.get("/ui/tokens/none", &cookie).await.0, StatusCode::NOT_FOUND, "still signed in");
    console.clock.advance(TimeDelta::hours(1));
    let (status, location, _) = console.get("/ui/tokens/none", &cookie).await;
    assert_eq!((status, location.as_deref()), (StatusCode::SEE_OTHER, Some("/ui")), "expired: back to sign-in");

    let (_, cookie) = console.sign_in().await;
    let (_, _, page) = console.get("/ui", &cookie).await;
    let forged =
        console.http.post(format!("{}/ui/sign-out", console.url)).header("cookie", &cookie).form(&[("csrf", "x")]);
    assert_eq!(forged.send().await.unwrap().status(), StatusCode::FORBIDDEN, "sign-out needs the CSRF token too");
    let out = console.http.post(format!("{}/ui/sign-out", console.url)).header("cookie", &cookie);
    let out = out.form(&[("csrf", Console::csrf(&page))]).send().await.unwrap();
    assert_eq!(out.status(), StatusCode::SEE_OTHER);
    assert!(out.headers()["set-cookie"].to_str().unwrap().contains("Max-Age=0"));
    let (status, _, page) = console.get("/ui", &cookie).await;
    assert_eq!(status, StatusCode::OK);
    assert!(page.contains("Operator API key"), "the old cookie no longer signs in: {page}");
}

#[tokio::test]
async fn actions_without_the_sessions_csrf_token_are_refused_and_change_nothing() {
    let console = Console::start(None).await;
    let expires = start_time().date_naive() + Days::new(60);
    let secret = console.harness.track_access_token("pat", TokenOwner::Personal, expires).await.unwrap();
    let (_, cookie) = console.sign_in().await;
    let (_, _, page) = console.get("/ui/tokens/pat", &cookie).await;
    assert!(!page.contains(&secret), "a page never shows a secret");
    let csrf = Console::csrf(&page);
    let (_, other_cookie) = console.sign_in().await;

    for (cookie, token) in [(&cookie, "wrong"), (&cookie, ""), (&other_cookie, csrf.as_str())] {
        let answer =
            console.http.post(format!("{}/ui/tokens/pat/pause", console.url)).header("cookie", cookie.as_str());
        let status = answer.form(&[("csrf", token)]).send().await.unwrap().status();
        assert_eq!(status, StatusCode::FORBIDDEN, "csrf {token:?}");
    }
    let without_session = console.http.post(format!("{}/ui/tokens/pat/pause", console.url)).form(&[("csrf", &csrf)]);
    assert_eq!(without_session.send().await.unwrap().status(), StatusCode::SEE_OTHER, "no session: to sign-in");
    assert_eq!(console.harness.token("pat").await.unwrap().state, TokenState::Active, "nothing was paused");

    let pause = console.http.post(format!("{}/ui/tokens/pat/pause", console.url)).header("cookie", &cookie);
    let answer = pause.form(&[("csrf", &csrf)]).send().await.unwrap();
    assert_eq!(answer.headers()["location"], "/ui/tokens/pat?done=paused");
    assert_eq!(console.harness.token("pat").await.unwrap().state, TokenState::Paused);
    let (_, _, page) = console.get("/ui/tokens/pat?done=paused&status=<script>alert(1)</script>", &cookie).await;
    assert!(page.contains("Paused:") && !page.contains("<script>alert"), "flash texts are fixed, never echoed");
}

#[tokio::test]
async fn the_overview_pages_through_many_tokens_fifty_at_a_time() {
    let console = Console::start(None).await;
    let later = start_time() + Days::new(20);
    let seeds = (0..120).map(|i| SeedToken { name: format!("t{i:03}"), next_rotation_at: later }).collect();
    console.harness.track_access_tokens_bulk(seeds, (start_time() + Days::new(30)).date_naive(), false).await.unwrap();
    let (_, cookie) = console.sign_in().await;
    let (_, _, first) = console.get("/ui", &cookie).await;
    assert!(first.contains("<strong>120</strong>tokens"), "the counts cover every token");
    assert!(first.contains("t000") && first.contains("t049") && !first.contains(">t050<"), "50 rows on the first page");
    assert!(first.contains("href=\"/ui?after=t049\""), "a link to the next page");
    let (_, _, second) = console.get("/ui?after=t049", &cookie).await;
    assert!(second.contains(">t050<") && second.contains(">t099<") && !second.contains(">t049<"));
    let (_, _, last) = console.get("/ui?after=t099", &cookie).await;
    assert!(last.contains(">t119<") && !last.contains("Next page"), "the last page has no next link");
}
