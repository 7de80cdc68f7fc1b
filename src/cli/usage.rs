//! Command-line parse errors on one line.
//!
//! clap prints a block for a bad command line (the error, tips, the usage and a hint); the
//! contract is one line on standard error saying what to fix, so the block is condensed to
//! its error, its details (e.g. the missing arguments) and its "a similar … exists" tips,
//! followed by the `--help` of the command that was meant. An unexpected extra value is not
//! repeated: it is most likely a secret typed where standard input was expected.

use std::ffi::OsString;

use clap::CommandFactory;
use clap::error::{ContextKind, ContextValue, ErrorKind};

use super::Cli;

/// The command path the arguments name, e.g. `["tokenwarden", "token", "add"]`, as far as
/// it can be told from known subcommand names (option values are skipped).
pub fn command_path(args: &[OsString]) -> Vec<String> {
    let mut root = Cli::command();
    root.build();
    let mut path = vec![root.get_name().to_owned()];
    let mut command = &root;
    let mut rest = args.iter().skip(1).filter_map(|arg| arg.to_str());
    while let Some(arg) = rest.next() {
        if arg == "--" {
            break;
        }
        if let Some(long) = arg.strip_prefix("--") {
            let takes_value =
                command.get_arguments().any(|a| a.get_long() == Some(long) && a.get_action().takes_values());
            if takes_value {
                rest.next();
            }
            continue;
        }
        if arg.starts_with('-') {
            continue;
        }
        if let Some(sub) = command.find_subcommand(arg) {
            path.push(sub.get_name().to_owned());
            command = sub;
        }
    }
    path
}

/// The subcommands of the command at `path` (without `help`), for "missing command" errors.
fn subcommands_at(path: &[String]) -> Vec<String> {
    let mut root = Cli::command();
    root.build();
    let mut command = &root;
    for name in path.iter().skip(1) {
        match command.find_subcommand(name) {
            Some(sub) => command = sub,
            None => break,
        }
    }
    command.get_subcommands().map(|sub| sub.get_name().to_owned()).filter(|name| name != "help").collect()
}

/// One line describing a parse error, ending with the `--help` to read.
pub fn one_line(err: &clap::Error, path: &[String]) -> String {
    let see = format!("(see '{} --help')", path.join(" "));
    if matches!(err.kind(), ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand | ErrorKind::MissingSubcommand) {
        return format!("missing command: one of {} {see}", subcommands_at(path).join(", "));
    }
    if err.kind() == ErrorKind::UnknownArgument
        && let Some(ContextValue::String(arg)) = err.get(ContextKind::InvalidArg)
        && !arg.starts_with('-')
    {
        return format!(
            "unexpected extra argument, not repeated here in case it is a secret (secrets are read from standard input) {see}"
        );
    }
    let rendered = err.render().to_string();
    let mut lines = rendered.lines();
    let headline = lines.next().unwrap_or_default();
    let headline = headline.strip_prefix("error: ").unwrap_or(headline).trim();
    let mut details = Vec::new();
    let mut tips = Vec::new();
    for line in lines {
        if line.starts_with("Usage:") || line.starts_with("For more information") {
            break;
        }
        let line = line.trim();
        match line.strip_prefix("tip: ") {
            Some(tip) if tip.contains("similar") => tips.push(tip),
            Some(_) => {}
            None if !line.is_empty() => details.push(line),
            None => {}
        }
    }
    let mut message = headline.to_owned();
    if !details.is_empty() {
        message.push(' ');
        message.push_str(&details.join(", "));
    }
    for tip in tips {
        message.push_str("; ");
        message.push_str(tip);
    }
    if message.is_empty() {
        message = err.kind().as_str().unwrap_or("invalid command line").to_owned();
    }
    format!("{message} {see}")
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;

    fn args(line: &str) -> Vec<OsString> {
        line.split_whitespace().map(OsString::from).collect()
    }

    fn describe(line: &str) -> String {
        let args = args(line);
        let err = Cli::try_parse_from(&args).map(|_| ()).expect_err("the command line is bad");
        one_line(&err, &command_path(&args))
    }

    #[test]
    fn the_path_skips_option_values_and_stops_at_unknown_words() {
        assert_eq!(command_path(&args("tokenwarden --config token token add x")), ["tokenwarden", "token", "add"]);
        assert_eq!(command_path(&args("tokenwarden --config=a.toml audit --token check")), ["tokenwarden", "audit"]);
        assert_eq!(command_path(&args("tokenwarden tokn list")), ["tokenwarden"]);
    }

    #[test]
    fn an_unknown_flag_is_named_with_the_similar_one_and_the_help_to_read() {
        assert_eq!(
            describe("tokenwarden token add t --secret glpat-x"),
            "unexpected argument '--secret' found; a similar argument exists: '--secret-stdin' \
             (see 'tokenwarden token add --help')"
        );
    }

    #[test]
    fn missing_arguments_are_listed_on_the_same_line() {
        assert_eq!(
            describe("tokenwarden token add t --provider p"),
            "the following required arguments were not provided: --kind <KIND> (see 'tokenwarden token add --help')"
        );
    }

    #[test]
    fn a_missing_subcommand_lists_the_choices() {
        let line = describe("tokenwarden token");
        assert!(line.starts_with("missing command: one of add, list, show"), "{line}");
        assert!(line.ends_with("(see 'tokenwarden token --help')"), "{line}");
        assert!(!line.contains("help,"), "{line}");
    }

    #[test]
    fn an_unexpected_value_is_not_repeated() {
        let line = describe("tokenwarden token show a glpat-not-for-logs");
        assert!(!line.contains("glpat-not-for-logs"), "{line}");
        assert!(line.contains("unexpected extra argument"), "{line}");
    }

    #[test]
    fn every_description_is_one_line() {
        for bad in [
            "tokenwarden",
            "tokenwarden tokn",
            "tokenwarden token add t --provider p --kind bogus",
            "tokenwarden check --warn 3x",
            "tokenwarden token add t --project 1 --group 2 --provider p --kind gitlab-oauth",
        ] {
            let line = describe(bad);
            assert!(!line.contains('\n') && !line.is_empty(), "{bad}: {line}");
        }
    }
}
