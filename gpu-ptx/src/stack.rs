//! The stack plan (`bpftime_vm::stack`: stores nothing reads, keys forwarded to inlined
//! lookups) as the GPU translator uses it, with the GPU's helpers.

pub use bpftime_vm::stack::{ends_run, plan, CallUse, StackPlan};

#[cfg(test)]
mod tests {
    use super::*;
    use bpftime_vm::analysis::Pointee;
    use bpftime_vm::insn::{CallTarget, Insn, LddwKind};
    use bpftime_vm::Program;
    use std::collections::{HashMap, HashSet};

    /// `src` verified with map 1 (4-byte keys, 8-byte values) and the GPU's helpers; `lookup` is
    /// what its calls of helper 1 read (every other helper reads its arguments).
    fn plan_of(src: &str, lookup: CallUse) -> (StackPlan, Vec<usize>, Vec<usize>) {
        struct OneMap;
        impl bpftime_vm::LddwResolver for OneMap {
            fn resolve(&self, _kind: LddwKind, lo: i32, _hi: i32) -> Result<u64, String> {
                Ok(crate::MAP_TAG | lo as u64)
            }
            fn pointee(&self, kind: LddwKind, _lo: i32, _hi: i32) -> Option<Pointee> {
                (kind == LddwKind::MapFd).then_some(Pointee::Map { value_size: 8, key_size: 4, array: None })
            }
        }
        let helpers = crate::std_helpers::standard();
        let raw = bpftime_vm::asm::assemble(src).unwrap();
        let prog = bpftime_vm::verify(&raw, std::sync::Arc::new(helpers.verifier_table()), &OneMap).unwrap();
        let f = prog.functions()[0];
        let plan = plan(&prog, f.start, f.end, true, |_, id| match helpers.get(id) {
            _ if id == 1 => lookup,
            Some(h) if h.runs_program_code() => CallUse::RunsProgram,
            h => CallUse::Helper(h.map_or(5, |h| h.arguments_read())),
        });
        let pcs = |want: fn(&Insn) -> bool| (f.start..f.end).filter(|&pc| want(&prog.insns()[pc])).collect::<Vec<_>>();
        (plan, pcs(|i| matches!(i, Insn::Store { .. })), pcs(|i| matches!(i, Insn::Call(CallTarget::Helper(1)))))
    }

    /// `src` verified as [`plan_of`] verifies it.
    fn verified(src: &str) -> Program {
        struct NoMaps;
        impl bpftime_vm::LddwResolver for NoMaps {
            fn resolve(&self, _kind: LddwKind, lo: i32, _hi: i32) -> Result<u64, String> {
                Ok(lo as u64)
            }
        }
        let helpers = crate::std_helpers::standard();
        bpftime_vm::verify(&bpftime_vm::asm::assemble(src).unwrap(), std::sync::Arc::new(helpers.verifier_table()), &NoMaps).unwrap()
    }

    const KEY: &str = "*(u32 *)(r10 - 4) = r6\nr2 = r10\nr2 += -4\nr1 = map_fd(1) ll\ncall 1\n";

    #[test]
    fn a_key_an_inlined_lookup_does_not_read_is_not_stored() {
        let src = format!("r6 = *(u32 *)(r1 + 0)\n{KEY}r0 = 0\nexit");
        let (plan, stores, calls) = plan_of(&src, CallUse::ConstantKeyLookup);
        assert_eq!(plan.dead, HashSet::from([stores[0]]));
        assert!(plan.forwarded.is_empty());
        // Read from its register instead of the stack.
        let (plan, stores, calls2) = plan_of(&src, CallUse::KeyLookup);
        assert_eq!(calls, calls2);
        assert_eq!(plan.forwarded, HashMap::from([(calls[0], stores[0])]));
        assert_eq!(plan.dead, HashSet::from([stores[0]]));
    }

    #[test]
    fn stores_something_may_read_stay() {
        // A helper given the key's address reads it.
        let src = format!("r6 = *(u32 *)(r1 + 0)\n{KEY}r0 = 0\nexit");
        let (plan, ..) = plan_of(&src, CallUse::Helper(2));
        assert!(plan.dead.is_empty() && plan.forwarded.is_empty(), "{plan:?}");
        // Read back after the lookup, on one path.
        let src = format!("r6 = *(u32 *)(r1 + 0)\n{KEY}if r0 == 0 goto +1\nr0 = *(u32 *)(r10 - 4)\nr0 = 0\nexit");
        let (plan, stores, calls) = plan_of(&src, CallUse::KeyLookup);
        assert!(plan.dead.is_empty(), "{plan:?}");
        assert_eq!(plan.forwarded, HashMap::from([(calls[0], stores[0])]));
        // Through a pointer the analysis cannot place: every byte may be read.
        let src = format!("r6 = *(u32 *)(r1 + 0)\n*(u64 *)(r10 - 16) = r6\nr7 = r10\nif r6 == 0 goto +1\nr7 = r1\n{KEY}r0 = *(u8 *)(r7 - 9)\nr0 = 0\nexit");
        let (plan, stores, _) = plan_of(&src, CallUse::KeyLookup);
        assert!(!plan.dead.contains(&stores[0]), "{plan:?}");
    }

    #[test]
    fn a_store_overwritten_before_any_read_is_dead() {
        let src = "*(u64 *)(r10 - 8) = 1\n*(u64 *)(r10 - 8) = 2\nr0 = *(u64 *)(r10 - 8)\nexit";
        let (plan, stores, _) = plan_of(src, CallUse::KeyLookup);
        assert_eq!(plan.dead, HashSet::from([stores[0]]));
        // Partly overwritten: the other bytes are still read.
        let src = "*(u64 *)(r10 - 8) = 1\n*(u32 *)(r10 - 8) = 2\nr0 = *(u64 *)(r10 - 8)\nexit";
        assert!(plan_of(src, CallUse::KeyLookup).0.dead.is_empty());
    }

    #[test]
    fn frames_outlive_their_functions() {
        // The second call of `f` reads what the first stored (the interpreter gives 7): the
        // store before a called function's exit stays.
        let src = "r1 = 0\ncall f\nr1 = 1\ncall f\nexit\nf:\nif r1 != 0 goto +3\n*(u64 *)(r10 - 8) = 7\nr0 = 0\nexit\nr0 = *(u64 *)(r10 - 8)\nexit";
        let prog = verified(src);
        let callee = prog.functions()[1];
        let plan = plan(&prog, callee.start, callee.end, false, |_, _| CallUse::Helper(5));
        assert!(plan.dead.is_empty(), "{plan:?}");
        // A callback of bpf_loop can reach its caller's frame whatever the arguments (here the
        // callback by number, and its frame's address computed): the store before the loop stays.
        let src = "*(u64 *)(r10 - 8) = 1\nr6 = func(8) ll\nr1 = 2\nr2 = 10\nr3 = 0\nr4 = 0\nr5 = 0\ncall 181\nexit\nr1 = r10\nr1 += 3576\nr0 = *(u64 *)(r1 + 0)\nexit";
        let (plan, ..) = plan_of(src, CallUse::KeyLookup);
        assert!(plan.dead.is_empty(), "{plan:?}");
    }

    #[test]
    fn a_key_changed_after_its_store_is_read_from_the_stack() {
        // A byte of the key stored again between: not forwarded, and both stores read.
        let src = "r6 = *(u32 *)(r1 + 0)\n*(u32 *)(r10 - 4) = r6\n*(u8 *)(r10 - 3) = 7\nr2 = r10\nr2 += -4\nr1 = map_fd(1) ll\ncall 1\nr0 = 0\nexit";
        let (plan, ..) = plan_of(src, CallUse::KeyLookup);
        assert!(plan.forwarded.is_empty() && plan.dead.is_empty(), "{plan:?}");
        // Stored in another block (a jump lands between): not forwarded.
        let src = "r6 = *(u32 *)(r1 + 0)\n*(u32 *)(r10 - 4) = r6\nif r6 == 0 goto +1\nr6 += 1\nr2 = r10\nr2 += -4\nr1 = map_fd(1) ll\ncall 1\nr0 = 0\nexit";
        let (plan, ..) = plan_of(src, CallUse::KeyLookup);
        assert!(plan.forwarded.is_empty() && plan.dead.is_empty(), "{plan:?}");
    }
}
