//! Hosts: one network namespace each, with a tokio runtime living inside it.

use std::future::Future;
use std::os::fd::{AsRawFd, OwnedFd};
use std::path::PathBuf;
use std::sync::{mpsc, Arc, Mutex, MutexGuard};
use std::thread::JoinHandle as ThreadHandle;

use tokio::runtime::Handle;
use tokio::task::JoinHandle;

use crate::cmd;
use crate::error::{LabError, Result};

/// Worker threads of each host runtime.
const WORKER_THREADS: usize = 2;

/// A machine in the lab: one network namespace, plus (started on first use) a
/// tokio runtime whose every thread lives in that namespace.
///
/// `Host` is a cheap handle: clones refer to the same namespace and runtime.
/// The namespace and runtime belong to the [`Lab`](crate::Lab) that created
/// the host and disappear when it is dropped; a handle kept beyond that point
/// only yields errors (commands) or cancelled tasks (spawns).
///
/// # Running code inside the namespace
///
/// [`Host::spawn`] runs a future on the host's runtime and returns a
/// [`JoinHandle`] that any executor — typically the test's own runtime in the
/// root namespace — can await. Sockets opened by that future are in the host's
/// namespace: a `TcpListener` bound there listens on the host's addresses, a
/// connect goes out over the host's links.
///
/// The runtime is built by a dedicated OS thread that first enters the
/// namespace with `setns(2)`; threads inherit the namespace of the thread that
/// creates them, so the workers spawned while building are inside too. Threads
/// the runtime starts later (blocking-pool threads, which may be started from
/// a foreign thread by [`Handle::spawn_blocking`]) enter the namespace
/// themselves in an `on_thread_start` hook, so *every* runtime thread is in the
/// namespace no matter who triggered its creation.
#[derive(Clone)]
pub struct Host {
    inner: Arc<HostInner>,
}

struct HostInner {
    /// The name the test gave the host.
    name: String,
    /// The namespace name (`ip netns` name).
    netns: String,
    runtime: Mutex<RuntimeState>,
}

enum RuntimeState {
    /// Not used yet.
    NotStarted,
    /// Running: the owner thread keeps the runtime alive until `stop` fires.
    Running {
        handle: Handle,
        stop: mpsc::Sender<()>,
        thread: ThreadHandle<()>,
    },
    /// Shut down with the lab; the handle of the shut-down runtime is kept so
    /// late spawns yield cancelled tasks instead of panics.
    Stopped(Handle),
    /// The lab was dropped before the runtime was ever started.
    Closed,
    /// Starting failed; the message is repeated to later callers.
    Failed(String),
}

impl std::fmt::Debug for Host {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Host")
            .field("name", &self.inner.name)
            .field("netns", &self.inner.netns)
            .finish()
    }
}

impl PartialEq for Host {
    fn eq(&self, other: &Self) -> bool {
        Arc::ptr_eq(&self.inner, &other.inner)
    }
}

impl Eq for Host {}

impl Host {
    pub(crate) fn new(name: String, netns: String) -> Host {
        Host {
            inner: Arc::new(HostInner {
                name,
                netns,
                runtime: Mutex::new(RuntimeState::NotStarted),
            }),
        }
    }

    /// The name given to [`Lab::add_host`](crate::Lab::add_host) (routers of
    /// delayed links are called `_r<n>`, the ISP of an
    /// [`Internet`](crate::Internet) `_isp<n>`).
    pub fn name(&self) -> &str {
        &self.inner.name
    }

    /// The network namespace's name, as listed by `ip netns list`.
    pub fn netns(&self) -> &str {
        &self.inner.netns
    }

    /// The namespace handle, `/run/netns/<netns>`; `stat` on it gives the
    /// namespace inode that `/proc/<pid>/task/<tid>/ns/net` of threads inside
    /// the namespace also show.
    pub fn netns_path(&self) -> PathBuf {
        cmd::netns_path(&self.inner.netns)
    }

    /// Runs a command inside the namespace (`ip netns exec <netns> args…`) and
    /// returns its stdout. A non-zero exit is an error carrying the stderr.
    ///
    /// This blocks the calling thread until the command exits.
    ///
    /// ```no_run
    /// # fn f(host: &atmosphere_lab::Host) -> Result<(), atmosphere_lab::LabError> {
    /// let addrs = host.exec(&["ip", "-4", "addr"])?;
    /// # Ok(()) }
    /// ```
    pub fn exec(&self, args: &[&str]) -> Result<String> {
        cmd::run_in(&self.inner.netns, args, None)
    }

    /// Like [`Host::exec`], feeding `stdin` to the command.
    pub fn exec_with_stdin(&self, args: &[&str], stdin: &str) -> Result<String> {
        cmd::run_in(&self.inner.netns, args, Some(stdin))
    }

    /// Runs an `ip` command against the namespace (`ip -n <netns> args…`),
    /// cheaper than [`Host::exec`].
    pub(crate) fn ip(&self, args: &[&str]) -> Result<String> {
        let mut full = vec!["ip", "-n", self.inner.netns.as_str()];
        full.extend_from_slice(args);
        cmd::run(&full, None)
    }

    /// Writes sysctls (`/`-separated keys below `/proc/sys`) in the namespace.
    pub(crate) fn sysctls(&self, values: &[(String, &str)]) -> Result<()> {
        cmd::write_sysctls(&self.inner.netns, values)
    }

    /// The handle of the host's runtime, starting the runtime on first use.
    ///
    /// # Errors
    /// [`LabError::Runtime`] if the runtime cannot be started (the namespace
    /// cannot be entered) or the lab was dropped before it was ever started.
    pub fn try_handle(&self) -> Result<Handle> {
        let mut state = self.lock_state();
        match &*state {
            RuntimeState::Running { handle, .. } | RuntimeState::Stopped(handle) => {
                return Ok(handle.clone())
            }
            RuntimeState::Closed => {
                return Err(self.runtime_error("the lab was dropped".into()));
            }
            RuntimeState::Failed(message) => return Err(self.runtime_error(message.clone())),
            RuntimeState::NotStarted => {}
        }
        match self.start_runtime() {
            Ok((handle, stop, thread)) => {
                *state = RuntimeState::Running {
                    handle: handle.clone(),
                    stop,
                    thread,
                };
                Ok(handle)
            }
            Err(message) => {
                *state = RuntimeState::Failed(message.clone());
                Err(self.runtime_error(message))
            }
        }
    }

    /// The handle of the host's runtime, starting the runtime on first use.
    /// Everything spawned through it runs inside the host's namespace.
    ///
    /// # Panics
    /// If the runtime cannot be started; see [`Host::try_handle`] for the
    /// fallible version.
    pub fn handle(&self) -> Handle {
        match self.try_handle() {
            Ok(handle) => handle,
            Err(e) => panic!("{e}"),
        }
    }

    /// Spawns `fut` on the host's runtime, i.e. inside the host's namespace.
    /// The returned handle can be awaited from any runtime; it resolves to a
    /// cancelled [`JoinError`](tokio::task::JoinError) if the lab is dropped
    /// first.
    ///
    /// ```no_run
    /// # async fn f(b: atmosphere_lab::Host) {
    /// let listener = b
    ///     .spawn(async { tokio::net::TcpListener::bind("0.0.0.0:7000").await })
    ///     .await
    ///     .unwrap();
    /// # }
    /// ```
    ///
    /// # Panics
    /// If the runtime cannot be started (see [`Host::try_handle`]).
    pub fn spawn<F>(&self, fut: F) -> JoinHandle<F::Output>
    where
        F: Future + Send + 'static,
        F::Output: Send + 'static,
    {
        self.handle().spawn(fut)
    }

    /// Runs blocking code on the host runtime's blocking pool, inside the
    /// namespace (for std sockets or other synchronous network code).
    ///
    /// # Panics
    /// If the runtime cannot be started (see [`Host::try_handle`]).
    pub fn spawn_blocking<F, R>(&self, f: F) -> JoinHandle<R>
    where
        F: FnOnce() -> R + Send + 'static,
        R: Send + 'static,
    {
        self.handle().spawn_blocking(f)
    }

    /// Shuts the runtime down (without waiting for tasks: safe inside another
    /// runtime). Called by the lab when it is dropped.
    pub(crate) fn shutdown(&self) {
        let previous = std::mem::replace(&mut *self.lock_state(), RuntimeState::Closed);
        let next = match previous {
            RuntimeState::Running {
                handle,
                stop,
                thread,
            } => {
                let _ = stop.send(());
                // The owner thread only calls `shutdown_background`, which does
                // not wait for tasks, so this join is short.
                let _ = thread.join();
                RuntimeState::Stopped(handle)
            }
            RuntimeState::NotStarted | RuntimeState::Closed => RuntimeState::Closed,
            other @ (RuntimeState::Stopped(_) | RuntimeState::Failed(_)) => other,
        };
        *self.lock_state() = next;
    }

    fn lock_state(&self) -> MutexGuard<'_, RuntimeState> {
        // A panic while holding this lock leaves consistent state behind.
        self.inner
            .runtime
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn runtime_error(&self, message: String) -> LabError {
        LabError::Runtime {
            host: self.inner.name.clone(),
            message,
        }
    }

    /// Starts the owner thread: enter the namespace, build the runtime, hand
    /// its handle back, and keep it alive until told to stop.
    #[allow(clippy::type_complexity)]
    fn start_runtime(&self) -> Result<(Handle, mpsc::Sender<()>, ThreadHandle<()>), String> {
        let ns_file = cmd::open_netns(&self.inner.netns).map_err(|e| e.to_string())?;
        let ns_fd: Arc<OwnedFd> = Arc::new(ns_file.into());
        let (ready_tx, ready_rx) = mpsc::channel::<Result<Handle, String>>();
        let (stop_tx, stop_rx) = mpsc::channel::<()>();
        let netns = self.inner.netns.clone();
        let thread_name = short_thread_name(&self.inner.name);
        let thread = std::thread::Builder::new()
            .name(thread_name.clone())
            .spawn(move || {
                if let Err(e) = cmd::enter_netns(ns_fd.as_raw_fd()) {
                    let _ = ready_tx.send(Err(format!("could not enter namespace {netns}: {e}")));
                    return;
                }
                let hook_fd = Arc::clone(&ns_fd);
                let hook_ns = netns.clone();
                let built = tokio::runtime::Builder::new_multi_thread()
                    .worker_threads(WORKER_THREADS)
                    .thread_name(thread_name)
                    .enable_all()
                    .on_thread_start(move || {
                        // Workers inherit the namespace already; blocking-pool
                        // threads may be created by a foreign thread.
                        if let Err(e) = cmd::enter_netns(hook_fd.as_raw_fd()) {
                            tracing::error!(
                                netns = %hook_ns,
                                error = %e,
                                "lab: runtime thread could not enter its namespace"
                            );
                        }
                    })
                    .build();
                let runtime = match built {
                    Ok(runtime) => runtime,
                    Err(e) => {
                        let _ = ready_tx.send(Err(format!("could not build runtime: {e}")));
                        return;
                    }
                };
                let _ = ready_tx.send(Ok(runtime.handle().clone()));
                // Returns on `stop` or when the host is gone (sender dropped).
                let _ = stop_rx.recv();
                runtime.shutdown_background();
            })
            .map_err(|e| format!("could not start runtime thread: {e}"))?;
        match ready_rx.recv() {
            Ok(Ok(handle)) => Ok((handle, stop_tx, thread)),
            Ok(Err(message)) => {
                let _ = thread.join();
                Err(message)
            }
            Err(_) => {
                let _ = thread.join();
                Err("runtime thread exited before reporting".into())
            }
        }
    }
}

/// Thread names are cut to 15 bytes by the kernel; keep the host name visible.
fn short_thread_name(host: &str) -> String {
    let mut name = format!("lab-{host}");
    while name.len() > 15 {
        name.pop();
    }
    name
}
