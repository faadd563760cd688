//! Continuous batching: which sequences run in the next model step, with which tokens, and what their
//! results change. Plain bookkeeping over the block manager; no model in it.
//!
//! Each step: every running sequence with one token left to run (a decode) gets it; running sequences still
//! prefilling get chunks, oldest first, from the rest of the token budget; then waiting sequences are
//! admitted first come first served while `max_seqs`, the token budget and free blocks allow (taking what
//! the prefix cache holds of their tokens). Only the chunk that reaches the end of a sequence's known tokens
//! samples.
//!
//! When a running sequence needs a block and none is left, the most recently admitted running sequence
//! (maybe itself) is preempted: its blocks are freed and it goes back to the front of the queue, to be
//! recomputed later from its prompt and the tokens it generated, continuing at the same sampling index, so
//! its output does not change. The oldest running sequence is only preempted when it runs alone, which
//! cannot happen because `Engine::add` refused any sequence larger than the pool: every step makes
//! progress and no request fails for lack of blocks. A step that preempts admits nobody, since blocks just
//! ran out.
//!
//! A request with n > 1 samples runs as a parent that prefills the prompt but its last token once, then
//! forks: each child takes all its blocks, runs the last prompt token (copy-on-write of the shared partial
//! block) and samples with its own parameters. Finished sequences are retired at once.
use super::blocks::BlockManager;
use super::constraint::Constraint;
use super::seq::{Ending, Role, Seq, State};
use super::{EngineStats, Event, SeqId};
use crate::model::{SampleSpec, Sampled};
use crate::sample::{SamplingParams, TokenMask};
use anyhow::{ensure, Context, Result};
use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::Instant;

/// Tokens `pos .. pos + len` of `seq` run in a step.
#[derive(Clone, Debug, PartialEq)]
pub struct Chunk {
    pub seq: SeqId,
    pub pos: usize,
    pub len: usize,
    pub sample: Option<SampleSpec>,
}

/// One step's work: block copies first, then the chunks.
#[derive(Debug, Default)]
pub struct Plan {
    pub copies: Vec<(u32, u32)>,
    pub chunks: Vec<Chunk>,
}

pub struct Scheduler {
    seqs: HashMap<SeqId, Seq>,
    /// Oldest admission first; fork children take their parent's place.
    running: Vec<SeqId>,
    waiting: VecDeque<SeqId>,
    next_id: SeqId,
    max_seqs: usize,
    max_batch_tokens: usize,
    pub stats: EngineStats,
}

impl Scheduler {
    /// `max_batch_tokens` must be at least `max_seqs`, so every running sequence gets a token each step.
    pub fn new(max_seqs: usize, max_batch_tokens: usize) -> Scheduler {
        Scheduler {
            seqs: HashMap::new(),
            running: Vec::new(),
            waiting: VecDeque::new(),
            next_id: 0,
            max_seqs,
            max_batch_tokens,
            stats: EngineStats::default(),
        }
    }

    pub fn max_seqs(&self) -> usize {
        self.max_seqs
    }

    pub fn is_idle(&self) -> bool {
        self.seqs.is_empty()
    }

    /// Sequences running now, and waiting for admission (new or preempted).
    pub fn counts(&self) -> (usize, usize) {
        (self.running.len(), self.waiting.len())
    }

    pub fn seq(&self, id: SeqId) -> Option<&Seq> {
        self.seqs.get(&id)
    }

    pub fn new_id(&mut self) -> SeqId {
        self.next_id += 1;
        self.next_id
    }

    /// Queues one sequence per element of `samples` continuing `prompt` (checked by the caller); returns
    /// their ids.
    #[cfg(test)]
    pub fn add(&mut self, prompt: &[u32], max_new: usize, stop_ids: &[u32], samples: &[SamplingParams]) -> Vec<SeqId> {
        self.add_constrained(prompt, max_new, stop_ids, samples, Vec::new())
    }

    /// Queues one sequence per element of `samples` continuing `prompt` (checked by the caller), each with
    /// its constraint and first mask (an empty list: none); returns their ids.
    pub fn add_constrained(
        &mut self,
        prompt: &[u32],
        max_new: usize,
        stop_ids: &[u32],
        samples: &[SamplingParams],
        constrained: Vec<Option<(Box<dyn Constraint>, TokenMask)>>,
    ) -> Vec<SeqId> {
        let stop_ids: Arc<[u32]> = stop_ids.into();
        let ids: Vec<SeqId> = samples.iter().map(|_| self.new_id()).collect();
        let mut constrained = constrained.into_iter();
        let queued = match samples {
            [params] => {
                let seq =
                    Seq::sampler(prompt, State::Waiting, *params, max_new, stop_ids, constrained.next().flatten());
                self.seqs.insert(ids[0], seq);
                ids[0]
            }
            _ => {
                let parent = self.new_id();
                for (&id, &params) in ids.iter().zip(samples) {
                    let (state, c) = (State::Pending { parent }, constrained.next().flatten());
                    let child = Seq::sampler(prompt, state, params, max_new, stop_ids.clone(), c);
                    self.seqs.insert(id, child);
                }
                self.seqs.insert(parent, Seq::parent(&prompt[..prompt.len() - 1], ids.clone()));
                parent
            }
        };
        self.waiting.push_back(queued);
        ids
    }

    /// Decides the next step (module docs), allocating its blocks.
    pub fn schedule(&mut self, blocks: &mut BlockManager) -> Plan {
        let mut plan = Plan::default();
        let mut budget = self.max_batch_tokens;
        // Tokens kept for the decodes not yet scheduled, so prefill chunks cannot starve them.
        let mut reserved = self.running.iter().filter(|id| self.seqs[id].remaining() == 1).count();
        let mut preempted = false;
        let mut i = 0;
        while i < self.running.len() {
            let id = self.running[i];
            let rem = self.seqs[&id].remaining();
            let len = if rem == 1 {
                reserved -= 1;
                1
            } else {
                rem.min(budget.saturating_sub(reserved))
            };
            while len > 0 && !self.plan_chunk(id, len, blocks, &mut plan) {
                let victim = self.running[self.running.len() - 1];
                if victim != id && self.seqs[&victim].remaining() == 1 {
                    reserved -= 1;
                }
                self.preempt(victim, blocks);
                preempted = true;
                if victim == id {
                    break;
                }
            }
            if self.running.get(i) == Some(&id) {
                budget -= len;
                i += 1;
            }
        }
        if !preempted {
            self.admit(blocks, budget, &mut plan);
        }
        plan
    }

    /// Admits waiting sequences in order while they fit, planning their first chunks.
    fn admit(&mut self, blocks: &mut BlockManager, mut budget: usize, plan: &mut Plan) {
        let mut weight: usize = self.running.iter().map(|id| self.seqs[id].weight()).sum();
        while let Some(&id) = self.waiting.front() {
            let seq = &self.seqs[&id];
            if budget == 0 || weight + seq.weight() > self.max_seqs {
                return;
            }
            let hit = blocks.lookup(seq.cacheable());
            let start = blocks.hit_tokens(&hit);
            let len = (seq.tokens.len() - start).min(budget);
            if blocks.admit_cost(&hit, start + len) > blocks.available() {
                return;
            }
            self.waiting.pop_front();
            blocks.admit(id, hit);
            self.stats.prefix_hit_tokens += start as u64;
            weight += seq.weight();
            if let Some(seq) = self.seqs.get_mut(&id) {
                seq.computed = start;
                seq.state = State::Running;
            }
            self.running.push(id);
            // A parent with nothing to compute (all cached, or a one-token prompt) forks now, and its children
            // start this step.
            let started = if len == 0 { self.fork(id, blocks) } else { vec![id] };
            for s in started {
                let len = self.seqs[&s].remaining().min(budget);
                if len == 0 || !self.plan_chunk(s, len, blocks, plan) {
                    return;
                }
                budget -= len;
            }
        }
    }

    /// Plans the next `len` tokens of running `id`, or returns false when the pool lacks the blocks.
    fn plan_chunk(&mut self, id: SeqId, len: usize, blocks: &mut BlockManager, plan: &mut Plan) -> bool {
        let seq = &self.seqs[&id];
        let pos = seq.computed;
        if !blocks.reserve(id, pos, pos + len, &mut plan.copies) {
            return false;
        }
        plan.chunks.push(Chunk { seq: id, pos, len, sample: seq.sample_after(pos + len) });
        true
    }

    /// Frees `id`'s blocks and queues it first, to be recomputed.
    fn preempt(&mut self, id: SeqId, blocks: &mut BlockManager) {
        blocks.free(id);
        self.running.retain(|&r| r != id);
        self.waiting.push_front(id);
        if let Some(seq) = self.seqs.get_mut(&id) {
            seq.computed = 0;
            seq.state = State::Waiting;
            seq.decoding = false;
        }
        self.stats.preemptions += 1;
    }

    /// Preempts every running sequence, keeping their order: after a failed step, whose writes and copies
    /// may be half done, everything is recomputed.
    pub fn preempt_all(&mut self, blocks: &mut BlockManager) {
        while let Some(&id) = self.running.last() {
            self.preempt(id, blocks);
        }
    }

    /// Replaces the finished parent `id` by its children, which share its blocks; returns them.
    fn fork(&mut self, id: SeqId, blocks: &mut BlockManager) -> Vec<SeqId> {
        let Some(Seq { role: Role::Parent { children }, computed, .. }) = self.seqs.remove(&id) else {
            return Vec::new();
        };
        for &c in &children {
            blocks.fork(id, c);
            if let Some(child) = self.seqs.get_mut(&c) {
                child.computed = computed;
                child.state = State::Running;
            }
        }
        blocks.free(id);
        if let Some(at) = self.running.iter().position(|&r| r == id) {
            self.running.splice(at..=at, children.iter().copied());
        }
        children
    }

    /// Applies a step's results (one per chunk, checked by the caller): advances the sequences, caches the
    /// blocks they completed, appends sampled tokens, forks parents that finished their prefill, and retires
    /// sequences that stop. Returns the events, in chunk order.
    pub fn apply(&mut self, blocks: &mut BlockManager, plan: &Plan, out: &[Option<Sampled>]) -> Vec<Event> {
        let now = Instant::now();
        let mut events = Vec::new();
        self.stats.steps += 1;
        self.stats.cow_copies += plan.copies.len() as u64;
        for (c, sampled) in plan.chunks.iter().zip(out) {
            let Some(seq) = self.seqs.get_mut(&c.seq) else { continue };
            seq.computed += c.len;
            let counter = if seq.decoding { &mut self.stats.decode_tokens } else { &mut self.stats.prefill_tokens };
            *counter += c.len as u64;
            blocks.commit(c.seq, &seq.tokens, seq.computed);
            if let Role::Parent { .. } = seq.role {
                if seq.remaining() == 0 {
                    self.fork(c.seq, blocks);
                }
                continue;
            }
            let Some(s) = sampled else { continue };
            let ending = seq.push(s, now);
            events.push(Event::Token { seq: c.seq, id: s.id, logprob: s.logprob, top: s.top.clone() });
            let Some(ending) = ending else { continue };
            if let Some(seq) = self.remove(c.seq, blocks) {
                events.push(match ending {
                    Ending::Finish(reason) => {
                        Event::Finished { seq: c.seq, generation: seq.into_generation(reason, now) }
                    }
                    Ending::Fail(error) => Event::Failed { seq: c.seq, error },
                });
            }
        }
        events
    }

    /// Drops sampler `id` and frees its blocks, with its parent if it was the parent's last pending child.
    /// Parents' ids are internal and unknown ids are ignored.
    pub fn abort(&mut self, id: SeqId, blocks: &mut BlockManager) {
        let Some(seq) = self.seqs.get(&id) else { return };
        if let Role::Parent { .. } = seq.role {
            return;
        }
        if let State::Pending { parent } = seq.state {
            if let Some(Seq { role: Role::Parent { children }, .. }) = self.seqs.get_mut(&parent) {
                children.retain(|&c| c != id);
                if children.is_empty() {
                    self.remove(parent, blocks);
                }
            }
        }
        self.remove(id, blocks);
    }

    /// Takes `id` out of the engine, freeing its blocks.
    fn remove(&mut self, id: SeqId, blocks: &mut BlockManager) -> Option<Seq> {
        blocks.free(id);
        self.running.retain(|&r| r != id);
        self.waiting.retain(|&w| w != id);
        self.seqs.remove(&id)
    }

    /// Checks the scheduler's state against the block manager's (and the latter's own accounting).
    pub fn check(&self, blocks: &BlockManager) -> Result<()> {
        let mut queued = 0;
        for (&id, seq) in &self.seqs {
            match seq.state {
                State::Running => {
                    ensure!(self.running.contains(&id), "sequence {id} is running but not in the running list");
                    blocks.check_table(id, &seq.tokens, seq.computed)?;
                }
                State::Waiting => {
                    ensure!(self.waiting.contains(&id), "sequence {id} is waiting but not queued");
                    ensure!(seq.computed == 0 && blocks.table(id).is_empty(), "waiting sequence {id} holds blocks");
                }
                State::Pending { parent } => {
                    let p = self.seqs.get(&parent).with_context(|| format!("sequence {id}'s parent is gone"))?;
                    ensure!(
                        matches!(&p.role, Role::Parent { children } if children.contains(&id)),
                        "sequence {id} is not a child of its parent {parent}"
                    );
                    ensure!(blocks.table(id).is_empty(), "pending sequence {id} holds blocks");
                }
            }
            queued += usize::from(!matches!(seq.state, State::Pending { .. }));
        }
        ensure!(queued == self.running.len() + self.waiting.len(), "the queues hold unknown or repeated sequences");
        let mut weight = 0;
        for id in &self.running {
            weight += self.seqs.get(id).with_context(|| format!("running sequence {id} is unknown"))?.weight();
        }
        ensure!(weight <= self.max_seqs, "{weight} sequences running, more than max_seqs ({})", self.max_seqs);
        blocks.check()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A step's chunks as (seq, pos, len, samples), and its copies.
    type Ran = (Vec<(SeqId, usize, usize, bool)>, Vec<(u32, u32)>);

    /// Schedules and applies one step in which every sampling sequence draws `id`.
    fn step(s: &mut Scheduler, bm: &mut BlockManager, id: u32) -> Ran {
        let plan = s.schedule(bm);
        let out: Vec<_> =
            plan.chunks.iter().map(|c| c.sample.map(|_| Sampled { id, logprob: -1.0, top: Vec::new() })).collect();
        s.apply(bm, &plan, &out);
        s.check(bm).unwrap();
        (plan.chunks.iter().map(|c| (c.seq, c.pos, c.len, c.sample.is_some())).collect(), plan.copies)
    }

    fn greedy(n: usize) -> Vec<SamplingParams> {
        vec![SamplingParams::default(); n]
    }

    #[test]
    fn decodes_come_first_and_prefill_is_chunked_by_the_budget() {
        let (mut s, mut bm) = (Scheduler::new(2, 8), BlockManager::new(32, 4));
        let a = s.add(&[1, 2, 3], 10, &[], &greedy(1))[0];
        assert_eq!(step(&mut s, &mut bm, 7).0, [(a, 0, 3, true)]);
        let b = s.add(&[5; 20], 10, &[], &greedy(1))[0];
        let c = s.add(&[6; 2], 10, &[], &greedy(1))[0];
        // a decodes; b takes the other 7 tokens; c waits (max_seqs 2).
        assert_eq!(step(&mut s, &mut bm, 7).0, [(a, 3, 1, true), (b, 0, 7, false)]);
        assert_eq!(step(&mut s, &mut bm, 7).0, [(a, 4, 1, true), (b, 7, 7, false)]);
        assert_eq!(step(&mut s, &mut bm, 7).0, [(a, 5, 1, true), (b, 14, 6, true)]);
        assert_eq!(step(&mut s, &mut bm, 7).0, [(a, 6, 1, true), (b, 20, 1, true)]);
        assert!(s.seq(c).is_some_and(|q| q.state == State::Waiting));
        assert_eq!((s.stats.prefill_tokens, s.stats.decode_tokens), (23, 5));
    }

    #[test]
    fn a_full_pool_preempts_the_youngest_which_resumes_later() {
        let (mut s, mut bm) = (Scheduler::new(4, 16), BlockManager::new(4, 2));
        let a = s.add(&[1, 2, 3], 3, &[], &greedy(1))[0];
        let b = s.add(&[4, 5, 6], 3, &[], &greedy(1))[0];
        assert_eq!(step(&mut s, &mut bm, 9).0, [(a, 0, 3, true), (b, 0, 3, true)]);
        assert_eq!(step(&mut s, &mut bm, 9).0, [(a, 3, 1, true), (b, 3, 1, true)]);
        // Position 4 needs a third block each: b gives its blocks to a and waits.
        assert_eq!(step(&mut s, &mut bm, 9).0, [(a, 4, 1, true)]);
        assert_eq!(s.stats.preemptions, 1);
        // a finished (3 tokens); b recomputes its prompt and the 2 tokens it had, and samples its third. Its
        // first block is still cached: a took its second, freed before it.
        assert!(s.seq(a).is_none());
        assert_eq!(step(&mut s, &mut bm, 9).0, [(b, 2, 3, true)]);
        assert_eq!(s.stats.prefix_hit_tokens, 2);
        assert!(s.is_idle() && bm.in_use() == 0);
    }

    #[test]
    fn admission_is_first_come_first_served() {
        let (mut s, mut bm) = (Scheduler::new(4, 16), BlockManager::new(3, 4));
        let a = s.add(&[1; 8], 1, &[], &greedy(1))[0];
        let b = s.add(&[2; 8], 1, &[], &greedy(1))[0];
        let c = s.add(&[3; 2], 1, &[], &greedy(1))[0];
        // b does not fit beside a, and c, which would, does not overtake it.
        assert_eq!(step(&mut s, &mut bm, 9).0, [(a, 0, 8, true)]);
        assert_eq!(step(&mut s, &mut bm, 9).0, [(b, 0, 8, true), (c, 0, 2, true)]);
    }

    #[test]
    fn samples_share_the_prompt_and_copy_its_partial_block() {
        let (mut s, mut bm) = (Scheduler::new(4, 16), BlockManager::new(8, 4));
        let ids = s.add(&[1, 2, 3, 4, 5, 6], 2, &[], &greedy(3));
        // The parent runs 5 tokens once, then each child runs the 6th: two copy the shared partial block.
        let (chunks, _) = step(&mut s, &mut bm, 9);
        assert!(matches!(chunks[..], [(_, 0, 5, false)]));
        let (chunks, copies) = step(&mut s, &mut bm, 9);
        assert_eq!(chunks, ids.iter().map(|&c| (c, 5, 1, true)).collect::<Vec<_>>());
        assert_eq!(copies.len(), 2);
        assert_eq!(s.stats.prefill_tokens, 8);
    }

    #[test]
    fn samples_of_a_cached_prompt_start_at_once() {
        let (mut s, mut bm) = (Scheduler::new(4, 16), BlockManager::new(8, 4));
        s.add(&[1, 2, 3, 4, 9], 1, &[], &greedy(1));
        step(&mut s, &mut bm, 9);
        // The parent's 4 tokens are a cached block: it forks when admitted.
        let ids = s.add(&[1, 2, 3, 4, 5], 1, &[], &greedy(2));
        let (chunks, copies) = step(&mut s, &mut bm, 9);
        assert_eq!((chunks, copies), (ids.iter().map(|&c| (c, 4, 1, true)).collect(), vec![]));
        assert_eq!(s.stats.prefix_hit_tokens, 4);
        assert!(s.is_idle());
    }

    #[test]
    fn aborting_every_pending_child_drops_the_parent() {
        let (mut s, mut bm) = (Scheduler::new(2, 4), BlockManager::new(8, 4));
        let ids = s.add(&[1; 9], 2, &[], &greedy(2));
        step(&mut s, &mut bm, 9); // half the parent's prefill
        assert!(bm.in_use() > 0);
        s.abort(ids[0], &mut bm);
        s.check(&bm).unwrap();
        s.abort(ids[1], &mut bm);
        s.check(&bm).unwrap();
        assert!(s.is_idle() && bm.in_use() == 0);
    }
}
