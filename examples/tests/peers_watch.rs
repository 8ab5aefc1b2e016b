//! Member status with two real daemons on loopback: `peers` shows the other
//! member as directly reachable over an active path, `status` lists that
//! path, and watchers (a raw `/v1/peers/watch` WebSocket client and
//! `peers --watch`) see the member go offline when its daemon is killed.

mod common;

use std::time::{Duration, Instant};

use futures::StreamExt;
use serde_json::Value;
use tokio_tungstenite::{
    tungstenite::{client::IntoClientRequest, http::HeaderValue, Message},
    MaybeTlsStream, WebSocketStream,
};

use common::{eventually, Daemon, READY_TIMEOUT};

type Socket = WebSocketStream<MaybeTlsStream<tokio::net::TcpStream>>;

/// How long a killed member may take to be reported offline (heartbeats on
/// the active path: 1 s, 3 misses; a killed process usually closes its
/// connections at once).
const OFFLINE_TIMEOUT: Duration = Duration::from_secs(30);

async fn connect(daemon: &Daemon, path: &str) -> Socket {
    let url = format!("ws://127.0.0.1:{}{path}", daemon.api_port);
    let mut request = url.into_client_request().expect("ws request");
    request.headers_mut().insert(
        "authorization",
        HeaderValue::from_str(&format!("Bearer {}", daemon.token())).expect("header"),
    );
    let (socket, _) = tokio_tungstenite::connect_async(request)
        .await
        .expect("websocket connect");
    socket
}

/// The next JSON text frame, waiting at most until `deadline`.
async fn next_json(socket: &mut Socket, deadline: Instant) -> Value {
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let frame = tokio::time::timeout(left, socket.next())
            .await
            .expect("a frame in time")
            .expect("socket open")
            .expect("frame");
        if let Message::Text(text) = frame {
            return serde_json::from_str(text.as_str()).expect("JSON frame");
        }
    }
}

/// `a` founds a mesh and `b` joins it.
fn join(a: &Daemon, b: &Daemon) {
    a.cli(&["mesh", "create", "home"]).assert_ok("mesh create");
    let invite = a.cli(&["mesh", "invite"]);
    invite.assert_ok("mesh invite");
    b.cli(&["mesh", "join", &invite.last_line()])
        .assert_ok("mesh join");
}

/// `peer`'s entry in `daemon`'s `peers --json`.
fn peer_entry(daemon: &Daemon, peer: &str) -> Option<Value> {
    let run = daemon.cli(&["peers", "--json"]);
    run.assert_ok("peers --json");
    let peers: Value = serde_json::from_str(&run.stdout).expect("peers is JSON");
    peers
        .as_array()?
        .iter()
        .find(|p| p["peer_id"] == peer)
        .cloned()
}

fn is_offline_event(frame: &Value, peer: &str) -> bool {
    frame["type"] == "event" && frame["peer_id"] == peer && frame["status"]["kind"] == "offline"
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn peers_status_and_watch_follow_a_member() {
    let dir = tempfile::tempdir().expect("tempdir");
    let a = Daemon::start(&dir.path().join("a"));
    let mut b = Daemon::start(&dir.path().join("b"));
    join(&a, &b);
    let b_id = b.peer_id();

    // `peers --json`: B is direct, over an active path.
    let entry = eventually(READY_TIMEOUT, || {
        let entry = peer_entry(&a, &b_id)?;
        let active = entry["paths"]
            .as_array()?
            .iter()
            .any(|p| p["role"] == "active");
        (entry["status"]["kind"] == "direct" && active).then_some(entry)
    })
    .unwrap_or_else(|| {
        panic!(
            "B never showed as direct with an active path:\n{}\nA's log:\n{}",
            a.cli(&["peers", "--json"]).stdout,
            a.log_text()
        )
    });
    let class = entry["status"]["class"].as_str().unwrap_or_default();
    assert!(["lan", "direct", "ble"].contains(&class), "{entry}");
    let path = entry["paths"]
        .as_array()
        .and_then(|paths| paths.iter().find(|p| p["role"] == "active"))
        .cloned()
        .unwrap_or_default();
    assert_eq!(path["peer_id"], b_id.as_str(), "{entry}");
    for field in [
        "connection",
        "heartbeat_ms",
        "app_bytes_sent",
        "app_bytes_received",
    ] {
        assert!(path[field].is_u64(), "{field}: {path}");
    }
    assert!(path["healthy"].is_boolean(), "{path}");
    assert!(path["loss"].is_number(), "{path}");
    assert!(path["remote_addr"].is_string(), "{path}");

    let table = a.cli(&["peers"]);
    table.assert_ok("peers");
    let row = table
        .stdout
        .lines()
        .find(|l| l.contains(&b_id))
        .unwrap_or_default();
    assert!(row.contains("direct"), "{}", table.stdout);

    // `status --json`: the path to B and the session counters.
    let status = eventually(READY_TIMEOUT, || {
        let run = a.cli(&["status", "--json"]);
        run.assert_ok("status --json");
        let status: Value = serde_json::from_str(&run.stdout).expect("status is JSON");
        let has_path = status["paths"]
            .as_array()?
            .iter()
            .any(|p| p["peer_id"] == b_id.as_str());
        has_path.then_some(status)
    })
    .unwrap_or_else(|| panic!("no path to B in status --json"));
    assert!(status["retransmitted"].is_u64(), "{status}");
    assert!(status["duplicates_dropped"].is_u64(), "{status}");
    let text = a.cli(&["status"]);
    text.assert_ok("status");
    assert!(text.stdout.contains("paths:"), "{}", text.stdout);
    assert!(text.stdout.contains("retransmitted:"), "{}", text.stdout);

    // Watchers: a raw WebSocket client and the CLI, in JSON and in text.
    let mut socket = connect(&a, "/v1/peers/watch").await;
    let first = next_json(&mut socket, Instant::now() + READY_TIMEOUT).await;
    assert_eq!(first["type"], "peers", "{first}");
    let listed = first["peers"]
        .as_array()
        .and_then(|peers| peers.iter().find(|p| p["peer_id"] == b_id.as_str()))
        .cloned()
        .unwrap_or_default();
    assert_eq!(listed["status"]["kind"], "direct", "{first}");

    let mut json_watch = a.spawn(&["peers", "--watch", "--json"]);
    json_watch.wait_stderr("watching peers");
    let mut text_watch = a.spawn(&["peers", "--watch"]);
    text_watch.wait_stderr("watching peers");
    // The text watch starts with the table.
    text_watch.wait_stdout(READY_TIMEOUT, |line| line.contains(&b_id));

    b.kill();

    let deadline = Instant::now() + OFFLINE_TIMEOUT;
    let offline = loop {
        let frame = next_json(&mut socket, deadline).await;
        if is_offline_event(&frame, &b_id) {
            break frame;
        }
    };
    assert!(
        offline["at_ms"].as_u64().is_some_and(|t| t > 0),
        "{offline}"
    );
    assert!(offline.get("switch").is_some(), "{offline}");

    let line = json_watch.wait_stdout(OFFLINE_TIMEOUT, |line| {
        serde_json::from_str::<Value>(line).is_ok_and(|frame| is_offline_event(&frame, &b_id))
    });
    assert!(!line.contains('\n'));
    let short = &b_id[b_id.len() - 8..];
    text_watch.wait_stdout(OFFLINE_TIMEOUT, |line| {
        line.contains(short) && line.contains("offline")
    });

    // Ctrl-C ends a watch cleanly.
    json_watch.interrupt();
    let (code, _) = json_watch.finish();
    assert_eq!(code, Some(0), "peers --watch after SIGINT");

    // `peers` now shows B offline.
    let gone = eventually(READY_TIMEOUT, || {
        let entry = peer_entry(&a, &b_id)?;
        (entry["status"]["kind"] == "offline").then_some(entry)
    });
    assert!(gone.is_some(), "B still not offline in peers --json");
    let table = a.cli(&["peers"]);
    table.assert_ok("peers");
    assert!(
        table
            .stdout
            .lines()
            .any(|l| l.contains(&b_id) && l.contains("offline")),
        "{}",
        table.stdout
    );
}

#[tokio::test]
async fn watch_route_needs_a_websocket() {
    let dir = tempfile::tempdir().expect("tempdir");
    let daemon = Daemon::start(dir.path());
    let response = reqwest::Client::new()
        .get(format!("{}/v1/peers/watch", daemon.api_url()))
        .bearer_auth(daemon.token())
        .send()
        .await
        .expect("plain GET");
    assert_eq!(response.status().as_u16(), 400);
    let body: Value = response.json().await.expect("JSON error body");
    assert_eq!(body["kind"], "websocket_required", "{body}");

    // With no members the first frame is an empty peer list.
    let mut socket = connect(&daemon, "/v1/peers/watch").await;
    let first = next_json(&mut socket, Instant::now() + READY_TIMEOUT).await;
    assert_eq!(first, serde_json::json!({"type": "peers", "peers": []}));
}
