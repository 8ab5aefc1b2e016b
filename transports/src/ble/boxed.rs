//! [`BoxedLink`]: any [`BleLink`] behind one concrete type.
//!
//! A node picks its radio at run time (simulated or BlueZ); the transport
//! and the discovery code are written once against [`BoxedLink`].

use std::sync::Arc;

use futures::future::BoxFuture;
use futures::stream::BoxStream;
use futures::{AsyncRead, AsyncWrite, FutureExt, StreamExt};

use super::{BleError, BleLink, DeviceAddress, Sighting};

/// A byte stream of any [`BleLink`].
pub type BoxedStream = Box<dyn ReadWrite>;

/// `AsyncRead + AsyncWrite`, object safe.
pub trait ReadWrite: AsyncRead + AsyncWrite + Send + Unpin + 'static {}
impl<T: AsyncRead + AsyncWrite + Send + Unpin + 'static> ReadWrite for T {}

trait DynLink: Send + Sync + 'static {
    fn local_address(&self) -> DeviceAddress;
    fn listen(
        &self,
        psm: Option<u16>,
    ) -> Result<(u16, BoxStream<'static, (BoxedStream, DeviceAddress)>), BleError>;
    fn dial(
        &self,
        address: DeviceAddress,
        psm: u16,
    ) -> BoxFuture<'static, Result<BoxedStream, BleError>>;
    fn discover(&self) -> Result<BoxStream<'static, Sighting>, BleError>;
    fn advertise(&self, data: Option<Vec<u8>>) -> BoxFuture<'static, Result<(), BleError>>;
}

impl<L: BleLink + Sync> DynLink for L {
    fn local_address(&self) -> DeviceAddress {
        BleLink::local_address(self)
    }

    fn listen(
        &self,
        psm: Option<u16>,
    ) -> Result<(u16, BoxStream<'static, (BoxedStream, DeviceAddress)>), BleError> {
        let (psm, listener) = BleLink::listen(self, psm)?;
        let inbound = listener
            .map(|(stream, remote)| (Box::new(stream) as BoxedStream, remote))
            .boxed();
        Ok((psm, inbound))
    }

    fn dial(
        &self,
        address: DeviceAddress,
        psm: u16,
    ) -> BoxFuture<'static, Result<BoxedStream, BleError>> {
        BleLink::dial(self, address, psm)
            .map(|r| r.map(|s| Box::new(s) as BoxedStream))
            .boxed()
    }

    fn discover(&self) -> Result<BoxStream<'static, Sighting>, BleError> {
        Ok(BleLink::discover(self)?.boxed())
    }

    fn advertise(&self, data: Option<Vec<u8>>) -> BoxFuture<'static, Result<(), BleError>> {
        BleLink::advertise(self, data)
    }
}

/// Any [`BleLink`] (that is also `Sync`) behind one type. Cheap to clone:
/// clones share the radio.
#[derive(Clone)]
pub struct BoxedLink(Arc<dyn DynLink>);

impl BoxedLink {
    /// Wraps `link`.
    pub fn new<L: BleLink + Sync>(link: L) -> Self {
        Self(Arc::new(link))
    }
}

impl std::fmt::Debug for BoxedLink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BoxedLink")
            .field("address", &self.0.local_address())
            .finish()
    }
}

impl BleLink for BoxedLink {
    type Stream = BoxedStream;
    type Listener = BoxStream<'static, (BoxedStream, DeviceAddress)>;
    type Discovery = BoxStream<'static, Sighting>;

    fn local_address(&self) -> DeviceAddress {
        self.0.local_address()
    }

    fn listen(&self, psm: Option<u16>) -> Result<(u16, Self::Listener), BleError> {
        self.0.listen(psm)
    }

    fn dial(
        &self,
        address: DeviceAddress,
        psm: u16,
    ) -> BoxFuture<'static, Result<Self::Stream, BleError>> {
        self.0.dial(address, psm)
    }

    fn discover(&self) -> Result<Self::Discovery, BleError> {
        self.0.discover()
    }

    fn advertise(&self, data: Option<Vec<u8>>) -> BoxFuture<'static, Result<(), BleError>> {
        self.0.advertise(data)
    }
}
