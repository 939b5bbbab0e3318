//! # bpftime-vm: the eBPF virtual machine core
//!
//! What it is: the instruction model ([`insn`]), a disassembler ([`disasm`]) and assembler
//! ([`asm`]) in llvm-objdump syntax, the [`verifier`] that turns bytecode into a [`Program`],
//! the reference [`interp`]reter, and the run-time ABI both engines share ([`exec`]: helper
//! calls, the per-run state, memory regions and their checks).
//!
//! What it is not: it knows nothing of maps, shared memory, processes or attach points. The
//! runtime above it supplies helpers (a [`HelperTable`]), resolves map references in `lddw`
//! (an [`LddwResolver`]) and declares the memory programs may touch ([`Region`]).
//!
//! Who calls it: `bpftime-jit` (compiles a [`Program`] with Cranelift), the object loader, the
//! CLI and the agent.
//!
//! ```
//! use bpftime_vm::{asm::assemble, exec::{run, Context, HelperTable, RunOptions}, verifier, Interpreter, NoMaps};
//! use std::sync::Arc;
//! let code = assemble("r0 = r1\nr0 += 2\nexit").unwrap();
//! let prog = verifier::verify(&code, Arc::new(HelperTable::new()), &NoMaps).unwrap();
//! let interp = Interpreter::new(Arc::new(prog));
//! // With no context r1 is 0.
//! assert_eq!(run(&interp, Context::None, &RunOptions::default()), Ok(2));
//! ```

pub mod analysis;
pub mod asm;
pub mod conformance;
pub mod disasm;
pub mod exec;
pub mod insn;
pub mod interp;
pub mod kernel_rules;
pub mod loops;
pub mod program;
pub mod range;
pub mod record;
pub mod semantics;
pub mod stack;
pub mod thread_exit;
pub mod verifier;
pub mod walks;

pub use exec::{Context, Engine, Fault, HelperFn, HelperTable, Region, RunError, RunOptions, RunState};
pub use insn::{Insn, RawInsn, Reg};
pub use interp::Interpreter;
pub use program::{Function, Program};
pub use verifier::{first_unreachable, reached_slots, verify, verify_bytecode, verify_with, Checks, LddwResolver, NoMaps, VerifyError, VerifyErrorKind};
