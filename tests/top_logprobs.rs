//! Top alternatives with each token's log-prob (`SamplingParams::top_logprobs`, `Model::sequence_top_logprobs`)
//! on the CPU backend: the k most likely tokens of the very distribution the sampled log-prob comes from,
//! sorted, ties by the lower id, the sampled token's log-prob bitwise its own entry; the same through the
//! engine as through the model; scoring a text gives the log-probs `sequence_logprobs` gives, bit for bit,
//! with alternatives that match the full logits. (Batch invariance of the alternatives: tests/batch_invariance.rs.)
mod common;
use mappa::config::Arch;
use mappa::cpu::{CpuBackend, CpuModel, Logits};
use mappa::engine::{generate_batch, EngineConfig, EngineService, Request, Update};
use mappa::model::{Model, Packed};
use mappa::sample::{logprob_and_top, sample, sample_with_top, SamplingParams, MAX_TOP_LOGPROBS};

fn bits(v: &[f32]) -> Vec<u32> {
    v.iter().map(|x| x.to_bits()).collect()
}

/// The k most likely of `logits / t` by brute force: sort every token by (value desc, id asc).
fn brute_top(logits: &[f32], t: f32, k: usize) -> Vec<(u32, f32)> {
    let lse = mappa::cpu::ops::logsumexp(&logits.iter().map(|l| l / t).collect::<Vec<_>>());
    let mut all: Vec<(u32, f32)> = logits.iter().enumerate().map(|(i, &l)| (i as u32, l / t - lse)).collect();
    all.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
    all.truncate(k);
    all
}

#[test]
fn alternatives_are_the_most_likely_tokens_of_the_sampling_distribution() {
    let logits: Vec<f32> = (0..300).map(|i| ((i * 7919) % 101) as f32 / 10.0 - 5.0).collect();
    for (temperature, k) in [(0.0, 5), (1.0, 20), (0.7, 3), (1.5, 1)] {
        for index in 0..20 {
            let p = SamplingParams { temperature, seed: 3, top_logprobs: k, ..SamplingParams::default() };
            let s = sample_with_top(&logits, &p, index);
            assert_eq!((s.id, s.logprob), sample(&logits, &p, index), "the draw does not change");
            let t = if temperature > 0.0 { temperature } else { 1.0 };
            assert_eq!(s.top, brute_top(&logits, t, k), "T {temperature}, k {k}");
            // The logits repeat every 101 ids: ties, which go to the lower id.
            assert!(s.top.windows(2).all(|w| w[0].1 > w[1].1 || (w[0].1 == w[1].1 && w[0].0 < w[1].0)));
            match s.top.iter().find(|a| a.0 == s.id) {
                Some(&(_, lp)) => assert_eq!(lp.to_bits(), s.logprob.to_bits(), "the sampled token's own entry"),
                None => assert!(s.logprob <= s.top[k - 1].1, "a token outside the top k is less likely"),
            }
            if temperature == 0.0 {
                assert_eq!(s.top[0], (s.id, s.logprob), "greedy takes the most likely");
            }
            let (lp, top) = logprob_and_top(&logits, temperature, s.id, k);
            assert_eq!((lp.to_bits(), &top), (s.logprob.to_bits(), &s.top), "the host function of the CUDA path");
        }
    }
    let none = sample_with_top(&logits, &SamplingParams::default(), 0);
    assert!(none.top.is_empty(), "no alternatives unless asked for");
    let small = [0.5f32, 2.0, f32::NAN, 1.0];
    let p = SamplingParams { top_logprobs: 20, ..SamplingParams::default() };
    let top: Vec<u32> = sample_with_top(&small, &p, 0).top.iter().map(|a| a.0).collect();
    assert_eq!(top, [1, 3, 0], "k beyond the vocabulary gives all tokens but NaN ones");
    let too_many = SamplingParams { top_logprobs: MAX_TOP_LOGPROBS + 1, ..SamplingParams::default() };
    let e = too_many.validate().unwrap_err();
    assert!(e.to_string().contains("top_logprobs must be at most 20"), "{e}");
}

#[test]
fn generations_carry_the_alternatives_they_asked_for() {
    let loaded = common::tiny_model(Arch::Llama, 5);
    let model = CpuBackend::new(&loaded).unwrap();
    let with = |seed, k| SamplingParams { temperature: 1.0, seed, top_logprobs: k, ..SamplingParams::default() };
    let req = Request {
        prompt: vec![1, 2, 3, 4],
        max_new_tokens: 12,
        stop_ids: Vec::new(),
        samples: vec![with(1, 4), with(2, 0)],
    };
    let out = generate_batch(&model, vec![req.clone()], &EngineConfig::default()).unwrap().remove(0);
    let (a, b) = (&out[0], &out[1]);
    assert_eq!(a.top_logprobs.len(), a.tokens.len(), "one list per token");
    assert!(b.top_logprobs.is_empty(), "none for the sample that did not ask");
    // The alternatives are those of the logits the token was drawn from: recompute each position's logits.
    let mut context = req.prompt.clone();
    for (i, (&id, top)) in a.tokens.iter().zip(&a.top_logprobs).enumerate() {
        let mut cache = model.model.new_cache();
        let logits = model.model.forward(&context, &mut cache, Logits::Last).unwrap();
        assert_eq!(top, &brute_top(&logits, 1.0, 4), "token {i}");
        if let Some(&(_, lp)) = top.iter().find(|t| t.0 == id) {
            assert_eq!(lp.to_bits(), a.logprobs[i].to_bits(), "token {i}: its own entry");
        }
        context.push(id);
    }

    // The same through the engine thread, streamed with each token.
    let (service, _thread) =
        EngineService::spawn(Box::new(CpuBackend::new(&loaded).unwrap()), EngineConfig::default()).unwrap();
    let mut rx = service.submit(Request { samples: vec![with(1, 4)], ..req }).unwrap().remove(0);
    let mut streamed = Vec::new();
    loop {
        match rx.blocking_recv().expect("an update") {
            Update::Token { id, logprob, top } => streamed.push((id, logprob, top)),
            Update::Done(g) => {
                assert_eq!(g.top_logprobs, a.top_logprobs);
                break;
            }
            Update::Failed(e) => panic!("{e}"),
        }
    }
    let want: Vec<_> =
        a.tokens.iter().zip(&a.logprobs).zip(&a.top_logprobs).map(|((&i, &l), t)| (i, l, t.clone())).collect();
    assert_eq!(streamed, want);
}

#[test]
fn scoring_a_text_gives_its_log_probs_and_alternatives() {
    let loaded = common::tiny_model(Arch::Qwen2, 9);
    let backend = CpuBackend::new(&loaded).unwrap();
    let m: &CpuModel = &backend.model;
    let tokens: Vec<u32> = (0..14).map(|i| (i * 31 + 7) % 67).collect();
    let positions: Vec<usize> = (0..tokens.len() - 1).collect();
    let packed = Packed { tokens: &tokens, seq_lens: &[tokens.len()], positions: &positions };
    for t in [1.0f32, 0.6] {
        let plain = backend.sequence_logprobs(packed, t).unwrap();
        let (logp, top) = backend.sequence_top_logprobs(packed, t, 6).unwrap();
        assert_eq!(bits(&logp), bits(&plain), "the same log-probs as sequence_logprobs");
        assert_eq!(top.len(), positions.len());
        let mut cache = m.new_cache();
        let logits = m.forward(&tokens, &mut cache, Logits::All).unwrap();
        for (p, alts) in top.iter().enumerate() {
            assert_eq!(alts.len(), 6);
            assert!(alts.windows(2).all(|w| w[0].1 >= w[1].1), "sorted: {alts:?}");
            if let Some(&(_, lp)) = alts.iter().find(|a| a.0 == tokens[p + 1]) {
                assert_eq!(lp.to_bits(), logp[p].to_bits(), "position {p}: the target's own entry");
            }
            // Against the inference forward's logits (another GEMM: equal up to f32 rounding).
            let want = brute_top(&logits[p * 67..(p + 1) * 67], t, 6);
            for (got, want) in alts.iter().zip(&want) {
                assert_eq!(got.0, want.0, "position {p}: {alts:?} vs {want:?}");
                assert!((got.1 - want.1).abs() < 1e-5, "position {p}: {alts:?} vs {want:?}");
            }
        }
    }
    let (_, none) = backend.sequence_top_logprobs(packed, 1.0, 0).unwrap();
    assert!(none.iter().all(Vec::is_empty));
    assert!(backend.sequence_top_logprobs(packed, 1.0, MAX_TOP_LOGPROBS + 1).is_err());

    // Through the engine thread: the same numbers, and a one-token text has nothing to score.
    let (service, _thread) =
        EngineService::spawn(Box::new(CpuBackend::new(&loaded).unwrap()), EngineConfig::default()).unwrap();
    let scores = service.score(tokens.clone(), 1.0, 6).unwrap().blocking_recv().unwrap().unwrap();
    let (logp, top) = backend.sequence_top_logprobs(packed, 1.0, 6).unwrap();
    assert_eq!((bits(&scores.logprobs), &scores.top), (bits(&logp), &top));
    let one = service.score(vec![5], 1.0, 6).unwrap().blocking_recv().unwrap().unwrap();
    assert!(one.logprobs.is_empty() && one.top.is_empty());
    let bad = service.score(vec![5, 999], 1.0, 6).unwrap().blocking_recv().unwrap();
    assert!(bad.unwrap_err().contains("outside the vocabulary"));
}
