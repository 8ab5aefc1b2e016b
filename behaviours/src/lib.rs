//! Atmosphere's libp2p `NetworkBehaviour`s.
//!
//! - [`channel`]: one long-lived, length-prefixed stream per connection that
//!   carries pub/sub, RPC and direct frames, opened on the connection the
//!   caller chooses.
//! - [`membership`]: mesh certificates, the Hello exchange on every new
//!   connection, invite redemption; non-members are disconnected.
//! - [`pattern`]: topic names and subscription patterns (`*`, `**`).

#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod channel;
pub mod heartbeat;
pub mod membership;
pub mod pattern;
pub mod train;
