//! Bad input against real nodes on loopback: oversized payloads, invalid
//! topics, malformed and unusable invites, garbage on the membership protocol
//! from a stranger, garbage frames on the channel from a verified member, and
//! calls to unknown peers. After each, the node must still serve.

mod common;

use common::{eventually, start, start_with, WAIT};

use std::{future::Future, io, time::Duration};

use atmosphere::{
    behaviours::{
        channel::{self, protocol::encode_frame},
        membership::{self, protocol::JoinRequest},
    },
    invite::{self, InviteError, InviteUri},
    wire::{self, Frame},
    CallOptions, Error, InviteOptions, Multiaddr, Node, PeerId, RpcError,
};
use bytes::Bytes;
use futures::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, StreamExt};
use libp2p::{
    identity::Keypair,
    noise,
    request_response::{self, ProtocolSupport},
    swarm::{dial_opts::DialOpts, ConnectionError, NetworkBehaviour, SwarmEvent},
    tcp, yamux, StreamProtocol, Swarm,
};

/// The membership protocol, spelled out as a foreign implementation would.
const MEMBERSHIP: StreamProtocol = StreamProtocol::new("/atmosphere/membership/1.0.0");

/// The node answers a local call.
async fn assert_serves_locally(node: &Node) {
    let answer = node
        .call("node.echo", "still alive", CallOptions::default())
        .await
        .expect("local echo");
    assert_eq!(answer, Bytes::from_static(b"still alive"));
}

/// A node's loopback TCP address with `/p2p/<peer id>`.
async fn dial_addr(node: &Node) -> Multiaddr {
    let addr = node
        .listen_addrs()
        .await
        .unwrap()
        .into_iter()
        .find(|a| a.to_string().starts_with("/ip4/127.0.0.1/tcp/"))
        .expect("a loopback TCP listen address");
    addr.with_p2p(node.peer_id()).unwrap()
}

/// `b` joins `a`'s mesh with a fresh invite; then `b` gets RPC answers from
/// `a` and receives what `a` publishes.
async fn assert_serves_a_new_member(a: &Node, b: &Node) {
    let invite = a.invite(None, InviteOptions::default()).await.unwrap();
    let mesh = b.join(&invite.uri).await.expect("b joins a");
    assert_eq!(mesh.id, invite.mesh_id);
    let a_id = a.peer_id();
    eventually("b gets an RPC answer from a", || async {
        matches!(
            b.call("node.echo", "over the link", CallOptions::default().on(a_id)).await,
            Ok(answer) if answer == Bytes::from_static(b"over the link")
        )
    })
    .await;
    let mut sub = b.subscribe("checks.**").await.unwrap();
    eventually("a routes a publish to b", || async {
        a.publish("checks.after.bad.input", "hello b")
            .await
            .unwrap()
            == 1
    })
    .await;
    let msg = tokio::time::timeout(WAIT, sub.recv())
        .await
        .expect("message in time")
        .expect("subscription open");
    assert_eq!(msg.topic, "checks.after.bad.input");
    assert_eq!(msg.payload, Bytes::from_static(b"hello b"));
    assert_eq!(msg.sender, a_id);
}

/// A libp2p swarm outside Atmosphere: TCP, Noise, Yamux, and a long idle
/// timeout so that it never closes a connection by itself during a test.
fn raw_swarm<B: NetworkBehaviour>(behaviour: impl FnOnce(&Keypair) -> B) -> Swarm<B> {
    libp2p::SwarmBuilder::with_new_identity()
        .with_tokio()
        .with_tcp(
            tcp::Config::default().nodelay(true),
            noise::Config::new,
            yamux::Config::default,
        )
        .unwrap()
        .with_behaviour(|key| behaviour(key))
        .unwrap()
        .with_swarm_config(|c| c.with_idle_connection_timeout(Duration::from_secs(600)))
        .build()
}

/// Drives `swarm` until its connection to `peer` closes; fails if it closes
/// by our own idle timeout rather than by the remote.
async fn wait_closed_by_remote<B>(swarm: &mut Swarm<B>, peer: PeerId)
where
    B: NetworkBehaviour,
{
    tokio::time::timeout(WAIT, async {
        loop {
            if let SwarmEvent::ConnectionClosed {
                peer_id,
                cause,
                num_established: 0,
                ..
            } = swarm.select_next_some().await
            {
                if peer_id == peer {
                    assert!(
                        !matches!(cause, Some(ConnectionError::KeepAliveTimeout)),
                        "closed by our own idle timeout, not by the node"
                    );
                    return;
                }
            }
        }
    })
    .await
    .expect("the node closes the connection");
}

// ----- oversized payloads -------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_payloads_are_refused() {
    let a = start_with("a", |c| c.max_payload = 1024).await;
    let max = 1024;
    match a.node.publish("home.big", vec![0u8; max + 1]).await {
        Err(Error::PayloadTooLarge { len, max: limit }) => assert_eq!((len, limit), (max + 1, max)),
        other => panic!("expected PayloadTooLarge, got {other:?}"),
    }
    match a
        .node
        .call("node.echo", vec![0u8; max + 1], CallOptions::default())
        .await
    {
        Err(RpcError::Invalid(reason)) => assert!(reason.contains("exceed"), "{reason}"),
        other => panic!("expected RpcError::Invalid, got {other:?}"),
    }
    // Exactly at the limit is fine, locally and in the echo.
    let mut sub = a.node.subscribe("home.big").await.unwrap();
    assert_eq!(a.node.publish("home.big", vec![7u8; max]).await.unwrap(), 0);
    let got = tokio::time::timeout(WAIT, sub.recv())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(got.payload.len(), max);
    let echoed = a
        .node
        .call("node.echo", vec![9u8; max], CallOptions::default())
        .await
        .unwrap();
    assert_eq!(echoed, Bytes::from(vec![9u8; max]));
}

// ----- invalid topics and patterns ---------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_topics_and_patterns_are_refused() {
    let a = start("a").await;
    for topic in ["a..b", "", ".a", "a.", "home.*", "home.**", "a b", "ho*"] {
        assert!(
            matches!(a.node.publish(topic, "x").await, Err(Error::Topic(_))),
            "publish({topic:?}) accepted"
        );
    }
    for pattern in ["ho*", "a..b", "", "home.*x", "a/b"] {
        assert!(
            matches!(a.node.subscribe(pattern).await, Err(Error::Topic(_))),
            "subscribe({pattern:?}) accepted"
        );
    }
    let too_long = "a".repeat(300);
    assert!(matches!(
        a.node.subscribe(&too_long).await,
        Err(Error::Topic(_))
    ));
    assert!(matches!(
        a.node.call("a..b", "", CallOptions::default()).await,
        Err(RpcError::Invalid(_))
    ));
    assert!(matches!(
        a.node
            .register("svc.*", |_r: atmosphere::Request| async {
                Ok::<_, atmosphere::HandlerError>(Bytes::new())
            })
            .await,
        Err(Error::Topic(_))
    ));
    assert_serves_locally(&a.node).await;
}

// ----- malformed and unusable invites ------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_invite_uris_are_refused() {
    let a = start("a").await;
    let mesh = "00112233445566778899aabbccddeeff";
    let token = invite::new_token();
    let peer = PeerId::random();
    type Check = fn(&InviteError) -> bool;
    let cases: Vec<(String, Check)> = vec![
        ("not a uri".into(), |e| matches!(e, InviteError::NotAnInvite(_))),
        (String::new(), |e| matches!(e, InviteError::NotAnInvite(_))),
        ("https://join?token=x".into(), |e| {
            matches!(e, InviteError::NotAnInvite(_))
        }),
        ("atmosphere://join?token=ATM-x&mesh=zz".into(), |e| {
            matches!(e, InviteError::InvalidToken)
        }),
        (format!("atmosphere://join?token={token}&mesh=zz"), |e| {
            matches!(e, InviteError::InvalidMesh(_))
        }),
        (format!("atmosphere://join?mesh={mesh}"), |e| {
            matches!(e, InviteError::Missing("token"))
        }),
        (format!("atmosphere://join?token={token}&mesh={mesh}"), |e| {
            matches!(e, InviteError::NoEndpoints)
        }),
        (
            format!("atmosphere://join?token={token}&mesh={mesh}&endpoint=/ip4/127.0.0.1/tcp/1"),
            |e| matches!(e, InviteError::InvalidEndpoints(_)),
        ),
        (
            // {"local":5}
            format!("atmosphere://join?token={token}&mesh={mesh}&endpoints=%7B%22local%22%3A5%7D"),
            |e| matches!(e, InviteError::InvalidEndpoints(_)),
        ),
        (
            format!(
                "atmosphere://join?token={token}&mesh={mesh}&endpoint=/ip4/127.0.0.1/tcp/1/p2p/{peer}&pad={}",
                "x".repeat(invite::MAX_URI_LEN)
            ),
            |e| matches!(e, InviteError::TooLong),
        ),
    ];
    for (uri, check) in cases {
        match a.node.join(&uri).await {
            Err(Error::Invite(e)) => assert!(check(&e), "{uri:.80}: unexpected {e:?}"),
            other => panic!("{uri:.80}: expected Error::Invite, got {other:?}"),
        }
    }
    assert!(a.node.list_meshes().await.unwrap().is_empty());
    assert_serves_locally(&a.node).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unusable_invites_fail_to_join_and_leave_both_nodes_working() {
    let a = start("a").await;
    let b = start("b").await;
    let mesh = a.node.create_mesh("home").await.unwrap();
    let real = a.node.invite(None, InviteOptions::default()).await.unwrap();
    let parsed = InviteUri::parse(&real.uri).unwrap();

    // An endpoint where nobody listens.
    let dead: Multiaddr = format!("/ip4/127.0.0.1/tcp/1/p2p/{}", a.node.peer_id())
        .parse()
        .unwrap();
    let unreachable = InviteUri {
        endpoints: invite::Endpoints {
            local: vec![dead],
            ..Default::default()
        },
        ..parsed.clone()
    };
    match b.node.join(&unreachable.to_uri()).await {
        Err(Error::Join(reason)) => assert!(!reason.is_empty()),
        other => panic!("dead endpoint: expected Error::Join, got {other:?}"),
    }
    // A well-formed token the founder never issued.
    let forged = InviteUri {
        token: invite::new_token(),
        ..parsed.clone()
    };
    match b.node.join(&forged.to_uri()).await {
        Err(Error::Join(reason)) => assert!(!reason.is_empty()),
        other => panic!("forged token: expected Error::Join, got {other:?}"),
    }
    // A mesh the node at the endpoint is not in.
    let elsewhere = InviteUri {
        mesh: "00112233445566778899aabbccddeeff".parse().unwrap(),
        ..parsed.clone()
    };
    match b.node.join(&elsewhere.to_uri()).await {
        Err(Error::Join(reason)) => assert!(!reason.is_empty()),
        other => panic!("unknown mesh: expected Error::Join, got {other:?}"),
    }
    // Our own invite.
    assert!(
        matches!(
            a.node.join(&forged.to_uri()).await,
            Ok(info) if info.id == mesh.id
        ),
        "joining a mesh we are in is a no-op"
    );
    assert!(b.node.list_meshes().await.unwrap().is_empty());

    // The real invite still works, once.
    b.node.join(&real.uri).await.expect("real invite");
    let c = start("c").await;
    match c.node.join(&real.uri).await {
        Err(Error::Join(reason)) => assert!(!reason.is_empty()),
        other => panic!("spent invite: expected Error::Join, got {other:?}"),
    }
    assert!(c.node.list_meshes().await.unwrap().is_empty());
    assert_serves_locally(&a.node).await;
    assert_serves_locally(&b.node).await;
    assert_serves_locally(&c.node).await;
    assert_serves_a_new_member(&a.node, &c.node).await;
}

// ----- garbage on the membership protocol ---------------------------------

/// A request-response codec that writes requests as raw bytes (anything at
/// all, not necessarily CBOR) and reads whatever comes back.
#[derive(Clone, Default)]
struct RawCodec;

impl request_response::Codec for RawCodec {
    type Protocol = StreamProtocol;
    type Request = Vec<u8>;
    type Response = Vec<u8>;

    async fn read_request<T>(&mut self, _: &StreamProtocol, io: &mut T) -> io::Result<Vec<u8>>
    where
        T: AsyncRead + Unpin + Send,
    {
        let mut buf = Vec::new();
        io.take(1 << 20).read_to_end(&mut buf).await?;
        Ok(buf)
    }

    async fn read_response<T>(&mut self, p: &StreamProtocol, io: &mut T) -> io::Result<Vec<u8>>
    where
        T: AsyncRead + Unpin + Send,
    {
        self.read_request(p, io).await
    }

    async fn write_request<T>(
        &mut self,
        _: &StreamProtocol,
        io: &mut T,
        req: Vec<u8>,
    ) -> io::Result<()>
    where
        T: AsyncWrite + Unpin + Send,
    {
        io.write_all(&req).await
    }

    async fn write_response<T>(
        &mut self,
        _: &StreamProtocol,
        io: &mut T,
        res: Vec<u8>,
    ) -> io::Result<()>
    where
        T: AsyncWrite + Unpin + Send,
    {
        io.write_all(&res).await
    }
}

/// Connects `raw` to `node`, lets `send` put a request on the membership
/// protocol, and waits for the node to close the connection.
///
/// The node does not see a Hello that fails to decode (request-response drops
/// it without an event), so the close comes from the membership Hello
/// timeout (10 s): a peer that never says a valid hello is disconnected.
async fn send_garbage_hello<B>(raw: &mut Swarm<B>, node: &Node, send: impl FnOnce(&mut B, &PeerId))
where
    B: NetworkBehaviour,
{
    let peer = node.peer_id();
    raw.dial(dial_addr(node).await).unwrap();
    tokio::time::timeout(WAIT, async {
        loop {
            if let SwarmEvent::ConnectionEstablished { peer_id, .. } = raw.select_next_some().await
            {
                assert_eq!(peer_id, peer);
                return;
            }
        }
    })
    .await
    .expect("raw swarm connects");
    send(raw.behaviour_mut(), &peer);
    wait_closed_by_remote(raw, peer).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cbor_string_on_the_membership_protocol_is_disconnected() {
    assert_eq!(MEMBERSHIP, membership::protocol::PROTOCOL);
    let a = start("a").await;
    a.node.create_mesh("home").await.unwrap();
    let mut raw = raw_swarm(|_| {
        request_response::cbor::Behaviour::<String, String>::new(
            [(MEMBERSHIP, ProtocolSupport::Full)],
            request_response::Config::default().with_request_timeout(Duration::from_secs(60)),
        )
    });
    send_garbage_hello(&mut raw, &a.node, |b, peer| {
        b.send_request(peer, "let me in, I am a string".to_owned());
    })
    .await;
    assert_serves_locally(&a.node).await;
    let b = start("b").await;
    assert_serves_a_new_member(&a.node, &b.node).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn raw_bytes_on_the_membership_protocol_are_disconnected() {
    let a = start("a").await;
    a.node.create_mesh("home").await.unwrap();
    let mut raw = raw_swarm(|_| {
        request_response::Behaviour::<RawCodec>::new(
            [(MEMBERSHIP, ProtocolSupport::Full)],
            request_response::Config::default().with_request_timeout(Duration::from_secs(60)),
        )
    });
    // Not CBOR at all, and larger than the protocol's message limit.
    let junk: Vec<u8> = (0..(membership::protocol::MAX_MESSAGE_SIZE as usize + 4096))
        .map(|i| (i * 7 + 0xf7) as u8)
        .collect();
    send_garbage_hello(&mut raw, &a.node, |b, peer| {
        b.send_request(peer, junk);
    })
    .await;
    assert_serves_locally(&a.node).await;
    let b = start("b").await;
    assert_serves_a_new_member(&a.node, &b.node).await;
}

// ----- garbage frames from a verified member ------------------------------

#[derive(NetworkBehaviour)]
struct RawMember {
    membership: membership::Behaviour,
    channel: channel::Behaviour,
}

/// A raw swarm joins `a`'s mesh for real with an invite, checks that a
/// well-formed frame on its channel stream is delivered, then writes `junk`
/// on the same stream. The node must disconnect it and keep serving.
async fn misbehaving_member(junk: Vec<u8>) {
    let a = start("a").await;
    let mesh = a.node.create_mesh("home").await.unwrap();
    let mut seen_by_a = a.node.subscribe("raw.**").await.unwrap();
    let invite = a.node.invite(None, InviteOptions::default()).await.unwrap();
    let parsed = InviteUri::parse(&invite.uri).unwrap();
    let addrs: Vec<Multiaddr> = parsed.endpoints.all().cloned().collect();
    let a_id = invite::peer_of(&addrs[0]).unwrap();
    assert_eq!(a_id, a.node.peer_id());
    assert_eq!(parsed.mesh.to_string(), mesh.id);

    let mut raw = raw_swarm(|key| RawMember {
        membership: membership::Behaviour::new(
            key.public().to_peer_id(),
            membership::Config::default(),
        ),
        channel: channel::Behaviour::default(),
    });
    let raw_id = *raw.local_peer_id();
    raw.behaviour_mut().membership.request_join(
        a_id,
        JoinRequest {
            mesh: parsed.mesh,
            token: parsed.token.clone(),
        },
    );
    raw.dial(DialOpts::peer_id(a_id).addresses(addrs).build())
        .unwrap();

    // Join, get verified, open our channel stream. The node's own stream to
    // us is kept open (never read) so that it has no reason to complain.
    let mut kept = Vec::new();
    let (mut joined, mut verified) = (false, false);
    let mut stream = None;
    tokio::time::timeout(WAIT, async {
        while stream.is_none() {
            match raw.select_next_some().await {
                SwarmEvent::Behaviour(RawMemberEvent::Membership(event)) => match event {
                    membership::Event::Joined { peer, mesh: m, .. } => {
                        assert_eq!((peer, m.id), (a_id, parsed.mesh));
                        joined = true;
                    }
                    membership::Event::Verified { peer, meshes } => {
                        assert_eq!(peer, a_id);
                        assert!(meshes.contains_key(&parsed.mesh));
                        assert!(joined, "verified before joining");
                        verified = true;
                        raw.behaviour_mut().channel.open_stream(a_id, None).unwrap();
                    }
                    other => panic!("unexpected {other:?}"),
                },
                SwarmEvent::Behaviour(RawMemberEvent::Channel(event)) => match event {
                    channel::Event::Inbound { stream, .. } => kept.push(stream),
                    channel::Event::Opened { stream: s, .. } => stream = Some(s),
                    channel::Event::OpenFailed { error, .. } => panic!("open failed: {error}"),
                },
                SwarmEvent::ConnectionClosed { cause, .. } => panic!("closed early: {cause:?}"),
                _ => {}
            }
        }
    })
    .await
    .expect("raw member joins and opens its stream");
    assert!(joined && verified);
    let mut stream = stream.unwrap();

    // The node sees us as a member.
    let raw_str = raw_id.to_string();
    {
        let peers = a.node.peers().await.unwrap();
        assert!(
            peers
                .iter()
                .any(|p| p.peer_id == raw_str && p.meshes.contains(&mesh.id)),
            "{peers:?}"
        );
    }

    // A well-formed publish is delivered: the node really reads this stream.
    let mut buf = Vec::new();
    let mut open = Vec::new();
    wire::encode(
        &Frame::Open {
            session: 5,
            first_seq: 1,
        },
        &mut open,
    );
    encode_frame(&mut buf, &open, 1 << 20).unwrap();
    let mut payload = Vec::new();
    wire::encode(
        &Frame::Publish {
            seq: 1,
            topic: "raw.hello".into(),
            payload: Bytes::from_static(b"well-formed"),
            ts: 1,
        },
        &mut payload,
    );
    encode_frame(&mut buf, &payload, 1 << 20).unwrap();
    let writer = tokio::spawn(async move {
        stream.write_all(&buf).await.unwrap();
        stream.flush().await.unwrap();
        stream
    });
    let got = poll_until(&mut raw, async {
        tokio::time::timeout(WAIT, seen_by_a.recv())
            .await
            .expect("publish delivered")
            .expect("subscription open")
    })
    .await;
    assert_eq!(got.sender, raw_id);
    assert_eq!(got.payload, Bytes::from_static(b"well-formed"));
    let mut stream = poll_until(&mut raw, writer).await.unwrap();

    // Now the junk.
    let writer = tokio::spawn(async move {
        // The node may hang up while we are still writing: that is fine.
        let _ = stream.write_all(&junk).await;
        let _ = stream.flush().await;
        stream
    });
    wait_closed_by_remote(&mut raw, a_id).await;
    drop(writer);
    drop(kept);

    assert_serves_locally(&a.node).await;
    eventually("the node forgets the misbehaving member", || async {
        !a.node
            .peers()
            .await
            .unwrap()
            .iter()
            .any(|p| p.peer_id == raw_str && p.connected)
    })
    .await;
    let b = start("b").await;
    assert_serves_a_new_member(&a.node, &b.node).await;
}

/// Awaits `f` while keeping `swarm` polled.
async fn poll_until<B, T>(swarm: &mut Swarm<B>, f: impl Future<Output = T>) -> T
where
    B: NetworkBehaviour,
{
    tokio::pin!(f);
    loop {
        tokio::select! {
            out = &mut f => return out,
            event = swarm.select_next_some() => {
                if let SwarmEvent::ConnectionClosed { cause, .. } = event {
                    panic!("connection closed unexpectedly: {cause:?}");
                }
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn member_sending_garbage_cbor_is_disconnected() {
    let mut junk = Vec::new();
    encode_frame(&mut junk, b"\xff\xfe\xfd not cbor at all", 1 << 20).unwrap();
    misbehaving_member(junk).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn member_sending_an_oversized_length_prefix_is_disconnected() {
    let mut junk = u32::MAX.to_be_bytes().to_vec();
    junk.extend_from_slice(&[0u8; 1024]);
    misbehaving_member(junk).await;
}

// ----- unknown peers --------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn call_to_an_unknown_peer_is_a_transport_error() {
    let a = start("a").await;
    match a
        .node
        .call(
            "node.echo",
            "anyone?",
            CallOptions::timeout(Duration::from_secs(5)).on(PeerId::random()),
        )
        .await
    {
        Err(RpcError::Transport(reason)) => assert!(reason.contains("not connected"), "{reason}"),
        other => panic!("expected RpcError::Transport, got {other:?}"),
    }
    assert_serves_locally(&a.node).await;
}
