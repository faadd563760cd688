//! The PTX that build.rs compiled from kernels/*.cu, embedded in the binary: one table per target
//! (compute_90 for Hopper, compute_80 for everything else). Empty when the build had no nvcc.
#[cfg(has_cuda_kernels)]
include!(concat!(env!("OUT_DIR"), "/kernels.rs"));
#[cfg(not(has_cuda_kernels))]
pub const PTX_SM90: &[(&str, &str)] = &[];
#[cfg(not(has_cuda_kernels))]
pub const PTX_SM80: &[(&str, &str)] = &[];
#[cfg(not(has_cuda_kernels))]
pub const NVCC_VERSION: &str = "";

pub const BUILT: bool = cfg!(has_cuda_kernels);

/// The PTX of one kernel file (its stem, e.g. "rmsnorm") for a device of compute capability `major`.
pub fn ptx(module: &str, major: i32) -> Option<&'static str> {
    let table = if major >= 9 { PTX_SM90 } else { PTX_SM80 };
    table.iter().find(|(name, _)| *name == module).map(|(_, p)| *p)
}
