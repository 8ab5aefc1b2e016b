//! The membership behaviour between in-memory swarms: verification of mesh
//! certificates, rejection of non-members, invite redemption (accepted and
//! refused), the Hello timeout and the bound on unverified peers.

use std::{
    collections::{BTreeMap, BTreeSet},
    time::Duration,
};

use atmosphere_behaviours::{
    channel,
    membership::{
        self,
        cert::{Certificate, CertificateBody, MeshDescriptor, MeshId, Permissions, Role},
        protocol::JoinRequest,
        Event,
    },
};
use futures::StreamExt;
use libp2p::{
    core::{transport::MemoryTransport, upgrade::Version, Transport},
    identity::Keypair,
    swarm::{ConnectionError, NetworkBehaviour, SwarmEvent},
    PeerId, Swarm,
};
use libp2p_swarm_test::SwarmExt;

/// Generous bound on every wait; tests assert behaviour, not timing.
const WAIT: Duration = Duration::from_secs(30);

type MSwarm = Swarm<membership::Behaviour>;

fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// A mesh: its founder's key and descriptor.
struct TestMesh {
    founder: Keypair,
    descriptor: MeshDescriptor,
}

impl TestMesh {
    fn new(name: &str) -> Self {
        let founder = Keypair::generate_ed25519();
        // Every test mesh has a fresh founder key, so a fixed nonce still gives
        // a distinct mesh id.
        let descriptor = MeshDescriptor::new(name, &founder.public(), [7; 16]).unwrap();
        Self {
            founder,
            descriptor,
        }
    }

    /// A second mesh founded by the same key.
    fn sibling(&self, name: &str) -> Self {
        let founder = self.founder.clone();
        let descriptor = MeshDescriptor::new(name, &founder.public(), [8; 16]).unwrap();
        Self {
            founder,
            descriptor,
        }
    }

    fn id(&self) -> MeshId {
        self.descriptor.id
    }

    fn body_for(&self, peer: PeerId, role: Role, expires_at: Option<u64>) -> CertificateBody {
        CertificateBody {
            mesh: self.id(),
            peer,
            role,
            permissions: Permissions::all(),
            issued_at: unix_now(),
            expires_at,
        }
    }

    /// A member certificate for `peer`, signed by the founder.
    fn cert_for(&self, peer: PeerId) -> Certificate {
        Certificate::sign(&self.body_for(peer, Role::Member, None), &self.founder).unwrap()
    }

    fn founder_peer(&self) -> PeerId {
        self.founder.public().to_peer_id()
    }
}

/// An in-memory (and TCP) swarm with the given identity, like
/// `Swarm::new_ephemeral_tokio` but able to use a chosen key (the founder's).
fn swarm_with<B: NetworkBehaviour>(
    key: Keypair,
    behaviour: impl FnOnce(&Keypair) -> B,
) -> Swarm<B> {
    let transport = MemoryTransport::default()
        .or_transport(libp2p::tcp::tokio::Transport::default())
        .upgrade(Version::V1)
        .authenticate(libp2p::noise::Config::new(&key).unwrap())
        .multiplex(libp2p::yamux::Config::default())
        .timeout(Duration::from_secs(20))
        .boxed();
    let peer = key.public().to_peer_id();
    Swarm::new(
        transport,
        behaviour(&key),
        peer,
        libp2p::swarm::Config::with_tokio_executor(),
    )
}

fn config() -> membership::Config {
    membership::Config::default()
}

/// A peer in no mesh at all.
fn stranger(config: membership::Config) -> MSwarm {
    swarm_with(Keypair::generate_ed25519(), |key| {
        membership::Behaviour::new(key.public().to_peer_id(), config)
    })
}

/// A member of `mesh` holding `cert(own peer id)`.
fn member_with(
    mesh: &TestMesh,
    config: membership::Config,
    cert: impl FnOnce(PeerId) -> Certificate,
) -> MSwarm {
    swarm_with(Keypair::generate_ed25519(), |key| {
        let peer = key.public().to_peer_id();
        let mut behaviour = membership::Behaviour::new(peer, config);
        behaviour.add_mesh(mesh.id(), mesh.founder.public(), cert(peer));
        behaviour
    })
}

/// A member of `mesh` with a valid certificate.
fn member(mesh: &TestMesh, config: membership::Config) -> MSwarm {
    member_with(mesh, config, |peer| mesh.cert_for(peer))
}

/// The founder of `mesh` (its identity is the founder key).
fn founder(mesh: &TestMesh, config: membership::Config) -> MSwarm {
    swarm_with(mesh.founder.clone(), |key| {
        let peer = key.public().to_peer_id();
        let mut behaviour = membership::Behaviour::new(peer, config);
        let cert = Certificate::sign(&mesh.body_for(peer, Role::Founder, None), key).unwrap();
        behaviour.add_mesh(mesh.id(), key.public(), cert);
        behaviour
    })
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Side {
    A,
    B,
}

/// An event of one of two swarms of different behaviours.
enum Ev<X, Y> {
    A(X),
    B(Y),
}

async fn next_event<X, Y>(
    a: &mut Swarm<X>,
    b: &mut Swarm<Y>,
) -> Ev<SwarmEvent<X::ToSwarm>, SwarmEvent<Y::ToSwarm>>
where
    X: NetworkBehaviour,
    Y: NetworkBehaviour,
{
    tokio::select! {
        e = a.select_next_some() => Ev::A(e),
        e = b.select_next_some() => Ev::B(e),
    }
}

async fn next_pair(a: &mut MSwarm, b: &mut MSwarm) -> (Side, SwarmEvent<Event>) {
    match next_event(a, b).await {
        Ev::A(e) => (Side::A, e),
        Ev::B(e) => (Side::B, e),
    }
}

/// A swarm with no membership that keeps its connections alive and never
/// says hello.
fn silent() -> Swarm<channel::Behaviour> {
    swarm_with(Keypair::generate_ed25519(), |_| {
        channel::Behaviour::default()
    })
}

/// Drives both swarms, handing every event to `done` (which may act on the
/// swarms) until it returns true.
async fn drive_until(
    a: &mut MSwarm,
    b: &mut MSwarm,
    what: &str,
    mut done: impl FnMut(Side, SwarmEvent<Event>, &mut MSwarm, &mut MSwarm) -> bool,
) {
    let run = async {
        loop {
            let (side, event) = next_pair(a, b).await;
            if done(side, event, a, b) {
                return;
            }
        }
    };
    tokio::time::timeout(WAIT, run)
        .await
        .unwrap_or_else(|_| panic!("timed out waiting for: {what}"));
}

/// Drives both swarms for `period` and returns every event seen.
async fn drive_for(
    a: &mut MSwarm,
    b: &mut MSwarm,
    period: Duration,
) -> Vec<(Side, SwarmEvent<Event>)> {
    let mut seen = Vec::new();
    let _ = tokio::time::timeout(period, async {
        loop {
            seen.push(next_pair(a, b).await);
        }
    })
    .await;
    seen
}

/// `b` listens; `a` dials it (without waiting for anything).
async fn dial(a: &mut MSwarm, b: &mut MSwarm) {
    let (addr, _) = b.listen().with_memory_addr_external().await;
    a.dial(addr).unwrap();
}

/// Waits until `listener` emits `Rejected` for `dialer` and the connection is
/// closed on both sides; returns the listener's reason. Fails if the listener
/// verifies the dialer.
async fn expect_rejected_and_closed(dialer: &mut MSwarm, listener: &mut MSwarm) -> String {
    let dialer_id = *dialer.local_peer_id();
    let listener_id = *listener.local_peer_id();
    let mut reason = None;
    let (mut dialer_closed, mut listener_closed) = (false, false);
    drive_until(
        dialer,
        listener,
        "rejection and close",
        |side, event, _, _| {
            match (side, event) {
                (
                    Side::B,
                    SwarmEvent::Behaviour(Event::Rejected {
                        peer, reason: r, ..
                    }),
                ) => {
                    assert_eq!(peer, dialer_id);
                    reason = Some(r);
                }
                (Side::B, SwarmEvent::Behaviour(Event::Verified { peer, .. })) => {
                    panic!("listener verified {peer}, which holds no valid certificate")
                }
                (Side::A, SwarmEvent::ConnectionClosed { peer_id, .. }) => {
                    assert_eq!(peer_id, listener_id);
                    dialer_closed = true;
                }
                (Side::B, SwarmEvent::ConnectionClosed { peer_id, .. }) => {
                    assert_eq!(peer_id, dialer_id);
                    listener_closed = true;
                }
                _ => {}
            }
            reason.is_some() && dialer_closed && listener_closed
        },
    )
    .await;
    assert!(!dialer.is_connected(&listener_id));
    assert!(!listener.is_connected(&dialer_id));
    reason.unwrap()
}

// (a)
#[tokio::test]
async fn members_of_one_mesh_verify_each_other_and_stay_connected() {
    let mesh = TestMesh::new("home");
    // A short Hello timeout: verified peers must not be swept by it.
    let short = membership::Config {
        hello_timeout: Duration::from_secs(1),
        ..config()
    };
    let mut a = member(&mesh, short.clone());
    let mut b = member(&mesh, short);
    let (a_id, b_id) = (*a.local_peer_id(), *b.local_peer_id());
    dial(&mut a, &mut b).await;

    let mut verified: BTreeMap<&str, BTreeMap<MeshId, CertificateBody>> = BTreeMap::new();
    drive_until(
        &mut a,
        &mut b,
        "both sides verified",
        |side, event, _, _| {
            match (side, event) {
                (Side::A, SwarmEvent::Behaviour(Event::Verified { peer, meshes })) => {
                    assert_eq!(peer, b_id);
                    verified.insert("a", meshes);
                }
                (Side::B, SwarmEvent::Behaviour(Event::Verified { peer, meshes })) => {
                    assert_eq!(peer, a_id);
                    verified.insert("b", meshes);
                }
                (_, SwarmEvent::Behaviour(other)) => panic!("unexpected {other:?}"),
                (_, SwarmEvent::ConnectionClosed { cause, .. }) => {
                    panic!("connection closed: {cause:?}")
                }
                _ => {}
            }
            verified.len() == 2
        },
    )
    .await;
    // Each side verified the other for exactly this mesh, with its certificate.
    let a_saw = &verified["a"];
    let b_saw = &verified["b"];
    assert_eq!(a_saw.keys().copied().collect::<Vec<_>>(), vec![mesh.id()]);
    assert_eq!(b_saw.keys().copied().collect::<Vec<_>>(), vec![mesh.id()]);
    assert_eq!(a_saw[&mesh.id()].peer, b_id);
    assert_eq!(b_saw[&mesh.id()].peer, a_id);
    assert_eq!(a_saw[&mesh.id()].role, Role::Member);
    assert!(a
        .behaviour()
        .verified(&b_id)
        .unwrap()
        .contains_key(&mesh.id()));
    assert!(b
        .behaviour()
        .verified(&a_id)
        .unwrap()
        .contains_key(&mesh.id()));

    // Several Hello-timeout sweeps later the connection is still there.
    let later = drive_for(&mut a, &mut b, Duration::from_secs(3)).await;
    for (side, event) in &later {
        assert!(
            !matches!(
                event,
                SwarmEvent::ConnectionClosed { .. } | SwarmEvent::Behaviour(Event::Rejected { .. })
            ),
            "{side:?}: {event:?}"
        );
    }
    assert!(a.is_connected(&b_id));
    assert!(b.is_connected(&a_id));
}

// (b)
#[tokio::test]
async fn peer_without_certificate_is_rejected_and_disconnected() {
    let mesh = TestMesh::new("home");
    let mut listener = member(&mesh, config());
    let mut dialer = stranger(config());
    let listener_id = *listener.local_peer_id();
    dial(&mut dialer, &mut listener).await;

    let dialer_id = *dialer.local_peer_id();
    let mut dialer_rejected = None;
    let mut listener_rejected = None;
    let (mut dialer_closed, mut listener_closed) = (false, false);
    drive_until(
        &mut dialer,
        &mut listener,
        "rejection",
        |side, event, _, _| {
            match (side, event) {
                (
                    Side::A,
                    SwarmEvent::Behaviour(Event::Rejected {
                        peer,
                        reason,
                        refused,
                    }),
                ) => {
                    assert_eq!(peer, listener_id);
                    assert!(refused, "the listener's refusal is a refusal");
                    dialer_rejected = Some(reason);
                }
                (
                    Side::B,
                    SwarmEvent::Behaviour(Event::Rejected {
                        peer,
                        reason,
                        refused,
                    }),
                ) => {
                    assert_eq!(peer, dialer_id);
                    assert!(refused, "no valid certificate is a refusal");
                    listener_rejected = Some(reason);
                }
                (_, SwarmEvent::Behaviour(Event::Verified { peer, .. })) => {
                    panic!("{peer} verified without a shared mesh")
                }
                (Side::A, SwarmEvent::ConnectionClosed { .. }) => dialer_closed = true,
                (Side::B, SwarmEvent::ConnectionClosed { .. }) => listener_closed = true,
                _ => {}
            }
            dialer_rejected.is_some()
                && listener_rejected.is_some()
                && dialer_closed
                && listener_closed
        },
    )
    .await;
    let reason = listener_rejected.unwrap();
    assert!(reason.contains("no valid certificate"), "{reason}");
    assert!(!dialer.is_connected(&listener_id));
    assert!(!listener.is_connected(&dialer_id));
}

// (b), the other way round: a member dialing a stranger is turned away too.
#[tokio::test]
async fn member_dialing_a_stranger_is_rejected_and_disconnected() {
    let mesh = TestMesh::new("home");
    let mut listener = stranger(config());
    let mut dialer = member(&mesh, config());
    dial(&mut dialer, &mut listener).await;
    let reason = expect_rejected_and_closed(&mut dialer, &mut listener).await;
    assert!(reason.contains("no valid certificate"), "{reason}");
}

// (c)
#[tokio::test]
async fn certificate_signed_by_another_key_is_refused() {
    let mesh = TestMesh::new("home");
    let forger = Keypair::generate_ed25519();
    let mut listener = member(&mesh, config());
    let mut dialer = member_with(&mesh, config(), |peer| {
        // Right mesh id, right peer, but not the founder's signature.
        Certificate::sign(&mesh.body_for(peer, Role::Founder, None), &forger).unwrap()
    });
    dial(&mut dialer, &mut listener).await;
    expect_rejected_and_closed(&mut dialer, &mut listener).await;
}

#[tokio::test]
async fn certificate_with_tampered_body_is_refused() {
    let mesh = TestMesh::new("home");
    let mut listener = member(&mesh, config());
    let mut dialer = member_with(&mesh, config(), |peer| {
        let mut cert = mesh.cert_for(peer);
        // Promote ourselves to admin without the founder re-signing.
        let mut body = cert.body().unwrap();
        body.role = Role::Admin;
        cert.body.clear();
        ciborium::into_writer(&body, &mut cert.body).unwrap();
        cert
    });
    dial(&mut dialer, &mut listener).await;
    expect_rejected_and_closed(&mut dialer, &mut listener).await;
}

#[tokio::test]
async fn certificate_issued_to_another_peer_is_refused() {
    let mesh = TestMesh::new("home");
    let someone_else = PeerId::random();
    let mut listener = member(&mesh, config());
    // A valid founder signature, but for a different peer (a stolen certificate).
    let mut dialer = member_with(&mesh, config(), |_| mesh.cert_for(someone_else));
    dial(&mut dialer, &mut listener).await;
    expect_rejected_and_closed(&mut dialer, &mut listener).await;
}

#[tokio::test]
async fn expired_certificate_is_refused() {
    let mesh = TestMesh::new("home");
    let mut listener = member(&mesh, config());
    let mut dialer = member_with(&mesh, config(), |peer| {
        let body = mesh.body_for(peer, Role::Member, Some(unix_now() - 60));
        Certificate::sign(&body, &mesh.founder).unwrap()
    });
    dial(&mut dialer, &mut listener).await;
    expect_rejected_and_closed(&mut dialer, &mut listener).await;
}

#[tokio::test]
async fn member_of_another_mesh_is_refused() {
    let home = TestMesh::new("home");
    let office = TestMesh::new("office");
    let mut listener = member(&home, config());
    let mut dialer = member(&office, config());
    dial(&mut dialer, &mut listener).await;
    expect_rejected_and_closed(&mut dialer, &mut listener).await;
}

#[tokio::test]
async fn dialer_refuses_a_listener_with_a_forged_certificate() {
    let mesh = TestMesh::new("home");
    let forger = Keypair::generate_ed25519();
    let mut dialer = member(&mesh, config());
    let mut listener = member_with(&mesh, config(), |peer| {
        Certificate::sign(&mesh.body_for(peer, Role::Member, None), &forger).unwrap()
    });
    let listener_id = *listener.local_peer_id();
    dial(&mut dialer, &mut listener).await;
    let mut dialer_reason = None;
    let mut dialer_closed = false;
    drive_until(
        &mut dialer,
        &mut listener,
        "dialer rejects",
        |side, event, _, _| {
            match (side, event) {
                (Side::A, SwarmEvent::Behaviour(Event::Rejected { peer, reason, .. })) => {
                    assert_eq!(peer, listener_id);
                    dialer_reason = Some(reason);
                }
                (Side::A, SwarmEvent::Behaviour(Event::Verified { .. })) => {
                    panic!("dialer verified a forged certificate")
                }
                (Side::A, SwarmEvent::ConnectionClosed { .. }) => dialer_closed = true,
                _ => {}
            }
            dialer_reason.is_some() && dialer_closed
        },
    )
    .await;
    let reason = dialer_reason.unwrap();
    assert!(reason.contains("shares no mesh"), "{reason}");
}

// (d)
#[tokio::test]
async fn join_accepted_by_the_founder() {
    let mesh = TestMesh::new("home");
    let mut joiner = stranger(config());
    let mut host = founder(&mesh, config());
    let (joiner_id, host_id) = (*joiner.local_peer_id(), *host.local_peer_id());
    assert_eq!(host_id, mesh.founder_peer());
    let token = "ATM-0123456789abcdefghijkl".to_owned();
    joiner.behaviour_mut().request_join(
        host_id,
        JoinRequest {
            mesh: mesh.id(),
            token: token.clone(),
        },
    );
    dial(&mut joiner, &mut host).await;

    let issued = mesh.cert_for(joiner_id);
    let mut joined = None;
    let mut joiner_verified = None;
    let mut host_verified = None;
    drive_until(&mut joiner, &mut host, "join", |side, event, _, host| {
        match (side, event) {
            (
                Side::B,
                SwarmEvent::Behaviour(Event::JoinRequested {
                    peer,
                    request,
                    responder,
                }),
            ) => {
                assert_eq!(peer, joiner_id);
                assert_eq!(responder.peer(), joiner_id);
                assert_eq!(request.mesh, mesh.id());
                assert_eq!(request.token, token);
                host.behaviour_mut().accept_join(
                    responder,
                    mesh.descriptor.clone(),
                    issued.clone(),
                );
            }
            (
                Side::A,
                SwarmEvent::Behaviour(Event::Joined {
                    peer,
                    mesh: descriptor,
                    certificate,
                }),
            ) => {
                assert_eq!(peer, host_id);
                assert!(joiner_verified.is_none(), "Verified came before Joined");
                joined = Some((descriptor, certificate));
            }
            (Side::A, SwarmEvent::Behaviour(Event::Verified { peer, meshes })) => {
                assert_eq!(peer, host_id);
                joiner_verified = Some(meshes);
            }
            (Side::B, SwarmEvent::Behaviour(Event::Verified { peer, meshes })) => {
                assert_eq!(peer, joiner_id);
                host_verified = Some(meshes);
            }
            (_, SwarmEvent::Behaviour(other)) => panic!("unexpected {other:?}"),
            (_, SwarmEvent::ConnectionClosed { cause, .. }) => {
                panic!("connection closed during the join: {cause:?}")
            }
            _ => {}
        }
        joined.is_some() && joiner_verified.is_some() && host_verified.is_some()
    })
    .await;
    let (descriptor, certificate) = joined.unwrap();
    assert_eq!(descriptor, mesh.descriptor);
    assert_eq!(certificate, issued);
    // The joiner verified the founder with the founder's own certificate.
    let joiner_verified = joiner_verified.unwrap();
    assert_eq!(joiner_verified[&mesh.id()].peer, host_id);
    assert_eq!(joiner_verified[&mesh.id()].role, Role::Founder);
    // The founder counts the joiner as a member with the issued certificate.
    assert_eq!(host_verified.unwrap()[&mesh.id()].peer, joiner_id);
    // The joiner is now in the mesh.
    assert_eq!(
        joiner.behaviour().meshes().copied().collect::<Vec<_>>(),
        vec![mesh.id()]
    );
    assert!(joiner.is_connected(&host_id));
}

// (e)
#[tokio::test]
async fn join_refused_by_the_founder() {
    let mesh = TestMesh::new("home");
    let mut joiner = stranger(config());
    let mut host = founder(&mesh, config());
    let host_id = *host.local_peer_id();
    joiner.behaviour_mut().request_join(
        host_id,
        JoinRequest {
            mesh: mesh.id(),
            token: "ATM-stale".into(),
        },
    );
    dial(&mut joiner, &mut host).await;

    let mut refused = None;
    let (mut joiner_closed, mut host_closed) = (false, false);
    drive_until(
        &mut joiner,
        &mut host,
        "join refused",
        |side, event, _, host| {
            match (side, event) {
                (Side::B, SwarmEvent::Behaviour(Event::JoinRequested { responder, .. })) => {
                    host.behaviour_mut()
                        .refuse_join(responder, "invite expired".to_owned());
                }
                (
                    Side::A,
                    SwarmEvent::Behaviour(Event::JoinRefused {
                        peer,
                        mesh: m,
                        reason,
                    }),
                ) => {
                    assert_eq!(peer, host_id);
                    assert_eq!(m, mesh.id());
                    refused = Some(reason);
                }
                (_, SwarmEvent::Behaviour(Event::Joined { .. } | Event::Verified { .. })) => {
                    panic!("refused joiner got in")
                }
                (Side::A, SwarmEvent::ConnectionClosed { .. }) => joiner_closed = true,
                (Side::B, SwarmEvent::ConnectionClosed { .. }) => host_closed = true,
                _ => {}
            }
            refused.is_some() && joiner_closed && host_closed
        },
    )
    .await;
    assert_eq!(refused.unwrap(), "invite expired");
    assert_eq!(joiner.behaviour().meshes().count(), 0);
}

#[tokio::test]
async fn join_with_an_oversized_token_is_refused_without_asking_the_owner() {
    let mesh = TestMesh::new("home");
    let mut joiner = stranger(config());
    let mut host = founder(&mesh, config());
    let host_id = *host.local_peer_id();
    joiner.behaviour_mut().request_join(
        host_id,
        JoinRequest {
            mesh: mesh.id(),
            token: "A".repeat(membership::protocol::MAX_TOKEN_LEN + 1),
        },
    );
    dial(&mut joiner, &mut host).await;
    let mut refused = None;
    drive_until(
        &mut joiner,
        &mut host,
        "join refused",
        |side, event, _, _| {
            match (side, event) {
                (Side::B, SwarmEvent::Behaviour(Event::JoinRequested { .. })) => {
                    panic!("an oversized token reached the owner")
                }
                (Side::A, SwarmEvent::Behaviour(Event::JoinRefused { reason, .. })) => {
                    refused = Some(reason)
                }
                _ => {}
            }
            refused.is_some()
        },
    )
    .await;
    let reason = refused.unwrap();
    assert!(reason.contains("malformed invite token"), "{reason}");
}

#[tokio::test]
async fn join_asked_of_a_plain_member_is_refused() {
    let mesh = TestMesh::new("home");
    let mut joiner = stranger(config());
    let mut host = member(&mesh, config());
    let host_id = *host.local_peer_id();
    joiner.behaviour_mut().request_join(
        host_id,
        JoinRequest {
            mesh: mesh.id(),
            token: "ATM-0123456789abcdefghijkl".into(),
        },
    );
    dial(&mut joiner, &mut host).await;
    let mut refused = None;
    drive_until(
        &mut joiner,
        &mut host,
        "join refused",
        |side, event, _, _| {
            match (side, event) {
                (Side::B, SwarmEvent::Behaviour(Event::JoinRequested { .. })) => {
                    panic!("a non-founder was asked to admit")
                }
                (Side::A, SwarmEvent::Behaviour(Event::JoinRefused { reason, .. })) => {
                    refused = Some(reason)
                }
                _ => {}
            }
            refused.is_some()
        },
    )
    .await;
    let reason = refused.unwrap();
    assert!(reason.contains("cannot admit"), "{reason}");
}

#[tokio::test]
async fn joiner_refuses_an_admission_with_someone_elses_certificate() {
    let mesh = TestMesh::new("home");
    let mut joiner = stranger(config());
    let mut host = founder(&mesh, config());
    let host_id = *host.local_peer_id();
    joiner.behaviour_mut().request_join(
        host_id,
        JoinRequest {
            mesh: mesh.id(),
            token: "ATM-0123456789abcdefghijkl".into(),
        },
    );
    dial(&mut joiner, &mut host).await;
    let wrong = mesh.cert_for(PeerId::random());
    let mut refused = None;
    drive_until(
        &mut joiner,
        &mut host,
        "admission refused",
        |side, event, _, host| {
            match (side, event) {
                (Side::B, SwarmEvent::Behaviour(Event::JoinRequested { responder, .. })) => {
                    host.behaviour_mut().accept_join(
                        responder,
                        mesh.descriptor.clone(),
                        wrong.clone(),
                    );
                }
                (Side::A, SwarmEvent::Behaviour(Event::Joined { .. })) => {
                    panic!("joiner accepted a certificate that is not its own")
                }
                (Side::A, SwarmEvent::Behaviour(Event::JoinRefused { reason, .. })) => {
                    refused = Some(reason)
                }
                _ => {}
            }
            refused.is_some()
        },
    )
    .await;
    let reason = refused.unwrap();
    assert!(reason.contains("not ours"), "{reason}");
    assert_eq!(joiner.behaviour().meshes().count(), 0);
}

// (f)
#[tokio::test]
async fn silent_dialer_is_disconnected_after_the_hello_timeout() {
    let mesh = TestMesh::new("home");
    let mut listener = member(
        &mesh,
        membership::Config {
            hello_timeout: Duration::from_secs(1),
            ..config()
        },
    );
    let mut silent = silent();
    let (addr, _) = listener.listen().with_memory_addr_external().await;
    silent.dial(addr).unwrap();
    let silent_id = *silent.local_peer_id();
    let listener_id = *listener.local_peer_id();

    let mut reason = None;
    let (mut silent_closed, mut listener_closed) = (false, false);
    let run = async {
        loop {
            match next_event(&mut silent, &mut listener).await {
                Ev::A(SwarmEvent::ConnectionClosed { peer_id, cause, .. }) => {
                    assert_eq!(peer_id, listener_id);
                    assert!(
                        !matches!(cause, Some(ConnectionError::KeepAliveTimeout)),
                        "the silent side gave up by itself"
                    );
                    silent_closed = true;
                }
                Ev::B(SwarmEvent::Behaviour(Event::Rejected {
                    peer,
                    reason: r,
                    refused,
                })) => {
                    assert_eq!(peer, silent_id);
                    assert!(
                        !refused,
                        "a missing hello is a failed exchange, not a refusal"
                    );
                    reason = Some(r);
                }
                Ev::B(SwarmEvent::Behaviour(other)) => panic!("unexpected {other:?}"),
                Ev::B(SwarmEvent::ConnectionClosed { peer_id, .. }) => {
                    assert_eq!(peer_id, silent_id);
                    listener_closed = true;
                }
                _ => {}
            }
            if reason.is_some() && silent_closed && listener_closed {
                return;
            }
        }
    };
    tokio::time::timeout(WAIT, run)
        .await
        .expect("silent peer disconnected");
    let reason = reason.unwrap();
    assert!(reason.contains("no membership hello"), "{reason}");
}

// (g)
#[tokio::test]
async fn unverified_peers_are_bounded() {
    let mesh = TestMesh::new("home");
    let mut listener = member(
        &mesh,
        membership::Config {
            max_unverified_peers: 1,
            // Long enough that no unverified peer is swept during the test.
            hello_timeout: Duration::from_secs(120),
            ..config()
        },
    );
    let (addr, _) = listener.listen().with_memory_addr_external().await;
    // Two peers that never say hello (they stay unverified).
    let mut first = silent();
    let mut second = silent();
    let (first_id, second_id) = (*first.local_peer_id(), *second.local_peer_id());

    first.dial(addr.clone()).unwrap();
    tokio::time::timeout(WAIT, async {
        let mut first_up = false;
        let mut listener_up = false;
        while !(first_up && listener_up) {
            match next_event(&mut first, &mut listener).await {
                Ev::A(SwarmEvent::ConnectionEstablished { .. }) => first_up = true,
                Ev::B(SwarmEvent::ConnectionEstablished { peer_id, .. }) => {
                    assert_eq!(peer_id, first_id);
                    listener_up = true;
                }
                Ev::B(SwarmEvent::ConnectionClosed { .. }) => panic!("first peer dropped"),
                _ => {}
            }
        }
    })
    .await
    .expect("first unverified peer admitted");

    // The second unverified peer is over the bound: the listener denies it.
    second.dial(addr).unwrap();
    let denial = tokio::time::timeout(WAIT, async {
        loop {
            tokio::select! {
                e = listener.select_next_some() => match e {
                    SwarmEvent::IncomingConnectionError { peer_id, error, .. } => {
                        assert_eq!(peer_id, Some(second_id));
                        break error;
                    }
                    SwarmEvent::ConnectionEstablished { peer_id, .. } => {
                        panic!("{peer_id} admitted over the bound")
                    }
                    SwarmEvent::ConnectionClosed { peer_id, .. } => {
                        panic!("{peer_id} dropped")
                    }
                    _ => {}
                },
                _ = first.select_next_some() => {}
                _ = second.select_next_some() => {}
            }
        }
    })
    .await
    .expect("second peer denied");
    let libp2p::swarm::ListenError::Denied { cause } = denial else {
        panic!("expected a denial, got {denial:?}");
    };
    let why = std::error::Error::source(&cause).unwrap().to_string();
    assert!(why.contains("too many unverified peers"), "{why}");
    assert!(listener.is_connected(&first_id));
    assert!(!listener.is_connected(&second_id));

    // Once the first one is gone, there is room again.
    assert!(listener.disconnect_peer_id(first_id).is_ok());
    tokio::time::timeout(WAIT, async {
        loop {
            tokio::select! {
                e = listener.select_next_some() => {
                    if let SwarmEvent::ConnectionClosed { peer_id, .. } = e {
                        assert_eq!(peer_id, first_id);
                        break;
                    }
                }
                _ = first.select_next_some() => {}
                _ = second.select_next_some() => {}
            }
        }
    })
    .await
    .expect("first peer disconnected");
    let addr = listener.external_addresses().next().unwrap().clone();
    second.dial(addr).unwrap();
    tokio::time::timeout(WAIT, async {
        loop {
            tokio::select! {
                e = listener.select_next_some() => match e {
                    SwarmEvent::ConnectionEstablished { peer_id, .. } => {
                        assert_eq!(peer_id, second_id);
                        break;
                    }
                    SwarmEvent::IncomingConnectionError { error, .. } => {
                        panic!("still denied: {error:?}")
                    }
                    _ => {}
                },
                _ = first.select_next_some() => {}
                _ = second.select_next_some() => {}
            }
        }
    })
    .await
    .expect("second peer admitted once there is room");
    assert!(listener.is_connected(&second_id));
}

/// A member already connected (through another mesh) redeems an invite on
/// the live connection: the Hello is sent again at once, no redial needed.
#[tokio::test]
async fn join_on_an_existing_connection_adds_the_mesh() {
    let home = TestMesh::new("home");
    let office = home.sibling("office");
    let mut joiner = member(&home, config());
    let mut host = founder(&home, config());
    let office_cert = Certificate::sign(
        &office.body_for(*host.local_peer_id(), Role::Founder, None),
        &office.founder,
    )
    .unwrap();
    host.behaviour_mut()
        .add_mesh(office.id(), office.founder.public(), office_cert);
    let (joiner_id, host_id) = (*joiner.local_peer_id(), *host.local_peer_id());
    dial(&mut joiner, &mut host).await;
    let mut verified = 0;
    drive_until(
        &mut joiner,
        &mut host,
        "verified for home",
        |_, event, _, _| {
            if let SwarmEvent::Behaviour(Event::Verified { meshes, .. }) = event {
                assert_eq!(meshes.keys().copied().collect::<Vec<_>>(), vec![home.id()]);
                verified += 1;
            }
            verified == 2
        },
    )
    .await;

    joiner.behaviour_mut().request_join(
        host_id,
        JoinRequest {
            mesh: office.id(),
            token: "ATM-0123456789abcdefghijkl".into(),
        },
    );
    let issued = office.cert_for(joiner_id);
    let mut joined = false;
    let mut joiner_sees = None;
    let mut host_sees = None;
    drive_until(
        &mut joiner,
        &mut host,
        "join on the live connection",
        |side, event, _, host| {
            match (side, event) {
                (
                    Side::B,
                    SwarmEvent::Behaviour(Event::JoinRequested {
                        request, responder, ..
                    }),
                ) => {
                    assert_eq!(request.mesh, office.id());
                    host.behaviour_mut().accept_join(
                        responder,
                        office.descriptor.clone(),
                        issued.clone(),
                    );
                }
                (Side::A, SwarmEvent::Behaviour(Event::Joined { mesh, .. })) => {
                    assert_eq!(mesh.id, office.id());
                    joined = true;
                }
                (Side::A, SwarmEvent::Behaviour(Event::Verified { meshes, .. })) => {
                    joiner_sees = Some(meshes.into_keys().collect::<BTreeSet<_>>())
                }
                (Side::B, SwarmEvent::Behaviour(Event::Verified { meshes, .. })) => {
                    host_sees = Some(meshes.into_keys().collect::<BTreeSet<_>>())
                }
                (_, SwarmEvent::Behaviour(other)) => panic!("unexpected {other:?}"),
                (_, SwarmEvent::ConnectionClosed { cause, .. }) => panic!("closed: {cause:?}"),
                (_, SwarmEvent::ConnectionEstablished { .. }) => {
                    panic!("a new connection was made")
                }
                _ => {}
            }
            joined && joiner_sees.is_some() && host_sees.is_some()
        },
    )
    .await;
    let both: BTreeSet<MeshId> = [home.id(), office.id()].into_iter().collect();
    assert_eq!(joiner_sees.unwrap(), both);
    assert_eq!(host_sees.unwrap(), both);
    assert_eq!(
        joiner
            .behaviour()
            .meshes()
            .copied()
            .collect::<BTreeSet<_>>(),
        both
    );
}

/// A dialer whose own certificate the listener refuses must not count the
/// listener as verified just because the listener's certificate is valid:
/// the listener has refused it and is about to close the connection.
/// Today the dialer emits `Verified` (and, in the node, treats the peer as a
/// member and re-dials it every reconnect tick) until the listener's
/// refusal grace period runs out.
#[tokio::test]
async fn dialer_refused_by_the_listener_does_not_verify_it() {
    let mesh = TestMesh::new("home");
    let forger = Keypair::generate_ed25519();
    let mut listener = member(&mesh, config());
    let mut dialer = member_with(&mesh, config(), |peer| {
        Certificate::sign(&mesh.body_for(peer, Role::Member, None), &forger).unwrap()
    });
    let listener_id = *listener.local_peer_id();
    dial(&mut dialer, &mut listener).await;
    let mut dialer_rejected = false;
    let mut dialer_closed = false;
    drive_until(
        &mut dialer,
        &mut listener,
        "dialer gives up",
        |side, event, _, _| {
            match (side, event) {
                (Side::A, SwarmEvent::Behaviour(Event::Verified { peer, .. })) => {
                    panic!("dialer verified {peer}, which refused it")
                }
                (Side::A, SwarmEvent::Behaviour(Event::Rejected { peer, reason, .. })) => {
                    assert_eq!(peer, listener_id);
                    assert!(reason.contains("refused by the peer"), "{reason}");
                    dialer_rejected = true;
                }
                (Side::A, SwarmEvent::ConnectionClosed { .. }) => dialer_closed = true,
                _ => {}
            }
            dialer_rejected && dialer_closed
        },
    )
    .await;
}

/// A relay keeps a stranger connected for the grace period, never verifies
/// it, and closes it afterwards unless it is exempt (holds a reservation);
/// once the exemption ends, the stranger is closed.
#[tokio::test]
async fn a_relay_keeps_non_members_for_a_grace_period_or_while_exempt() {
    let mesh = TestMesh::new("home");
    let relay_config = membership::Config {
        hello_timeout: Duration::from_millis(300),
        non_member_grace: Some(Duration::from_secs(1)),
        ..config()
    };
    let mut relay = member(&mesh, relay_config.clone());
    let relay_id = *relay.local_peer_id();
    let mut stranger = stranger(config());
    // The stranger uses the relay (as a configured relay: exempt).
    stranger.behaviour_mut().add_exempt(relay_id);
    dial(&mut stranger, &mut relay).await;
    let stranger_id = *stranger.local_peer_id();

    // Within the grace: connected, rejected once, never verified.
    let seen = drive_for(&mut stranger, &mut relay, Duration::from_millis(600)).await;
    let rejections = seen
        .iter()
        .filter(|(side, e)| {
            *side == Side::B && matches!(e, SwarmEvent::Behaviour(Event::Rejected { .. }))
        })
        .count();
    assert_eq!(rejections, 1);
    assert!(relay.is_connected(&stranger_id));
    assert!(relay.behaviour().verified(&stranger_id).is_none());

    // Exempt (a reservation): kept past the grace.
    relay.behaviour_mut().add_exempt(stranger_id);
    let _ = drive_for(&mut stranger, &mut relay, Duration::from_secs(2)).await;
    assert!(
        relay.is_connected(&stranger_id),
        "an exempt stranger is kept"
    );

    // The reservation ends: closed at the next look.
    relay.behaviour_mut().remove_exempt(&stranger_id);
    drive_until(
        &mut stranger,
        &mut relay,
        "the stranger is closed",
        |side, event, _, _| side == Side::B && matches!(event, SwarmEvent::ConnectionClosed { .. }),
    )
    .await;
}
