//! Proximity pairing through the daemon, with real processes on loopback:
//! `mesh-node pair --accept` on the founder and `mesh-node pair ADDRESS` on
//! the other node (by address: mDNS is off), a rejection, Ctrl-C turning
//! pairing mode off, `nearby`, and the API's pairing routes and their errors.

mod common;

use std::time::Duration;

use reqwest::StatusCode;
use serde_json::{json, Value};

use common::{eventually, Background, Daemon, READY_TIMEOUT};

/// Long enough for a pairing on a loaded machine (the node's own session
/// timeout is 120 s).
const PAIR_TIMEOUT: Duration = Duration::from_secs(150);

/// Parses a command's stdout as JSON.
#[track_caller]
fn json(run: &common::Run, what: &str) -> Value {
    run.assert_ok(what);
    serde_json::from_str(&run.stdout)
        .unwrap_or_else(|e| panic!("{what} is not JSON ({e}):\n{}", run.stdout))
}

/// `daemon`'s first listen address with `/p2p/PEER_ID`.
fn dial_address(daemon: &Daemon) -> String {
    let status = json(&daemon.cli(&["status", "--json"]), "status --json");
    let addr = status["listen_addrs"][0]
        .as_str()
        .expect("a listen address")
        .to_owned();
    format!(
        "{addr}/p2p/{}",
        status["peer_id"].as_str().expect("peer id")
    )
}

/// Waits for a background command to exit and returns its code and stdout.
#[track_caller]
fn finish(mut process: Background, what: &str) -> (Option<i32>, String) {
    let exited = eventually(PAIR_TIMEOUT, || process.exited().then_some(()));
    assert!(exited.is_some(), "{what} did not exit");
    process.finish()
}

/// An authenticated request to `daemon`'s API: status and JSON body.
async fn api(
    daemon: &Daemon,
    method: reqwest::Method,
    path: &str,
    body: Option<&str>,
) -> (StatusCode, Value) {
    let mut request = reqwest::Client::new()
        .request(method, format!("{}{path}", daemon.api_url()))
        .bearer_auth(daemon.token());
    if let Some(body) = body {
        request = request
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .body(body.to_owned());
    }
    let response = request.send().await.expect("request");
    let status = response.status();
    let text = response.text().await.expect("body");
    let value = serde_json::from_str(&text).unwrap_or(Value::String(text));
    (status, value)
}

/// Whether `daemon` is in pairing mode, from `GET /v1/pairing`.
async fn accepting(daemon: &Daemon) -> bool {
    let (status, body) = api(daemon, reqwest::Method::GET, "/v1/pairing", None).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    body["mode"]["accepting"]
        .as_bool()
        .unwrap_or_else(|| panic!("mode.accepting: {body}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_daemons_pair_over_the_lan_by_address() {
    let dir = tempfile::tempdir().expect("tempdir");
    let founder = Daemon::start(&dir.path().join("founder"));
    let other = Daemon::start(&dir.path().join("other"));
    let created = founder.cli(&["mesh", "create", "home"]);
    created.assert_ok("mesh create");
    let mesh_id = created.last_line();
    let address = dial_address(&founder);

    let mut accept = founder.spawn(&["pair", "--accept", "--once", "--yes", "--timeout", "140s"]);
    accept.wait_stderr("pairing mode on for mesh home");
    assert!(accepting(&founder).await);

    let requester = other.cli(&["pair", &address, "--yes", "--json", "--timeout", "140s"]);
    let session = json(&requester, "pair ADDRESS --yes --json");
    assert_eq!(session["state"], "completed", "{session}\n{requester:?}");
    assert_eq!(session["role"], "requester", "{session}");
    assert_eq!(session["mesh_id"], mesh_id.as_str(), "{session}");
    assert_eq!(session["mesh_name"], "home", "{session}");
    let code = session["code"].as_str().unwrap_or_default();
    assert!(
        code.len() == 6 && code.chars().all(|c| c.is_ascii_digit()),
        "{session}"
    );
    assert!(
        requester
            .stderr
            .contains("does the other screen show the same code?"),
        "{requester:?}"
    );

    let (code_status, stdout) = finish(accept, "pair --accept --once");
    assert_eq!(code_status, Some(0), "pair --accept --once: {stdout}");
    assert!(
        stdout.contains("it is now a member of mesh home"),
        "{stdout}"
    );
    // Pairing mode is off once `pair --accept` is gone.
    assert!(!accepting(&founder).await);

    // The other node is now a member of the founder's mesh.
    let listed = eventually(READY_TIMEOUT, || {
        let meshes = json(&other.cli(&["mesh", "list", "--json"]), "mesh list --json");
        meshes
            .as_array()?
            .iter()
            .find(|m| m["id"] == mesh_id.as_str())
            .cloned()
    });
    let listed = listed.expect("the paired node lists the mesh");
    assert_eq!(listed["is_founder"], false, "{listed}");
    let run = other.cli(&["mesh", "list"]);
    run.assert_ok("mesh list");
    assert!(run.stdout.contains("home"), "{run:?}");

    // A member cannot turn pairing mode on for the founder's mesh.
    let body = json!({"mesh": mesh_id, "on": true}).to_string();
    let (status, body) = api(
        &other,
        reqwest::Method::PUT,
        "/v1/pairing/accept",
        Some(&body),
    )
    .await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{body}");
    assert_eq!(body["kind"], "not_founder", "{body}");
    let run = other.cli(&["pair", "--accept", "--mesh", &mesh_id, "--once"]);
    assert_eq!(run.code, Some(6), "{run:?}");
    assert!(run.stderr.contains("only the founder"), "{run:?}");

    // The founder's session list has the finished session.
    let (status, body) = api(&founder, reqwest::Method::GET, "/v1/pairing", None).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let sessions = body["sessions"].as_array().expect("sessions");
    let theirs = sessions
        .iter()
        .find(|s| s["role"] == "acceptor")
        .unwrap_or_else(|| panic!("{body}"));
    assert_eq!(theirs["state"], "completed", "{body}");
    assert_eq!(theirs["code"], code, "both sides saw the same code");
    let id = theirs["id"].as_u64().expect("id");
    let (status, one) = api(
        &founder,
        reqwest::Method::GET,
        &format!("/v1/pairing/{id}"),
        None,
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{one}");
    assert_eq!(&one, theirs);
    // Deciding on a finished session is a conflict.
    let (status, body) = api(
        &founder,
        reqwest::Method::POST,
        &format!("/v1/pairing/{id}/reject"),
        None,
    )
    .await;
    assert_eq!(status, StatusCode::CONFLICT, "{body}");
    assert_eq!(body["kind"], "pairing_state", "{body}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rejected_pairing_fails_on_both_sides() {
    let dir = tempfile::tempdir().expect("tempdir");
    let founder = Daemon::start(&dir.path().join("founder"));
    let other = Daemon::start(&dir.path().join("other"));
    founder
        .cli(&["mesh", "create", "home"])
        .assert_ok("mesh create");
    let address = dial_address(&founder);

    // No --yes and no input (stdin is /dev/null): the founder rejects.
    let mut accept = founder.spawn(&["pair", "--accept", "--once", "--timeout", "140s"]);
    accept.wait_stderr("pairing mode on");
    let requester = other.cli(&["pair", &address, "--yes", "--timeout", "140s"]);
    assert_eq!(requester.code, Some(1), "{requester:?}");
    assert!(requester.stderr.contains("failed"), "{requester:?}");

    let (code, stdout) = finish(accept, "pair --accept --once");
    assert_eq!(code, Some(1), "{stdout}");
    assert!(stdout.contains("failed"), "{stdout}");
    assert!(!accepting(&founder).await);
    let meshes = json(&other.cli(&["mesh", "list", "--json"]), "mesh list --json");
    assert_eq!(meshes, json!([]), "no mesh after a rejection");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ctrl_c_turns_pairing_mode_off() {
    let dir = tempfile::tempdir().expect("tempdir");
    let founder = Daemon::start(dir.path());
    founder
        .cli(&["mesh", "create", "home"])
        .assert_ok("mesh create");
    let mut accept = founder.spawn(&["pair", "--accept"]);
    accept.wait_stderr("pairing mode on");
    assert!(accepting(&founder).await);
    accept.interrupt();
    let (code, _) = finish(accept, "pair --accept");
    assert_eq!(code, Some(0));
    assert!(!accepting(&founder).await);

    // Without a mesh there is nothing to pair into.
    let dir = tempfile::tempdir().expect("tempdir");
    let lonely = Daemon::start(dir.path());
    let run = lonely.cli(&["pair", "--accept", "--once"]);
    assert!(!run.ok(), "{run:?}");
    assert!(run.stderr.contains("no mesh"), "{run:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nearby_and_pairing_routes_answer_json_and_clear_errors() {
    let dir = tempfile::tempdir().expect("tempdir");
    let daemon = Daemon::start(dir.path());
    use reqwest::Method;

    // Nearby: a JSON list (empty: mDNS is off and there is no radio).
    let (status, body) = api(&daemon, Method::GET, "/v1/nearby", None).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert!(body.is_array(), "{body}");
    let run = daemon.cli(&["nearby", "--json"]);
    assert!(json(&run, "nearby --json").is_array());
    let run = daemon.cli(&["nearby"]);
    run.assert_ok("nearby");
    assert!(run.stdout.contains("no devices nearby"), "{run:?}");
    let run = daemon.cli(&["pair"]);
    run.assert_ok("pair without a device");
    assert!(run.stderr.contains("mesh-node pair ID"), "{run:?}");

    // Pairing state: mode off, no sessions.
    let (status, body) = api(&daemon, Method::GET, "/v1/pairing", None).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["mode"]["accepting"], false, "{body}");
    assert_eq!(body["sessions"], json!([]), "{body}");

    // Unknown sessions: 404; ids that are no number: 400.
    for (method, path) in [
        (Method::GET, "/v1/pairing/999"),
        (Method::POST, "/v1/pairing/999/confirm"),
        (Method::POST, "/v1/pairing/999/reject"),
    ] {
        let (status, body) = api(&daemon, method, path, None).await;
        assert_eq!(status, StatusCode::NOT_FOUND, "{path}: {body}");
        assert_eq!(body["kind"], "unknown_session", "{path}: {body}");
    }
    let (status, body) = api(&daemon, Method::GET, "/v1/pairing/abc", None).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    assert_eq!(body["kind"], "bad_request", "{body}");

    // Malformed bodies: 400; the wrong shape: 422.
    for (method, path) in [
        (Method::POST, "/v1/pairing"),
        (Method::PUT, "/v1/pairing/accept"),
    ] {
        let (status, body) = api(&daemon, method.clone(), path, Some("{not json")).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{path}: {body}");
        assert_eq!(body["kind"], "bad_request", "{path}: {body}");
        let (status, body) = api(&daemon, method, path, Some("{}")).await;
        assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{path}: {body}");
        assert_eq!(body["kind"], "bad_request", "{path}: {body}");
    }
    let (status, body) = api(
        &daemon,
        Method::POST,
        "/v1/pairing",
        Some(r#"{"device": " "}"#),
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    // A device that is not nearby.
    let (status, body) = api(
        &daemon,
        Method::POST,
        "/v1/pairing",
        Some(r#"{"device": "0a1b2c3d4e5f"}"#),
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    assert!(
        body["error"]
            .as_str()
            .is_some_and(|e| e.contains("no nearby device")),
        "{body}"
    );
    let run = daemon.cli(&["pair", "0a1b2c3d4e5f", "--yes"]);
    assert_eq!(run.code, Some(1), "{run:?}");
    assert!(run.stderr.contains("no nearby device"), "{run:?}");

    // Pairing mode needs a mesh this node founded.
    let (status, body) = api(
        &daemon,
        Method::PUT,
        "/v1/pairing/accept",
        Some(r#"{"on": true}"#),
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    let (status, body) = api(
        &daemon,
        Method::PUT,
        "/v1/pairing/accept",
        Some(r#"{"mesh": "nope", "on": true}"#),
    )
    .await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{body}");
    assert_eq!(body["kind"], "unknown_mesh", "{body}");
    daemon
        .cli(&["mesh", "create", "home"])
        .assert_ok("mesh create");
    let (status, body) = api(
        &daemon,
        Method::PUT,
        "/v1/pairing/accept",
        Some(r#"{"mesh": "home", "on": true}"#),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["accepting"], true, "{body}");
    assert_eq!(body["mesh_name"], "home", "{body}");
    let (status, body) = api(
        &daemon,
        Method::PUT,
        "/v1/pairing/accept",
        Some(r#"{"on": false}"#),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["accepting"], false, "{body}");

    // Every pairing route needs the token.
    let response = reqwest::Client::new()
        .get(format!("{}/v1/pairing", daemon.api_url()))
        .send()
        .await
        .expect("request");
    assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
}
