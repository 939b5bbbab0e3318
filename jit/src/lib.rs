//! # bpftime-jit: a Cranelift JIT for verified eBPF programs
//!
//! What it is: [`JitProgram::compile`] turns a [`Program`] that passed the verifier into
//! native code (x86_64, and aarch64 where Cranelift's native backend builds) with the exact
//! semantics of the reference interpreter: same helper table and ABI, same bpf-to-bpf calls
//! with their own 512-byte frames, same run-time memory checks, same faults, same loop budget.
//! The translation loop lives in [`translate`](crate::translate) (one eBPF function to one
//! Cranelift function); [`runtime_calls`](crate::runtime_calls) holds the few out-of-line paths.
//!
//! What it is not: it does no verification of its own and knows nothing of attach points.
//!
//! ```
//! use bpftime_vm::{asm::assemble, exec::{run, Context, HelperTable, RunOptions}, verify, NoMaps};
//! use bpftime_jit::JitProgram;
//! use std::sync::Arc;
//! let code = assemble("r0 = *(u32 *)(r1 + 0)\nr0 *= 3\nexit").unwrap();
//! let prog = Arc::new(verify(&code, Arc::new(HelperTable::new()), &NoMaps).unwrap());
//! let jit = JitProgram::compile(prog).unwrap();
//! let mut mem = 14u32.to_le_bytes();
//! assert_eq!(run(&jit, Context::Mem(&mut mem), &RunOptions::default()), Ok(42));
//! ```

pub mod aot;
pub mod cache;
mod files;
mod imports;
pub mod link;
mod mapping;
mod runtime_calls;
mod translate;

pub use imports::Import;

use bpftime_vm::exec::{Engine, HelperFn, RunState};
use bpftime_vm::Program;
use cranelift_codegen::ir::types::I64;
use cranelift_codegen::ir::{AbiParam, FuncRef, GlobalValue, InstBuilder, MemFlagsData as MemFlags, Signature, UserFuncName, Value};
use cranelift_codegen::isa::{CallConv, OwnedTargetIsa};
use cranelift_codegen::settings::{self, Configurable};
use cranelift_frontend::{FunctionBuilder, FunctionBuilderContext};
use cranelift_jit::{JITBuilder, JITModule};
use cranelift_module::{default_libcall_names, DataDescription, DataId, FuncId, Linkage, Module};
use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use translate::{FnTranslator, Linker, Sigs};

/// Why a program could not be compiled.
#[derive(Debug, thiserror::Error)]
pub enum JitError {
    /// The host has no Cranelift backend.
    #[error("unsupported host: {0}")]
    UnsupportedHost(String),
    /// Cranelift refused a setting.
    #[error("cranelift settings: {0}")]
    Settings(String),
    /// Cranelift failed to compile or place a function.
    #[error("compiling function {function} (insn {start}): {message}")]
    Codegen { function: usize, start: usize, message: String },
    /// Compiled code could not be linked or mapped (the code cache, `bpftime aot`).
    #[error("loading compiled code: {0}")]
    Load(String),
}

/// Compilation choices.
#[derive(Clone, Copy, Debug)]
pub struct JitOptions {
    /// Cranelift optimisation: `true` for `speed`, `false` for `none` (faster to compile).
    pub optimize: bool,
}

impl Default for JitOptions {
    fn default() -> Self {
        JitOptions { optimize: true }
    }
}

/// The native entry point: `(state, fp, r1, r2, r3, r4, r5) -> r0`.
type EntryFn = bpftime_vm::exec::NativeEntry;

/// Where a [`JitProgram`]'s code lives.
enum Code {
    /// Compiled in this process.
    Jit(Box<JITModule>),
    /// Mapped from a code cache entry or an object (see [`link`]).
    Mapped(#[allow(dead_code)] Arc<mapping::CodeMapping>),
}

/// A program compiled to native code. Run it with [`bpftime_vm::exec::run`].
pub struct JitProgram {
    program: Arc<Program>,
    entry: EntryFn,
    code: Option<Code>,
    code_size: usize,
    /// Bytes of machine code of each function, where known (see [`JitProgram::machine_code`]).
    sizes: Vec<usize>,
    /// Every function's entry, by function index (for callbacks).
    functions: Vec<EntryFn>,
}

// SAFETY: after `finalize_definitions` (or once mapped read-only) the code and data are
// immutable; the only later use of the module is freeing it in `Drop`, which takes `&mut self`.
// The entry function only reads the (immutable) program constants and the per-run state it is
// given.
unsafe impl Send for JitProgram {}
// SAFETY: see `Send`; concurrent runs share nothing but immutable code.
unsafe impl Sync for JitProgram {}

impl std::fmt::Debug for JitProgram {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JitProgram").field("insns", &self.program.len()).field("code_size", &self.code_size).finish()
    }
}

/// The host's code generator. `pic`: code that reads every [`Import`] from a table beside it
/// (position-independent, for other processes), rather than holding this process's values.
fn host_isa(opts: JitOptions, pic: bool) -> Result<OwnedTargetIsa, JitError> {
    let mut flags = settings::builder();
    let set = |f: &mut settings::Builder, k: &str, v: &str| f.set(k, v).map_err(|e| JitError::Settings(e.to_string()));
    set(&mut flags, "opt_level", if opts.optimize { "speed" } else { "none" })?;
    set(&mut flags, "enable_verifier", if cfg!(debug_assertions) { "true" } else { "false" })?;
    set(&mut flags, "use_colocated_libcalls", "false")?;
    set(&mut flags, "is_pic", if pic { "true" } else { "false" })?;
    cranelift_native::builder()
        .map_err(|e| JitError::UnsupportedHost(e.to_string()))?
        .finish(settings::Flags::new(flags))
        .map_err(|e| JitError::Settings(e.to_string()))
}

fn signature(call_conv: CallConv, params: usize) -> Signature {
    let mut sig = Signature::new(call_conv);
    sig.params.extend((0..params).map(|_| AbiParam::new(I64)));
    sig.returns.push(AbiParam::new(I64));
    sig
}

/// The symbol of function `index` of the program whose entry symbol is `prefix`.
pub(crate) fn function_symbol(prefix: &str, index: usize) -> String {
    if index == 0 {
        prefix.to_string()
    } else {
        format!("{prefix}.fn{index}")
    }
}

/// Resolves calls and imports of one function being translated into module `M`.
struct ModuleLinker<'m, M: Module> {
    module: &'m mut M,
    ids: &'m [FuncId],
    program: &'m Program,
    prefix: &'m str,
    /// Imports are loads from slots beside the code (else constants of this process).
    pic: bool,
    funcs: HashMap<usize, FuncRef>,
    globals: HashMap<Import, GlobalValue>,
    /// The program's slots, declared so far (defined once all its functions are).
    slots: &'m mut BTreeMap<Import, DataId>,
}

impl<M: Module> Linker for ModuleLinker<'_, M> {
    fn function(&mut self, b: &mut FunctionBuilder, index: usize) -> FuncRef {
        *self.funcs.entry(index).or_insert_with(|| self.module.declare_func_in_func(self.ids[index], b.func))
    }

    fn import(&mut self, b: &mut FunctionBuilder, import: Import) -> Value {
        if !self.pic {
            let v = import.value(self.program).expect("a verified program has every import it uses");
            return b.ins().iconst(I64, v as i64);
        }
        let gv = match self.globals.get(&import) {
            Some(&gv) => gv,
            None => {
                let id = match self.slots.get(&import) {
                    Some(&id) => id,
                    None => {
                        let id = self.module.declare_data(&import.symbol(self.prefix), Linkage::Local, true, false).expect("slot symbols are distinct");
                        self.slots.insert(import, id);
                        id
                    }
                };
                let gv = self.module.declare_data_in_func(id, b.func);
                self.globals.insert(import, gv);
                gv
            }
        };
        // The slot is filled before the code first runs and never changes after: a pure load
        // (`can_move`), which the optimiser may share, hoist or drop where unused.
        let slot = b.ins().symbol_value(I64, gv);
        b.ins().load(I64, MemFlags::trusted().with_readonly().with_can_move(), slot, 0)
    }
}

/// What [`define_program`] put into a module.
pub(crate) struct Defined {
    /// The program's functions, entry first.
    pub ids: Vec<FuncId>,
    /// Import slots (position-independent code only), in [`Import`] order.
    pub slots: Vec<(Import, DataId)>,
    code_size: usize,
    /// Bytes of machine code of each function.
    sizes: Vec<usize>,
}

/// Translates every function of `program` into `module`, the entry named `prefix`.
fn define_program<M: Module>(module: &mut M, program: &Program, prefix: &str, entry_linkage: Linkage, pic: bool) -> Result<Defined, JitError> {
    let cc = module.isa().default_call_conv();
    let func_sig = signature(cc, 7);
    let cg_err = |function: usize, start: usize| move |e: &dyn std::fmt::Display| JitError::Codegen { function, start, message: e.to_string() };
    let ids: Vec<FuncId> = (0..program.functions().len())
        .map(|i| {
            let linkage = if i == 0 { entry_linkage } else { Linkage::Local };
            module.declare_function(&function_symbol(prefix, i), linkage, &func_sig).map_err(|e| cg_err(i, program.functions()[i].start)(&e))
        })
        .collect::<Result<_, _>>()?;

    let mut ctx = module.make_context();
    let mut fctx = FunctionBuilderContext::new();
    let mut sizes = vec![];
    let mut slots = BTreeMap::new();
    for (i, &f) in program.functions().iter().enumerate() {
        ctx.func.signature = func_sig.clone();
        ctx.func.name = UserFuncName::user(0, i as u32);
        {
            let mut b = FunctionBuilder::new(&mut ctx.func, &mut fctx);
            let sigs = Sigs {
                helper: b.import_signature(signature(cc, 6)),
                check: b.import_signature({
                    let mut s = signature(runtime_calls::CHECK_ACCESS_CALL_CONV, 1);
                    s.returns.clear();
                    s
                }),
                raise: b.import_signature({
                    let mut s = signature(cc, 4);
                    s.returns.clear();
                    s
                }),
                fallback: b.import_signature(signature(cc, 5)),
                cpu: b.import_signature(signature(cc, 0)),
            };
            let mut linker =
                ModuleLinker { module: &mut *module, ids: &ids, program, prefix, pic, funcs: HashMap::new(), globals: HashMap::new(), slots: &mut slots };
            let b = FnTranslator::new(b, program, f, sigs, &mut linker).translate();
            b.finalize(module.isa().frontend_config());
        }
        module.define_function(ids[i], &mut ctx).map_err(|e| cg_err(i, f.start)(&e))?;
        let size = ctx.compiled_code().map(|c| c.code_buffer().len()).unwrap_or(0);
        sizes.push(size);
        module.clear_context(&mut ctx);
    }
    for &id in slots.values() {
        let mut desc = DataDescription::new();
        desc.define_zeroinit(8);
        desc.set_align(8);
        module.define_data(id, &desc).map_err(|e| cg_err(0, 0)(&e))?;
    }
    Ok(Defined { ids, slots: slots.into_iter().collect(), code_size: sizes.iter().sum(), sizes })
}

/// The stores to the stack the compiled code leaves out (by instruction index): nothing later
/// in the run can read what they write (see `bpftime_vm::stack`).
pub fn stores_left_out(prog: &Program) -> Vec<usize> {
    let mut pcs: Vec<usize> = prog.functions().iter().flat_map(|&f| translate::dead_stores(prog, f)).collect();
    pcs.sort_unstable();
    pcs
}

/// Compiles programs into one relocatable object file (ELF on Linux) whose code loads every
/// [`Import`] from a slot of its own: the format of `bpftime aot` and of the code cache. Each
/// program's entry is the local symbol given with it (its other functions `NAME.fnN`); the
/// slots are local, zero-filled data objects named by [`Import::symbol`].
pub fn compile_object(programs: &[(&str, &Program)], opts: JitOptions) -> Result<Vec<u8>, JitError> {
    let (module, _) = object_module(programs, opts)?;
    emit(module)
}

/// An object module holding `programs`, and what each put into it (to be [`emit`]ted).
pub(crate) fn object_module(programs: &[(&str, &Program)], opts: JitOptions) -> Result<(cranelift_object::ObjectModule, Vec<Defined>), JitError> {
    let isa = host_isa(opts, true)?;
    let builder = cranelift_object::ObjectBuilder::new(isa, "bpftime-aot", default_libcall_names()).map_err(|e| JitError::Settings(e.to_string()))?;
    let mut module = cranelift_object::ObjectModule::new(builder);
    // Entries are local: nothing finds them by name (our linker reads local symbols too; a C
    // program goes through the links table), so a program named `write` cannot take the place
    // of libc's `write` in the program it is linked into.
    let defined = programs.iter().map(|(name, program)| define_program(&mut module, program, name, Linkage::Local, true)).collect::<Result<_, _>>()?;
    Ok((module, defined))
}

/// The object file of `module`.
pub(crate) fn emit(module: cranelift_object::ObjectModule) -> Result<Vec<u8>, JitError> {
    module.finish().emit().map_err(|e| JitError::Load(e.to_string()))
}

/// What identifies the code generator's output on this host: target triple, ISA features,
/// options and this build of the compiler (a hash of its sources and the VM's).
pub fn code_generator_id(opts: JitOptions) -> Result<String, JitError> {
    let isa = host_isa(opts, true)?;
    let flags: Vec<String> = isa.isa_flags().iter().map(|f| f.to_string()).collect();
    Ok(format!("{} {} optimize={} build={}", isa.triple(), flags.join(","), opts.optimize, env!("BPFTIME_JIT_BUILD_ID")))
}

impl JitProgram {
    /// Compiles a verified program with default options.
    pub fn compile(program: Arc<Program>) -> Result<JitProgram, JitError> {
        Self::compile_with(program, JitOptions::default())
    }

    /// Compiles a verified program.
    pub fn compile_with(program: Arc<Program>, opts: JitOptions) -> Result<JitProgram, JitError> {
        let mut module = JITModule::new(JITBuilder::with_isa(host_isa(opts, false)?, default_libcall_names()));
        let defined = define_program(&mut module, &program, "bpf", Linkage::Local, false)?;
        module.finalize_definitions().map_err(|e| JitError::Codegen { function: 0, start: 0, message: e.to_string() })?;
        let functions: Vec<EntryFn> = defined
            .ids
            .iter()
            .map(|&id| {
                let ptr = module.get_finalized_function(id);
                // SAFETY: every function was defined with seven i64 parameters, one i64
                // result and the platform's C calling convention, which is exactly `EntryFn`.
                unsafe { std::mem::transmute::<*const u8, EntryFn>(ptr) }
            })
            .collect();
        let entry = functions[0];
        Ok(JitProgram { program, entry, code: Some(Code::Jit(Box::new(module))), code_size: defined.code_size, sizes: defined.sizes, functions })
    }

    /// Runs `program` with code linked by [`link`] and mapped by the caller: `functions` are
    /// the entries of its functions in order, `mapping` owns the code.
    pub(crate) fn from_mapping(program: Arc<Program>, mapping: Arc<mapping::CodeMapping>, functions: Vec<EntryFn>, sizes: Vec<usize>) -> JitProgram {
        let code_size = mapping.code_len();
        JitProgram { program, entry: functions[0], code: Some(Code::Mapped(mapping)), code_size, sizes, functions }
    }

    /// Runs `program` with code placed by the system linker (see [`aot::AotEntry::bind`]).
    pub(crate) fn from_linked(program: Arc<Program>, functions: Vec<EntryFn>) -> JitProgram {
        JitProgram { program, entry: functions[0], code: None, code_size: 0, sizes: vec![], functions }
    }

    /// The verified program this was compiled from.
    pub fn program(&self) -> &Arc<Program> {
        &self.program
    }

    /// Bytes of machine code generated.
    pub fn code_size(&self) -> usize {
        self.code_size
    }

    /// Address and length of the entry function's machine code (for inspection; length 0 for
    /// code the system linker placed).
    pub fn entry_code(&self) -> (*const u8, usize) {
        (self.entry as *const u8, self.sizes.first().copied().unwrap_or(0))
    }
}

impl Engine for JitProgram {
    fn execute(&self, r1: u64, r2: u64, frame_pointer: u64, state: &mut RunState) -> u64 {
        // SAFETY: `entry` is live code compiled from a verified program; `state` is a valid
        // RunState for this run whose regions describe live memory, and `frame_pointer` is the
        // top of the run's STACK_SIZE-byte stack, as the generated code expects.
        unsafe { (self.entry)(state, frame_pointer, r1, r2, 0, 0, 0) }
    }

    fn helper_functions(&self) -> &[Option<HelperFn>] {
        self.program.helpers().functions()
    }

    fn native_entry(&self) -> Option<EntryFn> {
        Some(self.entry)
    }

    fn call_function(&self, state: &mut RunState, pc: usize, args: [u64; 5]) -> Option<u64> {
        let (f, fp) = self.program.callback_frame(pc, state)?;
        if !state.charge(self.program.functions()[f].len() as u64) {
            return Some(0);
        }
        // SAFETY: as for `execute`: live code of a verified function, a valid state, and a
        // frame pointer inside the run's stack with room for the function's call chain.
        Some(unsafe { (self.functions[f])(state, fp, args[0], args[1], args[2], args[3], args[4]) })
    }

    /// Every function's code, compiled here or mapped from the cache or an object; nothing of
    /// code the system linker placed (its sizes are unknown).
    fn machine_code(&self) -> Vec<&[u8]> {
        self.functions
            .iter()
            .zip(&self.sizes)
            // SAFETY: `len` bytes of this function's code are mapped readable and executable
            // for as long as `self` lives (its module or mapping is freed only on drop).
            .map(|(&f, &len)| unsafe { std::slice::from_raw_parts(f as *const u8, len) })
            .collect()
    }
}

impl Drop for JitProgram {
    fn drop(&mut self) {
        if let Some(Code::Jit(module)) = self.code.take() {
            // SAFETY: no run can be in progress: runs borrow `self`, and we have `&mut self`.
            unsafe { module.free_memory() };
        }
        // A mapping is unmapped by its own `Drop`, after the same reasoning.
    }
}
