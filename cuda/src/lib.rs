//! # bpftime-cuda: the CUDA driver, at run time
//!
//! What it is: the effectful edge of the GPU backend. It opens the NVIDIA driver when asked
//! (`libcuda.so.1`, through cudarc's dynamic loading: nothing of CUDA is needed to build or to
//! run on a machine without a GPU), loads the PTX that `bpftime-gpu-ptx` emits, and runs a
//! translated program on N threads with its map arena, returning every thread's outcome and
//! the arena afterwards.
//!
//! What it is not: it translates nothing and knows nothing of objects or CUDA applications.
//! A machine without a driver gets [`CudaError::NoDriver`], never a link failure or a panic.

use bpftime_gpu_ptx::state::HostWords;
use bpftime_gpu_ptx::{state, RUN_KERNEL, RUN_OUT_STRIDE};
use cudarc::driver::{CudaContext, LaunchConfig, PushKernelArg};
use cudarc::nvrtc::Ptx;
use std::sync::Arc;

/// Why the GPU could not be used.
#[derive(Debug, thiserror::Error)]
pub enum CudaError {
    /// No driver library on this machine.
    #[error("no NVIDIA driver: {0}")]
    NoDriver(String),
    /// The driver refused something.
    #[error("CUDA: {0}")]
    Driver(String),
}

fn driver(e: impl std::fmt::Debug) -> CudaError {
    CudaError::Driver(format!("{e:?}"))
}

/// Whether the driver library can be loaded (checked before cudarc touches it, since cudarc
/// panics when it cannot find it).
pub fn driver_available() -> Result<(), CudaError> {
    for name in [c"libcuda.so.1", c"libcuda.so"] {
        // SAFETY: dlopen(3) with a NUL-terminated name; the handle is closed at once (cudarc
        // opens its own).
        let h = unsafe { libc::dlopen(name.as_ptr(), libc::RTLD_NOW | libc::RTLD_LOCAL) };
        if !h.is_null() {
            // SAFETY: a handle dlopen just returned.
            unsafe { libc::dlclose(h) };
            return Ok(());
        }
    }
    Err(CudaError::NoDriver("libcuda.so.1 cannot be loaded (no GPU driver on this machine)".into()))
}

/// Runs `f` (cudarc calls) turning a panic into an error.
fn guarded<T>(f: impl FnOnce() -> Result<T, CudaError>) -> Result<T, CudaError> {
    driver_available()?;
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)).unwrap_or_else(|p| {
        let msg = p.downcast_ref::<String>().cloned().or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string())).unwrap_or_default();
        Err(CudaError::Driver(msg))
    })
}

/// A GPU.
pub struct Device {
    /// Dropped by [`Device`]'s own `Drop`, where a panic of cudarc's (a driver without an entry
    /// point it calls to release the context) is contained.
    ctx: std::mem::ManuallyDrop<Arc<CudaContext>>,
}

impl Drop for Device {
    fn drop(&mut self) {
        // SAFETY: the field is taken once, here, and never used after.
        let ctx = unsafe { std::mem::ManuallyDrop::take(&mut self.ctx) };
        let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(move || drop(ctx)));
    }
}

/// What one device is.
#[derive(Clone, Debug)]
pub struct DeviceInfo {
    /// Its name.
    pub name: String,
    /// Streaming multiprocessors.
    pub sms: u32,
    /// Compute capability, e.g. 90.
    pub sm: u32,
}

impl Device {
    /// Opens device `ordinal`.
    pub fn open(ordinal: usize) -> Result<Device, CudaError> {
        guarded(|| Ok(Device { ctx: std::mem::ManuallyDrop::new(CudaContext::new(ordinal).map_err(driver)?) }))
    }

    /// Name, SM count and compute capability.
    pub fn info(&self) -> Result<DeviceInfo, CudaError> {
        use cudarc::driver::sys::CUdevice_attribute as A;
        guarded(|| {
            let attr = |a| self.ctx.attribute(a).map_err(driver);
            Ok(DeviceInfo {
                name: self.ctx.name().map_err(driver)?,
                sms: attr(A::CU_DEVICE_ATTRIBUTE_MULTIPROCESSOR_COUNT)? as u32,
                sm: (attr(A::CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MAJOR)? * 10 + attr(A::CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MINOR)?) as u32,
            })
        })
    }
}

/// What a GPU run gave.
#[derive(Debug)]
pub struct GpuRunResult {
    /// Each thread's outcome (r0 or the fault), as the CPU engines report it.
    pub outcomes: Vec<Result<u64, bpftime_vm::RunError>>,
    /// The arena after the run.
    pub arena: Vec<u8>,
    /// Kernel time (launch to completion), in microseconds.
    pub micros: f64,
    /// Each thread's context and stack bottom addresses (the stack's generic address), so that
    /// a run can be repeated where the device had them (the PTX interpreter can place both).
    pub addresses: Vec<ThreadAddresses>,
}

/// Where one thread of a [`run`] had its context and its stack.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ThreadAddresses {
    /// Address of the thread's copy of the context (0 without a context).
    pub ctx: u64,
    /// Generic address of the bottom of the thread's stack.
    pub stack: u64,
}

/// Runs the [`RUN_KERNEL`] of `ptx` on `threads` threads (blocks of up to 256), each on its
/// own copy of `ctx`, with `arena` as the map arena and `budget` per thread; `host` is what the
/// program learns of the host (`bpftime_runtime::gpu::host_words`).
pub fn run(dev: &Device, ptx: &str, arena: &[u8], ctx: &[u8], threads: u32, budget: u64, host: HostWords) -> Result<GpuRunResult, CudaError> {
    let threads = threads.max(1);
    let per_block = threads.min(256);
    let mut r = run_grid(dev, ptx, arena, ctx, [threads.div_ceil(per_block), 1, 1], [per_block, 1, 1], budget, host)?;
    r.outcomes.truncate(threads as usize);
    Ok(r)
}

/// Runs the [`RUN_KERNEL`] of `ptx` on a `grid` of blocks of `block` threads (x, y, z), each
/// thread on its own copy of `ctx` (outcomes by global thread id), with `arena` as the map
/// arena, `budget` per thread and `host` as in [`run`].
#[allow(clippy::too_many_arguments)]
pub fn run_grid(
    dev: &Device,
    ptx: &str,
    arena: &[u8],
    ctx: &[u8],
    grid: [u32; 3],
    block: [u32; 3],
    budget: u64,
    host: HostWords,
) -> Result<GpuRunResult, CudaError> {
    guarded(|| {
        let stream = dev.ctx.default_stream();
        let module = dev.ctx.load_module(Ptx::from_src(ptx)).map_err(driver)?;
        let f = module.load_function(RUN_KERNEL).map_err(driver)?;
        let (grid, block) = (grid.map(|d| d.max(1)), block.map(|d| d.max(1)));
        let total = grid.iter().chain(&block).map(|&d| d as usize).product::<usize>();
        let threads = total as u32;
        let mut ctxs = Vec::with_capacity(ctx.len() * total);
        for _ in 0..total {
            ctxs.extend_from_slice(ctx);
        }
        let d_ctx = stream.clone_htod(&if ctxs.is_empty() { vec![0u8] } else { ctxs }).map_err(driver)?;
        let d_arena = stream.clone_htod(&if arena.is_empty() { vec![0u8] } else { arena.to_vec() }).map_err(driver)?;
        let d_out = stream.alloc_zeros::<u8>(total * RUN_OUT_STRIDE as usize).map_err(driver)?;
        let (ctx_len, arena_len, pid) = (ctx.len() as u64, arena.len() as u64, std::process::id() as u64 * 0x1_0000_0001);
        let cfg = LaunchConfig { grid_dim: (grid[0], grid[1], grid[2]), block_dim: (block[0], block[1], block[2]), shared_mem_bytes: 0 };
        let start = std::time::Instant::now();
        let mut b = stream.launch_builder(&f);
        let n = threads as u64;
        b.arg(&d_ctx).arg(&ctx_len).arg(&d_arena).arg(&arena_len).arg(&budget).arg(&pid);
        let words = host.words();
        for w in &words {
            b.arg(w);
        }
        b.arg(&d_out).arg(&n);
        // SAFETY: the kernel's parameters are exactly these thirteen u64s (translate.rs), the
        // buffers are as large as it indexes (per-thread context copies and output slots).
        unsafe { b.launch(cfg) }.map_err(driver)?;
        stream.synchronize().map_err(driver)?;
        let micros = start.elapsed().as_secs_f64() * 1e6;
        let out = stream.clone_dtoh(&d_out).map_err(driver)?;
        let arena_after = if arena.is_empty() { vec![] } else { stream.clone_dtoh(&d_arena).map_err(driver)? };
        let rows = || out.chunks_exact(RUN_OUT_STRIDE as usize).take(threads as usize);
        let word = |c: &[u8], at: u32| u64::from_le_bytes(c[8 + at as usize..][..8].try_into().expect("8 bytes"));
        let outcomes = rows().map(|c| state::outcome(&c[8..], u64::from_le_bytes(c[..8].try_into().expect("8 bytes")))).collect();
        let addresses = rows().map(|c| ThreadAddresses { ctx: word(c, state::off::CTX_LO), stack: word(c, state::off::STACK_LO) }).collect();
        Ok(GpuRunResult { outcomes, arena: arena_after, micros, addresses })
    })
}
