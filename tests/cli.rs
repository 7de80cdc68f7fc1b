//! The operator CLI end to end, in a throwaway directory per test.

mod common;

use std::os::unix::fs::PermissionsExt;

use common::Sandbox;
use tokenwarden::simulator::TokenOwner;

#[test]
fn operator_walkthrough_add_list_show_pause_resume_remove() {
    let sandbox = Sandbox::new();
    sandbox.add_gitlab_provider();
    let secret = sandbox.gitlab.token(TokenOwner::Project("42".into()));
    sandbox.ok(
        &[
            "token",
            "add",
            "dbt-ci",
            "--provider",
            "gitlab",
            "--kind",
            "gitlab-project-access-token",
            "--project",
            "42",
            "--secret-stdin",
            "--lifetime",
            "90d",
            "--rotate-before",
            "10d",
        ],
        &format!("{secret}\n"),
    );

    let list = sandbox.token_list();
    assert_eq!(list.len(), 1);
    let token = &list[0];
    assert_eq!(token["name"], "dbt-ci");
    assert_eq!(token["provider"], "gitlab");
    assert_eq!(token["kind"], "gitlab-project-access-token");
    assert_eq!(token["project"], "42");
    assert_eq!(token["state"], "active");
    assert_eq!(token["version"], 1);
    assert_eq!(token["policy"]["lifetime"], "90d");
    assert_eq!(token["policy"]["rotate_before"], "10d");
    assert_eq!(token["policy"]["rotate_at_fraction"], 0.67);
    assert!(!serde_json::to_string(&list).unwrap().contains(&secret));

    let text = sandbox.ok(&["token", "show", "dbt-ci"], "");
    assert!(text.contains("gitlab-project-access-token") && text.contains("90d"), "{text}");
    assert!(!text.contains(&secret));

    sandbox.ok(&["token", "pause", "dbt-ci"], "");
    assert_eq!(sandbox.token_show("dbt-ci")["state"], "paused");
    sandbox.ok(&["token", "resume", "dbt-ci"], "");
    assert_eq!(sandbox.token_show("dbt-ci")["state"], "active");

    let history: serde_json::Value =
        serde_json::from_str(&sandbox.ok(&["token", "history", "dbt-ci", "--json"], "")).unwrap();
    assert_eq!(history[0]["version"], 1);
    assert_eq!(history[0]["actor"], "cli");

    sandbox.ok(&["token", "remove", "dbt-ci"], "");
    assert!(sandbox.token_list().is_empty());
    let stderr = sandbox.fails(&["token", "show", "dbt-ci"], "", 2);
    assert!(stderr.contains("no token named 'dbt-ci'"), "{stderr}");
}

#[test]
fn list_text_output_has_a_header_and_a_row_per_token() {
    let sandbox = Sandbox::new();
    sandbox.add_gitlab_provider();
    sandbox.add_project_token("one");
    sandbox.add_project_token("two");
    let text = sandbox.ok(&["token", "list"], "");
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 3, "{text}");
    assert!(lines[0].starts_with("NAME"));
    assert!(lines[1].starts_with("one") && lines[2].starts_with("two"));
}

#[test]
fn duplicate_token_name_is_refused_and_keeps_the_original() {
    let sandbox = Sandbox::new();
    sandbox.add_gitlab_provider();
    sandbox.add_project_token("dup");
    let stderr = sandbox.fails(
        &["token", "add", "dup", "--provider", "gitlab", "--kind", "gitlab-personal-access-token", "--secret-stdin"],
        "glpat-second\n",
        2,
    );
    assert!(stderr.contains("a token named 'dup' already exists"), "{stderr}");
    let list = sandbox.token_list();
    assert_eq!(list.len(), 1);
    assert_eq!(list[0]["kind"], "gitlab-project-access-token");
}

#[test]
fn duplicate_provider_name_is_refused() {
    let sandbox = Sandbox::new();
    sandbox.add_gitlab_provider();
    let stderr =
        sandbox.fails(&["provider", "add", "gitlab", "--kind", "gitlab", "--url", "https://other.example"], "", 2);
    assert!(stderr.contains("a provider named 'gitlab' already exists"), "{stderr}");
}

#[test]
fn unknown_provider_is_refused_and_nothing_is_written() {
    let sandbox = Sandbox::new();
    let stderr = sandbox.fails(
        &["token", "add", "t", "--provider", "nope", "--kind", "gitlab-personal-access-token", "--secret-stdin"],
        "glpat-x\n",
        2,
    );
    assert!(stderr.contains("no provider named 'nope'"), "{stderr}");
    assert!(sandbox.token_list().is_empty());
}

#[test]
fn empty_standard_input_is_refused_and_nothing_is_written() {
    let sandbox = Sandbox::new();
    sandbox.add_gitlab_provider();
    for stdin in ["", "\n", "   \n"] {
        let stderr = sandbox.fails(
            &["token", "add", "t", "--provider", "gitlab", "--kind", "gitlab-personal-access-token", "--secret-stdin"],
            stdin,
            2,
        );
        assert!(stderr.contains("no access token on standard input"), "{stderr}");
    }
    assert!(sandbox.token_list().is_empty());
}

#[test]
fn several_lines_on_standard_input_are_refused() {
    let sandbox = Sandbox::new();
    sandbox.add_gitlab_provider();
    let stderr = sandbox.fails(
        &["token", "add", "t", "--provider", "gitlab", "--kind", "gitlab-personal-access-token", "--secret-stdin"],
        "glpat-a\nglpat-b\n",
        2,
    );
    assert!(stderr.contains("more than one line"), "{stderr}");
    assert!(sandbox.token_list().is_empty());
}

#[test]
fn a_secret_cannot_be_passed_as_an_argument() {
    let sandbox = Sandbox::new();
    sandbox.add_gitlab_provider();
    for flag in ["--secret", "--token", "--refresh-token", "--client-secret"] {
        let stderr = sandbox.fails(
            &["token", "add", "t", "--provider", "gitlab", "--kind", "gitlab-personal-access-token", flag, "glpat-x"],
            "",
            2,
        );
        assert!(stderr.contains("unexpected argument"), "{flag}: {stderr}");
    }
    assert!(sandbox.token_list().is_empty());
}

#[test]
fn unwritable_database_path_fails_cleanly_and_creates_nothing() {
    let sandbox = Sandbox::new();
    // Paths no user can create, root included: below a regular file, and in a missing directory.
    let not_a_directory = sandbox.path().join("plain-file");
    std::fs::write(&not_a_directory, "").unwrap();
    let urls = [
        format!("sqlite://{}/tw.db", not_a_directory.display()),
        format!("sqlite://{}/missing/tw.db", sandbox.path().display()),
    ];
    for url in &urls {
        let stderr = sandbox.fails(
            &[
                "--database-url",
                url,
                "provider",
                "add",
                "gitlab",
                "--kind",
                "gitlab",
                "--url",
                "https://gitlab.example.com",
            ],
            "",
            1,
        );
        assert!(stderr.contains("cannot open database"), "{stderr}");
        assert_eq!(stderr.trim().lines().count(), 1, "one-line message: {stderr}");
    }
    let entries: Vec<_> = std::fs::read_dir(sandbox.path()).unwrap().map(|e| e.unwrap().file_name()).collect();
    assert_eq!(entries, vec![std::ffi::OsString::from("plain-file")], "nothing half-written");
}

#[test]
fn token_kind_and_flags_must_agree() {
    let sandbox = Sandbox::new();
    sandbox.add_gitlab_provider();
    let cases: &[(&[&str], &str)] = &[
        (&["--kind", "gitlab-project-access-token", "--secret-stdin"], "needs --project"),
        (&["--kind", "gitlab-group-access-token", "--secret-stdin"], "needs --group"),
        (
            &["--kind", "gitlab-personal-access-token", "--project", "1", "--secret-stdin"],
            "--project and --group apply",
        ),
        (&["--kind", "gitlab-oauth", "--secret-stdin"], "needs --refresh-token-stdin"),
        (&["--kind", "gitlab-personal-access-token", "--refresh-token-stdin"], "needs --secret-stdin"),
        (&["--kind", "gitlab-personal-access-token", "--secret-stdin", "--lifetime", "400d"], "--lifetime"),
        (&["--kind", "gitlab-personal-access-token", "--secret-stdin", "--lifetime", "30x"], "invalid duration"),
        (
            &["--kind", "gitlab-personal-access-token", "--secret-stdin", "--rotate-at-fraction", "0"],
            "--rotate-at-fraction",
        ),
        (&["--kind", "gitlab-personal-access-token", "--secret-stdin", "--rotate-before", "31d"], "not shorter"),
        (&["--kind", "gitlab-deploy-token", "--secret-stdin"], "gitlab-deploy-token"),
        (&["--kind", "oauth2", "--refresh-token-stdin"], "needs a 'oauth2' provider"),
        (&["--kind", "gitlab-oauth", "--refresh-token-stdin"], "no OAuth client id"),
    ];
    for (flags, expected) in cases {
        let mut args = vec!["token", "add", "t", "--provider", "gitlab"];
        args.extend_from_slice(flags);
        let stderr = sandbox.fails(&args, "secret-value\n", 2);
        assert!(stderr.contains(expected), "{flags:?}: expected '{expected}' in: {stderr}");
    }
    let bad_name = sandbox.fails(&["token", "show", "Bad Name"], "", 2);
    assert!(bad_name.contains("invalid token name"), "{bad_name}");
    assert!(sandbox.token_list().is_empty());
}

#[test]
fn provider_flags_must_fit_the_kind() {
    let sandbox = Sandbox::new();
    let cases: &[(&[&str], &str)] = &[
        (&["--kind", "gitlab"], "needs --url"),
        (&["--kind", "gitlab", "--url", "ftp://gitlab.example.com"], "http:// or https://"),
        (&["--kind", "gitlab", "--url", "not a url"], "--url"),
        (&["--kind", "oauth2", "--client-id", "a", "--client-secret-stdin"], "needs --token-url"),
        (&["--kind", "oauth2", "--token-url", "https://auth.example/token"], "needs --client-id"),
        (&["--kind", "gitlab", "--url", "https://g.example", "--client-id", "x"], "together"),
    ];
    for (flags, expected) in cases {
        let mut args = vec!["provider", "add", "p"];
        args.extend_from_slice(flags);
        let stderr = sandbox.fails(&args, "client-secret\n", 2);
        assert!(stderr.contains(expected), "{flags:?}: expected '{expected}' in: {stderr}");
    }
    assert!(!sandbox.db_path().exists(), "a refused add creates no store");
}

#[test]
fn provider_in_use_cannot_be_removed() {
    let sandbox = Sandbox::new();
    sandbox.add_gitlab_provider();
    sandbox.add_project_token("t");
    let stderr = sandbox.fails(&["provider", "remove", "gitlab"], "", 1);
    assert!(stderr.contains("used by 1 token"), "{stderr}");
    sandbox.ok(&["token", "remove", "t"], "");
    sandbox.ok(&["provider", "remove", "gitlab"], "");
    assert_eq!(sandbox.ok(&["provider", "list", "--json"], "").trim(), "[]");
}

#[test]
fn client_add_prints_its_key_once_and_list_never_does() {
    let sandbox = Sandbox::new();
    sandbox.add_gitlab_provider();
    sandbox.add_project_token("a");
    sandbox.add_project_token("b");
    let created: serde_json::Value = serde_json::from_str(&sandbox.ok(
        &[
            "client",
            "add",
            "ci",
            "--role",
            "reader",
            "--grant",
            "a",
            "--grant",
            "b",
            "--webhook",
            "https://ci.example/hook",
        ],
        "",
    ))
    .unwrap();
    assert_eq!(created["name"], "ci");
    let api_key = created["api_key"].as_str().unwrap();
    let webhook_secret = created["webhook_secret"].as_str().unwrap();
    assert!(api_key.starts_with("tw_") && webhook_secret.starts_with("whsec_"));

    let plain: serde_json::Value =
        serde_json::from_str(&sandbox.ok(&["client", "add", "ops", "--role", "operator"], "")).unwrap();
    assert!(plain.get("webhook_secret").is_none());

    let list = sandbox.ok(&["client", "list", "--json"], "");
    assert!(!list.contains(api_key) && !list.contains(webhook_secret));

    // A new key and a new webhook secret, each printed once; the old ones keep working for the
    // overlap (tests/store.rs and tests/notify.rs check that), and no other command shows them.
    let rotated: serde_json::Value =
        serde_json::from_str(&sandbox.ok(&["client", "rotate-key", "ci", "--overlap", "1h"], "")).unwrap();
    assert_eq!(rotated["name"], "ci");
    let new_key = rotated["api_key"].as_str().unwrap();
    assert!(new_key.starts_with("tw_") && new_key != api_key);
    let rotated: serde_json::Value =
        serde_json::from_str(&sandbox.ok(&["client", "rotate-webhook-secret", "ci"], "")).unwrap();
    let new_secret = rotated["webhook_secret"].as_str().unwrap();
    assert!(new_secret.starts_with("whsec_") && new_secret != webhook_secret);
    let stderr = sandbox.fails(&["client", "rotate-webhook-secret", "ops"], "", 2);
    assert!(stderr.contains("has no webhook"), "{stderr}");
    let stderr = sandbox.fails(&["client", "rotate-key", "nobody"], "", 2);
    assert!(stderr.contains("nobody"), "{stderr}");
    let audit = sandbox.ok(&["audit", "--json"], "");
    assert!(audit.contains("client.rotate_key") && audit.contains("client.rotate_webhook_secret"), "{audit}");
    assert!(!audit.contains(new_key) && !audit.contains(new_secret));
    let clients: serde_json::Value = serde_json::from_str(&list).unwrap();
    assert_eq!(clients[0]["name"], "ci");
    assert_eq!(clients[0]["grants"], serde_json::json!(["a", "b"]));
    assert_eq!(clients[1]["role"], "operator");

    sandbox.fails(&["client", "add", "ci", "--role", "reader"], "", 2);
    sandbox.fails(&["client", "add", "x", "--role", "operator", "--grant", "a"], "", 2);
    sandbox.ok(&["client", "remove", "ci"], "");
    sandbox.fails(&["client", "remove", "ci"], "", 2);
}

#[test]
fn stored_secrets_never_appear_in_the_database_files() {
    let sandbox = Sandbox::new();
    sandbox.add_gitlab_oauth_provider();
    sandbox.add_project_token("project");
    let personal = sandbox.gitlab.token(TokenOwner::Personal);
    sandbox.ok(
        &[
            "token",
            "add",
            "personal",
            "--provider",
            "gitlab",
            "--kind",
            "gitlab-personal-access-token",
            "--secret-stdin",
        ],
        &format!("{personal}\n"),
    );
    add_oauth_grant(&sandbox, "grant");
    let created: serde_json::Value = serde_json::from_str(
        &sandbox.ok(&["client", "add", "hooked", "--role", "reader", "--webhook", "https://ci.example/hook"], ""),
    )
    .unwrap();
    let mut secrets = sandbox.gitlab.sim.with_state(|state| state.issued_secrets());
    assert!(secrets.len() >= 6, "tokens, the grant's refresh tokens, its access token and the app secret");
    secrets.push(created["api_key"].as_str().unwrap().to_owned());
    secrets.push(created["webhook_secret"].as_str().unwrap().to_owned());

    let mut files_read = 0;
    for entry in std::fs::read_dir(sandbox.path()).unwrap() {
        let path = entry.unwrap().path();
        let name = path.file_name().unwrap().to_string_lossy().into_owned();
        if !name.starts_with("tokenwarden.db") {
            continue;
        }
        files_read += 1;
        let bytes = std::fs::read(&path).unwrap();
        for secret in &secrets {
            let found = bytes.windows(secret.len()).any(|w| w == secret.as_bytes());
            assert!(!found, "{secret} found in plain text in {name}");
        }
    }
    assert!(files_read >= 1);
}

/// Adds an OAuth grant issued by the simulator (refreshed once by `token add`).
fn add_oauth_grant(sandbox: &Sandbox, name: &str) {
    let client_id = sandbox.gitlab.sim.with_state(|state| state.application_ids().remove(0));
    let refresh_token = sandbox.gitlab.sim.create_grant(&client_id);
    sandbox.ok(
        &["token", "add", name, "--provider", "gitlab", "--kind", "gitlab-oauth", "--refresh-token-stdin"],
        &format!("{refresh_token}\n"),
    );
}

#[test]
fn generated_key_file_and_database_are_private() {
    let sandbox = Sandbox::new();
    sandbox.add_gitlab_provider();
    sandbox.add_project_token("t");
    let key_mode = std::fs::metadata(sandbox.key_path()).unwrap().permissions().mode() & 0o777;
    assert_eq!(key_mode, 0o600);
    let db_mode = std::fs::metadata(sandbox.db_path()).unwrap().permissions().mode() & 0o777;
    assert_eq!(db_mode & 0o077, 0, "database file mode {db_mode:o} is readable by others");
}

#[test]
fn wrong_master_key_is_a_clear_error() {
    let sandbox = Sandbox::new();
    sandbox.add_gitlab_provider();
    sandbox.add_project_token("t");
    let other = sandbox.path().join("other.key");
    std::fs::write(&other, format!("{}\n", "ab".repeat(32))).unwrap();
    let other = other.to_str().unwrap();
    let stderr = sandbox.fails(
        &[
            "--master-key-file",
            other,
            "token",
            "add",
            "u",
            "--provider",
            "gitlab",
            "--kind",
            "gitlab-personal-access-token",
            "--secret-stdin",
        ],
        "glpat-y\n",
        1,
    );
    assert!(stderr.contains("wrong master key"), "{stderr}");
    assert_eq!(sandbox.token_list().len(), 1, "nothing written with the wrong key");
}

#[test]
fn missing_key_file_for_a_sealed_database_is_not_replaced() {
    let sandbox = Sandbox::new();
    sandbox.add_gitlab_provider();
    sandbox.add_project_token("t");
    std::fs::rename(sandbox.key_path(), sandbox.path().join("backup.key")).unwrap();
    let stderr = sandbox.fails(
        &["token", "add", "u", "--provider", "gitlab", "--kind", "gitlab-personal-access-token", "--secret-stdin"],
        "glpat-y\n",
        1,
    );
    assert!(stderr.contains("no key file exists"), "{stderr}");
    assert!(!sandbox.key_path().exists(), "a new key must not be generated over sealed data");
}

#[test]
fn config_file_errors_stop_the_command_with_exit_2() {
    let sandbox = Sandbox::new();
    let config = sandbox.path().join("tw.toml");
    let config_arg = config.to_str().unwrap().to_owned();
    let cases = [
        ("colour = \"blue\"\n", "colour"),
        ("[policy]\ngitlab_lifetime = \"thirty days\"\n", "policy.gitlab_lifetime"),
        ("database_url = \"mysql://db/tw\"\n", "database_url"),
        ("listen = \"everywhere\"\n", "listen"),
    ];
    for (text, key) in cases {
        std::fs::write(&config, text).unwrap();
        let out = sandbox
            .cmd()
            .env_remove("TOKENWARDEN_DATABASE_URL")
            .args(["--config", &config_arg, "token", "list"])
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{text}: {stderr}");
        assert!(stderr.contains(key) && stderr.contains(&config_arg), "{text}: {stderr}");
    }
    let missing = sandbox.fails(&["--config", "/nonexistent/tw.toml", "token", "list"], "", 2);
    assert!(missing.contains("cannot read config file /nonexistent/tw.toml"), "{missing}");
    assert!(!sandbox.db_path().exists(), "nothing starts on a bad config");
}

#[test]
fn environment_and_flags_choose_the_database() {
    let sandbox = Sandbox::new();
    let other = format!("sqlite://{}", sandbox.path().join("other.db").display());
    sandbox.ok(
        &["--database-url", &other, "provider", "add", "gitlab", "--kind", "gitlab", "--url", "https://g.example"],
        "",
    );
    assert!(sandbox.path().join("other.db").exists());
    let stderr = sandbox.fails(&["provider", "list", "--json"], "", 2);
    assert!(stderr.contains("no tokenwarden store"), "env database is a different one: {stderr}");
    let via_env =
        sandbox.cmd().env("TOKENWARDEN_DATABASE_URL", &other).args(["provider", "list", "--json"]).output().unwrap();
    assert!(String::from_utf8_lossy(&via_env.stdout).contains("\"gitlab\""));
}

#[test]
fn secrets_never_reach_the_logs_even_at_trace_level() {
    let sandbox = Sandbox::new();
    let (client_id, client_secret) = sandbox.gitlab.sim.create_application();
    let personal = sandbox.gitlab.token(TokenOwner::Personal);
    let refresh_token = sandbox.gitlab.sim.create_grant(&client_id);
    let url = sandbox.gitlab_url();
    let mut transcript = Vec::new();
    let mut run = |args: &[&str], stdin: &str| {
        let out = sandbox.cmd().env("RUST_LOG", "trace").args(args).write_stdin(stdin).output().unwrap();
        assert!(out.status.success(), "{args:?}: {}", String::from_utf8_lossy(&out.stderr));
        transcript.extend_from_slice(&out.stderr);
        transcript.extend_from_slice(&out.stdout);
    };
    run(
        &[
            "provider",
            "add",
            "gitlab",
            "--kind",
            "gitlab",
            "--url",
            &url,
            "--client-id",
            &client_id,
            "--client-secret-stdin",
        ],
        &format!("{client_secret}\n"),
    );
    run(
        &["token", "add", "pat", "--provider", "gitlab", "--kind", "gitlab-personal-access-token", "--secret-stdin"],
        &format!("{personal}\n"),
    );
    run(
        &["token", "add", "grant", "--provider", "gitlab", "--kind", "gitlab-oauth", "--refresh-token-stdin"],
        &format!("{refresh_token}\n"),
    );
    run(&["token", "rotate", "pat"], "");
    run(&["token", "rotate", "grant"], "");
    run(&["token", "list", "--json"], "");
    run(&["token", "show", "grant", "--json"], "");
    let transcript = String::from_utf8_lossy(&transcript);
    assert!(transcript.contains("master key"), "trace logging was on: {transcript}");
    let secrets = sandbox.gitlab.sim.with_state(|state| state.issued_secrets());
    assert!(secrets.len() >= 7, "the rotations issued new secrets: {}", secrets.len());
    for secret in secrets {
        assert!(!transcript.contains(&secret), "{secret} reached the output");
    }
}

#[test]
fn token_add_refuses_a_token_gitlab_reports_revoked_expired_or_unable_to_rotate() {
    let sandbox = Sandbox::new();
    sandbox.add_gitlab_provider();
    let sim = &sandbox.gitlab.sim;
    let in_days = |days| chrono::Utc::now().date_naive() + chrono::Days::new(days);
    let read_only = sim.create_access_token(TokenOwner::Personal, &["read_api"], in_days(30)).1;
    let revoked = sandbox.gitlab.token(TokenOwner::Personal);
    sim.with_state(|state| state.revoke(&revoked));
    let add = ["token", "add", "t", "--provider", "gitlab", "--kind", "gitlab-personal-access-token", "--secret-stdin"];
    let stderr = sandbox.fails(&add, &format!("{read_only}\n"), 2);
    assert!(stderr.contains("read_api") && stderr.contains("self_rotate"), "{stderr}");
    let stderr = sandbox.fails(&add, &format!("{revoked}\n"), 2);
    assert!(stderr.starts_with("tokenwarden: GitLab rejected the token (revoked, expired or unknown): "), "{stderr}");
    assert_eq!(stderr.matches("GitLab").count(), 1, "the cause is said once: {stderr}");
    assert!(!stderr.contains("as expired"), "{stderr}");
    let expired = sim.create_access_token(TokenOwner::Personal, &["api"], chrono::Utc::now().date_naive()).1;
    let stderr = sandbox.fails(&add, &format!("{expired}\n"), 2);
    assert!(stderr.contains("GitLab reports this token as expired; issue a new one"), "{stderr}");
    assert!(!stderr.contains("revoked"), "{stderr}");
    assert!(sandbox.token_list().is_empty(), "nothing was added");
}

#[test]
fn token_add_learns_the_expiry_from_gitlab_and_rotate_replaces_the_secret() {
    let sandbox = Sandbox::new();
    sandbox.add_gitlab_provider();
    let old = sandbox.add_project_token("ci");
    let shown = sandbox.token_show("ci");
    let expected = (chrono::Utc::now().date_naive() + chrono::Days::new(60)).format("%Y-%m-%d").to_string();
    assert!(shown["expires_at"].as_str().unwrap().starts_with(&expected), "{shown}");
    assert!(shown["next_rotation_at"].is_string());

    sandbox.ok(&["token", "rotate", "ci"], "");
    let shown = sandbox.token_show("ci");
    assert_eq!((shown["version"].as_i64(), shown["state"].as_str()), (Some(2), Some("active")));
    assert!(!sandbox.gitlab.sim.accepts(&old), "the old secret was rotated away");
    let history: serde_json::Value =
        serde_json::from_str(&sandbox.ok(&["token", "history", "ci", "--json"], "")).unwrap();
    assert_eq!(history[1]["actor"], "cli");
    assert_eq!(sandbox.gitlab.sim.stats().rotations, 1);
}

#[test]
fn a_lost_grant_is_reported_by_rotate_and_revived_by_reauth() {
    let sandbox = Sandbox::new();
    sandbox.add_gitlab_oauth_provider();
    let client_id = sandbox.gitlab.sim.with_state(|state| state.application_ids().remove(0));
    let refresh = sandbox.gitlab.sim.create_grant(&client_id);
    let add = ["token", "add", "grant", "--provider", "gitlab", "--kind", "gitlab-oauth", "--refresh-token-stdin"];
    sandbox.ok(&add, &format!("{refresh}\n"));
    let live = sandbox.gitlab.sim.with_state(|state| {
        state
            .issued_secrets()
            .into_iter()
            .filter(|s| s.starts_with("glrt-") && state.refresh_token_is_live(s))
            .collect::<Vec<_>>()
    });
    assert_eq!(live.len(), 1);
    sandbox.gitlab.sim.with_state(|state| state.revoke_refresh_token(&live[0]));

    let stderr = sandbox.fails(&["token", "rotate", "grant"], "", 1);
    assert!(stderr.contains("invalid_grant"), "{stderr}");
    assert_eq!(sandbox.token_show("grant")["state"], "needs_attention");
    let stderr = sandbox.fails(&["token", "rotate", "grant"], "", 1);
    assert!(stderr.contains("needs attention") && stderr.contains("reauth"), "{stderr}");

    let fresh = sandbox.gitlab.sim.create_grant(&client_id);
    sandbox.ok(&["token", "reauth", "grant", "--refresh-token-stdin"], &format!("{fresh}\n"));
    let shown = sandbox.token_show("grant");
    assert_eq!(shown["state"], "active");
    assert!(!sandbox.gitlab.sim.with_state(|state| state.refresh_token_is_live(&fresh)), "reauth refreshed at once");
    assert_eq!(sandbox.gitlab.sim.stats().refresh_token_reuses, 0);
}

/// Asserts that standard error is exactly one non-empty line and returns it.
fn one_line(stderr: &[u8], what: &str) -> String {
    let text = String::from_utf8_lossy(stderr).into_owned();
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 1, "{what}: expected one line on stderr, got: {text:?}");
    assert!(!lines[0].trim().is_empty(), "{what}: the line is empty");
    lines[0].to_owned()
}

#[test]
fn every_refused_invocation_exits_2_with_one_line_on_stderr_that_never_repeats_a_secret() {
    let sandbox = Sandbox::new();
    let config = sandbox.path().join("tw.toml");
    let config_arg = config.to_str().unwrap().to_owned();
    let pat = ["token", "add", "t", "--provider", "gitlab", "--kind", "gitlab-personal-access-token"];
    let with = |extra: &[&'static str]| -> Vec<&'static str> { [&pat[..], extra].concat() };
    let secret = "glpat-NeverShowThis";
    // (what, arguments, standard input, config file text)
    let cases: Vec<(&str, Vec<&str>, &str, Option<String>)> = vec![
        ("unknown flag", vec!["token", "list", "--bogus"], "", None),
        ("secret as a flag's value", with(&["--secret", "glpat-NeverShowThis"]), "", None),
        ("secret as an extra argument", with(&["--secret-stdin", "glpat-NeverShowThis"]), "", None),
        ("missing required flag", vec!["token", "add", "t", "--provider", "gitlab"], "", None),
        ("missing command", vec!["token"], "", None),
        ("unknown command", vec!["tokn", "list"], "", None),
        ("bad duration", with(&["--secret-stdin", "--lifetime", "30x"]), "glpat-x\n", None),
        ("duration beyond any date", vec!["audit", "--since", "300000000d"], "", None),
        ("unknown config key", vec!["token", "list"], "", Some("colour = \"blue\"\n".into())),
        (
            "secret-looking value under a mistyped config key",
            vec!["token", "list"],
            "",
            Some(format!("listen = \"127.0.0.1:8787\"\ndatabse_url = \"postgres://tw:{secret}@db/tw\"\n")),
        ),
        (
            "secret-looking value of the wrong type",
            vec!["token", "list"],
            "",
            Some(format!("[policy]\nrotate_at_fraction = \"{secret}\"\n")),
        ),
        (
            "mistyped database URL with a password",
            vec!["token", "list"],
            "",
            Some(format!("database_url = \"postgress://tw:{secret}@db/tw\"\n")),
        ),
        ("broken config syntax", vec!["token", "list"], "", Some(format!("database_url = \"{secret}\n"))),
        ("unknown token", vec!["token", "show", "nope"], "", None),
        ("empty standard input", with(&["--secret-stdin"]), "", None),
    ];
    for (what, args, stdin, config_text) in cases {
        let mut cmd = sandbox.cmd();
        if let Some(text) = &config_text {
            std::fs::write(&config, text).unwrap();
            cmd.env_remove("TOKENWARDEN_DATABASE_URL").args(["--config", &config_arg]);
        }
        let out = cmd.args(&args).write_stdin(stdin).output().unwrap();
        let line = one_line(&out.stderr, what);
        assert_eq!(out.status.code(), Some(2), "{what}: {line}");
        assert!(!line.contains("NeverShowThis"), "{what}: the secret was repeated: {line}");
        assert!(out.stdout.is_empty(), "{what}: {}", String::from_utf8_lossy(&out.stdout));
    }
}

#[test]
fn usage_errors_say_what_to_fix_and_which_help_to_read() {
    let sandbox = Sandbox::new();
    let out = sandbox.run(&["token", "add", "t", "--provider", "gitlab", "--secret", "x"], "");
    let line = one_line(&out.stderr, "--secret");
    assert!(line.contains("unexpected argument '--secret'") && line.contains("'--secret-stdin'"), "{line}");
    assert!(line.ends_with("(see 'tokenwarden token add --help')"), "{line}");
    let out = sandbox.run(&["token", "add", "t", "--provider", "gitlab"], "");
    let line = one_line(&out.stderr, "missing --kind");
    assert!(line.contains("--kind <KIND>"), "{line}");
    let out = sandbox.run(&["--config", "tw.toml", "token", "list"], "");
    assert!(one_line(&out.stderr, "missing config").contains("cannot read config file tw.toml"));
}

#[test]
fn a_config_error_names_the_file_line_and_column_without_quoting_the_file() {
    let sandbox = Sandbox::new();
    let config = sandbox.path().join("tw.toml");
    std::fs::write(&config, "listen = \"127.0.0.1:8787\"\ndatabse_url = \"postgres://tw:hunter2@db/tw\"\n").unwrap();
    let out = sandbox.cmd().args(["--config", config.to_str().unwrap(), "token", "list"]).output().unwrap();
    let line = one_line(&out.stderr, "mistyped key");
    let expected = format!("config file {}: line 2, column 1: unknown field `databse_url`", config.display());
    assert!(line.contains(&expected), "{line}");
    assert!(!line.contains("hunter2") && !line.contains("postgres://"), "{line}");
}

#[test]
fn help_and_version_print_clap_text_on_standard_output_and_exit_0() {
    let sandbox = Sandbox::new();
    for args in [&["--help"][..], &["token", "add", "--help"], &["help", "token"], &["--version"]] {
        let out = sandbox.run(args, "");
        assert_eq!(out.status.code(), Some(0), "{args:?}");
        assert!(out.stderr.is_empty(), "{args:?}: {}", String::from_utf8_lossy(&out.stderr));
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(stdout.contains("tokenwarden"), "{args:?}: {stdout}");
    }
    let help = sandbox.ok(&["token", "add", "--help"], "");
    assert!(help.contains("Usage: tokenwarden token add") && help.contains("--secret-stdin"), "{help}");
}

#[test]
fn check_reports_a_bad_command_line_as_unknown_like_monitoring_plugins_do() {
    let sandbox = Sandbox::new();
    let out = sandbox.run(&["check", "--warn", "3x"], "");
    assert_eq!(out.status.code(), Some(3));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(stdout.lines().count(), 1, "{stdout}");
    assert!(stdout.starts_with("TOKENWARDEN UNKNOWN - invalid value '3x' for '--warn"), "{stdout}");
}

#[test]
fn a_command_refused_before_anything_is_sealed_creates_no_master_key_and_the_first_that_creates_it_says_so_once() {
    let sandbox = Sandbox::new();
    let refused: [&[&str]; 3] = [
        &["token", "add", "t", "--provider", "gitlab", "--kind", "gitlab-personal-access-token", "--secret-stdin"],
        &["token", "rotate", "t"],
        &["token", "reauth", "t", "--refresh-token-stdin"],
    ];
    for args in refused {
        let out = sandbox.run(args, "glpat-x\n");
        assert_eq!(out.status.code(), Some(2), "{args:?}");
        let line = one_line(&out.stderr, &format!("{args:?}"));
        assert!(line.contains("no provider named 'gitlab'") || line.contains("no token named 't'"), "{line}");
        assert!(!sandbox.key_path().exists(), "{args:?} created a master key");
    }
    let out = sandbox.run(&["provider", "add", "gitlab", "--kind", "gitlab", "--url", &sandbox.gitlab_url()], "");
    assert!(out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    let notice = format!("created a new master key file {}", sandbox.key_path().display());
    assert!(stderr.contains(&notice) && stderr.contains("back it up"), "{stderr}");
    assert_eq!(stderr.matches("master key").count(), 1, "{stderr}");
    let out = sandbox.run(&["provider", "add", "other", "--kind", "gitlab", "--url", &sandbox.gitlab_url()], "");
    assert!(!String::from_utf8_lossy(&out.stderr).contains("master key"), "announced once");
}

#[test]
fn a_failing_command_that_created_the_master_key_says_so_on_its_one_error_line() {
    let sandbox = Sandbox::new();
    // A provider stored without any secret sealed (as by an older version): no key yet.
    let url = tokenwarden::config::DatabaseUrl::Sqlite(sandbox.db_path());
    let store = tokenwarden::store::Store::open(&url).unwrap();
    drop(store);
    let mut conn = tokenwarden::store::connect(&url).unwrap();
    let unused_cipher = tokenwarden::crypto::Cipher::new(&tokenwarden::crypto::MasterKey::generate());
    let provider = tokenwarden::store::providers::NewProvider {
        name: tokenwarden::domain::ProviderName::new("gitlab").unwrap(),
        kind: tokenwarden::domain::ProviderKind::Gitlab,
        url: Some(sandbox.gitlab_url()),
        token_url: None,
        client_id: None,
        client_secret: None,
        redirect_uri: None,
    };
    tokenwarden::store::providers::insert(&mut conn, &unused_cipher, &provider, "test", chrono::Utc::now()).unwrap();
    drop(conn);

    let out = sandbox.run(&["provider", "add", "gitlab", "--kind", "gitlab", "--url", &sandbox.gitlab_url()], "");
    assert_eq!(out.status.code(), Some(2));
    let line = one_line(&out.stderr, "duplicate provider");
    assert!(line.contains("a provider named 'gitlab' already exists"), "{line}");
    assert!(line.contains(&format!("created a new master key file {}", sandbox.key_path().display())), "{line}");
    assert!(sandbox.key_path().exists());
}

#[test]
fn a_rotation_the_provider_refuses_is_reported_on_one_line_with_exit_1() {
    let sandbox = Sandbox::new();
    sandbox.add_gitlab_provider();
    sandbox.add_project_token("busy");
    let revoked = sandbox.add_project_token("revoked");
    sandbox.gitlab.sim.push_fault(
        tokenwarden::simulator::FaultTarget::Renewal,
        tokenwarden::simulator::Fault::Status { status: 503 },
    );
    let out = sandbox.run(&["token", "rotate", "busy"], "");
    assert_eq!(out.status.code(), Some(1));
    let line = one_line(&out.stderr, "transient failure");
    assert!(line.contains("failed for now") && line.contains("503"), "{line}");
    assert_eq!(line.matches("provider error").count(), 1, "the cause is said once: {line}");
    sandbox.gitlab.sim.with_state(|state| state.revoke(&revoked));
    let out = sandbox.run(&["token", "rotate", "revoked"], "");
    assert_eq!(out.status.code(), Some(1));
    let line = one_line(&out.stderr, "permanent failure");
    assert!(line.contains("failed permanently (revoked)"), "{line}");
}
