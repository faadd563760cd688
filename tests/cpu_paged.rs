//! The CPU backend's batched paged step and its batch-invariant row-wise GEMM: a row's results are bitwise
//! the same whatever else is in the batch, wherever it sits, however many threads run and whichever CPU path
//! computes them; a sequence's logits are bitwise the same alone or in a batch, fed at once or in chunks, and
//! after another sequence forked from it by a block copy; they stay close to the training forward; bad
//! input is an error. On tiny random llama / qwen2 / qwen3 models and on SmolLM2.
mod common;
use mappa::config::Arch;
use mappa::cpu::ops::logsumexp;
use mappa::cpu::paged::CpuKvPool;
use mappa::cpu::rowwise::{self, Kernel};
use mappa::cpu::{CpuBackend, CpuModel, Logits};
use mappa::model::{Model, SampleSpec, StepBatch, StepSeq};
use mappa::sample::SamplingParams;
use rand::{Rng, SeedableRng};
use std::collections::BTreeMap;
use std::sync::OnceLock;

const ARCHS: [Arch; 3] = [Arch::Llama, Arch::Qwen2, Arch::Qwen3];

fn rng(seed: u64) -> rand_chacha::ChaCha8Rng {
    rand_chacha::ChaCha8Rng::seed_from_u64(seed)
}

fn randn(n: usize, seed: u64) -> Vec<f32> {
    let mut r = rng(seed);
    (0..n).map(|_| r.random_range(-1.0f32..1.0)).collect()
}

fn tokens(n: usize, vocab: usize, seed: u64) -> Vec<u32> {
    let mut r = rng(seed);
    (0..n).map(|_| r.random_range(0..vocab as u32)).collect()
}

fn bits(v: &[f32]) -> Vec<u32> {
    v.iter().map(|x| x.to_bits()).collect()
}

fn threads(n: usize) -> rayon::ThreadPool {
    rayon::ThreadPoolBuilder::new().num_threads(n).build().unwrap()
}

fn smollm2() -> &'static CpuModel {
    static M: OnceLock<CpuModel> = OnceLock::new();
    M.get_or_init(|| CpuModel::new(&mappa::loader::load(&common::smollm2_gguf()).expect("load SmolLM2")).unwrap())
}

fn tiny(arch: Arch) -> CpuModel {
    CpuModel::new(&common::tiny_model(arch, 11)).unwrap()
}

// ---- the row-wise GEMM ----

/// (inp, out): ragged ones (inp not a multiple of 16, out not a multiple of the 4-wide tile) and one large
/// enough that two threads split it.
const SHAPES: [(usize, usize); 4] = [(48, 67), (100, 37), (7, 5), (576, 203)];

#[test]
fn rowwise_rows_do_not_depend_on_batch_position_threads_or_path() {
    for (inp, out) in SHAPES {
        let x = randn(40 * inp, 1);
        let w = randn(out * inp, 2);
        // Each row alone, on the portable path, one thread: the reference.
        let alone: Vec<Vec<u32>> = threads(1).install(|| {
            (0..40)
                .map(|i| {
                    let mut y = vec![0f32; out];
                    rowwise::linear_on(Kernel::Portable, &mut y, &x[i * inp..][..inp], &w, 1, inp, out, false);
                    bits(&y)
                })
                .collect()
        });
        for kernel in Kernel::ALL.into_iter().filter(|k| k.runs_here()) {
            for n_threads in [1, 2] {
                for t in [1, 3, 7, 16, 33] {
                    // Batches starting at rows 0 and 5: every row also sits at another place in its tile.
                    for start in [0, 5] {
                        let mut y = vec![0f32; t * out];
                        threads(n_threads).install(|| {
                            rowwise::linear_on(kernel, &mut y, &x[start * inp..][..t * inp], &w, t, inp, out, false)
                        });
                        for (i, row) in y.chunks_exact(out).enumerate() {
                            assert_eq!(
                                bits(row),
                                alone[start + i],
                                "{kernel:?}, {n_threads} threads, {inp}x{out}: row {} of a batch of {t} differs",
                                start + i
                            );
                        }
                    }
                }
            }
        }
    }
}

#[test]
fn rowwise_is_close_to_f64_and_accumulates() {
    for (inp, out) in SHAPES {
        let t = 9;
        let (x, w) = (randn(t * inp, 3), randn(out * inp, 4));
        let mut y = vec![0f32; t * out];
        rowwise::linear(&mut y, &x, &w, t, inp, out, false);
        // The worst-case bound of this summation order: at most inp/16 + 5 roundings (the lane's FMAs, the
        // four tree levels), each of relative size 2^-24, on sum |x_k w_k|.
        for i in 0..t {
            for o in 0..out {
                let (xr, wr) = (&x[i * inp..][..inp], &w[o * inp..][..inp]);
                let exact: f64 = xr.iter().zip(wr).map(|(&a, &b)| a as f64 * b as f64).sum();
                let mag: f64 = xr.iter().zip(wr).map(|(&a, &b)| (a as f64 * b as f64).abs()).sum();
                let bound = (inp / 16 + 5) as f64 * 2f64.powi(-24) * mag;
                let err = (y[i * out + o] as f64 - exact).abs();
                assert!(err <= bound, "{inp}x{out} [{i}, {o}]: error {err:e} above the bound {bound:e}");
            }
        }
        // accumulate adds the same values onto y.
        let base = randn(t * out, 5);
        let mut acc = base.clone();
        rowwise::linear(&mut acc, &x, &w, t, inp, out, true);
        let want: Vec<f32> = base.iter().zip(&y).map(|(a, b)| a + b).collect();
        assert_eq!(bits(&acc), bits(&want), "{inp}x{out}: accumulate");
    }
}

// ---- the paged step ----

fn spec() -> Option<SampleSpec> {
    Some(SampleSpec { params: SamplingParams::default(), index: 0 })
}

/// A sequence to run: its tokens, how many of them are prompt, and how they are fed (chunk sizes, summing
/// to `tokens.len()`). A chunk samples when it reaches the end of the prompt or lies past it.
struct Plan<'a> {
    tokens: &'a [u32],
    prompt: usize,
    chunks: Vec<usize>,
}

/// Runs the plans through one pool of `block_size`-position blocks: step k feeds the k-th chunk of every
/// plan that still has one. Block ids are handed out in a scrambled order. Returns per plan the logits of
/// each sampling chunk, by the position after it.
fn run(m: &CpuModel, block_size: usize, plans: &[Plan]) -> Vec<BTreeMap<usize, Vec<u32>>> {
    let need: Vec<usize> = plans.iter().map(|p| p.tokens.len().div_ceil(block_size)).collect();
    let total: usize = need.iter().sum::<usize>() + 3;
    let mut ids: Vec<u32> = (0..total as u32).map(|i| (i * 7 + 3) % total as u32).collect();
    if total % 7 == 0 {
        ids = (0..total as u32).rev().collect();
    }
    let tables: Vec<Vec<u32>> = need.iter().map(|&n| ids.drain(..n).collect()).collect();
    let mut pool = CpuKvPool::new(&m.config, total, block_size).unwrap();
    let v = m.config.vocab_size;
    let mut out = vec![BTreeMap::new(); plans.len()];
    let mut fed = vec![0; plans.len()];
    for k in 0.. {
        let live: Vec<usize> = (0..plans.len()).filter(|&i| k < plans[i].chunks.len()).collect();
        if live.is_empty() {
            break;
        }
        let seqs = live
            .iter()
            .map(|&i| {
                let (p, pos) = (&plans[i], fed[i]);
                let end = pos + p.chunks[k];
                StepSeq {
                    tokens: &p.tokens[pos..end],
                    pos,
                    block_table: &tables[i],
                    sample: spec().filter(|_| end >= p.prompt),
                    allowed: None,
                }
            })
            .collect::<Vec<_>>();
        let logits = m.forward_paged(&mut pool, &StepBatch { copies: Vec::new(), seqs: seqs.clone() }).unwrap();
        let mut rows = logits.chunks_exact(v);
        for (&i, s) in live.iter().zip(&seqs) {
            fed[i] += s.tokens.len();
            if s.sample.is_some() {
                out[i].insert(fed[i], bits(rows.next().unwrap()));
            }
        }
        assert!(rows.next().is_none());
    }
    out
}

/// Plans for prompts of 1, 7 and 129 tokens, each followed by 3 decoded tokens.
fn three_sequences(vocab: usize) -> Vec<Vec<u32>> {
    [1, 7, 129].iter().enumerate().map(|(i, &n)| tokens(n + 3, vocab, 100 + i as u64)).collect()
}

fn prompt_then_decode(t: &[u32]) -> Plan<'_> {
    Plan { tokens: t, prompt: t.len() - 3, chunks: vec![t.len() - 3, 1, 1, 1] }
}

fn batch_equals_alone(m: &CpuModel, what: &str) {
    let seqs = three_sequences(m.config.vocab_size);
    for block_size in [16, 5] {
        // Alone, one thread; then together on the default pool, in two orders; then with the long prompt
        // fed in chunks while the others decode.
        let alone: Vec<_> = threads(1)
            .install(|| seqs.iter().map(|t| run(m, block_size, &[prompt_then_decode(t)]).remove(0)).collect());
        assert!(alone.iter().all(|a| a.len() == 4));
        let together = run(m, block_size, &seqs.iter().map(|t| prompt_then_decode(t)).collect::<Vec<_>>());
        assert_eq!(together, alone, "{what}, block size {block_size}: a batch differs from each sequence alone");
        let reversed = run(m, block_size, &seqs.iter().rev().map(|t| prompt_then_decode(t)).collect::<Vec<_>>());
        assert!(reversed.iter().rev().eq(alone.iter()), "{what}, block size {block_size}: batch order changed logits");
        let mut staggered: Vec<Plan> = seqs.iter().map(|t| prompt_then_decode(t)).collect();
        staggered[2].chunks = vec![50, 50, 29, 1, 1, 1];
        assert_eq!(
            run(m, block_size, &staggered),
            alone,
            "{what}, block size {block_size}: chunks riding along decodes"
        );
    }
}

fn chunks_equal_once(m: &CpuModel, what: &str) {
    let t = tokens(43, m.config.vocab_size, 7);
    let once = run(m, 16, &[Plan { tokens: &t, prompt: 40, chunks: vec![40, 1, 1, 1] }]).remove(0);
    // Prompt chunks of several sizes (one crossing block edges, one token at a time), and a recompute of
    // prompt plus generated tokens in one pass (what a preempted sequence does).
    let ways = [vec![13, 27, 1, 1, 1], vec![5, 5, 30, 1, 1, 1], vec![16, 16, 8, 1, 1, 1], vec![42, 1], vec![43]];
    let ways = ways.into_iter().chain([vec![1; 43]]);
    for chunks in ways {
        let got = run(m, 5, &[Plan { tokens: &t, prompt: 40, chunks: chunks.clone() }]).remove(0);
        assert!(!got.is_empty());
        for (end, logits) in &got {
            assert_eq!(Some(logits), once.get(end), "{what}: chunks {chunks:?} differ at position {end}");
        }
    }
}

/// log-probs of every next token through the inference path (`forward`, Logits::All, the paged step) against
/// the training forward's: within 1e-4 of max(1, |logp|).
fn close_to_training(m: &CpuModel, what: &str) {
    let n = 40;
    let t = tokens(n, m.config.vocab_size, 9);
    let v = m.config.vocab_size;
    let logits = m.forward(&t, &mut m.new_cache(), Logits::All).unwrap();
    let positions: Vec<usize> = (0..n - 1).collect();
    let train = m.sequence_logprobs(&t, &[n], &positions, 1.0).unwrap();
    for (i, &want) in train.iter().enumerate() {
        let row = &logits[i * v..][..v];
        let got = row[t[i + 1] as usize] - logsumexp(row);
        assert!(
            (got - want).abs() <= 1e-4 * want.abs().max(1.0),
            "{what}: position {i}: log-prob {got}, training {want}"
        );
    }
    // The last row of All is Last, bitwise.
    let last = m.forward(&t, &mut m.new_cache(), Logits::Last).unwrap();
    assert_eq!(bits(&last), bits(&logits[(n - 1) * v..]), "{what}: Logits::Last differs from the last row of All");
}

/// Sequence A (12 prompt tokens, block size 5: its third block is partly filled) forks B: B shares A's first
/// two blocks and gets a copy of the third, into which both then write. Both must match fresh runs alone.
fn fork_by_copy(m: &CpuModel, what: &str) {
    // One token of `t` at `pos`.
    fn seq<'a>(t: &'a [u32], table: &'a [u32], pos: usize) -> StepSeq<'a> {
        StepSeq { tokens: &t[pos..pos + 1], pos, block_table: table, sample: spec(), allowed: None }
    }
    let v = m.config.vocab_size;
    let a = tokens(14, v, 21);
    let mut b = a[..12].to_vec();
    b.extend(tokens(2, v, 22));
    assert_ne!(a[12..], b[12..]);
    let (ta, tb) = ([3u32, 0, 7], [3u32, 0, 9]);
    let mut pool = CpuKvPool::new(&m.config, 10, 5).unwrap();
    let mut step = |copies, seqs| bits(&m.forward_paged(&mut pool, &StepBatch { copies, seqs }).unwrap());
    step(vec![], vec![StepSeq { tokens: &a[..12], pos: 0, block_table: &ta, sample: spec(), allowed: None }]);
    let s13 = step(vec![(7, 9)], vec![seq(&a, &ta, 12), seq(&b, &tb, 12)]);
    let s14 = step(vec![], vec![seq(&b, &tb, 13), seq(&a, &ta, 13)]);
    let alone = |t: &[u32]| run(m, 5, &[Plan { tokens: t, prompt: 12, chunks: vec![12, 1, 1] }]).remove(0);
    let (ra, rb) = (alone(&a), alone(&b));
    assert_eq!(s13[..v], ra[&13][..], "{what}: A after the fork");
    assert_eq!(s13[v..], rb[&13][..], "{what}: B in its copied block");
    assert_eq!(s14[..v], rb[&14][..], "{what}: B after writing into the copy");
    assert_eq!(s14[v..], ra[&14][..], "{what}: A after B wrote into the copy");
}

#[test]
fn tiny_models_batch_equals_alone() {
    ARCHS.iter().for_each(|&a| batch_equals_alone(&tiny(a), &format!("{a:?}")));
}

#[test]
fn tiny_models_chunks_equal_once() {
    ARCHS.iter().for_each(|&a| chunks_equal_once(&tiny(a), &format!("{a:?}")));
}

#[test]
fn tiny_models_are_close_to_training() {
    ARCHS.iter().for_each(|&a| close_to_training(&tiny(a), &format!("{a:?}")));
}

#[test]
fn tiny_models_fork_by_block_copy() {
    ARCHS.iter().for_each(|&a| fork_by_copy(&tiny(a), &format!("{a:?}")));
}

#[test]
fn smollm2_batch_equals_alone() {
    batch_equals_alone(smollm2(), "SmolLM2");
}

#[test]
fn smollm2_chunks_equal_once() {
    chunks_equal_once(smollm2(), "SmolLM2");
}

#[test]
fn smollm2_is_close_to_training() {
    close_to_training(smollm2(), "SmolLM2");
}

#[test]
fn smollm2_fork_by_block_copy() {
    fork_by_copy(smollm2(), "SmolLM2");
}

#[test]
fn step_samples_the_same_tokens_alone_and_batched() {
    let backend = CpuBackend::from_model(tiny(Arch::Qwen2));
    let seqs = three_sequences(67);
    let tables: Vec<Vec<u32>> = vec![vec![0], vec![1], (2..11).collect()];
    let params = SamplingParams { temperature: 0.8, top_k: 0, top_p: 1.0, seed: 5, top_logprobs: 0 };
    let spec = Some(SampleSpec { params, index: 3 });
    let batch = |which: &[usize]| StepBatch {
        copies: Vec::new(),
        seqs: which
            .iter()
            .map(|&i| StepSeq {
                tokens: &seqs[i],
                pos: 0,
                block_table: &tables[i],
                sample: spec.filter(|_| i != 1),
                allowed: None,
            })
            .collect(),
    };
    let mut together = backend.new_kv_pool(11, 16).unwrap();
    let got = backend.step(together.as_mut(), &batch(&[0, 1, 2])).unwrap();
    assert!(got[1].is_none() && got[0].is_some() && got[2].is_some());
    for i in [0, 2] {
        let mut pool = backend.new_kv_pool(11, 16).unwrap();
        assert_eq!(backend.step(pool.as_mut(), &batch(&[i])).unwrap()[0], got[i], "sequence {i}");
    }
}

#[test]
fn bad_input_is_an_error() {
    let m = tiny(Arch::Llama);
    let cfg = &m.config;
    assert!(CpuKvPool::new(cfg, 0, 16).is_err());
    assert!(CpuKvPool::new(cfg, 4, 0).is_err());
    assert!(CpuKvPool::new(cfg, usize::MAX / 64, 16).is_err());
    assert_eq!(CpuKvPool::block_bytes(cfg, 16), 2 * 2 * 16 * 16 * 4);
    let toks = tokens(9, 67, 1);
    let mut pool = CpuKvPool::new(cfg, 4, 4).unwrap();
    let mut try_step = |copies: Vec<(u32, u32)>, tokens: &[u32], pos: usize, table: &[u32]| {
        let seqs = vec![StepSeq { tokens, pos, block_table: table, sample: spec(), allowed: None }];
        m.forward_paged(&mut pool, &StepBatch { copies, seqs }).map_err(|e| format!("{e:#}"))
    };
    assert_eq!(try_step(vec![], &toks, 0, &[0, 1, 2]).unwrap().len(), 67);
    let err = try_step(vec![], &toks, 0, &[0, 1]).unwrap_err();
    assert!(err.contains("block table"), "{err}");
    let err = try_step(vec![], &toks, 0, &[0, 1, 4]).unwrap_err();
    assert!(err.contains("block 4 is outside"), "{err}");
    let err = try_step(vec![(0, 4)], &toks, 0, &[0, 1, 2]).unwrap_err();
    assert!(err.contains("copy"), "{err}");
    let err = try_step(vec![], &[3, 67], 0, &[0]).unwrap_err();
    assert!(err.contains("outside the vocabulary"), "{err}");
    let err = try_step(vec![], &[], 0, &[0]).unwrap_err();
    assert!(err.contains("at least one token"), "{err}");
    let err = try_step(vec![], &toks[..2], 255, &[0; 65]).unwrap_err();
    assert!(err.contains("exceeds"), "{err}");
    let long = tokens(257, 67, 2);
    assert!(m.forward(&long, &mut m.new_cache(), Logits::Last).unwrap_err().to_string().contains("exceeds"));
}
