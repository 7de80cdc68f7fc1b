//! The OAuth 2.0 refresh-token grant (RFC 6749 §6), for GitLab (`{url}/oauth/token`) and any
//! standard token endpoint.
//!
//! Written on reqwest directly rather than the `oauth2` crate: the engine must tell "the
//! provider never saw the request" from "it may have consumed the refresh token", which needs
//! the HTTP status, `Retry-After` and the exact transport failure — details `oauth2`'s error
//! type folds away — and it keeps one reqwest in the build.

use std::time::Duration;

use reqwest::StatusCode;
use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;

use super::client_auth::ClientCredentials;
use super::gitlab::validate_token_text;
use super::http::{Answer, body_snippet, classify_status, describe_json_error, look_up, send};
use super::{Credential, ProviderError, Renewed, Revocation, TokenInfo, TokenProvider};

/// Access-token lifetime assumed when a provider omits `expires_in` and nothing else is
/// configured (`oauth.assumed_lifetime`).
pub const DEFAULT_EXPIRES_IN: Duration = Duration::from_secs(3600);
/// Longest access-token lifetime believed: a larger `expires_in` is cut to this, so every
/// grant keeps a planned refresh.
pub const MAX_EXPIRES_IN: Duration = Duration::from_secs(366 * 24 * 3600);
pub use crate::domain::CLIENT_CREDENTIALS_REJECTED;

/// Settings for reading OAuth answers (`[oauth]` in the config file).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OauthSettings {
    /// The access-token lifetime assumed when an answer has no `expires_in`.
    pub assumed_lifetime: Duration,
}

impl Default for OauthSettings {
    fn default() -> Self {
        Self { assumed_lifetime: DEFAULT_EXPIRES_IN }
    }
}

/// Runs the refresh-token grant at one token endpoint with one client's credentials.
#[derive(Debug, Clone)]
pub struct OauthRefresher {
    client: reqwest::Client,
    token_url: String,
    credentials: ClientCredentials,
    provider_name: String,
    redirect_uri: Option<String>,
    token_info_url: Option<String>,
    revocation_url: Option<String>,
    assumed_lifetime: Duration,
}

/// A successful token response.
#[derive(Deserialize)]
struct TokenResponse {
    access_token: String,
    #[serde(default)]
    token_type: Option<String>,
    #[serde(default)]
    expires_in: Option<u64>,
    #[serde(default)]
    refresh_token: Option<String>,
    #[serde(default)]
    scope: Option<String>,
}

/// An error response (RFC 6749 §5.2).
#[derive(Deserialize)]
struct ErrorResponse {
    error: String,
    #[serde(default)]
    error_description: Option<String>,
}

impl OauthRefresher {
    /// A refresher posting to `token_url` as the client in `credentials`, of the provider
    /// named `provider_name` (for error messages).
    pub fn new(
        client: reqwest::Client,
        token_url: &str,
        credentials: ClientCredentials,
        provider_name: &str,
        redirect_uri: Option<String>,
    ) -> Self {
        Self {
            client,
            token_url: token_url.to_owned(),
            credentials,
            provider_name: provider_name.to_owned(),
            redirect_uri,
            token_info_url: None,
            revocation_url: None,
            assumed_lifetime: DEFAULT_EXPIRES_IN,
        }
    }

    /// Lets [`TokenProvider::inspect`] ask `url` (GitLab's `/oauth/token/info`) whether an
    /// access token still works — which tells whether a refresh whose answer was lost happened.
    pub fn with_token_info_url(mut self, url: String) -> Self {
        self.token_info_url = Some(url);
        self
    }

    /// Lets [`TokenProvider::revoke`] revoke the grant at `url` (RFC 7009; GitLab's `/oauth/revoke`).
    pub fn with_revocation_url(mut self, url: String) -> Self {
        self.revocation_url = Some(url);
        self
    }

    /// The access-token lifetime assumed when an answer has no `expires_in`.
    pub fn with_assumed_lifetime(mut self, lifetime: Duration) -> Self {
        self.assumed_lifetime = lifetime;
        self
    }

    /// POSTs `form` to the token endpoint as the client; the body of a successful answer, or the
    /// error answer classified (an `invalid_client` refusal names the client authentication).
    async fn post_to_token_endpoint<'a>(
        &'a self,
        mut form: Vec<(&'static str, &'a str)>,
    ) -> Result<Vec<u8>, ProviderError> {
        let request = self.client.post(&self.token_url).header(reqwest::header::ACCEPT, "application/json");
        let request = self.credentials.apply(request, &mut form);
        let Answer { status, headers, body } = send(request.form(&form)).await?;
        if status.is_success() {
            return Ok(body);
        }
        Err(match classify_oauth_error(status, &headers, &body) {
            ProviderError::Permanent { reason, message } if reason == "invalid_client" => self.client_rejected(message),
            other => other,
        })
    }

    /// Names the client authentication used and the flags that change it in an
    /// `invalid_client` refusal.
    fn client_rejected(&self, message: String) -> ProviderError {
        let name = &self.provider_name;
        let method = self.credentials.method;
        ProviderError::permanent(
            CLIENT_CREDENTIALS_REJECTED,
            format!(
                "the provider rejected the client credentials sent with --client-auth {method} ({message}); update the provider's client secret with `tokenwarden provider update {name} --client-secret-stdin`, or choose another method with `tokenwarden provider update {name} --client-auth basic|post|none`"
            ),
        )
    }
}

/// Reads a successful token answer (RFC 6749 §5.1) as far as the RFC lets a server vary it:
/// `token_type` in any case, no `refresh_token` (the current one stays), no `expires_in`
/// (`assumed_lifetime` applies), an optional `scope`.
fn parse_token_response(
    body: &[u8],
    credential: &Credential,
    assumed_lifetime: Duration,
) -> Result<Renewed, ProviderError> {
    let parsed: TokenResponse = serde_json::from_slice(body).map_err(|err| {
        ProviderError::unknown(format!(
            "the provider answered the refresh but not with a token response: {}",
            describe_json_error(&err)
        ))
    })?;
    if let Some(kind) = &parsed.token_type
        && !kind.eq_ignore_ascii_case("bearer")
    {
        return Err(ProviderError::unknown(format!(
            "the refresh answer's token_type is {}, not Bearer",
            quote_token_type(kind)
        )));
    }
    validate_token_text("access_token", &parsed.access_token)?;
    if let Some(refresh) = &parsed.refresh_token {
        validate_token_text("refresh_token", refresh)?;
    }
    let current = credential.refresh_token.as_ref().map(|token| token.expose_secret());
    let rotates = parsed.refresh_token.as_deref().is_some_and(|new| Some(new) != current);
    let issued_at = credential.requested_at;
    let lifetime = parsed.expires_in.map(Duration::from_secs).unwrap_or(assumed_lifetime).min(MAX_EXPIRES_IN);
    let expires_at = chrono::TimeDelta::from_std(lifetime).ok().and_then(|d| issued_at.checked_add_signed(d));
    Ok(Renewed {
        secret: SecretString::from(parsed.access_token),
        refresh_token: parsed.refresh_token.filter(|_| rotates).map(SecretString::from),
        expires_at,
        issued_at,
        external_id: None,
        refresh_token_rotates: Some(rotates),
        assumed_lifetime: parsed.expires_in.is_none(),
        scope: parsed.scope.map(|scope| scope.split_whitespace().collect::<Vec<_>>().join(" ")),
    })
}

/// Classifies an OAuth error answer: the RFC's error codes are permanent; statuses without
/// an OAuth error body follow the shared HTTP rules.
fn classify_oauth_error(status: StatusCode, headers: &reqwest::header::HeaderMap, body: &[u8]) -> ProviderError {
    if status.is_server_error() || status == StatusCode::TOO_MANY_REQUESTS {
        return classify_status(status, headers, body);
    }
    match serde_json::from_slice::<ErrorResponse>(body) {
        Ok(parsed) => ProviderError::permanent(
            parsed.error.clone(),
            parsed.error_description.unwrap_or_else(|| format!("no description (HTTP {})", status.as_u16())),
        ),
        Err(_) if status == StatusCode::UNAUTHORIZED => {
            ProviderError::permanent("invalid_client", format!("401: {}", body_snippet(body)))
        }
        Err(_) => match classify_status(status, headers, body) {
            ProviderError::Permanent { reason, message } => ProviderError::permanent(
                reason,
                format!(
                    "the answer is not an OAuth error response (a proxy's page?); the grant was not judged: {message}"
                ),
            ),
            other => other,
        },
    }
}

/// A token type for an error message: quoted when it looks like one (`mac`, `DPoP`), described
/// otherwise — a provider that put a secret there must not see it copied into logs.
fn quote_token_type(kind: &str) -> String {
    if kind.len() <= 16 && kind.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_') {
        return format!("'{kind}'");
    }
    format!("an unexpected {}-character value", kind.chars().count())
}

/// What the authorization-code grant sends besides the client's credentials (RFC 6749 §4.1.3
/// with PKCE, RFC 7636 §4.5).
#[derive(Debug)]
pub struct CodeExchange<'a> {
    /// The code the provider sent to the redirect URI.
    pub code: &'a SecretString,
    /// The PKCE verifier whose S256 challenge the authorisation request carried.
    pub verifier: &'a SecretString,
    /// The redirect URI of the authorisation request, exactly.
    pub redirect_uri: &'a str,
    /// The engine's time when the request is made (the grant's lifetime counts from here).
    pub requested_at: chrono::DateTime<chrono::Utc>,
}

impl OauthRefresher {
    /// Exchanges an authorisation code for a grant (`grant_type=authorization_code`). The
    /// answer is read as a refresh answer is; an error answer is classified the same way (a
    /// refused code is `Permanent` with the server's code, usually `invalid_grant`).
    pub async fn exchange_code(&self, exchange: &CodeExchange<'_>) -> Result<Renewed, ProviderError> {
        let form = vec![
            ("grant_type", "authorization_code"),
            ("code", exchange.code.expose_secret()),
            ("redirect_uri", exchange.redirect_uri),
            ("code_verifier", exchange.verifier.expose_secret()),
        ];
        let body = self.post_to_token_endpoint(form).await?;
        let credential = Credential {
            secret: None,
            refresh_token: None,
            requested_expiry: exchange.requested_at.date_naive(),
            requested_at: exchange.requested_at,
        };
        let renewed = parse_token_response(&body, &credential, self.assumed_lifetime)?;
        if renewed.refresh_token.is_none() {
            return Err(ProviderError::permanent(
                "no_refresh_token",
                "the provider granted access without a refresh token, so tokenwarden could not keep it alive; \
                 check that the application may use refresh tokens",
            ));
        }
        Ok(renewed)
    }
}

#[async_trait::async_trait]
impl TokenProvider for OauthRefresher {
    async fn renew(&self, credential: &Credential) -> Result<Renewed, ProviderError> {
        let refresh_token = credential
            .refresh_token
            .as_ref()
            .ok_or_else(|| ProviderError::permanent("no_refresh_token", "the grant has no stored refresh token"))?;
        let mut form = vec![("grant_type", "refresh_token"), ("refresh_token", refresh_token.expose_secret())];
        if let Some(redirect_uri) = &self.redirect_uri {
            form.push(("redirect_uri", redirect_uri.as_str()));
        }
        let body = self.post_to_token_endpoint(form).await?;
        parse_token_response(&body, credential, self.assumed_lifetime)
    }

    /// Revokes the refresh token (and with it the grant's access tokens) at the revocation
    /// endpoint, as the client (RFC 7009: an unknown or already revoked token is answered 200
    /// as well, so success never tells the two apart).
    async fn revoke(&self, credential: &Credential) -> Result<Revocation, ProviderError> {
        let Some(url) = &self.revocation_url else {
            return Err(ProviderError::permanent(
                "revocation_unsupported",
                format!(
                    "provider '{}' has no revocation endpoint known to tokenwarden: revoke the grant at the provider, then remove it with --force",
                    self.provider_name
                ),
            ));
        };
        let (token, hint) = match (&credential.refresh_token, &credential.secret) {
            (Some(refresh_token), _) => (refresh_token, "refresh_token"),
            (None, Some(access_token)) => (access_token, "access_token"),
            (None, None) => return Ok(Revocation::AlreadyInvalid),
        };
        let mut form = vec![("token", token.expose_secret()), ("token_type_hint", hint)];
        let request = self.client.post(url).header(reqwest::header::ACCEPT, "application/json");
        let request = self.credentials.apply(request, &mut form);
        let Answer { status, headers, body } = send(request.form(&form)).await?;
        if status.is_success() {
            return Ok(Revocation::Revoked);
        }
        Err(match classify_oauth_error(status, &headers, &body) {
            ProviderError::Permanent { reason, message } if reason == "invalid_client" => self.client_rejected(message),
            other => other,
        })
    }

    /// Asks the token-info endpoint about the current access token: active → `Some`, 401 →
    /// `Permanent("revoked")`. Without such an endpoint or an access token: `Ok(None)`.
    async fn inspect(&self, credential: &Credential) -> Result<Option<TokenInfo>, ProviderError> {
        let (Some(url), Some(access_token)) = (&self.token_info_url, &credential.secret) else {
            return Ok(None);
        };
        let Answer { status, headers, body } =
            look_up(self.client.get(url).bearer_auth(access_token.expose_secret())).await?;
        if status == StatusCode::UNAUTHORIZED {
            return Err(ProviderError::permanent(
                "revoked",
                format!("the access token is invalid: {}", body_snippet(&body)),
            ));
        }
        if !status.is_success() {
            return Err(match classify_status(status, &headers, &body) {
                permanent @ ProviderError::Permanent { .. } => ProviderError::transient(permanent.to_string()),
                other => other,
            });
        }
        Ok(Some(TokenInfo {
            id: String::new(),
            scopes: Vec::new(),
            active: true,
            revoked: false,
            expires_at: None,
            created_at: None,
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use reqwest::header::HeaderMap;

    #[test]
    fn invalid_grant_is_permanent_with_its_code() {
        let body = br#"{"error":"invalid_grant","error_description":"The provided authorization grant is invalid"}"#;
        let err = classify_oauth_error(StatusCode::BAD_REQUEST, &HeaderMap::new(), body);
        assert!(matches!(err, ProviderError::Permanent { ref reason, .. } if reason == "invalid_grant"), "{err:?}");
    }

    #[test]
    fn an_error_without_a_description_names_its_code_once() {
        let err = classify_oauth_error(StatusCode::BAD_REQUEST, &HeaderMap::new(), br#"{"error":"invalid_grant"}"#);
        assert_eq!(err.to_string(), "provider refused: invalid_grant: no description (HTTP 400)");
    }

    #[test]
    fn bare_401_is_invalid_client() {
        let err = classify_oauth_error(StatusCode::UNAUTHORIZED, &HeaderMap::new(), b"nope");
        assert!(matches!(err, ProviderError::Permanent { ref reason, .. } if reason == "invalid_client"), "{err:?}");
    }

    #[tokio::test]
    async fn a_connect_error_never_reached_the_provider_so_it_is_transient() {
        let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}/oauth/token", closed.local_addr().unwrap());
        drop(closed);
        let client = crate::providers::build_http_client(crate::providers::HttpSettings::default()).unwrap();
        let credentials =
            ClientCredentials { id: "app".into(), secret: None, method: crate::domain::ClientAuth::Basic };
        let refresher = OauthRefresher::new(client, &url, credentials, "p", None);
        let credential = Credential {
            secret: None,
            refresh_token: Some(SecretString::from("glrt-x")),
            requested_expiry: chrono::Utc::now().date_naive(),
            requested_at: chrono::Utc::now(),
        };
        let err = refresher.renew(&credential).await.unwrap_err();
        assert!(matches!(err, ProviderError::Transient { .. }), "{err:?}");
    }

    #[test]
    fn a_token_type_is_quoted_only_when_it_looks_like_one() {
        assert_eq!(quote_token_type("mac"), "'mac'");
        let described = quote_token_type("gloat-0123456789abcdef0123");
        assert!(!described.contains("gloat-"), "{described}");
    }

    #[test]
    fn server_errors_stay_transient_even_with_an_oauth_body() {
        let body = br#"{"error":"server_error"}"#;
        let err = classify_oauth_error(StatusCode::SERVICE_UNAVAILABLE, &HeaderMap::new(), body);
        assert!(matches!(err, ProviderError::Transient { .. }), "{err:?}");
    }

    fn credential(refresh: &str) -> Credential {
        Credential {
            secret: None,
            refresh_token: Some(SecretString::from(refresh)),
            requested_expiry: chrono::Utc::now().date_naive(),
            requested_at: chrono::DateTime::parse_from_rfc3339("2026-12-03T08:00:00Z").unwrap().to_utc(),
        }
    }

    #[test]
    fn an_answer_without_a_refresh_token_keeps_the_current_one_and_says_it_does_not_rotate() {
        let body = br#"{"access_token":"at-1","token_type":"bearer","expires_in":600}"#;
        let renewed = parse_token_response(body, &credential("rt-1"), DEFAULT_EXPIRES_IN).unwrap();
        assert!(renewed.refresh_token.is_none());
        assert_eq!(renewed.refresh_token_rotates, Some(false));
        assert!(!renewed.assumed_lifetime);
        let same = br#"{"access_token":"at-2","token_type":"Bearer","expires_in":600,"refresh_token":"rt-1"}"#;
        let renewed = parse_token_response(same, &credential("rt-1"), DEFAULT_EXPIRES_IN).unwrap();
        assert!(renewed.refresh_token.is_none(), "the same refresh token again is not a rotation");
        assert_eq!(renewed.refresh_token_rotates, Some(false));
        let new = br#"{"access_token":"at-3","token_type":"BEARER","expires_in":600,"refresh_token":"rt-2"}"#;
        let renewed = parse_token_response(new, &credential("rt-1"), DEFAULT_EXPIRES_IN).unwrap();
        assert_eq!(renewed.refresh_token.map(|t| t.expose_secret().to_owned()).as_deref(), Some("rt-2"));
        assert_eq!(renewed.refresh_token_rotates, Some(true));
    }

    #[test]
    fn an_answer_without_expires_in_gets_the_assumed_lifetime_and_says_so() {
        let body = br#"{"access_token":"at-1","token_type":"Bearer","scope":"read  write"}"#;
        let credential = credential("rt-1");
        let renewed = parse_token_response(body, &credential, Duration::from_secs(900)).unwrap();
        assert!(renewed.assumed_lifetime);
        assert_eq!(renewed.expires_at, Some(credential.requested_at + chrono::TimeDelta::seconds(900)));
        assert_eq!(renewed.scope.as_deref(), Some("read write"));
    }

    #[test]
    fn an_html_error_page_is_classified_by_its_status_and_never_judges_the_grant() {
        let page = b"<html><body>Bad Gateway</body></html>";
        let err = classify_oauth_error(StatusCode::BAD_GATEWAY, &HeaderMap::new(), page);
        assert!(matches!(err, ProviderError::Transient { .. }), "{err:?}");
        let err = classify_oauth_error(StatusCode::TOO_MANY_REQUESTS, &HeaderMap::new(), page);
        assert!(matches!(err, ProviderError::Transient { .. }), "{err:?}");
        let err = classify_oauth_error(StatusCode::BAD_REQUEST, &HeaderMap::new(), page);
        let ProviderError::Permanent { reason, message } = err else { panic!("{err:?}") };
        assert_eq!(reason, "http_400");
        assert!(message.contains("not an OAuth error response"), "{message}");
    }
}
