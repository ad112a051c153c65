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
        match Json::<T>::from_request(request, state).await {
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
