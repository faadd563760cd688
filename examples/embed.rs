//! mappa as a library: load a model through the seam, generate a batch with per-token log-probs, and
//! score given sequences. This is all another Rust program needs to use mappa as a backend.
//!
//!   cargo run --release --example embed [-- MODEL]    (default: the SmolLM2 that tools/setup.sh installs)
use anyhow::{Context, Result};
use mappa::engine::{generate_batch, EngineConfig, Request};
use mappa::model::{self, BackendChoice, Packed};
use mappa::sample::SamplingParams;
use mappa::tokenizer::{ChatMessage, Tokenizer};
use std::path::PathBuf;

fn main() -> Result<()> {
    let path = match std::env::args().nth(1) {
        Some(p) => PathBuf::from(p),
        None => mappa::loader::setup_home().context("HOME is not set")?.join(mappa::loader::SMOLLM2_GGUF),
    };
    let loaded = mappa::loader::load(&path)?;
    let tok = Tokenizer::new(&loaded.tokenizer, &loaded.config)?;
    // Scoring (below) is part of the training half of the interface, so the backend must be able to train.
    let backend = model::resolve_and_report(BackendChoice::Auto, model::Work::Training, "embed")?;
    let model = model::load(&loaded, backend)?;

    // Generate: three questions in one continuous batch, two samples of the last one sharing its prompt.
    let questions = ["What is 2 + 3?", "Name a primary colour.", "Say hello in French."];
    let greedy = SamplingParams::default();
    let reqs: Vec<Request> = questions
        .iter()
        .enumerate()
        .map(|(i, q)| {
            let samples = match i {
                2 => vec![
                    SamplingParams { temperature: 0.8, seed: 1, ..greedy },
                    SamplingParams { temperature: 0.8, seed: 2, ..greedy },
                ],
                _ => vec![greedy],
            };
            let prompt = tok.encode_chat(&[ChatMessage::new("user", q)])?;
            Ok(Request { prompt, max_new_tokens: 24, stop_ids: tok.stop_ids().to_vec(), samples })
        })
        .collect::<Result<_>>()?;
    let prompts: Vec<Vec<u32>> = reqs.iter().map(|r| r.prompt.clone()).collect();
    let out = generate_batch(model.as_ref(), reqs, &EngineConfig::default())?;
    for (q, samples) in questions.iter().zip(&out) {
        for g in samples {
            let text = tok.decode(&g.tokens, true)?;
            let mean_lp = g.logprobs.iter().sum::<f32>() / g.logprobs.len().max(1) as f32;
            println!("{q} -> {text:?} ({} tokens, mean log-prob {mean_lp:.3}, {:?})", g.tokens.len(), g.finish);
        }
    }

    // Score: the log-prob of each generated token under the model, recomputed from the packed sequences.
    // Greedy tokens were the most likely ones, so these match the generation's own log-probs closely.
    let (mut tokens, mut seq_lens, mut positions) = (Vec::new(), Vec::new(), Vec::new());
    for (prompt, samples) in prompts.iter().zip(&out).take(2) {
        let start = tokens.len();
        tokens.extend(prompt);
        tokens.extend(&samples[0].tokens);
        seq_lens.push(tokens.len() - start);
        positions.extend(start + prompt.len() - 1..tokens.len() - 1);
    }
    let scored =
        model.sequence_logprobs(Packed { tokens: &tokens, seq_lens: &seq_lens, positions: &positions }, 1.0)?;
    let generated: Vec<f32> = out.iter().take(2).flat_map(|s| s[0].logprobs.iter().copied()).collect();
    let worst = scored.iter().zip(&generated).map(|(a, b)| (a - b).abs()).fold(0f32, f32::max);
    println!("scored {} tokens; largest difference from the generation's log-probs: {worst:.2e}", scored.len());
    Ok(())
}
