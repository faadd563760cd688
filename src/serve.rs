//! `mappa serve`: an OpenAI-compatible HTTP server for a model or a checkpoint (issue 5). Not written yet.
use anyhow::{bail, Result};
use std::path::PathBuf;

#[derive(clap::Args, Debug)]
pub struct ServeArgs {
    #[arg(long)]
    pub model: PathBuf,
}

pub fn run(_a: ServeArgs) -> Result<()> {
    bail!("mappa serve is not written yet")
}
