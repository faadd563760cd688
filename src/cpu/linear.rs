//! Linear layers: y = x W^T with PyTorch's `[out_features, in_features]` weights, on the `gemm` crate
//! (packed, SIMD microkernels, rayon threads). Row-major everywhere: x is `[t, in]`, y is `[t, out]`.

/// y = x W^T, or y += x W^T when `accumulate` (used to add a projection straight into the residual stream).
pub fn linear(y: &mut [f32], x: &[f32], w: &[f32], t: usize, inp: usize, out: usize, accumulate: bool) {
    assert_eq!(x.len(), t * inp, "linear: x has {} values, want {t} x {inp}", x.len());
    assert_eq!(w.len(), out * inp, "linear: w has {} values, want {out} x {inp}", w.len());
    assert_eq!(y.len(), t * out, "linear: y has {} values, want {t} x {out}", y.len());
    // Safety: the three slices have exactly the extents the strides below address (asserted above).
    unsafe {
        gemm::gemm(
            t, out, inp,
            y.as_mut_ptr(), 1, out as isize, accumulate,
            x.as_ptr(), 1, inp as isize,
            // W^T as a [inp, out] matrix: element (i, o) lives at w[o * inp + i].
            w.as_ptr(), inp as isize, 1,
            1.0, 1.0, false, false, false,
            parallelism(t * inp * out),
        );
    }
}

fn parallelism(flops: usize) -> gemm::Parallelism {
    // Below ~64k multiply-adds the thread hand-off costs more than it saves.
    if flops < 1 << 16 {
        gemm::Parallelism::None
    } else {
        gemm::Parallelism::Rayon(rayon::current_num_threads())
    }
}
