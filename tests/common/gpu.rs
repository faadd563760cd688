//! What every CUDA test needs: the GPU or a visible skip, and bf16 inputs the CPU twin reads exactly.
use half::bf16;
use mappa::cuda::Gpu;
use rand::{Rng, SeedableRng};
use std::io::Write;
use std::sync::Arc;

/// The shared GPU, or None after printing `SKIPPED <test>: <why>` (the only way a test may skip).
pub fn gpu_or_skip(test: &str) -> Option<Arc<Gpu>> {
    match Gpu::shared() {
        Ok(g) => Some(g),
        Err(why) => {
            // Straight to the stderr handle: the harness captures eprint!, and a skip must be seen.
            let _ = writeln!(std::io::stderr(), "SKIPPED {test}: {why:#}");
            None
        }
    }
}

/// Random values in [lo, hi) rounded to bf16, so the CPU twin sees exactly what the GPU reads.
pub fn random_bf16(n: usize, lo: f32, hi: f32, seed: u64) -> Vec<f32> {
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
    (0..n).map(|_| bf16::from_f32(rng.random_range(lo..hi)).to_f32()).collect()
}

pub fn to_bf16(v: &[f32]) -> Vec<bf16> {
    v.iter().map(|&a| bf16::from_f32(a)).collect()
}

pub fn upload_bf16(gpu: &Gpu, v: &[f32]) -> cudarc::driver::CudaSlice<bf16> {
    gpu.upload(&to_bf16(v)).unwrap()
}

pub fn download_bf16(gpu: &Gpu, d: &cudarc::driver::CudaSlice<bf16>) -> Vec<f32> {
    gpu.download(&d.as_view()).unwrap().iter().map(|v| v.to_f32()).collect()
}

/// Asserts |got - want| <= rel * |want| + abs everywhere, naming the first index that fails.
pub fn assert_close(what: &str, got: &[f32], want: &[f32], rel: f32, abs: f32) {
    assert_eq!(got.len(), want.len(), "{what}: lengths");
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        assert!((g - w).abs() <= rel * w.abs() + abs, "{what}: index {i}: gpu {g} cpu {w} (rel {rel}, abs {abs})");
    }
}
