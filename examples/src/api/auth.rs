//! Bearer-token authentication for every route, WebSocket upgrades included.

use axum::{
    extract::{Request, State},
    http::{header::AUTHORIZATION, HeaderMap},
    middleware::Next,
    response::{IntoResponse, Response},
};

use super::{ApiError, ApiState};
use crate::token::constant_time_eq;

/// Rejects requests without `Authorization: Bearer <token>` with 401.
pub async fn require_token(
    State(state): State<ApiState>,
    request: Request,
    next: Next,
) -> Response {
    if !is_authorized(request.headers(), &state.token) {
        tracing::debug!(path = %request.uri().path(), "rejected request without a valid token");
        return ApiError::unauthorized().into_response();
    }
    next.run(request).await
}

/// Whether the headers carry `Bearer <token>` (scheme case-insensitive).
fn is_authorized(headers: &HeaderMap, token: &str) -> bool {
    let Some(value) = headers.get(AUTHORIZATION).and_then(|v| v.to_str().ok()) else {
        return false;
    };
    let Some((scheme, presented)) = value.trim().split_once(' ') else {
        return false;
    };
    scheme.eq_ignore_ascii_case("bearer")
        && constant_time_eq(presented.trim().as_bytes(), token.as_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    fn headers(value: &'static str) -> HeaderMap {
        let mut headers = HeaderMap::new();
        headers.insert(AUTHORIZATION, HeaderValue::from_static(value));
        headers
    }

    #[test]
    fn accepts_only_the_bearer_token() {
        assert!(is_authorized(&headers("Bearer secret"), "secret"));
        assert!(is_authorized(&headers("bearer secret"), "secret"));
        assert!(!is_authorized(&headers("Bearer other"), "secret"));
        assert!(!is_authorized(&headers("Basic secret"), "secret"));
        assert!(!is_authorized(&headers("secret"), "secret"));
        assert!(!is_authorized(&HeaderMap::new(), "secret"));
    }
}
