//! Multi-agent rollouts: running a team of agents (each with its own weights) on tasks, action by action,
//! and recording every action with the exact token context it was sampled from.
//!
//! One episode = one task x one sample. Agents act in the configured order; an agent's prompt is its
//! template rendered as one user message (`prompt`). A tool agent's reply may contain Python (`text`);
//! the code runs in the sandbox in the agent's working directory (`workdir`), and while the agent has
//! actions left its output comes back as the next turn of the same token context, in the template's tool
//! markup (`context`). An agent is done after a reply without code or after `max_actions`. Its final output
//! (think-stripped when configured) and last tool observation feed later agents' prompts.
//!
//! Batching ([`run_episodes`]): all episodes advance together, agent by agent and turn by turn; each
//! (agent, turn) is ONE [`Generator::generate_batch`] call holding every episode still acting. Request seeds
//! derive from (seed, task, sample, agent, turn), so a run is reproducible and independent of batch
//! composition.
//!
//! [`coach_request`] turns any action into what the coach scores, as soon as the action is complete
//! ([`run_episodes`]' `on_action`) or after the rollout.
mod coach;
mod context;
mod episode;
mod generator;
mod prompt;
mod text;
mod workdir;

pub use coach::coach_request;
pub use context::{observation_delta, observation_role, ChatContext, TurnDelta};
pub use episode::{run_episodes, OnAction, Phase};
pub use generator::{GenRequest, Generator};
pub use prompt::{AgentPrompts, PromptInputs};
pub use text::{extract_python_code, strip_think};
pub use workdir::{agent_dir, episode_dir, list_files, staged_sources};

use crate::dsbench::Grade;
use crate::engine::FinishReason;
use serde::Serialize;
use std::path::PathBuf;

/// One completion of one agent: a training sample for that agent's policy.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct ActionRecord {
    /// Index of the agent in the pipeline.
    pub agent: usize,
    /// 0-based action index within the agent's turn loop.
    pub turn: usize,
    /// Exactly the prompt ids fed to the engine for this action.
    pub context: Vec<u32>,
    /// Generated ids (ending with the stop token when one ended the action).
    pub tokens: Vec<u32>,
    /// Rollout log-probability of each generated id.
    pub logprobs: Vec<f32>,
    pub finish: FinishReason,
    /// The generated text, special tokens skipped.
    pub text: String,
    /// The Python program extracted from the reply (tool agents only).
    pub code: Option<String>,
    /// The rendered sandbox output when code ran.
    pub tool_output: Option<String>,
    /// Files in the agent's working directory after the action.
    pub files: Vec<String>,
    /// For the last agent of a DSBench task: its `submission.csv` graded after the action.
    pub submission: Option<Grade>,
}

/// An action that was not generated, and why (e.g. its prompt exceeded `rl.max_prompt_tokens`).
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct SkippedAction {
    pub agent: usize,
    pub turn: usize,
    pub prompt_tokens: usize,
    pub reason: String,
}

/// One run of the whole team on one task.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Episode {
    /// The caller's index of the task.
    pub task_index: usize,
    /// Which of the task's samples this is (0-based).
    pub sample: usize,
    /// Every action, in the order they happened (agent by agent).
    pub actions: Vec<ActionRecord>,
    /// Each agent's final output, as later agents saw it (think-stripped where configured; "" when the
    /// agent took no action).
    pub outputs: Vec<String>,
    /// Actions that could not be generated.
    pub skipped: Vec<SkippedAction>,
    /// `<work_root>/ep-<n>`: the episode's working directory (or the parent of its agents' directories).
    pub workdir: PathBuf,
    /// The last agent's output graded against the task's answers, or for a DSBench task whether it left a
    /// valid submission (the paper's success); `None` when the task has no answers or the last agent's
    /// result is files (it declares `artifacts`) that no grader is configured for.
    pub final_answer_correct: Option<bool>,
    /// For a DSBench task: the last agent's `submission.csv` graded with the task's metric.
    pub submission: Option<Grade>,
}
