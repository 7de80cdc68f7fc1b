//! The simulator's token administration endpoints over HTTP (issue 13, point 6): what a
//! managing credential calls to create, list and revoke project access tokens and deploy
//! tokens, with GitLab's role checks and secrets shown only in the create answer.

use std::sync::Arc;

use chrono::{Days, Utc};
use reqwest::StatusCode;
use serde_json::Value;
use tokenwarden::engine::SystemClock;
use tokenwarden::simulator::variables::{MAINTAINER, Namespace};
use tokenwarden::simulator::{Simulator, TokenOwner};

async fn call(request: reqwest::RequestBuilder) -> (StatusCode, Value) {
    let response = request.send().await.unwrap();
    let status = response.status();
    let text = response.text().await.unwrap();
    (status, serde_json::from_str(&text).unwrap_or(Value::Null))
}

#[tokio::test]
async fn a_maintainers_token_creates_lists_and_revokes_project_and_deploy_tokens() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let sim = Simulator::start(Arc::new(SystemClock)).await.unwrap();
    let expires = Utc::now().date_naive() + Days::new(60);
    let (_, manager) = sim.create_access_token(TokenOwner::Personal, &["api"], expires);
    sim.with_state(|state| state.memberships.insert(Namespace::Project("42".into()), MAINTAINER));
    let http = reqwest::Client::new();
    let base = format!("{}/api/v4/projects/42", sim.url());
    let expiry = (Utc::now().date_naive() + Days::new(30)).format("%Y-%m-%d").to_string();

    let form = [("name", "tokenwarden: ci"), ("scopes[]", "api"), ("access_level", "30"), ("expires_at", &expiry)];
    let (status, created) = call(http.post(format!("{base}/access_tokens")).bearer_auth(&manager).form(&form)).await;
    assert_eq!(status, StatusCode::CREATED, "{created}");
    let secret = created["token"].as_str().unwrap().to_owned();
    assert!(sim.accepts(&secret));
    assert_eq!(created["access_level"], 30);
    let list = http.get(format!("{base}/access_tokens?state=active&search=ci")).bearer_auth(&manager);
    let (status, listed) = call(list).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(listed.as_array().unwrap().len(), 1);
    assert!(!listed.to_string().contains(&secret), "listings never show a secret");
    let id = created["id"].as_u64().unwrap();
    let (status, _) = call(http.delete(format!("{base}/access_tokens/{id}")).bearer_auth(&manager)).await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    assert!(!sim.accepts(&secret), "revoked");

    let form = [("name", "deploy"), ("scopes[]", "read_repository"), ("username", "deployer")];
    let (status, deploy) = call(http.post(format!("{base}/deploy_tokens")).bearer_auth(&manager).form(&form)).await;
    assert_eq!((status, deploy["username"].as_str()), (StatusCode::CREATED, Some("deployer")), "{deploy}");
    let deploy_secret = deploy["token"].as_str().unwrap().to_owned();
    let (_, listed) = call(http.get(format!("{base}/deploy_tokens")).bearer_auth(&manager)).await;
    assert!(!listed.to_string().contains(&deploy_secret) && listed.as_array().unwrap().len() == 1);
    let id = deploy["id"].as_u64().unwrap();
    let (status, _) = call(http.delete(format!("{base}/deploy_tokens/{id}")).bearer_auth(&manager)).await;
    assert_eq!(status, StatusCode::NO_CONTENT);

    sim.with_state(|state| state.memberships.insert(Namespace::Project("42".into()), 30));
    let form = [("name", "x"), ("scopes[]", "api"), ("expires_at", &expiry)];
    let (status, refused) = call(http.post(format!("{base}/access_tokens")).bearer_auth(&manager).form(&form)).await;
    assert_eq!((status, refused["message"].as_str()), (StatusCode::FORBIDDEN, Some("403 Forbidden")), "a Developer");
    let (status, _) =
        call(http.get(format!("{}/api/v4/groups/none/deploy_tokens", sim.url())).bearer_auth(&manager)).await;
    assert_eq!(status, StatusCode::NOT_FOUND, "a group the user cannot see");
}
