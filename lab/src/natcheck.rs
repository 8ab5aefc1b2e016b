//! Measurements for NAT topologies: an address reflector ("what is my
//! address", like a tiny STUN server, over UDP and TCP), the observed address
//! of a socket, whether one host can initiate to another, and a simultaneous
//! UDP hole punch between two hosts.
//!
//! Like the rest of [`measure`](crate::measure), every active side runs on
//! the hosts' runtimes and the caller only awaits join handles, so these
//! functions work from any executor.

use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream, UdpSocket};
use tokio::sync::oneshot;
use tokio::time::Instant;

use crate::error::{LabError, Result};
use crate::host::Host;
use crate::measure::{join_error, runtime_gone, AbortOnDrop};

/// How long [`observed_udp_addr`] and friends keep asking a reflector.
pub const OBSERVE_TIMEOUT: Duration = Duration::from_secs(5);

/// First byte of a UDP reflector request.
const REQUEST: u8 = b'?';

/// First bytes of a hole-punch datagram.
const PUNCH: &[u8; 5] = b"PUNCH";

/// A "what is my address" service on a host, over UDP and TCP on the same
/// port: a UDP datagram starting with `?` followed by 8 bytes of nonce is
/// answered with the nonce and the sender's address as text (`ip:port`); a
/// TCP connection receives the peer's address as text and a newline, then is
/// closed. The address seen is the one after any NAT on the way, so this is
/// how a host behind a NAT learns its mapped address (see
/// [`observed_udp_addr`], [`observed_tcp_addr`]).
///
/// Runs on the host's runtime until dropped (or until the lab is dropped).
pub struct Reflector {
    addr: SocketAddrV4,
    _udp: AbortOnDrop<()>,
    _tcp: AbortOnDrop<()>,
}

impl std::fmt::Debug for Reflector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Reflector")
            .field("addr", &self.addr)
            .finish()
    }
}

impl Reflector {
    /// Starts a reflector on `host`, bound to `ip` (an address of the host:
    /// answers then always come from the address the client sent to, which a
    /// NAT on the way needs) on a port free for both UDP and TCP.
    pub async fn start(host: &Host, ip: Ipv4Addr) -> Result<Reflector> {
        let handle = host.try_handle()?;
        let bound = handle
            .spawn(async move {
                let mut last_error = None;
                for _ in 0..20 {
                    let udp = UdpSocket::bind((ip, 0)).await?;
                    let port = udp.local_addr()?.port();
                    match TcpListener::bind((ip, port)).await {
                        Ok(tcp) => return Ok((udp, tcp, port)),
                        Err(e) => last_error = Some(e),
                    }
                }
                Err(last_error
                    .unwrap_or_else(|| std::io::Error::other("no port free for UDP and TCP")))
            })
            .await
            .map_err(|e| join_error(host, e))?;
        let (udp, tcp, port) = bound
            .map_err(|e| LabError::io(format!("reflector on {ip} in host `{}`", host.name()), e))?;
        let udp_task = handle.spawn(run_udp_reflector(udp));
        let tcp_task = handle.spawn(run_tcp_reflector(tcp));
        Ok(Reflector {
            addr: SocketAddrV4::new(ip, port),
            _udp: AbortOnDrop(udp_task),
            _tcp: AbortOnDrop(tcp_task),
        })
    }

    /// Where clients reach the reflector (UDP and TCP).
    pub fn addr(&self) -> SocketAddrV4 {
        self.addr
    }
}

async fn run_udp_reflector(socket: UdpSocket) {
    let mut buf = [0u8; 512];
    loop {
        match socket.recv_from(&mut buf).await {
            Ok((len, peer)) if len >= 9 && buf[0] == REQUEST => {
                let mut reply = buf[1..9].to_vec();
                reply.extend_from_slice(peer.to_string().as_bytes());
                let _ = socket.send_to(&reply, peer).await;
            }
            Ok(_) => {}
            Err(_) => tokio::time::sleep(Duration::from_millis(1)).await,
        }
    }
}

async fn run_tcp_reflector(listener: TcpListener) {
    loop {
        match listener.accept().await {
            Ok((mut stream, peer)) => {
                tokio::spawn(async move {
                    let line = format!("{peer}\n");
                    let _ = stream.write_all(line.as_bytes()).await;
                    let _ = stream.shutdown().await;
                });
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(1)).await,
        }
    }
}

/// What reflectors saw of one UDP socket ([`observed_udp_addrs`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UdpMapping {
    /// The socket's local port.
    pub local_port: u16,
    /// The source address each reflector saw, in the order asked.
    pub observed: Vec<SocketAddrV4>,
}

impl UdpMapping {
    /// Whether every reflector saw the same address: the NAT (if any) maps
    /// this socket endpoint-independently.
    pub fn is_endpoint_independent(&self) -> bool {
        self.observed.windows(2).all(|pair| pair[0] == pair[1])
    }

    /// Whether every reflector saw the socket's own port (the NAT preserves
    /// ports, or there is no NAT).
    pub fn preserves_port(&self) -> bool {
        self.observed
            .iter()
            .all(|addr| addr.port() == self.local_port)
    }
}

/// The address `reflector` sees when a fresh UDP socket on `from` (bound to
/// `0.0.0.0:0`) sends to it: behind a NAT, the socket's mapped address.
///
/// # Errors
/// [`LabError::Verification`] if no answer arrives within
/// [`OBSERVE_TIMEOUT`] (the request is repeated every 100 ms).
pub async fn observed_udp_addr(from: &Host, reflector: SocketAddrV4) -> Result<SocketAddrV4> {
    let mapping = observed_udp_addrs(from, 0, &[reflector]).await?;
    Ok(mapping.observed[0])
}

/// Asks each of `reflectors` in turn, from one UDP socket on `from` bound to
/// `0.0.0.0:local_port` (`0`: an ephemeral port), which address it sees.
/// With two reflectors at different addresses this measures the NAT's mapping
/// behaviour: the same observed address for both is endpoint-independent
/// mapping ([`UdpMapping::is_endpoint_independent`]).
///
/// # Errors
/// [`LabError::Verification`] if a reflector does not answer within
/// [`OBSERVE_TIMEOUT`]; [`LabError::Io`] if the socket cannot be bound.
pub async fn observed_udp_addrs(
    from: &Host,
    local_port: u16,
    reflectors: &[SocketAddrV4],
) -> Result<UdpMapping> {
    let reflectors = reflectors.to_vec();
    let name = from.name().to_string();
    let task = from.try_handle()?.spawn(async move {
        let socket = UdpSocket::bind((Ipv4Addr::UNSPECIFIED, local_port))
            .await
            .map_err(|e| {
                LabError::io(
                    format!("UDP socket on port {local_port} in host `{name}`"),
                    e,
                )
            })?;
        let local_port = socket
            .local_addr()
            .map_err(|e| LabError::io("local address of a UDP socket", e))?
            .port();
        let mut observed = Vec::with_capacity(reflectors.len());
        for reflector in reflectors {
            observed.push(observe_on(&socket, reflector, &name).await?);
        }
        Ok(UdpMapping {
            local_port,
            observed,
        })
    });
    let guard = AbortOnDrop(task);
    join_guarded(from, guard).await?
}

/// The address a TCP reflector sees when `from` connects to it (a fresh
/// socket on an ephemeral port): behind a NAT, the connection's mapped
/// address.
///
/// # Errors
/// [`LabError::Verification`] if the connection or the answer takes longer
/// than [`OBSERVE_TIMEOUT`] or the answer is not an address.
pub async fn observed_tcp_addr(from: &Host, reflector: SocketAddrV4) -> Result<SocketAddrV4> {
    let name = from.name().to_string();
    let task = from.try_handle()?.spawn(async move {
        let exchange = async {
            let mut stream = TcpStream::connect(reflector).await?;
            let mut text = String::new();
            stream.read_to_string(&mut text).await?;
            Ok::<String, std::io::Error>(text)
        };
        let text = tokio::time::timeout(OBSERVE_TIMEOUT, exchange)
            .await
            .map_err(|_| {
                LabError::Verification(format!(
                    "TCP reflector {reflector} did not answer host `{name}` within {OBSERVE_TIMEOUT:?}"
                ))
            })?
            .map_err(|e| LabError::io(format!("TCP to reflector {reflector} from host `{name}`"), e))?;
        text.trim().parse::<SocketAddrV4>().map_err(|_| {
            LabError::Verification(format!(
                "TCP reflector {reflector} answered {text:?}, not an address"
            ))
        })
    });
    join_guarded(from, AbortOnDrop(task)).await?
}

/// Sends reflector requests from `socket` every 100 ms until `reflector`
/// answers this request's nonce; datagrams not answering it are ignored.
async fn observe_on(
    socket: &UdpSocket,
    reflector: SocketAddrV4,
    host: &str,
) -> Result<SocketAddrV4> {
    let nonce = nonce();
    let mut request = [0u8; 9];
    request[0] = REQUEST;
    request[1..].copy_from_slice(&nonce.to_be_bytes());
    let deadline = Instant::now() + OBSERVE_TIMEOUT;
    let mut resend = tokio::time::interval(Duration::from_millis(100));
    let mut buf = [0u8; 512];
    loop {
        tokio::select! {
            _ = resend.tick() => {
                // A refused send (no route while a link is down) is retried.
                let _ = socket.send_to(&request, reflector).await;
            }
            received = socket.recv_from(&mut buf) => {
                let Ok((len, _)) = received else { continue };
                if len < 8 || buf[..8] != nonce.to_be_bytes() {
                    continue;
                }
                let text = String::from_utf8_lossy(&buf[8..len]);
                return text.parse::<SocketAddrV4>().map_err(|_| {
                    LabError::Verification(format!(
                        "UDP reflector {reflector} answered {text:?}, not an address"
                    ))
                });
            }
            _ = tokio::time::sleep_until(deadline) => {
                return Err(LabError::Verification(format!(
                    "UDP reflector {reflector} did not answer host `{host}` within {OBSERVE_TIMEOUT:?}"
                )));
            }
        }
    }
}

/// Which kinds of unsolicited traffic got through ([`can_initiate`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Initiation {
    /// A UDP datagram sent to the target arrived at its socket.
    pub udp: bool,
    /// A TCP connection to the target was accepted by its listener.
    pub tcp: bool,
}

impl Initiation {
    /// Neither UDP nor TCP got through.
    pub fn blocked(&self) -> bool {
        !self.udp && !self.tcp
    }

    /// Both UDP and TCP got through.
    pub fn open(&self) -> bool {
        self.udp && self.tcp
    }
}

/// Whether `from` can *initiate* traffic to `to`: `to` opens a UDP socket and
/// a TCP listener on one fresh port `P` (never used for outgoing traffic, so
/// no NAT mapping exists for it), and `from` sends UDP datagrams (5, 20 ms
/// apart) to `to_addr:P` and connects over TCP to it. Reports what reached
/// `to` within `wait` (ending early once both did).
///
/// `to_addr` is wherever `from` would address `to`: its own address, or for a
/// host behind a NAT its router's public address. A send that fails locally
/// (no route) simply counts as not delivered.
pub async fn can_initiate(
    from: &Host,
    to: &Host,
    to_addr: Ipv4Addr,
    wait: Duration,
) -> Result<Initiation> {
    let session = nonce();
    let (port_tx, port_rx) = oneshot::channel::<std::io::Result<u16>>();
    let listener = AbortOnDrop(to.try_handle()?.spawn(async move {
        let mut last_error = None;
        let mut bound = None;
        for _ in 0..20 {
            let udp = match UdpSocket::bind((Ipv4Addr::UNSPECIFIED, 0)).await {
                Ok(udp) => udp,
                Err(e) => {
                    last_error = Some(e);
                    continue;
                }
            };
            let port = match udp.local_addr() {
                Ok(addr) => addr.port(),
                Err(e) => {
                    last_error = Some(e);
                    continue;
                }
            };
            match TcpListener::bind((Ipv4Addr::UNSPECIFIED, port)).await {
                Ok(tcp) => {
                    bound = Some((udp, tcp, port));
                    break;
                }
                Err(e) => last_error = Some(e),
            }
        }
        let Some((udp, tcp, port)) = bound else {
            let e = last_error.unwrap_or_else(|| std::io::Error::other("no free port"));
            let _ = port_tx.send(Err(e));
            return Initiation {
                udp: false,
                tcp: false,
            };
        };
        let _ = port_tx.send(Ok(port));
        let deadline = Instant::now() + wait + Duration::from_millis(100);
        let mut seen = Initiation {
            udp: false,
            tcp: false,
        };
        let mut buf = [0u8; 64];
        while !seen.open() {
            tokio::select! {
                received = udp.recv_from(&mut buf) => {
                    if let Ok((len, _)) = received {
                        if len == 8 && buf[..8] == session.to_be_bytes() {
                            seen.udp = true;
                        }
                    }
                }
                accepted = tcp.accept(), if !seen.tcp => {
                    if accepted.is_ok() {
                        seen.tcp = true;
                    }
                }
                _ = tokio::time::sleep_until(deadline) => break,
            }
        }
        seen
    }));
    let port = port_rx
        .await
        .map_err(|_| runtime_gone(to))?
        .map_err(|e| LabError::io(format!("UDP+TCP listener in host `{}`", to.name()), e))?;
    let target = SocketAddrV4::new(to_addr, port);
    let _sender = AbortOnDrop(from.try_handle()?.spawn(async move {
        let udp = async {
            if let Ok(socket) = UdpSocket::bind((Ipv4Addr::UNSPECIFIED, 0)).await {
                for _ in 0..5 {
                    let _ = socket.send_to(&session.to_be_bytes(), target).await;
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            }
        };
        let tcp = async {
            if let Ok(Ok(stream)) = tokio::time::timeout(wait, TcpStream::connect(target)).await {
                // Keep it open until the listener has surely accepted it.
                tokio::time::sleep(wait).await;
                drop(stream);
            }
        };
        tokio::join!(udp, tcp);
    }));
    join_guarded(to, listener).await
}

/// Outcome of [`udp_hole_punch`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HolePunch {
    /// a's socket as the reflector saw it (its NAT mapping).
    pub a_mapped: SocketAddrV4,
    /// b's socket as the reflector saw it.
    pub b_mapped: SocketAddrV4,
    /// Where the first datagram from b that reached a's socket came from
    /// (`None`: nothing from b arrived).
    pub a_received_from: Option<SocketAddrV4>,
    /// Where the first datagram from a that reached b's socket came from.
    pub b_received_from: Option<SocketAddrV4>,
    /// Time from the start of punching until both sides were done (or the
    /// timeout).
    pub elapsed: Duration,
}

impl HolePunch {
    /// Both sides received the other's datagrams: the hole is punched.
    pub fn succeeded(&self) -> bool {
        self.a_received_from.is_some() && self.b_received_from.is_some()
    }
}

/// A simultaneous UDP hole punch between `a` and `b`, the way DCUtR or ICE do
/// it: each opens one UDP socket, learns its mapped address from
/// `reflector` (see [`observed_udp_addr`]), the two addresses are exchanged
/// (here, through the test), and both then send datagrams to the other's
/// mapped address every 20 ms until each has received the other's and knows
/// the other received its own, or until `timeout`.
///
/// Between two endpoint-independent NATs this succeeds: each side's first
/// datagrams open its own NAT for the other's mapped address, so the other's
/// datagrams are let in. If either NAT maps address-dependently, the address
/// learnt from the reflector is not the one used towards the peer, and it
/// fails.
///
/// # Errors
/// If a reflector request fails (see [`observed_udp_addr`]) or a runtime is
/// gone; a failed punch is not an error (see [`HolePunch::succeeded`]).
pub async fn udp_hole_punch(
    a: &Host,
    b: &Host,
    reflector: SocketAddrV4,
    timeout: Duration,
) -> Result<HolePunch> {
    let session = nonce();
    let side_a = spawn_punch_side(a, session, 0, reflector, timeout)?;
    let side_b = spawn_punch_side(b, session, 1, reflector, timeout)?;
    let (a_mapped, b_mapped) = tokio::join!(side_a.mapped, side_b.mapped);
    let a_mapped = a_mapped.map_err(|_| runtime_gone(a))??;
    let b_mapped = b_mapped.map_err(|_| runtime_gone(b))??;
    let start = Instant::now();
    let _ = side_a.peer.send(b_mapped);
    let _ = side_b.peer.send(a_mapped);
    let (a_received_from, b_received_from) =
        tokio::join!(join_guarded(a, side_a.task), join_guarded(b, side_b.task));
    Ok(HolePunch {
        a_mapped,
        b_mapped,
        a_received_from: a_received_from?,
        b_received_from: b_received_from?,
        elapsed: start.elapsed(),
    })
}

/// A [`punch_side`] running on its host's runtime, with the channels
/// [`udp_hole_punch`] drives it through.
struct PunchSide {
    task: AbortOnDrop<Option<SocketAddrV4>>,
    /// The side's mapped address, as the reflector saw it.
    mapped: oneshot::Receiver<Result<SocketAddrV4>>,
    /// Where to send the other side's mapped address.
    peer: oneshot::Sender<SocketAddrV4>,
}

/// Spawns the [`punch_side`] with `role` of punch `session` on `host`.
fn spawn_punch_side(
    host: &Host,
    session: u64,
    role: u8,
    reflector: SocketAddrV4,
    timeout: Duration,
) -> Result<PunchSide> {
    let (mapped_tx, mapped) = oneshot::channel();
    let (peer, peer_rx) = oneshot::channel();
    let task = AbortOnDrop(host.try_handle()?.spawn(punch_side(
        host.name().to_string(),
        session,
        role,
        reflector,
        mapped_tx,
        peer_rx,
        timeout,
    )));
    Ok(PunchSide { task, mapped, peer })
}

/// One side of [`udp_hole_punch`], on its host's runtime. Datagrams are
/// `PUNCH`, the session nonce, the sender's role and whether the sender has
/// already received from its peer.
async fn punch_side(
    host: String,
    session: u64,
    role: u8,
    reflector: SocketAddrV4,
    mapped_tx: oneshot::Sender<Result<SocketAddrV4>>,
    peer_rx: oneshot::Receiver<SocketAddrV4>,
    timeout: Duration,
) -> Option<SocketAddrV4> {
    let socket = match UdpSocket::bind((Ipv4Addr::UNSPECIFIED, 0)).await {
        Ok(socket) => socket,
        Err(e) => {
            let _ = mapped_tx.send(Err(LabError::io(
                format!("hole-punch socket in host `{host}`"),
                e,
            )));
            return None;
        }
    };
    match observe_on(&socket, reflector, &host).await {
        Ok(mapped) => {
            let _ = mapped_tx.send(Ok(mapped));
        }
        Err(e) => {
            let _ = mapped_tx.send(Err(e));
            return None;
        }
    }
    let peer = peer_rx.await.ok()?;
    let deadline = Instant::now() + timeout;
    let mut ticker = tokio::time::interval(Duration::from_millis(20));
    let mut received_from: Option<SocketAddrV4> = None;
    let mut peer_saw_us = false;
    let mut buf = [0u8; 64];
    let datagram = |seen: bool| {
        let mut packet = PUNCH.to_vec();
        packet.extend_from_slice(&session.to_be_bytes());
        packet.push(role);
        packet.push(u8::from(seen));
        packet
    };
    while !(received_from.is_some() && peer_saw_us) {
        tokio::select! {
            _ = ticker.tick() => {
                let _ = socket.send_to(&datagram(received_from.is_some()), peer).await;
            }
            received = socket.recv_from(&mut buf) => {
                let Ok((len, SocketAddr::V4(source))) = received else { continue };
                let valid = len == PUNCH.len() + 10
                    && buf[..PUNCH.len()] == PUNCH[..]
                    && buf[PUNCH.len()..PUNCH.len() + 8] == session.to_be_bytes()
                    && buf[PUNCH.len() + 8] != role;
                if !valid {
                    continue;
                }
                received_from.get_or_insert(source);
                peer_saw_us |= buf[PUNCH.len() + 9] == 1;
            }
            _ = tokio::time::sleep_until(deadline) => break,
        }
    }
    if received_from.is_some() {
        // The peer may not have seen that we received it yet: tell it a few
        // more times before the socket closes.
        for _ in 0..3 {
            let _ = socket.send_to(&datagram(true), peer).await;
        }
    }
    received_from
}

/// A fresh 64-bit value for matching requests and answers.
fn nonce() -> u64 {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0);
    nanos ^ (COUNTER.fetch_add(1, Ordering::Relaxed) << 40) ^ (u64::from(std::process::id()) << 20)
}

/// Awaits a guarded task spawned on `host`'s runtime.
async fn join_guarded<T>(host: &Host, mut guard: AbortOnDrop<T>) -> Result<T> {
    (&mut guard.0).await.map_err(|e| join_error(host, e))
}
