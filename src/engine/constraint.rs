//! Constrained sequences (structured outputs): a sequence may carry a [`Constraint`] that says, before each
//! of its samples, which tokens it may pick, and is told, after, which one it picked. The engine asks for
//! the first mask when the request is added (a constraint that cannot start refuses the request), hands
//! each mask to the model's step with the sample ([`crate::model::StepSeq::allowed`]), where the backend
//! draws from the masked distribution ([`crate::sample::sample_masked`]), then commits the token and asks
//! for the next mask, on the engine's thread, between two steps.
//!
//! A constraint belongs to one sequence: a request with n samples takes n of them. A sequence without one
//! samples exactly as before, so an unconstrained request's tokens do not change when a constrained one
//! shares its batch. Preemption keeps the constraint and its mask: the recomputed sequence continues where
//! it was. A constraint that fails (an error from `allowed` or `commit`, or a backend that sampled outside
//! the mask) ends its sequence with [`super::Event::Failed`]; the other sequences go on.
//!
//! `crate::constrain` builds constraints from JSON schemas, regular expressions and Lark grammars
//! (llguidance).
use crate::sample::TokenMask;
use anyhow::Result;

/// One sequence's constraint (module docs).
pub trait Constraint: Send {
    /// The tokens allowed next, over the model's whole vocabulary. `stop_ids` are the sequence's stop
    /// tokens: the constraint allows them where its output may end (and only them once it is complete).
    fn allowed(&mut self, stop_ids: &[u32]) -> Result<TokenMask>;

    /// Advances past `token`, drawn from the last mask. Never called with a stop token: it ends the
    /// sequence.
    fn commit(&mut self, token: u32) -> Result<()>;
}

/// Constraints for a request's samples, one per sample in order (None: that sample is free); an empty list
/// constrains none.
pub type Constraints = Vec<Option<Box<dyn Constraint>>>;
