//! Results: rows, ratios against Atmosphere, the table and the JSON file.

use std::{collections::BTreeMap, path::Path};

use anyhow::Result;
use serde::Serialize;

/// One measured figure.
#[derive(Debug, Clone, Serialize)]
pub struct Row {
    /// Scenario, e.g. `pubsub-latency`.
    pub scenario: String,
    /// Case within the scenario, e.g. `64 B`.
    pub case: String,
    /// The system, e.g. `atmosphere/tcp`, `zenoh/peer-tcp`.
    pub system: String,
    /// Unit of `value`, e.g. `µs`, `msgs/s`, `MB/s`.
    pub unit: String,
    /// The median.
    pub value: f64,
    /// 99th percentile (latency rows).
    pub p99: Option<f64>,
    /// Smallest repetition (throughput rows), for the spread.
    pub min: Option<f64>,
    /// Largest repetition (throughput rows), for the spread.
    pub max: Option<f64>,
    /// Whether a larger value is better.
    pub higher_is_better: bool,
    /// Atmosphere's value divided by this row's, on the same transport
    /// where both have one; filled in by [`Report::compute_ratios`].
    pub ratio: Option<f64>,
}

/// A system that could not be measured.
#[derive(Debug, Clone, Serialize)]
pub struct Skipped {
    /// The system.
    pub system: String,
    /// Why.
    pub reason: String,
}

/// Everything one run measured.
#[derive(Debug, Default, Serialize)]
pub struct Report {
    /// Where it ran.
    pub machine: BTreeMap<String, String>,
    /// The figures.
    pub rows: Vec<Row>,
    /// Systems not measured, with reasons.
    pub skipped: Vec<Skipped>,
    /// Per-scenario details beyond the rows (e.g. every `nat` attempt).
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub extra: BTreeMap<String, serde_json::Value>,
}

fn transport_of(system: &str) -> &str {
    system.rsplit('/').next().unwrap_or("")
}

impl Report {
    /// Fills `ratio` = ours / theirs for every non-Atmosphere row, against the
    /// Atmosphere row of the same scenario and case on the same transport
    /// (`…/tcp`, `…/quic`), else against `atmosphere/tcp`.
    pub fn compute_ratios(&mut self) {
        let ours: BTreeMap<(String, String, String), f64> = self
            .rows
            .iter()
            .filter(|r| r.system.starts_with("atmosphere"))
            .map(|r| {
                (
                    (
                        r.scenario.clone(),
                        r.case.clone(),
                        transport_of(&r.system).to_owned(),
                    ),
                    r.value,
                )
            })
            .collect();
        for row in self
            .rows
            .iter_mut()
            .filter(|r| !r.system.starts_with("atmosphere"))
        {
            let key = |t: &str| (row.scenario.clone(), row.case.clone(), t.to_owned());
            let mine = ours
                .get(&key(transport_of(&row.system)))
                .or_else(|| ours.get(&key("tcp")));
            if let Some(mine) = mine {
                if row.value > 0.0 {
                    row.ratio = Some(mine / row.value);
                }
            }
        }
    }

    /// Prints the table: one block per scenario and case.
    pub fn print_table(&self) {
        let mut last = (String::new(), String::new());
        println!();
        println!(
            "{:<18} {:<10} {:<24} {:>14} {:>10} {:>12}  unit",
            "scenario", "case", "system", "median", "p99", "ours/theirs"
        );
        for row in &self.rows {
            let key = (row.scenario.clone(), row.case.clone());
            if key != last && !last.0.is_empty() {
                println!();
            }
            last = key;
            let p99 = row.p99.map(|p| format!("{p:.1}")).unwrap_or_default();
            let ratio = row
                .ratio
                .map(|r| {
                    let better = if row.higher_is_better {
                        r >= 1.0
                    } else {
                        r <= 1.0
                    };
                    format!("{r:.2}×{}", if better { " ✓" } else { "  " })
                })
                .unwrap_or_default();
            println!(
                "{:<18} {:<10} {:<24} {:>14} {:>10} {:>12}  {}",
                row.scenario,
                row.case,
                row.system,
                format_value(row.value),
                p99,
                ratio,
                row.unit
            );
        }
        if !self.skipped.is_empty() {
            println!("\nnot measured:");
            for s in &self.skipped {
                println!("  {:<24} {}", s.system, s.reason);
            }
        }
        println!("\nratios are Atmosphere / the other system; ✓ marks where Atmosphere is ahead.");
    }

    /// Writes the report as JSON.
    pub fn write_json(&self, path: &Path) -> Result<()> {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)?;
        }
        std::fs::write(path, serde_json::to_string_pretty(self)?)?;
        Ok(())
    }
}

fn format_value(v: f64) -> String {
    if v >= 100.0 {
        format!("{v:.0}")
    } else {
        format!("{v:.2}")
    }
}

/// Facts about this machine for the report.
pub fn machine_facts() -> BTreeMap<String, String> {
    let mut facts = BTreeMap::new();
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split(':').nth(1))
                .map(|m| m.trim().to_owned())
        })
        .unwrap_or_else(|| "unknown".into());
    facts.insert("cpu".into(), cpu);
    facts.insert(
        "cores".into(),
        std::thread::available_parallelism()
            .map(|n| n.get().to_string())
            .unwrap_or_default(),
    );
    if let Ok(kernel) = std::fs::read_to_string("/proc/sys/kernel/osrelease") {
        facts.insert("kernel".into(), kernel.trim().to_owned());
    }
    facts.insert("atmosphere".into(), atmosphere::VERSION.to_owned());
    facts
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(system: &str, value: f64) -> Row {
        Row {
            scenario: "s".into(),
            case: "c".into(),
            system: system.into(),
            unit: "msgs/s".into(),
            value,
            p99: None,
            min: None,
            max: None,
            higher_is_better: true,
            ratio: None,
        }
    }

    #[test]
    fn ratios_pair_rows_by_transport() {
        let mut report = Report {
            rows: vec![
                row("atmosphere/tcp", 100.0),
                row("atmosphere/quic", 50.0),
                row("libp2p-stream/tcp", 200.0),
                row("libp2p-stream/quic", 25.0),
                row("nats", 400.0),
            ],
            ..Default::default()
        };
        report.compute_ratios();
        let ratio = |s: &str| report.rows.iter().find(|r| r.system == s).unwrap().ratio;
        assert_eq!(ratio("libp2p-stream/tcp"), Some(0.5));
        assert_eq!(ratio("libp2p-stream/quic"), Some(2.0));
        assert_eq!(ratio("nats"), Some(0.25));
        assert_eq!(ratio("atmosphere/tcp"), None);
    }
}
