//! The llama / qwen2 / qwen3 decoder on the CPU, in f32.
//!
//! Per layer: x += o_proj(attn(rope(norm?(q)), rope(norm?(k)), v)) on rmsnorm(x), then
//! x += down(silu(gate(h)) * up(h)) on h = rmsnorm(x). qwen2 adds q/k/v biases, qwen3 a per-head RMSNorm on
//! q and k. Keys and values of every position seen so far live in a `KvCache`, so generation feeds one new
//! token at a time while a prompt goes through in one batched call.
use super::linear::linear;
use super::ops::{attention, rmsnorm, rmsnorm_inplace, silu_mul, Rope};
use crate::config::ModelConfig;
use crate::loader::LoadedModel;
use anyhow::{bail, Result};

struct Layer {
    attn_norm: Vec<f32>,
    wq: Vec<f32>,
    wk: Vec<f32>,
    wv: Vec<f32>,
    wo: Vec<f32>,
    /// q, k, v biases (qwen2).
    bias: Option<[Vec<f32>; 3]>,
    /// q and k per-head norms (qwen3).
    qk_norm: Option<[Vec<f32>; 2]>,
    mlp_norm: Vec<f32>,
    w_gate: Vec<f32>,
    w_up: Vec<f32>,
    w_down: Vec<f32>,
}

pub struct CpuModel {
    pub config: ModelConfig,
    embed: Vec<f32>,
    /// None when tied to `embed`.
    lm_head: Option<Vec<f32>>,
    norm: Vec<f32>,
    layers: Vec<Layer>,
    rope: Rope,
}

/// Keys and values of every position processed so far, per layer, `[len, n_kv * head_dim]`.
#[derive(Clone)]
pub struct KvCache {
    k: Vec<Vec<f32>>,
    v: Vec<Vec<f32>>,
    len: usize,
}

impl KvCache {
    pub fn len(&self) -> usize {
        self.len
    }
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
}

/// Which positions' logits a forward pass returns.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Logits {
    /// Only the last position's: `[vocab]`. What generation needs.
    Last,
    /// Every position's: `[t, vocab]`. What scoring a text needs.
    All,
}

impl CpuModel {
    pub fn new(m: &LoadedModel) -> Result<CpuModel> {
        let c = &m.config;
        c.validate()?;
        let (d, f, q, kv, hd) = (c.hidden_size, c.intermediate_size, c.q_dim(), c.kv_dim(), c.head_dim);
        let get = |name: &str, shape: &[usize]| -> Result<Vec<f32>> { Ok(m.weights.get_shaped(name, shape)?.to_f32()) };
        let layers = (0..c.num_layers)
            .map(|l| {
                let p = format!("model.layers.{l}");
                let a = format!("{p}.self_attn");
                Ok(Layer {
                    attn_norm: get(&format!("{p}.input_layernorm.weight"), &[d])?,
                    wq: get(&format!("{a}.q_proj.weight"), &[q, d])?,
                    wk: get(&format!("{a}.k_proj.weight"), &[kv, d])?,
                    wv: get(&format!("{a}.v_proj.weight"), &[kv, d])?,
                    wo: get(&format!("{a}.o_proj.weight"), &[d, q])?,
                    bias: match c.attention_bias {
                        true => Some([
                            get(&format!("{a}.q_proj.bias"), &[q])?,
                            get(&format!("{a}.k_proj.bias"), &[kv])?,
                            get(&format!("{a}.v_proj.bias"), &[kv])?,
                        ]),
                        false => None,
                    },
                    qk_norm: match c.qk_norm {
                        true => Some([get(&format!("{a}.q_norm.weight"), &[hd])?, get(&format!("{a}.k_norm.weight"), &[hd])?]),
                        false => None,
                    },
                    mlp_norm: get(&format!("{p}.post_attention_layernorm.weight"), &[d])?,
                    w_gate: get(&format!("{p}.mlp.gate_proj.weight"), &[f, d])?,
                    w_up: get(&format!("{p}.mlp.up_proj.weight"), &[f, d])?,
                    w_down: get(&format!("{p}.mlp.down_proj.weight"), &[d, f])?,
                })
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(CpuModel {
            embed: get("model.embed_tokens.weight", &[c.vocab_size, d])?,
            lm_head: match c.tie_word_embeddings {
                true => None,
                false => Some(get("lm_head.weight", &[c.vocab_size, d])?),
            },
            norm: get("model.norm.weight", &[d])?,
            layers,
            rope: Rope::new(c),
            config: c.clone(),
        })
    }

    pub fn new_cache(&self) -> KvCache {
        let n = self.config.num_layers;
        KvCache { k: vec![Vec::new(); n], v: vec![Vec::new(); n], len: 0 }
    }

    /// Runs `tokens` (positions cache.len() ..) through the model, appends their keys/values to the cache
    /// and returns the logits `which` asks for.
    pub fn forward(&self, tokens: &[u32], cache: &mut KvCache, which: Logits) -> Result<Vec<f32>> {
        let c = &self.config;
        let (t, d, f, qd, kvd, hd) = (tokens.len(), c.hidden_size, c.intermediate_size, c.q_dim(), c.kv_dim(), c.head_dim);
        if t == 0 {
            bail!("forward needs at least one token");
        }
        if let Some(&bad) = tokens.iter().find(|&&id| id as usize >= c.vocab_size) {
            bail!("token id {bad} is outside the vocabulary (size {})", c.vocab_size);
        }
        let start = cache.len;
        let mut x = Vec::with_capacity(t * d);
        for &id in tokens {
            x.extend_from_slice(&self.embed[id as usize * d..][..d]);
        }
        let (mut h, mut q, mut k, mut v) = (vec![0f32; t * d], vec![0f32; t * qd], vec![0f32; t * kvd], vec![0f32; t * kvd]);
        let (mut att, mut gate, mut up) = (vec![0f32; t * qd], vec![0f32; t * f], vec![0f32; t * f]);
        for (layer, (kc, vc)) in self.layers.iter().zip(cache.k.iter_mut().zip(cache.v.iter_mut())) {
            rmsnorm(&mut h, &x, &layer.attn_norm, c.rms_norm_eps);
            linear(&mut q, &h, &layer.wq, t, d, qd, false);
            linear(&mut k, &h, &layer.wk, t, d, kvd, false);
            linear(&mut v, &h, &layer.wv, t, d, kvd, false);
            if let Some([bq, bk, bv]) = &layer.bias {
                for (m, b) in [(&mut q, bq), (&mut k, bk), (&mut v, bv)] {
                    for row in m.chunks_exact_mut(b.len()) {
                        row.iter_mut().zip(b).for_each(|(a, b)| *a += b);
                    }
                }
            }
            if let Some([nq, nk]) = &layer.qk_norm {
                rmsnorm_inplace(&mut q, nq, c.rms_norm_eps);
                rmsnorm_inplace(&mut k, nk, c.rms_norm_eps);
            }
            for i in 0..t {
                self.rope.apply(&mut q[i * qd..][..qd], start + i);
                self.rope.apply(&mut k[i * kvd..][..kvd], start + i);
            }
            kc.extend_from_slice(&k);
            vc.extend_from_slice(&v);
            attention(&mut att, &q, kc, vc, t, c.num_heads, c.num_kv_heads, hd);
            linear(&mut x, &att, &layer.wo, t, qd, d, true);

            rmsnorm(&mut h, &x, &layer.mlp_norm, c.rms_norm_eps);
            linear(&mut gate, &h, &layer.w_gate, t, d, f, false);
            linear(&mut up, &h, &layer.w_up, t, d, f, false);
            silu_mul(&mut gate, &up);
            linear(&mut x, &gate, &layer.w_down, t, f, d, true);
        }
        cache.len += t;

        let rows = match which {
            Logits::Last => &x[(t - 1) * d..],
            Logits::All => &x[..],
        };
        let n = rows.len() / d;
        let mut normed = vec![0f32; n * d];
        rmsnorm(&mut normed, rows, &self.norm, c.rms_norm_eps);
        let mut logits = vec![0f32; n * c.vocab_size];
        linear(&mut logits, &normed, self.lm_head.as_ref().unwrap_or(&self.embed), n, d, c.vocab_size, false);
        Ok(logits)
    }
}
