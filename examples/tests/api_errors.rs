//! Failure paths of the CLI and the local API, against real processes.

mod common;

use common::{cli, free_port, Daemon};

#[test]
fn cli_without_a_daemon_says_so() {
    let dir = tempfile::tempdir().expect("tempdir");
    let port = free_port();

    // No token file and nothing listening.
    let run = cli(dir.path(), port, &["status"]);
    assert_eq!(run.code, Some(3), "{run:?}");
    assert!(run.stderr.starts_with("error: "), "{run:?}");
    assert!(run.stderr.contains("no mesh-node daemon"), "{run:?}");
    assert_eq!(run.stderr.lines().count(), 1, "one line: {run:?}");

    // A token file but nothing listening.
    std::fs::write(
        dir.path().join("api.token"),
        "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa\n",
    )
    .expect("write token");
    let run = cli(dir.path(), port, &["pub", "a.b", "x"]);
    assert_eq!(run.code, Some(3), "{run:?}");
    assert!(run.stderr.contains("no mesh-node daemon"), "{run:?}");
}

#[test]
fn bad_input_gives_one_clear_error_line() {
    let dir = tempfile::tempdir().expect("tempdir");
    let daemon = Daemon::start(dir.path());

    let run = daemon.cli(&["mesh", "join", "not-a-uri"]);
    assert!(!run.ok(), "{run:?}");
    assert!(run.stderr.starts_with("error: "), "{run:?}");
    assert!(run.stderr.contains("invite"), "{run:?}");

    let run = daemon.cli(&["mesh", "forget", "nope"]);
    assert!(!run.ok(), "{run:?}");
    assert!(run.stderr.contains("unknown mesh"), "{run:?}");

    let run = daemon.cli(&["mesh", "invite"]);
    assert!(!run.ok(), "invite without a mesh: {run:?}");
    assert!(run.stderr.starts_with("error: "), "{run:?}");

    let run = daemon.cli(&["call", "node.echo", "{not json"]);
    assert_eq!(run.code, Some(2), "{run:?}");
    assert!(run.stderr.contains("not valid JSON"), "{run:?}");

    let run = daemon.cli(&["call", "nobody.serves.this", "1"]);
    assert_eq!(run.code, Some(4), "{run:?}");
    assert!(run.stderr.contains("no provider"), "{run:?}");

    let run = daemon.cli(&["pub", "bad..topic", "x"]);
    assert!(!run.ok(), "{run:?}");
    assert!(run.stderr.starts_with("error: "), "{run:?}");

    let run = daemon.cli(&["sub", "bad..pattern"]);
    assert!(!run.ok(), "{run:?}");
    assert!(run.stderr.starts_with("error: "), "{run:?}");

    // Local calls work without any mesh.
    let run = daemon.cli(&["call", "node.echo", "[1, 2]"]);
    run.assert_ok("call node.echo");
    assert_eq!(run.stdout.trim(), "[1, 2]");
}

#[tokio::test]
async fn api_requires_the_token_and_bounds_payloads() {
    let dir = tempfile::tempdir().expect("tempdir");
    let daemon = Daemon::start(dir.path());
    let http = reqwest::Client::new();
    let base = daemon.api_url();

    // No header, a wrong token, a WebSocket route: all 401 with a JSON error.
    for request in [
        http.get(format!("{base}/v1/status")),
        http.get(format!("{base}/v1/status")).bearer_auth("wrong"),
        http.get(format!("{base}/v1/subscribe?pattern=a.b")),
        http.get(format!("{base}/v1/peers/watch")),
        http.post(format!("{base}/v1/publish"))
            .json(&serde_json::json!({"topic": "a.b", "payload": "x"})),
    ] {
        let response = request.send().await.expect("request");
        assert_eq!(response.status(), reqwest::StatusCode::UNAUTHORIZED);
        let body: serde_json::Value = response.json().await.expect("JSON error body");
        assert_eq!(body["kind"], "unauthorized", "{body}");
    }

    let token = daemon.token();
    let response = http
        .get(format!("{base}/v1/status"))
        .bearer_auth(&token)
        .send()
        .await
        .expect("status");
    assert_eq!(response.status(), reqwest::StatusCode::OK);

    // A 5 MiB payload is over the 4 MiB default limit.
    let payload = "x".repeat(5 * 1024 * 1024);
    let response = http
        .post(format!("{base}/v1/publish"))
        .bearer_auth(&token)
        .json(&serde_json::json!({"topic": "home.big", "payload": payload}))
        .send()
        .await
        .expect("publish");
    assert_eq!(response.status(), reqwest::StatusCode::PAYLOAD_TOO_LARGE);
    let body: serde_json::Value = response.json().await.expect("JSON error body");
    assert_eq!(body["kind"], "payload_too_large", "{body}");

    // Unknown mesh → 404 with its kind.
    let response = http
        .delete(format!("{base}/v1/meshes/nope"))
        .bearer_auth(&token)
        .send()
        .await
        .expect("forget");
    assert_eq!(response.status(), reqwest::StatusCode::NOT_FOUND);
    let body: serde_json::Value = response.json().await.expect("JSON error body");
    assert_eq!(body["kind"], "unknown_mesh", "{body}");

    // Publish over HTTP with a binary payload.
    let response = http
        .post(format!("{base}/v1/publish"))
        .bearer_auth(&token)
        .json(&serde_json::json!({"topic": "home.bin", "payload_base64": "AAEC"}))
        .send()
        .await
        .expect("publish");
    assert_eq!(response.status(), reqwest::StatusCode::OK);
    let body: serde_json::Value = response.json().await.expect("JSON body");
    assert_eq!(body["delivered"], 0, "{body}");
}

/// `GET /v1/metrics` needs the token and serves OpenMetrics text with
/// libp2p's and Atmosphere's metrics.
#[tokio::test]
async fn metrics_are_served_as_openmetrics_text_behind_the_token() {
    let dir = tempfile::tempdir().expect("tempdir");
    let daemon = Daemon::start(dir.path());
    let http = reqwest::Client::new();
    let url = format!("{}/v1/metrics", daemon.api_url());

    let response = http.get(&url).send().await.expect("request");
    assert_eq!(response.status(), reqwest::StatusCode::UNAUTHORIZED);

    let response = http
        .get(&url)
        .bearer_auth(daemon.token())
        .send()
        .await
        .expect("metrics");
    assert_eq!(response.status(), reqwest::StatusCode::OK);
    let content_type = response
        .headers()
        .get(reqwest::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    assert!(
        content_type.starts_with("application/openmetrics-text"),
        "{content_type}"
    );
    let text = response.text().await.expect("body");
    assert!(text.contains("atmosphere_dcutr_attempts_total 0"), "{text}");
    assert!(text.contains("libp2p_swarm"), "{text}");
    assert!(text.ends_with("# EOF\n"));
}
