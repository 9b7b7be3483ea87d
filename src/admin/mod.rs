//! The admin API of every role (axum, JSON): what the CLI talks to.
//!
//! Every call carries `Authorization: Bearer <admin_token>`; anything else is a 401 before any
//! handler runs; the one exception is the dashboard page and its assets, which hold no data.
//! Malformed requests get a 400 whose body says what is wrong.

pub mod cluster;
pub mod coverage;
pub mod dashboard;
pub mod https;
pub mod hub;
pub mod node;
pub mod queue;

use crate::wire::ErrorBody;
use axum::extract::{Request, State};
use axum::http::{header, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::{Json, Router};

pub use hub::hub_router;
pub use node::node_router;

/// An error reply with its status.
#[derive(Debug)]
pub struct ApiError(pub StatusCode, pub String);

impl ApiError {
    /// 400 with a reason.
    pub fn bad_request(reason: impl Into<String>) -> ApiError {
        ApiError(StatusCode::BAD_REQUEST, reason.into())
    }
    /// 500 with a reason (logged by the caller).
    pub fn internal(reason: impl std::fmt::Display) -> ApiError {
        ApiError(StatusCode::INTERNAL_SERVER_ERROR, reason.to_string())
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (self.0, Json(ErrorBody { error: self.1 })).into_response()
    }
}

/// Wraps a role's router with bearer-token authentication.
pub fn with_auth(router: Router, token: String) -> Router {
    router.layer(middleware::from_fn_with_state(token, require_token))
}

async fn require_token(State(token): State<String>, req: Request, next: Next) -> Response {
    let given = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "));
    match given {
        Some(t) if constant_time_eq(t.trim().as_bytes(), token.as_bytes()) => next.run(req).await,
        _ => ApiError(
            StatusCode::UNAUTHORIZED,
            "missing or wrong admin token (Authorization: Bearer ...)".into(),
        )
        .into_response(),
    }
}

/// Compares without an early exit, so the token cannot be guessed byte by byte from timings.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Turns a query/JSON extraction failure into our 400 body. axum's own message stops at "Failed to
/// deserialize the JSON body", so the causes are appended: they name the field or syntax at fault.
pub fn rejection(e: impl std::error::Error) -> ApiError {
    let mut text = e.to_string();
    let mut cause = e.source();
    while let Some(c) = cause {
        let more = c.to_string();
        if !text.ends_with(&more) {
            text.push_str(": ");
            text.push_str(&more);
        }
        cause = c.source();
    }
    ApiError::bad_request(text)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_comparison() {
        assert!(constant_time_eq(b"abc", b"abc"));
        assert!(!constant_time_eq(b"abc", b"abd"));
        assert!(!constant_time_eq(b"abc", b"abcd"));
    }
}
