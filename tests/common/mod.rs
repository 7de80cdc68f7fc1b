//! Helpers shared by the integration tests: a throwaway directory per test and a
//! `tokenwarden` command that works on a database inside it.

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::sync::Arc;

use assert_cmd::Command;
use chrono::{Days, Utc};
use tokenwarden::engine::SystemClock;
use tokenwarden::simulator::{Simulator, TokenOwner};

pub mod engine_setup;
pub mod killed;
pub mod markdown;
pub mod postgres;
pub mod proxy;
pub mod serve_process;
pub mod served;

/// A GitLab simulator on loopback, running on its own small runtime so synchronous tests
/// (which run `tokenwarden` as a process) can use it.
pub struct TestGitlab {
    pub sim: Simulator,
    _runtime: tokio::runtime::Runtime,
}

impl TestGitlab {
    pub fn start() -> Self {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .expect("simulator runtime");
        let sim = runtime.block_on(Simulator::start(Arc::new(SystemClock))).expect("start the GitLab simulator");
        Self { sim, _runtime: runtime }
    }

    /// A token of `owner` with the `api` scope, expiring in 60 days.
    pub fn token(&self, owner: TokenOwner) -> String {
        let expires = Utc::now().date_naive() + Days::new(60);
        self.sim.create_access_token(owner, &["api"], expires).1
    }
}

/// The names of the entries of `dir`, sorted.
pub fn files_in(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .expect("read the directory")
        .map(|entry| entry.expect("a directory entry").file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

/// A fresh directory holding one test's database and key, and a simulated GitLab.
pub struct Sandbox {
    pub dir: tempfile::TempDir,
    pub gitlab: TestGitlab,
}

impl Sandbox {
    pub fn new() -> Self {
        Self { dir: tempfile::tempdir().expect("temp dir"), gitlab: TestGitlab::start() }
    }

    /// The simulated GitLab's URL.
    pub fn gitlab_url(&self) -> String {
        self.gitlab.sim.url().to_owned()
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    pub fn db_path(&self) -> PathBuf {
        self.path().join("tokenwarden.db")
    }

    pub fn key_path(&self) -> PathBuf {
        self.path().join("tokenwarden.key")
    }

    pub fn database_url(&self) -> String {
        format!("sqlite://{}", self.db_path().display())
    }

    /// `tokenwarden` run in the sandbox with no inherited `TOKENWARDEN_*` settings.
    pub fn cmd(&self) -> Command {
        let mut cmd = Command::cargo_bin("tokenwarden").expect("binary");
        cmd.current_dir(self.path());
        for var in [
            "TOKENWARDEN_CONFIG",
            "TOKENWARDEN_DATABASE_URL",
            "TOKENWARDEN_LISTEN",
            "TOKENWARDEN_MASTER_KEY_FILE",
            "TOKENWARDEN_LOG_FORMAT",
            "CREDENTIALS_DIRECTORY",
            "RUST_LOG",
        ] {
            cmd.env_remove(var);
        }
        cmd.env("TOKENWARDEN_DATABASE_URL", self.database_url());
        cmd
    }

    /// Runs `args` with `stdin` and returns the output, whatever the exit code.
    pub fn run(&self, args: &[&str], stdin: &str) -> std::process::Output {
        self.cmd().args(args).write_stdin(stdin).output().expect("run tokenwarden")
    }

    /// Runs `args` and asserts success, returning standard output.
    pub fn ok(&self, args: &[&str], stdin: &str) -> String {
        let out = self.run(args, stdin);
        assert!(out.status.success(), "tokenwarden {args:?} failed: {}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8(out.stdout).expect("utf-8 stdout")
    }

    /// Runs `args`, asserts the exit code, and returns standard error.
    pub fn fails(&self, args: &[&str], stdin: &str, code: i32) -> String {
        let out = self.run(args, stdin);
        let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
        assert_eq!(out.status.code(), Some(code), "tokenwarden {args:?}: {stderr}");
        stderr
    }

    /// Adds a GitLab provider named `gitlab` pointing at the simulator.
    pub fn add_gitlab_provider(&self) {
        self.ok(&["provider", "add", "gitlab", "--kind", "gitlab", "--url", &self.gitlab_url()], "");
    }

    /// Adds a GitLab provider named `gitlab` with a registered OAuth application.
    pub fn add_gitlab_oauth_provider(&self) {
        let (client_id, client_secret) = self.gitlab.sim.create_application();
        let url = self.gitlab_url();
        let args = ["provider", "add", "gitlab", "--kind", "gitlab", "--url", &url, "--client-id", &client_id];
        self.ok(&[&args[..], &["--client-secret-stdin"]].concat(), &format!("{client_secret}\n"));
    }

    /// Adds a project access token for project 42 issued by the simulator; returns its secret.
    pub fn add_project_token(&self, name: &str) -> String {
        let secret = self.gitlab.token(TokenOwner::Project("42".into()));
        let args = ["token", "add", name, "--provider", "gitlab", "--kind", "gitlab-project-access-token"];
        self.ok(&[&args[..], &["--project", "42", "--secret-stdin"]].concat(), &format!("{secret}\n"));
        secret
    }

    /// `token list --json`, parsed.
    pub fn token_list(&self) -> Vec<serde_json::Value> {
        serde_json::from_str(&self.ok(&["token", "list", "--json"], "")).expect("token list JSON")
    }

    /// `token show NAME --json`, parsed.
    pub fn token_show(&self, name: &str) -> serde_json::Value {
        serde_json::from_str(&self.ok(&["token", "show", name, "--json"], "")).expect("token show JSON")
    }
}
