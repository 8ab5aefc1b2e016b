//! A simulated internet with NAT routers: an ISP namespace routing between
//! public hosts and home routers, each router NATing a private LAN. The
//! design is documented on [`Internet`].

use std::fmt;
use std::net::{Ipv4Addr, SocketAddrV4};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::delay::{start_delay_line, verify_round_trip, DelayControl};
use crate::error::{LabError, Result};
use crate::host::Host;
use crate::lab::LabHandle;
use crate::link::{create_veth, set_ends_state, UP_TIMEOUT};
use crate::measure::{wait_udp_reachable, Probe};
use crate::natcheck::{can_initiate, observed_udp_addrs, Initiation, Reflector, UdpMapping};

/// The ISP's address on every uplink (and on its `lo`); the first
/// [`Internet::reflectors`] listens here.
pub const ISP_ADDR: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 1);

/// A second public address of the ISP (on its `lo`), standing for "another
/// server on the internet"; the second [`Internet::reflectors`] listens here.
///
/// A server in the ISP answering here must bind to this address: replies of
/// a socket bound to `0.0.0.0` leave from [`ISP_ADDR`], which a NAT does not
/// let through as an answer.
pub const ISP_SECOND_ADDR: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 1);

/// Most attachments (public hosts plus routers) one [`Internet`] can hold:
/// they get `198.51.100.2` to `198.51.100.254`.
pub const MAX_ATTACHMENTS: u32 = 253;

/// Most hosts behind one [`NatRouter`]: `192.168.<n>.2` to `.254`.
pub const MAX_LAN_HOSTS: u32 = 253;

/// Name of a router's WAN interface.
const WAN_IF: &str = "wan";

/// Name of a router's LAN bridge.
const LAN_BRIDGE: &str = "lan";

/// Name of a public or LAN host's only interface.
const HOST_IF: &str = "eth0";

/// nftables table with a router's NAT and firewall.
const NAT_TABLE: &str = "lab_nat";

/// Priority of the ISP's `ip rule`s: packets that went through an uplink's
/// delay line towards that uplink leave by the main table; UDP, TCP and ICMP
/// packets arriving from a delayed uplink enter its delay line; packets
/// towards a delayed uplink enter its delay line; finally the local table
/// (moved here from priority 0, so packets from a delayed uplink to the
/// ISP's own addresses are delayed too).
const RULE_DELIVER: &str = "1000";
const RULE_FROM_UPLINK: &str = "2000";
const RULE_TO_UPLINK: &str = "3000";
const RULE_LOCAL: &str = "5000";

/// How the NAT of a [`NatRouter`] maps private sockets to public ports.
///
/// Filtering is the same for both kinds: only packets belonging to a
/// connection tracked from the inside (conntrack `established`/`related`)
/// come in from the WAN; everything else arriving on the WAN is dropped
/// silently, before conntrack records it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum NatKind {
    /// Endpoint-independent mapping with port preservation: nftables
    /// `oifname "wan" snat ip to <wan>`. The kernel keeps a connection's
    /// source port whenever that does not clash with an existing mapping, so
    /// one private socket appears as the same `wan:port` to every
    /// destination. Filtering is address-and-port-dependent (a "port
    /// restricted cone"): a remote gets in only after the inside sent to
    /// exactly that remote address and port. Simultaneous hole punching works.
    EndpointIndependent,
    /// Address-and-port-dependent mapping ("symmetric NAT"): nftables
    /// `oifname "wan" snat ip to <wan> fully-random`. Every new connection
    /// (conntrack entry: protocol, addresses and ports) gets a random public
    /// port, so the port a reflector sees is not the port used towards a
    /// peer, and hole punching fails.
    AddressDependent,
}

impl NatKind {
    /// The nftables flags after `snat ip to <wan>`.
    fn snat_flags(self) -> &'static str {
        match self {
            NatKind::EndpointIndependent => "",
            NatKind::AddressDependent => " fully-random",
        }
    }
}

impl fmt::Display for NatKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            NatKind::EndpointIndependent => "endpoint-independent",
            NatKind::AddressDependent => "address-dependent",
        })
    }
}

/// A simulated public internet: an ISP router namespace to which public
/// hosts ([`Internet::add_public_host`]) and home routers with NAT
/// ([`Internet::add_router`]) attach, like the topology of libp2p's
/// hole-punch interop tests.
///
/// ```text
///                         ISP  198.51.100.1, 203.0.113.1 (reflectors)
///            ┌─────────────┼──────────────┐
///    relay 198.51.100.2   home-a .3        home-b .4       (public, /32 each)
///                          │ NAT           │ NAT
///                       bridge "lan"    bridge "lan"
///                      192.168.1.1/24   192.168.2.1/24
///                          │               │
///                   alice 192.168.1.2   bob 192.168.2.2
/// ```
///
/// * **ISP**: an internal namespace (`_isp<n>`) with forwarding on. Each
///   attachment `k` is a veth pair `i<k>` (ISP) — `eth0`/`wan` (attached
///   host), addressed point-to-point: `198.51.100.1 peer 198.51.100.<k+2>`
///   on the ISP side, the reverse on the other, whose default route is via
///   `198.51.100.1`. The ISP also has `198.51.100.1` and `203.0.113.1` on
///   `lo`, where two [`Reflector`]s run ([`Internet::reflectors`]): public
///   "what is my address" servers at two different addresses. There is no
///   route to private addresses on the internet.
/// * **Public hosts** have only their uplink; they are reachable from
///   everything on the internet.
/// * **NAT routers** ([`NatRouter`]) have a `wan` uplink and a `lan` bridge
///   (`192.168.<n>.1/24`, `n` = 1, 2, … per internet) to which their hosts
///   attach, each with a veth (`eth0` in the host, `h<j>` on the bridge) and
///   a default route via the router. The NAT is an nftables table on the
///   router (see [`NatKind`]).
/// * **Latency** on an uplink ([`Uplink::set_delay`]) is the delay line of
///   [`DelayedLink`](crate::DelayedLink), run in the ISP on a TUN device
///   `t<k>` per delayed uplink: policy routing sends packets arriving from
///   `i<k>` (UDP, TCP and ICMP: ARP must still reach the ISP's local table),
///   and packets towards the uplink's address, through the TUN once each, so
///   both directions are delayed. TCP/UDP early demux is off in the ISP (it
///   would make the kernel drop packets routed into a delay line on their way
///   to a local socket). (Putting it inside a router would
///   put the packets through its conntrack twice.)
///
/// Everything belongs to the [`Lab`](crate::Lab) and disappears with it;
/// `Internet` is a cheap handle (clones share the ISP).
#[derive(Clone)]
pub struct Internet {
    inner: Arc<InternetInner>,
}

struct InternetInner {
    lab: LabHandle,
    id: u32,
    isp: Host,
    reflectors: [Reflector; 2],
    state: Mutex<InternetState>,
}

#[derive(Default)]
struct InternetState {
    next_attachment: u32,
    next_router: u32,
}

impl fmt::Debug for Internet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Internet")
            .field("isp", &self.inner.isp.netns())
            .finish()
    }
}

impl Internet {
    /// Builds the ISP namespace (called by [`Lab::internet`](crate::Lab::internet)).
    pub(crate) async fn create(lab: LabHandle, id: u32) -> Result<Internet> {
        let isp = lab.add_internal_host(&format!("_isp{id}"))?;
        isp.sysctls(&[
            ("net/ipv4/ip_forward".into(), "1"),
            ("net/ipv4/conf/all/rp_filter".into(), "0"),
            ("net/ipv4/conf/default/rp_filter".into(), "0"),
            // Early demux attaches a packet to a matching local socket before
            // routing, and the kernel drops such packets when routing then
            // forwards them, here into a delay line on their way to that
            // very socket: TCP to the ISP's own addresses would stall.
            ("net/ipv4/tcp_early_demux".into(), "0"),
            ("net/ipv4/udp_early_demux".into(), "0"),
        ])?;
        for addr in [ISP_ADDR, ISP_SECOND_ADDR] {
            isp.ip(&["addr", "add", &format!("{addr}/32"), "dev", "lo"])?;
        }
        // The local table moves behind the delay-line rules (added first, so
        // local delivery never stops).
        isp.ip(&["rule", "add", "priority", RULE_LOCAL, "lookup", "local"])?;
        isp.ip(&["rule", "del", "priority", "0", "lookup", "local"])?;
        let reflectors = [
            Reflector::start(&isp, ISP_ADDR).await?,
            Reflector::start(&isp, ISP_SECOND_ADDR).await?,
        ];
        Ok(Internet {
            inner: Arc::new(InternetInner {
                lab,
                id,
                isp,
                reflectors,
                state: Mutex::new(InternetState::default()),
            }),
        })
    }

    /// The ISP namespace (for inspection, or to run servers on
    /// [`ISP_ADDR`] / [`ISP_SECOND_ADDR`]).
    pub fn isp(&self) -> &Host {
        &self.inner.isp
    }

    /// Two public address reflectors run by the ISP, on [`ISP_ADDR`] and
    /// [`ISP_SECOND_ADDR`]: a STUN-like service for
    /// [`observed_udp_addr`](crate::observed_udp_addr),
    /// [`observed_tcp_addr`](crate::observed_tcp_addr) and
    /// [`udp_hole_punch`](crate::udp_hole_punch).
    pub fn reflectors(&self) -> [SocketAddrV4; 2] {
        [
            self.inner.reflectors[0].addr(),
            self.inner.reflectors[1].addr(),
        ]
    }

    /// Adds a host with a public address (`198.51.100.<k+2>`), e.g. a relay,
    /// reachable from everything on this internet.
    ///
    /// Verified: a UDP probe from the host to the ISP must be answered.
    pub async fn add_public_host(&self, name: &str) -> Result<Device> {
        let host = self.inner.lab.add_host(name)?;
        let uplink = self.attach(&host, HOST_IF).await?;
        Ok(Device {
            addr: uplink.addr(),
            host,
            uplink,
            router: None,
        })
    }

    /// Adds a home router with a public WAN address and an empty LAN
    /// `192.168.<n>.0/24` behind a NAT of the given `kind`; add hosts behind
    /// it with [`NatRouter::add_host`] (which verifies the NAT).
    ///
    /// Verified: a UDP probe from the router to the ISP must be answered.
    pub async fn add_router(&self, name: &str, kind: NatKind) -> Result<NatRouter> {
        let n = {
            let mut state = lock(&self.inner.state);
            if state.next_router >= 254 {
                return Err(LabError::InvalidArgument(
                    "internet ran out of router LAN subnets (254)".into(),
                ));
            }
            state.next_router += 1;
            state.next_router
        };
        let n = n as u8;
        let host = self.inner.lab.add_host(name)?;
        let lan_addr = Ipv4Addr::new(192, 168, n, 1);
        host.sysctls(&[("net/ipv4/ip_forward".into(), "1")])?;
        host.ip(&["link", "add", LAN_BRIDGE, "type", "bridge"])?;
        host.sysctls(&[(format!("net/ipv6/conf/{LAN_BRIDGE}/disable_ipv6"), "1")])?;
        host.ip(&["addr", "add", &format!("{lan_addr}/24"), "dev", LAN_BRIDGE])?;
        host.ip(&["link", "set", "dev", LAN_BRIDGE, "up"])?;
        let uplink = self.attach(&host, WAN_IF).await?;
        let wan_addr = uplink.addr();
        // Drops of unsolicited packets happen in the filter hooks, before
        // conntrack confirms (records) the connection: a stray packet from a
        // peer that is hole punching must not leave an entry behind, or the
        // kernel would pick another port for the router's own mapping of
        // that same flow.
        let script = format!(
            "table ip {NAT_TABLE} {{}}\n\
             delete table ip {NAT_TABLE}\n\
             table ip {NAT_TABLE} {{\n\
             \x20 chain nat_out {{\n\
             \x20   type nat hook postrouting priority srcnat; policy accept;\n\
             \x20   oifname \"{WAN_IF}\" snat ip to {wan_addr}{flags}\n\
             \x20 }}\n\
             \x20 chain wan_forward {{\n\
             \x20   type filter hook forward priority filter; policy accept;\n\
             \x20   iifname \"{WAN_IF}\" ct state established,related accept\n\
             \x20   iifname \"{WAN_IF}\" drop\n\
             \x20 }}\n\
             \x20 chain wan_input {{\n\
             \x20   type filter hook input priority filter; policy accept;\n\
             \x20   iifname \"{WAN_IF}\" ct state established,related accept\n\
             \x20   iifname \"{WAN_IF}\" drop\n\
             \x20 }}\n\
             }}\n",
            flags = kind.snat_flags()
        );
        host.exec_with_stdin(&["nft", "-f", "-"], &script)?;
        Ok(NatRouter {
            inner: Arc::new(RouterInner {
                internet: self.clone(),
                host,
                kind,
                n,
                lan_addr,
                uplink,
                next_lan: Mutex::new(2),
            }),
        })
    }

    /// Connects `host` to the ISP with the next public address on interface
    /// `ifname`, and waits until the host reaches the ISP.
    async fn attach(&self, host: &Host, ifname: &str) -> Result<Uplink> {
        let k = {
            let mut state = lock(&self.inner.state);
            if state.next_attachment >= MAX_ATTACHMENTS {
                return Err(LabError::InvalidArgument(format!(
                    "internet ran out of public addresses ({MAX_ATTACHMENTS})"
                )));
            }
            state.next_attachment += 1;
            state.next_attachment - 1
        };
        let isp = &self.inner.isp;
        let isp_if = format!("i{k}");
        let addr = Ipv4Addr::new(198, 51, 100, (k + 2) as u8);
        create_veth(isp, &isp_if, host, ifname)?;
        point_to_point(isp, &isp_if, ISP_ADDR, addr)?;
        point_to_point(host, ifname, addr, ISP_ADDR)?;
        let uplink = Uplink {
            inner: Arc::new(UplinkInner {
                host: host.clone(),
                ifname: ifname.to_string(),
                addr,
                gateway: ISP_ADDR,
                peer: isp.clone(),
                peer_ifname: isp_if,
                internet: Some((self.clone(), k)),
                delay: Mutex::new(None),
                delay_setup: tokio::sync::Mutex::new(()),
                up: AtomicBool::new(true),
            }),
        };
        uplink.restore_route()?;
        uplink.wait_reachable().await?;
        Ok(uplink)
    }
}

/// Gives `ifname` the point-to-point address `local peer remote`, disables
/// IPv6 on it and brings it up.
fn point_to_point(host: &Host, ifname: &str, local: Ipv4Addr, remote: Ipv4Addr) -> Result<()> {
    host.sysctls(&[(format!("net/ipv6/conf/{ifname}/disable_ipv6"), "1")])?;
    host.ip(&[
        "addr",
        "add",
        &format!("{local}/32"),
        "peer",
        &format!("{remote}/32"),
        "dev",
        ifname,
    ])?;
    host.ip(&["link", "set", "dev", ifname, "up"])?;
    Ok(())
}

/// A home router: a namespace with a public `wan` uplink to an [`Internet`]
/// and a private LAN bridge, NATing the LAN with nftables (see [`NatKind`]).
///
/// A cheap handle; clones share the router.
#[derive(Clone)]
pub struct NatRouter {
    inner: Arc<RouterInner>,
}

struct RouterInner {
    internet: Internet,
    host: Host,
    kind: NatKind,
    n: u8,
    lan_addr: Ipv4Addr,
    uplink: Uplink,
    next_lan: Mutex<u32>,
}

impl fmt::Debug for NatRouter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("NatRouter")
            .field("name", &self.inner.host.name())
            .field("kind", &self.inner.kind)
            .field("wan_addr", &self.wan_addr())
            .field("lan_addr", &self.inner.lan_addr)
            .finish()
    }
}

/// What [`NatRouter::verify_host`] measured.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NatCheck {
    /// One socket of the host as the ISP's two reflectors saw it.
    pub mapping: UdpMapping,
    /// What the host could initiate towards the ISP (both must be true).
    pub outbound: Initiation,
    /// What the ISP could initiate towards the host's router on a port the
    /// host listens on (both must be false).
    pub inbound: Initiation,
}

impl NatRouter {
    /// The router's namespace.
    pub fn host(&self) -> &Host {
        &self.inner.host
    }

    /// The NAT's mapping behaviour.
    pub fn kind(&self) -> NatKind {
        self.inner.kind
    }

    /// The router's public address, the source of everything its hosts send
    /// to the internet.
    pub fn wan_addr(&self) -> Ipv4Addr {
        self.inner.uplink.addr()
    }

    /// The router's LAN address (`192.168.<n>.1`), its hosts' gateway.
    pub fn lan_addr(&self) -> Ipv4Addr {
        self.inner.lan_addr
    }

    /// The LAN subnet, `192.168.<n>.0/24`.
    pub fn lan_subnet(&self) -> String {
        format!("192.168.{}.0/24", self.inner.n)
    }

    /// The WAN uplink: cut it, restore it, delay it.
    pub fn uplink(&self) -> &Uplink {
        &self.inner.uplink
    }

    /// The internet the router is attached to.
    pub fn internet(&self) -> &Internet {
        &self.inner.internet
    }

    /// Adds a host behind the router (`192.168.<n>.<j>`, `j` = 2, 3, …,
    /// default route via the router), then verifies the NAT from it with
    /// [`NatRouter::verify_host`].
    pub async fn add_host(&self, name: &str) -> Result<Device> {
        let j = {
            let mut next = lock(&self.inner.next_lan);
            if *next > MAX_LAN_HOSTS + 1 {
                return Err(LabError::InvalidArgument(format!(
                    "router `{}` has no free LAN address",
                    self.inner.host.name()
                )));
            }
            *next += 1;
            *next - 1
        };
        let inner = &self.inner;
        let host = inner.internet.inner.lab.add_host(name)?;
        let addr = Ipv4Addr::new(192, 168, inner.n, j as u8);
        let port = format!("h{j}");
        create_veth(&host, HOST_IF, &inner.host, &port)?;
        inner
            .host
            .sysctls(&[(format!("net/ipv6/conf/{port}/disable_ipv6"), "1")])?;
        inner
            .host
            .ip(&["link", "set", "dev", &port, "master", LAN_BRIDGE])?;
        inner.host.ip(&["link", "set", "dev", &port, "up"])?;
        host.sysctls(&[(format!("net/ipv6/conf/{HOST_IF}/disable_ipv6"), "1")])?;
        host.ip(&["addr", "add", &format!("{addr}/24"), "dev", HOST_IF])?;
        host.ip(&["link", "set", "dev", HOST_IF, "up"])?;
        let uplink = Uplink {
            inner: Arc::new(UplinkInner {
                host: host.clone(),
                ifname: HOST_IF.into(),
                addr,
                gateway: inner.lan_addr,
                peer: inner.host.clone(),
                peer_ifname: port,
                internet: None,
                delay: Mutex::new(None),
                delay_setup: tokio::sync::Mutex::new(()),
                up: AtomicBool::new(true),
            }),
        };
        uplink.restore_route()?;
        uplink.wait_reachable().await?;
        let device = Device {
            host,
            addr,
            uplink,
            router: Some(self.clone()),
        };
        self.verify_host(&device).await?;
        Ok(device)
    }

    /// Verifies the NAT as seen from `device` (a host behind this router) by
    /// measurement:
    ///
    /// 1. the host can initiate UDP and TCP to the ISP ([`can_initiate`]);
    /// 2. the ISP cannot initiate UDP or TCP to the router's public address
    ///    on a port the host listens on;
    /// 3. one UDP socket of the host, asking the ISP's two reflectors (two
    ///    addresses), is seen from the router's public address, with the same
    ///    port both times for [`NatKind::EndpointIndependent`] and different
    ///    ports for [`NatKind::AddressDependent`] (asked twice, with two
    ///    sockets, before calling equal ports a failure: a random port
    ///    repeats with probability 1/64 512).
    ///
    /// Needs both the router's uplink and the host's link up.
    pub async fn verify_host(&self, device: &Device) -> Result<NatCheck> {
        let inner = &self.inner;
        let internet = &inner.internet;
        let isp = internet.isp();
        let host = device.host();
        if device.router().map(|r| Arc::ptr_eq(&r.inner, inner)) != Some(true) {
            return Err(LabError::InvalidArgument(format!(
                "host `{}` is not behind router `{}`",
                host.name(),
                inner.host.name()
            )));
        }
        let wait = Duration::from_millis(300) + inner.uplink.delay() * 4;
        let outbound = can_initiate(host, isp, ISP_ADDR, wait).await?;
        if !outbound.open() {
            return Err(LabError::Verification(format!(
                "{} cannot initiate to the ISP ({ISP_ADDR}): {outbound:?}",
                host_behind(host, &inner.host)
            )));
        }
        let inbound = can_initiate(isp, host, self.wan_addr(), wait).await?;
        if !inbound.blocked() {
            return Err(LabError::Verification(format!(
                "the ISP initiated to host `{}` through router `{}` ({}): {inbound:?}; the NAT must drop unsolicited traffic",
                host.name(),
                inner.host.name(),
                self.wan_addr()
            )));
        }
        let reflectors = internet.reflectors();
        let mut mapping = observed_udp_addrs(host, 0, &reflectors).await?;
        if inner.kind == NatKind::AddressDependent && mapping.is_endpoint_independent() {
            mapping = observed_udp_addrs(host, 0, &reflectors).await?;
        }
        if let Some(wrong) = mapping
            .observed
            .iter()
            .find(|observed| *observed.ip() != self.wan_addr())
        {
            return Err(LabError::Verification(format!(
                "{} was seen from {wrong}, not from the router's address {}",
                host_behind(host, &inner.host),
                self.wan_addr()
            )));
        }
        let independent = mapping.is_endpoint_independent();
        if independent != (inner.kind == NatKind::EndpointIndependent) {
            return Err(LabError::Verification(format!(
                "router `{}` should map {}ly, but one socket of host `{}` (local port {}) was seen as {:?} by reflectors {reflectors:?}",
                inner.host.name(),
                inner.kind,
                host.name(),
                mapping.local_port,
                mapping.observed
            )));
        }
        Ok(NatCheck {
            mapping,
            outbound,
            inbound,
        })
    }
}

/// "host `…` behind router `…`", for errors of [`NatRouter::verify_host`].
fn host_behind(host: &Host, router: &Host) -> String {
    format!("host `{}` behind router `{}`", host.name(), router.name())
}

/// A host of an [`Internet`]: public ([`Internet::add_public_host`]) or
/// behind a [`NatRouter`] ([`NatRouter::add_host`]).
#[derive(Clone)]
pub struct Device {
    host: Host,
    addr: Ipv4Addr,
    uplink: Uplink,
    router: Option<NatRouter>,
}

impl fmt::Debug for Device {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Device")
            .field("name", &self.host.name())
            .field("addr", &self.addr)
            .field("router", &self.router.as_ref().map(|r| r.host().name()))
            .finish()
    }
}

impl Device {
    /// The host's namespace (run code in it with [`Host::spawn`]).
    pub fn host(&self) -> &Host {
        &self.host
    }

    /// The host's own address: public for a public host, `192.168.<n>.<j>`
    /// behind a router.
    pub fn addr(&self) -> Ipv4Addr {
        self.addr
    }

    /// The address others on the internet see the host's traffic come from:
    /// its own address, or its router's public address.
    pub fn public_addr(&self) -> Ipv4Addr {
        match &self.router {
            Some(router) => router.wan_addr(),
            None => self.addr,
        }
    }

    /// The host's link: to the ISP for a public host, to its router's LAN
    /// otherwise.
    pub fn uplink(&self) -> &Uplink {
        &self.uplink
    }

    /// The router the host is behind, if any.
    pub fn router(&self) -> Option<&NatRouter> {
        self.router.as_ref()
    }
}

/// A host's only link: a public host's or a router's link to the ISP, or a
/// LAN host's link to its router. A cheap handle; clones control the same
/// link.
#[derive(Clone)]
pub struct Uplink {
    inner: Arc<UplinkInner>,
}

struct UplinkInner {
    host: Host,
    ifname: String,
    addr: Ipv4Addr,
    gateway: Ipv4Addr,
    peer: Host,
    peer_ifname: String,
    /// The internet and attachment index, for links to the ISP.
    internet: Option<(Internet, u32)>,
    /// The delay line, once [`Uplink::set_delay`] created it.
    delay: Mutex<Option<Arc<DelayControl>>>,
    /// Held while a delay line is being created.
    delay_setup: tokio::sync::Mutex<()>,
    up: AtomicBool,
}

impl fmt::Debug for Uplink {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let inner = &self.inner;
        f.debug_struct("Uplink")
            .field("host", &inner.host.name())
            .field("ifname", &inner.ifname)
            .field("addr", &inner.addr)
            .field("gateway", &inner.gateway)
            .field("peer", &inner.peer.name())
            .field("peer_ifname", &inner.peer_ifname)
            .field("up", &self.is_up())
            .field("delay", &self.delay())
            .finish()
    }
}

impl Uplink {
    /// The host this link belongs to.
    pub fn host(&self) -> &Host {
        &self.inner.host
    }

    /// The host's address on the link.
    pub fn addr(&self) -> Ipv4Addr {
        self.inner.addr
    }

    /// The host's default gateway: [`ISP_ADDR`], or the router's LAN address.
    pub fn gateway(&self) -> Ipv4Addr {
        self.inner.gateway
    }

    /// The interface name in the host (`wan` for routers, `eth0` otherwise).
    pub fn ifname(&self) -> &str {
        &self.inner.ifname
    }

    /// The other end: the ISP or the router.
    pub fn peer(&self) -> &Host {
        &self.inner.peer
    }

    /// The interface name at the other end (`i<k>` in the ISP, `h<j>` on
    /// the router's bridge).
    pub fn peer_ifname(&self) -> &str {
        &self.inner.peer_ifname
    }

    /// Whether the link is up (as last set by [`Uplink::down`] /
    /// [`Uplink::up`]).
    pub fn is_up(&self) -> bool {
        self.inner.up.load(Ordering::Relaxed)
    }

    /// The one-way delay currently added (zero without a delay line).
    pub fn delay(&self) -> Duration {
        self.control().map(|c| c.delay()).unwrap_or_default()
    }

    fn control(&self) -> Option<Arc<DelayControl>> {
        lock(&self.inner.delay).clone()
    }

    /// Packets the delay line dropped because it was full (see
    /// [`MAX_QUEUED_PACKETS`](crate::MAX_QUEUED_PACKETS)).
    pub fn queue_drops(&self) -> u64 {
        self.control().map(|c| c.queue_drops()).unwrap_or(0)
    }

    /// Cuts the link: both ends go administratively down (the host's
    /// default route goes with it). A router's NAT mappings (conntrack
    /// entries) survive, as in a home router whose cable is pulled briefly.
    ///
    /// Verified by reading the interfaces' flags back.
    pub async fn down(&self) -> Result<()> {
        set_ends_state(self.ends(), false)?;
        self.inner.up.store(false, Ordering::Relaxed);
        Ok(())
    }

    /// Brings the link back, restores the host's default route and waits (up
    /// to 5 s plus four times the delay) until a UDP probe from the host to
    /// its gateway is answered.
    pub async fn up(&self) -> Result<()> {
        let [host_end, peer_end] = self.ends();
        set_ends_state([peer_end, host_end], true)?;
        self.restore_route()?;
        self.inner.up.store(true, Ordering::Relaxed);
        self.wait_reachable().await?;
        Ok(())
    }

    /// Adds `one_way` latency in each direction of a link to the ISP (a
    /// router's WAN or a public host's link), creating its delay line on
    /// first use (see [`Internet`]). The delay applies to everything through
    /// the link, including traffic to the ISP's own addresses.
    ///
    /// Verified (when the link is up) with 20 UDP probes from the host to an
    /// echo on [`ISP_ADDR`]: the median round trip must be at least
    /// `2 × one_way − 2 ms` and at most `3 × one_way + 100 ms`. Returns the
    /// measurement.
    ///
    /// # Errors
    /// [`LabError::InvalidArgument`] on a LAN host's link (no delay line
    /// there: its router's NAT would see packets twice).
    pub async fn set_delay(&self, one_way: Duration) -> Result<Option<Probe>> {
        let inner = &self.inner;
        let Some((internet, k)) = &inner.internet else {
            return Err(LabError::InvalidArgument(format!(
                "the link of LAN host `{}` cannot be delayed; delay its router's uplink",
                inner.host.name()
            )));
        };
        {
            let _setup = inner.delay_setup.lock().await;
            match self.control() {
                Some(control) => control.set_delay(one_way),
                None => {
                    let control = DelayControl::new(one_way);
                    install_delay_line(internet, *k, inner.addr, &control).await?;
                    *lock(&inner.delay) = Some(control);
                }
            }
        }
        if !self.is_up() {
            return Ok(None);
        }
        let what = format!("uplink of `{}`", inner.host.name());
        let probe =
            verify_round_trip(&inner.host, &inner.peer, inner.gateway, one_way, &what).await?;
        Ok(Some(probe))
    }

    /// Both ends of the link, the host's first.
    fn ends(&self) -> [(&Host, &str); 2] {
        let inner = &self.inner;
        [
            (&inner.host, &inner.ifname),
            (&inner.peer, &inner.peer_ifname),
        ]
    }

    /// (Re)installs the host's default route via the gateway (the kernel
    /// flushes it when the interface goes down).
    fn restore_route(&self) -> Result<()> {
        let inner = &self.inner;
        inner.host.ip(&[
            "route",
            "replace",
            "default",
            "via",
            &inner.gateway.to_string(),
            "dev",
            &inner.ifname,
        ])?;
        Ok(())
    }

    async fn wait_reachable(&self) -> Result<Duration> {
        let inner = &self.inner;
        let timeout = UP_TIMEOUT + self.delay() * 4;
        wait_udp_reachable(&inner.host, &inner.peer, inner.gateway, timeout).await
    }
}

/// Creates the TUN device `t<k>` in the ISP with its delay line, and the
/// policy routing that sends attachment `k`'s traffic through it once per
/// direction (see [`RULE_DELIVER`] and the following constants).
async fn install_delay_line(
    internet: &Internet,
    k: u32,
    addr: Ipv4Addr,
    control: &Arc<DelayControl>,
) -> Result<()> {
    let isp = internet.isp();
    let tun = format!("t{k}");
    let table = (100 + k).to_string();
    let to = format!("{addr}/32");
    start_delay_line(isp, &tun, Arc::clone(control)).await?;
    isp.sysctls(&[
        (format!("net/ipv4/conf/{tun}/rp_filter"), "0"),
        (format!("net/ipv6/conf/{tun}/disable_ipv6"), "1"),
    ])?;
    isp.ip(&["link", "set", "dev", &tun, "up"])?;
    // `src`: replies of unbound sockets in the ISP must come from the
    // address the uplink's host talks to.
    isp.ip(&[
        "route",
        "replace",
        "default",
        "dev",
        &tun,
        "src",
        &ISP_ADDR.to_string(),
        "table",
        &table,
    ])?;
    let from_uplink = format!("i{k}");
    let mut rules: Vec<Vec<&str>> = vec![vec![
        "iif",
        &tun,
        "to",
        &to,
        "lookup",
        "main",
        "priority",
        RULE_DELIVER,
    ]];
    // Limited to the protocols that matter: ARP requests from the uplink
    // for the ISP's address are routed with protocol 0 and must find the
    // local table, or the ISP stops answering them.
    for proto in ["udp", "tcp", "icmp"] {
        rules.push(vec![
            "iif",
            &from_uplink,
            "ipproto",
            proto,
            "lookup",
            &table,
            "priority",
            RULE_FROM_UPLINK,
        ]);
    }
    rules.push(vec![
        "to",
        &to,
        "lookup",
        &table,
        "priority",
        RULE_TO_UPLINK,
    ]);
    for rule in rules {
        let mut args = vec!["rule", "add"];
        args.extend(rule);
        isp.ip(&args)?;
    }
    tracing::debug!(
        internet = internet.inner.id,
        attachment = k,
        "lab: uplink delay line installed"
    );
    Ok(())
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}
