//! CUDA kernel probes: `kprobe/KERNEL` and `kretprobe/KERNEL` programs run inside the
//! application's own kernels.
//!
//! ```text
//! app (static or shared cudart) --dlopen libcuda, dlsym cuGetProcAddress--> our wrapper
//!   cuLibraryLoadData / cuModuleLoadData(Ex) / cuModuleLoadFatBinary(image):
//!     the image's PTX (best entry for the device) with the probes spliced in, as PTX text,
//!     to the real call; refused or nothing to splice: the original image, said once
//!   cuLaunchKernel(Ex) / cooperative / graph launch of a function of a patched module:
//!     first time in a context: device arena (maps) allocated and initialised from the region,
//!     the module's `bpftime_arena` global set; after a launch, at most every 50 ms, on its
//!     stream: arena copied to pinned memory, ring cursors cleared, a host function writes the
//!     maps back to the region
//!   cuCtxSynchronize / cuStreamSynchronize / cuEventSynchronize / cuMemcpyDtoH / cuMemcpy:
//!     after the real call, maps with launches not yet copied back are copied back (on the
//!     legacy default stream, waited for: after the launches of every blocking stream; the
//!     set-up copies use a non-blocking stream of ours, which waits for nothing)
//!   cuCtxDestroy / cuDevicePrimaryCtxReset / cuDevicePrimaryCtxRelease: before the real call
//!     the context's work is finished and its maps copied back; after it, all that was kept
//!     for the context (arena, modules, registrations, late substitutes) is forgotten
//!   cuModuleUnload / cuLibraryUnload: what was kept for the module is forgotten
//! ```
//!
//! The driver reuses handles and device addresses: nothing kept for a context or module may
//! outlive it.

mod driver;
mod hooks;
mod late;

use bpftime_gpu_ptx::fatbin::{self, EntryKind};
use bpftime_gpu_ptx::maps::ArenaLayout;
use bpftime_gpu_ptx::patch::{self, Probe};
use bpftime_gpu_ptx::Target;
use bpftime_runtime::gpu::{GpuProbes, HostShare};
use bpftime_runtime::links::{self, LinkState, UprobeLink};
use bpftime_shm::ShmRegion;
use driver::{DevPtr, Driver, Handle, Image};
use std::collections::{HashMap, HashSet};
use std::ffi::{c_void, CStr, CString};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, OnceLock};
use std::time::{Duration, Instant};

/// A device arena: the maps of every probe, in one context.
pub(crate) struct Arena {
    dev: DevPtr,
    /// A non-blocking stream of ours in the arena's context, for the copies the host waits
    /// for (0: the legacy default stream, when the driver could not make one).
    stream: usize,
    len: usize,
    layout: ArenaLayout,
    /// Pinned buffers of `len` bytes for the copies back and the hash merges, free for reuse
    /// (addresses).
    staging: Mutex<Vec<usize>>,
    /// Launches since the maps were last copied back.
    dirty: AtomicU64,
    /// When they were last copied back (or the arena made).
    last_copy: Mutex<Instant>,
    /// What was last written back (folded), so that only changed entries are written again.
    written: Mutex<Vec<u8>>,
    /// What the device has been given of the maps CPU programs also use.
    share: Mutex<HostShare>,
    /// Copies back a stream has handed to the write-back thread and it has not applied yet.
    pending: Mutex<u64>,
    /// Signalled when `pending` drops.
    applied: Condvar,
    /// Copies back queued on a stream and not applied yet (each holds a pinned buffer of the
    /// arena's size): no more are queued while one is (the maps stay dirty until then).
    in_flight: AtomicU64,
    /// The process that made the arena (a forked child has no write-back thread to wait for).
    pid: u32,
    /// Held across a synchronous copy back; true once its context is being torn down (no copy
    /// may start then: the context goes away under it).
    closed: Mutex<bool>,
}

impl Arena {
    /// Waits until the copies back handed over so far are written into the region (they are
    /// applied in order, by one thread): what reads `written` or the share, or writes back a
    /// later copy, comes after them.
    fn settle(&self) {
        self.settle_within(Duration::MAX);
    }

    /// [`Arena::settle`], waiting at most `limit`.
    fn settle_within(&self, limit: Duration) {
        if std::process::id() != self.pid {
            return;
        }
        let deadline = Instant::now().checked_add(limit);
        let mut pending = lock(&self.pending);
        while *pending > 0 {
            pending = match deadline.map(|d| d.saturating_duration_since(Instant::now())) {
                None => self.applied.wait(pending).unwrap_or_else(std::sync::PoisonError::into_inner),
                Some(left) if left.is_zero() => return,
                Some(left) => self.applied.wait_timeout(pending, left).unwrap_or_else(std::sync::PoisonError::into_inner).0,
            };
        }
    }

    /// Writes a copy of this arena back into the region's maps (what changed since the last);
    /// `given` is what the device had been given of the host's maps when the copy was made.
    fn write_back(&self, gpu: &Gpu, copy: &mut [u8], given: &HostShare) {
        let mut written = lock(&self.written);
        let mut share = lock(&self.share);
        // Hashes are given in stream order (merges): what the device had when the copy was made
        // is what the share says now.
        let given = &given.with_hashes_of(&share);
        for e in gpu.probes.write_back(&self.layout, copy, Some(&written), &gpu.region, Some((given, &mut share))) {
            gpu.say_once(format!("CUDA maps: {e}"));
        }
        written.copy_from_slice(copy);
    }
}

/// How often, at most, launches queue a copy back of the maps (`BPFTIME_CUDA_COPY_MS`,
/// default 50 ms); the application's synchronisations copy back whatever is left.
fn copy_interval() -> Duration {
    static MS: OnceLock<u64> = OnceLock::new();
    Duration::from_millis(*MS.get_or_init(|| std::env::var("BPFTIME_CUDA_COPY_MS").ok().and_then(|v| v.trim().parse().ok()).unwrap_or(50)))
}

/// The probes of this process and what the agent did with them.
struct Gpu {
    region: Arc<ShmRegion>,
    probes: GpuProbes,
    /// Translations per target architecture.
    translated: Mutex<HashMap<u32, Result<Vec<Probe>, String>>>,
    /// Whether any patched image was handed to the driver (until then launches are not looked
    /// at). The images themselves are leaked: a library may read its image later.
    patched: AtomicBool,
    /// Modules seen at launch: (their context, their arena when they carry probes).
    modules: Mutex<HashMap<usize, (usize, Option<Arc<Arena>>)>>,
    /// Arenas by context.
    arenas: Mutex<HashMap<usize, Arc<Arena>>>,
    /// Patched images loaded: a module (handle, its context) or a library (handle, None: a
    /// library outlives contexts, with a module in each).
    loaded: Mutex<Vec<(usize, Option<usize>)>>,
    /// Probes spliced into inputs of the application's own links (`cuLinkAddData`): a cubin
    /// holding `bpftime_arena` that it loads attaches them.
    in_links: Mutex<Vec<String>>,
    /// Host memory registered with the devices, by context (page ranges of the region).
    registered: Mutex<HashMap<usize, Vec<(u64, u64)>>>,
    /// Whether the driver's entry points may have been fetched unwrapped (see `start`): only
    /// then are they hooked.
    late: bool,
    /// Messages said already.
    said: Mutex<HashSet<String>>,
}

static GPU: OnceLock<Gpu> = OnceLock::new();

fn verbose() -> bool {
    std::env::var_os("BPFTIME_VERBOSE").is_some()
}

/// Whether this process has CUDA kernel probes (the wrappers are handed out only then).
fn active() -> bool {
    GPU.get().is_some()
}

/// CUDA links this process has tried to start probes for (each is tried once: a probe that
/// cannot run says so once).
static TRIED: Mutex<Vec<u32>> = Mutex::new(Vec::new());

/// Takes the CUDA kernel links among `all` that are for this process; their programs are
/// verified for the GPU now and spliced into kernels as the application loads its modules.
/// With `late`, the application may have fetched the driver's entry points already (the agent
/// was loaded into it, or the probes came after it started): they are hooked where so.
pub(crate) fn start(region: &Arc<ShmRegion>, all: &[UprobeLink], late: bool) {
    let mine: Vec<UprobeLink> = all.iter().filter(|l| crate::glue::for_this_process(l)).cloned().collect();
    lock(&TRIED).extend(mine.iter().filter(|l| l.kind == links::LinkKind::CudaKernel).map(|l| l.id));
    let (probes, failed) = GpuProbes::prepare(region, &mine);
    for (link, name, why) in failed {
        links::raise_state(region, link, LinkState::Failed);
        eprintln!("bpftime: cannot use `{name}` in CUDA kernels: {why}");
    }
    if probes.probes.is_empty() {
        return;
    }
    for p in &probes.probes {
        links::raise_state(region, p.link, LinkState::Waiting);
        if verbose() {
            eprintln!("bpftime: `{}` waits for a CUDA kernel named {}", p.name, p.kernel);
        }
    }
    let set = GPU.set(Gpu {
        region: region.clone(),
        probes,
        translated: Mutex::default(),
        patched: AtomicBool::new(false),
        modules: Mutex::default(),
        arenas: Mutex::default(),
        loaded: Mutex::default(),
        in_links: Mutex::default(),
        registered: Mutex::default(),
        said: Mutex::default(),
        late,
    });
    if let (Ok(()), Some(gpu), true) = (set, GPU.get(), late) {
        late::start(gpu);
    }
}

/// The region's links now (the link follower, after each change and at each poll): CUDA
/// probes that appear in a process that had none start (through inline hooks on the driver,
/// whose entry points the application fetched unwrapped); CUDA probes whose links are gone
/// stop where they run through those hooks (patched modules stay loaded).
pub(crate) fn links_changed(region: &Arc<ShmRegion>, now: &[UprobeLink]) {
    if GPU.get().is_none() {
        // A loader stores its links one by one: the set is taken once two looks in a row (a
        // change, or the follower's poll) find it the same.
        static SEEN: Mutex<Vec<u32>> = Mutex::new(Vec::new());
        let ids: Vec<u32> = now.iter().filter(|l| l.kind == links::LinkKind::CudaKernel && crate::glue::for_this_process(l)).map(|l| l.id).collect();
        let settled = std::mem::replace(&mut *lock(&SEEN), ids.clone()) == ids;
        let fresh = ids.iter().any(|id| !lock(&TRIED).contains(id));
        if fresh && settled {
            guarded(|| {
                start(region, now, true);
                Some(())
            });
        }
    }
    if let Some(gpu) = GPU.get() {
        guarded(|| {
            late::links_changed(gpu, now);
            Some(())
        });
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Runs agent work from a driver entry point: probes silenced, panics contained.
fn guarded<R>(f: impl FnOnce() -> Option<R>) -> Option<R> {
    bpftime_attach::without_probes(|| match std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)) {
        Ok(r) => r,
        Err(p) => {
            // A bug of ours: the application goes on without what it was doing.
            if verbose() {
                let what = p.downcast_ref::<String>().cloned().or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string())).unwrap_or_default();
                eprintln!("bpftime: CUDA probes: internal error ({what}); the application goes on without it");
            }
            None
        }
    })
}

impl Gpu {
    /// Says `msg` once.
    fn say_once(&self, msg: String) {
        if lock(&self.said).insert(msg.clone()) {
            eprintln!("bpftime: {msg}");
        }
    }

    fn translated(&self, sm: u32) -> Result<Vec<Probe>, String> {
        lock(&self.translated).entry(sm).or_insert_with(|| self.probes.translate(Target { sm, shard_atomic_adds: true })).clone()
    }

    /// The PTX the driver would JIT from a fat binary for this device (the newest one it can
    /// run), with its architecture; None (said once) when there is none.
    fn fatbin_ptx(&self, drv: Option<&Driver>, bytes: &[u8]) -> Option<(String, u32)> {
        let fb = match fatbin::parse(bytes, 0) {
            Ok(f) => f,
            Err(e) => {
                self.say_once(format!("a CUDA module's fatbin cannot be read ({e}); it runs without probes"));
                return None;
            }
        };
        let cc = drv.and_then(|d| d.compute_capability(d.device())).unwrap_or(u32::MAX);
        let best = fb.entries.iter().filter(|e| e.kind == EntryKind::Ptx && e.arch <= cc).max_by_key(|e| e.arch);
        let Some(e) = best else {
            let kernels: Vec<String> = fb.entries.iter().filter(|e| e.kind == EntryKind::Elf).map(|e| format!("sm_{}", e.arch)).collect();
            self.say_once(format!("a CUDA module has no PTX for this GPU (only SASS: {}); its kernels run without probes", kernels.join(", ")));
            return None;
        };
        match e.contents(bytes) {
            Ok(c) => Some((String::from_utf8_lossy(&c).into_owned(), e.arch)),
            Err(err) => {
                self.say_once(format!("a CUDA module's PTX cannot be read ({err}); it runs without probes"));
                None
            }
        }
    }

    /// Relocatable device code: the units' PTX with the probes spliced into the units that
    /// define their kernels, linked by the driver into one cubin (the runtime would have
    /// JIT-linked the same units, or loaded their device-linked machine code). None (said
    /// once) when a unit has no PTX, no probe goes into them, or the link fails.
    fn patch_linked(&self, drv: Option<&Driver>, units: &[&[u8]]) -> Option<PatchedImage> {
        let drv = drv?;
        let cc = drv.compute_capability(drv.device()).unwrap_or(u32::MAX);
        // The cubin made here is for this device's architecture, and a library is loaded into
        // every context: only where all devices share it.
        if drv.compute_capabilities().is_none_or(|all| all.iter().any(|&c| c != cc)) {
            self.say_once("relocatable device code on GPUs of different architectures (or that the driver does not list) is not relinked with probes; its kernels run without them".into());
            return None;
        }
        // Each unit's PTX for this device, if it has one (the device runtime's own unit, which
        // nvcc links in for kernels that launch kernels, may have machine code only).
        let ptx: Vec<Option<(String, u32)>> = units.iter().map(|u| unit_ptx(u, cc)).collect();
        let arch = ptx.iter().flatten().map(|t| t.1).min().unwrap_or(75);
        let probes = self.probes_for(arch)?;
        let mut spliced = vec![];
        // What goes into the link: every unit's PTX (with the probes where they go), as the
        // driver JIT-links a relocatable application's units for a GPU it has no machine code
        // for (so that every unit is compiled for the same architecture); a unit without PTX
        // as its fatbin (its machine code).
        let mut inputs: Vec<driver::LinkInput> = vec![];
        for (unit, text) in units.iter().zip(&ptx) {
            let Some((text, _)) = text else {
                inputs.push(driver::LinkInput::Fatbin(unit));
                continue;
            };
            let patched = match patch::patch_unit(text, &probes) {
                Ok(p) => p,
                Err(e) => {
                    self.say_once(format!("a unit of relocatable device code cannot be patched ({e}); its kernels run without probes"));
                    return None;
                }
            };
            spliced.extend(patched.spliced);
            inputs.push(driver::LinkInput::Ptx(CString::new(patched.ptx).ok()?));
        }
        // A probe of a kernel defined in several units (a template's `.weak` entry) is spliced
        // into each; the linker keeps one of them.
        spliced.sort();
        spliced.dedup();
        if spliced.is_empty() {
            return None;
        }
        // Kernels that launch kernels call the device runtime, which `nvcc -rdc` links in (as a
        // unit of its own, or from libcudadevrt.a): the relink needs it too.
        let texts: Vec<&str> = ptx.iter().flatten().map(|t| t.0.as_str()).collect();
        let runtime_calls: Vec<String> =
            bpftime_gpu_ptx::link::unresolved_functions(&texts).into_iter().filter(|f| f.starts_with("cuda") || f.starts_with("__cuda")).collect();
        let mut libraries = vec![];
        if let Some(first) = runtime_calls.first() {
            let provided = units.iter().zip(&ptx).any(|(u, t)| t.is_none() && unit_defines(u, &runtime_calls));
            match device_runtime_library() {
                _ if provided => {}
                Some(lib) => libraries.push(lib),
                None => {
                    self.say_once(format!(
                        "relocatable device code calls the device runtime ({first}) and libcudadevrt.a was not found (set BPFTIME_CUDADEVRT to its path); its kernels run without probes"
                    ));
                    return None;
                }
            }
        }
        let libs: Vec<&CStr> = libraries.iter().map(CString::as_c_str).collect();
        let cubin = match drv.link(&inputs, &libs) {
            Ok(c) => c,
            Err(e) => {
                self.say_once(format!("relocatable device code with probes cannot be linked ({e}); its kernels run without probes"));
                return None;
            }
        };
        Some(self.patched_image(Code::Cubin(Box::leak(cubin.into_boxed_slice())), spliced, units.len()))
    }

    /// The probes translated for `arch`; None (said once) when they cannot be.
    fn probes_for(&self, arch: u32) -> Option<Vec<Probe>> {
        match self.translated(arch.clamp(75, 120)) {
            Ok(p) => Some(p),
            Err(e) => {
                self.say_once(format!("CUDA probes cannot be translated: {e}"));
                None
            }
        }
    }

    /// What a load of spliced code attaches.
    fn patched_image(&self, code: Code, spliced: Vec<(String, String, patch::Site)>, units: usize) -> PatchedImage {
        self.announce(&spliced, units);
        let kernels = spliced.iter().map(|s| s.0.clone()).collect();
        PatchedImage { code, probes: spliced.into_iter().map(|s| s.1).collect(), kernels }
    }

    /// Says (with `BPFTIME_VERBOSE`) where probes were spliced, and from now on launches are
    /// looked at.
    fn announce(&self, spliced: &[(String, String, patch::Site)], units: usize) {
        if verbose() {
            for (kernel, probe, site) in spliced {
                eprintln!("bpftime: `{probe}` spliced at the {site} of CUDA kernel {kernel}");
            }
            if units > 1 {
                eprintln!("bpftime: {units} units of relocatable device code linked with the probes");
            }
        }
        self.patched.store(true, Ordering::Release);
    }

    /// The patched PTX for an image, or None to load it as it is.
    fn patch_image(&self, drv: Option<&Driver>, image: Image<'_>) -> Option<PatchedImage> {
        let (ptx, arch) = match image {
            Image::Ptx(p) => (p.to_string(), ptx_target(p).unwrap_or(75)),
            Image::Fatbin(bytes) => self.fatbin_ptx(drv, bytes)?,
            Image::Linked(units) => return self.patch_linked(drv, &units),
            Image::Cubin(elf) if linked_by_us(elf) => return None,
            Image::Cubin(_) => {
                self.say_once("a CUDA module was loaded as a cubin (SASS only); its kernels run without probes".into());
                return None;
            }
            Image::Unknown => return None,
        };
        let probes = self.probes_for(arch)?;
        let patched = match patch::patch(&ptx, &probes) {
            Ok(p) => p,
            Err(e) => {
                self.say_once(format!("a CUDA module cannot be patched ({e}); it runs without probes"));
                return None;
            }
        };
        if patched.spliced.is_empty() {
            return None;
        }
        let text = CString::new(patched.ptx).ok()?;
        Some(self.patched_image(Code::Ptx(Box::leak(text.into_boxed_c_str())), patched.spliced, 1))
    }

    /// The arena of the current context, made on first use.
    fn context_arena(&self, drv: &Driver) -> Result<Arc<Arena>, String> {
        let ctx = drv.current_context().ok_or("no current CUDA context")? as usize;
        let mut arenas = lock(&self.arenas);
        if let Some(a) = arenas.get(&ctx) {
            return Ok(a.clone());
        }
        let nsm = drv.sm_count(drv.device()).unwrap_or(1);
        let mut layout = self.probes.layout(nsm, true)?;
        let mut in_host = vec![];
        if layout.host_maps().next().is_some() {
            match self.map_host_storage(drv, ctx, &layout) {
                Ok(placed) => in_host = placed,
                Err(e) => {
                    self.say_once(format!("CUDA maps declared in host memory are kept in device memory instead: {e}"));
                    layout = self.probes.layout(nsm, false)?;
                }
            }
        }
        let writes = self.probes.host_writes();
        let mut image = self.probes.arena_image(&layout, &self.region);
        let dev = drv.mem_alloc(image.len())?;
        for &(slot, storage) in &in_host {
            layout.place_in_host(&mut image, slot, dev, storage)?;
        }
        let stream = drv.private_stream();
        drv.copy_to_device_now(dev, &image, stream)?;
        if verbose() && !in_host.is_empty() {
            let names: Vec<&str> = in_host.iter().map(|&(slot, _)| layout.maps[slot].spec.name.as_str()).collect();
            eprintln!("bpftime: CUDA maps in host memory (the region's own values): {}", names.join(", "));
        }
        if verbose() {
            eprintln!("bpftime: CUDA maps: {} bytes of device memory ({} maps, {nsm} SMs)", image.len(), layout.maps.len());
        }
        let share = Mutex::new(self.probes.host_share(&layout, &image, writes));
        let a = Arc::new(Arena {
            dev,
            stream: stream as usize,
            len: image.len(),
            layout,
            staging: Mutex::default(),
            dirty: AtomicU64::new(0),
            last_copy: Mutex::new(Instant::now()),
            share,
            written: Mutex::new(image.clone()),
            pending: Mutex::new(0),
            applied: Condvar::new(),
            in_flight: AtomicU64::new(0),
            pid: std::process::id(),
            closed: Mutex::new(false),
        });
        arenas.insert(ctx, a.clone());
        Ok(a)
    }

    /// Registers the region's values of the maps `layout` keeps in host memory with the device
    /// (the pages holding them, once per context) and returns each one's device address in the
    /// current context `ctx`: (slot, address).
    fn map_host_storage(&self, drv: &Driver, ctx: usize, layout: &ArenaLayout) -> Result<Vec<(usize, DevPtr)>, String> {
        let storage = self.probes.host_storage(layout)?;
        // SAFETY: sysconf cannot fail for _SC_PAGESIZE.
        let page = (unsafe { libc::sysconf(libc::_SC_PAGESIZE) }).max(4096) as u64;
        let mut pages: Vec<(u64, u64)> = storage.iter().map(|&(_, addr, len)| (addr / page * page, (addr + len).div_ceil(page) * page)).collect();
        pages.sort_unstable();
        let mut merged: Vec<(u64, u64)> = vec![];
        for (start, end) in pages {
            match merged.last_mut() {
                Some(last) if start <= last.1 => last.1 = last.1.max(end),
                _ => merged.push((start, end)),
            }
        }
        let mut registered = lock(&self.registered);
        let registered = registered.entry(ctx).or_default();
        for &(start, end) in &merged {
            if registered.iter().any(|&(s, e)| s <= start && end <= e) {
                continue;
            }
            // SAFETY: the pages lie in the region, mapped for the life of the process.
            unsafe { drv.host_register(start as *mut u8, (end - start) as usize) }?;
            registered.push((start, end));
        }
        storage
            .iter()
            .map(|&(slot, addr, len)| {
                // The device address of the registration's start, plus the offset: registered
                // memory is mapped as a whole.
                let (start, _) = registered.iter().find(|&&(s, e)| s <= addr && addr + len <= e).copied().ok_or("a map's pages are not registered")?;
                Ok((slot, drv.host_device_pointer(start as *mut u8)? + (addr - start)))
            })
            .collect()
    }

    /// The arena of `module` when it carries probes (it has our `bpftime_arena` global), with
    /// that global set.
    fn module_arena(&self, drv: &Driver, module: Handle) -> Option<Arc<Arena>> {
        if let Some((_, known)) = lock(&self.modules).get(&(module as usize)) {
            return known.clone();
        }
        let ctx = drv.current_context()? as usize;
        let found = drv.module_global(module, &CString::new(patch::ARENA_GLOBAL).ok()?).and_then(|(global, size)| {
            if size < 8 * patch::ARENA_WORDS.len() {
                return None;
            }
            let arena = self.context_arena(drv).map_err(|e| self.say_once(format!("CUDA probes are off: {e}"))).ok()?;
            let pid = std::process::id() as u64;
            let host = bpftime_runtime::gpu::host_words().words();
            let words = [arena.dev, arena.len as u64, (pid << 32) | pid, host[0], host[1], host[2], host[3], host[4]];
            let bytes: Vec<u8> = words.iter().flat_map(|w| w.to_le_bytes()).collect();
            drv.copy_to_device_now(global, &bytes, arena.stream as Handle).map_err(|e| self.say_once(format!("CUDA probes are off: {e}"))).ok()?;
            Some(arena)
        });
        lock(&self.modules).insert(module as usize, (ctx, found.clone()));
        found
    }

    /// Copies the host-owned maps (those CPU programs use too) to the device, on `stream`
    /// before the launch, so the kernel's probes see what the CPU side wrote.
    fn push_host_values(&self, drv: &Driver, arena: &Arc<Arena>, stream: Handle) {
        if !self.probes.host_may_push(&arena.layout, &lock(&arena.share)) {
            return;
        }
        // What the host gives is judged against the device's last copy written back.
        arena.settle();
        let push = {
            let written = lock(&arena.written);
            let mut share = lock(&arena.share);
            self.probes.host_values(&arena.layout, &mut share, &written)
        };
        if verbose() {
            for name in &push.adopted {
                eprintln!("bpftime: CUDA map `{name}` was written by the host: what it writes reaches the GPU before each launch from now on");
            }
        }
        for (off, bytes) in push.copies {
            if let Err(e) = drv.memcpy_htod_async(arena.dev + off, &bytes, stream) {
                self.say_once(format!("CUDA maps shared with CPU probes are not copied to the GPU: {e}"));
            }
        }
        for (slot, host) in push.merges {
            if let Err(e) = self.queue_hash_merge(drv, arena, slot, host, stream) {
                self.say_once(format!("CUDA maps shared with CPU probes are not copied to the GPU: {e}"));
            }
        }
    }

    /// Queues, on `stream` before a launch, the merge of host-owned hash `slot` that the host
    /// changed: its device table copied to pinned memory, a host function writing what the GPU
    /// changed to the region and the region's entries into the buffer, and the buffer copied
    /// back to the device (then the buffer returned to the pool).
    fn queue_hash_merge(&self, drv: &Driver, arena: &Arc<Arena>, slot: usize, host: bpftime_runtime::gpu::Entries, stream: Handle) -> Result<(), String> {
        let m = &arena.layout.maps[slot];
        let (off, len) = (m.data_off, m.data_len as usize);
        // The table and its count fit: the arena holds them and its header.
        let buf = match lock(&arena.staging).pop() {
            Some(b) => b as *mut u8,
            None => drv.mem_alloc_host(arena.len)?,
        };
        let give_back = || lock(&arena.staging).push(buf as usize);
        // SAFETY: `buf` is a pinned buffer of `arena.len > len + 8` bytes owned by this merge
        // until the host function queued last returns it to the pool.
        unsafe { drv.memcpy_dtoh_async(buf, arena.dev + off, len, stream) }.inspect_err(|_| give_back())?;
        let job = Box::into_raw(Box::new(Merge { arena: arena.clone(), slot, buf: buf as usize, release: false, host }));
        // SAFETY: `merge_hash` takes the box back exactly once and calls no CUDA function.
        if let Err(e) = unsafe { drv.launch_host_func(stream, merge_hash, job.cast()) } {
            // SAFETY: the driver did not take the job: it is still ours.
            drop(unsafe { Box::from_raw(job) });
            give_back();
            return Err(e);
        }
        // From here the buffer belongs to the stream: it goes back to the pool only through
        // the release function (a failed copy leaves the device's table as it was).
        let count_off = arena.layout.hash_count_offset(slot);
        // SAFETY: the merge's host function has filled the buffer when the stream gets here.
        let copied = unsafe { drv.memcpy_htod_async_pinned(arena.dev + off, buf, len, stream) }
            // SAFETY: as above; the count is the 8 bytes after the table.
            .and_then(|()| unsafe { drv.memcpy_htod_async_pinned(arena.dev + count_off, buf.add(len), 8, stream) });
        let release = Box::into_raw(Box::new(Merge { arena: arena.clone(), slot, buf: buf as usize, release: true, host: Default::default() }));
        // SAFETY: as above.
        if unsafe { drv.launch_host_func(stream, merge_hash, release.cast()) }.is_err() {
            // SAFETY: the driver did not take the job; the buffer stays out of the pool (the
            // stream may still read it).
            drop(unsafe { Box::from_raw(release) });
        }
        copied
    }

    /// Queues, on `stream` after a launch: the arena copied to pinned memory, the ring
    /// cursors cleared, and a host function writing the maps back.
    fn queue_write_back(&self, drv: &Driver, arena: &Arc<Arena>, stream: Handle) -> Result<(), String> {
        let buf = match lock(&arena.staging).pop() {
            Some(b) => b as *mut u8,
            None => drv.mem_alloc_host(arena.len)?,
        };
        // SAFETY: `buf` is a pinned buffer of `arena.len` bytes owned by this write-back until
        // its host function returns it to the pool.
        unsafe { drv.memcpy_dtoh_async(buf, arena.dev, arena.len, stream) }.inspect_err(|_| lock(&arena.staging).push(buf as usize))?;
        for (off, len) in arena.layout.ring_resets() {
            drv.memset_async(arena.dev + off, len as usize, stream)?;
        }
        // What the device has been given of the host's maps, as of this copy (stream order).
        let given = lock(&arena.share).clone();
        let job = Box::into_raw(Box::new(WriteBack { arena: arena.clone(), buf: buf as usize, given }));
        arena.in_flight.fetch_add(1, Ordering::AcqRel);
        // SAFETY: `write_back` takes the box back exactly once and calls no CUDA function.
        let r = unsafe { drv.launch_host_func(stream, write_back, job.cast()) };
        if r.is_err() {
            // SAFETY: the driver did not take the job: it is still ours.
            drop(unsafe { Box::from_raw(job) });
            arena.in_flight.fetch_sub(1, Ordering::AcqRel);
        }
        r
    }
}

/// A patched image to load, and the probes spliced into it.
pub(crate) struct PatchedImage {
    code: Code,
    probes: Vec<String>,
    /// The kernels probes were spliced into (mangled names).
    kernels: Vec<String>,
}

/// What a load call is given in place of the application's image (kept for the process's
/// life, as the driver may read an image again).
enum Code {
    /// PTX text, NUL-terminated.
    Ptx(&'static CStr),
    /// A cubin the driver's linker made.
    Cubin(&'static [u8]),
}

impl PatchedImage {
    /// The PTX text, when the image is one.
    fn text(&self) -> Option<&'static CStr> {
        match self.code {
            Code::Ptx(text) => Some(text),
            Code::Cubin(_) => None,
        }
    }

    /// The image, as a load call takes it.
    fn as_ptr(&self) -> *const c_void {
        match self.code {
            Code::Ptx(text) => text.as_ptr().cast(),
            Code::Cubin(bytes) => bytes.as_ptr().cast(),
        }
    }
}

/// A copy back in flight.
struct WriteBack {
    arena: Arc<Arena>,
    buf: usize,
    given: HostShare,
}

/// A hash merge in flight (see `Gpu::queue_hash_merge`): its first host function merges, its
/// second (`release`) returns the buffer.
struct Merge {
    arena: Arc<Arena>,
    slot: usize,
    buf: usize,
    release: bool,
    /// The region's entries when the launch was queued.
    host: bpftime_runtime::gpu::Entries,
}

/// Host function of a hash merge: merges the device table in the buffer with the region's
/// hash and leaves the table to give the device there (then its count), or returns the buffer.
extern "C" fn merge_hash(data: *mut c_void) {
    // All of it our own work (the driver's thread has system calls intercepted).
    bpftime_attach::without_probes(|| merge_hash_now(data));
}

/// [`merge_hash`]'s work.
fn merge_hash_now(data: *mut c_void) {
    // SAFETY: `data` is a box leaked in `queue_hash_merge`, handed to this one call.
    let job = unsafe { Box::from_raw(data.cast::<Merge>()) };
    if job.release {
        lock(&job.arena.staging).push(job.buf);
        return;
    }
    // The copies back queued before this merge are in the region first.
    job.arena.settle();
    guarded(|| {
        let gpu = GPU.get()?;
        let m = job.arena.layout.maps.get(job.slot)?;
        let len = m.data_len as usize;
        // SAFETY: the copy into the buffer completed before the stream reached this function,
        // and the copy out of it runs only after it returns.
        let buf = unsafe { std::slice::from_raw_parts_mut(job.buf as *mut u8, len + 8) };
        let (table, count) = buf.split_at_mut(len);
        // Unmerged, the table goes back as it came (with its own count).
        let mut n = job.arena.layout.table_entries(job.slot, table).len() as u64;
        match gpu.probes.merge_hash(&job.arena.layout, job.slot, &mut lock(&job.arena.share), table, &job.host) {
            Ok(merged) => n = merged,
            Err(e) => gpu.say_once(format!("CUDA maps: {e}")),
        }
        count.copy_from_slice(&n.to_le_bytes());
        Some(())
    });
}

/// Host function run by the driver once a launch and its copy back are done: hands the copy
/// to the write-back thread, so that the stream does not wait while the copy is compared
/// with the last and what changed is written into the region (tens of milliseconds for a
/// large per-thread map).
extern "C" fn write_back(data: *mut c_void) {
    // All of it our own work (the driver's thread has system calls intercepted; the
    // write-back thread started here is the agent's).
    bpftime_attach::without_probes(|| write_back_now(data));
}

/// [`write_back`]'s work.
fn write_back_now(data: *mut c_void) {
    // SAFETY: `data` is the box leaked in `queue_write_back`, handed to this one call.
    let job = unsafe { Box::from_raw(data.cast::<WriteBack>()) };
    *lock(&job.arena.pending) += 1;
    // Applied here when there is no thread to hand it to.
    let job = match WriteBackThread::get() {
        Some(t) => t.hand_over(job),
        None => Some(job),
    };
    if let Some(job) = job {
        apply_write_back(*job);
    }
}

/// Writes one copy back into the region, returns its buffer to the pool and counts it applied.
fn apply_write_back(job: WriteBack) {
    guarded(|| {
        let gpu = GPU.get()?;
        // SAFETY: the copy into the buffer completed before the stream reached the host
        // function that handed it over, and no one else uses the buffer until it is back in
        // the pool.
        let mut arena = unsafe { std::slice::from_raw_parts(job.buf as *const u8, job.arena.len) }.to_vec();
        job.arena.write_back(gpu, &mut arena, &job.given);
        Some(())
    });
    lock(&job.arena.staging).push(job.buf);
    job.arena.in_flight.fetch_sub(1, Ordering::AcqRel);
    *lock(&job.arena.pending) -= 1;
    job.arena.applied.notify_all();
}

/// At exit: the copies back handed over are written into the region (a bounded wait: the
/// process exits regardless).
extern "C" fn settle_at_exit() {
    guarded(|| {
        let arenas: Vec<Arc<Arena>> = lock(&GPU.get()?.arenas).values().cloned().collect();
        for a in arenas {
            a.settle_within(Duration::from_secs(5));
        }
        Some(())
    });
}

/// The thread that applies copies back, in the order the streams handed them over.
struct WriteBackThread {
    /// The process it runs in (a forked child has no such thread: it applies its own).
    pid: u32,
    queue: Mutex<std::collections::VecDeque<Box<WriteBack>>>,
    ready: Condvar,
}

impl WriteBackThread {
    /// The thread, started on first use; None if it cannot be started.
    fn get() -> Option<&'static WriteBackThread> {
        static THREAD: OnceLock<Option<WriteBackThread>> = OnceLock::new();
        let t = THREAD.get_or_init(|| {
            // SAFETY: registers a plain extern "C" function to run at exit (atexit(3)).
            unsafe { libc::atexit(settle_at_exit) };
            let started = std::thread::Builder::new().name("bpftime-cuda-wb".into()).spawn(|| {
                while let Some(t) = WriteBackThread::get() {
                    let job = {
                        let mut q = lock(&t.queue);
                        loop {
                            match q.pop_front() {
                                Some(job) => break job,
                                None => q = t.ready.wait(q).unwrap_or_else(std::sync::PoisonError::into_inner),
                            }
                        }
                    };
                    apply_write_back(*job);
                }
            });
            started.ok().map(|_| WriteBackThread { pid: std::process::id(), queue: Mutex::default(), ready: Condvar::new() })
        });
        t.as_ref()
    }

    /// Queues `job`, or gives it back when this process has no such thread (after a fork).
    fn hand_over(&self, job: Box<WriteBack>) -> Option<Box<WriteBack>> {
        if self.pid != std::process::id() {
            return Some(job);
        }
        lock(&self.queue).push_back(job);
        self.ready.notify_one();
        None
    }
}

/// The `.target sm_NN` of a PTX text.
fn ptx_target(ptx: &str) -> Option<u32> {
    let line = ptx.lines().find(|l| l.trim_start().starts_with(".target"))?;
    let t = line.split_whitespace().nth(1)?.trim_end_matches(',');
    t.strip_prefix("sm_")?.trim_end_matches(|c: char| c.is_ascii_alphabetic()).parse().ok()
}

/// The patched text to load instead of `image`, if any probe goes into it.
fn replacement(image: *const c_void) -> Option<PatchedImage> {
    let gpu = GPU.get()?;
    guarded(|| {
        // SAFETY: `image` was given to a load call, which requires one of the forms
        // `read_image` accepts.
        let image = unsafe { driver::read_image(image) };
        gpu.patch_image(Driver::get(), image)
    })
}

/// The device runtime library (`libcudadevrt.a`, which `nvcc -rdc` links into kernels that
/// launch kernels): `$BPFTIME_CUDADEVRT`, else where CUDA toolkits and NVIDIA's wheels put it.
fn device_runtime_library() -> Option<CString> {
    use std::os::unix::ffi::OsStrExt;
    if let Some(p) = std::env::var_os("BPFTIME_CUDADEVRT") {
        return CString::new(p.as_bytes()).ok();
    }
    let mut dirs: Vec<std::path::PathBuf> =
        ["CUDA_HOME", "CUDA_PATH"].iter().filter_map(std::env::var_os).map(|d| std::path::Path::new(&d).join("lib64")).collect();
    dirs.extend(
        [
            "/usr/local/cuda/lib64",
            "/usr/local/cuda/targets/x86_64-linux/lib",
            "/usr/local/cuda/targets/sbsa-linux/lib",
            "/usr/lib/x86_64-linux-gnu",
            "/usr/lib/aarch64-linux-gnu",
        ]
        .map(std::path::PathBuf::from),
    );
    if let Ok(wheels) = std::fs::read_dir("/opt/bpftime-cuda/nvidia") {
        dirs.extend(wheels.flatten().map(|w| w.path().join("lib")));
    }
    let lib = dirs.into_iter().map(|d| d.join("libcudadevrt.a")).find(|p| p.is_file())?;
    CString::new(lib.as_os_str().as_bytes()).ok()
}

/// The newest PTX of a unit's fatbin that a device of compute capability `cc` can run.
fn unit_ptx(bytes: &[u8], cc: u32) -> Option<(String, u32)> {
    let fb = fatbin::parse(bytes, 0).ok()?;
    let e = fb.entries.iter().filter(|e| e.kind == EntryKind::Ptx && e.arch <= cc).max_by_key(|e| e.arch)?;
    Some((String::from_utf8_lossy(&e.contents(bytes).ok()?).into_owned(), e.arch))
}

/// Whether the machine code of a unit's fatbin defines one of `names` (its first ELF entry:
/// the others are the same code for other GPUs).
fn unit_defines(bytes: &[u8], names: &[String]) -> bool {
    use object::{Object as _, ObjectSymbol as _};
    let Ok(fb) = fatbin::parse(bytes, 0) else { return false };
    let Some(elf) = fb.entries.iter().find(|e| e.kind == EntryKind::Elf).and_then(|e| e.contents(bytes).ok()) else { return false };
    object::File::parse(&*elf).is_ok_and(|f| f.symbols().any(|s| !s.is_undefined() && s.name().is_ok_and(|n| names.iter().any(|x| x == n))))
}

/// Whether a cubin came out of a link the agent spliced probes into (it defines the arena).
fn linked_by_us(elf: &[u8]) -> bool {
    elf.windows(patch::ARENA_GLOBAL.len() + 1).any(|w| w.starts_with(patch::ARENA_GLOBAL.as_bytes()) && w.last() == Some(&0))
}

/// A `cuLinkAddFile` input (PTX or fat binary file at `path`) with the probes spliced in, as
/// [`patched_link_input`] makes of the same bytes; None for other kinds, unreadable files and
/// inputs no probe goes into.
///
/// # Safety
/// `path` is null or a NUL-terminated string.
pub(crate) unsafe fn patched_link_file(kind: std::ffi::c_int, path: *const std::ffi::c_char) -> Option<CString> {
    // CU_JIT_INPUT_PTX (1), CU_JIT_INPUT_FATBINARY (2).
    if !(kind == 1 || kind == 2) || path.is_null() || GPU.get().is_none() {
        return None;
    }
    use std::os::unix::ffi::OsStrExt;
    // SAFETY: the caller's contract.
    let path = std::ffi::OsStr::from_bytes(unsafe { std::ffi::CStr::from_ptr(path) }.to_bytes());
    let bytes = std::fs::read(path).ok()?;
    if kind == 2 && !driver::holds_fatbin(&bytes) {
        return None;
    }
    // SAFETY: the file's bytes, as `cuLinkAddData` would be given them for `kind` (a fat
    // binary readable for the length its header gives).
    unsafe { patched_link_input(kind, bytes.as_ptr().cast(), bytes.len()) }
}

/// An input of the application's own link (`cuLinkAddData`: `kind` PTX or a fat binary) with
/// the probes spliced in as into a unit of relocatable device code, or None to pass it on as
/// it is.
///
/// # Safety
/// `data` is what cuLinkAddData accepts for `kind`: `size` bytes of PTX, or a fat binary.
pub(crate) unsafe fn patched_link_input(kind: std::ffi::c_int, data: *const c_void, size: usize) -> Option<CString> {
    const INPUT_PTX: std::ffi::c_int = 1;
    const INPUT_FATBINARY: std::ffi::c_int = 2;
    let gpu = GPU.get()?;
    if data.is_null() {
        return None;
    }
    guarded(|| {
        let (text, arch) = match kind {
            INPUT_PTX => {
                // SAFETY: the caller's contract: `size` bytes of PTX.
                let bytes = unsafe { std::slice::from_raw_parts(data.cast::<u8>(), size) };
                let text = String::from_utf8_lossy(bytes).trim_end_matches('\0').to_string();
                let arch = ptx_target(&text).unwrap_or(75);
                (text, arch)
            }
            // A fatbin without PTX for this device (machine code only, as the device
            // runtime's unit) goes in as it is.
            // SAFETY: the caller's contract: a fat binary, as `cuLinkAddData` takes one.
            INPUT_FATBINARY => match unsafe { driver::read_image(data) } {
                Image::Fatbin(bytes) => unit_ptx(bytes, Driver::get().and_then(|d| d.compute_capability(d.device())).unwrap_or(u32::MAX))?,
                _ => return None,
            },
            _ => return None,
        };
        let probes = gpu.probes_for(arch)?;
        let patched = match patch::patch_unit(&text, &probes) {
            Ok(p) => p,
            Err(e) => {
                gpu.say_once(format!("an input of a CUDA link cannot be patched ({e}); it is linked without probes"));
                return None;
            }
        };
        if patched.spliced.is_empty() {
            return None;
        }
        gpu.announce(&patched.spliced, 1);
        let mut in_links = lock(&gpu.in_links);
        for (_, p, _) in patched.spliced {
            if !in_links.contains(&p) {
                in_links.push(p);
            }
        }
        CString::new(patched.ptx).ok()
    })
}

/// After a load of `image` as it was: a cubin linked from inputs the agent spliced probes into
/// attaches them.
fn loaded_as_is(image: *const c_void, handle: impl Fn() -> Loaded) {
    guarded(|| {
        let gpu = GPU.get()?;
        // SAFETY: as in `replacement`.
        let Image::Cubin(elf) = (unsafe { driver::read_image(image) }) else { return None };
        if !linked_by_us(elf) {
            return None;
        }
        let probes = lock(&gpu.in_links).clone();
        loaded_patched(&PatchedImage { code: Code::Cubin(&[]), probes, kernels: vec![] }, handle());
        Some(())
    });
}

/// What a load call made.
pub(crate) enum Loaded {
    /// `cuModuleLoad*`: a module of the current context.
    Module(Handle),
    /// `cuLibraryLoadData`: a library, with a module per context.
    Library(Handle),
}

/// A patched image loaded: its probes are attached.
fn loaded_patched(image: &PatchedImage, handle: Loaded) {
    guarded(|| {
        let gpu = GPU.get()?;
        let ctx = || Driver::get().and_then(Driver::current_context).map_or(0, |c| c as usize);
        lock(&gpu.loaded).push(match handle {
            Loaded::Module(h) => (h as usize, Some(ctx())),
            Loaded::Library(h) => (h as usize, None),
        });
        for p in gpu.probes.probes.iter().filter(|p| image.probes.contains(&p.name)) {
            links::raise_state(&gpu.region, p.link, LinkState::Attached);
        }
        Some(())
    });
}

/// The driver refused an input of a link with probes spliced in: the original goes in.
fn link_input_refused(r: driver::CuResult) {
    guarded(|| {
        let gpu = GPU.get()?;
        let why = Driver::get().map_or_else(|| format!("CUDA error {r}"), |d| d.error_name(r));
        gpu.say_once(format!("the driver refused a CUDA link input with probes spliced in ({why}); it is linked without them"));
        Some(())
    });
}

/// A driver entry point we wrap was asked for at an ABI newer than we know.
fn newer_abi(name: &[u8], version: std::ffi::c_int) {
    guarded(|| {
        let gpu = GPU.get()?;
        let name = String::from_utf8_lossy(name);
        gpu.say_once(format!("{name} was asked for at CUDA ABI {version}, newer than bpftime knows; it is not watched (CUDA probes may miss what it does)"));
        Some(())
    });
}

/// With `BPFTIME_VERBOSE`: what patching a module and loading it cost.
fn report_load_time(patching: Duration, loading: Duration) {
    if verbose() {
        eprintln!("bpftime: CUDA module patched in {:.2} ms, loaded by the driver in {:.2} ms", patching.as_secs_f64() * 1e3, loading.as_secs_f64() * 1e3);
    }
}

/// The driver refused a patched image (the original is loaded instead).
fn refused(image: &PatchedImage, r: driver::CuResult) {
    let name = Driver::get().map(|d| d.error_name(r)).unwrap_or_else(|| format!("CUDA error {r}"));
    refused_because(image, &name);
}

/// The driver refused a patched image for `why`: its probes' links fail, said once.
fn refused_because(image: &PatchedImage, why: &str) {
    guarded(|| {
        let gpu = GPU.get()?;
        for p in gpu.probes.probes.iter().filter(|p| image.probes.contains(&p.name)) {
            links::raise_state(&gpu.region, p.link, LinkState::Failed);
        }
        gpu.say_once(format!("the driver refused a CUDA module with probes ({why}); it runs without them"));
        Some(())
    });
}

/// Before a launch of `f` on `stream`: its module's arena when the module carries probes.
/// While the stream is captured into a graph nothing is set up (that would allocate).
fn arena_for_launch(f: Handle, stream: Handle) -> Option<Arc<Arena>> {
    let gpu = GPU.get()?;
    if !gpu.patched.load(Ordering::Acquire) {
        return None;
    }
    guarded(|| {
        let drv = Driver::get()?;
        if drv.capturing(stream) {
            return None;
        }
        let module = drv.module_of(f)?;
        let arena = gpu.module_arena(drv, module)?;
        gpu.push_host_values(drv, &arena, stream);
        Some(arena)
    })
}

/// Before a graph launch on `stream`: every patched module of the current context set up (its
/// kernels may have been captured without ever being launched directly), and the context's
/// arena to write back after it.
fn arena_for_graph(stream: Handle) -> Option<Arc<Arena>> {
    let gpu = GPU.get()?;
    guarded(|| {
        let drv = Driver::get()?;
        if drv.capturing(stream) {
            return None;
        }
        let loaded = lock(&gpu.loaded).clone();
        let current = drv.current_context().map_or(0, |c| c as usize);
        let mut arena = None;
        // This context's modules (a module of another context gets that context's arena).
        for (h, module_ctx) in loaded.into_iter().filter(|&(_, c)| c.is_none_or(|c| c == current)) {
            let module = if module_ctx.is_none() { drv.library_module(h as Handle) } else { Some(h as Handle) };
            if let Some(a) = module.and_then(|m| gpu.module_arena(drv, m)) {
                arena = Some(a);
            }
        }
        if let Some(a) = &arena {
            gpu.push_host_values(drv, a, stream);
        }
        arena
    })
}

/// After a successful launch that used `arena`: its maps are written back, in stream order.
/// `arena` is None for a launch captured into a graph (see `arena_for_launch`): the graph's
/// launches are written back instead.
fn after_launch(arena: Option<Arc<Arena>>, stream: Handle) {
    let Some(arena) = arena else { return };
    guarded(|| {
        let gpu = GPU.get()?;
        let drv = Driver::get()?;
        arena.dirty.fetch_add(1, Ordering::Relaxed);
        {
            let mut last = lock(&arena.last_copy);
            // One copy in flight at a time: a second would only wait behind it, holding
            // another pinned buffer of the arena's size.
            if last.elapsed() < copy_interval() || arena.in_flight.load(Ordering::Acquire) > 0 {
                return None;
            }
            *last = Instant::now();
        }
        arena.dirty.store(0, Ordering::Relaxed);
        if let Err(e) = gpu.queue_write_back(drv, &arena, stream) {
            gpu.say_once(format!("CUDA maps are not copied back: {e}"));
        }
        Some(())
    });
}

/// After the application synchronised (its results are final): the maps of the arena of the
/// thread's current context (of every context where none is current) with launches not copied
/// back yet are copied back now, synchronously. Only that context's: the copy waits for the
/// launches of its blocking streams, and waiting for another device's from here could wait for
/// good (a kernel there waiting for one this thread has yet to launch, as a collective
/// operation across devices with a host thread per device does).
fn sync_point() {
    copy_back_contexts(|drv| drv.current_context());
}

/// Every context's maps copied back now (see [`sync_point`]), before the probes go.
fn sync_all() {
    copy_back_contexts(|_| None);
}

/// The arenas of context `only(driver)` (of every context where None) copied back now.
fn copy_back_contexts(only: impl FnOnce(&Driver) -> Option<Handle>) {
    let Some(gpu) = GPU.get() else { return };
    guarded(|| {
        let drv = Driver::get()?;
        let only = only(drv).map(|c| c as usize);
        let arenas: Vec<(usize, Arc<Arena>)> = lock(&gpu.arenas).iter().filter(|(c, _)| only.is_none_or(|o| **c == o)).map(|(c, a)| (*c, a.clone())).collect();
        for (ctx, a) in arenas {
            copy_back_now(gpu, drv, ctx as Handle, &a);
        }
        Some(())
    });
}

/// Copies arena `a` of context `ctx` back into the region now, when launches have run since
/// its last copy back (the copies back queued before it are written first).
fn copy_back_now(gpu: &Gpu, drv: &Driver, ctx: Handle, a: &Arena) {
    let closed = lock(&a.closed);
    if *closed {
        return;
    }
    // The copies back the stream made come first, and are all the app's results when no
    // launch came after them.
    a.settle();
    if a.dirty.load(Ordering::Relaxed) == 0 {
        return;
    }
    a.dirty.store(0, Ordering::Relaxed);
    *lock(&a.last_copy) = Instant::now();
    let mut copy = vec![0u8; a.len];
    let given = lock(&a.share).clone();
    // On the legacy default stream: the copy and the ring clears wait for the launches of every
    // blocking stream (a kernel still running on another stream must not be copied half done,
    // nor its ring cursors cleared under it). Launches on the application's non-blocking
    // streams are copied back after them, on their own streams.
    let stream: Handle = std::ptr::null_mut();
    // From a thread of ours (the link follower) the arena's context is made current.
    let r = drv
        .with_context(ctx, || {
            drv.copy_from_device_now(&mut copy, a.dev, stream).and_then(|()| {
                a.layout.ring_resets().into_iter().try_for_each(|(off, len)| drv.memset_async(a.dev + off, len as usize, stream))?;
                drv.stream_synchronize(stream)
            })
        })
        .unwrap_or_else(|| Err("its context cannot be made current".into()));
    // Copies back queued before this one and handed over since are older: they are written
    // back first (else an array's older values would overwrite these).
    a.settle();
    match r {
        Ok(()) => a.write_back(gpu, &mut copy, &given),
        Err(e) => gpu.say_once(format!("CUDA maps are not copied back: {e}")),
    }
    drop(closed);
}

/// The context a teardown call (`cuDevicePrimaryCtxReset` / `Release` of `device`) ends,
/// when the agent keeps anything for it.
pub(crate) fn primary_context(device: std::ffi::c_int) -> Option<Handle> {
    let gpu = GPU.get()?;
    guarded(|| {
        let ctx = Driver::get()?.primary_context(device)?;
        let c = ctx as usize;
        let known =
            lock(&gpu.arenas).contains_key(&c) || lock(&gpu.modules).values().any(|(m, _)| *m == c) || lock(&gpu.loaded).iter().any(|&(_, m)| m == Some(c));
        known.then_some(ctx)
    })
}

/// Retains of each device's primary context seen through the wrappers, not released yet.
static PRIMARY_RETAINS: Mutex<Vec<(std::ffi::c_int, u64)>> = Mutex::new(Vec::new());

/// A retain of `device`'s primary context went through.
pub(crate) fn primary_retained(device: std::ffi::c_int) {
    let mut r = lock(&PRIMARY_RETAINS);
    match r.iter_mut().find(|(d, _)| *d == device) {
        Some((_, n)) => *n += 1,
        None => r.push((device, 1)),
    }
}

/// Before a release of `device`'s primary context: whether it may be the last (the count
/// says so, or retains were made before the wrappers saw them); counted down either way.
pub(crate) fn primary_release_may_end(device: std::ffi::c_int) -> bool {
    let mut r = lock(&PRIMARY_RETAINS);
    match r.iter_mut().find(|(d, _)| *d == device) {
        Some((_, n)) if *n > 1 => {
            *n -= 1;
            false
        }
        Some((_, n)) => {
            *n = 0;
            true
        }
        None => true,
    }
}

/// Whether the primary context of `device` is still there (after a release).
pub(crate) fn primary_active(device: std::ffi::c_int) -> bool {
    guarded(|| Some(Driver::get()?.primary_context(device).is_some())).unwrap_or(true)
}

/// Before the application tears down context `ctx`: its work is finished (as the teardown
/// would finish it) and its maps copied back while it exists.
pub(crate) fn before_teardown(ctx: Handle) {
    let Some(gpu) = GPU.get() else { return };
    guarded(|| {
        let drv = Driver::get()?;
        // Out of the tables first: no launch or synchronisation of another thread finds it
        // from now on (should the teardown fail, the context gets a new arena from the
        // region's maps, which hold all of this one by then).
        let c = ctx as usize;
        lock(&gpu.modules).retain(|_, (m, _)| *m != c);
        let arena = lock(&gpu.arenas).remove(&c)?;
        if let Some(Err(e)) = drv.with_context(ctx, || drv.ctx_synchronize()) {
            gpu.say_once(format!("CUDA maps of a context torn down may miss its last launches: {e}"));
        }
        // Every host function queued on its streams has run: their copies back are written
        // before the pinned buffers they read go with the context.
        copy_back_now(gpu, drv, ctx, &arena);
        // A copy another thread started before is waited for; none starts after.
        *lock(&arena.closed) = true;
        if verbose() {
            eprintln!("bpftime: CUDA context torn down: its maps were copied back");
        }
        Some(())
    });
}

/// After context `ctx` is gone: what the agent kept for it is forgotten (the driver hands its
/// handle and addresses out again).
pub(crate) fn context_gone(ctx: Handle) {
    let Some(gpu) = GPU.get() else { return };
    let ctx = ctx as usize;
    guarded(|| {
        lock(&gpu.arenas).remove(&ctx);
        lock(&gpu.modules).retain(|_, (c, _)| *c != ctx);
        lock(&gpu.loaded).retain(|&(_, c)| c != Some(ctx));
        lock(&gpu.registered).remove(&ctx);
        late::context_gone(ctx);
        Some(())
    });
}

/// After module (or library) `handle` was unloaded: what the agent kept for it is forgotten
/// (a library has a module in every context: the whole cache of modules seen at launch goes,
/// to be filled again).
pub(crate) fn module_gone(handle: Handle, library: bool) {
    let Some(gpu) = GPU.get() else { return };
    guarded(|| {
        let h = handle as usize;
        if library {
            lock(&gpu.modules).clear();
        } else {
            lock(&gpu.modules).remove(&h);
        }
        lock(&gpu.loaded).retain(|&(l, _)| l != h);
        late::module_gone();
        Some(())
    });
}
