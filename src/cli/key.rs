//! `tokenwarden key rotate|status`: re-sealing the store under a new master key while the daemon
//! runs, and how far that got (see README, "Rotating the master key").

use serde_json::json;

use super::CliError;
use super::args::KeyCommand;
use super::context::{KeyCreation, open_cipher, open_store};
use super::output::print_json;
use crate::config::Settings;
use crate::crypto::{Cipher, MasterKey};
use crate::store::job_lock;
use crate::store::rekey::{self, KeyStatus};

/// Runs a `key` subcommand.
pub async fn run(settings: Settings, command: KeyCommand) -> Result<(), CliError> {
    match command {
        KeyCommand::Rotate { new_key_file, output } => rotate(&settings, &new_key_file, output.json).await,
        KeyCommand::Status(output) => {
            let store = open_store(&settings).await?;
            let status = store.run(rekey::status).await?;
            if output.json {
                return print_json(&json!({"done": status.done(), "status": status}));
            }
            print_status(&status);
            Ok(())
        }
    }
}

/// `key rotate`: checks that the configuration already names the new key as the master key
/// (daemons configured like this command open both keys and seal with the new one), then
/// re-seals everything under it, one run at a time.
async fn rotate(settings: &Settings, new_key_file: &std::path::Path, json: bool) -> Result<(), CliError> {
    // The new key is named on the command line: a file that is missing or holds no key is a usage error.
    let new_key = MasterKey::read(new_key_file).map_err(|err| CliError::Usage(err.to_string()))?;
    let store = open_store(settings).await?;
    // The configured keys must open the store as it is (checked against its key-check row).
    let keyring = open_cipher(settings, &store, KeyCreation::Forbidden).await?;
    let target = Cipher::new(&new_key).key_id();
    let sealed_with = store.run(crate::store::meta::sealing_key_id).await?;
    if sealed_with == Some(target) && store.run(rekey::status).await?.done() {
        return Err(CliError::Usage(format!(
            "the new key {target} is the key the store is already sealed with: nothing to rotate (make a new key file)"
        )));
    }
    if keyring.key_id() != target {
        return Err(CliError::Usage(format!(
            "master_key_file must name the new key before key rotate (it names key {configured}, the new key is \
             {target}): on every replica set master_key_file to the new key and retired_master_key_files to the \
             old one, restart them, then run key rotate again with that configuration",
            configured = keyring.key_id()
        )));
    }
    let url = settings.database_url.clone();
    let lock = tokio::task::spawn_blocking(move || job_lock::try_lock_across_processes(&url, "key-rotation"))
        .await
        .map_err(|err| CliError::Failed(format!("the key-rotation lock task failed: {err}")))??;
    let Some(_running) = lock else {
        return Err(CliError::Failed(
            "another key rotation is running on this store; wait for it to finish (key status shows how far it got)"
                .into(),
        ));
    };
    let (resealed, status) = store.run(move |conn| rekey::reseal_all(conn, &keyring)).await?;
    let left = status.left_under_other_keys(target);
    if json {
        print_json(
            &json!({"key": target.to_string(), "resealed": resealed, "left": left, "done": status.done(), "status": status}),
        )?;
    } else {
        eprintln!("re-sealed {resealed} secret(s) under key {target}; {left} left under other keys");
        print_status(&status);
    }
    if left > 0 {
        return Err(CliError::Failed(format!(
            "{left} secret(s) are still sealed with another key (a replica still sealing with the old master key?): \
             set master_key_file to the new key on every replica, restart them and run key rotate again"
        )));
    }
    Ok(())
}

fn print_status(status: &KeyStatus) {
    for (key, count) in &status.values_by_key {
        println!("{key}\t{count} secret(s)");
    }
    println!("key check\t{}", status.key_check.as_deref().unwrap_or("none (nothing sealed yet)"));
    if status.done() {
        println!("done: every secret is sealed with the key-check key; retired master keys are no longer needed");
    } else {
        println!("not done: run `tokenwarden key rotate --new-key-file FILE` until this says done");
    }
}
