//! One CUDA device as the backend uses it: a context, one stream that every launch and copy goes to (so
//! work is ordered without events), every kernel of `kernels::PTX_*` loaded once, and a cuBLASLt handle.
//! The one exception is a CUDA graph's capture, which goes to a model's private twin stream (`Gpu::twin`);
//! the graph then runs on the shared stream.
//!
//! Probing never panics: cudarc's `CudaContext::new` panics when libcuda is missing, so `device` checks for
//! the library first and reports no device instead.
use super::gemm::Blas;
use anyhow::{anyhow, Context, Result};
use cudarc::driver::{
    CudaContext, CudaFunction, CudaSlice, CudaStream, CudaView, DevicePtr, DeviceRepr, LaunchArgs, ValidAsZeroBits,
};
use std::collections::HashMap;
use std::sync::{Arc, OnceLock};

/// A context on device 0, or None when there is no driver, no device, or the driver is too old.
pub fn device() -> Option<Arc<CudaContext>> {
    if !unsafe { cudarc::driver::sys::is_culib_present() } {
        return None;
    }
    std::panic::catch_unwind(|| match CudaContext::device_count() {
        Ok(n) if n > 0 => CudaContext::new(0).ok(),
        _ => None,
    })
    .ok()
    .flatten()
}

pub struct Gpu {
    pub ctx: Arc<CudaContext>,
    pub stream: Arc<CudaStream>,
    pub blas: Blas,
    funcs: HashMap<String, CudaFunction>,
    /// Compute capability (major, minor).
    pub capability: (i32, i32),
}

impl Gpu {
    /// The process's GPU (device 0), set up on first use and shared by every model after; an error says
    /// why there is none (no kernels in this build, no driver, no device).
    pub fn shared() -> Result<Arc<Gpu>> {
        static GPU: OnceLock<std::result::Result<Arc<Gpu>, String>> = OnceLock::new();
        GPU.get_or_init(|| Gpu::new().map(Arc::new).map_err(|e| format!("{e:#}"))).clone().map_err(|e| anyhow!(e))
    }

    fn new() -> Result<Gpu> {
        anyhow::ensure!(
            crate::kernels::BUILT,
            "this build has no CUDA kernels (nvcc was not found when it was compiled)"
        );
        let ctx = device().ok_or_else(|| anyhow!("no CUDA device is visible (no driver, or no GPU)"))?;
        // One stream: every buffer is used in stream order, so cudarc's per-buffer events are not needed.
        unsafe { ctx.disable_event_tracking() };
        let capability = ctx.compute_capability()?;
        let stream = ctx.default_stream();
        let table = if capability.0 >= 9 { crate::kernels::PTX_SM90 } else { crate::kernels::PTX_SM80 };
        let mut funcs = HashMap::new();
        for (module_name, ptx) in table {
            let module = ctx
                .load_module(cudarc::nvrtc::Ptx::from_src(*ptx))
                .with_context(|| format!("loading the PTX of kernels/{module_name}.cu"))?;
            for name in entry_points(ptx) {
                let f = module.load_function(name).with_context(|| format!("kernel {name} of {module_name}.cu"))?;
                funcs.insert(name.to_string(), f);
            }
        }
        // cudarc loads libcublasLt on first use and panics when it cannot find it.
        let blas =
            std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| Blas::new(stream.clone()))).map_err(|_| {
                anyhow!("cannot load cuBLASLt (libcublasLt.so.13): put the CUDA 13 libraries on LD_LIBRARY_PATH")
            })??;
        Ok(Gpu { ctx, stream, blas, funcs, capability })
    }

    /// The same device and kernels on a new stream of its own, with its own cuBLASLt handle and workspace:
    /// where a model captures its CUDA graphs (`cuda::graphs`), so that no other thread's launches on the
    /// shared stream can be caught in a capture. Its workspace is ready when this returns.
    pub fn twin(&self) -> Result<Gpu> {
        let stream = self.ctx.new_stream().context("creating a stream for graph capture")?;
        let blas = Blas::new(stream.clone())?;
        stream.synchronize()?;
        Ok(Gpu { ctx: self.ctx.clone(), stream, blas, funcs: self.funcs.clone(), capability: self.capability })
    }

    /// The device address of a buffer, 0 for none: what a captured CUDA graph holds (`cuda::graphs`).
    pub fn address<T>(&self, b: Option<&CudaSlice<T>>) -> u64 {
        b.map_or(0, |b| b.device_ptr(&self.stream).0)
    }

    /// A launch of kernel `name` on the backend's stream; push its arguments, then `launch`.
    pub fn launch(&self, name: &str) -> Result<LaunchArgs<'_>> {
        let f = self.funcs.get(name).ok_or_else(|| anyhow!("no CUDA kernel named {name} in this build"))?;
        Ok(self.stream.launch_builder(f))
    }

    pub fn upload<T: DeviceRepr>(&self, host: &[T]) -> Result<CudaSlice<T>> {
        Ok(self.stream.clone_htod(host)?)
    }

    pub fn zeros<T: DeviceRepr + ValidAsZeroBits>(&self, n: usize) -> Result<CudaSlice<T>> {
        Ok(self.stream.alloc_zeros(n)?)
    }

    /// A host copy (waits for the stream).
    pub fn download<T: DeviceRepr>(&self, d: &CudaView<T>) -> Result<Vec<T>> {
        Ok(self.stream.clone_dtoh(d)?)
    }

    /// Milliseconds of the work `f` puts on the stream, between two events (benchmarks).
    pub fn time_ms(&self, f: &mut dyn FnMut()) -> Result<f64> {
        let flags = Some(cudarc::driver::sys::CUevent_flags::CU_EVENT_DEFAULT);
        let (a, b) = (self.ctx.new_event(flags)?, self.ctx.new_event(flags)?);
        a.record(&self.stream)?;
        f();
        b.record(&self.stream)?;
        b.synchronize()?;
        Ok(a.elapsed_ms(&b)? as f64)
    }

    /// (free, total) bytes of device memory.
    pub fn memory(&self) -> Result<(usize, usize)> {
        Ok(self.ctx.mem_get_info()?)
    }
}

/// The kernel names a PTX module defines (its `.entry` directives).
pub fn entry_points(ptx: &str) -> impl Iterator<Item = &str> {
    ptx.lines().filter_map(|l| {
        let rest =
            l.trim_start().strip_prefix(".visible .entry ").or_else(|| l.trim_start().strip_prefix(".entry "))?;
        rest.split(['(', ' ']).next()
    })
}

/// Grid size for `n` items of `per_block` each.
pub fn blocks_for(n: usize, per_block: usize) -> u32 {
    n.div_ceil(per_block) as u32
}

#[cfg(test)]
mod tests {
    #[test]
    fn entry_points_are_read_from_ptx() {
        let ptx = ".version 8.0\n.visible .entry rmsnorm_bf16(\n\t.param .u64 a\n)\n.entry helper (\n";
        assert_eq!(super::entry_points(ptx).collect::<Vec<_>>(), ["rmsnorm_bf16", "helper"]);
    }
}
