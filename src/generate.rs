//! Autoregressive generation on the CPU model: prefill the prompt in one pass, then decode one token at a
//! time until a stop token or the token budget. Every generated token keeps its log-probability, and the
//! stop token, when one ends the text, is part of the output ids (training needs it as the last action token).
use crate::cpu::{CpuModel, Logits};
use crate::sample::{sample, SamplingParams};
use anyhow::Result;
use serde::Serialize;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum FinishReason {
    /// A stop token was generated.
    Stop,
    /// The token budget ran out.
    Length,
}

#[derive(Clone, Debug)]
pub struct Generation {
    pub tokens: Vec<u32>,
    pub logprobs: Vec<f32>,
    pub finish: FinishReason,
    /// Seconds spent on the prompt pass and on the decode steps.
    pub prefill_s: f64,
    pub decode_s: f64,
}

pub fn generate(
    model: &CpuModel,
    prompt: &[u32],
    max_new_tokens: usize,
    params: SamplingParams,
    stop_ids: &[u32],
    mut on_token: impl FnMut(u32) -> Result<()>,
) -> Result<Generation> {
    params.validate()?;
    let mut cache = model.new_cache();
    let mut out = Generation {
        tokens: Vec::new(),
        logprobs: Vec::new(),
        finish: FinishReason::Length,
        prefill_s: 0.0,
        decode_s: 0.0,
    };
    if max_new_tokens == 0 {
        return Ok(out);
    }
    let t0 = std::time::Instant::now();
    let mut logits = model.forward(prompt, &mut cache, Logits::Last)?;
    out.prefill_s = t0.elapsed().as_secs_f64();
    let t1 = std::time::Instant::now();
    loop {
        let (id, lp) = sample(&logits, &params, out.tokens.len() as u64);
        out.tokens.push(id);
        out.logprobs.push(lp);
        on_token(id)?;
        if stop_ids.contains(&id) {
            out.finish = FinishReason::Stop;
            break;
        }
        if out.tokens.len() == max_new_tokens {
            break;
        }
        logits = model.forward(&[id], &mut cache, Logits::Last)?;
    }
    out.decode_s = t1.elapsed().as_secs_f64();
    Ok(out)
}
