//! The lab: owner of namespaces, allocator of names and subnets.

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, Once, Weak};
use std::time::Duration;

use crate::cmd;
use crate::delay::DelayedLink;
use crate::error::{LabError, Result};
use crate::host::Host;
use crate::link::Link;
use crate::nat::Internet;

/// Prefix of every namespace a lab creates: `atl<pid>-…`.
pub(crate) const NETNS_PREFIX: &str = "atl";

/// Longest host name accepted by [`Lab::add_host`].
pub const MAX_HOST_NAME: usize = 16;

/// Process-wide lab counter, part of each lab's namespace prefix.
static NEXT_LAB: AtomicU32 = AtomicU32::new(0);

/// A set of network namespaces ("hosts") joined by links, torn down on drop.
///
/// Every lab gets a unique prefix, `atl<pid>-<n>`, so labs in parallel test
/// threads (and processes) never clash: host `a` of lab 3 in process 4242 is
/// namespace `atl4242-3-a`. Links get unique interface names and subnets
/// within the lab (`10.1.0.0/24`, `10.1.1.0/24`, …); labs may reuse subnets
/// since they never share a namespace.
///
/// Dropping the lab shuts down every host's runtime (in the background: safe
/// inside a running tokio runtime) and deletes every namespace it created
/// (`ip netns del`), ignoring errors. The first lab of a process also removes
/// namespaces left behind by earlier, crashed processes (`atl<pid>-…` whose
/// process is gone).
///
/// All methods take `&self`; a lab can be shared by reference across tasks.
pub struct Lab {
    prefix: String,
    state: Arc<Mutex<LabState>>,
}

#[derive(Default)]
struct LabState {
    hosts: Vec<Host>,
    next_link: u32,
    next_subnet: u32,
    next_internet: u32,
    /// Set when the lab is dropped: handles may no longer add hosts.
    closed: bool,
}

/// A weak reference to a lab, held by topologies ([`Internet`],
/// [`NatRouter`](crate::NatRouter)) that add hosts after the lab was built.
/// Adding a host through it fails once the lab is dropped.
#[derive(Clone)]
pub(crate) struct LabHandle {
    prefix: String,
    state: Weak<Mutex<LabState>>,
}

impl LabHandle {
    /// [`Lab::add_host`] through the handle.
    pub(crate) fn add_host(&self, name: &str) -> Result<Host> {
        add_host(&self.prefix, &*self.state()?, name)
    }

    /// Creates an internal host (router, ISP) whose name starts with `_`.
    pub(crate) fn add_internal_host(&self, name: &str) -> Result<Host> {
        create_host(
            &*self.state()?,
            name.to_string(),
            format!("{}{name}", self.prefix),
        )
    }

    fn state(&self) -> Result<Arc<Mutex<LabState>>> {
        self.state
            .upgrade()
            .ok_or_else(|| LabError::InvalidArgument(format!("lab {} was dropped", self.prefix)))
    }
}

impl std::fmt::Debug for Lab {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let names: Vec<String> = self
            .lock()
            .hosts
            .iter()
            .map(|h| h.netns().to_string())
            .collect();
        f.debug_struct("Lab")
            .field("prefix", &self.prefix)
            .field("hosts", &names)
            .finish()
    }
}

impl Lab {
    /// Creates an empty lab with a fresh prefix.
    ///
    /// # Errors
    /// [`LabError::Unavailable`] when [`unavailable_reason`](crate::unavailable_reason)
    /// has a reason.
    pub fn new() -> Result<Lab> {
        if let Some(reason) = crate::unavailable_reason() {
            return Err(LabError::Unavailable(reason));
        }
        static CLEANUP: Once = Once::new();
        CLEANUP.call_once(remove_stale_namespaces);
        let prefix = format!(
            "{NETNS_PREFIX}{}-{}",
            std::process::id(),
            NEXT_LAB.fetch_add(1, Ordering::Relaxed)
        );
        Ok(Lab {
            prefix,
            state: Arc::new(Mutex::new(LabState::default())),
        })
    }

    /// The lab's namespace prefix (`atl<pid>-<n>`).
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// The hosts created so far, including the routers of delayed links and
    /// the ISPs of internets.
    pub fn hosts(&self) -> Vec<Host> {
        self.lock().hosts.clone()
    }

    /// Creates a host: a namespace `<prefix>-<name>` with `lo` up, IPv4
    /// forwarding off, and IPv6 disabled on interfaces created later (`lo`
    /// keeps `::1`).
    ///
    /// `name` must be 1 to [`MAX_HOST_NAME`] characters of ASCII letters,
    /// digits, `-` and `_`, unique within the lab.
    pub fn add_host(&self, name: &str) -> Result<Host> {
        add_host(&self.prefix, &self.state, name)
    }

    /// Connects two hosts of this lab with a direct [`Link`]: a veth pair on a
    /// fresh `/24`, `.1` on `a`, `.2` on `b`, both ends up. Returns once a UDP
    /// probe from `a` to `b` over the link has been answered.
    pub async fn link(&self, a: &Host, b: &Host) -> Result<Link> {
        self.check_pair(a, b)?;
        let (id, subnet) = {
            let mut state = self.lock();
            let id = state.next_link;
            state.next_link += 1;
            (id, allocate_subnet(&mut state)?)
        };
        Link::create(a, b, id, subnet).await
    }

    /// Connects two hosts through a router namespace running a userspace
    /// delay line adding `one_way` latency in each direction (see
    /// [`DelayedLink`]). Returns once a UDP round trip a→b is at least
    /// `2 × one_way` (minus 2 ms).
    pub async fn delayed_link(&self, a: &Host, b: &Host, one_way: Duration) -> Result<DelayedLink> {
        self.check_pair(a, b)?;
        let (id, subnets) = {
            let mut state = self.lock();
            let id = state.next_link;
            state.next_link += 1;
            let first = allocate_subnet(&mut state)?;
            (id, (first, allocate_subnet(&mut state)?))
        };
        // '_' cannot follow the lab number in user hosts' namespace names
        // (they use '-'), so routers never clash with hosts.
        let router = self.handle().add_internal_host(&format!("_r{id}"))?;
        DelayedLink::create(a, b, router, id, subnets, one_way).await
    }

    /// Creates a simulated public internet: an ISP router namespace on which
    /// public hosts and NAT routers are attached (see [`Internet`]). A lab
    /// may hold several independent internets.
    pub async fn internet(&self) -> Result<Internet> {
        let id = {
            let mut state = self.lock();
            let id = state.next_internet;
            state.next_internet += 1;
            id
        };
        Internet::create(self.handle(), id).await
    }

    /// A weak handle for topologies that add hosts later.
    pub(crate) fn handle(&self) -> LabHandle {
        LabHandle {
            prefix: self.prefix.clone(),
            state: Arc::downgrade(&self.state),
        }
    }

    fn check_pair(&self, a: &Host, b: &Host) -> Result<()> {
        if a == b {
            return Err(LabError::InvalidArgument(format!(
                "cannot link host `{}` to itself",
                a.name()
            )));
        }
        let state = self.lock();
        for host in [a, b] {
            if !state.hosts.contains(host) {
                return Err(LabError::InvalidArgument(format!(
                    "host `{}` ({}) does not belong to lab {}",
                    host.name(),
                    host.netns(),
                    self.prefix
                )));
            }
        }
        Ok(())
    }

    fn lock(&self) -> MutexGuard<'_, LabState> {
        lock_state(&self.state)
    }
}

fn lock_state(state: &Mutex<LabState>) -> MutexGuard<'_, LabState> {
    state
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// [`Lab::add_host`] on the lab's shared state.
fn add_host(prefix: &str, state: &Mutex<LabState>, name: &str) -> Result<Host> {
    let valid = !name.is_empty()
        && name.len() <= MAX_HOST_NAME
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_');
    if !valid {
        return Err(LabError::InvalidArgument(format!(
            "host name {name:?}: use 1..={MAX_HOST_NAME} ASCII letters, digits, '-' or '_'"
        )));
    }
    if lock_state(state).hosts.iter().any(|h| h.name() == name) {
        return Err(LabError::InvalidArgument(format!(
            "host name {name:?} already used in this lab"
        )));
    }
    create_host(state, name.to_string(), format!("{prefix}-{name}"))
}

/// Creates and registers namespace `netns` for a host called `name`.
fn create_host(state: &Mutex<LabState>, name: String, netns: String) -> Result<Host> {
    if lock_state(state).closed {
        return Err(LabError::InvalidArgument(format!(
            "cannot add host {name:?}: the lab was dropped"
        )));
    }
    cmd::run(&["ip", "netns", "add", &netns], None)?;
    let host = Host::new(name, netns);
    // Registered before configuring, so a failure below still cleans up.
    {
        let mut state = lock_state(state);
        if state.closed {
            drop(state);
            let _ = cmd::run(&["ip", "netns", "del", host.netns()], None);
            return Err(LabError::InvalidArgument(format!(
                "cannot add host {:?}: the lab was dropped",
                host.name()
            )));
        }
        state.hosts.push(host.clone());
    }
    host.ip(&["link", "set", "dev", "lo", "up"])?;
    host.sysctls(&[
        ("net/ipv4/ip_forward".into(), "0"),
        ("net/ipv6/conf/default/disable_ipv6".into(), "1"),
    ])?;
    Ok(host)
}

impl Drop for Lab {
    fn drop(&mut self) {
        let hosts = {
            let mut state = self.lock();
            state.closed = true;
            std::mem::take(&mut state.hosts)
        };
        for host in &hosts {
            host.shutdown();
        }
        for host in &hosts {
            if let Err(e) = cmd::run(&["ip", "netns", "del", host.netns()], None) {
                tracing::debug!(error = %e, "lab: could not delete namespace");
            }
        }
    }
}

/// Next `10.x.y.0/24` of the lab, as `[10, x, y]`.
fn allocate_subnet(state: &mut LabState) -> Result<[u8; 3]> {
    let n = state.next_subnet;
    if n >= 250 * 256 {
        return Err(LabError::InvalidArgument(
            "lab ran out of /24 subnets".into(),
        ));
    }
    state.next_subnet += 1;
    Ok([10, (1 + n / 256) as u8, (n % 256) as u8])
}

/// Deletes `atl<pid>-…` namespaces whose process is gone, and those carrying
/// our own pid (left by an earlier process that had the same pid; this runs
/// before this process creates any).
fn remove_stale_namespaces() {
    let Ok(entries) = std::fs::read_dir(cmd::NETNS_DIR) else {
        return;
    };
    let own_pid = std::process::id();
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let Some(rest) = name.strip_prefix(NETNS_PREFIX) else {
            continue;
        };
        let digits: String = rest.chars().take_while(char::is_ascii_digit).collect();
        let Ok(pid) = digits.parse::<u32>() else {
            continue;
        };
        if !rest[digits.len()..].starts_with(['-', '_']) {
            continue;
        }
        let alive = std::path::Path::new(&format!("/proc/{pid}")).exists();
        if pid == own_pid || !alive {
            tracing::debug!(netns = %name, "lab: removing stale namespace");
            let _ = cmd::run(&["ip", "netns", "del", &name], None);
        }
    }
}
