//! Cost of a traced system call: `getpid` and `openat`+`close` with no tracing, with the
//! kernel's raw sys_enter/sys_exit tracepoints running the same programs, and with ours
//! (Syscall User Dispatch in this process).

use bpftime_attach::syscalls::{self, SyscallHandler};
use bpftime_attach::PtRegs;
use bpftime_object::Object;
use bpftime_runtime::syscall_events::raw_record;
use bpftime_runtime::{EngineKind, ProbeProgram, Runtime};
use bpftime_shm::ShmRegion;
use criterion::{criterion_group, criterion_main, Criterion};
use std::hint::black_box;
use std::sync::Arc;
use std::time::Duration;

const OBJECT: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/syscall_bench.bpf.o"));

/// Runs the enter and exit programs on every call.
struct Programs {
    rt: &'static Runtime,
    enter: ProbeProgram,
    exit: ProbeProgram,
}

impl SyscallHandler for Programs {
    fn on_enter(&self, regs: &PtRegs, level: usize) -> Option<u64> {
        self.rt.run_probe(&self.enter, &raw_record(regs as *const PtRegs as u64, regs.orig_ax), level).ok().and_then(|r| r.override_return)
    }
    fn on_exit(&self, regs: &PtRegs, level: usize) {
        let _ = self.rt.run_probe(&self.exit, &raw_record(regs as *const PtRegs as u64, regs.ax), level);
    }
}

fn getpid() -> i64 {
    // SAFETY: getpid has no arguments.
    unsafe { libc::syscall(libc::SYS_getpid) }
}

fn open_close() {
    // SAFETY: a NUL-terminated path; the descriptor is closed at once.
    unsafe {
        let fd = libc::openat(libc::AT_FDCWD, c"/dev/null".as_ptr(), libc::O_RDONLY);
        libc::close(fd);
    }
}

fn bench(c: &mut Criterion) {
    let mut obj = Object::parse(OBJECT).expect("object");
    obj.set_global("target_tgid", &std::process::id().to_string()).expect("target_tgid");
    let mut g = c.benchmark_group("syscall");
    g.warm_up_time(Duration::from_millis(500)).measurement_time(Duration::from_secs(2));
    g.bench_function("getpid_untraced", |b| b.iter(|| black_box(getpid())));
    g.bench_function("openat_close_untraced", |b| b.iter(open_close));
    match bpftime_tests::kernel::KernelObject::load(&obj) {
        Ok(mut k) => match k.attach_raw_tracepoint("count_enter", "sys_enter").and_then(|_| k.attach_raw_tracepoint("count_exit", "sys_exit")) {
            Ok(()) => {
                g.bench_function("getpid_kernel_tracepoints", |b| b.iter(|| black_box(getpid())));
                g.bench_function("openat_close_kernel_tracepoints", |b| b.iter(open_close));
                k.detach_all();
            }
            Err(e) => println!("skip the kernel's tracepoints: {e}"),
        },
        Err(e) => println!("skip the kernel's tracepoints: {e} (needs root)"),
    }
    let rt: &'static Runtime = Box::leak(Box::new(Runtime::new(Arc::new(ShmRegion::anonymous(8 << 20).unwrap()), EngineKind::Jit)));
    let loaded = rt.load_object(&obj).expect("loads");
    let prog = |name: &str| rt.program(loaded.programs.iter().find(|p| p.0 == name).expect("program").2).expect("compiles");
    let handler = Arc::new(Programs {
        rt,
        enter: ProbeProgram { program: prog("count_enter"), cookie: 0, func_ip: 0, caller_at_sp: false },
        exit: ProbeProgram { program: prog("count_exit"), cookie: 0, func_ip: 0, caller_at_sp: false },
    });
    match syscalls::start(handler) {
        Ok(()) => {
            g.bench_function("getpid_bpftime", |b| b.iter(|| black_box(getpid())));
            g.bench_function("openat_close_bpftime", |b| b.iter(open_close));
            syscalls::disable();
        }
        Err(e) => println!("skip bpftime's system call interception: {e}"),
    }
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
