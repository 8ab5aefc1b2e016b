//! `mesh-bench ble`: Bluetooth LE on the simulated radio
//! (`atmosphere::transports::ble::sim`), at its defaults: 1 Mbit/s per
//! direction, 30 ms one-way latency, 247-byte segments plus a 4-byte header,
//! 90 ms channel setup.
//!
//! Four layers, each on a radio of its own (two nodes 3 m apart, range 10 m),
//! measured in one run:
//!
//! * **capacity** (`capacity/ble`): the link's nominal payload capacity,
//!   `bandwidth / 8 × mtu / (mtu + header)`, computed from the [`SimConfig`]:
//!   a reference row, not a measurement;
//! * **raw link** (`sim-link/ble`): one `SimStream` (`BleLink::dial` /
//!   `listen`, no libp2p): 1 MiB one way (a fresh channel per repetition, from
//!   the first write until the reader has the last byte), a 64-byte echo
//!   round trip, and the dial (the simulated L2CAP channel setup). This
//!   checks that the simulator paces honestly;
//! * **libp2p** (`libp2p-stream/ble`, `libp2p-ping/ble`): two swarms on
//!   `BleTransport` + noise + yamux (default configs, as the node uses):
//!   1 MiB one way on a `libp2p-stream` stream (from the first write until
//!   the receiving task has read the last byte), a 64-byte echo round trip on
//!   one stream, fresh dials (dial → `ConnectionEstablished` at the dialer:
//!   L2CAP channel, multistream-select, noise, multistream-select, yamux),
//!   and `libp2p-ping`'s round trip (a swarm pair of its own, 100 ms
//!   interval, the first two pings left out);
//! * **Atmosphere** (`atmosphere/ble`): two nodes with a radio each
//!   (`NodeBuilder::ble`), also on loopback TCP, `DeviceProfile::LowPower`
//!   so that the BLE path is preferred, joined in one mesh; the scenario
//!   waits until both sides' active path is `ble`. Then, node b → node a:
//!   RPC round trip with a 64-byte payload; one 1 MiB RPC payload (from the
//!   call until the handler runs, i.e. the whole request arrived: one way,
//!   like the references; the call's round trip goes into the extras);
//!   pub/sub of 16 KiB messages, 2 MiB in all (first publish → last
//!   delivery). Each part starts once both sides' active path has been the
//!   same BLE connection for a second; during it both nodes' path switches
//!   (peer events) are watched, and afterwards b's BLE path is read: the
//!   samples count only if no switch happened, the path is still active and
//!   its `app_bytes_sent` grew by at least the payload bytes. Otherwise the
//!   attempt is listed with the reason (`extra.ble.atmosphere.left_ble`) and
//!   the part is tried once more; if that fails too, the row is skipped with
//!   the reason. Last, **setup**: b moves out of range, both sides fall back
//!   to the loopback (LAN) path and drop the BLE one, b stays out 0.5–4.5 s
//!   more, then moves back into range: the time from `SimNode::move_to`
//!   until b's active path to a is `ble` again (sighting, probe, dial,
//!   upgrade, the train measuring and promoting the path).
//!
//! Ratios (Atmosphere / reference, by the `/ble` suffix) come from
//! [`crate::report::Report::compute_ratios`]; the `bulk 1 MiB` ratio to
//! `capacity/ble` is the fraction of raw capacity the issue asks about (goal:
//! at least 80 %), also written to `extra.ble`.

use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use atmosphere::{
    transports::ble::{
        sim::{Position, SimConfig, SimNode, SimRadio},
        upgraded, BleLink, BoxedLink,
    },
    CallOptions, Config, DeviceProfile, InviteOptions, Node, NodeBuilder, PathStatus, PeerEvent,
    PeerId, Request,
};
use bytes::Bytes;
use futures::{AsyncReadExt, AsyncWriteExt, StreamExt};
use libp2p::{
    multiaddr::Protocol,
    ping,
    swarm::{NetworkBehaviour, SwarmEvent},
    Multiaddr, StreamProtocol, Swarm, SwarmBuilder,
};
use serde_json::{json, Value};
use tempfile::TempDir;
use tokio::{
    sync::{mpsc, oneshot},
    task::JoinHandle,
};

use crate::{
    report::{Row, Skipped},
    stats::{median, Summary},
};

/// Bytes of one bulk transfer.
const BULK: usize = 1 << 20;
/// Payload of a round trip.
const SMALL: usize = 64;
/// Size of one pub/sub message.
const PUBSUB_MSG: usize = 16 * 1024;
/// Bytes published per pub/sub repetition.
const PUBSUB_TOTAL: usize = 2 << 20;
/// Radio range of every node.
const RANGE: f64 = 10.0;
/// Where the two nodes stand (3 apart: in range).
const HERE: Position = Position { x: 0.0, y: 0.0 };
const NEAR: Position = Position { x: 3.0, y: 0.0 };
/// Out of range.
const FAR: Position = Position { x: 100.0, y: 0.0 };
/// Longest any single step may take.
const LIMIT: Duration = Duration::from_secs(90);

const BULK_PROTO: StreamProtocol = StreamProtocol::new("/mesh-bench/ble-bulk/1");
const ECHO_PROTO: StreamProtocol = StreamProtocol::new("/mesh-bench/ble-echo/1");

/// Repetitions of one run.
#[derive(Debug, Clone, Copy)]
pub struct Shape {
    /// 1 MiB transfers per system (fresh channel each for the raw link).
    pub bulk_reps: usize,
    /// Fresh dials (raw link and libp2p).
    pub dials: usize,
    /// Measured round trips (raw echo, libp2p echo, libp2p ping).
    pub round_trips: usize,
    /// Measured 64-byte RPC calls.
    pub rpc_calls: usize,
    /// 2 MiB pub/sub repetitions.
    pub pubsub_reps: usize,
    /// Out-of-range → in-range moves.
    pub moves: usize,
}

impl Shape {
    /// The full run (about 2½ minutes).
    pub fn full() -> Self {
        Self {
            bulk_reps: 3,
            dials: 10,
            round_trips: 20,
            rpc_calls: 50,
            pubsub_reps: 1,
            moves: 5,
        }
    }

    /// Fewer repetitions, same shape (about a minute).
    pub fn quick() -> Self {
        Self {
            bulk_reps: 1,
            dials: 5,
            round_trips: 10,
            rpc_calls: 20,
            pubsub_reps: 1,
            moves: 3,
        }
    }
}

/// What the scenario measured.
pub struct Outcome {
    /// The figures.
    pub rows: Vec<Row>,
    /// Parts that could not be measured.
    pub skipped: Vec<Skipped>,
    /// `extra.ble`: the radio's configuration, fractions of capacity and the
    /// raw samples.
    pub extra: Value,
}

/// Payload bytes per second the link can carry: every segment of `mtu`
/// payload bytes costs `mtu + segment_overhead` bytes of airtime.
pub fn capacity_bytes_per_sec(c: &SimConfig) -> f64 {
    c.bandwidth_bps as f64 / 8.0 * c.mtu as f64 / (c.mtu + c.segment_overhead) as f64
}

fn kbps(bytes: usize, elapsed: Duration) -> f64 {
    bytes as f64 / elapsed.as_secs_f64() / 1e3
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

fn pattern(len: usize) -> Vec<u8> {
    (0..len).map(|i| (i * 31 % 251) as u8).collect()
}

/// A throughput row (kB/s), median of `values`.
fn rate_row(case: &str, system: &str, values: &[f64]) -> Row {
    Row {
        scenario: "ble".into(),
        case: case.into(),
        system: system.into(),
        unit: "kB/s".into(),
        value: median(values),
        p99: None,
        min: values.iter().cloned().reduce(f64::min),
        max: values.iter().cloned().reduce(f64::max),
        higher_is_better: true,
        ratio: None,
    }
}

/// A time row (ms): median and p99 of `samples`.
fn time_row(case: &str, system: &str, samples: &[Duration]) -> Row {
    let s = Summary::of(samples.to_vec());
    Row {
        scenario: "ble".into(),
        case: case.into(),
        system: system.into(),
        unit: "ms".into(),
        value: s.median_us / 1e3,
        p99: Some(s.p99_us / 1e3),
        min: Some(s.min_us / 1e3),
        max: Some(s.max_us / 1e3),
        higher_is_better: false,
        ratio: None,
    }
}

fn sim_config_json(c: &SimConfig) -> Value {
    json!({
        "mtu": c.mtu,
        "segment_overhead": c.segment_overhead,
        "bandwidth_bps": c.bandwidth_bps,
        "latency_ms": ms(c.latency),
        "drop_rate": c.drop_rate,
        "connection_setup_ms": ms(c.connection_setup),
        "window": c.window,
        "advertising_interval_ms": ms(c.advertising_interval),
    })
}

fn samples_ms(samples: &[Duration]) -> Vec<f64> {
    samples
        .iter()
        .map(|d| (ms(*d) * 100.0).round() / 100.0)
        .collect()
}

/// Runs the scenario.
pub async fn ble(quick: bool) -> Outcome {
    let shape = if quick { Shape::quick() } else { Shape::full() };
    let config = SimConfig::default();
    let capacity = capacity_bytes_per_sec(&config) / 1e3;
    let mut rows = vec![
        rate_row("bulk 1 MiB", "capacity/ble", &[capacity]),
        rate_row("pub/sub 16 KiB", "capacity/ble", &[capacity]),
    ];
    let mut skipped = Vec::new();
    let mut extra = json!({
        "sim_config": sim_config_json(&config),
        "capacity_kB_per_s": capacity,
        "shape": format!("{shape:?}"),
        "goal_bulk_fraction_of_capacity": 0.8,
    });

    eprintln!(
        "ble: raw sim link ({} × 1 MiB, {} dials, {} round trips)…",
        shape.bulk_reps, shape.dials, shape.round_trips
    );
    match raw_link(&config, shape).await {
        Ok(raw) => {
            let rates: Vec<f64> = raw.bulk.iter().map(|d| kbps(BULK, *d)).collect();
            // The link model's own figure: every segment's airtime back to
            // back, plus one latency; and how much longer the transfer took
            // per segment than that.
            let segments = BULK.div_ceil(config.mtu);
            let airtime = (BULK + segments * config.segment_overhead) as f64 * 8.0
                / config.bandwidth_bps as f64;
            let model = airtime + config.latency.as_secs_f64();
            let taken = median(&raw.bulk.iter().map(|d| d.as_secs_f64()).collect::<Vec<_>>());
            extra["sim_link"] = json!({
                "bulk_kB_per_s": rates,
                "bulk_fraction_of_capacity": median(&rates) / capacity,
                "model_kB_per_s": BULK as f64 / model / 1e3,
                "overrun_us_per_segment": (taken - model) / segments as f64 * 1e6,
                "round_trip_ms": samples_ms(&raw.round_trips),
                "dial_ms": samples_ms(&raw.dials),
            });
            rows.push(rate_row("bulk 1 MiB", "sim-link/ble", &rates));
            rows.push(time_row("rpc 64 B", "sim-link/ble", &raw.round_trips));
            rows.push(time_row("setup", "sim-link/ble", &raw.dials));
        }
        Err(e) => skipped.push(Skipped {
            system: "sim-link/ble".into(),
            reason: format!("{e:#}"),
        }),
    }

    eprintln!("ble: libp2p over BLE (noise + yamux)…");
    match libp2p_stream_figures(&config, shape).await {
        Ok(l) => {
            let rates: Vec<f64> = l.bulk.iter().map(|d| kbps(BULK, *d)).collect();
            extra["libp2p_stream"] = json!({
                "bulk_kB_per_s": rates,
                "bulk_fraction_of_capacity": median(&rates) / capacity,
                "round_trip_ms": samples_ms(&l.round_trips),
                "dial_ms": samples_ms(&l.dials),
            });
            rows.push(rate_row("bulk 1 MiB", "libp2p-stream/ble", &rates));
            rows.push(time_row("rpc 64 B", "libp2p-stream/ble", &l.round_trips));
            rows.push(time_row("setup", "libp2p-stream/ble", &l.dials));
        }
        Err(e) => skipped.push(Skipped {
            system: "libp2p-stream/ble".into(),
            reason: format!("{e:#}"),
        }),
    }
    match libp2p_ping(&config, shape).await {
        Ok(rtts) => {
            extra["libp2p_ping_ms"] = json!(samples_ms(&rtts));
            rows.push(time_row("rpc 64 B", "libp2p-ping/ble", &rtts));
        }
        Err(e) => skipped.push(Skipped {
            system: "libp2p-ping/ble".into(),
            reason: format!("{e:#}"),
        }),
    }

    eprintln!("ble: Atmosphere over BLE (LowPower profile)…");
    let mut ours = Ours::default();
    if let Err(e) = atmosphere_figures(&config, shape, &mut ours).await {
        skipped.push(Skipped {
            system: "atmosphere/ble".into(),
            reason: format!("{e:#}"),
        });
    }
    for (system, reason) in ours.skipped.drain(..) {
        skipped.push(Skipped { system, reason });
    }
    let mut ours_extra = json!({});
    if !ours.bulk.is_empty() {
        let rates: Vec<f64> = ours.bulk.iter().map(|d| kbps(BULK, *d)).collect();
        let fraction = median(&rates) / capacity;
        ours_extra["bulk_kB_per_s"] = json!(rates);
        ours_extra["bulk_fraction_of_capacity"] = json!(fraction);
        ours_extra["bulk_goal_met"] = json!(fraction >= 0.8);
        ours_extra["bulk_call_round_trip_ms"] = json!(samples_ms(&ours.bulk_calls));
        rows.push(rate_row("bulk 1 MiB", "atmosphere/ble", &rates));
    }
    if !ours.pubsub.is_empty() {
        let rates: Vec<f64> = ours.pubsub.iter().map(|d| kbps(PUBSUB_TOTAL, *d)).collect();
        ours_extra["pubsub_kB_per_s"] = json!(rates);
        ours_extra["pubsub_fraction_of_capacity"] = json!(median(&rates) / capacity);
        rows.push(rate_row("pub/sub 16 KiB", "atmosphere/ble", &rates));
    }
    if !ours.rpc.is_empty() {
        ours_extra["rpc_round_trip_ms"] = json!(samples_ms(&ours.rpc));
        rows.push(time_row("rpc 64 B", "atmosphere/ble", &ours.rpc));
    }
    if !ours.setup.is_empty() {
        ours_extra["setup_ms"] = json!(samples_ms(&ours.setup));
        ours_extra["setup_both_sides_ms"] = json!(samples_ms(&ours.setup_both));
        rows.push(time_row("setup", "atmosphere/ble", &ours.setup));
    }
    ours_extra["path_bytes"] = json!(ours.path_bytes);
    ours_extra["pubsub_deliveries"] = json!(ours.pubsub_detail);
    ours_extra["left_ble"] = json!(ours.left_ble);
    extra["atmosphere"] = ours_extra;
    // Rows in a fixed order: case by case, Atmosphere first.
    let case_order = ["bulk 1 MiB", "pub/sub 16 KiB", "rpc 64 B", "setup"];
    let system_order = [
        "atmosphere/ble",
        "libp2p-stream/ble",
        "libp2p-ping/ble",
        "sim-link/ble",
        "capacity/ble",
    ];
    let pos = |list: &[&str], s: &str| list.iter().position(|x| *x == s).unwrap_or(usize::MAX);
    rows.sort_by_key(|r| (pos(&case_order, &r.case), pos(&system_order, &r.system)));
    Outcome {
        rows,
        skipped,
        extra,
    }
}

// ---------------------------------------------------------------------------
// Raw simulated link.

struct LinkFigures {
    bulk: Vec<Duration>,
    round_trips: Vec<Duration>,
    dials: Vec<Duration>,
}

async fn raw_link(config: &SimConfig, shape: Shape) -> Result<LinkFigures> {
    let radio = SimRadio::new(config.clone())?;
    let a = radio.add_node(HERE, RANGE);
    let b = radio.add_node(NEAR, RANGE);
    let (psm, mut listener) = b.listen(None)?;

    let mut dials = Vec::new();
    for _ in 0..shape.dials {
        let start = Instant::now();
        let stream = a.dial(b.address(), psm).await?;
        dials.push(start.elapsed());
        let _ = listener.next().await.context("no inbound channel")?;
        drop(stream);
    }

    let data = pattern(BULK);
    let mut bulk = Vec::new();
    for _ in 0..shape.bulk_reps {
        let mut tx = a.dial(b.address(), psm).await?;
        let (mut rx, _) = listener.next().await.context("no inbound channel")?;
        let reader = tokio::spawn(async move {
            let mut got = Vec::with_capacity(BULK);
            rx.read_to_end(&mut got).await?;
            anyhow::Ok((got, Instant::now()))
        });
        let start = Instant::now();
        tx.write_all(&data).await?;
        tx.close().await?;
        let (got, end) = tokio::time::timeout(LIMIT, reader)
            .await
            .context("raw transfer timed out")???;
        if got != data {
            bail!("the raw link corrupted the transfer");
        }
        bulk.push(end - start);
    }

    let mut tx = a.dial(b.address(), psm).await?;
    let (rx, _) = listener.next().await.context("no inbound channel")?;
    let echo = tokio::spawn(echo_loop(rx));
    let round_trips = echo_round_trips(&mut tx, shape.round_trips).await?;
    echo.abort();
    Ok(LinkFigures {
        bulk,
        round_trips,
        dials,
    })
}

/// Echoes `SMALL`-byte messages until the stream ends.
async fn echo_loop<S: futures::AsyncRead + futures::AsyncWrite + Unpin>(
    mut stream: S,
) -> Result<()> {
    let mut buf = [0u8; SMALL];
    loop {
        if stream.read_exact(&mut buf).await.is_err() {
            return Ok(());
        }
        stream.write_all(&buf).await?;
        stream.flush().await?;
    }
}

/// `n` measured `SMALL`-byte round trips (after 3 unmeasured ones).
async fn echo_round_trips<S: futures::AsyncRead + futures::AsyncWrite + Unpin>(
    stream: &mut S,
    n: usize,
) -> Result<Vec<Duration>> {
    let msg = [7u8; SMALL];
    let mut back = [0u8; SMALL];
    let mut samples = Vec::with_capacity(n);
    for i in 0..n + 3 {
        let start = Instant::now();
        tokio::time::timeout(LIMIT, async {
            stream.write_all(&msg).await?;
            stream.flush().await?;
            stream.read_exact(&mut back).await
        })
        .await
        .context("echo timed out")??;
        if i >= 3 {
            samples.push(start.elapsed());
        }
    }
    Ok(samples)
}

// ---------------------------------------------------------------------------
// libp2p over the simulated radio.

fn ble_swarm<B: NetworkBehaviour>(node: SimNode, behaviour: B) -> Result<Swarm<B>> {
    Ok(SwarmBuilder::with_new_identity()
        .with_tokio()
        .with_other_transport(|key| upgraded(node, key))
        .map_err(|e| anyhow!("BLE transport: {e}"))?
        .with_behaviour(|_| behaviour)
        .map_err(|e| anyhow!("behaviour: {e}"))?
        .with_swarm_config(|c| c.with_idle_connection_timeout(Duration::from_secs(600)))
        .build())
}

/// Listens on a dynamic PSM; returns the address with `/p2p/<peer>`.
async fn listen<B: NetworkBehaviour>(s: &mut Swarm<B>) -> Result<Multiaddr> {
    s.listen_on("/memory/0".parse()?)?;
    let peer = *s.local_peer_id();
    tokio::time::timeout(LIMIT, async {
        loop {
            if let SwarmEvent::NewListenAddr { address, .. } = s.select_next_some().await {
                return address.with(Protocol::P2p(peer));
            }
        }
    })
    .await
    .context("no listen address")
}

/// Commands to a dialing swarm's task.
enum Cmd {
    /// Dial; answer with the time until `ConnectionEstablished`.
    Dial(Multiaddr, oneshot::Sender<Result<Duration, String>>),
    /// Close every connection to the peer; answer once closed.
    Disconnect(libp2p::PeerId, oneshot::Sender<()>),
}

/// Drives a listening swarm (events dropped) until aborted.
fn drive<B>(mut swarm: Swarm<B>) -> JoinHandle<()>
where
    B: NetworkBehaviour + Send + 'static,
{
    tokio::spawn(async move {
        loop {
            swarm.select_next_some().await;
        }
    })
}

/// Drives a dialing swarm: runs [`Cmd`]s, forwards behaviour events.
fn drive_dialer<B>(
    mut swarm: Swarm<B>,
    mut cmds: mpsc::Receiver<Cmd>,
    events: mpsc::UnboundedSender<B::ToSwarm>,
) -> JoinHandle<()>
where
    B: NetworkBehaviour + Send + 'static,
    B::ToSwarm: Send,
{
    tokio::spawn(async move {
        let mut dialing: Option<(Instant, oneshot::Sender<Result<Duration, String>>)> = None;
        let mut closing: Option<oneshot::Sender<()>> = None;
        loop {
            tokio::select! {
                cmd = cmds.recv() => match cmd {
                    None => return,
                    Some(Cmd::Dial(addr, reply)) => {
                        let start = Instant::now();
                        match swarm.dial(addr) {
                            Ok(()) => dialing = Some((start, reply)),
                            Err(e) => { let _ = reply.send(Err(e.to_string())); }
                        }
                    }
                    Some(Cmd::Disconnect(peer, reply)) => {
                        if swarm.disconnect_peer_id(peer).is_ok() {
                            closing = Some(reply);
                        } else {
                            let _ = reply.send(());
                        }
                    }
                },
                event = swarm.select_next_some() => match event {
                    SwarmEvent::ConnectionEstablished { .. } => {
                        if let Some((start, reply)) = dialing.take() {
                            let _ = reply.send(Ok(start.elapsed()));
                        }
                    }
                    SwarmEvent::OutgoingConnectionError { error, .. } => {
                        if let Some((_, reply)) = dialing.take() {
                            let _ = reply.send(Err(error.to_string()));
                        }
                    }
                    SwarmEvent::ConnectionClosed { num_established: 0, .. } => {
                        if let Some(reply) = closing.take() {
                            let _ = reply.send(());
                        }
                    }
                    SwarmEvent::Behaviour(e) => { let _ = events.send(e); }
                    _ => {}
                },
            }
        }
    })
}

async fn dial(cmds: &mpsc::Sender<Cmd>, addr: &Multiaddr) -> Result<Duration> {
    let (tx, rx) = oneshot::channel();
    cmds.send(Cmd::Dial(addr.clone(), tx))
        .await
        .map_err(|_| anyhow!("swarm task gone"))?;
    tokio::time::timeout(LIMIT, rx)
        .await
        .context("dial timed out")??
        .map_err(|e| anyhow!("dial failed: {e}"))
}

async fn disconnect(cmds: &mpsc::Sender<Cmd>, peer: libp2p::PeerId) -> Result<()> {
    let (tx, rx) = oneshot::channel();
    cmds.send(Cmd::Disconnect(peer, tx))
        .await
        .map_err(|_| anyhow!("swarm task gone"))?;
    tokio::time::timeout(LIMIT, rx)
        .await
        .context("disconnect timed out")??;
    Ok(())
}

async fn libp2p_stream_figures(config: &SimConfig, shape: Shape) -> Result<LinkFigures> {
    let radio = SimRadio::new(config.clone())?;
    let sa = ble_swarm(radio.add_node(HERE, RANGE), libp2p_stream::Behaviour::new())?;
    let mut sb = ble_swarm(radio.add_node(NEAR, RANGE), libp2p_stream::Behaviour::new())?;
    let mut control = sa.behaviour().new_control();
    let mut server = sb.behaviour().new_control();
    let mut bulk_in = server.accept(BULK_PROTO)?;
    let mut echo_in = server.accept(ECHO_PROTO)?;
    let addr = listen(&mut sb).await?;
    let pb = *sb.local_peer_id();
    let (cmd_tx, cmd_rx) = mpsc::channel(4);
    let (ev_tx, _ev_rx) = mpsc::unbounded_channel();
    let tasks = [drive(sb), drive_dialer(sa, cmd_rx, ev_tx)];

    let result = async {
        // Fresh dials: the first connection, then disconnect and dial again.
        let mut dials = Vec::new();
        for i in 0..shape.dials {
            if i > 0 {
                disconnect(&cmd_tx, pb).await?;
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            dials.push(dial(&cmd_tx, &addr).await?);
        }

        // Bulk: the receiving task reports when it has read the last byte.
        let (done_tx, mut done_rx) = mpsc::unbounded_channel();
        let receiver = tokio::spawn(async move {
            while let Some((_peer, mut stream)) = bulk_in.next().await {
                let mut got = Vec::with_capacity(BULK);
                let read = stream.read_to_end(&mut got).await;
                let end = Instant::now();
                let _ = stream.close().await;
                let _ = done_tx.send(read.map(|_| (got, end)));
            }
        });
        let data = pattern(BULK);
        let mut bulk = Vec::new();
        for _ in 0..shape.bulk_reps {
            let mut stream = control
                .open_stream(pb, BULK_PROTO)
                .await
                .map_err(|e| anyhow!("open stream: {e}"))?;
            let start = Instant::now();
            stream.write_all(&data).await?;
            stream.close().await?;
            let (got, end) = tokio::time::timeout(LIMIT, done_rx.recv())
                .await
                .context("libp2p transfer timed out")?
                .context("receiver gone")??;
            if got != data {
                bail!(
                    "the libp2p transfer arrived corrupted ({} bytes)",
                    got.len()
                );
            }
            bulk.push(end - start);
        }
        receiver.abort();

        let echo = tokio::spawn(async move {
            if let Some((_peer, stream)) = echo_in.next().await {
                let _ = echo_loop(stream).await;
            }
        });
        let mut stream = control
            .open_stream(pb, ECHO_PROTO)
            .await
            .map_err(|e| anyhow!("open stream: {e}"))?;
        let round_trips = echo_round_trips(&mut stream, shape.round_trips).await?;
        echo.abort();
        Ok(LinkFigures {
            bulk,
            round_trips,
            dials,
        })
    }
    .await;
    for t in tasks {
        t.abort();
    }
    result
}

async fn libp2p_ping(config: &SimConfig, shape: Shape) -> Result<Vec<Duration>> {
    let radio = SimRadio::new(config.clone())?;
    let behaviour =
        || ping::Behaviour::new(ping::Config::new().with_interval(Duration::from_millis(100)));
    let sa = ble_swarm(radio.add_node(HERE, RANGE), behaviour())?;
    let mut sb = ble_swarm(radio.add_node(NEAR, RANGE), behaviour())?;
    let addr = listen(&mut sb).await?;
    let (cmd_tx, cmd_rx) = mpsc::channel(4);
    let (ev_tx, mut ev_rx) = mpsc::unbounded_channel();
    let tasks = [drive(sb), drive_dialer(sa, cmd_rx, ev_tx)];
    let result = async {
        dial(&cmd_tx, &addr).await?;
        let mut rtts = Vec::new();
        let mut seen = 0;
        while rtts.len() < shape.round_trips {
            let event: ping::Event = tokio::time::timeout(LIMIT, ev_rx.recv())
                .await
                .context("no ping in time")?
                .context("swarm task gone")?;
            let rtt = event.result.map_err(|e| anyhow!("ping failed: {e}"))?;
            seen += 1;
            // The first pings include opening and negotiating the stream.
            if seen > 2 {
                rtts.push(rtt);
            }
        }
        Ok(rtts)
    }
    .await;
    for t in tasks {
        t.abort();
    }
    result
}

// ---------------------------------------------------------------------------
// Atmosphere over the simulated radio.

/// Atmosphere's samples; a part that failed is listed in `skipped` and the
/// others are still reported.
#[derive(Default)]
struct Ours {
    rpc: Vec<Duration>,
    bulk: Vec<Duration>,
    bulk_calls: Vec<Duration>,
    pubsub: Vec<Duration>,
    /// Per pub/sub repetition: how the deliveries were paced.
    pubsub_detail: Vec<Value>,
    setup: Vec<Duration>,
    setup_both: Vec<Duration>,
    /// Per part: payload bytes and what b's BLE path counted.
    path_bytes: Vec<Value>,
    /// Attempts whose traffic left the BLE path (or failed), with why.
    left_ble: Vec<Value>,
    skipped: Vec<(String, String)>,
}

struct Member {
    node: Node,
    sim: SimNode,
    _dir: TempDir,
}

async fn member(radio: &SimRadio, name: &str, at: Position) -> Result<Member> {
    let dir = tempfile::tempdir().context("temporary data directory")?;
    let mut config = Config::ephemeral(dir.path());
    config.name = Some(name.to_owned());
    config.device_profile = DeviceProfile::LowPower;
    config.subscription_buffer = 1 << 16;
    let sim = radio.add_node(at, RANGE);
    let node = NodeBuilder::new(config)
        .ble(BoxedLink::new(sim.clone()))
        .build()
        .await
        .with_context(|| format!("starting {name}"))?;
    Ok(Member {
        node,
        sim,
        _dir: dir,
    })
}

async fn paths(node: &Node, peer: PeerId) -> Vec<PathStatus> {
    node.peers()
        .await
        .ok()
        .and_then(|peers| peers.into_iter().find(|p| p.peer_id == peer.to_string()))
        .map(|p| p.paths)
        .unwrap_or_default()
}

fn active(paths: &[PathStatus]) -> Option<&PathStatus> {
    paths.iter().find(|p| p.role == "active")
}

/// Polls (every 10 ms) until `node`'s active path to `peer` is of `class`
/// and, if `no_ble`, no BLE path is left.
async fn wait_active(node: &Node, peer: PeerId, class: &str, no_ble: bool) -> Result<PathStatus> {
    let deadline = Instant::now() + LIMIT;
    loop {
        let now = paths(node, peer).await;
        if let Some(a) = active(&now).filter(|a| a.class == class) {
            if !no_ble || now.iter().all(|p| p.class != "ble") {
                return Ok(a.clone());
            }
        }
        if Instant::now() > deadline {
            bail!("no active {class} path after {LIMIT:?}: {now:?}");
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Waits until `node` sees `peer` announce `name` (subscription or registration).
async fn wait_announced(node: &Node, peer: PeerId, name: &str) -> Result<()> {
    let deadline = Instant::now() + LIMIT;
    while Instant::now() < deadline {
        let seen = node.peers().await?.iter().any(|p| {
            p.peer_id == peer.to_string()
                && (p.subscriptions.iter().any(|s| s == name)
                    || p.registrations.iter().any(|r| r == name))
        });
        if seen {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    bail!("{name} was never announced")
}

/// The pair of members: b sends (caller, publisher, the one that moves),
/// a serves (handlers, subscriber).
struct Pair<'a> {
    a: &'a Member,
    b: &'a Member,
    pa: PeerId,
    pb: PeerId,
}

/// A path switch either side reported during a part.
fn describe(side: &str, e: &PeerEvent, started_ms: u64) -> Option<String> {
    let switch = e.switch.as_ref()?;
    Some(format!(
        "{side}: {} → {} ({}) at +{:.2} s",
        switch.from.as_deref().unwrap_or("none"),
        switch.to.as_deref().unwrap_or("none"),
        switch.reason,
        e.at_ms.saturating_sub(started_ms) as f64 / 1e3,
    ))
}

/// Both sides' active path is BLE at the start of a part; watches the part
/// (path switches from both nodes' peer events, b's BLE heartbeat RTT every
/// 200 ms) and checks the BLE path's byte counter after it.
struct PathCheck {
    before: PathStatus,
    started: Instant,
    started_ms: u64,
    events: [tokio::sync::broadcast::Receiver<PeerEvent>; 2],
    stop: oneshot::Sender<()>,
    /// Largest smoothed heartbeat RTT of b's BLE path seen, ms.
    watcher: JoinHandle<f64>,
}

fn unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

impl PathCheck {
    /// Waits (up to 30 s) until both sides' active path has been the same
    /// BLE connection for a second (outstanding frames acknowledged, no
    /// switch under way), then starts watching.
    async fn start(p: &Pair<'_>) -> Result<Self> {
        let deadline = Instant::now() + Duration::from_secs(30);
        let mut stable: Option<(Instant, u64)> = None;
        let before = loop {
            let b_paths = paths(&p.b.node, p.pa).await;
            let a_paths = paths(&p.a.node, p.pb).await;
            let on_ble = |ps: &[PathStatus]| {
                active(ps)
                    .filter(|x| x.class == "ble")
                    .map(|x| x.connection)
            };
            match (on_ble(&b_paths), on_ble(&a_paths)) {
                (Some(c), Some(_)) => match stable {
                    Some((since, same)) if same == c => {
                        if since.elapsed() >= Duration::from_secs(1) {
                            if let Some(x) = active(&b_paths) {
                                break x.clone();
                            }
                        }
                    }
                    _ => stable = Some((Instant::now(), c)),
                },
                _ => stable = None,
            }
            if Instant::now() > deadline {
                bail!(
                    "the active path is not BLE on both sides (b: {:?}; a: {:?})",
                    active(&b_paths),
                    active(&a_paths)
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        };
        let events = [p.b.node.peer_events(), p.a.node.peer_events()];
        let (stop, mut stopped) = oneshot::channel::<()>();
        let (node, pa, connection) = (p.b.node.clone(), p.pa, before.connection);
        let watcher = tokio::spawn(async move {
            let mut max_rtt = 0.0f64;
            loop {
                if let Some(ble) = paths(&node, pa)
                    .await
                    .into_iter()
                    .find(|x| x.connection == connection)
                {
                    max_rtt = max_rtt.max(ble.rtt_ms.unwrap_or(0.0));
                }
                tokio::select! {
                    _ = &mut stopped => return max_rtt,
                    _ = tokio::time::sleep(Duration::from_millis(200)) => {}
                }
            }
        });
        Ok(Self {
            before,
            started: Instant::now(),
            started_ms: unix_ms(),
            events,
            stop,
            watcher,
        })
    }

    /// Whether the traffic stayed on b's BLE path and at least `payload` app
    /// bytes went out on it; returns what the path counted, or why the
    /// figure does not count.
    async fn finish(mut self, p: &Pair<'_>, part: &str, payload: usize) -> Result<Value, String> {
        let elapsed = self.started.elapsed();
        let _ = self.stop.send(());
        let max_rtt = self.watcher.await.unwrap_or_default();
        let mut switches = Vec::new();
        for (side, events) in ["b", "a"].iter().zip(self.events.iter_mut()) {
            while let Ok(e) = events.try_recv() {
                if let Some(s) = describe(side, &e, self.started_ms) {
                    switches.push(s);
                }
            }
        }
        let now = paths(&p.b.node, p.pa).await;
        let after = now.iter().find(|x| x.connection == self.before.connection);
        let sent = after.map_or(0, |x| x.app_bytes_sent - self.before.app_bytes_sent);
        let received = after.map_or(0, |x| x.app_bytes_received - self.before.app_bytes_received);
        let still_active = after.is_some_and(|x| x.role == "active" && x.class == "ble");
        if !switches.is_empty() || !still_active {
            return Err(format!(
                "the traffic left the BLE path during the {part} (switches: {}; b's BLE path \
                 now: {}; largest heartbeat RTT seen {max_rtt:.0} ms); {sent} app bytes were \
                 written to the BLE path for {payload} payload bytes; the part took {:.2} s \
                 ({:.1} kB/s, not all over BLE)",
                if switches.is_empty() {
                    "none reported".to_owned()
                } else {
                    switches.join(", ")
                },
                after.map_or_else(
                    || "gone".to_owned(),
                    |x| format!("{}, healthy {}", x.role, x.healthy)
                ),
                elapsed.as_secs_f64(),
                payload as f64 / elapsed.as_secs_f64() / 1e3,
            ));
        }
        if sent < payload as u64 {
            return Err(format!(
                "only {sent} of {payload} payload bytes went out on the BLE path during the {part}"
            ));
        }
        Ok(json!({
            "part": part,
            "payload_bytes": payload,
            "app_bytes_sent": sent,
            "app_bytes_received": received,
            "sent_per_payload_byte": sent as f64 / payload as f64,
            "max_heartbeat_rtt_ms": max_rtt,
        }))
    }
}

/// How pub/sub deliveries were paced: messages that arrived more than 20 ms
/// after the previous one came at the radio's pace; a burst of quick ones
/// after the last of those came over another path (loopback) at once.
fn pacing(start: Instant, arrivals: &[Instant]) -> Value {
    let gaps: Vec<Duration> = std::iter::once(start)
        .chain(arrivals.iter().copied())
        .collect::<Vec<_>>()
        .windows(2)
        .map(|w| w[1] - w[0])
        .collect();
    let slow = Duration::from_millis(20);
    // Deliveries up to the last slow gap were paced by the radio.
    let paced = gaps.iter().rposition(|g| *g > slow).map_or(0, |i| i + 1);
    let radio_time: Duration = gaps[1..paced.max(1)].iter().sum();
    let radio_rate = if paced > 1 {
        kbps((paced - 1) * PUBSUB_MSG, radio_time)
    } else {
        0.0
    };
    let burst = arrivals.len() - paced;
    let summary = format!(
        "{paced} of {} messages at the radio's pace ({radio_rate:.1} kB/s between the first \
         and the {paced}th), first after {:.0} ms; then {burst} within {:.0} ms",
        arrivals.len(),
        gaps.first().map_or(0.0, |g| ms(*g)),
        if burst > 0 && paced > 0 {
            ms(arrivals[arrivals.len() - 1] - arrivals[paced - 1])
        } else {
            0.0
        },
    );
    json!({
        "messages": arrivals.len(),
        "paced_by_radio": paced,
        "radio_rate_kB_per_s": radio_rate,
        "burst_after": burst,
        "summary": summary,
    })
}

async fn atmosphere_figures(config: &SimConfig, shape: Shape, ours: &mut Ours) -> Result<()> {
    let radio = SimRadio::new(config.clone())?;
    let a = member(&radio, "ble-a", HERE).await?;
    let b = member(&radio, "ble-b", NEAR).await?;
    let pair = Pair {
        a: &a,
        b: &b,
        pa: a.node.peer_id(),
        pb: b.node.peer_id(),
    };
    let result = measure_ours(&pair, shape, ours).await;
    a.node.shutdown().await;
    b.node.shutdown().await;
    result
}

/// Attempts per Atmosphere part: one more when the traffic left the BLE
/// path (each attempt that did is listed in `extra.ble.atmosphere.left_ble`).
const ATTEMPTS: usize = 2;

/// One attempt at a part: the samples `run` gives, and whether they count
/// (the traffic stayed on the BLE path), with what the path counted.
async fn attempt<T>(
    p: &Pair<'_>,
    name: &str,
    payload: usize,
    run: impl std::future::Future<Output = Result<T>>,
) -> (Result<T, String>, Result<Value, String>) {
    let check = match PathCheck::start(p).await {
        Ok(c) => c,
        Err(e) => {
            let e = format!("{e:#}");
            return (Err(e.clone()), Err(e));
        }
    };
    let samples = run.await.map_err(|e| format!("{e:#}"));
    let checked = check.finish(p, name, payload).await;
    (samples, checked)
}

impl Ours {
    /// Books attempt `n` of part `name`: the samples if they count; else the
    /// reason, and on the last attempt the part is listed as not measured.
    fn book<T>(
        &mut self,
        name: &str,
        n: usize,
        (samples, checked): (Result<T, String>, Result<Value, String>),
    ) -> Option<T> {
        let reason = match (samples, checked) {
            (Ok(samples), Ok(bytes)) => {
                self.path_bytes.push(bytes);
                return Some(samples);
            }
            (Err(e), _) => e,
            (Ok(_), Err(reason)) => reason,
        };
        eprintln!("ble: atmosphere {name}, attempt {n}/{ATTEMPTS}: {reason}");
        self.left_ble
            .push(json!({ "part": name, "attempt": n, "reason": reason }));
        if n == ATTEMPTS {
            self.skipped
                .push((format!("atmosphere/ble {name}"), reason));
        }
        None
    }
}

async fn measure_ours(p: &Pair<'_>, shape: Shape, ours: &mut Ours) -> Result<()> {
    let (na, nb) = (&p.a.node, &p.b.node);
    let (pa, pb) = (p.pa, p.pb);
    na.create_mesh("bench-ble").await?;
    let invite = na.invite(None, InviteOptions::default()).await?;
    nb.join(&invite.uri).await?;
    let joined = Instant::now();
    wait_active(nb, pa, "ble", false).await?;
    wait_active(na, pb, "ble", false).await?;
    eprintln!(
        "ble: both sides on BLE {:.1} s after the join",
        joined.elapsed().as_secs_f64()
    );

    // Handlers on a: an echo, and a sink that notes when a request arrived.
    na.register("bench.echo", |r: Request| async move { Ok(r.args) })
        .await?;
    let (arrived_tx, mut arrived_rx) = mpsc::unbounded_channel::<Instant>();
    na.register("bench.sink", move |_r: Request| {
        let arrived = arrived_tx.clone();
        async move {
            let _ = arrived.send(Instant::now());
            Ok(Bytes::new())
        }
    })
    .await?;
    wait_announced(nb, pa, "bench.echo").await?;
    wait_announced(nb, pa, "bench.sink").await?;
    let options = CallOptions {
        timeout: LIMIT,
        peer: Some(pa),
    };

    // RPC round trips, 64 bytes.
    eprintln!("ble: atmosphere rpc 64 B × {}…", shape.rpc_calls);
    let small = Bytes::from(vec![7u8; SMALL]);
    let calls = shape.rpc_calls + 3;
    for n in 1..=ATTEMPTS {
        let run = async {
            let mut rpc = Vec::new();
            for i in 0..calls {
                let start = Instant::now();
                nb.call("bench.echo", small.clone(), options.clone())
                    .await
                    .map_err(|e| anyhow!("rpc: {e}"))?;
                if i >= 3 {
                    rpc.push(start.elapsed());
                }
            }
            Ok(rpc)
        };
        let outcome = attempt(p, "rpc 64 B", SMALL * calls, run).await;
        if let Some(rpc) = ours.book("rpc 64 B", n, outcome) {
            ours.rpc = rpc;
            break;
        }
    }

    // Bulk: one 1 MiB request per repetition.
    eprintln!("ble: atmosphere bulk 1 MiB × {}…", shape.bulk_reps);
    let blob = Bytes::from(pattern(BULK));
    for n in 1..=ATTEMPTS {
        let run = async {
            let (mut bulk, mut calls) = (Vec::new(), Vec::new());
            for _ in 0..shape.bulk_reps {
                while arrived_rx.try_recv().is_ok() {}
                let start = Instant::now();
                nb.call("bench.sink", blob.clone(), options.clone())
                    .await
                    .map_err(|e| anyhow!("1 MiB call: {e}"))?;
                calls.push(start.elapsed());
                let arrived = arrived_rx.recv().await.context("sink gone")?;
                bulk.push(arrived - start);
            }
            Ok((bulk, calls))
        };
        let outcome = attempt(p, "bulk 1 MiB", BULK * shape.bulk_reps, run).await;
        if let Some((bulk, calls)) = ours.book("bulk 1 MiB", n, outcome) {
            ours.bulk = bulk;
            ours.bulk_calls = calls;
            break;
        }
    }

    // Pub/sub: 16 KiB messages, 2 MiB per repetition.
    let count = PUBSUB_TOTAL / PUBSUB_MSG;
    eprintln!(
        "ble: atmosphere pub/sub 16 KiB × {count}, {}×…",
        shape.pubsub_reps
    );
    let mut topic_round = 0;
    for n in 1..=ATTEMPTS {
        let mut detail = Vec::new();
        let run = async {
            let mut pubsub = Vec::new();
            for _ in 0..shape.pubsub_reps {
                topic_round += 1;
                let topic = format!("bench.ble.r{topic_round}");
                let mut sub = na.subscribe(&topic).await?;
                wait_announced(nb, pa, &topic).await?;
                let counter = tokio::spawn(async move {
                    let mut arrivals = Vec::with_capacity(count);
                    while arrivals.len() < count {
                        match sub.recv().await {
                            Some(_) => arrivals.push(Instant::now()),
                            None => break,
                        }
                    }
                    (arrivals, sub.dropped())
                });
                let payload = Bytes::from(vec![7u8; PUBSUB_MSG]);
                let start = Instant::now();
                for _ in 0..count {
                    nb.publish(&topic, payload.clone()).await?;
                }
                let (arrivals, dropped) = tokio::time::timeout(LIMIT, counter)
                    .await
                    .context("the subscriber did not get every message in time")??;
                let Some(end) = arrivals.last().copied().filter(|_| arrivals.len() == count) else {
                    bail!(
                        "only {} of {count} messages arrived ({dropped} dropped)",
                        arrivals.len()
                    );
                };
                pubsub.push(end - start);
                detail.push(pacing(start, &arrivals));
            }
            Ok(pubsub)
        };
        let (samples, checked) =
            attempt(p, "pub/sub 16 KiB", PUBSUB_TOTAL * shape.pubsub_reps, run).await;
        // How the deliveries were paced tells how much crossed the radio.
        let paced: Vec<String> = detail
            .iter()
            .map(|d| d["summary"].as_str().unwrap_or_default().to_owned())
            .collect();
        let checked = checked.map_err(|reason| {
            if paced.is_empty() {
                reason
            } else {
                format!("{reason}. Deliveries: {}", paced.join("; "))
            }
        });
        ours.pubsub_detail.extend(detail);
        if let Some(pubsub) = ours.book("pub/sub 16 KiB", n, (samples, checked)) {
            ours.pubsub = pubsub;
            break;
        }
    }

    // Setup: out of range (both fall back to the LAN path), then back in.
    eprintln!("ble: atmosphere setup, {} moves into range…", shape.moves);
    // The time out of range varies (0.5 s, 1.5 s, … after both sides are
    // back on the LAN path), so that moves land at different points of the
    // nodes' 5 s BLE probe cycle.
    for i in 0..shape.moves {
        p.b.sim.move_to(FAR)?;
        wait_active(nb, pa, "lan", true).await?;
        wait_active(na, pb, "lan", true).await?;
        tokio::time::sleep(Duration::from_millis(500 + 1000 * (i as u64 % 5))).await;
        let start = Instant::now();
        p.b.sim.move_to(NEAR)?;
        wait_active(nb, pa, "ble", false).await?;
        ours.setup.push(start.elapsed());
        wait_active(na, pb, "ble", false).await?;
        ours.setup_both.push(start.elapsed());
    }
    Ok(())
}
