//! Links with latency, made by a userspace delay line on a TUN device in a
//! router namespace (the kernel here has no `tc netem`). The design is
//! documented on [`DelayedLink`].

use std::collections::VecDeque;
use std::io;
use std::net::Ipv4Addr;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::unix::AsyncFd;
use tokio::io::Interest;
use tokio::sync::{oneshot, Notify};
use tokio::time::Instant;

use crate::error::{LabError, Result};
use crate::host::Host;
use crate::link::{
    apply_loss, check_percent, clear_rate_on, configure_end, create_veth, lock,
    record_and_verify_loss, set_ends_state, set_rate_on, update_state, LinkState, LOSS_PROBES,
    UP_TIMEOUT,
};
use crate::measure::{udp_probe, udp_rtt_and_loss, wait_udp_reachable, Probe, ProbeConfig};

/// The most packets the delay line holds at once; more are dropped. At 50 ms
/// of delay this allows 200 000 packets/s per link, far above what a test
/// should push through a delay line.
pub const MAX_QUEUED_PACKETS: usize = 10_000;

/// Largest packet read from the TUN device (its MTU is 1500; GSO is off).
const MAX_PACKET: usize = 65_536;

/// Routing table in R that sends everything into the TUN device.
const DELAY_TABLE: &str = "100";

/// Name of the TUN device inside R.
const TUN_NAME: &str = "tun0";

/// A link with latency between two hosts, through a router namespace R
/// running a userspace delay line (the kernel here has no `tc netem`).
///
/// ```text
///   a ──veth── R ──veth── b
///              │
///             tun0  ⇄  delay line (task on R's runtime)
/// ```
///
/// The router namespace R forwards between the two veths, but policy routing
/// (`ip rule add iif <veth> lookup 100`, table 100: `default dev tun0`) sends
/// every packet arriving from either veth into a TUN device instead. The delay
/// line reads packets from the TUN, holds each for the configured delay and
/// writes it back; packets written back enter R with `iif tun0`, which no rule
/// matches, so the main table forwards them to their destination veth. Each
/// direction therefore sees the delay once, and a round trip twice.
///
/// The queue is FIFO and keyed by arrival time: a packet leaves at
/// `arrival + current delay`. Since arrivals are ordered, the head always has
/// the earliest deadline; changing the delay applies to packets already queued
/// too (lowering it releases them sooner) without reordering anything. At most
/// [`MAX_QUEUED_PACKETS`] packets are held; packets arriving at a full queue
/// are dropped and counted ([`DelayedLink::queue_drops`]). Timer resolution is
/// tokio's, about 1 ms; delays are never shorter than configured.
///
/// Addresses: a has `a_addr()` on one `/24` shared with the router, b has
/// `b_addr()` on another; each host gets a route to the other's subnet via
/// the router, so `a` reaches `b_addr()` and `b` reaches `a_addr()`.
///
/// `DelayedLink` is a handle; clones control the same link. The delay line
/// runs until the lab is dropped, whether or not handles remain.
#[derive(Clone)]
pub struct DelayedLink {
    inner: Arc<DelayedInner>,
}

struct DelayedInner {
    a: Host,
    b: Host,
    router: Host,
    /// Interface in a / R on the a side.
    a_if: String,
    ra_if: String,
    /// Interface in R / b on the b side.
    rb_if: String,
    b_if: String,
    a_addr: Ipv4Addr,
    b_addr: Ipv4Addr,
    router_a_addr: Ipv4Addr,
    router_b_addr: Ipv4Addr,
    /// `10.x.y.0/24` of the b side, routed from a via R.
    b_subnet: String,
    /// nftables table in R with the loss rule.
    table: String,
    control: Arc<DelayControl>,
    state: Mutex<LinkState>,
}

/// Shared between the handle and the delay-line task (also used by the
/// uplink delay lines of [`Internet`](crate::Internet)).
pub(crate) struct DelayControl {
    delay_nanos: AtomicU64,
    changed: Notify,
    queued_drops: AtomicU64,
    forwarded: AtomicU64,
}

impl DelayControl {
    /// Controls for a delay line holding packets `one_way`.
    pub(crate) fn new(one_way: Duration) -> Arc<DelayControl> {
        Arc::new(DelayControl {
            delay_nanos: AtomicU64::new(duration_nanos(one_way)),
            changed: Notify::new(),
            queued_drops: AtomicU64::new(0),
            forwarded: AtomicU64::new(0),
        })
    }

    pub(crate) fn delay(&self) -> Duration {
        Duration::from_nanos(self.delay_nanos.load(Ordering::Relaxed))
    }

    /// Changes the delay; the running line applies it at once.
    pub(crate) fn set_delay(&self, one_way: Duration) {
        self.delay_nanos
            .store(duration_nanos(one_way), Ordering::Relaxed);
        self.changed.notify_one();
    }

    /// Packets dropped because the queue was full.
    pub(crate) fn queue_drops(&self) -> u64 {
        self.queued_drops.load(Ordering::Relaxed)
    }
}

impl std::fmt::Debug for DelayedLink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DelayedLink")
            .field("a", &self.inner.a.name())
            .field("a_addr", &self.inner.a_addr)
            .field("router", &self.inner.router.netns())
            .field("b", &self.inner.b.name())
            .field("b_addr", &self.inner.b_addr)
            .field("delay", &self.inner.control.delay())
            .field("state", &*lock(&self.inner.state))
            .finish()
    }
}

impl DelayedLink {
    /// Builds the router, veths, routes, TUN device and delay line, then
    /// verifies the delay (called by [`Lab::delayed_link`](crate::Lab::delayed_link)).
    pub(crate) async fn create(
        a: &Host,
        b: &Host,
        router: Host,
        id: u32,
        subnets: ([u8; 3], [u8; 3]),
        one_way: Duration,
    ) -> Result<DelayedLink> {
        let ([ax, ay, az], [bx, by, bz]) = subnets;
        let a_addr = Ipv4Addr::new(ax, ay, az, 1);
        let router_a_addr = Ipv4Addr::new(ax, ay, az, 2);
        let router_b_addr = Ipv4Addr::new(bx, by, bz, 1);
        let b_addr = Ipv4Addr::new(bx, by, bz, 2);
        let a_subnet = format!("{ax}.{ay}.{az}.0/24");
        let b_subnet = format!("{bx}.{by}.{bz}.0/24");
        let a_if = format!("d{id}a");
        let ra_if = format!("d{id}ra");
        let rb_if = format!("d{id}rb");
        let b_if = format!("d{id}b");

        // R forwards, without reverse-path filtering: packets re-enter from
        // tun0 with sources that are routed via the veths.
        router.sysctls(&[
            ("net/ipv4/conf/all/rp_filter".into(), "0"),
            ("net/ipv4/conf/default/rp_filter".into(), "0"),
        ])?;

        create_veth(a, &a_if, &router, &ra_if)?;
        create_veth(&router, &rb_if, b, &b_if)?;
        configure_end(a, &a_if, a_addr)?;
        configure_end(&router, &ra_if, router_a_addr)?;
        configure_end(&router, &rb_if, router_b_addr)?;
        configure_end(b, &b_if, b_addr)?;
        a.ip(&[
            "route",
            "replace",
            &b_subnet,
            "via",
            &router_a_addr.to_string(),
            "dev",
            &a_if,
        ])?;
        b.ip(&[
            "route",
            "replace",
            &a_subnet,
            "via",
            &router_b_addr.to_string(),
            "dev",
            &b_if,
        ])?;

        let control = DelayControl::new(one_way);
        start_delay_line(&router, TUN_NAME, Arc::clone(&control)).await?;

        router.sysctls(&[
            (format!("net/ipv4/conf/{TUN_NAME}/rp_filter"), "0"),
            (format!("net/ipv6/conf/{TUN_NAME}/disable_ipv6"), "1"),
            ("net/ipv4/ip_forward".into(), "1"),
        ])?;
        router.ip(&["link", "set", "dev", TUN_NAME, "up"])?;
        for ifname in [&ra_if, &rb_if] {
            router.ip(&[
                "rule",
                "add",
                "iif",
                ifname,
                "lookup",
                DELAY_TABLE,
                "priority",
                "1000",
            ])?;
        }
        router.ip(&[
            "route",
            "replace",
            "default",
            "dev",
            TUN_NAME,
            "table",
            DELAY_TABLE,
        ])?;

        let link = DelayedLink {
            inner: Arc::new(DelayedInner {
                a: a.clone(),
                b: b.clone(),
                router,
                a_if,
                ra_if,
                rb_if,
                b_if,
                a_addr,
                b_addr,
                router_a_addr,
                router_b_addr,
                b_subnet,
                table: format!("lab_d{id}"),
                control,
                state: Mutex::new(LinkState::default()),
            }),
        };
        link.wait_reachable().await?;
        link.verify_delay().await?;
        Ok(link)
    }

    /// The host on the a side.
    pub fn a(&self) -> &Host {
        &self.inner.a
    }

    /// The host on the b side.
    pub fn b(&self) -> &Host {
        &self.inner.b
    }

    /// The router namespace running the delay line (for inspection, e.g.
    /// `link.router().exec(&["ip", "rule"])`).
    pub fn router(&self) -> &Host {
        &self.inner.router
    }

    /// a's address, reachable from b.
    pub fn a_addr(&self) -> Ipv4Addr {
        self.inner.a_addr
    }

    /// b's address, reachable from a.
    pub fn b_addr(&self) -> Ipv4Addr {
        self.inner.b_addr
    }

    /// The router's address on a's subnet (a's next hop towards b).
    pub fn router_a_addr(&self) -> Ipv4Addr {
        self.inner.router_a_addr
    }

    /// The router's address on b's subnet (b's next hop towards a).
    pub fn router_b_addr(&self) -> Ipv4Addr {
        self.inner.router_b_addr
    }

    /// The interface name in a's namespace (`d<n>a`).
    pub fn a_ifname(&self) -> &str {
        &self.inner.a_if
    }

    /// The interface name in b's namespace (`d<n>b`).
    pub fn b_ifname(&self) -> &str {
        &self.inner.b_if
    }

    /// The router's interfaces towards a and towards b (`d<n>ra`, `d<n>rb`).
    pub fn router_ifnames(&self) -> (&str, &str) {
        (&self.inner.ra_if, &self.inner.rb_if)
    }

    /// The one-way delay currently configured.
    pub fn delay(&self) -> Duration {
        self.inner.control.delay()
    }

    /// Packets dropped because the delay line already held
    /// [`MAX_QUEUED_PACKETS`].
    pub fn queue_drops(&self) -> u64 {
        self.inner.control.queued_drops.load(Ordering::Relaxed)
    }

    /// Packets that went through the delay line so far (both directions).
    pub fn forwarded_packets(&self) -> u64 {
        self.inner.control.forwarded.load(Ordering::Relaxed)
    }

    /// Whether the a side is up (as last set by [`DelayedLink::down`] /
    /// [`DelayedLink::up`]).
    pub fn is_up(&self) -> bool {
        lock(&self.inner.state).up
    }

    /// The loss currently configured, in percent per direction.
    pub fn loss_percent(&self) -> u8 {
        lock(&self.inner.state).loss
    }

    /// The rate limit currently configured, in kbit/s per direction.
    pub fn rate_kbit(&self) -> Option<u32> {
        lock(&self.inner.state).rate_kbit
    }

    /// Changes the one-way delay; applies at once, also to queued packets.
    ///
    /// Verified (when the link is up and not fully lossy) with 20 UDP probes
    /// a→b: the median round trip must be at least `2 × one_way − 2 ms` and at
    /// most `3 × one_way + 100 ms`. Returns the measurement.
    pub async fn set_delay(&self, one_way: Duration) -> Result<Option<Probe>> {
        self.inner.control.set_delay(one_way);
        self.verify_delay().await
    }

    /// Drops `percent` % of the packets R forwards from either side (an
    /// nftables rule in R's `forward` hook matching packets arriving on R's
    /// two veths; packets coming back out of the TUN are not matched, so each
    /// direction is dropped once). `0` removes the rule.
    ///
    /// Verified (when the link is up) like [`Link::set_loss`](crate::Link::set_loss):
    /// 400 UDP probes a→b, round-trip loss near `1 - (1 - p)²`.
    pub async fn set_loss(&self, percent: u8) -> Result<Option<Probe>> {
        check_percent(percent)?;
        let inner = &self.inner;
        apply_loss(
            &inner.router,
            &inner.table,
            "forward",
            &[&inner.ra_if, &inner.rb_if],
            percent,
        )?;
        let delay = inner.control.delay();
        let config = ProbeConfig {
            timeout: delay * 4 + Duration::from_secs(1),
            ..ProbeConfig::new(LOSS_PROBES)
        };
        let measure = udp_probe(&inner.a, &inner.b, inner.b_addr, &config);
        record_and_verify_loss(&inner.state, percent, "delayed link", measure).await
    }

    /// Limits each direction to `kbit` kbit/s with tbf on the router's two
    /// veths (shaping what R sends towards a and towards b).
    ///
    /// Verified like [`Link::set_rate`](crate::Link::set_rate): concurrent TCP
    /// transfers both ways must each stay below 1.5 × `kbit`.
    pub async fn set_rate(&self, kbit: u32) -> Result<Option<(f64, f64)>> {
        let inner = &self.inner;
        let measured = ((&inner.a, inner.a_addr), (&inner.b, inner.b_addr));
        set_rate_on(self.router_ends(), &inner.state, measured, kbit).await
    }

    /// Removes the rate limit; verified by reading the qdiscs back.
    pub async fn clear_rate(&self) -> Result<()> {
        clear_rate_on(self.router_ends(), &self.inner.state)
    }

    /// Cuts the a side: both ends of the a–R veth go down (a's route towards
    /// b goes with it). Verified by reading the interface flags back.
    pub async fn down(&self) -> Result<()> {
        set_ends_state(self.a_side(), false)?;
        update_state(&self.inner.state, |state| state.up = false);
        Ok(())
    }

    /// Brings the a side back, restores a's route towards b and waits (up to
    /// 5 s plus four times the delay) until a UDP probe a→b is answered (with
    /// 100 % loss configured only the interface flags are checked).
    pub async fn up(&self) -> Result<()> {
        let inner = &self.inner;
        let [a_end, router_end] = self.a_side();
        set_ends_state([router_end, a_end], true)?;
        // The kernel flushed the static route when the interface went down.
        inner.a.ip(&[
            "route",
            "replace",
            &inner.b_subnet,
            "via",
            &inner.router_a_addr.to_string(),
            "dev",
            &inner.a_if,
        ])?;
        if update_state(&inner.state, |state| state.up = true).carries_traffic() {
            self.wait_reachable().await?;
        }
        Ok(())
    }

    /// Both ends of the a–R veth, a's first: each host with its interface.
    fn a_side(&self) -> [(&Host, &str); 2] {
        let inner = &self.inner;
        [(&inner.a, &inner.a_if), (&inner.router, &inner.ra_if)]
    }

    /// The router's two veth ends, where rate limits are shaped.
    fn router_ends(&self) -> [(&Host, &str); 2] {
        let inner = &self.inner;
        [(&inner.router, &inner.ra_if), (&inner.router, &inner.rb_if)]
    }

    async fn wait_reachable(&self) -> Result<Duration> {
        let inner = &self.inner;
        let timeout = UP_TIMEOUT + inner.control.delay() * 4;
        wait_udp_reachable(&inner.a, &inner.b, inner.b_addr, timeout).await
    }

    async fn verify_delay(&self) -> Result<Option<Probe>> {
        let inner = &self.inner;
        if !lock(&inner.state).carries_traffic() {
            return Ok(None);
        }
        let one_way = inner.control.delay();
        let probe =
            verify_round_trip(&inner.a, &inner.b, inner.b_addr, one_way, "delayed link").await?;
        Ok(Some(probe))
    }

    /// Measures round trip and loss a→b with `probes` UDP probes (waits for
    /// late replies according to the current delay).
    pub async fn measure(&self, probes: usize) -> Result<Probe> {
        let inner = &self.inner;
        let delay = inner.control.delay();
        if delay.is_zero() {
            return udp_rtt_and_loss(&inner.a, &inner.b, inner.b_addr, probes).await;
        }
        let config = ProbeConfig {
            timeout: delay * 4 + Duration::from_secs(1),
            ..ProbeConfig::new(probes)
        };
        udp_probe(&inner.a, &inner.b, inner.b_addr, &config).await
    }
}

/// Checks that the path `from` → `to_addr` (an echo on `to`) adds `one_way`
/// in each direction: 20 UDP probes, median round trip at least
/// `2 × one_way − 2 ms` and at most `3 × one_way + 100 ms`. `what` names the
/// path in errors.
pub(crate) async fn verify_round_trip(
    from: &Host,
    to: &Host,
    to_addr: Ipv4Addr,
    one_way: Duration,
    what: &str,
) -> Result<Probe> {
    let config = ProbeConfig {
        probes: 20,
        interval: Duration::from_millis(5),
        timeout: one_way * 4 + Duration::from_secs(1),
    };
    let probe = udp_probe(from, to, to_addr, &config).await?;
    let Some(median) = probe.median_rtt else {
        return Err(LabError::Verification(format!(
            "{what}: none of {} probes answered after setting {one_way:?} one way",
            probe.sent
        )));
    };
    let low = (one_way * 2).saturating_sub(Duration::from_millis(2));
    let high = one_way * 3 + Duration::from_millis(100);
    if median < low || median > high {
        return Err(LabError::Verification(format!(
            "{what}: one-way delay {one_way:?} but median round trip {median:?} (accepted {low:?}..={high:?})"
        )));
    }
    Ok(probe)
}

fn duration_nanos(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

/// Opens TUN device `tun_name` from a task on R's runtime (so it is created
/// in R's namespace) and leaves the delay line running there.
pub(crate) async fn start_delay_line(
    router: &Host,
    tun_name: &str,
    control: Arc<DelayControl>,
) -> Result<()> {
    let (ready_tx, ready_rx) = oneshot::channel::<io::Result<()>>();
    let name = tun_name.to_string();
    router.try_handle()?.spawn(async move {
        let registered = open_tun(&name).and_then(|fd| {
            // SAFETY: the `OwnedFd` moves into the `AsyncFd`, which owns it
            // (and so keeps it open, the same descriptor) until dropped.
            unsafe { AsyncFd::register_with_interest(fd, Interest::READABLE) }
                .map_err(io::Error::from)
        });
        let tun = match registered {
            Ok(tun) => tun,
            Err(e) => {
                let _ = ready_tx.send(Err(e));
                return;
            }
        };
        let _ = ready_tx.send(Ok(()));
        run_delay_line(tun, control).await;
    });
    match ready_rx.await {
        Ok(Ok(())) => Ok(()),
        Ok(Err(e)) => Err(LabError::io(
            format!(
                "could not open TUN device {tun_name} in router `{}`",
                router.netns()
            ),
            e,
        )),
        Err(_) => Err(LabError::Runtime {
            host: router.name().to_string(),
            message: "delay line ended before it started".into(),
        }),
    }
}

/// `struct ifreq` as TUNSETIFF reads it: the name, then the flags in the
/// union (padded to the union's full size).
#[repr(C)]
struct IfReq {
    name: [libc::c_char; libc::IFNAMSIZ],
    flags: libc::c_short,
    _pad: [u8; 24],
}

/// Opens `/dev/net/tun` non-blocking and attaches it to a new TUN interface
/// `name` (IFF_TUN | IFF_NO_PI: raw IP packets, no header) in the calling
/// thread's network namespace. Closing the descriptor removes the interface.
fn open_tun(name: &str) -> io::Result<OwnedFd> {
    if name.is_empty() || name.len() >= libc::IFNAMSIZ {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "bad interface name",
        ));
    }
    // SAFETY: a valid NUL-terminated path and plain flags.
    let raw = unsafe {
        libc::open(
            c"/dev/net/tun".as_ptr(),
            libc::O_RDWR | libc::O_NONBLOCK | libc::O_CLOEXEC,
        )
    };
    if raw < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `raw` is a freshly opened descriptor nobody else owns.
    let fd = unsafe { OwnedFd::from_raw_fd(raw) };
    let mut request = IfReq {
        name: [0; libc::IFNAMSIZ],
        flags: (libc::IFF_TUN | libc::IFF_NO_PI) as libc::c_short,
        _pad: [0; 24],
    };
    for (slot, byte) in request.name.iter_mut().zip(name.bytes()) {
        *slot = byte as libc::c_char;
    }
    // SAFETY: TUNSETIFF reads and writes a `struct ifreq`, which `IfReq`
    // covers (it is larger than the kernel's 40 bytes).
    let rc = unsafe { libc::ioctl(fd.as_raw_fd(), libc::TUNSETIFF, &mut request) };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(fd)
}

/// The delay line: reads packets from the TUN, queues them FIFO with their
/// arrival time, writes each back once `arrival + delay` has passed.
async fn run_delay_line(tun: AsyncFd<OwnedFd>, control: Arc<DelayControl>) {
    let mut queue: VecDeque<(Instant, Vec<u8>)> = VecDeque::new();
    let mut buf = vec![0u8; MAX_PACKET];
    loop {
        let delay = control.delay();
        let now = Instant::now();
        while queue
            .front()
            .is_some_and(|(arrival, _)| *arrival + delay <= now)
        {
            if let Some((_, packet)) = queue.pop_front() {
                write_packet(&tun, &packet, &control);
            }
        }
        let next_release = queue.front().map(|(arrival, _)| *arrival + delay);
        tokio::select! {
            readable = tun.readable() => {
                let mut guard = match readable {
                    Ok(guard) => guard,
                    Err(e) => {
                        tracing::error!(error = %e, "lab: delay line cannot poll its TUN device; stopping");
                        return;
                    }
                };
                loop {
                    match guard.try_io(|fd| read_packet(fd.get_ref(), &mut buf)) {
                        Ok(Ok(len)) => {
                            if queue.len() >= MAX_QUEUED_PACKETS {
                                control.queued_drops.fetch_add(1, Ordering::Relaxed);
                            } else {
                                queue.push_back((Instant::now(), buf[..len].to_vec()));
                            }
                        }
                        Ok(Err(e)) => {
                            tracing::warn!(error = %e, "lab: delay line read failed");
                            break;
                        }
                        // Drained: readiness was cleared by try_io.
                        Err(_would_block) => break,
                    }
                }
            }
            _ = sleep_until_opt(next_release) => {}
            _ = control.changed.notified() => {}
        }
    }
}

async fn sleep_until_opt(deadline: Option<Instant>) {
    match deadline {
        Some(deadline) => tokio::time::sleep_until(deadline).await,
        None => std::future::pending().await,
    }
}

fn read_packet(fd: &OwnedFd, buf: &mut [u8]) -> io::Result<usize> {
    // SAFETY: reading into a buffer we own, of the length we pass.
    let n = unsafe { libc::read(fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len()) };
    if n < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(n as usize)
    }
}

fn write_packet(tun: &AsyncFd<OwnedFd>, packet: &[u8], control: &DelayControl) {
    // SAFETY: writing from a slice we own, of its length. TUN writes hand
    // the packet to the kernel's receive path and do not block.
    let n = unsafe { libc::write(tun.as_raw_fd(), packet.as_ptr().cast(), packet.len()) };
    if n < 0 {
        tracing::debug!(error = %io::Error::last_os_error(), "lab: delay line write failed");
    } else {
        control.forwarded.fetch_add(1, Ordering::Relaxed);
    }
}
