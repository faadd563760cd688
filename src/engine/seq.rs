//! One sequence's state in the engine, and the [`Generation`] it ends with.
//!
//! A sequence is either a sampler (it generates) or the parent of a request with several samples: it
//! computes the prompt but its last token once, never samples, and forks into its children when done.
use super::constraint::Constraint;
use super::{FinishReason, Generation, SeqId};
use crate::model::{SampleSpec, Sampled};
use crate::sample::{SamplingParams, TokenMask};
use std::sync::Arc;
use std::time::Instant;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum State {
    /// In the queue, holding no blocks.
    Waiting,
    /// Admitted: has a block table with its first `computed` positions.
    Running,
    /// A child waiting for its parent's prefill, holding no blocks.
    Pending { parent: SeqId },
}

pub enum Role {
    Parent { children: Vec<SeqId> },
    Sampler(Sampler),
}

pub struct Sampler {
    params: SamplingParams,
    max_new: usize,
    stop_ids: Arc<[u32]>,
    logprobs: Vec<f32>,
    top_logprobs: Vec<Vec<(u32, f32)>>,
    added: Instant,
    first_token: Option<Instant>,
    /// A constrained sampler's constraint and the mask of its next token.
    constrained: Option<(Box<dyn Constraint>, TokenMask)>,
}

/// Why a sampler ends after a token.
pub enum Ending {
    Finish(FinishReason),
    /// Its constraint failed.
    Fail(String),
}

pub struct Seq {
    /// The prompt, then the tokens generated so far (a parent: the prompt but its last token).
    pub tokens: Vec<u32>,
    prompt_len: usize,
    /// Positions whose keys and values are in the pool (0 unless running).
    pub computed: usize,
    pub state: State,
    pub role: Role,
    /// It runs the token it sampled last, not known text (which a preemption makes it recompute).
    pub decoding: bool,
}

impl Seq {
    /// A sampler; `constrained` is its constraint with the mask of its first token.
    pub fn sampler(
        prompt: &[u32],
        state: State,
        params: SamplingParams,
        max_new: usize,
        stop_ids: Arc<[u32]>,
        constrained: Option<(Box<dyn Constraint>, TokenMask)>,
    ) -> Seq {
        let s = Sampler {
            constrained,
            params,
            max_new,
            stop_ids,
            logprobs: Vec::new(),
            top_logprobs: Vec::new(),
            added: Instant::now(),
            first_token: None,
        };
        Seq::new(prompt, state, Role::Sampler(s))
    }

    pub fn parent(prompt_but_last: &[u32], children: Vec<SeqId>) -> Seq {
        Seq::new(prompt_but_last, State::Waiting, Role::Parent { children })
    }

    fn new(prompt: &[u32], state: State, role: Role) -> Seq {
        Seq { tokens: prompt.to_vec(), prompt_len: prompt.len(), computed: 0, state, role, decoding: false }
    }

    /// Known tokens not yet in the pool.
    pub fn remaining(&self) -> usize {
        self.tokens.len() - self.computed
    }

    /// The tokens whose keys and values may come from the prefix cache: a sampler computes at least its last
    /// one, whose logits it samples from.
    pub fn cacheable(&self) -> &[u32] {
        match self.role {
            Role::Parent { .. } => &self.tokens,
            Role::Sampler(_) => &self.tokens[..self.tokens.len() - 1],
        }
    }

    /// Sequences it stands for against `max_seqs`: a parent holds its children's places.
    pub fn weight(&self) -> usize {
        match &self.role {
            Role::Parent { children } => children.len(),
            Role::Sampler(_) => 1,
        }
    }

    /// How to sample after a chunk that ends at position `end`: only a sampler's chunk that reaches the end
    /// of its known tokens samples.
    pub fn sample_after(&self, end: usize) -> Option<SampleSpec> {
        match &self.role {
            Role::Sampler(s) if end == self.tokens.len() => {
                Some(SampleSpec { params: s.params, index: (self.tokens.len() - self.prompt_len) as u64 })
            }
            _ => None,
        }
    }

    /// The tokens its next sample may pick, when it is constrained.
    pub fn allowed(&self) -> Option<&TokenMask> {
        match &self.role {
            Role::Sampler(Sampler { constrained: Some((_, mask)), .. }) => Some(mask),
            _ => None,
        }
    }

    /// Appends a sampled token; returns why the sequence ends, if it does. A constrained sequence that goes
    /// on commits the token to its constraint and takes the next mask.
    pub fn push(&mut self, sampled: &Sampled, now: Instant) -> Option<Ending> {
        let Role::Sampler(s) = &mut self.role else { return None };
        let id = sampled.id;
        if let Some((_, mask)) = &s.constrained {
            if !mask.allows(id) {
                return Some(Ending::Fail(format!("the backend sampled token {id}, which the constraint forbids")));
            }
        }
        self.tokens.push(id);
        self.decoding = true;
        s.logprobs.push(sampled.logprob);
        if s.params.top_logprobs > 0 {
            s.top_logprobs.push(sampled.top.clone());
        }
        s.first_token.get_or_insert(now);
        if s.stop_ids.contains(&id) {
            return Some(Ending::Finish(FinishReason::Stop));
        } else if s.logprobs.len() >= s.max_new {
            return Some(Ending::Finish(FinishReason::Length));
        }
        let (constraint, mask) = s.constrained.as_mut()?;
        let next = constraint.commit(id).and_then(|()| constraint.allowed(&s.stop_ids));
        match next {
            Ok(next) if next.len() != mask.len() => Some(Ending::Fail(format!(
                "the constraint gave a mask over {} tokens for a {}-token vocabulary",
                next.len(),
                mask.len()
            ))),
            Ok(next) if next.is_empty() => Some(Ending::Fail(format!(
                "the constraint allows no token after token {id} (it is complete and the sequence has no stop token)"
            ))),
            Ok(next) => {
                *mask = next;
                None
            }
            Err(e) => Some(Ending::Fail(format!("the constraint failed after token {id}: {e:#}"))),
        }
    }

    /// What the sequence generated, ending now for `finish`.
    pub fn into_generation(self, finish: FinishReason, now: Instant) -> Generation {
        let (logprobs, top_logprobs, prefill_s, decode_s) = match self.role {
            Role::Sampler(s) => {
                let first = s.first_token.unwrap_or(now);
                (s.logprobs, s.top_logprobs, (first - s.added).as_secs_f64(), (now - first).as_secs_f64())
            }
            Role::Parent { .. } => (Vec::new(), Vec::new(), 0.0, 0.0),
        };
        let tokens = self.tokens[self.prompt_len..].to_vec();
        Generation { tokens, logprobs, top_logprobs, finish, prefill_s, decode_s }
    }
}
