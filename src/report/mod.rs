//! `mappa report RUN_DIR`: curves and a one-page HTML summary of a training run.
//!
//! A run directory is a pile of JSON lines; this turns it into the pictures that say whether training
//! works (reward, eval accuracy, KL, response length, ...) without Python or a plotting service, and on a
//! machine without fonts (CI). It reads what the training loop writes:
//! - `metrics.jsonl` (required): one record per rollout step and agent;
//! - `eval.jsonl` (optional): one record per evaluation of a dataset;
//! - `config.toml` (optional): `[run] name` and the `[[agents]]` order (which also fixes each agent's color);
//! - `checkpoints/step-NNNNNN/` (optional): the steps with a checkpoint.
//!
//! and writes `RUN_DIR/report/`: one SVG per chart and `index.html` with the summary tables and the charts.
//! Rules: a missing or null field is a gap in its curve; a chart with no value at all is not written; a
//! truncated last line (a run killed mid-write) is skipped with a warning while any other bad line is an
//! error naming the file and line; every string from the run is escaped in HTML and SVG. Rollout, coach and
//! train seconds are per step (each agent's record repeats them), so a step counts the largest of its records.
//!
//! Files: `data.rs` reads the directory, `charts.rs` chooses the curves, `draw.rs` draws them with plotters'
//! SVG backend, `html.rs` writes the page.
use anyhow::{bail, Context, Result};
use std::fs;
use std::path::{Path, PathBuf};

mod charts;
mod data;
mod draw;
mod html;

#[derive(clap::Args, Debug)]
pub struct ReportArgs {
    /// The training run's directory (the one holding metrics.jsonl).
    pub run_dir: PathBuf,
}

/// Writes the report and prints the absolute path of its `index.html` (the last line on stdout).
pub fn run(a: ReportArgs) -> Result<()> {
    let index = write_report(&a.run_dir)?;
    println!("{}", index.display());
    Ok(())
}

/// Writes `run_dir/report/` (the SVGs, then `index.html`) and returns the absolute path of `index.html`.
pub fn write_report(run_dir: &Path) -> Result<PathBuf> {
    if !run_dir.is_dir() {
        bail!("run directory {} does not exist", run_dir.display());
    }
    let run = data::Run::load(run_dir)?;
    let out = run_dir.join("report");
    fs::create_dir_all(&out).with_context(|| format!("creating {}", out.display()))?;
    let charts = charts::all(&run);
    for chart in &charts {
        let path = out.join(&chart.file);
        let svg = draw::svg(chart).with_context(|| format!("drawing {}", path.display()))?;
        fs::write(&path, svg).with_context(|| format!("writing {}", path.display()))?;
    }
    let abs_dir = fs::canonicalize(run_dir).with_context(|| format!("resolving {}", run_dir.display()))?;
    let index = abs_dir.join("report").join("index.html");
    fs::write(&index, html::page(&run, &abs_dir, &charts)).with_context(|| format!("writing {}", index.display()))?;
    Ok(index)
}

/// A number for a label or a table cell: at most 4 significant digits, no trailing zeros, scientific
/// notation for very large or very small magnitudes (learning rates).
fn fmt_num(v: f64) -> String {
    if v == 0.0 {
        return "0".into();
    }
    if !v.is_finite() {
        return v.to_string();
    }
    let a = v.abs();
    if !(1e-3..1e5).contains(&a) {
        let s = format!("{v:.3e}");
        return match s.split_once('e') {
            Some((mantissa, exp)) => format!("{}e{exp}", trim_zeros(mantissa)),
            None => s,
        };
    }
    let decimals = (3 - a.log10().floor() as i32).clamp(0, 4) as usize;
    trim_zeros(&format!("{v:.decimals$}")).to_string()
}

/// `1.2500` → `1.25`, `3.000` → `3`; integers are left alone.
fn trim_zeros(s: &str) -> &str {
    if s.contains('.') {
        s.trim_end_matches('0').trim_end_matches('.')
    } else {
        s
    }
}

#[cfg(test)]
mod tests {
    use super::fmt_num;

    #[test]
    fn numbers_are_short() {
        assert_eq!(fmt_num(7.25), "7.25");
        assert_eq!(fmt_num(0.0), "0");
        assert_eq!(fmt_num(1e-6), "1e-6");
        assert_eq!(fmt_num(9.25e-7), "9.25e-7");
        assert_eq!(fmt_num(0.30000000000000004), "0.3");
        assert_eq!(fmt_num(1234.56), "1235");
        assert_eq!(fmt_num(-0.05), "-0.05");
        assert_eq!(fmt_num(250000.0), "2.5e5");
    }
}
