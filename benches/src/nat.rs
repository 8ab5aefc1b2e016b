//! `mesh-bench nat`: relays and DCUtR hole punching behind NATs in the
//! network lab.
//!
//! The topology of `node/tests/nat.rs`: a simulated internet (`lab.internet()`)
//! with a public host running the relay (a mesh member with the relay
//! server on, listening on its public address, 20 ms one-way uplink delay:
//! a relay in a nearby region), and two home routers, each with one host
//! behind it and a 50 ms one-way uplink delay. A direct message crosses the
//! two home uplinks (100 ms one way); a relayed one also goes up and down
//! the relay's (140 ms). Three NAT combinations, each in its own lab: both routers
//! endpoint-independent (EIM), one EIM and one address-dependent
//! ("symmetric"), both symmetric.
//!
//! One **attempt** is a fresh pair of members (new nodes, fresh temporary
//! data directories, so fresh identities and ports) meeting through the
//! relay; the lab, the routers, their hosts and the relay node are reused
//! within a combination, and every attempt uses a mesh of its own on the
//! relay (created before, forgotten after, so old members are not dialed).
//! EIM↔EIM runs one pair at a time. A failed punch is only reported after
//! DCUtR's three rounds (about 16 s), so the symmetric combinations run 5
//! pairs at once, each on an internet of its own (its own ISP, relay and
//! routers): pairs of different meshes on one relay find and dial each other,
//! which would disturb them. Per attempt:
//!
//! 1. alice (behind the first router) joins and waits for her reservation
//!    on the relay, then subscribes;
//! 2. the clock starts and bob (behind the second router) joins; as soon as
//!    the join returns he publishes a 64-byte numbered message every 20 ms.
//!    Before each publish he reads the class of his active path to alice
//!    (`peers()`), so every message is tagged relayed, direct or none
//!    (no active path yet: queued in the outbox, not used for latency);
//! 3. the pair is watched until both sides' active path is `direct` (then
//!    2 s more of direct traffic), or until the hole punch reported its
//!    failure (`dcutr_attempts` > 0 with no success; then 2 s more of
//!    relayed traffic), or 30 s after the join;
//! 4. both members are shut down.
//!
//! Figures per combination:
//!
//! * **join → first message over the relay**: from the start of bob's
//!   `join` to alice receiving the first message bob sent while his active
//!   path was relayed;
//! * **relayed → direct**: the node's own `last_time_to_direct_ms`, from the
//!   first relayed connection to the DCUtR success (the later of the two
//!   sides; polled, because a second success on the same pair, when both
//!   sides dialed through the relay, reports none), and **join → direct**:
//!   from the join until both sides' active path is direct (the train has
//!   switched);
//! * **hole-punch success**: attempts that ended direct with a DCUtR
//!   success, of all attempts that got as far as a relayed connection; where
//!   the punch failed, whether both sides ended `Relayed { via: <relay> }`,
//!   whether messages kept arriving after the failure, and how many times
//!   either side saw the other go `Offline` (must be 0). The node does not
//!   count DCUtR rounds; a success within 5 s of the relayed connection came
//!   in the first round (a failed round lasts until the 5 s QUIC handshake
//!   timeout);
//! * **pub/sub latency**: one way, bob → alice, from the `publish` call to
//!   the subscription handing the message over (both nodes run in this
//!   process, so one monotonic clock), split by the class the message was
//!   sent on. Messages sent within 500 ms before the first direct-tagged
//!   message (they may have crossed the switch, or been replayed on the new
//!   path) and within 500 ms after it are left out. Relayed and direct
//!   samples of the EIM↔EIM attempts come from the same pairs; the symmetric
//!   combinations only give relayed samples, and the pooled figures put all
//!   combinations together.
//!
//! The relay's link has no added delay, so a relayed message crosses the same
//! two 50 ms uplinks as a direct one: the relayed/direct ratio shows what the
//! relay itself costs (one more hop, its processing, the circuit's second
//! layer of encryption and multiplexing), not the detour to a far relay.
//!
//! Anchors printed beside the figures (real networks, a mix of NATs, so not
//! like-for-like with one lab combination): libp2p's hole-punching
//! measurement campaign, about 70 % DCUtR success, 97.6 % of successes on
//! the first attempt; iroh, about 90 % of connections direct.

use std::{
    collections::HashMap,
    sync::{
        atomic::{AtomicBool, AtomicUsize, Ordering},
        Arc, Mutex,
    },
    time::{Duration, Instant},
};

use anyhow::{anyhow, bail, Context, Result};
use atmosphere::{
    listen_on_port, Config, InviteOptions, MemberStatus, Node, PathStatus, PeerId, RelayStatus,
};
use atmosphere_lab::{Device, Host, Lab, NatKind};
use bytes::Bytes;
use serde::Serialize;

use crate::{
    labnode::{self, wait_for, LabNode},
    report::Row,
    stats::median,
};

/// One-way delay of each home router's uplink.
const UPLINK_DELAY: Duration = Duration::from_millis(50);
/// One-way delay of the relay host's uplink.
const RELAY_DELAY: Duration = Duration::from_millis(20);
/// Interval between bob's messages (50 msg/s).
const SEND_EVERY: Duration = Duration::from_millis(20);
/// Payload size of a message.
const PAYLOAD: usize = 64;
/// Traffic kept up after the outcome (direct, or a failed punch).
const AFTER_OUTCOME: Duration = Duration::from_secs(2);
/// Longest an attempt waits for an outcome, from the join.
const PUNCH_DEADLINE: Duration = Duration::from_secs(30);
/// Messages sent this close to the relayed → direct switch are left out of
/// the latency figures.
const GUARD: Duration = Duration::from_millis(500);
/// The topic bob publishes on.
const TOPIC: &str = "bench.nat";
/// The end-of-stream marker.
const END: u32 = u32::MAX;

/// libp2p's measurement campaign: DCUtR success across real networks.
const ANCHOR_LIBP2P_PCT: f64 = 70.0;
/// libp2p's measurement campaign: share of successes on the first attempt.
const ANCHOR_LIBP2P_FIRST_PCT: f64 = 97.6;
/// iroh: share of connections that end up direct.
const ANCHOR_IROH_PCT: f64 = 90.0;

/// A hole punch that succeeds within this time of the relayed connection
/// succeeded in DCUtR's first round: a failed round lasts until libp2p-quic's
/// 5 s handshake timeout (measured here: rounds 5.5 s apart).
const FIRST_ROUND: f64 = 5000.0;
/// Pairs measured at once where a router maps address-dependently.
const SYMMETRIC_PARALLEL: usize = 5;

/// A NAT combination: the kinds of alice's and bob's routers, and how many
/// pairs run at once.
#[derive(Clone, Copy)]
struct Combo {
    label: &'static str,
    alice: NatKind,
    bob: NatKind,
    parallel: usize,
}

const COMBOS: [Combo; 3] = [
    Combo {
        label: "EIM↔EIM",
        alice: NatKind::EndpointIndependent,
        bob: NatKind::EndpointIndependent,
        parallel: 1,
    },
    Combo {
        label: "EIM↔symmetric",
        alice: NatKind::EndpointIndependent,
        bob: NatKind::AddressDependent,
        parallel: SYMMETRIC_PARALLEL,
    },
    Combo {
        label: "symmetric↔symmetric",
        alice: NatKind::AddressDependent,
        bob: NatKind::AddressDependent,
        parallel: SYMMETRIC_PARALLEL,
    },
];

/// Starts a node in `host` with fresh data (so a fresh identity), listening
/// on TCP and QUIC on ephemeral ports, after `tweak`.
async fn start(host: &Host, name: &str, tweak: impl FnOnce(&mut Config)) -> Result<LabNode> {
    labnode::start(host, name, |config| {
        config.listen = listen_on_port(0);
        tweak(config);
    })
    .await
}

/// `node`'s active path to `peer`: (class, remote address).
async fn active_path(node: &Node, peer: PeerId) -> Option<(String, String)> {
    node.peers()
        .await
        .ok()?
        .into_iter()
        .find(|p| p.peer_id == peer.to_string())?
        .paths
        .into_iter()
        .find(|p| p.role == "active")
        .map(|p| (p.class, p.remote_addr))
}

/// `node`'s open paths to `peer`.
async fn paths(node: &Node, peer: PeerId) -> Vec<PathStatus> {
    node.peers()
        .await
        .ok()
        .and_then(|peers| peers.into_iter().find(|p| p.peer_id == peer.to_string()))
        .map(|p| p.paths)
        .unwrap_or_default()
}

/// Takes the DCUtR counters of both sides. The time to direct is kept once
/// seen: a node reports it for its last success only, and a second success
/// on the same pair (two relayed connections, both upgraded) reports none.
fn note_counters(result: &mut Attempt, a: &RelayStatus, b: &RelayStatus) {
    result.dcutr_attempts = a.dcutr_attempts + b.dcutr_attempts;
    result.dcutr_successes = a.dcutr_successes + b.dcutr_successes;
    if let Some(v) = a.last_time_to_direct_ms.max(b.last_time_to_direct_ms) {
        let v = v as f64;
        result.relayed_to_direct_ms = Some(result.relayed_to_direct_ms.map_or(v, |x| x.max(v)));
    }
}

async fn member_status(node: &Node, peer: PeerId) -> Option<MemberStatus> {
    node.peers()
        .await
        .ok()?
        .into_iter()
        .find(|p| p.peer_id == peer.to_string())
        .map(|p| p.status)
}

async fn relay_status(node: &Node) -> Option<RelayStatus> {
    node.status().await.ok().map(|s| s.relay)
}

fn transport_of(addr: &str) -> &'static str {
    if addr.contains("/quic") {
        "quic"
    } else if addr.contains("/tcp/") {
        "tcp"
    } else {
        "other"
    }
}

/// One simulated internet: a relay and a host behind each of two routers.
struct Slot {
    relay: LabNode,
    alice: Device,
    bob: Device,
}

/// The lab of one combination: one [`Slot`] per pair measured at once, each
/// on an internet of its own, so that concurrent pairs share nothing but
/// the CPU (on one relay, members of different meshes would find and dial
/// each other).
struct Homes {
    slots: Vec<Slot>,
    // Dropped last: deletes the namespaces.
    _lab: Lab,
}

async fn homes(combo: Combo) -> Result<Homes> {
    let lab = Lab::new().context("lab")?;
    let mut slots = Vec::new();
    for k in 0..combo.parallel.max(1) {
        slots.push(slot(&lab, combo, k).await?);
    }
    Ok(Homes { slots, _lab: lab })
}

async fn slot(lab: &Lab, combo: Combo, k: usize) -> Result<Slot> {
    let internet = lab.internet().await.context("internet")?;
    let relay_dev = internet
        .add_public_host(&format!("relay{k}"))
        .await
        .context("relay host")?;
    let home_a = internet
        .add_router(&format!("home-a{k}"), combo.alice)
        .await
        .context("router home-a")?;
    let home_b = internet
        .add_router(&format!("home-b{k}"), combo.bob)
        .await
        .context("router home-b")?;
    for home in [&home_a, &home_b] {
        home.uplink()
            .set_delay(UPLINK_DELAY)
            .await
            .context("uplink delay")?;
    }
    relay_dev
        .uplink()
        .set_delay(RELAY_DELAY)
        .await
        .context("relay uplink delay")?;
    let alice = home_a
        .add_host(&format!("alice{k}"))
        .await
        .context("alice's host")?;
    let bob = home_b
        .add_host(&format!("bob{k}"))
        .await
        .context("bob's host")?;
    // As in node/tests/nat.rs: on the public host's point-to-point uplink
    // libp2p would report the peer's address for `0.0.0.0`; listen on the
    // host's own address.
    let public = relay_dev.addr();
    let relay_listen = vec![
        format!("/ip4/{public}/tcp/0")
            .parse()
            .context("relay TCP address")?,
        format!("/ip4/{public}/udp/0/quic-v1")
            .parse()
            .context("relay QUIC address")?,
    ];
    let relay = start(relay_dev.host(), &format!("relay{k}"), |c| {
        c.relay_server = true;
        c.listen = relay_listen;
    })
    .await?;
    Ok(Slot { relay, alice, bob })
}

/// A message bob published.
struct Sent {
    seq: u32,
    at: Instant,
    /// The class of bob's active path to alice just before.
    class: Option<String>,
    /// Remote subscribers it went to.
    to: usize,
}

/// What one attempt measured.
#[derive(Debug, Clone, Default, Serialize)]
struct Attempt {
    combo: String,
    index: usize,
    /// Why the attempt could not be measured (setup failed).
    error: Option<String>,
    /// A relayed connection existed (an active relayed path on bob's side).
    relayed: bool,
    /// Both sides ended with a direct active path and a DCUtR success.
    punched: bool,
    /// DCUtR outcomes reported by alice and bob together.
    dcutr_attempts: u64,
    dcutr_successes: u64,
    /// Join → alice receives the first message bob sent on the relayed path, ms.
    join_to_first_relayed_ms: Option<f64>,
    /// Join → alice receives the first message at all, ms, and its class.
    join_to_first_message_ms: Option<f64>,
    first_message_class: Option<String>,
    /// Join → the DCUtR failure reported (polled every 200 ms), ms.
    join_to_failure_ms: Option<f64>,
    /// First relayed connection → DCUtR success (node counter, the later side), ms.
    relayed_to_direct_ms: Option<f64>,
    /// First relayed path → first direct path on bob's side, as polled
    /// here every 50 ms.
    relayed_conn_to_direct_conn_ms: Option<f64>,
    /// Most relayed paths bob had to alice at once.
    max_relayed_paths: usize,
    /// Join → both sides' active path direct, ms.
    join_to_direct_ms: Option<f64>,
    /// Transports of the relayed and the direct path (bob's side).
    relayed_transport: Option<String>,
    direct_transport: Option<String>,
    /// After a failed punch: both sides `Relayed { via: <relay> }` at the end.
    stayed_relayed_via_relay: Option<bool>,
    /// After a failed punch: messages delivered that were sent after it.
    delivered_after_failure: Option<usize>,
    /// `Offline` events either side saw for the other.
    offline_events: usize,
    published: usize,
    lost: usize,
    duplicates: usize,
    relayed_samples: usize,
    direct_samples: usize,
    relayed_median_ms: Option<f64>,
    direct_median_ms: Option<f64>,
    #[serde(skip)]
    relayed_latency_ms: Vec<f64>,
    #[serde(skip)]
    direct_latency_ms: Vec<f64>,
}

/// Aborts its tasks when dropped (also when an attempt ends early with an error).
struct AbortOnDrop(Vec<tokio::task::JoinHandle<()>>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        for task in &self.0 {
            task.abort();
        }
    }
}

/// One attempt: a fresh pair in a fresh mesh on the relay.
async fn attempt(slot: &Slot, combo: Combo, index: usize) -> Result<Attempt> {
    let relay = &slot.relay.node;
    let (alice_dev, bob_dev) = (&slot.alice, &slot.bob);
    let mesh = format!("nat-{index}");
    relay
        .create_mesh(&mesh)
        .await
        .context("creating the mesh")?;
    let pair = async {
        let alice = start(alice_dev.host(), &format!("alice-{index}"), |_| {}).await?;
        let bob = match start(bob_dev.host(), &format!("bob-{index}"), |_| {}).await {
            Ok(bob) => bob,
            Err(e) => {
                alice.node.shutdown().await;
                return Err(e);
            }
        };
        let result = measure(relay, &mesh, &alice.node, &bob.node, combo, index).await;
        alice.node.shutdown().await;
        bob.node.shutdown().await;
        result
    };
    let result = pair.await;
    if let Err(e) = relay.forget(&mesh).await {
        eprintln!("nat: could not forget mesh {mesh} on the relay: {e}");
    }
    result
}

async fn measure(
    relay: &Node,
    mesh: &str,
    alice: &Node,
    bob: &Node,
    combo: Combo,
    index: usize,
) -> Result<Attempt> {
    let relay_id = relay.peer_id().to_string();
    let (pa, pb) = (alice.peer_id(), bob.peer_id());
    let invite = relay
        .invite(Some(mesh), InviteOptions::default())
        .await
        .context("invite for alice")?;
    alice.join(&invite.uri).await.context("alice joins")?;
    wait_for("alice's reservation on the relay", || async {
        (!relay_status(alice).await?.reserved_on.is_empty()).then_some(())
    })
    .await?;
    let mut sub = alice.subscribe(TOPIC).await.context("subscribe")?;
    let invite = relay
        .invite(Some(mesh), InviteOptions::default())
        .await
        .context("invite for bob")?;

    // Either side seeing the other go offline.
    let offline = Arc::new(AtomicUsize::new(0));
    let mut watchers = AbortOnDrop(Vec::new());
    for (node, other) in [(alice, pb), (bob, pa)] {
        let mut events = node.peer_events();
        let offline = offline.clone();
        let other = other.to_string();
        watchers.0.push(tokio::spawn(async move {
            loop {
                match events.recv().await {
                    Ok(e) => {
                        if e.peer_id == other && matches!(e.status, MemberStatus::Offline { .. }) {
                            offline.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                    Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => continue,
                    Err(tokio::sync::broadcast::error::RecvError::Closed) => break,
                }
            }
        }));
    }
    // Alice: arrival time of every message number.
    let arrivals: Arc<Mutex<Vec<(u32, Instant)>>> = Arc::default();
    let mut receiver = {
        let arrivals = arrivals.clone();
        tokio::spawn(async move {
            while let Some(message) = sub.recv().await {
                let at = Instant::now();
                let Some(bytes) = message.payload.get(..4) else {
                    continue;
                };
                let mut n = [0u8; 4];
                n.copy_from_slice(bytes);
                let n = u32::from_be_bytes(n);
                if n == END {
                    break;
                }
                if let Ok(mut a) = arrivals.lock() {
                    a.push((n, at));
                }
            }
        })
    };

    let joined_at = Instant::now();
    bob.join(&invite.uri).await.context("bob joins")?;

    // Bob: a numbered message every 20 ms, tagged with his active path's class.
    let sends: Arc<Mutex<Vec<Sent>>> = Arc::default();
    let stop = Arc::new(AtomicBool::new(false));
    let publisher = {
        let (bob, sends, stop) = (bob.clone(), sends.clone(), stop.clone());
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(SEND_EVERY);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            let mut seq = 0u32;
            while !stop.load(Ordering::Relaxed) {
                tick.tick().await;
                let class = active_path(&bob, pa).await.map(|(class, _)| class);
                let mut payload = seq.to_be_bytes().to_vec();
                payload.resize(PAYLOAD, 0);
                let at = Instant::now();
                let to = bob.publish(TOPIC, Bytes::from(payload)).await?;
                if let Ok(mut s) = sends.lock() {
                    s.push(Sent { seq, at, class, to });
                }
                seq += 1;
            }
            bob.publish(TOPIC, Bytes::from(END.to_be_bytes().to_vec()))
                .await?;
            anyhow::Ok(())
        })
    };

    // Watch for the outcome.
    let mut result = Attempt {
        combo: combo.label.into(),
        index,
        ..Default::default()
    };
    let deadline = joined_at + PUNCH_DEADLINE;
    let mut direct_at: Option<Instant> = None;
    let mut failed_at: Option<Instant> = None;
    let mut relayed_conn_at: Option<Instant> = None;
    let mut direct_conn_at: Option<Instant> = None;
    let mut polls = 0u64;
    loop {
        tokio::time::sleep(Duration::from_millis(50)).await;
        let now = Instant::now();
        let bob_paths = paths(bob, pa).await;
        let relayed_paths = bob_paths.iter().filter(|p| p.class == "relayed").count();
        result.max_relayed_paths = result.max_relayed_paths.max(relayed_paths);
        if relayed_paths > 0 {
            relayed_conn_at.get_or_insert(now);
        }
        if bob_paths.iter().any(|p| p.class == "direct") {
            direct_conn_at.get_or_insert(now);
        }
        match bob_paths.iter().find(|p| p.role == "active") {
            Some(p) if p.class == "relayed" => {
                result.relayed = true;
                result
                    .relayed_transport
                    .get_or_insert_with(|| transport_of(&p.remote_addr).into());
            }
            Some(p) if p.class == "direct" && direct_at.is_none() => {
                let alice_class = active_path(alice, pb).await.map(|(c, _)| c);
                if alice_class.as_deref() == Some("direct") {
                    direct_at = Some(now);
                    result.direct_transport = Some(transport_of(&p.remote_addr).into());
                }
            }
            _ => {}
        }
        // Counters every 200 ms.
        if polls.is_multiple_of(4) {
            if let (Some(a), Some(b)) = (relay_status(alice).await, relay_status(bob).await) {
                note_counters(&mut result, &a, &b);
                if failed_at.is_none()
                    && direct_at.is_none()
                    && result.dcutr_attempts > 0
                    && result.dcutr_successes == 0
                {
                    failed_at = Some(now);
                    result.join_to_failure_ms = Some(ms(now - joined_at));
                }
            }
        }
        polls += 1;
        let outcome_at = direct_at.or(failed_at);
        if outcome_at.is_some_and(|t| now >= t + AFTER_OUTCOME) || now >= deadline {
            break;
        }
    }
    // Final counters and statuses.
    if let (Some(a), Some(b)) = (relay_status(alice).await, relay_status(bob).await) {
        note_counters(&mut result, &a, &b);
    }
    if let (Some(r), Some(d)) = (relayed_conn_at, direct_conn_at) {
        result.relayed_conn_to_direct_conn_ms = Some(ms(d.saturating_duration_since(r)));
    }
    result.punched = direct_at.is_some() && result.dcutr_successes > 0;
    result.join_to_direct_ms = direct_at.map(|t| ms(t - joined_at));
    if !result.punched {
        let via = |s: Option<MemberStatus>| matches!(s, Some(MemberStatus::Relayed { via: Some(v) }) if v == relay_id);
        result.stayed_relayed_via_relay =
            Some(via(member_status(bob, pa).await) && via(member_status(alice, pb).await));
    }

    stop.store(true, Ordering::Relaxed);
    publisher
        .await
        .context("publisher task")?
        .context("publishing")?;
    if tokio::time::timeout(Duration::from_secs(5), &mut receiver)
        .await
        .is_err()
    {
        // The end marker did not come (no path at all): keep what arrived.
        receiver.abort();
    }
    drop(watchers);
    result.offline_events = offline.load(Ordering::Relaxed);

    let sends = std::mem::take(&mut *sends.lock().map_err(|_| anyhow!("sends lock"))?);
    let arrivals = std::mem::take(&mut *arrivals.lock().map_err(|_| anyhow!("arrivals lock"))?);
    let mut first_arrival: HashMap<u32, Instant> = HashMap::new();
    let mut duplicates = 0;
    for (n, at) in &arrivals {
        if first_arrival.insert(*n, *at).is_some() {
            duplicates += 1;
        }
    }
    result.duplicates = duplicates;
    let offered: Vec<&Sent> = sends.iter().filter(|s| s.to > 0).collect();
    result.published = offered.len();
    result.lost = offered
        .iter()
        .filter(|s| !first_arrival.contains_key(&s.seq))
        .count();
    let arrived = |s: &Sent| first_arrival.get(&s.seq).copied();
    if let Some((s, at)) = sends
        .iter()
        .filter_map(|s| Some((s, arrived(s)?)))
        .min_by_key(|(_, at)| *at)
    {
        result.join_to_first_message_ms = Some(ms(at - joined_at));
        result.first_message_class = Some(s.class.clone().unwrap_or_else(|| "none".into()));
    }
    result.join_to_first_relayed_ms = sends
        .iter()
        .filter(|s| s.class.as_deref() == Some("relayed"))
        .filter_map(arrived)
        .min()
        .map(|at| ms(at - joined_at));
    if let Some(failed) = failed_at.filter(|_| !result.punched) {
        result.delivered_after_failure = Some(
            sends
                .iter()
                .filter(|s| s.at > failed)
                .filter_map(arrived)
                .count(),
        );
    }
    let switch = sends
        .iter()
        .find(|s| s.class.as_deref() == Some("direct"))
        .map(|s| s.at);
    for (s, at) in sends.iter().filter_map(|s| Some((s, arrived(s)?))) {
        let latency = ms(at - s.at);
        match (s.class.as_deref(), switch) {
            (Some("relayed"), None) => result.relayed_latency_ms.push(latency),
            (Some("relayed"), Some(sw)) if s.at + GUARD < sw => {
                result.relayed_latency_ms.push(latency)
            }
            (Some("direct"), Some(sw)) if s.at >= sw + GUARD => {
                result.direct_latency_ms.push(latency)
            }
            _ => {}
        }
    }
    result.relayed_samples = result.relayed_latency_ms.len();
    result.direct_samples = result.direct_latency_ms.len();
    result.relayed_median_ms =
        (!result.relayed_latency_ms.is_empty()).then(|| median(&result.relayed_latency_ms));
    result.direct_median_ms =
        (!result.direct_latency_ms.is_empty()).then(|| median(&result.direct_latency_ms));
    Ok(result)
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// The `q` quantile of `values` (nearest rank; 0 when empty).
fn quantile(values: &[f64], q: f64) -> f64 {
    if values.is_empty() {
        return 0.0;
    }
    let mut sorted = values.to_vec();
    sorted.sort_by(|a, b| a.total_cmp(b));
    let idx = ((sorted.len() - 1) as f64 * q).round() as usize;
    sorted[idx.min(sorted.len() - 1)]
}

fn one_line(a: &Attempt) -> String {
    if let Some(e) = &a.error {
        return format!("error: {e}");
    }
    let f = |v: Option<f64>| {
        v.map(|v| format!("{v:.0} ms"))
            .unwrap_or_else(|| "—".into())
    };
    let outcome = if a.punched {
        format!(
            "direct ({}), relayed→direct {} (polled {}), join→direct {}",
            a.direct_transport.as_deref().unwrap_or("?"),
            f(a.relayed_to_direct_ms),
            f(a.relayed_conn_to_direct_conn_ms),
            f(a.join_to_direct_ms)
        )
    } else {
        format!(
            "not punched (failure reported {} after the join), relayed via relay at the end: {}, delivered after the failure: {}",
            f(a.join_to_failure_ms),
            a.stayed_relayed_via_relay
                .map(|b| if b { "yes" } else { "NO" })
                .unwrap_or("?"),
            a.delivered_after_failure
                .map(|n| n.to_string())
                .unwrap_or_else(|| "— (no DCUtR outcome)".into())
        )
    };
    format!(
        "{outcome}; DCUtR {}/{} ok, relayed paths {}; first msg {} ({}), first relayed {}; latency relayed {} (n={}) direct {} (n={}); lost {}/{}, dup {}, offline {}",
        a.dcutr_successes,
        a.dcutr_attempts,
        a.max_relayed_paths,
        f(a.join_to_first_message_ms),
        a.first_message_class.as_deref().unwrap_or("—"),
        f(a.join_to_first_relayed_ms),
        f(a.relayed_median_ms),
        a.relayed_samples,
        f(a.direct_median_ms),
        a.direct_samples,
        a.lost,
        a.published,
        a.duplicates,
        a.offline_events
    )
}

/// Runs the scenario: `attempts` fresh pairs per NAT combination. Returns
/// the table rows and every attempt as JSON.
pub async fn nat(attempts: usize) -> Result<(Vec<Row>, serde_json::Value)> {
    if let Some(reason) = atmosphere_lab::unavailable_reason() {
        bail!("the network lab is unavailable: {reason}");
    }
    if attempts == 0 {
        bail!("--nat-attempts must be at least 1");
    }
    let started = Instant::now();
    let mut all: Vec<(Combo, Vec<Attempt>)> = Vec::new();
    for combo in COMBOS {
        eprintln!(
            "nat {}: building the lab (relay, two routers, {} ms uplinks)…",
            combo.label,
            UPLINK_DELAY.as_millis()
        );
        let homes = homes(combo)
            .await
            .with_context(|| format!("the {} lab", combo.label))?;
        let combo_started = Instant::now();
        let mut done = Vec::new();
        let indices: Vec<usize> = (0..attempts).collect();
        for batch in indices.chunks(combo.parallel.max(1)) {
            let results = futures::future::join_all(
                batch
                    .iter()
                    .zip(&homes.slots)
                    .map(|(&i, slot)| attempt(slot, combo, i)),
            )
            .await;
            for (&i, result) in batch.iter().zip(results) {
                let a = result.unwrap_or_else(|e| Attempt {
                    combo: combo.label.into(),
                    index: i,
                    error: Some(format!("{e:#}")),
                    ..Default::default()
                });
                eprintln!("nat {} {}/{attempts}: {}", combo.label, i + 1, one_line(&a));
                done.push(a);
            }
        }
        eprintln!(
            "nat {}: {attempts} attempts ({} at a time) in {:.0?}",
            combo.label,
            combo.parallel,
            combo_started.elapsed()
        );
        for slot in &homes.slots {
            slot.relay.node.shutdown().await;
        }
        drop(homes);
        all.push((combo, done));
    }
    eprintln!(
        "nat: {} attempts in {:.0?}",
        attempts * COMBOS.len(),
        started.elapsed()
    );
    let rows = summarize(&all);
    let json = serde_json::to_value(
        all.iter()
            .flat_map(|(_, a)| a.iter().cloned())
            .collect::<Vec<_>>(),
    )?;
    Ok((rows, json))
}

fn row(case: String, unit: &str, values: &[f64], p99: Option<f64>, higher: bool) -> Row {
    Row {
        scenario: "nat".into(),
        case,
        system: "atmosphere".into(),
        unit: unit.into(),
        value: median(values),
        p99,
        min: values.iter().cloned().reduce(f64::min),
        max: values.iter().cloned().reduce(f64::max),
        higher_is_better: higher,
        ratio: None,
    }
}

fn anchor(case: &str, system: &str, value: f64, ours: f64) -> Row {
    Row {
        scenario: "nat".into(),
        case: case.into(),
        system: system.into(),
        unit: "%".into(),
        value,
        p99: None,
        min: None,
        max: None,
        higher_is_better: true,
        ratio: Some(ours / value),
    }
}

/// Latency rows (median with p99, then p90) for `samples`; nothing if empty.
fn latency_rows(rows: &mut Vec<Row>, what: String, samples: &[f64]) {
    if samples.is_empty() {
        return;
    }
    rows.push(row(
        format!("{what} (n={})", samples.len()),
        "ms",
        samples,
        Some(quantile(samples, 0.99)),
        false,
    ));
    let p90 = quantile(samples, 0.9);
    rows.push(row(format!("{what} p90"), "ms", &[p90], None, false));
}

/// Table rows and the printed summary.
fn summarize(all: &[(Combo, Vec<Attempt>)]) -> Vec<Row> {
    let mut rows = Vec::new();
    let mut pooled_relayed = Vec::new();
    let mut pooled_direct = Vec::new();
    println!("\nNAT traversal: relay on a public host, two home routers with 50 ms uplinks");
    for (combo, attempts) in all {
        let label = combo.label;
        let valid: Vec<&Attempt> = attempts.iter().filter(|a| a.error.is_none()).collect();
        let errors = attempts.len() - valid.len();
        let met: Vec<&Attempt> = valid.iter().copied().filter(|a| a.relayed).collect();
        let punched: Vec<&Attempt> = met.iter().copied().filter(|a| a.punched).collect();
        let failed: Vec<&Attempt> = met.iter().copied().filter(|a| !a.punched).collect();
        let first_relayed: Vec<f64> = valid
            .iter()
            .filter_map(|a| a.join_to_first_relayed_ms)
            .collect();
        let to_direct: Vec<f64> = punched
            .iter()
            .filter_map(|a| a.relayed_to_direct_ms)
            .collect();
        let join_direct: Vec<f64> = punched.iter().filter_map(|a| a.join_to_direct_ms).collect();
        let join_failure: Vec<f64> = failed.iter().filter_map(|a| a.join_to_failure_ms).collect();
        let first_round = to_direct.iter().filter(|ms| **ms < FIRST_ROUND).count();
        let relayed_lat: Vec<f64> = valid
            .iter()
            .flat_map(|a| a.relayed_latency_ms.iter().copied())
            .collect();
        let direct_lat: Vec<f64> = valid
            .iter()
            .flat_map(|a| a.direct_latency_ms.iter().copied())
            .collect();
        pooled_relayed.extend(relayed_lat.iter().copied());
        pooled_direct.extend(direct_lat.iter().copied());
        let stayed = failed
            .iter()
            .filter(|a| a.stayed_relayed_via_relay == Some(true))
            .count();
        let kept_flowing = failed
            .iter()
            .filter(|a| a.delivered_after_failure.is_some_and(|n| n > 0))
            .count();
        let offline: usize = valid.iter().map(|a| a.offline_events).sum();
        let lost: usize = valid.iter().map(|a| a.lost).sum();
        let published: usize = valid.iter().map(|a| a.published).sum();
        let duplicates: usize = valid.iter().map(|a| a.duplicates).sum();
        let success_pct = if met.is_empty() {
            0.0
        } else {
            100.0 * punched.len() as f64 / met.len() as f64
        };
        let fmt = |v: &[f64]| {
            if v.is_empty() {
                "—".to_owned()
            } else {
                format!(
                    "median {:.0} ms (min {:.0}, max {:.0}, n={})",
                    median(v),
                    quantile(v, 0.0),
                    quantile(v, 1.0),
                    v.len()
                )
            }
        };
        let lat = |v: &[f64]| {
            if v.is_empty() {
                "—".to_owned()
            } else {
                format!(
                    "median {:.1} ms, p90 {:.1} ms (n={})",
                    median(v),
                    quantile(v, 0.9),
                    v.len()
                )
            }
        };

        println!(
            "\n{label} ({} attempts, {} at a time{}):",
            attempts.len(),
            if combo.parallel > 1 {
                format!("{} pairs", combo.parallel)
            } else {
                "one pair".to_owned()
            },
            if errors > 0 {
                format!(", {errors} could not be set up")
            } else {
                String::new()
            }
        );
        println!(
            "  join → first message over the relay:     {}",
            fmt(&first_relayed)
        );
        println!(
            "  first relayed connection → direct (DCUtR): {}",
            fmt(&to_direct)
        );
        println!(
            "  join → direct path active on both sides:  {}",
            fmt(&join_direct)
        );
        println!(
            "  hole punch: {}/{} direct ({success_pct:.0} %); anchors: libp2p campaign ~{ANCHOR_LIBP2P_PCT:.0} % (real networks, {ANCHOR_LIBP2P_FIRST_PCT} % of successes on the first attempt), iroh ~{ANCHOR_IROH_PCT:.0} % direct",
            punched.len(),
            met.len()
        );
        if !to_direct.is_empty() {
            println!(
                "  punches that succeeded in DCUtR's first round: {first_round}/{} (direct within {:.0} s of the relayed connection); libp2p campaign: {ANCHOR_LIBP2P_FIRST_PCT} %",
                to_direct.len(),
                FIRST_ROUND / 1000.0
            );
        }
        if !failed.is_empty() {
            println!(
                "  join → DCUtR failure reported:            {}",
                fmt(&join_failure)
            );
            println!(
                "  where the punch failed: {stayed}/{} stayed \"relayed via <relay>\", {kept_flowing}/{} kept delivering after the failure",
                failed.len(),
                failed.len()
            );
        }
        println!("  member went offline (either side): {offline} times; messages lost {lost} of {published}, duplicates {duplicates}");
        println!("  pub/sub latency, one way, relayed: {}", lat(&relayed_lat));
        println!("  pub/sub latency, one way, direct:  {}", lat(&direct_lat));
        if !relayed_lat.is_empty() && !direct_lat.is_empty() {
            println!(
                "  relayed / direct: {:.2}× (median), {:.2}× (p90), same pairs",
                median(&relayed_lat) / median(&direct_lat),
                quantile(&relayed_lat, 0.9) / quantile(&direct_lat, 0.9)
            );
        }

        let n_of = |n: usize| {
            if n == valid.len() {
                String::new()
            } else {
                format!(" ({n} of {})", valid.len())
            }
        };
        if !first_relayed.is_empty() {
            rows.push(row(
                format!(
                    "{label}: join → first msg over relay{}",
                    n_of(first_relayed.len())
                ),
                "ms",
                &first_relayed,
                None,
                false,
            ));
        }
        if !to_direct.is_empty() {
            rows.push(row(
                format!("{label}: first relayed conn → direct (DCUtR)"),
                "ms",
                &to_direct,
                None,
                false,
            ));
        }
        if !join_direct.is_empty() {
            rows.push(row(
                format!("{label}: join → direct active"),
                "ms",
                &join_direct,
                None,
                false,
            ));
        }
        let success_case = format!(
            "{label}: hole-punch success, {}/{}",
            punched.len(),
            met.len()
        );
        rows.push(row(success_case.clone(), "%", &[success_pct], None, true));
        if combo.alice == NatKind::EndpointIndependent && combo.bob == NatKind::EndpointIndependent
        {
            rows.push(anchor(
                &success_case,
                "libp2p DCUtR, real networks (anchor)",
                ANCHOR_LIBP2P_PCT,
                success_pct,
            ));
            rows.push(anchor(
                &success_case,
                "iroh direct, real networks (anchor)",
                ANCHOR_IROH_PCT,
                success_pct,
            ));
        }
        if !to_direct.is_empty() {
            let case = format!(
                "{label}: punches in DCUtR's first round, {first_round}/{}",
                to_direct.len()
            );
            let pct = 100.0 * first_round as f64 / to_direct.len() as f64;
            rows.push(row(case.clone(), "%", &[pct], None, true));
            rows.push(anchor(
                &case,
                "libp2p DCUtR, real networks (anchor)",
                ANCHOR_LIBP2P_FIRST_PCT,
                pct,
            ));
        }
        if !join_failure.is_empty() {
            rows.push(row(
                format!(
                    "{label}: join → DCUtR failure reported{}",
                    n_of(join_failure.len())
                ),
                "ms",
                &join_failure,
                None,
                false,
            ));
        }
        if !failed.is_empty() {
            rows.push(row(
                format!(
                    "{label}: failed punch → relayed via relay, {stayed}/{}",
                    failed.len()
                ),
                "%",
                &[100.0 * stayed as f64 / failed.len() as f64],
                None,
                true,
            ));
        }
        rows.push(row(
            format!("{label}: offline events"),
            "events",
            &[offline as f64],
            None,
            false,
        ));
        rows.push(row(
            format!("{label}: messages lost of {published}"),
            "msgs",
            &[lost as f64],
            None,
            false,
        ));
        latency_rows(&mut rows, format!("{label}: latency relayed"), &relayed_lat);
        latency_rows(&mut rows, format!("{label}: latency direct"), &direct_lat);
        if !relayed_lat.is_empty() && !direct_lat.is_empty() {
            rows.push(row(
                format!("{label}: latency relayed / direct"),
                "×",
                &[median(&relayed_lat) / median(&direct_lat)],
                None,
                false,
            ));
        }
    }
    if !pooled_relayed.is_empty() && !pooled_direct.is_empty() {
        let ratio = median(&pooled_relayed) / median(&pooled_direct);
        println!(
            "\nall combinations: pub/sub latency relayed median {:.1} ms (n={}), direct median {:.1} ms (n={}): relayed / direct {ratio:.2}×",
            median(&pooled_relayed),
            pooled_relayed.len(),
            median(&pooled_direct),
            pooled_direct.len()
        );
        latency_rows(&mut rows, "all: latency relayed".into(), &pooled_relayed);
        latency_rows(&mut rows, "all: latency direct".into(), &pooled_direct);
        rows.push(row(
            "all: latency relayed / direct".into(),
            "×",
            &[ratio],
            None,
            false,
        ));
    }
    rows
}
