//! Runtime start-up and the host side of device memory.
//!
//! [`cuda`] and [`wgpu`] start a runtime only where it can run: CUDA where the driver library
//! loads, wgpu where an adapter is found (looked for first, because cubecl reports a missing
//! adapter by panicking on a thread of its own). [`GpuBackend::start`] then runs one kernel, so
//! a device that cannot run kernels fails at start-up, as an error. `guard` turns a runtime
//! panic during later work into an error naming the backend. Inputs: a device; outputs: the
//! backend, and buffers (uploads of host slices, empty buffers, reads back to the host). No
//! state here beyond the runtime's client; buffers are freed when their last handle drops.

use std::panic::{AssertUnwindSafe, catch_unwind};

use cubecl::prelude::*;
use cubecl::server::Handle;

use crate::GpuBackend;
use dfp_core::{Error, Result};

/// The CUDA backend on device 0.
pub fn cuda() -> Result<GpuBackend<cubecl::cuda::CudaRuntime>> {
    // SAFETY: loads the driver library (dlopen) and reports whether it was found.
    #[allow(unsafe_code)]
    let present = unsafe { cudarc::driver::sys::is_culib_present() };
    if !present {
        return Err(Error::model(
            "cuda",
            "the CUDA driver library (libcuda.so) is not there",
        ));
    }
    GpuBackend::start(&cubecl::cuda::CudaDevice::new(0), "cuda")
}

/// The wgpu backend on the default adapter (`CUBECL_WGPU_DEFAULT_DEVICE` overrides it; with
/// no GPU, a software Vulkan such as Mesa's lavapipe).
pub fn wgpu() -> Result<GpuBackend<cubecl::wgpu::WgpuRuntime>> {
    // cubecl panics on a thread of its own when there is no adapter, which leaves only a
    // closed channel to report: look for one first, so the error says what is missing.
    use cubecl::wgpu::GraphicsApi;
    let api: wgpu::Backends = cubecl::wgpu::AutoGraphicsApi::backend().into();
    let instance = wgpu::Instance::new(wgpu::InstanceDescriptor {
        backends: api,
        ..wgpu::InstanceDescriptor::new_without_display_handle()
    });
    let adapters = cubecl::future::block_on(instance.enumerate_adapters(api));
    if adapters.is_empty() {
        return Err(Error::model(
            "wgpu",
            "no graphics adapter: the Vulkan loader (libvulkan.so.1) or a Vulkan driver is missing \
             (with a GPU, install its driver; without one, Mesa's software Vulkan: \
             apt-get install libvulkan1 mesa-vulkan-drivers)",
        ));
    }
    GpuBackend::start(&cubecl::wgpu::WgpuDevice::DefaultDevice, "wgpu")
}

/// A panic's message.
fn panic_text(p: Box<dyn std::any::Any + Send>) -> String {
    p.downcast_ref::<String>()
        .cloned()
        .or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()))
        .unwrap_or_else(|| "unknown failure".into())
}

impl<R: Runtime> GpuBackend<R> {
    /// Starts the runtime on `device`; a runtime that fails to start is an error.
    pub fn start(device: &R::Device, label: &str) -> Result<Self> {
        let client = catch_unwind(AssertUnwindSafe(|| R::client(device)))
            .map_err(|p| Error::model(label, format!("no device: {}", panic_text(p))))?;
        let backend = GpuBackend {
            client,
            label: label.to_string(),
        };
        // A first launch, so that a device that cannot run kernels fails here.
        backend.guard(|| {
            let h = backend.upload_f32(&[1.0]);
            backend.relu_mask(&h, &h, 1);
            backend.read_f32(h);
        })?;
        Ok(backend)
    }

    /// Runs device work, turning a runtime panic into an error naming the backend.
    pub(crate) fn guard<T>(&self, work: impl FnOnce() -> T) -> Result<T> {
        catch_unwind(AssertUnwindSafe(work))
            .map_err(|p| Error::model(&self.label, format!("device failure: {}", panic_text(p))))
    }

    /// A buffer holding `v` (one zero when `v` is empty: buffers are never empty).
    pub(crate) fn upload_f32(&self, v: &[f32]) -> Handle {
        let v = if v.is_empty() { &[0.0][..] } else { v };
        self.client.create_from_slice(f32::as_bytes(v))
    }

    /// A buffer holding `v` (one zero when `v` is empty).
    pub(crate) fn upload_u32(&self, v: &[u32]) -> Handle {
        let v = if v.is_empty() { &[0][..] } else { v };
        self.client.create_from_slice(u32::as_bytes(v))
    }

    /// An uninitialised buffer of `floats` 4-byte values (at least one).
    pub(crate) fn empty(&self, floats: usize) -> Handle {
        self.client.empty(4 * floats.max(1))
    }

    /// A buffer's values, once the work writing it is done.
    pub(crate) fn read_f32(&self, h: Handle) -> Vec<f32> {
        f32::from_bytes(&self.client.read_one_unchecked(h)).to_vec()
    }

    /// A buffer's values as u32 (the tests read codes back).
    #[cfg(test)]
    pub(crate) fn read_u32(&self, h: Handle) -> Vec<u32> {
        u32::from_bytes(&self.client.read_one_unchecked(h)).to_vec()
    }
}

/// An array argument over a whole handle (its byte size / 4 elements).
pub(crate) fn arg<R: Runtime>(h: &Handle) -> ArrayArg<R> {
    let len = (h.size() / 4) as usize;
    // SAFETY: the length is the handle's own, so the kernel's (checked) indexing stays inside
    // the buffer.
    #[allow(unsafe_code)]
    unsafe {
        ArrayArg::from_raw_parts(h.clone(), len)
    }
}
