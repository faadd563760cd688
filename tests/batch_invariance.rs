//! Batch invariance of the engine on SmolLM2-135M (f32 CPU backend): one request with a fixed seed gives
//! bitwise the same tokens, log-probs and top-5 alternatives alone, inside a batch of 32 mixed-length prompts
//! (which ask for no alternatives), next to requests that share its prompt's blocks, next to constrained
//! requests (JSON-only sequences, `crate::constrain`), and after the engine preempted and recomputed it.
mod common;
use mappa::engine::{generate_batch, Engine, EngineConfig, Event, Generation, Request};
use mappa::model::Model;
use mappa::sample::SamplingParams;
use mappa::tokenizer::ChatMessage;
use std::collections::HashMap;
use std::sync::OnceLock;

const NEW: usize = 20;

fn sampled(seed: u64) -> SamplingParams {
    SamplingParams { temperature: 0.8, top_k: 0, top_p: 0.95, seed, top_logprobs: 0 }
}

/// A chat prompt whose length grows with `i` (about 20 to 200 tokens).
fn prompt(i: usize) -> Vec<u32> {
    let (_, tok) = common::smollm2();
    let facts = "Apples are red. Bananas are yellow. Grass is green. The sky is blue. ".repeat(i % 9);
    let q = format!("{facts}Question {i}: name a colour and explain your choice.");
    tok.encode_chat(&[ChatMessage::new("user", &q)]).expect("prompt")
}

fn request(prompt: Vec<u32>, samples: Vec<SamplingParams>) -> Request {
    let (_, tok) = common::smollm2();
    Request { prompt, max_new_tokens: NEW, stop_ids: tok.stop_ids().to_vec(), samples }
}

/// The request under test: prompt 5, seed 77, with its 5 most likely alternatives at each token.
fn target() -> Request {
    request(prompt(5), vec![target_params()])
}

fn target_params() -> SamplingParams {
    SamplingParams { top_logprobs: 5, ..sampled(77) }
}

fn alone() -> &'static Generation {
    static G: OnceLock<Generation> = OnceLock::new();
    G.get_or_init(|| {
        let (model, _) = common::smollm2();
        let g = generate_batch(model, vec![target()], &EngineConfig::default()).unwrap().remove(0).remove(0);
        assert!(g.tokens.len() > 3, "the target generates something");
        assert_eq!(g.top_logprobs.len(), g.tokens.len(), "alternatives with every token");
        for ((&id, &lp), top) in g.tokens.iter().zip(&g.logprobs).zip(&g.top_logprobs) {
            assert_eq!(top.len(), 5);
            assert!(top.windows(2).all(|w| w[0].1 >= w[1].1), "sorted: {top:?}");
            match top.iter().find(|t| t.0 == id) {
                Some(&(_, own)) => assert_eq!(own.to_bits(), lp.to_bits(), "the sampled token's own entry"),
                None => assert!(lp <= top[4].1, "a token outside the top 5 is less likely"),
            }
        }
        g
    })
}

fn assert_same(what: &str, got: &Generation) {
    let want = alone();
    assert_eq!(got.tokens, want.tokens, "{what}: tokens differ from the request run alone");
    let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
    assert_eq!(bits(&got.logprobs), bits(&want.logprobs), "{what}: log-probs differ from the request run alone");
    let top_bits = |g: &Generation| -> Vec<Vec<(u32, u32)>> {
        g.top_logprobs.iter().map(|t| t.iter().map(|&(id, lp)| (id, lp.to_bits())).collect()).collect()
    };
    assert_eq!(top_bits(got), top_bits(want), "{what}: alternatives differ from the request run alone");
    assert_eq!(got.finish, want.finish, "{what}");
}

#[test]
fn a_request_is_bitwise_the_same_alone_and_in_a_batch_of_32() {
    let (model, _) = common::smollm2();
    let mut reqs: Vec<Request> =
        (0..32).filter(|&i| i != 5).map(|i| request(prompt(i), vec![sampled(i as u64)])).collect();
    reqs.insert(13, target());
    let lens: Vec<usize> = reqs.iter().map(|r| r.prompt.len()).collect();
    assert!(lens.iter().max().unwrap() > &(3 * lens.iter().min().unwrap()), "mixed lengths: {lens:?}");
    let out = generate_batch(model, reqs, &EngineConfig::default()).unwrap();
    assert_same("in a batch of 32", &out[13][0]);
}

#[test]
fn prefix_sharing_does_not_change_a_request() {
    let (model, _) = common::smollm2();
    // Two more samples of the same prompt (merged: one prefill, forked blocks, copy-on-write of the partial
    // block), and a longer prompt that starts with the target's.
    let mut longer = prompt(5);
    longer.extend(prompt(1));
    let reqs =
        vec![request(prompt(5), vec![sampled(1), target_params(), sampled(2)]), request(longer, vec![sampled(3)])];
    let out = generate_batch(model, reqs, &EngineConfig::default()).unwrap();
    assert_same("as the second sample of a shared prompt", &out[0][1]);
    assert_ne!(out[0][0].tokens, out[0][1].tokens, "samples with other seeds differ");
}

#[test]
fn constrained_neighbours_do_not_change_a_request() {
    let (model, tok) = common::smollm2();
    // The target's own prompt constrained to JSON (sharing its prompt's blocks) and two other constrained
    // samples: their masks apply to their rows only.
    let grammars = mappa::constrain::Grammars::new(tok, model.config().vocab_size).unwrap();
    let json = grammars.json_object().unwrap();
    let reqs = vec![request(prompt(5), vec![sampled(7)]), target(), request(prompt(2), vec![sampled(8), sampled(9)])];
    let constraints: Vec<mappa::engine::Constraints> =
        vec![vec![Some(json.constraint())], Vec::new(), vec![Some(json.constraint()), Some(json.constraint())]];
    let out = mappa::engine::generate_batch_constrained(model, reqs, constraints, &EngineConfig::default()).unwrap();
    assert_same("next to constrained requests", &out[1][0]);
    let first = tok.decode(&out[0][0].tokens[..1], false).unwrap();
    assert!(first.trim_start().starts_with('{'), "the constrained neighbour starts a JSON object: {first:?}");
}

#[test]
fn preemption_does_not_change_a_request() {
    let (model, _) = common::smollm2();
    // A pool far too small for 12 sequences at once: the engine must preempt and recompute to finish them.
    let per_seq = (prompt(8).len() + NEW).div_ceil(16);
    let cfg = EngineConfig { block_size: 16, num_blocks: Some(per_seq * 3), ..EngineConfig::default() };
    let mut engine = Engine::new(model as &dyn Model, cfg).unwrap();
    // The target comes last, so it is the most recently admitted sequence: the first one preempted.
    let mut ids = Vec::new();
    for i in 0..11 {
        ids.extend(engine.add(request(prompt(i), vec![sampled(100 + i as u64)])).unwrap());
    }
    let target_id = engine.add(target()).unwrap()[0];
    ids.push(target_id);
    let mut done: HashMap<u64, Generation> = HashMap::new();
    while !engine.is_idle() {
        for ev in engine.step().unwrap() {
            if let Event::Finished { seq, generation } = ev {
                done.insert(seq, generation);
            }
        }
    }
    assert!(engine.stats().preemptions > 0, "the small pool forced at least one preemption");
    assert_eq!(done.len(), ids.len(), "every sequence finished");
    assert_same("after preemptions", &done[&target_id]);
}
