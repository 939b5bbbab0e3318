//! The C entry points that put the agent between a CUDA application and its driver:
//! `dlsym` (how the CUDA runtime finds `cuGetProcAddress`), the `cuGetProcAddress` wrappers
//! (how it finds everything else), and wrappers of the module loads and kernel launches.
//!
//! An entry point can be handed out for one name in several variants (`cuLaunchKernel` at the
//! legacy and the per-thread default stream, say), so each wrapped function has a few *slots*:
//! wrapper `f::<S>` calls the real function stored in slot `S`. Nothing here panics across the
//! C boundary: the work is done in `super`, under `catch_unwind`.

use super::driver::{CuResult, Dim, Driver, GetProcAddressV1, GetProcAddressV2, Handle, REAL_GET_PROC_V1, REAL_GET_PROC_V2, STREAM_PER_THREAD, SUCCESS};
use std::ffi::{c_char, c_int, c_uint, c_void, CStr};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

/// The newest driver ABI whose signatures the wrappers follow (CUDA 13.x).
const NEWEST_KNOWN_ABI: c_int = 13090;

/// Variants of one entry point the agent can wrap at once.
const SLOTS: usize = 4;

/// The real functions behind one wrapped entry point.
struct Slots {
    real: [AtomicUsize; SLOTS],
    /// Whether the variant in the slot reads stream 0 as the per-thread default stream.
    per_thread: [AtomicBool; SLOTS],
}

impl Slots {
    const fn new() -> Slots {
        Slots {
            real: [AtomicUsize::new(0), AtomicUsize::new(0), AtomicUsize::new(0), AtomicUsize::new(0)],
            per_thread: [AtomicBool::new(false), AtomicBool::new(false), AtomicBool::new(false), AtomicBool::new(false)],
        }
    }

    /// The slot holding `real` (taking a free one); None when all are taken by others.
    fn slot_of(&self, real: usize, per_thread: bool) -> Option<usize> {
        for (i, r) in self.real.iter().enumerate() {
            match r.compare_exchange(0, real, Ordering::AcqRel, Ordering::Acquire) {
                Ok(_) => {
                    self.per_thread[i].store(per_thread, Ordering::Release);
                    return Some(i);
                }
                Err(cur) if cur == real => return Some(i),
                Err(_) => {}
            }
        }
        None
    }

    fn real(&self, slot: usize) -> usize {
        self.real[slot].load(Ordering::Acquire)
    }

    /// The stream a launch in `slot` really went to (stream 0 of a per-thread variant is
    /// the per-thread stream).
    fn stream(&self, slot: usize, stream: Handle) -> Handle {
        if stream.is_null() && self.per_thread[slot].load(Ordering::Acquire) {
            STREAM_PER_THREAD as Handle
        } else {
            stream
        }
    }
}

static LAUNCH_KERNEL: Slots = Slots::new();
static LAUNCH_KERNEL_EX: Slots = Slots::new();
static LAUNCH_COOPERATIVE: Slots = Slots::new();
static GRAPH_LAUNCH: Slots = Slots::new();
static MODULE_LOAD: Slots = Slots::new();
static MODULE_LOAD_DATA: Slots = Slots::new();
static MODULE_LOAD_DATA_EX: Slots = Slots::new();
static MODULE_LOAD_FAT_BINARY: Slots = Slots::new();
static LIBRARY_LOAD_DATA: Slots = Slots::new();
static CTX_SYNCHRONIZE: Slots = Slots::new();
static STREAM_SYNCHRONIZE: Slots = Slots::new();
static EVENT_SYNCHRONIZE: Slots = Slots::new();
static MEMCPY_DTOH: Slots = Slots::new();
static MEMCPY: Slots = Slots::new();
static LINK_ADD_DATA: Slots = Slots::new();
static LINK_ADD_FILE: Slots = Slots::new();
static CTX_DESTROY: Slots = Slots::new();
static PRIMARY_CTX_RETAIN: Slots = Slots::new();
static PRIMARY_CTX_RELEASE: Slots = Slots::new();
static PRIMARY_CTX_RESET: Slots = Slots::new();
static MODULE_UNLOAD: Slots = Slots::new();
static LIBRARY_UNLOAD: Slots = Slots::new();

type FnLaunchKernel = unsafe extern "C" fn(Handle, Dim, Dim, Dim, Dim, Dim, Dim, Dim, Handle, *mut *mut c_void, *mut *mut c_void) -> CuResult;
type FnLaunchCooperative = unsafe extern "C" fn(Handle, Dim, Dim, Dim, Dim, Dim, Dim, Dim, Handle, *mut *mut c_void) -> CuResult;
type FnLaunchKernelEx = unsafe extern "C" fn(*const LaunchConfig, Handle, *mut *mut c_void, *mut *mut c_void) -> CuResult;
type FnGraphLaunch = unsafe extern "C" fn(Handle, Handle) -> CuResult;
type FnModuleLoad = unsafe extern "C" fn(*mut Handle, *const c_char) -> CuResult;
type FnModuleLoadData = unsafe extern "C" fn(*mut Handle, *const c_void) -> CuResult;
type FnModuleLoadDataEx = unsafe extern "C" fn(*mut Handle, *const c_void, c_uint, *mut c_int, *mut *mut c_void) -> CuResult;
type FnLibraryLoadData =
    unsafe extern "C" fn(*mut Handle, *const c_void, *mut c_int, *mut *mut c_void, c_uint, *mut c_int, *mut *mut c_void, c_uint) -> CuResult;

type FnLinkAddData = unsafe extern "C" fn(Handle, c_int, *mut c_void, usize, *const c_char, c_uint, *mut c_int, *mut *mut c_void) -> CuResult;
type FnLinkAddFile = unsafe extern "C" fn(Handle, c_int, *const c_char, c_uint, *mut c_int, *mut *mut c_void) -> CuResult;

/// `CUlaunchConfig` (cuda.h), as far as the stream.
#[repr(C)]
pub struct LaunchConfig {
    grid: [c_uint; 3],
    block: [c_uint; 3],
    shared_mem: c_uint,
    stream: Handle,
}

/// The wrapper of `name` for the real entry point `real`, or None when the agent leaves it
/// alone. `per_thread`: the variant reads stream 0 as the per-thread stream.
pub(super) fn wrapper_of(name: &[u8], real: usize, per_thread: bool) -> Option<usize> {
    let base = name.strip_suffix(b"_ptsz").unwrap_or(name);
    let per_thread = per_thread || base.len() != name.len();
    macro_rules! pick {
        ($slots:expr, $f:ident) => {{
            let s = $slots.slot_of(real, per_thread)?;
            let w: [usize; SLOTS] =
                [$f::<0> as *const () as usize, $f::<1> as *const () as usize, $f::<2> as *const () as usize, $f::<3> as *const () as usize];
            Some(w[s])
        }};
    }
    match base {
        b"cuLaunchKernel" => pick!(LAUNCH_KERNEL, launch_kernel),
        b"cuLaunchKernelEx" => pick!(LAUNCH_KERNEL_EX, launch_kernel_ex),
        b"cuLaunchCooperativeKernel" => pick!(LAUNCH_COOPERATIVE, launch_cooperative),
        b"cuGraphLaunch" => pick!(GRAPH_LAUNCH, graph_launch),
        b"cuModuleLoad" => pick!(MODULE_LOAD, module_load),
        b"cuModuleLoadData" => pick!(MODULE_LOAD_DATA, module_load_data),
        b"cuModuleLoadDataEx" => pick!(MODULE_LOAD_DATA_EX, module_load_data_ex),
        b"cuModuleLoadFatBinary" => pick!(MODULE_LOAD_FAT_BINARY, module_load_fat_binary),
        b"cuLibraryLoadData" => pick!(LIBRARY_LOAD_DATA, library_load_data),
        b"cuCtxSynchronize" => pick!(CTX_SYNCHRONIZE, ctx_synchronize),
        b"cuStreamSynchronize" => pick!(STREAM_SYNCHRONIZE, stream_synchronize),
        b"cuEventSynchronize" => pick!(EVENT_SYNCHRONIZE, event_synchronize),
        b"cuMemcpyDtoH" | b"cuMemcpyDtoH_v2" => pick!(MEMCPY_DTOH, memcpy_dtoh),
        b"cuMemcpy" => pick!(MEMCPY, memcpy),
        b"cuLinkAddData" | b"cuLinkAddData_v2" => pick!(LINK_ADD_DATA, link_add_data),
        b"cuLinkAddFile" | b"cuLinkAddFile_v2" => pick!(LINK_ADD_FILE, link_add_file),
        b"cuCtxDestroy" | b"cuCtxDestroy_v2" => pick!(CTX_DESTROY, ctx_destroy),
        b"cuDevicePrimaryCtxRetain" => pick!(PRIMARY_CTX_RETAIN, primary_ctx_retain),
        b"cuDevicePrimaryCtxRelease" | b"cuDevicePrimaryCtxRelease_v2" => pick!(PRIMARY_CTX_RELEASE, primary_ctx_release),
        b"cuDevicePrimaryCtxReset" | b"cuDevicePrimaryCtxReset_v2" => pick!(PRIMARY_CTX_RESET, primary_ctx_reset),
        b"cuModuleUnload" => pick!(MODULE_UNLOAD, module_unload),
        b"cuLibraryUnload" => pick!(LIBRARY_UNLOAD, library_unload),
        _ => None,
    }
}

/// What the application gets for driver symbol `name` (from `dlsym` or `cuGetProcAddress` at
/// `version` with `flags`): our wrapper, or `real` itself.
fn symbol(name: &CStr, real: usize, version: Option<c_int>, flags: u64) -> usize {
    let name = name.to_bytes();
    if !name.starts_with(b"cu") {
        return real;
    }
    let real = driver_behind(real).unwrap_or(real);
    // cuGetProcAddress itself: remember the real one, hand out ours (also when asked for it by
    // name through itself: `cuGetProcAddress("cuGetProcAddress")`).
    let v2 = match (name, version) {
        (b"cuGetProcAddress_v2", _) => Some(true),
        (b"cuGetProcAddress", Some(v)) => Some(v >= 12000),
        (b"cuGetProcAddress", None) => Some(false),
        _ => None,
    };
    if let Some(v2) = v2 {
        if v2 {
            REAL_GET_PROC_V2.store(real, Ordering::Release);
        } else {
            REAL_GET_PROC_V1.store(real, Ordering::Release);
        }
        if !super::active() {
            return real;
        }
        return if v2 { get_proc_address_v2 as *const () as usize } else { get_proc_address_v1 as *const () as usize };
    }
    if !super::active() {
        return real;
    }
    // An entry point asked for at a version newer than the ABIs we know may have another
    // signature: left alone (and said once).
    if version.is_some_and(|v| v > NEWEST_KNOWN_ABI) {
        super::newer_abi(name, version.unwrap_or(0));
        return real;
    }
    // Where inline hooks on the driver's functions do the wrapping (see `claim_hooks`), the
    // application gets the driver's own.
    if WRAPPING.load(Ordering::Acquire) == BY_HOOKS {
        return real;
    }
    // CU_GET_PROC_ADDRESS_PER_THREAD_DEFAULT_STREAM
    let Some(wrapper) = wrapper_of(name, real, flags & 2 != 0) else { return real };
    match WRAPPING.compare_exchange(UNDECIDED, BY_WRAPPERS, Ordering::AcqRel, Ordering::Acquire) {
        Ok(_) | Err(BY_WRAPPERS) => wrapper,
        Err(_) => real,
    }
}

/// How the driver's entry points are wrapped in this process, decided once: by the wrappers
/// handed out in their place (`dlsym`, `cuGetProcAddress`, the definitions for `-lcuda`), or by
/// inline hooks on the driver's own functions (`late.rs`: an application that fetched them
/// before the agent had probes for it). Never both, which would wrap every call twice.
static WRAPPING: std::sync::atomic::AtomicU8 = std::sync::atomic::AtomicU8::new(UNDECIDED);
const UNDECIDED: u8 = 0;
const BY_WRAPPERS: u8 = 1;
const BY_HOOKS: u8 = 2;

/// Decides for inline hooks: true unless a wrapper was handed out already.
pub(super) fn claim_hooks() -> bool {
    match WRAPPING.compare_exchange(UNDECIDED, BY_HOOKS, Ordering::AcqRel, Ordering::Acquire) {
        Ok(_) => true,
        Err(now) => now == BY_HOOKS,
    }
}

unsafe extern "C" fn get_proc_address_v1(name: *const c_char, pfn: *mut *mut c_void, version: c_int, flags: u64) -> CuResult {
    let real = REAL_GET_PROC_V1.load(Ordering::Acquire);
    // SAFETY: this wrapper is only handed out after the real v1 entry point was stored; the
    // arguments are the caller's, passed on unchanged.
    let r = unsafe { std::mem::transmute::<usize, GetProcAddressV1>(real)(name, pfn, version, flags) };
    // SAFETY: on success the driver wrote a function pointer through `pfn`; `name` is the
    // caller's NUL-terminated symbol name.
    unsafe { rewrite(r, name, pfn, version, flags) };
    r
}

unsafe extern "C" fn get_proc_address_v2(name: *const c_char, pfn: *mut *mut c_void, version: c_int, flags: u64, status: *mut c_int) -> CuResult {
    let real = REAL_GET_PROC_V2.load(Ordering::Acquire);
    // SAFETY: as in `get_proc_address_v1`, for the v2 signature.
    let r = unsafe { std::mem::transmute::<usize, GetProcAddressV2>(real)(name, pfn, version, flags, status) };
    // SAFETY: as in `get_proc_address_v1`.
    unsafe { rewrite(r, name, pfn, version, flags) };
    r
}

/// Replaces the entry point a successful `cuGetProcAddress` returned by our wrapper.
///
/// # Safety
/// `name` must be NUL-terminated and `pfn` writable when `r` is success.
unsafe fn rewrite(r: CuResult, name: *const c_char, pfn: *mut *mut c_void, version: c_int, flags: u64) {
    if r != SUCCESS || name.is_null() || pfn.is_null() {
        return;
    }
    // SAFETY: the caller's contract.
    let (name, real) = unsafe { (CStr::from_ptr(name), *pfn as usize) };
    if real == 0 {
        return;
    }
    let new = std::panic::catch_unwind(|| symbol(name, real, Some(version), flags)).unwrap_or(real);
    // SAFETY: the caller's contract.
    unsafe { *pfn = new as *mut c_void };
}

// ---- dlsym ----

/// The next `dlsym` (glibc's), found at the first call.
static REAL_DLSYM: AtomicUsize = AtomicUsize::new(0);

type FnDlsym = unsafe extern "C" fn(*mut c_void, *const c_char) -> *mut c_void;

extern "C" fn resolve_real_dlsym() -> usize {
    for version in [c"GLIBC_2.34", c"GLIBC_2.2.5"] {
        // SAFETY: dlvsym(3) with RTLD_NEXT and NUL-terminated strings; dlvsym is not ours.
        let p = unsafe { libc::dlvsym(libc::RTLD_NEXT, c"dlsym".as_ptr(), version.as_ptr()) };
        if !p.is_null() {
            REAL_DLSYM.store(p as usize, Ordering::Release);
            return p as usize;
        }
    }
    0
}

/// `dlsym` for a library's handle: the real lookup, then driver symbols wrapped.
unsafe extern "C" fn dlsym_with_handle(handle: *mut c_void, name: *const c_char) -> *mut c_void {
    let real = REAL_DLSYM.load(Ordering::Acquire);
    // SAFETY: `real` is glibc's dlsym (non-zero: checked by the entry code); the arguments are
    // the caller's.
    let p = unsafe { std::mem::transmute::<usize, FnDlsym>(real)(handle, name) };
    wrapped(name, p)
}

/// `dlsym(RTLD_DEFAULT, name)` for a name starting with "cu", as glibc answers the
/// application's caller at `caller`: the global scope, then the caller's own (a library
/// opened with `RTLD_LOCAL` and its dependencies), which glibc adds for the caller it sees and
/// here would see the agent; then driver symbols wrapped.
unsafe extern "C" fn dlsym_default(handle: *mut c_void, name: *const c_char, caller: *const c_void) -> *mut c_void {
    /// `RTLD_DL_LINKMAP` (dlfcn.h): `dladdr1` gives the object's link map, which is its handle.
    const RTLD_DL_LINKMAP: c_int = 2;
    // SAFETY: `real` is glibc's dlsym (non-zero: checked by the entry code).
    let dlsym = unsafe { std::mem::transmute::<usize, FnDlsym>(REAL_DLSYM.load(Ordering::Acquire)) };
    // SAFETY: the caller's arguments.
    let mut p = unsafe { dlsym(handle, name) };
    if p.is_null() {
        // SAFETY: dladdr1(3) with out-pointers of ours; `caller` is only looked up.
        let mut info: libc::Dl_info = unsafe { std::mem::zeroed() };
        let mut map: *mut c_void = std::ptr::null_mut();
        // SAFETY: as above.
        if unsafe { libc::dladdr1(caller, &mut info, &mut map, RTLD_DL_LINKMAP) } != 0 && !map.is_null() {
            // SAFETY: a loaded object's link map is its dlopen handle (glibc).
            p = unsafe { dlsym(map, name) };
        }
    }
    wrapped(name, p)
}

/// What a `dlsym` of ours hands out for `name` found at `p`: a driver symbol's wrapper, or `p`.
fn wrapped(name: *const c_char, p: *mut c_void) -> *mut c_void {
    if p.is_null() || name.is_null() {
        return p;
    }
    // SAFETY: dlsym found a symbol by this name, so it is a NUL-terminated string.
    let name = unsafe { CStr::from_ptr(name) };
    std::panic::catch_unwind(|| symbol(name, p as usize, None, 0)).unwrap_or(p as usize) as *mut c_void
}

/// `dlsym`, interposed. Lookups that glibc answers for the caller it sees (the return address
/// decides what `RTLD_NEXT` is, and which scope `RTLD_DEFAULT` adds to the global one) jump
/// straight to glibc's: `RTLD_NEXT`, and `RTLD_DEFAULT` for names that cannot be the driver's
/// (not starting with "cu"); `RTLD_DEFAULT` for the others goes through [`dlsym_default`] with
/// the caller's address, and a library's handle through [`dlsym_with_handle`].
///
/// # Safety
/// Same contract as dlsym(3).
#[unsafe(naked)]
#[unsafe(no_mangle)]
pub unsafe extern "C" fn dlsym(handle: *mut c_void, name: *const c_char) -> *mut c_void {
    core::arch::naked_asm!(
        "mov rax, qword ptr [rip + {real}]",
        "test rax, rax",
        "jnz 2f",
        "push rdi",
        "push rsi",
        "sub rsp, 8",
        "call {resolve}",
        "add rsp, 8",
        "pop rsi",
        "pop rdi",
        "test rax, rax",
        "jnz 2f",
        "ret",
        "2:",
        "cmp rdi, -1",
        "je 3f",
        "test rdi, rdi",
        "jnz {with_handle}",
        "test rsi, rsi",
        "jz 3f",
        "cmp byte ptr [rsi], 0x63",
        "jne 3f",
        "cmp byte ptr [rsi + 1], 0x75",
        "jne 3f",
        "mov rdx, qword ptr [rsp]",
        "jmp {default}",
        "3:",
        "jmp rax",
        real = sym REAL_DLSYM,
        resolve = sym resolve_real_dlsym,
        with_handle = sym dlsym_with_handle,
        default = sym dlsym_default,
    )
}

// ---- loads ----

/// The JIT options of a load or link call as the application gave them (cuda.h
/// `CUjit_option`): the driver writes into some (log buffers, and sizes set to the bytes
/// written), so a patched image the driver refused would leave its logs and sizes for the
/// original's load. Restored before that load, the original's load sees what the application
/// gave, and the application sees only its logs.
struct JitOptions {
    values: *mut *mut c_void,
    saved: Vec<*mut c_void>,
    /// (buffer, its bytes as given) of each log buffer.
    logs: Vec<(*mut u8, Vec<u8>)>,
}

/// `CU_JIT_INFO_LOG_BUFFER` and `CU_JIT_ERROR_LOG_BUFFER`: each followed by its size option.
const JIT_LOG_BUFFERS: [c_int; 2] = [3, 5];
/// More than a log buffer holds in practice; larger ones are restored this far.
const JIT_LOG_KEPT: usize = 1 << 20;

impl JitOptions {
    /// Saves the values of `n` options.
    ///
    /// # Safety
    /// The load call's contract: `options` and `values` hold `n` entries (or `n` is 0), and a
    /// log buffer is writable for the size its size option gives.
    unsafe fn save(n: c_uint, options: *const c_int, values: *mut *mut c_void) -> JitOptions {
        if n == 0 || options.is_null() || values.is_null() {
            return JitOptions { values, saved: vec![], logs: vec![] };
        }
        // SAFETY: the caller's contract.
        let (opts, vals) = unsafe { (std::slice::from_raw_parts(options, n as usize), std::slice::from_raw_parts(values, n as usize)) };
        let mut logs = vec![];
        for buffer in JIT_LOG_BUFFERS {
            let (Some(b), Some(z)) = (opts.iter().position(|&o| o == buffer), opts.iter().position(|&o| o == buffer + 1)) else { continue };
            // The size is an `unsigned int` in its pointer-sized slot.
            let (ptr, len) = (vals[b].cast::<u8>(), (vals[z] as usize as u32 as usize).min(JIT_LOG_KEPT));
            if !ptr.is_null() && len > 0 {
                // SAFETY: the caller's contract: the buffer holds its size's bytes.
                logs.push((ptr, unsafe { std::slice::from_raw_parts(ptr, len) }.to_vec()));
            }
        }
        JitOptions { values, saved: vals.to_vec(), logs }
    }

    /// No options (a load call without them).
    fn none() -> JitOptions {
        JitOptions { values: std::ptr::null_mut(), saved: vec![], logs: vec![] }
    }

    /// Puts the values and log buffers back as they were saved.
    fn restore(&self) {
        for (i, &v) in self.saved.iter().enumerate() {
            // SAFETY: `values` held this many entries when saved (the call's contract).
            unsafe { self.values.add(i).write(v) };
        }
        for (ptr, bytes) in &self.logs {
            // SAFETY: the buffer held these bytes when saved.
            unsafe { std::ptr::copy_nonoverlapping(bytes.as_ptr(), *ptr, bytes.len()) };
        }
    }
}

/// Calls `load` with the patched image when the agent has one for `image`, falling back to
/// the original (and saying why once) when the driver refuses it, with the JIT options as the
/// application gave them (`jit` saves them, when there is a patched image).
fn load_with(image: *const c_void, jit: impl FnOnce() -> JitOptions, load: impl Fn(*const c_void) -> CuResult, loaded: impl Fn() -> super::Loaded) -> CuResult {
    let started = std::time::Instant::now();
    let Some(patched) = super::replacement(image) else {
        let r = load(image);
        if r == SUCCESS {
            super::loaded_as_is(image, loaded);
        }
        return r;
    };
    let patching = started.elapsed();
    let jit = jit();
    let r = load(patched.as_ptr());
    if r == SUCCESS {
        super::loaded_patched(&patched, loaded());
        super::report_load_time(patching, started.elapsed() - patching);
        return r;
    }
    super::refused(&patched, r);
    jit.restore();
    load(image)
}

unsafe extern "C" fn module_load_data<const S: usize>(module: *mut Handle, image: *const c_void) -> CuResult {
    let real = MODULE_LOAD_DATA.real(S);
    // SAFETY: the driver's own entry point for this slot, called with the caller's arguments
    // (the image replaced by a NUL-terminated PTX text, which the call accepts).
    let load = |img| unsafe { std::mem::transmute::<usize, FnModuleLoadData>(real)(module, img) };
    // SAFETY: read after a successful load, which wrote the handle.
    load_with(image, JitOptions::none, load, || super::Loaded::Module(unsafe { *module }))
}

/// The contents of the module file `fname` (`cuModuleLoad`) as an image a load call takes: a
/// fat binary or ELF as they are, a PTX text with its NUL. None when it cannot be read.
fn module_file(fname: *const c_char) -> Option<Vec<u8>> {
    if fname.is_null() {
        return None;
    }
    // SAFETY: cuModuleLoad's contract: a NUL-terminated path.
    let path = <std::ffi::OsStr as std::os::unix::ffi::OsStrExt>::from_bytes(unsafe { CStr::from_ptr(fname) }.to_bytes());
    let mut bytes = std::fs::read(path).ok()?;
    if !(bytes.starts_with(&[0x50, 0xed, 0x55, 0xba]) || bytes.starts_with(b"\x7fELF")) {
        bytes.push(0);
    }
    Some(bytes)
}

/// `cuModuleLoad` of a file: its contents patched and loaded with `cuModuleLoadData` when the
/// agent has probes for it, else the driver's own call with the caller's path.
unsafe extern "C" fn module_load<const S: usize>(module: *mut Handle, fname: *const c_char) -> CuResult {
    let real = MODULE_LOAD.real(S);
    // Reading the file and freeing it are our own work (not the application's system calls).
    let image = bpftime_attach::without_probes(|| std::panic::catch_unwind(|| module_file(fname)).ok().flatten());
    let patched = image.as_ref().and_then(|image| {
        // SAFETY: `module` is the caller's out-parameter.
        unsafe { load_patched_data(module, image.as_ptr().cast()) }
    });
    bpftime_attach::without_probes(|| drop(image));
    if let Some(r) = patched {
        return r;
    }
    // SAFETY: the driver's own entry point with the caller's arguments.
    unsafe { std::mem::transmute::<usize, FnModuleLoad>(real)(module, fname) }
}

/// Loads the patched version of `image` with the driver's `cuModuleLoadData`: Some(success)
/// when it did, None when there is none or the driver refused it (said once; the caller
/// loads the original).
///
/// # Safety
/// `module` writable; `image` one of the forms a load call accepts.
unsafe fn load_patched_data(module: *mut Handle, image: *const c_void) -> Option<CuResult> {
    let p = super::replacement(image)?;
    let load = super::driver::module_load_data()?;
    // SAFETY: the driver's cuModuleLoadData with a NUL-terminated PTX text; `module` is the
    // caller's.
    let r = unsafe { load(module, p.as_ptr()) };
    let loaded = r == SUCCESS;
    bpftime_attach::without_probes(|| {
        if loaded {
            // SAFETY: written by the successful load.
            super::loaded_patched(&p, super::Loaded::Module(unsafe { *module }));
        } else {
            super::refused(&p, r);
        }
        drop(p);
    });
    loaded.then_some(r)
}

unsafe extern "C" fn module_load_fat_binary<const S: usize>(module: *mut Handle, image: *const c_void) -> CuResult {
    let real = MODULE_LOAD_FAT_BINARY.real(S);
    // SAFETY: the caller's arguments.
    if let Some(r) = unsafe { load_patched_data(module, image) } {
        return r;
    }
    // SAFETY: the driver's own entry point with the caller's arguments.
    unsafe { std::mem::transmute::<usize, FnModuleLoadData>(real)(module, image) }
}

unsafe extern "C" fn module_load_data_ex<const S: usize>(
    module: *mut Handle,
    image: *const c_void,
    n: c_uint,
    options: *mut c_int,
    values: *mut *mut c_void,
) -> CuResult {
    let real = MODULE_LOAD_DATA_EX.real(S);
    // SAFETY: as in `module_load_data`.
    let load = |img| unsafe { std::mem::transmute::<usize, FnModuleLoadDataEx>(real)(module, img, n, options, values) };
    // SAFETY: the call's contract for its options.
    let jit = || unsafe { JitOptions::save(n, options, values) };
    // SAFETY: read after a successful load, which wrote the handle.
    load_with(image, jit, load, || super::Loaded::Module(unsafe { *module }))
}

#[allow(clippy::too_many_arguments)]
unsafe extern "C" fn library_load_data<const S: usize>(
    library: *mut Handle,
    code: *const c_void,
    jit_options: *mut c_int,
    jit_values: *mut *mut c_void,
    n_jit: c_uint,
    lib_options: *mut c_int,
    lib_values: *mut *mut c_void,
    n_lib: c_uint,
) -> CuResult {
    let real = LIBRARY_LOAD_DATA.real(S);
    // SAFETY: as in `module_load_data`.
    let load =
        |img| unsafe { std::mem::transmute::<usize, FnLibraryLoadData>(real)(library, img, jit_options, jit_values, n_jit, lib_options, lib_values, n_lib) };
    // SAFETY: the call's contract for its options.
    let jit = || unsafe { JitOptions::save(n_jit, jit_options, jit_values) };
    // SAFETY: read after a successful load, which wrote the handle.
    load_with(code, jit, load, || super::Loaded::Library(unsafe { *library }))
}

/// `cuLinkAddData`: a PTX or fat binary input of the application's own link with the probes
/// spliced in (as PTX), when any go into it; the original input when none does, or the driver
/// refuses the patched one (said once).
#[allow(clippy::too_many_arguments)]
unsafe extern "C" fn link_add_data<const S: usize>(
    state: Handle,
    kind: c_int,
    data: *mut c_void,
    size: usize,
    name: *const c_char,
    n: c_uint,
    options: *mut c_int,
    values: *mut *mut c_void,
) -> CuResult {
    let real = LINK_ADD_DATA.real(S);
    // SAFETY: the driver's own entry point for this slot, with the caller's arguments (the
    // input replaced by a NUL-terminated PTX text and its length, which the call accepts).
    let add = |kind, data, size| unsafe { std::mem::transmute::<usize, FnLinkAddData>(real)(state, kind, data, size, name, n, options, values) };
    // SAFETY: the caller's contract for the input. The driver copies what it is given.
    let patched = std::panic::catch_unwind(|| unsafe { super::patched_link_input(kind, data, size) }).ok().flatten();
    if let Some(text) = &patched {
        // SAFETY: the call's contract for its options.
        let jit = unsafe { JitOptions::save(n, options, values) };
        let r = add(1, text.as_ptr().cast_mut().cast(), text.to_bytes_with_nul().len());
        if r == SUCCESS {
            return r;
        }
        super::link_input_refused(r);
        jit.restore();
    }
    add(kind, data, size)
}

/// `cuLinkAddFile`: a PTX or fat binary file in the application's own link goes in as
/// `cuLinkAddData` would take its bytes (the probes spliced in, through the driver's own
/// `cuLinkAddData`); the file itself when no probe goes into it, for other kinds of input
/// (cubins, objects, libraries), or when the driver refuses the patched text (said once).
unsafe extern "C" fn link_add_file<const S: usize>(
    state: Handle,
    kind: c_int,
    path: *const c_char,
    n: c_uint,
    options: *mut c_int,
    values: *mut *mut c_void,
) -> CuResult {
    let real = LINK_ADD_FILE.real(S);
    // SAFETY: the caller's contract for the path (a NUL-terminated string, or null).
    let patched = std::panic::catch_unwind(|| unsafe { super::patched_link_file(kind, path) }).ok().flatten();
    if let Some(text) = &patched {
        // SAFETY: the caller's link state, options and values, with a NUL-terminated PTX text
        // (copied by the driver) named by the caller's path.
        // SAFETY: the call's contract for its options.
        let jit = unsafe { JitOptions::save(n, options, values) };
        match Driver::get().and_then(|d| unsafe { d.link_add_ptx(state, text, path, n, options, values) }) {
            Some(SUCCESS) => return SUCCESS,
            Some(r) => {
                super::link_input_refused(r);
                jit.restore();
            }
            None => {}
        }
    }
    // SAFETY: the driver's own entry point for this slot with the caller's arguments.
    unsafe { std::mem::transmute::<usize, FnLinkAddFile>(real)(state, kind, path, n, options, values) }
}

// ---- launches ----

#[allow(clippy::too_many_arguments)]
unsafe extern "C" fn launch_kernel<const S: usize>(
    f: Handle,
    gx: Dim,
    gy: Dim,
    gz: Dim,
    bx: Dim,
    by: Dim,
    bz: Dim,
    shared: Dim,
    stream: Handle,
    params: *mut *mut c_void,
    extra: *mut *mut c_void,
) -> CuResult {
    let (f, late) = super::late::substitute(f, LAUNCH_KERNEL.stream(S, stream));
    let arena = super::arena_for_launch(f, LAUNCH_KERNEL.stream(S, stream));
    let real = LAUNCH_KERNEL.real(S);
    // SAFETY: the driver's own entry point for this slot with the caller's arguments (the
    // function maybe its patched copy, which takes the same parameters).
    let r = unsafe { std::mem::transmute::<usize, FnLaunchKernel>(real)(f, gx, gy, gz, bx, by, bz, shared, stream, params, extra) };
    if r == SUCCESS {
        super::late::after_substitute(late, LAUNCH_KERNEL.stream(S, stream));
        super::after_launch(arena, LAUNCH_KERNEL.stream(S, stream));
    }
    r
}

#[allow(clippy::too_many_arguments)]
unsafe extern "C" fn launch_cooperative<const S: usize>(
    f: Handle,
    gx: Dim,
    gy: Dim,
    gz: Dim,
    bx: Dim,
    by: Dim,
    bz: Dim,
    shared: Dim,
    stream: Handle,
    params: *mut *mut c_void,
) -> CuResult {
    let (f, late) = super::late::substitute(f, LAUNCH_COOPERATIVE.stream(S, stream));
    let arena = super::arena_for_launch(f, LAUNCH_COOPERATIVE.stream(S, stream));
    let real = LAUNCH_COOPERATIVE.real(S);
    // SAFETY: as in `launch_kernel`.
    let r = unsafe { std::mem::transmute::<usize, FnLaunchCooperative>(real)(f, gx, gy, gz, bx, by, bz, shared, stream, params) };
    if r == SUCCESS {
        super::late::after_substitute(late, LAUNCH_COOPERATIVE.stream(S, stream));
        super::after_launch(arena, LAUNCH_COOPERATIVE.stream(S, stream));
    }
    r
}

unsafe extern "C" fn launch_kernel_ex<const S: usize>(config: *const LaunchConfig, f: Handle, params: *mut *mut c_void, extra: *mut *mut c_void) -> CuResult {
    // SAFETY: a non-null configuration is a readable CUlaunchConfig (the driver reads it too).
    let stream = if config.is_null() { std::ptr::null_mut() } else { unsafe { (*config).stream } };
    let (f, late) = super::late::substitute(f, LAUNCH_KERNEL_EX.stream(S, stream));
    let arena = super::arena_for_launch(f, LAUNCH_KERNEL_EX.stream(S, stream));
    let real = LAUNCH_KERNEL_EX.real(S);
    // SAFETY: as in `launch_kernel`.
    let r = unsafe { std::mem::transmute::<usize, FnLaunchKernelEx>(real)(config, f, params, extra) };
    if r == SUCCESS {
        super::late::after_substitute(late, LAUNCH_KERNEL_EX.stream(S, stream));
        super::after_launch(arena, LAUNCH_KERNEL_EX.stream(S, stream));
    }
    r
}

unsafe extern "C" fn graph_launch<const S: usize>(graph: Handle, stream: Handle) -> CuResult {
    // A graph may hold instrumented kernels: set them up, write this context's maps back after.
    let arena = super::arena_for_graph(GRAPH_LAUNCH.stream(S, stream));
    let real = GRAPH_LAUNCH.real(S);
    // SAFETY: as in `launch_kernel`.
    let r = unsafe { std::mem::transmute::<usize, FnGraphLaunch>(real)(graph, stream) };
    if r == SUCCESS {
        super::after_launch(arena, GRAPH_LAUNCH.stream(S, stream));
    }
    r
}

// ---- synchronisation points: the application reads its results, we copy the maps back ----

/// A wrapper that calls the real entry point of its slot, then copies back the maps of launches
/// not copied back yet.
macro_rules! sync_point_wrapper {
    ($(#[$doc:meta])* $name:ident, $slots:ident, ($($arg:ident: $t:ty),*)) => {
        $(#[$doc])*
        unsafe extern "C" fn $name<const S: usize>($($arg: $t),*) -> CuResult {
            // SAFETY: the driver's own entry point for this slot, with the caller's arguments.
            let r = unsafe { std::mem::transmute::<usize, unsafe extern "C" fn($($t),*) -> CuResult>($slots.real(S))($($arg),*) };
            super::sync_point();
            r
        }
    };
}

sync_point_wrapper!(
    /// `cuCtxSynchronize` (no argument) and, from CUDA 13, `cuCtxSynchronize_v2(CUcontext)`:
    /// the argument is passed on either way (a function without parameters ignores it in the
    /// System V ABI).
    ctx_synchronize,
    CTX_SYNCHRONIZE,
    (ctx: Handle)
);
sync_point_wrapper!(stream_synchronize, STREAM_SYNCHRONIZE, (stream: Handle));
sync_point_wrapper!(event_synchronize, EVENT_SYNCHRONIZE, (event: Handle));
sync_point_wrapper!(memcpy_dtoh, MEMCPY_DTOH, (dst: *mut c_void, src: u64, n: usize));
sync_point_wrapper!(memcpy, MEMCPY, (dst: u64, src: u64, n: usize));

// ---- teardown: nothing kept for a context or module outlives it ----

type FnOneHandle = unsafe extern "C" fn(Handle) -> CuResult;
type FnOneDevice = unsafe extern "C" fn(c_int) -> CuResult;

/// `cuCtxDestroy`: the context's maps copied back before, what was kept for it forgotten after.
unsafe extern "C" fn ctx_destroy<const S: usize>(ctx: Handle) -> CuResult {
    super::before_teardown(ctx);
    // SAFETY: the driver's own entry point for this slot with the caller's argument.
    let r = unsafe { std::mem::transmute::<usize, FnOneHandle>(CTX_DESTROY.real(S))(ctx) };
    if r == SUCCESS {
        super::context_gone(ctx);
    }
    r
}

/// `cuDevicePrimaryCtxRetain`: counted, so that a release that is not the last leaves the
/// context alone.
unsafe extern "C" fn primary_ctx_retain<const S: usize>(ctx: *mut Handle, device: c_int) -> CuResult {
    // SAFETY: the driver's own entry point for this slot with the caller's arguments.
    let r = unsafe { std::mem::transmute::<usize, unsafe extern "C" fn(*mut Handle, c_int) -> CuResult>(PRIMARY_CTX_RETAIN.real(S))(ctx, device) };
    if r == SUCCESS {
        super::primary_retained(device);
    }
    r
}

/// `cuDevicePrimaryCtxRelease`: the last release destroys the primary context (as
/// `ctx_destroy`). A release the retains counted show is not the last is passed on alone;
/// where they are not known (retains before the agent came), whether the context went is asked
/// after the call.
unsafe extern "C" fn primary_ctx_release<const S: usize>(device: c_int) -> CuResult {
    let real = PRIMARY_CTX_RELEASE.real(S);
    if !super::primary_release_may_end(device) {
        // SAFETY: the driver's own entry point for this slot with the caller's argument.
        return unsafe { std::mem::transmute::<usize, FnOneDevice>(real)(device) };
    }
    // SAFETY: the driver's own entry point for this slot.
    unsafe { primary_teardown(real, device, false) }
}

/// `cuDevicePrimaryCtxReset` (`cudaDeviceReset`): destroys the primary context, as `ctx_destroy`.
unsafe extern "C" fn primary_ctx_reset<const S: usize>(device: c_int) -> CuResult {
    // SAFETY: the driver's own entry point for this slot.
    unsafe { primary_teardown(PRIMARY_CTX_RESET.real(S), device, true) }
}

/// Calls `real`, a driver call that may destroy the primary context of `device` (always does:
/// `destroys`), with the context's maps copied back before and what was kept for it forgotten
/// after.
///
/// # Safety
/// `real` is the driver's release or reset entry point.
unsafe fn primary_teardown(real: usize, device: c_int, destroys: bool) -> CuResult {
    let ctx = super::primary_context(device);
    if let Some(c) = ctx {
        super::before_teardown(c);
    }
    // SAFETY: the caller's contract, with the application's argument.
    let r = unsafe { std::mem::transmute::<usize, FnOneDevice>(real)(device) };
    if let (SUCCESS, Some(c)) = (r, ctx) {
        if destroys || !super::primary_active(device) {
            super::context_gone(c);
        }
    }
    r
}

/// `cuModuleUnload`: what was kept for the module is forgotten.
unsafe extern "C" fn module_unload<const S: usize>(module: Handle) -> CuResult {
    // SAFETY: the driver's own entry point for this slot with the caller's argument.
    let r = unsafe { std::mem::transmute::<usize, FnOneHandle>(MODULE_UNLOAD.real(S))(module) };
    if r == SUCCESS {
        super::module_gone(module, false);
    }
    r
}

/// `cuLibraryUnload`: what was kept for the library and its modules is forgotten.
unsafe extern "C" fn library_unload<const S: usize>(library: Handle) -> CuResult {
    // SAFETY: the driver's own entry point for this slot with the caller's argument.
    let r = unsafe { std::mem::transmute::<usize, FnOneHandle>(LIBRARY_UNLOAD.real(S))(library) };
    if r == SUCCESS {
        super::module_gone(library, true);
    }
    r
}

// ---- applications linked against libcuda itself ----

/// `CUDA_ERROR_NOT_FOUND`: the driver has no such entry point.
const NOT_FOUND: CuResult = 500;

/// The driver's own definition of `symbol_name`, looked up in libcuda's scope rather than the
/// global one (where the agent's definitions come first); 0 when libcuda is not loaded or lacks
/// it.
pub(super) fn driver_symbol(symbol_name: &CStr) -> usize {
    // SAFETY: dlopen(3) with RTLD_NOLOAD only hands back a library already loaded (a reference
    // dropped below); the name is NUL-terminated.
    let handle = unsafe { libc::dlopen(c"libcuda.so.1".as_ptr(), libc::RTLD_NOW | libc::RTLD_NOLOAD) };
    if handle.is_null() {
        return 0;
    }
    let real = match REAL_DLSYM.load(Ordering::Acquire) {
        0 => resolve_real_dlsym(),
        f => f,
    };
    let p = if real == 0 {
        0
    } else {
        // SAFETY: `real` is glibc's dlsym; the handle is live and the name NUL-terminated.
        unsafe { std::mem::transmute::<usize, FnDlsym>(real)(handle, symbol_name.as_ptr()) as usize }
    };
    // SAFETY: the reference dlopen took above.
    unsafe { libc::dlclose(handle) };
    p
}

/// The entry point to call for a direct call of driver symbol `symbol` (the application was
/// linked with `-lcuda`): the same wrapper `cuGetProcAddress` hands out for `name`
/// (`per_thread`: the `_ptsz` variant) around the driver's own, worked out at the first call
/// and kept in `entry` (launches are a hot path; the agent has set up its probes before the
/// application's code runs). The driver's `cuGetProcAddress` is taken too, which the agent's
/// own driver calls need. 0 when the driver lacks the symbol.
fn direct_entry(entry: &AtomicUsize, symbol_name: &CStr, name: &CStr, per_thread: bool) -> usize {
    let cached = entry.load(Ordering::Acquire);
    if cached != 0 {
        return cached;
    }
    let real = driver_symbol(symbol_name);
    if real == 0 {
        return 0;
    }
    if REAL_GET_PROC_V2.load(Ordering::Acquire) == 0 && REAL_GET_PROC_V1.load(Ordering::Acquire) == 0 {
        for (get, v2) in [(c"cuGetProcAddress_v2", true), (c"cuGetProcAddress", false)] {
            let p = driver_symbol(get);
            if p != 0 {
                (if v2 { &REAL_GET_PROC_V2 } else { &REAL_GET_PROC_V1 }).store(p, Ordering::Release);
                break;
            }
        }
    }
    let f = std::panic::catch_unwind(|| symbol(name, real, None, if per_thread { 2 } else { 0 })).unwrap_or(real);
    entry.store(f, Ordering::Release);
    f
}

/// Definitions of the wrapped entry points for applications that call the driver directly
/// (`-lcuda`, as the driver API samples do): the agent is preloaded, so the dynamic linker
/// binds their calls here; each goes to the driver through [`direct_entry`].
macro_rules! direct_entry_points {
    ($($(#[$doc:meta])* $sym:ident as $name:literal $(per_thread $pt:literal)? ($($arg:ident: $t:ty),*);)*) => {
        $(
            $(#[$doc])*
            ///
            /// # Safety
            /// Same contract as the driver's entry point of this name (cuda.h).
            #[unsafe(no_mangle)]
            pub unsafe extern "C" fn $sym($($arg: $t),*) -> CuResult {
                static ENTRY: AtomicUsize = AtomicUsize::new(0);
                let per_thread = false $(|| $pt)?;
                let symbol_name = CStr::from_bytes_with_nul(concat!(stringify!($sym), "\0").as_bytes()).unwrap_or(c"");
                let f = direct_entry(&ENTRY, symbol_name, $name, per_thread);
                if f == 0 {
                    return NOT_FOUND;
                }
                // SAFETY: `f` is the driver's entry point of this name or our wrapper of it, both
                // of this signature; the arguments are the caller's.
                unsafe { std::mem::transmute::<usize, unsafe extern "C" fn($($t),*) -> CuResult>(f)($($arg),*) }
            }
        )*

        /// The driver's own entry point when `addr` is one of the definitions above: a driver
        /// whose `cuGetProcAddress` hands out the addresses of its exported functions gets them
        /// bound to ours by the dynamic linker (the agent comes first), and wrapping ours would
        /// go round twice. None for any other address.
        pub(super) fn driver_behind(addr: usize) -> Option<usize> {
            $(
                if addr == $sym as *const () as usize {
                    let symbol_name = CStr::from_bytes_with_nul(concat!(stringify!($sym), "\0").as_bytes()).ok()?;
                    let p = driver_symbol(symbol_name);
                    return (p != 0).then_some(p);
                }
            )*
            None
        }
    };
}

direct_entry_points! {
    /// `cuModuleLoad` (a module file), called directly.
    cuModuleLoad as c"cuModuleLoad" (module: *mut Handle, fname: *const c_char);
    /// `cuModuleLoadData`, called directly.
    cuModuleLoadData as c"cuModuleLoadData" (module: *mut Handle, image: *const c_void);
    /// `cuModuleLoadDataEx`, called directly.
    cuModuleLoadDataEx as c"cuModuleLoadDataEx" (module: *mut Handle, image: *const c_void, n: c_uint, options: *mut c_int, values: *mut *mut c_void);
    /// `cuModuleLoadFatBinary`, called directly.
    cuModuleLoadFatBinary as c"cuModuleLoadFatBinary" (module: *mut Handle, image: *const c_void);
    /// `cuLibraryLoadData`, called directly.
    cuLibraryLoadData as c"cuLibraryLoadData" (library: *mut Handle, code: *const c_void, jit_options: *mut c_int, jit_values: *mut *mut c_void, n_jit: c_uint, lib_options: *mut c_int, lib_values: *mut *mut c_void, n_lib: c_uint);
    /// `cuLaunchKernel`, called directly.
    cuLaunchKernel as c"cuLaunchKernel" (f: Handle, gx: Dim, gy: Dim, gz: Dim, bx: Dim, by: Dim, bz: Dim, shared: Dim, stream: Handle, params: *mut *mut c_void, extra: *mut *mut c_void);
    /// `cuLaunchKernel` on the per-thread default stream, called directly.
    cuLaunchKernel_ptsz as c"cuLaunchKernel" per_thread true (f: Handle, gx: Dim, gy: Dim, gz: Dim, bx: Dim, by: Dim, bz: Dim, shared: Dim, stream: Handle, params: *mut *mut c_void, extra: *mut *mut c_void);
    /// `cuLaunchKernelEx`, called directly.
    cuLaunchKernelEx as c"cuLaunchKernelEx" (config: *const LaunchConfig, f: Handle, params: *mut *mut c_void, extra: *mut *mut c_void);
    /// `cuLaunchKernelEx` on the per-thread default stream, called directly.
    cuLaunchKernelEx_ptsz as c"cuLaunchKernelEx" per_thread true (config: *const LaunchConfig, f: Handle, params: *mut *mut c_void, extra: *mut *mut c_void);
    /// `cuLaunchCooperativeKernel`, called directly.
    cuLaunchCooperativeKernel as c"cuLaunchCooperativeKernel" (f: Handle, gx: Dim, gy: Dim, gz: Dim, bx: Dim, by: Dim, bz: Dim, shared: Dim, stream: Handle, params: *mut *mut c_void);
    /// `cuLaunchCooperativeKernel` on the per-thread default stream, called directly.
    cuLaunchCooperativeKernel_ptsz as c"cuLaunchCooperativeKernel" per_thread true (f: Handle, gx: Dim, gy: Dim, gz: Dim, bx: Dim, by: Dim, bz: Dim, shared: Dim, stream: Handle, params: *mut *mut c_void);
    /// `cuGraphLaunch`, called directly.
    cuGraphLaunch as c"cuGraphLaunch" (graph: Handle, stream: Handle);
    /// `cuGraphLaunch` on the per-thread default stream, called directly.
    cuGraphLaunch_ptsz as c"cuGraphLaunch" per_thread true (graph: Handle, stream: Handle);
    /// `cuCtxSynchronize`, called directly.
    cuCtxSynchronize as c"cuCtxSynchronize" ();
    /// `cuStreamSynchronize`, called directly.
    cuStreamSynchronize as c"cuStreamSynchronize" (stream: Handle);
    /// `cuStreamSynchronize` of the per-thread default stream, called directly.
    cuStreamSynchronize_ptsz as c"cuStreamSynchronize" per_thread true (stream: Handle);
    /// `cuEventSynchronize`, called directly.
    cuEventSynchronize as c"cuEventSynchronize" (event: Handle);
    /// `cuMemcpyDtoH` (`_v2`, as cuda.h names it), called directly.
    cuMemcpyDtoH_v2 as c"cuMemcpyDtoH_v2" (dst: *mut c_void, src: u64, n: usize);
    /// `cuMemcpy`, called directly.
    cuMemcpy as c"cuMemcpy" (dst: u64, src: u64, n: usize);
    /// `cuLinkAddData` (`_v2`, as cuda.h names it), called directly.
    cuLinkAddData_v2 as c"cuLinkAddData" (state: Handle, kind: c_int, data: *mut c_void, size: usize, name: *const c_char, n: c_uint, options: *mut c_int, values: *mut *mut c_void);
    /// `cuCtxDestroy` (`_v2`, as cuda.h names it), called directly.
    cuCtxDestroy_v2 as c"cuCtxDestroy" (ctx: Handle);
    /// `cuDevicePrimaryCtxRetain`, called directly.
    cuDevicePrimaryCtxRetain as c"cuDevicePrimaryCtxRetain" (ctx: *mut Handle, device: c_int);
    /// `cuDevicePrimaryCtxRelease` (`_v2`, as cuda.h names it), called directly.
    cuDevicePrimaryCtxRelease_v2 as c"cuDevicePrimaryCtxRelease" (device: c_int);
    /// `cuDevicePrimaryCtxReset` (`_v2`, as cuda.h names it), called directly.
    cuDevicePrimaryCtxReset_v2 as c"cuDevicePrimaryCtxReset" (device: c_int);
    /// `cuModuleUnload`, called directly.
    cuModuleUnload as c"cuModuleUnload" (module: Handle);
    /// `cuLibraryUnload`, called directly.
    cuLibraryUnload as c"cuLibraryUnload" (library: Handle);
    /// `cuLinkAddFile` (`_v2`, as cuda.h names it), called directly.
    cuLinkAddFile_v2 as c"cuLinkAddFile" (state: Handle, kind: c_int, path: *const c_char, n: c_uint, options: *mut c_int, values: *mut *mut c_void);
}
