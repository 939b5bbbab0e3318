//! The kernel as the reference: just enough bpf() and perf_event_open to load a clang-built
//! object's maps and uprobe programs into the kernel and attach them, so that a test can run
//! the same program on the same target under the kernel and under bpftime and compare.
//!
//! Needs root and a kernel with BPF and uprobes; [`KernelObject::load`] says why when it
//! cannot, and tests skip with that reason.

use bpftime_object::Object;
use std::path::Path;

/// Maps and programs of one object, loaded into the kernel; closed (and detached) on drop.
pub struct KernelObject {
    maps: Vec<(String, i32)>,
    progs: Vec<(String, i32)>,
    events: Vec<i32>,
}

fn sys_bpf(cmd: i64, attr: &mut [u8; 128]) -> i64 {
    // SAFETY: bpf(2) with a 128-byte attribute buffer, zeroed where not set (bpf(2) requires
    // unused fields to be zero).
    unsafe { libc::syscall(libc::SYS_bpf, cmd, attr.as_mut_ptr(), 128u32) }
}

fn put32(a: &mut [u8; 128], off: usize, v: u32) {
    a[off..off + 4].copy_from_slice(&v.to_le_bytes());
}

fn put64(a: &mut [u8; 128], off: usize, v: u64) {
    a[off..off + 8].copy_from_slice(&v.to_le_bytes());
}

const BPF_MAP_CREATE: i64 = 0;
const BPF_MAP_LOOKUP_ELEM: i64 = 1;
const BPF_MAP_UPDATE_ELEM: i64 = 2;
const BPF_MAP_GET_NEXT_KEY: i64 = 4;
const BPF_PROG_LOAD: i64 = 5;
const BPF_PROG_TYPE_KPROBE: u32 = 2;
const BPF_PROG_TYPE_RAW_TRACEPOINT: u32 = 17;
const BPF_PROG_TYPE_SYSCALL: u32 = 31;
/// `prog_flags` bit of a sleepable program (libbpf loads `syscall` programs so).
const BPF_F_SLEEPABLE: u32 = 1 << 4;
const BPF_PROG_TEST_RUN: i64 = 10;
const BPF_MAP_FREEZE: i64 = 22;
/// Map flag: programs may only read it.
const BPF_F_RDONLY_PROG: u32 = 1 << 7;
const BPF_RAW_TRACEPOINT_OPEN: i64 = 17;

fn last_error() -> String {
    std::io::Error::last_os_error().to_string()
}

impl KernelObject {
    /// Creates every map of `obj` in the kernel (global data with its initial value) and loads
    /// every uprobe program as a kprobe-type program, raw tracepoint programs as such and
    /// `syscall` programs as libbpf does (sleepable; run them with [`KernelObject::test_run`]).
    pub fn load(obj: &Object) -> Result<KernelObject, String> {
        // SAFETY: geteuid(2) cannot fail.
        if unsafe { libc::geteuid() } != 0 {
            return Err("loading into the kernel needs root".into());
        }
        let mut k = KernelObject { maps: vec![], progs: vec![], events: vec![] };
        for def in &obj.maps {
            if def.inner.is_some() {
                return Err(format!("map `{}`: map-in-map is not supported by this test loader", def.name));
            }
            let mut a = [0u8; 128];
            put32(&mut a, 0, def.map_type);
            put32(&mut a, 4, def.key_size);
            put32(&mut a, 8, def.value_size);
            put32(&mut a, 12, def.max_entries);
            put32(&mut a, 16, def.flags);
            let fd = sys_bpf(BPF_MAP_CREATE, &mut a);
            if fd < 0 {
                return Err(format!("map `{}` create: {}", def.name, last_error()));
            }
            k.maps.push((def.name.clone(), fd as i32));
            if let Some(init) = &def.initial {
                k.update(&def.name, &0u32.to_le_bytes(), init)?;
            }
            if def.flags & BPF_F_RDONLY_PROG != 0 {
                // Frozen, as libbpf leaves `.rodata`: the verifier then knows its bytes
                // (`bpf_snprintf`'s format, `bpf_strncmp`'s constant string).
                let mut a = [0u8; 128];
                put32(&mut a, 0, fd as u32);
                if sys_bpf(BPF_MAP_FREEZE, &mut a) < 0 {
                    return Err(format!("map `{}` freeze: {}", def.name, last_error()));
                }
            }
        }
        let license = std::ffi::CString::new(obj.license.clone().unwrap_or_else(|| "GPL".into())).map_err(|e| e.to_string())?;
        for p in &obj.programs {
            let prog_type = if p.section.starts_with("uprobe") || p.section.starts_with("uretprobe") {
                BPF_PROG_TYPE_KPROBE
            } else if p.section.starts_with("raw_tracepoint/") || p.section.starts_with("raw_tp/") {
                BPF_PROG_TYPE_RAW_TRACEPOINT
            } else if p.section == "syscall" {
                BPF_PROG_TYPE_SYSCALL
            } else {
                continue;
            };
            let mut insns = p.insns.clone();
            for r in &p.data_relocs {
                let fd = k.maps[r.map].1;
                match r.value_offset {
                    None => {
                        insns[r.insn].src = 1; // BPF_PSEUDO_MAP_FD
                        insns[r.insn].imm = fd;
                    }
                    Some(off) => {
                        insns[r.insn].src = 2; // BPF_PSEUDO_MAP_VALUE
                        insns[r.insn].imm = fd;
                        insns[r.insn + 1].imm = off as i32;
                    }
                }
            }
            let code = bpftime_vm::insn::to_bytecode(&insns);
            // Without a log first (a long loop's log overflows any buffer: ENOSPC); again with
            // one to say why it was refused.
            let mut log = vec![0u8; 1 << 20];
            let (mut fd, mut refusal) = (-1, None);
            for log_level in [0, 1] {
                let mut a = [0u8; 128];
                put32(&mut a, 0, prog_type);
                put32(&mut a, 4, insns.len() as u32);
                put64(&mut a, 8, code.as_ptr() as u64);
                put64(&mut a, 16, license.as_ptr() as u64);
                if log_level > 0 {
                    put32(&mut a, 24, log_level);
                    put32(&mut a, 28, log.len() as u32);
                    put64(&mut a, 32, log.as_mut_ptr() as u64);
                }
                if prog_type == BPF_PROG_TYPE_SYSCALL {
                    put32(&mut a, 44, BPF_F_SLEEPABLE); // prog_flags
                }
                fd = sys_bpf(BPF_PROG_LOAD, &mut a);
                if fd >= 0 {
                    break;
                }
                // The first refusal's reason (the logged retry may fail for its log's size).
                refusal.get_or_insert_with(last_error);
            }
            if fd < 0 {
                let end = log.iter().position(|&b| b == 0).unwrap_or(0);
                return Err(format!("program `{}` load: {}\n{}", p.name, refusal.unwrap_or_default(), String::from_utf8_lossy(&log[..end])));
            }
            k.progs.push((p.name.clone(), fd as i32));
        }
        Ok(k)
    }

    /// Program `name`'s fd (what a program array holds).
    pub fn program_fd(&self, name: &str) -> Option<i32> {
        self.progs.iter().find(|p| p.0 == name).map(|p| p.1)
    }

    fn map_fd(&self, name: &str) -> Result<i32, String> {
        self.maps.iter().find(|m| m.0 == name).map(|m| m.1).ok_or_else(|| format!("no map `{name}`"))
    }

    /// Sets `map[key] = value`.
    pub fn update(&self, map: &str, key: &[u8], value: &[u8]) -> Result<(), String> {
        let mut a = [0u8; 128];
        put32(&mut a, 0, self.map_fd(map)? as u32);
        put64(&mut a, 8, key.as_ptr() as u64);
        put64(&mut a, 16, value.as_ptr() as u64);
        if sys_bpf(BPF_MAP_UPDATE_ELEM, &mut a) < 0 {
            return Err(format!("map `{map}` update: {}", last_error()));
        }
        Ok(())
    }

    /// `map[key]` (`value_size` bytes), if present.
    pub fn lookup(&self, map: &str, key: &[u8], value_size: usize) -> Option<Vec<u8>> {
        let mut v = vec![0u8; value_size];
        let mut a = [0u8; 128];
        put32(&mut a, 0, self.map_fd(map).ok()? as u32);
        put64(&mut a, 8, key.as_ptr() as u64);
        put64(&mut a, 16, v.as_mut_ptr() as u64);
        (sys_bpf(BPF_MAP_LOOKUP_ELEM, &mut a) == 0).then_some(v)
    }

    /// Runs program `prog` once on the context `ctx` (BPF_PROG_TEST_RUN: a `syscall` program,
    /// whose context the kernel copies back into `ctx`, or a raw tracepoint program, whose
    /// context is its arguments) and returns what it returned.
    pub fn test_run(&self, prog: &str, ctx: &mut [u8]) -> Result<u32, String> {
        let fd = self.progs.iter().find(|p| p.0 == prog).map(|p| p.1).ok_or_else(|| format!("no program `{prog}`"))?;
        // union bpf_attr for BPF_PROG_TEST_RUN: prog_fd at 0, retval at 4, ctx_size_in at 40,
        // ctx_in at 48 (a `syscall` program's context is written back there; ctx_out must be 0).
        let mut a = [0u8; 128];
        put32(&mut a, 0, fd as u32);
        put32(&mut a, 40, ctx.len() as u32);
        put64(&mut a, 48, ctx.as_mut_ptr() as u64);
        if sys_bpf(BPF_PROG_TEST_RUN, &mut a) < 0 {
            return Err(format!("program `{prog}` test run: {}", last_error()));
        }
        Ok(u32::from_le_bytes(a[4..8].try_into().expect("4 bytes")))
    }

    /// Every key of a map, in the kernel's iteration order.
    pub fn keys(&self, map: &str, key_size: usize) -> Vec<Vec<u8>> {
        let Ok(fd) = self.map_fd(map) else { return vec![] };
        let mut keys: Vec<Vec<u8>> = vec![];
        loop {
            let mut next = vec![0u8; key_size];
            let mut a = [0u8; 128];
            put32(&mut a, 0, fd as u32);
            put64(&mut a, 8, keys.last().map_or(0, |k| k.as_ptr() as u64));
            put64(&mut a, 16, next.as_mut_ptr() as u64);
            if sys_bpf(BPF_MAP_GET_NEXT_KEY, &mut a) != 0 {
                return keys;
            }
            keys.push(next);
        }
    }

    /// Attaches program `prog` as a uprobe (or uretprobe) on `function` of the ELF file
    /// `binary`, in every process, as libbpf does for pid -1.
    pub fn attach_uprobe(&mut self, prog: &str, binary: &Path, function: &str, retprobe: bool) -> Result<(), String> {
        let prog_fd = self.progs.iter().find(|p| p.0 == prog).map(|p| p.1).ok_or_else(|| format!("no program `{prog}`"))?;
        let offset = symbol_file_offset(binary, function)?;
        let ty: u32 = std::fs::read_to_string("/sys/bus/event_source/devices/uprobe/type")
            .map_err(|e| format!("uprobe PMU: {e}"))?
            .trim()
            .parse()
            .map_err(|e| format!("uprobe PMU type: {e}"))?;
        let path = std::ffi::CString::new(binary.to_string_lossy().as_bytes()).map_err(|e| e.to_string())?;
        // struct perf_event_attr: type, size, config (bit 0: retprobe), ..., config1 (path) at
        // 56, config2 (offset) at 64.
        let mut attr = [0u8; 128];
        attr[0..4].copy_from_slice(&ty.to_le_bytes());
        attr[4..8].copy_from_slice(&128u32.to_le_bytes());
        attr[8..16].copy_from_slice(&(retprobe as u64).to_le_bytes());
        attr[56..64].copy_from_slice(&(path.as_ptr() as u64).to_le_bytes());
        attr[64..72].copy_from_slice(&offset.to_le_bytes());
        // One event, pid -1 on CPU 0, as libbpf makes: the program then runs for every process
        // on every CPU (one event per CPU would run it once per event).
        // SAFETY: perf_event_open(2) with a 128-byte attribute.
        let fd = unsafe { libc::syscall(libc::SYS_perf_event_open, attr.as_ptr(), -1, 0, -1, 8u64) }; // PERF_FLAG_FD_CLOEXEC
        if fd < 0 {
            return Err(format!("perf_event_open: {}", last_error()));
        }
        self.events.push(fd as i32);
        const PERF_EVENT_IOC_SET_BPF: u64 = 0x4004_2408;
        const PERF_EVENT_IOC_ENABLE: u64 = 0x2400;
        // SAFETY: ioctls on the perf event just opened (perf_event_open(2)).
        unsafe {
            if libc::ioctl(fd as i32, PERF_EVENT_IOC_SET_BPF, prog_fd) != 0 {
                return Err(format!("PERF_EVENT_IOC_SET_BPF: {}", last_error()));
            }
            libc::ioctl(fd as i32, PERF_EVENT_IOC_ENABLE, 0);
        }
        Ok(())
    }
}

impl KernelObject {
    /// Attaches raw tracepoint program `prog` to kernel tracepoint `name` (`sys_enter`, ...).
    pub fn attach_raw_tracepoint(&mut self, prog: &str, name: &str) -> Result<(), String> {
        let prog_fd = self.progs.iter().find(|p| p.0 == prog).map(|p| p.1).ok_or_else(|| format!("no program `{prog}`"))?;
        let name = std::ffi::CString::new(name).map_err(|e| e.to_string())?;
        // union bpf_attr for BPF_RAW_TRACEPOINT_OPEN: name (u64) at 0, prog_fd at 8.
        let mut a = [0u8; 128];
        put64(&mut a, 0, name.as_ptr() as u64);
        put32(&mut a, 8, prog_fd as u32);
        let fd = sys_bpf(BPF_RAW_TRACEPOINT_OPEN, &mut a);
        if fd < 0 {
            return Err(format!("BPF_RAW_TRACEPOINT_OPEN: {}", last_error()));
        }
        self.events.push(fd as i32);
        Ok(())
    }

    /// Detaches every uprobe and tracepoint attached so far (closes their events).
    pub fn detach_all(&mut self) {
        for fd in self.events.drain(..) {
            // SAFETY: closing a perf event this object opened and owns.
            unsafe { libc::close(fd) };
        }
    }
}

impl Drop for KernelObject {
    fn drop(&mut self) {
        for fd in self.events.iter().chain(self.progs.iter().map(|p| &p.1)).chain(self.maps.iter().map(|m| &m.1)) {
            // SAFETY: closing descriptors this object opened and owns.
            unsafe { libc::close(*fd) };
        }
    }
}

/// The file offset of `function`'s first byte in the ELF file `binary` (what a kernel uprobe
/// takes): its address, minus the address of the loadable segment holding it, plus that
/// segment's file offset.
pub fn symbol_file_offset(binary: &Path, function: &str) -> Result<u64, String> {
    use object::{Object as _, ObjectSegment, ObjectSymbol};
    let data = std::fs::read(binary).map_err(|e| format!("{}: {e}", binary.display()))?;
    let file = object::File::parse(&*data).map_err(|e| format!("{}: {e}", binary.display()))?;
    let addr = file
        .symbols()
        .chain(file.dynamic_symbols())
        .find(|s| s.name() == Ok(function) && s.is_definition())
        .map(|s| s.address())
        .ok_or_else(|| format!("{}: no function `{function}`", binary.display()))?;
    for seg in file.segments() {
        let (off, size) = seg.file_range();
        if addr >= seg.address() && addr < seg.address() + size {
            return Ok(addr - seg.address() + off);
        }
    }
    Err(format!("{}: `{function}` at {addr:#x} is in no loadable segment", binary.display()))
}

/// The path of the library whose file name starts with `prefix` (e.g. `libc.so`) mapped in
/// process `pid`.
pub fn mapped_library(pid: u32, prefix: &str) -> Option<std::path::PathBuf> {
    let maps = std::fs::read_to_string(format!("/proc/{pid}/maps")).ok()?;
    maps.lines()
        .filter_map(|l| l.split_whitespace().nth(5))
        .find(|p| Path::new(p).file_name().is_some_and(|n| n.to_string_lossy().starts_with(prefix)))
        .map(Into::into)
}

/// Whether tracefs with the system call events is mounted (mounting it when it is not, as
/// root can); loaders read tracepoint ids there. Says why when it is not.
pub fn tracefs_mounted() -> bool {
    if !Path::new("/sys/kernel/tracing/events/syscalls").exists() {
        let _ = std::process::Command::new("mount").args(["-t", "tracefs", "nodev", "/sys/kernel/tracing"]).status();
    }
    let ok = Path::new("/sys/kernel/tracing/events/raw_syscalls").exists();
    if !ok {
        eprintln!("skipped: no tracefs with system call events (loaders read tracepoint ids there)");
    }
    ok
}

/// Whether a bpffs is mounted at /sys/fs/bpf (mounting it when it is not, as root can); pins
/// live there. Says why when it is not.
pub fn bpffs_mounted() -> bool {
    let is_bpffs = || {
        std::process::Command::new("stat").args(["-f", "-c", "%T", "/sys/fs/bpf"]).output().is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "bpf_fs")
    };
    if !is_bpffs() {
        let _ = std::process::Command::new("mount").args(["-t", "bpf", "bpf", "/sys/fs/bpf"]).status();
    }
    let ok = is_bpffs();
    if !ok {
        eprintln!("skipped: no bpffs at /sys/fs/bpf (pins live there)");
    }
    ok
}
