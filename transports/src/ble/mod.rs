//! Bluetooth LE transport.
//!
//! - [`BleLink`]: what the transport needs from a radio (listen on an L2CAP
//!   CoC PSM, dial an address + PSM, a discovery stream of sightings).
//! - [`BleTransport`]: libp2p `Transport` over any [`BleLink`]; it yields a
//!   plain byte stream, and the caller applies the usual upgrade (noise +
//!   yamux).
//! - [`sim`]: an in-process simulated radio implementing [`BleLink`].
//! - `bluez` (cargo feature `bluez`, Linux): `bluez::BluezLink`, the real
//!   radio through BlueZ (L2CAP CoC sockets, bluetoothd over D-Bus).
//! - [`addr`]: the multiaddr form, `/memory/<u64>` packing a 48-bit device
//!   address and a 16-bit PSM.
//! - [`advert`]: what an advertisement carries (service UUID, peer-id hint
//!   and PSM).
//! - [`BoxedLink`]: any [`BleLink`] behind one concrete type, for code that
//!   picks the radio at run time.

pub mod addr;
pub mod advert;
#[cfg(feature = "bluez")]
pub mod bluez;
mod boxed;
pub mod sim;
mod transport;

use std::fmt;
use std::io;

use futures::future::BoxFuture;
use futures::{AsyncRead, AsyncWrite, Stream};

pub use addr::{BleAddr, DeviceAddress};
pub use boxed::{BoxedLink, BoxedStream, ReadWrite};
pub use transport::{upgraded, BleTransport};

/// First LE dynamic PSM (Bluetooth Core spec, LE credit-based channels).
pub const DYNAMIC_PSM_MIN: u16 = 0x0080;
/// Last LE dynamic PSM.
pub const DYNAMIC_PSM_MAX: u16 = 0x00FF;

/// A radio as seen by [`BleTransport`].
///
/// Implementations: [`sim::SimNode`] (simulated radio) and, with the cargo
/// feature `bluez`, `bluez::BluezLink` (BlueZ, L2CAP CoC sockets).
pub trait BleLink: Send + Unpin + 'static {
    /// A connected L2CAP channel: a reliable, ordered byte stream.
    type Stream: AsyncRead + AsyncWrite + Unpin + Send + 'static;
    /// Inbound channels on one listening PSM, with the remote device address.
    type Listener: Stream<Item = (Self::Stream, DeviceAddress)> + Unpin + Send + 'static;
    /// Sightings of advertising devices.
    type Discovery: Stream<Item = Sighting> + Unpin + Send + 'static;

    /// This radio's device address.
    fn local_address(&self) -> DeviceAddress;

    /// Listens on `psm`; `None` picks a free dynamic PSM. Returns the PSM in
    /// use and the stream of inbound channels. Dropping the listener stops
    /// listening.
    fn listen(&self, psm: Option<u16>) -> Result<(u16, Self::Listener), BleError>;

    /// Opens a channel to `address` on `psm`.
    fn dial(
        &self,
        address: DeviceAddress,
        psm: u16,
    ) -> BoxFuture<'static, Result<Self::Stream, BleError>>;

    /// Starts scanning: a stream of sightings of advertising devices.
    fn discover(&self) -> Result<Self::Discovery, BleError>;

    /// Advertises this device (connectable) with `data` as the service data
    /// of Atmosphere's service ([`advert::SERVICE_UUID`]), replacing any
    /// previous advertisement; `None` stops advertising.
    fn advertise(&self, data: Option<Vec<u8>>) -> BoxFuture<'static, Result<(), BleError>>;
}

/// One advertisement seen by a scan.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sighting {
    /// Address the advertiser used (may rotate on real radios: not an identity).
    pub address: DeviceAddress,
    /// Received signal strength, dBm.
    pub rssi_dbm: i16,
    /// Service data carried by the advertisement (e.g. a short peer-id hint).
    pub data: Vec<u8>,
}

/// Errors of the BLE links and transport.
#[derive(Debug, thiserror::Error)]
pub enum BleError {
    /// The device is not known to the radio.
    #[error("unknown device {0}")]
    UnknownDevice(DeviceAddress),
    /// The remote device is out of radio range.
    #[error("device {0} is out of range")]
    OutOfRange(DeviceAddress),
    /// Nobody listens on this PSM at that device.
    #[error("no listener on {0}")]
    NoListener(BleAddr),
    /// The PSM is already in use on this device.
    #[error("PSM {0:#06x} already in use")]
    PsmInUse(u16),
    /// No free dynamic PSM is left.
    #[error("no free dynamic PSM")]
    NoFreePsm,
    /// The listener's accept backlog is full.
    #[error("listener backlog full at {0}")]
    BacklogFull(BleAddr),
    /// Listening is only possible on the local device address.
    #[error("{0} is not this radio's address")]
    NotLocalAddress(DeviceAddress),
    /// PSM 0 or device address 0 cannot be dialed.
    #[error("cannot dial {0}: address and PSM must be non-zero")]
    InvalidDialTarget(BleAddr),
    /// I/O error on the link.
    #[error("link I/O: {0}")]
    Io(#[from] io::Error),
    /// BlueZ (bluetoothd over D-Bus) refused or failed a request.
    #[error("BlueZ: {0}")]
    Bluez(String),
}

impl fmt::Display for DeviceAddress {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let b = self.to_bytes();
        write!(
            f,
            "{:02X}:{:02X}:{:02X}:{:02X}:{:02X}:{:02X}",
            b[0], b[1], b[2], b[3], b[4], b[5]
        )
    }
}

impl fmt::Display for BleAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} psm {:#06x}", self.device, self.psm)
    }
}
