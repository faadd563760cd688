//! Generation on the GPU, with its ceilings measured in the same process (device only; elsewhere it prints
//! `SKIPPED cuda_generate: <why>` and exits 0, as the GPU tests do):
//! - copy bandwidth: a device-to-device copy of 512 MiB of non-zero bf16, bytes read + written / time;
//! - a bf16 cuBLASLt product of 8192^3, 2 M N K / time;
//! - SmolLM2-135M decode through the engine: batch 1 (256 new tokens; tokens/s = 256 / decode time, and its
//!   fraction of the copy bandwidth from the bytes one token reads: every weight but the embedding rows
//!   plus the KV of its context), and batches of 64 and 256 (128 new tokens each; aggregate tokens/s = all
//!   new tokens / wall time, prefill included). No stop tokens: every sequence runs its full length.
//!
//! Each figure is the median of REPS runs (default 5) after a warm-up, timed with CUDA events for the
//! ceilings and the wall clock for generation. Prints one JSON object per measurement and writes the prompts
//! (token ids) to $BENCH_PROMPTS when set, so the transformers peer (`tools/peer_generate.py`) runs the same.
//!
//!   cargo bench --bench cuda_generate
use mappa::cuda::model::CudaModel;
use mappa::engine::{generate_batch, EngineConfig, Request};
use mappa::model::Model;
use mappa::sample::SamplingParams;
use mappa::tokenizer::Tokenizer;
use serde_json::json;
use std::time::Instant;

const PROMPT: usize = 64;

mod gpu_bench;
use gpu_bench::median;

fn main() {
    let Some(bench) = gpu_bench::start("cuda_generate") else { return };
    let (gpu, reps) = (&*bench.gpu, bench.reps);
    let emit = |v: serde_json::Value| bench.emit(v);

    // Ceiling 1: copy bandwidth.
    let n = 256 << 20;
    let host: Vec<half::bf16> = (0..n).map(|i| half::bf16::from_f32(1.0 + (i % 251) as f32)).collect();
    let src = gpu.upload(&host).unwrap();
    let mut dst = gpu.zeros::<half::bf16>(n).unwrap();
    let ms = bench.median_ms(reps * 4, &mut || gpu.stream.memcpy_dtod(&src, &mut dst).unwrap());
    let copy_gbps = 2.0 * (n * 2) as f64 / (ms * 1e-3) / 1e9;
    emit(json!({"name": "copy_bandwidth", "bytes": n * 2, "ms": ms, "copy_gbps": copy_gbps}));
    drop((src, dst, host));

    // Ceiling 2: a large bf16 product.
    bench.gemm_tflops();

    // SmolLM2 generation.
    let path = mappa::loader::setup_home().expect("HOME or MAPPA_HOME").join(mappa::loader::SMOLLM2_GGUF);
    let loaded = mappa::loader::load(&path).expect("SmolLM2 missing: run tools/setup.sh");
    let tok = Tokenizer::new(&loaded.tokenizer, &loaded.config).expect("tokenizer");
    let model = CudaModel::new(&loaded).expect("SmolLM2 on the GPU");
    let c = model.config().clone();
    let text = "Natalia sold clips to 48 of her friends in April, and then she sold half as many clips in May. \
                How many clips did Natalia sell altogether in April and May? Let us think step by step. ";
    let base = tok.encode(text, false).expect("encode");
    let prompts = |batch: usize| -> Vec<Vec<u32>> {
        (0..batch).map(|i| base.iter().copied().cycle().skip(i).take(PROMPT).collect()).collect()
    };
    if let Ok(p) = std::env::var("BENCH_PROMPTS") {
        std::fs::write(&p, serde_json::to_string(&prompts(256)).unwrap()).expect("write the prompts");
    }
    let requests = |batch: usize, new: usize| -> Vec<Request> {
        let samples = vec![SamplingParams::default()];
        prompts(batch)
            .into_iter()
            .map(|prompt| Request { prompt, max_new_tokens: new, stop_ids: Vec::new(), samples: samples.clone() })
            .collect()
    };
    let cfg = EngineConfig::default();
    // Bytes one decode token reads: every weight but the embedding rows it does not look up (tied models
    // read the table once, as the LM head), plus keys and values of its context (mean context over the run).
    let params: usize = c.num_layers
        * (2 * c.hidden_size
            + (c.q_dim() + 2 * c.kv_dim()) * c.hidden_size
            + c.q_dim() * c.hidden_size
            + 3 * c.intermediate_size * c.hidden_size)
        + c.hidden_size
        + c.vocab_size * c.hidden_size;
    let kv_per_pos = c.num_layers * 2 * c.kv_dim() * 2;
    for (batch, new) in [(1usize, 256usize), (64, 128), (256, 128)] {
        let run = || -> (f64, f64) {
            let start = Instant::now();
            let out = generate_batch(&model, requests(batch, new), &cfg).expect("generate");
            let wall = start.elapsed().as_secs_f64();
            assert!(out.iter().all(|g| g[0].tokens.len() == new), "every sequence decodes {new} tokens");
            (wall, out[0][0].decode_s)
        };
        run();
        let runs: Vec<(f64, f64)> = (0..reps).map(|_| run()).collect();
        let mut v = json!({"name": "generate", "model": "SmolLM2-135M-Instruct (bf16)", "batch": batch,
                           "prompt_tokens": PROMPT, "new_tokens": new, "copy_gbps": copy_gbps});
        if batch == 1 {
            // Decode alone (the first token's prefill excluded): new - 1 steps in decode_s.
            let tps = median(runs.iter().map(|r| (new - 1) as f64 / r.1).collect());
            let bytes = (params * 2 + kv_per_pos * (PROMPT + new / 2)) as f64;
            v["tokens_per_s"] = json!(tps);
            v["bytes_per_token"] = json!(bytes);
            v["hbm_fraction"] = json!(bytes * tps / (copy_gbps * 1e9));
        } else {
            v["tokens_per_s"] = json!(median(runs.iter().map(|r| (batch * new) as f64 / r.0).collect()));
        }
        emit(v);
    }
}
