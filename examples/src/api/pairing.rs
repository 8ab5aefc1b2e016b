//! Nearby devices and proximity pairing: `GET /v1/nearby` and the
//! `/v1/pairing` routes. See `docs/local-api.md`.

use axum::{
    extract::{Path, State},
    http::StatusCode,
    Json,
};

use atmosphere::{Error, NearbyDevice, PairingMode, PairingSession};

use super::{routes::Body, ApiError, ApiState};
use crate::proto::{PairAcceptRequest, PairRequest, PairingOverview};

/// Longest device string accepted (a multiaddr with `/p2p/…` fits easily).
const MAX_DEVICE_LEN: usize = 1024;

/// `GET /v1/nearby`.
pub async fn nearby(State(state): State<ApiState>) -> Result<Json<Vec<NearbyDevice>>, ApiError> {
    Ok(Json(state.node.nearby().await?))
}

/// `GET /v1/pairing` → `{"mode", "sessions"}`.
pub async fn overview(State(state): State<ApiState>) -> Result<Json<PairingOverview>, ApiError> {
    let (mode, sessions) = state.node.pairing().await?;
    Ok(Json(PairingOverview { mode, sessions }))
}

/// `PUT /v1/pairing/accept` `{"mesh"?, "on"}` → the pairing mode.
pub async fn accept(
    State(state): State<ApiState>,
    body: Body<PairAcceptRequest>,
) -> Result<Json<PairingMode>, ApiError> {
    let Json(request) = body?;
    let mesh = request.mesh.as_deref().map(str::trim);
    if mesh.is_some_and(str::is_empty) {
        return Err(ApiError::bad_request("the mesh cannot be empty"));
    }
    let mode = state
        .node
        .pair_accept(mesh, request.on)
        .await
        .map_err(|error| match error {
            Error::NotFounder(mesh) => ApiError::new(
                StatusCode::FORBIDDEN,
                "not_founder",
                format!("only the founder of mesh {mesh} can accept pairing requests"),
            ),
            other => other.into(),
        })?;
    tracing::info!(
        accepting = mode.accepting,
        mesh = mode.mesh_id.as_deref().unwrap_or("-"),
        "pairing mode"
    );
    Ok(Json(mode))
}

/// `POST /v1/pairing` `{"device"}` → 201 and the new session.
pub async fn request(
    State(state): State<ApiState>,
    body: Body<PairRequest>,
) -> Result<(StatusCode, Json<PairingSession>), ApiError> {
    let Json(request) = body?;
    let device = request.device.trim();
    if device.is_empty() {
        return Err(ApiError::bad_request(
            "the device cannot be empty (a nearby device's id, a peer id or a multiaddr)",
        ));
    }
    if device.len() > MAX_DEVICE_LEN {
        return Err(ApiError::bad_request(format!(
            "the device is longer than {MAX_DEVICE_LEN} bytes"
        )));
    }
    let session = state.node.pair(device).await?;
    tracing::info!(session = session.id, peer = %session.peer_id, "pairing requested");
    Ok((StatusCode::CREATED, Json(session)))
}

/// `GET /v1/pairing/{id}` → the session.
pub async fn session(
    State(state): State<ApiState>,
    Path(id): Path<String>,
) -> Result<Json<PairingSession>, ApiError> {
    Ok(Json(find_session(&state, &id).await?))
}

/// `POST /v1/pairing/{id}/confirm` → the session.
pub async fn confirm(
    State(state): State<ApiState>,
    Path(id): Path<String>,
) -> Result<Json<PairingSession>, ApiError> {
    decide(&state, &id, true).await.map(Json)
}

/// `POST /v1/pairing/{id}/reject` → the session.
pub async fn reject(
    State(state): State<ApiState>,
    Path(id): Path<String>,
) -> Result<Json<PairingSession>, ApiError> {
    decide(&state, &id, false).await.map(Json)
}

/// Confirms or rejects session `id`: 404 for an unknown session, 409 for one
/// that is over or not at a point where the user can decide.
async fn decide(state: &ApiState, id: &str, confirm: bool) -> Result<PairingSession, ApiError> {
    let session = find_session(state, id).await?;
    if session.is_over() {
        return Err(wrong_state(format!(
            "pairing session {} is already {}",
            session.id, session.state
        )));
    }
    let decided = if confirm {
        state.node.pair_confirm(session.id).await
    } else {
        state.node.pair_reject(session.id).await
    };
    let decided = decided.map_err(|error| match error {
        // The session moved on (or has no code yet) between the look-up and
        // the decision.
        Error::Invalid(message) => wrong_state(message),
        other => other.into(),
    })?;
    tracing::info!(
        session = decided.id,
        peer = %decided.peer_id,
        decision = if confirm { "confirmed" } else { "rejected" },
        "pairing decision"
    );
    Ok(decided)
}

/// The session whose id is `id` (decimal), among the recent ones.
async fn find_session(state: &ApiState, id: &str) -> Result<PairingSession, ApiError> {
    let id: u64 = id.trim().parse().map_err(|_| {
        ApiError::bad_request(format!(
            "`{id}` is not a pairing session id (a number, as in GET /v1/pairing)"
        ))
    })?;
    let (_, sessions) = state.node.pairing().await?;
    sessions.into_iter().find(|s| s.id == id).ok_or_else(|| {
        ApiError::new(
            StatusCode::NOT_FOUND,
            "unknown_session",
            format!("no pairing session {id} (GET /v1/pairing lists the recent ones)"),
        )
    })
}

/// 409 `pairing_state`.
fn wrong_state(message: impl Into<String>) -> ApiError {
    ApiError::new(StatusCode::CONFLICT, "pairing_state", message)
}
