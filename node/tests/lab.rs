//! Network-lab tests of the connection train, heartbeats and session
//! continuity: real nodes in Linux network namespaces joined by links that
//! are cut, restored, delayed and made lossy. They need root, `ip`, `nft` and
//! `tc` (see `scripts/test.sh`); outside CI they skip with a reason when
//! those are missing, in CI they fail instead.

mod common;

use std::{
    net::Ipv4Addr,
    time::{Duration, Instant},
};

use atmosphere::{CallOptions, InviteOptions, MemberStatus, Node, PathStatus, PeerEvent, PeerId};
use atmosphere_lab::{require_lab, Host, Lab};
use bytes::Bytes;
use common::{paths, TestNode};

/// Generous bound for anything the tests wait for.
const WAIT: Duration = Duration::from_secs(60);

/// Starts a node in `host`, listening on every interface of the host's
/// namespace (one address per link), probing often so that a restored link
/// is found quickly.
async fn start(host: &Host, name: &str) -> TestNode {
    common::start_in(host, name, |config| {
        config.listen = vec!["/ip4/0.0.0.0/tcp/0".parse().expect("multiaddr")];
        config.probe_lan_secs = 2;
    })
    .await
}

/// `b` joins the mesh `a` founds.
async fn join(a: &Node, b: &Node) {
    a.create_mesh("lab").await.expect("mesh");
    let invite = a
        .invite(None, InviteOptions::default())
        .await
        .expect("invite");
    b.join(&invite.uri).await.expect("join");
}

async fn eventually<F, Fut, T>(what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = Instant::now() + WAIT;
    while Instant::now() < deadline {
        if let Some(value) = check().await {
            return value;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("timed out waiting for: {what}");
}

/// Waits until `node` knows that `peer` announced `name` (in the list
/// `field` picks: subscriptions or registrations).
async fn wait_announced(
    node: &Node,
    peer: PeerId,
    name: &str,
    field: impl Fn(&atmosphere::PeerInfo) -> &Vec<String>,
) {
    eventually(&format!("{peer} announced {name}"), || async {
        let peers = node.peers().await.ok()?;
        peers
            .iter()
            .any(|p| p.peer_id == peer.to_string() && field(p).iter().any(|s| s == name))
            .then_some(())
    })
    .await;
}

async fn status(node: &Node, peer: PeerId) -> Option<MemberStatus> {
    node.peers()
        .await
        .expect("peers")
        .into_iter()
        .find(|p| p.peer_id == peer.to_string())
        .map(|p| p.status)
}

/// Waits until `node` has an active path to `peer` whose remote address is
/// on `ip`, and a standby; returns the active path.
async fn wait_active_on(node: &Node, peer: PeerId, ip: Ipv4Addr) -> PathStatus {
    let needle = format!("/ip4/{ip}/");
    let deadline = Instant::now() + WAIT;
    loop {
        let paths = paths(node, peer).await;
        let active = paths
            .iter()
            .find(|p| p.role == "active" && p.remote_addr.starts_with(&needle));
        if let Some(active) = active {
            if paths.iter().any(|p| p.role == "standby" && p.healthy) {
                return active.clone();
            }
        }
        assert!(
            Instant::now() < deadline,
            "timed out waiting for an active path via {ip} plus a standby: {paths:#?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Collects the payload numbers received on `sub` until `count` arrived or
/// the deadline passed.
async fn collect(sub: &mut atmosphere::Subscription, count: usize) -> Vec<u32> {
    let mut got = Vec::with_capacity(count);
    let deadline = tokio::time::Instant::now() + WAIT;
    while got.len() < count {
        match tokio::time::timeout_at(deadline, sub.recv()).await {
            Ok(Some(message)) => {
                let bytes: [u8; 4] = message.payload[..4].try_into().expect("4-byte payload");
                got.push(u32::from_be_bytes(bytes));
            }
            _ => break,
        }
    }
    got
}

/// Publishes `count` numbered messages at `rate` per second.
async fn publish_stream(node: Node, topic: &'static str, count: u32, rate: u32) {
    let mut tick = tokio::time::interval(Duration::from_secs(1) / rate);
    for n in 0..count {
        tick.tick().await;
        let mut payload = n.to_be_bytes().to_vec();
        payload.extend_from_slice(&[0u8; 60]);
        node.publish(topic, Bytes::from(payload))
            .await
            .expect("publish");
    }
}

/// Whether `events` shows a switch away from the path for `peer`.
fn saw_switch(events: &[PeerEvent], peer: PeerId) -> bool {
    events.iter().any(|e| {
        e.peer_id == peer.to_string()
            && e.switch.as_ref().is_some_and(|s| s.reason != "established")
    })
}

fn drain(rx: &mut tokio::sync::broadcast::Receiver<PeerEvent>) -> Vec<PeerEvent> {
    let mut events = Vec::new();
    while let Ok(event) = rx.try_recv() {
        events.push(event);
    }
    events
}

/// Two hosts joined by a fast LAN and a slower second LAN (10 ms each way
/// through a router): the fast one is preferred, the slow one is the standby.
struct TwoLans {
    _lab: Lab,
    fast: atmosphere_lab::Link,
    slow: atmosphere_lab::DelayedLink,
    a: TestNode,
    b: TestNode,
}

async fn two_lans() -> TwoLans {
    let lab = Lab::new().expect("lab");
    let ha = lab.add_host("a").expect("host a");
    let hb = lab.add_host("b").expect("host b");
    let fast = lab.link(&ha, &hb).await.expect("fast link");
    let slow = lab
        .delayed_link(&ha, &hb, Duration::from_millis(10))
        .await
        .expect("slow link");
    let a = start(&ha, "a").await;
    let b = start(&hb, "b").await;
    join(&a.node, &b.node).await;
    TwoLans {
        _lab: lab,
        fast,
        slow,
        a,
        b,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cutting_the_active_lan_mid_stream_loses_nothing_and_traffic_moves_back() {
    require_lab!();
    let net = two_lans().await;
    let (a, b) = (&net.a.node, &net.b.node);
    let pa = a.peer_id();
    // The publisher's active path to the subscriber runs over the fast LAN.
    wait_active_on(b, pa, net.fast.a_addr()).await;
    let mut sub = a.subscribe("lab.stream").await.expect("subscribe");
    wait_announced(b, pa, "lab.stream", |p| &p.subscriptions).await;
    let mut events = b.peer_events();
    let publisher = tokio::spawn(publish_stream(b.clone(), "lab.stream", 1000, 200));
    tokio::time::sleep(Duration::from_millis(1500)).await;
    net.fast.down().await.expect("cut the fast LAN");
    let got = collect(&mut sub, 1000).await;
    publisher.await.expect("publisher");
    let expected: Vec<u32> = (0..1000).collect();
    assert_eq!(got.len(), 1000, "every message arrives (got {})", got.len());
    assert_eq!(got, expected, "exactly once, in publish order");
    let seen = drain(&mut events);
    assert!(
        saw_switch(&seen, pa),
        "the train reported the switch: {seen:?}"
    );
    let moved = paths(b, pa).await;
    assert!(
        moved
            .iter()
            .any(|p| p.role == "active"
                && p.remote_addr.contains(&format!("/{}/", net.slow.a_addr()))),
        "app traffic moved to the slow LAN: {moved:?}"
    );
    // Restore the fast LAN: the train moves traffic back to it.
    net.fast.up().await.expect("restore the fast LAN");
    let back = wait_active_on(b, pa, net.fast.a_addr()).await;
    // App frames use the active path only: the standby carries heartbeats.
    let before = paths(b, pa).await;
    for n in 0..200u32 {
        b.publish("lab.stream", Bytes::from(n.to_be_bytes().to_vec()))
            .await
            .expect("publish");
    }
    assert_eq!(collect(&mut sub, 200).await.len(), 200);
    let after = paths(b, pa).await;
    let grew = |p: &PathStatus| {
        let old = before
            .iter()
            .find(|o| o.connection == p.connection)
            .map_or(0, |o| o.app_bytes_sent);
        p.app_bytes_sent - old
    };
    for path in &after {
        if path.connection == back.connection {
            assert!(
                grew(path) > 200 * 4,
                "the active path carried the messages: {after:?}"
            );
        } else {
            assert_eq!(
                grew(path),
                0,
                "a non-active path carried app bytes: {after:?}"
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rpc_calls_survive_a_cut() {
    require_lab!();
    let net = two_lans().await;
    let (a, b) = (&net.a.node, &net.b.node);
    let pa = a.peer_id();
    a.register("lab.double", |req: atmosphere::Request| async move {
        let n = u32::from_be_bytes(
            req.args[..4]
                .try_into()
                .map_err(|_| atmosphere::HandlerError::Failed("want 4 bytes".into()))?,
        );
        Ok(Bytes::from((n * 2).to_be_bytes().to_vec()))
    })
    .await
    .expect("register");
    wait_active_on(b, pa, net.fast.a_addr()).await;
    wait_announced(b, pa, "lab.double", |p| &p.registrations).await;
    let caller = {
        let b = b.clone();
        tokio::spawn(async move {
            let options = CallOptions {
                timeout: Duration::from_secs(30),
                peer: None,
            };
            let mut failures = Vec::new();
            for n in 0..600u32 {
                match b
                    .call(
                        "lab.double",
                        Bytes::from(n.to_be_bytes().to_vec()),
                        options.clone(),
                    )
                    .await
                {
                    Ok(answer) if answer[..] == (n * 2).to_be_bytes() => {}
                    other => failures.push((n, format!("{other:?}"))),
                }
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            failures
        })
    };
    tokio::time::sleep(Duration::from_millis(1000)).await;
    net.fast.down().await.expect("cut the fast LAN");
    let failures = caller.await.expect("caller");
    assert!(
        failures.is_empty(),
        "calls failed across the cut: {failures:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_peer_goes_offline_quickly_and_comes_back_with_its_outbox() {
    require_lab!();
    let lab = Lab::new().expect("lab");
    let ha = lab.add_host("a").expect("host a");
    let hb = lab.add_host("b").expect("host b");
    let link = lab.link(&ha, &hb).await.expect("link");
    let a = start(&ha, "a").await;
    let b = start(&hb, "b").await;
    join(&a.node, &b.node).await;
    let pa = a.node.peer_id();
    eventually("a is direct", || async {
        matches!(status(&b.node, pa).await, Some(MemberStatus::Direct { .. })).then_some(())
    })
    .await;
    let mut sub = a.node.subscribe("lab.outbox").await.expect("subscribe");
    wait_announced(&b.node, pa, "lab.outbox", |p| &p.subscriptions).await;
    let mut events = b.node.peer_events();
    let cut = Instant::now();
    link.down().await.expect("cut");
    let offline_after = eventually("a goes offline", || {
        let offline = drain(&mut events)
            .iter()
            .any(|e| {
                e.peer_id == pa.to_string() && matches!(e.status, MemberStatus::Offline { .. })
            })
            .then(|| cut.elapsed());
        async move { offline }
    })
    .await;
    eprintln!("idle loss detected after {offline_after:?}");
    assert!(
        matches!(
            status(&b.node, pa).await,
            Some(MemberStatus::Offline { .. })
        ),
        "peers shows it offline"
    );
    // While no path exists, messages wait in a's outbox on b…
    for n in 0..50u32 {
        let queued = b
            .node
            .publish("lab.outbox", Bytes::from(n.to_be_bytes().to_vec()))
            .await
            .expect("publish while offline");
        assert_eq!(queued, 1, "queued for the offline subscriber");
    }
    link.up().await.expect("restore");
    eventually(
        "a is direct again (reconnected through backoff)",
        || async {
            matches!(status(&b.node, pa).await, Some(MemberStatus::Direct { .. })).then_some(())
        },
    )
    .await;
    // …and are delivered, in order, once it is back.
    assert_eq!(collect(&mut sub, 50).await, (0..50).collect::<Vec<u32>>());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lossy_slow_path_loses_nothing_and_is_kept_only_while_best() {
    require_lab!();
    let lab = Lab::new().expect("lab");
    let ha = lab.add_host("a").expect("host a");
    let hb = lab.add_host("b").expect("host b");
    let clean = lab.link(&ha, &hb).await.expect("clean link");
    let lossy = lab
        .delayed_link(&ha, &hb, Duration::from_millis(50))
        .await
        .expect("lossy link");
    // 5 % loss and 100 ms of added round-trip latency, each checked by the lab.
    lossy.set_loss(5).await.expect("loss");
    let a = start(&ha, "a").await;
    let b = start(&hb, "b").await;
    join(&a.node, &b.node).await;
    let (an, bn) = (&a.node, &b.node);
    let pa = an.peer_id();
    wait_active_on(bn, pa, clean.a_addr()).await;
    let mut sub = an.subscribe("lab.lossy").await.expect("subscribe");
    wait_announced(bn, pa, "lab.lossy", |p| &p.subscriptions).await;
    // The clean path dies: the lossy one is now the best and carries traffic.
    clean.down().await.expect("cut the clean link");
    let publisher = tokio::spawn(publish_stream(bn.clone(), "lab.lossy", 400, 100));
    let lossy_ip = format!("/{}/", lossy.a_addr());
    eventually("traffic on the lossy path", || async {
        paths(bn, pa)
            .await
            .iter()
            .any(|p| p.role == "active" && p.remote_addr.contains(&lossy_ip))
            .then_some(())
    })
    .await;
    // The clean path returns mid-stream: the train leaves the lossy one.
    tokio::time::sleep(Duration::from_secs(2)).await;
    clean.up().await.expect("restore the clean link");
    let got = collect(&mut sub, 400).await;
    publisher.await.expect("publisher");
    assert_eq!(
        got,
        (0..400).collect::<Vec<u32>>(),
        "exactly once, in order, despite loss"
    );
    wait_active_on(bn, pa, clean.a_addr()).await;
    let stats = bn.status().await.expect("status");
    eprintln!(
        "retransmitted {} frames, dropped {} duplicates",
        stats.retransmitted, stats.duplicates_dropped
    );
}
