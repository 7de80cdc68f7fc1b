//! The file sink: the token's current secret written atomically to a path, optionally followed
//! by a program that makes its consumer reload.
//!
//! A temporary file in the same directory is created with the sink's mode before any byte of
//! the secret is written, synced, renamed over the target and the directory synced, so a reader
//! sees the old file or the new one, never a part, and a crash leaves at most a temporary file
//! (named `.NAME.tokenwarden-*.tmp`) that the next delivery does not reuse.

use std::fs::{File, OpenOptions, Permissions};
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use chrono::{DateTime, SecondsFormat, Utc};
use secrecy::{ExposeSecret, SecretString};
use serde::{Deserialize, Serialize};
use zeroize::Zeroizing;

/// How the secret is written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum FileFormat {
    /// The secret alone, no newline.
    Raw,
    /// `{"token","version","secret","expires_at"}` and a newline.
    Json,
    /// `VAR=secret` and a newline (for `EnvironmentFile=` and shells).
    Env,
}

/// A file sink's settings (stored as JSON on the sink; never a secret).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileSettings {
    /// The file to write.
    pub path: PathBuf,
    /// Its permission bits, set before the secret is written.
    pub mode: u32,
    /// How the secret is written.
    pub format: FileFormat,
    /// The variable name for the `env` format.
    pub env_var: String,
    /// A program and its arguments run (without a shell) after the file is in place.
    pub exec: Vec<String>,
    /// How long the program may run before it is killed and the delivery counted failed.
    pub exec_timeout_secs: u64,
}

/// What one delivery writes.
pub struct Contents<'a> {
    /// The token's name.
    pub token: &'a str,
    /// The version.
    pub version: i64,
    /// The secret.
    pub secret: &'a SecretString,
    /// When it expires.
    pub expires_at: Option<DateTime<Utc>>,
}

/// The bytes of the file for `contents` in `settings.format`.
fn render(settings: &FileSettings, contents: &Contents<'_>) -> Zeroizing<Vec<u8>> {
    let secret = contents.secret.expose_secret();
    Zeroizing::new(match settings.format {
        FileFormat::Raw => secret.as_bytes().to_vec(),
        FileFormat::Json => {
            let body = serde_json::json!({
                "token": contents.token,
                "version": contents.version,
                "secret": secret,
                "expires_at": contents.expires_at.map(|t| t.to_rfc3339_opts(SecondsFormat::Secs, true)),
            });
            format!("{body}\n").into_bytes()
        }
        FileFormat::Env => format!("{}={secret}\n", settings.env_var).into_bytes(),
    })
}

/// Writes the file atomically (blocking); the error names the step that failed.
pub fn write(settings: &FileSettings, contents: &Contents<'_>) -> Result<(), String> {
    let bytes = render(settings, contents);
    write_atomically(&settings.path, settings.mode, &bytes)
}

fn write_atomically(path: &Path, mode: u32, bytes: &[u8]) -> Result<(), String> {
    let dir = path.parent().filter(|dir| !dir.as_os_str().is_empty()).unwrap_or(Path::new("."));
    let name = path.file_name().ok_or_else(|| format!("{} names no file", path.display()))?;
    let suffix: u64 = rand::random();
    let temporary = dir.join(format!(".{}.tokenwarden-{suffix:016x}.tmp", name.to_string_lossy()));
    let step = |what: &str, err: std::io::Error| format!("cannot {what} {}: {err}", temporary.display());
    let mut file = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(&temporary)
        .map_err(|err| format!("cannot create a temporary file in {}: {err}", dir.display()))?;
    let written = file
        .set_permissions(Permissions::from_mode(mode))
        .map_err(|err| step("set the mode of", err))
        .and_then(|()| file.write_all(bytes).map_err(|err| step("write", err)))
        .and_then(|()| file.sync_all().map_err(|err| step("sync", err)))
        .and_then(|()| {
            std::fs::rename(&temporary, path)
                .map_err(|err| format!("cannot rename {} to {}: {err}", temporary.display(), path.display()))
        });
    if let Err(err) = written {
        let _ = std::fs::remove_file(&temporary);
        return Err(err);
    }
    File::open(dir).and_then(|dir| dir.sync_all()).map_err(|err| format!("cannot sync {}: {err}", dir.display()))
}

/// Runs the sink's program, if any: no shell, an empty environment but `PATH`, no standard
/// input; killed after the timeout. The secret is in neither its arguments nor its environment.
pub async fn run_exec(settings: &FileSettings) -> Result<(), String> {
    let Some((program, args)) = settings.exec.split_first() else { return Ok(()) };
    let mut command = tokio::process::Command::new(program);
    command
        .args(args)
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_else(|| "/usr/bin:/bin".into()))
        .env("TOKENWARDEN_SINK_FILE", &settings.path)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .kill_on_drop(true);
    let mut child = command.spawn().map_err(|err| format!("cannot run {program}: {err}"))?;
    let timeout = Duration::from_secs(settings.exec_timeout_secs);
    match tokio::time::timeout(timeout, child.wait()).await {
        Ok(Ok(status)) if status.success() => Ok(()),
        Ok(Ok(status)) => Err(format!("{program} exited with {status}")),
        Ok(Err(err)) => Err(format!("cannot wait for {program}: {err}")),
        Err(_) => {
            let _ = child.kill().await;
            Err(format!("{program} did not finish within {} s and was killed", timeout.as_secs()))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(dir: &Path, format: FileFormat) -> FileSettings {
        FileSettings {
            path: dir.join("token"),
            mode: 0o600,
            format,
            env_var: "GITLAB_TOKEN".into(),
            exec: Vec::new(),
            exec_timeout_secs: 5,
        }
    }

    #[test]
    fn each_format_is_written_atomically_with_the_mode_and_no_temporary_file_is_left() {
        let dir = tempfile::tempdir().unwrap();
        let secret = SecretString::from("glpat-abc");
        let contents = Contents { token: "ci", version: 3, secret: &secret, expires_at: None };
        for (format, expected) in [
            (FileFormat::Raw, "glpat-abc".to_owned()),
            (FileFormat::Env, "GITLAB_TOKEN=glpat-abc\n".to_owned()),
            (
                FileFormat::Json,
                "{\"expires_at\":null,\"secret\":\"glpat-abc\",\"token\":\"ci\",\"version\":3}\n".to_owned(),
            ),
        ] {
            let settings = settings(dir.path(), format);
            write(&settings, &contents).unwrap();
            assert_eq!(std::fs::read_to_string(&settings.path).unwrap(), expected);
            let mode = std::fs::metadata(&settings.path).unwrap().permissions().mode() & 0o777;
            assert_eq!(mode, 0o600);
        }
        let names: Vec<_> = std::fs::read_dir(dir.path()).unwrap().map(|e| e.unwrap().file_name()).collect();
        assert_eq!(names, ["token"], "no temporary file left");
    }

    #[test]
    fn a_missing_directory_is_an_error_naming_it() {
        let dir = tempfile::tempdir().unwrap();
        let settings = settings(&dir.path().join("missing"), FileFormat::Raw);
        let secret = SecretString::from("x");
        let err =
            write(&settings, &Contents { token: "t", version: 1, secret: &secret, expires_at: None }).unwrap_err();
        assert!(err.contains("missing"), "{err}");
    }

    #[tokio::test]
    async fn the_program_runs_without_the_secret_and_its_failure_and_timeout_are_errors() {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("env");
        let mut settings = settings(dir.path(), FileFormat::Raw);
        settings.exec = vec!["sh".into(), "-c".into(), format!("env > {}", out.display())];
        run_exec(&settings).await.unwrap();
        let env = std::fs::read_to_string(&out).unwrap();
        assert!(env.contains("TOKENWARDEN_SINK_FILE=") && !env.contains("glpat"), "{env}");
        settings.exec = vec!["false".into()];
        assert!(run_exec(&settings).await.unwrap_err().contains("exited with"));
        settings.exec = vec!["sleep".into(), "5".into()];
        settings.exec_timeout_secs = 1;
        assert!(run_exec(&settings).await.unwrap_err().contains("did not finish"));
    }
}
