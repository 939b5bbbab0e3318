//! Workloads shared by the benchmarks and their correctness test: each is a C program in
//! `workloads/`, built as an eBPF object and as native code by `build.rs`, with its input.

use bpftime_vm::insn::{AluOp, Insn, JmpCond, MemSize, Operand, Reg, Width};

/// A native workload: takes the input, returns the result.
pub type NativeFn = unsafe extern "C" fn(*mut u8) -> u64;

unsafe extern "C" {
    fn native_log2_sum(input: *mut u8) -> u64;
    fn native_count_primes(input: *mut u8) -> u64;
    fn native_copy(input: *mut u8) -> u64;
    fn native_str_compare(input: *mut u8) -> u64;
    fn native_dense_switch(input: *mut u8) -> u64;
    fn native_mix(input: *mut u8) -> u64;
}

/// One benchmark workload.
pub struct Workload {
    /// Benchmark group name.
    pub name: &'static str,
    /// The eBPF object built by clang.
    pub object: &'static [u8],
    /// The same code compiled natively.
    pub native: NativeFn,
    /// Input memory as 64-bit words (so that it is 8-byte aligned for the native code).
    pub input: Vec<u64>,
}

fn xorshift(state: &mut u64) -> u64 {
    *state ^= *state << 13;
    *state ^= *state >> 7;
    *state ^= *state << 17;
    *state
}

fn bytes_to_words(bytes: &[u8]) -> Vec<u64> {
    bytes
        .chunks(8)
        .map(|c| {
            let mut w = [0u8; 8];
            w[..c.len()].copy_from_slice(c);
            u64::from_le_bytes(w)
        })
        .collect()
}

fn strcmp_input(mismatch_at: Option<usize>) -> Vec<u64> {
    let mut bytes = vec![0u8; 8 + 2048];
    bytes[..8].copy_from_slice(&1024u64.to_le_bytes());
    for i in 0..1023 {
        let c = b'a' + (i % 26) as u8;
        bytes[8 + i] = c;
        bytes[8 + 1024 + i] = c;
    }
    if let Some(at) = mismatch_at {
        bytes[8 + 1024 + at] = b'#';
    }
    bytes_to_words(&bytes)
}

/// Every workload with its input.
pub fn workloads() -> Vec<Workload> {
    let mut seed = 0x2545_f491_4f6c_dd1d;
    let mut log2 = vec![1024u64];
    log2.extend((0..1024).map(|_| xorshift(&mut seed) >> (xorshift(&mut seed) % 64)));
    let mut ops = vec![0u8; 8 + 4096];
    ops[..8].copy_from_slice(&4096u64.to_le_bytes());
    for b in &mut ops[8..] {
        *b = xorshift(&mut seed) as u8;
    }
    let copy_len = 1u64 << 20;
    let mut copy = vec![0u64; 1 + 2 * (copy_len as usize / 8)];
    copy[0] = copy_len;
    for (i, w) in copy[1..=copy_len as usize / 8].iter_mut().enumerate() {
        *w = i as u64 * 0x9e37_79b9;
    }
    macro_rules! obj {
        ($n:literal) => {
            include_bytes!(concat!(env!("OUT_DIR"), "/", $n, ".bpf.o"))
        };
    }
    vec![
        Workload { name: "log2", object: obj!("log2"), native: native_log2_sum, input: log2 },
        Workload { name: "prime", object: obj!("prime"), native: native_count_primes, input: vec![10_000] },
        Workload { name: "memcpy_1MiB", object: obj!("memcpy"), native: native_copy, input: copy },
        Workload { name: "strcmp_match", object: obj!("strcmp"), native: native_str_compare, input: strcmp_input(None) },
        Workload { name: "strcmp_mismatch", object: obj!("strcmp"), native: native_str_compare, input: strcmp_input(Some(100)) },
        Workload { name: "switch", object: obj!("switch"), native: native_dense_switch, input: bytes_to_words(&ops) },
        Workload { name: "mix", object: obj!("mix"), native: native_mix, input: vec![100_000, 42] },
    ]
}

/// Views words as bytes.
pub fn as_bytes(words: &mut [u64]) -> &mut [u8] {
    // SAFETY: u64 has no padding and any byte pattern is a valid u64; the length covers the
    // same memory.
    unsafe { std::slice::from_raw_parts_mut(words.as_mut_ptr() as *mut u8, words.len() * 8) }
}

/// A program of `len` slots of 64-bit and 32-bit ALU instructions only: what Cranelift needs
/// for straight-line code, with nothing of ours (checks, branches) around it.
pub fn synthetic_alu_program(len: usize) -> Vec<Insn> {
    let mut seed = 0x0bad_cafe_f00d_1234u64;
    let reg = |n: u64| Reg::new((n % 8) as u8 + 1).expect("r1-r8");
    let ops = [AluOp::Add, AluOp::Sub, AluOp::Mul, AluOp::Xor, AluOp::Or, AluOp::And, AluOp::Lsh, AluOp::Rsh, AluOp::Mov];
    let mut out: Vec<Insn> = (0..len - 2)
        .map(|_| {
            let r = xorshift(&mut seed);
            let src = if r & (1 << 40) != 0 { Operand::Reg(reg(r >> 16)) } else { Operand::Imm((r >> 32) as i32 % 64) };
            Insn::Alu { width: if r & (1 << 41) != 0 { Width::W32 } else { Width::W64 }, op: ops[(r >> 24) as usize % ops.len()], dst: reg(r >> 8), src }
        })
        .collect();
    out.push(Insn::Alu { width: Width::W64, op: AluOp::Mov, dst: Reg::R0, src: Operand::Reg(Reg::R1) });
    out.push(Insn::Exit);
    out
}

/// A deterministic 1,000-instruction program shaped like compiled code: ALU on several
/// registers, stack and context traffic, and forward branches.
pub fn synthetic_program(len: usize) -> Vec<Insn> {
    let mut seed = 0x1234_5678_9abc_def1u64;
    let reg = |n: u64| Reg::new((n % 8) as u8 + 1).expect("r1-r8");
    let mut out = vec![Insn::Alu { width: Width::W64, op: AluOp::Mov, dst: Reg::new(9).unwrap(), src: Operand::Reg(Reg::R1) }];
    while out.len() < len - 2 {
        let r = xorshift(&mut seed);
        let dst = reg(r >> 8);
        let src = reg(r >> 16);
        let insn = match r % 10 {
            0..=4 => {
                let ops = [AluOp::Add, AluOp::Sub, AluOp::Mul, AluOp::Xor, AluOp::Or, AluOp::And, AluOp::Lsh, AluOp::Rsh, AluOp::Mov];
                let op = ops[(r >> 24) as usize % ops.len()];
                let src = if r & (1 << 40) != 0 { Operand::Reg(src) } else { Operand::Imm((r >> 32) as i32 % 64) };
                Insn::Alu { width: if r & (1 << 41) != 0 { Width::W32 } else { Width::W64 }, op, dst, src }
            }
            5 => Insn::Store { size: MemSize::DW, base: Reg::FP, off: -8 * (1 + ((r >> 20) % 32) as i16), src: Operand::Reg(src) },
            6 => Insn::Load { size: MemSize::DW, signed: false, dst, base: Reg::FP, off: -8 * (1 + ((r >> 20) % 32) as i16) },
            7 => Insn::Load { size: MemSize::W, signed: false, dst, base: Reg::new(9).unwrap(), off: 4 * ((r >> 20) % 8) as i16 },
            _ => {
                let left = (len - 2 - out.len()) as i16;
                let off = (((r >> 20) % 16) as i16).min(left - 1).max(0);
                Insn::Jump { width: Width::W64, cond: JmpCond::Gt, dst, src: Operand::Reg(src), off }
            }
        };
        out.push(insn);
    }
    out.push(Insn::Alu { width: Width::W64, op: AluOp::Mov, dst: Reg::R0, src: Operand::Reg(Reg::R1) });
    out.push(Insn::Exit);
    out
}
