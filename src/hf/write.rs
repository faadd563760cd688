//! Writing a `LoadedModel` as a Hugging Face model directory that transformers and `load_dir` both read:
//! `model.safetensors` in one chosen dtype, `config.json`, the tokenizer files and `generation_config.json`.
//! It depends only on the in-memory model, never on where the weights came from (safetensors, GGUF or a
//! training run), so the same code exports models and saves checkpoints.
use super::{CONFIG, GENERATION_CONFIG, TOKENIZER, TOKENIZER_CONFIG, WEIGHTS};
use crate::loader::LoadedModel;
use crate::tensor::{DType, Tensor};
use anyhow::{Context, Result};
use half::{bf16, f16};
use safetensors::{Dtype, View};
use serde_json::{json, Value};
use std::borrow::Cow;
use std::collections::HashMap;
use std::path::Path;

/// Writes `model` into `out` (created if needed), every tensor converted to `dtype`. Each file is replaced
/// atomically; the directory as a whole is not (a crash between files can mix old and new files).
pub fn write_dir(model: &LoadedModel, out: &Path, dtype: DType) -> Result<()> {
    std::fs::create_dir_all(out).with_context(|| format!("cannot create {}", out.display()))?;
    let config = &model.config;
    let (st_dtype, torch_dtype) = match dtype {
        DType::F32 => (Dtype::F32, "float32"),
        DType::F16 => (Dtype::F16, "float16"),
        DType::BF16 => (Dtype::BF16, "bfloat16"),
    };

    // With tied embeddings transformers rebuilds lm_head from embed_tokens; a stored copy would be redundant.
    let tensors = model
        .weights
        .tensors
        .iter()
        .filter(|(name, _)| !(config.tie_word_embeddings && name.as_str() == "lm_head.weight"))
        .map(|(name, tensor)| (name.as_str(), Converted { tensor, dtype, st_dtype }));
    // transformers refuses safetensors files whose metadata lacks a known "format".
    let metadata = HashMap::from([("format".to_string(), "pt".to_string())]);
    replace_file(out, WEIGHTS, |tmp| Ok(safetensors::serialize_to_file(tensors, Some(metadata), tmp)?))?;

    let hf_config = config.to_hf_json(torch_dtype);
    let generation = json!({
        "bos_token_id": hf_config["bos_token_id"],
        "eos_token_id": hf_config["eos_token_id"],
    });
    let tokenizer = &model.tokenizer;
    let tokenizer_config = json!({
        "chat_template": tokenizer.chat_template,
        "bos_token": tokenizer.bos_token,
        "eos_token": tokenizer.eos_token,
        "add_bos_token": tokenizer.add_bos_token,
        "tokenizer_class": "PreTrainedTokenizerFast",
        "model_max_length": config.max_position_embeddings,
    });
    write_json(out, CONFIG, &hf_config)?;
    write_json(out, GENERATION_CONFIG, &generation)?;
    write_json(out, TOKENIZER_CONFIG, &tokenizer_config)?;
    replace_file(out, TOKENIZER, |tmp| Ok(std::fs::write(tmp, &tokenizer.tokenizer_json)?))
}

/// A tensor as the serializer sees it: converted to the output dtype one tensor at a time, when written,
/// so a whole model is never held twice in memory.
struct Converted<'a> {
    tensor: &'a Tensor,
    dtype: DType,
    st_dtype: Dtype,
}

impl View for Converted<'_> {
    fn dtype(&self) -> Dtype {
        self.st_dtype
    }

    fn shape(&self) -> &[usize] {
        &self.tensor.shape
    }

    fn data(&self) -> Cow<'_, [u8]> {
        if self.tensor.dtype == self.dtype {
            return Cow::Borrowed(self.tensor.bytes());
        }
        // to_f32 is exact for every source dtype, so this rounds once: to nearest even (half's conversions).
        let values = self.tensor.to_f32();
        Cow::Owned(match self.dtype {
            DType::F32 => little_endian(&values, f32::to_le_bytes),
            DType::F16 => little_endian(&values, |x| f16::from_f32(x).to_le_bytes()),
            DType::BF16 => little_endian(&values, |x| bf16::from_f32(x).to_le_bytes()),
        })
    }

    fn data_len(&self) -> usize {
        self.tensor.numel() * self.dtype.size()
    }
}

fn little_endian<const N: usize>(values: &[f32], encode: impl Fn(f32) -> [u8; N]) -> Vec<u8> {
    let mut bytes = Vec::with_capacity(values.len() * N);
    for &x in values {
        bytes.extend_from_slice(&encode(x));
    }
    bytes
}

fn write_json(out: &Path, name: &str, value: &Value) -> Result<()> {
    replace_file(out, name, |tmp| Ok(std::fs::write(tmp, serde_json::to_string_pretty(value)? + "\n")?))
}

/// Has `write` produce `out/name` under a temporary name, syncs it to disk and renames it into place, so an
/// interrupted write never leaves a partial file under the real name. Renaming also means a file that some
/// process has memory-mapped (a model loaded from `out`) is replaced, never truncated under it.
fn replace_file(out: &Path, name: &str, write: impl FnOnce(&Path) -> Result<()>) -> Result<()> {
    let dest = out.join(name);
    let tmp = out.join(format!(".{name}.{}.partial", std::process::id()));
    let written = write(&tmp).and_then(|()| Ok(std::fs::File::open(&tmp)?.sync_all()?));
    if let Err(e) = written {
        // Best effort: the write's own error is the one worth reporting.
        let _ = std::fs::remove_file(&tmp);
        return Err(e.context(format!("cannot write {}", dest.display())));
    }
    std::fs::rename(&tmp, &dest).with_context(|| format!("cannot rename {} to {}", tmp.display(), dest.display()))
}
