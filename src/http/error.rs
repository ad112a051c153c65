//! The one error shape of the HTTP surface:
//! `{ "error": { "code": "…", "message": "…" } }` with a fitting status.

use axum::Json;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde_json::json;

/// An error answered to an HTTP client.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiError {
    /// HTTP status.
    pub status: StatusCode,
    /// Stable code (`UNAUTHORIZED`, `NOT_FOUND`, `INVALID_NAME`, ...).
    pub code: &'static str,
    /// What went wrong, for a person.
    pub message: String,
}

impl ApiError {
    /// An error with any status and code.
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> ApiError {
        ApiError {
            status,
            code,
            message: message.into(),
        }
    }

    /// 401: missing or wrong bearer token.
    pub fn unauthorized() -> ApiError {
        ApiError::new(
            StatusCode::UNAUTHORIZED,
            "UNAUTHORIZED",
            "missing or wrong bearer token; send `Authorization: Bearer <token>` with the token from the broker's home",
        )
    }

    /// 403: a caller whose scope is below the one the route needs.
    pub fn forbidden_scope(needed: super::scope::Scope, method: &str, path: &str) -> ApiError {
        ApiError::new(
            StatusCode::FORBIDDEN,
            "FORBIDDEN_SCOPE",
            format!("{method} {path} needs the `{needed}` scope; this token's scope is lower"),
        )
    }

    /// 403: a `Host` that is not the loopback on the broker's port, as a
    /// browser sends after DNS rebinding.
    pub fn forbidden_host(port: u16) -> ApiError {
        ApiError::new(
            StatusCode::FORBIDDEN,
            "FORBIDDEN_HOST",
            format!(
                "this API answers only requests for localhost:{port}, 127.0.0.1:{port} or [::1]:{port}"
            ),
        )
    }

    /// 403: a browser `Origin` that is not a loopback page on the broker's
    /// port, as a web page elsewhere sends.
    pub fn forbidden_origin(port: u16) -> ApiError {
        ApiError::new(
            StatusCode::FORBIDDEN,
            "FORBIDDEN_ORIGIN",
            format!(
                "this API answers browsers only for pages of http://localhost:{port}, http://127.0.0.1:{port} or http://[::1]:{port}"
            ),
        )
    }

    /// 403: a request authenticated by the browser session cookie that
    /// changes state (or opens a WebSocket) without an `Origin`, so it
    /// cannot be shown to come from the broker's own page.
    pub fn origin_required() -> ApiError {
        ApiError::new(
            StatusCode::FORBIDDEN,
            "ORIGIN_REQUIRED",
            "a request with the browser session cookie that changes state must carry the page's Origin",
        )
    }

    /// 404 for a route that does not exist.
    pub fn no_route(path: &str) -> ApiError {
        ApiError::new(
            StatusCode::NOT_FOUND,
            "NOT_FOUND",
            format!("no route for {path}"),
        )
    }

    /// 500 for a failure inside the broker.
    pub fn internal(err: impl std::fmt::Display) -> ApiError {
        ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "INTERNAL",
            err.to_string(),
        )
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = json!({ "error": { "code": self.code, "message": self.message } });
        (self.status, Json(body)).into_response()
    }
}

/// Whether the request says its body is JSON (`application/json`, or any
/// `application/*+json`), as axum's own `Json` extractor requires.
fn json_content_type(headers: &axum::http::HeaderMap) -> bool {
    let Some(value) = headers
        .get(axum::http::header::CONTENT_TYPE)
        .and_then(|value| value.to_str().ok())
    else {
        return false;
    };
    let essence = value
        .split(';')
        .next()
        .unwrap_or_default()
        .trim()
        .to_ascii_lowercase();
    essence == "application/json"
        || (essence.starts_with("application/") && essence.ends_with("+json"))
}

/// Whether a body starts, after white space, with `{`: every request body
/// of this API is an object, and serde would otherwise read a struct from a
/// JSON array (`[]` as a request with every field defaulted).
fn is_json_object(bytes: &[u8]) -> bool {
    bytes
        .iter()
        .find(|byte| !byte.is_ascii_whitespace())
        .is_some_and(|byte| *byte == b'{')
}

/// A path parameter (an id) whose rejection (percent-decoding to something
/// that is not UTF-8, a missing segment) is answered in the API's error
/// shape, like [`JsonBody`].
#[derive(Debug, Clone)]
pub struct PathId(pub String);

impl<S: Send + Sync> axum::extract::FromRequestParts<S> for PathId {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut axum::http::request::Parts,
        state: &S,
    ) -> Result<Self, ApiError> {
        match axum::extract::Path::<String>::from_request_parts(parts, state).await {
            Ok(axum::extract::Path(id)) => Ok(PathId(id)),
            Err(rejection) => Err(ApiError::new(
                StatusCode::BAD_REQUEST,
                "INVALID_ID",
                rejection.body_text(),
            )),
        }
    }
}

/// A JSON request body whose every rejection (not JSON, wrong shape, too
/// large, wrong content type) is answered in the API's error shape with a
/// stable code, instead of axum's plain-text rejection.
#[derive(Debug, Clone, Copy, Default)]
pub struct JsonBody<T>(pub T);

impl<S, T> axum::extract::FromRequest<S> for JsonBody<T>
where
    T: serde::de::DeserializeOwned,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request(request: axum::extract::Request, state: &S) -> Result<Self, ApiError> {
        use axum::extract::rejection::JsonRejection;
        if !json_content_type(request.headers()) {
            return Err(ApiError::new(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "INVALID_CONTENT_TYPE",
                "send the body as JSON with `Content-Type: application/json`",
            ));
        }
        let parsed = match axum::body::Bytes::from_request(request, state).await {
            Ok(bytes) if !is_json_object(&bytes) => {
                return Err(ApiError::new(
                    StatusCode::BAD_REQUEST,
                    "INVALID_REQUEST",
                    "the body must be a JSON object",
                ));
            }
            Ok(bytes) => Json::<T>::from_bytes(&bytes),
            Err(err) => Err(JsonRejection::BytesRejection(err)),
        };
        match parsed {
            Ok(Json(value)) => Ok(JsonBody(value)),
            Err(JsonRejection::JsonDataError(err)) => Err(ApiError::new(
                StatusCode::BAD_REQUEST,
                "INVALID_REQUEST",
                err.body_text(),
            )),
            Err(JsonRejection::JsonSyntaxError(err)) => Err(ApiError::new(
                StatusCode::BAD_REQUEST,
                "INVALID_JSON",
                err.body_text(),
            )),
            Err(JsonRejection::MissingJsonContentType(_)) => Err(ApiError::new(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "INVALID_CONTENT_TYPE",
                "send the body as JSON with `Content-Type: application/json`",
            )),
            Err(JsonRejection::BytesRejection(err))
                if err.status() == StatusCode::PAYLOAD_TOO_LARGE =>
            {
                Err(ApiError::new(
                    StatusCode::PAYLOAD_TOO_LARGE,
                    "BODY_TOO_LARGE",
                    format!(
                        "the body is larger than {} bytes",
                        super::REQUEST_BODY_BYTES_MAX
                    ),
                ))
            }
            Err(other) => Err(ApiError::new(
                other.status(),
                "INVALID_REQUEST",
                other.body_text(),
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_an_object_is_a_request_body() {
        assert!(is_json_object(b"{}"));
        assert!(is_json_object(b" \n\t{\"a\":1}"));
        assert!(!is_json_object(b"[]"));
        assert!(!is_json_object(b"null"));
        assert!(!is_json_object(b""));
        assert!(!is_json_object(b"  \"{\""));
    }

    #[test]
    fn json_content_types() {
        let with = |value: &str| {
            let mut headers = axum::http::HeaderMap::new();
            headers.insert(axum::http::header::CONTENT_TYPE, value.parse().unwrap());
            json_content_type(&headers)
        };
        assert!(with("application/json"));
        assert!(with("Application/JSON; charset=utf-8"));
        assert!(with("application/problem+json"));
        assert!(!with("text/plain"));
        assert!(!with("application/jsonx"));
        assert!(!json_content_type(&axum::http::HeaderMap::new()));
    }
}
