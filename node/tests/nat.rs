//! Network-lab test of relays and hole punching: two members behind home
//! NATs (endpoint-independent mapping, 50 ms uplinks) meet through a mesh
//! member that runs a relay on the public side, and DCUtR upgrades their
//! relayed connection to a direct one that the train then uses.

mod common;

use std::time::{Duration, Instant};

use atmosphere::{listen_on_port, Config, InviteOptions, MemberStatus, Node, PeerId, Reachability};
use atmosphere_lab::{require_lab, Device, Lab, NatKind};
use bytes::Bytes;
use common::TestNode;

const WAIT: Duration = Duration::from_secs(90);

async fn start(device: &Device, name: &str, tweak: impl FnOnce(&mut Config)) -> TestNode {
    common::start_in(device.host(), name, |config| {
        config.listen = listen_on_port(0);
        tweak(config);
    })
    .await
}

async fn wait_for<F, Fut, T>(what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = Instant::now() + WAIT;
    loop {
        if let Some(v) = check().await {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The value of an unlabelled counter or gauge in OpenMetrics text.
fn metric(text: &str, name: &str) -> u64 {
    text.lines()
        .find_map(|line| {
            line.strip_prefix(name)?
                .strip_prefix(' ')?
                .trim()
                .parse()
                .ok()
        })
        .unwrap_or_else(|| panic!("no {name} in metrics"))
}

async fn active_class(node: &Node, peer: PeerId) -> Option<String> {
    node.peers()
        .await
        .ok()?
        .into_iter()
        .find(|p| p.peer_id == peer.to_string())?
        .paths
        .into_iter()
        .find(|p| p.role == "active")
        .map(|p| p.class)
}

/// A public relay (a mesh member running the relay server, the founder)
/// and two members, alice and bob, each behind a home router with NAT of the
/// given kind and a 50 ms uplink; both hold a reservation on the relay.
struct Homes {
    _lab: Lab,
    home_a: atmosphere_lab::NatRouter,
    relay: TestNode,
    alice: TestNode,
    bob: TestNode,
}

/// The hosts of the NAT tests: a public relay host, home a (endpoint-
/// independent NAT) with alice, home b (NAT of `bob_nat`) with bob, both
/// homes on 50 ms uplinks.
struct Topology {
    lab: Lab,
    relay_dev: Device,
    home_a: atmosphere_lab::NatRouter,
    alice_dev: Device,
    bob_dev: Device,
}

async fn topology(bob_nat: NatKind) -> Topology {
    let lab = Lab::new().expect("lab");
    let internet = lab.internet().await.expect("internet");
    let relay_dev = internet.add_public_host("relay").await.expect("relay host");
    let home_a = internet
        .add_router("home-a", NatKind::EndpointIndependent)
        .await
        .expect("home a");
    let home_b = internet
        .add_router("home-b", bob_nat)
        .await
        .expect("home b");
    for home in [&home_a, &home_b] {
        home.uplink()
            .set_delay(Duration::from_millis(50))
            .await
            .expect("50 ms uplink");
    }
    let alice_dev = home_a.add_host("alice").await.expect("alice host");
    let bob_dev = home_b.add_host("bob").await.expect("bob host");
    Topology {
        lab,
        relay_dev,
        home_a,
        alice_dev,
        bob_dev,
    }
}

async fn homes(bob_nat: NatKind) -> Homes {
    let Topology {
        lab,
        relay_dev,
        home_a,
        alice_dev,
        bob_dev,
    } = topology(bob_nat).await;
    // The public host's uplink is a point-to-point link, on which libp2p's
    // interface watcher reports the peer's address for `0.0.0.0`: listen on
    // the host's own address instead.
    let public = relay_dev.addr();
    let relay = start(&relay_dev, "relay", |c| {
        c.relay_server = true;
        c.listen = vec![
            format!("/ip4/{public}/tcp/0").parse().expect("tcp addr"),
            format!("/ip4/{public}/udp/0/quic-v1")
                .parse()
                .expect("quic addr"),
        ];
    })
    .await;
    relay.node.create_mesh("nat").await.expect("mesh");
    let alice = start(&alice_dev, "alice", |_| {}).await;
    let bob = start(&bob_dev, "bob", |_| {}).await;
    for member in [&alice, &bob] {
        let invite = relay
            .node
            .invite(None, InviteOptions::default())
            .await
            .expect("invite");
        member.node.join(&invite.uri).await.expect("join");
    }
    for member in [&alice, &bob] {
        wait_for("a reservation on the relay", || async {
            (!member
                .node
                .status()
                .await
                .ok()?
                .relay
                .reserved_on
                .is_empty())
            .then_some(())
        })
        .await;
    }
    Homes {
        _lab: lab,
        home_a,
        relay,
        alice,
        bob,
    }
}

/// Bob publishes 100 numbered messages; alice gets them all, in order.
async fn stream_bob_to_alice(alice: &Node, bob: &Node, topic: &str) {
    let pa = alice.peer_id();
    let mut sub = alice.subscribe(topic).await.expect("subscribe");
    wait_for("bob knows alice's subscription", || async {
        bob.peers()
            .await
            .ok()?
            .iter()
            .any(|p| p.peer_id == pa.to_string() && p.subscriptions.iter().any(|s| s == topic))
            .then_some(())
    })
    .await;
    for n in 0..100u32 {
        bob.publish(topic, Bytes::from(n.to_be_bytes().to_vec()))
            .await
            .expect("publish");
    }
    for n in 0..100u32 {
        let message = tokio::time::timeout(WAIT, sub.recv())
            .await
            .expect("message in time")
            .expect("subscription open");
        assert_eq!(message.payload[..], n.to_be_bytes());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn members_behind_two_nats_meet_through_the_relay_and_go_direct() {
    require_lab!();
    let net = homes(NatKind::EndpointIndependent).await;
    let (alice, bob) = (&net.alice.node, &net.bob.node);
    let (pa, pb) = (alice.peer_id(), bob.peer_id());
    // Bob reaches alice (through the relay first), and the hole punch
    // gives them a direct path that becomes the active one.
    let started = Instant::now();
    wait_for("a direct active path between alice and bob", || async {
        (active_class(bob, pa).await.as_deref() == Some("direct")
            && active_class(alice, pb).await.as_deref() == Some("direct"))
        .then_some(())
    })
    .await;
    eprintln!("direct after {:?}", started.elapsed());
    // Each side knows it is behind NAT and how the internet sees it; the
    // relay knows it is public.
    for member in [alice, bob] {
        let network = wait_for("a member's public address", || async {
            let network = member.status().await.ok()?.network;
            network.public_ip.is_some().then_some(network)
        })
        .await;
        assert_eq!(network.is_behind_nat, Some(true), "{network:?}");
        assert!(network
            .public_ip
            .as_deref()
            .is_some_and(|ip| ip.starts_with("198.51.100.")));
        assert!(network
            .local_ip
            .as_deref()
            .is_some_and(|ip| ip.starts_with("192.168.")));
        assert!(network.public_addrs.is_empty(), "{network:?}");
    }
    let network = net.relay.node.status().await.expect("status").network;
    assert_eq!(network.is_behind_nat, Some(false), "{network:?}");
    assert_eq!(network.reachability, Reachability::Public, "{network:?}");
    let punched = alice.status().await.expect("status").relay.dcutr_successes
        + bob.status().await.expect("status").relay.dcutr_successes;
    assert!(punched >= 1, "the direct path came from a hole punch");
    // The same in the Prometheus metrics.
    let successes: u64 = [alice, bob]
        .iter()
        .map(|n| metric(&n.metrics(), "atmosphere_dcutr_successes_total"))
        .sum();
    assert_eq!(successes, punched);
    stream_bob_to_alice(alice, bob, "nat.direct").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn behind_a_symmetric_nat_the_mesh_stays_on_the_relay() {
    require_lab!();
    let net = homes(NatKind::AddressDependent).await;
    let (alice, bob) = (&net.alice.node, &net.bob.node);
    let pa = alice.peer_id();
    let relay_id = net.relay.node.peer_id().to_string();
    wait_for("bob reaches alice through the relay", || async {
        let info = bob
            .peers()
            .await
            .ok()?
            .into_iter()
            .find(|p| p.peer_id == pa.to_string())?;
        matches!(&info.status, MemberStatus::Relayed { via: Some(via) } if *via == relay_id)
            .then_some(())
    })
    .await;
    // Hole punching is tried and fails; the relayed path keeps working.
    wait_for("a failed hole punch", || async {
        let a = alice.status().await.ok()?.relay;
        let b = bob.status().await.ok()?.relay;
        (a.dcutr_attempts + b.dcutr_attempts > 0).then_some((a, b))
    })
    .await;
    stream_bob_to_alice(alice, bob, "nat.relayed").await;
    assert_eq!(active_class(bob, pa).await.as_deref(), Some("relayed"));
    let (a, b) = (
        alice.status().await.expect("status").relay,
        bob.status().await.expect("status").relay,
    );
    assert_eq!(
        a.dcutr_successes + b.dcutr_successes,
        0,
        "no direct path through a symmetric NAT"
    );
}

/// Counts the numbered messages a subscriber gets and checks they arrive
/// exactly once, in order.
async fn collect_in_order(mut sub: atmosphere::Subscription, until: u32) -> Result<u32, String> {
    let mut next = 0u32;
    while next < until {
        let message = tokio::time::timeout(WAIT, sub.recv())
            .await
            .map_err(|_| format!("message {next} did not arrive"))?
            .ok_or("subscription closed")?;
        let n = u32::from_be_bytes(
            message.payload[..]
                .try_into()
                .map_err(|_| "bad payload".to_string())?,
        );
        if n != next {
            return Err(format!("expected message {next}, got {n}"));
        }
        next += 1;
    }
    Ok(next)
}

/// App bytes alice has received from `peer` per path class.
async fn bytes_by_class(node: &Node, peer: PeerId) -> Vec<(String, u64)> {
    node.peers()
        .await
        .ok()
        .and_then(|peers| peers.into_iter().find(|p| p.peer_id == peer.to_string()))
        .map(|p| {
            p.paths
                .into_iter()
                .map(|path| (path.class, path.app_bytes_received))
                .collect()
        })
        .unwrap_or_default()
}

/// The whole story with an open relay that is not a member: bob
/// founds the mesh behind a home NAT and reserves on the relay; alice,
/// behind another NAT, joins with an invite whose only reachable endpoint
/// is the relayed one; pub/sub and RPC run over the relay, the hole punch
/// moves traffic to a direct path while bob keeps publishing (nothing lost),
/// the relay dies (nothing lost: the direct path carries on), and after both
/// members and the relay restart they find each other again from what they
/// saved, with no new invite.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_relayed_join_goes_direct_and_survives_relay_loss_and_restarts() {
    require_lab!();
    let Topology {
        lab: _lab,
        relay_dev,
        home_a: _home_a,
        alice_dev,
        bob_dev,
    } = topology(NatKind::EndpointIndependent).await;
    let public = relay_dev.addr();
    let relay_listen = move |c: &mut Config| {
        c.relay_server = true;
        c.relay_open = true;
        c.listen = vec![format!("/ip4/{public}/tcp/4001")
            .parse()
            .expect("relay addr")];
    };
    let relay = start(&relay_dev, "relay", relay_listen).await;
    let relay_addr: atmosphere::Multiaddr =
        format!("/ip4/{public}/tcp/4001/p2p/{}", relay.node.peer_id())
            .parse()
            .expect("relay multiaddr");
    let bob_config = {
        let relay_addr = relay_addr.clone();
        move |c: &mut Config| c.relays = vec![relay_addr]
    };
    let bob = start(&bob_dev, "bob", bob_config.clone()).await;
    let alice = start(&alice_dev, "alice", |_| {}).await;
    bob.node.create_mesh("home").await.expect("mesh");
    wait_for("bob's reservation on the relay", || async {
        let relay = bob.node.status().await.ok()?.relay;
        (!relay.reserved_on.is_empty()).then_some(())
    })
    .await;
    bob.node
        .register("home.echo", |req: atmosphere::Request| async move {
            Ok(req.args)
        })
        .await
        .expect("register");
    let invite = bob
        .node
        .invite(None, InviteOptions::default())
        .await
        .expect("invite");
    let parsed = atmosphere::invite::InviteUri::parse(&invite.uri).expect("parse");
    assert!(!parsed.endpoints.relay.is_empty(), "{invite:?}");
    assert!(!parsed.endpoints.local.is_empty(), "{invite:?}");

    // The join: bob's LAN addresses are unreachable from alice's home, the
    // relayed one works.
    let report = alice
        .node
        .join_with_report(&invite.uri)
        .await
        .expect("join");
    eprintln!("join report: {report:?}");
    assert_eq!(
        report.endpoint_group,
        Some(atmosphere::invite::EndpointGroup::Relay)
    );
    assert_eq!(
        report.tried.first(),
        Some(&atmosphere::invite::EndpointGroup::Local)
    );
    let (pa, pb) = (alice.node.peer_id(), bob.node.peer_id());

    // Bob streams numbered messages to alice from now on, through the
    // relay, the hole punch and the relay's death.
    let sub = alice
        .node
        .subscribe("home.stream")
        .await
        .expect("subscribe");
    wait_for("bob knows alice's subscription", || async {
        bob.node
            .peers()
            .await
            .ok()?
            .iter()
            .any(|p| p.peer_id == pa.to_string() && !p.subscriptions.is_empty())
            .then_some(())
    })
    .await;
    let sent = std::sync::Arc::new(std::sync::atomic::AtomicU32::new(0));
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let publisher = {
        let (bob, sent, stop) = (bob.node.clone(), sent.clone(), stop.clone());
        tokio::spawn(async move {
            let mut n = 0u32;
            while !stop.load(std::sync::atomic::Ordering::SeqCst) {
                bob.publish("home.stream", Bytes::from(n.to_be_bytes().to_vec()))
                    .await
                    .expect("publish");
                n += 1;
                sent.store(n, std::sync::atomic::Ordering::SeqCst);
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            n
        })
    };
    // RPC works over whatever path carries the mesh now (relayed at first).
    let echoed = alice
        .node
        .call(
            "home.echo",
            Bytes::from_static(b"ping"),
            atmosphere::CallOptions::default(),
        )
        .await
        .expect("rpc over the relay");
    assert_eq!(&echoed[..], b"ping");
    wait_for("app bytes over the relayed path", || async {
        bytes_by_class(&alice.node, pb)
            .await
            .iter()
            .any(|(class, bytes)| class == "relayed" && *bytes > 0)
            .then_some(())
    })
    .await;
    wait_for("a direct active path", || async {
        (active_class(&alice.node, pb).await.as_deref() == Some("direct")
            && active_class(&bob.node, pa).await.as_deref() == Some("direct"))
        .then_some(())
    })
    .await;
    // Traffic moved: the direct path's byte counter grows.
    let direct_bytes = |paths: Vec<(String, u64)>| {
        paths
            .into_iter()
            .filter(|(c, _)| c == "direct")
            .map(|(_, b)| b)
            .sum::<u64>()
    };
    let before = direct_bytes(bytes_by_class(&alice.node, pb).await);
    wait_for("app bytes over the direct path", || async {
        (direct_bytes(bytes_by_class(&alice.node, pb).await) > before).then_some(())
    })
    .await;

    // The relay dies while the direct path carries the stream.
    let relay = {
        let TestNode { node, _dir } = relay;
        node.shutdown().await;
        drop(node);
        _dir
    };
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(
        active_class(&alice.node, pb).await.as_deref(),
        Some("direct")
    );
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    let total = publisher.await.expect("publisher");
    let received = collect_in_order(sub, total)
        .await
        .expect("every message, in order");
    assert_eq!(received, total);
    eprintln!("{total} messages through relay, punch and relay loss, none lost");

    // Everything restarts: no new invite, only what was saved.
    let relay = common::start_on_dir(relay_dev.host(), relay, "relay", relay_listen).await;
    let bob = common::restart_in(bob_dev.host(), bob, "bob", |c| {
        c.listen = listen_on_port(0);
        bob_config(c)
    })
    .await;
    let alice = common::restart_in(alice_dev.host(), alice, "alice", |c| {
        c.listen = listen_on_port(0);
    })
    .await;
    let mesh = wait_for("alice and bob meet again from saved endpoints", || async {
        let meshes = alice.node.list_meshes().await.ok()?;
        let mesh = meshes.into_iter().next()?;
        (mesh.state == "connected").then_some(mesh)
    })
    .await;
    eprintln!("after the restarts: connected via {:?}", mesh.connected_via);
    assert!(
        mesh.connected_via
            .iter()
            .all(|c| c == "direct" || c == "relayed"),
        "{mesh:?}"
    );
    assert!(mesh.endpoints.iter().any(|e| e.last_success.is_some()));
    let mut sub = alice.node.subscribe("home.again").await.expect("subscribe");
    wait_for("bob knows alice's new subscription", || async {
        bob.node
            .peers()
            .await
            .ok()?
            .iter()
            .any(|p| {
                p.peer_id == pa.to_string() && p.subscriptions.iter().any(|s| s == "home.again")
            })
            .then_some(())
    })
    .await;
    bob.node
        .publish("home.again", Bytes::from_static(b"back"))
        .await
        .expect("publish");
    let message = tokio::time::timeout(WAIT, sub.recv())
        .await
        .expect("message after the restart")
        .expect("subscription open");
    assert_eq!(&message.payload[..], b"back");
    drop(relay);
}

/// A node that is no member of the relay's mesh, behind a home NAT, is told
/// to use the members-only relay: its reservation is refused (members keep
/// theirs). It asks its router for a UPnP mapping too: the lab's routers
/// offer none, and status says so.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_members_only_relay_refuses_a_stranger_behind_nat() {
    require_lab!();
    let net = homes(NatKind::EndpointIndependent).await;
    let relay_addr: atmosphere::Multiaddr = net
        .relay
        .node
        .listen_addrs()
        .await
        .expect("relay addrs")
        .into_iter()
        .find(|a| a.to_string().contains("/tcp/"))
        .expect("relay tcp addr")
        .with_p2p(net.relay.node.peer_id())
        .expect("relay multiaddr");
    let stranger_dev = net
        .home_a
        .add_host("stranger")
        .await
        .expect("stranger host");
    let stranger = start(&stranger_dev, "stranger", |c| {
        c.relays = vec![relay_addr];
        c.upnp = true;
    })
    .await;
    stranger.node.create_mesh("elsewhere").await.expect("mesh");
    wait_for("the relay refuses the stranger's reservation", || async {
        let relay = net.relay.node.status().await.ok()?.relay;
        (relay.reservations_denied > 0).then_some(())
    })
    .await;
    let status = stranger.node.status().await.expect("status");
    assert!(status.relay.reserved_on.is_empty(), "{:?}", status.relay);
    // The members' reservations stand.
    assert_eq!(
        net.relay
            .node
            .status()
            .await
            .expect("status")
            .relay
            .reservations,
        2
    );
    let upnp = wait_for("the UPnP search to end", || async {
        let upnp = stranger.node.status().await.ok()?.network.upnp;
        (upnp.state != "searching").then_some(upnp)
    })
    .await;
    assert!(upnp.enabled);
    assert_eq!(upnp.state, "no_gateway", "{upnp:?}");
    assert!(upnp.mapped.is_empty());
    // Off by default.
    let upnp = net.alice.node.status().await.expect("status").network.upnp;
    assert!(!upnp.enabled);
    assert_eq!(upnp.state, "off");
}
