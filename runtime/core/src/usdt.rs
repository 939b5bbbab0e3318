//! USDT probes (systemtap's `<sys/sdt.h>`) for `usdt/BINARY:PROVIDER:NAME` programs, done as
//! libbpf's loader does them: the probes are read from the binary's `.note.stapsdt` notes,
//! each probe's argument specification (`-4@%edi 8@-16(%rbp) 4@$5`) is encoded into libbpf's
//! `struct __bpf_usdt_spec` in the object's `__bpf_usdt_specs` map, and the probe site becomes
//! a uprobe link whose cookie is the spec id (`usdt.bpf.h` reads it with
//! `bpf_get_attach_cookie`: `LINUX_HAS_BPF_COOKIE` is true here) and whose semaphore, if the
//! probe has one, is raised while it is attached.

use object::{Object, ObjectSection, ObjectSegment};

/// One USDT probe site of a binary.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UsdtProbe {
    /// Provider name.
    pub provider: String,
    /// Probe name.
    pub name: String,
    /// File offset of the probe's `nop`.
    pub offset: u64,
    /// File offset of its semaphore (a 16-bit counter), 0 for none.
    pub semaphore: u64,
    /// The argument specification, as the note has it.
    pub args: String,
}

/// The file offset of virtual address `addr`, through the loadable segments.
fn file_offset(file: &object::File<'_>, addr: u64) -> Option<u64> {
    file.segments().find_map(|s| {
        let (off, size) = s.file_range();
        (addr >= s.address() && addr < s.address() + size).then(|| addr - s.address() + off)
    })
}

/// Every USDT probe in the ELF file at `path`.
pub fn probes_in(path: &str) -> Result<Vec<UsdtProbe>, String> {
    let data = std::fs::read(path).map_err(|e| format!("{path}: {e}"))?;
    let file = object::File::parse(&*data).map_err(|e| format!("{path}: {e}"))?;
    let Some(notes) = file.section_by_name(".note.stapsdt") else { return Ok(vec![]) };
    let notes = notes.data().map_err(|e| format!("{path}: .note.stapsdt: {e}"))?;
    // Prelinked binaries move the probes; `.stapsdt.base` says by how much.
    let base = file.section_by_name(".stapsdt.base").map(|s| s.address());
    let word = |b: &[u8], at: usize| b.get(at..at + 8).map(|w| u64::from_le_bytes(w.try_into().expect("8 bytes")));
    let align4 = |n: usize| (n + 3) & !3;
    let mut out = vec![];
    let mut at = 0;
    while at + 12 <= notes.len() {
        let u32_at = |i: usize| u32::from_le_bytes(notes[i..i + 4].try_into().expect("4 bytes")) as usize;
        let (namesz, descsz, kind) = (u32_at(at), u32_at(at + 4), u32_at(at + 8));
        let name_at = at + 12;
        let desc_at = name_at + align4(namesz);
        let next = desc_at + align4(descsz);
        if next > notes.len() {
            break;
        }
        let desc = &notes[desc_at..desc_at + descsz];
        if kind == 3 && notes.get(name_at..name_at + namesz) == Some(b"stapsdt\0") && descsz >= 24 {
            let (pc, note_base, sema) = (word(desc, 0).unwrap_or(0), word(desc, 8).unwrap_or(0), word(desc, 16).unwrap_or(0));
            let mut strings = desc[24..].split(|&b| b == 0).map(|s| String::from_utf8_lossy(s).into_owned());
            let (provider, name, args) = (strings.next().unwrap_or_default(), strings.next().unwrap_or_default(), strings.next().unwrap_or_default());
            let pc = match base {
                Some(b) if note_base != 0 => pc.wrapping_add(b).wrapping_sub(note_base),
                _ => pc,
            };
            let offset = file_offset(&file, pc).ok_or_else(|| format!("{path}: USDT {provider}:{name} at {pc:#x} is in no segment"))?;
            let semaphore = if sema == 0 {
                0
            } else {
                file_offset(&file, sema).ok_or_else(|| format!("{path}: USDT {provider}:{name}: semaphore {sema:#x} is in no segment"))?
            };
            out.push(UsdtProbe { provider, name, offset, semaphore, args });
        }
        at = next;
    }
    Ok(out)
}

/// Size of libbpf's `struct __bpf_usdt_spec` (12 argument specs, the cookie, the count).
pub const SPEC_SIZE: usize = 208;
/// Most arguments a spec holds (`BPF_USDT_MAX_ARG_CNT`).
const MAX_ARGS: usize = 12;
/// A byte of the spec's tail padding that we set, so that a used slot is never all zero.
const USED_MARK: usize = SPEC_SIZE - 1;

/// `struct pt_regs` offset of an x86-64 register, by any of its names.
fn pt_regs_offset(reg: &str) -> Option<i16> {
    const REGS: [(i16, [&str; 4]); 17] = [
        (128, ["rip", "eip", "", ""]),
        (80, ["rax", "eax", "ax", "al"]),
        (40, ["rbx", "ebx", "bx", "bl"]),
        (88, ["rcx", "ecx", "cx", "cl"]),
        (96, ["rdx", "edx", "dx", "dl"]),
        (104, ["rsi", "esi", "si", "sil"]),
        (112, ["rdi", "edi", "di", "dil"]),
        (32, ["rbp", "ebp", "bp", "bpl"]),
        (152, ["rsp", "esp", "sp", "spl"]),
        (72, ["r8", "r8d", "r8w", "r8b"]),
        (64, ["r9", "r9d", "r9w", "r9b"]),
        (56, ["r10", "r10d", "r10w", "r10b"]),
        (48, ["r11", "r11d", "r11w", "r11b"]),
        (24, ["r12", "r12d", "r12w", "r12b"]),
        (16, ["r13", "r13d", "r13w", "r13b"]),
        (8, ["r14", "r14d", "r14w", "r14b"]),
        (0, ["r15", "r15d", "r15w", "r15b"]),
    ];
    REGS.iter().find(|(_, names)| names.contains(&reg)).map(|(off, _)| *off)
}

fn number(s: &str) -> Option<i64> {
    let (neg, digits) = s.strip_prefix('-').map_or((false, s), |d| (true, d));
    let v = match digits.strip_prefix("0x").or_else(|| digits.strip_prefix("0X")) {
        Some(hex) => i64::from_str_radix(hex, 16).ok()?,
        None => digits.parse().ok()?,
    };
    Some(if neg { v.wrapping_neg() } else { v })
}

/// Encodes a probe's argument specification into libbpf's `struct __bpf_usdt_spec`, with
/// `cookie` as its `usdt_cookie`.
pub fn encode_spec(args: &str, cookie: u64) -> Result<[u8; SPEC_SIZE], String> {
    let mut spec = [0u8; SPEC_SIZE];
    let args: Vec<&str> = args.split_whitespace().collect();
    if args.len() > MAX_ARGS {
        return Err(format!("{} arguments, more than the {MAX_ARGS} libbpf supports", args.len()));
    }
    for (i, arg) in args.iter().enumerate() {
        let bad = || format!("argument {i} `{arg}` is not a form bpftime knows (size@$imm, size@%reg, size@off(%reg))");
        let (size, operand) = match arg.split_once('@') {
            Some((size, op)) => (number(size).ok_or_else(bad)?, op),
            None => (8, *arg),
        };
        if !matches!(size.unsigned_abs(), 1 | 2 | 4 | 8) {
            return Err(bad());
        }
        // (kind: 0 constant, 1 register, 2 memory at register + offset; value or offset; register)
        let (kind, val, reg): (u32, i64, i16) = if let Some(imm) = operand.strip_prefix('$') {
            (0, number(imm).ok_or_else(bad)?, 0)
        } else if let Some(reg) = operand.strip_prefix('%') {
            (1, 0, pt_regs_offset(reg).ok_or_else(bad)?)
        } else if let Some((off, rest)) = operand.split_once('(') {
            let reg = rest.strip_suffix(')').and_then(|r| r.strip_prefix('%')).ok_or_else(bad)?;
            if reg.contains(',') {
                return Err(format!("argument {i} `{arg}`: scaled-index addressing is not supported"));
            }
            let off = if off.is_empty() { 0 } else { number(off).ok_or_else(bad)? };
            (2, off, pt_regs_offset(reg).ok_or_else(bad)?)
        } else {
            return Err(bad());
        };
        let a = &mut spec[16 * i..16 * (i + 1)];
        a[0..8].copy_from_slice(&val.to_le_bytes());
        a[8..12].copy_from_slice(&kind.to_le_bytes());
        a[12..14].copy_from_slice(&reg.to_le_bytes());
        a[14] = (size < 0) as u8;
        a[15] = (64 - 8 * size.unsigned_abs()) as u8;
    }
    spec[192..200].copy_from_slice(&cookie.to_le_bytes());
    spec[200..202].copy_from_slice(&(args.len() as i16).to_le_bytes());
    spec[USED_MARK] = 1;
    Ok(spec)
}

/// Whether a slot of the spec map holds a spec we wrote.
pub fn slot_used(slot: &[u8]) -> bool {
    slot.iter().any(|&b| b != 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encodes_constants_registers_and_memory_operands() {
        let spec = encode_spec("-4@%edi 8@-16(%rbp) 2@$5 8@%r12", 7).unwrap();
        let arg = |i: usize| &spec[16 * i..16 * (i + 1)];
        // -4@%edi: register di (112), signed, 32 bits shifted out
        assert_eq!(arg(0), [0, 0, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0, 112, 0, 1, 32]);
        // 8@-16(%rbp): memory at bp (32) - 16
        assert_eq!(&arg(1)[0..8], (-16i64).to_le_bytes());
        assert_eq!(&arg(1)[8..16], [2, 0, 0, 0, 32, 0, 0, 0]);
        // 2@$5: the constant 5, 48 bits shifted out
        assert_eq!(arg(2), [5, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 48]);
        assert_eq!(&arg(3)[12..14], 24i16.to_le_bytes());
        assert_eq!(&spec[192..200], 7u64.to_le_bytes());
        assert_eq!(&spec[200..202], 4i16.to_le_bytes());
        assert!(encode_spec("8@8(%rax,%rbx,2)", 0).unwrap_err().contains("scaled-index"));
        assert!(encode_spec("3@%eax", 0).is_err());
        assert!(slot_used(&encode_spec("", 0).unwrap()), "a spec without arguments is still a used slot");
    }
}
