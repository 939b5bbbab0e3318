//! Which accesses the analysis proves, on small hand-written programs: each case names an
//! access it must prove and, as important, accesses it must leave checked.

use super::*;
use crate::asm::assemble;
use crate::exec::{HelperEffects, RunState};
use crate::verifier::{verify, LddwResolver};
use std::sync::Arc;

extern "C" fn nop(_: u64, _: u64, _: u64, _: u64, _: u64, _: &mut RunState) -> u64 {
    0
}

/// Map 1: values of 16 bytes; map 2: a 64-byte `.data`-style value; map 4: a map without keys
/// (a bloom filter of 4-byte values).
struct Maps;

impl LddwResolver for Maps {
    fn resolve(&self, _kind: LddwKind, lo: i32, _hi: i32) -> Result<u64, String> {
        Ok(0x1000 * lo as u64)
    }

    fn pointee(&self, kind: LddwKind, lo: i32, hi: i32) -> Option<Pointee> {
        match (kind, lo) {
            (LddwKind::MapFd, 1) => Some(Pointee::Map { value_size: 16, key_size: 4, array: None }),
            (LddwKind::MapValue, 2) => Some(Pointee::Value { size: 64, offset: hi as u32 }),
            (LddwKind::MapFd, 4) => Some(Pointee::Map { value_size: 4, key_size: 0, array: None }),
            _ => None,
        }
    }
}

fn helpers() -> Arc<HelperTable> {
    let mut t = HelperTable::new();
    t.register(1, "map_lookup_elem", nop).set_effects(1, HelperEffects { returns: HelperReturn::MapValueOrNull, leaves_stack: true, never_stops: false });
    t.register(4, "probe_read", nop);
    t.register(5, "ktime_get_ns", nop).set_effects(5, HelperEffects { leaves_stack: true, ..Default::default() });
    t.register(131, "ringbuf_reserve", nop)
        .set_effects(131, HelperEffects { returns: HelperReturn::MemOrNull { size_arg: 2 }, leaves_stack: true, never_stops: false });
    Arc::new(t)
}

/// The proof of every memory access, by slot, and the context needs.
fn proofs(src: &str) -> (Vec<(usize, bool)>, ContextNeeds) {
    let prog = verify(&assemble(src).unwrap(), helpers(), &Maps).unwrap();
    let list = prog
        .insns()
        .iter()
        .enumerate()
        .filter(|(_, i)| matches!(i, Insn::Load { .. } | Insn::Store { .. } | Insn::Atomic { .. }))
        .map(|(pc, _)| (pc, prog.access(pc).proven))
        .collect();
    (list, prog.context_needs())
}

fn proven(src: &str) -> Vec<bool> {
    proofs(src).0.into_iter().map(|(_, p)| p).collect()
}

#[test]
fn stack_through_a_computed_offset_is_proven_within_the_frame() {
    let src = "
        r2 = *(u8 *)(r1 + 0)      # ctx, 1 byte
        r2 &= 63
        r3 = r10
        r3 += -64
        r3 += r2                  # r10 - 64 + [0, 63]
        *(u8 *)(r3 + 0) = 1       # in the frame
        r4 = *(u8 *)(r1 + 1)
        r3 += r4                  # up to r10 - 1 + 255: past the frame
        *(u8 *)(r3 + 0) = 1
        r0 = 0
        exit";
    assert_eq!(proven(src), [true, true, true, false]);
}

#[test]
fn a_bounded_loop_index_is_proven_after_widening_and_its_check() {
    // The shape clang gives `for (i = 0; i < n && i < 1024; i++) s += in->a[i]`.
    let src = "
        r0 = 0
        r2 = *(u64 *)(r1 + 0)
        r3 = 0
    loop:
        if r3 >= r2 goto out
        if r3 > 1023 goto out
        r4 = r1
        r4 += r3
        r5 = *(u8 *)(r4 + 8)
        r0 += r5
        r3 += 1
        goto loop
    out:
        exit";
    let (p, ctx) = proofs(src);
    assert_eq!(p.iter().map(|x| x.1).collect::<Vec<_>>(), [true, true]);
    assert_eq!(ctx, ContextNeeds { len: 8 + 1024, writable: false });
}

#[test]
fn without_the_bound_the_loop_access_stays_checked() {
    let src = "
        r0 = 0
        r2 = *(u64 *)(r1 + 0)
        r3 = 0
    loop:
        if r3 >= r2 goto out
        r4 = r1
        r4 += r3
        r5 = *(u8 *)(r4 + 8)
        r3 += 1
        goto loop
    out:
        exit";
    assert_eq!(proven(src), [true, false]);
}

#[test]
fn map_values_are_proven_after_the_null_check_and_within_the_value() {
    let src = "
        *(u32 *)(r10 - 4) = 0
        r2 = r10
        r2 += -4
        r1 = map_fd(1) ll
        call 1
        r6 = r0                   # a copy made before the check
        r1 = *(u64 *)(r0 + 0)     # maybe null: checked
        if r0 == 0 goto out
        r1 = *(u64 *)(r6 + 8)     # the copy learnt it too
        r1 = *(u64 *)(r0 + 9)     # 9..17 of 16 bytes: checked
        lock *(u64 *)(r0 + 8) += r1
    out:
        r0 = 0
        exit";
    assert_eq!(proven(src), [true, false, true, false, true]);
}

#[test]
fn an_older_result_of_the_same_call_is_not_refined_by_a_newer_check() {
    let src = "
        r6 = 0
        r7 = 0
    again:
        *(u32 *)(r10 - 4) = 0
        r2 = r10
        r2 += -4
        r1 = map_fd(1) ll
        call 1
        if r7 != 0 goto use       # second round: r6 holds the first round's pointer
        r6 = r0
        r7 = 1
        goto again
    use:
        if r0 == 0 goto out
        r1 = *(u64 *)(r6 + 0)     # r6 may be null: the first lookup was never checked
    out:
        r0 = 0
        exit";
    assert_eq!(proven(src), [true, false]);
}

#[test]
fn spilled_pointers_survive_stack_neutral_helpers_only() {
    let src = "
        r1 = map_value(2) + 8 ll  # byte 8 of a 64-byte value
        *(u64 *)(r10 - 16) = r1
        call 5                    # ktime: leaves the stack alone
        r1 = *(u64 *)(r10 - 16)
        r2 = *(u64 *)(r1 + 48)    # 56..64: proven
        *(u64 *)(r10 - 16) = r1
        r1 = r10
        r1 += -16
        r2 = 8
        r3 = 0
        call 4                    # probe_read into the slot: may overwrite it
        r1 = *(u64 *)(r10 - 16)
        r2 = *(u64 *)(r1 + 0)     # unknown now
        r0 = 0
        exit";
    assert_eq!(proven(src), [true, true, true, true, true, false]);
}

#[test]
fn a_partial_overwrite_forgets_the_spilled_pointer() {
    let src = "
        r1 = map_value(2) ll
        *(u64 *)(r10 - 8) = r1
        *(u8 *)(r10 - 5) = 7
        r1 = *(u64 *)(r10 - 8)
        r2 = *(u64 *)(r1 + 0)
        r0 = 0
        exit";
    assert_eq!(proven(src), [true, true, true, false]);
}

/// A lookup in a map without keys is refused where a run can reach it, as the kernel refuses
/// it ("invalid zero-sized read"); behind a branch on a constant it is dead code, accepted.
#[test]
fn lookups_in_maps_without_keys_are_refused_where_reachable() {
    let src = "
        *(u32 *)(r10 - 4) = 7
        r2 = r10
        r2 += -4
        r1 = map_fd(4) ll
        call 1
        r0 = 0
        exit";
    let err = verify(&assemble(src).unwrap(), helpers(), &Maps).unwrap_err();
    assert_eq!((err.insn, err.kind.clone()), (5, crate::verifier::VerifyErrorKind::KeylessMap { helper: 1 }), "{err}");
    let dead = "
        r3 = 0
        if r3 == 0 goto out
        r2 = r10
        r2 += -4
        r1 = map_fd(4) ll
        call 1
    out:
        r0 = 0
        exit";
    assert!(verify(&assemble(dead).unwrap(), helpers(), &Maps).is_ok());
}

#[test]
fn ring_buffer_records_are_sized_by_the_constant_argument() {
    let src = "
        r1 = map_fd(3) ll
        r2 = 24
        r3 = 0
        call 131
        if r0 == 0 goto out
        *(u64 *)(r0 + 16) = 1     # 16..24 of 24
        *(u64 *)(r0 + 17) = 1     # past it
    out:
        r0 = 0
        exit";
    assert_eq!(proven(src), [true, false]);
}

#[test]
fn wrapping_arithmetic_proves_nothing() {
    let src = "
        r2 = *(u32 *)(r1 + 0)
        w2 -= 1                   # 0 - 1 wraps to 0xffffffff in 32 bits
        r3 = r10
        r3 += -512
        r3 += r2
        r0 = *(u8 *)(r3 + 0)
        r4 = *(u64 *)(r1 + 0)
        r4 >>= 60                 # 0..15
        r4 -= 16                  # -16..-1
        r5 = r10
        r5 += r4
        r0 = *(u8 *)(r5 + 0)      # r10-16..r10-1: proven
        r4 *= r4                  # 1..256, signed products of negatives: not tracked
        r5 = r10
        r5 += -512
        r5 += r4
        r0 = *(u8 *)(r5 + 0)
        exit";
    assert_eq!(proven(src), [true, false, true, true, false]);
}

#[test]
fn signed_and_unsigned_comparisons_refine_differently() {
    let src = "
        r2 = *(u64 *)(r1 + 0)
        if r2 s> 100 goto out     # signed: r2 may still be very negative
        r3 = r10
        r3 += -200
        r3 += r2
        r0 = *(u8 *)(r3 + 0)
        if r2 > 100 goto out      # unsigned: now 0..100
        r3 = r10
        r3 += -200
        r3 += r2
        r0 = *(u8 *)(r3 + 0)
    out:
        r0 = 0
        exit";
    assert_eq!(proven(src), [true, false, true]);
}

#[test]
fn thirty_two_bit_comparisons_refine_only_small_values() {
    let src = "
        r2 = *(u64 *)(r1 + 0)
        if w2 > 10 goto out       # the upper half is unknown: nothing learnt
        r3 = r10
        r3 += -64
        r3 += r2
        r0 = *(u8 *)(r3 + 0)
        w2 = w2                   # now a 32-bit value
        if w2 > 10 goto out
        r3 = r10
        r3 += -64
        r3 += r2
        r0 = *(u8 *)(r3 + 0)
        r2 = *(u32 *)(r1 + 0)
        r2 += -1                  # -1..u32::MAX - 1
        if w2 s> 10 goto out      # signed 32-bit: -1 reads as 0xffffffff in 64 bits
        r3 = r10
        r3 += -64
        r3 += r2
        r0 = *(u8 *)(r3 + 0)
    out:
        r0 = 0
        exit";
    assert_eq!(proven(src), [true, false, true, true, false]);
}

#[test]
fn context_needs_cover_reads_and_writes_and_callees_get_what_their_callers_pass() {
    let src = "
        r0 = *(u32 *)(r1 + 12)
        *(u8 *)(r1 + 20) = 1
        r6 = r1
        call sub                  # r1: the context
        r1 = r10
        r1 += -16
        call sub                  # r1: this frame's r10 - 16
        r1 = r6
        r1 += 64
        call other                # r1: the context + 64
        exit
    sub:
        r0 = *(u64 *)(r1 + 0)     # the context on one call, the stack on the other: unknown
        r2 = r1
        call leaf
        exit
    other:
        r0 = *(u64 *)(r1 + 0)     # bytes 64..72 of the context
        r0 = *(u64 *)(r1 + 8)     # the context must then be 80 bytes long
        exit
    leaf:
        r0 = *(u64 *)(r2 + 0)     # unknown, as in sub
        r3 = r10
        r3 += 1024                # two frames up (sub's, main's) on every path here
        r0 = *(u64 *)(r3 - 8)     # the last word of main's frame
        r0 = *(u64 *)(r3 + 0)     # past the top of the stack
        exit";
    let (p, ctx) = proofs(src);
    assert_eq!(p.iter().map(|x| x.1).collect::<Vec<_>>(), [true, true, false, true, true, false, true, false]);
    assert_eq!(ctx, ContextNeeds { len: 80, writable: true });
}

#[test]
fn a_stack_pointer_passed_down_stays_one_frame_up() {
    let src = "
        *(u64 *)(r10 - 8) = 0
        r1 = r10
        r1 += -8
        call sub
        exit
    sub:
        r0 = *(u64 *)(r1 + 0)     # the caller's r10 - 8: proven
        r0 = *(u64 *)(r1 + 8)     # the caller's r10 + 0: past its frame (the top of the stack)
        exit";
    assert_eq!(proven(src), [true, true, false]);
}

#[test]
fn array_lookups_with_a_proven_key_are_inlinable() {
    struct Array;
    impl LddwResolver for Array {
        fn resolve(&self, _kind: LddwKind, lo: i32, _hi: i32) -> Result<u64, String> {
            Ok(0x1000 * lo as u64)
        }
        fn pointee(&self, _kind: LddwKind, lo: i32, _hi: i32) -> Option<Pointee> {
            let array = (lo == 1).then_some(ArrayLayout { values: 0x5000, stride: 8, max_entries: 4, cpu: 0, cpu_stride: 0 });
            Some(Pointee::Map { value_size: 8, key_size: 4, array })
        }
    }
    let src = "
        *(u32 *)(r10 - 4) = 2
        r2 = r10
        r2 += -4
        r1 = map_fd(1) ll
        call 1                    # 0: inlinable
        r2 = r10
        r2 += -2                  # 2 bytes left in the frame: the key read is not proven
        r1 = map_fd(1) ll
        call 1
        r2 = r10
        r2 += -4
        r1 = map_fd(2) ll         # a map with no layout
        call 1
        r0 = 0
        exit";
    let prog = verify(&assemble(src).unwrap(), helpers(), &Array).unwrap();
    let calls: Vec<_> = (0..prog.len()).filter(|&pc| matches!(prog.insns()[pc], Insn::Call(_))).map(|pc| prog.inline_lookup(pc).is_some()).collect();
    assert_eq!(calls, [true, false, false]);

    // Constant keys: stored as a word on every path to the call; not once a store, a call or a
    // merge with another value may have changed them.
    let src = "
        w1 = 7
        *(u32 *)(r10 - 4) = r1
        r2 = r10
        r2 += -4
        r1 = map_fd(1) ll
        call 1                    # key 7 (past the end: always null)
        *(u32 *)(r10 - 8) = 1
        r2 = r10
        r2 += -8
        r1 = map_fd(1) ll
        call 1                    # key 1 (the helper leaves the stack alone)
        *(u8 *)(r10 - 7) = 0
        r2 = r10
        r2 += -8
        r1 = map_fd(1) ll
        call 1                    # a byte of it overwritten: unknown
        *(u32 *)(r10 - 8) = 2
        if r0 == 0 goto other
        *(u32 *)(r10 - 8) = 3
    other:
        r2 = r10
        r2 += -8
        r1 = map_fd(1) ll
        call 1                    # 2 or 3: unknown
        *(u32 *)(r10 - 8) = 3
        if r0 == 0 goto same
        *(u32 *)(r10 - 8) = 3
    same:
        r2 = r10
        r2 += -8
        r1 = map_fd(1) ll
        call 1                    # 3 on both paths
        r6 = r0
        r0 = *(u32 *)(r10 - 8)    # a known word loads as its value
        if r0 != 3 goto out
        r0 = 0
    out:
        exit";
    let prog = verify(&assemble(src).unwrap(), helpers(), &Array).unwrap();
    let keys: Vec<_> = (0..prog.len()).filter(|&pc| matches!(prog.insns()[pc], Insn::Call(_))).map(|pc| prog.lookup_key(pc)).collect();
    assert_eq!(keys, [Some(7), Some(1), None, None, Some(3)]);
}

#[test]
fn a_loop_ended_by_an_equality_keeps_its_bound_through_widening_thresholds() {
    // `for (i = 0; i != 16; i++) buf[i]`: widening stops at the constant compared with.
    let src = "
        r1 = 0
    loop:
        if r1 == 16 goto out
        r2 = r10
        r2 += -16
        r2 += r1
        r3 = *(u8 *)(r2 + 0)
        r1 += 1
        goto loop
    out:
        r2 = r10
        r2 += -16
        r2 += r1                  # r1 is 16 here: one past the buffer
        r3 = *(u8 *)(r2 + 0)
        r0 = 0
        exit";
    assert_eq!(proven(src), [true, false]);
}

#[test]
fn stack_offsets_that_overflow_prove_nothing_and_do_not_panic() {
    let src = "
        r1 = r10
        r2 = 0x7fffffffffffffff ll
        r1 += r2
        r3 = 0
        *(u64 *)(r1 + 8) = r3
        r3 = *(u64 *)(r1 + 8)
        r0 = 0
        exit";
    assert_eq!(proven(src), [false, false]);
}

fn context_reads(src: &str) -> Option<Vec<(u32, u32)>> {
    let prog = verify(&assemble(src).unwrap(), helpers(), &Maps).unwrap();
    prog.context_reads().map(<[_]>::to_vec)
}

#[test]
fn a_program_that_never_touches_its_context_reads_none_of_it() {
    assert_eq!(context_reads("r0 = 0\nexit"), Some(vec![]));
}

#[test]
fn context_reads_are_the_spans_of_the_proven_loads_merged() {
    let src = "
        r2 = *(u32 *)(r1 + 44)
        r3 = *(u32 *)(r1 + 56)
        r4 = *(u32 *)(r1 + 32)
        r5 = *(u64 *)(r1 + 8)
        r6 = *(u16 *)(r1 + 12)    # inside the span before it
        *(u64 *)(r10 - 8) = r1    # spilled and reloaded: still the context
        r7 = *(u64 *)(r10 - 8)
        r8 = *(u32 *)(r7 + 60)    # adjacent to 56..60
        r0 = 0
        exit";
    assert_eq!(context_reads(src), Some(vec![(8, 16), (32, 36), (44, 48), (56, 64)]));
}

#[test]
fn context_reads_are_unknown_when_the_context_may_be_read_otherwise() {
    // Handed to a helper, which may read it.
    let to_helper = "
        r3 = r1
        r1 = r10
        r1 += -8
        r2 = 8
        call 4
        r0 = 0
        exit";
    assert_eq!(context_reads(to_helper), None);
    // Handed to a helper through a stack slot holding it.
    let in_slot = "
        *(u64 *)(r10 - 16) = r1
        r1 = r10
        r1 += -16
        r2 = 8
        r3 = 0
        call 4
        r0 = 0
        exit";
    assert_eq!(context_reads(in_slot), None);
    // Read at an offset the analysis does not bound.
    let unbounded = "
        r2 = *(u64 *)(r1 + 0)
        r1 += r2
        r0 = *(u8 *)(r1 + 0)
        exit";
    assert_eq!(context_reads(unbounded), None);
    // Written.
    let written = "
        *(u32 *)(r1 + 0) = 1
        r0 = 0
        exit";
    assert_eq!(context_reads(written), None);
    // Any unproven access might land in it.
    let unproven = "
        r2 = *(u64 *)(r1 + 0)
        r0 = *(u8 *)(r2 + 0)
        exit";
    assert_eq!(context_reads(unproven), None);
}

#[test]
fn a_context_passed_to_a_local_function_is_followed_there() {
    let src = "
        call pc+2
        r0 = 0
        exit
        r0 = *(u32 *)(r1 + 20)
        exit";
    assert_eq!(context_reads(src), Some(vec![(20, 24)]));
}

fn helper_args(src: &str) -> Vec<(bool, bool)> {
    let prog = verify(&assemble(src).unwrap(), helpers(), &Maps).unwrap();
    let calls = (0..prog.len()).filter(|&pc| matches!(prog.insns()[pc], Insn::Call(CallTarget::Helper(_))));
    calls.map(|pc| (prog.helper_args(pc).key, prog.helper_args(pc).value)).collect()
}

#[test]
fn map_helper_keys_and_values_on_the_stack_are_proven_whole() {
    // Map 1: 4-byte keys, 16-byte values.
    let src = "
        *(u32 *)(r10 - 4) = 0
        r2 = r10
        r2 += -4
        r3 = r10
        r3 += -24
        r1 = map_fd(1) ll
        call 1                    # key and value whole
        r2 = r10
        r2 += -2                  # key runs past the frame
        r3 = r10
        r3 += -8                  # value runs past the frame
        r1 = map_fd(1) ll
        call 1
        r2 = *(u64 *)(r10 - 16)   # a number, not a pointer
        r1 = map_fd(1) ll
        call 1
        r2 = r10
        r2 += -4
        r1 = 0                    # no map
        call 1
        r0 = 0
        exit";
    assert_eq!(helper_args(src), [(true, true), (false, false), (false, false), (false, false)]);
}

#[test]
fn a_buffer_is_proven_as_long_as_its_size_argument_can_be() {
    let sized = |src: &str| -> Vec<bool> {
        let prog = verify(&assemble(src).unwrap(), helpers(), &Maps).unwrap();
        let calls = (0..prog.len()).filter(|&pc| matches!(prog.insns()[pc], Insn::Call(CallTarget::Helper(_))));
        calls.map(|pc| prog.helper_args(pc).sized(2)).collect()
    };
    let src = "
        r2 = r10
        r2 += -8
        r3 = 8
        call 4                    # 8 bytes at r10 - 8: whole
        r2 = r10
        r2 += -8
        r3 = 16
        call 4                    # runs past the frame
        r2 = r10
        r2 += -16
        r3 = *(u8 *)(r10 - 1)
        r3 &= 15
        call 4                    # at most 15 of 16 bytes
        r2 = r10
        r2 += -16
        r3 = *(u64 *)(r10 - 24)
        call 4                    # any size
        r0 = 0
        exit";
    assert_eq!(sized(src), [true, false, true, false]);
}
