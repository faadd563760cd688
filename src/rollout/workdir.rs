//! Working directories of an episode: `<work_root>/ep-<n>/`, shared by all agents when the sandbox scope
//! is `episode` (so the files one agent saves reach the next, as in MAPPA's DSBench pipeline), else one
//! `<work_root>/ep-<n>/<agent>/` per agent. An episode directory left over from an earlier run is removed
//! first; then the task's `data.stage_files` (e.g. its train.csv and test.csv) are copied in, so every
//! episode starts with exactly those.
use crate::data::{field, Task};
use crate::run_config::{DataConfig, WorkdirScope};
use anyhow::{bail, Context, Result};
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

/// The files `data.stage_files` gives `task`: (name in the working directory, source path under
/// `data.files_root`). Errors name the task and the field when the record lacks it.
pub fn staged_sources(task: &Task, data: &DataConfig) -> Result<Vec<(String, PathBuf)>> {
    let mut out = Vec::with_capacity(data.stage_files.len());
    for (name, path_field) in &data.stage_files {
        let Some(serde_json::Value::String(rel)) = field(&task.record, path_field) else {
            bail!("task `{}`: data.stage_files.\"{name}\" names field `{path_field}`, which is not a string", task.id)
        };
        out.push((name.clone(), data.files_root.join(rel)));
    }
    Ok(out)
}

/// Copies `task`'s staged files into `dir`.
pub fn stage_files(task: &Task, data: &DataConfig, dir: &Path) -> Result<()> {
    for (name, source) in staged_sources(task, data)? {
        std::fs::copy(&source, dir.join(&name))
            .with_context(|| format!("task `{}`: staging {} as {name}", task.id, source.display()))?;
    }
    Ok(())
}
