//! Atmosphere's libp2p `NetworkBehaviour`s.
//!
//! - [`channel`]: one long-lived, length-prefixed stream per connection that
//!   carries pub/sub, RPC and direct frames, opened on the connection the
//!   caller chooses.
//! - [`membership`]: mesh certificates, the Hello exchange on every new
//!   connection, invite redemption; non-members are disconnected.
//! - [`pairing`]: proximity pairing with a 6-digit code both screens show
//!   (a fresh X25519 key per session, the code bound to both peer ids), then
//!   the founder's credentials to the new device.
//! - [`pattern`]: topic names and subscription patterns (`*`, `**`).

#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod channel;
pub mod heartbeat;
pub mod membership;
pub mod pairing;
pub mod pattern;
pub mod train;
