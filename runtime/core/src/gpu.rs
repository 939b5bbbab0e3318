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
/// `lddw`s from the raw instructions; these values only have to be constants), and, for the
/// maps it knows (by the `lddw`'s number: a slot or a region map id), what a lookup returns
/// on the GPU, so that accesses to values are proven as on the CPU.
#[derive(Default)]
struct SlotResolver {
    /// `lddw` number -> the map as the GPU holds it.
    maps: std::collections::HashMap<u32, GpuMapSpec>,
}

impl LddwResolver for SlotResolver {
    fn resolve(&self, kind: LddwKind, lo: i32, _hi: i32) -> Result<u64, String> {
        match kind {
            LddwKind::MapFd | LddwKind::MapValue => Ok(MAP_TAG | lo as u32 as u64),
            _ => Err(format!("{kind:?} references are not supported on the GPU")),
        }
    }

    fn pointee(&self, kind: LddwKind, lo: i32, hi: i32) -> Option<bpftime_vm::analysis::Pointee> {
        use bpftime_gpu_ptx::maps::{kind_of, GpuMapKind, SlotsBy};
        use bpftime_vm::analysis::{ArrayLayout, Pointee};
        let spec = self.maps.get(&(lo as u32))?;
        match kind {
            // Arrays and hashes: a lookup gives one whole value (this SM's or this thread's
            // slot of it where values have several). Arrays shared by all threads or with a
            // slot per SM are described, so that their lookups are computed in place (the
            // translator finds the map by its handle, the `lddw`'s constant, in `values` and reads where its storage
            // is from its descriptor); a per-thread array's lookup may miss, and stays a call.
            LddwKind::MapFd => {
                let (kind, slots) = kind_of(spec.map_type)?;
                let array = (kind == GpuMapKind::Array && slots != SlotsBy::Thread).then(|| ArrayLayout {
                    values: MAP_TAG | lo as u32 as u64,
                    stride: (spec.value_size as u64).div_ceil(8) * 8,
                    max_entries: spec.max_entries,
                    cpu: (slots == SlotsBy::Sm) as u64,
                    cpu_stride: 0,
                });
                matches!(kind, GpuMapKind::Array | GpuMapKind::Hash).then_some(Pointee::Map { value_size: spec.value_size, key_size: spec.key_size, array })
            }
            LddwKind::MapValue => Some(Pointee::Value { size: spec.value_size, offset: hi as u32 }),
            _ => None,
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

/// Helpers that write to the arena's trace ring: `bpf_trace_printk` and bpftime's `puts`.
const TRACE_HELPERS: [i32; 2] = [6, 501];

/// Whether `raw` calls a helper that needs the trace ring.
fn needs_trace_ring(raw: &[bpftime_vm::RawInsn]) -> bool {
    raw.iter().any(|i| i.opc == 0x85 && i.src == 0 && TRACE_HELPERS.contains(&i.imm))
}

/// The messages of the trace ring of an arena image as trace pipe lines (formatted as the CPU
/// formats `bpf_trace_printk`, this process's comm and thread, the SM in place of the CPU; a
/// `%s` argument is read from the arena image when it points into the arena, and reads as a
/// fault elsewhere: the GPU thread's stack is gone), and how many were dropped.
pub fn trace_lines(layout: &ArenaLayout, arena: &[u8]) -> (Vec<String>, u64) {
    let (records, lost) = layout.trace_records(arena);
    let lines = records
        .into_iter()
        .map(|r| {
            let text = match r.kind {
                bpftime_gpu_ptx::maps::TraceKind::Printk => {
                    // The arena's bytes from a device address on.
                    let from = |addr: u64| arena.get(usize::try_from(addr.checked_sub(r.arena_addr)?).ok()?..);
                    let in_arena = |addr: u64, buf: &mut [u8]| -> Option<usize> {
                        let rest = from(addr)?;
                        let room = buf.len().checked_sub(1)?;
                        let n = rest.iter().take(room).position(|&b| b == 0).unwrap_or(room.min(rest.len()));
                        buf[..n].copy_from_slice(&rest[..n]);
                        buf[n] = 0;
                        Some(n + 1)
                    };
                    let bytes_in_arena = |addr: u64, buf: &mut [u8]| -> bool {
                        match from(addr).and_then(|rest| rest.get(..buf.len())) {
                            Some(src) => {
                                buf.copy_from_slice(src);
                                true
                            }
                            None => false,
                        }
                    };
                    crate::format::format_with(&r.text, &r.args, &in_arena, &bytes_in_arena)
                }
                bpftime_gpu_ptx::maps::TraceKind::Puts => r.text,
            };
            crate::helpers::trace_line(r.sm, &text)
        })
        .collect();
    (lines, lost)
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
    let mut specs: Vec<GpuMapSpec> = slot_of_map
        .iter()
        .map(|&i| {
            let d = &obj.maps[i];
            let (map_type, threads) = match bpftime_gpu_ptx::maps::is_per_thread_array(d.map_type) {
                true => (bpftime_gpu_ptx::maps::PER_THREAD_ARRAY, gpu_thread_count()),
                false => (d.map_type, 0),
            };
            if d.map_type == GPU_RING && (d.key_size != 0 || d.value_size != 0) {
                return GpuMapSpec::new(&d.name, map_type, 0, 0, gpu_ring_bytes(d.value_size, d.max_entries));
            }
            GpuMapSpec { threads, ..GpuMapSpec::new(&d.name, map_type, d.key_size, d.value_size, d.max_entries) }
        })
        .collect();
    if needs_trace_ring(&p.insns) {
        specs.push(GpuMapSpec::trace_ring());
    }
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
    let resolver = SlotResolver { maps: specs.iter().enumerate().map(|(slot, s)| (slot as u32, s.clone())).collect() };
    let program = Arc::new(verify(&raw, verifier_table(&helpers), &resolver).map_err(|e| format!("{}: verifier: {e}", p.name))?);
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
    let specs = if needs_trace_ring(raw) { vec![GpuMapSpec::trace_ring()] } else { vec![] };
    let layout = ArenaLayout::new(&specs, 1)?;
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
        // Its messages are printed as trace lines (see `trace_lines`).
        if layout.trace_slot == Some(slot) {
            continue;
        }
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
/// hash entries (added, updated or deleted), ring records (appended to the host ring).
/// Per-SM values are added into the per-CPU slots (SM k into CPU k mod ncpus). With `prev`, a
/// previous copy of the arena (shards folded), only entries whose bytes changed are written.
pub fn write_back(layout: &ArenaLayout, arena: &[u8], prev: Option<&[u8]>, slot: usize, map: &bpftime_maps::Map) -> Result<(), String> {
    use bpftime_gpu_ptx::maps::GpuMapKind;
    let m = layout.maps.get(slot).ok_or("no such GPU map")?;
    let changed = |r: std::ops::Range<usize>| prev.is_none_or(|p| p.get(r.clone()) != arena.get(r));
    // Entries the GPU deleted go first: a key deleted and inserted again is in use. A key live
    // in the previous copy and not now is gone too (its entry may hold another key by now:
    // deleted entries are reused).
    let mut gone = layout.deleted_where(arena, slot, &changed);
    if let (Some(p), bpftime_gpu_ptx::maps::GpuMapKind::Hash) = (prev, m.kind) {
        let now: std::collections::HashSet<Vec<u8>> = layout.entries(arena, slot).into_iter().map(|(k, _)| k).collect();
        gone.retain(|k| !now.contains(k));
        gone.extend(layout.entries_where(p, slot, &changed).into_iter().map(|(k, _)| k).filter(|k| !now.contains(k)));
        gone.sort();
        gone.dedup();
    }
    for k in gone {
        match map.delete_from_copy(&k) {
            Ok(()) | Err(bpftime_maps::Errno::ENOENT) => {}
            Err(e) => return Err(format!("map `{}`: {e}", m.spec.name)),
        }
    }
    if m.slots_by == bpftime_gpu_ptx::maps::SlotsBy::Thread {
        // Every thread's value, one after the other: the host map's value.
        for (k, vs) in layout.entries_where(arena, slot, &changed) {
            map.update_from_copy(&k, &vs.concat(), 0).map_err(|e| format!("map `{}`: {e}", m.spec.name))?;
        }
        return Ok(());
    }
    if m.slots > 1 {
        // One value per SM on the GPU, one per CPU on the host: what SM k added since the
        // previous copy is added, 8 bytes at a time, to CPU k mod ncpus's value (per-CPU maps
        // on the GPU hold counters and histograms; the total over CPUs grows by the total over
        // SMs, and what CPU programs or a loader wrote stays).
        let ncpus = map.ncpus().max(1) as usize;
        let stride = map.syscall_value_size() / ncpus;
        let before: std::collections::HashMap<Vec<u8>, Vec<Vec<u8>>> = prev.map(|p| layout.entries(p, slot).into_iter().collect()).unwrap_or_default();
        let word = |b: &[u8], o: usize| {
            let mut w = [0u8; 8];
            let n = b.len().saturating_sub(o).min(8);
            w[..n].copy_from_slice(&b[o..o + n]);
            u64::from_le_bytes(w)
        };
        for (k, vs) in layout.entries_where(arena, slot, &changed) {
            let mut buf = vec![0u8; stride * ncpus];
            if map.lookup(&k, &mut buf).is_err() {
                buf.fill(0);
            }
            for (sm, v) in vs.iter().enumerate() {
                let was = before.get(&k).and_then(|b| b.get(sm));
                let at = (sm % ncpus) * stride;
                for o in (0..v.len().min(stride)).step_by(8) {
                    let added = word(v, o).wrapping_sub(was.map_or(0, |w| word(w, o)));
                    let n = (v.len().min(stride) - o).min(8);
                    let sum = word(&buf[at..at + stride], o).wrapping_add(added).to_le_bytes();
                    buf[at + o..at + o + n].copy_from_slice(&sum[..n]);
                }
            }
            map.update_from_copy(&k, &buf, 0).map_err(|e| format!("map `{}`: {e}", m.spec.name))?;
        }
        return Ok(());
    }
    match m.kind {
        GpuMapKind::Array | GpuMapKind::Hash => {
            for (k, vs) in layout.entries_where(arena, slot, &changed) {
                map.update_from_copy(&k, &vs[0], 0).map_err(|e| format!("map `{}`: {e}", m.spec.name))?;
            }
        }
        GpuMapKind::Ring => {
            let (records, lost) = layout.records(arena, slot);
            let perf = map.map_type() == bpftime_maps::MapType::PerfEventArray;
            for (cpu, r) in records {
                let written = if perf { map.perf_output(cpu % map.ncpus().max(1), &r) } else { map.ringbuf_output(&r) };
                written.map_err(|e| format!("map `{}`: {e}", m.spec.name))?;
            }
            // What the GPU's ring had no room for: a perf reader sees it as lost samples.
            if lost > 0 {
                let counted = if perf { map.perf_lost(0, lost) } else { map.ringbuf_lost(lost) };
                counted.map_err(|e| format!("map `{}`: {e}", m.spec.name))?;
            }
        }
    }
    Ok(())
}

/// The GPU table of hash map `slot` holding the entries of the region's `map` (its storage
/// bytes, and the count of entries), for hashes with one value per entry; None for other maps
/// (per-CPU hashes start empty on the GPU: their per-SM values are summed into the host's).
/// Entries past what the GPU table holds are left out.
fn hash_table(layout: &ArenaLayout, slot: usize, map: &bpftime_maps::Map) -> Option<(Vec<u8>, u64)> {
    Some(hash_table_of(layout, slot, &host_entries(layout, slot, map)?))
}

/// Entries by key (key, value).
pub type Entries = std::collections::BTreeMap<Vec<u8>, Vec<u8>>;

/// The entries of the region's hash `map` (arena slot `slot`), for hashes with one value per
/// entry on the GPU; None for other maps.
fn host_entries(layout: &ArenaLayout, slot: usize, map: &bpftime_maps::Map) -> Option<Entries> {
    let m = layout.maps.get(slot)?;
    if m.kind != bpftime_gpu_ptx::maps::GpuMapKind::Hash
        || m.slots != 1
        || !matches!(map.map_type(), bpftime_maps::MapType::Hash | bpftime_maps::MapType::LruHash)
    {
        return None;
    }
    let mut entries = Entries::new();
    let mut key = vec![0u8; map.spec().key_size as usize];
    let mut next = key.clone();
    let mut value = vec![0u8; map.syscall_value_size()];
    let mut first = true;
    while map.next_key((!first).then_some(key.as_slice()), &mut next).is_ok() {
        first = false;
        std::mem::swap(&mut key, &mut next);
        if map.lookup(&key, &mut value).is_ok() {
            entries.insert(key.clone(), value.clone());
        }
    }
    Some(entries)
}

/// The GPU table of hash map `slot` holding `entries` (its storage bytes, and the count of
/// entries). Entries past what the GPU table holds are left out.
fn hash_table_of(layout: &ArenaLayout, slot: usize, entries: &Entries) -> (Vec<u8>, u64) {
    let mut table = vec![0u8; layout.maps[slot].data_len as usize];
    let mut count = 0u64;
    for (key, value) in entries {
        match layout.hash_insert(&mut table, slot, key, value) {
            Ok(new) => count += new as u64,
            Err(_) => break,
        }
    }
    (table, count)
}

/// The live entries of hash map `slot` in an arena image (one value per entry).
fn gpu_entries(layout: &ArenaLayout, arena: &[u8], slot: usize) -> Entries {
    let m = &layout.maps[slot];
    arena.get(m.data_off as usize..(m.data_off + m.data_len) as usize).map(|table| layout.table_entries(slot, table).into_iter().collect()).unwrap_or_default()
}

/// `base` (an array's storage as the GPU lays it out, `stride` bytes per entry) with the
/// region's values of array `map` in place of its entries' values.
fn host_array_bytes(map: &bpftime_maps::Map, stride: usize, base: &[u8]) -> Vec<u8> {
    let vs = map.spec().value_size as usize;
    let mut bytes = base.to_vec();
    let mut value = vec![0u8; vs];
    for i in 0..map.spec().max_entries {
        let at = i as usize * stride;
        if let (Ok(()), Some(dst)) = (map.lookup(&i.to_le_bytes(), &mut value), bytes.get_mut(at..at + vs)) {
            dst.copy_from_slice(&value);
        }
    }
    bytes
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
    /// The region's map of each arena slot (None for the trace ring).
    maps: Vec<Option<bpftime_maps::Map>>,
    specs: Vec<GpuMapSpec>,
    /// Slots whose map CPU programs (uprobes) also use: the host owns them. Before each launch
    /// what the host changed of such an array or hash is copied to the device (a launch-latency
    /// tool: the CPU stamps the launch, the GPU reads the stamp), and after it what the GPU
    /// changed is written back (see [`HostShare`]); rings and per-CPU maps are written back
    /// as any other (records appended, per-SM additions added).
    pub host_owned: Vec<bool>,
    /// The slot of the trace ring (last, with no region map), when a probe prints.
    pub trace_slot: Option<usize>,
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
        if out.probes.iter().any(|p| needs_trace_ring(&p.raw)) {
            out.specs.push(GpuMapSpec::trace_ring());
            out.map_ids.push(0);
            out.maps.push(None);
            out.trace_slot = Some(out.specs.len() - 1);
        }
        let cpu = maps_of_cpu_programs(region, links);
        out.host_owned = out.map_ids.iter().map(|id| cpu.contains(id)).collect();
        for (spec, &host) in out.specs.iter_mut().zip(&out.host_owned) {
            spec.host_shared = host;
        }
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
            self.specs.push(gpu_spec_of(&map));
            self.map_ids.push(id);
            self.maps.push(Some(map));
        }
        ArenaLayout::new(&self.specs, 1).map_err(|e| format!("{}: {e}", stored.name))?;
        let resolver = SlotResolver { maps: self.map_ids.iter().zip(&self.specs).map(|(&id, s)| (id, s.clone())).collect() };
        let program = Arc::new(verify(&stored.insns, table.clone(), &resolver).map_err(|e| format!("verifier: {e}"))?);
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
                Ok(bpftime_gpu_ptx::patch::Probe::new(&p.name, &p.kernel, p.exit, &p.program, ptx))
            })
            .collect()
    }

    /// Where the maps live on a device with `nsm` SMs; with `host_memory` false, maps declared
    /// to live in host memory are kept in the arena too (when the host's memory cannot be
    /// registered with the device).
    pub fn layout(&self, nsm: u32, host_memory: bool) -> Result<ArenaLayout, String> {
        let specs: Vec<GpuMapSpec> = self.specs.iter().map(|s| GpuMapSpec { in_host: s.in_host && host_memory, ..s.clone() }).collect();
        ArenaLayout::new(&specs, nsm)
    }

    /// The host address and length of the values of each map of `layout` kept in host memory:
    /// (slot, address, bytes), the bytes the device may touch.
    pub fn host_storage(&self, layout: &ArenaLayout) -> Result<Vec<(usize, u64, u64)>, String> {
        layout
            .host_maps()
            .map(|slot| {
                let m = &layout.maps[slot];
                let map = self.region_map(slot)?;
                let (addr, len) = map.value_region();
                if len < m.data_len {
                    return Err(format!("map `{}`: {len} bytes of values in the region, {} on the GPU", m.spec.name, m.data_len));
                }
                Ok((slot, addr, m.data_len))
            })
            .collect()
    }

    /// A fresh arena for `layout` holding the region maps' current array values (global data,
    /// values set from the host before the first launch).
    pub fn arena_image(&self, layout: &ArenaLayout, region: &Arc<bpftime_shm::ShmRegion>) -> Vec<u8> {
        let mut arena = layout.image();
        for (slot, &id) in self.map_ids.iter().enumerate() {
            let Ok(map) = bpftime_maps::Map::open(region, id) else { continue };
            if let Some((table, count)) = hash_table(layout, slot, &map) {
                let m = &layout.maps[slot];
                arena[m.data_off as usize..(m.data_off + m.data_len) as usize].copy_from_slice(&table);
                let at = layout.hash_count_offset(slot) as usize;
                arena[at..at + 8].copy_from_slice(&count.to_le_bytes());
                continue;
            }
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

    /// How many writes (system calls and programs) each slot's map has had (see
    /// [`bpftime_maps::Map::host_writes`]); taken before an arena image is made of them.
    pub fn host_writes(&self) -> std::collections::HashMap<usize, u64> {
        self.maps.iter().enumerate().filter_map(|(slot, m)| Some((slot, m.as_ref()?.host_writes()))).collect()
    }

    /// What the GPU was last given of each host-owned array (the bytes of its storage) and
    /// hash (its entries) in `image` (the arena the device starts from, made from the maps
    /// when they had had `writes` writes).
    pub fn host_share(&self, layout: &ArenaLayout, image: &[u8], writes: std::collections::HashMap<usize, u64>) -> HostShare {
        use bpftime_gpu_ptx::maps::GpuMapKind;
        let mut share = HostShare { writes, ..HostShare::default() };
        for (slot, m) in layout.maps.iter().enumerate() {
            if self.host_owned.get(slot) != Some(&true) || m.slots != 1 || m.spec.in_host {
                continue;
            }
            match m.kind {
                GpuMapKind::Array => {
                    share.given.insert(slot, image[m.data_off as usize..(m.data_off + m.data_len) as usize].to_vec());
                }
                GpuMapKind::Hash => {
                    share.hashes.insert(slot, gpu_entries(layout, image, slot));
                }
                GpuMapKind::Ring => {}
            }
        }
        share
    }

    /// Whether [`GpuProbes::host_values`] may have anything to give: a map CPU programs use
    /// too, or a write (a loader's, or a program's in any process) to another map since `share` last looked (counters only: cheap
    /// enough for every launch).
    pub fn host_may_push(&self, layout: &ArenaLayout, share: &HostShare) -> bool {
        use bpftime_gpu_ptx::maps::GpuMapKind;
        layout.maps.iter().enumerate().any(|(slot, m)| {
            let Some(map) = self.maps.get(slot).and_then(Option::as_ref) else { return false };
            if m.slots != 1 || m.kind == GpuMapKind::Ring || m.spec.in_host {
                return false;
            }
            self.host_owned.get(slot) == Some(&true) || share.writes.get(&slot) != Some(&map.host_writes())
        })
    }

    /// What to give the device before a launch. Of each host-owned array (one CPU programs
    /// also write) the runs of entries whose host value differs from what `share` says the GPU
    /// was given (which it then records), and each host-owned hash whose entries differ, to
    /// merge ([`Self::merge_hash`]). A map only GPU programs use is looked at when it was
    /// written (by a loader, bpftool, the CLI, or a program of another kind or process): if its entries differ from `written` (the
    /// device's copy last written back) it becomes host-owned from then on, so what the loader
    /// wrote reaches the device (over what the GPU changed since that copy) and the GPU's
    /// writes still come back.
    pub fn host_values(&self, layout: &ArenaLayout, share: &mut HostShare, written: &[u8]) -> HostPush {
        use bpftime_gpu_ptx::maps::GpuMapKind;
        let mut out = HostPush::default();
        for (slot, m) in layout.maps.iter().enumerate() {
            let Some(map) = self.maps.get(slot).and_then(Option::as_ref) else { continue };
            if m.slots != 1 || m.kind == GpuMapKind::Ring || m.spec.in_host {
                continue;
            }
            if self.host_owned.get(slot) != Some(&true) {
                let writes = map.host_writes();
                if share.writes.get(&slot) == Some(&writes) {
                    continue;
                }
                share.writes.insert(slot, writes);
                if !share.covers(slot) {
                    if !self.adopt(layout, slot, map, share, written) {
                        continue;
                    }
                    out.adopted.push(m.spec.name.clone());
                }
            }
            if let Some(entries) = host_entries(layout, slot, map) {
                if share.hashes.get(&slot).is_some_and(|given| given != &entries) {
                    out.merges.push((slot, entries));
                }
                continue;
            }
            if map.map_type() != bpftime_maps::MapType::Array {
                continue;
            }
            let Some(given) = share.given.get_mut(&slot) else { continue };
            let stride = m.stride as usize;
            let bytes = host_array_bytes(map, stride, given);
            let mut i = 0;
            while i * stride < bytes.len() {
                let changed = |i: usize| bytes.get(i * stride..(i + 1) * stride) != given.get(i * stride..(i + 1) * stride);
                if !changed(i) {
                    i += 1;
                    continue;
                }
                let start = i;
                while (i + 1) * stride <= bytes.len() && changed(i) {
                    i += 1;
                }
                let run = start * stride..i * stride;
                given[run.clone()].copy_from_slice(&bytes[run.clone()]);
                let at = m.data_off + run.start as u64;
                // In the shard zone the device's value is the array's plus every SM's shard:
                // the host's value replaces both.
                if at >= layout.zone_off && at < layout.zone_off + layout.zone_len {
                    for sm in 0..layout.nsm as u64 {
                        out.copies.push((layout.shards_off + sm * layout.zone_len + (at - layout.zone_off), vec![0; run.len()]));
                    }
                }
                out.copies.push((at, bytes[run].to_vec()));
            }
        }
        out
    }

    /// Makes a map only GPU programs used host-owned if the region's entries differ from
    /// `written`'s (the device's copy last written back): what the GPU was given is that copy.
    fn adopt(&self, layout: &ArenaLayout, slot: usize, map: &bpftime_maps::Map, share: &mut HostShare, written: &[u8]) -> bool {
        use bpftime_gpu_ptx::maps::GpuMapKind;
        let m = &layout.maps[slot];
        match m.kind {
            GpuMapKind::Hash => {
                let Some(host) = host_entries(layout, slot, map) else { return false };
                let device = gpu_entries(layout, written, slot);
                if host == device {
                    return false;
                }
                share.hashes.insert(slot, device);
            }
            GpuMapKind::Array if map.map_type() == bpftime_maps::MapType::Array => {
                let Some(stored) = written.get(m.data_off as usize..(m.data_off + m.data_len) as usize) else { return false };
                if host_array_bytes(map, m.stride as usize, stored) == stored {
                    return false;
                }
                share.given.insert(slot, stored.to_vec());
            }
            _ => return false,
        }
        true
    }

    /// Copies a device arena (as read back after a launch; its shards are folded here) into the
    /// region's maps, entries that changed since `prev` (the previous copy, folded, or the
    /// image the arena started from) only. With `shared` (what the GPU had been given of the
    /// host-owned arrays and hashes when the copy was made, and what it has been given now),
    /// the entries of those the GPU changed (or deleted) are written, not those it was given
    /// (a CPU and a GPU program may both write one map; where both wrote one entry, the later
    /// write-back wins). Returns what could not be copied, one line per map.
    pub fn write_back(
        &self,
        layout: &ArenaLayout,
        arena: &mut [u8],
        prev: Option<&[u8]>,
        region: &Arc<bpftime_shm::ShmRegion>,
        mut shared: Option<(&HostShare, &mut HostShare)>,
    ) -> Vec<String> {
        layout.fold_shards(arena);
        let mut errors = vec![];
        let (lines, lost) = trace_lines(layout, arena);
        if layout.trace_slot.is_some() && std::env::var_os("BPFTIME_VERBOSE").is_some() {
            eprintln!("bpftime: CUDA trace ring copied back: {} messages, {lost} lost", lines.len());
        }
        if !lines.is_empty() {
            match crate::trace::TracePipe::open(region) {
                Ok(pipe) => lines.iter().for_each(|l| pipe.write(l.as_bytes())),
                Err(e) => errors.push(format!("trace pipe: {e}")),
            }
        }
        if lost > 0 {
            errors.push(format!("{lost} trace messages lost (the ring was full)"));
        }
        for (slot, &id) in self.map_ids.iter().enumerate() {
            // Maps kept in host memory hold what the GPU wrote already.
            if self.trace_slot == Some(slot) || layout.maps.get(slot).is_some_and(|m| m.spec.in_host) {
                continue;
            }
            if let Some((then, now)) = shared.as_mut().filter(|(then, _)| then.covers(slot)) {
                if let Err(e) = self.write_back_shared(layout, arena, slot, then, now) {
                    errors.push(e);
                }
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

impl GpuProbes {
    /// The region's map in arena slot `slot`.
    fn region_map(&self, slot: usize) -> Result<&bpftime_maps::Map, String> {
        self.maps.get(slot).and_then(Option::as_ref).ok_or_else(|| format!("arena slot {slot} holds no map of the region"))
    }

    /// Merges host-owned hash `slot` both ways, run in stream order before a launch, with
    /// `table` the device's table of it as the stream got there and `host` the region's entries
    /// when the launch was queued (what the launch must see of the host's writes; later ones
    /// reach a later launch): what the GPU changed since it was last given the hash is written
    /// to the region, then `table` is rewritten to hold `host` with the GPU's changes (given to
    /// the GPU from then on). Returns the count of entries, the table's descriptor word.
    /// Nothing either side wrote is lost.
    pub fn merge_hash(&self, layout: &ArenaLayout, slot: usize, share: &mut HostShare, table: &mut [u8], host: &Entries) -> Result<u64, String> {
        let m = layout.maps.get(slot).ok_or("no such GPU map")?;
        let map = self.region_map(slot)?;
        let given = share.hashes.get_mut(&slot).ok_or_else(|| format!("map `{}` is not shared with the host", m.spec.name))?;
        let gpu: Entries = layout.table_entries(slot, table).into_iter().collect();
        apply_gpu_changes(map, &m.spec.name, given, gpu.clone())?;
        // The region now, less what the host wrote after the launch was queued (an entry that
        // is neither the queued view's nor the GPU's): that waits for the next launch.
        let now = host_entries(layout, slot, map).unwrap_or_default();
        let mut merged = Entries::new();
        for (k, v) in &now {
            match host.get(k) {
                _ if gpu.get(k) == Some(v) => {
                    merged.insert(k.clone(), v.clone());
                }
                Some(h) => {
                    merged.insert(k.clone(), h.clone());
                }
                None => {
                    if let Some(g) = gpu.get(k) {
                        merged.insert(k.clone(), g.clone());
                    }
                }
            }
        }
        // Deleted since the launch was queued: by the host (the GPU's entry stays for this
        // launch), or by the GPU (gone).
        for k in host.keys().filter(|k| !now.contains_key(*k)) {
            if let Some(g) = gpu.get(k) {
                merged.insert(k.clone(), g.clone());
            }
        }
        let (fresh, count) = hash_table_of(layout, slot, &merged);
        table.copy_from_slice(&fresh);
        *given = merged;
        Ok(count)
    }
}

/// Writes to the region's `map` what the GPU changed of a hash it was `given` (its entries
/// are now `gpu`): deleted keys first, then added or changed ones. `given` becomes `gpu`.
fn apply_gpu_changes(map: &bpftime_maps::Map, name: &str, given: &mut Entries, gpu: Entries) -> Result<(), String> {
    for key in given.keys().filter(|k| !gpu.contains_key(*k)) {
        match map.delete_from_copy(key) {
            Ok(()) | Err(bpftime_maps::Errno::ENOENT) => {}
            Err(e) => return Err(format!("map `{name}`: {e}")),
        }
    }
    for (key, value) in gpu.iter().filter(|(k, v)| given.get(*k) != Some(*v)) {
        map.update_from_copy(key, value, 0).map_err(|e| format!("map `{name}`: {e}"))?;
    }
    *given = gpu;
    Ok(())
}

/// What the GPU has been given of each host-owned array (by arena slot: the bytes of its
/// storage as last copied to the device) and hash (its entries), so that a push sends only
/// what the host changed and a write-back only what the GPU changed.
#[derive(Clone, Debug, Default)]
pub struct HostShare {
    given: std::collections::HashMap<usize, Vec<u8>>,
    hashes: std::collections::HashMap<usize, Entries>,
    /// Writes of each map (see [`bpftime_maps::Map::host_writes`]) when last looked at.
    writes: std::collections::HashMap<usize, u64>,
}

/// What to give the device before a launch (see [`GpuProbes::host_values`]).
#[derive(Debug, Default)]
pub struct HostPush {
    /// (arena offset, bytes) to copy, in order.
    pub copies: Vec<(u64, Vec<u8>)>,
    /// Hash slots to merge in stream order ([`GpuProbes::merge_hash`]), with the region's
    /// entries as of now.
    pub merges: Vec<(usize, Entries)>,
    /// Maps only GPU programs used that the host wrote now (host-owned from now on).
    pub adopted: Vec<String>,
}

impl HostShare {
    /// This share's arrays with `current`'s hashes.
    pub fn with_hashes_of(&self, current: &HostShare) -> HostShare {
        HostShare { given: self.given.clone(), hashes: current.hashes.clone(), writes: self.writes.clone() }
    }

    /// Whether arena slot `slot` is shared this way.
    fn covers(&self, slot: usize) -> bool {
        self.given.contains_key(&slot) || self.hashes.contains_key(&slot)
    }
}

impl GpuProbes {
    /// Writes the entries of host-owned array `slot` that the GPU changed (the copy `arena`
    /// differs from what it had been given, `then`) into the region, and records them as given
    /// in `now` where nothing newer was given since.
    fn write_back_shared(&self, layout: &ArenaLayout, arena: &[u8], slot: usize, then: &HostShare, now: &mut HostShare) -> Result<(), String> {
        let map = self.region_map(slot)?;
        if let (Some(m), Some(given)) = (layout.maps.get(slot), now.hashes.get_mut(&slot)) {
            // Hashes are given to the device in stream order (see `merge_hash`): what it has
            // now is what it had when the copy was made.
            let gpu = gpu_entries(layout, arena, slot);
            apply_gpu_changes(map, &m.spec.name, given, gpu)?;
            return Ok(());
        }
        let (Some(m), Some(old)) = (layout.maps.get(slot), then.given.get(&slot)) else { return Ok(()) };
        let (stride, vs) = (m.stride as usize, m.spec.value_size as usize);
        let data = &arena[m.data_off as usize..(m.data_off + m.data_len) as usize];
        for i in 0..m.spec.max_entries as usize {
            let entry = i * stride..(i + 1) * stride;
            if data.get(entry.clone()) == old.get(entry.clone()) {
                continue;
            }
            map.update_from_copy(&(i as u32).to_le_bytes(), &data[entry.start..entry.start + vs], 0).map_err(|e| format!("map `{}`: {e}", m.spec.name))?;
            if let Some(given) = now.given.get_mut(&slot) {
                if given.get(entry.clone()) == old.get(entry.clone()) {
                    given[entry.clone()].copy_from_slice(&data[entry]);
                }
            }
        }
        Ok(())
    }
}

/// Global thread ids a per-GPU-thread array (bpftime's 1502) keeps a value for:
/// `BPFTIME_MAP_GPU_THREAD_COUNT` (bpftime's setting, read where the map is made), else 1024.
pub fn gpu_thread_count() -> u32 {
    std::env::var("BPFTIME_MAP_GPU_THREAD_COUNT").ok().and_then(|v| v.trim().parse().ok()).filter(|&n| n > 0 && n <= 1 << 24).unwrap_or(1024)
}

/// The region map spec of a map declared with type `map_type`, `build` making it from the
/// region type: the kernel's own type, or the host equivalent of one of bpftime's GPU map types
/// (see [`bpftime_gpu_ptx::maps::host_equivalent`]). A per-GPU-thread array is an ARRAY whose
/// values hold every thread's value one after the other, the thread count in `map_extra`
/// (which no array has otherwise), as bpftime's host side shows it. None for an unknown type
/// or a per-thread value whose size overflows.
pub fn region_map_spec(map_type: u32, build: impl FnOnce(bpftime_maps::MapType) -> bpftime_maps::MapSpec) -> Option<bpftime_maps::MapSpec> {
    use bpftime_maps::MapType;
    let mut spec = build(MapType::from_u32(map_type).or_else(|| MapType::from_u32(bpftime_gpu_ptx::maps::host_equivalent(map_type)?))?);
    if bpftime_gpu_ptx::maps::is_per_thread_array(map_type) {
        let threads = gpu_thread_count();
        spec.value_size = spec.value_size.checked_mul(threads)?;
        spec.map_extra = threads as u64;
    }
    if bpftime_gpu_ptx::maps::is_host_memory_map(map_type) {
        spec.map_extra |= IN_HOST_MEMORY;
    }
    if map_type == GPU_RING && (spec.key_size != 0 || spec.value_size != 0) {
        spec.max_entries = gpu_ring_bytes(spec.value_size, spec.max_entries);
        spec.key_size = 0;
        spec.value_size = 0;
    }
    Some(spec)
}

/// The `map_extra` bit of a region array declared as one of bpftime's host memory GPU maps
/// (1512, 1513): GPU programs use the region's values themselves, registered with the device,
/// rather than a copy in device memory (see [`bpftime_gpu_ptx::maps::GpuMapSpec::in_host`]).
pub const IN_HOST_MEMORY: u64 = 1 << 32;

/// Whether region map `spec` was declared to live in host memory on the GPU.
pub fn in_host_memory(spec: &bpftime_maps::MapSpec) -> bool {
    spec.map_type == bpftime_maps::MapType::Array && spec.map_extra & IN_HOST_MEMORY != 0
}

/// bpftime's GPU ring buffer map type.
const GPU_RING: u32 = 1527;

/// The bytes of ring buffer a GPU ring (bpftime's 1527) declared bpftime's way gets: room for
/// `max_entries` records of `value_size` bytes (with their 8-byte headers) for each of
/// [`gpu_thread_count`] threads, as bpftime gives every thread a ring of its own; a power of two
/// from 64 KiB to 256 MiB. (Declared the kernel's way, with no key or value, `max_entries` is
/// the size in bytes already.)
fn gpu_ring_bytes(value_size: u32, max_entries: u32) -> u32 {
    let record = (value_size as u64).div_ceil(8) * 8 + 8;
    let bytes = record * max_entries.max(1) as u64 * gpu_thread_count() as u64;
    bytes.clamp(64 << 10, 256 << 20).next_power_of_two() as u32
}

/// The thread count of a region map that is a per-GPU-thread array (an ARRAY with a thread
/// count, see [`region_map_spec`]); each thread's value is `value_size / threads` bytes.
pub fn per_thread_slots(spec: &bpftime_maps::MapSpec) -> Option<u32> {
    let threads = Some(spec.map_extra as u32).filter(|&n| n > 0)?;
    (spec.map_type == bpftime_maps::MapType::Array && spec.value_size.is_multiple_of(threads)).then_some(threads)
}

/// The GPU's view of region map `map`: a per-thread array as bpftime's 1502, others as they
/// are.
fn gpu_spec_of(map: &bpftime_maps::Map) -> GpuMapSpec {
    let s = map.spec();
    let spec = match per_thread_slots(s) {
        Some(threads) => {
            GpuMapSpec { threads, ..GpuMapSpec::new(map.name(), bpftime_gpu_ptx::maps::PER_THREAD_ARRAY, s.key_size, s.value_size / threads, s.max_entries) }
        }
        None => GpuMapSpec::new(map.name(), s.map_type as u32, s.key_size, s.value_size, s.max_entries),
    };
    // In host memory when declared so and the region lays the values out as the arena would:
    // a value every 8-aligned stride, per-thread values each 8-aligned too.
    let in_host = in_host_memory(s) && (spec.threads <= 1 || spec.value_size.is_multiple_of(8));
    GpuMapSpec { in_host, ..spec }
}

/// Verifies stored instructions `insns` (region map ids in their `lddw`s) as a CUDA kernel
/// probe: with the GPU's helpers besides the kernel's (bpftime's 501-511).
pub fn verify_probe(insns: &[bpftime_vm::RawInsn]) -> Result<(), String> {
    verify(insns, verifier_helpers(), &SlotResolver::default())
        .and_then(|program| bpftime_vm::kernel_rules::check_kernel_rules(&program, true))
        .map_err(|e| format!("as a CUDA kernel probe: {e}"))
}

/// Whether `insns` call a helper only the GPU has (bpftime's 501-511): a CUDA kernel probe.
pub fn calls_gpu_helpers(insns: &[bpftime_vm::RawInsn]) -> bool {
    let (gpu, cpu) = (verifier_helpers(), crate::helpers::kernel_helpers());
    insns.iter().any(|i| i.opc == 0x85 && i.src == 0 && gpu.get(i.imm as u32).is_some() && cpu.get(i.imm as u32).is_none())
}

/// The helper table GPU programs are verified against: the kernel's helpers (so one the GPU
/// lacks is reported by the translator, by name, at its instruction) and the GPU's own ids.
pub fn verifier_helpers() -> Arc<bpftime_vm::HelperTable> {
    static TABLE: std::sync::OnceLock<Arc<bpftime_vm::HelperTable>> = std::sync::OnceLock::new();
    TABLE.get_or_init(|| verifier_table(&std_helpers::standard())).clone()
}

/// The host's `CLOCK_REALTIME` in nanoseconds: what a GPU's `%globaltimer` counts (the PTX
/// interpreter is given it to stand in for one).
pub fn realtime_ns() -> u64 {
    crate::helpers::clock(libc::CLOCK_REALTIME)
}

/// What this process tells its GPU programs of itself: the offsets (wrapping) from
/// `%globaltimer` to its `CLOCK_MONOTONIC` and `CLOCK_BOOTTIME`, which `bpf_ktime_get_ns` and
/// `bpf_ktime_get_boot_ns` add on the GPU (so that a timestamp taken there compares with one a
/// CPU program took; bpftime's `bpftime_get_globaltimer`, 502, stays raw), its uid and gid and
/// its name, as the CPU's helpers give them.
pub fn host_words() -> bpftime_gpu_ptx::state::HostWords {
    let real = realtime_ns();
    let mut comm = [0u8; 16];
    let name = crate::helpers::comm();
    let n = name.len().min(15);
    comm[..n].copy_from_slice(&name.as_bytes()[..n]);
    // SAFETY: getuid and getgid cannot fail.
    let (uid, gid) = unsafe { (libc::getuid(), libc::getgid()) };
    bpftime_gpu_ptx::state::HostWords {
        clock_monotonic: crate::helpers::clock(libc::CLOCK_MONOTONIC).wrapping_sub(real),
        clock_boottime: crate::helpers::clock(libc::CLOCK_BOOTTIME).wrapping_sub(real),
        uid_gid: (gid as u64) << 32 | uid as u64,
        comm,
    }
}
