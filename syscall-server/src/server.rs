//! The bpf() commands, `perf_event_open` for uprobes and the perf ioctls, answered from the
//! shared region instead of the kernel. Pure logic over the region and a table of the fds we
//! handed out; the C entry points in `lib.rs` call it (and tests call it directly, as aya's
//! fake syscall layer is called).
//!
//! Every fd handed out is a real, unique kernel fd (an eventfd: pollable, so a ring buffer
//! consumer can `epoll` it), so `close`, `dup`, `epoll` and `fork` behave.

use crate::attr::{self, Attr};
use crate::pmu;
use crate::user;
use bpftime_maps::{Map, MapBtf, MapSpec, MapType};
use bpftime_runtime::orphans::ids_held;
use bpftime_runtime::{btfs, links, pins, progs, EngineKind, Runtime};
use bpftime_shm::{ObjectKind, ShmRegion};
use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};

/// An errno value.
pub type Errno = i32;

/// A probe perf event opened through us: where a program attached to it runs.
#[derive(Clone, Debug)]
pub struct ProbeEvent {
    /// What it probes.
    pub target: EventTarget,
    /// A return probe (the PMU's retprobe bit).
    pub retprobe: bool,
    /// The process it is for (-1: every process).
    pub pid: i32,
    /// The link made when a program was attached to it.
    pub link: Option<u32>,
}

/// What a [`ProbeEvent`] probes.
#[derive(Clone, Debug)]
pub enum EventTarget {
    /// A function of a binary (the uprobe PMU).
    File {
        /// The binary (`config1`).
        path: String,
        /// File offset (`config2`).
        offset: u64,
        /// USDT semaphore offset (`config` bits 32-63).
        ref_ctr_offset: u64,
    },
    /// A system call tracepoint (`syscalls/sys_enter_NAME`): the event the link names.
    Syscall(String),
    /// A CUDA kernel, by the name a kprobe event gave (one the kernel does not have).
    CudaKernel(String),
    /// CPU-time sampling (a `PERF_COUNT_SW_CPU_CLOCK` event opened for each CPU, or for a
    /// task): run in the traced processes on the threads the period interrupts.
    CpuClock(links::ProfileTarget),
}

/// What one of our fds stands for.
#[derive(Clone, Debug)]
pub enum Handle {
    /// A map (region object id).
    Map(u32),
    /// A program (region object id).
    Prog(u32),
    /// BTF (region object id; bpf() shows it as [`btf_id_of`] it).
    Btf(u32),
    /// The kernel's own BTF (`/sys/kernel/btf/vmlinux`, id [`KERNEL_BTF_ID`]).
    KernelBtf,
    /// A link (region object id).
    Link(u32),
    /// A `uprobe_multi` link: the region's links, one per offset.
    MultiLink(Vec<u32>),
    /// A uprobe, system call tracepoint or CUDA kernel probe perf event.
    Probe(ProbeEvent),
    /// A `PERF_COUNT_SW_BPF_OUTPUT` event (a perf buffer's ring for one CPU).
    PerfOutput(PerfOutput),
    /// A `PERF_COUNT_SW_CPU_CLOCK` event (bpftrace's `interval` and `profile` probes).
    Timer(TimerEvent),
}

/// A CPU-clock perf event that ticks rather than samples (opened for CPU 0 alone, with a
/// period: bpftrace's `interval`): the program attached to it runs in this (the loader's)
/// process, on a thread of ours, once per period, with a `bpf_perf_event_data` of zeroed
/// registers (the kernel runs it in whatever the timer interrupts on CPU 0; a loader is never
/// traced by its own programs, so nothing of its own is shown either). Events that sample
/// (see [`EventTarget::CpuClock`]) run in the traced processes.
#[derive(Clone, Debug)]
pub struct TimerEvent {
    /// Nanoseconds between runs.
    pub period_ns: u64,
    /// When it was opened, in this process's count of CPU-clock events.
    opened: u64,
    shared: Arc<TimerShared>,
}

/// CPU-clock events opened by this process so far (see [`TimerEvent::opened`]).
static CPU_CLOCKS_OPENED: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

#[derive(Debug, Default)]
struct TimerShared {
    /// The attached program's id (0: none yet).
    prog: std::sync::atomic::AtomicU32,
    enabled: std::sync::atomic::AtomicBool,
    /// Set when the event's last fd closes: the thread ends.
    stopped: std::sync::atomic::AtomicBool,
}

/// Size of `struct bpf_perf_event_data`: `pt_regs`, `sample_period`, `addr`.
const PERF_EVENT_DATA_SIZE: usize = 168 + 8 + 8;

/// How long an attach waits for each process running the agent to put the new link's probes
/// in place ([`Server::wait_in_force`]).
const ATTACH_WAIT: std::time::Duration = std::time::Duration::from_secs(3);

/// Runs `shared`'s program every `period_ns` until the event closes.
fn run_timer(region: Arc<ShmRegion>, period_ns: u64, shared: Arc<TimerShared>) {
    use std::sync::atomic::Ordering::Acquire;
    let runtime = Runtime::new(region, EngineKind::Jit);
    let period = std::time::Duration::from_nanos(period_ns.max(10_000));
    let mut ctx = [0u8; PERF_EVENT_DATA_SIZE];
    ctx[168..176].copy_from_slice(&period_ns.to_le_bytes());
    let mut next = std::time::Instant::now() + period;
    let mut reported = false;
    while !shared.stopped.load(Acquire) {
        std::thread::sleep(next.saturating_duration_since(std::time::Instant::now()));
        next += period;
        let id = shared.prog.load(Acquire);
        if id == 0 || !shared.enabled.load(Acquire) {
            continue;
        }
        let result = runtime
            .program(id)
            .map_err(|e| e.to_string())
            .and_then(|p| runtime.run(&p, bpftime_vm::exec::Context::ReadOnly(&ctx), 0, 0, false).map_err(|e| e.to_string()));
        if let Err(e) = result {
            if !reported {
                eprintln!("bpftime: timer program {id}: {e} (reported once)");
                reported = true;
            }
        }
    }
}

/// A perf buffer's event: libbpf maps it first and puts it in the PERF_EVENT_ARRAY after, so
/// its mapping is zeroes until then and the ring's pages are moved in when it is put there.
#[derive(Clone, Copy, Debug, Default)]
pub struct PerfOutput {
    /// The PERF_EVENT_ARRAY slot it was put in: (map id, index).
    pub bound: Option<(u32, u32)>,
    /// Where the consumer mapped it: (address, length).
    pub mapped: Option<(u64, u64)>,
}

impl PerfOutput {
    /// Data pages of the ring its consumer mapped (a header page and these), 16 until mapped.
    pub fn ring_pages(&self) -> usize {
        match self.mapped.map_or(0, |(_, len)| len.saturating_sub(4096) / 4096) {
            0 => 16,
            n => n as usize,
        }
    }
}

/// The server of one loader process.
pub struct Server {
    region: Arc<ShmRegion>,
    runtime: Runtime,
    pub(crate) fds: Mutex<HashMap<i32, Handle>>,
    /// `--kernel-passthrough`: what we cannot run goes to the kernel (see [`crate::kernel`]).
    pub(crate) kernel: Option<crate::kernel::Passthrough>,
    /// BTF objects this process loaded (removed when no fd of ours and no map holds them).
    loaded_btfs: Mutex<HashSet<u32>>,
    /// This process's `uprobe_multi` links by their id (their first region link's): an fd
    /// opened by that id stands for the whole link.
    multi_links: Mutex<HashMap<u32, Vec<u32>>>,
    /// Programs this process loaded (removed when nothing holds them).
    loaded: Mutex<HashSet<u32>>,
    /// Maps this process created (removed when nothing holds them, as the kernel frees a map
    /// with its last reference).
    created_maps: Mutex<HashSet<u32>>,
    /// Maps of other loaders this process opened by id or pin (it removes one that it held
    /// last, once its creator let go).
    held_maps: Mutex<HashSet<u32>>,
    /// Fds a forked child of the loader made itself (it drops what they name when it closes
    /// them or exits, while the loader's stay to the loader).
    child_fds: Mutex<HashSet<i32>>,
    /// Programs this process cannot prepare (see [`Server::compiled`]).
    not_compiled: Mutex<HashSet<u32>>,
    /// The process whose fds these are: a child forked from it has copies of them but holds
    /// nothing (its exit must not drop what the parent holds).
    pid: u32,
    /// Kprobe-type programs our verifier refused for the CPU but took as CUDA kernel probes,
    /// with the CPU's reason: attaching one to a uprobe or a system call is refused with it.
    gpu_only: Mutex<HashMap<u32, String>>,
    /// The kernel's uprobe PMU.
    uprobe: Option<pmu::Pmu>,
    /// The kprobe PMU (a stand-in where the kernel has none): CUDA kernel probes.
    kprobe: pmu::Pmu,
    /// Processes named by a probe that this loader gave the agent.
    reached: crate::reach::Reached,
    /// Processes running the agent that did not take a new link in within [`ATTACH_WAIT`]
    /// (stopped, say): not waited for again until they have caught up.
    late: Mutex<HashSet<u32>>,
    /// Programs already said to be asked for a kernel event (see `kernel_event_refused`).
    told_kernel_only: Mutex<HashSet<u32>>,
}

/// The event we run in userspace (a system call's, `syscalls/sys_enter_openat`, or a process
/// event, `sched/sched_process_exit`, `signal/signal_generate`) whose tracefs id is `id`, if it
/// is one.
fn syscall_event_of_id(id: u64) -> Option<String> {
    const ROOTS: [&str; 2] = ["/sys/kernel/tracing/events", "/sys/kernel/debug/tracing/events"];
    let found = ROOTS.into_iter().flat_map(|r| ["syscalls", "raw_syscalls", "sched", "signal"].map(|c| (r, c))).find_map(|(root, category)| {
        std::fs::read_dir(format!("{root}/{category}")).ok()?.filter_map(|e| e.ok()).find_map(|e| {
            let name = e.file_name().to_string_lossy().into_owned();
            let this: u64 = std::fs::read_to_string(e.path().join("id")).ok()?.trim().parse().ok()?;
            (this == id).then(|| format!("{category}/{name}"))
        })
    });
    found.filter(|event| bpftime_runtime::syscall_events::SyscallEvent::parse(event).is_ok())
}

/// The process thread `tid` belongs to (its `Tgid` in /proc/TID/status, proc(5)); `tid`
/// itself where that cannot be read.
fn process_of_thread(tid: u32) -> u32 {
    let status = std::fs::read_to_string(format!("/proc/{tid}/status")).unwrap_or_default();
    status.lines().find_map(|l| l.strip_prefix("Tgid:")?.trim().parse().ok()).unwrap_or(tid)
}

/// Whether `fd` is open in this process.
fn fd_is_open(fd: i32) -> bool {
    crate::raw::result(crate::raw::syscall6(libc::SYS_fcntl, [fd as libc::c_long, libc::F_GETFD as libc::c_long, 0, 0, 0, 0])).is_ok()
}

/// Writes `name` NUL-terminated into the caller's buffer at `buf` of `buf_len` (non-zero)
/// bytes, cut to fit as the kernel cuts names it hands out (`bpf_copy_to_user`); whether it
/// was cut.
fn copy_name(buf: u64, buf_len: usize, name: &str) -> Result<bool, Errno> {
    let bytes = name.as_bytes();
    let kept = bytes.len().min(buf_len - 1);
    user::write(buf, &[&bytes[..kept], &[0]].concat())?;
    Ok(kept < bytes.len())
}

/// What a link probes, as `BPF_TASK_FD_QUERY` and link info describe it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum ProbeKind {
    Uprobe {
        ret: bool,
    },
    Kprobe {
        ret: bool,
    },
    Tracepoint,
    RawTracepoint,
    /// A software perf event (CPU-time sampling).
    Software,
}

/// A link's probe: its kind, the name the kernel gives it (the file, the function, the
/// tracepoint) and its offset in the file.
struct Probed {
    kind: ProbeKind,
    name: String,
    offset: u64,
}

impl Probed {
    fn of(link: &links::UprobeLink) -> Probed {
        let t = &link.target;
        let (kind, name, offset) = match link.kind {
            links::LinkKind::Uprobe => {
                let (path, off) = t.rsplit_once(':').unwrap_or((t.as_str(), "0"));
                (ProbeKind::Uprobe { ret: link.retprobe }, path.to_string(), u64::from_str_radix(off.trim_start_matches("0x"), 16).unwrap_or(0))
            }
            links::LinkKind::CudaKernel => (ProbeKind::Kprobe { ret: link.retprobe }, t.clone(), 0),
            links::LinkKind::Syscall => match t.strip_prefix("raw/") {
                Some(raw) => (ProbeKind::RawTracepoint, raw.to_string(), 0),
                None => (ProbeKind::Tracepoint, t.rsplit('/').next().unwrap_or_default().to_string(), 0),
            },
            links::LinkKind::Profile => (ProbeKind::Software, String::new(), 0),
        };
        Probed { kind, name, offset }
    }

    /// `BPF_FD_TYPE_*`.
    fn fd_type(&self) -> u32 {
        match self.kind {
            ProbeKind::RawTracepoint => 0,
            ProbeKind::Tracepoint => 1,
            ProbeKind::Kprobe { ret } => 2 + ret as u32,
            ProbeKind::Uprobe { ret } => 4 + ret as u32,
            // (Not asked: the kernel describes no software event, see `task_fd_query`.)
            ProbeKind::Software => 0,
        }
    }

    /// `BPF_PERF_EVENT_*` (a raw tracepoint is no perf event: 0).
    fn perf_event_type(&self) -> u32 {
        match self.kind {
            ProbeKind::Uprobe { ret } => 1 + ret as u32,
            ProbeKind::Kprobe { ret } => 3 + ret as u32,
            ProbeKind::Tracepoint => 5,
            ProbeKind::RawTracepoint => 0,
            ProbeKind::Software => 6,
        }
    }
}

/// The absolute path a pin command names (`attr`: pathname 0, bpf_fd 8, file_flags 12,
/// path_fd 16): relative to `path_fd` with `BPF_F_PATH_FD`, else to the working directory.
fn pin_path(a: &Attr) -> Result<String, Errno> {
    let raw = user::read_cstr(a.u64(0), 4096)?;
    if raw.is_empty() {
        return Err(libc::ENOENT);
    }
    let dirfd = if a.u32(12) & attr::BPF_F_PATH_FD != 0 { a.u32(16) as i32 } else { libc::AT_FDCWD };
    path_at(dirfd, &raw)
}

/// The absolute form of `path` (see [`absolute`]), relative to directory fd `dirfd` when it is
/// relative (`AT_FDCWD`: the working directory), as the `*at` calls read it.
fn path_at(dirfd: i32, path: &str) -> Result<String, Errno> {
    let path = std::path::Path::new(path);
    if path.is_relative() && dirfd != libc::AT_FDCWD {
        let dir = std::fs::read_link(format!("/proc/self/fd/{dirfd}")).map_err(|_| libc::EBADF)?;
        return absolute(&dir.join(path));
    }
    absolute(path)
}

/// `path` made absolute with its directory resolved (symbolic links, `.` and `..`), so that
/// every spelling of one place names one pin.
fn absolute(path: &std::path::Path) -> Result<String, Errno> {
    let name = path.file_name().ok_or(libc::ENOENT)?;
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => std::path::PathBuf::from("."),
    };
    let dir = std::fs::canonicalize(dir).map_err(|e| e.raw_os_error().unwrap_or(libc::ENOENT))?;
    Ok(dir.join(name).to_string_lossy().into_owned())
}

/// Whether `dir` is on a bpffs (`statfs` type `BPF_FS_MAGIC`), where the kernel allows pins.
fn on_bpffs(dir: &std::path::Path) -> bool {
    const BPF_FS_MAGIC: i64 = 0xcafe_4a11;
    let Ok(c) = std::ffi::CString::new(dir.as_os_str().as_encoded_bytes()) else { return false };
    let mut st = std::mem::MaybeUninit::<libc::statfs>::zeroed();
    // SAFETY: statfs(2) with a NUL-terminated path and a buffer of the right type.
    let r = unsafe { libc::statfs(c.as_ptr(), st.as_mut_ptr()) };
    // SAFETY: on success the kernel filled the struct (and it started zeroed).
    r == 0 && unsafe { st.assume_init() }.f_type == BPF_FS_MAGIC
}

/// A `PROG_LOAD`'s instructions (`attr`: insn_cnt 4, insns 8, fd_array 120) with each map an
/// `lddw` names (by fd, or by fd_array index) replaced by what `resolve` makes of its fd, as a
/// plain map reference (`src` 1 for the map, 2 for its value).
pub(crate) fn program_with_maps(a: &Attr, mut resolve: impl FnMut(u32) -> Result<u32, Errno>) -> Result<Vec<bpftime_vm::insn::RawInsn>, Errno> {
    let code = user::read(a.u64(8), a.u32(4) as usize * 8)?;
    let mut insns = bpftime_vm::insn::parse_bytecode(&code).map_err(|_| libc::EINVAL)?;
    let fd_array = a.u64(120);
    rewrite_map_refs(&mut insns, |insn| {
        let fd = match insn.src {
            1 | 2 => insn.imm as u32,
            5 | 6 => {
                let at = fd_array.checked_add(insn.imm as u32 as u64 * 4).ok_or(libc::EFAULT)?;
                u32::from_le_bytes(user::read(at, 4)?.try_into().map_err(|_| libc::EFAULT)?)
            }
            _ => return Ok(None),
        };
        resolve(fd).map(Some)
    })?;
    Ok(insns)
}

/// Rewrites every map reference of an `lddw` to `to(insn)` (None: not a map reference), as
/// `src` 1 (the map) or 2 (its value).
pub(crate) fn rewrite_map_refs(
    insns: &mut [bpftime_vm::insn::RawInsn],
    mut to: impl FnMut(&bpftime_vm::insn::RawInsn) -> Result<Option<u32>, Errno>,
) -> Result<(), Errno> {
    let mut pc = 0;
    while pc < insns.len() {
        if insns[pc].opc == 0x18 {
            if let Some(v) = to(&insns[pc])? {
                insns[pc].imm = v as i32;
                insns[pc].src = if matches!(insns[pc].src, 1 | 5) { 1 } else { 2 };
            }
            pc += 1;
        }
        pc += 1;
    }
    Ok(())
}

/// A new fd of ours: an eventfd.
fn new_fd() -> Result<i32, Errno> {
    // SAFETY: eventfd(2) with valid flags; no pointers.
    let fd = unsafe { libc::eventfd(0, libc::EFD_CLOEXEC | libc::EFD_NONBLOCK) };
    if fd < 0 {
        Err(std::io::Error::last_os_error().raw_os_error().unwrap_or(libc::EMFILE))
    } else {
        Ok(fd)
    }
}

impl Server {
    /// A server keeping its objects in `region`.
    pub fn new(region: Arc<ShmRegion>) -> Server {
        // What loaders killed before they could let go left behind.
        bpftime_runtime::orphans::remove(&region);
        // Programs are verified when loaded; with a code cache they are also compiled then,
        // once, for every process that attaches them (else only verified: no one runs them here).
        let mut runtime = Runtime::new(region.clone(), EngineKind::Jit);
        match runtime.use_code_cache_from_env() {
            Ok(Some(_)) => {}
            Ok(None) => runtime = Runtime::new(region.clone(), EngineKind::Interp),
            Err(e) => {
                eprintln!("bpftime: {e}");
                runtime = Runtime::new(region.clone(), EngineKind::Interp);
            }
        }
        Server {
            region,
            runtime,
            fds: Mutex::default(),
            kernel: std::env::var_os("BPFTIME_KERNEL_PASSTHROUGH").filter(|v| v != "0").map(|_| Default::default()),
            loaded_btfs: Mutex::default(),
            multi_links: Mutex::default(),
            loaded: Mutex::default(),
            created_maps: Mutex::default(),
            held_maps: Mutex::default(),
            child_fds: Mutex::default(),
            not_compiled: Mutex::default(),
            // SAFETY: getpid(2) cannot fail.
            pid: unsafe { libc::getpid() } as u32,
            gpu_only: Mutex::default(),
            uprobe: pmu::uprobe(),
            kprobe: pmu::kprobe(),
            reached: Default::default(),
            late: Default::default(),
            told_kernel_only: Mutex::default(),
        }
    }

    /// The region.
    pub fn region(&self) -> &Arc<ShmRegion> {
        &self.region
    }

    pub(crate) fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
        m.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// What fd `fd` is, if it is ours.
    pub fn handle(&self, fd: i32) -> Option<Handle> {
        Self::lock(&self.fds).get(&fd).cloned()
    }

    fn install(&self, h: Handle) -> Result<i64, Errno> {
        let fd = new_fd()?;
        Self::lock(&self.fds).insert(fd, h);
        // SAFETY: getpid(2) cannot fail.
        if unsafe { libc::getpid() } as u32 != self.pid {
            Self::lock(&self.child_fds).insert(fd);
        }
        Ok(fd as i64)
    }

    /// What `readlink("/proc/self/fd/FD")` shows for fd `fd` of ours, as the kernel names its
    /// objects' files (tools tell maps from programs by it).
    pub fn fd_link_text(&self, fd: i32) -> Option<&'static str> {
        Some(match self.handle(fd)? {
            Handle::Map(_) => "anon_inode:bpf-map",
            Handle::Prog(_) => "anon_inode:bpf-prog",
            Handle::Link(_) | Handle::MultiLink(_) => "anon_inode:bpf_link",
            Handle::Btf(_) | Handle::KernelBtf => "anon_inode:btf",
            Handle::Probe(_) | Handle::PerfOutput(_) | Handle::Timer(_) => "anon_inode:[perf_event]",
        })
    }

    /// What `/proc/self/fdinfo/FD` shows of an fd of ours, in the kernel's format: the lines
    /// every open file has (`pos`, `flags`, `mnt_id`, `ino`, read from the real file), then the
    /// object's (the kernel's `bpf_map_show_fdinfo`, `bpf_prog_show_fdinfo`,
    /// `bpf_link_show_fdinfo` and its perf and raw tracepoint links', `bpf_btf_show_fdinfo`).
    /// bpftool prints a map's and a program's `memlock` and a map's `frozen` from it; libbpf
    /// reads it where object info is missing. A map's `memlock` is the bytes the region holds
    /// for it, a program's the pages its instructions take. No `verified_insns`: our verifier
    /// does not count as the kernel's does.
    pub fn fdinfo_text(&self, fd: i32) -> Option<String> {
        let handle = self.handle(fd)?;
        let real = std::fs::read_to_string(format!("/proc/self/fdinfo/{fd}")).ok()?;
        // The kernel's file flags for the object's kind (links and BTF objects read-only, the
        // rest read-write), close-on-exec as the fd is; not our eventfd's own (O_NONBLOCK).
        let cloexec =
            real.lines().find_map(|l| l.strip_prefix("flags:")).and_then(|f| u32::from_str_radix(f.trim(), 8).ok()).unwrap_or(0) & libc::O_CLOEXEC as u32;
        let access = match handle {
            Handle::Link(_) | Handle::MultiLink(_) | Handle::Btf(_) | Handle::KernelBtf => libc::O_RDONLY,
            _ => libc::O_RDWR,
        } as u32;
        let mut text: String = real
            .lines()
            .filter(|l| ["pos:", "flags:", "mnt_id:", "ino:"].iter().any(|k| l.starts_with(k)))
            .map(|l| if l.starts_with("flags:") { format!("flags:\t{:08o}\n", cloexec | access) } else { format!("{l}\n") })
            .collect();
        let tag_of = |insns: &[bpftime_vm::RawInsn]| crate::tag::prog_tag(insns).iter().map(|b| format!("{b:02x}")).collect::<String>();
        match handle {
            Handle::Map(id) => {
                let map = Map::open(&self.region, id).ok()?;
                let s = map.spec();
                text += &format!(
                    "map_type:\t{}\nkey_size:\t{}\nvalue_size:\t{}\nmax_entries:\t{}\nmap_flags:\t{:#x}\nmap_extra:\t{:#x}\nmemlock:\t{}\nmap_id:\t{id}\nfrozen:\t{}\n",
                    s.map_type as u32,
                    s.key_size,
                    s.value_size,
                    s.max_entries,
                    s.flags,
                    s.map_extra,
                    map.memory_usage(),
                    map.is_frozen() as u32
                );
            }
            Handle::Prog(id) => {
                let p = progs::load(&self.region, id)?;
                let jited = self.compiled(id).is_some_and(|l| !l.engine().machine_code().is_empty());
                let memlock = (p.insns.len() as u64 * 8).div_ceil(4096).max(1) * 4096;
                text += &format!(
                    "prog_type:\t{}\nprog_jited:\t{}\nprog_tag:\t{}\nmemlock:\t{memlock}\nprog_id:\t{id}\nrun_time_ns:\t0\nrun_cnt:\t0\nrecursion_misses:\t{}\n",
                    attr::prog_type_of(&p.section),
                    jited as u32,
                    tag_of(&p.insns),
                    p.recursion_misses
                );
            }
            Handle::Link(id) => {
                let link = links::list(&self.region).into_iter().find(|l| l.id == id);
                let probed = link.as_ref().map(Probed::of);
                let kind = match &probed {
                    Some(p) if p.kind == ProbeKind::RawTracepoint => "raw_tracepoint",
                    _ => "perf",
                };
                text += &format!("link_type:\t{kind}\nlink_id:\t{id}\n");
                if let Some(p) = link.as_ref().and_then(|l| progs::load(&self.region, l.prog)) {
                    text += &format!("prog_tag:\t{}\nprog_id:\t{}\n", tag_of(&p.insns), p.id);
                }
                if let (Some(link), Some(p)) = (&link, &probed) {
                    text += &match p.kind {
                        ProbeKind::Uprobe { ret } => format!(
                            "name:\t{}\noffset:\t{:#x}\nref_ctr_offset:\t{:#x}\nevent_type:\t{}\ncookie:\t{}\n",
                            p.name,
                            p.offset,
                            link.ref_ctr,
                            if ret { "uretprobe" } else { "uprobe" },
                            link.cookie
                        ),
                        ProbeKind::Kprobe { ret } => format!(
                            "name:\t{}\noffset:\t{:#x}\nmissed:\t0\naddr:\t0x0\nevent_type:\t{}\ncookie:\t{}\n",
                            p.name,
                            p.offset,
                            if ret { "kretprobe" } else { "kprobe" },
                            link.cookie
                        ),
                        ProbeKind::Tracepoint => format!("tp_name:\t{}\nevent_type:\ttracepoint\ncookie:\t{}\n", p.name, link.cookie),
                        ProbeKind::RawTracepoint => format!("tp_name:\t{}\ncookie:\t{}\n", p.name, link.cookie),
                        ProbeKind::Software => format!("event_type:\tevent\nconfig:\t0\ntype:\t1\ncookie:\t{}\n", link.cookie),
                    };
                }
            }
            Handle::MultiLink(ids) => {
                let first = links::list(&self.region).into_iter().find(|l| ids.first() == Some(&l.id));
                text += &format!("link_type:\tuprobe_multi\nlink_id:\t{}\n", ids.first().copied().unwrap_or(0));
                if let Some(p) = first.and_then(|l| progs::load(&self.region, l.prog)) {
                    text += &format!("prog_tag:\t{}\nprog_id:\t{}\n", tag_of(&p.insns), p.id);
                }
            }
            Handle::Btf(id) => text += &format!("btf_id:\t{}\n", btf_id_of(id)),
            Handle::KernelBtf => text += "btf_id:\t1\n",
            Handle::Probe(_) | Handle::PerfOutput(_) | Handle::Timer(_) => {}
        }
        Some(text)
    }

    /// `dup`: `new` stands for what `old` does.
    pub fn duplicated(&self, old: i32, new: i32) {
        let mut fds = Self::lock(&self.fds);
        if let Some(h) = fds.get(&old).cloned() {
            fds.insert(new, h);
        }
    }

    /// `close(fd)`: a link whose last fd closes is detached, as in the kernel. Whether a link
    /// that runs in this process went.
    pub fn closed(&self, fd: i32) -> bool {
        let h = Self::lock(&self.fds).remove(&fd);
        if h.is_none() {
            return false;
        }
        // A forked child drops only what it made itself while its loader lives.
        if !self.owns_objects() && !Self::lock(&self.child_fds).remove(&fd) {
            return false;
        }
        let mut detached = false;
        if let Some(Handle::PerfOutput(PerfOutput { bound: Some((map, slot)), .. })) = &h {
            let still_open = Self::lock(&self.fds).values().any(|o| matches!(o, Handle::PerfOutput(PerfOutput { bound: Some(b), .. }) if *b == (*map, *slot)));
            if !still_open {
                crate::relay::forget(*map, *slot);
            }
        }
        if let Some(Handle::Timer(t)) = &h {
            let still_open = Self::lock(&self.fds).values().any(|o| matches!(o, Handle::Timer(u) if Arc::ptr_eq(&u.shared, &t.shared)));
            if !still_open {
                t.shared.stopped.store(true, std::sync::atomic::Ordering::Release);
            }
        }
        let link = match h {
            Some(Handle::Link(id)) => Some(id),
            Some(Handle::Probe(ProbeEvent { link: Some(id), .. })) => Some(id),
            _ => None,
        };
        // A uprobe_multi link whose last fd closed: every one of its links goes.
        let mut link_prog = None;
        if let Some(Handle::MultiLink(ids)) = &h {
            let still_open = Self::lock(&self.fds).values().any(|o| matches!(o, Handle::MultiLink(other) if other == ids));
            if !still_open {
                link_prog = ids.first().and_then(|&id| links::program_of(&self.region, id));
                for &id in ids {
                    detached |= self.runs_here(id);
                    links::remove(&self.region, id);
                }
                Self::lock(&self.multi_links).remove(&ids[0]);
            }
        }
        // The program a closed link ran: with its link gone, it may be held by nothing.
        let link_prog = link.and_then(|id| links::program_of(&self.region, id)).or(link_prog);
        if let Some(id) = link {
            let still_open = Self::lock(&self.fds)
                .values()
                .any(|h| matches!(h, Handle::Link(l) if *l == id) || matches!(h, Handle::Probe(ProbeEvent { link: Some(l), .. }) if *l == id));
            // Only the holder's last fd detaches it: another process's fd (`bpftool link
            // show` opens every link by id) is one more reference, as in the kernel.
            let owner = links::owner_of(&self.region, id);
            let holder = owner == Some(std::process::id()) || (owner == Some(self.pid) && self.owns_objects());
            if !still_open && holder && !pins::is_pinned(&self.region, id) {
                detached |= self.runs_here(id);
                links::remove(&self.region, id);
            } else if matches!(h, Some(Handle::Probe(_))) && holder {
                // Its perf event closed, the link held by its own fd: the number says nothing now.
                links::set_fd(&self.region, id, None);
            }
        }
        // A program of ours that no fd and no link holds is gone, as in the kernel (libbpf's
        // feature probes load many). Only the program this close let go of can have become so.
        let affected = match h {
            Some(Handle::Prog(p)) => Some(p),
            _ => link_prog,
        };
        if let Some(p) = affected {
            self.forget_if_unused(p);
        }
        if let Some(Handle::Btf(b)) = h {
            self.forget_btf_if_unused(b);
        }
        if let Some(Handle::Map(m)) = h {
            self.forget_map_if_unused(m);
        }
        detached
    }

    /// Whether link `id` runs in this process, where an agent beside the server takes it (see
    /// `UprobeLink::runs_in_loader`: not the uprobes on shared libraries, most of a wildcard's).
    fn runs_here(&self, id: u32) -> bool {
        static EXE: std::sync::OnceLock<Option<std::path::PathBuf>> = std::sync::OnceLock::new();
        let exe = EXE.get_or_init(|| std::fs::read_link("/proc/self/exe").ok());
        links::get(&self.region, id).is_some_and(|l| l.runs_in_loader(std::process::id(), exe.as_deref()))
    }

    /// Waits (up to [`ATTACH_WAIT`]) until an agent beside the server in this process has
    /// taken in the links removed so far, as a kernel detach is in force when `close` returns:
    /// the loader's own calls right after it are not traced by what it detached (bpftrace opens
    /// `/dev/null` as it exits, which its `sys_enter_openat` probe must not see). Other
    /// processes take removals in as their link followers wake.
    pub fn wait_detached_here(&self) {
        let me = std::process::id();
        let _ = self.region.wait_for_runners(self.region.table_changes(), ATTACH_WAIT, |pid| pid != me);
    }

    /// Removes program `p` of ours from the region if no fd, no link and no pin holds it.
    fn forget_if_unused(&self, p: u32) {
        if !Self::lock(&self.loaded).contains(&p) {
            return;
        }
        let held = Self::lock(&self.fds).values().any(|h| matches!(h, Handle::Prog(q) if *q == p));
        if held || pins::is_pinned(&self.region, p) || links::uses_program(&self.region, p) || self.held_prog_arrays_hold(p) {
            return;
        }
        let btf = progs::btf_of(&self.region, p);
        let maps = progs::load(&self.region, p).map(|s| s.map_refs()).unwrap_or_default();
        progs::remove(&self.region, p);
        Self::lock(&self.loaded).remove(&p);
        if btf != 0 {
            self.forget_btf_if_unused(btf);
        }
        for (_, m) in maps {
            self.forget_map_if_unused(m);
        }
    }

    /// Removes map `m` of ours from the region if no fd of ours, no program in the region, no
    /// map of maps and no pin holds it, as the kernel frees a map with its last reference (a
    /// loader run again and again must not fill the region). Its storage is freed after the
    /// region's grace period: an agent may be finishing a run of a program that used it.
    /// Maps of a loader whose maps may have moved to the kernel stay.
    fn forget_map_if_unused(&self, m: u32) {
        let created = Self::lock(&self.created_maps).contains(&m);
        let holding = Self::lock(&self.held_maps).contains(&m);
        if !(created || holding) || Self::lock(&self.fds).values().any(|h| matches!(h, Handle::Map(n) if *n == m)) {
            return;
        }
        let Ok(map) = Map::open(&self.region, m) else { return };
        if self.kernel.is_some() {
            // Maps of a loader whose maps may have moved to the kernel stay; its holds end.
            if holding {
                let _ = map.holder_lets_go_unless(true);
                Self::lock(&self.held_maps).remove(&m);
            }
            return;
        }
        // Still ours while a program of ours uses it (or, for its loader, any program).
        let loaded: Vec<u32> = Self::lock(&self.loaded).iter().copied().collect();
        let used_by_us = loaded.iter().any(|&p| progs::load(&self.region, p).is_some_and(|s| s.map_refs().iter().any(|&(_, id)| id == m)));
        if used_by_us || pins::is_pinned(&self.region, m) || (created && self.map_is_used(m)) {
            return;
        }
        let remove = if created {
            Self::lock(&self.created_maps).remove(&m);
            map.creator_lets_go()
        } else {
            Self::lock(&self.held_maps).remove(&m);
            // (Used by another loader's program: that loader's holds decide.)
            let used = self.map_is_used(m);
            map.holder_lets_go_unless(used)
        };
        if !remove {
            return;
        }
        let btf = map.btf().object;
        // The maps a map of maps held, the programs a prog array held, may be held by nothing
        // else now.
        let kind = map.map_type();
        let held = if matches!(kind, MapType::ArrayOfMaps | MapType::HashOfMaps | MapType::ProgArray) { ids_held(&map) } else { vec![] };
        map.retire();
        if btf != 0 {
            self.forget_btf_if_unused(btf);
        }
        for i in held {
            if kind == MapType::ProgArray {
                self.forget_if_unused(i);
            } else {
                self.forget_map_if_unused(i);
            }
        }
    }

    /// Whether a prog array that something other than programs holds (an fd of ours, a pin,
    /// another process) has program `p` in it: as in the kernel, a prog array's entries go when
    /// its last such reference does (a program that tail-calls through it does not keep them;
    /// else a program in its own table would keep both for ever).
    fn held_prog_arrays_hold(&self, p: u32) -> bool {
        let fds = Self::lock(&self.fds);
        Map::list(&self.region)
            .iter()
            .filter(|m| m.map_type() == MapType::ProgArray)
            .filter(|m| ids_held(m).contains(&p))
            .any(|m| fds.values().any(|h| matches!(h, Handle::Map(n) if *n == m.id())) || pins::is_pinned(&self.region, m.id()) || m.kept_elsewhere())
    }

    /// The object ids the values of every map of type `t` in the region hold (maps of maps:
    /// maps; prog arrays: programs).
    fn ids_in_maps_of(&self, t: MapType) -> Vec<u32> {
        Map::list(&self.region).iter().filter(|m| m.map_type() == t).flat_map(ids_held).collect()
    }

    /// Whether a program in the region uses map `m`, or a map of maps holds it.
    fn map_is_used(&self, m: u32) -> bool {
        progs::list(&self.region).iter().any(|p| p.map_refs().iter().any(|&(_, id)| id == m))
            || [MapType::ArrayOfMaps, MapType::HashOfMaps].into_iter().any(|t| self.ids_in_maps_of(t).contains(&m))
    }

    /// Whether this process may drop the region objects its fds name: the loader itself, or a
    /// child forked from it once the loader is gone (a daemon's); a child while its parent
    /// lives holds copies of the parent's fds, and its closes and exit drop nothing.
    fn owns_objects(&self) -> bool {
        // SAFETY: getpid(2) cannot fail.
        (unsafe { libc::getpid() }) as u32 == self.pid || !bpftime_shm::process_alive(self.pid)
    }

    /// At exit: every link this process still holds is detached (the kernel does this when the
    /// process's fds close).
    pub fn exiting(&self) {
        if !self.owns_objects() {
            // A forked child: what it made itself goes.
            let own: Vec<i32> = Self::lock(&self.child_fds).iter().copied().collect();
            for fd in own {
                self.closed(fd);
            }
            return;
        }
        // Links first, so that the programs they held can go too.
        let mut fds: Vec<(bool, i32)> =
            Self::lock(&self.fds).iter().map(|(fd, h)| (!matches!(h, Handle::Link(_) | Handle::MultiLink(_) | Handle::Probe(_)), *fd)).collect();
        fds.sort();
        for (_, fd) in fds {
            self.closed(fd);
        }
        // Programs whose last holder went while another process held them (a pinned link
        // since removed there) go too.
        // Then maps and programs that held each other (prog arrays, maps of maps), until no more
        // go.
        loop {
            let before = (Self::lock(&self.loaded).len(), Self::lock(&self.created_maps).len(), Self::lock(&self.held_maps).len());
            let loaded: Vec<u32> = Self::lock(&self.loaded).iter().copied().collect();
            for p in loaded {
                self.forget_if_unused(p);
            }
            let maps: Vec<u32> = Self::lock(&self.created_maps).iter().chain(Self::lock(&self.held_maps).iter()).copied().collect();
            for m in maps {
                self.forget_map_if_unused(m);
            }
            if (Self::lock(&self.loaded).len(), Self::lock(&self.created_maps).len(), Self::lock(&self.held_maps).len()) == before {
                break;
            }
        }
    }

    pub(crate) fn map(&self, fd: u32) -> Result<Map, Errno> {
        match self.handle(fd as i32) {
            Some(Handle::Map(id)) => Map::open(&self.region, id).map_err(|_| libc::EBADF),
            _ => Err(libc::EBADF),
        }
    }

    /// The program of fd `fd`, as the kernel's `bpf_prog_get`: `EINVAL` for an open fd that is
    /// not a program, `EBADF` for one that is not open.
    pub(crate) fn prog_id(&self, fd: u32) -> Result<u32, Errno> {
        match self.handle(fd as i32) {
            Some(Handle::Prog(id)) => Ok(id),
            Some(_) => Err(libc::EINVAL),
            None if fd_is_open(fd as i32) => Err(libc::EINVAL),
            None => Err(libc::EBADF),
        }
    }

    /// `bpf(cmd, attr, size)`: the result, or an errno. `attr` holds the caller's bytes
    /// (zero-padded); fields the kernel writes back are written into it.
    pub fn bpf(&self, cmd: u32, a: &mut Attr) -> Result<i64, Errno> {
        if self.for_kernel(cmd, a) {
            if cmd == attr::MAP_UPDATE_ELEM {
                if let Some(r) = self.kernel_perf_update(a) {
                    return r;
                }
            }
            return crate::kernel::bpf(cmd, &mut a.0);
        }
        match cmd {
            attr::MAP_CREATE => self.map_create(a),
            attr::MAP_LOOKUP_ELEM => self.map_lookup(a, false),
            attr::MAP_UPDATE_ELEM => self.map_update(a),
            attr::MAP_DELETE_ELEM => {
                let map = self.map(a.u32(0))?;
                if map.is_frozen() {
                    return Err(libc::EPERM);
                }
                let key = user::read(a.u64(8), map.spec().key_size as usize)?;
                map.delete(&key).map(|()| 0).map_err(|e| e.0)
            }
            attr::MAP_GET_NEXT_KEY => {
                let map = self.map(a.u32(0))?;
                let ks = map.spec().key_size as usize;
                let key = if a.u64(8) == 0 { None } else { Some(user::read(a.u64(8), ks)?) };
                let mut next = vec![0u8; ks];
                map.next_key(key.as_deref(), &mut next).map_err(|e| e.0)?;
                user::write(a.u64(16), &next)?;
                Ok(0)
            }
            attr::MAP_LOOKUP_AND_DELETE_ELEM => self.map_lookup(a, true),
            attr::MAP_LOOKUP_BATCH => self.map_lookup_batch(a, false),
            attr::MAP_LOOKUP_AND_DELETE_BATCH => self.map_lookup_batch(a, true),
            attr::MAP_UPDATE_BATCH | attr::MAP_DELETE_BATCH => self.map_change_batch(cmd, a),
            // As the kernel's `map_freeze`: a frozen map is no longer writable, so freezing it
            // again is `EPERM`; the mark is the map's, in the region, for every process.
            attr::MAP_FREEZE => {
                let map = self.map(a.u32(0))?;
                if map.freeze() {
                    Ok(0)
                } else {
                    Err(libc::EPERM)
                }
            }
            attr::OBJ_PIN => self.obj_pin(a),
            attr::OBJ_GET => {
                let path = pin_path(a)?;
                let Some(id) = pins::get(&self.region, &path) else {
                    // A kernel object's pin (passthrough), or nothing.
                    return match &self.kernel {
                        Some(_) => crate::kernel::bpf(attr::OBJ_GET, &mut a.0),
                        None => Err(libc::ENOENT),
                    };
                };
                let kind = self.region.object(id).ok_or(libc::ENOENT)?.kind;
                self.fd_by_id(id, kind)
            }
            attr::PROG_LOAD => self.prog_load(a),
            attr::PROG_TEST_RUN => self.test_run(a),
            attr::BTF_LOAD => self.btf_load(a),
            attr::OBJ_GET_INFO_BY_FD => self.info(a),
            attr::LINK_CREATE => self.link_create(a),
            attr::RAW_TRACEPOINT_OPEN => {
                // sys_enter / sys_exit run in userspace; other raw tracepoints are the kernel's,
                // and so are programs that name their target by BTF id (no name: `tp_btf`,
                // `fentry`, which libbpf attaches this way where `LINK_CREATE` refuses them).
                let event = match a.u64(0) {
                    0 => String::new(),
                    name => format!("raw/{}", user::read_cstr(name, 64)?),
                };
                let prog = self.prog_id(a.u32(8))?;
                if bpftime_runtime::syscall_events::SyscallEvent::parse(&event).is_err() {
                    return match &self.kernel {
                        Some(_) => self.kernel_attach(attr::RAW_TRACEPOINT_OPEN, a, prog, 8),
                        None => {
                            let what = event.strip_prefix("raw/").map_or("a kernel function".to_string(), |n| format!("`{n}`"));
                            eprintln!("bpftime: raw tracepoint {what} is a kernel event: `bpftime load --kernel-passthrough` attaches it in the kernel");
                            Err(libc::ENOENT)
                        }
                    };
                }
                let pname = progs::load(&self.region, prog).map(|p| p.name).unwrap_or_default();
                let scope = links::LinkScope { owner: std::process::id(), ..Default::default() };
                let id = links::store_syscall(&self.region, &pname, prog, &event, scope).map_err(|_| libc::ENOMEM)?;
                self.wait_in_force(&[id]);
                let fd = self.install(Handle::Link(id))?;
                links::set_fd(&self.region, id, Some(fd as i32));
                Ok(fd)
            }
            attr::TASK_FD_QUERY => self.task_fd_query(a),
            // As the kernel: perf event, raw tracepoint and uprobe_multi links (every link
            // here) have no detach; an fd that is not a link is EINVAL.
            attr::LINK_DETACH => match self.handle(a.u32(0) as i32) {
                Some(Handle::Link(_) | Handle::MultiLink(_)) => Err(libc::EOPNOTSUPP),
                _ if fd_is_open(a.u32(0) as i32) => Err(libc::EINVAL),
                _ => Err(libc::EBADF),
            },
            // As the kernel: a map's open flags are `BPF_F_RDONLY` or `BPF_F_WRONLY` (not both);
            // programs take none, and links nothing past their id.
            attr::MAP_GET_FD_BY_ID if a.u32(8) & !0x18 != 0 || a.u32(8) == 0x18 => Err(libc::EINVAL),
            attr::PROG_GET_FD_BY_ID if a.u32(8) != 0 => Err(libc::EINVAL),
            attr::LINK_GET_FD_BY_ID if a.u32(4) != 0 || a.u32(8) != 0 => Err(libc::EINVAL),
            attr::MAP_GET_FD_BY_ID => self.fd_by_id(a.u32(0), ObjectKind::Map),
            attr::PROG_GET_FD_BY_ID => self.fd_by_id(a.u32(0), ObjectKind::Program),
            attr::LINK_GET_FD_BY_ID => self.fd_by_id(a.u32(0), ObjectKind::Link),
            attr::MAP_GET_NEXT_ID => self.next_id(a, ObjectKind::Map),
            attr::PROG_GET_NEXT_ID => self.next_id(a, ObjectKind::Program),
            attr::LINK_GET_NEXT_ID => self.next_id(a, ObjectKind::Link),
            // BTF objects: the kernel's, vmlinux's alone (bpftrace reads its types this way;
            // libbpf looks for CO-RE candidates vmlinux lacks in the other kernel ones, and
            // finds none here, as `bpftime run` relocates against vmlinux alone), then the
            // region's (bpftool reads a map's key and value types from them).
            attr::BTF_GET_NEXT_ID => {
                let start = a.u32(0);
                let kernel = (start < KERNEL_BTF_ID && kernel_btf().is_some()).then_some(KERNEL_BTF_ID);
                let next = kernel.or_else(|| btfs::list(&self.region).into_iter().map(btf_id_of).find(|&id| id > start)).ok_or(libc::ENOENT)?;
                a.set_u32(4, next);
                Ok(0)
            }
            attr::BTF_GET_FD_BY_ID => match a.u32(0) {
                KERNEL_BTF_ID if kernel_btf().is_some() => self.install(Handle::KernelBtf),
                id => match btf_object_of(id).filter(|&b| btfs::load(&self.region, b).is_some()) {
                    Some(b) => self.install(Handle::Btf(b)),
                    None => Err(libc::ENOENT),
                },
            },
            // What a kernel without the feature answers, so loaders take their fallbacks.
            _ => Err(libc::EINVAL),
        }
    }

    /// `BPF_TASK_FD_QUERY`: what fd `fd` of process `pid` attaches, as the kernel's
    /// `bpf_task_fd_query` says it (`bpftool perf` walks every process's fds with it): a
    /// uprobe's or tracepoint's perf event with its program, a raw tracepoint's link; `ENOTSUPP`
    /// for any other fd. Another process's fds are known by the links it holds.
    fn task_fd_query(&self, a: &mut Attr) -> Result<i64, Errno> {
        const ENOTSUPP: Errno = 524;
        let (pid, fd, buf_len, buf) = (a.u32(0), a.u32(4) as i32, a.u32(12) as usize, a.u64(16));
        if a.u32(8) != 0 {
            return Err(libc::EINVAL);
        }
        // SAFETY: kill(2) with signal 0 only checks that the process exists.
        if pid == 0
            || pid > i32::MAX as u32
            || (unsafe { libc::kill(pid as i32, 0) } != 0 && std::io::Error::last_os_error().raw_os_error() == Some(libc::ESRCH))
        {
            return Err(libc::ENOENT);
        }
        // A thread of ours shares our fds, as the kernel looks them up by task.
        let own = pid == std::process::id() || std::fs::metadata(format!("/proc/self/task/{pid}")).is_ok();
        let open = if own { fd_is_open(fd) } else { std::fs::symlink_metadata(format!("/proc/{pid}/fd/{fd}")).is_ok() };
        if !open {
            return Err(libc::EBADF);
        }
        let all = links::list(&self.region);
        let id = if own {
            match self.handle(fd) {
                Some(Handle::Probe(ProbeEvent { link: Some(id), .. })) => id,
                // A perf event without a program.
                Some(Handle::Probe(_)) => return Err(libc::ENOENT),
                // A CPU-clock event's program: the kernel does not describe those.
                Some(Handle::Timer(_)) => return Err(libc::EOPNOTSUPP),
                // A link fd: a raw tracepoint's only (a perf link's perf event is the fd to ask).
                Some(Handle::Link(id)) if all.iter().any(|l| l.id == id && l.target.starts_with("raw/")) => id,
                _ => return Err(ENOTSUPP),
            }
        } else {
            all.iter().find(|l| l.owner == pid && l.fd == Some(fd)).map(|l| l.id).ok_or(ENOTSUPP)?
        };
        let link = all.into_iter().find(|l| l.id == id).ok_or(ENOTSUPP)?;
        if link.kind == links::LinkKind::Profile {
            // A CPU-clock event's program: the kernel does not describe those.
            return Err(libc::EOPNOTSUPP);
        }
        let probed = Probed::of(&link);
        // As the kernel's `bpf_task_fd_query_copy`: the name's length back in `buf_len`, the
        // name in the buffer (`ENOSPC` where it was cut).
        let cut = buf_len > 0 && buf != 0 && copy_name(buf, buf_len, &probed.name)?;
        a.set_u32(12, probed.name.len() as u32);
        a.set_u32(24, link.prog);
        a.set_u32(28, probed.fd_type());
        a.set_u64(32, probed.offset);
        // A uprobe's "address" is its semaphore offset (the kernel's since 6.12).
        a.set_u64(40, if link.kind == links::LinkKind::Uprobe { link.ref_ctr } else { 0 });
        if cut {
            Err(libc::ENOSPC)
        } else {
            Ok(0)
        }
    }

    fn map_create(&self, a: &Attr) -> Result<i64, Errno> {
        let build = |map_type| MapSpec {
            map_type,
            key_size: a.u32(4),
            value_size: a.u32(8),
            max_entries: a.u32(12),
            flags: a.u32(16),
            map_extra: a.u64(64),
            inner_map_id: 0,
        };
        let Some(mut spec) = bpftime_runtime::gpu::region_map_spec(a.u32(0), build) else {
            return match &self.kernel {
                // A map type only the kernel has (devmap, sockmap...): the kernel's.
                Some(_) => crate::kernel::bpf(attr::MAP_CREATE, &mut a.0.clone()),
                None => Err(libc::EINVAL),
            };
        };
        // As the kernel: `map_extra` is the bloom filter's alone.
        if a.u64(64) != 0 && spec.map_type != MapType::BloomFilter {
            return Err(libc::EINVAL);
        }
        spec.inner_map_id = match a.u32(20) {
            0 => 0,
            fd => self.map(fd)?.id(),
        };
        let name = a.obj_name(28)?;
        let map = Map::create(&self.region, &name, &spec).map_err(|e| match e {
            bpftime_maps::MapError::Shm(e) => {
                // The kernel would have found the memory: say why, and what to do.
                if let bpftime_shm::ShmError::Full { name: region, size, want } = &e {
                    eprintln!(
                        "bpftime: map `{name}` needs {} MiB, more than region `{region}` ({} MiB) has free: remove the region and make a bigger one (`bpftime shm create --size 1G`), or let `bpftime load` make it (sized for maps made for the kernel)",
                        want.div_ceil(1 << 20),
                        size >> 20
                    );
                }
                libc::ENOMEM
            }
            // The kernel's ENOTSUPP (not a userspace errno).
            bpftime_maps::MapError::NotSupported(_) => 524,
            _ => libc::EINVAL,
        })?;
        // Where its key and value types are described (`btf_fd`, `btf_key_type_id`,
        // `btf_value_type_id`): libbpf gives them for BTF-defined maps.
        // (As the kernel, only where a type id is given.)
        let typed = a.u32(52) != 0 || a.u32(56) != 0;
        if let Some(Handle::Btf(b)) = self.handle(a.u32(48) as i32).filter(|_| a.u32(48) != 0 && typed) {
            map.set_btf(MapBtf { object: b, key_type: a.u32(52), value_type: a.u32(56) });
        }
        match &self.kernel {
            // Maps of a loader whose maps may have moved to the kernel stay (no creator to
            // outlive: see `forget_map_if_unused`).
            Some(k) => {
                Self::lock(&k.map_attrs).insert(map.id(), a.0.clone());
            }
            None => map.set_creator(),
        }
        Self::lock(&self.created_maps).insert(map.id());
        self.install(Handle::Map(map.id()))
    }

    /// A value as the kernel's syscall side sees it: prog arrays and map-in-maps hold fds.
    pub(crate) fn value_in(&self, map: &Map, key: &[u8], mut value: Vec<u8>) -> Result<Vec<u8>, Errno> {
        let id = match map.map_type() {
            MapType::ProgArray => {
                let fd = u32::from_le_bytes(value[..4].try_into().map_err(|_| libc::EINVAL)?);
                // A program of the kernel (bpftime's userspace-to-kernel tail call), by its id.
                Some(self.prog_id(fd).or_else(|e| crate::kernel::program_id(fd as i32).map(|id| id | bpftime_maps::KERNEL_PROGRAM).ok_or(e))?)
            }
            MapType::ArrayOfMaps | MapType::HashOfMaps => Some(self.map(u32::from_le_bytes(value[..4].try_into().map_err(|_| libc::EINVAL)?))?.id()),
            // A perf buffer's event: bound to this slot, whose ring it then maps.
            MapType::PerfEventArray => {
                let fd = u32::from_le_bytes(value[..4].try_into().map_err(|_| libc::EINVAL)?) as i32;
                let index = u32::from_le_bytes(key.get(..4).ok_or(libc::EINVAL)?.try_into().map_err(|_| libc::EINVAL)?);
                let mapped = match Self::lock(&self.fds).get_mut(&fd) {
                    Some(Handle::PerfOutput(p)) => {
                        p.bound = Some((map.id(), index));
                        p.mapped
                    }
                    _ => return Err(libc::EBADF),
                };
                if let Some((addr, len)) = mapped {
                    let (start, size) = map.perf_ring_area(index).ok_or(libc::E2BIG)?;
                    Self::size_perf_ring(map, index, len)?;
                    crate::raw::map_region_pages(
                        self.region.base(),
                        start,
                        size,
                        addr as *mut libc::c_void,
                        len as usize,
                        libc::PROT_READ | libc::PROT_WRITE,
                        libc::MAP_FIXED,
                    )?;
                }
                Some(fd as u32)
            }
            // A cgroup fd: the cgroup's id (its cgroupfs inode; the low 32 bits, the value's size).
            MapType::CgroupArray => {
                use std::os::unix::fs::MetadataExt;
                let fd = u32::from_le_bytes(value[..4].try_into().map_err(|_| libc::EINVAL)?);
                Some(std::fs::metadata(format!("/proc/self/fd/{fd}")).map_err(|_| libc::EBADF)?.ino() as u32)
            }
            _ => None,
        };
        if let Some(id) = id {
            value[..4].copy_from_slice(&id.to_le_bytes());
        }
        Ok(value)
    }

    fn map_update(&self, a: &Attr) -> Result<i64, Errno> {
        let map = self.map(a.u32(0))?;
        if map.is_frozen() {
            return Err(libc::EPERM);
        }
        let flags = a.u64(24);
        // No value of ours holds a `bpf_spin_lock`; maps of fds take no update flags.
        let holds_fds = matches!(map.map_type(), MapType::ProgArray | MapType::ArrayOfMaps | MapType::PerfEventArray | MapType::CgroupArray);
        if flags & attr::BPF_F_LOCK != 0 || (holds_fds && flags != 0) {
            return Err(libc::EINVAL);
        }
        let key = user::read(a.u64(8), map.spec().key_size as usize)?;
        let value = self.value_in(&map, &key, user::read(a.u64(16), map.syscall_value_size())?)?;
        let r = if matches!(map.map_type(), MapType::Queue | MapType::Stack) { map.push(&value, flags) } else { map.update(&key, &value, flags) };
        r.map(|()| 0).map_err(|e| e.0)
    }

    fn map_lookup(&self, a: &Attr, delete: bool) -> Result<i64, Errno> {
        // The only flag is `BPF_F_LOCK` (checked before the fd, as the kernel), for values
        // with a `bpf_spin_lock` (none of ours).
        if a.u64(24) & !attr::BPF_F_LOCK != 0 {
            return Err(libc::EINVAL);
        }
        let map = self.map(a.u32(0))?;
        if delete && map.is_frozen() {
            return Err(libc::EPERM);
        }
        if a.u64(24) != 0 {
            return Err(libc::EINVAL);
        }
        let mut value = vec![0u8; map.syscall_value_size()];
        if map.map_type() == MapType::BloomFilter && !delete {
            // The value is what is looked for: found (0) or not (ENOENT).
            let mut wanted = user::read(a.u64(16), value.len())?;
            return map.peek(&mut wanted).map(|()| 0).map_err(|e| e.0);
        }
        if matches!(map.map_type(), MapType::Queue | MapType::Stack) {
            if delete { map.pop(&mut value) } else { map.peek(&mut value) }.map_err(|e| e.0)?;
        } else {
            let key = user::read(a.u64(8), map.spec().key_size as usize)?;
            if delete { map.lookup_and_delete(&key, &mut value) } else { map.lookup(&key, &mut value) }.map_err(|e| e.0)?;
        }
        user::write(a.u64(16), &value)?;
        Ok(0)
    }

    /// The map of a batch command (`attr.batch`: in_batch 0, out_batch 8, keys 16, values 24,
    /// count 32, map_fd 36, elem_flags 40, flags 48), its flags checked as the kernel does.
    fn batch_map(&self, a: &Attr) -> Result<Map, Errno> {
        let map = self.map(a.u32(36))?;
        // `elem_flags` may only be `BPF_F_LOCK`, for values with a spin lock (none of ours).
        if a.u64(40) != 0 || a.u64(48) != 0 {
            return Err(libc::EINVAL);
        }
        Ok(map)
    }

    /// `BPF_MAP_LOOKUP_BATCH` / `BPF_MAP_LOOKUP_AND_DELETE_BATCH`, as the kernel's: hash maps
    /// by bucket ([`Server::hash_lookup_batch`]); arrays, LPM tries and arrays of maps by key,
    /// lookups only ([`Server::keyed_lookup_batch`]); `ENOTSUPP` for the rest.
    fn map_lookup_batch(&self, a: &mut Attr, delete: bool) -> Result<i64, Errno> {
        /// The kernel's ENOTSUPP (not a userspace errno).
        const ENOTSUPP: Errno = 524;
        let map = self.batch_map(a)?;
        // As the kernel: the write permission a frozen map lacks is checked first.
        if delete && map.is_frozen() {
            return Err(libc::EPERM);
        }
        match map.map_type() {
            MapType::Hash | MapType::PercpuHash | MapType::LruHash | MapType::LruPercpuHash | MapType::HashOfMaps => self.hash_lookup_batch(&map, a, delete),
            MapType::Array | MapType::PercpuArray | MapType::LpmTrie | MapType::ArrayOfMaps if !delete => self.keyed_lookup_batch(&map, a),
            _ => Err(ENOTSUPP),
        }
    }

    /// A batch of a hash map: up to `count` entries, whole buckets, from the bucket `in_batch`
    /// names (NULL: the first), the bucket to go on from in `out_batch` (a u32; the bucket
    /// count at the end), `count` set to what was copied; `ENOENT` (with the entries copied)
    /// once the walk reaches the end, `ENOSPC` (none copied) when a bucket holds more than
    /// `count`.
    fn hash_lookup_batch(&self, map: &Map, a: &mut Attr, delete: bool) -> Result<i64, Errno> {
        let room = a.u32(32) as usize;
        if room == 0 {
            return Ok(0);
        }
        let cursor = match a.u64(0) {
            0 => 0,
            at => u32::from_le_bytes(user::read(at, 4)?.try_into().map_err(|_| libc::EFAULT)?),
        };
        let (ks, vs) = (map.spec().key_size as usize, map.syscall_value_size());
        let mut copied = 0u32;
        let end = match map.batch_keys(cursor, room) {
            Ok((keys, next)) => {
                let (mut kout, mut vout) = (Vec::with_capacity(keys.len() * ks), Vec::with_capacity(keys.len() * vs));
                let mut value = vec![0u8; vs];
                for key in keys {
                    // An element deleted since the walk saw it is left out.
                    let found = match (delete, map.map_type()) {
                        (false, _) => map.lookup(&key, &mut value),
                        // Deleted in batches, not one by one (`lookup_and_delete` refuses it).
                        (true, MapType::HashOfMaps) => map.lookup(&key, &mut value).and_then(|()| map.delete(&key)),
                        (true, _) => map.lookup_and_delete(&key, &mut value),
                    };
                    if found.is_ok() {
                        kout.extend_from_slice(&key);
                        vout.extend_from_slice(&value);
                        copied += 1;
                    }
                }
                user::write(a.u64(16), &kout)?;
                user::write(a.u64(24), &vout)?;
                user::write(a.u64(8), &next.unwrap_or(map.bucket_count() as u32).to_le_bytes())?;
                next
            }
            Err(e) if e.0 == libc::ENOENT => None,
            Err(e) => {
                // ENOSPC: nothing copied, the walk to resume where it was.
                user::write(a.u64(8), &cursor.to_le_bytes())?;
                a.set_u32(32, 0);
                return Err(e.0);
            }
        };
        a.set_u32(32, copied);
        match end {
            Some(_) => Ok(0),
            None => Err(libc::ENOENT),
        }
    }

    /// A batch walked by key, as the kernel's generic batch: from the key after the one
    /// `in_batch` points to (NULL: the first), up to `count` entries; `out_batch` gets the
    /// last key copied, `count` the number copied; `ENOENT` once no key follows.
    fn keyed_lookup_batch(&self, map: &Map, a: &mut Attr) -> Result<i64, Errno> {
        let (ks, vs) = (map.spec().key_size as usize, map.syscall_value_size());
        let room = a.u32(32);
        let mut prev = match a.u64(0) {
            0 => None,
            at => Some(user::read(at, ks)?),
        };
        let (mut kout, mut vout) = (vec![], vec![]);
        let mut copied = 0u32;
        let mut next = vec![0u8; ks];
        let mut value = vec![0u8; vs];
        let mut result = Ok(0);
        while copied < room {
            if let Err(e) = map.next_key(prev.as_deref(), &mut next) {
                result = Err(e.0);
                break;
            }
            // An element gone since the walk saw its key is left out (the kernel retries).
            if map.lookup(&next, &mut value).is_ok() {
                kout.extend_from_slice(&next);
                vout.extend_from_slice(&value);
                copied += 1;
            }
            prev = Some(next.clone());
        }
        user::write(a.u64(16), &kout)?;
        user::write(a.u64(24), &vout)?;
        if copied > 0 {
            if let Some(last) = &prev {
                user::write(a.u64(8), last)?;
            }
        }
        a.set_u32(32, copied);
        result
    }

    /// `BPF_MAP_UPDATE_BATCH` / `BPF_MAP_DELETE_BATCH`: element by element, stopping at the
    /// first failure; `count` says how many were done (the kernel's generic batch).
    fn map_change_batch(&self, cmd: u32, a: &mut Attr) -> Result<i64, Errno> {
        let map = self.batch_map(a)?;
        if map.is_frozen() {
            return Err(libc::EPERM);
        }
        let (ks, vs) = (map.spec().key_size as u64, map.syscall_value_size() as u64);
        let count = a.u32(32);
        let mut done = 0u32;
        let result = (|| {
            for i in 0..count as u64 {
                let key = user::read(a.u64(16).checked_add(i * ks).ok_or(libc::EFAULT)?, ks as usize)?;
                if cmd == attr::MAP_DELETE_BATCH {
                    map.delete(&key).map_err(|e| e.0)?;
                } else {
                    let value = user::read(a.u64(24).checked_add(i * vs).ok_or(libc::EFAULT)?, vs as usize)?;
                    let value = self.value_in(&map, &key, value)?;
                    map.update(&key, &value, a.u64(40)).map_err(|e| e.0)?;
                }
                done += 1;
            }
            Ok(0)
        })();
        a.set_u32(32, done);
        result
    }

    /// A program's BTF and debug records from `BPF_PROG_LOAD` (`prog_btf_fd`, `func_info`,
    /// `line_info`), kept so that bpftool can show its functions and source lines; records
    /// that cannot be read are left out (the program loads as it would without them).
    fn prog_btf(&self, a: &Attr) -> progs::ProgBtf {
        let Some(Handle::Btf(object)) = self.handle(a.u32(72) as i32).filter(|_| a.u32(72) != 0) else { return progs::ProgBtf::default() };
        // Each record cut to the kernel's size, as the kernel keeps them.
        let records = |rec_size: u32, at: u64, count: u32, size: usize| -> Vec<u8> {
            let len = rec_size as usize * count as usize;
            if at == 0 || len == 0 || len > 16 << 20 || (rec_size as usize) < size {
                return vec![];
            }
            let given = user::read(at, len).unwrap_or_default();
            given.chunks(rec_size as usize).flat_map(|r| r[..size].to_vec()).collect()
        };
        progs::ProgBtf {
            object,
            func_info: records(a.u32(76), a.u64(80), a.u32(88), progs::FUNC_INFO_SIZE),
            line_info: records(a.u32(92), a.u64(96), a.u32(104), progs::LINE_INFO_SIZE),
        }
    }

    fn prog_load(&self, a: &mut Attr) -> Result<i64, Errno> {
        // As the kernel's `bpf_prog_load`: known flags, an instruction count, a program type
        // it has; then its verifier log's attributes.
        const KNOWN_PROG_FLAGS: u32 = 0xff | 1 << 16;
        if a.u32(44) & !KNOWN_PROG_FLAGS != 0 {
            return Err(libc::EINVAL);
        }
        let n = a.u32(4) as usize;
        if n == 0 || n > 1_000_000 {
            return Err(libc::E2BIG);
        }
        if !(1..=32).contains(&a.u32(0)) {
            return Err(libc::EINVAL);
        }
        let (log_level, log_size, log_buf) = (a.u32(24), a.u32(28), a.u64(32));
        if (log_buf == 0) != (log_size == 0) || (log_buf != 0 && log_level == 0) || log_level & !0xf != 0 || log_size > u32::MAX >> 2 {
            return Err(libc::EINVAL);
        }
        if self.load_in_kernel(a) {
            return self.kernel_prog_load(a);
        }
        if attached_by_btf_id(a.u32(0)) {
            // fentry/fexit/tp_btf, struct_ops, extensions, LSM: bodies of kernel functions
            // only, never run here. Refused at load, as by a kernel without them, so tools
            // take their fallbacks (runqlat's raw tracepoints), and saying how to run them.
            let msg = format!(
                "bpftime: program type {} attaches to kernel functions by BTF id: it runs only in the kernel (bpftime load --kernel-passthrough)\n",
                a.u32(0)
            );
            Self::log(a, &msg);
            return Err(libc::EINVAL);
        }
        let license = if a.u64(16) == 0 { String::new() } else { user::read_cstr(a.u64(16), 128)? };
        let name = a.obj_name(48)?;
        // Map fds (and fd_array indices) in `lddw` become region map ids.
        // A map moved to the kernel (passthrough) is its region copy here, as in traced processes.
        let insns = match program_with_maps(a, |fd| self.map(fd).map(|m| m.id()).or_else(|e| self.moved_map(fd).ok_or(e))) {
            // Another kernel map (passthrough): the program is the kernel's.
            Err(libc::EBADF) if self.kernel.is_some() => return self.kernel_prog_load(a),
            r => r?,
        };
        if let Some(why) = bpftime_runtime::helper_names::gpl_refusal(&insns, &license) {
            Self::log(a, &format!("bpftime: {why}\n"));
            return Err(libc::EINVAL);
        }
        // Kfunc calls (by their BTF id in the kernel's BTF) become calls of the helpers that
        // run them here; those helpers' ids are no helper of the kernel's.
        if let Some(pc) = insns.iter().position(|i| i.opc == 0x85 && i.src == 0 && bpftime_runtime::kfuncs::is_kfunc_id(i.imm as u32)) {
            Self::log(a, &format!("bpftime: insn {pc}: invalid func unknown#{} (as the kernel)\n", insns[pc].imm));
            return Err(libc::EINVAL);
        }
        let mut insns = insns;
        if let Err(why) = bpftime_runtime::kfuncs::resolve_with_raw_kernel_btf(&mut insns, kernel_btf()) {
            if self.kernel.is_some() {
                return self.kernel_prog_load(a);
            }
            Self::log(a, &format!("bpftime: {why}\n"));
            return Err(libc::EINVAL);
        }
        let section = attr::section_of(a.u32(0), a.u32(68));
        let btf = self.prog_btf(a);
        let id = progs::store_with_btf(&self.region, &name, section, &license, &insns, &btf, std::process::id()).map_err(|_| libc::ENOMEM)?;
        // The verifier, with the region's maps, as the agent will run it; a kprobe-type program
        // the CPU cannot run may be a CUDA kernel probe, with the GPU's helpers.
        let id = match self.runtime.program(id) {
            Ok(_) => id,
            Err(e) => {
                progs::remove(&self.region, id);
                use bpftime_runtime::gpu;
                let as_probe = (a.u32(0) == 2).then(|| gpu::verify_probe(&insns));
                match as_probe {
                    Some(Ok(())) => {
                        let id = progs::store_with_btf(&self.region, &name, "kprobe", &license, &insns, &btf, std::process::id()).map_err(|_| libc::ENOMEM)?;
                        Self::lock(&self.gpu_only).insert(id, e.to_string());
                        id
                    }
                    // Ours refused it; the kernel's verifier may take it (for kernel events).
                    _ if self.kernel.is_some() => return self.kernel_prog_load(a),
                    Some(Err(why)) if gpu::calls_gpu_helpers(&insns) => {
                        Self::log(a, &format!("bpftime: program `{name}` {why}\n"));
                        return Err(libc::EACCES);
                    }
                    _ => {
                        Self::log(a, &format!("bpftime: {e}\n"));
                        return Err(e.errno());
                    }
                }
            }
        };
        if let Some(pc) = bpftime_vm::first_unreachable(&insns) {
            progs::remove(&self.region, id);
            Self::log(a, &format!("bpftime: insn {pc}: no path of the program reaches it (the kernel refuses it too: \"unreachable insn {pc}\")\n"));
            return Err(libc::EINVAL);
        }
        if log_level != 0 {
            // The verifier's summary, as the kernel's ends its log; a load whose log does not
            // fit fails, as there (`ENOSPC`).
            let summary = format!("processed {n} insns (limit 1000000) max_states_per_insn 0 total_states 0 peak_states 0 mark_read 0\n");
            Self::log(a, &summary);
            if log_buf != 0 && summary.len() + 1 > log_size as usize {
                progs::remove(&self.region, id);
                return Err(libc::ENOSPC);
            }
        }
        Self::lock(&self.loaded).insert(id);
        if let Some(k) = &self.kernel {
            Self::lock(&k.deferred).insert(id, crate::kernel::Deferred { attr: a.0.clone(), insns, license });
        }
        self.install(Handle::Prog(id))
    }

    /// `BPF_PROG_TEST_RUN` of a raw tracepoint program, as the kernel's
    /// `bpf_prog_test_run_raw_tp`: run once here, in the loader's process, on `ctx_in` (the
    /// tracepoint's arguments, at most 12 u64s; none: r1 = 0), its result in `retval`. This is
    /// how bpftrace runs `BEGIN` and `END`. Other program types cannot be run on demand (the
    /// kernel answers ENOTSUPP for kprobes and tracepoints too).
    fn test_run(&self, a: &mut Attr) -> Result<i64, Errno> {
        /// The kernel's ENOTSUPP (not a userspace errno).
        const ENOTSUPP: Errno = 524;
        let id = self.prog_id(a.u32(0))?;
        let section = progs::load(&self.region, id).map(|p| p.section).ok_or(libc::EBADF)?;
        if !matches!(section.split('/').next(), Some("raw_tracepoint" | "raw_tp")) {
            return Err(ENOTSUPP);
        }
        let (data_in, data_out, repeat, duration) = (a.u64(16), a.u64(24), a.u32(32), a.u32(36));
        let (ctx_size, ctx_in, ctx_out, flags, cpu, batch) = (a.u32(40) as usize, a.u64(48), a.u64(56), a.u32(64), a.u32(68), a.u32(72));
        const ON_CPU: u32 = 1;
        if data_in != 0 || data_out != 0 || ctx_out != 0 || duration != 0 || repeat != 0 || batch != 0 || ctx_size > 12 * 8 || ctx_size % 8 != 0 {
            return Err(libc::EINVAL);
        }
        if flags & !ON_CPU != 0 || (flags & ON_CPU == 0 && cpu != 0) {
            return Err(libc::EINVAL);
        }
        let args = if ctx_size == 0 { vec![] } else { user::read(ctx_in, ctx_size)? };
        let prog = self.runtime.program(id).map_err(|_| libc::EINVAL)?;
        let ctx = if args.is_empty() { bpftime_vm::exec::Context::None } else { bpftime_vm::exec::Context::ReadOnly(&args) };
        let retval = match self.runtime.run(&prog, ctx, 0, 0, false) {
            Ok(v) => v,
            Err(e) => {
                eprintln!("bpftime: program {id} (`{}`): {e}", prog.name);
                0
            }
        };
        a.set_u32(4, retval as u32);
        Ok(0)
    }

    /// Writes `msg` into the loader's verifier log buffer of `PROG_LOAD` attributes `a`.
    fn log(a: &mut Attr, msg: &str) {
        let (log, size) = (a.u64(32), a.u32(28) as usize);
        if log != 0 && size > 0 {
            let mut bytes = msg.as_bytes()[..msg.len().min(size - 1)].to_vec();
            bytes.push(0);
            let _ = user::write(log, &bytes);
        }
        a.set_u32(140, msg.len() as u32 + 1);
    }

    fn btf_load(&self, a: &Attr) -> Result<i64, Errno> {
        let size = a.u32(16) as usize;
        if !(24..=btfs::MAX_SIZE).contains(&size) {
            return Err(libc::EINVAL);
        }
        let btf = user::read(a.u64(0), size)?;
        if btf[..2] != [0x9f, 0xeb] {
            return Err(libc::EINVAL);
        }
        let id = btfs::store(&self.region, &btf, std::process::id()).map_err(|_| libc::ENOMEM)?;
        Self::lock(&self.loaded_btfs).insert(id);
        self.install(Handle::Btf(id))
    }

    /// Removes BTF object `b` of ours from the region if no fd of ours and no map holds it.
    fn forget_btf_if_unused(&self, b: u32) {
        if !Self::lock(&self.loaded_btfs).contains(&b) {
            return;
        }
        let held = Self::lock(&self.fds).values().any(|h| matches!(h, Handle::Btf(c) if *c == b));
        if held
            || Map::list(&self.region).iter().any(|m| m.btf().object == b)
            || progs::ids(&self.region).into_iter().any(|p| progs::btf_of(&self.region, p) == b)
        {
            return;
        }
        btfs::remove(&self.region, b);
        Self::lock(&self.loaded_btfs).remove(&b);
    }

    /// `bpf_prog_info`'s machine code fields as the kernel fills them, from the code this
    /// process runs the program with (compiled at load, or mapped from the code cache): its
    /// length and bytes (`jited_prog_len`, `jited_prog_insns`, as many bytes as the caller has
    /// room for), each function's address and length (`jited_ksyms`, `jited_func_lens`); the
    /// caller's pointers come back as given. A program run by the interpreter (no code cache)
    /// has none: `bpftool` says "not jited".
    fn jited_info(&self, id: u32, given: &Attr, info: &mut [u8]) -> Result<(), Errno> {
        for at in [24, 112, 120] {
            info[at..at + 8].copy_from_slice(&given.u64(at).to_le_bytes());
        }
        let Some(loaded) = self.compiled(id) else { return Ok(()) };
        let code = loaded.engine().machine_code();
        let total: usize = code.iter().map(|f| f.len()).sum();
        if total == 0 {
            return Ok(());
        }
        info[16..20].copy_from_slice(&(total as u32).to_le_bytes());
        // As the kernel's `copy_to_user`: room at a bad address (null included) is EFAULT.
        let room = given.u32(16) as usize;
        if room > 0 {
            let bytes: Vec<u8> = code.iter().flat_map(|f| f.iter().copied()).take(room).collect();
            user::write(given.u64(24), &bytes)?;
        }
        // nr_jited_ksyms and jited_ksyms (8-byte addresses), nr_jited_func_lens and
        // jited_func_lens (4-byte lengths), as many as the caller has room for.
        let addresses: Vec<Vec<u8>> = code.iter().map(|f| (f.as_ptr() as u64).to_le_bytes().to_vec()).collect();
        let lengths: Vec<Vec<u8>> = code.iter().map(|f| (f.len() as u32).to_le_bytes().to_vec()).collect();
        for (count_at, ptr_at, words) in [(104, 112, addresses), (108, 120, lengths)] {
            let room = given.u32(count_at) as usize;
            if room > 0 {
                user::write(given.u64(ptr_at), &words[..room.min(words.len())].concat())?;
            }
            info[count_at..count_at + 4].copy_from_slice(&(code.len() as u32).to_le_bytes());
        }
        Ok(())
    }

    /// Program `id` as this process runs it, for its machine code; None where it cannot be
    /// prepared here (a GPU probe), remembered so that it is not verified again at each ask.
    fn compiled(&self, id: u32) -> Option<std::sync::Arc<bpftime_runtime::LoadedProgram>> {
        if Self::lock(&self.not_compiled).contains(&id) {
            return None;
        }
        let loaded = self.runtime.program(id).ok();
        if loaded.is_none() {
            Self::lock(&self.not_compiled).insert(id);
        }
        loaded
    }

    fn info(&self, a: &mut Attr) -> Result<i64, Errno> {
        let (fd, len, out) = (a.u32(0), a.u32(4) as usize, a.u64(8));
        let mut info = vec![0u8; 256];
        // What the call returns once the info is written (a name cut short: `ENOSPC`).
        let mut outcome = Ok(0);
        let put32 = |b: &mut Vec<u8>, at: usize, v: u32| b[at..at + 4].copy_from_slice(&v.to_le_bytes());
        // As the kernel: an fd that is open but not an object of ours is EINVAL, one that is
        // not open EBADFD (`bpf_obj_get_info_by_fd`).
        let handle = self.handle(fd as i32).ok_or(if fd_is_open(fd as i32) { libc::EINVAL } else { libc::EBADFD })?;
        // Each kind's struct size; as the kernel's `bpf_check_uarg_tail_zero`, before anything
        // is written: a longer buffer must hold zeroes past it, and be no longer than a page.
        let used = match handle {
            Handle::Map(_) => 88,
            Handle::Prog(_) => 232,
            Handle::Link(_) | Handle::MultiLink(_) => 64,
            Handle::Btf(_) | Handle::KernelBtf => 32,
            Handle::Probe(_) | Handle::PerfOutput(_) | Handle::Timer(_) => return Err(libc::EINVAL),
        };
        if len > 4096 && len > used {
            return Err(libc::E2BIG);
        }
        if len > used && user::read(out + used as u64, len - used)?.iter().any(|&b| b != 0) {
            return Err(libc::E2BIG);
        }
        match handle {
            Handle::Map(id) => {
                // struct bpf_map_info
                let map = Map::open(&self.region, id).map_err(|_| libc::EBADF)?;
                let s = map.spec();
                for (at, v) in [(0, s.map_type as u32), (4, id), (8, s.key_size), (12, s.value_size), (16, s.max_entries), (20, s.flags)] {
                    put32(&mut info, at, v);
                }
                let n = map.name().len().min(15);
                info[24..24 + n].copy_from_slice(&map.name().as_bytes()[..n]);
                // btf_id, btf_key_type_id, btf_value_type_id, map_extra
                let btf = map.btf();
                if btf.object != 0 {
                    for (at, v) in [(64, btf_id_of(btf.object)), (68, btf.key_type), (72, btf.value_type)] {
                        put32(&mut info, at, v);
                    }
                }
                info[80..88].copy_from_slice(&s.map_extra.to_le_bytes());
            }
            Handle::Prog(id) => {
                // struct bpf_prog_info: type, id, tag, ..., name at 64
                let p = progs::load(&self.region, id).ok_or(libc::EBADF)?;
                put32(&mut info, 0, attr::prog_type_of(&p.section));
                put32(&mut info, 4, id);
                info[8..16].copy_from_slice(&crate::tag::prog_tag(&p.insns));
                // The maps it uses, in the order it first names them; their ids where the
                // caller gave room (`map_ids`, `nr_map_ids` on input).
                let mut maps: Vec<u32> = vec![];
                for i in p.insns.iter().filter(|i| i.opc == 0x18 && matches!(i.src, 1 | 2)) {
                    if !maps.contains(&(i.imm as u32)) {
                        maps.push(i.imm as u32);
                    }
                }
                let given = Attr::from_bytes(user::read(out, len.min(64))?);
                let (room, ids_at) = (given.u32(52) as usize, given.u64(56));
                if ids_at != 0 && room > 0 {
                    let ids: Vec<u8> = maps.iter().take(room).flat_map(|id| id.to_le_bytes()).collect();
                    user::write(ids_at, &ids)?;
                }
                put32(&mut info, 52, maps.len() as u32);
                info[56..64].copy_from_slice(&ids_at.to_le_bytes());
                // The instructions as stored (maps by id, as the kernel's dump shows them),
                // as much as the caller's `xlated_prog_len` takes: `bpftool prog dump xlated`.
                let (xlated_room, xlated_at) = (given.u32(20) as usize, given.u64(32));
                if xlated_at != 0 && xlated_room > 0 {
                    let bytes: Vec<u8> = p.insns.iter().flat_map(|i| i.to_bytes()).take(xlated_room).collect();
                    user::write(xlated_at, &bytes)?;
                }
                info[32..40].copy_from_slice(&xlated_at.to_le_bytes());
                put32(&mut info, 20, (p.insns.len() * 8) as u32);
                put32(&mut info, 84, bpftime_runtime::helper_names::gpl_compatible(&p.license) as u32);
                let n = p.name.len().min(15);
                info[64..64 + n].copy_from_slice(&p.name.as_bytes()[..n]);
                // load_time, created_by_uid
                info[40..48].copy_from_slice(&p.load_time.to_le_bytes());
                put32(&mut info, 48, p.uid);
                // recursion_misses, as bpftool prints them
                info[208..216].copy_from_slice(&p.recursion_misses.to_le_bytes());
                // btf_id, and the func_info and line_info records as the kernel hands them
                // out: their counts and sizes always, as many as the caller has room for.
                if p.btf.object != 0 {
                    put32(&mut info, 128, btf_id_of(p.btf.object));
                }
                // As the kernel's `set_info_rec_size`: a record size the caller names must be
                // the kernel's, which it then always gets back.
                let given = Attr::from_bytes(user::read(out, len.min(192))?);
                for (count_at, size_at, size) in [(144, 132, progs::FUNC_INFO_SIZE as u32), (148, 172, progs::LINE_INFO_SIZE as u32), (168, 176, 8)] {
                    if (given.u32(count_at) != 0 || given.u32(size_at) != 0) && given.u32(size_at) != size {
                        return Err(libc::EINVAL);
                    }
                    put32(&mut info, size_at, size);
                }
                self.jited_info(id, &given, &mut info)?;
                for (records, size, ptr_at, count_at) in
                    [(&p.btf.func_info, progs::FUNC_INFO_SIZE, 136, 144), (&p.btf.line_info, progs::LINE_INFO_SIZE, 152, 148)]
                {
                    let count = (records.len() / size) as u32;
                    let (room, at) = (given.u32(count_at), given.u64(ptr_at));
                    if count > 0 && room > 0 {
                        user::write(at, &records[..size * room.min(count) as usize])?;
                    }
                    info[ptr_at..ptr_at + 8].copy_from_slice(&at.to_le_bytes());
                    put32(&mut info, count_at, count);
                }
            }
            Handle::Link(id) => {
                // struct bpf_link_info: type, id, prog_id, then the link type's part: a raw
                // tracepoint's name (BPF_LINK_TYPE_RAW_TRACEPOINT = 1), or a perf event's kind
                // and what it probes (BPF_LINK_TYPE_PERF_EVENT = 7), names as the kernel's
                // `bpf_copy_to_user` copies them.
                // (A link its holder let go of while this fd stays: a perf event link, no program.)
                let link = links::list(&self.region).into_iter().find(|l| l.id == id);
                // As the kernel: the caller's struct is the start (its name pointers come back).
                let given = Attr::from_bytes(user::read(out, len.min(64))?);
                info[..64].copy_from_slice(&given.0[..64]);
                put32(&mut info, 4, id);
                put32(&mut info, 8, link.as_ref().map_or(0, |l| l.prog));
                // A name into the caller's buffer, as the kernel's `bpf_copy_to_user` (cut:
                // `ENOSPC`, the info not written); its length with the NUL, for the info.
                let named = |name: &str, buf: u64, buf_len: usize| -> Result<u32, Errno> {
                    if (buf == 0) != (buf_len == 0) {
                        return Err(libc::EINVAL);
                    }
                    if buf != 0 && copy_name(buf, buf_len, name)? {
                        return Err(libc::ENOSPC);
                    }
                    Ok(name.len() as u32 + 1)
                };
                let probed = link.as_ref().map(Probed::of);
                put32(&mut info, 0, 7);
                match (&link, &probed) {
                    (Some(_), Some(p)) if p.kind == ProbeKind::RawTracepoint => {
                        put32(&mut info, 0, 1);
                        let n = named(&p.name, given.u64(16), given.u32(24) as usize)?;
                        put32(&mut info, 24, n);
                    }
                    (Some(link), Some(p)) => {
                        // perf_event.type (BPF_PERF_EVENT_*), then per kind its name pointer
                        // and length at 24 and 32 and its other fields.
                        put32(&mut info, 16, p.perf_event_type());
                        if p.kind == ProbeKind::Software {
                            // `event`: config (PERF_COUNT_SW_CPU_CLOCK, 0) at 24, type
                            // (PERF_TYPE_SOFTWARE) at 32, the cookie at 40.
                            info[24..32].fill(0);
                            put32(&mut info, 32, 1);
                        } else {
                            let n = named(&p.name, given.u64(24), given.u32(32) as usize)?;
                            put32(&mut info, 32, n);
                        }
                        match p.kind {
                            ProbeKind::Uprobe { .. } => {
                                put32(&mut info, 36, p.offset as u32);
                                info[40..48].copy_from_slice(&link.cookie.to_le_bytes());
                                info[48..56].copy_from_slice(&link.ref_ctr.to_le_bytes());
                            }
                            ProbeKind::Kprobe { .. } => info[56..64].copy_from_slice(&link.cookie.to_le_bytes()),
                            _ => info[40..48].copy_from_slice(&link.cookie.to_le_bytes()),
                        }
                    }
                    _ => {}
                }
            }
            Handle::MultiLink(ids) => {
                // type BPF_LINK_TYPE_UPROBE_MULTI (12), id (its first link's), prog_id
                let first = ids.first().copied().unwrap_or(0);
                put32(&mut info, 0, 12);
                put32(&mut info, 4, first);
                put32(&mut info, 8, links::program_of(&self.region, first).unwrap_or(0));
            }
            Handle::Btf(b) => {
                // struct bpf_btf_info: as much of the data as the buffer takes, its whole
                // size, the id; no name (a loader's BTF has none), not the kernel's.
                let data = btfs::load(&self.region, b).ok_or(libc::EBADF)?;
                let given = Attr::from_bytes(user::read(out, len.min(32))?);
                let (buf, buf_size, name, name_len) = (given.u64(0), given.u32(8) as usize, given.u64(16), given.u32(24));
                // As the kernel: a name buffer and its length come together; the name of a
                // loader's BTF is empty (its NUL written).
                if (name == 0) != (name_len == 0) {
                    return Err(libc::EINVAL);
                }
                if buf != 0 && buf_size > 0 {
                    user::write(buf, &data[..data.len().min(buf_size)])?;
                }
                if name != 0 {
                    user::write(name, &[0])?;
                }
                info[..8].copy_from_slice(&buf.to_le_bytes());
                put32(&mut info, 8, data.len() as u32);
                put32(&mut info, 12, btf_id_of(b));
                info[16..24].copy_from_slice(&name.to_le_bytes());
            }
            Handle::KernelBtf => {
                // struct bpf_btf_info { u64 btf; u32 btf_size; u32 id; u64 name; u32 name_len;
                // u32 kernel_btf; }: as much of the data as the buffer takes, its whole size,
                // the name where there is room for it.
                let data = kernel_btf().ok_or(libc::ENOENT)?;
                // The caller's struct, zero-padded past what it gave.
                let given = Attr::from_bytes(user::read(out, len.min(32))?);
                let (buf, buf_size, name, name_len) = (given.u64(0), given.u32(8) as usize, given.u64(16), given.u32(24) as usize);
                if buf != 0 && buf_size > 0 {
                    user::write(buf, &data[..data.len().min(buf_size)])?;
                }
                info[..8].copy_from_slice(&buf.to_le_bytes());
                put32(&mut info, 8, data.len() as u32);
                put32(&mut info, 12, KERNEL_BTF_ID);
                info[16..24].copy_from_slice(&name.to_le_bytes());
                put32(&mut info, 24, 7);
                put32(&mut info, 28, 1);
                // As the kernel's `btf_get_info_by_fd`: a short buffer gets the name cut, the
                // info is written all the same, and the call says ENOSPC.
                if name != 0 && name_len > 0 && copy_name(name, name_len, "vmlinux")? {
                    outcome = Err(libc::ENOSPC);
                }
            }
            Handle::Probe(_) | Handle::PerfOutput(_) | Handle::Timer(_) => return Err(libc::EINVAL),
        }
        let n = len.min(used);
        user::write(out, &info[..n])?;
        a.set_u32(4, n as u32);
        outcome
    }

    fn link_create(&self, a: &Attr) -> Result<i64, Errno> {
        let (prog_fd, target_fd, attach_type) = (a.u32(0), a.u32(4) as i32, a.u32(8));
        if attach_type == attr::BPF_TRACE_UPROBE_MULTI {
            return self.uprobe_multi_link(a);
        }
        if attach_type != attr::BPF_PERF_EVENT {
            return match &self.kernel {
                Some(_) => self.kernel_attach(attr::LINK_CREATE, a, self.prog_id(prog_fd)?, 0),
                None => Err(libc::EINVAL),
            };
        }
        let prog = self.prog_id(prog_fd)?;
        // Not an open fd: EBADF, as the kernel says (libbpf's probe for perf links expects it).
        if !fd_is_open(target_fd) {
            return Err(libc::EBADF);
        }
        if self.handle(target_fd).is_none() {
            // A kernel event (kprobe, tracepoint): the program runs there, or cannot run.
            return match self.kernel {
                Some(_) => self.kernel_attach(attr::LINK_CREATE, a, prog, 0),
                None => Err(self.kernel_event_refused(prog, target_fd)),
            };
        }
        let cookie = a.u64(16);
        let id = self.attach(target_fd, prog, cookie)?;
        self.install(Handle::Link(id))
    }

    /// `BPF_LINK_CREATE` of a `uprobe_multi` link (libbpf's `uprobe.multi` sections): a link in
    /// the region per offset of the file, each with its cookie and semaphore, checked as the
    /// kernel's `bpf_uprobe_multi_link_attach` checks them.
    fn uprobe_multi_link(&self, a: &Attr) -> Result<i64, Errno> {
        /// `MAX_UPROBE_MULTI_CNT`.
        const MAX_COUNT: u32 = 1 << 20;
        let prog = self.prog_id(a.u32(0))?;
        let name = self.attachable(prog, 2, true)?;
        let (path_at, offsets_at, ref_ctrs_at, cookies_at) = (a.u64(16), a.u64(24), a.u64(32), a.u64(40));
        let (count, flags, pid) = (a.u32(48), a.u32(52), a.u32(56) as i32);
        if flags & !attr::BPF_F_UPROBE_MULTI_RETURN != 0 {
            return Err(libc::EINVAL);
        }
        if path_at == 0 || offsets_at == 0 || count == 0 || pid < 0 {
            return Err(libc::EINVAL);
        }
        if count > MAX_COUNT {
            return Err(libc::E2BIG);
        }
        let path = user::read_cstr(path_at, libc::PATH_MAX as usize)?;
        let path = std::fs::canonicalize(&path).map_err(|e| e.raw_os_error().unwrap_or(libc::ENOENT))?;
        if !path.is_file() {
            return Err(libc::EBADF);
        }
        // A process (a thread group's leader), as the kernel looks it up.
        let is_process = || std::fs::read_to_string(format!("/proc/{pid}/status")).is_ok_and(|s| s.lines().any(|l| l == format!("Tgid:\t{pid}")));
        if pid > 0 && !is_process() {
            return Err(libc::ESRCH);
        }
        let words = |at: u64| -> Result<Vec<u64>, Errno> {
            if at == 0 {
                return Ok(vec![0; count as usize]);
            }
            let bytes = user::read(at, count as usize * 8)?;
            Ok(bytes.chunks(8).map(|c| u64::from_le_bytes(c.try_into().expect("8 bytes"))).collect())
        };
        let (offsets, ref_ctrs, cookies) = (words(offsets_at)?, words(ref_ctrs_at)?, words(cookies_at)?);
        // As the kernel: offsets and semaphore offsets are file positions (not negative), a
        // semaphore a 2-byte counter (even).
        if offsets.iter().chain(&ref_ctrs).any(|&o| (o as i64) < 0) || ref_ctrs.iter().any(|&r| r % 2 != 0) {
            return Err(libc::EINVAL);
        }
        let path = path.to_string_lossy().into_owned();
        let retprobe = flags & attr::BPF_F_UPROBE_MULTI_RETURN != 0;
        let mut ids = Vec::with_capacity(count as usize);
        for i in 0..count as usize {
            let scope = links::LinkScope { owner: std::process::id(), pid: pid as u32, ref_ctr: ref_ctrs[i], ..Default::default() };
            let target = format!("{path}:{:#x}", offsets[i]);
            match links::store_owned(&self.region, &name, prog, &target, retprobe, cookies[i], scope) {
                Ok(id) => ids.push(id),
                Err(_) => {
                    for &id in &ids {
                        links::remove(&self.region, id);
                    }
                    return Err(libc::ENOMEM);
                }
            }
        }
        self.reach(pid as u32, &path);
        self.wait_in_force(&ids);
        Self::lock(&self.multi_links).insert(ids[0], ids.clone());
        self.install(Handle::MultiLink(ids))
    }

    /// Attaches program `prog` to our uprobe event `fd`: a link in the region. A link for one
    /// process reaches it even if it was started without the agent (see [`crate::reach`]).
    /// A CUDA kernel probe reaches no running process: its modules are loaded already.
    fn attach(&self, fd: i32, prog: u32, cookie: u64) -> Result<u32, Errno> {
        let (id, pid, path) = self.store_link(fd, prog, cookie)?;
        if let Some(path) = path {
            self.reach(pid, &path);
        }
        self.wait_in_force(&[id]);
        Ok(id)
    }

    /// Waits until every process running the agent on the region has taken in the links
    /// stored so far, as a kernel attach is in force when it returns: a tool that says it is
    /// tracing misses nothing after that. A process that has not within [`ATTACH_WAIT`] is
    /// named and not waited for again until it has caught up. The loader's own agent is waited
    /// for only where one of the new links (`ids`) runs in the loader: a bpftrace wildcard's
    /// thousand uprobes on libc, which it leaves out, made it refresh once per link.
    fn wait_in_force(&self, ids: &[u32]) {
        let change = self.region.table_changes();
        let me = std::process::id();
        let skip_me = !ids.iter().any(|&id| self.runs_here(id));
        let late = self.region.wait_for_runners(change, ATTACH_WAIT, |pid| (skip_me && pid == me) || Self::lock(&self.late).contains(&pid));
        // One that has caught up since (continued, or just slow) is waited for again.
        if !Self::lock(&self.late).is_empty() {
            let behind = self.region.wait_for_runners(change, std::time::Duration::ZERO, |_| false);
            Self::lock(&self.late).retain(|pid| behind.contains(pid));
        }
        for pid in late {
            if Self::lock(&self.late).insert(pid) {
                eprintln!(
                    "bpftime: process {pid} runs the agent but did not take a new link in within {} s (stopped?); its probes follow when it goes on",
                    ATTACH_WAIT.as_secs()
                );
            }
        }
    }

    /// Has the agent reach the processes a new link of `path` is for: process `pid`, or (0) every
    /// process that maps the file.
    fn reach(&self, pid: u32, path: &str) {
        let pids = if pid != 0 { vec![pid] } else { crate::reach::named_processes_mapping(path) };
        for pid in pids {
            self.reached.ensure(pid, self.region.name());
        }
    }

    /// The name of program `prog`, if it may be attached where programs of type `wanted` run
    /// (as the kernel: a uprobe or kprobe runs kprobe-type programs, a tracepoint
    /// tracepoint-type ones), and (`on_cpu`) it is not one our verifier took only as a CUDA
    /// kernel probe.
    fn attachable(&self, prog: u32, wanted: u32, on_cpu: bool) -> Result<String, Errno> {
        let (name, section) = progs::load(&self.region, prog).map(|p| (p.name, p.section)).unwrap_or_default();
        if attr::prog_type_of(&section) != wanted {
            return Err(libc::EINVAL);
        }
        if on_cpu {
            if let Some(why) = Self::lock(&self.gpu_only).get(&prog) {
                // The kernel's verifier would have refused it at load: say why now.
                eprintln!("bpftime: {why}: it loaded only as a CUDA kernel probe, which cannot attach here");
                return Err(libc::EINVAL);
            }
        }
        Ok(name)
    }

    /// The link of [`Server::attach`], the process it is for (0: every process) and the
    /// probed file (empty for a system call event, None for a CUDA kernel).
    fn store_link(&self, fd: i32, prog: u32, cookie: u64) -> Result<(u32, u32, Option<String>), Errno> {
        let mut fds = Self::lock(&self.fds);
        let Some(Handle::Probe(ev)) = fds.get_mut(&fd) else { return Err(libc::EBADF) };
        if ev.link.is_some() {
            return Err(libc::EEXIST);
        }
        let wanted = match ev.target {
            EventTarget::Syscall(_) => 5,
            EventTarget::CpuClock(_) => 7,
            _ => 2,
        };
        let name = self.attachable(prog, wanted, !matches!(ev.target, EventTarget::CudaKernel(_)))?;
        // pid 0 is the caller for a uprobe, as in the kernel (libbpf's "self"); -1 every
        // process. (A tracepoint's programs run in every process whatever the event's pid, as
        // the kernel runs them; a CUDA kernel probe wherever the kernel runs.)
        let pid = match ev.pid {
            // A task's event: the process of that thread.
            p if p > 0 && matches!(ev.target, EventTarget::CpuClock(_)) => process_of_thread(p as u32),
            p if p > 0 => p as u32,
            0 if matches!(ev.target, EventTarget::File { .. }) => std::process::id(),
            _ => 0,
        };
        let scope = links::LinkScope { owner: std::process::id(), pid, fd: Some(fd), ..Default::default() };
        let (id, path) = match &ev.target {
            EventTarget::Syscall(event) => (links::store_syscall(&self.region, &name, prog, event, scope).map_err(|_| libc::ENOMEM)?, Some(String::new())),
            EventTarget::CpuClock(target) => (links::store_profile(&self.region, &name, prog, *target, scope).map_err(|_| libc::ENOMEM)?, Some(String::new())),
            EventTarget::CudaKernel(kernel) => {
                if std::env::var_os("BPFTIME_VERBOSE").is_some() {
                    eprintln!("bpftime: link `{name}` on CUDA kernel {kernel}{}", if ev.retprobe { " (returns)" } else { "" });
                }
                (links::store_cuda(&self.region, &name, prog, kernel, ev.retprobe, scope).map_err(|_| libc::ENOMEM)?, None)
            }
            EventTarget::File { path, offset, ref_ctr_offset } => {
                let target = format!("{path}:{offset:#x}");
                if std::env::var_os("BPFTIME_VERBOSE").is_some() {
                    eprintln!(
                        "bpftime: link `{name}` on {target}{} (pid {}, semaphore offset {ref_ctr_offset:#x})",
                        if ev.retprobe { " (return)" } else { "" },
                        ev.pid,
                    );
                }
                let scope = links::LinkScope { ref_ctr: *ref_ctr_offset, ..scope };
                (links::store_owned(&self.region, &name, prog, &target, ev.retprobe, cookie, scope).map_err(|_| libc::ENOMEM)?, Some(path.clone()))
            }
        };
        ev.link = Some(id);
        Ok((id, pid, path))
    }

    /// `BPF_OBJ_PIN`: the map, program or link of `bpf_fd` gets a path on a bpffs (whose
    /// directory must exist, as the kernel requires); a pinned link stays attached after its
    /// last fd closes.
    fn obj_pin(&self, a: &Attr) -> Result<i64, Errno> {
        let id = match self.handle(a.u32(8) as i32).ok_or(libc::EBADF)? {
            Handle::Map(id) | Handle::Prog(id) | Handle::Link(id) => id,
            _ => return Err(libc::EINVAL),
        };
        let path = pin_path(a)?;
        let dir = std::path::Path::new(&path).parent().ok_or(libc::ENOENT)?;
        if !on_bpffs(dir) {
            return Err(libc::EPERM);
        }
        if std::fs::symlink_metadata(&path).is_ok() {
            return Err(libc::EEXIST);
        }
        pins::pin(&self.region, &path, id).map_err(|e| match e {
            pins::PinError::Exists(_) => libc::EEXIST,
            pins::PinError::TooLong => libc::ENAMETOOLONG,
            pins::PinError::Shm(_) => libc::ENOMEM,
        })?;
        if self.region.object(id).is_some_and(|o| o.kind == ObjectKind::Link) {
            links::set_owner(&self.region, id, 0);
        }
        Ok(0)
    }

    /// `unlinkat(dirfd, path)` of a pinned path: the pin goes (None: not a pin of ours, the kernel's
    /// unlink). A link nobody holds any more is detached, as the kernel detaches it.
    pub fn unlinked(&self, dirfd: i32, path: &str) -> Option<Result<i64, Errno>> {
        let path = path_at(dirfd, path).ok()?;
        let id = pins::unpin(&self.region, &path)?;
        if self.region.object(id).is_some_and(|o| o.kind == ObjectKind::Link) && !pins::is_pinned(&self.region, id) {
            let held = Self::lock(&self.fds).values().any(|h| matches!(h, Handle::Link(l) if *l == id));
            if held {
                links::set_owner(&self.region, id, std::process::id());
            } else {
                links::remove(&self.region, id);
            }
        }
        Some(Ok(0))
    }

    fn fd_by_id(&self, id: u32, kind: ObjectKind) -> Result<i64, Errno> {
        let o = self.region.object(id).filter(|o| o.kind == kind).ok_or(libc::ENOENT)?;
        if let Some(ids) = Self::lock(&self.multi_links).get(&id).filter(|_| kind == ObjectKind::Link).cloned() {
            return self.install(Handle::MultiLink(ids));
        }
        if kind == ObjectKind::Map && !Self::lock(&self.created_maps).contains(&o.id) {
            // Another process's map: its loader must not remove it while we hold it.
            if let Ok(m) = Map::open(&self.region, o.id) {
                m.add_holder();
                Self::lock(&self.held_maps).insert(o.id);
            }
        }
        self.install(match kind {
            ObjectKind::Map => Handle::Map(o.id),
            ObjectKind::Program => Handle::Prog(o.id),
            _ => Handle::Link(o.id),
        })
    }

    fn next_id(&self, a: &mut Attr, kind: ObjectKind) -> Result<i64, Errno> {
        let start = a.u32(0);
        // As the kernel's `bpf_obj_get_next_id`: ids stay below INT_MAX.
        if start >= i32::MAX as u32 || a.u32(8) != 0 {
            return Err(libc::EINVAL);
        }
        let next = self.region.objects_of_kind(kind).into_iter().filter(|o| o.id > start).map(|o| o.id).min().ok_or(libc::ENOENT)?;
        a.set_u32(4, next);
        Ok(0)
    }

    /// `perf_event_open` of a uprobe, a system call tracepoint or a kprobe on a CUDA kernel (a
    /// name the kernel does not have): ours; None for any other event (it goes to the kernel).
    pub fn perf_event_open(&self, a: &Attr, pid: i32, cpu: i32) -> Option<Result<i64, Errno>> {
        let gone = pid > 0 && !std::path::Path::new(&format!("/proc/{pid}")).exists();
        // PERF_TYPE_SOFTWARE / PERF_COUNT_SW_BPF_OUTPUT: a perf buffer's ring.
        if a.u32(0) == 1 && a.u64(8) == 10 {
            return Some(self.install(Handle::PerfOutput(PerfOutput::default())));
        }
        // PERF_TYPE_SOFTWARE / PERF_COUNT_SW_CPU_CLOCK: a timer (sample_period, or sample_freq
        // when the `freq` flag is set).
        if a.u32(0) == 1 && a.u64(8) == 0 {
            let (flags, sample) = (a.u64(40), a.u64(16));
            let freq = flags & (1 << 10) != 0;
            let period_ns = if freq { 1_000_000_000 / sample.max(1) } else { sample };
            if period_ns == 0 || (pid == -1 && cpu == -1) {
                return Some(Err(libc::EINVAL));
            }
            if gone {
                return Some(Err(libc::ESRCH));
            }
            // Sampling, run where the traced threads run: an event for a task, one asked for a
            // frequency (a profiler's), or one of a series over the CPUs (each CPU's after the
            // first; the first, taken for a tick until then, turns into one too). One for the
            // caller (pid 0) samples the loader: its timer thread runs it there.
            let opened = CPU_CLOCKS_OPENED.fetch_add(1, std::sync::atomic::Ordering::AcqRel);
            if pid > 0 || (pid == -1 && (freq || cpu > 0)) {
                if !freq && pid == -1 {
                    self.ticks_become_samples(period_ns);
                }
                let target = links::ProfileTarget { period_ns, cpu: u32::try_from(cpu).ok(), thread: u32::try_from(pid).ok().filter(|&p| p > 0) };
                return Some(self.install(Handle::Probe(ProbeEvent { target: EventTarget::CpuClock(target), retprobe: false, pid, link: None })));
            }
            let shared = Arc::new(TimerShared::default());
            shared.enabled.store(flags & 1 == 0, std::sync::atomic::Ordering::Release);
            return Some(self.install(Handle::Timer(TimerEvent { period_ns, opened, shared })));
        }
        // PERF_TYPE_TRACEPOINT on a system call event: run in userspace by the agent.
        if a.u32(0) == 2 {
            let event = syscall_event_of_id(a.u64(8))?;
            if gone {
                return Some(Err(libc::ESRCH));
            }
            let ev = ProbeEvent { target: EventTarget::Syscall(event), retprobe: false, pid, link: None };
            return Some(self.install(Handle::Probe(ev)));
        }
        let config = a.u64(8);
        if a.u32(0) == self.kprobe.perf_type {
            // A function the kernel has (or an address: no name) is the kernel's kprobe; any
            // other name is a CUDA kernel, whose probes run in the traced process's GPU code.
            let name = match a.u64(56) {
                0 => return None,
                at => match user::read_cstr(at, 4096) {
                    Ok(name) => name,
                    Err(e) => return Some(Err(e)),
                },
            };
            if name.is_empty() || pmu::is_kernel_symbol(&name) {
                return None;
            }
            // An offset into a CUDA kernel means nothing: probes run at its entry or returns.
            if a.u64(64) != 0 {
                return Some(Err(libc::EINVAL));
            }
            if gone {
                return Some(Err(libc::ESRCH));
            }
            let retprobe = config & (1 << self.kprobe.retprobe_bit) != 0;
            return Some(self.install(Handle::Probe(ProbeEvent { target: EventTarget::CudaKernel(name), retprobe, pid, link: None })));
        }
        let uprobe = self.uprobe.filter(|u| u.perf_type == a.u32(0))?;
        Some(self.uprobe_open(a, pid, cpu, gone, config & (1 << uprobe.retprobe_bit) != 0))
    }

    /// A uprobe event, its attributes checked as the kernel's uprobe PMU checks them: a
    /// process or a CPU, a process that exists, a path to a regular file (a relative one from
    /// this process's directory, kept absolute), an offset inside it, a semaphore offset
    /// aligned to its 2 bytes.
    fn uprobe_open(&self, a: &Attr, pid: i32, cpu: i32, gone: bool, retprobe: bool) -> Result<i64, Errno> {
        if pid == -1 && cpu == -1 {
            return Err(libc::EINVAL);
        }
        if gone {
            return Err(libc::ESRCH);
        }
        let (offset, ref_ctr_offset) = (a.u64(64), a.u64(8) >> 32);
        let path = match a.u64(56) {
            0 => return Err(libc::EINVAL),
            at => user::read_cstr(at, 4096)?,
        };
        if path.is_empty() {
            return Err(libc::EINVAL);
        }
        let meta = std::fs::metadata(&path).map_err(|e| e.raw_os_error().unwrap_or(libc::ENOENT))?;
        if !meta.is_file() || offset > meta.len() || ref_ctr_offset % 2 != 0 {
            return Err(libc::EINVAL);
        }
        // The file the path names here: a relative path from this directory, a link of this
        // process's (`/proc/self/exe`: this loader's executable) to its target, as the kernel
        // takes it. (`/proc/PID/root/...` stays: its target is in that process's mounts.)
        let path = if path.starts_with("/proc/self/") || path.starts_with("/proc/thread-self/") {
            std::fs::canonicalize(&path).map_err(|_| libc::ENOENT)?.to_string_lossy().into_owned()
        } else if path.starts_with('/') {
            path
        } else {
            std::path::absolute(&path).map_err(|_| libc::ENOENT)?.to_string_lossy().into_owned()
        };
        self.install(Handle::Probe(ProbeEvent { target: EventTarget::File { path, offset, ref_ctr_offset }, retprobe, pid, link: None }))
    }

    /// Says (once per program) that program `prog` was asked to attach to a kernel event, perf
    /// event fd `fd`, which only the kernel runs; the errno for the caller.
    pub(crate) fn kernel_event_refused(&self, prog: u32, fd: i32) -> Errno {
        if Self::lock(&self.told_kernel_only).insert(prog) {
            let name = progs::load(&self.region, prog).map(|p| p.name).unwrap_or_default();
            eprintln!(
                "bpftime: `{name}` attaches to a kernel event (perf event fd {fd}: a tracepoint, kprobe or hardware event), which only the kernel runs: start the loader with `bpftime load --kernel-passthrough`"
            );
        }
        libc::EINVAL
    }

    /// `ioctl` on one of our perf event fds: None when `fd` is not one.
    pub fn perf_ioctl(&self, fd: i32, request: u64, arg: u64) -> Option<Result<i64, Errno>> {
        match self.handle(fd) {
            Some(Handle::Probe(_)) => {}
            // Enable, disable: the ring is always on.
            Some(Handle::PerfOutput(_)) => return Some(Ok(0)),
            Some(Handle::Timer(t)) => return Some(self.timer_ioctl(&t, request, arg)),
            _ => return None,
        }
        Some(match request {
            attr::PERF_EVENT_IOC_SET_BPF => self.prog_id(arg as u32).and_then(|prog| self.attach(fd, prog, 0)).map(|_| 0),
            _ => Ok(0),
        })
    }

    /// Turns this loader's ticking CPU-clock event of period `period_ns` opened last (for CPU
    /// 0 alone: see [`TimerEvent`]) into a sampling one, when the event opened right after it
    /// is another CPU's of the same period and shows it to be the first of a series over the
    /// CPUs (bpftrace's `profile:ms:N`): its loader thread stops and the program it runs, if
    /// any, is linked to sample CPU 0 in the traced processes. (Its fd's copies, `dup`s, turn
    /// with it and hold no link of their own.)
    fn ticks_become_samples(&self, period_ns: u64) {
        use std::sync::atomic::Ordering::{Acquire, Release};
        let turned: Option<(i32, u32)> = {
            let mut fds = Self::lock(&self.fds);
            let now = CPU_CLOCKS_OPENED.load(Acquire);
            let last = fds.values().filter_map(|h| match h {
                Handle::Timer(t) => Some(t.clone()),
                _ => None,
            });
            let Some(tick) = last.max_by_key(|t| t.opened).filter(|t| t.period_ns == period_ns && t.opened + 2 == now) else { return };
            tick.shared.stopped.store(true, Release);
            let copies: Vec<i32> =
                fds.iter().filter(|(_, h)| matches!(h, Handle::Timer(t) if Arc::ptr_eq(&t.shared, &tick.shared))).map(|(fd, _)| *fd).collect();
            let target = links::ProfileTarget { period_ns, cpu: Some(0), thread: None };
            for &fd in &copies {
                fds.insert(fd, Handle::Probe(ProbeEvent { target: EventTarget::CpuClock(target), retprobe: false, pid: -1, link: None }));
            }
            copies.into_iter().min().map(|fd| (fd, tick.shared.prog.load(Acquire)))
        };
        for (fd, prog) in turned.into_iter().filter(|&(_, prog)| prog != 0) {
            if let Err(e) = self.attach(fd, prog, 0) {
                eprintln!("bpftime: a CPU-clock event's program could not move to the traced processes (errno {e})");
            }
        }
    }

    fn timer_ioctl(&self, t: &TimerEvent, request: u64, arg: u64) -> Result<i64, Errno> {
        use std::sync::atomic::Ordering::{AcqRel, Release};
        match request {
            attr::PERF_EVENT_IOC_SET_BPF => {
                let prog = self.prog_id(arg as u32)?;
                if t.shared.prog.swap(prog, AcqRel) == 0 {
                    let (region, period, shared) = (self.region.clone(), t.period_ns, t.shared.clone());
                    bpftime_runtime::threads::spawn_quiet("bpftime-timer", move || crate::beside::quiet(|| run_timer(region, period, shared)))
                        .map_err(|_| libc::EAGAIN)?;
                }
                Ok(0)
            }
            attr::PERF_EVENT_IOC_ENABLE => {
                t.shared.enabled.store(true, Release);
                Ok(0)
            }
            attr::PERF_EVENT_IOC_DISABLE => {
                t.shared.enabled.store(false, Release);
                Ok(0)
            }
            _ => Ok(0),
        }
    }

    /// `mmap` of one of our map fds: (region offset, bytes available) of what to map, or None
    /// when `fd` is not ours. A map's mapping is checked as the kernel's `bpf_map_mmap`: shared
    /// only, a map type that can be mapped (`ENOTSUPP` otherwise; an array made with
    /// `BPF_F_MMAPABLE`), no writes to a frozen map or to a ring buffer past its consumer
    /// page (`EPERM`), an array's pages only.
    pub fn mmap_source(&self, fd: i32, offset: u64, len: u64, prot: i32, flags: i32) -> Option<Result<(u64, u64), Errno>> {
        let (id, perf_slot) = match self.handle(fd) {
            Some(Handle::Map(id)) => (id, None),
            Some(Handle::PerfOutput(PerfOutput { bound: Some((id, slot)), .. })) => (id, Some(slot)),
            // Not in a PERF_EVENT_ARRAY yet: zeroes for now (see `PerfOutput`).
            Some(Handle::PerfOutput(PerfOutput { bound: None, .. })) => return Some(Ok((u64::MAX, len))),
            _ => return None,
        };
        Some((|| {
            let map = Map::open(&self.region, id).map_err(|_| libc::EBADF)?;
            let (start, size) = match perf_slot {
                // The consumer's ring must be ours: its size is what it wraps at.
                Some(slot) => {
                    let area = map.perf_ring_area(slot).ok_or(libc::EINVAL)?;
                    Self::size_perf_ring(&map, slot, len)?;
                    area
                }
                None => {
                    /// The kernel's ENOTSUPP (not a userspace errno).
                    const ENOTSUPP: Errno = 524;
                    let kind = flags & libc::MAP_TYPE;
                    if kind != libc::MAP_SHARED && kind != libc::MAP_SHARED_VALIDATE {
                        return Err(libc::EINVAL);
                    }
                    let area = match map.map_type() {
                        MapType::Array | MapType::Ringbuf => map.mmap_area().ok_or(libc::EINVAL)?,
                        _ => return Err(ENOTSUPP),
                    };
                    let writes = prot & libc::PROT_WRITE != 0;
                    if writes && map.is_frozen() {
                        return Err(libc::EPERM);
                    }
                    if writes && map.map_type() == MapType::Ringbuf && (offset != 0 || len != 4096) {
                        return Err(libc::EPERM);
                    }
                    if map.map_type() == MapType::Array && offset.saturating_add(len) > area.1.div_ceil(4096) * 4096 {
                        return Err(libc::EINVAL);
                    }
                    area
                }
            };
            if offset >= size || !offset.is_multiple_of(4096) {
                return Err(libc::EINVAL);
            }
            Ok((start + offset, (size - offset).min(len)))
        })())
    }

    /// A consumer maps `len` bytes of a perf ring: a header page and a power of two of data
    /// pages, which the ring takes as its size.
    fn size_perf_ring(map: &Map, slot: u32, len: u64) -> Result<(), Errno> {
        let data = len.checked_sub(4096).ok_or(libc::EINVAL)?;
        map.set_perf_ring_size(slot, data).map_err(|_| {
            eprintln!(
                "bpftime: a perf buffer of {} pages per CPU was asked for; bpftime's take a power of two up to {}",
                data / 4096,
                bpftime_maps::MAX_RING_PAGES
            );
            libc::EINVAL
        })
    }

    /// Records where the consumer mapped perf event `fd` (not yet in a PERF_EVENT_ARRAY).
    pub fn perf_mapped(&self, fd: i32, addr: u64, len: u64) {
        if let Some(Handle::PerfOutput(p)) = Self::lock(&self.fds).get_mut(&fd) {
            p.mapped = Some((addr, len));
        }
    }

    /// Our ring buffer maps and perf buffer rings, for the readiness watcher: (fd, region
    /// offset of the position a consumer reads from, of the one a producer writes).
    pub fn ring_fds(&self) -> Vec<(i32, u64, u64)> {
        let fds: Vec<(i32, Handle)> = Self::lock(&self.fds).iter().map(|(fd, h)| (*fd, h.clone())).collect();
        fds.into_iter()
            .filter_map(|(fd, h)| match h {
                Handle::Map(id) => {
                    let map = Map::open(&self.region, id).ok()?;
                    let (start, _) = map.mmap_area().filter(|_| map.map_type() == MapType::Ringbuf)?;
                    Some((fd, start, start + 4096))
                }
                // perf_event_mmap_page: data_head at 1024, data_tail at 1032.
                Handle::PerfOutput(PerfOutput { bound: Some((id, slot)), .. }) => {
                    let (start, _) = Map::open(&self.region, id).ok()?.perf_ring_area(slot)?;
                    Some((fd, start + 1032, start + 1024))
                }
                _ => None,
            })
            .collect()
    }
}

/// Program types that attach to kernel functions by BTF id (`BPF_PROG_TYPE_TRACING`,
/// `STRUCT_OPS`, `EXT`, `LSM`): nothing in userspace can run them.
fn attached_by_btf_id(prog_type: u32) -> bool {
    matches!(prog_type, 26..=29)
}

/// The id the kernel gives its own BTF.
const KERNEL_BTF_ID: u32 = 1;

/// The id bpf() shows for BTF object `object` of the region: after vmlinux's.
fn btf_id_of(object: u32) -> u32 {
    object + KERNEL_BTF_ID
}

/// The region's BTF object bpf() shows as `id`, if `id` can be one.
fn btf_object_of(id: u32) -> Option<u32> {
    id.checked_sub(KERNEL_BTF_ID).filter(|&b| b > 0)
}

/// The kernel's BTF, read once (None where the kernel has none).
fn kernel_btf() -> Option<&'static [u8]> {
    static DATA: std::sync::OnceLock<Option<Vec<u8>>> = std::sync::OnceLock::new();
    DATA.get_or_init(|| std::fs::read("/sys/kernel/btf/vmlinux").ok()).as_deref()
}
