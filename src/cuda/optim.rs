//! The optimizer on the GPU (`kernels/adamw.cu`): fp32 master weights and fp32 moments, because the
//! paper's learning rate of 1e-6 rounds away in a bf16 weight; a global gradient norm reduced in a fixed
//! order; one AdamW launch over every parameter (they lie end to end in one flat buffer each), which also
//! writes the bf16 copy that rollouts read. The clip coefficient stays on the device between the two
//! launches, so a step never waits for the host.
//! CPU twins: `optim::clip_grad_norm` and `optim::AdamW` (the same step scalars, `optim::step_scalars`;
//! saved in the same file format); test: `tests/cuda_train.rs` (`adamw_matches_cpu`).
use super::device::blocks_for;
use super::Gpu;
use crate::optim::{step_scalars, AdamW, AdamWConfig, StepScalars};
use anyhow::{ensure, Result};
use cudarc::driver::{CudaSlice, CudaView, CudaViewMut, LaunchConfig, PinnedHostSlice, PushKernelArg};
use half::bf16;
use std::path::Path;

/// Elements per partial sum of the norm: `NORM_CHUNK` in kernels/adamw.cu.
const NORM_CHUNK: usize = 16384;

/// An fp32 buffer of training state that lives on the device while its agent trains and in pinned host
/// memory while the other agents do (engine-design §3: three 1.5B agents fit one 80 GB GPU only so):
/// `park` copies it out and frees the device copy, `device` brings it back first when parked.
pub enum Parkable {
    Device(CudaSlice<f32>),
    Host(PinnedHostSlice<f32>),
}

impl Parkable {
    /// `values`, parked.
    pub fn from_host(gpu: &Gpu, values: &[f32]) -> Result<Parkable> {
        let mut h = unsafe { gpu.ctx.alloc_pinned::<f32>(values.len()) }?;
        h.as_mut_slice()?.copy_from_slice(values);
        Ok(Parkable::Host(h))
    }

    pub fn park(&mut self, gpu: &Gpu) -> Result<()> {
        if let Parkable::Device(d) = self {
            let mut h = unsafe { gpu.ctx.alloc_pinned::<f32>(d.len()) }?;
            gpu.stream.memcpy_dtoh(d, &mut h)?;
            gpu.stream.synchronize()?; // the copy is done before the device buffer is freed
            *self = Parkable::Host(h);
        }
        Ok(())
    }

    /// The device copy, brought back first when parked.
    pub fn device(&mut self, gpu: &Gpu) -> Result<&mut CudaSlice<f32>> {
        if let Parkable::Host(h) = self {
            let mut d = unsafe { gpu.stream.alloc::<f32>(h.len()) }?;
            gpu.stream.memcpy_htod(h, &mut d)?;
            gpu.stream.synchronize()?; // the copy is done before the pinned buffer is freed
            *self = Parkable::Device(d);
        }
        match self {
            Parkable::Device(d) => Ok(d),
            Parkable::Host(_) => Err(anyhow::anyhow!("training state still parked after its upload")),
        }
    }

    /// A host copy, wherever it is (waits for the stream).
    pub fn to_host(&self, gpu: &Gpu) -> Result<Vec<f32>> {
        match self {
            Parkable::Device(d) => gpu.download(&d.slice(..)),
            Parkable::Host(h) => Ok(h.as_slice()?.to_vec()),
        }
    }
}

pub struct GpuAdamW {
    config: AdamWConfig,
    names: Vec<String>,
    sizes: Vec<usize>,
    m: Parkable,
    v: Parkable,
    step: u64,
    /// The last norm and its clip coefficient, [norm, coef], on the device.
    clip: CudaSlice<f32>,
}

impl GpuAdamW {
    /// Zero state for parameters given as (name, element count), laid end to end in that order.
    pub fn new(gpu: &Gpu, params: &[(String, usize)], config: AdamWConfig) -> Result<Self> {
        // The names are checked as the CPU optimizer checks them, without its host copy of the moments.
        AdamW::new(params.iter().map(|(n, _)| (n.clone(), 0)), config)?;
        let sizes: Vec<usize> = params.iter().map(|p| p.1).collect();
        let n: usize = sizes.iter().sum();
        ensure!(n > 0, "AdamW on the GPU: no parameters");
        Ok(GpuAdamW {
            config,
            names: params.iter().map(|p| p.0.clone()).collect(),
            sizes,
            m: Parkable::Device(gpu.zeros(n)?),
            v: Parkable::Device(gpu.zeros(n)?),
            step: 0,
            clip: gpu.upload(&[0f32, 1f32])?,
        })
    }

    /// The device copy of a CPU state (what `AdamW::load` read from a checkpoint).
    pub fn from_cpu(gpu: &Gpu, state: &AdamW) -> Result<Self> {
        let (m, v) = state.moments();
        ensure!(m.iter().any(|x| !x.is_empty()), "AdamW on the GPU: no parameters");
        let flat = |x: &[Vec<f32>]| x.iter().flatten().copied().collect::<Vec<f32>>();
        Ok(GpuAdamW {
            config: *state.config(),
            names: state.names().to_vec(),
            sizes: m.iter().map(Vec::len).collect(),
            m: Parkable::Device(gpu.upload(&flat(m))?),
            v: Parkable::Device(gpu.upload(&flat(v))?),
            step: state.step_count(),
            clip: gpu.upload(&[0f32, 1f32])?,
        })
    }

    /// The host copy, in the CPU optimizer's form.
    pub fn to_cpu(&self, gpu: &Gpu) -> Result<AdamW> {
        let split = |flat: Vec<f32>| {
            let mut at = 0;
            self.sizes.iter().map(|&n| (flat[at..at + n].to_vec(), at += n).0).collect::<Vec<_>>()
        };
        let (m, v) = (split(self.m.to_host(gpu)?), split(self.v.to_host(gpu)?));
        AdamW::from_parts(self.names.clone(), self.config, m, v, self.step)
    }

    /// Writes the state in `AdamW::save`'s format, so a run saved on one backend resumes on the other.
    pub fn save(&self, gpu: &Gpu, path: &Path) -> Result<()> {
        self.to_cpu(gpu)?.save(path)
    }

    /// Moves the moments to pinned host memory until the next `step` (`Parkable`).
    pub fn park(&mut self, gpu: &Gpu) -> Result<()> {
        self.m.park(gpu)?;
        self.v.park(gpu)
    }

    pub fn step_count(&self) -> u64 {
        self.step
    }

    fn len(&self) -> usize {
        self.sizes.iter().sum()
    }

    /// The global L2 norm of `grads` (all parameters end to end) and, kept on the device for `step`, the
    /// coefficient that clips it to `max_norm` (`f32::INFINITY`: no clipping).
    pub fn clip_grad_norm(&mut self, gpu: &Gpu, grads: &CudaView<f32>, max_norm: f32) -> Result<()> {
        let n = self.len();
        ensure!(grads.len() == n, "clip_grad_norm: {} gradients for {n} parameters", grads.len());
        let chunks = n.div_ceil(NORM_CHUNK).max(1);
        let mut partial = gpu.zeros::<f64>(chunks)?;
        let n64 = n as i64;
        let mut l = gpu.launch("grad_sumsq_chunks")?;
        l.arg(grads).arg(&n64).arg(&mut partial);
        unsafe {
            l.launch(LaunchConfig { grid_dim: (chunks as u32, 1, 1), block_dim: (256, 1, 1), shared_mem_bytes: 0 })
        }?;
        let chunks32 = chunks as i32;
        let mut l = gpu.launch("grad_norm_finish")?;
        l.arg(&partial).arg(&chunks32).arg(&max_norm).arg(&mut self.clip);
        unsafe { l.launch(LaunchConfig { grid_dim: (1, 1, 1), block_dim: (1024, 1, 1), shared_mem_bytes: 0 }) }?;
        Ok(())
    }

    /// The norm the last `clip_grad_norm` measured (waits for the stream).
    pub fn last_norm(&self, gpu: &Gpu) -> Result<f32> {
        Ok(gpu.download(&self.clip.slice(..1))?[0])
    }

    /// One AdamW update of the fp32 `master` weights with `grads` scaled by the last clip coefficient (1
    /// before any `clip_grad_norm`), at learning rate `lr`; `weights` (bf16) gets the updated values.
    pub fn step(
        &mut self,
        gpu: &Gpu,
        master: &mut CudaViewMut<f32>,
        grads: &CudaView<f32>,
        weights: &mut CudaViewMut<bf16>,
        lr: f32,
    ) -> Result<()> {
        let n = self.len();
        ensure!(
            master.len() == n && grads.len() == n && weights.len() == n,
            "AdamW step: {} weights, {} gradients, {} bf16 weights for {n} parameters",
            master.len(),
            grads.len(),
            weights.len()
        );
        self.step += 1;
        let StepScalars { decay, m_weight, v_decay, v_weight, neg_step_size, bc2_sqrt, eps } =
            step_scalars(&self.config, self.step, lr);
        let n64 = n as i64;
        let mut l = gpu.launch("adamw_step")?;
        let (m, v) = (self.m.device(gpu)?, self.v.device(gpu)?);
        l.arg(master).arg(m).arg(v).arg(grads).arg(weights).arg(&n64).arg(&self.clip);
        l.arg(&decay).arg(&m_weight).arg(&v_decay).arg(&v_weight).arg(&neg_step_size).arg(&bc2_sqrt).arg(&eps);
        // A grid-stride loop over every parameter: enough blocks to fill the GPU.
        let grid = blocks_for(n, 256).clamp(1, 8192);
        unsafe { l.launch(LaunchConfig { grid_dim: (grid, 1, 1), block_dim: (256, 1, 1), shared_mem_bytes: 0 }) }?;
        Ok(())
    }
}
