//! System call programs (`tracepoint/syscalls/sys_enter_NAME`, `sys_exit_NAME`,
//! `raw_tracepoint/sys_enter|sys_exit`) and the process events calls cause
//! (`tracepoint/sched/sched_process_exec|exit|fork|wait`, `signal/signal_generate|deliver`): the tables the hook engine's SIGSYS path
//! runs, made from the region's syscall links. Interception starts only when a process has such a link:
//! one without them pays nothing.

use bpftime_attach::syscalls::{self as interception, SyscallHandler};
use bpftime_attach::PtRegs;
use bpftime_runtime::links::{self, LinkKind, LinkState, UprobeLink};
use bpftime_runtime::process_events::{Format, Value};
use bpftime_runtime::syscall_events::{enter_record, event_id, exit_record, raw_record, ProcessEvent, SyscallEvent};
use bpftime_runtime::{ProbeProgram, Runtime};
use std::sync::atomic::{AtomicBool, AtomicPtr, AtomicU32, Ordering};
use std::sync::{Arc, OnceLock};

/// A program on a system call event, with the event's `common_type`.
struct Entry {
    probe: ProbeProgram,
    id: u16,
    /// Its first failure was said (no lock: this runs in signal handlers).
    reported: AtomicBool,
}

/// The programs of every event, swapped whole when links come or go (old tables are leaked: a
/// thread may still be running one).
#[derive(Default)]
struct Tables {
    enter: Vec<Vec<Entry>>,
    exit: Vec<Vec<Entry>>,
    raw_enter: Vec<Entry>,
    raw_exit: Vec<Entry>,
    /// `raw_syscalls` tracepoints: every call, with its record.
    any_enter: Vec<Entry>,
    any_exit: Vec<Entry>,
    /// `sched_process_*` tracepoints, with their events' record layouts.
    process_exec: Vec<(Entry, Format)>,
    process_exit: Vec<(Entry, Format)>,
    process_fork: Vec<(Entry, Format)>,
    process_wait: Vec<(Entry, Format)>,
    signal_generate: Vec<(Entry, Format)>,
    signal_deliver: Vec<(Entry, Format)>,
}

/// The agent's handler of system calls.
struct Programs {
    runtime: &'static Runtime,
    tables: AtomicPtr<Tables>,
}

use bpftime_shm::ids::thread_id as tid;

impl Programs {
    fn tables(&self) -> &Tables {
        // SAFETY: tables are leaked boxes, never freed, only replaced.
        unsafe { &*self.tables.load(Ordering::Acquire) }
    }

    /// Runs the programs; the result the last of them asked the call to return without
    /// being made (`bpf_override_return`), if any.
    fn run<R: AsRef<[u8]>>(&self, entries: &[Entry], record: impl Fn(&Entry) -> R, level: usize) -> Option<u64> {
        let mut skip = None;
        for e in entries {
            match self.runtime.run_probe(&e.probe, record(e).as_ref(), level) {
                Ok(run) => skip = run.override_return.or(skip),
                Err(err) => report(e, err),
            }
        }
        skip
    }
}

impl Programs {
    /// Runs `sched_process_*` programs on a record of their event by thread `tid`.
    fn run_process(&self, entries: &[(Entry, Format)], tid: u32, values: &[(&str, Value)], level: usize) {
        for (e, format) in entries {
            let record = format.record(tid, values);
            if let Err(err) = self.runtime.run_probe(&e.probe, &record, level) {
                report(e, err);
            }
        }
    }

    /// `sched_process_exit` for a thread calling `exit(status)`, or for every thread of the
    /// process at `exit_group(status)`: the others first, each run here as that thread (its id
    /// and name are what programs see: the kernel runs them on the threads themselves, which
    /// are past reach here), then the caller, whose exit ends the group (`group_dead`). Each
    /// task's `exit_code` is the status in bits 8-15, as the kernel sets it. Then, when the
    /// process ends, the `signal_generate` of its exit signal to its parent.
    fn threads_exit(&self, entries: &[(Entry, Format)], group: bool, status: i32, level: usize) {
        let code = (status & 0xff) << 8;
        let me = tid();
        let others = other_threads(me);
        if !group {
            EXITED.add(me);
        }
        let exit = |tid: u32, name: &[u8], group_dead: bool| {
            // SAFETY: getpriority(2) on one thread (a thread gone meanwhile reads as nice -1).
            let nice = unsafe { libc::getpriority(libc::PRIO_PROCESS, tid) };
            let values = [
                ("comm", Value::Str(name)),
                ("pid", Value::Int(tid as i64)),
                ("prio", Value::Int(120 + nice as i64)),
                ("group_dead", Value::Int(group_dead as i64)),
            ];
            bpftime_runtime::set_exit_code(code);
            self.run_process(entries, tid, &values, level);
        };
        if group {
            for &other in &others {
                let name = task_name(other);
                as_thread(other, &name, || exit(other, &name, false));
            }
        }
        let own = thread_name();
        let group_dead = group || others.is_empty();
        exit(me, until_nul(&own), group_dead);
        // (Back to 0: a `vfork` child's end ran here on its parent's thread-locals.)
        bpftime_runtime::set_exit_code(0);
        // The process's end sends its parent its exit signal (`SIGCHLD` for a child of `fork`),
        // unless that is a `SIGCHLD` the parent ignores (the kernel then sends nothing). The
        // kernel's target is the thread that made the process; here, its parent process.
        let t = self.tables();
        if group_dead && !t.signal_generate.is_empty() {
            let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
            let exit_signal = stat_field(&stat, 38).and_then(|f| f.parse::<i32>().ok()).unwrap_or(0);
            // SAFETY: getppid(2) cannot fail.
            let parent = unsafe { libc::getppid() } as u32;
            let status = std::fs::read_to_string(format!("/proc/{parent}/status")).unwrap_or_default();
            let ignored = exit_signal == libc::SIGCHLD && signal_set(&status, "SigIgn:") & 1 << (libc::SIGCHLD - 1) != 0;
            if (1..=64).contains(&exit_signal) && parent != 0 && !ignored {
                const CLD_EXITED: i32 = 1;
                let send = SignalSend { sig: exit_signal, code: CLD_EXITED, errno: 0, targets: vec![(parent, None)], checked: false };
                self.signals_generated(&t.signal_generate, &send, level);
            }
        }
    }

    /// `signal_generate` for each target of `send` that the call will reach.
    fn signals_generated(&self, entries: &[(Entry, Format)], send: &SignalSend, level: usize) {
        for &(tgid, thread) in &send.targets {
            let task = thread.unwrap_or(tgid);
            // SAFETY: kill(2)/tgkill(2) with signal 0 send nothing: they say whether the call
            // would reach the target (it exists, and we may signal it).
            let reachable = !send.checked
                || unsafe {
                    match thread {
                        Some(t) => libc::syscall(libc::SYS_tgkill, tgid, t, 0),
                        None => libc::syscall(libc::SYS_kill, tgid, 0),
                    }
                } == 0;
            if !reachable {
                continue;
            }
            let dir = format!("/proc/{tgid}/task/{task}");
            let name = std::fs::read(format!("{dir}/comm")).unwrap_or_default();
            let name = name.strip_suffix(b"\n").unwrap_or(&name);
            // This thread's mask is the application's, not the one our work runs with.
            let own_mask = (task == tid()).then(bpftime_attach::syscalls::application_signal_mask).flatten();
            let result = signal_result(&std::fs::read_to_string(format!("{dir}/status")).unwrap_or_default(), send.sig, thread.is_none(), own_mask);
            let values = [
                ("sig", Value::Int(send.sig as i64)),
                ("errno", Value::Int(send.errno as i64)),
                ("code", Value::Int(send.code as i64)),
                ("comm", Value::Str(name)),
                ("pid", Value::Int(task as i64)),
                ("group", Value::Int(thread.is_none() as i64)),
                ("result", Value::Int(result)),
            ];
            self.run_process(entries, tid(), &values, level);
        }
    }
}

/// The process's threads still running but `me` (one that ended stays listed until the process
/// ends, a zombie), not the agent's own.
fn other_threads(me: u32) -> Vec<u32> {
    let alive = |t: u32| {
        let stat = std::fs::read_to_string(format!("/proc/self/task/{t}/stat")).unwrap_or_default();
        stat_field(&stat, 3).is_some_and(|state| state != "Z" && state != "X")
    };
    numbered_entries(c"/proc/self/task").into_iter().filter(|&t| t != me && !bpftime_runtime::threads::is_ours(t) && !EXITED.contains(t) && alive(t)).collect()
}

/// Thread `t`'s name (`comm`), as `/proc` gives it.
fn task_name(t: u32) -> Vec<u8> {
    let mut name = std::fs::read(format!("/proc/self/task/{t}/comm")).unwrap_or_default();
    if name.last() == Some(&b'\n') {
        name.pop();
    }
    name
}

/// A signal a call is about to send: its number, the `si_code` and `si_errno` it carries, and
/// its targets (a process, or one of its threads: `(tgid, Some(tid))`).
struct SignalSend {
    sig: i32,
    code: i32,
    errno: i32,
    targets: Vec<(u32, Option<u32>)>,
    /// Whether the kernel checks that the sender may signal each target (not for the exit
    /// signal a process's end sends).
    checked: bool,
}

impl SignalSend {
    /// The signal call `nr` with `args` sends, if it is one that sends a signal: `kill` (to a
    /// process, or to each process of a group: `pid` 0 or below -1; not `-1`, every process),
    /// `tkill`, `tgkill`, `rt_sigqueueinfo` and `rt_tgsigqueueinfo`.
    fn of(nr: u64, args: &[u64; 6]) -> Option<SignalSend> {
        const SI_USER: i32 = 0;
        const SI_TKILL: i32 = -6;
        let (sig, code, errno, targets) = match nr as i64 {
            libc::SYS_kill => {
                let pid = args[0] as i32;
                let targets = match pid {
                    p if p > 0 => vec![(p as u32, None)],
                    // SAFETY: getpgid(2) on this process cannot fail.
                    0 => group_members(unsafe { libc::getpgid(0) } as u32),
                    -1 => return None,
                    p => group_members(p.unsigned_abs()),
                };
                (args[1] as i32, SI_USER, 0, targets)
            }
            libc::SYS_tkill => {
                let tid = args[0] as i32;
                let status = std::fs::read_to_string(format!("/proc/{tid}/status")).ok()?;
                let tgid = status.lines().find_map(|l| l.strip_prefix("Tgid:"))?.trim().parse().ok()?;
                (args[1] as i32, SI_TKILL, 0, vec![(tgid, Some(tid as u32))])
            }
            libc::SYS_tgkill => (args[2] as i32, SI_TKILL, 0, vec![(args[0] as u32, Some(args[1] as u32))]),
            // Another process may not be sent a code of the kernel's (0 and up) or `SI_TKILL`.
            libc::SYS_rt_sigqueueinfo | libc::SYS_rt_tgsigqueueinfo => {
                let group = nr as i64 == libc::SYS_rt_sigqueueinfo;
                let (code, errno) = siginfo_code(if group { args[2] } else { args[3] });
                // SAFETY: getpid(2) cannot fail.
                if (code >= 0 || code == SI_TKILL) && args[0] as u32 != unsafe { libc::getpid() } as u32 {
                    return None;
                }
                let (sig, target) = if group { (args[1], None) } else { (args[2], Some(args[1] as u32)) };
                (sig as i32, code, errno, vec![(args[0] as u32, target)])
            }
            _ => return None,
        };
        (1..=64).contains(&sig).then_some(SignalSend { sig, code, errno, targets, checked: true })
    }
}

/// The processes of process group `pgrp`, by id (from `/proc/*/stat`).
fn group_members(pgrp: u32) -> Vec<(u32, Option<u32>)> {
    let mut members: Vec<u32> = numbered_entries(c"/proc")
        .into_iter()
        .filter(|pid| {
            let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
            stat_field(&stat, 5).and_then(|f| f.parse::<u32>().ok()) == Some(pgrp)
        })
        .collect();
    members.sort_unstable();
    members.into_iter().map(|p| (p, None)).collect()
}

/// The entries of directory `path` whose names are numbers (processes, threads), read with
/// getdents64(2): no libc call that takes a lock or allocates (`opendir` does both), since this
/// runs where the application's call may have come from inside them.
fn numbered_entries(path: &std::ffi::CStr) -> Vec<u32> {
    let mut found = vec![];
    // SAFETY: open(2) of a NUL-terminated path, read-only.
    let fd = unsafe { libc::open(path.as_ptr(), libc::O_RDONLY | libc::O_DIRECTORY | libc::O_CLOEXEC) };
    if fd < 0 {
        return found;
    }
    let mut buf = vec![0u8; 8192];
    loop {
        // SAFETY: getdents64(2) writes at most `buf.len()` bytes of records into `buf`.
        let n = unsafe { libc::syscall(libc::SYS_getdents64, fd, buf.as_mut_ptr(), buf.len()) };
        if n <= 0 {
            break;
        }
        let mut at = 0usize;
        // Each record: inode (8), offset (8), length (2), type (1), NUL-terminated name.
        while at + 19 < n as usize {
            let len = u16::from_le_bytes([buf[at + 16], buf[at + 17]]) as usize;
            if len == 0 || at + len > n as usize {
                break;
            }
            let name = &buf[at + 19..at + len];
            let name = &name[..name.iter().position(|&c| c == 0).unwrap_or(name.len())];
            if let Some(v) = std::str::from_utf8(name).ok().and_then(|s| s.parse().ok()) {
                found.push(v);
            }
            at += len;
        }
    }
    // SAFETY: closes the descriptor opened above.
    unsafe { libc::close(fd) };
    found
}

/// `si_code` and `si_errno` of the siginfo the caller passes at `at` (read with
/// process_vm_readv(2), so that a bad address reads as zeros rather than faulting).
fn siginfo_code(at: u64) -> (i32, i32) {
    let mut head = [0i32; 3];
    let local = libc::iovec { iov_base: head.as_mut_ptr().cast(), iov_len: 12 };
    let remote = libc::iovec { iov_base: at as *mut libc::c_void, iov_len: 12 };
    // SAFETY: process_vm_readv(2) on this process writes at most 12 bytes into `head` and
    // checks the remote range itself.
    let got = unsafe { libc::process_vm_readv(libc::getpid(), &local, 1, &remote, 1, 0) };
    if got == 12 {
        // siginfo_t: si_signo, si_errno, si_code.
        (head[2], head[1])
    } else {
        (0, 0)
    }
}

/// The `result` the kernel's `signal_generate` gives a signal sent to a task whose
/// `/proc/.../status` is `status` (and whose blocked signals are `mask`, where given): 1 where the task ignores it (not blocked, and its action is
/// `SIG_IGN`, or the default for a signal whose default is to ignore it), 2 where a signal
/// below `SIGRTMIN` is pending already (the process's shared set for a `group` signal, the
/// thread's own otherwise), else 0 (delivered).
fn signal_result(status: &str, sig: i32, group: bool, mask: Option<u64>) -> i64 {
    let set = |name: &str| signal_set(status, name);
    let bit = 1u64 << (sig - 1);
    let default_ignored = [libc::SIGCONT, libc::SIGCHLD, libc::SIGWINCH, libc::SIGURG].contains(&sig);
    let blocked = mask.unwrap_or_else(|| set("SigBlk:")) & bit != 0;
    if !blocked && (set("SigIgn:") & bit != 0 || (default_ignored && set("SigCgt:") & bit == 0)) {
        return 1;
    }
    let pending = if group { set("ShdPnd:") } else { set("SigPnd:") };
    if sig < 32 && pending & bit != 0 {
        return 2;
    }
    0
}

/// Signal set `name` (`SigIgn:`) of a `/proc/.../status`.
fn signal_set(status: &str, name: &str) -> u64 {
    status.lines().find_map(|l| l.strip_prefix(name)).and_then(|v| u64::from_str_radix(v.trim(), 16).ok()).unwrap_or(0)
}

/// Runs the `signal_deliver` programs as a signal is about to run the application's handler
/// `handler` (see `bpftime_attach::signals::observe_deliveries`).
fn delivered(sig: libc::c_int, info: *const libc::siginfo_t, handler: usize) {
    let Some(p) = PROGRAMS.get() else { return };
    let t = p.tables();
    if t.signal_deliver.is_empty() {
        return;
    }
    bpftime_attach::run_as_hit(|level| {
        // (Read as our own work: not a call of the application's.)
        let flags = bpftime_attach::signals::action_flags(sig);
        let (errno, code) = if flags & libc::SA_SIGINFO as u64 != 0 && !info.is_null() {
            // SAFETY: the kernel filled the siginfo it passed the handler (SA_SIGINFO is set).
            unsafe { ((*info).si_errno, (*info).si_code) }
        } else {
            (0, 0)
        };
        let values = [
            ("sig", Value::Int(sig as i64)),
            ("errno", Value::Int(errno as i64)),
            ("code", Value::Int(code as i64)),
            ("sa_handler", Value::Int(handler as i64)),
            ("sa_flags", Value::Int(flags as i64)),
        ];
        p.run_process(&t.signal_deliver, tid(), &values, level)
    });
}

/// What `sched_process_wait` reports a `wait4` or `waitid` waits for, as the kernel names it: a
/// process id, a process group's id (`wait4(-PGID)`, `wait4(0)`: the caller's group, `waitid`
/// with `P_PGID`), or 0 for any child; None for other calls.
fn waited_for(nr: u64, args: &[u64; 6]) -> Option<i64> {
    const P_ALL: u64 = 0;
    const P_PID: u64 = 1;
    const P_PGID: u64 = 2;
    // SAFETY: getpgid(2) on this process cannot fail.
    let own_group = || unsafe { libc::getpgid(0) } as i64;
    match nr as i64 {
        libc::SYS_wait4 => Some(match args[0] as i32 {
            -1 => 0,
            0 => own_group(),
            p if p < 0 => -(p as i64),
            p => p as i64,
        }),
        libc::SYS_waitid => match args[0] {
            P_ALL => Some(0),
            P_PID => Some(args[1] as i32 as i64),
            P_PGID if args[1] == 0 => Some(own_group()),
            P_PGID => Some(args[1] as i32 as i64),
            _ => None,
        },
        _ => None,
    }
}

/// Threads whose `exit` was reported here: until the kernel has them gone, which it does after
/// `pthread_join` returns, they are still listed in `/proc/self/task` as running, and an
/// `exit_group` meanwhile must not report their end again. (Recent ones: a ring.)
struct Exited {
    tids: [AtomicU32; 64],
    next: AtomicU32,
}

static EXITED: Exited = Exited { tids: [const { AtomicU32::new(0) }; 64], next: AtomicU32::new(0) };

impl Exited {
    fn add(&self, tid: u32) {
        let i = self.next.fetch_add(1, Ordering::Relaxed) as usize % self.tids.len();
        self.tids[i].store(tid, Ordering::Release);
    }

    fn contains(&self, tid: u32) -> bool {
        self.tids.iter().any(|t| t.load(Ordering::Acquire) == tid)
    }

    fn remove(&self, tid: u32) {
        // (A locked exchange only where the id is there: this runs at every new thread.)
        for t in self.tids.iter().filter(|t| t.load(Ordering::Relaxed) == tid) {
            let _ = t.compare_exchange(tid, 0, Ordering::AcqRel, Ordering::Relaxed);
        }
    }
}

/// Runs `f` as thread `tid` named `name` would run it: the thread id the helpers report and
/// the thread's name are that thread's meanwhile.
fn as_thread(tid: u32, name: &[u8], f: impl FnOnce()) {
    with_thread_name(name, || bpftime_shm::ids::as_thread(tid, f));
}

/// Runs `f` with this thread named `name` (cut to 15 bytes), its own name back after (the
/// renames are the agent's own calls: the application's system call programs do not see them).
fn with_thread_name(name: &[u8], f: impl FnOnce()) {
    let own = bpftime_attach::without_probes(thread_name);
    bpftime_attach::without_probes(|| set_thread_name(name));
    f();
    bpftime_attach::without_probes(|| set_thread_name(until_nul(&own)));
}

/// Field `n` (numbered from 1 as in proc(5); the name, field 2, may hold spaces and
/// parentheses, so from 3 on) of a `/proc/.../stat` text.
fn stat_field(stat: &str, n: usize) -> Option<&str> {
    stat.rsplit_once(')')?.1.split_whitespace().nth(n.checked_sub(3)?)
}

/// This thread's name (prctl(2) `PR_GET_NAME`), NUL-padded.
fn thread_name() -> [u8; 17] {
    let mut name = [0u8; 17];
    // SAFETY: PR_GET_NAME writes at most 16 bytes into the 17-byte buffer.
    unsafe { libc::prctl(libc::PR_GET_NAME, name.as_mut_ptr(), 0, 0, 0) };
    name
}

/// Names this thread `name` (cut to 15 bytes).
fn set_thread_name(name: &[u8]) {
    let mut buf = [0u8; 16];
    let n = name.len().min(15);
    buf[..n].copy_from_slice(&name[..n]);
    // SAFETY: PR_SET_NAME reads a NUL-terminated name of at most 16 bytes.
    unsafe { libc::prctl(libc::PR_SET_NAME, buf.as_ptr(), 0, 0, 0) };
}

fn until_nul(b: &[u8]) -> &[u8] {
    &b[..b.iter().position(|&c| c == 0).unwrap_or(b.len())]
}

#[cold]
#[inline(never)]
fn report(e: &Entry, err: bpftime_vm::exec::RunError) {
    if !e.reported.swap(true, Ordering::Relaxed) {
        eprintln!("bpftime: program `{}` failed: {err} (reported once)", e.probe.program.name);
    }
}

impl SyscallHandler for Programs {
    /// A `bpf_override_return(ctx, rc)` from a program on the call's entry (bpftime's error
    /// injection at system calls, as its syscall tracepoints allow) skips the call: it returns
    /// `rc`.
    fn on_enter(&self, regs: &PtRegs, level: usize) -> Option<u64> {
        let t = self.tables();
        let nr = regs.orig_ax;
        let args = [regs.di, regs.si, regs.dx, regs.r10, regs.r8, regs.r9];
        let mut skip = None;
        if let Some(list) = t.enter.get(nr as usize).filter(|l| !l.is_empty()) {
            let tid = tid();
            skip = self.run(list, |e| enter_record(e.id, tid, nr as u32, args), level).or(skip);
        }
        if !t.any_enter.is_empty() {
            let tid = tid();
            skip = self.run(&t.any_enter, |e| enter_record(e.id, tid, nr as u32, args), level).or(skip);
        }
        if !t.raw_enter.is_empty() {
            // The kernel's pt_regs at sys_enter hold -ENOSYS in ax.
            let regs = PtRegs { ax: -(libc::ENOSYS as i64) as u64, ..*regs };
            skip = self.run(&t.raw_enter, |_| raw_record(&regs as *const PtRegs as u64, nr), level).or(skip);
        }
        if skip.is_none() && !t.process_wait.is_empty() {
            if let Some(pid) = waited_for(nr, &args) {
                let name = thread_name();
                // SAFETY: getpriority(2) on this thread.
                let nice = unsafe { libc::getpriority(libc::PRIO_PROCESS, 0) };
                let values = [("comm", Value::Str(until_nul(&name))), ("pid", Value::Int(pid)), ("prio", Value::Int(120 + nice as i64))];
                self.run_process(&t.process_wait, tid(), &values, level);
            }
        }
        // A signal about to be sent, where the call is made and will succeed.
        if skip.is_none() && !t.signal_generate.is_empty() {
            if let Some(send) = SignalSend::of(nr, &args) {
                self.signals_generated(&t.signal_generate, &send, level);
            }
        }
        // What a thread's end causes, after its call's entry programs as on the kernel (these
        // calls are made whatever the programs ask).
        if (!t.process_exit.is_empty() || !t.signal_generate.is_empty()) && matches!(nr as i64, libc::SYS_exit | libc::SYS_exit_group) {
            self.threads_exit(&t.process_exit, nr as i64 == libc::SYS_exit_group, regs.di as i32, level);
        }
        skip
    }

    fn on_exit(&self, regs: &PtRegs, level: usize) {
        let t = self.tables();
        let nr = regs.orig_ax;
        // In the caller, the new thread's or process's id (its child sees 0).
        let forks = matches!(nr as i64, libc::SYS_clone | libc::SYS_clone3 | libc::SYS_fork | libc::SYS_vfork);
        if forks && (regs.ax as i64) > 0 {
            // A new thread may have an id an ended one had.
            EXITED.remove(regs.ax as u32);
        }
        if !t.process_fork.is_empty() && forks && (regs.ax as i64) > 0 {
            let (name, tid) = (thread_name(), tid());
            let name = until_nul(&name);
            let values = [
                ("parent_comm", Value::Str(name)),
                ("parent_pid", Value::Int(tid as i64)),
                ("child_comm", Value::Str(name)),
                ("child_pid", Value::Int(regs.ax as i64)),
            ];
            self.run_process(&t.process_fork, tid, &values, level);
        }
        // (An exit program cannot change the result: the call was made.)
        if let Some(list) = t.exit.get(nr as usize).filter(|l| !l.is_empty()) {
            let tid = tid();
            let _ = self.run(list, |e| exit_record(e.id, tid, nr as u32, regs.ax as i64), level);
        }
        if !t.any_exit.is_empty() {
            let tid = tid();
            let _ = self.run(&t.any_exit, |e| exit_record(e.id, tid, nr as u32, regs.ax as i64), level);
        }
        if !t.raw_exit.is_empty() {
            let _ = self.run(&t.raw_exit, |_| raw_record(regs as *const PtRegs as u64, regs.ax), level);
        }
    }

    fn on_miss(&self, nr: u64) {
        let t = self.tables();
        let lists = [t.enter.get(nr as usize), t.exit.get(nr as usize), Some(&t.raw_enter), Some(&t.raw_exit), Some(&t.any_enter), Some(&t.any_exit)];
        for e in lists.into_iter().flatten().flatten() {
            self.runtime.count_miss(e.probe.program.id);
        }
        let process = match nr as i64 {
            libc::SYS_exit | libc::SYS_exit_group => &t.process_exit[..],
            libc::SYS_clone | libc::SYS_clone3 | libc::SYS_fork | libc::SYS_vfork => &t.process_fork[..],
            _ => &[],
        };
        for (e, _) in process {
            self.runtime.count_miss(e.probe.program.id);
        }
    }
}

static PROGRAMS: OnceLock<Arc<Programs>> = OnceLock::new();

/// Builds the tables from the syscall links for this process (`links`), starts interception
/// the first time there is any, and raises the links' states.
pub fn update(runtime: &'static Runtime, all: &[UprobeLink]) {
    let mine: Vec<&UprobeLink> = all.iter().filter(|l| l.kind == LinkKind::Syscall && crate::glue::for_this_process(l)).collect();
    if mine.is_empty() && PROGRAMS.get().is_none() {
        return;
    }
    // Made again only when the links change (each refresh would leak a table otherwise).
    static LAST: crate::glue::LinkSet = crate::glue::LinkSet::new();
    if !LAST.changed(&mine) {
        return;
    }
    let mut t = Tables { enter: (0..512).map(|_| vec![]).collect(), exit: (0..512).map(|_| vec![]).collect(), ..Tables::default() };
    let mut attached = vec![];
    for l in mine {
        let prog = match runtime.program(l.prog) {
            Ok(p) => p,
            Err(e) => {
                eprintln!("bpftime: link {} (`{}`): {e}", l.id, l.name);
                continue;
            }
        };
        let probe = ProbeProgram { program: prog, cookie: l.cookie, func_ip: 0, caller_at_sp: false };
        let entry = |id| Entry { probe, id, reported: AtomicBool::new(false) };
        match SyscallEvent::parse(&l.target) {
            Ok(SyscallEvent::Enter(nr)) => t.enter[nr as usize].push(entry(event_id(&l.target))),
            Ok(SyscallEvent::Exit(nr)) => t.exit[nr as usize].push(entry(event_id(&l.target))),
            Ok(SyscallEvent::RawEnter) => t.raw_enter.push(entry(0)),
            Ok(SyscallEvent::RawExit) => t.raw_exit.push(entry(0)),
            Ok(SyscallEvent::AnyEnter) => t.any_enter.push(entry(event_id(&l.target))),
            Ok(SyscallEvent::AnyExit) => t.any_exit.push(entry(event_id(&l.target))),
            Ok(SyscallEvent::Process(event)) => {
                let Some(format) = Format::of(&l.target, runtime.code_cache()) else {
                    links::raise_state(runtime.region(), l.id, LinkState::Failed);
                    eprintln!("bpftime: link {} (`{}`): no record layout for `{}`", l.id, l.name, l.target);
                    continue;
                };
                let list = match event {
                    ProcessEvent::Exec => &mut t.process_exec,
                    ProcessEvent::Exit => &mut t.process_exit,
                    ProcessEvent::Fork => &mut t.process_fork,
                    ProcessEvent::Wait => &mut t.process_wait,
                    ProcessEvent::SignalGenerate => &mut t.signal_generate,
                    ProcessEvent::SignalDeliver => {
                        bpftime_attach::signals::observe_deliveries(delivered);
                        &mut t.signal_deliver
                    }
                };
                list.push((entry(format.id), format));
            }
            Err(e) => {
                links::raise_state(runtime.region(), l.id, LinkState::Failed);
                eprintln!("bpftime: link {} (`{}`): {e}", l.id, l.name);
                continue;
            }
        }
        attached.push(l.id);
    }
    let fresh = Box::into_raw(Box::new(t));
    let programs = match PROGRAMS.get() {
        Some(p) => {
            p.tables.store(fresh, Ordering::Release);
            p.clone()
        }
        None => {
            let p = Arc::new(Programs { runtime, tables: AtomicPtr::new(fresh) });
            let _ = PROGRAMS.set(p.clone());
            // The images this process starts learn that their execve was seen here.
            interception::mark_execs(EXEC_SEEN, crate::glue::own_file_name(), other_threads_mark);
            // A vfork child runs its calls in this process's memory: ids cached here are not its.
            interception::count_vfork_children(&bpftime_shm::ids::VFORK_CHILDREN);
            if let Err(e) = interception::start(p.clone()) {
                eprintln!("bpftime: system call programs cannot run here: {e}");
                for id in attached {
                    links::raise_state(runtime.region(), id, LinkState::Failed);
                }
                return;
            }
            interception::enable_everywhere();
            p
        }
    };
    drop(programs);
    for id in attached {
        links::raise_state(runtime.region(), id, LinkState::Attached);
    }
}

/// The variable whoever starts a program with the agent but without it in its own image
/// (`bpftime start`, a loader's children) sets, so that the agent runs that `execve`'s entry
/// programs; its value is the caller's name (its `comm`, which the kernel's programs see at
/// the call). The agent removes it.
pub const EXEC_UNTRACED: &str = "BPFTIME_EXEC_UNTRACED";

/// The variable an `execve` seen here (system calls intercepted) sets in the environment of the
/// image it starts, to this process's id and the calling thread's, then the other threads the
/// call ends if it succeeds, each with its name in hex (`PID.TID[.TID=NAME]...`): an image
/// that does not find its own id there runs that call's entry programs itself (its caller had none running: a process without the
/// agent, or a `vfork` child whose caller's interception could not reach it; a mark inherited
/// through an image
/// with no agent is another process's, unless that image (static, or setuid) itself execs: the
/// next image then takes the exec for seen). The agent removes it.
pub const EXEC_SEEN: &str = "BPFTIME_EXEC_SEEN";

/// The arguments the `execve` that started this image left for it (the arrays on the initial
/// stack), as glibc passes them to constructors.
#[derive(Clone, Copy, Debug)]
pub struct ExecArgs {
    pub argv: u64,
    pub envp: u64,
}

/// How the `execve` that started this image was seen, from the environment it left.
pub enum ExecCaller {
    /// By the agent in the caller ([`EXEC_SEEN`]), in this thread (the process's id once the
    /// call went through), which ended the caller's other threads (their ids and names).
    Seen { thread: u32, ended: Vec<(u32, Vec<u8>)> },
    /// By no agent: a caller that says so ([`EXEC_UNTRACED`], its name given).
    Untraced(Vec<u8>),
    /// By no agent, as far as we know.
    Unknown,
}

/// How the `execve` that started this image was seen, with [`EXEC_SEEN`] and [`EXEC_UNTRACED`]
/// taken out of the environment it left (`exec.envp`).
pub fn take_exec_caller(exec: ExecArgs) -> ExecCaller {
    let pid = std::process::id();
    let seen = take_env(exec, EXEC_SEEN).and_then(|mark| {
        let mark = String::from_utf8(mark).ok()?;
        let mut parts = mark.split('.');
        if parts.next()?.parse() != Ok(pid) {
            return None;
        }
        let thread = parts.next().and_then(|t| t.parse().ok()).unwrap_or(pid);
        let ended = parts
            .filter_map(|p| {
                let (tid, name) = p.split_once('=')?;
                let name = (0..name.len() / 2).map(|i| u8::from_str_radix(name.get(2 * i..2 * i + 2)?, 16).ok()).collect::<Option<Vec<u8>>>()?;
                Some((tid.parse().ok()?, name))
            })
            .collect();
        Some((thread, ended))
    });
    match (seen, take_env(exec, EXEC_UNTRACED)) {
        (Some((thread, ended)), _) => ExecCaller::Seen { thread, ended },
        (None, Some(caller)) => ExecCaller::Untraced(caller),
        (None, None) => ExecCaller::Unknown,
    }
}

/// The value of variable `name` in the environment the execve left (`exec.envp`), removing
/// it there. The array itself is edited, in place (it is `environ` until the program changes
/// it): the program's own `getenv`/`unsetenv` may not be libc's (bash has its own, which works
/// on a table it fills in `main`).
fn take_env(exec: ExecArgs, name: &str) -> Option<Vec<u8>> {
    let envp = exec.envp as *mut *const std::ffi::c_char;
    if envp.is_null() {
        return None;
    }
    let prefix = format!("{name}=");
    let mut found = None;
    // SAFETY: `envp` is the NULL-terminated array of C strings the kernel built on the initial
    // stack for execve(2) (glibc hands it to constructors), writable, and nothing else runs
    // yet (constructors run on the main thread before `main`). Entries are moved down over
    // the removed one, the terminating NULL included, as unsetenv(3) does.
    unsafe {
        let mut at = envp;
        while !(*at).is_null() {
            let entry = std::ffi::CStr::from_ptr(*at).to_bytes();
            if let Some(value) = entry.strip_prefix(prefix.as_bytes()) {
                found = Some(value.to_vec());
                let mut to = at;
                loop {
                    *to = *to.add(1);
                    if (*to).is_null() {
                        break;
                    }
                    to = to.add(1);
                }
            } else {
                at = at.add(1);
            }
        }
    }
    found
}

/// Runs the entry programs of the `execve` that started this image, for a caller that had no
/// agent to run them: its filename (`AT_EXECFN`), argv and envp, as the call passed them, with
/// the caller's name (`caller`, when given; else the parent's main thread's, which a `vfork`
/// child has unless the thread that made it had another) as the thread's name meanwhile.
pub fn execve_entered(exec: ExecArgs, caller: Option<&[u8]>) {
    let Some(p) = PROGRAMS.get() else { return };
    let parents;
    let caller = match caller {
        Some(c) => c,
        None => {
            // The agent's own calls, which the application's system call programs must not see.
            parents = bpftime_attach::without_probes(|| {
                // SAFETY: getppid(2) cannot fail.
                let parent = unsafe { libc::getppid() };
                std::fs::read(format!("/proc/{parent}/comm")).unwrap_or_default()
            });
            parents.strip_suffix(b"\n").unwrap_or(&parents)
        }
    };
    // SAFETY: getauxval(3) reads the auxiliary vector; AT_EXECFN is the address of the
    // filename the execve was given (0 where absent).
    let filename = unsafe { libc::getauxval(libc::AT_EXECFN) };
    let regs = PtRegs { orig_ax: libc::SYS_execve as u64, di: filename, si: exec.argv, dx: exec.envp, ..PtRegs::default() };
    // (The call was made already: an override cannot undo it.)
    let run = || {
        bpftime_attach::run_as_hit(|level| {
            let _ = p.on_enter(&regs, level);
        })
    };
    if !caller.is_empty() && !caller.contains(&0) {
        with_thread_name(caller, run);
    } else {
        run();
    }
}

/// What an `execve` of this thread's adds to its mark (see [`EXEC_SEEN`]): the process's other
/// threads ([`other_threads`]), which the call ends if it succeeds, each as `.TID=NAME`, the
/// name in hex.
fn other_threads_mark() -> String {
    use std::fmt::Write;
    let mut mark = String::new();
    for t in other_threads(tid()) {
        let _ = write!(mark, ".{t}=");
        for b in task_name(t) {
            let _ = write!(mark, "{b:02x}");
        }
    }
    mark
}

/// Runs the `sched_process_exit` programs of the threads the `execve` that started this image
/// ended (`ended`: ids and names, from the caller's mark), each as that thread, as the kernel
/// runs them on each as the call takes the process over (exit code 0, the group alive).
pub fn threads_ended_by_exec(ended: &[(u32, Vec<u8>)]) {
    let Some(p) = PROGRAMS.get() else { return };
    let t = p.tables();
    if t.process_exit.is_empty() {
        return;
    }
    // (Our calls with the thread busy: not the application's.)
    bpftime_attach::run_as_hit(|level| {
        // SAFETY: getpriority(2) on this process (its threads share the value here).
        let nice = unsafe { libc::getpriority(libc::PRIO_PROCESS, 0) };
        for (tid, name) in ended {
            let values = [("comm", Value::Str(name)), ("pid", Value::Int(*tid as i64)), ("prio", Value::Int(120 + nice as i64)), ("group_dead", Value::Int(0))];
            as_thread(*tid, name, || p.run_process(&t.process_exit, *tid, &values, level));
        }
    });
}

/// Runs the `sched_process_exec` programs of the `execve` that started this image (its
/// filename as the call gave it, `AT_EXECFN`), which the kernel runs between the call's entry
/// and exit programs; `old_pid` is the id of the thread that made the call where known
/// (another than the process's where a thread other than the main one made it).
pub fn process_exec(old_pid: Option<u32>) {
    let Some(p) = PROGRAMS.get() else { return };
    let t = p.tables();
    if t.process_exec.is_empty() {
        return;
    }
    // SAFETY: getauxval(3) reads the auxiliary vector; AT_EXECFN is the address of the
    // NUL-terminated filename the execve was given (0 where absent).
    let at = unsafe { libc::getauxval(libc::AT_EXECFN) };
    let filename = if at == 0 {
        &b""[..]
    } else {
        // SAFETY: as above: a C string on the initial stack, there for the image's life.
        unsafe { std::ffi::CStr::from_ptr(at as *const std::ffi::c_char) }.to_bytes()
    };
    let pid = bpftime_shm::ids::process_id() as i64;
    let values = [("filename", Value::Str(filename)), ("pid", Value::Int(pid)), ("old_pid", Value::Int(old_pid.map_or(pid, i64::from)))];
    bpftime_attach::run_as_hit(|level| p.run_process(&t.process_exec, tid(), &values, level));
}

/// Runs the exit programs of a successful `execve` (result 0) in this new image: the kernel runs
/// `sys_exit_execve` there, after the old image is gone (where the call was made in place).
pub fn execve_returned() {
    let Some(p) = PROGRAMS.get() else { return };
    let regs = PtRegs { orig_ax: libc::SYS_execve as u64, ax: 0, ..PtRegs::default() };
    bpftime_attach::run_as_hit(|level| p.on_exit(&regs, level));
}

/// Runs the system call programs on the dynamic loader's calls, made before the agent could
/// run (recorded by `libbpftime_audit.so`: see `loader_calls`), in their order: each call's
/// entry programs, then its exit programs.
pub fn loader_calls_made() {
    let Some(p) = PROGRAMS.get() else { return };
    let calls = bpftime_attach::without_probes(crate::loader_calls::calls);
    for c in &calls {
        let [di, si, dx, r10, r8, r9] = c.args;
        let regs = PtRegs { orig_ax: c.nr, di, si, dx, r10, r8, r9, ..PtRegs::default() };
        bpftime_attach::run_as_hit(|level| {
            let _ = p.on_enter(&regs, level);
            p.on_exit(&PtRegs { ax: c.ret, ..regs }, level);
        });
    }
    // (Freed as our own work: a large record is unmapped.)
    bpftime_attach::without_probes(|| drop(calls));
}
