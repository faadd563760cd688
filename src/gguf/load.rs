//! GGUF file -> `LoadedModel`: the config from metadata, tensors renamed to Hugging Face names and reshaped
//! to PyTorch order, so that every backend builds from the same thing whatever the file format.
//!
//! Float tensors are zero-copy views of the mapped file; quantised ones are dequantised to f32. llama.cpp's
//! converter reorders the q/k rows of llama models for its RoPE layout; that is undone here, so the rest of
//! the engine only knows Hugging Face's rotate-half layout.
use super::quant;
use super::reader::{GgufFile, TensorInfo};
use super::value::Metadata;
use crate::config::{Arch, Llama3RopeScaling, ModelConfig};
use crate::loader::LoadedModel;
use crate::tensor::{DType, Tensor, Weights};
use anyhow::{bail, Context, Result};
use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;

/// Reads a `.gguf` file: weights, config and tokenizer.
pub fn load(path: &Path) -> Result<LoadedModel> {
    let file = GgufFile::open(path)?;
    let (config, weights) = load_weights(&file)?;
    let tokenizer =
        super::tokenizer::from_metadata(&file.metadata).context("building the tokenizer from GGUF metadata")?;
    Ok(LoadedModel { config, weights, tokenizer, path: path.to_owned() })
}

/// The config and HF-named tensors of an opened GGUF file, every tensor checked against the config.
pub fn load_weights(file: &GgufFile) -> Result<(ModelConfig, Weights)> {
    let mut config = read_config(file)?;
    let mut weights = Weights::default();
    for info in &file.tensors {
        let what = || format!("tensor {:?}", info.name);
        match hf_name(&info.name) {
            Some(name) => {
                let tensor = read_tensor(file, info, permuted_heads(&config, &name)).with_context(what)?;
                if weights.tensors.insert(name, tensor).is_some() {
                    bail!("tensor {:?} appears twice", info.name);
                }
            }
            // llama.cpp's only form of Llama 3 rope scaling: per-frequency divisors.
            None if info.name == "rope_freqs.weight" && config.arch == Arch::Llama => {
                let divisors = read_tensor(file, info, None).with_context(what)?.to_f32();
                config.rope_scaling = llama3_rope_scaling(&divisors, &config).with_context(what)?;
            }
            None => bail!(
                "tensor {:?} is not part of a {} model (unknown GGUF tensor name)",
                info.name,
                config.arch.model_type()
            ),
        }
    }
    check_tensors(&config, &weights).context("checking the tensors against the config")?;
    Ok((config, weights))
}

/// Typed access to metadata; a present key of the wrong type is an error, never a silent default.
struct Meta<'a>(&'a Metadata);

impl Meta<'_> {
    fn usize(&self, key: &str) -> Result<Option<usize>> {
        self.0
            .get(key)
            .map(|v| {
                v.as_u64()
                    .and_then(|x| usize::try_from(x).ok())
                    .with_context(|| format!("metadata {key:?} is not a non-negative integer: {v:?}"))
            })
            .transpose()
    }
    fn req_usize(&self, key: &str) -> Result<usize> {
        self.usize(key)?.with_context(|| format!("missing metadata key {key:?}"))
    }
    fn f32(&self, key: &str) -> Result<Option<f32>> {
        self.0
            .get(key)
            .map(|v| v.as_f64().map(|x| x as f32).with_context(|| format!("metadata {key:?} is not a number: {v:?}")))
            .transpose()
    }
    fn req_f32(&self, key: &str) -> Result<f32> {
        self.f32(key)?.with_context(|| format!("missing metadata key {key:?}"))
    }
    fn str(&self, key: &str) -> Result<Option<&str>> {
        self.0
            .get(key)
            .map(|v| v.as_str().with_context(|| format!("metadata {key:?} is not a string: {v:?}")))
            .transpose()
    }
    fn token_id(&self, key: &str) -> Result<Option<u32>> {
        self.usize(key)?
            .map(|id| u32::try_from(id).with_context(|| format!("metadata {key:?}: token id {id} is too large")))
            .transpose()
    }
}

fn read_config(file: &GgufFile) -> Result<ModelConfig> {
    let meta = Meta(&file.metadata);
    let arch_name = meta.str("general.architecture")?.context("missing metadata key \"general.architecture\"")?;
    let arch = match arch_name {
        "llama" | "qwen2" | "qwen3" => Arch::from_name(arch_name)?,
        other => bail!("unsupported architecture {other:?} (supported: llama, qwen2, qwen3)"),
    };
    let key = |k: &str| format!("{arch_name}.{k}");
    let hidden_size = meta.req_usize(&key("embedding_length"))?;
    let num_heads = meta.req_usize(&key("attention.head_count"))?;
    let head_dim = match meta.usize(&key("attention.key_length"))? {
        Some(h) => h,
        None if num_heads > 0 && hidden_size % num_heads == 0 => hidden_size / num_heads,
        None => bail!(
            "no {:?} and embedding_length {hidden_size} is not divisible by head_count {num_heads}",
            key("attention.key_length")
        ),
    };
    check_head_dims(&meta, arch_name, head_dim)?;
    let has_tensor = |name: &str| file.tensors.iter().any(|t| t.name == name);
    let config = ModelConfig {
        arch,
        vocab_size: vocab_size(&meta, arch_name)?,
        hidden_size,
        intermediate_size: meta.req_usize(&key("feed_forward_length"))?,
        num_layers: meta.req_usize(&key("block_count"))?,
        num_heads,
        num_kv_heads: meta.usize(&key("attention.head_count_kv"))?.unwrap_or(num_heads),
        head_dim,
        rms_norm_eps: meta.req_f32(&key("attention.layer_norm_rms_epsilon"))?,
        rope_theta: meta.f32(&key("rope.freq_base"))?.unwrap_or(10000.0),
        // Llama 3 scaling comes from the rope_freqs tensor, if the file has one (see load_weights).
        rope_scaling: None,
        max_position_embeddings: meta.req_usize(&key("context_length"))?,
        tie_word_embeddings: !has_tensor("output.weight"),
        attention_bias: has_tensor("blk.0.attn_q.bias"),
        qk_norm: arch == Arch::Qwen3,
        bos_token_id: meta.token_id("tokenizer.ggml.bos_token_id")?,
        eos_token_ids: stop_tokens(&meta)?,
    };
    config.validate()?;
    Ok(config)
}

/// Features of the GGUF config that ModelConfig cannot express are refused rather than ignored.
fn check_head_dims(meta: &Meta, arch: &str, head_dim: usize) -> Result<()> {
    for (k, what) in [
        ("attention.value_length", "a value head size different from the key head size"),
        ("rope.dimension_count", "partial rotary embeddings"),
    ] {
        let key = format!("{arch}.{k}");
        if let Some(n) = meta.usize(&key)?.filter(|&n| n != head_dim) {
            bail!("{key:?} is {n} but the head size is {head_dim}: {what} are not supported");
        }
    }
    let key = format!("{arch}.rope.scaling.type");
    match meta.str(&key)? {
        None | Some("none") => Ok(()),
        Some(t) => bail!("{key:?} is {t:?}: that RoPE scaling is not supported"),
    }
}

fn vocab_size(meta: &Meta, arch: &str) -> Result<usize> {
    let key = format!("{arch}.vocab_size");
    if let Some(n) = meta.usize(&key)? {
        return Ok(n);
    }
    match meta.0.get("tokenizer.ggml.tokens") {
        Some(tokens) => tokens.as_array().map(<[_]>::len).context("metadata \"tokenizer.ggml.tokens\" is not an array"),
        None => bail!("missing metadata keys {key:?} and \"tokenizer.ggml.tokens\": the vocabulary size is unknown"),
    }
}

/// The end-of-sequence token, and the end-of-turn token where a chat model names a different one.
fn stop_tokens(meta: &Meta) -> Result<Vec<u32>> {
    let mut ids = Vec::new();
    for key in ["tokenizer.ggml.eos_token_id", "tokenizer.ggml.eot_token_id"] {
        if let Some(id) = meta.token_id(key)?.filter(|id| !ids.contains(id)) {
            ids.push(id);
        }
    }
    Ok(ids)
}

/// GGUF's per-layer tensor names (between `blk.N.` and `.weight`/`.bias`) and Hugging Face's.
const LAYER_TENSORS: [(&str, &str); 11] = [
    ("attn_norm", "input_layernorm"),
    ("attn_q", "self_attn.q_proj"),
    ("attn_k", "self_attn.k_proj"),
    ("attn_v", "self_attn.v_proj"),
    ("attn_output", "self_attn.o_proj"),
    ("attn_q_norm", "self_attn.q_norm"),
    ("attn_k_norm", "self_attn.k_norm"),
    ("ffn_norm", "post_attention_layernorm"),
    ("ffn_gate", "mlp.gate_proj"),
    ("ffn_up", "mlp.up_proj"),
    ("ffn_down", "mlp.down_proj"),
];

/// The Hugging Face name of a GGUF tensor, or None for a name this mapping does not know.
fn hf_name(gguf: &str) -> Option<String> {
    let global = match gguf {
        "token_embd.weight" => Some("model.embed_tokens.weight"),
        "output_norm.weight" => Some("model.norm.weight"),
        "output.weight" => Some("lm_head.weight"),
        _ => None,
    };
    if let Some(name) = global {
        return Some(name.to_owned());
    }
    let (layer, rest) = gguf.strip_prefix("blk.")?.split_once('.')?;
    let layer: usize = layer.parse().ok()?;
    let (part, kind) = rest.rsplit_once('.')?;
    if kind != "weight" && kind != "bias" {
        return None;
    }
    let (_, hf) = LAYER_TENSORS.iter().find(|(g, _)| *g == part)?;
    Some(format!("model.layers.{layer}.{hf}.{kind}"))
}

/// For the tensors llama.cpp permuted (llama's q and k projections, weights and biases): their head count.
fn permuted_heads(c: &ModelConfig, hf_name: &str) -> Option<usize> {
    if c.arch != Arch::Llama {
        return None;
    }
    if hf_name.contains(".self_attn.q_proj.") {
        Some(c.num_heads)
    } else if hf_name.contains(".self_attn.k_proj.") {
        Some(c.num_kv_heads)
    } else {
        None
    }
}

fn float_dtype(ggml_type: u32) -> Option<DType> {
    match ggml_type {
        quant::F32 => Some(DType::F32),
        quant::F16 => Some(DType::F16),
        quant::BF16 => Some(DType::BF16),
        _ => None,
    }
}

/// One tensor in PyTorch shape order, its bytes checked to lie inside the file; rows un-permuted over
/// `permute_heads` heads when given.
fn read_tensor(file: &GgufFile, info: &TensorInfo, permute_heads: Option<usize>) -> Result<Tensor> {
    let shape = info
        .dims
        .iter()
        .rev()
        .map(|&d| usize::try_from(d).context("dimension too large"))
        .collect::<Result<Vec<_>>>()?;
    let numel = shape
        .iter()
        .try_fold(1usize, |n, &d| n.checked_mul(d))
        .with_context(|| format!("element count of {:?} overflows", info.dims))?;
    let nbytes = quant::byte_size(info.ggml_type, numel)?;
    // ggml quantises each row (the contiguous axis) on its own, so a row must hold whole blocks.
    if let Some(&row) = shape.last() {
        quant::byte_size(info.ggml_type, row).context("rows of partial blocks")?;
    }
    let range = info.offset..info.offset.saturating_add(nbytes);
    if range.end > file.map.len() {
        bail!(
            "its {nbytes} bytes of {} data at offset {} run past the end of the file ({} bytes; truncated?)",
            quant::type_name(info.ggml_type),
            info.offset,
            file.map.len()
        );
    }
    match (float_dtype(info.ggml_type), permute_heads) {
        (Some(dtype), None) => Tensor::mapped(shape, dtype, Arc::clone(&file.map), range),
        _ => {
            let mut values = quant::dequantize(info.ggml_type, &file.map[range], numel)?;
            if let Some(n_head) = permute_heads {
                values = unpermute_rows(&values, shape[0], n_head)?;
            }
            Ok(Tensor::from_f32(shape, values))
        }
    }
}

/// Undoes llama.cpp's `w.reshape(n_head, 2, half, cols).swapaxes(1, 2)`: within each head, GGUF row
/// `2 * i + s` holds Hugging Face row `s * half + i`. An empty tensor (no rows or no columns) stays empty.
fn unpermute_rows(values: &[f32], rows: usize, n_head: usize) -> Result<Vec<f32>> {
    if n_head == 0 || rows % (2 * n_head) != 0 {
        bail!("{rows} rows cannot be split into {n_head} heads of row pairs");
    }
    if values.is_empty() {
        return Ok(Vec::new());
    }
    let (cols, half) = (values.len() / rows, rows / n_head / 2);
    let mut out = vec![0f32; values.len()];
    for (g, src) in values.chunks_exact(cols).enumerate() {
        let (head, i, s) = (g / (2 * half), (g % (2 * half)) / 2, g % 2);
        out[(head * 2 * half + s * half + i) * cols..][..cols].copy_from_slice(src);
    }
    Ok(out)
}

/// llama.cpp keeps Llama 3 rope scaling only as per-frequency divisors: 1 for short wavelengths, `factor`
/// for long ones, a blend between. This recovers parameters that reproduce them. Only original/low_freq_factor
/// and original/high_freq_factor are observable, so low_freq_factor is taken as 1 (as in every Llama 3
/// release) and the result is checked against every divisor. All ones means no scaling.
fn llama3_rope_scaling(divisors: &[f32], c: &ModelConfig) -> Result<Option<Llama3RopeScaling>> {
    if divisors.len() != c.head_dim / 2 {
        bail!("has {} frequency factors, head size {} needs {}", divisors.len(), c.head_dim, c.head_dim / 2);
    }
    if divisors.iter().all(|&r| r == 1.0) {
        return Ok(None);
    }
    let wavelengths: Vec<f64> = (0..divisors.len())
        .map(|i| 2.0 * std::f64::consts::PI * (c.rope_theta as f64).powf(2.0 * i as f64 / c.head_dim as f64))
        .collect();
    let factor = divisors.iter().fold(1f32, |m, &r| m.max(r)) as f64;
    // In the blend r = 1 / ((1 - s) / factor + s), where s = (original / wavelength - low) / (high - low)
    // is linear in 1 / wavelength: s = a / wavelength - b with (low = 1) a = original / (high - 1), b = 1 / (high - 1).
    let blend: Vec<(f64, f64)> = wavelengths
        .iter()
        .zip(divisors)
        .map(|(&wl, &r)| (wl, r as f64))
        .filter(|&(_, r)| r > 1.0 + 1e-4 && r < factor * (1.0 - 1e-4))
        .map(|(wl, r)| (1.0 / wl, (1.0 / r - 1.0 / factor) / (1.0 - 1.0 / factor)))
        .collect();
    let [(x0, s0), .., (x1, s1)] = blend.as_slice() else {
        bail!("too few blended frequencies to recover Llama 3 rope scaling from");
    };
    let a = (s1 - s0) / (x1 - x0);
    let b = a * x0 - s0;
    if !(a > 0.0 && b > 0.0) {
        bail!("frequency factors do not follow Llama 3 rope scaling");
    }
    let scaling = Llama3RopeScaling {
        factor: factor as f32,
        low_freq_factor: 1.0,
        // Rounded so that config.json shows the release's value (4, not 3.9999998); checked below.
        high_freq_factor: ((1.0 + 1.0 / b) * 1e4).round() as f32 / 1e4,
        original_max_position_embeddings: (a / b).round() as usize,
    };
    for (i, (&wl, &r)) in wavelengths.iter().zip(divisors).enumerate() {
        let want = llama3_divisor(&scaling, wl);
        if (want - r as f64).abs() > 1e-3 * want {
            bail!("frequency factor {i} is {r}, the Llama 3 scaling that fits the others ({scaling:?}) gives {want}");
        }
    }
    Ok(Some(scaling))
}

/// What Llama 3 rope scaling divides a frequency of this wavelength by (llama.cpp's rope_freqs entry).
fn llama3_divisor(s: &Llama3RopeScaling, wavelength: f64) -> f64 {
    let (old, low, high, factor) = (
        s.original_max_position_embeddings as f64,
        s.low_freq_factor as f64,
        s.high_freq_factor as f64,
        s.factor as f64,
    );
    if wavelength < old / high {
        1.0
    } else if wavelength > old / low {
        factor
    } else {
        let smooth = (old / wavelength - low) / (high - low);
        1.0 / ((1.0 - smooth) / factor + smooth)
    }
}

/// Every tensor the config implies must be present with its shape, and no other may be.
fn check_tensors(c: &ModelConfig, w: &Weights) -> Result<()> {
    let expected = expected_shapes(c);
    for (name, shape) in &expected {
        w.get_shaped(name, shape)?;
    }
    if let Some(extra) = w.tensors.keys().find(|name| !expected.contains_key(*name)) {
        bail!("tensor {extra:?} is not used by a {} model with this config", c.arch.model_type());
    }
    Ok(())
}

fn expected_shapes(c: &ModelConfig) -> BTreeMap<String, Vec<usize>> {
    let (d, f, q, kv, hd, v) = (c.hidden_size, c.intermediate_size, c.q_dim(), c.kv_dim(), c.head_dim, c.vocab_size);
    let mut m = BTreeMap::from([
        ("model.embed_tokens.weight".to_owned(), vec![v, d]),
        ("model.norm.weight".to_owned(), vec![d]),
    ]);
    if !c.tie_word_embeddings {
        m.insert("lm_head.weight".to_owned(), vec![v, d]);
    }
    for l in 0..c.num_layers {
        let mut add = |name: &str, shape: Vec<usize>| m.insert(format!("model.layers.{l}.{name}"), shape);
        add("input_layernorm.weight", vec![d]);
        add("post_attention_layernorm.weight", vec![d]);
        add("self_attn.q_proj.weight", vec![q, d]);
        add("self_attn.k_proj.weight", vec![kv, d]);
        add("self_attn.v_proj.weight", vec![kv, d]);
        add("self_attn.o_proj.weight", vec![d, q]);
        if c.attention_bias {
            add("self_attn.q_proj.bias", vec![q]);
            add("self_attn.k_proj.bias", vec![kv]);
            add("self_attn.v_proj.bias", vec![kv]);
        }
        if c.qk_norm {
            add("self_attn.q_norm.weight", vec![hd]);
            add("self_attn.k_norm.weight", vec![hd]);
        }
        add("mlp.gate_proj.weight", vec![f, d]);
        add("mlp.up_proj.weight", vec![f, d]);
        add("mlp.down_proj.weight", vec![d, f]);
    }
    m
}
