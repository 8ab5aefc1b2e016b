//! `mesh-bench`: Atmosphere's speed beside raw rust-libp2p, Zenoh, NATS and
//! iperf3, measured in one run on one machine. See `docs/performance.md`.

mod ble;
mod contender;
mod failover;
mod labnode;
mod multi;
mod nat;
mod ours;
mod peers;
mod plan;
mod plot;
mod report;
mod scenarios;
mod stats;

use std::path::PathBuf;

use anyhow::Result;
use clap::{Parser, ValueEnum};
use indicatif::{ProgressBar, ProgressStyle};

use contender::{Contender, Setup};
use peers::raw_libp2p;
use plan::Plan;
use report::{Report, Skipped};

#[derive(Parser)]
#[command(
    name = "mesh-bench",
    about = "Atmosphere performance harness: ours beside raw libp2p, Zenoh, NATS and iperf3"
)]
struct Cli {
    /// Scenarios to run (`all` for every one).
    #[arg(value_enum, default_value = "all", num_args = 1..)]
    scenarios: Vec<Scenario>,
    /// A smaller run with the same shape.
    #[arg(long)]
    quick: bool,
    /// Where JSON results and the plot go.
    #[arg(long, default_value = "benches/results")]
    out: PathBuf,
    /// Measure Atmosphere only (no peers).
    #[arg(long)]
    ours_only: bool,
    /// Hole-punch attempts (fresh pairs of members) per NAT combination in
    /// the `nat` scenario.
    #[arg(long, default_value_t = 20)]
    nat_attempts: usize,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum Scenario {
    /// Every scenario below.
    All,
    /// Pub/sub round trips, 64 B and 1 KiB.
    PubsubLatency,
    /// Pub→sub msgs/s and MB/s at 64 B, 1 KiB, 64 KiB.
    PubsubThroughput,
    /// RPC round trip and calls/s with 64 in flight.
    Rpc,
    /// One-way bulk transfer, with iperf3 as the ceiling.
    Bulk,
    /// 1 publisher → 10 and 50 subscribers.
    Fanout,
    /// 50, 100, 200 nodes in one mesh.
    Scale,
    /// Failover under link cuts (the connection-train issue).
    Failover,
    /// NAT traversal (the anywhere-connectivity issue).
    Nat,
    /// BLE on the simulated radio (the BLE issue).
    Ble,
}

impl Scenario {
    fn selected(list: &[Scenario], which: Scenario) -> bool {
        list.contains(&Scenario::All) || list.contains(&which)
    }
}

async fn contenders(ours_only: bool, report: &mut Report) -> Vec<Box<dyn Contender>> {
    let mut setups = vec![
        ours::setup(ours::Transport::Tcp).await,
        ours::setup(ours::Transport::Quic).await,
    ];
    if !ours_only {
        setups.push(raw_libp2p::stream(raw_libp2p::Transport::Tcp).await);
        setups.push(raw_libp2p::stream(raw_libp2p::Transport::Quic).await);
        setups.push(raw_libp2p::gossipsub(raw_libp2p::Transport::Tcp).await);
        setups.push(raw_libp2p::request_response(raw_libp2p::Transport::Tcp).await);
        #[cfg(feature = "compare")]
        {
            setups.push(peers::zenoh::setup().await);
            setups.push(peers::nats::setup().await);
        }
        #[cfg(not(feature = "compare"))]
        for name in ["zenoh", "nats"] {
            report.skipped.push(Skipped {
                system: name.into(),
                reason: "built without `--features compare`".into(),
            });
        }
    }
    let mut ready = Vec::new();
    for setup in setups {
        match setup {
            Setup::Ready(c) => ready.push(c),
            Setup::Missing(m) => report.skipped.push(Skipped {
                system: m.name,
                reason: m.reason,
            }),
        }
    }
    ready
}

#[tokio::main]
async fn main() -> Result<()> {
    let cli = Cli::parse();
    // Node logs (e.g. `RUST_LOG=atmosphere=info`), only when asked for.
    if std::env::var_os("RUST_LOG").is_some() {
        let _ = tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
            .with_writer(std::io::stderr)
            .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
            .try_init();
    }
    let plan = if cli.quick {
        Plan::quick()
    } else {
        Plan::full()
    };
    let run = |s| Scenario::selected(&cli.scenarios, s);
    let mut report = Report {
        machine: report::machine_facts(),
        ..Default::default()
    };
    let two_party = [
        Scenario::PubsubLatency,
        Scenario::PubsubThroughput,
        Scenario::Rpc,
        Scenario::Bulk,
    ];
    if two_party.iter().any(|s| run(*s)) {
        let mut cs = contenders(cli.ours_only, &mut report).await;
        let steps = (plan.latency_sizes.len() + plan.throughput_sizes.len() + 2) * cs.len();
        let bar = ProgressBar::new(steps as u64);
        bar.set_style(
            ProgressStyle::with_template("{bar:30} {pos}/{len} {elapsed} {msg}")
                .unwrap_or_else(|_| ProgressStyle::default_bar()),
        );
        if run(Scenario::PubsubLatency) {
            scenarios::pubsub_latency(&mut cs, &plan, &mut report, &bar).await;
        }
        if run(Scenario::PubsubThroughput) {
            scenarios::pubsub_throughput(&mut cs, &plan, &mut report, &bar).await;
        }
        if run(Scenario::Rpc) {
            scenarios::rpc(&mut cs, &plan, &mut report, &bar).await;
        }
        if run(Scenario::Bulk) {
            scenarios::bulk(&mut cs, &plan, &mut report, &bar).await;
        }
        bar.finish_and_clear();
    }
    if run(Scenario::Fanout) {
        for &n in &plan.fanout_subscribers {
            eprintln!("fanout 1→{n}…");
            match multi::fanout(n, plan.fanout_messages).await {
                Ok(rows) => report.rows.extend(rows),
                Err(e) => report.skipped.push(Skipped {
                    system: format!("atmosphere fanout 1→{n}"),
                    reason: format!("{e:#}"),
                }),
            }
        }
    }
    if run(Scenario::Scale) {
        for &n in &plan.scale_nodes {
            eprintln!("scale {n} nodes…");
            match multi::scale(n).await {
                Ok(rows) => report.rows.extend(rows),
                Err(e) => report.skipped.push(Skipped {
                    system: format!("atmosphere scale {n}"),
                    reason: format!("{e:#}"),
                }),
            }
        }
    }
    if run(Scenario::Failover) {
        let cuts = if cli.quick { 10 } else { 12 };
        eprintln!("failover: {cuts} link cuts in the network lab…");
        match failover::failover(cuts).await {
            Ok(rows) => report.rows.extend(rows),
            Err(e) => report.skipped.push(Skipped {
                system: "atmosphere failover".into(),
                reason: format!("{e:#}"),
            }),
        }
    }
    if run(Scenario::Nat) {
        eprintln!(
            "nat: {} hole-punch attempts per NAT combination in the network lab…",
            cli.nat_attempts
        );
        match nat::nat(cli.nat_attempts).await {
            Ok((rows, attempts)) => {
                report.rows.extend(rows);
                report.extra.insert("nat_attempts".into(), attempts);
            }
            Err(e) => report.skipped.push(Skipped {
                system: "atmosphere nat".into(),
                reason: format!("{e:#}"),
            }),
        }
    }
    if run(Scenario::Ble) {
        eprintln!("ble: the simulated BLE radio, raw link → libp2p → Atmosphere…");
        let outcome = ble::ble(cli.quick).await;
        report.rows.extend(outcome.rows);
        report.skipped.extend(outcome.skipped);
        report.extra.insert("ble".into(), outcome.extra);
    }
    report.compute_ratios();
    report.print_table();
    // A lab scenario run on its own has a results file of its own, so it
    // does not overwrite the two-party table.
    let stem = match cli.scenarios.as_slice() {
        [Scenario::Scale] => "mesh-bench-scale",
        [Scenario::Failover] => "mesh-bench-failover",
        [Scenario::Nat] => "mesh-bench-nat",
        [Scenario::Ble] => "mesh-bench-ble",
        _ => "mesh-bench",
    };
    let json = cli.out.join(format!("{stem}.json"));
    report.write_json(&json)?;
    let svg = cli.out.join(format!("{stem}.svg"));
    plot::write_svg(&report, &svg)?;
    println!("\nwrote {} and {}", json.display(), svg.display());
    Ok(())
}
