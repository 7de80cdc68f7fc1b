//! HTTPS for the API: the certificate chain and private key from PEM files (`tls_cert_file`,
//! `tls_key_file`), read at start and again on SIGHUP.
//!
//! A reload swaps the configuration new handshakes use; connections already open keep theirs,
//! so nothing is dropped. A reload that fails (a file half-written by a renewal, a key that does
//! not match) keeps the running configuration and says why.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use axum_server::tls_rustls::RustlsConfig;
use rustls::ServerConfig;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

use crate::config::TlsFiles;

/// Why the TLS files could not be used; each message names the file.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// A file could not be read or holds no usable PEM item.
    #[error("cannot use {path} as the {what}: {message}")]
    File {
        /// The file.
        path: PathBuf,
        /// `certificate chain` or `private key`.
        what: &'static str,
        /// Why.
        message: String,
    },
    /// rustls refused the pair (the key does not match the certificate, say).
    #[error("the TLS certificate {cert} and key {key} cannot be used together: {message}")]
    Pair {
        /// The certificate file.
        cert: PathBuf,
        /// The key file.
        key: PathBuf,
        /// rustls' words.
        message: String,
    },
}

/// Reads both files and builds the server configuration (TLS 1.2 and 1.3, HTTP/1.1).
pub fn server_config(files: &TlsFiles) -> Result<ServerConfig, TlsError> {
    let chain = read_chain(&files.cert)?;
    let key = PrivateKeyDer::from_pem_file(&files.key).map_err(|err| TlsError::File {
        path: files.key.clone(),
        what: "private key",
        message: err.to_string(),
    })?;
    let pair = |message: String| TlsError::Pair { cert: files.cert.clone(), key: files.key.clone(), message };
    let mut config = ServerConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .map_err(|err| pair(err.to_string()))?
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .map_err(|err| pair(err.to_string()))?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(config)
}

fn read_chain(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let failed = |message: String| TlsError::File { path: path.to_owned(), what: "certificate chain", message };
    let chain = CertificateDer::pem_file_iter(path)
        .map_err(|err| failed(err.to_string()))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|err| failed(err.to_string()))?;
    if chain.is_empty() {
        return Err(failed("no CERTIFICATE block in it".into()));
    }
    Ok(chain)
}

/// The configuration the HTTPS listener uses, reloadable while it runs.
#[derive(Clone)]
pub struct ReloadableTls {
    files: TlsFiles,
    config: RustlsConfig,
}

impl ReloadableTls {
    /// Reads the files once; an error here stops the daemon before it serves.
    pub fn load(files: TlsFiles) -> Result<Self, TlsError> {
        let config = RustlsConfig::from_config(Arc::new(server_config(&files)?));
        Ok(Self { files, config })
    }

    /// What the listener is built with.
    pub fn rustls_config(&self) -> RustlsConfig {
        self.config.clone()
    }

    /// Reads the files again and uses them for new connections; on error the running
    /// configuration stays.
    pub fn reload(&self) -> Result<(), TlsError> {
        self.config.reload_from_config(Arc::new(server_config(&self.files)?));
        Ok(())
    }
}
