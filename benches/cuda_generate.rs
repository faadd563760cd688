//! Generation on the GPU, with its ceilings measured in the same process (device only; elsewhere it prints
//! `SKIPPED cuda_generate: <why>` and exits 0, as the GPU tests do):
//! - copy bandwidth: a device-to-device copy of 512 MiB of non-zero bf16, bytes read + written / time;
//! - a bf16 cuBLASLt product of 8192^3, 2 M N K / time;
//! - generation through the engine for SmolLM2-135M and for the Qwen2.5-0.5B shape with random weights
//!   (24 layers, hidden 896, 14 / 2 heads, FFN 4,864, vocab 151,936): batches of 1, 16, 64 and 256
//!   sequences of PROMPT prompt tokens and NEW new ones, every sequence its full length (no stop tokens),
//!   all of a batch at once. Batch 1: decode alone (NEW - 1 tokens / decode time) and its fraction of the
//!   copy bandwidth from the bytes one token reads (every weight but the embedding rows it does not look
//!   up, plus the keys and values of its mean context). Other batches: all new tokens / wall time, prefill
//!   included. Batches 1 and 16 run again with CUDA graphs off (`cuda_graphs: false`): what the graphs buy.
//!
//! Each figure is the median of REPS runs (default 5) after a warm-up, timed with CUDA events for the
//! ceilings and the wall clock for generation. Prints one JSON object per measurement and writes the prompts
//! (token ids) to $BENCH_PROMPTS when set, so the transformers peer (`tools/peer_generate.py`) runs the same.
//!
//!   cargo bench --bench cuda_generate
#[path = "../tests/common/mod.rs"]
mod common;
mod gpu_bench;
use gpu_bench::{median, qwen_05b, random_model};
use mappa::config::ModelConfig;
use mappa::cuda::model::CudaModel;
use mappa::engine::{generate_batch, EngineConfig, Request};
use mappa::model::Model;
use mappa::sample::SamplingParams;
use mappa::tokenizer::Tokenizer;
use serde_json::json;
use std::time::Instant;

const PROMPT: usize = 512;
const NEW: usize = 512;
const BATCHES: [usize; 4] = [1, 16, 64, 256];

/// Bytes one decode token reads: every weight but the embedding rows it does not look up (a tied model
/// reads the table once, as its LM head), plus the keys and values of `context` positions.
fn bytes_per_token(c: &ModelConfig, context: usize) -> usize {
    let layer = 2 * c.hidden_size
        + (c.q_dim() + 2 * c.kv_dim()) * c.hidden_size
        + c.q_dim() * c.hidden_size
        + 3 * c.intermediate_size * c.hidden_size;
    let params = c.num_layers * layer + c.hidden_size + c.vocab_size * c.hidden_size;
    params * 2 + c.num_layers * 2 * c.kv_dim() * 2 * context
}

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

    // Generation: the same prompts (SmolLM2's token ids, valid in both vocabularies) for both models.
    let path = mappa::loader::setup_home().expect("HOME or MAPPA_HOME").join(mappa::loader::SMOLLM2_GGUF);
    let smollm2 = mappa::loader::load(&path).expect("SmolLM2 missing: run tools/setup.sh");
    let tok = Tokenizer::new(&smollm2.tokenizer, &smollm2.config).expect("tokenizer");
    let text = "Natalia sold clips to 48 of her friends in April, and then she sold half as many clips in May. \
                How many clips did Natalia sell altogether in April and May? Let us think step by step. ";
    let base = tok.encode(text, false).expect("encode");
    let prompts: Vec<Vec<u32>> =
        (0..BATCHES[3]).map(|i| base.iter().copied().cycle().skip(i).take(PROMPT).collect()).collect();
    if let Ok(p) = std::env::var("BENCH_PROMPTS") {
        std::fs::write(&p, serde_json::to_string(&prompts).unwrap()).expect("write the prompts");
    }
    let requests = |batch: usize| -> Vec<Request> {
        let samples = vec![SamplingParams::default()];
        let req = |p: &Vec<u32>| Request {
            prompt: p.clone(),
            max_new_tokens: NEW,
            stop_ids: Vec::new(),
            samples: samples.clone(),
        };
        prompts[..batch].iter().map(req).collect()
    };
    // The whole batch at once; prompts prefilled 8k tokens a step.
    let cfg = EngineConfig { max_seqs: BATCHES[3], max_batch_tokens: 8192, ..EngineConfig::default() };
    let qwen = random_model(qwen_05b(), smollm2.tokenizer.clone());
    for (name, loaded) in [("SmolLM2-135M-Instruct (bf16)", &smollm2), ("Qwen2.5-0.5B shape, random weights", &qwen)] {
        let model = CudaModel::new(loaded).expect("the model on the GPU");
        let bytes = bytes_per_token(model.config(), PROMPT + NEW / 2) as f64;
        for batch in BATCHES {
            for graphs in [true, false] {
                if !graphs && batch > 16 {
                    continue;
                }
                model.set_graphs(graphs).unwrap();
                let before = model.graph_stats().unwrap();
                let run = || -> (f64, f64) {
                    let start = Instant::now();
                    let out = generate_batch(&model, requests(batch), &cfg).expect("generate");
                    let wall = start.elapsed().as_secs_f64();
                    assert!(out.iter().all(|g| g[0].tokens.len() == NEW), "every sequence decodes {NEW} tokens");
                    (wall, out[0][0].decode_s)
                };
                run();
                let runs: Vec<(f64, f64)> = (0..reps).map(|_| run()).collect();
                let mut v = json!({"name": "generate", "model": name, "batch": batch, "prompt_tokens": PROMPT,
                                   "new_tokens": NEW, "cuda_graphs": graphs, "copy_gbps": copy_gbps});
                // Decode steps over all runs of this configuration: captured and replayed as graphs.
                let after = model.graph_stats().unwrap();
                v["graphs_captured"] = json!(after.captured - before.captured);
                v["graphs_replayed"] = json!(after.replayed - before.replayed);
                if batch == 1 {
                    // Decode alone (the first token's prefill excluded): NEW - 1 steps in decode_s.
                    let tps = median(runs.iter().map(|r| (NEW - 1) as f64 / r.1).collect());
                    v["tokens_per_s"] = json!(tps);
                    v["bytes_per_token"] = json!(bytes);
                    v["hbm_fraction"] = json!(bytes * tps / (copy_gbps * 1e9));
                } else {
                    v["tokens_per_s"] = json!(median(runs.iter().map(|r| (batch * NEW) as f64 / r.0).collect()));
                }
                emit(v);
            }
        }
    }
}
