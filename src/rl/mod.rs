//! Per-action advantages (REINFORCE++, GRPO or RLOO) and the clipped policy-gradient loss, CPU reference
//! (issues 4 and 13).
//!
//! MAPPA turns every agent action (one completion) into its own training sample with one scalar reward
//! from the coach. A training batch is packed: per-token arrays of length T over all samples, and a list
//! of [`Action`] segments naming which positions are an action's generated tokens (prompt tokens belong
//! to no segment and get no loss). [`advantage`] turns rewards and log-probs into per-token advantages
//! with the [`Estimator`] chosen by `rl.estimator`: `reinforce_pp` (default; returns whitened over the
//! agent's batch), `grpo` (reward normalised by its group's mean and sample std) or `rloo` (reward minus
//! the mean of the rest of its group), a group being the actions with the same [`Action::group`] (same
//! agent, turn and task across the task's samples; a group of one gets outcome term 0);
//! [`loss`] turns advantages and the current policy's log-probs into the PPO-clip loss and its exact
//! gradient. Both are plain f64-accumulating loops: the reference the CUDA kernels are tested against.
use anyhow::{bail, Result};

pub mod advantage;
pub mod loss;

pub use advantage::{
    compute_advantages, AdvantageConfig, Advantages, AgentStats, Estimator, KlEstimator, GRPO_EPS, VAR_EPS,
};
pub use loss::{pg_loss, token_weights, Aggregation, PgLoss, PgLossConfig};

/// One agent action: its generated tokens are the packed positions `offset..offset + len`.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Action {
    pub offset: usize,
    pub len: usize,
    /// Which agent (policy) produced it; advantages are normalised per agent.
    pub agent: usize,
    /// The coach's reward for the whole action, paid on its last token.
    pub reward: f32,
    /// The completion hit the length limit (no EOS).
    pub truncated: bool,
    /// GRPO/RLOO: actions of the same agent with equal `group` are samples of one prompt and share a
    /// baseline (MAPPA: the same turn of the same task). An opaque id; REINFORCE++ ignores it.
    pub group: usize,
}

/// Checks that every action is non-empty, lies inside `0..t` and overlaps no other action. Errors name
/// the offending action(s) by index into `actions`.
pub(crate) fn check_actions(actions: &[Action], t: usize) -> Result<()> {
    for (i, a) in actions.iter().enumerate() {
        if a.len == 0 {
            bail!("action {i} (offset {}) is empty: it has no last token to carry its reward", a.offset);
        }
        if a.offset.checked_add(a.len).is_none_or(|end| end > t) {
            bail!("action {i} (offset {}, len {}) runs past the batch of {t} tokens", a.offset, a.len);
        }
    }
    let mut order: Vec<usize> = (0..actions.len()).collect();
    order.sort_by_key(|&i| actions[i].offset);
    for w in order.windows(2) {
        let (a, b) = (&actions[w[0]], &actions[w[1]]);
        if a.offset + a.len > b.offset {
            bail!(
                "action {} (offset {}, len {}) overlaps action {} (offset {}, len {})",
                w[0],
                a.offset,
                a.len,
                w[1],
                b.offset,
                b.len
            );
        }
    }
    Ok(())
}

/// Checks that every per-token array has the batch length `t`.
pub(crate) fn check_lengths(t: usize, arrays: &[(&str, usize)]) -> Result<()> {
    for &(name, len) in arrays {
        if len != t {
            bail!("{name} has {len} entries, expected {t} (one per packed token)");
        }
    }
    Ok(())
}
