//! The WebSocket protocols of the local API, spoken by a raw client the way
//! a Python or Go app would (one daemon; calls and messages stay local).

mod common;

use std::time::Duration;

use futures::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio_tungstenite::{
    tungstenite::{client::IntoClientRequest, http::HeaderValue, Message},
    MaybeTlsStream, WebSocketStream,
};

use common::Daemon;

type Socket = WebSocketStream<MaybeTlsStream<tokio::net::TcpStream>>;

async fn connect(daemon: &Daemon, path_and_query: &str) -> Socket {
    let url = format!("ws://127.0.0.1:{}{path_and_query}", daemon.api_port);
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

async fn next_json(socket: &mut Socket) -> Value {
    loop {
        let frame = tokio::time::timeout(Duration::from_secs(30), socket.next())
            .await
            .expect("a frame within 30 s")
            .expect("socket open")
            .expect("frame");
        if let Message::Text(text) = frame {
            return serde_json::from_str(text.as_str()).expect("JSON frame");
        }
    }
}

async fn send_json(socket: &mut Socket, value: Value) {
    socket
        .send(Message::Text(value.to_string().into()))
        .await
        .expect("send");
}

/// `POST /v1/call` in a task, so the test can answer on the socket meanwhile.
fn call(daemon: &Daemon, body: Value) -> tokio::task::JoinHandle<(u16, Value)> {
    let url = format!("{}/v1/call", daemon.api_url());
    let token = daemon.token();
    tokio::spawn(async move {
        let response = reqwest::Client::new()
            .post(url)
            .bearer_auth(token)
            .json(&body)
            .send()
            .await
            .expect("call");
        let status = response.status().as_u16();
        (status, response.json().await.expect("JSON answer"))
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn register_protocol_round_trips() {
    let dir = tempfile::tempdir().expect("tempdir");
    let daemon = Daemon::start(dir.path());
    let mut socket = connect(&daemon, "/v1/register?uri=test.raw").await;
    assert_eq!(
        next_json(&mut socket).await,
        json!({"type": "registered", "uri": "test.raw"})
    );

    // A JSON result.
    let pending = call(&daemon, json!({"uri": "test.raw", "args": {"n": 2}}));
    let frame = next_json(&mut socket).await;
    assert_eq!(frame["type"], "call");
    assert_eq!(frame["uri"], "test.raw");
    assert_eq!(frame["args"], json!({"n": 2}));
    assert!(frame["caller"]
        .as_str()
        .is_some_and(|c| c.starts_with("12D3")));
    let id = frame["id"].clone();
    send_json(&mut socket, json!({"id": id, "result": {"doubled": 4}})).await;
    let (status, answer) = pending.await.expect("task");
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["result"], json!({"doubled": 4}));

    // An error and a refusal.
    let pending = call(&daemon, json!({"uri": "test.raw", "args": 1}));
    let id = next_json(&mut socket).await["id"].clone();
    send_json(&mut socket, json!({"id": id, "error": "boom"})).await;
    let (status, answer) = pending.await.expect("task");
    assert_eq!(
        (status, answer["kind"].as_str()),
        (502, Some("remote_error"))
    );
    assert!(answer["error"].as_str().is_some_and(|e| e.contains("boom")));

    let pending = call(&daemon, json!({"uri": "test.raw", "args": 1}));
    let id = next_json(&mut socket).await["id"].clone();
    send_json(&mut socket, json!({"id": id, "denied": "not you"})).await;
    let (status, answer) = pending.await.expect("task");
    assert_eq!((status, answer["kind"].as_str()), (403, Some("denied")));

    // A malformed frame gets an error frame; the socket stays usable.
    send_json(&mut socket, json!({"nonsense": true})).await;
    assert_eq!(next_json(&mut socket).await["type"], "error");

    // The URI is taken while the socket is open.
    let second = reqwest::Client::new()
        .get(format!("{}/v1/register?uri=test.raw", daemon.api_url()))
        .bearer_auth(daemon.token())
        .header("connection", "upgrade")
        .header("upgrade", "websocket")
        .header("sec-websocket-version", "13")
        .header("sec-websocket-key", "dGhlIHNhbXBsZSBub25jZQ==")
        .send()
        .await
        .expect("second register");
    assert_eq!(second.status().as_u16(), 409);

    // Closing the socket unregisters.
    socket.close(None).await.expect("close");
    drop(socket);
    let gone = common::eventually(common::READY_TIMEOUT, || {
        let run = daemon.cli(&["call", "test.raw", "1", "--timeout", "1s"]);
        run.stderr.contains("no provider").then_some(())
    });
    assert!(gone.is_some(), "test.raw still registered after close");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subscribe_protocol_streams_messages() {
    let dir = tempfile::tempdir().expect("tempdir");
    let daemon = Daemon::start(dir.path());
    let mut socket = connect(&daemon, "/v1/subscribe?pattern=lab.%2A.temp").await;
    assert_eq!(
        next_json(&mut socket).await,
        json!({"type": "subscribed", "pattern": "lab.*.temp"})
    );

    let http = reqwest::Client::new();
    for body in [
        json!({"topic": "lab.other.humidity", "payload": "no"}),
        json!({"topic": "lab.bench.temp", "payload": "20.5"}),
        json!({"topic": "lab.bench.temp", "payload_base64": "/wA="}),
    ] {
        let response = http
            .post(format!("{}/v1/publish", daemon.api_url()))
            .bearer_auth(daemon.token())
            .json(&body)
            .send()
            .await
            .expect("publish");
        assert_eq!(response.status().as_u16(), 200);
    }
    let text = next_json(&mut socket).await;
    assert_eq!(text["type"], "message");
    assert_eq!(text["topic"], "lab.bench.temp");
    assert_eq!(text["payload"], "20.5");
    assert_eq!(text["payload_base64"], "MjAuNQ==");
    assert!(text["timestamp_ms"].as_u64().is_some_and(|t| t > 0));
    let binary = next_json(&mut socket).await;
    assert_eq!(binary["payload"], Value::Null);
    assert_eq!(binary["payload_base64"], "/wA=");
}
