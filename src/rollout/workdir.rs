//! Working directories of an episode: `<work_root>/ep-<n>/`, shared by all agents when the sandbox scope
//! is `episode`, else one `<work_root>/ep-<n>/<agent>/` per agent. Nothing is staged into them; an
//! episode directory left over from an earlier run is removed first, so every episode starts empty.
use crate::run_config::WorkdirScope;
use anyhow::{Context, Result};
use std::path::{Path, PathBuf};

pub fn episode_dir(work_root: &Path, n: usize) -> PathBuf {
    work_root.join(format!("ep-{n}"))
}

/// The directory agent `agent` works in.
pub fn agent_dir(episode_dir: &Path, scope: WorkdirScope, agent: &str) -> PathBuf {
    match scope {
        WorkdirScope::Episode => episode_dir.to_path_buf(),
        WorkdirScope::Agent => episode_dir.join(agent),
    }
}

/// Creates an empty episode directory (removing a stale one).
pub fn fresh_episode_dir(dir: &Path) -> Result<()> {
    if dir.exists() {
        std::fs::remove_dir_all(dir).with_context(|| format!("removing stale working directory {}", dir.display()))?;
    }
    std::fs::create_dir_all(dir).with_context(|| format!("creating working directory {}", dir.display()))
}

/// Sorted names of the regular files directly in `dir` (hidden ones, such as the sandbox's script, left out).
pub fn list_files(dir: &Path) -> Result<Vec<String>> {
    let mut names = Vec::new();
    for entry in std::fs::read_dir(dir).with_context(|| format!("listing {}", dir.display()))? {
        let entry = entry.with_context(|| format!("listing {}", dir.display()))?;
        let name = entry.file_name().to_string_lossy().into_owned();
        if !name.starts_with('.') && entry.file_type().is_ok_and(|t| t.is_file()) {
            names.push(name);
        }
    }
    names.sort();
    Ok(names)
}
