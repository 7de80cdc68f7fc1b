//! `tokenwarden provider add|list|remove`.

use chrono::Utc;

use super::args::{ProviderAddArgs, ProviderCommand};
use super::context::{KeyCreation, create_store, open_cipher, open_store};
use super::output::{print_json, print_table, text};
use super::secret_input::read_secret_line;
use super::{CLI_ACTOR, CliError};
use crate::config::Settings;
use crate::domain::ProviderKind;
use crate::store::providers::{self, NewProvider};

/// Runs a `provider` subcommand.
pub async fn run(settings: Settings, command: ProviderCommand) -> Result<(), CliError> {
    match command {
        ProviderCommand::Add(args) => add(settings, args).await,
        ProviderCommand::List(output) => {
            let store = open_store(&settings).await?;
            let list = store.run(providers::list).await?;
            if output.json {
                return print_json(&list);
            }
            let rows: Vec<Vec<String>> = list
                .iter()
                .map(|p| {
                    vec![
                        p.name.to_string(),
                        p.kind.to_string(),
                        text(p.url.as_deref().or(p.token_url.as_deref())),
                        text(p.client_id.as_deref()),
                    ]
                })
                .collect();
            print_table(&["NAME", "KIND", "URL", "CLIENT ID"], &rows);
            Ok(())
        }
        ProviderCommand::Remove { name } => {
            let store = open_store(&settings).await?;
            store.run(move |conn| providers::remove(conn, &name, CLI_ACTOR, Utc::now())).await?;
            Ok(())
        }
    }
}

/// Checks that `value` is an absolute http(s) URL with a host; `flag` names it in errors.
pub fn validate_http_url(flag: &str, value: &str) -> Result<String, CliError> {
    let invalid = |why: &str| CliError::Usage(format!("{flag} '{value}' is not usable: {why}"));
    let parsed = url::Url::parse(value).map_err(|err| invalid(&err.to_string()))?;
    if !matches!(parsed.scheme(), "http" | "https") {
        return Err(invalid("use an http:// or https:// URL"));
    }
    if parsed.host_str().is_none_or(str::is_empty) {
        return Err(invalid("the URL has no host"));
    }
    Ok(value.trim_end_matches('/').to_owned())
}

/// Validates the flags for the provider's kind, reads the client secret, and stores it.
async fn add(settings: Settings, args: ProviderAddArgs) -> Result<(), CliError> {
    let usage = |message: &str| Err(CliError::Usage(message.to_owned()));
    let url = args.url.as_deref().map(|u| validate_http_url("--url", u)).transpose()?;
    let token_url = args.token_url.as_deref().map(|u| validate_http_url("--token-url", u)).transpose()?;
    let redirect_uri = args.redirect_uri.as_deref().map(|u| validate_http_url("--redirect-uri", u)).transpose()?;
    match args.kind {
        ProviderKind::Gitlab if url.is_none() => {
            return usage("a gitlab provider needs --url (e.g. https://gitlab.example.com)");
        }
        ProviderKind::Gitlab if token_url.is_some() => {
            return usage("a gitlab provider takes --url, not --token-url ({url}/oauth/token is used)");
        }
        ProviderKind::Oauth2 if token_url.is_none() => return usage("an oauth2 provider needs --token-url"),
        ProviderKind::Oauth2 if args.client_id.is_none() || !args.client_secret_stdin => {
            return usage("an oauth2 provider needs --client-id and --client-secret-stdin");
        }
        _ => {}
    }
    if args.client_id.is_some() != args.client_secret_stdin {
        return usage("give --client-id and --client-secret-stdin together");
    }
    let client_secret = if args.client_secret_stdin { Some(read_secret_line("OAuth client secret")?) } else { None };
    let new = NewProvider {
        name: args.name,
        kind: args.kind,
        url,
        token_url,
        client_id: args.client_id,
        client_secret,
        redirect_uri,
    };
    let store = create_store(&settings).await?;
    let cipher = open_cipher(&settings, &store, KeyCreation::Allowed).await?;
    let provider = store.run(move |conn| providers::insert(conn, &cipher, &new, CLI_ACTOR, Utc::now())).await?;
    eprintln!("added provider '{}' ({})", provider.name, provider.kind);
    Ok(())
}
