//! Batch-invariant matrix products for inference: y = x W^T (PyTorch's `[out, in]` weights), where every
//! output `y[i, o]` is one fixed computation on the two vectors x_i and W_o alone. It never depends on how
//! many rows x has, where a row sits in a tile, how outputs are split over threads, or which CPU path runs,
//! so a sequence's logits are bitwise the same alone or in any batch, its prompt fed at once or in chunks.
//!
//! The computation (`dot` is its definition): 16 lanes, lane l accumulates `x[k] * w[k]` for k = l, l + 16,
//! ... in order with fused multiply-adds, the last partial chunk padded with zeros; then the lanes are
//! summed by a fixed halving tree (`l[j] + l[j + 8]`, then + 4, + 2, + 1).
//!
//! Speed: both operands are k-contiguous, so the AVX-512 kernel computes a tile of 4 x rows by 4 W rows (16
//! zmm accumulators) in one pass over k, loading each weight once per 4 rows, and reduces the 16 sums
//! together with shuffles into one vector. Output features are split over the rayon threads; each thread
//! walks its W rows 4 at a time and runs a block of x rows (sized to stay in L2) past each 4 while they sit
//! in L1, so a decode step reads the weights once for the whole batch. Without AVX-512 the same
//! computation runs as plain Rust (`f32::mul_add`, compiled for AVX2+FMA where the CPU has them).
use rayon::prelude::*;
#[cfg(target_arch = "x86_64")]
use std::arch::x86_64::*;

/// Lanes of the fixed reduction, and outputs per tile side.
const LANES: usize = 16;
const TILE: usize = 4;

/// A CPU path of the same computation; every path gives bitwise the same result.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kernel {
    /// AVX-512F intrinsics, 4 x 4 tiles.
    Avx512,
    /// The portable code compiled for AVX2 + FMA.
    Fma,
    /// The portable code (`f32::mul_add` is a library call where the CPU lacks FMA).
    Portable,
}

impl Kernel {
    /// Every path, fastest first.
    pub const ALL: [Kernel; 3] = [Kernel::Avx512, Kernel::Fma, Kernel::Portable];

    /// The fastest path this CPU runs.
    pub fn best() -> Kernel {
        Kernel::ALL.into_iter().find(|k| k.runs_here()).unwrap_or(Kernel::Portable)
    }

    /// Whether this CPU has what the path needs (std caches the detection).
    pub fn runs_here(self) -> bool {
        #[cfg(target_arch = "x86_64")]
        return match self {
            Kernel::Avx512 => is_x86_feature_detected!("avx512f"),
            Kernel::Fma => is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma"),
            Kernel::Portable => true,
        };
        #[cfg(not(target_arch = "x86_64"))]
        return self == Kernel::Portable;
    }

    /// The outputs of `rows` (1..=4) x rows (`x`, row-major, `w[0].len()` wide) against 4 W rows: element
    /// `4 r + c` is dot(x_r, w_c); the entries of rows past `rows` are 0.
    fn tile(self, x: &[f32], rows: usize, w: [&[f32]; TILE]) -> [f32; LANES] {
        match self {
            #[cfg(target_arch = "x86_64")]
            // Safety: `linear_on` only runs a path that `runs_here`.
            Kernel::Avx512 => unsafe {
                match rows {
                    1 => tile_avx512::<1>(x, w),
                    2 => tile_avx512::<2>(x, w),
                    3 => tile_avx512::<3>(x, w),
                    _ => tile_avx512::<4>(x, w),
                }
            },
            #[cfg(target_arch = "x86_64")]
            // Safety: as above.
            Kernel::Fma => unsafe { tile_fma(x, rows, w) },
            _ => tile_portable(x, rows, w),
        }
    }
}

/// y = x W^T, or y += x W^T when `accumulate`; x is `[t, inp]`, W `[out, inp]`, y `[t, out]`. Batch-invariant
/// (module docs), on the fastest path this CPU has.
pub fn linear(y: &mut [f32], x: &[f32], w: &[f32], t: usize, inp: usize, out: usize, accumulate: bool) {
    linear_on(Kernel::best(), y, x, w, t, inp, out, accumulate)
}

/// `linear` on a chosen path (tests compare the paths); panics if this CPU cannot run it.
#[allow(clippy::too_many_arguments)] // linear's arguments and the path
pub fn linear_on(
    kernel: Kernel,
    y: &mut [f32],
    x: &[f32],
    w: &[f32],
    t: usize,
    inp: usize,
    out: usize,
    accumulate: bool,
) {
    assert!(kernel.runs_here(), "rowwise: this CPU cannot run the {kernel:?} path");
    assert_eq!(x.len(), t * inp, "rowwise: x has {} values, want {t} x {inp}", x.len());
    assert_eq!(w.len(), out * inp, "rowwise: w has {} values, want {out} x {inp}", w.len());
    assert_eq!(y.len(), t * out, "rowwise: y has {} values, want {t} x {out}", y.len());
    if t == 0 || out == 0 {
        return;
    }
    // An unaligned x makes every 64-byte load of it straddle two cache lines (measured ~20 % slower); the
    // weights are aligned in the arena, so x is copied onto a cache line when it is not.
    let mut aligned = Vec::new();
    let x = match x.as_ptr().align_offset(64) {
        0 => x,
        _ => {
            aligned.resize(x.len() + LANES, 0f32);
            let at = aligned.as_ptr().align_offset(64);
            aligned[at..at + x.len()].copy_from_slice(x);
            &aligned[at..at + x.len()]
        }
    };
    // One share of W's rows per thread, one hand-off each; below 2^16 multiply-adds the hand-off costs more
    // than it saves. A share writes its columns of every row of y in place.
    let shares = if t * inp * out < 1 << 16 { 1 } else { rayon::current_num_threads() };
    let cols = out.div_ceil(shares).next_multiple_of(TILE);
    let starts: Vec<usize> = (0..out).step_by(cols).collect();
    let mut ys: Vec<Vec<&mut [f32]>> = starts.iter().map(|_| Vec::with_capacity(t)).collect();
    for mut row in y.chunks_exact_mut(out) {
        for part in ys.iter_mut() {
            let n = cols.min(row.len());
            let (mine, rest) = std::mem::take(&mut row).split_at_mut(n);
            part.push(mine);
            row = rest;
        }
    }
    ys.into_par_iter().zip(starts).for_each(|(mut part, o)| share(kernel, x, w, inp, o, &mut part, accumulate));
}

/// y_r[c] (+)= dot(x_r, W[o + c]) for the rows y_r of one thread's share, whose columns start at W row `o`.
fn share(kernel: Kernel, x: &[f32], w: &[f32], inp: usize, o: usize, y: &mut [&mut [f32]], accumulate: bool) {
    let (t, n) = (y.len(), y[0].len());
    // x rows per block: about 256 KiB, so a block stays in L2 while W's rows pass over it.
    let block = ((1 << 16) / inp.max(1)).max(TILE).next_multiple_of(TILE);
    for r0 in (0..t).step_by(block) {
        let r1 = t.min(r0 + block);
        for c0 in (0..n).step_by(TILE) {
            // A last tile with fewer than 4 W rows repeats the last one; its outputs are dropped.
            let wr: [&[f32]; TILE] = std::array::from_fn(|c| &w[(o + (c0 + c).min(n - 1)) * inp..][..inp]);
            let m = TILE.min(n - c0);
            for r in (r0..r1).step_by(TILE) {
                let rows = TILE.min(r1 - r);
                let tile = kernel.tile(&x[r * inp..(r + rows) * inp], rows, wr);
                for (yr, v) in y[r..r + rows].iter_mut().zip(tile.chunks_exact(TILE)) {
                    let dst = &mut yr[c0..c0 + m];
                    match accumulate {
                        true => dst.iter_mut().zip(v).for_each(|(a, b)| *a += b),
                        false => dst.copy_from_slice(&v[..m]),
                    }
                }
            }
        }
    }
}

/// The definition: dot(x, w) with 16 FMA lanes over k, a zero-padded last chunk, and the halving tree.
#[inline(always)]
fn dot(x: &[f32], w: &[f32]) -> f32 {
    let mut lanes = [0f32; LANES];
    let (xc, wc) = (x.chunks_exact(LANES), w.chunks_exact(LANES));
    let (xt, wt) = (xc.remainder(), wc.remainder());
    for (a, b) in xc.zip(wc) {
        for l in 0..LANES {
            lanes[l] = a[l].mul_add(b[l], lanes[l]);
        }
    }
    if !xt.is_empty() {
        let (mut a, mut b) = ([0f32; LANES], [0f32; LANES]);
        a[..xt.len()].copy_from_slice(xt);
        b[..wt.len()].copy_from_slice(wt);
        for l in 0..LANES {
            lanes[l] = a[l].mul_add(b[l], lanes[l]);
        }
    }
    let mut n = LANES / 2;
    while n > 0 {
        for j in 0..n {
            lanes[j] += lanes[j + n];
        }
        n /= 2;
    }
    lanes[0]
}

#[inline(always)]
fn tile_portable(x: &[f32], rows: usize, w: [&[f32]; TILE]) -> [f32; LANES] {
    let inp = w[0].len();
    let mut out = [0f32; LANES];
    for (r, xr) in x.chunks_exact(inp).take(rows).enumerate() {
        for (c, wc) in w.iter().enumerate() {
            out[r * TILE + c] = dot(xr, wc);
        }
    }
    out
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
fn tile_fma(x: &[f32], rows: usize, w: [&[f32]; TILE]) -> [f32; LANES] {
    tile_portable(x, rows, w)
}

/// `R` x rows against 4 W rows; accumulator `4 c + r` holds dot(x_r, w_c) (the layout `reduce16` turns
/// into output order).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
fn tile_avx512<const R: usize>(x: &[f32], w: [&[f32]; TILE]) -> [f32; LANES] {
    let inp = w[0].len();
    assert!(x.len() >= R * inp && w.iter().all(|r| r.len() == inp));
    let (xp, wp) = (x.as_ptr(), w.map(<[f32]>::as_ptr));
    let mut acc = [_mm512_setzero_ps(); LANES];
    let mut step = |k: usize, mask: __mmask16| {
        // Safety: lanes of `mask` address k..k + 16 within each row (k + popcount(mask) <= inp, asserted
        // lengths above); masked-off lanes are not read and load as 0.
        unsafe {
            let wv = [0, 1, 2, 3].map(|c| _mm512_maskz_loadu_ps(mask, wp[c].add(k)));
            for r in 0..R {
                let xv = _mm512_maskz_loadu_ps(mask, xp.add(r * inp + k));
                for c in 0..TILE {
                    acc[c * TILE + r] = _mm512_fmadd_ps(xv, wv[c], acc[c * TILE + r]);
                }
            }
        }
    };
    let full = inp - inp % LANES;
    for k in (0..full).step_by(LANES) {
        step(k, !0);
    }
    if full < inp {
        step(full, (1u16 << (inp - full)) - 1);
    }
    let mut out = [0f32; LANES];
    // Safety: `out` has 16 lanes.
    unsafe { _mm512_storeu_ps(out.as_mut_ptr(), reduce16(&acc)) };
    out
}

/// The halving tree of `dot` on 16 accumulators at once: lane `4 i + k` of the result is the sum of the
/// lanes of `a[4 k + i]`. Each stage adds the same pairs as `dot` (first l[j] + l[j + 8], then + 4, + 2, + 1),
/// with shuffles that gather those pairs from two vectors into one.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
fn reduce16(a: &[__m512; LANES]) -> __m512 {
    // Stage 1: 128-bit quarters (q0 + q2, q1 + q3) of two vectors, then stage 2: (first + second) halves
    // of those 8 lanes, both with shuffle_f32x4; stages 3 and 4 the same within each 128-bit lane.
    let q =
        |x: __m512, y: __m512| _mm512_add_ps(_mm512_shuffle_f32x4::<0x44>(x, y), _mm512_shuffle_f32x4::<0xEE>(x, y));
    let h =
        |x: __m512, y: __m512| _mm512_add_ps(_mm512_shuffle_f32x4::<0x88>(x, y), _mm512_shuffle_f32x4::<0xDD>(x, y));
    let e = |x: __m512, y: __m512| _mm512_add_ps(_mm512_shuffle_ps::<0x44>(x, y), _mm512_shuffle_ps::<0xEE>(x, y));
    let o = |x: __m512, y: __m512| _mm512_add_ps(_mm512_shuffle_ps::<0x88>(x, y), _mm512_shuffle_ps::<0xDD>(x, y));
    let b: [__m512; 8] = std::array::from_fn(|p| q(a[2 * p], a[2 * p + 1]));
    let c: [__m512; 4] = std::array::from_fn(|r| h(b[2 * r], b[2 * r + 1]));
    o(e(c[0], c[1]), e(c[2], c[3]))
}
