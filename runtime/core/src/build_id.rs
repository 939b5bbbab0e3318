//! Build-id stack frames (`bpf_get_stack(..., BPF_F_USER_BUILD_ID)` and `BPF_F_STACK_BUILD_ID`
//! stack maps): each address as the build id of the file mapped there and the offset in that
//! file, as the kernel gives them, or the address alone where no file with a build id is
//! mapped there (status `BPF_STACK_BUILD_ID_IP`, also the kernel's fallback).

use std::collections::HashMap;
use std::fs::File;
use std::os::unix::fs::{FileExt, MetadataExt};
use std::sync::{Mutex, OnceLock};

/// `BPF_STACK_BUILD_ID_VALID`: the record holds a build id and a file offset.
const VALID: i32 = 1;
/// `BPF_STACK_BUILD_ID_IP`: the record holds the address only.
const IP: i32 = 2;

/// A file-backed mapping of this process.
#[derive(Clone)]
struct Mapping {
    start: u64,
    end: u64,
    /// Its file offset.
    offset: u64,
    /// The file: its device (as `/proc/PID/maps` writes it, major:minor in hex), inode, path.
    dev: String,
    inode: u64,
    path: String,
}

/// The file-backed mappings of this process (a deleted file's are left out: its path may name
/// another file now).
fn mappings() -> Vec<Mapping> {
    let maps = std::fs::read_to_string("/proc/self/maps").unwrap_or_default();
    maps.lines()
        .filter_map(|l| {
            // start-end perms offset dev inode path (the path is the rest of the line)
            let mut f = l.splitn(6, ' ');
            let (range, _perms, offset, dev, inode) = (f.next()?, f.next()?, f.next()?, f.next()?, f.next()?);
            let path = f.next()?.trim_start();
            let (start, end) = range.split_once('-')?;
            let m = Mapping {
                start: u64::from_str_radix(start, 16).ok()?,
                end: u64::from_str_radix(end, 16).ok()?,
                offset: u64::from_str_radix(offset, 16).ok()?,
                dev: dev.to_string(),
                inode: inode.parse().ok()?,
                path: path.to_string(),
            };
            (m.inode != 0 && m.path.starts_with('/') && !m.path.ends_with(" (deleted)")).then_some(m)
        })
        .collect()
}

/// The GNU build id of the ELF file a mapping maps (up to 20 bytes, as the kernel keeps):
/// read from its ELF header, program headers and notes only, once per file (by device and
/// inode). None when it has none, when the path now names another file, or when another
/// thread is reading one right now (a probe never waits).
fn build_id(m: &Mapping) -> Option<[u8; 20]> {
    static KNOWN: OnceLock<Mutex<HashMap<(String, u64), Option<[u8; 20]>>>> = OnceLock::new();
    let mut known = KNOWN.get_or_init(Default::default).try_lock().ok()?;
    let key = (m.dev.clone(), m.inode);
    if let Some(id) = known.get(&key) {
        return *id;
    }
    let file = File::open(&m.path).ok()?;
    if file.metadata().ok()?.ino() != m.inode {
        return None;
    }
    let id = read_build_id(&file);
    known.insert(key, id);
    id
}

/// The GNU build-id note of an ELF64 little-endian file, from its `PT_NOTE` segments.
fn read_build_id(file: &File) -> Option<[u8; 20]> {
    let read = |at: u64, n: usize| -> Option<Vec<u8>> {
        let mut b = vec![0u8; n];
        file.read_exact_at(&mut b, at).ok()?;
        Some(b)
    };
    let u16_at = |b: &[u8], o: usize| u16::from_le_bytes([b[o], b[o + 1]]);
    let u32_at = |b: &[u8], o: usize| u32::from_le_bytes(b[o..o + 4].try_into().expect("4 bytes"));
    let u64_at = |b: &[u8], o: usize| u64::from_le_bytes(b[o..o + 8].try_into().expect("8 bytes"));
    let header = read(0, 64)?;
    // ELF magic, 64-bit, little-endian.
    if header[..4] != *b"\x7fELF" || header[4] != 2 || header[5] != 1 {
        return None;
    }
    let (phoff, phentsize, phnum) = (u64_at(&header, 32), u16_at(&header, 54) as usize, u16_at(&header, 56) as usize);
    if phentsize < 56 || phnum > 256 {
        return None;
    }
    let phdrs = read(phoff, phentsize * phnum)?;
    for ph in phdrs.chunks_exact(phentsize) {
        // PT_NOTE, at most a page of notes.
        let (p_type, offset, size) = (u32_at(ph, 0), u64_at(ph, 8), u64_at(ph, 32));
        if p_type != 4 || size > 4096 {
            continue;
        }
        let notes = read(offset, size as usize)?;
        let mut at = 0;
        while at + 12 <= notes.len() {
            let (namesz, descsz, kind) = (u32_at(&notes, at) as usize, u32_at(&notes, at + 4) as usize, u32_at(&notes, at + 8));
            let name_at = at + 12;
            let desc_at = name_at + namesz.div_ceil(4) * 4;
            let end = desc_at + descsz.div_ceil(4) * 4;
            if end > notes.len() {
                break;
            }
            // NT_GNU_BUILD_ID, owner "GNU".
            if kind == 3 && notes[name_at..name_at + namesz] == *b"GNU\0" {
                let mut id = [0u8; 20];
                let n = descsz.min(20);
                id[..n].copy_from_slice(&notes[desc_at..desc_at + n]);
                return Some(id);
            }
            at = end;
        }
    }
    None
}

/// `ips` as `struct bpf_stack_build_id` records.
pub fn frames(ips: &[u64]) -> Vec<u8> {
    let maps = mappings();
    let mut out = Vec::with_capacity(ips.len() * bpftime_maps::BUILD_ID_FRAME);
    for &ip in ips {
        let found = maps.iter().find(|m| (m.start..m.end).contains(&ip)).and_then(|m| Some((build_id(m)?, m.offset + ip - m.start)));
        match found {
            Some((id, offset)) => {
                out.extend_from_slice(&VALID.to_le_bytes());
                out.extend_from_slice(&id);
                out.extend_from_slice(&offset.to_le_bytes());
            }
            None => {
                out.extend_from_slice(&IP.to_le_bytes());
                out.extend_from_slice(&[0; 20]);
                out.extend_from_slice(&ip.to_le_bytes());
            }
        }
    }
    out
}
