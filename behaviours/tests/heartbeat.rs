//! The heartbeat behaviour between in-memory swarms: beats and payloads both
//! ways, interval changes, misses and the timeout against a silent peer, a
//! peer without the protocol, garbage from the remote, and that heartbeats do
//! not keep a connection alive.

use std::{
    sync::{
        atomic::{AtomicUsize, Ordering},
        Arc,
    },
    time::Duration,
};

use atmosphere_behaviours::{
    channel,
    heartbeat::{
        self,
        protocol::{self, read_frame, FrameError, Heartbeat, HeartbeatError, PROTOCOL},
        Event, LocalInfo, Metrics,
    },
};
use futures::{AsyncWriteExt, StreamExt};
use libp2p::{
    core::{transport::MemoryTransport, upgrade::Version},
    identity,
    multiaddr::Protocol,
    noise,
    swarm::{dummy, ConnectionId, NetworkBehaviour, SwarmEvent},
    yamux, Multiaddr, PeerId, Stream, Swarm, Transport,
};
use libp2p_swarm_test::SwarmExt;
use tokio::sync::mpsc;

/// Generous bound on every wait; tests assert behaviour, not timing.
const WAIT: Duration = Duration::from_secs(30);
/// The fast interval the tests switch to.
const FAST: Duration = Duration::from_millis(100);
/// An interval that never elapses during a test: only the first beat (sent as
/// soon as a connection is up) goes out.
const SLOW: Duration = Duration::from_secs(3600);
/// Frame limit for the tests' own reads.
const MAX: usize = 64 * 1024;

/// A node's behaviours as far as heartbeats care: the heartbeat itself, and
/// the channel behaviour, which (as in a node) keeps connections open.
#[derive(NetworkBehaviour)]
struct Node {
    heartbeat: heartbeat::Behaviour,
    keep_alive: channel::Behaviour,
}

fn node(config: heartbeat::Config) -> Swarm<Node> {
    Swarm::new_ephemeral_tokio(|key| Node {
        heartbeat: heartbeat::Behaviour::new(key.public().to_peer_id(), config),
        keep_alive: channel::Behaviour::default(),
    })
}

/// Two nodes beating every `interval`.
fn node_pair(interval: Duration) -> (Swarm<Node>, Swarm<Node>) {
    let config = heartbeat::Config::default().with_default_interval(interval);
    (node(config.clone()), node(config))
}

/// A node beating every `interval` that times a peer out after three misses
/// in a row.
fn node_with_three_misses(interval: Duration) -> Swarm<Node> {
    node(
        heartbeat::Config::default()
            .with_default_interval(interval)
            .with_max_missed(3),
    )
}

/// A peer running only the stream behaviour, so that the test speaks the
/// heartbeat protocol by hand, and its id.
fn raw_peer() -> (Swarm<libp2p_stream::Behaviour>, PeerId) {
    let swarm = Swarm::new_ephemeral_tokio(|_| libp2p_stream::Behaviour::new());
    let id = *swarm.local_peer_id();
    (swarm, id)
}

/// A [`raw_peer`] that accepts heartbeat streams, with those streams.
fn accepting_raw_peer() -> (
    Swarm<libp2p_stream::Behaviour>,
    PeerId,
    libp2p_stream::IncomingStreams,
) {
    let (swarm, id) = raw_peer();
    let incoming = swarm.behaviour().new_control().accept(PROTOCOL).unwrap();
    (swarm, id, incoming)
}

fn info(tag: u64) -> LocalInfo {
    LocalInfo {
        capabilities: vec![format!("cap-{tag}"), "pubsub".into()],
        endpoints: vec![
            format!("/ip4/10.0.0.{tag}/tcp/4001").parse().unwrap(),
            Multiaddr::empty().with(Protocol::Memory(tag)),
        ],
        metrics: Metrics {
            peers: tag as u32,
            messages_sent: 100 + tag,
            messages_received: 200 + tag,
            uptime_secs: 300 + tag,
        },
    }
}

fn payload_of(hb: &Heartbeat) -> LocalInfo {
    LocalInfo {
        capabilities: hb.capabilities.clone(),
        endpoints: hb.endpoints.clone(),
        metrics: hb.metrics.clone(),
    }
}

async fn within<T>(what: &str, f: impl std::future::Future<Output = T>) -> T {
    tokio::time::timeout(WAIT, f)
        .await
        .unwrap_or_else(|_| panic!("timed out: {what}"))
}

/// Connects `a` to `b` (both polled until both see the connection) and
/// returns the connection's id on each side.
async fn connect(a: &mut Swarm<Node>, b: &mut Swarm<Node>) -> (ConnectionId, ConnectionId) {
    b.listen().with_memory_addr_external().await;
    a.connect(b).await;
    let (a_id, b_id) = (*a.local_peer_id(), *b.local_peer_id());
    let a_conns = a.behaviour().heartbeat.connections(&b_id);
    let b_conns = b.behaviour().heartbeat.connections(&a_id);
    assert_eq!((a_conns.len(), b_conns.len()), (1, 1));
    (a_conns[0], b_conns[0])
}

/// Polls both swarms until `done` holds for the heartbeat events seen.
async fn run_pair(
    a: &mut Swarm<Node>,
    b: &mut Swarm<Node>,
    what: &str,
    done: impl Fn(&[Event], &[Event]) -> bool,
) -> (Vec<Event>, Vec<Event>) {
    within(what, async {
        let (mut from_a, mut from_b) = (Vec::new(), Vec::new());
        while !done(&from_a, &from_b) {
            tokio::select! {
                e = a.select_next_some() => if let SwarmEvent::Behaviour(NodeEvent::Heartbeat(e)) = e {
                    from_a.push(e);
                },
                e = b.select_next_some() => if let SwarmEvent::Behaviour(NodeEvent::Heartbeat(e)) = e {
                    from_b.push(e);
                },
            }
        }
        (from_a, from_b)
    })
    .await
}

/// Polls `a` until `done` holds for the heartbeat events seen (appended to
/// `events`).
async fn run_until(
    a: &mut Swarm<Node>,
    events: &mut Vec<Event>,
    what: &str,
    done: impl Fn(&[Event]) -> bool,
) {
    within(what, async {
        while !done(events) {
            if let SwarmEvent::Behaviour(NodeEvent::Heartbeat(e)) = a.select_next_some().await {
                events.push(e);
            }
        }
    })
    .await
}

/// Polls `a` for `period` and returns the heartbeat events seen.
async fn run_for(a: &mut Swarm<Node>, period: Duration) -> Vec<Event> {
    let mut events = Vec::new();
    let _ = tokio::time::timeout(period, async {
        loop {
            if let SwarmEvent::Behaviour(NodeEvent::Heartbeat(e)) = a.select_next_some().await {
                events.push(e);
            }
        }
    })
    .await;
    events
}

/// Starts `b` in the background, dials it from `a` and polls `a` until the
/// connection is up. Returns the connection and the heartbeat events seen so
/// far (the first beat starts with the connection).
async fn dial_spawned<B>(a: &mut Swarm<Node>, mut b: Swarm<B>) -> (ConnectionId, Vec<Event>)
where
    B: NetworkBehaviour + Send,
    B::ToSwarm: std::fmt::Debug,
{
    let (addr, _) = b.listen().with_memory_addr_external().await;
    let b_id = *b.local_peer_id();
    tokio::spawn(b.loop_on_next());
    a.dial(addr).unwrap();
    let mut early = Vec::new();
    let connection = within("connection", async {
        loop {
            match a.select_next_some().await {
                SwarmEvent::ConnectionEstablished {
                    peer_id,
                    connection_id,
                    ..
                } if peer_id == b_id => break connection_id,
                SwarmEvent::Behaviour(NodeEvent::Heartbeat(e)) => early.push(e),
                _ => {}
            }
        }
    })
    .await;
    (connection, early)
}

/// [`dial_spawned`], then polls `a` until the first timeout and asserts that
/// exactly three misses led to it. Returns the heartbeat events seen.
async fn dial_until_timeout<B>(a: &mut Swarm<Node>, b: Swarm<B>) -> Vec<Event>
where
    B: NetworkBehaviour + Send,
    B::ToSwarm: std::fmt::Debug,
{
    let (_, mut events) = dial_spawned(a, b).await;
    run_until(a, &mut events, "timeout", |events| {
        events.iter().any(|e| matches!(e, Event::Timeout { .. }))
    })
    .await;
    assert_eq!(
        outcomes(&events),
        ["missed 1", "missed 2", "missed 3", "timeout"]
    );
    events
}

/// Drives `swarm` in the background, forwarding its heartbeat events.
fn spawn_events(mut swarm: Swarm<Node>) -> mpsc::UnboundedReceiver<Event> {
    let (tx, rx) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        loop {
            if let SwarmEvent::Behaviour(NodeEvent::Heartbeat(e)) = swarm.select_next_some().await {
                if tx.send(e).is_err() {
                    return;
                }
            }
        }
    });
    rx
}

fn beats(events: &[Event]) -> usize {
    events
        .iter()
        .filter(|e| matches!(e, Event::Beat { .. }))
        .count()
}

fn received(events: &[Event]) -> usize {
    events
        .iter()
        .filter(|e| matches!(e, Event::Received { .. }))
        .count()
}

/// The outcome events (answered, missed, timed out) in order.
fn outcomes(events: &[Event]) -> Vec<String> {
    events
        .iter()
        .filter_map(|e| match e {
            Event::Beat { .. } => Some("beat".to_string()),
            Event::Missed { consecutive, .. } => Some(format!("missed {consecutive}")),
            Event::Timeout { .. } => Some("timeout".to_string()),
            _ => None,
        })
        .collect()
}

fn beat_frame(node: PeerId, nonce: u64, echo: Option<u64>) -> Vec<u8> {
    let hb = Heartbeat {
        node,
        nonce,
        echo,
        timestamp_ms: protocol::now_ms(),
        transport: "test".into(),
        metrics: Metrics::default(),
        capabilities: vec!["raw".into()],
        endpoints: Vec::new(),
    };
    protocol::encode(&hb, MAX).unwrap()
}

async fn send(stream: &mut Stream, bytes: &[u8]) {
    stream.write_all(bytes).await.unwrap();
    stream.flush().await.unwrap();
}

/// Reads the next frame as a heartbeat.
async fn read_heartbeat(stream: &mut Stream) -> Heartbeat {
    let mut buf = Vec::new();
    assert!(
        within("answer", read_frame(stream, &mut buf, MAX))
            .await
            .unwrap(),
        "stream ended instead of answering"
    );
    protocol::decode(&buf).unwrap()
}

/// Asserts the remote dropped `stream`: reading ends (cleanly or not).
async fn assert_dropped(stream: &mut Stream, what: &str) {
    let mut buf = Vec::new();
    let result = within(what, read_frame(stream, &mut buf, MAX)).await;
    assert!(
        !matches!(result, Ok(true)),
        "{what}: got a frame from a stream that should be dropped"
    );
}

#[tokio::test]
async fn beats_flow_both_ways_with_rtt_and_payload() {
    let (mut a, mut b) = node_pair(SLOW);
    a.behaviour_mut().heartbeat.set_local_info(info(1));
    b.behaviour_mut().heartbeat.set_local_info(info(2));
    let (a_conn, b_conn) = connect(&mut a, &mut b).await;
    let (a_id, b_id) = (*a.local_peer_id(), *b.local_peer_id());
    assert!(a
        .behaviour_mut()
        .heartbeat
        .set_interval(b_id, a_conn, FAST, "lan"));
    assert!(b
        .behaviour_mut()
        .heartbeat
        .set_interval(a_id, b_conn, FAST, "wifi"));
    assert_eq!(
        a.behaviour().heartbeat.interval(a_conn),
        Some((FAST, "lan"))
    );

    // Enough beats on each side that some carry the transport set above.
    let counted = |events: &[Event], transport: &str| {
        events
            .iter()
            .filter(|e| matches!(e, Event::Beat { remote, .. } if remote.transport == transport))
            .count()
    };
    let (from_a, from_b) = run_pair(&mut a, &mut b, "beats both ways", |ea, eb| {
        counted(ea, "wifi") >= 3
            && counted(eb, "lan") >= 3
            && received(ea) >= 3
            && received(eb) >= 3
    })
    .await;

    for (events, me, my_conn, other, other_info, other_transport) in [
        (&from_a, "a", a_conn, b_id, info(2), "wifi"),
        (&from_b, "b", b_conn, a_id, info(1), "lan"),
    ] {
        for event in events {
            match event {
                Event::Beat {
                    peer,
                    connection,
                    rtt,
                    remote,
                } => {
                    assert_eq!((*peer, *connection), (other, my_conn), "{me}");
                    assert!(
                        *rtt > Duration::ZERO && *rtt < WAIT,
                        "{me}: implausible rtt {rtt:?}"
                    );
                    assert_eq!(remote.node, other, "{me}");
                    assert!(remote.echo.is_some(), "{me}: an answer echoes a nonce");
                    assert_eq!(payload_of(remote), other_info, "{me}");
                    // The first answer may predate `set_interval`.
                    assert!(
                        remote.transport == other_transport || remote.transport.is_empty(),
                        "{me}: transport {:?}",
                        remote.transport
                    );
                    assert!(remote.timestamp_ms > 0);
                }
                Event::Received {
                    peer,
                    connection,
                    heartbeat,
                } => {
                    assert_eq!((*peer, *connection), (other, my_conn), "{me}");
                    assert_eq!(heartbeat.node, other, "{me}");
                    assert_eq!(heartbeat.echo, None, "{me}: a beat echoes nothing");
                    assert_eq!(payload_of(heartbeat), other_info, "{me}");
                }
                // Under heavy load a 100 ms beat may be missed; that is not
                // what this test is about.
                Event::Missed { .. } | Event::Timeout { .. } => {}
                other => panic!("{me}: unexpected {other:?}"),
            }
        }
    }
}

#[tokio::test]
async fn updated_local_info_and_metrics_reach_the_remote() {
    let (mut a, mut b) = node_pair(FAST);
    connect(&mut a, &mut b).await;
    a.behaviour_mut().heartbeat.set_local_info(info(7));
    let fresh = Metrics {
        peers: 9,
        messages_sent: 1,
        messages_received: 2,
        uptime_secs: 3,
    };
    a.behaviour_mut().heartbeat.set_metrics(fresh.clone());
    let expected = LocalInfo {
        metrics: fresh,
        ..info(7)
    };
    assert_eq!(a.behaviour().heartbeat.local_info(), expected);
    let is_fresh = |e: &Event| match e {
        Event::Received { heartbeat, .. } => payload_of(heartbeat) == expected,
        _ => false,
    };
    run_pair(&mut a, &mut b, "fresh payload", |_, eb| {
        eb.iter().any(is_fresh)
    })
    .await;
    // Once the new payload is out, no beat carries the old one.
    let (_, from_b) = run_pair(&mut a, &mut b, "more beats", |_, eb| received(eb) >= 2).await;
    for event in &from_b {
        if let Event::Received { heartbeat, .. } = event {
            assert_eq!(payload_of(heartbeat), expected);
        }
    }
}

#[tokio::test]
async fn a_faster_interval_takes_effect_at_once_and_a_slower_one_stops_beats() {
    let (mut a, mut b) = node_pair(SLOW);
    let (a_conn, _) = connect(&mut a, &mut b).await;
    let (a_id, b_id) = (*a.local_peer_id(), *b.local_peer_id());

    // Unknown connections and wrong peers are refused.
    let bogus = ConnectionId::new_unchecked(usize::MAX);
    assert!(!a
        .behaviour_mut()
        .heartbeat
        .set_interval(b_id, bogus, FAST, "lan"));
    assert!(!a
        .behaviour_mut()
        .heartbeat
        .set_interval(a_id, a_conn, FAST, "lan"));
    assert_eq!(a.behaviour().heartbeat.interval(a_conn), Some((SLOW, "")));

    // With an hour's interval only the first beat would ever go out: four
    // answers prove the new interval is in force.
    assert!(a
        .behaviour_mut()
        .heartbeat
        .set_interval(b_id, a_conn, FAST, "lan"));
    let (from_a, from_b) = run_pair(&mut a, &mut b, "fast beats", |ea, _| beats(ea) >= 4).await;
    assert!(from_a.iter().all(|e| match e {
        Event::Beat { connection, .. } => *connection == a_conn,
        _ => true,
    }));
    // b kept its hour: at most its first beat was answered meanwhile.
    assert!(beats(&from_b) <= 1, "{from_b:?}");
    assert!(received(&from_b) >= 3, "b answers a's beats: {from_b:?}");
    assert!(from_b.iter().any(|e| matches!(
        e,
        Event::Received { heartbeat, .. } if heartbeat.transport == "lan"
    )));

    // Back to an hour: the next beat is pushed back (one in flight may still
    // complete).
    assert!(a
        .behaviour_mut()
        .heartbeat
        .set_interval(b_id, a_conn, SLOW, "lan"));
    let quiet = tokio::time::timeout(Duration::from_secs(2), async {
        run_pair(&mut a, &mut b, "never", |ea, _| beats(ea) >= 2).await
    })
    .await;
    assert!(quiet.is_err(), "beats continued after slowing down");
}

#[tokio::test]
async fn only_the_connection_asked_for_changes_interval() {
    let (mut a, mut b) = node_pair(SLOW);
    connect(&mut a, &mut b).await;
    a.connect(&mut b).await;
    let b_id = *b.local_peer_id();
    let conns = a.behaviour().heartbeat.connections(&b_id);
    assert_eq!(conns.len(), 2);
    let (fast, slow) = (conns[0], conns[1]);
    assert!(a
        .behaviour_mut()
        .heartbeat
        .set_interval(b_id, fast, FAST, "lan"));
    let on = |events: &[Event], conn: ConnectionId| {
        events
            .iter()
            .filter(|e| matches!(e, Event::Beat { connection, .. } if *connection == conn))
            .count()
    };
    let (from_a, _) = run_pair(&mut a, &mut b, "beats on the fast connection", |ea, _| {
        on(ea, fast) >= 4
    })
    .await;
    // Only the first beat of the slow connection, if it was not yet seen.
    assert!(on(&from_a, slow) <= 1, "{from_a:?}");
}

#[tokio::test]
async fn silent_peer_yields_misses_then_exactly_one_timeout() {
    let mut a = node_with_three_misses(FAST);
    // A peer that accepts heartbeat streams and never answers.
    let (b, b_id, mut incoming) = accepting_raw_peer();
    let accepted = Arc::new(AtomicUsize::new(0));
    let counter = accepted.clone();
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Some((_, stream)) = incoming.next().await {
            counter.fetch_add(1, Ordering::SeqCst);
            held.push(stream);
        }
    });

    dial_until_timeout(&mut a, b).await;
    // Beats go on (a new stream for each), but quietly: one timeout per run
    // of misses, and the connection stays open.
    let later = run_for(&mut a, Duration::from_millis(1500)).await;
    assert_eq!(outcomes(&later), Vec::<String>::new(), "{later:?}");
    assert!(a.is_connected(&b_id));
    assert!(
        accepted.load(Ordering::SeqCst) >= 3,
        "a missed beat's stream is replaced"
    );
}

#[tokio::test]
async fn peer_without_the_protocol_is_unsupported_once() {
    let mut a = node(heartbeat::Config::default().with_default_interval(FAST));
    let b = Swarm::new_ephemeral_tokio(|_| dummy::Behaviour);
    let b_id = *b.local_peer_id();
    let (a_conn, mut events) = dial_spawned(&mut a, b).await;
    run_until(&mut a, &mut events, "unsupported", |events| {
        events
            .iter()
            .any(|e| matches!(e, Event::Unsupported { .. }))
    })
    .await;
    match events.as_slice() {
        [Event::Unsupported { peer, connection }] => {
            assert_eq!((*peer, *connection), (b_id, a_conn))
        }
        other => panic!("expected one Unsupported, got {other:?}"),
    }
    // No more tries on that connection, whatever the interval.
    assert!(a
        .behaviour_mut()
        .heartbeat
        .set_interval(b_id, a_conn, FAST, "lan"));
    let later = run_for(&mut a, Duration::from_millis(1500)).await;
    assert!(later.is_empty(), "{later:?}");
}

#[tokio::test]
async fn garbage_and_foreign_beats_are_refused_and_a_newer_stream_replaces_the_older() {
    // `a` beats only once (and `b` does not accept its streams): what is
    // tested is `a` as the receiver of `b`'s beats.
    let mut a = node(heartbeat::Config::default().with_default_interval(SLOW));
    let a_id = *a.local_peer_id();
    let (b, b_id) = raw_peer();
    let mut control = b.behaviour().new_control();
    dial_spawned(&mut a, b).await;
    let mut events = spawn_events(a);
    // The next event but `Unsupported` (`a`'s own beat: `b` does not accept
    // heartbeat streams), which may come at any time.
    let mut next = async || loop {
        match within("event", events.recv()).await.unwrap() {
            Event::Unsupported { .. } => {}
            other => break other,
        }
    };
    let malformed = |event: Event| match event {
        Event::Malformed { peer, error, .. } => {
            assert_eq!(peer, b_id);
            error
        }
        other => panic!("expected Malformed, got {other:?}"),
    };

    // Bytes that are not CBOR.
    let mut s = within("open", control.open_stream(a_id, PROTOCOL))
        .await
        .unwrap();
    send(&mut s, &[0, 0, 0, 3, 0xff, 0xfe, 0xfd]).await;
    let error = malformed(next().await);
    assert!(matches!(error, HeartbeatError::Decode(_)), "{error:?}");
    assert_dropped(&mut s, "stream after garbage").await;

    // A length prefix over the limit: refused without reading on.
    let mut s = within("open", control.open_stream(a_id, PROTOCOL))
        .await
        .unwrap();
    send(&mut s, &u32::MAX.to_be_bytes()).await;
    send(&mut s, b"junk").await;
    let error = malformed(next().await);
    assert!(
        matches!(
            error,
            HeartbeatError::Frame(FrameError::TooLarge { len, max })
                if len == u32::MAX as usize && max == protocol::DEFAULT_MAX_FRAME
        ),
        "{error:?}"
    );
    assert_dropped(&mut s, "stream after an oversized frame").await;

    // A valid heartbeat that claims to come from another node.
    let mut s = within("open", control.open_stream(a_id, PROTOCOL))
        .await
        .unwrap();
    let stranger = PeerId::random();
    send(&mut s, &beat_frame(stranger, 1, None)).await;
    let error = malformed(next().await);
    assert!(
        matches!(error, HeartbeatError::WrongNode { claimed } if claimed == stranger),
        "{error:?}"
    );
    assert_dropped(&mut s, "stream after a foreign heartbeat").await;

    // After all that, real beats are answered, several on one stream.
    let mut older = within("open", control.open_stream(a_id, PROTOCOL))
        .await
        .unwrap();
    for nonce in [10, 11] {
        send(&mut older, &beat_frame(b_id, nonce, None)).await;
        let answer = read_heartbeat(&mut older).await;
        assert_eq!((answer.node, answer.echo), (a_id, Some(nonce)));
        match next().await {
            Event::Received {
                peer, heartbeat, ..
            } => {
                assert_eq!((peer, heartbeat.nonce), (b_id, nonce));
                assert_eq!(heartbeat.capabilities, ["raw"]);
            }
            other => panic!("expected Received, got {other:?}"),
        }
    }

    // A newer inbound stream replaces the older one.
    let mut newer = within("open", control.open_stream(a_id, PROTOCOL))
        .await
        .unwrap();
    send(&mut newer, &beat_frame(b_id, 12, None)).await;
    assert_eq!(read_heartbeat(&mut newer).await.echo, Some(12));
    assert_dropped(&mut older, "the replaced stream").await;
}

#[tokio::test]
async fn invalid_answers_count_as_misses() {
    // Slow enough that answers are never late, even on a loaded machine:
    // each miss below comes from an invalid answer.
    let mut a = node_with_three_misses(Duration::from_secs(1));
    let (b, b_id, mut incoming) = accepting_raw_peer();
    // Answers each beat (one per stream, as a missed beat's stream is
    // dropped) with, in turn: garbage, an oversized frame, the wrong echo.
    tokio::spawn(async move {
        let mut round = 0u64;
        while let Some((_, mut stream)) = incoming.next().await {
            let mut buf = Vec::new();
            let Ok(true) = read_frame(&mut stream, &mut buf, MAX).await else {
                continue;
            };
            let beat = protocol::decode(&buf).unwrap();
            let answer = match round % 3 {
                0 => vec![0, 0, 0, 2, 0xff, 0xff],
                1 => {
                    let mut huge = (protocol::DEFAULT_MAX_FRAME as u32 + 1)
                        .to_be_bytes()
                        .to_vec();
                    huge.extend([0; 64]);
                    huge
                }
                _ => beat_frame(b_id, 1, Some(beat.nonce.wrapping_add(1))),
            };
            round += 1;
            let _ = stream.write_all(&answer).await;
            let _ = stream.flush().await;
            // Hold the stream; `a` drops it.
            tokio::spawn(async move {
                let mut buf = Vec::new();
                let _ = read_frame(&mut stream, &mut buf, MAX).await;
            });
        }
    });

    let events = dial_until_timeout(&mut a, b).await;
    let errors: Vec<_> = events
        .iter()
        .filter_map(|e| match e {
            Event::Malformed { error, .. } => Some(error),
            _ => None,
        })
        .collect();
    // In turn (a late answer, which should not happen, would skip one).
    let kinds: Vec<usize> = errors
        .iter()
        .map(|e| match e {
            HeartbeatError::Decode(_) => 0,
            HeartbeatError::Frame(FrameError::TooLarge { .. }) => 1,
            HeartbeatError::WrongEcho { .. } => 2,
            other => panic!("unexpected error {other:?}"),
        })
        .collect();
    assert!(
        !kinds.is_empty() && kinds.windows(2).all(|w| w[0] < w[1]),
        "{errors:?}"
    );
    assert!(a.is_connected(&b_id));
}

/// A swarm with only the heartbeat behaviour and a short idle timeout.
fn heartbeat_only(idle: Duration) -> Swarm<heartbeat::Behaviour> {
    let key = identity::Keypair::generate_ed25519();
    let peer = key.public().to_peer_id();
    let transport = MemoryTransport::default()
        .upgrade(Version::V1)
        .authenticate(noise::Config::new(&key).unwrap())
        .multiplex(yamux::Config::default())
        .timeout(WAIT)
        .boxed();
    Swarm::new(
        transport,
        heartbeat::Behaviour::new(
            peer,
            heartbeat::Config::default().with_default_interval(FAST),
        ),
        peer,
        libp2p::swarm::Config::with_tokio_executor().with_idle_connection_timeout(idle),
    )
}

#[tokio::test]
async fn heartbeats_do_not_keep_a_connection_alive() {
    let mut a = heartbeat_only(Duration::from_secs(2));
    let mut b = heartbeat_only(Duration::from_secs(2));
    b.listen_on(Multiaddr::empty().with(Protocol::Memory(0)))
        .unwrap();
    let addr = within("listen", async {
        loop {
            if let SwarmEvent::NewListenAddr { address, .. } = b.select_next_some().await {
                break address;
            }
        }
    })
    .await;
    a.dial(addr).unwrap();
    // Beats flow every 100 ms, yet the connection closes once idle.
    let answered = within("idle close", async {
        let mut answered = 0;
        loop {
            tokio::select! {
                e = a.select_next_some() => match e {
                    SwarmEvent::Behaviour(Event::Beat { .. }) => answered += 1,
                    SwarmEvent::ConnectionClosed { .. } => break answered,
                    _ => {}
                },
                _ = b.select_next_some() => {}
            }
        }
    })
    .await;
    assert!(answered >= 1, "no beat before the connection closed");
}

#[tokio::test]
async fn an_answer_after_a_timeout_resets_the_count() {
    let mut a = node_with_three_misses(Duration::from_millis(300));
    let (b, b_id, mut incoming) = accepting_raw_peer();
    // Silent on the first four streams (three misses, the timeout, one quiet
    // miss), then answers three beats on the fifth, then silent again.
    tokio::spawn(async move {
        let mut index = 0;
        while let Some((_, mut stream)) = incoming.next().await {
            let answers = if index == 4 { 3 } else { 0 };
            index += 1;
            tokio::spawn(async move {
                let mut buf = Vec::new();
                let mut answered = 0;
                while let Ok(true) = read_frame(&mut stream, &mut buf, MAX).await {
                    if answered < answers {
                        let beat = protocol::decode(&buf).unwrap();
                        send(&mut stream, &beat_frame(b_id, 1, Some(beat.nonce))).await;
                        answered += 1;
                    }
                }
            });
        }
    });

    let (_, mut events) = dial_spawned(&mut a, b).await;
    let timeouts = |events: &[Event]| {
        events
            .iter()
            .filter(|e| matches!(e, Event::Timeout { .. }))
            .count()
    };
    run_until(&mut a, &mut events, "second timeout", |events| {
        timeouts(events) == 2
    })
    .await;
    let outcomes = outcomes(&events);
    let run = ["missed 1", "missed 2", "missed 3", "timeout"];
    assert_eq!(outcomes[..4], run, "{outcomes:?}");
    assert_eq!(outcomes[outcomes.len() - 4..], run, "{outcomes:?}");
    let middle = &outcomes[4..outcomes.len() - 4];
    assert!(
        (1..=3).contains(&middle.len()) && middle.iter().all(|o| o == "beat"),
        "{outcomes:?}"
    );
}
