//! The PTX that build.rs compiled from kernels/*.cu, embedded in the binary: one table per target
//! (compute_90 for Hopper, compute_80 for everything else). Empty when the build had no nvcc.
#[cfg(has_cuda_kernels)]
include!(concat!(env!("OUT_DIR"), "/kernels.rs"));
#[cfg(not(has_cuda_kernels))]
pub const PTX_SM90: &[(&str, &str)] = &[];
#[cfg(not(has_cuda_kernels))]
pub const PTX_SM80: &[(&str, &str)] = &[];
#[cfg(not(has_cuda_kernels))]
pub const PTXAS_SM90: &[(&str, &str)] = &[];
#[cfg(not(has_cuda_kernels))]
pub const NVCC_VERSION: &str = "";

pub const BUILT: bool = cfg!(has_cuda_kernels);

/// The PTX of one kernel file (its stem, e.g. "rmsnorm") for a device of compute capability `major`.
pub fn ptx(module: &str, major: i32) -> Option<&'static str> {
    let table = if major >= 9 { PTX_SM90 } else { PTX_SM80 };
    table.iter().find(|(name, _)| *name == module).map(|(_, p)| *p)
}

#[cfg(test)]
mod tests {
    /// build.rs assembled every kernel for sm_90 (CI builds with nvcc, so this runs there) and no kernel
    /// spills: the report names each entry point with zero spill bytes.
    #[test]
    fn every_kernel_assembles_for_sm90_without_spills() {
        assert!(super::BUILT || std::env::var("REQUIRE_CUDA_KERNELS").is_err(), "CI requires the kernels");
        for (module, ptx) in super::PTX_SM90 {
            let report = super::PTXAS_SM90.iter().find(|(m, _)| m == module).map(|(_, r)| *r);
            let report = report.unwrap_or_else(|| panic!("no ptxas report for {module}"));
            for entry in crate::cuda::device::entry_points(ptx) {
                let at =
                    report.find(&format!("'{entry}'")).unwrap_or_else(|| panic!("{entry} missing from the report"));
                let spill = report[at..].lines().find(|l| l.contains("spill stores")).expect("a spill line");
                assert!(spill.contains(" 0 bytes spill stores, 0 bytes spill loads"), "{module}/{entry}: {spill}");
            }
        }
    }
}
