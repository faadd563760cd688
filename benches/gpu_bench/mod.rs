//! What the GPU benchmarks share: the device or a visible skip, the labels every JSON line carries, medians
//! of event-timed runs, the bf16 GEMM ceiling both measure in their own process, and the Qwen2.5-0.5B shape
//! with random weights both run. A bench that uses it also includes `tests/common` as `common`.
use crate::common;
use mappa::config::{Arch, ModelConfig};
use mappa::cuda::Gpu;
use mappa::loader::LoadedModel;
use mappa::tensor::{Tensor, Weights};
use serde_json::json;
use std::sync::Arc;

pub struct Bench {
    pub gpu: Arc<Gpu>,
    /// Runs a figure is the median of (REPS, default 5).
    pub reps: usize,
    labels: serde_json::Value,
}

/// The device, or None after printing `SKIPPED <name>: <why>` (the bench then exits 0, as GPU tests skip).
pub fn start(name: &str) -> Option<Bench> {
    let gpu = match Gpu::shared() {
        Ok(g) => g,
        Err(why) => {
            println!("SKIPPED {name}: {why:#}");
            return None;
        }
    };
    let reps = std::env::var("REPS").ok().and_then(|r| r.parse().ok()).unwrap_or(5);
    let env = |k: &str| std::env::var(k).unwrap_or_default();
    let labels =
        json!({"device": gpu.ctx.name().unwrap_or_default(), "commit": env("MAPPA_COMMIT"), "date": env("MAPPA_DATE")});
    Some(Bench { gpu, reps, labels })
}

/// Qwen2.5-0.5B's shape: 24 layers, hidden 896, 14 query / 2 kv heads of 64, FFN 4,864, vocab 151,936.
pub fn qwen_05b() -> ModelConfig {
    let mut c = common::tiny_config(Arch::Qwen2);
    (c.vocab_size, c.hidden_size, c.intermediate_size, c.num_layers) = (151_936, 896, 4864, 24);
    (c.num_heads, c.num_kv_heads, c.head_dim, c.max_position_embeddings) = (14, 2, 64, 32_768);
    (c.tie_word_embeddings, c.rope_theta) = (true, 1e6);
    c
}

/// Random weights at the scale of a trained model's (matrices about 0.02, norms about 1).
pub fn random_model(cfg: ModelConfig, tokenizer: mappa::tokenizer::TokenizerSpec) -> LoadedModel {
    let raw = common::random_weights(&cfg, 1);
    let mut weights = Weights::default();
    for (name, t) in raw.tensors {
        let scale = if t.shape.len() == 2 { 0.07 } else { 1.0 };
        let v = t.to_f32().into_iter().map(|x| x * scale).collect();
        weights.tensors.insert(name, Tensor::from_f32(t.shape.clone(), v));
    }
    LoadedModel { config: cfg, weights, tokenizer, path: "random".into() }
}

pub fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

impl Bench {
    /// Prints one measurement as a JSON line with the device, commit and date.
    pub fn emit(&self, mut v: serde_json::Value) {
        for (k, x) in self.labels.as_object().expect("labels are an object") {
            v[k] = x.clone();
        }
        println!("{v}");
    }

    /// Median milliseconds of `runs` event-timed runs of `f` after one warm-up.
    pub fn median_ms(&self, runs: usize, f: &mut dyn FnMut()) -> f64 {
        let mut timed = || self.gpu.time_ms(f).expect("timing events");
        timed();
        median((0..runs).map(|_| timed()).collect())
    }

    /// A bf16 cuBLASLt product of 8192^3 on non-zero inputs, 2 M N K / time; emitted as `gemm_bf16`.
    pub fn gemm_tflops(&self) -> f64 {
        let (gpu, s) = (&self.gpu, 8192);
        let a: Vec<half::bf16> = (0..s * s).map(|i| half::bf16::from_f32(((i % 17) as f32 - 8.0) / 64.0)).collect();
        let (x, w) = (gpu.upload(&a).unwrap(), gpu.upload(&a).unwrap());
        let mut y = gpu.zeros::<half::bf16>(s * s).unwrap();
        let ms = self.median_ms(self.reps, &mut || {
            gpu.blas.linear(&mut y.slice_mut(..), &x.slice(..), &w.slice(..), s, s, s, false).unwrap()
        });
        let tflops = 2.0 * (s * s * s) as f64 / (ms * 1e-3) / 1e12;
        self.emit(
            json!({"name": "gemm_bf16", "bench": "gemm_bf16", "m": s, "n": s, "k": s, "ms": ms, "tflops": tflops}),
        );
        tflops
    }
}
