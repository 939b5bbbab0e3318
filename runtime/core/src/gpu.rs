//! A program of a clang-built object prepared for the GPU: its maps placed in a device arena,
//! its map references turned into arena slots, verified against the GPU helpers and
//! translated to PTX (`bpftime-gpu-ptx`). What loads and launches it (the CUDA runner, the
//! interposition) sits above.

use bpftime_gpu_ptx::maps::{ArenaLayout, GpuMapSpec};
use bpftime_gpu_ptx::{std_helpers, translate, LddwMaps, Target, MAP_TAG};
use bpftime_object::btf::Btf;
use bpftime_object::Object;
use bpftime_vm::insn::LddwKind;
use bpftime_vm::{verify, LddwResolver, Program};
use std::sync::Arc;

/// A program ready for the GPU.
#[derive(Clone, Debug)]
pub struct GpuProgram {
    /// Function name.
    pub name: String,
    /// Section.
    pub section: String,
    /// The verified program.
    pub program: Arc<Program>,
    /// The PTX module.
    pub ptx: String,
    /// Where its maps live in the arena (slot order).
    pub layout: ArenaLayout,
    /// The arena's initial contents (descriptors, global data).
    pub arena: Vec<u8>,
}

/// Map references as the GPU verifier sees them: tagged slots (the translator rewrites the
/// `lddw`s from the raw instructions; these values only have to be constants).
struct SlotResolver;

impl LddwResolver for SlotResolver {
    fn resolve(&self, kind: LddwKind, lo: i32, _hi: i32) -> Result<u64, String> {
        match kind {
            LddwKind::MapFd | LddwKind::MapValue => Ok(MAP_TAG | lo as u32 as u64),
            _ => Err(format!("{kind:?} references are not supported on the GPU")),
        }
    }
}

/// Every helper the verifier should know: the kernel's (so that one the GPU lacks is reported
/// by the translator, by name, at its instruction) and the GPU's own ids.
fn verifier_table(gpu: &bpftime_gpu_ptx::HelperSet) -> Arc<bpftime_vm::HelperTable> {
    let mut t = crate::helpers::kernel_helpers();
    for (id, h) in gpu.verifier_table().iter() {
        if t.get(id).is_none() {
            t.register(id, h.name, h.func);
        }
    }
    Arc::new(t)
}

/// Prepares program `name` (or the only one) of `obj` for a GPU with `nsm` SMs.
pub fn gpu_program(obj: &Object, name: Option<&str>, target: Target, nsm: u32) -> Result<GpuProgram, String> {
    let mut obj = obj.clone();
    if obj.needs_core() {
        let raw = std::fs::read("/sys/kernel/btf/vmlinux").map_err(|e| format!("CO-RE needs the kernel's BTF: {e}"))?;
        let btf = Btf::parse(&raw).map_err(|e| e.to_string())?;
        obj.apply_core(&btf).map_err(|e| e.to_string())?;
    }
    let p = obj.program(name).map_err(|e| e.to_string())?.clone();
    // Slots for the maps this program uses, in order of first use.
    let mut slot_of_map: Vec<usize> = vec![];
    for r in &p.data_relocs {
        if !slot_of_map.contains(&r.map) {
            slot_of_map.push(r.map);
        }
    }
    let specs: Vec<GpuMapSpec> = slot_of_map
        .iter()
        .map(|&i| {
            let d = &obj.maps[i];
            GpuMapSpec { name: d.name.clone(), map_type: d.map_type, key_size: d.key_size, value_size: d.value_size, max_entries: d.max_entries }
        })
        .collect();
    let layout = ArenaLayout::new(&specs, nsm).map_err(|e| format!("{}: {e}", p.name))?;
    let mut raw = p.insns.clone();
    for r in &p.data_relocs {
        let slot = slot_of_map.iter().position(|&m| m == r.map).expect("every reloc's map has a slot") as i32;
        raw[r.insn].imm = slot;
        match r.value_offset {
            None => {
                raw[r.insn].src = LddwKind::MapFd.src();
                raw[r.insn + 1].imm = 0;
            }
            Some(off) => {
                raw[r.insn].src = LddwKind::MapValue.src();
                raw[r.insn + 1].imm = off as i32;
            }
        }
    }
    let helpers = std_helpers::standard();
    let program = Arc::new(verify(&raw, verifier_table(&helpers), &SlotResolver).map_err(|e| format!("{}: verifier: {e}", p.name))?);
    let maps = LddwMaps::from_raw(&raw, Some).map_err(|e| format!("{}: {e}", p.name))?;
    let ptx = translate(&program, &helpers, &maps, target).map_err(|e| format!("{}: {e}", p.name))?;
    let mut arena = layout.image();
    for (slot, &m) in slot_of_map.iter().enumerate() {
        if let Some(init) = &obj.maps[m].initial {
            layout.set_array_value(&mut arena, slot, 0, init).map_err(|e| format!("{}: {e}", p.name))?;
        }
    }
    Ok(GpuProgram { name: p.name.clone(), section: p.section.clone(), program, ptx, layout, arena })
}

/// Prepares raw bytecode (no maps) for the GPU.
pub fn gpu_program_from_raw(raw: &[bpftime_vm::RawInsn], target: Target) -> Result<GpuProgram, String> {
    let helpers = std_helpers::standard();
    let program = Arc::new(verify(raw, verifier_table(&helpers), &bpftime_vm::NoMaps).map_err(|e| format!("verifier: {e}"))?);
    let ptx = translate(&program, &helpers, &LddwMaps::default(), target).map_err(|e| e.to_string())?;
    let layout = ArenaLayout::new(&[], 1)?;
    let arena = layout.image();
    Ok(GpuProgram { name: "raw".into(), section: String::new(), program, ptx, layout, arena })
}

/// The maps of a GPU run read back from its arena, for printing: (name, type, entries as
/// (key, per-slot values)) and ring records as (source, bytes).
pub fn describe_arena(layout: &ArenaLayout, arena: &[u8]) -> Vec<String> {
    use bpftime_gpu_ptx::maps::GpuMapKind;
    let hex = |b: &[u8]| b.iter().map(|x| format!("{x:02x}")).collect::<Vec<_>>().join(" ");
    let show = |b: &[u8]| match b.len() {
        4 => u32::from_le_bytes(b.try_into().expect("4")).to_string(),
        8 => u64::from_le_bytes(b.try_into().expect("8")).to_string(),
        _ => hex(b),
    };
    let mut out = vec![];
    for (slot, m) in layout.maps.iter().enumerate() {
        out.push(format!(
            "map `{}` (GPU, type {}, key {} B, value {} B, max_entries {}, {} slot(s))",
            m.spec.name, m.spec.map_type, m.spec.key_size, m.spec.value_size, m.spec.max_entries, m.slots
        ));
        match m.kind {
            GpuMapKind::Ring => {
                let (records, lost) = layout.records(arena, slot);
                for (src, r) in &records {
                    out.push(format!("  record ({} bytes, source {src}): {}", r.len(), hex(r)));
                }
                out.push(format!("  {} records, {lost} lost", records.len()));
            }
            _ => {
                let entries = layout.entries(arena, slot);
                let mut zero = 0;
                for (k, vs) in &entries {
                    if vs.iter().all(|v| v.iter().all(|&b| b == 0)) {
                        zero += 1;
                        continue;
                    }
                    let vals: Vec<String> = vs.iter().map(|v| show(v)).collect();
                    out.push(format!("  {} => {}", show(k), vals.join(", ")));
                }
                out.push(format!("  ({} entries, {zero} all-zero not shown)", entries.len()));
            }
        }
    }
    out
}

/// Copies the GPU's copy of a map (slot `slot` of `layout`, read from `arena`) into the map of
/// the shared region, where the CPU side, `bpftime map dump` and readers see it: array values,
/// hash entries (added or updated; none removed), ring records (appended to the host ring).
/// Per-SM values are added into the per-CPU slots (SM k into CPU k mod ncpus). With `prev`, a
/// previous copy of the arena (shards folded), only entries whose bytes changed are written.
pub fn write_back(layout: &ArenaLayout, arena: &[u8], prev: Option<&[u8]>, slot: usize, map: &bpftime_maps::Map) -> Result<(), String> {
    use bpftime_gpu_ptx::maps::GpuMapKind;
    let m = layout.maps.get(slot).ok_or("no such GPU map")?;
    let changed = |r: std::ops::Range<usize>| prev.is_none_or(|p| p.get(r.clone()) != arena.get(r));
    if m.slots > 1 {
        // One value per SM on the GPU, one per CPU on the host: SM k's value is added, 8 bytes
        // at a time, into CPU k mod ncpus's (per-CPU maps on the GPU hold counters and
        // histograms; the total over CPUs is the total over SMs).
        let ncpus = map.ncpus().max(1) as usize;
        let stride = map.syscall_value_size() / ncpus;
        for (k, vs) in layout.entries_where(arena, slot, &changed) {
            let mut buf = vec![0u8; stride * ncpus];
            for (sm, v) in vs.iter().enumerate() {
                let at = (sm % ncpus) * stride;
                for (w, chunk) in v.chunks(8).enumerate() {
                    let o = at + w * 8;
                    let mut old = [0u8; 8];
                    old[..chunk.len()].copy_from_slice(&buf[o..o + chunk.len()]);
                    let mut add = [0u8; 8];
                    add[..chunk.len()].copy_from_slice(chunk);
                    let sum = u64::from_le_bytes(old).wrapping_add(u64::from_le_bytes(add)).to_le_bytes();
                    buf[o..o + chunk.len()].copy_from_slice(&sum[..chunk.len()]);
                }
            }
            map.update(&k, &buf, 0).map_err(|e| format!("map `{}`: {e}", m.spec.name))?;
        }
        return Ok(());
    }
    match m.kind {
        GpuMapKind::Array | GpuMapKind::Hash => {
            for (k, vs) in layout.entries_where(arena, slot, &changed) {
                map.update(&k, &vs[0], 0).map_err(|e| format!("map `{}`: {e}", m.spec.name))?;
            }
        }
        GpuMapKind::Ring => {
            let (records, _) = layout.records(arena, slot);
            for (cpu, r) in records {
                let written = if map.map_type() == bpftime_maps::MapType::PerfEventArray {
                    map.perf_output(cpu % map.ncpus().max(1), &r)
                } else {
                    map.ringbuf_output(&r)
                };
                written.map_err(|e| format!("map `{}`: {e}", m.spec.name))?;
            }
        }
    }
    Ok(())
}

/// One CUDA kernel probe of the region (a `kprobe/KERNEL` or `kretprobe/KERNEL` link), verified
/// for the GPU.
#[derive(Clone, Debug)]
pub struct GpuProbe {
    /// Its link (raised as it gets spliced).
    pub link: u32,
    /// Program name.
    pub name: String,
    /// The kernel it probes: mangled, demangled or bare.
    pub kernel: String,
    /// At the kernel's returns rather than its entry.
    pub exit: bool,
    /// The verified program (maps by region id in its `lddw`s).
    pub program: Arc<Program>,
    raw: Vec<bpftime_vm::RawInsn>,
}

/// The CUDA kernel probes of a region with the maps they use: every probe of one process
/// shares one device arena (slot `i` holds region map `map_ids[i]`), so an entry and an exit
/// probe see the same maps.
#[derive(Clone, Debug, Default)]
pub struct GpuProbes {
    /// The probes.
    pub probes: Vec<GpuProbe>,
    /// Region map id of each arena slot.
    pub map_ids: Vec<u32>,
    specs: Vec<GpuMapSpec>,
    /// Slots whose map CPU programs (uprobes) also use: the host owns them. Arrays among them
    /// are copied to the device before each launch and never written back (a launch-latency
    /// tool: the CPU stamps the launch, the GPU reads the stamp).
    pub host_owned: Vec<bool>,
}

/// Region map ids the programs of uprobe links use.
fn maps_of_cpu_programs(region: &Arc<bpftime_shm::ShmRegion>, links: &[crate::links::UprobeLink]) -> std::collections::HashSet<u32> {
    let mut ids = std::collections::HashSet::new();
    for l in links.iter().filter(|l| l.kind == crate::links::LinkKind::Uprobe) {
        if let Some(p) = crate::progs::load(region, l.prog) {
            ids.extend(p.map_refs().into_iter().map(|(_, id)| id));
        }
    }
    ids
}

impl GpuProbes {
    /// Prepares the CUDA kernel links among `links` (others are ignored). A probe that cannot
    /// run on the GPU is returned with the reason instead: (link id, program name, why).
    pub fn prepare(region: &Arc<bpftime_shm::ShmRegion>, links: &[crate::links::UprobeLink]) -> (GpuProbes, Vec<(u32, String, String)>) {
        let mut out = GpuProbes::default();
        let mut failed = vec![];
        let cuda: Vec<&crate::links::UprobeLink> = links.iter().filter(|l| l.kind == crate::links::LinkKind::CudaKernel).collect();
        if cuda.is_empty() {
            // Every traced process comes here: the GPU's helper table is built only when needed.
            return (out, failed);
        }
        let table = verifier_helpers();
        for l in cuda {
            let r = out.add(region, l, &table);
            if let Err(e) = r {
                failed.push((l.id, l.name.clone(), e));
            }
        }
        let cpu = maps_of_cpu_programs(region, links);
        out.host_owned = out.map_ids.iter().map(|id| cpu.contains(id)).collect();
        (out, failed)
    }

    fn add(&mut self, region: &Arc<bpftime_shm::ShmRegion>, l: &crate::links::UprobeLink, table: &Arc<bpftime_vm::HelperTable>) -> Result<(), String> {
        let stored = crate::progs::load(region, l.prog).ok_or_else(|| format!("program {} is not in the region", l.prog))?;
        // Every map it names gets a slot (shared with the probes before it).
        for (pc, id) in stored.map_refs() {
            if self.map_ids.contains(&id) {
                continue;
            }
            let map = bpftime_maps::Map::open(region, id).map_err(|e| format!("insn {pc}: map {id}: {e}"))?;
            let s = map.spec();
            self.specs.push(GpuMapSpec {
                name: map.name().to_string(),
                map_type: s.map_type as u32,
                key_size: s.key_size,
                value_size: s.value_size,
                max_entries: s.max_entries,
            });
            self.map_ids.push(id);
        }
        ArenaLayout::new(&self.specs, 1).map_err(|e| format!("{}: {e}", stored.name))?;
        let program = Arc::new(verify(&stored.insns, table.clone(), &SlotResolver).map_err(|e| format!("verifier: {e}"))?);
        self.probes.push(GpuProbe { link: l.id, name: stored.name, kernel: l.target.clone(), exit: l.retprobe, program, raw: stored.insns });
        Ok(())
    }

    /// The probes translated for `target`, ready to splice (`bpftime_gpu_ptx::patch`).
    pub fn translate(&self, target: Target) -> Result<Vec<bpftime_gpu_ptx::patch::Probe>, String> {
        let helpers = std_helpers::standard();
        self.probes
            .iter()
            .map(|p| {
                let maps =
                    LddwMaps::from_raw(&p.raw, |id| self.map_ids.iter().position(|&m| m == id).map(|s| s as u32)).map_err(|e| format!("{}: {e}", p.name))?;
                let ptx = translate(&p.program, &helpers, &maps, target).map_err(|e| format!("{}: {e}", p.name))?;
                let stack = bpftime_gpu_ptx::patch::stack_bytes(&p.program);
                Ok(bpftime_gpu_ptx::patch::Probe { name: p.name.clone(), kernel: p.kernel.clone(), exit: p.exit, ptx, stack })
            })
            .collect()
    }

    /// Where the maps live on a device with `nsm` SMs.
    pub fn layout(&self, nsm: u32) -> Result<ArenaLayout, String> {
        ArenaLayout::new(&self.specs, nsm)
    }

    /// A fresh arena for `layout` holding the region maps' current array values (global data,
    /// values set from the host before the first launch).
    pub fn arena_image(&self, layout: &ArenaLayout, region: &Arc<bpftime_shm::ShmRegion>) -> Vec<u8> {
        let mut arena = layout.image();
        for (slot, &id) in self.map_ids.iter().enumerate() {
            let Ok(map) = bpftime_maps::Map::open(region, id) else { continue };
            if map.map_type() != bpftime_maps::MapType::Array {
                continue;
            }
            let mut value = vec![0u8; map.spec().value_size as usize];
            for i in 0..map.spec().max_entries {
                if map.lookup(&i.to_le_bytes(), &mut value).is_ok() && value.iter().any(|&b| b != 0) {
                    let _ = layout.set_array_value(&mut arena, slot, i, &value);
                }
            }
        }
        arena
    }

    /// The host-owned arrays' current values, as they lie in the arena: (arena offset, bytes).
    /// Copied to the device before each launch.
    pub fn host_values(&self, layout: &ArenaLayout, region: &Arc<bpftime_shm::ShmRegion>) -> Vec<(u64, Vec<u8>)> {
        let mut out = vec![];
        for (slot, &id) in self.map_ids.iter().enumerate() {
            let (Some(true), Some(m)) = (self.host_owned.get(slot), layout.maps.get(slot)) else { continue };
            let Ok(map) = bpftime_maps::Map::open(region, id) else { continue };
            if map.map_type() != bpftime_maps::MapType::Array || m.slots != 1 {
                continue;
            }
            let vs = map.spec().value_size as usize;
            let mut bytes = vec![0u8; m.data_len as usize];
            let mut value = vec![0u8; vs];
            for i in 0..map.spec().max_entries {
                if map.lookup(&i.to_le_bytes(), &mut value).is_ok() {
                    let at = i as usize * m.stride as usize;
                    if let Some(dst) = bytes.get_mut(at..at + vs) {
                        dst.copy_from_slice(&value);
                    }
                }
            }
            out.push((m.data_off, bytes));
        }
        out
    }

    /// Copies a device arena (as read back after a launch; its shards are folded here) into the
    /// region's maps, entries that changed since `prev` (the previous copy, folded, or the
    /// image the arena started from) only. Returns what could not be copied, one line per map.
    pub fn write_back(&self, layout: &ArenaLayout, arena: &mut [u8], prev: Option<&[u8]>, region: &Arc<bpftime_shm::ShmRegion>) -> Vec<String> {
        layout.fold_shards(arena);
        let mut errors = vec![];
        for (slot, &id) in self.map_ids.iter().enumerate() {
            if self.host_owned.get(slot) == Some(&true) {
                continue;
            }
            let r = bpftime_maps::Map::open(region, id).map_err(|e| e.to_string()).and_then(|map| write_back(layout, arena, prev, slot, &map));
            if let Err(e) = r {
                errors.push(e);
            }
        }
        errors
    }
}

/// The helper table GPU programs are verified against: the kernel's helpers (so one the GPU
/// lacks is reported by the translator, by name, at its instruction) and the GPU's own ids.
pub fn verifier_helpers() -> Arc<bpftime_vm::HelperTable> {
    static TABLE: std::sync::OnceLock<Arc<bpftime_vm::HelperTable>> = std::sync::OnceLock::new();
    TABLE.get_or_init(|| verifier_table(&std_helpers::standard())).clone()
}
