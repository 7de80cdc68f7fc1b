//! Malformed answers for fault injection: what a broken proxy or a buggy provider might send
//! after the request was acted on — garbage, an oversize body, the token's field missing, of
//! the wrong type, or under an unexpected name. The provider clients must reject each with a
//! clear error that never quotes the token, and the engine must treat a rejected renewal
//! answer as an unknown outcome (the renewal may have happened).

use std::sync::Arc;
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use super::Shared;

/// Size of each chunk of an oversize answer.
pub const OVERSIZE_CHUNK_BYTES: usize = 64 * 1024;
/// Pause between the chunks of an oversize answer, so a client that stops reading stops the
/// stream (socket buffers do not swallow the rest) and the bytes sent show what it read.
pub const OVERSIZE_CHUNK_PAUSE: Duration = Duration::from_millis(2);

/// How an answer is malformed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "kind")]
pub enum Malformation {
    /// Not JSON: the start of the real answer (with its token), then an HTML error page.
    GarbageJson,
    /// The real answer padded with spaces to `bytes`, streamed in chunks without a
    /// `Content-Length` (counted in `Stats::malformed_bytes_sent`).
    Oversize {
        /// The body's total size.
        bytes: u64,
    },
    /// The real answer without the field that carries the token (`token`, `access_token`;
    /// `id` for a look-up).
    MissingField,
    /// The real answer with the token also in a field of another type (`scopes`, a list;
    /// `expires_in`, a number; `active`, a boolean), as a confused serializer might write it.
    WrongType,
    /// The token only under an unexpected name (`access_token` from GitLab's rotate, `token`
    /// from an OAuth refresh).
    TokenInUnexpectedField,
}

/// The fields of one kind of answer that a malformation plays with.
struct Fields {
    /// The field that carries the token (or the id, for a look-up).
    key: &'static str,
    /// A field whose type is not a string.
    typed: &'static str,
    /// A name a token does not belong under.
    unexpected: &'static str,
}

/// Which answer this is, from the fields it has.
fn fields_of(answer: &serde_json::Map<String, Value>) -> Fields {
    if answer.contains_key("token") {
        return Fields { key: "token", typed: "scopes", unexpected: "access_token" };
    }
    if answer.contains_key("access_token") {
        return Fields { key: "access_token", typed: "expires_in", unexpected: "token" };
    }
    Fields { key: "id", typed: "active", unexpected: "token" }
}

/// Replaces a successful JSON answer by its malformed form; other answers pass unchanged.
pub async fn malform(shared: Arc<Shared>, how: Malformation, response: Response) -> Response {
    if !response.status().is_success() {
        return response;
    }
    shared.with_state(|state| state.stats.malformed_answers += 1);
    let body = axum::body::to_bytes(response.into_body(), usize::MAX).await.unwrap_or_default();
    let Ok(Value::Object(mut answer)) = serde_json::from_slice::<Value>(&body) else {
        return json_body(body.to_vec());
    };
    let fields = fields_of(&answer);
    let token = match answer.get(fields.key) {
        Some(Value::String(text)) => text.clone(),
        Some(other) => other.to_string(),
        None => String::new(),
    };
    match how {
        Malformation::GarbageJson => {
            json_body(format!("{{\"{}\": \"{token}\", <html><body>502 Bad Gateway</body></html>", fields.key).into())
        }
        Malformation::Oversize { bytes } => oversize(shared, Value::Object(answer).to_string(), bytes),
        Malformation::MissingField => {
            answer.remove(fields.key);
            json_body(Value::Object(answer).to_string().into())
        }
        Malformation::WrongType => {
            answer.insert(fields.typed.to_owned(), json!(token));
            json_body(Value::Object(answer).to_string().into())
        }
        Malformation::TokenInUnexpectedField => {
            answer.remove(fields.key);
            answer.insert(fields.unexpected.to_owned(), json!(token));
            json_body(Value::Object(answer).to_string().into())
        }
    }
}

fn json_body(body: Vec<u8>) -> Response {
    (StatusCode::OK, [(header::CONTENT_TYPE, "application/json")], body).into_response()
}

/// `answer` followed by spaces up to `bytes`, streamed chunk by chunk; every chunk handed to
/// the connection is counted, so a test can tell how much the client read before it gave up.
fn oversize(shared: Arc<Shared>, answer: String, bytes: u64) -> Response {
    let total = usize::try_from(bytes).unwrap_or(usize::MAX).max(answer.len());
    let first = Bytes::from(answer);
    let stream = futures_util::stream::unfold((0usize, Some(first)), move |(sent, first)| {
        let shared = shared.clone();
        async move {
            if sent >= total {
                return None;
            }
            if sent > 0 {
                tokio::time::sleep(OVERSIZE_CHUNK_PAUSE).await;
            }
            let chunk = first.unwrap_or_else(|| Bytes::from(vec![b' '; OVERSIZE_CHUNK_BYTES.min(total - sent)]));
            let length = chunk.len();
            shared.with_state(|state| state.stats.malformed_bytes_sent += length as u64);
            Some((Ok::<_, std::io::Error>(chunk), (sent + length, None)))
        }
    });
    let body = Body::from_stream(stream);
    (StatusCode::OK, [(header::CONTENT_TYPE, "application/json")], body).into_response()
}
