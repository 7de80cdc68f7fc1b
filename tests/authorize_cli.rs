//! `tokenwarden token authorize` and the provider settings it uses (issue 12), as an operator
//! runs them: the redirect URI to register, the consent link, and clear refusals.

mod common;

use common::Sandbox;

fn query(url: &str) -> std::collections::HashMap<String, String> {
    reqwest::Url::parse(url).expect("a URL").query_pairs().into_owned().collect()
}

#[test]
fn provider_add_and_show_name_the_redirect_uri_to_register_under_the_public_url() {
    let sandbox = Sandbox::new();
    let (client_id, client_secret) = sandbox.gitlab.sim.create_application();
    let url = sandbox.gitlab_url();
    let add = ["provider", "add", "gitlab", "--kind", "gitlab", "--url", &url, "--client-id", &client_id];
    let public = ["--public-url", "https://tokens.example.com/tw/"];
    let args =
        [&add[..], &["--client-secret-stdin", "--scope", "read_api", "--scope", "read_user"], &public[..]].concat();
    let out = sandbox.run(&args, &format!("{client_secret}\n"));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(stderr.contains("https://tokens.example.com/tw/oauth/callback"), "{stderr}");
    let shown = sandbox.ok(&["provider", "show", "gitlab"], "");
    assert!(
        shown.contains("https://tokens.example.com/tw/oauth/callback") && shown.contains("read_api read_user"),
        "{shown}"
    );

    let link = sandbox.ok(&["token", "authorize", "alice", "--provider", "gitlab"], "");
    let params = query(link.trim());
    assert!(link.starts_with(&format!("{url}/oauth/authorize?")), "{link}");
    assert_eq!(params["redirect_uri"], "https://tokens.example.com/tw/oauth/callback", "the provider's registered URI");
    assert_eq!((params["scope"].as_str(), params["code_challenge_method"].as_str()), ("read_api read_user", "S256"));
    assert_eq!(params["client_id"], client_id);

    let json: serde_json::Value = serde_json::from_str(
        &sandbox.ok(&["token", "authorize", "alice", "--provider", "gitlab", "--scope", "api", "--json"], ""),
    )
    .expect("JSON");
    assert_eq!(json["token"], "alice");
    assert_eq!(query(json["url"].as_str().unwrap())["scope"], "api", "--scope overrides the provider's");
    assert!(json["expires_at"].is_string());
    assert!(sandbox.token_list().is_empty(), "a link stores no token until the user consents");
}

#[test]
fn token_authorize_refuses_what_cannot_work_with_one_line_and_stores_nothing() {
    let sandbox = Sandbox::new();
    sandbox.add_gitlab_oauth_provider();
    sandbox.add_project_token("pat");
    let (client_id, _) = sandbox.gitlab.sim.create_application();
    let token_url = format!("{}/oauth/token", sandbox.gitlab_url());
    let generic =
        ["provider", "add", "generic", "--kind", "oauth2", "--token-url", &token_url, "--client-id", &client_id];
    sandbox.ok(&[&generic[..], &["--client-auth", "none"]].concat(), "");

    let cases: [(&[&str], i32, &str); 6] = [
        (&["token", "authorize", "new"], 2, "give --provider"),
        (&["token", "authorize", "new", "--provider", "nope"], 2, "nope"),
        (&["token", "authorize", "pat"], 1, "gitlab-project-access-token"),
        (&["token", "authorize", "new", "--provider", "generic"], 1, "--authorize-url"),
        (&["token", "authorize", "new", "--provider", "gitlab", "--return-to", "ftp://x"], 2, "return_to"),
        (&["token", "authorize", "new", "--provider", "gitlab", "--public-url", "not a url"], 2, "public_url"),
    ];
    for (args, code, says) in cases {
        let stderr = sandbox.fails(args, "", code);
        assert!(stderr.contains(says), "{args:?}: {stderr}");
        assert_eq!(stderr.trim().lines().count(), 1, "{args:?}: one line: {stderr}");
    }

    let authorize_url = format!("{}/oauth/authorize", sandbox.gitlab_url());
    sandbox.ok(&["provider", "update", "generic", "--authorize-url", &authorize_url], "");
    let link = sandbox.ok(&["token", "authorize", "new", "--provider", "generic"], "");
    assert!(link.starts_with(&format!("{authorize_url}?")), "{link}");
    assert!(!query(link.trim()).contains_key("scope"), "no scope unless one is configured: {link}");
    let stderr = sandbox.fails(&["provider", "update", "gitlab", "--authorize-url", &authorize_url], "", 2);
    assert!(stderr.contains("{url}/oauth/authorize"), "{stderr}");
}
