//! What `bpftime` does around a command it runs (`run`, `start`, `load --`): forwards the
//! signals meant for the command, passes the command's exit status through, and for `run`
//! removes its region whatever happens (the command failing, `bpftime` being interrupted, its
//! reader going away). Without forwarding, `kill` or `timeout` on `bpftime` would leave its
//! command running alone (a loader with its probes attached).
//!
//! Signals (SIGINT, SIGTERM, SIGHUP, SIGQUIT) are blocked in every thread of `bpftime` and
//! taken by one thread with `sigwaitinfo`; the command gets them unblocked again
//! ([`prepare_command`]). A signal sent to `bpftime` alone (`kill`) is forwarded to the command;
//! one from the terminal already reached the command, which ends, and `bpftime` reports as
//! usual. A third signal gives up: the region is removed and `bpftime` exits at once.
//! SIGPIPE is ignored: a write to a reader that went away fails and is dropped.

use std::ffi::CString;
use std::os::unix::ffi::OsStrExt;
use std::sync::atomic::{AtomicBool, AtomicI32, AtomicU32, Ordering};
use std::sync::OnceLock;

/// The command's pid once it runs (0 before).
static CHILD: AtomicI32 = AtomicI32::new(0);
/// Signals received so far.
static RECEIVED: AtomicU32 = AtomicU32::new(0);
/// The command is being started (its pid is not known yet).
static STARTING: AtomicBool = AtomicBool::new(false);
/// A signal that came while the command was being started, for [`set_child`] to forward.
static PENDING: AtomicI32 = AtomicI32::new(0);
/// The region file to remove if we must exit from the signal thread.
static REGION_PATH: OnceLock<CString> = OnceLock::new();

const HANDLED: [libc::c_int; 4] = [libc::SIGINT, libc::SIGTERM, libc::SIGHUP, libc::SIGQUIT];
/// `si_code` of a signal the kernel sent on the terminal's behalf.
const SI_KERNEL: i32 = 0x80;

fn handled_set() -> libc::sigset_t {
    // SAFETY: sigemptyset/sigaddset initialise and fill a local set (sigsetops(3)).
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        for s in HANDLED {
            libc::sigaddset(&mut set, s);
        }
        set
    }
}

/// Removes the region file when dropped (normal returns and errors alike).
pub struct RegionGuard {
    path: CString,
}

impl Drop for RegionGuard {
    fn drop(&mut self) {
        // SAFETY: unlink(2) of a NUL-terminated path.
        unsafe { libc::unlink(self.path.as_ptr()) };
        // The code cache beside the region (see `Runtime::use_code_cache_from_env`).
        let mut cache = self.path.as_bytes().to_vec();
        cache.extend_from_slice(b".code");
        let _ = std::fs::remove_dir_all(std::ffi::OsStr::from_bytes(&cache));
    }
}

/// Starts supervising: forwards signals (see [`forward_signals`]); the returned guard removes
/// `region_path` when dropped, and a third signal removes it before exiting.
pub fn start(region_path: &std::path::Path) -> Result<RegionGuard, String> {
    let path = CString::new(region_path.as_os_str().as_encoded_bytes()).map_err(|e| e.to_string())?;
    let _ = REGION_PATH.set(path.clone());
    forward_signals()?;
    Ok(RegionGuard { path })
}

/// Blocks the signals above in this thread (call it before any other thread starts, so every
/// later thread inherits the mask), ignores SIGPIPE, and starts the thread that handles them.
pub fn forward_signals() -> Result<(), String> {
    let set = handled_set();
    // SAFETY: pthread_sigmask(3) with a valid set; signal(2) to ignore SIGPIPE in this process
    // (children get the default back from `Command`).
    unsafe {
        libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut());
        libc::signal(libc::SIGPIPE, libc::SIG_IGN);
    }
    std::thread::Builder::new()
        .name("bpftime-signals".into())
        .spawn(move || loop {
            // SAFETY: an all-zero siginfo_t is valid storage for sigwaitinfo(2) to fill.
            let mut info: libc::siginfo_t = unsafe { std::mem::zeroed() };
            // SAFETY: waits for one of the blocked signals (sigwaitinfo(2)).
            let sig = unsafe { libc::sigwaitinfo(&set, &mut info) };
            if sig > 0 {
                on_signal(sig, info.si_code);
            }
        })
        .map_err(|e| e.to_string())?;
    Ok(())
}

/// Runs `cmd` with signals to `bpftime` forwarded to it; its exit status.
pub fn run_forwarding(cmd: &mut std::process::Command) -> std::io::Result<std::process::ExitStatus> {
    if let Err(e) = forward_signals() {
        return Err(std::io::Error::other(e));
    }
    prepare_command(cmd);
    let mut child = cmd.spawn()?;
    set_child(child.id());
    child.wait()
}

/// Makes the command start with the signals we block unblocked (a blocked mask is inherited
/// across `exec`).
pub fn prepare_command(cmd: &mut std::process::Command) {
    use std::os::unix::process::CommandExt;
    STARTING.store(true, Ordering::SeqCst);
    let set = handled_set();
    // SAFETY: the closure runs in the child between fork and exec and only calls
    // pthread_sigmask, which is async-signal-safe.
    unsafe {
        cmd.pre_exec(move || {
            libc::pthread_sigmask(libc::SIG_UNBLOCK, &set, std::ptr::null_mut());
            Ok(())
        });
    }
}

/// Records the command's pid, for forwarding.
pub fn set_child(pid: u32) {
    CHILD.store(pid as i32, Ordering::SeqCst);
    let sig = PENDING.swap(0, Ordering::SeqCst);
    if sig != 0 {
        // SAFETY: kill(2) to our own child.
        unsafe { libc::kill(pid as i32, sig) };
    }
}

fn on_signal(sig: libc::c_int, code: i32) {
    let n = RECEIVED.fetch_add(1, Ordering::SeqCst) + 1;
    let mut child = CHILD.load(Ordering::SeqCst);
    if child == 0 && n < 3 && STARTING.load(Ordering::SeqCst) {
        // The command may already run (and have been meant by this signal) before its pid is
        // recorded: [`set_child`] forwards it, or, if the pid came meanwhile, it goes now.
        if code != SI_KERNEL {
            PENDING.store(sig, Ordering::SeqCst);
        }
        child = CHILD.load(Ordering::SeqCst);
        if child == 0 {
            return;
        }
        let sig = PENDING.swap(0, Ordering::SeqCst);
        if sig != 0 {
            // SAFETY: kill(2) to our own child.
            unsafe { libc::kill(child, sig) };
        }
        return;
    }
    if child > 0 && n < 3 {
        if code != SI_KERNEL {
            // SAFETY: kill(2) to our own child.
            unsafe { libc::kill(child, sig) };
        }
        return;
    }
    // Nothing to wait for, or asked three times: remove the region (if any) and leave now.
    if let Some(p) = REGION_PATH.get() {
        // SAFETY: unlink(2) of a NUL-terminated path.
        unsafe { libc::unlink(p.as_ptr()) };
    }
    if child > 0 {
        // SAFETY: kill(2) to our own child, which was asked to stop twice already.
        unsafe { libc::kill(child, libc::SIGKILL) };
    }
    eprintln!("bpftime: interrupted");
    // SAFETY: _exit(2) ends the process without running destructors of other threads' state.
    unsafe { libc::_exit(128 + sig) };
}
