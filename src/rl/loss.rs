//! PPO-clip policy-gradient loss with its exact analytic gradient w.r.t. each token's log-prob, as MAPPA
//! trains (paper notes §2.5; MARTI `PolicyLoss`), plus the usual variants:
//!
//! ```text
//! ratio_t = exp(logp_t - logp_old_t)
//! l_t     = -min(ratio_t * A_t, clip(ratio_t, 1 - eps_low, 1 + eps_high) * A_t)
//! dual clip (Ye et al. 2020, "Mastering Complex Control in MOBA Games with Deep RL"; OpenRLHF/verl
//!   `dual_clip`), c > 1, only for A_t < 0: the objective is max(min(ratio*A, clip(ratio)*A), c*A), i.e.
//!   l_t = min(l_t, -c * A_t): the loss of a token whose ratio exploded past c is capped at c*|A_t|.
//! KL as loss: l_t += coef * k3(logp_t - logp_ref_t),  k3(d) = exp(-d) - 1 + d  (GRPO's estimator)
//! ```
//!
//! Gradient: d ratio / d logp = ratio, so an unclipped token has dl/dlogp = -ratio * A (+ KL term). A
//! clipped branch is active, with zero policy gradient, exactly when it is strictly the one chosen:
//! A > 0 and ratio > 1 + eps_high, A < 0 and ratio < 1 - eps_low, or (dual clip) A < 0 and ratio > c. On
//! a bound itself both branches are equal and the unclipped gradient is used, as torch's inclusive
//! clamp/min give. The KL term's gradient, coef * (1 - exp(-d)), is never clipped.
//!
//! Only tokens with `mask` true count; every such token must lie inside an action. Aggregations
//! (N = valid tokens, S = actions with at least one valid token, n_a = valid tokens of action a):
//! TokenMean sum_t l_t / N; SeqMeanTokenMean mean over actions of (sum_{t in a} l_t / n_a), MAPPA's
//! effective one (micro-batch of one sequence, token mean, gradient accumulation over sequences);
//! SeqSum mean over actions of sum_{t in a} l_t (verl's "seq-mean-token-sum").
//!
//! Diagnostics over valid tokens: `clip_frac` = fraction whose policy gradient a clip (PPO or dual)
//! zeroed; `approx_kl` = mean of logp_old - logp, the k1 estimate of KL(pi_old || pi) from tokens sampled
//! from pi_old (OpenRLHF's and verl's `ppo_kl`). Math is f64, outputs f32.
use super::{check_actions, check_lengths, Action, KlEstimator};
use anyhow::{bail, Result};

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Aggregation {
    TokenMean,
    #[default]
    SeqMeanTokenMean,
    SeqSum,
}

#[derive(Clone, Copy, Debug, PartialEq)]
pub struct PgLossConfig {
    pub eps_low: f32,
    pub eps_high: f32,
    /// Dual-clip constant c > 1 (None: off, MAPPA).
    pub dual_clip: Option<f32>,
    /// Coefficient of the per-token k3 KL-to-reference loss term (None: off, MAPPA puts KL in the reward).
    pub kl_loss_coef: Option<f32>,
    pub aggregation: Aggregation,
}

impl Default for PgLossConfig {
    fn default() -> Self {
        Self { eps_low: 0.2, eps_high: 0.2, dual_clip: None, kl_loss_coef: None, aggregation: Aggregation::default() }
    }
}

impl PgLossConfig {
    /// Errors on a clip range, dual-clip constant or KL coefficient out of range.
    pub fn check(&self) -> Result<()> {
        if !((0.0..1.0).contains(&self.eps_low) && self.eps_high >= 0.0 && self.eps_high.is_finite()) {
            bail!(
                "clip range needs 0 <= eps_low < 1 and finite eps_high >= 0, got {} / {}",
                self.eps_low,
                self.eps_high
            );
        }
        if let Some(c) = self.dual_clip.filter(|c| !(*c > 1.0 && c.is_finite())) {
            bail!("dual_clip must be a finite constant > 1, got {c}");
        }
        if let Some(k) = self.kl_loss_coef.filter(|k| !k.is_finite()) {
            bail!("kl_loss_coef must be finite, got {k}");
        }
        Ok(())
    }
}

#[derive(Clone, Debug, PartialEq)]
pub struct PgLoss {
    pub loss: f32,
    /// d loss / d logp_t; 0 where masked.
    pub dlogp: Vec<f32>,
    pub clip_frac: f32,
    pub approx_kl: f32,
    /// Valid (masked-in) tokens.
    pub tokens: usize,
}

/// One token's loss, its derivative w.r.t. logp, and whether a clip zeroed its policy gradient.
struct TokenTerm {
    loss: f64,
    grad: f64,
    clipped: bool,
}

/// `log_ratio` = logp - logp_old, `ref_log_ratio` = logp - logp_ref.
fn token_term(log_ratio: f64, adv: f64, ref_log_ratio: f64, cfg: &PgLossConfig) -> TokenTerm {
    let ratio = log_ratio.exp();
    let (lo, hi) = (1.0 - cfg.eps_low as f64, 1.0 + cfg.eps_high as f64);
    let dual = cfg.dual_clip.map(f64::from).filter(|&c| adv < 0.0 && ratio > c);
    let mut t = if let Some(c) = dual {
        TokenTerm { loss: -c * adv, grad: 0.0, clipped: true }
    } else if (adv > 0.0 && ratio > hi) || (adv < 0.0 && ratio < lo) {
        TokenTerm { loss: -ratio.clamp(lo, hi) * adv, grad: 0.0, clipped: true }
    } else {
        TokenTerm { loss: -ratio * adv, grad: -ratio * adv, clipped: false }
    };
    if let Some(coef) = cfg.kl_loss_coef.map(f64::from) {
        t.loss += coef * KlEstimator::K3.eval(ref_log_ratio);
        t.grad -= coef * (-ref_log_ratio).exp_m1();
    }
    t
}

/// Each token's weight in the aggregated loss (0 where `mask` is false) and the number of valid tokens:
/// 1/N (TokenMean), 1/(S n_a) (SeqMeanTokenMean) or 1/S (SeqSum) for a valid token of action a (module
/// docs). Errors when the mask marks a position outside every action. The CUDA loss takes these weights.
pub fn token_weights(mask: &[bool], actions: &[Action], aggregation: Aggregation) -> Result<(Vec<f64>, usize)> {
    check_actions(actions, mask.len())?;
    let valid_in = |a: &Action| mask[a.offset..a.offset + a.len].iter().filter(|&&m| m).count();
    let tokens: usize = actions.iter().map(valid_in).sum();
    let masked_in = mask.iter().filter(|&&m| m).count();
    if masked_in != tokens {
        bail!("mask marks {} positions outside every action", masked_in - tokens);
    }
    let seqs = actions.iter().filter(|a| valid_in(a) > 0).count();
    let mut weights = vec![0f64; mask.len()];
    for a in actions {
        let n = valid_in(a);
        if n == 0 {
            continue;
        }
        let weight = match aggregation {
            Aggregation::TokenMean => 1.0 / tokens as f64,
            Aggregation::SeqMeanTokenMean => 1.0 / (seqs * n) as f64,
            Aggregation::SeqSum => 1.0 / seqs as f64,
        };
        for i in (a.offset..a.offset + a.len).filter(|&i| mask[i]) {
            weights[i] = weight;
        }
    }
    Ok((weights, tokens))
}

/// The clipped policy-gradient loss over a packed batch and its gradient w.r.t. `logp`. All per-token
/// arrays have the batch length; `actions` are checked as in `compute_advantages`, and `mask` must be
/// false outside every action.
pub fn pg_loss(
    logp: &[f32],
    logp_old: &[f32],
    logp_ref: &[f32],
    adv: &[f32],
    mask: &[bool],
    actions: &[Action],
    cfg: &PgLossConfig,
) -> Result<PgLoss> {
    let t = logp.len();
    check_lengths(
        t,
        &[("logp_old", logp_old.len()), ("logp_ref", logp_ref.len()), ("adv", adv.len()), ("mask", mask.len())],
    )?;
    cfg.check()?;

    let (weights, tokens) = token_weights(mask, actions, cfg.aggregation)?;
    let mut dlogp = vec![0f32; t];
    let (mut loss, mut clipped, mut kl) = (0f64, 0usize, 0f64);
    for a in actions {
        for i in (a.offset..a.offset + a.len).filter(|&i| mask[i]) {
            let log_ratio = logp[i] as f64 - logp_old[i] as f64;
            let term = token_term(log_ratio, adv[i] as f64, logp[i] as f64 - logp_ref[i] as f64, cfg);
            loss += weights[i] * term.loss;
            dlogp[i] = (weights[i] * term.grad) as f32;
            clipped += term.clipped as usize;
            kl -= log_ratio;
        }
    }
    let per_token = |x: f64| if tokens == 0 { 0.0 } else { (x / tokens as f64) as f32 };
    Ok(PgLoss { loss: loss as f32, dlogp, clip_frac: per_token(clipped as f64), approx_kl: per_token(kl), tokens })
}
