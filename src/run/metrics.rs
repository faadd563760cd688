//! One line of `metrics.jsonl`: what one agent did in one rollout step (the contract `mappa report` reads).
use crate::engine::FinishReason;
use crate::rollout::Episode;
use crate::run_config::{RunConfig, Tool};
use crate::trainer::TrainStats;
use anyhow::Result;
use serde::Serialize;
use std::path::Path;

#[derive(Clone, Debug, Serialize)]
pub struct StepMetrics {
    /// Rollout steps done (1 after the first).
    pub step: u64,
    pub agent: String,
    /// Unix time at the end of the step.
    pub time: f64,
    /// Mean and std of the coach's 0-10 scores of the agent's scored actions.
    pub reward_mean: Option<f64>,
    pub reward_std: Option<f64>,
    pub actions: usize,
    /// Actions the coach could not score (left out of training).
    pub unscored: usize,
    /// Actions of this agent never generated: their context exceeded `rl.max_prompt_tokens`.
    pub skipped: usize,
    /// Action tokens in the loss.
    pub tokens: usize,
    pub optimizer_steps: usize,
    pub loss: f32,
    /// Mean per-token KL estimate to the reference.
    pub kl: f32,
    pub approx_kl: f32,
    pub clip_frac: f32,
    pub grad_norm: f32,
    pub lr: f32,
    pub response_len_mean: Option<f64>,
    pub truncation_rate: Option<f64>,
    /// Share of actions with code; None for agents without tools.
    pub tool_call_rate: Option<f64>,
    /// Share of the step's episodes whose final answer graded correct.
    pub train_accuracy: Option<f64>,
    /// Seconds of the whole step's phases (the same in every agent's line): the rollout (the coach scoring
    /// alongside), then waiting for the coach's last scores, then training.
    pub rollout_s: f64,
    pub coach_s: f64,
    pub train_s: f64,
    /// This agent's share of `train_s`.
    pub agent_train_s: f64,
    /// Training tokens (contexts included) per second of this agent's update.
    pub tokens_per_s: f64,
}

fn mean_std(v: &[f64]) -> (Option<f64>, Option<f64>) {
    if v.is_empty() {
        return (None, None);
    }
    let m = v.iter().sum::<f64>() / v.len() as f64;
    (Some(m), Some((v.iter().map(|x| (x - m).powi(2)).sum::<f64>() / v.len() as f64).sqrt()))
}

impl StepMetrics {
    /// `times` = [rollout, coach, train] seconds of the step.
    pub fn new(
        step: u64,
        cfg: &RunConfig,
        agent: usize,
        episodes: &[Episode],
        scores: &[Vec<Option<f32>>],
        s: TrainStats,
        times: [f64; 3],
    ) -> StepMetrics {
        let mut mine = Vec::new();
        let mut rewards = Vec::new();
        for (ep, sc) in episodes.iter().zip(scores) {
            for (a, score) in ep.actions.iter().zip(sc).filter(|(a, _)| a.agent == agent) {
                mine.push(a);
                rewards.extend(score.map(f64::from));
            }
        }
        let n = mine.len();
        let rate = |f: &dyn Fn(&crate::rollout::ActionRecord) -> bool| {
            (n > 0).then(|| mine.iter().filter(|a| f(a)).count() as f64 / n as f64)
        };
        let graded: Vec<bool> = episodes.iter().filter_map(|e| e.final_answer_correct).collect();
        let (reward_mean, reward_std) = mean_std(&rewards);
        StepMetrics {
            step,
            agent: cfg.agents[agent].name.clone(),
            time: std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0.0, |d| d.as_secs_f64()),
            reward_mean,
            reward_std,
            actions: n,
            unscored: n - rewards.len(),
            skipped: episodes.iter().flat_map(|e| &e.skipped).filter(|s| s.agent == agent).count(),
            tokens: s.tokens,
            optimizer_steps: s.optimizer_steps,
            loss: s.loss,
            kl: s.kl,
            approx_kl: s.approx_kl,
            clip_frac: s.clip_frac,
            grad_norm: s.grad_norm,
            lr: s.lr,
            response_len_mean: (n > 0).then(|| mine.iter().map(|a| a.tokens.len()).sum::<usize>() as f64 / n as f64),
            truncation_rate: rate(&|a| a.finish == FinishReason::Length),
            tool_call_rate: match cfg.agents[agent].tools.contains(&Tool::Python) {
                true => rate(&|a| a.code.is_some()),
                false => None,
            },
            train_accuracy: (!graded.is_empty())
                .then(|| graded.iter().filter(|&&c| c).count() as f64 / graded.len() as f64),
            rollout_s: times[0],
            coach_s: times[1],
            train_s: times[2],
            agent_train_s: s.seconds,
            tokens_per_s: s.tokens_per_s,
        }
    }

    pub fn append_to(&self, path: &Path) -> Result<()> {
        crate::jsonl::append(path, self)
    }
}
