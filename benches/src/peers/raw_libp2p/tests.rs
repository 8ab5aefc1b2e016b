//! Each contender on each transport, every operation with tiny counts; and
//! (ignored) quick figures for a release build:
//! `cargo test --release -p atmosphere-benches raw_libp2p -- --ignored --nocapture`.

use super::*;
use crate::contender::Rate;

/// Which operations a contender offers.
struct Offers {
    pubsub_throughput: bool,
    rpc: bool,
    bulk: bool,
}

async fn contender(setup: Setup) -> Box<dyn Contender> {
    match setup {
        Setup::Ready(c) => c,
        Setup::Missing(m) => panic!("{} missing: {}", m.name, m.reason),
    }
}

fn positive(rate: Option<Rate>, what: &str) {
    let rate = rate.unwrap_or_else(|| panic!("{what}: None"));
    assert!(
        rate.per_sec > 0.0 && rate.bytes_per_sec > 0.0,
        "{what}: {rate:?}"
    );
}

async fn exercise(setup: Setup, offers: Offers) {
    let mut c = contender(setup).await;
    let name = c.name();
    let latency = c.pubsub_latency(64, 10, 100).await.expect("pubsub latency");
    assert!(
        latency.expect("pubsub latency offered").median_us > 0.0,
        "{name}"
    );
    let rate = c
        .pubsub_throughput(64, 1000)
        .await
        .expect("pubsub throughput");
    match offers.pubsub_throughput {
        true => positive(rate, &name),
        false => assert!(rate.is_none(), "{name}"),
    }
    let latency = c.rpc_latency(64, 10, 100).await.expect("rpc latency");
    let rate = c
        .rpc_throughput(64, 64, 1000)
        .await
        .expect("rpc throughput");
    match offers.rpc {
        true => {
            assert!(latency.expect("rpc latency offered").median_us > 0.0);
            positive(rate, &name);
        }
        false => assert!(latency.is_none() && rate.is_none(), "{name}"),
    }
    let rate = c.bulk(1 << 20).await.expect("bulk");
    match offers.bulk {
        true => positive(rate, &name),
        false => assert!(rate.is_none(), "{name}"),
    }
}

const ALL: Offers = Offers {
    pubsub_throughput: true,
    rpc: true,
    bulk: true,
};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn raw_stream_over_tcp_and_quic() {
    for transport in [Transport::Tcp, Transport::Quic] {
        let setup = stream(transport).await;
        exercise(setup, ALL).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn raw_gossipsub_over_tcp_and_quic() {
    for transport in [Transport::Tcp, Transport::Quic] {
        let offers = Offers {
            pubsub_throughput: true,
            rpc: false,
            bulk: false,
        };
        exercise(gossipsub(transport).await, offers).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn raw_request_response_over_tcp_and_quic() {
    for transport in [Transport::Tcp, Transport::Quic] {
        let offers = Offers {
            pubsub_throughput: false,
            rpc: true,
            bulk: false,
        };
        exercise(request_response(transport).await, offers).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn names_follow_the_scheme() {
    let c = contender(stream(Transport::Quic).await).await;
    assert_eq!(c.name(), "libp2p-stream/quic");
    let c = contender(request_response(Transport::Tcp).await).await;
    assert_eq!(c.name(), "libp2p-reqresp/tcp");
}

/// Prints release-mode figures for every contender (slow; run on demand).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "measurement, not a test: run with --release --ignored --nocapture"]
async fn quick_figures() {
    let scale = |n: usize| {
        std::env::var("RAW_LIBP2P_SCALE")
            .ok()
            .and_then(|s| s.parse::<f64>().ok())
            .map_or(n, |f| (n as f64 * f) as usize)
    };
    for transport in [Transport::Tcp, Transport::Quic] {
        for (setup, count) in [
            (stream(transport).await, scale(1_000_000)),
            (gossipsub(transport).await, scale(20_000)),
            (request_response(transport).await, scale(20_000)),
        ] {
            let mut c = contender(setup).await;
            let name = c.name();
            if let Ok(Some(s)) = c.pubsub_latency(64, 200, 2000).await {
                println!(
                    "{name:<22} pubsub rtt 64 B   median {:>8.1} µs  p99 {:>8.1} µs",
                    s.median_us, s.p99_us
                );
            }
            if let Some(r) = c.pubsub_throughput(64, count).await.expect("pubsub") {
                println!("{name:<22} pubsub 64 B       {:>12.0} msg/s", r.per_sec);
            }
            if let Some(r) = c
                .pubsub_throughput(65536, scale(20_000))
                .await
                .expect("pubsub")
            {
                println!(
                    "{name:<22} pubsub 64 KiB     {:>12.0} msg/s {:>8.1} MB/s",
                    r.per_sec,
                    r.bytes_per_sec / 1e6
                );
            }
            if let Ok(Some(s)) = c.rpc_latency(64, 200, 2000).await {
                println!(
                    "{name:<22} rpc rtt 64 B      median {:>8.1} µs  p99 {:>8.1} µs",
                    s.median_us, s.p99_us
                );
            }
            if let Some(r) = c.rpc_throughput(64, 64, count / 5).await.expect("rpc") {
                println!("{name:<22} rpc 64 B ×64      {:>12.0} calls/s", r.per_sec);
            }
            if let Some(r) = c.bulk(scale(1 << 30)).await.expect("bulk") {
                println!(
                    "{name:<22} bulk              {:>12.1} MB/s",
                    r.bytes_per_sec / 1e6
                );
            }
        }
    }
}
