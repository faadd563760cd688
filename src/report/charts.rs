//! What to draw: the run's records turned into chart specs (series of `(step, value)` points), with no
//! plotting code (that is `draw.rs`). A chart without a single point is not returned, so it is never drawn.
use super::data::{MetricRow, Run};
use plotters::style::RGBColor;
use std::collections::BTreeMap;

/// How a series is drawn.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Stroke {
    Solid,
    /// Dashed with the n-th dash pattern (eval curves; one pattern per dataset).
    Dashed(usize),
    /// Filled down to zero (the layers of a stacked chart, drawn from the top layer down).
    Filled,
}

/// One curve: a value per step, `None` where the record has no value (a gap in the line).
#[derive(Debug)]
pub struct Series {
    pub label: String,
    pub color: RGBColor,
    pub stroke: Stroke,
    pub points: Vec<(u64, Option<f64>)>,
}

/// A shaded range around a curve (mean ± standard error), one `(step, low, high)` per step.
#[derive(Debug)]
pub struct Band {
    pub color: RGBColor,
    pub points: Vec<(u64, f64, f64)>,
}

#[derive(Debug)]
pub struct Chart {
    /// SVG file name inside `report/` (ASCII letters, digits, `-`, `_` and `.`).
    pub file: String,
    pub title: String,
    pub y_desc: String,
    pub series: Vec<Series>,
    pub bands: Vec<Band>,
}

/// Tableau 10: one color per agent (by pipeline position), the same in every chart.
const PALETTE: [RGBColor; 10] = [
    RGBColor(31, 119, 180),
    RGBColor(255, 127, 14),
    RGBColor(44, 160, 44),
    RGBColor(214, 39, 40),
    RGBColor(148, 103, 189),
    RGBColor(140, 86, 75),
    RGBColor(227, 119, 194),
    RGBColor(127, 127, 127),
    RGBColor(188, 189, 34),
    RGBColor(23, 190, 207),
];

fn color(i: usize) -> RGBColor {
    PALETTE[i % PALETTE.len()]
}

/// Every chart with data, in the order the page shows them.
pub fn all(run: &Run) -> Vec<Chart> {
    let per_agent_metric = |file: &str, title: &str, y_desc: &str, field: fn(&MetricRow) -> Option<f64>| Chart {
        file: file.into(),
        title: title.into(),
        y_desc: y_desc.into(),
        series: agent_series(run, field, Stroke::Solid, ""),
        bands: Vec::new(),
    };
    let mut charts = vec![per_agent_metric("reward.svg", "Reward mean per agent", "reward", |r| r.reward_mean)];
    charts.extend(eval_charts(run));
    charts.push(response_len_chart(run));
    charts
        .push(per_agent_metric("tool_call_rate.svg", "Tool-call rate per agent (train)", "rate", |r| r.tool_call_rate));
    charts.push(per_agent_metric("kl.svg", "KL per agent", "KL", |r| r.kl));
    charts.push(per_agent_metric("clip_frac.svg", "Clip fraction per agent", "fraction clipped", |r| r.clip_frac));
    charts.push(per_agent_metric("grad_norm.svg", "Gradient norm per agent", "grad norm", |r| r.grad_norm));
    charts.push(per_agent_metric("lr.svg", "Learning rate per agent", "lr", |r| r.lr));
    charts.push(time_chart(run));
    charts.retain(has_data);
    charts
}

fn has_data(c: &Chart) -> bool {
    c.series.iter().any(|s| s.points.iter().any(|(_, v)| v.is_some()))
}

/// One series per agent that has at least one value of `field`; `suffix` is appended to the label.
fn agent_series(run: &Run, field: fn(&MetricRow) -> Option<f64>, stroke: Stroke, suffix: &str) -> Vec<Series> {
    let mut out = Vec::new();
    for (i, agent) in run.agents.iter().enumerate() {
        let points = by_step(run.rows_of(agent).map(|r| (r.step, field(r))));
        if points.iter().any(|(_, v)| v.is_some()) {
            out.push(Series { label: format!("{agent}{suffix}"), color: color(i), stroke, points });
        }
    }
    out
}

/// Sorts by step; a later record for the same step (a resumed run) replaces the earlier one.
fn by_step<T>(points: impl Iterator<Item = (u64, T)>) -> Vec<(u64, T)> {
    points.collect::<BTreeMap<_, _>>().into_iter().collect()
}

/// A value and its standard error, either possibly missing.
type ValueSe = (Option<f64>, Option<f64>);

/// Per dataset: avg@k and pass@k with ± one standard error bands.
fn eval_charts(run: &Run) -> Vec<Chart> {
    let mut files: Vec<String> = Vec::new();
    let mut out = Vec::new();
    for dataset in run.datasets() {
        let rows: Vec<_> = run.evals_of(dataset).collect();
        let k = rows.iter().rev().find_map(|e| e.k).map_or("k".to_string(), |k| k.to_string());
        let avg = by_step(rows.iter().map(|e| (e.step, (e.avg_at_k, e.avg_at_k_se))));
        let pass = by_step(rows.iter().map(|e| (e.step, (e.pass_at_k, e.pass_at_k_se))));
        let (avg_color, pass_color) = (color(0), color(1));
        let file = unique_file(&mut files, &format!("eval-{}", slug(dataset)));
        out.push(Chart {
            file,
            title: format!("Eval accuracy: {dataset}"),
            y_desc: "accuracy".into(),
            series: vec![
                Series { label: format!("avg@{k}"), color: avg_color, stroke: Stroke::Solid, points: values(&avg) },
                Series {
                    label: format!("pass@{k}"),
                    color: pass_color,
                    stroke: Stroke::Dashed(0),
                    points: values(&pass),
                },
            ],
            bands: vec![se_band(&avg, avg_color), se_band(&pass, pass_color)],
        });
    }
    out
}

fn values(points: &[(u64, ValueSe)]) -> Vec<(u64, Option<f64>)> {
    points.iter().map(|&(s, (v, _))| (s, v)).collect()
}

fn se_band(points: &[(u64, ValueSe)], color: RGBColor) -> Band {
    let points = points
        .iter()
        .filter_map(|&(s, (v, se))| {
            let (v, se) = (v?, se?);
            Some((s, v - se, v + se))
        })
        .collect();
    Band { color, points }
}

/// `name` with anything but ASCII letters, digits, `-` and `_` replaced by `_`.
fn slug(name: &str) -> String {
    name.chars().map(|c| if c.is_ascii_alphanumeric() || c == '-' || c == '_' { c } else { '_' }).collect()
}

/// `stem.svg`, or `stem-2.svg`, `stem-3.svg`, ... when two names map to the same slug.
fn unique_file(taken: &mut Vec<String>, stem: &str) -> String {
    let mut file = format!("{stem}.svg");
    let mut n = 2;
    while taken.contains(&file) {
        file = format!("{stem}-{n}.svg");
        n += 1;
    }
    taken.push(file.clone());
    file
}

/// Training response length per agent (solid) and, where `eval.jsonl` has it, eval length per agent and
/// dataset (same color, dashed with one pattern per dataset).
fn response_len_chart(run: &Run) -> Chart {
    let mut series = agent_series(run, |r| r.response_len_mean, Stroke::Solid, " (train)");
    for (i, agent) in run.agents.iter().enumerate() {
        for (d, dataset) in run.datasets().into_iter().enumerate() {
            let lens = run.evals_of(dataset).map(|e| {
                let len = e.agents.as_ref().and_then(|a| a.get(agent)).and_then(|a| a.response_len_mean);
                (e.step, len)
            });
            let points = by_step(lens);
            if points.iter().any(|(_, v)| v.is_some()) {
                let label = format!("{agent} (eval {dataset})");
                series.push(Series { label, color: color(i), stroke: Stroke::Dashed(d), points });
            }
        }
    }
    Chart {
        file: "response_len.svg".into(),
        title: "Response length per agent".into(),
        y_desc: "tokens".into(),
        series,
        bands: Vec::new(),
    }
}

/// Seconds per step in each phase: `[rollout, coach, train]`, `None` for a phase no record of the step has.
pub type StepTimes = [Option<f64>; 3];
pub const PHASES: [&str; 3] = ["rollout", "coach", "train"];

/// Per step, each phase's seconds. Every agent's record of a step repeats the step's timings, so a phase's
/// value is the largest among the step's records (a record that lacks it does not count).
pub fn step_times(run: &Run) -> BTreeMap<u64, StepTimes> {
    let mut out: BTreeMap<u64, StepTimes> = BTreeMap::new();
    for r in &run.metrics {
        let t = out.entry(r.step).or_default();
        for (slot, v) in t.iter_mut().zip([r.rollout_s, r.coach_s, r.train_s]) {
            *slot = match (*slot, v) {
                (Some(a), Some(b)) => Some(a.max(b)),
                (a, b) => a.or(b),
            };
        }
    }
    out
}

/// Stacked areas: rollout at the bottom, then coach, then train; a series' value is the running total, and
/// the top layer comes first so the lower ones are drawn over it. A step with no timing at all is a gap.
fn time_chart(run: &Run) -> Chart {
    let times = step_times(run);
    let series = (0..PHASES.len())
        .rev()
        .map(|layer| {
            let points = times
                .iter()
                .map(|(&step, t)| {
                    let total = t.iter().any(Option::is_some).then(|| t[..=layer].iter().flatten().sum::<f64>());
                    (step, total)
                })
                .collect();
            Series { label: PHASES[layer].into(), color: color(layer), stroke: Stroke::Filled, points }
        })
        .collect();
    Chart {
        file: "time.svg".into(),
        title: "Time per step (stacked)".into(),
        y_desc: "seconds".into(),
        series,
        bands: Vec::new(),
    }
}
