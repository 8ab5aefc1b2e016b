//! Public value types of the node API.

use std::time::Duration;

use bytes::Bytes;
use libp2p::PeerId;
use serde::{Deserialize, Serialize};

pub use atmosphere_behaviours::membership::cert::{MeshId, Permissions, Role};

/// A pub/sub message as delivered to a subscriber.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    /// The topic it was published to.
    pub topic: String,
    /// The payload, as published.
    pub payload: Bytes,
    /// The publishing node.
    pub sender: PeerId,
    /// The publisher's clock when published, in milliseconds since the Unix epoch.
    pub timestamp_ms: u64,
}

/// A request handed to an RPC handler.
#[derive(Debug, Clone)]
pub struct Request {
    /// The URI called.
    pub uri: String,
    /// The arguments, as sent by the caller.
    pub args: Bytes,
    /// The calling node (ourselves for local calls).
    pub caller: PeerId,
}

/// Options of [`crate::Node::call`].
#[derive(Debug, Clone)]
pub struct CallOptions {
    /// How long to wait for the answer. Default 5 s.
    pub timeout: Duration,
    /// Call this peer only. Default: local provider first, then a connected one.
    pub peer: Option<PeerId>,
}

impl Default for CallOptions {
    fn default() -> Self {
        Self {
            timeout: Duration::from_secs(5),
            peer: None,
        }
    }
}

impl CallOptions {
    /// Default options with `timeout`.
    pub fn timeout(timeout: Duration) -> Self {
        Self {
            timeout,
            ..Self::default()
        }
    }
    /// Targets `peer`.
    pub fn on(mut self, peer: PeerId) -> Self {
        self.peer = Some(peer);
        self
    }
}

/// Options of [`crate::Node::invite`].
#[derive(Debug, Clone)]
pub struct InviteOptions {
    /// How many joins the invite allows. Default 1.
    pub uses: u32,
    /// How long the invite is valid. Default 10 minutes.
    pub ttl: Duration,
    /// What members admitted with it may do. Default: everything.
    pub permissions: Permissions,
}

impl Default for InviteOptions {
    fn default() -> Self {
        Self {
            uses: 1,
            ttl: Duration::from_secs(600),
            permissions: Permissions::all(),
        }
    }
}

/// A created invite.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Invite {
    /// The `atmosphere://join?…` URI to hand to the joiner.
    pub uri: String,
    /// The mesh.
    pub mesh_id: String,
    /// The mesh's name.
    pub mesh_name: String,
    /// Joins allowed.
    pub uses: u32,
    /// Unix seconds when it expires.
    pub expires_at: i64,
}

/// A mesh this node belongs to.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MeshInfo {
    /// The mesh id (32 hex digits).
    pub id: String,
    /// The mesh's name.
    pub name: String,
    /// The founder's peer id.
    pub founder: String,
    /// Whether this node founded it.
    pub is_founder: bool,
    /// Known members (including this node).
    pub members: usize,
    /// Members currently connected.
    pub connected: usize,
}

/// A member or connected peer as this node sees it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PeerInfo {
    /// Its peer id.
    pub peer_id: String,
    /// The name it announced.
    pub name: Option<String>,
    /// Whether a verified connection is open.
    pub connected: bool,
    /// Meshes shared with it.
    pub meshes: Vec<String>,
    /// Addresses it is known at.
    pub addresses: Vec<String>,
    /// Subscription patterns it announced.
    pub subscriptions: Vec<String>,
    /// RPC URIs it announced.
    pub registrations: Vec<String>,
    /// Last measured round-trip time, in milliseconds.
    pub rtt_ms: Option<f64>,
    /// Unix seconds when it was last connected.
    pub last_seen: Option<i64>,
}

/// The node's own state.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Status {
    /// Our peer id.
    pub peer_id: String,
    /// Our name.
    pub name: String,
    /// The Atmosphere version.
    pub version: String,
    /// Where we listen.
    pub listen_addrs: Vec<String>,
    /// Our meshes.
    pub meshes: Vec<MeshInfo>,
    /// Verified peers connected now.
    pub connected_peers: usize,
    /// Open connections, including ones still being verified.
    pub open_connections: usize,
    /// Our local subscription patterns.
    pub subscriptions: Vec<String>,
    /// Our registered RPC URIs.
    pub registrations: Vec<String>,
    /// Seconds since start.
    pub uptime_secs: u64,
    /// App-channel traffic since start.
    pub traffic: Traffic,
}

/// Frames and bytes on app channels since start (frame bytes, before noise
/// and the multiplexer add their own framing).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Traffic {
    /// Frames written.
    pub frames_sent: u64,
    /// Bytes written.
    pub bytes_sent: u64,
    /// Frames read.
    pub frames_received: u64,
    /// Bytes read.
    pub bytes_received: u64,
}

/// The Atmosphere version of this build.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");
