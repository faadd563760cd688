//! Checkpoints of a run: `RUN_DIR/checkpoints/step-NNNNNN/<agent>/` holds the agent's weights as a Hugging
//! Face directory (f32, so a resumed run continues bit for bit; `mappa convert --dtype bf16` shrinks it) and
//! `optimizer.safetensors`; `step-NNNNNN/state.json` is written last and marks the checkpoint complete.
use crate::hf::write_dir;
use crate::loader::LoadedModel;
use crate::tensor::DType;
use crate::trainer::Trainer;
use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

pub const OPTIMIZER_FILE: &str = "optimizer.safetensors";
const STATE_FILE: &str = "state.json";

/// What a complete checkpoint records besides the weights.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct State {
    /// Rollout steps done.
    pub step: u64,
}

pub fn dir(run_dir: &Path, step: u64) -> PathBuf {
    run_dir.join("checkpoints").join(format!("step-{step:06}"))
}

/// Writes every agent's weights and optimizer state, then the completion marker. `base` supplies the
/// tokenizer files written beside the weights.
pub fn save(run_dir: &Path, step: u64, agents: &[(&str, &Trainer)], base: &LoadedModel) -> Result<PathBuf> {
    let d = dir(run_dir, step);
    for (name, t) in agents {
        let out = d.join(name);
        let m = LoadedModel {
            config: t.model.config().clone(),
            weights: t.model.weights()?,
            tokenizer: base.tokenizer.clone(),
            path: out.clone(),
        };
        write_dir(&m, &out, DType::F32).with_context(|| format!("writing checkpoint {}", out.display()))?;
        t.save_optimizer(&out.join(OPTIMIZER_FILE))?;
    }
    let state = serde_json::to_string(&State { step })?;
    let tmp = d.join(format!("{STATE_FILE}.tmp"));
    std::fs::write(&tmp, state)?;
    std::fs::rename(&tmp, d.join(STATE_FILE))?;
    Ok(d)
}

/// The newest complete checkpoint of a run: (its directory, its state).
pub fn latest(run_dir: &Path) -> Result<Option<(PathBuf, State)>> {
    let root = run_dir.join("checkpoints");
    if !root.is_dir() {
        return Ok(None);
    }
    let mut best: Option<(PathBuf, State)> = None;
    for entry in std::fs::read_dir(&root).with_context(|| format!("listing {}", root.display()))? {
        let d = entry?.path();
        let Ok(text) = std::fs::read_to_string(d.join(STATE_FILE)) else { continue };
        let state: State =
            serde_json::from_str(&text).with_context(|| format!("{}: corrupt checkpoint state", d.display()))?;
        if best.as_ref().is_none_or(|(_, b)| state.step > b.step) {
            best = Some((d, state));
        }
    }
    Ok(best)
}
