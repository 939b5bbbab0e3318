//! The values compiled code takes from its process: runtime entry points, helper functions,
//! the program itself (for the interpreter fallback), map references and map value addresses.
//!
//! The JIT writes them into the code as constants. Code meant for other processes (the code
//! cache, `bpftime aot`) loads each from an 8-byte slot, a writable data object of its own
//! named by [`Import::symbol`] that the code reaches PC-relatively; whoever places the code
//! (our [`link`](crate::link), or the system linker for a C program) places the slots, and the
//! loader fills each with [`Import::value`].

use crate::runtime_calls;
use bpftime_vm::Program;

/// One value compiled code needs from its process.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Import {
    /// `jit_fallback`: runs the program in the interpreter.
    Fallback,
    /// `jit_raise`: records a fault.
    Raise,
    /// The slow memory check.
    CheckAccess,
    /// The [`Program`] the code was compiled from (argument of the fallback).
    Program,
    /// The function of helper `id`.
    Helper(u32),
    /// The constant a map-naming `lddw` at this slot resolved to.
    MapRef(usize),
    /// For the inlined array lookup at this slot: the address of value 0.
    ArrayValues(usize),
    /// For the inlined per-CPU array lookup at this slot: the function giving the CPU.
    ArrayCpu(usize),
}

impl Import {
    /// The symbol of its slot in an object file: every slot belongs to one program (named by
    /// its entry symbol, `prefix`), so objects holding several programs keep them apart.
    pub fn symbol(self, prefix: &str) -> String {
        match self {
            Import::Fallback => format!("{prefix}.fallback"),
            Import::Raise => format!("{prefix}.raise"),
            Import::CheckAccess => format!("{prefix}.check_access"),
            Import::Helper(id) => format!("{prefix}.helper.{id}"),
            Import::Program => format!("{prefix}.program"),
            Import::MapRef(pc) => format!("{prefix}.map_ref.{pc}"),
            Import::ArrayValues(pc) => format!("{prefix}.array_values.{pc}"),
            Import::ArrayCpu(pc) => format!("{prefix}.array_cpu.{pc}"),
        }
    }

    /// The import a slot symbol of the program with `prefix` names, if it is one.
    pub fn parse(symbol: &str, prefix: &str) -> Option<Import> {
        let rest = symbol.strip_prefix(prefix)?.strip_prefix('.')?;
        match rest {
            "program" => return Some(Import::Program),
            "fallback" => return Some(Import::Fallback),
            "raise" => return Some(Import::Raise),
            "check_access" => return Some(Import::CheckAccess),
            _ => {}
        }
        let (kind, n) = rest.split_once('.')?;
        match kind {
            "helper" => n.parse().ok().map(Import::Helper),
            "map_ref" => n.parse().ok().map(Import::MapRef),
            "array_values" => n.parse().ok().map(Import::ArrayValues),
            "array_cpu" => n.parse().ok().map(Import::ArrayCpu),
            _ => None,
        }
    }

    /// Its value in this process for `program`, or None where the program has no such thing
    /// (an object compiled for a different program).
    pub fn value(self, program: &Program) -> Option<u64> {
        Some(match self {
            Import::Fallback => runtime_calls::jit_fallback as *const () as u64,
            Import::Raise => runtime_calls::jit_raise as *const () as u64,
            Import::CheckAccess => runtime_calls::CHECK_ACCESS as u64,
            Import::Program => program as *const Program as u64,
            Import::Helper(id) => program.helpers().get(id)?.func as *const () as u64,
            Import::MapRef(pc) => match program.insns().get(pc)? {
                bpftime_vm::Insn::Lddw { lo, hi, .. } if program.is_resolved(pc) => (*lo as u32 as u64) | ((*hi as u32 as u64) << 32),
                _ => return None,
            },
            Import::ArrayValues(pc) => program.inline_lookup(pc)?.values,
            Import::ArrayCpu(pc) => program.inline_lookup(pc).filter(|l| l.cpu != 0)?.cpu,
        })
    }
}
