//! Helpers shared by the integration tests: a throwaway directory per test and a
//! `tokenwarden` command that works on a database inside it.

#![allow(dead_code)]

use std::path::{Path, PathBuf};

use assert_cmd::Command;

/// A fresh directory holding one test's database and key.
pub struct Sandbox {
    pub dir: tempfile::TempDir,
}

impl Sandbox {
    pub fn new() -> Self {
        Self { dir: tempfile::tempdir().expect("temp dir") }
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

    /// Adds a GitLab provider named `gitlab`.
    pub fn add_gitlab_provider(&self) {
        self.ok(&["provider", "add", "gitlab", "--kind", "gitlab", "--url", "https://gitlab.example.com"], "");
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
