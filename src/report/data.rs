//! Reading a run directory: `metrics.jsonl`, `eval.jsonl`, `config.toml` and `checkpoints/`.
//!
//! Only the fields the report draws are read; unknown fields are ignored and a missing or null field is a
//! gap (`None`). A record repeated for the same step (a resumed run) replaces the earlier one when curves
//! are built (see `charts.rs`).
use anyhow::{Context, Result};
use serde::de::DeserializeOwned;
use serde::Deserialize;
use std::collections::BTreeMap;
use std::fs;
use std::path::Path;

/// One `metrics.jsonl` record: one rollout step of one agent.
#[derive(Debug, Deserialize)]
pub struct MetricRow {
    pub step: u64,
    pub agent: String,
    pub reward_mean: Option<f64>,
    pub reward_std: Option<f64>,
    pub response_len_mean: Option<f64>,
    pub tool_call_rate: Option<f64>,
    pub kl: Option<f64>,
    pub clip_frac: Option<f64>,
    pub grad_norm: Option<f64>,
    pub lr: Option<f64>,
    pub rollout_s: Option<f64>,
    pub coach_s: Option<f64>,
    pub train_s: Option<f64>,
}

/// One `eval.jsonl` record: one evaluation of one dataset.
#[derive(Debug, Deserialize)]
pub struct EvalRow {
    pub step: u64,
    pub dataset: String,
    pub k: Option<u64>,
    pub avg_at_k: Option<f64>,
    pub avg_at_k_se: Option<f64>,
    pub pass_at_k: Option<f64>,
    pub pass_at_k_se: Option<f64>,
    pub agents: Option<BTreeMap<String, EvalAgent>>,
}

/// Per-agent statistics of one evaluation.
#[derive(Debug, Deserialize)]
pub struct EvalAgent {
    pub response_len_mean: Option<f64>,
}

/// Everything the report shows about one run.
#[derive(Debug)]
pub struct Run {
    /// `[run] name` from `config.toml`, else the directory's name.
    pub name: String,
    /// Agents with data, in pipeline order (`config.toml`), then any others in order of appearance.
    pub agents: Vec<String>,
    /// Where the rewards came from ([`crate::run_config::RunConfig::reward_label`]), when the config reads.
    pub rewards: Option<String>,
    pub metrics: Vec<MetricRow>,
    pub evals: Vec<EvalRow>,
    /// Steps of the `checkpoints/step-NNNNNN` directories, ascending.
    pub checkpoints: Vec<u64>,
}

impl Run {
    /// Reads `run_dir`; errors when `metrics.jsonl` is missing or has a malformed line.
    pub fn load(run_dir: &Path) -> Result<Run> {
        let metrics_path = run_dir.join("metrics.jsonl");
        if !metrics_path.is_file() {
            anyhow::bail!("{} not found: is {} a training run directory?", metrics_path.display(), run_dir.display());
        }
        let metrics: Vec<MetricRow> = read_jsonl(&metrics_path)?;
        let eval_path = run_dir.join("eval.jsonl");
        let evals: Vec<EvalRow> = if eval_path.is_file() { read_jsonl(&eval_path)? } else { Vec::new() };
        let (config_name, config_agents, rewards) = read_config(&run_dir.join("config.toml"));
        let name = config_name.unwrap_or_else(|| dir_name(run_dir));
        let agents = agent_order(&config_agents, &metrics, &evals);
        let checkpoints = checkpoint_steps(&run_dir.join("checkpoints"))?;
        Ok(Run { name, agents, rewards, metrics, evals, checkpoints })
    }

    /// This agent's metric records, in file order.
    pub fn rows_of<'a>(&'a self, agent: &'a str) -> impl Iterator<Item = &'a MetricRow> + 'a {
        self.metrics.iter().filter(move |r| r.agent == agent)
    }

    /// Dataset names in order of first appearance in `eval.jsonl`.
    pub fn datasets(&self) -> Vec<&str> {
        let mut out: Vec<&str> = Vec::new();
        for e in &self.evals {
            if !out.contains(&e.dataset.as_str()) {
                out.push(&e.dataset);
            }
        }
        out
    }

    /// This dataset's evaluations, in file order.
    pub fn evals_of<'a>(&'a self, dataset: &'a str) -> impl Iterator<Item = &'a EvalRow> + 'a {
        self.evals.iter().filter(move |e| e.dataset == dataset)
    }
}

/// Parses one JSON object per non-blank line. A last line cut off mid-object (a run killed mid-write) is
/// skipped with a warning; any other bad line is an error naming the file and the 1-based line number.
fn read_jsonl<T: DeserializeOwned>(path: &Path) -> Result<Vec<T>> {
    let text = fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let lines: Vec<(usize, &str)> =
        text.lines().enumerate().map(|(i, l)| (i + 1, l)).filter(|(_, l)| !l.trim().is_empty()).collect();
    let last = lines.last().map(|&(n, _)| n);
    let mut rows = Vec::with_capacity(lines.len());
    for (n, line) in lines {
        match serde_json::from_str::<T>(line) {
            Ok(row) => rows.push(row),
            Err(e) if e.is_eof() && Some(n) == last => {
                eprintln!("warning: {} line {n}: skipping the truncated last line ({e})", path.display())
            }
            Err(e) => return Err(e).with_context(|| format!("{} line {n}", path.display())),
        }
    }
    Ok(rows)
}

/// `[run] name` and the `[[agents]]` names from the resolved config. The report works without them, so a
/// file that cannot be read counts as absent and one that does not parse is only a warning.
fn read_config(path: &Path) -> (Option<String>, Vec<String>, Option<String>) {
    let Ok(text) = fs::read_to_string(path) else { return (None, Vec::new(), None) };
    let table: toml::Table = match toml::from_str(&text) {
        Ok(t) => t,
        Err(e) => {
            eprintln!("warning: {}: {e}; using the directory name and the agents in metrics.jsonl", path.display());
            return (None, Vec::new(), None);
        }
    };
    let rewards =
        crate::run_config::RunConfig::from_toml_str(&text, &path.display().to_string()).ok().map(|c| c.reward_label());
    let name = table.get("run").and_then(|r| r.get("name")).and_then(|n| n.as_str()).map(str::to_owned);
    let agents = table
        .get("agents")
        .and_then(|a| a.as_array())
        .map(|list| list.iter().filter_map(|a| a.get("name")?.as_str().map(str::to_owned)).collect())
        .unwrap_or_default();
    (name, agents, rewards)
}

fn dir_name(run_dir: &Path) -> String {
    let abs = fs::canonicalize(run_dir).unwrap_or_else(|_| run_dir.to_path_buf());
    abs.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_else(|| abs.display().to_string())
}

/// Config agents that have data, in config order, then the rest in order of first appearance.
fn agent_order(config_agents: &[String], metrics: &[MetricRow], evals: &[EvalRow]) -> Vec<String> {
    let seen = metrics.iter().map(|r| r.agent.as_str()).chain(evals.iter().flat_map(eval_agent_names));
    let mut seen_order: Vec<&str> = Vec::new();
    for a in seen {
        if !seen_order.contains(&a) {
            seen_order.push(a);
        }
    }
    let mut out: Vec<String> = config_agents.iter().filter(|a| seen_order.contains(&a.as_str())).cloned().collect();
    for a in seen_order {
        if !out.iter().any(|o| o == a) {
            out.push(a.to_owned());
        }
    }
    out
}

fn eval_agent_names(e: &EvalRow) -> impl Iterator<Item = &str> {
    e.agents.iter().flat_map(|m| m.keys().map(String::as_str))
}

/// Steps of the `step-NNNNNN` directories under `dir`; none when `dir` does not exist.
fn checkpoint_steps(dir: &Path) -> Result<Vec<u64>> {
    if !dir.is_dir() {
        return Ok(Vec::new());
    }
    let mut steps = Vec::new();
    for entry in fs::read_dir(dir).with_context(|| format!("listing {}", dir.display()))? {
        let entry = entry.with_context(|| format!("listing {}", dir.display()))?;
        let name = entry.file_name();
        let step = name.to_str().and_then(|n| n.strip_prefix("step-")).and_then(|s| s.parse::<u64>().ok());
        if let (Some(step), true) = (step, entry.path().is_dir()) {
            steps.push(step);
        }
    }
    steps.sort_unstable();
    Ok(steps)
}
