//! Proximity pairing between nodes: over the simulated BLE radio with no IP
//! network at all, and over the LAN (loopback) by address. The founder turns
//! pairing mode on, the other node asks; both see the same 6-digit code, both
//! confirm, and the requester is then a member: pub/sub and RPC work, and the
//! credentials survive a restart. A rejection leaves no member and no mesh.

mod common;

use std::time::Duration;

use atmosphere::{
    transports::ble::{
        sim::{Position, SimRadio},
        BoxedLink,
    },
    CallOptions, Config, Node, NodeBuilder, PairingSession, Request,
};
use bytes::Bytes;
use common::{eventually, start, TestNode, WAIT};

/// No IP listener, no mDNS: the radio is the only way between the nodes.
fn radio_only(config: &mut Config) {
    config.listen = Vec::new();
    config.mdns = false;
}

async fn start_on_radio(
    name: &str,
    radio: &SimRadio,
    x: f64,
    dir: Option<tempfile::TempDir>,
) -> TestNode {
    common::init_tracing();
    let dir = dir.unwrap_or_else(|| tempfile::tempdir().expect("tempdir"));
    let mut config = Config::ephemeral(dir.path());
    config.name = Some(name.to_owned());
    radio_only(&mut config);
    let link = radio.add_node(Position::new(x, 0.0), 10.0);
    let node = NodeBuilder::new(config)
        .ble(BoxedLink::new(link))
        .build()
        .await
        .expect("node starts");
    TestNode { node, _dir: dir }
}

/// Waits until `node`'s session `id` satisfies `done`.
async fn wait_session(
    node: &Node,
    id: u64,
    what: &str,
    done: impl Fn(&PairingSession) -> bool,
) -> PairingSession {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let session = node.pairing_session(id).await.expect("session");
        if done(&session) {
            return session;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what}: {session:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The acceptor's newest session.
async fn incoming(node: &Node) -> PairingSession {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let (_, sessions) = node.pairing().await.expect("pairing");
        if let Some(s) = sessions.iter().rev().find(|s| s.role == "acceptor") {
            return s.clone();
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no pairing request arrived"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// `requester` asks `device`; both confirm once the codes show. Returns both
/// final sessions.
async fn pair_and_confirm(
    founder: &Node,
    requester: &Node,
    device: &str,
) -> (PairingSession, PairingSession) {
    let asked = requester.pair(device).await.expect("pairing starts");
    let ours = wait_session(requester, asked.id, "the requester's code", |s| {
        s.code.is_some()
    })
    .await;
    let theirs = incoming(founder).await;
    let theirs = wait_session(founder, theirs.id, "the founder's code", |s| {
        s.code.is_some()
    })
    .await;
    let code = ours.code.clone().expect("code");
    assert_eq!(code.len(), 6, "six digits: {code}");
    assert!(code.chars().all(|c| c.is_ascii_digit()), "{code}");
    assert_eq!(ours.code, theirs.code, "both screens show the same code");
    assert_eq!(theirs.peer_id, requester.peer_id().to_string());
    assert_eq!(ours.peer_id, founder.peer_id().to_string());
    founder
        .pair_confirm(theirs.id)
        .await
        .expect("founder confirms");
    requester
        .pair_confirm(ours.id)
        .await
        .expect("requester confirms");
    let ours = wait_session(requester, ours.id, "completion", PairingSession::is_over).await;
    let theirs = wait_session(founder, theirs.id, "completion", PairingSession::is_over).await;
    (ours, theirs)
}

async fn wait_member(node: &Node, peer: atmosphere::PeerId, mesh: &str) {
    eventually(
        &format!("{peer} is a connected member of {mesh}"),
        || async {
            node.peers().await.is_ok_and(|peers| {
                peers.iter().any(|p| {
                    p.peer_id == peer.to_string()
                        && p.connected
                        && p.meshes.iter().any(|m| m == mesh)
                })
            })
        },
    )
    .await;
}

async fn pubsub_and_rpc_work(founder: &Node, member: &Node) {
    let mut sub = founder.subscribe("paired.hello").await.expect("subscribe");
    member
        .register("paired.echo", |req: Request| async move { Ok(req.args) })
        .await
        .expect("register");
    eventually("the subscription and the handler are announced", || async {
        let a = member.peers().await.is_ok_and(|peers| {
            peers
                .iter()
                .any(|p| p.subscriptions.iter().any(|s| s == "paired.hello"))
        });
        let b = founder.peers().await.is_ok_and(|peers| {
            peers
                .iter()
                .any(|p| p.registrations.iter().any(|r| r == "paired.echo"))
        });
        a && b
    })
    .await;
    member.publish("paired.hello", "hi").await.expect("publish");
    let message = tokio::time::timeout(WAIT, sub.recv())
        .await
        .expect("message in time")
        .expect("open");
    assert_eq!(message.payload, Bytes::from_static(b"hi"));
    let options = CallOptions {
        timeout: Duration::from_secs(20),
        peer: Some(member.peer_id()),
    };
    let echo = founder
        .call("paired.echo", "ping", options)
        .await
        .expect("call");
    assert_eq!(echo, Bytes::from_static(b"ping"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_devices_with_no_network_pair_over_ble_and_stay_paired_after_a_restart() {
    let radio = SimRadio::default();
    let founder = start_on_radio("founder", &radio, 0.0, None).await;
    let phone = start_on_radio("phone", &radio, 4.0, None).await;
    let mesh = founder.node.create_mesh("home").await.expect("mesh");
    let mode = founder
        .node
        .pair_accept(None, true)
        .await
        .expect("pairing mode");
    assert!(mode.accepting);
    assert_eq!(mode.mesh_name.as_deref(), Some("home"));

    // The phone sees the founder's advertisement.
    let device = {
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            let nearby = phone.node.nearby().await.expect("nearby");
            if let Some(d) = nearby.iter().find(|d| d.via == "ble" && !d.member) {
                break d.id.clone();
            }
            assert!(tokio::time::Instant::now() < deadline, "nothing nearby");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    };
    let (ours, theirs) = pair_and_confirm(&founder.node, &phone.node, &device).await;
    assert_eq!(ours.state, "completed", "{ours:?}");
    assert_eq!(theirs.state, "completed", "{theirs:?}");
    assert_eq!(ours.mesh_id.as_deref(), Some(mesh.id.as_str()));
    let meshes = phone.node.list_meshes().await.expect("meshes");
    assert!(meshes.iter().any(|m| m.id == mesh.id), "{meshes:?}");

    wait_member(&founder.node, phone.node.peer_id(), &mesh.id).await;
    wait_member(&phone.node, founder.node.peer_id(), &mesh.id).await;
    pubsub_and_rpc_work(&founder.node, &phone.node).await;

    // The phone restarts (a new radio address, as real phones rotate them):
    // its credentials survive and it finds the founder again by scanning.
    let TestNode { node, _dir: dir } = phone;
    let phone_id = node.peer_id();
    node.shutdown().await;
    drop(node);
    let phone = start_on_radio("phone", &radio, 4.0, Some(dir)).await;
    assert_eq!(phone.node.peer_id(), phone_id);
    let meshes = phone.node.list_meshes().await.expect("meshes");
    assert!(meshes.iter().any(|m| m.id == mesh.id), "saved: {meshes:?}");
    wait_member(&phone.node, founder.node.peer_id(), &mesh.id).await;
    pubsub_and_rpc_work(&founder.node, &phone.node).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pairing_over_the_lan_by_address_and_a_rejection_leaves_nothing_behind() {
    let founder = start("founder").await;
    let laptop = start("laptop").await;
    let stranger = start("stranger").await;
    let mesh = founder.node.create_mesh("office").await.expect("mesh");
    founder
        .node
        .pair_accept(Some("office"), true)
        .await
        .expect("pairing mode");
    let addr = founder
        .node
        .listen_addrs()
        .await
        .expect("addrs")
        .into_iter()
        .next()
        .expect("an address")
        .with_p2p(founder.node.peer_id())
        .expect("p2p");

    // The stranger's user sees a different situation and rejects.
    let asked = stranger.node.pair(&addr.to_string()).await.expect("starts");
    let ours = wait_session(&stranger.node, asked.id, "a code", |s| s.code.is_some()).await;
    stranger.node.pair_reject(ours.id).await.expect("reject");
    let ours = wait_session(&stranger.node, ours.id, "the end", PairingSession::is_over).await;
    assert_eq!(ours.state, "failed");
    let theirs = incoming(&founder.node).await;
    let theirs = wait_session(&founder.node, theirs.id, "the end", PairingSession::is_over).await;
    assert_eq!(theirs.state, "failed", "{theirs:?}");
    assert!(stranger
        .node
        .list_meshes()
        .await
        .expect("meshes")
        .is_empty());
    eventually("the stranger is disconnected", || async {
        founder.node.peers().await.is_ok_and(|peers| {
            !peers
                .iter()
                .any(|p| p.peer_id == stranger.node.peer_id().to_string() && p.connected)
        })
    })
    .await;

    // The laptop pairs.
    let (ours, theirs) = pair_and_confirm(&founder.node, &laptop.node, &addr.to_string()).await;
    assert_eq!(
        (ours.state.as_str(), theirs.state.as_str()),
        ("completed", "completed")
    );
    wait_member(&founder.node, laptop.node.peer_id(), &mesh.id).await;
    pubsub_and_rpc_work(&founder.node, &laptop.node).await;
}
