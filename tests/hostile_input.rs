//! Hostile input to the config loader and the command line, generated with proptest.
//!
//! - Any config file — TOML-ish lines mixing real keys, mistyped keys holding a password,
//!   broken lines, comments and tables, or arbitrary bytes — either loads or gives a one-line
//!   error, never a panic, and the error never quotes a password that sat under a mistyped key,
//!   in a comment or in a broken line.
//! - Any argument vector parses or gives a clap error, never a panic; and a secret typed as an
//!   extra argument of a complete command is refused with exit 2 on one line that does not
//!   repeat it.

use std::path::PathBuf;

use clap::Parser;
use proptest::prelude::*;
use tokenwarden::cli::Cli;
use tokenwarden::config::{FlagValues, resolve};

/// The secret planted in generated config files: it must never appear in an error.
const PLANTED: &str = "s3cr3t-Pa55w0rd-9f8e7d6c";

/// Lines a config file may hold; those with the secret put it where no setting reads it.
fn config_line() -> impl Strategy<Value = String> {
    let secret_lines = prop_oneof![
        Just(format!("databse_url = \"postgres://tw:{PLANTED}@db/tw\"")),
        Just(format!("password = \"{PLANTED}\"")),
        Just(format!("[policy]\ngitlab_lifetme = \"{PLANTED}\"")),
        Just(format!("# {PLANTED}")),
        Just(format!("database_url = \"postgres://tw:{PLANTED}@db/tw")),
        Just(format!("= \"{PLANTED}\"")),
        Just(format!("[{PLANTED}")),
        Just(format!("listen = [\"{PLANTED}\"")),
        Just(format!("extra = {{ token = \"{PLANTED}\" }}")),
        Just(format!("master_key_file = '''{PLANTED}")),
    ];
    let ordinary_lines = prop_oneof![
        Just("database_url = \"sqlite://tokenwarden.db\"".to_owned()),
        Just("listen = \"127.0.0.1:8787\"".to_owned()),
        Just("listen = 8787".to_owned()),
        Just("log_format = \"json\"".to_owned()),
        Just("log_format = \"yaml\"".to_owned()),
        Just("[policy]".to_owned()),
        Just("gitlab_lifetime = \"90d\"".to_owned()),
        Just("gitlab_lifetime = \"900d\"".to_owned()),
        Just("rotate_at_fraction = 1.5".to_owned()),
        Just("rotate_at_fraction = \"half\"".to_owned()),
        Just("[scheduler]".to_owned()),
        Just("[maintenance]".to_owned()),
        Just("[policy.deeper]".to_owned()),
        Just("[[policy]]".to_owned()),
        "[a-z_.]{1,12} = [0-9]{1,3}",
        "[ -~]{0,40}",
    ];
    prop_oneof![1 => secret_lines, 3 => ordinary_lines]
}

fn config_text() -> impl Strategy<Value = String> {
    prop::collection::vec(config_line(), 0..10).prop_map(|lines| lines.join("\n"))
}

/// Loads a config file holding `bytes` with no flags or environment besides `--config`.
fn load_file(bytes: &[u8]) -> Result<(), String> {
    let dir = tempfile::tempdir().expect("temp dir");
    let path: PathBuf = dir.path().join("tokenwarden.toml");
    std::fs::write(&path, bytes).expect("write config");
    let flags = FlagValues { config: Some(path), ..FlagValues::default() };
    resolve(&flags, &|_| None).map(drop).map_err(|err| err.to_string())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 400, failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn a_config_file_loads_or_fails_on_one_line_without_quoting_a_misplaced_password(text in config_text()) {
        if let Err(message) = load_file(text.as_bytes()) {
            prop_assert!(!message.contains(PLANTED), "the error quotes the password: {}", message);
            prop_assert!(!message.contains('\n'), "not one line: {}", message);
            prop_assert!(message.starts_with("config file ") || message.starts_with("invalid value for `"), "{}", message);
        }
    }

    #[test]
    fn arbitrary_bytes_as_a_config_file_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..512)) {
        if let Err(message) = load_file(&bytes) {
            prop_assert!(!message.contains('\n'), "not one line: {}", message);
        }
    }
}

/// Words a command line may hold: subcommands, flags, values, and anything at all.
fn word() -> impl Strategy<Value = String> {
    let known = prop::sample::select(vec![
        "serve",
        "token",
        "provider",
        "client",
        "audit",
        "check",
        "add",
        "list",
        "show",
        "history",
        "rotate",
        "pause",
        "resume",
        "remove",
        "reauth",
        "help",
        "--help",
        "-h",
        "--version",
        "--json",
        "--kind",
        "gitlab",
        "oauth2",
        "gitlab-oauth",
        "gitlab-project-access-token",
        "--provider",
        "--project",
        "--group",
        "--secret-stdin",
        "--refresh-token-stdin",
        "--lifetime",
        "--rotate-before",
        "90d",
        "0s",
        "--role",
        "reader",
        "operator",
        "--grant",
        "--webhook",
        "--config",
        "--database-url",
        "--listen",
        "--warn",
        "--critical",
        "--url",
        "--token-url",
        "--client-id",
        "--client-secret-stdin",
        "--log-format",
        "--",
        "-",
        "=",
        "--listen=",
        "--kind=",
        "",
    ])
    .prop_map(str::to_owned);
    prop_oneof![3 => known, 1 => "\\PC{0,16}", 1 => "-{1,2}[a-z-]{0,12}(=[ -~]{0,8})?"]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 600, failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn any_argument_vector_parses_or_is_a_clap_error_never_a_panic(words in prop::collection::vec(word(), 0..8)) {
        let argv = std::iter::once("tokenwarden".to_owned()).chain(words);
        if let Err(err) = Cli::try_parse_from(argv) {
            let rendered = err.render().to_string();
            prop_assert!(!rendered.is_empty());
        }
    }
}

/// Complete commands: anything after them is an extra argument.
const COMPLETE_COMMANDS: [&[&str]; 8] = [
    &["token", "list"],
    &["token", "show", "alpha"],
    &["token", "pause", "alpha"],
    &["token", "remove", "alpha"],
    &["client", "list"],
    &["provider", "list"],
    &["token", "add", "alpha", "--provider", "gitlab", "--kind", "gitlab-personal-access-token", "--secret-stdin"],
    &["check", "--warn", "3d"],
];

proptest! {
    #![proptest_config(ProptestConfig { cases: 24, failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn a_secret_typed_as_an_extra_argument_is_refused_without_repeating_it(
        command in prop::sample::select(COMPLETE_COMMANDS.to_vec()),
        secret in "(glpat-|glrt-|)[A-Za-z0-9_]{20,40}",
    ) {
        let args: Vec<&str> = command.iter().copied().chain([secret.as_str()]).collect();
        let out = run_cli(&args);
        let (stdout, stderr) = (String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
        // `check` reports on standard output with the monitoring-plugin code UNKNOWN (3).
        let (expected, report) = if command[0] == "check" { (3, &stdout) } else { (2, &stderr) };
        prop_assert_eq!(out.status.code(), Some(expected), "{:?}: {}{}", args, stdout, stderr);
        prop_assert!(!stdout.contains(&secret) && !stderr.contains(&secret), "{:?}: repeated: {}{}", args, stdout, stderr);
        prop_assert_eq!(report.lines().count(), 1, "{:?}: {}", args, report);
        prop_assert!(report.contains("unexpected extra argument"), "{:?}: {}", args, report);
    }
}

/// Runs `tokenwarden args` in a fresh directory on a database there, with empty standard input.
fn run_cli(args: &[&str]) -> std::process::Output {
    let dir = tempfile::tempdir().expect("temp dir");
    let mut cmd = assert_cmd::Command::cargo_bin("tokenwarden").expect("binary");
    for var in ["TOKENWARDEN_CONFIG", "TOKENWARDEN_LISTEN", "TOKENWARDEN_MASTER_KEY_FILE", "RUST_LOG"] {
        cmd.env_remove(var);
    }
    cmd.current_dir(dir.path())
        .env("TOKENWARDEN_DATABASE_URL", format!("sqlite://{}", dir.path().join("tokenwarden.db").display()))
        .args(args)
        .write_stdin("")
        .output()
        .expect("run tokenwarden")
}
