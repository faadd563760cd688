//! `mappa report RUN_DIR`: curves and a one-page HTML summary of a training run (issue 5). Not written yet.
use anyhow::{bail, Result};
use std::path::PathBuf;

#[derive(clap::Args, Debug)]
pub struct ReportArgs {
    pub run_dir: PathBuf,
}

pub fn run(_a: ReportArgs) -> Result<()> {
    bail!("mappa report is not written yet")
}
