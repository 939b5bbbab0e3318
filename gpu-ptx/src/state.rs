//! The per-thread run state of a program on the GPU: a 160-byte block in local memory whose
//! address every translated function and helper receives. The layout is the ABI between the
//! translator, the PTX helpers, the launch wrappers and whoever reads the outcome (the PTX
//! interpreter, the CUDA runner).

/// Offsets (bytes) of the state's fields.
pub mod off {
    /// u32: one of [`super::STATUS_RUNNING`], [`super::STATUS_STOPPED`], [`super::STATUS_FAULT`].
    pub const STATUS: u32 = 0;
    /// u32: instruction index of the fault (`u32::MAX` for a helper's, fixed up by the caller).
    pub const FAULT_INSN: u32 = 4;
    /// u32: one of the `FAULT_*` kinds.
    pub const FAULT_KIND: u32 = 8;
    /// u32: access size in bits 0-7, write flag in bit 8 (out-of-bounds and misaligned faults).
    pub const FAULT_SIZE: u32 = 12;
    /// u64: faulting address, helper id, callback pc or error code, by kind.
    pub const FAULT_ARG: u32 = 16;
    /// u64: loop budget left.
    pub const BUDGET: u32 = 24;
    /// u64: generic address of the bottom of the 4 KiB stack.
    pub const STACK_LO: u32 = 32;
    /// u64: generic address of the context.
    pub const CTX_LO: u32 = 40;
    /// u64: length of the context.
    pub const CTX_LEN: u32 = 48;
    /// u64: length of the context for stores (0 when read-only).
    pub const CTX_WLEN: u32 = 56;
    /// u64: generic address of the map arena (every map's storage, one device allocation).
    pub const ARENA_LO: u32 = 64;
    /// u64: length of the arena.
    pub const ARENA_LEN: u32 = 72;
    /// u64: r0 of a run a helper stopped.
    pub const STOP_VALUE: u32 = 80;
    /// u64: what `bpf_get_current_pid_tgid` returns (the host process).
    pub const PID_TGID: u32 = 88;
    /// u32: non-zero while a callback runs.
    pub const IN_CALLBACK: u32 = 96;
    /// u32: the second word of the fault's argument (helper faults: the helper id).
    pub const FAULT_ARG2: u32 = 100;
    /// u64: bytes of stack from `STACK_LO` (4 KiB in the run kernel; what the program needs in
    /// a probe, see `Program` frames).
    pub const STACK_LEN: u32 = 104;
    /// u64: added (wrapping) to `%globaltimer`, which counts nanoseconds of the host's
    /// `CLOCK_REALTIME`, to give `CLOCK_MONOTONIC`: what `bpf_ktime_get_ns` returns on the CPU,
    /// so that CPU and GPU timestamps of one object compare. The host sets it from its clocks.
    pub const CLOCK_MONOTONIC: u32 = 112;
    /// u64: likewise, to give `CLOCK_BOOTTIME` (`bpf_ktime_get_boot_ns`).
    pub const CLOCK_BOOTTIME: u32 = 120;
    /// u64: what `bpf_get_current_uid_gid` returns (the host process's).
    pub const UID_GID: u32 = 128;
    /// 16 bytes: the host process's name, NUL-padded (`bpf_get_current_comm`).
    pub const COMM: u32 = 136;
}

/// Size of the state block.
pub const STATE_SIZE: u32 = 160;

/// What the host tells a GPU program of itself: the words after pid_tgid in the module global
/// of a patched module and in the run kernel's parameters, in this order.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct HostWords {
    /// See [`off::CLOCK_MONOTONIC`].
    pub clock_monotonic: u64,
    /// See [`off::CLOCK_BOOTTIME`].
    pub clock_boottime: u64,
    /// See [`off::UID_GID`].
    pub uid_gid: u64,
    /// See [`off::COMM`].
    pub comm: [u8; 16],
}

impl HostWords {
    /// The state fields the words go to, in order.
    pub const FIELDS: [u32; 5] = [off::CLOCK_MONOTONIC, off::CLOCK_BOOTTIME, off::UID_GID, off::COMM, off::COMM + 8];

    /// The words, in the order of [`HostWords::FIELDS`].
    pub fn words(&self) -> [u64; 5] {
        let half = |i: usize| u64::from_le_bytes(self.comm[i * 8..i * 8 + 8].try_into().expect("8 bytes"));
        [self.clock_monotonic, self.clock_boottime, self.uid_gid, half(0), half(1)]
    }
}
/// Bytes of stack a run gets in the run kernel (8 frames of 512 bytes, as on the CPU).
pub const STACK_SIZE: u32 = 4096;

/// The run goes on.
pub const STATUS_RUNNING: u32 = 0;
/// A helper ended the run early (`STOP_VALUE` is r0).
pub const STATUS_STOPPED: u32 = 1;
/// The run faulted (`FAULT_*` fields say how).
pub const STATUS_FAULT: u32 = 2;
/// bpftime's `bpftime_exit` (507) ended the run (r0 = 0) and, in a probe spliced into a
/// kernel, ends the GPU thread too, as bpftime's does (PTX `exit`): the kernel's body does not
/// run for it.
pub const STATUS_EXIT_THREAD: u32 = 3;

/// An access outside every region (`FAULT_ARG` = address).
pub const FAULT_OUT_OF_BOUNDS: u32 = 1;
/// A misaligned atomic (`FAULT_ARG` = address).
pub const FAULT_MISALIGNED: u32 = 2;
/// `callx` of an id that names no helper (`FAULT_ARG` = id).
pub const FAULT_UNKNOWN_HELPER: u32 = 3;
/// The loop budget ran out.
pub const FAULT_LOOP_BUDGET: u32 = 4;
/// A helper failed (`FAULT_ARG` = code, `FAULT_ARG2` = helper id).
pub const FAULT_HELPER: u32 = 5;
/// A callback that is not one (`FAULT_ARG` = pc).
pub const FAULT_BAD_CALLBACK: u32 = 6;
/// A callback from inside a callback (`FAULT_ARG` = pc).
pub const FAULT_NESTED_CALLBACK: u32 = 7;

/// Turns a state block read back from the device (or the PTX interpreter) into the run's
/// outcome, as the CPU engines report it.
pub fn outcome(state: &[u8], r0: u64) -> Result<u64, bpftime_vm::RunError> {
    use bpftime_vm::Fault;
    let u32_at = |o: u32| u32::from_le_bytes(state[o as usize..o as usize + 4].try_into().expect("4 bytes"));
    let u64_at = |o: u32| u64::from_le_bytes(state[o as usize..o as usize + 8].try_into().expect("8 bytes"));
    match u32_at(off::STATUS) {
        STATUS_STOPPED | STATUS_EXIT_THREAD => Ok(u64_at(off::STOP_VALUE)),
        STATUS_FAULT => {
            let arg = u64_at(off::FAULT_ARG);
            let size = u32_at(off::FAULT_SIZE);
            let fault = match u32_at(off::FAULT_KIND) {
                FAULT_OUT_OF_BOUNDS => Fault::OutOfBounds { addr: arg, size: size as u8, write: size & 0x100 != 0 },
                FAULT_MISALIGNED => Fault::Misaligned { addr: arg, size: size as u8 },
                FAULT_UNKNOWN_HELPER => Fault::UnknownHelper { id: arg },
                FAULT_LOOP_BUDGET => Fault::LoopBudget,
                FAULT_BAD_CALLBACK => Fault::BadCallback { pc: arg },
                FAULT_NESTED_CALLBACK => Fault::NestedCallback { pc: arg },
                _ => Fault::Helper { id: u32_at(off::FAULT_ARG2), code: arg as i64 },
            };
            Err(bpftime_vm::RunError { insn: u32_at(off::FAULT_INSN) as usize, fault })
        }
        _ => Ok(r0),
    }
}
