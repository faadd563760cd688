//! `mappa train`: the MAPPA loop (paper notes §2.6). Per rollout step:
//!
//! 1. rollouts: the step's tasks x `samples_per_prompt` episodes of the whole pipeline, every agent on its own
//!    weights (`rollout::run_episodes`, batched per agent turn);
//! 2. coach: every action of every episode scored 0-10, as soon as it is complete, while the rollout goes on
//!    (`coach.concurrency` calls in flight; [`rollout_and_score`]); an unscored action is left out of training
//!    and counted; the reward is score / 10;
//! 3. training: per agent, its scored actions become samples of exactly the context it saw plus its tokens,
//!    and its `Trainer` takes the REINFORCE++ step against the frozen reference;
//! 4. one `metrics.jsonl` line per agent; evaluation every `eval_every` steps (`eval.jsonl`); checkpoints
//!    every `checkpoint_every` steps and at the end.
//!
//! Nothing is lost without a word: actions the coach could not score and actions never generated (a
//! context past `rl.max_prompt_tokens`) are counted in the metrics and said on stderr with their first
//! reason (so are tool runs the sandbox failed on the host, which the agents saw as tool errors), and a run
//! fails (an error naming the cause) after `run.max_untrained_steps` consecutive steps that trained no agent,
//! or at its end if it trained nothing at all.
//!
//! Everything random derives from `run.seed` and the step, so `--resume` from a checkpoint repeats the
//! following steps exactly (timings aside). The run directory holds the resolved `config.toml`, the
//! metrics, the coach log and the checkpoints; `mappa report` draws it.
pub mod checkpoint;
mod memory;
mod metrics;
mod setup;

pub use memory::{available_memory, MemoryEstimate};
pub use metrics::StepMetrics;
pub use setup::MICRO_BATCH_TOKENS;
pub use setup::{build_coach, Bases, Open};

use crate::coach::{Coach, CoachOutcome};
use crate::data::{derive_seed, Task, TaskSampler};
use crate::eval::{correct_by_problem, summarize};
use crate::rollout::{coach_request, run_episodes, Episode, Generator, Phase};
use crate::run_config::RunConfig;
use crate::tokenizer::Tokenizer;
use crate::trainer::{Sample, SampleGroup, Trainer};
use anyhow::{ensure, Context, Result};
use indicatif::{ProgressBar, ProgressStyle};
use std::path::{Path, PathBuf};
use std::time::Instant;

/// The small offline DSBench preset ([`Run::dsbench_quick`]), and what it changes in presets/dsbench.toml.
pub const DSBENCH_QUICK: &str = "dsbench-quick";
const DSBENCH_QUICK_SETTINGS: [&str; 13] = [
    "run.name=\"dsbench-quick\"",
    "run.steps=2",
    "run.backend=\"cpu\"",
    "coach.backend=\"rule\"",
    "coach.rule=\"artifacts\"",
    "rl.prompts_per_step=2",
    "rl.samples_per_prompt=2",
    "rl.samples_per_optimizer_step=4",
    "rl.max_new_tokens=192",
    "rl.eval_samples_per_prompt=2",
    // SmolLM2 is often cut off at 192 tokens; masked, such actions would never train (LEARNING.md's pilot).
    "rl.mask_truncated=false",
    "rl.eval_every=2",
    "rl.checkpoint_every=2",
];

/// One line per evaluated problem: dataset, step, task id and each sample's correctness.
pub const EVAL_PROBLEMS: &str = "eval_problems.jsonl";
/// One line per eval set and evaluation, written when the evaluation is done.
pub const EVAL_SUMMARIES: &str = "eval.jsonl";

/// The eval sets that `run_dir`'s `eval.jsonl` has a finished evaluation of at `step`.
pub(crate) fn evaluated_sets(run_dir: &Path, step: u64) -> Result<std::collections::HashSet<String>> {
    let path = run_dir.join(EVAL_SUMMARIES);
    let Ok(text) = std::fs::read_to_string(&path) else { return Ok(Default::default()) };
    let lines = text.lines().filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok());
    Ok(lines
        .filter(|v| v["step"].as_u64() == Some(step))
        .filter_map(|v| v["dataset"].as_str().map(String::from))
        .collect())
}

/// Everything a run holds in memory.
pub struct Run {
    pub cfg: RunConfig,
    pub dir: PathBuf,
    /// Each agent's base model (config and tokenizer files, weights dropped: written beside checkpoints) and
    /// tokenizer.
    bases: Bases,
    pub agents: Vec<Trainer>,
    /// The frozen reference of each base model (`bases.models`).
    references: Vec<Box<dyn crate::model::Model>>,
    /// None for the outcome-only baseline (`rl.reward = "outcome"`).
    coach: Option<Coach>,
    train: Vec<Task>,
    eval_sets: Vec<(String, Vec<Task>)>,
    sampler: TaskSampler,
    /// Rollout steps done.
    pub step: u64,
    /// Consecutive steps, up to the last, that trained no agent.
    untrained_streak: u64,
    /// What the last step lost: unscored and skipped actions.
    losses: Losses,
    /// The run directory's lock, held while this `Run` lives.
    _lock: std::fs::File,
}

impl Run {
    /// A new run in `cfg.run_dir()` (which must not hold a run already), or an existing run from its newest
    /// checkpoint (see `Open`).
    pub fn open(how: Open) -> Result<Run> {
        setup::open(how)
    }

    /// The README's main job: `presets/quickstart.toml` with the SmolLM2 model tools/setup.sh installs as
    /// agents, generated arithmetic problems (`mappa tasks`' defaults and seed 0: 200 to train on, 24 to
    /// evaluate), the rule-based process coach, and a fresh timestamped run directory.
    pub fn quickstart() -> Result<RunConfig> {
        let home = crate::loader::setup_home().context("HOME or MAPPA_HOME must be set")?;
        let model = home.join(crate::loader::SMOLLM2_GGUF);
        ensure!(model.is_file(), "{} is missing: run `bash tools/setup.sh` first", model.display());
        let tasks = crate::arith::ArithConfig {
            seed: 0,
            min_steps: crate::arith::DEFAULT_MIN_STEPS,
            max_steps: crate::arith::DEFAULT_MAX_STEPS,
            magnitude: crate::arith::DEFAULT_MAGNITUDE,
        };
        let written = tasks.write_splits(&home.join("data/arith-quickstart"), [24, 0, 200])?;
        let mut cfg = RunConfig::from_toml_str(include_str!("../presets/quickstart.toml"), "presets/quickstart.toml")?;
        cfg.run.base_model = Some(model);
        (cfg.data.eval, cfg.data.train) = (vec![written[0].0.clone()], written[2].0.clone());
        let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs());
        cfg.run.dir = Some(Path::new("runs").join(format!("quickstart-{now}")));
        Ok(cfg)
    }

    /// A built-in configuration: [`RunConfig::preset`]'s, the DSBench ones with the Python tool run by the
    /// data-science environment tools/setup.sh installs, or `dsbench-quick` ([`Run::dsbench_quick`]).
    pub fn preset(name: &str) -> Result<RunConfig> {
        if name == DSBENCH_QUICK {
            return Run::dsbench_quick();
        }
        let mut cfg = RunConfig::preset(name)?;
        if cfg.sandbox.requires.iter().any(|m| m == "sklearn") {
            let home = crate::loader::setup_home().context("HOME or MAPPA_HOME must be set")?;
            cfg.sandbox.python = home.join(crate::loader::PY_DS);
        }
        Ok(cfg)
    }

    /// Every name [`Run::preset`] knows.
    pub fn preset_names() -> Vec<&'static str> {
        let mut names = RunConfig::preset_names();
        names.push(DSBENCH_QUICK);
        names
    }

    /// `dsbench-quick`: the DSBench pipeline (Data Engineer -> Modeler -> Analyst, presets/dsbench.toml) offline
    /// and small: SmolLM2 agents, the rule-based artifacts coach, and generated tabular tasks
    /// (`dsbench::write_tasks`, seed 0: 12 to train on, 3 to evaluate), two steps of 2 tasks x 2
    /// samples, at most two actions an agent, evaluated before and after with two samples a task. It finishes in
    /// minutes on two cores (BENCHMARKS.md).
    pub fn dsbench_quick() -> Result<RunConfig> {
        let home = crate::loader::setup_home().context("HOME or MAPPA_HOME must be set")?;
        let model = home.join(crate::loader::SMOLLM2_GGUF);
        ensure!(model.is_file(), "{} is missing: run `bash tools/setup.sh` first", model.display());
        let synth = crate::dsbench::TabularConfig { eval_tasks: 3, ..Default::default() };
        let tasks = crate::dsbench::write_tasks(&synth, &home.join("data/dsbench-quick"))?;
        let mut cfg = Run::preset("dsbench")?;
        cfg.run.base_model = Some(model);
        cfg.agents.iter_mut().for_each(|a| a.max_actions = 2);
        (cfg.data.train, cfg.data.eval) = (tasks.train, vec![tasks.eval]);
        (cfg.data.task_info, cfg.data.files_root) = (Some(tasks.info), tasks.files_root);
        let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs());
        cfg.run.dir = Some(Path::new("runs").join(format!("dsbench-quick-{now}")));
        cfg.with_overrides(&DSBENCH_QUICK_SETTINGS.map(String::from))
    }

    /// Runs the remaining steps; returns the run directory.
    pub fn train(&mut self) -> Result<PathBuf> {
        let (every, ckpt) = (self.cfg.rl.eval_every, self.cfg.rl.checkpoint_every);
        let due = if self.step == 0 { self.cfg.rl.eval_before_training } else { every > 0 && self.step % every == 0 };
        if due {
            // A new run's evaluation before training, or the one a resumed checkpoint's step still owes (a run
            // stopped during it): only the eval sets that have no result at this step yet.
            let done = evaluated_sets(&self.dir, self.step)?;
            self.evaluate_sets(|name| !done.contains(name))?;
        }
        let bar = ProgressBar::new(self.cfg.run.steps).with_position(self.step);
        bar.set_style(ProgressStyle::with_template("{bar:30} step {pos}/{len} {msg} [{elapsed}]")?);
        let (first, max_untrained) = (self.step, self.cfg.run.max_untrained_steps);
        let mut trained_any = false;
        while self.step < self.cfg.run.steps {
            let metrics = self.train_step(&bar)?;
            let trained = metrics.iter().any(|m| m.optimizer_steps > 0);
            trained_any |= trained;
            self.untrained_streak = if trained { 0 } else { self.untrained_streak + 1 };
            ensure!(
                self.untrained_streak < max_untrained,
                "{} consecutive steps trained no agent (run.max_untrained_steps = {max_untrained}); step {}: {}",
                self.untrained_streak,
                self.step,
                self.losses.cause()
            );
            // The checkpoint first: an evaluation can take longer than the step, and a run stopped during it
            // then resumes at this step and evaluates (above) instead of training the step again.
            if (ckpt > 0 && self.step % ckpt == 0) || self.step == self.cfg.run.steps {
                bar.set_message("checkpoint");
                self.checkpoint()?;
            }
            if every > 0 && self.step % every == 0 {
                bar.set_message("evaluating");
                self.evaluate()?;
            }
            bar.inc(1);
        }
        bar.finish_with_message("done");
        ensure!(
            trained_any || self.step == first,
            "steps {}-{} trained no agent: the run learned nothing (the last step's actions: {})",
            first + 1,
            self.step,
            self.losses.cause()
        );
        Ok(self.dir.clone())
    }

    /// One rollout step (module docs), appending its metrics.
    pub fn train_step(&mut self, bar: &ProgressBar) -> Result<Vec<StepMetrics>> {
        let step = self.step;
        let seed = self.cfg.run.seed;
        let picked = self.sampler.step(step);
        let tasks: Vec<(usize, &Task)> = picked.iter().map(|&i| (i, &self.train[i])).collect();

        bar.set_message(format!("rollout: {} episodes", tasks.len() * self.cfg.rl.samples_per_prompt));
        let engines: Vec<&dyn Generator> = self.agents.iter().map(|t| &t.model as &dyn Generator).collect();
        let work = self.dir.join("work").join("train");
        let step_seed = derive_seed(&[seed, step, 0]);
        let coach = self.coach.as_ref();
        let toks = self.bases.agent_toks();
        let Scored { episodes, scores, unscored, rollout_s, coach_s } =
            rollout_and_score(&engines, &toks, &self.cfg, &tasks, coach, step_seed, &work)?;
        self.losses = Losses::of(&episodes, unscored, self.cfg.rl.mask_truncated);
        if let Some(said) = self.losses.summary() {
            bar.suspend(|| eprintln!("step {}: {said}", step + 1));
        }

        let mut out = Vec::with_capacity(self.agents.len());
        let mut stats = Vec::with_capacity(self.agents.len());
        for i in 0..self.agents.len() {
            bar.set_message(format!("training {}", self.cfg.agents[i].name));
            let (samples, groups) = samples_of(&episodes, &scores, i);
            stats.push(self.agents[i].train_step_grouped(
                &samples,
                Some(&groups),
                self.references[self.bases.of_agent[i]].as_ref(),
                derive_seed(&[seed, step, 1, i as u64]),
            )?);
        }
        let train_s: f64 = stats.iter().map(|s| s.seconds).sum();
        self.step += 1;
        for (i, s) in stats.into_iter().enumerate() {
            let m = StepMetrics::new(self.step, &self.cfg, i, &episodes, &scores, s, [rollout_s, coach_s, train_s]);
            m.append_to(&self.dir.join("metrics.jsonl"))?;
            out.push(m);
        }
        Ok(out)
    }

    /// Evaluates the current agents on every eval set at the eval temperature; appends to `eval.jsonl`.
    pub fn evaluate(&self) -> Result<()> {
        self.evaluate_sets(|_| true)
    }

    /// `evaluate` for the eval sets `wanted` names. Each set's problem lines go to `eval_problems.jsonl`
    /// first and its summary to `eval.jsonl` last, so a summary marks a finished evaluation.
    fn evaluate_sets(&self, wanted: impl Fn(&str) -> bool) -> Result<()> {
        let engines: Vec<&dyn Generator> = self.agents.iter().map(|t| &t.model as &dyn Generator).collect();
        for (name, tasks) in self.eval_sets.iter().filter(|(name, _)| wanted(name)) {
            let indexed: Vec<(usize, &Task)> = tasks.iter().enumerate().collect();
            let work = self.dir.join("work").join("eval");
            let seed = derive_seed(&[self.cfg.run.seed, self.step, 2]);
            let k = self.cfg.rl.eval_samples_per_prompt;
            let toks = self.bases.agent_toks();
            let episodes =
                run_episodes(&engines, &toks, &self.cfg, &indexed, k, Phase::Eval, seed, &work, &mut |_, _, _| Ok(()))?;
            let summary = summarize(name, self.step, &self.cfg, &episodes, None)?;
            let quality = summary.submission_quality.map_or(String::new(), |(q, se)| {
                format!(" = valid submissions; their mean graded quality {q:.3} ± {se:.3}")
            });
            eprintln!(
                "eval {name} @ step {}: avg@{k} {:.3} ± {:.3}, pass@{k} {:.3} ± {:.3}{quality}",
                self.step, summary.avg_at_k, summary.avg_at_k_se, summary.pass_at_k, summary.pass_at_k_se
            );
            // Each problem's results, so arms of an experiment can be compared problem by problem; a DSBench
            // problem's line also gives each submission's grade (its metric, or why it is invalid).
            for (i, correct) in correct_by_problem(&episodes) {
                let mut line =
                    serde_json::json!({"dataset": name, "step": self.step, "id": tasks[i].id, "correct": correct});
                let grades: Vec<String> = (episodes.iter().filter(|ep| ep.task_index == i))
                    .filter_map(|ep| ep.submission.as_ref().map(|g| g.summary()))
                    .collect();
                if !grades.is_empty() {
                    line["submissions"] = grades.into();
                }
                crate::jsonl::append(&self.dir.join(EVAL_PROBLEMS), &line)?;
            }
            summary.append_to(&self.dir.join(EVAL_SUMMARIES))?;
        }
        Ok(())
    }

    pub fn checkpoint(&self) -> Result<PathBuf> {
        let named: Vec<(&str, &Trainer, &crate::tokenizer::TokenizerSpec)> = (self.cfg.agents.iter().zip(&self.agents))
            .enumerate()
            .map(|(i, (a, t))| (a.name.as_str(), t, &self.bases.model(i).tokenizer))
            .collect();
        checkpoint::save(&self.dir, self.step, &named)
    }
}

/// A step's episodes with every action's score.
pub struct Scored {
    pub episodes: Vec<Episode>,
    /// Per episode and action: the score, or None when the coach could not score it.
    pub scores: Vec<Vec<Option<f32>>>,
    /// Why each unscored action is unscored.
    pub unscored: Vec<String>,
    /// Seconds of the rollout (the coach working alongside), then of waiting for the coach's last scores.
    pub rollout_s: f64,
    pub coach_s: f64,
}

/// Runs one step's episodes (`rl.samples_per_prompt` per task) and scores every action: by `coach`, each
/// action as soon as it is complete, while the rollout goes on ([`Coach::score_during`]), so the step takes
/// about max(rollout, coach) rather than their sum; without a coach, by the episode's outcome
/// ([`outcome_scores`]).
pub fn rollout_and_score(
    engines: &[&dyn Generator],
    toks: &[&Tokenizer],
    cfg: &RunConfig,
    tasks: &[(usize, &Task)],
    coach: Option<&Coach>,
    seed: u64,
    work: &Path,
) -> Result<Scored> {
    let samples = cfg.rl.samples_per_prompt;
    let start = Instant::now();
    let Some(coach) = coach else {
        let episodes =
            run_episodes(engines, toks, cfg, tasks, samples, Phase::Train, seed, work, &mut |_, _, _| Ok(()))?;
        let rollout_s = start.elapsed().as_secs_f64();
        let (scores, unscored) = outcome_scores(&episodes);
        return Ok(Scored { episodes, scores, unscored, rollout_s, coach_s: 0.0 });
    };
    // (episode, action) of each request submitted to the coach, in submission order.
    let mut keys = Vec::new();
    let mut rollout_s = 0.0;
    let (episodes, outcomes) = coach.score_during(cfg.coach.concurrency, |submit| {
        let mut on_action = |n: usize, ep: &Episode, task: &Task| {
            let a = ep.actions.len() - 1;
            submit(coach_request(ep, a, cfg, toks[ep.actions[a].agent], task)?);
            keys.push((n, a));
            Ok(())
        };
        let episodes = run_episodes(engines, toks, cfg, tasks, samples, Phase::Train, seed, work, &mut on_action);
        rollout_s = start.elapsed().as_secs_f64();
        episodes
    });
    let episodes = episodes?;
    let coach_s = start.elapsed().as_secs_f64() - rollout_s;
    let mut scores: Vec<Vec<Option<f32>>> = episodes.iter().map(|ep| vec![None; ep.actions.len()]).collect();
    let mut unscored = Vec::new();
    for ((n, a), outcome) in keys.into_iter().zip(outcomes) {
        match outcome {
            CoachOutcome::Scored { score, .. } => scores[n][a] = Some(score),
            CoachOutcome::Unscored { reason } => unscored.push(reason),
        }
    }
    Ok(Scored { episodes, scores, unscored, rollout_s, coach_s })
}

/// The outcome-only baseline's scores: every action of an episode gets 10 x its final answer's correctness;
/// an episode that cannot be graded leaves its actions unscored, with the reason.
pub fn outcome_scores(episodes: &[Episode]) -> (Vec<Vec<Option<f32>>>, Vec<String>) {
    let mut reasons = Vec::new();
    let scores = episodes
        .iter()
        .map(|ep| {
            let score = ep.final_answer_correct.map(|c| if c { crate::coach::MAX_SCORE as f32 } else { 0.0 });
            if score.is_none() {
                let why = "outcome reward: the episode's final answer cannot be graded (no answer, or file artifacts)";
                reasons.extend(ep.actions.iter().map(|_| why.to_string()));
            }
            vec![score; ep.actions.len()]
        })
        .collect();
    (scores, reasons)
}

/// Agent `agent`'s scored actions as training samples (the exact context it saw, then its tokens), each
/// with its group for GRPO and RLOO: the agent's action at the same turn of the same task.
fn samples_of(episodes: &[Episode], scores: &[Vec<Option<f32>>], agent: usize) -> (Vec<Sample>, Vec<SampleGroup>) {
    let (mut out, mut groups) = (Vec::new(), Vec::new());
    for (ep, sc) in episodes.iter().zip(scores) {
        for (a, s) in ep.actions.iter().zip(sc) {
            if let (true, Some(score), false) = (a.agent == agent, s, a.tokens.is_empty()) {
                out.push(Sample {
                    tokens: [a.context.as_slice(), &a.tokens].concat(),
                    prompt_len: a.context.len(),
                    logp_old: a.logprobs.clone(),
                    reward: score / crate::coach::MAX_SCORE as f32,
                    truncated: a.finish == crate::engine::FinishReason::Length,
                });
                groups.push((ep.task_index, a.turn));
            }
        }
    }
    (out, groups)
}

/// What one step's rollouts and coach lost: the actions that cannot train, with a reason of each kind.
#[derive(Clone, Debug, Default)]
struct Losses {
    actions: usize,
    /// Reasons of the actions the coach could not score.
    unscored: Vec<String>,
    /// Reasons of the actions never generated.
    skipped: Vec<String>,
    /// Truncated actions, left out of the loss by `rl.mask_truncated`.
    masked: usize,
    /// Tool outputs of actions whose code the sandbox could not run on the host.
    host_failures: Vec<String>,
}

impl Losses {
    fn of(episodes: &[Episode], unscored: Vec<String>, mask_truncated: bool) -> Losses {
        let actions = || episodes.iter().flat_map(|e| &e.actions);
        Losses {
            actions: actions().count(),
            unscored,
            skipped: episodes.iter().flat_map(|e| e.skipped.iter().map(|s| s.reason.clone())).collect(),
            masked: match mask_truncated {
                true => actions().filter(|a| a.finish == crate::engine::FinishReason::Length).count(),
                false => 0,
            },
            host_failures: actions()
                .filter_map(|a| a.tool_output.clone().filter(|o| o.starts_with(crate::sandbox::HOST_FAILURE)))
                .collect(),
        }
    }

    /// The unscored and skipped actions and the sandbox's host failures, with the first reason of each, or
    /// None when there were none.
    fn summary(&self) -> Option<String> {
        let mut parts = Vec::new();
        if let Some(first) = self.unscored.first() {
            parts.push(format!("{} of {} actions unscored by the coach ({first})", self.unscored.len(), self.actions));
        }
        if let Some(first) = self.skipped.first() {
            parts.push(format!("{} actions not generated ({first})", self.skipped.len()));
        }
        if let Some(first) = self.host_failures.first() {
            parts.push(format!("{} tool runs failed on the host ({})", self.host_failures.len(), first.trim()));
        }
        (!parts.is_empty()).then(|| parts.join("; "))
    }

    /// Why nothing trained, as far as the step can tell.
    fn cause(&self) -> String {
        let mut said = self.summary().unwrap_or_else(|| format!("{} actions generated", self.actions));
        if self.masked > 0 {
            said += &format!("; {} truncated actions masked out by rl.mask_truncated", self.masked);
        }
        said
    }
}
