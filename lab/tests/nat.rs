//! Tests of the lab's simulated internet with NAT routers. They need root,
//! `ip`, `nft` and `/dev/net/tun`; elsewhere they skip (and fail in CI).

use std::net::{Ipv4Addr, SocketAddrV4};
use std::time::Duration;

use atmosphere_lab::{
    can_initiate, observed_tcp_addr, observed_udp_addr, observed_udp_addrs, require_lab,
    udp_hole_punch, udp_probe, Device, HolePunch, Initiation, Internet, Lab, LabError, NatKind,
    NatRouter, ProbeConfig, Reflector, UdpMapping, ISP_ADDR, ISP_SECOND_ADDR,
};

/// How long a negative reachability check waits without delay lines.
const WAIT: Duration = Duration::from_millis(400);

/// A lab with an internet, a public `relay`, and one host behind each of
/// the routers of the given kinds (`home-a` with `alice`, `home-b` with
/// `bob`, …). Keep the lab alive for as long as the hosts are used.
async fn topology(kinds: &[NatKind]) -> (Lab, Internet, Device, Vec<(NatRouter, Device)>) {
    let lab = Lab::new().unwrap();
    let internet = lab.internet().await.unwrap();
    let relay = internet.add_public_host("relay").await.unwrap();
    let mut homes = Vec::new();
    for (i, kind) in kinds.iter().enumerate() {
        let router = internet
            .add_router(&format!("home-{}", (b'a' + i as u8) as char), *kind)
            .await
            .unwrap();
        let name = ["alice", "bob", "carol", "dave"][i];
        let host = router.add_host(name).await.unwrap();
        homes.push((router, host));
    }
    (lab, internet, relay, homes)
}

/// A reflector on the relay, at its public address.
async fn relay_reflector(relay: &Device) -> Reflector {
    Reflector::start(relay.host(), relay.addr()).await.unwrap()
}

/// A lab with an internet and one endpoint-independent router `home`,
/// without hosts.
async fn home_router_lab() -> (Lab, Internet, NatRouter) {
    let lab = Lab::new().unwrap();
    let internet = lab.internet().await.unwrap();
    let router = internet
        .add_router("home", NatKind::EndpointIndependent)
        .await
        .unwrap();
    (lab, internet, router)
}

/// Whether `from` can initiate to `to` at `addr` (see [`can_initiate`]),
/// waiting [`WAIT`].
async fn initiate(from: &Device, to: &Device, addr: Ipv4Addr) -> Initiation {
    can_initiate(from.host(), to.host(), addr, WAIT)
        .await
        .unwrap()
}

/// A hole punch between `a` and `b` through `reflector` (see
/// [`udp_hole_punch`]).
async fn hole_punch(a: &Device, b: &Device, reflector: &Reflector, timeout: Duration) -> HolePunch {
    udp_hole_punch(a.host(), b.host(), reflector.addr(), timeout)
        .await
        .unwrap()
}

/// Every reflector saw `mapping` from `router`'s public address.
fn assert_seen_from_router(mapping: &UdpMapping, router: &NatRouter) {
    assert!(mapping
        .observed
        .iter()
        .all(|addr| *addr.ip() == router.wan_addr()));
}

#[tokio::test]
async fn hosts_behind_a_nat_reach_the_internet_but_not_the_reverse() {
    require_lab!();
    let (_lab, internet, relay, homes) = topology(&[NatKind::EndpointIndependent]).await;
    let (router, alice) = &homes[0];
    assert!(alice.addr().is_private(), "{alice:?}");
    assert_eq!(alice.public_addr(), router.wan_addr());
    assert!(!router.wan_addr().is_private());
    assert_eq!(relay.public_addr(), relay.addr());

    // (1) UDP and TCP out to the relay.
    let out = initiate(alice, &relay, relay.addr()).await;
    assert!(out.open(), "alice → relay: {out:?}");
    // The relay sees the router's address, over UDP and TCP.
    let reflector = relay_reflector(&relay).await;
    let udp = observed_udp_addr(alice.host(), reflector.addr())
        .await
        .unwrap();
    let tcp = observed_tcp_addr(alice.host(), reflector.addr())
        .await
        .unwrap();
    assert_eq!(*udp.ip(), router.wan_addr());
    assert_eq!(*tcp.ip(), router.wan_addr());

    // (2) The relay cannot initiate: not to the router's public address on a
    // port alice listens on, not to alice's private address (no route on
    // the internet), over neither protocol.
    let via_wan = initiate(&relay, alice, router.wan_addr()).await;
    assert!(via_wan.blocked(), "relay → alice via the NAT: {via_wan:?}");
    let private = initiate(&relay, alice, alice.addr()).await;
    assert!(
        private.blocked(),
        "relay → alice's private address: {private:?}"
    );

    // Public hosts reach each other both ways.
    let other = internet.add_public_host("other").await.unwrap();
    for (from, to) in [(&relay, &other), (&other, &relay)] {
        let reach = initiate(from, to, to.addr()).await;
        assert!(reach.open(), "{from:?} → {to:?}: {reach:?}");
    }
}

#[tokio::test]
async fn endpoint_independent_nat_keeps_one_port_for_all_destinations() {
    require_lab!();
    let (_lab, internet, relay, homes) = topology(&[NatKind::EndpointIndependent]).await;
    let (router, alice) = &homes[0];
    let check = router.verify_host(alice).await.unwrap();
    assert!(check.mapping.is_endpoint_independent(), "{check:?}");

    // One socket, four destinations: two ISP addresses and two relay ports.
    let on_relay = [relay_reflector(&relay).await, relay_reflector(&relay).await];
    let [isp1, isp2] = internet.reflectors();
    assert_eq!(*isp1.ip(), ISP_ADDR);
    assert_eq!(*isp2.ip(), ISP_SECOND_ADDR);
    let destinations = [isp1, isp2, on_relay[0].addr(), on_relay[1].addr()];
    let mapping = observed_udp_addrs(alice.host(), 0, &destinations)
        .await
        .unwrap();
    eprintln!("endpoint-independent: {mapping:?}");
    assert!(mapping.is_endpoint_independent(), "{mapping:?}");
    assert!(mapping.preserves_port(), "{mapping:?}");
    assert_seen_from_router(&mapping, router);

    // A chosen local port is kept too.
    let fixed = observed_udp_addrs(alice.host(), 40_123, &destinations)
        .await
        .unwrap();
    assert!(fixed.is_endpoint_independent(), "{fixed:?}");
    assert_eq!(fixed.observed[0].port(), 40_123);

    // Filtering: once alice's socket sent to the relay's first reflector,
    // that exact remote gets in (it answers), but another port of the same
    // relay address does not: the NAT filters by address and port.
    let probe_port = 40_124;
    observed_udp_addrs(alice.host(), probe_port, &[on_relay[0].addr()])
        .await
        .unwrap();
    let stranger = SocketAddrV4::new(router.wan_addr(), probe_port);
    let reached = unsolicited_udp(&relay, alice, probe_port, stranger).await;
    assert!(!reached, "an uncontacted remote port got through the NAT");
}

/// Sends a datagram from a fresh socket on `from` to `target`, while `to`
/// listens on `port`; whether it arrived within [`WAIT`].
async fn unsolicited_udp(from: &Device, to: &Device, port: u16, target: SocketAddrV4) -> bool {
    let listener = to.host().spawn(async move {
        let socket = tokio::net::UdpSocket::bind(("0.0.0.0", port))
            .await
            .unwrap();
        let mut buf = [0u8; 64];
        tokio::time::timeout(WAIT, socket.recv_from(&mut buf))
            .await
            .is_ok()
    });
    tokio::time::sleep(Duration::from_millis(50)).await;
    from.host()
        .spawn(async move {
            let socket = tokio::net::UdpSocket::bind("0.0.0.0:0").await.unwrap();
            for _ in 0..3 {
                socket.send_to(b"hello", target).await.unwrap();
            }
        })
        .await
        .unwrap();
    listener.await.unwrap()
}

#[tokio::test]
async fn address_dependent_nat_maps_each_destination_to_its_own_port() {
    require_lab!();
    let (_lab, internet, relay, homes) = topology(&[NatKind::AddressDependent]).await;
    let (router, bob) = &homes[0];
    let check = router.verify_host(bob).await.unwrap();
    assert!(!check.mapping.is_endpoint_independent(), "{check:?}");
    assert!(
        check.inbound.blocked() && check.outbound.open(),
        "{check:?}"
    );

    let on_relay = relay_reflector(&relay).await;
    let [isp1, isp2] = internet.reflectors();
    let mapping = observed_udp_addrs(bob.host(), 0, &[isp1, isp2, on_relay.addr()])
        .await
        .unwrap();
    eprintln!("address-dependent: {mapping:?}");
    let mut ports: Vec<u16> = mapping.observed.iter().map(|a| a.port()).collect();
    ports.sort_unstable();
    ports.dedup();
    assert_eq!(ports.len(), 3, "ports repeat: {mapping:?}");
    assert_seen_from_router(&mapping, router);
    // Outbound still works; inbound is still closed.
    let out = initiate(bob, &relay, relay.addr()).await;
    assert!(out.open(), "{out:?}");
    let inbound = initiate(&relay, bob, router.wan_addr()).await;
    assert!(inbound.blocked(), "{inbound:?}");
}

#[tokio::test]
async fn hole_punch_between_endpoint_independent_nats_succeeds() {
    require_lab!();
    let (_lab, _internet, relay, homes) =
        topology(&[NatKind::EndpointIndependent, NatKind::EndpointIndependent]).await;
    let (router_a, alice) = &homes[0];
    let (router_b, bob) = &homes[1];
    let reflector = relay_reflector(&relay).await;
    // Without punching, neither can reach the other.
    let cold = initiate(alice, bob, router_b.wan_addr()).await;
    assert!(cold.blocked(), "{cold:?}");
    // Repeated, since the outcome could depend on who sends first.
    for round in 0..5 {
        let punch = hole_punch(alice, bob, &reflector, Duration::from_secs(3)).await;
        eprintln!("round {round}: {punch:?}");
        assert!(punch.succeeded(), "round {round}: {punch:?}");
        assert_eq!(*punch.a_mapped.ip(), router_a.wan_addr());
        assert_eq!(*punch.b_mapped.ip(), router_b.wan_addr());
        // Each received from the other's mapping as the relay saw it.
        assert_eq!(punch.a_received_from, Some(punch.b_mapped));
        assert_eq!(punch.b_received_from, Some(punch.a_mapped));
    }
}

#[tokio::test]
async fn hole_punch_with_an_address_dependent_nat_fails() {
    require_lab!();
    let (_lab, _internet, relay, homes) = topology(&[
        NatKind::EndpointIndependent,
        NatKind::AddressDependent,
        NatKind::AddressDependent,
    ])
    .await;
    let reflector = relay_reflector(&relay).await;
    let alice = &homes[0].1;
    let bob = &homes[1].1;
    let carol = &homes[2].1;
    for (a, b) in [(alice, bob), (bob, alice), (bob, carol)] {
        let punch = hole_punch(a, b, &reflector, Duration::from_secs(1)).await;
        eprintln!("{} ↔ {}: {punch:?}", a.host().name(), b.host().name());
        assert!(!punch.succeeded(), "{punch:?}");
    }
}

#[tokio::test]
async fn router_uplinks_with_50ms_latency() {
    require_lab!();
    let one_way = Duration::from_millis(50);
    let (_lab, internet, relay, homes) =
        topology(&[NatKind::EndpointIndependent, NatKind::EndpointIndependent]).await;
    let (router_a, alice) = &homes[0];
    let (router_b, bob) = &homes[1];
    for router in [router_a, router_b] {
        let probe = router.uplink().set_delay(one_way).await.unwrap().unwrap();
        eprintln!("{} uplink: {probe:?}", router.host().name());
        assert_eq!(router.uplink().delay(), one_way);
    }
    assert_eq!(relay.uplink().delay(), Duration::ZERO);

    // alice → relay crosses one delayed uplink each way: ≥ 100 ms.
    let config = ProbeConfig {
        probes: 20,
        interval: Duration::from_millis(5),
        timeout: Duration::from_secs(2),
    };
    let probe = udp_probe(alice.host(), relay.host(), relay.addr(), &config)
        .await
        .unwrap();
    eprintln!("alice → relay: {probe:?}");
    let median = probe.median_rtt.unwrap();
    assert_eq!(probe.received, probe.sent);
    assert!(
        median >= Duration::from_millis(98) && median < Duration::from_millis(250),
        "{probe:?}"
    );
    // Also towards the ISP's own address.
    let probe = udp_probe(alice.host(), internet.isp(), ISP_ADDR, &config)
        .await
        .unwrap();
    assert!(
        probe.median_rtt.unwrap() >= Duration::from_millis(98),
        "{probe:?}"
    );

    // The NAT checks still hold through the delay lines.
    router_a.verify_host(alice).await.unwrap();

    // alice ↔ bob crosses two delayed uplinks: a punch needs ≥ 200 ms.
    let reflector = relay_reflector(&relay).await;
    let punch = hole_punch(alice, bob, &reflector, Duration::from_secs(3)).await;
    eprintln!("punch with 50 ms uplinks: {punch:?}");
    assert!(punch.succeeded(), "{punch:?}");
    assert!(punch.elapsed >= Duration::from_millis(198), "{punch:?}");

    // Changing and removing the delay.
    let probe = router_a
        .uplink()
        .set_delay(Duration::from_millis(10))
        .await
        .unwrap()
        .unwrap();
    assert!(
        probe.median_rtt.unwrap() < Duration::from_millis(60),
        "{probe:?}"
    );
    router_a.uplink().set_delay(Duration::ZERO).await.unwrap();
    assert_eq!(router_a.uplink().queue_drops(), 0);

    // A LAN link cannot be delayed.
    let err = alice.uplink().set_delay(one_way).await.unwrap_err();
    assert!(matches!(err, LabError::InvalidArgument(_)), "{err}");
}

#[tokio::test]
async fn uplinks_go_down_and_come_back() {
    require_lab!();
    let (_lab, internet, relay, homes) = topology(&[NatKind::EndpointIndependent]).await;
    let (router, alice) = &homes[0];
    let reflector = relay_reflector(&relay).await;
    let [isp_reflector, _] = internet.reflectors();

    let reaches = |from: Device, to: Device| async move {
        can_initiate(
            from.host(),
            to.host(),
            to.public_addr(),
            Duration::from_millis(300),
        )
        .await
        .unwrap()
    };

    // The router's WAN.
    router.uplink().down().await.unwrap();
    assert!(!router.uplink().is_up());
    assert!(reaches(alice.clone(), relay.clone()).await.blocked());
    router.uplink().up().await.unwrap();
    assert!(reaches(alice.clone(), relay.clone()).await.open());
    router.verify_host(alice).await.unwrap();

    // alice's LAN link.
    alice.uplink().down().await.unwrap();
    assert!(reaches(alice.clone(), relay.clone()).await.blocked());
    alice.uplink().up().await.unwrap();
    assert!(reaches(alice.clone(), relay.clone()).await.open());

    // The relay's link.
    relay.uplink().down().await.unwrap();
    assert!(reaches(alice.clone(), relay.clone()).await.blocked());
    assert!(observed_udp_addr(relay.host(), isp_reflector)
        .await
        .is_err());
    relay.uplink().up().await.unwrap();
    assert!(reaches(alice.clone(), relay.clone()).await.open());
    assert_eq!(
        *observed_udp_addr(alice.host(), reflector.addr())
            .await
            .unwrap()
            .ip(),
        router.wan_addr()
    );

    // A delayed uplink comes back with its delay.
    router
        .uplink()
        .set_delay(Duration::from_millis(20))
        .await
        .unwrap();
    router.uplink().down().await.unwrap();
    router.uplink().up().await.unwrap();
    let probe = router
        .uplink()
        .set_delay(Duration::from_millis(20))
        .await
        .unwrap()
        .unwrap();
    assert!(
        probe.median_rtt.unwrap() >= Duration::from_millis(38),
        "{probe:?}"
    );
}

#[tokio::test]
async fn hosts_behind_one_router_share_its_lan_and_mapping_address() {
    require_lab!();
    let (_lab, internet, router) = home_router_lab().await;
    let a = router.add_host("a").await.unwrap();
    let b = router.add_host("b").await.unwrap();
    assert_eq!(router.lan_subnet(), "192.168.1.0/24");
    assert_eq!(a.addr().octets()[..3], b.addr().octets()[..3]);
    // Directly reachable on the LAN, both ways.
    let reach = initiate(&a, &b, b.addr()).await;
    assert!(reach.open(), "{reach:?}");
    let [isp1, _] = internet.reflectors();
    let seen_a = observed_udp_addr(a.host(), isp1).await.unwrap();
    let seen_b = observed_udp_addr(b.host(), isp1).await.unwrap();
    assert_eq!(seen_a.ip(), seen_b.ip());
    // A second router gets the next subnet and public address.
    let other = internet
        .add_router("home2", NatKind::AddressDependent)
        .await
        .unwrap();
    assert_eq!(other.lan_subnet(), "192.168.2.0/24");
    assert_ne!(other.wan_addr(), router.wan_addr());
}

#[tokio::test]
async fn dropping_the_lab_removes_the_internet() {
    require_lab!();
    let (lab, internet, router) = home_router_lab().await;
    router
        .uplink()
        .set_delay(Duration::from_millis(5))
        .await
        .unwrap();
    let _alice = router.add_host("alice").await.unwrap();
    let names: Vec<String> = lab.hosts().iter().map(|h| h.netns().to_string()).collect();
    assert_eq!(names.len(), 3, "{names:?}"); // ISP, router, alice
    assert!(names.iter().any(|n| n.contains("_isp")), "{names:?}");
    drop(lab);
    let listed = std::process::Command::new("ip")
        .args(["netns", "list"])
        .output()
        .unwrap();
    let listed = String::from_utf8_lossy(&listed.stdout);
    for name in &names {
        assert!(
            !listed.contains(name.as_str()),
            "{name} left behind: {listed}"
        );
    }
    // Handles outlive the lab but cannot add hosts.
    let err = internet.add_public_host("late").await.unwrap_err();
    assert!(err.to_string().contains("dropped"), "{err}");
    let err = router.add_host("late").await.unwrap_err();
    assert!(err.to_string().contains("dropped"), "{err}");
}
