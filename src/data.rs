//! Task data: loading JSON Lines task files, the training selection, and the per-step task sampler.
//!
//! - [`load_tasks`] reads one JSONL file ([`parse_tasks`] its text) with [`DataConfig`]'s field names (dotted
//!   paths into each record): the id (`id_field`, else the 1-based line number), the task text (`task_field`,
//!   a string) and the answers (the first present of `answer_fields`; a string, a number, or an array of
//!   them: alternatives that all count as correct). Blank lines are skipped. Every problem (unreadable file,
//!   bad JSON, a missing or mistyped field, a duplicate id, no tasks at all) is an error naming the file and
//!   line.
//! - [`train_split`]: the first `holdout_fraction` of the file (rounded down: 3 % of 933 = 27, MAPPA's
//!   internal eval split) is held out as the eval set [`HOLDOUT_NAME`] and never trained on; then
//!   `train_sample` tasks are drawn from the rest with the run seed (kept in file order).
//! - [`TaskSampler`] gives `prompts_per_step` task indices per rollout step as a pure function of
//!   (seed, step), so a resumed run draws exactly the tasks the interrupted one would have. Steps walk
//!   through a shuffled pass over all tasks; each pass (epoch) has its own shuffle.
use crate::dsbench::{load_task_infos, TaskInfo};
use crate::run_config::DataConfig;
use anyhow::{bail, Context, Result};
use rand::seq::SliceRandom;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use serde_json::Value;
use std::collections::HashMap;
use std::path::Path;

/// Name of the eval set made of the held-out head of the train file.
pub const HOLDOUT_NAME: &str = "train-holdout";

/// One task: what the agents are asked and what counts as a correct answer.
#[derive(Clone, Debug, PartialEq)]
pub struct Task {
    pub id: String,
    /// The task text (the `task` prompt variable).
    pub text: String,
    /// Accepted answers; any one matching counts as correct.
    pub answers: Vec<String>,
    /// The whole JSON record (the `record` prompt variable).
    pub record: Value,
    /// The task's DSBench definition (metric, id and target columns) when `data.task_info` is set: its
    /// episodes are then graded on the `submission.csv` they leave, not on a text answer.
    pub info: Option<TaskInfo>,
}

/// The value at a dotted path (`metadata.task_id`) in a JSON record.
pub fn field<'a>(record: &'a Value, path: &str) -> Option<&'a Value> {
    path.split('.').try_fold(record, |v, key| v.get(key))
}

/// Loads every task of a JSON Lines file, each with its entry of `data.task_info` when that is set.
pub fn load_tasks(path: &Path, cfg: &DataConfig) -> Result<Vec<Task>> {
    let text = std::fs::read_to_string(path).with_context(|| format!("reading task file {}", path.display()))?;
    let mut tasks = parse_tasks(&text, &path.display().to_string(), cfg)?;
    if let Some(info_path) = &cfg.task_info {
        let mut infos = load_task_infos(info_path)?;
        for task in &mut tasks {
            let Some(info) = infos.remove(&task.id) else {
                bail!("{}: task `{}` has no entry in data.task_info ({})", path.display(), task.id, info_path.display())
            };
            task.info = Some(info);
        }
    }
    Ok(tasks)
}

/// Every task of JSON Lines `text`; errors start with `source` (the file name) and the line number.
pub fn parse_tasks(text: &str, source: &str, cfg: &DataConfig) -> Result<Vec<Task>> {
    let mut tasks = Vec::new();
    let mut first_line_of: HashMap<String, usize> = HashMap::new();
    for (i, line) in text.lines().enumerate() {
        let line_no = i + 1;
        if line.trim().is_empty() {
            continue;
        }
        let task = parse_task(line, line_no, cfg).with_context(|| format!("{source}:{line_no}"))?;
        if let Some(first) = first_line_of.insert(task.id.clone(), line_no) {
            bail!("{source}:{line_no}: duplicate task id `{}` (first on line {first})", task.id);
        }
        tasks.push(task);
    }
    if tasks.is_empty() {
        bail!("{source}: no tasks in the file");
    }
    Ok(tasks)
}

fn parse_task(line: &str, line_no: usize, cfg: &DataConfig) -> Result<Task> {
    let record: Value = serde_json::from_str(line).context("invalid JSON")?;
    if !record.is_object() {
        bail!("the record is not a JSON object");
    }
    let id = match field(&record, &cfg.id_field) {
        None | Some(Value::Null) => line_no.to_string(),
        Some(v) => scalar_text(v).with_context(|| format!("id field `{}`", cfg.id_field))?,
    };
    let text = match field(&record, &cfg.task_field) {
        Some(Value::String(s)) => s.clone(),
        Some(_) => bail!("task field `{}` is not a string", cfg.task_field),
        None => bail!("missing task field `{}`", cfg.task_field),
    };
    let Some((name, value)) =
        cfg.answer_fields.iter().find_map(|f| field(&record, f).filter(|v| !v.is_null()).map(|v| (f, v)))
    else {
        bail!("missing answer field (looked for {})", cfg.answer_fields.join(", "));
    };
    let answers = match value {
        Value::Array(items) => items.iter().map(scalar_text).collect::<Result<Vec<_>>>(),
        v => scalar_text(v).map(|s| vec![s]),
    }
    .with_context(|| format!("answer field `{name}`"))?;
    if answers.is_empty() {
        bail!("answer field `{name}` is an empty list");
    }
    Ok(Task { id, text, answers, record, info: None })
}

/// A string or number as text.
fn scalar_text(v: &Value) -> Result<String> {
    match v {
        Value::String(s) => Ok(s.clone()),
        Value::Number(n) => Ok(n.to_string()),
        other => bail!("expected a string or a number, found {other}"),
    }
}

/// The train file split into what is trained on and the held-out head.
#[derive(Clone, Debug, PartialEq)]
pub struct TrainSplit {
    pub train: Vec<Task>,
    /// The first `holdout_fraction` of the file: the [`HOLDOUT_NAME`] eval set (may be empty).
    pub holdout: Vec<Task>,
}

/// Holds out the head of `tasks`, then draws `train_sample` of the rest with `seed`.
pub fn train_split(mut tasks: Vec<Task>, cfg: &DataConfig, seed: u64) -> Result<TrainSplit> {
    if !(0.0..1.0).contains(&cfg.holdout_fraction) {
        bail!("data.holdout_fraction must be in [0, 1), got {}", cfg.holdout_fraction);
    }
    let n_holdout = (cfg.holdout_fraction * tasks.len() as f64).floor() as usize;
    let rest = tasks.split_off(n_holdout);
    let train = match cfg.train_sample {
        None => rest,
        Some(n) if n == 0 || n > rest.len() => {
            bail!("data.train_sample is {n}, but {} tasks remain after the holdout", rest.len())
        }
        Some(n) => {
            let mut picked: Vec<usize> = (0..rest.len()).collect();
            picked.shuffle(&mut ChaCha8Rng::seed_from_u64(seed));
            picked.truncate(n);
            picked.sort_unstable();
            let mut keep = vec![false; rest.len()];
            picked.iter().for_each(|&i| keep[i] = true);
            rest.into_iter().zip(keep).filter(|(_, k)| *k).map(|(t, _)| t).collect()
        }
    };
    Ok(TrainSplit { train, holdout: tasks })
}

/// Deterministic task schedule: step `s` gets positions `s*per_step .. (s+1)*per_step` of an endless
/// sequence of shuffled passes over the tasks (pass `e` shuffled with a seed derived from `(seed, e)`).
#[derive(Clone, Debug)]
pub struct TaskSampler {
    tasks: usize,
    per_step: usize,
    seed: u64,
}

impl TaskSampler {
    pub fn new(tasks: usize, per_step: usize, seed: u64) -> Result<TaskSampler> {
        if tasks == 0 || per_step == 0 {
            bail!("task sampler needs at least one task and one task per step (got {tasks} and {per_step})");
        }
        Ok(TaskSampler { tasks, per_step, seed })
    }

    /// Indices into the task list for rollout step `step` (0-based).
    pub fn step(&self, step: u64) -> Vec<usize> {
        let n = self.tasks as u128;
        let mut pos = step as u128 * self.per_step as u128;
        let end = pos + self.per_step as u128;
        let mut out = Vec::with_capacity(self.per_step);
        while pos < end {
            let order = self.epoch_order((pos / n) as u64);
            let from = (pos % n) as usize;
            let to = (from as u128 + (end - pos)).min(n) as usize;
            out.extend_from_slice(&order[from..to]);
            pos += (to - from) as u128;
        }
        out
    }

    /// The task order of one pass.
    fn epoch_order(&self, epoch: u64) -> Vec<usize> {
        let mut order: Vec<usize> = (0..self.tasks).collect();
        order.shuffle(&mut ChaCha8Rng::seed_from_u64(derive_seed(&[self.seed, epoch])));
        order
    }
}

/// A well-mixed 64-bit seed from several parts (SplitMix64 over the parts in order): seeds for
/// sub-streams (an epoch, an episode's agent turn) that do not depend on how much was drawn before.
pub fn derive_seed(parts: &[u64]) -> u64 {
    parts.iter().fold(0x6A09_E667_F3BC_C908, |h, &p| splitmix64(h ^ splitmix64(p)))
}

fn splitmix64(x: u64) -> u64 {
    let mut z = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}
