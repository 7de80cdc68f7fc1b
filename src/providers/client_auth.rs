//! How an OAuth client proves who it is at a token endpoint (RFC 6749 §2.3.1): HTTP Basic,
//! the form body, or — for a public client — only its `client_id`.
//!
//! Basic is the one method every server must support. Its credentials are form-URL-encoded
//! (Appendix B) *before* they are joined with `:` and base64-encoded, so a secret holding `:`,
//! `%`, spaces or non-ASCII arrives intact. A space is sent as `%20`, never `+`: both are valid
//! form encoding, but some servers (Authlib, for one) decode Basic credentials with plain
//! percent-decoding, which leaves a `+` as it is; `%20` reads as a space either way.

use base64::Engine;
use secrecy::{ExposeSecret, SecretString};

use crate::domain::ClientAuth;

/// One client's credentials and the method it authenticates with.
#[derive(Debug, Clone)]
pub struct ClientCredentials {
    /// The OAuth client id.
    pub id: String,
    /// The client secret (absent for public clients).
    pub secret: Option<SecretString>,
    /// How the credentials are sent.
    pub method: ClientAuth,
}

impl ClientCredentials {
    /// Adds the credentials to a token request: a Basic `Authorization` header, or fields of
    /// the form (`form` is the request's other fields, to which they are appended).
    pub fn apply<'a>(
        &'a self,
        request: reqwest::RequestBuilder,
        form: &mut Vec<(&'static str, &'a str)>,
    ) -> reqwest::RequestBuilder {
        match (self.method, &self.secret) {
            (ClientAuth::Basic, Some(secret)) => {
                let value = basic_authorization(&self.id, secret);
                match reqwest::header::HeaderValue::from_str(value.expose_secret()) {
                    Ok(mut header) => {
                        header.set_sensitive(true);
                        request.header(reqwest::header::AUTHORIZATION, header)
                    }
                    // Base64 is always a valid header value; a builder error would surface on send.
                    Err(_) => request.header(reqwest::header::AUTHORIZATION, value.expose_secret()),
                }
            }
            (ClientAuth::Post, Some(secret)) => {
                form.push(("client_id", self.id.as_str()));
                form.push(("client_secret", secret.expose_secret()));
                request
            }
            (ClientAuth::None, _) | (_, None) => {
                form.push(("client_id", self.id.as_str()));
                request
            }
        }
    }
}

/// `Basic base64(urlencode(id) ":" urlencode(secret))`, as RFC 6749 §2.3.1 spells it.
pub fn basic_authorization(client_id: &str, client_secret: &SecretString) -> SecretString {
    let pair = format!("{}:{}", form_encode(client_id), form_encode(client_secret.expose_secret()));
    SecretString::from(format!("Basic {}", base64::engine::general_purpose::STANDARD.encode(pair)))
}

/// `application/x-www-form-urlencoded` encoding of one value, with a space as `%20` (a literal
/// `+` is already `%2B`, so every `+` the encoder writes stands for a space).
fn form_encode(value: &str) -> String {
    url::form_urlencoded::byte_serialize(value.as_bytes()).collect::<String>().replace('+', "%20")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn decoded(header: &SecretString) -> String {
        let encoded = header.expose_secret().strip_prefix("Basic ").unwrap();
        String::from_utf8(base64::engine::general_purpose::STANDARD.decode(encoded).unwrap()).unwrap()
    }

    #[test]
    fn basic_credentials_are_form_encoded_before_base64() {
        let secret = SecretString::from("a:b%c d/é+");
        let header = basic_authorization("my client:1", &secret);
        assert_eq!(decoded(&header), "my%20client%3A1:a%3Ab%25c%20d%2F%C3%A9%2B");
    }

    #[test]
    fn form_encoded_basic_credentials_split_on_the_only_colon_and_decode_back() {
        let (id, secret) = ("id:with:colons", "s3cr3t:%41 ü");
        let pair = decoded(&basic_authorization(id, &SecretString::from(secret)));
        let (got_id, got_secret) = pair.split_once(':').unwrap();
        let decode =
            |text: &str| url::form_urlencoded::parse(format!("v={text}").as_bytes()).next().unwrap().1.into_owned();
        assert_eq!((decode(got_id).as_str(), decode(got_secret).as_str()), (id, secret));
    }

    #[test]
    fn plain_credentials_are_unchanged_by_the_encoding() {
        let header = basic_authorization("app-1", &SecretString::from("abc_DEF.123-x"));
        assert_eq!(decoded(&header), "app-1:abc_DEF.123-x");
    }
}
