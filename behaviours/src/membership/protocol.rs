//! The membership protocol's messages, exchanged once per newly connected peer
//! over libp2p request-response with the CBOR codec.
//!
//! The dialer sends a [`Hello`] with its certificates (and, when joining with
//! an invite, a [`JoinRequest`]); the listener answers with a [`HelloReply`]
//! holding its own certificates and an [`Outcome`].

use libp2p::StreamProtocol;
use serde::{Deserialize, Serialize};

use super::cert::{Certificate, MeshDescriptor, MeshId};

/// The protocol name.
pub const PROTOCOL: StreamProtocol = StreamProtocol::new("/atmosphere/membership/1.0.0");

/// Largest encoded [`Hello`] or [`HelloReply`] accepted, in bytes.
pub const MAX_MESSAGE_SIZE: u64 = 256 * 1024;

/// Largest number of certificates one side presents.
pub const MAX_CERTIFICATES: usize = 64;

/// Longest invite token accepted, in bytes.
pub const MAX_TOKEN_LEN: usize = 128;

/// Sent by the dialer of a new connection.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Hello {
    /// The dialer's membership certificates.
    pub certificates: Vec<Certificate>,
    /// An invite being redeemed, if any.
    pub join: Option<JoinRequest>,
}

/// A request to join a mesh with an invite secret.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct JoinRequest {
    /// The mesh named in the invite.
    pub mesh: MeshId,
    /// The invite's secret token.
    pub token: String,
}

/// The listener's answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HelloReply {
    /// The listener's membership certificates.
    pub certificates: Vec<Certificate>,
    /// What the listener decided.
    pub outcome: Outcome,
}

/// The listener's decision.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Outcome {
    /// The dialer shares at least one mesh with the listener.
    Accepted,
    /// The dialer's invite was accepted: here is its certificate.
    Joined {
        /// The mesh joined.
        mesh: MeshDescriptor,
        /// The new member's certificate, signed by the founder.
        certificate: Certificate,
    },
    /// The dialer is refused (not a member, or the invite was refused).
    Refused {
        /// Why, in words for a person.
        reason: String,
    },
}
