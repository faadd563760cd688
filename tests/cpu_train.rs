//! The whole-model training pass (`CpuModel::forward_train` / `score` / `backward`) for all three families,
//! beyond the PyTorch fixture (tests/train_reference.rs, llama and qwen2): central finite differences of
//! L = sum_t c_t logp_t on sampled entries of every tensor (qwen3's q/k norm included), recomputation giving
//! the same gradient bit for bit, and packing: a packed batch's gradient is the sum of its sequences' own.
mod common;
use mappa::config::Arch;
use mappa::cpu::CpuModel;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

struct Case {
    tokens: Vec<u32>,
    seq_lens: Vec<usize>,
    positions: Vec<usize>,
    coef: Vec<f32>,
}

fn case(vocab: usize, seq_lens: &[usize], seed: u64) -> Case {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let tokens = (0..seq_lens.iter().sum()).map(|_| rng.random_range(0..vocab as u32)).collect();
    let mut positions = Vec::new();
    let mut off = 0;
    for &len in seq_lens {
        positions.extend(off..off + len - 1);
        off += len;
    }
    let coef = positions.iter().map(|_| rng.random_range(-1.0f32..1.0)).collect();
    Case { tokens, seq_lens: seq_lens.to_vec(), positions, coef }
}

fn loss(m: &CpuModel, c: &Case) -> f64 {
    let lp = m.sequence_logprobs(&c.tokens, &c.seq_lens, &c.positions, 1.0).unwrap();
    lp.iter().zip(&c.coef).map(|(&l, &k)| l as f64 * k as f64).sum()
}

fn grads(m: &CpuModel, c: &Case, recompute: bool) -> Vec<f32> {
    let tape = m.forward_train(&c.tokens, &c.seq_lens, recompute).unwrap();
    let scores = m.score(&tape, &c.positions, 1.0).unwrap();
    let mut g = vec![0f32; m.param_len()];
    m.backward(tape, &scores, &c.coef, &mut g).unwrap();
    g
}

fn finite_differences(arch: Arch) {
    let mut m = CpuModel::new(&common::tiny_model(arch, 11)).unwrap();
    let c = case(m.config.vocab_size, &[9, 1, 5], 3);
    let g = grads(&m, &c, false);
    let mut rng = ChaCha8Rng::seed_from_u64(5);
    let eps = 1e-2f32;
    let mut bad = Vec::new();
    for p in m.params().to_vec() {
        for _ in 0..6 {
            let i = p.range.start + rng.random_range(0..p.range.len());
            let x = m.flat()[i];
            m.flat_mut()[i] = x + eps;
            let up = loss(&m, &c);
            m.flat_mut()[i] = x - eps;
            let down = loss(&m, &c);
            m.flat_mut()[i] = x;
            let fd = (up - down) / (2.0 * eps as f64);
            let an = g[i] as f64;
            if (fd - an).abs() > 3e-3 + 2e-2 * an.abs() {
                bad.push(format!("{}[{}]: finite difference {fd:.5}, analytic {an:.5}", p.name, i - p.range.start));
            }
        }
    }
    assert!(bad.is_empty(), "{arch:?}: {} entries off:\n{}", bad.len(), bad.join("\n"));
    assert!(g.iter().any(|v| v.abs() > 0.1), "{arch:?}: gradient too small to test anything");
}

#[test]
fn llama_matches_finite_differences() {
    finite_differences(Arch::Llama);
}

#[test]
fn qwen2_matches_finite_differences() {
    finite_differences(Arch::Qwen2);
}

#[test]
fn qwen3_matches_finite_differences() {
    finite_differences(Arch::Qwen3);
}

#[test]
fn recomputation_gives_identical_gradients() {
    for arch in [Arch::Llama, Arch::Qwen2, Arch::Qwen3] {
        let m = CpuModel::new(&common::tiny_model(arch, 2)).unwrap();
        let c = case(m.config.vocab_size, &[7, 12], 8);
        assert_eq!(grads(&m, &c, false), grads(&m, &c, true), "{arch:?}");
    }
}

#[test]
fn packed_gradient_is_the_sum_of_each_sequence_alone() {
    let m = CpuModel::new(&common::tiny_model(Arch::Qwen3, 4)).unwrap();
    let c = case(m.config.vocab_size, &[6, 10], 9);
    let packed = grads(&m, &c, false);
    let split = |range: std::ops::Range<usize>, pos: std::ops::Range<usize>, shift: usize| Case {
        tokens: c.tokens[range].to_vec(),
        seq_lens: vec![pos.len() + 1],
        positions: c.positions[pos.clone()].iter().map(|p| p - shift).collect(),
        coef: c.coef[pos].to_vec(),
    };
    let (a, b) = (grads(&m, &split(0..6, 0..5, 0), false), grads(&m, &split(6..16, 5..14, 6), false));
    let worst = packed.iter().zip(a.iter().zip(&b)).fold(0f32, |w, (p, (a, b))| w.max((p - (a + b)).abs()));
    assert!(worst < 1e-5, "packed and separate gradients differ by {worst}");
    // The logits of one sequence do not depend on the other.
    let lp = m.sequence_logprobs(&c.tokens, &c.seq_lens, &c.positions, 1.0).unwrap();
    let s = split(6..16, 5..14, 6);
    let alone = m.sequence_logprobs(&s.tokens, &s.seq_lens, &s.positions, 1.0).unwrap();
    assert!(lp[5..].iter().zip(&alone).all(|(a, b)| (a - b).abs() < 1e-5));
}

#[test]
fn bad_batches_are_errors() {
    let m = CpuModel::new(&common::tiny_model(Arch::Llama, 1)).unwrap();
    assert!(m.forward_train(&[1, 2, 3], &[2], false).is_err(), "lengths not summing to the tokens");
    assert!(m.forward_train(&[1, 2, 999], &[3], false).is_err(), "token outside the vocabulary");
    let tape = m.forward_train(&[1, 2, 3, 4], &[2, 2], false).unwrap();
    let e = m.score(&tape, &[1], 1.0).err().expect("last position of a sequence has no next token");
    assert!(e.to_string().contains("no next token"), "{e}");
    assert!(m.score(&tape, &[4], 1.0).is_err(), "position outside the batch");
}
