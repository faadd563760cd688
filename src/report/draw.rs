//! Drawing one chart spec as an SVG document with plotters' SVG backend.
//!
//! plotters is built without a font backend (no `ttf`/`ab_glyph` feature): label sizes come from its
//! built-in estimate and text is written as `<text font-family="sans-serif">` for the viewer to lay out,
//! so no system font is ever opened (CI machines may have none). plotters escapes the text it writes.
//! Layout: the plot on the left, the legend in its own column on the right, so it never hides a curve.
use super::charts::{Band, Chart, Series, Stroke};
use super::fmt_num;
use anyhow::Result;
use plotters::coord::types::{RangedCoordf64, RangedCoordu64};
use plotters::coord::Shift;
use plotters::element::DashedPathElement;
use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, Pos, VPos};
use std::ops::Range;

const SIZE: (u32, u32) = (900, 420);
/// Width of the plot; the legend column gets the rest.
const PLOT_WIDTH: u32 = 680;
const FONT: &str = "sans-serif";
/// Up to this many points a series gets a dot per point (and a band a whisker per point), so sparse curves
/// such as evaluations stay readable; isolated points always get a dot.
const DOT_LIMIT: usize = 40;
const LEGEND_ROW: i32 = 22;
/// Legend rows that fit the height; further series are summed up as "… N more".
const LEGEND_ROWS: usize = 15;
const LEGEND_LABEL_CHARS: usize = 26;

type Area<'a> = DrawingArea<SVGBackend<'a>, Shift>;

/// The chart as an SVG document.
pub fn svg(chart: &Chart) -> Result<String> {
    let mut buf = String::new();
    {
        let root = SVGBackend::with_string(&mut buf, SIZE).into_drawing_area();
        root.fill(&WHITE)?;
        let (plot, legend) = root.split_horizontally(PLOT_WIDTH);
        draw_plot(chart, &plot)?;
        draw_legend(chart, &legend)?;
        root.present()?;
    }
    Ok(buf)
}

fn draw_plot(chart: &Chart, area: &Area) -> Result<()> {
    let (x, y) = ranges(chart);
    let mut cc = ChartBuilder::on(area)
        .caption(&chart.title, (FONT, 24))
        .margin(12)
        .x_label_area_size(42)
        .y_label_area_size(72)
        .build_cartesian_2d(x, y)?;
    cc.configure_mesh()
        .x_desc("step")
        .y_desc(&chart.y_desc)
        .x_labels(10)
        .y_labels(8)
        .y_label_formatter(&|v| fmt_num(*v))
        .label_style((FONT, 15))
        .axis_desc_style((FONT, 17))
        .light_line_style(RGBColor(238, 238, 238))
        .draw()?;
    for band in &chart.bands {
        draw_band(&mut cc, band)?;
    }
    for series in &chart.series {
        draw_series(&mut cc, series)?;
    }
    Ok(())
}

type Plot<'a, 'b> = ChartContext<'a, SVGBackend<'b>, Cartesian2d<RangedCoordu64, RangedCoordf64>>;

/// A translucent polygon from the low to the high edge, plus a whisker per point when there are few.
fn draw_band(cc: &mut Plot, band: &Band) -> Result<()> {
    let points: Vec<(u64, f64, f64)> =
        band.points.iter().map(|&(s, lo, hi)| (s, lo.clamp(-LIMIT, LIMIT), hi.clamp(-LIMIT, LIMIT))).collect();
    let band = &Band { color: band.color, points };
    if band.points.len() >= 2 {
        let upper = band.points.iter().map(|&(s, _, hi)| (s, hi));
        let lower = band.points.iter().rev().map(|&(s, lo, _)| (s, lo));
        cc.draw_series(std::iter::once(Polygon::new(upper.chain(lower).collect::<Vec<_>>(), band.color.mix(0.18))))?;
    }
    if band.points.len() <= DOT_LIMIT {
        let style = band.color.mix(0.6).stroke_width(2);
        cc.draw_series(band.points.iter().map(|&(s, lo, hi)| PathElement::new(vec![(s, lo), (s, hi)], style)))?;
    }
    Ok(())
}

/// One line (or area) per run of consecutive values; a gap (`None`) breaks the line.
fn draw_series(cc: &mut Plot, series: &Series) -> Result<()> {
    let color = series.color;
    let line = color.stroke_width(2);
    let runs = runs(&series.points);
    let n_points: usize = runs.iter().map(Vec::len).sum();
    for run in &runs {
        match series.stroke {
            Stroke::Solid => cc.draw_series(LineSeries::new(run.iter().copied(), line))?,
            Stroke::Dashed(n) => {
                let (dash, gap) = dashes(n);
                cc.draw_series(DashedLineSeries::new(run.iter().copied(), dash, gap, line))?
            }
            Stroke::Filled => {
                cc.draw_series(AreaSeries::new(run.iter().copied(), 0.0, lighten(color)).border_style(line))?
            }
        };
        if run.len() == 1 || n_points <= DOT_LIMIT {
            cc.draw_series(run.iter().map(|&p| Circle::new(p, 3, color.filled())))?;
        }
    }
    Ok(())
}

/// Dash and gap lengths (pixels) of the n-th dash pattern.
fn dashes(n: usize) -> (u32, u32) {
    const PATTERNS: [(u32, u32); 3] = [(8, 4), (2, 3), (14, 4)];
    PATTERNS[n % PATTERNS.len()]
}

/// Maximal runs of consecutive points that have a value.
fn runs(points: &[(u64, Option<f64>)]) -> Vec<Vec<(u64, f64)>> {
    let mut out: Vec<Vec<(u64, f64)>> = Vec::new();
    let mut open = false;
    for &(step, v) in points {
        let v = v.map(|v| v.clamp(-LIMIT, LIMIT));
        match (v, open) {
            (Some(v), true) => out.last_mut().into_iter().for_each(|r| r.push((step, v))),
            (Some(v), false) => out.push(vec![(step, v)]),
            (None, _) => {}
        }
        open = v.is_some();
    }
    out
}

/// An opaque pale version of `c` (stacked layers must hide the ones below, so no transparency).
fn lighten(c: RGBColor) -> RGBColor {
    let pale = |v: u8| v + ((255 - v) as f64 * 0.55) as u8;
    RGBColor(pale(c.0), pale(c.1), pale(c.2))
}

/// Steps and values spanned by the chart's points, padded; a single step or value gets a range around it.
fn ranges(chart: &Chart) -> (Range<u64>, Range<f64>) {
    let mut steps = Vec::new();
    let mut values = Vec::new();
    for s in &chart.series {
        for &(step, v) in &s.points {
            if let Some(v) = v {
                steps.push(step);
                values.push(v);
            }
        }
        if s.stroke == Stroke::Filled {
            values.push(0.0);
        }
    }
    for b in &chart.bands {
        for &(step, lo, hi) in &b.points {
            steps.push(step);
            values.extend([lo, hi]);
        }
    }
    (step_range(&steps), value_range(&values))
}

fn step_range(steps: &[u64]) -> Range<u64> {
    let lo = steps.iter().copied().min().unwrap_or(0);
    let hi = steps.iter().copied().max().unwrap_or(0);
    if lo == hi {
        lo.saturating_sub(1)..hi + 1
    } else {
        lo..hi
    }
}

/// Values drawn are clamped to +-LIMIT, so the axis arithmetic (span, padding, ticks) stays finite.
const LIMIT: f64 = 1e300;

/// 5% padding either side, but not below zero when every value is non-negative. The span is at least a
/// millionth of the values' magnitude: the plotting library steps its ticks by a fraction of the span from
/// the lower end, and a step below the values' precision never advanced (a hang on a metric of 1e308).
fn value_range(values: &[f64]) -> Range<f64> {
    let finite = values.iter().copied().filter(|v| v.is_finite()).map(|v| v.clamp(-LIMIT, LIMIT));
    let (lo, hi) = finite.fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), v| (lo.min(v), hi.max(v)));
    if lo > hi {
        return 0.0..1.0;
    }
    let magnitude = lo.abs().max(hi.abs());
    let pad = ((hi - lo) * 0.05).max(magnitude * 1e-6).max(1e-9);
    let bottom = if lo >= 0.0 && lo - pad < 0.0 { 0.0 } else { lo - pad };
    bottom..hi + pad
}

/// One row per series: a sample of its stroke and its (shortened) label; then a note on the bands.
fn draw_legend(chart: &Chart, area: &Area) -> Result<()> {
    let text = TextStyle::from((FONT, 17)).pos(Pos::new(HPos::Left, VPos::Center));
    let rows = LEGEND_ROWS.min(chart.series.len());
    let mut y = 48;
    for s in &chart.series[..rows] {
        let sample = [(8, y), (36, y)];
        match s.stroke {
            Stroke::Solid => area.draw(&PathElement::new(sample, s.color.stroke_width(3)))?,
            Stroke::Dashed(n) => {
                let (dash, gap) = dashes(n);
                area.draw(&DashedPathElement::new(sample, dash, gap, s.color.stroke_width(3)))?
            }
            Stroke::Filled => area.draw(&PathElement::new(sample, lighten(s.color).stroke_width(10)))?,
        }
        area.draw(&Text::new(shorten(&s.label), (42, y), text.clone()))?;
        y += LEGEND_ROW;
    }
    if rows < chart.series.len() {
        area.draw(&Text::new(format!("… {} more", chart.series.len() - rows), (8, y), text.clone()))?;
        y += LEGEND_ROW;
    }
    if !chart.bands.is_empty() {
        area.draw(&Text::new("shaded: ± 1 standard error", (8, y + 8), text))?;
    }
    Ok(())
}

fn shorten(label: &str) -> String {
    if label.chars().count() <= LEGEND_LABEL_CHARS {
        return label.to_string();
    }
    let head: String = label.chars().take(LEGEND_LABEL_CHARS - 1).collect();
    format!("{head}…")
}
