//! Ahead-of-time objects (`bpftime aot compile`): a relocatable object holding the machine
//! code of an eBPF object's programs, for machines (or processes) where nothing may be
//! compiled at run time.
//!
//! Besides the code (one local function per program, named after it; see
//! [`compile_object`](crate::compile_object) for its import slots), it carries three read-only
//! data objects:
//! - `bpftime_aot_object`: the eBPF object itself (its maps are created from it as for any
//!   object);
//! - `bpftime_aot_index`: for each program its name, code-cache key, verification record (see
//!   [`cache`](crate::cache)) and the symbols of its import slots, in slot order;
//! - `bpftime_aot_links`: for each program, in index order, the number of its functions, their
//!   addresses (entry first), the number of its slots and their addresses: filled in by the
//!   system linker, so that a C program linked with the object (and `libbpftime_aot.a`) finds
//!   its code and slots without a symbol table.
//!
//! A loader uses a program's code only where the key it computes for the program it stored
//! equals the one recorded: same build, same CPU features, same bytecode and maps. The first
//! two data objects are a little-endian `u64` length, then the bytes; the links are `u64`s.

use crate::link::{link, Image};
use crate::{emit, object_module, JitError, JitOptions, JitProgram};
use bpftime_vm::Program;
use cranelift_module::{DataDescription, Linkage, Module};
use object::read::elf::ElfFile64;
use object::{Object, ObjectSection, ObjectSymbol};
use std::sync::Arc;

const OBJECT_SYMBOL: &str = "bpftime_aot_object";
const INDEX_SYMBOL: &str = "bpftime_aot_index";
const LINKS_SYMBOL: &str = "bpftime_aot_links";

/// One program of an AOT object.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AotEntry {
    /// Its name (and the symbol of its code).
    pub name: String,
    /// The code-cache key it was compiled for.
    pub key: Vec<u8>,
    /// The verifier's record ([`Program::record`]).
    pub record: Vec<u8>,
    /// The symbols of its import slots ([`Import::symbol`](crate::Import::symbol)), in the order of the links table.
    pub slots: Vec<String>,
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
    let code: Vec<(&str, &Program)> = programs.iter().map(|(n, p, _, _)| (*n, *p)).collect();
    let (mut module, defined) = object_module(&code, opts)?;
    let mut index = (programs.len() as u64).to_le_bytes().to_vec();
    for ((name, _, key, record), d) in programs.iter().zip(&defined) {
        let slots: Vec<String> = d.slots.iter().map(|(import, _)| import.symbol(name)).collect();
        for part in [name.as_bytes(), key, record, slots.join("\n").as_bytes()] {
            index.extend_from_slice(&framed(part));
        }
    }
    let module_err = |e: cranelift_module::ModuleError| JitError::Load(e.to_string());
    for (name, bytes) in [(OBJECT_SYMBOL, framed(bpf_object)), (INDEX_SYMBOL, framed(&index))] {
        let id = module.declare_data(name, Linkage::Export, false, false).map_err(module_err)?;
        let mut desc = DataDescription::new();
        desc.define(bytes.into_boxed_slice());
        module.define_data(id, &desc).map_err(module_err)?;
    }
    // The links table: counts as constants, addresses as relocations.
    let mut words: Vec<u64> = vec![];
    let (mut functions, mut slots) = (vec![], vec![]);
    for d in &defined {
        words.push(d.ids.len() as u64);
        for &id in &d.ids {
            functions.push((words.len() * 8, id));
            words.push(0);
        }
        words.push(d.slots.len() as u64);
        for &(_, id) in &d.slots {
            slots.push((words.len() * 8, id));
            words.push(0);
        }
    }
    let mut desc = DataDescription::new();
    desc.define(words.iter().flat_map(|w| w.to_le_bytes()).collect());
    desc.set_align(8);
    for (offset, id) in functions {
        let f = module.declare_func_in_data(id, &mut desc);
        desc.write_function_addr(offset as u32, f);
    }
    for (offset, id) in slots {
        let gv = module.declare_data_in_data(id, &mut desc);
        desc.write_data_addr(offset as u32, gv, 0);
    }
    let id = module.declare_data(LINKS_SYMBOL, Linkage::Export, false, false).map_err(module_err)?;
    module.define_data(id, &desc).map_err(module_err)?;
    emit(module)
}

/// The entries of an index (`bpftime_aot_index`'s bytes, unframed).
pub fn parse_index(index: &[u8]) -> Result<Vec<AotEntry>, JitError> {
    let malformed = || JitError::Load("malformed AOT index".into());
    let (count, mut rest) = index.split_first_chunk::<8>().ok_or_else(malformed)?;
    let mut entries = vec![];
    for _ in 0..u64::from_le_bytes(*count) {
        let mut text = || String::from_utf8(take(&mut rest).ok_or_else(malformed)?.to_vec()).map_err(|_| malformed());
        let name = text()?;
        let key = take(&mut rest).ok_or_else(malformed)?.to_vec();
        let record = take(&mut rest).ok_or_else(malformed)?.to_vec();
        let slots = take(&mut rest).ok_or_else(malformed)?;
        let slots = std::str::from_utf8(slots).map_err(|_| malformed())?.split('\n').filter(|s| !s.is_empty()).map(str::to_string).collect();
        entries.push(AotEntry { name, key, record, slots });
    }
    Ok(entries)
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
    Ok(Some(AotObject { entries: parse_index(index)?, bpf_object: bpf_object.to_vec(), image: link(bytes)? }))
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

impl AotEntry {
    /// Runs `program` (rebuilt from this entry's record) with code the system linker placed in
    /// this process: `functions` are the addresses of its functions, entry first, and `slots`
    /// those of its import slots in [`AotEntry::slots`] order, as the object's links table gives
    /// them. Fills every slot with this process's value.
    ///
    /// # Safety
    /// `functions` and `slots` must be the addresses the links table of the AOT object that
    /// holds this entry gives for it, linked into this process: code compiled for `program` by
    /// [`write`] from the same key, and writable 8-byte slots that no other thread reads while
    /// they are filled. Its code must not run before this returns `Ok`.
    pub unsafe fn bind(&self, program: Arc<Program>, functions: &[*const u8], slots: &[*mut u64]) -> Result<JitProgram, JitError> {
        let err = |m: String| JitError::Load(format!("program `{}`: {m}", self.name));
        if functions.len() != program.functions().len() || functions.is_empty() {
            return Err(err(format!("{} functions linked, {} in the program", functions.len(), program.functions().len())));
        }
        if slots.len() != self.slots.len() {
            return Err(err(format!("{} slots linked, {} in the index", slots.len(), self.slots.len())));
        }
        let mut values = Vec::with_capacity(slots.len());
        for name in &self.slots {
            let import = crate::Import::parse(name, &self.name).ok_or_else(|| err(format!("unknown import slot `{name}`")))?;
            values.push(import.value(&program).ok_or_else(|| err(format!("`{name}`: the program has no such value")))?);
        }
        for (&slot, value) in slots.iter().zip(values) {
            // SAFETY: per the contract, a writable 8-byte slot of this program nobody reads yet.
            unsafe { slot.write(value) };
        }
        let functions = functions
            .iter()
            // SAFETY: per the contract, code `write` compiled for this program's functions, in
            // order, with the entry signature (seven i64 parameters, one i64 result, C ABI).
            .map(|&f| unsafe { std::mem::transmute::<*const u8, crate::EntryFn>(f) })
            .collect();
        Ok(JitProgram::from_linked(program, functions))
    }
}
