//! `tokenwarden client add|list|update|remove|rotate-key|rotate-webhook-secret`.

use chrono::Utc;
use secrecy::ExposeSecret;
use serde_json::json;

use super::args::{ClientAddArgs, ClientCommand, ClientRotateArgs, ClientUpdateArgs};
use super::context::{KeyCreation, create_store, open_cipher, open_store};
use super::output::{print_json, print_table, text};
use super::provider::validate_http_url;
use super::{CLI_ACTOR, CliError};
use crate::config::Settings;
use crate::crypto::generate_webhook_secret;
use crate::domain::ClientRole;
use crate::store::client_update::{self, ClientChange, WebhookChange};
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
        ClientCommand::Update(args) => update(settings, args).await,
        ClientCommand::Remove { name } => {
            let store = open_store(&settings).await?;
            store.run(move |conn| clients::remove(conn, &name, CLI_ACTOR, Utc::now())).await?;
            Ok(())
        }
        ClientCommand::RotateKey(args) => rotate_key(settings, args).await,
        ClientCommand::RotateWebhookSecret(args) => rotate_webhook_secret(settings, args).await,
    }
}

fn overlap_of(args: &ClientRotateArgs) -> Result<chrono::TimeDelta, CliError> {
    chrono::TimeDelta::from_std(args.overlap.get())
        .map_err(|_| CliError::Usage(format!("--overlap {} is too long", args.overlap)))
}

/// A new API key for the client, printed once as JSON like `client add`'s; the old key works
/// until the overlap ends.
async fn rotate_key(settings: Settings, args: ClientRotateArgs) -> Result<(), CliError> {
    let overlap = overlap_of(&args)?;
    let store = open_store(&settings).await?;
    let name = args.name.clone();
    let key = store.run(move |conn| clients::rotate_key(conn, &name, overlap, CLI_ACTOR, Utc::now())).await?;
    eprintln!("client '{}': the previous key works for {} more", args.name, args.overlap);
    print_json(&json!({"name": args.name, "api_key": key.expose()}))
}

/// A new webhook signing secret for the client, printed once as JSON; deliveries carry a second
/// signature made with the old secret until the overlap ends.
async fn rotate_webhook_secret(settings: Settings, args: ClientRotateArgs) -> Result<(), CliError> {
    let overlap = overlap_of(&args)?;
    let store = open_store(&settings).await?;
    let cipher = open_cipher(&settings, &store, KeyCreation::Forbidden).await?;
    let (name, fresh) = (args.name.clone(), generate_webhook_secret());
    let stored = fresh.clone();
    store
        .run(move |conn| clients::rotate_webhook_secret(conn, &cipher, &name, &stored, overlap, CLI_ACTOR, Utc::now()))
        .await?;
    eprintln!("client '{}': deliveries are signed with the previous secret too for {}", args.name, args.overlap);
    print_json(&json!({"name": args.name, "webhook_secret": fresh.expose_secret()}))
}

/// Changes a client's grants or webhook; a webhook set on a client that had none prints its new
/// signing secret once, as JSON (like `client add`).
async fn update(settings: Settings, args: ClientUpdateArgs) -> Result<(), CliError> {
    let webhook = match (&args.webhook_url, args.no_webhook) {
        (Some(url), _) => WebhookChange::Set(validate_http_url("--webhook-url", url)?),
        (None, true) => WebhookChange::Remove,
        (None, false) => WebhookChange::Keep,
    };
    let sets_webhook = matches!(webhook, WebhookChange::Set(_));
    let change = ClientChange { grant: args.grants, revoke: args.revokes, webhook };
    let store = open_store(&settings).await?;
    let creation = if sets_webhook { KeyCreation::Allowed } else { KeyCreation::Forbidden };
    let cipher = open_cipher(&settings, &store, creation).await?;
    let (name, fresh) = (args.name, generate_webhook_secret());
    let updated = store
        .run(move |conn| client_update::update(conn, &cipher, &name, &change, fresh, CLI_ACTOR, Utc::now()))
        .await?;
    if let Some(secret) = &updated.webhook_secret {
        return print_json(&json!({"name": updated.client.name, "webhook_secret": secret.expose_secret()}));
    }
    if args.output.json {
        return print_json(&updated.client);
    }
    let client = &updated.client;
    let grants = if client.grants.is_empty() { "none".to_owned() } else { client.grants.join(", ") };
    eprintln!("updated client '{}': grants {grants}; webhook {}", client.name, text(client.webhook_url.as_deref()));
    Ok(())
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
