//! Three (and more) nodes in one process over loopback TCP: meshes, invites,
//! pattern subscriptions, RPC and its typed errors, membership enforcement.

mod common;

use common::{eventually, start, TestNode, WAIT};

use std::time::Duration;

use atmosphere::{
    CallOptions, Config, Error, HandlerError, InviteOptions, Message, Node, NodeBuilder,
    Permissions, Request, RpcError, Subscription,
};
use bytes::Bytes;

/// Waits until `node` knows `count` connected peers subscribed to a pattern
/// matching... simply: until each of `peers` announced `pattern`.
async fn wait_announced(node: &Node, peer: &Node, pattern: &str) {
    let peer_id = peer.peer_id().to_string();
    eventually(
        &format!("{} sees {pattern} from {peer_id}", node.name()),
        || async {
            node.peers().await.unwrap().iter().any(|p| {
                p.peer_id == peer_id
                    && p.connected
                    && (p.subscriptions.iter().any(|s| s == pattern)
                        || p.registrations.iter().any(|r| r == pattern))
            })
        },
    )
    .await;
}

async fn recv(sub: &mut Subscription) -> Message {
    tokio::time::timeout(WAIT, sub.recv())
        .await
        .expect("message in time")
        .expect("subscription open")
}

async fn no_message(sub: &mut Subscription) {
    let got = tokio::time::timeout(Duration::from_millis(300), sub.recv()).await;
    assert!(got.is_err(), "unexpected message: {got:?}");
}

/// A founds "home", B and C join with one two-use invite.
async fn three_node_mesh() -> (TestNode, TestNode, TestNode) {
    let a = start("a").await;
    let b = start("b").await;
    let c = start("c").await;
    let mesh = a.node.create_mesh("home").await.unwrap();
    assert!(mesh.is_founder);
    let invite = a
        .node
        .invite(
            Some("home"),
            InviteOptions {
                uses: 2,
                ..Default::default()
            },
        )
        .await
        .unwrap();
    assert!(invite.uri.starts_with("atmosphere://join?"));
    let joined_b = b.node.join(&invite.uri).await.unwrap();
    assert_eq!(joined_b.id, mesh.id);
    assert_eq!(joined_b.name, "home");
    assert!(!joined_b.is_founder);
    c.node.join(&invite.uri).await.unwrap();
    // Everyone finds everyone: B and C learn of each other through A.
    for (x, others) in [(&a, [&b, &c]), (&b, [&a, &c]), (&c, [&a, &b])] {
        for other in others {
            let id = other.node.peer_id().to_string();
            eventually("full mesh", || async {
                x.node
                    .peers()
                    .await
                    .unwrap()
                    .iter()
                    .any(|p| p.peer_id == id && p.connected)
            })
            .await;
        }
    }
    (a, b, c)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn create_invite_join_and_pattern_subscriptions() {
    let (a, b, c) = three_node_mesh().await;
    let meshes = c.node.list_meshes().await.unwrap();
    assert_eq!(meshes.len(), 1);
    assert_eq!(meshes[0].members, 3, "C knows every member: {meshes:?}");

    let mut b_star = b.node.subscribe("home.*.temp").await.unwrap();
    let mut c_all = c.node.subscribe("home.**").await.unwrap();
    let mut a_exact = a.node.subscribe("office.temp").await.unwrap();
    let mut a_local = a.node.subscribe("home.kitchen.temp").await.unwrap();
    wait_announced(&a.node, &b.node, "home.*.temp").await;
    wait_announced(&a.node, &c.node, "home.**").await;
    wait_announced(&b.node, &a.node, "office.temp").await;

    // `*` and `**` both match; the local subscriber gets the local publish.
    let sent = a.node.publish("home.kitchen.temp", "21.5").await.unwrap();
    assert_eq!(sent, 2);
    for sub in [&mut b_star, &mut c_all, &mut a_local] {
        let msg = recv(sub).await;
        assert_eq!(msg.topic, "home.kitchen.temp");
        assert_eq!(msg.payload, Bytes::from_static(b"21.5"));
        assert_eq!(msg.sender, a.node.peer_id());
        assert!(msg.timestamp_ms > 0);
    }
    // `**` matches zero segments; `*` needs exactly one.
    assert_eq!(a.node.publish("home", "bare").await.unwrap(), 1);
    assert_eq!(recv(&mut c_all).await.payload, Bytes::from_static(b"bare"));
    // Exact match, published by a non-founder member.
    assert_eq!(b.node.publish("office.temp", "19").await.unwrap(), 1);
    let msg = recv(&mut a_exact).await;
    assert_eq!(
        (msg.topic.as_str(), msg.sender),
        ("office.temp", b.node.peer_id())
    );
    // No match: nobody receives.
    assert_eq!(a.node.publish("garden.soil.temp", "9").await.unwrap(), 0);
    no_message(&mut b_star).await;
    no_message(&mut c_all).await;
    no_message(&mut a_exact).await;
    // Per-publisher order is kept.
    for i in 0..100u32 {
        a.node
            .publish("home.hall.temp", i.to_string())
            .await
            .unwrap();
    }
    for i in 0..100u32 {
        assert_eq!(recv(&mut b_star).await.payload, Bytes::from(i.to_string()));
    }
    // Unsubscribing (drop) stops delivery to that subscriber.
    drop(b_star);
    let b_id = b.node.peer_id().to_string();
    eventually("B's subscription withdrawn", || async {
        a.node
            .peers()
            .await
            .unwrap()
            .iter()
            .any(|p| p.peer_id == b_id && p.subscriptions.is_empty())
    })
    .await;
    assert_eq!(a.node.publish("home.den.temp", "x").await.unwrap(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rpc_local_remote_and_typed_errors() {
    let (a, b, c) = three_node_mesh().await;
    b.node
        .register("math.double", |req: Request| async move {
            let n: i64 = std::str::from_utf8(&req.args)
                .ok()
                .and_then(|s| s.trim().parse().ok())
                .ok_or_else(|| HandlerError::Failed("not a number".into()))?;
            Ok(Bytes::from((n * 2).to_string()))
        })
        .await
        .unwrap();
    b.node
        .register("slow.op", |_req: Request| async move {
            tokio::time::sleep(Duration::from_secs(10)).await;
            Ok(Bytes::new())
        })
        .await
        .unwrap();
    b.node
        .register("guarded.op", |req: Request| async move {
            Err::<Bytes, _>(HandlerError::Denied(format!(
                "{} is not welcome",
                req.caller
            )))
        })
        .await
        .unwrap();
    a.node
        .register("local.answer", |_req: Request| async move {
            Ok(Bytes::from_static(b"42"))
        })
        .await
        .unwrap();
    assert!(matches!(
        a.node
            .register(
                "local.answer",
                |_r: Request| async move { Ok(Bytes::new()) }
            )
            .await,
        Err(Error::AlreadyRegistered(_))
    ));
    wait_announced(&a.node, &b.node, "math.double").await;

    // Remote provider.
    let out = a
        .node
        .call("math.double", "21", CallOptions::default())
        .await
        .unwrap();
    assert_eq!(out, Bytes::from_static(b"42"));
    // Local provider first.
    let out = a
        .node
        .call("local.answer", "", CallOptions::default())
        .await
        .unwrap();
    assert_eq!(out, Bytes::from_static(b"42"));
    // Built-ins on a chosen peer.
    let echo = a
        .node
        .call(
            "node.echo",
            "ping",
            CallOptions::default().on(c.node.peer_id()),
        )
        .await
        .unwrap();
    assert_eq!(echo, Bytes::from_static(b"ping"));
    let info = a
        .node
        .call("node.info", "", CallOptions::default().on(b.node.peer_id()))
        .await
        .unwrap();
    let info: serde_json::Value = serde_json::from_slice(&info).unwrap();
    assert_eq!(info["peer_id"], b.node.peer_id().to_string());
    assert_eq!(info["name"], "b");
    // Typed errors.
    assert_eq!(
        a.node.call("nobody.here", "", CallOptions::default()).await,
        Err(RpcError::NoProvider("nobody.here".into()))
    );
    assert!(matches!(
        a.node
            .call(
                "math.double",
                "21",
                CallOptions::default().on(c.node.peer_id())
            )
            .await,
        Err(RpcError::NoProvider(_))
    ));
    assert_eq!(
        a.node
            .call(
                "slow.op",
                "",
                CallOptions::timeout(Duration::from_millis(300))
            )
            .await,
        Err(RpcError::Timeout(Duration::from_millis(300)))
    );
    assert!(matches!(
        a.node.call("math.double", "x", CallOptions::default()).await,
        Err(RpcError::Remote(m)) if m == "not a number"
    ));
    assert!(matches!(
        a.node.call("guarded.op", "", CallOptions::default()).await,
        Err(RpcError::Denied(_))
    ));
    // The node keeps answering after all of that.
    let out = c
        .node
        .call("math.double", "5", CallOptions::default())
        .await
        .unwrap();
    assert_eq!(out, Bytes::from_static(b"10"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acl_from_the_invite_is_enforced_by_the_provider() {
    let a = start("a").await;
    let d = start("limited").await;
    a.node.create_mesh("lab").await.unwrap();
    a.node
        .register("admin.reset", |_r: Request| async move {
            Ok(Bytes::from_static(b"done"))
        })
        .await
        .unwrap();
    let invite = a
        .node
        .invite(
            None,
            InviteOptions {
                permissions: Permissions {
                    publish: vec!["sensors.**".into()],
                    subscribe: vec!["**".into()],
                    call: vec!["node.*".into()],
                },
                ..Default::default()
            },
        )
        .await
        .unwrap();
    d.node.join(&invite.uri).await.unwrap();
    wait_announced(&d.node, &a.node, "admin.reset").await;
    assert!(matches!(
        d.node.call("admin.reset", "", CallOptions::default()).await,
        Err(RpcError::Denied(_))
    ));
    assert!(d
        .node
        .call(
            "node.echo",
            "hi",
            CallOptions::default().on(a.node.peer_id())
        )
        .await
        .is_ok());
    // Publishing outside the grant is refused at the publisher.
    assert!(matches!(
        d.node.publish("admin.alerts", "x").await,
        Err(Error::Denied(_))
    ));
    let mut sub = a.node.subscribe("sensors.**").await.unwrap();
    wait_announced(&d.node, &a.node, "sensors.**").await;
    d.node.publish("sensors.door", "open").await.unwrap();
    assert_eq!(recv(&mut sub).await.payload, Bytes::from_static(b"open"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn non_members_are_disconnected_and_invites_are_limited() {
    let a = start("a").await;
    a.node.create_mesh("home").await.unwrap();
    let a_addr = a.node.listen_addrs().await.unwrap()[0].clone();

    // A stranger with its own mesh dials A: refused and disconnected.
    let stranger = start("stranger").await;
    stranger.node.create_mesh("elsewhere").await.unwrap();
    stranger
        .node
        .dial(a_addr.clone().with_p2p(a.node.peer_id()).unwrap())
        .await
        .unwrap();
    eventually("stranger disconnected", || async {
        let s = stranger.node.status().await.unwrap();
        s.open_connections == 0 && s.connected_peers == 0
    })
    .await;
    assert!(a.node.peers().await.unwrap().is_empty());
    assert_eq!(stranger.node.publish("home.x", "1").await.unwrap(), 0);

    // One use: the second join is refused.
    let once = a.node.invite(None, InviteOptions::default()).await.unwrap();
    let first = start("first").await;
    first.node.join(&once.uri).await.unwrap();
    let second = start("second").await;
    match second.node.join(&once.uri).await {
        Err(Error::Join(reason)) => assert!(reason.contains("no uses left"), "{reason}"),
        other => panic!("reused invite accepted: {other:?}"),
    }
    assert!(second.node.list_meshes().await.unwrap().is_empty());

    // Expired invites are refused.
    let short = a
        .node
        .invite(
            None,
            InviteOptions {
                ttl: Duration::from_secs(1),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(2100)).await;
    let late = start("late").await;
    match late.node.join(&short.uri).await {
        Err(Error::Join(reason)) => assert!(reason.contains("expired"), "{reason}"),
        other => panic!("expired invite accepted: {other:?}"),
    }
    // A forged token for the right mesh is refused too.
    let mut forged = atmosphere::invite::InviteUri::parse(&once.uri).unwrap();
    forged.token = atmosphere::invite::new_token();
    match late.node.join(&forged.to_uri()).await {
        Err(Error::Join(reason)) => assert!(reason.contains("unknown invite"), "{reason}"),
        other => panic!("forged invite accepted: {other:?}"),
    }
    // Only the founder can invite.
    assert!(matches!(
        first.node.invite(None, InviteOptions::default()).await,
        Err(Error::NotFounder(_))
    ));
}

/// A founder `a` of mesh "home", and `b`, a member that joined it, with its
/// configuration and data directory for restarting it.
async fn founder_and_restartable_joiner() -> (TestNode, Node, Config, tempfile::TempDir) {
    let a = start("a").await;
    a.node.create_mesh("home").await.unwrap();
    let invite = a.node.invite(None, InviteOptions::default()).await.unwrap();
    let b_dir = tempfile::tempdir().unwrap();
    let mut config = Config::ephemeral(b_dir.path());
    config.name = Some("b".into());
    config.reconnect_min_secs = 1;
    let b = NodeBuilder::new(config.clone()).build().await.unwrap();
    b.join(&invite.uri).await.unwrap();
    (a, b, config, b_dir)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restarted_node_rejoins_without_a_new_invite() {
    let (a, b, config, _b_dir) = founder_and_restartable_joiner().await;
    let b_id = b.peer_id();
    b.shutdown().await;
    drop(b);
    let a_sees_b = |connected: bool| {
        let a = a.node.clone();
        async move {
            a.peers()
                .await
                .unwrap()
                .iter()
                .any(|p| p.peer_id == b_id.to_string() && p.connected == connected)
        }
    };
    eventually("A notices B left", || a_sees_b(false)).await;

    let b = NodeBuilder::new(config).build().await.unwrap();
    assert_eq!(b.peer_id(), b_id, "identity persisted");
    assert_eq!(b.list_meshes().await.unwrap().len(), 1, "mesh persisted");
    eventually("B reconnects", || a_sees_b(true)).await;
    let mut sub = b.subscribe("home.**").await.unwrap();
    wait_announced(&a.node, &b, "home.**").await;
    a.node.publish("home.door", "again").await.unwrap();
    assert_eq!(recv(&mut sub).await.payload, Bytes::from_static(b"again"));
    b.shutdown().await;
}

/// The legacy v1 invite (`endpoint=` with one multiaddr) still joins, and
/// the join report names the endpoint, its group and the path; a v2 invite
/// on loopback reports the local group and a LAN path.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn v1_and_v2_invites_join_and_the_report_names_the_endpoint() {
    let a = start("a").await;
    a.node.create_mesh("home").await.unwrap();

    let v2 = a.node.invite(None, InviteOptions::default()).await.unwrap();
    let b = start("b").await;
    let report = b.node.join_with_report(&v2.uri).await.unwrap();
    assert_eq!(report.mesh.name, "home");
    assert_eq!(
        report.endpoint_group,
        Some(atmosphere::invite::EndpointGroup::Local),
        "{report:?}\n{}",
        v2.uri
    );
    assert_eq!(report.path.as_deref(), Some("lan"), "{report:?}");
    assert_eq!(report.tried, vec![atmosphere::invite::EndpointGroup::Local]);
    assert!(report.endpoint.is_some());

    let invite = a.node.invite(None, InviteOptions::default()).await.unwrap();
    let parsed = atmosphere::invite::InviteUri::parse(&invite.uri).unwrap();
    let endpoint = parsed.endpoints.local[0].to_string();
    let v1 = format!(
        "atmosphere://join?token={}&mesh={}&endpoint={}",
        parsed.token,
        parsed.mesh,
        url_escape(&endpoint)
    );
    let c = start("c").await;
    let report = c.node.join_with_report(&v1).await.unwrap();
    assert_eq!(report.mesh.id, invite.mesh_id);
    assert_eq!(report.endpoint.as_deref(), Some(endpoint.as_str()));
    assert_eq!(
        report.endpoint_group,
        Some(atmosphere::invite::EndpointGroup::Local)
    );
    // Joining again answers at once from what is saved.
    let again = c.node.join_with_report(&v1).await.unwrap();
    assert_eq!(again.mesh.id, invite.mesh_id);
    assert_eq!(again.endpoint, None);
}

/// Percent-encodes the characters a multiaddr has that a query cannot carry.
fn url_escape(s: &str) -> String {
    s.replace('/', "%2F")
}

/// A mesh with `auto_reconnect` off is not dialled on start: the restarted
/// node stays apart (its mesh says `paused`) until reconnection is turned on
/// again, and then it reconnects from its saved endpoints.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_paused_mesh_is_not_redialled_until_auto_reconnect_is_on() {
    let (_a, b, config, _b_dir) = founder_and_restartable_joiner().await;
    let mesh = b.set_auto_reconnect("home", false).await.unwrap();
    assert!(!mesh.auto_reconnect);
    assert!(matches!(
        b.set_auto_reconnect("nope", true).await,
        Err(Error::UnknownMesh(_))
    ));
    b.shutdown().await;
    drop(b);

    let b = NodeBuilder::new(config).build().await.unwrap();
    // Several reconnection periods go by: nothing is dialled.
    tokio::time::sleep(Duration::from_secs(4)).await;
    let mesh = &b.list_meshes().await.unwrap()[0];
    assert_eq!(
        (mesh.state.as_str(), mesh.connected),
        ("paused", 0),
        "{mesh:?}"
    );
    assert_eq!(b.status().await.unwrap().open_connections, 0);

    let mesh = b.set_auto_reconnect("home", true).await.unwrap();
    assert!(mesh.auto_reconnect);
    eventually("B reconnects once reconnection is on", || async {
        b.list_meshes().await.unwrap()[0].state == "connected"
    })
    .await;
    b.shutdown().await;
}
