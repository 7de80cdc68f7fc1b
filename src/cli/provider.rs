//! `tokenwarden provider add|list|show|remove` (`update` lives in `provider_update`).

use chrono::Utc;

use super::args::{ProviderAddArgs, ProviderCommand};
use super::context::{KeyCreation, create_store, open_cipher, open_store};
use super::engine::engine_settings;
use super::output::{print_fields, print_json, print_table, text, time};
use super::secret_input::read_secret_line;
use super::{CLI_ACTOR, CliError};
use crate::config::Settings;
use crate::domain::{ClientAuth, ProviderKind, ProviderName};
use crate::providers::build_http_client;
use crate::providers::discovery::{Discovered, DiscoveryError, discover, pick_client_auth};
use crate::store::providers::{self, NewProvider, ProviderEndpoints};

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
        ProviderCommand::Show { name, output } => show(settings, name, output.json).await,
        ProviderCommand::Update(args) => super::provider_update::run(settings, args).await,
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

/// The URLs `provider add` was given, validated.
struct AddUrls {
    url: Option<String>,
    token_url: Option<String>,
    redirect_uri: Option<String>,
    issuer: Option<String>,
    authorize_url: Option<String>,
}

/// `--scope` values as stored (space-separated), each checked; `None` when none were given.
pub fn scopes_flag(scopes: &[String]) -> Result<Option<String>, CliError> {
    if scopes.is_empty() {
        return Ok(None);
    }
    crate::oauth::link::check_scope_list(scopes).map_err(|err| CliError::Usage(err.to_string()))?;
    Ok(Some(scopes.join(" ")))
}

/// Validates the flags, discovers the endpoints when `--issuer` is given, reads the client
/// secret, and stores the provider — nothing is stored when any step fails.
async fn add(settings: Settings, args: ProviderAddArgs) -> Result<(), CliError> {
    let mut urls = check_add_flags(&args)?;
    let mut endpoints = ProviderEndpoints::default_for(args.kind);
    if let Some(issuer) = &urls.issuer {
        let found = discover_endpoints(&settings, issuer).await?;
        if args.fields.client_auth.is_none() {
            endpoints.client_auth =
                pick_client_auth(found.auth_methods.as_deref()).map_err(|err| CliError::Usage(err.to_string()))?;
        }
        urls.token_url = Some(found.token_endpoint);
        endpoints.issuer = Some(found.issuer);
        endpoints.authorization_url = found.authorization_endpoint;
        endpoints.revocation_url = found.revocation_endpoint;
    }
    if let Some(method) = args.fields.client_auth {
        endpoints.client_auth = method;
    }
    if let Some(url) = urls.authorize_url.clone() {
        endpoints.authorization_url = Some(url);
    }
    endpoints.scopes = scopes_flag(&args.fields.scopes)?;
    // GitLab's refreshes must repeat the redirect URI of the authorisation: record the one
    // tokenwarden's consent links use, so both agree from the start.
    if args.kind == ProviderKind::Gitlab && args.fields.client_id.is_some() && urls.redirect_uri.is_none() {
        urls.redirect_uri = Some(settings.redirect_uri());
    }
    let client_secret =
        if args.fields.client_secret_stdin { Some(read_secret_line("OAuth client secret")?) } else { None };
    let new = NewProvider {
        name: args.name,
        kind: args.kind,
        url: urls.url,
        token_url: urls.token_url,
        client_id: args.fields.client_id,
        client_secret,
        redirect_uri: urls.redirect_uri,
    };
    let store = create_store(&settings).await?;
    let cipher = open_cipher(&settings, &store, KeyCreation::Allowed).await?;
    let provider =
        store.run(move |conn| providers::insert_with(conn, &cipher, &new, &endpoints, CLI_ACTOR, Utc::now())).await?;
    eprintln!("added provider '{}' ({}, client auth {})", provider.name, provider.kind, provider.client_auth);
    if provider.client_id.is_some() {
        let redirect_uri = provider.redirect_uri.clone().unwrap_or_else(|| settings.redirect_uri());
        eprintln!("register this redirect URI with its OAuth application: {redirect_uri}");
    }
    Ok(())
}

/// Checks that the flags fit the provider's kind and that every URL is usable.
fn check_add_flags(args: &ProviderAddArgs) -> Result<AddUrls, CliError> {
    let usage = |message: &str| Err(CliError::Usage(message.to_owned()));
    let fields = &args.fields;
    let urls = AddUrls {
        url: fields.url.as_deref().map(|u| validate_http_url("--url", u)).transpose()?,
        token_url: fields.token_url.as_deref().map(|u| validate_http_url("--token-url", u)).transpose()?,
        redirect_uri: fields.redirect_uri.as_deref().map(|u| validate_http_url("--redirect-uri", u)).transpose()?,
        issuer: args.issuer.as_deref().map(|u| validate_http_url("--issuer", u)).transpose()?,
        authorize_url: fields.authorize_url.as_deref().map(|u| validate_http_url("--authorize-url", u)).transpose()?,
    };
    if args.kind == ProviderKind::Gitlab && urls.authorize_url.is_some() {
        return usage("a gitlab provider takes no --authorize-url ({url}/oauth/authorize is used)");
    }
    match args.kind {
        ProviderKind::Gitlab if urls.url.is_none() => {
            return usage("a gitlab provider needs --url (e.g. https://gitlab.example.com)");
        }
        ProviderKind::Gitlab if urls.token_url.is_some() || urls.issuer.is_some() => {
            return usage("a gitlab provider takes --url, not --token-url or --issuer ({url}/oauth/token is used)");
        }
        ProviderKind::Gitlab if fields.client_id.is_some() != fields.client_secret_stdin => {
            return usage("give --client-id and --client-secret-stdin together");
        }
        ProviderKind::Oauth2 if urls.token_url.is_none() && urls.issuer.is_none() => {
            return usage("an oauth2 provider needs --token-url (or --issuer to discover it)");
        }
        ProviderKind::Oauth2 if fields.client_id.is_none() => return usage("an oauth2 provider needs --client-id"),
        ProviderKind::Oauth2 if !fields.client_secret_stdin && fields.client_auth != Some(ClientAuth::None) => {
            return usage("an oauth2 provider needs --client-secret-stdin (or --client-auth none for a public client)");
        }
        _ => {}
    }
    Ok(urls)
}

/// Reads the issuer's metadata; any failure is bad input (exit 2) and stores nothing.
async fn discover_endpoints(settings: &Settings, issuer: &str) -> Result<Discovered, CliError> {
    let http = build_http_client(engine_settings(settings).http).map_err(|err| CliError::Failed(err.to_string()))?;
    discover(&http, issuer).await.map_err(|err| match err {
        // The network failed: the same command may work later.
        DiscoveryError::NoAnswer { unreachable: true, .. } => CliError::Failed(err.to_string()),
        _ => CliError::Usage(err.to_string()),
    })
}

/// `provider show NAME`: everything but the secret, including what discovery found.
async fn show(settings: Settings, name: ProviderName, json: bool) -> Result<(), CliError> {
    let settings_redirect = settings.redirect_uri();
    let store = open_store(&settings).await?;
    let provider = store.run(move |conn| providers::find(conn, &name)).await?;
    if json {
        return print_json(&provider);
    }
    print_fields(&[
        ("name", provider.name.to_string()),
        ("kind", provider.kind.to_string()),
        ("url", text(provider.url.as_deref())),
        ("issuer", text(provider.issuer.as_deref())),
        ("token endpoint", text(provider.token_url.as_deref())),
        ("authorization endpoint", text(provider.authorization_url.as_deref())),
        ("revocation endpoint", text(provider.revocation_url.as_deref())),
        ("client id", text(provider.client_id.as_deref())),
        ("client secret", if provider.has_client_secret { "stored" } else { "-" }.to_owned()),
        ("client auth", provider.client_auth.to_string()),
        ("redirect uri (register it)", provider.redirect_uri.clone().unwrap_or_else(|| settings_redirect.clone())),
        ("scopes", text(provider.scopes.as_deref())),
        ("created", time(Some(provider.created_at))),
    ]);
    Ok(())
}
