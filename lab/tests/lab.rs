//! Tests of the network lab itself. They need root, `ip`, `nft`, `tc` and
//! `/dev/net/tun`; elsewhere they skip (and fail in CI).

use std::net::{Ipv4Addr, SocketAddr};
use std::os::unix::fs::MetadataExt;
use std::time::Duration;

use atmosphere_lab::{
    require_lab, tcp_throughput_kbit, udp_probe, udp_rtt_and_loss, DelayedLink, Host, Lab, Link,
    Probe, ProbeConfig,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

fn ns_inode_of_current_thread() -> u64 {
    std::fs::metadata("/proc/thread-self/ns/net")
        .map(|m| m.ino())
        .unwrap_or(0)
}

/// A new lab with hosts `a` and `b` joined by a direct link. Keep the lab
/// alive (bind it to a name) for as long as the hosts are used.
async fn linked_pair() -> (Lab, Host, Host, Link) {
    let lab = Lab::new().unwrap();
    let a = lab.add_host("a").unwrap();
    let b = lab.add_host("b").unwrap();
    let link = lab.link(&a, &b).await.unwrap();
    (lab, a, b, link)
}

/// A new lab with hosts `a` and `b` joined by a link with `one_way` delay.
/// Keep the lab alive (bind it to a name) for as long as the hosts are used.
async fn delayed_pair(one_way: Duration) -> (Lab, Host, Host, DelayedLink) {
    let lab = Lab::new().unwrap();
    let a = lab.add_host("a").unwrap();
    let b = lab.add_host("b").unwrap();
    let link = lab.delayed_link(&a, &b, one_way).await.unwrap();
    (lab, a, b, link)
}

/// The value of sysctl `key` (a path below `/proc/sys`) in `host`.
fn sysctl(host: &Host, key: &str) -> String {
    host.exec(&["cat", &format!("/proc/sys/{key}")])
        .unwrap()
        .trim()
        .to_string()
}

/// `probes` UDP probes from `from` to `to` at `addr` over a link that is
/// down: a short timeout, as no answer is expected.
async fn probe_down_link(from: &Host, to: &Host, addr: Ipv4Addr, probes: usize) -> Probe {
    let config = ProbeConfig {
        timeout: Duration::from_millis(300),
        ..ProbeConfig::new(probes)
    };
    udp_probe(from, to, addr, &config).await.unwrap()
}

#[tokio::test]
async fn tcp_between_linked_hosts_runs_inside_namespaces() {
    require_lab!();
    let (_lab, a, b, link) = linked_pair().await;
    let b_addr = link.b_addr();

    // b's address exists in b's namespace only.
    assert!(b
        .exec(&["ip", "-4", "addr"])
        .unwrap()
        .contains(&b_addr.to_string()));
    let here = std::net::UdpSocket::bind((b_addr, 0));
    assert_eq!(
        here.unwrap_err().kind(),
        std::io::ErrorKind::AddrNotAvailable,
        "b's address must not be local in the root namespace"
    );

    // Host sysctls: no forwarding, IPv6 off on lab interfaces.
    assert_eq!(sysctl(&b, "net/ipv4/ip_forward"), "0");
    let key = format!("net/ipv6/conf/{}/disable_ipv6", link.b_ifname());
    assert_eq!(sysctl(&b, &key), "1");
    assert_eq!(sysctl(&b, "net/ipv6/conf/lo/disable_ipv6"), "0");

    let listener = b
        .spawn(async move { TcpListener::bind((b_addr, 0)).await })
        .await
        .unwrap()
        .expect("binding b's address inside b's namespace");
    let port = listener.local_addr().unwrap().port();
    let server = b.spawn(async move {
        let (mut stream, peer) = listener.accept().await?;
        let mut buf = [0u8; 5];
        stream.read_exact(&mut buf).await?;
        stream.write_all(b"world").await?;
        Ok::<_, std::io::Error>((peer, buf))
    });
    let client = a.spawn(async move {
        let mut stream = TcpStream::connect(SocketAddr::from((b_addr, port))).await?;
        stream.write_all(b"hello").await?;
        let mut buf = [0u8; 5];
        stream.read_exact(&mut buf).await?;
        Ok::<_, std::io::Error>(buf)
    });
    let reply = client.await.unwrap().unwrap();
    let (peer, request) = server.await.unwrap().unwrap();
    assert_eq!(&reply, b"world");
    assert_eq!(&request, b"hello");
    assert_eq!(
        peer.ip(),
        link.a_addr(),
        "the connection came over the link"
    );
}

#[tokio::test]
async fn runtime_threads_live_in_namespace() {
    require_lab!();
    let lab = Lab::new().unwrap();
    let a = lab.add_host("a").unwrap();
    let expected = std::fs::metadata(a.netns_path()).unwrap().ino();
    assert_ne!(ns_inode_of_current_thread(), expected);

    let mut tasks = Vec::new();
    for _ in 0..16 {
        tasks.push(a.spawn(async {
            // Hold the worker a moment so tasks spread over both workers.
            std::thread::sleep(Duration::from_millis(5));
            (std::thread::current().id(), ns_inode_of_current_thread())
        }));
    }
    let mut threads = std::collections::HashSet::new();
    for task in tasks {
        let (thread, inode) = task.await.unwrap();
        assert_eq!(inode, expected, "worker thread outside the host namespace");
        threads.insert(thread);
    }
    // Threads inherit the namespace of the thread that creates them: a plain
    // OS thread started from a task on the host's runtime is inside too.
    let child = a
        .spawn(async {
            std::thread::spawn(ns_inode_of_current_thread)
                .join()
                .unwrap()
        })
        .await
        .unwrap();
    assert_eq!(
        child, expected,
        "thread created in the namespace is outside"
    );
    // Blocking-pool threads are created on demand by whoever spawns: here a
    // thread of the test's runtime, in the root namespace.
    let blocking = a.spawn_blocking(ns_inode_of_current_thread).await.unwrap();
    assert_eq!(
        blocking, expected,
        "blocking thread outside the host namespace"
    );
    assert_ne!(ns_inode_of_current_thread(), expected, "test thread moved");
    eprintln!("{} worker threads seen", threads.len());
}

#[tokio::test]
async fn link_down_and_up() {
    require_lab!();
    let (_lab, a, b, link) = linked_pair().await;

    let probe = udp_rtt_and_loss(&a, &b, link.b_addr(), 50).await.unwrap();
    assert_eq!(probe.received, 50, "{probe:?}");

    link.down().await.unwrap();
    assert!(!link.is_up());
    let probe = probe_down_link(&a, &b, link.b_addr(), 50).await;
    assert_eq!(probe.received, 0, "{probe:?}");
    assert_eq!(probe.loss(), 1.0);

    link.up().await.unwrap();
    assert!(link.is_up());
    let probe = udp_rtt_and_loss(&a, &b, link.b_addr(), 50).await.unwrap();
    assert_eq!(probe.received, 50, "{probe:?}");
    // Addresses survived the down/up.
    assert!(a
        .exec(&["ip", "-4", "addr"])
        .unwrap()
        .contains(&link.a_addr().to_string()));
}

#[tokio::test]
async fn link_loss() {
    require_lab!();
    let (_lab, a, b, link) = linked_pair().await;

    let verified = link.set_loss(5).await.unwrap().unwrap();
    eprintln!("set_loss(5) verification: {verified:?}");
    let probe = udp_rtt_and_loss(&a, &b, link.b_addr(), 400).await.unwrap();
    // 5 % each way: ≈9.75 % round trip.
    assert!(
        (0.01..=0.25).contains(&probe.loss()),
        "5 % loss per direction measured {:.1} % round trip",
        probe.loss() * 100.0
    );
    // b's side has the rule on its veth, in the input hook.
    let ruleset = b.exec(&["nft", "list", "ruleset"]).unwrap();
    assert!(
        ruleset.contains("hook input") && ruleset.contains(link.b_ifname()),
        "{ruleset}"
    );

    link.set_loss(0).await.unwrap();
    let probe = udp_rtt_and_loss(&a, &b, link.b_addr(), 400).await.unwrap();
    assert!(probe.loss() <= 0.02, "{probe:?}");
    assert!(!b
        .exec(&["nft", "list", "ruleset"])
        .unwrap()
        .contains("numgen"));

    assert!(link.set_loss(101).await.is_err());
}

#[tokio::test]
async fn delayed_link_latency_and_loss() {
    require_lab!();
    let (_lab, a, b, link) = delayed_pair(Duration::from_millis(50)).await;

    let probe = udp_rtt_and_loss(&a, &b, link.b_addr(), 20).await.unwrap();
    let median = probe.median_rtt.unwrap();
    assert!(
        (Duration::from_millis(100)..=Duration::from_millis(200)).contains(&median),
        "median RTT {median:?} with 50 ms one way"
    );
    // Both directions: b reaches a's address too.
    let back = udp_rtt_and_loss(&b, &a, link.a_addr(), 10).await.unwrap();
    assert_eq!(back.received, 10, "{back:?}");
    assert!(back.median_rtt.unwrap() >= Duration::from_millis(100));

    let router = link.router();
    assert_eq!(sysctl(router, "net/ipv4/ip_forward"), "1");
    assert_eq!(sysctl(router, "net/ipv4/conf/all/rp_filter"), "0");
    assert_eq!(sysctl(router, "net/ipv4/conf/tun0/rp_filter"), "0");
    let rules = router.exec(&["ip", "rule"]).unwrap();
    assert!(rules.contains("lookup 100"), "{rules}");

    link.set_delay(Duration::ZERO).await.unwrap();
    let probe = udp_rtt_and_loss(&a, &b, link.b_addr(), 20).await.unwrap();
    let median = probe.median_rtt.unwrap();
    assert!(
        median < Duration::from_millis(20),
        "median RTT {median:?} with no delay"
    );

    link.set_delay(Duration::from_millis(20)).await.unwrap();
    let verified = link.set_loss(10).await.unwrap().unwrap();
    eprintln!("delayed set_loss(10) verification: {verified:?}");
    let probe = link.measure(400).await.unwrap();
    // 10 % each way: 19 % round trip.
    assert!(
        (0.07..=0.35).contains(&probe.loss()),
        "10 % loss per direction measured {:.1} % round trip",
        probe.loss() * 100.0
    );
    link.set_loss(0).await.unwrap();
    let probe = link.measure(100).await.unwrap();
    assert!(probe.loss() <= 0.02, "{probe:?}");
    assert!(link.forwarded_packets() > 0);
    assert_eq!(link.queue_drops(), 0);
}

#[tokio::test]
async fn delayed_link_down_and_up() {
    require_lab!();
    let (_lab, a, b, link) = delayed_pair(Duration::from_millis(10)).await;
    link.down().await.unwrap();
    let probe = probe_down_link(&b, &a, link.a_addr(), 20).await;
    assert_eq!(probe.received, 0, "{probe:?}");
    link.up().await.unwrap();
    let probe = udp_rtt_and_loss(&b, &a, link.a_addr(), 20).await.unwrap();
    assert_eq!(probe.received, 20, "{probe:?}");
    assert!(probe.median_rtt.unwrap() >= Duration::from_millis(20));
}

#[tokio::test]
async fn link_rate_limit() {
    require_lab!();
    let (_lab, a, b, link) = linked_pair().await;

    let verified = link.set_rate(1000).await.unwrap().unwrap();
    eprintln!("set_rate(1000) verification (a→b, b→a kbit/s): {verified:?}");
    let limited = tcp_throughput_kbit(&a, &b, link.b_addr(), Duration::from_millis(800))
        .await
        .unwrap();
    assert!(
        (300.0..=1500.0).contains(&limited),
        "1000 kbit/s limit measured {limited:.0} kbit/s"
    );

    link.clear_rate().await.unwrap();
    let free = tcp_throughput_kbit(&a, &b, link.b_addr(), Duration::from_millis(300))
        .await
        .unwrap();
    assert!(free > 10_000.0, "unlimited link measured {free:.0} kbit/s");
}

#[test]
fn parallel_labs_do_not_clash() {
    require_lab!();
    let run = || {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        runtime.block_on(async {
            let (lab, a, b, link) = linked_pair().await;
            let probe = udp_rtt_and_loss(&a, &b, link.b_addr(), 50).await.unwrap();
            assert_eq!(probe.received, 50, "{probe:?}");
            (lab, link.b_addr(), a.netns().to_string())
        })
    };
    let first = std::thread::spawn(run);
    let second = std::thread::spawn(run);
    let (lab1, addr1, ns1) = first.join().unwrap();
    let (lab2, addr2, ns2) = second.join().unwrap();
    assert_eq!(addr1, addr2, "labs reuse subnets in separate namespaces");
    assert_ne!(ns1, ns2);
    assert_ne!(lab1.prefix(), lab2.prefix());

    drop(lab1);
    let listed = std::process::Command::new("ip")
        .args(["netns", "list"])
        .output()
        .unwrap();
    let listed = String::from_utf8_lossy(&listed.stdout);
    assert!(!listed.contains(&ns1), "dropped lab left {ns1}: {listed}");
    assert!(listed.contains(&ns2));
    drop(lab2);
}

#[tokio::test]
async fn dropping_lab_inside_runtime_cancels_tasks() {
    require_lab!();
    let lab = Lab::new().unwrap();
    let a = lab.add_host("a").unwrap();
    let task = a.spawn(async {
        tokio::time::sleep(Duration::from_secs(3600)).await;
    });
    tokio::time::sleep(Duration::from_millis(10)).await;
    drop(lab);
    let outcome = tokio::time::timeout(Duration::from_secs(5), task)
        .await
        .expect("task not cancelled by the lab's drop");
    assert!(outcome.unwrap_err().is_cancelled());
    // Late spawns on a dropped lab's host do not panic either.
    let late = a.spawn(async { Ipv4Addr::LOCALHOST });
    assert!(late.await.unwrap_err().is_cancelled());
}

#[tokio::test]
async fn delayed_link_rate_limit() {
    require_lab!();
    let (_lab, a, b, link) = delayed_pair(Duration::from_millis(5)).await;
    let free = tcp_throughput_kbit(&a, &b, link.b_addr(), Duration::from_millis(300))
        .await
        .unwrap();
    let verified = link.set_rate(2000).await.unwrap().unwrap();
    eprintln!("delay line unlimited: {free:.0} kbit/s; set_rate(2000) verification: {verified:?}");
    assert!(
        free > 4000.0,
        "delay line alone carried only {free:.0} kbit/s"
    );
    link.clear_rate().await.unwrap();
    assert_eq!(link.queue_drops(), 0);
}
