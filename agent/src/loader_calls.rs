//! The dynamic loader's system calls, made before any code of the agent could run: recorded by
//! `libbpftime_audit.so` (`early/audit.c`, named in LD_AUDIT by `bpftime start`) and replayed
//! here through the system call programs once the agent has started, right after the `execve`
//! that started the image, in the order they were made.
//!
//! ```text
//! /proc/self/maps: the audit library's writable mapping -- its record (magic first)
//! the loader's calls for the agent itself (not the application's: the kernel never sees them)
//!   left out: paths of the agent's libraries and of libraries only they need, and searches in
//!   the agent's own folder (its `$ORIGIN` run path); calls on descriptors those opens returned
//!   (read, fstat, mmap, close); mmap/mprotect/munmap of their address ranges
//! each other call: entry programs with its arguments (a path argument pointing at the copy the
//!   record took when the call was made), then exit programs with its result
//! ```
//!
//! Replayed calls see memory as it is now, but for their path; their timestamps are the
//! replay's. The few calls the loader makes before it loads an audit library (`brk`, an `mmap`,
//! TLS set-up) are not recorded.

use std::collections::HashSet;

// ELF constants (elf.h).
const PT_LOAD: u32 = 1;
const PT_DYNAMIC: u32 = 2;
const DT_NULL: i64 = 0;
const DT_NEEDED: i64 = 1;
const DT_STRTAB: i64 = 5;
const DT_SONAME: i64 = 14;

/// One recorded call (layout of `struct record` in `early/audit.c`).
#[repr(C)]
#[derive(Clone, Copy)]
struct Record {
    nr: i64,
    args: [i64; 6],
    ret: i64,
    /// Offset of the path's copy in `strings` + 1, or 0.
    path: u32,
    path_arg: u32,
}

const RECORDS: usize = 4096;
const STRINGS: usize = 262144;
const MAGIC: &[u8; 16] = b"bpftime-audit\0\0\0";

/// The record (layout of `struct log` in `early/audit.c`).
#[repr(C)]
struct Log {
    magic: [u8; 16],
    version: u32,
    count: u32,
    lost: u32,
    strings_used: u32,
    done: u32,
    dispatching: u32,
    sigsys_blocked: u32,
    pid: u32,
    /// SIGSYS's disposition before the audit library took it (`struct kernel_sigaction`).
    previous: [u64; 4],
    records: [Record; RECORDS],
    strings: [u8; STRINGS],
}

/// A loader call to replay: number, arguments (a path argument pointing at the record's copy)
/// and result.
pub struct LoaderCall {
    pub nr: u64,
    pub args: [u64; 6],
    pub ret: u64,
}

/// Ends the audit library's recording, first thing when the agent starts with the image (its
/// own calls are not the loader's): the library's dispatch is still on (it would run until
/// every constructor is done). Turning dispatch off is a call the library takes as its end: it
/// gives SIGSYS back and makes the call again with dispatch off. Nothing where LD_AUDIT does
/// not name the library, or LD_PRELOAD the agent (loaded into a running process, whose own
/// dispatch stays). Nothing here allocates: an allocation's `mmap` would be recorded.
pub fn take_over() {
    /// Whether environment variable `name` (NUL-terminated) holds `needle`.
    fn holds(name: &std::ffi::CStr, needle: &[u8]) -> bool {
        // SAFETY: getenv(3) with a NUL-terminated name, at load time (no thread changes the
        // environment); a value is a NUL-terminated string.
        let value = unsafe { libc::getenv(name.as_ptr()) };
        // SAFETY: as above.
        !value.is_null() && unsafe { std::ffi::CStr::from_ptr(value) }.to_bytes().windows(needle.len()).any(|w| w == needle)
    }
    if holds(c"LD_AUDIT", b"/libbpftime_audit.so") && holds(c"LD_PRELOAD", b"libbpftime") {
        // SAFETY: prctl(2) PR_SET_SYSCALL_USER_DISPATCH with PR_SYS_DISPATCH_OFF takes no
        // pointers.
        unsafe { libc::prctl(PR_SET_SYSCALL_USER_DISPATCH, PR_SYS_DISPATCH_OFF, 0, 0, 0) };
    }
}

/// `prctl` options (linux/prctl.h).
const PR_SET_SYSCALL_USER_DISPATCH: libc::c_int = 59;
const PR_SYS_DISPATCH_OFF: libc::c_ulong = 0;

/// The record the audit library left in this process, if it ran and finished.
fn find_log() -> Option<&'static Log> {
    let maps = bpftime_attach::procmaps::mappings();
    for m in maps.iter().filter(|m| m.perms == "rw-p" && m.path.ends_with("/libbpftime_audit.so")) {
        let mut at = m.start;
        while at + std::mem::size_of::<Log>() as u64 <= m.end {
            // SAFETY: inside a readable mapping of the audit library (its data segment).
            let head = unsafe { std::slice::from_raw_parts(at as *const u8, 16) };
            if head == MAGIC {
                // SAFETY: the audit library's `bpftime_audit_log`, which lies whole in this
                // mapping (checked above), aligned (8-byte steps from a page start), and which
                // nothing writes any more once `done` is set.
                let log = unsafe { &*(at as *const Log) };
                return (log.version == 4 && log.done == 1 && log.count as usize <= RECORDS).then_some(log);
            }
            at += 8;
        }
    }
    None
}

/// What the loader loaded for the agent: the address ranges of the objects only the agent
/// needs and the names of their files, and the agent's folder where its `$ORIGIN` run path
/// alone has the loader look into it.
struct Ours {
    ranges: Vec<(u64, u64)>,
    names: HashSet<Vec<u8>>,
    folder: Option<Vec<u8>>,
}

/// A loaded object: file path, address ranges, and the names in its DT_NEEDED.
struct Object {
    path: Vec<u8>,
    soname: Option<Vec<u8>>,
    ranges: Vec<(u64, u64)>,
    needed: Vec<Vec<u8>>,
}

fn basename(path: &[u8]) -> &[u8] {
    path.rsplit(|&b| b == b'/').next().unwrap_or(path)
}

/// The objects of this namespace (`dl_iterate_phdr`).
fn loaded_objects() -> Vec<Object> {
    unsafe extern "C" fn each(info: *mut libc::dl_phdr_info, _size: usize, data: *mut libc::c_void) -> libc::c_int {
        // SAFETY: dl_iterate_phdr hands a valid info for the call; `data` is our Vec.
        let (info, out) = unsafe { (&*info, &mut *(data as *mut Vec<Object>)) };
        let path = if info.dlpi_name.is_null() {
            vec![]
        } else {
            // SAFETY: a NUL-terminated name owned by the loader.
            unsafe { std::ffi::CStr::from_ptr(info.dlpi_name) }.to_bytes().to_vec()
        };
        // SAFETY: `dlpi_phnum` program headers at `dlpi_phdr`.
        let phdrs = unsafe { std::slice::from_raw_parts(info.dlpi_phdr, info.dlpi_phnum as usize) };
        let base = info.dlpi_addr;
        let ranges =
            phdrs.iter().filter(|p| p.p_type == PT_LOAD).map(|p| ((base + p.p_vaddr) & !0xfff, (base + p.p_vaddr + p.p_memsz + 0xfff) & !0xfff)).collect();
        let (mut needed, mut soname) = (vec![], None);
        if let Some(dynamic) = phdrs.iter().find(|p| p.p_type == PT_DYNAMIC) {
            // SAFETY: the object's dynamic section, mapped, ended by DT_NULL.
            let entries = unsafe { dynamic_entries((base + dynamic.p_vaddr) as *const DynEntry) };
            // The loader relocates DT_STRTAB in place for most objects: an address below the
            // object's base has not been.
            let strtab = entries.iter().find(|d| d.d_tag == DT_STRTAB).map(|d| if d.d_un < base { d.d_un + base } else { d.d_un });
            if let Some(strtab) = strtab {
                // SAFETY: an offset into the object's string table, NUL-terminated.
                let name = |off: u64| unsafe { std::ffi::CStr::from_ptr((strtab + off) as *const libc::c_char) }.to_bytes().to_vec();
                for d in &entries {
                    match d.d_tag {
                        DT_NEEDED => needed.push(name(d.d_un)),
                        DT_SONAME => soname = Some(name(d.d_un)),
                        _ => {}
                    }
                }
            }
        }
        out.push(Object { path, soname, ranges, needed });
        0
    }
    let mut objects: Vec<Object> = vec![];
    // SAFETY: the callback only reads what the loader hands it and pushes to `objects`.
    unsafe { libc::dl_iterate_phdr(Some(each), &mut objects as *mut Vec<Object> as *mut libc::c_void) };
    objects
}

/// A dynamic section's entries, up to DT_NULL.
///
/// # Safety
/// `at` is a mapped dynamic section.
unsafe fn dynamic_entries(at: *const DynEntry) -> Vec<DynEntry> {
    let mut out = vec![];
    for i in 0.. {
        // SAFETY: the caller's contract; DT_NULL ends it.
        let d = unsafe { *at.add(i) };
        if d.d_tag == DT_NULL {
            break;
        }
        out.push(d);
    }
    out
}

/// `Elf64_Dyn`: a tag and its value.
#[repr(C)]
#[derive(Clone, Copy)]
struct DynEntry {
    d_tag: i64,
    d_un: u64,
}

/// The objects loaded for the agent alone: its own libraries (files in its folder) and the
/// libraries they need that no other object needs.
fn ours() -> Ours {
    let own = crate::glue::own_path();
    let folder = own.iter().rposition(|&b| b == b'/').map(|i| own[..i].to_vec()).unwrap_or_default();
    let objects = loaded_objects();
    let name_of = |o: &Object| o.soname.clone().unwrap_or_else(|| basename(&o.path).to_vec());
    let is_own = |o: &Object| !folder.is_empty() && o.path.starts_with(&folder) && basename(&o.path).starts_with(b"libbpftime");
    let needed_by_others: HashSet<Vec<u8>> = objects.iter().filter(|o| !is_own(o)).flat_map(|o| o.needed.iter().cloned()).collect();
    let needed_by_us: HashSet<Vec<u8>> = objects.iter().filter(|o| is_own(o)).flat_map(|o| o.needed.iter().cloned()).collect();
    // A folder LD_LIBRARY_PATH names is searched for the application too.
    let searched_anyway = std::env::var_os("LD_LIBRARY_PATH").is_some_and(|p| p.as_encoded_bytes().split(|&b| b == b':').any(|d| d == folder.as_slice()));
    let mut out = Ours { ranges: vec![], names: HashSet::new(), folder: (!folder.is_empty() && !searched_anyway).then(|| folder.clone()) };
    for o in &objects {
        let name = name_of(o);
        if is_own(o) || (needed_by_us.contains(&name) && !needed_by_others.contains(&name)) {
            out.ranges.extend(&o.ranges);
            out.names.insert(basename(&o.path).to_vec());
            out.names.insert(name);
        }
    }
    out
}

/// The loader's calls made for the application, in order, to replay; empty when there is no
/// record (not started under `bpftime start`, or the audit library could not run).
pub fn calls() -> Vec<LoaderCall> {
    let Some(log) = find_log() else { return vec![] };
    if log.lost > 0 {
        eprintln!("bpftime: {} system calls of the dynamic loader were not recorded (more than {RECORDS})", log.lost);
    }
    let ours = ours();
    let mut our_fds: HashSet<i64> = HashSet::new();
    let in_ours = |addr: i64| ours.ranges.iter().any(|&(s, e)| s <= addr as u64 && (addr as u64) < e);
    let mut out = vec![];
    for r in &log.records[..log.count as usize] {
        let path = (r.path > 0).then(|| {
            let at = r.path as usize - 1;
            let end = log.strings[at..].iter().position(|&b| b == 0).map_or(log.strings.len(), |n| at + n);
            (&log.strings[at..end], log.strings[at..].as_ptr() as u64)
        });
        let fd_arg = match r.nr {
            // read, fstat, close, pread64, newfstatat with an empty path (fstat of the fd)
            0 | 3 | 5 | 17 => Some(r.args[0]),
            262 if path.is_some_and(|(p, _)| p.is_empty()) => Some(r.args[0]),
            9 => Some(r.args[4]),
            _ => None,
        };
        if fd_arg.is_some_and(|fd| our_fds.contains(&fd)) {
            if r.nr == 3 {
                our_fds.remove(&r.args[0]);
            }
            continue;
        }
        if let Some((p, _)) = path.filter(|(p, _)| !p.is_empty()) {
            // The agent's folder and what is in it (its run path: the loader looks there, and
            // in its hardware subfolders, for the agent's libraries), or a library only the
            // agent needs, looked for or opened anywhere.
            let in_folder = ours.folder.as_ref().is_some_and(|f| p.starts_with(f) && matches!(p.get(f.len()), None | Some(&b'/')));
            if in_folder || ours.names.contains(basename(p)) {
                if matches!(r.nr, 2 | 257 | 437) && r.ret >= 0 {
                    our_fds.insert(r.ret);
                }
                continue;
            }
        }
        let addr = match r.nr {
            9 if r.ret >= 0 => Some(r.ret),
            10 | 11 => Some(r.args[0]),
            _ => None,
        };
        if addr.is_some_and(in_ours) {
            continue;
        }
        let mut args = r.args.map(|a| a as u64);
        if let Some((_, copy)) = path {
            args[r.path_arg as usize] = copy;
        }
        out.push(LoaderCall { nr: r.nr as u64, args, ret: r.ret as u64 });
    }
    out
}
