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
    /// `connected`, `reconnecting` (members known, none connected, the
    /// node keeps trying), `paused` (none connected, `auto_reconnect` off)
    /// or `alone` (no other member known).
    pub state: String,
    /// How the connected members are reached: the best path class of each
    /// (`lan`, `direct`, `relayed`, `ble`), most common first.
    pub connected_via: Vec<String>,
    /// Unix seconds when a member of this mesh was last connected.
    pub last_seen: Option<i64>,
    /// Whether the node reconnects to this mesh's members on start and
    /// after losing them. Default `true`.
    pub auto_reconnect: bool,
    /// Every saved way to reach the mesh's members, most recent success first.
    pub endpoints: Vec<SavedEndpoint>,
}

/// A saved endpoint of a member.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SavedEndpoint {
    /// The member.
    pub peer_id: String,
    /// `local`, `public` or `relay`.
    pub kind: crate::invite::EndpointGroup,
    /// The multiaddr.
    pub addr: String,
    /// Unix seconds of the last connection made through it.
    pub last_success: Option<i64>,
    /// Latency measured on that connection, milliseconds.
    pub latency_ms: Option<u32>,
}

/// What [`crate::Node::join_with_report`] reports: the mesh joined, which
/// invite endpoint the connection went through, and the path it ended on.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct JoinReport {
    /// The mesh joined (its fields appear at the top level in JSON).
    #[serde(flatten)]
    pub mesh: MeshInfo,
    /// The invite endpoint that connected (`None` when a connection to the
    /// admitting node already existed).
    pub endpoint: Option<String>,
    /// Its group in the invite (`local`, `public` or `relay`).
    pub endpoint_group: Option<crate::invite::EndpointGroup>,
    /// The class of the path in use when the join completed (`lan`,
    /// `direct`, `relayed`, `ble`).
    pub path: Option<String>,
    /// Endpoint groups tried, in order, before the answer came.
    pub tried: Vec<crate::invite::EndpointGroup>,
    /// Time from the join request to the answer, milliseconds.
    pub elapsed_ms: u64,
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
    /// How it is reachable now.
    pub status: MemberStatus,
    /// Its open paths (connections), best first.
    pub paths: Vec<PathStatus>,
}

/// How a member is reachable, as the connection train sees it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum MemberStatus {
    /// On a direct path (LAN, internet or BLE).
    Direct {
        /// The path class: `lan`, `direct` or `ble`.
        class: String,
        /// Round-trip time of the path, ms.
        rtt_ms: Option<f64>,
    },
    /// Through a relay.
    Relayed {
        /// The relay's peer id, if known.
        via: Option<String>,
    },
    /// No usable path.
    Offline {
        /// Unix ms when a path last worked, if ever.
        last_seen_ms: Option<u64>,
    },
}

/// One connection to a member and its health.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PathStatus {
    /// The member.
    pub peer_id: String,
    /// The connection's number in this node.
    pub connection: u64,
    /// `lan`, `direct`, `ble` or `relayed`.
    pub class: String,
    /// The remote address.
    pub remote_addr: String,
    /// `active` (carries app traffic), `standby` (heartbeats only) or `extra`
    /// (about to be closed).
    pub role: String,
    /// Smoothed heartbeat round-trip time, ms.
    pub rtt_ms: Option<f64>,
    /// Share of recent heartbeats that went unanswered (0–1).
    pub loss: f32,
    /// Whether heartbeats currently get answers.
    pub healthy: bool,
    /// Heartbeat interval on this path, ms.
    pub heartbeat_ms: u64,
    /// App bytes written on this path.
    pub app_bytes_sent: u64,
    /// App bytes read on this path.
    pub app_bytes_received: u64,
}

/// A change in a member's reachability (streamed by `peers --watch`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PeerEvent {
    /// The member.
    pub peer_id: String,
    /// Its status after the change.
    pub status: MemberStatus,
    /// The path switch, if this event is one.
    pub switch: Option<PathSwitch>,
    /// Unix ms of the change.
    pub at_ms: u64,
}

/// A path switch.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PathSwitch {
    /// The class of the old active path, if there was one.
    pub from: Option<String>,
    /// The class of the new active path, if there is one.
    pub to: Option<String>,
    /// Why: `established`, `better`, `active_closed`, `active_unhealthy`,
    /// `ack_timeout` or `peer_moved`.
    pub reason: String,
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
    /// Every open path to a member, with its heartbeat health.
    pub paths: Vec<PathStatus>,
    /// App frames sent again on a new path after a switch, since start.
    pub retransmitted: u64,
    /// Duplicate app frames received and dropped, since start.
    pub duplicates_dropped: u64,
    /// App frames waiting for acknowledgement, all peers together.
    pub unacked_frames: u64,
    /// Frames refused because an unreachable member's outbox was full.
    pub outbox_refused: u64,
    /// Relaying and hole punching.
    pub relay: RelayStatus,
    /// How this node is reachable from the internet.
    pub network: NetworkStatus,
    /// The Bluetooth LE radio, when the node has one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ble: Option<BleStatus>,
}

/// The node's Bluetooth LE radio and the devices it sees.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct BleStatus {
    /// Our radio's device address (may rotate on real radios).
    pub address: String,
    /// The L2CAP PSM we listen on, once listening.
    pub psm: Option<u16>,
    /// Whether we advertise.
    pub advertising: bool,
    /// Open connections over BLE.
    pub connections: usize,
    /// Devices advertising Atmosphere nearby, strongest signal first.
    pub nearby: Vec<NearbyDevice>,
}

/// A device nearby: advertising Atmosphere over BLE, or found on the LAN by
/// mDNS. Pair with it by its `id` ([`crate::Node::pair`]).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct NearbyDevice {
    /// What to pair with: its peer-id hint, 12 hex digits (the same over
    /// BLE and LAN for one device).
    pub id: String,
    /// How it was found: `"ble"` or `"lan"`.
    pub via: String,
    /// Where: a BLE device address and PSM, or a LAN multiaddr. A BLE
    /// address is not an identity (it may rotate).
    pub address: String,
    /// Signal strength in dBm (BLE only).
    pub rssi_dbm: Option<i16>,
    /// Its peer id, when known (LAN, or a member seen over BLE). Unverified
    /// until a connection's handshake proves it.
    pub peer_id: Option<String>,
    /// Whether it is a member of one of our meshes.
    pub member: bool,
    /// Its name, if it told us (unverified).
    pub name: Option<String>,
    /// Milliseconds since it was last seen.
    pub last_seen_ms_ago: u64,
}

/// Whether this node accepts pairing requests, and for which mesh.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PairingMode {
    /// Whether inbound pairing requests are answered.
    pub accepting: bool,
    /// The mesh whose credentials a confirmed pairing hands out.
    pub mesh_id: Option<String>,
    /// That mesh's name.
    pub mesh_name: Option<String>,
}

/// One pairing session, as the local user sees it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PairingSession {
    /// Session number (unique on this node while it runs).
    pub id: u64,
    /// Our role: `"requester"` or `"acceptor"`.
    pub role: String,
    /// The peer (proven by the connection's handshake).
    pub peer_id: String,
    /// The peer's name, as it claims.
    pub peer_name: Option<String>,
    /// `"connecting"`, `"comparing"` (show the code, ask the user),
    /// `"confirmed"` (we confirmed, waiting for the peer),
    /// `"completed"` or `"failed"`.
    pub state: String,
    /// The 6-digit code both screens show, once derived.
    pub code: Option<String>,
    /// Whether the peer's user confirmed the code.
    pub peer_confirmed: bool,
    /// The mesh the pairing made us share, once completed.
    pub mesh_id: Option<String>,
    /// That mesh's name.
    pub mesh_name: Option<String>,
    /// Why it failed.
    pub error: Option<String>,
}

impl PairingSession {
    /// Whether the session is over (completed or failed).
    pub fn is_over(&self) -> bool {
        self.state == "completed" || self.state == "failed"
    }
}

/// Whether this node can be reached from the internet, as AutoNAT v2 found.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Reachability {
    /// No test has finished yet (or no peer offers AutoNAT).
    #[default]
    Unknown,
    /// A peer dialled one of our addresses back: members can connect to us
    /// directly, we hold no relay reservation.
    Public,
    /// A tested address was not reachable and none is confirmed: members
    /// reach us through a relay (and hole punching).
    Private,
}

/// Our addresses as we see them and as the internet sees them.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct NetworkStatus {
    /// Our first LAN address (private, link-local or loopback), if any.
    pub local_ip: Option<String>,
    /// Our public address: a confirmed external address, else the address
    /// peers see most often.
    pub public_ip: Option<String>,
    /// Whether the public address differs from every local one (`None`
    /// while no peer has told us how it sees us).
    pub is_behind_nat: Option<bool>,
    /// What AutoNAT v2 found.
    pub reachability: Reachability,
    /// Where we listen (no relayed or unspecified addresses).
    pub local_addrs: Vec<String>,
    /// Addresses confirmed reachable from outside (AutoNAT v2 or UPnP).
    pub public_addrs: Vec<String>,
    /// How peers see us (identify's observed addresses), most seen first.
    pub observed_addrs: Vec<String>,
    /// AutoNAT v2 reachability tests finished since start.
    pub autonat_tests: u64,
    /// Of which confirmed an address.
    pub autonat_confirmed: u64,
    /// UPnP port mapping.
    pub upnp: UpnpStatus,
}

/// UPnP port mapping on the home router (off unless `upnp = true`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct UpnpStatus {
    /// Whether port mapping is on.
    pub enabled: bool,
    /// `searching`, `mapped`, `no_gateway` or `gateway_not_public`.
    pub state: String,
    /// External addresses the gateway maps to us.
    pub mapped: Vec<String>,
}

/// Our relay server, our reservations on other relays, and hole punching.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RelayStatus {
    /// Whether this node runs a relay server.
    pub server: bool,
    /// Whether it relays for non-members too.
    pub open: bool,
    /// Reservations our relay holds now.
    pub reservations: usize,
    /// The most it holds at once.
    pub max_reservations: usize,
    /// Circuits our relay carries now.
    pub circuits: usize,
    /// The most it carries at once.
    pub max_circuits: usize,
    /// Reservation requests our relay refused since start.
    pub reservations_denied: u64,
    /// Circuit requests our relay refused since start.
    pub circuits_denied: u64,
    /// Relays (peer ids) that hold a reservation for us.
    pub reserved_on: Vec<String>,
    /// Hole-punch attempts on relayed connections since start.
    pub dcutr_attempts: u64,
    /// Of which succeeded (a direct connection replaced the relayed path).
    pub dcutr_successes: u64,
    /// Time from the first relayed connection to the direct one, last success, ms.
    pub last_time_to_direct_ms: Option<u64>,
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
