//! Nodes with a Bluetooth LE radio on the simulated radio
//! (`atmosphere_transports::ble::sim`: 1 Mbit/s, 30 ms, 247-byte MTU):
//! members sighted over BLE become `ble` paths; pub/sub and RPC run over
//! them; a node walking out of range fails over to the LAN (loopback here)
//! without losing a message, and the `LowPower` policy moves traffic back
//! onto BLE when it comes back.

mod common;

use std::time::Duration;

use atmosphere::{
    transports::ble::sim::{Position, SimRadio},
    CallOptions, Config, DeviceProfile, InviteOptions, Node, PathStatus, PeerId, Request,
};
use bytes::Bytes;
use common::{eventually, paths, start_with_ble, TestNode, WAIT};

fn low_power(config: &mut Config) {
    config.device_profile = DeviceProfile::LowPower;
    config.probe_ble_secs = 1;
    config.probe_lan_secs = 1;
}

/// Waits until `node`'s active path to `peer` is of `class`.
async fn wait_active(node: &Node, peer: PeerId, class: &str) -> PathStatus {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let paths = paths(node, peer).await;
        if let Some(active) = paths
            .iter()
            .find(|p| p.role == "active" && p.class == class)
        {
            return active.clone();
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for an active {class} path: {paths:#?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Two members on loopback, both with a radio in range of each other.
async fn pair_in_range(
    radio: &SimRadio,
) -> (
    TestNode,
    TestNode,
    atmosphere::transports::ble::sim::SimNode,
) {
    let (a, _) = start_with_ble("a", radio, Position::new(0.0, 0.0), low_power).await;
    let (b, b_radio) = start_with_ble("b", radio, Position::new(3.0, 0.0), low_power).await;
    a.node.create_mesh("ble").await.expect("mesh");
    let invite = a
        .node
        .invite(None, InviteOptions::default())
        .await
        .expect("invite");
    b.node.join(&invite.uri).await.expect("join");
    (a, b, b_radio)
}

async fn wait_subscribed(node: &Node, peer: PeerId, topic: &str) {
    eventually(&format!("{peer} subscribed to {topic}"), || async {
        node.peers().await.is_ok_and(|peers| {
            peers.iter().any(|p| {
                p.peer_id == peer.to_string() && p.subscriptions.iter().any(|s| s == topic)
            })
        })
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn members_sighted_over_ble_get_a_ble_path_and_run_pubsub_and_rpc_on_it() {
    let radio = SimRadio::default();
    let (a, b, _) = pair_in_range(&radio).await;
    let (pa, pb) = (a.node.peer_id(), b.node.peer_id());

    // LowPower prefers BLE: both sides move their traffic onto it.
    let active = wait_active(&b.node, pa, "ble").await;
    assert!(active.remote_addr.starts_with("/memory/"), "{active:?}");
    wait_active(&a.node, pb, "ble").await;
    let status = b.node.status().await.expect("status");
    let ble = status.ble.expect("a node with a radio reports it");
    assert!(ble.advertising && ble.psm.is_some(), "{ble:?}");
    assert!(ble.connections >= 1, "{ble:?}");
    // BLE addresses stay off the IP reachability machinery (AutoNAT).
    let network = serde_json::to_string(&status.network).expect("json");
    assert!(!network.contains("/memory/"), "{network}");
    assert!(
        ble.nearby
            .iter()
            .any(|n| n.member && n.peer_id.as_deref() == Some(&pa.to_string())),
        "the member is listed as nearby: {ble:?}"
    );

    // Pub/sub.
    let mut sub = a.node.subscribe("ble.temp").await.expect("subscribe");
    wait_subscribed(&b.node, pa, "ble.temp").await;
    for n in 0..50u32 {
        b.node
            .publish("ble.temp", Bytes::from(n.to_be_bytes().to_vec()))
            .await
            .expect("publish");
    }
    for n in 0..50u32 {
        let message = tokio::time::timeout(WAIT, sub.recv())
            .await
            .expect("message in time")
            .expect("subscription open");
        assert_eq!(message.payload.as_ref(), n.to_be_bytes());
    }

    // RPC, with a 1 MiB payload each way.
    a.node
        .register("blob.reverse", |req: Request| async move {
            let mut out = req.args.to_vec();
            out.reverse();
            Ok(Bytes::from(out))
        })
        .await
        .expect("register");
    eventually("the handler is announced", || async {
        b.node.peers().await.is_ok_and(|peers| {
            peers
                .iter()
                .any(|p| p.registrations.iter().any(|r| r == "blob.reverse"))
        })
    })
    .await;
    let before = paths(&b.node, pa).await;
    let blob: Vec<u8> = (0..1024 * 1024u32).map(|i| (i * 7 % 251) as u8).collect();
    let options = CallOptions {
        timeout: Duration::from_secs(120),
        peer: Some(pa),
    };
    let out = b
        .node
        .call("blob.reverse", blob.clone(), options)
        .await
        .expect("1 MiB call over BLE");
    let mut expected = blob;
    expected.reverse();
    assert!(out.as_ref() == expected.as_slice(), "1 MiB crossed intact");

    // The bytes went over the BLE path.
    let after = paths(&b.node, pa).await;
    let ble_path = after
        .iter()
        .find(|p| p.class == "ble" && p.role == "active")
        .unwrap_or_else(|| panic!("still on BLE: {after:#?}"));
    let sent_before = before
        .iter()
        .find(|p| p.connection == ble_path.connection)
        .map_or(0, |p| p.app_bytes_sent);
    assert!(
        ble_path.app_bytes_sent - sent_before >= 1024 * 1024,
        "the call's bytes crossed the BLE path: {after:#?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn walking_out_of_range_fails_over_to_the_lan_and_low_power_moves_back_to_ble() {
    let radio = SimRadio::default();
    let (a, b, b_radio) = pair_in_range(&radio).await;
    let pa = a.node.peer_id();
    wait_active(&b.node, pa, "ble").await;
    let mut sub = a.node.subscribe("walk").await.expect("subscribe");
    wait_subscribed(&b.node, pa, "walk").await;

    // 300 messages at 50/s; B walks out of range a second in.
    let publisher = {
        let node = b.node.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_millis(20));
            for n in 0..300u32 {
                tick.tick().await;
                node.publish("walk", Bytes::from(n.to_be_bytes().to_vec()))
                    .await
                    .expect("publish");
            }
        })
    };
    tokio::time::sleep(Duration::from_secs(1)).await;
    b_radio
        .move_to(Position::new(100.0, 0.0))
        .expect("move out of range");
    let mut got = Vec::new();
    while got.len() < 300 {
        let message = tokio::time::timeout(WAIT, sub.recv())
            .await
            .expect("message in time")
            .expect("subscription open");
        got.push(u32::from_be_bytes(
            message.payload[..4].try_into().expect("4 bytes"),
        ));
    }
    publisher.await.expect("publisher");
    assert_eq!(
        got,
        (0..300).collect::<Vec<u32>>(),
        "every message, once, in order"
    );
    wait_active(&b.node, pa, "lan").await;
    assert!(
        paths(&b.node, pa).await.iter().all(|p| p.class != "ble"),
        "no BLE path while out of range"
    );

    // Back in range: the sighting brings the BLE path back and LowPower
    // makes it active again.
    b_radio
        .move_to(Position::new(3.0, 0.0))
        .expect("move back in range");
    let back = wait_active(&b.node, pa, "ble").await;
    // The app stream follows the train onto the new path (its `Open` frame
    // is the first thing written there).
    let back = {
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            let now = paths(&b.node, pa).await;
            if let Some(p) = now
                .iter()
                .find(|p| p.connection == back.connection && p.app_bytes_sent > 0)
            {
                break p.clone();
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "the app stream never moved onto BLE: {now:#?}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    };
    for n in 0..20u32 {
        b.node
            .publish("walk", Bytes::from(n.to_be_bytes().to_vec()))
            .await
            .expect("publish");
    }
    for _ in 0..20 {
        tokio::time::timeout(WAIT, sub.recv())
            .await
            .expect("message in time")
            .expect("subscription open");
    }
    let after = paths(&b.node, pa).await;
    let on_ble = after
        .iter()
        .find(|p| p.connection == back.connection)
        .expect("the BLE path is still there");
    assert!(on_ble.app_bytes_sent > back.app_bytes_sent, "{after:#?}");
}
