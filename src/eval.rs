//! Evaluation summaries: what one evaluation of one dataset at one step reports, as one line of
//! `eval.jsonl`.
//!
//! Accuracy comes from the rule grader's verdict on each episode's final answer
//! ([`Episode::final_answer_correct`]; an ungraded episode counts as not correct), never from the coach
//! (paper notes §8, item 4). With k episodes per problem: avg@k (mean per-problem accuracy) and the
//! unbiased pass@k, each with its standard error over problems ([`crate::grade`]). For DSBench tasks the
//! verdict is whether the submission is valid (the paper's success rate), and the submissions' mean graded
//! quality is reported too. Per agent, over all its
//! actions: the tool-call rate (share of actions with code; null for agents without tools), the mean
//! response length in tokens, the truncation rate, and the mean coach score when scores are given — the
//! behaviour MAPPA's training plots follow (paper notes §6.1).
use crate::engine::FinishReason;
use crate::grade::{avg_at_k, pass_at_k};
use crate::rollout::Episode;
use crate::run_config::RunConfig;
use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::Path;

/// One agent's behaviour over an evaluation.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct AgentEvalStats {
    /// Share of the agent's actions that contained code; `None` when the agent has no tools.
    pub tool_call_rate: Option<f64>,
    /// Mean generated tokens per action.
    pub response_len_mean: f64,
    /// Share of actions cut off by the token budget.
    pub truncation_rate: f64,
    /// Mean coach score of the agent's scored actions; `None` without scores.
    pub coach_score_mean: Option<f64>,
}

/// One line of `eval.jsonl` (fields serialise in this order).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct EvalSummary {
    pub dataset: String,
    pub step: u64,
    /// Episodes per problem (the largest count when problems differ).
    pub k: usize,
    pub problems: usize,
    pub avg_at_k: f64,
    pub avg_at_k_se: f64,
    pub pass_at_k: f64,
    pub pass_at_k_se: f64,
    /// DSBench tasks: the mean graded quality of the submissions in [0, 1] (`dsbench::Grade::quality`; an
    /// invalid one counts 0), with its standard error over episodes. Absent for answer-graded tasks.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub submission_quality: Option<(f64, f64)>,
    /// By agent name.
    pub agents: BTreeMap<String, AgentEvalStats>,
}

/// Each problem's episodes' correctness (graded correct, in episode order), by task index.
pub fn correct_by_problem(episodes: &[Episode]) -> BTreeMap<usize, Vec<bool>> {
    let mut by_problem: BTreeMap<usize, Vec<bool>> = BTreeMap::new();
    for ep in episodes {
        by_problem.entry(ep.task_index).or_default().push(ep.final_answer_correct == Some(true));
    }
    by_problem
}

/// Summarises `episodes` (grouped into problems by `task_index`). `scores`, when given, holds one entry
/// per episode with one score per action (`None`: unscored), shaped like the episodes' actions.
pub fn summarize(
    dataset: &str,
    step: u64,
    cfg: &RunConfig,
    episodes: &[Episode],
    scores: Option<&[Vec<Option<f32>>]>,
) -> Result<EvalSummary> {
    if let Some(s) = scores {
        if s.len() != episodes.len() {
            bail!("{} score lists for {} episodes", s.len(), episodes.len());
        }
        if let Some((e, ep)) = episodes.iter().enumerate().find(|(e, ep)| s[*e].len() != ep.actions.len()) {
            bail!("episode {e} has {} actions but {} scores", ep.actions.len(), s[e].len());
        }
    }
    let correct: Vec<Vec<bool>> = correct_by_problem(episodes).into_values().collect();
    let k = correct.iter().map(Vec::len).max().unwrap_or(0);
    let (avg, avg_se) = avg_at_k(&correct);
    let (pass, pass_se) = pass_at_k(&correct, k);

    let mut acc: Vec<Tally> = vec![Tally::default(); cfg.agents.len()];
    for (e, ep) in episodes.iter().enumerate() {
        for (a, action) in ep.actions.iter().enumerate() {
            let Some(t) = acc.get_mut(action.agent) else {
                bail!(
                    "episode {e} has an action of agent {}, but the configuration has {}",
                    action.agent,
                    cfg.agents.len()
                );
            };
            t.actions += 1;
            t.with_code += action.code.is_some() as usize;
            t.tokens += action.tokens.len();
            t.truncated += (action.finish == FinishReason::Length) as usize;
            if let Some(score) = scores.and_then(|s| s[e][a]) {
                t.scored += 1;
                t.score_sum += score as f64;
            }
        }
    }
    let agents = cfg
        .agents
        .iter()
        .zip(acc)
        .map(|(agent, t)| {
            let stats = AgentEvalStats {
                tool_call_rate: (!agent.tools.is_empty()).then(|| ratio(t.with_code as f64, t.actions)),
                response_len_mean: ratio(t.tokens as f64, t.actions),
                truncation_rate: ratio(t.truncated as f64, t.actions),
                coach_score_mean: (t.scored > 0).then(|| t.score_sum / t.scored as f64),
            };
            (agent.name.clone(), stats)
        })
        .collect();
    Ok(EvalSummary {
        dataset: dataset.to_string(),
        step,
        k,
        problems: correct.len(),
        avg_at_k: avg,
        avg_at_k_se: avg_se,
        pass_at_k: pass,
        pass_at_k_se: pass_se,
        submission_quality: mean_se(episodes.iter().filter_map(|ep| ep.submission.as_ref().map(|g| g.quality()))),
        agents,
    })
}

/// Per-agent counters.
#[derive(Clone, Default)]
struct Tally {
    actions: usize,
    with_code: usize,
    tokens: usize,
    truncated: usize,
    scored: usize,
    score_sum: f64,
}

/// `x / n`, 0 when there is nothing to average.
fn ratio(x: f64, n: usize) -> f64 {
    if n == 0 {
        0.0
    } else {
        x / n as f64
    }
}

impl EvalSummary {
    /// The JSON line (no trailing newline).
    pub fn to_json_line(&self) -> Result<String> {
        serde_json::to_string(self).context("serialising the eval summary")
    }

    /// Appends the line to `path` (e.g. `<run dir>/eval.jsonl`), creating the file if needed.
    pub fn append_to(&self, path: &Path) -> Result<()> {
        crate::jsonl::append(path, self)
    }
}

/// The mean of `values` and its standard error; None when there are none.
fn mean_se(values: impl Iterator<Item = f64>) -> Option<(f64, f64)> {
    let v: Vec<f64> = values.collect();
    let n = v.len() as f64;
    let mean = v.iter().sum::<f64>() / n;
    let var = if v.len() > 1 { v.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / (n - 1.0) } else { 0.0 };
    (!v.is_empty()).then(|| (mean, (var / n).sqrt()))
}
