//! Hugging Face model directories: reading (config.json, safetensors, tokenizer files) and writing.
use crate::loader::LoadedModel;
pub fn load_dir(_path: &std::path::Path) -> anyhow::Result<LoadedModel> { anyhow::bail!("todo") }
