//! The CPU decoder on tiny random models of each architecture: KV-cache decoding agrees with one full pass,
//! bad input is an error, and the sampler honours its parameters.
mod common;
use mappa::config::Arch;
use mappa::cpu::{CpuModel, Logits};
use mappa::sample::{argmax, sample, SamplingParams};

const ARCHS: [Arch; 3] = [Arch::Llama, Arch::Qwen2, Arch::Qwen3];

#[test]
fn incremental_decoding_matches_a_full_pass() {
    for arch in ARCHS {
        let m = CpuModel::new(&common::tiny_model(arch, 7)).unwrap();
        let toks: Vec<u32> = (0..13).map(|i| (i * 5 + 3) % 67).collect();
        let full = m.forward(&toks, &mut m.new_cache(), Logits::All).unwrap();
        let v = m.config.vocab_size;
        // Prefill 5 tokens, then one at a time, then a chunk of 3: every position's logits must agree.
        let mut cache = m.new_cache();
        let mut got = m.forward(&toks[..5], &mut cache, Logits::All).unwrap();
        for &t in &toks[5..10] {
            got.extend(m.forward(&[t], &mut cache, Logits::Last).unwrap());
        }
        got.extend(m.forward(&toks[10..], &mut cache, Logits::All).unwrap());
        assert_eq!(cache.len(), toks.len());
        assert_eq!(got.len(), full.len());
        let worst = got.iter().zip(&full).map(|(a, b)| (a - b).abs()).fold(0f32, f32::max);
        assert!(worst < 1e-4, "{arch:?}: cached and full logits differ by {worst}");
        assert!(full.iter().all(|x| x.is_finite()));
        // The last row of All is Last (up to the GEMM's blocking, which differs with the row count).
        let last = m.forward(&toks, &mut m.new_cache(), Logits::Last).unwrap();
        assert_eq!(last.len(), v);
        assert!(full[(toks.len() - 1) * v..].iter().zip(&last).all(|(a, b)| (a - b).abs() < 1e-5));
    }
}

#[test]
fn architectures_differ_where_they_should() {
    // Same seed, different families: the extra qwen2 biases / qwen3 norms must change the output.
    let toks = [3u32, 9, 27];
    let out: Vec<Vec<f32>> = ARCHS
        .iter()
        .map(|&a| {
            let m = CpuModel::new(&common::tiny_model(a, 1)).unwrap();
            m.forward(&toks, &mut m.new_cache(), Logits::Last).unwrap()
        })
        .collect();
    assert_ne!(out[0], out[1]);
    assert_ne!(out[1], out[2]);
}

#[test]
fn bad_input_is_an_error() {
    let tiny = common::tiny_model(Arch::Qwen2, 3);
    let m = CpuModel::new(&tiny).unwrap();
    assert!(m
        .forward(&[67], &mut m.new_cache(), Logits::Last)
        .unwrap_err()
        .to_string()
        .contains("outside the vocabulary"));
    assert!(m.forward(&[], &mut m.new_cache(), Logits::Last).is_err());
    let mut missing = common::tiny_model(Arch::Qwen2, 3);
    missing.weights.tensors.remove("model.layers.1.self_attn.k_proj.bias");
    let err = CpuModel::new(&missing).err().expect("missing tensor must fail").to_string();
    assert!(err.contains("model.layers.1.self_attn.k_proj.bias"), "{err}");
}

#[test]
fn sampler_greedy_top_k_and_seeds() {
    let logits: Vec<f32> = (0..50).map(|i| ((i * 37) % 50) as f32 / 10.0).collect();
    let best = argmax(&logits);
    let (id, lp) = sample(&logits, &SamplingParams::default(), 0);
    assert_eq!(id as usize, best);
    assert!((lp - (logits[best] - mappa::cpu::ops::logsumexp(&logits))).abs() < 1e-6);

    // top-k 3 only ever yields the three largest logits.
    let mut top3: Vec<usize> = (0..50).collect();
    top3.sort_by(|&a, &b| logits[b].total_cmp(&logits[a]));
    let top3 = &top3[..3];
    let params = SamplingParams { temperature: 1.5, top_k: 3, top_p: 1.0, seed: 11, top_logprobs: 0 };
    let draws: Vec<u32> = (0..300).map(|i| sample(&logits, &params, i).0).collect();
    assert!(draws.iter().all(|&d| top3.contains(&(d as usize))));
    assert!(top3.iter().all(|t| draws.contains(&(*t as u32))), "all three should appear in 300 draws");

    // The same seed reproduces the same sequence; another seed does not.
    let again: Vec<u32> = (0..300).map(|i| sample(&logits, &params, i).0).collect();
    assert_eq!(draws, again);
    let other_seed = SamplingParams { seed: 12, ..params };
    let other: Vec<u32> = (0..300).map(|i| sample(&logits, &other_seed, i).0).collect();
    assert_ne!(draws, other);

    // A tiny top-p keeps only the most likely token.
    let tiny_p = SamplingParams { temperature: 1.0, top_k: 0, top_p: 1e-6, seed: 5, top_logprobs: 0 };
    assert!((0..50).all(|i| sample(&logits, &tiny_p, i).0 as usize == best));

    // The draws are uniform: their mean over many (seed, index) pairs is 1/2, each decile holds ~1/10.
    let u: Vec<f64> = (0..20_000u64).map(|i| mappa::sample::uniform(i / 100, i % 100)).collect();
    assert!(u.iter().all(|&x| (0.0..1.0).contains(&x)));
    let mean = u.iter().sum::<f64>() / u.len() as f64;
    assert!((mean - 0.5).abs() < 0.01, "mean {mean}");
    for d in 0..10 {
        let n = u.iter().filter(|&&x| (x * 10.0) as usize == d).count();
        assert!((1800..2200).contains(&n), "decile {d}: {n}");
    }
}
