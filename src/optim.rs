//! AdamW, learning-rate schedule and gradient clipping, CPU reference (issue 4).
//!
//! The CPU side of training: the numbers GPU optimizer kernels are checked against, and what resumed runs
//! must reproduce. Each piece mirrors the PyTorch/transformers code MAPPA (via OpenRLHF) trains with, op for
//! op, so `tests/optim.rs` can replay a recorded `torch.optim.AdamW` trajectory:
//! - [`AdamW`]: `torch.optim.AdamW`'s single-tensor path with fp32 state; saved to and restored from one
//!   safetensors file exactly, so a resumed run continues bit-identically.
//! - [`LrSchedule`]: transformers' `get_cosine_with_min_lr_schedule_with_warmup` (OpenRLHF's
//!   `cosine_with_min_lr`), held at its floor after the last step.
//! - [`clip_grad_norm`]: `torch.nn.utils.clip_grad_norm_` with a thread-count-independent reduction.
//!
//! MAPPA's defaults: lr 1e-6, betas (0.9, 0.95), eps 1e-8, no weight decay, clip at 1.0, cosine decay to
//! 0.1 x lr after a warm-up over 3 % of the steps.
use anyhow::{bail, ensure, Context, Result};
use rayon::prelude::*;
use safetensors::tensor::TensorView;
use safetensors::{Dtype, SafeTensors};
use serde::{Deserialize, Serialize};
use std::collections::{HashMap, HashSet};
use std::path::Path;

/// MAPPA's peak learning rate.
pub const MAPPA_LR: f32 = 1e-6;
/// Fraction of the steps spent warming up.
pub const MAPPA_WARMUP_RATIO: f64 = 0.03;
/// The cosine ends at this fraction of the peak learning rate.
pub const MAPPA_MIN_LR_RATIO: f32 = 0.1;
/// Global gradient-norm clipping threshold.
pub const MAPPA_MAX_GRAD_NORM: f32 = 1.0;

/// Elementwise work is split into chunks of this many floats: the unit of parallelism, and (for the norm)
/// the fixed partition whose partial sums are added in order, so results never depend on the thread count.
const CHUNK: usize = 1 << 14;
/// Safetensors metadata key holding the [`Header`].
const HEADER_KEY: &str = "mappa.adamw";

/// AdamW hyper-parameters other than the learning rate, which is passed to each [`AdamW::step`].
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct AdamWConfig {
    pub betas: (f32, f32),
    pub eps: f32,
    /// Decoupled: each step multiplies parameters by `1 - lr * weight_decay`.
    pub weight_decay: f32,
}

impl Default for AdamWConfig {
    /// MAPPA's settings.
    fn default() -> Self {
        Self { betas: (0.9, 0.95), eps: 1e-8, weight_decay: 0.0 }
    }
}

/// AdamW over a fixed list of named f32 parameters, with `torch.optim.AdamW` semantics (the non-foreach,
/// non-fused `_single_tensor_adam` with `decoupled_weight_decay`, amsgrad and maximize off). With `t` the
/// step count after increment (1 on the first step), step `t` does, in this order:
/// ```text
/// p = p * (1 - lr*wd)                                       (skipped when wd == 0)
/// m = m + (1-b1) * (g - m)                                  (exp_avg.lerp_(g, 1-b1))
/// v = v*b2 + (1-b2)*g*g                                     (exp_avg_sq.mul_(b2).addcmul_(g, g, 1-b2))
/// denom = sqrt(v) / sqrt(1 - b2^t) + eps                    (eps is added to sqrt(v_hat), not sqrt(v))
/// p = p + (-(lr / (1 - b1^t))) * m / denom                  (p.addcdiv_(m, denom, value=-step_size))
/// ```
/// Scalars are formed in f64 as Python does, then rounded to f32 where they meet the f32 tensors, which
/// are updated in f32 in PyTorch's operation order, with FMAs where ATen's vectorised CPU kernels have
/// them: `m` is `fma(1-b1, g - m, m)` and `v` is `fma((1-b2)*g, g, v*b2)`; the rest is unfused. That matches
/// PyTorch bit for bit except where ATen's `sqrt` (not always correctly rounded) or its f64 learning rate
/// (ours is f32) round differently, which moves a parameter by about an f32 ulp.
#[derive(Clone, Debug, PartialEq)]
pub struct AdamW {
    config: AdamWConfig,
    names: Vec<String>,
    /// First moment (`exp_avg`), one vector per parameter.
    m: Vec<Vec<f32>>,
    /// Second moment (`exp_avg_sq`).
    v: Vec<Vec<f32>>,
    /// Steps taken (PyTorch keeps one per parameter; they are always equal here).
    step: u64,
}

/// The scalars of one AdamW update (see [`AdamW`] for where each enters).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct StepScalars {
    /// 1 - lr * weight_decay (1 without weight decay).
    pub decay: f32,
    pub m_weight: f32,
    pub v_decay: f32,
    pub v_weight: f32,
    pub neg_step_size: f32,
    pub bc2_sqrt: f32,
    pub eps: f32,
}

/// The f32 scalars of update number `step` (1 on the first) at learning rate `lr`, formed in f64 as
/// Python does; the CUDA step takes the same numbers, so both round alike.
pub fn step_scalars(config: &AdamWConfig, step: u64, lr: f32) -> StepScalars {
    let (b1, b2) = (f64::from(config.betas.0), f64::from(config.betas.1));
    let (lr, wd, t) = (f64::from(lr), f64::from(config.weight_decay), step as f64);
    StepScalars {
        decay: (1.0 - lr * wd) as f32,
        m_weight: (1.0 - b1) as f32,
        v_decay: b2 as f32,
        v_weight: (1.0 - b2) as f32,
        // `powf` and `** 0.5` as in Python (both are libm's pow), not powi/sqrt, to round the same way.
        neg_step_size: (-(lr / (1.0 - b1.powf(t)))) as f32,
        bc2_sqrt: (1.0 - b2.powf(t)).powf(0.5) as f32,
        eps: config.eps,
    }
}

/// What a state file carries besides the moments.
#[derive(Serialize, Deserialize)]
struct Header {
    step: u64,
    config: AdamWConfig,
    /// Parameter order; moment tensors are named `{name}.exp_avg` and `{name}.exp_avg_sq`.
    names: Vec<String>,
}

impl AdamW {
    /// Zero state for parameters given as (name, element count) in the order `step` will receive them.
    /// Names must be unique and non-empty: they key the saved state.
    pub fn new<N: Into<String>>(params: impl IntoIterator<Item = (N, usize)>, config: AdamWConfig) -> Result<Self> {
        let (names, sizes): (Vec<String>, Vec<usize>) = params.into_iter().map(|(n, s)| (n.into(), s)).unzip();
        let mut seen = HashSet::new();
        for name in &names {
            ensure!(!name.is_empty(), "AdamW: empty parameter name");
            ensure!(seen.insert(name.as_str()), "AdamW: duplicate parameter name {name:?}");
        }
        let zeros = || sizes.iter().map(|&n| vec![0.0; n]).collect();
        Ok(Self { config, m: zeros(), v: zeros(), names, step: 0 })
    }

    pub fn config(&self) -> &AdamWConfig {
        &self.config
    }

    /// Parameter names, in `step` order.
    pub fn names(&self) -> &[String] {
        &self.names
    }

    /// Steps taken so far.
    pub fn step_count(&self) -> u64 {
        self.step
    }

    /// One AdamW update of `params` with `grads` (same order and sizes as at construction) at learning rate
    /// `lr`. Sizes are checked before anything changes: on error neither parameters nor state are touched.
    pub fn step(&mut self, params: &mut [&mut [f32]], grads: &[&[f32]], lr: f32) -> Result<()> {
        self.check_sizes("parameters", params.iter().map(|p| p.len()))?;
        self.check_sizes("gradients", grads.iter().map(|g| g.len()))?;
        self.step += 1;
        let StepScalars { decay, m_weight, v_decay, v_weight, neg_step_size, bc2_sqrt, eps } =
            step_scalars(&self.config, self.step, lr);
        let decay = (self.config.weight_decay != 0.0).then_some(decay);
        for (((p, g), m), v) in params.iter_mut().zip(grads).zip(&mut self.m).zip(&mut self.v) {
            p.par_chunks_mut(CHUNK)
                .zip(g.par_chunks(CHUNK))
                .zip(m.par_chunks_mut(CHUNK))
                .zip(v.par_chunks_mut(CHUNK))
                .for_each(|(((p, g), m), v)| {
                    for (((p, &g), m), v) in p.iter_mut().zip(g).zip(m).zip(v) {
                        if let Some(decay) = decay {
                            *p *= decay;
                        }
                        *m = lerp(*m, g, m_weight);
                        *v = (v_weight * g).mul_add(g, *v * v_decay);
                        let denom = v.sqrt() / bc2_sqrt + eps;
                        *p += neg_step_size * *m / denom;
                    }
                });
        }
        Ok(())
    }

    /// The moments, (first, second), one vector per parameter in `names` order.
    pub fn moments(&self) -> (&[Vec<f32>], &[Vec<f32>]) {
        (&self.m, &self.v)
    }

    /// State from its parts (a device copy of the moments, for `save`): sizes must pair up.
    pub fn from_parts(
        names: Vec<String>,
        config: AdamWConfig,
        m: Vec<Vec<f32>>,
        v: Vec<Vec<f32>>,
        step: u64,
    ) -> Result<Self> {
        ensure!(
            m.len() == names.len() && v.len() == names.len(),
            "AdamW: {} names for {} / {} moments",
            names.len(),
            m.len(),
            v.len()
        );
        let mut state = Self::new(names.into_iter().zip(m.iter().map(Vec::len)), config)?;
        for (name, (a, b)) in state.names.iter().zip(m.iter().zip(&v)) {
            ensure!(a.len() == b.len(), "AdamW: moments of {name:?} differ in size");
        }
        (state.m, state.v, state.step) = (m, v, step);
        Ok(state)
    }

    /// Errors unless `sizes` lists exactly this optimizer's parameter sizes.
    fn check_sizes(&self, what: &str, sizes: impl ExactSizeIterator<Item = usize>) -> Result<()> {
        ensure!(sizes.len() == self.m.len(), "AdamW: got {} {what}, expected {}", sizes.len(), self.m.len());
        for ((len, m), name) in sizes.zip(&self.m).zip(&self.names) {
            ensure!(len == m.len(), "AdamW: {what} for {name:?} have {len} elements, expected {}", m.len());
        }
        Ok(())
    }

    /// Writes the moments as 1-D F32 tensors `{name}.exp_avg` / `{name}.exp_avg_sq` (native byte order, which
    /// is little-endian on every target mappa builds for) and the step count, config and parameter order as
    /// JSON metadata, in one safetensors file. safetensors' `serialize_to_file` writes a temporary file beside
    /// `path` and renames it over `path`, so a crash never leaves a torn file.
    pub fn save(&self, path: &Path) -> Result<()> {
        let header = Header { step: self.step, config: self.config, names: self.names.clone() };
        let metadata = HashMap::from([(HEADER_KEY.to_string(), serde_json::to_string(&header)?)]);
        let mut tensors = Vec::with_capacity(2 * self.names.len());
        for ((name, m), v) in self.names.iter().zip(&self.m).zip(&self.v) {
            for (suffix, values) in [("exp_avg", m), ("exp_avg_sq", v)] {
                let bytes: &[u8] = bytemuck::cast_slice(values);
                tensors.push((format!("{name}.{suffix}"), TensorView::new(Dtype::F32, vec![values.len()], bytes)?));
            }
        }
        safetensors::serialize_to_file(tensors, Some(metadata), path)
            .with_context(|| format!("cannot write optimizer state {}", path.display()))
    }

    /// Reads a file written by [`AdamW::save`]; errors on anything missing, extra, mis-typed or truncated.
    pub fn load(path: &Path) -> Result<Self> {
        let bytes = std::fs::read(path).with_context(|| format!("cannot read optimizer state {}", path.display()))?;
        let context = || format!("bad optimizer state {}", path.display());
        let (_, metadata) = SafeTensors::read_metadata(&bytes).with_context(context)?;
        let file = SafeTensors::deserialize(&bytes).with_context(context)?;
        let header = metadata.metadata().as_ref().and_then(|m| m.get(HEADER_KEY)).with_context(context)?;
        let header: Header = serde_json::from_str(header).with_context(context)?;
        let mut state = Self::new(header.names.iter().map(|n| (n.as_str(), 0)), header.config).with_context(context)?;
        ensure!(
            file.len() == 2 * header.names.len(),
            "{}: expected {} tensors, found {}",
            context(),
            2 * header.names.len(),
            file.len()
        );
        for ((name, m), v) in header.names.iter().zip(&mut state.m).zip(&mut state.v) {
            *m = read_f32(&file, &format!("{name}.exp_avg")).with_context(context)?;
            *v = read_f32(&file, &format!("{name}.exp_avg_sq")).with_context(context)?;
            ensure!(m.len() == v.len(), "{}: moments of {name:?} differ in size", context());
        }
        state.step = header.step;
        Ok(state)
    }
}

/// ATen's vectorised CPU `lerp`: `start + w * (end - start)` for |w| < 0.5, otherwise
/// `end + (w - 1) * (end - start)`, each as one fused multiply-add.
fn lerp(start: f32, end: f32, weight: f32) -> f32 {
    let (coeff, base) = if weight.abs() < 0.5 { (weight, start) } else { (weight - 1.0, end) };
    coeff.mul_add(end - start, base)
}

/// A 1-D f32 tensor of `file`, decoded from little-endian bytes.
fn read_f32(file: &SafeTensors, name: &str) -> Result<Vec<f32>> {
    let view = file.tensor(name)?;
    if view.dtype() != Dtype::F32 || view.shape().len() != 1 {
        bail!("{name}: expected a 1-D F32 tensor, found {:?} {:?}", view.dtype(), view.shape());
    }
    Ok(view.data().chunks_exact(4).map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])).collect())
}

/// Linear warm-up then cosine decay to a floor: transformers' `get_cosine_with_min_lr_schedule_with_warmup`
/// with `num_cycles = 0.5` and `min_lr_rate = min_lr_ratio` (OpenRLHF's `cosine_with_min_lr` scheduler).
/// For `step` updates already taken (so the first update uses `lr(0)`, as with `LambdaLR`):
/// ```text
/// step < warmup:  lr = base_lr * step / max(1, warmup)                          (0 at step 0)
/// otherwise:      progress = min(1, (step - warmup) / max(1, total - warmup))
///                 lr = base_lr * (r + (1 - r) * 0.5 * (1 + cos(pi * progress)))  (r = min_lr_ratio)
/// ```
/// computed in f64 and rounded to f32 once. The `min(1, ..)` is the one departure: transformers lets the
/// cosine climb again past `total_steps`; here the LR stays at `min_lr_ratio * base_lr` from then on.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct LrSchedule {
    pub base_lr: f32,
    pub warmup_steps: u64,
    pub total_steps: u64,
    /// In [0, 1].
    pub min_lr_ratio: f32,
}

impl LrSchedule {
    /// MAPPA's schedule over `total_steps` updates.
    pub fn mappa(total_steps: u64) -> Self {
        Self {
            base_lr: MAPPA_LR,
            warmup_steps: warmup_steps(total_steps, MAPPA_WARMUP_RATIO),
            total_steps,
            min_lr_ratio: MAPPA_MIN_LR_RATIO,
        }
    }

    /// The learning rate for the update that follows `step` completed updates.
    pub fn lr(&self, step: u64) -> f32 {
        let factor = if step < self.warmup_steps {
            step as f64 / self.warmup_steps.max(1) as f64
        } else {
            let span = self.total_steps.saturating_sub(self.warmup_steps).max(1);
            let progress = ((step - self.warmup_steps) as f64 / span as f64).min(1.0);
            let ratio = f64::from(self.min_lr_ratio);
            0.5 * (1.0 + (std::f64::consts::PI * progress).cos()) * (1.0 - ratio) + ratio
        };
        (f64::from(self.base_lr) * factor) as f32
    }
}

/// Warm-up length as OpenRLHF computes it: `ceil(total_steps * warmup_ratio)` with the product in f64 (so
/// any partial step rounds up: 3 % of 10 steps is 1 step, of 100 is 3, of 101 is 4).
pub fn warmup_steps(total_steps: u64, warmup_ratio: f64) -> u64 {
    (total_steps as f64 * warmup_ratio).ceil() as u64
}

/// `torch.nn.utils.clip_grad_norm_` over all `grads` together: returns the total L2 norm before clipping
/// and, when `max_norm / (norm + 1e-6) < 1`, scales every gradient by that coefficient (computed in f32 as
/// PyTorch does). The norm sums squares in f64 over fixed chunks added in a fixed order, so it is the same
/// for any thread count. A non-finite norm (NaN or infinite gradients, or an f32 overflow) is returned with
/// the gradients left unchanged; PyTorch would scale them by NaN or 0 instead. Never panics.
pub fn clip_grad_norm(grads: &mut [&mut [f32]], max_norm: f32) -> f32 {
    let chunks: Vec<&[f32]> = grads.iter().flat_map(|g| g.chunks(CHUNK)).collect();
    let partials: Vec<f64> = chunks.par_iter().map(|c| c.iter().map(|&x| f64::from(x) * f64::from(x)).sum()).collect();
    let norm = partials.iter().sum::<f64>().sqrt() as f32;
    let coef = max_norm / (norm + 1e-6);
    if norm.is_finite() && coef < 1.0 {
        for g in grads.iter_mut() {
            g.par_chunks_mut(CHUNK).for_each(|c| c.iter_mut().for_each(|x| *x *= coef));
        }
    }
    norm
}
