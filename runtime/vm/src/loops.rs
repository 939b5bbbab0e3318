//! Counted loops: loops whose own code bounds how often their back edge is taken, found from
//! the instructions alone.
//!
//! Both engines charge the loop budget on every taken backward jump (see
//! [`back_edge_cost`](crate::exec::back_edge_cost)). For a counted loop the most the whole loop
//! can charge per entry is known, so an engine that finds at least that much budget left when
//! the loop is entered may skip the per-iteration check (it still subtracts the cost): the run
//! behaves exactly as with the check, which could not fail. The JIT does this by running a
//! second copy of the loop without the check.
//!
//! A loop `[head, back_edge]` (a backward jump at `back_edge` to `head`) is counted when:
//! - the range is entered from outside only by forward jumps (or falling into it), and holds no
//!   other backward jump and no call (helper, callx or local);
//! - exactly one instruction in it writes some register `v`: `v += c` (64-bit, `c > 0`), and it
//!   lies on every path from `head` to `back_edge` (no jump inside the range jumps over it);
//! - the loop ends on `v` reaching a constant: an unsigned 64-bit `if v > K` / `if v >= K`
//!   jumping out of the range, also on every path, or the back edge itself being
//!   `if v < K` / `if v <= K`.
//!
//! Then every complete iteration passes the test with `v <= L` (`L` being `K` or `K - 1`) and adds
//! exactly `c` to `v` between two tests, without wrapping (`L + c` fits in 64 bits), so at most
//! `L / c + 1` complete iterations reach the back edge, plus one for a first, partial iteration
//! from a mid-loop entry.

use crate::insn::{AluOp, Insn, JmpCond, Operand, Reg, Width};

/// A loop whose back edge is taken a bounded number of times per entry.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CountedLoop {
    /// First slot of the loop: the back edge's target.
    pub head: usize,
    /// Slot of the backward jump closing it.
    pub back_edge: usize,
    /// The most times the back edge is taken per entry into the loop.
    pub max_trips: u64,
}

impl CountedLoop {
    /// The most loop budget the loop can charge per entry: its trips times the cost of one
    /// (the loop's length, as [`back_edge_cost`](crate::exec::back_edge_cost) charges it).
    pub fn max_cost(&self) -> Option<u64> {
        self.max_trips.checked_mul((self.back_edge - self.head + 1) as u64)
    }

    /// Whether slot `pc` lies in the loop.
    pub fn contains(&self, pc: usize) -> bool {
        (self.head..=self.back_edge).contains(&pc)
    }
}

/// The counted loops of the function occupying slots `start..end` of `insns` (a verified
/// program's decoded slots), in slot order.
pub fn counted_loops(insns: &[Insn], start: usize, end: usize) -> Vec<CountedLoop> {
    let slots = || (start..end).filter(|&pc| !matches!(insns[pc], Insn::LddwHigh));
    let target = |pc: usize| insns[pc].jump_target(pc).and_then(|t| usize::try_from(t).ok());
    slots()
        .filter_map(|back_edge| {
            let head = target(back_edge).filter(|&h| h <= back_edge && h >= start)?;
            let inside = |pc: usize| (head..=back_edge).contains(&pc);
            // Entered only forward from outside; no other backward jump inside, no call.
            for pc in slots() {
                let insn = insns[pc];
                if inside(pc) && matches!(insn, Insn::Call(_) | Insn::CallReg(_)) {
                    return None;
                }
                let Some(t) = target(pc) else { continue };
                // A backward jump out of the range, inside it, or into it from after it.
                if pc != back_edge && t <= pc && (inside(pc) || inside(t)) {
                    return None;
                }
            }
            // `pc` runs on every path from the head to the back edge.
            let on_every_path = |x: usize| slots().filter(|&pc| pc >= head && pc < x).all(|pc| target(pc).is_none_or(|t| t <= x || t > back_edge));
            let limit = exit_limit(insns, head, back_edge, &on_every_path)?;
            let step = the_counter(insns, head, back_edge, limit.0)?;
            if !on_every_path(step.1) {
                return None;
            }
            let l = limit.1?;
            l.checked_add(step.0)?;
            let max_trips = (l / step.0).checked_add(2)?;
            Some(CountedLoop { head, back_edge, max_trips })
        })
        .collect()
}

/// By `pc - start`: whether slot `pc` lies in a loop (between a backward jump's target and the
/// jump) but on no way around it: the paths that leave every loop holding them (a `return`
/// from inside a loop, a `break` to code after it). An engine may lay them out of the loops'
/// way. Loops longer than [`MAX_LOOP_SLOTS`](crate::walks::MAX_LOOP_SLOTS) are not looked at.
pub fn loop_exits(insns: &[Insn], start: usize, end: usize) -> Vec<bool> {
    let len = end - start;
    let (mut inside, mut around) = (vec![false; len], vec![false; len]);
    let target = |pc: usize| insns[pc].jump_target(pc).and_then(|t| usize::try_from(t).ok());
    for back_edge in start..end {
        let Some(head) = target(back_edge).filter(|&h| h <= back_edge && h >= start && back_edge - h < crate::walks::MAX_LOOP_SLOTS) else { continue };
        // Slots of `head..=back_edge` from which a forward path inside the range reaches one
        // of its backward jumps.
        let mut reaches = vec![false; back_edge - head + 1];
        for pc in (head..=back_edge).rev() {
            let insn = insns[pc];
            if matches!(insn, Insn::LddwHigh) {
                continue;
            }
            let next = pc + if matches!(insn, Insn::Lddw { .. }) { 2 } else { 1 };
            let falls = !matches!(insn, Insn::Ja { .. } | Insn::Exit);
            let forward = |t: usize| t > pc && t <= back_edge && reaches[t - head];
            reaches[pc - head] = target(pc).is_some_and(|t| t <= pc && t >= head) || (falls && forward(next)) || target(pc).is_some_and(forward);
        }
        for pc in head..=back_edge {
            inside[pc - start] = true;
            around[pc - start] |= reaches[pc - head];
        }
    }
    inside.iter().zip(&around).map(|(&i, &a)| i && !a).collect()
}

/// The register the loop's exit test compares, and the largest value it lets through (`None`:
/// nothing gets through, which bounds nothing useful and is not treated specially).
fn exit_limit(insns: &[Insn], head: usize, back_edge: usize, on_every_path: &dyn Fn(usize) -> bool) -> Option<(Reg, Option<u64>)> {
    // The back edge itself: `if v < K goto head` / `if v <= K goto head`.
    if let Insn::Jump { width: Width::W64, cond: cond @ (JmpCond::Lt | JmpCond::Le), dst, src: Operand::Imm(k), .. } = insns[back_edge] {
        let k = k as i64 as u64;
        return Some((dst, if cond == JmpCond::Le { Some(k) } else { k.checked_sub(1) }));
    }
    // `if v > K goto out` / `if v >= K goto out` on every path.
    (head..back_edge).find_map(|pc| match insns[pc] {
        Insn::Jump { width: Width::W64, cond: cond @ (JmpCond::Gt | JmpCond::Ge), dst, src: Operand::Imm(k), off }
            if (pc as i64 + 1 + off as i64) > back_edge as i64 && on_every_path(pc) =>
        {
            let k = k as i64 as u64;
            Some((dst, if cond == JmpCond::Gt { Some(k) } else { k.checked_sub(1) }))
        }
        _ => None,
    })
}

/// The step `c` and slot of the only write to `v` in the loop, when it is `v += c` with
/// `c > 0`.
fn the_counter(insns: &[Insn], head: usize, back_edge: usize, v: Reg) -> Option<(u64, usize)> {
    let mut writes = (head..=back_edge).filter(|&pc| insns[pc].written_reg() == Some(v));
    let pc = writes.next()?;
    if writes.next().is_some() {
        return None;
    }
    match insns[pc] {
        Insn::Alu { width: Width::W64, op: AluOp::Add, dst, src: Operand::Imm(c) } if dst == v && c > 0 => Some((c as u64, pc)),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::asm::assemble;
    use crate::insn::decode;

    fn loops(src: &str) -> Vec<CountedLoop> {
        let insns = decode(&assemble(src).unwrap()).unwrap();
        counted_loops(&insns, 0, insns.len())
    }

    #[test]
    fn a_rotated_loop_entered_in_its_middle_is_counted() {
        // The shape clang gives `for (i = 0; i < n && i < 1024; i++)`: entered at its middle.
        let found = loops("r3 = 0\ngoto +3\nif r3 > 1022 goto +5\nr3 += 1\nif r3 >= r2 goto +3\nr0 = *(u8 *)(r1 + 0)\nif r0 != 0 goto -5\nr0 = 1\nexit");
        // 1,022 / 1 + 1 complete trips and one partial.
        assert_eq!(found, vec![CountedLoop { head: 2, back_edge: 6, max_trips: 1024 }]);
        assert_eq!(found[0].max_cost(), Some(1024 * 5));
    }

    #[test]
    fn ways_out_of_loops_are_found() {
        // strcmp's shape: a mismatch returns from inside the loop (slots 7-10), the end of the
        // loop leaves to slot 12.
        let src = "r3 = 0\ngoto +3\nif r3 > 1022 goto +9\nr3 += 1\nif r3 >= r2 goto +7\nr0 = *(u8 *)(r1 + 0)\n\
                   if r0 == r4 goto +4\nr0 = 1\nif r0 > r4 goto +3\nr0 = 2\nexit\nif r0 != 0 goto -10\nexit";
        let insns = decode(&assemble(src).unwrap()).unwrap();
        let exits: Vec<usize> = loop_exits(&insns, 0, insns.len()).iter().enumerate().filter(|e| *e.1).map(|e| e.0).collect();
        assert_eq!(exits, vec![7, 8, 9, 10]);
        // An inner loop's way out that goes on around an outer loop is no way out.
        let src = "r1 = 0\nr2 = 0\nr2 += 1\nif r2 < 5 goto -2\nif r3 == 0 goto +2\nr1 += 1\nif r1 < 100 goto -6\nexit";
        let insns = decode(&assemble(src).unwrap()).unwrap();
        assert!(loop_exits(&insns, 0, insns.len()).iter().all(|&e| !e));
    }

    #[test]
    fn a_bottom_tested_loop_is_counted() {
        let found = loops("r1 = 0\nr0 += r1\nr1 += 4\nif r1 < 100 goto -3\nexit");
        assert_eq!(found, vec![CountedLoop { head: 1, back_edge: 3, max_trips: 99 / 4 + 2 }]);
    }

    #[test]
    fn loops_that_need_more_than_their_code_to_end_are_not_counted() {
        for src in [
            // The counter written twice.
            "r1 = 0\nr1 += 1\nr1 += 1\nif r1 < 100 goto -3\nexit",
            // Stepped down, or by zero.
            "r1 = 0\nr1 += -1\nif r1 < 100 goto -2\nexit",
            "r1 = 0\nr1 += 0\nif r1 < 100 goto -2\nexit",
            // The step jumped over on some paths.
            "r1 = 0\nif r2 == 0 goto +1\nr1 += 1\nif r1 < 100 goto -3\nexit",
            // The test jumped over.
            "r1 = 0\nif r2 == 0 goto +1\nif r1 > 100 goto +2\nr1 += 1\ngoto -4\nexit",
            // A signed or 32-bit test, a register bound, `!=`.
            "r1 = 0\nr1 += 1\nif r1 s< 100 goto -2\nexit",
            "r1 = 0\nr1 += 1\nif w1 < 100 goto -2\nexit",
            "r1 = 0\nr1 += 1\nif r1 < r2 goto -2\nexit",
            "r1 = 0\nr1 += 1\nif r1 != 100 goto -2\nexit",
            // A call in the body.
            "r6 = 0\ncall 1\nr6 += 1\nif r6 < 100 goto -3\nexit",
            // An inner loop.
            "r1 = 0\nr2 += 1\nif r2 < 5 goto -2\nr1 += 1\nif r1 < 100 goto -4\nexit",
            // A backward jump out of it (an outer loop's `continue`), or into it from after it.
            "r1 = 0\nr2 = 0\nr1 += 1\nif r2 == 7 goto -3\nif r1 < 100 goto -3\nexit",
            "r1 = 0\nr1 += 1\nif r1 < 100 goto -2\nif r2 == 7 goto -3\nexit",
            // A bound that wraps: `v <= u64::MAX`.
            "r1 = 0\nr1 += 1\nif r1 <= -1 goto -2\nexit",
        ] {
            let found = loops(src);
            assert!(found.iter().all(|l| l.max_trips <= 7), "{src}: {found:?}");
        }
    }
}
