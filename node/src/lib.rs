//! Atmosphere: pub/sub, RPC and meshes for device meshes, on rust-libp2p.
//!
//! ```no_run
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! use atmosphere::{CallOptions, Config, NodeBuilder};
//! let node = NodeBuilder::new(Config::ephemeral("/tmp/atmosphere-demo")).build().await?;
//! node.create_mesh("home").await?;
//! let mut sub = node.subscribe("home.*.temp").await?;
//! node.publish("home.kitchen.temp", "21.5").await?;
//! let msg = sub.recv().await;
//! let info = node.call("node.info", "", CallOptions::default()).await?;
//! # Ok(()) }
//! ```
//!
//! See `docs/design.md` for how the pieces fit and `docs/wire-format.md` for
//! what goes on the wire.

#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod config;
pub mod error;
mod frame_codec;
pub mod invite;
mod link;
mod metrics;
mod node;
pub mod pubsub;
pub mod rpc;
mod session;
mod shared;
pub mod store;
mod swarm;
pub mod types;
pub mod wire;

pub use atmosphere_behaviours as behaviours;
pub use atmosphere_transports as transports;
pub use config::{
    default_data_dir, listen_on_port, Config, ConfigError, DeviceProfile, DEFAULT_PORT,
};
pub use error::{Error, RpcError};
pub use libp2p::{Multiaddr, PeerId};
pub use node::{Node, NodeBuilder, STORE_FILE};
pub use pubsub::Subscription;
pub use rpc::{Handler, HandlerError};
pub use types::{
    BleStatus, CallOptions, Invite, InviteOptions, JoinReport, MemberStatus, MeshId, MeshInfo,
    Message, NearbyDevice, NetworkStatus, PairingMode, PairingSession, PathStatus, PathSwitch,
    PeerEvent, PeerInfo, Permissions, Reachability, RelayStatus, Request, Role, SavedEndpoint,
    Status, Traffic, UpnpStatus, VERSION,
};
