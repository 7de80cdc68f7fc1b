//! The simulator's consent page and authorization-code grant (issue 12, point 4), over HTTP as
//! a browser and tokenwarden will use them: GitLab's rules from `../shared/gitlab-api.md` —
//! PKCE S256 (a wrong or missing verifier is `invalid_grant`), single-use codes, the exact
//! redirect URI, `access_denied` on Deny, error pages instead of redirects for a bad client or
//! redirect URI, and `GET /api/v4/user` naming who consented.

use std::sync::Arc;

use reqwest::StatusCode;
use reqwest::redirect::Policy;
use serde_json::Value;
use tokenwarden::engine::SystemClock;
use tokenwarden::simulator::Simulator;
use tokenwarden::simulator::authorization::{SimUser, s256};

const REDIRECT: &str = "http://127.0.0.1:8080/oauth/callback";

struct Consent {
    sim: Simulator,
    http: reqwest::Client,
    client_id: String,
    client_secret: String,
}

impl Consent {
    async fn start() -> Self {
        let sim = Simulator::start(Arc::new(SystemClock)).await.unwrap();
        let (client_id, client_secret) = sim.create_application();
        assert!(sim.with_state(|state| state.register_redirect_uri(&client_id, REDIRECT)));
        let _ = rustls::crypto::ring::default_provider().install_default();
        let http = reqwest::Client::builder().redirect(Policy::none()).build().unwrap();
        Self { sim, http, client_id, client_secret }
    }

    fn authorize_fields(&self, challenge: &str, redirect: &str) -> Vec<(&'static str, String)> {
        vec![
            ("client_id", self.client_id.clone()),
            ("redirect_uri", redirect.to_owned()),
            ("response_type", "code".to_owned()),
            ("state", "st<ate>&1".to_owned()),
            ("scope", "api".to_owned()),
            ("code_challenge", challenge.to_owned()),
            ("code_challenge_method", "S256".to_owned()),
        ]
    }

    async fn show(&self, fields: &[(&str, String)]) -> reqwest::Response {
        let url = reqwest::Url::parse_with_params(&format!("{}/oauth/authorize", self.sim.url()), fields).unwrap();
        self.http.get(url).send().await.unwrap()
    }

    /// Submits the consent form with `decision`; returns the redirect's query pairs.
    async fn decide(&self, fields: &[(&str, String)], decision: &str) -> Vec<(String, String)> {
        let mut form = fields.to_vec();
        form.push(("decision", decision.to_owned()));
        let response = self.http.post(format!("{}/oauth/authorize", self.sim.url())).form(&form).send().await.unwrap();
        assert_eq!(response.status(), StatusCode::FOUND);
        let location = response.headers()["location"].to_str().unwrap().to_owned();
        assert!(location.starts_with(REDIRECT), "{location}");
        reqwest::Url::parse(&location).unwrap().query_pairs().into_owned().collect()
    }

    async fn exchange(&self, code: &str, verifier: Option<&str>) -> (StatusCode, Value) {
        let mut form = vec![("grant_type", "authorization_code"), ("code", code), ("redirect_uri", REDIRECT)];
        form.extend(verifier.map(|verifier| ("code_verifier", verifier)));
        let response = self
            .http
            .post(format!("{}/oauth/token", self.sim.url()))
            .basic_auth(&self.client_id, Some(&self.client_secret))
            .form(&form)
            .send()
            .await
            .unwrap();
        (response.status(), response.json().await.unwrap())
    }
}

fn pair<'a>(pairs: &'a [(String, String)], name: &str) -> Option<&'a str> {
    pairs.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str())
}

#[tokio::test]
async fn an_approved_consent_gives_a_code_that_its_verifier_exchanges_once_for_the_consenting_users_grant() {
    let consent = Consent::start().await;
    consent.sim.with_state(|state| state.signed_in = SimUser { id: 42, username: "bob".into() });
    let verifier = "v".repeat(20) + &"-._~0123456789".repeat(3);
    let fields = consent.authorize_fields(&s256(&verifier), REDIRECT);

    let page = consent.show(&fields).await;
    assert_eq!(page.status(), StatusCode::OK);
    let html = page.text().await.unwrap();
    assert!(html.contains("Authorize") && html.contains("Deny") && html.contains("@bob"), "{html}");
    assert!(html.contains("st&lt;ate&gt;&amp;1") && !html.contains("st<ate>"), "hidden fields are escaped: {html}");

    let redirect = consent.decide(&fields, "authorize").await;
    assert_eq!(pair(&redirect, "state"), Some("st<ate>&1"));
    let code = pair(&redirect, "code").expect("a code").to_owned();

    let (status, body) = consent.exchange(&code, Some(&"w".repeat(43))).await;
    assert_eq!((status, body["error"].as_str()), (StatusCode::BAD_REQUEST, Some("invalid_grant")), "a wrong verifier");
    let (status, body) = consent.exchange(&code, None).await;
    assert_eq!((status, body["error"].as_str()), (StatusCode::BAD_REQUEST, Some("invalid_grant")), "no verifier");
    let (status, grant) = consent.exchange(&code, Some(&verifier)).await;
    assert_eq!(status, StatusCode::OK, "{grant}");
    assert_eq!((grant["token_type"].as_str(), grant["scope"].as_str()), (Some("Bearer"), Some("api")));
    assert_eq!(grant["expires_in"], 7200);
    let (status, _) = consent.exchange(&code, Some(&verifier)).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "a code works once");

    let access_token = grant["access_token"].as_str().unwrap();
    let user: Value = consent
        .http
        .get(format!("{}/api/v4/user", consent.sim.url()))
        .bearer_auth(access_token)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!((user["id"].as_u64(), user["username"].as_str()), (Some(42), Some("bob")));
    let refresh_token = grant["refresh_token"].as_str().unwrap();
    let refreshed = consent.sim.with_state(|state| {
        state.refresh(&consent.client_id, Some(&consent.client_secret), refresh_token, chrono::Utc::now())
    });
    assert!(refreshed.is_ok(), "the grant refreshes like any other: {refreshed:?}");
    let unknown = consent.http.get(format!("{}/api/v4/user", consent.sim.url())).bearer_auth("nope").send().await;
    assert_eq!(unknown.unwrap().status(), StatusCode::UNAUTHORIZED);
}

#[tokio::test]
async fn deny_redirects_with_access_denied_and_bad_requests_get_an_error_page_not_a_redirect() {
    let consent = Consent::start().await;
    let fields = consent.authorize_fields(&s256(&"v".repeat(43)), REDIRECT);
    let denied = consent.decide(&fields, "deny").await;
    assert_eq!(pair(&denied, "error"), Some("access_denied"));
    assert_eq!(pair(&denied, "state"), Some("st<ate>&1"));
    assert_eq!(pair(&denied, "code"), None);

    let mut unknown_client = fields.clone();
    unknown_client[0].1 = "app-unknown".into();
    let elsewhere = consent.authorize_fields(&s256(&"v".repeat(43)), "https://attacker.example/callback");
    let mut plain = fields.clone();
    plain[6].1 = "plain".into();
    let mut token_flow = fields.clone();
    token_flow[2].1 = "token".into();
    for (bad, why) in [
        (unknown_client, "unknown client"),
        (elsewhere, "redirect uri"),
        (plain, "S256"),
        (token_flow, "response type"),
    ] {
        let page = consent.show(&bad).await;
        assert_eq!(page.status(), StatusCode::BAD_REQUEST, "{why}");
        assert!(page.headers().get("location").is_none(), "{why}: never redirected");
        let mut form = bad.clone();
        form.push(("decision", "authorize".to_owned()));
        let post = consent.http.post(format!("{}/oauth/authorize", consent.sim.url())).form(&form).send().await;
        assert_eq!(post.unwrap().status(), StatusCode::BAD_REQUEST, "{why}: no code either");
    }
    // Only the port may differ, and only on a loopback address (RFC 8252).
    let other_port = consent.authorize_fields(&s256(&"v".repeat(43)), "http://127.0.0.1:9999/oauth/callback");
    assert_eq!(consent.show(&other_port).await.status(), StatusCode::OK);
}
