//! Shared code of the `bpftime` binaries: loading a program file.

use bpftime_object::Object;
use bpftime_vm::insn::{parse_bytecode, RawInsn};
use std::path::Path;

/// A program read from a file: raw bytecode, or one program of a clang-built object.
pub struct LoadedFile {
    /// Instruction slots.
    pub insns: Vec<RawInsn>,
    /// Where they came from, for messages.
    pub origin: String,
}

/// Reads `path`: an ELF object (the program named `section`, or its only program; its map
/// references left unresolved) or raw bytecode.
pub fn load_program_file(path: &Path, section: Option<&str>) -> Result<LoadedFile, String> {
    let bytes = bpftime_runtime::input::read_program_file(path).map_err(|e| e.to_string())?;
    if Object::is_elf(&bytes) {
        let obj = Object::parse(&bytes).map_err(|e| format!("{}: {e}", path.display()))?;
        let prog = obj.program(section).map_err(|e| format!("{}: {e}", path.display()))?;
        Ok(LoadedFile { insns: prog.insns.clone(), origin: format!("{} ({})", prog.name, prog.section) })
    } else {
        if section.is_some() {
            return Err(format!("{}: --section needs an ELF object, this is raw bytecode", path.display()));
        }
        let insns = parse_bytecode(&bytes).map_err(|e| format!("{}: {e}", path.display()))?;
        Ok(LoadedFile { insns, origin: "raw bytecode".into() })
    }
}
