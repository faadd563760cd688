//! The seam between the program and a compute backend: the one interface every caller above it (the
//! engine, rollouts, the trainer, serve, eval, the coach) uses to reach a model, and the choice of backend.
//!
//! Two whole model implementations sit below it, as in llm.c: the f32 CPU reference (`cpu::CpuBackend`) and
//! the bf16 CUDA backend, each free to fuse differently. A [`Model`] is one policy's weights plus, once it
//! trains, its gradient and optimizer state, all on the backend's own memory:
//!
//! - **generation**: [`Model::step`] runs one batched step over sequences whose keys and values live in a
//!   paged pool ([`KvPool`], blocks of `block_size` tokens, one block table per sequence) and samples the
//!   next token of each sequence that asks for one. The block manager and scheduler that decide what goes
//!   into a step are plain Rust above the seam (`engine`).
//! - **scoring**: [`Model::sequence_logprobs`] gives log π(next token) at chosen positions of packed
//!   sequences, forward only (reference and old-policy log-probs, and scoring text);
//!   [`Model::sequence_top_logprobs`] adds the most likely alternatives at each (a prompt's `echo`).
//! - **training**: [`Model::forward_backward`] scores packed sequences, hands the log-probs to the caller's
//!   loss, and adds the gradient of Σ dlogp·logp to the model's gradient buffer; [`Model::optimizer_step`]
//!   clips the global norm and takes an AdamW step on the model's own weights, which the next rollout uses.
//! - **save / load**: [`load`] builds a model from a loaded checkpoint; [`Model::weights`] copies the
//!   weights out by Hugging Face name for writing one.
use crate::config::ModelConfig;
use crate::loader::LoadedModel;
use crate::optim::AdamWConfig;
use crate::sample::{SamplingParams, TokenMask};
use crate::tensor::Weights;
use anyhow::{bail, ensure, Context, Result};
use serde::{Deserialize, Serialize};
use std::any::Any;
use std::path::Path;

/// Which backend to run on, as a user asks for it (`run.backend`, `--device`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum BackendChoice {
    /// CUDA when it can run here, else the CPU.
    #[default]
    Auto,
    Cpu,
    Cuda,
}

/// A backend that runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Backend {
    Cpu,
    Cuda,
}

impl std::fmt::Display for Backend {
    fn fmt(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str(match self {
            Backend::Cpu => "cpu",
            Backend::Cuda => "cuda",
        })
    }
}

/// What a backend is chosen for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Work {
    /// Generation only (`generate`, `serve`).
    Inference,
    /// Generation and training with the same weights (`train`).
    Training,
}

/// Why the CUDA backend cannot run in this process, or None when it can: what an explicit `cuda` choice
/// fails with.
pub fn cuda_unavailable() -> Option<String> {
    if !crate::kernels::BUILT {
        return Some("this build has no CUDA kernels (nvcc was not found when it was compiled)".into());
    }
    if crate::cuda::device().is_none() {
        return Some("no CUDA device is visible (no driver, or no GPU)".into());
    }
    None
}

/// Why `auto` leaves `work` on the CPU even where CUDA runs: the CUDA training path has not yet passed its
/// device tests (issue 11), so only an explicit `cuda` choice takes it.
fn auto_declines(work: Work) -> Option<&'static str> {
    match work {
        Work::Inference => None,
        Work::Training => Some("CUDA training has not yet passed its device tests; set backend = \"cuda\" to use it"),
    }
}

/// Why `auto` picks the CPU for `work` here, or None when it picks CUDA.
pub fn auto_cpu_reason(work: Work) -> Option<String> {
    cuda_unavailable().or_else(|| auto_declines(work).map(String::from))
}

/// The backend `choice` resolves to for `work`: `auto` takes CUDA when it can do the work (and is trusted
/// to), else the CPU; an explicit `cuda` that cannot run is an error that says why.
pub fn resolve(choice: BackendChoice, work: Work) -> Result<Backend> {
    pick(choice, work, cuda_unavailable().as_deref())
}

/// `choice` for `work` given why CUDA cannot run (None: it can).
fn pick(choice: BackendChoice, work: Work, cuda_why_not: Option<&str>) -> Result<Backend> {
    match (choice, cuda_why_not) {
        (BackendChoice::Cpu, _) | (BackendChoice::Auto, Some(_)) => Ok(Backend::Cpu),
        (BackendChoice::Auto, None) if auto_declines(work).is_some() => Ok(Backend::Cpu),
        (BackendChoice::Auto | BackendChoice::Cuda, None) => Ok(Backend::Cuda),
        (BackendChoice::Cuda, Some(why)) => bail!("the CUDA backend was asked for, but {why}; use the cpu backend"),
    }
}

/// `resolve`, saying on stderr which backend was chosen and, for `auto` on the CPU, why not CUDA. The
/// device is probed once.
pub fn resolve_and_report(choice: BackendChoice, work: Work, what: &str) -> Result<Backend> {
    let why = cuda_unavailable();
    let b = pick(choice, work, why.as_deref())?;
    match (choice, b) {
        (BackendChoice::Auto, Backend::Cpu) => {
            let reason = why.or_else(|| auto_declines(work).map(String::from)).unwrap_or_default();
            eprintln!("{what}: backend cpu (auto: {reason})")
        }
        _ => eprintln!("{what}: backend {b}"),
    }
    Ok(b)
}

/// The model of `m` on `backend`.
pub fn load(m: &LoadedModel, backend: Backend) -> Result<Box<dyn Model>> {
    match backend {
        Backend::Cpu => Ok(Box::new(crate::cpu::CpuBackend::new(m)?)),
        Backend::Cuda => Ok(Box::new(crate::cuda::model::CudaModel::new(m)?)),
    }
}

/// The model of `m` on `backend`, to be trained: on the GPU its fp32 master weights start as `m`'s values
/// exactly, not as their bf16 rounding, so a run resumed from an f32 checkpoint continues bit for bit.
pub fn load_for_training(m: &LoadedModel, backend: Backend) -> Result<Box<dyn Model>> {
    match backend {
        Backend::Cpu => load(m, backend),
        Backend::Cuda => Ok(Box::new(crate::cuda::model::CudaModel::for_training(m)?)),
    }
}

/// Errors on an empty input or an id outside the vocabulary.
pub fn check_tokens(cfg: &ModelConfig, tokens: &[u32]) -> Result<()> {
    if tokens.is_empty() {
        bail!("forward needs at least one token");
    }
    if let Some(&bad) = tokens.iter().find(|&&id| id as usize >= cfg.vocab_size) {
        bail!("token id {bad} is outside the vocabulary (size {})", cfg.vocab_size);
    }
    Ok(())
}

/// Errors when a sequence of `end` positions exceeds the model's.
pub fn check_end(cfg: &ModelConfig, end: usize) -> Result<()> {
    let max = cfg.max_position_embeddings;
    if end > max {
        bail!("a sequence of {end} positions exceeds the model's {max}");
    }
    Ok(())
}

/// Errors on anything in `batch` that does not fit the model or `pool`: both backends check a step with it
/// before they write anything.
pub fn check_step(cfg: &ModelConfig, pool: &dyn KvPool, batch: &StepBatch) -> Result<()> {
    let (nb, bs) = (pool.num_blocks(), pool.block_size());
    if let Some((from, to)) = batch.copies.iter().find(|&&(f, t)| f as usize >= nb || t as usize >= nb) {
        bail!("block copy {from} -> {to} is outside the pool of {nb} blocks");
    }
    for (i, s) in batch.seqs.iter().enumerate() {
        let at = || format!("sequence {i} of the step");
        check_tokens(cfg, s.tokens).with_context(at)?;
        let end = s.pos.saturating_add(s.tokens.len());
        check_end(cfg, end).with_context(at)?;
        let need = end.div_ceil(bs);
        ensure!(
            s.block_table.len() >= need,
            "{}: {end} positions need {need} blocks of {bs}, the block table has {}",
            at(),
            s.block_table.len()
        );
        if let Some(b) = s.block_table[..need].iter().find(|&&b| b as usize >= nb) {
            bail!("{}: block {b} is outside the pool of {nb} blocks", at());
        }
    }
    Ok(())
}

/// A backend's key/value storage: `num_blocks` blocks of `block_size` positions, every layer's keys and
/// values. Which block holds what is the engine's business; the backend only reads and writes the slots
/// that block tables name.
pub trait KvPool: Send {
    fn num_blocks(&self) -> usize;
    fn block_size(&self) -> usize;
    /// For the backend that made it, to reach its own storage.
    fn as_any_mut(&mut self) -> &mut dyn Any;
}

/// How a sequence's next token is drawn.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct SampleSpec {
    pub params: SamplingParams,
    /// How many tokens the sequence has generated so far: with the seed it picks the random draw, so a
    /// sequence's tokens never depend on what else is in the batch or on a preemption.
    pub index: u64,
}

/// One sequence's share of a [`Model::step`].
#[derive(Clone, Debug)]
pub struct StepSeq<'a> {
    /// The tokens to run: a chunk of the prompt, or the one token sampled last.
    pub tokens: &'a [u32],
    /// Position of `tokens[0]`: how many of the sequence's tokens are already in the pool.
    pub pos: usize,
    /// The blocks holding positions `0 .. pos + tokens.len()`, in order.
    pub block_table: &'a [u32],
    /// Sample the token after the last of `tokens`; None for a prompt chunk that does not end the prompt.
    pub sample: Option<SampleSpec>,
    /// With `sample`: the only tokens it may pick (a constrained sequence, `crate::engine::Constraint`), drawn
    /// as [`crate::sample::sample_masked`] draws them on every backend; None: any token.
    pub allowed: Option<&'a TokenMask>,
}

/// One batched step: block copies first (copy-on-write of shared blocks, `(from, to)`), then every
/// sequence's tokens, whose keys and values are written into their block tables' slots.
#[derive(Clone, Debug, Default)]
pub struct StepBatch<'a> {
    pub copies: Vec<(u32, u32)>,
    pub seqs: Vec<StepSeq<'a>>,
}

/// A sampled token and its log-probability under softmax(logits / T) before any top-k/top-p cut (T = 1
/// when greedy): the rollout policy's log-prob that training needs.
#[derive(Clone, Debug, PartialEq)]
pub struct Sampled {
    pub id: u32,
    pub logprob: f32,
    /// The `params.top_logprobs` most likely tokens of the same distribution with their log-probs, most
    /// likely first, ties by the lower id (`crate::sample::sample_with_top`); empty when none were asked for.
    /// `logprob` is its own entry's value when it is among them.
    pub top: Vec<(u32, f32)>,
}

/// Packed sequences for scoring or training: `seq_lens` sum to `tokens.len()`, each sequence has positions
/// from 0 and attends only within itself; `positions` are the packed positions whose next token is scored.
#[derive(Clone, Copy, Debug)]
pub struct Packed<'a> {
    pub tokens: &'a [u32],
    pub seq_lens: &'a [usize],
    pub positions: &'a [usize],
}

/// The loss of a training pass: given the scored log-probs, returns d loss / d logp (same length).
pub type LossFn<'a> = dyn FnMut(&[f32]) -> Result<Vec<f32>> + 'a;

/// One policy's weights on a backend (module docs).
pub trait Model: Send + Sync {
    fn config(&self) -> &ModelConfig;
    fn backend(&self) -> Backend;

    /// Bytes one KV block of `block_size` positions takes (keys and values of every layer).
    fn kv_block_bytes(&self, block_size: usize) -> usize;
    /// Free bytes of the memory the KV pool would take, where the backend has memory of its own (a GPU);
    /// None on the CPU, where the engine's `kv_bytes` budget applies.
    fn free_memory(&self) -> Option<usize> {
        None
    }
    fn new_kv_pool(&self, num_blocks: usize, block_size: usize) -> Result<Box<dyn KvPool>>;
    /// Runs one batched step (see [`StepBatch`]); one entry per sequence, `Some` where it asked to sample.
    fn step(&self, kv: &mut dyn KvPool, batch: &StepBatch) -> Result<Vec<Option<Sampled>>>;

    /// log π(next token) at `p.positions` under softmax(logits / temperature), forward only.
    fn sequence_logprobs(&self, p: Packed, temperature: f32) -> Result<Vec<f32>>;
    /// `sequence_logprobs` with, at each position, the `k` most likely next tokens of the same distribution
    /// and their log-probs (most likely first, ties by the lower id; `k` at most
    /// [`crate::sample::MAX_TOP_LOGPROBS`]), from the same forward pass: what `echo` with `logprobs` serves.
    /// A backend that cannot give alternatives refuses `k > 0` (this default) rather than guess.
    fn sequence_top_logprobs(&self, p: Packed, temperature: f32, k: usize) -> Result<(Vec<f32>, Vec<Vec<(u32, f32)>>)> {
        ensure!(k == 0, "top log-probs of a scored sequence are not supported on the {} backend yet", self.backend());
        Ok((self.sequence_logprobs(p, temperature)?, vec![Vec::new(); p.positions.len()]))
    }
    /// Scores `p` like `sequence_logprobs`, calls `loss` with the log-probs, and adds the gradient of
    /// Σ dlogp·logp (dlogp as `loss` returned it) to the gradient buffer. `recompute` keeps only layer
    /// inputs in the forward and recomputes the rest in the backward.
    fn forward_backward(&mut self, p: Packed, temperature: f32, recompute: bool, loss: &mut LossFn) -> Result<()>;
    /// Sets the gradient buffer to zero (allocating it on first use).
    fn zero_grad(&mut self);
    /// A host copy of the gradient buffer in the arena's layout (zeros before any backward): what tests
    /// compare across backends and against PyTorch.
    fn gradients(&self) -> Result<Vec<f32>>;
    /// Starts fresh AdamW state, or restores state saved by `save_optimizer`.
    fn init_optimizer(&mut self, config: AdamWConfig, saved: Option<&Path>) -> Result<()>;
    fn save_optimizer(&self, path: &Path) -> Result<()>;
    /// Optimizer steps taken (0 before `init_optimizer`).
    fn optimizer_steps(&self) -> u64;
    /// Between this policy's updates: moves what only training needs (gradients, optimizer state) out of
    /// the way, so the other agents' updates and the rollouts have the memory (the CUDA backend parks it in
    /// pinned host memory; the next training call brings it back). Nothing to do on the CPU.
    fn park_training_state(&mut self) -> Result<()> {
        Ok(())
    }
    /// Clips the gradient's global norm to `max_grad_norm`, then one AdamW step at `lr`; returns the norm
    /// before clipping. A non-finite norm is an error and no step is taken.
    fn optimizer_step(&mut self, lr: f32, max_grad_norm: f32) -> Result<f32>;

    /// A host copy of the weights in f32, by Hugging Face name: what a checkpoint writes.
    fn weights(&self) -> Result<Weights>;
}

#[cfg(test)]
mod tests {
    use super::{pick, Backend, BackendChoice, Work};

    /// `auto` takes CUDA for generation where it runs, keeps training on the CPU until CUDA training has
    /// passed its device tests, and an explicit `cuda` takes both or fails saying why.
    #[test]
    fn choices_resolve_by_work_and_device() {
        use BackendChoice::{Auto, Cpu, Cuda};
        for work in [Work::Inference, Work::Training] {
            assert_eq!(pick(Cpu, work, None).unwrap(), Backend::Cpu);
            assert_eq!(pick(Auto, work, Some("no device")).unwrap(), Backend::Cpu);
            assert_eq!(pick(Cuda, work, None).unwrap(), Backend::Cuda);
            let err = pick(Cuda, work, Some("no device")).unwrap_err().to_string();
            assert!(err.contains("no device") && err.contains("cpu backend"), "{err}");
        }
        assert_eq!(pick(Auto, Work::Inference, None).unwrap(), Backend::Cuda);
        assert_eq!(pick(Auto, Work::Training, None).unwrap(), Backend::Cpu);
    }
}
