//! Helpers for tests that run `mesh-node` daemons and CLI commands as real
//! processes on loopback.

#![allow(dead_code)]

use std::{
    fs::File,
    io::{BufRead, BufReader, Read},
    net::TcpListener,
    path::{Path, PathBuf},
    process::{Child, Command, Output, Stdio},
    sync::mpsc,
    thread,
    time::{Duration, Instant},
};

/// How long anything may take to become ready.
pub const READY_TIMEOUT: Duration = Duration::from_secs(30);

/// The binary under test.
pub fn bin() -> &'static str {
    env!("CARGO_BIN_EXE_mesh-node")
}

/// A free TCP port on loopback (bound, read, released).
pub fn free_port() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind a free port");
    listener.local_addr().expect("local addr").port()
}

/// Output of one CLI command.
#[derive(Debug)]
pub struct Run {
    /// Exit code (`None`: killed by a signal).
    pub code: Option<i32>,
    /// Stdout as text.
    pub stdout: String,
    /// Stderr as text.
    pub stderr: String,
}

impl Run {
    fn from_output(output: Output) -> Self {
        Self {
            code: output.status.code(),
            stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
        }
    }

    /// Whether it exited 0.
    pub fn ok(&self) -> bool {
        self.code == Some(0)
    }

    /// The last non-empty stdout line.
    pub fn last_line(&self) -> String {
        self.stdout
            .lines()
            .rev()
            .find(|l| !l.trim().is_empty())
            .unwrap_or_default()
            .trim()
            .to_owned()
    }

    /// Panics with everything printed unless it exited 0.
    #[track_caller]
    pub fn assert_ok(&self, what: &str) -> &Self {
        assert!(
            self.ok(),
            "{what} failed ({:?})\nstdout: {}\nstderr: {}",
            self.code,
            self.stdout,
            self.stderr
        );
        self
    }
}

/// Runs `mesh-node --data-dir DIR --api ADDR ARGS…` to completion.
pub fn cli(data_dir: &Path, api_port: u16, args: &[&str]) -> Run {
    let output = base_command(data_dir, api_port)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("run mesh-node");
    Run::from_output(output)
}

fn base_command(data_dir: &Path, api_port: u16) -> Command {
    let mut command = Command::new(bin());
    command
        .arg("--data-dir")
        .arg(data_dir)
        .arg("--api")
        .arg(format!("127.0.0.1:{api_port}"))
        .env_remove("ATMOSPHERE_DATA_DIR")
        .env_remove("ATMOSPHERE_API")
        .env_remove("RUST_LOG");
    command
}

/// Retries `attempt` every 250 ms until it returns `Some` or `timeout` passes.
pub fn eventually<T>(timeout: Duration, mut attempt: impl FnMut() -> Option<T>) -> Option<T> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(value) = attempt() {
            return Some(value);
        }
        if Instant::now() >= deadline {
            return None;
        }
        thread::sleep(Duration::from_millis(250));
    }
}

/// A `mesh-node run` process, stopped (SIGTERM, then SIGKILL) when dropped.
pub struct Daemon {
    child: Option<Child>,
    /// Its data directory.
    pub data_dir: PathBuf,
    /// Its local API port.
    pub api_port: u16,
    log: PathBuf,
}

impl Daemon {
    /// Starts a daemon on loopback with mDNS off and waits until `status` answers.
    pub fn start(data_dir: &Path) -> Self {
        let api_port = free_port();
        std::fs::create_dir_all(data_dir).expect("create data dir");
        let log = data_dir.join(format!("daemon-{api_port}.log"));
        let stderr = File::create(&log).expect("create log");
        let child = base_command(data_dir, api_port)
            .args(["run", "--no-mdns", "--listen", "/ip4/127.0.0.1/tcp/0"])
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::from(stderr))
            .spawn()
            .expect("spawn mesh-node run");
        let mut daemon = Self {
            child: Some(child),
            data_dir: data_dir.to_owned(),
            api_port,
            log,
        };
        daemon.wait_ready();
        daemon
    }

    fn wait_ready(&mut self) {
        let ready = eventually(READY_TIMEOUT, || {
            if let Some(child) = self.child.as_mut() {
                if let Ok(Some(status)) = child.try_wait() {
                    panic!("daemon exited early ({status}):\n{}", self.log_text());
                }
            }
            self.cli(&["status"]).ok().then_some(())
        });
        assert!(ready.is_some(), "daemon not ready:\n{}", self.log_text());
    }

    /// Runs a CLI command against this daemon.
    pub fn cli(&self, args: &[&str]) -> Run {
        cli(&self.data_dir, self.api_port, args)
    }

    /// Starts a long-running CLI command (`sub`, `reply`) against this daemon.
    pub fn spawn(&self, args: &[&str]) -> Background {
        Background::spawn(base_command(&self.data_dir, self.api_port).args(args))
    }

    /// Its peer id, from `status --json`.
    pub fn peer_id(&self) -> String {
        let run = self.cli(&["status", "--json"]);
        run.assert_ok("status --json");
        let status: serde_json::Value = serde_json::from_str(&run.stdout).expect("status is JSON");
        status["peer_id"]
            .as_str()
            .expect("peer_id is a string")
            .to_owned()
    }

    /// The API token it wrote.
    pub fn token(&self) -> String {
        std::fs::read_to_string(self.data_dir.join("api.token"))
            .expect("read api.token")
            .trim()
            .to_owned()
    }

    /// `http://127.0.0.1:PORT`.
    pub fn api_url(&self) -> String {
        format!("http://127.0.0.1:{}", self.api_port)
    }

    /// Its log so far.
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Kills it outright (SIGKILL): no goodbye to its peers.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Stops it gracefully (SIGTERM), killing it if it takes over 10 s.
    pub fn stop(&mut self) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        let _ = Command::new("kill")
            .arg("-TERM")
            .arg(child.id().to_string())
            .status();
        let exited = eventually(Duration::from_secs(10), || {
            child.try_wait().ok().flatten().map(|_| ())
        });
        if exited.is_none() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A long-running CLI process whose stderr lines are collected as they come
/// (and its stdout lines too, once [`Background::wait_stdout`] is used);
/// killed when dropped.
pub struct Background {
    child: Child,
    stderr_lines: mpsc::Receiver<String>,
    stderr_seen: Vec<String>,
    stdout_lines: Option<mpsc::Receiver<String>>,
}

impl Background {
    fn spawn(command: &mut Command) -> Self {
        let mut child = command
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn mesh-node");
        let (tx, rx) = mpsc::channel();
        if let Some(stderr) = child.stderr.take() {
            thread::spawn(move || {
                for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                    if tx.send(line).is_err() {
                        break;
                    }
                }
            });
        }
        Self {
            child,
            stderr_lines: rx,
            stderr_seen: Vec::new(),
            stdout_lines: None,
        }
    }

    /// Waits until a stdout line satisfies `found` and returns it; panics
    /// after `timeout` with the stdout seen so far. Lines read are consumed.
    #[track_caller]
    pub fn wait_stdout(&mut self, timeout: Duration, found: impl Fn(&str) -> bool) -> String {
        if self.stdout_lines.is_none() {
            let (tx, rx) = mpsc::channel();
            if let Some(stdout) = self.child.stdout.take() {
                thread::spawn(move || {
                    for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                        if tx.send(line).is_err() {
                            break;
                        }
                    }
                });
            }
            self.stdout_lines = Some(rx);
        }
        let mut seen = Vec::new();
        let deadline = Instant::now() + timeout;
        if let Some(lines) = &self.stdout_lines {
            while Instant::now() < deadline {
                match lines.recv_timeout(Duration::from_millis(200)) {
                    Ok(line) if found(&line) => return line,
                    Ok(line) => seen.push(line),
                    Err(mpsc::RecvTimeoutError::Timeout) => {}
                    Err(mpsc::RecvTimeoutError::Disconnected) => break,
                }
            }
        }
        panic!(
            "no matching stdout line within {timeout:?}; stdout:\n{}\nstderr:\n{}",
            seen.join("\n"),
            self.stderr_seen.join("\n")
        );
    }

    /// Waits until a stderr line contains `needle`; panics after [`READY_TIMEOUT`].
    #[track_caller]
    pub fn wait_stderr(&mut self, needle: &str) {
        let deadline = Instant::now() + READY_TIMEOUT;
        while Instant::now() < deadline {
            match self.stderr_lines.recv_timeout(Duration::from_millis(200)) {
                Ok(line) => {
                    let found = line.contains(needle);
                    self.stderr_seen.push(line);
                    if found {
                        return;
                    }
                }
                Err(mpsc::RecvTimeoutError::Timeout) => {}
                Err(mpsc::RecvTimeoutError::Disconnected) => break,
            }
        }
        panic!(
            "no stderr line with {needle:?}; stderr so far:\n{}",
            self.stderr_seen.join("\n")
        );
    }

    /// Sends it SIGINT (what Ctrl-C does).
    pub fn interrupt(&self) {
        let _ = Command::new("kill")
            .arg("-INT")
            .arg(self.child.id().to_string())
            .status();
    }

    /// Whether it has exited.
    pub fn exited(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(Some(_)))
    }

    /// Waits for it to exit and returns its exit code and stdout.
    pub fn finish(mut self) -> (Option<i32>, String) {
        let mut stdout = String::new();
        if let Some(mut out) = self.child.stdout.take() {
            let _ = out.read_to_string(&mut stdout);
        }
        let code = self.child.wait().ok().and_then(|s| s.code());
        (code, stdout)
    }
}

impl Drop for Background {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
