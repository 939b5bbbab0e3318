//! Links in the shared region: a program attached (or to be attached) somewhere. The agent in
//! a traced process reads them and attaches what they name.

use crate::desc::{self, Plain};
use crate::usdt;
use bpftime_maps::Map;
use bpftime_object::ProgramKind;
use bpftime_shm::{ObjectKind, ShmError, ShmRegion};
use std::path::Path;
use std::sync::Arc;

const LINK_MAGIC: u64 = 0x6270_665f_6c69_6e6b; // "bpf_link"
const TARGET_LEN: usize = 512;

#[repr(C)]
#[derive(Clone, Copy)]
struct LinkDesc {
    magic: u64,
    prog: u32,
    retprobe: u32,
    cookie: u64,
    target: [u8; TARGET_LEN],
    /// A [`LinkState`], only ever raised (atomically, in place).
    state: u32,
    /// A [`LinkKind`].
    kind: u32,
    /// The process whose fd holds the link (a loader under the syscall server), 0 for none:
    /// when it is gone, so is the link (the kernel detaches a link when its last fd closes).
    owner: u32,
    /// The only process it attaches in (`perf_event_open`'s pid), 0 for every process.
    pid: u32,
    /// File offset of the USDT semaphore to count this probe in, 0 for none.
    ref_ctr: u64,
    /// The owner's fd that stands for the link, plus one (0: none known): its perf event, or
    /// the link itself for a raw tracepoint (`BPF_TASK_FD_QUERY`, `bpftool perf`).
    fd: u32,
    pad: u32,
}

/// How far a link got, over every process that saw it: agents raise it, `bpftime run` reads
/// it at the end to say what never attached and why.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
#[repr(u32)]
pub enum LinkState {
    /// Written; no agent has looked at it (none started, e.g. a static binary).
    Stored = 0,
    /// An agent is waiting for its binary to be mapped.
    Waiting = 1,
    /// An agent could not attach it (and said why).
    Failed = 2,
    /// Attached in at least one process.
    Attached = 3,
}

impl LinkState {
    fn from_u32(v: u32) -> LinkState {
        match v {
            0 => LinkState::Stored,
            1 => LinkState::Waiting,
            2 => LinkState::Failed,
            _ => LinkState::Attached,
        }
    }
}

/// Where a link attaches.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u32)]
pub enum LinkKind {
    /// A function of a binary (`BINARY:FUNCTION[+OFFSET]`), entry or return.
    Uprobe = 0,
    /// A CUDA kernel by name (mangled, demangled or bare): the program is spliced into the
    /// kernel's PTX at its entry or at its returns (`kprobe/KERNEL`, `kretprobe/KERNEL`).
    CudaKernel = 1,
    /// A system call event (`syscalls/sys_enter_NAME`, `raw/sys_exit`: see
    /// [`crate::syscall_events::SyscallEvent`]), for `tracepoint/syscalls/...` and
    /// `raw_tracepoint/sys_enter|sys_exit` programs.
    Syscall = 2,
    /// CPU-time sampling (a `PERF_COUNT_SW_CPU_CLOCK` perf event: bpftrace's `profile`,
    /// libbpf-tools' `profile`): the program runs on the thread the period of CPU time
    /// interrupts, as the kernel runs it on the task a CPU's timer interrupts; the target is a
    /// [`ProfileTarget`].
    Profile = 3,
}

/// Where a [`LinkKind::Profile`] link samples: every `period_ns` nanoseconds of CPU time, on
/// one CPU (a perf event opened for one: the kernel samples what runs there) or any, on one
/// thread (an event opened for a task) or all.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ProfileTarget {
    /// Nanoseconds of CPU time between samples.
    pub period_ns: u64,
    /// The only CPU it samples on.
    pub cpu: Option<u32>,
    /// The only thread it samples.
    pub thread: Option<u32>,
}

impl ProfileTarget {
    /// The link target text: `cpu-clock:PERIOD_NS:CPU:THREAD`, `*` for any.
    pub fn to_target(&self) -> String {
        let any = |v: Option<u32>| v.map_or("*".to_string(), |v| v.to_string());
        format!("cpu-clock:{}:{}:{}", self.period_ns, any(self.cpu), any(self.thread))
    }

    /// Reads what [`ProfileTarget::to_target`] wrote.
    pub fn parse(target: &str) -> Option<ProfileTarget> {
        let mut parts = target.strip_prefix("cpu-clock:")?.split(':');
        let period_ns = parts.next()?.parse().ok().filter(|&p| p > 0)?;
        let mut any = || -> Option<Option<u32>> {
            match parts.next()? {
                "*" => Some(None),
                v => v.parse().ok().map(Some),
            }
        };
        let (cpu, thread) = (any()?, any()?);
        Some(ProfileTarget { period_ns, cpu, thread })
    }
}

// SAFETY: integers and a byte array, sizes multiples of 8: no padding, any bit pattern valid.
unsafe impl Plain for LinkDesc {}

/// A uprobe link: program `prog` on `target` (`BINARY:FUNCTION[+OFFSET]` or `BINARY:OFFSET`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UprobeLink {
    /// Object id of the link.
    pub id: u32,
    /// The link's name (its program's function name).
    pub name: String,
    /// Program id.
    pub prog: u32,
    /// Where to attach.
    pub target: String,
    /// uretprobe rather than uprobe.
    pub retprobe: bool,
    /// An entry probe whose program replaces the function (`ureplace/...`): the program's
    /// result is returned, the function not run.
    pub replace: bool,
    /// `bpf_get_attach_cookie`.
    pub cookie: u64,
    /// How far it got.
    pub state: LinkState,
    /// Where it attaches.
    pub kind: LinkKind,
    /// The only process it attaches in, 0 for every process.
    pub pid: u32,
    /// File offset of its USDT semaphore in the target binary, 0 for none.
    pub ref_ctr: u64,
    /// The process holding it (0: nobody, a pinned link).
    pub owner: u32,
    /// The holder's fd that stands for it, where known: its perf event, or the link itself for
    /// a raw tracepoint (what `BPF_TASK_FD_QUERY` answers about).
    pub fd: Option<i32>,
}

/// Stores a link; returns its id.
pub fn store(region: &ShmRegion, name: &str, prog: u32, target: &str, retprobe: bool, cookie: u64) -> Result<u32, ShmError> {
    store_kind(region, name, prog, target, retprobe, cookie, LinkKind::Uprobe, LinkScope::default())
}

/// Who holds a link and where it applies (all 0: nobody, every process, no semaphore).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct LinkScope {
    /// The process whose fd holds it (a loader under the syscall server): it goes when that
    /// process does (see [`remove_orphans`]).
    pub owner: u32,
    /// The only process it attaches in.
    pub pid: u32,
    /// File offset of the USDT semaphore in the target binary that counts it.
    pub ref_ctr: u64,
    /// The program replaces the function (see [`UprobeLink::replace`]).
    pub replace: bool,
    /// The owner's fd that stands for it (see [`UprobeLink::fd`]).
    pub fd: Option<i32>,
}

/// `LinkDesc::retprobe` of a replacing link (0: entry, 1: return).
const REPLACE: u32 = 2;

#[allow(clippy::too_many_arguments)]
fn store_kind(region: &ShmRegion, name: &str, prog: u32, target: &str, retprobe: bool, cookie: u64, kind: LinkKind, scope: LinkScope) -> Result<u32, ShmError> {
    let mut desc = LinkDesc {
        magic: LINK_MAGIC,
        prog,
        retprobe: if scope.replace { REPLACE } else { retprobe as u32 },
        cookie,
        target: [0; TARGET_LEN],
        state: 0,
        kind: kind as u32,
        owner: scope.owner,
        pid: scope.pid,
        ref_ctr: scope.ref_ctr,
        fd: scope.fd.map_or(0, |fd| fd as u32 + 1),
        pad: 0,
    };
    desc::fill(&mut desc.target, target);
    desc::store(region, ObjectKind::Link, name, &desc)
}

/// Stores a system call link (`event` as [`crate::syscall_events::SyscallEvent::parse`] reads
/// it) with an owner and a pid.
pub fn store_syscall(region: &ShmRegion, name: &str, prog: u32, event: &str, scope: LinkScope) -> Result<u32, ShmError> {
    store_kind(region, name, prog, event, false, 0, LinkKind::Syscall, scope)
}

/// Stores a CPU-time sampling link with an owner and a pid.
pub fn store_profile(region: &ShmRegion, name: &str, prog: u32, target: ProfileTarget, scope: LinkScope) -> Result<u32, ShmError> {
    store_kind(region, name, prog, &target.to_target(), false, 0, LinkKind::Profile, scope)
}

/// Stores a CUDA kernel link (a `kprobe/KERNEL` program attached by a loader) with an owner
/// and a pid.
pub fn store_cuda(region: &ShmRegion, name: &str, prog: u32, kernel: &str, retprobe: bool, scope: LinkScope) -> Result<u32, ShmError> {
    store_kind(region, name, prog, kernel, retprobe, 0, LinkKind::CudaKernel, scope)
}

/// Stores a uprobe link with an owner, a pid and a semaphore (see [`LinkScope`]).
pub fn store_owned(region: &ShmRegion, name: &str, prog: u32, target: &str, retprobe: bool, cookie: u64, scope: LinkScope) -> Result<u32, ShmError> {
    store_kind(region, name, prog, target, retprobe, cookie, LinkKind::Uprobe, scope)
}

/// Removes the links whose owner process is gone (killed before it could close them), with any
/// child forked from it (see `ShmRegion::add_heir`). Returns how many. See also
/// [`crate::orphans::remove`], which removes what such links leave behind.
pub fn remove_orphans(region: &ShmRegion) -> usize {
    let mut n = 0;
    // Owners looked up once per call: thousands of links may name one.
    let mut alive: std::collections::HashMap<u32, bool> = Default::default();
    // (Only the words it needs read: an agent's link follower calls this at every change.)
    let word = |data: u64, offset: usize| region.atomic_u32(data.checked_add(offset as u64)?).map(|w| w.load(std::sync::atomic::Ordering::Acquire));
    for (id, data) in region.ids_of_kind(ObjectKind::Link) {
        let Some(owner) = word(data, std::mem::offset_of!(LinkDesc, owner)).filter(|&o| o != 0) else { continue };
        let magic = (region.atomic_u64(data).map(|w| w.load(std::sync::atomic::Ordering::Acquire))) == Some(LINK_MAGIC);
        if magic && !*alive.entry(owner).or_insert_with(|| region.owner_alive(owner)) {
            if region.remove_object(id).is_some() {
                region.retire(data);
            }
            n += 1;
        }
    }
    n
}

/// The u32 field at `offset` in link `id`'s descriptor, read and written in place.
fn link_word(region: &ShmRegion, id: u32, offset: usize) -> Option<&std::sync::atomic::AtomicU32> {
    let o = region.object(id).filter(|o| o.kind == ObjectKind::Link)?;
    region.atomic_u32(o.data.checked_add(offset as u64)?)
}

/// The process that holds link `id` (0: nobody, a pinned link), if that is a link.
pub fn owner_of(region: &ShmRegion, id: u32) -> Option<u32> {
    link_word(region, id, std::mem::offset_of!(LinkDesc, owner)).map(|w| w.load(std::sync::atomic::Ordering::Acquire))
}

/// Records `fd` as the owner's fd that stands for link `id` (see [`UprobeLink::fd`]; None:
/// no fd does any more).
pub fn set_fd(region: &ShmRegion, id: u32, fd: Option<i32>) {
    if let Some(word) = link_word(region, id, std::mem::offset_of!(LinkDesc, fd)) {
        word.store(fd.map_or(0, |fd| fd as u32 + 1), std::sync::atomic::Ordering::Release);
    }
}

/// The program of link `id`, if that is a link.
pub fn program_of(region: &ShmRegion, id: u32) -> Option<u32> {
    let o = region.object(id).filter(|o| o.kind == ObjectKind::Link)?;
    link_program(region, o.data)
}

/// Whether any link in the region runs program `prog` (reads two words a link: cheap enough
/// for each fd a loader with thousands of links closes).
pub fn uses_program(region: &ShmRegion, prog: u32) -> bool {
    region.ids_of_kind(ObjectKind::Link).into_iter().any(|(_, data)| link_program(region, data) == Some(prog))
}

/// The program of the link whose descriptor is at `data`.
fn link_program(region: &ShmRegion, data: u64) -> Option<u32> {
    let magic = region.atomic_u64(data.checked_add(std::mem::offset_of!(LinkDesc, magic) as u64)?)?.load(std::sync::atomic::Ordering::Acquire);
    let prog = region.atomic_u32(data.checked_add(std::mem::offset_of!(LinkDesc, prog) as u64)?)?.load(std::sync::atomic::Ordering::Acquire);
    (magic == LINK_MAGIC).then_some(prog)
}

/// Removes link `id` (a detached link: the loader that made it closed it or exited); its
/// descriptor is freed after the region's grace period (an agent may be reading it).
pub fn remove(region: &ShmRegion, id: u32) {
    if let Some(o) = region.object(id).filter(|o| o.kind == ObjectKind::Link) {
        if region.remove_object(id).is_some() {
            region.retire(o.data);
        }
    }
}

/// Makes process `owner` the holder of link `id` (0: nobody, the link stays until removed:
/// a pinned link).
pub fn set_owner(region: &ShmRegion, id: u32, owner: u32) {
    if let Some(word) = link_word(region, id, std::mem::offset_of!(LinkDesc, owner)) {
        word.store(owner, std::sync::atomic::Ordering::Release);
    }
}

/// Raises link `id`'s state to `state` (a lower state is left as it is).
pub fn raise_state(region: &ShmRegion, id: u32, state: LinkState) {
    if let Some(word) = link_word(region, id, std::mem::offset_of!(LinkDesc, state)) {
        word.fetch_max(state as u32, std::sync::atomic::Ordering::AcqRel);
    }
}

/// A program that was not given a link, and why.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Skipped {
    /// Program name.
    pub name: String,
    /// Its section.
    pub section: String,
    /// Why it is not attached, in words.
    pub reason: String,
}

impl std::fmt::Display for Skipped {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "`{}` (section `{}`) is not attached: {}", self.name, self.section, self.reason)
    }
}

/// What [`store_uprobes`] did.
#[derive(Clone, Debug, Default)]
pub struct StoredUprobes {
    /// The links written.
    pub links: Vec<UprobeLink>,
    /// Programs given no link, with the reason.
    pub skipped: Vec<Skipped>,
}

/// Why a program of this kind cannot be attached by the agent (yet).
fn unsupported(kind: &ProgramKind) -> String {
    match kind {
        ProgramKind::Uprobe { .. } => {
            "its section names no BINARY:FUNCTION (write `uprobe/BINARY:FUNCTION`, or give `bpftime run --attach PROG=BINARY:FUNCTION`)".into()
        }
        ProgramKind::Kprobe { .. } => "its section names no kernel (write `kprobe/KERNEL` for a CUDA kernel; kernel kprobes run in the kernel)".into(),
        ProgramKind::Tracepoint { category, name } => {
            format!("tracepoint `{category}/{name}` is a kernel event: only `syscalls/` tracepoints run in userspace")
        }
        ProgramKind::RawTracepoint { name } => format!("raw tracepoint `{name}` is a kernel event: only `sys_enter` and `sys_exit` run in userspace"),
        ProgramKind::Usdt { .. } => "its section names no BINARY:PROVIDER:NAME (write `usdt/BINARY:PROVIDER:NAME`)".into(),
        ProgramKind::SocketFilter => "socket filters are not supported".into(),
        ProgramKind::Other(_) => "bpftime does not know where programs of this section attach".into(),
    }
}

/// bpftime's kernel name for a program that runs on the GPU as a kernel of its own
/// (`kprobe/__directly_run`), started with `bpftime prog run`: no probe.
pub const DIRECT_RUN: &str = "__directly_run";

/// Writes a link for each uprobe/uretprobe program (`(name, section, program id)`, as
/// [`crate::LoadedObject::programs`] lists them) whose section names where to attach in the
/// libbpf spelling (`uprobe/BINARY:FUNCTION[+OFFSET]`, `uretprobe/...`), and a CUDA kernel
/// link for each `kprobe/KERNEL` / `kretprobe/KERNEL` program (bpftime's spelling for probes in
/// GPU kernels); every other program is listed in [`StoredUprobes::skipped`] with the reason.
pub fn store_uprobes(region: &Arc<ShmRegion>, programs: &[(String, String, u32)]) -> Result<StoredUprobes, ShmError> {
    store_uprobes_for(region, programs, None, 0)
}

/// [`store_uprobes`], with `/proc/self/exe` in a section meaning `exe` (the command a
/// `bpftime run` starts) rather than the calling process's own executable. USDT programs
/// (`usdt/BINARY:PROVIDER:NAME`) get a link per probe site, as libbpf's loader makes them
/// (see [`crate::usdt`]). `pid`: the only process the links attach in (0: every process).
pub fn store_uprobes_for(region: &Arc<ShmRegion>, programs: &[(String, String, u32)], exe: Option<&Path>, pid: u32) -> Result<StoredUprobes, ShmError> {
    let scope = LinkScope { pid, ..LinkScope::default() };
    let mut out = StoredUprobes::default();
    for (name, section, prog) in programs {
        let kind = ProgramKind::from_section(section);
        if let Some(event) = crate::syscall_events::SyscallEvent::target_of(&kind) {
            match event {
                Ok(target) => {
                    let id = store_kind(region, name, *prog, &target, false, 0, LinkKind::Syscall, scope)?;
                    out.links.push(UprobeLink {
                        id,
                        name: name.clone(),
                        prog: *prog,
                        target,
                        retprobe: false,
                        replace: false,
                        cookie: 0,
                        state: LinkState::Stored,
                        kind: LinkKind::Syscall,
                        pid,
                        ref_ctr: 0,
                        owner: 0,
                        fd: None,
                    });
                }
                Err(reason) => out.skipped.push(Skipped { name: name.clone(), section: section.clone(), reason }),
            }
            continue;
        }
        let target = match &kind {
            ProgramKind::Usdt { binary, provider, name: probe } if !probe.is_empty() => {
                match store_usdt(region, name, *prog, &binary_path(binary, exe), provider, probe, scope) {
                    Ok(links) => out.links.extend(links),
                    Err(reason) => out.skipped.push(Skipped { name: name.clone(), section: section.clone(), reason }),
                }
                continue;
            }
            ProgramKind::Uprobe { target, .. } if target.contains(':') => target.clone(),
            ProgramKind::Kprobe { function, .. } if function == DIRECT_RUN => {
                let reason = format!("it runs on the GPU by itself, not in a kernel: `bpftime prog run {name} --grid X,Y,Z --block X,Y,Z`");
                out.skipped.push(Skipped { name: name.clone(), section: section.clone(), reason });
                continue;
            }
            ProgramKind::Kprobe { retprobe, function } if !function.is_empty() => {
                let id = store_kind(region, name, *prog, function, *retprobe, 0, LinkKind::CudaKernel, scope)?;
                out.links.push(UprobeLink {
                    id,
                    name: name.clone(),
                    prog: *prog,
                    target: function.clone(),
                    retprobe: *retprobe,
                    replace: false,
                    cookie: 0,
                    state: LinkState::Stored,
                    kind: LinkKind::CudaKernel,
                    pid,
                    ref_ctr: 0,
                    owner: 0,
                    fd: None,
                });
                continue;
            }
            _ => {
                out.skipped.push(Skipped { name: name.clone(), section: section.clone(), reason: unsupported(&kind) });
                continue;
            }
        };
        let retprobe = matches!(kind, ProgramKind::Uprobe { retprobe: true, .. });
        let replace = matches!(kind, ProgramKind::Uprobe { replace: true, .. });
        // `uprobe.multi/BINARY:PATTERN` (and a pattern in any uprobe section): a link per
        // function of BINARY whose name the glob matches, as libbpf attaches them.
        let targets = match target.rsplit_once(':') {
            Some((binary, pattern)) if pattern.contains(['*', '?']) => match functions_matching(&binary_path(binary, exe), pattern) {
                Ok(names) if !names.is_empty() => names.into_iter().map(|f| format!("{binary}:{f}")).collect(),
                Ok(_) => {
                    let reason = format!("no function of {binary} matches `{pattern}`");
                    out.skipped.push(Skipped { name: name.clone(), section: section.clone(), reason });
                    continue;
                }
                Err(reason) => {
                    out.skipped.push(Skipped { name: name.clone(), section: section.clone(), reason });
                    continue;
                }
            },
            _ => vec![target],
        };
        for target in targets {
            let id = store_kind(region, name, *prog, &target, retprobe, 0, LinkKind::Uprobe, LinkScope { replace, ..scope })?;
            out.links.push(UprobeLink {
                id,
                name: name.clone(),
                prog: *prog,
                target,
                retprobe,
                replace,
                cookie: 0,
                state: LinkState::Stored,
                kind: LinkKind::Uprobe,
                pid,
                ref_ctr: 0,
                owner: 0,
                fd: None,
            });
        }
    }
    Ok(out)
}

/// The names of the functions defined in ELF file `path` that glob `pattern` (`*`, `?`)
/// matches, sorted, each once: from its dynamic symbols, or where none matches there from its
/// symbol table, as libbpf looks them up.
fn functions_matching(path: &str, pattern: &str) -> Result<Vec<String>, String> {
    use object::{Object, ObjectSymbol, SymbolKind};
    let data = std::fs::read(path).map_err(|e| format!("{path}: {e}"))?;
    let file = object::File::parse(&*data).map_err(|e| format!("{path}: {e}"))?;
    let matching = |symbols: &mut dyn Iterator<Item = object::Symbol<'_, '_>>| -> Vec<String> {
        let mut names: Vec<String> = symbols
            .filter(|s| s.kind() == SymbolKind::Text && !s.is_undefined())
            .filter_map(|s| s.name().ok().map(str::to_string))
            .filter(|n| glob_matches(pattern.as_bytes(), n.as_bytes()))
            .collect();
        names.sort_unstable();
        names.dedup();
        names
    };
    let dynamic = matching(&mut file.dynamic_symbols());
    Ok(if dynamic.is_empty() { matching(&mut file.symbols()) } else { dynamic })
}

/// Whether glob `p` (`*`: any run of characters, `?`: any one) matches all of `s`.
fn glob_matches(p: &[u8], s: &[u8]) -> bool {
    let (mut pi, mut si) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while si < s.len() {
        match p.get(pi) {
            Some(b'*') => {
                star = Some((pi, si));
                pi += 1;
            }
            Some(&c) if c == b'?' || c == s[si] => {
                pi += 1;
                si += 1;
            }
            _ => match star {
                // Let the last `*` take one more character.
                Some((sp, ss)) => {
                    pi = sp + 1;
                    si = ss + 1;
                    star = Some((sp, ss + 1));
                }
                None => return false,
            },
        }
    }
    p[pi..].iter().all(|&c| c == b'*')
}

/// The file a section's BINARY names: `/proc/self/exe` as `exe` says, a bare library name
/// searched where the dynamic linker looks, a path as it is.
fn binary_path(binary: &str, exe: Option<&Path>) -> String {
    if binary == "/proc/self/exe" {
        let own = || std::fs::read_link("/proc/self/exe").ok();
        return exe.map(Path::to_path_buf).or_else(own).map_or(binary.to_string(), |p| p.to_string_lossy().into_owned());
    }
    if binary.contains('/') {
        return binary.to_string();
    }
    ["/lib/x86_64-linux-gnu", "/usr/lib/x86_64-linux-gnu", "/lib64", "/usr/lib64", "/lib", "/usr/lib", "/usr/local/lib"]
        .iter()
        .map(|d| Path::new(d).join(binary))
        .find(|p| p.exists())
        .map_or(binary.to_string(), |p| p.to_string_lossy().into_owned())
}

/// Links program `prog` (named `name`) to every site of USDT probe `provider:probe` in
/// `binary`, each with its argument spec written into the program's `__bpf_usdt_specs` map
/// and the spec id as the link's cookie; the probe's semaphore is raised while attached.
fn store_usdt(region: &Arc<ShmRegion>, name: &str, prog: u32, binary: &str, provider: &str, probe: &str, scope: LinkScope) -> Result<Vec<UprobeLink>, String> {
    let sites: Vec<usdt::UsdtProbe> = usdt::probes_in(binary)?.into_iter().filter(|p| p.provider == provider && p.name == probe).collect();
    if sites.is_empty() {
        return Err(format!("{binary} has no USDT probe {provider}:{probe}"));
    }
    let stored = crate::progs::load(region, prog).ok_or("the program is not in the region")?;
    let specs = stored
        .map_refs()
        .into_iter()
        .filter_map(|(_, id)| Map::open(region, id).ok())
        .find(|m| m.name() == "__bpf_usdt_specs")
        .ok_or("the program uses no __bpf_usdt_specs map (build it with libbpf's usdt.bpf.h)")?;
    let (value_size, slots) = (specs.spec().value_size as usize, specs.spec().max_entries);
    if value_size != usdt::SPEC_SIZE {
        return Err(format!("__bpf_usdt_specs holds {value_size}-byte values, not libbpf's {}-byte specs", usdt::SPEC_SIZE));
    }
    let mut value = vec![0u8; value_size];
    let first_free = (0..slots).rev().find(|k| specs.lookup(&k.to_le_bytes(), &mut value).is_ok() && usdt::slot_used(&value)).map_or(0, |k| k + 1);
    let mut links = vec![];
    for (next, site) in (first_free..).zip(sites) {
        let spec = usdt::encode_spec(&site.args, 0).map_err(|e| format!("{provider}:{probe} at {:#x}: {e}", site.offset))?;
        if next >= slots {
            return Err(format!("more USDT sites than the {slots} specs __bpf_usdt_specs holds"));
        }
        specs.update(&next.to_le_bytes(), &spec, 0).map_err(|e| format!("writing the USDT spec: {e}"))?;
        let target = format!("{binary}:{:#x}", site.offset);
        let id = store_owned(region, name, prog, &target, false, next as u64, LinkScope { ref_ctr: site.semaphore, ..scope }).map_err(|e| e.to_string())?;
        links.push(UprobeLink {
            id,
            name: name.to_string(),
            prog,
            target,
            retprobe: false,
            replace: false,
            cookie: next as u64,
            state: LinkState::Stored,
            kind: LinkKind::Uprobe,
            pid: scope.pid,
            ref_ctr: site.semaphore,
            owner: scope.owner,
            fd: None,
        });
    }
    Ok(links)
}

/// Every link in the region (uprobes and CUDA kernel probes).
pub fn list(region: &ShmRegion) -> Vec<UprobeLink> {
    region.objects_of_kind(ObjectKind::Link).into_iter().filter_map(|o| link_of(region, o)).collect()
}

/// Link `id`, if there is one.
pub fn get(region: &ShmRegion, id: u32) -> Option<UprobeLink> {
    region.object(id).filter(|o| o.kind == ObjectKind::Link).and_then(|o| link_of(region, o))
}

fn link_of(region: &ShmRegion, o: bpftime_shm::ObjectInfo) -> Option<UprobeLink> {
    let d: LinkDesc = desc::load(region, o.data)?;
    if d.magic != LINK_MAGIC {
        return None;
    }
    Some(UprobeLink {
        id: o.id,
        name: o.name,
        prog: d.prog,
        target: desc::text(&d.target),
        retprobe: d.retprobe == 1,
        replace: d.retprobe == REPLACE,
        cookie: d.cookie,
        state: LinkState::from_u32(d.state),
        kind: match d.kind {
            1 => LinkKind::CudaKernel,
            2 => LinkKind::Syscall,
            3 => LinkKind::Profile,
            _ => LinkKind::Uprobe,
        },
        pid: d.pid,
        ref_ctr: d.ref_ctr,
        owner: d.owner,
        fd: d.fd.checked_sub(1).map(|fd| fd as i32),
    })
}

impl UprobeLink {
    /// Whether the link runs in process `pid`, whose executable is `exe`, when that process is
    /// a loader (the syscall server beside the agent, `bpftime load`): one made for that pid,
    /// or for every process but a uprobe on another binary (a loader's agent takes only the
    /// uprobes on its own executable, which it probes to trace itself, not those on the
    /// libraries it shares with what it traces).
    pub fn runs_in_loader(&self, pid: u32, exe: Option<&std::path::Path>) -> bool {
        if self.pid == pid {
            return true;
        }
        let file = self.target.rsplit_once(':').map_or(self.target.as_str(), |(file, _)| file);
        self.pid == 0 && (self.kind != LinkKind::Uprobe || exe.is_some_and(|exe| std::fs::canonicalize(file).is_ok_and(|f| f == exe)))
    }
}

#[cfg(test)]
mod tests {
    use super::glob_matches;

    #[test]
    fn profile_targets_read_back_as_written() {
        use super::ProfileTarget;
        for t in [ProfileTarget { period_ns: 10_101_010, cpu: Some(1), thread: None }, ProfileTarget { period_ns: 1, cpu: None, thread: Some(4242) }] {
            assert_eq!(ProfileTarget::parse(&t.to_target()), Some(t));
        }
        for bad in ["cpu-clock:0:*:*", "cpu-clock:5:*", "cpu-clock:5:x:*", "uprobe:5:*:*"] {
            assert_eq!(ProfileTarget::parse(bad), None, "{bad}");
        }
    }

    #[test]
    fn globs_match_as_libbpfs_do() {
        let m = |p: &str, s: &str| glob_matches(p.as_bytes(), s.as_bytes());
        for (p, s) in
            [("*", ""), ("*", "malloc"), ("mal*", "malloc"), ("*loc", "malloc"), ("m?ll*c", "malloc"), ("*a??", "fact"), ("a*b*c", "aXbYc"), ("**", "x")]
        {
            assert!(m(p, s), "{p} matches {s}");
        }
        for (p, s) in [("mal*", "calloc"), ("*a??", "tiny"), ("?", ""), ("m?lloc", "mlloc"), ("a*b*c", "aXbYd"), ("abc", "abcd")] {
            assert!(!m(p, s), "{p} does not match {s}");
        }
    }
}
