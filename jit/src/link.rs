//! A linker for the objects [`compile_object`](crate::compile_object) writes: their code is
//! laid out once, with every relocation resolved relative to an import table placed right
//! after it, so the result ([`Image`]) can be mapped at any address by any process, which then
//! only fills the table.
//!
//! Handled: x86-64 ELF relocatable objects whose code reaches its own functions and its import
//! slots (data objects, see [`Import`]) PC-relatively (`R_X86_64_PC32`, `PLT32`) or through the
//! GOT (`GOTPCREL`, relaxed to a PC-relative `lea`), which is all Cranelift's object backend
//! emits for our code. The slots are not copied: each becomes a
//! word of the table, by name. Relocations in data sections (the AOT object's table of
//! addresses for the system linker) concern nothing placed here and are left alone.

use crate::imports::Import;
use crate::mapping::{page_size, CodeMapping};
use crate::{function_symbol, EntryFn, JitError, JitProgram};
use bpftime_vm::Program;
use object::elf;
use object::read::elf::ElfFile64;
use object::{Object, ObjectSection, ObjectSymbol, RelocationFlags, RelocationTarget, SectionKind, SymbolSection};
use std::collections::HashMap;
use std::sync::Arc;

/// Linked code: position-independent, with its import table at `table_offset`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Image {
    /// The code, relocated.
    pub code: Vec<u8>,
    /// Where the import table starts (a multiple of the page size, at least `code.len()`).
    pub table_offset: usize,
    /// The import slot symbol ([`Import::symbol`]) of each word of the table.
    pub table: Vec<String>,
    /// The functions defined, by symbol: where each lies in `code`.
    pub functions: HashMap<String, FunctionSpan>,
}

/// Where one function's machine code lies in an [`Image`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct FunctionSpan {
    /// Offset of its first byte.
    pub at: usize,
    /// Its size in bytes (the symbol's, without the padding after it).
    pub size: usize,
}

fn load_err(msg: impl std::fmt::Display) -> JitError {
    JitError::Load(msg.to_string())
}

/// Links an object written by [`compile_object`](crate::compile_object).
pub fn link(object: &[u8]) -> Result<Image, JitError> {
    let file = ElfFile64::<object::Endianness>::parse(object).map_err(load_err)?;
    if file.architecture() != object::Architecture::X86_64 {
        return Err(load_err(format!("cannot link {:?} code", file.architecture())));
    }
    // Lay out the code sections one after the other.
    let mut code = Vec::new();
    let mut section_at = HashMap::new();
    for s in file.sections().filter(|s| s.kind() == SectionKind::Text && s.size() > 0) {
        let align = usize::try_from(s.align()).ok().filter(|&a| a <= 4096).ok_or_else(|| load_err("code section aligned beyond a page"))?.max(1);
        code.resize(code.len().next_multiple_of(align), 0xcc);
        section_at.insert(s.index(), code.len());
        code.extend_from_slice(s.data().map_err(load_err)?);
    }
    let table_offset = code.len().max(1).next_multiple_of(page_size());
    let mut functions = HashMap::new();
    let mut table: Vec<String> = Vec::new();
    let mut symbol_at = HashMap::new();
    for sym in file.symbols() {
        let name = sym.name().map_err(load_err)?.to_string();
        let SymbolSection::Section(index) = sym.section() else { continue };
        if let Some(&base) = section_at.get(&index) {
            let at = usize::try_from(sym.address())
                .ok()
                .and_then(|a| base.checked_add(a))
                .filter(|&at| at < code.len() || sym.kind() != object::SymbolKind::Text)
                .ok_or_else(|| load_err(format!("symbol `{name}` lies outside the code")))?;
            symbol_at.insert(sym.index(), at);
            if sym.kind() == object::SymbolKind::Text {
                let size = usize::try_from(sym.size())
                    .ok()
                    .filter(|&n| n <= code.len() - at)
                    .ok_or_else(|| load_err(format!("function `{name}` runs past the code")))?;
                functions.insert(name, FunctionSpan { at, size });
            }
        } else if sym.kind() == object::SymbolKind::Data
            && sym.size() == 8
            && file.section_by_index(index).is_ok_and(|s| s.kind() == SectionKind::UninitializedData)
        {
            // An import slot: a word of the table.
            symbol_at.insert(sym.index(), table_offset + table.len() * 8);
            table.push(name);
        }
    }
    for s in file.sections() {
        let Some(&base) = section_at.get(&s.index()) else { continue };
        for (offset, r) in s.relocations() {
            let RelocationFlags::Elf { r_type } = r.flags() else { return Err(load_err("not an ELF relocation")) };
            let RelocationTarget::Symbol(sym) = r.target() else { return Err(load_err("relocation against no symbol")) };
            let place = usize::try_from(offset).ok().and_then(|o| base.checked_add(o)).ok_or_else(|| load_err("relocation outside the code"))?;
            let value = match (r_type, symbol_at.get(&sym)) {
                (elf::R_X86_64_PC32 | elf::R_X86_64_PLT32, Some(&at)) => (at as i64).checked_add(r.addend()).and_then(|v| v.checked_sub(place as i64)),
                // Cranelift takes a symbol's address through the GOT in position-independent
                // code: `mov reg, [rip + GOT entry]`. The slot's address is a constant distance
                // away, so the load becomes `lea reg, [rip + slot]` (the relaxation system
                // linkers apply to `GOTPCRELX`), after checking those are the bytes.
                (elf::R_X86_64_GOTPCREL | elf::R_X86_64_GOTPCRELX | elf::R_X86_64_REX_GOTPCRELX, Some(&at)) if at >= table_offset => {
                    match place.checked_sub(3).and_then(|start| code.get_mut(start..place)) {
                        Some([rex, opcode @ 0x8b, modrm]) if *rex & 0xf8 == 0x48 && *modrm & 0xc7 == 0x05 => *opcode = 0x8d,
                        _ => return Err(load_err(format!("GOT relocation at {place:#x} is not on a 64-bit `mov` from memory"))),
                    }
                    (at as i64).checked_add(r.addend()).and_then(|v| v.checked_sub(place as i64))
                }
                (kind, _) => return Err(load_err(format!("unsupported relocation {kind} at {place:#x}"))),
            };
            let value = value.and_then(|v| i32::try_from(v).ok()).ok_or_else(|| load_err("relocation out of range"))?;
            code.get_mut(place..place.saturating_add(4)).ok_or_else(|| load_err("relocation outside the code"))?.copy_from_slice(&value.to_le_bytes());
        }
    }
    Ok(Image { code, table_offset, table, functions })
}

impl Image {
    /// This process's value of each table slot, for program `prefix` (`program`'s code).
    /// Imports of other programs of the same object are left null (their code is not run).
    pub(crate) fn table_values(&self, program: &Program, prefix: &str) -> Result<Vec<u64>, JitError> {
        self.table
            .iter()
            .map(|name| match Import::parse(name, prefix) {
                Some(import) => import.value(program).ok_or_else(|| load_err(format!("`{name}`: the program has no such value"))),
                // Another program's import (its code is not run): null.
                None if name.contains('.') && !name.starts_with(&format!("{prefix}.")) => Ok(0),
                None => Err(load_err(format!("unknown import `{name}`"))),
            })
            .collect()
    }

    /// The entries of `program`'s functions, compiled under `prefix`, in `mapping`.
    pub(crate) fn entries(&self, program: &Program, prefix: &str, mapping: &CodeMapping) -> Result<Vec<EntryFn>, JitError> {
        (0..program.functions().len())
            .map(|i| {
                let name = function_symbol(prefix, i);
                let at = self
                    .functions
                    .get(&name)
                    .map(|f| f.at)
                    .filter(|&at| at < mapping.code_len())
                    .ok_or_else(|| load_err(format!("the code has no function `{name}`")))?;
                // SAFETY: `name` was compiled by `define_program` with the entry signature
                // (seven i64 parameters, one i64 result, the C calling convention), and the
                // mapping holds it, linked, at `at`.
                Ok(unsafe { std::mem::transmute::<*const u8, EntryFn>(mapping.code_at(at)) })
            })
            .collect()
    }

    /// Sizes of `program`'s functions compiled under `prefix`, entry first.
    fn function_sizes(&self, program: &Program, prefix: &str) -> Vec<usize> {
        (0..program.functions().len()).map(|i| self.functions.get(&function_symbol(prefix, i)).map_or(0, |f| f.size)).collect()
    }

    /// Maps a copy of this code into this process to run `program` (compiled under `prefix`;
    /// an object's other programs stay unrun).
    pub fn load(&self, program: Arc<Program>, prefix: &str) -> Result<JitProgram, JitError> {
        let values = self.table_values(&program, prefix)?;
        let mapping = CodeMapping::from_bytes(&self.code, self.table_offset, &values).map_err(load_err)?;
        self.finish(program, prefix, Arc::new(mapping))
    }

    pub(crate) fn finish(&self, program: Arc<Program>, prefix: &str, mapping: Arc<CodeMapping>) -> Result<JitProgram, JitError> {
        let functions = self.entries(&program, prefix, &mapping)?;
        let sizes = self.function_sizes(&program, prefix);
        Ok(JitProgram::from_mapping(program, mapping, functions, sizes))
    }
}
