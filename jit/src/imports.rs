//! The values compiled code takes from its process: runtime entry points, helper functions,
//! the program itself (for the interpreter fallback), map references and map value addresses.
//!
//! The JIT writes them into the code as constants. Code meant for other processes (the code
//! cache, `bpftime aot`) reads each from a slot of a table beside it instead, named by the
//! symbol [`Import::symbol`] gives; the loader fills the table with [`Import::value`].

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
    /// The symbol naming it in an object file; per-program values carry `prefix`.
    pub fn symbol(self, prefix: &str) -> String {
        match self {
            Import::Fallback => "bpftime_jit_fallback".into(),
            Import::Raise => "bpftime_jit_raise".into(),
            Import::CheckAccess => "bpftime_jit_check_access".into(),
            Import::Helper(id) => format!("bpftime_helper_{id}"),
            Import::Program => format!("{prefix}.program"),
            Import::MapRef(pc) => format!("{prefix}.map_ref.{pc}"),
            Import::ArrayValues(pc) => format!("{prefix}.array_values.{pc}"),
            Import::ArrayCpu(pc) => format!("{prefix}.array_cpu.{pc}"),
        }
    }

    /// The import a symbol of a program with `prefix` names, if it is one.
    pub fn parse(symbol: &str, prefix: &str) -> Option<Import> {
        if let Some(rest) = symbol.strip_prefix(prefix).and_then(|r| r.strip_prefix('.')) {
            return Self::parse_own(rest);
        }
        match symbol {
            "bpftime_jit_fallback" => return Some(Import::Fallback),
            "bpftime_jit_raise" => return Some(Import::Raise),
            "bpftime_jit_check_access" => return Some(Import::CheckAccess),
            _ => {}
        }
        symbol.strip_prefix("bpftime_helper_").and_then(|id| id.parse().ok()).map(Import::Helper)
    }

    /// A per-program import, named without its program's prefix.
    fn parse_own(rest: &str) -> Option<Import> {
        if rest == "program" {
            return Some(Import::Program);
        }
        let (kind, pc) = rest.split_once('.')?;
        let pc = pc.parse().ok()?;
        match kind {
            "map_ref" => Some(Import::MapRef(pc)),
            "array_values" => Some(Import::ArrayValues(pc)),
            "array_cpu" => Some(Import::ArrayCpu(pc)),
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
