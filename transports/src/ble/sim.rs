//! An in-process simulated BLE radio.
//!
//! A [`SimRadio`] is a shared handle on a 2-D world of nodes, each with a
//! position and a radio range (metres, or any unit: only ratios matter). Two
//! nodes can talk while their distance is at most the smaller of their
//! ranges. [`SimRadio::add_node`] returns a [`SimNode`], which implements
//! [`BleLink`] and so can back a [`super::BleTransport`].
//!
//! # Link model
//!
//! A connected channel is a pair of [`SimStream`]s (futures `AsyncRead` +
//! `AsyncWrite`). Per direction:
//!
//! - **Segmentation**: writes are cut into segments of at most
//!   [`SimConfig::mtu`] payload bytes (default 247, minimum 23).
//! - **Bandwidth**: each segment occupies the link for
//!   `(payload + segment_overhead) × 8 / bandwidth` seconds (default
//!   1 Mbit/s, 4 bytes of L2CAP header per segment); writes are paced so the
//!   long-run rate never exceeds the bandwidth (bursts of at most
//!   [`PACING_SLACK`] of airtime).
//! - **Latency**: a segment becomes readable `latency` (default 30 ms) after
//!   its transmission ends.
//! - **Drops**: each transmission attempt is lost with probability
//!   [`SimConfig::drop_rate`]; a lost segment is retransmitted after
//!   [`SimConfig::retransmit_delay`] (one connection interval), costing
//!   airtime again, like the link layer does. The byte stream stays intact
//!   and in order. After [`SimConfig::max_retransmissions`] failed
//!   retransmissions of one segment the link fails: both ends get an error.
//! - **Range**: moving a node ([`SimRadio::move_node`]) or removing it
//!   breaks every link that is now out of range; both ends' pending and
//!   later reads and writes fail with `ConnectionReset`.
//! - **Flow control**: at most [`SimConfig::window`] segments are in flight
//!   per direction (written but not yet read), like L2CAP CoC credits; a
//!   writer waits when the reader does not read. Credits come back as soon as
//!   a segment is read (no latency is charged on the return path).
//!
//! Connection setup (dial) takes [`SimConfig::connection_setup`].
//!
//! # Bounds
//!
//! Every queue is bounded: per direction `window + 1` segments (of at most
//! `mtu` bytes) in flight; per listener `accept_backlog + 1` inbound
//! channels not yet accepted (beyond that, dials fail with
//! [`BleError::BacklogFull`]); per scanner `discovery_queue + 1` sightings
//! (beyond that, sightings are dropped: a real scan is lossy too), and
//! every [`SimConfig::advertising_interval`] at most one sighting per node
//! in range.
//!
//! The timers come from `futures-timer`, so no particular async runtime is
//! needed.

use std::collections::HashMap;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock, Weak};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use futures::channel::mpsc;
use futures::future::BoxFuture;
use futures::task::AtomicWaker;
use futures::{AsyncRead, AsyncWrite, FutureExt, Stream};
use futures_timer::Delay;

use super::addr::{BleAddr, DeviceAddress};
use super::{BleError, BleLink, Sighting, DYNAMIC_PSM_MAX, DYNAMIC_PSM_MIN};

/// Smallest MTU the simulator accepts (the LE minimum ATT MTU).
pub const MIN_MTU: usize = 23;

/// How far ahead of real time a writer may run (airtime it may burst)
/// before it is made to wait. Keeps pacing exact on average without one timer
/// per tiny segment.
pub const PACING_SLACK: Duration = Duration::from_millis(2);

/// Parameters of the simulated radio; they apply to every link.
#[derive(Debug, Clone)]
pub struct SimConfig {
    /// Largest payload per segment, bytes (default 247, at least 23).
    pub mtu: usize,
    /// Header bytes charged per segment on top of the payload (default 4,
    /// the L2CAP basic header).
    pub segment_overhead: usize,
    /// Link capacity per direction, bits per second (default 1 000 000).
    pub bandwidth_bps: u64,
    /// One-way latency (default 30 ms).
    pub latency: Duration,
    /// Probability that one transmission attempt of a segment is lost,
    /// in `[0, 1)` (default 0).
    pub drop_rate: f64,
    /// Retransmissions of one segment before the link fails (default 8).
    pub max_retransmissions: u32,
    /// Wait before a lost segment is sent again (default 7.5 ms, one
    /// connection interval).
    pub retransmit_delay: Duration,
    /// Time a dial takes before the channel is open (default 90 ms: connect
    /// request plus L2CAP CoC request/response).
    pub connection_setup: Duration,
    /// Segments in flight per direction (default 256).
    pub window: usize,
    /// Inbound channels a listener may hold before accepting (default 16).
    pub accept_backlog: usize,
    /// Sightings a scanner may hold before reading (default 32).
    pub discovery_queue: usize,
    /// How often a scanner sees each advertiser in range again (default
    /// 500 ms; real advertising intervals are 20 ms to 10 s). A scan also
    /// sees a change (new advertisement, a node moving into range) at once.
    pub advertising_interval: Duration,
    /// Seed of the drop generator, for reproducible runs (default 1).
    pub seed: u64,
}

impl Default for SimConfig {
    fn default() -> Self {
        Self {
            mtu: 247,
            segment_overhead: 4,
            bandwidth_bps: 1_000_000,
            latency: Duration::from_millis(30),
            drop_rate: 0.0,
            max_retransmissions: 8,
            retransmit_delay: Duration::from_micros(7_500),
            connection_setup: Duration::from_millis(90),
            window: 256,
            accept_backlog: 16,
            discovery_queue: 32,
            advertising_interval: Duration::from_millis(500),
            seed: 1,
        }
    }
}

/// An invalid [`SimConfig`].
#[derive(Debug, thiserror::Error)]
pub enum SimConfigError {
    /// MTU below [`MIN_MTU`].
    #[error("MTU {0} is below the minimum of {MIN_MTU}")]
    MtuTooSmall(usize),
    /// Bandwidth of zero.
    #[error("bandwidth must be positive")]
    ZeroBandwidth,
    /// Drop rate outside `[0, 1)`.
    #[error("drop rate {0} is outside [0, 1)")]
    DropRate(f64),
    /// A queue bound of zero.
    #[error("{0} must be at least 1")]
    ZeroBound(&'static str),
}

impl SimConfig {
    fn validate(&self) -> Result<(), SimConfigError> {
        if self.mtu < MIN_MTU {
            return Err(SimConfigError::MtuTooSmall(self.mtu));
        }
        if self.bandwidth_bps == 0 {
            return Err(SimConfigError::ZeroBandwidth);
        }
        if !(0.0..1.0).contains(&self.drop_rate) {
            return Err(SimConfigError::DropRate(self.drop_rate));
        }
        if self.advertising_interval.is_zero() {
            return Err(SimConfigError::ZeroBound("advertising_interval"));
        }
        for (name, v) in [
            ("window", self.window),
            ("accept_backlog", self.accept_backlog),
            ("discovery_queue", self.discovery_queue),
        ] {
            if v == 0 {
                return Err(SimConfigError::ZeroBound(name));
            }
        }
        Ok(())
    }

    /// Airtime of one transmission of `payload` bytes.
    fn airtime(&self, payload: usize) -> Duration {
        let bits = ((payload + self.segment_overhead) as u128) * 8;
        let nanos = bits * 1_000_000_000 / u128::from(self.bandwidth_bps);
        Duration::from_nanos(u64::try_from(nanos).unwrap_or(u64::MAX))
    }
}

/// Why a simulated link broke.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BreakReason {
    /// The nodes moved out of each other's range.
    OutOfRange,
    /// A segment was lost more often than retransmissions allow.
    RetransmissionsExhausted,
    /// A node was removed from the radio.
    NodeRemoved,
}

impl BreakReason {
    fn to_io_error(self) -> io::Error {
        match self {
            BreakReason::OutOfRange => io::Error::new(
                io::ErrorKind::ConnectionReset,
                "BLE link lost: out of range",
            ),
            BreakReason::RetransmissionsExhausted => io::Error::new(
                io::ErrorKind::TimedOut,
                "BLE link lost: retransmissions exhausted",
            ),
            BreakReason::NodeRemoved => io::Error::new(
                io::ErrorKind::ConnectionReset,
                "BLE link lost: node removed",
            ),
        }
    }
}

/// A 2-D position.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Position {
    /// x coordinate.
    pub x: f64,
    /// y coordinate.
    pub y: f64,
}

impl Position {
    /// A position at `(x, y)`.
    pub fn new(x: f64, y: f64) -> Self {
        Self { x, y }
    }

    fn distance(self, other: Position) -> f64 {
        ((self.x - other.x).powi(2) + (self.y - other.y).powi(2)).sqrt()
    }
}

struct NodeState {
    position: Position,
    range: f64,
    advert: Option<Vec<u8>>,
}

struct LinkEntry {
    a: DeviceAddress,
    b: DeviceAddress,
    shared: Weak<LinkShared>,
}

type Inbound = (SimStream, DeviceAddress);

struct State {
    config: SimConfig,
    next_address: u64,
    nodes: HashMap<DeviceAddress, NodeState>,
    listeners: HashMap<BleAddr, mpsc::Sender<Inbound>>,
    links: Vec<LinkEntry>,
    scanners: Vec<(DeviceAddress, mpsc::Sender<Sighting>)>,
}

impl State {
    fn in_range(&self, a: DeviceAddress, b: DeviceAddress) -> bool {
        match (self.nodes.get(&a), self.nodes.get(&b)) {
            (Some(na), Some(nb)) => na.position.distance(nb.position) <= na.range.min(nb.range),
            _ => false,
        }
    }

    fn rssi(&self, a: DeviceAddress, b: DeviceAddress) -> i16 {
        match (self.nodes.get(&a), self.nodes.get(&b)) {
            (Some(na), Some(nb)) => {
                let d = na.position.distance(nb.position).max(1.0);
                // Free-space-like: -40 dBm at 1 m, -20 dB per decade.
                (-40.0 - 20.0 * d.log10()).clamp(-127.0, 20.0) as i16
            }
            _ => -127,
        }
    }

    /// Breaks every link touching `node` that must break; prunes dead links.
    fn break_links(&mut self, node: DeviceAddress, removed: bool) {
        let mut breaks = Vec::new();
        self.links.retain(|l| {
            let Some(shared) = l.shared.upgrade() else {
                return false;
            };
            if shared.reason.get().is_some() {
                return false;
            }
            if l.a == node || l.b == node {
                breaks.push((shared, l.a, l.b));
            }
            true
        });
        for (shared, a, b) in breaks {
            if removed {
                shared.break_link(BreakReason::NodeRemoved);
            } else if !self.in_range(a, b) {
                tracing::debug!(%a, %b, "sim BLE link out of range");
                shared.break_link(BreakReason::OutOfRange);
            }
        }
    }

    /// What `scanner` sees now: every advertiser in range.
    fn sightings_for(&self, scanner: DeviceAddress) -> Vec<Sighting> {
        self.nodes
            .iter()
            .filter(|(addr, _)| **addr != scanner && self.in_range(scanner, **addr))
            .filter_map(|(addr, n)| {
                Some(Sighting {
                    address: *addr,
                    rssi_dbm: self.rssi(scanner, *addr),
                    data: n.advert.clone()?,
                })
            })
            .collect()
    }

    /// Sends sightings to scanners for every in-range (scanner, advertiser)
    /// pair that involves `node`.
    fn announce(&mut self, node: DeviceAddress) {
        self.scanners.retain(|(_, tx)| !tx.is_closed());
        let mut out = Vec::new();
        for (i, (scanner, _)) in self.scanners.iter().enumerate() {
            for (addr, n) in &self.nodes {
                let Some(data) = &n.advert else { continue };
                if *addr == *scanner || (*scanner != node && *addr != node) {
                    continue;
                }
                if self.in_range(*scanner, *addr) {
                    out.push((
                        i,
                        Sighting {
                            address: *addr,
                            rssi_dbm: self.rssi(*scanner, *addr),
                            data: data.clone(),
                        },
                    ));
                }
            }
        }
        for (i, sighting) in out {
            if let Some((_, tx)) = self.scanners.get_mut(i) {
                // Full queue: the sighting is dropped, as a real scan may miss one.
                let _ = tx.try_send(sighting);
            }
        }
    }
}

/// Shared handle on a simulated radio world. Cheap to clone.
#[derive(Clone)]
pub struct SimRadio {
    state: Arc<Mutex<State>>,
}

impl Default for SimRadio {
    fn default() -> Self {
        Self::from_valid(SimConfig::default())
    }
}

impl SimRadio {
    /// A radio with `config`.
    pub fn new(config: SimConfig) -> Result<Self, SimConfigError> {
        config.validate()?;
        Ok(Self::from_valid(config))
    }

    fn from_valid(config: SimConfig) -> Self {
        Self {
            state: Arc::new(Mutex::new(State {
                config,
                // Random static addresses have the two top bits set.
                next_address: 0xC000_0000_0001,
                nodes: HashMap::new(),
                listeners: HashMap::new(),
                links: Vec::new(),
                scanners: Vec::new(),
            })),
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        lock(&self.state)
    }

    /// The radio's configuration.
    pub fn config(&self) -> SimConfig {
        self.lock().config.clone()
    }

    /// Adds a node at `position` with radio `range`; returns its handle.
    pub fn add_node(&self, position: Position, range: f64) -> SimNode {
        let mut st = self.lock();
        let address = DeviceAddress::new(st.next_address & DeviceAddress::MAX)
            .unwrap_or_else(|| DeviceAddress::from_bytes([0xC0, 0, 0, 0, 0, 1]));
        st.next_address += 1;
        st.nodes.insert(
            address,
            NodeState {
                position,
                range,
                advert: None,
            },
        );
        SimNode {
            radio: self.clone(),
            address,
        }
    }

    /// Moves a node; links now out of range break at once.
    pub fn move_node(&self, address: DeviceAddress, position: Position) -> Result<(), BleError> {
        let mut st = self.lock();
        let node = st
            .nodes
            .get_mut(&address)
            .ok_or(BleError::UnknownDevice(address))?;
        node.position = position;
        st.break_links(address, false);
        st.announce(address);
        Ok(())
    }

    /// Removes a node: its links break, its listeners stop.
    pub fn remove_node(&self, address: DeviceAddress) -> Result<(), BleError> {
        let mut st = self.lock();
        st.nodes
            .remove(&address)
            .ok_or(BleError::UnknownDevice(address))?;
        st.break_links(address, true);
        st.listeners.retain(|a, _| a.device != address);
        st.scanners.retain(|(s, _)| *s != address);
        Ok(())
    }

    /// Whether two nodes are currently in range of each other.
    pub fn in_range(&self, a: DeviceAddress, b: DeviceAddress) -> bool {
        self.lock().in_range(a, b)
    }

    /// Number of links that are open (not broken, some end still alive).
    pub fn open_links(&self) -> usize {
        self.lock()
            .links
            .iter()
            .filter(|l| l.shared.upgrade().is_some_and(|s| s.reason.get().is_none()))
            .count()
    }

    fn connect(&self, from: DeviceAddress, to: BleAddr) -> Result<SimStream, BleError> {
        let mut st = self.lock();
        if !st.nodes.contains_key(&from) {
            return Err(BleError::UnknownDevice(from));
        }
        if !st.nodes.contains_key(&to.device) {
            return Err(BleError::UnknownDevice(to.device));
        }
        if !st.in_range(from, to.device) {
            return Err(BleError::OutOfRange(to.device));
        }
        let (local, remote) = stream_pair(&st.config, st.config.seed, from, to.device);
        let Some(listener) = st.listeners.get_mut(&to) else {
            return Err(BleError::NoListener(to));
        };
        let shared = Arc::downgrade(&local.shared);
        match listener.try_send((remote, from)) {
            Ok(()) => {}
            Err(e) if e.is_full() => return Err(BleError::BacklogFull(to)),
            Err(_) => {
                st.listeners.remove(&to);
                return Err(BleError::NoListener(to));
            }
        }
        st.links.push(LinkEntry {
            a: from,
            b: to.device,
            shared,
        });
        tracing::debug!(%from, %to, "sim BLE channel open");
        Ok(local)
    }
}

fn lock(state: &Mutex<State>) -> MutexGuard<'_, State> {
    // A panic while holding the lock leaves no half-done invariant worth
    // refusing over: keep going with the data.
    state.lock().unwrap_or_else(|e| e.into_inner())
}

/// One node of a [`SimRadio`]; implements [`BleLink`]. Cheap to clone.
#[derive(Clone)]
pub struct SimNode {
    radio: SimRadio,
    address: DeviceAddress,
}

impl SimNode {
    /// This node's device address.
    pub fn address(&self) -> DeviceAddress {
        self.address
    }

    /// The radio this node lives in.
    pub fn radio(&self) -> &SimRadio {
        &self.radio
    }

    /// Moves this node (see [`SimRadio::move_node`]).
    pub fn move_to(&self, position: Position) -> Result<(), BleError> {
        self.radio.move_node(self.address, position)
    }

    /// Starts advertising `data` (service data), or stops with `None`.
    /// Synchronous form of [`BleLink::advertise`].
    pub fn set_advertisement(&self, data: Option<Vec<u8>>) -> Result<(), BleError> {
        let mut st = self.radio.lock();
        let node = st
            .nodes
            .get_mut(&self.address)
            .ok_or(BleError::UnknownDevice(self.address))?;
        node.advert = data;
        st.announce(self.address);
        Ok(())
    }
}

impl BleLink for SimNode {
    type Stream = SimStream;
    type Listener = SimListener;
    type Discovery = SimDiscovery;

    fn local_address(&self) -> DeviceAddress {
        self.address
    }

    fn listen(&self, psm: Option<u16>) -> Result<(u16, SimListener), BleError> {
        let mut st = self.radio.lock();
        if !st.nodes.contains_key(&self.address) {
            return Err(BleError::UnknownDevice(self.address));
        }
        let device = self.address;
        let psm = match psm {
            Some(p) => {
                if st.listeners.contains_key(&BleAddr { device, psm: p }) {
                    return Err(BleError::PsmInUse(p));
                }
                p
            }
            None => (DYNAMIC_PSM_MIN..=DYNAMIC_PSM_MAX)
                .find(|p| !st.listeners.contains_key(&BleAddr { device, psm: *p }))
                .ok_or(BleError::NoFreePsm)?,
        };
        let addr = BleAddr { device, psm };
        let (tx, rx) = mpsc::channel(st.config.accept_backlog);
        st.listeners.insert(addr, tx);
        Ok((
            psm,
            SimListener {
                rx,
                addr,
                state: Arc::downgrade(&self.radio.state),
            },
        ))
    }

    fn dial(
        &self,
        address: DeviceAddress,
        psm: u16,
    ) -> BoxFuture<'static, Result<SimStream, BleError>> {
        let radio = self.radio.clone();
        let from = self.address;
        let setup = radio.lock().config.connection_setup;
        async move {
            Delay::new(setup).await;
            radio.connect(
                from,
                BleAddr {
                    device: address,
                    psm,
                },
            )
        }
        .boxed()
    }

    fn discover(&self) -> Result<SimDiscovery, BleError> {
        let mut st = self.radio.lock();
        if !st.nodes.contains_key(&self.address) {
            return Err(BleError::UnknownDevice(self.address));
        }
        let (tx, rx) = mpsc::channel(st.config.discovery_queue);
        st.scanners.push((self.address, tx));
        st.announce(self.address);
        let interval = st.config.advertising_interval;
        Ok(SimDiscovery {
            rx,
            state: Arc::downgrade(&self.radio.state),
            scanner: self.address,
            interval,
            next_scan: Delay::new(interval),
            repeated: std::collections::VecDeque::new(),
        })
    }

    fn advertise(&self, data: Option<Vec<u8>>) -> BoxFuture<'static, Result<(), BleError>> {
        futures::future::ready(self.set_advertisement(data)).boxed()
    }
}

/// Inbound channels on one PSM of a [`SimNode`]. Dropping it stops listening.
pub struct SimListener {
    rx: mpsc::Receiver<Inbound>,
    addr: BleAddr,
    state: Weak<Mutex<State>>,
}

impl SimListener {
    /// The address listened on.
    pub fn addr(&self) -> BleAddr {
        self.addr
    }
}

impl Stream for SimListener {
    type Item = Inbound;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Inbound>> {
        Pin::new(&mut self.rx).poll_next(cx)
    }
}

impl Drop for SimListener {
    fn drop(&mut self) {
        if let Some(state) = self.state.upgrade() {
            lock(&state).listeners.remove(&self.addr);
        }
    }
}

/// Sightings seen by a [`SimNode`]'s scan: changes at once, and every
/// advertiser in range again each [`SimConfig::advertising_interval`].
/// Dropping it stops scanning.
pub struct SimDiscovery {
    rx: mpsc::Receiver<Sighting>,
    state: Weak<Mutex<State>>,
    scanner: DeviceAddress,
    interval: Duration,
    next_scan: Delay,
    /// This interval's sightings not yet read (at most one per node).
    repeated: std::collections::VecDeque<Sighting>,
}

impl Stream for SimDiscovery {
    type Item = Sighting;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Sighting>> {
        let this = &mut *self;
        if let Poll::Ready(item) = Pin::new(&mut this.rx).poll_next(cx) {
            return Poll::Ready(item);
        }
        loop {
            if let Some(sighting) = this.repeated.pop_front() {
                return Poll::Ready(Some(sighting));
            }
            match this.next_scan.poll_unpin(cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(()) => {
                    this.next_scan.reset(this.interval);
                    let Some(state) = this.state.upgrade() else {
                        return Poll::Ready(None);
                    };
                    let st = lock(&state);
                    if !st.nodes.contains_key(&this.scanner) {
                        return Poll::Ready(None);
                    }
                    this.repeated = st.sightings_for(this.scanner).into();
                }
            }
        }
    }
}

/// State shared by both ends of a link.
struct LinkShared {
    reason: OnceLock<BreakReason>,
    /// `[end 0 read, end 0 write, end 1 read, end 1 write]`.
    wakers: [AtomicWaker; 4],
}

impl LinkShared {
    fn break_link(&self, reason: BreakReason) {
        if self.reason.set(reason).is_ok() {
            for w in &self.wakers {
                w.wake();
            }
        }
    }

    fn error(&self) -> Option<io::Error> {
        self.reason.get().map(|r| r.to_io_error())
    }
}

struct Segment {
    deliver_at: Instant,
    data: Vec<u8>,
}

static LINK_COUNTER: AtomicU64 = AtomicU64::new(0);

fn stream_pair(
    config: &SimConfig,
    seed: u64,
    a: DeviceAddress,
    b: DeviceAddress,
) -> (SimStream, SimStream) {
    let shared = Arc::new(LinkShared {
        reason: OnceLock::new(),
        wakers: Default::default(),
    });
    let n = LINK_COUNTER.fetch_add(1, Ordering::Relaxed);
    let (tx_ab, rx_ab) = mpsc::channel(config.window);
    let (tx_ba, rx_ba) = mpsc::channel(config.window);
    let mk = |side: usize, tx, rx, remote, rng_seed: u64| SimStream {
        side,
        shared: shared.clone(),
        config: config.clone(),
        remote,
        tx,
        rx,
        reading: None,
        head: None,
        read_delay: None,
        write_delay: None,
        next_tx_free: Instant::now(),
        rng: SplitMix64(rng_seed),
    };
    let base = seed ^ n.wrapping_mul(0x9E37_79B9_7F4A_7C15);
    (
        mk(0, tx_ab, rx_ba, b, base),
        mk(1, tx_ba, rx_ab, a, base ^ 0xD1B5_4A32_D192_ED03),
    )
}

/// One end of a simulated L2CAP channel: a reliable, ordered byte stream
/// with the timing of the link model (see the [module docs](self)).
pub struct SimStream {
    side: usize,
    shared: Arc<LinkShared>,
    config: SimConfig,
    remote: DeviceAddress,
    tx: mpsc::Sender<Segment>,
    rx: mpsc::Receiver<Segment>,
    /// Segment being read, and how much of it was read.
    reading: Option<(Vec<u8>, usize)>,
    /// Next segment, received but maybe not due yet.
    head: Option<Segment>,
    read_delay: Option<Delay>,
    write_delay: Option<Delay>,
    /// When the transmitter is free again.
    next_tx_free: Instant,
    rng: SplitMix64,
}

impl SimStream {
    /// The remote device's address.
    pub fn remote(&self) -> DeviceAddress {
        self.remote
    }

    /// Why the link broke, if it did.
    pub fn break_reason(&self) -> Option<BreakReason> {
        self.shared.reason.get().copied()
    }
}

impl AsyncRead for SimStream {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut [u8],
    ) -> Poll<io::Result<usize>> {
        let this = &mut *self;
        this.shared.wakers[this.side * 2].register(cx.waker());
        let mut filled = 0;
        loop {
            if let Some(e) = this.shared.error() {
                return if filled > 0 {
                    Poll::Ready(Ok(filled))
                } else {
                    Poll::Ready(Err(e))
                };
            }
            if filled == buf.len() {
                return Poll::Ready(Ok(filled));
            }
            if let Some((data, off)) = &mut this.reading {
                let n = (data.len() - *off).min(buf.len() - filled);
                buf[filled..filled + n].copy_from_slice(&data[*off..*off + n]);
                *off += n;
                filled += n;
                if *off == data.len() {
                    this.reading = None;
                }
                continue;
            }
            let head = match this.head.take() {
                Some(h) => h,
                None => match Pin::new(&mut this.rx).poll_next(cx) {
                    Poll::Ready(Some(seg)) => seg,
                    // The writer closed or was dropped: end of stream.
                    Poll::Ready(None) => return Poll::Ready(Ok(filled)),
                    Poll::Pending => {
                        return if filled > 0 {
                            Poll::Ready(Ok(filled))
                        } else {
                            Poll::Pending
                        };
                    }
                },
            };
            let now = Instant::now();
            if head.deliver_at > now {
                let delay = this
                    .read_delay
                    .get_or_insert_with(|| Delay::new(head.deliver_at - now));
                if delay.poll_unpin(cx).is_pending() {
                    this.head = Some(head);
                    return if filled > 0 {
                        Poll::Ready(Ok(filled))
                    } else {
                        Poll::Pending
                    };
                }
            }
            this.read_delay = None;
            this.reading = Some((head.data, 0));
        }
    }
}

impl AsyncWrite for SimStream {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = &mut *self;
        this.shared.wakers[this.side * 2 + 1].register(cx.waker());
        let mut written = 0;
        while written < buf.len() {
            if let Some(e) = this.shared.error() {
                return if written > 0 {
                    Poll::Ready(Ok(written))
                } else {
                    Poll::Ready(Err(e))
                };
            }
            // Pacing: wait while the transmitter is busy beyond the slack.
            let now = Instant::now();
            if this.next_tx_free > now + PACING_SLACK {
                let wait = this.next_tx_free - now;
                let delay = this.write_delay.get_or_insert_with(|| Delay::new(wait));
                if delay.poll_unpin(cx).is_pending() {
                    break;
                }
            }
            this.write_delay = None;
            // Flow control: room in the window.
            match this.tx.poll_ready(cx) {
                Poll::Ready(Ok(())) => {}
                Poll::Ready(Err(_)) => {
                    return if written > 0 {
                        Poll::Ready(Ok(written))
                    } else {
                        Poll::Ready(Err(io::Error::new(
                            io::ErrorKind::BrokenPipe,
                            "BLE channel closed by the remote end",
                        )))
                    };
                }
                Poll::Pending => break,
            }
            let n = (buf.len() - written).min(this.config.mtu);
            let mut attempts: u32 = 1;
            while this.config.drop_rate > 0.0 && this.rng.next_f64() < this.config.drop_rate {
                if attempts > this.config.max_retransmissions {
                    tracing::debug!(remote = %this.remote, "sim BLE link failed: retransmissions exhausted");
                    this.shared
                        .break_link(BreakReason::RetransmissionsExhausted);
                    return Poll::Ready(Err(BreakReason::RetransmissionsExhausted.to_io_error()));
                }
                attempts += 1;
            }
            let airtime =
                this.config.airtime(n) * attempts + this.config.retransmit_delay * (attempts - 1);
            let start = this.next_tx_free.max(now);
            this.next_tx_free = start + airtime;
            let segment = Segment {
                deliver_at: this.next_tx_free + this.config.latency,
                data: buf[written..written + n].to_vec(),
            };
            if this.tx.start_send(segment).is_err() {
                return Poll::Ready(Err(io::Error::new(
                    io::ErrorKind::BrokenPipe,
                    "BLE channel closed",
                )));
            }
            written += n;
        }
        if written > 0 {
            Poll::Ready(Ok(written))
        } else {
            Poll::Pending
        }
    }

    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        // Written segments are already on the air; nothing is buffered here.
        match self.shared.error() {
            Some(e) => Poll::Ready(Err(e)),
            None => Poll::Ready(Ok(())),
        }
    }

    fn poll_close(mut self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.tx.close_channel();
        Poll::Ready(Ok(()))
    }
}

/// Small deterministic generator for drops (SplitMix64).
struct SplitMix64(u64);

impl SplitMix64 {
    fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    fn next_f64(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures::{AsyncReadExt, AsyncWriteExt, StreamExt};

    fn pattern(len: usize) -> Vec<u8> {
        (0..len).map(|i| (i * 31 % 251) as u8).collect()
    }

    /// Two nodes 1 apart, range 10; `b` listens; returns (a's end, b's end).
    async fn pair(radio: &SimRadio) -> (SimNode, SimNode, SimStream, SimStream) {
        let a = radio.add_node(Position::new(0.0, 0.0), 10.0);
        let b = radio.add_node(Position::new(1.0, 0.0), 10.0);
        let (psm, mut listener) = b.listen(None).expect("listen");
        let dialed = a.dial(b.address(), psm).await.expect("dial");
        let (accepted, remote) = listener.next().await.expect("inbound");
        assert_eq!(remote, a.address());
        assert_eq!(dialed.remote(), b.address());
        (a, b, dialed, accepted)
    }

    async fn transfer(radio: SimRadio, len: usize) -> (Vec<u8>, Duration) {
        let (_a, _b, mut tx, mut rx) = pair(&radio).await;
        let data = pattern(len);
        let sent = data.clone();
        let start = Instant::now();
        let writer = async move {
            tx.write_all(&sent).await.expect("write");
            tx.close().await.expect("close");
            tx
        };
        let reader = async move {
            let mut got = Vec::new();
            rx.read_to_end(&mut got).await.expect("read");
            got
        };
        let (_tx, got) = futures::join!(writer, reader);
        (got, start.elapsed())
    }

    #[tokio::test]
    async fn tiny_mtu_with_drops_keeps_stream_intact() {
        let radio = SimRadio::new(SimConfig {
            mtu: 23,
            drop_rate: 0.2,
            max_retransmissions: 40,
            bandwidth_bps: 20_000_000,
            latency: Duration::from_millis(2),
            retransmit_delay: Duration::from_micros(100),
            ..SimConfig::default()
        })
        .expect("config");
        let (got, _) = transfer(radio, 64 * 1024).await;
        assert_eq!(got, pattern(64 * 1024));
    }

    #[tokio::test]
    async fn writes_are_paced_to_the_bandwidth() {
        let radio = SimRadio::default();
        let len = 50_000;
        let (got, elapsed) = transfer(radio, len).await;
        assert_eq!(got.len(), len);
        // 203 segments of 247 (+4 header) bytes at 1 Mbit/s plus 30 ms latency.
        let segments = len.div_ceil(247) as f64;
        let expected = segments * 251.0 * 8.0 / 1e6 + 0.030;
        let secs = elapsed.as_secs_f64();
        assert!(secs >= expected * 0.95, "{secs} s < {expected} s");
        // Generous upper bound: CI machines are busy.
        assert!(secs <= expected * 2.5, "{secs} s >> {expected} s");
    }

    #[tokio::test]
    async fn one_byte_takes_the_latency() {
        let radio = SimRadio::default();
        let (_a, _b, mut tx, mut rx) = pair(&radio).await;
        let start = Instant::now();
        tx.write_all(b"x").await.expect("write");
        let mut buf = [0u8; 1];
        rx.read_exact(&mut buf).await.expect("read");
        let t = start.elapsed();
        assert!(t >= Duration::from_millis(30), "{t:?}");
        assert!(t < Duration::from_millis(250), "{t:?}");
    }

    #[tokio::test]
    async fn moving_out_of_range_breaks_both_ends() {
        let radio = SimRadio::default();
        let (a, _b, mut tx, mut rx) = pair(&radio).await;
        assert_eq!(radio.open_links(), 1);
        let reader = tokio::spawn(async move {
            let mut buf = [0u8; 16];
            rx.read(&mut buf).await
        });
        tokio::time::sleep(Duration::from_millis(20)).await;
        a.move_to(Position::new(100.0, 0.0)).expect("move");
        let err = reader.await.expect("join").expect_err("read must fail");
        assert_eq!(err.kind(), io::ErrorKind::ConnectionReset);
        let err = tx.write_all(b"hello").await.expect_err("write must fail");
        assert_eq!(err.kind(), io::ErrorKind::ConnectionReset);
        assert_eq!(tx.break_reason(), Some(BreakReason::OutOfRange));
        assert_eq!(radio.open_links(), 0);
    }

    #[tokio::test]
    async fn exhausted_retransmissions_fail_cleanly() {
        let radio = SimRadio::new(SimConfig {
            drop_rate: 0.9,
            max_retransmissions: 1,
            latency: Duration::from_millis(1),
            ..SimConfig::default()
        })
        .expect("config");
        let (_a, _b, mut tx, mut rx) = pair(&radio).await;
        let err = tx
            .write_all(&pattern(100_000))
            .await
            .expect_err("write must fail");
        assert_eq!(err.kind(), io::ErrorKind::TimedOut);
        let mut got = Vec::new();
        let err = rx.read_to_end(&mut got).await.expect_err("read must fail");
        assert_eq!(err.kind(), io::ErrorKind::TimedOut);
    }

    #[tokio::test]
    async fn dial_errors_and_psm_allocation() {
        let radio = SimRadio::default();
        let a = radio.add_node(Position::new(0.0, 0.0), 10.0);
        let b = radio.add_node(Position::new(5.0, 0.0), 10.0);
        let far = radio.add_node(Position::new(50.0, 0.0), 100.0);
        let (p1, l1) = b.listen(None).expect("listen");
        let (p2, _l2) = b.listen(None).expect("listen");
        assert_eq!((p1, p2), (DYNAMIC_PSM_MIN, DYNAMIC_PSM_MIN + 1));
        assert!(matches!(b.listen(Some(p1)), Err(BleError::PsmInUse(p)) if p == p1));
        drop(l1);
        assert!(matches!(
            a.dial(b.address(), p1).await,
            Err(BleError::NoListener(_))
        ));
        let (_pf, _lf) = far.listen(None).expect("listen");
        // In `far`'s range but `a`'s range is smaller: out of range.
        assert!(matches!(
            a.dial(far.address(), DYNAMIC_PSM_MIN).await,
            Err(BleError::OutOfRange(_))
        ));
        let ghost = DeviceAddress::from_bytes([1, 2, 3, 4, 5, 6]);
        assert!(matches!(
            a.dial(ghost, 0x80).await,
            Err(BleError::UnknownDevice(_))
        ));
        assert!(a.dial(b.address(), p2).await.is_ok());
    }

    #[tokio::test]
    async fn discovery_sees_advertisers_in_range() {
        let radio = SimRadio::default();
        let a = radio.add_node(Position::new(0.0, 0.0), 10.0);
        let b = radio.add_node(Position::new(3.0, 0.0), 10.0);
        let c = radio.add_node(Position::new(30.0, 0.0), 10.0);
        b.set_advertisement(Some(b"hint-b".to_vec()))
            .expect("advertise");
        c.set_advertisement(Some(b"hint-c".to_vec()))
            .expect("advertise");
        let mut scan = a.discover().expect("discover");
        let s = scan.next().await.expect("sighting");
        assert_eq!(s.address, b.address());
        assert_eq!(s.data, b"hint-b");
        assert!(s.rssi_dbm < -40 && s.rssi_dbm > -127);
        c.move_to(Position::new(5.0, 0.0)).expect("move");
        let s = scan.next().await.expect("sighting");
        assert_eq!(s.address, c.address());
        assert_eq!(s.data, b"hint-c");
    }

    #[test]
    fn invalid_configs_rejected() {
        let bad = [
            SimConfig {
                mtu: 22,
                ..SimConfig::default()
            },
            SimConfig {
                bandwidth_bps: 0,
                ..SimConfig::default()
            },
            SimConfig {
                drop_rate: 1.0,
                ..SimConfig::default()
            },
            SimConfig {
                window: 0,
                ..SimConfig::default()
            },
        ];
        for c in bad {
            assert!(SimRadio::new(c).is_err());
        }
        assert!(SimRadio::new(SimConfig {
            mtu: 23,
            ..SimConfig::default()
        })
        .is_ok());
    }
}
