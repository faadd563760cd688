//! Matrix products through cuBLASLt: y = x W^T (or y += x W^T), x `[t, inp]` bf16, W `[out, inp]` bf16 (the
//! Hugging Face layout, as the CPU's `linear`), y `[t, out]` in bf16 or fp32, fp32 accumulation.
//! CPU twin: `cpu::linear::linear`; test: `tests/cuda_kernels.rs` (`gemm_matches_cpu`).
//!
//! cuBLASLt is column-major: row-major y `[t, out]` is column-major `[out, t]`, so the call is
//! Y^T = W · X^T with W transposed. Writing fp32 straight into the residual stream with beta = 1 fuses the
//! residual add into the product. Split-K algorithms are excluded, so a row's result is the same in any
//! batch (cuBLASLt may still pick a different tile shape per row count; the K order of each sum does not
//! change with it). A plan (descriptors, layouts and the heuristic's algorithm) is made once
//! per shape and reused: a decode step repeats the same few shapes every step.
use anyhow::{ensure, Result};
use cudarc::cublaslt::{result, sys};
use cudarc::driver::{CudaSlice, CudaStream, CudaView, CudaViewMut, DevicePtr, DevicePtrMut, DeviceRepr};
use half::bf16;
use std::collections::HashMap;
use std::ffi::c_void;
use std::sync::{Arc, Mutex};

/// An output element type cuBLASLt can write from bf16 inputs with fp32 compute.
pub trait GemmOut: DeviceRepr {
    const TYPE: sys::cudaDataType;
}
impl GemmOut for bf16 {
    const TYPE: sys::cudaDataType = sys::cudaDataType::CUDA_R_16BF;
}
impl GemmOut for f32 {
    const TYPE: sys::cudaDataType = sys::cudaDataType::CUDA_R_32F;
}

/// The shape of one product: `(t, inp, out, output type)`.
type Key = (usize, usize, usize, sys::cudaDataType);

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
        let (t, inp, out, ty) = key;
        let bf = sys::cudaDataType::CUDA_R_16BF;
        unsafe {
            let desc = result::create_matmul_desc(
                sys::cublasComputeType_t::CUBLAS_COMPUTE_32F,
                sys::cudaDataType::CUDA_R_32F,
            )?;
            let trans: i32 = 1; // CUBLAS_OP_T on A
            result::set_matmul_desc_attribute(
                desc,
                sys::cublasLtMatmulDescAttributes_t::CUBLASLT_MATMUL_DESC_TRANSA,
                &trans as *const i32 as *const c_void,
                std::mem::size_of::<i32>(),
            )?;
            let plan = Plan {
                desc,
                a: result::create_matrix_layout(bf, inp as u64, out as u64, inp as i64)?,
                b: result::create_matrix_layout(bf, inp as u64, t as u64, inp as i64)?,
                c: result::create_matrix_layout(ty, out as u64, t as u64, out as i64)?,
                algo: std::mem::zeroed(),
            };
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
        ensure!(
            x.len() >= t * inp && w.len() >= out * inp && y.len() >= t * out,
            "gemm operands too small for [{t} x {inp}] . [{out} x {inp}]^T"
        );
        if t == 0 {
            return Ok(());
        }
        let key = (t, inp, out, T::TYPE);
        let mut plans = self.plans.lock().map_err(|_| anyhow::anyhow!("a cuBLASLt plan panicked"))?;
        let p = match plans.entry(key) {
            std::collections::hash_map::Entry::Occupied(e) => e.into_mut(),
            std::collections::hash_map::Entry::Vacant(e) => e.insert(self.plan(key)?),
        };
        let (alpha, beta) = (1f32, if accumulate { 1f32 } else { 0f32 });
        let s = &self.stream;
        let (wp, _w) = w.device_ptr(s);
        let (xp, _x) = x.device_ptr(s);
        let (yp, _y) = y.device_ptr_mut(s);
        let (ws, _ws) = self.workspace.device_ptr(s);
        unsafe {
            result::matmul(
                self.handle,
                p.desc,
                &alpha as *const f32 as *const c_void,
                &beta as *const f32 as *const c_void,
                wp as *const c_void,
                p.a,
                xp as *const c_void,
                p.b,
                yp as *const c_void,
                p.c,
                yp as *mut c_void,
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
