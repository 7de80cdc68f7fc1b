//! Changing what was set up, from the command line: grants refer to existing tokens by
//! identity, `token remove` names the clients it would cut off, `client update` and
//! `token update` change a client's grants and webhook and a token's policy in place.

mod common;

use common::Sandbox;

fn client_grants(sandbox: &Sandbox, name: &str) -> serde_json::Value {
    let list: serde_json::Value = serde_json::from_str(&sandbox.ok(&["client", "list", "--json"], "")).unwrap();
    let client = list.as_array().unwrap().iter().find(|c| c["name"] == name).expect("client listed");
    client["grants"].clone()
}

#[test]
fn a_grant_of_a_token_that_does_not_exist_is_refused_with_one_line_and_nothing_is_stored() {
    let sandbox = Sandbox::new();
    sandbox.add_gitlab_provider();
    sandbox.add_project_token("ci");
    let stderr =
        sandbox.fails(&["client", "add", "dbt", "--role", "reader", "--grant", "ci", "--grant", "nope"], "", 2);
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(stderr.contains("cannot grant 'nope': no token has that name"), "{stderr}");
    assert_eq!(sandbox.ok(&["client", "list", "--json"], "").trim(), "[]");
}

#[test]
fn removing_a_granted_token_names_its_readers_and_needs_yes_and_a_new_token_of_that_name_is_not_granted() {
    let sandbox = Sandbox::new();
    sandbox.add_gitlab_provider();
    sandbox.add_project_token("ci");
    sandbox.ok(&["client", "add", "dbt", "--role", "reader", "--grant", "ci"], "");
    sandbox.ok(&["client", "add", "bi", "--role", "reader", "--grant", "ci"], "");

    let stderr = sandbox.fails(&["token", "remove", "ci"], "", 2);
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(stderr.contains("granted to client(s) bi, dbt") && stderr.contains("--yes"), "{stderr}");
    assert_eq!(sandbox.token_show("ci")["version"], 1, "nothing removed");
    assert_eq!(client_grants(&sandbox, "dbt"), serde_json::json!(["ci"]));

    let stderr = sandbox.fails(&["token", "remove", "ci", "--yes"], "", 0);
    assert!(stderr.contains("removed token 'ci' and the grants of client(s) bi, dbt"), "{stderr}");
    sandbox.add_project_token("ci");
    assert_eq!(client_grants(&sandbox, "dbt"), serde_json::json!([]), "the new 'ci' is another credential");
    sandbox.ok(&["token", "remove", "ci"], "");
}
