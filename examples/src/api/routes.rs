//! REST route handlers: each turns JSON into one [`atmosphere::Node`] call.

use std::time::Duration;

use axum::{
    extract::{rejection::JsonRejection, Path, State},
    http::StatusCode,
    response::IntoResponse,
    Json,
};
use libp2p::PeerId;

use atmosphere::{CallOptions, Invite, InviteOptions, JoinReport, MeshInfo, PeerInfo, Status};

use super::{ApiError, ApiState};
use crate::proto::{
    bytes_to_json, decode_base64, encode_base64, AutoReconnectRequest, CallRequest, CallResponse,
    CreateMeshRequest, InviteRequest, JoinRequest, PublishRequest, PublishResponse,
};

/// Default RPC timeout when the request names none.
const DEFAULT_CALL_TIMEOUT: Duration = Duration::from_secs(5);
/// Longest RPC timeout a request may ask for.
const MAX_CALL_TIMEOUT: Duration = Duration::from_secs(600);
/// Longest invite validity a request may ask for (30 days).
const MAX_INVITE_TTL_SECS: u64 = 30 * 24 * 3600;

/// A JSON body, or the rejection mapped to an [`ApiError`] by the handler.
pub(super) type Body<T> = Result<Json<T>, JsonRejection>;

/// `GET /v1/status`.
pub async fn status(State(state): State<ApiState>) -> Result<Json<Status>, ApiError> {
    Ok(Json(state.node.status().await?))
}

/// `GET /v1/metrics`: Prometheus metrics in OpenMetrics text.
pub async fn metrics(State(state): State<ApiState>) -> impl axum::response::IntoResponse {
    (
        [(
            axum::http::header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        state.node.metrics(),
    )
}

/// `GET /v1/peers`.
pub async fn peers(State(state): State<ApiState>) -> Result<Json<Vec<PeerInfo>>, ApiError> {
    Ok(Json(state.node.peers().await?))
}

/// `GET /v1/meshes`.
pub async fn list_meshes(State(state): State<ApiState>) -> Result<Json<Vec<MeshInfo>>, ApiError> {
    Ok(Json(state.node.list_meshes().await?))
}

/// `POST /v1/meshes` `{"name"}` → 201 and the mesh.
pub async fn create_mesh(
    State(state): State<ApiState>,
    body: Body<CreateMeshRequest>,
) -> Result<impl IntoResponse, ApiError> {
    let Json(request) = body?;
    let name = request.name.trim();
    if name.is_empty() {
        return Err(ApiError::bad_request("the mesh name cannot be empty"));
    }
    let info = state.node.create_mesh(name).await?;
    tracing::info!(mesh = %info.id, name = %info.name, "created mesh");
    Ok((StatusCode::CREATED, Json(info)))
}

/// `GET /v1/meshes/{mesh}` → the mesh (by id, else by name).
pub async fn get_mesh(
    State(state): State<ApiState>,
    Path(mesh): Path<String>,
) -> Result<Json<MeshInfo>, ApiError> {
    let meshes = state.node.list_meshes().await?;
    Ok(Json(find_mesh(meshes, &mesh)?))
}

/// The mesh whose id is `wanted`, else the only one named `wanted` (the
/// node's own rule for naming meshes).
fn find_mesh(meshes: Vec<MeshInfo>, wanted: &str) -> Result<MeshInfo, ApiError> {
    let wanted = wanted.trim();
    let (by_id, others): (Vec<MeshInfo>, Vec<MeshInfo>) =
        meshes.into_iter().partition(|m| m.id == wanted);
    if let Some(mesh) = by_id.into_iter().next() {
        return Ok(mesh);
    }
    let mut named = others.into_iter().filter(|m| m.name == wanted);
    match (named.next(), named.next()) {
        (Some(mesh), None) => Ok(mesh),
        (None, _) => Err(atmosphere::Error::UnknownMesh(wanted.to_owned()).into()),
        (Some(_), Some(_)) => Err(atmosphere::Error::AmbiguousMesh(wanted.to_owned()).into()),
    }
}

/// `PUT /v1/meshes/{mesh}/auto-reconnect` `{"enabled"}` → the mesh.
pub async fn set_auto_reconnect(
    State(state): State<ApiState>,
    Path(mesh): Path<String>,
    body: Body<AutoReconnectRequest>,
) -> Result<Json<MeshInfo>, ApiError> {
    let Json(request) = body?;
    let info = state
        .node
        .set_auto_reconnect(&mesh, request.enabled)
        .await?;
    tracing::info!(mesh = %info.id, enabled = request.enabled, "set auto-reconnect");
    Ok(Json(info))
}

/// `DELETE /v1/meshes/{mesh}` → 204.
pub async fn forget_mesh(
    State(state): State<ApiState>,
    Path(mesh): Path<String>,
) -> Result<StatusCode, ApiError> {
    state.node.forget(&mesh).await?;
    tracing::info!(%mesh, "forgot mesh");
    Ok(StatusCode::NO_CONTENT)
}

/// `POST /v1/invites` `{"mesh"?, "uses"?, "ttl_secs"?, "permissions"?}` → 201 and the invite.
pub async fn create_invite(
    State(state): State<ApiState>,
    body: Body<InviteRequest>,
) -> Result<(StatusCode, Json<Invite>), ApiError> {
    let Json(request) = body?;
    let mut options = InviteOptions::default();
    if let Some(uses) = request.uses {
        if uses == 0 {
            return Err(ApiError::bad_request("uses must be at least 1"));
        }
        options.uses = uses;
    }
    if let Some(ttl) = request.ttl_secs {
        if ttl == 0 || ttl > MAX_INVITE_TTL_SECS {
            return Err(ApiError::bad_request(format!(
                "ttl_secs must be between 1 and {MAX_INVITE_TTL_SECS}"
            )));
        }
        options.ttl = Duration::from_secs(ttl);
    }
    if let Some(permissions) = request.permissions {
        options.permissions = permissions;
    }
    let mesh = request.mesh.as_deref();
    let invite = state.node.invite(mesh, options).await?;
    tracing::info!(mesh = %invite.mesh_id, uses = invite.uses, "created invite");
    Ok((StatusCode::CREATED, Json(invite)))
}

/// `POST /v1/join` `{"uri"}` → the join report: the joined mesh's fields,
/// plus the endpoint and path the join went through.
pub async fn join(
    State(state): State<ApiState>,
    body: Body<JoinRequest>,
) -> Result<Json<JoinReport>, ApiError> {
    let Json(request) = body?;
    let uri = request.uri.trim();
    if uri.is_empty() {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "invalid_invite",
            "the invite URI is empty",
        ));
    }
    let report = state.node.join_with_report(uri).await?;
    tracing::info!(
        mesh = %report.mesh.id,
        name = %report.mesh.name,
        endpoint = report.endpoint.as_deref().unwrap_or("-"),
        path = report.path.as_deref().unwrap_or("-"),
        "joined mesh"
    );
    Ok(Json(report))
}

/// `POST /v1/publish` `{"topic", "payload" | "payload_base64"}` → `{"delivered"}`.
pub async fn publish(
    State(state): State<ApiState>,
    body: Body<PublishRequest>,
) -> Result<Json<PublishResponse>, ApiError> {
    let Json(request) = body?;
    let payload = match (request.payload, request.payload_base64) {
        (Some(text), None) => text.into_bytes(),
        (None, Some(encoded)) => decode_base64(&encoded)
            .map_err(|e| ApiError::bad_request(format!("payload_base64 is not base64: {e}")))?,
        (None, None) => Vec::new(),
        (Some(_), Some(_)) => {
            return Err(ApiError::bad_request(
                "give either payload or payload_base64, not both",
            ))
        }
    };
    check_size(payload.len(), state.max_payload)?;
    let delivered = state.node.publish(&request.topic, payload).await?;
    tracing::debug!(topic = %request.topic, delivered, "published");
    Ok(Json(PublishResponse { delivered }))
}

/// `POST /v1/call` `{"uri", "args" | "args_base64", "peer"?, "timeout_ms"?}` → the result.
pub async fn call(
    State(state): State<ApiState>,
    body: Body<CallRequest>,
) -> Result<Json<CallResponse>, ApiError> {
    let Json(request) = body?;
    let args = match (request.args, request.args_base64) {
        (Some(value), None) => serde_json::to_vec(&value)
            .map_err(|e| ApiError::bad_request(format!("args cannot be serialized: {e}")))?,
        (None, Some(encoded)) => decode_base64(&encoded)
            .map_err(|e| ApiError::bad_request(format!("args_base64 is not base64: {e}")))?,
        (None, None) => Vec::new(),
        (Some(_), Some(_)) => {
            return Err(ApiError::bad_request(
                "give either args or args_base64, not both",
            ))
        }
    };
    check_size(args.len(), state.max_payload)?;
    let mut options = CallOptions::default();
    if let Some(ms) = request.timeout_ms {
        let timeout = Duration::from_millis(ms);
        if timeout.is_zero() || timeout > MAX_CALL_TIMEOUT {
            return Err(ApiError::bad_request(format!(
                "timeout_ms must be between 1 and {}",
                MAX_CALL_TIMEOUT.as_millis()
            )));
        }
        options.timeout = timeout;
    } else {
        options.timeout = DEFAULT_CALL_TIMEOUT;
    }
    if let Some(peer) = request.peer.as_deref() {
        let peer: PeerId = peer
            .trim()
            .parse()
            .map_err(|e| ApiError::bad_request(format!("`{peer}` is not a peer id: {e}")))?;
        options.peer = Some(peer);
    }
    let result = state.node.call(&request.uri, args, options).await?;
    Ok(Json(CallResponse {
        result: bytes_to_json(&result),
        result_base64: encode_base64(&result),
    }))
}

/// 413 when `len` exceeds the node's payload limit.
pub fn check_size(len: usize, max: usize) -> Result<(), ApiError> {
    if len > max {
        return Err(ApiError::from(atmosphere::Error::PayloadTooLarge {
            len,
            max,
        }));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mesh(id: &str, name: &str) -> MeshInfo {
        MeshInfo {
            id: id.into(),
            name: name.into(),
            founder: "12D3KooWfounder".into(),
            is_founder: true,
            members: 1,
            connected: 0,
            state: "alone".into(),
            connected_via: Vec::new(),
            last_seen: None,
            auto_reconnect: true,
            endpoints: Vec::new(),
        }
    }

    #[test]
    fn meshes_are_found_by_id_then_unique_name() {
        let meshes = || {
            vec![
                mesh("aa", "home"),
                mesh("bb", "office"),
                mesh("cc", "office"),
                mesh("dd", "aa"),
            ]
        };
        let found = |wanted: &str| find_mesh(meshes(), wanted).map(|m| m.id);
        assert_eq!(found("bb").ok().as_deref(), Some("bb"));
        assert_eq!(found("home").ok().as_deref(), Some("aa"));
        // An id wins over a mesh named like it.
        assert_eq!(found("aa").ok().as_deref(), Some("aa"));
        let kind = |wanted: &str| {
            find_mesh(meshes(), wanted)
                .err()
                .map(|e| (e.status, e.kind))
        };
        assert_eq!(
            kind("office"),
            Some((StatusCode::CONFLICT, "ambiguous_mesh"))
        );
        assert_eq!(kind("nope"), Some((StatusCode::NOT_FOUND, "unknown_mesh")));
    }
}
