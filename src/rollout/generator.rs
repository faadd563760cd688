//! The generation interface rollouts call, so episode code never names a backend: a batch of prompts in,
//! one [`Generation`] per prompt out. A model behind the seam serves it as one continuous batch of the
//! engine (identical prompts share their prefill); tests script it with fixed replies.
use crate::engine::{generate_batch, EngineConfig, Generation, Request};
use crate::model::Model;
use crate::sample::SamplingParams;

/// One completion to produce.
#[derive(Clone, Debug, PartialEq)]
pub struct GenRequest {
    /// The full context, token ids (exactly what the action is later trained on).
    pub prompt: Vec<u32>,
    pub max_new_tokens: usize,
    /// Temperature, top-p and the request's own seed.
    pub params: SamplingParams,
}

/// Something that completes prompts with one policy's weights.
pub trait Generator: Sync {
    /// One [`Generation`] per request, in request order. Generation stops at any of `stop_ids` (the
    /// stop token is then the last generated token) or after `max_new_tokens`.
    fn generate_batch(&self, reqs: &[GenRequest], stop_ids: &[u32]) -> anyhow::Result<Vec<Generation>>;
}

impl Generator for Box<dyn Model> {
    fn generate_batch(&self, reqs: &[GenRequest], stop_ids: &[u32]) -> anyhow::Result<Vec<Generation>> {
        let reqs = reqs
            .iter()
            .map(|r| Request {
                prompt: r.prompt.clone(),
                max_new_tokens: r.max_new_tokens,
                stop_ids: stop_ids.to_vec(),
                samples: vec![r.params],
            })
            .collect();
        let out = generate_batch(self.as_ref(), reqs, &EngineConfig::default())?;
        Ok(out.into_iter().flatten().collect())
    }
}
