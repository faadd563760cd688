//! The CUDA side, as far as it exists yet: probing for a driver and a device without panicking
//! (cudarc's `CudaContext::new` panics when libcuda is missing, so the probe checks for it first).
use std::sync::Arc;

/// A context on device 0, or None when there is no driver, no device, or the driver is too old.
pub fn device() -> Option<Arc<cudarc::driver::CudaContext>> {
    if !unsafe { cudarc::driver::sys::is_culib_present() } {
        return None;
    }
    std::panic::catch_unwind(|| match cudarc::driver::CudaContext::device_count() {
        Ok(n) if n > 0 => cudarc::driver::CudaContext::new(0).ok(),
        _ => None,
    })
    .ok()
    .flatten()
}
