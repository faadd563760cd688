//! Checkpoints of a run: `RUN_DIR/checkpoints/step-NNNNNN/<agent>/` holds the agent's weights as a Hugging
//! Face directory (f32, so a resumed run continues bit for bit; `mappa convert --dtype bf16` shrinks it) and
//! `optimizer.safetensors`; `step-NNNNNN/state.json` is written last and marks the checkpoint complete.
use crate::hf::write_dir;
use crate::loader::LoadedModel;
use crate::tensor::DType;
use crate::tokenizer::TokenizerSpec;
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

/// Writes every agent's weights and optimizer state and the state file into a temporary directory beside
/// the checkpoints, then renames it into place as a whole: a checkpoint either exists complete or not at
/// all, whenever the process dies. Each agent comes with the tokenizer files written beside its weights (its
/// base model's).
pub fn save(run_dir: &Path, step: u64, agents: &[(&str, &Trainer, &TokenizerSpec)]) -> Result<PathBuf> {
    let d = dir(run_dir, step);
    let root = run_dir.join("checkpoints");
    let tmp = root.join(format!("{PARTIAL_PREFIX}{step:06}.{}", std::process::id()));
    let written = (|| -> Result<()> {
        if tmp.exists() {
            std::fs::remove_dir_all(&tmp)?;
        }
        for (name, t, tokenizer) in agents {
            let out = tmp.join(name);
            let m = LoadedModel {
                config: t.model.config().clone(),
                weights: t.model.weights()?,
                tokenizer: (*tokenizer).clone(),
                path: out.clone(),
            };
            write_dir(&m, &out, DType::F32).with_context(|| format!("writing checkpoint {}", out.display()))?;
            t.save_optimizer(&out.join(OPTIMIZER_FILE))?;
        }
        std::fs::write(tmp.join(STATE_FILE), serde_json::to_string(&State { step })?)?;
        std::fs::File::open(&tmp)?.sync_all()?;
        if d.exists() {
            std::fs::remove_dir_all(&d)?; // an incomplete leftover of the same step
        }
        std::fs::rename(&tmp, &d)?;
        Ok(())
    })();
    if written.is_err() {
        let _ = std::fs::remove_dir_all(&tmp);
    }
    written.with_context(|| format!("writing checkpoint {}", d.display()))?;
    Ok(d)
}

/// Temporary checkpoint directories start with this.
const PARTIAL_PREFIX: &str = ".partial-step-";

/// Removes what an interrupted `save` left in `run_dir/checkpoints` (its temporary directories, and step
/// directories without a state file from before saves were atomic); says on stderr what went.
pub fn sweep(run_dir: &Path) -> Result<()> {
    let root = run_dir.join("checkpoints");
    if !root.is_dir() {
        return Ok(());
    }
    for entry in std::fs::read_dir(&root).with_context(|| format!("listing {}", root.display()))? {
        let p = entry?.path();
        let name = p.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
        let stale = name.starts_with(PARTIAL_PREFIX) || (name.starts_with("step-") && !p.join(STATE_FILE).is_file());
        if stale && p.is_dir() {
            std::fs::remove_dir_all(&p)
                .with_context(|| format!("removing the interrupted checkpoint {}", p.display()))?;
            eprintln!("removed {}: a checkpoint interrupted before it was complete", p.display());
        }
    }
    Ok(())
}

/// The run's complete checkpoints (a state file that parses), newest first; unreadable ones are listed with
/// the reason instead, for the caller's message.
pub fn complete(run_dir: &Path) -> Result<(Vec<(PathBuf, State)>, Vec<String>)> {
    let root = run_dir.join("checkpoints");
    let (mut ok, mut bad) = (Vec::new(), Vec::new());
    if !root.is_dir() {
        return Ok((ok, bad));
    }
    for entry in std::fs::read_dir(&root).with_context(|| format!("listing {}", root.display()))? {
        let d = entry?.path();
        let Ok(text) = std::fs::read_to_string(d.join(STATE_FILE)) else { continue };
        match serde_json::from_str::<State>(&text) {
            Ok(state) => ok.push((d, state)),
            Err(e) => bad.push(format!("{}: corrupt {STATE_FILE} ({e})", d.display())),
        }
    }
    ok.sort_by_key(|(_, s)| std::cmp::Reverse(s.step));
    Ok((ok, bad))
}
