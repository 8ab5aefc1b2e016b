//! Errors of the node API.

use std::time::Duration;

use atmosphere_behaviours::{membership::cert::CertError, pattern::PatternError};

use crate::{config::ConfigError, invite::InviteError, store::StoreError};

/// Errors from [`crate::Node`] operations other than RPC calls.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The configuration is invalid.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// The store failed (disk full, corrupt file, …).
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The node's identity could not be loaded or created.
    #[error("identity: {0}")]
    Identity(String),
    /// Listening or building the transports failed.
    #[error("transport: {0}")]
    Transport(String),
    /// A topic or pattern is invalid.
    #[error(transparent)]
    Topic(#[from] PatternError),
    /// A payload is larger than `Config::max_payload`.
    #[error("payload of {len} bytes exceeds the limit of {max} bytes")]
    PayloadTooLarge {
        /// The payload's size.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// An invite URI or token is malformed.
    #[error(transparent)]
    Invite(#[from] InviteError),
    /// A certificate or mesh descriptor is invalid.
    #[error(transparent)]
    Certificate(#[from] CertError),
    /// No mesh with that id or name.
    #[error("unknown mesh `{0}`")]
    UnknownMesh(String),
    /// A mesh name matches several meshes.
    #[error("`{0}` names several meshes; use the mesh id")]
    AmbiguousMesh(String),
    /// Only the mesh's founder can do this.
    #[error("only the founder of mesh {0} can create invites")]
    NotFounder(String),
    /// Joining a mesh failed.
    #[error("join failed: {0}")]
    Join(String),
    /// Our own certificate does not allow this.
    #[error("denied: {0}")]
    Denied(String),
    /// An argument is out of range or malformed.
    #[error("invalid argument: {0}")]
    Invalid(String),
    /// The URI is already registered on this node.
    #[error("`{0}` is already registered on this node")]
    AlreadyRegistered(String),
    /// Too many of something at once (the bound is in the message).
    #[error("busy: {0}")]
    Busy(String),
    /// The operation did not finish in time.
    #[error("timed out after {0:?}")]
    Timeout(Duration),
    /// The node has shut down.
    #[error("the node has shut down")]
    Shutdown,
}

/// Errors of [`crate::Node::call`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RpcError {
    /// Nobody reachable provides this URI.
    #[error("no provider for `{0}`")]
    NoProvider(String),
    /// No answer within the timeout.
    #[error("call timed out after {0:?}")]
    Timeout(Duration),
    /// The provider refused the caller (ACL or handler decision).
    #[error("denied: {0}")]
    Denied(String),
    /// The handler failed; its message.
    #[error("remote error: {0}")]
    Remote(String),
    /// The call could not be delivered or its answer was lost.
    #[error("transport: {0}")]
    Transport(String),
    /// The call itself is invalid (bad URI, payload too large).
    #[error("invalid call: {0}")]
    Invalid(String),
}
