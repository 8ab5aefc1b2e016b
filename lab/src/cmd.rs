//! Running external commands (`ip`, `nft`, `tc`) and entering namespaces.

use std::fs::File;
use std::io::{self, Write};
use std::os::fd::{AsRawFd, RawFd};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use crate::error::{LabError, Result};

/// Where `ip netns` keeps its namespace handles.
pub(crate) const NETNS_DIR: &str = "/run/netns";

/// Path of the namespace handle for `ns`.
pub(crate) fn netns_path(ns: &str) -> PathBuf {
    Path::new(NETNS_DIR).join(ns)
}

/// Runs `args[0]` with the remaining arguments, feeding `stdin` if given, and
/// returns its stdout. A non-zero exit becomes [`LabError::Command`] with the
/// command's stderr.
pub(crate) fn run(args: &[&str], stdin: Option<&str>) -> Result<String> {
    let command_line = args.join(" ");
    let Some((program, rest)) = args.split_first() else {
        return Err(LabError::InvalidArgument("empty command".into()));
    };
    tracing::trace!(command = %command_line, "lab: running");
    let mut command = Command::new(program);
    command
        .args(rest)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        });
    let mut child = command
        .spawn()
        .map_err(|e| LabError::io(format!("could not start `{command_line}`"), e))?;
    if let Some(input) = stdin {
        if let Some(mut pipe) = child.stdin.take() {
            pipe.write_all(input.as_bytes()).map_err(|e| {
                LabError::io(format!("could not write stdin of `{command_line}`"), e)
            })?;
            // Dropping the pipe closes it, so the command sees end of input.
        }
    }
    let output = child
        .wait_with_output()
        .map_err(|e| LabError::io(format!("could not wait for `{command_line}`"), e))?;
    if !output.status.success() {
        let stderr = String::from_utf8_lossy(&output.stderr).trim().to_string();
        let stdout = String::from_utf8_lossy(&output.stdout).trim().to_string();
        return Err(LabError::Command {
            command: command_line,
            status: output.status.to_string(),
            stderr: if stderr.is_empty() { stdout } else { stderr },
        });
    }
    Ok(String::from_utf8_lossy(&output.stdout).into_owned())
}

/// Runs a command inside namespace `ns` (`ip netns exec ns …`).
pub(crate) fn run_in(ns: &str, args: &[&str], stdin: Option<&str>) -> Result<String> {
    let mut full = vec!["ip", "netns", "exec", ns];
    full.extend_from_slice(args);
    run(&full, stdin)
}

/// Moves the calling thread into the network namespace behind `fd`.
pub(crate) fn enter_netns(fd: RawFd) -> io::Result<()> {
    // SAFETY: setns only reads the descriptor; a bad descriptor yields EBADF.
    let rc = unsafe { libc::setns(fd, libc::CLONE_NEWNET) };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// Opens the namespace handle of `ns`.
pub(crate) fn open_netns(ns: &str) -> Result<File> {
    let path = netns_path(ns);
    File::open(&path)
        .map_err(|e| LabError::io(format!("could not open namespace {}", path.display()), e))
}

/// Writes `/proc/sys/<key>` values inside namespace `ns`, from a short-lived
/// thread that entered the namespace (the `/proc/sys/net` tree belongs to the
/// network namespace of the *thread* that opens it). Keys use `/` separators,
/// e.g. `net/ipv4/ip_forward`.
pub(crate) fn write_sysctls(ns: &str, values: &[(String, &str)]) -> Result<()> {
    let handle = open_netns(ns)?;
    let fd = handle.as_raw_fd();
    let outcome = std::thread::scope(|scope| {
        scope
            .spawn(|| -> Result<()> {
                enter_netns(fd).map_err(|e| {
                    LabError::io(format!("could not enter namespace {ns} for sysctl"), e)
                })?;
                for (key, value) in values {
                    let path = format!("/proc/sys/{key}");
                    std::fs::write(&path, value).map_err(|e| {
                        LabError::io(format!("sysctl {path}={value} in namespace {ns}"), e)
                    })?;
                }
                Ok(())
            })
            .join()
    });
    match outcome {
        Ok(result) => result,
        Err(_) => Err(LabError::Runtime {
            host: ns.to_string(),
            message: "sysctl thread panicked".into(),
        }),
    }
}

/// Whether an executable named `name` is on `PATH`.
pub(crate) fn have_program(name: &str) -> bool {
    use std::os::unix::fs::PermissionsExt;
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path).any(|dir| {
        std::fs::metadata(dir.join(name))
            .map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
            .unwrap_or(false)
    })
}
