//! The part of the CUDA driver API the agent calls itself, through the application's own
//! `libcuda` (the real `cuGetProcAddress` the application was handed): no second copy of the
//! driver, no CUDA toolkit at build time.
//!
//! Every function here wraps one driver call; the safety contract of each is the driver's, as
//! documented at <https://docs.nvidia.com/cuda/cuda-driver-api/>.

use std::ffi::{c_char, c_int, c_uint, c_void, CStr, CString};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::OnceLock;

/// `CUresult`.
pub type CuResult = c_int;
/// `CUDA_SUCCESS`.
pub const SUCCESS: CuResult = 0;
/// `CUdeviceptr`.
pub type DevPtr = u64;
/// Any driver handle (`CUmodule`, `CUfunction`, `CUstream`, ...).
pub type Handle = *mut c_void;
/// `CU_STREAM_PER_THREAD`: what stream 0 means to a `_ptsz` entry point.
pub const STREAM_PER_THREAD: usize = 2;

/// `cuGetProcAddress` as CUDA 11.3 defined it (`cuGetProcAddress` in libcuda).
pub type GetProcAddressV1 = unsafe extern "C" fn(*const c_char, *mut *mut c_void, c_int, u64) -> CuResult;
/// `cuGetProcAddress_v2` (CUDA 12.0), with the symbol status out-parameter.
pub type GetProcAddressV2 = unsafe extern "C" fn(*const c_char, *mut *mut c_void, c_int, u64, *mut c_int) -> CuResult;

/// The real `cuGetProcAddress` entry points, as the application got them from `dlsym`.
pub static REAL_GET_PROC_V1: AtomicUsize = AtomicUsize::new(0);
/// See [`REAL_GET_PROC_V1`].
pub static REAL_GET_PROC_V2: AtomicUsize = AtomicUsize::new(0);

/// The driver version the agent asks entry points for (the `_v2` ABIs of CUDA 12).
const ABI_VERSION: c_int = 12000;

type FnMemAlloc = unsafe extern "C" fn(*mut DevPtr, usize) -> CuResult;
type FnMemcpyDtoHAsync = unsafe extern "C" fn(*mut c_void, DevPtr, usize, Handle) -> CuResult;
type FnMemcpyHtoDAsync = unsafe extern "C" fn(DevPtr, *const c_void, usize, Handle) -> CuResult;
type FnMemsetD8Async = unsafe extern "C" fn(DevPtr, u8, usize, Handle) -> CuResult;
type FnMemAllocHost = unsafe extern "C" fn(*mut *mut c_void, usize) -> CuResult;
type FnHostFn = unsafe extern "C" fn(*mut c_void);
type FnLaunchHostFunc = unsafe extern "C" fn(Handle, FnHostFn, *mut c_void) -> CuResult;
type FnModuleGetGlobal = unsafe extern "C" fn(*mut DevPtr, *mut usize, Handle, *const c_char) -> CuResult;
type FnFuncGetModule = unsafe extern "C" fn(*mut Handle, Handle) -> CuResult;
type FnKernelGetFunction = unsafe extern "C" fn(*mut Handle, Handle) -> CuResult;
type FnCtxGetCurrent = unsafe extern "C" fn(*mut Handle) -> CuResult;
type FnCtxGetDevice = unsafe extern "C" fn(*mut c_int) -> CuResult;
type FnDeviceGet = unsafe extern "C" fn(*mut c_int, c_int) -> CuResult;
type FnDeviceGetAttribute = unsafe extern "C" fn(*mut c_int, c_int, c_int) -> CuResult;
type FnDeviceGetCount = unsafe extern "C" fn(*mut c_int) -> CuResult;
type FnLibraryGetModule = unsafe extern "C" fn(*mut Handle, Handle) -> CuResult;
type FnStreamIsCapturing = unsafe extern "C" fn(Handle, *mut c_int) -> CuResult;
type FnGetErrorName = unsafe extern "C" fn(CuResult, *mut *const c_char) -> CuResult;
type FnModuleGetFunction = unsafe extern "C" fn(*mut Handle, Handle, *const c_char) -> CuResult;
type FnFuncGetName = unsafe extern "C" fn(*mut *const c_char, Handle) -> CuResult;
type FnMemcpyDtoDAsync = unsafe extern "C" fn(DevPtr, DevPtr, usize, Handle) -> CuResult;
type FnCtxPushCurrent = unsafe extern "C" fn(Handle) -> CuResult;
type FnCtxPopCurrent = unsafe extern "C" fn(*mut Handle) -> CuResult;
type FnCtxSynchronize = unsafe extern "C" fn() -> CuResult;
type FnStreamCreate = unsafe extern "C" fn(*mut Handle, c_uint) -> CuResult;
type FnStreamSynchronize = unsafe extern "C" fn(Handle) -> CuResult;
type FnPrimaryCtxGetState = unsafe extern "C" fn(c_int, *mut c_uint, *mut c_int) -> CuResult;
type FnPrimaryCtxRetain = unsafe extern "C" fn(*mut Handle, c_int) -> CuResult;
type FnPrimaryCtxRelease = unsafe extern "C" fn(c_int) -> CuResult;
type FnMemHostRegister = unsafe extern "C" fn(*mut c_void, usize, c_uint) -> CuResult;
type FnMemHostGetDevicePointer = unsafe extern "C" fn(*mut DevPtr, *mut c_void, c_uint) -> CuResult;
type FnLinkCreate = unsafe extern "C" fn(c_uint, *mut c_int, *mut *mut c_void, *mut Handle) -> CuResult;
type FnLinkAddData = unsafe extern "C" fn(Handle, c_int, *mut c_void, usize, *const c_char, c_uint, *mut c_int, *mut *mut c_void) -> CuResult;
type FnLinkComplete = unsafe extern "C" fn(Handle, *mut *mut c_void, *mut usize) -> CuResult;
type FnLinkDestroy = unsafe extern "C" fn(Handle) -> CuResult;
type FnLinkAddFile = unsafe extern "C" fn(Handle, c_int, *const c_char, c_uint, *mut c_int, *mut *mut c_void) -> CuResult;

/// `CU_MEMHOSTREGISTER_PORTABLE | CU_MEMHOSTREGISTER_DEVICEMAP`: pinned for every context,
/// mapped into the device's address space.
const HOST_REGISTER_FLAGS: c_uint = 0x01 | 0x02;
/// `CU_STREAM_NON_BLOCKING`: a stream that does not wait for the legacy default stream (nor it
/// for this one).
const STREAM_NON_BLOCKING: c_uint = 0x1;
/// `CUDA_ERROR_HOST_MEMORY_ALREADY_REGISTERED`.
const HOST_MEMORY_ALREADY_REGISTERED: CuResult = 712;

/// The entry points the agent uses.
pub struct Driver {
    mem_alloc: FnMemAlloc,
    memcpy_dtoh_async: FnMemcpyDtoHAsync,
    memset_d8_async: FnMemsetD8Async,
    memcpy_htod_async: FnMemcpyHtoDAsync,
    mem_alloc_host: FnMemAllocHost,
    launch_host_func: FnLaunchHostFunc,
    module_get_global: FnModuleGetGlobal,
    func_get_module: FnFuncGetModule,
    kernel_get_function: Option<FnKernelGetFunction>,
    ctx_get_current: FnCtxGetCurrent,
    ctx_get_device: FnCtxGetDevice,
    device_get: FnDeviceGet,
    device_get_attribute: FnDeviceGetAttribute,
    get_error_name: Option<FnGetErrorName>,
    stream_is_capturing: Option<FnStreamIsCapturing>,
    library_get_module: Option<FnLibraryGetModule>,
    mem_host_register: Option<FnMemHostRegister>,
    mem_host_get_device_pointer: Option<FnMemHostGetDevicePointer>,
    module_load_data: Option<FnModuleLoadData>,
    module_get_function: Option<FnModuleGetFunction>,
    func_get_name: Option<FnFuncGetName>,
    memcpy_dtod_async: Option<FnMemcpyDtoDAsync>,
    ctx_push_current: Option<FnCtxPushCurrent>,
    ctx_pop_current: Option<FnCtxPopCurrent>,
    link: Option<(FnLinkCreate, FnLinkAddData, FnLinkComplete, FnLinkDestroy)>,
    link_add_file: Option<FnLinkAddFile>,
    device_get_count: Option<FnDeviceGetCount>,
    ctx_synchronize: FnCtxSynchronize,
    stream_create: Option<FnStreamCreate>,
    stream_synchronize: FnStreamSynchronize,
    primary_ctx: Option<(FnPrimaryCtxGetState, FnPrimaryCtxRetain, FnPrimaryCtxRelease)>,
}

/// Asks the real `cuGetProcAddress` for `name`.
fn lookup(name: &CStr) -> Option<usize> {
    lookup_version(name, ABI_VERSION, 0)
}

/// Asks the real `cuGetProcAddress` for `name` at driver ABI `version` with `flags`
/// (`CU_GET_PROC_ADDRESS_PER_THREAD_DEFAULT_STREAM` = 2: the per-thread-stream variant).
pub fn lookup_version(name: &CStr, version: c_int, flags: u64) -> Option<usize> {
    let mut p: *mut c_void = std::ptr::null_mut();
    let v2 = REAL_GET_PROC_V2.load(Ordering::Acquire);
    let v1 = REAL_GET_PROC_V1.load(Ordering::Acquire);
    let r = if v2 != 0 {
        let mut status = 0;
        // SAFETY: `v2` is the driver's cuGetProcAddress_v2 (captured from dlsym/cuGetProcAddress
        // for that name); the name is NUL-terminated and `p`/`status` are valid out-pointers.
        unsafe { std::mem::transmute::<usize, GetProcAddressV2>(v2)(name.as_ptr(), &mut p, version, flags, &mut status) }
    } else if v1 != 0 {
        // SAFETY: as above, for the CUDA 11.3 signature.
        unsafe { std::mem::transmute::<usize, GetProcAddressV1>(v1)(name.as_ptr(), &mut p, version, flags) }
    } else {
        return None;
    };
    // A driver whose table holds its exported functions hands out what the dynamic linker
    // bound those names to: the agent's definitions for `-lcuda` applications. The agent's
    // own calls go to the driver's.
    (r == SUCCESS && !p.is_null()).then(|| super::hooks::driver_behind(p as usize).unwrap_or(p as usize))
}

/// An entry point the driver may lack (older drivers): `Option<$t>`. One introduced after
/// CUDA 12.0 names the version that introduced it: the driver hands out nothing for a name
/// asked for at an older version.
macro_rules! optional_entry {
    ($name:literal as $t:ty, since $version:literal) => {
        lookup_version($name, $version, 0).map(|p| {
            // SAFETY: the driver returned this entry point for this name at the ABI of the
            // version that introduced it, whose signature is the type it is converted to
            // (checked against cuda.h).
            unsafe { std::mem::transmute::<usize, $t>(p) }
        })
    };
    ($name:literal as $t:ty) => {
        lookup($name).map(|p| {
            // SAFETY: the driver returned this entry point for this name at the CUDA 12 ABI,
            // whose signature is the type it is converted to (checked against cuda.h).
            unsafe { std::mem::transmute::<usize, $t>(p) }
        })
    };
}

/// An entry point the agent cannot do without: an error naming it when missing.
macro_rules! entry {
    ($name:literal as $t:ty) => {
        optional_entry!($name as $t).ok_or_else(|| format!("the driver has no {}", $name.to_string_lossy()))?
    };
}

impl Driver {
    /// The entry points, once the application has fetched `cuGetProcAddress`; None before, or
    /// when the driver lacks one of them (said once).
    pub fn get() -> Option<&'static Driver> {
        static DRIVER: OnceLock<Option<Driver>> = OnceLock::new();
        if REAL_GET_PROC_V1.load(Ordering::Acquire) == 0 && REAL_GET_PROC_V2.load(Ordering::Acquire) == 0 {
            return None;
        }
        DRIVER.get_or_init(|| Driver::load().map_err(|e| eprintln!("bpftime: CUDA probes are off: {e}")).ok()).as_ref()
    }

    fn load() -> Result<Driver, String> {
        Ok(Driver {
            mem_alloc: entry!(c"cuMemAlloc" as FnMemAlloc),
            memcpy_dtoh_async: entry!(c"cuMemcpyDtoHAsync" as FnMemcpyDtoHAsync),
            memset_d8_async: entry!(c"cuMemsetD8Async" as FnMemsetD8Async),
            memcpy_htod_async: entry!(c"cuMemcpyHtoDAsync" as FnMemcpyHtoDAsync),
            mem_alloc_host: entry!(c"cuMemAllocHost" as FnMemAllocHost),
            launch_host_func: entry!(c"cuLaunchHostFunc" as FnLaunchHostFunc),
            module_get_global: entry!(c"cuModuleGetGlobal" as FnModuleGetGlobal),
            func_get_module: entry!(c"cuFuncGetModule" as FnFuncGetModule),
            kernel_get_function: optional_entry!(c"cuKernelGetFunction" as FnKernelGetFunction),
            ctx_get_current: entry!(c"cuCtxGetCurrent" as FnCtxGetCurrent),
            ctx_get_device: entry!(c"cuCtxGetDevice" as FnCtxGetDevice),
            device_get: entry!(c"cuDeviceGet" as FnDeviceGet),
            device_get_attribute: entry!(c"cuDeviceGetAttribute" as FnDeviceGetAttribute),
            get_error_name: optional_entry!(c"cuGetErrorName" as FnGetErrorName),
            library_get_module: optional_entry!(c"cuLibraryGetModule" as FnLibraryGetModule),
            stream_is_capturing: optional_entry!(c"cuStreamIsCapturing" as FnStreamIsCapturing),
            mem_host_register: optional_entry!(c"cuMemHostRegister" as FnMemHostRegister),
            mem_host_get_device_pointer: optional_entry!(c"cuMemHostGetDevicePointer" as FnMemHostGetDevicePointer),
            // Needed only for applications that were running before the agent came.
            module_load_data: optional_entry!(c"cuModuleLoadData" as FnModuleLoadData),
            module_get_function: optional_entry!(c"cuModuleGetFunction" as FnModuleGetFunction),
            func_get_name: optional_entry!(c"cuFuncGetName" as FnFuncGetName, since 12030),
            memcpy_dtod_async: optional_entry!(c"cuMemcpyDtoDAsync" as FnMemcpyDtoDAsync),
            ctx_push_current: optional_entry!(c"cuCtxPushCurrent" as FnCtxPushCurrent),
            ctx_pop_current: optional_entry!(c"cuCtxPopCurrent" as FnCtxPopCurrent),
            // Needed only for relocatable device code.
            link: Some((
                optional_entry!(c"cuLinkCreate" as FnLinkCreate),
                optional_entry!(c"cuLinkAddData" as FnLinkAddData),
                optional_entry!(c"cuLinkComplete" as FnLinkComplete),
                optional_entry!(c"cuLinkDestroy" as FnLinkDestroy),
            ))
            .and_then(|(c, a, m, d)| Some((c?, a?, m?, d?))),
            link_add_file: optional_entry!(c"cuLinkAddFile" as FnLinkAddFile),
            device_get_count: optional_entry!(c"cuDeviceGetCount" as FnDeviceGetCount),
            ctx_synchronize: entry!(c"cuCtxSynchronize" as FnCtxSynchronize),
            stream_create: optional_entry!(c"cuStreamCreate" as FnStreamCreate),
            stream_synchronize: entry!(c"cuStreamSynchronize" as FnStreamSynchronize),
            primary_ctx: Some((
                optional_entry!(c"cuDevicePrimaryCtxGetState" as FnPrimaryCtxGetState),
                optional_entry!(c"cuDevicePrimaryCtxRetain" as FnPrimaryCtxRetain),
                optional_entry!(c"cuDevicePrimaryCtxRelease" as FnPrimaryCtxRelease),
            ))
            .and_then(|(g, a, r)| Some((g?, a?, r?))),
        })
    }

    /// The driver's name for an error code (`CUDA_ERROR_INVALID_PTX`), or the number.
    pub fn error_name(&self, r: CuResult) -> String {
        let mut s: *const c_char = std::ptr::null();
        if let Some(f) = self.get_error_name {
            // SAFETY: cuGetErrorName writes a pointer to a static string or fails.
            if unsafe { f(r, &mut s) } == SUCCESS && !s.is_null() {
                // SAFETY: the driver returned a NUL-terminated static string.
                return unsafe { CStr::from_ptr(s) }.to_string_lossy().into_owned();
            }
        }
        format!("CUDA error {r}")
    }

    fn check(&self, r: CuResult, what: &str) -> Result<(), String> {
        if r == SUCCESS {
            Ok(())
        } else {
            Err(format!("{what}: {}", self.error_name(r)))
        }
    }

    /// `cuMemAlloc`: `len` bytes of device memory in the current context.
    pub fn mem_alloc(&self, len: usize) -> Result<DevPtr, String> {
        let mut p = 0;
        // SAFETY: `p` is a valid out-pointer.
        self.check(unsafe { (self.mem_alloc)(&mut p, len) }, "cuMemAlloc")?;
        Ok(p)
    }

    /// `cuMemcpyDtoHAsync` into pinned memory, ordered on `stream`.
    ///
    /// # Safety
    /// `dst` must be pinned host memory of at least `len` bytes that stays valid until the
    /// copy has run on the stream.
    pub unsafe fn memcpy_dtoh_async(&self, dst: *mut u8, src: DevPtr, len: usize, stream: Handle) -> Result<(), String> {
        // SAFETY: the caller keeps `dst` valid; `src` came from the driver.
        self.check(unsafe { (self.memcpy_dtoh_async)(dst.cast(), src, len, stream) }, "cuMemcpyDtoHAsync")
    }

    /// `cuMemcpyHtoDAsync` from pageable memory, ordered on `stream` (the driver has taken the
    /// bytes when it returns).
    pub fn memcpy_htod_async(&self, dst: DevPtr, data: &[u8], stream: Handle) -> Result<(), String> {
        // SAFETY: `data` is readable for its length; pageable sources are staged before return.
        self.check(unsafe { (self.memcpy_htod_async)(dst, data.as_ptr().cast(), data.len(), stream) }, "cuMemcpyHtoDAsync")
    }

    /// `cuMemcpyHtoDAsync` from pinned memory, ordered on `stream`: the bytes are read when
    /// the stream gets there (a host function queued before it may still write them).
    ///
    /// # Safety
    /// `src` must be pinned host memory of at least `len` bytes that stays valid, and is not
    /// written after the copy has been reached on the stream, until it has run.
    pub unsafe fn memcpy_htod_async_pinned(&self, dst: DevPtr, src: *const u8, len: usize, stream: Handle) -> Result<(), String> {
        // SAFETY: the caller keeps `src` valid; `dst` came from the driver.
        self.check(unsafe { (self.memcpy_htod_async)(dst, src.cast(), len, stream) }, "cuMemcpyHtoDAsync")
    }

    /// `cuStreamCreate` of a non-blocking stream in the current context, for copies that must
    /// finish before the host goes on without waiting for the application's work on other
    /// streams (a synchronous copy runs on the legacy default stream, which waits for every
    /// blocking stream: behind a kernel that waits for the host, it would never run). The
    /// legacy default stream (null) when the driver cannot make one.
    pub fn private_stream(&self) -> Handle {
        let mut s: Handle = std::ptr::null_mut();
        match self.stream_create {
            // SAFETY: a valid out-pointer and a flag cuda.h defines.
            Some(create) if unsafe { create(&mut s, STREAM_NON_BLOCKING) } == SUCCESS => s,
            _ => std::ptr::null_mut(),
        }
    }

    /// `cuStreamSynchronize` (the driver's own, not the application's wrapped one).
    pub fn stream_synchronize(&self, stream: Handle) -> Result<(), String> {
        // SAFETY: a stream handle from the driver (or null, the legacy default stream).
        self.check(unsafe { (self.stream_synchronize)(stream) }, "cuStreamSynchronize")
    }

    /// `cuCtxSynchronize` of the current context (the driver's own).
    pub fn ctx_synchronize(&self) -> Result<(), String> {
        // SAFETY: no arguments; the driver checks that a context is current.
        self.check(unsafe { (self.ctx_synchronize)() }, "cuCtxSynchronize")
    }

    /// Copies `data` to `dst` on `stream` and waits for it (only for it: see
    /// [`Driver::private_stream`]).
    pub fn copy_to_device_now(&self, dst: DevPtr, data: &[u8], stream: Handle) -> Result<(), String> {
        self.memcpy_htod_async(dst, data, stream)?;
        self.stream_synchronize(stream)
    }

    /// Copies `out.len()` bytes from `src` on `stream` and waits for it.
    pub fn copy_from_device_now(&self, out: &mut [u8], src: DevPtr, stream: Handle) -> Result<(), String> {
        // SAFETY: `out` is writable for its length and outlives the copy, which is waited for
        // before returning (pageable memory: the driver stages it).
        self.check(unsafe { (self.memcpy_dtoh_async)(out.as_mut_ptr().cast(), src, out.len(), stream) }, "cuMemcpyDtoHAsync")?;
        self.stream_synchronize(stream)
    }

    /// The primary context of `device` while it is active (it exists), else None.
    pub fn primary_context(&self, device: c_int) -> Option<Handle> {
        let (get_state, retain, release) = self.primary_ctx?;
        let (mut flags, mut active) = (0, 0);
        // SAFETY: valid out-pointers; the driver checks the device.
        if unsafe { get_state(device, &mut flags, &mut active) } != SUCCESS || active == 0 {
            return None;
        }
        let mut ctx: Handle = std::ptr::null_mut();
        // SAFETY: as above. Retaining an active primary context hands out its handle; the
        // release below gives the retain back (the context stays: it was retained before).
        if unsafe { retain(&mut ctx, device) } != SUCCESS {
            return None;
        }
        // SAFETY: the retain just taken.
        unsafe { release(device) };
        (!ctx.is_null()).then_some(ctx)
    }

    /// `cuMemsetD8Async`: zeroes `len` bytes at `dst`, ordered on `stream`.
    pub fn memset_async(&self, dst: DevPtr, len: usize, stream: Handle) -> Result<(), String> {
        // SAFETY: device memory from the driver; nothing on the host is touched.
        self.check(unsafe { (self.memset_d8_async)(dst, 0, len, stream) }, "cuMemsetD8Async")
    }

    /// `cuMemAllocHost`: `len` bytes of pinned host memory (never freed: buffers are reused).
    pub fn mem_alloc_host(&self, len: usize) -> Result<*mut u8, String> {
        let mut p: *mut c_void = std::ptr::null_mut();
        // SAFETY: `p` is a valid out-pointer.
        self.check(unsafe { (self.mem_alloc_host)(&mut p, len) }, "cuMemAllocHost")?;
        Ok(p.cast())
    }

    /// `cuMemHostRegister` with `PORTABLE | DEVICEMAP`: pins `len` bytes of host memory at
    /// `addr` (page-aligned) and maps them for every context's device; memory registered
    /// already counts as done. Never undone: the region stays mapped for the process's life.
    ///
    /// # Safety
    /// `addr..addr + len` must be mapped memory of this process that stays mapped for as long
    /// as the device may use it.
    pub unsafe fn host_register(&self, addr: *mut u8, len: usize) -> Result<(), String> {
        let f = self.mem_host_register.ok_or("the driver has no cuMemHostRegister")?;
        // SAFETY: the caller's contract.
        match unsafe { f(addr.cast(), len, HOST_REGISTER_FLAGS) } {
            HOST_MEMORY_ALREADY_REGISTERED => Ok(()),
            r => self.check(r, "cuMemHostRegister"),
        }
    }

    /// `cuMemHostGetDevicePointer`: the device address of registered host memory at `addr`
    /// in the current context.
    pub fn host_device_pointer(&self, addr: *mut u8) -> Result<DevPtr, String> {
        let f = self.mem_host_get_device_pointer.ok_or("the driver has no cuMemHostGetDevicePointer")?;
        let mut p = 0;
        // SAFETY: a valid out-pointer; the driver checks that `addr` is registered.
        self.check(unsafe { f(&mut p, addr.cast(), 0) }, "cuMemHostGetDevicePointer")?;
        Ok(p)
    }

    /// `cuModuleLoadData` of a NUL-terminated PTX text: a module of the current context.
    pub fn module_load_ptx(&self, ptx: &CStr) -> Result<Handle, String> {
        let load = self.module_load_data.ok_or("the driver has no cuModuleLoadData")?;
        let mut m: Handle = std::ptr::null_mut();
        // SAFETY: a valid out-pointer and a NUL-terminated PTX text, which the call accepts as
        // an image.
        self.check(unsafe { load(&mut m, ptx.as_ptr().cast()) }, "cuModuleLoadData")?;
        Ok(m)
    }

    /// `cuModuleGetFunction`: kernel `name` of `module`.
    pub fn module_function(&self, module: Handle, name: &CStr) -> Option<Handle> {
        let get = self.module_get_function?;
        let mut f: Handle = std::ptr::null_mut();
        // SAFETY: a valid out-pointer, a module handle from the driver, a NUL-terminated name.
        (unsafe { get(&mut f, module, name.as_ptr()) } == SUCCESS && !f.is_null()).then_some(f)
    }

    /// `cuFuncGetName` (CUDA 12.3): the mangled name of a launched function (or of the function
    /// a `CUkernel` passed as one stands for).
    pub fn function_name(&self, f: Handle) -> Option<String> {
        let get = self.func_get_name?;
        let name = |f: Handle| {
            let mut s: *const c_char = std::ptr::null();
            // SAFETY: a valid out-pointer; the driver checks the handle.
            if unsafe { get(&mut s, f) } != SUCCESS || s.is_null() {
                return None;
            }
            // SAFETY: the driver returned a NUL-terminated string it owns.
            Some(unsafe { CStr::from_ptr(s) }.to_string_lossy().into_owned())
        };
        name(f).or_else(|| {
            let kernel_function = self.kernel_get_function?;
            let mut func: Handle = std::ptr::null_mut();
            // SAFETY: as above; a handle that is no CUkernel is refused by the driver.
            (unsafe { kernel_function(&mut func, f) } == SUCCESS && !func.is_null()).then(|| name(func)).flatten()
        })
    }

    /// `cuMemcpyDtoDAsync`: `len` bytes from device address `src` to `dst`, ordered on
    /// `stream`.
    pub fn memcpy_dtod_async(&self, dst: DevPtr, src: DevPtr, len: usize, stream: Handle) -> Result<(), String> {
        let copy = self.memcpy_dtod_async.ok_or("the driver has no cuMemcpyDtoDAsync")?;
        // SAFETY: device memory from the driver; nothing on the host is touched.
        self.check(unsafe { copy(dst, src, len, stream) }, "cuMemcpyDtoDAsync")
    }

    /// `cuLaunchHostFunc`: runs `f(data)` on a driver thread once the stream gets there.
    ///
    /// # Safety
    /// `f` must be safe to call with `data` from another thread, once, and must not call CUDA.
    pub unsafe fn launch_host_func(&self, stream: Handle, f: FnHostFn, data: *mut c_void) -> Result<(), String> {
        // SAFETY: the caller's contract.
        self.check(unsafe { (self.launch_host_func)(stream, f, data) }, "cuLaunchHostFunc")
    }

    /// `cuModuleGetGlobal`: address and size of module global `name`.
    pub fn module_global(&self, module: Handle, name: &CStr) -> Option<(DevPtr, usize)> {
        let (mut p, mut n) = (0, 0);
        // SAFETY: valid out-pointers, a NUL-terminated name, a module handle from the driver.
        (unsafe { (self.module_get_global)(&mut p, &mut n, module, name.as_ptr()) } == SUCCESS).then_some((p, n))
    }

    /// The module a launched function (or a `CUkernel` passed as one, CUDA 12) belongs to.
    pub fn module_of(&self, f: Handle) -> Option<Handle> {
        let mut m: Handle = std::ptr::null_mut();
        // SAFETY: valid out-pointer; the driver checks the handle.
        if unsafe { (self.func_get_module)(&mut m, f) } == SUCCESS && !m.is_null() {
            return Some(m);
        }
        let get = self.kernel_get_function?;
        let mut func: Handle = std::ptr::null_mut();
        // SAFETY: as above; a handle that is no CUkernel is refused by the driver.
        if unsafe { get(&mut func, f) } != SUCCESS || func.is_null() {
            return None;
        }
        // SAFETY: as above.
        (unsafe { (self.func_get_module)(&mut m, func) } == SUCCESS && !m.is_null()).then_some(m)
    }

    /// Whether `stream` is being captured into a graph (then nothing may be allocated or
    /// queued on it by us: the graph would replay it).
    pub fn capturing(&self, stream: Handle) -> bool {
        let Some(f) = self.stream_is_capturing else { return false };
        let mut status = 0;
        // SAFETY: valid out-pointer; the driver checks the stream handle.
        (unsafe { f(stream, &mut status) }) == SUCCESS && status != 0
    }

    /// The module of `library` in the current context (CUDA 12).
    pub fn library_module(&self, library: Handle) -> Option<Handle> {
        let f = self.library_get_module?;
        let mut m: Handle = std::ptr::null_mut();
        // SAFETY: valid out-pointer; the driver checks the handle.
        (unsafe { f(&mut m, library) } == SUCCESS && !m.is_null()).then_some(m)
    }

    /// Runs `f` with context `ctx` current on this thread (pushed, then popped), or None when
    /// it cannot be made current.
    pub fn with_context<R>(&self, ctx: Handle, f: impl FnOnce() -> R) -> Option<R> {
        if self.current_context() == Some(ctx) {
            return Some(f());
        }
        let (push, pop) = (self.ctx_push_current?, self.ctx_pop_current?);
        // SAFETY: a context handle the driver gave out (the caller keeps the context alive).
        if unsafe { push(ctx) } != SUCCESS {
            return None;
        }
        let r = f();
        let mut popped: Handle = std::ptr::null_mut();
        // SAFETY: a valid out-pointer; pops what was pushed above.
        unsafe { pop(&mut popped) };
        Some(r)
    }

    /// The current context, if any.
    pub fn current_context(&self) -> Option<Handle> {
        let mut c: Handle = std::ptr::null_mut();
        // SAFETY: valid out-pointer.
        (unsafe { (self.ctx_get_current)(&mut c) } == SUCCESS && !c.is_null()).then_some(c)
    }

    /// The device of the current context, else device 0.
    pub fn device(&self) -> c_int {
        let mut d = 0;
        // SAFETY: valid out-pointers.
        if unsafe { (self.ctx_get_device)(&mut d) } == SUCCESS {
            return d;
        }
        let mut d0 = 0;
        // SAFETY: valid out-pointer.
        if unsafe { (self.device_get)(&mut d0, 0) } == SUCCESS {
            d0
        } else {
            0
        }
    }

    /// `cuDeviceGetAttribute`.
    pub fn attribute(&self, device: c_int, attr: c_int) -> Option<c_int> {
        let mut v = 0;
        // SAFETY: valid out-pointer.
        (unsafe { (self.device_get_attribute)(&mut v, attr, device) } == SUCCESS).then_some(v)
    }

    /// The compute capabilities of every device (None when the driver does not say).
    pub fn compute_capabilities(&self) -> Option<Vec<u32>> {
        let mut n = 0;
        // SAFETY: a valid out-pointer.
        if unsafe { (self.device_get_count?)(&mut n) } != SUCCESS {
            return None;
        }
        (0..n)
            .map(|i| {
                let mut d = 0;
                // SAFETY: a valid out-pointer; `i` below the device count.
                (unsafe { (self.device_get)(&mut d, i) } == SUCCESS).then_some(d).and_then(|d| self.compute_capability(d))
            })
            .collect()
    }

    /// Compute capability of `device` as `major * 10 + minor` (75 for sm_75).
    pub fn compute_capability(&self, device: c_int) -> Option<u32> {
        let major = self.attribute(device, 75)?;
        let minor = self.attribute(device, 76)?;
        Some((major * 10 + minor) as u32)
    }

    /// Links PTX units into a cubin for the current context's device with the driver's JIT
    /// linker (`cuLinkCreate`, `cuLinkAddData`, `cuLinkComplete`), with the static libraries
    /// `libraries` (`cuLinkAddFile`): what a relocatable application's units become when it has
    /// no machine code for the device. The error says what the linker logged.
    pub fn link(&self, inputs: &[LinkInput<'_>], libraries: &[&CStr]) -> Result<Vec<u8>, String> {
        let (create, add, complete, destroy) = self.link.ok_or("the driver has no cuLink entry points")?;
        // CU_JIT_ERROR_LOG_BUFFER, CU_JIT_ERROR_LOG_BUFFER_SIZE_BYTES.
        let mut log = vec![0u8; 4096];
        let mut options: [c_int; 2] = [5, 6];
        let mut values: [*mut c_void; 2] = [log.as_mut_ptr().cast(), log.len() as *mut c_void];
        let mut state: Handle = std::ptr::null_mut();
        // SAFETY: two options with their values; `log` outlives the link state (destroyed
        // below); `state` is a valid out-pointer.
        self.check(unsafe { create(2, options.as_mut_ptr(), values.as_mut_ptr(), &mut state) }, "cuLinkCreate")?;
        let logged = |what: String, log: &[u8]| {
            let text = CStr::from_bytes_until_nul(log).map(|c| c.to_string_lossy().trim().to_string()).unwrap_or_default();
            if text.is_empty() {
                what
            } else {
                format!("{what}: {text}")
            }
        };
        let mut result = Ok(());
        for (i, input) in inputs.iter().enumerate() {
            let name = CString::new(format!("unit{i}")).unwrap_or_default();
            // CU_JIT_INPUT_PTX (1): a NUL-terminated text and its length with the NUL;
            // CU_JIT_INPUT_FATBINARY (2): a fatbin.
            let (kind, data, len) = match input {
                LinkInput::Ptx(text) => (1, text.as_ptr().cast::<c_void>(), text.to_bytes_with_nul().len()),
                LinkInput::Fatbin(bytes) => (2, bytes.as_ptr().cast::<c_void>(), bytes.len()),
            };
            // SAFETY: the input as its kind requires, readable for `len` bytes; the driver
            // copies it; no per-input options.
            let r = unsafe { add(state, kind, data.cast_mut(), len, name.as_ptr(), 0, std::ptr::null_mut(), std::ptr::null_mut()) };
            result = self.check(r, &format!("cuLinkAddData (unit {i})"));
            if result.is_err() {
                break;
            }
        }
        for lib in libraries {
            if result.is_err() {
                break;
            }
            result = match self.link_add_file {
                // SAFETY: CU_JIT_INPUT_LIBRARY (4): a NUL-terminated path; no options.
                Some(add_file) => self.check(
                    unsafe { add_file(state, 4, lib.as_ptr(), 0, std::ptr::null_mut(), std::ptr::null_mut()) },
                    &format!("cuLinkAddFile ({})", lib.to_string_lossy()),
                ),
                None => Err("the driver has no cuLinkAddFile".into()),
            };
        }
        let mut cubin = Err(String::new());
        if result.is_ok() {
            let (mut out, mut len): (*mut c_void, usize) = (std::ptr::null_mut(), 0);
            // SAFETY: valid out-pointers; the cubin belongs to the link state, copied before it
            // is destroyed.
            cubin = self.check(unsafe { complete(state, &mut out, &mut len) }, "cuLinkComplete").and_then(|()| {
                if out.is_null() || len == 0 {
                    return Err("cuLinkComplete gave no cubin".to_string());
                }
                // SAFETY: the driver's cubin, `len` bytes.
                Ok(unsafe { std::slice::from_raw_parts(out.cast::<u8>(), len) }.to_vec())
            });
        }
        // SAFETY: the state made above, destroyed once.
        unsafe { destroy(state) };
        result.and(cubin).map_err(|e| logged(e, &log))
    }

    /// Adds a PTX text to an application's link state through the driver's own
    /// `cuLinkAddData`, with the application's name and options for the input; None without
    /// the entry point.
    ///
    /// # Safety
    /// `state` is a live link state; `name`, `options` and `values` are as `cuLinkAddData`
    /// takes them (cuda.h): a NUL-terminated name or null, `n` options and their values.
    pub unsafe fn link_add_ptx(
        &self,
        state: Handle,
        text: &CStr,
        name: *const c_char,
        n: c_uint,
        options: *mut c_int,
        values: *mut *mut c_void,
    ) -> Option<CuResult> {
        let (_, add, _, _) = self.link?;
        // SAFETY: CU_JIT_INPUT_PTX (1): a NUL-terminated text and its length with the NUL,
        // which the driver copies; the rest is the caller's contract.
        Some(unsafe { add(state, 1, text.as_ptr().cast_mut().cast(), text.to_bytes_with_nul().len(), name, n, options, values) })
    }

    /// Streaming multiprocessors of `device`.
    pub fn sm_count(&self, device: c_int) -> Option<u32> {
        self.attribute(device, 16).map(|n| n.max(1) as u32)
    }
}

/// `cuModuleLoadData`.
pub type FnModuleLoadData = unsafe extern "C" fn(*mut Handle, *const c_void) -> CuResult;

/// The driver's own `cuModuleLoadData`.
pub fn module_load_data() -> Option<FnModuleLoadData> {
    optional_entry!(c"cuModuleLoadData" as FnModuleLoadData)
}

/// `c_uint`, for the launch entry points' dimensions.
pub type Dim = c_uint;

/// `__cudaFatBinaryWrapper` magic: what the CUDA runtime passes to the load calls.
const WRAPPER_MAGIC: u32 = 0x466243b1;
/// Fatbin header magic.
const FATBIN_MAGIC: u32 = 0xBA55ED50;

/// One input of [`Driver::link`].
pub enum LinkInput<'a> {
    /// PTX text.
    Ptx(CString),
    /// A fat binary, as the application embeds it.
    Fatbin(&'a [u8]),
}

/// What a module or library load was handed.
pub enum Image<'a> {
    /// A fat binary (directly or behind the runtime's wrapper).
    Fatbin(&'a [u8]),
    /// PTX text.
    Ptx(&'a str),
    /// Relocatable device code (`nvcc -rdc=true`): the runtime's wrapper (version 2) of the
    /// device-linked fat binary, with the fat binaries of the units it was linked from, which
    /// hold their PTX.
    Linked(Vec<&'a [u8]>),
    /// A cubin (machine code only), as far as its ELF headers say it runs.
    Cubin(&'a [u8]),
    /// Nothing we recognise.
    Unknown,
}

/// Reads the image a load call received.
///
/// # Safety
/// `image` must be what `cuModuleLoadData`/`cuLibraryLoadData` accept: a
/// `__cudaFatBinaryWrapper`, a fatbin, a cubin ELF or a NUL-terminated PTX text, readable for
/// the length its own header gives.
pub unsafe fn read_image<'a>(image: *const c_void) -> Image<'a> {
    if image.is_null() {
        return Image::Unknown;
    }
    // SAFETY: every accepted image starts with at least 4 readable bytes.
    let magic = unsafe { std::ptr::read_unaligned(image.cast::<u32>()) };
    let fatbin = if magic == WRAPPER_MAGIC {
        // SAFETY: the wrapper is { int magic; int version; const void *data; void
        // *filename_or_fatbins }; version 2 (crt/link.stub's `__fatDeviceText`) points the last
        // at the NULL-terminated array of the units' fat binaries.
        let (version, prelinked) =
            unsafe { (std::ptr::read_unaligned(image.cast::<u32>().add(1)), std::ptr::read_unaligned(image.cast::<u8>().add(16).cast::<*const *const u8>())) };
        if version == 2 && !prelinked.is_null() {
            // SAFETY: the runtime filled the array before registering the wrapper.
            if let Some(units) = unsafe { linked_units(prelinked) } {
                return Image::Linked(units);
            }
        }
        // SAFETY: as above.
        unsafe { std::ptr::read_unaligned(image.cast::<u8>().add(8).cast::<*const u8>()) }
    } else if magic == FATBIN_MAGIC {
        image.cast::<u8>()
    } else if magic == u32::from_le_bytes(*b"\x7fELF") {
        // SAFETY: a cubin starts with its ELF header.
        return Image::Cubin(unsafe { elf_at(image.cast()) });
    } else {
        // SAFETY: anything else a load accepts is NUL-terminated PTX text.
        return match unsafe { CStr::from_ptr(image.cast()) }.to_str() {
            Ok(s) if s.contains(".entry") || s.contains(".version") => Image::Ptx(s),
            _ => Image::Unknown,
        };
    };
    // SAFETY: the caller's contract.
    unsafe { fatbin_at(fatbin) }.map_or(Image::Unknown, Image::Fatbin)
}

/// The bytes of the 64-bit ELF file at `elf` up to the end of its section and program header
/// tables (which the linkers put last); empty when the header is not one.
///
/// # Safety
/// `elf` readable for an ELF header (64 bytes) and the file it describes.
unsafe fn elf_at<'a>(elf: *const u8) -> &'a [u8] {
    // SAFETY: the caller's contract: the 64-byte header of a 64-bit ELF file.
    let header = unsafe { std::slice::from_raw_parts(elf, 64) };
    if header[4] != 2 {
        return &[];
    }
    let word = |at: usize| u64::from_le_bytes(header[at..at + 8].try_into().unwrap_or_default());
    let half = |at: usize| u16::from_le_bytes([header[at], header[at + 1]]) as u64;
    // e_phoff, e_shoff; e_phentsize, e_phnum, e_shentsize, e_shnum.
    let end = (word(0x20).saturating_add(half(0x36) * half(0x38))).max(word(0x28).saturating_add(half(0x3a) * half(0x3c))).max(64);
    if end > 1 << 31 {
        return &[];
    }
    // SAFETY: the caller's contract: the file the header describes is readable.
    unsafe { std::slice::from_raw_parts(elf, end as usize) }
}

/// The fat binaries of a NULL-terminated array of them (at most 65,536).
///
/// # Safety
/// `array` readable up to its NULL; each entry a fat binary readable for the length its header
/// gives.
unsafe fn linked_units<'a>(array: *const *const u8) -> Option<Vec<&'a [u8]>> {
    let mut units = vec![];
    for i in 0..1 << 16 {
        // SAFETY: the caller's contract: the array is readable up to its NULL.
        let unit = unsafe { std::ptr::read_unaligned(array.add(i)) };
        if unit.is_null() {
            return (!units.is_empty()).then_some(units);
        }
        // SAFETY: the caller's contract.
        units.push(unsafe { fatbin_at(unit) }?);
    }
    None
}

/// Whether `bytes` hold a whole fat binary: its magic, and at least the length its header
/// gives (what [`read_image`] may then read of it).
pub fn holds_fatbin(bytes: &[u8]) -> bool {
    let word = |at: usize, n: usize| bytes.get(at..at + n).map(|b| b.iter().rev().fold(0u64, |acc, &x| acc << 8 | x as u64));
    match (word(0, 4), word(6, 2), word(8, 8)) {
        (Some(m), Some(header), Some(body)) => m == FATBIN_MAGIC as u64 && body.saturating_add(header) <= bytes.len() as u64,
        _ => false,
    }
}

/// The fat binary at `fatbin`, when it has one's header.
///
/// # Safety
/// `fatbin` null, or readable for 16 bytes and, when they are a fat binary's header, for the
/// length it gives.
unsafe fn fatbin_at<'a>(fatbin: *const u8) -> Option<&'a [u8]> {
    if fatbin.is_null() {
        return None;
    }
    // SAFETY: a fatbin starts with its 16-byte header: magic, version, header size, body size.
    let (m, header, body) = unsafe {
        (
            std::ptr::read_unaligned(fatbin.cast::<u32>()),
            std::ptr::read_unaligned(fatbin.add(6).cast::<u16>()),
            std::ptr::read_unaligned(fatbin.add(8).cast::<u64>()),
        )
    };
    let len = body.saturating_add(header as u64);
    if m != FATBIN_MAGIC || len > 1 << 31 {
        return None;
    }
    // SAFETY: the fatbin is readable for the length its header gives (the driver reads it too).
    Some(unsafe { std::slice::from_raw_parts(fatbin, len as usize) })
}
