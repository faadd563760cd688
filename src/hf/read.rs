//! Reading a Hugging Face model directory: `config.json`, the weights (`model.safetensors`, or shards named by
//! `model.safetensors.index.json`) and the tokenizer files. Each weight file is memory-mapped once and every
//! tensor is a zero-copy view into its map, so loading costs no copies and the pages stay shareable.
//! Every failure is an error naming the file; nothing read from disk is trusted enough to panic on.
use super::{CHAT_TEMPLATE, CONFIG, GENERATION_CONFIG, TOKENIZER, TOKENIZER_CONFIG, WEIGHTS, WEIGHTS_INDEX};
use crate::config::ModelConfig;
use crate::loader::LoadedModel;
use crate::tensor::{DType, Tensor, Weights};
use crate::tokenizer::TokenizerSpec;
use anyhow::{bail, Context, Result};
use memmap2::Mmap;
use safetensors::tensor::Metadata;
use safetensors::{Dtype, SafeTensors};
use serde_json::Value;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// Loads the model in `dir`.
pub fn load_dir(dir: &Path) -> Result<LoadedModel> {
    let config_path = dir.join(CONFIG);
    let mut config = ModelConfig::from_hf_json(&read_text(&config_path)?)
        .with_context(|| format!("reading {}", config_path.display()))?;
    let generation_path = dir.join(GENERATION_CONFIG);
    if let Some(generation) = read_json_opt(&generation_path)? {
        // transformers stops on the union of both files' eos ids; chat models often list extra ones here.
        let extra = token_ids(generation.get("eos_token_id"))
            .with_context(|| format!("{}: eos_token_id", generation_path.display()))?;
        for id in extra {
            if !config.eos_token_ids.contains(&id) {
                config.eos_token_ids.push(id);
            }
        }
    }
    Ok(LoadedModel { config, weights: load_weights(dir)?, tokenizer: load_tokenizer(dir)?, path: dir.to_path_buf() })
}

/// The single-file layout wins when both are present, as in transformers.
fn load_weights(dir: &Path) -> Result<Weights> {
    let mut weights = Weights::default();
    let single = dir.join(WEIGHTS);
    if single.is_file() {
        let file = SafetensorsFile::open(&single)?;
        for name in file.metadata.offset_keys() {
            let tensor = file.tensor(&name)?;
            weights.tensors.insert(name, tensor);
        }
        return Ok(weights);
    }
    let index_path = dir.join(WEIGHTS_INDEX);
    if !index_path.is_file() {
        bail!("{}: neither {WEIGHTS} nor {WEIGHTS_INDEX} is present", dir.display());
    }
    let index = read_json_opt(&index_path)?.with_context(|| format!("cannot read {}", index_path.display()))?;
    let weight_map = index
        .get("weight_map")
        .and_then(Value::as_object)
        .with_context(|| format!("{}: no \"weight_map\" object", index_path.display()))?;
    // Group by shard so each file is mapped and parsed once.
    let mut by_shard: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
    for (tensor, shard) in weight_map {
        let shard = shard.as_str().with_context(|| {
            format!("{}: shard of tensor {tensor:?} is not a file name: {shard}", index_path.display())
        })?;
        // A shard is a file beside the index, never a path that leaves the directory.
        if std::path::Path::new(shard).file_name() != Some(std::ffi::OsStr::new(shard)) {
            bail!("{}: shard {shard:?} of tensor {tensor:?} is not a plain file name", index_path.display());
        }
        by_shard.entry(shard).or_default().push(tensor);
    }
    for (shard, names) in by_shard {
        let file = SafetensorsFile::open(&dir.join(shard))
            .with_context(|| format!("shard {shard:?} named by {}", index_path.display()))?;
        for name in names {
            weights.tensors.insert(name.to_string(), file.tensor(name)?);
        }
    }
    Ok(weights)
}

/// One memory-mapped safetensors file with its parsed (and validated) header.
struct SafetensorsFile {
    path: PathBuf,
    map: Arc<Mmap>,
    metadata: Metadata,
    /// Where the data section starts: after the 8-byte little-endian header length and the header itself.
    data_start: usize,
}

impl SafetensorsFile {
    fn open(path: &Path) -> Result<SafetensorsFile> {
        let file = std::fs::File::open(path).with_context(|| format!("cannot open {}", path.display()))?;
        // SAFETY: the map is read-only; like every mmap-based loader we rely on nobody truncating or rewriting
        // the file in place while it is loaded (our own writer replaces files by rename, which is safe).
        let map = unsafe { Mmap::map(&file) }.with_context(|| format!("cannot memory-map {}", path.display()))?;
        // read_metadata checks the header JSON, that offsets are contiguous and match shape * dtype, and that
        // the data section ends exactly at the end of the file: truncated or padded files fail here.
        let (header_len, metadata) = SafeTensors::read_metadata(&map)
            .with_context(|| format!("{} is not a valid safetensors file", path.display()))?;
        Ok(SafetensorsFile { path: path.to_path_buf(), map: Arc::new(map), metadata, data_start: 8 + header_len })
    }

    fn tensor(&self, name: &str) -> Result<Tensor> {
        let path = self.path.display();
        let info = self.metadata.info(name).with_context(|| format!("{path} has no tensor {name:?}"))?;
        let dtype = match info.dtype {
            Dtype::F32 => DType::F32,
            Dtype::F16 => DType::F16,
            Dtype::BF16 => DType::BF16,
            other => bail!("{path}: tensor {name:?} has dtype {other}; only F32, F16 and BF16 are supported"),
        };
        let (start, end) = info.data_offsets;
        Tensor::mapped(info.shape.clone(), dtype, self.map.clone(), self.data_start + start..self.data_start + end)
            .with_context(|| format!("{path}: tensor {name:?}"))
    }
}

fn load_tokenizer(dir: &Path) -> Result<TokenizerSpec> {
    let mut spec = TokenizerSpec { tokenizer_json: read_text(&dir.join(TOKENIZER))?, ..TokenizerSpec::default() };
    let config_path = dir.join(TOKENIZER_CONFIG);
    if let Some(config) = read_json_opt(&config_path)? {
        apply_tokenizer_config(&mut spec, &config).with_context(|| format!("reading {}", config_path.display()))?;
    }
    // Newer transformers save the template as its own file; it wins over the copy in tokenizer_config.json.
    if let Some(template) = read_text_opt(&dir.join(CHAT_TEMPLATE))? {
        spec.chat_template = Some(template);
    }
    Ok(spec)
}

fn apply_tokenizer_config(spec: &mut TokenizerSpec, config: &Value) -> Result<()> {
    spec.chat_template = match config.get("chat_template") {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) => Some(s.clone()),
        // Several named templates: the unnamed use (plain chat) is the one called "default".
        Some(Value::Array(named)) => named
            .iter()
            .find(|t| t.get("name").and_then(Value::as_str) == Some("default"))
            .map(|t| {
                t.get("template").and_then(Value::as_str).context("chat_template \"default\" has no template string")
            })
            .transpose()?
            .map(str::to_string),
        Some(other) => bail!("chat_template is neither a string nor a list of templates: {other}"),
    };
    spec.bos_token = special_token(config, "bos_token")?;
    spec.eos_token = special_token(config, "eos_token")?;
    spec.add_bos_token = match config.get("add_bos_token") {
        None | Some(Value::Null) => false,
        Some(v) => v.as_bool().with_context(|| format!("add_bos_token is not a boolean: {v}"))?,
    };
    Ok(())
}

/// A special token is written either as its text or as an AddedToken object whose text is "content".
fn special_token(config: &Value, key: &str) -> Result<Option<String>> {
    match config.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.clone())),
        Some(v) => {
            let content = v.get("content").and_then(Value::as_str);
            Ok(Some(
                content
                    .with_context(|| format!("{key} is neither a string nor an object with \"content\": {v}"))?
                    .to_string(),
            ))
        }
    }
}

/// A token id field: absent, one integer, or a list of them.
fn token_ids(v: Option<&Value>) -> Result<Vec<u32>> {
    let one =
        |x: &Value| x.as_u64().and_then(|n| u32::try_from(n).ok()).with_context(|| format!("not a token id: {x}"));
    match v {
        None | Some(Value::Null) => Ok(vec![]),
        Some(Value::Array(xs)) => xs.iter().map(one).collect(),
        Some(x) => Ok(vec![one(x)?]),
    }
}

fn read_text(path: &Path) -> Result<String> {
    read_text_opt(path)?.with_context(|| format!("{} is missing", path.display()))
}

/// The file's text, or None when it does not exist (any other I/O error is an error).
fn read_text_opt(path: &Path) -> Result<Option<String>> {
    match std::fs::read_to_string(path) {
        Ok(text) => Ok(Some(text)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e).with_context(|| format!("cannot read {}", path.display())),
    }
}

fn read_json_opt(path: &Path) -> Result<Option<Value>> {
    read_text_opt(path)?
        .map(|text| serde_json::from_str(&text).with_context(|| format!("{} is not valid JSON", path.display())))
        .transpose()
}
