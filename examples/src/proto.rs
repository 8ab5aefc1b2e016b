//! JSON shapes of the local API, shared by the daemon (server) and the CLI
//! (client). `docs/local-api.md` documents them for clients in other languages.

use base64::{engine::general_purpose::STANDARD as B64, Engine};
use serde::{Deserialize, Serialize};
use serde_json::Value;

/// The error body of every non-2xx answer.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ErrorBody {
    /// A one-line human-readable message.
    pub error: String,
    /// A stable machine-readable kind (`unknown_mesh`, `no_provider`, …).
    pub kind: String,
}

/// `POST /v1/meshes`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CreateMeshRequest {
    /// The new mesh's name.
    pub name: String,
}

/// `POST /v1/invites`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct InviteRequest {
    /// Mesh id or name; omitted: the node's only mesh.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mesh: Option<String>,
    /// How many joins the invite allows (default 1).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uses: Option<u32>,
    /// Validity in seconds (default 600).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ttl_secs: Option<u64>,
    /// Topic ACLs for members admitted with it (default: everything).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub permissions: Option<atmosphere::Permissions>,
}

/// `POST /v1/join`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct JoinRequest {
    /// The `atmosphere://join?…` URI.
    pub uri: String,
}

/// `PUT /v1/meshes/{mesh}/auto-reconnect`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct AutoReconnectRequest {
    /// Whether the node reconnects to the mesh's members.
    pub enabled: bool,
}

/// `PUT /v1/pairing/accept`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct PairAcceptRequest {
    /// Mesh id or name (one this node founded); omitted: the node's only mesh.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mesh: Option<String>,
    /// Whether pairing mode is on.
    pub on: bool,
}

/// `POST /v1/pairing`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PairRequest {
    /// A nearby device's id (12 hex digits), a peer id, or a multiaddr to dial.
    pub device: String,
}

/// Answer of `GET /v1/pairing`: pairing mode and the recent sessions.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PairingOverview {
    /// Whether this node accepts pairing requests, and for which mesh.
    pub mode: atmosphere::PairingMode,
    /// The recent pairing sessions, oldest first (at most 16).
    pub sessions: Vec<atmosphere::PairingSession>,
}

/// What `mesh-node mesh token` prints: an invite as a token document.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InviteToken {
    /// The invite's secret (`ATM-…`).
    pub token: String,
    /// The mesh.
    pub mesh_id: String,
    /// The mesh's name.
    pub mesh_name: String,
    /// The ways into the mesh listed in the invite, by group.
    pub endpoints: TokenEndpoints,
    /// How the inviting node sees its own network.
    pub network_info: NetworkInfo,
    /// The `atmosphere://join?…` URI carrying all of the above.
    pub uri: String,
    /// Unix seconds when the invite expires.
    pub expires_at: i64,
}

/// The endpoints of an invite by group, as multiaddr strings.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TokenEndpoints {
    /// LAN addresses.
    pub local: Vec<String>,
    /// Public addresses.
    pub public: Vec<String>,
    /// Relayed addresses.
    pub relay: Vec<String>,
}

/// The inviting node's network, from `GET /v1/status`'s `network`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct NetworkInfo {
    /// Its first LAN address.
    pub local_ip: Option<String>,
    /// Its public address, if known.
    pub public_ip: Option<String>,
    /// Whether it is behind a NAT (`null`: not known yet).
    pub is_behind_nat: Option<bool>,
}

impl InviteToken {
    /// The token document of `invite`, with the network of the node that made it.
    pub fn new(
        invite: &atmosphere::Invite,
        network: &atmosphere::NetworkStatus,
    ) -> Result<Self, atmosphere::invite::InviteError> {
        let parsed = atmosphere::invite::InviteUri::parse(&invite.uri)?;
        let strings = |addrs: &[atmosphere::Multiaddr]| -> Vec<String> {
            addrs.iter().map(ToString::to_string).collect()
        };
        Ok(Self {
            token: parsed.token,
            mesh_id: invite.mesh_id.clone(),
            mesh_name: invite.mesh_name.clone(),
            endpoints: TokenEndpoints {
                local: strings(&parsed.endpoints.local),
                public: strings(&parsed.endpoints.public),
                relay: strings(&parsed.endpoints.relay),
            },
            network_info: NetworkInfo {
                local_ip: network.local_ip.clone(),
                public_ip: network.public_ip.clone(),
                is_behind_nat: network.is_behind_nat,
            },
            uri: invite.uri.clone(),
            expires_at: invite.expires_at,
        })
    }
}

/// `POST /v1/publish`: exactly one of `payload` and `payload_base64`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct PublishRequest {
    /// The topic.
    pub topic: String,
    /// The payload as text (sent as its UTF-8 bytes).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub payload: Option<String>,
    /// The payload as standard base64 (for binary payloads).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub payload_base64: Option<String>,
}

/// Answer of `POST /v1/publish`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PublishResponse {
    /// How many remote subscribers the message was sent to.
    pub delivered: usize,
}

/// `POST /v1/call`: at most one of `args` and `args_base64` (neither: empty args).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct CallRequest {
    /// The RPC URI.
    pub uri: String,
    /// Arguments as any JSON value; sent as its compact serialization.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub args: Option<Value>,
    /// Arguments as raw bytes, standard base64 (sent byte for byte).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub args_base64: Option<String>,
    /// Call this peer only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub peer: Option<String>,
    /// Timeout in milliseconds (default 5000).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout_ms: Option<u64>,
}

/// Answer of `POST /v1/call`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CallResponse {
    /// The result decoded: its JSON value if the bytes are JSON, else a string
    /// if they are UTF-8, else `null`.
    pub result: Value,
    /// The result bytes exactly, standard base64.
    pub result_base64: String,
}

/// Query of `GET /v1/subscribe`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SubscribeQuery {
    /// The topic pattern (`home.*.temp`, `home.**`).
    pub pattern: String,
}

/// Query of `GET /v1/register`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RegisterQuery {
    /// The RPC URI to serve.
    pub uri: String,
    /// How long the daemon waits for each answer, in milliseconds (default 30000).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout_ms: Option<u64>,
}

/// Frames the daemon sends on `GET /v1/subscribe`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum SubscribeFrame {
    /// The subscription is active (always the first frame).
    Subscribed {
        /// The pattern.
        pattern: String,
    },
    /// A message matching the pattern.
    Message(MessageJson),
}

/// A pub/sub message as JSON (also what `mesh-node sub --json` prints).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct MessageJson {
    /// The topic it was published to.
    pub topic: String,
    /// The payload as text if it is UTF-8, else `null`.
    pub payload: Option<String>,
    /// The payload bytes exactly, standard base64.
    pub payload_base64: String,
    /// The publisher's peer id.
    pub sender: String,
    /// The publisher's clock at publication, ms since the Unix epoch.
    pub timestamp_ms: u64,
}

impl MessageJson {
    /// Converts a received message.
    pub fn from_message(message: &atmosphere::Message) -> Self {
        Self {
            topic: message.topic.clone(),
            payload: std::str::from_utf8(&message.payload)
                .ok()
                .map(str::to_owned),
            payload_base64: B64.encode(&message.payload),
            sender: message.sender.to_string(),
            timestamp_ms: message.timestamp_ms,
        }
    }

    /// The payload bytes (from `payload_base64`, else `payload`).
    pub fn payload_bytes(&self) -> Vec<u8> {
        match B64.decode(&self.payload_base64) {
            Ok(bytes) => bytes,
            Err(_) => self.payload.clone().unwrap_or_default().into_bytes(),
        }
    }
}

/// Frames the daemon sends on `GET /v1/peers/watch`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum WatchFrame {
    /// Every known member and connected peer, as `GET /v1/peers` returns
    /// them: always the first frame, and again right after `lagged`.
    Peers {
        /// The peers.
        peers: Vec<atmosphere::PeerInfo>,
    },
    /// A member's reachability changed.
    Event(PeerEventJson),
    /// The socket fell behind and `missed` events were dropped; a fresh
    /// `peers` frame follows.
    Lagged {
        /// How many events were lost.
        missed: u64,
    },
}

/// A [`atmosphere::PeerEvent`] as JSON, with the peer's name when known.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PeerEventJson {
    /// The member's peer id.
    pub peer_id: String,
    /// The name it announced, if known.
    pub name: Option<String>,
    /// Its status after the change.
    pub status: atmosphere::MemberStatus,
    /// The path switch, if this event is one (`null` otherwise).
    pub switch: Option<atmosphere::PathSwitch>,
    /// Unix ms of the change (the daemon's clock).
    pub at_ms: u64,
}

impl PeerEventJson {
    /// Converts an event, adding `name`.
    pub fn from_event(event: atmosphere::PeerEvent, name: Option<String>) -> Self {
        Self {
            peer_id: event.peer_id,
            name,
            status: event.status,
            switch: event.switch,
            at_ms: event.at_ms,
        }
    }
}

/// Frames the daemon sends on `GET /v1/register`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum RegisterFrame {
    /// The URI is registered on the node (always the first frame).
    Registered {
        /// The URI.
        uri: String,
    },
    /// A call to answer with a [`ReplyFrame`] carrying the same `id`.
    Call(CallFrame),
    /// The client sent something the daemon could not use (the socket stays open).
    Error {
        /// What was wrong.
        error: String,
    },
}

/// One incoming call on `GET /v1/register`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CallFrame {
    /// Correlates the answer.
    pub id: u64,
    /// The URI called.
    pub uri: String,
    /// The caller's peer id.
    pub caller: String,
    /// The arguments: their JSON value if they are JSON, else a string if
    /// UTF-8, else `null`.
    pub args: Value,
    /// The argument bytes exactly, standard base64.
    pub args_base64: String,
}

/// A client's answer to a [`CallFrame`]: at most one of `result`,
/// `result_base64`, `error` and `denied` (none: an empty result).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct ReplyFrame {
    /// The call's id.
    pub id: u64,
    /// The result as JSON (sent as its compact serialization).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub result: Option<Value>,
    /// The result as raw bytes, standard base64.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub result_base64: Option<String>,
    /// The call failed; the caller gets a `remote_error` with this message.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// The handler refuses this caller; the caller gets a `denied` error.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub denied: Option<String>,
}

/// Decodes opaque bytes for display: their JSON value if they are JSON, else
/// a string if UTF-8, else `null`.
pub fn bytes_to_json(bytes: &[u8]) -> Value {
    if let Ok(value) = serde_json::from_slice::<Value>(bytes) {
        return value;
    }
    match std::str::from_utf8(bytes) {
        Ok(text) => Value::String(text.to_owned()),
        Err(_) => Value::Null,
    }
}

/// Standard base64 of `bytes`.
pub fn encode_base64(bytes: &[u8]) -> String {
    B64.encode(bytes)
}

/// Decodes standard (padded) base64.
pub fn decode_base64(text: &str) -> Result<Vec<u8>, base64::DecodeError> {
    B64.decode(text)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bytes_to_json_prefers_json_then_text() {
        assert_eq!(bytes_to_json(b"42"), serde_json::json!(42));
        assert_eq!(bytes_to_json(b"{\"x\":1}"), serde_json::json!({"x": 1}));
        assert_eq!(bytes_to_json(b"hello"), serde_json::json!("hello"));
        assert_eq!(bytes_to_json(&[0xff, 0xfe]), Value::Null);
    }

    #[test]
    fn frames_are_tagged() {
        let frame = SubscribeFrame::Subscribed {
            pattern: "a.*".into(),
        };
        let text = serde_json::to_string(&frame).unwrap_or_default();
        assert_eq!(text, r#"{"type":"subscribed","pattern":"a.*"}"#);
        let lagged = serde_json::to_string(&WatchFrame::Lagged { missed: 7 }).unwrap_or_default();
        assert_eq!(lagged, r#"{"type":"lagged","missed":7}"#);
        let reply: ReplyFrame = serde_json::from_str(r#"{"id":3,"result":42}"#).unwrap_or_default();
        assert_eq!(reply.id, 3);
        assert_eq!(reply.result, Some(serde_json::json!(42)));
    }

    #[test]
    fn invite_tokens_take_the_uri_apart() {
        let peer = libp2p::PeerId::random();
        let local = format!("/ip4/192.168.1.2/tcp/11451/p2p/{peer}");
        let uri = atmosphere::invite::InviteUri {
            token: atmosphere::invite::new_token(),
            mesh: "00112233445566778899aabbccddeeff"
                .parse()
                .unwrap_or_else(|_| panic!("mesh id")),
            name: Some("home".into()),
            endpoints: atmosphere::invite::Endpoints {
                local: vec![local.parse().unwrap_or_else(|e| panic!("{e}"))],
                ..Default::default()
            },
        };
        let invite = atmosphere::Invite {
            uri: uri.to_uri(),
            mesh_id: uri.mesh.to_string(),
            mesh_name: "home".into(),
            uses: 1,
            expires_at: 1_800_000_000,
        };
        let network = atmosphere::NetworkStatus {
            local_ip: Some("192.168.1.2".into()),
            public_ip: Some("203.0.113.7".into()),
            is_behind_nat: Some(true),
            ..Default::default()
        };
        let token = InviteToken::new(&invite, &network).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(token.token, uri.token);
        assert_eq!(token.endpoints.local, vec![local]);
        assert!(token.endpoints.public.is_empty() && token.endpoints.relay.is_empty());
        let json = serde_json::to_value(&token).unwrap_or_default();
        assert_eq!(json["network_info"]["public_ip"], "203.0.113.7");
        assert_eq!(json["network_info"]["is_behind_nat"], true);
        assert_eq!(json["expires_at"], 1_800_000_000);
        assert_eq!(json["uri"], invite.uri.as_str());
        let bad = atmosphere::Invite {
            uri: "http://nope".into(),
            ..invite
        };
        assert!(InviteToken::new(&bad, &network).is_err());
    }

    #[test]
    fn watch_events_round_trip() {
        let event = WatchFrame::Event(PeerEventJson::from_event(
            atmosphere::PeerEvent {
                peer_id: "12D3KooWpeer".into(),
                status: atmosphere::MemberStatus::Direct {
                    class: "lan".into(),
                    rtt_ms: Some(0.4),
                },
                switch: Some(atmosphere::PathSwitch {
                    from: None,
                    to: Some("lan".into()),
                    reason: "established".into(),
                }),
                at_ms: 5,
            },
            Some("laptop".into()),
        ));
        let value = serde_json::to_value(&event).unwrap_or_default();
        assert_eq!(
            value,
            serde_json::json!({
                "type": "event", "peer_id": "12D3KooWpeer", "name": "laptop",
                "status": {"kind": "direct", "class": "lan", "rtt_ms": 0.4},
                "switch": {"from": null, "to": "lan", "reason": "established"},
                "at_ms": 5
            })
        );
        let back: Result<WatchFrame, _> = serde_json::from_value(value);
        assert!(
            matches!(back, Ok(WatchFrame::Event(e)) if e.name.as_deref() == Some("laptop")),
            "event frames parse back"
        );
    }
}
