//! Constrained decoding: the masked sampler (a masked sample never picks a forbidden token, and a mask that
//! forbids nothing changes nothing), grammars compiled by `mappa::constrain` (JSON schemas, regular
//! expressions, Lark), and the engine running constrained sequences next to free ones, on the tiny chat
//! model (SmolLM2's tokenizer, random weights) on the CPU backend.
mod common;

use mappa::constrain::{bounded_whitespace, Grammar, Grammars};
use mappa::cpu::CpuBackend;
use mappa::engine::{generate_batch, generate_batch_constrained, Constraint, EngineConfig, Generation, Request};
use mappa::sample::{sample_masked, sample_with_top, SamplingParams, TokenMask};
use mappa::tokenizer::{ChatMessage, Tokenizer};
use rand::{Rng, SeedableRng};
use serde_json::{json, Value};
use std::sync::OnceLock;

fn model() -> &'static (CpuBackend, Tokenizer, Grammars) {
    static M: OnceLock<(CpuBackend, Tokenizer, Grammars)> = OnceLock::new();
    M.get_or_init(|| {
        let loaded = common::tiny_chat_model(5);
        let tok = Tokenizer::new(&loaded.tokenizer, &loaded.config).expect("tokenizer");
        let grammars = Grammars::new(&tok, loaded.config.vocab_size).expect("grammars");
        (CpuBackend::new(&loaded).expect("model"), tok, grammars)
    })
}

fn logits(seed: u64, n: usize) -> Vec<f32> {
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
    (0..n).map(|_| rng.random_range(-4.0f32..4.0)).collect()
}

fn params(temperature: f32, top_k: usize, top_p: f32, seed: u64, top_logprobs: usize) -> SamplingParams {
    SamplingParams { temperature, top_k, top_p, seed, top_logprobs }
}

#[test]
fn a_masked_sample_never_picks_a_forbidden_token() {
    let n = 300;
    for case in 0..400u64 {
        let l = logits(case, n);
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(1000 + case);
        let allowed: Vec<u32> = (0..n as u32).filter(|_| rng.random_bool(0.05)).collect();
        let mask = TokenMask::from_ids(n, allowed.iter().copied());
        if mask.is_empty() {
            continue;
        }
        for p in [
            params(0.0, 0, 1.0, case, 3),
            params(1.0, 0, 1.0, case, 0),
            params(0.7, 5, 1.0, case, 2),
            params(1.3, 0, 0.5, case, 4),
            params(1.0, 40, 0.9, case, 0),
        ] {
            let s = sample_masked(&l, &p, case, Some(&mask)).unwrap();
            assert!(mask.allows(s.id), "case {case}, {p:?}: picked {} outside the mask", s.id);
            assert!(s.top.iter().all(|&(id, _)| mask.allows(id)), "alternatives outside the mask: {:?}", s.top);
            assert_eq!(s.top.len(), p.top_logprobs.min(mask.count()));
            if let Some(&(_, own)) = s.top.iter().find(|t| t.0 == s.id) {
                assert_eq!(own.to_bits(), s.logprob.to_bits(), "the sampled token's own entry");
            }
            // The masked distribution sums to 1 over the allowed tokens.
            let t = if p.temperature > 0.0 { p.temperature } else { 1.0 };
            let lse = mappa::cpu::ops::logsumexp(&allowed.iter().map(|&i| l[i as usize] / t).collect::<Vec<_>>());
            assert!((s.logprob - (l[s.id as usize] / t - lse)).abs() < 1e-5, "masked log-prob");
        }
    }
}

#[test]
fn a_mask_that_allows_everything_changes_nothing_and_a_forced_token_has_logprob_zero() {
    let n = 257;
    let all = TokenMask::from_ids(n, 0..n as u32);
    for case in 0..200u64 {
        let l = logits(case, n);
        let p = params(if case % 3 == 0 { 0.0 } else { 0.9 }, (case % 4) as usize * 10, 0.95, case, 2);
        let free = sample_with_top(&l, &p, case);
        assert_eq!(sample_masked(&l, &p, case, Some(&all)).unwrap(), free);
        assert_eq!(sample_masked(&l, &p, case, None).unwrap(), free);
        let forced = sample_masked(&l, &p, case, Some(&TokenMask::from_ids(n, [17]))).unwrap();
        assert_eq!((forced.id, forced.logprob, forced.top), (17, 0.0, vec![(17, 0.0)]));
    }
    assert!(sample_masked(&logits(0, n), &params(1.0, 0, 1.0, 0, 0), 0, Some(&TokenMask::none(n))).is_err());
    let words = TokenMask::from_words(&[u32::MAX; 9], n);
    assert_eq!((words.count(), words.ids().last()), (n, Some(n as u32 - 1)));
}

fn chat_prompt(tok: &Tokenizer, text: &str) -> Vec<u32> {
    tok.encode_chat(&[ChatMessage::new("user", text)]).expect("prompt")
}

fn request(prompt: Vec<u32>, max_new: usize, samples: Vec<SamplingParams>) -> Request {
    let (_, tok, _) = model();
    Request { prompt, max_new_tokens: max_new, stop_ids: tok.stop_ids().to_vec(), samples }
}

/// The text of a generation, without its stop token.
fn text(g: &Generation) -> String {
    let (_, tok, _) = model();
    let ids = match g.tokens.last() {
        Some(t) if tok.stop_ids().contains(t) => &g.tokens[..g.tokens.len() - 1],
        _ => &g.tokens[..],
    };
    tok.decode(ids, false).expect("decode")
}

fn constraints(grammar: &Grammar, n: usize) -> Vec<Option<Box<dyn Constraint>>> {
    (0..n).map(|_| Some(grammar.constraint())).collect()
}

/// A schema whose every value is bounded, so a random model's output is complete within the budget.
fn bounded_schema() -> Value {
    json!({
        "type": "object",
        "properties": {
            "colour": {"enum": ["red", "green", "blue"]},
            "count": {"type": "integer", "minimum": 0, "maximum": 99},
            "ok": {"type": "boolean"},
        },
        "required": ["colour", "count", "ok"],
        "additionalProperties": false,
    })
}

fn check_bounded(v: &Value) {
    let o = v.as_object().unwrap_or_else(|| panic!("not an object: {v}"));
    assert_eq!(o.len(), 3, "{v}");
    assert!(["red", "green", "blue"].contains(&o["colour"].as_str().unwrap()), "{v}");
    assert!(o["count"].as_u64().is_some_and(|c| c <= 99), "{v}");
    assert!(o["ok"].is_boolean(), "{v}");
}

#[test]
fn json_schema_output_parses_and_validates_for_every_sample() {
    let (m, tok, grammars) = model();
    let grammar = grammars.json_schema(&bounded_schema()).unwrap();
    let samples: Vec<SamplingParams> = (0..6).map(|s| params(1.0, 0, 1.0, s, 0)).collect();
    let greedy = vec![SamplingParams::default()];
    let reqs =
        vec![request(chat_prompt(tok, "Give me JSON."), 200, samples), request(chat_prompt(tok, "JSON!"), 200, greedy)];
    let cons = vec![constraints(&grammar, 6), constraints(&grammar, 1)];
    let out = generate_batch_constrained(m, reqs, cons, &EngineConfig::default()).unwrap();
    for g in out.iter().flatten() {
        let t = text(g);
        assert_eq!(g.finish, mappa::engine::FinishReason::Stop, "ends with a stop token once complete: {t:?}");
        let v: Value = serde_json::from_str(&t).unwrap_or_else(|e| panic!("not JSON ({e}): {t:?}"));
        check_bounded(&v);
        assert!(grammar.accepts(tok, &t).unwrap());
        assert!(g.logprobs.iter().all(|&lp| lp <= 0.0 && lp.is_finite()));
    }
    // Sampled outputs differ (the grammar leaves choices), and a forced token has log-prob 0.
    let texts: Vec<String> = out[0].iter().map(text).collect();
    assert!(texts.iter().any(|t| t != &texts[0]), "{texts:?}");
    assert!(out[0].iter().flat_map(|g| &g.logprobs).any(|&lp| lp == 0.0));
    assert!(!grammar.accepts(tok, r#"{"colour": "pink", "count": 1, "ok": true}"#).unwrap());
}

#[test]
fn regex_and_lark_grammars_force_their_shape() {
    let (m, tok, grammars) = model();
    let score = grammars.regex(r"PROCESS_SCORE: (10|[0-9])").unwrap();
    let call = json!({"type": "object", "properties": {"name": {"const": "f"}}, "required": ["name"],
                      "additionalProperties": false});
    let lark = format!("start: \"<tool_call>\\n\" call \"\\n</tool_call>\"\ncall: %json {}", bounded_whitespace(&call));
    let lark = grammars.lark(&lark).unwrap();
    let samples: Vec<SamplingParams> = (0..4).map(|s| params(1.0, 0, 1.0, 40 + s, 0)).collect();
    let reqs = vec![
        request(chat_prompt(tok, "Score it."), 40, samples.clone()),
        request(chat_prompt(tok, "Call f."), 60, samples),
    ];
    let out = generate_batch_constrained(
        m,
        reqs,
        vec![constraints(&score, 4), constraints(&lark, 4)],
        &EngineConfig::default(),
    )
    .unwrap();
    for g in &out[0] {
        let t = text(g);
        let n: u32 = t.strip_prefix("PROCESS_SCORE: ").and_then(|d| d.parse().ok()).unwrap_or_else(|| panic!("{t:?}"));
        assert!(n <= 10);
    }
    for g in &out[1] {
        let t = text(g);
        let inner = t
            .strip_prefix("<tool_call>\n")
            .and_then(|r| r.strip_suffix("\n</tool_call>"))
            .unwrap_or_else(|| panic!("{t:?}"));
        assert_eq!(serde_json::from_str::<Value>(inner).unwrap(), json!({"name": "f"}));
    }
    assert!(grammars.json_schema(&json!({"type": "nonsense"})).is_err());
    assert!(grammars.lark("start: undefined_rule").is_err());
}

#[test]
fn a_free_request_is_bitwise_the_same_next_to_constrained_ones() {
    let (m, tok, grammars) = model();
    let grammar = grammars.json_schema(&bounded_schema()).unwrap();
    let free = || request(chat_prompt(tok, "Tell me about the sea."), 30, vec![params(0.8, 0, 0.95, 3, 3)]);
    let alone = generate_batch(m, vec![free()], &EngineConfig::default()).unwrap().remove(0).remove(0);
    // The same prompt constrained (sharing its prefix blocks) and another prompt, in one batch.
    let reqs = vec![
        request(chat_prompt(tok, "Tell me about the sea."), 30, vec![params(0.8, 0, 0.95, 3, 3)]),
        free(),
        request(chat_prompt(tok, "JSON please"), 30, vec![params(1.0, 0, 1.0, 9, 2); 2]),
    ];
    let cons = vec![constraints(&grammar, 1), Vec::new(), constraints(&grammar, 2)];
    let out = generate_batch_constrained(m, reqs, cons, &EngineConfig::default()).unwrap();
    let bits = |g: &Generation| (g.tokens.clone(), g.logprobs.iter().map(|x| x.to_bits()).collect::<Vec<_>>());
    assert_eq!(bits(&out[1][0]), bits(&alone), "the free request changed next to constrained ones");
    assert_eq!(format!("{:?}", out[1][0].top_logprobs), format!("{:?}", alone.top_logprobs));
    assert_ne!(out[0][0].tokens, alone.tokens, "the constrained twin differs");
}

/// A constraint that fails after its second token.
struct Failing(usize);

impl Constraint for Failing {
    fn allowed(&mut self, _stop: &[u32]) -> anyhow::Result<TokenMask> {
        anyhow::ensure!(self.0 < 2, "no more");
        let (m, _, _) = model();
        Ok(TokenMask::from_ids(mappa::model::Model::config(m).vocab_size, [100, 200, 300]))
    }
    fn commit(&mut self, token: u32) -> anyhow::Result<()> {
        anyhow::ensure!([100, 200, 300].contains(&token), "token {token} outside the mask");
        self.0 += 1;
        Ok(())
    }
}

#[test]
fn a_failing_constraint_ends_its_sequence_alone() {
    let (m, tok, _) = model();
    let model: &dyn mappa::model::Model = m;
    let mut engine = mappa::engine::Engine::new(model, EngineConfig::default()).unwrap();
    let prompt = chat_prompt(tok, "Hello");
    let free = engine.add(request(prompt.clone(), 8, vec![SamplingParams::default()])).unwrap()[0];
    let failing: Vec<Option<Box<dyn Constraint>>> = vec![Some(Box::new(Failing(0)))];
    let bad = engine.add_constrained(request(prompt.clone(), 8, vec![SamplingParams::default()]), failing).unwrap()[0];
    let (mut tokens, mut failed, mut finished) = (Vec::new(), None, None);
    while !engine.is_idle() {
        for e in engine.step().unwrap() {
            match e {
                mappa::engine::Event::Token { seq, id, .. } if seq == bad => tokens.push(id),
                mappa::engine::Event::Failed { seq, error } if seq == bad => failed = Some(error),
                mappa::engine::Event::Finished { seq, generation } if seq == free => finished = Some(generation),
                mappa::engine::Event::Finished { seq, .. } => assert_ne!(seq, bad, "a failed sequence never finishes"),
                _ => {}
            }
        }
        engine.check_invariants().unwrap();
    }
    assert_eq!(tokens.len(), 2, "{tokens:?}");
    assert!(tokens.iter().all(|t| [100, 200, 300].contains(t)));
    assert!(failed.unwrap().contains("no more"));
    assert_eq!(finished.unwrap().tokens.len(), 8);
    // A constraint that cannot start refuses the request.
    let refused: Vec<Option<Box<dyn Constraint>>> = vec![Some(Box::new(Failing(2)))];
    assert!(engine.add_constrained(request(prompt, 8, vec![SamplingParams::default()]), refused).is_err());
}

/// What a local coach would use (module docs of `mappa::constrain`): any reply that ends in a valid score
/// line, and only such a reply.
#[test]
fn a_coach_reply_grammar_ends_in_a_score_line() {
    let (m, tok, grammars) = model();
    let coach = grammars.regex(r"(?s:.{0,2000})\nPROCESS_SCORE: (10|[0-9])").unwrap();
    assert!(coach.accepts(tok, "The code ran and printed 42.\nPROCESS_SCORE: 10").unwrap());
    assert!(coach.accepts(tok, "Two lines.\nStill fine.\nPROCESS_SCORE: 3").unwrap());
    for bad in ["PROCESS_SCORE: 7", "Good.\nPROCESS_SCORE: 11", "Good.\nPROCESS_SCORE: 7 because", "Good."] {
        assert!(!coach.accepts(tok, bad).unwrap(), "{bad:?}");
    }
    // A random model constrained this way stops only after a score line; otherwise the budget cuts it.
    let samples: Vec<SamplingParams> = (0..4).map(|s| params(1.0, 0, 1.0, 70 + s, 0)).collect();
    let out = generate_batch_constrained(
        m,
        vec![request(chat_prompt(tok, "Score."), 30, samples)],
        vec![constraints(&coach, 4)],
        &EngineConfig::default(),
    )
    .unwrap();
    for g in &out[0] {
        let t = text(g);
        match g.finish {
            mappa::engine::FinishReason::Stop => assert!(coach.accepts(tok, &t).unwrap(), "{t:?}"),
            mappa::engine::FinishReason::Length => assert!(g.tokens.len() == 30),
        }
    }
}
