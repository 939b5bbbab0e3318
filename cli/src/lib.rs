//! Shared code of the `bpftime` binaries: loading a program file and choosing an engine.

use bpftime_jit::JitProgram;
use bpftime_object::Object;
use bpftime_vm::insn::{parse_bytecode, RawInsn};
use bpftime_vm::{Engine, Interpreter, Program};
use std::path::Path;
use std::sync::Arc;

/// Which engine runs a program.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum EngineKind {
    /// The Cranelift JIT.
    Jit,
    /// The reference interpreter.
    Interp,
}

/// Builds the engine for a verified program.
pub fn make_engine(kind: EngineKind, program: Arc<Program>) -> Result<Box<dyn Engine>, String> {
    Ok(match kind {
        EngineKind::Jit => Box::new(JitProgram::compile(program).map_err(|e| format!("jit: {e}"))?),
        EngineKind::Interp => Box::new(Interpreter::new(program)),
    })
}

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
    let bytes = std::fs::read(path).map_err(|e| format!("{}: {e}", path.display()))?;
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
