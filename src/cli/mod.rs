//! The `tokenwarden` command line: one binary for the daemon and the operator commands.
//!
//! Secrets are never taken as arguments (they would show in `ps`); they come on standard
//! input. Exit codes: 0 success, 1 the operation failed, 2 bad usage or bad input, each
//! failure with a one-line message on standard error saying what to fix.

mod args;
mod audit;
mod check;
mod client;
mod context;
mod engine;
mod error;
mod output;
mod provider;
mod secret_input;
mod serve;
mod systemd;
mod token;
mod token_rotate;

use std::process::ExitCode;

use clap::Parser;

pub use args::{Cli, Command};
pub use error::CliError;

use crate::config;

/// The actor recorded in history and audit rows for changes made on the command line.
pub const CLI_ACTOR: &str = "cli";

/// Parses the command line, runs the command and returns the process exit code.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    let is_check = matches!(cli.command, Command::Check(_));
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(runtime) => runtime,
        Err(err) => return report(&CliError::Failed(format!("cannot start the async runtime: {err}"))),
    };
    match runtime.block_on(run(cli)) {
        Ok(code) => code,
        Err(err) if is_check => check::unknown(&err),
        Err(err) => report(&err),
    }
}

/// Prints the error on one line and maps it to its exit code.
fn report(err: &CliError) -> ExitCode {
    eprintln!("tokenwarden: {err}");
    ExitCode::from(err.exit_code())
}

/// Loads settings, sets up logging and dispatches to the command; most commands exit 0 on
/// success, `check` with its monitoring status.
async fn run(cli: Cli) -> Result<ExitCode, CliError> {
    let settings = config::load(&cli.global.flag_values(&cli.command))?;
    let default_level = if matches!(cli.command, Command::Serve(_)) { "info" } else { "warn" };
    crate::telemetry::init(settings.log_format, default_level);
    match cli.command {
        Command::Serve(_) => serve::run(settings).await,
        Command::Provider(command) => provider::run(settings, command).await,
        Command::Token(command) => token::run(settings, command).await,
        Command::Client(command) => client::run(settings, command).await,
        Command::Audit(args) => audit::run(settings, args).await,
        Command::Check(args) => return check::run(settings, args).await,
    }
    .map(|()| ExitCode::SUCCESS)
}
