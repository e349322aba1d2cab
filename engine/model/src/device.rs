//! Where the models run: the CPU backend, or the cubecl GPU backend on CUDA or wgpu (the
//! `dfp-gpu` crate; `dfp_engine::device` picks one). `--device cpu|cuda|wgpu|auto`.

use dfp_core::{Error, Result};

/// Where the models run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Device {
    /// The CPU backend.
    Cpu,
    /// cubecl on CUDA (NVIDIA driver needed; no toolkit).
    Cuda,
    /// cubecl on wgpu: the best adapter (Vulkan, Metal, DX12), or a software one.
    Wgpu,
    /// CUDA when a GPU and its driver are there, else the CPU.
    Auto,
}

impl std::str::FromStr for Device {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self> {
        match s {
            "cpu" => Ok(Device::Cpu),
            "cuda" => Ok(Device::Cuda),
            "wgpu" => Ok(Device::Wgpu),
            "auto" => Ok(Device::Auto),
            other => Err(Error::model(
                "--device",
                format!("{other:?} is not one of cpu, cuda, wgpu, auto"),
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn device_names_are_checked() {
        assert_eq!("auto".parse::<Device>().unwrap(), Device::Auto);
        let err = "tpu".parse::<Device>().unwrap_err().to_string();
        assert!(
            err.contains("tpu") && err.contains("cpu, cuda, wgpu, auto"),
            "{err}"
        );
    }
}
