//! The `Trainer`: one agent's policy, its optimizer and the REINFORCE++ update MAPPA runs after each rollout
//! step (paper notes §2.6). Given the agent's action samples of the step (context ++ action tokens, the
//! rollout's log-probs of the action tokens, the coach's reward):
//!
//! 1. reference log-probs of every action token from the frozen reference model;
//! 2. per-token rewards -beta*KL + the action's outcome term on its last token, and advantages
//!    (`rl::compute_advantages`, by `rl.estimator`): REINFORCE++ normalises the returns over all of this
//!    agent's samples of the step; GRPO and RLOO take the baseline from the sample's group (the samples
//!    of the same prompt: [`SampleGroup`], given to [`Trainer::train_step_grouped`]). Without groups
//!    ([`Trainer::train_step`]) every sample is its own group, so under GRPO and RLOO its outcome term is
//!    0 and only the KL penalty is left to learn from;
//! 3. for each epoch, the samples in a seeded shuffle, cut into mini-batches of `samples_per_optimizer_step`;
//!    per mini-batch, micro-batches of packed samples (up to `micro_batch_tokens`) go forward, through the
//!    clipped policy-gradient loss and backward into one gradient buffer, weighted so the sum is the
//!    mini-batch's loss under the configured aggregation; then clip the global norm and take an AdamW step.
//!
//! The rollout's log-probs are the old policy's: the weights that generated are the weights being trained
//! (no copy, no sync), so no extra forward pass recomputes them. The learning rate follows `schedule` over
//! optimizer steps. Everything is deterministic for a given seed, so a resumed run repeats a step exactly.
use crate::model::{Model, Packed};
use crate::optim::{AdamWConfig, LrSchedule};
use crate::rl::{compute_advantages, pg_loss, Action, AdvantageConfig, Aggregation, PgLossConfig};
use anyhow::{ensure, Context, Result};
use rand::seq::SliceRandom;
use rand::SeedableRng;
use serde::Serialize;
use std::collections::HashMap;
use std::path::Path;
use std::time::Instant;

/// One action of the agent, as a training sample.
#[derive(Clone, Debug, PartialEq)]
pub struct Sample {
    /// The context the agent saw, then the action's tokens.
    pub tokens: Vec<u32>,
    /// Length of the context; the action is `tokens[prompt_len..]` (at least one token).
    pub prompt_len: usize,
    /// The rollout policy's log-prob of each action token.
    pub logp_old: Vec<f32>,
    pub reward: f32,
    /// The action hit the token limit (no end-of-turn token).
    pub truncated: bool,
}

impl Sample {
    fn action_len(&self) -> usize {
        self.tokens.len() - self.prompt_len
    }

    /// Packed positions (within this sample) whose next token is an action token.
    fn scored_positions(&self) -> std::ops::Range<usize> {
        self.prompt_len - 1..self.tokens.len() - 1
    }
}

/// A sample's group under GRPO and RLOO: `(task index, turn)`. A trainer is one agent's, so equal keys
/// are that agent's action at the same turn on the same task, across the task's `rl.samples_per_prompt`
/// episodes.
pub type SampleGroup = (usize, usize);

#[derive(Clone, Debug)]
pub struct TrainerConfig {
    pub advantage: AdvantageConfig,
    pub loss: PgLossConfig,
    pub adamw: AdamWConfig,
    pub schedule: LrSchedule,
    pub max_grad_norm: f32,
    pub samples_per_optimizer_step: usize,
    pub epochs: usize,
    /// Samples are packed into one forward pass up to this many tokens (a longer sample goes alone).
    pub micro_batch_tokens: usize,
    /// The sampling temperature of the rollout: log-probs are taken under softmax(logits / temperature).
    pub temperature: f32,
    /// Keep only layer inputs in the forward and recompute the rest in the backward.
    pub recompute: bool,
}

/// What one `train_step` did, for metrics.jsonl.
#[derive(Clone, Debug, Default, Serialize)]
pub struct TrainStats {
    pub samples: usize,
    /// Action tokens in the loss (valid tokens, summed over epochs).
    pub tokens: usize,
    pub optimizer_steps: usize,
    /// Mean over mini-batches.
    pub loss: f32,
    /// Token-weighted over all micro-batches.
    pub clip_frac: f32,
    pub approx_kl: f32,
    /// Mean per-token KL estimate to the reference (advantage statistics).
    pub kl: f32,
    pub reward_mean: f32,
    /// Mean over optimizer steps, before clipping.
    pub grad_norm: f32,
    /// The learning rate of the last optimizer step.
    pub lr: f32,
    pub seconds: f64,
    /// Tokens through forward + backward (contexts included) per second.
    pub tokens_per_s: f64,
}

pub struct Trainer {
    /// The agent's policy: the weights its rollouts sample from are the ones this trainer updates.
    pub model: Box<dyn Model>,
    cfg: TrainerConfig,
}

impl Trainer {
    /// A trainer with fresh optimizer state, or resuming from state saved by `save_optimizer`.
    pub fn new(mut model: Box<dyn Model>, cfg: TrainerConfig, saved_optimizer: Option<&Path>) -> Result<Trainer> {
        ensure!(cfg.samples_per_optimizer_step > 0, "samples_per_optimizer_step must be positive");
        ensure!(cfg.epochs > 0, "epochs must be positive");
        ensure!(cfg.temperature > 0.0, "the training temperature must be positive");
        model.init_optimizer(cfg.adamw, saved_optimizer)?;
        Ok(Trainer { model, cfg })
    }

    pub fn optimizer_steps(&self) -> u64 {
        self.model.optimizer_steps()
    }

    pub fn save_optimizer(&self, path: &Path) -> Result<()> {
        self.model.save_optimizer(path)
    }

    /// One rollout step's update for this agent (module docs) with every sample its own group (GRPO and
    /// RLOO: outcome term 0); `reference` is the frozen reference model, `seed` picks the shuffle.
    pub fn train_step(&mut self, samples: &[Sample], reference: &dyn Model, seed: u64) -> Result<TrainStats> {
        self.train_step_grouped(samples, None, reference, seed)
    }

    /// [`Trainer::train_step`] with each sample's group (one per sample), the baseline of GRPO and RLOO.
    pub fn train_step_grouped(
        &mut self,
        samples: &[Sample],
        groups: Option<&[SampleGroup]>,
        reference: &dyn Model,
        seed: u64,
    ) -> Result<TrainStats> {
        let start = Instant::now();
        if let Some(g) = groups {
            ensure!(g.len() == samples.len(), "{} groups for {} samples", g.len(), samples.len());
        }
        for (i, s) in samples.iter().enumerate() {
            ensure!(
                s.prompt_len > 0 && s.action_len() > 0,
                "sample {i}: needs a context and at least one action token"
            );
            ensure!(
                s.logp_old.len() == s.action_len(),
                "sample {i}: {} old log-probs for {} action tokens",
                s.logp_old.len(),
                s.action_len()
            );
        }
        let mut stats = TrainStats { samples: samples.len(), ..TrainStats::default() };
        if samples.is_empty() {
            return Ok(stats);
        }
        let logp_ref = self.logprobs(reference, samples)?;
        let logp_old: Vec<f32> = samples.iter().flat_map(|s| s.logp_old.iter().copied()).collect();
        let actions = action_segments(samples, groups);
        let adv = compute_advantages(&logp_old, &logp_ref, &actions, 1, &self.cfg.advantage)?;
        (stats.kl, stats.reward_mean) = (adv.per_agent[0].mean_kl, adv.per_agent[0].mean_reward);

        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
        let spans = token_spans(samples);
        let all = Batch { spans: &spans, logp_old: &logp_old, logp_ref: &logp_ref, adv: &adv.adv, mask: &adv.mask };
        let (mut forwarded, mut loss_sum, mut norm_sum, mut clip_sum, mut kl_sum) = (0usize, 0f64, 0f64, 0f64, 0f64);
        for _ in 0..self.cfg.epochs {
            let mut order: Vec<usize> = (0..samples.len()).collect();
            order.shuffle(&mut rng);
            for mini in order.chunks(self.cfg.samples_per_optimizer_step) {
                let valid = all.valid(mini);
                if valid.0 == 0 {
                    continue; // every action here is masked out: nothing to learn, no step
                }
                let denom = averaged_over(self.cfg.loss.aggregation, valid);
                self.model.zero_grad();
                for micro in micro_batches(samples, mini, self.cfg.micro_batch_tokens) {
                    let p = Packing::new(samples, &spans, &micro);
                    let (logp_old, logp_ref, adv, mask) = all.gather(&p.spans);
                    // pg_loss averages over this micro-batch; rescale to the mini-batch's denominator.
                    let w = averaged_over(self.cfg.loss.aggregation, all.valid(&micro)) / denom;
                    let mut stats_of_micro = None;
                    let mut loss_fn = |logp: &[f32]| -> Result<Vec<f32>> {
                        let loss = pg_loss(logp, &logp_old, &logp_ref, &adv, &mask, &p.actions, &self.cfg.loss)?;
                        let dlogp = loss.dlogp.iter().map(|g| g * w).collect();
                        stats_of_micro = Some((loss.loss, loss.clip_frac, loss.approx_kl, loss.tokens));
                        Ok(dlogp)
                    };
                    if all.valid(&micro).0 == 0 {
                        continue; // nothing valid in this micro-batch: no pass
                    }
                    self.model.forward_backward(p.packed(), self.cfg.temperature, self.cfg.recompute, &mut loss_fn)?;
                    let (loss, clip_frac, approx_kl, tokens) =
                        stats_of_micro.context("the model never called the loss")?;
                    loss_sum += (loss * w) as f64;
                    clip_sum += clip_frac as f64 * tokens as f64;
                    kl_sum += approx_kl as f64 * tokens as f64;
                    forwarded += p.tokens.len();
                }
                stats.tokens += valid.0;
                norm_sum += self.optimizer_step(&mut stats)? as f64;
            }
        }
        self.model.park_training_state()?;
        let steps = stats.optimizer_steps.max(1) as f64;
        let tokens = stats.tokens.max(1) as f64;
        stats.loss = (loss_sum / steps) as f32;
        stats.grad_norm = (norm_sum / steps) as f32;
        stats.clip_frac = (clip_sum / tokens) as f32;
        stats.approx_kl = (kl_sum / tokens) as f32;
        stats.seconds = start.elapsed().as_secs_f64();
        stats.tokens_per_s = forwarded as f64 / stats.seconds;
        Ok(stats)
    }

    /// Clip the global norm, then one AdamW step at the schedule's learning rate; returns the pre-clip norm.
    fn optimizer_step(&mut self, stats: &mut TrainStats) -> Result<f32> {
        let lr = self.cfg.schedule.lr(self.model.optimizer_steps());
        let norm = self.model.optimizer_step(lr, self.cfg.max_grad_norm)?;
        stats.optimizer_steps += 1;
        stats.lr = lr;
        Ok(norm)
    }

    /// Log-probs of every action token of `samples` under `model`, in sample order.
    fn logprobs(&self, model: &dyn Model, samples: &[Sample]) -> Result<Vec<f32>> {
        let mut out = Vec::new();
        let all: Vec<usize> = (0..samples.len()).collect();
        let spans = token_spans(samples);
        for group in micro_batches(samples, &all, self.cfg.micro_batch_tokens) {
            let p = Packing::new(samples, &spans, &group);
            out.extend(model.sequence_logprobs(p.packed(), self.cfg.temperature)?);
        }
        Ok(out)
    }
}

/// The per-action-token arrays of all samples of the step (sample order, action tokens only).
struct Batch<'a> {
    /// Each sample's range in the arrays.
    spans: &'a [std::ops::Range<usize>],
    logp_old: &'a [f32],
    logp_ref: &'a [f32],
    adv: &'a [f32],
    mask: &'a [bool],
}

impl Batch<'_> {
    /// (valid tokens, actions with a valid token) among the samples `idx`.
    fn valid(&self, idx: &[usize]) -> (usize, usize) {
        idx.iter().fold((0, 0), |(t, a), &i| {
            let n = self.mask[self.spans[i].clone()].iter().filter(|&&m| m).count();
            (t + n, a + usize::from(n > 0))
        })
    }

    /// The arrays restricted to `spans`, concatenated.
    fn gather(&self, spans: &[std::ops::Range<usize>]) -> (Vec<f32>, Vec<f32>, Vec<f32>, Vec<bool>) {
        let cat = |v: &[f32]| spans.iter().flat_map(|r| v[r.clone()].iter().copied()).collect::<Vec<_>>();
        let mask = spans.iter().flat_map(|r| self.mask[r.clone()].iter().copied()).collect();
        (cat(self.logp_old), cat(self.logp_ref), cat(self.adv), mask)
    }
}

/// What a loss under `agg` is averaged over, given (valid tokens, actions with a valid token).
fn averaged_over(agg: Aggregation, (tokens, actions): (usize, usize)) -> f32 {
    match agg {
        Aggregation::TokenMean => tokens as f32,
        Aggregation::SeqMeanTokenMean | Aggregation::SeqSum => actions as f32,
    }
}

/// Each sample's range in the concatenated action-token arrays.
fn token_spans(samples: &[Sample]) -> Vec<std::ops::Range<usize>> {
    let mut at = 0;
    samples
        .iter()
        .map(|s| {
            at += s.action_len();
            at - s.action_len()..at
        })
        .collect()
}

/// One action per sample over the concatenated action-token arrays (agent 0: a trainer is one agent), its
/// group the index of its key's first appearance (without keys, its own index).
fn action_segments(samples: &[Sample], groups: Option<&[SampleGroup]>) -> Vec<Action> {
    let mut ids: HashMap<SampleGroup, usize> = HashMap::new();
    token_spans(samples)
        .into_iter()
        .zip(samples)
        .enumerate()
        .map(|(i, (r, s))| {
            let group = groups.map_or(i, |g| *ids.entry(g[i]).or_insert(i));
            Action { offset: r.start, len: r.len(), agent: 0, reward: s.reward, truncated: s.truncated, group }
        })
        .collect()
}

/// Consecutive groups of `idx` whose packed length stays within `budget` tokens (a longer sample alone).
fn micro_batches(samples: &[Sample], idx: &[usize], budget: usize) -> Vec<Vec<usize>> {
    let mut out: Vec<Vec<usize>> = Vec::new();
    let mut used = 0;
    for &i in idx {
        let n = samples[i].tokens.len();
        match out.last_mut() {
            Some(group) if used + n <= budget => group.push(i),
            _ => {
                out.push(vec![i]);
                used = 0;
            }
        }
        used += n;
    }
    out
}

/// Samples packed into one forward pass.
struct Packing {
    tokens: Vec<u32>,
    seq_lens: Vec<usize>,
    /// Packed positions whose next token is an action token, in sample order.
    positions: Vec<usize>,
    /// Each sample's range in the step's action-token arrays.
    spans: Vec<std::ops::Range<usize>>,
    /// The samples' actions over this packing's own action-token arrays.
    actions: Vec<Action>,
}

impl Packing {
    fn packed(&self) -> Packed<'_> {
        Packed { tokens: &self.tokens, seq_lens: &self.seq_lens, positions: &self.positions }
    }

    fn new(samples: &[Sample], spans: &[std::ops::Range<usize>], group: &[usize]) -> Packing {
        let mut p = Packing {
            tokens: Vec::new(),
            seq_lens: Vec::new(),
            positions: Vec::new(),
            spans: Vec::new(),
            actions: Vec::new(),
        };
        for &i in group {
            let s = &samples[i];
            let base = p.tokens.len();
            p.positions.extend(s.scored_positions().map(|q| base + q));
            p.actions.push(Action {
                offset: p.spans.iter().map(|r| r.len()).sum(),
                len: s.action_len(),
                agent: 0,
                reward: s.reward,
                truncated: s.truncated,
                group: i, // the loss ignores groups
            });
            p.tokens.extend_from_slice(&s.tokens);
            p.seq_lens.push(s.tokens.len());
            p.spans.push(spans[i].clone());
        }
        p
    }
}
