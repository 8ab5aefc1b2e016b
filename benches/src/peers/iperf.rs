//! iperf3: the ceiling for one-way bulk transfer over loopback TCP.
//!
//! Runs the `iperf3` binary (no crate dependency): a one-off server bound to
//! `127.0.0.1` on a free port, then a client against it for a few seconds,
//! and reads the receiver's rate from the client's JSON report. Both are
//! child processes killed if dropped early.
//!
//! Also holds two small helpers the other third-party peers share: finding a
//! binary (including the `sbin` directories Debian installs servers into) and
//! picking a free loopback port.

use std::{
    net::{Ipv4Addr, TcpListener},
    path::{Path, PathBuf},
    process::Stdio,
    time::Duration,
};

use anyhow::{bail, Context, Result};
use tokio::process::{Child, Command};

/// The install hint shown when `iperf3` is missing.
const INSTALL_HINT: &str =
    "iperf3 not installed: apt-get install -y --no-install-recommends iperf3";

/// How many times the client is retried while the server is still starting.
const CONNECT_ATTEMPTS: usize = 50;

/// Pause between client attempts while the server is still starting.
const CONNECT_RETRY: Duration = Duration::from_millis(100);

/// Why the iperf3 measurement cannot run here, or `None` if it can.
pub fn missing_reason() -> Option<String> {
    match find_binary("iperf3") {
        Some(_) => None,
        None => Some(INSTALL_HINT.to_string()),
    }
}

/// Bytes per second received by an `iperf3` TCP client run for `seconds`
/// (at least 1) against a one-off server, all on `127.0.0.1`.
///
/// `Ok(None)` when the `iperf3` binary is not installed.
pub async fn bulk_bytes_per_sec(seconds: u64) -> Result<Option<f64>> {
    let Some(iperf3) = find_binary("iperf3") else {
        return Ok(None);
    };
    let seconds = seconds.max(1);
    let port = free_loopback_port()?;
    let mut server = Command::new(&iperf3)
        .args(["-s", "-1", "-p", &port.to_string(), "-B", "127.0.0.1"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .with_context(|| format!("starting {}", iperf3.display()))?;

    let report = run_client(&iperf3, port, seconds, &mut server).await?;
    // The one-off server exits by itself after the test; give it a moment,
    // then `kill_on_drop` takes care of a straggler.
    let _ = tokio::time::timeout(Duration::from_secs(2), server.wait()).await;
    parse_report(&report).map(Some)
}

/// Runs the client, retrying while the server is not yet accepting, and
/// returns its JSON report.
async fn run_client(iperf3: &Path, port: u16, seconds: u64, server: &mut Child) -> Result<String> {
    let port = port.to_string();
    let seconds_arg = seconds.to_string();
    let deadline = Duration::from_secs(seconds + 30);
    for _ in 0..CONNECT_ATTEMPTS {
        if let Some(status) = server.try_wait().context("polling the iperf3 server")? {
            bail!("iperf3 server exited before the test: {status}");
        }
        let client = Command::new(iperf3)
            .args(["-c", "127.0.0.1", "-p", &port, "-t", &seconds_arg, "-J"])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .output();
        let output = tokio::time::timeout(deadline, client)
            .await
            .context("iperf3 client timed out")?
            .context("running the iperf3 client")?;
        let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
        // iperf3 may exit successfully with an `error` in its JSON report.
        let error = report_error(&stdout).or_else(|| {
            (!output.status.success())
                .then(|| String::from_utf8_lossy(&output.stderr).trim().to_string())
        });
        match error {
            None => return Ok(stdout),
            Some(error) if error.contains("unable to connect") => {
                tokio::time::sleep(CONNECT_RETRY).await;
            }
            Some(error) => bail!("iperf3 client failed ({}): {error}", output.status),
        }
    }
    bail!("iperf3 server on 127.0.0.1:{port} never accepted a client")
}

/// The `error` field of an iperf3 JSON report, if any.
fn report_error(report: &str) -> Option<String> {
    let json: serde_json::Value = serde_json::from_str(report).ok()?;
    json.get("error")?.as_str().map(str::to_string)
}

/// Bytes per second from `end.sum_received.bits_per_second` of an iperf3 JSON report.
fn parse_report(report: &str) -> Result<f64> {
    let json: serde_json::Value =
        serde_json::from_str(report).context("iperf3 output is not JSON")?;
    if let Some(error) = json.get("error").and_then(|e| e.as_str()) {
        bail!("iperf3 reported: {error}");
    }
    let bits = json
        .pointer("/end/sum_received/bits_per_second")
        .and_then(serde_json::Value::as_f64)
        .context("iperf3 report has no end.sum_received.bits_per_second")?;
    Ok(bits / 8.0)
}

/// Finds an executable named `name` on `PATH` or in the `sbin` directories
/// (Debian installs daemons such as `nats-server` into `/usr/sbin`, which is
/// not on every user's `PATH`).
pub(crate) fn find_binary(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/local/sbin", "/usr/sbin", "/sbin"].map(PathBuf::from))
        .map(|dir| dir.join(name))
        .find(|candidate| is_executable(candidate))
}

/// Whether `path` is a file someone may execute.
fn is_executable(path: &Path) -> bool {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::metadata(path).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
    }
    #[cfg(not(unix))]
    {
        path.is_file()
    }
}

/// A TCP port on `127.0.0.1` that was free a moment ago (bound to port 0 and
/// released), for servers that need their port on the command line.
pub(crate) fn free_loopback_port() -> Result<u16> {
    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).context("binding 127.0.0.1:0")?;
    Ok(listener
        .local_addr()
        .context("reading the bound port")?
        .port())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_a_report() -> Result<()> {
        let report = r#"{"start":{},"end":{"sum_received":{"bits_per_second":8000000000.0}}}"#;
        assert_eq!(parse_report(report)?, 1e9);
        let failed = r#"{"start":{},"end":{},"error":"error - unable to connect to server: Connection refused"}"#;
        assert!(parse_report(failed).is_err());
        assert!(report_error(failed).is_some_and(|e| e.contains("unable to connect")));
        assert!(parse_report("not json").is_err());
        Ok(())
    }

    #[tokio::test]
    async fn measures_loopback_or_reports_missing() -> Result<()> {
        match bulk_bytes_per_sec(1).await? {
            Some(rate) => {
                assert!(missing_reason().is_none());
                assert!(rate > 0.0, "rate {rate}");
            }
            None => assert!(missing_reason().is_some()),
        }
        Ok(())
    }
}
