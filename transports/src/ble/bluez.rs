//! BlueZ backend: [`BluezLink`] implements [`BleLink`] on the Linux kernel's
//! Bluetooth stack, through `bluetoothd` (D-Bus) and kernel L2CAP sockets,
//! with the `bluer` crate. Built with the cargo feature `bluez` (Linux only;
//! needs `libdbus-1` at run time and `bluetoothd` running).
//!
//! | [`BleLink`] method | BlueZ |
//! |---|---|
//! | [`listen`](BleLink::listen) | an L2CAP LE credit-based (CoC) `SOCK_STREAM` listener bound on the adapter's LE address; `None` takes the first free PSM in 0x0080–0x00FF |
//! | [`dial`](BleLink::dial) | an L2CAP CoC connection from the adapter's address to the remote address and PSM |
//! | [`discover`](BleLink::discover) | a `bluetoothd` LE discovery session; one [`Sighting`] per report of a device whose advertisement carries service data of [`SERVICE_UUID`](super::advert::SERVICE_UUID) |
//! | [`advertise`](BleLink::advertise) | a connectable (`peripheral`) LE advertisement with that service data, and a GATT service [`SERVICE_UUID`](super::advert::SERVICE_UUID) whose read-only characteristic [`PSM_CHARACTERISTIC_UUID`](super::advert::PSM_CHARACTERISTIC_UUID) holds the listening PSM (2 bytes, little endian) |
//!
//! # Streams
//!
//! [`BluezStream`] wraps a `bluer::l2cap::Stream` as a futures `AsyncRead +
//! AsyncWrite` and handles two kernel quirks (measured on Linux 6.1):
//!
//! - a write larger than the channel's send MTU fails with `EMSGSIZE`, even
//!   on `SOCK_STREAM`: writes are cut to the send MTU;
//! - `connect()` can return a few milliseconds before the channel is up, and
//!   a send then fails with `ENOTCONN`: [`BleLink::dial`] polls the socket
//!   state (the send MTU only becomes readable once the channel is
//!   connected) before returning the stream, and the stream still retries
//!   `ENOTCONN` for a short grace period after it was opened.
//!
//! Data written just before a close may be lost by the kernel: protocols on
//! top must acknowledge at their own level (yamux and the usual libp2p
//! protocols do).
//!
//! # Addresses
//!
//! A Bluetooth address is **not an identity**: devices with privacy enabled
//! advertise and connect from random, rotating addresses, and anybody can
//! claim any address. [`DeviceAddress`] is only a way to reach a radio right
//! now; the peer is identified by the noise handshake on the channel. The
//! 48-bit [`DeviceAddress`] does not carry the LE address type (public or
//! random); [`BluezLink`] remembers the type of every address it saw in a
//! discovery or an inbound channel, asks `bluetoothd` for other addresses,
//! and falls back to "public".
//!
//! # Discovery filter
//!
//! The discovery session filters on the LE transport only, not on
//! [`SERVICE_UUID`](super::advert::SERVICE_UUID): BlueZ's UUID filter
//! matches UUIDs listed in the advertisement's service-UUID fields, never
//! the UUID of a service-data field, and a 128-bit UUID list next to the
//! 128-bit service data would not fit a legacy 31-byte advertisement. The
//! backend keeps exactly the devices whose advertisement carries service
//! data of our UUID.
//!
//! # Runtime
//!
//! `bluer` runs on tokio: [`BluezLink::new`] must be awaited inside a tokio
//! runtime (with I/O and time drivers) and the link keeps a handle on it to
//! create sockets and run the discovery task, so its methods can be called
//! from any thread while that runtime is alive.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::io;
use std::os::fd::AsRawFd;
use std::pin::Pin;
use std::sync::atomic::{AtomicU16, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{ready, Context, Poll};
use std::time::{Duration, Instant};

use bluer::adv::{Advertisement, AdvertisementHandle, Type as AdvertisementType};
use bluer::gatt::local::{
    Application, ApplicationHandle, Characteristic, CharacteristicRead, ReqError, Service,
};
use bluer::l2cap::{Socket, SocketAddr, Stream as L2capStream, StreamListener};
use bluer::{
    Adapter, AdapterEvent, Address, AddressType, DiscoveryFilter, DiscoveryTransport, Session, Uuid,
};
use futures::future::{self, BoxFuture, Either};
use futures::{AsyncRead, AsyncWrite, FutureExt, Stream, StreamExt};
use futures_timer::Delay;
use tokio::runtime::Handle;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_util::compat::{Compat, TokioAsyncReadCompatExt};

use super::addr::{BleAddr, DeviceAddress};
use super::advert::{PSM_CHARACTERISTIC_UUID, SERVICE_UUID};
use super::{BleError, BleLink, Sighting, DYNAMIC_PSM_MAX, DYNAMIC_PSM_MIN};

/// Inbound channels the kernel queues on a listener before they are accepted.
pub const ACCEPT_BACKLOG: u32 = 16;
/// Longest time a dial waits for the LE connection and the L2CAP channel.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(30);
/// How long after `connect()` returned `ENOTCONN` is taken as "not up yet"
/// (and retried) rather than as a failed channel.
pub const CONNECT_GRACE: Duration = Duration::from_secs(2);
/// Sightings a discovery stream holds before they are read; beyond that they
/// are dropped (a scan is lossy anyway, and sightings repeat).
pub const DISCOVERY_QUEUE: usize = 64;

/// Poll interval while waiting for a just-connected channel to be up.
const READY_POLL: Duration = Duration::from_millis(2);
/// Smallest write chunk after repeated `EMSGSIZE` (below the LE minimum
/// MTU of 23, so it never stops a valid channel).
const MIN_CHUNK: usize = 16;
/// Consecutive `accept()` failures after which a listener gives up.
const MAX_ACCEPT_FAILURES: u32 = 16;
/// Address types remembered; the table is cleared when it grows past this.
const MAX_REMEMBERED_ADDRESSES: usize = 4096;

/// A BlueZ radio (one adapter, e.g. `hci0`) implementing [`BleLink`].
///
/// Cheap to clone: clones share the D-Bus session, the adapter, the
/// advertisement and the table of known address types.
#[derive(Clone)]
pub struct BluezLink {
    inner: Arc<Inner>,
}

struct Inner {
    /// Keeps the D-Bus connection to bluetoothd open.
    _session: Session,
    adapter: Adapter,
    address: DeviceAddress,
    /// LE address type of the adapter's own address (for `bind`).
    bind_type: AddressType,
    runtime: Handle,
    /// Address type of remote devices seen in discovery or inbound channels.
    address_types: Mutex<HashMap<DeviceAddress, AddressType>>,
    /// PSM of the most recent listener (0: none), served by GATT.
    psm: Arc<AtomicU16>,
    advertising: tokio::sync::Mutex<Advertising>,
}

#[derive(Default)]
struct Advertising {
    advertisement: Option<AdvertisementHandle>,
    gatt: Option<ApplicationHandle>,
}

impl fmt::Debug for BluezLink {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BluezLink")
            .field("adapter", &self.inner.adapter.name())
            .field("address", &self.inner.address)
            .field("address_type", &self.inner.bind_type)
            .finish()
    }
}

fn bluez_error(context: &'static str) -> impl FnOnce(bluer::Error) -> BleError {
    move |e| BleError::Bluez(format!("{context}: {e}"))
}

fn service_uuid() -> Uuid {
    Uuid::from_u128(SERVICE_UUID)
}

fn to_bluer(address: DeviceAddress) -> Address {
    Address::new(address.to_bytes())
}

fn from_bluer(address: Address) -> DeviceAddress {
    DeviceAddress::from_bytes(address.0)
}

impl BluezLink {
    /// Opens a D-Bus session to `bluetoothd`, takes the adapter named
    /// `adapter` (e.g. `"hci0"`; `None`: bluetoothd's default adapter) and
    /// powers it on.
    ///
    /// Must be awaited inside a tokio runtime; the link uses that runtime
    /// for its sockets and its discovery task.
    pub async fn new(adapter: Option<&str>) -> Result<Self, BleError> {
        let runtime = Handle::try_current().map_err(|_| {
            BleError::Bluez("BluezLink::new must run inside a tokio runtime".to_string())
        })?;
        let session = Session::new()
            .await
            .map_err(bluez_error("connecting to bluetoothd over D-Bus"))?;
        let adapter = match adapter {
            Some(name) => session
                .adapter(name)
                .map_err(bluez_error("opening the adapter"))?,
            None => session
                .default_adapter()
                .await
                .map_err(bluez_error("finding the default adapter"))?,
        };
        let address = adapter
            .address()
            .await
            .map_err(|e| BleError::Bluez(format!("adapter {}: {e}", adapter.name())))?;
        adapter
            .set_powered(true)
            .await
            .map_err(|e| BleError::Bluez(format!("powering on {}: {e}", adapter.name())))?;
        let bind_type = match adapter.address_type().await {
            Ok(AddressType::LeRandom) => AddressType::LeRandom,
            // "public" (also what dual-mode adapters report).
            Ok(_) => AddressType::LePublic,
            Err(e) => {
                return Err(BleError::Bluez(format!(
                    "reading the address type of {}: {e}",
                    adapter.name()
                )))
            }
        };
        let link = Self {
            inner: Arc::new(Inner {
                _session: session,
                address: from_bluer(address),
                adapter,
                bind_type,
                runtime,
                address_types: Mutex::new(HashMap::new()),
                psm: Arc::new(AtomicU16::new(0)),
                advertising: tokio::sync::Mutex::new(Advertising::default()),
            }),
        };
        tracing::debug!(?link, "BlueZ link ready");
        Ok(link)
    }

    /// The adapter's name (e.g. `hci0`).
    pub fn adapter_name(&self) -> &str {
        self.inner.adapter.name()
    }

    /// The LE address type of this adapter's address.
    pub fn address_type(&self) -> AddressType {
        self.inner.bind_type
    }

    /// The `bluer` adapter, for anything the [`BleLink`] trait does not
    /// cover.
    pub fn adapter(&self) -> &Adapter {
        &self.inner.adapter
    }
}

impl Inner {
    fn local_socket_addr(&self, psm: u16) -> SocketAddr {
        SocketAddr::new(to_bluer(self.address), self.bind_type, psm)
    }

    fn remember(&self, address: DeviceAddress, kind: AddressType) {
        let mut types = self
            .address_types
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if types.len() >= MAX_REMEMBERED_ADDRESSES && !types.contains_key(&address) {
            types.clear();
        }
        types.insert(address, kind);
    }

    fn remembered(&self, address: DeviceAddress) -> Option<AddressType> {
        self.address_types
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .get(&address)
            .copied()
    }

    /// The LE address type to dial `address` with.
    async fn address_type_of(&self, address: DeviceAddress) -> AddressType {
        if let Some(kind) = self.remembered(address) {
            return kind;
        }
        let from_bluetoothd = match self.adapter.device(to_bluer(address)) {
            Ok(device) => device.address_type().await.ok(),
            Err(_) => None,
        };
        match from_bluetoothd {
            Some(AddressType::LeRandom) => AddressType::LeRandom,
            _ => AddressType::LePublic,
        }
    }

    /// A new, unbound L2CAP stream socket registered with the link's runtime.
    fn new_socket(&self) -> io::Result<Socket<L2capStream>> {
        let _runtime = self.runtime.enter();
        Socket::<L2capStream>::new_stream()
    }
}

impl BleLink for BluezLink {
    type Stream = BluezStream;
    type Listener = BluezListener;
    type Discovery = BluezDiscovery;

    fn local_address(&self) -> DeviceAddress {
        self.inner.address
    }

    fn listen(&self, psm: Option<u16>) -> Result<(u16, BluezListener), BleError> {
        let inner = &self.inner;
        let socket = inner.new_socket()?;
        let bound = match psm {
            Some(psm) => match socket.bind(inner.local_socket_addr(psm)) {
                Ok(()) => psm,
                Err(e) if e.kind() == io::ErrorKind::AddrInUse => {
                    return Err(BleError::PsmInUse(psm))
                }
                Err(e) => return Err(BleError::Io(e)),
            },
            // The first free LE dynamic PSM. Done here rather than by the
            // kernel (bind with PSM 0) so the range does not depend on the
            // kernel version.
            None => {
                let mut found = None;
                for candidate in DYNAMIC_PSM_MIN..=DYNAMIC_PSM_MAX {
                    match socket.bind(inner.local_socket_addr(candidate)) {
                        Ok(()) => {
                            found = Some(candidate);
                            break;
                        }
                        Err(e) if e.kind() == io::ErrorKind::AddrInUse => continue,
                        Err(e) => return Err(BleError::Io(e)),
                    }
                }
                found.ok_or(BleError::NoFreePsm)?
            }
        };
        let listener = socket.listen(ACCEPT_BACKLOG)?;
        let psm = listener
            .as_ref()
            .local_addr()
            .map(|a| a.psm)
            .unwrap_or(bound);
        inner.psm.store(psm, Ordering::Release);
        tracing::debug!(adapter = inner.adapter.name(), psm, "L2CAP CoC listening");
        Ok((
            psm,
            BluezListener {
                listener,
                psm,
                link: self.inner.clone(),
                failures: 0,
            },
        ))
    }

    fn dial(
        &self,
        address: DeviceAddress,
        psm: u16,
    ) -> BoxFuture<'static, Result<BluezStream, BleError>> {
        let inner = self.inner.clone();
        async move {
            let target = BleAddr {
                device: address,
                psm,
            };
            if address.value() == 0 || psm == 0 {
                return Err(BleError::InvalidDialTarget(target));
            }
            let kind = inner.address_type_of(address).await;
            let socket = inner.new_socket()?;
            // Bind to this adapter, so the kernel does not route the
            // connection through another controller of the machine.
            socket.bind(inner.local_socket_addr(0))?;
            let remote = SocketAddr::new(to_bluer(address), kind, psm);
            tracing::debug!(%target, ?kind, "L2CAP CoC connecting");
            let connect = socket.connect(remote).boxed();
            let stream = match future::select(connect, Delay::new(CONNECT_TIMEOUT)).await {
                Either::Left((Ok(stream), _)) => stream,
                Either::Left((Err(e), _)) => return Err(connect_error(e, target)),
                Either::Right(_) => {
                    return Err(BleError::Io(io::Error::new(
                        io::ErrorKind::TimedOut,
                        format!("connecting to {target} timed out"),
                    )))
                }
            };
            wait_until_up(&stream, target).await?;
            inner.remember(address, kind);
            Ok(BluezStream::new(stream, address))
        }
        .boxed()
    }

    fn discover(&self) -> Result<BluezDiscovery, BleError> {
        let (tx, rx) = mpsc::channel(DISCOVERY_QUEUE);
        let task = self
            .inner
            .runtime
            .spawn(run_discovery(self.inner.clone(), tx));
        Ok(BluezDiscovery { rx, task })
    }

    fn advertise(&self, data: Option<Vec<u8>>) -> BoxFuture<'static, Result<(), BleError>> {
        let inner = self.inner.clone();
        async move {
            let mut state = inner.advertising.lock().await;
            // Controllers have few advertising sets: the old one goes first.
            state.advertisement = None;
            let Some(data) = data else {
                state.gatt = None;
                tracing::debug!(adapter = inner.adapter.name(), "advertising stopped");
                return Ok(());
            };
            if state.gatt.is_none() {
                let handle = inner
                    .adapter
                    .serve_gatt_application(psm_application(inner.psm.clone()))
                    .await
                    .map_err(bluez_error("registering the GATT service"))?;
                state.gatt = Some(handle);
            }
            let advertisement = Advertisement {
                advertisement_type: AdvertisementType::Peripheral,
                service_data: BTreeMap::from([(service_uuid(), data)]),
                discoverable: Some(true),
                ..Default::default()
            };
            let handle = inner
                .adapter
                .advertise(advertisement)
                .await
                .map_err(bluez_error("registering the advertisement"))?;
            state.advertisement = Some(handle);
            tracing::debug!(adapter = inner.adapter.name(), "advertising");
            Ok(())
        }
        .boxed()
    }
}

/// The GATT application: service [`SERVICE_UUID`], one read-only
/// characteristic [`PSM_CHARACTERISTIC_UUID`] with the listening PSM.
fn psm_application(psm: Arc<AtomicU16>) -> Application {
    let read = CharacteristicRead {
        read: true,
        fun: Box::new(move |request| {
            let value = psm.load(Ordering::Acquire).to_le_bytes();
            async move {
                if value == [0, 0] {
                    // Not listening.
                    return Err(ReqError::Failed);
                }
                let offset = usize::from(request.offset);
                value
                    .get(offset..)
                    .map(<[u8]>::to_vec)
                    .ok_or(ReqError::InvalidOffset)
            }
            .boxed()
        }),
        ..Default::default()
    };
    Application {
        services: vec![Service {
            uuid: service_uuid(),
            primary: true,
            characteristics: vec![Characteristic {
                uuid: Uuid::from_u128(PSM_CHARACTERISTIC_UUID),
                read: Some(read),
                ..Default::default()
            }],
            ..Default::default()
        }],
        ..Default::default()
    }
}

fn connect_error(e: io::Error, target: BleAddr) -> BleError {
    match e.raw_os_error() {
        // The remote answered that nobody listens on that PSM.
        Some(libc::ECONNREFUSED) => BleError::NoListener(target),
        _ => BleError::Io(e),
    }
}

/// Reads `SO_ERROR` of a socket: the reason a connection failed, if any.
fn socket_error(fd: &impl AsRawFd) -> Option<io::Error> {
    let mut value: libc::c_int = 0;
    let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
    // SAFETY: `fd` is an open socket owned by the caller; `value` and `len`
    // are valid for writes of the sizes passed.
    let rc = unsafe {
        libc::getsockopt(
            fd.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_ERROR,
            (&mut value as *mut libc::c_int).cast(),
            &mut len,
        )
    };
    if rc != 0 {
        return Some(io::Error::last_os_error());
    }
    (value != 0).then(|| io::Error::from_raw_os_error(value))
}

/// Waits until the channel is up: the kernel reports the send MTU only in
/// the connected state, and `connect()` may return a few milliseconds
/// before that. Polls every [`READY_POLL`] for at most [`CONNECT_GRACE`].
async fn wait_until_up(stream: &L2capStream, target: BleAddr) -> Result<(), BleError> {
    let started = Instant::now();
    loop {
        match stream.as_ref().send_mtu() {
            Ok(mtu) => {
                tracing::debug!(
                    %target,
                    send_mtu = mtu,
                    waited_ms = started.elapsed().as_millis() as u64,
                    "L2CAP CoC up"
                );
                return Ok(());
            }
            Err(e) if e.raw_os_error() == Some(libc::ENOTCONN) => {
                if let Some(e) = socket_error(stream) {
                    return Err(connect_error(e, target));
                }
                if started.elapsed() >= CONNECT_GRACE {
                    return Err(BleError::Io(io::Error::new(
                        io::ErrorKind::TimedOut,
                        format!("channel to {target} did not come up"),
                    )));
                }
                Delay::new(READY_POLL).await;
            }
            Err(e) => return Err(BleError::Io(e)),
        }
    }
}

/// Inbound L2CAP CoC channels on one PSM of a [`BluezLink`]. Dropping it
/// closes the listening socket.
pub struct BluezListener {
    listener: StreamListener,
    psm: u16,
    link: Arc<Inner>,
    failures: u32,
}

impl BluezListener {
    /// The PSM this listener is bound to.
    pub fn psm(&self) -> u16 {
        self.psm
    }
}

impl fmt::Debug for BluezListener {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BluezListener")
            .field("address", &self.link.address)
            .field("psm", &self.psm)
            .finish()
    }
}

impl Stream for BluezListener {
    type Item = (BluezStream, DeviceAddress);

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = &mut *self;
        loop {
            match ready!(this.listener.poll_accept(cx)) {
                Ok((stream, remote)) => {
                    this.failures = 0;
                    let device = from_bluer(remote.addr);
                    if matches!(
                        remote.addr_type,
                        AddressType::LePublic | AddressType::LeRandom
                    ) {
                        this.link.remember(device, remote.addr_type);
                    }
                    tracing::debug!(%device, psm = this.psm, "L2CAP CoC accepted");
                    return Poll::Ready(Some((BluezStream::new(stream, device), device)));
                }
                Err(e) => {
                    this.failures += 1;
                    tracing::warn!(psm = this.psm, error = %e, "L2CAP accept failed");
                    if this.failures >= MAX_ACCEPT_FAILURES {
                        tracing::warn!(psm = this.psm, "L2CAP listener gives up");
                        return Poll::Ready(None);
                    }
                }
            }
        }
    }
}

impl Drop for BluezListener {
    fn drop(&mut self) {
        // Stop serving this PSM over GATT if it is the one published.
        let _ = self
            .link
            .psm
            .compare_exchange(self.psm, 0, Ordering::AcqRel, Ordering::Acquire);
    }
}

/// Sightings of a [`BluezLink`] discovery session. Dropping it stops the
/// session (and so scanning, unless another session of bluetoothd scans).
///
/// The stream ends if bluetoothd refuses or ends the discovery; the reason is
/// logged (`tracing`, warn level).
pub struct BluezDiscovery {
    rx: mpsc::Receiver<Sighting>,
    task: JoinHandle<()>,
}

impl fmt::Debug for BluezDiscovery {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BluezDiscovery").finish_non_exhaustive()
    }
}

impl Stream for BluezDiscovery {
    type Item = Sighting;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Sighting>> {
        self.rx.poll_recv(cx)
    }
}

impl Drop for BluezDiscovery {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn run_discovery(inner: Arc<Inner>, tx: mpsc::Sender<Sighting>) {
    let adapter = inner.adapter.name().to_string();
    let filter = DiscoveryFilter {
        transport: DiscoveryTransport::Le,
        // Report every advertisement, so sightings keep coming while a
        // device is in range.
        duplicate_data: true,
        ..Default::default()
    };
    match inner.adapter.set_discovery_filter(filter).await {
        Ok(()) => {}
        // Another discovery of this link runs: it set the same filter.
        Err(e) if e.kind == bluer::ErrorKind::DiscoveryActive => {}
        Err(e) => {
            tracing::warn!(%adapter, error = %e, "cannot set the discovery filter");
            return;
        }
    }
    let events = match inner.adapter.discover_devices_with_changes().await {
        Ok(events) => events,
        Err(e) => {
            tracing::warn!(%adapter, error = %e, "cannot start discovery");
            return;
        }
    };
    tracing::debug!(%adapter, "discovery started");
    let mut events = std::pin::pin!(events);
    loop {
        let event = tokio::select! {
            () = tx.closed() => return,
            event = events.next() => event,
        };
        match event {
            Some(AdapterEvent::DeviceAdded(address)) => {
                let Some(sighting) = sighting(&inner, address).await else {
                    continue;
                };
                match tx.try_send(sighting) {
                    Ok(()) => {}
                    Err(mpsc::error::TrySendError::Full(_)) => {
                        tracing::trace!(%adapter, "discovery queue full, sighting dropped");
                    }
                    Err(mpsc::error::TrySendError::Closed(_)) => return,
                }
            }
            Some(_) => {}
            None => {
                tracing::warn!(%adapter, "discovery ended by bluetoothd");
                return;
            }
        }
    }
}

/// The sighting of `address` if it is in range now (has an RSSI) and its
/// advertisement carries service data of our UUID.
async fn sighting(inner: &Inner, address: Address) -> Option<Sighting> {
    let device = inner.adapter.device(address).ok()?;
    let Some(data) = device
        .service_data()
        .await
        .ok()
        .flatten()
        .and_then(|mut data| data.remove(&service_uuid()))
    else {
        tracing::trace!(%address, "device without our service data");
        return None;
    };
    // Known devices out of range have no RSSI.
    let Some(rssi_dbm) = device.rssi().await.ok().flatten() else {
        tracing::trace!(%address, "device not in range now (no RSSI)");
        return None;
    };
    let device_address = from_bluer(address);
    match device.address_type().await {
        Ok(kind @ (AddressType::LePublic | AddressType::LeRandom)) => {
            inner.remember(device_address, kind)
        }
        Ok(AddressType::BrEdr) | Err(_) => {}
    }
    Some(Sighting {
        address: device_address,
        rssi_dbm,
        data,
    })
}

/// A connected L2CAP CoC channel of a [`BluezLink`]: a reliable, ordered
/// byte stream (futures `AsyncRead + AsyncWrite`).
///
/// Writes are cut to the channel's send MTU; `ENOTCONN` right after the
/// channel was opened is retried (see the [module docs](self)). Closing
/// closes the whole channel (L2CAP has no half-close).
pub struct BluezStream {
    io: Compat<L2capStream>,
    peer: DeviceAddress,
    /// Largest write handed to the socket (the send MTU once known).
    chunk: usize,
    mtu_known: bool,
    opened: Instant,
    write_retry: Option<Delay>,
    read_retry: Option<Delay>,
}

impl fmt::Debug for BluezStream {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BluezStream")
            .field("peer", &self.peer)
            .field("chunk", &self.chunk)
            .finish_non_exhaustive()
    }
}

impl BluezStream {
    fn new(stream: L2capStream, peer: DeviceAddress) -> Self {
        let mut this = Self {
            io: stream.compat(),
            peer,
            chunk: MIN_CHUNK,
            mtu_known: false,
            opened: Instant::now(),
            write_retry: None,
            read_retry: None,
        };
        this.refresh_mtu();
        this
    }

    /// The remote device address (not an identity: see the [module
    /// docs](self)).
    pub fn peer(&self) -> DeviceAddress {
        self.peer
    }

    /// The channel's send MTU, if the kernel reports it.
    pub fn send_mtu(&self) -> Option<u16> {
        self.io.get_ref().as_ref().send_mtu().ok()
    }

    /// The channel's receive MTU, if the kernel reports it.
    pub fn recv_mtu(&self) -> Option<u16> {
        self.io.get_ref().as_ref().recv_mtu().ok()
    }

    fn refresh_mtu(&mut self) {
        if let Some(mtu) = self.send_mtu() {
            self.chunk = usize::from(mtu).max(1);
            self.mtu_known = true;
        }
    }

    /// `ENOTCONN` shortly after the channel was opened: not up yet.
    fn not_up_yet(&self, e: &io::Error) -> bool {
        e.raw_os_error() == Some(libc::ENOTCONN) && self.opened.elapsed() < CONNECT_GRACE
    }
}

/// Waits for an armed retry timer, if any.
fn poll_retry(retry: &mut Option<Delay>, cx: &mut Context<'_>) -> Poll<()> {
    if let Some(delay) = retry {
        ready!(delay.poll_unpin(cx));
        *retry = None;
    }
    Poll::Ready(())
}

impl AsyncRead for BluezStream {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut [u8],
    ) -> Poll<io::Result<usize>> {
        let this = &mut *self;
        loop {
            ready!(poll_retry(&mut this.read_retry, cx));
            match ready!(Pin::new(&mut this.io).poll_read(cx, buf)) {
                Err(e) if this.not_up_yet(&e) => {
                    this.read_retry = Some(Delay::new(READY_POLL));
                }
                other => return Poll::Ready(other),
            }
        }
    }
}

impl AsyncWrite for BluezStream {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = &mut *self;
        if buf.is_empty() {
            return Poll::Ready(Ok(0));
        }
        loop {
            ready!(poll_retry(&mut this.write_retry, cx));
            if !this.mtu_known {
                this.refresh_mtu();
            }
            let len = buf.len().min(this.chunk);
            match ready!(Pin::new(&mut this.io).poll_write(cx, &buf[..len])) {
                Ok(written) => return Poll::Ready(Ok(written)),
                Err(e) if this.not_up_yet(&e) => {
                    this.write_retry = Some(Delay::new(READY_POLL));
                }
                Err(e) if e.raw_os_error() == Some(libc::EMSGSIZE) && len > MIN_CHUNK => {
                    // The MTU we used is too large (it changed, or the kernel
                    // reported none yet): ask again, else halve.
                    let before = this.chunk;
                    this.refresh_mtu();
                    if this.chunk >= len {
                        this.chunk = (len / 2).max(MIN_CHUNK);
                    }
                    tracing::debug!(peer = %this.peer, before, after = this.chunk, "EMSGSIZE, smaller writes");
                }
                Err(e) => return Poll::Ready(Err(e)),
            }
        }
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_close(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match ready!(Pin::new(&mut self.io).poll_close(cx)) {
            // Already closed by the remote or the link: closed is closed.
            Err(e) if e.raw_os_error() == Some(libc::ENOTCONN) => Poll::Ready(Ok(())),
            other => Poll::Ready(other),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_convert_both_ways() {
        let device = DeviceAddress::from_bytes([0xC0, 0x11, 0x22, 0x33, 0x44, 0x55]);
        let bluer = to_bluer(device);
        assert_eq!(bluer.to_string(), "C0:11:22:33:44:55");
        assert_eq!(from_bluer(bluer), device);
    }

    #[test]
    fn refused_connections_mean_no_listener() {
        let target = BleAddr {
            device: DeviceAddress::from_bytes([1, 2, 3, 4, 5, 6]),
            psm: 0x0081,
        };
        let refused = io::Error::from_raw_os_error(libc::ECONNREFUSED);
        assert!(matches!(connect_error(refused, target), BleError::NoListener(t) if t == target));
        let other = io::Error::from_raw_os_error(libc::EHOSTUNREACH);
        assert!(matches!(connect_error(other, target), BleError::Io(_)));
    }

    #[test]
    fn gatt_application_serves_the_psm_characteristic() {
        let app = psm_application(Arc::new(AtomicU16::new(0x0081)));
        assert_eq!(app.services.len(), 1);
        let service = &app.services[0];
        assert_eq!(service.uuid, Uuid::from_u128(SERVICE_UUID));
        assert!(service.primary);
        assert_eq!(service.characteristics.len(), 1);
        let characteristic = &service.characteristics[0];
        assert_eq!(
            characteristic.uuid,
            Uuid::from_u128(PSM_CHARACTERISTIC_UUID)
        );
        let read = characteristic.read.as_ref().expect("readable");
        assert!(read.read);
        assert!(characteristic.write.is_none() && characteristic.notify.is_none());
    }

    #[test]
    fn socket_error_reads_so_error() {
        // A fresh, unconnected UDP socket has no pending error.
        let socket = std::net::UdpSocket::bind("127.0.0.1:0").expect("socket");
        assert!(socket_error(&socket).is_none());
    }
}
