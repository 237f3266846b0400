//! How much memory the device a run uses has: given on the command line, read from CUDA, or unknown.

use crate::device::DeviceSpec;

/// The device memory the plan is checked against: `given` (`--device-memory`) when set, else the CUDA device's
/// total memory when `device` is one and this build has CUDA, else unknown. The CPU's memory is not read: a
/// CPU run is planned against what the user says it may use.
pub fn device_memory(device: DeviceSpec, given: Option<u64>) -> Option<u64> {
    given.or_else(|| match device {
        DeviceSpec::Cpu => None,
        DeviceSpec::Cuda(ordinal) => cuda_total_memory(ordinal),
    })
}

#[cfg(feature = "cuda")]
fn cuda_total_memory(ordinal: usize) -> Option<u64> {
    let device = candle_core::Device::new_cuda(ordinal).ok()?;
    let stream = device.as_cuda_device().ok()?.cuda_stream();
    stream.context().bind_to_thread().ok()?;
    let (_free, total) = candle_core::cuda::cudarc::driver::result::mem_get_info().ok()?;
    Some(total as u64)
}

#[cfg(not(feature = "cuda"))]
fn cuda_total_memory(_ordinal: usize) -> Option<u64> {
    None
}
