//! The CPU backend behind the model interface (`crate::model::Model`): the f32 `CpuModel` with, once it
//! trains, a gradient buffer in the arena's layout and AdamW state. Generation runs the paged batched step
//! (`paged`), scoring and training the packed-sequence pass (`train`).
use super::model::{split_params, CpuModel};
use super::paged::CpuKvPool;
use crate::config::ModelConfig;
use crate::loader::LoadedModel;
use crate::model::{Backend, KvPool, LossFn, Model, Packed, Sampled, StepBatch};
use crate::optim::{clip_grad_norm, AdamW, AdamWConfig};
use crate::tensor::Weights;
use anyhow::{ensure, Context, Result};
use std::path::Path;

pub struct CpuBackend {
    pub model: CpuModel,
    grads: Vec<f32>,
    opt: Option<AdamW>,
}

impl CpuBackend {
    pub fn new(m: &LoadedModel) -> Result<CpuBackend> {
        Ok(CpuBackend::from_model(CpuModel::new(m)?))
    }

    pub fn from_model(model: CpuModel) -> CpuBackend {
        CpuBackend { model, grads: Vec::new(), opt: None }
    }
}

impl Model for CpuBackend {
    fn config(&self) -> &ModelConfig {
        &self.model.config
    }

    fn backend(&self) -> Backend {
        Backend::Cpu
    }

    fn kv_block_bytes(&self, block_size: usize) -> usize {
        CpuKvPool::block_bytes(&self.model.config, block_size)
    }

    fn new_kv_pool(&self, num_blocks: usize, block_size: usize) -> Result<Box<dyn KvPool>> {
        Ok(Box::new(CpuKvPool::new(&self.model.config, num_blocks, block_size)?))
    }

    fn step(&self, kv: &mut dyn KvPool, batch: &StepBatch) -> Result<Vec<Option<Sampled>>> {
        let pool = kv.as_any_mut().downcast_mut::<CpuKvPool>().context("a KV pool of another backend")?;
        let logits = self.model.forward_paged(pool, batch)?;
        let v = self.model.config.vocab_size;
        let mut rows = logits.chunks_exact(v);
        let mut out = Vec::with_capacity(batch.seqs.len());
        for s in &batch.seqs {
            let Some(spec) = s.sample else {
                out.push(None);
                continue;
            };
            let row = rows.next().context("fewer logit rows than sampling sequences")?;
            out.push(Some(crate::sample::sample_masked(row, &spec.params, spec.index, s.allowed)?));
        }
        Ok(out)
    }

    fn sequence_logprobs(&self, p: Packed, temperature: f32) -> Result<Vec<f32>> {
        self.model.sequence_logprobs(p.tokens, p.seq_lens, p.positions, temperature)
    }

    fn sequence_top_logprobs(&self, p: Packed, temperature: f32, k: usize) -> Result<(Vec<f32>, Vec<Vec<(u32, f32)>>)> {
        self.model.sequence_top_logprobs(p.tokens, p.seq_lens, p.positions, temperature, k)
    }

    fn forward_backward(&mut self, p: Packed, temperature: f32, recompute: bool, loss: &mut LossFn) -> Result<()> {
        let tape = self.model.forward_train(p.tokens, p.seq_lens, recompute)?;
        let scores = self.model.score(&tape, p.positions, temperature)?;
        let dlogp = loss(&scores.logp)?;
        ensure!(
            dlogp.len() == scores.logp.len(),
            "the loss gave {} gradients for {} log-probs",
            dlogp.len(),
            scores.logp.len()
        );
        if self.grads.len() != self.model.param_len() {
            self.grads = vec![0.0; self.model.param_len()];
        }
        self.model.backward(tape, &scores, &dlogp, &mut self.grads)
    }

    fn zero_grad(&mut self) {
        self.grads.clear();
        self.grads.resize(self.model.param_len(), 0.0);
    }

    fn gradients(&self) -> Result<Vec<f32>> {
        Ok(match self.grads.is_empty() {
            true => vec![0.0; self.model.param_len()],
            false => self.grads.clone(),
        })
    }

    fn init_optimizer(&mut self, config: AdamWConfig, saved: Option<&Path>) -> Result<()> {
        let opt = match saved {
            None => AdamW::new(self.model.params().iter().map(|p| (p.name.clone(), p.range.len())), config)?,
            Some(path) => AdamW::load(path).with_context(|| format!("loading optimizer state {}", path.display()))?,
        };
        ensure!(
            opt.names().iter().map(String::as_str).eq(self.model.params().iter().map(|p| p.name.as_str())),
            "optimizer state does not match the model's parameters"
        );
        self.opt = Some(opt);
        Ok(())
    }

    fn save_optimizer(&self, path: &Path) -> Result<()> {
        self.opt.as_ref().context("no optimizer state to save: init_optimizer was never called")?.save(path)
    }

    fn optimizer_steps(&self) -> u64 {
        self.opt.as_ref().map_or(0, AdamW::step_count)
    }

    fn optimizer_step(&mut self, lr: f32, max_grad_norm: f32) -> Result<f32> {
        let opt = self.opt.as_mut().context("optimizer_step before init_optimizer")?;
        if self.grads.len() != self.model.param_len() {
            self.grads = vec![0.0; self.model.param_len()];
        }
        let (params, flat) = self.model.params_and_flat_mut();
        let mut g = split_params(params, &mut self.grads);
        let norm = clip_grad_norm(&mut g, max_grad_norm);
        ensure!(norm.is_finite(), "gradient norm is {norm}: the update was skipped and training stopped");
        let g: Vec<&[f32]> = g.into_iter().map(|s| &*s).collect();
        opt.step(&mut split_params(params, flat), &g, lr)?;
        Ok(norm)
    }

    fn weights(&self) -> Result<Weights> {
        Ok(self.model.to_weights())
    }
}
