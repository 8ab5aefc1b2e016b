//! The relay role on loopback: members reserve a slot on a mesh member that
//! runs a relay server and advertise the relayed address (also in invites);
//! a node that is not a member is refused by a members-only relay.

mod common;

use std::time::Duration;

use atmosphere::{InviteOptions, Node};
use common::{eventually, start_with};

async fn relay_status(node: &Node) -> atmosphere::RelayStatus {
    node.status().await.expect("status").relay
}

async fn circuit_listeners(node: &Node) -> usize {
    node.listen_addrs()
        .await
        .expect("listen addrs")
        .iter()
        .filter(|a| a.to_string().contains("/p2p-circuit"))
        .count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn members_reserve_on_a_members_only_relay_and_others_are_refused() {
    let relay = start_with("relay", |c| c.relay_server = true).await;
    relay.node.create_mesh("home").await.expect("mesh");
    let relay_addr = relay.node.listen_addrs().await.expect("addrs")[0]
        .clone()
        .with_p2p(relay.node.peer_id())
        .expect("p2p");

    // A member: joins, finds the relay among the members, reserves on it.
    let member = start_with("member", |_| {}).await;
    let invite = relay
        .node
        .invite(None, InviteOptions::default())
        .await
        .expect("invite");
    member.node.join(&invite.uri).await.expect("join");
    let relay_id = relay.node.peer_id().to_string();
    eprintln!("relay {relay_id} member {}", member.node.peer_id());
    eventually("the member holds a reservation on the relay", || async {
        relay_status(&member.node).await.reserved_on == vec![relay_id.clone()]
            && circuit_listeners(&member.node).await == 1
    })
    .await;
    eventually("the relay counts the reservation", || async {
        relay_status(&relay.node).await.reservations == 1
    })
    .await;
    let status = relay_status(&relay.node).await;
    assert!(status.server && !status.open);

    // The member's invites now carry its relayed address in the relay group.
    // (Only founders invite; the relay is the founder here, and it does not
    // reserve elsewhere, so its own invite has no relay group.)
    let own = relay_status(&member.node).await;
    assert!(!own.server);

    // A node in no mesh, told to use the relay: refused.
    let outsider = start_with("outsider", |c| c.relays = vec![relay_addr.clone()]).await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert!(relay_status(&outsider.node).await.reserved_on.is_empty());
    assert_eq!(circuit_listeners(&outsider.node).await, 0);
    assert_eq!(
        relay_status(&relay.node).await.reservations,
        1,
        "only the member holds a reservation"
    );
}
