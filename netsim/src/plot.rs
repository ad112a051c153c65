//! The SVG plot of a run: how many different states the live replicas held
//! over time (1 means converged), each replica's record count, the spans
//! with a partition shaded, and every fault marked where it happened.

use std::fmt::Write as _;

use crate::report::RunReport;

const WIDTH: f64 = 960.0;
const HEIGHT: f64 = 520.0;
const LEFT: f64 = 100.0;
const RIGHT: f64 = 20.0;
const TOP_PANEL: (f64, f64) = (40.0, 150.0);
const BOTTOM_PANEL: (f64, f64) = (200.0, 440.0);

/// Node colours, reused past ten nodes.
const COLOURS: [&str; 10] = [
    "#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f",
    "#bcbd22", "#17becf",
];

/// The SVG document for `report`.
pub fn svg(report: &RunReport) -> String {
    let samples = &report.samples;
    let end_ms = samples.last().map_or(1, |sample| sample.t_ms.max(1)) as f64;
    let x = |t_ms: f64| LEFT + (WIDTH - LEFT - RIGHT) * t_ms / end_ms;
    let mut out = String::new();
    let _ = writeln!(
        out,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{HEIGHT}" viewBox="0 0 {WIDTH} {HEIGHT}" font-family="sans-serif" font-size="11">"#
    );
    let _ = writeln!(out, r#"<rect width="100%" height="100%" fill="white"/>"#);
    let _ = writeln!(
        out,
        r#"<text x="{LEFT}" y="20" font-size="14">{} (seed {}, {} nodes): {}</text>"#,
        escape(&report.scenario),
        report.seed,
        report.nodes,
        if report.passed { "pass" } else { "FAIL" }
    );

    // Partitioned spans, shaded across both panels.
    let mut span_start: Option<u64> = None;
    for (idx, sample) in samples.iter().enumerate() {
        let last = idx + 1 == samples.len();
        match (sample.partitioned, span_start) {
            (true, None) => span_start = Some(sample.t_ms),
            (false, Some(start)) => {
                shade(&mut out, x(start as f64), x(sample.t_ms as f64));
                span_start = None;
            }
            _ => {}
        }
        if last && let Some(start) = span_start {
            shade(&mut out, x(start as f64), x(sample.t_ms as f64));
        }
    }

    // Top panel: distinct states among live replicas.
    let max_distinct = samples
        .iter()
        .map(|sample| sample.distinct_states)
        .max()
        .unwrap_or(1)
        .max(2) as f64;
    let (top, bottom) = TOP_PANEL;
    let y_top = |distinct: f64| bottom - (bottom - top) * distinct / max_distinct;
    axes(&mut out, TOP_PANEL, "distinct states", max_distinct, end_ms);
    let points: Vec<String> = samples
        .iter()
        .map(|sample| {
            format!(
                "{:.1},{:.1}",
                x(sample.t_ms as f64),
                y_top(sample.distinct_states as f64)
            )
        })
        .collect();
    let _ = writeln!(
        out,
        r##"<polyline fill="none" stroke="#222" stroke-width="1.5" points="{}"/>"##,
        points.join(" ")
    );

    // Bottom panel: live records per replica.
    let max_records = samples
        .iter()
        .flat_map(|sample| sample.nodes.iter().flatten().map(|node| node.records))
        .max()
        .unwrap_or(1)
        .max(1) as f64;
    let (top, bottom) = BOTTOM_PANEL;
    let y_bottom = |records: f64| bottom - (bottom - top) * records / max_records;
    axes(&mut out, BOTTOM_PANEL, "live records", max_records, end_ms);
    for node_idx in 0..report.nodes {
        let colour = COLOURS[node_idx % COLOURS.len()];
        let mut segment: Vec<String> = Vec::new();
        let flush = |segment: &mut Vec<String>, out: &mut String| {
            if segment.len() > 1 {
                let _ = writeln!(
                    out,
                    r#"<polyline fill="none" stroke="{colour}" stroke-width="1" points="{}"/>"#,
                    segment.join(" ")
                );
            }
            segment.clear();
        };
        for sample in samples {
            match sample.nodes.get(node_idx).copied().flatten() {
                Some(node) => segment.push(format!(
                    "{:.1},{:.1}",
                    x(sample.t_ms as f64),
                    y_bottom(node.records as f64)
                )),
                None => flush(&mut segment, &mut out),
            }
        }
        flush(&mut segment, &mut out);
    }

    // Which colour is which node (the first ten).
    let n_shown = report.nodes.min(COLOURS.len());
    for (node_idx, colour) in COLOURS.iter().enumerate().take(n_shown) {
        let lx = WIDTH - RIGHT - 40.0 * (n_shown - node_idx) as f64;
        let _ = writeln!(
            out,
            r#"<text x="{lx:.1}" y="{:.1}" fill="{colour}">{}</text>"#,
            BOTTOM_PANEL.0 - 8.0,
            escape(report.node_names.get(node_idx).map_or("?", String::as_str))
        );
    }

    // Faults.
    for (idx, fault) in report.faults.iter().enumerate() {
        let fx = x(fault.at_ms as f64);
        let colour = if fault.healing { "#2a9d2a" } else { "#c0392b" };
        let _ = writeln!(
            out,
            r#"<line x1="{fx:.1}" y1="{}" x2="{fx:.1}" y2="{}" stroke="{colour}" stroke-dasharray="4,3"/>"#,
            TOP_PANEL.0, BOTTOM_PANEL.1
        );
        let label_y = BOTTOM_PANEL.1 + 26.0 + 11.0 * (idx % 5) as f64;
        let _ = writeln!(
            out,
            r#"<text x="{:.1}" y="{label_y:.1}" fill="{colour}" font-size="9">{}</text>"#,
            fx + 2.0,
            escape(&fault.label)
        );
    }
    let _ = writeln!(out, "</svg>");
    out
}

fn shade(out: &mut String, from: f64, to: f64) {
    let _ = writeln!(
        out,
        r##"<rect x="{from:.1}" y="{}" width="{:.1}" height="{}" fill="#f4d03f" fill-opacity="0.25"/>"##,
        TOP_PANEL.0,
        (to - from).max(1.0),
        BOTTOM_PANEL.1 - TOP_PANEL.0
    );
}

fn axes(out: &mut String, (top, bottom): (f64, f64), label: &str, max: f64, end_ms: f64) {
    let right = WIDTH - RIGHT;
    let _ = writeln!(
        out,
        r##"<line x1="{LEFT}" y1="{bottom}" x2="{right}" y2="{bottom}" stroke="#888"/><line x1="{LEFT}" y1="{top}" x2="{LEFT}" y2="{bottom}" stroke="#888"/>"##
    );
    let _ = writeln!(
        out,
        r#"<text x="8" y="{:.1}">{label}</text><text x="{:.1}" y="{:.1}" text-anchor="end">{max:.0}</text><text x="{:.1}" y="{bottom:.1}" text-anchor="end">0</text>"#,
        (top + bottom) / 2.0,
        LEFT - 4.0,
        top + 4.0,
        LEFT - 4.0
    );
    let step_s = nice_step(end_ms / 1000.0 / 10.0);
    let mut t_s = 0.0;
    while t_s * 1000.0 <= end_ms {
        let tx = LEFT + (WIDTH - LEFT - RIGHT) * t_s * 1000.0 / end_ms;
        let _ = writeln!(
            out,
            r##"<line x1="{tx:.1}" y1="{bottom}" x2="{tx:.1}" y2="{:.1}" stroke="#888"/><text x="{tx:.1}" y="{:.1}" text-anchor="middle" font-size="9">{t_s}s</text>"##,
            bottom + 3.0,
            bottom + 12.0
        );
        t_s += step_s;
    }
}

fn nice_step(raw: f64) -> f64 {
    for step in [1.0, 2.0, 5.0, 10.0, 20.0, 30.0, 60.0, 120.0, 300.0, 600.0] {
        if raw <= step {
            return step;
        }
    }
    1800.0
}

fn escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}
