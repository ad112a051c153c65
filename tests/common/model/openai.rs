//! The scripted openai API. Not written yet: every request gets 501.

use std::sync::Arc;

use super::Shared;

/// The routes of this API over `shared`.
pub fn router(_shared: Arc<Shared>) -> axum::Router {
    axum::Router::new().fallback(|| async { axum::http::StatusCode::NOT_IMPLEMENTED })
}
