//! Matrix products on the `gemm` crate (packed SIMD microkernels, rayon threads) for training: `linear` for
//! layers with PyTorch's `[out_features, in_features]` weights, `matmul` for strided views (attention's QK^T
//! and PV). Inference uses the batch-invariant `rowwise` product instead, whose results do not depend on the
//! number of rows.

/// A read-only `rows x cols` matrix inside a slice: element (r, c) is `data[r * rs + c * cs]`.
#[derive(Clone, Copy)]
pub struct View<'a> {
    pub data: &'a [f32],
    pub rows: usize,
    pub cols: usize,
    pub rs: usize,
    pub cs: usize,
}

impl<'a> View<'a> {
    /// A contiguous row-major matrix.
    pub fn rows(data: &'a [f32], rows: usize, cols: usize) -> View<'a> {
        View { data, rows, cols, rs: cols, cs: 1 }
    }
    /// The transpose, without moving data.
    pub fn t(self) -> View<'a> {
        View { data: self.data, rows: self.cols, cols: self.rows, rs: self.cs, cs: self.rs }
    }
    fn check(&self, what: &str) {
        let last = if self.rows == 0 || self.cols == 0 {
            0
        } else {
            (self.rows - 1) * self.rs + (self.cols - 1) * self.cs + 1
        };
        assert!(
            last <= self.data.len(),
            "matmul: {what} view {}x{} (strides {}, {}) overruns its {} values",
            self.rows,
            self.cols,
            self.rs,
            self.cs,
            self.data.len()
        );
    }
}

/// dst = scale * a b (or dst += when `accumulate`); dst is contiguous row-major `a.rows x b.cols`.
pub fn matmul(dst: &mut [f32], a: View, b: View, scale: f32, accumulate: bool, par: gemm::Parallelism) {
    assert_eq!(a.cols, b.rows, "matmul: inner dimensions {} and {} differ", a.cols, b.rows);
    assert_eq!(dst.len(), a.rows * b.cols, "matmul: dst has {} values, want {} x {}", dst.len(), a.rows, b.cols);
    a.check("left");
    b.check("right");
    // Safety: every index the strides address lies inside its slice (checked above).
    unsafe {
        gemm::gemm(
            a.rows,
            b.cols,
            a.cols,
            dst.as_mut_ptr(),
            1,
            b.cols as isize,
            accumulate,
            a.data.as_ptr(),
            a.cs as isize,
            a.rs as isize,
            b.data.as_ptr(),
            b.cs as isize,
            b.rs as isize,
            1.0,
            scale,
            false,
            false,
            false,
            par,
        );
    }
}

/// The gemm crate's parallelism for a product of `work` multiply-adds: below 2^16 the hand-off to the
/// thread pool costs more than it saves.
pub fn parallelism(work: usize) -> gemm::Parallelism {
    if work < 1 << 16 {
        gemm::Parallelism::None
    } else {
        gemm::Parallelism::Rayon(rayon::current_num_threads())
    }
}

/// y = x W^T, or y += x W^T when `accumulate` (used to add a projection straight into the residual stream).
/// x is `[t, inp]`, W is `[out, inp]`, y is `[t, out]`.
pub fn linear(y: &mut [f32], x: &[f32], w: &[f32], t: usize, inp: usize, out: usize, accumulate: bool) {
    assert_eq!(w.len(), out * inp, "linear: w has {} values, want {out} x {inp}", w.len());
    matmul(y, View::rows(x, t, inp), View::rows(w, out, inp).t(), 1.0, accumulate, parallelism(t * inp * out));
}
