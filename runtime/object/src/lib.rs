//! # bpftime-object: eBPF ELF objects as clang builds them
//!
//! What it is: a pure parser (like aya-obj: bytes in, data out, no syscalls) for
//! `clang -target bpf` objects. It finds
//! - the programs: global functions in executable sections, with their section name
//!   ([`ProgramKind`] reads the libbpf spellings), linked with the `.text` functions they call
//!   (`R_BPF_64_32`) or take the address of (callbacks);
//! - the maps: BTF-defined maps in `.maps` (type, sizes, flags, inner maps and static
//!   `.values` read from BTF), legacy `maps` definitions, and global data (`.rodata*`,
//!   `.data*`, `.bss*`) as single-entry arrays holding the section's bytes;
//! - the data references of each program (`R_BPF_64_64` on `lddw`), resolved to a map index
//!   and, for global data, an offset: [`DataReloc`];
//! - the CO-RE relocations in `.BTF.ext`, applied against a target BTF by
//!   [`Object::apply_core`].
//!
//! What it is not: it creates no maps and loads nothing (`bpftime-runtime` does).

pub mod btf;
mod btf_value;
pub mod core;

use bpftime_vm::insn::{call_src, parse_bytecode, RawInsn, INSN_SIZE};
use btf::{Btf, Kind};
use object::elf::{R_BPF_64_32, R_BPF_64_64};
use object::{Object as _, ObjectSection, ObjectSymbol, RelocationFlags, RelocationTarget, SectionIndex, SectionKind, SymbolKind};
use std::collections::HashMap;

pub use crate::core::{CoreError, CoreKind, CoreReloc, POISON_HELPER};

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
    #[error("map `{map}`: {msg}")]
    Map { map: String, msg: String },
    #[error("global `{name}`: {msg}")]
    Global { name: String, msg: String },
    #[error("no program named `{0}` (programs: {1})")]
    NoSuchProgram(String, String),
    #[error("the object has no programs")]
    NoPrograms,
    #[error(transparent)]
    Btf(#[from] btf::BtfError),
    #[error("program `{program}`: {source}")]
    Core { program: String, source: CoreError },
}

/// The most bytes a global data section may hold: it becomes one array map value, and the
/// kernel refuses values over `KMALLOC_MAX_SIZE` (4 MiB with 4 KiB pages) with `E2BIG`.
pub const MAX_GLOBAL_DATA: u64 = 4 << 20;

/// Where a map definition came from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum MapOrigin {
    /// A BTF-defined map in `.maps`.
    Btf,
    /// A `struct bpf_map_def` in the legacy `maps` section.
    Legacy,
    /// A global data section; the map is one array element holding the section's bytes.
    GlobalData,
}

/// A map the object defines.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MapDef {
    /// Name: the variable name, or the section name for global data.
    pub name: String,
    /// Kernel map type number.
    pub map_type: u32,
    /// Key size.
    pub key_size: u32,
    /// Value size.
    pub value_size: u32,
    /// Capacity.
    pub max_entries: u32,
    /// `map_flags`.
    pub flags: u32,
    /// `map_extra`.
    pub map_extra: u64,
    /// For map-in-map: the inner map's definition.
    pub inner: Option<Box<MapDef>>,
    /// Global data: the initial bytes of the single value.
    pub initial: Option<Vec<u8>>,
    /// Static `.values = { [i] = &sym }` of prog arrays and map-in-maps: (index, symbol).
    pub init_values: Vec<(u32, String)>,
    /// Where the definition came from.
    pub origin: MapOrigin,
    /// The key's and the value's type ids in the object's BTF (`__type(key, T)` and
    /// `__type(value, T)`), as libbpf gives them to the kernel.
    pub btf_types: Option<(u32, u32)>,
}

/// A reference from an `lddw` to a map or global data.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DataReloc {
    /// Index of the `lddw` in the linked program.
    pub insn: usize,
    /// Index in [`Object::maps`].
    pub map: usize,
    /// `None`: the map itself (`BPF_PSEUDO_MAP_FD`); `Some(off)`: the address of byte `off`
    /// of the map's value (`BPF_PSEUDO_MAP_VALUE`, global data).
    pub value_offset: Option<u64>,
}

/// What a program's section says about where it attaches (libbpf's section spellings).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ProgramKind {
    /// `uprobe/BINARY:FUNC[+OFF]` or `uretprobe/...` (`.s` sleepable variants too); `target`
    /// is the part after the slash, possibly empty. `ureplace/BINARY:FUNC` (bpftime's) is an
    /// entry probe whose program replaces the function: its result is the function's.
    Uprobe { retprobe: bool, target: String, replace: bool },
    /// `kprobe/FUNC` or `kretprobe/FUNC`.
    Kprobe { retprobe: bool, function: String },
    /// `usdt/BINARY:PROVIDER:NAME` (libbpf's `usdt.bpf.h` programs); all three empty for a bare
    /// `usdt` section (the loader says where).
    Usdt { binary: String, provider: String, name: String },
    /// `tracepoint/CATEGORY/NAME` or `tp/CATEGORY/NAME`.
    Tracepoint { category: String, name: String },
    /// `raw_tracepoint/NAME` or `raw_tp/NAME`.
    RawTracepoint { name: String },
    /// `socket`: a socket filter.
    SocketFilter,
    /// Anything else (the section name).
    Other(String),
}

impl ProgramKind {
    /// Reads a section name.
    pub fn from_section(section: &str) -> ProgramKind {
        let (head, rest) = match section.split_once('/') {
            Some((h, r)) => (h, r),
            None => (section, ""),
        };
        match head {
            "uprobe" | "uprobe.s" | "uprobe.multi" | "uprobe.multi.s" => ProgramKind::Uprobe { retprobe: false, target: rest.to_string(), replace: false },
            "uretprobe" | "uretprobe.s" | "uretprobe.multi" | "uretprobe.multi.s" => {
                ProgramKind::Uprobe { retprobe: true, target: rest.to_string(), replace: false }
            }
            "ureplace" => ProgramKind::Uprobe { retprobe: false, target: rest.to_string(), replace: true },
            "kprobe" | "ksyscall" => ProgramKind::Kprobe { retprobe: false, function: rest.to_string() },
            "kretprobe" | "kretsyscall" => ProgramKind::Kprobe { retprobe: true, function: rest.to_string() },
            "tracepoint" | "tp" => {
                let (c, n) = rest.split_once('/').unwrap_or((rest, ""));
                ProgramKind::Tracepoint { category: c.to_string(), name: n.to_string() }
            }
            "raw_tracepoint" | "raw_tp" => ProgramKind::RawTracepoint { name: rest.to_string() },
            "usdt" => {
                let mut parts = rest.rsplitn(3, ':');
                let (name, provider, binary) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""), parts.next().unwrap_or(""));
                ProgramKind::Usdt { binary: binary.to_string(), provider: provider.to_string(), name: name.to_string() }
            }
            "socket" => ProgramKind::SocketFilter,
            _ => ProgramKind::Other(section.to_string()),
        }
    }
}

/// A program: a global function in an executable section, linked with the `.text` code it uses.
#[derive(Clone, Debug)]
pub struct ObjProgram {
    /// Function name.
    pub name: String,
    /// Section name.
    pub section: String,
    /// What the section says about attaching.
    pub kind: ProgramKind,
    /// The linked instructions: the function, then `.text` when it uses it.
    pub insns: Vec<RawInsn>,
    /// Map and global-data references.
    pub data_relocs: Vec<DataReloc>,
    /// CO-RE relocations not yet applied.
    pub core_relocs: Vec<CoreReloc>,
    /// Instructions CO-RE relocation replaced with calls of [`core::POISON_HELPER`] (what
    /// they needed was not found), and why: the verifier refuses them where a run may reach
    /// them.
    pub core_poisoned: Vec<(usize, String)>,
    /// `.BTF.ext`'s `bpf_func_info` records of the linked functions (insn_off in instructions,
    /// type id), as libbpf gives them to the kernel.
    pub func_info: Vec<u8>,
    /// `.BTF.ext`'s `bpf_line_info` records of the linked instructions (insn_off in
    /// instructions, file name, line, line and column), as libbpf gives them to the kernel.
    pub line_info: Vec<u8>,
    /// Calls of kernel functions (`__ksym` externs), left as kfunc calls with no id: (call
    /// instruction, function name), for the loader to resolve.
    pub kfunc_calls: Vec<(usize, String)>,
}

/// Bytes of a `struct bpf_func_info` record (insn_off, type_id).
pub const FUNC_INFO_SIZE: usize = 8;
/// Bytes of a `struct bpf_line_info` record (insn_off, file_name_off, line_off, line_col).
pub const LINE_INFO_SIZE: usize = 16;

/// A parsed object.
#[derive(Clone, Debug, Default)]
pub struct Object {
    /// Programs in section order.
    pub programs: Vec<ObjProgram>,
    /// Maps: BTF and legacy definitions, then global data.
    pub maps: Vec<MapDef>,
    /// The `license` section's text, if any.
    pub license: Option<String>,
    /// The object's BTF, if it has a `.BTF` section.
    pub btf: Option<Btf>,
    /// That section's bytes, as clang wrote them.
    pub btf_bytes: Option<Vec<u8>>,
}

impl Object {
    /// Sets global variable `name` (a `const volatile` setting in `.rodata`, or a `.data` /
    /// `.bss` variable) to `value` before loading, as a libbpf skeleton's user does with
    /// `skel->rodata->name = value`: an integer (decimal, `0x` hex, negative) for integer
    /// variables, a string for `char` arrays. Found by name in the BTF of the data sections.
    pub fn set_global(&mut self, name: &str, value: &str) -> Result<(), ObjectError> {
        let bad = |msg: String| ObjectError::Global { name: name.to_string(), msg };
        let btf = self.btf.as_ref().ok_or_else(|| bad("the object has no BTF to find globals in".into()))?;
        let (section, offset, size, is_int) = btf
            .types()
            .filter(|(_, t)| t.kind == btf::Kind::Datasec)
            .find_map(|(_, sec)| {
                sec.members.iter().find_map(|m| {
                    let var = btf.get(m.type_id).ok()?;
                    if var.name != name {
                        return None;
                    }
                    let target = btf.skip_mods(var.size_or_type).ok()?;
                    let is_int = btf.get(target).is_ok_and(|t| matches!(t.kind, btf::Kind::Int | btf::Kind::Enum | btf::Kind::Enum64));
                    Some((sec.name.clone(), m.offset as usize, m.size as usize, is_int))
                })
            })
            .ok_or_else(|| bad("no such global variable".into()))?;
        let bytes = if is_int {
            let v = value.trim();
            let parsed = match v.strip_prefix("0x") {
                Some(h) => u64::from_str_radix(h, 16).ok(),
                None => v.parse::<u64>().ok().or_else(|| v.parse::<i64>().ok().map(|i| i as u64)),
            };
            let n = parsed.ok_or_else(|| bad(format!("`{value}` is not an integer")))?;
            if size < 8 && n >> (8 * size) != 0 && (n as i64) >> (8 * size - 1) != -1 {
                return Err(bad(format!("{value} does not fit in {size} bytes")));
            }
            n.to_le_bytes()[..size.min(8)].to_vec()
        } else {
            if value.len() >= size {
                return Err(bad(format!("`{value}` does not fit in {size} bytes with its NUL")));
            }
            let mut b = value.as_bytes().to_vec();
            b.resize(size, 0);
            b
        };
        let map = self.maps.iter_mut().find(|m| m.name == section).ok_or_else(|| bad(format!("its section `{section}` is not in the object")))?;
        let initial = map.initial.get_or_insert_with(|| vec![0; map.value_size as usize]);
        let slot = initial.get_mut(offset..offset + bytes.len()).ok_or_else(|| bad("outside its section".into()))?;
        slot.copy_from_slice(&bytes);
        Ok(())
    }

    /// Sets map `name`'s capacity before loading (`bpf_map__set_max_entries`).
    pub fn set_map_size(&mut self, name: &str, max_entries: u32) -> Result<(), ObjectError> {
        let map = self.maps.iter_mut().find(|m| m.name == name).ok_or_else(|| ObjectError::Map { map: name.to_string(), msg: "no such map".into() })?;
        if map.origin == MapOrigin::GlobalData || max_entries == 0 {
            return Err(ObjectError::Map { map: name.to_string(), msg: "its size cannot be set".into() });
        }
        map.max_entries = max_entries;
        Ok(())
    }

    /// Whether `bytes` start like an ELF file.
    pub fn is_elf(bytes: &[u8]) -> bool {
        bytes.starts_with(b"\x7fELF")
    }

    /// Parses an object.
    pub fn parse(bytes: &[u8]) -> Result<Object, ObjectError> {
        let file = object::File::parse(bytes).map_err(|e| ObjectError::Elf(e.to_string()))?;
        match &file {
            object::File::Elf64(elf) => {
                let machine = elf.elf_header().e_machine.get(elf.endian());
                if machine != object::elf::EM_BPF {
                    return Err(ObjectError::NotBpf(machine.0));
                }
            }
            _ => return Err(ObjectError::Elf("not a 64-bit little-endian ELF".into())),
        }
        let btf_bytes = match file.section_by_name(".BTF") {
            Some(s) => Some(s.data().map_err(|e| ObjectError::Elf(e.to_string()))?.to_vec()),
            None => None,
        };
        let mut btf = btf_bytes.as_deref().map(Btf::parse).transpose()?;
        // Global variables' offsets in their data sections, from the symbol table (clang
        // leaves them 0 in the BTF).
        if let Some(b) = btf.as_mut() {
            use object::{ObjectSection, ObjectSymbol};
            for s in file.sections() {
                let name = s.name().unwrap_or("").to_string();
                if !is_global_data(&name) {
                    continue;
                }
                let index = s.index();
                b.fix_datasec_offsets(&name, |var| {
                    file.symbols().find(|sym| sym.section_index() == Some(index) && sym.name().ok() == Some(var)).map(|sym| sym.address())
                });
            }
        }
        let mut parser = Parser::new(&file, btf.as_ref())?;
        let maps = parser.maps()?;
        let mut obj = Object { maps, btf: btf.clone(), btf_bytes, ..Object::default() };
        if let Some(s) = file.section_by_name("license") {
            let data = s.data().map_err(|e| ObjectError::Elf(e.to_string()))?;
            obj.license = Some(String::from_utf8_lossy(data).trim_end_matches('\0').to_string());
        }
        obj.programs = parser.programs(&obj.maps)?;
        Ok(obj)
    }

    /// The program named `name` (function or section name), or the only program when `None`.
    pub fn program(&self, name: Option<&str>) -> Result<&ObjProgram, ObjectError> {
        let names = || self.programs.iter().map(|p| format!("{} ({})", p.name, p.section)).collect::<Vec<_>>().join(", ");
        match name {
            Some(n) => self.programs.iter().find(|p| p.name == n || p.section == n).ok_or_else(|| ObjectError::NoSuchProgram(n.to_string(), names())),
            None => match self.programs.as_slice() {
                [] => Err(ObjectError::NoPrograms),
                [p] => Ok(p),
                _ => Err(ObjectError::NoSuchProgram("(none given)".into(), names())),
            },
        }
    }

    /// Whether any program has CO-RE relocations left.
    pub fn needs_core(&self) -> bool {
        self.programs.iter().any(|p| !p.core_relocs.is_empty())
    }

    /// Applies every CO-RE relocation against `target` (usually the kernel's BTF).
    pub fn apply_core(&mut self, target: &Btf) -> Result<(), ObjectError> {
        let Some(local) = &self.btf else { return Ok(()) };
        for p in &mut self.programs {
            for r in std::mem::take(&mut p.core_relocs) {
                if let Some(why) = core::apply(&mut p.insns, &r, local, target).map_err(|e| ObjectError::Core { program: p.name.clone(), source: e })? {
                    p.core_poisoned.push((r.insn, why));
                }
            }
        }
        Ok(())
    }
}

/// An executable section's code and its relocations by instruction index.
struct CodeSection {
    name: String,
    insns: Vec<RawInsn>,
    relocs: HashMap<usize, Reloc>,
    core: Vec<(usize, CoreReloc)>,
    /// `.BTF.ext` func_info and line_info records (kernel sizes) by instruction index.
    func_info: Vec<(usize, Vec<u8>)>,
    line_info: Vec<(usize, Vec<u8>)>,
}

#[derive(Clone, Debug)]
struct Reloc {
    r_type: u32,
    symbol: String,
    symbol_section: Option<SectionIndex>,
    symbol_section_name: String,
    symbol_value: u64,
    symbol_is_section: bool,
}

struct Parser<'d, 'f> {
    file: &'f object::File<'d>,
    btf: Option<&'f Btf>,
    sections: HashMap<SectionIndex, CodeSection>,
    text: Option<SectionIndex>,
    /// `__kconfig` externs: name -> offset in the `.kconfig` map.
    kconfig: HashMap<String, u64>,
}

/// The value libbpf gives a `__kconfig` extern on this machine: the `LINUX_*` facts it
/// computes, `CONFIG_*` from the running kernel's config file (y = 1, m = 2, a number as
/// itself), 0 otherwise (as for a weak extern the kernel lacks).
fn kconfig_value(name: &str) -> u64 {
    let release = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    match name {
        // The features bpftime provides to programs.
        "LINUX_HAS_BPF_COOKIE" | "LINUX_HAS_SYSCALL_WRAPPER" => 1,
        "LINUX_KERNEL_VERSION" => {
            let mut parts = release.trim().split(|c: char| !c.is_ascii_digit()).filter(|p| !p.is_empty()).map(|p| p.parse::<u64>().unwrap_or(0));
            let (a, b, c) = (parts.next().unwrap_or(0), parts.next().unwrap_or(0), parts.next().unwrap_or(0));
            (a << 16) + (b << 8) + c.min(255)
        }
        _ if name.starts_with("CONFIG_") => {
            let config = std::fs::read_to_string(format!("/boot/config-{}", release.trim())).unwrap_or_default();
            let line = config.lines().find_map(|l| l.strip_prefix(name).and_then(|r| r.strip_prefix('=')));
            match line {
                Some("y") => 1,
                Some("m") => 2,
                Some(v) => v.parse::<u64>().or_else(|_| u64::from_str_radix(v.trim_start_matches("0x"), 16)).unwrap_or(0),
                None => 0,
            }
        }
        _ => 0,
    }
}

fn section_err(section: &str, msg: impl ToString) -> ObjectError {
    ObjectError::Section { section: section.to_string(), msg: msg.to_string() }
}

fn is_global_data(name: &str) -> bool {
    [".rodata", ".data", ".bss"].iter().any(|p| name == *p || name.starts_with(&format!("{p}.")))
}

fn relocations_of<'d>(file: &object::File<'d>, s: &object::Section<'d, '_>) -> Result<Vec<(u64, Reloc)>, ObjectError> {
    let name = s.name().unwrap_or("?").to_string();
    let mut out = vec![];
    for (off, r) in s.relocations() {
        let RelocationFlags::Elf { r_type } = r.flags() else { continue };
        let RelocationTarget::Symbol(si) = r.target() else {
            return Err(section_err(&name, format!("relocation at {off:#x} has no symbol")));
        };
        let sym = file.symbol_by_index(si).map_err(|e| section_err(&name, e))?;
        let symbol_section = sym.section_index();
        let symbol_section_name =
            symbol_section.and_then(|i| file.section_by_index(i).ok()).and_then(|s| s.name().ok().map(str::to_string)).unwrap_or_default();
        let symbol = match sym.name() {
            Ok(n) if !n.is_empty() => n.to_string(),
            _ => symbol_section_name.clone(),
        };
        out.push((
            off,
            Reloc {
                r_type: r_type.0,
                symbol,
                symbol_section,
                symbol_section_name,
                symbol_value: sym.address(),
                symbol_is_section: sym.kind() == SymbolKind::Section,
            },
        ));
    }
    Ok(out)
}

impl<'d, 'f> Parser<'d, 'f> {
    fn new(file: &'f object::File<'d>, btf: Option<&'f Btf>) -> Result<Self, ObjectError> {
        let mut sections = HashMap::new();
        let mut text = None;
        for s in file.sections() {
            if s.kind() != SectionKind::Text || s.size() == 0 {
                continue;
            }
            let name = s.name().map_err(|e| ObjectError::Elf(e.to_string()))?.to_string();
            let data = s.data().map_err(|e| section_err(&name, e))?;
            let insns = parse_bytecode(data).map_err(|e| section_err(&name, e))?;
            let relocs = relocations_of(file, &s)?.into_iter().map(|(off, r)| (off as usize / INSN_SIZE, r)).collect();
            if name == ".text" {
                text = Some(s.index());
            }
            sections.insert(s.index(), CodeSection { name, insns, relocs, core: vec![], func_info: vec![], line_info: vec![] });
        }
        let mut p = Parser { file, btf, sections, text, kconfig: HashMap::new() };
        p.read_core_relocs()?;
        p.read_debug_records();
        Ok(p)
    }

    /// Reads `.BTF.ext`'s func_info and line_info records into the code sections (what
    /// bpftool shows functions and source lines by). Malformed parts are left out: they only
    /// describe the code.
    fn read_debug_records(&mut self) {
        let (Some(ext), Some(btf)) = (self.file.section_by_name(".BTF.ext"), self.btf) else { return };
        let Ok(d) = ext.data() else { return };
        let u32_at = |b: &[u8], o: usize| b.get(o..o + 4).map(|s| u32::from_le_bytes(s.try_into().expect("4 bytes")));
        let Some(hdr_len) = u32_at(d, 4) else { return };
        for (at, size, func) in [(8, FUNC_INFO_SIZE, true), (16, LINE_INFO_SIZE, false)] {
            let (Some(off), Some(len)) = (u32_at(d, at), u32_at(d, at + 4)) else { continue };
            let start = hdr_len as usize + off as usize;
            let Some(part) = d.get(start..start + len as usize) else { continue };
            let Some(rec_size) = u32_at(part, 0).map(|r| r as usize).filter(|&r| r >= size) else { continue };
            let mut p = 4;
            while p + 8 <= part.len() {
                let sec_name = btf.string(u32_at(part, p).expect("checked")).unwrap_or_default();
                let n = u32_at(part, p + 4).expect("checked") as usize;
                p += 8;
                let Some(records) = part.get(p..p + n * rec_size) else { break };
                if let Some(s) = self.sections.values_mut().find(|s| s.name == sec_name) {
                    for r in records.chunks(rec_size) {
                        let idx = u32_at(r, 0).expect("checked") as usize / INSN_SIZE;
                        let list = if func { &mut s.func_info } else { &mut s.line_info };
                        list.push((idx, r[..size].to_vec()));
                    }
                }
                p += n * rec_size;
            }
        }
    }

    /// Reads `.BTF.ext`'s CO-RE records into the code sections.
    fn read_core_relocs(&mut self) -> Result<(), ObjectError> {
        let (Some(ext), Some(btf)) = (self.file.section_by_name(".BTF.ext"), self.btf) else {
            return Ok(());
        };
        let d = ext.data().map_err(|e| section_err(".BTF.ext", e))?;
        let u32_at = |b: &[u8], o: usize| b.get(o..o + 4).map(|s| u32::from_le_bytes(s.try_into().expect("4 bytes")));
        let hdr_len = u32_at(d, 4).ok_or_else(|| section_err(".BTF.ext", "truncated header"))? as usize;
        if hdr_len < 32 {
            return Ok(()); // no CO-RE part in this header version
        }
        let (Some(core_off), Some(core_len)) = (u32_at(d, 24), u32_at(d, 28)) else { return Ok(()) };
        if core_len == 0 {
            return Ok(());
        }
        let core = d
            .get(hdr_len + core_off as usize..hdr_len + (core_off + core_len) as usize)
            .ok_or_else(|| section_err(".BTF.ext", "CO-RE records out of bounds"))?;
        // Section names and access strings are in the BTF string table.
        let string = |off: u32| btf.string(off).unwrap_or_default();
        let rec_size = u32_at(core, 0).ok_or_else(|| section_err(".BTF.ext", "truncated"))? as usize;
        if rec_size < 16 {
            return Err(section_err(".BTF.ext", "CO-RE record too small"));
        }
        let mut p = 4;
        while p + 8 <= core.len() {
            let sec_name = string(u32_at(core, p).expect("checked"));
            let n = u32_at(core, p + 4).expect("checked") as usize;
            p += 8;
            for i in 0..n {
                let r = p + i * rec_size;
                let (Some(insn_off), Some(type_id), Some(access), Some(kind)) =
                    (u32_at(core, r), u32_at(core, r + 4), u32_at(core, r + 8), u32_at(core, r + 12))
                else {
                    return Err(section_err(".BTF.ext", "truncated CO-RE record"));
                };
                if let Some(s) = self.sections.values_mut().find(|s| s.name == sec_name) {
                    let idx = insn_off as usize / INSN_SIZE;
                    s.core.push((idx, CoreReloc { insn: idx, kind: CoreKind::from_u32(kind), type_id, access: string(access) }));
                }
            }
            p += n * rec_size;
        }
        Ok(())
    }

    /// Map definitions: `.maps` (BTF), `maps` (legacy), then global data sections.
    fn maps(&mut self) -> Result<Vec<MapDef>, ObjectError> {
        let mut maps = vec![];
        if let Some(sec) = self.file.section_by_name(".maps") {
            let btf = self.btf.ok_or_else(|| section_err(".maps", "BTF-defined maps need a .BTF section"))?;
            let datasec = btf.find(Kind::Datasec, ".maps").first().copied().ok_or_else(|| section_err(".maps", "no .maps DATASEC in BTF"))?;
            let vars = btf.get(datasec)?.members.clone();
            let relocs = relocations_of(self.file, &sec)?;
            for v in vars {
                let var = btf.get(v.type_id)?;
                let mut def = btf_map_def(btf, var.size_or_type, &var.name)?;
                // Static `.values = { [i] = &x }`: 8-byte pointers inside the variable. clang
                // leaves DATASEC offsets 0, so the variable's place comes from its ELF symbol.
                let values_off = values_member_offset(btf, var.size_or_type)?;
                let (var_off, var_size) = self
                    .file
                    .symbols()
                    .find(|s| s.section_index() == Some(sec.index()) && s.name() == Ok(var.name.as_str()))
                    .map(|s| (s.address(), s.size()))
                    .unwrap_or((v.offset as u64, v.size as u64));
                for (off, r) in &relocs {
                    if *off >= var_off && *off < var_off + var_size {
                        let Some(vo) = values_off else { continue };
                        let slot = (*off - var_off).checked_sub(vo).map(|b| b / 8);
                        if let Some(slot) = slot {
                            def.init_values.push((slot as u32, r.symbol.clone()));
                        }
                    }
                }
                maps.push(def);
            }
        }
        if let Some(sec) = self.file.section_by_name("maps") {
            let data = sec.data().map_err(|e| section_err("maps", e))?;
            let mut syms: Vec<_> = self
                .file
                .symbols()
                .filter(|s| s.section_index() == Some(sec.index()) && s.kind() != SymbolKind::Section && !s.name().unwrap_or("").is_empty())
                .collect();
            syms.sort_by_key(|s| s.address());
            for s in syms {
                let name = s.name().unwrap_or("?").to_string();
                let off = s.address() as usize;
                let field = |i: usize| {
                    data.get(off + 4 * i..off + 4 * i + 4)
                        .map(|b| u32::from_le_bytes(b.try_into().expect("4 bytes")))
                        .ok_or_else(|| ObjectError::Map { map: name.clone(), msg: "legacy definition is truncated".into() })
                };
                maps.push(MapDef {
                    name: name.clone(),
                    map_type: field(0)?,
                    key_size: field(1)?,
                    value_size: field(2)?,
                    max_entries: field(3)?,
                    flags: field(4)?,
                    map_extra: 0,
                    inner: None,
                    initial: None,
                    init_values: vec![],
                    origin: MapOrigin::Legacy,
                    btf_types: None,
                });
            }
        }
        for s in self.file.sections() {
            let name = s.name().unwrap_or("").to_string();
            if !is_global_data(&name) || s.size() == 0 {
                continue;
            }
            if s.size() > MAX_GLOBAL_DATA {
                return Err(ObjectError::Section {
                    section: name,
                    msg: format!("{} bytes of global data: more than a map value may hold ({MAX_GLOBAL_DATA})", s.size()),
                });
            }
            let bytes = match s.kind() {
                SectionKind::UninitializedData => vec![0; s.size() as usize],
                _ => s.data().map_err(|e| section_err(&name, e))?.to_vec(),
            };
            maps.push(MapDef {
                name: name.clone(),
                map_type: 2, // BPF_MAP_TYPE_ARRAY
                key_size: 4,
                value_size: s.size() as u32,
                max_entries: 1,
                flags: if name.starts_with(".rodata") { 1 << 7 } else { 0 },
                map_extra: 0,
                inner: None,
                initial: Some(bytes),
                init_values: vec![],
                origin: MapOrigin::GlobalData,
                btf_types: None,
            });
        }
        // `__kconfig` externs: one read-only `.kconfig` array holding their values, laid out as
        // libbpf lays it out (each aligned to its size, in declaration order).
        if let Some(btf) = self.btf {
            let mut bytes = vec![];
            for id in btf.find(Kind::Datasec, ".kconfig").to_vec() {
                for m in btf.get(id)?.members.clone() {
                    let name = btf.get(m.type_id)?.name.clone();
                    let size = m.size.clamp(1, 8) as usize;
                    let at = bytes.len().div_ceil(size) * size;
                    bytes.resize(at + size, 0);
                    bytes[at..at + size].copy_from_slice(&kconfig_value(&name).to_le_bytes()[..size]);
                    self.kconfig.insert(name, at as u64);
                }
            }
            if !bytes.is_empty() {
                bytes.resize(bytes.len().div_ceil(8) * 8, 0);
                maps.push(MapDef {
                    name: ".kconfig".into(),
                    map_type: 2,
                    key_size: 4,
                    value_size: bytes.len() as u32,
                    max_entries: 1,
                    flags: 1 << 7,
                    map_extra: 0,
                    inner: None,
                    initial: Some(bytes),
                    init_values: vec![],
                    origin: MapOrigin::GlobalData,
                    btf_types: None,
                });
            }
        }
        Ok(maps)
    }

    /// Every global function outside `.text` is a program.
    fn programs(&mut self, maps: &[MapDef]) -> Result<Vec<ObjProgram>, ObjectError> {
        let mut found: Vec<(SectionIndex, u64, u64, String)> = self
            .file
            .symbols()
            .filter(|s| s.kind() == SymbolKind::Text && s.is_global())
            .filter_map(|s| {
                let idx = s.section_index()?;
                (Some(idx) != self.text && self.sections.contains_key(&idx)).then(|| (idx, s.address(), s.size(), s.name().unwrap_or_default().to_string()))
            })
            .collect();
        // Objects without function symbols: a section is then one program.
        for (idx, sec) in &self.sections {
            if Some(*idx) != self.text && !found.iter().any(|f| f.0 == *idx) {
                found.push((*idx, 0, (sec.insns.len() * INSN_SIZE) as u64, sec.name.clone()));
            }
        }
        found.sort_by_key(|f| (f.0 .0, f.1));
        found.into_iter().map(|(idx, start, size, name)| self.link(idx, start, size, name, maps)).collect()
    }

    fn link(&self, idx: SectionIndex, start: u64, size: u64, name: String, maps: &[MapDef]) -> Result<ObjProgram, ObjectError> {
        let sec = &self.sections[&idx];
        let first = start as usize / INSN_SIZE;
        let count = if size == 0 { sec.insns.len().saturating_sub(first) } else { size as usize / INSN_SIZE };
        let end = first + count;
        if end > sec.insns.len() {
            return Err(section_err(&sec.name, format!("function `{name}` extends past the section")));
        }
        let mut insns = sec.insns[first..end].to_vec();
        let mut data_relocs = Vec::new();
        let mut core_relocs = Vec::new();
        let (mut func_info, mut line_info) = (Vec::new(), Vec::new());
        let mut kfunc_calls = Vec::new();
        let text = self.text.map(|t| &self.sections[&t]);
        let mut text_base: Option<usize> = None;
        // Relocate the program's own instructions, then (if it uses .text) all of .text.
        let mut pieces = vec![(sec, first, 0usize, count)];
        let mut k = 0;
        while k < pieces.len() {
            let (piece, from, base, len) = pieces[k];
            for (i, r) in &piece.core {
                if *i >= from && *i < from + len {
                    core_relocs.push(CoreReloc { insn: base + i - from, ..r.clone() });
                }
            }
            // Debug records, their instruction index now the linked program's.
            for (records, out) in [(&piece.func_info, &mut func_info), (&piece.line_info, &mut line_info)] {
                for (i, r) in records.iter().filter(|(i, _)| *i >= from && *i < from + len) {
                    out.extend_from_slice(&((base + i - from) as u32).to_le_bytes());
                    out.extend_from_slice(&r[4..]);
                }
            }
            for i in 0..len {
                let Some(r) = piece.relocs.get(&(from + i)) else { continue };
                let at = base + i;
                let rerr = |msg: String| ObjectError::Reloc { program: name.clone(), insn: at, msg };
                let mut text_index = |insns: &mut Vec<RawInsn>, pieces: &mut Vec<_>| {
                    let text_sec = text.ok_or_else(|| rerr(format!("`{}` is in .text, which is missing", r.symbol)))?;
                    Ok::<usize, ObjectError>(*text_base.get_or_insert_with(|| {
                        let b = insns.len();
                        insns.extend_from_slice(&text_sec.insns);
                        pieces.push((text_sec, 0, b, text_sec.insns.len()));
                        b
                    }))
                };
                match r.r_type {
                    t if t == R_BPF_64_32.0 => {
                        let insn = insns[at];
                        if insn.opc != 0x85 || insn.src != call_src::LOCAL {
                            return Err(rerr(format!("R_BPF_64_32 on a non-call instruction {insn:?}")));
                        }
                        if r.symbol_section.is_none() {
                            // A call of an extern function: a kfunc (`__ksym`), by name.
                            insns[at].src = call_src::KFUNC;
                            insns[at].imm = 0;
                            kfunc_calls.push((at, r.symbol.clone()));
                            continue;
                        }
                        if r.symbol_section != self.text {
                            return Err(rerr(format!("call to `{}` outside .text is not supported", r.symbol)));
                        }
                        let base_idx = text_index(&mut insns, &mut pieces)?;
                        let text_len = text.expect("checked").insns.len() as i64;
                        let target = (r.symbol_value / INSN_SIZE as u64) as i64 + insn.imm as i64 + 1;
                        if target < 0 || target >= text_len {
                            return Err(rerr(format!("call target {target} is outside .text")));
                        }
                        insns[at].imm = (base_idx as i64 + target - at as i64 - 1) as i32;
                    }
                    t if t == R_BPF_64_64.0 => {
                        if insns[at].opc != 0x18 || at + 1 >= insns.len() {
                            return Err(rerr("R_BPF_64_64 on a non-lddw instruction".into()));
                        }
                        if r.symbol_section.is_some() && r.symbol_section == self.text {
                            // A callback's address: BPF_PSEUDO_FUNC.
                            let base_idx = text_index(&mut insns, &mut pieces)?;
                            let target = (r.symbol_value + insns[at].imm as u64) / INSN_SIZE as u64;
                            insns[at].src = 4;
                            insns[at].imm = (base_idx as i64 + target as i64 - at as i64 - 1) as i32;
                            continue;
                        }
                        let sec_name = &r.symbol_section_name;
                        if sec_name == ".maps" || sec_name == "maps" {
                            let m = maps
                                .iter()
                                .position(|m| m.name == r.symbol && m.origin != MapOrigin::GlobalData)
                                .ok_or_else(|| rerr(format!("no map definition for `{}`", r.symbol)))?;
                            data_relocs.push(DataReloc { insn: at, map: m, value_offset: None });
                        } else if is_global_data(sec_name) {
                            let m = maps
                                .iter()
                                .position(|m| &m.name == sec_name && m.origin == MapOrigin::GlobalData)
                                .ok_or_else(|| rerr(format!("no data for section `{sec_name}`")))?;
                            // Section symbols carry the offset in the instruction; variables in
                            // their value (plus any addend in the instruction).
                            let base = if r.symbol_is_section { 0 } else { r.symbol_value };
                            let off = base + insns[at].imm as u32 as u64;
                            data_relocs.push(DataReloc { insn: at, map: m, value_offset: Some(off) });
                        } else if let (None, Some(&off)) = (r.symbol_section, self.kconfig.get(&r.symbol)) {
                            let m = maps.iter().position(|m| m.name == ".kconfig").ok_or_else(|| rerr("no .kconfig map".into()))?;
                            data_relocs.push(DataReloc { insn: at, map: m, value_offset: Some(off + insns[at].imm as u32 as u64) });
                        } else if r.symbol_section.is_none() {
                            return Err(rerr(format!("`{}` is an extern symbol; externs other than __kconfig (ksyms) are not supported", r.symbol)));
                        } else {
                            return Err(rerr(format!("reference to `{}` in unsupported section `{sec_name}`", r.symbol)));
                        }
                    }
                    other => return Err(rerr(format!("unsupported relocation type {other}"))),
                }
            }
            k += 1;
        }
        Ok(ObjProgram {
            kind: ProgramKind::from_section(&sec.name),
            name,
            section: sec.name.clone(),
            insns,
            data_relocs,
            core_relocs,
            core_poisoned: vec![],
            func_info,
            line_info,
            kfunc_calls,
        })
    }
}

/// The integer encoded by `__uint(name, N)`: a pointer to an array of N ints.
fn uint_member(btf: &Btf, type_id: u32) -> Result<u32, ObjectError> {
    let ptr = btf.get(btf.skip_mods(type_id)?)?;
    let bad = || ObjectError::Map { map: "?".into(), msg: "`__uint` member is not a pointer to an array".into() };
    if ptr.kind != Kind::Ptr {
        return Err(bad());
    }
    let arr = btf.get(btf.skip_mods(ptr.size_or_type)?)?;
    arr.array.map(|(_, n)| n).ok_or_else(bad)
}

/// Reads a BTF map definition (the struct type of a `.maps` variable).
fn btf_map_def(btf: &Btf, struct_id: u32, name: &str) -> Result<MapDef, ObjectError> {
    let merr = |msg: String| ObjectError::Map { map: name.to_string(), msg };
    let st = btf.get(btf.skip_mods(struct_id)?)?;
    if st.kind != Kind::Struct {
        return Err(merr("definition is not a struct".into()));
    }
    let mut def = MapDef {
        name: name.to_string(),
        map_type: 0,
        key_size: 0,
        value_size: 0,
        max_entries: 0,
        flags: 0,
        map_extra: 0,
        inner: None,
        initial: None,
        init_values: vec![],
        origin: MapOrigin::Btf,
        btf_types: None,
    };
    for m in &st.members {
        let with_name = |e: ObjectError| match e {
            ObjectError::Map { msg, .. } => merr(format!("member `{}`: {msg}", m.name)),
            e => e,
        };
        match m.name.as_str() {
            "type" => def.map_type = uint_member(btf, m.type_id).map_err(with_name)?,
            "max_entries" => def.max_entries = uint_member(btf, m.type_id).map_err(with_name)?,
            "map_flags" => def.flags = uint_member(btf, m.type_id).map_err(with_name)?,
            "key_size" => def.key_size = uint_member(btf, m.type_id).map_err(with_name)?,
            "value_size" => def.value_size = uint_member(btf, m.type_id).map_err(with_name)?,
            "map_extra" => def.map_extra = uint_member(btf, m.type_id).map_err(with_name)? as u64,
            "numa_node" | "pinning" => {}
            "key" | "value" => {
                let ptr = btf.get(btf.skip_mods(m.type_id)?)?;
                if ptr.kind != Kind::Ptr {
                    return Err(merr(format!("`{}` must be declared with __type", m.name)));
                }
                let size = btf.size_of(ptr.size_or_type).map_err(|e| merr(format!("`{}`: {e}", m.name)))?;
                let (key, value) = def.btf_types.unwrap_or_default();
                if m.name == "key" {
                    def.key_size = size;
                    def.btf_types = Some((ptr.size_or_type, value));
                } else {
                    def.value_size = size;
                    def.btf_types = Some((key, ptr.size_or_type));
                }
            }
            "values" => {
                // `__array(values, T)`: an array of pointers to T (an inner map definition, or a
                // function prototype for prog arrays).
                let arr = btf.get(btf.skip_mods(m.type_id)?)?;
                let (elem, _) = arr.array.ok_or_else(|| merr("`values` must be declared with __array".into()))?;
                let ptr = btf.get(btf.skip_mods(elem)?)?;
                let target = btf.skip_mods(ptr.size_or_type)?;
                if btf.get(target)?.kind == Kind::Struct {
                    def.inner = Some(Box::new(btf_map_def(btf, target, &format!("{name}.inner"))?));
                }
                def.value_size = 4;
            }
            other => return Err(merr(format!("unknown map attribute `{other}`"))),
        }
    }
    if def.map_type == 0 {
        return Err(merr("no map type".into()));
    }
    Ok(def)
}

/// Byte offset of the `values` member in a BTF map definition, if it has one.
fn values_member_offset(btf: &Btf, struct_id: u32) -> Result<Option<u64>, ObjectError> {
    let st = btf.get(btf.skip_mods(struct_id)?)?;
    Ok(st.members.iter().find(|m| m.name == "values").map(|m| m.offset as u64 / 8))
}
