//! The channel behaviour between in-memory swarms: stream negotiation on the
//! chosen connection, frames in both directions, and the open errors.

use std::{
    convert::Infallible,
    task::{Context, Poll},
    time::Duration,
};

use atmosphere_behaviours::channel::{
    self,
    protocol::{encode_frame, read_frame, FrameError},
    Event, OpenError,
};
use futures::{AsyncWriteExt, StreamExt};
use libp2p::{
    core::{transport::PortUse, Endpoint},
    swarm::{
        dummy, ConnectionDenied, ConnectionId, FromSwarm, NetworkBehaviour, SwarmEvent, THandler,
        THandlerInEvent, THandlerOutEvent, ToSwarm,
    },
    Multiaddr, PeerId, Stream, Swarm,
};
use libp2p_swarm_test::{drive, SwarmExt};

/// Generous bound on every wait; tests assert behaviour, not timing.
const WAIT: Duration = Duration::from_secs(30);
/// Frame size limit used by the tests.
const MAX: usize = 64 * 1024;

fn channel_swarm(config: channel::Config) -> Swarm<channel::Behaviour> {
    Swarm::new_ephemeral_tokio(|_| channel::Behaviour::new(config))
}

/// Two connected channel swarms (`a` dialed `b`).
async fn connected_pair(
    config: channel::Config,
) -> (Swarm<channel::Behaviour>, Swarm<channel::Behaviour>) {
    let mut a = channel_swarm(config.clone());
    let mut b = channel_swarm(config);
    b.listen().with_memory_addr_external().await;
    a.connect(&mut b).await;
    (a, b)
}

async fn write_frames(stream: &mut Stream, payloads: &[&[u8]]) {
    let mut buf = Vec::new();
    for payload in payloads {
        encode_frame(&mut buf, payload, MAX).unwrap();
    }
    stream.write_all(&buf).await.unwrap();
    stream.flush().await.unwrap();
}

/// Reads frames until a clean end of stream.
async fn read_all(stream: &mut Stream) -> Vec<Vec<u8>> {
    let mut buf = Vec::new();
    let mut frames = Vec::new();
    while read_frame(stream, &mut buf, MAX).await.unwrap() {
        frames.push(buf.clone());
    }
    frames
}

async fn within<T>(what: &str, f: impl std::future::Future<Output = T>) -> T {
    tokio::time::timeout(WAIT, f)
        .await
        .unwrap_or_else(|_| panic!("timed out: {what}"))
}

#[tokio::test]
async fn opened_and_inbound_streams_carry_frames_both_ways() {
    let (mut a, mut b) = connected_pair(channel::Config::default()).await;
    let (a_id, b_id) = (*a.local_peer_id(), *b.local_peer_id());
    let a_conn = a.behaviour().connections(&b_id);
    let b_conn = b.behaviour().connections(&a_id);
    assert_eq!(a_conn.len(), 1);
    assert_eq!(b_conn.len(), 1);

    let id = a.behaviour_mut().open_stream(b_id, None).unwrap();
    let ([opened], [inbound]): ([Event; 1], [Event; 1]) = drive(&mut a, &mut b).await;
    let Event::Opened {
        peer,
        connection,
        id: opened_id,
        stream: mut a_stream,
    } = opened
    else {
        panic!("expected Opened, got {opened:?}");
    };
    assert_eq!((peer, connection, opened_id), (b_id, a_conn[0], id));
    let Event::Inbound {
        peer,
        connection,
        stream: mut b_stream,
    } = inbound
    else {
        panic!("expected Inbound, got {inbound:?}");
    };
    assert_eq!((peer, connection), (a_id, b_conn[0]));

    // The streams are the owner's: keep the swarms polled in the background.
    tokio::spawn(a.loop_on_next());
    tokio::spawn(b.loop_on_next());

    let big = vec![0xa5u8; 40_000];
    let sent: Vec<&[u8]> = vec![b"first", b"", &big, b"last"];
    let reader = tokio::spawn(async move {
        let got = read_all(&mut b_stream).await;
        // Answer on the same (inbound) stream.
        write_frames(&mut b_stream, &[b"ack", &(got.len() as u32).to_be_bytes()]).await;
        b_stream.close().await.unwrap();
        got
    });
    write_frames(&mut a_stream, &sent).await;
    a_stream.close().await.unwrap();
    let got = within("reader", reader).await.unwrap();
    assert_eq!(got, sent.iter().map(|p| p.to_vec()).collect::<Vec<_>>());
    let answer = within("answer", read_all(&mut a_stream)).await;
    assert_eq!(answer, vec![b"ack".to_vec(), 4u32.to_be_bytes().to_vec()]);
}

#[tokio::test]
async fn stream_opens_on_the_connection_asked_for() {
    let (mut a, mut b) = connected_pair(channel::Config::default()).await;
    // A second connection between the same two peers.
    a.connect(&mut b).await;
    let (a_id, b_id) = (*a.local_peer_id(), *b.local_peer_id());
    let conns = a.behaviour().connections(&b_id);
    assert_eq!(conns.len(), 2, "two connections: {conns:?}");
    let (older, newer) = (conns[0], conns[1]);

    a.behaviour_mut().open_stream(b_id, Some(newer)).unwrap();
    let ([opened], [inbound]): ([Event; 1], [Event; 1]) = drive(&mut a, &mut b).await;
    let Event::Opened {
        connection,
        stream: mut a_stream,
        ..
    } = opened
    else {
        panic!("expected Opened, got {opened:?}");
    };
    assert_eq!(connection, newer, "opened on the wrong connection");
    let Event::Inbound {
        connection: b_conn,
        stream: mut b_stream,
        ..
    } = inbound
    else {
        panic!("expected Inbound, got {inbound:?}");
    };

    // Close the other connection: the stream must survive, and on b the one
    // connection left is the one the stream arrived on.
    assert!(a.close_connection(older));
    within("older connection closed", async {
        let (mut a_closed, mut b_closed) = (false, false);
        while !(a_closed && b_closed) {
            tokio::select! {
                e = a.select_next_some() => if let SwarmEvent::ConnectionClosed { connection_id, .. } = e {
                    assert_eq!(connection_id, older);
                    a_closed = true;
                },
                e = b.select_next_some() => if let SwarmEvent::ConnectionClosed { connection_id, .. } = e {
                    assert_ne!(connection_id, b_conn, "the stream's connection closed");
                    b_closed = true;
                },
            }
        }
    })
    .await;
    assert_eq!(a.behaviour().connections(&b_id), vec![newer]);
    assert_eq!(b.behaviour().connections(&a_id), vec![b_conn]);

    tokio::spawn(a.loop_on_next());
    tokio::spawn(b.loop_on_next());
    write_frames(&mut a_stream, &[b"still here"]).await;
    a_stream.close().await.unwrap();
    let got = within("frames", read_all(&mut b_stream)).await;
    assert_eq!(got, vec![b"still here".to_vec()]);
}

#[tokio::test]
async fn open_to_an_unknown_peer_or_connection_is_not_connected() {
    let (mut a, b) = connected_pair(channel::Config::default()).await;
    assert!(matches!(
        a.behaviour_mut().open_stream(PeerId::random(), None),
        Err(OpenError::NotConnected)
    ));
    // A connection id that is not one of this peer's connections.
    let b_id = *b.local_peer_id();
    let bogus = ConnectionId::new_unchecked(usize::MAX);
    assert!(!a.behaviour().connections(&b_id).contains(&bogus));
    assert!(matches!(
        a.behaviour_mut().open_stream(b_id, Some(bogus)),
        Err(OpenError::NotConnected)
    ));
}

#[tokio::test]
async fn outstanding_opens_per_connection_are_bounded() {
    let (mut a, mut b) = connected_pair(channel::Config {
        max_pending_opens_per_connection: 2,
        ..Default::default()
    })
    .await;
    let b_id = *b.local_peer_id();
    let first = a.behaviour_mut().open_stream(b_id, None).unwrap();
    let second = a.behaviour_mut().open_stream(b_id, None).unwrap();
    assert_ne!(first, second);
    assert!(matches!(
        a.behaviour_mut().open_stream(b_id, None),
        Err(OpenError::TooManyPending)
    ));
    let (opened, _inbound): ([Event; 2], [Event; 2]) = drive(&mut a, &mut b).await;
    let mut ids: Vec<_> = opened
        .iter()
        .map(|e| match e {
            Event::Opened { id, .. } => *id,
            other => panic!("expected Opened, got {other:?}"),
        })
        .collect();
    ids.sort();
    assert_eq!(ids, vec![first, second]);
    // Settled opens free their slots.
    a.behaviour_mut().open_stream(b_id, None).unwrap();
    a.behaviour_mut().open_stream(b_id, None).unwrap();
    assert!(matches!(
        a.behaviour_mut().open_stream(b_id, None),
        Err(OpenError::TooManyPending)
    ));
}

#[tokio::test]
async fn remote_without_the_protocol_fails_the_open() {
    let mut a = channel_swarm(channel::Config::default());
    let mut b = Swarm::new_ephemeral_tokio(|_| dummy::Behaviour);
    b.listen().with_memory_addr_external().await;
    a.connect(&mut b).await;
    let b_id = *b.local_peer_id();
    let id = a.behaviour_mut().open_stream(b_id, None).unwrap();
    let ([failed], []): ([Event; 1], [Infallible; 0]) = drive(&mut a, &mut b).await;
    match failed {
        Event::OpenFailed {
            peer,
            id: failed_id,
            error: OpenError::UnsupportedProtocol,
            ..
        } => assert_eq!((peer, failed_id), (b_id, id)),
        other => panic!("expected OpenFailed(UnsupportedProtocol), got {other:?}"),
    }
}

#[tokio::test]
async fn pending_open_fails_when_the_connection_closes() {
    let (mut a, mut b) = connected_pair(channel::Config::default()).await;
    let b_id = *b.local_peer_id();
    let id = a.behaviour_mut().open_stream(b_id, None).unwrap();
    assert!(a.disconnect_peer_id(b_id).is_ok());
    let failed = within("open failure", async {
        loop {
            tokio::select! {
                e = a.select_next_some() => match e {
                    SwarmEvent::Behaviour(Event::OpenFailed { id: failed, error, .. }) => {
                        assert_eq!(failed, id);
                        break error;
                    }
                    SwarmEvent::Behaviour(Event::Opened { .. }) => {
                        panic!("opened on a closing connection")
                    }
                    _ => {}
                },
                _ = b.select_next_some() => {}
            }
        }
    })
    .await;
    assert!(
        matches!(failed, OpenError::ConnectionClosed),
        "expected ConnectionClosed, got {failed:?}"
    );
    // The closed connection is forgotten.
    assert!(a.behaviour().connections(&b_id).is_empty());
    assert!(matches!(
        a.behaviour_mut().open_stream(b_id, None),
        Err(OpenError::NotConnected)
    ));
}

#[tokio::test]
async fn oversized_frame_is_refused_by_the_reader() {
    let (mut a, mut b) = connected_pair(channel::Config::default()).await;
    let b_id = *b.local_peer_id();
    a.behaviour_mut().open_stream(b_id, None).unwrap();
    let ([opened], [inbound]): ([Event; 1], [Event; 1]) = drive(&mut a, &mut b).await;
    let (Event::Opened { stream: mut tx, .. }, Event::Inbound { stream: mut rx, .. }) =
        (opened, inbound)
    else {
        panic!("streams not opened");
    };
    tokio::spawn(a.loop_on_next());
    tokio::spawn(b.loop_on_next());
    // The writer refuses to encode it…
    let mut buf = Vec::new();
    assert!(matches!(
        encode_frame(&mut buf, &[0; 17], 16),
        Err(FrameError::TooLarge { len: 17, max: 16 })
    ));
    // …and a reader refuses a length prefix over its limit without reading on.
    tx.write_all(&u32::MAX.to_be_bytes()).await.unwrap();
    tx.write_all(b"junk").await.unwrap();
    tx.flush().await.unwrap();
    let mut frame = Vec::new();
    let result = within("read", read_frame(&mut rx, &mut frame, MAX)).await;
    match result {
        Err(FrameError::TooLarge { len, max }) => {
            assert_eq!((len, max), (u32::MAX as usize, MAX));
        }
        other => panic!("expected TooLarge, got {other:?}"),
    }
}

/// A behaviour that denies every established connection: composed after the
/// channel behaviour, it makes the swarm refuse connections the channel
/// behaviour has already said yes to.
#[derive(Default)]
struct DenyAll;

#[derive(Debug, thiserror::Error)]
#[error("denied by the test")]
struct Denied;

impl NetworkBehaviour for DenyAll {
    type ConnectionHandler = dummy::ConnectionHandler;
    type ToSwarm = Infallible;

    fn handle_established_inbound_connection(
        &mut self,
        _: ConnectionId,
        _: PeerId,
        _: &Multiaddr,
        _: &Multiaddr,
    ) -> Result<THandler<Self>, ConnectionDenied> {
        Err(ConnectionDenied::new(Denied))
    }

    fn handle_established_outbound_connection(
        &mut self,
        _: ConnectionId,
        _: PeerId,
        _: &Multiaddr,
        _: Endpoint,
        _: PortUse,
    ) -> Result<THandler<Self>, ConnectionDenied> {
        Err(ConnectionDenied::new(Denied))
    }

    fn on_swarm_event(&mut self, _: FromSwarm) {}

    fn on_connection_handler_event(
        &mut self,
        _: PeerId,
        _: ConnectionId,
        event: THandlerOutEvent<Self>,
    ) {
        match event {}
    }

    fn poll(&mut self, _: &mut Context<'_>) -> Poll<ToSwarm<Infallible, THandlerInEvent<Self>>> {
        Poll::Pending
    }
}

#[derive(NetworkBehaviour)]
struct ChannelThenDeny {
    channel: channel::Behaviour,
    deny: DenyAll,
}

/// When a behaviour composed after the channel denies a connection, the swarm
/// reports `ListenFailure`/`DialFailure` (never `ConnectionClosed`) to every
/// behaviour. The channel behaviour must then forget the connection it
/// registered in `handle_established_*`.
#[tokio::test]
async fn connection_denied_by_another_behaviour_is_forgotten() {
    let mut a = Swarm::new_ephemeral_tokio(|_| ChannelThenDeny {
        channel: channel::Behaviour::default(),
        deny: DenyAll,
    });
    let mut b = channel_swarm(channel::Config::default());
    let (addr, _) = b.listen().with_memory_addr_external().await;
    a.dial(addr).unwrap();
    let b_id = *b.local_peer_id();
    within("dial denied", async {
        loop {
            tokio::select! {
                e = a.select_next_some() => match e {
                    SwarmEvent::OutgoingConnectionError { .. } => break,
                    SwarmEvent::ConnectionEstablished { .. } => panic!("not denied"),
                    _ => {}
                },
                _ = b.select_next_some() => {}
            }
        }
    })
    .await;
    assert!(!a.is_connected(&b_id));
    assert_eq!(
        a.behaviour().channel.connections(&b_id),
        Vec::<ConnectionId>::new(),
        "the channel behaviour still lists a connection the swarm denied"
    );
    assert!(matches!(
        a.behaviour_mut().channel.open_stream(b_id, None),
        Err(OpenError::NotConnected)
    ));
}
