//! Changing code that other threads may be running.
//!
//! Writes go through `/proc/self/mem`, which may write read-only text without mprotect.
//! A jump is installed like the kernel's `text_poke_bp`: an `int3` on the first byte, the
//! remaining bytes, then the first byte, with a core-serialising `membarrier` after each step.
//! A thread that meets the `int3` is sent to the relocated original instructions (the
//! trampoline) by our SIGTRAP handler, and threads stopped in the middle of the bytes being
//! replaced are moved to the matching place in the trampoline first, by signalling every thread
//! with a real-time signal of its own (`SIGRTMAX - 5`): a second SIGTRAP could be merged with a
//! pending int3 trap, and the two cases need different answers.
//!
//! The same SIGTRAP handler runs the probes kept as an `int3` (where no jump fits).
//!
//! Everything the signal handler reads is a fixed table of atomics: no locks, no allocation.

use std::fs::OpenOptions;
use std::os::unix::fs::FileExt;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Mutex, Once};
use std::time::{Duration, Instant};

/// Most patch sites in a process (a static table the signal handler reads, so no allocation:
/// 104 bytes a slot, zero pages until used). A bpftrace wildcard probe on libc has thousands.
pub(crate) const MAX_SITES: usize = 16384;
/// Most instructions relocated per site.
pub(crate) const MAX_RELOCATED: usize = 8;

/// What the signal handler knows of a site.
pub(crate) struct SiteSlot {
    /// Address of the patched bytes (0 = free slot).
    addr: AtomicU64,
    /// Number of patched bytes.
    len: AtomicU32,
    /// Address of the relocated original instructions.
    trampoline: AtomicU64,
    /// (original offset << 32 | trampoline offset) of each relocated instruction.
    map: [AtomicU64; MAX_RELOCATED],
    nmap: AtomicU32,
    /// For a probe kept as an `int3` (no room for a jump): the hook engine's site, whose
    /// handlers the trap runs (0 = a jump site, whose int3 is only there while it changes).
    trap_site: AtomicU64,
}

#[allow(clippy::declare_interior_mutable_const)]
const EMPTY_SLOT: SiteSlot = SiteSlot {
    addr: AtomicU64::new(0),
    len: AtomicU32::new(0),
    trampoline: AtomicU64::new(0),
    map: [const { AtomicU64::new(0) }; MAX_RELOCATED],
    nmap: AtomicU32::new(0),
    trap_site: AtomicU64::new(0),
};

static SLOTS: [SiteSlot; MAX_SITES] = [EMPTY_SLOT; MAX_SITES];
static NSLOTS: AtomicU32 = AtomicU32::new(0);
/// Threads that have answered the current fix-up round.
static FIXUP_ACKS: AtomicU32 = AtomicU32::new(0);
/// The site whose bytes are being replaced (index + 1; 0 = none).
static FIXUP_SITE: AtomicU32 = AtomicU32::new(0);
static HANDLER: Once = Once::new();
static SYNC_CORE: AtomicBool = AtomicBool::new(false);
/// Threads moved out of bytes being patched into the trampoline (diagnostics).
pub static MOVED_THREADS: AtomicU32 = AtomicU32::new(0);
/// Threads that met an int3 while a site changed and were sent to its trampoline (diagnostics).
pub static TRAPS_REDIRECTED: AtomicU32 = AtomicU32::new(0);
/// One code change at a time in the whole process.
pub(crate) static PATCH_LOCK: Mutex<()> = Mutex::new(());

/// Registers a site for the signal handler; returns its slot. `trap_site` is the hook
/// engine's site for a probe kept as an int3, else 0.
pub(crate) fn register_site(addr: u64, len: u32, trampoline: u64, map: &[(u32, u32)], trap_site: u64) -> Option<usize> {
    install_handler();
    let i = NSLOTS.load(Ordering::Relaxed) as usize;
    if i >= MAX_SITES || map.len() > MAX_RELOCATED {
        return None;
    }
    let s = &SLOTS[i];
    for (k, (orig, new)) in map.iter().enumerate() {
        s.map[k].store((*orig as u64) << 32 | *new as u64, Ordering::Relaxed);
    }
    s.nmap.store(map.len() as u32, Ordering::Relaxed);
    s.len.store(len, Ordering::Relaxed);
    s.trampoline.store(trampoline, Ordering::Relaxed);
    s.trap_site.store(trap_site, Ordering::Relaxed);
    s.addr.store(addr, Ordering::Release);
    NSLOTS.store(i as u32 + 1, Ordering::Release);
    Some(i)
}

/// Gives back the slot of a site that was never installed (its bytes were never changed).
pub(crate) fn release_site(i: usize) {
    if let Some(s) = SLOTS.get(i) {
        s.addr.store(0, Ordering::Release);
    }
}

/// Whether `[start, start + len)` overlaps bytes a registered site patches (or patched).
pub(crate) fn overlaps(start: u64, len: u64) -> bool {
    let n = NSLOTS.load(Ordering::Acquire) as usize;
    SLOTS[..n].iter().any(|s| {
        let a = s.addr.load(Ordering::Acquire);
        a != 0 && a < start + len && start < a + s.len.load(Ordering::Relaxed) as u64
    })
}

fn slot_at(addr: u64) -> Option<&'static SiteSlot> {
    let n = NSLOTS.load(Ordering::Acquire) as usize;
    SLOTS[..n].iter().find(|s| s.addr.load(Ordering::Acquire) == addr)
}

/// Where a thread that met an `int3` at `at`, inside the patched bytes of a jump site (its
/// displacement), continues: the trampoline's copy of the instruction that begins there.
fn after_first_instruction(at: u64) -> Option<u64> {
    let n = NSLOTS.load(Ordering::Acquire) as usize;
    SLOTS[..n].iter().filter(|s| s.trap_site.load(Ordering::Relaxed) == 0).find_map(|s| fixed_rip(s, at))
}

/// Where a thread at `rip` inside site `s`'s patched bytes must continue.
fn fixed_rip(s: &SiteSlot, rip: u64) -> Option<u64> {
    let base = s.addr.load(Ordering::Acquire);
    if rip <= base || rip >= base + s.len.load(Ordering::Relaxed) as u64 {
        return None;
    }
    let off = (rip - base) as u32;
    let tramp = s.trampoline.load(Ordering::Relaxed);
    (0..s.nmap.load(Ordering::Relaxed) as usize).map(|k| s.map[k].load(Ordering::Relaxed)).find(|m| (m >> 32) as u32 == off).map(|m| tramp + (m & 0xffff_ffff))
}

/// The signal of fix-up rounds.
pub(crate) fn fixup_signal() -> libc::c_int {
    libc::SIGRTMAX() - 5
}

extern "C" fn on_fixup(_sig: libc::c_int, _info: *mut libc::siginfo_t, ctx: *mut libc::c_void) {
    // SAFETY: the kernel passes a valid ucontext to an SA_SIGINFO handler.
    let uc = unsafe { &mut *(ctx as *mut libc::ucontext_t) };
    let rip = uc.uc_mcontext.gregs[libc::REG_RIP as usize] as u64;
    // Leave the bytes being replaced for their copy in the trampoline. (A late signal, after
    // its round ended, has nothing to do.)
    let site = FIXUP_SITE.load(Ordering::Acquire);
    if site != 0 {
        if let Some(new) = fixed_rip(&SLOTS[site as usize - 1], rip) {
            uc.uc_mcontext.gregs[libc::REG_RIP as usize] = new as i64;
            MOVED_THREADS.fetch_add(1, Ordering::Relaxed);
        }
        FIXUP_ACKS.fetch_add(1, Ordering::AcqRel);
    }
}

extern "C" fn on_sigtrap(sig: libc::c_int, info: *mut libc::siginfo_t, ctx: *mut libc::c_void) {
    // SAFETY: the kernel passes a valid ucontext to an SA_SIGINFO handler.
    let uc = unsafe { &mut *(ctx as *mut libc::ucontext_t) };
    let rip = uc.uc_mcontext.gregs[libc::REG_RIP as usize] as u64;
    if let Some(s) = rip.checked_sub(1).and_then(slot_at) {
        let site = s.trap_site.load(Ordering::Relaxed);
        if site != 0 {
            // A probe kept as an int3: its handlers run here, in the trapped thread's flow (not
            // on a thread pointer of its own, where our thread-locals are out of reach: see
            // `hook::libc_thread_pointer`).
            if crate::hook::libc_thread_pointer() && crate::hook::trap_hit(site, &mut uc.uc_mcontext.gregs) {
                return; // overridden: the thread returns to its caller
            }
        } else {
            // Hit our int3 while the site's bytes change.
            TRAPS_REDIRECTED.fetch_add(1, Ordering::Relaxed);
        }
        // Either way, on with the original instructions.
        uc.uc_mcontext.gregs[libc::REG_RIP as usize] = s.trampoline.load(Ordering::Relaxed) as i64;
        return;
    }
    // The `int3` of a landing, inside one of our jumps: a kernel uprobe written over the
    // jump ran the function's first instruction and resumed the thread here (see
    // `landing`). On with the next instruction's copy in the trampoline.
    // Only for an `int3` (SI_KERNEL: not a single step or a watchpoint) that is still there.
    // SAFETY: the kernel passes a valid siginfo to an SA_SIGINFO handler.
    let by_int3 = unsafe { (*info).si_code } == libc::SI_KERNEL;
    let landing = rip.checked_sub(1).filter(|_| by_int3).and_then(after_first_instruction);
    // SAFETY: `rip - 1` is inside the patched bytes of a registered site (checked above),
    // mapped code the thread just ran.
    if let Some(new) = landing.filter(|_| unsafe { *((rip - 1) as *const u8) } == 0xcc) {
        TRAPS_REDIRECTED.fetch_add(1, Ordering::Relaxed);
        uc.uc_mcontext.gregs[libc::REG_RIP as usize] = new as i64;
        return;
    }
    // Not ours: the application's.
    crate::signals::forward(sig, info, ctx);
}

fn install_handler() {
    HANDLER.call_once(|| {
        // SAFETY: a zeroed sigaction is valid, read into (sigaction(2)); the previous action is
        // saved before any signal can reach ours.
        unsafe {
            let mut old: libc::sigaction = std::mem::zeroed();
            crate::signals::real_sigaction()(libc::SIGTRAP, std::ptr::null(), &mut old);
            crate::signals::own_signal(libc::SIGTRAP, old.sa_sigaction, old.sa_flags);
        }
        install_engine_handlers();
    });
    register_sync_core();
}

/// Whether `handler` is the SIGTRAP or the fix-up signal's handler.
pub(crate) fn is_engine_handler(handler: usize) -> bool {
    handler == on_sigtrap as *const () as usize || handler == on_fixup as *const () as usize
}

/// Installs the SIGTRAP and fix-up handlers (see `syscalls::install_engine_handler`).
fn install_engine_handlers() {
    // NODEFER: a handler may run into another int3 probe (it is then ignored). Not on the
    // signal stack: a probe's programs run here.
    let trap = libc::SA_SIGINFO | libc::SA_RESTART | libc::SA_NODEFER;
    crate::syscalls::install_engine_handler(libc::SIGTRAP, on_sigtrap as *const () as usize, trap);
    // On the thread's signal stack where it has one (a goroutine's has no room for the frame).
    crate::syscalls::install_engine_handler(fixup_signal(), on_fixup as *const () as usize, libc::SA_SIGINFO | libc::SA_RESTART | libc::SA_ONSTACK);
}

/// Installs the SIGTRAP and fix-up handlers again, where they are installed, to return through
/// the restorer of the system call interception that is starting: an int3 probe's hit showed
/// an `rt_sigreturn` the program never made (the kernel's uprobes make none).
pub(crate) fn engine_handlers_to_own_restorer() {
    if HANDLER.is_completed() {
        install_engine_handlers();
    }
}

/// Registers this process for core-serialising barriers (membarrier(2)
/// `MEMBARRIER_CMD_REGISTER_PRIVATE_EXPEDITED_SYNC_CORE`), once. Cheap while the process has
/// one thread; with more, the kernel waits for an RCU grace period (about 10 to 25 ms here), so
/// the agent calls this at start, before it creates a thread. A forked child inherits it.
pub fn register_sync_core() {
    static REGISTERED: Once = Once::new();
    REGISTERED.call_once(|| {
        const REGISTER_SYNC_CORE: libc::c_int = 1 << 6;
        // SAFETY: membarrier(2) registration: no pointers, no effect on memory.
        if unsafe { libc::syscall(libc::SYS_membarrier, REGISTER_SYNC_CORE, 0) } == 0 {
            SYNC_CORE.store(true, Ordering::Relaxed);
        }
    });
}

/// Makes every core see the code we just wrote before it runs it again.
pub(crate) fn sync_cores() {
    const SYNC_CORE_CMD: libc::c_int = 1 << 5;
    if SYNC_CORE.load(Ordering::Relaxed) {
        // SAFETY: membarrier with a registered command and no flags (membarrier(2)).
        unsafe { libc::syscall(libc::SYS_membarrier, SYNC_CORE_CMD, 0) };
    }
}

/// `/proc/self/mem` opened when the engine started (see [`hold_self_mem`]): descriptor, the
/// process it was opened in, and what it is (device and inode); -1 while none is held.
static HELD_MEM: [AtomicI64; 4] = [const { AtomicI64::new(-1) }; 4];

/// Lowest descriptor number the held `/proc/self/mem` takes: the application gets the numbers
/// it gets without us.
const HIGH_FD: libc::c_int = 900;

/// Opens `/proc/self/mem` now and keeps it, also in each child `fork` makes (opened there
/// before the child runs on): a process that gives up root (`setuid`; a server's forked
/// workers often do) becomes non-dumpable and its `/proc/self/mem` belongs to root from then
/// on, while a descriptor opened before still writes (the kernel checks access at open).
/// Without it, probes attached after the drop could not be written, where the kernel's attach.
pub fn hold_self_mem() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        reopen_self_mem();
        extern "C" fn in_child() {
            // The agent's own calls: not the application's (system call programs).
            crate::hook::without_probes(reopen_self_mem);
        }
        // SAFETY: registers a plain extern "C" handler that makes system calls only
        // (pthread_atfork(3)).
        unsafe { libc::pthread_atfork(None, None, Some(in_child)) };
    });
}

/// Opens this process's `/proc/self/mem` into [`HELD_MEM`], closing the one held before (a
/// parent's, after `fork`) if it is still that file. System calls only: it runs in a child
/// right after `fork`.
fn reopen_self_mem() {
    // SAFETY: open(2) of a NUL-terminated path; the result is checked.
    let fd = unsafe { libc::open(c"/proc/self/mem".as_ptr(), libc::O_RDWR | libc::O_CLOEXEC) };
    let old = HELD_MEM[0].swap(-1, Ordering::AcqRel);
    if old >= 0 && held_is(old) {
        // SAFETY: our own descriptor, still the memory file we opened.
        unsafe { libc::close(old as libc::c_int) };
    }
    if fd < 0 {
        return;
    }
    // SAFETY: fcntl(2) F_DUPFD_CLOEXEC on a descriptor we own; the low one is closed once moved.
    let high = unsafe { libc::fcntl(fd, libc::F_DUPFD_CLOEXEC, HIGH_FD) };
    let fd = if high >= 0 {
        // SAFETY: closing our own descriptor, just duplicated.
        unsafe { libc::close(fd) };
        high
    } else if fd > libc::STDERR_FILENO {
        fd
    } else {
        // Not held in the place of a standard stream the process started without.
        // SAFETY: our own descriptor.
        unsafe { libc::close(fd) };
        return;
    };
    // SAFETY: a zeroed `stat` is a valid value (integers); fstat below fills it.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    // SAFETY: fstat(2) of our descriptor with a valid out pointer.
    if unsafe { libc::fstat(fd, &mut st) } != 0 {
        // SAFETY: our own descriptor.
        unsafe { libc::close(fd) };
        return;
    }
    // SAFETY: getpid has no preconditions.
    HELD_MEM[1].store(unsafe { libc::getpid() } as i64, Ordering::Release);
    HELD_MEM[2].store(st.st_dev as i64, Ordering::Release);
    HELD_MEM[3].store(st.st_ino as i64, Ordering::Release);
    HELD_MEM[0].store(fd as i64, Ordering::Release);
}

/// Whether descriptor `fd` is still the file [`HELD_MEM`] records (the application may have
/// closed it and got its number for a file of its own).
fn held_is(fd: i64) -> bool {
    // SAFETY: a zeroed `stat` is a valid value (integers); fstat below fills it.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    // SAFETY: fstat(2) with a valid out pointer; a closed descriptor only fails.
    let stated = unsafe { libc::fstat(fd as libc::c_int, &mut st) } == 0;
    stated && st.st_dev as i64 == HELD_MEM[2].load(Ordering::Acquire) && st.st_ino as i64 == HELD_MEM[3].load(Ordering::Acquire)
}

/// Runs `f` on this process's `/proc/self/mem`: opened afresh, or where that is refused, the
/// one [`hold_self_mem`] kept, if it is still that file of this process (not inherited across
/// `fork`: it would reach the parent's memory; not closed by the application and its number
/// reused for another file).
pub(crate) fn with_self_mem<R>(write: bool, f: impl FnOnce(&std::fs::File) -> std::io::Result<R>) -> std::io::Result<R> {
    let refused = match OpenOptions::new().read(true).write(write).open("/proc/self/mem") {
        Ok(mem) => return f(&mem),
        Err(e) => e,
    };
    let fd = HELD_MEM[0].load(Ordering::Acquire);
    if fd < 0 || HELD_MEM[1].load(Ordering::Acquire) != std::process::id() as i64 || !held_is(fd) {
        return Err(refused);
    }
    use std::os::fd::FromRawFd;
    // SAFETY: our held descriptor, checked above to be this process's memory file; wrapped
    // without taking it over (never closed here).
    let mem = std::mem::ManuallyDrop::new(unsafe { std::fs::File::from_raw_fd(fd as libc::c_int) });
    f(&mem)
}

/// Writes code bytes at `addr`, whatever the page's protection.
pub(crate) fn write_code(addr: u64, bytes: &[u8]) -> std::io::Result<()> {
    with_self_mem(true, |mem| mem.write_all_at(bytes, addr))
}

/// The `PATCH_LEN` bytes at each address (None where unreadable), read in few system calls
/// (process_vm_readv(2), up to 1024 ranges a call).
pub(crate) fn read_many(addrs: &[u64]) -> Vec<Option<[u8; 5]>> {
    let mut out: Vec<Option<[u8; 5]>> = vec![None; addrs.len()];
    let mut bufs = vec![[0u8; 5]; addrs.len()];
    let mut i = 0;
    while i < addrs.len() {
        let n = (addrs.len() - i).min(1024);
        let local: Vec<libc::iovec> = bufs[i..i + n].iter_mut().map(|b| libc::iovec { iov_base: b.as_mut_ptr().cast(), iov_len: 5 }).collect();
        let remote: Vec<libc::iovec> = addrs[i..i + n].iter().map(|&a| libc::iovec { iov_base: a as *mut libc::c_void, iov_len: 5 }).collect();
        // SAFETY: reads this process's memory into `bufs` (n buffers of 5 bytes) through
        // iovecs describing exactly them; an unreadable range ends the call early, never faults
        // (process_vm_readv(2)).
        let got = unsafe { libc::process_vm_readv(libc::getpid(), local.as_ptr(), n as libc::c_ulong, remote.as_ptr(), n as libc::c_ulong, 0) };
        // Refused outright (a seccomp filter): nothing can be read this way.
        if got < 0 && std::io::Error::last_os_error().raw_os_error() != Some(libc::EFAULT) {
            break;
        }
        // Whole ranges read; a partial or failed one is skipped.
        let whole = if got > 0 { got as usize / 5 } else { 0 };
        for k in 0..whole {
            out[i + k] = Some(bufs[i + k]);
        }
        i += whole + 1;
    }
    out
}

/// Reads memory at `addr` as it is, into `buf`.
pub(crate) fn read_memory(addr: u64, buf: &mut [u8]) -> std::io::Result<()> {
    with_self_mem(false, |mem| mem.read_exact_at(buf, addr))
}

/// Reads `len` bytes of code at `addr`, as the mapped file has them where someone else's
/// breakpoint covers them (see [`foreign_breakpoints`]).
pub(crate) fn read_code(addr: u64, len: usize) -> std::io::Result<Vec<u8>> {
    let mut buf = vec![0u8; len];
    read_memory(addr, &mut buf)?;
    foreign_breakpoints(addr, &mut buf);
    Ok(buf)
}

/// Puts back the file's bytes under breakpoints that are not ours in `code`, read at `addr`.
/// A kernel uprobe (or a debugger) writes an `int3` into this
/// process's copy of the code and keeps the original byte to itself: relocated as it is, the
/// `int3` would send our trampoline to a probe the kernel may have removed by then (the process
/// dies of the SIGTRAP), and a jump could never be placed there. An `int3` where the file has
/// another byte, outside our own patches, is such a breakpoint. A jump over it takes the place
/// of the other tool's probe in this process (the kernel writes nothing back over bytes that
/// are no longer its `int3`); an `int3` of ours there leaves the hits to the kernel's while it
/// is registered.
fn foreign_breakpoints(addr: u64, code: &mut [u8]) {
    if !code.contains(&0xcc) {
        return;
    }
    let Some(m) = crate::procmaps::mapping_of(addr) else { return };
    let Some(file) = crate::procmaps::open_mapped_file(&m) else { return };
    let mut original = vec![0u8; code.len().min((m.end - addr) as usize)];
    if file.read_exact_at(&mut original, addr - m.start + m.offset).is_err() {
        return;
    }
    for (i, (c, o)) in code.iter_mut().zip(original).enumerate() {
        if *c == 0xcc && o != 0xcc && !overlaps(addr + i as u64, 1) {
            *c = o;
        }
    }
}

fn gettid() -> i32 {
    // SAFETY: gettid has no preconditions.
    unsafe { libc::gettid() }
}

/// Moves every other thread that is stopped inside site `slot`'s patched bytes (past the first
/// one) to the matching instruction of the trampoline. Threads that block the signal or do not
/// answer within a second are left alone.
///
/// Only threads that may be there are signalled: none when the bytes hold one instruction, and
/// not a thread that the kernel shows waiting elsewhere (in a system call, whose return address
/// is outside them). The signal would end a `sleep` or `poll` early (they return EINTR even
/// under SA_RESTART), which the kernel's uprobes never do.
pub(crate) fn fix_up_threads(slot: usize) {
    let s = &SLOTS[slot];
    if s.nmap.load(Ordering::Acquire) == 0 {
        return;
    }
    let (start, end) = (s.addr.load(Ordering::Acquire) + 1, s.addr.load(Ordering::Acquire) + s.len.load(Ordering::Acquire) as u64);
    // A thread the signal finds asleep in a system call would see the call fail with EINTR
    // (nanosleep, poll, epoll_wait... are not restarted after a handler): it is signalled only
    // where it may wait inside the range.
    let syscall_inside = relocates_a_system_call(s);
    FIXUP_SITE.store(slot as u32 + 1, Ordering::Release);
    signal_other_threads(fixup_signal(), &FIXUP_ACKS, |tid| match waits_outside(tid, start, end) {
        Some(outside) => !outside,
        None => syscall_inside || !asleep(tid),
    });
    FIXUP_SITE.store(0, Ordering::Release);
}

/// Whether one of the instructions relocated from site `s` is a system call (`syscall`,
/// `sysenter`, `int 0x80`): a thread waiting in it goes on inside the site's bytes.
fn relocates_a_system_call(s: &SiteSlot) -> bool {
    let trampoline = s.trampoline.load(Ordering::Acquire);
    let n = (s.nmap.load(Ordering::Acquire) as usize).min(MAX_RELOCATED);
    s.map[..n].iter().any(|m| {
        let at = trampoline + (m.load(Ordering::Acquire) & 0xffff_ffff);
        // SAFETY: the trampoline is our own readable mapping, each relocated instruction (of
        // at least one byte, and the jump back after the last) at its offset.
        let b = unsafe { std::ptr::read_unaligned(at as *const [u8; 2]) };
        matches!(b, [0x0f, 0x05] | [0x0f, 0x34] | [0xcd, 0x80])
    })
}

/// Whether thread `tid` of this process is blocked (in a system call or otherwise) with its
/// user instruction pointer outside `[start, end)`: /proc/self/task/TID/syscall (proc(5)) reads
/// `running`, or the call's number and arguments, then the stack pointer and the instruction
/// pointer. Such a thread goes on at that pointer, so it is not inside the range. None where
/// the file cannot be read (a non-dumpable process: it belongs to root).
fn waits_outside(tid: i32, start: u64, end: u64) -> Option<bool> {
    let text = std::fs::read_to_string(format!("/proc/self/task/{tid}/syscall")).ok()?;
    let Some(pc) = text.split_whitespace().last().and_then(|pc| u64::from_str_radix(pc.strip_prefix("0x")?, 16).ok()) else { return Some(false) };
    Some(text.split_whitespace().count() >= 3 && !(start..end).contains(&pc))
}

/// Whether thread `tid` of this process sleeps interruptibly (state `S` in
/// /proc/self/task/TID/stat, readable in every process): in a system call (a page fault waits
/// in state `D`), so at the instruction after a system call instruction.
fn asleep(tid: i32) -> bool {
    let stat = std::fs::read_to_string(format!("/proc/self/task/{tid}/stat")).unwrap_or_default();
    stat.rsplit_once(')').and_then(|(_, rest)| rest.split_whitespace().next()) == Some("S")
}

/// Whether thread `tid` of this process blocks signal `sig` (its `SigBlk` in
/// /proc/self/task/TID/status, proc(5)): the runtime's own threads block every asynchronous
/// signal but the fix-up one (they run probed code too).
fn blocks_signal(tid: i32, sig: libc::c_int) -> bool {
    let status = std::fs::read_to_string(format!("/proc/self/task/{tid}/status")).unwrap_or_default();
    let mask = status.lines().find_map(|l| l.strip_prefix("SigBlk:")).and_then(|m| u64::from_str_radix(m.trim(), 16).ok());
    mask.is_some_and(|m| sig >= 1 && m & (1u64 << (sig - 1)) != 0)
}

/// Sends `sig` to every other thread of the process that does not block it and is `wanted`, and waits (up to a
/// second: a thread may block it in between) until as many have counted themselves in `acks`
/// (reset first).
pub(crate) fn signal_other_threads(sig: libc::c_int, acks: &AtomicU32, wanted: impl Fn(i32) -> bool) {
    let me = gettid();
    let tids: Vec<i32> = std::fs::read_dir("/proc/self/task")
        .map(|d| d.filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok()).filter(|&t| t != me && !blocks_signal(t, sig)).collect())
        .unwrap_or_default();
    acks.store(0, Ordering::Release);
    // SAFETY: getpid has no preconditions.
    let pid = unsafe { libc::getpid() };
    let mut sent = 0;
    for tid in tids {
        // (Asked right before its signal: what `wanted` sees of the thread is as fresh as it can be.)
        if !wanted(tid) {
            continue;
        }
        // SAFETY: tgkill to a thread of our own process (tgkill(2)); ESRCH (thread gone) is fine.
        if unsafe { libc::syscall(libc::SYS_tgkill, pid, tid, sig) } == 0 {
            sent += 1;
        }
    }
    let deadline = Instant::now() + Duration::from_secs(1);
    while acks.load(Ordering::Acquire) < sent && Instant::now() < deadline {
        std::thread::sleep(Duration::from_micros(50));
    }
}

/// Installs a 2-byte `new` over an instruction of at least 2 bytes that no thread can be
/// stopped inside (a `syscall`: a thread in it is stopped after it): int3 on the first byte
/// (a thread meeting it goes to the site's trampoline), the second byte, then the first; no
/// thread is signalled.
pub(crate) fn install_short(addr: u64, new: [u8; 2]) -> std::io::Result<()> {
    write_code(addr, &[0xcc])?;
    sync_cores();
    write_code(addr + 1, &new[1..])?;
    sync_cores();
    write_code(addr, &new[..1])?;
    sync_cores();
    Ok(())
}

/// Installs `new` (whose first byte ends the change) over the site's bytes.
pub(crate) fn install(slot: usize, addr: u64, new: &[u8]) -> std::io::Result<()> {
    write_code(addr, &[0xcc])?;
    sync_cores();
    fix_up_threads(slot);
    if new.len() > 1 {
        write_code(addr + 1, &new[1..])?;
        sync_cores();
    }
    write_code(addr, &new[..1])?;
    sync_cores();
    Ok(())
}

/// Allocates `size` bytes (whole pages) of memory within +-1 GiB of `near` (for rel32 jumps),
/// read-write. Pages come from chunks reserved near earlier requests: finding free address
/// space near a library takes hundreds of probing `mmap` calls, and a process rewrites many
/// system call sites in libc, each wanting a stub page.
pub(crate) fn alloc_near(near: u64, size: usize) -> Option<u64> {
    /// A chunk's size.
    const CHUNK: u64 = 64 * 4096;
    /// How far from `near` a page may be (a rel32 jump reaches 2 GiB).
    const REACH: u64 = 1 << 30;
    /// Chunks: (start, bytes handed out).
    static CHUNKS: Mutex<Vec<(u64, u64)>> = Mutex::new(Vec::new());
    let size = (size as u64).div_ceil(4096) * 4096;
    let fresh = |bytes: u64| map_near(near, bytes as usize).inspect(|&at| note_own_code(at, bytes));
    // Never waited for (callers may run in a signal handler): busy means a fresh mapping.
    let Ok(mut chunks) = CHUNKS.try_lock() else { return fresh(size) };
    if let Some((start, used)) = chunks.iter_mut().find(|(start, used)| *used + size <= CHUNK && (*start + *used).abs_diff(near) < REACH) {
        let at = *start + *used;
        *used += size;
        return Some(at);
    }
    if size > CHUNK {
        return fresh(size);
    }
    // Where no chunk fits (a crowded address space), the pages alone.
    let Some(start) = fresh(CHUNK) else { return fresh(size) };
    chunks.push((start, size));
    Some(start)
}

/// How many mappings [`OWN_CODE`] records at most.
const MAX_OWN_CODE: usize = 1024;

/// The mappings [`alloc_near`] made for code of ours (stubs, trampolines), each its start above
/// its page count in 16 bits; appended, never removed (nor is the code). Past
/// [`MAX_OWN_CODE`], `u64::MAX`: anything may be ours.
static OWN_CODE: [AtomicU64; MAX_OWN_CODE] = [const { AtomicU64::new(0) }; MAX_OWN_CODE];
static OWN_CODE_COUNT: AtomicUsize = AtomicUsize::new(0);

fn note_own_code(at: u64, bytes: u64) {
    let i = OWN_CODE_COUNT.fetch_add(1, Ordering::AcqRel);
    let pages = (bytes / 4096).min(0xffff);
    if let Some(slot) = OWN_CODE.get(i) {
        slot.store(at << 16 | pages, Ordering::Release);
    }
}

/// Whether `ip` may lie in code [`alloc_near`] made (a signal handler's question: no locks).
pub(crate) fn is_own_code(ip: u64) -> bool {
    let n = OWN_CODE_COUNT.load(Ordering::Acquire);
    n > MAX_OWN_CODE
        || OWN_CODE[..n].iter().any(|m| {
            let m = m.load(Ordering::Acquire);
            ip.wrapping_sub(m >> 16) < (m & 0xffff) * 4096
        })
}

/// A fresh read-write mapping of `size` bytes at exactly `at`, if that memory is free.
pub(crate) fn map_at(at: u64, size: usize) -> Option<u64> {
    // SAFETY: an anonymous private mapping at a hint, refused if anything is there
    // (MAP_FIXED_NOREPLACE, mmap(2)).
    let p = unsafe {
        libc::mmap(
            at as *mut libc::c_void,
            size,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_FIXED_NOREPLACE,
            -1,
            0,
        )
    };
    if p == libc::MAP_FAILED {
        return None;
    }
    if p as u64 != at {
        // SAFETY: unmapping what the call above just mapped (kernels before 4.17 take the
        // flag as a hint).
        unsafe { libc::munmap(p, size) };
        return None;
    }
    Some(at)
}

/// A fresh read-write mapping of `size` bytes within +-1 GiB of `near`: in the free address
/// space nearest to it, as `/proc/self/maps` shows it. (Probing every 64 KiB for a free spot
/// missed the small gaps a process's big mappings leave: two 1 GiB views of the shared region
/// around a library left only a 32 KiB gap at an odd address within reach.)
fn map_near(near: u64, size: usize) -> Option<u64> {
    const RANGE: u64 = 1 << 30;
    let size = (size as u64).div_ceil(4096) * 4096;
    let near = near & !4095;
    let (low, high) = (near.saturating_sub(RANGE).max(0x10000), near.saturating_add(RANGE));
    // Free gaps between the mappings, in order (mappings other threads make meanwhile are
    // found by `map_at` refusing the spot: the next candidate is tried).
    let maps = crate::procmaps::read_fresh();
    if maps.is_empty() {
        // No `/proc` (a chroot): probing every 64 KiB.
        const STEP: u64 = 1 << 16;
        let base = near & !(STEP - 1);
        return (1..RANGE / STEP)
            .flat_map(|i| [base.checked_sub(i * STEP), base.checked_add(i * STEP)])
            .flatten()
            .filter(|&c| c >= low)
            .find_map(|c| map_at(c, size as usize));
    }
    let mut candidates: Vec<u64> = Vec::new();
    let mut gap_start = 0x10000;
    for end in maps.iter().map(|m| (m.start, m.end)).chain([(u64::MAX, u64::MAX)]) {
        let (gap_end, next) = end;
        let (from, to) = (gap_start.max(low), gap_end.min(high + size));
        if to >= from + size {
            // The spot of the gap nearest to `near`.
            candidates.push(near.clamp(from, to - size));
        }
        gap_start = gap_start.max(next);
    }
    candidates.sort_by_key(|&c| c.abs_diff(near));
    candidates.into_iter().filter(|c| c.abs_diff(near) <= RANGE).find_map(|c| map_at(c, size as usize))
}

/// Makes memory from [`alloc_near`] executable (and no longer writable).
pub(crate) fn make_executable(addr: u64, size: usize) -> std::io::Result<()> {
    // SAFETY: the range was mapped by alloc_near (mprotect(2)).
    if unsafe { libc::mprotect(addr as *mut libc::c_void, size, libc::PROT_READ | libc::PROT_EXEC) } == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Pages near code whose surroundings big mappings fill (two 1 GiB views of the shared
    /// region beside the agent, CUDA's address reservations) come from whatever gap is left,
    /// however small or oddly placed: a page there, not a failed stub (a loader's `fork` got
    /// ENOSYS).
    #[test]
    fn a_page_is_found_in_a_small_gap_between_big_mappings() {
        const GIB: usize = 1 << 30;
        // SAFETY: a fresh reservation of address space (nothing is touched), mmap(2).
        let reserved =
            unsafe { libc::mmap(std::ptr::null_mut(), 3 * GIB, libc::PROT_NONE, libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE, -1, 0) };
        assert_ne!(reserved, libc::MAP_FAILED);
        let near = (reserved as u64 + 3 * GIB as u64 / 2) & !0xffff;
        // A 32 KiB gap that no 64 KiB step lands in, and no room for a chunk.
        let gap = near - 0x18000;
        // SAFETY: unmapping part of our own reservation.
        assert_eq!(unsafe { libc::munmap(gap as *mut libc::c_void, 0x8000) }, 0);
        let page = alloc_near(near, 4096);
        // SAFETY: our own reservation, whatever of it is left.
        unsafe { libc::munmap(reserved, 3 * GIB) };
        let page = page.expect("a page in the gap");
        assert!((gap..gap + 0x8000).contains(&page), "{page:#x} is outside the gap at {gap:#x}");
    }
}
