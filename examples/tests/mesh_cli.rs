//! The mesh commands around invites, joins and saved meshes, with real
//! daemons on loopback: `mesh token`, `mesh join --json`, `mesh list` with
//! state, last seen and auto-reconnect, `mesh show` with the saved
//! endpoints, `mesh auto-reconnect`, the network section of `status`, and
//! their errors (CLI and API).

mod common;

use atmosphere::invite::InviteUri;
use serde_json::Value;

use common::{eventually, Daemon, READY_TIMEOUT};

/// Parses a command's stdout as JSON.
#[track_caller]
fn json(run: &common::Run, what: &str) -> Value {
    run.assert_ok(what);
    serde_json::from_str(&run.stdout)
        .unwrap_or_else(|e| panic!("{what} is not JSON ({e}):\n{}", run.stdout))
}

/// The mesh `id` in `daemon`'s `mesh list --json`.
fn listed_mesh(daemon: &Daemon, id: &str) -> Option<Value> {
    let meshes = json(&daemon.cli(&["mesh", "list", "--json"]), "mesh list --json");
    meshes.as_array()?.iter().find(|m| m["id"] == id).cloned()
}

/// The cells of a table row (columns are separated by two spaces or more).
fn cells(line: &str) -> Vec<&str> {
    line.split("  ")
        .map(str::trim)
        .filter(|c| !c.is_empty())
        .collect()
}

#[test]
fn token_join_list_show_and_auto_reconnect() {
    let dir = tempfile::tempdir().expect("tempdir");
    let a = Daemon::start(&dir.path().join("a"));
    let b = Daemon::start(&dir.path().join("b"));
    let a_peer = a.peer_id();

    let created = a.cli(&["mesh", "create", "home"]);
    created.assert_ok("mesh create");
    let mesh_id = created.last_line();

    // `mesh token --json`: the token document, consistent with its URI.
    let token = json(
        &a.cli(&["mesh", "token", "--uses", "2", "--ttl", "1h", "--json"]),
        "mesh token --json",
    );
    for field in [
        "token",
        "mesh_id",
        "mesh_name",
        "endpoints",
        "network_info",
        "uri",
        "expires_at",
    ] {
        assert!(token.get(field).is_some(), "no {field}: {token}");
    }
    for field in ["local_ip", "public_ip", "is_behind_nat"] {
        assert!(
            token["network_info"].get(field).is_some(),
            "no network_info.{field}: {token}"
        );
    }
    assert_eq!(token["mesh_id"], mesh_id.as_str(), "{token}");
    assert_eq!(token["mesh_name"], "home", "{token}");
    assert!(token["expires_at"].as_i64().unwrap_or(0) > 0, "{token}");
    let uri = token["uri"].as_str().expect("uri is a string").to_owned();
    let parsed = InviteUri::parse(&uri).expect("the token's URI parses");
    assert_eq!(token["token"], parsed.token.as_str(), "{token}");
    assert!(parsed.token.starts_with("ATM-"), "{token}");
    for (group, addrs) in [
        ("local", &parsed.endpoints.local),
        ("public", &parsed.endpoints.public),
        ("relay", &parsed.endpoints.relay),
    ] {
        let expected: Vec<Value> = addrs.iter().map(|a| a.to_string().into()).collect();
        assert_eq!(token["endpoints"][group], Value::Array(expected), "{group}");
    }
    assert!(
        !parsed.endpoints.local.is_empty(),
        "a loopback listener is a local endpoint: {token}"
    );

    // The text form shows the same document.
    let text = a.cli(&["mesh", "token"]);
    text.assert_ok("mesh token");
    for expected in [
        "token:         ATM-",
        "endpoints:     local   /ip4/127.0.0.1/",
        "behind NAT:",
        "uri:           atmosphere://join?",
    ] {
        assert!(
            text.stdout.contains(expected),
            "{expected}: {}",
            text.stdout
        );
    }

    // `mesh join --json` on loopback: the local endpoint, a LAN path.
    let report = json(
        &b.cli(&["mesh", "join", &uri, "--json"]),
        "mesh join --json",
    );
    assert_eq!(report["id"], mesh_id.as_str(), "{report}");
    assert_eq!(report["name"], "home", "{report}");
    assert_eq!(report["founder"], a_peer.as_str(), "{report}");
    assert_eq!(report["is_founder"], false, "{report}");
    assert_eq!(report["endpoint_group"], "local", "{report}");
    assert_eq!(report["path"], "lan", "{report}");
    assert_eq!(report["tried"][0], "local", "{report}");
    assert!(
        report["endpoint"]
            .as_str()
            .is_some_and(|e| e.starts_with("/ip4/127.0.0.1/")),
        "{report}"
    );
    assert!(report["elapsed_ms"].is_u64(), "{report}");

    // `mesh list --json`: connected over the LAN, A's endpoint saved.
    let mesh = eventually(READY_TIMEOUT, || {
        let mesh = listed_mesh(&b, &mesh_id)?;
        let saved = mesh["endpoints"]
            .as_array()?
            .iter()
            .any(|e| e["peer_id"] == a_peer.as_str() && e["kind"] == "local");
        (mesh["state"] == "connected"
            && mesh["connected_via"] == serde_json::json!(["lan"])
            && saved)
            .then_some(mesh)
    })
    .unwrap_or_else(|| {
        panic!(
            "B's mesh never showed connected via lan with A's endpoint: {:?}\nB log:\n{}",
            listed_mesh(&b, &mesh_id),
            b.log_text()
        )
    });
    assert_eq!(mesh["auto_reconnect"], true, "{mesh}");
    assert!(mesh["last_seen"].is_i64(), "{mesh}");

    // The text forms.
    let list = b.cli(&["mesh", "list"]);
    list.assert_ok("mesh list");
    let header = list.stdout.lines().next().unwrap_or_default();
    assert_eq!(
        cells(header)[5..],
        ["STATE", "LAST SEEN", "AUTO-RECONNECT"],
        "{}",
        list.stdout
    );
    let row = list
        .stdout
        .lines()
        .find(|l| l.starts_with(&mesh_id))
        .unwrap_or_default();
    assert_eq!(
        cells(row)[5..],
        ["connected via lan", "now", "on"],
        "{}",
        list.stdout
    );

    let show = b.cli(&["mesh", "show", "home"]);
    show.assert_ok("mesh show");
    let a_tail: String = a_peer.chars().skip(a_peer.chars().count() - 8).collect();
    let endpoint_row = show
        .stdout
        .lines()
        .find(|l| l.starts_with(&format!("…{a_tail}")))
        .unwrap_or_else(|| panic!("no row for A in:\n{}", show.stdout));
    assert!(
        endpoint_row.contains("local") && endpoint_row.contains("/ip4/127.0.0.1/tcp/"),
        "{}",
        show.stdout
    );
    assert!(
        show.stdout.contains("auto-reconnect: on"),
        "{}",
        show.stdout
    );
    let shown = json(
        &b.cli(&["mesh", "show", &mesh_id, "--json"]),
        "mesh show --json",
    );
    assert_eq!(shown["id"], mesh_id.as_str(), "{shown}");
    assert!(shown["endpoints"].is_array(), "{shown}");

    // auto-reconnect off: the switch is saved, open connections stay.
    let off = b.cli(&["mesh", "auto-reconnect", "home", "off"]);
    off.assert_ok("auto-reconnect off");
    assert!(
        off.stdout.contains("auto-reconnect off for mesh home"),
        "{off:?}"
    );
    let mesh = listed_mesh(&b, &mesh_id).expect("the mesh is still listed");
    assert_eq!(mesh["auto_reconnect"], false, "{mesh}");
    assert_eq!(mesh["state"], "connected", "{mesh}");
    let list = b.cli(&["mesh", "list"]);
    let row = list
        .stdout
        .lines()
        .find(|l| l.starts_with(&mesh_id))
        .unwrap_or_default();
    assert_eq!(cells(row).last().copied(), Some("off"), "{}", list.stdout);
    b.cli(&["mesh", "auto-reconnect", &mesh_id, "on"])
        .assert_ok("auto-reconnect on");
    let mesh = listed_mesh(&b, &mesh_id).expect("the mesh is still listed");
    assert_eq!(mesh["auto_reconnect"], true, "{mesh}");

    // Errors: a bad setting is a usage error, an unknown mesh a clear one.
    let bad = b.cli(&["mesh", "auto-reconnect", "home", "maybe"]);
    assert_eq!(bad.code, Some(2), "{bad:?}");
    assert!(
        bad.stderr.contains("maybe") && bad.stderr.contains("possible values: on, off"),
        "{bad:?}"
    );
    let unknown = b.cli(&["mesh", "auto-reconnect", "nope", "off"]);
    assert_eq!(unknown.code, Some(1), "{unknown:?}");
    assert_eq!(unknown.stderr.lines().count(), 1, "one line: {unknown:?}");
    assert!(
        unknown.stderr.starts_with("error: ") && unknown.stderr.contains("unknown mesh"),
        "{unknown:?}"
    );
    let unknown = b.cli(&["mesh", "show", "nope"]);
    assert!(!unknown.ok(), "{unknown:?}");
    assert!(unknown.stderr.contains("unknown mesh"), "{unknown:?}");

    // `status` has a network section.
    let status = a.cli(&["status"]);
    status.assert_ok("status");
    for expected in [
        "local IP:      127.0.0.1",
        "public IP:",
        "behind NAT:",
        "reachability:",
        "public addrs:",
        "UPnP:          off",
    ] {
        assert!(
            status.stdout.contains(expected),
            "{expected}: {}",
            status.stdout
        );
    }
}

#[tokio::test]
async fn mesh_routes_answer_with_clear_errors() {
    let dir = tempfile::tempdir().expect("tempdir");
    let daemon = Daemon::start(dir.path());
    daemon
        .cli(&["mesh", "create", "home"])
        .assert_ok("mesh create");
    let http = reqwest::Client::new();
    let base = daemon.api_url();
    let token = daemon.token();
    let put = |mesh: &str| {
        http.put(format!("{base}/v1/meshes/{mesh}/auto-reconnect"))
            .bearer_auth(&token)
    };
    let error_kind = |response: reqwest::Response| async move {
        let status = response.status();
        let body: Value = response.json().await.expect("JSON error body");
        (
            status.as_u16(),
            body["kind"].as_str().unwrap_or_default().to_owned(),
        )
    };

    let response = put("home")
        .json(&serde_json::json!({"enabled": false}))
        .send()
        .await
        .expect("put");
    assert_eq!(response.status(), reqwest::StatusCode::OK);
    let mesh: Value = response.json().await.expect("mesh JSON");
    assert_eq!(mesh["name"], "home", "{mesh}");
    assert_eq!(mesh["auto_reconnect"], false, "{mesh}");
    assert_eq!(mesh["state"], "alone", "{mesh}");

    let response = put("nope")
        .json(&serde_json::json!({"enabled": true}))
        .send()
        .await
        .expect("put");
    assert_eq!(error_kind(response).await, (404, "unknown_mesh".to_owned()));

    let response = put("home")
        .json(&serde_json::json!({"enabled": "yes"}))
        .send()
        .await
        .expect("put");
    // axum answers a well-formed body of the wrong shape with 422.
    let (status, kind) = error_kind(response).await;
    assert!(matches!(status, 400 | 422), "{status}");
    assert_eq!(kind, "bad_request");

    let response = put("home").body("{}").send().await.expect("put");
    assert_eq!(
        error_kind(response).await,
        (415, "unsupported_media_type".to_owned())
    );

    let response = http
        .post(format!("{base}/v1/meshes/home/auto-reconnect"))
        .bearer_auth(&token)
        .json(&serde_json::json!({"enabled": true}))
        .send()
        .await
        .expect("post");
    assert_eq!(
        error_kind(response).await,
        (405, "method_not_allowed".to_owned())
    );

    let response = http
        .get(format!("{base}/v1/meshes/home"))
        .bearer_auth(&token)
        .send()
        .await
        .expect("get mesh");
    assert_eq!(response.status(), reqwest::StatusCode::OK);
    let mesh: Value = response.json().await.expect("mesh JSON");
    assert_eq!(mesh["auto_reconnect"], false, "{mesh}");

    let response = http
        .get(format!("{base}/v1/meshes/nope"))
        .bearer_auth(&token)
        .send()
        .await
        .expect("get mesh");
    assert_eq!(error_kind(response).await, (404, "unknown_mesh".to_owned()));
}
