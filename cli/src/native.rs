//! `bpftime vm disasm --native`: the JIT's machine code, disassembled (iced-x86, Intel syntax).

use bpftime_jit::JitProgram;
use bpftime_vm::exec::Engine;
use iced_x86::{Decoder, DecoderOptions, Formatter, IntelFormatter};
use std::fmt::Write;

/// Every function of `jit` whose code size is known, entry first: offset and instruction per
/// line, under a header naming the function and its first eBPF instruction.
pub fn disassemble(jit: &JitProgram) -> String {
    let mut out = String::new();
    let mut formatter = IntelFormatter::new();
    let options = formatter.options_mut();
    options.set_uppercase_hex(false);
    options.set_hex_prefix("0x");
    options.set_hex_suffix("");
    options.set_branch_leading_zeros(false);
    let functions = jit.program().functions();
    for (i, code) in jit.machine_code().into_iter().enumerate() {
        let start = functions.get(i).map_or(0, |f| f.start);
        let _ = writeln!(out, "; function {i} (eBPF insn {start}): {} bytes", code.len());
        let mut decoder = Decoder::with_ip(64, code, 0, DecoderOptions::NONE);
        let mut text = String::new();
        while decoder.can_decode() {
            let insn = decoder.decode();
            text.clear();
            formatter.format(&insn, &mut text);
            let _ = writeln!(out, "{:6x}:  {text}", insn.ip());
        }
    }
    out
}
