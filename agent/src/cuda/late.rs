//! CUDA probes in an application that was running before the agent came (`bpftime attach
//! PID`), or before its CUDA probes came (a loader after `bpftime start`): its runtime fetched
//! the driver's entry points unwrapped and loaded its modules without probes, so neither the
//! `dlsym`/`cuGetProcAddress` wrappers nor load-time patching can see it.
//!
//! ```text
//! start: libcuda loaded, cuGetProcAddress never seen -> ask libcuda for it; inline-hook the
//!   driver's own launch, load and synchronisation entry points (every variant: per-thread
//!   stream, ABI versions); each hook calls the wrapper the preloaded agent would have handed
//!   out, whose call of the real function runs the original code (a hit inside a hit is not
//!   taken), and makes the driver's function return what the wrapper returned
//! launch of f (a kernel loaded before us): the fatbins of the process's files (the executable
//!   and its libraries, read once) -> the one holding f's kernel, patched and loaded as a
//!   module of its own -> the launch goes to the patched kernel; the original module's
//!   `__device__` and `__constant__` variables are copied into the patched module's before the
//!   launch and the `__device__` ones back after it, on the launch's stream
//! modules loaded from now on: patched as they load, as under the preloaded agent
//! ```
//!
//! Kernels launched through graphs instantiated before then run without probes. When the region no longer has the probes' links (`bpftime detach PID`), the hooks
//! are removed and launches go to the original kernels again.

use super::driver::{self, DevPtr, Driver, Handle};
use super::{guarded, lock, Gpu, PatchedImage};
use std::collections::HashMap;
use std::ffi::{c_int, CString};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, OnceLock};

/// Whether launches are looked at for substitution (hooks installed, links present).
static ACTIVE: AtomicBool = AtomicBool::new(false);
/// Whether the hooks were installed (once per process).
static HOOKED_ONCE: AtomicBool = AtomicBool::new(false);

/// What the late attach keeps.
#[derive(Default)]
struct Late {
    /// The hooks on the driver's entry points.
    hooks: Mutex<Vec<bpftime_attach::ProbeId>>,
    /// The fatbins of the process's files, found at the first launch that needs them (the
    /// files mapped, not read: a library of device code may be gigabytes).
    fatbins: OnceLock<Vec<(Arc<memmap2::Mmap>, std::ops::Range<usize>)>>,
    /// Each fatbin patched (None: no probed kernel in it, or it cannot be patched).
    patched: Mutex<HashMap<usize, Option<Arc<PatchedImage>>>>,
    /// Patched modules loaded, by (context, fatbin).
    modules: Mutex<HashMap<(usize, usize), Option<usize>>>,
    /// What a launch of (context, function) becomes.
    launches: Mutex<HashMap<(usize, usize), Option<Arc<Substitute>>>>,
}

static LATE: OnceLock<Late> = OnceLock::new();

/// A launch redirected to the patched copy of its kernel.
pub(crate) struct Substitute {
    /// The patched kernel.
    function: Handle,
    /// (original's address, patched module's address, bytes, written back after a launch) of
    /// each module-scope variable both modules have.
    globals: Vec<(DevPtr, DevPtr, usize, bool)>,
}

// SAFETY: the handles are the driver's, usable from any thread.
unsafe impl Send for Substitute {}
// SAFETY: as above; nothing in it changes after it is made.
unsafe impl Sync for Substitute {}

/// The driver entry points hooked: those the preloaded agent wraps.
const HOOKED: [&std::ffi::CStr; 20] = [
    c"cuLaunchKernel",
    c"cuLaunchKernelEx",
    c"cuLaunchCooperativeKernel",
    c"cuGraphLaunch",
    c"cuModuleLoad",
    c"cuModuleLoadData",
    c"cuModuleLoadDataEx",
    c"cuModuleLoadFatBinary",
    c"cuLibraryLoadData",
    c"cuCtxSynchronize",
    c"cuStreamSynchronize",
    c"cuEventSynchronize",
    c"cuMemcpyDtoH",
    c"cuMemcpy",
    c"cuCtxDestroy",
    c"cuDevicePrimaryCtxRetain",
    c"cuDevicePrimaryCtxRelease",
    c"cuDevicePrimaryCtxReset",
    c"cuModuleUnload",
    c"cuLibraryUnload",
];

/// The driver ABI versions whose variants of an entry point are hooked (CUDA 12 and 13 may
/// hand out different functions for one name: `cuCtxSynchronize_v2`).
const VERSIONS: [c_int; 2] = [12000, 13000];

/// Calls the agent's wrapper of a hooked entry point with the arguments the hooked function
/// got, and has the function return its result.
struct CallWrapper {
    wrapper: usize,
    name: &'static std::ffi::CStr,
    /// Whether a hit was said (`BPFTIME_VERBOSE`).
    said: AtomicBool,
}

impl bpftime_attach::ProbeHandler for CallWrapper {
    fn on_hit(&self, regs: &bpftime_attach::PtRegs, _level: usize) -> Option<u64> {
        if !self.said.swap(true, Ordering::Relaxed) && super::verbose() {
            eprintln!("bpftime: the driver's {} runs through its hook", self.name.to_string_lossy());
        }
        // Arguments past the sixth are on the stack, above the return address (the wrappers
        // take at most 11; a wrapper taking fewer ignores the rest).
        let stack = |i: u64| -> u64 {
            // SAFETY: at the function's entry `sp` points at the return address, with the
            // caller's frame (its stack arguments, else its own words) above it: readable.
            unsafe { std::ptr::read_unaligned((regs.sp + 8 * (i + 1)) as *const u64) }
        };
        type Wrapper = unsafe extern "C" fn(u64, u64, u64, u64, u64, u64, u64, u64, u64, u64, u64) -> c_int;
        // SAFETY: `wrapper` is one of the agent's wrappers for this entry point, which takes the
        // entry point's arguments (at most 11 words, System V); extra words are ignored.
        let f = unsafe { std::mem::transmute::<usize, Wrapper>(self.wrapper) };
        // SAFETY: the wrapper's contract is the entry point's, and these are the caller's
        // arguments.
        let r = unsafe { f(regs.di, regs.si, regs.dx, regs.cx, regs.r8, regs.r9, stack(0), stack(1), stack(2), stack(3), stack(4)) };
        Some(r as u32 as u64)
    }
}

/// Sets CUDA probes up where the application fetched the driver's entry points without the
/// agent wrapping them (it was loaded into the running process, or had no CUDA probes when
/// they were fetched): nothing when the driver is not loaded yet (the follower looks again) or
/// the agent's wrappers were handed out.
pub(crate) fn start(gpu: &Gpu) {
    if HOOKED_ONCE.load(Ordering::Acquire) {
        return;
    }
    // SAFETY: dlopen(3) with RTLD_NOLOAD only hands back a library already loaded; the name is
    // NUL-terminated.
    let handle = unsafe { libc::dlopen(c"libcuda.so.1".as_ptr(), libc::RTLD_NOW | libc::RTLD_NOLOAD) };
    if handle.is_null() || !super::hooks::claim_hooks() || HOOKED_ONCE.swap(true, Ordering::AcqRel) {
        return;
    }
    if driver::REAL_GET_PROC_V2.load(Ordering::Acquire) == 0 {
        // The driver's own, through glibc's dlsym: the agent's `dlsym` would hand out its
        // wrapper, which calls what is stored here.
        let get_proc = super::hooks::driver_symbol(c"cuGetProcAddress_v2");
        if get_proc == 0 {
            return gpu.say_once("CUDA probes: the driver has no cuGetProcAddress_v2; the running application's kernels stay without probes".into());
        }
        driver::REAL_GET_PROC_V2.store(get_proc, Ordering::Release);
    }
    let late = LATE.get_or_init(Late::default);
    let mut hooks = lock(&late.hooks);
    let mut seen = std::collections::HashSet::new();
    for name in HOOKED {
        for version in VERSIONS {
            for per_thread in [false, true] {
                let Some(real) = driver::lookup_version(name, version, if per_thread { 2 } else { 0 }) else { continue };
                if !seen.insert(real) {
                    continue;
                }
                let Some(wrapper) = super::hooks::wrapper_of(name.to_bytes(), real, per_thread) else { continue };
                let info = bpftime_attach::SiteInfo { function_size: 0, at_entry: true, padding: 0, returns_twice: false };
                match bpftime_attach::attach(
                    real as u64,
                    info,
                    bpftime_attach::ProbeKind::Entry,
                    Arc::new(CallWrapper { wrapper, name, said: AtomicBool::new(false) }),
                ) {
                    Ok(id) => hooks.push(id),
                    Err(e) => gpu.say_once(format!("CUDA probes: {} cannot be hooked ({e}); what it does is not seen", name.to_string_lossy())),
                }
            }
        }
    }
    // Active before it is said: a launch that comes after the words (a test releases one on
    // them) runs the patched copy.
    ACTIVE.store(!hooks.is_empty(), Ordering::Release);
    if super::verbose() {
        eprintln!(
            "bpftime: CUDA probes through hooks on the driver (its entry points were fetched before there were probes): {} entry points hooked",
            hooks.len()
        );
    }
}

/// Called when the region's links change, and at the link follower's polls: a driver the
/// application loaded after the agent came is hooked now (the agent, loaded into a running
/// process, does not see `dlsym`); once none of the CUDA probes' links is left, the hooks go
/// and launches run the original kernels again.
pub(crate) fn links_changed(gpu: &Gpu, now: &[bpftime_runtime::links::UprobeLink]) {
    if gpu.late {
        start(gpu);
    }
    let Some(late) = LATE.get() else { return };
    if !ACTIVE.load(Ordering::Acquire) || gpu.probes.probes.iter().any(|p| now.iter().any(|l| l.id == p.link)) {
        return;
    }
    ACTIVE.store(false, Ordering::Release);
    // What the probes counted until now reaches the region before the hooks that would have
    // copied it back at the application's next synchronisation go.
    super::sync_all();
    for id in lock(&late.hooks).drain(..) {
        let _ = bpftime_attach::detach(id);
    }
    if super::verbose() {
        eprintln!("bpftime: CUDA probes removed: the application's kernels run as they were");
    }
}

/// What a launch of `f` on `stream` runs: the patched copy of its kernel when `f` was loaded
/// before the agent came and a probe names it (its variables copied in, on `stream`), else `f`.
pub(crate) fn substitute(f: Handle, stream: Handle) -> (Handle, Option<Arc<Substitute>>) {
    if !ACTIVE.load(Ordering::Acquire) {
        return (f, None);
    }
    let found = guarded(|| {
        let gpu = super::GPU.get()?;
        let drv = Driver::get()?;
        let late = LATE.get()?;
        let ctx = drv.current_context()? as usize;
        let known = lock(&late.launches).get(&(ctx, f as usize)).cloned();
        let sub = match known {
            Some(s) => s,
            None => {
                let s = make_substitute(gpu, drv, late, ctx, f).map(Arc::new);
                lock(&late.launches).insert((ctx, f as usize), s.clone());
                s
            }
        }?;
        for &(orig, copy, len, _) in &sub.globals {
            if let Err(e) = drv.memcpy_dtod_async(copy, orig, len, stream) {
                gpu.say_once(format!("CUDA probes: a kernel's variables are not copied to its patched copy: {e}"));
            }
        }
        Some(sub)
    });
    match found {
        Some(sub) => (sub.function, Some(sub)),
        None => (f, None),
    }
}

/// After context `ctx` is gone: its patched modules and substitutes are forgotten.
pub(crate) fn context_gone(ctx: usize) {
    let Some(late) = LATE.get() else { return };
    lock(&late.modules).retain(|&(c, _), _| c != ctx);
    lock(&late.launches).retain(|&(c, _), _| c != ctx);
}

/// After a module was unloaded: the substitutes are worked out again (the driver may hand an
/// unloaded module's function handles out again for others).
pub(crate) fn module_gone() {
    let Some(late) = LATE.get() else { return };
    lock(&late.launches).clear();
}

/// After a launch that ran a patched copy: its `__device__` variables copied back to the
/// original module's, on `stream`.
pub(crate) fn after_substitute(sub: Option<Arc<Substitute>>, stream: Handle) {
    let Some(sub) = sub else { return };
    guarded(|| {
        let drv = Driver::get()?;
        for &(orig, copy, len, written) in &sub.globals {
            if written {
                let _ = drv.memcpy_dtod_async(orig, copy, len, stream);
            }
        }
        Some(())
    });
}

/// Finds `f`'s kernel in the process's fatbins, loads the patched fatbin as a module of
/// context `ctx` (once) and pairs the modules' variables; None when no probe names the kernel,
/// or `f`'s module carries probes already.
fn make_substitute(gpu: &Gpu, drv: &Driver, late: &Late, ctx: usize, f: Handle) -> Option<Substitute> {
    // Why a launch runs as it is, with BPFTIME_VERBOSE (once each).
    let why = |what: String| {
        if super::verbose() {
            gpu.say_once(format!("CUDA probes: a launch runs its kernel as loaded: {what}"));
        }
    };
    let Some(original) = drv.module_of(f) else {
        why("its module is unknown to the driver (cuFuncGetModule)".into());
        return None;
    };
    if drv.module_global(original, &CString::new(bpftime_gpu_ptx::patch::ARENA_GLOBAL).ok()?).is_some() {
        return None;
    }
    let Some(name) = drv.function_name(f) else {
        why("the driver does not name it (cuFuncGetName)".into());
        return None;
    };
    let fatbins = late.fatbins.get_or_init(process_fatbins);
    let mut which = None;
    for (i, (file, range)) in fatbins.iter().enumerate() {
        let fatbin = &file[range.clone()];
        let patched = lock(&late.patched).entry(i).or_insert_with(|| gpu.patch_image(Some(drv), driver::Image::Fatbin(fatbin)).map(Arc::new)).clone();
        if let Some(p) = patched.filter(|p| p.kernels.contains(&name)) {
            which = Some((i, p));
            break;
        }
    }
    let Some((index, patched)) = which else {
        why(format!("{name}: no probe names it in the {} fatbins of the process's files", fatbins.len()));
        return None;
    };
    // A process's file fatbins are patched as whole modules: PTX text.
    let text = patched.text()?;
    let module = *lock(&late.modules).entry((ctx, index)).or_insert_with(|| match drv.module_load_ptx(text) {
        Ok(m) => {
            super::loaded_patched(&patched, super::Loaded::Module(m));
            Some(m as usize)
        }
        Err(e) => {
            super::refused_because(&patched, &e);
            None
        }
    });
    let module = module? as Handle;
    let Some(function) = drv.module_function(module, &CString::new(name.clone()).ok()?) else {
        why(format!("{name}: not in its patched module (cuModuleGetFunction)"));
        return None;
    };
    let mut globals = vec![];
    for (var, written) in module_variables(&text.to_string_lossy()) {
        let Ok(cname) = CString::new(var) else { continue };
        if let (Some((orig, n)), Some((copy, m))) = (drv.module_global(original, &cname), drv.module_global(module, &cname)) {
            if n == m && n > 0 {
                globals.push((orig, copy, n, written));
            }
        }
    }
    if super::verbose() {
        eprintln!("bpftime: CUDA kernel {name} (loaded before its probes came) runs its patched copy ({} variables copied around each launch)", globals.len());
    }
    Some(Substitute { function, globals })
}

/// The module-scope variables a PTX text defines (`.global` and `.const`, not ours, not
/// string literals): (name, whether kernels may write it).
fn module_variables(ptx: &str) -> Vec<(String, bool)> {
    let mut depth = 0i32;
    let mut out = vec![];
    for line in ptx.lines() {
        let t = line.trim();
        if depth == 0 {
            let decl = t.strip_prefix(".visible ").or_else(|| t.strip_prefix(".weak ")).unwrap_or(t);
            let written = decl.starts_with(".global ");
            if (written || decl.starts_with(".const ")) && !decl.contains(".texref") && !decl.contains(".samplerref") && !decl.contains(".surfref") {
                let head = decl.split(['=', ';']).next().unwrap_or("");
                let name = head.split_whitespace().last().unwrap_or("").split('[').next().unwrap_or("");
                if !name.is_empty() && !name.starts_with('$') && !name.starts_with("bpftime_") {
                    out.push((name.to_string(), written));
                }
            }
        }
        depth += t.matches('{').count() as i32 - t.matches('}').count() as i32;
    }
    out
}

/// The fatbins in the files this process has mapped (the executable and its libraries; not
/// the driver's own libraries): each file mapped read-only, and the fatbin's bytes in it.
fn process_fatbins() -> Vec<(Arc<memmap2::Mmap>, std::ops::Range<usize>)> {
    // Files, not devices or the region (/dev/shm) and the like.
    let mut paths: Vec<String> = bpftime_attach::procmaps::mappings()
        .iter()
        .filter(|m| m.inode != 0 && m.path.starts_with('/') && !m.path.starts_with("/dev/") && !m.path.starts_with("/proc/"))
        .map(|m| m.path.clone())
        .collect();
    paths.dedup();
    let skip = ["libcuda.so", "libnvidia-", "libc.so", "ld-linux", "libbpftime", "libm.so", "libstdc++", "libgcc_s"];
    let mut out = vec![];
    let mut seen = std::collections::HashSet::new();
    for path in paths {
        let file = path.rsplit('/').next().unwrap_or("");
        if skip.iter().any(|s| file.starts_with(s)) || !seen.insert(path.clone()) {
            continue;
        }
        let Ok(file) = std::fs::File::open(&path) else { continue };
        if !file.metadata().is_ok_and(|m| m.is_file()) {
            continue;
        }
        // SAFETY: a read-only private mapping of a file the process has mapped already (its
        // executable or a library); were the file truncated under us, reads past its end
        // would fault, as they would for the process's own mapping of it.
        let Ok(map) = (unsafe { memmap2::Mmap::map(&file) }) else { continue };
        let map = Arc::new(map);
        // Units of relocatable device code load only linked with the others: not here.
        for f in bpftime_gpu_ptx::fatbin::find_all(&map)
            .into_iter()
            .flatten()
            .filter(|f| !bpftime_gpu_ptx::fatbin::is_relocatable_unit(f, &map[f.offset..f.offset + f.len]))
        {
            out.push((map.clone(), f.offset..f.offset + f.len));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    #[test]
    fn module_variables_are_found_at_module_scope_only() {
        let ptx = ".version 7.0\n.target sm_75\n.global .align 4 .u32 counter;\n.visible .const .align 4 .b8 table[64] = {1, 2};\n\
                   .global .align 1 .b8 $str[4] = {65, 66, 67, 0};\n.global .align 8 .u64 bpftime_arena[8];\n\
                   .visible .entry k(.param .u64 p)\n{\n.reg .b64 %r<2>;\n.global .u32 not_module_scope;\nret;\n}\n";
        assert_eq!(super::module_variables(ptx), vec![("counter".to_string(), true), ("table".to_string(), false)]);
    }
}
