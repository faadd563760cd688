//! CPU inference speed for SmolLM2-135M-Instruct in f32: prefill of 128 and 512 tokens, greedy decode of
//! 128 new tokens, and batched decode (the paged step, 32 steps of 1, 4, 16 and 32 sequences), reported as
//! tokens/s (aggregate over the batch). Compare with the peers (llama.cpp F32, PyTorch F32) run in the same
//! sitting: `../shared/tools/cpu-peers.sh` (see BENCHMARKS.md). Needs tools/setup.sh to have run.
use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use mappa::cpu::paged::CpuKvPool;
use mappa::cpu::{CpuModel, Logits};
use mappa::generate::generate;
use mappa::model::{SampleSpec, StepBatch, StepSeq};
use mappa::sample::SamplingParams;
use mappa::tokenizer::Tokenizer;
use std::time::Duration;

/// Real text tokens (never a constant id) repeated up to `n`.
fn prompt_ids(tok: &Tokenizer, n: usize) -> Vec<u32> {
    let text = "Natalia sold clips to 48 of her friends in April, and then she sold half as many clips in May. \
                How many clips did Natalia sell altogether in April and May? Let us think step by step. ";
    let base = tok.encode(text, false).expect("encode");
    base.iter().copied().cycle().take(n).collect()
}

fn bench(c: &mut Criterion) {
    let path = mappa::loader::setup_home().expect("HOME or MAPPA_HOME").join(mappa::loader::SMOLLM2_GGUF);
    let loaded = mappa::loader::load(&path).expect("SmolLM2 missing: run tools/setup.sh");
    let tok = Tokenizer::new(&loaded.tokenizer, &loaded.config).expect("tokenizer");
    let model = CpuModel::new(&loaded).expect("model");
    drop(loaded);

    let mut g = c.benchmark_group("smollm2_f32");
    g.sample_size(10).warm_up_time(Duration::from_secs(2)).measurement_time(Duration::from_secs(20));
    for n in [128, 512] {
        let ids = prompt_ids(&tok, n);
        g.throughput(Throughput::Elements(n as u64));
        g.bench_function(format!("prefill_{n}"), |b| {
            b.iter(|| model.forward(&ids, &mut model.new_cache(), Logits::Last).expect("forward"))
        });
    }
    // Decode: 128 new tokens after a 16-token prompt, no stop token, so every run does the full 128 steps.
    let ids = prompt_ids(&tok, 16);
    g.throughput(Throughput::Elements(128));
    g.bench_function("decode_128", |b| {
        b.iter(|| {
            let (mut cache, mut next) = (model.new_cache(), ids.clone());
            for _ in 0..128 {
                let logits = model.forward(&next, &mut cache, Logits::Last).expect("forward");
                next = vec![mappa::sample::argmax(&logits) as u32];
            }
        })
    });
    // Batched decode: `b` sequences with different 16-token prompts, prefilled in one step (not timed), then
    // 32 greedy steps of all of them, each one paged step.
    let spec = Some(SampleSpec { params: SamplingParams::default(), index: 0 });
    let long = prompt_ids(&tok, 16 + 32);
    for b in [1, 4, 16, 32] {
        let prompts: Vec<&[u32]> = (0..b).map(|i| &long[i % 32..][..16]).collect();
        let tables: Vec<Vec<u32>> = (0..b as u32).map(|i| (3 * i..3 * i + 3).collect()).collect();
        g.throughput(Throughput::Elements(32 * b as u64));
        g.bench_function(format!("decode_batch_{b}"), |bench| {
            bench.iter_batched(
                || {
                    let mut pool = CpuKvPool::new(&model.config, 3 * b, 16).expect("pool");
                    let seqs = (0..b)
                        .map(|i| StepSeq { tokens: prompts[i], pos: 0, block_table: &tables[i], sample: spec })
                        .collect();
                    let logits = model.forward_paged(&mut pool, &StepBatch { copies: vec![], seqs }).expect("prefill");
                    (pool, logits)
                },
                |(mut pool, mut logits)| {
                    for step in 0..32 {
                        let next: Vec<[u32; 1]> = logits
                            .chunks_exact(model.config.vocab_size)
                            .map(|row| [mappa::sample::argmax(row) as u32])
                            .collect();
                        let seqs = (0..b)
                            .map(|i| StepSeq {
                                tokens: &next[i],
                                pos: 16 + step,
                                block_table: &tables[i],
                                sample: spec,
                            })
                            .collect();
                        logits = model.forward_paged(&mut pool, &StepBatch { copies: vec![], seqs }).expect("step");
                    }
                },
                BatchSize::PerIteration,
            )
        });
    }
    g.finish();
    // Keep generate() itself honest too: same work through the public loop, one sample.
    let params = SamplingParams::default();
    let gen = generate(&model, &ids, 128, params, &[], |_| Ok(())).expect("generate");
    eprintln!("generate(): {} tokens, decode {:.1} tok/s", gen.tokens.len(), gen.tokens.len() as f64 / gen.decode_s);
}

criterion_group!(benches, bench);
criterion_main!(benches);
