//! What the agent does: find programs, attach them, run them on probe hits.

use bpftime_attach::{attach, detach, resolve, AttachError, ProbeHandler, ProbeId, ProbeKind, PtRegs, ResolveError, SiteInfo, Target};
use bpftime_runtime::links::{self, LinkState};
use bpftime_runtime::{EngineKind, LoadedProgram, ProbeProgram, Runtime};
use bpftime_shm::{default_name, ShmError, ShmRegion};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};

/// A program to attach once its binary is mapped.
#[derive(Clone)]
struct Pending {
    /// The link in the region (its state is raised as it gets attached).
    link: u32,
    prog: Arc<LoadedProgram>,
    target: String,
    retprobe: bool,
    /// `ureplace`: the program replaces the function.
    replace: bool,
    cookie: u64,
    /// File offset of a USDT semaphore counting this probe (0: none).
    ref_ctr: u64,
    /// The only process whose calls run the program (0: every process).
    pid: u32,
}

impl Pending {
    /// Link `l`'s probe, running `prog`.
    fn of(l: links::UprobeLink, prog: Arc<LoadedProgram>) -> Self {
        Pending { link: l.id, prog, target: l.target, retprobe: l.retprobe, replace: l.replace, cookie: l.cookie, ref_ctr: l.ref_ctr, pid: l.pid }
    }
}

/// What the agent's attached probes were made from (see [`Agent::wait_again`]).
#[derive(Default)]
struct MadeFrom {
    probes: std::collections::HashMap<ProbeId, Pending>,
    /// Probes said to be gone (their library unloaded) before their batch recorded them: that
    /// batch sends them back to wait instead.
    gone_early: std::collections::HashSet<ProbeId>,
}

/// The agent's state in this process.
pub struct Agent {
    runtime: &'static Runtime,
    pending: Mutex<Vec<Pending>>,
    /// Whether this process loaded its own program (`BPFTIME_PROGRAM`): with no `bpftime run`
    /// watching, the agent itself says at exit what never got attached.
    standalone: bool,
    /// Links seen, with the probes attached for each (detached when the link goes away).
    links: Mutex<std::collections::HashMap<u32, Vec<ProbeId>>>,
    /// What each attached probe was made from: it waits again when its library is unloaded.
    made_from: Mutex<MadeFrom>,
    /// USDT semaphores raised for links: (binary, file offset), lowered when the link goes.
    semaphores: Mutex<std::collections::HashMap<u32, (String, u64)>>,
}

static AGENT: OnceLock<Agent> = OnceLock::new();

fn verbose() -> bool {
    std::env::var_os("BPFTIME_VERBOSE").is_some()
}

/// Runs a program when its probe fires.
pub struct ProgramProbe {
    runtime: &'static Runtime,
    probe: ProbeProgram,
    reported: AtomicBool,
    /// What the program may do to the probed function.
    effect: Effect,
    /// The only process whose hits run the program (0: every process): a child forked from it
    /// inherits the patched code, not the probe, as a kernel uprobe opened for a pid does not
    /// follow a fork (the child's link follower detaches it soon after).
    only_pid: u32,
}

/// What a program may do to the function it probes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Effect {
    /// Only observe (return probes, probes inside a function): `bpf_override_return` is
    /// ignored, and said once.
    Observe,
    /// An entry probe: `bpf_override_return(ctx, rc)` makes the function return `rc` unrun.
    MayOverride,
    /// `ureplace`: the program replaces the function; its result is the function's.
    Replace,
}

impl ProgramProbe {
    /// A handler running `prog` with the given attach cookie and function address.
    /// `caller_at_sp`: see [`ProbeProgram::caller_at_sp`]. `only_pid`: the only process whose
    /// hits run it (0: every process).
    pub fn new(runtime: &'static Runtime, prog: Arc<LoadedProgram>, cookie: u64, func_ip: u64, caller_at_sp: bool, effect: Effect, only_pid: u32) -> Self {
        ProgramProbe { runtime, probe: ProbeProgram { program: prog, cookie, func_ip, caller_at_sp }, reported: AtomicBool::new(false), effect, only_pid }
    }
}

// Every nesting level the hook engine runs handlers at has a run context of its own.
const _: () = assert!(bpftime_attach::NEST_LEVELS <= bpftime_runtime::PROBE_LEVELS);

impl ProbeHandler for ProgramProbe {
    fn on_hit(&self, regs: &PtRegs, level: usize) -> Option<u64> {
        if self.only_pid != 0 && bpftime_shm::ids::process_id() != self.only_pid {
            return None;
        }
        match self.runtime.run_probe(&self.probe, regs.as_bytes(), level) {
            Ok(run) => match self.effect {
                Effect::Replace => Some(run.r0),
                Effect::MayOverride => run.override_return,
                Effect::Observe => run.override_return.filter(|_| self.refuse_override()),
            },
            Err(e) => {
                self.report(e);
                None
            }
        }
    }

    fn on_miss(&self) {
        self.runtime.count_miss(self.probe.program.id);
    }
}

impl ProgramProbe {
    /// Says once that an override asked for where it cannot be honoured was ignored.
    #[cold]
    #[inline(never)]
    fn refuse_override(&self) -> bool {
        if !self.reported.swap(true, Ordering::Relaxed) {
            eprintln!(
                "bpftime: program `{}` called bpf_override_return in a probe that is not on a function's entry; ignored (reported once)",
                self.probe.program.name
            );
        }
        false
    }

    /// Reports the first failure of each probe; the application never stops for it.
    #[cold]
    #[inline(never)]
    fn report(&self, e: bpftime_vm::exec::RunError) {
        if !self.reported.swap(true, Ordering::Relaxed) {
            let hint = if e.fault == bpftime_vm::exec::Fault::LoopBudget {
                format!("; each hit may do {} units of loop work, raise it with BPFTIME_BUDGET=N (`--budget N`)", self.runtime.probe_budget())
            } else {
                String::new()
            };
            eprintln!("bpftime: program `{}` failed: {e}{hint} (reported once)", self.probe.program.name);
        }
    }
}

/// Why a probe was not attached.
enum Failure {
    /// Its binary is not mapped (yet: a later dlopen may bring it).
    NotMapped,
    /// Anything else, said in words.
    Failed(String),
}

fn attach_one(runtime: &'static Runtime, p: &Pending) -> Result<ProbeId, Failure> {
    let target = Target::parse(&p.target).map_err(|e| Failure::Failed(e.to_string()))?;
    let r = resolve(&target).map_err(|e| match e {
        // A path (not a library name) that names no file will never be mapped: say so now.
        ResolveError::NotMapped(b) if b.contains('/') && !b.starts_with("/proc/") && !std::path::Path::new(&b).exists() => {
            Failure::Failed(format!("{b}: no such file"))
        }
        ResolveError::NotMapped(_) => Failure::NotMapped,
        e => Failure::Failed(e.to_string()),
    })?;
    if p.retprobe && r.program_entry {
        // (The kernel's return probe there overwrites argc, and the program's start-up reads
        // garbage.)
        return Err(Failure::Failed(
            "a return probe on the program's entry point (_start) is not attached: it never returns, and the kernel passes argc where its return address would be".into(),
        ));
    }
    let kind = if p.retprobe { ProbeKind::Return } else { ProbeKind::Entry };
    // An entry only presumed (no symbol says so) is one for a return probe, as the kernel
    // takes it; an entry probe there runs as in mid-function.
    let at_entry = r.at_entry && (p.retprobe || !r.entry_presumed);
    let effect = match (kind, at_entry, p.replace) {
        (ProbeKind::Entry, true, true) => Effect::Replace,
        (ProbeKind::Entry, false, true) => return Err(Failure::Failed("ureplace needs a function's first byte".into())),
        (ProbeKind::Entry, true, false) => Effect::MayOverride,
        _ => Effect::Observe,
    };
    // As the kernel's stack walks for a uprobe on `push %rbp` (0x55): the caller is at [sp].
    let caller_at_sp = kind == ProbeKind::Entry && bpftime_attach::original_first_byte(r.addr) == Some(0x55);
    let handler = Arc::new(ProgramProbe::new(runtime, p.prog.clone(), p.cookie, r.addr, caller_at_sp, effect, p.pid));
    let id = attach(r.addr, SiteInfo { function_size: r.function_size, at_entry, padding: r.padding, returns_twice: r.returns_twice }, kind, handler)
        .map_err(|e: AttachError| Failure::Failed(e.to_string()))?;
    if verbose() {
        let mut method = match bpftime_attach::site_method(r.addr) {
            Some((m, why)) if !why.is_empty() => format!("{m} ({why})"),
            Some((m, _)) => m.to_string(),
            None => "?".to_string(),
        };
        if p.retprobe {
            method = match bpftime_attach::patched_returns(r.addr) {
                0 => format!("{method} (the return address replaced)"),
                n => format!("{n} patched ret(s)"),
            };
        }
        let vectors = bpftime_attach::site_vectors(r.addr).unwrap_or_default();
        eprintln!(
            "bpftime: attached {} `{}` to {} ({:#x}) with {method}; vector registers kept: {vectors}",
            if p.retprobe { "uretprobe" } else { "uprobe" },
            p.prog.name,
            p.target,
            r.addr
        );
    }
    Ok(id)
}

impl Agent {
    /// Attaches what can be; keeps targets whose binary is not mapped yet.
    fn attach_all(&self, items: Vec<Pending>) {
        if !items.is_empty() {
            crate::libraries::watch(crate::INJECTED.load(Ordering::Acquire));
        }
        let loads = LIBRARY_LOADS.load(Ordering::Acquire);
        bpftime_attach::procmaps::with_one_read(|| self.attach_each(items));
        // A library loaded by another thread meanwhile was not in the maps the batch read, and
        // its `dlopen` looked at the pending list before this batch added to it: look again.
        if LIBRARY_LOADS.load(Ordering::Acquire) != loads {
            attach_pending();
        }
    }

    /// [`Agent::attach_all`], one after another.
    fn attach_each(&self, items: Vec<Pending>) {
        let mut still = vec![];
        let region = self.runtime.region();
        for p in items {
            match attach_one(self.runtime, &p) {
                Ok(id) => {
                    {
                        let mut made = self.made_from.lock().unwrap_or_else(|e| e.into_inner());
                        if made.gone_early.remove(&id) {
                            // Its library went between the attach and now.
                            still.push(p);
                            continue;
                        }
                        made.probes.insert(id, p.clone());
                    }
                    links::raise_state(region, p.link, LinkState::Attached);
                    self.links.lock().unwrap_or_else(|e| e.into_inner()).entry(p.link).or_default().push(id);
                    // A USDT probe with a semaphore: the application does the probe's work
                    // only while the semaphore counts an attached probe.
                    if p.ref_ctr != 0 {
                        if let Ok(t) = Target::parse(&p.target) {
                            match bpftime_attach::add_to_semaphore(&t.binary, p.ref_ctr, 1) {
                                Ok(()) => {
                                    self.semaphores.lock().unwrap_or_else(|e| e.into_inner()).insert(p.link, (t.binary, p.ref_ctr));
                                }
                                // As the kernel: a semaphore offset outside the binary's
                                // writable data is left alone (bcc passes one for plain
                                // uprobes), and the probe works.
                                Err(bpftime_attach::symbols::ResolveError::Unmapped { .. }) if !verbose() => {}
                                Err(e) => eprintln!("bpftime: `{}`: its USDT semaphore: {e}", p.prog.name),
                            }
                        }
                    }
                }
                Err(Failure::NotMapped) => {
                    links::raise_state(region, p.link, LinkState::Waiting);
                    if verbose() {
                        eprintln!("bpftime: `{}` waits for {} to be loaded", p.prog.name, p.target);
                    }
                    still.push(p)
                }
                Err(Failure::Failed(e)) => {
                    links::raise_state(region, p.link, LinkState::Failed);
                    eprintln!("bpftime: cannot attach `{}` to {}: {e}", p.prog.name, p.target)
                }
            }
        }
        self.pending.lock().unwrap_or_else(|e| e.into_inner()).extend(still);
    }

    /// The runtime the agent uses.
    pub fn runtime(&self) -> &'static Runtime {
        self.runtime
    }
}

/// Changes seen in the dynamic linker's list of objects since the agent started (see
/// [`libraries_changed`]).
static LIBRARY_LOADS: AtomicU64 = AtomicU64::new(0);

/// After a library may have been loaded, or also unloaded (`unloaded`; see `crate::libraries`):
/// the probes whose code went with an unloaded library wait for it again, and the probes
/// waiting for a library now mapped attach. Where only loads happened no probed site can have
/// gone, and none is read again.
pub(crate) fn libraries_changed(unloaded: bool) {
    LIBRARY_LOADS.fetch_add(1, Ordering::AcqRel);
    let Some(agent) = AGENT.get() else { return };
    if unloaded {
        let gone = bpftime_attach::forget_unloaded();
        if !gone.is_empty() {
            agent.wait_again(&gone);
        }
    }
    attach_pending();
}

impl Agent {
    /// Probes `gone` (their code unloaded) go back to the pending list.
    fn wait_again(&self, gone: &[ProbeId]) {
        let again: Vec<Pending> = {
            let mut made = self.made_from.lock().unwrap_or_else(|e| e.into_inner());
            let mut again = vec![];
            for id in gone {
                match made.probes.remove(id) {
                    Some(p) => again.push(p),
                    // Not recorded yet (see `MadeFrom::gone_early`), or not one of the
                    // programs' probes (the agent's own).
                    None => drop(made.gone_early.insert(*id)),
                }
            }
            again
        };
        {
            let mut seen = self.links.lock().unwrap_or_else(|e| e.into_inner());
            for p in &again {
                if let Some(probes) = seen.get_mut(&p.link) {
                    probes.retain(|id| !gone.contains(id));
                }
            }
        }
        {
            // A semaphore in the unloaded library went with it: nothing to lower.
            let mut sems = self.semaphores.lock().unwrap_or_else(|e| e.into_inner());
            for p in again.iter().filter(|p| p.ref_ctr != 0) {
                if Target::parse(&p.target).is_ok_and(|t| sems.get(&p.link).is_some_and(|(b, _)| *b == t.binary)) {
                    sems.remove(&p.link);
                }
            }
        }
        if verbose() {
            for p in &again {
                eprintln!("bpftime: `{}`: {} was unloaded; the probe waits for it to be loaded again", p.prog.name, p.target);
            }
        }
        self.pending.lock().unwrap_or_else(|e| e.into_inner()).extend(again);
    }
}

/// Attaches pending probes whose binaries are now mapped (after a dlopen).
pub fn attach_pending() {
    let Some(agent) = AGENT.get() else { return };
    let items = std::mem::take(&mut *agent.pending.lock().unwrap_or_else(|e| e.into_inner()));
    if !items.is_empty() {
        agent.attach_all(items);
    }
}

/// Whether a link is for this process: one made for one pid attaches only there, as a kernel
/// uprobe opened for that pid does; one for every process, everywhere, but that a loader (the
/// syscall server beside the agent, `bpftime load`) takes only the uprobes on its own
/// executable, which it probes to trace itself (libbpf's `/proc/self/exe`), not those on the
/// libraries it shares with what it traces (a wildcard probe on libc would patch a thousand
/// functions in the loader, each as it makes it). System call events reach it as any process.
pub(crate) fn for_this_process(l: &links::UprobeLink) -> bool {
    if beside_the_server() {
        return l.runs_in_loader(std::process::id(), own_executable());
    }
    l.pid == std::process::id() || l.pid == 0
}

/// Whether the syscall server is loaded in this process (a loader under `bpftime load`).
fn beside_the_server() -> bool {
    static BESIDE: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *BESIDE.get_or_init(|| std::fs::read_to_string("/proc/self/maps").is_ok_and(|maps| maps.lines().any(|l| l.ends_with("/libbpftime_syscall_server.so"))))
}

/// This process's executable.
fn own_executable() -> Option<&'static std::path::Path> {
    static EXE: std::sync::OnceLock<Option<std::path::PathBuf>> = std::sync::OnceLock::new();
    EXE.get_or_init(|| std::fs::read_link("/proc/self/exe").ok()).as_deref()
}

/// `BPFTIME_BUDGET`: the loop budget of one probe hit, when set (a bad value is reported and
/// the default kept).
fn probe_budget() -> Option<u64> {
    let v = std::env::var("BPFTIME_BUDGET").ok().filter(|v| !v.is_empty())?;
    match v.trim().parse::<u64>() {
        Ok(b) if b > 0 => Some(b),
        _ => {
            eprintln!("bpftime: BPFTIME_BUDGET=`{v}` is not a positive number; using the default");
            None
        }
    }
}

/// `BPFTIME_CHECKS=all`: keep every run-time memory check (see `Checks`).
fn checks() -> bpftime_vm::Checks {
    match std::env::var("BPFTIME_CHECKS").map(|v| v.parse()) {
        Ok(Ok(c)) => c,
        Ok(Err(e)) => {
            eprintln!("bpftime: BPFTIME_CHECKS={e}; keeping the checks of unproven accesses only");
            bpftime_vm::Checks::Unproven
        }
        Err(_) => bpftime_vm::Checks::Unproven,
    }
}

/// `BPFTIME_URETPROBE=stack`: return probes replace the return address at entry instead of
/// patching the function's `ret`s (to compare the two).
fn return_method_from_env() {
    match std::env::var("BPFTIME_URETPROBE").as_deref() {
        Ok("stack") => bpftime_attach::set_return_patching(false),
        Ok("ret") | Err(_) => {}
        Ok(other) => eprintln!("bpftime: BPFTIME_URETPROBE=`{other}` is not `ret` or `stack`; patching rets"),
    }
}

fn engine() -> EngineKind {
    std::env::var("BPFTIME_ENGINE").ok().and_then(|n| n.parse().ok()).unwrap_or(EngineKind::Jit)
}

/// Everything a probe hit would otherwise initialise lazily, done before any probe exists: a
/// child forked while another thread was in the middle of such an initialisation would wait
/// for it forever.
fn initialise_what_hits_use() {
    bpftime_maps::possible_cpus();
    bpftime_shm::lock::prepare();
    bpftime_runtime::helpers::set_return_address_resolver(bpftime_attach::real_return_address);
}

/// Loads the standalone object, or reads the region's links, and attaches.
/// Whether the agent was preloaded or configured (`LD_PRELOAD` names it, or `BPFTIME_SHM` /
/// `BPFTIME_PROGRAM` is set). Otherwise it was loaded into a running process by
/// `bpftime attach`, which then calls `bpftime_agent_attach` with the region to use.
pub(crate) fn configured() -> bool {
    std::env::var_os("BPFTIME_SHM").is_some() || std::env::var_os("BPFTIME_PROGRAM").is_some() || preloaded()
}

/// Whether `LD_PRELOAD` names this library (by its file name, whatever it was renamed to, or
/// the early library that comes with it): it was started with the image, not loaded into a
/// running process by `bpftime attach`.
pub(crate) fn preloaded() -> bool {
    std::env::var_os("LD_PRELOAD")
        .is_some_and(|v| bpftime_attach::syscalls::names_agent(std::os::unix::ffi::OsStrExt::as_bytes(v.as_os_str()), own_file_name()))
}

/// This library's file name (dladdr(3)); `libbpftime.so` if it cannot be told.
pub(crate) fn own_file_name() -> &'static [u8] {
    let path = own_path();
    path.rsplit(|&b| b == b'/').next().unwrap_or(path)
}

/// The agent library's path, as the loader loaded it (`libbpftime.so` where unknown).
pub(crate) fn own_path() -> &'static [u8] {
    static PATH: std::sync::OnceLock<Vec<u8>> = std::sync::OnceLock::new();
    PATH.get_or_init(|| {
        let mut info: libc::Dl_info = empty_dl_info();
        // SAFETY: dladdr(3) with the address of one of our functions and a valid out pointer.
        if unsafe { libc::dladdr(own_path as *const libc::c_void, &mut info) } == 0 || info.dli_fname.is_null() {
            return b"libbpftime.so".to_vec();
        }
        // SAFETY: dladdr set dli_fname to a NUL-terminated path that lives as long as the library.
        unsafe { std::ffi::CStr::from_ptr(info.dli_fname) }.to_bytes().to_vec()
    })
}

/// An empty `Dl_info` for dladdr to fill.
fn empty_dl_info() -> libc::Dl_info {
    libc::Dl_info { dli_fname: std::ptr::null(), dli_fbase: std::ptr::null_mut(), dli_sname: std::ptr::null(), dli_saddr: std::ptr::null_mut() }
}

/// The code cache as the hook engine's store of what it learnt of modules.
struct CachedFacts(&'static Runtime);

impl bpftime_attach::FactsStore for CachedFacts {
    fn load(&self, key: &[u8]) -> Option<Vec<u8>> {
        self.0.code_cache()?.load_blob(key)
    }
    fn store(&self, key: &[u8], data: &[u8]) {
        if let Some(cache) = self.0.code_cache() {
            cache.store_blob(key, data);
        }
    }
}

/// Whether the agent has started in this process.
pub(crate) fn running() -> bool {
    AGENT.get().is_some()
}

/// Starts with the region named by `BPFTIME_SHM` (or the default one).
pub(crate) fn start() {
    start_in(default_name());
}

/// Whether this thread holds a lock of ours (the allocator's, a region lock), in any of its
/// flows: probe work a signal handler left by `siglongjmp` (in a process the agent was loaded
/// into, where no handler is wrapped) is not replaced then, nor are programs run over it.
fn holds_a_lock_of_ours() -> bool {
    crate::alloc::held_by_this_thread() || bpftime_shm::lock::held_by_this_thread()
}

/// Starts with region `name`: attaches what its links name for this process and follows the
/// link table from then on.
pub(crate) fn start_in(name: String) {
    initialise_what_hits_use();
    bpftime_attach::set_agent_state(holds_a_lock_of_ours, bpftime_runtime::forget_abandoned_run);
    bpftime_attach::signals::keep_traps_deliverable();
    if crate::INJECTED.load(std::sync::atomic::Ordering::Acquire) {
        crate::masks::hook_libc_masks();
    }
    bpftime_attach::hold_self_mem();
    // While this process may still have one thread (see the function).
    bpftime_attach::register_sync_core();
    let program = std::env::var_os("BPFTIME_PROGRAM");
    let region = match ShmRegion::open(&name) {
        Ok(r) => Arc::new(r),
        Err(e @ (ShmError::Missing(_) | ShmError::NotARegion(_))) if program.is_none() => {
            // Started before any loader made the region (`bpftime start -- app`, then `bpftime
            // load -- tool -p PID`): the probes attach once it exists, as the kernel's would.
            if verbose() {
                eprintln!("bpftime: {e}; waiting for it");
            }
            return wait_for_region(name);
        }
        Err(e) => {
            // A refused region is always reported: someone may be trying to run code in us.
            let refused = matches!(e, ShmError::Untrusted { .. });
            if program.is_none() {
                if refused || verbose() {
                    eprintln!("bpftime: {e}; nothing is attached");
                }
                return;
            }
            if refused || verbose() {
                eprintln!("bpftime: {e}; keeping the maps in private memory");
            }
            match ShmRegion::anonymous(64 << 20) {
                Ok(r) => Arc::new(r),
                Err(e) => return eprintln!("bpftime: {e}"),
            }
        }
    };
    start_with(region, program, crate::INJECTED.load(std::sync::atomic::Ordering::Acquire));
}

/// Whether a thread of this process waits for its region to be made (see [`wait_for_region`]).
static WAITING_FOR_REGION: AtomicBool = AtomicBool::new(false);
/// The region [`wait_for_region`] waits for.
static REGION_AWAITED: OnceLock<String> = OnceLock::new();

/// Looks for region `name` every link poll interval on a thread of its own, and starts with it
/// once it exists (a refused one is reported, and nothing starts). A child forked meanwhile
/// waits too, on a thread of its own.
fn wait_for_region(name: String) {
    let _ = REGION_AWAITED.set(name.clone());
    WAITING_FOR_REGION.store(true, Ordering::Release);
    // (Read now: the application's threads may change the environment later.)
    let interval = link_poll_interval();
    let waiter = move || loop {
        std::thread::sleep(interval);
        match ShmRegion::open(&name) {
            // Not there yet, or being made (its header not written yet).
            Err(ShmError::Missing(_) | ShmError::NotARegion(_)) => continue,
            Ok(r) => {
                // The application has run (and fetched the CUDA driver's entry points): as
                // for an agent loaded into it. Still waiting as far as a fork meanwhile is
                // concerned (its child waits and starts on its own).
                start_with(Arc::new(r), None, true);
                return WAITING_FOR_REGION.store(false, Ordering::Release);
            }
            Err(e) => {
                WAITING_FOR_REGION.store(false, Ordering::Release);
                return eprintln!("bpftime: {e}; nothing is attached");
            }
        }
    };
    let _ = bpftime_runtime::threads::spawn_quiet("bpftime-wait", move || bpftime_attach::without_probes(waiter));
    static AT_FORK: std::sync::Once = std::sync::Once::new();
    AT_FORK.call_once(|| {
        extern "C" fn wait_in_child() {
            bpftime_attach::without_probes(|| {
                let _ = std::panic::catch_unwind(|| {
                    if let (true, Some(name)) = (WAITING_FOR_REGION.load(Ordering::Acquire), REGION_AWAITED.get()) {
                        wait_for_region(name.clone());
                    }
                });
            });
        }
        // SAFETY: registers a plain extern "C" handler (pthread_atfork(3)).
        unsafe { libc::pthread_atfork(None, None, Some(wait_in_child)) };
    });
}

/// Starts with `region`: loads `program` (standalone) or attaches what the region's links name
/// for this process and follows the link table from then on. `late`: the application has run
/// before (the agent was loaded into it, or waited for the region).
fn start_with(region: Arc<ShmRegion>, program: Option<std::ffi::OsString>, late: bool) {
    // Once per process (a child forked while its parent started has the parent's start, whole
    // or not: it does not start again over it).
    static STARTED: AtomicBool = AtomicBool::new(false);
    if STARTED.swap(true, Ordering::AcqRel) {
        return;
    }
    let mut runtime = Runtime::new(region, engine());
    runtime.set_checks(checks());
    match runtime.use_code_cache_from_env() {
        Ok(Some(dir)) if verbose() => eprintln!("bpftime: code cache {}", dir.display()),
        Ok(_) => {}
        Err(e) => eprintln!("bpftime: {e}; programs are compiled in this process"),
    }
    return_method_from_env();
    if let Some(budget) = probe_budget() {
        runtime.set_probe_budget(budget);
    }
    let runtime: &'static Runtime = Box::leak(Box::new(runtime));
    if runtime.code_cache().is_some() {
        // What probes learn of a library's code (libc's takes tens of ms to scan) is kept
        // beside the compiled programs, for the next process.
        bpftime_attach::set_facts_store(Arc::new(CachedFacts(runtime)));
    }
    let standalone = program.is_some();
    // Changes after this are seen by the link follower (read before the table is: a link
    // stored in between is looked at again).
    let table_seen = runtime.region().table_changes();
    let found = match program {
        Some(path) => {
            let shown = path.to_string_lossy().to_string();
            // `BPFTIME_AOT=1`: an ahead-of-time object's machine code may run (see `read_object_file`).
            let native = std::env::var_os("BPFTIME_AOT").is_some_and(|v| v == "1");
            let stored = bpftime_runtime::input::read_object_file(std::path::Path::new(&path), native)
                .and_then(|f| {
                    if let Some(note) = &f.note {
                        eprintln!("bpftime: {note}");
                    }
                    runtime.load_object_with(&f.object, f.aot.as_ref()).map_err(|e| e.to_string())
                })
                .and_then(|loaded| {
                    for (name, section, why) in &loaded.refused {
                        eprintln!("bpftime: {shown}: `{name}` (section `{section}`) is not loaded: {why}");
                    }
                    for (name, why) in &loaded.aot_unused {
                        eprintln!("bpftime: {shown}: `{name}`: ahead-of-time code not used ({why}); compiled here");
                    }
                    links::store_uprobes(runtime.region(), &loaded.programs).map_err(|e| e.to_string())
                });
            match stored {
                Ok(stored) => {
                    for skipped in stored.skipped {
                        eprintln!("bpftime: {shown}: {skipped}");
                    }
                    stored.links
                }
                Err(e) => return eprintln!("bpftime: {shown}: {e}"),
            }
        }
        None => {
            remove_orphans(runtime.region());
            links::list(runtime.region())
        }
    };
    // Loaded into the running application (`bpftime attach`): it fetched the driver's entry
    // points already.
    crate::cuda::start(runtime.region(), &found, late);
    crate::syscalls::update(runtime, &found);
    let mut items = vec![];
    for l in found.iter().filter(|l| l.kind == links::LinkKind::Uprobe && for_this_process(l)).cloned() {
        let started = std::time::Instant::now();
        match runtime.program(l.prog) {
            Ok(prog) => {
                if let (true, Some(outcome)) = (verbose(), &prog.cached) {
                    eprintln!("bpftime: `{}`: code cache: {outcome}, ready in {} us", prog.name, started.elapsed().as_micros());
                }
                items.push(Pending::of(l, prog))
            }
            Err(e) => eprintln!("bpftime: link {} (`{}`): {e}", l.id, l.name),
        }
    }
    let seen = found.iter().map(|l| (l.id, vec![])).collect();
    let agent = AGENT.get_or_init(|| Agent {
        runtime,
        pending: Mutex::new(vec![]),
        standalone,
        links: Mutex::new(seen),
        made_from: Mutex::default(),
        semaphores: Mutex::default(),
    });
    // Loaders attach and detach while this process runs, as with the kernel: a thread follows
    // the link table, asleep until the table changes (a loader that exits or closes a link has
    // its probes removed at once, before a kernel uprobe could land on our jump).
    if !standalone {
        start_follower(table_seen, true);
        // A forked child keeps the probes (as under the kernel) but not the thread: it gets
        // one of its own, so that its probes also go when their loader does.
        // SAFETY: registers a plain extern "C" handler (pthread_atfork(3)).
        unsafe { libc::pthread_atfork(None, None, Some(follow_in_child)) };
    }
    agent.attach_all(items);
    // Loaders attaching from now on wait for this process's probes (see `watch_links`).
    if let Some(slot) = follower_slot() {
        runtime.region().refreshed(slot, table_seen);
    }
    if agent.standalone {
        // SAFETY: registers a plain extern "C" function to run at exit (atexit(3)).
        unsafe { libc::atexit(report_unattached_at_exit) };
    }
}

/// At exit, in standalone mode: says which probes never found their binary in this process.
extern "C" fn report_unattached_at_exit() {
    bpftime_attach::without_probes(|| {
        let _ = std::panic::catch_unwind(|| {
            let Some(agent) = AGENT.get() else { return };
            let pending = agent.pending.lock().unwrap_or_else(|e| e.into_inner());
            let exe = std::fs::read_link("/proc/self/exe").map(|p| p.display().to_string()).unwrap_or_default();
            for p in pending.iter() {
                eprintln!("bpftime: `{}` was never attached in {exe} (pid {}): {} was not loaded", p.prog.name, std::process::id(), p.target);
            }
        });
    });
}

/// The longest the agent sleeps between looks at the link table (`BPFTIME_LINK_POLL_MS`,
/// default 100): it is woken when the table changes, and looks anyway for links whose loader
/// was killed (they are removed by whoever notices).
fn link_poll_interval() -> std::time::Duration {
    let ms = std::env::var("BPFTIME_LINK_POLL_MS").ok().and_then(|v| v.trim().parse::<u64>().ok()).unwrap_or(100);
    std::time::Duration::from_millis(ms.max(1))
}

/// Starts the thread that follows the link table from change count `seen` on; with `settled`,
/// returns once it runs (before any probe is attached, so that its own start hits none) and
/// the region knows this process as one whose look at the table loaders wait for. A
/// flag, not a channel: waiting on a channel registers a thread-local destructor on this, the
/// application's, thread, and libc frees its record at exit, two free() calls the kernel
/// would not see.
fn start_follower(seen: u32, settled: bool) {
    static RUNNING: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);
    RUNNING.store(false, std::sync::atomic::Ordering::Release);
    let spawned = bpftime_runtime::threads::spawn_quiet("bpftime-links", move || {
        // Set however the thread ends (a panic before it runs would leave its starter waiting).
        struct Started;
        impl Drop for Started {
            fn drop(&mut self) {
                RUNNING.store(true, std::sync::atomic::Ordering::Release);
            }
        }
        let _started = Started;
        bpftime_attach::without_probes(|| watch_links(seen, &RUNNING))
    });
    while settled && spawned.is_ok() && !RUNNING.load(std::sync::atomic::Ordering::Acquire) {
        std::thread::yield_now();
    }
}

/// In a child just forked (the only thread is the one that called fork): a link follower of
/// its own.
extern "C" fn follow_in_child() {
    bpftime_attach::without_probes(|| {
        let _ = std::panic::catch_unwind(|| {
            if AGENT.get().is_some() {
                // Probes are in place already: nothing to wait for, and nothing to look at
                // before the table changes or the poll interval ends (a child that execs or
                // exits at once pays only the thread's creation).
                // The probes it has are the parent's as of its last refresh: loaders wait for
                // it from now on (its follower takes the slot over).
                let seen = LAST_REFRESH.load(std::sync::atomic::Ordering::Acquire);
                let region = AGENT.get().map(|a| a.runtime.region());
                if let Some(slot) = region.and_then(|r| r.register_runner(seen)) {
                    FOLLOWER_SLOT.store(slot, std::sync::atomic::Ordering::Release);
                    region.inspect(|r| r.refreshed(slot, seen));
                }
                start_follower(seen, false);
            }
        });
    });
}

/// Drops the links of loaders killed before they could close them (looked at every poll) and,
/// when there were any, the rest of what those loaders left (`bpftime_runtime::orphans`:
/// programs, maps, BTF; a loader's server looks at start too).
fn remove_orphans(region: &std::sync::Arc<bpftime_shm::ShmRegion>) {
    if links::remove_orphans(region) > 0 {
        bpftime_runtime::orphans::remove(region);
    }
}

/// The region's runner slot of this process's link follower (usize::MAX: none yet).
static FOLLOWER_SLOT: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(usize::MAX);

/// The region's runner slot of this process's link follower, once it has one.
fn follower_slot() -> Option<usize> {
    Some(FOLLOWER_SLOT.load(std::sync::atomic::Ordering::Acquire)).filter(|&s| s != usize::MAX)
}

/// The table change count of the link follower's last refresh (a forked child's probes are
/// as of it).
static LAST_REFRESH: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);

/// Follows the region's link table from change count `seen` on: new uprobe links are
/// attached, probes of removed links detached (a loader that exits detaches its links, as in
/// the kernel). Sets `running` once the region knows this thread.
fn watch_links(mut seen: u32, running: &std::sync::atomic::AtomicBool) {
    let Some(agent) = AGENT.get() else {
        running.store(true, std::sync::atomic::Ordering::Release);
        return;
    };
    let interval = link_poll_interval();
    let region = agent.runtime.region();
    // What loaders remove is freed only once this process has taken the removal in: this
    // thread says so, RETIRE_GRACE after the refresh that detached the probes (a run that had
    // begun then is over).
    LAST_REFRESH.store(seen, std::sync::atomic::Ordering::Release);
    let slot = region.register_runner(seen);
    if let Some(slot) = slot {
        FOLLOWER_SLOT.store(slot, std::sync::atomic::Ordering::Release);
    }
    running.store(true, std::sync::atomic::Ordering::Release);
    let mut detached: std::collections::VecDeque<(u32, std::time::Instant)> = Default::default();
    let mut libraries = crate::libraries::generation();
    let mut said_left_out = 0;
    loop {
        let wait = if detached.is_empty() { interval } else { interval.min(bpftime_shm::RETIRE_GRACE) };
        region.wait_for_table_change(seen, wait);
        seen = region.table_changes();
        let refreshed = std::panic::catch_unwind(|| agent.refresh_links()).is_ok();
        if refreshed {
            LAST_REFRESH.store(seen, std::sync::atomic::Ordering::Release);
        }
        // A loader waits for this before its attach returns (a refresh that failed says so too:
        // what it could not attach is not waited for).
        if let Some(slot) = slot {
            region.refreshed(slot, seen);
        }
        if refreshed && detached.back().is_none_or(|&(s, _)| s != seen) {
            detached.push_back((seen, std::time::Instant::now()));
        }
        let mut settled = None;
        while detached.front().is_some_and(|(_, at)| at.elapsed() >= bpftime_shm::RETIRE_GRACE) {
            settled = detached.pop_front().map(|(s, _)| s);
        }
        if let (Some(slot), Some(s)) = (slot, settled) {
            region.caught_up(slot, s);
        }
        let now = crate::libraries::generation();
        if now != libraries {
            // (The unload count says whether a site may have gone.)
            let unloaded = now.1 != libraries.1;
            libraries = now;
            let _ = std::panic::catch_unwind(|| libraries_changed(unloaded));
        }
        for addr in std::panic::catch_unwind(bpftime_attach::yield_to_foreign_breakpoints).unwrap_or_default() {
            eprintln!("bpftime: a breakpoint not ours (a kernel uprobe?) was placed over the probe at {addr:#x}; the function has its own first bytes back there, and bpftime's probes that ran through them stop in this process");
        }
        let left_out = bpftime_attach::syscalls::threads_left_out();
        if left_out > said_left_out {
            said_left_out = left_out;
            eprintln!(
                "bpftime: {left_out} thread(s) of pid {} took a thread pointer of their own (arch_prctl ARCH_SET_FS, as Go's runtime does without cgo): their system calls are no longer traced",
                std::process::id()
            );
        }
    }
}

/// The links a table of programs was last made from, in this process (a forked child makes
/// its own): a refresh makes it again only when they change.
pub struct LinkSet(Mutex<Option<(u32, Vec<(u32, u32)>)>>);

impl LinkSet {
    /// None seen yet.
    pub const fn new() -> LinkSet {
        LinkSet(Mutex::new(None))
    }

    /// Whether `links` (ids and programs) differ from those of the last call, which they
    /// replace.
    pub fn changed(&self, links: &[&links::UprobeLink]) -> bool {
        let now = Some((std::process::id(), links.iter().map(|l| (l.id, l.prog)).collect()));
        let mut last = self.0.lock().unwrap_or_else(|e| e.into_inner());
        if *last == now {
            return false;
        }
        *last = now;
        true
    }
}

impl Agent {
    fn refresh_links(&self) {
        remove_orphans(self.runtime.region());
        let now = links::list(self.runtime.region());
        // Thousands of links (a bpftrace wildcard): looked up by id, not by scanning `now`.
        let ids: std::collections::HashSet<u32> = now.iter().map(|l| l.id).collect();
        let mut fresh = vec![];
        let mut gone = vec![];
        {
            let mut seen = self.links.lock().unwrap_or_else(|e| e.into_inner());
            for l in &now {
                if let std::collections::hash_map::Entry::Vacant(e) = seen.entry(l.id) {
                    e.insert(vec![]);
                    if l.kind == links::LinkKind::Uprobe && for_this_process(l) {
                        fresh.push(l.clone());
                    }
                }
            }
            let by_id: std::collections::HashMap<u32, &links::UprobeLink> = now.iter().map(|l| (l.id, l)).collect();
            seen.retain(|id, probes| match by_id.get(id) {
                None => {
                    gone.append(probes);
                    false
                }
                Some(l) => {
                    // A link made for one pid stays in that process, not in a child forked from
                    // it (a kernel uprobe opened for a pid does not follow a fork).
                    if !probes.is_empty() && l.kind == links::LinkKind::Uprobe && !for_this_process(l) {
                        gone.append(probes);
                    }
                    true
                }
            });
        }
        {
            let mut made = self.made_from.lock().unwrap_or_else(|e| e.into_inner());
            for id in &gone {
                made.probes.remove(id);
            }
        }
        for id in gone {
            let _ = detach(id);
        }
        crate::cuda::links_changed(self.runtime.region(), &now);
        if now.iter().any(|l| l.kind == links::LinkKind::Syscall) || bpftime_attach::syscalls::active() {
            crate::syscalls::update(self.runtime, &now);
        }
        crate::profile::update(self.runtime, &now);
        let lowered: Vec<(String, u64)> = {
            let mut sems = self.semaphores.lock().unwrap_or_else(|e| e.into_inner());
            let dead: Vec<u32> = sems.keys().copied().filter(|id| !ids.contains(id)).collect();
            dead.iter().filter_map(|id| sems.remove(id)).collect()
        };
        for (binary, off) in lowered {
            let _ = bpftime_attach::add_to_semaphore(&binary, off, -1);
        }
        self.pending.lock().unwrap_or_else(|e| e.into_inner()).retain(|p| ids.contains(&p.link));
        let mut items = vec![];
        for l in fresh {
            match self.runtime.program(l.prog) {
                Ok(prog) => items.push(Pending::of(l, prog)),
                Err(e) => eprintln!("bpftime: link {} (`{}`): {e}", l.id, l.name),
            }
        }
        if !items.is_empty() {
            self.attach_all(items);
        }
    }
}
