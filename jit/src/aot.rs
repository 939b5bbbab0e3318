//! Ahead-of-time objects (`bpftime aot compile`): a relocatable object holding the machine
//! code of an eBPF object's programs, for machines (or processes) where nothing may be
//! compiled at run time.
//!
//! Besides the code (one global function per program, named after it; see
//! [`compile_object`](crate::compile_object) for its imports), it carries two read-only data
//! objects: `bpftime_aot_object`, the eBPF object itself (its maps are created from it as for
//! any object), and `bpftime_aot_index`, each program's code-cache key and verification record
//! (see [`cache`](crate::cache)). A loader uses a program's code only where the key it computes
//! for the program it stored equals the one recorded: same build, same CPU features, same
//! bytecode and maps. Each data object is a little-endian `u64` length, then the bytes.

use crate::link::{link, Image};
use crate::{compile_object_with_data, JitError, JitOptions, JitProgram};
use bpftime_vm::Program;
use object::read::elf::ElfFile64;
use object::{Object, ObjectSection, ObjectSymbol};
use std::sync::Arc;

const OBJECT_SYMBOL: &str = "bpftime_aot_object";
const INDEX_SYMBOL: &str = "bpftime_aot_index";

/// One program of an AOT object.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AotEntry {
    /// Its name (and the symbol of its code).
    pub name: String,
    /// The code-cache key it was compiled for.
    pub key: Vec<u8>,
    /// The verifier's record ([`Program::record`]).
    pub record: Vec<u8>,
}

/// A parsed, linked AOT object.
#[derive(Clone, Debug)]
pub struct AotObject {
    /// Its programs.
    pub entries: Vec<AotEntry>,
    /// The eBPF object it was compiled from.
    pub bpf_object: Vec<u8>,
    /// All programs' code, linked.
    pub image: Image,
}

fn framed(bytes: &[u8]) -> Vec<u8> {
    let mut out = (bytes.len() as u64).to_le_bytes().to_vec();
    out.extend_from_slice(bytes);
    out
}

fn unframed(bytes: &[u8]) -> Option<&[u8]> {
    let (len, rest) = bytes.split_first_chunk::<8>()?;
    rest.get(..usize::try_from(u64::from_le_bytes(*len)).ok()?)
}

/// Writes an AOT object: `programs` (name, verified program, key, record) compiled from
/// `bpf_object`.
pub fn write(programs: &[(&str, &Program, &[u8], &[u8])], bpf_object: &[u8], opts: JitOptions) -> Result<Vec<u8>, JitError> {
    let mut index = (programs.len() as u64).to_le_bytes().to_vec();
    for (name, _, key, record) in programs {
        for part in [name.as_bytes(), key, record] {
            index.extend_from_slice(&framed(part));
        }
    }
    let code: Vec<(&str, &Program)> = programs.iter().map(|(n, p, _, _)| (*n, *p)).collect();
    compile_object_with_data(&code, &[(OBJECT_SYMBOL, &framed(bpf_object)), (INDEX_SYMBOL, &framed(&index))], opts)
}

/// The next framed part of `rest`, consumed.
fn take<'a>(rest: &mut &'a [u8]) -> Option<&'a [u8]> {
    let part = unframed(rest)?;
    *rest = &rest[8 + part.len()..];
    Some(part)
}

/// The bytes of data object `name` in `file`.
fn data_object<'a>(file: &ElfFile64<'a, object::Endianness>, name: &str) -> Option<&'a [u8]> {
    let sym = file.symbols().find(|s| s.name() == Ok(name))?;
    let section = file.section_by_index(sym.section_index()?).ok()?;
    let data = section.data().ok()?;
    let start = usize::try_from(sym.address().checked_sub(section.address())?).ok()?;
    unframed(data.get(start..)?)
}

/// Parses and links an AOT object; `Ok(None)` when `bytes` is not one (another ELF file).
pub fn read(bytes: &[u8]) -> Result<Option<AotObject>, JitError> {
    let Ok(file) = ElfFile64::<object::Endianness>::parse(bytes) else { return Ok(None) };
    let (Some(bpf_object), Some(index)) = (data_object(&file, OBJECT_SYMBOL), data_object(&file, INDEX_SYMBOL)) else { return Ok(None) };
    let malformed = || JitError::Load("malformed AOT index".into());
    let (count, mut rest) = index.split_first_chunk::<8>().ok_or_else(malformed)?;
    let mut entries = vec![];
    for _ in 0..u64::from_le_bytes(*count) {
        let name = String::from_utf8(take(&mut rest).ok_or_else(malformed)?.to_vec()).map_err(|_| malformed())?;
        let key = take(&mut rest).ok_or_else(malformed)?.to_vec();
        let record = take(&mut rest).ok_or_else(malformed)?.to_vec();
        entries.push(AotEntry { name, key, record });
    }
    Ok(Some(AotObject { entries, bpf_object: bpf_object.to_vec(), image: link(bytes)? }))
}

impl AotObject {
    /// The entry of program `name`.
    pub fn entry(&self, name: &str) -> Option<&AotEntry> {
        self.entries.iter().find(|e| e.name == name)
    }

    /// Maps `entry`'s code to run `program` (rebuilt from its record for this process).
    pub fn load(&self, entry: &AotEntry, program: Arc<Program>) -> Result<JitProgram, JitError> {
        self.image.load(program, &entry.name)
    }
}
