//! Public address discovery: how peers see us (identify's observed
//! addresses), which of those addresses are reachable from outside (AutoNAT
//! v2: a peer dials the address back), and UPnP port mappings. Relay
//! reservations depend on the answer: a node that is publicly reachable
//! holds none.

use std::{collections::HashMap, net::IpAddr, time::Instant};

use libp2p::{autonat, multiaddr::Protocol, upnp, Multiaddr};

use atmosphere_behaviours::train::{path::is_lan_ip, PathClass};

use super::{relays::is_circuit, Runtime};
use crate::types::{NetworkStatus, Reachability, UpnpStatus};

/// Observed addresses remembered, at most (the least seen is dropped).
pub(super) const MAX_OBSERVED: usize = 16;
/// AutoNAT results remembered, one per tested address, at most.
pub(super) const MAX_TESTED: usize = 16;

/// What we know about our own reachability.
#[derive(Default)]
pub(super) struct ReachabilityState {
    /// Address peers observed for us → how many times.
    observed: HashMap<Multiaddr, u64>,
    /// Last AutoNAT result per tested address, and when.
    tested: HashMap<Multiaddr, (bool, Instant)>,
    tests: u64,
    confirmed: u64,
    upnp_state: &'static str,
    upnp_mapped: Vec<Multiaddr>,
}

/// The IP address in a multiaddr, if any.
pub(super) fn ip_of(addr: &Multiaddr) -> Option<IpAddr> {
    addr.iter().find_map(|p| match p {
        Protocol::Ip4(ip) => Some(IpAddr::V4(ip)),
        Protocol::Ip6(ip) => Some(IpAddr::V6(ip)),
        _ => None,
    })
}

/// Whether `addr` is a public (internet) address: not relayed, not LAN.
pub(super) fn is_public(addr: &Multiaddr) -> bool {
    !is_circuit(addr) && PathClass::classify(addr) == PathClass::Direct
}

/// Bounded insert: drops the entry with the smallest `key` when full.
fn insert_bounded<V, K: Ord>(
    map: &mut HashMap<Multiaddr, V>,
    addr: Multiaddr,
    value: V,
    bound: usize,
    rank: impl Fn(&V) -> K,
) {
    if !map.contains_key(&addr) && map.len() >= bound {
        if let Some(evict) = map
            .iter()
            .min_by_key(|(_, v)| rank(v))
            .map(|(a, _)| a.clone())
        {
            map.remove(&evict);
        }
    }
    map.insert(addr, value);
}

impl ReachabilityState {
    /// A peer told us (identify) how it sees us.
    pub(super) fn observed(&mut self, addr: Multiaddr) {
        if is_circuit(&addr) {
            return;
        }
        let count = self.observed.get(&addr).copied().unwrap_or(0) + 1;
        insert_bounded(&mut self.observed, addr, count, MAX_OBSERVED, |c| *c);
    }

    /// An AutoNAT v2 test finished.
    pub(super) fn tested(&mut self, addr: Multiaddr, reachable: bool) {
        self.tests += 1;
        if reachable {
            self.confirmed += 1;
        }
        let now = Instant::now();
        insert_bounded(
            &mut self.tested,
            addr,
            (reachable, now),
            MAX_TESTED,
            |(_, at)| *at,
        );
    }

    /// Whether a tested address was not reachable (AutoNAT v2 does not
    /// test it again, so the answer stands).
    fn any_failure(&self) -> bool {
        self.tested.values().any(|(ok, _)| !ok)
    }
}

impl Runtime {
    /// Confirmed external addresses that are on the internet (AutoNAT v2,
    /// UPnP, or a relay server's own listen addresses).
    pub(super) fn public_addrs(&self) -> Vec<Multiaddr> {
        self.swarm
            .external_addresses()
            .filter(|a| is_public(a))
            .cloned()
            .collect()
    }

    /// Whether members can dial us directly from the internet: a confirmed
    /// public IPv4 address (members on IPv4 only, behind carrier-grade NAT,
    /// could not use a confirmed IPv6 address alone).
    pub(super) fn publicly_reachable(&self) -> bool {
        self.public_addrs()
            .iter()
            .any(|a| matches!(ip_of(a), Some(IpAddr::V4(_))))
    }

    pub(super) fn on_autonat_event(&mut self, event: autonat::v2::client::Event) {
        let reachable = event.result.is_ok();
        match &event.result {
            Ok(()) => {
                tracing::info!(addr = %event.tested_addr, server = %event.server, "AutoNAT: reachable")
            }
            Err(e) => {
                tracing::debug!(addr = %event.tested_addr, server = %event.server, error = %e, "AutoNAT: not reachable")
            }
        }
        self.reachability.tested(event.tested_addr, reachable);
    }

    pub(super) fn on_upnp_event(&mut self, event: upnp::Event) {
        let state = &mut self.reachability;
        match event {
            upnp::Event::NewExternalAddr { external_addr, .. } => {
                tracing::info!(addr = %external_addr, "UPnP: port mapped");
                state.upnp_state = "mapped";
                if !state.upnp_mapped.contains(&external_addr) {
                    state.upnp_mapped.push(external_addr);
                }
            }
            upnp::Event::ExpiredExternalAddr { external_addr, .. } => {
                tracing::info!(addr = %external_addr, "UPnP: mapping expired");
                state.upnp_mapped.retain(|a| *a != external_addr);
            }
            upnp::Event::GatewayNotFound => {
                tracing::info!("UPnP: no gateway found");
                state.upnp_state = "no_gateway";
            }
            upnp::Event::NonRoutableGateway => {
                tracing::info!("UPnP: the gateway is not on the internet itself");
                state.upnp_state = "gateway_not_public";
            }
        }
    }

    /// An external address was confirmed or expired: a publicly reachable
    /// node gives up its reservations, one that is no longer reachable takes
    /// them again; members hear of the new address at once.
    pub(super) fn on_external_addrs_changed(&mut self) {
        if self.publicly_reachable() {
            self.release_reservations();
        } else {
            self.reserve_on_relays();
        }
        self.announce_state();
    }

    /// The `network` part of `status`.
    pub(super) fn network_status(&self) -> NetworkStatus {
        let state = &self.reachability;
        let local_addrs: Vec<Multiaddr> = self
            .swarm
            .listeners()
            .filter(|a| !is_circuit(a) && super::is_routable_for_hint(a))
            .cloned()
            .collect();
        let local_ips: Vec<IpAddr> = local_addrs.iter().filter_map(ip_of).collect();
        let local_ip = local_ips
            .iter()
            .find(|ip| is_lan_ip(**ip) && !ip.is_loopback())
            .or_else(|| local_ips.first())
            .copied();
        let public_addrs = self.public_addrs();
        let mut observed: Vec<(&Multiaddr, &u64)> = state.observed.iter().collect();
        observed.sort_by(|a, b| b.1.cmp(a.1).then_with(|| a.0.cmp(b.0)));
        let public_ip = public_addrs.iter().filter_map(ip_of).next().or_else(|| {
            observed
                .iter()
                .filter(|(a, _)| is_public(a))
                .find_map(|(a, _)| ip_of(a))
        });
        let is_behind_nat = public_ip.map(|ip| !local_ips.contains(&ip));
        let reachability = if !public_addrs.is_empty() {
            Reachability::Public
        } else if state.any_failure() {
            Reachability::Private
        } else {
            Reachability::Unknown
        };
        NetworkStatus {
            local_ip: local_ip.map(|ip| ip.to_string()),
            public_ip: public_ip.map(|ip| ip.to_string()),
            is_behind_nat,
            reachability,
            local_addrs: local_addrs.iter().map(ToString::to_string).collect(),
            public_addrs: public_addrs.iter().map(ToString::to_string).collect(),
            observed_addrs: observed.iter().map(|(a, _)| a.to_string()).collect(),
            autonat_tests: state.tests,
            autonat_confirmed: state.confirmed,
            upnp: UpnpStatus {
                enabled: self.config.upnp,
                state: if !self.config.upnp {
                    "off"
                } else if state.upnp_state.is_empty() {
                    "searching"
                } else {
                    state.upnp_state
                }
                .to_owned(),
                mapped: state.upnp_mapped.iter().map(ToString::to_string).collect(),
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(s: &str) -> Multiaddr {
        s.parse().unwrap_or_else(|e| panic!("{s}: {e}"))
    }

    #[test]
    fn observed_addresses_are_bounded_and_keep_the_most_seen() {
        let mut state = ReachabilityState::default();
        let frequent = addr("/ip4/198.51.100.7/tcp/4001");
        for _ in 0..5 {
            state.observed(frequent.clone());
        }
        for port in 0..(MAX_OBSERVED as u16 * 2) {
            state.observed(addr(&format!("/ip4/198.51.100.8/tcp/{}", 5000 + port)));
        }
        assert_eq!(state.observed.len(), MAX_OBSERVED);
        assert_eq!(state.observed.get(&frequent), Some(&5));
    }

    #[test]
    fn relayed_observations_are_ignored() {
        let mut state = ReachabilityState::default();
        state.observed(addr(
            "/ip4/198.51.100.2/tcp/1/p2p/12D3KooWGzs4Ywc1A4FbzGGXfYWmdYy1ZQZ3ZS8JSqULEWDJAVLA/p2p-circuit",
        ));
        assert!(state.observed.is_empty());
    }

    #[test]
    fn autonat_results_are_bounded_and_failures_remembered() {
        let mut state = ReachabilityState::default();
        assert!(!state.any_failure());
        for port in 0..(MAX_TESTED as u16 + 4) {
            state.tested(addr(&format!("/ip4/198.51.100.9/tcp/{port}")), false);
        }
        assert_eq!(state.tested.len(), MAX_TESTED);
        assert!(state.any_failure());
        assert_eq!((state.tests, state.confirmed), (MAX_TESTED as u64 + 4, 0));
    }

    #[test]
    fn public_means_internet_and_not_relayed() {
        assert!(is_public(&addr("/ip4/198.51.100.7/tcp/4001")));
        assert!(!is_public(&addr("/ip4/192.168.1.7/tcp/4001")));
        assert!(!is_public(&addr("/ip4/127.0.0.1/tcp/4001")));
    }
}
