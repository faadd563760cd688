//! Linear layers: y = x W^T with PyTorch's `[out_features, in_features]` weights, on the `gemm` crate
//! (packed, SIMD microkernels, rayon threads). Row-major everywhere: x is `[t, in]`, y is `[t, out]`.
//!
//! One token at a time (decode) is a matrix-vector product, bound by reading W. The crate's GEMV is
//! single-threaded, so that case splits W's rows over the threads and runs the crate's GEMV on each slice:
//! every core streams its own share of the weights.
use rayon::prelude::*;

/// y = x W^T, or y += x W^T when `accumulate` (used to add a projection straight into the residual stream).
pub fn linear(y: &mut [f32], x: &[f32], w: &[f32], t: usize, inp: usize, out: usize, accumulate: bool) {
    assert_eq!(x.len(), t * inp, "linear: x has {} values, want {t} x {inp}", x.len());
    assert_eq!(w.len(), out * inp, "linear: w has {} values, want {out} x {inp}", w.len());
    assert_eq!(y.len(), t * out, "linear: y has {} values, want {t} x {out}", y.len());
    let threads = rayon::current_num_threads();
    if t == 1 && threads > 1 && out * inp >= 1 << 16 {
        // One slice per thread: more slices measured slower (each is another hand-off), even on the
        // 49152-row LM head.
        let rows = out.div_ceil(threads).next_multiple_of(16);
        y.par_chunks_mut(rows).zip(w.par_chunks(rows * inp)).for_each(|(ys, ws)| {
            gemm_into(ys, x, ws, 1, inp, ys.len(), accumulate, gemm::Parallelism::None)
        });
    } else {
        let par = if t * inp * out < 1 << 16 { gemm::Parallelism::None } else { gemm::Parallelism::Rayon(threads) };
        gemm_into(y, x, w, t, inp, out, accumulate, par);
    }
}

#[allow(clippy::too_many_arguments)]
fn gemm_into(y: &mut [f32], x: &[f32], w: &[f32], t: usize, inp: usize, out: usize, acc: bool, par: gemm::Parallelism) {
    debug_assert!(x.len() == t * inp && w.len() == out * inp && y.len() == t * out);
    // Safety: the three slices have exactly the extents the strides below address (checked by the callers).
    unsafe {
        gemm::gemm(
            t, out, inp,
            y.as_mut_ptr(), 1, out as isize, acc,
            x.as_ptr(), 1, inp as isize,
            // W^T as a [inp, out] matrix: element (i, o) lives at w[o * inp + i].
            w.as_ptr(), inp as isize, 1,
            1.0, 1.0, false, false, false,
            par,
        );
    }
}


