//! The README's section on the GitLab simulator cannot drift from the simulator: every `curl`
//! in its example is sent to a running simulator and must succeed, every fault kind its table
//! shows is accepted, and every counter it names is in `GET /-/sim/stats`.

mod common;

use std::sync::Arc;

use common::markdown::{section, shell_lines, words};
use tokenwarden::engine::SystemClock;
use tokenwarden::simulator::Simulator;

/// The README's section on the simulator.
fn simulator_section() -> String {
    let readme = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md")).expect("README.md");
    section(&readme, "## The GitLab simulator").expect("the README has a section on the simulator")
}

/// One request of the example: method, path and body.
#[derive(Debug)]
struct Request {
    method: String,
    path: String,
    body: Option<String>,
}

/// The `curl` requests of the section's examples, with `$sim` as the simulator's address.
fn curl_requests(text: &str) -> Vec<Request> {
    let mut requests = Vec::new();
    for (_, line) in shell_lines(text) {
        let words = words(&line);
        if words.first().map(String::as_str) != Some("curl") {
            continue;
        }
        let (mut method, mut path, mut body) = (None, None, None);
        let mut rest = words.iter().skip(1);
        while let Some(word) = rest.next() {
            match word.as_str() {
                "-X" | "--request" => method = rest.next().cloned(),
                "-d" | "--data" => body = rest.next().cloned(),
                "-H" | "--header" => {
                    rest.next();
                }
                url if url.starts_with("$sim/") => path = Some(url.trim_start_matches("$sim").to_owned()),
                _ => {}
            }
        }
        let method = method.unwrap_or_else(|| if body.is_some() { "POST" } else { "GET" }.to_owned());
        requests.push(Request { method, path: path.expect("a curl to $sim/…"), body });
    }
    requests
}

/// The JSON objects in backticks on the table row of `endpoint` that start with `prefix`.
fn table_snippets(text: &str, endpoint: &str, prefix: &str) -> Vec<String> {
    let row = text.lines().find(|line| line.starts_with(&format!("| `{endpoint}`"))).expect("the table row");
    row.split('`').skip(1).step_by(2).filter(|snippet| snippet.starts_with(prefix)).map(str::to_owned).collect()
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build().expect("runtime")
}

#[test]
fn every_simulator_request_in_the_readme_is_accepted_as_documented() {
    let text = simulator_section();
    let requests = curl_requests(&text);
    assert!(requests.len() >= 7, "the example shows every control endpoint: {requests:?}");
    runtime().block_on(async {
        let sim = Simulator::start(Arc::new(SystemClock)).await.expect("start the simulator");
        let http = tokenwarden::providers::build_http_client(Default::default()).expect("client");
        let mut client_id = None;
        for request in &requests {
            let body = request.body.as_ref().map(|body| match body.contains("app-…") {
                true => {
                    body.replace("app-…", client_id.as_deref().expect("an application is created before its grant"))
                }
                false => body.clone(),
            });
            let url = format!("{}{}", sim.url(), request.path);
            let mut call = http.request(request.method.parse().expect("method"), &url);
            if let Some(body) = body {
                call = call.header("content-type", "application/json").body(body);
            }
            let response = call.send().await.expect("send");
            let status = response.status();
            let answer = response.text().await.unwrap_or_default();
            assert!(status.is_success(), "{request:?} answered {status}: {answer}");
            let json: serde_json::Value = serde_json::from_str(&answer).unwrap_or_default();
            match request.path.as_str() {
                "/-/sim/access_tokens" => assert!(json["token"].is_string() && json["id"].is_number(), "{answer}"),
                "/-/sim/applications" => {
                    assert!(json["client_secret"].is_string(), "{answer}");
                    client_id = json["client_id"].as_str().map(str::to_owned);
                }
                "/-/sim/grants" => assert!(json["refresh_token"].is_string(), "{answer}"),
                "/-/sim/stats" => {
                    let row = table_snippets(&text, "GET /-/sim/stats", "");
                    let named: Vec<&String> = row.iter().filter(|name| !name.contains(' ')).collect();
                    assert!(named.len() >= 10, "the table names the counters: {named:?}");
                    for counter in named {
                        assert!(json[counter.as_str()].is_number(), "stats have no '{counter}': {answer}");
                    }
                }
                _ => {}
            }
        }
    });
}

#[test]
fn every_fault_and_rate_shown_in_the_readme_table_is_accepted() {
    let text = simulator_section();
    let faults = table_snippets(&text, "POST /-/sim/faults", "{\"kind\"");
    assert!(faults.len() >= 5, "the table shows every other fault kind: {faults:?}");
    let scripted = table_snippets(&text, "POST /-/sim/faults", "{\"target\"");
    let rates = table_snippets(&text, "PUT /-/sim/faults", "{");
    let settings = table_snippets(&text, "PUT /-/sim/settings", "{");
    assert!(!scripted.is_empty() && !rates.is_empty() && !settings.is_empty());
    let mut bodies: Vec<(&str, String)> =
        faults.iter().map(|fault| ("POST", format!(r#"{{"target": "lookup", "fault": {fault}}}"#))).collect();
    bodies.extend(scripted.into_iter().map(|body| ("POST", body)));
    runtime().block_on(async {
        let sim = Simulator::start(Arc::new(SystemClock)).await.expect("start the simulator");
        let http = tokenwarden::providers::build_http_client(Default::default()).expect("client");
        let send = |method: &str, path: &str, body: String| {
            let call = http.request(method.parse().unwrap(), format!("{}{path}", sim.url()));
            call.header("content-type", "application/json").body(body).send()
        };
        for (method, body) in bodies {
            let status = send(method, "/-/sim/faults", body.clone()).await.expect("send").status();
            assert!(status.is_success(), "POST /-/sim/faults {body}: {status}");
        }
        for body in rates {
            let status = send("PUT", "/-/sim/faults", body.clone()).await.expect("send").status();
            assert!(status.is_success(), "PUT /-/sim/faults {body}: {status}");
        }
        for body in settings {
            let status = send("PUT", "/-/sim/settings", body.clone()).await.expect("send").status();
            assert!(status.is_success(), "PUT /-/sim/settings {body}: {status}");
        }
        let status = send("PUT", "/-/sim/settings", r#"{"expires_in": 1, "typo": 2}"#.into()).await.unwrap().status();
        assert_eq!(status.as_u16(), 422, "unknown fields are refused with 422, as the README says");
    });
}
