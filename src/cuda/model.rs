//! The llama / qwen2 / qwen3 decoder on the GPU: `CudaModel`, the CUDA side of the `Model` interface, and its
//! paged KV pool.
//!
//! Weights: the CPU model's arena (the same files, the same fused q/k/v and gate/up matrices, the same
//! ranges), rounded to bf16 and uploaded as one device allocation. The residual stream is fp32; every
//! matrix product reads bf16 and accumulates in fp32; logits and log-probs are fp32.
//!
//! One step, for all of its sequences at once (the CPU step's order, `cpu::paged`):
//! ```text
//! x = embed(tokens)
//! per layer:  h = rmsnorm(x += delta)            (delta: the previous layer's MLP output; none at layer 0)
//!             q, pool[slot] = rope(norm(h Wqkv + b))     attention over each row's block table
//!             h = rmsnorm(x += att Wo)            act = swiglu(h Wgu)      delta = act Wdown
//! logits = rmsnorm(x += delta)[sampled rows] Whead;  sample
//! ```
//! Batch invariance: the products exclude split-K, decode attention splits a row's keys at fixed lengths,
//! and a prefill row's attention depends only on its own data, so a sequence's tokens do not depend on what
//! shares its steps, as long as the rows of its prompt take the same path: a one-token prompt chunk takes
//! the decode path, and a preempted sequence recomputes its generated tokens on the prefill path; there a
//! token can change at a near-tie.
//!
//! Per-step metadata (token ids, positions, pool slots, sampled rows) goes up in one copy; scratch buffers
//! are kept between steps and grow with the largest step seen. A decode step (every sequence brings one
//! token) of up to 256 rows is padded to a bucket and replayed as a CUDA graph (`cuda::graphs`).
//!
//! A sequence that asks for `top_logprobs` has its row of logits downloaded and its alternatives (and its
//! sampled token's log-prob, so the two agree exactly) computed on the host by the CPU's function
//! (`sample::logprob_and_top`); the other rows never leave the device. A constrained sequence (a token mask,
//! `StepSeq::allowed`) is sampled on the host too, from its downloaded row by the CPU's
//! `sample::sample_masked`, so its draw, log-prob and alternatives are the CPU backend's and the mask is
//! never skipped; the device's pick for that row is discarded. Other rows are untouched by it.
//!
//! Training (scored forward, backward, optimizer) is in `cuda::train`; top log-probs of a scored sequence
//! are not supported here yet, and say so.
use super::attention::{Attention, AttnShape, FixedGrid};
use super::graphs::{self, GraphStats, Graphs};
use super::norm::{self, Rows};
use super::qkv::{self, QkvExtras, QkvShape};
use super::sample::Sampler;
use super::swiglu::swiglu;
use super::train::{LayerTape, PackedPass, TrainState};
use super::Gpu;
use crate::config::ModelConfig;
use crate::cpu::model::weights_from;
use crate::cpu::model::Layer;
use crate::cpu::{CpuModel, Param};
use crate::loader::LoadedModel;
use crate::model::{check_step, Backend, KvPool, Model, Packed, Sampled, StepBatch};
use crate::optim::AdamWConfig;
use crate::tensor::Weights;
use anyhow::{anyhow, bail, ensure, Context, Result};
use cudarc::driver::{CudaSlice, CudaView, DeviceRepr, ValidAsZeroBits};
use half::bf16;
use std::any::Any;
use std::ops::Range;
use std::path::Path;
use std::sync::{Arc, Mutex};

/// Keys per split of a decode row's attention. Fixed, not fitted to the batch, so a row's result does not
/// depend on what else runs in its step (batch invariance; `cuda::attention` module docs): a long row still
/// spreads over many blocks, a short one takes one split.
const DECODE_SPLIT_KEYS: usize = 64;

/// Keys and values of `num_blocks` blocks of `block_size` positions, in one allocation: per layer, keys then
/// values, each `[num_blocks * block_size, kv_dim]` bf16 (a position's row is its slot, `block * block_size +
/// offset`).
pub struct CudaKvPool {
    num_blocks: usize,
    block_size: usize,
    /// Elements of one layer's keys (or values).
    pub(super) plane: usize,
    pub(super) buf: CudaSlice<bf16>,
}

impl CudaKvPool {
    /// Bytes of one block: keys and values of every layer, bf16.
    pub fn block_bytes(cfg: &ModelConfig, block_size: usize) -> usize {
        (cfg.num_layers * 2 * cfg.kv_dim() * 2).saturating_mul(block_size)
    }

    pub(super) fn new(gpu: &Gpu, cfg: &ModelConfig, num_blocks: usize, block_size: usize) -> Result<CudaKvPool> {
        ensure!(
            num_blocks > 0 && block_size > 0,
            "a KV pool needs blocks ({num_blocks}) and positions per block ({block_size})"
        );
        // Slots are i32 on the device.
        let slots = num_blocks.checked_mul(block_size).filter(|&s| s <= i32::MAX as usize);
        let plane = slots.and_then(|s| s.checked_mul(cfg.kv_dim()));
        let total = plane.and_then(|p| p.checked_mul(2 * cfg.num_layers));
        let (Some(plane), Some(total)) = (plane, total) else {
            bail!("a KV pool of {num_blocks} blocks of {block_size} positions is too large to address");
        };
        let (free, _) = gpu.memory()?;
        ensure!(
            total * 2 <= free,
            "a KV pool of {num_blocks} blocks ({} MiB) does not fit in the GPU's {} MiB free",
            (total * 2) >> 20,
            free >> 20
        );
        // Not zeroed: attention reads only the slots a step has written.
        let buf = unsafe { gpu.stream.alloc::<bf16>(total) }.context("allocating the KV pool")?;
        Ok(CudaKvPool { num_blocks, block_size, plane, buf })
    }

    /// Where layer `l`'s keys (`kv` 0) or values (1) start.
    pub(super) fn plane_start(&self, l: usize, kv: usize) -> usize {
        (2 * l + kv) * self.plane
    }

    /// Copies block `from` onto block `to` in every layer, keys and values.
    fn copy_block(&mut self, gpu: &Gpu, layers: usize, from: u32, to: u32) -> Result<()> {
        let n = self.plane / self.num_blocks;
        for p in 0..2 * layers {
            let (src, dst) = (p * self.plane + from as usize * n, p * self.plane + to as usize * n);
            // Two disjoint views of the one buffer: split where the later block starts.
            let (mut lo, mut hi) = self.buf.split_at_mut(src.max(dst));
            let (s, mut d) = match src < dst {
                true => (lo.slice(src..src + n), hi.slice_mut(0..n)),
                false => (hi.slice(0..n), lo.slice_mut(dst..dst + n)),
            };
            gpu.stream.memcpy_dtod(&s, &mut d)?;
        }
        Ok(())
    }
}

impl KvPool for CudaKvPool {
    fn num_blocks(&self) -> usize {
        self.num_blocks
    }
    fn block_size(&self) -> usize {
        self.block_size
    }
    fn as_any_mut(&mut self) -> &mut dyn Any {
        self
    }
}

/// A device copy of the first `n` values of `buf` when `on`: what a recording forward keeps for the backward.
fn keep<T: DeviceRepr>(gpu: &Gpu, on: bool, buf: &CudaSlice<T>, n: usize) -> Result<Option<CudaSlice<T>>> {
    Ok(if on { Some(gpu.stream.clone_dtod(&buf.slice(..n))?) } else { None })
}

/// What `keep` kept, where the forward recorded.
fn kept<T>(o: Option<CudaSlice<T>>) -> Result<CudaSlice<T>> {
    o.context("a recording forward keeps every layer value")
}

/// A device buffer that grows to the largest size asked of it.
pub(super) struct Grow<T>(pub(super) Option<CudaSlice<T>>);

impl<T> Default for Grow<T> {
    fn default() -> Self {
        Grow(None)
    }
}

impl<T> Grow<T> {
    /// Its device address (0 before its first use).
    fn address(&self, gpu: &Gpu) -> u64 {
        gpu.address(self.0.as_ref())
    }
}

impl<T: DeviceRepr + ValidAsZeroBits> Grow<T> {
    fn get(&mut self, gpu: &Gpu, n: usize) -> Result<&mut CudaSlice<T>> {
        if self.0.as_ref().is_none_or(|b| b.len() < n) {
            self.0 = None; // free the old one first
            self.0 = Some(gpu.zeros(n.max(1))?);
        }
        Ok(self.0.as_mut().expect("just allocated"))
    }
}

/// Scratch of a step, kept between steps (`step` takes `&self`, so it sits behind a lock).
pub(super) struct Work {
    meta: Grow<i32>,
    pub(super) layer: LayerBufs,
    pub(super) head_in: Grow<bf16>,
    logits: Grow<f32>,
    /// Built for the block size of the pool it last ran on.
    pub(super) attention: Option<(usize, Attention)>,
    sampler: Sampler,
    graphs: Graphs,
}

/// The buffers a layer's forward writes (`LayerScratch` once sized for a step).
#[derive(Default)]
pub(super) struct LayerBufs {
    x: Grow<f32>,
    delta: Grow<f32>,
    h: Grow<bf16>,
    qkv: Grow<f32>,
    q: Grow<bf16>,
    att: Grow<bf16>,
    gate_up: Grow<bf16>,
    act: Grow<bf16>,
}

/// A layer's forward buffers for `t` rows: the residual stream `x` (fp32), the previous block's output
/// `delta`, the normalised rows `h`, then each value the layer makes in turn.
pub(super) struct LayerScratch<'w> {
    pub x: &'w mut CudaSlice<f32>,
    pub delta: &'w mut CudaSlice<f32>,
    pub h: &'w mut CudaSlice<bf16>,
    pub qkv: &'w mut CudaSlice<f32>,
    pub q: &'w mut CudaSlice<bf16>,
    pub att: &'w mut CudaSlice<bf16>,
    pub gate_up: &'w mut CudaSlice<bf16>,
    pub act: &'w mut CudaSlice<bf16>,
}

impl LayerBufs {
    /// Device addresses of the buffers (0 for one not yet made).
    fn addresses(&self, gpu: &Gpu) -> [u64; 8] {
        let b = self;
        let (x, delta, h, qkv) = (b.x.address(gpu), b.delta.address(gpu), b.h.address(gpu), b.qkv.address(gpu));
        [x, delta, h, qkv, b.q.address(gpu), b.att.address(gpu), b.gate_up.address(gpu), b.act.address(gpu)]
    }

    pub(super) fn get(&mut self, gpu: &Gpu, c: &ModelConfig, t: usize) -> Result<LayerScratch<'_>> {
        let (d, qd, kvd, f) = (c.hidden_size, c.q_dim(), c.kv_dim(), c.intermediate_size);
        Ok(LayerScratch {
            x: self.x.get(gpu, t * d)?,
            delta: self.delta.get(gpu, t * d)?,
            h: self.h.get(gpu, t * d)?,
            qkv: self.qkv.get(gpu, t * (qd + 2 * kvd))?,
            q: self.q.get(gpu, t * qd)?,
            att: self.att.get(gpu, t * qd)?,
            gate_up: self.gate_up.get(gpu, t * 2 * f)?,
            act: self.act.get(gpu, t * f)?,
        })
    }
}

/// A step's rows as a layer reads them: how many, and each one's position and KV pool slot.
#[derive(Clone, Copy)]
pub(super) struct LayerRows<'a> {
    pub t: usize,
    pub positions: &'a CudaView<'a, i32>,
    pub slots: &'a CudaView<'a, i32>,
}

/// What a recording forward keeps of each layer for the backward.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Record {
    Nothing,
    /// Only the layer's input: the backward recomputes the rest (`recompute_layer`).
    Inputs,
    All,
}

/// A layer's saved forward values.
pub(super) enum Saved {
    All(Box<LayerTape>),
    Input(CudaSlice<f32>),
}

/// `slot`'s attention, built for block size `bs` if it was not, and planned for `rows` (`(sequence, position)`
/// of each row) over `tables`, on `grid` when given.
pub(super) fn planned_attention<'s>(
    gpu: &Gpu,
    c: &ModelConfig,
    slot: &'s mut Option<(usize, Attention)>,
    bs: usize,
    rows: &[(usize, usize)],
    tables: &[&[u32]],
    grid: Option<FixedGrid>,
) -> Result<&'s mut Attention> {
    if slot.as_ref().is_none_or(|(b, _)| *b != bs) {
        let s = AttnShape { n_heads: c.num_heads, n_kv: c.num_kv_heads, head_dim: c.head_dim, block_size: bs };
        let mut a = Attention::new(s)?;
        a.set_split_len(Some(DECODE_SPLIT_KEYS))?;
        *slot = Some((bs, a));
    }
    let attention = &mut slot.as_mut().expect("set above").1;
    match grid {
        Some(grid) => attention.plan_fixed(gpu, rows, tables, grid)?,
        None => attention.plan(gpu, rows, tables)?,
    }
    Ok(attention)
}

pub struct CudaModel {
    pub(super) gpu: Arc<Gpu>,
    pub(super) config: ModelConfig,
    /// Every parameter in bf16, in the CPU arena's layout: what rollouts read, and what training updates.
    pub(super) weights: CudaSlice<bf16>,
    pub(super) params: Vec<Param>,
    pub(super) embed: Range<usize>,
    pub(super) head: Range<usize>,
    pub(super) norm: Range<usize>,
    pub(super) layers: Vec<Layer>,
    pub(super) inv_freq: CudaSlice<f32>,
    pub(super) work: Mutex<Work>,
    /// Gradients, fp32 master weights and optimizer state, made when training starts.
    pub(super) train: TrainState,
}

impl CudaModel {
    pub fn new(m: &LoadedModel) -> Result<CudaModel> {
        CudaModel::build(m, false)
    }

    /// A model to be trained: its fp32 master weights start as `m`'s values exactly (kept in pinned host
    /// memory until the first optimizer step), not as the bf16 weights widened. For a bf16 source the two
    /// agree; for an f32 checkpoint this is what makes a resumed run continue bit for bit.
    pub fn for_training(m: &LoadedModel) -> Result<CudaModel> {
        CudaModel::build(m, true)
    }

    fn build(m: &LoadedModel, keep_master: bool) -> Result<CudaModel> {
        let gpu = Gpu::shared()?;
        let cpu = CpuModel::new(m)?;
        let c = &cpu.config;
        qkv::kernel_name(c.head_dim)?;
        AttnShape { n_heads: c.num_heads, n_kv: c.num_kv_heads, head_dim: c.head_dim, block_size: 16 }.validate()?;
        let host: Vec<bf16> = cpu.flat().iter().map(|&v| bf16::from_f32(v)).collect();
        let (free, _) = gpu.memory()?;
        ensure!(
            host.len() * 2 < free,
            "the model's {} MiB of bf16 weights do not fit in the GPU's {} MiB free",
            (host.len() * 2) >> 20,
            free >> 20
        );
        let weights = gpu.upload(&host).context("uploading the weights")?;
        drop(host);
        let train = if keep_master { TrainState::with_master(&gpu, cpu.flat())? } else { TrainState::default() };
        let inv_freq = gpu.upload(cpu.rope.inv_freq())?;
        let params = cpu.params().to_vec();
        let head = cpu.head();
        let CpuModel { config, embed, norm, layers, .. } = cpu;
        let work = Work {
            meta: Grow(None),
            layer: LayerBufs::default(),
            head_in: Grow(None),
            logits: Grow(None),
            attention: None,
            sampler: Sampler::new(),
            graphs: Graphs::default(),
        };
        Ok(CudaModel {
            gpu,
            config,
            weights,
            params,
            embed,
            head,
            norm,
            layers,
            inv_freq,
            work: Mutex::new(work),
            train,
        })
    }

    /// Logits `[n, vocab]` (fp32, on the device, in `work.logits`) of the last token of each sampling
    /// sequence of `batch`; returns n. With a training or scoring `pass`, the head's rows are its scored
    /// positions instead, only their normalised hidden states are made (`work.head_in`, no logits: the
    /// fused LM head takes them from there), and with `pass.record` the tape the backward reads is kept.
    /// Without a pass, a decode step runs as a CUDA graph (`cuda::graphs`) when graphs are on.
    pub(super) fn forward(
        &self,
        w: &mut Work,
        pool: &mut CudaKvPool,
        batch: &StepBatch,
        pass: Option<&mut PackedPass>,
    ) -> Result<usize> {
        let (gpu, c) = (&*self.gpu, &self.config);
        // cuBLASLt uses the calling thread's current context, and the engine may run on any thread.
        gpu.ctx.bind_to_thread()?;
        let bs = pool.block_size;
        // Metadata, one upload: token ids, positions, pool slots, then the sampled rows.
        let (mut tokens, mut positions, mut slots, mut picked, mut rows) =
            (Vec::new(), Vec::new(), Vec::new(), Vec::new(), Vec::new());
        for (i, s) in batch.seqs.iter().enumerate() {
            for (j, &tok) in s.tokens.iter().enumerate() {
                let p = s.pos + j;
                tokens.push(tok as i32);
                positions.push(p as i32);
                slots.push((s.block_table[p / bs] as usize * bs + p % bs) as i32);
                rows.push((i, p));
            }
            if s.sample.is_some() {
                picked.push(tokens.len() as i32 - 1);
            }
        }
        if let Some(p) = &pass {
            picked = p.picked.clone();
        }
        let n = picked.len();
        let decode = pass.is_none() && w.graphs.enabled() && batch.seqs.iter().all(|s| s.tokens.len() == 1);
        let grid = if decode { graphs::grid(&rows, DECODE_SPLIT_KEYS) } else { None };
        if let Some(g) = grid {
            // Padding rows: token 0 at position 0, no pool slot; every row into the head once.
            tokens.resize(g.rows, 0);
            positions.resize(g.rows, 0);
            slots.resize(g.rows, -1);
            graphs::head_rows(&mut picked, g.rows);
        }
        // Rows the launches cover, and rows into the head.
        let (t, heads) = (tokens.len(), picked.len());
        let meta: Vec<i32> = [tokens, positions, slots, picked].concat();
        let dev_meta = w.meta.get(gpu, meta.len())?;
        gpu.stream.memcpy_htod(&meta, &mut dev_meta.slice_mut(0..meta.len()))?;
        let tables: Vec<&[u32]> = batch.seqs.iter().map(|s| s.block_table).collect();
        planned_attention(gpu, c, &mut w.attention, bs, &rows, &tables, grid)?;
        // Every buffer sized before the launches: a capture must not allocate.
        w.layer.get(gpu, c, t)?;
        w.head_in.get(gpu, heads.max(1) * c.hidden_size)?;
        if pass.is_none() {
            // A scoring pass never makes logits (the fused head reads head_in): no [n, vocab] buffer for it.
            w.logits.get(gpu, heads.max(1) * c.vocab_size)?;
        }
        let Some(grid) = grid else {
            self.launch_forward(gpu, w, pool, t, heads, pass)?;
            return Ok(n);
        };
        let key = graphs::Key { grid, pool_blocks: pool.num_blocks, block_size: bs };
        let addresses = self.graph_addresses(w, pool);
        let mut graphs = std::mem::take(&mut w.graphs);
        let ran = graphs.run(gpu, key, addresses, &mut |g| self.launch_forward(g, w, pool, t, heads, None));
        w.graphs = graphs;
        ran?;
        Ok(n)
    }

    /// Every device address a decode step's graph holds: the scratch buffers, attention's, the pool and
    /// the weights. The graph is replayed only while these stay the same.
    fn graph_addresses(&self, w: &Work, pool: &CudaKvPool) -> Vec<u64> {
        let gpu = &*self.gpu;
        let attention = w.attention.as_ref().map_or([0; 3], |(_, a)| a.buffer_addresses(gpu));
        let mut out = vec![w.meta.address(gpu), w.head_in.address(gpu), w.logits.address(gpu)];
        out.extend(w.layer.addresses(gpu));
        out.extend(attention);
        out.extend([gpu.address(Some(&pool.buf)), gpu.address(Some(&self.weights)), gpu.address(Some(&self.inv_freq))]);
        out
    }

    /// The forward's launches on `gpu`'s stream over `t` rows, `heads` of them into the LM head, from the
    /// metadata, attention plan and buffers `forward` made ready (no allocation, copy or synchronisation
    /// unless `pass` records a tape).
    fn launch_forward(
        &self,
        gpu: &Gpu,
        w: &mut Work,
        pool: &mut CudaKvPool,
        t: usize,
        heads: usize,
        mut pass: Option<&mut PackedPass>,
    ) -> Result<()> {
        let c = &self.config;
        let (d, f) = (c.hidden_size, c.intermediate_size);
        let Work { meta, layer, head_in, logits, attention, .. } = w;
        let meta = meta.0.as_ref().context("the step's metadata is uploaded")?;
        let tok_view = unsafe { meta.transmute::<u32>(t) }.ok_or_else(|| anyhow!("metadata buffer too small"))?;
        let (pos_v, slot_v) = (meta.slice(t..2 * t), meta.slice(2 * t..3 * t));
        let pick_v = meta.slice(3 * t..3 * t + heads);
        let attention = &mut attention.as_mut().context("the step's attention is planned")?.1;
        let mut s = layer.get(gpu, c, t)?;
        let head_in = head_in.get(gpu, heads.max(1) * d)?;
        let (wt, eps) = (&self.weights, c.rms_norm_eps);
        let record = pass.as_ref().map_or(Record::Nothing, |p| p.record);

        norm::embed(gpu, &mut s.x.slice_mut(..), &wt.slice(self.embed.clone()), &tok_view, d)?;
        let layer_rows = LayerRows { t, positions: &pos_v, slots: &slot_v };
        for (l, layer) in self.layers.iter().enumerate() {
            let saved = self.layer_forward(gpu, l, &mut s, l > 0, pool, attention, layer_rows, record)?;
            if let (Some(p), Some(saved)) = (pass.as_mut(), saved) {
                p.layers.push(saved);
            }
            let w_down = wt.slice(layer.w_down.clone());
            gpu.blas.linear(&mut s.delta.slice_mut(..), &s.act.slice(..), &w_down, t, f, d, false)?;
        }
        if heads == 0 {
            return Ok(());
        }
        let final_norm = wt.slice(self.norm.clone());
        norm::add_rmsnorm(
            gpu,
            &mut s.x.slice_mut(..),
            Some(&s.delta.slice(..)),
            &mut head_in.slice_mut(..),
            &final_norm,
            Rows::Picked(&pick_v),
            eps,
        )?;
        if let Some(p) = pass {
            p.x_final = keep(gpu, p.record != Record::Nothing, s.x, t * d)?;
            return Ok(());
        }
        let head = wt.slice(self.head.clone());
        let logits = logits.get(gpu, heads * c.vocab_size)?;
        gpu.blas.linear(&mut logits.slice_mut(..), &head_in.slice(..), &head, heads, d, c.vocab_size, false)?;
        Ok(())
    }

    /// Layer `l` over a step's rows, launched on `gpu`'s stream: the residual stream `s.x` (first grown by the
    /// previous layer's output, `s.delta`, when `add_prev`) through attention (its keys and values written to
    /// `pool`) and its residual add, then the MLP up to its activation `s.act` (the down projection is the
    /// caller's, into `s.delta`).
    /// Returns what `record` keeps for the backward: every value, or only the layer's input (from which
    /// `recompute_layer` makes the rest again).
    #[allow(clippy::too_many_arguments)] // the stream, the step's buffers, pool, plan and rows
    pub(super) fn layer_forward(
        &self,
        gpu: &Gpu,
        l: usize,
        s: &mut LayerScratch,
        add_prev: bool,
        pool: &mut CudaKvPool,
        attention: &mut Attention,
        rows: LayerRows,
        record: Record,
    ) -> Result<Option<Saved>> {
        let (c, layer, wt) = (&self.config, &self.layers[l], &self.weights);
        let (t, d, qd, kvd, f, eps) =
            (rows.t, c.hidden_size, c.q_dim(), c.kv_dim(), c.intermediate_size, c.rms_norm_eps);
        let all = record == Record::All;
        let prev = add_prev.then(|| s.delta.slice(..));
        let attn_norm = wt.slice(layer.attn_norm.clone());
        norm::add_rmsnorm(
            gpu,
            &mut s.x.slice_mut(..),
            prev.as_ref(),
            &mut s.h.slice_mut(..),
            &attn_norm,
            Rows::First(t),
            eps,
        )?;
        let (x_in, h_attn) = (keep(gpu, record != Record::Nothing, s.x, t * d)?, keep(gpu, all, s.h, t * d)?);
        let w_qkv = wt.slice(layer.w_qkv.clone());
        gpu.blas.linear(&mut s.qkv.slice_mut(..), &s.h.slice(..), &w_qkv, t, d, qd + 2 * kvd, false)?;
        let qkv_raw = keep(gpu, all, s.qkv, t * (qd + 2 * kvd))?;
        let (kp, vp) = (pool.plane_start(l, 0), pool.plane_start(l, 1));
        let (mut k_part, mut v_part) = pool.buf.split_at_mut(vp);
        let (mut k_pool, mut v_pool) = (k_part.slice_mut(kp..), v_part.slice_mut(0..pool.plane));
        let bias = layer.b_qkv.clone().map(|r| wt.slice(r));
        let norms = layer.qk_norm.clone().map(|[a, b]| (wt.slice(a), wt.slice(b)));
        let extras = QkvExtras { bias: bias.as_ref(), norms: norms.as_ref().map(|(a, b)| (a, b)) };
        let shape = QkvShape { n_heads: c.num_heads, n_kv: c.num_kv_heads, head_dim: c.head_dim, eps };
        let (qkv_in, freq) = (s.qkv.slice(..), self.inv_freq.slice(..));
        qkv::qkv_rope_append(
            gpu,
            &mut s.q.slice_mut(..),
            &mut k_pool,
            &mut v_pool,
            &qkv_in,
            extras,
            &freq,
            rows.positions,
            rows.slots,
            shape,
        )?;
        attention.run(gpu, &mut s.att.slice_mut(..), &s.q.slice(..), &k_pool.slice(..), &v_pool.slice(..))?;
        let (q_kept, att_kept) = (keep(gpu, all, s.q, t * qd)?, keep(gpu, all, s.att, t * qd)?);
        gpu.blas.linear(&mut s.delta.slice_mut(..), &s.att.slice(..), &wt.slice(layer.wo.clone()), t, qd, d, false)?;
        let mlp_norm = wt.slice(layer.mlp_norm.clone());
        let delta = s.delta.slice(..);
        norm::add_rmsnorm(
            gpu,
            &mut s.x.slice_mut(..),
            Some(&delta),
            &mut s.h.slice_mut(..),
            &mlp_norm,
            Rows::First(t),
            eps,
        )?;
        let (x_mid, h_mlp) = (keep(gpu, all, s.x, t * d)?, keep(gpu, all, s.h, t * d)?);
        let w_gate_up = wt.slice(layer.w_gate_up.clone());
        gpu.blas.linear(&mut s.gate_up.slice_mut(..), &s.h.slice(..), &w_gate_up, t, d, 2 * f, false)?;
        swiglu(gpu, &mut s.act.slice_mut(..), &s.gate_up.slice(..), t, f)?;
        Ok(match record {
            Record::Nothing => None,
            Record::Inputs => Some(Saved::Input(kept(x_in)?)),
            Record::All => Some(Saved::All(Box::new(LayerTape {
                x_in: kept(x_in)?,
                h_attn: kept(h_attn)?,
                qkv: kept(qkv_raw)?,
                q: kept(q_kept)?,
                att: kept(att_kept)?,
                x_mid: kept(x_mid)?,
                h_mlp: kept(h_mlp)?,
                gate_up: kept(keep(gpu, true, s.gate_up, t * 2 * f)?)?,
                act: kept(keep(gpu, true, s.act, t * f)?)?,
            }))),
        })
    }

    /// Turns CUDA graphs for decode steps on (the default) or off (every step runs eagerly): for tests and
    /// benchmarks, which compare the two.
    pub fn set_graphs(&self, on: bool) -> Result<()> {
        self.work.lock().map_err(|_| anyhow!("an earlier CUDA step panicked"))?.graphs.set_enabled(on);
        Ok(())
    }

    /// How this model's decode steps have run so far: eagerly, captured as graphs, replayed.
    pub fn graph_stats(&self) -> Result<GraphStats> {
        Ok(self.work.lock().map_err(|_| anyhow!("an earlier CUDA step panicked"))?.graphs.stats())
    }

    /// Logits `[n, vocab]` of the last token of each sequence of `batch` that samples, downloaded (no
    /// sampling): the twin of `CpuModel::forward_paged`, for tests and tools.
    pub fn forward_paged(&self, kv: &mut dyn KvPool, batch: &StepBatch) -> Result<Vec<f32>> {
        let pool = self.prepare(kv, batch)?;
        let mut w = self.work.lock().map_err(|_| anyhow!("an earlier CUDA step panicked"))?;
        let n = self.forward(&mut w, pool, batch, None)?;
        let logits = w.logits.0.as_ref().expect("forward allocated the logits");
        self.gpu.download(&logits.slice(0..n * self.config.vocab_size))
    }

    /// The step's checks (nothing is written before they pass) and its block copies; the pool as ours.
    pub(super) fn prepare<'p>(&self, kv: &'p mut dyn KvPool, batch: &StepBatch) -> Result<&'p mut CudaKvPool> {
        let pool = kv
            .as_any_mut()
            .downcast_mut::<CudaKvPool>()
            .context("the CUDA model was given another backend's KV pool")?;
        check_step(&self.config, pool, batch)?;
        for s in &batch.seqs {
            if let Some(spec) = &s.sample {
                spec.params.validate()?;
            }
        }
        for &(from, to) in &batch.copies {
            pool.copy_block(&self.gpu, self.config.num_layers, from, to)?;
        }
        Ok(pool)
    }
}

impl Model for CudaModel {
    fn config(&self) -> &ModelConfig {
        &self.config
    }
    fn backend(&self) -> Backend {
        Backend::Cuda
    }
    fn kv_block_bytes(&self, block_size: usize) -> usize {
        CudaKvPool::block_bytes(&self.config, block_size)
    }
    fn free_memory(&self) -> Option<usize> {
        self.gpu.memory().ok().map(|(free, _)| free)
    }
    fn new_kv_pool(&self, num_blocks: usize, block_size: usize) -> Result<Box<dyn KvPool>> {
        Ok(Box::new(CudaKvPool::new(&self.gpu, &self.config, num_blocks, block_size)?))
    }

    fn step(&self, kv: &mut dyn KvPool, batch: &StepBatch) -> Result<Vec<Option<Sampled>>> {
        let pool = self.prepare(kv, batch)?;
        let mut w = self.work.lock().map_err(|_| anyhow!("an earlier CUDA step panicked"))?;
        let w = &mut *w;
        let n = self.forward(w, pool, batch, None)?;
        let specs: Vec<_> = batch.seqs.iter().filter_map(|s| s.sample.map(|sp| (sp.params, sp.index))).collect();
        let masks: Vec<_> = batch.seqs.iter().filter(|s| s.sample.is_some()).map(|s| s.allowed).collect();
        let v = self.config.vocab_size;
        let picks = match n {
            0 => Vec::new(),
            _ => {
                let logits = w.logits.0.as_ref().expect("forward wrote the logits");
                let picks = w.sampler.sample(&self.gpu, &logits.slice(0..n * v), v, &specs)?;
                let mut out = Vec::with_capacity(n);
                for (row, ((id, logprob), (params, index))) in picks.into_iter().zip(&specs).enumerate() {
                    let mut s = Sampled { id, logprob, top: Vec::new() };
                    if let Some(mask) = masks[row] {
                        // Constrained: drawn on the host from this row's fp32 logits (sample_masked).
                        let host = self.gpu.download(&logits.slice(row * v..(row + 1) * v))?;
                        out.push(crate::sample::sample_masked(&host, params, *index, Some(mask))?);
                        continue;
                    }
                    if params.top_logprobs > 0 {
                        // Alternatives on the host, from this row's fp32 logits (one row download), with the
                        // CPU's function; the sampled token's log-prob is then taken from the same host
                        // computation, so it equals its own entry among the alternatives exactly.
                        let row = self.gpu.download(&logits.slice(row * v..(row + 1) * v))?;
                        (s.logprob, s.top) =
                            crate::sample::logprob_and_top(&row, params.temperature, id, params.top_logprobs);
                    }
                    out.push(s);
                }
                out
            }
        };
        let mut picks = picks.into_iter();
        Ok(batch.seqs.iter().map(|s| s.sample.and_then(|_| picks.next())).collect())
    }

    fn sequence_logprobs(&self, p: Packed, temperature: f32) -> Result<Vec<f32>> {
        self.gpu.ctx.bind_to_thread()?;
        self.score_packed(p, temperature)
    }
    fn sequence_top_logprobs(&self, _p: Packed, _t: f32, _k: usize) -> Result<(Vec<f32>, Vec<Vec<(u32, f32)>>)> {
        bail!("top log-probs of a scored sequence (echo with logprobs) are not supported on the cuda backend yet; use the cpu backend")
    }
    fn forward_backward(
        &mut self,
        p: Packed,
        temperature: f32,
        recompute: bool,
        loss: &mut crate::model::LossFn,
    ) -> Result<()> {
        self.gpu.ctx.bind_to_thread()?;
        self.train_packed(p, temperature, recompute, loss)
    }
    fn zero_grad(&mut self) {
        // The interface cannot fail here; an allocation failure surfaces at the next use of the buffer.
        let _ = self.zero_grads();
    }
    fn gradients(&self) -> Result<Vec<f32>> {
        self.gpu.ctx.bind_to_thread()?;
        self.host_gradients()
    }
    fn init_optimizer(&mut self, config: AdamWConfig, saved: Option<&Path>) -> Result<()> {
        self.gpu.ctx.bind_to_thread()?;
        self.start_optimizer(config, saved)
    }
    fn save_optimizer(&self, path: &Path) -> Result<()> {
        self.save_optimizer_state(path)
    }
    fn optimizer_steps(&self) -> u64 {
        self.optimizer_steps_taken()
    }
    fn optimizer_step(&mut self, lr: f32, max_grad_norm: f32) -> Result<f32> {
        self.gpu.ctx.bind_to_thread()?;
        self.take_optimizer_step(lr, max_grad_norm)
    }
    fn park_training_state(&mut self) -> Result<()> {
        self.gpu.ctx.bind_to_thread()?;
        CudaModel::park_training_state(self)
    }

    /// The fp32 master weights once training has started, else the bf16 weights widened to f32.
    fn weights(&self) -> Result<Weights> {
        let flat = self.host_weights().context("reading the weights back from the GPU")?;
        Ok(weights_from(&self.params, &flat))
    }
}
