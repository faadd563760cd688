//! The llama / qwen2 / qwen3 decoder on the CPU, in f32.
//!
//! Per layer: x += o_proj(attn(rope(norm?(q)), rope(norm?(k)), v)) on rmsnorm(x), then
//! x += down(silu(gate(h)) * up(h)) on h = rmsnorm(x). qwen2 adds q/k/v biases, qwen3 a per-head RMSNorm on
//! q and k. Keys and values of every position seen so far live in a `KvCache`, so generation feeds one new
//! token at a time while a prompt goes through in one batched call.
use super::arena::{Arena, ArenaBuilder};
use super::linear::linear;
use super::ops::{attention, rmsnorm, rmsnorm_inplace, swiglu, Rope};
use crate::config::ModelConfig;
use crate::loader::LoadedModel;
use anyhow::{bail, Result};
use std::ops::Range;

/// One decoder layer. Matrices are ranges of the model's `Arena`. q/k/v and gate/up are each one matrix
/// (rows stacked), so a token needs four matrix products per layer instead of seven.
struct Layer {
    attn_norm: Vec<f32>,
    /// `[q_dim + 2 kv_dim, hidden]`: q_proj, k_proj, v_proj rows.
    w_qkv: Range<usize>,
    /// q, k, v biases in the same order (qwen2).
    b_qkv: Option<Vec<f32>>,
    wo: Range<usize>,
    /// q and k per-head norms (qwen3).
    qk_norm: Option<[Vec<f32>; 2]>,
    mlp_norm: Vec<f32>,
    /// `[2 intermediate, hidden]`: gate_proj then up_proj rows.
    w_gate_up: Range<usize>,
    w_down: Range<usize>,
}

pub struct CpuModel {
    pub config: ModelConfig,
    /// Every matrix of the model (embedding, projections, LM head).
    arena: Arena,
    embed: Range<usize>,
    /// None when tied to `embed`.
    lm_head: Option<Range<usize>>,
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
        let mut arena = ArenaBuilder::default();
        let mut matrix = |values: Vec<f32>| arena.push(values);
        let layers = (0..c.num_layers)
            .map(|l| {
                let p = format!("model.layers.{l}");
                let a = format!("{p}.self_attn");
                let concat = |parts: &[(&str, &[usize])]| -> Result<Vec<f32>> {
                    let mut v = Vec::new();
                    for (name, shape) in parts {
                        v.extend(get(name, shape)?);
                    }
                    Ok(v)
                };
                let (qn, kn, vn) = (format!("{a}.q_proj"), format!("{a}.k_proj"), format!("{a}.v_proj"));
                Ok(Layer {
                    attn_norm: get(&format!("{p}.input_layernorm.weight"), &[d])?,
                    w_qkv: matrix(concat(&[
                        (&format!("{qn}.weight"), &[q, d]),
                        (&format!("{kn}.weight"), &[kv, d]),
                        (&format!("{vn}.weight"), &[kv, d]),
                    ])?),
                    b_qkv: match c.attention_bias {
                        true => Some(concat(&[
                            (&format!("{qn}.bias"), &[q]),
                            (&format!("{kn}.bias"), &[kv]),
                            (&format!("{vn}.bias"), &[kv]),
                        ])?),
                        false => None,
                    },
                    wo: matrix(get(&format!("{a}.o_proj.weight"), &[d, q])?),
                    qk_norm: match c.qk_norm {
                        true => Some([
                            get(&format!("{a}.q_norm.weight"), &[hd])?,
                            get(&format!("{a}.k_norm.weight"), &[hd])?,
                        ]),
                        false => None,
                    },
                    mlp_norm: get(&format!("{p}.post_attention_layernorm.weight"), &[d])?,
                    w_gate_up: matrix(concat(&[
                        (&format!("{p}.mlp.gate_proj.weight"), &[f, d]),
                        (&format!("{p}.mlp.up_proj.weight"), &[f, d]),
                    ])?),
                    w_down: matrix(get(&format!("{p}.mlp.down_proj.weight"), &[d, f])?),
                })
            })
            .collect::<Result<Vec<_>>>()?;
        let embed = matrix(get("model.embed_tokens.weight", &[c.vocab_size, d])?);
        let lm_head = match c.tie_word_embeddings {
            true => None,
            false => Some(matrix(get("lm_head.weight", &[c.vocab_size, d])?)),
        };
        Ok(CpuModel {
            arena: arena.build()?,
            embed,
            lm_head,
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
        let (t, d, f, qd, kvd, hd) =
            (tokens.len(), c.hidden_size, c.intermediate_size, c.q_dim(), c.kv_dim(), c.head_dim);
        if t == 0 {
            bail!("forward needs at least one token");
        }
        if let Some(&bad) = tokens.iter().find(|&&id| id as usize >= c.vocab_size) {
            bail!("token id {bad} is outside the vocabulary (size {})", c.vocab_size);
        }
        let start = cache.len;
        let w = &self.arena;
        let mut x = Vec::with_capacity(t * d);
        for &id in tokens {
            x.extend_from_slice(&self.arena[self.embed.clone()][id as usize * d..][..d]);
        }
        let qkvd = qd + 2 * kvd;
        let (mut h, mut qkv, mut q, mut k) =
            (vec![0f32; t * d], vec![0f32; t * qkvd], vec![0f32; t * qd], vec![0f32; t * kvd]);
        let (mut att, mut gate_up, mut act) = (vec![0f32; t * qd], vec![0f32; t * 2 * f], vec![0f32; t * f]);
        let (cos, sin) = self.rope.table(start, t);
        let half = hd / 2;
        for (layer, (kc, vc)) in self.layers.iter().zip(cache.k.iter_mut().zip(cache.v.iter_mut())) {
            rmsnorm(&mut h, &x, &layer.attn_norm, c.rms_norm_eps);
            linear(&mut qkv, &h, &w[layer.w_qkv.clone()], t, d, qkvd, false);
            if let Some(b) = &layer.b_qkv {
                for row in qkv.chunks_exact_mut(qkvd) {
                    row.iter_mut().zip(b).for_each(|(a, b)| *a += b);
                }
            }
            for (i, row) in qkv.chunks_exact(qkvd).enumerate() {
                q[i * qd..][..qd].copy_from_slice(&row[..qd]);
                k[i * kvd..][..kvd].copy_from_slice(&row[qd..qd + kvd]);
                vc.extend_from_slice(&row[qd + kvd..]);
            }
            if let Some([nq, nk]) = &layer.qk_norm {
                rmsnorm_inplace(&mut q, nq, c.rms_norm_eps);
                rmsnorm_inplace(&mut k, nk, c.rms_norm_eps);
            }
            for i in 0..t {
                let (cs, sn) = (&cos[i * half..][..half], &sin[i * half..][..half]);
                Rope::apply(&mut q[i * qd..][..qd], cs, sn);
                Rope::apply(&mut k[i * kvd..][..kvd], cs, sn);
            }
            kc.extend_from_slice(&k);
            attention(&mut att, &q, kc, vc, t, c.num_heads, c.num_kv_heads, hd);
            linear(&mut x, &att, &w[layer.wo.clone()], t, qd, d, true);

            rmsnorm(&mut h, &x, &layer.mlp_norm, c.rms_norm_eps);
            linear(&mut gate_up, &h, &w[layer.w_gate_up.clone()], t, d, 2 * f, false);
            swiglu(&mut act, &gate_up, f);
            linear(&mut x, &act, &w[layer.w_down.clone()], t, f, d, true);
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
        let head = self.lm_head.as_ref().unwrap_or(&self.embed).clone();
        linear(&mut logits, &normed, &w[head], n, d, c.vocab_size, false);
        Ok(logits)
    }
}
