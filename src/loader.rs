//! One entry point for every model format: a Hugging Face directory or a `.gguf` file becomes a
//! `LoadedModel` (config, HF-named tensors, tokenizer spec) that every backend builds from.
use crate::{config::ModelConfig, tensor::Weights, tokenizer::TokenizerSpec};
use anyhow::{bail, Context, Result};
use std::io::Read;
use std::path::{Path, PathBuf};

pub struct LoadedModel {
    pub config: ModelConfig,
    pub weights: Weights,
    pub tokenizer: TokenizerSpec,
    /// Where it was loaded from, for messages.
    pub path: PathBuf,
}

/// Loads `path`: a directory is read as Hugging Face format, a file as GGUF (checked by its magic).
pub fn load(path: &Path) -> Result<LoadedModel> {
    if path.is_dir() {
        return crate::hf::load_dir(path)
            .with_context(|| format!("loading Hugging Face model directory {}", path.display()));
    }
    let mut magic = [0u8; 4];
    std::fs::File::open(path)
        .and_then(|mut f| f.read_exact(&mut magic))
        .with_context(|| format!("cannot read model file {}", path.display()))?;
    if &magic != b"GGUF" {
        bail!("{}: neither a Hugging Face model directory nor a GGUF file (magic {magic:02x?})", path.display());
    }
    crate::gguf::load(path).with_context(|| format!("loading GGUF file {}", path.display()))
}

/// Where tools/setup.sh installs nvcc and the test model: `$MAPPA_HOME`, else `~/.cache/mappa` (build.rs, which
/// cannot use this crate, follows the same rule). None when neither variable is set.
pub fn setup_home() -> Option<PathBuf> {
    std::env::var_os("MAPPA_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache/mappa")))
}

/// SmolLM2-135M-Instruct as tools/setup.sh installs it, relative to `setup_home()`.
pub const SMOLLM2_GGUF: &str = "models/SmolLM2-135M-Instruct.Q4_1.gguf";

/// The interpreter of the data-science environment tools/setup.sh installs (pinned numpy, pandas and
/// scikit-learn, for the DSBench pipeline's Python tool), relative to `setup_home()`.
pub const PY_DS: &str = "py-ds/bin/python";
