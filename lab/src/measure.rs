//! In-process measurements between hosts: UDP round trips and loss, TCP
//! throughput. No external tools (`ping`, `iperf`) are needed.
//!
//! Each measurement runs a responder task on the target host's runtime and
//! the active side on the source host's runtime; the caller only awaits their
//! join handles, so these functions work from any executor.

use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream, UdpSocket};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

use crate::error::{LabError, Result};
use crate::host::Host;

/// Size of a UDP probe datagram.
const PROBE_LEN: usize = 32;

/// Result of a UDP probe run ([`udp_rtt_and_loss`], [`udp_probe`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Probe {
    /// Probes sent (including those the kernel refused to send, e.g. with no
    /// route while a link is down).
    pub sent: usize,
    /// Distinct probes whose echo came back.
    pub received: usize,
    /// Median round-trip time of the answered probes; `None` if none came back.
    pub median_rtt: Option<Duration>,
    /// Largest round-trip time seen; `None` if none came back.
    pub max_rtt: Option<Duration>,
}

impl Probe {
    /// Round-trip loss as a fraction in `0.0..=1.0` (1.0 when nothing was sent).
    pub fn loss(&self) -> f64 {
        if self.sent == 0 {
            return 1.0;
        }
        1.0 - self.received as f64 / self.sent as f64
    }
}

/// How a UDP probe run is paced and how long it waits for stragglers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProbeConfig {
    /// Number of probes to send.
    pub probes: usize,
    /// Pause between two probes.
    pub interval: Duration,
    /// The longest wait for replies after the last probe. Once replies have
    /// been seen the wait is shortened to `max(200 ms, 4 × largest RTT)`, so a
    /// lossy run does not always wait this long. Replies slower than this
    /// count as lost.
    pub timeout: Duration,
}

impl ProbeConfig {
    /// `probes` probes 1 ms apart, waiting at most 1 s for late replies.
    pub fn new(probes: usize) -> ProbeConfig {
        ProbeConfig {
            probes,
            interval: Duration::from_millis(1),
            timeout: Duration::from_secs(1),
        }
    }
}

impl Default for ProbeConfig {
    /// 100 probes 1 ms apart, waiting at most 1 s for late replies.
    fn default() -> Self {
        ProbeConfig::new(100)
    }
}

/// Aborts a task when dropped, so helper tasks never outlive a measurement.
pub(crate) struct AbortOnDrop<T>(pub(crate) JoinHandle<T>);

impl<T> Drop for AbortOnDrop<T> {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Sends `probes` UDP probes (1 ms apart) from a socket in `from`'s namespace
/// to an echo socket in `to`'s namespace, reached at `to_addr`, and counts the
/// echoes. Loss is round-trip loss: with independent loss `p` in each
/// direction it is about `1 - (1 - p)²`.
///
/// ```no_run
/// # async fn f(link: &atmosphere_lab::Link, a: &atmosphere_lab::Host, b: &atmosphere_lab::Host)
/// # -> Result<(), atmosphere_lab::LabError> {
/// let probe = atmosphere_lab::udp_rtt_and_loss(a, b, link.b_addr(), 200).await?;
/// assert_eq!(probe.received, probe.sent);
/// # Ok(()) }
/// ```
pub async fn udp_rtt_and_loss(
    from: &Host,
    to: &Host,
    to_addr: Ipv4Addr,
    probes: usize,
) -> Result<Probe> {
    udp_probe(from, to, to_addr, &ProbeConfig::new(probes)).await
}

/// [`udp_rtt_and_loss`] with explicit pacing and timeout.
pub async fn udp_probe(
    from: &Host,
    to: &Host,
    to_addr: Ipv4Addr,
    config: &ProbeConfig,
) -> Result<Probe> {
    let (port, _echo) = start_echo(to).await?;
    let target = SocketAddr::V4(SocketAddrV4::new(to_addr, port));
    let config = config.clone();
    let task = from
        .try_handle()?
        .spawn(async move { run_probes(target, config, false).await });
    join(from, task).await?
}

/// Waits until a UDP probe from `from` to `to` (at `to_addr`) is answered,
/// probing every 10 ms, and returns that probe's round-trip time.
///
/// # Errors
/// [`LabError::Verification`] if no probe is answered within `timeout`.
pub async fn wait_udp_reachable(
    from: &Host,
    to: &Host,
    to_addr: Ipv4Addr,
    timeout: Duration,
) -> Result<Duration> {
    let interval = Duration::from_millis(10);
    let config = ProbeConfig {
        probes: (timeout.as_millis() / interval.as_millis()).max(1) as usize,
        interval,
        timeout: Duration::from_millis(100).min(timeout),
    };
    let (port, _echo) = start_echo(to).await?;
    let target = SocketAddr::V4(SocketAddrV4::new(to_addr, port));
    let task = from
        .try_handle()?
        .spawn(async move { run_probes(target, config, true).await });
    let probe = join(from, task).await??;
    probe.median_rtt.ok_or_else(|| {
        LabError::Verification(format!(
            "{to_addr} (host `{}`) not reachable over UDP from host `{}` within {timeout:?}",
            to.name(),
            from.name()
        ))
    })
}

/// Measures TCP throughput from `from` to `to` (reached at `to_addr`), in
/// kbit/s: the sender writes as fast as it can; the receiver counts the bytes
/// that arrive during `window`, starting after the first chunk (so the
/// connection's initial burst is mostly excluded).
///
/// # Errors
/// If the connection cannot be established within 5 s or the transfer fails.
pub async fn tcp_throughput_kbit(
    from: &Host,
    to: &Host,
    to_addr: Ipv4Addr,
    window: Duration,
) -> Result<f64> {
    let (port_tx, port_rx) = oneshot::channel::<std::io::Result<u16>>();
    let mut receiver = AbortOnDrop(to.try_handle()?.spawn(async move {
        let listener = match TcpListener::bind((Ipv4Addr::UNSPECIFIED, 0)).await {
            Ok(listener) => listener,
            Err(e) => {
                let _ = port_tx.send(Err(e));
                return Ok(0.0);
            }
        };
        let _ = port_tx.send(listener.local_addr().map(|a| a.port()));
        let (mut stream, _) = tokio::time::timeout(Duration::from_secs(5), listener.accept())
            .await
            .map_err(|_| std::io::Error::new(std::io::ErrorKind::TimedOut, "no connection"))??;
        let mut buf = vec![0u8; 64 * 1024];
        if stream.read(&mut buf).await? == 0 {
            return Ok(0.0);
        }
        let end = tokio::time::Instant::now() + window;
        let mut bytes = 0u64;
        while let Ok(read) = tokio::time::timeout_at(end, stream.read(&mut buf)).await {
            match read? {
                0 => break,
                n => bytes += n as u64,
            }
        }
        Ok::<f64, std::io::Error>(bytes as f64 * 8.0 / window.as_secs_f64() / 1000.0)
    }));
    let port = port_rx
        .await
        .map_err(|_| runtime_gone(to))?
        .map_err(|e| LabError::io(format!("TCP listener in host `{}`", to.name()), e))?;
    let target = SocketAddr::V4(SocketAddrV4::new(to_addr, port));
    let mut sender = AbortOnDrop(from.try_handle()?.spawn(async move {
        let mut stream = tokio::time::timeout(Duration::from_secs(5), TcpStream::connect(target))
            .await
            .map_err(|_| {
                std::io::Error::new(std::io::ErrorKind::TimedOut, "connect timed out")
            })??;
        let chunk = vec![0x5au8; 64 * 1024];
        // Ends with an error once the receiver closes the connection.
        while stream.write_all(&chunk).await.is_ok() {}
        Ok::<(), std::io::Error>(())
    }));
    tokio::select! {
        result = &mut receiver.0 => {
            let kbit = result.map_err(|e| join_error(to, e))?
                .map_err(|e| LabError::io(format!("TCP receive in host `{}`", to.name()), e))?;
            Ok(kbit)
        }
        result = &mut sender.0 => {
            match result.map_err(|e| join_error(from, e))? {
                Err(e) => Err(LabError::io(
                    format!("TCP send from host `{}` to {target}", from.name()), e)),
                // The sender only stops early when the connection broke.
                Ok(()) => {
                    let kbit = (&mut receiver.0).await.map_err(|e| join_error(to, e))?
                        .map_err(|e| LabError::io(format!("TCP receive in host `{}`", to.name()), e))?;
                    Ok(kbit)
                }
            }
        }
    }
}

/// Starts a UDP echo responder in `to`'s namespace on an ephemeral port.
async fn start_echo(to: &Host) -> Result<(u16, AbortOnDrop<()>)> {
    let (port_tx, port_rx) = oneshot::channel::<std::io::Result<u16>>();
    let task = to.try_handle()?.spawn(async move {
        let socket = match UdpSocket::bind((Ipv4Addr::UNSPECIFIED, 0)).await {
            Ok(socket) => socket,
            Err(e) => {
                let _ = port_tx.send(Err(e));
                return;
            }
        };
        let _ = port_tx.send(socket.local_addr().map(|a| a.port()));
        let mut buf = [0u8; 2048];
        loop {
            match socket.recv_from(&mut buf).await {
                Ok((len, peer)) => {
                    let _ = socket.send_to(&buf[..len], peer).await;
                }
                Err(_) => tokio::time::sleep(Duration::from_millis(1)).await,
            }
        }
    });
    let guard = AbortOnDrop(task);
    let port = port_rx
        .await
        .map_err(|_| runtime_gone(to))?
        .map_err(|e| LabError::io(format!("UDP echo socket in host `{}`", to.name()), e))?;
    Ok((port, guard))
}

/// Sends the probes and collects echoes (runs on the source host's runtime).
async fn run_probes(target: SocketAddr, config: ProbeConfig, stop_at_first: bool) -> Result<Probe> {
    static SESSION: AtomicU64 = AtomicU64::new(0);
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0);
    let session =
        nanos ^ (SESSION.fetch_add(1, Ordering::Relaxed) << 48) ^ u64::from(std::process::id());

    let socket = UdpSocket::bind((Ipv4Addr::UNSPECIFIED, 0))
        .await
        .map_err(|e| LabError::io("UDP probe socket", e))?;
    let count = config.probes;
    let mut sent_at: Vec<Option<Instant>> = vec![None; count];
    let mut answered = vec![false; count];
    let mut rtts: Vec<Duration> = Vec::new();
    let mut next = 0usize;
    let mut last_send = Instant::now();
    let mut ticker = tokio::time::interval(config.interval.max(Duration::from_micros(100)));
    let mut buf = [0u8; 2048];

    while next < count || rtts.len() < count {
        let grace = match rtts.iter().max() {
            Some(max) => (*max * 4)
                .max(Duration::from_millis(200))
                .min(config.timeout),
            None => config.timeout,
        };
        let deadline = tokio::time::Instant::from_std(last_send + grace);
        tokio::select! {
            _ = ticker.tick(), if next < count => {
                let mut packet = [0u8; PROBE_LEN];
                packet[..8].copy_from_slice(&session.to_be_bytes());
                packet[8..12].copy_from_slice(&(next as u32).to_be_bytes());
                let now = Instant::now();
                sent_at[next] = Some(now);
                last_send = now;
                // A refused send (no route while a link is down) is a loss.
                let _ = socket.send_to(&packet, target).await;
                next += 1;
            }
            received = socket.recv_from(&mut buf) => {
                let Ok((len, _)) = received else { continue };
                if len < 12 || buf[..8] != session.to_be_bytes() {
                    continue;
                }
                let seq = u32::from_be_bytes([buf[8], buf[9], buf[10], buf[11]]) as usize;
                let Some(Some(sent)) = sent_at.get(seq) else { continue };
                if answered[seq] {
                    continue;
                }
                answered[seq] = true;
                rtts.push(sent.elapsed());
                if stop_at_first {
                    break;
                }
            }
            _ = tokio::time::sleep_until(deadline), if next == count => break,
        }
    }

    let max_rtt = rtts.iter().max().copied();
    rtts.sort();
    Ok(Probe {
        sent: next,
        received: rtts.len(),
        median_rtt: rtts.get(rtts.len() / 2).copied(),
        max_rtt,
    })
}

/// Awaits a task spawned on `host`'s runtime.
async fn join<T>(host: &Host, task: JoinHandle<T>) -> Result<T> {
    task.await.map_err(|e| join_error(host, e))
}

pub(crate) fn join_error(host: &Host, error: tokio::task::JoinError) -> LabError {
    LabError::Runtime {
        host: host.name().to_string(),
        message: if error.is_cancelled() {
            "task cancelled (lab dropped?)".into()
        } else {
            format!("task panicked: {error}")
        },
    }
}

pub(crate) fn runtime_gone(host: &Host) -> LabError {
    LabError::Runtime {
        host: host.name().to_string(),
        message: "helper task ended before reporting (lab dropped?)".into(),
    }
}
