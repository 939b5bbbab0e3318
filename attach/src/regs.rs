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
    /// The struct as bytes (the context a program receives).
    pub fn as_bytes(&self) -> &[u8] {
        // SAFETY: PtRegs is repr(C), 21 u64s, no padding.
        unsafe { std::slice::from_raw_parts(self as *const PtRegs as *const u8, std::mem::size_of::<PtRegs>()) }
    }
}

const _: () = assert!(std::mem::size_of::<PtRegs>() == 168);
const _: () = assert!(std::mem::offset_of!(PtRegs, di) == 112);
const _: () = assert!(std::mem::offset_of!(PtRegs, ip) == 128);
