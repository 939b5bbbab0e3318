//! Helpers on the GPU: each is a PTX `.func (.reg .b64 %ret) bpf_helper_ID(.reg .b64 %st,
//! .reg .b64 %a1 .. %a5)` compiled into the module with the program. A helper may end the run
//! (status `STOPPED` with `STOP_VALUE`) or fault it (status `FAULT`, `FAULT_INSN` = -1: the
//! caller puts its own instruction index there), exactly as CPU helpers do through `RunState`.

use crate::state::{off, STATUS_STOPPED};
use bpftime_vm::exec::{HelperTable, RunState};
use bpftime_vm::Program;
use std::collections::BTreeMap;

/// How a helper's body is made.
#[derive(Clone, Debug)]
enum Body {
    /// Fixed PTX: register declarations and instructions (between the braces).
    Ptx(String),
    /// Depends on the program (e.g. `bpf_loop` calls the program's callbacks).
    PerProgram(fn(&Program) -> String),
}

/// One helper for the GPU.
#[derive(Clone, Debug)]
pub struct GpuHelper {
    /// Kernel (or bpftime GPU) helper id.
    pub id: u32,
    /// Name, for messages.
    pub name: &'static str,
    body: Body,
    /// `""`, or `"_trusted"` for a trusted variant (see [`GpuHelper::with_trusted_args`]).
    variant: &'static str,
    /// The variant for calls whose pointer arguments are proven, and what it assumes of them.
    trusted: Option<(Box<GpuHelper>, fn(&HelperArgs) -> bool)>,
}

use bpftime_vm::analysis::HelperArgs;

impl GpuHelper {
    /// A helper with a fixed PTX body (declarations and instructions; `%st` and `%a1`-`%a5`
    /// are the parameters, `%ret` the result). It reaches the program's memory only through
    /// the arguments it names (the translator's stack analysis relies on that, see
    /// [`crate::stack`]).
    pub fn ptx(id: u32, name: &'static str, body: impl Into<String>) -> Self {
        GpuHelper { id, name, body: Body::Ptx(body.into()), variant: "", trusted: None }
    }

    /// Adds the variant `body` for calls whose pointer arguments the verifier proved as
    /// `assumes` says (see [`bpftime_vm::Program::helper_args`]: a whole key or value of the
    /// map in r1, a buffer as long as its size argument): it reads them without checking their
    /// range, which is what makes a site of a probe calling only such helpers read nothing of
    /// its state.
    pub fn with_trusted_args(mut self, body: impl Into<String>, assumes: fn(&HelperArgs) -> bool) -> Self {
        let variant = GpuHelper { id: self.id, name: self.name, body: Body::Ptx(body.into()), variant: "_trusted", trusted: None };
        self.trusted = Some((Box::new(variant), assumes));
        self
    }

    /// The helper to call where the pointer arguments are `args`: the trusted variant when
    /// they prove what it assumes, else this one.
    pub fn for_args(&self, args: HelperArgs) -> &GpuHelper {
        match &self.trusted {
            Some((t, assumes)) if assumes(&args) => t,
            _ => self,
        }
    }

    /// A helper whose body depends on the program.
    pub fn per_program(id: u32, name: &'static str, body: fn(&Program) -> String) -> Self {
        GpuHelper { id, name, body: Body::PerProgram(body), variant: "", trusted: None }
    }

    /// The body to put in place of a call (in a scope of its own, `%ret` and `%a1`-`%a5`
    /// renamed to the caller's registers), when the helper is straight-line PTX ending in its
    /// only `ret`: no labels, no calls. A call of such a helper costs more than its body.
    pub fn inline_body(&self) -> Option<&str> {
        let Body::Ptx(b) = &self.body else { return None };
        let body = b.trim_end().strip_suffix("ret;")?;
        (!body.contains('$') && !body.contains("ret;") && !body.contains("call")).then_some(body)
    }

    /// Whether the helper runs program code (`bpf_loop`'s callbacks), which may reach any
    /// stack frame.
    pub fn runs_program_code(&self) -> bool {
        matches!(self.body, Body::PerProgram(_))
    }

    /// How many of r1-r5 the helper reads (its PTX names `%a1`..`%a5`); all five when its
    /// body depends on the program.
    pub fn arguments_read(&self) -> u32 {
        match &self.body {
            Body::Ptx(b) => (1..=5).rev().find(|n| b.contains(&format!("%a{n}"))).unwrap_or(0),
            Body::PerProgram(_) => 5,
        }
    }

    /// The `.func`'s name.
    pub fn func_name(&self) -> String {
        format!("bpf_helper_{}{}", self.id, self.variant)
    }

    /// The `.func` definition for `prog`.
    pub fn definition(&self, prog: &Program) -> String {
        let body = match &self.body {
            Body::Ptx(s) => s.clone(),
            Body::PerProgram(f) => f(prog),
        };
        format!(
            "// helper {} ({})\n.func (.reg .b64 %ret) {}(.reg .b64 %st, .reg .b64 %a1, .reg .b64 %a2, .reg .b64 %a3, .reg .b64 %a4, .reg .b64 %a5)\n{{\n{}\n}}\n",
            self.id,
            self.name,
            self.func_name(),
            body.trim_end()
        )
    }
}

/// The helpers a module may call, by id.
#[derive(Clone, Debug, Default)]
pub struct HelperSet {
    helpers: BTreeMap<u32, GpuHelper>,
    /// PTX functions the helpers call: (prototype, definition).
    support: Vec<(String, String)>,
}

/// What a CPU engine runs for a helper that exists only on the GPU: a fault.
extern "C" fn gpu_only(_: u64, _: u64, _: u64, _: u64, _: u64, state: &mut RunState) -> u64 {
    state.helper_fault(bpftime_vm::Fault::Helper { id: 0, code: -95 });
    0
}

impl HelperSet {
    /// An empty set.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds (or replaces) a helper.
    pub fn with(mut self, h: GpuHelper) -> Self {
        self.helpers.insert(h.id, h);
        self
    }

    /// Adds support functions the helpers call: (prototype ending in `;`, definition).
    pub fn with_support(mut self, support: Vec<(String, String)>) -> Self {
        self.support.extend(support);
        self
    }

    /// The support functions.
    pub fn support(&self) -> &[(String, String)] {
        &self.support
    }

    /// The helper with this id.
    pub fn get(&self, id: u32) -> Option<&GpuHelper> {
        self.helpers.get(&id)
    }

    /// Every id.
    pub fn ids(&self) -> impl Iterator<Item = u32> + '_ {
        self.helpers.keys().copied()
    }

    /// A table to verify GPU programs against: the same ids and names (their CPU functions
    /// only fault; programs verified with it are meant for [`crate::translate()`]).
    pub fn verifier_table(&self) -> HelperTable {
        let mut t = HelperTable::new();
        for h in self.helpers.values() {
            t.register(h.id, h.name, gpu_only);
        }
        t
    }

    /// The bpf_conformance suite's helper 5 (`unwind`): returns its argument, and stops the
    /// run with r0 = 0 when that is 0.
    pub fn conformance() -> Self {
        Self::new().with(unwind())
    }
}

/// Helper 5 of the conformance suite.
pub fn unwind() -> GpuHelper {
    GpuHelper::ptx(
        bpftime_vm::conformance::UNWIND_HELPER_ID,
        "unwind",
        format!(
            ".reg .pred %p;\nsetp.ne.u64 %p, %a1, 0;\n@%p bra $done;\nst.u32 [%st+{}], {STATUS_STOPPED};\nst.u64 [%st+{}], 0;\n$done:\nmov.b64 %ret, %a1;\nret;",
            off::STATUS,
            off::STOP_VALUE
        ),
    )
}
