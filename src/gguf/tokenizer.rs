//! Builds a Hugging Face `tokenizer.json` (and the chat template and special tokens) from GGUF metadata.
use super::value::Metadata;
use crate::tokenizer::TokenizerSpec;
use anyhow::Result;

pub fn from_metadata(_meta: &Metadata) -> Result<TokenizerSpec> {
    anyhow::bail!("todo")
}
