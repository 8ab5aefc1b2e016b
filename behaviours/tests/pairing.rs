//! The pairing behaviour between in-memory swarms: the happy path, rejection
//! by either user, cancelling, a peer not accepting, the session timeout, a
//! second concurrent request (Busy), men in the middle (substituting keys,
//! and relaying them unchanged), malformed and out-of-order frames, and a
//! closed connection.

use std::{fmt::Debug, time::Duration};

use atmosphere_behaviours::{
    channel,
    pairing::{
        self,
        protocol::{self, read_frame, AbortReason, Message, MAX_NAME_LEN},
        EphemeralKey, Event, FailReason, PairingCode, PairingError, Role, SessionId, PROTOCOL,
    },
};
use futures::{AsyncWriteExt, StreamExt};
use libp2p::{
    swarm::{NetworkBehaviour, SwarmEvent},
    PeerId, Stream, Swarm,
};
use libp2p_swarm_test::SwarmExt;
use tokio::sync::{mpsc, oneshot};

/// Generous bound on every wait; tests assert behaviour, not timing.
const WAIT: Duration = Duration::from_secs(30);
/// How long a node must stay silent to count as quiet.
const QUIET: Duration = Duration::from_millis(500);
/// Frame limit for the tests' own reads.
const MAX: usize = 128 * 1024;

/// A node's behaviours as far as pairing cares: pairing itself, and the
/// channel behaviour, which (as in a node) keeps connections open.
#[derive(NetworkBehaviour)]
struct Node {
    pairing: pairing::Behaviour,
    keep_alive: channel::Behaviour,
}

/// A man in the middle: one peer id, acceptor toward one victim and
/// requester toward the other (two behaviours, hence two sessions at once).
/// `toward_a` comes first, so it takes the streams the requester opens.
#[derive(NetworkBehaviour)]
struct Mitm {
    toward_a: pairing::Behaviour,
    toward_b: pairing::Behaviour,
    keep_alive: channel::Behaviour,
}

fn config(name: &str) -> pairing::Config {
    pairing::Config::default().with_name(name)
}

fn node(config: pairing::Config) -> Swarm<Node> {
    Swarm::new_ephemeral_tokio(|key| Node {
        pairing: pairing::Behaviour::new(key.public().to_peer_id(), config),
        keep_alive: channel::Behaviour::default(),
    })
}

/// A peer that speaks the pairing protocol by hand.
fn raw_peer() -> Swarm<libp2p_stream::Behaviour> {
    Swarm::new_ephemeral_tokio(|_| libp2p_stream::Behaviour::new())
}

async fn within<T>(what: &str, f: impl std::future::Future<Output = T>) -> T {
    tokio::time::timeout(WAIT, f)
        .await
        .unwrap_or_else(|_| panic!("timed out: {what}"))
}

/// Connects `a` to `b` (`b` listens).
async fn connect<A, B>(a: &mut Swarm<A>, b: &mut Swarm<B>)
where
    A: NetworkBehaviour + Send,
    A::ToSwarm: Debug,
    B: NetworkBehaviour + Send,
    B::ToSwarm: Debug,
{
    if b.listeners().next().is_none() {
        b.listen().with_memory_addr_external().await;
    }
    within("connect", a.connect(b)).await;
}

type Call<B> = Box<dyn FnOnce(&mut Swarm<B>) + Send>;

/// A swarm running in its own task: its events (filtered) arrive on a
/// channel, and calls on it run between two polls.
struct Driver<B: NetworkBehaviour, E> {
    id: PeerId,
    name: &'static str,
    events: mpsc::UnboundedReceiver<E>,
    calls: mpsc::UnboundedSender<Call<B>>,
}

impl<B, E> Driver<B, E>
where
    B: NetworkBehaviour + Send + 'static,
    B::ToSwarm: Debug + Send,
    E: Debug + Send + 'static,
{
    fn spawn(name: &'static str, mut swarm: Swarm<B>, filter: fn(B::ToSwarm) -> Option<E>) -> Self {
        let (event_tx, events) = mpsc::unbounded_channel();
        let (calls, mut call_rx) = mpsc::unbounded_channel::<Call<B>>();
        let id = *swarm.local_peer_id();
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    call = call_rx.recv() => match call {
                        Some(call) => call(&mut swarm),
                        None => return,
                    },
                    event = swarm.select_next_some() => {
                        if let SwarmEvent::Behaviour(event) = event {
                            if let Some(event) = filter(event) {
                                let _ = event_tx.send(event);
                            }
                        }
                    }
                }
            }
        });
        Self {
            id,
            name,
            events,
            calls,
        }
    }

    /// Runs `f` on the swarm and returns its result.
    async fn with_swarm<T: Send + 'static>(
        &self,
        f: impl FnOnce(&mut Swarm<B>) -> T + Send + 'static,
    ) -> T {
        let (tx, rx) = oneshot::channel();
        let call: Call<B> = Box::new(move |swarm| {
            let _ = tx.send(f(swarm));
        });
        assert!(self.calls.send(call).is_ok(), "{}: task ended", self.name);
        within("call", rx).await.unwrap()
    }

    async fn next(&mut self) -> E {
        let what = format!("{}: next event", self.name);
        within(&what, self.events.recv())
            .await
            .unwrap_or_else(|| panic!("{}: task ended", self.name))
    }

    /// Asserts that no event arrives for a while.
    async fn assert_quiet(&mut self) {
        if let Ok(event) = tokio::time::timeout(QUIET, self.events.recv()).await {
            panic!("{}: unexpected {event:?}", self.name);
        }
    }
}

type NodeDriver = Driver<Node, Event>;

fn pairing_events(event: NodeEvent) -> Option<Event> {
    match event {
        NodeEvent::Pairing(event) => Some(event),
        NodeEvent::KeepAlive(_) => None,
    }
}

fn spawn_node(name: &'static str, swarm: Swarm<Node>) -> NodeDriver {
    Driver::spawn(name, swarm, pairing_events)
}

impl Driver<Node, Event> {
    async fn pairing<T: Send + 'static>(
        &self,
        f: impl FnOnce(&mut pairing::Behaviour) -> T + Send + 'static,
    ) -> T {
        self.with_swarm(move |swarm| f(&mut swarm.behaviour_mut().pairing))
            .await
    }

    async fn request(&self, peer: PeerId) -> SessionId {
        self.pairing(move |p| p.request(peer)).await.unwrap()
    }

    async fn expect_code(
        &mut self,
        session: SessionId,
        peer: PeerId,
        role: Role,
    ) -> (PairingCode, String) {
        match self.next().await {
            Event::CodeReady {
                session: s,
                peer: p,
                role: r,
                code,
                peer_name,
            } => {
                assert_eq!((s, p, r), (session, peer, role), "{}", self.name);
                let shown = code.to_string();
                assert_eq!(shown.len(), 6, "{shown}");
                assert!(shown.bytes().all(|b| b.is_ascii_digit()), "{shown}");
                assert_eq!(shown.parse::<u32>().unwrap(), code.value());
                (code, peer_name)
            }
            other => panic!("{}: expected CodeReady, got {other:?}", self.name),
        }
    }

    async fn expect_incoming(&mut self, peer: PeerId, name: &str) -> SessionId {
        match self.next().await {
            Event::IncomingRequest {
                session,
                peer: p,
                name: n,
            } => {
                assert_eq!((p, n.as_str()), (peer, name), "{}", self.name);
                session
            }
            other => panic!("{}: expected IncomingRequest, got {other:?}", self.name),
        }
    }

    async fn expect_failed(&mut self, session: SessionId, peer: PeerId, reason: FailReason) {
        match self.next().await {
            Event::Failed {
                session: s,
                peer: p,
                reason: r,
            } => assert_eq!((s, p, r), (session, peer, reason), "{}", self.name),
            other => panic!("{}: expected Failed({reason:?}), got {other:?}", self.name),
        }
    }

    /// Expects `Failed` with a protocol error and returns its text.
    async fn expect_protocol_failure(&mut self, peer: PeerId) -> (SessionId, String) {
        match self.next().await {
            Event::Failed {
                session,
                peer: p,
                reason: FailReason::Protocol(what),
            } => {
                assert_eq!(p, peer, "{}", self.name);
                (session, what)
            }
            other => panic!("{}: expected a protocol failure, got {other:?}", self.name),
        }
    }

    async fn expect_peer_confirmed(&mut self, session: SessionId, peer: PeerId) {
        match self.next().await {
            Event::PeerConfirmed {
                session: s,
                peer: p,
            } => assert_eq!((s, p), (session, peer), "{}", self.name),
            other => panic!("{}: expected PeerConfirmed, got {other:?}", self.name),
        }
    }

    async fn expect_both_confirmed(&mut self, session: SessionId, peer: PeerId) {
        match self.next().await {
            Event::BothConfirmed {
                session: s,
                peer: p,
            } => assert_eq!((s, p), (session, peer), "{}", self.name),
            other => panic!("{}: expected BothConfirmed, got {other:?}", self.name),
        }
    }

    async fn expect_completed(&mut self, session: SessionId, peer: PeerId, role: Role) {
        match self.next().await {
            Event::Completed {
                session: s,
                peer: p,
                role: r,
            } => assert_eq!((s, p, r), (session, peer, role), "{}", self.name),
            other => panic!("{}: expected Completed, got {other:?}", self.name),
        }
    }

    async fn assert_idle(&self) {
        assert_eq!(
            self.pairing(|p| p.active_session()).await,
            None,
            "{}",
            self.name
        );
    }
}

/// A session started by `a` toward `b`, up to both codes shown.
struct Started {
    at_a: SessionId,
    at_b: SessionId,
    code_a: PairingCode,
    code_b: PairingCode,
}

/// `a` requests `b` (accepting); checks the events up to both codes.
async fn start(a: &mut NodeDriver, b: &mut NodeDriver, a_name: &str, b_name: &str) -> Started {
    let at_a = a.request(b.id).await;
    assert_eq!(
        a.pairing(|p| p.active_session()).await,
        Some((at_a, b.id, Role::Requester))
    );
    let at_b = b.expect_incoming(a.id, a_name).await;
    let (code_b, name_seen_by_b) = b.expect_code(at_b, a.id, Role::Acceptor).await;
    assert_eq!(name_seen_by_b, a_name);
    let (code_a, name_seen_by_a) = a.expect_code(at_a, b.id, Role::Requester).await;
    assert_eq!(name_seen_by_a, b_name);
    assert_eq!(
        b.pairing(|p| p.active_session()).await,
        Some((at_b, a.id, Role::Acceptor))
    );
    Started {
        at_a,
        at_b,
        code_a,
        code_b,
    }
}

/// A whole successful pairing of `a` (requester) with `b` (acceptor); returns
/// the credentials `a` received.
async fn pair(a: &mut NodeDriver, b: &mut NodeDriver, credentials: Vec<u8>) -> Vec<u8> {
    let (a_name, b_name) = (a.name, b.name);
    let s = start(a, b, a_name, b_name).await;
    assert_eq!(s.code_a, s.code_b, "both screens show the same code");
    finish(a, b, &s, credentials).await
}

/// Both confirm (`a` first) and `b` sends `credentials`.
async fn finish(
    a: &mut NodeDriver,
    b: &mut NodeDriver,
    s: &Started,
    credentials: Vec<u8>,
) -> Vec<u8> {
    let (at_a, at_b) = (s.at_a, s.at_b);
    a.pairing(move |p| p.confirm(at_a)).await.unwrap();
    b.expect_peer_confirmed(at_b, a.id).await;
    // Not before both confirmed, and never by the requester.
    let early = b
        .pairing(move |p| p.send_credentials(at_b, b"early".to_vec()))
        .await;
    assert!(
        matches!(early, Err(PairingError::WrongState { session, .. }) if session == at_b),
        "{early:?}"
    );
    b.pairing(move |p| p.confirm(at_b)).await.unwrap();
    b.expect_both_confirmed(at_b, a.id).await;
    a.expect_peer_confirmed(at_a, b.id).await;
    a.expect_both_confirmed(at_a, b.id).await;
    let wrong = a
        .pairing(move |p| p.send_credentials(at_a, b"x".to_vec()))
        .await;
    assert_eq!(
        wrong,
        Err(PairingError::WrongRole {
            session: at_a,
            role: Role::Requester
        })
    );

    b.pairing(move |p| p.send_credentials(at_b, credentials))
        .await
        .unwrap();
    let received = match a.next().await {
        Event::CredentialsReceived {
            session,
            peer,
            credentials,
        } => {
            assert_eq!((session, peer), (at_a, b.id));
            credentials
        }
        other => panic!("expected CredentialsReceived, got {other:?}"),
    };
    a.expect_completed(at_a, b.id, Role::Requester).await;
    b.expect_completed(at_b, a.id, Role::Acceptor).await;
    a.assert_idle().await;
    b.assert_idle().await;
    received
}

/// Two nodes, `a` connected to `b`, `b` accepting.
async fn two_nodes(
    a_config: pairing::Config,
    b_config: pairing::Config,
) -> (NodeDriver, NodeDriver) {
    let mut a = node(a_config);
    let mut b = node(b_config);
    connect(&mut a, &mut b).await;
    (spawn_node("a", a), spawn_node("b", b))
}

fn frame(message: &Message) -> Vec<u8> {
    protocol::encode(message, MAX).unwrap()
}

async fn send(stream: &mut Stream, bytes: &[u8]) {
    stream.write_all(bytes).await.unwrap();
    stream.flush().await.unwrap();
}

/// Reads the next message from a raw stream.
async fn read_message(stream: &mut Stream) -> Message {
    let mut buf = Vec::new();
    assert!(
        within("frame", read_frame(stream, &mut buf, MAX))
            .await
            .unwrap(),
        "stream ended instead of sending a frame"
    );
    protocol::decode(&buf, MAX).unwrap()
}

/// Asserts the remote dropped or closed `stream`: reading ends.
async fn assert_ended(stream: &mut Stream, what: &str) {
    let mut buf = Vec::new();
    let result = within(what, read_frame(stream, &mut buf, MAX)).await;
    assert!(!matches!(result, Ok(true)), "{what}: got a frame");
}

#[tokio::test]
async fn happy_path_same_codes_and_credentials_arrive_intact() {
    let (mut a, mut b) = two_nodes(config("a"), config("b").with_accepting(true)).await;
    // The largest credentials allowed; one byte more is refused.
    let max = protocol::DEFAULT_MAX_CREDENTIALS_LEN;
    let credentials: Vec<u8> = (0..max).map(|i| (i * 7 % 251) as u8).collect();

    let s = start(&mut a, &mut b, "a", "b").await;
    assert_eq!(s.code_a, s.code_b);
    let (at_a, at_b) = (s.at_a, s.at_b);
    a.pairing(move |p| p.confirm(at_a)).await.unwrap();
    // Confirming twice is refused.
    assert!(matches!(
        a.pairing(move |p| p.confirm(at_a)).await,
        Err(PairingError::WrongState { .. })
    ));
    b.expect_peer_confirmed(at_b, a.id).await;
    b.pairing(move |p| p.confirm(at_b)).await.unwrap();
    b.expect_both_confirmed(at_b, a.id).await;
    a.expect_peer_confirmed(at_a, b.id).await;
    a.expect_both_confirmed(at_a, b.id).await;
    // Rejecting is over once both confirmed.
    assert!(matches!(
        b.pairing(move |p| p.reject(at_b)).await,
        Err(PairingError::WrongState { .. })
    ));
    let too_large = vec![0; max + 1];
    assert_eq!(
        b.pairing(move |p| p.send_credentials(at_b, too_large))
            .await,
        Err(PairingError::TooLarge { len: max + 1, max })
    );
    let sent = credentials.clone();
    let (first, second) = b
        .pairing(move |p| {
            (
                p.send_credentials(at_b, sent),
                p.send_credentials(at_b, vec![1]),
            )
        })
        .await;
    first.unwrap();
    // Sending twice is refused.
    assert!(
        matches!(second, Err(PairingError::WrongState { .. })),
        "{second:?}"
    );
    match a.next().await {
        Event::CredentialsReceived {
            session,
            peer,
            credentials: got,
        } => {
            assert_eq!((session, peer), (at_a, b.id));
            assert_eq!(got, credentials, "credentials byte-identical");
        }
        other => panic!("expected CredentialsReceived, got {other:?}"),
    }
    a.expect_completed(at_a, b.id, Role::Requester).await;
    b.expect_completed(at_b, a.id, Role::Acceptor).await;
    a.assert_quiet().await;
    b.assert_quiet().await;
    a.assert_idle().await;
    b.assert_idle().await;
    // The session is gone.
    assert_eq!(
        b.pairing(move |p| p.send_credentials(at_b, vec![1])).await,
        Err(PairingError::UnknownSession(at_b))
    );

    // A second pairing, the other way round, with fresh keys.
    b.pairing(|p| p.set_accepting(false)).await;
    a.pairing(|p| p.set_accepting(true)).await;
    let again = pair(&mut b, &mut a, b"second".to_vec()).await;
    assert_eq!(again, b"second");
}

#[tokio::test]
async fn confirmations_in_the_other_order_and_long_names() {
    let long = "é".repeat(40); // 80 bytes: cut to 64 on our side
    let (mut a, mut b) = two_nodes(config(&long), config("b\n").with_accepting(true)).await;
    let cut = "é".repeat(MAX_NAME_LEN / 2);
    let s = start(&mut a, &mut b, &cut, "b\u{fffd}").await;
    assert_eq!(s.code_a, s.code_b);
    let (at_a, at_b) = (s.at_a, s.at_b);
    // The acceptor confirms first.
    b.pairing(move |p| p.confirm(at_b)).await.unwrap();
    a.expect_peer_confirmed(at_a, b.id).await;
    a.pairing(move |p| p.confirm(at_a)).await.unwrap();
    a.expect_both_confirmed(at_a, b.id).await;
    b.expect_peer_confirmed(at_b, a.id).await;
    b.expect_both_confirmed(at_b, a.id).await;
    b.pairing(move |p| p.send_credentials(at_b, Vec::new()))
        .await
        .unwrap();
    assert!(matches!(
        a.next().await,
        Event::CredentialsReceived { credentials, .. } if credentials.is_empty()
    ));
    a.expect_completed(at_a, b.id, Role::Requester).await;
    b.expect_completed(at_b, a.id, Role::Acceptor).await;
}

#[tokio::test]
async fn rejection_by_the_acceptor_fails_both_sides_and_sends_nothing() {
    let (mut a, mut b) = two_nodes(config("a"), config("b").with_accepting(true)).await;
    let s = start(&mut a, &mut b, "a", "b").await;
    let (at_a, at_b) = (s.at_a, s.at_b);
    a.pairing(move |p| p.confirm(at_a)).await.unwrap();
    b.expect_peer_confirmed(at_b, a.id).await;
    b.pairing(move |p| p.reject(at_b)).await.unwrap();
    b.expect_failed(at_b, a.id, FailReason::RejectedByUs).await;
    a.expect_failed(at_a, b.id, FailReason::RejectedByPeer)
        .await;
    assert_eq!(
        b.pairing(move |p| p.send_credentials(at_b, b"secret".to_vec()))
            .await,
        Err(PairingError::UnknownSession(at_b))
    );
    assert_eq!(
        a.pairing(move |p| p.confirm(at_a)).await,
        Err(PairingError::UnknownSession(at_a))
    );
    a.assert_quiet().await;
    b.assert_quiet().await;
    a.assert_idle().await;
    b.assert_idle().await;
}

#[tokio::test]
async fn rejection_by_the_requester_fails_both_sides_and_sends_nothing() {
    let (mut a, mut b) = two_nodes(config("a"), config("b").with_accepting(true)).await;
    let s = start(&mut a, &mut b, "a", "b").await;
    let (at_a, at_b) = (s.at_a, s.at_b);
    b.pairing(move |p| p.confirm(at_b)).await.unwrap();
    a.expect_peer_confirmed(at_a, b.id).await;
    a.pairing(move |p| p.reject(at_a)).await.unwrap();
    a.expect_failed(at_a, b.id, FailReason::RejectedByUs).await;
    b.expect_failed(at_b, a.id, FailReason::RejectedByPeer)
        .await;
    assert_eq!(
        b.pairing(move |p| p.send_credentials(at_b, b"secret".to_vec()))
            .await,
        Err(PairingError::UnknownSession(at_b))
    );
    a.assert_quiet().await;
    b.assert_quiet().await;

    // Cancelling, by either side, at any point.
    let s = start(&mut a, &mut b, "a", "b").await;
    let (at_a, at_b) = (s.at_a, s.at_b);
    a.pairing(move |p| p.cancel(at_a)).await.unwrap();
    a.expect_failed(at_a, b.id, FailReason::Cancelled).await;
    b.expect_failed(at_b, a.id, FailReason::RejectedByPeer)
        .await;
    let s = start(&mut a, &mut b, "a", "b").await;
    let (at_a, at_b) = (s.at_a, s.at_b);
    a.pairing(move |p| p.confirm(at_a)).await.unwrap();
    b.expect_peer_confirmed(at_b, a.id).await;
    b.pairing(move |p| p.confirm(at_b)).await.unwrap();
    b.expect_both_confirmed(at_b, a.id).await;
    a.expect_peer_confirmed(at_a, b.id).await;
    a.expect_both_confirmed(at_a, b.id).await;
    b.pairing(move |p| p.cancel(at_b)).await.unwrap();
    b.expect_failed(at_b, a.id, FailReason::Cancelled).await;
    a.expect_failed(at_a, b.id, FailReason::RejectedByPeer)
        .await;
    a.assert_quiet().await;
    b.assert_quiet().await;
}

#[tokio::test]
async fn a_node_not_accepting_refuses_requests() {
    // Accepting is off by default.
    let (mut a, mut b) = two_nodes(config("a"), config("b")).await;
    assert!(!b.pairing(|p| p.is_accepting()).await);
    let session = a.request(b.id).await;
    a.expect_failed(session, b.id, FailReason::NotAccepting)
        .await;
    b.assert_quiet().await;
    a.assert_idle().await;
    b.assert_idle().await;

    // Once in pairing mode, the same request goes through.
    b.pairing(|p| p.set_accepting(true)).await;
    pair(&mut a, &mut b, b"ok".to_vec()).await;
}

#[tokio::test]
async fn requests_need_a_connection_and_a_peer_that_speaks_pairing() {
    let mut behaviour = pairing::Behaviour::new(PeerId::random(), pairing::Config::default());
    let stranger = PeerId::random();
    assert_eq!(
        behaviour.request(stranger),
        Err(PairingError::NotConnected(stranger))
    );
    assert_eq!(behaviour.active_session(), None);

    // A connected peer without the protocol.
    let mut a = node(config("a"));
    let mut r = raw_peer();
    connect(&mut a, &mut r).await;
    let r_id = *r.local_peer_id();
    tokio::spawn(r.loop_on_next());
    let mut a = spawn_node("a", a);
    let session = a.request(r_id).await;
    let (failed, what) = a.expect_protocol_failure(r_id).await;
    assert_eq!(failed, session);
    assert!(what.contains("does not support"), "{what}");
    a.assert_idle().await;
    assert_eq!(
        a.pairing(move |p| p.cancel(session)).await,
        Err(PairingError::UnknownSession(session))
    );
}

#[tokio::test]
async fn both_sides_time_out_when_a_user_never_decides() {
    let timeout = Duration::from_secs(1);
    let (mut a, mut b) = two_nodes(
        config("a").with_timeout(timeout),
        config("b").with_timeout(timeout).with_accepting(true),
    )
    .await;
    let s = start(&mut a, &mut b, "a", "b").await;
    let (at_a, at_b) = (s.at_a, s.at_b);
    a.pairing(move |p| p.confirm(at_a)).await.unwrap();
    b.expect_peer_confirmed(at_b, a.id).await;
    // `b`'s user never decides.
    a.expect_failed(at_a, b.id, FailReason::Timeout).await;
    b.expect_failed(at_b, a.id, FailReason::Timeout).await;
    a.assert_quiet().await;
    b.assert_quiet().await;
    a.assert_idle().await;
    b.assert_idle().await;
    assert_eq!(
        b.pairing(move |p| p.confirm(at_b)).await,
        Err(PairingError::UnknownSession(at_b))
    );
}

#[tokio::test]
async fn a_second_concurrent_request_is_refused_busy_and_the_first_completes() {
    let mut a = node(config("a").with_accepting(true));
    let mut b = node(config("b").with_accepting(true));
    let mut c = node(config("c").with_accepting(true));
    connect(&mut a, &mut b).await;
    connect(&mut c, &mut b).await;
    connect(&mut a, &mut c).await;
    let (mut a, mut b, mut c) = (spawn_node("a", a), spawn_node("b", b), spawn_node("c", c));

    let s = start(&mut a, &mut b, "a", "b").await;
    assert_eq!(s.code_a, s.code_b);

    // A newcomer asks `b` while `b` is in a session: refused Busy.
    let at_c = c.request(b.id).await;
    c.expect_failed(at_c, b.id, FailReason::Busy).await;
    c.assert_idle().await;
    // Neither member of the session may start another one.
    let (a_id, c_id) = (a.id, c.id);
    assert_eq!(
        b.pairing(move |p| p.request(c_id)).await,
        Err(PairingError::Busy)
    );
    assert_eq!(
        a.pairing(move |p| p.request(c_id)).await,
        Err(PairingError::Busy)
    );
    // And `a`, in a session as the requester, refuses requests too.
    let at_c = c.request(a_id).await;
    c.expect_failed(at_c, a.id, FailReason::Busy).await;

    // The first session is unaffected (`b` reported nothing about `c`).
    let credentials = finish(&mut a, &mut b, &s, b"mesh-cert".to_vec()).await;
    assert_eq!(credentials, b"mesh-cert");
    b.assert_quiet().await;

    // Now `c` gets its turn.
    let received = pair(&mut c, &mut b, b"for-c".to_vec()).await;
    assert_eq!(received, b"for-c");
}

#[derive(Debug)]
enum Side {
    TowardA,
    TowardB,
}

fn mitm_events(event: MitmEvent) -> Option<(Side, Event)> {
    match event {
        MitmEvent::TowardA(e) => Some((Side::TowardA, e)),
        MitmEvent::TowardB(e) => Some((Side::TowardB, e)),
        MitmEvent::KeepAlive(_) => None,
    }
}

#[tokio::test]
async fn a_man_in_the_middle_substituting_keys_gets_different_codes_and_no_credentials() {
    let mut a = node(config("a"));
    let mut b = node(config("b").with_accepting(true));
    // M claims to be `b` toward `a`.
    let mut m = Swarm::new_ephemeral_tokio(|key| Mitm {
        toward_a: pairing::Behaviour::new(
            key.public().to_peer_id(),
            config("b").with_accepting(true),
        ),
        toward_b: pairing::Behaviour::new(key.public().to_peer_id(), config("a")),
        keep_alive: channel::Behaviour::default(),
    });
    connect(&mut a, &mut m).await;
    connect(&mut m, &mut b).await;
    let (mut a, mut b) = (spawn_node("a", a), spawn_node("b", b));
    let mut m = Driver::spawn("m", m, mitm_events);
    let (m_id, b_id) = (m.id, b.id);

    // `a` asks M (believing it is `b`); M asks `b` in turn, with its own keys.
    let at_a = a.request(m_id).await;
    let mut m_session_a = None;
    let mut m_code_a = None;
    while m_code_a.is_none() {
        match m.next().await {
            (
                Side::TowardA,
                Event::IncomingRequest {
                    session,
                    peer,
                    name,
                },
            ) => {
                assert_eq!((peer, name.as_str()), (a.id, "a"));
                m_session_a = Some(session);
            }
            (Side::TowardA, Event::CodeReady { code, .. }) => m_code_a = Some(code),
            other => panic!("m: unexpected {other:?}"),
        }
    }
    let m_session_a = m_session_a.unwrap();
    let (code_a, name_at_a) = a.expect_code(at_a, m_id, Role::Requester).await;
    assert_eq!(name_at_a, "b", "M can claim any name");
    assert_eq!(Some(code_a), m_code_a, "a and M share a key");

    let m_session_b = m
        .with_swarm(move |s| s.behaviour_mut().toward_b.request(b_id))
        .await
        .unwrap();
    let at_b = b.expect_incoming(m_id, "a").await;
    let (code_b, _) = b.expect_code(at_b, m_id, Role::Acceptor).await;
    match m.next().await {
        (Side::TowardB, Event::CodeReady { session, code, .. }) => {
            assert_eq!(session, m_session_b);
            assert_eq!(code, code_b, "M and b share a key");
        }
        other => panic!("m: unexpected {other:?}"),
    }

    // What the two users compare: different codes (equal with probability
    // 10⁻⁶ at most).
    assert_ne!(code_a, code_b, "the screens must disagree");

    // M confirms both sides; `b`'s user sees the mismatch and rejects.
    m.with_swarm(move |s| {
        s.behaviour_mut().toward_a.confirm(m_session_a).unwrap();
        s.behaviour_mut().toward_b.confirm(m_session_b).unwrap();
    })
    .await;
    b.expect_peer_confirmed(at_b, m_id).await;
    b.pairing(move |p| p.reject(at_b)).await.unwrap();
    b.expect_failed(at_b, m_id, FailReason::RejectedByUs).await;
    assert_eq!(
        b.pairing(move |p| p.send_credentials(at_b, b"mesh-cert".to_vec()))
            .await,
        Err(PairingError::UnknownSession(at_b))
    );
    // `a`'s user rejects too.
    a.expect_peer_confirmed(at_a, m_id).await;
    a.pairing(move |p| p.reject(at_a)).await.unwrap();
    a.expect_failed(at_a, m_id, FailReason::RejectedByUs).await;

    let mut failed = Vec::new();
    while failed.len() < 2 {
        match m.next().await {
            (
                side,
                Event::Failed {
                    session, reason, ..
                },
            ) => failed.push((session, reason, side)),
            (_, Event::CredentialsReceived { .. }) => panic!("M received credentials"),
            other => panic!("m: unexpected {other:?}"),
        }
    }
    assert!(failed.iter().any(|(s, r, side)| *s == m_session_b
        && *r == FailReason::RejectedByPeer
        && matches!(side, Side::TowardB)));
    assert!(failed.iter().any(|(s, r, side)| *s == m_session_a
        && *r == FailReason::RejectedByPeer
        && matches!(side, Side::TowardA)));
    m.assert_quiet().await;
    b.assert_quiet().await;
}

/// M relays the two public keys unchanged between its connection to `a` and
/// its connection to `b`: both share one secret, but the codes bind the peer
/// ids of each connection, so the screens still disagree.
#[tokio::test]
async fn a_man_in_the_middle_relaying_keys_unchanged_still_gets_different_codes() {
    let mut a = node(config("a"));
    let mut b = node(config("b").with_accepting(true));
    let mut m = raw_peer();
    let mut incoming = m.behaviour().new_control().accept(PROTOCOL).unwrap();
    let mut control = m.behaviour().new_control();
    connect(&mut a, &mut m).await;
    connect(&mut m, &mut b).await;
    let m_id = *m.local_peer_id();
    tokio::spawn(m.loop_on_next());
    let (mut a, mut b) = (spawn_node("a", a), spawn_node("b", b));
    let b_id = b.id;

    let at_a = a.request(m_id).await;
    let (peer, mut from_a) = within("a's stream", incoming.next()).await.unwrap();
    assert_eq!(peer, a.id);
    let request = read_message(&mut from_a).await;
    assert!(matches!(request, Message::PairRequest { .. }));
    let mut to_b = within("open", control.open_stream(b_id, PROTOCOL))
        .await
        .unwrap();
    send(&mut to_b, &frame(&request)).await;
    let accept = read_message(&mut to_b).await;
    assert!(matches!(accept, Message::PairAccept { .. }));
    send(&mut from_a, &frame(&accept)).await;

    let at_b = b.expect_incoming(m_id, "a").await;
    let (code_b, _) = b.expect_code(at_b, m_id, Role::Acceptor).await;
    let (code_a, name) = a.expect_code(at_a, m_id, Role::Requester).await;
    assert_eq!(name, "b", "the relayed name");
    assert_ne!(
        code_a, code_b,
        "the relayed secret must not give matching codes"
    );

    // Both users reject; M reads the rejections.
    a.pairing(move |p| p.reject(at_a)).await.unwrap();
    b.pairing(move |p| p.reject(at_b)).await.unwrap();
    a.expect_failed(at_a, m_id, FailReason::RejectedByUs).await;
    b.expect_failed(at_b, m_id, FailReason::RejectedByUs).await;
    assert_eq!(read_message(&mut from_a).await, Message::CodeRejected);
    assert_eq!(read_message(&mut to_b).await, Message::CodeRejected);
    assert_ended(&mut from_a, "a's stream").await;
    assert_ended(&mut to_b, "b's stream").await;
}

#[tokio::test]
async fn malformed_frames_fail_their_session_and_pairing_keeps_working() {
    let mut a = node(config("a"));
    let mut b = node(config("b").with_accepting(true));
    let mut r = raw_peer();
    let mut control = r.behaviour().new_control();
    connect(&mut a, &mut b).await;
    connect(&mut r, &mut b).await;
    let r_id = *r.local_peer_id();
    tokio::spawn(r.loop_on_next());
    let (mut a, mut b) = (spawn_node("a", a), spawn_node("b", b));
    let b_id = b.id;
    let open = async |control: &mut libp2p_stream::Control| {
        within("open", control.open_stream(b_id, PROTOCOL))
            .await
            .unwrap()
    };

    // Bytes that are not CBOR.
    let mut s = open(&mut control).await;
    send(&mut s, &[0, 0, 0, 3, 0xff, 0xfe, 0xfd]).await;
    let (garbage, what) = b.expect_protocol_failure(r_id).await;
    assert!(what.contains("malformed"), "{what}");
    assert_ended(&mut s, "stream after garbage").await;

    // A length prefix over the limit: refused unread.
    let mut s = open(&mut control).await;
    send(&mut s, &u32::MAX.to_be_bytes()).await;
    send(&mut s, b"junk").await;
    let (oversized, what) = b.expect_protocol_failure(r_id).await;
    assert!(what.contains("exceeds"), "{what}");
    assert_ne!(oversized, garbage);
    assert_ended(&mut s, "stream after an oversized frame").await;

    // A valid message, but not a request: answered ABORT.
    let mut s = open(&mut control).await;
    send(&mut s, &frame(&Message::Done)).await;
    let (_, what) = b.expect_protocol_failure(r_id).await;
    assert!(what.contains("PAIR_REQUEST"), "{what}");
    assert_eq!(
        read_message(&mut s).await,
        Message::Abort {
            reason: AbortReason::Protocol
        }
    );
    assert_ended(&mut s, "stream after a wrong first message").await;

    // A name over the bound.
    let mut s = open(&mut control).await;
    let request = Message::PairRequest {
        public_key: EphemeralKey::generate().public(),
        name: "n".repeat(MAX_NAME_LEN + 1),
    };
    send(&mut s, &frame(&request)).await;
    let (_, what) = b.expect_protocol_failure(r_id).await;
    assert!(what.contains("name"), "{what}");
    b.assert_idle().await;

    // Garbage in the middle of a session fails that session.
    let mut s = open(&mut control).await;
    let request = Message::PairRequest {
        public_key: EphemeralKey::generate().public(),
        name: "raw".into(),
    };
    send(&mut s, &frame(&request)).await;
    let session = b.expect_incoming(r_id, "raw").await;
    b.expect_code(session, r_id, Role::Acceptor).await;
    assert!(matches!(
        read_message(&mut s).await,
        Message::PairAccept { .. }
    ));
    send(&mut s, &[0, 0, 0, 2, 0xff, 0xff]).await;
    let (failed, _) = b.expect_protocol_failure(r_id).await;
    assert_eq!(failed, session);
    b.assert_idle().await;

    // A proper pairing still works, undisturbed by garbage meanwhile.
    let s1 = start(&mut a, &mut b, "a", "b").await;
    let mut s = open(&mut control).await;
    send(&mut s, &[0, 0, 0, 1, 0xff]).await;
    b.expect_protocol_failure(r_id).await;
    let credentials = finish(&mut a, &mut b, &s1, b"still-works".to_vec()).await;
    assert_eq!(credentials, b"still-works");
}

/// The requester refuses credentials sent before both users confirmed.
#[tokio::test]
async fn credentials_before_confirmation_are_a_protocol_error() {
    let mut a = node(config("a"));
    let mut r = raw_peer();
    let mut incoming = r.behaviour().new_control().accept(PROTOCOL).unwrap();
    connect(&mut a, &mut r).await;
    let r_id = *r.local_peer_id();
    tokio::spawn(r.loop_on_next());
    let mut a = spawn_node("a", a);

    let session = a.request(r_id).await;
    let (_, mut s) = within("a's stream", incoming.next()).await.unwrap();
    let Message::PairRequest { public_key, name } = read_message(&mut s).await else {
        panic!("expected PAIR_REQUEST");
    };
    assert_eq!(name, "a");
    let key = EphemeralKey::generate();
    let accept = Message::PairAccept {
        public_key: key.public(),
        name: "evil".into(),
    };
    // The raw acceptor computes the same code as `a`.
    let code = key.derive_code(&public_key, &a.id, &r_id).unwrap();
    send(&mut s, &frame(&accept)).await;
    send(
        &mut s,
        &frame(&Message::Credentials {
            data: b"x".to_vec(),
        }),
    )
    .await;
    let (shown, _) = a.expect_code(session, r_id, Role::Requester).await;
    assert_eq!(shown, code);
    let (failed, what) = a.expect_protocol_failure(r_id).await;
    assert_eq!(failed, session);
    assert!(what.contains("CREDENTIALS"), "{what}");
    assert_eq!(
        read_message(&mut s).await,
        Message::Abort {
            reason: AbortReason::Protocol
        }
    );
    a.assert_quiet().await;
    a.assert_idle().await;
}

#[tokio::test]
async fn a_closed_connection_fails_the_session() {
    let (mut a, mut b) = two_nodes(config("a"), config("b").with_accepting(true)).await;
    let s = start(&mut a, &mut b, "a", "b").await;
    let a_id = a.id;
    assert!(b
        .with_swarm(move |swarm| swarm.disconnect_peer_id(a_id))
        .await
        .is_ok());
    b.expect_failed(s.at_b, a.id, FailReason::ConnectionClosed)
        .await;
    a.expect_failed(s.at_a, b.id, FailReason::ConnectionClosed)
        .await;
    a.assert_idle().await;
    let b_id = b.id;
    assert_eq!(
        a.pairing(move |p| p.request(b_id)).await,
        Err(PairingError::NotConnected(b_id))
    );
}
