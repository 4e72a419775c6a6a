//! One SVG per trace: requested bytes and each policy's reserved bytes over the replay, and for
//! the bundled traces the peak `cuda-async` reached on a real H100 (a measured figure, drawn as
//! a dotted level: only its peak is known).

use super::anchors::measured_for;
use crate::replay::ReplayResult;
use plotters::prelude::*;
use std::path::{Path, PathBuf};

const GIB: f64 = (1u64 << 30) as f64;
const PALETTE: [RGBColor; 8] = [
    RGBColor(0x1f, 0x77, 0xb4),
    RGBColor(0xd6, 0x27, 0x28),
    RGBColor(0x2c, 0xa0, 0x2c),
    RGBColor(0xff, 0x7f, 0x0e),
    RGBColor(0x94, 0x67, 0xbd),
    RGBColor(0x8c, 0x56, 0x4b),
    RGBColor(0xe3, 0x77, 0xc2),
    RGBColor(0x17, 0xbe, 0xcf),
];

/// Writes `<dir>/<trace>.svg` for the results of one trace (all policies). Returns the path.
pub fn write_trace_plot(dir: &Path, results: &[&ReplayResult]) -> anyhow::Result<PathBuf> {
    let first = results
        .first()
        .ok_or_else(|| anyhow::anyhow!("no results to plot"))?;
    std::fs::create_dir_all(dir)?;
    let path = dir.join(format!("{}.svg", sanitize(&first.trace)));
    let mut svg = String::new();
    draw(&mut svg, results).map_err(|e| anyhow::anyhow!("plotting {}: {e}", first.trace))?;
    std::fs::write(&path, svg)?;
    Ok(path)
}

fn draw(out: &mut String, results: &[&ReplayResult]) -> Result<(), Box<dyn std::error::Error>> {
    let first = results[0];
    let x_max = first.ops.max(1) as f64;
    let async_peak = measured_for(&first.trace, first.allocs, first.events)
        .into_iter()
        .find(|m| m.peer == "cuda-async");
    let y_max = results
        .iter()
        .flat_map(|r| r.series.points().iter().map(|p| p.1.max(p.2)))
        .chain(async_peak.iter().map(|m| m.peak_reserved_bytes))
        .max()
        .unwrap_or(1) as f64
        / GIB
        // Headroom so the legend sits above the data.
        * (1.25 + 0.05 * results.len() as f64);
    let root = SVGBackend::with_string(out, (1100, 620)).into_drawing_area();
    root.fill(&WHITE)?;
    let mut chart = ChartBuilder::on(&root)
        .caption(
            format!("{}: requested vs reserved device memory", first.trace),
            ("sans-serif", 22),
        )
        .margin(14)
        .x_label_area_size(48)
        .y_label_area_size(70)
        .build_cartesian_2d(0f64..x_max, 0f64..y_max.max(1e-3))?;
    chart
        .configure_mesh()
        .x_desc("allocator operation (alloc or free) in trace order")
        .y_desc("GiB")
        .x_label_formatter(&|x| format!("{:.0}", x))
        .y_label_formatter(&|y| format!("{y:.2}"))
        .draw()?;
    for (i, r) in results.iter().enumerate() {
        let color = PALETTE[i % PALETTE.len()];
        // Earlier curves are drawn wider, so one that a later curve overlays still shows as
        // its border.
        let width = 2 + ((results.len() - 1 - i) / 2).min(2) as u32;
        let reserved = r
            .series
            .points()
            .iter()
            .map(|&(x, _, res)| (x as f64, res as f64 / GIB));
        // A curve drawn over an identical earlier one hides it: say so in the legend.
        let hides = results[..i]
            .iter()
            .find(|o| reserved_curve(o) == reserved_curve(r))
            .map_or(String::new(), |o| format!(", same curve as {}", o.policy));
        chart
            .draw_series(LineSeries::new(reserved, color.stroke_width(width)))?
            .label(format!(
                "{} reserved, peak {:.2} GiB ({:.3}x){hides}",
                r.policy,
                r.peak_reserved_bytes as f64 / GIB,
                r.reserved_ratio()
            ))
            .legend(move |(x, y)| {
                PathElement::new(vec![(x, y), (x + 20, y)], color.stroke_width(2))
            });
    }
    if let Some(m) = async_peak {
        let level = m.peak_reserved_bytes as f64 / GIB;
        let gray = RGBColor(0x70, 0x70, 0x70);
        chart
            .draw_series(DashedLineSeries::new(
                [(0.0, level), (x_max, level)],
                2,
                5,
                gray.stroke_width(2),
            ))?
            .label(format!(
                "{}: peak {level:.2} GiB ({:.3}x), curve not recorded",
                m.label,
                m.peak_reserved_bytes as f64 / m.peak_requested_bytes.max(1) as f64
            ))
            .legend(move |(x, y)| {
                PathElement::new(vec![(x, y), (x + 20, y)], gray.stroke_width(2))
            });
    }
    // Requested last, dashed, so it stays visible where a policy reserves exactly that much.
    let requested = first
        .series
        .points()
        .iter()
        .map(|&(x, req, _)| (x as f64, req as f64 / GIB));
    chart
        .draw_series(DashedLineSeries::new(
            requested,
            6,
            4,
            BLACK.stroke_width(2),
        ))?
        .label(format!(
            "requested (live tensors), peak {:.2} GiB",
            first.peak_requested_bytes as f64 / GIB
        ))
        .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], BLACK.stroke_width(2)));
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperLeft)
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .label_font(("sans-serif", 14))
        .draw()?;
    root.present()?;
    Ok(())
}

/// The reserved bytes of a result's plotted series.
fn reserved_curve(r: &ReplayResult) -> Vec<(usize, u64)> {
    r.series
        .points()
        .iter()
        .map(|&(x, _, res)| (x, res))
        .collect()
}

/// A file name from a trace name.
fn sanitize(name: &str) -> String {
    name.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' || c == '.' {
                c
            } else {
                '_'
            }
        })
        .collect()
}
