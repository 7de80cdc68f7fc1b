//! `token remove NAME --revoke [--force]`: revoke the credential at the provider, then remove
//! the token (see [`crate::engine::revoke`]).

use super::context::{KeyCreation, open_cipher, open_store};
use super::engine::engine_context;
use super::{CLI_ACTOR, CliError};
use crate::config::Settings;
use crate::domain::TokenName;
use crate::engine::revoke::{RevokeError, Revoked, revoke_and_remove as revoke};
use crate::store::{StoreError, clients, tokens};

/// Revokes and removes `name`; readers granted it need `yes` (checked before anything is revoked).
pub async fn revoke_and_remove(settings: Settings, name: TokenName, yes: bool, force: bool) -> Result<(), CliError> {
    let store = open_store(&settings).await?;
    let readers = {
        let name = name.clone();
        store
            .run(move |conn| {
                let token = tokens::find(conn, &name)?;
                clients::granted(conn, &token.id)
            })
            .await?
    };
    if !readers.is_empty() && !yes {
        return Err(StoreError::StillGranted { token: name.to_string(), clients: readers.join(", ") }.into());
    }
    let cipher = open_cipher(&settings, &store, KeyCreation::Forbidden).await?;
    let context = engine_context(&settings, store.clone(), cipher, "cli")?;
    let removal = match revoke(&context, &name, force, CLI_ACTOR).await {
        Ok(removal) => removal,
        Err(RevokeError::Store(err)) => return Err(err.into()),
        Err(err @ RevokeError::NotRevoked { .. }) => {
            return Err(CliError::Failed(format!("{err} (nothing changed; --force removes it anyway)")));
        }
    };
    let grants = if removal.readers.is_empty() {
        String::new()
    } else {
        format!(" and the grants of client(s) {}", removal.readers.join(", "))
    };
    match removal.revoked {
        Revoked::AtProvider => eprintln!("revoked token '{name}' at its provider and removed it{grants}"),
        Revoked::AlreadyInvalid { successor_may_live } => {
            eprintln!(
                "the provider no longer accepted token '{name}' (already revoked or expired); removed it{grants}"
            );
            if successor_may_live {
                eprintln!(
                    "warning: '{name}' had lost a rotation's answer, so the token GitLab issued then may still be active: revoke it in GitLab (same name)"
                );
            }
        }
        Revoked::Forced { error } => {
            eprintln!("warning: the revocation failed ({error}); removed token '{name}' anyway (--force){grants}");
            eprintln!("warning: the credential may still work at the provider: revoke it there");
        }
    }
    Ok(())
}
