//! API errors: every failure becomes `{"error": "...", "kind": "..."}` with a
//! fitting HTTP status.

use axum::{
    extract::rejection::{JsonRejection, QueryRejection},
    http::{header, StatusCode},
    response::{IntoResponse, Response},
    Json,
};

use atmosphere::{Error, RpcError};

use crate::proto::ErrorBody;

/// An API error: status, stable kind, message.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{message}")]
pub struct ApiError {
    /// The HTTP status.
    pub status: StatusCode,
    /// The stable machine-readable kind.
    pub kind: &'static str,
    /// The human-readable message.
    pub message: String,
}

impl ApiError {
    /// An error with this status and kind.
    pub fn new(status: StatusCode, kind: &'static str, message: impl Into<String>) -> Self {
        Self {
            status,
            kind,
            message: message.into(),
        }
    }

    /// 400 `bad_request`.
    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "bad_request", message)
    }

    /// 401 `unauthorized`.
    pub fn unauthorized() -> Self {
        Self::new(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "missing or wrong API token (send `Authorization: Bearer <token>` with the token from <data dir>/api.token)",
        )
    }

    /// 404 `not_found` for unknown routes.
    pub fn no_route(path: &str) -> Self {
        Self::new(
            StatusCode::NOT_FOUND,
            "not_found",
            format!("no API route {path}"),
        )
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = Json(ErrorBody {
            error: self.message,
            kind: self.kind.to_owned(),
        });
        let mut response = (self.status, body).into_response();
        if self.status == StatusCode::UNAUTHORIZED {
            response.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                header::HeaderValue::from_static("Bearer"),
            );
        }
        response
    }
}

impl From<Error> for ApiError {
    fn from(error: Error) -> Self {
        let (status, kind) = match &error {
            Error::Config(_) => (StatusCode::BAD_REQUEST, "invalid_config"),
            Error::Store(_) => (StatusCode::INTERNAL_SERVER_ERROR, "store"),
            Error::Identity(_) => (StatusCode::INTERNAL_SERVER_ERROR, "identity"),
            Error::Transport(_) => (StatusCode::BAD_GATEWAY, "transport"),
            Error::Topic(_) => (StatusCode::BAD_REQUEST, "invalid_topic"),
            Error::PayloadTooLarge { .. } => (StatusCode::PAYLOAD_TOO_LARGE, "payload_too_large"),
            Error::Invite(_) => (StatusCode::BAD_REQUEST, "invalid_invite"),
            Error::Certificate(_) => (StatusCode::BAD_REQUEST, "invalid_certificate"),
            Error::UnknownMesh(_) => (StatusCode::NOT_FOUND, "unknown_mesh"),
            Error::AmbiguousMesh(_) => (StatusCode::CONFLICT, "ambiguous_mesh"),
            Error::NotFounder(_) => (StatusCode::FORBIDDEN, "not_founder"),
            Error::Join(_) => (StatusCode::CONFLICT, "join_failed"),
            Error::Denied(_) => (StatusCode::FORBIDDEN, "denied"),
            Error::Invalid(_) => (StatusCode::BAD_REQUEST, "bad_request"),
            Error::AlreadyRegistered(_) => (StatusCode::CONFLICT, "already_registered"),
            Error::Busy(_) => (StatusCode::TOO_MANY_REQUESTS, "busy"),
            Error::Timeout(_) => (StatusCode::GATEWAY_TIMEOUT, "timeout"),
            Error::Shutdown => (StatusCode::SERVICE_UNAVAILABLE, "shutdown"),
        };
        Self::new(status, kind, error.to_string())
    }
}

impl From<RpcError> for ApiError {
    fn from(error: RpcError) -> Self {
        let (status, kind) = match &error {
            RpcError::NoProvider(_) => (StatusCode::SERVICE_UNAVAILABLE, "no_provider"),
            RpcError::Timeout(_) => (StatusCode::GATEWAY_TIMEOUT, "timeout"),
            RpcError::Denied(_) => (StatusCode::FORBIDDEN, "denied"),
            RpcError::Remote(_) => (StatusCode::BAD_GATEWAY, "remote_error"),
            RpcError::Transport(_) => (StatusCode::BAD_GATEWAY, "transport"),
            RpcError::Invalid(_) => (StatusCode::BAD_REQUEST, "invalid_call"),
        };
        Self::new(status, kind, error.to_string())
    }
}

impl From<JsonRejection> for ApiError {
    fn from(rejection: JsonRejection) -> Self {
        let status = rejection.status();
        let kind = match status {
            StatusCode::PAYLOAD_TOO_LARGE => "payload_too_large",
            StatusCode::UNSUPPORTED_MEDIA_TYPE => "unsupported_media_type",
            _ => "bad_request",
        };
        Self::new(status, kind, rejection.body_text())
    }
}

impl From<QueryRejection> for ApiError {
    fn from(rejection: QueryRejection) -> Self {
        Self::bad_request(rejection.body_text())
    }
}
