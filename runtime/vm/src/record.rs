//! Verification records: what the verifier established about a program, without any of this
//! process's addresses, so that another process can rebuild the same [`Program`] without
//! analysing it again (the code cache stores one beside each compiled program).
//!
//! [`inputs`] serialises everything the verifier's result depends on (the bytecode with its
//! maps numbered by first use, the check mode, the helper table's ids and declared effects,
//! and what each map-naming `lddw` points to, minus addresses); [`Program::record`] the result; [`restore`] rebuilds the
//! program from a record made for the same inputs, resolving the maps for this process. A
//! record is trusted as the verifier's word: keep records where only their owner can write,
//! and restore one only for inputs that compare equal, byte for byte, to those it was made for.

use crate::analysis::{Access, Analysis, ArrayLayout, ContextNeeds, Pointee, Target};
use crate::exec::HelperTable;
use crate::insn::{decode, to_bytecode, Insn, LddwKind, RawInsn};
use crate::program::{Function, Program};
use crate::verifier::{resolve_lddw, Checks, LddwResolver};
use std::collections::HashMap;
use std::sync::Arc;

const RECORD_MAGIC: &[u8; 8] = b"BPFREC05";
/// An inlined lookup's key in a record where the verifier does not know it.
const NO_KEY: u64 = u64::MAX;

/// Why a record could not be used.
#[derive(Debug, thiserror::Error)]
pub enum RecordError {
    /// The bytecode does not decode, or a map reference does not resolve in this process.
    #[error("insn {insn}: {message}")]
    Program { insn: usize, message: String },
    /// The record is not one this build writes, or does not fit the program.
    #[error("malformed verification record: {0}")]
    Malformed(&'static str),
}

/// The verifier's inputs for `raw`, as bytes that compare equal exactly when the verifier's
/// result (up to addresses) must be the same. Fails where verification would fail to resolve.
/// `helpers` is described by its [`helpers_fingerprint`].
pub fn inputs(raw: &[RawInsn], helpers: &[u8], resolver: &dyn LddwResolver, checks: Checks) -> Result<Vec<u8>, RecordError> {
    let mut out = Vec::with_capacity(raw.len() * 8 + helpers.len() + 64);
    out.extend_from_slice(b"BPFIN01\0");
    out.push(matches!(checks, Checks::All) as u8);
    out.extend_from_slice(&(helpers.len() as u64).to_le_bytes());
    out.extend_from_slice(helpers);
    // The map-naming `lddw`s, found without decoding (a hit must be cheap; the bytecode is
    // decoded once, by `restore`, which rejects anything malformed).
    let mut maps = vec![];
    let mut pc = 0;
    while pc < raw.len() {
        if raw[pc].opc == 0x18 {
            let kind = LddwKind::from_src(raw[pc].src).unwrap_or(LddwKind::Imm64);
            if !matches!(kind, LddwKind::Imm64 | LddwKind::Func) {
                maps.push((pc, kind, raw[pc].imm, raw.get(pc + 1).map_or(0, |h| h.imm)));
            }
            pc += 1;
        }
        pc += 1;
    }
    // Map references by order of first use, not by the ids this store gave them: the result
    // depends on what each map is (below), not on its number.
    let mut canonical = raw.to_vec();
    let mut ordinals: HashMap<i32, i32> = HashMap::new();
    for &(pc, _, lo, _) in &maps {
        let next = ordinals.len() as i32;
        canonical[pc].imm = *ordinals.entry(lo).or_insert(next);
    }
    out.extend_from_slice(&(raw.len() as u64).to_le_bytes());
    out.extend_from_slice(&to_bytecode(&canonical));
    for (pc, kind, lo, hi) in maps {
        resolver.resolve(kind, lo, hi).map_err(|message| RecordError::Program { insn: pc, message })?;
        out.extend_from_slice(&(pc as u32).to_le_bytes());
        match resolver.pointee(kind, lo, hi) {
            None => out.push(0),
            Some(Pointee::Map { value_size, key_size, array }) => {
                out.push(1);
                out.extend_from_slice(&value_size.to_le_bytes());
                out.extend_from_slice(&key_size.to_le_bytes());
                out.push(array.is_some() as u8);
                if let Some(a) = array {
                    for v in [a.stride, a.max_entries as u64, a.cpu_stride, (a.cpu != 0) as u64] {
                        out.extend_from_slice(&v.to_le_bytes());
                    }
                }
            }
            Some(Pointee::Value { size, offset }) => {
                out.push(2);
                out.extend_from_slice(&size.to_le_bytes());
                out.extend_from_slice(&offset.to_le_bytes());
            }
        }
    }
    Ok(out)
}

/// What the verifier may rely on in a helper table: each helper's id, name and declared
/// effects (not its address), as part of [`inputs`].
pub fn helpers_fingerprint(helpers: &HelperTable) -> Vec<u8> {
    let mut out = Vec::new();
    for (id, h) in helpers.iter() {
        out.extend_from_slice(&id.to_le_bytes());
        out.extend_from_slice(format!("{}:{:?};", h.name, h.effects).as_bytes());
    }
    out
}

fn target_code(t: Target) -> u8 {
    match t {
        Target::Stack => 0,
        Target::Context => 1,
        Target::Memory => 2,
        Target::Unknown => 3,
    }
}

fn target_of(code: u8) -> Target {
    match code {
        0 => Target::Stack,
        1 => Target::Context,
        2 => Target::Memory,
        _ => Target::Unknown,
    }
}

impl Program {
    /// What the verifier established about this program, without addresses (see the module
    /// documentation); [`restore`] turns it back into a program.
    pub fn record(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(64 + self.len());
        let mut put = |v: u64| out.extend_from_slice(&v.to_le_bytes());
        put(u64::from_le_bytes(*RECORD_MAGIC));
        put(self.len() as u64);
        put(self.functions().len() as u64);
        for (f, depth) in self.functions().iter().zip(self.depths()) {
            put(f.start as u64);
            put(f.end as u64);
            put(f.callback as u64);
            put(*depth as u64);
        }
        let ctx = self.context_needs();
        put(ctx.len);
        put(ctx.writable as u64);
        put(self.walk_checks_on_entry() as u64);
        let mut lookups: Vec<(usize, usize, u64)> = self
            .inline_lookups()
            .iter()
            .map(|(&pc, layout)| {
                let slot = (0..self.len()).find(|&s| matches!(self.pointee(s), Some(Pointee::Map { array: Some(a), .. }) if a == *layout));
                (pc, slot.expect("an inlined lookup's array comes from an lddw"), self.lookup_key(pc).map_or(NO_KEY, u64::from))
            })
            .collect();
        lookups.sort_unstable();
        put(lookups.len() as u64);
        for (pc, slot, key) in lookups {
            put(pc as u64);
            put(slot as u64);
            put(key);
        }
        let mut helper_args: Vec<(usize, crate::analysis::HelperArgs)> =
            (0..self.len()).map(|pc| (pc, self.helper_args(pc))).filter(|(_, m)| *m != Default::default()).collect();
        helper_args.sort_unstable_by_key(|m| m.0);
        put(helper_args.len() as u64);
        for (pc, m) in helper_args {
            put(pc as u64 | (m.key as u64) << 32 | (m.value as u64) << 33 | (m.sized as u64) << 34);
        }
        match self.context_reads() {
            None => put(NO_KEY),
            Some(spans) => {
                put(spans.len() as u64);
                for &(lo, hi) in spans {
                    put(lo as u64 | (hi as u64) << 32);
                }
            }
        }
        out.extend((0..self.len()).map(|pc| {
            let a = self.access(pc);
            target_code(a.target) | (a.proven as u8) << 2 | (a.aligned as u8) << 3 | (a.probe as u8) << 4
        }));
        out
    }
}

/// Rebuilds the program a [`Program::record`] describes, for bytecode whose [`inputs`] equal
/// those the record was made for, resolving its map references with `resolver`.
pub fn restore(raw: &[RawInsn], helpers: Arc<HelperTable>, resolver: &dyn LddwResolver, record: &[u8]) -> Result<Program, RecordError> {
    let mut insns = decode(raw).map_err(|e| RecordError::Program { insn: e.insn, message: e.kind.to_string() })?;
    let n = insns.len();
    let mut words = record.chunks_exact(8).map(|c| u64::from_le_bytes(c.try_into().expect("8 bytes")));
    let mut next = |what| words.next().ok_or(RecordError::Malformed(what));
    if next("magic")?.to_le_bytes() != *RECORD_MAGIC {
        return Err(RecordError::Malformed("magic"));
    }
    if next("length")? != n as u64 {
        return Err(RecordError::Malformed("length"));
    }
    let nfuncs = next("functions")? as usize;
    if nfuncs == 0 || nfuncs > n {
        return Err(RecordError::Malformed("functions"));
    }
    let mut functions = Vec::with_capacity(nfuncs);
    let mut depths = Vec::with_capacity(nfuncs);
    for _ in 0..nfuncs {
        let (start, end, callback, depth) = (next("start")? as usize, next("end")? as usize, next("callback")? != 0, next("depth")? as usize);
        if start >= end || end > n || functions.last().is_some_and(|f: &Function| f.end != start) {
            return Err(RecordError::Malformed("function bounds"));
        }
        functions.push(Function { start, end, callback });
        depths.push(depth);
    }
    if functions[0].start != 0 || functions[nfuncs - 1].end != n {
        return Err(RecordError::Malformed("function bounds"));
    }
    let ctx = ContextNeeds { len: next("context")?, writable: next("context")? != 0 };
    let walk_checks_on_entry = next("walks")? != 0;
    let nlookups = next("lookups")? as usize;
    let mut lookup_slots = Vec::with_capacity(nlookups.min(n));
    for _ in 0..nlookups {
        lookup_slots.push((next("lookup")? as usize, next("lookup")? as usize, next("lookup")?));
    }
    let nargs = next("map arguments")? as usize;
    if nargs > n {
        return Err(RecordError::Malformed("map arguments"));
    }
    let mut helper_args = HashMap::new();
    for _ in 0..nargs {
        let w = next("map arguments")?;
        let pc = (w & 0xffff_ffff) as usize;
        if pc >= n || w >> 38 != 0 {
            return Err(RecordError::Malformed("map arguments"));
        }
        helper_args.insert(pc, crate::analysis::HelperArgs { key: w & 1 << 32 != 0, value: w & 1 << 33 != 0, sized: (w >> 34) as u8 & 0xf });
    }
    let nspans = next("context reads")?;
    let ctx_reads = match nspans {
        NO_KEY => None,
        k if k as usize <= n => {
            let mut spans = Vec::with_capacity(k as usize);
            for _ in 0..k {
                let w = next("context reads")?;
                spans.push((w as u32, (w >> 32) as u32));
            }
            Some(spans)
        }
        _ => return Err(RecordError::Malformed("context reads")),
    };
    let header = 8 * (9 + 4 * nfuncs + 3 * nlookups + nargs + ctx_reads.as_ref().map_or(0, Vec::len));
    let access_bytes = record.get(header..).filter(|a| a.len() == n).ok_or(RecordError::Malformed("access"))?;
    let access = access_bytes.iter().map(|&b| Access { target: target_of(b & 3), proven: b & 4 != 0, aligned: b & 8 != 0, probe: b & 16 != 0 }).collect();

    let mut pointees = HashMap::new();
    let mut resolved = vec![];
    for pc in 0..n {
        if matches!(insns[pc], Insn::Lddw { kind, .. } if !matches!(kind, LddwKind::Imm64 | LddwKind::Func)) {
            resolved.push(pc);
            let p = resolve_lddw(&mut insns, pc, resolver).map_err(|e| RecordError::Program { insn: e.insn, message: e.kind.to_string() })?;
            if let Some(p) = p {
                pointees.insert(pc, p);
            }
        }
    }
    let mut inline_lookups: HashMap<usize, ArrayLayout> = HashMap::new();
    let mut lookup_keys: HashMap<usize, u32> = HashMap::new();
    for (pc, slot, key) in lookup_slots {
        match pointees.get(&slot) {
            Some(Pointee::Map { array: Some(a), .. }) if pc < n => inline_lookups.insert(pc, *a),
            _ => return Err(RecordError::Malformed("inlined lookup")),
        };
        if key != NO_KEY {
            lookup_keys.insert(pc, u32::try_from(key).map_err(|_| RecordError::Malformed("lookup key"))?);
        }
    }
    // Reachability served the verifier alone; a program does not keep it.
    let proofs = Analysis {
        access,
        ctx,
        inline_lookups,
        lookup_keys,
        walk_checks_on_entry,
        reachable: vec![],
        reach_known: vec![],
        keyless_map_calls: vec![],
        ctx_reads,
        helper_args,
    };
    Ok(Program::new(insns, functions, depths, proofs, pointees, resolved, helpers))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::asm::assemble;

    /// Resolves map 1 to `handle`, describing nothing (as for a ring buffer).
    struct Handle(u64);

    impl LddwResolver for Handle {
        fn resolve(&self, _kind: LddwKind, _lo: i32, _hi: i32) -> Result<u64, String> {
            Ok(self.0)
        }
    }

    /// Equal inputs must mean equal proofs: a map reference's constant is this process's, so
    /// no proof may rest on it (here, a stack store whose offset is computed from it is in
    /// bounds for one handle only).
    #[test]
    fn proofs_do_not_rest_on_a_processs_map_references() {
        let tag = 0xbf7f_0000_0000_0000u64;
        let code = assemble(&format!("r1 = map_fd(1) ll\nr2 = {tag} ll\nr1 -= r2\nr1 <<= 3\nr3 = r10\nr3 += r1\n*(u64 *)(r3 - 8) = r1\nr0 = 0\nexit")).unwrap();
        let store = 8;
        let helpers = Arc::new(HelperTable::new());
        let fp = helpers_fingerprint(&helpers);
        let programs: Vec<Program> = [tag, tag | 3]
            .into_iter()
            .map(|h| {
                let p = crate::verify(&code, helpers.clone(), &Handle(h)).unwrap();
                assert!(matches!(p.insns()[store], Insn::Store { .. }));
                p
            })
            .collect();
        assert_eq!(inputs(&code, &fp, &Handle(tag), Checks::Unproven).unwrap(), inputs(&code, &fp, &Handle(tag | 3), Checks::Unproven).unwrap());
        assert_eq!(programs[0].access(store), programs[1].access(store));
        assert!(!programs[0].access(store).proven);
    }
}
