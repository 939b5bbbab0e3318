//! `struct pt_regs` with the kernel's x86_64 layout, so that programs built for kernel uprobes
//! (`PT_REGS_PARM1(ctx)`, `PT_REGS_RC(ctx)`, CO-RE against vmlinux) read the same offsets.

/// The registers of the probed thread at the probe point (x86_64 kernel layout, 168 bytes).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PtRegs {
    pub r15: u64,
    pub r14: u64,
    pub r13: u64,
    pub r12: u64,
    pub bp: u64,
    pub bx: u64,
    pub r11: u64,
    pub r10: u64,
    pub r9: u64,
    pub r8: u64,
    pub ax: u64,
    pub cx: u64,
    pub dx: u64,
    pub si: u64,
    pub di: u64,
    pub orig_ax: u64,
    pub ip: u64,
    pub cs: u64,
    pub flags: u64,
    pub sp: u64,
    pub ss: u64,
}

impl PtRegs {
    /// The registers of a signal context (`uc_mcontext.gregs`), with `orig_ax` = `ax` and
    /// `ip` as the context has them.
    pub fn from_gregs(g: &[i64; 23]) -> PtRegs {
        let r = |i: libc::c_int| g[i as usize] as u64;
        PtRegs {
            r15: r(libc::REG_R15),
            r14: r(libc::REG_R14),
            r13: r(libc::REG_R13),
            r12: r(libc::REG_R12),
            bp: r(libc::REG_RBP),
            bx: r(libc::REG_RBX),
            r11: r(libc::REG_R11),
            r10: r(libc::REG_R10),
            r9: r(libc::REG_R9),
            r8: r(libc::REG_R8),
            ax: r(libc::REG_RAX),
            cx: r(libc::REG_RCX),
            dx: r(libc::REG_RDX),
            si: r(libc::REG_RSI),
            di: r(libc::REG_RDI),
            orig_ax: r(libc::REG_RAX),
            ip: r(libc::REG_RIP),
            cs: 0x33,
            flags: r(libc::REG_EFL),
            sp: r(libc::REG_RSP),
            ss: 0x2b,
        }
    }

    /// The struct as bytes (the context a program receives).
    pub fn as_bytes(&self) -> &[u8] {
        // SAFETY: PtRegs is repr(C), 21 u64s, no padding.
        unsafe { std::slice::from_raw_parts(self as *const PtRegs as *const u8, std::mem::size_of::<PtRegs>()) }
    }
}

const _: () = assert!(std::mem::size_of::<PtRegs>() == 168);
const _: () = assert!(std::mem::offset_of!(PtRegs, di) == 112);
const _: () = assert!(std::mem::offset_of!(PtRegs, ip) == 128);
