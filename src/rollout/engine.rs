//! The generation interface rollouts call, so episode code never branches on the device: a batch of
//! prompts in, one [`Generation`] per prompt out. The CPU model serves requests one after another; a GPU
//! engine implements the same trait with real batching.
use crate::cpu::CpuModel;
use crate::generate::{generate, Generation};
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
pub trait Engine: Sync {
    /// One [`Generation`] per request, in request order. Generation stops at any of `stop_ids` (the
    /// stop token is then the last generated token) or after `max_new_tokens`.
    fn generate_batch(&self, reqs: &[GenRequest], stop_ids: &[u32]) -> anyhow::Result<Vec<Generation>>;
}

impl Engine for CpuModel {
    fn generate_batch(&self, reqs: &[GenRequest], stop_ids: &[u32]) -> anyhow::Result<Vec<Generation>> {
        reqs.iter().map(|r| generate(self, &r.prompt, r.max_new_tokens, r.params, stop_ids, |_| Ok(()))).collect()
    }
}
