//! The per-process runtime: loads objects into the shared region (maps, global data, programs)
//! and turns stored programs into runnable engines, with the kernel helpers and map
//! references resolved for this process.

use crate::handles::map_ref;
use crate::helper_names::{kernel_helper_name, unknown_helper_meaning};
use crate::helpers::kernel_helpers;
use crate::progs::{self, StoredProgram};
use bpftime_jit::aot::{AotEntry, AotObject};
use bpftime_jit::cache::{CacheError, CodeCache, Keys, Outcome};
use bpftime_jit::JitProgram;
use bpftime_maps::{Map, MapError, MapSpec, MapType};
use bpftime_object::btf::Btf;
use bpftime_object::{MapDef, Object, ObjectError, ProgramKind, POISON_HELPER};
use bpftime_shm::{ShmError, ShmRegion};
use bpftime_vm::analysis::{ArrayLayout, Pointee};
use bpftime_vm::exec::{run, Context, HelperTable, Region, RunError, RunOptions, Runner, SharedEngine, DEFAULT_LOOP_BUDGET, PROBE_LOOP_BUDGET};
use bpftime_vm::insn::LddwKind;
use bpftime_vm::{verify, verify_with, Checks, Interpreter, LddwResolver, Program, VerifyError, VerifyErrorKind};
use std::cell::Cell;
use std::collections::HashMap;
use std::ffi::c_void;
use std::sync::{Arc, Mutex};

/// Which engine runs programs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EngineKind {
    /// Cranelift JIT.
    Jit,
    /// Reference interpreter.
    Interp,
}

impl EngineKind {
    /// The name used on command lines and in `BPFTIME_ENGINE`: `jit` or `interp`.
    pub fn name(self) -> &'static str {
        match self {
            EngineKind::Jit => "jit",
            EngineKind::Interp => "interp",
        }
    }

    /// Builds this engine for a verified program.
    pub fn build(self, program: Arc<Program>) -> Result<SharedEngine, bpftime_jit::JitError> {
        Ok(match self {
            EngineKind::Jit => Arc::new(JitProgram::compile(program)?),
            EngineKind::Interp => Arc::new(Interpreter::new(program)),
        })
    }
}

impl std::str::FromStr for EngineKind {
    type Err = String;

    fn from_str(name: &str) -> Result<Self, String> {
        [EngineKind::Jit, EngineKind::Interp].into_iter().find(|k| k.name() == name).ok_or_else(|| format!("unknown engine `{name}` (jit or interp)"))
    }
}

/// Why loading failed.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error(transparent)]
    Object(#[from] ObjectError),
    #[error("map `{name}`: {source}")]
    Map { name: String, source: MapError },
    #[error("map `{name}`: unknown map type {map_type}")]
    MapType { name: String, map_type: u32 },
    #[error("program `{program}`: verifier: {error}")]
    Verify { program: String, error: VerifyError },
    #[error("program `{program}`: {message}")]
    Program { program: String, message: String },
    #[error("program `{program}`: JIT: {error}")]
    Jit { program: String, error: bpftime_jit::JitError },
    #[error("no program with id {0}")]
    NoSuchProgram(u32),
    #[error("the object needs CO-RE relocations, but the kernel BTF (/sys/kernel/btf/vmlinux) cannot be read: {0}")]
    NoKernelBtf(String),
    #[error(transparent)]
    Shm(#[from] ShmError),
}

impl LoadError {
    /// The errno the kernel's `BPF_PROG_LOAD` gives for a refusal of this kind: `EACCES` for
    /// accesses it cannot prove safe (writes to r10, the stack out of its frame, a key read
    /// from a map without keys), `EINVAL` for a malformed program (bad jumps and opcodes,
    /// unknown helpers, falling off the end, a GPL-only helper under another license...).
    pub fn errno(&self) -> i32 {
        use bpftime_vm::verifier::VerifyErrorKind::*;
        match self {
            LoadError::Verify { error, .. } => match error.kind {
                WriteToFramePointer | StackOutOfBounds { .. } | KeylessMap { .. } | UninitRegister { .. } | ContextWrite => libc::EACCES,
                NeverExits { changes_state: true } => libc::E2BIG,
                _ => libc::EINVAL,
            },
            LoadError::Program { .. } => libc::EINVAL,
            _ => libc::EACCES,
        }
    }
}

/// What [`Runtime::load_object`] put into the region.
#[derive(Debug, Clone)]
pub struct LoadedObject {
    /// Maps, in the object's order.
    pub maps: Vec<Map>,
    /// Programs: (function name, section, object id).
    pub programs: Vec<(String, String, u32)>,
    /// Programs the verifier refused, each alone (the others are loaded, as libbpf loads
    /// them one by one): (function name, section, why).
    pub refused: Vec<(String, String, String)>,
    /// Programs whose ahead-of-time code could not be used (they are compiled instead):
    /// (function name, why).
    pub aot_unused: Vec<(String, String)>,
}

/// A program ready to run in this process.
pub struct LoadedProgram {
    /// Object id in the region.
    pub id: u32,
    /// Function name.
    pub name: String,
    /// Section name.
    pub section: String,
    /// The verified program.
    pub program: Arc<Program>,
    /// Where its machine code came from, when the code cache was asked.
    pub cached: Option<Outcome>,
    engine: SharedEngine,
    /// Its runs see one CPU from start to end (see [`runs_on_one_cpu`]).
    one_cpu: bool,
}

impl std::fmt::Debug for LoadedProgram {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LoadedProgram").field("id", &self.id).field("name", &self.name).field("section", &self.section).finish()
    }
}

impl LoadedProgram {
    /// The engine that runs it.
    pub fn engine(&self) -> &SharedEngine {
        &self.engine
    }
}

/// What helpers know about the current run (`RunState::host` points at it).
pub struct HelperContext<'a> {
    /// The runtime (maps, programs for tail calls, the trace pipe).
    pub runtime: &'a Runtime,
    /// `bpf_get_attach_cookie`.
    pub cookie: u64,
    /// `bpf_get_func_ip`.
    pub func_ip: u64,
    /// Whether the context is a `struct pt_regs` (uprobes): stack helpers need it.
    pub pt_regs: bool,
    /// See [`ProbeProgram::caller_at_sp`].
    pub caller_at_sp: bool,
    /// Tail calls taken so far in this chain.
    pub tail_calls: Cell<u32>,
    /// The value `bpf_override_return` asked the probed function to return without running.
    pub override_return: Cell<Option<u64>>,
}

impl<'a> HelperContext<'a> {
    /// A context for a run of `runtime`'s programs.
    pub fn new(runtime: &'a Runtime, cookie: u64, func_ip: u64, pt_regs: bool) -> Self {
        HelperContext { runtime, cookie, func_ip, pt_regs, caller_at_sp: false, tail_calls: Cell::new(0), override_return: Cell::new(None) }
    }
}

/// What a probe's program asked for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ProbeRun {
    /// The program's result.
    pub r0: u64,
    /// `bpf_override_return(ctx, rc)`: return `rc` from the probed function without running it.
    pub override_return: Option<u64>,
}

/// A program attached to a probe point: what a hit needs to run it.
#[derive(Debug, Clone)]
pub struct ProbeProgram {
    /// The program.
    pub program: Arc<LoadedProgram>,
    /// `bpf_get_attach_cookie`.
    pub cookie: u64,
    /// `bpf_get_func_ip`: the probed function's address.
    pub func_ip: u64,
    /// The probed instruction is a `push %rbp` (a function's entry, its frame not yet made):
    /// user stack walks take the caller's return address from `[sp]` before following the
    /// frame pointers, which do not name the caller yet, as the kernel's do for such a uprobe.
    pub caller_at_sp: bool,
}

/// How many probe runs may be in progress at once on one thread: its normal flow plus signal
/// handlers nested in it, each with a run context of its own (as the kernel keeps per-CPU run
/// state per nesting level).
pub const PROBE_LEVELS: usize = 4;

/// A thread's context for probe hits at one nesting level: a reusable runner and helper
/// context.
struct ProbeThread {
    runner: Runner,
    /// Boxed so its address, given to helpers, stays put.
    host: Box<HelperContext<'static>>,
    /// A run is in progress at this level.
    busy: bool,
}

impl ProbeThread {
    #[inline]
    fn run(&mut self, probe: &ProbeProgram, regs: &[u8]) -> Result<ProbeRun, RunError> {
        // Only what changed is written (see `Runner::run_read_only`).
        let host = &mut *self.host;
        if host.cookie != probe.cookie {
            host.cookie = probe.cookie;
        }
        if host.func_ip != probe.func_ip {
            host.func_ip = probe.func_ip;
        }
        if host.caller_at_sp != probe.caller_at_sp {
            host.caller_at_sp = probe.caller_at_sp;
        }
        self.busy = true;
        let r = self.runner.run_read_only(probe.program.engine(), regs, host as *mut HelperContext as *mut c_void);
        self.busy = false;
        // Taken whatever the run's end: a run that failed after asking for an override must not
        // leave it for this thread's next one.
        let override_return = host.override_return.take();
        Ok(ProbeRun { r0: r?, override_return })
    }
}

/// Runs `f` with this thread's asynchronous signals blocked (all but the faults, SIGTRAP and
/// SIGSYS), by the system call itself: libc's name may be an agent's wrapper, and the call is
/// ours, not the application's.
fn with_async_signals_blocked<R>(f: impl FnOnce() -> R) -> R {
    const OPEN: [libc::c_int; 6] = [libc::SIGSEGV, libc::SIGBUS, libc::SIGILL, libc::SIGFPE, libc::SIGTRAP, libc::SIGSYS];
    let block = OPEN.iter().fold(u64::MAX, |m, &s| m & !(1u64 << (s - 1)));
    let mut old = 0u64;
    // SAFETY: rt_sigprocmask(2) on this thread with valid 8-byte sets.
    let blocked = unsafe { libc::syscall(libc::SYS_rt_sigprocmask, libc::SIG_BLOCK, &block as *const u64, &mut old as *mut u64, 8) } == 0;
    let r = f();
    if blocked {
        // SAFETY: as above, putting back the mask read then.
        unsafe { libc::syscall(libc::SYS_rt_sigprocmask, libc::SIG_SETMASK, &old as *const u64, std::ptr::null_mut::<u64>(), 8) };
    }
    r
}

/// Frees this thread's first-level probe context (and its CPU pin) for the next run: the run in it was left for
/// good (a signal handler's `siglongjmp` out of it, which the hook engine found).
pub fn forget_abandoned_run() {
    let p = PROBE_THREADS.get();
    if !p.is_null() {
        // SAFETY: this thread's contexts; the run that had level 0 will never go on.
        let t = unsafe { &mut (*p).levels[0] };
        t.busy = false;
        // An override it asked for is not the next run's.
        t.host.override_return.set(None);
    }
    bpftime_maps::forget_abandoned_pin();
}

/// A thread's probe contexts, one per nesting level.
struct ProbeThreads {
    levels: [ProbeThread; PROBE_LEVELS],
}

bpftime_tls::initial_exec! {
    /// This thread's probe contexts, made on its first hit in its normal flow and freed at
    /// thread exit by `PROBE_THREAD_EXIT`: a pthread key, not a TLS destructor, so that the
    /// traced application sees no libc call of ours (see `bpftime_vm::thread_exit`).
    static PROBE_THREADS: Cell<*mut ProbeThreads> as "bpftime_runtime_probe_threads";
}

unsafe extern "C" fn free_probe_threads(t: *mut c_void) {
    if PROBE_THREADS.get() == t as *mut ProbeThreads {
        PROBE_THREADS.set(std::ptr::null_mut());
    }
    // SAFETY: the pointer this thread registered (Box::into_raw), freed only here.
    bpftime_vm::thread_exit::as_own_work(|| drop(unsafe { Box::from_raw(t as *mut ProbeThreads) }));
}

static PROBE_THREAD_EXIT: bpftime_vm::thread_exit::ThreadExitKey = bpftime_vm::thread_exit::ThreadExitKey::new(free_probe_threads);

/// The per-process runtime over one region.
pub struct Runtime {
    region: Arc<ShmRegion>,
    helpers: Arc<HelperTable>,
    engine: EngineKind,
    regions: [Region; 1],
    budget: u64,
    probe_budget: u64,
    checks: Checks,
    code_cache: Option<CodeCache>,
    programs: Mutex<HashMap<u32, Arc<LoadedProgram>>>,
}

impl std::fmt::Debug for Runtime {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Runtime").field("region", &self.region).field("engine", &self.engine).finish()
    }
}

/// Whether a program's result depends on the CPU it runs on: it names a per-CPU map, a map of
/// maps or a program array (whose members may), or asks for the CPU (`bpf_get_smp_processor_id`,
/// `bpf_this_cpu_ptr`, `bpf_per_cpu_ptr`). Its runs get [`bpftime_maps::pin_cpu`], as the kernel
/// keeps a program on one CPU: `v = lookup(percpu); update(percpu, v + 1)` stays on one CPU's
/// value while the thread migrates. Other programs skip the pin's cost.
fn runs_on_one_cpu(insns: &[bpftime_vm::insn::RawInsn], region: &Arc<ShmRegion>) -> bool {
    const LDDW: u8 = 0x18;
    const CALL: u8 = 0x85;
    const CPU_HELPERS: [i32; 3] = [8, 153, 154];
    insns.iter().any(|i| match (i.opc, i.src) {
        (LDDW, 1 | 2) => Map::open(region, i.imm as u32).is_ok_and(|m| {
            let t = m.map_type();
            t.is_percpu() || matches!(t, MapType::ProgArray | MapType::ArrayOfMaps | MapType::HashOfMaps)
        }),
        (CALL, 0) => CPU_HELPERS.contains(&i.imm),
        _ => false,
    })
}

/// The CPU a per-CPU map's lookup uses for the calling thread (for inlined lookups).
extern "C" fn this_cpu() -> u64 {
    bpftime_maps::current_cpu() as u64
}

/// Resolves `lddw` map references (by object id) to this process's map references and value
/// addresses.
struct IdResolver<'a> {
    region: &'a Arc<ShmRegion>,
}

impl LddwResolver for IdResolver<'_> {
    fn resolve(&self, kind: LddwKind, lo: i32, hi: i32) -> Result<u64, String> {
        let id = lo as u32;
        let map = Map::open(self.region, id).map_err(|e| e.to_string())?;
        match kind {
            LddwKind::MapFd => map_ref(&map).ok_or_else(|| "too many maps open in this process".into()),
            LddwKind::MapValue => {
                let off = hi as u32 as u64;
                if map.map_type() != MapType::Array || off >= map.spec().value_size as u64 {
                    return Err(format!("map `{}` has no value byte {off}", map.name()));
                }
                let p = map.lookup_ptr(&0u32.to_le_bytes()).ok_or("empty array")?;
                Ok(p as u64 + off)
            }
            other => Err(format!("{other:?} references are not supported")),
        }
    }

    fn pointee(&self, kind: LddwKind, lo: i32, hi: i32) -> Option<Pointee> {
        let map = Map::open(self.region, lo as u32).ok()?;
        let value_size = map.spec().value_size;
        match kind {
            // Maps whose lookups return a pointer to one whole value, and maps without keys
            // (whose lookups the verifier refuses).
            LddwKind::MapFd => matches!(
                map.map_type(),
                MapType::Array
                    | MapType::Hash
                    | MapType::PercpuArray
                    | MapType::PercpuHash
                    | MapType::LruHash
                    | MapType::LruPercpuHash
                    | MapType::Queue
                    | MapType::Stack
                    | MapType::BloomFilter
            )
            .then(|| {
                let array = map.array_values().map(|(values, stride, cpu_stride)| ArrayLayout {
                    values,
                    stride,
                    max_entries: map.spec().max_entries,
                    cpu: if cpu_stride == 0 { 0 } else { this_cpu as *const () as u64 },
                    cpu_stride,
                });
                Pointee::Map { value_size, key_size: map.spec().key_size, array }
            }),
            LddwKind::MapValue => Some(Pointee::Value { size: value_size, offset: hi as u32 }),
            _ => None,
        }
    }
}

fn map_spec(def: &MapDef, inner_id: u32) -> Result<MapSpec, LoadError> {
    crate::gpu::region_map_spec(def.map_type, |map_type| MapSpec {
        map_type,
        key_size: def.key_size,
        value_size: def.value_size,
        max_entries: def.max_entries,
        flags: def.flags,
        map_extra: def.map_extra,
        inner_map_id: inner_id,
    })
    .ok_or_else(|| LoadError::MapType { name: def.name.clone(), map_type: def.map_type })
}

impl Runtime {
    /// A runtime over `region` using `engine`.
    pub fn new(region: Arc<ShmRegion>, engine: EngineKind) -> Runtime {
        let regions = [Region { start: region.base() as u64, len: region.size(), writable: true }];
        Runtime {
            region,
            helpers: Arc::new(kernel_helpers()),
            engine,
            regions,
            budget: DEFAULT_LOOP_BUDGET,
            probe_budget: PROBE_LOOP_BUDGET,
            checks: Checks::default(),
            code_cache: None,
            programs: Mutex::new(HashMap::new()),
        }
    }

    /// Sets the loop budget of [`Runtime::run`] (default [`DEFAULT_LOOP_BUDGET`]; see there
    /// for the unit).
    pub fn set_loop_budget(&mut self, budget: u64) {
        self.budget = budget;
    }

    /// Keeps the run-time checks of every memory access (`Checks::All`) rather than only of
    /// those the verifier could not prove, for programs loaded from now on.
    pub fn set_checks(&mut self, checks: Checks) {
        self.checks = checks;
    }

    /// The code cache, when one is in use.
    pub fn code_cache(&self) -> Option<&CodeCache> {
        self.code_cache.as_ref()
    }

    /// Uses the code cache in `dir` for JIT-compiled programs from now on (see
    /// [`bpftime_jit::cache`]): a program another process compiled for the same maps is mapped,
    /// not verified and compiled again.
    pub fn set_code_cache(&mut self, dir: &std::path::Path) -> Result<(), bpftime_jit::JitError> {
        self.code_cache = Some(CodeCache::open(dir, Default::default())?);
        Ok(())
    }

    /// Uses the code cache `BPFTIME_CODE_CACHE` names: unset, the directory beside a named
    /// region (`/dev/shm/NAME.code`); `0` or `off`, none; else that directory. Returns the
    /// directory in use, or why none is (nothing when the region is anonymous).
    pub fn use_code_cache_from_env(&mut self) -> Result<Option<std::path::PathBuf>, String> {
        let dir = match std::env::var_os("BPFTIME_CODE_CACHE") {
            Some(v) if v == "0" || v == "off" => return Ok(None),
            Some(v) if !v.is_empty() => std::path::PathBuf::from(v),
            _ => match self.region.path() {
                Some(p) => p.with_file_name(format!("{}.code", p.file_name().unwrap_or_default().to_string_lossy())),
                None => return Ok(None),
            },
        };
        if self.engine != EngineKind::Jit {
            return Ok(None);
        }
        self.set_code_cache(&dir).map_err(|e| format!("code cache: {e}"))?;
        Ok(Some(dir))
    }

    /// Sets the loop budget of one probe hit (default [`PROBE_LOOP_BUDGET`]).
    pub fn set_probe_budget(&mut self, budget: u64) {
        self.probe_budget = budget;
    }

    /// The loop budget of one probe hit.
    pub fn probe_budget(&self) -> u64 {
        self.probe_budget
    }

    /// The region.
    pub fn region(&self) -> &Arc<ShmRegion> {
        &self.region
    }

    /// The helper table programs are verified against.
    pub fn helpers(&self) -> &Arc<HelperTable> {
        &self.helpers
    }

    /// Creates the object's maps (with global data filled in) and stores its programs in the
    /// region, with CO-RE relocations applied against the kernel's BTF when there are any.
    /// Every program is verified before anything is stored, so a bad program loses nothing.
    pub fn load_object(&self, obj: &Object) -> Result<LoadedObject, LoadError> {
        self.load_object_with(obj, None)
    }

    /// [`Runtime::load_object`], with the programs' machine code taken from `aot` (compiled by
    /// `bpftime aot compile` from the same object) where it was compiled for exactly what was
    /// loaded, on this kind of machine, by this build; see [`Runtime::use_aot`].
    pub fn load_object_with(&self, obj: &Object, aot: Option<&AotObject>) -> Result<LoadedObject, LoadError> {
        let mut obj = obj.clone();
        if obj.needs_core() {
            let raw = std::fs::read("/sys/kernel/btf/vmlinux").map_err(|e| LoadError::NoKernelBtf(e.to_string()))?;
            let btf = Btf::parse(&raw).map_err(|e| LoadError::NoKernelBtf(e.to_string()))?;
            obj.apply_core(&btf)?;
        }
        // Kfunc calls by name become calls of the helpers that run them; a program calling
        // one we do not run is refused below, naming it.
        let mut unknown_kfuncs = vec![];
        for p in &mut obj.programs {
            for (at, name) in std::mem::take(&mut p.kfunc_calls) {
                match crate::kfuncs::helper_id(&name) {
                    Some(id) => {
                        p.insns[at].src = 0;
                        p.insns[at].imm = id as i32;
                    }
                    None => unknown_kfuncs.push((p.name.clone(), format!("insn {at}: kfunc {name} is not supported by bpftime"))),
                }
            }
        }
        // Verify against placeholder map references first: nothing is created for a program
        // the verifier rejects, and nothing at all when it rejects every program.
        let mut refused = vec![];
        let mut first_error = None;
        for p in &obj.programs {
            let mut insns = p.insns.clone();
            for r in &p.data_relocs {
                insns[r.insn].src = 0;
                insns[r.insn].imm = 0;
                insns[r.insn + 1].imm = 0;
            }
            // Probes of CUDA kernels (`kprobe/KERNEL`) run on the GPU, with the GPU's helpers.
            let helpers = match ProgramKind::from_section(&p.section) {
                ProgramKind::Kprobe { .. } => crate::gpu::verifier_helpers(),
                _ => self.helpers.clone(),
            };
            let license = obj.license.as_deref().unwrap_or_default();
            if let Some((_, message)) = unknown_kfuncs.iter().find(|(name, _)| *name == p.name) {
                let e = LoadError::Program { program: p.name.clone(), message: message.clone() };
                refused.push((p.name.clone(), p.section.clone(), e.to_string()));
                first_error.get_or_insert(e);
            } else if let Some(message) = crate::helper_names::gpl_refusal(&insns, license) {
                let e = LoadError::Program { program: p.name.clone(), message };
                refused.push((p.name.clone(), p.section.clone(), e.to_string()));
                first_error.get_or_insert(e);
            } else if let Err(e) = verify(&insns, helpers, &bpftime_vm::NoMaps) {
                // A poisoned instruction a run may reach: say what CO-RE did not find.
                let poisoned = p.core_poisoned.iter().find(|(at, _)| *at == e.insn && e.kind == VerifyErrorKind::UnknownHelper(POISON_HELPER as u32));
                let e = match poisoned {
                    Some((at, why)) => {
                        LoadError::Program { program: p.name.clone(), message: format!("insn {at}: {why}, and a run may reach this instruction") }
                    }
                    None => self.verify_error(&p.name, e),
                };
                refused.push((p.name.clone(), p.section.clone(), e.to_string()));
                first_error.get_or_insert(e);
            }
        }
        if refused.len() == obj.programs.len() {
            if let Some(e) = first_error {
                return Err(e);
            }
        }
        let mut maps = Vec::with_capacity(obj.maps.len());
        for def in &obj.maps {
            maps.push(self.create_map(def)?);
        }
        // The object's BTF, which bpftool and `bpftime map dump` format keys and values with
        // (stored after the maps, which keep the ids they had without it).
        let btf = match &obj.btf_bytes {
            Some(bytes) if obj.maps.iter().any(|m| m.btf_types.is_some()) || obj.programs.iter().any(|p| !p.func_info.is_empty()) => {
                crate::btfs::store(&self.region, bytes, 0).ok()
            }
            _ => None,
        };
        for (map, def) in maps.iter().zip(&obj.maps) {
            if let (Some(object), Some((key_type, value_type))) = (btf, def.btf_types) {
                map.set_btf(bpftime_maps::MapBtf { object, key_type, value_type });
            }
        }
        let mut programs = Vec::with_capacity(obj.programs.len());
        for p in obj.programs.iter().filter(|p| !refused.iter().any(|r| r.0 == p.name)) {
            let mut insns = p.insns.clone();
            for r in &p.data_relocs {
                let id = maps[r.map].id() as i32;
                match r.value_offset {
                    None => {
                        insns[r.insn].src = LddwKind::MapFd.src();
                        insns[r.insn].imm = id;
                        insns[r.insn + 1].imm = 0;
                    }
                    Some(off) => {
                        insns[r.insn].src = LddwKind::MapValue.src();
                        insns[r.insn].imm = id;
                        insns[r.insn + 1].imm = off as i32;
                    }
                }
            }
            let license = obj.license.clone().unwrap_or_default();
            let debug = match btf {
                Some(object) => progs::ProgBtf { object, func_info: p.func_info.clone(), line_info: p.line_info.clone() },
                None => progs::ProgBtf::default(),
            };
            let id = progs::store_with_btf(&self.region, &p.name, &p.section, &license, &insns, &debug, 0)?;
            programs.push((p.name.clone(), p.section.clone(), id));
        }
        let aot_unused = match aot {
            Some(aot) => self.use_aot(aot, &programs),
            None => vec![],
        };
        // Compile once, at load: processes that attach these programs find their code cached.
        // (GPU probes and programs that need another helper table simply do not compile here.)
        if self.code_cache.is_some() {
            for (_, _, id) in &programs {
                let _ = self.program(*id);
            }
        }
        // Static initial values of prog arrays and map-in-maps.
        for (def, map) in obj.maps.iter().zip(&maps) {
            for (slot, sym) in &def.init_values {
                let target = programs
                    .iter()
                    .find(|p| &p.0 == sym)
                    .map(|p| p.2)
                    .or_else(|| obj.maps.iter().position(|m| &m.name == sym).map(|i| maps[i].id()))
                    .ok_or_else(|| LoadError::Map { name: def.name.clone(), source: MapError::Invalid(format!("initial value `{sym}` names nothing")) })?;
                map.update(&slot.to_le_bytes(), &target.to_le_bytes(), 0)
                    .map_err(|e| LoadError::Map { name: def.name.clone(), source: MapError::Invalid(format!("initial value `{sym}`: {e}")) })?;
            }
        }
        Ok(LoadedObject { maps, programs, refused, aot_unused })
    }

    fn create_map(&self, def: &MapDef) -> Result<Map, LoadError> {
        let inner_id = match &def.inner {
            Some(inner) => self.create_map(inner)?.id(),
            None => 0,
        };
        let spec = map_spec(def, inner_id)?;
        let map = Map::create(&self.region, &def.name, &spec).map_err(|e| LoadError::Map { name: def.name.clone(), source: e })?;
        if let Some(bytes) = &def.initial {
            map.update(&0u32.to_le_bytes(), bytes, 0)
                .map_err(|e| LoadError::Map { name: def.name.clone(), source: MapError::Invalid(format!("initial data: {e}")) })?;
        }
        Ok(map)
    }

    fn verify_error(&self, program: &str, error: VerifyError) -> LoadError {
        if let VerifyErrorKind::UnknownHelper(id) = error.kind {
            let message = match kernel_helper_name(id) {
                Some(name) => format!("insn {}: helper {id} (bpf_{name}) is not supported by bpftime", error.insn),
                None => format!("insn {}: call to helper {id} ({}) on a path a run may take", error.insn, unknown_helper_meaning(id)),
            };
            return LoadError::Program { program: program.to_string(), message };
        }
        LoadError::Verify { program: program.to_string(), error }
    }

    /// Verifies a stored program with this process's map references and compiles it (once).
    pub fn program(&self, id: u32) -> Result<Arc<LoadedProgram>, LoadError> {
        if let Some(p) = self.programs.lock().unwrap_or_else(|e| e.into_inner()).get(&id) {
            return Ok(p.clone());
        }
        let stored = progs::load(&self.region, id).ok_or(LoadError::NoSuchProgram(id))?;
        crate::helpers::warm_up_for(&stored.insns, self.code_cache());
        let loaded = Arc::new(self.prepare(stored)?);
        self.programs.lock().unwrap_or_else(|e| e.into_inner()).insert(id, loaded.clone());
        Ok(loaded)
    }

    /// Takes the machine code of `programs` (name, section, id) from `aot` where its key (see
    /// [`bpftime_jit::cache`]) equals the one computed here: the program is rebuilt from the
    /// verification record in the object, not verified or compiled, and with a code cache the
    /// code is stored there for other processes. Returns the programs it could not use, and why.
    pub fn use_aot(&self, aot: &AotObject, programs: &[(String, String, u32)]) -> Vec<(String, String)> {
        if self.engine != EngineKind::Jit {
            return programs.iter().map(|p| (p.0.clone(), format!("the engine is {}", self.engine.name()))).collect();
        }
        self.bind_aot(&aot.entries, programs, |entry, program| aot.load(entry, program), Some(&aot.image))
    }

    /// [`Runtime::use_aot`] for code the system linker placed in this process (a C program
    /// linked with an AOT object and `libbpftime_aot.a`): `bind` makes the engine of an entry's
    /// program (see [`bpftime_jit::aot::AotEntry::bind`]). Programs whose code cannot be used
    /// keep this runtime's engine (for such a program, the interpreter). Returns them, and why.
    pub fn use_linked_aot(
        &self,
        entries: &[AotEntry],
        programs: &[(String, String, u32)],
        bind: impl FnMut(&AotEntry, Arc<Program>) -> Result<JitProgram, bpftime_jit::JitError>,
    ) -> Vec<(String, String)> {
        self.bind_aot(entries, programs, bind, None)
    }

    fn bind_aot(
        &self,
        entries: &[AotEntry],
        programs: &[(String, String, u32)],
        mut bind: impl FnMut(&AotEntry, Arc<Program>) -> Result<JitProgram, bpftime_jit::JitError>,
        image: Option<&bpftime_jit::link::Image>,
    ) -> Vec<(String, String)> {
        let fresh;
        let keys = match &self.code_cache {
            Some(cache) => cache.keys(),
            None => match Keys::new(Default::default()) {
                Ok(k) => {
                    fresh = k;
                    &fresh
                }
                Err(e) => return programs.iter().map(|p| (p.0.clone(), e.to_string())).collect(),
            },
        };
        let resolver = IdResolver { region: &self.region };
        let mut unused = vec![];
        for (name, section, id) in programs {
            let Some(entry) = entries.iter().find(|e| &e.name == name) else {
                unused.push((name.clone(), "not in the ahead-of-time object".to_string()));
                continue;
            };
            let Some(stored) = progs::load(&self.region, *id) else { continue };
            let mut use_it = || -> Result<LoadedProgram, String> {
                let key = keys.key(&stored.insns, &self.helpers, &resolver, self.checks).map_err(|e| e.to_string())?;
                if key != entry.key {
                    return Err("it was compiled for another build, CPU, check mode or maps".into());
                }
                let program = Arc::new(bpftime_vm::record::restore(&stored.insns, self.helpers.clone(), &resolver, &entry.record).map_err(|e| e.to_string())?);
                let jit = bind(entry, program.clone()).map_err(|e| e.to_string())?;
                if let (Some(cache), Some(image)) = (&self.code_cache, image) {
                    let _ = cache.install(&key, &entry.record, &entry.name, image);
                }
                Ok(LoadedProgram {
                    id: *id,
                    name: name.clone(),
                    section: section.clone(),
                    program,
                    cached: Some(Outcome::Aot),
                    engine: Arc::new(jit),
                    one_cpu: runs_on_one_cpu(&stored.insns, &self.region),
                })
            };
            match use_it() {
                Ok(p) => {
                    self.programs.lock().unwrap_or_else(|e| e.into_inner()).insert(*id, Arc::new(p));
                }
                Err(why) => unused.push((name.clone(), why)),
            }
        }
        unused
    }

    /// Compiles the CPU programs of `obj` ahead of time, into an object for
    /// [`Runtime::load_object_with`] (`bpftime aot compile`); `bpf_object` are `obj`'s bytes,
    /// carried along. Returns the object and the programs left out, with why.
    pub fn aot_compile(obj: &Object, bpf_object: &[u8]) -> Result<(Vec<u8>, Vec<(String, String)>), LoadError> {
        let rt = Runtime::new(Arc::new(ShmRegion::anonymous(64 << 20)?), EngineKind::Interp);
        let loaded = rt.load_object(obj)?;
        let keys = Keys::new(Default::default()).map_err(|error| LoadError::Jit { program: String::new(), error })?;
        let resolver = IdResolver { region: &rt.region };
        let (mut compiled, mut left_out) = (vec![], vec![]);
        for (name, _, id) in &loaded.programs {
            let stored = progs::load(&rt.region, *id).ok_or(LoadError::NoSuchProgram(*id))?;
            match (rt.program(*id), keys.key(&stored.insns, &rt.helpers, &resolver, rt.checks)) {
                (Ok(p), Ok(key)) => compiled.push((name.clone(), p.program.clone(), key, p.program.record())),
                (Err(e), _) => left_out.push((name.clone(), e.to_string())),
                (_, Err(e)) => left_out.push((name.clone(), e.to_string())),
            }
        }
        left_out.extend(loaded.refused.into_iter().map(|(name, _, why)| (name, why)));
        let parts: Vec<(&str, &Program, &[u8], &[u8])> = compiled.iter().map(|(n, p, k, r)| (n.as_str(), &**p, k.as_slice(), r.as_slice())).collect();
        let object = bpftime_jit::aot::write(&parts, bpf_object, Default::default()).map_err(|error| LoadError::Jit { program: String::new(), error })?;
        Ok((object, left_out))
    }

    /// Every program stored in the region.
    pub fn stored_programs(&self) -> Vec<StoredProgram> {
        progs::list(&self.region)
    }

    fn prepare(&self, stored: StoredProgram) -> Result<LoadedProgram, LoadError> {
        let resolver = IdResolver { region: &self.region };
        let jit_error = |error| LoadError::Jit { program: stored.name.clone(), error };
        // Programs of the kernel's types follow its verifier's rules a VM on its own does not.
        let kind = ProgramKind::from_section(&stored.section);
        let kernel_rules = |program: &Program| {
            let context_read_only = matches!(
                kind,
                ProgramKind::Uprobe { .. }
                    | ProgramKind::Kprobe { .. }
                    | ProgramKind::Usdt { .. }
                    | ProgramKind::Tracepoint { .. }
                    | ProgramKind::RawTracepoint { .. }
            );
            match kind {
                ProgramKind::Other(_) => Ok(()),
                _ => bpftime_vm::kernel_rules::check_kernel_rules(program, context_read_only).map_err(|e| self.verify_error(&stored.name, e)),
            }
        };
        if let (Some(cache), EngineKind::Jit) = (&self.code_cache, self.engine) {
            let (jit, outcome) = cache.program(&stored.insns, &self.helpers, &resolver, self.checks).map_err(|e| match e {
                CacheError::Verify(e) => self.verify_error(&stored.name, e),
                CacheError::Jit(e) => jit_error(e),
            })?;
            let program = jit.program().clone();
            kernel_rules(&program)?;
            let engine: SharedEngine = Arc::new(jit);
            let one_cpu = runs_on_one_cpu(&stored.insns, &self.region);
            return Ok(LoadedProgram { id: stored.id, name: stored.name, section: stored.section, program, cached: Some(outcome), engine, one_cpu });
        }
        let program = Arc::new(verify_with(&stored.insns, self.helpers.clone(), &resolver, self.checks).map_err(|e| self.verify_error(&stored.name, e))?);
        kernel_rules(&program)?;
        let engine = self.engine.build(program.clone()).map_err(jit_error)?;
        let one_cpu = runs_on_one_cpu(&stored.insns, &self.region);
        Ok(LoadedProgram { id: stored.id, name: stored.name, section: stored.section, program, cached: None, engine, one_cpu })
    }

    /// Runs a program on `ctx` with the given helper context values.
    pub fn run(&self, prog: &LoadedProgram, ctx: Context<'_>, cookie: u64, func_ip: u64, pt_regs: bool) -> Result<u64, RunError> {
        let _cpu = prog.one_cpu.then(|| bpftime_maps::pin_cpu(self.region.run_slots()));
        let host = HelperContext::new(self, cookie, func_ip, pt_regs);
        let opts = RunOptions { regions: &self.regions, budget: self.budget, host: &host as *const HelperContext as *mut _ };
        run(prog.engine().as_ref(), ctx, &opts)
    }

    /// Runs `prog` on a read-only `struct pt_regs` (a probe hit) with this thread's reusable
    /// run context for nesting `level` (0: the thread's normal flow; n: a signal handler that
    /// interrupted n runs), set up on the thread's first hit. A hit that cannot run safely (no
    /// context yet in a nested flow, or a region lock held by the flow it interrupted) is
    /// counted as a miss of the program and returns 0.
    #[inline]
    pub fn run_probe(&'static self, probe: &ProbeProgram, regs: &[u8], level: usize) -> Result<ProbeRun, RunError> {
        if probe.program.one_cpu {
            return self.run_probe_on_one_cpu(probe, regs, level);
        }
        self.run_probe_here(probe, regs, level)
    }

    /// [`Runtime::run_probe`] with the CPU pinned for the run (out of the common path: a guard
    /// there costs every hit instructions).
    #[cold]
    #[inline(never)]
    fn run_probe_on_one_cpu(&'static self, probe: &ProbeProgram, regs: &[u8], level: usize) -> Result<ProbeRun, RunError> {
        let _cpu = bpftime_maps::pin_cpu(self.region.run_slots());
        self.run_probe_here(probe, regs, level)
    }

    #[inline]
    fn run_probe_here(&'static self, probe: &ProbeProgram, regs: &[u8], level: usize) -> Result<ProbeRun, RunError> {
        let threads = PROBE_THREADS.get();
        if !threads.is_null() && level < PROBE_LEVELS && (level == 0 || !bpftime_shm::lock::held_by_this_thread()) {
            // SAFETY: this thread's contexts; only this level's element is borrowed (runs at
            // other levels of this thread may be in progress below us, on their own elements).
            let t = unsafe { &mut *(std::ptr::addr_of_mut!((*threads).levels) as *mut ProbeThread).add(level) };
            if !t.busy && std::ptr::eq(t.host.runtime, self) {
                return t.run(probe, regs);
            }
        }
        self.run_probe_slow(probe, regs, level)
    }

    /// `run_probe` on a thread's first hit (it makes the thread's contexts), in a flow that
    /// cannot run, or during thread teardown.
    #[cold]
    #[inline(never)]
    fn run_probe_slow(&'static self, probe: &ProbeProgram, regs: &[u8], level: usize) -> Result<ProbeRun, RunError> {
        if level > 0 {
            // Nested in a run of this thread: no allocation, no waiting for what it holds.
            self.count_miss(probe.program.id);
            return Ok(ProbeRun { r0: 0, override_return: None });
        }
        // Made (not run) with asynchronous signals held back: a handler that left this by
        // `siglongjmp` (in a process whose handlers the agent does not wrap) would leave the
        // allocator's lock held, and the thread's probes silenced for good.
        let made = with_async_signals_blocked(|| {
            let cell = &*PROBE_THREADS;
            let old = cell.get();
            // SAFETY: this thread's contexts, none running (we are at level 0).
            if !old.is_null() && unsafe { (*old).levels.iter().any(|t| t.busy) } {
                return None;
            }
            let fresh = Box::into_raw(Box::new(ProbeThreads {
                levels: std::array::from_fn(|_| ProbeThread {
                    runner: Runner::new(&self.regions, self.probe_budget),
                    host: Box::new(HelperContext { caller_at_sp: probe.caller_at_sp, ..HelperContext::new(self, probe.cookie, probe.func_ip, true) }),
                    busy: false,
                }),
            }));
            // SAFETY: fresh contexts, freed only by `free_probe_threads` at this thread's exit.
            if !unsafe { PROBE_THREAD_EXIT.register(fresh as *mut c_void) } {
                // SAFETY: just made, not shared.
                drop(unsafe { Box::from_raw(fresh) });
                return None;
            }
            if !old.is_null() {
                // Contexts for another runtime (tests make several): replaced.
                // SAFETY: this thread's previous contexts, no longer registered or running.
                drop(unsafe { Box::from_raw(old) });
            }
            cell.set(fresh);
            Some(fresh)
        });
        match made {
            // SAFETY: just made, owned by this thread.
            Some(fresh) => unsafe { &mut (*fresh).levels[0] }.run(probe, regs),
            None => {
                let host = HelperContext { caller_at_sp: probe.caller_at_sp, ..HelperContext::new(self, probe.cookie, probe.func_ip, true) };
                let opts = RunOptions { regions: &self.regions, budget: self.probe_budget, host: &host as *const HelperContext as *mut _ };
                let r0 = run(probe.program.engine().as_ref(), Context::ReadOnly(regs), &opts)?;
                Ok(ProbeRun { r0, override_return: host.override_return.get() })
            }
        }
    }

    /// Counts a hit that could not run program `id` (shown by `bpftime prog list`).
    pub fn count_miss(&self, id: u32) {
        progs::count_miss(&self.region, id);
    }

    /// Runs a program on a context given as a region with `budget` (for tail calls).
    pub(crate) fn run_region(&self, prog: &LoadedProgram, ctx: Region, host: &HelperContext, budget: u64) -> Result<u64, RunError> {
        let opts = RunOptions { regions: &self.regions, budget, host: host as *const HelperContext as *mut _ };
        let ctx = if ctx.len == 0 {
            Context::None
        } else {
            // SAFETY: the region is the context of the run that made the tail call, still live
            // while that run waits for this nested one.
            let bytes = unsafe { std::slice::from_raw_parts_mut(ctx.start as *mut u8, ctx.len as usize) };
            if ctx.writable {
                Context::Mem(bytes)
            } else {
                Context::ReadOnly(bytes)
            }
        };
        run(prog.engine().as_ref(), ctx, &opts)
    }
}
