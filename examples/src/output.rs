//! How the CLI prints things: pure formatting functions, no I/O.

use std::time::Duration;

use atmosphere::{MeshInfo, PeerInfo, Status};
use qrcode::{render::unicode::Dense1x2, QrCode};
use serde_json::Value;

use crate::proto::{encode_base64, MessageJson};

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
    let meshes: Vec<String> = status
        .meshes
        .iter()
        .map(|m| {
            format!(
                "{} ({}, {}, {} members, {} connected)",
                m.name,
                m.id,
                role(m),
                m.members,
                m.connected
            )
        })
        .collect();
    push_list(&mut out, "meshes:", &meshes);
    out.push(format!(
        "peers:         {} connected",
        status.connected_peers
    ));
    push_list(&mut out, "subscriptions:", &status.subscriptions);
    push_list(&mut out, "registrations:", &status.registrations);
    out.join("\n")
}

/// Meshes as a table.
pub fn meshes_table(meshes: &[MeshInfo]) -> String {
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
            ]
        })
        .collect();
    table(&["ID", "NAME", "ROLE", "MEMBERS", "CONNECTED"], rows)
}

/// Peers as a table.
pub fn peers_table(peers: &[PeerInfo]) -> String {
    if peers.is_empty() {
        return "no peers".to_owned();
    }
    let rows = peers
        .iter()
        .map(|p| {
            vec![
                p.peer_id.clone(),
                p.name.clone().unwrap_or_else(|| "-".to_owned()),
                if p.connected { "connected" } else { "offline" }.to_owned(),
                p.rtt_ms
                    .map(|rtt| format!("{rtt:.1} ms"))
                    .unwrap_or_else(|| "-".to_owned()),
                p.meshes.join(","),
                p.addresses
                    .first()
                    .cloned()
                    .unwrap_or_else(|| "-".to_owned()),
            ]
        })
        .collect();
    table(
        &["PEER ID", "NAME", "STATUS", "RTT", "MESHES", "ADDRESS"],
        rows,
    )
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

    #[test]
    fn qr_renders() {
        let qr = qr_code("atmosphere://join?token=ATM-x").unwrap_or_default();
        assert!(qr.lines().count() > 10);
    }
}
