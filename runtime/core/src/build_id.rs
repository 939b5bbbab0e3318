//! Build-id stack frames (`bpf_get_stack(..., BPF_F_USER_BUILD_ID)` and `BPF_F_STACK_BUILD_ID`
//! stack maps): each address as the build id of the file mapped there and the offset in that
//! file, as the kernel gives them, or the address alone where no file with a build id is
//! mapped there (status `BPF_STACK_BUILD_ID_IP`, also the kernel's fallback).

use object::read::elf::ElfFile64;
use object::{Endianness, Object};
use std::collections::HashMap;
use std::sync::{Mutex, OnceLock};

/// `BPF_STACK_BUILD_ID_VALID`: the record holds a build id and a file offset.
const VALID: i32 = 1;
/// `BPF_STACK_BUILD_ID_IP`: the record holds the address only.
const IP: i32 = 2;

/// A file-backed mapping of this process: where it starts, its file offset, its file.
#[derive(Clone)]
struct Mapping {
    start: u64,
    offset: u64,
    path: String,
}

/// The file-backed mappings of this process holding `ips` (None for an address in none).
fn mappings_of(ips: &[u64]) -> Vec<Option<Mapping>> {
    let maps = std::fs::read_to_string("/proc/self/maps").unwrap_or_default();
    let parsed: Vec<(u64, u64, Mapping)> = maps
        .lines()
        .filter_map(|l| {
            // start-end perms offset dev inode path
            let mut f = l.split_ascii_whitespace();
            let (range, _perms, offset) = (f.next()?, f.next()?, f.next()?);
            let (_dev, _inode, path) = (f.next()?, f.next()?, f.next()?);
            let (start, end) = range.split_once('-')?;
            let (start, end) = (u64::from_str_radix(start, 16).ok()?, u64::from_str_radix(end, 16).ok()?);
            let offset = u64::from_str_radix(offset, 16).ok()?;
            path.starts_with('/').then(|| (start, end, Mapping { start, offset, path: path.to_string() }))
        })
        .collect();
    ips.iter().map(|&ip| parsed.iter().find(|(s, e, _)| (*s..*e).contains(&ip)).map(|(_, _, m)| m.clone())).collect()
}

/// The GNU build id of the ELF file at `path` (up to 20 bytes, as the kernel keeps), read once
/// per file. None when it has none, or when another thread is reading one right now (a probe
/// never waits).
fn build_id(path: &str) -> Option<[u8; 20]> {
    static KNOWN: OnceLock<Mutex<HashMap<String, Option<[u8; 20]>>>> = OnceLock::new();
    let mut known = KNOWN.get_or_init(Default::default).try_lock().ok()?;
    if let Some(id) = known.get(path) {
        return *id;
    }
    let id = std::fs::read(path).ok().and_then(|data| {
        let elf = ElfFile64::<Endianness>::parse(data.as_slice()).ok()?;
        let note = elf.build_id().ok()??;
        let mut id = [0u8; 20];
        let n = note.len().min(20);
        id[..n].copy_from_slice(&note[..n]);
        Some(id)
    });
    known.insert(path.to_string(), id);
    id
}

/// `ips` as `struct bpf_stack_build_id` records.
pub fn frames(ips: &[u64]) -> Vec<u8> {
    let mut out = Vec::with_capacity(ips.len() * bpftime_maps::BUILD_ID_FRAME);
    for (&ip, mapping) in ips.iter().zip(mappings_of(ips)) {
        match mapping.and_then(|m| Some((build_id(&m.path)?, m.offset + ip - m.start))) {
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
