//! `provider add --client-auth/--issuer`, `provider show` and `provider update` end to end:
//! defaults per kind, discovery refusing bad metadata with nothing stored, and a client secret
//! rotated at the provider fixed by `provider update`, which retries the refused token at once.

mod common;

use std::io::{Read, Write};
use std::net::TcpListener;

use common::Sandbox;

/// `provider show NAME --json`, parsed.
fn provider_json(sandbox: &Sandbox, name: &str) -> serde_json::Value {
    serde_json::from_str(&sandbox.ok(&["provider", "show", name, "--json"], "")).unwrap()
}

/// The actions the audit log recorded, oldest first.
fn audit_actions(sandbox: &Sandbox) -> Vec<String> {
    let entries: Vec<serde_json::Value> = serde_json::from_str(&sandbox.ok(&["audit", "--json"], "")).unwrap();
    let mut actions: Vec<String> = entries
        .iter()
        .map(|e| format!("{} {}", e["action"].as_str().unwrap(), e["detail"].as_str().unwrap_or("")))
        .collect();
    actions.sort();
    actions
}

/// Asserts a refusal: exit 2, exactly one line on standard error, containing `expected`.
fn refused(sandbox: &Sandbox, args: &[&str], stdin: &str, expected: &str) {
    let stderr = sandbox.fails(args, stdin, 2);
    assert_eq!(stderr.trim_end().lines().count(), 1, "{args:?}: {stderr}");
    assert!(stderr.contains(expected), "{args:?}: expected '{expected}' in {stderr}");
}

/// A server on loopback that answers every request with `status` and the body `body` makes
/// from the server's own URL, on a thread; returns that URL.
fn answering(status: u16, content_type: &'static str, body: impl Fn(&str) -> String + Send + 'static) -> String {
    answering_by_path(move |url, _| (status, content_type, body(url)))
}

/// A server on loopback whose answer to each request is `answer(its own URL, request path)`:
/// a status, a content type and a body; returns that URL.
fn answering_by_path(answer: impl Fn(&str, &str) -> (u16, &'static str, String) + Send + 'static) -> String {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let own_url = url.clone();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { continue };
            let mut request = [0u8; 4096];
            let read = stream.read(&mut request).unwrap_or(0);
            let request = String::from_utf8_lossy(&request[..read]);
            let path = request.split_whitespace().nth(1).unwrap_or("/");
            let (status, content_type, body) = answer(&own_url, path);
            let head = format!(
                "HTTP/1.1 {status} X\r\ncontent-type: {content_type}\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
                body.len()
            );
            let _ = stream.write_all(head.as_bytes());
            let _ = stream.write_all(body.as_bytes());
        }
    });
    url
}

#[test]
fn client_auth_defaults_to_basic_for_oauth2_and_post_for_gitlab_and_can_be_chosen() {
    let sandbox = Sandbox::new();
    sandbox.add_gitlab_oauth_provider();
    assert_eq!(provider_json(&sandbox, "gitlab")["client_auth"], "post");
    let token_url = format!("{}/oauth/token", sandbox.gitlab_url());
    let oauth2 = ["provider", "add", "op", "--kind", "oauth2", "--token-url", &token_url, "--client-id", "app"];
    sandbox.ok(&[&oauth2[..], &["--client-secret-stdin"]].concat(), "secret\n");
    assert_eq!(provider_json(&sandbox, "op")["client_auth"], "basic");
    let public = ["provider", "add", "pub", "--kind", "oauth2", "--token-url", &token_url, "--client-id", "app"];
    sandbox.ok(&[&public[..], &["--client-auth", "none"]].concat(), "");
    let shown = provider_json(&sandbox, "pub");
    assert_eq!((shown["client_auth"].as_str(), shown["has_client_secret"].as_bool()), (Some("none"), Some(false)));
    let text = sandbox.ok(&["provider", "show", "op"], "");
    assert!(text.contains("client auth") && text.contains("basic") && text.contains(&token_url), "{text}");
    assert!(!text.contains("secret\n"), "{text}");

    refused(&sandbox, &[&oauth2[..], &["--client-auth", "magic", "--client-secret-stdin"]].concat(), "s\n", "magic");
    refused(&sandbox, &["provider", "show", "nope"], "", "no provider named 'nope'");
}

#[test]
fn discovery_refuses_an_issuer_that_does_not_answer_or_answers_wrong_and_stores_nothing() {
    let sandbox = Sandbox::new();
    let closed = TcpListener::bind("127.0.0.1:0").unwrap();
    let silent = format!("http://{}", closed.local_addr().unwrap());
    drop(closed);
    let html = answering(200, "text/html", |_| "<html><body>Sign in</body></html>".into());
    let missing = answering(404, "text/html", |_| "not here".into());
    let other = answering(200, "application/json", |_| {
        r#"{"issuer":"https://elsewhere.example","token_endpoint":"https://elsewhere.example/token"}"#.into()
    });
    let no_token_endpoint = answering(200, "application/json", |url| format!(r#"{{"issuer":"{url}"}}"#));
    let args = ["provider", "add", "op", "--kind", "oauth2", "--issuer", &silent, "--client-id", "app"];
    let stderr = sandbox.fails(&[&args[..], &["--client-secret-stdin"]].concat(), "secret\n", 1);
    assert!(stderr.contains("did not answer discovery"), "unreachable: a failure worth retrying, exit 1: {stderr}");
    let cases = [
        (missing.as_str(), "did not answer discovery"),
        (html.as_str(), "is not JSON metadata"),
        (other.as_str(), "names the issuer 'https://elsewhere.example'"),
        (no_token_endpoint.as_str(), "no usable token_endpoint"),
    ];
    for (issuer, expected) in cases {
        let args = ["provider", "add", "op", "--kind", "oauth2", "--issuer", issuer, "--client-id", "app"];
        refused(&sandbox, &[&args[..], &["--client-secret-stdin"]].concat(), "secret\n", expected);
    }
    refused(
        &sandbox,
        &["provider", "add", "g", "--kind", "gitlab", "--url", "https://g.example", "--issuer", "https://g.example"],
        "",
        "--issuer",
    );
    assert!(!sandbox.db_path().exists(), "nothing was stored, not even an empty store");
}

#[test]
fn discovery_falls_back_to_openid_configuration_when_the_rfc8414_document_is_unusable() {
    let sandbox = Sandbox::new();
    let issuer = answering_by_path(|url, path| match path {
        "/.well-known/oauth-authorization-server" => (200, "text/html", "<html>portal</html>".into()),
        "/.well-known/openid-configuration" => {
            (200, "application/json", format!(r#"{{"issuer":"{url}","token_endpoint":"{url}/oidc/token"}}"#))
        }
        _ => (404, "text/plain", "no".into()),
    });
    let args = ["provider", "add", "op", "--kind", "oauth2", "--issuer", &issuer, "--client-id", "app"];
    sandbox.ok(&[&args[..], &["--client-secret-stdin"]].concat(), "secret\n");
    assert_eq!(provider_json(&sandbox, "op")["token_url"], format!("{issuer}/oidc/token"));
}

/// Adds a grant issued by the simulator for its first application (refreshed once by `token add`).
fn add_oauth_grant(sandbox: &Sandbox, name: &str) -> String {
    let client_id = sandbox.gitlab.sim.with_state(|state| state.application_ids().remove(0));
    let refresh_token = sandbox.gitlab.sim.create_grant(&client_id);
    let args = ["token", "add", name, "--provider", "gitlab", "--kind", "gitlab-oauth", "--refresh-token-stdin"];
    sandbox.ok(&args, &format!("{refresh_token}\n"));
    client_id
}

#[test]
fn a_rotated_client_secret_needs_attention_until_provider_update_which_retries_the_token_at_once() {
    let sandbox = Sandbox::new();
    sandbox.add_gitlab_oauth_provider();
    let client_id = add_oauth_grant(&sandbox, "grant");
    let new_secret = sandbox.gitlab.sim.with_state(|s| s.rotate_application_secret(&client_id)).unwrap();

    let stderr = sandbox.fails(&["token", "rotate", "grant"], "", 1);
    assert!(stderr.contains("client_credentials_rejected") && stderr.contains("--client-auth post"), "{stderr}");
    let token = sandbox.token_show("grant");
    assert_eq!(token["state"], "needs_attention");
    assert_eq!(token["attention_reason"], "client_credentials_rejected");
    assert_eq!(token["remedy"], "update_provider");
    let text = sandbox.ok(&["token", "show", "grant"], "");
    assert!(text.contains("remedy") && text.contains("update_provider"), "{text}");
    let stderr = sandbox.fails(&["token", "rotate", "grant"], "", 1);
    assert!(stderr.contains("provider update gitlab --client-secret-stdin"), "{stderr}");
    let version = token["version"].as_i64().unwrap();

    // Bad input changes nothing.
    let before = audit_actions(&sandbox);
    refused(
        &sandbox,
        &["provider", "update", "nope", "--client-secret-stdin"],
        &format!("{new_secret}\n"),
        "no provider named 'nope'",
    );
    refused(
        &sandbox,
        &["provider", "update", "gitlab", "--client-secret-stdin"],
        "",
        "no OAuth client secret on standard input",
    );
    refused(&sandbox, &["provider", "update", "gitlab"], "", "nothing to change");
    refused(&sandbox, &["provider", "update", "gitlab", "--token-url", "https://x.example/token"], "", "takes --url");
    refused(&sandbox, &["provider", "update", "gitlab", "--client-auth", "sometimes"], "", "sometimes");
    assert_eq!(audit_actions(&sandbox), before);
    assert_eq!(sandbox.token_show("grant")["state"], "needs_attention");

    let out =
        sandbox.run(&["provider", "update", "gitlab", "--client-secret-stdin", "--json"], &format!("{new_secret}\n"));
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let printed: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(printed["provider"]["name"], "gitlab");
    assert_eq!(printed["retried"][0]["token"], "grant");
    assert_eq!(printed["retried"][0]["outcome"], format!("rotated to version {}", version + 1));
    assert!(!String::from_utf8_lossy(&out.stdout).contains(&new_secret));
    let token = sandbox.token_show("grant");
    assert_eq!((token["state"].as_str(), token["version"].as_i64()), (Some("active"), Some(version + 1)), "{token}");
    assert!(token.get("remedy").is_none(), "{token}");
    let after = audit_actions(&sandbox);
    assert!(after.iter().any(|a| a == "provider.update changed=client_secret"), "{after:?}");
    assert!(after.iter().any(|a| a == "token.retry client_credentials_rejected"), "{after:?}");
}

#[test]
fn provider_update_changes_only_what_is_given() {
    let sandbox = Sandbox::new();
    sandbox.add_gitlab_oauth_provider();
    let before = provider_json(&sandbox, "gitlab");
    sandbox.ok(
        &["provider", "update", "gitlab", "--redirect-uri", "https://app.example/cb", "--client-auth", "basic"],
        "",
    );
    let after = provider_json(&sandbox, "gitlab");
    assert_eq!(after["redirect_uri"], "https://app.example/cb");
    assert_eq!(after["client_auth"], "basic");
    assert_eq!((&after["url"], &after["client_id"]), (&before["url"], &before["client_id"]));
    assert_eq!(after["has_client_secret"], true);
}

#[test]
fn discovery_picks_the_client_auth_the_server_lists_unless_one_is_given() {
    let sandbox = Sandbox::new();
    let metadata = |methods: &'static str| {
        answering(200, "application/json", move |url| {
            format!(
                r#"{{"issuer":"{url}","token_endpoint":"{url}/token","authorization_endpoint":"{url}/authorize","token_endpoint_auth_methods_supported":{methods}}}"#
            )
        })
    };
    let add = |name: &str, issuer: &str, extra: &[&str]| {
        let args = ["provider", "add", name, "--kind", "oauth2", "--issuer", issuer, "--client-id", "app"];
        sandbox.run(&[&args[..], extra, &["--client-secret-stdin"]].concat(), "secret\n")
    };
    let post_only = metadata(r#"["client_secret_post"]"#);
    assert!(add("post-only", &post_only, &[]).status.success());
    let shown = provider_json(&sandbox, "post-only");
    assert_eq!(shown["client_auth"], "post");
    assert_eq!(shown["token_url"], format!("{post_only}/token"));
    assert_eq!(shown["authorization_url"], format!("{post_only}/authorize"));
    assert!(shown["revocation_url"].is_null());
    assert!(add("chosen", &post_only, &["--client-auth", "basic"]).status.success());
    assert_eq!(provider_json(&sandbox, "chosen")["client_auth"], "basic");
    let both = metadata(r#"["client_secret_post","client_secret_basic"]"#);
    assert!(add("both", &both, &[]).status.success());
    assert_eq!(provider_json(&sandbox, "both")["client_auth"], "basic");

    let jwt_only = metadata(r#"["private_key_jwt"]"#);
    let out = add("jwt", &jwt_only, &[]);
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("private_key_jwt") && stderr.trim_end().lines().count() == 1, "{stderr}");
    refused(&sandbox, &["provider", "show", "jwt"], "", "no provider named 'jwt'");
    assert!(
        add("jwt", &jwt_only, &["--client-auth", "post"]).status.success(),
        "an explicit choice is not second-guessed"
    );
    assert_eq!(provider_json(&sandbox, "jwt")["client_auth"], "post");
}

#[test]
fn an_oauth2_provider_discovered_from_the_simulator_refreshes_a_grant_with_basic() {
    let sandbox = Sandbox::new();
    sandbox.gitlab.sim.with_state(|s| s.require_basic_auth = true);
    let (client_id, client_secret) = sandbox.gitlab.sim.create_application();
    let issuer = sandbox.gitlab_url();
    let add = ["provider", "add", "sim", "--kind", "oauth2", "--issuer", &issuer, "--client-id", &client_id];
    sandbox.ok(&[&add[..], &["--client-secret-stdin"]].concat(), &format!("{client_secret}\n"));
    let shown = provider_json(&sandbox, "sim");
    assert_eq!(shown["client_auth"], "basic");
    assert_eq!(shown["token_url"], format!("{issuer}/oauth/token"));
    assert_eq!(shown["revocation_url"], format!("{issuer}/oauth/revoke"));

    let refresh_token = sandbox.gitlab.sim.create_grant(&client_id);
    let args = ["token", "add", "grant", "--provider", "sim", "--kind", "oauth2", "--refresh-token-stdin"];
    sandbox.ok(&args, &format!("{refresh_token}\n"));
    let token = sandbox.token_show("grant");
    assert_eq!((token["state"].as_str(), token["version"].as_i64()), (Some("active"), Some(2)), "{token}");
    assert_eq!(token["refresh_token_rotates"], true);
}
