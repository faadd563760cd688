//! Training on the GPU: the CUDA side of the model interface's scoring, forward + backward and optimizer,
//! with the weights rollouts read (`CudaModel::weights`, bf16) updated in place after each step.
//!
//! A packed batch runs through the inference forward (`CudaModel::forward`) as one prefill step on a KV pool
//! sized for it, each sequence from position 0 in its own blocks; recording keeps each layer's
//! inputs and activations (the tape) and the pool keeps its keys and values. With `recompute` only each
//! layer's input is kept (for the Qwen2.5-0.5B shape, 3.5 KB a token and layer instead of 47 KB) and the
//! backward runs the layer's forward again from it, one layer at a time (`recompute_layer`). The scored
//! positions' final hidden states go through the fused LM head (`lm_head`); the loss runs on the host on the downloaded
//! log-probs (the trainer's closure, as on the CPU); the backward walks the layers in reverse:
//! ```text
//! d hidden -> final norm backward -> per layer, last first:
//!   MLP:        d act = dr Wdown, dWdown += dr^T act; swiglu backward; dh = dgu Wgu, dWgu += dgu^T h;
//!               RMSNorm backward (dr += ...)
//!   attention:  d att = dr Wo, dWo += dr^T att; attention backward (dq, dk, dv); q/k/v tail backward;
//!               dh = dqkv Wqkv, dWqkv += dqkv^T h; RMSNorm backward (dr += ...)
//! -> embedding scatter-add
//! ```
//! (dr: the residual stream's gradient, fp32, with its bf16 copy for the products.) Gradients accumulate in
//! fp32 in the arena's layout; the optimizer keeps fp32 master weights and moments (`optim`).
//! CPU twin: `cpu::train` (`forward_train`, `score`, `backward`) and `cpu::backend`'s optimizer; tests:
//! `tests/cuda_train_model.rs`.
use super::attention_backward::{attention_backward, PackedShape};
use super::colsum::colsum;
use super::lm_head::{chunk_rows, LmHead};
use super::model::{planned_attention, CudaKvPool, CudaModel, LayerRows, Record, Saved, Work};
use super::norm::{self, EmbedGrad};
use super::optim::{GpuAdamW, Parkable};
use super::qkv::{self, QkvExtras, QkvShape, QkvWeightGrads};
use super::swiglu::swiglu_backward;
use super::Gpu;
use crate::model::{check_end, check_tokens, LossFn, Packed, StepBatch, StepSeq};
use crate::optim::{AdamW, AdamWConfig};
use anyhow::{anyhow, ensure, Context, Result};
use cudarc::driver::{CudaSlice, CudaView, CudaViewMut};
use half::bf16;
use std::ops::Range;
use std::path::Path;
use std::sync::MutexGuard;

/// Positions per block of a training pass's KV pool.
const BLOCK: usize = 16;

/// One layer's saved forward values, `[t, ..]` each.
pub(super) struct LayerTape {
    /// The residual stream entering the attention norm (after the previous layer's MLP output was added).
    pub x_in: CudaSlice<f32>,
    pub h_attn: CudaSlice<bf16>,
    /// The q/k/v projection before bias, norms and RoPE.
    pub qkv: CudaSlice<f32>,
    /// q after RoPE (keys and values stay in the pass's KV pool).
    pub q: CudaSlice<bf16>,
    pub att: CudaSlice<bf16>,
    /// The residual stream entering the MLP norm.
    pub x_mid: CudaSlice<f32>,
    pub h_mlp: CudaSlice<bf16>,
    pub gate_up: CudaSlice<bf16>,
    pub act: CudaSlice<bf16>,
}

/// What a packed pass asks of `CudaModel::forward` and what it leaves (its module docs).
pub(super) struct PackedPass {
    /// Packed rows whose hidden state goes to the head: the scored positions.
    pub picked: Vec<i32>,
    pub record: Record,
    pub layers: Vec<Saved>,
    /// The residual stream after the last layer (valid at the picked rows).
    pub x_final: Option<CudaSlice<f32>>,
}

/// A forward over packed sequences, ready to score (and, recorded, to run backward).
struct Forward {
    pass: PackedPass,
    pool: CudaKvPool,
    /// The normalised final hidden states of the scored positions, `[n, d]`.
    hidden: CudaSlice<bf16>,
    targets: CudaSlice<u32>,
    /// Per packed row: its KV pool slot and its position in its sequence.
    slots: CudaSlice<i32>,
    positions: CudaSlice<i32>,
    /// Per packed row, (sequence, position) among the non-empty sequences, and their block tables: what
    /// plans the attention of a recomputed layer.
    rows: Vec<(usize, usize)>,
    tables: Vec<Vec<u32>>,
    tokens: Vec<u32>,
    seq_lens: Vec<usize>,
    t: usize,
    n: usize,
}

/// The gradient buffer's view of one parameter's range.
fn range_mut<'a>(grads: &'a mut CudaSlice<f32>, r: &Range<usize>) -> CudaViewMut<'a, f32> {
    grads.slice_mut(r.clone())
}

/// Gradients, master weights and optimizer state of a model being trained.
#[derive(Default)]
pub(super) struct TrainState {
    grads: Option<CudaSlice<f32>>,
    master: Option<Parkable>,
    opt: Option<GpuAdamW>,
}

impl TrainState {
    /// No gradients or optimizer yet; the master weights `values`, parked in pinned host memory.
    pub(super) fn with_master(gpu: &Gpu, values: &[f32]) -> Result<TrainState> {
        Ok(TrainState { master: Some(Parkable::from_host(gpu, values)?), ..TrainState::default() })
    }
}

impl CudaModel {
    /// Runs `p` through the model (recording the tape when `record`) up to the scored positions' hidden
    /// states; the checks are the CPU's (`forward_train`, `score`).
    fn forward_packed(&self, p: Packed, record: Record) -> Result<Forward> {
        let (gpu, c) = (&*self.gpu, &self.config);
        check_tokens(c, p.tokens)?;
        let total: usize = p.seq_lens.iter().sum();
        ensure!(total == p.tokens.len(), "sequence lengths sum to {total}, but {} tokens were given", p.tokens.len());
        for &len in p.seq_lens {
            check_end(c, len)?;
        }
        ensure!(!p.positions.is_empty(), "no positions to score");
        let targets = crate::cpu::train::targets(p.tokens, p.seq_lens, p.positions)?;
        let blocks: Vec<usize> = p.seq_lens.iter().map(|l| l.div_ceil(BLOCK)).collect();
        let mut pool = CudaKvPool::new(gpu, c, blocks.iter().sum::<usize>().max(1), BLOCK)?;
        let (mut tables, mut next) = (Vec::new(), 0u32);
        for &b in &blocks {
            tables.push((next..next + b as u32).collect::<Vec<u32>>());
            next += b as u32;
        }
        let (mut seqs, mut slots, mut positions, mut off) = (Vec::new(), Vec::new(), Vec::new(), 0);
        for (&len, table) in p.seq_lens.iter().zip(&tables) {
            if len > 0 {
                let tokens = &p.tokens[off..off + len];
                seqs.push(StepSeq { tokens, pos: 0, block_table: table, sample: None, allowed: None });
            }
            for i in 0..len {
                slots.push((table[i / BLOCK] as usize * BLOCK + i % BLOCK) as i32);
                positions.push(i as i32);
            }
            off += len;
        }
        let batch = StepBatch { copies: Vec::new(), seqs };
        let picked = p.positions.iter().map(|&x| x as i32).collect();
        let mut pass = PackedPass { picked, record, layers: Vec::new(), x_final: None };
        let mut w = self.work.lock().map_err(|_| anyhow!("an earlier CUDA step panicked"))?;
        let pool_ref = self.prepare(&mut pool, &batch)?;
        let n = self.forward(&mut w, pool_ref, &batch, Some(&mut pass))?;
        let head_in = w.head_in.0.as_ref().context("the forward made the head's input")?;
        let hidden = gpu.stream.clone_dtod(&head_in.slice(..n * c.hidden_size))?;
        // The attention plan's view of the pass (forward's), for recomputed layers.
        let rows =
            (batch.seqs.iter().enumerate()).flat_map(|(i, s)| (0..s.tokens.len()).map(move |j| (i, j))).collect();
        let tables = batch.seqs.iter().map(|s| s.block_table.to_vec()).collect();
        Ok(Forward {
            pass,
            pool,
            hidden,
            targets: gpu.upload(&targets)?,
            slots: gpu.upload(&slots)?,
            positions: gpu.upload(&positions)?,
            rows,
            tables,
            tokens: p.tokens.to_vec(),
            seq_lens: p.seq_lens.to_vec(),
            t: total,
            n,
        })
    }

    fn head<'a>(&'a self, f: &'a Forward, temperature: f32) -> LmHead<'a> {
        let (d, v) = (self.config.hidden_size, self.config.vocab_size);
        LmHead {
            h: f.hidden.slice(..),
            w: self.weights.slice(self.head.clone()),
            targets: f.targets.slice(..),
            t: f.n,
            d,
            v,
            temperature,
            chunk: chunk_rows(f.n, v),
        }
    }

    /// log π(next token) at `p.positions`, forward only.
    pub(super) fn score_packed(&self, p: Packed, temperature: f32) -> Result<Vec<f32>> {
        let f = self.forward_packed(p, Record::Nothing)?;
        let out = self.head(&f, temperature).logprobs(&self.gpu, false)?;
        self.gpu.download(&out.logp.slice(..))
    }

    /// Scores `p`, asks `loss` for d loss / d logp, and adds the gradient into the gradient buffer. With
    /// `recompute` the forward keeps only each layer's input and the backward makes the rest again.
    pub(super) fn train_packed(
        &mut self,
        p: Packed,
        temperature: f32,
        recompute: bool,
        loss: &mut LossFn,
    ) -> Result<()> {
        let mut f = self.forward_packed(p, if recompute { Record::Inputs } else { Record::All })?;
        let head = self.head(&f, temperature);
        let out = head.logprobs(&self.gpu, false)?;
        let logp = self.gpu.download(&out.logp.slice(..))?;
        let dlogp = loss(&logp)?;
        ensure!(dlogp.len() == logp.len(), "the loss gave {} gradients for {} log-probs", dlogp.len(), logp.len());
        let dlogp = self.gpu.upload(&dlogp)?;
        let mut grads = match self.train.grads.take() {
            Some(g) => g,
            None => self.gpu.zeros::<f32>(self.weights.len())?,
        };
        let result = self.backward(&mut f, &out.lse.slice(..), &dlogp.slice(..), temperature, &mut grads);
        self.train.grads = Some(grads);
        result
    }

    /// The backward pass of a recorded forward (module docs), into `grads`.
    fn backward(
        &self,
        f: &mut Forward,
        lse: &CudaView<f32>,
        dlogp: &CudaView<f32>,
        temperature: f32,
        grads: &mut CudaSlice<f32>,
    ) -> Result<()> {
        let (gpu, c) = (&*self.gpu, &self.config);
        let (t, n, d, f_dim) = (f.t, f.n, c.hidden_size, c.intermediate_size);
        let (qd, kvd) = (c.q_dim(), c.kv_dim());
        let width = qd + 2 * kvd;
        let eps = c.rms_norm_eps;
        let wt = &self.weights;

        // The head: d hidden of the scored rows, d W_head; then scattered to their packed rows (positions
        // are distinct, so the embedding's scatter-add is a plain scatter here).
        let mut dh = gpu.zeros::<f32>(n * d)?;
        self.head(f, temperature).backward(
            gpu,
            lse,
            dlogp,
            &mut dh.slice_mut(..),
            &mut range_mut(grads, &self.head),
        )?;
        let mut dy = gpu.zeros::<f32>(t * d)?;
        let picked: Vec<u32> = f.pass.picked.iter().map(|&r| r as u32).collect();
        norm::embed_backward(gpu, &mut dy.slice_mut(..), &dh.slice(..), &EmbedGrad::new(&picked), d)?;
        drop(dh);

        // The residual stream's gradient (fp32) and its bf16 copy for the products.
        let mut res = Residual { dr: gpu.zeros::<f32>(t * d)?, dr16: gpu.zeros::<bf16>(t * d)?, t };
        let x_final = f.pass.x_final.as_ref().context("the forward recorded the final residual")?;
        self.norm_backward(grads, &self.norm, &mut res, &dy, x_final)?;

        let (mut d_act, mut d_gu) = (gpu.zeros::<f32>(t * f_dim)?, gpu.zeros::<bf16>(t * 2 * f_dim)?);
        let (mut d_att, mut dq) = (gpu.zeros::<f32>(t * qd)?, gpu.zeros::<f32>(t * qd)?);
        let (mut dk, mut dv) = (gpu.zeros::<f32>(t * kvd)?, gpu.zeros::<f32>(t * kvd)?);
        let mut d_qkv = gpu.zeros::<bf16>(t * width)?;
        let shape = QkvShape { n_heads: c.num_heads, n_kv: c.num_kv_heads, head_dim: c.head_dim, eps };
        let packed = PackedShape { seq_lens: &f.seq_lens, n_heads: c.num_heads, n_kv: c.num_kv_heads, hd: c.head_dim };
        // Recomputed layers share one attention plan, made once here and held under the step lock.
        let mut work = match f.pass.layers.first() {
            Some(Saved::Input(_)) => Some(self.planned_for_recompute(&f.rows, &f.tables)?),
            _ => None,
        };
        let (positions, slots) = (f.positions.slice(..), f.slots.slice(..));
        let rows = LayerRows { t, positions: &positions, slots: &slots };

        for (l, layer) in self.layers.iter().enumerate().rev() {
            let recomputed;
            let tape: &LayerTape = match &f.pass.layers[l] {
                Saved::All(tape) => tape,
                Saved::Input(x_in) => {
                    let w = work.as_deref_mut().context("recomputed layers have a planned attention")?;
                    recomputed = self.recompute_layer(l, x_in, &mut f.pool, w, rows)?;
                    &recomputed
                }
            };
            // MLP: dr holds d(its output).
            self.linear_backward(grads, &layer.w_down, &mut d_act, &res.dr16, &tape.act, t, f_dim, d)?;
            swiglu_backward(gpu, &mut d_gu.slice_mut(..), &d_act.slice(..), &tape.gate_up.slice(..), t, f_dim)?;
            self.linear_backward(grads, &layer.w_gate_up, &mut dy, &d_gu, &tape.h_mlp, t, d, 2 * f_dim)?;
            self.norm_backward(grads, &layer.mlp_norm, &mut res, &dy, &tape.x_mid)?;

            // Attention: dr holds d(its output).
            self.linear_backward(grads, &layer.wo, &mut d_att, &res.dr16, &tape.att, t, qd, d)?;
            let (kp, vp) = (f.pool.plane_start(l, 0), f.pool.plane_start(l, 1));
            let (k_pool, v_pool) = (f.pool.buf.slice(kp..kp + f.pool.plane), f.pool.buf.slice(vp..vp + f.pool.plane));
            attention_backward(
                gpu,
                &mut dq.slice_mut(..),
                &mut dk.slice_mut(..),
                &mut dv.slice_mut(..),
                &d_att.slice(..),
                &tape.q.slice(..),
                &k_pool,
                &v_pool,
                Some(&f.slots.slice(..)),
                &packed,
            )?;
            // The tail's weight gradients go to scratch first (three arena ranges cannot be borrowed at once),
            // then are added in: a column sum over one row is an addition.
            let bias = layer.b_qkv.clone().map(|r| wt.slice(r));
            let norms = layer.qk_norm.clone().map(|[a, b]| (wt.slice(a), wt.slice(b)));
            let extras = QkvExtras { bias: bias.as_ref(), norms: norms.as_ref().map(|(a, b)| (a, b)) };
            let mut db = if bias.is_some() { Some(gpu.zeros::<f32>(width)?) } else { None };
            let (mut dqn, mut dkn) = (gpu.zeros::<f32>(c.head_dim)?, gpu.zeros::<f32>(c.head_dim)?);
            let (mut dqn_v, mut dkn_v) = (dqn.slice_mut(..), dkn.slice_mut(..));
            let mut db_v = db.as_mut().map(|b| b.slice_mut(..));
            let wgrads =
                QkvWeightGrads { bias: db_v.as_mut(), norms: norms.is_some().then_some((&mut dqn_v, &mut dkn_v)) };
            qkv::qkv_backward(
                gpu,
                &mut d_qkv.slice_mut(..),
                wgrads,
                &dq.slice(..),
                &dk.slice(..),
                &dv.slice(..),
                &tape.qkv.slice(..),
                extras,
                &self.inv_freq.slice(..),
                &f.positions.slice(..),
                shape,
            )?;
            if let (Some(r), Some(db)) = (&layer.b_qkv, &db) {
                colsum(gpu, &mut range_mut(grads, r), &db.slice(..), None, None, 1)?;
            }
            if let Some([rq, rk]) = &layer.qk_norm {
                colsum(gpu, &mut range_mut(grads, rq), &dqn.slice(..), None, None, 1)?;
                colsum(gpu, &mut range_mut(grads, rk), &dkn.slice(..), None, None, 1)?;
            }
            self.linear_backward(grads, &layer.w_qkv, &mut dy, &d_qkv, &tape.h_attn, t, d, width)?;
            self.norm_backward(grads, &layer.attn_norm, &mut res, &dy, &tape.x_in)?;
        }
        // dr now holds d(embedding rows).
        norm::embed_backward(gpu, &mut range_mut(grads, &self.embed), &res.dr.slice(..), &EmbedGrad::new(&f.tokens), d)
    }
}

impl CudaModel {
    /// The step scratch, locked, with its attention planned for a packed pass's rows (`(sequence, position)`
    /// each) over its block tables: what every recomputed layer of the pass runs on.
    fn planned_for_recompute(&self, rows: &[(usize, usize)], tables: &[Vec<u32>]) -> Result<MutexGuard<'_, Work>> {
        let mut w = self.work.lock().map_err(|_| anyhow!("an earlier CUDA step panicked"))?;
        let tables: Vec<&[u32]> = tables.iter().map(Vec::as_slice).collect();
        planned_attention(&self.gpu, &self.config, &mut w.attention, BLOCK, rows, &tables, None)?;
        Ok(w)
    }

    /// Layer `l`'s whole tape, made again from its saved input by the same forward code (a forward with
    /// `Record::Inputs` kept only that), on `w` as `planned_for_recompute` left it. It writes the layer's keys
    /// and values into `pool` again, the same values, since every kernel is deterministic.
    fn recompute_layer(
        &self,
        l: usize,
        x_in: &CudaSlice<f32>,
        pool: &mut CudaKvPool,
        w: &mut Work,
        rows: LayerRows,
    ) -> Result<LayerTape> {
        let (gpu, c) = (&*self.gpu, &self.config);
        let Work { layer, attention, .. } = w;
        let attention = &mut attention.as_mut().context("the attention was planned for the recompute")?.1;
        let mut s = layer.get(gpu, c, rows.t)?;
        gpu.stream.memcpy_dtod(&x_in.slice(..), &mut s.x.slice_mut(..rows.t * c.hidden_size))?;
        match self.layer_forward(gpu, l, &mut s, false, pool, attention, rows, Record::All)? {
            Some(Saved::All(tape)) => Ok(*tape),
            _ => Err(anyhow!("a recomputed layer kept no tape")),
        }
    }
}

/// The residual stream's gradient over a pass's `t` rows, fp32, and its bf16 copy (the products' input).
struct Residual {
    dr: CudaSlice<f32>,
    dr16: CudaSlice<bf16>,
    t: usize,
}

impl CudaModel {
    /// A linear layer's backward pass: dx = dy W (fp32, overwritten) and dW += dy^T x, W the arena range `w`
    /// (`[out, inp]`), x the forward's saved input.
    #[allow(clippy::too_many_arguments)] // the product's operands and shape
    fn linear_backward(
        &self,
        grads: &mut CudaSlice<f32>,
        w: &Range<usize>,
        dx: &mut CudaSlice<f32>,
        dy: &CudaSlice<bf16>,
        x: &CudaSlice<bf16>,
        t: usize,
        inp: usize,
        out: usize,
    ) -> Result<()> {
        let (blas, wv) = (&self.gpu.blas, self.weights.slice(w.clone()));
        blas.linear_dx(&mut dx.slice_mut(..), &dy.slice(..), &wv, t, inp, out, false)?;
        blas.linear_dw(&mut range_mut(grads, w), &dy.slice(..), &x.slice(..), t, inp, out, true)
    }

    /// RMSNorm's backward pass (weight: the arena range `w`) from the normalised rows' gradient `dy` and the
    /// forward's residual rows `x`: the residual's gradient grows by the norm's input gradient.
    fn norm_backward(
        &self,
        grads: &mut CudaSlice<f32>,
        w: &Range<usize>,
        res: &mut Residual,
        dy: &CudaSlice<f32>,
        x: &CudaSlice<f32>,
    ) -> Result<()> {
        let (wv, eps) = (self.weights.slice(w.clone()), self.config.rms_norm_eps);
        let (dy, x) = (dy.slice(..), x.slice(..));
        let (dr, dr16) = (&mut res.dr.slice_mut(..), &mut res.dr16.slice_mut(..));
        norm::rmsnorm_backward(&self.gpu, dr, dr16, &mut range_mut(grads, w), &dy, &x, &wv, res.t, eps)
    }
}

/// The optimizer half: fp32 master weights (from the bf16 weights, which rollouts have been reading) and
/// `GpuAdamW`, saved in the CPU optimizer's file format.
impl CudaModel {
    pub(super) fn zero_grads(&mut self) -> Result<()> {
        match self.train.grads.as_mut() {
            Some(g) => self.gpu.stream.memset_zeros(g)?,
            None => self.train.grads = Some(self.gpu.zeros::<f32>(self.weights.len())?),
        }
        Ok(())
    }

    pub(super) fn start_optimizer(&mut self, config: AdamWConfig, saved: Option<&Path>) -> Result<()> {
        let gpu = &*self.gpu;
        let names: Vec<(String, usize)> = self.params.iter().map(|p| (p.name.clone(), p.range.len())).collect();
        let opt = match saved {
            None => GpuAdamW::new(gpu, &names, config)?,
            Some(path) => {
                let state = AdamW::load(path).with_context(|| format!("loading optimizer state {}", path.display()))?;
                ensure!(
                    state.names().iter().map(String::as_str).eq(names.iter().map(|(n, _)| n.as_str())),
                    "optimizer state does not match the model's parameters"
                );
                GpuAdamW::from_cpu(gpu, &state)?
            }
        };
        if self.train.master.is_none() {
            let host: Vec<f32> = gpu.download(&self.weights.slice(..))?.iter().map(|v| v.to_f32()).collect();
            self.train.master = Some(Parkable::Device(gpu.upload(&host)?));
        }
        self.train.opt = Some(opt);
        Ok(())
    }

    pub(super) fn save_optimizer_state(&self, path: &Path) -> Result<()> {
        let opt = self.train.opt.as_ref().context("no optimizer state to save: init_optimizer was never called")?;
        opt.save(&self.gpu, path)
    }

    pub(super) fn optimizer_steps_taken(&self) -> u64 {
        self.train.opt.as_ref().map_or(0, GpuAdamW::step_count)
    }

    /// Clip, check the norm, step, and write the bf16 weights (the CPU backend's order and errors).
    pub(super) fn take_optimizer_step(&mut self, lr: f32, max_grad_norm: f32) -> Result<f32> {
        let gpu = self.gpu.clone();
        if self.train.grads.is_none() {
            self.zero_grads()?;
        }
        let TrainState { grads, master, opt } = &mut self.train;
        let (opt, master) = (opt.as_mut(), master.as_mut());
        let (Some(opt), Some(master), Some(grads)) = (opt, master, grads.as_ref()) else {
            return Err(anyhow!("optimizer_step before init_optimizer"));
        };
        opt.clip_grad_norm(&gpu, &grads.slice(..), max_grad_norm)?;
        let norm = opt.last_norm(&gpu)?;
        ensure!(norm.is_finite(), "gradient norm is {norm}: the update was skipped and training stopped");
        let master = master.device(&gpu)?;
        opt.step(&gpu, &mut master.slice_mut(..), &grads.slice(..), &mut self.weights.slice_mut(..), lr)?;
        Ok(norm)
    }

    /// Between this agent's updates: gradients dropped, master weights and moments to pinned host memory,
    /// so the device holds only the bf16 weights rollouts read (the next optimizer step brings them back).
    pub(super) fn park_training_state(&mut self) -> Result<()> {
        let gpu = self.gpu.clone();
        self.train.grads = None;
        if let Some(m) = self.train.master.as_mut() {
            m.park(&gpu)?;
        }
        if let Some(o) = self.train.opt.as_mut() {
            o.park(&gpu)?;
        }
        Ok(())
    }

    /// A host copy of the gradient buffer (the arena's layout; zeros before any backward).
    pub(super) fn host_gradients(&self) -> Result<Vec<f32>> {
        match &self.train.grads {
            Some(g) => self.gpu.download(&g.slice(..)),
            None => Ok(vec![0.0; self.weights.len()]),
        }
    }

    /// The weights a checkpoint writes: the fp32 master copy once training has started, else the bf16
    /// weights widened.
    pub(super) fn host_weights(&self) -> Result<Vec<f32>> {
        let gpu: &Gpu = &self.gpu;
        Ok(match &self.train.master {
            Some(m) => m.to_host(gpu)?,
            None => gpu.download(&self.weights.slice(..))?.iter().map(|v| v.to_f32()).collect(),
        })
    }
}
