//! The memory a CPU run needs, estimated before it starts, so a run too large for the machine fails at once
//! with the numbers instead of being killed by the kernel hours in.
//!
//! Per trained agent: f32 weights, f32 gradients and the two f32 AdamW moments (16 B a parameter); the
//! frozen references' f32 weights (4 B, once per distinct base model); the engine's KV pool while
//! generating; the training pass's packed micro-batch (with recomputation: each layer's input, one layer's internals and a vocabulary chunk of
//! logits). A local coach model is loaded before the check, so what it takes is already gone from what is
//! available.
use crate::config::ModelConfig;
use anyhow::{bail, Context, Result};

const GIB: f64 = (1u64 << 30) as f64;

/// The parts of a run's estimated memory, in bytes.
#[derive(Clone, Debug, PartialEq)]
pub struct MemoryEstimate {
    pub agents: usize,
    /// Parameters of all agents together.
    pub params: usize,
    /// Weights, gradients and AdamW moments of every agent.
    pub training_state: u64,
    /// The frozen references: one per distinct base model.
    pub reference: u64,
    pub kv_pool: u64,
    pub activations: u64,
}

impl MemoryEstimate {
    /// The estimate for a team whose agent `i` starts from base model `bases[base_of[i]]` (its config and
    /// parameter count).
    pub fn of(bases: &[(&ModelConfig, usize)], base_of: &[usize]) -> MemoryEstimate {
        let tokens = crate::run::MICRO_BATCH_TOKENS as u64;
        let activations = |model: &ModelConfig| {
            let (h, layers) = (model.hidden_size as u64, model.num_layers as u64);
            let layer_internals =
                3 * h + 2 * model.q_dim() as u64 + 2 * model.kv_dim() as u64 + 3 * model.intermediate_size as u64;
            tokens * 4 * (h * layers + layer_internals + crate::cpu::train::VOCAB_CHUNK as u64)
        };
        let params: usize = base_of.iter().map(|&b| bases[b].1).sum();
        MemoryEstimate {
            agents: base_of.len(),
            params,
            training_state: params as u64 * 16,
            reference: bases.iter().map(|(_, p)| *p as u64 * 4).sum(),
            kv_pool: crate::engine::EngineConfig::default().kv_bytes as u64,
            // One agent trains at a time.
            activations: bases.iter().map(|(m, _)| activations(m)).max().unwrap_or(0),
        }
    }

    pub fn total(&self) -> u64 {
        self.training_state + self.reference + self.kv_pool + self.activations
    }

    /// Fails, with the parts, when the run needs more than `available` bytes.
    pub fn check(&self, available: u64) -> Result<()> {
        if self.total() <= available {
            return Ok(());
        }
        bail!(
            "this run needs about {:.1} GiB of memory but {:.1} GiB is available: {} agents, {:.0}M parameters in \
             all x 16 B (weights, gradients, AdamW moments) = {:.1} GiB, the frozen references {:.1} GiB, the KV \
             pool {:.1} GiB, training activations {:.1} GiB; use fewer agents or a smaller model",
            self.total() as f64 / GIB,
            available as f64 / GIB,
            self.agents,
            self.params as f64 / 1e6,
            self.training_state as f64 / GIB,
            self.reference as f64 / GIB,
            self.kv_pool as f64 / GIB,
            self.activations as f64 / GIB,
        )
    }
}

/// Bytes this process can still allocate: the kernel's `MemAvailable`, or less where a cgroup limit leaves
/// less.
pub fn available_memory() -> Result<u64> {
    let info = std::fs::read_to_string("/proc/meminfo").context("reading /proc/meminfo")?;
    let kib = info
        .lines()
        .find_map(|l| l.strip_prefix("MemAvailable:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .context("/proc/meminfo has no MemAvailable line")?;
    let mut available = kib * 1024;
    let read = |f: &str| std::fs::read_to_string(format!("/sys/fs/cgroup/{f}")).ok()?.trim().parse::<u64>().ok();
    if let (Some(max), Some(current)) = (read("memory.max"), read("memory.current")) {
        available = available.min(max.saturating_sub(current));
    }
    Ok(available)
}
