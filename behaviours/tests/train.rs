//! The connection train between swarms: the first path becomes active, a
//! path of another class the standby; failover on close, heartbeat timeout and
//! ack timeout; the leader's better-path switch and the follower following;
//! extras closed after the grace and above the cap; watched peers redialed
//! with backoff; candidates probed.
//!
//! Paths: libp2p-swarm-test listens on a memory address (classified as BLE)
//! and on TCP 127.0.0.1 (LAN), so one pair of swarms can have paths of two
//! classes. The swarms also run the channel behaviour, whose handler keeps
//! connections alive (the train's own handler does not).

use std::time::Duration;

use atmosphere_behaviours::{
    channel,
    train::{self, Event, PathClass, PeerStatus, Role, SwitchReason},
};
use futures::StreamExt;
use libp2p::{
    swarm::{
        dial_opts::{DialOpts, PeerCondition},
        ConnectionId, NetworkBehaviour, SwarmEvent,
    },
    Multiaddr, PeerId, Swarm,
};
use libp2p_swarm_test::SwarmExt;

/// Generous bound on every wait; tests assert behaviour, not timing.
const WAIT: Duration = Duration::from_secs(30);

#[derive(NetworkBehaviour)]
struct Node {
    train: train::Behaviour,
    channel: channel::Behaviour,
}

fn node(config: train::Config) -> Swarm<Node> {
    Swarm::new_ephemeral_tokio(|key| Node {
        train: train::Behaviour::new(key.public().to_peer_id(), config),
        channel: channel::Behaviour::default(),
    })
}

/// What a swarm reported, kept so that no wait loses an event.
#[derive(Debug)]
#[allow(clippy::large_enum_variant)] // A test log; size does not matter.
enum Seen {
    Train(Event),
    Established(ConnectionId),
    Closed(ConnectionId),
}

fn record(log: &mut Vec<Seen>, event: SwarmEvent<NodeEvent>) {
    match event {
        SwarmEvent::Behaviour(NodeEvent::Train(e)) => log.push(Seen::Train(e)),
        SwarmEvent::ConnectionEstablished { connection_id, .. } => {
            log.push(Seen::Established(connection_id))
        }
        SwarmEvent::ConnectionClosed { connection_id, .. } => log.push(Seen::Closed(connection_id)),
        _ => {}
    }
}

/// Two listening swarms; `a` is the leader (smaller peer id) and dials.
struct Pair {
    a: Swarm<Node>,
    b: Swarm<Node>,
    a_id: PeerId,
    b_id: PeerId,
    /// `b`'s memory (BLE) and TCP (LAN) listen addresses.
    b_mem: Multiaddr,
    b_tcp: Multiaddr,
    a_log: Vec<Seen>,
    b_log: Vec<Seen>,
}

impl Pair {
    async fn new(config: train::Config) -> Pair {
        let x = node(config.clone());
        let y = node(config);
        let (mut a, mut b) = if x.local_peer_id() < y.local_peer_id() {
            (x, y)
        } else {
            (y, x)
        };
        a.listen().await;
        let (b_mem, b_tcp) = b.listen().await;
        let (a_id, b_id) = (*a.local_peer_id(), *b.local_peer_id());
        assert!(a.behaviour().train.is_leader(&b_id));
        assert!(!b.behaviour().train.is_leader(&a_id));
        Pair {
            a,
            b,
            a_id,
            b_id,
            b_mem,
            b_tcp,
            a_log: Vec::new(),
            b_log: Vec::new(),
        }
    }

    fn at(&self) -> &train::Behaviour {
        &self.a.behaviour().train
    }

    fn bt(&self) -> &train::Behaviour {
        &self.b.behaviour().train
    }

    fn at_mut(&mut self) -> &mut train::Behaviour {
        &mut self.a.behaviour_mut().train
    }

    fn bt_mut(&mut self) -> &mut train::Behaviour {
        &mut self.b.behaviour_mut().train
    }

    /// Polls both swarms until `done` gives an answer.
    async fn until<T>(&mut self, what: &str, mut done: impl FnMut(&Pair) -> Option<T>) -> T {
        let wait = async {
            loop {
                if let Some(t) = done(self) {
                    return t;
                }
                let (on_a, event) = tokio::select! {
                    e = self.a.select_next_some() => (true, e),
                    e = self.b.select_next_some() => (false, e),
                };
                record(
                    if on_a {
                        &mut self.a_log
                    } else {
                        &mut self.b_log
                    },
                    event,
                );
            }
        };
        match tokio::time::timeout(WAIT, wait).await {
            Ok(t) => t,
            Err(_) => panic!(
                "timed out: {what}\na: {:#?}\nb: {:#?}",
                self.a_log, self.b_log
            ),
        }
    }

    /// Opens one more connection from `a` to `b` at `addr`; returns its id on
    /// both sides.
    async fn connect(&mut self, addr: &Multiaddr) -> (ConnectionId, ConnectionId) {
        let opts = DialOpts::peer_id(self.b_id)
            .addresses(vec![addr.clone()])
            .condition(PeerCondition::Always)
            .build();
        let a_conn = opts.connection_id();
        let b_mark = self.b_log.len();
        self.a.dial(opts).unwrap();
        let b_conn = self
            .until("connection established", |p| {
                let on_a = p
                    .a_log
                    .iter()
                    .any(|s| matches!(s, Seen::Established(c) if *c == a_conn));
                let on_b = p.b_log[b_mark..].iter().find_map(|s| match s {
                    Seen::Established(c) => Some(*c),
                    _ => None,
                });
                on_b.filter(|_| on_a)
            })
            .await;
        (a_conn, b_conn)
    }

    /// One more memory (BLE) connection; see [`Pair::connect`].
    async fn connect_mem(&mut self) -> (ConnectionId, ConnectionId) {
        let mem = self.b_mem.clone();
        self.connect(&mem).await
    }

    /// One more TCP (LAN) connection; see [`Pair::connect`].
    async fn connect_tcp(&mut self) -> (ConnectionId, ConnectionId) {
        let tcp = self.b_tcp.clone();
        self.connect(&tcp).await
    }

    /// A memory (BLE) connection, then a TCP (LAN) one.
    async fn two_paths(&mut self) -> ((ConnectionId, ConnectionId), (ConnectionId, ConnectionId)) {
        let first = self.connect_mem().await;
        let second = self.connect_tcp().await;
        (first, second)
    }

    /// Polls both swarms until `a` has reported the path change `on_a` and
    /// `b` the change `on_b`.
    async fn until_changed(&mut self, what: &str, on_a: Change, on_b: Change) {
        self.until(what, |p| {
            (changes(&p.a_log).contains(&on_a) && changes(&p.b_log).contains(&on_b)).then_some(())
        })
        .await
    }

    /// Polls both swarms until the connection `(on a, on b)` is closed on
    /// both sides.
    async fn until_closed(&mut self, what: &str, (a_conn, b_conn): (ConnectionId, ConnectionId)) {
        self.until(what, |p| {
            (closed(&p.a_log, a_conn) && closed(&p.b_log, b_conn)).then_some(())
        })
        .await
    }
}

/// A `PathChanged` event as `(from, to, reason)`.
type Change = (Option<ConnectionId>, Option<ConnectionId>, SwitchReason);

/// The `PathChanged` events in `log`.
fn changes(log: &[Seen]) -> Vec<Change> {
    log.iter()
        .filter_map(|s| match s {
            Seen::Train(Event::PathChanged {
                from, to, reason, ..
            }) => Some((
                from.as_ref().map(|f| f.connection),
                to.as_ref().map(|t| t.connection),
                *reason,
            )),
            _ => None,
        })
        .collect()
}

fn has_change(
    log: &[Seen],
    from: Option<ConnectionId>,
    to: Option<ConnectionId>,
    reason: SwitchReason,
) -> bool {
    changes(log).contains(&(from, to, reason))
}

fn statuses(log: &[Seen]) -> Vec<PeerStatus> {
    log.iter()
        .filter_map(|s| match s {
            Seen::Train(Event::PeerStatus { status, .. }) => Some(status.clone()),
            _ => None,
        })
        .collect()
}

fn closed(log: &[Seen], id: ConnectionId) -> bool {
    log.iter().any(|s| matches!(s, Seen::Closed(c) if *c == id))
}

fn roles(t: &train::Behaviour, peer: &PeerId) -> Vec<(ConnectionId, PathClass, Role)> {
    t.paths(peer)
        .into_iter()
        .map(|p| (p.connection, p.class, p.role))
        .collect()
}

/// Asserts that each side has exactly two paths: the first, BLE, active
/// and the second, LAN, the standby (each given as `(on a, on b)`).
#[track_caller]
fn assert_ble_active_lan_standby(
    p: &Pair,
    (a1, b1): (ConnectionId, ConnectionId),
    (a2, b2): (ConnectionId, ConnectionId),
) {
    assert_eq!(
        roles(p.at(), &p.b_id),
        vec![
            (a1, PathClass::Ble, Role::Active),
            (a2, PathClass::LanDirect, Role::Standby)
        ]
    );
    assert_eq!(
        roles(p.bt(), &p.a_id),
        vec![
            (b1, PathClass::Ble, Role::Active),
            (b2, PathClass::LanDirect, Role::Standby)
        ]
    );
}

#[tokio::test]
async fn first_path_is_active_and_another_class_is_the_standby() {
    let mut p = Pair::new(train::Config::default()).await;
    let (a_id, b_id) = (p.a_id, p.b_id);
    let ((a1, b1), (a2, b2)) = p.two_paths().await;

    p.until_changed(
        "first path active on both sides",
        (None, Some(a1), SwitchReason::Established),
        (None, Some(b1), SwitchReason::Established),
    )
    .await;
    assert_eq!(p.at().active(&b_id), Some(a1));
    assert_eq!(p.bt().active(&a_id), Some(b1));
    // The TCP path is LAN, another class than the active BLE path.
    assert_eq!(p.at().standby(&b_id), Some(a2));
    assert_eq!(p.bt().standby(&a_id), Some(b2));
    assert_ble_active_lan_standby(&p, (a1, b1), (a2, b2));
    // Unmeasured, the better class does not take over.
    assert_eq!(changes(&p.a_log).len(), 1, "{:?}", changes(&p.a_log));
    assert_eq!(
        statuses(&p.a_log),
        vec![PeerStatus::Direct {
            class: PathClass::Ble,
            rtt: None
        }]
    );
    assert_eq!(
        p.at().status(&b_id),
        PeerStatus::Direct {
            class: PathClass::Ble,
            rtt: None
        }
    );
    assert_eq!(p.at().all_statuses().len(), 1);
    // The dialer learnt which endpoints worked.
    let succeeded = |log: &[Seen]| -> Vec<(PeerId, Multiaddr)> {
        log.iter()
            .filter_map(|s| match s {
                Seen::Train(Event::EndpointSucceeded { peer, addr }) => Some((*peer, addr.clone())),
                _ => None,
            })
            .collect()
    };
    let want = vec![(b_id, p.b_mem.clone()), (b_id, p.b_tcp.clone())];
    p.until("endpoints reported", |p| {
        (succeeded(&p.a_log).len() >= 2).then_some(())
    })
    .await;
    assert_eq!(succeeded(&p.a_log), want);
    assert!(!p
        .b_log
        .iter()
        .any(|s| matches!(s, Seen::Train(Event::EndpointSucceeded { .. }))));
}

#[tokio::test]
async fn closing_the_active_connection_promotes_the_standby() {
    let mut p = Pair::new(train::Config::default()).await;
    let (a_id, b_id) = (p.a_id, p.b_id);
    let ((a1, b1), (a2, b2)) = p.two_paths().await;
    assert!(p.a.close_connection(a1));
    p.until_changed(
        "failover on both sides",
        (Some(a1), Some(a2), SwitchReason::ActiveClosed),
        (Some(b1), Some(b2), SwitchReason::ActiveClosed),
    )
    .await;
    assert_eq!(p.at().active(&b_id), Some(a2));
    assert_eq!(p.bt().active(&a_id), Some(b2));
    assert_eq!(p.at().standby(&b_id), None);
    assert_eq!(
        p.at().status(&b_id),
        PeerStatus::Direct {
            class: PathClass::LanDirect,
            rtt: None
        }
    );
    p.until("LAN status reported", |p| {
        statuses(&p.a_log)
            .contains(&PeerStatus::Direct {
                class: PathClass::LanDirect,
                rtt: None,
            })
            .then_some(())
    })
    .await;
}

#[tokio::test]
async fn heartbeat_timeout_on_the_active_path_switches() {
    let mut p = Pair::new(train::Config::default()).await;
    let (a_id, b_id) = (p.a_id, p.b_id);
    let ((a1, b1), (a2, b2)) = p.two_paths().await;
    // Both sides switch on their own.
    assert!(p.at_mut().on_timeout(b_id, a1));
    assert!(p.bt_mut().on_timeout(a_id, b1));
    assert_eq!(p.at().active(&b_id), Some(a2));
    assert_eq!(p.bt().active(&a_id), Some(b2));
    p.until_changed(
        "ActiveUnhealthy on both sides",
        (Some(a1), Some(a2), SwitchReason::ActiveUnhealthy),
        (Some(b1), Some(b2), SwitchReason::ActiveUnhealthy),
    )
    .await;
    let old = p.at().paths(&b_id).into_iter().find(|i| i.connection == a1);
    assert!(!old.unwrap().healthy);
    // The old path recovers with a sample but, being a worse class, stays
    // the standby.
    assert!(p.at_mut().on_rtt(b_id, a1, Duration::from_millis(1)));
    assert_eq!(p.at().active(&b_id), Some(a2));
    assert_eq!(p.at().standby(&b_id), Some(a1));
    // Unknown connections are ignored.
    assert!(!p
        .at_mut()
        .on_timeout(b_id, ConnectionId::new_unchecked(usize::MAX)));
    assert!(!p.at_mut().on_timeout(PeerId::random(), a1));
}

#[tokio::test]
async fn ack_timeout_promotes_the_standby_and_recovery_restores_a_path() {
    let mut p = Pair::new(train::Config::default()).await;
    let b_id = p.b_id;
    let ((a1, _), (a2, _)) = p.two_paths().await;
    assert_eq!(p.at_mut().ack_timeout(b_id), Some(a2));
    p.until("AckTimeout", |p| {
        has_change(&p.a_log, Some(a1), Some(a2), SwitchReason::AckTimeout).then_some(())
    })
    .await;
    let health =
        |p: &Pair| -> Vec<bool> { p.at().paths(&b_id).iter().map(|i| i.healthy).collect() };
    assert_eq!(health(&p), vec![false, true]);
    // Acks late on the new path too, no healthy path left: stay.
    assert_eq!(p.at_mut().ack_timeout(b_id), None);
    assert_eq!(p.at().active(&b_id), Some(a2));
    assert_eq!(health(&p), vec![false, false]);
    // The old path answers a heartbeat: healthy again, it takes over.
    assert!(p.at_mut().on_rtt(b_id, a1, Duration::from_millis(3)));
    assert_eq!(p.at().active(&b_id), Some(a1));
    p.until("recovery switch", |p| {
        has_change(&p.a_log, Some(a2), Some(a1), SwitchReason::ActiveUnhealthy).then_some(())
    })
    .await;
    assert_eq!(p.at_mut().ack_timeout(PeerId::random()), None);
}

#[tokio::test]
async fn leader_probes_a_better_candidate_switches_and_the_follower_follows() {
    let mut p = Pair::new(train::Config::default()).await;
    let (a_id, b_id) = (p.a_id, p.b_id);
    let (a1, b1) = p.connect_mem().await;
    let tcp = p.b_tcp.clone();
    // Unknown peers take no candidates.
    assert!(!p.at_mut().add_candidate(PeerId::random(), tcp.clone()));
    // A LAN candidate ranks better than the active BLE path: probed.
    assert!(p.at_mut().add_candidate(b_id, tcp.clone()));
    assert!(p.at_mut().add_candidate(b_id, tcp.clone()), "dedup");
    assert_eq!(p.at().candidates(&b_id), vec![tcp.clone()]);
    // A candidate seen again (a BLE sighting after an absence) is known;
    // others are not.
    assert!(p.at_mut().candidate_seen(&b_id, &tcp));
    assert!(!p
        .at_mut()
        .candidate_seen(&b_id, &"/memory/7".parse().expect("addr")));
    assert!(!p.at_mut().candidate_seen(&PeerId::random(), &tcp));
    p.until("probe connected", |p| {
        p.a_log
            .iter()
            .any(|s| {
                matches!(s, Seen::Train(Event::EndpointSucceeded { peer, addr })
                    if *peer == b_id && *addr == tcp)
            })
            .then_some(())
    })
    .await;
    let lan = |t: &train::Behaviour, peer: &PeerId| {
        t.paths(peer)
            .into_iter()
            .find(|i| i.class == PathClass::LanDirect)
            .map(|i| i.connection)
    };
    let a2 = lan(p.at(), &b_id).expect("LAN path on a");
    assert_eq!(p.at().class_of(&b_id, a2), Some(PathClass::LanDirect));
    assert_eq!(p.at().class_of(&PeerId::random(), a2), None);
    let b2 = p.until("LAN path on b", |p| lan(p.bt(), &a_id)).await;
    assert_eq!(p.at().active(&b_id), Some(a1));

    // The follower does not switch for a better score…
    assert!(p.bt_mut().on_rtt(a_id, b2, Duration::from_millis(1)));
    assert_eq!(p.bt().active(&a_id), Some(b1));
    // …the leader does, once the path is measured.
    assert!(p.at_mut().on_rtt(b_id, a2, Duration::from_millis(1)));
    assert_eq!(p.at().active(&b_id), Some(a2));
    // The leader follows a move of the follower (always an emergency) and
    // distrusts its old path until that path answers a heartbeat again.
    assert!(p.at_mut().follow(b_id, a1));
    assert_eq!(p.at().active(&b_id), Some(a1));
    assert!(p.at_mut().on_rtt(b_id, a2, Duration::from_millis(1)));
    assert_eq!(
        p.at().active(&b_id),
        Some(a2),
        "measured again: better, back"
    );
    // The follower follows when the leader's app stream arrives on b2.
    assert!(p.bt_mut().follow(a_id, b2));
    assert_eq!(p.bt().active(&a_id), Some(b2));
    p.until_changed(
        "Better and PeerMoved",
        (Some(a1), Some(a2), SwitchReason::Better),
        (Some(b1), Some(b2), SwitchReason::PeerMoved),
    )
    .await;
    assert_eq!(
        p.at().status(&b_id),
        PeerStatus::Direct {
            class: PathClass::LanDirect,
            rtt: Some(Duration::from_millis(1))
        }
    );
    // Following an unhealthy or unknown connection is refused.
    assert!(p.bt_mut().on_timeout(a_id, b1));
    assert!(!p.bt_mut().follow(a_id, b1));
    assert!(!p
        .bt_mut()
        .follow(a_id, ConnectionId::new_unchecked(usize::MAX)));
    assert_eq!(p.bt().active(&a_id), Some(b2));
}

#[tokio::test]
async fn leader_closes_an_extra_connection_after_the_grace() {
    let mut p = Pair::new(train::Config {
        close_grace: Duration::from_millis(500),
        ..Default::default()
    })
    .await;
    let (a_id, b_id) = (p.a_id, p.b_id);
    let ((a1, b1), (a2, b2)) = p.two_paths().await;
    // A second BLE path: BLE paths have no remote host, so never a standby.
    let (a3, b3) = p.connect_mem().await;
    assert_eq!(
        roles(p.at(), &b_id).last(),
        Some(&(a3, PathClass::Ble, Role::Extra))
    );
    assert_eq!(
        roles(p.bt(), &a_id).last(),
        Some(&(b3, PathClass::Ble, Role::Extra))
    );
    p.until_closed("extra closed", (a3, b3)).await;
    assert_ble_active_lan_standby(&p, (a1, b1), (a2, b2));
    assert!(!closed(&p.a_log, a1) && !closed(&p.a_log, a2));
}

#[tokio::test]
async fn follower_keeps_extras_below_the_cap_but_both_enforce_the_cap() {
    let mut p = Pair::new(train::Config {
        // Long grace: only the cap closes anything here.
        close_grace: Duration::from_secs(3600),
        max_connections_per_peer: 3,
        ..Default::default()
    })
    .await;
    let (a_id, b_id) = (p.a_id, p.b_id);
    let ((a1, b1), (a2, b2)) = p.two_paths().await;
    let (a3, b3) = p.connect_mem().await;
    assert_eq!(p.at().paths(&b_id).len(), 3);
    // A fourth connection exceeds the cap: the oldest extra goes.
    let (a4, b4) = p.connect_tcp().await;
    p.until_closed("oldest extra closed", (a3, b3)).await;
    let ids = |t: &train::Behaviour, peer: &PeerId| -> Vec<ConnectionId> {
        t.paths(peer).into_iter().map(|i| i.connection).collect()
    };
    assert_eq!(ids(p.at(), &b_id), vec![a1, a2, a4]);
    assert_eq!(ids(p.bt(), &a_id), vec![b1, b2, b4]);
    assert_eq!(p.at().active(&b_id), Some(a1));
    assert_eq!(p.bt().active(&a_id), Some(b1));
}

#[tokio::test]
async fn watched_peer_goes_offline_and_is_redialed() {
    let mut p = Pair::new(train::Config::default()).await;
    let (a_id, b_id) = (p.a_id, p.b_id);
    let mem = p.b_mem.clone();
    assert!(p.at_mut().watch(b_id, vec![mem.clone()]));
    assert!(p.at().is_watched(&b_id));
    let first = p
        .until("watched peer dialed", |p| p.at().active(&b_id))
        .await;
    p.until("dial reported", |p| {
        p.a_log
            .iter()
            .any(
                |s| matches!(s, Seen::Train(Event::EndpointSucceeded { addr, .. }) if *addr == mem),
            )
            .then_some(())
    })
    .await;
    assert!(p
        .a_log
        .iter()
        .any(|s| matches!(s, Seen::Train(Event::Dialing { attempt: 1, .. }))));

    let mark = p.a_log.len();
    p.a.disconnect_peer_id(b_id).unwrap();
    p.until("offline", |p| {
        statuses(&p.a_log[mark..])
            .iter()
            .any(|s| {
                matches!(
                    s,
                    PeerStatus::Offline {
                        last_seen_unix_ms: Some(_)
                    }
                )
            })
            .then_some(())
    })
    .await;
    assert!(has_change(
        &p.a_log[mark..],
        Some(first),
        None,
        SwitchReason::ActiveClosed
    ));
    // The follower does not watch: it reports offline and forgets.
    p.until("offline on b", |p| {
        statuses(&p.b_log)
            .iter()
            .any(|s| matches!(s, PeerStatus::Offline { .. }))
            .then_some(())
    })
    .await;
    assert_eq!(
        p.bt().status(&a_id),
        PeerStatus::Offline {
            last_seen_unix_ms: None
        }
    );

    // After the backoff (1 s) the train redials: a new connection.
    let second = p
        .until("redialed", |p| p.at().active(&b_id).filter(|c| *c != first))
        .await;
    p.until("established again", |p| {
        has_change(
            &p.a_log[mark..],
            None,
            Some(second),
            SwitchReason::Established,
        )
        .then_some(())
    })
    .await;
    let redials: Vec<_> = p.a_log[mark..]
        .iter()
        .filter_map(|s| match s {
            Seen::Train(Event::Dialing {
                attempt,
                next_backoff,
                ..
            }) => Some((*attempt, *next_backoff)),
            _ => None,
        })
        .collect();
    assert_eq!(redials, vec![(1, Duration::from_secs(2))]);

    // Unwatched, a lost peer is not redialed.
    p.at_mut().unwatch(&b_id);
    assert!(!p.at().is_watched(&b_id));
}

#[tokio::test]
async fn dial_failures_grow_the_backoff() {
    let mut swarm = node(train::Config {
        backoff_min: Duration::from_millis(100),
        backoff_max: Duration::from_millis(400),
        tick: Duration::from_millis(20),
        ..Default::default()
    });
    let peer = PeerId::random();
    // Nobody listens there: every dial fails.
    let nowhere: Multiaddr = format!("/memory/{}", u64::MAX - 7).parse().unwrap();
    assert!(swarm.behaviour_mut().train.watch(peer, vec![nowhere]));
    let mut seen = Vec::new();
    let mut failures = 0;
    tokio::time::timeout(WAIT, async {
        while seen.len() < 5 {
            match swarm.select_next_some().await {
                SwarmEvent::Behaviour(NodeEvent::Train(Event::Dialing {
                    peer: p,
                    attempt,
                    next_backoff,
                })) => {
                    assert_eq!(p, peer);
                    seen.push((attempt, next_backoff.as_millis()));
                }
                SwarmEvent::OutgoingConnectionError { .. } => failures += 1,
                SwarmEvent::ConnectionEstablished { .. } => panic!("connected to nowhere"),
                _ => {}
            }
        }
    })
    .await
    .expect("five dial attempts");
    assert_eq!(seen, vec![(1, 100), (2, 200), (3, 400), (4, 400), (5, 400)]);
    assert!(failures >= 4, "{failures} failures");
    assert_eq!(
        swarm.behaviour().train.status(&peer),
        PeerStatus::Offline {
            last_seen_unix_ms: None
        }
    );
    assert_eq!(swarm.behaviour().train.active(&peer), None);
}

#[test]
fn watch_bounds_and_inputs_for_unknown_peers() {
    let local = PeerId::random();
    let mut t = train::Behaviour::new(
        local,
        train::Config {
            max_watched_peers: 2,
            max_candidates_per_peer: 2,
            ..Default::default()
        },
    );
    let (p1, p2, p3) = (PeerId::random(), PeerId::random(), PeerId::random());
    assert!(!t.watch(local, vec![]), "never the local peer");
    assert!(t.watch(p1, vec![]));
    assert!(t.watch(p2, vec![]));
    assert!(!t.watch(p3, vec![]), "bounded");
    assert!(t.watch(p1, vec![]), "re-watching is not a new peer");
    t.unwatch(&p2);
    assert!(t.watch(p3, vec![]));
    assert_eq!(t.all_statuses().len(), 2);

    // Candidates: bounded per peer (oldest dropped), the peer's own id is
    // stripped, another peer's address refused.
    let addr = |n: u16| -> Multiaddr { format!("/ip4/192.168.0.1/tcp/{n}").parse().unwrap() };
    let with_id: Multiaddr = format!("{}/p2p/{p1}", addr(1)).parse().unwrap();
    assert!(t.add_candidate(p1, with_id));
    assert!(t.add_candidate(p1, addr(2)));
    assert!(t.add_candidate(p1, addr(3)));
    assert_eq!(t.candidates(&p1), vec![addr(2), addr(3)]);
    let foreign: Multiaddr = format!("{}/p2p/{p2}", addr(4)).parse().unwrap();
    assert!(!t.add_candidate(p1, foreign));
    assert!(t.remove_candidate(&p1, &addr(2)));
    assert!(!t.remove_candidate(&p1, &addr(2)));
    assert_eq!(t.candidates(&p1), vec![addr(3)]);

    // Health inputs for connections the train does not know.
    let bogus = ConnectionId::new_unchecked(12345);
    assert!(!t.on_rtt(p1, bogus, Duration::from_millis(1)));
    assert!(!t.on_missed(p1, bogus));
    assert!(!t.on_timeout(p1, bogus));
    assert!(!t.follow(p1, bogus));
    assert_eq!(t.ack_timeout(p1), None);
    assert_eq!(t.active(&p1), None);
    assert_eq!(t.standby(&p1), None);
    assert!(t.paths(&p1).is_empty());
    assert_eq!(
        t.status(&p1),
        PeerStatus::Offline {
            last_seen_unix_ms: None
        }
    );
}

/// Feeds a synthetic established connection to a bare train.
fn establish(t: &mut train::Behaviour, peer: PeerId, id: ConnectionId, addr: &str) {
    use libp2p::{
        core::{transport::PortUse, ConnectedPoint, Endpoint},
        swarm::{behaviour::ConnectionEstablished, FromSwarm},
    };
    let endpoint = ConnectedPoint::Dialer {
        address: addr.parse().unwrap(),
        role_override: Endpoint::Dialer,
        port_use: PortUse::Reuse,
    };
    t.on_swarm_event(FromSwarm::ConnectionEstablished(ConnectionEstablished {
        peer_id: peer,
        connection_id: id,
        endpoint: &endpoint,
        failed_addresses: &[],
        other_established: 0,
    }));
}

/// Polls a bare train for `window`, returning the connections it closed.
async fn closes_within(t: &mut train::Behaviour, window: Duration) -> Vec<ConnectionId> {
    use libp2p::swarm::{CloseConnection, ToSwarm};
    let mut closed = Vec::new();
    let _ = tokio::time::timeout(window, async {
        loop {
            let event = futures::future::poll_fn(|cx| t.poll(cx)).await;
            if let ToSwarm::CloseConnection {
                connection: CloseConnection::One(id),
                ..
            } = event
            {
                closed.push(id);
            }
        }
    })
    .await;
    closed
}

/// Only the leader closes extras after the grace; the follower keeps them
/// (below the cap) so the two sides never close different connections.
#[tokio::test]
async fn only_the_leader_closes_extras() {
    let (mut x, mut y) = (PeerId::random(), PeerId::random());
    if x > y {
        std::mem::swap(&mut x, &mut y);
    }
    let config = train::Config {
        close_grace: Duration::from_millis(100),
        tick: Duration::from_millis(20),
        ..Default::default()
    };
    // x < y: x leads, y follows.
    for (local, remote, leads) in [(x, y, true), (y, x, false)] {
        let mut t = train::Behaviour::new(local, config.clone());
        assert_eq!(t.is_leader(&remote), leads);
        let ids: Vec<ConnectionId> = (1..=3).map(ConnectionId::new_unchecked).collect();
        establish(&mut t, remote, ids[0], "/ip4/192.168.1.2/tcp/1");
        establish(&mut t, remote, ids[1], "/ip4/192.168.1.2/tcp/2");
        establish(&mut t, remote, ids[2], "/memory/7");
        assert_eq!(
            roles(&t, &remote),
            vec![
                (ids[0], PathClass::LanDirect, Role::Active),
                (ids[1], PathClass::LanDirect, Role::Extra),
                (ids[2], PathClass::Ble, Role::Standby),
            ],
            "the second LAN path shares the active's remote IP: not a standby"
        );
        let closed = closes_within(&mut t, Duration::from_secs(1)).await;
        if leads {
            assert_eq!(closed, vec![ids[1]], "the leader closes the extra");
        } else {
            assert!(closed.is_empty(), "the follower closed {closed:?}");
        }
    }
}
