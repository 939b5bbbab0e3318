//! What a program's image needs in its environment to start under bpftime's audit library.
//!
//! With an audit library (`LD_AUDIT`), glibc (2.36 here) sets up the thread-locals before it
//! loads the program's libraries, so those whose thread-locals must be static (`DF_STATIC_TLS`:
//! initial-exec ones, as Rust's dylibs and sanitizer runtimes have) take them from the small
//! room it keeps for later loads (`glibc.rtld.optional_static_tls`, 512 bytes by default; about
//! 1.6 KiB with the rest of its surplus), and
//! the program does not start ("cannot allocate memory in static TLS block": rustc, whose driver
//! library takes 23 KiB). [`tunables_for`] makes that room what the libraries take
//! ([`static_tls_of_libraries`]), no more: every thread's block holds it, and a thread asking
//! for a small stack (Python's `threading.stack_size(32768)`) would not start.
//!
//! Used where a program is started with the audit library: by `bpftime start`/`run`, and by the
//! exec wrappers ([`exec_wrappers!`]) of the agent and the syscall server, so that what a traced
//! program starts (rustc under `cargo build`) starts too.

pub mod exec;

use std::ffi::OsStr;
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

/// The audit library's file name (`agent/early/audit.c`): an `LD_AUDIT` naming it is ours.
pub const AUDIT_LIBRARY: &str = "libbpftime_audit.so";

/// What glibc's default room holds besides libc's own (measured on glibc 2.36: libraries taking
/// 1,000 bytes load, 2,000 do not).
pub const HELD_BY_DEFAULT: usize = 1024;

/// The tunable that sizes the room.
const KEY: &str = "glibc.rtld.optional_static_tls=";

/// The `GLIBC_TUNABLES` value an image whose libraries take `need` bytes of static TLS needs to
/// start with an audit library, given the value it would have (`current`): the room made
/// 512 bytes more than `need` (glibc's own take some), other tunables kept. None where nothing
/// need change: the libraries fit the default room, or `current` already makes it as large.
pub fn tunables_for(current: Option<&str>, need: usize) -> Option<String> {
    if need <= HELD_BY_DEFAULT {
        return None;
    }
    let room = 512 + need;
    let current = current.unwrap_or("");
    let others: Vec<&str> = current.split(':').filter(|t| !t.is_empty() && !t.starts_with(KEY)).collect();
    // The last setting is the one glibc keeps.
    let set = current.split(':').filter_map(|t| t.strip_prefix(KEY)).next_back().and_then(parse_size);
    if set.is_some_and(|set| set >= room) {
        return None;
    }
    let mut value = others.join(":");
    if !value.is_empty() {
        value.push(':');
    }
    value.push_str(&format!("{KEY}{room}"));
    Some(value)
}

/// A tunable's number as glibc reads it (`strtoul` base 0: decimal, `0x` hex, `0` octal).
fn parse_size(text: &str) -> Option<usize> {
    if let Some(hex) = text.strip_prefix("0x").or_else(|| text.strip_prefix("0X")) {
        usize::from_str_radix(hex, 16).ok()
    } else if text.len() > 1 && text.starts_with('0') {
        usize::from_str_radix(&text[1..], 8).ok()
    } else {
        text.parse().ok()
    }
}

/// `program` as the path an exec would run: as given where it names a folder, else found in the
/// folders of `PATH` (glibc's default where unset), as `execvp` finds it.
pub fn program_path(program: &OsStr) -> Option<PathBuf> {
    use std::os::unix::ffi::OsStrExt;
    if program.as_bytes().contains(&b'/') {
        return Some(PathBuf::from(program));
    }
    let path = exec::process_path().unwrap_or("/bin:/usr/bin".as_ref());
    std::env::split_paths(path).map(|d| d.join(program)).find(|f| f.is_file())
}

/// Bytes of static TLS that the libraries `exe` loads at its start take (those marked
/// `DF_STATIC_TLS`), each rounded up to its alignment; for a script (`#!`), its interpreter's.
/// The libraries are found in the dynamic loader's order (each object's `DT_NEEDED` in the
/// `DT_RPATH`s of it and its loaders where it has no `DT_RUNPATH`, `library_path` as
/// `LD_LIBRARY_PATH` gives it, its `DT_RUNPATH`, the folders of /etc/ld.so.conf and its *.conf
/// files, the system's; not the loader's cache itself, nor `glibc-hwcaps` subfolders, nor
/// `LD_PRELOAD`); only headers, the dynamic section and its strings are read. One not found
/// counts nothing.
pub fn static_tls_of_libraries(exe: &Path, library_path: Option<&OsStr>) -> usize {
    let exe = interpreter_of_script(exe).unwrap_or_else(|| exe.to_path_buf());
    // `$ORIGIN` is the folder of the file itself, links resolved.
    let exe = std::fs::canonicalize(&exe).unwrap_or(exe);
    let library_path: Vec<PathBuf> = library_path.map(|p| std::env::split_paths(p).filter(|d| !d.as_os_str().is_empty()).collect()).unwrap_or_default();
    // The loader's cache holds the folders of /etc/ld.so.conf and its `include`d *.conf files
    // (in their names' order); then the system's.
    let mut configured: Vec<PathBuf> = std::fs::read_dir("/etc/ld.so.conf.d")
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|e| e == "conf"))
        .collect();
    configured.sort();
    configured.insert(0, PathBuf::from("/etc/ld.so.conf"));
    let mut system: Vec<PathBuf> = configured
        .iter()
        .filter_map(|c| std::fs::read_to_string(c).ok())
        .flat_map(|c| c.lines().map(str::trim).filter(|l| l.starts_with('/')).map(PathBuf::from).collect::<Vec<_>>())
        .collect();
    system.extend(["/lib/x86_64-linux-gnu", "/usr/lib/x86_64-linux-gnu", "/lib64", "/usr/lib64", "/lib", "/usr/lib"].map(PathBuf::from));
    let Some(first) = DynamicObject::read(&exe) else { return 0 };
    let mut seen = std::collections::HashSet::from([exe.clone()]);
    // (the object, what it reads, the DT_RPATHs of the objects that loaded it)
    let mut todo = vec![(exe, first, Vec::<PathBuf>::new())];
    let mut total = 0;
    while let Some((path, object, loaders_rpaths)) = todo.pop() {
        total += object.static_tls;
        let origin = path.parent().map(Path::to_path_buf).unwrap_or_default();
        let expand = |paths: &[String]| -> Vec<PathBuf> {
            let origin = origin.to_string_lossy();
            paths.iter().flat_map(|r| r.split(':').map(|d| PathBuf::from(d.replace("${ORIGIN}", &origin).replace("$ORIGIN", &origin)))).collect()
        };
        // As glibc looks: DT_RPATH (its own, then its loaders') where it has no DT_RUNPATH,
        // LD_LIBRARY_PATH, DT_RUNPATH, the cache's folders, the system's.
        let (rpaths, runpaths) = (expand(&object.rpaths), expand(&object.runpaths));
        let mut inherited = rpaths.clone();
        inherited.extend(loaders_rpaths.iter().cloned());
        let before: &[PathBuf] = if runpaths.is_empty() { &inherited } else { &[] };
        let folders: Vec<&PathBuf> = before.iter().chain(&library_path).chain(&runpaths).chain(&system).collect();
        for name in object.needed {
            // The first of its name that is a 64-bit object (a folder of 32-bit ones, /lib32,
            // may come first: the loader's cache leaves those out).
            let found = folders.iter().map(|d| d.join(&name)).filter(|f| f.is_file()).find_map(|f| Some((DynamicObject::read(&f)?, f)));
            if let Some((object, path)) = found {
                if seen.len() < 512 && seen.insert(path.clone()) {
                    todo.push((path, object, inherited.clone()));
                }
            }
        }
    }
    total
}

/// The interpreter a script (`#!INTERPRETER ...`) names, as given.
fn interpreter_of_script(path: &Path) -> Option<PathBuf> {
    let mut head = [0u8; 256];
    let got = File::open(path).ok()?.read_at(&mut head, 0).ok()?;
    let line = head[..got].strip_prefix(b"#!")?;
    let line = &line[..line.iter().position(|&b| b == b'\n')?];
    let interpreter = line.split(|&b| b == b' ' || b == b'\t').find(|w| !w.is_empty())?;
    Some(PathBuf::from(<OsStr as std::os::unix::ffi::OsStrExt>::from_bytes(interpreter)))
}

/// What [`static_tls_of_libraries`] reads of a 64-bit little-endian ELF object.
#[derive(Debug, Default, PartialEq)]
struct DynamicObject {
    /// `DT_NEEDED`: the libraries it loads.
    needed: Vec<String>,
    /// `DT_RPATH`, as written (`$ORIGIN` unexpanded).
    rpaths: Vec<String>,
    /// `DT_RUNPATH`, as written.
    runpaths: Vec<String>,
    /// Its thread-locals' size rounded up to their alignment, where they must be static.
    static_tls: usize,
}

impl DynamicObject {
    /// Reads the object at `path` by its headers: None where it is no 64-bit little-endian ELF
    /// file or cannot be read.
    fn read(path: &Path) -> Option<Self> {
        // Bounds on what a header may make us read.
        const MOST_HEADERS: usize = 256;
        const MOST_DYNAMIC: u64 = 64 << 10;
        const MOST_STRINGS: u64 = 1 << 20;
        let file = File::open(path).ok()?;
        let mut header = [0u8; 64];
        file.read_exact_at(&mut header, 0).ok()?;
        // ELFCLASS64, ELFDATA2LSB.
        if header[..4] != *b"\x7fELF" || header[4] != 2 || header[5] != 1 {
            return None;
        }
        let (at, entry_size, count) = (word(&header, 32), half(&header, 54), half(&header, 56));
        if entry_size != 56 || count > MOST_HEADERS {
            return None;
        }
        let mut table = vec![0u8; count * 56];
        file.read_exact_at(&mut table, at).ok()?;
        let headers: Vec<&[u8]> = table.chunks_exact(56).collect();
        let kind = |ph: &[u8]| u32::from_le_bytes(ph[..4].try_into().unwrap_or_default());
        // (p_offset, p_vaddr, p_filesz, p_memsz, p_align)
        let fields = |ph: &[u8]| (word(ph, 8), word(ph, 16), word(ph, 32), word(ph, 40), word(ph, 48));
        let read = |offset: u64, len: u64, most: u64| {
            let mut data = vec![0u8; len.min(most) as usize];
            file.read_exact_at(&mut data, offset).ok().map(|()| data)
        };
        let tls = headers.iter().find(|ph| kind(ph) == libc::PT_TLS).map(|ph| {
            let (.., size, align) = fields(ph);
            (size as usize).next_multiple_of((align as usize).max(1))
        });
        let Some(dynamic) = headers.iter().find(|ph| kind(ph) == libc::PT_DYNAMIC) else {
            // No dynamic section: nothing loaded with it, no flags.
            return Some(Self::default());
        };
        let (offset, _, size, ..) = fields(dynamic);
        let dynamic = read(offset, size, MOST_DYNAMIC)?;
        let entries: Vec<(u64, u64)> = dynamic.chunks_exact(16).map(|e| (word(e, 0), word(e, 8))).take_while(|&(tag, _)| tag != 0).collect();
        let value = |tag: u64| entries.iter().find(|&&(t, _)| t == tag).map(|&(_, v)| v);
        const DT_NEEDED: u64 = 1;
        const DT_STRTAB: u64 = 5;
        const DT_STRSZ: u64 = 10;
        const DT_RPATH: u64 = 15;
        const DT_RUNPATH: u64 = 29;
        const DT_FLAGS: u64 = 30;
        const DF_STATIC_TLS: u64 = 0x10;
        // DT_STRTAB is an address: read at the file offset of the segment that maps it.
        let (strtab_at, strtab_size) = (value(DT_STRTAB)?, value(DT_STRSZ)?);
        let strtab_offset = headers.iter().filter(|ph| kind(ph) == libc::PT_LOAD).find_map(|ph| {
            let (offset, address, size, ..) = fields(ph);
            (strtab_at >= address && strtab_at < address + size).then(|| strtab_at - address + offset)
        })?;
        let strings = read(strtab_offset, strtab_size, MOST_STRINGS)?;
        let string = |at: u64| {
            let from = strings.get(at as usize..)?;
            Some(String::from_utf8_lossy(&from[..from.iter().position(|&b| b == 0)?]).into_owned())
        };
        let all = |tag: u64| entries.iter().filter(|&&(t, _)| t == tag).filter_map(|&(_, v)| string(v)).collect::<Vec<_>>();
        let static_flag = value(DT_FLAGS).is_some_and(|f| f & DF_STATIC_TLS != 0);
        Some(Self { needed: all(DT_NEEDED), rpaths: all(DT_RPATH), runpaths: all(DT_RUNPATH), static_tls: if static_flag { tls.unwrap_or(0) } else { 0 } })
    }
}

/// The little-endian 64-bit word at `at` of `bytes` (0 past the end).
fn word(bytes: &[u8], at: usize) -> u64 {
    bytes.get(at..at + 8).map_or(0, |b| u64::from_le_bytes(b.try_into().unwrap_or_default()))
}

/// The little-endian 16-bit half-word at `at` of `bytes`, widened (0 past the end).
fn half(bytes: &[u8], at: usize) -> usize {
    bytes.get(at..at + 2).map_or(0, |b| u16::from_le_bytes(b.try_into().unwrap_or_default()) as usize)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_room_is_raised_only_where_it_is_smaller_than_the_need() {
        assert_eq!(tunables_for(None, 1000), None);
        assert_eq!(tunables_for(None, 24_000).as_deref(), Some("glibc.rtld.optional_static_tls=24512"));
        assert_eq!(tunables_for(Some("glibc.rtld.optional_static_tls=30000"), 24_000), None);
        assert_eq!(tunables_for(Some("glibc.rtld.optional_static_tls=0x8000"), 24_000), None);
        // The last setting counts.
        assert_eq!(
            tunables_for(Some("glibc.rtld.optional_static_tls=30000:glibc.rtld.optional_static_tls=100"), 24_000).as_deref(),
            Some("glibc.rtld.optional_static_tls=24512")
        );
        assert_eq!(
            tunables_for(Some("glibc.malloc.arena_max=2:glibc.rtld.optional_static_tls=2048"), 24_000).as_deref(),
            Some("glibc.malloc.arena_max=2:glibc.rtld.optional_static_tls=24512")
        );
        assert_eq!(tunables_for(Some("glibc.malloc.arena_max=2"), 2000).as_deref(), Some("glibc.malloc.arena_max=2:glibc.rtld.optional_static_tls=2512"));
    }

    #[test]
    fn a_system_library_is_read_by_its_headers() {
        // libc needs the loader and has static thread-locals of its own (DF_STATIC_TLS).
        let Some(libc) = ["/lib/x86_64-linux-gnu/libc.so.6", "/usr/lib/x86_64-linux-gnu/libc.so.6"].into_iter().map(Path::new).find(|p| p.exists()) else {
            eprintln!("skipped: no libc.so.6 in the usual folders");
            return;
        };
        let object = DynamicObject::read(libc).expect("libc reads");
        assert!(object.needed.iter().any(|n| n.starts_with("ld-linux")), "{object:?}");
        assert!(object.static_tls > 0 && object.static_tls <= HELD_BY_DEFAULT, "{object:?}");
        // The shell loads libc alone: what its libraries take is libc's, and fits the room.
        assert_eq!(static_tls_of_libraries(Path::new("/bin/sh"), None), object.static_tls);
        assert_eq!(DynamicObject::read(Path::new("/etc/passwd")), None);
    }
}
