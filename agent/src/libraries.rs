//! Libraries loaded and unloaded while the agent runs. A probe on a library waits until the
//! library is mapped and attaches then; when the library is unmapped its probes wait again, as
//! the kernel's uprobes, which are on the file, fire in every mapping of it.
//!
//! The dynamic linker calls `_r_debug.r_brk` (`_dl_debug_state`, the debugger interface of
//! `<link.h>`) each time its list of objects changes, with `r_state` saying how: `RT_ADD` or
//! `RT_DELETE` before the change, `RT_CONSISTENT` after it. A probe there sees every library,
//! whatever loads it (`dlopen`, `dlmopen`, glibc's own NSS and iconv modules), once it is mapped
//! and before its relocation and constructors run, and every unload once the library is gone.
//! Where that probe cannot be placed, the agent's `dlopen` and `dlclose` wrappers do the same
//! when those return (preloaded), or return probes on libc's (loaded by `bpftime attach`);
//! the link follower also compares the dynamic linker's load and unload counts at each poll.
//!
//! Unsafe code: dlsym(3), reading `_r_debug`, dl_iterate_phdr(3).

use bpftime_attach::{PtRegs, SiteInfo};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;

/// `struct r_debug` of `<link.h>` (the fields up to `r_state`).
#[repr(C)]
struct RDebug {
    version: libc::c_int,
    map: usize,
    brk: usize,
    state: libc::c_int,
}

/// `RT_CONSISTENT`: the list of objects is whole again.
const RT_CONSISTENT: libc::c_int = 0;

/// The dynamic linker's `_r_debug` (0 until [`watch`] found it).
static R_DEBUG: AtomicUsize = AtomicUsize::new(0);
/// Whether the probe on `r_brk` is in place (the wrappers then have nothing to do).
static WATCHED: AtomicBool = AtomicBool::new(false);

/// Runs when the dynamic linker's list of objects changes.
struct ListChanged;

impl bpftime_attach::ProbeHandler for ListChanged {
    fn on_hit(&self, _regs: &PtRegs, _level: usize) -> Option<u64> {
        match list_state() {
            RT_DELETE => UNLOADING.store(true, Ordering::Release),
            RT_CONSISTENT => {
                // Only an unload can take a probed site away: a load alone does not make
                // every site be read again.
                let unloaded = UNLOADING.swap(false, Ordering::AcqRel);
                let _ = std::panic::catch_unwind(|| crate::glue::libraries_changed(unloaded));
            }
            _ => {}
        }
        None
    }
}

/// `RT_DELETE`: libraries are being unloaded.
const RT_DELETE: libc::c_int = 2;
/// An unload began since the list was last whole.
static UNLOADING: AtomicBool = AtomicBool::new(false);

/// The dynamic linker's `r_state` (`RT_CONSISTENT` where `_r_debug` is unknown).
fn list_state() -> libc::c_int {
    match R_DEBUG.load(Ordering::Acquire) {
        0 => RT_CONSISTENT,
        // SAFETY: `_r_debug` lives as long as the process; the dynamic linker writes `r_state`
        // before each call to `r_brk`, on this thread.
        at => unsafe { std::ptr::read_volatile(std::ptr::addr_of!((*(at as *const RDebug)).state)) },
    }
}

/// Follows the libraries this process loads and unloads from now on (see the module's
/// documentation), from the first call on: the agent calls it once this process has a probe
/// (a process with none pays nothing; placing the probe means decoding the dynamic linker's
/// code, a few milliseconds). `injected`: the agent was loaded by `bpftime attach`, so the
/// application's `dlopen` and `dlclose` are libc's, not the agent's wrappers.
pub(crate) fn watch(injected: bool) {
    static STARTED: AtomicBool = AtomicBool::new(false);
    if STARTED.swap(true, Ordering::AcqRel) {
        return;
    }
    match watch_link_map() {
        Ok(()) => WATCHED.store(true, Ordering::Release),
        Err(why) => {
            if std::env::var_os("BPFTIME_VERBOSE").is_some() {
                eprintln!("bpftime: the dynamic linker's r_brk cannot be probed ({why}); libraries are followed at dlopen and dlclose");
            }
            if injected {
                hook_libc_library_calls();
            }
        }
    }
}

/// Puts the probe on `_r_debug.r_brk`.
fn watch_link_map() -> Result<(), String> {
    // SAFETY: dlsym(3) in the global scope with a NUL-terminated name.
    let r_debug = unsafe { libc::dlsym(libc::RTLD_DEFAULT, c"_r_debug".as_ptr()) } as usize;
    if r_debug == 0 {
        return Err("no _r_debug".into());
    }
    // SAFETY: `_r_debug` is the dynamic linker's `struct r_debug`, which lives as long as the
    // process; `r_brk` is set before any program code runs.
    let brk = unsafe { std::ptr::read_volatile(std::ptr::addr_of!((*(r_debug as *const RDebug)).brk)) } as u64;
    let maps = bpftime_attach::procmaps::mappings();
    let linker = maps.iter().find(|m| m.start <= brk && brk < m.end && !m.path.is_empty()).ok_or("r_brk is in no mapped file")?;
    // By its symbol where the file has one: its size and the padding after it (a lone `ret`).
    let by_name =
        bpftime_attach::Target::parse(&format!("{}:_dl_debug_state", linker.path)).and_then(|t| bpftime_attach::resolve(&t)).ok().filter(|r| r.addr == brk);
    let info = match &by_name {
        Some(r) => SiteInfo { function_size: r.function_size, at_entry: true, padding: r.padding, returns_twice: false },
        None => SiteInfo { function_size: 1, at_entry: true, padding: 0, returns_twice: false },
    };
    R_DEBUG.store(r_debug, Ordering::Release);
    bpftime_attach::attach(brk, info, bpftime_attach::ProbeKind::Entry, Arc::new(ListChanged)).map(|_| ()).map_err(|e| e.to_string())
}

/// Whether the agent's `dlopen` and `dlclose` wrappers must look for libraries loaded and
/// unloaded (no probe on `r_brk` does).
pub(crate) fn wrappers_needed() -> bool {
    !WATCHED.load(Ordering::Acquire)
}

/// After libc's `dlopen` (`loads`) or `dlclose` returns in a process the agent was loaded into
/// while it ran.
struct AfterLibraryCall {
    loads: bool,
}

impl bpftime_attach::ProbeHandler for AfterLibraryCall {
    fn on_hit(&self, regs: &PtRegs, _level: usize) -> Option<u64> {
        // A NULL handle, or dlclose's error: nothing was loaded or unloaded.
        let changed = if self.loads { regs.ax != 0 } else { regs.ax as u32 == 0 };
        if changed {
            let _ = std::panic::catch_unwind(|| crate::glue::libraries_changed(!self.loads));
        }
        None
    }
}

/// Return probes on libc's `dlopen` and `dlclose`.
fn hook_libc_library_calls() {
    for (name, loads) in [(c"dlopen", true), (c"dlclose", false)] {
        // SAFETY: dlsym(3) in the global scope with a NUL-terminated name.
        let real = unsafe { libc::dlsym(libc::RTLD_DEFAULT, name.as_ptr()) } as usize;
        if real == 0 {
            continue;
        }
        let info = SiteInfo { function_size: 0, at_entry: true, padding: 0, returns_twice: false };
        if let Err(e) = bpftime_attach::attach(real as u64, info, bpftime_attach::ProbeKind::Return, Arc::new(AfterLibraryCall { loads })) {
            eprintln!(
                "bpftime: libc's {} cannot be hooked ({e}): probes in libraries it {} are seen at the next look at the link table",
                name.to_string_lossy(),
                if loads { "loads" } else { "unloads" }
            );
        }
    }
}

/// How many times a library may have been loaded and unloaded in this process so far (the
/// dynamic linker's `dlpi_adds` and `dlpi_subs`, dl_iterate_phdr(3)).
pub(crate) fn generation() -> (u64, u64) {
    unsafe extern "C" fn first(info: *mut libc::dl_phdr_info, size: libc::size_t, out: *mut libc::c_void) -> libc::c_int {
        let fields_end = std::mem::offset_of!(libc::dl_phdr_info, dlpi_subs) + std::mem::size_of::<u64>();
        if size >= fields_end {
            // SAFETY: the dynamic linker passes a valid record of `size` bytes, which holds
            // both counters, and `out` is the pair below.
            unsafe { *(out as *mut (u64, u64)) = ((*info).dlpi_adds, (*info).dlpi_subs) };
        }
        1
    }
    let mut counts = (0u64, 0u64);
    // SAFETY: the callback matches dl_iterate_phdr's, and `counts` outlives the call.
    unsafe { libc::dl_iterate_phdr(Some(first), &mut counts as *mut (u64, u64) as *mut libc::c_void) };
    counts
}
