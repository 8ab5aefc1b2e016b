//! Runs a `reply --exec` command: `sh -c CMD`, input on stdin, bounded
//! output, killed at the timeout.

use std::{process::Stdio, time::Duration};

use serde_json::Value;
use tokio::{
    io::{AsyncRead, AsyncReadExt, AsyncWriteExt},
    process::Command,
};

/// Largest stdout accepted from a command (the node's default payload limit).
pub const MAX_STDOUT: usize = 4 * 1024 * 1024;
/// Stderr kept for the error message.
const MAX_STDERR: usize = 4 * 1024;

/// Why a command produced no answer.
#[derive(Debug, thiserror::Error)]
pub enum ExecError {
    /// `sh` could not be started.
    #[error("cannot run sh: {0}")]
    Spawn(std::io::Error),
    /// Reading its output failed.
    #[error("reading the command's output failed: {0}")]
    Io(std::io::Error),
    /// It ran longer than allowed.
    #[error("the command did not finish within {}", humantime::format_duration(*.0))]
    Timeout(Duration),
    /// Its stdout exceeded [`MAX_STDOUT`].
    #[error("the command printed more than {MAX_STDOUT} bytes")]
    TooMuchOutput,
    /// It exited unsuccessfully.
    #[error("the command failed ({status}){}", stderr_suffix(.stderr))]
    Failed {
        /// Its exit status.
        status: std::process::ExitStatus,
        /// The start of its stderr.
        stderr: String,
    },
}

/// `: <stderr>` for the error message, or nothing.
fn stderr_suffix(stderr: &str) -> String {
    if stderr.is_empty() {
        String::new()
    } else {
        format!(": {stderr}")
    }
}

/// Runs `sh -c command` with `input` on stdin and `env` added to its
/// environment; returns its stdout when it exits 0.
pub async fn run(
    command: &str,
    input: &[u8],
    env: &[(&str, &str)],
    timeout: Duration,
) -> Result<Vec<u8>, ExecError> {
    let mut child = Command::new("sh")
        .arg("-c")
        .arg(command)
        .envs(env.iter().copied())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .map_err(ExecError::Spawn)?;
    let mut stdin = child.stdin.take();
    let stdout = child.stdout.take();
    let stderr = child.stderr.take();
    let input = input.to_vec();
    let work = async move {
        let feed = async {
            if let Some(stdin) = stdin.as_mut() {
                // A command that ignores its input may close stdin early.
                let _ = stdin.write_all(&input).await;
                let _ = stdin.shutdown().await;
            }
            drop(stdin);
        };
        let (_, out, err) = tokio::join!(
            feed,
            read_bounded(stdout, MAX_STDOUT),
            read_bounded(stderr, MAX_STDERR)
        );
        let (out, out_truncated) = out.map_err(ExecError::Io)?;
        let (err, _) = err.map_err(ExecError::Io)?;
        if out_truncated {
            return Err(ExecError::TooMuchOutput);
        }
        let status = child.wait().await.map_err(ExecError::Io)?;
        if !status.success() {
            return Err(ExecError::Failed {
                status,
                stderr: String::from_utf8_lossy(&err).trim().to_owned(),
            });
        }
        Ok(out)
    };
    // On timeout the future (and with it the child, kill_on_drop) is dropped.
    tokio::time::timeout(timeout, work)
        .await
        .map_err(|_| ExecError::Timeout(timeout))?
}

/// Reads up to `limit` bytes, draining (and discarding) the rest so the child
/// never blocks on a full pipe; the flag says whether anything was discarded.
async fn read_bounded<R: AsyncRead + Unpin>(
    reader: Option<R>,
    limit: usize,
) -> std::io::Result<(Vec<u8>, bool)> {
    let Some(mut reader) = reader else {
        return Ok((Vec::new(), false));
    };
    let mut kept = Vec::new();
    let mut truncated = false;
    let mut chunk = vec![0u8; 16 * 1024];
    loop {
        let n = reader.read(&mut chunk).await?;
        if n == 0 {
            return Ok((kept, truncated));
        }
        let room = limit.saturating_sub(kept.len());
        kept.extend_from_slice(&chunk[..n.min(room)]);
        truncated |= n > room;
    }
}

/// The result of a command's stdout: its JSON value if it is JSON, else the
/// text without its trailing newline; `None` if it is not UTF-8.
pub fn parse_output(stdout: &[u8]) -> Option<Value> {
    let text = std::str::from_utf8(stdout).ok()?;
    if let Ok(value) = serde_json::from_str::<Value>(text) {
        return Some(value);
    }
    Some(Value::String(
        text.trim_end_matches(['\n', '\r']).to_owned(),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn outputs() {
        assert_eq!(parse_output(b"42\n"), Some(json!(42)));
        assert_eq!(parse_output(b"hello\n"), Some(json!("hello")));
        assert_eq!(parse_output(&[0xff]), None);
    }

    #[tokio::test]
    async fn runs_with_stdin_and_reports_failures() {
        let out = run("cat", b"{\"a\":1}", &[], Duration::from_secs(10)).await;
        assert_eq!(out.ok(), Some(b"{\"a\":1}".to_vec()));

        let out = run(
            "echo $ATMOSPHERE_URI",
            b"",
            &[("ATMOSPHERE_URI", "x.y")],
            Duration::from_secs(10),
        )
        .await;
        assert_eq!(out.ok(), Some(b"x.y\n".to_vec()));

        let failed = run("echo oops >&2; exit 3", b"", &[], Duration::from_secs(10)).await;
        let message = failed.err().map(|e| e.to_string()).unwrap_or_default();
        assert!(message.contains("oops"), "{message}");

        let slow = run("sleep 5", b"", &[], Duration::from_millis(200)).await;
        assert!(matches!(slow, Err(ExecError::Timeout(_))));
    }
}
