//! Run configuration (issue 5): the TOML file behind `mappa train --config run.toml`.
//!
//! Sections (every table has `deny_unknown_fields`; a misspelt key is an error naming it, the file and
//! the line):
//! - `[run]`: name, run directory (`dir`, default `runs/<name>`), seed, rollout steps, compute backend
//!   (`auto` | `cuda` | `cpu`), default device index and default base model for the agents.
//! - `[[agents]]`: the sequential pipeline, in order. Each agent has a `name` (an identifier), an optional
//!   human-readable `role`, a minijinja `prompt`, `max_actions`, `tools`, optional `base_model`/`device`
//!   (else `[run]`'s), `strip_think` (drop `<think>` blocks before later agents see the output),
//!   `artifacts` (files it must leave in the working directory), `coach_sees_ground_truth` (default: only
//!   the last agent, and only when `coach.ground_truth_to_final_agent`) and `[agents.sampling]` overrides.
//! - `[coach]`: backend (`http` | `local` | `rule`), model, endpoint, `api_key_env` (the NAME of the
//!   variable holding the key; keys never appear in a config), prompt override, limits and retries, and for
//!   the rule coach what it checks (`rule = "final" | "process"`). `rl.reward = "outcome"` replaces the
//!   coach by the paper's outcome-only baseline.
//! - `[data]`: train file, eval files, record field names (dotted paths into the JSON record), the answer
//!   fallback flag, sub-sampling and the eval-only guard; `[data.stage_files]` copies files named by a
//!   record field into the working directory (DSBench's `train.csv`/`test.csv`).
//! - `[rl]`: optimisation and sampling; defaults are MAPPA's MathChat values (paper notes §5).
//! - `[sandbox]`: the Python tool's limits and whether the working directory is per agent or shared by
//!   the whole episode.
//!
//! Prompt templates see [`PROMPT_VARIABLES`]: `task` (the record's task text), `record` (the whole JSON
//! record), `previous` (earlier agents' final outputs by name), `tool_results` (earlier agents' last tool
//! observation by name, "" when none), `files` (sorted file names in the working directory), `agent` (this
//! agent's name) and `role`. Validation compiles every template and rejects unknown variables and
//! `previous.X` / `tool_results.X` where X is not an earlier agent.
//!
//! Relative paths are relative to the directory the command runs in (not to the config file), so a
//! preset, a hand-written file and the resolved copy in a run directory all mean the same files.
//! Validation rules are listed in `validate.rs`; overrides (`rl.lr=2e-6`) in `overrides.rs`.
use anyhow::{anyhow, bail, Context, Result};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

pub use crate::coach::LocalScoring;
pub use crate::model::BackendChoice;
use crate::rl::{AdvantageConfig, Aggregation, Estimator, KlEstimator, PgLossConfig};
use crate::sandbox::SandboxConfig;

mod overrides;
mod validate;

/// Variables every agent prompt template may use (the pipeline runner provides all of them).
pub const PROMPT_VARIABLES: &[&str] = &["task", "record", "previous", "tool_results", "files", "agent", "role"];

/// Built-in presets: name and TOML text.
const PRESETS: &[(&str, &str)] =
    &[("mathchat", include_str!("../presets/mathchat.toml")), ("dsbench", include_str!("../presets/dsbench.toml"))];

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RunConfig {
    pub run: RunSection,
    pub agents: Vec<AgentConfig>,
    pub coach: CoachConfig,
    pub data: DataConfig,
    #[serde(default)]
    pub rl: RlConfig,
    #[serde(default)]
    pub sandbox: SandboxSection,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RunSection {
    pub name: String,
    /// Run directory (checkpoints, logs, the resolved config); default `runs/<name>`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dir: Option<PathBuf>,
    #[serde(default = "d_seed")]
    pub seed: u64,
    /// Rollout steps (each: `rl.prompts_per_step` tasks x `rl.samples_per_prompt` episodes).
    #[serde(default = "d_steps")]
    pub steps: u64,
    /// The run fails (non-zero exit, naming the cause) after this many consecutive steps that trained no
    /// agent (every action unscored, skipped or masked); a run that trains nothing at all fails at its end.
    #[serde(default = "d_max_untrained_steps")]
    pub max_untrained_steps: u64,
    /// `auto` (CUDA when it can run here, else the CPU), `cpu` or `cuda`; a new run's config.toml records
    /// the one it resolved to.
    #[serde(default)]
    pub backend: BackendChoice,
    /// Default device index of every agent.
    #[serde(default)]
    pub device: usize,
    /// Default base model (a checkpoint directory or file) of every agent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub base_model: Option<PathBuf>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AgentConfig {
    /// Identifier; templates of later agents read `previous.<name>`.
    pub name: String,
    /// Human-readable role shown to the coach (default: the name).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub role: Option<String>,
    /// minijinja template of the agent's (single, user) prompt message.
    pub prompt: String,
    /// Completions per episode: the first, plus one per tool observation fed back.
    #[serde(default = "d_one")]
    pub max_actions: u32,
    #[serde(default)]
    pub tools: Vec<Tool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub base_model: Option<PathBuf>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub device: Option<usize>,
    /// Remove `<think>...</think>` from this agent's final output before later agents see it.
    #[serde(default)]
    pub strip_think: bool,
    /// Files (plain names) this agent must leave in the working directory.
    #[serde(default)]
    pub artifacts: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub coach_sees_ground_truth: Option<bool>,
    #[serde(default, skip_serializing_if = "SamplingOverrides::is_empty")]
    pub sampling: SamplingOverrides,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Tool {
    /// Fenced python blocks run in the sandbox; stdout/stderr come back as the next observation.
    Python,
}

/// Per-agent replacements for `[rl]`'s sampling values.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SamplingOverrides {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub temperature: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub eval_temperature: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub top_p: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_new_tokens: Option<usize>,
}

impl SamplingOverrides {
    pub fn is_empty(&self) -> bool {
        *self == Self::default()
    }
}

/// An agent's effective sampling values.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Sampling {
    pub temperature: f64,
    pub eval_temperature: f64,
    pub top_p: f64,
    pub max_new_tokens: usize,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CoachConfig {
    pub backend: CoachBackend,
    /// Model name (http) or checkpoint path (local); unused by `rule`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model: Option<String>,
    /// Base URL of an OpenAI-compatible API (http only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub endpoint: Option<String>,
    /// Name of the environment variable holding the API key.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub api_key_env: Option<String>,
    /// Replaces the built-in coach prompt template.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prompt_template: Option<String>,
    #[serde(default)]
    pub temperature: f64,
    /// Coach calls in flight at once.
    #[serde(default = "d_concurrency")]
    pub concurrency: usize,
    #[serde(default = "d_coach_timeout")]
    pub timeout_s: f64,
    /// Retries of a failed API call (with back-off). A reply without a parsable score gets exactly one
    /// retry that restates the format; if that fails too the action is left out of training and counted,
    /// never given a default score (so there is deliberately no fallback-score setting).
    #[serde(default = "d_retries")]
    pub retries: u32,
    /// Characters of the latest tool observation shown to the coach.
    #[serde(default = "d_tool_output_chars")]
    pub tool_output_chars: usize,
    /// Give the coach the ground truth when it scores the final agent.
    #[serde(default = "d_true")]
    pub ground_truth_to_final_agent: bool,
    /// `local` only: most tokens of one coach reply.
    #[serde(default = "d_coach_max_tokens")]
    pub max_tokens: usize,
    /// `local` only: text the coach's reply is started with (e.g. `PROCESS_SCORE:` for a model too small to
    /// follow the answer format by itself); the model continues from it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reply_prefix: Option<String>,
    /// `rule` only: what the rule coach checks (see [`RuleKind`]).
    #[serde(default)]
    pub rule: RuleKind,
    /// `local` only: `sampled` (the score the coach writes) or `expected` (the probability-weighted mean over
    /// the scores 0..10; see `coach::local`).
    #[serde(default)]
    pub score: LocalScoring,
}

/// What the rule coach checks.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RuleKind {
    /// The final agent's answer (10 or 0); other agents 10 for a correct boxed answer, else 5.
    #[default]
    Final,
    /// Each math-pipeline action on what can be checked in it: a code action on whether its code ran and
    /// printed the answer, a text action on its boxed answer, the final agent on the final answer. Every
    /// agent's request carries the ground truth (a rule reads it; no model sees it).
    Process,
    /// Each action of a file-producing pipeline (DSBench) on what it left: its code ran, its required files
    /// exist, and for the final agent the graded quality of its submission (`coach::rule` module docs).
    Artifacts,
}

/// Where the per-action rewards come from.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Reward {
    /// The coach scores every action (MAPPA).
    #[default]
    Coach,
    /// Outcome only (the paper's baseline): every action of an episode gets 10 x the final answer's
    /// correctness; the coach is not called.
    Outcome,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum CoachBackend {
    Http,
    Local,
    Rule,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DataConfig {
    /// Training tasks, JSON Lines.
    pub train: PathBuf,
    /// Evaluation files, each reported separately.
    #[serde(default)]
    pub eval: Vec<PathBuf>,
    /// Record fields, as dotted paths into the JSON record (`metadata.task_id`).
    #[serde(default = "d_id_field")]
    pub id_field: String,
    #[serde(default = "d_task_field")]
    pub task_field: String,
    /// Ground-truth fields, first present wins.
    #[serde(default = "d_answer_fields")]
    pub answer_fields: Vec<String>,
    /// Rule grading: take the last number when a response has no `\boxed{}`.
    #[serde(default)]
    pub last_number_fallback: bool,
    /// First fraction of the train file held out as an extra eval set ("train-holdout"), never trained on.
    #[serde(default)]
    pub holdout_fraction: f64,
    /// Train on a random subset of this size (drawn with `run.seed`, after the holdout).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub train_sample: Option<usize>,
    /// A train file whose name contains one of these (case-insensitive) is refused.
    #[serde(default = "d_eval_only_markers")]
    pub eval_only_markers: Vec<String>,
    /// DSBench task definitions (the cleaned-prompts format: metric, id and target columns per task id): each
    /// task's episodes are graded on the `submission.csv` the last agent leaves, against the answer
    /// directory its answer field names (under `files_root`), with the task's metric.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub task_info: Option<PathBuf>,
    /// Root of the paths that `stage_files` and, with `task_info`, the answer fields hold.
    #[serde(default = "d_files_root")]
    pub files_root: PathBuf,
    /// Working-directory file name -> record field holding the source path (copied in before the episode).
    #[serde(default)]
    pub stage_files: BTreeMap<String, String>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Kl {
    K1,
    K2,
    K3,
}

/// `rl.estimator`: how an action's reward becomes its advantage (`rl::advantage` module docs).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AdvantageEstimator {
    /// REINFORCE++: returns whitened over the agent's batch (MAPPA).
    ReinforcePp,
    /// GRPO: the reward normalised within its group (the same agent's action at the same turn of the
    /// task's `samples_per_prompt` episodes).
    Grpo,
    /// RLOO: the reward minus the mean reward of the rest of its group.
    Rloo,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LrSchedule {
    /// Linear warm-up, then cosine decay to `lr * lr_min_ratio`.
    Cosine,
    /// Linear warm-up, then constant.
    Constant,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum LossAggregation {
    TokenMean,
    SeqMeanTokenMean,
    SeqMeanTokenSum,
}

/// Optimisation and sampling; `Default` is MAPPA's MathChat run.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RlConfig {
    /// KL(pi || ref) coefficient, folded into the per-token reward.
    pub beta: f64,
    pub kl_estimator: Kl,
    /// `reinforce_pp` (default), `grpo` or `rloo`; the last two need `samples_per_prompt >= 2`.
    pub estimator: AdvantageEstimator,
    pub clip_eps_low: f64,
    pub clip_eps_high: f64,
    /// Dual-clip constant c > 1 (absent: off).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub dual_clip: Option<f64>,
    pub lr: f64,
    pub lr_schedule: LrSchedule,
    /// Final lr as a fraction of `lr` (cosine).
    pub lr_min_ratio: f64,
    /// Fraction of all optimizer steps spent warming up.
    pub warmup_ratio: f64,
    pub adam_beta1: f64,
    pub adam_beta2: f64,
    pub adam_eps: f64,
    pub weight_decay: f64,
    /// Global gradient-norm clip.
    pub grad_clip: f64,
    /// Tasks per rollout step.
    pub prompts_per_step: usize,
    /// Episodes per task.
    pub samples_per_prompt: usize,
    /// Action samples per optimizer step, per agent.
    pub samples_per_optimizer_step: usize,
    /// Passes over each rollout step's samples.
    pub epochs_per_step: usize,
    pub max_new_tokens: usize,
    pub max_prompt_tokens: usize,
    pub temperature: f64,
    pub top_p: f64,
    pub eval_temperature: f64,
    pub eval_samples_per_prompt: usize,
    /// Evaluate every N rollout steps (0: never during training).
    pub eval_every: u64,
    pub eval_before_training: bool,
    /// Checkpoint every N rollout steps (0: only at the end).
    pub checkpoint_every: u64,
    pub loss_aggregation: LossAggregation,
    /// Truncated actions get no loss and stay out of the advantage statistics.
    pub mask_truncated: bool,
    /// Divide centred returns by the agent's std.
    pub advantage_std_norm: bool,
    /// `coach` (per-action coach scores) or `outcome` (10 x the episode's final correctness for every action).
    pub reward: Reward,
}

impl Default for RlConfig {
    fn default() -> Self {
        RlConfig {
            beta: 0.01,
            kl_estimator: Kl::K1,
            estimator: AdvantageEstimator::ReinforcePp,
            clip_eps_low: 0.2,
            clip_eps_high: 0.2,
            dual_clip: None,
            lr: 1e-6,
            lr_schedule: LrSchedule::Cosine,
            lr_min_ratio: 0.1,
            warmup_ratio: 0.03,
            adam_beta1: 0.9,
            adam_beta2: 0.95,
            adam_eps: 1e-8,
            weight_decay: 0.0,
            grad_clip: 1.0,
            prompts_per_step: 32,
            samples_per_prompt: 2,
            samples_per_optimizer_step: 16,
            epochs_per_step: 1,
            max_new_tokens: 4096,
            max_prompt_tokens: 24576,
            temperature: 1.0,
            top_p: 1.0,
            eval_temperature: 0.6,
            eval_samples_per_prompt: 4,
            eval_every: 4,
            eval_before_training: true,
            checkpoint_every: 32,
            loss_aggregation: LossAggregation::SeqMeanTokenMean,
            mask_truncated: true,
            advantage_std_norm: true,
            reward: Reward::Coach,
        }
    }
}

impl RlConfig {
    pub fn advantage_config(&self) -> AdvantageConfig {
        AdvantageConfig {
            beta: self.beta as f32,
            kl: match self.kl_estimator {
                Kl::K1 => KlEstimator::K1,
                Kl::K2 => KlEstimator::K2,
                Kl::K3 => KlEstimator::K3,
            },
            normalize_std: self.advantage_std_norm,
            mask_truncated: self.mask_truncated,
            estimator: match self.estimator {
                AdvantageEstimator::ReinforcePp => Estimator::ReinforcePp,
                AdvantageEstimator::Grpo => Estimator::Grpo,
                AdvantageEstimator::Rloo => Estimator::Rloo,
            },
        }
    }

    pub fn pg_loss_config(&self) -> PgLossConfig {
        PgLossConfig {
            eps_low: self.clip_eps_low as f32,
            eps_high: self.clip_eps_high as f32,
            dual_clip: self.dual_clip.map(|c| c as f32),
            kl_loss_coef: None,
            aggregation: match self.loss_aggregation {
                LossAggregation::TokenMean => Aggregation::TokenMean,
                LossAggregation::SeqMeanTokenMean => Aggregation::SeqMeanTokenMean,
                LossAggregation::SeqMeanTokenSum => Aggregation::SeqSum,
            },
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum WorkdirScope {
    /// A fresh working directory per agent.
    Agent,
    /// One working directory shared by all agents of an episode (files flow down the pipeline).
    Episode,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SandboxSection {
    /// Interpreter: a name looked up in `PATH` or a path.
    pub python: PathBuf,
    /// Modules the agents' code needs (e.g. `["numpy", "pandas", "sklearn"]` for DSBench): the start-up check
    /// imports them in the sandbox, so a missing environment fails the start with a clear error.
    pub requires: Vec<String>,
    /// Wall-clock limit per execution.
    pub timeout_s: f64,
    pub cpu_seconds: u64,
    pub memory_mb: u64,
    pub file_size_mb: u64,
    pub max_processes: u64,
    /// Bytes of stdout, and separately of stderr, kept per execution.
    pub output_chars: usize,
    pub workdir: WorkdirScope,
}

impl Default for SandboxSection {
    fn default() -> Self {
        SandboxSection {
            python: PathBuf::from("python3"),
            requires: Vec::new(),
            timeout_s: 30.0,
            cpu_seconds: 30,
            memory_mb: 2048,
            file_size_mb: 64,
            max_processes: 64,
            output_chars: 8192,
            workdir: WorkdirScope::Agent,
        }
    }
}

impl SandboxSection {
    pub fn to_sandbox_config(&self) -> SandboxConfig {
        SandboxConfig {
            python: self.python.clone(),
            timeout: Duration::from_secs_f64(self.timeout_s),
            cpu_seconds: self.cpu_seconds,
            memory_bytes: self.memory_mb.saturating_mul(1 << 20),
            file_size_bytes: self.file_size_mb.saturating_mul(1 << 20),
            max_processes: self.max_processes,
            output_limit: self.output_chars,
        }
    }
}

fn d_seed() -> u64 {
    42
}
fn d_steps() -> u64 {
    128
}
fn d_max_untrained_steps() -> u64 {
    3
}
fn d_one() -> u32 {
    1
}
fn d_true() -> bool {
    true
}
fn d_concurrency() -> usize {
    16
}
fn d_coach_timeout() -> f64 {
    120.0
}
fn d_coach_max_tokens() -> usize {
    1024
}
fn d_retries() -> u32 {
    5
}
fn d_tool_output_chars() -> usize {
    2000
}
fn d_id_field() -> String {
    "id".into()
}
fn d_task_field() -> String {
    "problem".into()
}
fn d_answer_fields() -> Vec<String> {
    vec!["answer".into()]
}
fn d_eval_only_markers() -> Vec<String> {
    ["eval", "test", "aime25", "aime_2025", "amc", "math500"].map(String::from).to_vec()
}
fn d_files_root() -> PathBuf {
    PathBuf::from(".")
}

impl RunConfig {
    /// Parses and validates; errors start with `source_name` (a file name, or `preset:<name>`).
    pub fn from_toml_str(text: &str, source_name: &str) -> Result<RunConfig> {
        let cfg: RunConfig = toml::from_str(text).map_err(|e| anyhow!("{source_name}: {e}"))?;
        cfg.validate().map_err(|e| anyhow!("{source_name}: invalid run configuration:\n{e}"))?;
        Ok(cfg)
    }

    pub fn load(path: impl AsRef<Path>) -> Result<RunConfig> {
        let path = path.as_ref();
        let text = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
        Self::from_toml_str(&text, &path.display().to_string())
    }

    /// A built-in pipeline: `mathchat` or `dsbench`.
    pub fn preset(name: &str) -> Result<RunConfig> {
        match PRESETS.iter().find(|(n, _)| *n == name) {
            Some((n, text)) => Self::from_toml_str(text, &format!("preset:{n}")),
            None => bail!("unknown preset `{name}` (known: {})", Self::preset_names().join(", ")),
        }
    }

    pub fn preset_names() -> Vec<&'static str> {
        PRESETS.iter().map(|(n, _)| *n).collect()
    }

    /// The configuration as TOML: what the run directory keeps; parses back to an equal config.
    pub fn to_toml_string(&self) -> Result<String> {
        toml::to_string(self).context("serialising the run configuration")
    }

    /// Checks that the data files and base models exist (not part of `validate`, which is pure).
    pub fn check_paths(&self) -> Result<()> {
        let mut missing = Vec::new();
        let mut need = |key: String, p: &Path| {
            if !p.exists() {
                missing.push(format!("{key}: `{}` does not exist", p.display()));
            }
        };
        need("data.train".into(), &self.data.train);
        if let Some(p) = &self.data.task_info {
            need("data.task_info".into(), p);
        }
        for (i, p) in self.data.eval.iter().enumerate() {
            need(format!("data.eval[{i}]"), p);
        }
        for (i, a) in self.agents.iter().enumerate() {
            let key = if a.base_model.is_some() { format!("agents[{i}].base_model") } else { "run.base_model".into() };
            need(key, self.agent_base_model(i));
        }
        if missing.is_empty() {
            Ok(())
        } else {
            bail!("{}", missing.join("\n"))
        }
    }

    /// Where the rewards come from, in words, for logs and the report.
    pub fn reward_label(&self) -> String {
        let c = &self.coach;
        match (self.rl.reward, c.backend) {
            (Reward::Outcome, _) => "outcome only: every action gets 10 x the final answer's correctness".into(),
            (Reward::Coach, CoachBackend::Rule) => match c.rule {
                RuleKind::Final => "rule-based coach: the final answer (10/0), others' boxed answers".into(),
                RuleKind::Process => {
                    "rule-based process coach: each action's own checkable result (code ran and printed the \
                     answer; the answer it gave; the final answer)"
                        .into()
                }
                RuleKind::Artifacts => {
                    "rule-based artifacts coach: each action's code ran, its required files exist, and the final \
                     submission's graded quality"
                        .into()
                }
            },
            (Reward::Coach, CoachBackend::Local) => format!(
                "local model coach `{}` ({})",
                c.model.as_deref().unwrap_or("?"),
                match c.score {
                    LocalScoring::Sampled => "its written score",
                    LocalScoring::Expected => "probability-weighted score",
                }
            ),
            (Reward::Coach, CoachBackend::Http) => format!(
                "HTTP coach `{}` at {}",
                c.model.as_deref().unwrap_or("?"),
                c.endpoint.as_deref().unwrap_or("?")
            ),
        }
    }

    pub fn run_dir(&self) -> PathBuf {
        self.run.dir.clone().unwrap_or_else(|| Path::new("runs").join(&self.run.name))
    }

    pub fn agent_index(&self, name: &str) -> Option<usize> {
        self.agents.iter().position(|a| a.name == name)
    }

    pub fn agent_role(&self, i: usize) -> &str {
        let a = &self.agents[i];
        a.role.as_deref().unwrap_or(&a.name)
    }

    pub fn agent_device(&self, i: usize) -> usize {
        self.agents[i].device.unwrap_or(self.run.device)
    }

    /// The agent's base model, else `run.base_model` (validation guarantees one of them).
    pub fn agent_base_model(&self, i: usize) -> &Path {
        self.agents[i].base_model.as_deref().or(self.run.base_model.as_deref()).unwrap_or(Path::new(""))
    }

    /// Whether the coach gets the ground truth when scoring agent `i`.
    pub fn coach_sees_ground_truth(&self, i: usize) -> bool {
        if self.coach.backend == CoachBackend::Rule && self.coach.rule == RuleKind::Process {
            return true;
        }
        self.agents[i]
            .coach_sees_ground_truth
            .unwrap_or(i + 1 == self.agents.len() && self.coach.ground_truth_to_final_agent)
    }

    pub fn sampling(&self, i: usize) -> Sampling {
        let (o, rl) = (&self.agents[i].sampling, &self.rl);
        Sampling {
            temperature: o.temperature.unwrap_or(rl.temperature),
            eval_temperature: o.eval_temperature.unwrap_or(rl.eval_temperature),
            top_p: o.top_p.unwrap_or(rl.top_p),
            max_new_tokens: o.max_new_tokens.unwrap_or(rl.max_new_tokens),
        }
    }
}
