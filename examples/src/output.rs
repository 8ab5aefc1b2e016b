//! How the CLI prints things: pure formatting functions, no I/O.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use atmosphere::{
    BleStatus, JoinReport, MemberStatus, MeshInfo, NearbyDevice, NetworkStatus, PairingSession,
    PathStatus, PeerInfo, SavedEndpoint, Status,
};
use qrcode::{render::unicode::Dense1x2, QrCode};
use serde_json::Value;

use crate::proto::{encode_base64, InviteToken, MessageJson, PeerEventJson};

/// Offline members last seen longer ago than this show a timestamp instead.
const AGO_LIMIT_SECS: u64 = 24 * 3600;

/// An RPC result as one JSON text: the bytes themselves if they are JSON,
/// else a JSON string if they are UTF-8, else `{"base64": "…"}`.
pub fn rpc_result(bytes: &[u8]) -> String {
    if let Ok(text) = std::str::from_utf8(bytes) {
        if serde_json::from_str::<Value>(text).is_ok() {
            return text.trim().to_owned();
        }
        return Value::String(text.to_owned()).to_string();
    }
    serde_json::json!({ "base64": encode_base64(bytes) }).to_string()
}

/// `TOPIC PAYLOAD` (payload as lossy UTF-8, line breaks escaped so one
/// message stays one line).
pub fn message_line(message: &MessageJson) -> String {
    let payload = message.payload_bytes();
    let text = String::from_utf8_lossy(&payload);
    format!(
        "{} {}",
        message.topic,
        text.replace('\\', "\\\\")
            .replace('\n', "\\n")
            .replace('\r', "\\r")
    )
}

/// One message as a one-line JSON object.
pub fn message_json(message: &MessageJson) -> String {
    serde_json::to_string(message).unwrap_or_else(|_| "{}".to_owned())
}

/// Any serializable value as pretty JSON.
pub fn pretty_json<T: serde::Serialize>(value: &T) -> String {
    serde_json::to_string_pretty(value).unwrap_or_else(|e| format!("{{\"error\": \"{e}\"}}"))
}

/// The node status for people.
pub fn status_text(status: &Status) -> String {
    let mut out = Vec::new();
    out.push(format!("peer id:       {}", status.peer_id));
    out.push(format!("name:          {}", status.name));
    out.push(format!("version:       {}", status.version));
    out.push(format!(
        "uptime:        {}",
        humantime::format_duration(Duration::from_secs(status.uptime_secs))
    ));
    push_list(&mut out, "listening on:", &status.listen_addrs);
    out.extend(network_lines(&status.network));
    let meshes: Vec<String> = status
        .meshes
        .iter()
        .map(|m| {
            format!(
                "{} ({}, {}, {} members, {} connected, {})",
                m.name,
                m.id,
                role(m),
                m.members,
                m.connected,
                mesh_state(m)
            )
        })
        .collect();
    push_list(&mut out, "meshes:", &meshes);
    out.push(format!(
        "peers:         {} connected",
        status.connected_peers
    ));
    push_list(&mut out, "paths:", &paths_table(&status.paths));
    out.push(format!(
        "retransmitted: {} frames (sent again on a new path)",
        status.retransmitted
    ));
    out.push(format!(
        "duplicates:    {} frames dropped",
        status.duplicates_dropped
    ));
    push_list(&mut out, "subscriptions:", &status.subscriptions);
    push_list(&mut out, "registrations:", &status.registrations);
    if let Some(ble) = &status.ble {
        push_list(&mut out, "BLE:", &ble_lines(ble));
    }
    out.join("\n")
}

/// The Bluetooth LE radio for `status`: address, PSM, advertising,
/// connections, devices nearby.
pub fn ble_lines(ble: &BleStatus) -> Vec<String> {
    let psm = ble.psm.map_or_else(
        || "not listening".to_owned(),
        |psm| format!("{psm:#06x} ({psm})"),
    );
    let plural = |n: usize| if n == 1 { "" } else { "s" };
    vec![
        format!("address {}", ble.address),
        format!("PSM {psm}"),
        format!("advertising {}", if ble.advertising { "yes" } else { "no" }),
        format!(
            "{} connection{}, {} device{} nearby",
            ble.connections,
            plural(ble.connections),
            ble.nearby.len(),
            plural(ble.nearby.len())
        ),
    ]
}

/// Devices nearby as a table: ID, VIA, ADDRESS, RSSI, MEMBER, NAME, LAST SEEN.
pub fn nearby_table(devices: &[NearbyDevice], now_ms: u64) -> String {
    if devices.is_empty() {
        return "no devices nearby".to_owned();
    }
    let rows = devices
        .iter()
        .map(|d| {
            vec![
                d.id.clone(),
                d.via.clone(),
                or_dash(d.address.clone()),
                d.rssi_dbm
                    .map_or_else(|| "-".to_owned(), |rssi| format!("{rssi} dBm")),
                if d.member { "yes" } else { "no" }.to_owned(),
                d.name.clone().unwrap_or_else(|| "-".to_owned()),
                since(now_ms.saturating_sub(d.last_seen_ms_ago), now_ms),
            ]
        })
        .collect();
    table(
        &[
            "ID",
            "VIA",
            "ADDRESS",
            "RSSI",
            "MEMBER",
            "NAME",
            "LAST SEEN",
        ],
        rows,
    )
}

/// A 6-digit pairing code as two groups of three (`123 456`); other codes
/// as they are.
pub fn pairing_code(code: &str) -> String {
    if code.len() == 6 && code.chars().all(|c| c.is_ascii_digit()) {
        format!("{} {}", &code[..3], &code[3..])
    } else {
        code.to_owned()
    }
}

/// The question the user answers while comparing codes.
pub fn pairing_prompt(code: &str) -> String {
    format!(
        "Code: {} — does the other screen show the same code? [y/N] ",
        pairing_code(code)
    )
}

/// The other side of a session: `NAME (PEER ID)`, or the peer id alone.
pub fn pairing_peer(session: &PairingSession) -> String {
    match session.peer_name.as_deref().filter(|n| !n.is_empty()) {
        Some(name) => format!("{name} ({})", session.peer_id),
        None => session.peer_id.clone(),
    }
}

/// How a finished session ended, for people.
pub fn pairing_outcome(session: &PairingSession) -> String {
    let peer = pairing_peer(session);
    let mesh = match (&session.mesh_name, &session.mesh_id) {
        (Some(name), Some(id)) => format!("mesh {name} ({id})"),
        (None, Some(id)) => format!("mesh {id}"),
        (Some(name), None) => format!("mesh {name}"),
        (None, None) => "the mesh".to_owned(),
    };
    match session.state.as_str() {
        "completed" if session.role == "requester" => {
            format!("paired with {peer}: joined {mesh}")
        }
        "completed" => format!("paired with {peer}: it is now a member of {mesh}"),
        "failed" => format!(
            "pairing with {peer} failed: {}",
            session.error.as_deref().unwrap_or("unknown error")
        ),
        state => format!("pairing with {peer}: {state}"),
    }
}

/// The `network` part of `status`: local and public IP, NAT, reachability,
/// public addresses, UPnP.
pub fn network_lines(network: &NetworkStatus) -> Vec<String> {
    let mut out = ip_lines(
        network.local_ip.as_deref(),
        network.public_ip.as_deref(),
        network.is_behind_nat,
    );
    let reachability = serde_json::to_value(network.reachability)
        .ok()
        .and_then(|v| v.as_str().map(str::to_owned))
        .unwrap_or_else(|| "unknown".to_owned());
    out.push(format!(
        "{:<15}{reachability} ({} AutoNAT test{}, {} confirmed)",
        "reachability:",
        network.autonat_tests,
        if network.autonat_tests == 1 { "" } else { "s" },
        network.autonat_confirmed
    ));
    push_list(&mut out, "public addrs:", &network.public_addrs);
    out.push(format!("{:<15}{}", "UPnP:", upnp_state(network)));
    out
}

/// `local IP:`, `public IP:` and `behind NAT:` lines (`unknown` for what is
/// not known).
fn ip_lines(
    local_ip: Option<&str>,
    public_ip: Option<&str>,
    behind_nat: Option<bool>,
) -> Vec<String> {
    let behind_nat = match behind_nat {
        Some(true) => "yes",
        Some(false) => "no",
        None => "unknown",
    };
    vec![
        format!("{:<15}{}", "local IP:", local_ip.unwrap_or("unknown")),
        format!("{:<15}{}", "public IP:", public_ip.unwrap_or("unknown")),
        format!("{:<15}{behind_nat}", "behind NAT:"),
    ]
}

/// `off`, `searching`, `mapped /ip4/…`, `no gateway`, `gateway not public`.
fn upnp_state(network: &NetworkStatus) -> String {
    let upnp = &network.upnp;
    if !upnp.enabled {
        return "off".to_owned();
    }
    let mut text = upnp.state.replace('_', " ");
    if !upnp.mapped.is_empty() {
        text.push(' ');
        text.push_str(&upnp.mapped.join(", "));
    }
    text
}

/// Meshes as a table; `now_secs` (Unix s) dates when members were last seen.
pub fn meshes_table(meshes: &[MeshInfo], now_secs: i64) -> String {
    if meshes.is_empty() {
        return "no meshes (create one with `mesh-node mesh create NAME` or join one with `mesh-node mesh join URI`)".to_owned();
    }
    let rows = meshes
        .iter()
        .map(|m| {
            vec![
                m.id.clone(),
                m.name.clone(),
                role(m).to_owned(),
                m.members.to_string(),
                m.connected.to_string(),
                mesh_state(m),
                mesh_last_seen(m, now_secs),
                on_off(m.auto_reconnect).to_owned(),
            ]
        })
        .collect();
    table(
        &[
            "ID",
            "NAME",
            "ROLE",
            "MEMBERS",
            "CONNECTED",
            "STATE",
            "LAST SEEN",
            "AUTO-RECONNECT",
        ],
        rows,
    )
}

/// `connected via lan, relayed`, `reconnecting`, `paused`, `alone`.
pub fn mesh_state(mesh: &MeshInfo) -> String {
    if mesh.state == "connected" && !mesh.connected_via.is_empty() {
        return format!("connected via {}", mesh.connected_via.join(", "));
    }
    mesh.state.clone()
}

/// `now` while a member is connected, else how long ago one was, or `never`.
pub fn mesh_last_seen(mesh: &MeshInfo, now_secs: i64) -> String {
    if mesh.state == "connected" {
        return "now".to_owned();
    }
    ago(mesh.last_seen, now_secs)
}

/// One mesh and its members' saved endpoints, for `mesh show`.
pub fn mesh_text(mesh: &MeshInfo, now_secs: i64) -> String {
    let founder = if mesh.is_founder {
        "founder".to_owned()
    } else {
        format!("member (founder {})", short_peer(&mesh.founder))
    };
    let mut out = vec![
        format!("{:<16}{} ({})", "mesh:", mesh.name, mesh.id),
        format!("{:<16}{founder}", "role:"),
        format!(
            "{:<16}{} ({} connected)",
            "members:", mesh.members, mesh.connected
        ),
        format!("{:<16}{}", "state:", mesh_state(mesh)),
        format!("{:<16}{}", "last seen:", mesh_last_seen(mesh, now_secs)),
        format!("{:<16}{}", "auto-reconnect:", on_off(mesh.auto_reconnect)),
        String::new(),
    ];
    out.push(endpoints_table(&mesh.endpoints, now_secs));
    out.join("\n")
}

/// Saved endpoints as a table: PEER, TYPE, ADDRESS, LAST SUCCESS, LATENCY.
pub fn endpoints_table(endpoints: &[SavedEndpoint], now_secs: i64) -> String {
    if endpoints.is_empty() {
        return "no saved endpoints".to_owned();
    }
    let rows = endpoints
        .iter()
        .map(|e| {
            vec![
                short_peer(&e.peer_id),
                e.kind.to_string(),
                e.addr.clone(),
                ago(e.last_success, now_secs),
                e.latency_ms
                    .map_or_else(|| "-".to_owned(), |ms| format!("{ms} ms")),
            ]
        })
        .collect();
    table(
        &["PEER", "TYPE", "ADDRESS", "LAST SUCCESS", "LATENCY"],
        rows,
    )
}

/// What `mesh join` says: the mesh, the invite endpoint that connected and
/// its group, the groups tried, how long it took, and the path in use.
pub fn join_summary(report: &JoinReport) -> String {
    let mesh = &report.mesh;
    if report.endpoint.is_none() && report.path.is_none() && report.tried.is_empty() {
        return format!("already a member of mesh {} ({})", mesh.name, mesh.id);
    }
    let mut text = format!("joined mesh {} ({})", mesh.name, mesh.id);
    match (&report.endpoint, report.endpoint_group) {
        (Some(endpoint), Some(group)) => {
            text.push_str(&format!(" through the {group} endpoint {endpoint}"));
        }
        (Some(endpoint), None) => text.push_str(&format!(" through {endpoint}")),
        (None, _) => text.push_str(" over an existing connection"),
    }
    if !report.tried.is_empty() {
        let tried: Vec<String> = report.tried.iter().map(ToString::to_string).collect();
        text.push_str(&format!(" (tried {})", tried.join(", ")));
    }
    text.push_str(&format!(
        " in {}; path: {}",
        elapsed(report.elapsed_ms),
        report.path.as_deref().unwrap_or("unknown")
    ));
    text
}

/// An invite token document for people; `now_secs` (Unix s) says how long
/// it stays valid.
pub fn token_text(token: &InviteToken, now_secs: i64) -> String {
    let mut out = vec![
        format!("{:<15}{}", "token:", token.token),
        format!("{:<15}{} ({})", "mesh:", token.mesh_name, token.mesh_id),
    ];
    let groups = [
        ("local", &token.endpoints.local),
        ("public", &token.endpoints.public),
        ("relay", &token.endpoints.relay),
    ];
    let endpoints: Vec<String> = groups
        .iter()
        .flat_map(|(group, addrs)| {
            if addrs.is_empty() {
                vec![format!("{group:<8}(none)")]
            } else {
                addrs.iter().map(|a| format!("{group:<8}{a}")).collect()
            }
        })
        .collect();
    push_list(&mut out, "endpoints:", &endpoints);
    let network = &token.network_info;
    out.extend(ip_lines(
        network.local_ip.as_deref(),
        network.public_ip.as_deref(),
        network.is_behind_nat,
    ));
    let left = token.expires_at.saturating_sub(now_secs);
    let remaining = if left > 0 {
        format!(
            "in {}",
            humantime::format_duration(Duration::from_secs(left.unsigned_abs()))
        )
    } else {
        "expired".to_owned()
    };
    out.push(format!(
        "{:<15}{} ({remaining})",
        "expires:",
        timestamp(
            u64::try_from(token.expires_at)
                .unwrap_or(0)
                .saturating_mul(1000)
        )
    ));
    out.push(format!("{:<15}{}", "uri:", token.uri));
    out.join("\n")
}

/// Peers as a table; `now_ms` (Unix ms) dates how long ago offline ones were seen.
pub fn peers_table(peers: &[PeerInfo], now_ms: u64) -> String {
    if peers.is_empty() {
        return "no peers".to_owned();
    }
    let rows = peers
        .iter()
        .map(|p| {
            vec![
                p.peer_id.clone(),
                p.name.clone().unwrap_or_else(|| "-".to_owned()),
                member_status(&p.status, now_ms),
                p.paths.len().to_string(),
                or_dash(p.meshes.join(",")),
                peer_address(p),
            ]
        })
        .collect();
    table(
        &["PEER ID", "NAME", "STATUS", "PATHS", "MESHES", "ADDRESS"],
        rows,
    )
}

/// How a member is reachable: `direct lan 0.4 ms`, `relayed via …x1y2z3w4`,
/// `offline since 5m ago`.
pub fn member_status(status: &MemberStatus, now_ms: u64) -> String {
    match status {
        MemberStatus::Direct { class, rtt_ms } => {
            let mut text = "direct".to_owned();
            // `direct direct` would say nothing more.
            if class != "direct" {
                text.push(' ');
                text.push_str(class);
            }
            if let Some(rtt) = rtt_ms {
                text.push(' ');
                text.push_str(&millis(*rtt));
            }
            text
        }
        MemberStatus::Relayed { via: Some(via) } => format!("relayed via {}", short_peer(via)),
        MemberStatus::Relayed { via: None } => "relayed".to_owned(),
        MemberStatus::Offline {
            last_seen_ms: Some(seen),
        } => format!("offline since {}", since(*seen, now_ms)),
        MemberStatus::Offline { last_seen_ms: None } => "offline".to_owned(),
    }
}

/// One `peers --watch` line: `TIME  PEER  NAME  STATUS[  FROM → TO (REASON)]`.
pub fn peer_event_line(event: &PeerEventJson) -> String {
    // The line's time says when; offline needs no "since".
    let status = match &event.status {
        MemberStatus::Offline { .. } => "offline".to_owned(),
        status => member_status(status, event.at_ms),
    };
    let mut line = format!(
        "{}  {}  {}  {}",
        timestamp(event.at_ms),
        short_peer(&event.peer_id),
        event.name.as_deref().unwrap_or("-"),
        status
    );
    if let Some(switch) = &event.switch {
        line.push_str(&format!(
            "  {} → {} ({})",
            switch.from.as_deref().unwrap_or("none"),
            switch.to.as_deref().unwrap_or("none"),
            switch.reason
        ));
    }
    line
}

/// Open paths as table lines (empty when there are none).
pub fn paths_table(paths: &[PathStatus]) -> Vec<String> {
    if paths.is_empty() {
        return Vec::new();
    }
    let rows = paths
        .iter()
        .map(|p| {
            vec![
                short_peer(&p.peer_id),
                p.class.clone(),
                p.role.clone(),
                p.rtt_ms.map(millis).unwrap_or_else(|| "-".to_owned()),
                format!("{:.0}%", f64::from(p.loss) * 100.0),
                if p.healthy { "healthy" } else { "dead" }.to_owned(),
                humantime::format_duration(Duration::from_millis(p.heartbeat_ms)).to_string(),
                bytes(p.app_bytes_sent),
                bytes(p.app_bytes_received),
            ]
        })
        .collect();
    table(
        &[
            "PEER",
            "CLASS",
            "ROLE",
            "RTT",
            "LOSS",
            "HEALTH",
            "HEARTBEAT",
            "SENT",
            "RECEIVED",
        ],
        rows,
    )
    .lines()
    .map(str::to_owned)
    .collect()
}

/// The tail of a peer id, enough to tell members apart: `…x1y2z3w4`.
pub fn short_peer(peer_id: &str) -> String {
    let chars: Vec<char> = peer_id.chars().collect();
    if chars.len() <= 10 {
        return peer_id.to_owned();
    }
    let tail: String = chars[chars.len() - 8..].iter().collect();
    format!("…{tail}")
}

/// The current time in Unix seconds.
pub fn now_secs() -> i64 {
    i64::try_from(now_ms() / 1000).unwrap_or(i64::MAX)
}

/// The current time in Unix ms.
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// Unix ms as an RFC 3339 UTC timestamp to the second.
fn timestamp(unix_ms: u64) -> String {
    humantime::format_rfc3339_seconds(UNIX_EPOCH + Duration::from_millis(unix_ms)).to_string()
}

/// `12s ago`, `5m ago`, `3h ago`; a timestamp beyond a day.
fn since(unix_ms: u64, now_ms: u64) -> String {
    let secs = now_ms.saturating_sub(unix_ms) / 1000;
    match secs {
        0 => "just now".to_owned(),
        1..60 => format!("{secs}s ago"),
        60..3600 => format!("{}m ago", secs / 60),
        3600..AGO_LIMIT_SECS => format!("{}h {}m ago", secs / 3600, secs % 3600 / 60),
        _ => timestamp(unix_ms),
    }
}

/// How long ago `unix_secs` was (as [`since`]), or `never`.
fn ago(unix_secs: Option<i64>, now_secs: i64) -> String {
    match unix_secs {
        None => "never".to_owned(),
        Some(secs) => {
            let ms = |s: i64| u64::try_from(s).unwrap_or(0).saturating_mul(1000);
            since(ms(secs), ms(now_secs))
        }
    }
}

/// `850 ms`, `2.3 s`.
fn elapsed(ms: u64) -> String {
    if ms < 1000 {
        format!("{ms} ms")
    } else {
        format!("{:.1} s", ms as f64 / 1000.0)
    }
}

/// `on` or `off`.
fn on_off(on: bool) -> &'static str {
    if on {
        "on"
    } else {
        "off"
    }
}

/// `0.4 ms`, `12.3 ms`.
fn millis(ms: f64) -> String {
    format!("{ms:.1} ms")
}

/// `512 B`, `1.5 KiB`, `3.2 MiB`, `1.0 GiB`.
fn bytes(count: u64) -> String {
    const UNITS: [&str; 4] = ["KiB", "MiB", "GiB", "TiB"];
    if count < 1024 {
        return format!("{count} B");
    }
    let mut value = count as f64 / 1024.0;
    let mut unit = 0;
    while value >= 1024.0 && unit + 1 < UNITS.len() {
        value /= 1024.0;
        unit += 1;
    }
    format!("{value:.1} {}", UNITS[unit])
}

/// The active path's address, else any path's, else a known address.
fn peer_address(peer: &PeerInfo) -> String {
    peer.paths
        .iter()
        .find(|p| p.role == "active")
        .or_else(|| peer.paths.first())
        .map(|p| p.remote_addr.clone())
        .or_else(|| peer.addresses.first().cloned())
        .unwrap_or_else(|| "-".to_owned())
}

/// `text`, or `-` when it is empty.
fn or_dash(text: String) -> String {
    if text.is_empty() {
        "-".to_owned()
    } else {
        text
    }
}

/// The URI as a QR code drawn with Unicode half blocks.
pub fn qr_code(uri: &str) -> Result<String, qrcode::types::QrError> {
    let code = QrCode::new(uri.as_bytes())?;
    Ok(code
        .render::<Dense1x2>()
        .dark_color(Dense1x2::Light)
        .light_color(Dense1x2::Dark)
        .build())
}

/// `founder` or `member`.
fn role(mesh: &MeshInfo) -> &'static str {
    if mesh.is_founder {
        "founder"
    } else {
        "member"
    }
}

/// Appends `label` and the items, one per line, aligned under the first.
fn push_list(out: &mut Vec<String>, label: &str, items: &[String]) {
    if items.is_empty() {
        out.push(format!("{label:<15}-"));
        return;
    }
    for (i, item) in items.iter().enumerate() {
        let label = if i == 0 { label } else { "" };
        out.push(format!("{label:<15}{item}"));
    }
}

/// Left-aligned columns separated by two spaces.
fn table(header: &[&str], rows: Vec<Vec<String>>) -> String {
    let mut widths: Vec<usize> = header.iter().map(|h| h.chars().count()).collect();
    for row in &rows {
        for (width, cell) in widths.iter_mut().zip(row) {
            *width = (*width).max(cell.chars().count());
        }
    }
    let line = |cells: Vec<&str>| {
        let padded: Vec<String> = cells
            .iter()
            .zip(&widths)
            .map(|(cell, width)| format!("{cell:<width$}"))
            .collect();
        padded.join("  ").trim_end().to_owned()
    };
    let mut out = vec![line(header.to_vec())];
    out.extend(
        rows.iter()
            .map(|row| line(row.iter().map(String::as_str).collect())),
    );
    out.join("\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rpc_results() {
        assert_eq!(rpc_result(b"42"), "42");
        assert_eq!(rpc_result(br#"{"x":1}"#), r#"{"x":1}"#);
        assert_eq!(rpc_result(b"hello"), r#""hello""#);
        assert_eq!(rpc_result(&[0xff, 0x00]), r#"{"base64":"/wA="}"#);
    }

    #[test]
    fn message_lines() {
        let message = MessageJson {
            topic: "home.kitchen.temp".into(),
            payload: Some("21.5".into()),
            payload_base64: encode_base64(b"21.5"),
            sender: "peer".into(),
            timestamp_ms: 1,
        };
        assert_eq!(message_line(&message), "home.kitchen.temp 21.5");
        let json: Value = serde_json::from_str(&message_json(&message)).unwrap_or_default();
        assert_eq!(json["payload"], "21.5");
        assert_eq!(json["topic"], "home.kitchen.temp");
    }

    #[test]
    fn tables_align() {
        let text = table(
            &["A", "BB"],
            vec![
                vec!["long".into(), "x".into()],
                vec!["s".into(), "y".into()],
            ],
        );
        assert_eq!(text, "A     BB\nlong  x\ns     y");
    }

    fn path(role: &str, healthy: bool) -> PathStatus {
        PathStatus {
            peer_id: "12D3KooWAbCdEfGhIjKlMnOp".into(),
            connection: 3,
            class: "lan".into(),
            remote_addr: "/ip4/192.168.1.20/tcp/11451".into(),
            role: role.into(),
            rtt_ms: Some(0.42),
            loss: 0.25,
            healthy,
            heartbeat_ms: 1000,
            app_bytes_sent: 1536,
            app_bytes_received: 12,
        }
    }

    #[test]
    fn member_statuses() {
        let now = 10_000_000;
        let direct = |class: &str| MemberStatus::Direct {
            class: class.into(),
            rtt_ms: Some(0.42),
        };
        assert_eq!(member_status(&direct("lan"), now), "direct lan 0.4 ms");
        assert_eq!(member_status(&direct("direct"), now), "direct 0.4 ms");
        let relayed = MemberStatus::Relayed {
            via: Some("12D3KooWAbCdEfGhIjKlMnOp".into()),
        };
        assert_eq!(member_status(&relayed, now), "relayed via …IjKlMnOp");
        let offline = |ago_ms: u64| MemberStatus::Offline {
            last_seen_ms: Some(now - ago_ms),
        };
        assert_eq!(
            member_status(&offline(12_000), now),
            "offline since 12s ago"
        );
        assert_eq!(
            member_status(&offline(300_000), now),
            "offline since 5m ago"
        );
        assert_eq!(
            member_status(&offline(3_900_000), now),
            "offline since 1h 5m ago"
        );
        assert_eq!(
            member_status(
                &MemberStatus::Offline {
                    last_seen_ms: Some(0)
                },
                3 * 86_400_000
            ),
            "offline since 1970-01-01T00:00:00Z"
        );
        assert_eq!(
            member_status(&MemberStatus::Offline { last_seen_ms: None }, now),
            "offline"
        );
    }

    #[test]
    fn event_lines() {
        let event = PeerEventJson {
            peer_id: "12D3KooWAbCdEfGhIjKlMnOp".into(),
            name: Some("laptop".into()),
            status: MemberStatus::Direct {
                class: "lan".into(),
                rtt_ms: None,
            },
            switch: Some(atmosphere::PathSwitch {
                from: Some("relayed".into()),
                to: Some("lan".into()),
                reason: "better".into(),
            }),
            at_ms: 1_000,
        };
        assert_eq!(
            peer_event_line(&event),
            "1970-01-01T00:00:01Z  …IjKlMnOp  laptop  direct lan  relayed → lan (better)"
        );
        let offline = PeerEventJson {
            status: MemberStatus::Offline {
                last_seen_ms: Some(900),
            },
            switch: None,
            name: None,
            ..event
        };
        assert_eq!(
            peer_event_line(&offline),
            "1970-01-01T00:00:01Z  …IjKlMnOp  -  offline"
        );
    }

    #[test]
    fn peer_rows_show_status_and_active_address() {
        let peer = PeerInfo {
            peer_id: "12D3KooWAbCdEfGhIjKlMnOp".into(),
            name: Some("laptop".into()),
            connected: true,
            meshes: vec!["home".into()],
            addresses: vec!["/ip4/10.0.0.1/tcp/1".into()],
            subscriptions: Vec::new(),
            registrations: Vec::new(),
            rtt_ms: Some(0.42),
            last_seen: None,
            status: MemberStatus::Direct {
                class: "lan".into(),
                rtt_ms: Some(0.42),
            },
            paths: vec![path("standby", true), path("active", true)],
        };
        let text = peers_table(&[peer], 0);
        let row = text.lines().nth(1).unwrap_or_default();
        assert!(row.contains("direct lan 0.4 ms"), "{text}");
        assert!(row.contains("/ip4/192.168.1.20/tcp/11451"), "{text}");
        assert!(row.contains("  2  "), "{text}");
    }

    #[test]
    fn path_lines() {
        let lines = paths_table(&[path("active", true), path("standby", false)]);
        assert_eq!(lines.len(), 3);
        assert!(lines[0].starts_with("PEER"), "{lines:?}");
        for expected in [
            "…IjKlMnOp",
            "lan",
            "active",
            "0.4 ms",
            "25%",
            "healthy",
            "1s",
            "1.5 KiB",
            "12 B",
        ] {
            assert!(lines[1].contains(expected), "{expected}: {lines:?}");
        }
        assert!(lines[2].contains("dead"), "{lines:?}");
        assert!(paths_table(&[]).is_empty());
    }

    #[test]
    fn byte_counts() {
        assert_eq!(bytes(0), "0 B");
        assert_eq!(bytes(1023), "1023 B");
        assert_eq!(bytes(1024), "1.0 KiB");
        assert_eq!(bytes(5 * 1024 * 1024), "5.0 MiB");
    }

    #[test]
    fn qr_renders() {
        let qr = qr_code("atmosphere://join?token=ATM-x").unwrap_or_default();
        assert!(qr.lines().count() > 10);
    }

    fn mesh_info(state: &str, via: &[&str], last_seen: Option<i64>) -> MeshInfo {
        MeshInfo {
            id: "9a770ab124b5673d965e51ea5dcbb799".into(),
            name: "home".into(),
            founder: "12D3KooWFoUnDeRfOuNdEr12".into(),
            is_founder: false,
            members: 2,
            connected: usize::from(state == "connected"),
            state: state.into(),
            connected_via: via.iter().map(|v| (*v).to_owned()).collect(),
            last_seen,
            auto_reconnect: state != "paused",
            endpoints: Vec::new(),
        }
    }

    #[test]
    fn mesh_states_and_last_seen() {
        let now = 1_000_000;
        let connected = mesh_info("connected", &["lan", "relayed"], Some(now));
        assert_eq!(mesh_state(&connected), "connected via lan, relayed");
        assert_eq!(mesh_last_seen(&connected, now), "now");
        let reconnecting = mesh_info("reconnecting", &[], Some(now - 180));
        assert_eq!(mesh_state(&reconnecting), "reconnecting");
        assert_eq!(mesh_last_seen(&reconnecting, now), "3m ago");
        let alone = mesh_info("alone", &[], None);
        assert_eq!(mesh_last_seen(&alone, now), "never");
        let text = meshes_table(
            &[
                connected,
                reconnecting,
                mesh_info("paused", &[], Some(now - 7200)),
            ],
            now,
        );
        let rows: Vec<Vec<&str>> = text
            .lines()
            .map(|l| {
                l.split("  ")
                    .map(str::trim)
                    .filter(|c| !c.is_empty())
                    .collect()
            })
            .collect();
        assert_eq!(rows.len(), 4, "{text}");
        assert_eq!(
            rows[0][5..],
            ["STATE", "LAST SEEN", "AUTO-RECONNECT"],
            "{text}"
        );
        assert_eq!(
            rows[1][5..],
            ["connected via lan, relayed", "now", "on"],
            "{text}"
        );
        assert_eq!(rows[2][5..], ["reconnecting", "3m ago", "on"], "{text}");
        assert_eq!(rows[3][5..], ["paused", "2h 0m ago", "off"], "{text}");
    }

    #[test]
    fn mesh_details_list_saved_endpoints() {
        let now = 1_000_000;
        let mut mesh = mesh_info("connected", &["lan"], Some(now));
        mesh.endpoints = vec![
            SavedEndpoint {
                peer_id: "12D3KooWAbCdEfGhIjKlMnOp".into(),
                kind: atmosphere::invite::EndpointGroup::Local,
                addr: "/ip4/192.168.1.20/tcp/11451".into(),
                last_success: Some(now - 12),
                latency_ms: Some(3),
            },
            SavedEndpoint {
                peer_id: "12D3KooWAbCdEfGhIjKlMnOp".into(),
                kind: atmosphere::invite::EndpointGroup::Relay,
                addr: "/ip4/198.51.100.2/tcp/4001/p2p/12D3KooWRelay/p2p-circuit".into(),
                last_success: None,
                latency_ms: None,
            },
        ];
        let text = mesh_text(&mesh, now);
        assert!(
            text.contains("role:           member (founder …OuNdEr12)"),
            "{text}"
        );
        assert!(text.contains("auto-reconnect: on"), "{text}");
        assert!(text.contains("state:          connected via lan"), "{text}");
        let table: Vec<&str> = text
            .lines()
            .skip_while(|l| !l.starts_with("PEER"))
            .collect();
        assert_eq!(table.len(), 3, "{text}");
        assert!(
            table[0].contains("TYPE")
                && table[0].contains("LAST SUCCESS")
                && table[0].contains("LATENCY")
        );
        for expected in [
            "…IjKlMnOp",
            "local",
            "/ip4/192.168.1.20/tcp/11451",
            "12s ago",
            "3 ms",
        ] {
            assert!(table[1].contains(expected), "{expected}: {text}");
        }
        assert!(
            table[2].contains("relay") && table[2].contains("never"),
            "{text}"
        );
        assert!(table[2].ends_with('-'), "{text}");
        assert_eq!(endpoints_table(&[], now), "no saved endpoints");
    }

    #[test]
    fn join_summaries() {
        use atmosphere::invite::EndpointGroup::{Local, Public, Relay};
        let mut report = JoinReport {
            mesh: mesh_info("connected", &["relayed"], None),
            endpoint: Some("/ip4/198.51.100.2/tcp/4001/p2p/R/p2p-circuit/p2p/F".into()),
            endpoint_group: Some(Relay),
            path: Some("relayed".into()),
            tried: vec![Local, Public, Relay],
            elapsed_ms: 2_340,
        };
        assert_eq!(
            join_summary(&report),
            "joined mesh home (9a770ab124b5673d965e51ea5dcbb799) through the relay endpoint \
             /ip4/198.51.100.2/tcp/4001/p2p/R/p2p-circuit/p2p/F (tried local, public, relay) \
             in 2.3 s; path: relayed"
        );
        report.endpoint = Some("/ip4/127.0.0.1/tcp/1/p2p/F".into());
        report.endpoint_group = Some(Local);
        report.path = Some("lan".into());
        report.tried = vec![Local];
        report.elapsed_ms = 42;
        assert!(join_summary(&report).ends_with(
            "through the local endpoint /ip4/127.0.0.1/tcp/1/p2p/F (tried local) in 42 ms; path: lan"
        ));
        report.endpoint = None;
        report.endpoint_group = None;
        report.tried.clear();
        assert!(
            join_summary(&report).ends_with("over an existing connection in 42 ms; path: lan"),
            "{}",
            join_summary(&report)
        );
        report.path = None;
        report.elapsed_ms = 0;
        assert_eq!(
            join_summary(&report),
            "already a member of mesh home (9a770ab124b5673d965e51ea5dcbb799)"
        );
    }

    #[test]
    fn network_section() {
        let mut network = NetworkStatus::default();
        let text = network_lines(&network).join("\n");
        for expected in [
            "local IP:      unknown",
            "public IP:     unknown",
            "behind NAT:    unknown",
            "reachability:  unknown (0 AutoNAT tests, 0 confirmed)",
            "public addrs:  -",
            "UPnP:          off",
        ] {
            assert!(text.contains(expected), "{expected}: {text}");
        }
        network.local_ip = Some("192.168.1.2".into());
        network.public_ip = Some("203.0.113.7".into());
        network.is_behind_nat = Some(true);
        network.reachability = atmosphere::Reachability::Private;
        network.autonat_tests = 1;
        network.public_addrs = vec!["/ip4/203.0.113.7/tcp/11451".into()];
        network.upnp = atmosphere::UpnpStatus {
            enabled: true,
            state: "mapped".into(),
            mapped: vec!["/ip4/203.0.113.7/tcp/11451".into()],
        };
        let text = network_lines(&network).join("\n");
        for expected in [
            "local IP:      192.168.1.2",
            "public IP:     203.0.113.7",
            "behind NAT:    yes",
            "reachability:  private (1 AutoNAT test, 0 confirmed)",
            "public addrs:  /ip4/203.0.113.7/tcp/11451",
            "UPnP:          mapped /ip4/203.0.113.7/tcp/11451",
        ] {
            assert!(text.contains(expected), "{expected}: {text}");
        }
        network.upnp.state = "no_gateway".into();
        network.upnp.mapped.clear();
        network.is_behind_nat = Some(false);
        let text = network_lines(&network).join("\n");
        assert!(text.contains("UPnP:          no gateway"), "{text}");
        assert!(text.contains("behind NAT:    no"), "{text}");
    }

    #[test]
    fn token_documents_for_people() {
        let token = InviteToken {
            token: "ATM-AAAAAAAAAAAAAAAAAAAAAA".into(),
            mesh_id: "9a770ab124b5673d965e51ea5dcbb799".into(),
            mesh_name: "home".into(),
            endpoints: crate::proto::TokenEndpoints {
                local: vec!["/ip4/192.168.1.2/tcp/11451/p2p/F".into()],
                public: Vec::new(),
                relay: Vec::new(),
            },
            network_info: crate::proto::NetworkInfo {
                local_ip: Some("192.168.1.2".into()),
                public_ip: None,
                is_behind_nat: None,
            },
            uri: "atmosphere://join?token=ATM-AAAAAAAAAAAAAAAAAAAAAA".into(),
            expires_at: 600,
        };
        let text = token_text(&token, 0);
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines[0], "token:         ATM-AAAAAAAAAAAAAAAAAAAAAA");
        assert_eq!(
            lines[1],
            "mesh:          home (9a770ab124b5673d965e51ea5dcbb799)"
        );
        assert_eq!(
            lines[2],
            "endpoints:     local   /ip4/192.168.1.2/tcp/11451/p2p/F"
        );
        assert_eq!(lines[3], "               public  (none)");
        assert_eq!(lines[4], "               relay   (none)");
        assert!(text.contains("local IP:      192.168.1.2"), "{text}");
        assert!(text.contains("public IP:     unknown"), "{text}");
        assert!(text.contains("behind NAT:    unknown"), "{text}");
        assert!(
            text.contains("expires:       1970-01-01T00:10:00Z (in 10m)"),
            "{text}"
        );
        assert_eq!(
            lines.last().copied(),
            Some("uri:           atmosphere://join?token=ATM-AAAAAAAAAAAAAAAAAAAAAA")
        );
        assert!(token_text(&token, 601).contains("(expired)"));
    }

    fn session(role: &str, state: &str) -> PairingSession {
        PairingSession {
            id: 1,
            role: role.into(),
            peer_id: "12D3KooWAbCdEfGhIjKlMnOp".into(),
            peer_name: Some("phone".into()),
            state: state.into(),
            code: Some("042917".into()),
            peer_confirmed: false,
            mesh_id: Some("9a77".into()),
            mesh_name: Some("home".into()),
            error: None,
        }
    }

    #[test]
    fn pairing_texts() {
        assert_eq!(pairing_code("042917"), "042 917");
        assert_eq!(pairing_code("12345"), "12345");
        assert_eq!(
            pairing_prompt("042917"),
            "Code: 042 917 — does the other screen show the same code? [y/N] "
        );
        assert_eq!(
            pairing_outcome(&session("requester", "completed")),
            "paired with phone (12D3KooWAbCdEfGhIjKlMnOp): joined mesh home (9a77)"
        );
        assert_eq!(
            pairing_outcome(&session("acceptor", "completed")),
            "paired with phone (12D3KooWAbCdEfGhIjKlMnOp): it is now a member of mesh home (9a77)"
        );
        let mut failed = session("acceptor", "failed");
        failed.peer_name = None;
        failed.error = Some("rejected by the peer".into());
        assert_eq!(
            pairing_outcome(&failed),
            "pairing with 12D3KooWAbCdEfGhIjKlMnOp failed: rejected by the peer"
        );
    }

    #[test]
    fn nearby_rows_and_ble_status() {
        assert_eq!(nearby_table(&[], 0), "no devices nearby");
        let devices = [
            NearbyDevice {
                id: "0a1b2c3d4e5f".into(),
                via: "ble".into(),
                address: "11:22:33:44:55:66 psm 0x0081".into(),
                rssi_dbm: Some(-61),
                peer_id: None,
                member: false,
                name: Some("phone".into()),
                last_seen_ms_ago: 3_500,
            },
            NearbyDevice {
                id: "ffeeddccbbaa".into(),
                via: "lan".into(),
                address: "/ip4/192.168.1.20/tcp/11451".into(),
                rssi_dbm: None,
                peer_id: Some("12D3KooW".into()),
                member: true,
                name: None,
                last_seen_ms_ago: 0,
            },
        ];
        let text = nearby_table(&devices, 10_000_000);
        let lines: Vec<&str> = text.lines().collect();
        assert!(lines[0].starts_with("ID  "), "{text}");
        assert!(lines[0].ends_with("LAST SEEN"), "{text}");
        for expected in ["0a1b2c3d4e5f", "ble", "-61 dBm", "no", "phone", "3s ago"] {
            assert!(lines[1].contains(expected), "{expected}: {text}");
        }
        for expected in ["ffeeddccbbaa", "lan", "yes", "just now"] {
            assert!(lines[2].contains(expected), "{expected}: {text}");
        }
        let ble = BleStatus {
            address: "11:22:33:44:55:66".into(),
            psm: Some(0x81),
            advertising: true,
            connections: 1,
            nearby: devices.to_vec(),
        };
        let lines = ble_lines(&ble);
        assert_eq!(
            lines,
            [
                "address 11:22:33:44:55:66",
                "PSM 0x0081 (129)",
                "advertising yes",
                "1 connection, 2 devices nearby",
            ]
        );
    }

    #[test]
    fn elapsed_times() {
        assert_eq!(elapsed(0), "0 ms");
        assert_eq!(elapsed(999), "999 ms");
        assert_eq!(elapsed(2_345), "2.3 s");
        assert_eq!(ago(Some(95), 100), "5s ago");
        assert_eq!(ago(None, 100), "never");
    }
}
