//! # bpftime-object: eBPF ELF objects as clang builds them
//!
//! What it is: a pure parser (like aya-obj: bytes in, data out, no syscalls) that finds the
//! programs of a `clang -target bpf` object and links each with the `.text` functions it calls,
//! applying the bpf-to-bpf call relocations (`R_BPF_64_32`). References to data (`R_BPF_64_64`
//! on `lddw`: maps, `.rodata`, `.data`, `.bss`) are reported as [`DataReloc`]s for the
//! runtime to resolve.
//!
//! What it is not: it does not create maps, verify or run anything.

use bpftime_vm::insn::{call_src, parse_bytecode, RawInsn, INSN_SIZE};
use object::elf::{R_BPF_64_32, R_BPF_64_64};
use object::{Object as _, ObjectSection, ObjectSymbol, RelocationFlags, RelocationTarget, SectionIndex, SymbolKind};
use std::collections::HashMap;

/// Why an object could not be read.
#[derive(Debug, thiserror::Error)]
pub enum ObjectError {
    #[error("not an ELF object: {0}")]
    Elf(String),
    #[error("ELF machine is not BPF (e_machine {0})")]
    NotBpf(u16),
    #[error("section `{section}`: {msg}")]
    Section { section: String, msg: String },
    #[error("program `{program}` insn {insn}: {msg}")]
    Reloc { program: String, insn: usize, msg: String },
    #[error("no program named `{0}` (programs: {1})")]
    NoSuchProgram(String, String),
    #[error("the object has no programs")]
    NoPrograms,
}

/// A reference from an `lddw` to data the runtime must supply (a map or a global section).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DataReloc {
    /// Index of the `lddw` in the linked program.
    pub insn: usize,
    /// Name of the symbol referred to (a map name, or a section name for section symbols).
    pub symbol: String,
    /// Section the symbol lives in (`.maps`, `maps`, `.rodata`, `.data`, `.bss`, ...).
    pub section: String,
    /// Byte offset of the symbol inside its section.
    pub offset: u64,
}

/// A program: a global function in an executable section, linked with the `.text` code it calls.
#[derive(Clone, Debug)]
pub struct ObjProgram {
    /// Function name.
    pub name: String,
    /// Section name (`uprobe/...`, `socket`, ...): it gives the program type and attach point.
    pub section: String,
    /// The linked instructions: the function, then `.text` when it calls into it.
    pub insns: Vec<RawInsn>,
    /// Data references left for the runtime.
    pub data_relocs: Vec<DataReloc>,
}

/// A parsed object.
#[derive(Clone, Debug, Default)]
pub struct Object {
    /// Programs in section order.
    pub programs: Vec<ObjProgram>,
    /// The `license` section's text, if any.
    pub license: Option<String>,
}

impl Object {
    /// Whether `bytes` start like an ELF file.
    pub fn is_elf(bytes: &[u8]) -> bool {
        bytes.starts_with(b"\x7fELF")
    }

    /// Parses an object.
    pub fn parse(bytes: &[u8]) -> Result<Object, ObjectError> {
        let file = object::File::parse(bytes).map_err(|e| ObjectError::Elf(e.to_string()))?;
        if let object::File::Elf64(elf) = &file {
            let machine = elf.elf_header().e_machine.get(elf.endian());
            if machine != object::elf::EM_BPF {
                return Err(ObjectError::NotBpf(machine.0));
            }
        } else {
            return Err(ObjectError::Elf("not a 64-bit little-endian ELF".into()));
        }
        let mut parser = Parser::new(&file)?;
        let mut obj = Object::default();
        if let Some(s) = file.section_by_name("license") {
            let data = s.data().map_err(|e| ObjectError::Elf(e.to_string()))?;
            obj.license = Some(String::from_utf8_lossy(data).trim_end_matches('\0').to_string());
        }
        obj.programs = parser.programs()?;
        Ok(obj)
    }

    /// The program named `name` (function or section name), or the only program when `None`.
    pub fn program(&self, name: Option<&str>) -> Result<&ObjProgram, ObjectError> {
        let names = || self.programs.iter().map(|p| format!("{} ({})", p.name, p.section)).collect::<Vec<_>>().join(", ");
        match name {
            Some(n) => self
                .programs
                .iter()
                .find(|p| p.name == n || p.section == n)
                .ok_or_else(|| ObjectError::NoSuchProgram(n.to_string(), names())),
            None => match self.programs.as_slice() {
                [] => Err(ObjectError::NoPrograms),
                [p] => Ok(p),
                _ => Err(ObjectError::NoSuchProgram("(none given)".into(), names())),
            },
        }
    }
}

/// An executable section's code and its relocations by instruction index.
struct CodeSection {
    name: String,
    insns: Vec<RawInsn>,
    relocs: HashMap<usize, Reloc>,
}

#[derive(Clone, Debug)]
struct Reloc {
    r_type: u32,
    symbol: String,
    symbol_section: Option<SectionIndex>,
    symbol_section_name: String,
    symbol_value: u64,
}

struct Parser<'d, 'f> {
    file: &'f object::File<'d>,
    sections: HashMap<SectionIndex, CodeSection>,
    text: Option<SectionIndex>,
}

fn section_err(section: &str, msg: impl ToString) -> ObjectError {
    ObjectError::Section { section: section.to_string(), msg: msg.to_string() }
}

impl<'d, 'f> Parser<'d, 'f> {
    fn new(file: &'f object::File<'d>) -> Result<Self, ObjectError> {
        let mut sections = HashMap::new();
        let mut text = None;
        for s in file.sections() {
            if s.kind() != object::SectionKind::Text || s.size() == 0 {
                continue;
            }
            let name = s.name().map_err(|e| ObjectError::Elf(e.to_string()))?.to_string();
            let data = s.data().map_err(|e| section_err(&name, e))?;
            let insns = parse_bytecode(data).map_err(|e| section_err(&name, e))?;
            let mut relocs = HashMap::new();
            for (off, r) in s.relocations() {
                let r_type = match r.flags() {
                    RelocationFlags::Elf { r_type } => r_type.0,
                    _ => continue,
                };
                let RelocationTarget::Symbol(si) = r.target() else {
                    return Err(section_err(&name, format!("relocation at {off:#x} has no symbol")));
                };
                let sym = file.symbol_by_index(si).map_err(|e| section_err(&name, e))?;
                let symbol_section = sym.section_index();
                let symbol_section_name = symbol_section
                    .and_then(|i| file.section_by_index(i).ok())
                    .and_then(|s| s.name().ok().map(str::to_string))
                    .unwrap_or_default();
                let symbol = match sym.name() {
                    Ok(n) if !n.is_empty() => n.to_string(),
                    _ => symbol_section_name.clone(),
                };
                relocs.insert(
                    off as usize / INSN_SIZE,
                    Reloc { r_type, symbol, symbol_section, symbol_section_name, symbol_value: sym.address() },
                );
            }
            if name == ".text" {
                text = Some(s.index());
            }
            sections.insert(s.index(), CodeSection { name, insns, relocs });
        }
        Ok(Parser { file, sections, text })
    }

    /// Every global function outside `.text` is a program.
    fn programs(&mut self) -> Result<Vec<ObjProgram>, ObjectError> {
        let mut found: Vec<(SectionIndex, u64, u64, String)> = self
            .file
            .symbols()
            .filter(|s| s.kind() == SymbolKind::Text && s.is_global())
            .filter_map(|s| {
                let idx = s.section_index()?;
                (Some(idx) != self.text && self.sections.contains_key(&idx))
                    .then(|| (idx, s.address(), s.size(), s.name().unwrap_or_default().to_string()))
            })
            .collect();
        // Old objects (or `-fno-` builds) may lack function symbols: a section is then one program.
        for (idx, sec) in &self.sections {
            if Some(*idx) != self.text && !found.iter().any(|f| f.0 == *idx) {
                found.push((*idx, 0, (sec.insns.len() * INSN_SIZE) as u64, sec.name.clone()));
            }
        }
        found.sort_by_key(|f| (f.0 .0, f.1));
        found.into_iter().map(|(idx, start, size, name)| self.link(idx, start, size, name)).collect()
    }

    fn link(&self, idx: SectionIndex, start: u64, size: u64, name: String) -> Result<ObjProgram, ObjectError> {
        let sec = &self.sections[&idx];
        let first = start as usize / INSN_SIZE;
        let count = if size == 0 { sec.insns.len() - first } else { size as usize / INSN_SIZE };
        let end = first + count;
        if end > sec.insns.len() {
            return Err(section_err(&sec.name, format!("function `{name}` extends past the section")));
        }
        let mut insns = sec.insns[first..end].to_vec();
        let mut data_relocs = Vec::new();
        let text = self.text.map(|t| &self.sections[&t]);
        let mut text_base = None;
        // Relocate the program's own instructions, then (if it calls into .text) all of .text.
        let mut pieces = vec![(sec, first, 0usize, count)];
        let mut k = 0;
        while k < pieces.len() {
            let (piece, from, base, len) = pieces[k];
            for i in 0..len {
                let Some(r) = piece.relocs.get(&(from + i)) else { continue };
                let at = base + i;
                let rerr = |msg: String| ObjectError::Reloc { program: name.clone(), insn: at, msg };
                match r.r_type {
                    t if t == R_BPF_64_32.0 => {
                        let insn = insns[at];
                        if insn.opc != 0x85 || insn.src != call_src::LOCAL {
                            return Err(rerr(format!("R_BPF_64_32 on a non-call instruction {insn:?}")));
                        }
                        if r.symbol_section != self.text || text.is_none() {
                            return Err(rerr(format!("call to `{}` outside .text is not supported", r.symbol)));
                        }
                        let text_sec = text.expect("checked above");
                        let base_idx = *text_base.get_or_insert_with(|| {
                            let b = insns.len();
                            insns.extend_from_slice(&text_sec.insns);
                            pieces.push((text_sec, 0, b, text_sec.insns.len()));
                            b
                        });
                        let target = (r.symbol_value / INSN_SIZE as u64) as i64 + insn.imm as i64 + 1;
                        if target < 0 || target as usize >= text_sec.insns.len() {
                            return Err(rerr(format!("call target {target} is outside .text")));
                        }
                        insns[at].imm = (base_idx as i64 + target - at as i64 - 1) as i32;
                    }
                    t if t == R_BPF_64_64.0 => {
                        if insns[at].opc != 0x18 {
                            return Err(rerr("R_BPF_64_64 on a non-lddw instruction".into()));
                        }
                        data_relocs.push(DataReloc {
                            insn: at,
                            symbol: r.symbol.clone(),
                            section: r.symbol_section_name.clone(),
                            offset: r.symbol_value,
                        });
                    }
                    other => return Err(rerr(format!("unsupported relocation type {other}"))),
                }
            }
            k += 1;
        }
        Ok(ObjProgram { name, section: sec.name.clone(), insns, data_relocs })
    }
}
