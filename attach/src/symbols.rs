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

/// The address of a symbol's file offset in this process.
fn address_of_file_offset(path: &str, maps: &[Mapping], file_off: u64) -> Option<u64> {
    maps.iter().filter(|m| m.path == path).find(|m| file_off >= m.offset && file_off < m.offset + (m.end - m.start)).map(|m| m.start + (file_off - m.offset))
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

/// Bytes from the end of the function at file offset `off` (of `size` bytes) to the next
/// symbol or the end of its segment: what padding may be.
fn room_after(file: &object::File<'_>, off: u64, size: u64) -> u64 {
    use object::{Object, ObjectSegment, ObjectSymbol};
    let Some(seg) = file.segments().find(|s| {
        let (o, n) = s.file_range();
        off >= o && off < o + n
    }) else {
        return 0;
    };
    let vaddr = off - seg.file_range().0 + seg.address();
    let end = vaddr + size;
    let seg_end = seg.address() + seg.file_range().1;
    file.symbols().chain(file.dynamic_symbols()).map(|s| s.address()).filter(|&a| a >= end).min().unwrap_or(seg_end).min(seg_end) - end
}

/// The size of the function whose first byte lies at file offset `off`, if one does.
fn function_at_file_offset(file: &object::File<'_>, off: u64) -> Option<u64> {
    use object::{Object, ObjectSegment, ObjectSymbol};
    let seg = file.segments().find(|s| {
        let (o, n) = s.file_range();
        off >= o && off < o + n
    })?;
    let vaddr = off - seg.file_range().0 + seg.address();
    file.symbols().chain(file.dynamic_symbols()).find(|s| s.kind() == object::SymbolKind::Text && s.address() == vaddr && s.size() > 0).map(|s| s.size())
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
    let pads = std::sync::Arc::new(find_paddings(&map_file(&m.path).ok()?)?);
    if let Ok(mut c) = CACHE.try_lock() {
        c.push((key, pads.clone()));
    }
    Some(pads)
}

/// The bytes of file `path`, mapped read-only: a library this process maps is in the page
/// cache, and mapping it copies nothing (reading libc whole cost each traced process a
/// millisecond).
fn map_file(path: &str) -> std::io::Result<memmap2::Mmap> {
    let f = std::fs::File::open(path)?;
    // SAFETY: memmap2::Mmap::map (mmap(2), private and read-only). The contract is that the
    // file does not change while mapped: these are executables and libraries the process runs
    // or is about to probe, which installers replace by renaming a new file over them (the
    // mapping keeps the old one); truncating one in place would break the process running it.
    unsafe { memmap2::Mmap::map(&f) }
}

fn find_paddings(data: &[u8]) -> Option<Vec<(u64, u64)>> {
    use object::{Object, ObjectSegment, ObjectSymbol};
    let file = object::File::parse(data).ok()?;
    let mut starts: Vec<u64> = file.symbols().chain(file.dynamic_symbols()).map(|s| s.address()).collect();
    starts.sort_unstable();
    let segments: Vec<(u64, u64, u64)> = file.segments().map(|s| (s.address(), s.file_range().0, s.file_range().1)).collect();
    let mut pads = Vec::new();
    for sym in file.symbols().chain(file.dynamic_symbols()).filter(|s| s.kind() == object::SymbolKind::Text && s.size() > 0) {
        let end = sym.address() + sym.size();
        let Some(&(vaddr, off, size)) = segments.iter().find(|&&(v, _, n)| end >= v && end < v + n) else { continue };
        // Up to the next symbol or the segment's end: what padding may be.
        let next = starts.get(starts.partition_point(|&a| a < end)).copied().unwrap_or(u64::MAX).min(vaddr + size);
        let end_off = end - vaddr + off;
        let pad = padding_after(data, end_off, next - end);
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
    /// Alignment padding (int3 or nops) after the function, before the next symbol.
    pub padding: u64,
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
    let file = object::File::parse(&*data).map_err(|e| ResolveError::Elf { path: path.clone(), msg: e.to_string() })?;
    let Some(func) = &t.function else {
        let addr = address_of_file_offset(&path, maps, t.offset).ok_or(ResolveError::Unmapped { path: path.clone(), offset: t.offset })?;
        // A raw offset (what the kernel's uprobe interface and libbpf give) that is a function's
        // first byte is a function entry, with that function's size.
        let function_size = function_at_file_offset(&file, t.offset).unwrap_or(0);
        let padding = if function_size > 0 { padding_after(&data, t.offset + function_size, room_after(&file, t.offset, function_size)) } else { 0 };
        return Ok(Resolved { addr, path, function_size, at_entry: function_size > 0, padding });
    };
    let sym = file
        .symbols()
        .chain(file.dynamic_symbols())
        .filter(|s| s.kind() == object::SymbolKind::Text && s.address() != 0)
        .find(|s| s.name().ok() == Some(func.as_str()) || s.name().ok().and_then(|n| n.split('@').next()) == Some(func.as_str()))
        .ok_or_else(|| ResolveError::NoSymbol { path: path.clone(), symbol: func.clone() })?;
    // Symbol value (a virtual address) to file offset through its loadable segment.
    let vaddr = sym.address();
    let seg = file
        .segments()
        .find(|s| vaddr >= s.address() && vaddr < s.address() + s.size())
        .ok_or_else(|| ResolveError::Elf { path: path.clone(), msg: format!("`{func}` is outside every segment") })?;
    let (seg_off, _) = seg.file_range();
    let file_off = vaddr - seg.address() + seg_off + t.offset;
    let addr = address_of_file_offset(&path, maps, file_off).ok_or(ResolveError::Unmapped { path: path.clone(), offset: file_off })?;
    let padding = if t.offset == 0 && sym.size() > 0 { padding_after(&data, file_off + sym.size(), room_after(&file, file_off, sym.size())) } else { 0 };
    Ok(Resolved { addr, path, function_size: sym.size(), at_entry: t.offset == 0, padding })
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
        .find(|m| m.path == path && m.perms.starts_with("rw") && offset >= m.offset && offset + 2 <= m.offset + (m.end - m.start))
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
}
