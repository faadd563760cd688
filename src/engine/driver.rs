//! [`Engine`]: checks requests, and runs the scheduler's plan as one model step at a time.
//!
//! What it assumes of [`Model::step`]: it applies `copies` in order before anything else, writes every
//! sequence's keys and values into the slots its block table names for positions `pos..`, and returns one
//! entry per sequence, `Some` exactly where the sequence asked to sample, with as many alternatives as its
//! `top_logprobs` asked for (or the whole vocabulary, if smaller). What the engine guarantees in
//! return: each table covers exactly positions `0 .. pos + tokens.len()`; no slot is written by two sequences
//! of a step; a sequence's positions before `pos` were computed in earlier steps (or copied at the start of
//! this one), never in this step, so the sequences of a step can run in any order or at once. A step that
//! fails may have done part of its work, so the engine then preempts every running sequence and recomputes
//! them later; cached blocks stay, since no step writes into a block it does not own alone.
use super::blocks::{blocks_for, BlockManager};
use super::constraint::Constraints;
use super::scheduler::{Plan, Scheduler};
use super::{EngineConfig, EngineStats, Event, FinishReason, Generation, Request, SeqId};
use crate::model::{KvPool, Model, Sampled, StepBatch, StepSeq};
use anyhow::{bail, ensure, Context, Result};

pub struct Engine<'m> {
    model: &'m dyn Model,
    kv: Box<dyn KvPool>,
    blocks: BlockManager,
    sched: Scheduler,
    /// Finished events of sequences that needed no step (max_new_tokens 0), for the next `step`.
    ready: Vec<Event>,
}

/// Blocks of `cfg.block_size` that the budget holds for `model`: `kv_fraction` of the free device memory
/// on a GPU, `kv_bytes` elsewhere.
pub(super) fn budget_blocks(model: &dyn Model, cfg: &EngineConfig) -> usize {
    let bytes = match model.free_memory() {
        Some(free) => (free as f64 * cfg.kv_fraction.clamp(0.0, 1.0) as f64) as usize,
        None => cfg.kv_bytes,
    };
    bytes / model.kv_block_bytes(cfg.block_size).max(1)
}

impl<'m> Engine<'m> {
    pub fn new(model: &'m dyn Model, cfg: EngineConfig) -> Result<Self> {
        ensure!(cfg.block_size > 0, "block_size must be positive");
        ensure!(cfg.max_seqs > 0, "max_seqs must be positive");
        ensure!(
            cfg.max_batch_tokens >= cfg.max_seqs,
            "max_batch_tokens ({}) must be at least max_seqs ({}), so every running sequence runs each step",
            cfg.max_batch_tokens,
            cfg.max_seqs
        );
        let num_blocks = cfg.num_blocks.unwrap_or_else(|| budget_blocks(model, &cfg));
        ensure!(
            num_blocks > 0,
            "the KV pool has no blocks: kv_bytes {} is less than one block of {} positions ({} bytes)",
            cfg.kv_bytes,
            cfg.block_size,
            model.kv_block_bytes(cfg.block_size)
        );
        ensure!(u32::try_from(num_blocks).is_ok(), "{num_blocks} KV blocks are more than block ids can name");
        let kv = model.new_kv_pool(num_blocks, cfg.block_size)?;
        Ok(Engine {
            model,
            kv,
            blocks: BlockManager::new(num_blocks, cfg.block_size),
            sched: Scheduler::new(cfg.max_seqs, cfg.max_batch_tokens),
            ready: Vec::new(),
        })
    }

    /// Queues a request; returns the ids of its sequences, one per sample in order. `max_new_tokens` is cut
    /// to what the model's context leaves; 0 finishes at once, with no tokens, at the next `step`.
    pub fn add(&mut self, req: Request) -> Result<Vec<SeqId>> {
        self.add_constrained(req, Vec::new())
    }

    /// [`Engine::add`] with a constraint per sample (`constraint` module; an empty list: none). Each
    /// constraint's first mask is taken now: one that fails, or allows no token, refuses the request.
    pub fn add_constrained(&mut self, req: Request, constraints: Constraints) -> Result<Vec<SeqId>> {
        let cfg = self.model.config();
        let (ctx, vocab, len) = (cfg.max_position_embeddings, cfg.vocab_size, req.prompt.len());
        ensure!(!req.samples.is_empty(), "a request needs at least one sample");
        ensure!(len > 0, "the prompt is empty");
        if let Some(t) = req.prompt.iter().find(|&&t| t as usize >= vocab) {
            bail!("prompt token id {t} is outside the vocabulary ({vocab} ids)");
        }
        ensure!(len < ctx, "the prompt has {len} tokens and the model's context is {ctx}: no room to generate");
        for p in &req.samples {
            p.validate()?;
        }
        let n = req.samples.len();
        ensure!(
            constraints.is_empty() || constraints.len() == n,
            "{} constraints for {n} samples: give one per sample or none",
            constraints.len()
        );
        let max_seqs = self.sched.max_seqs();
        ensure!(n <= max_seqs, "{n} samples of one request are more than max_seqs ({max_seqs}) sequences");
        let max_new = req.max_new_tokens.min(ctx - len);
        if max_new == 0 {
            let ids: Vec<SeqId> = (0..n).map(|_| self.sched.new_id()).collect();
            let empty = Generation {
                tokens: Vec::new(),
                logprobs: Vec::new(),
                top_logprobs: Vec::new(),
                finish: FinishReason::Length,
                prefill_s: 0.0,
                decode_s: 0.0,
            };
            self.ready.extend(ids.iter().map(|&seq| Event::Finished { seq, generation: empty.clone() }));
            return Ok(ids);
        }
        // The last token is sampled, never run: a sequence holds at most len + max_new - 1 positions.
        let (bs, pool) = (self.blocks.block_size(), self.blocks.num_blocks());
        let need = blocks_for(len + max_new - 1, bs);
        ensure!(
            need <= pool,
            "a sequence of {len} prompt tokens and up to {max_new} new ones needs {need} KV blocks of {bs} positions; \
             the pool has {pool}"
        );
        let mut constrained = Vec::with_capacity(constraints.len());
        for (j, c) in constraints.into_iter().enumerate() {
            constrained.push(match c {
                None => None,
                Some(mut c) => {
                    let mask = c.allowed(&req.stop_ids).with_context(|| format!("sample {j}'s constraint"))?;
                    ensure!(
                        mask.len() == vocab,
                        "sample {j}'s constraint gave a mask over {} tokens for a {vocab}-token vocabulary",
                        mask.len()
                    );
                    ensure!(!mask.is_empty(), "sample {j}'s constraint allows no first token");
                    Some((c, mask))
                }
            });
        }
        Ok(self.sched.add_constrained(&req.prompt, max_new, &req.stop_ids, &req.samples, constrained))
    }

    /// Drops sequence `seq` and frees its blocks; it gets no Finished event. An unknown id does nothing.
    pub fn abort(&mut self, seq: SeqId) {
        self.ready.retain(|e| !matches!(e, Event::Finished { seq: s, .. } if *s == seq));
        self.sched.abort(seq, &mut self.blocks);
    }

    /// Nothing queued, running or left to report.
    pub fn is_idle(&self) -> bool {
        self.ready.is_empty() && self.sched.is_idle()
    }

    /// Runs one model step. Returns the Token events in the order of the batch, each sequence's Finished
    /// event (after its last Token) the step it stops.
    pub fn step(&mut self) -> Result<Vec<Event>> {
        let plan = self.sched.schedule(&mut self.blocks);
        let mut events = std::mem::take(&mut self.ready);
        if plan.chunks.is_empty() {
            return Ok(events);
        }
        match self.run(&plan) {
            Ok(out) => events.extend(self.sched.apply(&mut self.blocks, &plan, &out)),
            Err(e) => {
                self.ready = events;
                self.sched.preempt_all(&mut self.blocks);
                return Err(e);
            }
        }
        Ok(events)
    }

    /// The model's results for `plan`, checked against it.
    fn run(&mut self, plan: &Plan) -> Result<Vec<Option<Sampled>>> {
        let mut seqs = Vec::with_capacity(plan.chunks.len());
        for c in &plan.chunks {
            let seq = self.sched.seq(c.seq).context("a planned sequence is gone")?;
            let end = c.pos + c.len;
            let table = self.blocks.table(c.seq);
            let block_table = table.get(..blocks_for(end, self.blocks.block_size())).context("a short block table")?;
            let allowed = c.sample.and(seq.allowed());
            seqs.push(StepSeq { tokens: &seq.tokens[c.pos..end], pos: c.pos, block_table, sample: c.sample, allowed });
        }
        let batch = StepBatch { copies: plan.copies.clone(), seqs };
        let out = self.model.step(self.kv.as_mut(), &batch)?;
        ensure!(
            out.len() == plan.chunks.len(),
            "the model returned {} results for {} sequences",
            out.len(),
            plan.chunks.len()
        );
        let vocab = self.model.config().vocab_size;
        for ((c, o), st) in plan.chunks.iter().zip(&out).zip(&batch.seqs) {
            ensure!(
                c.sample.is_some() == o.is_some(),
                "the model sampled where it was not asked to, or did not where it was"
            );
            if let (Some(s), Some(spec)) = (o, c.sample) {
                ensure!((s.id as usize) < vocab, "the model sampled token {} of a {vocab}-token vocabulary", s.id);
                // A constrained sample's alternatives are among its allowed tokens (`Seq::push` checks the pick).
                let choices = st.allowed.map_or(vocab, |m| m.count());
                let k = spec.params.top_logprobs.min(choices);
                ensure!(s.top.len() == k, "the model gave {} top log-probs where {k} were asked for", s.top.len());
            }
        }
        Ok(out)
    }

    /// The model the engine steps.
    pub fn model(&self) -> &'m dyn Model {
        self.model
    }

    pub fn stats(&self) -> &EngineStats {
        &self.sched.stats
    }

    /// Blocks sequences hold now (not counting free blocks kept in the prefix cache).
    pub fn used_blocks(&self) -> usize {
        self.blocks.in_use()
    }

    /// Sequences running now, and waiting for admission.
    pub fn counts(&self) -> (usize, usize) {
        self.sched.counts()
    }

    pub(super) fn max_seqs(&self) -> usize {
        self.sched.max_seqs()
    }

    pub fn num_blocks(&self) -> usize {
        self.blocks.num_blocks()
    }

    /// Checks the block accounting and the scheduler's state (for tests; O(blocks + sequences)).
    pub fn check_invariants(&self) -> Result<()> {
        self.sched.check(&self.blocks)
    }
}
