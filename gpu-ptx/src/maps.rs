//! Maps on the GPU: one device allocation, the *arena*, holds a table of map descriptors and
//! every map's storage; programs and helpers address it from `ARENA_LO` in the run state.
//!
//! ```text
//! arena: [header 64 B][descriptor 0][descriptor 1]...[storage of map 0][storage of map 1]...
//! ```
//! A map reference in a program is `MAP_TAG | slot`; `lddw` of a map value becomes the arena
//! address of the value's storage (read from the descriptor at run time). A map kept in host
//! memory ([`GpuMapSpec::in_host`]) has no storage in the arena: its descriptor's data offset
//! leads (wrapping) to the host's values, registered with the device, and its bit in
//! [`header::HOST_MAPS`] admits accesses there.

/// Bytes of the arena header.
pub const HEADER_SIZE: u64 = 64;
/// Bytes of one descriptor.
pub const DESC_SIZE: u64 = 64;

/// Offsets of the arena header's fields.
pub mod header {
    /// u64: [`super::ARENA_MAGIC`].
    pub const MAGIC: u64 = 0;
    /// u32: number of maps.
    pub const NMAPS: u64 = 8;
    /// u32: number of per-SM slots per-CPU maps have.
    pub const NSM: u64 = 12;
    /// u64: arena offset of the shard zone (the shared arrays).
    pub const ZONE_OFF: u64 = 16;
    /// u64: its length.
    pub const ZONE_LEN: u64 = 24;
    /// u64: arena offset of the per-SM shards of the zone.
    pub const SHARDS_OFF: u64 = 32;
    /// u32: the slot of the trace ring plus one (0: none).
    pub const TRACE_SLOT: u64 = 40;
    /// u64: bit `s` set when the storage of map `s` is host memory registered with the device
    /// (see [`super::GpuMapSpec::in_host`]): its descriptor's data offset leads out of the
    /// arena, and accesses inside that storage are allowed too.
    pub const HOST_MAPS: u64 = 48;
}

/// Name of the arena's trace ring: a ring map of no region map, where `bpf_trace_printk` and
/// bpftime's `puts` (501) leave [`TraceRecord`]s for the host to print.
pub const TRACE_RING_NAME: &str = ".trace_printk";
/// Bytes of the trace ring.
pub const TRACE_RING_BYTES: u32 = 1 << 20;
/// Bytes of a format or string kept in a trace record (longer ones are cut).
pub const TRACE_TEXT_MAX: u64 = 256;

/// What a trace record holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TraceKind {
    /// `bpf_trace_printk`: a format and its three arguments.
    Printk,
    /// bpftime's `puts`: a string.
    Puts,
}

/// A record of the trace ring: `[kind u32 << 32 | text bytes u32][three u64 args][the arena's
/// device address][text]` after the ring's record header (whose source is the SM).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TraceRecord {
    /// The SM it came from.
    pub sm: u32,
    /// Printk or puts.
    pub kind: TraceKind,
    /// The arguments (printk).
    pub args: [u64; 3],
    /// The arena's address on the device (a `%s` argument inside the arena reads from it).
    pub arena_addr: u64,
    /// The format (printk) or string (puts), up to its first NUL.
    pub text: Vec<u8>,
}

/// The bit every ring record's header has (above the source and the length).
pub const RECORD_WRITTEN: u64 = 1 << 63;

/// First word of an arena.
pub const ARENA_MAGIC: u64 = 0x616e_6572_615f_7462; // "bt_arena"

/// A hash entry being written by a thread.
pub const HASH_BUSY: u32 = 1;
/// A hash entry in use.
pub const HASH_FULL: u32 = 2;
/// A deleted hash entry: its key and hash stay, and only an insert of that key reuses it.
pub const HASH_DELETED: u32 = 3;

/// Offsets of a descriptor's fields.
pub mod desc {
    /// u32: map type (kernel numbering, or bpftime's GPU types).
    pub const TYPE: u64 = 0;
    /// u32: key size.
    pub const KEY_SIZE: u64 = 4;
    /// u32: value size.
    pub const VALUE_SIZE: u64 = 8;
    /// u32: capacity.
    pub const MAX_ENTRIES: u64 = 12;
    /// u64: arena offset of the storage.
    pub const DATA_OFF: u64 = 16;
    /// u64: bytes of storage.
    pub const DATA_LEN: u64 = 24;
    /// u32: value slots per entry (one per SM for per-CPU maps, else 1).
    pub const SLOTS: u64 = 32;
    /// u32: bytes from one value slot to the next (value size rounded up to 8).
    pub const STRIDE: u64 = 36;
    /// u64: records a full ring dropped.
    pub const LOST: u64 = 40;
    /// u64: hash maps: entries in use; rings: bytes written (the head).
    pub const COUNT: u64 = 48;
    /// Rings: see [`COUNT`].
    pub const HEAD: u64 = 48;
    /// u32: hash maps: slots in the table (a power of two).
    pub const CAPACITY: u64 = 56;
    /// u32: rings: the bytes an SM takes from the ring at a time, its records then reserved
    /// from its own cursor (see [`super::ArenaLayout::ring_cursors`]); 0 where each record is
    /// reserved from the head (small rings, the trace ring).
    pub const CHUNK: u64 = 56;
    /// u32: hash maps: bytes per slot (8-byte header, key rounded to 8, value slots).
    pub const ENTRY_SIZE: u64 = 60;
    /// Offset of the key in a hash slot (after state and hash words).
    pub const KEY_OFF: u64 = 8;
}

/// The hash the GPU's hash maps place a key by: FNV-1a, 64-bit, over the key's bytes (the
/// PTX helper `bpf_fnv` computes the same).
pub fn key_hash(key: &[u8]) -> u64 {
    key.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, &b| (h ^ b as u64).wrapping_mul(0x100_0000_01b3))
}

/// Arena offset of the descriptor of `slot`.
pub fn descriptor_offset(slot: u32) -> u64 {
    HEADER_SIZE + DESC_SIZE * slot as u64
}

/// A map as the GPU sees it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GpuMapSpec {
    /// Name, for messages and dumps.
    pub name: String,
    /// Type (kernel numbering, or bpftime's GPU map types 1501-1527).
    pub map_type: u32,
    /// Key size.
    pub key_size: u32,
    /// Value size.
    pub value_size: u32,
    /// Capacity (bytes for ring buffers).
    pub max_entries: u32,
    /// A per-GPU-thread array (bpftime's 1502): value slots per entry, one for each global
    /// thread id below it (0 for other maps).
    pub threads: u32,
    /// CPU programs use it too: the host writes entries of it between launches, so its storage
    /// stays out of the shard zone (a host write must not meet GPU adds parked in shards).
    pub host_shared: bool,
    /// Its storage is the host's own (the region's values, registered with the device), laid
    /// out as the arena would lay it out: GPU and host see each other's writes as they happen,
    /// nothing is copied (bpftime's host-memory maps, 1512 and 1513). Every access crosses the
    /// bus, so this is for maps the host must see or change while kernels run.
    pub in_host: bool,
}

impl GpuMapSpec {
    /// A map of `map_type` with these sizes (not a per-thread array).
    pub fn new(name: &str, map_type: u32, key_size: u32, value_size: u32, max_entries: u32) -> GpuMapSpec {
        GpuMapSpec { name: name.into(), map_type, key_size, value_size, max_entries, threads: 0, host_shared: false, in_host: false }
    }

    /// The arena's trace ring (see [`TRACE_RING_NAME`]).
    pub fn trace_ring() -> GpuMapSpec {
        GpuMapSpec::new(TRACE_RING_NAME, 27, 0, 0, TRACE_RING_BYTES)
    }
}

/// The map type of a per-GPU-thread array (bpftime's `BPF_MAP_TYPE_PERGPUTD_ARRAY_MAP`).
pub const PER_THREAD_ARRAY: u32 = 1502;
/// bpftime's per-GPU-thread array kept in host memory (`BPF_MAP_TYPE_PERGPUTD_ARRAY_HOST_MAP`):
/// a [`PER_THREAD_ARRAY`] whose storage is host memory ([`GpuMapSpec::in_host`]).
pub const PER_THREAD_HOST_ARRAY: u32 = 1512;
/// bpftime's array kept in host memory (`BPF_MAP_TYPE_GPU_ARRAY_HOST_MAP`): an array whose
/// storage is host memory ([`GpuMapSpec::in_host`]).
pub const HOST_ARRAY: u32 = 1513;

/// Whether `map_type` is one of bpftime's maps kept in host memory (1512, 1513).
pub fn is_host_memory_map(map_type: u32) -> bool {
    map_type == PER_THREAD_HOST_ARRAY || map_type == HOST_ARRAY
}

/// Whether `map_type` is one of bpftime's per-GPU-thread arrays (1502, 1512): one value per
/// global thread id.
pub fn is_per_thread_array(map_type: u32) -> bool {
    map_type == PER_THREAD_ARRAY || map_type == PER_THREAD_HOST_ARRAY
}

/// Whose value slot a map access uses.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SlotsBy {
    /// One value per entry.
    Shared,
    /// One per SM (per-CPU maps: the SM stands for the CPU).
    Sm,
    /// One per global thread id, up to [`GpuMapSpec::threads`] (an access by a thread past it
    /// finds nothing).
    Thread,
}

/// How a map type is stored on the GPU.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GpuMapKind {
    /// Values indexed by a u32 key.
    Array,
    /// Open-addressed hash table.
    Hash,
    /// A device ring of records drained by the host.
    Ring,
}

/// The GPU storage of a map type, and whose value slot an access uses; None when the GPU
/// cannot hold it.
pub fn kind_of(map_type: u32) -> Option<(GpuMapKind, SlotsBy)> {
    Some(match map_type {
        2 | 1503 | 1504 | 1513 => (GpuMapKind::Array, SlotsBy::Shared),
        6 => (GpuMapKind::Array, SlotsBy::Sm),
        PER_THREAD_ARRAY => (GpuMapKind::Array, SlotsBy::Thread),
        1 | 9 | 1501 => (GpuMapKind::Hash, SlotsBy::Shared),
        5 | 10 => (GpuMapKind::Hash, SlotsBy::Sm),
        27 | 4 | 1527 => (GpuMapKind::Ring, SlotsBy::Shared),
        _ => return None,
    })
}

/// The kernel map type that holds a bpftime GPU map type on the host (in the shared region,
/// where the CPU side and `bpftime map dump` see it): 1501 GPU hash -> HASH, the arrays 1503,
/// 1504 and 1513 (in host memory under bpftime) -> ARRAY, the per-thread arrays 1502 and 1512
/// -> ARRAY (each value holding every thread's, as bpftime's host side shows it), 1527 GPU ring
/// -> RINGBUF. None for other types.
pub fn host_equivalent(map_type: u32) -> Option<u32> {
    Some(match map_type {
        1501 => 1,
        1502 | 1503 | 1504 | 1512 | 1513 => 2,
        1527 => 27,
        _ => return None,
    })
}

/// Largest shared array whose 64-bit adds are sharded per SM (bigger ones, like per-thread
/// slots, take plain atomics: their addresses are spread already).
pub const SHARD_MAP_MAX: u64 = 64 << 10;
/// Most bytes of shared arrays sharded in all (each SM has a copy).
pub const SHARD_ZONE_MAX: u64 = 256 << 10;

/// Bytes of a perf buffer's device ring (it has no size of its own).
pub const PERF_RING_BYTES: u64 = 1 << 20;

/// Where one map lives in the arena.
#[derive(Clone, Debug)]
pub struct PlacedMap {
    /// The map.
    pub spec: GpuMapSpec,
    /// How it is stored.
    pub kind: GpuMapKind,
    /// Whose value slot an access uses.
    pub slots_by: SlotsBy,
    /// Arena offset of the storage.
    pub data_off: u64,
    /// Bytes of storage.
    pub data_len: u64,
    /// Value slots per entry.
    pub slots: u32,
    /// Bytes per value slot.
    pub stride: u32,
    /// Hash: slots of the table. Ring: its chunk ([`desc::CHUNK`]; 0: none).
    pub capacity: u32,
    /// Hash: bytes per table slot.
    pub entry_size: u32,
}

/// Most maps whose storage can be host memory (one bit each in [`header::HOST_MAPS`]); maps
/// past it asking for host memory live in the arena.
pub const MAX_HOST_MAPS: usize = 64;

/// The arena of a set of maps.
#[derive(Clone, Debug)]
pub struct ArenaLayout {
    /// SMs of the device (value slots of per-CPU maps).
    pub nsm: u32,
    /// The maps, by slot.
    pub maps: Vec<PlacedMap>,
    /// Total bytes.
    pub size: u64,
    /// Where the shared (not per-SM) arrays lie: the zone whose 64-bit atomic adds are sharded.
    pub zone_off: u64,
    /// Its length.
    pub zone_len: u64,
    /// Where the per-SM copies of the zone start (SM `k` at `shards_off + k * zone_len`).
    pub shards_off: u64,
    /// The slot of the trace ring, if one of the maps is it.
    pub trace_slot: Option<usize>,
}

fn round8(n: u64) -> u64 {
    n.div_ceil(8) * 8
}

/// Bytes between two SMs' ring cursors or zone shards: a cache line, so that SMs do not
/// contend for one.
pub const CURSOR_STRIDE: u64 = 128;

/// The chunk an SM takes from a ring of `bytes` at a time ([`desc::CHUNK`]): a quarter of an
/// even share of the ring, 256 bytes to 64 KiB; 0 (records reserved one by one from the head)
/// when that would be under 256 bytes, and for the trace ring, whose writer reserves from the
/// head. With chunks, the threads of an SM reserve from the SM's cursor and only one in a
/// chunk's worth of records touches the head, which every thread of the GPU would otherwise
/// queue on.
fn ring_chunk(bytes: u64, nsm: u32, trace: bool) -> u32 {
    let share = bytes / (4 * nsm as u64) / 8 * 8;
    if trace || share < 256 {
        0
    } else {
        share.min(64 << 10) as u32
    }
}

/// Bytes of a map's storage: its data, and a chunked ring's cursors after it.
fn storage_len(m: &PlacedMap, nsm: u32) -> u64 {
    match m.kind {
        GpuMapKind::Ring if m.capacity > 0 => m.data_len.div_ceil(CURSOR_STRIDE) * CURSOR_STRIDE + nsm as u64 * CURSOR_STRIDE,
        _ => m.data_len,
    }
}

impl ArenaLayout {
    /// Places `maps` (slot = index) for a device with `nsm` SMs.
    pub fn new(maps: &[GpuMapSpec], nsm: u32) -> Result<ArenaLayout, String> {
        let nsm = nsm.max(1);
        let mut placed = vec![];
        for (slot, m) in maps.iter().enumerate() {
            let (kind, slots_by) = kind_of(m.map_type).ok_or_else(|| format!("map `{}`: type {} cannot live on the GPU", m.name, m.map_type))?;
            // Host memory holds arrays with one value per entry or per thread (the region's
            // layout is the arena's for those).
            let in_host = m.in_host && slot < MAX_HOST_MAPS && kind == GpuMapKind::Array && slots_by != SlotsBy::Sm;
            let m = &GpuMapSpec { in_host, ..m.clone() };
            let slots = match slots_by {
                SlotsBy::Shared => 1,
                SlotsBy::Sm => nsm,
                SlotsBy::Thread => m.threads.max(1),
            };
            let stride = round8(m.value_size as u64) as u32;
            let (data_len, capacity, entry_size) = match kind {
                GpuMapKind::Array => (stride as u64 * slots as u64 * m.max_entries as u64, 0, 0),
                GpuMapKind::Hash => {
                    let cap = (m.max_entries as u64 * 2).max(2).next_power_of_two();
                    let entry = desc::KEY_OFF + round8(m.key_size as u64) + stride as u64 * slots as u64;
                    (cap * entry, cap as u32, entry as u32)
                }
                GpuMapKind::Ring => {
                    let bytes = if m.map_type == 4 { PERF_RING_BYTES } else { (m.max_entries as u64).max(4096) };
                    (bytes, ring_chunk(bytes, nsm, *m == GpuMapSpec::trace_ring()), 0)
                }
            };
            if data_len > 1 << 34 {
                return Err(format!("map `{}` needs {data_len} bytes on the GPU", m.name));
            }
            placed.push(PlacedMap { spec: m.clone(), kind, slots_by, data_off: 0, data_len, slots, stride, capacity, entry_size });
        }
        // Storage: the small shared arrays first, one after the other (the shard zone, copied
        // once per SM, so it stays small: counters and histograms), then the rest.
        let mut at = round8(HEADER_SIZE + DESC_SIZE * maps.len() as u64).div_ceil(64) * 64;
        let zone_off = at;
        // Host memory maps take no room here: their storage is placed by the host
        // ([`Self::place_in_host`]).
        let mut in_zone: Vec<bool> = placed.iter().map(|m| m.spec.in_host).collect();
        for (i, m) in placed.iter_mut().enumerate() {
            if !in_zone[i]
                && m.kind == GpuMapKind::Array
                && m.slots == 1
                && !m.spec.host_shared
                && m.data_len <= SHARD_MAP_MAX
                && at + m.data_len - zone_off <= SHARD_ZONE_MAX
            {
                in_zone[i] = true;
                m.data_off = at;
                at = (at + m.data_len).div_ceil(64) * 64;
            }
        }
        // Whole cache lines: no two SMs' shards share one.
        let zone_len = (at - zone_off).div_ceil(CURSOR_STRIDE) * CURSOR_STRIDE;
        at = zone_off + zone_len;
        for (i, m) in placed.iter_mut().enumerate() {
            if !in_zone[i] && !m.spec.in_host {
                m.data_off = at;
                at = (at + storage_len(m, nsm)).div_ceil(64) * 64;
            }
        }
        // One copy of the zone per SM: 64-bit atomic adds into shared arrays land there.
        let shards_off = at.div_ceil(CURSOR_STRIDE) * CURSOR_STRIDE;
        at = shards_off;
        at += zone_len * nsm as u64;
        if at > 1 << 36 {
            return Err(format!("the maps need {at} bytes on the GPU"));
        }
        let trace_slot = maps.iter().position(|m| *m == GpuMapSpec::trace_ring());
        Ok(ArenaLayout { nsm, maps: placed, size: at.max(HEADER_SIZE), zone_off, zone_len, shards_off, trace_slot })
    }

    /// Adds each SM's shard of the shared arrays into the arrays and clears the shards (after a
    /// launch, before anything reads the maps).
    pub fn fold_shards(&self, arena: &mut [u8]) {
        let word = |a: &[u8], o: u64| u64::from_le_bytes(a[o as usize..o as usize + 8].try_into().expect("8 bytes"));
        for w in (0..self.zone_len).step_by(8) {
            let mut sum = 0u64;
            for k in 0..self.nsm as u64 {
                let o = self.shards_off + k * self.zone_len + w;
                sum = sum.wrapping_add(word(arena, o));
                arena[o as usize..o as usize + 8].fill(0);
            }
            if sum != 0 {
                let o = self.zone_off + w;
                let v = word(arena, o).wrapping_add(sum);
                arena[o as usize..o as usize + 8].copy_from_slice(&v.to_le_bytes());
            }
        }
    }

    /// A fresh arena: header, descriptors, zeroed storage.
    pub fn image(&self) -> Vec<u8> {
        let mut a = vec![0u8; self.size as usize];
        let put32 = |a: &mut [u8], o: u64, v: u32| a[o as usize..o as usize + 4].copy_from_slice(&v.to_le_bytes());
        let put64 = |a: &mut [u8], o: u64, v: u64| a[o as usize..o as usize + 8].copy_from_slice(&v.to_le_bytes());
        put64(&mut a, header::MAGIC, ARENA_MAGIC);
        put32(&mut a, header::NMAPS, self.maps.len() as u32);
        put32(&mut a, header::NSM, self.nsm);
        put64(&mut a, header::ZONE_OFF, self.zone_off);
        put64(&mut a, header::ZONE_LEN, self.zone_len);
        put64(&mut a, header::SHARDS_OFF, self.shards_off);
        put32(&mut a, header::TRACE_SLOT, self.trace_slot.map_or(0, |s| s as u32 + 1));
        put64(&mut a, header::HOST_MAPS, self.host_maps().fold(0, |mask, s| mask | 1 << s));
        for (i, m) in self.maps.iter().enumerate() {
            let d = descriptor_offset(i as u32);
            put32(&mut a, d + desc::TYPE, m.spec.map_type);
            put32(&mut a, d + desc::KEY_SIZE, m.spec.key_size);
            put32(&mut a, d + desc::VALUE_SIZE, m.spec.value_size);
            put32(&mut a, d + desc::MAX_ENTRIES, m.spec.max_entries);
            put64(&mut a, d + desc::DATA_OFF, m.data_off);
            put64(&mut a, d + desc::DATA_LEN, m.data_len);
            put32(&mut a, d + desc::SLOTS, m.slots);
            put32(&mut a, d + desc::STRIDE, m.stride);
            put32(&mut a, d + desc::CAPACITY, m.capacity);
            put32(&mut a, d + desc::ENTRY_SIZE, m.entry_size);
        }
        a
    }

    /// The slots of the maps whose storage is host memory ([`GpuMapSpec::in_host`]).
    pub fn host_maps(&self) -> impl Iterator<Item = usize> + '_ {
        self.maps.iter().enumerate().filter(|(_, m)| m.spec.in_host).map(|(s, _)| s)
    }

    /// Points the descriptor of host memory map `slot` in an arena image at its storage:
    /// `storage` is the device address of the host's values (`data_len` bytes laid out as the
    /// arena would), `arena` the device address the image is copied to.
    pub fn place_in_host(&self, image: &mut [u8], slot: usize, arena: u64, storage: u64) -> Result<(), String> {
        let m = self.maps.get(slot).filter(|m| m.spec.in_host).ok_or("not a host memory map")?;
        let at = (descriptor_offset(slot as u32) + desc::DATA_OFF) as usize;
        let word = image.get_mut(at..at + 8).ok_or_else(|| format!("map `{}`: the image has no descriptor for it", m.spec.name))?;
        word.copy_from_slice(&storage.wrapping_sub(arena).to_le_bytes());
        Ok(())
    }

    /// The arena ranges (offset, bytes) to zero on the device once the rings' records have been
    /// read back, so the next launch starts empty: each ring's 16-byte cursor (records lost,
    /// then head) and its records (a reservation that did not fit leaves the tail unwritten,
    /// where an old record must not be read again).
    pub fn ring_resets(&self) -> Vec<(u64, u64)> {
        (0..self.maps.len())
            .filter(|&i| self.maps[i].kind == GpuMapKind::Ring)
            .flat_map(|i| [(descriptor_offset(i as u32) + desc::LOST, 16), (self.maps[i].data_off, storage_len(&self.maps[i], self.nsm))])
            .collect()
    }

    /// A chunked ring's per-SM cursors ([`desc::CHUNK`]): where they start and their bytes,
    /// [`CURSOR_STRIDE`] apart, after the records (rounded to a cursor stride). Each is a u64
    /// `(start / 8 + 1) << 32 | used` for the SM's chunk (0: none yet, `u32::MAX << 32`: the
    /// ring is full), then a u64 count of the records the SM lost.
    pub fn ring_cursors(&self, slot: usize) -> Option<(u64, u64)> {
        let m = self.maps.get(slot).filter(|m| m.kind == GpuMapKind::Ring && m.capacity > 0)?;
        Some((m.data_off + m.data_len.div_ceil(CURSOR_STRIDE) * CURSOR_STRIDE, self.nsm as u64 * CURSOR_STRIDE))
    }

    /// Sets value `index` of array map `slot` in an arena image: every SM's slot, or for a
    /// per-thread array each thread's from its part of `value` (the host's layout: the threads'
    /// values one after the other).
    pub fn set_array_value(&self, arena: &mut [u8], slot: usize, index: u32, value: &[u8]) -> Result<(), String> {
        let m = self.maps.get(slot).ok_or("no such map")?;
        if m.kind != GpuMapKind::Array || index >= m.spec.max_entries {
            return Err(format!("map `{}` has no array value {index}", m.spec.name));
        }
        if m.spec.in_host {
            // The host's values are the map's storage already.
            return Ok(());
        }
        let vs = m.spec.value_size as usize;
        for s in 0..m.slots as usize {
            let part = if m.slots_by == SlotsBy::Thread { value.get(s * vs..).unwrap_or(&[]) } else { value };
            let n = part.len().min(vs);
            let at = (m.data_off + (index as u64 * m.slots as u64 + s as u64) * m.stride as u64) as usize;
            arena[at..at + n].copy_from_slice(&part[..n]);
        }
        Ok(())
    }

    /// Puts `key` with `value` into the storage of hash map `slot` (`table`: its `data_len`
    /// bytes) where the GPU's lookups find it: the slot [`key_hash`] and linear probing lead
    /// to, marked in use, every value slot holding `value`. Returns whether the key is new (the
    /// descriptor's count of entries in use grows by one then).
    pub fn hash_insert(&self, table: &mut [u8], slot: usize, key: &[u8], value: &[u8]) -> Result<bool, String> {
        let m = self.maps.get(slot).ok_or("no such map")?;
        if m.kind != GpuMapKind::Hash || key.len() != m.spec.key_size as usize || table.len() as u64 != m.data_len {
            return Err(format!("map `{}` has no hash entry of a {}-byte key", m.spec.name, key.len()));
        }
        let h = key_hash(key);
        let word = (h as u32 | 1).to_le_bytes();
        let (cap, esz) = (m.capacity as u64, m.entry_size as usize);
        for n in 0..cap {
            let e = ((h.wrapping_add(n)) & (cap - 1)) as usize * esz;
            let state = u32::from_le_bytes(table[e..e + 4].try_into().expect("4 bytes"));
            let k = e + desc::KEY_OFF as usize;
            let same = state == HASH_FULL && table[e + 4..e + 8] == word && &table[k..k + key.len()] == key;
            if state != 0 && !same {
                continue;
            }
            table[e..e + 4].copy_from_slice(&HASH_FULL.to_le_bytes());
            table[e + 4..e + 8].copy_from_slice(&word);
            table[k..k + key.len()].copy_from_slice(key);
            let values = k + round8(m.spec.key_size as u64) as usize;
            let n = value.len().min(m.spec.value_size as usize);
            for s in 0..m.slots as usize {
                let at = values + s * m.stride as usize;
                table[at..at + n].copy_from_slice(&value[..n]);
            }
            return Ok(!same);
        }
        Err(format!("map `{}` is full on the GPU", m.spec.name))
    }

    /// Arena offset of the count of entries in use of hash map `slot` (a u64 in its descriptor).
    pub fn hash_count_offset(&self, slot: usize) -> u64 {
        descriptor_offset(slot as u32) + desc::COUNT
    }

    /// The entries of map `slot` in an arena image: (key, one value per slot). Arrays list
    /// every index; hashes their live entries in table order.
    pub fn entries(&self, arena: &[u8], slot: usize) -> Vec<(Vec<u8>, Vec<Vec<u8>>)> {
        self.entries_where(arena, slot, &|_| true)
    }

    /// The entries of map `slot` whose bytes in the arena (the byte range of all their value
    /// slots, or of the whole hash slot) `keep` says to read: what changed since a previous
    /// copy, say. None for a map kept in host memory (the arena holds nothing of it).
    pub fn entries_where(&self, arena: &[u8], slot: usize, keep: &dyn Fn(std::ops::Range<usize>) -> bool) -> Vec<(Vec<u8>, Vec<Vec<u8>>)> {
        let Some(m) = self.maps.get(slot).filter(|m| !m.spec.in_host) else { return vec![] };
        let vs = m.spec.value_size as usize;
        let values = |base: u64| -> Vec<Vec<u8>> {
            (0..m.slots as u64)
                .map(|s| {
                    let at = (base + s * m.stride as u64) as usize;
                    arena.get(at..at + vs).map(<[u8]>::to_vec).unwrap_or_default()
                })
                .collect()
        };
        match m.kind {
            GpuMapKind::Array => {
                let bytes = m.slots as u64 * m.stride as u64;
                (0..m.spec.max_entries)
                    .filter(|&i| {
                        let at = (m.data_off + i as u64 * bytes) as usize;
                        keep(at..at + bytes as usize)
                    })
                    .map(|i| (i.to_le_bytes().to_vec(), values(m.data_off + i as u64 * bytes)))
                    .collect()
            }
            GpuMapKind::Hash => (0..m.capacity as u64)
                .filter_map(|i| {
                    let e = m.data_off + i * m.entry_size as u64;
                    if !keep(e as usize..(e + m.entry_size as u64) as usize) {
                        return None;
                    }
                    let state = u32::from_le_bytes(arena.get(e as usize..e as usize + 4)?.try_into().ok()?);
                    if state != HASH_FULL {
                        return None;
                    }
                    let k = (e + desc::KEY_OFF) as usize;
                    let key = arena.get(k..k + m.spec.key_size as usize)?.to_vec();
                    Some((key, values(e + desc::KEY_OFF + round8(m.spec.key_size as u64))))
                })
                .collect(),
            GpuMapKind::Ring => vec![],
        }
    }

    /// The live entries (key, value) of hash map `slot` in `table`, a copy of its storage
    /// (`data_len` bytes; per-SM hashes: the first slot's value).
    pub fn table_entries(&self, slot: usize, table: &[u8]) -> Vec<(Vec<u8>, Vec<u8>)> {
        let Some(m) = self.maps.get(slot).filter(|m| m.kind == GpuMapKind::Hash) else { return vec![] };
        let values = desc::KEY_OFF as usize + round8(m.spec.key_size as u64) as usize;
        (0..m.capacity as usize)
            .filter_map(|i| {
                let e = table.get(i * m.entry_size as usize..(i + 1) * m.entry_size as usize)?;
                if u32::from_le_bytes(e[..4].try_into().ok()?) != HASH_FULL {
                    return None;
                }
                let k = desc::KEY_OFF as usize;
                Some((e.get(k..k + m.spec.key_size as usize)?.to_vec(), e.get(values..values + m.spec.value_size as usize)?.to_vec()))
            })
            .collect()
    }

    /// The keys of the deleted entries of hash map `slot` in an arena image whose slot bytes
    /// `keep` says to read (deleted since a previous copy, say); none for other maps.
    pub fn deleted_where(&self, arena: &[u8], slot: usize, keep: &dyn Fn(std::ops::Range<usize>) -> bool) -> Vec<Vec<u8>> {
        let Some(m) = self.maps.get(slot).filter(|m| m.kind == GpuMapKind::Hash) else { return vec![] };
        (0..m.capacity as u64)
            .filter_map(|i| {
                let e = (m.data_off + i * m.entry_size as u64) as usize;
                let state = u32::from_le_bytes(arena.get(e..e + 4)?.try_into().ok()?);
                if state != HASH_DELETED || !keep(e..e + m.entry_size as usize) {
                    return None;
                }
                let k = e + desc::KEY_OFF as usize;
                Some(arena.get(k..k + m.spec.key_size as usize)?.to_vec())
            })
            .collect()
    }

    /// The records of ring map `slot` in an arena image: (source: 0, or the SM of a perf
    /// record, bytes), and how many were dropped.
    pub fn records(&self, arena: &[u8], slot: usize) -> (Vec<(u32, Vec<u8>)>, u64) {
        let Some(m) = self.maps.get(slot) else { return (vec![], 0) };
        let d = descriptor_offset(slot as u32);
        let u64_at = |o: u64| arena.get(o as usize..o as usize + 8).map(|b| u64::from_le_bytes(b.try_into().expect("8 bytes"))).unwrap_or(0);
        let head = u64_at(d + desc::HEAD).min(m.data_len);
        let mut lost = u64_at(d + desc::LOST);
        if let Some((cursors, len)) = self.ring_cursors(slot) {
            lost += (cursors..cursors + len).step_by(CURSOR_STRIDE as usize).map(|c| u64_at(c + 8)).sum::<u64>();
        }
        let chunk = m.capacity as u64;
        let mut out = vec![];
        let mut at = 0;
        while at + 8 <= head {
            let hdr = u64_at(m.data_off + at);
            // Every record's header has [`RECORD_WRITTEN`]: none where a reservation that did
            // not fit left the tail unwritten, or where an SM's chunk was not used to its end
            // (the next record is at the next chunk).
            if hdr & RECORD_WRITTEN == 0 {
                if chunk == 0 {
                    break;
                }
                at = (at / chunk + 1) * chunk;
                continue;
            }
            let len = hdr & 0xffff_ffff;
            let start = (m.data_off + at + 8) as usize;
            let Some(bytes) = arena.get(start..start + len as usize) else { break };
            out.push((((hdr & !RECORD_WRITTEN) >> 32) as u32, bytes.to_vec()));
            at += 8 + round8(len);
        }
        (out, lost)
    }

    /// The records of the trace ring in an arena image (none without one), and how many were
    /// dropped.
    pub fn trace_records(&self, arena: &[u8]) -> (Vec<TraceRecord>, u64) {
        let Some(slot) = self.trace_slot else { return (vec![], 0) };
        let (records, lost) = self.records(arena, slot);
        let word = |r: &[u8], at: usize| u64::from_le_bytes(r[at..at + 8].try_into().expect("8 bytes"));
        let records = records
            .into_iter()
            .filter(|(_, r)| r.len() >= 40)
            .map(|(sm, r)| {
                let head = word(&r, 0);
                let n = ((head & 0xffff_ffff) as usize).min(r.len() - 40);
                let text = &r[40..40 + n];
                let text = text[..text.iter().position(|&b| b == 0).unwrap_or(n)].to_vec();
                let kind = if head >> 32 == 1 { TraceKind::Puts } else { TraceKind::Printk };
                TraceRecord { sm, kind, args: [word(&r, 8), word(&r, 16), word(&r, 24)], arena_addr: word(&r, 32), text }
            })
            .collect();
        (records, lost)
    }
}
