//! The two-endpoint scenarios, run over every contender.

use indicatif::ProgressBar;

use crate::{
    contender::{Contender, Rate},
    plan::Plan,
    report::{Report, Row, Skipped},
    stats::{median, Summary},
};

fn size_label(size: usize) -> String {
    if size >= 1024 && size.is_multiple_of(1024) {
        format!("{} KiB", size / 1024)
    } else {
        format!("{size} B")
    }
}

fn latency_row(scenario: &str, case: String, system: String, s: &Summary) -> Row {
    Row {
        scenario: scenario.into(),
        case,
        system,
        unit: "µs".into(),
        value: s.median_us,
        p99: Some(s.p99_us),
        min: Some(s.min_us),
        max: Some(s.max_us),
        higher_is_better: false,
        ratio: None,
    }
}

fn rate_rows(scenario: &str, case: String, system: String, rates: &[Rate], unit: &str) -> Vec<Row> {
    let per_sec: Vec<f64> = rates.iter().map(|r| r.per_sec).collect();
    let mb: Vec<f64> = rates.iter().map(|r| r.bytes_per_sec / 1e6).collect();
    let spread = |v: &[f64]| {
        (
            v.iter().cloned().fold(f64::INFINITY, f64::min),
            v.iter().cloned().fold(0.0, f64::max),
        )
    };
    let (lo, hi) = spread(&per_sec);
    let (mlo, mhi) = spread(&mb);
    vec![
        Row {
            scenario: scenario.into(),
            case: case.clone(),
            system: system.clone(),
            unit: unit.into(),
            value: median(&per_sec),
            p99: None,
            min: Some(lo),
            max: Some(hi),
            higher_is_better: true,
            ratio: None,
        },
        Row {
            scenario: scenario.into(),
            case: format!("{case} MB/s"),
            system,
            unit: "MB/s".into(),
            value: median(&mb),
            p99: None,
            min: Some(mlo),
            max: Some(mhi),
            higher_is_better: true,
            ratio: None,
        },
    ]
}

fn note_failure(report: &mut Report, system: String, what: &str, error: anyhow::Error) {
    report.skipped.push(Skipped {
        system,
        reason: format!("{what}: {error:#}"),
    });
}

/// Sequential pub/sub round trips.
pub async fn pubsub_latency(
    cs: &mut [Box<dyn Contender>],
    plan: &Plan,
    report: &mut Report,
    bar: &ProgressBar,
) {
    for &size in &plan.latency_sizes {
        for c in cs.iter_mut() {
            bar.set_message(format!("pubsub-latency {} {}", size_label(size), c.name()));
            match c
                .pubsub_latency(size, plan.latency_warmup, plan.latency_iters)
                .await
            {
                Ok(Some(s)) => report.rows.push(latency_row(
                    "pubsub-latency",
                    size_label(size),
                    c.name(),
                    &s,
                )),
                Ok(None) => {}
                Err(e) => note_failure(report, c.name(), "pubsub-latency", e),
            }
            bar.inc(1);
        }
    }
}

async fn repeated<F>(reps: usize, mut f: F) -> anyhow::Result<Option<Vec<Rate>>>
where
    F: AsyncFnMut() -> anyhow::Result<Option<Rate>>,
{
    let mut rates = Vec::new();
    for _ in 0..reps.max(1) {
        match f().await? {
            Some(r) => rates.push(r),
            None => return Ok(None),
        }
    }
    Ok(Some(rates))
}

/// One publisher → one subscriber, as fast as possible.
pub async fn pubsub_throughput(
    cs: &mut [Box<dyn Contender>],
    plan: &Plan,
    report: &mut Report,
    bar: &ProgressBar,
) {
    for &size in &plan.throughput_sizes {
        let count = plan.throughput_count(size);
        for c in cs.iter_mut() {
            bar.set_message(format!(
                "pubsub-throughput {} {}",
                size_label(size),
                c.name()
            ));
            match repeated(plan.reps, async || c.pubsub_throughput(size, count).await).await {
                Ok(Some(rates)) => report.rows.extend(rate_rows(
                    "pubsub-throughput",
                    size_label(size),
                    c.name(),
                    &rates,
                    "msgs/s",
                )),
                Ok(None) => {}
                Err(e) => note_failure(report, c.name(), "pubsub-throughput", e),
            }
            bar.inc(1);
        }
    }
}

/// RPC: sequential round trips and calls/s with many in flight.
pub async fn rpc(
    cs: &mut [Box<dyn Contender>],
    plan: &Plan,
    report: &mut Report,
    bar: &ProgressBar,
) {
    for c in cs.iter_mut() {
        bar.set_message(format!("rpc {}", c.name()));
        match c
            .rpc_latency(64, plan.latency_warmup, plan.latency_iters)
            .await
        {
            Ok(Some(s)) => {
                report
                    .rows
                    .push(latency_row("rpc-latency", "64 B".into(), c.name(), &s))
            }
            Ok(None) => {}
            Err(e) => note_failure(report, c.name(), "rpc-latency", e),
        }
        let (conc, calls) = (plan.rpc_concurrency, plan.rpc_calls);
        match repeated(plan.reps, async || c.rpc_throughput(64, conc, calls).await).await {
            Ok(Some(rates)) => {
                let mut rows = rate_rows(
                    "rpc-throughput",
                    format!("64 B ×{conc}"),
                    c.name(),
                    &rates,
                    "calls/s",
                );
                rows.truncate(1);
                report.rows.extend(rows);
            }
            Ok(None) => {}
            Err(e) => note_failure(report, c.name(), "rpc-throughput", e),
        }
        bar.inc(1);
    }
}

/// Bulk transfer.
pub async fn bulk(
    cs: &mut [Box<dyn Contender>],
    plan: &Plan,
    report: &mut Report,
    bar: &ProgressBar,
) {
    for c in cs.iter_mut() {
        bar.set_message(format!("bulk {}", c.name()));
        let total = plan.bulk_bytes;
        match repeated(plan.reps, async || c.bulk(total).await).await {
            Ok(Some(rates)) => {
                let rows = rate_rows("bulk", "one way".into(), c.name(), &rates, "x");
                report.rows.extend(rows.into_iter().skip(1).map(|mut r| {
                    r.case = "one way".into();
                    r
                }));
            }
            Ok(None) => {}
            Err(e) => note_failure(report, c.name(), "bulk", e),
        }
        bar.inc(1);
    }
    bar.set_message("bulk iperf3");
    match crate::peers::iperf::bulk_bytes_per_sec(5).await {
        Ok(Some(bytes)) => report.rows.push(Row {
            scenario: "bulk".into(),
            case: "one way".into(),
            system: "iperf3/tcp".into(),
            unit: "MB/s".into(),
            value: bytes / 1e6,
            p99: None,
            min: None,
            max: None,
            higher_is_better: true,
            ratio: None,
        }),
        Ok(None) => report.skipped.push(Skipped {
            system: "iperf3".into(),
            reason: crate::peers::iperf::missing_reason().unwrap_or_else(|| "not available".into()),
        }),
        Err(e) => note_failure(report, "iperf3".into(), "bulk", e),
    }
}
