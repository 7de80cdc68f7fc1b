//! `tokenwarden client add|list|remove`.

use chrono::Utc;
use secrecy::ExposeSecret;
use serde_json::json;

use super::args::{ClientAddArgs, ClientCommand};
use super::context::{KeyCreation, create_store, open_cipher, open_store};
use super::output::{print_json, print_table, text};
use super::provider::validate_http_url;
use super::{CLI_ACTOR, CliError};
use crate::config::Settings;
use crate::crypto::generate_webhook_secret;
use crate::domain::ClientRole;
use crate::store::clients::{self, NewClient};

/// Runs a `client` subcommand.
pub async fn run(settings: Settings, command: ClientCommand) -> Result<(), CliError> {
    match command {
        ClientCommand::Add(args) => add(settings, args).await,
        ClientCommand::List(output) => {
            let store = open_store(&settings).await?;
            let list = store.run(clients::list).await?;
            if output.json {
                return print_json(&list);
            }
            let rows: Vec<Vec<String>> = list
                .iter()
                .map(|c| {
                    vec![
                        c.name.to_string(),
                        c.role.to_string(),
                        if c.grants.is_empty() { "-".to_owned() } else { c.grants.join(",") },
                        text(c.webhook_url.as_deref()),
                    ]
                })
                .collect();
            print_table(&["NAME", "ROLE", "GRANTS", "WEBHOOK"], &rows);
            Ok(())
        }
        ClientCommand::Remove { name } => {
            let store = open_store(&settings).await?;
            store.run(move |conn| clients::remove(conn, &name, CLI_ACTOR, Utc::now())).await?;
            Ok(())
        }
    }
}

/// Creates the client and prints its key (and webhook secret) once, as JSON.
async fn add(settings: Settings, args: ClientAddArgs) -> Result<(), CliError> {
    if args.role == ClientRole::Operator && !args.grants.is_empty() {
        return Err(CliError::Usage("--grant applies to readers; an operator may already read every token".into()));
    }
    let webhook_url = args.webhook.as_deref().map(|u| validate_http_url("--webhook", u)).transpose()?;
    let new = NewClient { name: args.name, role: args.role, grants: args.grants, webhook_url };
    let webhook_secret = new.webhook_url.as_ref().map(|_| generate_webhook_secret());
    let store = create_store(&settings).await?;
    let cipher = open_cipher(&settings, &store, KeyCreation::Allowed).await?;
    let created =
        store.run(move |conn| clients::insert(conn, &cipher, &new, webhook_secret, CLI_ACTOR, Utc::now())).await?;
    let mut shown = json!({
        "name": created.client.name,
        "api_key": created.api_key.expose(),
    });
    if let Some(secret) = &created.webhook_secret {
        shown["webhook_secret"] = json!(secret.expose_secret());
    }
    print_json(&shown)
}
