//! `tokenwarden token authorize NAME`: prints a consent link. Whoever opens it and approves at
//! the provider connects their account as NAME (or re-authorises NAME); the grant arrives at
//! the daemon's `/oauth/callback`, so `serve` must be reachable at `public_url`.

use super::args::TokenAuthorizeArgs;
use super::context::{KeyCreation, create_store, open_cipher};
use super::engine::engine_context;
use super::output::print_json;
use super::{CLI_ACTOR, CliError};
use crate::config::Settings;
use crate::oauth::{LinkRequest, create_link};
use crate::store::{StoreError, tokens};

/// Runs `token authorize`.
pub async fn run(settings: Settings, args: TokenAuthorizeArgs) -> Result<(), CliError> {
    let store = create_store(&settings).await?;
    let provider = match args.provider {
        Some(provider) => provider,
        None => {
            let name = args.name.clone();
            match store.run(move |conn| tokens::find(conn, &name)).await {
                Ok(token) => token.provider,
                Err(StoreError::NotFound { .. }) => {
                    return Err(CliError::Usage(format!(
                        "token '{}' does not exist yet: give --provider to connect a new grant",
                        args.name
                    )));
                }
                Err(err) => return Err(err.into()),
            }
        }
    };
    let cipher = open_cipher(&settings, &store, KeyCreation::Allowed).await?;
    let context = engine_context(&settings, store, cipher, "cli")?;
    let request =
        LinkRequest { token: args.name, provider, kind: args.kind, scopes: args.scopes, return_to: args.return_to };
    let timeout = settings.oauth.authorization_timeout.get();
    let link = create_link(&context, request, &settings.redirect_uri(), timeout, CLI_ACTOR).await?;
    if args.output.json {
        return print_json(&link);
    }
    println!("{}", link.url);
    eprintln!(
        "open this link (valid until {}) and approve at the provider; the grant is stored as '{}' when the browser returns to tokenwarden's /oauth/callback",
        super::output::time(Some(link.expires_at)),
        link.token
    );
    Ok(())
}
