//! Loading the agent into a process that is already running (`bpftime attach PID`), the way a
//! debugger calls a function in its inferior: ptrace(2) stops one thread, its registers are
//! saved, `dlopen(AGENT, RTLD_NOW)` and then `bpftime_agent_attach(REGION)` are called in it
//! (arguments written below its stack pointer, a return address of 0 that ends each call with
//! a SIGSEGV we catch), and the registers are restored before the thread goes on. A thread
//! stopped inside a system call resumes it as if nothing happened (its `orig_rax` is cleared
//! for our calls so that the kernel does not restart it into them, and restored after).
//!
//! Everything unsafe is a ptrace(2), waitpid(2) or process_vm_writev(2) call on plain data.

use bpftime_attach::{resolve_in_process, Target};
use std::path::Path;

/// A traced thread; detached (registers restored first, when saved) on drop.
struct Traced {
    pid: i32,
    saved: Option<libc::user_regs_struct>,
}

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
        let t = Traced { pid, saved: None };
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

    /// Calls `func(args...)` in the tracee with `data` (strings) copied below its stack; the
    /// arguments may name `data`'s copy as `DATA`. Returns rax.
    fn call(&self, func: u64, args: [u64; 2], data: &[u8]) -> Result<u64, String> {
        let saved = self.saved.ok_or("registers not saved")?;
        // Below the red zone and below what the thread may have on its stack right now.
        let data_at = (saved.rsp - 1024 - data.len() as u64) & !0xf;
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
                sig => self.resume(sig)?,
            }
        }
    }
}

/// Marks an argument of [`Traced::call`] as the address of its data.
const DATA: u64 = u64::MAX - 1;

impl Drop for Traced {
    fn drop(&mut self) {
        if let Some(r) = self.saved {
            let _ = self.set_regs(&r);
        }
        // SAFETY: detaches the tracee we seized, delivering nothing (ptrace(2)).
        unsafe { libc::ptrace(libc::PTRACE_DETACH, self.pid, 0, 0) };
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
    let dlopen = address(pid, "libc.so.6", "dlopen")?;
    let dlerror = address(pid, "libc.so.6", "dlerror")?;
    let mut t = Traced::stop(pid as i32)?;
    t.saved = Some(t.regs()?);
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
    drop(t);
    match rc {
        0 => Ok(true),
        1 => Ok(false),
        _ => Err(format!("the agent did not start in process {pid} (its stderr says why)")),
    }
}
