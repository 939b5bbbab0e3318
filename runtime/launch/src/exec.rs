//! The exec wrappers of the libraries bpftime puts in other processes (the agent, the syscall
//! server): a program that a process with the audit library in its environment starts gets the
//! `GLIBC_TUNABLES` its libraries need ([`crate::tunables_for`]) in the environment it is
//! given; otherwise the call goes on as it was made.
//!
//! glibc's `execl`, `execle` and `execlp` make their `execve` inside libc: they are variadic,
//! which stable Rust cannot define, so their wrappers are naked functions that hand the
//! arguments on as an array ([`crate::exec_list_wrapper!`]). `system`/`popen` start a shell, whose
//! own `execve` is wrapped. Nothing is allocated for an environment that does not name our audit
//! library; one made in a `vfork` child whose exec succeeds stays in its parent's heap (a few
//! hundred bytes per such exec).

use crate::{program_path, static_tls_of_libraries, tunables_for, AUDIT_LIBRARY};
pub use std::ffi::{c_char, c_int, c_void};
use std::ffi::{CStr, CString, OsStr};
use std::os::unix::ffi::OsStrExt;
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};

/// Most entries of an environment read (more: it is left as it is).
const MOST_ENTRIES: usize = 1 << 16;

/// An environment array made for one exec: the caller's entries, `GLIBC_TUNABLES` replaced.
pub struct ExecEnvironment {
    /// The entries, NULL-terminated.
    entries: Vec<*const c_char>,
    /// The `GLIBC_TUNABLES=...` entry `entries` points to.
    _tunables: CString,
}

impl ExecEnvironment {
    /// The array, as execve(2) takes it (valid while `self` lives).
    pub fn as_ptr(&self) -> *const *const c_char {
        self.entries.as_ptr()
    }
}

/// The environment an exec of `program` (looked up in `PATH` where `search`, as `execvp` does)
/// given environment `envp` needs instead, so that it starts: where `envp`'s `LD_AUDIT` names
/// bpftime's audit library and the program's libraries take more static TLS than glibc's room
/// holds. None: `envp` does (or nothing can be read).
///
/// # Safety
/// `program` is null or a NUL-terminated string; `envp` is null or a NULL-terminated array of
/// NUL-terminated strings (as execve(2) takes them), neither changed while this runs.
pub unsafe fn environment_for_exec(program: *const c_char, search: bool, envp: *const *const c_char) -> Option<ExecEnvironment> {
    if program.is_null() {
        return None;
    }
    // SAFETY: the caller's contract: a NULL-terminated array of NUL-terminated strings.
    let value = |name: &[u8]| unsafe { variable(envp, name) };
    // Nothing allocated for an environment without our audit library (an exec from a signal
    // handler, or in a `vfork` child, which shares its parent's heap).
    let audit = value(b"LD_AUDIT")?;
    let ours = |lib: &[u8]| lib.rsplit(|&b| b == b'/').next() == Some(AUDIT_LIBRARY.as_bytes());
    if !audit.split(|&b| b == b':' || b == b' ').any(ours) {
        return None;
    }
    // SAFETY: NUL-terminated (the caller's contract).
    let program = OsStr::from_bytes(unsafe { CStr::from_ptr(program) }.to_bytes());
    let path = if search { program_path(program)? } else { PathBuf::from(program) };
    let need = static_tls_of_libraries(&path, value(b"LD_LIBRARY_PATH").map(OsStr::from_bytes));
    // A value that is not text is left as it is.
    let current = value(b"GLIBC_TUNABLES").map(std::str::from_utf8).transpose().ok()?;
    let tunables = CString::new(format!("GLIBC_TUNABLES={}", tunables_for(current, need)?)).ok()?;
    let mut entries = Vec::new();
    loop {
        // SAFETY: within the NULL-terminated array (the caller's contract): each index up to
        // and including its NULL.
        let entry = unsafe { *envp.add(entries.len()) };
        if entry.is_null() {
            break;
        }
        if entries.len() == MOST_ENTRIES {
            return None;
        }
        entries.push(entry);
    }
    // SAFETY: each entry is a NUL-terminated string (the caller's contract).
    entries.retain(|&e| !unsafe { CStr::from_ptr(e) }.to_bytes().starts_with(b"GLIBC_TUNABLES="));
    entries.push(tunables.as_ptr());
    entries.push(std::ptr::null());
    Some(ExecEnvironment { entries, _tunables: tunables })
}

/// The value of the first variable `name` in environment `envp` (null: none), read in place.
///
/// # Safety
/// `envp` is null or a NULL-terminated array of NUL-terminated strings that live as long as the
/// value is used.
unsafe fn variable<'a>(envp: *const *const c_char, name: &[u8]) -> Option<&'a [u8]> {
    if envp.is_null() {
        return None;
    }
    (0..MOST_ENTRIES)
        // SAFETY: within the NULL-terminated array, up to its NULL (the caller's contract).
        .map(|i| unsafe { *envp.add(i) })
        .take_while(|e| !e.is_null())
        // SAFETY: a NUL-terminated string (the caller's contract).
        .find_map(|e| unsafe { CStr::from_ptr(e) }.to_bytes().strip_prefix(name)?.strip_prefix(b"="))
}

/// `PATH` of this process's environment (`environ`), read in place: not through std's
/// environment lock, which the code a signal handler interrupted may hold.
pub(crate) fn process_path() -> Option<&'static OsStr> {
    // SAFETY: `environ` is null or a NULL-terminated array of NUL-terminated strings.
    unsafe { variable(environ(), b"PATH") }.map(OsStr::from_bytes)
}

/// Fails an exec whose libc function is missing: -1 with errno ENOSYS.
pub fn missing_exec() -> c_int {
    // SAFETY: errno(3) of this thread.
    unsafe { *libc::__errno_location() = libc::ENOSYS };
    -1
}

/// The next definition of `name` after the calling library's (`dlsym(RTLD_NEXT)`: libc's),
/// looked up once into `cache`; 0 where there is none.
pub fn next_definition(cache: &AtomicUsize, name: &CStr) -> usize {
    let mut found = cache.load(Ordering::Relaxed);
    if found == 0 {
        // SAFETY: dlsym(3) with RTLD_NEXT and a NUL-terminated name.
        found = unsafe { libc::dlsym(libc::RTLD_NEXT, name.as_ptr()) } as usize;
        cache.store(found, Ordering::Relaxed);
    }
    found
}

/// [`environment_for_exec`], never unwinding: None also where it panicked.
///
/// # Safety
/// As [`environment_for_exec`].
pub unsafe fn environment_caught(program: *const c_char, search: bool, envp: *const *const c_char) -> Option<ExecEnvironment> {
    // SAFETY: the caller's arguments, under the same contract.
    std::panic::catch_unwind(|| unsafe { environment_for_exec(program, search, envp) }).ok().flatten()
}

/// What posix_spawn returns where libc has no definition to call.
pub const ENOSYS: c_int = libc::ENOSYS;

/// The process's environment (`environ`), for the execs that take none.
pub fn environ() -> *const *const c_char {
    unsafe extern "C" {
        static environ: *const *const c_char;
    }
    // SAFETY: libc's `environ`, read as a value (the array it points to is the caller's to read).
    unsafe { environ }
}

/// libc's definition of `name` (NUL-terminated) as function type `F` (looked up once into
/// `cache`); None where there is none.
///
/// # Safety
/// `F` is the type of libc's function of that name.
pub unsafe fn next_function<F: Copy>(cache: &AtomicUsize, name: &CStr) -> Option<F> {
    assert_eq!(std::mem::size_of::<F>(), std::mem::size_of::<usize>());
    match next_definition(cache, name) {
        0 => None,
        // SAFETY: a function's address, of type `F` (the caller's contract), as wide as usize.
        f => Some(unsafe { std::mem::transmute_copy::<usize, F>(&f) }),
    }
}

/// Defines, in the library that invokes it, `execve`, `execv`, `execvp`, `execvpe`, `fexecve`,
/// `posix_spawn` and `posix_spawnp` that pass the call to libc's with the environment
/// [`environment_for_exec`] makes where one is needed, and `execl`, `execlp` and `execle`, which
/// hand their arguments to those. `$run` (a path to a function `fn(impl FnOnce() -> R) -> R`:
/// the agent's `without_probes`, the server's `beside::quiet`) runs the wrappers' own work.
#[macro_export]
macro_rules! exec_wrappers {
    ($run:path) => {
        /// The environment a wrapped exec gives, made with the invoking library's `$run`.
        unsafe fn bpftime_exec_environment(
            program: *const $crate::exec::c_char,
            search: bool,
            envp: *const *const $crate::exec::c_char,
        ) -> Option<$crate::exec::ExecEnvironment> {
            // SAFETY: the exec's arguments, as it was given them (execve(2)'s contract).
            $run(|| unsafe { $crate::exec::environment_caught(program, search, envp) })
        }

        $crate::exec_wrapper!(execve(path: *const $crate::exec::c_char, argv: *const *const $crate::exec::c_char, envp: *const *const $crate::exec::c_char) program path, search false, env envp, missing $crate::exec::missing_exec());
        $crate::exec_wrapper!(execvpe(file: *const $crate::exec::c_char, argv: *const *const $crate::exec::c_char, envp: *const *const $crate::exec::c_char) program file, search true, env envp, missing $crate::exec::missing_exec());
        $crate::exec_wrapper!(fexecve(fd: $crate::exec::c_int, argv: *const *const $crate::exec::c_char, envp: *const *const $crate::exec::c_char) program std::ffi::CString::new(format!("/proc/self/fd/{fd}")).unwrap_or_default().as_ptr(), search false, env envp, missing $crate::exec::missing_exec());
        $crate::exec_wrapper!(posix_spawn(pid: *mut i32, path: *const $crate::exec::c_char, actions: *const $crate::exec::c_void, attributes: *const $crate::exec::c_void, argv: *const *const $crate::exec::c_char, envp: *const *const $crate::exec::c_char) program path, search false, env envp, missing $crate::exec::ENOSYS);
        $crate::exec_wrapper!(posix_spawnp(pid: *mut i32, file: *const $crate::exec::c_char, actions: *const $crate::exec::c_void, attributes: *const $crate::exec::c_void, argv: *const *const $crate::exec::c_char, envp: *const *const $crate::exec::c_char) program file, search true, env envp, missing $crate::exec::ENOSYS);
        $crate::exec_wrapper!(execv(path: *const $crate::exec::c_char, argv: *const *const $crate::exec::c_char) program path, search false, made through execve);
        $crate::exec_wrapper!(execvp(file: *const $crate::exec::c_char, argv: *const *const $crate::exec::c_char) program file, search true, made through execvpe);
        $crate::exec_list_wrapper!(execl through execv);
        $crate::exec_list_wrapper!(execlp through execvp);
        $crate::exec_list_wrapper!(execle through bpftime_execle_list);

        /// `execle`'s arguments gathered (see `exec_list_wrapper!`): its environment is the
        /// word after the arguments' terminating null pointer.
        ///
        /// # Safety
        /// `argv` is a null-terminated array followed by an environment pointer, as execle(3)'s
        /// arguments are.
        unsafe extern "C" fn bpftime_execle_list(path: *const $crate::exec::c_char, argv: *const *const $crate::exec::c_char) -> $crate::exec::c_int {
            let mut end = argv;
            // SAFETY: the caller's null-terminated list, then its environment pointer.
            unsafe {
                while !(*end).is_null() {
                    end = end.add(1);
                }
                execve(path, argv, end.add(1).read() as *const *const $crate::exec::c_char)
            }
        }
    };
}

/// A wrapper of one of libc's variadic exec functions (`execl`, `execlp`, `execle`), which
/// Rust cannot define: glibc's call its internal `execve`, not ours, so they would start a
/// program without what it needs. The wrapper (assembly, no frame of its own) lays the register
/// arguments after the path (`rsi`, `rdx`, `rcx`, `r8`, `r9`) on the stack just below the
/// caller's stack arguments, so that with them they form the null-terminated argument array
/// (execl(3): `path, arg0, ..., NULL`), and calls `$with(path, array)`: the wrapped `execv` or
/// `execvp`, or the `execle` helper that finds the environment after the array's end.
#[doc(hidden)]
#[macro_export]
macro_rules! exec_list_wrapper {
    ($name:ident through $with:ident) => {
        #[doc = concat!("`", stringify!($name), "`, wrapped: its arguments go to `", stringify!($with), "` as an array (see `bpftime_launch::exec_list_wrapper!`).")]
        ///
        /// # Safety
        #[doc = concat!("Same contract as ", stringify!($name), "(3).")]
        #[unsafe(naked)]
        #[unsafe(no_mangle)]
        pub unsafe extern "C" fn $name(path: *const $crate::exec::c_char, arg: *const $crate::exec::c_char) -> $crate::exec::c_int {
            core::arch::naked_asm!(
                // The return address out of the way: the five register arguments then lie
                // right below the caller's stack arguments.
                "pop r11",
                "push r9",
                "push r8",
                "push rcx",
                "push rdx",
                "push rsi",
                "mov rsi, rsp",
                // Back below the array (the stack is 16-aligned again for the call).
                "push r11",
                "call {with}",
                "pop r11",
                "add rsp, 40",
                "push r11",
                "ret",
                with = sym $with,
            )
        }
    };
}

/// One wrapper of [`exec_wrappers!`]: libc's `$name`, given the environment made for the
/// program `$program` where one is needed (`$envp` the call's, or `environ` for those that
/// take none, which then call `$with` with it).
#[doc(hidden)]
#[macro_export]
macro_rules! exec_wrapper {
    ($name:ident($($arg:ident: $t:ty),*) program $program:expr, search $search:literal, env $envp:ident, missing $missing:expr) => {
        #[doc = concat!("`", stringify!($name), "`, wrapped: the environment it gives carries what the program needs to start")]
        /// under the audit library (`bpftime_launch::exec`).
        ///
        /// # Safety
        #[doc = concat!("Same contract as ", stringify!($name), "(3).")]
        #[unsafe(no_mangle)]
        pub unsafe extern "C" fn $name($($arg: $t),*) -> $crate::exec::c_int {
            static REAL: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
            // SAFETY: the caller's arguments, under the call's contract.
            let made = unsafe { bpftime_exec_environment($program, $search, $envp) };
            let $envp = made.as_ref().map_or($envp, |m| m.as_ptr());
            let name = concat!(stringify!($name), "\0");
            // SAFETY: libc's function of that name has this type.
            let real = unsafe { $crate::exec::next_function::<unsafe extern "C" fn($($t),*) -> $crate::exec::c_int>(&REAL, std::ffi::CStr::from_bytes_with_nul(name.as_bytes()).unwrap_or_default()) };
            let Some(real) = real else { return $missing };
            // SAFETY: libc's function, with the caller's arguments or an environment made of theirs.
            unsafe { real($($arg),*) }
        }
    };
    ($name:ident($($arg:ident: $t:ty),*) program $program:expr, search $search:literal, made through $with:ident) => {
        #[doc = concat!("`", stringify!($name), "`, wrapped: the environment it gives carries what the program needs to start")]
        /// under the audit library (`bpftime_launch::exec`).
        ///
        /// # Safety
        #[doc = concat!("Same contract as ", stringify!($name), "(3).")]
        #[unsafe(no_mangle)]
        pub unsafe extern "C" fn $name($($arg: $t),*) -> $crate::exec::c_int {
            static REAL: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
            // SAFETY: the caller's program and the process's environment.
            if let Some(made) = unsafe { bpftime_exec_environment($program, $search, $crate::exec::environ()) } {
                // SAFETY: our wrapper of the variant that takes an environment, with the
                // caller's arguments and one made of the process's.
                return unsafe { $with($($arg,)* made.as_ptr()) };
            }
            let name = concat!(stringify!($name), "\0");
            // SAFETY: libc's function of that name has this type.
            let real = unsafe { $crate::exec::next_function::<unsafe extern "C" fn($($t),*) -> $crate::exec::c_int>(&REAL, std::ffi::CStr::from_bytes_with_nul(name.as_bytes()).unwrap_or_default()) };
            // SAFETY: libc's function, with the caller's arguments.
            real.map_or_else($crate::exec::missing_exec, |real| unsafe { real($($arg),*) })
        }
    };
}
