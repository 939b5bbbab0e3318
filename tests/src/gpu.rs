//! Running programs through the GPU backend without a GPU: translate to PTX, execute the PTX
//! with `bpftime_gpu_ptx::interp`, and read the outcome as the CPU engines report it.

use bpftime_gpu_ptx::interp::{Launch, Machine, Module};
use bpftime_gpu_ptx::{state, translate, HelperSet, LddwMaps, Target, RUN_KERNEL, RUN_OUT_STRIDE};
use bpftime_vm::{Program, RunError};

/// What a run on the PTX interpreter gave: the outcome and the context memory afterwards.
pub struct GpuRun {
    pub result: Result<u64, RunError>,
    pub mem: Vec<u8>,
}

/// Where the PTX run puts the context and the stack: by default anywhere; to compare with a
/// CPU run exactly (pointers in registers and memory, fault addresses), where the CPU run had
/// them.
#[derive(Clone, Copy, Debug, Default)]
pub struct Placement {
    /// Address of the context.
    pub ctx: Option<u64>,
    /// Address of the bottom of the 4 KiB stack.
    pub stack: Option<u64>,
}

/// Translates `prog` and runs it once on `mem` (r1 = its address, r2 = its length; no memory
/// means r1 = r2 = 0) with `budget`. Errors are translation or interpretation failures (a bug
/// in the backend), not faults of the program (those are in `result`).
pub fn run_on_ptx_interpreter(prog: &Program, helpers: &HelperSet, mem: &[u8], budget: u64) -> Result<GpuRun, String> {
    run_on_ptx_interpreter_at(prog, helpers, mem, budget, Placement::default())
}

/// [`run_on_ptx_interpreter`] with the context and stack where `at` says.
pub fn run_on_ptx_interpreter_at(prog: &Program, helpers: &HelperSet, mem: &[u8], budget: u64, at: Placement) -> Result<GpuRun, String> {
    let ptx = translate(prog, helpers, &LddwMaps::default(), Target::default()).map_err(|e| format!("translate: {e}"))?;
    let module = Module::parse(&ptx).map_err(|e| format!("{e}\n{ptx}"))?;
    let mut m = Machine::new(module);
    if let Some(stack) = at.stack {
        // The kernel's locals: the state block, then the stack.
        m.local_base = stack - state::STATE_SIZE as u64;
    }
    let ctx = match at.ctx {
        Some(a) => m.memory.alloc_at(a, mem.len().max(1) as u64).map_err(|e| e.to_string())?,
        None => m.memory.alloc(mem.len().max(1) as u64),
    };
    m.memory.write(ctx, mem).map_err(|e| e.to_string())?;
    let out = m.memory.alloc(RUN_OUT_STRIDE);
    m.launch(RUN_KERNEL, &[ctx, mem.len() as u64, 0, 0, budget, 0, 0, 0, 0, 0, 0, out, 1], Launch::default()).map_err(|e| format!("{e}\n{ptx}"))?;
    let raw = m.memory.read(out, RUN_OUT_STRIDE).map_err(|e| e.to_string())?;
    let r0 = u64::from_le_bytes(raw[..8].try_into().expect("8 bytes"));
    let result = state::outcome(&raw[8..], r0);
    Ok(GpuRun { result, mem: m.memory.read(ctx, mem.len() as u64).map_err(|e| e.to_string())? })
}

/// The bottom of the stack [`bpftime_vm::exec::run`] uses on this thread (it reuses one per
/// thread): found by running `r0 = r10`.
pub fn cpu_stack_bottom() -> u64 {
    use bpftime_vm::exec::{run, Context, HelperTable, RunOptions};
    let code = bpftime_vm::asm::assemble("r0 = r10\nexit").expect("assembles");
    let prog = bpftime_vm::verify(&code, std::sync::Arc::new(HelperTable::new()), &bpftime_vm::NoMaps).expect("verifies");
    let fp = run(&bpftime_vm::Interpreter::new(std::sync::Arc::new(prog)), Context::None, &RunOptions::default()).expect("runs");
    fp - state::STACK_SIZE as u64
}

/// The data-driven tests' helpers (see `datatest::test_helpers`), written in PTX: 1 pack_args,
/// 2 sum_bytes, 3 always_fails, 5 unwind.
pub fn test_helper_set() -> HelperSet {
    use bpftime_gpu_ptx::state::off;
    use bpftime_gpu_ptx::GpuHelper;
    let pack = "\
.reg .b64 %x, %y;
and.b64 %x, %a1, 15;
and.b64 %y, %a2, 15;
shl.b64 %y, %y, 4;
or.b64 %x, %x, %y;
and.b64 %y, %a3, 15;
shl.b64 %y, %y, 8;
or.b64 %x, %x, %y;
and.b64 %y, %a4, 15;
shl.b64 %y, %y, 12;
or.b64 %x, %x, %y;
and.b64 %y, %a5, 15;
shl.b64 %y, %y, 16;
or.b64 %ret, %x, %y;
ret;";
    // The range must lie in one region a program may read, as `RunState::slice` checks on the
    // CPU: the GPU helpers' own range check.
    let sum = ".reg .b64 %ok, %x, %sum, %b;\n.reg .b32 %w;\n.reg .pred %p;\n\
call.uni (%ok), bpf_range_ok, (%st, %a1, %a2, 0);\nsetp.eq.u64 %p, %ok, 0;\n@%p bra $efault;\n\
mov.b64 %sum, 0;\nmov.b64 %x, 0;\n$loop:\nsetp.ge.u64 %p, %x, %a2;\n@%p bra $done;\nadd.u64 %b, %a1, %x;\nld.u8 %w, [%b];\n\
cvt.u64.u32 %b, %w;\nadd.u64 %sum, %sum, %b;\nadd.u64 %x, %x, 1;\nbra $loop;\n$done:\nmov.b64 %ret, %sum;\nret;\n$efault:\nmov.b64 %ret, -14;\nret;";
    let fails = format!(
        "st.u32 [%st+{}], {};\nst.u32 [%st+{}], -1;\nst.u32 [%st+{}], {};\nst.u64 [%st+{}], -22;\nst.u32 [%st+{}], 3;\nmov.b64 %ret, 0;\nret;",
        off::STATUS,
        bpftime_gpu_ptx::state::STATUS_FAULT,
        off::FAULT_INSN,
        off::FAULT_KIND,
        bpftime_gpu_ptx::state::FAULT_HELPER,
        off::FAULT_ARG,
        off::FAULT_ARG2
    );
    HelperSet::conformance()
        .with(GpuHelper::ptx(1, "pack_args", pack))
        .with(GpuHelper::ptx(2, "sum_bytes", sum))
        .with(GpuHelper::ptx(3, "always_fails", fails))
        .with_support(bpftime_gpu_ptx::std_helpers::support())
}
