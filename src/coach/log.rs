//! The coach log: one JSON line per coach exchange (prompt, reply, status, latency, attempt), so every
//! reward that reaches training can be audited and every unscored action explained.
//!
//! Threads share one log; a line is serialised first and written with a single `write_all` under a
//! mutex, in append mode, so lines never interleave. Logging never fails a scoring call: a failed write
//! is reported once on stderr and counted.
use super::lock;
use crate::tokenizer::ChatMessage;
use anyhow::{Context, Result};
use serde::Serialize;
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{SystemTime, UNIX_EPOCH};

/// One coach exchange, as written to the log (with a `unix_ms` time stamp added).
#[derive(Debug, Serialize)]
pub struct LogRecord<'a> {
    pub agent: &'a str,
    /// 1 for the first call, 2 for the format retry.
    pub attempt: u32,
    /// "scored", "parse_error" or "backend_error".
    pub status: &'static str,
    pub latency_ms: f64,
    pub score: Option<f32>,
    pub error: Option<String>,
    pub messages: &'a [ChatMessage],
    pub reply: Option<&'a str>,
}

/// A record plus the wall-clock time it was written, in ms since the Unix epoch.
#[derive(Serialize)]
struct Stamped<'a> {
    unix_ms: u128,
    #[serde(flatten)]
    record: &'a LogRecord<'a>,
}

/// An append-only JSON-lines file shared by all coach threads.
pub struct CoachLog {
    path: PathBuf,
    file: Mutex<File>,
    failed_writes: AtomicU64,
}

impl CoachLog {
    /// Opens `path` for appending, creating it if needed.
    pub fn open(path: &Path) -> Result<CoachLog> {
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .with_context(|| format!("opening coach log {}", path.display()))?;
        Ok(CoachLog { path: path.to_path_buf(), file: Mutex::new(file), failed_writes: AtomicU64::new(0) })
    }

    /// Appends one record as one line.
    pub fn record(&self, record: &LogRecord) {
        let unix_ms = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis());
        let written =
            serde_json::to_string(&Stamped { unix_ms, record }).map_err(std::io::Error::from).and_then(|mut line| {
                line.push('\n');
                lock(&self.file).write_all(line.as_bytes())
            });
        if let Err(e) = written {
            if self.failed_writes.fetch_add(1, Ordering::Relaxed) == 0 {
                eprintln!(
                    "warning: coach log {}: write failed: {e} (further failures are only counted)",
                    self.path.display()
                );
            }
        }
    }

    /// How many records could not be written.
    pub fn failed_writes(&self) -> u64 {
        self.failed_writes.load(Ordering::Relaxed)
    }
}
