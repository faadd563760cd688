//! The batched generation engine against a fake model whose KV pool stores, per slot, the token written
//! there and, standing for its keys, a hash of the sequence up to it (as real keys depend on every token
//! before). Its sampled token is a hash of the history it reads back through the block table, with the seed
//! and the sampling index, and a slot whose stored hash does not follow from the history before it is an
//! error. Any wrong sharing, missed copy-on-write, stale cached block or lost token therefore changes the
//! output or fails the step; outputs are compared with an oracle computed without the engine.
mod common;

use anyhow::{bail, ensure, Context, Result};
use mappa::config::{Arch, ModelConfig};
use mappa::engine::{generate, generate_batch, Engine, EngineConfig, Event, FinishReason, Generation, Request, SeqId};
use mappa::model::{Backend, KvPool, LossFn, Model, Packed, SampleSpec, Sampled, StepBatch};
use mappa::optim::AdamWConfig;
use mappa::sample::SamplingParams;
use mappa::tensor::Weights;
use rand::{Rng, SeedableRng};
use std::any::Any;
use std::collections::{HashMap, HashSet};
use std::path::Path;
use std::slice::from_ref;
use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};

struct FakePool {
    block_size: usize,
    /// The token written at each (block, offset) and the context hash of the sequence up to it, or None.
    slots: Vec<Option<(u32, u64)>>,
}

impl KvPool for FakePool {
    fn num_blocks(&self) -> usize {
        self.slots.len() / self.block_size
    }
    fn block_size(&self) -> usize {
        self.block_size
    }
    fn as_any_mut(&mut self) -> &mut dyn Any {
        self
    }
}

struct Fake {
    cfg: ModelConfig,
    /// Tokens run, blocks copied, and steps taken so far.
    tokens: AtomicUsize,
    copies: AtomicUsize,
    steps: AtomicUsize,
    /// The step (counting from 1) that fails, 0 for none.
    fail_step: usize,
}

impl Fake {
    fn new(context: usize) -> Fake {
        let cfg = ModelConfig { max_position_embeddings: context, ..common::tiny_config(Arch::Llama) };
        Fake { cfg, tokens: AtomicUsize::new(0), copies: AtomicUsize::new(0), steps: AtomicUsize::new(0), fail_step: 0 }
    }
}

fn mix(h: u64, x: u64) -> u64 {
    let mut z = (h ^ x).wrapping_add(0x9E37_79B9_7F4A_7C15).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z ^= z >> 31;
    z.wrapping_mul(0x94D0_49BB_1331_11EB) ^ (z >> 29)
}

/// The context hash before any token.
const ROOT: u64 = 0x5EED;

/// The context hash after `history`.
fn context(history: &[u32]) -> u64 {
    history.iter().fold(ROOT, |h, &t| mix(h, t as u64))
}

/// The fake model's choice after a history with context hash `ctx`.
fn draw(ctx: u64, spec: SampleSpec, vocab: usize) -> Sampled {
    let h = mix(mix(ctx, spec.params.seed), spec.index);
    Sampled { id: (h % vocab as u64) as u32, logprob: -((h >> 40) as f32) / (1u64 << 22) as f32, top: Vec::new() }
}

impl Model for Fake {
    fn config(&self) -> &ModelConfig {
        &self.cfg
    }
    fn backend(&self) -> Backend {
        Backend::Cpu
    }
    fn kv_block_bytes(&self, block_size: usize) -> usize {
        block_size * 4
    }
    fn new_kv_pool(&self, num_blocks: usize, block_size: usize) -> Result<Box<dyn KvPool>> {
        Ok(Box::new(FakePool { block_size, slots: vec![None; num_blocks * block_size] }))
    }

    /// Copies, then writes every sequence's tokens (chaining the context hash from the slot before), then
    /// reads each one's whole history back, checking every slot's hash against the tokens before it. As in a
    /// real step, which runs its sequences at once, no slot is written twice, and a sequence's positions
    /// before its chunk must not be written in the same step.
    fn step(&self, kv: &mut dyn KvPool, batch: &StepBatch) -> Result<Vec<Option<Sampled>>> {
        ensure!(self.steps.fetch_add(1, Relaxed) + 1 != self.fail_step, "the fake model fails this step");
        let pool = kv.as_any_mut().downcast_mut::<FakePool>().context("another pool")?;
        let bs = pool.block_size;
        for &(from, to) in &batch.copies {
            let (from, to) = (from as usize * bs, to as usize * bs);
            ensure!(from != to, "a block copied onto itself");
            pool.slots.copy_within(from..from + bs, to);
        }
        self.copies.fetch_add(batch.copies.len(), Relaxed);
        let slot = |table: &[u32], p: usize| table[p / bs] as usize * bs + p % bs;
        let mut written = HashSet::new();
        for s in &batch.seqs {
            let end = s.pos + s.tokens.len();
            ensure!(!s.tokens.is_empty() && s.block_table.len() == end.div_ceil(bs), "a table of the wrong length");
            for p in s.pos..end {
                ensure!(written.insert(slot(s.block_table, p)), "two sequences write one slot in a step");
            }
        }
        let earlier = |table: &[u32], p: usize| {
            ensure!(!written.contains(&slot(table, p)), "position {p} is read in the step that writes it");
            Ok(slot(table, p))
        };
        for s in &batch.seqs {
            let end = s.pos + s.tokens.len();
            let mut ctx = match s.pos {
                0 => ROOT,
                p => pool.slots[earlier(s.block_table, p - 1)?].context("the position before a chunk is empty")?.1,
            };
            for (p, &t) in (s.pos..end).zip(s.tokens) {
                ctx = mix(ctx, t as u64);
                pool.slots[slot(s.block_table, p)] = Some((t, ctx));
            }
            self.tokens.fetch_add(s.tokens.len(), Relaxed);
        }
        batch
            .seqs
            .iter()
            .map(|s| {
                let mut ctx = ROOT;
                for p in 0..s.pos + s.tokens.len() {
                    let i = if p < s.pos { earlier(s.block_table, p)? } else { slot(s.block_table, p) };
                    let (t, stored) = pool.slots[i].with_context(|| format!("position {p} is empty"))?;
                    ctx = mix(ctx, t as u64);
                    ensure!(stored == ctx, "position {p} holds keys computed after another history");
                }
                Ok(s.sample.map(|spec| draw(ctx, spec, self.cfg.vocab_size)))
            })
            .collect()
    }

    fn sequence_logprobs(&self, _: Packed, _: f32) -> Result<Vec<f32>> {
        bail!("not a real model")
    }
    fn forward_backward(&mut self, _: Packed, _: f32, _: bool, _: &mut LossFn) -> Result<()> {
        bail!("not a real model")
    }
    fn zero_grad(&mut self) {}
    fn gradients(&self) -> Result<Vec<f32>> {
        bail!("not a real model")
    }
    fn init_optimizer(&mut self, _: AdamWConfig, _: Option<&Path>) -> Result<()> {
        bail!("not a real model")
    }
    fn save_optimizer(&self, _: &Path) -> Result<()> {
        bail!("not a real model")
    }
    fn optimizer_steps(&self) -> u64 {
        0
    }
    fn optimizer_step(&mut self, _: f32, _: f32) -> Result<f32> {
        bail!("not a real model")
    }
    fn weights(&self) -> Result<Weights> {
        Ok(Weights::default())
    }
}

/// What each sample of `req` must generate: the fake model's draws, one sequence at a time, no engine.
fn oracle(model: &Fake, req: &Request) -> Vec<(Vec<u32>, Vec<f32>, FinishReason)> {
    let max_new = req.max_new_tokens.min(model.cfg.max_position_embeddings - req.prompt.len());
    let one = |params: &SamplingParams| {
        let (mut history, mut lps) = (req.prompt.clone(), Vec::new());
        for index in 0..max_new as u64 {
            let s = draw(context(&history), SampleSpec { params: *params, index }, model.cfg.vocab_size);
            history.push(s.id);
            lps.push(s.logprob);
            if req.stop_ids.contains(&s.id) {
                return (history[req.prompt.len()..].to_vec(), lps, FinishReason::Stop);
            }
        }
        (history[req.prompt.len()..].to_vec(), lps, FinishReason::Length)
    };
    req.samples.iter().map(one).collect()
}

fn outcome(g: &Generation) -> (Vec<u32>, Vec<f32>, FinishReason) {
    (g.tokens.clone(), g.logprobs.clone(), g.finish)
}

fn params(seed: u64) -> SamplingParams {
    SamplingParams { temperature: 0.8, seed, ..SamplingParams::default() }
}

fn request(prompt: Vec<u32>, max_new_tokens: usize, samples: Vec<SamplingParams>) -> Request {
    Request { prompt, max_new_tokens, stop_ids: Vec::new(), samples }
}

fn cfg(block_size: usize, num_blocks: usize, max_batch_tokens: usize, max_seqs: usize) -> EngineConfig {
    EngineConfig { block_size, num_blocks: Some(num_blocks), kv_bytes: 0, kv_fraction: 0.5, max_batch_tokens, max_seqs }
}

/// Steps until idle (within a bound, so a stuck engine fails), checking the invariants after each step;
/// returns every event.
fn drain(engine: &mut Engine) -> Vec<Event> {
    let mut events = Vec::new();
    for _ in 0..100_000 {
        if engine.is_idle() {
            return events;
        }
        events.extend(engine.step().unwrap());
        engine.check_invariants().unwrap();
    }
    panic!("the engine does not finish");
}

fn finished(events: &[Event]) -> HashMap<SeqId, Generation> {
    let done = events.iter().filter_map(|e| match e {
        Event::Finished { seq, generation } => Some((*seq, generation.clone())),
        Event::Token { .. } | Event::Failed { .. } => None,
    });
    done.collect()
}

/// What one property run saw of a sequence.
#[derive(Default)]
struct Seen {
    request: usize,
    sample: usize,
    tokens: Vec<u32>,
    logprobs: Vec<f32>,
    generation: Option<Generation>,
    aborted: bool,
}

/// Random adds, steps and aborts on a small pool. Prompts come from a few shared bases, so many share
/// prefixes and some are identical; the bases are made of a few block-long words, so equal blocks also follow
/// different prefixes. Requests have 1 to 3 samples, random budgets and stop ids. The invariants are checked
/// after every step, and every sequence that was not aborted against the same request run alone and against
/// the oracle.
fn property(seed: u64, events: usize) -> (u64, u64, u64) {
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
    let model = Fake::new(128);
    let vocab = model.cfg.vocab_size as u32;
    let mut engine = Engine::new(&model, cfg(4, 20, 12, 6)).unwrap();
    let words: Vec<Vec<u32>> = (0..3).map(|_| (0..4).map(|_| rng.random_range(0..vocab)).collect()).collect();
    let bases: Vec<Vec<u32>> =
        (0..4).map(|_| (0..6).flat_map(|_| words[rng.random_range(0..words.len())].clone()).collect()).collect();
    let (mut requests, mut seqs) = (Vec::new(), HashMap::<SeqId, Seen>::new());
    let mut live: Vec<SeqId> = Vec::new();
    for _ in 0..events {
        match rng.random_range(0..10) {
            0..3 => {
                let mut prompt = bases[rng.random_range(0..bases.len())][..rng.random_range(1..=20)].to_vec();
                if rng.random_bool(0.3) {
                    prompt.extend((0..rng.random_range(1..5)).map(|_| rng.random_range(0..vocab)));
                }
                let samples = (0..rng.random_range(1..=3)).map(|_| params(rng.random_range(0..6))).collect();
                let stop_ids = (0..rng.random_range(0..3)).map(|_| rng.random_range(0..vocab)).collect();
                // Now and then a budget the pool could never hold: 20 blocks of 4 positions.
                let max_new = if rng.random_bool(0.05) { 100 } else { rng.random_range(0..=36) };
                let req = Request { prompt, max_new_tokens: max_new, stop_ids, samples };
                match engine.add(req.clone()) {
                    Ok(ids) => {
                        for (j, &id) in ids.iter().enumerate() {
                            seqs.insert(id, Seen { request: requests.len(), sample: j, ..Seen::default() });
                        }
                        live.extend(ids);
                        requests.push(req);
                    }
                    Err(e) => {
                        assert!(req.max_new_tokens == 100 && format!("{e:#}").contains("the pool has 20"), "{e:#}")
                    }
                }
            }
            3..9 => {
                for event in engine.step().unwrap() {
                    let (id, s) = match &event {
                        Event::Token { seq, .. } | Event::Finished { seq, .. } | Event::Failed { seq, .. } => {
                            (*seq, seqs.get_mut(seq).unwrap())
                        }
                    };
                    assert!(!s.aborted && s.generation.is_none(), "an event for sequence {id}, which is over");
                    match event {
                        Event::Token { id, logprob, .. } => {
                            s.tokens.push(id);
                            s.logprobs.push(logprob);
                        }
                        Event::Finished { generation, .. } => {
                            assert_eq!((&generation.tokens, &generation.logprobs), (&s.tokens, &s.logprobs));
                            assert!(generation.prefill_s >= 0.0 && generation.decode_s >= 0.0);
                            s.generation = Some(generation);
                            live.retain(|&l| l != id);
                        }
                        Event::Failed { error, .. } => panic!("sequence {id} failed unconstrained: {error}"),
                    }
                }
                engine.check_invariants().unwrap();
            }
            _ => {
                if live.is_empty() {
                    engine.abort(SeqId::MAX); // unknown: nothing happens
                } else {
                    let id = live.swap_remove(rng.random_range(0..live.len()));
                    engine.abort(id);
                    seqs.get_mut(&id).unwrap().aborted = true;
                }
                engine.check_invariants().unwrap();
            }
        }
    }
    for (seq, generation) in finished(&drain(&mut engine)) {
        seqs.get_mut(&seq).unwrap().generation = Some(generation);
    }
    assert_eq!(engine.used_blocks(), 0, "blocks leaked");
    // Alone, in a pool that never runs out.
    let solo = EngineConfig {
        block_size: 16,
        num_blocks: None,
        kv_bytes: 1 << 20,
        kv_fraction: 0.5,
        max_batch_tokens: 512,
        max_seqs: 8,
    };
    let mut alone: Vec<Vec<Generation>> = Vec::new();
    for req in &requests {
        let mut engine = Engine::new(&model, solo).unwrap();
        alone.extend(engine.run_batch(from_ref(req)).unwrap());
        assert_eq!(engine.stats().preemptions, 0);
    }
    let mut compared = 0;
    for (id, s) in &seqs {
        if s.aborted {
            continue;
        }
        let got = outcome(s.generation.as_ref().unwrap_or_else(|| panic!("sequence {id} never finished")));
        assert_eq!(got, outcome(&alone[s.request][s.sample]), "sequence {id}: batched and alone differ");
        assert_eq!(got, oracle(&model, &requests[s.request])[s.sample], "sequence {id}: not what the model draws");
        compared += 1;
    }
    assert!(compared > events / 20, "only {compared} sequences finished");
    let st = engine.stats();
    (st.preemptions, st.prefix_hit_tokens, st.cow_copies)
}

#[test]
fn random_traffic_on_a_small_pool_gives_what_each_request_gives_alone() {
    for seed in 0..4 {
        let (preemptions, prefix_hits, copies) = property(seed, 3000);
        println!("seed {seed}: {preemptions} preemptions, {prefix_hits} prefix-hit tokens, {copies} block copies");
        assert!(preemptions > 0 && prefix_hits > 0 && copies > 0, "seed {seed} did not exercise everything");
    }
}

#[test]
fn samples_copy_the_shared_partial_block_only() {
    for (prompt_len, copies) in [(6, 2), (5, 0)] {
        // With blocks of 4, the parent runs prompt_len - 1 tokens: 5 leave a partial block that the children
        // share (two of three copy it, the last writes in place); 4 fill it, and each child starts a new one.
        let model = Fake::new(64);
        let req = request((10..10 + prompt_len).collect(), 5, vec![params(1), params(2), params(3)]);
        let mut engine = Engine::new(&model, cfg(4, 32, 64, 8)).unwrap();
        let got = engine.run_batch(from_ref(&req)).unwrap();
        assert_eq!(got[0].iter().map(outcome).collect::<Vec<_>>(), oracle(&model, &req));
        assert_eq!((engine.stats().cow_copies, model.copies.load(Relaxed)), (copies, copies as usize));
        assert_eq!(engine.stats().prefill_tokens, prompt_len as u64 - 1 + 3);
    }
}

#[test]
fn identical_prompts_in_a_batch_prefill_once() {
    let model = Fake::new(64);
    let prompt: Vec<u32> = (1..=10).collect();
    let reqs: Vec<Request> = (0..3).map(|i| request(prompt.clone(), 4, vec![params(i)])).collect();
    let mut engine = Engine::new(&model, cfg(4, 64, 64, 8)).unwrap();
    let got = engine.run_batch(&reqs).unwrap();
    // The shared parent runs 9 tokens, each sample the 10th and then 3 decodes.
    assert_eq!((engine.stats().prefill_tokens, engine.stats().decode_tokens), (9 + 3, 3 * 3));
    assert_eq!(model.tokens.load(Relaxed), 9 + 3 + 3 * 3);
    for (g, r) in got.iter().zip(&reqs) {
        assert_eq!(g.iter().map(outcome).collect::<Vec<_>>(), oracle(&model, r));
    }
    // generate_batch does the same, on a pool sized to the job.
    let model = Fake::new(64);
    let again = generate_batch(&model, reqs, &EngineConfig::default()).unwrap();
    assert_eq!(model.tokens.load(Relaxed), 9 + 3 + 3 * 3);
    assert_eq!(
        again.iter().flatten().map(outcome).collect::<Vec<_>>(),
        got.iter().flatten().map(outcome).collect::<Vec<_>>()
    );
}

#[test]
fn a_later_prompt_reuses_the_cached_prefix() {
    let model = Fake::new(64);
    let mut engine = Engine::new(&model, cfg(4, 32, 64, 8)).unwrap();
    let first = request((1..=10).collect(), 3, vec![params(0)]);
    engine.run_batch(from_ref(&first)).unwrap();
    let run = model.tokens.load(Relaxed);
    // The first 8 tokens are two cached blocks; 2 more prompt tokens and 2 decodes are computed.
    let second = request([(1..=8).collect(), vec![30, 31]].concat(), 3, vec![params(5)]);
    let got = engine.run_batch(from_ref(&second)).unwrap();
    assert_eq!(engine.stats().prefix_hit_tokens, 8);
    assert_eq!(model.tokens.load(Relaxed) - run, 2 + 2);
    assert_eq!(outcome(&got[0][0]), oracle(&model, &second)[0]);
    // Samples of a prompt whose all but last token are cached: no prefill, the samples start at once.
    let (run, steps) = (model.tokens.load(Relaxed), engine.stats().steps);
    let third = request((1..=9).collect(), 3, vec![params(1), params(2)]);
    let got = engine.run_batch(from_ref(&third)).unwrap();
    assert_eq!((engine.stats().prefix_hit_tokens, engine.stats().steps - steps), (8 + 8, 3));
    assert_eq!(model.tokens.load(Relaxed) - run, 2 + 2 * 2);
    assert_eq!(got[0].iter().map(outcome).collect::<Vec<_>>(), oracle(&model, &third));
}

#[test]
fn add_rejects_bad_requests_with_reasons() {
    let model = Fake::new(32);
    let mut engine = Engine::new(&model, cfg(4, 4, 16, 4)).unwrap();
    let cases = [
        (request(vec![], 4, vec![params(0)]), "prompt is empty"),
        (request(vec![1; 32], 4, vec![params(0)]), "no room to generate"),
        (request(vec![1, 67], 4, vec![params(0)]), "token id 67 is outside the vocabulary"),
        (request(vec![1; 10], 10, vec![params(0)]), "needs 5 KV blocks"),
        (request(vec![1], 4, vec![]), "at least one sample"),
        (request(vec![1], 4, vec![params(0); 5]), "more than max_seqs"),
        (request(vec![1], 4, vec![SamplingParams { temperature: -1.0, ..params(0) }]), "temperature"),
    ];
    for (req, why) in cases {
        let e = engine.add(req).expect_err(why);
        assert!(format!("{e:#}").contains(why), "{e:#} should say {why:?}");
    }
    assert!(engine.is_idle());
    // The budget is cut to the context: 10 + 22 = 32 positions, 31 of them in the pool, which fits 8 blocks.
    let mut engine = Engine::new(&model, cfg(4, 8, 16, 4)).unwrap();
    let id = engine.add(request(vec![1; 10], 1000, vec![params(0)])).unwrap()[0];
    assert_eq!(finished(&drain(&mut engine))[&id].tokens.len(), 22);
    for bad in [cfg(0, 8, 16, 4), cfg(4, 8, 3, 4), cfg(4, 8, 16, 0), cfg(4, 0, 16, 4)] {
        assert!(Engine::new(&model, bad).is_err(), "{bad:?}");
    }
    let tiny_budget = EngineConfig { num_blocks: None, kv_bytes: 10, ..cfg(4, 0, 16, 4) };
    assert!(format!("{:#}", Engine::new(&model, tiny_budget).err().unwrap()).contains("no blocks"));
}

#[test]
fn no_new_tokens_finishes_at_once() {
    let model = Fake::new(64);
    let mut engine = Engine::new(&model, cfg(4, 8, 16, 4)).unwrap();
    let ids = engine.add(request(vec![1, 2, 3], 0, vec![params(0), params(1)])).unwrap();
    assert!(!engine.is_idle());
    let events = engine.step().unwrap();
    assert_eq!(events.len(), 2);
    for (id, g) in finished(&events) {
        assert!(ids.contains(&id) && g.tokens.is_empty() && g.finish == FinishReason::Length);
    }
    assert!(engine.is_idle() && model.steps.load(Relaxed) == 0);
}

#[test]
fn abort_frees_blocks_and_ends_events() {
    let model = Fake::new(64);
    let mut engine = Engine::new(&model, cfg(4, 16, 8, 4)).unwrap();
    let a = engine.add(request(vec![5; 20], 10, vec![params(0)])).unwrap()[0];
    let b = engine.add(request(vec![6; 3], 10, vec![params(1), params(2)])).unwrap();
    engine.step().unwrap(); // a's first chunk of 8
    engine.step().unwrap();
    assert!(engine.used_blocks() > 0);
    engine.abort(a);
    engine.abort(a); // twice: nothing more happens
    for &s in &b {
        engine.abort(s);
    }
    engine.check_invariants().unwrap();
    assert_eq!(engine.used_blocks(), 0);
    assert!(engine.is_idle() && engine.step().unwrap().is_empty());
}

#[test]
fn a_failed_step_is_recomputed_without_changing_results() {
    let mut model = Fake::new(64);
    model.fail_step = 3;
    let reqs = [request((1..=9).collect(), 6, vec![params(0), params(1)]), request(vec![4; 5], 6, vec![params(2)])];
    let mut engine = Engine::new(&model, cfg(4, 32, 8, 4)).unwrap();
    let ids: Vec<Vec<SeqId>> = reqs.iter().map(|r| engine.add(r.clone()).unwrap()).collect();
    let mut events = Vec::new();
    while !engine.is_idle() {
        match engine.step() {
            Ok(e) => events.extend(e),
            Err(e) => assert!(format!("{e:#}").contains("fails this step")),
        }
        engine.check_invariants().unwrap();
    }
    assert!(model.steps.load(Relaxed) > 3 && engine.stats().preemptions > 0);
    let done = finished(&events);
    for (r, ids) in reqs.iter().zip(&ids) {
        let got: Vec<_> = ids.iter().map(|id| outcome(&done[id])).collect();
        assert_eq!(got, oracle(&model, r));
    }
}

#[test]
fn generate_streams_one_sequence_and_stops_at_a_stop_id() {
    let model = Fake::new(64);
    let free_run = generate(&model, &[3, 1, 4], 12, params(7), &[], |_| Ok(())).unwrap();
    assert_eq!(free_run.finish, FinishReason::Length);
    // Stop at the 4th token of the free run: it ends the output.
    let stop = free_run.tokens[3];
    let first = free_run.tokens.iter().position(|&t| t == stop).unwrap();
    let mut streamed = Vec::new();
    let g = generate(&model, &[3, 1, 4], 12, params(7), &[stop], |id| {
        streamed.push(id);
        Ok(())
    })
    .unwrap();
    assert_eq!((g.finish, &g.tokens[..], &streamed), (FinishReason::Stop, &free_run.tokens[..=first], &g.tokens));
    // An error from the callback ends generation and comes back.
    let e = generate(&model, &[3, 1, 4], 12, params(7), &[], |_| bail!("client went away")).unwrap_err();
    assert!(e.to_string().contains("client went away"));
}

#[test]
fn requests_beyond_max_seqs_samples_are_split_and_still_complete() {
    let model = Fake::new(64);
    let reqs = vec![request(vec![9; 6], 5, (0..5).map(params).collect()), request(vec![9; 6], 5, vec![params(9)])];
    let got =
        generate_batch(&model, reqs.clone(), &EngineConfig { max_seqs: 2, max_batch_tokens: 8, ..cfg(4, 40, 0, 0) })
            .unwrap();
    assert_eq!(got.iter().map(Vec::len).collect::<Vec<_>>(), [5, 1]);
    for (g, r) in got.iter().zip(&reqs) {
        assert_eq!(g.iter().map(outcome).collect::<Vec<_>>(), oracle(&model, r));
    }
}
