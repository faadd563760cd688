//! ModelConfig: the shapes and hyperparameters of a llama / qwen2 / qwen3 decoder.
//!
//! Everything the forward pass needs comes from here, never from constants. It is read from a Hugging Face
//! `config.json` (or from GGUF metadata, in gguf/) and written back as `config.json` by the HF writer.
use anyhow::{bail, Context, Result};
use serde_json::{json, Map, Value};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Arch {
    /// llama, mistral-style: no biases, no q/k norm.
    Llama,
    /// qwen2: biases on the q, k and v projections.
    Qwen2,
    /// qwen3: RMSNorm over each head of q and k before RoPE, no biases.
    Qwen3,
}

impl Arch {
    pub fn model_type(self) -> &'static str {
        match self {
            Arch::Llama => "llama",
            Arch::Qwen2 => "qwen2",
            Arch::Qwen3 => "qwen3",
        }
    }
    fn hf_class(self) -> &'static str {
        match self {
            Arch::Llama => "LlamaForCausalLM",
            Arch::Qwen2 => "Qwen2ForCausalLM",
            Arch::Qwen3 => "Qwen3ForCausalLM",
        }
    }
    pub fn from_name(name: &str) -> Result<Arch> {
        Ok(match name {
            "llama" | "mistral" => Arch::Llama,
            "qwen2" => Arch::Qwen2,
            "qwen3" => Arch::Qwen3,
            other => bail!("unsupported architecture {other:?} (supported: llama, qwen2, qwen3)"),
        })
    }
}

/// Llama 3's frequency-dependent RoPE rescaling (`rope_scaling.rope_type == "llama3"`).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Llama3RopeScaling {
    pub factor: f32,
    pub low_freq_factor: f32,
    pub high_freq_factor: f32,
    pub original_max_position_embeddings: usize,
}

#[derive(Clone, Debug, PartialEq)]
pub struct ModelConfig {
    pub arch: Arch,
    pub vocab_size: usize,
    pub hidden_size: usize,
    pub intermediate_size: usize,
    pub num_layers: usize,
    pub num_heads: usize,
    pub num_kv_heads: usize,
    pub head_dim: usize,
    pub rms_norm_eps: f32,
    pub rope_theta: f32,
    pub rope_scaling: Option<Llama3RopeScaling>,
    pub max_position_embeddings: usize,
    pub tie_word_embeddings: bool,
    /// Biases on q/k/v projections (qwen2; llama with `attention_bias`).
    pub attention_bias: bool,
    /// Per-head RMSNorm on q and k (qwen3).
    pub qk_norm: bool,
    pub bos_token_id: Option<u32>,
    pub eos_token_ids: Vec<u32>,
}

impl ModelConfig {
    pub fn q_dim(&self) -> usize {
        self.num_heads * self.head_dim
    }
    pub fn kv_dim(&self) -> usize {
        self.num_kv_heads * self.head_dim
    }

    /// Checks the relations the forward pass relies on.
    pub fn validate(&self) -> Result<()> {
        // Sizes: positive, and below bounds far past any model this decoder runs (a corrupt header must not
        // become an allocation that aborts).
        let sizes = [
            ("vocab_size", self.vocab_size, 1 << 24),
            ("hidden_size", self.hidden_size, 1 << 17),
            ("intermediate_size", self.intermediate_size, 1 << 20),
            ("num_hidden_layers", self.num_layers, 1 << 12),
            ("num_attention_heads", self.num_heads, 1 << 12),
            ("num_key_value_heads", self.num_kv_heads, 1 << 12),
            ("head_dim", self.head_dim, 1 << 12),
            ("max_position_embeddings", self.max_position_embeddings, 1 << 24),
        ];
        for (k, v, max) in sizes {
            if v == 0 || v > max {
                bail!("{k} must be in [1, {max}], got {v}");
            }
        }
        let ids = self
            .eos_token_ids
            .iter()
            .map(|&id| ("an end-of-text", id))
            .chain(self.bos_token_id.map(|id| ("the begin-of-text", id)));
        for (what, id) in ids {
            if id as usize >= self.vocab_size {
                bail!("{what} token id {id} is outside the vocabulary (size {})", self.vocab_size);
            }
        }
        if self.num_heads % self.num_kv_heads != 0 {
            bail!(
                "num_attention_heads ({}) is not a multiple of num_key_value_heads ({})",
                self.num_heads,
                self.num_kv_heads
            );
        }
        if self.head_dim % 2 != 0 {
            bail!("head_dim ({}) must be even for RoPE", self.head_dim);
        }
        let positive = |x: f32| x.is_finite() && x > 0.0; // NaN fails too
        if !positive(self.rms_norm_eps) || !positive(self.rope_theta) {
            bail!("rms_norm_eps and rope_theta must be positive");
        }
        Ok(())
    }

    /// Parses a Hugging Face `config.json`.
    pub fn from_hf_json(text: &str) -> Result<ModelConfig> {
        let v: Value = serde_json::from_str(text).context("config.json is not valid JSON")?;
        let model_type = v.get("model_type").and_then(Value::as_str).context("missing field \"model_type\"")?;
        let arch = Arch::from_name(model_type).context("model_type")?;
        let req = |k: &str| -> Result<usize> {
            let x = v.get(k).with_context(|| format!("missing field {k:?}"))?;
            x.as_u64().map(|n| n as usize).with_context(|| format!("field {k:?} is not a non-negative integer: {x}"))
        };
        let opt_f32 = |k: &str, default: f32| -> Result<f32> {
            match v.get(k) {
                None | Some(Value::Null) => Ok(default),
                Some(x) => x.as_f64().map(|f| f as f32).with_context(|| format!("field {k:?} is not a number: {x}")),
            }
        };
        let opt_bool = |k: &str, default: bool| -> Result<bool> {
            match v.get(k) {
                None | Some(Value::Null) => Ok(default),
                Some(x) => x.as_bool().with_context(|| format!("field {k:?} is not a boolean: {x}")),
            }
        };
        let hidden_size = req("hidden_size")?;
        let num_heads = req("num_attention_heads")?;
        let num_kv_heads = match v.get("num_key_value_heads") {
            None | Some(Value::Null) => num_heads,
            Some(_) => req("num_key_value_heads")?,
        };
        let head_dim = match v.get("head_dim") {
            None | Some(Value::Null) => {
                if num_heads == 0 || hidden_size % num_heads != 0 {
                    bail!("no \"head_dim\" and hidden_size {hidden_size} is not divisible by num_attention_heads {num_heads}");
                }
                hidden_size / num_heads
            }
            Some(_) => req("head_dim")?,
        };
        reject_unsupported(&v)?;
        // transformers >= 5 writes `rope_parameters` (theta and scaling together); older versions write
        // `rope_theta` and `rope_scaling`.
        let (rope_theta, rope_scaling) = match v.get("rope_parameters") {
            Some(rp @ Value::Object(_)) => {
                let theta = rp
                    .get("rope_theta")
                    .and_then(Value::as_f64)
                    .context("rope_parameters.rope_theta missing or not a number")?;
                (theta as f32, parse_rope_scaling(rp)?)
            }
            _ => (
                opt_f32("rope_theta", 10000.0)?,
                match v.get("rope_scaling") {
                    None | Some(Value::Null) => None,
                    Some(rs) => parse_rope_scaling(rs)?,
                },
            ),
        };
        let cfg = ModelConfig {
            arch,
            vocab_size: req("vocab_size")?,
            hidden_size,
            intermediate_size: req("intermediate_size")?,
            num_layers: req("num_hidden_layers")?,
            num_heads,
            num_kv_heads,
            head_dim,
            rms_norm_eps: opt_f32("rms_norm_eps", 1e-6)?,
            rope_theta,
            rope_scaling,
            max_position_embeddings: match v.get("max_position_embeddings") {
                None | Some(Value::Null) => 4096,
                Some(_) => req("max_position_embeddings")?,
            },
            tie_word_embeddings: opt_bool("tie_word_embeddings", false)?,
            attention_bias: opt_bool("attention_bias", arch == Arch::Qwen2)?,
            qk_norm: arch == Arch::Qwen3,
            bos_token_id: token_ids(v.get("bos_token_id"), "bos_token_id")?.first().copied(),
            eos_token_ids: token_ids(v.get("eos_token_id"), "eos_token_id")?,
        };
        cfg.validate()?;
        Ok(cfg)
    }

    /// The `config.json` that transformers (and our own loader) read back to the same config.
    pub fn to_hf_json(&self, torch_dtype: &str) -> Value {
        let mut m = Map::new();
        m.insert("architectures".into(), json!([self.arch.hf_class()]));
        m.insert("model_type".into(), json!(self.arch.model_type()));
        m.insert("vocab_size".into(), json!(self.vocab_size));
        m.insert("hidden_size".into(), json!(self.hidden_size));
        m.insert("intermediate_size".into(), json!(self.intermediate_size));
        m.insert("num_hidden_layers".into(), json!(self.num_layers));
        m.insert("num_attention_heads".into(), json!(self.num_heads));
        m.insert("num_key_value_heads".into(), json!(self.num_kv_heads));
        m.insert("head_dim".into(), json!(self.head_dim));
        m.insert("hidden_act".into(), json!("silu"));
        m.insert("rms_norm_eps".into(), json!(self.rms_norm_eps));
        m.insert("rope_theta".into(), json!(self.rope_theta));
        m.insert(
            "rope_scaling".into(),
            match self.rope_scaling {
                None => Value::Null,
                Some(s) => json!({
                    "rope_type": "llama3",
                    "factor": s.factor,
                    "low_freq_factor": s.low_freq_factor,
                    "high_freq_factor": s.high_freq_factor,
                    "original_max_position_embeddings": s.original_max_position_embeddings,
                }),
            },
        );
        m.insert("max_position_embeddings".into(), json!(self.max_position_embeddings));
        m.insert("tie_word_embeddings".into(), json!(self.tie_word_embeddings));
        m.insert("attention_bias".into(), json!(self.attention_bias));
        if let Some(b) = self.bos_token_id {
            m.insert("bos_token_id".into(), json!(b));
        }
        m.insert(
            "eos_token_id".into(),
            match self.eos_token_ids.as_slice() {
                [one] => json!(one),
                many => json!(many),
            },
        );
        m.insert("torch_dtype".into(), json!(torch_dtype));
        Value::Object(m)
    }
}

fn parse_rope_scaling(rs: &Value) -> Result<Option<Llama3RopeScaling>> {
    let kind = rs.get("rope_type").or_else(|| rs.get("type")).and_then(Value::as_str).unwrap_or("default");
    match kind {
        "default" => return Ok(None),
        "llama3" => {}
        other => bail!("RoPE scaling type {other:?} is not supported (only \"default\" and \"llama3\")"),
    }
    let f = |k: &str| -> Result<f64> {
        rs.get(k).and_then(Value::as_f64).with_context(|| format!("llama3 RoPE scaling: {k} missing or not a number"))
    };
    Ok(Some(Llama3RopeScaling {
        factor: f("factor")? as f32,
        low_freq_factor: f("low_freq_factor")? as f32,
        high_freq_factor: f("high_freq_factor")? as f32,
        original_max_position_embeddings: f("original_max_position_embeddings")? as usize,
    }))
}

/// Settings that change the computation in ways the decoder does not implement: refuse rather than
/// silently compute something else.
fn reject_unsupported(v: &Value) -> Result<()> {
    if let Some(act) = v.get("hidden_act").and_then(Value::as_str) {
        if act != "silu" && act != "swish" {
            bail!("hidden_act {act:?} is not supported (only silu)");
        }
    }
    for flag in ["mlp_bias", "use_sliding_window"] {
        if v.get(flag).and_then(Value::as_bool) == Some(true) {
            bail!("{flag} = true is not supported");
        }
    }
    Ok(())
}

/// `eos_token_id` may be absent, one integer or a list.
fn token_ids(v: Option<&Value>, key: &str) -> Result<Vec<u32>> {
    let one = |x: &Value| x.as_u64().map(|n| n as u32).with_context(|| format!("{key} is not a token id: {x}"));
    match v {
        None | Some(Value::Null) => Ok(vec![]),
        Some(Value::Array(xs)) => xs.iter().map(one).collect(),
        Some(x) => Ok(vec![one(x)?]),
    }
}
