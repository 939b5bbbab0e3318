//! Loading the agent into a process that is already running (`bpftime attach PID`), the way a
//! debugger calls a function in its inferior: ptrace(2) stops one thread, its registers are
//! saved, `dlopen(AGENT, RTLD_NOW)` and then `bpftime_agent_attach(REGION)` are called in it
//! (arguments written on a stack mapped for them, a return address of 0 that ends each call
//! with a SIGSEGV we catch), and the registers are restored before the thread goes on. The
//! stack is the process's own `mmap`, made by a system call the thread steps through (libc's
//! `syscall` function holds the instruction), and unmapped after: the thread's own stack may
//! be a goroutine's few kilobytes, which `dlopen` would overrun. A thread stopped inside a
//! system call resumes it as if nothing happened (its `orig_rax` is cleared for our calls so
//! that the kernel does not restart it into them, and restored after).
//!
//! Everything unsafe is a ptrace(2), waitpid(2) or process_vm_writev(2) call on plain data.

use bpftime_attach::{resolve_in_process, Target};
use std::path::Path;

/// A traced thread; detached (registers restored first, when saved) on drop.
struct Traced {
    pid: i32,
    saved: Option<libc::user_regs_struct>,
    /// The stack our calls run on (base, size), once mapped; unmapped on drop.
    stack: Option<(u64, u64)>,
    /// A `syscall` instruction in the tracee (see [`Traced::system_call`]).
    syscall_at: u64,
    /// Signals that stopped the thread before a system call of ours ran: sent to it again
    /// once it goes on.
    held_signals: std::cell::RefCell<Vec<i32>>,
}

/// Bytes of the stack mapped for our calls in the tracee (`dlopen` and the agent's start).
const CALL_STACK: u64 = 1 << 20;

fn os_err(what: &str) -> String {
    format!("{what}: {}", std::io::Error::last_os_error())
}

impl Traced {
    /// Seizes `pid` and stops it (PTRACE_SEIZE + PTRACE_INTERRUPT).
    fn stop(pid: i32) -> Result<Traced, String> {
        // SAFETY: ptrace requests on another process with no memory handed over (ptrace(2)).
        if unsafe { libc::ptrace(libc::PTRACE_SEIZE, pid, 0, 0) } != 0 {
            return Err(os_err(&format!("ptrace(PTRACE_SEIZE, {pid})")));
        }
        let t = Traced { pid, saved: None, stack: None, syscall_at: 0, held_signals: Default::default() };
        // SAFETY: as above.
        if unsafe { libc::ptrace(libc::PTRACE_INTERRUPT, pid, 0, 0) } != 0 {
            return Err(os_err("ptrace(PTRACE_INTERRUPT)"));
        }
        t.wait_stop()?;
        Ok(t)
    }

    /// Waits for the next stop; its signal (0 for a ptrace event stop).
    fn wait_stop(&self) -> Result<i32, String> {
        let mut status = 0;
        // SAFETY: waitpid(2) with a valid out pointer.
        if unsafe { libc::waitpid(self.pid, &mut status, libc::__WALL) } != self.pid {
            return Err(os_err("waitpid"));
        }
        if libc::WIFEXITED(status) || libc::WIFSIGNALED(status) {
            return Err(format!("process {} ended while stopped by bpftime", self.pid));
        }
        Ok(if status >> 16 != 0 { 0 } else { libc::WSTOPSIG(status) })
    }

    fn regs(&self) -> Result<libc::user_regs_struct, String> {
        // SAFETY: user_regs_struct is plain integers; PTRACE_GETREGS fills it (ptrace(2)).
        let mut r: libc::user_regs_struct = unsafe { std::mem::zeroed() };
        // SAFETY: a valid out pointer for PTRACE_GETREGS.
        if unsafe { libc::ptrace(libc::PTRACE_GETREGS, self.pid, 0, &mut r as *mut _ as *mut libc::c_void) } != 0 {
            return Err(os_err("ptrace(PTRACE_GETREGS)"));
        }
        Ok(r)
    }

    fn set_regs(&self, r: &libc::user_regs_struct) -> Result<(), String> {
        // SAFETY: a valid pointer to registers for PTRACE_SETREGS (ptrace(2)).
        if unsafe { libc::ptrace(libc::PTRACE_SETREGS, self.pid, 0, r as *const _ as *mut libc::c_void) } != 0 {
            return Err(os_err("ptrace(PTRACE_SETREGS)"));
        }
        Ok(())
    }

    fn resume(&self, sig: i32) -> Result<(), String> {
        // SAFETY: continues the stopped tracee, delivering `sig` (0: none) (ptrace(2)).
        if unsafe { libc::ptrace(libc::PTRACE_CONT, self.pid, 0, sig as usize as *mut libc::c_void) } != 0 {
            return Err(os_err("ptrace(PTRACE_CONT)"));
        }
        Ok(())
    }

    /// Writes `data` at `addr` in the tracee.
    fn write(&self, addr: u64, data: &[u8]) -> Result<(), String> {
        let local = libc::iovec { iov_base: data.as_ptr() as *mut libc::c_void, iov_len: data.len() };
        let remote = libc::iovec { iov_base: addr as *mut libc::c_void, iov_len: data.len() };
        // SAFETY: one local buffer we own, one remote range (process_vm_writev(2)).
        let n = unsafe { libc::process_vm_writev(self.pid, &local, 1, &remote, 1, 0) };
        if n != data.len() as isize {
            return Err(os_err(&format!("writing {} bytes at {addr:#x} in process {}", data.len(), self.pid)));
        }
        Ok(())
    }

    /// Reads a NUL-terminated string at `addr` in the tracee (at most 512 bytes).
    fn read_string(&self, addr: u64) -> String {
        let mut buf = vec![0u8; 512];
        let local = libc::iovec { iov_base: buf.as_mut_ptr() as *mut libc::c_void, iov_len: buf.len() };
        let remote = libc::iovec { iov_base: addr as *mut libc::c_void, iov_len: buf.len() };
        // SAFETY: one local buffer we own, one remote range (process_vm_readv(2)).
        let n = unsafe { libc::process_vm_readv(self.pid, &local, 1, &remote, 1, 0) };
        buf.truncate(n.max(0) as usize);
        let end = buf.iter().position(|&b| b == 0).unwrap_or(buf.len());
        String::from_utf8_lossy(&buf[..end]).into_owned()
    }

    /// Reads `len` bytes at `addr` in the tracee.
    fn read(&self, addr: u64, len: usize) -> Result<Vec<u8>, String> {
        let mut buf = vec![0u8; len];
        let local = libc::iovec { iov_base: buf.as_mut_ptr() as *mut libc::c_void, iov_len: buf.len() };
        let remote = libc::iovec { iov_base: addr as *mut libc::c_void, iov_len: buf.len() };
        // SAFETY: one local buffer we own, one remote range (process_vm_readv(2)).
        let n = unsafe { libc::process_vm_readv(self.pid, &local, 1, &remote, 1, 0) };
        if n != len as isize {
            return Err(os_err(&format!("reading {len} bytes at {addr:#x} in process {}", self.pid)));
        }
        Ok(buf)
    }

    /// Makes system call `nr` with `args` in the tracee: its thread steps through the
    /// `syscall` instruction at `syscall_at` with the call's registers. Returns rax (a
    /// negative errno on failure).
    fn system_call(&self, nr: i64, args: [u64; 6]) -> Result<u64, String> {
        let saved = self.saved.ok_or("registers not saved")?;
        let mut r = saved;
        r.rip = self.syscall_at;
        r.rax = nr as u64;
        (r.rdi, r.rsi, r.rdx, r.r10, r.r8, r.r9) = (args[0], args[1], args[2], args[3], args[4], args[5]);
        r.orig_rax = u64::MAX;
        self.set_regs(&r)?;
        loop {
            // SAFETY: steps the stopped tracee by one instruction, delivering nothing (ptrace(2)).
            if unsafe { libc::ptrace(libc::PTRACE_SINGLESTEP, self.pid, 0, 0) } != 0 {
                return Err(os_err("ptrace(PTRACE_SINGLESTEP)"));
            }
            let sig = self.wait_stop()?;
            let now = self.regs()?;
            if sig == libc::SIGTRAP && now.rip == self.syscall_at + 2 {
                return Ok(now.rax);
            }
            if now.rip != self.syscall_at {
                return Err(format!("a system call stepped in process {} went to {:#x} (signal {sig})", self.pid, now.rip));
            }
            // Stopped before it ran: a signal for the thread, which it gets once it goes on.
            if sig != 0 && sig != libc::SIGTRAP {
                self.hold(sig);
            }
        }
    }

    /// Maps the stack our calls run on, through a `syscall` instruction of `syscall_fn`'s
    /// first bytes (libc's `syscall`).
    fn map_call_stack(&mut self, syscall_fn: u64) -> Result<(), String> {
        let code = self.read(syscall_fn, 64)?;
        let at = code.windows(2).position(|w| w == [0x0f, 0x05]).ok_or("no system call instruction in libc's syscall()")?;
        self.syscall_at = syscall_fn + at as u64;
        let flags = (libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_STACK) as u64;
        let base = self.system_call(libc::SYS_mmap, [0, CALL_STACK, (libc::PROT_READ | libc::PROT_WRITE) as u64, flags, u64::MAX, 0])?;
        if base as i64 > -4096 && (base as i64) < 0 {
            return Err(format!("mmap in process {}: {}", self.pid, std::io::Error::from_raw_os_error(-(base as i64) as i32)));
        }
        self.stack = Some((base, CALL_STACK));
        Ok(())
    }

    /// Whether the stopped thread runs on its signal stack (`sigaltstack(NULL, &old)` into the
    /// stack mapped for our calls: `SS_ONSTACK` in its flags).
    fn on_signal_stack(&self) -> Result<bool, String> {
        let (base, _) = self.stack.ok_or("no stack mapped")?;
        let r = self.system_call(libc::SYS_sigaltstack, [0, base, 0, 0, 0, 0])?;
        if r != 0 {
            return Ok(false);
        }
        let flags = self.read(base + 8, 4)?;
        Ok(i32::from_le_bytes(flags.try_into().expect("4 bytes")) & libc::SS_ONSTACK != 0)
    }

    /// Calls `func(args...)` in the tracee with `data` (strings) copied onto the stack mapped
    /// for our calls; the arguments may name `data`'s copy as `DATA`. Returns rax.
    fn call(&self, func: u64, args: [u64; 2], data: &[u8]) -> Result<u64, String> {
        let saved = self.saved.ok_or("registers not saved")?;
        let (base, size) = self.stack.ok_or("no stack mapped for the call")?;
        let data_at = (base + size - 64 - data.len() as u64) & !0xf;
        self.write(data_at, data)?;
        let sp = (data_at - 64) & !0xf;
        let return_at = sp - 8; // as after a call: (rsp + 8) is 16-aligned
        self.write(return_at, &0u64.to_le_bytes())?;
        let mut r = saved;
        r.rsp = return_at;
        r.rip = func;
        r.rdi = if args[0] == DATA { data_at } else { args[0] };
        r.rsi = if args[1] == DATA { data_at } else { args[1] };
        r.rax = 0;
        // Not in a system call for the kernel: no restart into our code.
        r.orig_rax = u64::MAX;
        self.set_regs(&r)?;
        // The application's asynchronous signals wait, pending with their siginfo, until the
        // call is over: a handler run inside it could leave it by siglongjmp (a timeout), and
        // the call would never end.
        let mask = signal_mask(self.pid).ok();
        if let Some(m) = mask {
            let _ = set_signal_mask(self.pid, m | !Self::call_signals());
        }
        let r = self.run_call(func);
        if let Some(m) = mask {
            let _ = set_signal_mask(self.pid, m);
        }
        r
    }

    /// Runs the call set up by [`Traced::call`] to its end.
    fn run_call(&self, func: u64) -> Result<u64, String> {
        self.resume(0)?;
        loop {
            match self.wait_stop()? {
                libc::SIGSEGV => {
                    let now = self.regs()?;
                    if now.rip == 0 {
                        return Ok(now.rax);
                    }
                    return Err(format!("the call at {func:#x} faulted at {:#x} in process {}", now.rip, self.pid));
                }
                0 => self.resume(0)?,
                // The call's own (see `call_signals`).
                sig if Self::call_signals() & (1u64 << (sig - 1)) != 0 => self.resume(sig)?,
                // The application's, where its mask could not be set: held until we are gone,
                // then sent again (without their siginfo).
                sig => {
                    self.hold(sig);
                    self.resume(0)?
                }
            }
        }
    }

    /// The signals that go through to the thread while it runs our call (a mask of bit
    /// `sig - 1`): the call's faults, the hook engine's traps and its own real-time signals
    /// (the agent patches code as it starts), SIGSYS of interception, and glibc's own (32 and
    /// 33: another thread's `setuid` waits for each thread to take one, holding a lock that
    /// `dlopen` and `pthread_create` need).
    fn call_signals() -> u64 {
        let own = [libc::SIGSEGV, libc::SIGBUS, libc::SIGILL, libc::SIGFPE, libc::SIGSYS, libc::SIGKILL, libc::SIGSTOP, 32, 33];
        own.iter().fold(bpftime_attach::signals::engine_signal_mask(), |m, s| m | 1u64 << (s - 1))
    }

    /// Keeps `sig` to send once the process is left alone (a standard signal once: pending
    /// twice, the kernel would deliver it once too).
    fn hold(&self, sig: i32) {
        let mut held = self.held_signals.borrow_mut();
        if sig >= libc::SIGRTMIN() || !held.contains(&sig) {
            held.push(sig);
        }
    }
}

/// Marks an argument of [`Traced::call`] as the address of its data.
const DATA: u64 = u64::MAX - 1;

impl Drop for Traced {
    fn drop(&mut self) {
        if let Some((base, size)) = self.stack.take() {
            let _ = self.system_call(libc::SYS_munmap, [base, size, 0, 0, 0, 0]);
        }
        if let Some(r) = self.saved {
            let _ = self.set_regs(&r);
        }
        // SAFETY: detaches the tracee we seized, delivering nothing (ptrace(2)).
        unsafe { libc::ptrace(libc::PTRACE_DETACH, self.pid, 0, 0) };
        for sig in self.held_signals.take() {
            // SAFETY: tgkill(2) to the thread that was to get the signal.
            unsafe { libc::syscall(libc::SYS_tgkill, self.pid, self.pid, sig) };
        }
    }
}

/// The address of `function` of `binary` in process `pid`.
fn address(pid: u32, binary: &str, function: &str) -> Result<u64, String> {
    let t = Target { binary: binary.to_string(), function: Some(function.to_string()), offset: 0 };
    resolve_in_process(pid, &t).map(|r| r.addr).map_err(|e| format!("process {pid}: {e}"))
}

/// The state letter of `/proc/PATH/stat` (R, S, T, ...).
fn task_state(path: &str) -> Option<String> {
    let stat = std::fs::read_to_string(format!("/proc/{path}/stat")).ok()?;
    // The state follows the command name, which is in parentheses and may hold anything.
    stat.rsplit_once(')').and_then(|(_, rest)| rest.split_whitespace().next()).map(str::to_string)
}

/// Why process `pid` cannot take a call now, if it cannot: stopped (SIGSTOP, a debugger's
/// stop: it would not run our call; also while a stop is still on its way: a SIGSTOP pending
/// or some thread stopped already), traced by a debugger (ptrace would be refused), a zombie.
fn not_callable(pid: u32) -> Option<String> {
    let mut state = task_state(&pid.to_string())?;
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let field = |name: &str| status.lines().find_map(|l| l.strip_prefix(name)).map(str::trim).unwrap_or("");
    let tracer = field("TracerPid:").parse::<u32>().unwrap_or(0);
    let stop_pending = u64::from_str_radix(field("ShdPnd:"), 16).unwrap_or(0) & (1 << (libc::SIGSTOP - 1)) != 0;
    let thread_stopped = std::fs::read_dir(format!("/proc/{pid}/task"))
        .map(|d| d.filter_map(Result::ok).any(|t| matches!(task_state(&format!("{pid}/task/{}", t.file_name().to_string_lossy())).as_deref(), Some("T" | "t"))))
        .unwrap_or(false);
    if stop_pending || thread_stopped {
        state = "T".into();
    }
    match state.as_str() {
        "T" | "t" => Some(format!("process {pid} is stopped (resume it first: kill -CONT {pid})")),
        "Z" | "X" => Some(format!("process {pid} has exited")),
        _ if tracer != 0 => Some(format!("process {pid} is traced by process {tracer} (a debugger)")),
        _ => None,
    }
}

/// ptrace(2) requests that read and set a stopped thread's signal mask (an 8-byte set).
const PTRACE_GETSIGMASK: libc::c_uint = 0x420a;
const PTRACE_SETSIGMASK: libc::c_uint = 0x420b;

/// The `SigBlk:` mask of `/proc/PATH/status`.
fn blocked_signals(path: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{path}/status")).unwrap_or_default();
    status.lines().find_map(|l| l.strip_prefix("SigBlk:")).and_then(|m| u64::from_str_radix(m.trim(), 16).ok()).unwrap_or(0)
}

/// Takes SIGTRAP and the agent's real-time signals out of the signal mask of stopped thread
/// `tid` (ptrace(2) `PTRACE_SETSIGMASK`).
fn open_trap_mask(tid: i32) -> Result<(), String> {
    set_signal_mask(tid, signal_mask(tid)? & !bpftime_attach::signals::engine_signal_mask())
}

/// The signal mask of thread `tid`, which we hold stopped (ptrace(2) `PTRACE_GETSIGMASK`).
fn signal_mask(tid: i32) -> Result<u64, String> {
    let mut mask = 0u64;
    // SAFETY: ptrace reading the mask of a thread we hold stopped into our 8-byte buffer.
    if unsafe { libc::ptrace(PTRACE_GETSIGMASK, tid, 8usize, &mut mask as *mut u64) } != 0 {
        return Err(os_err("ptrace(PTRACE_GETSIGMASK)"));
    }
    Ok(mask)
}

/// Sets the signal mask of thread `tid`, which we hold stopped (ptrace(2) `PTRACE_SETSIGMASK`).
fn set_signal_mask(tid: i32, mask: u64) -> Result<(), String> {
    // SAFETY: ptrace setting the mask of a thread we hold stopped from our 8-byte buffer.
    if unsafe { libc::ptrace(PTRACE_SETSIGMASK, tid, 8usize, &mask as *const u64) } != 0 {
        return Err(os_err("ptrace(PTRACE_SETSIGMASK)"));
    }
    Ok(())
}

/// Lets SIGTRAP through to every thread of `pid` but the one already stopped (`held`), as the
/// agent does for masks set after it starts: a thread that meets one of the agent's `int3`s
/// (a jump being written over the code it runs, a probe kept as a trap) with SIGTRAP blocked
/// is killed by the kernel, and worker threads often block every signal (and the agent's
/// real-time signals, which move a thread out of a jump being written). Each such thread is
/// stopped a moment for it (as for a debugger's attach, a stopped thread's `epoll_wait` may
/// return EINTR). Best effort: a thread that does not stop within a second (asleep in state
/// D) is left as it is.
fn open_trap_masks(pid: u32, held: &Traced) {
    let trap = bpftime_attach::signals::engine_signal_mask();
    if blocked_signals(&pid.to_string()) & trap != 0 {
        let _ = open_trap_mask(held.pid);
    }
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else { return };
    for tid in tasks.filter_map(Result::ok).filter_map(|t| t.file_name().to_string_lossy().parse::<i32>().ok()) {
        if tid == held.pid || blocked_signals(&format!("{pid}/task/{tid}")) & trap == 0 {
            continue;
        }
        // SAFETY: ptrace requests on a thread of the process, no memory handed over.
        if unsafe { libc::ptrace(libc::PTRACE_SEIZE, tid, 0, 0) } != 0 {
            continue; // It has exited meanwhile.
        }
        // SAFETY: as above.
        unsafe { libc::ptrace(libc::PTRACE_INTERRUPT, tid, 0, 0) };
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(1);
        let mut status = 0;
        let stopped = loop {
            // SAFETY: waitpid(2) with a valid out pointer, on a thread we trace.
            match unsafe { libc::waitpid(tid, &mut status, libc::__WALL | libc::WNOHANG) } {
                0 if std::time::Instant::now() < deadline => std::thread::sleep(std::time::Duration::from_millis(1)),
                r => break r == tid && libc::WIFSTOPPED(status),
            }
        };
        if !stopped {
            // Still running (or gone): it stops when it next can and goes on when we exit.
            continue;
        }
        // A signal that stopped it first is delivered as it goes on.
        let pending = if status >> 16 == 0 { libc::WSTOPSIG(status) } else { 0 };
        let _ = open_trap_mask(tid);
        // SAFETY: detaches the thread, delivering the signal that stopped it (if any).
        unsafe { libc::ptrace(libc::PTRACE_DETACH, tid, 0, pending as usize) };
    }
}

/// The termination signals, blocked while a process runs our calls: a `bpftime attach` stopped
/// half-way would leave it with our registers (and a return to address 0).
fn hold_termination_signals() -> impl Drop {
    struct Restore(libc::sigset_t);
    impl Drop for Restore {
        fn drop(&mut self) {
            // SAFETY: restores the mask saved below (pthread_sigmask(3)).
            unsafe { libc::pthread_sigmask(libc::SIG_SETMASK, &self.0, std::ptr::null_mut()) };
        }
    }
    // SAFETY: sigemptyset/sigaddset fill local sets; pthread_sigmask(3) reads one and writes the
    // old mask into the other.
    unsafe {
        let (mut set, mut old): (libc::sigset_t, libc::sigset_t) = (std::mem::zeroed(), std::mem::zeroed());
        libc::sigemptyset(&mut set);
        for sig in [libc::SIGINT, libc::SIGTERM, libc::SIGHUP, libc::SIGQUIT] {
            libc::sigaddset(&mut set, sig);
        }
        libc::pthread_sigmask(libc::SIG_BLOCK, &set, &mut old);
        Restore(old)
    }
}

/// Loads `agent` into process `pid` and starts it with region `shm`. Ok(false) when an agent
/// was already running there.
pub fn inject(pid: u32, agent: &Path, shm: &str) -> Result<bool, String> {
    if let Some(why) = not_callable(pid) {
        return Err(why);
    }
    let _held = hold_termination_signals();
    let agent = std::fs::canonicalize(agent).map_err(|e| format!("{}: {e}", agent.display()))?;
    let agent_path = agent.to_string_lossy().into_owned();
    // Loaded before (an attach earlier, or preloaded): it follows the region it started with;
    // its system call interception would dispatch the system calls below.
    if bpftime_attach::procmaps::mappings_of_process(pid).iter().any(|m| m.path == agent_path) {
        return Ok(false);
    }
    let dlopen = address(pid, "libc.so.6", "dlopen")?;
    let dlerror = address(pid, "libc.so.6", "dlerror")?;
    let syscall_fn = address(pid, "libc.so.6", "syscall")?;
    // A thread stopped on its signal stack (in a handler) would have it taken for free by the
    // kernel while our calls run elsewhere, and a signal delivered over the handler's frames:
    // it is let go on and stopped again.
    let mut tries = 0;
    let mut t = loop {
        let mut t = Traced::stop(pid as i32)?;
        t.saved = Some(t.regs()?);
        t.map_call_stack(syscall_fn)?;
        if !t.on_signal_stack()? {
            break t;
        }
        drop(t);
        tries += 1;
        if tries == 100 {
            return Err(format!("process {pid}: its thread was on its signal stack each time it was stopped"));
        }
        std::thread::sleep(std::time::Duration::from_millis(10));
    };
    // Before the agent starts writing jumps into code these threads run.
    open_trap_masks(pid, &t);
    let mut path = agent_path.clone().into_bytes();
    path.push(0);
    let handle = t.call(dlopen, [DATA, libc::RTLD_NOW as u64], &path)?;
    if handle == 0 {
        let msg = t.call(dlerror, [0, 0], &[0])?;
        let why = if msg == 0 { "no reason given".to_string() } else { t.read_string(msg) };
        return Err(format!("dlopen({agent_path}) in process {pid} failed: {why}"));
    }
    let start = address(pid, &agent_path, "bpftime_agent_attach")?;
    let mut name = shm.as_bytes().to_vec();
    name.push(0);
    let rc = t.call(start, [DATA, 0], &name)? as u32 as i32;
    // The agent may have turned system call interception on for this thread: the stack is
    // unmapped through a `syscall` it lets through.
    if let Ok(at) = address(pid, &agent_path, "bpftime_agent_syscall_instruction") {
        match t.call(at, [0, 0], &[0])? {
            0 => {}
            allowed => t.syscall_at = allowed,
        }
    }
    drop(t);
    match rc {
        0 => Ok(true),
        1 => Ok(false),
        _ => Err(format!("the agent did not start in process {pid} (its stderr says why)")),
    }
}
