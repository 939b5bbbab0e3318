//! Cost per call of a small function: without a probe, with our uprobe (empty program, and a
//! program that updates an array map), with our uretprobe, and with the kernel's uprobe running
//! the same clang-built programs (raw bpf() + perf_event_open, as root).

use bpftime::ProgramProbe;
use bpftime_attach::{attach, detach, ProbeHandler, ProbeKind, PtRegs, SiteInfo};
use bpftime_object::Object;
use bpftime_runtime::{EngineKind, Runtime};
use bpftime_shm::ShmRegion;
use criterion::{criterion_group, criterion_main, Criterion};
use std::hint::black_box;
use std::sync::Arc;
use std::time::Duration;

/// The probed function.
#[inline(never)]
#[unsafe(no_mangle)]
pub extern "C" fn bpftime_bench_target(a: u64, b: u64) -> u64 {
    black_box(a).wrapping_mul(3) ^ black_box(b)
}

const OBJECT: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/uprobe_bench.bpf.o"));

mod kernel {
    //! Just enough bpf() and perf_event_open to attach a kernel uprobe.
    use bpftime_object::Object;

    fn sys_bpf(cmd: i64, attr: &mut [u8; 128]) -> i64 {
        // SAFETY: bpf(2) with a 128-byte zero-initialised attribute buffer.
        unsafe { libc::syscall(libc::SYS_bpf, cmd, attr.as_mut_ptr(), 128u32) }
    }

    fn put32(a: &mut [u8; 128], off: usize, v: u32) {
        a[off..off + 4].copy_from_slice(&v.to_le_bytes());
    }

    fn put64(a: &mut [u8; 128], off: usize, v: u64) {
        a[off..off + 8].copy_from_slice(&v.to_le_bytes());
    }

    /// Loads `name` from the object as a kprobe-type program (maps created in the kernel).
    pub fn load(obj: &Object, name: &str) -> Result<i32, String> {
        let p = obj.program(Some(name)).map_err(|e| e.to_string())?;
        let mut insns = p.insns.clone();
        for r in &p.data_relocs {
            let def = &obj.maps[r.map];
            let mut a = [0u8; 128];
            put32(&mut a, 0, def.map_type);
            put32(&mut a, 4, def.key_size);
            put32(&mut a, 8, def.value_size);
            put32(&mut a, 12, def.max_entries);
            let fd = sys_bpf(0, &mut a);
            if fd < 0 {
                return Err(format!("map create: {}", std::io::Error::last_os_error()));
            }
            insns[r.insn].src = 1;
            insns[r.insn].imm = fd as i32;
        }
        let code = bpftime_vm::insn::to_bytecode(&insns);
        let license = c"GPL";
        let mut log = vec![0u8; 1 << 16];
        let mut a = [0u8; 128];
        put32(&mut a, 0, 2); // BPF_PROG_TYPE_KPROBE
        put32(&mut a, 4, insns.len() as u32);
        put64(&mut a, 8, code.as_ptr() as u64);
        put64(&mut a, 16, license.as_ptr() as u64);
        put32(&mut a, 24, 1); // log level
        put32(&mut a, 28, log.len() as u32);
        put64(&mut a, 32, log.as_mut_ptr() as u64);
        let fd = sys_bpf(5, &mut a);
        if fd < 0 {
            let end = log.iter().position(|&b| b == 0).unwrap_or(0);
            return Err(format!("prog load: {} {}", std::io::Error::last_os_error(), String::from_utf8_lossy(&log[..end])));
        }
        Ok(fd as i32)
    }

    /// Attaches program `prog` as a kernel uprobe (or uretprobe) at `offset` in `path`.
    pub fn attach(prog: i32, path: &str, offset: u64, ret: bool) -> Result<i32, String> {
        let ty: u32 = std::fs::read_to_string("/sys/bus/event_source/devices/uprobe/type")
            .map_err(|e| format!("uprobe PMU: {e}"))?
            .trim()
            .parse()
            .map_err(|e| format!("uprobe PMU type: {e}"))?;
        let cpath = std::ffi::CString::new(path).map_err(|e| e.to_string())?;
        // struct perf_event_attr: type (u32), size (u32), config (u64), ..., config1 at 56,
        // config2 at 64.
        let mut attr = [0u8; 128];
        attr[0..4].copy_from_slice(&ty.to_le_bytes());
        attr[4..8].copy_from_slice(&128u32.to_le_bytes());
        attr[8..16].copy_from_slice(&(ret as u64).to_le_bytes()); // config bit 0: retprobe
        attr[56..64].copy_from_slice(&(cpath.as_ptr() as u64).to_le_bytes());
        attr[64..72].copy_from_slice(&offset.to_le_bytes());
        // SAFETY: perf_event_open(2) with a zeroed 128-byte attribute (pid 0 = this process,
        // any CPU).
        let fd = unsafe { libc::syscall(libc::SYS_perf_event_open, attr.as_ptr(), 0, -1, -1, 0) };
        if fd < 0 {
            return Err(format!("perf_event_open: {}", std::io::Error::last_os_error()));
        }
        const PERF_EVENT_IOC_SET_BPF: u64 = 0x4004_2408;
        const PERF_EVENT_IOC_ENABLE: u64 = 0x2400;
        // SAFETY: ioctls on the perf event we just opened (perf_event_open(2)).
        unsafe {
            if libc::ioctl(fd as i32, PERF_EVENT_IOC_SET_BPF, prog) != 0 {
                return Err(format!("PERF_EVENT_IOC_SET_BPF: {}", std::io::Error::last_os_error()));
            }
            libc::ioctl(fd as i32, PERF_EVENT_IOC_ENABLE, 0);
        }
        Ok(fd as i32)
    }
}

/// A handler that only looks at the registers.
struct NoProgram;

impl ProbeHandler for NoProgram {
    fn on_hit(&self, regs: &PtRegs) {
        black_box(regs);
    }
}

fn bench(c: &mut Criterion) {
    let obj = Object::parse(OBJECT).expect("object");
    let rt: &'static Runtime = Box::leak(Box::new(Runtime::new(Arc::new(ShmRegion::anonymous(8 << 20).unwrap()), EngineKind::Jit)));
    let loaded = rt.load_object(&obj).expect("loads");
    let prog = |name: &str| rt.program(loaded.programs.iter().find(|p| p.0 == name).expect("program").2).expect("compiles");
    let addr = bpftime_bench_target as *const () as u64;
    let info = SiteInfo { function_size: 0, at_entry: true };

    let mut g = c.benchmark_group("uprobe_per_call");
    g.warm_up_time(Duration::from_millis(500)).measurement_time(Duration::from_secs(2));
    g.bench_function("no_probe", |b| b.iter(|| black_box(bpftime_bench_target)(black_box(1), 2)));
    // The hook alone: stub, register save and dispatch, with a handler that runs no program.
    let id = attach(addr, info, ProbeKind::Entry, Arc::new(NoProgram)).expect("attach");
    g.bench_function("bpftime_hook_only", |b| b.iter(|| black_box(bpftime_bench_target)(black_box(1), 2)));
    detach(id).expect("detach");
    for (name, kind) in [("empty", ProbeKind::Entry), ("array_update", ProbeKind::Entry), ("empty_ret", ProbeKind::Return)] {
        let id = attach(addr, info, kind, Arc::new(ProgramProbe::new(rt, prog(name), 0, addr))).expect("attach");
        let label = if kind == ProbeKind::Return { format!("bpftime_uretprobe_{name}") } else { format!("bpftime_uprobe_{name}") };
        g.bench_function(label, |b| b.iter(|| black_box(bpftime_bench_target)(black_box(1), 2)));
        detach(id).expect("detach");
    }
    // The kernel's uprobe on the same function, running the same programs.
    let exe = std::fs::read_link("/proc/self/exe").expect("exe").to_string_lossy().to_string();
    let map = bpftime_attach::procmaps::mapping_of(addr).expect("mapped");
    let offset = addr - map.start + map.offset;
    for (name, ret) in [("empty", false), ("array_update", false), ("empty_ret", true)] {
        let attached = kernel::load(&obj, name).and_then(|p| kernel::attach(p, &exe, offset, ret));
        match attached {
            Ok(fd) => {
                let label = if ret { format!("kernel_uretprobe_{name}") } else { format!("kernel_uprobe_{name}") };
                g.bench_function(label, |b| b.iter(|| black_box(bpftime_bench_target)(black_box(1), 2)));
                // SAFETY: closing the perf event detaches the kernel uprobe.
                unsafe { libc::close(fd) };
            }
            Err(e) => println!("skip kernel uprobe `{name}`: {e} (needs root and a kernel with uprobes)"),
        }
    }
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
