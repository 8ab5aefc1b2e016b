//! `mesh-bench failover`: path switches under link cuts in the network lab.
//!
//! Two hosts in network namespaces joined by two LAN links. A publisher
//! streams numbered messages at 200 msg/s; the active link is cut, the
//! subscriber's arrival times show when delivery resumed on the other link,
//! the cut link is restored (it comes back as the standby), and the next cut
//! takes whichever link is active. Afterwards: messages lost and duplicated
//! as seen by the app, and the idle detection time: with no traffic, the
//! standby's link is cut, then 2 s later the active one; the time from that
//! second cut until the peer's status turns offline (both dead paths have to
//! be noticed, by heartbeats alone).

use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Result};
use atmosphere::{InviteOptions, MemberStatus, Node, PeerId};
use atmosphere_lab::{Host, Lab, Link};
use bytes::Bytes;

use crate::{
    labnode::{self, wait_for, LabNode, WAIT},
    report::Row,
    stats::median,
};

/// Messages per second during the cuts.
const RATE: u32 = 200;

async fn start(host: &Host, name: &str) -> Result<LabNode> {
    labnode::start(host, name, |config| {
        config.listen = vec![atmosphere::Multiaddr::empty()
            .with(libp2p::multiaddr::Protocol::Ip4(
                std::net::Ipv4Addr::UNSPECIFIED,
            ))
            .with(libp2p::multiaddr::Protocol::Tcp(0))];
        // Restored links are found by probing; probe often to keep the run
        // short (the switch itself does not depend on probing: the standby
        // is warm).
        config.probe_lan_secs = 1;
    })
    .await
}

/// Which of `links` carries `node`'s active path to `peer`, once a healthy
/// standby exists too.
async fn active_link(node: &Node, peer: PeerId, links: &[&Link]) -> Result<usize> {
    wait_for("an active path and a healthy standby", || async {
        let info = node
            .peers()
            .await
            .ok()?
            .into_iter()
            .find(|p| p.peer_id == peer.to_string())?;
        let active = info.paths.iter().find(|p| p.role == "active")?;
        info.paths
            .iter()
            .any(|p| p.role == "standby" && p.healthy)
            .then_some(())?;
        links.iter().position(|l| {
            active
                .remote_addr
                .starts_with(&format!("/ip4/{}/", l.a_addr()))
        })
    })
    .await
}

/// Runs the scenario with `cuts` link cuts.
pub async fn failover(cuts: usize) -> Result<Vec<Row>> {
    if let Some(reason) = atmosphere_lab::unavailable_reason() {
        bail!("the network lab is unavailable: {reason}");
    }
    let lab = Lab::new()?;
    let ha = lab.add_host("a")?;
    let hb = lab.add_host("b")?;
    let links = [lab.link(&ha, &hb).await?, lab.link(&ha, &hb).await?];
    let link_refs: Vec<&Link> = links.iter().collect();
    let sub_node = start(&ha, "subscriber").await?;
    let pub_node = start(&hb, "publisher").await?;
    let (a, b) = (&sub_node.node, &pub_node.node);
    a.create_mesh("bench").await?;
    let invite = a.invite(None, InviteOptions::default()).await?;
    b.join(&invite.uri).await?;
    let pa = a.peer_id();
    let mut sub = a.subscribe("bench.failover").await?;
    wait_for("the publisher to see the subscription", || async {
        b.peers()
            .await
            .ok()?
            .iter()
            .any(|p| {
                p.peer_id == pa.to_string() && p.subscriptions.iter().any(|s| s == "bench.failover")
            })
            .then_some(())
    })
    .await?;

    // Receiver: arrival time of every message number.
    let receiver = tokio::spawn(async move {
        let mut arrivals: Vec<(u32, Instant)> = Vec::new();
        while let Some(message) = sub.recv().await {
            let Some(bytes) = message.payload.get(..4) else {
                continue;
            };
            let mut n = [0u8; 4];
            n.copy_from_slice(bytes);
            let n = u32::from_be_bytes(n);
            if n == u32::MAX {
                break;
            }
            arrivals.push((n, Instant::now()));
        }
        arrivals
    });
    let publishing = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(true));
    let publisher = {
        let b = b.clone();
        let publishing = publishing.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs(1) / RATE);
            let mut n = 0u32;
            while publishing.load(std::sync::atomic::Ordering::Relaxed) {
                tick.tick().await;
                let mut payload = n.to_be_bytes().to_vec();
                payload.resize(64, 0);
                b.publish("bench.failover", Bytes::from(payload)).await?;
                n += 1;
            }
            b.publish(
                "bench.failover",
                Bytes::from(u32::MAX.to_be_bytes().to_vec()),
            )
            .await?;
            anyhow::Ok(n)
        })
    };
    let mut cut_times = Vec::new();
    for i in 0..cuts {
        let active = active_link(b, pa, &link_refs).await?;
        tokio::time::sleep(Duration::from_millis(500)).await;
        eprintln!("failover: cut {}/{cuts} (link {active})", i + 1);
        let at = Instant::now();
        links[active].down().await?;
        cut_times.push(at);
        // Let the switch happen under traffic, then restore the link.
        tokio::time::sleep(Duration::from_secs(3)).await;
        links[active].up().await?;
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    publishing.store(false, std::sync::atomic::Ordering::Relaxed);
    let published = publisher.await??;
    let arrivals = tokio::time::timeout(WAIT, receiver)
        .await
        .map_err(|_| anyhow!("the subscriber did not get the end marker"))??;

    // Delivery resumed: the first arrival after the longest gap following the cut.
    let mut switch_ms = Vec::new();
    for cut in &cut_times {
        let window: Vec<Instant> = arrivals
            .iter()
            .map(|(_, t)| *t)
            .filter(|t| {
                *t + Duration::from_millis(20) >= *cut && *t <= *cut + Duration::from_secs(3)
            })
            .collect();
        let resumed = window.windows(2).max_by_key(|w| w[1] - w[0]).map(|w| w[1]);
        if let Some(resumed) = resumed {
            switch_ms.push(resumed.saturating_duration_since(*cut).as_secs_f64() * 1000.0);
        }
    }
    let mut seen = std::collections::HashSet::new();
    let duplicates = arrivals.iter().filter(|(n, _)| !seen.insert(*n)).count();
    let lost = (published as usize).saturating_sub(seen.len());
    let in_order = arrivals.windows(2).all(|w| w[0].0 < w[1].0);

    // Idle detection: no traffic, the standby link down, then the active one.
    let mut idle_ms = Vec::new();
    for _ in 0..3 {
        let active = active_link(b, pa, &link_refs).await?;
        let other = 1 - active;
        links[other].down().await?;
        tokio::time::sleep(Duration::from_secs(2)).await;
        let mut events = b.peer_events();
        let at = Instant::now();
        links[active].down().await?;
        let detected = wait_for("the idle peer to go offline", || {
            let mut offline = None;
            while let Ok(e) = events.try_recv() {
                if e.peer_id == pa.to_string() && matches!(e.status, MemberStatus::Offline { .. }) {
                    offline = Some(at.elapsed());
                }
            }
            async move { offline }
        })
        .await?;
        idle_ms.push(detected.as_secs_f64() * 1000.0);
        links[active].up().await?;
        links[other].up().await?;
    }

    eprintln!(
        "failover: {} cuts, switch median {:.0} ms max {:.0} ms, lost {lost}, duplicates {duplicates}, in order {in_order}, idle detection {:?} ms",
        switch_ms.len(),
        median(&switch_ms),
        switch_ms.iter().cloned().fold(0.0, f64::max),
        idle_ms
    );
    let row = |case: &str, unit: &str, values: &[f64], higher: bool| Row {
        scenario: "failover".into(),
        case: case.into(),
        system: "atmosphere/tcp".into(),
        unit: unit.into(),
        value: median(values),
        p99: None,
        min: values.iter().cloned().reduce(f64::min),
        max: values.iter().cloned().reduce(f64::max),
        higher_is_better: higher,
        ratio: None,
    };
    Ok(vec![
        row(
            &format!("switch time, {} cuts at {RATE} msg/s", switch_ms.len()),
            "ms",
            &switch_ms,
            false,
        ),
        row(
            &format!("messages lost of {published}"),
            "msgs",
            &[lost as f64],
            false,
        ),
        row(
            "duplicates seen by the app",
            "msgs",
            &[duplicates as f64],
            false,
        ),
        row(
            "out-of-order deliveries",
            "msgs",
            &[if in_order { 0.0 } else { 1.0 }],
            false,
        ),
        row("idle loss detection", "ms", &idle_ms, false),
    ])
}
