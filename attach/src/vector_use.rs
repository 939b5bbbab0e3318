//! Which vector registers a module's code names, so that a probe's stub keeps those and not
//! every register the CPU has.
//!
//! Why that is enough: at a probe point in a function, a value another frame still needs in a
//! vector register was put there by, and will be read by, code of the function's own module,
//! with two exceptions. Code in other modules reaches the function through calls that follow
//! the System V ABI, which preserves no vector register across a call, so those callers keep
//! nothing there. Within the module a caller may keep values in any register its callee does
//! not touch (GCC's `-fipa-ra`), but only in registers its own instructions name. The
//! exceptions are the ABI's argument and result registers (xmm0-7, xmm0-1), which carry
//! values between modules through code that need not name them (`__m256 f(__m256 x) { return
//! x; }` is a bare `ret`): stubs keep those at the full width the CPU has, whatever this scan
//! says (see `hook`).
//!
//! So a stub keeps the registers the module's instructions name, at the widest width they use
//! (and the AVX-512 masks if any instruction names one): a module of integer code needs none.
//! Any doubt (the file on disk is not the one mapped, it does not parse, the module saves or
//! restores the whole state itself) means every register.

use crate::procmaps::{mapping_of, Mapping};
use iced_x86::{Decoder, DecoderOptions, EncodingKind, Instruction, InstructionInfoFactory, Mnemonic, OpKind};
use object::{Object, ObjectSection, ObjectSymbol, SectionKind, SymbolKind};
use std::sync::Mutex;

/// The vector registers some code names.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct VectorUse {
    /// Bit i: vector register i (xmm, ymm or zmm i).
    pub(crate) regs: u32,
    /// The widest access, in bytes: 16 (xmm), 32 (ymm) or 64 (zmm); 0 when none.
    pub(crate) width: i32,
    /// Whether an AVX-512 mask register is named.
    pub(crate) masks: bool,
}

impl VectorUse {
    /// Code that names no vector register.
    pub(crate) const NONE: VectorUse = VectorUse { regs: 0, width: 0, masks: false };
    /// Every register, at full width: what is kept when in doubt.
    pub(crate) const ALL: VectorUse = VectorUse { regs: u32::MAX, width: 64, masks: true };

    /// Adds register `r`, named at `width` bytes.
    fn add_register(&mut self, r: iced_x86::Register, width: i32) {
        if r.is_xmm() || r.is_ymm() || r.is_zmm() {
            self.regs |= 1 << r.number();
            self.width = self.width.max(width);
        } else if r.is_k() {
            self.masks = true;
        }
    }

    /// Adds what `i` names, explicitly or implicitly.
    pub(crate) fn add_instruction(&mut self, i: &Instruction, info: &mut InstructionInfoFactory) {
        if i.encoding() == EncodingKind::Legacy {
            // Legacy (SSE) encodings name xmm registers as operands, except for these, which
            // save, restore or use registers without naming them.
            if matches!(
                i.mnemonic(),
                Mnemonic::Fxrstor
                    | Mnemonic::Fxrstor64
                    | Mnemonic::Fxsave
                    | Mnemonic::Fxsave64
                    | Mnemonic::Xrstor
                    | Mnemonic::Xrstor64
                    | Mnemonic::Xrstors
                    | Mnemonic::Xrstors64
                    | Mnemonic::Xsave
                    | Mnemonic::Xsave64
                    | Mnemonic::Xsavec
                    | Mnemonic::Xsavec64
                    | Mnemonic::Xsaveopt
                    | Mnemonic::Xsaveopt64
                    | Mnemonic::Xsaves
                    | Mnemonic::Xsaves64
                    | Mnemonic::Encodekey128
                    | Mnemonic::Encodekey256
                    | Mnemonic::Loadiwkey
            ) {
                *self = VectorUse::ALL;
                return;
            }
            if !(0..i.op_count()).any(|k| i.op_kind(k) == OpKind::Register && i.op_register(k).is_xmm()) {
                return;
            }
        }
        // VEX, EVEX and the rest, and SSE instructions: every register they use, implicit
        // ones (blendvps's xmm0) included, at the widest width an operand names (the info
        // reports a VEX write as one to the whole zmm register, which it clears above).
        let width = (0..i.op_count())
            .filter_map(|k| match i.op_kind(k) {
                OpKind::Register => Some(i.op_register(k)),
                OpKind::Memory => Some(i.memory_index()),
                _ => None,
            })
            .map(|r| {
                if r.is_zmm() {
                    64
                } else if r.is_ymm() {
                    32
                } else {
                    16
                }
            })
            .max()
            .unwrap_or(16);
        for u in info.info(i).used_registers() {
            self.add_register(u.register(), width);
        }
    }

    fn is_all(&self) -> bool {
        *self == VectorUse::ALL
    }
}

/// What the code `text`, loaded at `ip`, names: decoded in one sweep from its start, and again
/// from each of `starts` (function entries) that the sweep did not reach as an instruction
/// boundary, so that data or padding between functions cannot hide an instruction.
pub(crate) fn scan(text: &[u8], ip: u64, starts: &[u64]) -> VectorUse {
    let mut used = VectorUse::NONE;
    let mut info = InstructionInfoFactory::new();
    let mut boundary = vec![0u64; text.len() / 64 + 1];
    let mut instr = Instruction::default();
    let mut sweep = |from: usize, used: &mut VectorUse, stop_at_known: bool| {
        let mut dec = Decoder::with_ip(64, &text[from..], ip + from as u64, DecoderOptions::NONE);
        while dec.can_decode() && !used.is_all() {
            let at = from + dec.position();
            if stop_at_known && boundary[at / 64] & (1 << (at % 64)) != 0 {
                return;
            }
            boundary[at / 64] |= 1 << (at % 64);
            dec.decode_out(&mut instr);
            if !instr.is_invalid() {
                used.add_instruction(&instr, &mut info);
            }
        }
    };
    sweep(0, &mut used, false);
    for &s in starts {
        if s >= ip && s < ip + text.len() as u64 && !used.is_all() {
            sweep((s - ip) as usize, &mut used, true);
        }
    }
    used
}

/// Files larger than this are not read: every register is kept for them.
const MAX_FILE: u64 = 1 << 30;

/// What the executable code of the module mapped at `addr` names ([`VectorUse::ALL`] when
/// that cannot be told). Cached per file.
pub(crate) fn of_module_at(addr: u64) -> VectorUse {
    static CACHE: Mutex<Vec<((String, u64), VectorUse)>> = Mutex::new(Vec::new());
    let Some(m) = mapping_of(addr) else { return VectorUse::ALL };
    if m.inode == 0 || !m.path.starts_with('/') {
        return VectorUse::ALL;
    }
    let key = (m.dev.clone(), m.inode);
    if let Some((_, u)) = CACHE.lock().unwrap_or_else(|e| e.into_inner()).iter().find(|(k, _)| *k == key) {
        return *u;
    }
    let used = scan_file(&m).unwrap_or(VectorUse::ALL);
    CACHE.lock().unwrap_or_else(|e| e.into_inner()).push((key, used));
    used
}

/// Scans the executable sections of the file behind `m`, if it is still the file mapped.
fn scan_file(m: &Mapping) -> Option<VectorUse> {
    use std::os::unix::fs::MetadataExt;
    let meta = std::fs::metadata(&m.path).ok()?;
    let (major, minor) = m.dev.split_once(':')?;
    let dev = libc::makedev(u32::from_str_radix(major, 16).ok()?, u32::from_str_radix(minor, 16).ok()?);
    if meta.ino() != m.inode || meta.dev() != dev || meta.len() > MAX_FILE {
        return None;
    }
    let data = std::fs::read(&m.path).ok()?;
    let file = object::File::parse(&*data).ok()?;
    let mut starts: Vec<u64> =
        file.symbols().chain(file.dynamic_symbols()).filter(|s| s.kind() == SymbolKind::Text && s.address() != 0).map(|s| s.address()).collect();
    starts.sort_unstable();
    starts.dedup();
    let mut used = VectorUse::NONE;
    let mut any = false;
    for section in file.sections().filter(|s| s.kind() == SectionKind::Text) {
        let text = section.data().ok()?;
        any = true;
        let u = scan(text, section.address(), &starts);
        used = VectorUse { regs: used.regs | u.regs, width: used.width.max(u.width), masks: used.masks || u.masks };
        if used.is_all() {
            break;
        }
    }
    any.then_some(used)
}

#[cfg(test)]
mod tests {
    use super::*;
    use iced_x86::code_asm::*;

    fn code(f: impl FnOnce(&mut CodeAssembler) -> Result<(), IcedError>) -> Vec<u8> {
        let mut a = CodeAssembler::new(64).unwrap();
        f(&mut a).unwrap();
        a.assemble(0x1000).unwrap()
    }

    #[test]
    fn integer_code_names_nothing() {
        let c = code(|a| {
            a.lea(rax, ptr(rdi + rsi))?;
            a.imul_3(rax, rax, 3)?;
            a.push(rbx)?;
            a.pop(rbx)?;
            a.ret()
        });
        assert_eq!(scan(&c, 0x1000, &[]), VectorUse::NONE);
    }

    #[test]
    fn registers_and_widths_as_named() {
        let sse = code(|a| {
            a.movaps(xmm3, xmm9)?;
            a.ret()
        });
        assert_eq!(scan(&sse, 0x1000, &[]), VectorUse { regs: 1 << 3 | 1 << 9, width: 16, masks: false });
        // blendvps names xmm0 implicitly.
        let blend = code(|a| a.blendvps(xmm1, xmm2));
        assert_eq!(scan(&blend, 0x1000, &[]).regs, 0b111);
        let avx = code(|a| a.vaddps(ymm5, ymm5, ymm6));
        assert_eq!(scan(&avx, 0x1000, &[]), VectorUse { regs: 1 << 5 | 1 << 6, width: 32, masks: false });
        let evex = code(|a| {
            a.vpaddd(zmm20, zmm20, zmm1)?;
            a.kmovw(k1, eax)
        });
        assert_eq!(scan(&evex, 0x1000, &[]), VectorUse { regs: 1 << 20 | 1 << 1, width: 64, masks: true });
        // vzeroupper clears upper halves: it reads none.
        assert_eq!(scan(&code(|a| a.vzeroupper()), 0x1000, &[]), VectorUse { regs: 0xffff, width: 16, masks: false });
        // A gather's vector index.
        let gather = code(|a| a.vpgatherdd(ymm1.k1(), dword_ptr(rax + ymm7)));
        assert_eq!(scan(&gather, 0x1000, &[]), VectorUse { regs: 1 << 1 | 1 << 7, width: 32, masks: true });
    }

    #[test]
    fn whole_state_saves_mean_everything() {
        let c = code(|a| a.fxrstor64(ptr(rdi)));
        assert_eq!(scan(&c, 0x1000, &[]), VectorUse::ALL);
        let c = code(|a| a.xsave64(ptr(rdi)));
        assert_eq!(scan(&c, 0x1000, &[]), VectorUse::ALL);
    }

    #[test]
    fn function_starts_resync_the_sweep() {
        // A byte of data before a function makes the sweep decode `movaps xmm7, xmm1` as part
        // of another instruction (0xb8 = mov eax, imm32 swallows four bytes); the symbol start
        // decodes it where it is.
        let f = code(|a| a.movaps(xmm7, xmm1));
        let mut text = vec![0xb8];
        text.extend_from_slice(&f);
        text.extend_from_slice(&[0xc3; 4]);
        assert_eq!(scan(&text, 0x1000, &[]).regs, 0, "the sweep alone misses it");
        assert_eq!(scan(&text, 0x1000, &[0x1001]).regs, 1 << 7 | 1 << 1);
    }

    #[test]
    fn this_test_binary_is_scanned_and_cached() {
        let t = std::time::Instant::now();
        let used = of_module_at(integer_code_names_nothing as *const () as u64);
        eprintln!("this test binary names {used:?} ({:?} to scan)", t.elapsed());
        // Rust's standard library moves memory through xmm registers.
        assert!(used.regs != 0 && used.width >= 16, "{used:?}");
        assert_eq!(of_module_at(integer_code_names_nothing as *const () as u64), used);
        assert_eq!(of_module_at(0x10), VectorUse::ALL, "nothing mapped there");
    }
}
