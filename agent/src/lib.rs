//! # libbpftime.so: the agent
//!
//! Preloaded into a process (`LD_PRELOAD=libbpftime.so ./app`), it attaches eBPF uprobes and
//! uretprobes by inline hooking, then gets out of the way:
//! - with `BPFTIME_PROGRAM=obj.o` it loads the object itself (into the region named by
//!   `BPFTIME_SHM` when that exists, so other processes can read the maps, else into private
//!   memory) and attaches every `uprobe/...` and `uretprobe/...` section;
//! - otherwise it attaches the links found in the region (`bpftime run` and loaders write them).
//!
//! Probes on libraries that are not loaded yet wait, and attach when the library is mapped; the
//! probes of a library unloaded wait for it again (see `libraries`). Every error is printed with a `bpftime:` prefix and the
//! application runs on untouched; nothing panics across the C boundary.
//!
//! Thin glue: hooks come from `bpftime-attach`, programs from `bpftime-runtime`.

use std::ffi::{c_char, c_int};

/// `eprintln!` that never panics: std's panics when stderr cannot be written (a closed pipe in
/// a process that ignores SIGPIPE gives EPIPE), which inside someone else's process would end
/// our work half done or, across `extern "C"`, abort the process. A message that cannot be
/// written is dropped. (Defined before the modules, so that it is the `eprintln!` they use.)
macro_rules! eprintln {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        let _ = writeln!(std::io::stderr(), $($arg)*);
    }};
}

mod alloc;
mod cuda;
mod glue;
mod libraries;
mod loader_calls;
mod masks;
mod profile;
mod syscalls;

/// Everything the agent allocates comes from its own mappings, never from libc (see `alloc`).
#[global_allocator]
static ALLOC: alloc::AgentAlloc = alloc::AgentAlloc::new();

/// Keeps the allocator's locks consistent across `fork` (registered at load time).
fn protect_allocator_across_fork() {
    // Run as the agent's own work: their waits (sched_yield) are not the application's
    // system calls.
    extern "C" fn prepare() {
        bpftime_attach::without_probes(|| ALLOC.lock_all());
    }
    extern "C" fn after() {
        bpftime_attach::without_probes(|| ALLOC.unlock_all());
    }
    // SAFETY: the handlers only take and release spin locks (pthread_atfork(3)).
    unsafe { libc::pthread_atfork(Some(prepare), Some(after), Some(after)) };
}

pub use glue::{attach_pending, Agent, Effect, ProgramProbe};

/// Starts the agent, once: from `libbpftime_early.so`'s constructor, which runs before those of
/// the application's libraries (see `early/early.c`), or else from the agent's own
/// `.init_array` entry.
/// `argv` and `envp` are the program's, as glibc hands them to constructors.
#[unsafe(no_mangle)]
pub extern "C" fn bpftime_agent_early_init(_argc: c_int, argv: *const *const c_char, envp: *const *const c_char) {
    static STARTED: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);
    if !STARTED.swap(true, std::sync::atomic::Ordering::AcqRel) {
        bpftime_agent_init(syscalls::ExecArgs { argv: argv as u64, envp: envp as u64 });
    }
}

/// Runs at load time (an `.init_array` entry; a second call does nothing).
extern "C" fn init_at_load(argc: c_int, argv: *const *const c_char, envp: *const *const c_char) {
    bpftime_agent_early_init(argc, argv, envp);
}

fn bpftime_agent_init(exec: syscalls::ExecArgs) {
    // The dynamic loader's calls were recorded up to here (LD_AUDIT): what follows is ours.
    loader_calls::take_over();
    protect_allocator_across_fork();
    // What the runtime frees as threads exit is the agent's own work.
    bpftime_vm::thread_exit::run_destructors_with(|work| bpftime_attach::without_probes(work));
    masks::resolve_all();
    // Started with the image by LD_PRELOAD (not loaded into a running process by `bpftime
    // attach`, whose environment is the process's, in use by its threads): the marks of the
    // execve that started it come out of the application's environment first, whatever happens
    // next.
    let caller = glue::preloaded().then(|| syscalls::take_exec_caller(exec));
    if std::env::var_os("BPFTIME_DISABLE").is_some() || !glue::configured() {
        return;
    }
    if bpftime_attach::without_probes(|| std::panic::catch_unwind(glue::start)).is_err() {
        eprintln!("bpftime: the agent failed to start; the application runs without probes");
        return;
    }
    // Loaded with the image, right after the execve that started it: that call returns here
    // (its exit programs run now, as the kernel runs them in the new image). Unless the caller's
    // agent saw the call (it says so in the environment), its entry programs run first, on the
    // arguments the call left: a caller without the agent (`bpftime start` and a loader's
    // `-c CMD` give their names), a `vfork` child whose caller's interception could not reach
    // it (a vfork child normally turns interception on for itself and marks its exec).
    let _ = std::panic::catch_unwind(|| {
        let Some(caller) = &caller else { return };
        // (No call of ours here: interception is on, and the application's programs would see it.)
        let old_pid = match caller {
            syscalls::ExecCaller::Seen { thread, ended } => {
                syscalls::threads_ended_by_exec(ended);
                Some(*thread)
            }
            syscalls::ExecCaller::Untraced(name) => {
                syscalls::execve_entered(exec, Some(name));
                None
            }
            syscalls::ExecCaller::Unknown => {
                syscalls::execve_entered(exec, None);
                None
            }
        };
        syscalls::process_exec(old_pid);
        syscalls::execve_returned();
        // The dynamic loader's calls came next, before any code of ours could run.
        syscalls::loader_calls_made();
    });
}

#[used]
#[unsafe(link_section = ".init_array")]
static INIT: extern "C" fn(c_int, *const *const c_char, *const *const c_char) = init_at_load;

/// Whether the agent was loaded into a running process (`bpftime attach`) rather than
/// preloaded: what the process did before (its CUDA driver in use, say) was not seen.
pub(crate) static INJECTED: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// Starts the agent in a process it was loaded into while running (`bpftime attach` calls it
/// through ptrace after `dlopen`), with region `shm`: what the region's links name for this
/// process is attached, and the link table is followed (links removed are detached). Returns
/// 0, 1 if the agent was already running here, -1 on failure (said on stderr).
///
/// # Safety
/// `shm` is a NUL-terminated string.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn bpftime_agent_attach(shm: *const libc::c_char) -> libc::c_int {
    if shm.is_null() {
        return -1;
    }
    // SAFETY: the caller passes a NUL-terminated string.
    let name = unsafe { std::ffi::CStr::from_ptr(shm) }.to_string_lossy().into_owned();
    if glue::running() {
        return 1;
    }
    INJECTED.store(true, std::sync::atomic::Ordering::Release);
    match bpftime_attach::without_probes(|| std::panic::catch_unwind(|| glue::start_in(name))) {
        Ok(()) if glue::running() => 0,
        _ => -1,
    }
}

/// Where `bpftime attach` makes its last system call in this process (unmapping the stack it
/// called us on): a `syscall` instruction that system call interception lets through, 0 while
/// there is none.
#[unsafe(no_mangle)]
pub extern "C" fn bpftime_agent_syscall_instruction() -> u64 {
    bpftime_attach::syscalls::allowed_syscall_instruction()
}

/// Runs `f(arg)` with this thread's probes silenced, as the agent's own work runs: the syscall
/// server calls it around its work when a loader runs it beside the agent (`bpftime load`), so
/// that the loader is traced as any process is, but not the server answering its calls (a
/// program on `memcpy` updating the map whose bucket lock the server holds would wait for it
/// forever). `f` must not unwind.
#[unsafe(no_mangle)]
pub extern "C" fn bpftime_agent_without_probes(f: extern "C" fn(*mut libc::c_void), arg: *mut libc::c_void) {
    bpftime_attach::without_probes(|| f(arg))
}

/// Whether this thread runs the agent's own work or a probe handler now: the syscall server
/// beside the agent passes such calls (the agent's `close` of a file of its own, a kernel
/// program's `bpf()` a tail call makes) straight to the kernel, as they would go without it.
#[unsafe(no_mangle)]
pub extern "C" fn bpftime_agent_at_work() -> bool {
    bpftime_attach::in_probe()
}

// `execve`, `posix_spawn` and kin, wrapped: what the traced program starts gets the room for
// static thread-locals its libraries need under the audit library (rustc under `cargo build`).
// Worked out as our own work: no probe or system call program sees its reads.
bpftime_launch::exec_wrappers!(bpftime_attach::without_probes);

/// `dlopen`, wrapped: after the real one loads a library, pending probes on it are attached.
///
/// # Safety
/// Same contract as dlopen(3).
#[unsafe(no_mangle)]
pub unsafe extern "C" fn dlopen(filename: *const libc::c_char, flags: libc::c_int) -> *mut libc::c_void {
    type DlopenFn = unsafe extern "C" fn(*const libc::c_char, libc::c_int) -> *mut libc::c_void;
    static REAL: std::sync::OnceLock<usize> = std::sync::OnceLock::new();
    // SAFETY: dlsym with RTLD_NEXT and a NUL-terminated name (dlsym(3)).
    let real = *REAL.get_or_init(|| unsafe { libc::dlsym(libc::RTLD_NEXT, c"dlopen".as_ptr()) as usize });
    if real == 0 {
        return std::ptr::null_mut();
    }
    // SAFETY: `real` is the next dlopen in the lookup order, which has this signature.
    let f: DlopenFn = unsafe { std::mem::transmute(real) };
    // SAFETY: forwarding the caller's arguments unchanged.
    let handle = unsafe { f(filename, flags) };
    if !handle.is_null() && !bpftime_attach::in_probe() && libraries::wrappers_needed() {
        bpftime_attach::without_probes(|| {
            let _ = std::panic::catch_unwind(|| glue::libraries_changed(false));
        });
    }
    handle
}

/// `dlclose`, wrapped: probes in a library the real one unloads wait for it to be loaded
/// again.
///
/// # Safety
/// Same contract as dlclose(3).
#[unsafe(no_mangle)]
pub unsafe extern "C" fn dlclose(handle: *mut libc::c_void) -> libc::c_int {
    type DlcloseFn = unsafe extern "C" fn(*mut libc::c_void) -> libc::c_int;
    static REAL: std::sync::OnceLock<usize> = std::sync::OnceLock::new();
    // SAFETY: dlsym with RTLD_NEXT and a NUL-terminated name (dlsym(3)).
    let real = *REAL.get_or_init(|| unsafe { libc::dlsym(libc::RTLD_NEXT, c"dlclose".as_ptr()) as usize });
    if real == 0 {
        return -1;
    }
    // SAFETY: `real` is the next dlclose in the lookup order, which has this signature, called
    // with the caller's handle.
    let rc = unsafe { std::mem::transmute::<usize, DlcloseFn>(real)(handle) };
    if rc == 0 && !bpftime_attach::in_probe() && libraries::wrappers_needed() {
        bpftime_attach::without_probes(|| {
            let _ = std::panic::catch_unwind(|| glue::libraries_changed(true));
        });
    }
    rc
}

/// `sigaction`, wrapped: the application's handlers run behind the hook engine's wrapper, so
/// that probes hit inside them run at their own nesting level (see `bpftime_attach::signals`).
///
/// # Safety
/// Same contract as sigaction(2).
#[unsafe(no_mangle)]
pub unsafe extern "C" fn sigaction(sig: libc::c_int, act: *const libc::sigaction, old: *mut libc::sigaction) -> libc::c_int {
    // SAFETY: the caller's arguments, forwarded under the same contract.
    unsafe { bpftime_attach::signals::sigaction(sig, act, old) }
}

/// `sigaltstack`, wrapped: a thread's new signal stack is what its probe hits compare their
/// frame with (a hit there stays there; see `bpftime_attach::signal_stack_changed`).
///
/// # Safety
/// Same contract as sigaltstack(2).
#[unsafe(no_mangle)]
pub unsafe extern "C" fn sigaltstack(ss: *const libc::stack_t, old: *mut libc::stack_t) -> libc::c_int {
    type SigaltstackFn = unsafe extern "C" fn(*const libc::stack_t, *mut libc::stack_t) -> libc::c_int;
    static REAL: std::sync::OnceLock<usize> = std::sync::OnceLock::new();
    // SAFETY: dlsym with RTLD_NEXT and a NUL-terminated name (dlsym(3)).
    let real = *REAL.get_or_init(|| unsafe { libc::dlsym(libc::RTLD_NEXT, c"sigaltstack".as_ptr()) as usize });
    if real == 0 {
        return -1;
    }
    // SAFETY: libc's sigaltstack, with the caller's arguments under the same contract.
    let r = unsafe { std::mem::transmute::<usize, SigaltstackFn>(real)(ss, old) };
    if r == 0 && !ss.is_null() {
        bpftime_attach::signal_stack_changed();
    }
    r
}

/// `signal`, wrapped like [`sigaction`].
///
/// # Safety
/// Same contract as signal(2).
#[unsafe(no_mangle)]
pub unsafe extern "C" fn signal(sig: libc::c_int, handler: libc::sighandler_t) -> libc::sighandler_t {
    // SAFETY: the caller's arguments, forwarded under the same contract.
    unsafe { bpftime_attach::signals::signal(sig, handler) }
}

/// `_Unwind_RaiseException` (libgcc's unwinder, which C++'s `throw` calls), wrapped: the
/// unwinder finds each caller by a frame's return address, and stops where a return probe put
/// its stub instead (the kernel's uretprobes end such a process in `std::terminate`). There
/// the real return address is put back and the search runs again, until the handler is found
/// or no probe is in the way (see `bpftime_attach::unwind_past_return_probe`).
///
/// # Safety
/// Same contract as the unwinder's (the Itanium C++ ABI's `_Unwind_RaiseException`).
#[allow(non_snake_case)]
#[unsafe(no_mangle)]
pub unsafe extern "C-unwind" fn _Unwind_RaiseException(exception: *mut libc::c_void) -> c_int {
    static REAL: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    // SAFETY: the caller's exception, forwarded under the same contract.
    unsafe { unwind_past_probes(exception, &REAL, c"_Unwind_RaiseException") }
}

/// `_Unwind_Resume_or_Rethrow` (C++'s `throw;`), wrapped like [`_Unwind_RaiseException`].
///
/// # Safety
/// Same contract as the unwinder's.
#[allow(non_snake_case)]
#[unsafe(no_mangle)]
pub unsafe extern "C-unwind" fn _Unwind_Resume_or_Rethrow(exception: *mut libc::c_void) -> c_int {
    static REAL: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    // SAFETY: the caller's exception, forwarded under the same contract.
    unsafe { unwind_past_probes(exception, &REAL, c"_Unwind_Resume_or_Rethrow") }
}

/// Calls the next `name` in the lookup order (cached in `real`) until it finds a handler (then
/// it does not return) or fails for another reason than a return probe in its way.
///
/// # Safety
/// `name` is an unwinder entry taking the exception and returning its reason code.
#[inline(always)]
unsafe fn unwind_past_probes(exception: *mut libc::c_void, real: &std::sync::atomic::AtomicUsize, name: &std::ffi::CStr) -> c_int {
    type UnwindFn = unsafe extern "C-unwind" fn(*mut libc::c_void) -> c_int;
    /// The unwinder's code for "no handler up to the end of the stack" (unwind.h).
    const URC_END_OF_STACK: c_int = 5;
    /// `_URC_FATAL_PHASE1_ERROR`: what to answer when there is no unwinder to call.
    const URC_FATAL_PHASE1_ERROR: c_int = 3;
    let mut f = real.load(std::sync::atomic::Ordering::Acquire);
    if f == 0 {
        // SAFETY: dlsym with RTLD_NEXT and a NUL-terminated name (dlsym(3)).
        f = unsafe { libc::dlsym(libc::RTLD_NEXT, name.as_ptr()) } as usize;
        real.store(f, std::sync::atomic::Ordering::Release);
    }
    if f == 0 {
        return URC_FATAL_PHASE1_ERROR;
    }
    // SAFETY: the next definition of this unwinder entry, which has this signature.
    let f: UnwindFn = unsafe { std::mem::transmute::<usize, UnwindFn>(f) };
    // Frames above this one are the thrower's callers.
    let here = 0u8;
    let sp = std::ptr::addr_of!(here) as u64;
    loop {
        // SAFETY: forwarding the caller's exception unchanged; a search that fails leaves it
        // as it was, so it may run again.
        let rc = unsafe { f(exception) };
        if rc != URC_END_OF_STACK || !bpftime_attach::unwind_past_return_probe(sp) {
            return rc;
        }
    }
}

/// `pthread_create`, wrapped: while system calls are intercepted, the new thread turns
/// interception on for itself before running its start routine (it is not inherited).
///
/// # Safety
/// Same contract as pthread_create(3).
#[unsafe(no_mangle)]
pub unsafe extern "C" fn pthread_create(
    thread: *mut libc::pthread_t,
    attr: *const libc::pthread_attr_t,
    start: extern "C" fn(*mut libc::c_void) -> *mut libc::c_void,
    arg: *mut libc::c_void,
) -> libc::c_int {
    type CreateFn = unsafe extern "C" fn(
        *mut libc::pthread_t,
        *const libc::pthread_attr_t,
        extern "C" fn(*mut libc::c_void) -> *mut libc::c_void,
        *mut libc::c_void,
    ) -> libc::c_int;
    static REAL: std::sync::OnceLock<usize> = std::sync::OnceLock::new();
    // SAFETY: dlsym with RTLD_NEXT and a NUL-terminated name (dlsym(3)).
    let real = *REAL.get_or_init(|| unsafe { libc::dlsym(libc::RTLD_NEXT, c"pthread_create".as_ptr()) as usize });
    if real == 0 {
        return libc::EAGAIN;
    }
    // SAFETY: the next pthread_create in the lookup order, which has this signature.
    let real: CreateFn = unsafe { std::mem::transmute::<usize, CreateFn>(real) };
    // The agent's own threads (made while it works) are left alone.
    if !bpftime_attach::syscalls::active() || bpftime_attach::in_probe() {
        // SAFETY: forwarding the caller's arguments unchanged.
        return unsafe { real(thread, attr, start, arg) };
    }
    extern "C" fn begin(boxed: *mut libc::c_void) -> *mut libc::c_void {
        // SAFETY: the box made below, handed to exactly this thread. (Freed as the agent's own
        // work: a wait for the allocator's lock is no call of the application's.)
        let (start, arg) =
            bpftime_attach::without_probes(|| *unsafe { Box::from_raw(boxed as *mut (extern "C" fn(*mut libc::c_void) -> *mut libc::c_void, usize)) });
        let _ = bpftime_attach::syscalls::enable();
        start(arg as *mut libc::c_void)
    }
    let boxed = bpftime_attach::without_probes(|| Box::into_raw(Box::new((start, arg as usize)))) as *mut libc::c_void;
    // SAFETY: the caller's thread and attributes, our start routine and its boxed argument.
    let r = unsafe { real(thread, attr, begin, boxed) };
    if r != 0 {
        // SAFETY: not handed to any thread: the creation failed.
        bpftime_attach::without_probes(|| drop(unsafe { Box::from_raw(boxed as *mut (extern "C" fn(*mut libc::c_void) -> *mut libc::c_void, usize)) }));
    }
    r
}
