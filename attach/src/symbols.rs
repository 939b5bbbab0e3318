//! Where a probe goes: a function name or file offset in the main executable or a shared
//! library, resolved to an address in this process from the ELF symbol tables and
//! `/proc/self/maps`.

use crate::procmaps::{mappings, Mapping};
use object::{Object, ObjectSegment, ObjectSymbol};
use std::path::Path;

/// Why a target could not be resolved.
#[derive(Debug, thiserror::Error)]
pub enum ResolveError {
    #[error("bad probe target `{0}`: expected BINARY:FUNCTION[+OFFSET] or BINARY:OFFSET")]
    Syntax(String),
    #[error("`{0}` is not mapped in this process (yet)")]
    NotMapped(String),
    #[error("{path}: {msg}")]
    Elf { path: String, msg: String },
    #[error("no function `{symbol}` in {path}")]
    NoSymbol { path: String, symbol: String },
    #[error("{path}: file offset {offset:#x} is not in a mapped segment")]
    Unmapped { path: String, offset: u64 },
}

/// A probe target as libbpf spells it in section names: `BINARY:FUNCTION[+OFFSET]` or
/// `BINARY:OFFSET`, BINARY being a path, `/proc/self/exe`, or a library name like `libc.so.6`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Target {
    /// The binary.
    pub binary: String,
    /// The function, if given by name.
    pub function: Option<String>,
    /// Offset from the function, or the file offset when no function is named.
    pub offset: u64,
}

fn parse_num(s: &str) -> Option<u64> {
    match s.strip_prefix("0x").or_else(|| s.strip_prefix("0X")) {
        Some(h) => u64::from_str_radix(h, 16).ok(),
        None => s.parse().ok(),
    }
}

impl Target {
    /// Parses `BINARY:FUNCTION[+OFFSET]` or `BINARY:OFFSET`.
    pub fn parse(spec: &str) -> Result<Target, ResolveError> {
        let bad = || ResolveError::Syntax(spec.to_string());
        let (binary, what) = spec.rsplit_once(':').ok_or_else(bad)?;
        if binary.is_empty() || what.is_empty() {
            return Err(bad());
        }
        if let Some(off) = parse_num(what) {
            return Ok(Target { binary: binary.to_string(), function: None, offset: off });
        }
        let (func, off) = match what.split_once('+') {
            Some((f, o)) => (f, parse_num(o).ok_or_else(bad)?),
            None => (what, 0),
        };
        Ok(Target { binary: binary.to_string(), function: Some(func.to_string()), offset: off })
    }
}

/// The mapped file `binary` names: `/proc/self/exe`, a path, or a library's file name.
fn find_binary(binary: &str, maps: &[Mapping]) -> Option<String> {
    find_binary_of(binary, maps, "/proc/self/exe")
}

/// [`find_binary`] in a process whose executable is linked from `exe` (`/proc/PID/exe`).
fn find_binary_of(binary: &str, maps: &[Mapping], exe: &str) -> Option<String> {
    let wanted = if binary == "/proc/self/exe" { std::fs::read_link(exe).ok()?.to_string_lossy().to_string() } else { binary.to_string() };
    let canon = std::fs::canonicalize(&wanted).ok().map(|p| p.to_string_lossy().to_string());
    let base = Path::new(&wanted).file_name()?.to_string_lossy().to_string();
    maps.iter()
        .find(|m| m.path == wanted || Some(&m.path) == canon.as_ref())
        .or_else(|| {
            // A bare library name: the file name, or a versioned one (libc.so.6 for libc.so).
            let named = |m: &&Mapping| {
                Path::new(&m.path).file_name().is_some_and(|f| {
                    let f = f.to_string_lossy();
                    f == base || f.strip_prefix(base.as_str()).is_some_and(|rest| rest.starts_with('.'))
                })
            };
            (!wanted.contains('/')).then(|| maps.iter().find(named)).flatten()
        })
        .map(|m| m.path.clone())
}

/// The address of a function's file offset in this process: in an executable mapping of the
/// file, where there is one (a file may also be mapped whole and read-only, by the application
/// reading its own ELF or by us reading symbols, and code is not run from there).
fn address_of_file_offset(path: &str, maps: &[Mapping], file_off: u64) -> Option<u64> {
    let holding = |m: &&Mapping| m.path == path && file_off >= m.offset && file_off < m.offset + (m.end - m.start);
    let found = maps.iter().filter(holding).find(|m| m.perms.contains('x')).or_else(|| maps.iter().find(holding));
    found.map(|m| m.start + (file_off - m.offset))
}

/// Bytes of alignment padding at file offset `off` (right after a function): int3 and nop
/// instructions, at most 16 (what compilers align functions to) and at most `limit` (up to the
/// next symbol). A probe on a function shorter than its jump may overwrite them: nothing
/// executes or jumps into padding.
fn padding_after(data: &[u8], off: u64, limit: u64) -> u64 {
    use iced_x86::{Code, Decoder, DecoderOptions};
    let end = (off as usize).saturating_add(limit.min(16) as usize).min(data.len());
    let Some(bytes) = data.get(off as usize..end) else { return 0 };
    let mut dec = Decoder::new(64, bytes, DecoderOptions::NONE);
    let mut n = 0;
    while dec.can_decode() {
        let i = dec.decode();
        let filler = i.code() == Code::Int3 || i.mnemonic() == iced_x86::Mnemonic::Nop;
        if i.is_invalid() || !filler {
            break;
        }
        n += i.len() as u64;
    }
    n
}

/// The functions of an ELF file as its symbol tables tell them: its own `.symtab` and
/// `.dynsym`, and where it has no `.symtab` (a distribution's stripped library), that of its
/// separate debug file (`/usr/lib/debug`, found by build id or debug link), as bpftrace and perf
/// find them: without them a library's local functions have no size, and a return probe the
/// loader puts at one could not be told to be at an entry.
struct Functions {
    /// Text symbols: (address, size, name), in the tables' order (the file's `.symtab`,
    /// `.dynsym`, then the debug file's), which decides between symbols of one name.
    text: Vec<(u64, u64, Box<str>)>,
    /// Their addresses and sizes, sorted.
    sorted: Vec<(u64, u64)>,
    /// Every symbol's address, sorted (where padding after a function ends).
    starts: Vec<u64>,
    /// The file's loadable segments: (address, file offset, bytes in the file).
    segments: Vec<(u64, u64, u64)>,
    /// The file's entry point (`e_entry`: an executable's `_start`; 0 where it has none).
    entry: u64,
}

impl Functions {
    fn of(data: &[u8], path: &str) -> Option<Functions> {
        let file = object::File::parse(data).ok()?;
        let debug = if file.section_by_name(".symtab").is_some() { None } else { debug_file(&file, path) };
        let debug_file = debug.as_ref().and_then(|d| object::File::parse(&**d).ok());
        let mut text = vec![];
        let mut starts = vec![];
        let mut add = |f: &object::File<'_>| {
            for sym in f.symbols().chain(f.dynamic_symbols()) {
                if sym.address() == 0 {
                    continue;
                }
                starts.push(sym.address());
                if sym.kind() == object::SymbolKind::Text {
                    if let Ok(name) = sym.name() {
                        text.push((sym.address(), sym.size(), name.into()));
                    }
                }
            }
        };
        add(&file);
        if let Some(d) = &debug_file {
            add(d);
        }
        let mut sorted: Vec<(u64, u64)> = text.iter().map(|&(a, size, _)| (a, size)).collect();
        sorted.sort_unstable();
        sorted.dedup();
        starts.sort_unstable();
        starts.dedup();
        let segments = file.segments().map(|s| (s.address(), s.file_range().0, s.file_range().1)).collect();
        let entry = if file.kind() == object::ObjectKind::Executable || file.kind() == object::ObjectKind::Dynamic { file.entry() } else { 0 };
        Some(Functions { text, sorted, starts, segments, entry })
    }

    /// The functions of the file mapped from `path` whose bytes are `data`, found once per
    /// file (a wildcard probe resolves a thousand functions of one library).
    fn cached(data: &[u8], path: &str) -> Option<std::sync::Arc<Functions>> {
        use std::os::unix::fs::MetadataExt;
        type Cache = Vec<((String, u64, u64, u64, i64), std::sync::Arc<Functions>)>;
        static CACHE: std::sync::Mutex<Cache> = std::sync::Mutex::new(Vec::new());
        let meta = crate::procmaps::metadata_of_path(path).ok()?;
        let key = (path.to_string(), meta.dev(), meta.ino(), meta.len(), meta.mtime());
        // Never waited for (a caller may be a signal handler): busy means made afresh.
        if let Some(found) = CACHE.try_lock().ok().and_then(|c| c.iter().find(|(k, _)| *k == key).map(|(_, f)| f.clone())) {
            return Some(found);
        }
        let f = std::sync::Arc::new(Functions::of(data, path)?);
        if let Ok(mut c) = CACHE.try_lock() {
            c.push((key, f.clone()));
        }
        Some(f)
    }

    /// The address of file offset `off`, through its loadable segment.
    fn address_of(&self, off: u64) -> Option<u64> {
        self.segments.iter().find(|&&(_, o, n)| off >= o && off < o + n).map(|&(a, o, _)| off - o + a)
    }

    /// The file offset of address `addr`.
    fn offset_of(&self, addr: u64) -> Option<u64> {
        self.segments.iter().find(|&&(a, _, n)| addr >= a && addr < a + n).map(|&(a, o, _)| addr - a + o)
    }

    /// The function named `name` (or `name@VERSION`): its address and size.
    fn named(&self, name: &str) -> Option<(u64, u64)> {
        let found = |exact: bool| {
            self.text.iter().find(|(_, _, n)| if exact { &**n == name } else { n.split('@').next() == Some(name) }).map(|&(a, size, _)| (a, size))
        };
        found(true).or_else(|| found(false))
    }

    /// The size of the function whose first byte is at `addr`, if one is known.
    fn size_at(&self, addr: u64) -> Option<u64> {
        let k = self.sorted.partition_point(|&(a, _)| a < addr);
        self.sorted[k..].iter().take_while(|&&(a, _)| a == addr).map(|&(_, size)| size).find(|&size| size > 0)
    }

    /// Whether a known function has `addr` strictly inside it (functions are at most a few
    /// dozen deep in one another: aliases, cold parts).
    /// Whether a function symbol at `addr` names one that returns twice.
    fn returns_twice_at(&self, addr: u64) -> bool {
        self.text.iter().any(|(a, _, name)| *a == addr && returns_twice(name))
    }

    fn inside_a_function(&self, addr: u64) -> bool {
        let k = self.sorted.partition_point(|&(a, _)| a < addr);
        self.sorted[..k].iter().rev().take(64).any(|&(a, size)| a < addr && addr < a + size)
    }

    /// Bytes from `end` (the end of a function) to the next symbol or the end of its segment:
    /// what padding may be.
    fn room_after(&self, end: u64) -> u64 {
        let Some(&(a, _, n)) = self.segments.iter().find(|&&(a, _, n)| end >= a && end < a + n) else { return 0 };
        let seg_end = a + n;
        self.starts.get(self.starts.partition_point(|&s| s < end)).copied().unwrap_or(seg_end).min(seg_end) - end
    }
}

/// The separate debug file of `file` (at `path`): by build id under
/// `/usr/lib/debug/.build-id/`, else by its `.gnu_debuglink` name next to it, in its `.debug`
/// folder or under `/usr/lib/debug` (gdb's places). Only one of the same build: the same build
/// id where the file has one, else the CRC its debug link names (a debug file of another build
/// would put probes at wrong addresses).
fn debug_file(file: &object::File<'_>, path: &str) -> Option<memmap2::Mmap> {
    let id = file.build_id().ok().flatten().filter(|id| id.len() >= 2);
    let link = file.gnu_debuglink().ok().flatten();
    let hex = |b: &[u8]| b.iter().map(|x| format!("{x:02x}")).collect::<String>();
    let mut candidates = vec![];
    if let Some(id) = id {
        candidates.push(format!("/usr/lib/debug/.build-id/{}/{}.debug", hex(&id[..1]), hex(&id[1..])));
    }
    if let Some((name, _)) = link {
        let name = String::from_utf8_lossy(name).to_string();
        let dir = Path::new(path).parent().map(|d| d.to_string_lossy().to_string()).unwrap_or_default();
        candidates.extend([format!("{dir}/.debug/{name}"), format!("/usr/lib/debug{dir}/{name}"), format!("{dir}/{name}")]);
    }
    candidates.into_iter().filter(|c| c != path).find_map(|c| {
        let data = map_file(&c).ok()?;
        let same = match id {
            Some(id) => object::File::parse(&*data).ok()?.build_id().ok().flatten() == Some(id),
            None => link.is_some_and(|(_, crc)| crc32(&data) == crc),
        };
        same.then_some(data)
    })
}

/// The CRC-32 (IEEE 802.3, as `.gnu_debuglink` records it) of `data`.
fn crc32(data: &[u8]) -> u32 {
    let mut crc = !0u32;
    for &b in data {
        crc ^= b as u32;
        for _ in 0..8 {
            crc = if crc & 1 != 0 { (crc >> 1) ^ 0xEDB8_8320 } else { crc >> 1 };
        }
    }
    !crc
}

/// Alignment padding (int3/nop filler after a function, before the next symbol) of at least
/// `len` bytes whose start lies within `[lo, hi]`, in the file mapped at `addr` in this
/// process: runtime addresses of the padding's start and end. Nothing executes there, so it may
/// hold code of ours. `skip` says which runtime addresses are already taken.
pub(crate) fn padding_near(addr: u64, lo: u64, hi: u64, len: u64, taken: impl Fn(u64) -> bool) -> Option<u64> {
    let maps = mappings();
    let m = maps.iter().find(|m| m.start <= addr && addr < m.end && !m.path.is_empty())?;
    let pads = paddings_of(m)?;
    // File offsets whose padding could be in reach (the window is within a few hundred bytes
    // of `addr`, so in the same file; runtime addresses are checked below).
    let to_off = |a: u64| (a as i128 - m.start as i128 + m.offset as i128).max(0) as u64;
    let (off_lo, off_hi) = (to_off(lo).saturating_sub(len + 16), to_off(hi) + 16);
    let first = pads.partition_point(|&(off, _)| off < off_lo);
    let mut best: Option<u64> = None;
    for &(end_off, pad) in pads[first..].iter().take_while(|&&(off, _)| off <= off_hi) {
        let Some(end) = address_of_file_offset(&m.path, &maps, end_off) else { continue };
        if end + len < lo || end > hi {
            continue;
        }
        // Whole `len`-byte slots of the padding, the first free one within reach.
        let mut at = end;
        while at + len <= end + pad {
            if at >= lo && at <= hi && !taken(at) {
                if best.is_none_or(|b| at.abs_diff(addr) < b.abs_diff(addr)) {
                    best = Some(at);
                }
                break;
            }
            at += len;
        }
    }
    best
}

/// The alignment padding after each function of the file `m` maps: (file offset where it
/// starts, its length), sorted, found once per file (a process rewrites many system call
/// sites in libc, each looking for padding nearby).
fn paddings_of(m: &Mapping) -> Option<std::sync::Arc<Vec<(u64, u64)>>> {
    type Cache = Vec<((String, u64, String), std::sync::Arc<Vec<(u64, u64)>>)>;
    static CACHE: std::sync::Mutex<Cache> = std::sync::Mutex::new(Vec::new());
    let key = (m.dev.clone(), m.inode, m.path.clone());
    // Never waited for (a caller may be a signal handler): busy means computed afresh.
    if let Some(found) = CACHE.try_lock().ok().and_then(|c| c.iter().find(|(k, _)| *k == key).map(|(_, v)| v.clone())) {
        return Some(found);
    }
    let pads = std::sync::Arc::new(find_paddings(&map_file(&m.path).ok()?, &m.path)?);
    if let Ok(mut c) = CACHE.try_lock() {
        c.push((key, pads.clone()));
    }
    Some(pads)
}

/// The bytes of file `path`, mapped read-only: a library this process maps is in the page
/// cache, and mapping it copies nothing (reading libc whole cost each traced process a
/// millisecond).
fn map_file(path: &str) -> std::io::Result<memmap2::Mmap> {
    let f = crate::procmaps::open_path(path)?;
    // SAFETY: memmap2::Mmap::map (mmap(2), private and read-only). The contract is that the
    // file does not change while mapped: these are executables and libraries the process runs
    // or is about to probe, which installers replace by renaming a new file over them (the
    // mapping keeps the old one); truncating one in place would break the process running it.
    unsafe { memmap2::Mmap::map(&f) }
}

fn find_paddings(data: &[u8], path: &str) -> Option<Vec<(u64, u64)>> {
    let funcs = Functions::cached(data, path)?;
    let mut pads = Vec::new();
    for &(addr, size) in funcs.sorted.iter().filter(|f| f.1 > 0) {
        let end = addr + size;
        let Some(end_off) = funcs.offset_of(end) else { continue };
        let pad = padding_after(data, end_off, funcs.room_after(end));
        if pad > 0 {
            pads.push((end_off, pad));
        }
    }
    pads.sort_unstable();
    pads.dedup();
    Some(pads)
}

/// A resolved probe point.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Resolved {
    /// Address in this process.
    pub addr: u64,
    /// The mapped file.
    pub path: String,
    /// The function's size (0 when unknown or when probing a raw offset).
    pub function_size: u64,
    /// Whether the address is the function's first byte.
    pub at_entry: bool,
    /// Whether that is only presumed: a raw offset no symbol covers, taken as an entry as the
    /// kernel takes a return probe's offset. A return probe may go there; an entry probe goes
    /// as one in mid-function (flags and red zone kept, no override).
    pub entry_presumed: bool,
    /// Alignment padding (int3 or nops) after the function, before the next symbol.
    pub padding: u64,
    /// A symbol at the address names a function that returns twice (see [`returns_twice`]).
    pub returns_twice: bool,
    /// The address is the executable's entry point (`_start`), which the kernel enters with
    /// `argc` where a return address would be, and which never returns.
    pub program_entry: bool,
}

/// Whether `name` is one of the functions that return twice, by GCC's rule (its
/// `special_function_p`, which gives them the `returns_twice` attribute): after the prefix
/// `__x`, `__` or `_`, one of `setjmp`, `sigsetjmp`, `savectx`, `vfork`, `getcontext`,
/// `qsetjmp` or `setjmp_syscall`. They keep their return address (in a `jmp_buf`, or in a
/// register across the system call) and return through it again.
pub fn returns_twice(name: &str) -> bool {
    let bare = name.strip_prefix("__x").or_else(|| name.strip_prefix("__")).or_else(|| name.strip_prefix('_')).unwrap_or(name);
    matches!(bare, "setjmp" | "sigsetjmp" | "savectx" | "vfork" | "getcontext" | "qsetjmp" | "setjmp_syscall")
}

/// Resolves a target to an address in this process.
pub fn resolve(t: &Target) -> Result<Resolved, ResolveError> {
    resolve_in(t, &mappings(), "/proc/self/exe")
}

/// Resolves a target to an address in process `pid` (`/proc/self/exe` meaning its executable).
pub fn resolve_in_process(pid: u32, t: &Target) -> Result<Resolved, ResolveError> {
    resolve_in(t, &crate::procmaps::mappings_of_process(pid), &format!("/proc/{pid}/exe"))
}

fn resolve_in(t: &Target, maps: &[Mapping], exe: &str) -> Result<Resolved, ResolveError> {
    let path = find_binary_of(&t.binary, maps, exe).ok_or_else(|| ResolveError::NotMapped(t.binary.clone()))?;
    let data = map_file(&path).map_err(|e| ResolveError::Elf { path: path.clone(), msg: e.to_string() })?;
    let funcs = Functions::cached(&data, &path).ok_or_else(|| ResolveError::Elf { path: path.clone(), msg: "not an ELF file we can read".into() })?;
    let padding_of = |func_off: u64, size: u64| match funcs.address_of(func_off) {
        Some(vaddr) if size > 0 => padding_after(&data, func_off + size, funcs.room_after(vaddr + size)),
        _ => 0,
    };
    let Some(func) = &t.function else {
        let addr = address_of_file_offset(&path, maps, t.offset).ok_or(ResolveError::Unmapped { path: path.clone(), offset: t.offset })?;
        // A raw offset (what the kernel's uprobe interface and libbpf give) that is a function's
        // first byte is a function entry, with that function's size. One no known function
        // holds is taken as the loader gives it, an entry (as the kernel takes a return probe's
        // offset): a local function of a library whose symbols we could not read.
        let vaddr = funcs.address_of(t.offset);
        let function_size = vaddr.and_then(|v| funcs.size_at(v)).unwrap_or(0);
        let entry_presumed = function_size == 0 && vaddr.is_some_and(|v| !funcs.inside_a_function(v));
        let at_entry = function_size > 0 || entry_presumed;
        let returns_twice = vaddr.is_some_and(|v| funcs.returns_twice_at(v));
        let program_entry = vaddr.is_some_and(|v| funcs.entry != 0 && v == funcs.entry);
        return Ok(Resolved {
            addr,
            path,
            function_size,
            at_entry,
            entry_presumed,
            padding: padding_of(t.offset, function_size),
            returns_twice,
            program_entry,
        });
    };
    let (vaddr, size) = funcs.named(func).ok_or_else(|| ResolveError::NoSymbol { path: path.clone(), symbol: func.clone() })?;
    let func_off = funcs.offset_of(vaddr).ok_or_else(|| ResolveError::Elf { path: path.clone(), msg: format!("`{func}` is outside every segment") })?;
    let file_off = func_off + t.offset;
    let addr = address_of_file_offset(&path, maps, file_off).ok_or(ResolveError::Unmapped { path: path.clone(), offset: file_off })?;
    let padding = if t.offset == 0 { padding_of(func_off, size) } else { 0 };
    let returns_twice = t.offset == 0 && funcs.returns_twice_at(vaddr);
    let program_entry = t.offset == 0 && funcs.entry != 0 && vaddr == funcs.entry;
    Ok(Resolved { addr, path, function_size: size, at_entry: t.offset == 0, entry_presumed: false, padding, returns_twice, program_entry })
}

/// Adds `delta` to the USDT semaphore (a u16 counting attached probes, which the application
/// tests before doing a probe's work) at file offset `offset` of `binary` in this process, as
/// the kernel does for a uprobe opened with a `ref_ctr_offset`. Only in a writable mapping of
/// the binary's data.
pub fn add_to_semaphore(binary: &str, offset: u64, delta: i16) -> Result<(), ResolveError> {
    let maps = mappings();
    let path = find_binary(binary, &maps).ok_or_else(|| ResolveError::NotMapped(binary.to_string()))?;
    let m = maps
        .iter()
        .find(|m| {
            m.path == path && m.perms.starts_with("rw") && offset >= m.offset && offset.checked_add(2).is_some_and(|end| end <= m.offset + (m.end - m.start))
        })
        .ok_or(ResolveError::Unmapped { path: path.clone(), offset })?;
    let addr = m.start + (offset - m.offset);
    if !addr.is_multiple_of(2) {
        return Err(ResolveError::Unmapped { path, offset });
    }
    // SAFETY: `addr` is 2-aligned and inside a private writable mapping of the binary's data,
    // where its USDT semaphore lives; the application only reads it, and every writer (us, for
    // each probe) adds atomically.
    let sem = unsafe { std::sync::atomic::AtomicU16::from_ptr(addr as *mut u16) };
    sem.fetch_add(delta as u16, std::sync::atomic::Ordering::Relaxed);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn target_syntax() {
        let t = Target::parse("/proc/self/exe:main+0x10").unwrap();
        assert_eq!((t.binary.as_str(), t.function.as_deref(), t.offset), ("/proc/self/exe", Some("main"), 16));
        let t = Target::parse("libc.so.6:0x1234").unwrap();
        assert_eq!((t.function, t.offset), (None, 0x1234));
        assert!(Target::parse("nocolon").is_err());
        assert!(Target::parse("lib:func+zz").is_err());
    }

    #[test]
    fn functions_that_return_twice_by_gccs_rule() {
        for name in ["setjmp", "_setjmp", "__sigsetjmp", "sigsetjmp", "vfork", "__vfork", "getcontext", "__xsetjmp"] {
            assert!(returns_twice(name), "{name}");
        }
        for name in ["longjmp", "fork", "setjmp2", "___setjmp", "my_vfork", "setcontext"] {
            assert!(!returns_twice(name), "{name}");
        }
        // Found by address in libc, under any of its names.
        let r = resolve(&Target::parse("libc.so.6:vfork").unwrap()).unwrap();
        assert!(r.returns_twice);
        assert!(!resolve(&Target::parse("libc.so.6:fork").unwrap()).unwrap().returns_twice);
    }

    #[test]
    fn resolves_a_libc_function() {
        let r = resolve(&Target::parse("libc.so.6:getpid").unwrap()).unwrap();
        assert_eq!(r.addr, libc::getpid as *const () as u64);
        assert!(r.at_entry);
        let unversioned = resolve(&Target::parse("libc.so:getpid").unwrap()).unwrap();
        assert_eq!(unversioned.addr, r.addr, "libc.so names the mapped libc.so.6");
        assert!(matches!(resolve(&Target::parse("libc.s:getpid").unwrap()), Err(ResolveError::NotMapped(_))), "only whole version suffixes");
        let e = resolve(&Target::parse("libc.so.6:no_such_function_here").unwrap()).unwrap_err();
        assert!(e.to_string().contains("no function `no_such_function_here`"), "{e}");
        assert!(matches!(resolve(&Target::parse("libnotloaded.so:f").unwrap()), Err(ResolveError::NotMapped(_))));
    }

    /// A function only libc's debug file names (a local one, as bpftrace lists them where
    /// libc6-dbg is installed): resolved by name with its size, its file offset taken as its
    /// entry, a byte inside it not; and in libc's executable mapping, though the test maps the
    /// whole file read-only too (as a program reading its own ELF does), which used to catch
    /// the address.
    #[test]
    fn local_functions_come_from_the_debug_file() {
        let maps = mappings();
        let libc = maps.iter().find(|m| m.path.contains("/libc.so")).expect("libc is mapped").path.clone();
        let data = map_file(&libc).unwrap();
        if debug_file(&object::File::parse(&*data).unwrap(), &libc).is_none() {
            return println!("skipping: no debug file for {libc} (Debian: libc6-dbg)");
        }
        let r = resolve(&Target::parse("libc.so.6:sysmalloc").unwrap()).unwrap();
        assert!(r.at_entry && r.function_size > 16, "{r:?}");
        let m = maps.iter().find(|m| m.path == libc && m.start <= r.addr && r.addr < m.end).unwrap();
        let off = r.addr - m.start + m.offset;
        let raw = resolve(&Target { binary: "libc.so.6".into(), function: None, offset: off }).unwrap();
        assert_eq!((raw.addr, raw.at_entry, raw.function_size), (r.addr, true, r.function_size));
        let inside = resolve(&Target { binary: "libc.so.6".into(), function: None, offset: off + 4 }).unwrap();
        assert!(!inside.at_entry, "{inside:?}");
    }

    #[test]
    fn debug_link_crc() {
        assert_eq!(crc32(b"123456789"), 0xCBF4_3926);
        assert_eq!(crc32(b""), 0);
    }
}
