//! Plain records read from and written to the [`Store`](super::Store).
//!
//! They carry no behaviour: certificates, keys and permissions are opaque
//! byte strings whose encoding belongs to the layers above the store.

use std::fmt;

/// A mesh this node belongs to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MeshRecord {
    /// The mesh's identifier.
    pub id: String,
    /// The mesh's human-readable name.
    pub name: String,
    /// The founder's public key (opaque encoding).
    pub founder_key: Vec<u8>,
    /// The nonce that, with the founder key, makes the mesh unique.
    pub nonce: Vec<u8>,
    /// Whether this node founded the mesh.
    pub is_founder: bool,
    /// This node's membership certificate for the mesh (opaque CBOR).
    pub certificate: Vec<u8>,
    /// When this node joined (or founded) the mesh, in unix seconds.
    pub joined_at: i64,
}

/// A known member of a mesh, with its membership certificate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MemberRecord {
    /// The mesh the peer belongs to.
    pub mesh_id: String,
    /// The member's libp2p peer id, as a string.
    pub peer_id: String,
    /// The member's certificate (opaque CBOR).
    pub certificate: Vec<u8>,
    /// When the record was last written, in unix seconds.
    pub updated_at: i64,
}

/// An invite to a mesh. Only the SHA-256 of the invite's secret is stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InviteRecord {
    /// SHA-256 of the invite's secret.
    pub secret_hash: [u8; 32],
    /// The mesh the invite admits to.
    pub mesh_id: String,
    /// How many more times the invite may be redeemed.
    pub uses_left: u32,
    /// The first unix second at which the invite is no longer valid.
    pub expires_at: i64,
    /// When the invite was created, in unix seconds.
    pub created_at: i64,
    /// The permissions granted to whoever redeems it (opaque encoding).
    pub permissions: Vec<u8>,
}

/// Why [`Store::redeem_invite`](super::Store::redeem_invite) refused an invite.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RedeemRefusal {
    /// No invite with that secret exists for that mesh.
    Unknown,
    /// The invite exists but its expiry time has passed.
    Expired,
    /// The invite exists and has not expired, but has no uses left.
    Exhausted,
}

impl fmt::Display for RedeemRefusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            RedeemRefusal::Unknown => "unknown invite",
            RedeemRefusal::Expired => "invite expired",
            RedeemRefusal::Exhausted => "invite has no uses left",
        })
    }
}

impl std::error::Error for RedeemRefusal {}

/// A peer this node has seen.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerRecord {
    /// The peer's libp2p peer id, as a string.
    pub peer_id: String,
    /// The peer's advertised name, if it ever gave one.
    pub name: Option<String>,
    /// When the peer was last seen, in unix seconds.
    pub last_seen: i64,
}

/// An address (multiaddr string) at which a peer may be reached.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EndpointRecord {
    /// The peer the address belongs to.
    pub peer_id: String,
    /// The address, as a multiaddr string.
    pub addr: String,
    /// When a connection over this address last succeeded, in unix seconds;
    /// `None` if it never has (the address was only learned).
    pub last_success: Option<i64>,
    /// The latency measured on the last connection that reported one.
    pub latency_ms: Option<u32>,
}
