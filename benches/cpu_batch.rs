//! Batched decode on the CPU backend through the engine: SmolLM2-135M-Instruct in f32, `batch` distinct
//! 16-token prompts, 128 new tokens each (no stop token, so every sequence runs the full 128), one continuous
//! batch. Aggregate tokens/s = batch x 128 / wall time of the whole batch (its short prefills included, so the
//! figure is slightly conservative). Prints one JSON object per batch size: the median of REPS runs (default
//! 3) after a warm-up. `tools/bench-batch.sh` runs it interleaved with llama.cpp's batched bench.
//!
//!   cargo bench --bench cpu_batch [-- 1 4 16 32]
use mappa::cpu::CpuBackend;
use mappa::engine::{generate_batch, EngineConfig, Request};
use mappa::sample::SamplingParams;
use mappa::tokenizer::Tokenizer;
use std::time::Instant;

const NEW: usize = 128;
const PROMPT: usize = 16;

fn main() {
    let sizes: Vec<usize> = std::env::args().skip(1).filter_map(|a| a.parse().ok()).collect();
    let sizes = if sizes.is_empty() { vec![1, 4, 16, 32] } else { sizes };
    let reps: usize = std::env::var("REPS").ok().and_then(|r| r.parse().ok()).unwrap_or(3);
    let path = mappa::loader::setup_home().expect("HOME or MAPPA_HOME").join(mappa::loader::SMOLLM2_GGUF);
    let loaded = mappa::loader::load(&path).expect("SmolLM2 missing: run tools/setup.sh");
    let tok = Tokenizer::new(&loaded.tokenizer, &loaded.config).expect("tokenizer");
    let model = CpuBackend::new(&loaded).expect("model");
    drop(loaded);
    // Real text (never a constant id); each sequence starts at another offset, so no two prompts are equal.
    let text = "Natalia sold clips to 48 of her friends in April, and then she sold half as many clips in May. \
                How many clips did Natalia sell altogether in April and May? Let us think step by step. ";
    let base = tok.encode(text, false).expect("encode");
    let requests = |batch: usize| -> Vec<Request> {
        (0..batch)
            .map(|i| Request {
                prompt: base.iter().copied().cycle().skip(i).take(PROMPT).collect(),
                max_new_tokens: NEW,
                stop_ids: Vec::new(),
                samples: vec![SamplingParams::default()],
            })
            .collect()
    };
    let run = |batch: usize| -> f64 {
        let start = Instant::now();
        let out = generate_batch(&model, requests(batch), &EngineConfig::default()).expect("generate");
        let secs = start.elapsed().as_secs_f64();
        assert!(out.iter().all(|g| g[0].tokens.len() == NEW), "every sequence decodes the full {NEW} tokens");
        (batch * NEW) as f64 / secs
    };
    run(1); // warm-up: page in the weights
    for &batch in &sizes {
        let mut rates: Vec<f64> = (0..reps).map(|_| run(batch)).collect();
        rates.sort_by(f64::total_cmp);
        let json = serde_json::json!({
            "name": "decode_smollm2_f32", "batch": batch, "tokens_per_s": rates[rates.len() / 2], "runs": rates,
            "threads": rayon::current_num_threads(), "prompt_tokens": PROMPT, "new_tokens": NEW,
        });
        println!("{json}");
    }
}
