//! `cargo bench --bench consent`: issue 12's two targets, measured on a SQLite store in a
//! temporary directory, against the in-repo GitLab simulator on loopback. It measures; it
//! asserts nothing.
//!
//! 1. A consent round trip: `POST /v1/authorizations`, the user's approval (a code issued at the
//!    simulator directly, so no browser time is counted), then `GET /oauth/callback` until the
//!    grant is stored. The provider's two calls (the code exchange and `GET /api/v4/user`) are
//!    timed on their own against the same simulator; tokenwarden's time is the round trip
//!    minus them (target ≤ 5 ms).
//! 2. The console's overview (`GET /ui`, signed in) with 10,000 tokens (target ≤ 50 ms).
//!
//! `TOKENWARDEN_BENCH_SMOKE=1` runs both at tiny sizes in a second or two.

use std::error::Error;
use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::{Days, Utc};
use reqwest::redirect::Policy;
use secrecy::ExposeSecret;
use tokenwarden::api::{AppState, ConsentSettings, router};
use tokenwarden::domain::ClientRole;
use tokenwarden::engine::{EngineSettings, SystemClock};
use tokenwarden::oauth::pkce::Pkce;
use tokenwarden::simulator::authorization::AuthorizeRequest;
use tokenwarden::simulator::harness::{EngineHarness, SeedToken};
use tokenwarden::store::clients::{self, NewClient};
use tokenwarden::store::ui_sessions;

#[path = "common/smoke.rs"]
mod smoke;

type BenchResult<T = ()> = Result<T, Box<dyn Error>>;

fn main() -> BenchResult {
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    runtime.block_on(async {
        round_trips(smoke::size(200, 5)).await?;
        overview(smoke::size(10_000, 120), smoke::size(30, 3)).await
    })
}

/// tokenwarden on loopback over a fresh store, with an operator.
struct Bench {
    harness: EngineHarness,
    url: String,
    http: reqwest::Client,
    operator: String,
    operator_id: String,
    _dir: tempfile::TempDir,
}

async fn start() -> BenchResult<Bench> {
    let dir = tempfile::tempdir()?;
    let harness = EngineHarness::start(dir.path(), Arc::new(SystemClock), EngineSettings::default()).await?;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let url = format!("http://{}", listener.local_addr()?);
    let redirect_uri = format!("{url}/oauth/callback");
    harness.sim.with_state(|state| state.register_redirect_uri(&harness.client_id, &redirect_uri));
    let new = NewClient { name: "ops".parse()?, role: ClientRole::Operator, grants: Vec::new(), webhook_url: None };
    let (cipher, now) = (harness.context.cipher.clone(), harness.now());
    let created =
        harness.context.store.run(move |conn| clients::insert(conn, &cipher, &new, None, "bench", now)).await?;
    let state = AppState {
        consent: ConsentSettings { public_url: url.clone(), redirect_uri, ..ConsentSettings::default() },
        ..AppState::new(harness.context.store.clone(), harness.context.clone())
    };
    tokio::spawn(async move { axum::serve(listener, router(state)).await });
    let _ = rustls::crypto::ring::default_provider().install_default();
    let http = reqwest::Client::builder().redirect(Policy::none()).build()?;
    let operator = created.api_key.expose().to_owned();
    Ok(Bench { harness, url, http, operator, operator_id: created.client.id, _dir: dir })
}

/// The simulator's consent, without a browser: the code the approval would send back.
fn approve(bench: &Bench, params: &std::collections::HashMap<String, String>) -> BenchResult<String> {
    let request = AuthorizeRequest {
        client_id: params["client_id"].clone(),
        redirect_uri: params["redirect_uri"].clone(),
        response_type: "code".into(),
        state: params.get("state").cloned(),
        scope: params.get("scope").cloned().unwrap_or_else(|| "api".into()),
        code_challenge: params.get("code_challenge").cloned(),
        code_challenge_method: params.get("code_challenge_method").cloned(),
    };
    let now = bench.harness.now();
    bench.harness.sim.with_state(|state| state.issue_code(&request, now)).map_err(|err| format!("{err:?}").into())
}

fn ms(duration: Duration) -> f64 {
    duration.as_secs_f64() * 1000.0
}

/// p50 / p95 / max of `values` (milliseconds).
fn spread(values: &mut [f64]) -> String {
    values.sort_by(f64::total_cmp);
    let at = |p: f64| values[((values.len() as f64 * p) as usize).min(values.len() - 1)];
    format!("p50 {:.2} ms, p95 {:.2} ms, max {:.2} ms", at(0.5), at(0.95), values[values.len() - 1])
}

async fn round_trips(count: usize) -> BenchResult {
    let bench = start().await?;
    let (mut link_ms, mut callback_ms, mut provider_ms, mut ours_ms) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for i in 0..count {
        let started = Instant::now();
        let answer = bench
            .http
            .post(format!("{}/v1/authorizations", bench.url))
            .bearer_auth(&bench.operator)
            .json(&serde_json::json!({"token": format!("user-{i:05}"), "provider": "gitlab"}))
            .send()
            .await?;
        let link: serde_json::Value = answer.json().await?;
        let linked = started.elapsed();
        let url = reqwest::Url::parse(link["url"].as_str().ok_or("no url")?)?;
        let params: std::collections::HashMap<String, String> = url.query_pairs().into_owned().collect();
        let code = approve(&bench, &params)?;

        let started = Instant::now();
        let callback_url = reqwest::Url::parse_with_params(
            &format!("{}/oauth/callback", bench.url),
            &[("code", code.as_str()), ("state", params["state"].as_str())],
        )?;
        let callback = bench.http.get(callback_url).send().await?;
        let status = callback.status();
        callback.bytes().await?;
        let called_back = started.elapsed();
        if !status.is_success() {
            return Err(format!("callback answered {status}").into());
        }

        // The same two provider calls, made directly.
        let pkce = Pkce::generate();
        let mut own = params.clone();
        own.insert("code_challenge".into(), pkce.challenge.clone());
        let code = approve(&bench, &own)?;
        let started = Instant::now();
        let grant: serde_json::Value = bench
            .http
            .post(format!("{}/oauth/token", bench.harness.sim.url()))
            .form(&[
                ("grant_type", "authorization_code"),
                ("code", code.as_str()),
                ("redirect_uri", params["redirect_uri"].as_str()),
                ("code_verifier", pkce.verifier.expose_secret()),
                ("client_id", bench.harness.client_id.as_str()),
                ("client_secret", &client_secret(&bench).await?),
            ])
            .send()
            .await?
            .json()
            .await?;
        let access = grant["access_token"].as_str().ok_or("no access token")?;
        bench
            .http
            .get(format!("{}/api/v4/user", bench.harness.sim.url()))
            .bearer_auth(access)
            .send()
            .await?
            .bytes()
            .await?;
        let provider = started.elapsed();

        link_ms.push(ms(linked));
        callback_ms.push(ms(called_back));
        provider_ms.push(ms(provider));
        ours_ms.push(ms(linked + called_back.saturating_sub(provider)));
    }
    println!("consent round trip, {count} grants (SQLite, simulator on loopback):");
    println!("  POST /v1/authorizations      {}", spread(&mut link_ms));
    println!("  GET /oauth/callback          {}", spread(&mut callback_ms));
    println!("  provider's two calls alone   {}", spread(&mut provider_ms));
    println!("  tokenwarden's time           {}   (target <= 5 ms)", spread(&mut ours_ms));
    Ok(())
}

/// The OAuth application's secret, as the harness registered it.
async fn client_secret(bench: &Bench) -> BenchResult<String> {
    let (cipher, name) = (bench.harness.context.cipher.clone(), "gitlab".parse()?);
    let row = bench.harness.context.store.run(move |conn| tokenwarden::store::providers::find_row(conn, &name)).await?;
    let sealed = row.client_secret.ok_or("no client secret")?;
    let opened = cipher.open(tokenwarden::store::providers::client_secret_context(&row.id), &sealed)?;
    Ok(opened.expose_secret().to_owned())
}

async fn overview(tokens: usize, requests: usize) -> BenchResult {
    let bench = start().await?;
    let later = Utc::now() + Days::new(20);
    let seeds = (0..tokens).map(|i| SeedToken { name: format!("t{i:05}"), next_rotation_at: later }).collect();
    bench.harness.track_access_tokens_bulk(seeds, (Utc::now() + Days::new(30)).date_naive(), false).await?;
    let (client_id, now) = (bench.operator_id.clone(), bench.harness.now());
    let session = bench.harness.context.store.run(move |conn| ui_sessions::start(conn, &client_id, now)).await?;
    let cookie = format!("tokenwarden_session={}", session.id.expose_secret());
    let mut first = Vec::new();
    let mut later_page = Vec::new();
    let mut bytes = 0;
    for (path, into) in [("/ui", &mut first), ("/ui?after=t05000", &mut later_page)] {
        for _ in 0..requests {
            let started = Instant::now();
            let answer = bench.http.get(format!("{}{path}", bench.url)).header("cookie", &cookie).send().await?;
            let status = answer.status();
            let body = answer.bytes().await?;
            into.push(ms(started.elapsed()));
            if !status.is_success() || !body.starts_with(b"<!DOCTYPE html>") {
                return Err(format!("{path} answered {status}").into());
            }
            bytes = body.len();
        }
    }
    println!("console overview, {tokens} tokens, {requests} requests each:");
    println!("  GET /ui                      {}   (target <= 50 ms; page of {bytes} bytes)", spread(&mut first));
    println!("  GET /ui?after=…              {}", spread(&mut later_page));
    Ok(())
}
