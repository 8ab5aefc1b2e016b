//! Direct links (veth pairs) and the impairment helpers shared with delayed
//! links: nftables random loss, tbf rate limits, and their verification.

use std::future::Future;
use std::net::Ipv4Addr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use crate::error::{LabError, Result};
use crate::host::Host;
use crate::measure::{tcp_throughput_kbit, udp_rtt_and_loss, wait_udp_reachable, Probe};

/// Probes sent to verify a loss setting.
pub(crate) const LOSS_PROBES: usize = 400;

/// How long `up()` waits for a link to carry traffic again.
pub(crate) const UP_TIMEOUT: Duration = Duration::from_secs(5);

/// Mutable state of a link, shared by its clones.
#[derive(Debug, Clone, Copy)]
pub(crate) struct LinkState {
    pub(crate) up: bool,
    pub(crate) loss: u8,
    pub(crate) rate_kbit: Option<u32>,
}

impl LinkState {
    /// Whether a measurement across the link can get through: it is up and
    /// not fully lossy.
    pub(crate) fn carries_traffic(&self) -> bool {
        self.up && self.loss < 100
    }
}

impl Default for LinkState {
    fn default() -> Self {
        LinkState {
            up: true,
            loss: 0,
            rate_kbit: None,
        }
    }
}

pub(crate) fn lock(state: &Mutex<LinkState>) -> MutexGuard<'_, LinkState> {
    state
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Applies `change` to a link's state and returns the state after it.
pub(crate) fn update_state(
    state: &Mutex<LinkState>,
    change: impl FnOnce(&mut LinkState),
) -> LinkState {
    let mut state = lock(state);
    change(&mut state);
    *state
}

/// A direct link between two hosts: a veth pair with one end in each
/// namespace, its own `/24` (`.1` on the a side, `.2` on the b side), IPv4
/// only.
///
/// `Link` is a handle; clones control the same link. Dropping it does not
/// remove the link (the lab does, when dropped).
///
/// All mutators are `async` and *verify* their effect with a measurement
/// before returning (see each method). They run `ip`/`nft`/`tc` commands
/// synchronously, blocking the calling thread for a few milliseconds per
/// command; the measurements themselves run on the hosts' runtimes, so the
/// futures can be awaited from any executor.
#[derive(Clone)]
pub struct Link {
    inner: Arc<LinkInner>,
}

struct LinkInner {
    a: Host,
    b: Host,
    a_if: String,
    b_if: String,
    a_addr: Ipv4Addr,
    b_addr: Ipv4Addr,
    /// nftables table holding the loss rule on both ends.
    table: String,
    state: Mutex<LinkState>,
}

impl std::fmt::Debug for Link {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Link")
            .field("a", &self.inner.a.name())
            .field("a_if", &self.inner.a_if)
            .field("a_addr", &self.inner.a_addr)
            .field("b", &self.inner.b.name())
            .field("b_if", &self.inner.b_if)
            .field("b_addr", &self.inner.b_addr)
            .field("state", &*lock(&self.inner.state))
            .finish()
    }
}

impl Link {
    /// Creates the veth pair and configures both ends (called by
    /// [`Lab::link`](crate::Lab::link)).
    pub(crate) async fn create(a: &Host, b: &Host, id: u32, subnet: [u8; 3]) -> Result<Link> {
        let a_if = format!("l{id}a");
        let b_if = format!("l{id}b");
        let [x, y, z] = subnet;
        let a_addr = Ipv4Addr::new(x, y, z, 1);
        let b_addr = Ipv4Addr::new(x, y, z, 2);
        create_veth(a, &a_if, b, &b_if)?;
        configure_end(a, &a_if, a_addr)?;
        configure_end(b, &b_if, b_addr)?;
        wait_udp_reachable(a, b, b_addr, UP_TIMEOUT).await?;
        Ok(Link {
            inner: Arc::new(LinkInner {
                a: a.clone(),
                b: b.clone(),
                a_if,
                b_if,
                a_addr,
                b_addr,
                table: format!("lab_l{id}"),
                state: Mutex::new(LinkState::default()),
            }),
        })
    }

    /// The host on the a side.
    pub fn a(&self) -> &Host {
        &self.inner.a
    }

    /// The host on the b side.
    pub fn b(&self) -> &Host {
        &self.inner.b
    }

    /// The a side's address on this link (`10.x.y.1`).
    pub fn a_addr(&self) -> Ipv4Addr {
        self.inner.a_addr
    }

    /// The b side's address on this link (`10.x.y.2`).
    pub fn b_addr(&self) -> Ipv4Addr {
        self.inner.b_addr
    }

    /// The interface name in a's namespace (`l<n>a`).
    pub fn a_ifname(&self) -> &str {
        &self.inner.a_if
    }

    /// The interface name in b's namespace (`l<n>b`).
    pub fn b_ifname(&self) -> &str {
        &self.inner.b_if
    }

    /// Whether the link is up (as last set by [`Link::down`] / [`Link::up`]).
    pub fn is_up(&self) -> bool {
        lock(&self.inner.state).up
    }

    /// The loss currently configured, in percent per direction.
    pub fn loss_percent(&self) -> u8 {
        lock(&self.inner.state).loss
    }

    /// The rate limit currently configured, in kbit/s per direction.
    pub fn rate_kbit(&self) -> Option<u32> {
        lock(&self.inner.state).rate_kbit
    }

    /// Sets both ends administratively down. Addresses stay configured (IPv6
    /// is off, so nothing is flushed); sends towards the peer fail with
    /// "network unreachable" until [`Link::up`].
    ///
    /// Verified by reading the interfaces' flags back.
    pub async fn down(&self) -> Result<()> {
        set_ends_state(self.ends(), false)?;
        update_state(&self.inner.state, |state| state.up = false);
        Ok(())
    }

    /// Sets both ends up again and waits (up to 5 s) until the link carries
    /// traffic: a UDP probe from a to b must be answered. (With 100 % loss
    /// configured, only the interface flags are checked.)
    pub async fn up(&self) -> Result<()> {
        let inner = &self.inner;
        set_ends_state(self.ends(), true)?;
        if update_state(&inner.state, |state| state.up = true).carries_traffic() {
            wait_udp_reachable(&inner.a, &inner.b, inner.b_addr, UP_TIMEOUT).await?;
        }
        Ok(())
    }

    /// Drops `percent` % of the packets arriving on each end (an nftables
    /// `input`-hook rule in both namespaces, `meta iifname <veth> numgen
    /// random mod 100 < N drop`); `0` removes the rule.
    ///
    /// Verified (when the link is up) by sending 400 UDP probes from a to b:
    /// the round-trip loss must be near `1 - (1 - p)²`, within four standard
    /// deviations plus 3 points; returns the measurement.
    pub async fn set_loss(&self, percent: u8) -> Result<Option<Probe>> {
        check_percent(percent)?;
        let inner = &self.inner;
        apply_loss(&inner.a, &inner.table, "input", &[&inner.a_if], percent)?;
        apply_loss(&inner.b, &inner.table, "input", &[&inner.b_if], percent)?;
        let measure = udp_rtt_and_loss(&inner.a, &inner.b, inner.b_addr, LOSS_PROBES);
        record_and_verify_loss(&inner.state, percent, "link", measure).await
    }

    /// Limits each direction to `kbit` kbit/s with a token bucket
    /// (`tc qdisc replace dev <veth> root tbf …` on both ends, so it shapes
    /// each end's egress). Allowed range: 64 kbit/s to 10 Gbit/s.
    ///
    /// Verified (when the link is up and not fully lossy) by two concurrent
    /// TCP transfers, a→b and b→a: each must measure below 1.5 × `kbit`.
    /// Returns the measured rates `(a→b, b→a)` in kbit/s.
    pub async fn set_rate(&self, kbit: u32) -> Result<Option<(f64, f64)>> {
        let inner = &self.inner;
        let measured = ((&inner.a, inner.a_addr), (&inner.b, inner.b_addr));
        set_rate_on(self.ends(), &inner.state, measured, kbit).await
    }

    /// Removes the rate limit from both ends; verified by reading the qdisc
    /// configuration back.
    pub async fn clear_rate(&self) -> Result<()> {
        clear_rate_on(self.ends(), &self.inner.state)
    }

    /// Both ends of the veth pair: each host with its interface.
    fn ends(&self) -> [(&Host, &str); 2] {
        let inner = &self.inner;
        [(&inner.a, &inner.a_if), (&inner.b, &inner.b_if)]
    }
}

/// Creates a veth pair whose ends are born directly inside the two
/// namespaces, so names never meet in the root namespace.
pub(crate) fn create_veth(a: &Host, a_if: &str, b: &Host, b_if: &str) -> Result<()> {
    crate::cmd::run(
        &[
            "ip",
            "link",
            "add",
            a_if,
            "netns",
            a.netns(),
            "type",
            "veth",
            "peer",
            "name",
            b_if,
            "netns",
            b.netns(),
        ],
        None,
    )?;
    Ok(())
}

/// Disables IPv6 on an interface, adds its `/24` address and brings it up.
pub(crate) fn configure_end(host: &Host, ifname: &str, addr: Ipv4Addr) -> Result<()> {
    host.sysctls(&[(format!("net/ipv6/conf/{ifname}/disable_ipv6"), "1")])?;
    host.ip(&["addr", "add", &format!("{addr}/24"), "dev", ifname])?;
    host.ip(&["link", "set", "dev", ifname, "up"])?;
    Ok(())
}

/// Sets an interface up or down and checks the flag took.
fn set_if_state(host: &Host, ifname: &str, up: bool) -> Result<()> {
    let word = if up { "up" } else { "down" };
    host.ip(&["link", "set", "dev", ifname, word])?;
    let shown = host.ip(&["-o", "link", "show", "dev", ifname])?;
    if admin_up(&shown) != up {
        return Err(LabError::Verification(format!(
            "interface {ifname} in host `{}` did not go {word}: {}",
            host.name(),
            shown.trim()
        )));
    }
    Ok(())
}

/// Sets each of `ends` (a host and its interface), in order, up or down with
/// [`set_if_state`].
pub(crate) fn set_ends_state(ends: [(&Host, &str); 2], up: bool) -> Result<()> {
    for (host, ifname) in ends {
        set_if_state(host, ifname, up)?;
    }
    Ok(())
}

/// Whether `ip -o link show` output has the `UP` (administrative) flag.
fn admin_up(shown: &str) -> bool {
    shown
        .split_once('<')
        .and_then(|(_, rest)| rest.split_once('>'))
        .map(|(flags, _)| flags.split(',').any(|flag| flag == "UP"))
        .unwrap_or(false)
}

pub(crate) fn check_percent(percent: u8) -> Result<()> {
    if percent > 100 {
        return Err(LabError::InvalidArgument(format!(
            "loss must be 0..=100 %, got {percent}"
        )));
    }
    Ok(())
}

fn check_rate(kbit: u32) -> Result<()> {
    if !(64..=10_000_000).contains(&kbit) {
        return Err(LabError::InvalidArgument(format!(
            "rate must be 64..=10000000 kbit/s, got {kbit}"
        )));
    }
    Ok(())
}

/// (Re)writes the nftables table `table` in `host`: one base chain on `hook`
/// dropping `percent` % of the packets arriving on `ifnames`. With `percent`
/// 0 the table is removed. Done in one atomic `nft -f` transaction.
pub(crate) fn apply_loss(
    host: &Host,
    table: &str,
    hook: &str,
    ifnames: &[&str],
    percent: u8,
) -> Result<()> {
    // Declaring the table first makes the delete succeed even if it is absent.
    let mut script = format!("table inet {table} {{}}\ndelete table inet {table}\n");
    if percent > 0 {
        let names = ifnames
            .iter()
            .map(|name| format!("\"{name}\""))
            .collect::<Vec<_>>()
            .join(", ");
        script.push_str(&format!(
            "table inet {table} {{\n  chain impair {{\n    type filter hook {hook} priority -10; policy accept;\n    meta iifname {{ {names} }} numgen random mod 100 < {percent} drop\n  }}\n}}\n"
        ));
    }
    host.exec_with_stdin(&["nft", "-f", "-"], &script)?;
    Ok(())
}

/// Installs (`Some`) or removes (`None`) a tbf root qdisc on `ifname`, then
/// reads the qdisc configuration back to check.
fn apply_rate(host: &Host, ifname: &str, kbit: Option<u32>) -> Result<()> {
    match kbit {
        Some(kbit) => {
            let (burst, latency) = tbf_params(kbit);
            host.exec(&[
                "tc",
                "qdisc",
                "replace",
                "dev",
                ifname,
                "root",
                "tbf",
                "rate",
                &format!("{kbit}kbit"),
                "burst",
                &burst.to_string(),
                "latency",
                &format!("{}ms", latency.as_millis()),
            ])?;
        }
        None => {
            // Fails when there is no root qdisc to delete: that is the goal.
            let _ = host.exec(&["tc", "qdisc", "del", "dev", ifname, "root"]);
        }
    }
    let shown = host.exec(&["tc", "qdisc", "show", "dev", ifname])?;
    if shown.contains("tbf") != kbit.is_some() {
        return Err(LabError::Verification(format!(
            "rate limit on {ifname} in host `{}` not {}: {}",
            host.name(),
            if kbit.is_some() {
                "installed"
            } else {
                "removed"
            },
            shown.trim()
        )));
    }
    Ok(())
}

/// Applies [`apply_rate`] with `kbit` to each of `shaped` (a host and its
/// interface), in order.
fn apply_rates(shaped: [(&Host, &str); 2], kbit: Option<u32>) -> Result<()> {
    for (host, ifname) in shaped {
        apply_rate(host, ifname, kbit)?;
    }
    Ok(())
}

/// `set_rate` of either kind of link: limits each of `shaped` to `kbit`
/// kbit/s, records the limit in `state` and, if the link carries traffic,
/// verifies it between the two `measured` ends (host and address, a then b).
pub(crate) async fn set_rate_on(
    shaped: [(&Host, &str); 2],
    state: &Mutex<LinkState>,
    measured: ((&Host, Ipv4Addr), (&Host, Ipv4Addr)),
    kbit: u32,
) -> Result<Option<(f64, f64)>> {
    check_rate(kbit)?;
    apply_rates(shaped, Some(kbit))?;
    if !update_state(state, |state| state.rate_kbit = Some(kbit)).carries_traffic() {
        return Ok(None);
    }
    let (a, b) = measured;
    let rates = verify_rate(a, b, kbit).await?;
    Ok(Some(rates))
}

/// `clear_rate` of either kind of link: removes the limit from each of
/// `shaped` and records that in `state`.
pub(crate) fn clear_rate_on(shaped: [(&Host, &str); 2], state: &Mutex<LinkState>) -> Result<()> {
    apply_rates(shaped, None)?;
    update_state(state, |state| state.rate_kbit = None);
    Ok(())
}

/// tbf burst (bytes) and queue latency for a rate: the bucket holds 10 ms of
/// traffic but at least two full-size frames; 50 ms of queue.
fn tbf_params(kbit: u32) -> (u64, Duration) {
    let bytes_per_10ms = u64::from(kbit) * 1000 / 8 / 100;
    (bytes_per_10ms.max(3200), Duration::from_millis(50))
}

/// Measurement window for a rate check: long enough that the token bucket's
/// initial burst adds at most a sixth of the expected volume.
fn rate_window(kbit: u32) -> Duration {
    let (burst, _) = tbf_params(kbit);
    let bytes_per_sec = f64::from(kbit) * 1000.0 / 8.0;
    Duration::from_secs_f64((6.0 * burst as f64 / bytes_per_sec).max(0.6))
}

/// The end of `set_loss` of either kind of link: records `percent` in
/// `state` and, if the link is up, awaits `measure` and checks the probe
/// against it with [`check_loss`] (`what` names the link in errors).
pub(crate) async fn record_and_verify_loss(
    state: &Mutex<LinkState>,
    percent: u8,
    what: &str,
    measure: impl Future<Output = Result<Probe>>,
) -> Result<Option<Probe>> {
    if !update_state(state, |state| state.loss = percent).up {
        return Ok(None);
    }
    let probe = measure.await?;
    check_loss(percent, &probe, what)?;
    Ok(Some(probe))
}

/// Checks a round-trip loss measurement against `percent` per direction.
fn check_loss(percent: u8, probe: &Probe, what: &str) -> Result<()> {
    let p = f64::from(percent) / 100.0;
    let expected = 1.0 - (1.0 - p) * (1.0 - p);
    let measured = probe.loss();
    let n = probe.sent.max(1) as f64;
    let tolerance = 4.0 * (expected * (1.0 - expected) / n).sqrt() + 0.03;
    if (measured - expected).abs() > tolerance {
        return Err(LabError::Verification(format!(
            "{what} loss set to {percent}% per direction: expected round-trip loss ≈{:.1}% (±{:.1}), measured {:.1}% ({} of {} probes answered)",
            expected * 100.0,
            tolerance * 100.0,
            measured * 100.0,
            probe.received,
            probe.sent
        )));
    }
    Ok(())
}

/// Measures both directions at once and checks them against `kbit`.
async fn verify_rate(
    (a, a_addr): (&Host, Ipv4Addr),
    (b, b_addr): (&Host, Ipv4Addr),
    kbit: u32,
) -> Result<(f64, f64)> {
    let window = rate_window(kbit);
    let (forward, backward) = tokio::join!(
        tcp_throughput_kbit(a, b, b_addr, window),
        tcp_throughput_kbit(b, a, a_addr, window)
    );
    let (forward, backward) = (forward?, backward?);
    let limit = f64::from(kbit) * 1.5;
    for (direction, measured) in [("a→b", forward), ("b→a", backward)] {
        if measured > limit || measured <= 0.0 {
            return Err(LabError::Verification(format!(
                "rate limit {kbit} kbit/s: measured {measured:.0} kbit/s {direction} (accepted: above 0, at most {limit:.0})"
            )));
        }
    }
    Ok((forward, backward))
}
