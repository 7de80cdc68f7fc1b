//! Extractors that reject with the API's JSON error body instead of axum's plain text.
//!
//! axum's own `Path`, `Query` and `Json` answer a malformed request with a `text/plain`
//! body; these wrappers run them and turn the rejection into an [`ApiError`] with the same
//! status, so every error a client sees is `{"error","message"}`.

use axum::Json;
use axum::extract::rejection::{JsonRejection, PathRejection, QueryRejection};
use axum::extract::{FromRequest, FromRequestParts, Path, Query, Request};
use axum::http::request::Parts;
use serde::de::DeserializeOwned;

use super::ApiError;

/// Path parameters (as axum's [`Path`]); a segment that cannot be decoded (e.g. `%FF`,
/// which is not UTF-8) is a JSON 400 `bad_path`.
#[derive(Debug, Clone)]
pub struct ApiPath<T>(pub T);

impl<T, S> FromRequestParts<S> for ApiPath<T>
where
    T: DeserializeOwned + Send,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        let Path(value) =
            Path::<T>::from_request_parts(parts, state).await.map_err(|err: PathRejection| ApiError::from(err))?;
        Ok(Self(value))
    }
}

/// The query string (as axum's [`Query`]); one that does not fit `T` (an unknown parameter,
/// a bad value) is a JSON 400 `bad_query`.
#[derive(Debug, Clone)]
pub struct ApiQuery<T>(pub T);

impl<T, S> FromRequestParts<S> for ApiQuery<T>
where
    T: DeserializeOwned,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        let Query(value) =
            Query::<T>::from_request_parts(parts, state).await.map_err(|err: QueryRejection| ApiError::from(err))?;
        Ok(Self(value))
    }
}

/// A JSON body (as axum's [`Json`]); a wrong content type is a JSON 415, a body over the
/// limit a 413, and a body that is not valid JSON for `T` a 400 `bad_json`.
#[derive(Debug, Clone)]
pub struct ApiJson<T>(pub T);

impl<T, S> FromRequest<S> for ApiJson<T>
where
    T: DeserializeOwned,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request(request: Request, state: &S) -> Result<Self, Self::Rejection> {
        let Json(value) =
            Json::<T>::from_request(request, state).await.map_err(|err: JsonRejection| ApiError::from(err))?;
        Ok(Self(value))
    }
}

#[cfg(test)]
mod tests {
    use axum::Router;
    use axum::body::Body;
    use axum::http::{Request, StatusCode, header};
    use axum::routing::{get, post};
    use serde::Deserialize;
    use tower::ServiceExt;

    use super::*;

    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Counted {
        #[allow(dead_code)]
        count: u32,
    }

    async fn call(router: Router, request: Request<Body>) -> (StatusCode, String, serde_json::Value) {
        let response = router.oneshot(request).await.unwrap();
        let status = response.status();
        let content_type = response.headers()[header::CONTENT_TYPE].to_str().unwrap().to_owned();
        let bytes = axum::body::to_bytes(response.into_body(), 1 << 20).await.unwrap();
        (status, content_type, serde_json::from_slice(&bytes).unwrap())
    }

    fn json_router() -> Router {
        Router::new().route("/", post(|ApiJson(_): ApiJson<Counted>| async { "ok" }))
    }

    fn post_json(content_type: Option<&str>, body: &'static str) -> Request<Body> {
        let mut builder = Request::post("/");
        if let Some(content_type) = content_type {
            builder = builder.header(header::CONTENT_TYPE, content_type);
        }
        builder.body(Body::from(body)).unwrap()
    }

    #[tokio::test]
    async fn every_json_body_rejection_is_a_json_error_with_its_status() {
        let cases = [
            (Some("application/json"), "{not json", StatusCode::BAD_REQUEST, "bad_json"),
            (Some("application/json"), r#"{"count": "five"}"#, StatusCode::BAD_REQUEST, "bad_json"),
            (Some("application/json"), r#"{"count": 1, "extra": 2}"#, StatusCode::BAD_REQUEST, "bad_json"),
            (None, r#"{"count": 1}"#, StatusCode::UNSUPPORTED_MEDIA_TYPE, "unsupported_media_type"),
        ];
        for (content_type, body, status, code) in cases {
            let (got, content, answer) = call(json_router(), post_json(content_type, body)).await;
            assert_eq!((got, answer["error"].as_str()), (status, Some(code)), "{body}: {answer}");
            assert!(answer["message"].is_string(), "{answer}");
            assert_eq!(content, "application/json");
        }
        let ok = json_router().oneshot(post_json(Some("application/json"), r#"{"count": 1}"#)).await.unwrap();
        assert_eq!(ok.status(), StatusCode::OK);
    }

    #[tokio::test]
    async fn path_and_query_rejections_are_json_errors() {
        #[derive(Debug, Deserialize)]
        #[serde(deny_unknown_fields)]
        struct Filter {
            #[allow(dead_code)]
            limit: Option<u8>,
        }
        let router = Router::new()
            .route("/items/{id}", get(|ApiPath(_): ApiPath<u32>| async { "ok" }))
            .route("/names/{name}", get(|ApiPath(_): ApiPath<String>| async { "ok" }))
            .route("/list", get(|ApiQuery(_): ApiQuery<Filter>| async { "ok" }));
        let cases = [
            ("/items/seven", "bad_path"),
            ("/names/%FF", "bad_path"),
            ("/list?limit=300", "bad_query"),
            ("/list?unknown=1", "bad_query"),
        ];
        for (uri, code) in cases {
            let request = Request::get(uri).body(Body::empty()).unwrap();
            let (status, content_type, answer) = call(router.clone(), request).await;
            assert_eq!((status, answer["error"].as_str()), (StatusCode::BAD_REQUEST, Some(code)), "{uri}: {answer}");
            assert_eq!(content_type, "application/json");
        }
    }
}
