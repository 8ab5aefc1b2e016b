//! Feeds the Prometheus recorders ([`crate::metrics`]) from swarm events;
//! relay gauges are refreshed once a second by the housekeeping tick.

use libp2p::{metrics::Recorder, swarm::SwarmEvent};

use super::{behaviour::MeshBehaviourEvent, Runtime};

impl Runtime {
    /// Records one swarm event (before it is handled).
    pub(super) fn record_metrics(&mut self, event: &SwarmEvent<MeshBehaviourEvent>) {
        let metrics = &self.metrics;
        metrics.libp2p.record(event);
        let SwarmEvent::Behaviour(event) = event else {
            return;
        };
        match event {
            MeshBehaviourEvent::Identify(e) => metrics.libp2p.record(e),
            MeshBehaviourEvent::Kad(e) => metrics.libp2p.record(e),
            MeshBehaviourEvent::Gossipsub(e) => metrics.libp2p.record(e),
            MeshBehaviourEvent::Relay(e) => metrics.libp2p.record(e),
            MeshBehaviourEvent::Dcutr(e) => {
                metrics.libp2p.record(e);
                metrics.dcutr_attempts.inc();
                if e.result.is_ok() {
                    metrics.dcutr_successes.inc();
                }
            }
            MeshBehaviourEvent::Autonat(e) => {
                metrics.autonat_tests.inc();
                if e.result.is_ok() {
                    metrics.autonat_confirmed.inc();
                }
            }
            _ => {}
        }
    }

    /// Sets the relay gauges from the current state.
    pub(super) fn refresh_relay_gauges(&self) {
        let counters = &self.relay_counters;
        let metrics = &self.metrics;
        metrics
            .relay_reservations
            .set(counters.reservations.len() as i64);
        metrics.relay_circuits.set(counters.circuits as i64);
        metrics.reserved_on.set(self.reserved_relay_count() as i64);
    }
}
