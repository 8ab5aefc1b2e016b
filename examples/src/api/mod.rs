//! The local API server: REST routes under `/v1/` and three WebSocket routes,
//! all behind the bearer token. See `docs/local-api.md`.

mod auth;
mod error;
mod pairing;
mod routes;
mod ws;
mod ws_peers;
mod ws_register;
mod ws_subscribe;

use std::sync::Arc;

use axum::{
    extract::DefaultBodyLimit,
    http::{StatusCode, Uri},
    middleware,
    routing::{get, post, put},
    Router,
};
use tokio::sync::watch;

use atmosphere::Node;

pub use error::ApiError;

/// Extra request-body room beyond the payload itself (JSON framing, topic).
const BODY_MARGIN: usize = 64 * 1024;

/// What every route handler shares.
#[derive(Clone)]
pub struct ApiState {
    /// The node the API drives.
    pub node: Node,
    /// The bearer token clients must present.
    token: Arc<str>,
    /// The node's payload limit (`Config::max_payload`).
    pub max_payload: usize,
    /// Turns `true` when the daemon shuts down; long-lived sockets close then.
    pub shutdown: watch::Receiver<bool>,
}

impl ApiState {
    /// Shared state for [`router`].
    pub fn new(
        node: Node,
        token: String,
        max_payload: usize,
        shutdown: watch::Receiver<bool>,
    ) -> Self {
        Self {
            node,
            token: token.into(),
            max_payload,
            shutdown,
        }
    }

    /// Largest request body or WebSocket message accepted: a base64-encoded
    /// maximal payload plus framing.
    pub fn body_limit(&self) -> usize {
        self.max_payload
            .saturating_mul(4)
            .div_ceil(3)
            .saturating_add(BODY_MARGIN)
    }
}

/// All routes, with authentication and the body limit applied.
pub fn router(state: ApiState) -> Router {
    let body_limit = state.body_limit();
    Router::new()
        .route("/v1/status", get(routes::status))
        .route("/v1/metrics", get(routes::metrics))
        .route("/v1/peers", get(routes::peers))
        .route("/v1/peers/watch", get(ws_peers::watch))
        .route(
            "/v1/meshes",
            get(routes::list_meshes).post(routes::create_mesh),
        )
        .route(
            "/v1/meshes/{mesh}",
            get(routes::get_mesh).delete(routes::forget_mesh),
        )
        .route(
            "/v1/meshes/{mesh}/auto-reconnect",
            put(routes::set_auto_reconnect),
        )
        .route("/v1/invites", post(routes::create_invite))
        .route("/v1/nearby", get(pairing::nearby))
        .route("/v1/pairing", get(pairing::overview).post(pairing::request))
        .route("/v1/pairing/accept", put(pairing::accept))
        .route("/v1/pairing/{id}", get(pairing::session))
        .route("/v1/pairing/{id}/confirm", post(pairing::confirm))
        .route("/v1/pairing/{id}/reject", post(pairing::reject))
        .route("/v1/join", post(routes::join))
        .route("/v1/publish", post(routes::publish))
        .route("/v1/call", post(routes::call))
        .route("/v1/subscribe", get(ws_subscribe::subscribe))
        .route("/v1/register", get(ws_register::register))
        .fallback(no_route)
        .method_not_allowed_fallback(wrong_method)
        .layer(DefaultBodyLimit::max(body_limit))
        .layer(middleware::from_fn_with_state(
            state.clone(),
            auth::require_token,
        ))
        .with_state(state)
}

/// 404 JSON error for unknown routes.
async fn no_route(uri: Uri) -> ApiError {
    ApiError::no_route(uri.path())
}

/// 405 JSON error for a known route with the wrong method.
async fn wrong_method(uri: Uri) -> ApiError {
    ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        "method_not_allowed",
        format!("method not allowed on {}", uri.path()),
    )
}
