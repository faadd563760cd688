//! The batched generation engine above the model interface ([`crate::model::Model`]): many sequences
//! decode together, one [`Model::step`](crate::model::Model::step) at a time, with their keys and values in
//! a paged pool. No device code: the same engine drives every backend, and all of it is tested on the CPU.
//!
//! - `blocks`: the KV block manager: block tables, reference counts, forks with copy-on-write, and a
//!   prefix cache of computed blocks, so sequences that share a prompt share its keys and values.
//! - `scheduler`: continuous batching: what runs in each step (decodes first, then prefill chunks, then
//!   admissions), preemption by recompute when the pool runs out, retiring finished sequences.
//! - `seq`: one sequence's state and the [`Generation`] it ends with.
//! - `driver`: [`Engine`], which checks requests and turns the scheduler's plan into model steps.
//! - `batch`: whole jobs: [`generate_batch`], [`Engine::run_batch`] and one-sequence [`generate`].
//! - `service`: an engine on its own thread that many threads submit to ([`EngineService`], `mappa serve`).
//! - `constraint`: sequences whose tokens a [`Constraint`] restricts (structured outputs), masked where
//!   sampling happens.
//!
//! A sequence's tokens do not depend on what shares its batch or on a preemption: sampling draws are a
//! function of (seed, index) (`crate::sample`), and a recomputed sequence continues at the same index.
mod batch;
mod blocks;
mod constraint;
mod driver;
mod scheduler;
mod seq;
mod service;

use crate::sample::SamplingParams;
use serde::Serialize;

pub use batch::{generate, generate_batch, generate_batch_constrained};
pub use constraint::{Constraint, Constraints};
pub use driver::Engine;
pub use service::{EngineService, Scores, ServiceLoad, Update};

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum FinishReason {
    /// A stop token was generated.
    Stop,
    /// The token budget ran out.
    Length,
}

/// What a sequence generated. The stop token, when one ended it, is the last of `tokens` (training needs it
/// as the last action token).
#[derive(Clone, Debug)]
pub struct Generation {
    pub tokens: Vec<u32>,
    /// log π of each token under softmax(logits / T) before any top-k/top-p cut (T = 1 when greedy).
    pub logprobs: Vec<f32>,
    /// Per token, its sample's `top_logprobs` most likely alternatives with their log-probs under the same
    /// distribution ([`crate::model::Sampled::top`]); empty when the sample asked for none.
    pub top_logprobs: Vec<Vec<(u32, f32)>>,
    pub finish: FinishReason,
    /// Seconds from `Engine::add` to the first token (queueing included), and from it to the last.
    pub prefill_s: f64,
    pub decode_s: f64,
}

#[derive(Clone, Copy, Debug, PartialEq)]
pub struct EngineConfig {
    /// Positions per KV block.
    pub block_size: usize,
    /// Blocks in the pool; None: as many as `kv_bytes` holds.
    pub num_blocks: Option<usize>,
    /// Pool budget in bytes when `num_blocks` is None, on a backend without device memory (the CPU).
    pub kv_bytes: usize,
    /// Pool budget when `num_blocks` is None on a GPU: this fraction of the device memory free when the
    /// engine starts (the weights and the step's scratch are already allocated by then).
    pub kv_fraction: f32,
    /// Tokens per step: one per decoding sequence plus prefill chunks. At least `max_seqs`.
    pub max_batch_tokens: usize,
    /// Sequences running at once, at most.
    pub max_seqs: usize,
}

impl Default for EngineConfig {
    fn default() -> Self {
        EngineConfig {
            block_size: 16,
            num_blocks: None,
            kv_bytes: 1 << 30,
            kv_fraction: 0.5,
            max_batch_tokens: 512,
            max_seqs: 64,
        }
    }
}

/// Identifies one sampled sequence of a request.
pub type SeqId = u64;

/// Prompt in, `samples.len()` sequences out: each continues the same prompt with its own parameters and
/// seed, and they share the prompt's keys and values.
#[derive(Clone, Debug, PartialEq)]
pub struct Request {
    pub prompt: Vec<u32>,
    pub max_new_tokens: usize,
    pub stop_ids: Vec<u32>,
    pub samples: Vec<SamplingParams>,
}

#[derive(Clone, Debug)]
pub enum Event {
    /// `seq` generated `id`; `top` are the alternatives its sample asked for (empty: none).
    Token { seq: SeqId, id: u32, logprob: f32, top: Vec<(u32, f32)> },
    /// `seq` stopped (after its last Token event) and holds no blocks any more.
    Finished { seq: SeqId, generation: Generation },
    /// `seq`'s constraint could not go on (after its last Token event); it holds no blocks any more and gets
    /// no Finished event.
    Failed { seq: SeqId, error: String },
}

/// Counters over an engine's life.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct EngineStats {
    /// Model steps run.
    pub steps: u64,
    /// Sequences put back in the queue to free blocks (each is recomputed later).
    pub preemptions: u64,
    /// Tokens whose keys and values came from the prefix cache instead of being computed.
    pub prefix_hit_tokens: u64,
    /// Tokens computed from known text: prompts, recomputes after preemption, and each fork child's last
    /// prompt token.
    pub prefill_tokens: u64,
    /// Tokens computed right after being sampled.
    pub decode_tokens: u64,
    /// Blocks copied before a write into a shared block.
    pub cow_copies: u64,
}
