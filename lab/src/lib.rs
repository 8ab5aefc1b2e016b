//! # atmosphere-lab: a network-namespace lab for tests
//!
//! Builds small, isolated IPv4 networks out of Linux network namespaces so
//! tests can run real sockets (libp2p swarms, TCP, QUIC) across links that go
//! down, lose packets, are rate-limited, or add latency — and can *measure*
//! that each impairment really is in effect.
//!
//! ```no_run
//! use std::time::Duration;
//! use atmosphere_lab::{require_lab, Lab};
//!
//! #[tokio::test]
//! async fn survives_loss() {
//!     require_lab!();
//!     let lab = Lab::new().unwrap();
//!     let a = lab.add_host("a").unwrap();
//!     let b = lab.add_host("b").unwrap();
//!     let link = lab.link(&a, &b).await.unwrap();
//!     link.set_loss(5).await.unwrap(); // returns only once 5 % is measured
//!     let addr = link.b_addr();
//!     let server = b.spawn(async move { /* listen on `addr` */ });
//!     let client = a.spawn(async move { /* connect to `addr` */ });
//!     # let _ = (server, client, Duration::ZERO);
//! }
//! ```
//!
//! ## Design
//!
//! * **[`Lab`]** owns everything. Its namespaces are named `atl<pid>-<n>-<host>`
//!   (a process-wide counter `n`), so labs in parallel test threads or
//!   processes never clash. Dropping it deletes them all.
//! * **[`Host`]** is a namespace with `lo` up and forwarding off, plus a
//!   lazily started tokio runtime (2 workers) whose threads all live in the
//!   namespace: a dedicated OS thread enters it with `setns(2)` and builds the
//!   runtime, so workers inherit it, and every runtime thread re-enters it on
//!   start (blocking-pool threads can be started by foreign threads).
//!   [`Host::spawn`] returns a join handle the test awaits from its own
//!   runtime; sockets opened by the spawned future are in the host's namespace.
//! * **[`Link`]**: a veth pair whose ends are created directly inside the two
//!   namespaces (interface names only need to be unique per namespace, and stay
//!   under the 15-byte limit). Each link has its own `/24`; IPv6 is disabled on
//!   lab interfaces, so taking a link down and up never loses addresses.
//! * **Impairments** are all verified by measurement before the call returns:
//!   loss with nftables random drop on the receiving side (an `input` hook; an
//!   `output` hook would make the sender see `EPERM`), rate with `tbf`, latency
//!   with a userspace delay line on a TUN device in a router namespace
//!   ([`DelayedLink`]) because this kernel has no `tc netem`.
//! * **Measurements** ([`udp_rtt_and_loss`], [`udp_probe`],
//!   [`tcp_throughput_kbit`]) run in-process on the hosts' runtimes; no `ping`
//!   or `iperf` binary is needed.
//! * **NAT** ([`Lab::internet`]): an ISP namespace with public hosts and home
//!   routers ([`NatRouter`]) NATing private LANs with nftables, either
//!   endpoint-independently or symmetrically ([`NatKind`]); uplinks can be
//!   cut and delayed ([`Uplink`]). Building a host behind a router verifies
//!   the NAT by measurement ([`NatRouter::verify_host`]); [`Reflector`],
//!   [`observed_udp_addr`], [`can_initiate`] and [`udp_hole_punch`] are the
//!   helpers tests use for the same checks.
//!
//! ```no_run
//! use std::time::Duration;
//! use atmosphere_lab::{require_lab, udp_hole_punch, Lab, NatKind, Reflector};
//!
//! #[tokio::test]
//! async fn punches_through() {
//!     require_lab!();
//!     let lab = Lab::new().unwrap();
//!     let internet = lab.internet().await.unwrap();
//!     let relay = internet.add_public_host("relay").await.unwrap();
//!     let home_a = internet.add_router("home-a", NatKind::EndpointIndependent).await.unwrap();
//!     let home_b = internet.add_router("home-b", NatKind::EndpointIndependent).await.unwrap();
//!     home_a.uplink().set_delay(Duration::from_millis(50)).await.unwrap();
//!     let alice = home_a.add_host("alice").await.unwrap(); // NAT verified here
//!     let bob = home_b.add_host("bob").await.unwrap();
//!     let reflector = Reflector::start(relay.host(), relay.addr()).await.unwrap();
//!     let punch = udp_hole_punch(alice.host(), bob.host(), reflector.addr(), Duration::from_secs(3))
//!         .await
//!         .unwrap();
//!     assert!(punch.succeeded());
//! }
//! ```
//!
//! ## Requirements
//!
//! Root (or `CAP_NET_ADMIN` + `CAP_SYS_ADMIN` with uid 0), the `ip`, `nft` and
//! `tc` binaries, and `/dev/net/tun`. [`unavailable_reason`] says what is
//! missing; [`require_lab!`] turns that into a skipped test locally and a
//! failed one in CI.

#![deny(missing_docs)]

mod cmd;
mod delay;
mod error;
mod host;
mod lab;
mod link;
mod measure;
mod nat;
mod natcheck;

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::OnceLock;

pub use delay::{DelayedLink, MAX_QUEUED_PACKETS};
pub use error::{LabError, Result};
pub use host::Host;
pub use lab::{Lab, MAX_HOST_NAME};
pub use link::Link;
pub use measure::{
    tcp_throughput_kbit, udp_probe, udp_rtt_and_loss, wait_udp_reachable, Probe, ProbeConfig,
};
pub use nat::{
    Device, Internet, NatCheck, NatKind, NatRouter, Uplink, ISP_ADDR, ISP_SECOND_ADDR,
    MAX_ATTACHMENTS, MAX_LAN_HOSTS,
};
pub use natcheck::{
    can_initiate, observed_tcp_addr, observed_udp_addr, observed_udp_addrs, udp_hole_punch,
    HolePunch, Initiation, Reflector, UdpMapping, OBSERVE_TIMEOUT,
};

/// Why the lab cannot run on this machine, or `None` if it can.
///
/// Checks, in order: effective uid 0; `ip`, `nft` and `tc` on `PATH`;
/// `/dev/net/tun` present; and finally that a network namespace can really be
/// created and deleted (root inside an unprivileged container cannot). The
/// answer is computed once per process.
pub fn unavailable_reason() -> Option<String> {
    static REASON: OnceLock<Option<String>> = OnceLock::new();
    REASON.get_or_init(compute_unavailable_reason).clone()
}

fn compute_unavailable_reason() -> Option<String> {
    // SAFETY: geteuid has no preconditions.
    let euid = unsafe { libc::geteuid() };
    if euid != 0 {
        return Some(format!(
            "the network lab needs root (running as uid {euid})"
        ));
    }
    let missing: Vec<&str> = ["ip", "nft", "tc"]
        .into_iter()
        .filter(|program| !cmd::have_program(program))
        .collect();
    if !missing.is_empty() {
        return Some(format!(
            "the network lab needs {} on PATH (apt-get install iproute2 nftables)",
            missing.join(", ")
        ));
    }
    if !std::path::Path::new("/dev/net/tun").exists() {
        return Some("the network lab needs /dev/net/tun (TUN driver)".into());
    }
    static PROBE: AtomicU32 = AtomicU32::new(0);
    let probe = format!(
        "{}{}-probe{}",
        lab::NETNS_PREFIX,
        std::process::id(),
        PROBE.fetch_add(1, Ordering::Relaxed)
    );
    if let Err(e) = cmd::run(&["ip", "netns", "add", &probe], None) {
        return Some(format!("cannot create network namespaces: {e}"));
    }
    let _ = cmd::run(&["ip", "netns", "del", &probe], None);
    None
}

/// Whether the environment says we run in CI (`CI` is `true` or `1`, in any
/// case), where lab tests must not be skipped.
pub fn in_ci() -> bool {
    std::env::var("CI")
        .map(|value| {
            let value = value.trim();
            value.eq_ignore_ascii_case("true") || value == "1"
        })
        .unwrap_or(false)
}

/// First statement of a lab test: returns early (skipping the test, with a
/// note on stderr) when the lab cannot run here — unless [`in_ci`], where it
/// panics with the reason, because lab tests must never be skipped silently
/// in CI.
///
/// Use it in functions returning `()` (plain or `async` tests).
///
/// ```no_run
/// #[test]
/// fn lab_test() {
///     atmosphere_lab::require_lab!();
///     let lab = atmosphere_lab::Lab::new().unwrap();
/// }
/// ```
#[macro_export]
macro_rules! require_lab {
    () => {
        if let ::std::option::Option::Some(reason) = $crate::unavailable_reason() {
            if $crate::in_ci() {
                ::std::panic!("network lab required in CI but unavailable: {reason}");
            }
            ::std::eprintln!("skipping: {reason}");
            return;
        }
    };
}
