//! The README cannot drift from the command line: every `tokenwarden …` command shown in its
//! code blocks goes through the real argument parser (`Cli::try_parse_from`), so a renamed flag
//! or subcommand fails here instead of in a newcomer's terminal.
//!
//! A command is found where a shell would run it: the first word of a line (after a `$ `
//! prompt, `VAR=value` assignments, `sudo` or `exec`), of each part of a pipe or `&&`/`;` list,
//! or the program `systemd-run` starts; `tokenwarden-ctl`, the README's wrapper, counts as
//! `tokenwarden`. `\` continuations are joined; comments and redirections are dropped. A command
//! ending in `"$@"` (inside a wrapper) is a template: it may lack its subcommand or required
//! arguments, but every flag and subcommand it does name must exist.

mod common;

use clap::Parser;
use clap::error::ErrorKind;
use common::markdown::{shell_lines, words};
use tokenwarden::cli::Cli;

/// The documents whose commands are checked.
const DOCUMENTS: &[&str] = &["README.md", "docs/BENCHMARKS.md", "docs/RELIABILITY.md"];
/// The README shows at least this many `tokenwarden` commands (so a broken extractor, which
/// would find none, cannot pass).
const README_AT_LEAST: usize = 15;

/// Whether `word` separates commands (`|`, `||`, `&&`, `;`, `&`).
fn is_separator(word: &str) -> bool {
    matches!(word, "|" | "||" | "&&" | ";" | "&")
}

/// Whether `word` is a redirection; `Some(true)` when the file name is the next word.
fn redirection(word: &str) -> Option<bool> {
    let operator = word.trim_start_matches(|c: char| c.is_ascii_digit());
    for op in [">>", ">&", "<<<", "<<", "<", ">"] {
        if let Some(target) = operator.strip_prefix(op) {
            return Some(target.is_empty());
        }
    }
    None
}

/// A `tokenwarden` command found in a document.
#[derive(Debug, PartialEq)]
struct Found {
    /// The line it starts on.
    line: usize,
    /// Its arguments after `tokenwarden`.
    args: Vec<String>,
    /// Whether it passes on its caller's arguments (`"$@"`), so it may be incomplete.
    template: bool,
}

/// The arguments after `tokenwarden` of the command `segment` (one simple command), and
/// whether it is a template.
fn tokenwarden_args(segment: &[String]) -> Option<(Vec<String>, bool)> {
    let mut rest = segment.iter().map(String::as_str).skip_while(|word| is_assignment(word)).peekable();
    while rest.next_if(|word| matches!(*word, "sudo" | "/usr/bin/sudo" | "exec")).is_some() {}
    let mut program = rest.next()?;
    if program == "systemd-run" {
        loop {
            let option = rest.next()?;
            if !option.starts_with('-') {
                program = option;
                break;
            }
            if matches!(option, "-p" | "--property" | "-u" | "--unit" | "-E" | "--setenv") {
                rest.next();
            }
        }
    }
    let name = program.rsplit('/').next().unwrap_or(program);
    if !matches!(name, "tokenwarden" | "tokenwarden-ctl") {
        return None;
    }
    let (mut args, mut template) = (Vec::new(), false);
    while let Some(word) = rest.next() {
        match redirection(word) {
            Some(true) => {
                rest.next();
            }
            Some(false) => {}
            None if word == "$@" => template = true,
            None => args.push(word.to_owned()),
        }
    }
    Some((args, template))
}

fn is_assignment(word: &str) -> bool {
    word.split_once('=').is_some_and(|(name, _)| {
        !name.is_empty() && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') && !name.starts_with('-')
    })
}

/// Every `tokenwarden` command in the fenced code blocks of a Markdown text.
fn commands(markdown: &str) -> Vec<Found> {
    let mut found = Vec::new();
    for (line, text) in shell_lines(markdown) {
        let all = words(&text);
        for segment in all.split(|word| is_separator(word)) {
            if let Some((args, template)) = tokenwarden_args(segment) {
                found.push(Found { line, args, template });
            }
        }
    }
    found
}

/// Runs a command through the parser: `None` if it parses (or asks for help, or is a template
/// that only lacks what its caller passes on), else clap's error.
fn parse_error(found: &Found) -> Option<String> {
    let argv = std::iter::once("tokenwarden".to_owned()).chain(found.args.iter().cloned());
    let incomplete = [
        ErrorKind::MissingSubcommand,
        ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand,
        ErrorKind::MissingRequiredArgument,
    ];
    match Cli::try_parse_from(argv) {
        Ok(_) => None,
        Err(err) if matches!(err.kind(), ErrorKind::DisplayHelp | ErrorKind::DisplayVersion) => None,
        Err(err) if found.template && incomplete.contains(&err.kind()) => None,
        Err(err) => Some(err.to_string().lines().next().unwrap_or_default().to_owned()),
    }
}

#[test]
fn every_tokenwarden_command_in_the_docs_parses() {
    let root = env!("CARGO_MANIFEST_DIR");
    let mut failures = Vec::new();
    for document in DOCUMENTS {
        let text = std::fs::read_to_string(format!("{root}/{document}")).expect("read the document");
        let found = commands(&text);
        if *document == "README.md" {
            assert!(found.len() >= README_AT_LEAST, "only {} commands found in the README: {found:?}", found.len());
        }
        for command in found {
            if let Some(error) = parse_error(&command) {
                failures.push(format!("{document}:{}: tokenwarden {}: {error}", command.line, command.args.join(" ")));
            }
        }
    }
    assert!(failures.is_empty(), "commands the parser refuses:\n{}", failures.join("\n"));
}

#[test]
fn a_renamed_flag_or_subcommand_is_caught() {
    let markdown =
        "```sh\ntokenwarden token add t --provider p --kind oauth2 --secret x\ntokenwarden tokens list\n```\n";
    let refused: Vec<_> = commands(markdown).iter().filter_map(parse_error).collect();
    assert_eq!(refused.len(), 2, "{refused:?}");
    let template =
        "```sh\nexec /usr/local/bin/tokenwarden --config t.toml \"$@\"\nexec tokenwarden --confg t.toml \"$@\"\n```";
    let refused: Vec<_> = commands(template).iter().filter_map(parse_error).collect();
    assert_eq!(refused.len(), 1, "a wrapper may leave the subcommand to its caller, not misspell a flag: {refused:?}");
}

#[test]
fn continuations_comments_redirections_pipes_and_wrappers_are_understood() {
    let markdown = r#"
text outside a block: tokenwarden not-a-command
```sh
$ tokenwarden token add dbt-ci --provider gitlab \
    --kind gitlab-project-access-token --secret-stdin < token.txt   # a comment
tokenwarden token list --json | jq '.[] | .name' > names.txt 2>&1 && tokenwarden client list
TOKENWARDEN_DATABASE_URL=sqlite:///x.db sudo tokenwarden check --warn "7 d"
# tokenwarden commented out
exec systemd-run --quiet -p User=tokenwarden /usr/local/bin/tokenwarden --config /etc/t.toml check "$@"
install -m 0755 target/release/tokenwarden /usr/local/bin/tokenwarden
tokenwarden-ctl token list
```
"#;
    let found: Vec<(usize, String, bool)> =
        commands(markdown).into_iter().map(|found| (found.line, found.args.join(" "), found.template)).collect();
    let add = "token add dbt-ci --provider gitlab --kind gitlab-project-access-token --secret-stdin";
    assert_eq!(
        found,
        [
            (4, add.to_owned(), false),
            (6, "token list --json".to_owned(), false),
            (6, "client list".to_owned(), false),
            (7, "check --warn 7 d".to_owned(), false),
            (9, "--config /etc/t.toml check".to_owned(), true),
            (11, "token list".to_owned(), false),
        ]
    );
}
