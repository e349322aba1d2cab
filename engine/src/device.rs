//! The backend of a [`Device`]: the CPU backend, or the cubecl backend on CUDA or wgpu when
//! dfp is built with the `gpu` feature (the default). `auto` takes CUDA when a GPU and its
//! driver are there, else the CPU. A device that is not there, or not built in, is an error
//! naming it, never a panic.

pub use dfp_model::Device;
use dfp_model::{Backend, CpuBackend};

use crate::Result;

/// The backend for `device`; `threads` sizes the CPU backend (0: one per core).
pub fn backend(device: Device, threads: usize) -> Result<Box<dyn Backend>> {
    match device {
        Device::Cpu => Ok(Box::new(CpuBackend::new(threads)?)),
        #[cfg(feature = "gpu")]
        Device::Cuda => Ok(Box::new(dfp_gpu::cuda()?)),
        #[cfg(feature = "gpu")]
        Device::Wgpu => Ok(Box::new(dfp_gpu::wgpu()?)),
        #[cfg(feature = "gpu")]
        Device::Auto => match dfp_gpu::cuda() {
            Ok(b) => Ok(Box::new(b)),
            Err(e) => {
                tracing::info!("no CUDA device ({e}); models run on the CPU");
                Ok(Box::new(CpuBackend::new(threads)?))
            }
        },
        #[cfg(not(feature = "gpu"))]
        Device::Cuda | Device::Wgpu => Err(crate::Error::model(
            format!("{device:?}").to_lowercase(),
            "this dfp was built without its gpu feature (cargo build --features gpu)",
        )),
        #[cfg(not(feature = "gpu"))]
        Device::Auto => Ok(Box::new(CpuBackend::new(threads)?)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn auto_never_fails_for_want_of_a_gpu() {
        let b = backend(Device::Auto, 1).unwrap();
        assert!(
            ["cuda", "cpu x1"].contains(&b.name().as_str()),
            "{}",
            b.name()
        );
        assert_eq!(backend(Device::Cpu, 2).unwrap().name(), "cpu x2");
    }
}
