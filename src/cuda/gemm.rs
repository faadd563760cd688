//! Matrix products through cuBLASLt: y = x W^T (or y += x W^T), x `[t, inp]` bf16, W `[out, inp]` bf16 (the
//! Hugging Face layout, as the CPU's `linear`), y `[t, out]` in bf16 or fp32, fp32 accumulation; and the two
//! products of its backward pass, dx = dy W and dW += dy^T x (dy bf16).
//! CPU twins: `cpu::linear::linear` and `cpu::grad::linear_backward`; tests: `tests/cuda_kernels.rs`
//! (`gemm_matches_cpu`) and `tests/cuda_train.rs` (`gemm_gradients_match_cpu`).
//!
//! cuBLASLt is column-major: a row-major `[r, c]` matrix is a column-major `[c, r]` one, so the forward call
//! is Y^T = W · X^T with W transposed, dx^T = W^T-as-stored · dy^T, and dW^T = X^T · dy with dy transposed. Writing fp32 straight into the residual stream with beta = 1 fuses the
//! residual add into the product. Split-K algorithms are excluded, so a row's result is the same in any
//! batch (cuBLASLt may still pick a different tile shape per row count; the K order of each sum does not
//! change with it). A plan (descriptors, layouts and the heuristic's algorithm) is made once
//! per shape and reused: a decode step repeats the same few shapes every step.
use anyhow::{ensure, Result};
use cudarc::cublaslt::{result, sys};
use cudarc::driver::{
    CudaSlice, CudaStream, CudaView, CudaViewMut, DevicePtr, DevicePtrMut, DeviceRepr, ValidAsZeroBits,
};
use half::bf16;
use std::collections::HashMap;
use std::ffi::c_void;
use std::sync::{Arc, Mutex};

/// An output element type cuBLASLt can write from bf16 inputs with fp32 compute.
pub trait GemmOut: DeviceRepr + ValidAsZeroBits {
    const TYPE: sys::cudaDataType;
}
impl GemmOut for bf16 {
    const TYPE: sys::cudaDataType = sys::cudaDataType::CUDA_R_16BF;
}
impl GemmOut for f32 {
    const TYPE: sys::cudaDataType = sys::cudaDataType::CUDA_R_32F;
}

/// Which product of a linear layer: its forward pass or one of the two gradients.
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq)]
enum Product {
    /// y `[t, out]` = x `[t, inp]` W^T.
    Forward,
    /// dx `[t, inp]` = dy `[t, out]` W.
    DInput,
    /// dW `[out, inp]` = dy^T x.
    DWeight,
}

impl Product {
    /// (rows, cols, leading dimension) of the column-major operands A, B and C of cuBLASLt's C = op(A) op(B),
    /// and whether A or B is transposed. A, B are (W, x), (W, dy) and (x, dy) for the three products.
    #[allow(clippy::type_complexity)]
    fn layouts(self, t: usize, inp: usize, out: usize) -> ([(usize, usize, usize); 3], bool, bool) {
        match self {
            Product::Forward => ([(inp, out, inp), (inp, t, inp), (out, t, out)], true, false),
            Product::DInput => ([(inp, out, inp), (out, t, out), (inp, t, inp)], false, false),
            Product::DWeight => ([(inp, t, inp), (out, t, out), (inp, out, inp)], false, true),
        }
    }
}

/// The shape of one product: `(product, t, inp, out, output type)`.
type Key = (Product, usize, usize, usize, sys::cudaDataType);

struct Plan {
    desc: sys::cublasLtMatmulDesc_t,
    a: sys::cublasLtMatrixLayout_t,
    b: sys::cublasLtMatrixLayout_t,
    c: sys::cublasLtMatrixLayout_t,
    algo: sys::cublasLtMatmulAlgo_t,
}

// The handles are plain descriptors, only read once built.
unsafe impl Send for Plan {}

impl Drop for Plan {
    fn drop(&mut self) {
        unsafe {
            let _ = result::destroy_matrix_layout(self.a);
            let _ = result::destroy_matrix_layout(self.b);
            let _ = result::destroy_matrix_layout(self.c);
            let _ = result::destroy_matmul_desc(self.desc);
        }
    }
}

pub struct Blas {
    handle: sys::cublasLtHandle_t,
    stream: Arc<CudaStream>,
    workspace: CudaSlice<u8>,
    plans: Mutex<HashMap<Key, Plan>>,
}

// The handle is used from one stream, behind `plans`' lock for planning; launches are stream-ordered.
unsafe impl Send for Blas {}
unsafe impl Sync for Blas {}

impl Drop for Blas {
    fn drop(&mut self) {
        self.plans.lock().map(|mut p| p.clear()).ok();
        unsafe {
            let _ = result::destroy_handle(self.handle);
        }
    }
}

/// cuBLASLt's advice for its workspace: 32 MiB on Hopper, 4 MiB before.
fn workspace_bytes(major: i32) -> usize {
    if major >= 9 {
        32 << 20
    } else {
        4 << 20
    }
}

impl Blas {
    pub fn new(stream: Arc<CudaStream>) -> Result<Blas> {
        let (major, _) = stream.context().compute_capability()?;
        let workspace = stream.alloc_zeros::<u8>(workspace_bytes(major))?;
        Ok(Blas { handle: result::create_handle()?, stream, workspace, plans: Mutex::new(HashMap::new()) })
    }

    fn plan(&self, key: Key) -> Result<Plan> {
        let (product, t, inp, out, ty) = key;
        let ([a, b, c], trans_a, trans_b) = product.layouts(t, inp, out);
        let bf = sys::cudaDataType::CUDA_R_16BF;
        unsafe {
            let desc = result::create_matmul_desc(
                sys::cublasComputeType_t::CUBLAS_COMPUTE_32F,
                sys::cudaDataType::CUDA_R_32F,
            )?;
            for (on, attribute) in [
                (trans_a, sys::cublasLtMatmulDescAttributes_t::CUBLASLT_MATMUL_DESC_TRANSA),
                (trans_b, sys::cublasLtMatmulDescAttributes_t::CUBLASLT_MATMUL_DESC_TRANSB),
            ] {
                let op: i32 = on as i32; // CUBLAS_OP_T is 1, CUBLAS_OP_N 0
                result::set_matmul_desc_attribute(
                    desc,
                    attribute,
                    &op as *const i32 as *const c_void,
                    std::mem::size_of::<i32>(),
                )?;
            }
            let layout = |ty, (rows, cols, ld): (usize, usize, usize)| {
                result::create_matrix_layout(ty, rows as u64, cols as u64, ld as i64)
            };
            let plan = Plan { desc, a: layout(bf, a)?, b: layout(bf, b)?, c: layout(ty, c)?, algo: std::mem::zeroed() };
            let pref = result::create_matmul_pref()?;
            let ws = self.workspace.len();
            result::set_matmul_pref_attribute(
                pref,
                sys::cublasLtMatmulPreferenceAttributes_t::CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES,
                &ws as *const usize as *const c_void,
                std::mem::size_of::<usize>(),
            )?;
            // No split-K: each output is one K-ordered fp32 sum whatever the row count, so a row's result
            // does not depend on what else shares its step (batch invariance, as on the CPU).
            let no_reduction: u32 = 0;
            result::set_matmul_pref_attribute(
                pref,
                sys::cublasLtMatmulPreferenceAttributes_t::CUBLASLT_MATMUL_PREF_REDUCTION_SCHEME_MASK,
                &no_reduction as *const u32 as *const c_void,
                std::mem::size_of::<u32>(),
            )?;
            let h = result::get_matmul_algo_heuristic(self.handle, plan.desc, plan.a, plan.b, plan.c, plan.c, pref);
            let _ = result::destroy_matmul_pref(pref);
            Ok(Plan { algo: h?.algo, ..plan })
        }
    }

    /// y = x W^T, or y += x W^T when `accumulate` (module docs for the shapes).
    #[allow(clippy::too_many_arguments)] // the product's operands and shape
    pub fn linear<T: GemmOut>(
        &self,
        y: &mut CudaViewMut<T>,
        x: &CudaView<bf16>,
        w: &CudaView<bf16>,
        t: usize,
        inp: usize,
        out: usize,
        accumulate: bool,
    ) -> Result<()> {
        self.matmul(Product::Forward, y, w, x, t, inp, out, accumulate)
    }

    /// dx = dy W, or dx += dy W when `accumulate`: dy `[t, out]`, W `[out, inp]`, dx `[t, inp]`.
    #[allow(clippy::too_many_arguments)]
    pub fn linear_dx<T: GemmOut>(
        &self,
        dx: &mut CudaViewMut<T>,
        dy: &CudaView<bf16>,
        w: &CudaView<bf16>,
        t: usize,
        inp: usize,
        out: usize,
        accumulate: bool,
    ) -> Result<()> {
        self.matmul(Product::DInput, dx, w, dy, t, inp, out, accumulate)
    }

    /// dW = dy^T x, or dW += dy^T x when `accumulate`: dy `[t, out]`, x `[t, inp]`, dW `[out, inp]`.
    #[allow(clippy::too_many_arguments)]
    pub fn linear_dw<T: GemmOut>(
        &self,
        dw: &mut CudaViewMut<T>,
        dy: &CudaView<bf16>,
        x: &CudaView<bf16>,
        t: usize,
        inp: usize,
        out: usize,
        accumulate: bool,
    ) -> Result<()> {
        self.matmul(Product::DWeight, dw, x, dy, t, inp, out, accumulate)
    }

    /// C = op(A) op(B) (+ C when `accumulate`) for `product`'s layouts, with its plan made on first use.
    #[allow(clippy::too_many_arguments)]
    fn matmul<T: GemmOut>(
        &self,
        product: Product,
        c: &mut CudaViewMut<T>,
        a: &CudaView<bf16>,
        b: &CudaView<bf16>,
        t: usize,
        inp: usize,
        out: usize,
        accumulate: bool,
    ) -> Result<()> {
        // Elements of A, B and C, and the summed dimension.
        let (a_len, b_len, c_len, inner) = match product {
            Product::Forward => (out * inp, t * inp, t * out, inp),
            Product::DInput => (out * inp, t * out, t * inp, out),
            Product::DWeight => (t * inp, t * out, out * inp, t),
        };
        ensure!(
            a.len() >= a_len && b.len() >= b_len && c.len() >= c_len,
            "{product:?} product: operands too small for t {t}, in {inp}, out {out}"
        );
        if c_len == 0 {
            return Ok(());
        }
        if inner == 0 {
            // An empty sum (a gradient over no tokens): zero, or nothing to add.
            if !accumulate {
                self.stream.memset_zeros(&mut c.slice_mut(..c_len))?;
            }
            return Ok(());
        }
        let key = (product, t, inp, out, T::TYPE);
        let mut plans = self.plans.lock().map_err(|_| anyhow::anyhow!("a cuBLASLt plan panicked"))?;
        let p = match plans.entry(key) {
            std::collections::hash_map::Entry::Occupied(e) => e.into_mut(),
            std::collections::hash_map::Entry::Vacant(e) => e.insert(self.plan(key)?),
        };
        let (alpha, beta) = (1f32, if accumulate { 1f32 } else { 0f32 });
        let s = &self.stream;
        let (ap, _a) = a.device_ptr(s);
        let (bp, _b) = b.device_ptr(s);
        let (cp, _c) = c.device_ptr_mut(s);
        let (ws, _ws) = self.workspace.device_ptr(s);
        unsafe {
            result::matmul(
                self.handle,
                p.desc,
                &alpha as *const f32 as *const c_void,
                &beta as *const f32 as *const c_void,
                ap as *const c_void,
                p.a,
                bp as *const c_void,
                p.b,
                cp as *const c_void,
                p.c,
                cp as *mut c_void,
                p.c,
                &p.algo,
                ws as *mut c_void,
                self.workspace.len(),
                s.cu_stream() as *mut _,
            )?;
        }
        Ok(())
    }
}
