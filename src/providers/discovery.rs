//! Authorization-server discovery: an issuer URL to its endpoints, from RFC 8414
//! (`/.well-known/oauth-authorization-server`) or OpenID Connect Discovery
//! (`/.well-known/openid-configuration`).
//!
//! Metadata that names an issuer other than the one asked about is refused (RFC 8414 §3.3):
//! otherwise a server could send our client secret to endpoints someone else chose.

use serde::Deserialize;

use super::http::{describe_json_error, look_up};
use crate::domain::ClientAuth;

/// What discovery found about an authorization server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Discovered {
    /// The issuer, as the metadata names it (equal to the one asked about).
    pub issuer: String,
    /// The token endpoint.
    pub token_endpoint: String,
    /// The authorization endpoint, if named.
    pub authorization_endpoint: Option<String>,
    /// The revocation endpoint (RFC 7009), if named.
    pub revocation_endpoint: Option<String>,
    /// `token_endpoint_auth_methods_supported`, if present.
    pub auth_methods: Option<Vec<String>>,
}

/// Why discovery gave no usable metadata; each message names the issuer or the URL.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DiscoveryError {
    /// The issuer is not a URL discovery can start from.
    #[error("the issuer '{0}' is not an http(s) URL without query or fragment")]
    BadIssuer(String),
    /// Neither well-known document could be fetched.
    #[error("the issuer '{issuer}' did not answer discovery ({why})")]
    NoAnswer {
        /// The issuer.
        issuer: String,
        /// What each URL answered.
        why: String,
        /// Whether a URL could not be reached at all (a network failure, worth trying again),
        /// rather than answering with an error status.
        unreachable: bool,
    },
    /// The document is not JSON metadata.
    #[error("the discovery document at {url} is not JSON metadata: {why}")]
    NotMetadata {
        /// Where it was read.
        url: String,
        /// Why it could not be read.
        why: String,
    },
    /// The metadata names another issuer.
    #[error("the metadata at {url} names the issuer '{named}', not '{asked}'; refusing it")]
    IssuerMismatch {
        /// Where it was read.
        url: String,
        /// The issuer asked about.
        asked: String,
        /// The issuer the metadata names.
        named: String,
    },
    /// The metadata of an https issuer names a plain-http endpoint: the client secret would
    /// cross the network in clear text.
    #[error("the metadata at {url} names a plain-http {field} for an https issuer; refusing it")]
    InsecureEndpoint {
        /// Where it was read.
        url: String,
        /// The metadata field.
        field: &'static str,
    },
    /// The metadata has no usable token endpoint.
    #[error("the metadata at {url} has no usable token_endpoint")]
    NoTokenEndpoint {
        /// Where it was read.
        url: String,
    },
    /// The server supports none of the methods tokenwarden can use.
    #[error(
        "the server supports none of client_secret_basic, client_secret_post or none at its token endpoint (it lists: {listed})"
    )]
    NoUsableAuthMethod {
        /// The methods it lists.
        listed: String,
    },
}

/// The metadata fields tokenwarden reads.
#[derive(Deserialize)]
struct Metadata {
    issuer: Option<String>,
    token_endpoint: Option<String>,
    authorization_endpoint: Option<String>,
    revocation_endpoint: Option<String>,
    token_endpoint_auth_methods_supported: Option<Vec<String>>,
}

/// The well-known URLs to try, in order: RFC 8414's (the well-known part inserted between the
/// host and the issuer's path), then OpenID Connect's (appended to the issuer).
pub fn metadata_urls(issuer: &str) -> Result<Vec<String>, DiscoveryError> {
    let bad = || DiscoveryError::BadIssuer(issuer.to_owned());
    let parsed = url::Url::parse(issuer).map_err(|_| bad())?;
    if !matches!(parsed.scheme(), "http" | "https") || parsed.query().is_some() || parsed.fragment().is_some() {
        return Err(bad());
    }
    let path = parsed.path().trim_end_matches('/').to_owned();
    let mut rfc8414 = parsed.clone();
    rfc8414.set_path(&format!("/.well-known/oauth-authorization-server{path}"));
    let mut oidc = parsed;
    oidc.set_path(&format!("{path}/.well-known/openid-configuration"));
    Ok(vec![rfc8414.to_string(), oidc.to_string()])
}

/// Fetches and checks the metadata of `issuer`: RFC 8414's document first, then OpenID
/// Connect's when the first is missing or unusable. When neither is usable, the first
/// document's own problem is reported (a mismatched issuer, say) before a plain "no answer".
pub async fn discover(client: &reqwest::Client, issuer: &str) -> Result<Discovered, DiscoveryError> {
    let mut failures = Vec::new();
    let mut unusable = None;
    let mut unreachable = false;
    for url in metadata_urls(issuer)? {
        let request = client.get(&url).header(reqwest::header::ACCEPT, "application/json");
        match look_up(request).await {
            Ok(answer) if answer.status.is_success() => match read_metadata(&url, issuer, &answer.body) {
                Ok(found) => return Ok(found),
                Err(err) => {
                    failures.push(err.to_string());
                    unusable.get_or_insert(err);
                }
            },
            Ok(answer) => failures.push(format!("{url}: HTTP {}", answer.status.as_u16())),
            Err(err) => {
                unreachable = true;
                failures.push(format!("{url}: {err}"));
            }
        }
    }
    Err(unusable.unwrap_or(DiscoveryError::NoAnswer {
        issuer: issuer.to_owned(),
        why: failures.join("; "),
        unreachable,
    }))
}

/// Checks one metadata document: JSON, the same issuer, a token endpoint, and for an https
/// issuer no plain-http endpoint.
fn read_metadata(url: &str, issuer: &str, body: &[u8]) -> Result<Discovered, DiscoveryError> {
    let metadata: Metadata = serde_json::from_slice(body)
        .map_err(|err| DiscoveryError::NotMetadata { url: url.to_owned(), why: describe_json_error(&err) })?;
    let named = metadata.issuer.unwrap_or_default();
    if named.trim_end_matches('/') != issuer.trim_end_matches('/') {
        return Err(DiscoveryError::IssuerMismatch { url: url.to_owned(), asked: issuer.to_owned(), named });
    }
    let https_only = issuer.starts_with("https://");
    let endpoint = |field: &'static str, value: Option<String>| -> Result<Option<String>, DiscoveryError> {
        let Some(parsed) = value.as_deref().and_then(|value| url::Url::parse(value).ok()) else { return Ok(None) };
        match parsed.scheme() {
            "https" => Ok(value),
            "http" if !https_only => Ok(value),
            "http" => Err(DiscoveryError::InsecureEndpoint { url: url.to_owned(), field }),
            _ => Ok(None),
        }
    };
    let token_endpoint = endpoint("token_endpoint", metadata.token_endpoint)?
        .ok_or_else(|| DiscoveryError::NoTokenEndpoint { url: url.to_owned() })?;
    Ok(Discovered {
        issuer: named,
        token_endpoint,
        authorization_endpoint: endpoint("authorization_endpoint", metadata.authorization_endpoint)?,
        revocation_endpoint: endpoint("revocation_endpoint", metadata.revocation_endpoint)?,
        auth_methods: metadata.token_endpoint_auth_methods_supported,
    })
}

/// The client authentication to use with a server listing `supported`: Basic when listed (or
/// when the list is absent: RFC 8414's default is `client_secret_basic`), else the form body,
/// else a public client's `none`.
pub fn pick_client_auth(supported: Option<&[String]>) -> Result<ClientAuth, DiscoveryError> {
    let Some(listed) = supported else {
        return Ok(ClientAuth::Basic);
    };
    [ClientAuth::Basic, ClientAuth::Post, ClientAuth::None]
        .into_iter()
        .find(|method| listed.iter().any(|name| name == method.metadata_name()))
        .ok_or_else(|| DiscoveryError::NoUsableAuthMethod { listed: listed.join(", ") })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc8414_inserts_the_well_known_part_before_the_issuer_path() {
        assert_eq!(
            metadata_urls("https://as.example.com/tenant/1").unwrap(),
            [
                "https://as.example.com/.well-known/oauth-authorization-server/tenant/1",
                "https://as.example.com/tenant/1/.well-known/openid-configuration"
            ]
        );
        assert_eq!(
            metadata_urls("https://as.example.com").unwrap(),
            [
                "https://as.example.com/.well-known/oauth-authorization-server",
                "https://as.example.com/.well-known/openid-configuration"
            ]
        );
    }

    #[test]
    fn metadata_for_another_issuer_is_refused() {
        let body = br#"{"issuer":"https://evil.example","token_endpoint":"https://evil.example/token"}"#;
        let err = read_metadata("u", "https://as.example.com", body).unwrap_err();
        assert!(matches!(err, DiscoveryError::IssuerMismatch { .. }), "{err}");
    }

    #[test]
    fn metadata_without_a_token_endpoint_or_json_is_refused() {
        let err = read_metadata("u", "https://a.example", br#"{"issuer":"https://a.example"}"#).unwrap_err();
        assert!(matches!(err, DiscoveryError::NoTokenEndpoint { .. }), "{err}");
        let err = read_metadata("u", "https://a.example", b"<html>hi</html>").unwrap_err();
        assert!(matches!(err, DiscoveryError::NotMetadata { .. }), "{err}");
    }

    #[test]
    fn an_https_issuer_with_a_plain_http_endpoint_is_refused_and_an_http_issuer_may_use_one() {
        let body = br#"{"issuer":"https://a.example","token_endpoint":"http://a.example/token"}"#;
        let err = read_metadata("u", "https://a.example", body).unwrap_err();
        assert_eq!(err, DiscoveryError::InsecureEndpoint { url: "u".into(), field: "token_endpoint" });
        let body = br#"{"issuer":"https://a.example","token_endpoint":"https://a.example/token",
                        "revocation_endpoint":"http://a.example/revoke"}"#;
        let err = read_metadata("u", "https://a.example", body).unwrap_err();
        assert_eq!(err, DiscoveryError::InsecureEndpoint { url: "u".into(), field: "revocation_endpoint" });
        let body = br#"{"issuer":"http://127.0.0.1:9","token_endpoint":"http://127.0.0.1:9/token"}"#;
        assert_eq!(read_metadata("u", "http://127.0.0.1:9", body).unwrap().token_endpoint, "http://127.0.0.1:9/token");
    }

    #[test]
    fn client_auth_prefers_basic_and_defaults_to_it() {
        let list = |names: &[&str]| names.iter().map(|n| (*n).to_owned()).collect::<Vec<_>>();
        assert_eq!(pick_client_auth(None), Ok(ClientAuth::Basic));
        let both = list(&["client_secret_post", "client_secret_basic"]);
        assert_eq!(pick_client_auth(Some(&both)), Ok(ClientAuth::Basic));
        assert_eq!(pick_client_auth(Some(&list(&["client_secret_post"]))), Ok(ClientAuth::Post));
        assert_eq!(pick_client_auth(Some(&list(&["none"]))), Ok(ClientAuth::None));
        assert!(pick_client_auth(Some(&list(&["private_key_jwt"]))).is_err());
    }
}
