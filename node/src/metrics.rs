//! Prometheus metrics: libp2p's own (connections, identify, Kademlia,
//! gossipsub, relay server, DCUtR), under the `libp2p_` prefix, and ours
//! under `atmosphere_`: hole punching, relaying, reachability. Read them with
//! [`crate::Node::metrics`] (OpenMetrics text), which the daemon serves at
//! `GET /v1/metrics`.

use std::sync::{Arc, Mutex};

use prometheus_client::{
    encoding::text::encode,
    metrics::{counter::Counter, gauge::Gauge, histogram::Histogram},
    registry::Registry,
};

/// Buckets of the time from a relayed connection to the direct one, seconds.
const TIME_TO_DIRECT_BUCKETS: [f64; 10] = [0.25, 0.5, 1.0, 2.0, 3.0, 5.0, 10.0, 20.0, 30.0, 60.0];

/// What the swarm task records into.
pub(crate) struct NodeMetrics {
    /// libp2p's recorders.
    pub libp2p: libp2p::metrics::Metrics,
    /// Hole punches tried (one per DCUtR outcome).
    pub dcutr_attempts: Counter,
    /// Hole punches that gave a direct connection.
    pub dcutr_successes: Counter,
    /// Time from the first relayed connection to a peer to the direct one.
    pub time_to_direct: Histogram,
    /// Reservations our relay holds.
    pub relay_reservations: Gauge,
    /// Circuits our relay carries.
    pub relay_circuits: Gauge,
    /// Relays holding a reservation for us.
    pub reserved_on: Gauge,
    /// AutoNAT v2 tests finished, and those that confirmed an address.
    pub autonat_tests: Counter,
    /// AutoNAT v2 tests that confirmed an address.
    pub autonat_confirmed: Counter,
}

/// The registry, shared with the node handle for encoding.
pub(crate) type SharedRegistry = Arc<Mutex<Registry>>;

impl NodeMetrics {
    /// Registers every metric; returns the recorders and the registry.
    pub(crate) fn new() -> (Self, SharedRegistry) {
        let mut registry = Registry::default();
        let libp2p = libp2p::metrics::Metrics::new(registry.sub_registry_with_prefix("libp2p"));
        let ours = registry.sub_registry_with_prefix("atmosphere");
        let metrics = Self {
            libp2p,
            dcutr_attempts: Counter::default(),
            dcutr_successes: Counter::default(),
            time_to_direct: Histogram::new(TIME_TO_DIRECT_BUCKETS),
            relay_reservations: Gauge::default(),
            relay_circuits: Gauge::default(),
            reserved_on: Gauge::default(),
            autonat_tests: Counter::default(),
            autonat_confirmed: Counter::default(),
        };
        ours.register(
            "dcutr_attempts",
            "Hole punches tried on relayed connections",
            metrics.dcutr_attempts.clone(),
        );
        ours.register(
            "dcutr_successes",
            "Hole punches that gave a direct connection",
            metrics.dcutr_successes.clone(),
        );
        ours.register(
            "time_to_direct_seconds",
            "Time from the first relayed connection to a peer to the direct one",
            metrics.time_to_direct.clone(),
        );
        ours.register(
            "relay_reservations",
            "Reservations our relay server holds",
            metrics.relay_reservations.clone(),
        );
        ours.register(
            "relay_circuits",
            "Circuits our relay server carries",
            metrics.relay_circuits.clone(),
        );
        ours.register(
            "reserved_on_relays",
            "Relays that hold a reservation for us",
            metrics.reserved_on.clone(),
        );
        ours.register(
            "autonat_tests",
            "AutoNAT v2 reachability tests finished",
            metrics.autonat_tests.clone(),
        );
        ours.register(
            "autonat_confirmed",
            "AutoNAT v2 tests that confirmed an address",
            metrics.autonat_confirmed.clone(),
        );
        (metrics, Arc::new(Mutex::new(registry)))
    }
}

/// The registry as OpenMetrics text.
pub(crate) fn encode_text(registry: &SharedRegistry) -> String {
    let registry = crate::shared::lock(registry);
    let mut text = String::new();
    // Writing into a String cannot fail.
    let _ = encode(&mut text, &registry);
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn our_metrics_are_encoded_with_their_prefix() {
        let (metrics, registry) = NodeMetrics::new();
        metrics.dcutr_attempts.inc();
        metrics.dcutr_successes.inc();
        metrics.time_to_direct.observe(0.9);
        metrics.relay_circuits.set(3);
        let text = encode_text(&registry);
        assert!(text.contains("atmosphere_dcutr_attempts_total 1"), "{text}");
        assert!(
            text.contains("atmosphere_dcutr_successes_total 1"),
            "{text}"
        );
        assert!(
            text.contains("atmosphere_time_to_direct_seconds_count 1"),
            "{text}"
        );
        assert!(text.contains("atmosphere_relay_circuits 3"), "{text}");
        assert!(
            text.contains("libp2p_swarm"),
            "libp2p's metrics are registered"
        );
        assert!(text.ends_with("# EOF\n"));
    }
}
