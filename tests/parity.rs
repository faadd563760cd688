//! SmolLM2-135M-Instruct on the CPU backend against transformers' f32 outputs
//! (../shared/data/models/smollm2-135m-instruct-q4_1.reference.json): prompt ids, last-position logits,
//! 32-token greedy continuations and a mean cross-entropy.
mod common;
use mappa::cpu::{ops::logsumexp, Logits};
use mappa::engine::generate;
use mappa::sample::SamplingParams;
use serde_json::Value;

fn ids(v: &Value) -> Vec<u32> {
    v.as_array().expect("id list").iter().map(|x| x.as_u64().expect("id") as u32).collect()
}

#[test]
fn prompts_encode_to_reference_ids() {
    let (_, tok) = common::smollm2();
    for p in common::reference()["prompts"].as_array().unwrap() {
        assert_eq!(tok.encode(p["text"].as_str().unwrap(), false).unwrap(), ids(&p["ids"]), "prompt {:?}", p["text"]);
    }
}

#[test]
fn last_position_logits_match_within_1e_3() {
    let (model, _) = common::smollm2();
    for p in common::reference()["prompts"].as_array().unwrap() {
        let m = &model.model;
        let logits = m.forward(&ids(&p["ids"]), &mut m.new_cache(), Logits::Last).unwrap();
        assert_eq!(logits.len(), 49152);
        let mut order: Vec<usize> = (0..logits.len()).collect();
        order.sort_by(|&a, &b| logits[b].total_cmp(&logits[a]));
        for (rank, e) in p["last_logits_top10"].as_array().unwrap().iter().enumerate() {
            let (id, want) = (e[0].as_u64().unwrap() as usize, e[1].as_f64().unwrap() as f32);
            assert!(
                (logits[id] - want).abs() < 1e-3,
                "{:?}: logit of token {id} is {}, reference {want}",
                p["text"],
                logits[id]
            );
            assert_eq!(order[rank], id, "{:?}: rank {rank} differs", p["text"]);
        }
        let n = logits.len() as f64;
        let mean = logits.iter().map(|&x| x as f64).sum::<f64>() / n;
        let std = (logits.iter().map(|&x| (x as f64 - mean).powi(2)).sum::<f64>() / n).sqrt();
        assert!((mean - p["last_logits_mean"].as_f64().unwrap()).abs() < 1e-3, "mean {mean}");
        assert!((std - p["last_logits_std"].as_f64().unwrap()).abs() < 1e-3, "std {std}");
    }
}

#[test]
fn greedy_continuations_are_identical() {
    let (model, tok) = common::smollm2();
    for p in common::reference()["prompts"].as_array().unwrap() {
        let want = ids(&p["greedy_32_ids"]);
        let g = generate(model, &ids(&p["ids"]), 32, SamplingParams::default(), tok.stop_ids(), |_| Ok(())).unwrap();
        assert_eq!(g.tokens, want, "{:?}: got {:?}", p["text"], tok.decode(&g.tokens, false));
        assert_eq!(g.logprobs.len(), g.tokens.len());
        assert!(g.logprobs.iter().all(|&lp| lp <= 0.0 && lp.is_finite()));
    }
}

#[test]
fn loss_case_matches_within_1e_4() {
    let (model, tok) = common::smollm2();
    let case = &common::reference()["loss_case"];
    let t = tok.encode(case["text"].as_str().unwrap(), false).unwrap();
    assert_eq!(t.len() as u64, case["n_tokens"].as_u64().unwrap());
    let m = &model.model;
    let logits = m.forward(&t, &mut m.new_cache(), Logits::All).unwrap();
    let v = m.config.vocab_size;
    let ce: f64 = (0..t.len() - 1)
        .map(|i| {
            let row = &logits[i * v..][..v];
            (logsumexp(row) - row[t[i + 1] as usize]) as f64
        })
        .sum::<f64>()
        / (t.len() - 1) as f64;
    let want = case["mean_next_token_ce"].as_f64().unwrap();
    assert!((ce - want).abs() < 1e-4, "mean cross-entropy {ce}, reference {want}");
}
