//! Helpers with the kernel's ids (`enum bpf_func_id`) and semantics, callable from both
//! engines. Pointers a program passes in are checked against the memory it may touch
//! ([`RunState::slice`]); pointers into the traced process (`probe_read*`) are read without
//! faulting. Errors are returned as `-errno`, as the kernel's helpers do.

use crate::format::format;
use crate::handles::map_of;
use crate::runtime::HelperContext;
use crate::user_mem;
use bpftime_maps::{current_cpu, Errno, Map, MapType};
use bpftime_vm::exec::{Fault, HelperEffects, HelperReturn, HelperTable, RunState};
use std::cell::Cell;
use std::sync::atomic::{AtomicU64, Ordering};

fn err(e: Errno) -> u64 {
    e.as_helper_result()
}

fn host(state: &RunState) -> Option<&HelperContext<'_>> {
    // SAFETY: the runtime's runs (`Runtime::run`, `run_probe`, tail calls through `run_region`)
    // set `host` to a HelperContext that outlives the run; other runs of these helpers leave it
    // null.
    unsafe { (state.host as *const HelperContext).as_ref() }
}

/// Where the cgroup v2 hierarchy is mounted (`/sys/fs/cgroup` on a unified system,
/// `/sys/fs/cgroup/unified` on a hybrid one), from `/proc/self/mountinfo`, found once (when a
/// program that asks for cgroups is prepared: see [`warm_up_for`]).
fn cgroup2_mount() -> Option<&'static str> {
    static MOUNT: std::sync::OnceLock<Option<String>> = std::sync::OnceLock::new();
    MOUNT
        .get_or_init(|| {
            let info = std::fs::read_to_string("/proc/self/mountinfo").ok()?;
            // `ID PARENT MAJ:MIN ROOT MOUNTPOINT OPTIONS... - FSTYPE SOURCE SUPER_OPTIONS`: the
            // hierarchy's root mounted (not a subtree bind-mounted elsewhere).
            info.lines().find_map(|l| {
                let (before, after) = l.split_once(" - ")?;
                let fields: Vec<&str> = before.split(' ').collect();
                (after.split(' ').next()? == "cgroup2" && fields.get(3) == Some(&"/")).then(|| fields.get(4).map(|m| m.to_string()))?
            })
        })
        .as_deref()
}

/// The cgroup v2 ids (cgroupfs inodes) of the current thread's cgroup and its ancestors,
/// itself first, the root last.
fn current_cgroups() -> Vec<u64> {
    use std::os::unix::fs::MetadataExt;
    let Some(mount) = cgroup2_mount() else { return vec![] };
    let Ok(text) = std::fs::read_to_string("/proc/thread-self/cgroup") else { return vec![] };
    let Some(path) = text.lines().find_map(|l| l.strip_prefix("0::")) else { return vec![] };
    let mut dir = std::path::PathBuf::from(mount);
    let mut chain: Vec<u64> = std::fs::metadata(&dir).map(|m| vec![m.ino()]).unwrap_or_default();
    for part in path.split('/').filter(|p| !p.is_empty()) {
        dir.push(part);
        match std::fs::metadata(&dir) {
            Ok(m) => chain.push(m.ino()),
            Err(_) => break,
        }
    }
    chain.reverse();
    chain
}

/// `bpf_get_current_cgroup_id`: the id (cgroupfs inode) of the current thread's cgroup v2.
extern "C" fn get_current_cgroup_id(_: u64, _: u64, _: u64, _: u64, _: u64, _: &mut RunState) -> u64 {
    current_cgroups().first().copied().unwrap_or(0)
}

/// `bpf_current_task_under_cgroup(map, index)`: 1 when the current thread's cgroup is the one
/// at `index` of the CGROUP_ARRAY or below it, else 0. The array holds the low 32 bits of
/// cgroup ids (the syscall server stores them for the cgroup fds a loader writes).
extern "C" fn current_task_under_cgroup(m: u64, index: u64, _: u64, _: u64, _: u64, _: &mut RunState) -> u64 {
    let Ok(m) = map(m) else { return err(Errno::EINVAL) };
    if m.map_type() != MapType::CgroupArray {
        return err(Errno::EINVAL);
    }
    let mut v = [0u8; 4];
    if m.lookup(&(index as u32).to_le_bytes(), &mut v).is_err() {
        return err(Errno::E2BIG);
    }
    let want = u32::from_le_bytes(v);
    current_cgroups().iter().any(|&id| id as u32 == want && want != 0) as u64
}

/// The map behind a map reference, or an error result.
fn map(r: u64) -> Result<&'static Map, u64> {
    map_of(r).ok_or(err(Errno::EINVAL))
}

macro_rules! try_h {
    ($e:expr) => {
        match $e {
            Ok(v) => v,
            Err(code) => return code,
        }
    };
}

fn key<'s>(state: &'s RunState, m: &Map, addr: u64) -> Result<&'s [u8], u64> {
    state.slice(addr, m.spec().key_size as u64).ok_or(err(Errno::EFAULT))
}

extern "C" fn map_lookup_elem(m: u64, k: u64, _: u64, _: u64, _: u64, state: &mut RunState) -> u64 {
    let Ok(m) = map(m) else { return 0 };
    let Ok(key) = key(state, m, k) else { return 0 };
    match m.lookup_ptr(key) {
        Some(p) if matches!(m.map_type(), MapType::ArrayOfMaps | MapType::HashOfMaps) => {
            // The value is an inner map's id: give the program that map's reference.
            // SAFETY: lookup_ptr returned 4 readable bytes inside the region.
            let id = unsafe { (p as *const u32).read_unaligned() };
            crate::handles::map_ref_by_id(m, id).unwrap_or(0)
        }
        Some(p) => p as u64,
        None => 0,
    }
}

/// `bpf_map_lookup_percpu_elem(map, key, cpu)`: CPU `cpu`'s value in a per-CPU map, or null.
extern "C" fn map_lookup_percpu_elem(m: u64, k: u64, cpu: u64, _: u64, _: u64, state: &mut RunState) -> u64 {
    let Ok(m) = map(m) else { return 0 };
    let Ok(key) = key(state, m, k) else { return 0 };
    u32::try_from(cpu).ok().and_then(|cpu| m.lookup_ptr_on_cpu(key, cpu)).map_or(0, |p| p as u64)
}

/// `bpf_get_numa_node_id()`: the NUMA node of the CPU this thread runs on.
extern "C" fn get_numa_node_id(_: u64, _: u64, _: u64, _: u64, _: u64, _: &mut RunState) -> u64 {
    let (mut cpu, mut node) = (0u32, 0u32);
    // SAFETY: getcpu(2) writes one u32 through each of the two pointers (the third is unused).
    unsafe { libc::syscall(libc::SYS_getcpu, &mut cpu as *mut u32, &mut node as *mut u32, 0usize) };
    node as u64
}

extern "C" fn map_update_elem(m: u64, k: u64, v: u64, flags: u64, _: u64, state: &mut RunState) -> u64 {
    let m = try_h!(map(m));
    let key = try_h!(key(state, m, k));
    let Some(value) = state.slice(v, m.spec().value_size as u64) else { return err(Errno::EFAULT) };
    match m.update_from_prog(key, value, flags) {
        Ok(()) => 0,
        Err(e) => err(e),
    }
}

extern "C" fn map_delete_elem(m: u64, k: u64, _: u64, _: u64, _: u64, state: &mut RunState) -> u64 {
    let m = try_h!(map(m));
    let key = try_h!(key(state, m, k));
    match m.delete(key) {
        Ok(()) => 0,
        Err(e) => err(e),
    }
}

extern "C" fn map_push_elem(m: u64, v: u64, flags: u64, _: u64, _: u64, state: &mut RunState) -> u64 {
    let m = try_h!(map(m));
    let Some(value) = state.slice(v, m.spec().value_size as u64) else { return err(Errno::EFAULT) };
    match m.push(value, flags) {
        Ok(()) => 0,
        Err(e) => err(e),
    }
}

fn pop_or_peek(m: u64, v: u64, state: &mut RunState, pop: bool) -> u64 {
    let m = try_h!(map(m));
    let size = m.spec().value_size as u64;
    if m.map_type() == MapType::BloomFilter && !pop {
        // A bloom filter's peek asks about the value `v` points to, and writes nothing.
        let Some(value) = state.slice(v, size) else { return err(Errno::EFAULT) };
        let mut value = value.to_vec();
        return m.peek(&mut value).map_or_else(err, |()| 0);
    }
    let mut buf = vec![0u8; size as usize];
    let r = if pop { m.pop(&mut buf) } else { m.peek(&mut buf) };
    if let Err(e) = r {
        return err(e);
    }
    match state.slice_mut(v, size) {
        Some(dst) => {
            dst.copy_from_slice(&buf);
            0
        }
        None => err(Errno::EFAULT),
    }
}

extern "C" fn map_pop_elem(m: u64, v: u64, _: u64, _: u64, _: u64, state: &mut RunState) -> u64 {
    pop_or_peek(m, v, state, true)
}

extern "C" fn map_peek_elem(m: u64, v: u64, _: u64, _: u64, _: u64, state: &mut RunState) -> u64 {
    pop_or_peek(m, v, state, false)
}

/// `probe_read`, `probe_read_user`, `probe_read_kernel`: user space has only user memory, so
/// the kernel variant reads the same way (and fails on kernel addresses).
extern "C" fn probe_read(dst: u64, size: u64, src: u64, _: u64, _: u64, state: &mut RunState) -> u64 {
    let Some(d) = state.slice_mut(dst, size) else { return err(Errno::EFAULT) };
    if user_mem::read(src, d) {
        0
    } else {
        err(Errno::EFAULT)
    }
}

extern "C" fn probe_read_str(dst: u64, size: u64, src: u64, _: u64, _: u64, state: &mut RunState) -> u64 {
    let Some(d) = state.slice_mut(dst, size) else { return err(Errno::EFAULT) };
    match user_mem::read_str(src, d) {
        Some(n) => n as u64,
        None => err(Errno::EFAULT),
    }
}

extern "C" fn probe_write_user(dst: u64, src: u64, len: u64, _: u64, _: u64, state: &mut RunState) -> u64 {
    let Some(s) = state.slice(src, len) else { return err(Errno::EFAULT) };
    if user_mem::write(dst, s) {
        0
    } else {
        err(Errno::EFAULT)
    }
}

pub(crate) fn clock(id: libc::clockid_t) -> u64 {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: clock_gettime writes one timespec (clock_gettime(2)).
    unsafe { libc::clock_gettime(id, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

extern "C" fn ktime_get_ns(_: u64, _: u64, _: u64, _: u64, _: u64, _: &mut RunState) -> u64 {
    clock(libc::CLOCK_MONOTONIC)
}

extern "C" fn ktime_get_boot_ns(_: u64, _: u64, _: u64, _: u64, _: u64, _: &mut RunState) -> u64 {
    clock(libc::CLOCK_BOOTTIME)
}

extern "C" fn ktime_get_coarse_ns(_: u64, _: u64, _: u64, _: u64, _: u64, _: &mut RunState) -> u64 {
    clock(libc::CLOCK_MONOTONIC_COARSE)
}

/// The format string of `bpf_trace_printk` / `bpf_trace_vprintk` (`size` bytes holding a NUL),
/// if the kernel would print it with `num_args` arguments: else the helper's error (-EFAULT
/// where the bytes cannot be read, -EINVAL for a format the kernel refuses).
fn printk_format(state: &RunState, addr: u64, size: u64, num_args: usize) -> Result<Vec<u8>, u64> {
    let b = state.slice(addr, size).ok_or(err(Errno::EFAULT))?;
    let f = &b[..b.iter().position(|&c| c == 0).ok_or(err(Errno::EINVAL))?];
    if !crate::format::check(f, num_args) {
        return Err(err(Errno::EINVAL));
    }
    Ok(f.to_vec())
}

pub(crate) fn comm() -> String {
    let mut buf = [0u8; 17];
    // SAFETY: PR_GET_NAME writes at most 16 bytes plus NUL into the buffer (prctl(2)).
    unsafe { libc::prctl(libc::PR_GET_NAME, buf.as_mut_ptr(), 0, 0, 0) };
    let end = buf.iter().position(|&c| c == 0).unwrap_or(16);
    String::from_utf8_lossy(&buf[..end]).to_string()
}

use bpftime_shm::ids::{process_id as pid, thread_id as tid};

/// A trace pipe line as the kernel's trace_pipe shows `bpf_trace_printk` output: this thread's
/// comm and id, `cpu`, the monotonic time, the message.
pub(crate) fn trace_line(cpu: u32, msg: &[u8]) -> String {
    let now = clock(libc::CLOCK_MONOTONIC);
    format!(
        "{}-{} [{:03}] {}.{:06}: bpf_trace_printk: {}",
        comm(),
        tid(),
        cpu,
        now / 1_000_000_000,
        now % 1_000_000_000 / 1000,
        String::from_utf8_lossy(msg).trim_end_matches('\n')
    )
}

fn emit_trace(state: &RunState, msg: &[u8]) -> u64 {
    let line = trace_line(current_cpu(), msg);
    match host(state).and_then(|h| crate::trace::TracePipe::open(h.runtime.region()).ok()) {
        Some(pipe) => pipe.write(line.as_bytes()),
        None => eprintln!("{line}"),
    }
    msg.len() as u64
}

extern "C" fn trace_printk(fmt: u64, size: u64, a1: u64, a2: u64, a3: u64, state: &mut RunState) -> u64 {
    let f = try_h!(printk_format(state, fmt, size, 3));
    let msg = format(&f, &[a1, a2, a3]);
    emit_trace(state, &msg)
}

fn args_of(state: &RunState, data: u64, len: u64) -> Option<Vec<u64>> {
    if !len.is_multiple_of(8) || len > 8 * 12 {
        return None;
    }
    let b = state.slice(data, len)?;
    Some(b.chunks_exact(8).map(|c| u64::from_le_bytes(c.try_into().expect("8 bytes"))).collect())
}

extern "C" fn trace_vprintk(fmt: u64, size: u64, data: u64, len: u64, _: u64, state: &mut RunState) -> u64 {
    let Some(args) = args_of(state, data, len) else { return err(Errno::EINVAL) };
    let f = try_h!(printk_format(state, fmt, size, args.len()));
    let msg = format(&f, &args);
    emit_trace(state, &msg)
}

extern "C" fn snprintf(out: u64, out_size: u64, fmt: u64, data: u64, len: u64, state: &mut RunState) -> u64 {
    // The format is a NUL-terminated constant; find its end inside readable memory.
    let mut f = Vec::new();
    loop {
        match state.slice(fmt + f.len() as u64, 1) {
            Some([0]) => break,
            Some([c]) if f.len() < 1024 => f.push(*c),
            _ => return err(Errno::EINVAL),
        }
    }
    let Some(args) = args_of(state, data, len) else { return err(Errno::EINVAL) };
    if !crate::format::check(&f, args.len()) {
        return err(Errno::EINVAL);
    }
    let text = format(&f, &args);
    if out_size > 0 {
        let Some(dst) = state.slice_mut(out, out_size) else { return err(Errno::EFAULT) };
        let n = text.len().min(dst.len() - 1);
        dst[..n].copy_from_slice(&text[..n]);
        dst[n] = 0;
    }
    text.len() as u64 + 1
}

extern "C" fn strncmp(s1: u64, s1_size: u64, s2: u64, _: u64, _: u64, state: &mut RunState) -> u64 {
    let Some(a) = state.slice(s1, s1_size).map(<[u8]>::to_vec) else { return err(Errno::EFAULT) };
    for (i, &x) in a.iter().enumerate() {
        let Some(&[y]) = state.slice(s2 + i as u64, 1) else { return err(Errno::EFAULT) };
        if x != y || x == 0 {
            // -1, 0 or 1, as the kernel's strncmp answers.
            return x.cmp(&y) as i64 as u64;
        }
    }
    0
}

thread_local! {
    static RNG: Cell<u64> = Cell::new(clock(libc::CLOCK_MONOTONIC) ^ (tid() as u64) << 32 | 1);
}

extern "C" fn get_prandom_u32(_: u64, _: u64, _: u64, _: u64, _: u64, _: &mut RunState) -> u64 {
    RNG.with(|r| {
        let mut x = r.get();
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        r.set(x);
        x as u32 as u64
    })
}

extern "C" fn get_smp_processor_id(_: u64, _: u64, _: u64, _: u64, _: u64, _: &mut RunState) -> u64 {
    current_cpu() as u64
}

extern "C" fn get_current_pid_tgid(_: u64, _: u64, _: u64, _: u64, _: u64, _: &mut RunState) -> u64 {
    (pid() as u64) << 32 | tid() as u64
}

/// `bpf_get_ns_current_pid_tgid(dev, ino, nsdata, size)`: this thread's pid and tgid as the pid
/// namespace whose nsfs file has device `dev` and inode `ino` sees them (a `struct
/// bpf_pidns_info`), when the thread is in that namespace; else `-EINVAL` and zeroes, as the
/// kernel's.
extern "C" fn get_ns_current_pid_tgid(dev: u64, ino: u64, nsdata: u64, size: u64, _: u64, state: &mut RunState) -> u64 {
    let Some(out) = state.slice_mut(nsdata, size) else { return err(Errno::EFAULT) };
    out.fill(0);
    if size != 8 || dev > u32::MAX as u64 {
        return err(Errno::EINVAL);
    }
    let mut st = std::mem::MaybeUninit::<libc::stat>::uninit();
    // SAFETY: stat(2) with a NUL-terminated path and room for one `struct stat`.
    if unsafe { libc::stat(c"/proc/self/ns/pid".as_ptr(), st.as_mut_ptr()) } != 0 {
        return err(Errno::ENOENT);
    }
    // SAFETY: stat(2) succeeded and filled it.
    let st = unsafe { st.assume_init() };
    if st.st_dev != dev || st.st_ino != ino {
        return err(Errno::EINVAL);
    }
    out[..4].copy_from_slice(&tid().to_le_bytes());
    out[4..].copy_from_slice(&pid().to_le_bytes());
    0
}

/// `bpf_send_signal(sig)` and `bpf_send_signal_thread(sig)`: signal `sig` to this process
/// (any of its threads may take it) or to this thread, as the kernel sends it to the task a
/// uprobe interrupted. It arrives when the probe's work returns to the function, before the
/// function goes on (the kernel delivers it on the way back from the trap). -EINVAL for a
/// number that is not a signal. See kill(2) and tgkill(2).
fn send_signal(sig: u64, thread: bool) -> u64 {
    if sig > 64 {
        return (-libc::EINVAL) as i64 as u64;
    }
    // SAFETY: kill(2)/tgkill(2) with our own ids and a signal number in range; nothing is
    // passed by address.
    let r = unsafe {
        if thread {
            libc::syscall(libc::SYS_tgkill, libc::getpid(), libc::syscall(libc::SYS_gettid), sig as libc::c_int)
        } else {
            libc::kill(libc::getpid(), sig as libc::c_int) as libc::c_long
        }
    };
    if r == 0 {
        0
    } else {
        (-std::io::Error::last_os_error().raw_os_error().unwrap_or(libc::EINVAL)) as i64 as u64
    }
}

extern "C" fn send_signal_process(sig: u64, _: u64, _: u64, _: u64, _: u64, _: &mut RunState) -> u64 {
    send_signal(sig as u32 as u64, false)
}

extern "C" fn send_signal_thread(sig: u64, _: u64, _: u64, _: u64, _: u64, _: &mut RunState) -> u64 {
    send_signal(sig as u32 as u64, true)
}

/// `bpf_get_current_task`: a stand-in `task_struct` (see [`crate::task`]).
extern "C" fn get_current_task(_: u64, _: u64, _: u64, _: u64, _: u64, _: &mut RunState) -> u64 {
    crate::task::current_task(pid(), tid(), comm().as_bytes())
}

/// `bpf_get_current_task_btf`: the same stand-in, which the program may also read directly
/// (`task->tgid`, `task->real_parent->pid`), as through the kernel's BTF-typed pointer.
extern "C" fn get_current_task_btf(_: u64, _: u64, _: u64, _: u64, _: u64, state: &mut RunState) -> u64 {
    match crate::task::current_task_block(pid(), tid(), comm().as_bytes()) {
        Some((task, len)) => {
            state.lend_memory(task, len);
            task
        }
        // No stand-in (the kernel's BTF cannot be read): the kernel's helper never returns
        // null, and its loads would all read 0 here; the run ends, saying so.
        None => {
            state.helper_fault(Fault::Helper { id: 158, code: -(libc::ENOENT as i64) });
            0
        }
    }
}

extern "C" fn get_current_uid_gid(_: u64, _: u64, _: u64, _: u64, _: u64, _: &mut RunState) -> u64 {
    // SAFETY: getuid and getgid cannot fail.
    let (uid, gid) = unsafe { (libc::getuid(), libc::getgid()) };
    (gid as u64) << 32 | uid as u64
}

extern "C" fn get_current_comm(buf: u64, size: u64, _: u64, _: u64, _: u64, state: &mut RunState) -> u64 {
    let name = comm();
    let Some(dst) = state.slice_mut(buf, size) else { return err(Errno::EFAULT) };
    if dst.is_empty() {
        return err(Errno::EINVAL);
    }
    dst.fill(0);
    let n = name.len().min(dst.len() - 1);
    dst[..n].copy_from_slice(&name.as_bytes()[..n]);
    0
}

/// The most tail calls in one chain (the kernel's `MAX_TAIL_CALL_CNT`).
pub const MAX_TAIL_CALLS: u32 = 33;

extern "C" fn tail_call(_ctx: u64, prog_array: u64, index: u64, _: u64, _: u64, state: &mut RunState) -> u64 {
    let Some(h) = host(state) else { return err(Errno::EINVAL) };
    let Ok(m) = map(prog_array) else { return err(Errno::EINVAL) };
    if m.map_type() != MapType::ProgArray || index > u32::MAX as u64 {
        return err(Errno::EINVAL);
    }
    let Some(id) = m.id_at(index as u32) else { return err(Errno::ENOENT) };
    if h.tail_calls.get() >= MAX_TAIL_CALLS {
        return err(Errno::E2BIG);
    }
    if id & bpftime_maps::KERNEL_PROGRAM != 0 {
        // A kernel program: run there, on the start of this context (see `kernel_progs`).
        let ctx = state.context_region();
        let bytes = state.slice(ctx.start, ctx.len.min(crate::kernel_progs::CTX_BYTES as u64)).map(<[u8]>::to_vec).unwrap_or_default();
        return match crate::kernel_progs::run(id & !bpftime_maps::KERNEL_PROGRAM, &bytes) {
            Ok(r0) => {
                state.stop(r0);
                0
            }
            Err(e) => err(e),
        };
    }
    let Ok(target) = h.runtime.program(id) else { return err(Errno::ENOENT) };
    let nested = HelperContext { caller_at_sp: h.caller_at_sp, ..HelperContext::new(h.runtime, h.cookie, h.func_ip, h.pt_regs) };
    nested.tail_calls.set(h.tail_calls.get() + 1);
    nested.override_return.set(h.override_return.get());
    let ctx = state.context_region();
    // The chain shares one budget: the callee gets what this run has left.
    let r = h.runtime.run_region(&target, ctx, &nested, state.budget);
    h.override_return.set(nested.override_return.get());
    match r {
        Ok(r0) => {
            // A tail call does not return: the chain's last program gives the result.
            state.stop(r0);
            0
        }
        Err(e) => {
            state.helper_fault(e.fault);
            0
        }
    }
}

extern "C" fn perf_event_output(_ctx: u64, m: u64, flags: u64, data: u64, size: u64, state: &mut RunState) -> u64 {
    let m = try_h!(map(m));
    if m.map_type() != MapType::PerfEventArray {
        return err(Errno::EINVAL);
    }
    let idx = flags & 0xffff_ffff;
    let cpu = if idx == 0xffff_ffff { current_cpu() } else { idx as u32 };
    let Some(bytes) = state.slice(data, size) else { return err(Errno::EFAULT) };
    match m.perf_output(cpu, bytes) {
        Ok(()) => 0,
        Err(e) => err(e),
    }
}

/// `struct pt_regs` offsets of rbp, rip and rsp (x86_64).
const PT_REGS_BP: u64 = 32;
const PT_REGS_IP: u64 = 128;
const PT_REGS_SP: u64 = 152;

/// What the process's return probes put in place of return addresses: given a stack slot and
/// the word read there, the return address it stands for (see [`set_return_address_resolver`]).
static RETURN_ADDRESS_RESOLVER: std::sync::OnceLock<fn(u64, u64) -> u64> = std::sync::OnceLock::new();

/// Lets user stack walks show real return addresses where return probes replaced them with a
/// stub (`resolve(slot, word)` gives the address the word at `slot` stands for), as the kernel
/// shows them in place of its uretprobe trampoline. Set once, by whoever attaches probes.
pub fn set_return_address_resolver(resolve: fn(u64, u64) -> u64) {
    let _ = RETURN_ADDRESS_RESOLVER.set(resolve);
}

/// The most frames a stack helper walks, skipped ones included: the kernel's
/// `kernel.perf_event_max_stack` sysctl, 127 by default.
const MAX_STACK: usize = 127;

/// A walked stack's addresses, without allocating (a probe run nested in a signal handler may
/// have interrupted the allocator).
struct Frames {
    ips: [u64; MAX_STACK],
    len: usize,
}

impl Frames {
    fn push(&mut self, ip: u64) {
        self.ips[self.len] = ip;
        self.len += 1;
    }

    fn as_slice(&self) -> &[u64] {
        &self.ips[..self.len]
    }
}

/// Walks the traced code's stack from the probe's `pt_regs` as the kernel's user callchains
/// do, at most `max` frames: the instruction pointer, the caller's return address at `[sp]`
/// when the probe is on a `push %rbp` (see [`crate::ProbeProgram::caller_at_sp`]), then the
/// frame-pointer chain.
fn user_stack(state: &RunState, max: usize) -> Option<Frames> {
    let h = host(state)?;
    if !h.pt_regs {
        return None;
    }
    let max = max.min(MAX_STACK);
    let ctx = state.context_region();
    let regs = state.slice(ctx.start, 168)?;
    let word = |o: u64| u64::from_le_bytes(regs[o as usize..o as usize + 8].try_into().expect("8 bytes"));
    let real = |slot: u64, value: u64| RETURN_ADDRESS_RESOLVER.get().map_or(value, |resolve| resolve(slot, value));
    let mut frames = Frames { ips: [0; MAX_STACK], len: 0 };
    if max == 0 {
        return Some(frames);
    }
    frames.push(word(PT_REGS_IP));
    if h.caller_at_sp && frames.len < max {
        let sp = word(PT_REGS_SP);
        let mut ret = [0u8; 8];
        if user_mem::read(sp, &mut ret) {
            frames.push(real(sp, u64::from_le_bytes(ret)));
        }
    }
    let mut bp = word(PT_REGS_BP);
    while frames.len < max && bp != 0 && bp % 8 == 0 {
        let mut frame = [0u8; 16];
        if !user_mem::read(bp, &mut frame) {
            break;
        }
        let next = u64::from_le_bytes(frame[..8].try_into().expect("8 bytes"));
        let ret = u64::from_le_bytes(frame[8..].try_into().expect("8 bytes"));
        if ret == 0 {
            break;
        }
        frames.push(real(bp + 8, ret));
        if next <= bp {
            break;
        }
        bp = next;
    }
    Some(frames)
}

/// `bpf_get_stack`/`bpf_get_stackid` flags (uapi `BPF_F_*`).
const BPF_F_SKIP_FIELD_MASK: u64 = 0xff;
const BPF_F_USER_STACK: u64 = 1 << 8;
const BPF_F_FAST_STACK_CMP: u64 = 1 << 9;
const BPF_F_REUSE_STACKID: u64 = 1 << 10;
const BPF_F_USER_BUILD_ID: u64 = 1 << 11;

/// The frames a stack helper asked for with `flags`, at most `max` past the skipped ones (and
/// [`MAX_STACK`] with them, as the kernel caps them), the skipped ones dropped: the user stack
/// ([`user_stack`]), or the kernel's, which is empty under a probe in user code (as the
/// kernel's walk is for user-mode registers).
fn frames_for(state: &RunState, flags: u64, max: usize) -> Result<Frames, Errno> {
    let skip = (flags & BPF_F_SKIP_FIELD_MASK) as usize;
    let mut frames = if flags & BPF_F_USER_STACK != 0 {
        user_stack(state, max + skip).ok_or(Errno::EINVAL)?
    } else if host(state).is_some_and(|h| h.pt_regs) {
        Frames { ips: [0; MAX_STACK], len: 0 }
    } else {
        return Err(Errno::EINVAL);
    };
    if frames.len < skip {
        return Err(Errno::EFAULT);
    }
    frames.ips.copy_within(skip..frames.len, 0);
    frames.len -= skip;
    Ok(frames)
}

/// `bpf_get_stack(ctx, buf, size, flags)`: the frames' addresses (or, with
/// `BPF_F_USER_BUILD_ID`, `struct bpf_stack_build_id` records giving the addresses); the rest
/// of `buf` is zeroed, as is all of it on an error.
/// ([`crate::build_id`] says how build-id records are made.)
extern "C" fn get_stack(_ctx: u64, buf: u64, size: u64, flags: u64, _: u64, state: &mut RunState) -> u64 {
    let build_id = flags & BPF_F_USER_BUILD_ID != 0;
    let elem = if build_id { bpftime_maps::BUILD_ID_FRAME as u64 } else { 8 };
    let known = BPF_F_SKIP_FIELD_MASK | BPF_F_USER_STACK | BPF_F_USER_BUILD_ID;
    let frames = if flags & !known != 0 || (build_id && flags & BPF_F_USER_STACK == 0) || !size.is_multiple_of(elem) {
        Err(Errno::EINVAL)
    } else {
        frames_for(state, flags, (size / elem) as usize)
    };
    let Some(dst) = state.slice_mut(buf, size) else { return err(Errno::EFAULT) };
    dst.fill(0);
    let frames = match frames {
        Ok(frames) => frames,
        Err(e) => return err(e),
    };
    if build_id {
        let bytes = crate::build_id::frames(frames.as_slice());
        let n = bytes.len().min(dst.len());
        dst[..n].copy_from_slice(&bytes[..n]);
        return n as u64;
    }
    for (slot, ip) in dst.chunks_exact_mut(8).zip(frames.as_slice()) {
        slot.copy_from_slice(&ip.to_le_bytes());
    }
    (frames.len.min(dst.len() / 8) * 8) as u64
}

/// `bpf_get_stackid(ctx, map, flags)`: the id of the stack in a STACK_TRACE map; `-EFAULT`
/// for an empty stack (a kernel stack under a probe in user code).
extern "C" fn get_stackid(_ctx: u64, m: u64, flags: u64, _: u64, _: u64, state: &mut RunState) -> u64 {
    let m = try_h!(map(m));
    if m.map_type() != MapType::StackTrace || flags & !(BPF_F_SKIP_FIELD_MASK | BPF_F_USER_STACK | BPF_F_FAST_STACK_CMP | BPF_F_REUSE_STACKID) != 0 {
        return err(Errno::EINVAL);
    }
    let depth = m.spec().value_size as usize / m.stack_frame_size();
    let frames = match frames_for(state, flags, depth) {
        Ok(frames) => frames,
        Err(e) => return err(e),
    };
    let stored = if m.stack_frame_size() == 8 {
        let mut bytes = [0u8; MAX_STACK * 8];
        for (slot, ip) in bytes.chunks_exact_mut(8).zip(frames.as_slice()) {
            slot.copy_from_slice(&ip.to_le_bytes());
        }
        m.stack_store(&bytes[..frames.len * 8], flags)
    } else {
        m.stack_store(&crate::build_id::frames(frames.as_slice()), flags)
    };
    match stored {
        Ok(id) => id as u64,
        Err(e) => err(e),
    }
}

/// `BPF_RB_NO_WAKEUP | BPF_RB_FORCE_WAKEUP`: the flags `bpf_ringbuf_output` takes.
const RB_WAKEUP_FLAGS: u64 = 1 | 2;

extern "C" fn ringbuf_output(m: u64, data: u64, size: u64, flags: u64, _: u64, state: &mut RunState) -> u64 {
    let m = try_h!(map(m));
    if m.map_type() != MapType::Ringbuf || flags & !RB_WAKEUP_FLAGS != 0 {
        return err(Errno::EINVAL);
    }
    let Some(bytes) = state.slice(data, size) else { return err(Errno::EFAULT) };
    match m.ringbuf_output(bytes) {
        Ok(()) => 0,
        Err(e) => err(e),
    }
}

extern "C" fn ringbuf_reserve(m: u64, size: u64, flags: u64, _: u64, _: u64, _: &mut RunState) -> u64 {
    let Ok(m) = map(m) else { return 0 };
    if m.map_type() != MapType::Ringbuf || flags != 0 {
        return 0;
    }
    m.ringbuf_reserve(size).map(|p| p as u64).unwrap_or(0)
}

fn ringbuf_commit(sample: u64, state: &mut RunState, discard: bool) -> u64 {
    let committed = host(state).is_some_and(|h| bpftime_maps::ringbuf_commit(h.runtime.region(), sample, discard));
    if !committed {
        // Like the kernel's verifier would: a record that was never reserved is a bug.
        state.helper_fault(Fault::Helper { id: if discard { 133 } else { 132 }, code: -(libc::EINVAL as i64) });
    }
    0
}

extern "C" fn ringbuf_submit(sample: u64, _: u64, _: u64, _: u64, _: u64, state: &mut RunState) -> u64 {
    ringbuf_commit(sample, state, false)
}

extern "C" fn ringbuf_discard(sample: u64, _: u64, _: u64, _: u64, _: u64, state: &mut RunState) -> u64 {
    ringbuf_commit(sample, state, true)
}

extern "C" fn ringbuf_query(m: u64, flags: u64, _: u64, _: u64, _: u64, _: &mut RunState) -> u64 {
    match map_of(m) {
        Some(m) if m.map_type() == MapType::Ringbuf => m.ringbuf_query(flags),
        _ => 0,
    }
}

extern "C" fn get_func_ip(_: u64, _: u64, _: u64, _: u64, _: u64, state: &mut RunState) -> u64 {
    host(state).map(|h| h.func_ip).unwrap_or(0)
}

/// `bpf_override_return(regs, rc)`: the probed function returns `rc` without running (honoured
/// at a function's entry; the agent says where it is not).
extern "C" fn override_return(_regs: u64, rc: u64, _: u64, _: u64, _: u64, state: &mut RunState) -> u64 {
    match host(state) {
        Some(h) if h.pt_regs => {
            h.override_return.set(Some(rc));
            0
        }
        _ => err(Errno::EINVAL),
    }
}

extern "C" fn get_attach_cookie(_: u64, _: u64, _: u64, _: u64, _: u64, state: &mut RunState) -> u64 {
    host(state).map(|h| h.cookie).unwrap_or(0)
}

/// The most iterations `bpf_loop` allows (the kernel's `BPF_MAX_LOOPS`).
pub const MAX_LOOPS: u64 = 1 << 23;

extern "C" fn bpf_loop(n: u64, callback: u64, cb_ctx: u64, flags: u64, _: u64, state: &mut RunState) -> u64 {
    if flags != 0 {
        return err(Errno::EINVAL);
    }
    if n > MAX_LOOPS {
        // -E2BIG in 32 bits (0xfffffff9), as the kernel answers: its verifier inlines every
        // call whose flags are a known 0, and the inlined loop sets the error with a 32-bit move.
        return err(Errno::E2BIG) as u32 as u64;
    }
    for i in 0..n {
        let Some(r) = state.call_function(callback as usize, [i, cb_ctx, 0, 0, 0]) else { return err(Errno::EINVAL) };
        if state.status != bpftime_vm::exec::STATUS_RUNNING {
            return 0;
        }
        if r == 1 {
            return i + 1;
        }
    }
    n
}

/// `bpf_for_each_map_elem(map, callback, ctx, flags)`: `callback(map, &key, &value, ctx)` for
/// each element of an array, hash or LRU hash map (per-CPU ones: this CPU's values) until it
/// returns non-zero; the number of elements it saw. An array's key is lent read-only, as the
/// kernel passes the address of an index on its own stack.
extern "C" fn for_each_map_elem(m: u64, callback: u64, cb_ctx: u64, flags: u64, _: u64, state: &mut RunState) -> u64 {
    let m_ref = m;
    let m = try_h!(map(m));
    if flags != 0 {
        return err(Errno::EINVAL);
    }
    let mut bad_callback = false;
    let walked = m.for_each_elem(&mut |key, value| {
        let key = match key {
            bpftime_maps::ElemKey::Index(i) => state.lend_key(i),
            bpftime_maps::ElemKey::At(addr) => addr,
        };
        match state.call_function(callback as usize, [m_ref, key, value, cb_ctx, 0]) {
            Some(r) => r != 0 || state.status != bpftime_vm::exec::STATUS_RUNNING,
            None => {
                bad_callback = true;
                true
            }
        }
    });
    match walked {
        _ if bad_callback => err(Errno::EINVAL),
        Ok(n) => n,
        Err(e) => err(e),
    }
}

/// The kernel's `INITIAL_JIFFIES` (jiffies start 5 minutes before wrapping 32 bits) for a
/// kernel ticking at `hz`.
fn initial_jiffies(hz: u64) -> u64 {
    (u32::MAX as u64 + 1).wrapping_sub(300 * hz)
}

/// The jiffies at `CLOCK_MONOTONIC_COARSE` zero, and the length of a tick in ns (0: not yet
/// known). Found once: the tick is the coarse clock's resolution (1/HZ); the offset is read
/// from `/proc/timer_list` where it is readable (root), else taken as `INITIAL_JIFFIES` (the
/// jiffies then lag the kernel's by the fraction of a second between the clock's start and
/// the first tick at boot).
static JIFFIES_BASE: AtomicU64 = AtomicU64::new(0);
static TICK_NS: AtomicU64 = AtomicU64::new(0);

/// The kernel's `jiffies: N` line in `/proc/timer_list`, with the coarse clock read just after.
fn timer_list_jiffies() -> Option<(u64, u64)> {
    use std::io::Read;
    let mut f = std::fs::File::open("/proc/timer_list").ok()?;
    let mut text = Vec::new();
    let mut buf = [0u8; 4096];
    // The line follows the first CPU's tick device: within the first few pages.
    while text.len() < 1 << 16 {
        let n = f.read(&mut buf).ok()?;
        if n == 0 {
            break;
        }
        text.extend_from_slice(&buf[..n]);
        let now = clock(libc::CLOCK_MONOTONIC_COARSE);
        // Whole lines only: a read may end inside one.
        let whole = &text[..text.iter().rposition(|&b| b == b'\n').map_or(0, |i| i + 1)];
        let line = whole.split(|&b| b == b'\n').find_map(|l| l.strip_prefix(b"jiffies: "));
        if let Some(n) = line.and_then(|l| std::str::from_utf8(l).ok()).and_then(|l| l.trim().parse().ok()) {
            return Some((n, now));
        }
    }
    None
}

/// Sets up, before any hit, what the helpers a program calls would otherwise set up at its
/// first one, inside the probed process's code (where a fork by another thread meanwhile would
/// leave the child waiting for it): the stand-in task's layout (the kernel's BTF, parsed: tens
/// of milliseconds, or what an earlier process kept in the code cache `cache`), the cgroup2
/// mount and the jiffies' calibration. (What is per thread still comes at each thread's first
/// call.)
pub fn warm_up_for(insns: &[bpftime_vm::RawInsn], cache: Option<&bpftime_jit::cache::CodeCache>) {
    let calls = |ids: &[i32]| insns.iter().any(|i| i.opc == 0x85 && i.src == 0 && ids.contains(&i.imm));
    if calls(&[35, 158]) {
        crate::task::warm_up(cache);
    }
    if calls(&[37, 80, 123]) {
        let _ = cgroup2_mount();
    }
    if calls(&[118]) {
        jiffies_tick();
    }
}

/// The jiffies' tick in ns, calibrating them at the first call.
fn jiffies_tick() -> u64 {
    let tick = TICK_NS.load(Ordering::Acquire);
    if tick != 0 {
        return tick;
    }
    let mut res = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: clock_getres writes one timespec (clock_getres(2)).
    unsafe { libc::clock_getres(libc::CLOCK_MONOTONIC_COARSE, &mut res) };
    let t = (res.tv_sec as u64 * 1_000_000_000 + res.tv_nsec as u64).max(1);
    let base = match timer_list_jiffies() {
        Some((jiffies, at)) => jiffies.wrapping_sub(at / t),
        None => initial_jiffies(1_000_000_000 / t),
    };
    // Two threads may both get here: each stores what it found (the same up to a tick).
    JIFFIES_BASE.store(base, Ordering::Relaxed);
    TICK_NS.store(t, Ordering::Release);
    t
}

/// `bpf_jiffies64()`: the kernel's 64-bit tick count.
extern "C" fn jiffies64(_: u64, _: u64, _: u64, _: u64, _: u64, _: &mut RunState) -> u64 {
    let tick = jiffies_tick();
    JIFFIES_BASE.load(Ordering::Relaxed).wrapping_add(clock(libc::CLOCK_MONOTONIC_COARSE) / tick)
}

/// `bpf_get_current_ancestor_cgroup_id(level)`: the id of the current thread's cgroup v2
/// ancestor at `level` (0: the root), or 0 past its own level.
extern "C" fn get_current_ancestor_cgroup_id(level: u64, _: u64, _: u64, _: u64, _: u64, _: &mut RunState) -> u64 {
    let chain = current_cgroups();
    usize::try_from(level).ok().and_then(|l| chain.iter().rev().nth(l)).copied().unwrap_or(0)
}

extern "C" fn ktime_get_tai_ns(_: u64, _: u64, _: u64, _: u64, _: u64, _: &mut RunState) -> u64 {
    clock(libc::CLOCK_TAI)
}

/// Every helper, by kernel id.
pub fn kernel_helpers() -> HelperTable {
    let mut t = HelperTable::new();
    t.register(1, "bpf_map_lookup_elem", map_lookup_elem)
        .register(2, "bpf_map_update_elem", map_update_elem)
        .register(3, "bpf_map_delete_elem", map_delete_elem)
        .register(4, "bpf_probe_read", probe_read)
        .register(5, "bpf_ktime_get_ns", ktime_get_ns)
        .register(6, "bpf_trace_printk", trace_printk)
        .register(7, "bpf_get_prandom_u32", get_prandom_u32)
        .register(8, "bpf_get_smp_processor_id", get_smp_processor_id)
        .register(12, "bpf_tail_call", tail_call)
        .register(14, "bpf_get_current_pid_tgid", get_current_pid_tgid)
        .register(15, "bpf_get_current_uid_gid", get_current_uid_gid)
        .register(16, "bpf_get_current_comm", get_current_comm)
        .register(25, "bpf_perf_event_output", perf_event_output)
        .register(27, "bpf_get_stackid", get_stackid)
        .register(36, "bpf_probe_write_user", probe_write_user)
        .register(37, "bpf_current_task_under_cgroup", current_task_under_cgroup)
        .register(80, "bpf_get_current_cgroup_id", get_current_cgroup_id)
        .register(45, "bpf_probe_read_str", probe_read_str)
        .register(35, "bpf_get_current_task", get_current_task)
        .register(109, "bpf_send_signal", send_signal_process)
        .register(117, "bpf_send_signal_thread", send_signal_thread)
        .register(58, "bpf_override_return", override_return)
        .register(67, "bpf_get_stack", get_stack)
        .register(87, "bpf_map_push_elem", map_push_elem)
        .register(88, "bpf_map_pop_elem", map_pop_elem)
        .register(89, "bpf_map_peek_elem", map_peek_elem)
        .register(112, "bpf_probe_read_user", probe_read)
        .register(113, "bpf_probe_read_kernel", probe_read)
        .register(114, "bpf_probe_read_user_str", probe_read_str)
        .register(115, "bpf_probe_read_kernel_str", probe_read_str)
        .register(125, "bpf_ktime_get_boot_ns", ktime_get_boot_ns)
        .register(130, "bpf_ringbuf_output", ringbuf_output)
        .register(131, "bpf_ringbuf_reserve", ringbuf_reserve)
        .register(132, "bpf_ringbuf_submit", ringbuf_submit)
        .register(133, "bpf_ringbuf_discard", ringbuf_discard)
        .register(134, "bpf_ringbuf_query", ringbuf_query)
        .register(160, "bpf_ktime_get_coarse_ns", ktime_get_coarse_ns)
        .register(165, "bpf_snprintf", snprintf)
        .register(173, "bpf_get_func_ip", get_func_ip)
        .register(174, "bpf_get_attach_cookie", get_attach_cookie)
        .register(177, "bpf_trace_vprintk", trace_vprintk)
        .register(42, "bpf_get_numa_node_id", get_numa_node_id)
        .register(120, "bpf_get_ns_current_pid_tgid", get_ns_current_pid_tgid)
        .register(195, "bpf_map_lookup_percpu_elem", map_lookup_percpu_elem)
        .register(181, "bpf_loop", bpf_loop)
        .register(182, "bpf_strncmp", strncmp)
        .register(118, "bpf_jiffies64", jiffies64)
        .register(158, "bpf_get_current_task_btf", get_current_task_btf)
        .register(123, "bpf_get_current_ancestor_cgroup_id", get_current_ancestor_cgroup_id)
        .register(148, "bpf_copy_from_user", probe_read)
        .register(164, "bpf_for_each_map_elem", for_each_map_elem)
        .register(208, "bpf_ktime_get_tai_ns", ktime_get_tai_ns);
    crate::kfuncs::register(&mut t);
    // What the verifier's range analysis may rely on (see `HelperEffects`): these only read
    // through their pointer arguments, and the map lookup and the ring-buffer reservation
    // return whole values and records.
    // Every helper but these never stops the run: tail calls stop it, bpf_loop runs callbacks
    // and charges the budget, a bad ring-buffer record faults it, and so does a task without
    // the kernel's BTF.
    let stops = |id: u32| [12, 132, 133, 158, 164, 181].contains(&id);
    let reads_only = [2, 3, 5, 6, 7, 8, 14, 15, 25, 35, 37, 42, 58, 80, 87, 118, 123, 158, 125, 130, 132, 133, 134, 160, 173, 174, 182, 195, 208];
    let ids: Vec<u32> = t.iter().map(|(id, _)| id).collect();
    for id in ids {
        let returns = match id {
            1 => HelperReturn::MapValueOrNull,
            131 => HelperReturn::MemOrNull { size_arg: 2 },
            158 => HelperReturn::BtfObject,
            _ => HelperReturn::Scalar,
        };
        let leaves_stack = reads_only.contains(&id) || id == 1 || id == 131 || crate::kfuncs::reads_nothing(id);
        t.set_effects(id, HelperEffects { returns, leaves_stack, never_stops: !stops(id) });
    }
    t
}
