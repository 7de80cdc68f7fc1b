//! Extractors that reject with the API's JSON error body instead of axum's plain text.
//!
//! axum's own `Path` and `Query` answer a malformed request with a `text/plain` body; these
//! wrappers run them and turn the rejection into an [`ApiError`] with the same status, so every
//! error a client sees is `{"error","message"}`. (The one request body, `POST …/rotate`'s, is
//! optional and parsed by its handler.)

use axum::extract::rejection::{PathRejection, QueryRejection};
use axum::extract::{FromRequestParts, Path, Query};
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

#[cfg(test)]
mod tests {
    use axum::Router;
    use axum::body::Body;
    use axum::http::{Request, StatusCode, header};
    use axum::routing::get;
    use serde::Deserialize;
    use tower::ServiceExt;

    use super::*;

    async fn call(router: Router, request: Request<Body>) -> (StatusCode, String, serde_json::Value) {
        let response = router.oneshot(request).await.unwrap();
        let status = response.status();
        let content_type = response.headers()[header::CONTENT_TYPE].to_str().unwrap().to_owned();
        let bytes = axum::body::to_bytes(response.into_body(), 1 << 20).await.unwrap();
        (status, content_type, serde_json::from_slice(&bytes).unwrap())
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
