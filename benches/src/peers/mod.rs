//! The systems measured beside Atmosphere.

pub mod iperf;
#[cfg(feature = "compare")]
pub mod nats;
pub mod raw_libp2p;
#[cfg(feature = "compare")]
pub mod zenoh;
