//! Path classes: what kind of network a connection runs over, read from its
//! address.
//!
//! [`PathClass::classify`] looks at a [`Multiaddr`]:
//!
//! 1. any `/p2p-circuit` component makes it [`PathClass::Relayed`];
//! 2. otherwise the first host component decides:
//!    - `/memory/<u64>` is [`PathClass::Ble`]: the BLE transport packs the
//!      remote radio's address into a `/memory/<u64>` multiaddr (the in-process
//!      memory transport of tests therefore classifies as BLE too);
//!    - a private, link-local or loopback IP is [`PathClass::LanDirect`]:
//!      IPv4 `10/8`, `172.16/12`, `192.168/16`, `169.254/16`, `127/8`; IPv6
//!      `::1`, unique-local `fc00::/7`, link-local `fe80::/10` (IPv4-mapped IPv6
//!      addresses follow the IPv4 rules);
//! 3. anything else — public IPs, DNS names, addresses without a host — is
//!    [`PathClass::Direct`].
//!
//! [`remote_host`] tells two paths of the same class apart (a second LAN, a
//! second relay); [`endpoint_addr`] picks the address a connection is
//! classified by.

use std::{
    fmt,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    str::FromStr,
};

use libp2p::{core::ConnectedPoint, multiaddr::Protocol, Multiaddr, PeerId};
use serde::{Deserialize, Serialize};

/// The kind of network a connection runs over.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum PathClass {
    /// Bluetooth Low Energy (addresses `/memory/<u64>`).
    #[serde(rename = "ble")]
    Ble,
    /// A direct connection to a private, link-local or loopback address.
    #[serde(rename = "lan")]
    LanDirect,
    /// A direct connection to a public address or DNS name.
    #[serde(rename = "direct")]
    Direct,
    /// A connection through a circuit relay (`/p2p-circuit`).
    #[serde(rename = "relayed")]
    Relayed,
}

impl PathClass {
    /// Every class, in declaration order.
    pub const ALL: [PathClass; 4] = [
        PathClass::Ble,
        PathClass::LanDirect,
        PathClass::Direct,
        PathClass::Relayed,
    ];

    /// The class of a connection reached at `addr` (see the [module docs](self)).
    pub fn classify(addr: &Multiaddr) -> PathClass {
        if addr.iter().any(|p| matches!(p, Protocol::P2pCircuit)) {
            return PathClass::Relayed;
        }
        for protocol in addr.iter() {
            match protocol {
                Protocol::Memory(_) => return PathClass::Ble,
                Protocol::Ip4(ip) => return Self::of_ip(IpAddr::V4(ip)),
                Protocol::Ip6(ip) => return Self::of_ip(IpAddr::V6(ip)),
                Protocol::Dns(_) | Protocol::Dns4(_) | Protocol::Dns6(_) | Protocol::Dnsaddr(_) => {
                    return PathClass::Direct
                }
                _ => {}
            }
        }
        PathClass::Direct
    }

    /// The class of a direct connection to `ip`: [`PathClass::LanDirect`] for
    /// private, link-local and loopback addresses, else [`PathClass::Direct`].
    pub fn of_ip(ip: IpAddr) -> PathClass {
        if is_lan_ip(ip) {
            PathClass::LanDirect
        } else {
            PathClass::Direct
        }
    }

    /// The short name: `"ble"`, `"lan"`, `"direct"` or `"relayed"`.
    pub fn as_str(self) -> &'static str {
        match self {
            PathClass::Ble => "ble",
            PathClass::LanDirect => "lan",
            PathClass::Direct => "direct",
            PathClass::Relayed => "relayed",
        }
    }
}

impl fmt::Display for PathClass {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A string that is not one of the [`PathClass`] short names.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown path class {0:?} (expected ble, lan, direct or relayed)")]
pub struct UnknownPathClass(pub String);

impl FromStr for PathClass {
    type Err = UnknownPathClass;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        PathClass::ALL
            .into_iter()
            .find(|c| c.as_str() == s)
            .ok_or_else(|| UnknownPathClass(s.to_owned()))
    }
}

/// Whether `ip` is private, link-local or loopback (the LAN rule of
/// [`PathClass::classify`]).
pub fn is_lan_ip(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(ip) => is_lan_v4(ip),
        IpAddr::V6(ip) => match ip.to_ipv4_mapped() {
            Some(v4) => is_lan_v4(v4),
            None => is_lan_v6(ip),
        },
    }
}

fn is_lan_v4(ip: Ipv4Addr) -> bool {
    // 10/8, 172.16/12, 192.168/16; 169.254/16; 127/8.
    ip.is_private() || ip.is_link_local() || ip.is_loopback()
}

fn is_lan_v6(ip: Ipv6Addr) -> bool {
    let first = ip.segments()[0];
    ip.is_loopback()
        // Unique local fc00::/7.
        || first & 0xfe00 == 0xfc00
        // Link-local unicast fe80::/10.
        || first & 0xffc0 == 0xfe80
}

/// Where a path goes, used to tell two paths of the same class apart: a
/// same-class standby is kept only if its remote host differs from the
/// active path's (see [`super::policy::select_standby`]).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum RemoteHost {
    /// The remote IP address (ports are ignored).
    Ip(IpAddr),
    /// A DNS name.
    Dns(String),
    /// The relay a circuit runs through.
    Relay(PeerId),
}

/// The remote host of a path reached at `addr`, if it has one. BLE
/// (`/memory`) paths have none: a device has one radio, so two BLE paths to
/// the same peer never count as different networks.
pub fn remote_host(addr: &Multiaddr) -> Option<RemoteHost> {
    if addr.iter().any(|p| matches!(p, Protocol::P2pCircuit)) {
        return relay_of(addr).map(RemoteHost::Relay);
    }
    for protocol in addr.iter() {
        match protocol {
            Protocol::Memory(_) => return None,
            Protocol::Ip4(ip) => return Some(RemoteHost::Ip(IpAddr::V4(ip))),
            Protocol::Ip6(ip) => {
                let ip = match ip.to_ipv4_mapped() {
                    Some(v4) => IpAddr::V4(v4),
                    None => IpAddr::V6(ip),
                };
                return Some(RemoteHost::Ip(ip));
            }
            Protocol::Dns(name)
            | Protocol::Dns4(name)
            | Protocol::Dns6(name)
            | Protocol::Dnsaddr(name) => return Some(RemoteHost::Dns(name.to_lowercase())),
            _ => {}
        }
    }
    None
}

/// The relay of a circuit address: the `/p2p/<relay>` right before the first
/// `/p2p-circuit`.
pub fn relay_of(addr: &Multiaddr) -> Option<PeerId> {
    let mut last_peer = None;
    for protocol in addr.iter() {
        match protocol {
            Protocol::P2p(peer) => last_peer = Some(peer),
            Protocol::P2pCircuit => return last_peer,
            _ => {}
        }
    }
    None
}

/// `addr` without a trailing `/p2p/<peer>` (the swarm appends the dialed
/// peer's id to the addresses it dials). Addresses are compared in this form.
pub fn strip_peer(addr: &Multiaddr, peer: &PeerId) -> Multiaddr {
    let mut addr = addr.clone();
    if let Some(Protocol::P2p(last)) = addr.iter().last() {
        if last == *peer {
            addr.pop();
        }
    }
    addr
}

/// The address a connection to `peer` is classified by, without a trailing
/// `/p2p/<peer>`:
///
/// - outbound: the dialed address;
/// - inbound through a relay (the local address has `/p2p-circuit`; the
///   relay transport reports only `/p2p/<remote>` as the send-back address):
///   `<relay address>/p2p-circuit`, the way to reach the remote back;
/// - other inbound: the send-back address (for TCP the remote IP and an
///   ephemeral port, good enough for classification).
pub fn endpoint_addr(peer: &PeerId, endpoint: &ConnectedPoint) -> Multiaddr {
    match endpoint {
        ConnectedPoint::Dialer { address, .. } => strip_peer(address, peer),
        ConnectedPoint::Listener {
            local_addr,
            send_back_addr,
        } => {
            if local_addr.iter().any(|p| matches!(p, Protocol::P2pCircuit)) {
                strip_peer(local_addr, peer)
            } else {
                strip_peer(send_back_addr, peer)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn class(s: &str) -> PathClass {
        PathClass::classify(&s.parse().unwrap())
    }

    #[test]
    fn classifies_many_addresses() {
        let relay = PeerId::random();
        let target = PeerId::random();
        let cases = [
            // Relayed wins over anything else in the address.
            (
                format!("/ip4/10.0.0.1/tcp/4001/p2p/{relay}/p2p-circuit/p2p/{target}"),
                PathClass::Relayed,
            ),
            (
                format!("/ip4/1.2.3.4/udp/4001/quic-v1/p2p/{relay}/p2p-circuit"),
                PathClass::Relayed,
            ),
            (
                format!("/dns4/relay.example.com/tcp/443/p2p/{relay}/p2p-circuit"),
                PathClass::Relayed,
            ),
            ("/p2p-circuit".into(), PathClass::Relayed),
            ("/memory/0".into(), PathClass::Ble),
            ("/memory/18446744073709551615".into(), PathClass::Ble),
            // IPv4 private ranges.
            ("/ip4/10.1.2.3/tcp/1".into(), PathClass::LanDirect),
            ("/ip4/172.16.0.1/tcp/1".into(), PathClass::LanDirect),
            (
                "/ip4/172.31.255.255/udp/1/quic-v1".into(),
                PathClass::LanDirect,
            ),
            ("/ip4/192.168.1.20/tcp/1".into(), PathClass::LanDirect),
            ("/ip4/169.254.10.10/tcp/1".into(), PathClass::LanDirect),
            ("/ip4/127.0.0.1/tcp/1".into(), PathClass::LanDirect),
            ("/ip4/127.8.9.10/tcp/1".into(), PathClass::LanDirect),
            // Just outside the private ranges.
            ("/ip4/172.15.255.255/tcp/1".into(), PathClass::Direct),
            ("/ip4/172.32.0.1/tcp/1".into(), PathClass::Direct),
            ("/ip4/192.169.0.1/tcp/1".into(), PathClass::Direct),
            ("/ip4/11.0.0.1/tcp/1".into(), PathClass::Direct),
            ("/ip4/8.8.8.8/udp/53/quic-v1".into(), PathClass::Direct),
            ("/ip4/100.64.0.1/tcp/1".into(), PathClass::Direct),
            // IPv6.
            ("/ip6/::1/tcp/1".into(), PathClass::LanDirect),
            ("/ip6/fd12:3456::1/tcp/1".into(), PathClass::LanDirect),
            ("/ip6/fc00::1/tcp/1".into(), PathClass::LanDirect),
            ("/ip6/fe80::1/tcp/1".into(), PathClass::LanDirect),
            ("/ip6/febf::1/tcp/1".into(), PathClass::LanDirect),
            ("/ip6/fec0::1/tcp/1".into(), PathClass::Direct),
            ("/ip6/2001:db8::1/tcp/1".into(), PathClass::Direct),
            (
                "/ip6/2606:4700::1111/udp/443/quic-v1".into(),
                PathClass::Direct,
            ),
            ("/ip6/::ffff:192.168.0.1/tcp/1".into(), PathClass::LanDirect),
            ("/ip6/::ffff:8.8.8.8/tcp/1".into(), PathClass::Direct),
            // Names and others.
            ("/dns4/example.com/tcp/443".into(), PathClass::Direct),
            ("/dns/localhost/tcp/1".into(), PathClass::Direct),
            ("/dnsaddr/bootstrap.libp2p.io".into(), PathClass::Direct),
            (format!("/p2p/{target}"), PathClass::Direct),
            (
                format!("/ip4/192.168.1.2/tcp/1/p2p/{target}"),
                PathClass::LanDirect,
            ),
        ];
        for (addr, want) in cases {
            assert_eq!(class(&addr), want, "{addr}");
        }
    }

    #[test]
    fn names_round_trip() {
        for c in PathClass::ALL {
            assert_eq!(c.as_str().parse::<PathClass>().unwrap(), c);
            assert_eq!(c.to_string(), c.as_str());
            assert_eq!(serde_name(c), c.as_str());
        }
        assert_eq!(
            "wifi".parse::<PathClass>(),
            Err(UnknownPathClass("wifi".into()))
        );
    }

    /// The serde name of `c` (through CBOR, a dependency already), checking
    /// the round trip.
    fn serde_name(c: PathClass) -> String {
        let mut buf = Vec::new();
        ciborium::into_writer(&c, &mut buf).unwrap();
        let back: PathClass = ciborium::from_reader(buf.as_slice()).unwrap();
        assert_eq!(back, c);
        let value: ciborium::Value = ciborium::from_reader(buf.as_slice()).unwrap();
        value.as_text().unwrap().to_owned()
    }

    #[test]
    fn remote_hosts() {
        let relay = PeerId::random();
        let host = |s: &str| remote_host(&s.parse().unwrap());
        assert_eq!(
            host("/ip4/192.168.1.2/tcp/1"),
            Some(RemoteHost::Ip("192.168.1.2".parse().unwrap()))
        );
        assert_eq!(
            host("/ip4/192.168.1.2/tcp/1"),
            host("/ip4/192.168.1.2/tcp/2")
        );
        assert_ne!(host("/ip4/192.168.1.2/tcp/1"), host("/ip4/10.0.0.2/tcp/1"));
        assert_eq!(
            host("/ip6/::ffff:10.0.0.1/tcp/1"),
            host("/ip4/10.0.0.1/tcp/9")
        );
        assert_eq!(
            host("/dns4/Example.COM/tcp/1"),
            Some(RemoteHost::Dns("example.com".into()))
        );
        assert_eq!(host("/memory/5"), None);
        assert_eq!(
            host(&format!("/ip4/1.2.3.4/tcp/1/p2p/{relay}/p2p-circuit")),
            Some(RemoteHost::Relay(relay))
        );
        assert_eq!(host("/p2p-circuit"), None);
    }

    #[test]
    fn relay_and_peer_suffix() {
        let relay = PeerId::random();
        let target = PeerId::random();
        let circuit: Multiaddr = format!("/ip4/1.2.3.4/tcp/1/p2p/{relay}/p2p-circuit/p2p/{target}")
            .parse()
            .unwrap();
        assert_eq!(relay_of(&circuit), Some(relay));
        assert_eq!(relay_of(&"/ip4/1.2.3.4/tcp/1".parse().unwrap()), None);
        let stripped = strip_peer(&circuit, &target);
        assert_eq!(
            stripped.to_string(),
            format!("/ip4/1.2.3.4/tcp/1/p2p/{relay}/p2p-circuit")
        );
        // Another peer's id is left alone.
        assert_eq!(strip_peer(&circuit, &relay), circuit);
    }

    #[test]
    fn endpoint_addresses() {
        let peer = PeerId::random();
        let relay = PeerId::random();
        let dialer = ConnectedPoint::Dialer {
            address: format!("/ip4/8.8.8.8/tcp/1/p2p/{peer}").parse().unwrap(),
            role_override: libp2p::core::Endpoint::Dialer,
            port_use: libp2p::core::transport::PortUse::Reuse,
        };
        assert_eq!(
            endpoint_addr(&peer, &dialer).to_string(),
            "/ip4/8.8.8.8/tcp/1"
        );
        let inbound = ConnectedPoint::Listener {
            local_addr: "/ip4/0.0.0.0/tcp/4001".parse().unwrap(),
            send_back_addr: "/ip4/192.168.0.7/tcp/51000".parse().unwrap(),
        };
        assert_eq!(
            PathClass::classify(&endpoint_addr(&peer, &inbound)),
            PathClass::LanDirect
        );
        // The relay client reports `/p2p/<remote>` as send-back address.
        let relayed = ConnectedPoint::Listener {
            local_addr: format!("/ip4/1.2.3.4/tcp/1/p2p/{relay}/p2p-circuit")
                .parse()
                .unwrap(),
            send_back_addr: format!("/p2p/{peer}").parse().unwrap(),
        };
        let addr = endpoint_addr(&peer, &relayed);
        assert_eq!(PathClass::classify(&addr), PathClass::Relayed);
        assert_eq!(relay_of(&addr), Some(relay));
    }
}
