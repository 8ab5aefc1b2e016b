//! An SVG chart of a report: one panel per scenario and case, one bar per
//! system, Atmosphere's bars highlighted. Written by hand to keep the
//! harness free of plotting dependencies.

use std::{fmt::Write as _, path::Path};

use anyhow::Result;

use crate::report::{Report, Row};

const WIDTH: f64 = 900.0;
const LABEL_W: f64 = 210.0;
const BAR_H: f64 = 16.0;
const GAP: f64 = 4.0;
const PANEL_PAD: f64 = 34.0;

fn escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

/// Panels in report order: (title, rows).
fn panels(report: &Report) -> Vec<(String, Vec<&Row>)> {
    let mut panels: Vec<(String, Vec<&Row>)> = Vec::new();
    for row in &report.rows {
        let title = format!(
            "{} — {} ({}, {})",
            row.scenario,
            row.case,
            row.unit,
            if row.higher_is_better {
                "higher is better"
            } else {
                "lower is better"
            }
        );
        match panels.iter_mut().find(|(t, _)| *t == title) {
            Some((_, rows)) => rows.push(row),
            None => panels.push((title, vec![row])),
        }
    }
    panels
}

/// Renders the chart as an SVG document.
pub fn render(report: &Report) -> String {
    let panels = panels(report);
    let height: f64 = panels
        .iter()
        .map(|(_, rows)| PANEL_PAD + rows.len() as f64 * (BAR_H + GAP))
        .sum::<f64>()
        + 20.0;
    let mut svg = String::new();
    let _ = writeln!(
        svg,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{height}" font-family="sans-serif" font-size="12">"#
    );
    let _ = writeln!(svg, r#"<rect width="100%" height="100%" fill="white"/>"#);
    let mut y = 10.0;
    for (title, rows) in panels {
        let _ = writeln!(
            svg,
            r#"<text x="8" y="{}" font-weight="bold">{}</text>"#,
            y + 16.0,
            escape(&title)
        );
        y += PANEL_PAD - 6.0;
        let max = rows.iter().map(|r| r.value).fold(0.0, f64::max).max(1e-12);
        for row in rows {
            let w = (row.value / max) * (WIDTH - LABEL_W - 110.0);
            let ours = row.system.starts_with("atmosphere");
            let fill = if ours { "#d9480f" } else { "#868e96" };
            let _ = writeln!(
                svg,
                r#"<text x="{}" y="{}" text-anchor="end">{}</text><rect x="{LABEL_W}" y="{y}" width="{w:.1}" height="{BAR_H}" fill="{fill}"/><text x="{}" y="{}">{:.1}</text>"#,
                LABEL_W - 6.0,
                y + BAR_H - 4.0,
                escape(&row.system),
                LABEL_W + w + 4.0,
                y + BAR_H - 4.0,
                row.value
            );
            y += BAR_H + GAP;
        }
        y += 6.0;
    }
    svg.push_str("</svg>\n");
    svg
}

/// Writes the chart to `path`.
pub fn write_svg(report: &Report, path: &Path) -> Result<()> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    std::fs::write(path, render(report))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_bar_per_row_and_names_escaped() {
        let row = |system: &str, value: f64| Row {
            scenario: "pubsub-latency".into(),
            case: "64 B".into(),
            system: system.into(),
            unit: "µs".into(),
            value,
            p99: None,
            min: None,
            max: None,
            higher_is_better: false,
            ratio: None,
        };
        let report = Report {
            rows: vec![row("atmosphere/tcp", 60.0), row("a<b", 30.0)],
            ..Default::default()
        };
        let svg = render(&report);
        assert_eq!(svg.matches("<rect x=").count(), 2);
        assert!(svg.contains("a&lt;b"));
        assert!(svg.contains("#d9480f"));
    }
}
