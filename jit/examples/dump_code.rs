//! Dumps the machine code the JIT makes for an assembly file (for inspection with objdump).
use bpftime_jit::JitProgram;
use bpftime_vm::{verify, HelperTable, NoMaps};
use std::sync::Arc;
fn main() {
    let src = std::fs::read_to_string(std::env::args().nth(1).expect("asm file")).unwrap();
    let code = bpftime_vm::asm::assemble(&src).unwrap();
    let prog = Arc::new(verify(&code, Arc::new(HelperTable::new()), &NoMaps).unwrap());
    let j = JitProgram::compile(prog).unwrap();
    let (ptr, len) = j.entry_code();
    // SAFETY: the code is live while `j` is.
    let bytes = unsafe { std::slice::from_raw_parts(ptr, len) };
    std::fs::write(std::env::args().nth(2).expect("out file"), bytes).unwrap();
}
