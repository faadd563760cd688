//! JSON Lines files of a run (`metrics.jsonl`, `eval.jsonl`): one record appended per line.
use anyhow::{Context, Result};
use serde::Serialize;
use std::io::Write;
use std::path::Path;

/// Appends `record` as one line to `path`, creating the file if needed.
pub fn append(path: &Path, record: &impl Serialize) -> Result<()> {
    // One write of the whole line: a process killed mid-append leaves at most an unterminated last line (a
    // resume sets it aside), never half a line that the next append would run into.
    let line = serde_json::to_string(record).context("serialising a JSON line")? + "\n";
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .with_context(|| format!("opening {}", path.display()))?;
    f.write_all(line.as_bytes()).with_context(|| format!("writing {}", path.display()))
}
