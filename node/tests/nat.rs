//! Network-lab test of relays and hole punching: two members behind home
//! NATs (endpoint-independent mapping, 50 ms uplinks) meet through a mesh
//! member that runs a relay on the public side, and DCUtR upgrades their
//! relayed connection to a direct one that the train then uses.

mod common;

use std::time::{Duration, Instant};

use atmosphere::{listen_on_port, Config, InviteOptions, MemberStatus, Node, PeerId};
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
    relay: TestNode,
    alice: TestNode,
    bob: TestNode,
}

async fn homes(bob_nat: NatKind) -> Homes {
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
    let punched = alice.status().await.expect("status").relay.dcutr_successes
        + bob.status().await.expect("status").relay.dcutr_successes;
    assert!(punched >= 1, "the direct path came from a hole punch");
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
