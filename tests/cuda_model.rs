//! SmolLM2-135M on the CUDA backend against the f32 CPU model, end to end: last-token logits, greedy
//! continuations, and batch invariance of the engine on the GPU. Skips (saying so) without a device.
//!
//! Bounds, set before the first GPU run from what bf16 does to this model. Rounding only the weights to bf16
//! in the f32 CPU model moves these prompts' last-token logits by at most 0.11-0.14 and by 0.014-0.026 on
//! average (measured here, 2026-11-25); the GPU also rounds every matrix product's input and the KV cache,
//! so the bounds allow about 3.5x that.
mod common;
use common::gpu::gpu_or_skip;
use mappa::cpu::Logits;
use mappa::cuda::model::CudaModel;
use mappa::engine::{generate_batch, EngineConfig, Request};
use mappa::model::{Model, SampleSpec, StepBatch, StepSeq};
use mappa::sample::SamplingParams;
use mappa::tokenizer::ChatMessage;
use std::sync::OnceLock;

/// Largest |gpu - cpu| over a prompt's last-token logits (SmolLM2's logits span about -20..30).
const LOGIT_MAX_ABS: f32 = 0.5;
/// Mean |gpu - cpu| over the vocabulary.
const LOGIT_MEAN_ABS: f32 = 0.1;
/// A greedy divergence is accepted only where the CPU's two candidates are this close (a near-tie that
/// bf16 rounding can flip).
const NEAR_TIE: f32 = 0.5;

fn gpu_model(test: &str) -> Option<&'static CudaModel> {
    gpu_or_skip(test)?;
    static M: OnceLock<CudaModel> = OnceLock::new();
    Some(M.get_or_init(|| {
        let loaded = mappa::loader::load(&common::smollm2_gguf()).expect("load SmolLM2");
        CudaModel::new(&loaded).expect("SmolLM2 on the GPU")
    }))
}

/// Chat prompts of about 20 to 600 tokens.
fn prompt(i: usize) -> Vec<u32> {
    let (_, tok) = common::smollm2();
    let facts = "Apples are red. Bananas are yellow. Grass is green. The sky is blue. ".repeat((i * 7) % 40);
    let q = format!("{facts}Question {i}: name a colour and explain your choice.");
    tok.encode_chat(&[ChatMessage::new("user", &q)]).expect("prompt")
}

fn greedy() -> SamplingParams {
    SamplingParams::default()
}

fn cpu_last_logits(tokens: &[u32]) -> Vec<f32> {
    let (cpu, _) = common::smollm2();
    let mut cache = cpu.model.new_cache();
    cpu.model.forward(tokens, &mut cache, Logits::Last).unwrap()
}

fn gpu_last_logits(m: &CudaModel, tokens: &[u32]) -> Vec<f32> {
    let bs = 16;
    let blocks = tokens.len().div_ceil(bs);
    let mut pool = m.new_kv_pool(blocks, bs).unwrap();
    // Blocks in reverse order, so the pages are not contiguous.
    let table: Vec<u32> = (0..blocks as u32).rev().collect();
    let spec = SampleSpec { params: greedy(), index: 0 };
    let seq = StepSeq { tokens, pos: 0, block_table: &table, sample: Some(spec), allowed: None };
    m.forward_paged(&mut *pool, &StepBatch { copies: Vec::new(), seqs: vec![seq] }).unwrap()
}

fn top2(logits: &[f32]) -> (usize, f32) {
    let best = mappa::sample::argmax(logits);
    let second =
        logits.iter().enumerate().filter(|&(i, _)| i != best).map(|(_, &v)| v).fold(f32::NEG_INFINITY, f32::max);
    (best, logits[best] - second)
}

#[test]
fn smollm2_last_logits_match_cpu() {
    let Some(m) = gpu_model("smollm2_last_logits_match_cpu") else { return };
    for i in [0, 1, 3, 9, 17] {
        let tokens = prompt(i);
        let (want, got) = (cpu_last_logits(&tokens), gpu_last_logits(m, &tokens));
        assert_eq!(got.len(), want.len());
        let diffs: Vec<f32> = got.iter().zip(&want).map(|(g, w)| (g - w).abs()).collect();
        let max = diffs.iter().copied().fold(0f32, f32::max);
        let mean = diffs.iter().sum::<f32>() / diffs.len() as f32;
        eprintln!("prompt {i} ({} tokens): max |dlogit| {max:.4}, mean {mean:.4}", tokens.len());
        assert!(max <= LOGIT_MAX_ABS && mean <= LOGIT_MEAN_ABS, "prompt {i}: max {max}, mean {mean}");
        let ((cb, margin), (gb, _)) = (top2(&want), top2(&got));
        assert!(cb == gb || margin < NEAR_TIE, "prompt {i}: top-1 {gb} on the GPU, {cb} on the CPU (margin {margin})");
    }
}

/// Greedy continuations equal the CPU's until the first near-tie; a divergence is shown to be one.
#[test]
fn smollm2_greedy_follows_cpu_until_a_near_tie() {
    let Some(m) = gpu_model("smollm2_greedy_follows_cpu_until_a_near_tie") else { return };
    let (cpu, tok) = common::smollm2();
    let (mut agreed, mut total) = (0, 0);
    for i in [0, 2, 5, 11] {
        let prompt = prompt(i);
        let req = Request {
            prompt: prompt.clone(),
            max_new_tokens: 48,
            stop_ids: tok.stop_ids().to_vec(),
            samples: vec![greedy()],
        };
        let cfg = EngineConfig::default();
        let want = generate_batch(cpu, vec![req.clone()], &cfg).unwrap().remove(0).remove(0).tokens;
        let got = generate_batch(m, vec![req], &cfg).unwrap().remove(0).remove(0).tokens;
        let same = want.iter().zip(&got).take_while(|(a, b)| a == b).count();
        total += want.len().min(got.len());
        agreed += same;
        if same < want.len().min(got.len()) {
            let mut prefix = prompt.clone();
            prefix.extend_from_slice(&want[..same]);
            let logits = cpu_last_logits(&prefix);
            let gap = logits[want[same] as usize] - logits[got[same] as usize];
            eprintln!(
                "prompt {i}: diverges at token {same}: cpu {} vs gpu {} (cpu logit gap {gap:.4})",
                want[same], got[same]
            );
            assert!(
                gap < NEAR_TIE,
                "prompt {i}: the GPU left the CPU's greedy path at token {same} where the gap was {gap}"
            );
        } else {
            assert_eq!(want.len(), got.len(), "prompt {i}: same tokens, same stop");
        }
    }
    eprintln!("greedy agreement: {agreed}/{total} tokens before the first divergence of each prompt");
}

/// 64 mixed-length prompts in one continuous batch (greedy, seeded samples, and requests with two
/// samples that fork a shared prompt) give exactly what each gives alone: no split-K in the products,
/// each attention row's reduction in its own fixed order, per-request random draws. The budget admits every
/// prompt whole in the first step, so no prompt is cut into a one-token chunk (which would take the decode
/// path: `cuda::model` docs) and nothing is preempted.
#[test]
fn smollm2_batch_of_64_equals_one_at_a_time() {
    let Some(m) = gpu_model("smollm2_batch_of_64_equals_one_at_a_time") else { return };
    let (_, tok) = common::smollm2();
    let reqs: Vec<Request> = (0..64)
        .map(|i| {
            let sampled = |seed| SamplingParams { temperature: 0.8, top_k: 40, top_p: 0.95, seed, top_logprobs: 0 };
            let samples = match i % 4 {
                0 => vec![greedy()],
                1 | 2 => vec![sampled(i as u64)],
                _ => vec![sampled(i as u64), sampled(1000 + i as u64)],
            };
            Request { prompt: prompt(i), max_new_tokens: 24, stop_ids: tok.stop_ids().to_vec(), samples }
        })
        .collect();
    let cfg = EngineConfig { max_batch_tokens: 1 << 16, max_seqs: 128, ..EngineConfig::default() };
    let batched = generate_batch(m, reqs.clone(), &cfg).unwrap();
    for (i, (req, got)) in reqs.into_iter().zip(batched).enumerate() {
        let alone = generate_batch(m, vec![req], &cfg).unwrap().remove(0);
        for (s, (a, b)) in alone.iter().zip(&got).enumerate() {
            assert_eq!(a.tokens, b.tokens, "request {i} sample {s}: tokens alone vs in the batch");
            assert_eq!(a.logprobs, b.logprobs, "request {i} sample {s}: log-probs alone vs in the batch");
        }
    }
}

/// Decode steps replayed as CUDA graphs give exactly the eager steps' tokens, log-probs and alternatives:
/// 11 requests (12 sequences: greedy, seeded samples, one forked prompt, one asking for top log-probs) of
/// different lengths, so the batch shrinks through the buckets 12, 8, 4, 2 and 1, and contexts of about 20
/// to 700 positions, so the split count doubles as they grow (a graph per key, captured again). One model
/// runs with graphs, a second from the same file without; the first must have captured and replayed.
#[test]
fn smollm2_decode_graphs_give_the_eager_tokens() {
    if gpu_or_skip("smollm2_decode_graphs_give_the_eager_tokens").is_none() {
        return;
    }
    let loaded = mappa::loader::load(&common::smollm2_gguf()).expect("load SmolLM2");
    let (graphed, eager) = (CudaModel::new(&loaded).unwrap(), CudaModel::new(&loaded).unwrap());
    eager.set_graphs(false).unwrap();
    let sampled = |seed, top_logprobs| SamplingParams { temperature: 0.8, top_k: 40, top_p: 0.95, seed, top_logprobs };
    let reqs: Vec<Request> = (0..11)
        .map(|i| {
            let samples = match i {
                4 => vec![sampled(4, 0), sampled(40, 0)],
                7 => vec![sampled(7, 3)],
                _ if i % 3 == 0 => vec![greedy()],
                _ => vec![sampled(i as u64, 0)],
            };
            Request { prompt: prompt(i), max_new_tokens: 8 + 9 * i, stop_ids: Vec::new(), samples }
        })
        .collect();
    let cfg = EngineConfig::default();
    let got = generate_batch(&graphed, reqs.clone(), &cfg).unwrap();
    let want = generate_batch(&eager, reqs, &cfg).unwrap();
    for (i, (g, w)) in got.iter().zip(&want).enumerate() {
        for (s, (g, w)) in g.iter().zip(w).enumerate() {
            assert_eq!(g.tokens, w.tokens, "request {i} sample {s}: tokens with graphs vs without");
            assert_eq!(g.logprobs, w.logprobs, "request {i} sample {s}: log-probs");
            assert_eq!(g.top_logprobs, w.top_logprobs, "request {i} sample {s}: alternatives");
        }
    }
    let (on, off) = (graphed.graph_stats().unwrap(), eager.graph_stats().unwrap());
    eprintln!("with graphs: {on:?}; without: {off:?}");
    assert_eq!(off, Default::default(), "graphs off: no step goes through them");
    assert!(on.captured >= 5, "a graph for each bucket at least: {on:?}");
    assert!(on.replayed > 4 * on.eager, "most decode steps are replays: {on:?}");
}

/// Constrained rows (a JSON grammar's token mask) are sampled on the host from their downloaded logits: every
/// token they draw is one the mask allows (the engine fails a sequence that draws outside it), a completed
/// output parses, and a free request in the same batch draws exactly as it does alone.
#[test]
fn constrained_rows_keep_their_grammar_and_leave_free_rows_alone() {
    let Some(m) = gpu_model("constrained_rows_keep_their_grammar_and_leave_free_rows_alone") else { return };
    let (_, tok) = common::smollm2();
    let grammars = mappa::constrain::Grammars::new(tok, m.config().vocab_size).unwrap();
    let json = grammars.json_object().unwrap();
    let sampled = |seed| SamplingParams { temperature: 0.8, top_k: 40, top_p: 0.95, seed, top_logprobs: 2 };
    let req = |i: usize, samples| Request {
        prompt: prompt(i),
        max_new_tokens: 40,
        stop_ids: tok.stop_ids().to_vec(),
        samples,
    };
    let cfg = EngineConfig::default();
    let alone = generate_batch(m, vec![req(3, vec![sampled(5)])], &cfg).unwrap().remove(0).remove(0);
    let reqs = vec![req(1, vec![greedy(), sampled(1)]), req(3, vec![sampled(5)]), req(3, vec![sampled(6)])];
    let constraints =
        vec![vec![Some(json.constraint()), Some(json.constraint())], Vec::new(), vec![Some(json.constraint())]];
    let out = mappa::engine::generate_batch_constrained(m, reqs, constraints, &cfg).unwrap();
    assert_eq!((&out[1][0].tokens, &out[1][0].logprobs), (&alone.tokens, &alone.logprobs), "the free request");
    for g in [&out[0][0], &out[0][1], &out[2][0]] {
        let text = tok.decode(&g.tokens, true).unwrap();
        assert!(text.trim_start().starts_with('{'), "{text:?}");
        if g.finish == mappa::engine::FinishReason::Stop {
            assert!(serde_json::from_str::<serde_json::Value>(&text).unwrap().is_object(), "{text:?}");
        }
        assert!(g.top_logprobs.iter().flatten().all(|&(_, lp)| lp <= 0.0));
    }
}

/// A wrong pool, an id outside the vocabulary or a block outside the pool is an error, not a fault.
#[test]
fn cuda_step_rejects_bad_input() {
    let Some(m) = gpu_model("cuda_step_rejects_bad_input") else { return };
    let (cpu, _) = common::smollm2();
    let mut pool = m.new_kv_pool(4, 16).unwrap();
    let table = [0u32, 1];
    let spec = Some(SampleSpec { params: greedy(), index: 0 });
    let bad_id = [1u32, m.config().vocab_size as u32];
    let seq = StepSeq { tokens: &bad_id, pos: 0, block_table: &table, sample: spec, allowed: None };
    let err = m.step(&mut *pool, &StepBatch { copies: Vec::new(), seqs: vec![seq] }).unwrap_err().to_string();
    assert!(err.contains("outside the vocabulary"), "{err}");
    let far = [9u32];
    let seq = StepSeq { tokens: &[1, 2], pos: 0, block_table: &far, sample: spec, allowed: None };
    let err = format!("{:#}", m.step(&mut *pool, &StepBatch { copies: Vec::new(), seqs: vec![seq] }).unwrap_err());
    assert!(err.contains("outside the pool"), "{err}");
    let mut cpu_pool = cpu.new_kv_pool(4, 16).unwrap();
    let seq = StepSeq { tokens: &[1, 2], pos: 0, block_table: &table, sample: spec, allowed: None };
    let err = m.step(&mut *cpu_pool, &StepBatch { copies: Vec::new(), seqs: vec![seq] }).unwrap_err().to_string();
    assert!(err.contains("another backend"), "{err}");
}
