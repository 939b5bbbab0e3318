//! # bpftime-runtime: programs, maps and helpers together
//!
//! What it is: the layer that makes clang-built objects run. [`Runtime::load_object`] creates
//! an object's maps in the shared region (filling global data), applies CO-RE relocations,
//! verifies the programs and stores them in the region; [`Runtime::program`] turns a stored
//! program into a JIT-compiled (or interpreted) one in this process, resolving its map
//! references; [`Runtime::run`] runs it with the kernel helpers ([`helpers`]) available, and
//! [`Runtime::run_probe`] does the same for a probe hit with a per-thread run context.
//! [`links`] and [`progs`] are the links and programs kept in the region.
//! [`trace::TracePipe`] is where `bpf_trace_printk` output goes.
//!
//! What it is not: it attaches nothing (the `attach` layer does) and makes no bpf() calls but
//! to run a kernel program that a prog array names ([`kernel_progs`]).

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

pub mod btfs;
mod build_id;
mod desc;
mod format;
pub mod gpu;
mod handles;
pub mod helper_names;
pub mod helpers;
pub mod input;
pub mod kernel_progs;
pub mod kfuncs;
pub mod links;
pub mod orphans;
pub mod pins;
pub mod process_events;
pub mod progs;
mod runtime;
pub mod syscall_events;
pub mod syscall_table;
mod task;
pub mod threads;
pub mod trace;
pub mod usdt;
mod user_mem;

pub use handles::{map_of, map_ref, MAP_REF_TAG};
pub use runtime::{forget_abandoned_run, EngineKind, HelperContext, LoadError, LoadedObject, LoadedProgram, ProbeProgram, ProbeRun, Runtime, PROBE_LEVELS};
pub use task::set_exit_code;
