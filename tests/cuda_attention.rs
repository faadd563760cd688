//! Paged attention on the GPU (`kernels/attention.cu`, launched by `mappa::cuda::attention`) against its CPU
//! twin `mappa::cpu::ops::attention_rows`, on random bf16-representable inputs, block size 16 and shuffled block
//! tables. Every slot of the pool that no row may read (other sequences' spare blocks, positions past a
//! sequence's last row) holds NaN, and `out` starts as NaN: a read out of range or a row left unwritten fails.
//! Without a device each test prints `SKIPPED <name>: ...` and returns.
//!
//! Tolerance: |gpu - cpu| <= 0.01 |cpu| + 0.002. The GPU rounds its output to bf16 once (relative error at
//! most 2^-8 ~ 0.0039 of the value); everything before that is fp32 on both sides, in a different order
//! (online softmax over 32-key tiles and per-split partial sums on the GPU, one max and one sum on the CPU,
//! exp2 of log2-scaled scores vs exp), which moves results by about 1e-6 relative for the lengths here (at most
//! ~4e-4 even if every rounding of a 4097-term sum went the same way). Outputs are weighted means of values of
//! order 1 (a per-dimension offset in [-1, 1] plus noise), so 0.01 relative leaves 2.5x margin over bf16
//! rounding, and 0.002 absolute covers outputs near zero.
mod common;
use common::gpu::{assert_close, download_bf16, gpu_or_skip, random_bf16, upload_bf16};
use cudarc::driver::CudaSlice;
use half::bf16;
use mappa::cuda::attention::{Attention, AttnShape};
use mappa::cuda::Gpu;
use rand::seq::SliceRandom;
use rand::SeedableRng;

const BS: usize = 16;
const REL: f32 = 0.01;
const ABS: f32 = 0.002;

/// One layer's paged K and V (host copies, f32 holding bf16 values or NaN) and the block tables.
struct Pool {
    tables: Vec<Vec<u32>>,
    k: Vec<f32>,
    v: Vec<f32>,
}

/// Block tables for sequences holding `lens[s]` positions: each gets the blocks it needs plus one spare, and
/// three blocks belong to no one; ids are a shuffled permutation, so no table is contiguous.
fn tables(lens: &[usize], seed: u64) -> (Vec<Vec<u32>>, usize) {
    let per: Vec<usize> = lens.iter().map(|&l| l.div_ceil(BS) + 1).collect();
    let blocks = per.iter().sum::<usize>() + 3;
    let mut ids: Vec<u32> = (0..blocks as u32).collect();
    ids.shuffle(&mut rand_chacha::ChaCha8Rng::seed_from_u64(seed));
    let mut at = 0;
    let t = per
        .iter()
        .map(|&n| {
            at += n;
            ids[at - n..at].to_vec()
        })
        .collect();
    (t, blocks)
}

/// A pool over `tables` (`blocks` blocks) where sequence s holds positions 0..lens[s]: keys uniform in [-2, 2),
/// values a per-dimension offset in [-1, 1] plus noise in [-0.5, 0.5), rounded to bf16; every other slot NaN.
fn pool(shape: &AttnShape, lens: &[usize], tables: &[Vec<u32>], blocks: usize, seed: u64) -> Pool {
    let kvd = shape.kv_dim();
    let slots = blocks * BS;
    let (mut k, mut v) = (vec![f32::NAN; slots * kvd], vec![f32::NAN; slots * kvd]);
    let kr = random_bf16(slots * kvd, -2.0, 2.0, seed);
    let vr = random_bf16(slots * kvd, -0.5, 0.5, seed + 1);
    let offset = random_bf16(kvd, -1.0, 1.0, seed + 2);
    for (s, &len) in lens.iter().enumerate() {
        for j in 0..len {
            let slot = tables[s][j / BS] as usize * BS + j % BS;
            for c in slot * kvd..(slot + 1) * kvd {
                k[c] = kr[c];
                v[c] = bf16::from_f32(offset[c % kvd] + vr[c]).to_f32();
            }
        }
    }
    Pool { tables: tables.to_vec(), k, v }
}

fn cpu_attention(shape: &AttnShape, p: &Pool, q: &[f32], rows: &[(usize, usize)]) -> Vec<f32> {
    let kvd = shape.kv_dim();
    let mut want = vec![0f32; rows.len() * shape.q_dim()];
    mappa::cpu::ops::attention_rows(
        &mut want,
        q,
        &p.k,
        &p.v,
        rows,
        [shape.n_heads, shape.n_kv, shape.head_dim],
        |seq, j| (p.tables[seq][j / BS] as usize * BS + j % BS) * kvd,
    );
    want
}

/// The pool on the device.
struct DevPool {
    k: CudaSlice<bf16>,
    v: CudaSlice<bf16>,
}

fn upload_pool(gpu: &Gpu, p: &Pool) -> DevPool {
    DevPool { k: upload_bf16(gpu, &p.k), v: upload_bf16(gpu, &p.v) }
}

/// `att.run` for the planned `rows` into a NaN-filled `out`.
fn gpu_run(gpu: &Gpu, att: &mut Attention, dev: &DevPool, q: &[f32], rows: usize) -> Vec<f32> {
    let qd = upload_bf16(gpu, q);
    let mut out = gpu.upload(&vec![bf16::NAN; rows * att.shape().q_dim()]).unwrap();
    att.run(gpu, &mut out.as_view_mut(), &qd.as_view(), &dev.k.as_view(), &dev.v.as_view()).unwrap();
    download_bf16(gpu, &out)
}

fn table_refs(p: &Pool) -> Vec<&[u32]> {
    p.tables.iter().map(|t| t.as_slice()).collect()
}

/// Plans `rows` over `p`, runs them on the GPU and compares with the CPU.
fn check(gpu: &Gpu, att: &mut Attention, p: &Pool, dev: &DevPool, rows: &[(usize, usize)], seed: u64, what: &str) {
    let shape = att.shape();
    let q = random_bf16(rows.len() * shape.q_dim(), -2.0, 2.0, seed);
    att.plan(gpu, rows, &table_refs(p)).unwrap();
    let got = gpu_run(gpu, att, dev, &q, rows.len());
    let want = cpu_attention(&shape, p, &q, rows);
    assert_close(what, &got, &want, REL, ABS);
}

fn shape(n_heads: usize, n_kv: usize, head_dim: usize) -> AttnShape {
    AttnShape { n_heads, n_kv, head_dim, block_size: BS }
}

#[test]
fn single_sequences_prefill_and_decode_match_cpu() {
    let Some(gpu) = gpu_or_skip("single_sequences_prefill_and_decode_match_cpu") else { return };
    for hd in [64, 128] {
        let s = shape(6, 2, hd);
        for len in [1usize, 7, 129, 4097] {
            let (t, blocks) = tables(&[len], len as u64);
            let p = pool(&s, &[len], &t, blocks, 10 + len as u64);
            let dev = upload_pool(&gpu, &p);
            let mut att = Attention::new(s).unwrap();
            // The whole sequence as one prompt chunk (length 1 is a single row: the decode kernel takes it).
            let rows: Vec<_> = (0..len).map(|p| (0, p)).collect();
            check(&gpu, &mut att, &p, &dev, &rows, 1, &format!("hd {hd} len {len} prefill"));
            assert_eq!(att.planned().unwrap().prefill.is_empty(), len == 1);
            // One decode row at the last position: automatic splits, then 48-key splits (a multiple of no tile:
            // splits start mid-tile), then a single split (the decode kernel writes out itself).
            for split in [None, Some(48), Some(1 << 20)] {
                att.set_split_len(split).unwrap();
                check(
                    &gpu,
                    &mut att,
                    &p,
                    &dev,
                    &[(0, len - 1)],
                    2,
                    &format!("hd {hd} len {len} decode split {split:?}"),
                );
                let plan = att.planned().unwrap();
                assert_eq!((plan.decode.len(), plan.prefill.len()), (1, 0));
                if split == Some(48) {
                    assert_eq!(plan.splits, len.div_ceil(48));
                }
            }
        }
    }
}

/// Decode rows of several lengths and prompt chunks that start mid-sequence, interleaved, in one plan; the plan
/// serves two layers; later steps grow and shrink the batch on the same `Attention`.
#[test]
fn mixed_batch_matches_cpu() {
    let Some(gpu) = gpu_or_skip("mixed_batch_matches_cpu") else { return };
    // (sequence length after this step, rows of this step: the last `n` positions).
    let seqs: [(usize, usize); 8] = [
        (1, 1),    // decode at position 0
        (87, 50),  // chunk 37..87
        (100, 1),  // decode at 99
        (17, 17),  // a whole prompt 0..17
        (2049, 1), // decode at 2048
        (97, 33),  // chunk 64..97, starting at a block boundary
        (16, 1),   // decode at 15, the last slot of a block
        (7, 2),    // chunk 5..7
    ];
    let lens: Vec<usize> = seqs.iter().map(|s| s.0).collect();
    let rows_of = |pick: &[usize]| -> Vec<(usize, usize)> {
        pick.iter().flat_map(|&s| (seqs[s].0 - seqs[s].1..seqs[s].0).map(move |p| (s, p))).collect()
    };
    for (n_heads, n_kv, hd) in [(9, 3, 64), (12, 2, 128)] {
        let s = shape(n_heads, n_kv, hd);
        let (t, blocks) = tables(&lens, 7);
        let layers = [pool(&s, &lens, &t, blocks, 100), pool(&s, &lens, &t, blocks, 200)];
        let dev: Vec<DevPool> = layers.iter().map(|p| upload_pool(&gpu, p)).collect();
        let mut att = Attention::new(s).unwrap();
        let rows = rows_of(&[0, 1, 2, 3, 4, 5, 6, 7]);
        for split in [None, Some(48), Some(1 << 20)] {
            att.set_split_len(split).unwrap();
            att.plan(&gpu, &rows, &table_refs(&layers[0])).unwrap();
            let plan = att.planned().unwrap();
            assert_eq!(plan.decode.len(), 4);
            if split == Some(48) {
                assert_eq!(plan.splits, 2049usize.div_ceil(48)); // shorter rows have empty splits
            }
            for (l, (p, d)) in layers.iter().zip(&dev).enumerate() {
                let q = random_bf16(rows.len() * s.q_dim(), -2.0, 2.0, 300 + l as u64);
                let got = gpu_run(&gpu, &mut att, d, &q, rows.len());
                let want = cpu_attention(&s, p, &q, &rows);
                assert_close(&format!("{n_heads}/{n_kv} hd {hd} split {split:?} layer {l}"), &got, &want, REL, ABS);
            }
        }
        // Later steps on the same buffers: a smaller batch, a single long decode row, everything again.
        att.set_split_len(None).unwrap();
        for (step, pick) in [vec![6, 1], vec![4], vec![7, 6, 5, 4, 3, 2, 1, 0]].iter().enumerate() {
            let rows = rows_of(pick);
            check(
                &gpu,
                &mut att,
                &layers[1],
                &dev[1],
                &rows,
                400 + step as u64,
                &format!("{n_heads}/{n_kv} step {step}"),
            );
        }
    }
}

/// GQA ratios 1, 3, 7 and 20 (more query heads per kv head than one block holds: head chunks), head sizes 64 and
/// 128, on a small mixed batch.
#[test]
fn gqa_ratios_and_head_dims_match_cpu() {
    let Some(gpu) = gpu_or_skip("gqa_ratios_and_head_dims_match_cpu") else { return };
    let lens = [301, 61, 6];
    let mut rows: Vec<(usize, usize)> = vec![(0, 300)];
    rows.extend((20..61).map(|p| (1, p)));
    rows.push((2, 5));
    for hd in [64, 128] {
        for n_heads in [2, 6, 14, 40] {
            let s = shape(n_heads, 2, hd);
            let (t, blocks) = tables(&lens, n_heads as u64);
            let p = pool(&s, &lens, &t, blocks, 500 + n_heads as u64);
            let dev = upload_pool(&gpu, &p);
            let mut att = Attention::new(s).unwrap();
            for split in [None, Some(64)] {
                att.set_split_len(split).unwrap();
                check(&gpu, &mut att, &p, &dev, &rows, 600, &format!("{n_heads}/2 hd {hd} split {split:?}"));
            }
        }
    }
}

/// Inputs that do not fit the plan are errors, not crashes.
#[test]
fn run_rejects_inputs_that_do_not_fit() {
    let Some(gpu) = gpu_or_skip("run_rejects_inputs_that_do_not_fit") else { return };
    let s = shape(6, 2, 64);
    let (t, blocks) = tables(&[40], 1);
    let p = pool(&s, &[40], &t, blocks, 2);
    let dev = upload_pool(&gpu, &p);
    let mut att = Attention::new(s).unwrap();
    let q = upload_bf16(&gpu, &random_bf16(2 * s.q_dim(), -1.0, 1.0, 3));
    let mut out = gpu.zeros::<bf16>(2 * s.q_dim()).unwrap();
    // Run before any plan.
    assert!(att.run(&gpu, &mut out.as_view_mut(), &q.as_view(), &dev.k.as_view(), &dev.v.as_view()).is_err());
    // A position past the table.
    assert!(att.plan(&gpu, &[(0, t[0].len() * BS)], &table_refs(&p)).is_err());
    // Three rows planned, buffers for two.
    att.plan(&gpu, &[(0, 37), (0, 38), (0, 39)], &table_refs(&p)).unwrap();
    assert!(att.run(&gpu, &mut out.as_view_mut(), &q.as_view(), &dev.k.as_view(), &dev.v.as_view()).is_err());
    // A pool that does not hold the blocks the rows reach.
    att.plan(&gpu, &[(0, 39)], &table_refs(&p)).unwrap();
    let max_block = att.planned().unwrap().max_block as usize;
    let short = (max_block * BS) * s.kv_dim();
    let k_short = dev.k.slice(..short);
    assert!(att.run(&gpu, &mut out.as_view_mut(), &q.as_view(), &k_short, &dev.v.as_view()).is_err());
    // The same call with the whole pool works.
    att.run(&gpu, &mut out.as_view_mut(), &q.as_view(), &dev.k.as_view(), &dev.v.as_view()).unwrap();
}
