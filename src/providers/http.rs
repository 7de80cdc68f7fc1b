//! The shared HTTP client and the rules that turn HTTP results into [`ProviderError`]s.

use std::time::Duration;

use reqwest::StatusCode;
use reqwest::header::{HeaderMap, RETRY_AFTER};
use serde_json::error::Category;

use super::ProviderError;

/// Longest provider response body read, so a hostile or broken server cannot exhaust memory.
pub const MAX_RESPONSE_BYTES: usize = 1024 * 1024;

/// Settings for provider HTTP calls.
#[derive(Debug, Clone, Copy)]
pub struct HttpSettings {
    /// Whole-request timeout (connect, send, receive).
    pub timeout: Duration,
    /// Connection timeout (a connect failure is always safe to retry).
    pub connect_timeout: Duration,
}

impl Default for HttpSettings {
    fn default() -> Self {
        Self { timeout: Duration::from_secs(30), connect_timeout: Duration::from_secs(10) }
    }
}

/// Builds the client every provider uses: rustls (ring), a timeout, no redirects (a
/// redirected token request could leak a secret), and a User-Agent naming tokenwarden.
pub fn build_http_client(settings: HttpSettings) -> Result<reqwest::Client, ProviderError> {
    let _ = rustls::crypto::ring::default_provider().install_default();
    reqwest::Client::builder()
        .user_agent(concat!("tokenwarden/", env!("CARGO_PKG_VERSION")))
        .timeout(settings.timeout)
        .connect_timeout(settings.connect_timeout)
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .map_err(|err| ProviderError::permanent("http_client", format!("cannot build the HTTP client: {err}")))
}

/// Classifies a failed send: a connect failure never reached the provider; anything else
/// (timeout after connecting, reset mid-request) may have.
pub fn classify_send_error(err: &reqwest::Error) -> ProviderError {
    if err.is_connect() {
        return ProviderError::transient(format!("cannot connect: {}", describe(err)));
    }
    if err.is_builder() {
        return ProviderError::permanent("bad_request", describe(err));
    }
    ProviderError::unknown(format!("request may have reached the provider: {}", describe(err)))
}

/// The error and its sources on one line (URLs never hold secrets: tokens travel in
/// headers and bodies only).
fn describe(err: &reqwest::Error) -> String {
    let mut text = err.to_string();
    let mut source = std::error::Error::source(err);
    while let Some(inner) = source {
        text.push_str(": ");
        text.push_str(&inner.to_string());
        source = inner.source();
    }
    text
}

/// The error for a body over [`MAX_RESPONSE_BYTES`] (an unknown outcome: the provider acted).
fn too_large() -> ProviderError {
    ProviderError::unknown(format!(
        "the provider's response is larger than {MAX_RESPONSE_BYTES} bytes, so it was not read (not a token answer)"
    ))
}

/// Reads a response body up to [`MAX_RESPONSE_BYTES`]: a declared `Content-Length` over the
/// limit is refused before reading, a streamed body as soon as it passes the limit. A failure
/// here happens after the provider acted, so it is an unknown outcome.
pub async fn read_body(mut response: reqwest::Response) -> Result<Vec<u8>, ProviderError> {
    if response.content_length().is_some_and(|length| length > MAX_RESPONSE_BYTES as u64) {
        return Err(too_large());
    }
    let mut body = Vec::new();
    loop {
        match response.chunk().await {
            Ok(Some(chunk)) => {
                if body.len() + chunk.len() > MAX_RESPONSE_BYTES {
                    return Err(too_large());
                }
                body.extend_from_slice(&chunk);
            }
            Ok(None) => return Ok(body),
            Err(err) => {
                return Err(ProviderError::unknown(format!("the response was cut off: {}", describe(&err))));
            }
        }
    }
}

/// A provider's answer, read in full (up to [`MAX_RESPONSE_BYTES`]).
#[derive(Debug)]
pub struct Answer {
    /// The HTTP status.
    pub status: StatusCode,
    /// The response headers.
    pub headers: HeaderMap,
    /// The body.
    pub body: Vec<u8>,
}

/// Sends a request that may change something at the provider and reads the answer; failures
/// are classified by whether the provider may have acted ([`classify_send_error`]).
pub async fn send(request: reqwest::RequestBuilder) -> Result<Answer, ProviderError> {
    let response = request.send().await.map_err(|err| classify_send_error(&err))?;
    let status = response.status();
    let headers = response.headers().clone();
    let body = read_body(response).await?;
    Ok(Answer { status, headers, body })
}

/// Sends a look-up, which changes nothing, so any failure to get its answer is transient.
pub async fn look_up(request: reqwest::RequestBuilder) -> Result<Answer, ProviderError> {
    send(request).await.map_err(|err| match err {
        ProviderError::Unknown { message } => ProviderError::transient(message),
        other => other,
    })
}

/// The `Retry-After` delay in seconds, if present and numeric.
pub fn retry_after(headers: &HeaderMap) -> Option<Duration> {
    let value = headers.get(RETRY_AFTER)?.to_str().ok()?;
    value.trim().parse::<u64>().ok().map(Duration::from_secs)
}

/// Classifies an error status that is not specific to one provider: 429 and the 5xx
/// statuses where the provider reports it failed are transient; 504 (a gateway gave up
/// waiting, the backend may have finished) is unknown; 4xx are permanent.
pub fn classify_status(status: StatusCode, headers: &HeaderMap, body: &[u8]) -> ProviderError {
    let snippet = body_snippet(body);
    match status {
        StatusCode::TOO_MANY_REQUESTS => ProviderError::Transient {
            message: format!("rate limited (429): {snippet}"),
            retry_after: retry_after(headers),
        },
        StatusCode::GATEWAY_TIMEOUT => {
            ProviderError::unknown(format!("gateway timeout (504); the provider may have acted: {snippet}"))
        }
        s if s.is_server_error() => ProviderError::Transient {
            message: format!("{} {}: {snippet}", s.as_u16(), s.canonical_reason().unwrap_or("server error")),
            retry_after: retry_after(headers),
        },
        StatusCode::REQUEST_TIMEOUT => ProviderError::transient(format!("request timeout (408): {snippet}")),
        StatusCode::UNAUTHORIZED => ProviderError::permanent("unauthorized", format!("401: {snippet}")),
        StatusCode::FORBIDDEN => ProviderError::permanent("forbidden", format!("403: {snippet}")),
        StatusCode::NOT_FOUND => ProviderError::permanent("not_found", format!("404: {snippet}")),
        s => ProviderError::permanent(format!("http_{}", s.as_u16()), format!("{}: {snippet}", s.as_u16())),
    }
}

/// Why a provider's JSON could not be read, without quoting any of it: serde_json's own
/// messages quote the offending value (`invalid type: string "glpat-…", expected u64`), and
/// in a provider's answer that value may be a secret. Field names (ours) and the expected type
/// are kept; the value and the text around it are not.
pub fn describe_json_error(err: &serde_json::Error) -> String {
    let at = format!("at line {} column {}", err.line(), err.column());
    match err.classify() {
        Category::Io => "the body could not be read".to_owned(),
        Category::Eof => "the JSON ends early".to_owned(),
        Category::Syntax => format!("it is not valid JSON (syntax error {at})"),
        Category::Data => describe_data_error(&err.to_string(), &at),
    }
}

/// A data error (wrong shape) by the message's known forms; anything else is named generically.
fn describe_data_error(message: &str, at: &str) -> String {
    let message = message.strip_suffix(&format!(" {at}")).unwrap_or(message);
    if message.starts_with("missing field `") || message.starts_with("duplicate field `") {
        return format!("{message} ({at})");
    }
    match message.rsplit_once(", expected ") {
        Some((_, expected)) => format!("a field has the wrong type or value, expected {expected} ({at})"),
        None => format!("a field has the wrong type or value ({at})"),
    }
}

/// The first 200 characters of a body, as text, for error messages. Bodies of error
/// responses never hold a new secret.
pub fn body_snippet(body: &[u8]) -> String {
    let text = String::from_utf8_lossy(body);
    let trimmed = text.trim();
    match trimmed.char_indices().nth(200) {
        Some((cut, _)) => format!("{}…", &trimmed[..cut]),
        None => trimmed.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use reqwest::header::HeaderValue;

    #[test]
    fn a_server_error_names_its_status_once_after_the_kind_of_error() {
        let err = classify_status(StatusCode::SERVICE_UNAVAILABLE, &HeaderMap::new(), b"try later");
        assert_eq!(err.to_string(), "transient provider error: 503 Service Unavailable: try later");
    }

    #[test]
    fn rate_limit_is_transient_with_retry_after() {
        let mut headers = HeaderMap::new();
        headers.insert(RETRY_AFTER, HeaderValue::from_static("42"));
        let err = classify_status(StatusCode::TOO_MANY_REQUESTS, &headers, b"slow down");
        assert_eq!(
            err,
            ProviderError::Transient {
                message: "rate limited (429): slow down".into(),
                retry_after: Some(Duration::from_secs(42))
            }
        );
    }

    #[test]
    fn server_errors_are_transient_but_gateway_timeout_is_unknown() {
        let headers = HeaderMap::new();
        for status in [500, 502, 503] {
            let err = classify_status(StatusCode::from_u16(status).unwrap(), &headers, b"");
            assert!(matches!(err, ProviderError::Transient { .. }), "{status}");
        }
        assert!(matches!(classify_status(StatusCode::GATEWAY_TIMEOUT, &headers, b""), ProviderError::Unknown { .. }));
    }

    #[test]
    fn client_errors_are_permanent() {
        let headers = HeaderMap::new();
        for status in [400, 401, 403, 404, 405] {
            let err = classify_status(StatusCode::from_u16(status).unwrap(), &headers, b"");
            assert!(matches!(err, ProviderError::Permanent { .. }), "{status}");
        }
    }

    #[test]
    fn json_errors_name_the_field_and_type_but_never_quote_the_value() {
        #[derive(Debug, serde::Deserialize)]
        #[allow(dead_code)]
        struct Answer {
            token: String,
            #[serde(default)]
            expires_in: Option<u64>,
            #[serde(default)]
            scopes: Vec<String>,
        }
        let secret = "glpat-0123456789abcdef";
        let cases = [
            (format!(r#"{{"token":"x","expires_in":"{secret}"}}"#), "expected u64"),
            (format!(r#"{{"token":"x","scopes":"{secret}"}}"#), "expected a sequence"),
            (format!(r#"{{"token":["{secret}"]}}"#), "expected a string"),
            (format!(r#"{{"access_token":"{secret}"}}"#), "missing field `token`"),
            (format!(r#"{{"token":"{secret}","token":"{secret}"}}"#), "duplicate field `token`"),
            (format!(r#"{{"token":"{secret}", <html>"#), "not valid JSON"),
            (format!(r#"{{"token":"{secret}""#), "ends early"),
        ];
        for (body, expected) in cases {
            let err = serde_json::from_str::<Answer>(&body).unwrap_err();
            if expected.starts_with("expected u64") || expected.starts_with("expected a sequence") {
                assert!(err.to_string().contains(secret), "serde_json itself quotes the value: {err}");
            }
            let described = describe_json_error(&err);
            assert!(described.contains(expected), "{body}: {described}");
            assert!(!described.contains("glpat-"), "{body}: {described}");
        }
    }

    #[test]
    fn long_bodies_are_cut_for_messages() {
        let body = "x".repeat(1000);
        assert_eq!(body_snippet(body.as_bytes()).chars().count(), 201);
    }
}
