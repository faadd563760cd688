//! The llama / qwen2 / qwen3 decoder on the CPU, in f32.
//!
//! Per layer: x += o_proj(attn(rope(norm?(q)), rope(norm?(k)), v)) on rmsnorm(x), then
//! x += down(silu(gate(h)) * up(h)) on h = rmsnorm(x). qwen2 adds q/k/v biases, qwen3 a per-head RMSNorm on
//! q and k.
//!
//! Inference has one path, the batched paged step (`paged.rs`): `forward` with its `KvCache` (a small paged
//! pool of its own that grows, and the block table) is that step run on one sequence, so generation feeds one
//! new token at a time while a prompt goes through in one batched call.
//!
//! Every parameter lives in one `Arena`, listed by Hugging Face name in `params()`: the optimizer updates the
//! arena in place and the next rollout uses it, with no copy between generation and training. A gradient
//! buffer has the arena's layout (`param_len()` floats, same ranges). The layer pieces shared by generation
//! and training (`attn_in_by`, `mlp_by`) are here, taking the matrix product as an argument: inference uses
//! the batch-invariant `rowwise::linear`, training the `gemm` crate's `linear` (faster on thousands of rows);
//! the training pass with its backward is in `train.rs`.
use super::arena::{Arena, ArenaBuilder};
use super::linear::linear;
use super::ops::{rmsnorm, rmsnorm_inplace, swiglu, Rope};
use super::paged::CpuKvPool;
use crate::config::ModelConfig;
use crate::loader::LoadedModel;
use crate::model::{StepBatch, StepSeq};
use crate::tensor::{Tensor, Weights};
use anyhow::{bail, Result};
use std::ops::Range;

/// One decoder layer: ranges of the model's `Arena`. q/k/v and gate/up are each one matrix (rows stacked),
/// so a token needs four matrix products per layer instead of seven.
pub(crate) struct Layer {
    pub attn_norm: Range<usize>,
    /// `[q_dim + 2 kv_dim, hidden]`: q_proj, k_proj, v_proj rows.
    pub w_qkv: Range<usize>,
    /// q, k, v biases in the same order (qwen2).
    pub b_qkv: Option<Range<usize>>,
    pub wo: Range<usize>,
    /// q and k per-head norms (qwen3).
    pub qk_norm: Option<[Range<usize>; 2]>,
    pub mlp_norm: Range<usize>,
    /// `[2 intermediate, hidden]`: gate_proj then up_proj rows.
    pub w_gate_up: Range<usize>,
    pub w_down: Range<usize>,
}

/// One Hugging Face tensor of the model and where it lives in the arena.
#[derive(Clone, Debug, PartialEq)]
pub struct Param {
    pub name: String,
    pub shape: Vec<usize>,
    pub range: Range<usize>,
}

pub struct CpuModel {
    pub config: ModelConfig,
    /// Every parameter of the model.
    pub(crate) arena: Arena,
    params: Vec<Param>,
    pub(crate) embed: Range<usize>,
    /// None when tied to `embed`.
    pub(crate) lm_head: Option<Range<usize>>,
    pub(crate) norm: Range<usize>,
    pub(crate) layers: Vec<Layer>,
    pub(crate) rope: Rope,
}

/// Keys and values of every position processed so far: one sequence in a paged pool of its own, which grows
/// a block at a time, and its block table (blocks in order).
#[derive(Clone)]
pub struct KvCache {
    pool: CpuKvPool,
    table: Vec<u32>,
    len: usize,
}

/// Positions per block of a `KvCache`.
const CACHE_BLOCK: usize = 16;

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

/// A matrix product with `linear`'s arguments: y = x W^T (or y +=), x `[t, inp]`, W `[out, inp]`.
pub(super) type Product = fn(&mut [f32], &[f32], &[f32], usize, usize, usize, bool);

/// The attention input side of one layer for `t` tokens: the normed input and q, k, v after bias, q/k norm
/// and rope. `q_raw`/`k_raw` (before the q/k norm) are kept only for qwen3, whose backward needs them.
pub(super) struct AttnIn {
    pub h: Vec<f32>,
    pub q: Vec<f32>,
    pub k: Vec<f32>,
    pub v: Vec<f32>,
    pub qk_raw: Option<(Vec<f32>, Vec<f32>)>,
}

/// `flat` (a buffer in the arena's layout: weights or gradients) as one slice per parameter of `params`, in
/// order.
pub fn split_params<'a>(params: &[Param], mut flat: &'a mut [f32]) -> Vec<&'a mut [f32]> {
    let mut at = 0;
    let mut out = Vec::with_capacity(params.len());
    for p in params {
        let (_, rest) = std::mem::take(&mut flat).split_at_mut(p.range.start - at);
        let (mine, rest) = rest.split_at_mut(p.range.len());
        out.push(mine);
        flat = rest;
        at = p.range.end;
    }
    out
}

/// The tensors of `params`, by name, out of `flat` (a buffer in the arena's layout): what a checkpoint
/// writes, from either backend's copy of the weights.
pub fn weights_from(params: &[Param], flat: &[f32]) -> Weights {
    let mut w = Weights::default();
    for p in params {
        w.tensors.insert(p.name.clone(), Tensor::from_f32(p.shape.clone(), flat[p.range.clone()].to_vec()));
    }
    w
}

/// Lays tensors out in the arena and records their names.
#[derive(Default)]
struct Layout {
    arena: ArenaBuilder,
    params: Vec<Param>,
}

impl Layout {
    /// Stores the tensors (name, shape) of `parts` back to back, so they also form one fused matrix; returns
    /// the range of the whole group.
    fn group(&mut self, m: &LoadedModel, parts: &[(String, Vec<usize>)]) -> Result<Range<usize>> {
        let mut values = Vec::new();
        let mut spans = Vec::new();
        for (name, shape) in parts {
            let start = values.len();
            values.extend(m.weights.get_shaped(name, shape)?.to_f32());
            // One pass at load: a NaN or infinite weight would make every output garbage, silently.
            if let Some(i) = values[start..].iter().position(|v| !v.is_finite()) {
                bail!(
                    "tensor {name} holds a non-finite value ({}) at index {i}: the model file is corrupt",
                    values[start + i]
                );
            }
            spans.push((name.clone(), shape.clone(), start..values.len()));
        }
        let r = self.arena.push(values);
        for (name, shape, s) in spans {
            self.params.push(Param { name, shape, range: r.start + s.start..r.start + s.end });
        }
        Ok(r)
    }

    fn one(&mut self, m: &LoadedModel, name: String, shape: Vec<usize>) -> Result<Range<usize>> {
        self.group(m, &[(name, shape)])
    }
}

impl CpuModel {
    pub fn new(m: &LoadedModel) -> Result<CpuModel> {
        let c = &m.config;
        c.validate()?;
        let (d, f, q, kv, hd) = (c.hidden_size, c.intermediate_size, c.q_dim(), c.kv_dim(), c.head_dim);
        let mut l = Layout::default();
        let embed = l.one(m, "model.embed_tokens.weight".into(), vec![c.vocab_size, d])?;
        let mut layers = Vec::with_capacity(c.num_layers);
        for i in 0..c.num_layers {
            let p = format!("model.layers.{i}");
            let a = format!("{p}.self_attn");
            let proj = |name: &str, kind: &str, shape: Vec<usize>| (format!("{a}.{name}.{kind}"), shape);
            layers.push(Layer {
                attn_norm: l.one(m, format!("{p}.input_layernorm.weight"), vec![d])?,
                w_qkv: l.group(
                    m,
                    &[
                        proj("q_proj", "weight", vec![q, d]),
                        proj("k_proj", "weight", vec![kv, d]),
                        proj("v_proj", "weight", vec![kv, d]),
                    ],
                )?,
                b_qkv: match c.attention_bias {
                    true => Some(l.group(
                        m,
                        &[
                            proj("q_proj", "bias", vec![q]),
                            proj("k_proj", "bias", vec![kv]),
                            proj("v_proj", "bias", vec![kv]),
                        ],
                    )?),
                    false => None,
                },
                wo: l.one(m, format!("{a}.o_proj.weight"), vec![d, q])?,
                qk_norm: match c.qk_norm {
                    true => Some([
                        l.one(m, format!("{a}.q_norm.weight"), vec![hd])?,
                        l.one(m, format!("{a}.k_norm.weight"), vec![hd])?,
                    ]),
                    false => None,
                },
                mlp_norm: l.one(m, format!("{p}.post_attention_layernorm.weight"), vec![d])?,
                w_gate_up: l.group(
                    m,
                    &[
                        (format!("{p}.mlp.gate_proj.weight"), vec![f, d]),
                        (format!("{p}.mlp.up_proj.weight"), vec![f, d]),
                    ],
                )?,
                w_down: l.one(m, format!("{p}.mlp.down_proj.weight"), vec![d, f])?,
            });
        }
        let norm = l.one(m, "model.norm.weight".into(), vec![d])?;
        let lm_head = match c.tie_word_embeddings {
            true => None,
            false => Some(l.one(m, "lm_head.weight".into(), vec![c.vocab_size, d])?),
        };
        Ok(CpuModel {
            arena: l.arena.build()?,
            params: l.params,
            embed,
            lm_head,
            norm,
            layers,
            rope: Rope::new(c),
            config: c.clone(),
        })
    }

    /// Every parameter, by Hugging Face name, in arena order.
    pub fn params(&self) -> &[Param] {
        &self.params
    }

    /// Length of the flat parameter (and gradient) buffer.
    pub fn param_len(&self) -> usize {
        self.arena.len()
    }

    /// All parameters as one flat buffer (`params()` says which range is which tensor).
    pub fn flat(&self) -> &[f32] {
        self.arena.as_slice()
    }

    pub fn flat_mut(&mut self) -> &mut [f32] {
        self.arena.as_mut_slice()
    }

    /// The parameter table and the flat weights, mutable: what an optimizer step needs at once.
    pub fn params_and_flat_mut(&mut self) -> (&[Param], &mut [f32]) {
        (&self.params, self.arena.as_mut_slice())
    }

    /// A copy of the weights by Hugging Face name, for writing a checkpoint.
    pub fn to_weights(&self) -> Weights {
        weights_from(&self.params, self.flat())
    }

    /// The LM head's range: `lm_head.weight`, or the embedding when tied.
    pub(crate) fn head(&self) -> Range<usize> {
        self.lm_head.clone().unwrap_or(self.embed.clone())
    }

    pub fn new_cache(&self) -> KvCache {
        KvCache { pool: CpuKvPool::empty(&self.config, CACHE_BLOCK), table: Vec::new(), len: 0 }
    }

    /// The embedding rows of `tokens`: `[t, hidden]`.
    pub(super) fn embed(&self, tokens: &[u32]) -> Vec<f32> {
        let d = self.config.hidden_size;
        let e = &self.arena[self.embed.clone()];
        tokens.iter().flat_map(|&id| &e[id as usize * d..][..d]).copied().collect()
    }

    /// `attn_in_by` with the `gemm` crate's product (training).
    pub(super) fn attn_in(&self, layer: &Layer, x: &[f32], cos: &[f32], sin: &[f32], keep_raw: bool) -> AttnIn {
        self.attn_in_by(linear, layer, x, cos, sin, keep_raw)
    }

    /// rmsnorm, the fused q/k/v projection (+ bias), q/k norm and rope for `t` tokens of residual stream `x`;
    /// `cos`/`sin` hold each token's rope row. `keep_raw` keeps q and k before the q/k norm.
    pub(super) fn attn_in_by(
        &self,
        mm: Product,
        layer: &Layer,
        x: &[f32],
        cos: &[f32],
        sin: &[f32],
        keep_raw: bool,
    ) -> AttnIn {
        let c = &self.config;
        let (d, qd, kvd) = (c.hidden_size, c.q_dim(), c.kv_dim());
        let (t, qkvd, half, w) = (x.len() / d, qd + 2 * kvd, c.head_dim / 2, &self.arena);
        let mut h = vec![0f32; t * d];
        rmsnorm(&mut h, x, &w[layer.attn_norm.clone()], c.rms_norm_eps);
        let mut qkv = vec![0f32; t * qkvd];
        mm(&mut qkv, &h, &w[layer.w_qkv.clone()], t, d, qkvd, false);
        if let Some(b) = &layer.b_qkv {
            let b = &w[b.clone()];
            qkv.chunks_exact_mut(qkvd).for_each(|row| row.iter_mut().zip(b).for_each(|(a, b)| *a += b));
        }
        let (mut q, mut k, mut v) = (vec![0f32; t * qd], vec![0f32; t * kvd], vec![0f32; t * kvd]);
        for (i, row) in qkv.chunks_exact(qkvd).enumerate() {
            q[i * qd..][..qd].copy_from_slice(&row[..qd]);
            k[i * kvd..][..kvd].copy_from_slice(&row[qd..qd + kvd]);
            v[i * kvd..][..kvd].copy_from_slice(&row[qd + kvd..]);
        }
        let mut qk_raw = None;
        if let Some([nq, nk]) = &layer.qk_norm {
            if keep_raw {
                qk_raw = Some((q.clone(), k.clone()));
            }
            rmsnorm_inplace(&mut q, &w[nq.clone()], c.rms_norm_eps);
            rmsnorm_inplace(&mut k, &w[nk.clone()], c.rms_norm_eps);
        }
        for i in 0..t {
            let (cs, sn) = (&cos[i * half..][..half], &sin[i * half..][..half]);
            Rope::apply(&mut q[i * qd..][..qd], cs, sn);
            Rope::apply(&mut k[i * kvd..][..kvd], cs, sn);
        }
        AttnIn { h, q, k, v, qk_raw }
    }

    /// `mlp_by` with the `gemm` crate's product (training).
    pub(super) fn mlp(&self, layer: &Layer, x: &mut [f32]) -> [Vec<f32>; 3] {
        self.mlp_by(linear, layer, x)
    }

    /// x += down(silu(gate(h)) * up(h)) with h = rmsnorm(x); returns (h, gate_up, act) for a backward pass.
    pub(super) fn mlp_by(&self, mm: Product, layer: &Layer, x: &mut [f32]) -> [Vec<f32>; 3] {
        let c = &self.config;
        let (d, f, w) = (c.hidden_size, c.intermediate_size, &self.arena);
        let t = x.len() / d;
        let mut h = vec![0f32; t * d];
        rmsnorm(&mut h, x, &w[layer.mlp_norm.clone()], c.rms_norm_eps);
        let (mut gate_up, mut act) = (vec![0f32; t * 2 * f], vec![0f32; t * f]);
        mm(&mut gate_up, &h, &w[layer.w_gate_up.clone()], t, d, 2 * f, false);
        swiglu(&mut act, &gate_up, f);
        mm(x, &act, &w[layer.w_down.clone()], t, f, d, true);
        [h, gate_up, act]
    }

    /// Runs `tokens` (positions cache.len() ..) through the model, appends their keys/values to the cache
    /// and returns the logits `which` asks for: the paged step on one sequence.
    pub fn forward(&self, tokens: &[u32], cache: &mut KvCache, which: Logits) -> Result<Vec<f32>> {
        crate::model::check_tokens(&self.config, tokens)?;
        let (t, end) = (tokens.len(), cache.len + tokens.len());
        crate::model::check_end(&self.config, end)?;
        let KvCache { pool, table, len } = cache;
        let blocks = end.div_ceil(CACHE_BLOCK);
        if blocks > table.len() {
            pool.grow(blocks)?;
            table.extend(table.len() as u32..blocks as u32);
        }
        let seq = StepSeq { tokens, pos: *len, block_table: table, sample: None, allowed: None };
        let rows: Vec<usize> = match which {
            Logits::Last => vec![t - 1],
            Logits::All => (0..t).collect(),
        };
        let logits = self.step(pool, &StepBatch { copies: Vec::new(), seqs: vec![seq] }, &rows)?;
        *len = end;
        Ok(logits)
    }
}
