//! Reading a secret from standard input: exactly one non-empty line.

use std::io::{BufRead, IsTerminal, Read};

use secrecy::SecretString;

use super::CliError;

/// Reads one line from standard input as a secret, with `what` naming it in errors
/// (e.g. "access token"). Refuses empty input and input of more than one line.
pub fn read_secret_line(what: &str) -> Result<SecretString, CliError> {
    let stdin = std::io::stdin();
    if stdin.is_terminal() {
        eprintln!("Paste the {what} and press Enter:");
    }
    let mut lock = stdin.lock();
    let mut line = String::new();
    lock.read_line(&mut line)
        .map_err(|err| CliError::Usage(format!("cannot read the {what} from standard input: {err}")))?;
    let secret = line.trim_end_matches(['\r', '\n']).to_owned();
    line.clear();
    if !std::io::stdin().is_terminal() {
        let mut rest = String::new();
        let _ = lock.read_to_string(&mut rest);
        if !rest.trim().is_empty() {
            return Err(CliError::Usage(format!(
                "standard input holds more than one line; give the {what} alone on one line"
            )));
        }
    }
    if secret.trim().is_empty() {
        return Err(CliError::Usage(format!(
            "no {what} on standard input: pipe it in as one line (e.g. `tokenwarden … < file`)"
        )));
    }
    if secret.trim() != secret {
        return Err(CliError::Usage(format!(
            "the {what} on standard input has leading or trailing white space; remove it"
        )));
    }
    Ok(SecretString::from(secret))
}
