//! `rustre bench-compare`: puts the reports of several `rustre bench --json` runs side by side,
//! as a Markdown table and as an SVG bar chart (a logarithmic scale: the references differ from
//! one another by orders of magnitude).

use std::fmt::Write as _;
use std::path::PathBuf;

use anyhow::{Context, bail};
use clap::Args;

use super::{Phase, Report, figure};

/// Colours of the bars, one per report in order (then again).
const COLOURS: [&str; 6] = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b"];
/// Geometry of the chart, in pixels.
const BAR_HEIGHT: u32 = 14;
const GROUP_GAP: u32 = 12;
const LEFT: u32 = 150;
const BAR_SPACE: u32 = 560;
const RIGHT: u32 = 150;
const TOP: u32 = 30;
const LEGEND_LINE: u32 = 18;

#[derive(Args, Debug)]
pub struct CompareArgs {
    /// Reports written by `rustre bench --json`, in the order to show them.
    #[arg(required = true, value_name = "REPORT.json")]
    reports: Vec<PathBuf>,
    /// Also draw the comparison as an SVG bar chart into this file.
    #[arg(long, value_name = "FILE")]
    svg: Option<PathBuf>,
    /// A title for the chart.
    #[arg(long, default_value = "rustre bench", value_name = "TEXT")]
    title: String,
}

pub fn run(args: CompareArgs) -> anyhow::Result<()> {
    let mut reports = Vec::new();
    for path in &args.reports {
        let text = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
        let report: Report = serde_json::from_str(&text)
            .with_context(|| format!("{}: not a `rustre bench --json` report", path.display()))?;
        reports.push(report);
    }
    let phases = phases(&reports);
    if phases.is_empty() {
        bail!("bench-compare: the reports have no phases");
    }
    print!("{}", markdown(&reports, &phases));
    if let Some(path) = &args.svg {
        std::fs::write(path, svg(&reports, &phases, &args.title))
            .with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(())
}

/// Every phase some report has, in the benchmark's order.
fn phases(reports: &[Report]) -> Vec<Phase> {
    let mut phases: Vec<Phase> =
        reports.iter().flat_map(|report| report.phases.iter().map(|phase| phase.phase)).collect();
    phases.sort();
    phases.dedup();
    phases
}

fn find(report: &Report, phase: Phase) -> Option<&super::PhaseReport> {
    report.phases.iter().find(|measured| measured.phase == phase)
}

/// One row per phase, one column per report: the rate, and the 99th percentile latency.
pub fn markdown(reports: &[Report], phases: &[Phase]) -> String {
    let mut out = String::new();
    let _ = write!(out, "| phase | unit |");
    for report in reports {
        let _ = write!(out, " {} |", report.label.replace('|', "/"));
    }
    out.push('\n');
    out.push_str("|---|---|");
    for _ in reports {
        out.push_str("---:|");
    }
    out.push('\n');
    for phase in phases {
        let _ = write!(out, "| {} | {} |", phase.name(), phase.unit());
        for report in reports {
            match find(report, *phase) {
                Some(measured) => {
                    let _ = write!(out, " {} (p99 {} µs) |", figure(measured.rate), figure(measured.latency_us.p99));
                }
                None => out.push_str(" — |"),
            }
        }
        out.push('\n');
    }
    out
}

fn escape(text: &str) -> String {
    text.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;").replace('"', "&quot;")
}

/// Horizontal bars grouped by phase, on one logarithmic axis from 1 to the next power of ten
/// above the largest rate.
pub fn svg(reports: &[Report], phases: &[Phase], title: &str) -> String {
    let largest =
        reports.iter().flat_map(|report| report.phases.iter().map(|phase| phase.rate)).fold(1.0_f64, f64::max);
    let decades = largest.log10().ceil().max(1.0);
    let legend_height = LEGEND_LINE * reports.len() as u32 + 8;
    let group_height = BAR_HEIGHT * reports.len() as u32 + GROUP_GAP;
    let chart_top = TOP + legend_height;
    let height = chart_top + group_height * phases.len() as u32 + 30;
    let width = LEFT + BAR_SPACE + RIGHT;
    let x = |value: f64| LEFT as f64 + BAR_SPACE as f64 * (value.max(1.0).log10() / decades);

    let mut out = String::new();
    let _ = writeln!(
        out,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" font-family="sans-serif" font-size="11">"#
    );
    let _ = writeln!(out, r#"<rect width="100%" height="100%" fill="white"/>"#);
    let _ = writeln!(out, r#"<text x="{}" y="18" font-size="14" font-weight="bold">{}</text>"#, LEFT, escape(title));
    for (at, report) in reports.iter().enumerate() {
        let y = TOP + LEGEND_LINE * at as u32;
        let colour = COLOURS[at % COLOURS.len()];
        let _ = writeln!(out, r#"<rect x="{LEFT}" y="{y}" width="12" height="12" fill="{colour}"/>"#);
        let _ = writeln!(
            out,
            r#"<text x="{}" y="{}">{} ({}, {} thread(s))</text>"#,
            LEFT + 18,
            y + 10,
            escape(&report.label),
            escape(&report.through),
            report.threads
        );
    }
    // Decade grid lines and their labels.
    let bottom = chart_top + group_height * phases.len() as u32;
    for decade in 0..=decades as u32 {
        let gx = x(10f64.powi(decade as i32));
        let _ = writeln!(
            out,
            r##"<line x1="{gx:.1}" y1="{chart_top}" x2="{gx:.1}" y2="{bottom}" stroke="#ddd"/><text x="{gx:.1}" y="{}" text-anchor="middle" fill="#666">{}</text>"##,
            bottom + 14,
            figure(10f64.powi(decade as i32))
        );
    }
    for (row, phase) in phases.iter().enumerate() {
        let top = chart_top + group_height * row as u32;
        let _ = writeln!(
            out,
            r#"<text x="{}" y="{}" text-anchor="end">{} ({})</text>"#,
            LEFT - 6,
            top + (BAR_HEIGHT * reports.len() as u32) / 2 + 4,
            phase.name(),
            phase.unit()
        );
        for (at, report) in reports.iter().enumerate() {
            let y = top + BAR_HEIGHT * at as u32;
            let colour = COLOURS[at % COLOURS.len()];
            match find(report, *phase) {
                Some(measured) => {
                    let end = x(measured.rate);
                    let _ = writeln!(
                        out,
                        r#"<rect x="{LEFT}" y="{y}" width="{:.1}" height="{}" fill="{colour}"/><text x="{:.1}" y="{}">{}</text>"#,
                        (end - LEFT as f64).max(1.0),
                        BAR_HEIGHT - 2,
                        end + 4.0,
                        y + BAR_HEIGHT - 4,
                        figure(measured.rate)
                    );
                }
                None => {
                    let _ = writeln!(
                        out,
                        r##"<text x="{}" y="{}" fill="#999">not measured</text>"##,
                        LEFT + 4,
                        y + BAR_HEIGHT - 4
                    );
                }
            }
        }
    }
    out.push_str("</svg>\n");
    out
}
