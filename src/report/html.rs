//! `index.html`: the summary tables and the charts (`<img>` of the SVGs next to it). Every string that comes
//! from the run (names of the run, agents and datasets; the directory) goes through [`escape`].
use super::charts::{step_times, Chart, PHASES};
use super::data::{EvalRow, Run};
use super::fmt_num;
use std::fmt::Write;
use std::path::Path;

const STYLE: &str = "body{font-family:sans-serif;margin:2em auto;max-width:960px;color:#222}\
table{border-collapse:collapse;margin:0.5em 0 1.5em}th,td{border:1px solid #ccc;padding:4px 10px;text-align:left}\
th{background:#f3f3f3}td.num{text-align:right;font-variant-numeric:tabular-nums}figure{margin:1em 0}\
img{max-width:100%;height:auto}";

/// The whole page for `run`, whose directory is `run_dir`, showing `charts` (already written to SVG files).
pub fn page(run: &Run, run_dir: &Path, charts: &[Chart]) -> String {
    let name = escape(&run.name);
    let mut h = format!(
        "<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n<title>mappa report: {name}</title>\n\
         <style>{STYLE}</style>\n</head>\n<body>\n<h1>{name}</h1>\n"
    );
    summary_table(&mut h, run, run_dir);
    reward_table(&mut h, run);
    eval_table(&mut h, run);
    chart_list(&mut h, charts);
    h.push_str("</body>\n</html>\n");
    h
}

/// Escapes `&`, `<`, `>`, `"` and `'` for HTML text and attribute values.
pub fn escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

fn summary_table(h: &mut String, run: &Run, run_dir: &Path) {
    let steps = step_times(run);
    let steps_done = match steps.keys().next_back() {
        Some(last) => format!("{} (last step {last})", steps.len()),
        None => "none yet".into(),
    };
    let checkpoints = if run.checkpoints.is_empty() {
        "none".to_string()
    } else {
        let list: Vec<String> = run.checkpoints.iter().map(u64::to_string).collect();
        format!("steps {}", list.join(", "))
    };
    h.push_str("<table class=\"summary\">\n");
    row(h, "Run", &escape(&run.name));
    row(h, "Run directory", &escape(&run_dir.display().to_string()));
    if let Some(rewards) = &run.rewards {
        row(h, "Rewards", &escape(rewards));
    }
    row(h, "Steps done", &steps_done);
    row(h, "Time (all steps)", &total_times(run));
    row(h, "Checkpoints", &checkpoints);
    h.push_str("</table>\n");
}

fn row(h: &mut String, key: &str, value: &str) {
    let _ = writeln!(h, "<tr><th>{key}</th><td>{value}</td></tr>");
}

/// Seconds summed over steps for each phase, e.g. `rollout 30 s, coach 9 s, train 60 s (total 99 s)`.
fn total_times(run: &Run) -> String {
    let mut totals = [None::<f64>; 3];
    for t in step_times(run).values() {
        for (total, v) in totals.iter_mut().zip(t) {
            if let Some(v) = v {
                *total = Some(total.unwrap_or(0.0) + v);
            }
        }
    }
    if totals.iter().all(Option::is_none) {
        return "not recorded".into();
    }
    let parts: Vec<String> = PHASES
        .iter()
        .zip(totals)
        .map(|(phase, t)| format!("{phase} {}", t.map_or("n/a".to_string(), |t| format!("{} s", fmt_num(t)))))
        .collect();
    let sum: f64 = totals.iter().flatten().sum();
    format!("{} (total {} s)", parts.join(", "), fmt_num(sum))
}

/// Per agent: the latest step with a reward, its mean and standard deviation.
fn reward_table(h: &mut String, run: &Run) {
    let mut rows = String::new();
    for agent in &run.agents {
        let last = run.rows_of(agent).filter(|r| r.reward_mean.is_some()).max_by_key(|r| r.step);
        if let Some(r) = last {
            let _ = writeln!(
                rows,
                "<tr><td>{}</td><td class=\"num\">{}</td><td class=\"num\">{}</td><td class=\"num\">{}</td></tr>",
                escape(agent),
                r.step,
                opt_num(r.reward_mean),
                opt_num(r.reward_std)
            );
        }
    }
    if rows.is_empty() {
        return;
    }
    h.push_str("<h2>Last-step reward</h2>\n<table class=\"rewards\">\n");
    h.push_str("<tr><th>Agent</th><th>Step</th><th>Reward mean</th><th>Reward std</th></tr>\n");
    h.push_str(&rows);
    h.push_str("</table>\n");
}

/// Per dataset: best and last avg@k and pass@k, each with its standard error and step.
fn eval_table(h: &mut String, run: &Run) {
    let datasets = run.datasets();
    if datasets.is_empty() {
        return;
    }
    h.push_str("<h2>Evaluation</h2>\n<table class=\"evals\">\n<tr><th>Dataset</th><th>k</th><th>Evaluations</th>");
    h.push_str("<th>Best avg@k</th><th>Last avg@k</th><th>Best pass@k</th><th>Last pass@k</th></tr>\n");
    for dataset in datasets {
        let rows: Vec<&EvalRow> = run.evals_of(dataset).collect();
        let k = rows.iter().rev().find_map(|e| e.k).map_or("?".to_string(), |k| k.to_string());
        let avg = |e: &EvalRow| e.avg_at_k.map(|v| (v, e.avg_at_k_se));
        let pass = |e: &EvalRow| e.pass_at_k.map(|v| (v, e.pass_at_k_se));
        let _ = write!(
            h,
            "<tr><td>{}</td><td class=\"num\">{k}</td><td class=\"num\">{}</td>",
            escape(dataset),
            rows.len()
        );
        for cell in [best(&rows, avg), last(&rows, avg), best(&rows, pass), last(&rows, pass)] {
            let _ = write!(h, "<td class=\"num\">{cell}</td>");
        }
        h.push_str("</tr>\n");
    }
    h.push_str("</table>\n");
}

type Stat = fn(&EvalRow) -> Option<(f64, Option<f64>)>;

/// The highest value (the earliest such evaluation on a tie), as `value ± se (step s)`.
fn best(rows: &[&EvalRow], stat: Stat) -> String {
    let mut top: Option<(u64, (f64, Option<f64>))> = None;
    for e in rows {
        if let Some(s) = stat(e) {
            if top.is_none_or(|(_, t)| s.0 > t.0) {
                top = Some((e.step, s));
            }
        }
    }
    stat_cell(top)
}

/// The value at the latest step that has one (the later record on a tie).
fn last(rows: &[&EvalRow], stat: Stat) -> String {
    stat_cell(rows.iter().filter_map(|e| Some((e.step, stat(e)?))).max_by_key(|&(step, _)| step))
}

fn stat_cell(stat: Option<(u64, (f64, Option<f64>))>) -> String {
    match stat {
        Some((step, (v, Some(se)))) => format!("{} ± {} (step {step})", fmt_num(v), fmt_num(se)),
        Some((step, (v, None))) => format!("{} (step {step})", fmt_num(v)),
        None => "n/a".into(),
    }
}

fn opt_num(v: Option<f64>) -> String {
    v.map_or("n/a".to_string(), fmt_num)
}

fn chart_list(h: &mut String, charts: &[Chart]) {
    if charts.is_empty() {
        h.push_str("<p>No chart: the run has no values to plot yet.</p>\n");
        return;
    }
    h.push_str("<h2>Charts</h2>\n");
    for c in charts {
        let _ = writeln!(h, "<figure><img src=\"{}\" alt=\"{}\"></figure>", escape(&c.file), escape(&c.title));
    }
}
