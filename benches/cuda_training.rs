//! Training on the GPU (device only; elsewhere it prints `SKIPPED cuda_training: <why>` and exits 0):
//! - fused_loss: the fused LM head at T = 16,384 positions, d = 896, V = 151,936 (Qwen2.5-0.5B's head),
//!   log-probs forward and d(hidden), d(W) backward for a policy-gradient loss; time (CUDA events) and the
//!   bytes the call allocates beyond its inputs (its buffers, counted), for `tools/peer_fused_loss.py`'s
//!   PyTorch eager and Liger-Kernel runs on the same shapes;
//! - train_step: a full step through the model interface (forward with tape, loss on the host, backward,
//!   clipped AdamW) on SmolLM2-135M and on the Qwen2.5-0.5B shape with random weights, 4 sequences of
//!   4,096 tokens, keeping every activation and with layers recomputed; tokens/s and MFU against the bf16
//!   GEMM ceiling measured here, with the model FLOPs per
//!   token taken as 6 N (N = parameters in the products, the head included) + 6 L s q_dim (causal attention,
//!   s the sequence length).
//!
//! Medians of REPS runs (default 5) after a warm-up; one JSON object per measurement.
//!
//!   cargo bench --bench cuda_training
#[path = "../tests/common/mod.rs"]
mod common;
mod gpu_bench;
use gpu_bench::{median, qwen_05b, random_model};
use mappa::cuda::lm_head::{chunk_rows, LmHead};
use mappa::cuda::model::CudaModel;
use mappa::model::{Model, Packed};
use mappa::optim::AdamWConfig;
use serde_json::json;
use std::time::Instant;

fn main() {
    let Some(bench) = gpu_bench::start("cuda_training") else { return };
    let (gpu, reps) = (&*bench.gpu, bench.reps);
    let peak_tflops = bench.gemm_tflops(); // the ceiling for MFU

    // The fused loss.
    let (t, d, v) = (16_384usize, 896usize, 151_936usize);
    let h = gpu.upload(&common::gpu::to_bf16(&common::gpu::random_bf16(t * d, -2.0, 2.0, 1))).unwrap();
    let wh = gpu.upload(&common::gpu::to_bf16(&common::gpu::random_bf16(v * d, -0.05, 0.05, 2))).unwrap();
    let targets = gpu.upload(&(0..t).map(|i| ((i * 7919) % v) as u32).collect::<Vec<_>>()).unwrap();
    let dlogp = gpu.upload(&common::gpu::random_bf16(t, -1.0, 1.0, 3)).unwrap();
    let chunk = chunk_rows(t, v);
    let head = LmHead { h: h.slice(..), w: wh.slice(..), targets: targets.slice(..), t, d, v, temperature: 1.0, chunk };
    let mut dh = gpu.zeros::<f32>(t * d).unwrap();
    let mut dw = gpu.zeros::<f32>(v * d).unwrap();
    let ms = bench.median_ms(reps, &mut || {
        let out = head.logprobs(gpu, false).unwrap();
        head.backward(gpu, &out.lse.slice(..), &dlogp.slice(..), &mut dh.slice_mut(..), &mut dw.slice_mut(..)).unwrap();
    });
    // Beyond the inputs: the scratch logits (fp32) and their gradient (bf16), the per-position state and
    // results, d(hidden) and d(W) in fp32.
    let bytes = t * chunk * 6 + t * (32 + 12) + t * d * 4 + v * d * 4;
    bench.emit(json!({"bench": "fused_loss", "t": t, "d": d, "v": v, "chunk": chunk, "ms": ms,
                "peak_mib": bytes as f64 / (1 << 20) as f64}));
    drop((h, wh, targets, dlogp, dh, dw));

    // Full training steps.
    let path = mappa::loader::setup_home().expect("HOME or MAPPA_HOME").join(mappa::loader::SMOLLM2_GGUF);
    let smollm2 = mappa::loader::load(&path).expect("SmolLM2 missing: run tools/setup.sh");
    let qwen = random_model(qwen_05b(), smollm2.tokenizer.clone());
    let (seqs, len) = (4usize, 4096usize); // 4k-token sequences, 16k tokens a step
    for (name, loaded) in [("SmolLM2-135M-Instruct", &smollm2), ("Qwen2.5-0.5B shape, random weights", &qwen)] {
        let c = loaded.config.clone();
        let mut model = CudaModel::new(loaded).expect("the model on the GPU");
        model.init_optimizer(AdamWConfig::default(), None).unwrap();
        let tokens: Vec<u32> = (0..seqs * len).map(|i| ((i * 7919 + 13) % c.vocab_size) as u32).collect();
        let seq_lens = vec![len; seqs];
        let positions: Vec<usize> = (0..seqs).flat_map(|s| s * len..(s + 1) * len - 1).collect();
        let coef: Vec<f32> = positions.iter().map(|&p| if p % 3 == 0 { 1e-3 } else { -1e-3 }).collect();
        let packed = Packed { tokens: &tokens, seq_lens: &seq_lens, positions: &positions };
        let n_params = c.num_layers
            * ((c.q_dim() + 2 * c.kv_dim()) * c.hidden_size
                + c.q_dim() * c.hidden_size
                + 3 * c.intermediate_size * c.hidden_size)
            + c.vocab_size * c.hidden_size;
        // MFU counts the model's FLOPs only (not a recompute's extra forward).
        let flops_per_token = 6.0 * n_params as f64 + 6.0 * (c.num_layers * len * c.q_dim()) as f64;
        for recompute in [false, true] {
            let mut run = || {
                let start = Instant::now();
                model.zero_grad();
                model.forward_backward(packed, 1.0, recompute, &mut |_: &[f32]| Ok(coef.clone())).unwrap();
                model.optimizer_step(1e-6, 1.0).unwrap(); // waits for the step (it reads the norm back)
                start.elapsed().as_secs_f64()
            };
            run();
            let secs = median((0..reps).map(|_| run()).collect());
            let tps = (seqs * len) as f64 / secs;
            bench.emit(json!({"bench": "train_step", "model": name, "sequences": seqs, "seq_len": len,
                        "recompute": recompute, "ms": secs * 1e3, "tokens_per_s": tps,
                        "mfu": tps * flops_per_token / (peak_tflops * 1e12), "gemm_tflops": peak_tflops}));
        }
    }
}
