//! # bpftime-attach: userspace uprobes on x86_64
//!
//! What it is: an inline-hook engine built on iced-x86 ([`hook`]): it patches a function (or an
//! offset inside it) with a jump to a per-probe stub that hands a kernel-layout [`PtRegs`] to
//! [`ProbeHandler`]s, relocates the overwritten instructions, and patches safely while other
//! threads run the code ([`patch`]). Return probes patch the function's `ret`s where its body
//! allows (or run in the entry's trampoline for functions shorter than that), else replace the
//! return address, with a per-thread shadow stack. Stubs keep the vector registers the probed
//! module's code names (`module_code`) and the calling conventions'. [`symbols`] resolves
//! `BINARY:FUNCTION[+OFFSET]` targets in the executable and shared libraries from
//! `/proc/self/maps` and ELF symbol tables.
//!
//! What it is not: it knows nothing of eBPF; the agent connects handlers to programs.
//!
//! Unsafe code is confined to `patch.rs` (code writing, signals, mappings), `hook.rs` (the
//! dispatch functions the stubs call, the leaked handler lists, copying a stub into its fresh
//! page) and `PtRegs::as_bytes`.

/// `eprintln!` that never panics: std's panics when stderr cannot be written (a closed pipe in
/// a process that ignores SIGPIPE gives EPIPE), which inside someone else's process would end
/// our work half done or, across `extern "C"`, abort the process. A message that cannot be
/// written is dropped. (Defined before the modules, so that it is the `eprintln!` they use.)
macro_rules! eprintln {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        let _ = writeln!(std::io::stderr(), $($arg)*);
    }};
}

pub mod hook;
mod landing;
mod module_code;
mod patch;
pub mod procmaps;
pub mod regs;
pub mod sampling;
pub mod signals;
pub mod symbols;
pub mod syscalls;

pub use hook::{
    attach, detach, forget_unloaded, in_probe, in_signal_handler, original_first_byte, patched_returns, real_return_address, run_as_hit, set_agent_state,
    set_handler_stacks, set_return_patching, signal_stack_changed, site_method, site_vectors, unwind_past_return_probe, without_probes,
    yield_to_foreign_breakpoints, AttachError, Method, ProbeHandler, ProbeId, ProbeKind, SiteInfo, MISSED, NEST_LEVELS,
};
pub use module_code::{set_facts_store, FactsStore};
pub use patch::{hold_self_mem, register_sync_core, MOVED_THREADS, TRAPS_REDIRECTED};
pub use regs::PtRegs;
pub use symbols::{add_to_semaphore, resolve, resolve_in_process, ResolveError, Resolved, Target};

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::sync::Arc;

    #[inline(never)]
    #[no_mangle]
    pub extern "C" fn bpftime_attach_test_target(a: u64, b: u64) -> u64 {
        // Enough work that the prologue is more than a jump.
        let mut x = a;
        for i in 0..b {
            x = x.wrapping_mul(31).wrapping_add(i);
        }
        std::hint::black_box(x)
    }

    /// Counts hits and keeps di, si, ax of the last one.
    #[derive(Default)]
    struct Count(AtomicU64, AtomicU64, AtomicU64, AtomicU64);

    impl ProbeHandler for Count {
        fn on_hit(&self, regs: &PtRegs, _level: usize) -> Option<u64> {
            self.0.fetch_add(1, Ordering::Relaxed);
            self.1.store(regs.di, Ordering::Relaxed);
            self.2.store(regs.si, Ordering::Relaxed);
            self.3.store(regs.ax, Ordering::Relaxed);
            None
        }
    }

    #[test]
    fn entry_and_return_probes_see_arguments_and_results() {
        let addr = bpftime_attach_test_target as *const () as u64;
        let want = bpftime_attach_test_target(3, 4);
        let entry = Arc::new(Count::default());
        let ret = Arc::new(Count::default());
        let info = SiteInfo { function_size: 0, at_entry: true, padding: 0, returns_twice: false };
        let e = attach(addr, info, ProbeKind::Entry, entry.clone()).unwrap();
        let r = attach(addr, info, ProbeKind::Return, ret.clone()).unwrap();
        assert_eq!(std::hint::black_box(bpftime_attach_test_target)(3, 4), want);
        assert_eq!(entry.0.load(Ordering::Relaxed), 1);
        assert_eq!((entry.1.load(Ordering::Relaxed), entry.2.load(Ordering::Relaxed)), (3, 4), "di, si at entry");
        assert_eq!(ret.0.load(Ordering::Relaxed), 1);
        assert_eq!(ret.3.load(Ordering::Relaxed), want, "ax = result at return");
        detach(e).unwrap();
        detach(r).unwrap();
        assert_eq!(std::hint::black_box(bpftime_attach_test_target)(3, 4), want);
        assert_eq!(entry.0.load(Ordering::Relaxed), 1, "detached: no more hits");
    }

    /// Like `bpftime_attach_test_target`, for a test of its own (tests run in parallel).
    #[inline(never)]
    #[no_mangle]
    pub extern "C" fn bpftime_attach_multi_target(a: u64, b: u64) -> u64 {
        let mut x = a;
        for i in 0..b {
            x = x.wrapping_mul(17).wrapping_add(i);
        }
        std::hint::black_box(x)
    }

    #[test]
    fn several_handlers_on_one_function_each_fire_and_detach_alone() {
        let addr = bpftime_attach_multi_target as *const () as u64;
        let info = SiteInfo { function_size: 0, at_entry: true, padding: 0, returns_twice: false };
        let hs: Vec<Arc<Count>> = (0..3).map(|_| Arc::new(Count::default())).collect();
        let ids: Vec<ProbeId> = hs.iter().map(|h| attach(addr, info, ProbeKind::Entry, h.clone()).unwrap()).collect();
        let r = Arc::new(Count::default());
        let rid = attach(addr, info, ProbeKind::Return, r.clone()).unwrap();
        let call = |a| std::hint::black_box(bpftime_attach_multi_target)(a, 2);
        call(5);
        detach(ids[1]).unwrap();
        call(6);
        let hits: Vec<u64> = hs.iter().map(|h| h.0.load(Ordering::Relaxed)).collect();
        assert_eq!(hits, [2, 1, 2]);
        assert_eq!(hs[2].1.load(Ordering::Relaxed), 6, "di of the last call");
        assert_eq!(r.0.load(Ordering::Relaxed), 2);
        for id in [ids[0], ids[2], rid] {
            detach(id).unwrap();
        }
        call(7);
        assert_eq!(hs[0].0.load(Ordering::Relaxed), 2);
    }

    // Two functions whose `ret` has no room for a jump of its own: `zero` (xor eax, eax; ret,
    // then int3 padding: the entry's jump spills into it) and `short` (3a ^ b in seven bytes,
    // then its ret, then the next function at once).
    std::arch::global_asm!(
        ".globl bpftime_attach_zero",
        ".type bpftime_attach_zero, @function",
        ".p2align 4",
        "bpftime_attach_zero:",
        "xor eax, eax",
        "ret",
        ".size bpftime_attach_zero, . - bpftime_attach_zero",
        ".p2align 4, 0xcc",
        ".globl bpftime_attach_short",
        ".type bpftime_attach_short, @function",
        "bpftime_attach_short:",
        "lea rax, [rdi + rdi * 2]",
        "xor rax, rsi",
        "ret",
        ".size bpftime_attach_short, . - bpftime_attach_short",
        ".globl bpftime_attach_short_next",
        ".type bpftime_attach_short_next, @function",
        "bpftime_attach_short_next:",
        "ret",
        ".size bpftime_attach_short_next, . - bpftime_attach_short_next",
    );

    // The same two again, for the test that writes over them as the kernel would.
    std::arch::global_asm!(
        ".globl bpftime_attach_zero_k",
        ".type bpftime_attach_zero_k, @function",
        ".p2align 4",
        "bpftime_attach_zero_k:",
        "xor eax, eax",
        "ret",
        ".size bpftime_attach_zero_k, . - bpftime_attach_zero_k",
        ".p2align 4, 0xcc",
        ".globl bpftime_attach_short_k",
        ".type bpftime_attach_short_k, @function",
        "bpftime_attach_short_k:",
        "lea rax, [rdi + rdi * 2]",
        "xor rax, rsi",
        "ret",
        ".size bpftime_attach_short_k, . - bpftime_attach_short_k",
        ".p2align 4, 0xcc",
    );

    // A loop back to the second instruction: no jump fits over the first five bytes, so a
    // probe on it is an `int3`.
    std::arch::global_asm!(
        ".globl bpftime_attach_loop_k",
        ".type bpftime_attach_loop_k, @function",
        ".p2align 4",
        "bpftime_attach_loop_k:",
        "xor eax, eax",
        "2:",
        "add rax, rdi",
        "dec rsi",
        "jnz 2b",
        "ret",
        ".size bpftime_attach_loop_k, . - bpftime_attach_loop_k",
        ".p2align 4, 0xcc",
    );

    unsafe extern "C" {
        fn bpftime_attach_loop_k(a: u64, b: u64) -> u64;
        fn bpftime_attach_zero(a: u64, b: u64) -> u64;
        fn bpftime_attach_short(a: u64, b: u64) -> u64;
        fn bpftime_attach_zero_k(a: u64, b: u64) -> u64;
        fn bpftime_attach_short_k(a: u64, b: u64) -> u64;
    }

    /// Where a function's `ret` follows the instructions its entry's jump covers, the
    /// trampoline runs that `ret` and the return probes before it: no return address is
    /// replaced, alone (the entry jumps straight to the trampoline) or with an entry probe.
    #[test]
    fn tiny_functions_run_their_return_probes_in_the_trampoline() {
        let cases: [(&str, unsafe extern "C" fn(u64, u64) -> u64, fn(u64, u64) -> u64); 2] =
            [("bpftime_attach_zero", bpftime_attach_zero, |_, _| 0), ("bpftime_attach_short", bpftime_attach_short, |a, b| (a * 3) ^ b)];
        for (name, f, want) in cases {
            let addr = f as *const () as u64;
            let r = resolve(&Target::parse(&format!("/proc/self/exe:{name}")).unwrap()).unwrap();
            assert_eq!(r.addr, addr);
            let original = patch::read_code(addr, 8).unwrap();
            // SAFETY: both assembly functions take two integers and return one.
            let call = |a: u64| unsafe { std::hint::black_box(f)(a, 5) };
            let info = SiteInfo { function_size: r.function_size, at_entry: true, padding: r.padding, returns_twice: r.returns_twice };
            let rets = Arc::new(Count::default());
            let x = attach(addr, info, ProbeKind::Return, rets.clone()).unwrap();
            assert_eq!(patched_returns(addr), 1, "{name}");
            for a in 0..10 {
                assert_eq!(call(a), want(a, 5), "{name}");
            }
            assert_eq!((rets.0.load(Ordering::Relaxed), rets.3.load(Ordering::Relaxed)), (10, want(9, 5)), "{name}: returns, last result");
            // The original `ret` no longer runs: a probe there is refused.
            let ret_at = addr + r.function_size - 1;
            let mid = SiteInfo { function_size: 0, at_entry: false, padding: 0, returns_twice: false };
            assert!(matches!(attach(ret_at, mid, ProbeKind::Entry, rets.clone()), Err(AttachError::Unpatchable { .. })), "{name}");
            let entries = Arc::new(Count::default());
            let e = attach(addr, info, ProbeKind::Entry, entries.clone()).unwrap();
            assert_eq!(call(20), want(20, 5));
            assert_eq!((entries.0.load(Ordering::Relaxed), entries.1.load(Ordering::Relaxed)), (1, 20), "{name}: entry, first argument");
            detach(e).unwrap();
            assert_eq!(call(30), want(30, 5));
            assert_eq!((entries.0.load(Ordering::Relaxed), rets.0.load(Ordering::Relaxed)), (1, 12), "{name}");
            detach(x).unwrap();
            assert_eq!(patch::read_code(addr, 8).unwrap(), original, "{name}: its own bytes again");
            assert_eq!(call(40), want(40, 5));
            assert_eq!(rets.0.load(Ordering::Relaxed), 12);
        }
    }

    /// An `int3` site whose `int3` someone else took away (a kernel uprobe that was there first
    /// restores the file's byte when it goes) is armed again by the next look.
    #[test]
    fn a_trap_taken_away_is_put_back() {
        let addr = bpftime_attach_loop_k as *const () as u64;
        let r = resolve(&Target::parse("/proc/self/exe:bpftime_attach_loop_k").unwrap()).unwrap();
        let original = patch::read_code(addr, 1).unwrap();
        let info = SiteInfo { function_size: r.function_size, at_entry: true, padding: r.padding, returns_twice: false };
        let hits = Arc::new(Count::default());
        let id = attach(addr, info, ProbeKind::Entry, hits.clone()).unwrap();
        assert_eq!(site_method(addr).map(|m| m.0), Some(Method::Trap));
        // SAFETY: the assembly function takes two integers and returns one.
        let call = |n: u64| unsafe { std::hint::black_box(bpftime_attach_loop_k)(7, n) };
        assert_eq!(call(3), 21);
        patch::write_code(addr, &original).unwrap();
        assert_eq!(call(3), 21);
        assert_eq!(hits.0.load(Ordering::Relaxed), 1, "the trap was gone");
        yield_to_foreign_breakpoints();
        assert_eq!(call(2), 14);
        assert_eq!(hits.0.load(Ordering::Relaxed), 2, "armed again");
        detach(id).unwrap();
        assert_eq!(patch::read_code(addr, 1).unwrap(), original);
    }

    /// Many sites' bytes in few system calls; an unreadable address reads as None and the
    /// others still read.
    #[test]
    fn read_many_reads_around_unreadable_addresses() {
        // Code nothing patches: this test's own.
        let f = read_many_reads_around_unreadable_addresses as *const () as u64;
        let mut want = [0u8; 6];
        patch::read_memory(f, &mut want).unwrap();
        let got = patch::read_many(&[f, 8, f + 1, 16]);
        assert_eq!(got[0].as_ref().map(|b| &b[..]), Some(&want[..5]));
        assert_eq!((got[1], got[3]), (None, None));
        assert_eq!(got[2].as_ref().map(|b| &b[..]), Some(&want[1..]));
    }

    /// As a kernel uprobe placed over our jump would: run the function's first instruction
    /// out of line, resume after it (inside the jump), later be noticed and given the
    /// function's bytes back, then go, putting back the first byte. A return probe run in the
    /// trampoline (`zero`: the jump to the trampoline) and an entry probe (`short`: the jump to
    /// the stub); both first instructions are shorter than the jump.
    #[test]
    fn a_kernel_uprobe_written_over_a_jump_finds_an_int3_after_the_first_instruction() {
        type F = unsafe extern "C" fn(u64, u64) -> u64;
        // (name, function, first instruction's length, the kind of probe)
        let cases: [(&str, F, u64, ProbeKind); 2] =
            [("bpftime_attach_zero_k", bpftime_attach_zero_k, 2, ProbeKind::Return), ("bpftime_attach_short_k", bpftime_attach_short_k, 4, ProbeKind::Entry)];
        for (name, f, first, kind) in cases {
            let addr = f as *const () as u64;
            let r = resolve(&Target::parse(&format!("/proc/self/exe:{name}")).unwrap()).unwrap();
            let original = patch::read_code(addr, 5).unwrap();
            let info = SiteInfo { function_size: r.function_size, at_entry: true, padding: r.padding, returns_twice: r.returns_twice };
            let hits = Arc::new(Count::default());
            let id = attach(addr, info, kind, hits.clone()).unwrap();
            assert_eq!(patch::read_code(addr + first, 1).unwrap(), [0xcc], "{name}: the byte after the first instruction");
            // The kernel ran the first instruction (`zero`'s result is then 0 in rax; `short`'s
            // lea leaves 3a in rax) and resumes the thread after it.
            // SAFETY: the address of an instruction boundary of a function of type F, which
            // the trampoline finishes as F would (the first instruction's effect aside).
            let resumed: F = unsafe { std::mem::transmute(addr + first) };
            // SAFETY: see above; the arguments are plain integers.
            let result = unsafe { std::hint::black_box(resumed)(7, 5) };
            if kind == ProbeKind::Return {
                assert_eq!(hits.0.load(Ordering::Relaxed), 1, "{name}: the return probe ran");
            } else {
                assert_eq!(hits.0.load(Ordering::Relaxed), 0, "{name}: no entry probe (the kernel's ran)");
                let _ = result;
            }
            // The kernel's int3 over the jump: noticed, the function's bytes back behind it.
            patch::write_code(addr, &[0xcc]).unwrap();
            // (Another test's attach may look first: what counts is that it was given back.)
            yield_to_foreign_breakpoints();
            let mut want = original.clone();
            want[0] = 0xcc;
            let mut now = vec![0u8; 5];
            patch::read_memory(addr, &mut now).unwrap();
            assert_eq!(now, want, "{name}: the kernel's int3, then the function's own bytes");
            // The kernel's probe goes: the function is its own again, and stays so.
            patch::write_code(addr, &original[..1]).unwrap();
            // SAFETY: both assembly functions take two integers and return one.
            assert_eq!(unsafe { std::hint::black_box(f)(7, 5) }, if kind == ProbeKind::Return { 0 } else { 21 ^ 5 }, "{name}");
            assert!(yield_to_foreign_breakpoints().is_empty());
            detach(id).unwrap();
            assert_eq!(patch::read_code(addr, 5).unwrap(), original, "{name}");
            // Once its probes are gone, a new one patches the function again.
            let again = attach(addr, info, kind, hits.clone()).unwrap();
            assert_eq!(patch::read_code(addr + first, 1).unwrap(), [0xcc], "{name}: patched again");
            detach(again).unwrap();
        }
    }

    /// Sets xmm0-12 to all-ones (and the upper halves of ymm8-12, with AVX) and changes the
    /// flags, as a handler calling vectorised library code could.
    pub(crate) struct Clobber(pub(crate) AtomicU64);

    impl ProbeHandler for Clobber {
        fn on_hit(&self, _: &PtRegs, _: usize) -> Option<u64> {
            self.0.fetch_add(1, Ordering::Relaxed);
            // SAFETY: only overwrites registers declared as clobbered (and the flags).
            unsafe {
                std::arch::asm!(
                    "pcmpeqd xmm0, xmm0", "pcmpeqd xmm1, xmm1", "pcmpeqd xmm2, xmm2", "pcmpeqd xmm3, xmm3",
                    "pcmpeqd xmm4, xmm4", "pcmpeqd xmm5, xmm5", "pcmpeqd xmm6, xmm6", "pcmpeqd xmm7, xmm7",
                    "pcmpeqd xmm8, xmm8", "pcmpeqd xmm9, xmm9", "pcmpeqd xmm10, xmm10", "pcmpeqd xmm12, xmm12", "cmp rsp, 0",
                    out("xmm0") _, out("xmm1") _, out("xmm2") _, out("xmm3") _, out("xmm4") _, out("xmm5") _,
                    out("xmm6") _, out("xmm7") _, out("xmm8") _, out("xmm9") _, out("xmm10") _, out("xmm12") _,
                );
            }
            if std::arch::is_x86_feature_detected!("avx") {
                // SAFETY: AVX is present; only ymm8-12 change.
                unsafe {
                    std::arch::asm!(
                        "vpcmpeqd ymm8, ymm8, ymm8", "vpcmpeqd ymm9, ymm9, ymm9", "vpcmpeqd ymm10, ymm10, ymm10", "vpcmpeqd ymm12, ymm12, ymm12",
                        out("xmm8") _, out("xmm9") _, out("xmm10") _, out("xmm12") _, options(nostack),
                    )
                };
            }
            None
        }
    }

    #[inline(never)]
    #[no_mangle]
    pub extern "C" fn bpftime_attach_float_target(a: f64, b: f64, c: f64, d: f64, e: f64, f: f64, g: f64, h: f64) -> f64 {
        std::hint::black_box(a + 2.0 * b + 3.0 * c + 4.0 * d + 5.0 * e + 6.0 * f + 7.0 * g + 8.0 * h)
    }

    #[test]
    fn float_arguments_and_results_survive_handlers_that_use_vector_registers() {
        let addr = bpftime_attach_float_target as *const () as u64;
        let call = || std::hint::black_box(bpftime_attach_float_target)(1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0);
        let want = call();
        assert_eq!(want, 204.0);
        let h = Arc::new(Clobber(AtomicU64::new(0)));
        let info = SiteInfo { function_size: 0, at_entry: true, padding: 0, returns_twice: false };
        let e = attach(addr, info, ProbeKind::Entry, h.clone()).unwrap();
        let r = attach(addr, info, ProbeKind::Return, h.clone()).unwrap();
        assert_eq!(call(), want, "xmm0-7 (arguments) and xmm0 (result) kept");
        assert_eq!(h.0.load(Ordering::Relaxed), 2);
        detach(e).unwrap();
        detach(r).unwrap();
    }

    // A function with a probe point in its middle where the flags, xmm8 and the red zone are
    // all live: returns (x < 5) + 2 * x.
    std::arch::global_asm!(
        ".globl bpftime_attach_mid_target",
        "bpftime_attach_mid_target:",
        "mov [rsp - 8], rdi",
        "movq xmm8, rdi",
        "cmp rdi, 5",
        ".globl bpftime_attach_mid_point",
        "bpftime_attach_mid_point:",
        "mov eax, 0",
        "setl al",
        "movq rcx, xmm8",
        "add rax, rcx",
        "add rax, [rsp - 8]",
        "ret",
    );

    extern "C" {
        fn bpftime_attach_mid_target(x: u64) -> u64;
        fn bpftime_attach_mid_point();
    }

    #[test]
    fn mid_function_probe_keeps_flags_vector_registers_and_red_zone() {
        // SAFETY: the assembly function above takes one integer and follows the C ABI.
        let call = |x| unsafe { bpftime_attach_mid_target(std::hint::black_box(x)) };
        assert_eq!((call(3), call(9)), (7, 18));
        let h = Arc::new(Clobber(AtomicU64::new(0)));
        let point = bpftime_attach_mid_point as *const () as u64;
        let id = attach(point, SiteInfo { function_size: 0, at_entry: false, padding: 0, returns_twice: false }, ProbeKind::Entry, h.clone()).unwrap();
        assert_eq!((call(3), call(9)), (7, 18));
        assert_eq!(h.0.load(Ordering::Relaxed), 2);
        detach(id).unwrap();
    }
}

#[cfg(test)]
mod wide_vectors {
    //! ymm upper halves at an entry (`__m256` arguments) and mid-function: handlers that run
    //! AVX code (and `vzeroupper`, as glibc's string functions end with) must not change them.
    use super::*;
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::sync::Arc;

    std::arch::global_asm!(
        // ymm0 + ymm1 as 8 floats, after 8 bytes of nops (room for the jump).
        ".globl bpftime_attach_ymm_target",
        "bpftime_attach_ymm_target:",
        "nop dword ptr [rax]",
        "nop dword ptr [rax]",
        "vaddps ymm0, ymm0, ymm1",
        "ret",
        // rdi: a, b, out (32 bytes each); calls the target with ymm0 = a, ymm1 = b.
        ".globl bpftime_attach_ymm_call",
        "bpftime_attach_ymm_call:",
        "vmovdqu ymm0, [rdi]",
        "vmovdqu ymm1, [rdi + 32]",
        "push rdi",
        "call bpftime_attach_ymm_target",
        "pop rdi",
        "vmovdqu [rdi + 64], ymm0",
        "vzeroupper",
        "ret",
        // rdi: in, rsi: out (32 bytes each); ymm8 is live across the probe point.
        ".globl bpftime_attach_mid_ymm_target",
        "bpftime_attach_mid_ymm_target:",
        "vmovdqu ymm8, [rdi]",
        ".globl bpftime_attach_mid_ymm_point",
        "bpftime_attach_mid_ymm_point:",
        "vmovdqu [rsi], ymm8",
        "vzeroupper",
        "ret",
    );

    extern "C" {
        fn bpftime_attach_ymm_target();
        fn bpftime_attach_ymm_call(buf: *mut [f32; 24]);
        fn bpftime_attach_mid_ymm_target(input: *const [u64; 4], out: *mut [u64; 4]);
        fn bpftime_attach_mid_ymm_point();
    }

    // bpftime_attach_call_zmm(in, out, f): zmm0-7 from `in` (8 x 64 bytes), a call of `f`
    // with r11 = bpftime_attach_store_zmm and r10 = `out`, then zmm0-7 to `out` (the same
    // with ymm0-7 and 32-byte strides in the _ymm pair). A function that jumps on to r11
    // has the registers stored as it had them, and returns to the caller through it.
    std::arch::global_asm!(
        ".globl bpftime_attach_call_zmm",
        "bpftime_attach_call_zmm:",
        "vmovdqu64 zmm0, [rdi]",
        "vmovdqu64 zmm1, [rdi + 64]",
        "vmovdqu64 zmm2, [rdi + 128]",
        "vmovdqu64 zmm3, [rdi + 192]",
        "vmovdqu64 zmm4, [rdi + 256]",
        "vmovdqu64 zmm5, [rdi + 320]",
        "vmovdqu64 zmm6, [rdi + 384]",
        "vmovdqu64 zmm7, [rdi + 448]",
        "mov r10, rsi",
        "lea r11, [rip + bpftime_attach_store_zmm]",
        "sub rsp, 8",
        "call rdx",
        "call bpftime_attach_store_zmm",
        "add rsp, 8",
        "vzeroupper",
        "ret",
        "bpftime_attach_store_zmm:",
        "vmovdqu64 [r10], zmm0",
        "vmovdqu64 [r10 + 64], zmm1",
        "vmovdqu64 [r10 + 128], zmm2",
        "vmovdqu64 [r10 + 192], zmm3",
        "vmovdqu64 [r10 + 256], zmm4",
        "vmovdqu64 [r10 + 320], zmm5",
        "vmovdqu64 [r10 + 384], zmm6",
        "vmovdqu64 [r10 + 448], zmm7",
        "ret",
        ".globl bpftime_attach_call_ymm",
        "bpftime_attach_call_ymm:",
        "vmovdqu ymm0, [rdi]",
        "vmovdqu ymm1, [rdi + 32]",
        "vmovdqu ymm2, [rdi + 64]",
        "vmovdqu ymm3, [rdi + 96]",
        "vmovdqu ymm4, [rdi + 128]",
        "vmovdqu ymm5, [rdi + 160]",
        "vmovdqu ymm6, [rdi + 192]",
        "vmovdqu ymm7, [rdi + 224]",
        "mov r10, rsi",
        "lea r11, [rip + bpftime_attach_store_ymm]",
        "sub rsp, 8",
        "call rdx",
        "call bpftime_attach_store_ymm",
        "add rsp, 8",
        "vzeroupper",
        "ret",
        "bpftime_attach_store_ymm:",
        "vmovdqu [r10], ymm0",
        "vmovdqu [r10 + 32], ymm1",
        "vmovdqu [r10 + 64], ymm2",
        "vmovdqu [r10 + 96], ymm3",
        "vmovdqu [r10 + 128], ymm4",
        "vmovdqu [r10 + 160], ymm5",
        "vmovdqu [r10 + 192], ymm6",
        "vmovdqu [r10 + 224], ymm7",
        "ret",
    );

    extern "C" {
        fn bpftime_attach_call_zmm(input: *const u8, out: *mut u8, f: u64);
        fn bpftime_attach_call_ymm(input: *const u8, out: *mut u8, f: u64);
    }

    /// Functions in a module whose code names no vector register (assembled into a library of
    /// their own) pass vectors through between callers and callees elsewhere: their probes
    /// keep those registers at full width all the same. `pass` (nops and a `ret`) returns what
    /// it was given in xmm0-1; `pass_on` (nops, then a jump to r11) hands all eight on.
    #[test]
    fn vectors_passed_through_a_module_that_names_none_survive_its_probes() {
        if !avx() {
            return;
        }
        let dir = std::env::temp_dir().join(format!("bpftime-attach-pass-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let (src, so) = (dir.join("pass.s"), dir.join("libpass.so"));
        let nops = "\tnopl (%rax)\n".repeat(4);
        let asm = format!(
            ".text\n.globl pass\n.type pass, @function\npass:\n{nops}\tret\n.size pass, . - pass\n\
             .globl pass_on\n.type pass_on, @function\npass_on:\n{nops}\tjmp *%r11\n.size pass_on, . - pass_on\n"
        );
        std::fs::write(&src, asm).unwrap();
        let cc = std::process::Command::new("cc").args(["-shared", "-nostdlib", "-o"]).arg(&so).arg(&src).output().expect("run cc");
        assert!(cc.status.success(), "{}", String::from_utf8_lossy(&cc.stderr));
        let path = std::ffi::CString::new(so.to_str().unwrap()).unwrap();
        // SAFETY: a library with no initialisers; the handle is never closed.
        let lib = unsafe { libc::dlopen(path.as_ptr(), libc::RTLD_NOW) };
        assert!(!lib.is_null());
        let zmm = std::arch::is_x86_feature_detected!("avx512f");
        let (bytes, bits) = if zmm { (8 * 64, 512) } else { (8 * 32, 256) };
        let input: Vec<u8> = (0..512).map(|i| (i * 7 + 1) as u8).collect();
        let call = |f: u64| {
            let mut out = vec![0u8; 512];
            // SAFETY: reads 512 bytes of `input`, writes 512 of `out`, calls `f` (one of the
            // functions above: a `ret`, or a jump to the store routine).
            unsafe {
                if zmm {
                    bpftime_attach_call_zmm(input.as_ptr(), out.as_mut_ptr(), f)
                } else {
                    bpftime_attach_call_ymm(input.as_ptr(), out.as_mut_ptr(), f)
                }
            }
            out[..bytes].to_vec()
        };
        let h = Arc::new(AvxClobber(AtomicU64::new(0)));
        let mut hits = 0;
        for (name, results) in [("pass", bytes / 4), ("pass_on", bytes)] {
            let r = resolve(&Target::parse(&format!("{}:{name}", so.display())).unwrap()).unwrap();
            let f = r.addr;
            assert_eq!(call(f), input[..bytes], "{name}");
            let info = SiteInfo { function_size: r.function_size, at_entry: true, padding: r.padding, returns_twice: r.returns_twice };
            // At entry: the arguments that may be read later (all eight where the function
            // jumps on; where it only returns, those it returns).
            let e = attach(f, info, ProbeKind::Entry, h.clone()).unwrap();
            // (Neither reads rdi or rsi, so either may follow Win64's convention: the low halves
            // of xmm6-15 are kept for its callers.)
            let regs = if name == "pass" { "0-1 ({bits} bits) + xmm6-15" } else { "0-7 ({bits} bits) + xmm8-15" }.replace("{bits}", &bits.to_string());
            assert_eq!(site_vectors(f).unwrap(), format!("xmm{regs} (128 bits) at entry"));
            assert_eq!(call(f)[..results], input[..results], "{name}: arguments at entry, at full width");
            detach(e).unwrap();
            hits += 1;
            if name == "pass" {
                // At its return: the results.
                let x = attach(f, info, ProbeKind::Return, h.clone()).unwrap();
                assert_eq!(patched_returns(f), 1);
                let only_results = format!("xmm0-1 ({bits} bits) + xmm6-15 (128 bits)");
                assert_eq!(site_vectors(f).unwrap(), format!("{only_results} at entry, {only_results} at returns"));
                assert_eq!(call(f)[..results], input[..results], "results at the return, at full width");
                detach(x).unwrap();
                hits += 1;
            }
        }
        assert_eq!(h.0.load(Ordering::Relaxed), hits);
        let _ = std::fs::remove_dir_all(&dir);
    }

    /// Sets ymm0-ymm8 to all-ones, then clears every upper half (`vzeroupper`).
    struct AvxClobber(AtomicU64);

    impl ProbeHandler for AvxClobber {
        fn on_hit(&self, _: &PtRegs, _: usize) -> Option<u64> {
            self.0.fetch_add(1, Ordering::Relaxed);
            // SAFETY: AVX is present (checked by the tests); only clobbered registers change.
            unsafe {
                std::arch::asm!(
                    "vpcmpeqd ymm0, ymm0, ymm0", "vpcmpeqd ymm1, ymm1, ymm1", "vpcmpeqd ymm2, ymm2, ymm2",
                    "vpcmpeqd ymm3, ymm3, ymm3", "vpcmpeqd ymm4, ymm4, ymm4", "vpcmpeqd ymm5, ymm5, ymm5",
                    "vpcmpeqd ymm6, ymm6, ymm6", "vpcmpeqd ymm7, ymm7, ymm7", "vpcmpeqd ymm8, ymm8, ymm8", "vzeroupper",
                    out("xmm0") _, out("xmm1") _, out("xmm2") _, out("xmm3") _, out("xmm4") _,
                    out("xmm5") _, out("xmm6") _, out("xmm7") _, out("xmm8") _,
                    options(nostack),
                );
            }
            None
        }
    }

    fn avx() -> bool {
        let ok = std::arch::is_x86_feature_detected!("avx");
        if !ok {
            eprintln!("skipped: no AVX on this machine");
        }
        ok
    }

    #[test]
    fn m256_arguments_and_results_survive_an_entry_probe() {
        if !avx() {
            return;
        }
        let call = || {
            let mut buf = [0f32; 24];
            for i in 0..8 {
                buf[i] = i as f32;
                buf[8 + i] = 100.0 * i as f32;
            }
            // SAFETY: the assembly above reads 64 bytes and writes 32 after them.
            unsafe { bpftime_attach_ymm_call(&mut buf) };
            buf[16..24].to_vec()
        };
        let want: Vec<f32> = (0..8).map(|i| 101.0 * i as f32).collect();
        assert_eq!(call(), want);
        let h = Arc::new(AvxClobber(AtomicU64::new(0)));
        let addr = bpftime_attach_ymm_target as *const () as u64;
        let info = SiteInfo { function_size: 0, at_entry: true, padding: 0, returns_twice: false };
        let e = attach(addr, info, ProbeKind::Entry, h.clone()).unwrap();
        let r = attach(addr, info, ProbeKind::Return, h.clone()).unwrap();
        assert_eq!(call(), want, "all 8 lanes of ymm0 and ymm1 at entry, and of ymm0 at return");
        assert_eq!(h.0.load(Ordering::Relaxed), 2);
        detach(e).unwrap();
        detach(r).unwrap();
    }

    #[test]
    fn a_mid_function_probe_keeps_ymm_upper_halves() {
        if !avx() {
            return;
        }
        let input = [1u64, 2, 3, 4];
        let call = || {
            let mut out = [0u64; 4];
            // SAFETY: the assembly above reads 32 bytes at `input` and writes 32 at `out`.
            unsafe { bpftime_attach_mid_ymm_target(&input, &mut out) };
            out
        };
        assert_eq!(call(), input);
        let h = Arc::new(AvxClobber(AtomicU64::new(0)));
        let point = bpftime_attach_mid_ymm_point as *const () as u64;
        let id = attach(point, SiteInfo { function_size: 0, at_entry: false, padding: 0, returns_twice: false }, ProbeKind::Entry, h.clone()).unwrap();
        assert_eq!(call(), input, "ymm8's upper half is live across the probe");
        assert_eq!(h.0.load(Ordering::Relaxed), 1);
        detach(id).unwrap();
    }
}

#[cfg(test)]
mod stress {
    use super::*;
    use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
    use std::sync::Arc;

    #[inline(never)]
    #[no_mangle]
    pub extern "C" fn bpftime_attach_stress_target(a: u64, b: u64) -> u64 {
        let x = std::hint::black_box(a).wrapping_mul(3);
        x.wrapping_add(std::hint::black_box(b))
    }

    struct Hits(AtomicU64);
    impl ProbeHandler for Hits {
        fn on_hit(&self, _: &PtRegs, _: usize) -> Option<u64> {
            self.0.fetch_add(1, Ordering::Relaxed);
            None
        }
    }

    #[test]
    fn attach_detach_while_threads_call() {
        let addr = bpftime_attach_stress_target as *const () as u64;
        let stop = Arc::new(AtomicBool::new(false));
        let workers: Vec<_> = (0..4)
            .map(|t| {
                let stop = stop.clone();
                std::thread::spawn(move || {
                    let mut n = 0u64;
                    while !stop.load(Ordering::Relaxed) {
                        let r = std::hint::black_box(bpftime_attach_stress_target)(n, t);
                        assert_eq!(r, n.wrapping_mul(3).wrapping_add(t));
                        n += 1;
                    }
                    n
                })
            })
            .collect();
        let hits = Arc::new(Hits(AtomicU64::new(0)));
        for _ in 0..100 {
            let id = attach(addr, SiteInfo { function_size: 0, at_entry: true, padding: 0, returns_twice: false }, ProbeKind::Entry, hits.clone()).unwrap();
            std::thread::sleep(std::time::Duration::from_micros(500));
            detach(id).unwrap();
        }
        stop.store(true, Ordering::Relaxed);
        let calls: u64 = workers.into_iter().map(|w| w.join().expect("worker crashed")).sum();
        assert!(hits.0.load(Ordering::Relaxed) <= calls);
    }

    // A leaf function in assembly: lea; imul; add; ret (13 bytes, then 3 bytes of int3 padding,
    // too few for a jump there: its `ret` is patched over the `add` before it).
    // Two copies: a site's way of running return probes is chosen once.
    macro_rules! leaf {
        ($name:literal) => {
            std::arch::global_asm!(
                concat!(".globl ", $name),
                concat!(".type ", $name, ", @function"),
                ".p2align 4",
                concat!($name, ":"),
                "lea rax, [rdi + rsi]",
                "imul rax, rax, 3",
                "add rax, 0x11",
                "ret",
                concat!(".size ", $name, ", . - ", $name),
                ".p2align 4, 0xcc",
            );
        };
    }
    leaf!("bpftime_attach_leaf");
    leaf!("bpftime_attach_leaf2");
    unsafe extern "C" {
        fn bpftime_attach_leaf(a: u64, b: u64) -> u64;
        fn bpftime_attach_leaf2(a: u64, b: u64) -> u64;
    }

    /// Overwrites registers a caller built with `-fipa-ra` may keep live across a call to a
    /// function that does not touch them.
    struct ClobberHigh(AtomicU64);

    impl ProbeHandler for ClobberHigh {
        fn on_hit(&self, _: &PtRegs, _: usize) -> Option<u64> {
            self.0.fetch_add(1, Ordering::Relaxed);
            // SAFETY: only overwrites registers declared as clobbered.
            unsafe {
                std::arch::asm!(
                    "pcmpeqd xmm9, xmm9", "pcmpeqd xmm15, xmm15", "mov r10, -1", "mov r11, -1",
                    out("xmm9") _, out("xmm15") _, out("r10") _, out("r11") _,
                );
            }
            None
        }
    }

    /// Calls the leaf with values in xmm9, xmm15, r10 and r11, which it does not touch; returns
    /// the result and what those registers held after the call.
    fn call_leaf(f: u64, a: u64, b: u64) -> (u64, f64, f64, u64, u64) {
        let (r, x9, x15, r10, r11): (u64, f64, f64, u64, u64);
        // SAFETY: calls an assembly function that reads rdi and rsi and writes rax only; the
        // registers it may change by the ABI are declared clobbered, except those under test.
        unsafe {
            std::arch::asm!(
                "call {f}",
                f = in(reg) f,
                inout("rdi") a => _, inout("rsi") b => _, out("rax") r,
                inout("xmm9") 1.5f64 => x9, inout("xmm15") 2.5f64 => x15,
                inout("r10") 10u64 => r10, inout("r11") 11u64 => r11,
                out("rcx") _, out("rdx") _, out("r8") _, out("r9") _,
                out("xmm0") _, out("xmm1") _, out("xmm2") _, out("xmm3") _, out("xmm4") _, out("xmm5") _, out("xmm6") _, out("xmm7") _,
            );
        }
        (r, x9, x15, r10, r11)
    }

    /// Entry and return probes (the `ret` patched, then the return address replaced) keep every
    /// register a caller may rely on, as the kernel's do; a probe inside the patched `ret`'s
    /// bytes is refused, and the function runs on.
    #[test]
    fn probes_keep_registers_an_ipa_ra_caller_relies_on() {
        let want = ((3 + 4) * 3 + 0x11, 1.5, 2.5, 10, 11);
        for (patch_rets, name, addr) in
            [(true, "bpftime_attach_leaf", bpftime_attach_leaf as *const () as u64), (false, "bpftime_attach_leaf2", bpftime_attach_leaf2 as *const () as u64)]
        {
            let r = resolve(&Target::parse(&format!("/proc/self/exe:{name}")).unwrap()).unwrap();
            assert_eq!((r.addr, r.function_size), (addr, 13));
            let call_leaf = |a, b| call_leaf(addr, a, b);
            assert_eq!(call_leaf(3, 4), want);
            set_return_patching(patch_rets);
            let info = SiteInfo { function_size: r.function_size, at_entry: true, padding: r.padding, returns_twice: r.returns_twice };
            let h = Arc::new(ClobberHigh(AtomicU64::new(0)));
            let e = attach(addr, info, ProbeKind::Entry, h.clone()).unwrap();
            let x = attach(addr, info, ProbeKind::Return, h.clone()).unwrap();
            assert_eq!(patched_returns(addr), if patch_rets { 1 } else { 0 });
            if patch_rets {
                // The `add` before the `ret` is covered by the return's jump.
                let inside = SiteInfo { function_size: 0, at_entry: false, padding: 0, returns_twice: false };
                assert!(matches!(attach(addr + 10, inside, ProbeKind::Entry, h.clone()), Err(AttachError::Unpatchable { .. })));
            }
            for i in 0..3 {
                assert_eq!(call_leaf(3, 4), want, "patch_rets {patch_rets}, call {i}");
            }
            assert_eq!(h.0.load(Ordering::Relaxed), 6, "entries and returns");
            detach(e).unwrap();
            detach(x).unwrap();
            set_return_patching(true);
            assert_eq!(call_leaf(3, 4), want);
        }
    }
}

#[cfg(test)]
mod modules {
    //! Probes in libraries built for the test: conventions other than the System V ABI's, TLS
    //! descriptor calls, a file rewritten in place, jumps from a `.cold` part into a function.
    use super::*;
    use crate::tests::Clobber;
    use std::path::{Path, PathBuf};
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::sync::Arc;

    fn dir(tag: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("bpftime-attach-{tag}-{}", std::process::id()));
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    /// Builds `lib<name>.so` from `src` (a `.c` or `.s` file) with cc and `flags`.
    fn build(dir: &Path, name: &str, ext: &str, src: &str, flags: &[&str]) -> PathBuf {
        let (s, so) = (dir.join(format!("{name}.{ext}")), dir.join(format!("lib{name}.so")));
        std::fs::write(&s, src).unwrap();
        let out = std::process::Command::new("cc").args(flags).arg("-o").arg(&so).arg(&s).output().expect("run cc");
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        so
    }

    fn open(so: &Path) -> *mut libc::c_void {
        let p = std::ffi::CString::new(so.to_str().unwrap()).unwrap();
        // SAFETY: a library built above (no initialisers that matter); closed by the tests
        // that need it closed.
        let h = unsafe { libc::dlopen(p.as_ptr(), libc::RTLD_NOW) };
        assert!(!h.is_null());
        h
    }

    fn site(so: &Path, func: &str) -> (u64, SiteInfo) {
        let r = resolve(&Target::parse(&format!("{}:{func}", so.display())).unwrap()).unwrap();
        (r.addr, SiteInfo { function_size: r.function_size, at_entry: true, padding: r.padding, returns_twice: r.returns_twice })
    }

    /// A Win64 (`ms_abi`) function keeps xmm6-15 for its callers: a library whose code names
    /// none of them still has them kept by its probes.
    #[test]
    fn win64_callee_saved_registers_survive_an_entry_probe() {
        let d = dir("ms-abi");
        let so = build(&d, "ms", "c", "__attribute__((ms_abi)) long g(long x) { return 3 * x + 1; }\n", &["-O2", "-fPIC", "-shared", "-nostdlib"]);
        open(&so);
        let (g, info) = site(&so, "g");
        let call = || {
            let (r, x6, x7): (u64, f64, f64);
            // SAFETY: a Win64 call (argument in rcx, 32 bytes of shadow space) to `g`, which
            // changes only what the Win64 convention lets it (declared clobbered).
            unsafe {
                std::arch::asm!(
                    "sub rsp, 40", "call {g}", "add rsp, 40",
                    g = in(reg) g, inout("rcx") 5u64 => _, out("rax") r,
                    inout("xmm6") 1.5f64 => x6, inout("xmm7") 2.5f64 => x7,
                    out("rdx") _, out("r8") _, out("r9") _, out("r10") _, out("r11") _,
                    out("xmm0") _, out("xmm1") _, out("xmm2") _, out("xmm3") _, out("xmm4") _, out("xmm5") _,
                );
            }
            (r, x6, x7)
        };
        assert_eq!(call(), (16, 1.5, 2.5));
        let h = Arc::new(Clobber(AtomicU64::new(0)));
        let e = attach(g, info, ProbeKind::Entry, h.clone()).unwrap();
        assert_eq!(call(), (16, 1.5, 2.5), "xmm6 and xmm7 across a probed Win64 function");
        assert_eq!(h.0.load(Ordering::Relaxed), 1);
        detach(e).unwrap();
        let _ = std::fs::remove_dir_all(&d);
    }

    /// A TLS descriptor call (`-mtls-dialect=gnu2`) is not a call its compiler could not see:
    /// GCC's callers of the function keep vector values across it all the same.
    #[test]
    fn a_tls_descriptor_call_leaves_callers_relying_on_their_registers() {
        let d = dir("tlsdesc");
        let src = "__thread int tv = 7;\n\
            static __attribute__((noinline)) int f(int a) { return tv + a; }\n\
            double g(double x, double z, int n) { double acc = 0; for (int i = 0; i < n; i++) { double y = x * i + z; acc += y * f(i) + y; } return acc; }\n";
        let so = build(&d, "tls", "c", src, &["-O2", "-fPIC", "-shared", "-mtls-dialect=gnu2"]);
        let lib = open(&so);
        // SAFETY: `g` is `double g(double, double, int)`.
        let g: extern "C" fn(f64, f64, i32) -> f64 = unsafe { std::mem::transmute(libc::dlsym(lib, c"g".as_ptr())) };
        let want = g(1.25, 0.5, 10);
        let (f, info) = site(&so, "f");
        let h = Arc::new(Clobber(AtomicU64::new(0)));
        let e = attach(f, info, ProbeKind::Entry, h.clone()).unwrap();
        let x = attach(f, info, ProbeKind::Return, h.clone()).unwrap();
        assert_eq!(g(1.25, 0.5, 10), want, "g's registers across probes on f");
        assert_eq!(h.0.load(Ordering::Relaxed), 20);
        detach(e).unwrap();
        detach(x).unwrap();
        let _ = std::fs::remove_dir_all(&d);
    }

    /// GCC -O2 puts switch cases that call a cold function into `f.cold`, reached only through
    /// f's jump table (no direct jump from f to it). `caller` keeps ymm8-10 across its direct
    /// call of f (`-fipa-ra`); f.cold calls h directly: a probe on h keeps them.
    #[test]
    fn a_jump_table_into_a_cold_part_keeps_the_callers_registers() {
        if !std::arch::is_x86_feature_detected!("avx2") {
            eprintln!("skipped: no AVX2 on this machine");
            return;
        }
        let d = dir("jump-table");
        let src = concat!(
            "#include <immintrin.h>\n",
            "__attribute__((noinline,cold)) static void oops(int *p) { asm volatile(\"\" ::: \"memory\"); *p += 1; }\n",
            "__attribute__((noinline)) static void h(int *p) { asm volatile(\"\" ::: \"memory\"); *p += 2; p[1] ^= 5; p[2] -= 3; }\n",
            "__attribute__((noinline)) static int f(int x, int *p) { switch (x & 7) { case 0: return p[1] + 3; case 1: return p[2] * 7;\n",
            " case 2: oops(p); h(p); return p[3] ^ 9; case 3: return p[4] - 11; case 4: oops(p+1); h(p+1); return p[3] ^ 19;\n",
            " case 5: return p[5] + 17; case 6: return p[6] | 1; default: return p[7] * 3; } }\n",
        );
        // caller: eleven ymm sums live across its call of f (ymm8-10 among them), then stored.
        let sums: String =
            (0..11).map(|i| format!("  __m256 v{i} = _mm256_add_ps(_mm256_loadu_ps(a + {}), _mm256_loadu_ps(a + {}));\n", 8 * i, 8 * i + 8)).collect();
        let stores: String = (0..11).map(|i| format!("  _mm256_storeu_ps(a + {}, _mm256_mul_ps(v{i}, v{}));\n", 8 * i, (i + 1) % 11)).collect();
        let src = format!("{src}int caller(float *a, int x, int *p) {{\n{sums}  int r = f(x, p);\n{stores}  return r;\n}}\n");
        let so = build(&d, "jt", "c", &src, &["-O2", "-mavx2", "-fPIC", "-shared"]);
        let lib = open(&so);
        // SAFETY: int caller(float *, int, int *).
        let caller: extern "C" fn(*mut f32, i32, *mut i32) -> i32 = unsafe { std::mem::transmute(libc::dlsym(lib, c"caller".as_ptr())) };
        let run = || {
            let mut a: Vec<f32> = (0..96).map(|i| i as f32).collect();
            let mut p = [0i32; 8];
            let r = caller(a.as_mut_ptr(), 2, p.as_mut_ptr());
            (r, a, p)
        };
        let want = run();
        let (h, info) = site(&so, "h");
        let clobber = Arc::new(Clobber(AtomicU64::new(0)));
        let probe = attach(h, info, ProbeKind::Entry, clobber.clone()).unwrap();
        assert!(bits_kept(&site_vectors(h).unwrap(), 8) >= 256, "{}", site_vectors(h).unwrap());
        let got = run();
        assert_eq!(clobber.0.load(Ordering::Relaxed), 1);
        detach(probe).unwrap();
        assert_eq!(got, want, "caller's ymm8-10 across f -> (jump table) f.cold -> h");
        let _ = std::fs::remove_dir_all(&d);
    }

    /// `leaf(a, b)` = 3a + b + 0x11, integer code only.
    /// The bits of xmm register `reg` a stub keeps, read from [`site_vectors`]'s description
    /// (`xmm0-1, xmm12 (256 bits) + xmm2-11, xmm13-15 (128 bits)`); 0 if it is not kept. The
    /// ABI's argument registers are kept at the machine's width, so only other registers tell
    /// what a module names.
    fn bits_kept(desc: &str, reg: u32) -> u32 {
        for part in desc.split(" + ") {
            let Some((regs, bits)) = part.strip_prefix("xmm").and_then(|p| p.split_once(" (")) else { continue };
            let covers = regs.split(", xmm").any(|r| match r.split_once('-') {
                Some((a, b)) => (a.parse().unwrap_or(u32::MAX)..=b.parse().unwrap_or(0)).contains(&reg),
                None => r.parse() == Ok(reg),
            });
            if covers {
                return bits.split(' ').next().and_then(|b| b.parse().ok()).unwrap_or(0);
            }
        }
        0
    }

    const LEAF: &str =
        ".p2align 4\n.globl leaf\n.type leaf,@function\nleaf:\n.Lleaf:\nlea (%rdi,%rdi,2),%rax\nadd %rsi,%rax\nadd $0x11,%rax\nret\n.size leaf,.-leaf\n";
    /// `keep(a, b, in, out)` = leaf(a, b) (called directly, not through the PLT, as a compiler
    /// relying on what its callee keeps calls), with ymm12 = the 32 bytes at `in` across the
    /// call, stored at `out` after it.
    const KEEP: &str =
        ".globl keep\n.type keep,@function\nkeep:\nvmovdqu (%rdx),%ymm12\npush %rcx\ncall .Lleaf\npop %rcx\nvmovdqu %ymm12,(%rcx)\nret\n.size keep,.-keep\n";

    /// Calls `keep` of `lib` with a probe on its `leaf` (at `leaf`, `info`) that clobbers ymm12:
    /// the stub must keep it, and says it keeps 256 bits of what the module names.
    fn check_keep(lib: *mut libc::c_void, leaf: u64, info: SiteInfo) {
        // SAFETY: `keep` is `long keep(long, long, const u8 *in, u8 *out)` (KEEP above).
        let keep: extern "C" fn(u64, u64, *const u8, *mut u8) -> u64 = unsafe { std::mem::transmute(libc::dlsym(lib, c"keep".as_ptr())) };
        let clobber = Arc::new(Clobber(AtomicU64::new(0)));
        let probe = attach(leaf, info, ProbeKind::Entry, clobber.clone()).unwrap();
        assert!(bits_kept(&site_vectors(leaf).unwrap(), 12) >= 256, "{}", site_vectors(leaf).unwrap());
        let input: Vec<u8> = (1..=32).collect();
        let mut out = [0u8; 32];
        assert_eq!(keep(3, 4, input.as_ptr(), out.as_mut_ptr()), 3 * 3 + 4 + 0x11);
        assert_eq!(out[..], input[..], "ymm12 across the probed leaf");
        assert_eq!(clobber.0.load(Ordering::Relaxed), 1);
        detach(probe).unwrap();
    }

    /// A library rewritten in place (same inode) and loaded again is scanned again: its new
    /// code keeps ymm12 across a call to a probed leaf.
    #[test]
    fn a_file_rewritten_in_place_is_scanned_again() {
        if !std::arch::is_x86_feature_detected!("avx") {
            eprintln!("skipped: no AVX on this machine");
            return;
        }
        let d = dir("rewrite");
        let a = build(&d, "a", "s", &format!(".text\n{LEAF}"), &["-shared", "-nostdlib"]);
        let b = build(&d, "b", "s", &format!(".text\n{KEEP}{LEAF}"), &["-shared", "-nostdlib"]);
        let lib = d.join("libv.so");
        std::fs::copy(&a, &lib).unwrap();
        let h = open(&lib);
        let (addr, info) = site(&lib, "leaf");
        let probe = attach(addr, info, ProbeKind::Entry, Arc::new(Clobber(AtomicU64::new(0)))).unwrap();
        // A System V leaf (it reads rdi) in a module that names no vector register: its results
        // alone are kept.
        assert_eq!(bits_kept(&site_vectors(addr).unwrap(), 12), 0, "{}", site_vectors(addr).unwrap());
        detach(probe).unwrap();
        // SAFETY: closes the handle opened above; nothing of the library is used after.
        unsafe { libc::dlclose(h) };
        std::fs::write(&lib, std::fs::read(&b).unwrap()).unwrap();
        let h = open(&lib);
        let (addr, info) = site(&lib, "leaf");
        check_keep(h, addr, info);
        let _ = std::fs::remove_dir_all(&d);
    }

    /// Without section headers (stripped by hand, as some packers do), the executable segments
    /// are scanned: code there keeps ymm12 across a call to a probed leaf.
    #[test]
    fn a_library_without_section_headers_is_scanned_by_segments() {
        if !std::arch::is_x86_feature_detected!("avx") {
            eprintln!("skipped: no AVX on this machine");
            return;
        }
        let d = dir("no-sections");
        let so = build(&d, "nosec", "s", &format!(".text\n{KEEP}{LEAF}"), &["-shared", "-nostdlib"]);
        let mut elf = std::fs::read(&so).unwrap();
        // e_shoff, e_shnum, e_shstrndx: no section header table.
        elf[0x28..0x30].fill(0);
        elf[0x3c..0x40].fill(0);
        std::fs::write(&so, &elf).unwrap();
        let lib = open(&so);
        // SAFETY: `leaf` is a function of the library.
        let leaf = unsafe { libc::dlsym(lib, c"leaf".as_ptr()) } as u64;
        check_keep(lib, leaf, SiteInfo { function_size: 0, at_entry: true, padding: 0, returns_twice: false });
        let _ = std::fs::remove_dir_all(&d);
    }

    /// A library unloaded with probes on it and loaded again (at the same address, as the
    /// loader usually picks): its sites are stale, forgotten, and the new code is probed afresh.
    #[test]
    fn a_library_loaded_again_is_probed_afresh() {
        let d = dir("reload");
        let so = build(&d, "reload", "c", "long twice(long x) { return 2 * x; }\n", &["-O2", "-fPIC", "-shared", "-nostdlib"]);
        let mut addrs = vec![];
        for round in 0..2 {
            let lib = open(&so);
            // SAFETY: `twice` is `long twice(long)`.
            let twice: extern "C" fn(u64) -> u64 = unsafe { std::mem::transmute(libc::dlsym(lib, c"twice".as_ptr())) };
            let (addr, info) = site(&so, "twice");
            addrs.push(addr);
            let h = Arc::new(Clobber(AtomicU64::new(0)));
            let e = attach(addr, info, ProbeKind::Entry, h.clone()).unwrap_or_else(|e| panic!("round {round}: {e}"));
            let x = attach(addr, info, ProbeKind::Return, h.clone()).unwrap();
            assert_eq!(twice(21), 42);
            assert_eq!(h.0.load(Ordering::Relaxed), 2, "round {round}: entry and return");
            if round == 1 {
                detach(e).unwrap();
                detach(x).unwrap();
            }
            // Unloaded with its probes attached in the first round.
            // SAFETY: nothing of the library is used after this.
            assert_eq!(unsafe { libc::dlclose(lib) }, 0);
        }
        if addrs[0] != addrs[1] {
            eprintln!("note: the library was loaded at another address the second time");
        }
        let _ = std::fs::remove_dir_all(&d);
    }

    /// A `.cold` part jumping into a function (GCC's hot/cold splitting does): a jump there
    /// must never land in a patch's middle. The entry probe becomes an int3 where the jump
    /// lands inside its five bytes; return probes replace the return address where it lands
    /// inside a `ret`'s window.
    #[test]
    fn jumps_from_a_cold_part_never_land_inside_a_patch() {
        let d = dir("cold");
        // f(x) = x + 3, f(0) = 103: f.cold jumps back to f's second instruction, inside the
        // entry's five bytes. g(x) = x + 5, g(0) = 201: g.cold jumps back to the `inc` inside
        // the window of g's `ret` (lea, inc, ret).
        let src = ".text\n\
            .globl f\n.type f,@function\n.p2align 4\nf:\n\
            test %rdi,%rdi\n.Lback:\nlea 1(%rdi),%rax\nje f.cold\nlea 2(%rax),%rax\nret\n.size f,.-f\n\
            .globl g\n.type g,@function\n.p2align 4\ng:\n\
            test %rdi,%rdi\nje g.cold\nlea 1(%rdi),%rax\nlea 3(%rax),%rax\n.Lgback:\ninc %rax\nret\n.size g,.-g\n\
            .type f.cold,@function\n.p2align 4\nf.cold:\nmov $100,%rdi\ntest %rdi,%rdi\njmp .Lback\n.size f.cold,.-f.cold\n\
            .type g.cold,@function\ng.cold:\nmov $200,%rax\njmp .Lgback\n.size g.cold,.-g.cold\n";
        let so = build(&d, "cold", "s", src, &["-shared", "-nostdlib"]);
        let lib = open(&so);
        // SAFETY: both are `long (long)` in the assembly above.
        let sym = |n: &std::ffi::CStr| -> extern "C" fn(u64) -> u64 { unsafe { std::mem::transmute(libc::dlsym(lib, n.as_ptr())) } };
        let (f, g) = (sym(c"f"), sym(c"g"));
        let check = || {
            assert_eq!((f(0), f(5)), (103, 8));
            assert_eq!((g(0), g(5)), (201, 10));
        };
        check();
        let (fa, finfo) = site(&so, "f");
        let h = Arc::new(Clobber(AtomicU64::new(0)));
        let e = attach(fa, finfo, ProbeKind::Entry, h.clone()).unwrap();
        assert_eq!(site_method(fa).map(|m| m.0), Some(Method::Trap), "the jump back lands inside the entry's five bytes");
        let (ga, ginfo) = site(&so, "g");
        let x = attach(ga, ginfo, ProbeKind::Return, h.clone()).unwrap();
        assert_eq!(patched_returns(ga), 0, "the jump back lands inside the ret's window");
        check();
        assert_eq!(h.0.load(Ordering::Relaxed), 4);
        detach(e).unwrap();
        detach(x).unwrap();
        check();
        let _ = std::fs::remove_dir_all(&d);
    }
}
