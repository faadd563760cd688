//! Per-token advantages for per-action rewards: REINFORCE++ (the default, as MAPPA runs it through
//! MARTI/OpenRLHF, paper notes §2.4), GRPO and RLOO, chosen by [`Estimator`]. One path for all three: the
//! estimator only decides the action's outcome term `s` and whether the returns are whitened afterwards.
//!
//! ```text
//! d_t  = logp_old_t - logp_ref_t                      log-ratio of rollout policy to frozen reference
//! kl_t = k1 | k2 | k3 (d_t)                           see KlEstimator
//! s    = reward                                       reinforce_pp
//!      = (reward - mean_g) / (std_g + GRPO_EPS)       grpo: mean and sample std (N - 1) of the group's rewards
//!      = reward - mean_{j in g, j != i}(reward_j)     rloo: leave-one-out baseline
//! r_t  = -beta * kl_t  + [t = last token] * s         the outcome term is paid on the action's last token
//! G_t  = sum_{k = t..last} r_k                        undiscounted, never crosses the action's end
//! A_t  = (G_t - mean) / sqrt(max(var, VAR_EPS))       reinforce_pp: mean/var over all valid tokens of ONE agent
//! A_t  = G_t                                          grpo, rloo: the group already gave the baseline (and scale)
//! ```
//!
//! A group `g` is the valid actions of one agent with the same [`Action::group`]: in MAPPA the same agent's
//! action at the same turn on the same task, over the task's `rl.samples_per_prompt` episodes. Groups of
//! fewer than two valid actions have no baseline: their outcome term is 0 under GRPO and RLOO, so such an
//! action's advantage is only its KL penalty (a batch where every action is its own group learns from the
//! KL term alone). GRPO's std is the *sample* std (divide by N - 1), `torch.std`'s default, as in the
//! GRPO implementations of TRL (`GRPOTrainer`) and OpenRLHF (`group_norm`); DeepSeekMath (Shao et al. 2024,
//! §4.1.2) writes `(r_i - mean(r)) / std(r)` without fixing the divisor. GRPO_EPS = 1e-9 is OpenRLHF's
//! (MAPPA's stack); rewards all equal in a group give exactly 0. Without whitening, GRPO and RLOO ignore
//! `normalize_std`. A masked (truncated) action is in no group's statistics; its own `s` is taken against
//! its group's valid actions (it only shows in `returns`: it has no advantage).
//!
//! REINFORCE++'s whitening is OpenRLHF's masked form (`experience_maker.py` and `NaiveReplayBuffer.normalize`):
//! population variance (divide by N, not N - 1), and the epsilon clamps the *variance* from below instead
//! of being added to the std, so the divisor is max(std, 1e-4). When all returns are equal, G - mean is
//! exactly 0 and so is the advantage. `normalize_std = false` is OpenRLHF's `--no_advantage_std_norm`:
//! the mean is still subtracted. A token is valid when it lies in an action that is not masked out
//! (a truncated action, when `mask_truncated`); invalid tokens get mask false and advantage 0, and are
//! left out of every statistic. Returns are still written for truncated actions (they are well defined);
//! positions outside every action get return 0.
//!
//! Passes: per-group reward sums and centred squares (GRPO, RLOO; two-pass, exact when rewards are equal),
//! one segmented reverse scan per action (returns, plus per-agent sums for the mean), one reduction per
//! agent for the centred variance (the two-pass form OpenRLHF uses, exact when returns are equal), one pass
//! writing the advantages. Per-token math and sums are in f64; outputs are f32.
use super::{check_actions, check_lengths, Action};
use anyhow::{bail, Result};
use std::collections::HashMap;

/// Lower clamp on the per-agent return variance before the division (OpenRLHF's `clamp(min=1e-8)`).
pub const VAR_EPS: f64 = 1e-8;

/// Added to a group's reward std under GRPO (OpenRLHF `group_norm`: `rewards.std(-1) + 1e-9`).
pub const GRPO_EPS: f64 = 1e-9;

/// How an action's reward becomes its outcome term and whether returns are whitened (module docs).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Estimator {
    /// REINFORCE++: the raw reward, returns whitened over the agent's whole batch. MAPPA's choice.
    #[default]
    ReinforcePp,
    /// GRPO: the reward normalised within its group (mean, sample std); no batch whitening.
    Grpo,
    /// RLOO: the reward minus the mean reward of the rest of its group; no batch whitening.
    Rloo,
}

/// Per-token estimators of KL(pi_old || pi_ref) from a token sampled from pi_old, with
/// d = logp_old - logp_ref (Schulman, "Approximating KL divergence"; OpenRLHF `compute_approx_kl`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum KlEstimator {
    /// k1 = d: unbiased, can be negative per token. MAPPA's choice.
    #[default]
    K1,
    /// k2 = d^2 / 2: biased, non-negative; its gradient is the reverse-KL gradient.
    K2,
    /// k3 = exp(-d) - 1 + d = (ratio - 1) - log ratio with ratio = pi_ref / pi_old: unbiased, non-negative.
    K3,
}

impl KlEstimator {
    /// The estimate for log-ratio `d` (policy minus reference).
    pub fn eval(self, d: f64) -> f64 {
        match self {
            KlEstimator::K1 => d,
            KlEstimator::K2 => 0.5 * d * d,
            KlEstimator::K3 => (-d).exp_m1() + d,
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq)]
pub struct AdvantageConfig {
    /// KL penalty coefficient folded into the per-token reward (MAPPA: 0.01, fixed).
    pub beta: f32,
    pub kl: KlEstimator,
    /// Divide the centred returns by the agent's std (false: only subtract the mean).
    pub normalize_std: bool,
    /// Mask out truncated actions (MAPPA: `mask_truncated_completions=True`).
    pub mask_truncated: bool,
    pub estimator: Estimator,
}

impl Default for AdvantageConfig {
    fn default() -> Self {
        Self {
            beta: 0.01,
            kl: KlEstimator::K1,
            normalize_std: true,
            mask_truncated: true,
            estimator: Estimator::ReinforcePp,
        }
    }
}

/// Statistics of one agent's valid tokens (all 0 when it has none).
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct AgentStats {
    /// Valid tokens: the normalisation count.
    pub tokens: usize,
    /// Mean of G over valid tokens: the mean REINFORCE++ subtracts.
    pub mean_return: f32,
    /// Population std of G over valid tokens, before the VAR_EPS clamp.
    pub std_return: f32,
    /// Mean coach reward per valid action (each action counts once, whatever its length).
    pub mean_reward: f32,
    /// Mean per-token KL estimate over valid tokens.
    pub mean_kl: f32,
}

#[derive(Clone, Debug, PartialEq)]
pub struct Advantages {
    /// Per token; 0 where `mask` is false.
    pub adv: Vec<f32>,
    /// Per token G_t; 0 outside every action.
    pub returns: Vec<f32>,
    /// Per token: part of a valid action.
    pub mask: Vec<bool>,
    /// Indexed by agent, `num_agents` entries.
    pub per_agent: Vec<AgentStats>,
}

/// Per-agent running sums of the reverse scan, then the variance reduction.
#[derive(Clone, Copy, Default)]
struct Sums {
    tokens: usize,
    actions: usize,
    ret: f64,
    kl: f64,
    reward: f64,
    centred_sq: f64,
}

/// `sum / n`, or 0 for an empty set (an agent without valid tokens or actions).
fn mean(sum: f64, n: usize) -> f64 {
    if n == 0 {
        0.0
    } else {
        sum / n as f64
    }
}

impl Sums {
    fn mean_return(&self) -> f64 {
        mean(self.ret, self.tokens)
    }
    fn var_return(&self) -> f64 {
        mean(self.centred_sq, self.tokens)
    }
}

/// A group's valid actions: count, reward sum, then the centred sum of squares.
#[derive(Clone, Copy, Default)]
struct GroupSums {
    n: usize,
    sum: f64,
    centred_sq: f64,
}

/// Each action's outcome term `s` (module docs), by estimator; `valid` says which actions are in the
/// group statistics.
fn outcome_terms(actions: &[Action], estimator: Estimator, valid: impl Fn(&Action) -> bool) -> Vec<f64> {
    if estimator == Estimator::ReinforcePp {
        return actions.iter().map(|a| a.reward as f64).collect();
    }
    let key = |a: &Action| (a.agent, a.group);
    let mut groups: HashMap<(usize, usize), GroupSums> = HashMap::new();
    for a in actions.iter().filter(|a| valid(a)) {
        let g = groups.entry(key(a)).or_default();
        g.n += 1;
        g.sum += a.reward as f64;
    }
    for a in actions.iter().filter(|a| valid(a)) {
        let g = groups.get_mut(&key(a)).expect("group counted above");
        let mean = g.sum / g.n as f64;
        g.centred_sq += (a.reward as f64 - mean).powi(2);
    }
    actions
        .iter()
        .map(|a| {
            let g = groups.get(&key(a)).copied().unwrap_or_default();
            let r = a.reward as f64;
            match estimator {
                Estimator::ReinforcePp => unreachable!("handled above"),
                Estimator::Grpo if g.n < 2 => 0.0,
                Estimator::Grpo => {
                    let std = (g.centred_sq / (g.n - 1) as f64).sqrt();
                    (r - g.sum / g.n as f64) / (std + GRPO_EPS)
                }
                Estimator::Rloo if g.n < 2 => 0.0,
                Estimator::Rloo => {
                    // The others: the whole group for a masked action, the group without it otherwise.
                    let (others, rest) = if valid(a) { (g.n - 1, g.sum - r) } else { (g.n, g.sum) };
                    r - rest / others as f64
                }
            }
        })
        .collect()
}

/// Advantages for a packed batch. `logp_old`/`logp_ref` have one entry per packed token; every
/// `action.agent` must be below `num_agents`. Errors on length mismatches, empty, out-of-range or
/// overlapping actions, and bad agent indices or beta.
pub fn compute_advantages(
    logp_old: &[f32],
    logp_ref: &[f32],
    actions: &[Action],
    num_agents: usize,
    cfg: &AdvantageConfig,
) -> Result<Advantages> {
    let t = logp_old.len();
    check_lengths(t, &[("logp_ref", logp_ref.len())])?;
    check_actions(actions, t)?;
    if let Some((i, a)) = actions.iter().enumerate().find(|(_, a)| a.agent >= num_agents) {
        bail!("action {i} names agent {}, but there are only {num_agents} agents", a.agent);
    }
    if !cfg.beta.is_finite() {
        bail!("beta must be finite, got {}", cfg.beta);
    }
    let beta = cfg.beta as f64;
    let valid = |a: &Action| !(cfg.mask_truncated && a.truncated);

    let mut returns = vec![0f32; t];
    let mut mask = vec![false; t];
    let mut sums = vec![Sums::default(); num_agents];
    let outcome = outcome_terms(actions, cfg.estimator, valid);

    // Pass 1: segmented reverse scan, G_t = r_t + G_{t+1}, restarted at every action's last token.
    for (a, &s_i) in actions.iter().zip(&outcome) {
        let span = a.offset..a.offset + a.len;
        let ok = valid(a);
        let s = &mut sums[a.agent];
        let mut g = s_i;
        for i in span.clone().rev() {
            let kl = cfg.kl.eval(logp_old[i] as f64 - logp_ref[i] as f64);
            g -= beta * kl;
            returns[i] = g as f32;
            if ok {
                s.ret += returns[i] as f64;
                s.kl += kl;
            }
        }
        if ok {
            mask[span].fill(true);
            s.tokens += a.len;
            s.actions += 1;
            s.reward += a.reward as f64;
        }
    }

    // Pass 2: centred sum of squares per agent, from the stored f32 returns so equal returns give 0.
    for a in actions.iter().filter(|a| valid(a)) {
        let s = &mut sums[a.agent];
        let mean = s.mean_return();
        let span = &returns[a.offset..a.offset + a.len];
        s.centred_sq += span.iter().map(|&g| (g as f64 - mean).powi(2)).sum::<f64>();
    }

    // Pass 3: whiten (REINFORCE++ only; GRPO and RLOO got their baseline from the group).
    let mut adv = vec![0f32; t];
    for a in actions.iter().filter(|a| valid(a)) {
        let s = &sums[a.agent];
        let (mean, rstd) = match cfg.estimator {
            Estimator::ReinforcePp => {
                (s.mean_return(), if cfg.normalize_std { s.var_return().max(VAR_EPS).sqrt().recip() } else { 1.0 })
            }
            Estimator::Grpo | Estimator::Rloo => (0.0, 1.0),
        };
        for i in a.offset..a.offset + a.len {
            adv[i] = ((returns[i] as f64 - mean) * rstd) as f32;
        }
    }

    let per_agent = sums
        .iter()
        .map(|s| AgentStats {
            tokens: s.tokens,
            mean_return: s.mean_return() as f32,
            std_return: s.var_return().sqrt() as f32,
            mean_reward: mean(s.reward, s.actions) as f32,
            mean_kl: mean(s.kl, s.tokens) as f32,
        })
        .collect();
    Ok(Advantages { adv, returns, mask, per_agent })
}
