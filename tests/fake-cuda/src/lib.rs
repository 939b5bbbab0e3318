//! A stand-in `libcuda.so.1` for machines without a GPU (a test double, in the spirit of
//! aya's fake syscall layer): the driver API as the CUDA runtime reaches it (`dlsym` of
//! `cuGetProcAddress_v2`, everything else through it), with modules run by
//! `bpftime_gpu_ptx::interp`. One device (sm_75, 4 SMs); contexts current per thread, each
//! with device memory of its own that goes with it (handles and addresses are reused, as a
//! driver reuses them); streams that run everything at once. Kernels are one-dimensional.
//!
//! What it was given is left for the test to read when `BPFTIME_FAKE_CUDA_DIR` names a
//! directory: every loaded PTX text (`module-N.ptx`) and a `log` of loads and launches.
//! `BPFTIME_FAKE_CUDA_REJECT=TEXT` makes it refuse PTX containing TEXT (as a driver refuses
//! PTX its JIT cannot compile), to test fallbacks. `BPFTIME_FAKE_CUDA_ASYNC=1` runs launches,
//! async copies and host functions in stream order at the next synchronisation (or synchronous
//! copy) instead of during their calls, as a GPU runs them after the host has moved on (an async
//! copy from pinned memory reads it then; from pageable memory, at the call).

use bpftime_gpu_ptx::fatbin::{self, EntryKind};
use bpftime_gpu_ptx::interp::{Launch, Machine, Memory, Module};
use bpftime_gpu_ptx::link;
use std::cell::RefCell;
use std::ffi::{c_char, c_int, c_uint, c_void, CStr};
use std::io::Write;
use std::sync::Mutex;

type CuResult = c_int;
type Handle = *mut c_void;

const SUCCESS: CuResult = 0;
const INVALID_VALUE: CuResult = 1;
const INVALID_IMAGE: CuResult = 200;
const INVALID_CONTEXT: CuResult = 201;
const NO_BINARY_FOR_GPU: CuResult = 209;
const INVALID_PTX: CuResult = 218;
const INVALID_HANDLE: CuResult = 400;
const NOT_FOUND: CuResult = 500;
const CONTEXT_IS_DESTROYED: CuResult = 709;
const LAUNCH_FAILED: CuResult = 719;
const NOT_SUPPORTED: CuResult = 801;

/// The compute capability this device reports.
const ARCH: u32 = 75;
/// Its SMs.
const SMS: u32 = 4;

struct LoadedModule {
    machine: Machine,
    module: Module,
    /// Its context's index (handle - 1).
    ctx: usize,
}

/// A context: its device memory, and the host memory registered in it.
#[derive(Default)]
struct Context {
    memory: Memory,
    /// Host memory registered with the device (address, bytes): mirrored into device memory
    /// at the same address for each launch, and what the kernel changed written back after it
    /// (as a GPU reaches mapped host memory, at launch granularity).
    host: Vec<(u64, u64)>,
}

#[derive(Default)]
struct Fake {
    /// Contexts by handle - 1 (None once destroyed, the slot reused). Slot 0 is device 0's
    /// primary context, made when it is retained.
    contexts: Vec<Option<Context>>,
    /// Retains of the primary context not released.
    primary_refs: u32,
    /// Modules by handle - 1 (None once unloaded or their context destroyed, the slot reused).
    modules: Vec<Option<LoadedModule>>,
    /// Modules loaded so far (names the `module-N.ptx` files).
    loads: usize,
    /// (module index, kernel name); a function's handle is its index + 1. A function of a
    /// module gone has index `usize::MAX`.
    functions: Vec<(usize, String)>,
}

thread_local! {
    /// This thread's context stack (handles, the current one last).
    static STACK: RefCell<Vec<usize>> = const { RefCell::new(Vec::new()) };
}

/// The handle of this thread's current context (0: none).
fn current() -> usize {
    STACK.with(|s| s.borrow().last().copied().unwrap_or(0))
}

/// The context of `handle`.
fn context(f: &mut Fake, handle: usize) -> Result<&mut Context, CuResult> {
    if handle == 0 {
        return Err(INVALID_CONTEXT);
    }
    match f.contexts.get_mut(handle - 1) {
        Some(Some(c)) => Ok(c),
        Some(None) => Err(CONTEXT_IS_DESTROYED),
        None => Err(INVALID_CONTEXT),
    }
}

/// Destroys the context at `index`: its memory and modules go (call `drain` first: its work
/// finishes).
fn destroy(f: &mut Fake, index: usize) {
    if let Some(slot) = f.contexts.get_mut(index) {
        *slot = None;
    }
    for (i, m) in f.modules.iter_mut().enumerate() {
        if m.as_ref().is_some_and(|m| m.ctx == index) {
            *m = None;
            forget_functions(&mut f.functions, i);
        }
    }
    log(&format!("context {} destroyed", index + 1));
}

/// Marks the functions of module `index` as gone.
fn forget_functions(functions: &mut [(usize, String)], index: usize) {
    for f in functions.iter_mut().filter(|f| f.0 == index) {
        f.0 = usize::MAX;
    }
}

/// Copies the host's bytes of every registered range into device memory.
fn mirror_in(c: &mut Context) -> Vec<Vec<u8>> {
    let mut snapshots = vec![];
    for &(addr, len) in &c.host {
        // SAFETY: cuMemHostRegister's contract: the range stays mapped while registered.
        let bytes = unsafe { std::slice::from_raw_parts(addr as *const u8, len as usize) }.to_vec();
        let _ = c.memory.write(addr, &bytes);
        snapshots.push(bytes);
    }
    snapshots
}

/// Writes back to the host the bytes of registered ranges the kernel changed.
fn mirror_out(c: &Context, snapshots: &[Vec<u8>]) {
    for (&(addr, len), before) in c.host.iter().zip(snapshots) {
        let Ok(after) = c.memory.read(addr, len) else { continue };
        for (i, (&a, &b)) in after.iter().zip(before).enumerate() {
            if a != b {
                // SAFETY: as in `mirror_in`; a byte the kernel wrote.
                unsafe { (addr as *mut u8).add(i).write_volatile(a) };
            }
        }
    }
}

static FAKE: Mutex<Option<Fake>> = Mutex::new(None);

fn with<R>(f: impl FnOnce(&mut Fake) -> R) -> R {
    let mut g = FAKE.lock().unwrap_or_else(|e| e.into_inner());
    f(g.get_or_insert_with(Fake::default))
}

fn log(line: &str) {
    let Some(dir) = std::env::var_os("BPFTIME_FAKE_CUDA_DIR") else { return };
    if let Ok(mut f) = std::fs::OpenOptions::new().create(true).append(true).open(std::path::Path::new(&dir).join("log")) {
        let _ = writeln!(f, "{line}");
    }
}

/// The PTX of an image: PTX text, or the newest PTX entry this device can run of a fatbin
/// (directly or behind a `__cudaFatBinaryWrapper`).
///
/// # Safety
/// `image` must be one of those forms, readable for the length its header gives.
unsafe fn image_ptx(image: *const c_void) -> Result<String, CuResult> {
    if image.is_null() {
        return Err(INVALID_VALUE);
    }
    // SAFETY: every image starts with 4 readable bytes.
    let magic = unsafe { std::ptr::read_unaligned(image.cast::<u32>()) };
    let fb = match magic {
        0x466243b1 => {
            // SAFETY: { int magic; int version; const void *data; void *filename_or_fatbins }.
            let (version, data, units) = unsafe {
                (
                    std::ptr::read_unaligned(image.cast::<u32>().add(1)),
                    std::ptr::read_unaligned(image.cast::<u8>().add(8).cast::<*const u8>()),
                    std::ptr::read_unaligned(image.cast::<u8>().add(16).cast::<*const *const u8>()),
                )
            };
            // Version 2: device-linked code, with its units' fat binaries (NULL-terminated).
            // This device runs PTX only: the units' PTX JIT-linked, as a driver does for a GPU
            // the linked machine code is not for.
            // SAFETY: the runtime's contract for the array and the fat binaries.
            let linked = unsafe { fatbin_ptx(data) };
            if version == 2 && !units.is_null() && linked == Err(NO_BINARY_FOR_GPU) {
                let mut texts = vec![];
                for i in 0.. {
                    // SAFETY: as above.
                    let unit = unsafe { *units.add(i) };
                    if unit.is_null() {
                        break;
                    }
                    // SAFETY: as above. A unit with machine code only (the device runtime's)
                    // would be linked as it is; this driver does not run it.
                    match unsafe { fatbin_ptx(unit) } {
                        Ok(t) => texts.push(t),
                        Err(NO_BINARY_FOR_GPU) => log("link fatbin without PTX for this device: taken, not run"),
                        Err(e) => return Err(e),
                    }
                }
                log(&format!("link {} units", texts.len()));
                return link(&texts);
            }
            return linked;
        }
        0xBA55ED50 => image.cast::<u8>(),
        0x464c457f => {
            // SAFETY: an ELF file; ours (`linked_image`) carries its PTX text after the header.
            let text = unsafe { CStr::from_ptr(image.cast::<c_char>().add(64)) }.to_bytes();
            return match text.strip_prefix(LINKED_MARK.as_bytes()) {
                Some(_) => String::from_utf8(text.to_vec()).map_err(|_| INVALID_IMAGE),
                None => Err(NO_BINARY_FOR_GPU),
            };
        }
        // SAFETY: otherwise a NUL-terminated PTX text.
        _ => return unsafe { CStr::from_ptr(image.cast()) }.to_str().map(str::to_string).map_err(|_| INVALID_IMAGE),
    };
    // SAFETY: the caller's contract.
    unsafe { fatbin_ptx(fb) }
}

/// The newest PTX this device can run of the fat binary at `fb`.
///
/// # Safety
/// `fb` a fat binary readable for the length its header gives.
unsafe fn fatbin_ptx(fb: *const u8) -> Result<String, CuResult> {
    if fb.is_null() {
        return Err(INVALID_IMAGE);
    }
    // SAFETY: the fatbin header: u32 magic, u16 version, u16 header size, u64 body size.
    let (magic, header, body) = unsafe {
        (std::ptr::read_unaligned(fb.cast::<u32>()), std::ptr::read_unaligned(fb.add(6).cast::<u16>()), std::ptr::read_unaligned(fb.add(8).cast::<u64>()))
    };
    let len = body.checked_add(header as u64).filter(|&n| magic == 0xBA55ED50 && n < 1 << 31).ok_or(INVALID_IMAGE)?;
    // SAFETY: the fatbin is readable for the length its header gives.
    let bytes = unsafe { std::slice::from_raw_parts(fb, len as usize) };
    let f = fatbin::parse(bytes, 0).map_err(|_| INVALID_IMAGE)?;
    let e = f.entries.iter().filter(|e| e.kind == EntryKind::Ptx && e.arch <= ARCH).max_by_key(|e| e.arch).ok_or(NO_BINARY_FOR_GPU)?;
    let text = e.contents(bytes).map_err(|_| INVALID_IMAGE)?;
    String::from_utf8(text).map_err(|_| INVALID_IMAGE)
}

/// PTX units linked into one module text (`BPFTIME_FAKE_CUDA_DIR` gets each unit as
/// `unit-N.ptx`).
fn link(units: &[String]) -> Result<String, CuResult> {
    if let Some(dir) = std::env::var_os("BPFTIME_FAKE_CUDA_DIR") {
        for (i, u) in units.iter().enumerate() {
            let _ = std::fs::write(std::path::Path::new(&dir).join(format!("unit-{i}.ptx")), u);
        }
    }
    let refs: Vec<&str> = units.iter().map(String::as_str).collect();
    link::link_units(&refs).map_err(|e| {
        log(&format!("link failed: {e}"));
        INVALID_PTX
    })
}

/// A `cuLinkCreate` state: the PTX added so far, and the linked image once complete.
#[derive(Default)]
struct LinkState {
    units: Vec<String>,
    linked: Vec<u8>,
}

/// How the text of a linked image starts.
const LINKED_MARK: &str = "// linked by the stand-in driver\n";

/// What `cuLinkComplete` gives: as a driver's cubin, an ELF file (a 64-bit header whose section
/// table offset is the file's end) with a string table of the module's visible variables; the
/// PTX text, NUL-terminated, right after the header.
fn linked_image(text: &str) -> Vec<u8> {
    let mut body = format!("{LINKED_MARK}{text}\0").into_bytes();
    for line in text.lines().map(str::trim).filter(|l| (l.starts_with(".visible ") || l.starts_with(".weak ")) && l.contains(".global ")) {
        let name = line.trim_end_matches(';').split_whitespace().last().unwrap_or("").split('[').next().unwrap_or("");
        body.extend_from_slice(name.as_bytes());
        body.push(0);
    }
    let mut elf = vec![0u8; 64];
    elf[..5].copy_from_slice(b"\x7fELF\x02");
    elf[0x28..0x30].copy_from_slice(&((64 + body.len()) as u64).to_le_bytes());
    elf.extend_from_slice(&body);
    elf
}

/// Loads an image; returns the module handle.
///
/// # Safety
/// As [`image_ptx`].
unsafe fn load(image: *const c_void) -> Result<Handle, CuResult> {
    // SAFETY: the caller's contract.
    let ptx = unsafe { image_ptx(image) }?;
    if let Ok(bad) = std::env::var("BPFTIME_FAKE_CUDA_REJECT") {
        if !bad.is_empty() && ptx.contains(&bad) {
            log("load refused");
            return Err(INVALID_PTX);
        }
    }
    let module = Module::parse(&ptx).map_err(|e| {
        log(&format!("load failed: {e}"));
        INVALID_PTX
    })?;
    let cur = current();
    with(|f| {
        let machine = Machine::new_in(module.clone(), &mut context(f, cur)?.memory);
        let n = f.loads;
        f.loads += 1;
        if let Some(dir) = std::env::var_os("BPFTIME_FAKE_CUDA_DIR") {
            let _ = std::fs::write(std::path::Path::new(&dir).join(format!("module-{n}.ptx")), &ptx);
        }
        log(&format!("load module {n}: {}", module.function_names().join(" ")));
        let loaded = LoadedModule { machine, module, ctx: cur - 1 };
        let slot = match f.modules.iter().position(Option::is_none) {
            Some(i) => {
                f.modules[i] = Some(loaded);
                i
            }
            None => {
                f.modules.push(Some(loaded));
                f.modules.len() - 1
            }
        };
        Ok((slot + 1) as Handle)
    })
}

fn module_index(f: &Fake, m: Handle) -> Result<usize, CuResult> {
    let i = (m as usize).wrapping_sub(1);
    if f.modules.get(i).is_some_and(Option::is_some) {
        Ok(i)
    } else {
        Err(INVALID_HANDLE)
    }
}

fn function(f: &mut Fake, m: Handle, name: *const c_char) -> Result<Handle, CuResult> {
    let mi = module_index(f, m)?;
    // SAFETY: the API takes a NUL-terminated name.
    let name = unsafe { CStr::from_ptr(name) }.to_string_lossy().into_owned();
    f.modules[mi].as_ref().and_then(|m| m.module.kernel_param_sizes(&name)).ok_or(NOT_FOUND)?;
    if let Some(i) = f.functions.iter().position(|(m2, n)| *m2 == mi && *n == name) {
        return Ok((i + 1) as Handle);
    }
    f.functions.push((mi, name));
    Ok(f.functions.len() as Handle)
}

/// The JIT logs of a load with options (cuda.h `CUjit_option`), filled as the driver fills
/// them: on success the info log (`CU_JIT_INFO_LOG_BUFFER` 3, its size 4) says what was loaded,
/// on failure the error log (5, its size 6) says why; each size option is set to the bytes
/// written into its buffer (0 for the other log).
///
/// # Safety
/// `options` and `values` hold `n` entries (or are null with `n` 0); a log buffer is writable
/// for the size its size option gives.
unsafe fn fill_jit_logs(n: c_uint, options: *const c_int, values: *mut *mut c_void, r: Result<Handle, CuResult>) {
    if n == 0 || options.is_null() || values.is_null() {
        return;
    }
    // SAFETY: the caller's contract.
    let (opts, vals) = unsafe { (std::slice::from_raw_parts(options, n as usize), std::slice::from_raw_parts_mut(values, n as usize)) };
    let text = match r {
        Ok(h) => format!("info: module {} loaded for sm_{ARCH}", h as usize),
        Err(e) => format!("error: the PTX was refused (CUDA error {e})"),
    };
    let (log, other) = if r.is_ok() { (3, 5) } else { (5, 3) };
    for (buffer, size, message) in [(log, log + 1, text.as_str()), (other, other + 1, "")] {
        let (Some(b), Some(z)) = (opts.iter().position(|&o| o == buffer), opts.iter().position(|&o| o == size)) else { continue };
        let room = vals[z] as usize;
        let written = if room == 0 { 0 } else { message.len().min(room - 1) + 1 };
        if written > 0 {
            // SAFETY: the caller's contract: the buffer holds `room` bytes.
            unsafe {
                std::ptr::copy_nonoverlapping(message.as_ptr(), vals[b].cast::<u8>(), written - 1);
                vals[b].cast::<u8>().add(written - 1).write(0);
            }
        }
        vals[z] = written as *mut c_void;
    }
}

fn result(r: Result<(), CuResult>) -> CuResult {
    r.err().unwrap_or(SUCCESS)
}

/// Writes `v` through an out-pointer.
///
/// # Safety
/// `p` must be null or writable.
unsafe fn put<T>(p: *mut T, v: T) -> CuResult {
    if p.is_null() {
        return INVALID_VALUE;
    }
    // SAFETY: the caller's contract.
    unsafe { p.write(v) };
    SUCCESS
}

/// Work queued on the (one, in-order) stream while `BPFTIME_FAKE_CUDA_ASYNC` is set: run at the
/// next synchronisation, as a GPU runs launches, async copies and host functions after their
/// calls return (the host goes on meanwhile).
type Work = Box<dyn FnOnce() + Send>;
static QUEUE: Mutex<Vec<Work>> = Mutex::new(Vec::new());
/// Pinned host allocations (address, bytes): an async copy from one reads it when it runs.
static PINNED: Mutex<Vec<(usize, usize)>> = Mutex::new(Vec::new());

fn async_mode() -> bool {
    std::env::var_os("BPFTIME_FAKE_CUDA_ASYNC").is_some()
}

/// Runs `work` now, or queues it in async mode.
fn on_stream(work: impl FnOnce() + Send + 'static) -> CuResult {
    if async_mode() {
        QUEUE.lock().unwrap_or_else(|e| e.into_inner()).push(Box::new(work));
    } else {
        work();
    }
    SUCCESS
}

/// Runs what is queued, in order (a synchronisation, or a synchronous call waiting for it).
fn drain() {
    loop {
        let work: Vec<Work> = std::mem::take(&mut *QUEUE.lock().unwrap_or_else(|e| e.into_inner()));
        if work.is_empty() {
            return;
        }
        for w in work {
            w();
        }
    }
}

#[allow(clippy::too_many_arguments)]
fn launch(func: Handle, grid: [c_uint; 3], block: [c_uint; 3], params: *mut *mut c_void) -> CuResult {
    // The arguments are read when the call is made; the kernel runs in stream order.
    let prepared = with(|f| {
        let Some((mi, name)) = f.functions.get((func as usize).wrapping_sub(1)).cloned() else { return Err(INVALID_HANDLE) };
        let Some(Some(m)) = f.modules.get(mi) else { return Err(INVALID_HANDLE) };
        if m.ctx + 1 != current() {
            return Err(INVALID_CONTEXT);
        }
        let sizes = m.module.kernel_param_sizes(&name).unwrap_or_default();
        let mut args = vec![];
        for (i, &size) in sizes.iter().enumerate() {
            if size > 8 || params.is_null() {
                return Err(NOT_SUPPORTED);
            }
            let mut v = [0u8; 8];
            // SAFETY: cuLaunchKernel's kernelParams: one pointer per parameter to its value.
            unsafe { std::ptr::copy_nonoverlapping((*params.add(i)).cast::<u8>(), v.as_mut_ptr(), size as usize) };
            args.push(u64::from_le_bytes(v));
        }
        Ok((mi, name, args))
    });
    match prepared {
        Ok((mi, name, args)) => on_stream(move || {
            let _ = run_kernel(mi, &name, &args, grid, block);
        }),
        Err(e) => e,
    }
}

fn run_kernel(mi: usize, name: &str, args: &[u64], grid: [c_uint; 3], block: [c_uint; 3]) -> CuResult {
    with(|f| {
        let Fake { contexts, modules, .. } = f;
        // A module unloaded (or its context destroyed) before its launch ran.
        let Some(Some(lm)) = modules.get_mut(mi) else { return INVALID_HANDLE };
        let Some(Some(c)) = contexts.get_mut(lm.ctx) else { return CONTEXT_IS_DESTROYED };
        log(&format!("launch {name} blocks {} threads {}", grid.iter().product::<u32>(), block.iter().product::<u32>()));
        let m = &mut lm.machine;
        // As on a GPU, `%globaltimer` counts the host's CLOCK_REALTIME.
        let mut now = libc::timespec { tv_sec: 0, tv_nsec: 0 };
        // SAFETY: clock_gettime(2) writes one timespec.
        unsafe { libc::clock_gettime(libc::CLOCK_REALTIME, &mut now) };
        m.set_global_timer(now.tv_sec as u64 * 1_000_000_000 + now.tv_nsec as u64);
        let snapshots = mirror_in(c);
        m.memory = std::mem::take(&mut c.memory);
        let r = m.launch(name, args, Launch { grid, block, sms: SMS });
        c.memory = std::mem::take(&mut m.memory);
        mirror_out(c, &snapshots);
        match r {
            Ok(()) => SUCCESS,
            Err(e) => {
                log(&format!("launch failed: {e}"));
                LAUNCH_FAILED
            }
        }
    })
}

macro_rules! api {
    ($(fn $name:ident($($a:ident: $t:ty),*) $body:block)*) => {
        $(
            #[allow(clippy::too_many_arguments, non_snake_case)]
            unsafe extern "C" fn $name($($a: $t),*) -> CuResult {
                std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| $body)).unwrap_or(LAUNCH_FAILED)
            }
        )*
        /// The entry points exported by name, for applications linked against libcuda. As a
        /// real driver's table, `cuGetProcAddress` hands out the functions above (which a
        /// preloaded library defining the same names cannot take the place of).
        pub mod exported {
            use super::*;
            $(
                /// A driver entry point.
                ///
                /// # Safety
                /// The driver API's contract for this entry point (cuda.h).
                #[allow(clippy::too_many_arguments, non_snake_case)]
                #[unsafe(no_mangle)]
                pub unsafe extern "C" fn $name($($a: $t),*) -> CuResult {
                    // SAFETY: the caller's contract, passed on.
                    unsafe { super::$name($($a),*) }
                }
            )*
        }
        /// The entry point for a driver symbol.
        fn entry(name: &[u8]) -> Option<usize> {
            $(
                if name == stringify!($name).as_bytes() {
                    // `BPFTIME_FAKE_CUDA_EXPORTED_TABLE`: as a driver whose table takes the
                    // addresses of its exported functions (which the dynamic linker binds to
                    // a preloaded library's definitions of the same names).
                    if std::env::var_os("BPFTIME_FAKE_CUDA_EXPORTED_TABLE").is_some() {
                        return Some(exported::$name as *const () as usize);
                    }
                    return Some($name as *const () as usize);
                }
            )*
            None
        }
    };
}

type HostFn = unsafe extern "C" fn(*mut c_void);

/// `CUlaunchConfig` as far as the stream.
#[repr(C)]
pub struct LaunchConfig {
    grid: [c_uint; 3],
    block: [c_uint; 3],
    shared: c_uint,
    stream: Handle,
}

// SAFETY (every body below): the pointers are the driver API's out-parameters and buffers,
// which the caller must make valid (cuda.h); `put` checks for null.
api! {
    fn cuInit(_flags: c_uint) { SUCCESS }
    fn cuDeviceGet(d: *mut c_int, ordinal: c_int) { if ordinal != 0 { INVALID_VALUE } else { unsafe { put(d, 0) } } }
    fn cuDeviceGetCount(n: *mut c_int) { unsafe { put(n, 1) } }
    fn cuDeviceGetAttribute(v: *mut c_int, attr: c_int, _dev: c_int) {
        let value = match attr { 16 => SMS as c_int, 75 => (ARCH / 10) as c_int, 76 => (ARCH % 10) as c_int, _ => 0 };
        unsafe { put(v, value) }
    }
    fn cuDevicePrimaryCtxRetain(c: *mut Handle, _dev: c_int) {
        with(|f| {
            if f.contexts.is_empty() {
                f.contexts.push(None);
            }
            if f.contexts[0].is_none() {
                f.contexts[0] = Some(Context::default());
                log("primary context made");
            }
            f.primary_refs += 1;
        });
        unsafe { put(c, 1 as Handle) }
    }
    // The last release destroys the primary context, after its work.
    fn cuDevicePrimaryCtxRelease(_dev: c_int) {
        drain();
        with(|f| {
            f.primary_refs = f.primary_refs.saturating_sub(1);
            if f.primary_refs == 0 && f.contexts.first().is_some_and(Option::is_some) {
                destroy(f, 0);
            }
        });
        SUCCESS
    }
    // Destroys the primary context (its retains stay counted); the next retain makes it again.
    fn cuDevicePrimaryCtxReset(_dev: c_int) {
        drain();
        with(|f| if f.contexts.first().is_some_and(Option::is_some) { destroy(f, 0) });
        SUCCESS
    }
    fn cuDevicePrimaryCtxGetState(_dev: c_int, flags: *mut c_uint, active: *mut c_int) {
        let on = with(|f| f.contexts.first().is_some_and(Option::is_some));
        unsafe { put(flags, 0) };
        unsafe { put(active, on as c_int) }
    }
    fn cuCtxCreate(c: *mut Handle, _flags: c_uint, _dev: c_int) {
        let handle = with(|f| {
            if f.contexts.is_empty() {
                f.contexts.push(None);
            }
            let i = match (1..f.contexts.len()).find(|&i| f.contexts[i].is_none()) {
                Some(i) => i,
                None => { f.contexts.push(None); f.contexts.len() - 1 }
            };
            f.contexts[i] = Some(Context::default());
            log(&format!("context {} made", i + 1));
            i + 1
        });
        STACK.with(|s| s.borrow_mut().push(handle));
        unsafe { put(c, handle as Handle) }
    }
    fn cuCtxDestroy(c: Handle) {
        let h = c as usize;
        if h <= 1 || with(|f| context(f, h).is_err()) {
            return INVALID_CONTEXT;
        }
        drain();
        with(|f| destroy(f, h - 1));
        STACK.with(|s| s.borrow_mut().retain(|&x| x != h));
        SUCCESS
    }
    fn cuCtxSetCurrent(c: Handle) {
        STACK.with(|s| {
            let mut s = s.borrow_mut();
            s.pop();
            if !c.is_null() {
                s.push(c as usize);
            }
        });
        SUCCESS
    }
    fn cuCtxGetCurrent(c: *mut Handle) { unsafe { put(c, current() as Handle) } }
    fn cuCtxPushCurrent(c: Handle) {
        if c.is_null() { return INVALID_CONTEXT; }
        STACK.with(|s| s.borrow_mut().push(c as usize));
        SUCCESS
    }
    fn cuCtxPopCurrent(c: *mut Handle) {
        let popped = STACK.with(|s| s.borrow_mut().pop()).unwrap_or(0);
        if popped == 0 { return INVALID_CONTEXT; }
        if !c.is_null() { unsafe { put(c, popped as Handle) }; }
        SUCCESS
    }
    fn cuCtxGetDevice(d: *mut c_int) { if current() == 0 { INVALID_CONTEXT } else { unsafe { put(d, 0) } } }
    fn cuCtxSynchronize() { drain(); SUCCESS }
    fn cuStreamCreate(s: *mut Handle, _flags: c_uint) { unsafe { put(s, 0x10 as Handle) } }
    fn cuStreamSynchronize(_s: Handle) { drain(); SUCCESS }
    fn cuStreamDestroy(_s: Handle) { SUCCESS }
    fn cuMemAlloc(p: *mut u64, n: usize) {
        let cur = current();
        match with(|f| context(f, cur).map(|c| c.memory.alloc(n as u64))) { Ok(a) => unsafe { put(p, a) }, Err(e) => e }
    }
    fn cuMemFree(_p: u64) { SUCCESS }
    fn cuMemAllocHost(p: *mut *mut c_void, n: usize) {
        // SAFETY: malloc(3); freed by cuMemFreeHost.
        let a = unsafe { libc::malloc(n.max(1)) };
        if !a.is_null() {
            PINNED.lock().unwrap_or_else(|e| e.into_inner()).push((a as usize, n));
        }
        if a.is_null() { 2 } else { unsafe { put(p, a) } }
    }
    fn cuMemFreeHost(p: *mut c_void) { unsafe { libc::free(p) }; SUCCESS }
    fn cuMemcpyHtoD(dst: u64, src: *const c_void, n: usize) {
        drain();
        let data = unsafe { std::slice::from_raw_parts(src.cast::<u8>(), n) }.to_vec();
        let cur = current();
        result(with(|f| context(f, cur)?.memory.write(dst, &data).map_err(|_| INVALID_VALUE)))
    }
    fn cuMemcpyHtoDAsync(dst: u64, src: *const c_void, n: usize, _s: Handle) {
        // From pinned memory the bytes are read when the copy runs; from pageable memory the
        // driver takes them at the call.
        let (at, pinned) = (src as usize, PINNED.lock().unwrap_or_else(|e| e.into_inner()).iter().any(|&(a, len)| a <= src as usize && src as usize + n <= a + len));
        let early = (!pinned).then(|| unsafe { std::slice::from_raw_parts(src.cast::<u8>(), n) }.to_vec());
        let cur = current();
        on_stream(move || {
            let data = early.unwrap_or_else(|| unsafe { std::slice::from_raw_parts(at as *const u8, n) }.to_vec());
            let _ = with(|f| context(f, cur).map(|c| c.memory.write(dst, &data)));
        })
    }
    fn cuMemcpyDtoH(dst: *mut c_void, src: u64, n: usize) {
        drain();
        let cur = current();
        match with(|f| context(f, cur)?.memory.read(src, n as u64).map_err(|_| INVALID_VALUE)) {
            Ok(b) => { unsafe { std::ptr::copy_nonoverlapping(b.as_ptr(), dst.cast::<u8>(), n) }; SUCCESS }
            Err(e) => e,
        }
    }
    fn cuMemcpyDtoHAsync(dst: *mut c_void, src: u64, n: usize, _s: Handle) {
        let at = dst as usize;
        let cur = current();
        on_stream(move || {
            if let Ok(Ok(b)) = with(|f| context(f, cur).map(|c| c.memory.read(src, n as u64))) {
                unsafe { std::ptr::copy_nonoverlapping(b.as_ptr(), at as *mut u8, n) };
            }
        })
    }
    fn cuMemsetD8(dst: u64, v: u8, n: usize) {
        drain();
        let cur = current();
        result(with(|f| context(f, cur)?.memory.write(dst, &vec![v; n]).map_err(|_| INVALID_VALUE)))
    }
    fn cuMemsetD8Async(dst: u64, v: u8, n: usize, _s: Handle) {
        let cur = current();
        on_stream(move || { let _ = with(|f| context(f, cur).map(|c| c.memory.write(dst, &vec![v; n]))); })
    }
    fn cuFuncGetName(out: *mut *const c_char, func: Handle) {
        let name = with(|f| f.functions.get((func as usize).wrapping_sub(1)).map(|(_, n)| n.clone()));
        match name.and_then(|n| std::ffi::CString::new(n).ok()) {
            // The driver owns the string: leaked, as a test double may.
            Some(n) => unsafe { put(out, Box::leak(n.into_boxed_c_str()).as_ptr()) },
            None => INVALID_HANDLE,
        }
    }
    fn cuMemcpyDtoDAsync(dst: u64, src: u64, n: usize, _s: Handle) {
        let cur = current();
        on_stream(move || {
            let _ = with(|f| context(f, cur).map(|c| c.memory.read(src, n as u64).and_then(|bytes| c.memory.write(dst, &bytes))));
        })
    }
    fn cuMemHostRegister(p: *mut c_void, n: usize, _flags: c_uint) {
        let cur = current();
        with(|f| {
            let c = match context(f, cur) { Ok(c) => c, Err(e) => return e };
            let (addr, len) = (p as u64, n as u64);
            if c.host.iter().any(|&(a, l)| addr < a + l && a < addr + len) {
                return 712; // CUDA_ERROR_HOST_MEMORY_ALREADY_REGISTERED
            }
            if p.is_null() || c.memory.alloc_at(addr, len).is_err() {
                return INVALID_VALUE;
            }
            log(&format!("host register {len} bytes"));
            c.host.push((addr, len));
            SUCCESS
        })
    }
    fn cuMemHostGetDevicePointer(d: *mut u64, p: *mut c_void, _flags: c_uint) {
        // One address space: registered host memory has its host address on the device.
        let addr = p as u64;
        let cur = current();
        if with(|f| context(f, cur).is_ok_and(|c| c.host.iter().any(|&(a, l)| a <= addr && addr < a + l))) { unsafe { put(d, addr) } } else { INVALID_VALUE }
    }
    fn cuLaunchHostFunc(_s: Handle, f: HostFn, data: *mut c_void) {
        let data = data as usize;
        on_stream(move || unsafe { f(data as *mut c_void) })
    }
    fn cuModuleLoadData(m: *mut Handle, image: *const c_void) {
        match unsafe { load(image) } { Ok(h) => unsafe { put(m, h) }, Err(e) => e }
    }
    fn cuModuleLoadDataEx(m: *mut Handle, image: *const c_void, n: c_uint, o: *mut c_int, v: *mut *mut c_void) {
        let r = unsafe { load(image) };
        unsafe { fill_jit_logs(n, o, v, r) };
        match r { Ok(h) => unsafe { put(m, h) }, Err(e) => e }
    }
    fn cuModuleLoad(m: *mut Handle, fname: *const c_char) {
        let path = unsafe { CStr::from_ptr(fname) }.to_string_lossy().into_owned();
        match std::fs::read(&path) {
            Ok(mut bytes) => {
                if !bytes.starts_with(&[0x50, 0xed, 0x55, 0xba]) && !bytes.starts_with(b"\x7fELF") {
                    bytes.push(0);
                }
                log(&format!("load file {path}"));
                unsafe { cuModuleLoadData(m, bytes.as_ptr().cast()) }
            }
            Err(_) => NOT_FOUND,
        }
    }
    fn cuModuleLoadFatBinary(m: *mut Handle, image: *const c_void) { unsafe { cuModuleLoadData(m, image) } }
    fn cuLibraryLoadData(l: *mut Handle, code: *const c_void, jo: *mut c_int, jv: *mut *mut c_void, jn: c_uint, _lo: *mut c_int, _lv: *mut *mut c_void, _ln: c_uint) {
        unsafe { cuModuleLoadDataEx(l, code, jn, jo, jv) }
    }
    fn cuModuleUnload(m: Handle) {
        with(|f| match module_index(f, m) {
            Ok(i) => {
                f.modules[i] = None;
                forget_functions(&mut f.functions, i);
                log(&format!("unload module handle {}", i + 1));
                SUCCESS
            }
            Err(e) => e,
        })
    }
    fn cuLibraryUnload(l: Handle) { unsafe { cuModuleUnload(l) } }
    fn cuModuleGetFunction(out: *mut Handle, m: Handle, name: *const c_char) {
        match with(|f| function(f, m, name)) { Ok(h) => unsafe { put(out, h) }, Err(e) => e }
    }
    fn cuLibraryGetKernel(out: *mut Handle, l: Handle, name: *const c_char) { unsafe { cuModuleGetFunction(out, l, name) } }
    fn cuKernelGetFunction(out: *mut Handle, k: Handle) { unsafe { put(out, k) } }
    fn cuLibraryGetModule(out: *mut Handle, l: Handle) { unsafe { put(out, l) } }
    fn cuFuncGetModule(out: *mut Handle, func: Handle) {
        match with(|f| f.functions.get((func as usize).wrapping_sub(1)).map(|x| x.0)) {
            Some(mi) => unsafe { put(out, (mi + 1) as Handle) },
            None => INVALID_HANDLE,
        }
    }
    fn cuModuleGetGlobal(p: *mut u64, n: *mut usize, m: Handle, name: *const c_char) {
        let name = unsafe { CStr::from_ptr(name) }.to_string_lossy().into_owned();
        let found = with(|f| module_index(f, m).ok().and_then(|i| f.modules[i].as_ref()).and_then(|lm| Some((lm.machine.global(&name)?, lm.module.global_size(&name)?))));
        match found {
            Some((a, size)) => { unsafe { put(p, a) }; if !n.is_null() { unsafe { put(n, size as usize) }; } SUCCESS }
            None => NOT_FOUND,
        }
    }
    fn cuLibraryGetGlobal(p: *mut u64, n: *mut usize, l: Handle, name: *const c_char) { unsafe { cuModuleGetGlobal(p, n, l, name) } }
    fn cuLaunchKernel(func: Handle, gx: c_uint, gy: c_uint, gz: c_uint, bx: c_uint, by: c_uint, bz: c_uint, _shared: c_uint, _s: Handle, params: *mut *mut c_void, _extra: *mut *mut c_void) {
        launch(func, [gx, gy, gz], [bx, by, bz], params)
    }
    fn cuLaunchKernelEx(config: *const LaunchConfig, func: Handle, params: *mut *mut c_void, _extra: *mut *mut c_void) {
        if config.is_null() { return INVALID_VALUE; }
        let c = unsafe { &*config };
        let _ = c.stream;
        launch(func, c.grid, c.block, params)
    }
    fn cuLinkCreate(_n: c_uint, _o: *mut c_int, _v: *mut *mut c_void, state: *mut Handle) {
        unsafe { put(state, Box::into_raw(Box::<LinkState>::default()).cast()) }
    }
    fn cuLinkAddData(state: Handle, kind: c_int, data: *mut c_void, size: usize, _name: *const c_char, _n: c_uint, _o: *mut c_int, _v: *mut *mut c_void) {
        if state.is_null() || data.is_null() { return INVALID_VALUE; }
        let s = unsafe { &mut *state.cast::<LinkState>() };
        // CU_JIT_INPUT_PTX (1): text, with or without its NUL; CU_JIT_INPUT_FATBINARY (2).
        let text = match kind {
            1 => String::from_utf8_lossy(unsafe { std::slice::from_raw_parts(data.cast::<u8>(), size) }).trim_end_matches('\0').to_string(),
            2 => match unsafe { fatbin_ptx(data.cast()) } {
                Ok(t) => t,
                // Machine code only (the device runtime's unit): taken, not something this
                // driver runs.
                Err(NO_BINARY_FOR_GPU) => { log("link fatbin without PTX for this device: taken, not run"); return SUCCESS; }
                Err(e) => return e,
            },
            _ => { log(&format!("link input of kind {kind} refused")); return NOT_SUPPORTED; }
        };
        s.units.push(text);
        SUCCESS
    }
    fn cuLinkAddFile(state: Handle, kind: c_int, path: *const c_char, n: c_uint, o: *mut c_int, v: *mut *mut c_void) {
        if state.is_null() || path.is_null() { return INVALID_VALUE; }
        let name = path;
        let path = unsafe { CStr::from_ptr(path) }.to_string_lossy().into_owned();
        // PTX and fatbin files: their bytes, as cuLinkAddData takes them.
        if kind == 1 || kind == 2 {
            let Ok(mut bytes) = std::fs::read(&path) else { return NOT_FOUND };
            log(&format!("link file {path}"));
            return unsafe { cuLinkAddData(state, kind, bytes.as_mut_ptr().cast(), bytes.len(), name, n, o, v) };
        }
        // Libraries (CU_JIT_INPUT_LIBRARY, 4) are taken and not linked: their device code (the
        // device runtime) is not something this driver runs.
        if kind != 4 || !std::path::Path::new(&path).is_file() { return NOT_FOUND; }
        log(&format!("link library {path}"));
        SUCCESS
    }
    fn cuLinkComplete(state: Handle, out: *mut *mut c_void, size: *mut usize) {
        if state.is_null() { return INVALID_VALUE; }
        let s = unsafe { &mut *state.cast::<LinkState>() };
        log(&format!("link {} units", s.units.len()));
        s.linked = match link(&s.units) { Ok(t) => linked_image(&t), Err(e) => return e };
        unsafe { put(out, s.linked.as_mut_ptr().cast()) };
        unsafe { put(size, s.linked.len()) }
    }
    fn cuLinkDestroy(state: Handle) {
        if state.is_null() { return INVALID_VALUE; }
        drop(unsafe { Box::from_raw(state.cast::<LinkState>()) });
        SUCCESS
    }
    fn cuGetErrorName(r: CuResult, s: *mut *const c_char) {
        let name: &'static CStr = match r { 0 => c"CUDA_SUCCESS", 201 => c"CUDA_ERROR_INVALID_CONTEXT", 709 => c"CUDA_ERROR_CONTEXT_IS_DESTROYED", 218 => c"CUDA_ERROR_INVALID_PTX", 209 => c"CUDA_ERROR_NO_BINARY_FOR_GPU", 719 => c"CUDA_ERROR_LAUNCH_FAILED", _ => c"CUDA_ERROR_UNKNOWN" };
        unsafe { put(s, name.as_ptr()) }
    }
}

/// The `_v2` names cuda.h gives the entry points whose first versions are gone, for
/// applications linked against libcuda (same signatures on 64-bit).
macro_rules! v2_aliases {
    ($($alias:ident => $base:ident($($a:ident: $t:ty),*);)*) => {
        $(
            /// The `_v2` name of the entry point.
            ///
            /// # Safety
            /// As the entry point's.
            #[unsafe(no_mangle)]
            #[allow(non_snake_case)]
            pub unsafe extern "C" fn $alias($($a: $t),*) -> CuResult {
                // SAFETY: the caller's contract, passed on.
                unsafe { $base($($a),*) }
            }
        )*
    };
}

v2_aliases! {
    cuMemAlloc_v2 => cuMemAlloc(p: *mut u64, n: usize);
    cuCtxCreate_v2 => cuCtxCreate(c: *mut Handle, flags: c_uint, dev: c_int);
    cuCtxDestroy_v2 => cuCtxDestroy(c: Handle);
    cuDevicePrimaryCtxRelease_v2 => cuDevicePrimaryCtxRelease(dev: c_int);
    cuDevicePrimaryCtxReset_v2 => cuDevicePrimaryCtxReset(dev: c_int);
    cuMemcpyHtoD_v2 => cuMemcpyHtoD(dst: u64, src: *const c_void, n: usize);
    cuMemcpyDtoH_v2 => cuMemcpyDtoH(dst: *mut c_void, src: u64, n: usize);
    cuLinkAddData_v2 => cuLinkAddData(state: Handle, kind: c_int, data: *mut c_void, size: usize, name: *const c_char, n: c_uint, o: *mut c_int, v: *mut *mut c_void);
}

/// Looks a driver symbol up, with or without the `_v2` / `_ptsz` suffixes of the real ABI.
fn lookup(name: &CStr) -> Option<usize> {
    let n = name.to_bytes();
    let base = n.strip_suffix(b"_ptsz").unwrap_or(n);
    let base = base.strip_suffix(b"_v2").unwrap_or(base);
    if base == b"cuDriverGetVersion" {
        return Some(cuDriverGetVersion as *const () as usize);
    }
    if base == b"cuGetProcAddress" {
        return Some(if n.ends_with(b"_v2") { cuGetProcAddress_v2 as *const () as usize } else { cuGetProcAddress as *const () as usize });
    }
    entry(base)
}

/// The CUDA version that introduced entry point `name`, for those after 12.0 (cuda.h).
fn introduced(name: &CStr) -> c_int {
    match name.to_bytes() {
        b"cuFuncGetName" | b"cuKernelGetName" => 12030,
        _ => 0,
    }
}

/// `cuGetProcAddress` (CUDA 11.3 signature).
///
/// # Safety
/// `name` NUL-terminated, `pfn` writable.
#[unsafe(no_mangle)]
#[allow(non_snake_case)]
pub unsafe extern "C" fn cuGetProcAddress(name: *const c_char, pfn: *mut *mut c_void, version: c_int, _flags: u64) -> CuResult {
    if name.is_null() || pfn.is_null() {
        return INVALID_VALUE;
    }
    // SAFETY: the caller's contract.
    let name = unsafe { CStr::from_ptr(name) };
    // As the real driver: nothing for a name asked for at a version older than the one that
    // introduced it.
    let found = lookup(name).filter(|_| version >= introduced(name));
    if std::env::var_os("BPFTIME_FAKE_CUDA_LOG_PROCS").is_some() {
        log(&format!("proc {} {version} {_flags}{}", name.to_string_lossy(), if found.is_some() { "" } else { " (missing)" }));
    }
    // SAFETY: the caller's contract.
    unsafe { *pfn = found.unwrap_or(0) as *mut c_void };
    if found.is_some() {
        SUCCESS
    } else {
        NOT_FOUND
    }
}

/// `cuDriverGetVersion`, which the CUDA runtime looks up with `dlsym` before anything else.
///
/// # Safety
/// `v` writable.
#[unsafe(no_mangle)]
#[allow(non_snake_case)]
pub unsafe extern "C" fn cuDriverGetVersion(v: *mut c_int) -> CuResult {
    // SAFETY: the caller's contract.
    unsafe { put(v, 13000) }
}

/// `cuGetProcAddress_v2` (CUDA 12.0).
///
/// # Safety
/// As [`cuGetProcAddress`]; `status` null or writable.
#[unsafe(no_mangle)]
#[allow(non_snake_case)]
pub unsafe extern "C" fn cuGetProcAddress_v2(name: *const c_char, pfn: *mut *mut c_void, version: c_int, flags: u64, status: *mut c_int) -> CuResult {
    // SAFETY: the caller's contract.
    let r = unsafe { cuGetProcAddress(name, pfn, version, flags) };
    if !status.is_null() {
        // SAFETY: the caller's contract. CU_GET_PROC_ADDRESS_SUCCESS = 0, SYMBOL_NOT_FOUND = 1.
        unsafe { *status = if r == SUCCESS { 0 } else { 1 } };
    }
    r
}
