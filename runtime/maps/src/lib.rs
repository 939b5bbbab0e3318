//! # bpftime-maps: eBPF maps in shared memory, with kernel semantics
//!
//! What it is: every map type a tracing program uses — ARRAY, HASH, the PERCPU and LRU
//! variants, RINGBUF (kernel record layout), PERF_EVENT_ARRAY, PROG_ARRAY, QUEUE, STACK,
//! BLOOM_FILTER, LPM_TRIE, ARRAY_OF_MAPS, HASH_OF_MAPS and STACK_TRACE — stored in a
//! [`ShmRegion`] so that every process mapping the region sees the same maps. Operations follow
//! the kernel's bpf() semantics: flags (`BPF_ANY`, `BPF_NOEXIST`, `BPF_EXIST`), errnos, and
//! `get_next_key` iteration.
//!
//! Two sides: the *syscall side* copies keys and values in and out (what `bpf()` does for a
//! loader or the CLI; per-CPU values are one slot per possible CPU); the *program side*
//! ([`Map::lookup_ptr`] and friends) returns pointers into the region for helpers.
//!
//! Concurrency: lookups are lock-free; writers take the map's [`bpftime_shm::ShmLock`], which a
//! process killed mid-update cannot wedge: the next writer takes it over and repairs the map
//! (hash maps rebuild their free list and count from the bucket chains).
//!
//! What it is not: it knows nothing of programs or helpers (`bpftime-runtime` does).

mod array;
mod bloom;
pub mod errno;
mod hash;
mod lpm;
mod perf;
mod queue;
mod ringbuf;
mod stack_trace;
pub use stack_trace::{BPF_F_STACK_BUILD_ID, BUILD_ID_FRAME};

pub use errno::Errno;

/// A PROG_ARRAY entry with this bit names a program of the kernel by its kernel id (the rest
/// of the entry), not a program of the region: bpftime's userspace-to-kernel tail call.
pub const KERNEL_PROGRAM: u32 = 1 << 31;
pub use perf::{PerfRecord, MAX_RING_PAGES};
pub use ringbuf::{RingbufRecord, RINGBUF_BUSY_BIT, RINGBUF_DISCARD_BIT, RINGBUF_HDR_SZ};

use bpftime_shm::{process_alive, ObjectKind, ShmError, ShmLock, ShmRegion};
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};

/// `BPF_ANY`: create or update.
pub const BPF_ANY: u64 = 0;
/// `BPF_NOEXIST`: create only.
pub const BPF_NOEXIST: u64 = 1;
/// `BPF_EXIST`: update only.
pub const BPF_EXIST: u64 = 2;
/// `BPF_F_LOCK`: update under the value's spin lock (refused with EINVAL: no value here has a `bpf_spin_lock`).
pub const BPF_F_LOCK: u64 = 4;

/// Refuses update flags other than `BPF_ANY`, `BPF_NOEXIST` and `BPF_EXIST` with EINVAL
/// (`BPF_F_LOCK` needs a `bpf_spin_lock` in the value; none of ours has one).
pub(crate) fn check_update_flags(flags: u64) -> Result<(), Errno> {
    if flags > BPF_EXIST {
        return Err(Errno::EINVAL);
    }
    Ok(())
}
/// `BPF_F_NO_PREALLOC` map flag.
pub const BPF_F_NO_PREALLOC: u32 = 1;
/// `BPF_F_RDONLY_PROG` map flag (set on `.rodata` maps).
pub const BPF_F_RDONLY_PROG: u32 = 1 << 7;

/// Map types, with the kernel's `enum bpf_map_type` numbers.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(u32)]
pub enum MapType {
    Hash = 1,
    Array = 2,
    ProgArray = 3,
    PerfEventArray = 4,
    PercpuHash = 5,
    PercpuArray = 6,
    StackTrace = 7,
    /// Cgroups by index (`bpf_current_task_under_cgroup`); values as the loader wrote them.
    CgroupArray = 8,
    LruHash = 9,
    LruPercpuHash = 10,
    LpmTrie = 11,
    ArrayOfMaps = 12,
    HashOfMaps = 13,
    Queue = 22,
    Stack = 23,
    Ringbuf = 27,
    BloomFilter = 30,
}

impl MapType {
    /// The type with kernel number `n`.
    pub fn from_u32(n: u32) -> Option<MapType> {
        use MapType::*;
        Some(match n {
            1 => Hash,
            2 => Array,
            3 => ProgArray,
            4 => PerfEventArray,
            5 => PercpuHash,
            6 => PercpuArray,
            7 => StackTrace,
            8 => CgroupArray,
            9 => LruHash,
            10 => LruPercpuHash,
            11 => LpmTrie,
            12 => ArrayOfMaps,
            13 => HashOfMaps,
            22 => Queue,
            23 => Stack,
            27 => Ringbuf,
            30 => BloomFilter,
            _ => return None,
        })
    }

    /// The kernel's name (`BPF_MAP_TYPE_` stripped, lower case).
    pub fn name(self) -> &'static str {
        use MapType::*;
        match self {
            Hash => "hash",
            Array => "array",
            ProgArray => "prog_array",
            PerfEventArray => "perf_event_array",
            PercpuHash => "percpu_hash",
            PercpuArray => "percpu_array",
            StackTrace => "stack_trace",
            CgroupArray => "cgroup_array",
            LruHash => "lru_hash",
            LruPercpuHash => "lru_percpu_hash",
            LpmTrie => "lpm_trie",
            ArrayOfMaps => "array_of_maps",
            HashOfMaps => "hash_of_maps",
            Queue => "queue",
            Stack => "stack",
            Ringbuf => "ringbuf",
            BloomFilter => "bloom_filter",
        }
    }

    /// Whether values are one slot per possible CPU.
    pub fn is_percpu(self) -> bool {
        matches!(self, MapType::PercpuHash | MapType::PercpuArray | MapType::LruPercpuHash)
    }

    fn is_hash_like(self) -> bool {
        matches!(self, MapType::Hash | MapType::PercpuHash | MapType::LruHash | MapType::LruPercpuHash | MapType::HashOfMaps)
    }

    fn is_array_like(self) -> bool {
        matches!(self, MapType::Array | MapType::PercpuArray | MapType::ProgArray | MapType::ArrayOfMaps | MapType::CgroupArray)
    }
}

/// What a map is created with (the attributes of `BPF_MAP_CREATE`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MapSpec {
    /// Type.
    pub map_type: MapType,
    /// Key size in bytes.
    pub key_size: u32,
    /// Value size in bytes (for map-in-map and prog arrays: 4, an id).
    pub value_size: u32,
    /// Capacity (for RINGBUF: data size in bytes).
    pub max_entries: u32,
    /// `map_flags`.
    pub flags: u32,
    /// `map_extra` (bloom filter: number of hash functions in the low 4 bits).
    pub map_extra: u64,
    /// For ARRAY_OF_MAPS / HASH_OF_MAPS: id of the map whose shape inner maps must have.
    pub inner_map_id: u32,
}

impl MapSpec {
    /// A spec with no flags.
    pub fn new(map_type: MapType, key_size: u32, value_size: u32, max_entries: u32) -> Self {
        MapSpec { map_type, key_size, value_size, max_entries, flags: 0, map_extra: 0, inner_map_id: 0 }
    }
}

/// Why a map could not be created or opened.
#[derive(Debug, thiserror::Error)]
pub enum MapError {
    #[error("invalid map attributes: {0}")]
    Invalid(String),
    #[error("unsupported map type {0}")]
    UnsupportedType(u32),
    /// Attributes the kernel answers `ENOTSUPP` for.
    #[error("map attributes not supported: {0}")]
    NotSupported(String),
    #[error(transparent)]
    Shm(#[from] ShmError),
    #[error("no map with id {0}")]
    NoSuchMap(u32),
    #[error("object {0} is not a valid map (corrupt descriptor)")]
    Corrupt(u32),
}

/// `BPF_F_MMAPABLE`: an array whose values a process may `mmap`.
pub const BPF_F_MMAPABLE: u32 = 1 << 10;
const PAGE: u64 = 4096;

const DESC_MAGIC: u64 = 0x6270_665f_6d61_7031; // "bpf_map1"

/// The descriptor of a map in the region. Fields other than the atomics and the lock are
/// written once at creation; a handle copies and validates them when it opens the map.
#[repr(C)]
pub(crate) struct MapDesc {
    magic: u64,
    map_type: u32,
    key_size: u32,
    value_size: u32,
    max_entries: u32,
    flags: u32,
    ncpus: u32,
    map_extra: u64,
    inner: [u32; 6],
    pub lock: ShmLock,
    pub count: AtomicU64,
    data: u64,
    data_len: u64,
    aux: u64,
    aux_len: u64,
    elem_size: u64,
    pub head: AtomicU64,
    pub tail: AtomicU64,
    pub hand: AtomicU64,
    pub lost: AtomicU64,
    /// See [`MapBtf`]: the BTF object, the key's type, the value's type.
    btf: [AtomicU32; 3],
    /// The loader that created it (see [`Map::set_creator`]).
    creator: AtomicU32,
    /// Processes other than its creator's loader that opened it (see [`Map::add_holder`]):
    /// their pids, 0 for a free slot, `u32::MAX` once more than fit have.
    holders: [AtomicU32; MAP_HOLDERS],
    /// 1 once `BPF_MAP_FREEZE` made it read-only to system calls (see [`Map::freeze`]).
    frozen: AtomicU32,
    /// What each CPU counts of the map on its own, a cache line per shard (CPU `c` uses shard
    /// `c % SHARDS`; shard `i` starts at word `SHARD_STRIDE * (i + 1)`), so that no two shards,
    /// nor a shard and the fields above, share a line: two CPUs updating one map would
    /// otherwise take turns at it (4x the time of one CPU). Words of a shard: [`WRITES`],
    /// [`CREDITS`].
    shards: [AtomicU64; SHARD_STRIDE * (SHARDS + 1)],
}

/// How many shards [`MapDesc::shards`] has.
const SHARDS: usize = 8;
/// Words from one shard to the next: a cache line.
const SHARD_STRIDE: usize = 8;
/// A shard's count of updates and deletes, by system calls and programs, not by copies written
/// back (see [`Map::host_writes`]).
const WRITES: usize = 0;
/// A shard's entries of a hash map's budget taken from `count` and not used (see
/// [`Map::take_entry`]).
const CREDITS: usize = 1;
/// Entries a shard takes from a hash map's budget at once, and keeps at most twice over.
const CREDIT_BATCH: u64 = 16;

/// [`MapDesc::creator`] once its loader let go while others held the map.
const CREATOR_RELEASED: u32 = u32::MAX;
/// [`MapDesc::creator`] once one process is removing the map.
const CREATOR_REMOVING: u32 = u32::MAX - 1;

/// How many other processes a map's descriptor names as its holders.
const MAP_HOLDERS: usize = 8;

/// Where a map's key and value types are described (`btf_fd`, `btf_key_type_id` and
/// `btf_value_type_id` of `BPF_MAP_CREATE`): a BTF object of the region and two type ids in
/// it; all 0 for a map created without.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct MapBtf {
    /// The region's object id of the BTF.
    pub object: u32,
    /// The key's type id (0: none given).
    pub key_type: u32,
    /// The value's type id.
    pub value_type: u32,
}

/// Where a map's storage lives (offsets into the region), copied out of the descriptor.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct Layout {
    pub data: u64,
    pub data_len: u64,
    pub aux: u64,
    pub aux_len: u64,
    pub elem_size: u64,
    /// Elements in `data` (`data_len / elem_size`, kept to avoid dividing on hot paths).
    pub elem_count: u64,
}

impl Layout {
    /// The layout with `elem_count` computed from the sizes.
    fn counted(self) -> Layout {
        Layout { elem_count: self.data_len.checked_div(self.elem_size).unwrap_or(0), ..self }
    }
}

/// The key [`Map::for_each_elem`] hands over: an array's index, or the address of a hash
/// element's key in the region.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ElemKey {
    /// An array's index (the key has no address of its own).
    Index(u32),
    /// The address of the key's bytes in the region.
    At(u64),
}

/// Number of possible CPUs (like libbpf's `libbpf_num_possible_cpus`).
pub fn possible_cpus() -> u32 {
    static N: OnceLock<u32> = OnceLock::new();
    *N.get_or_init(|| {
        let text = std::fs::read_to_string("/sys/devices/system/cpu/possible").unwrap_or_default();
        let mut max = 0u32;
        for part in text.trim().split(',') {
            let last = part.rsplit('-').next().unwrap_or("0");
            max = max.max(last.trim().parse::<u32>().unwrap_or(0));
        }
        max + 1
    })
}

bpftime_tls::initial_exec! {
    /// The CPU this thread's program run is fixed on, plus one (see [`pin_cpu`]); 0: none.
    static RUN_CPU: std::cell::Cell<u32> as "bpftime_maps_run_cpu";
}

/// Unfixes this thread's CPU: the run that fixed it was left for good (a signal handler's
/// `siglongjmp` out of it) and its pin will never drop. The run slot it held is taken over by
/// a waiter once stuck (see `bpftime_shm::lock::STUCK_AFTER`).
pub fn forget_abandoned_pin() {
    RUN_CPU.set(0);
}

/// Keeps [`current_cpu`] fixed for this thread while it lives, holding that CPU's run slot
/// (see [`pin_cpu`]).
#[must_use]
pub struct CpuPin<'a> {
    /// Whether this pin fixed the thread's [`RUN_CPU`] (the outermost run: unset again on
    /// drop); false for a nested run, which keeps its outer run's CPU.
    fixed: bool,
    /// Keeps the pin on its thread (`!Send`): it unfixes that thread's CPU.
    _on_this_thread: std::marker::PhantomData<*const ()>,
    slot: Option<bpftime_shm::ShmGuard<'a>>,
}

impl Drop for CpuPin<'_> {
    fn drop(&mut self) {
        // The slot first: a run in a signal handler arriving in between finds the CPU still
        // fixed, and takes no slot of its own.
        drop(self.slot.take());
        if self.fixed {
            RUN_CPU.set(0);
        }
    }
}

/// Fixes the CPU that [`current_cpu`] reports on this thread until the guard drops, and holds
/// that CPU's run slot meanwhile: the kernel runs a probe's program on one CPU with preemption
/// disabled, so a per-CPU value it looks up and then writes back (bpftrace's `count()`) is
/// that CPU's, and no other run on the CPU comes in between. Here a thread can be preempted,
/// or moved, in the middle of its run, and another thread run the program on the same CPU:
/// the slot keeps them apart (in every process sharing `slots`). The scheduler's CPU is taken
/// when its slot is free, else any free CPU's (its holder was preempted), else the run waits
/// for its own. A nested run (a tail call, a probe in a signal handler) keeps the outer run's
/// CPU, as an interrupt on that CPU would.
pub fn pin_cpu(slots: &[bpftime_shm::RunSlot]) -> CpuPin<'_> {
    if RUN_CPU.get() != 0 {
        return CpuPin { fixed: false, slot: None, _on_this_thread: std::marker::PhantomData };
    }
    let here = scheduled_cpu();
    // Fixed before any slot is taken: a run in a signal handler arriving meanwhile keeps this
    // CPU (as a nested run does) instead of waiting for a slot its own thread holds.
    RUN_CPU.set(here + 1);
    let n = (possible_cpus() as usize).min(slots.len());
    let (cpu, slot) = if (here as usize) < n {
        // The scheduler's CPU first, then the next ones round.
        let mut free = None;
        for i in 0..n {
            let c = if here as usize + i < n { here as usize + i } else { here as usize + i - n };
            if let Some(g) = slots[c].lock.try_lock_uncounted() {
                free = Some((c as u32, g));
                break;
            }
        }
        match free {
            Some((c, g)) => (c, Some(g)),
            None => (here, Some(slots[here as usize].lock.lock_uncounted())),
        }
    } else {
        (here, None)
    };
    RUN_CPU.set(cpu + 1);
    CpuPin { fixed: true, slot, _on_this_thread: std::marker::PhantomData }
}

/// The CPU this thread runs on, or the one its program run is fixed on (see [`pin_cpu`]).
pub fn current_cpu() -> u32 {
    match RUN_CPU.get() {
        0 => scheduled_cpu(),
        fixed => fixed - 1,
    }
}

/// The CPU the scheduler runs this thread on now.
fn scheduled_cpu() -> u32 {
    // SAFETY: sched_getcpu has no preconditions (sched_getcpu(3)).
    let c = unsafe { libc::sched_getcpu() };
    let n = possible_cpus();
    match c {
        c if c < 0 => 0,
        c if (c as u32) < n => c as u32,
        // Not expected (the kernel numbers CPUs below the possible count); no division on
        // the usual path.
        c => c as u32 % n,
    }
}

pub(crate) fn round8(n: u64) -> u64 {
    n.div_ceil(8) * 8
}

pub(crate) const CACHE_LINE: u64 = 64;

/// Bytes of one CPU's block of a per-CPU map's values (`elems` values `stride` apart): every
/// value of that CPU, in whole cache lines, so that CPUs writing their own values never share a
/// line (they would take turns at it: two threads counting into one per-CPU value cost 3x one
/// thread).
pub(crate) fn percpu_block(elems: u64, stride: u64) -> Option<u64> {
    elems.checked_mul(stride)?.checked_next_multiple_of(CACHE_LINE)
}

/// Where a map's values are when they are out of line (per-CPU arrays, hash maps): the slot of
/// value `i` (CPU `c`'s, in a per-CPU map) at region offset `first + c * block + i * slot`, the
/// value `lead` bytes into it. Fixed by the spec and layout, so computed once per handle.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct ValueBlocks {
    /// Region offset of the first (CPU 0's) block.
    pub first: u64,
    /// Bytes from one CPU's block to the next.
    pub block: u64,
    /// Bytes from one value's slot to the next.
    pub slot: u64,
    /// Bytes before the value in its slot.
    pub lead: u64,
}

impl ValueBlocks {
    /// Region offset of value `i`'s slot (CPU `cpu`'s).
    #[inline]
    pub fn slot_at(&self, i: u64, cpu: u32) -> u64 {
        self.first + cpu as u64 * self.block + i * self.slot
    }

    /// Region offset of value `i` (CPU `cpu`'s).
    #[inline]
    pub fn value_at(&self, i: u64, cpu: u32) -> u64 {
        self.slot_at(i, cpu) + self.lead
    }
}

/// See [`Map::value_blocks`] (for a layout that `Map::storage_sizes` accepted for `spec`).
fn value_blocks_of(spec: &MapSpec, layout: &Layout) -> ValueBlocks {
    use MapType::*;
    match spec.map_type {
        PercpuArray => array::percpu_blocks(spec, layout),
        Hash | PercpuHash | LruHash | LruPercpuHash | HashOfMaps => hash::value_blocks(spec, layout),
        _ => ValueBlocks::default(),
    }
}

/// An open map: a process-local handle on a map in a region.
#[derive(Clone)]
pub struct Map {
    region: Arc<ShmRegion>,
    desc: u64,
    id: u32,
    name: String,
    spec: MapSpec,
    inner_spec: Option<MapSpec>,
    ncpus: u32,
    layout: Layout,
    /// Address of `layout.data` in this process (arrays' values start there).
    data_addr: u64,
    /// Per-CPU arrays and hash maps: where values are; zeroes for other maps.
    value_blocks: ValueBlocks,
}

impl std::fmt::Debug for Map {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Map").field("id", &self.id).field("name", &self.name).field("spec", &self.spec).finish()
    }
}

fn invalid(msg: impl Into<String>) -> MapError {
    MapError::Invalid(msg.into())
}

/// Map flags (uapi `BPF_F_*`) that `validate` knows.
mod flags {
    pub const NO_PREALLOC: u32 = 1;
    pub const NO_COMMON_LRU: u32 = 1 << 1;
    pub const NUMA_NODE: u32 = 1 << 2;
    pub const RDONLY: u32 = 1 << 3;
    pub const WRONLY: u32 = 1 << 4;
    pub const STACK_BUILD_ID: u32 = 1 << 5;
    pub const ZERO_SEED: u32 = 1 << 6;
    pub const RDONLY_PROG: u32 = 1 << 7;
    pub const WRONLY_PROG: u32 = 1 << 8;
    pub const MMAPABLE: u32 = 1 << 10;
    pub const PRESERVE_ELEMS: u32 = 1 << 11;
    pub const INNER_MAP: u32 = 1 << 12;
    /// Who may read and write: the syscall side, programs.
    pub const ACCESS: u32 = RDONLY | WRONLY | RDONLY_PROG | WRONLY_PROG;
}

/// The flags the kernel's `BPF_MAP_CREATE` takes for `map_type` (its `*_CREATE_FLAG_MASK`s).
fn allowed_flags(map_type: MapType) -> u32 {
    use flags::*;
    use MapType::*;
    match map_type {
        Hash | PercpuHash | LruHash | LruPercpuHash | HashOfMaps => NO_PREALLOC | NO_COMMON_LRU | NUMA_NODE | ACCESS | ZERO_SEED,
        Array | PercpuArray | ProgArray | PerfEventArray | CgroupArray | ArrayOfMaps => NUMA_NODE | MMAPABLE | ACCESS | PRESERVE_ELEMS | INNER_MAP,
        Queue | Stack => NUMA_NODE | ACCESS,
        BloomFilter => NUMA_NODE | ZERO_SEED | ACCESS,
        LpmTrie => NO_PREALLOC | NUMA_NODE | ACCESS,
        StackTrace => NUMA_NODE | RDONLY | WRONLY | STACK_BUILD_ID,
        Ringbuf => NUMA_NODE,
    }
}

/// Checks `spec.flags` as the kernel's map types do.
fn validate_flags(s: &MapSpec) -> Result<(), MapError> {
    use flags::*;
    use MapType::*;
    let f = s.flags;
    let unknown = f & !allowed_flags(s.map_type);
    if unknown != 0 {
        return Err(invalid(format!("{} does not take flags {unknown:#x}", s.map_type.name())));
    }
    if f & (RDONLY | WRONLY) == RDONLY | WRONLY || f & (RDONLY_PROG | WRONLY_PROG) == RDONLY_PROG | WRONLY_PROG {
        return Err(invalid("a map cannot be both read-only and write-only"));
    }
    let lru = matches!(s.map_type, LruHash | LruPercpuHash);
    if f & NO_COMMON_LRU != 0 && !lru {
        return Err(invalid("BPF_F_NO_COMMON_LRU is for LRU hashes"));
    }
    if f & NO_PREALLOC != 0 && lru {
        return Err(MapError::NotSupported("an LRU hash is always preallocated (BPF_F_NO_PREALLOC)".into()));
    }
    if f & NUMA_NODE != 0 && s.map_type.is_percpu() {
        return Err(invalid("a per-CPU map has no NUMA node (BPF_F_NUMA_NODE)"));
    }
    let holds_fds = matches!(s.map_type, ProgArray | PerfEventArray | CgroupArray | ArrayOfMaps);
    if holds_fds && f & (RDONLY_PROG | WRONLY_PROG) != 0 {
        return Err(invalid(format!("{} takes no program access flags", s.map_type.name())));
    }
    if f & INNER_MAP != 0 && !matches!(s.map_type, Array) {
        return Err(invalid("BPF_F_INNER_MAP is for arrays"));
    }
    if f & MMAPABLE != 0 && !matches!(s.map_type, Array) {
        return Err(invalid(format!("{} cannot be memory-mapped (BPF_F_MMAPABLE)", s.map_type.name())));
    }
    if f & PRESERVE_ELEMS != 0 && s.map_type != PerfEventArray {
        return Err(invalid("BPF_F_PRESERVE_ELEMS is for perf event arrays"));
    }
    Ok(())
}

/// Checks attributes the way `BPF_MAP_CREATE` does.
fn validate(spec: &MapSpec) -> Result<(), MapError> {
    use MapType::*;
    let s = spec;
    if s.max_entries == 0 && s.map_type != PerfEventArray {
        return Err(invalid("max_entries must be positive"));
    }
    validate_flags(s)?;
    match s.map_type {
        Array | PercpuArray | ProgArray | ArrayOfMaps | PerfEventArray | CgroupArray => {
            if s.key_size != 4 {
                return Err(invalid(format!("{} needs key_size 4, got {}", s.map_type.name(), s.key_size)));
            }
        }
        Queue | Stack | BloomFilter | Ringbuf => {
            if s.key_size != 0 {
                return Err(invalid(format!("{} needs key_size 0, got {}", s.map_type.name(), s.key_size)));
            }
        }
        StackTrace => {
            if s.key_size != 4 || s.value_size < 8 || !s.value_size.is_multiple_of(8) {
                return Err(invalid("stack_trace needs key_size 4 and a value size that is a multiple of 8"));
            }
            if s.flags & stack_trace::BPF_F_STACK_BUILD_ID != 0 && !s.value_size.is_multiple_of(stack_trace::BUILD_ID_FRAME as u32) {
                return Err(invalid("a stack_trace map with BPF_F_STACK_BUILD_ID needs a value size that is a multiple of 32"));
            }
        }
        LpmTrie => {
            if s.key_size <= 4 || s.key_size > 4 + 256 {
                return Err(invalid("lpm_trie needs key_size 5..=260 (u32 prefix length + data)"));
            }
            if s.flags & BPF_F_NO_PREALLOC == 0 {
                return Err(invalid("lpm_trie needs BPF_F_NO_PREALLOC"));
            }
        }
        _ => {
            if s.key_size == 0 {
                return Err(invalid(format!("{} needs a positive key_size", s.map_type.name())));
            }
        }
    }
    match s.map_type {
        ProgArray | ArrayOfMaps | HashOfMaps | PerfEventArray | CgroupArray => {
            if s.value_size != 4 {
                return Err(invalid(format!("{} needs value_size 4", s.map_type.name())));
            }
        }
        Ringbuf => {
            if s.value_size != 0 {
                return Err(invalid("ringbuf needs value_size 0"));
            }
            if !s.max_entries.is_power_of_two() || !s.max_entries.is_multiple_of(4096) {
                return Err(invalid("ringbuf size must be a power of two and a multiple of the page size"));
            }
        }
        _ => {
            if s.value_size == 0 {
                return Err(invalid("value_size must be positive"));
            }
        }
    }
    // The kernel's limit on values is KMALLOC_MAX_SIZE (4 MiB on x86-64).
    if s.key_size > 512 || s.value_size > (4 << 20) {
        return Err(invalid("key or value too large"));
    }
    Ok(())
}

impl Map {
    /// Creates a map in `region` and registers it in the object table.
    pub fn create(region: &Arc<ShmRegion>, name: &str, spec: &MapSpec) -> Result<Map, MapError> {
        validate(spec)?;
        let mut spec = spec.clone();
        let inner_spec = if matches!(spec.map_type, MapType::ArrayOfMaps | MapType::HashOfMaps) {
            if spec.inner_map_id == 0 {
                return Err(invalid("map-in-map needs an inner map template (inner_map_fd)"));
            }
            Some(Map::open(region, spec.inner_map_id)?.spec.clone())
        } else {
            None
        };
        if spec.map_type == MapType::PerfEventArray && spec.max_entries == 0 {
            spec.max_entries = possible_cpus();
        }
        let ncpus = if spec.map_type.is_percpu() || spec.map_type == MapType::PerfEventArray { possible_cpus() } else { 1 };
        let desc = region.alloc(std::mem::size_of::<MapDesc>() as u64)?;
        let layout = match Self::alloc_storage(region, &spec, ncpus) {
            Ok(l) => l,
            Err(e) => {
                region.free(desc);
                return Err(e);
            }
        };
        let d = region.ptr(desc, std::mem::size_of::<MapDesc>() as u64).expect("fresh allocation") as *mut MapDesc;
        let inner = inner_spec.as_ref().map(|i| [i.map_type as u32, i.key_size, i.value_size, i.max_entries, i.flags, 0]);
        // SAFETY: `d` is a fresh, zeroed, 16-aligned allocation of MapDesc size that no other
        // process knows of until the object is registered below.
        unsafe {
            (*d).map_type = spec.map_type as u32;
            (*d).key_size = spec.key_size;
            (*d).value_size = spec.value_size;
            (*d).max_entries = spec.max_entries;
            (*d).flags = spec.flags;
            (*d).ncpus = ncpus;
            (*d).map_extra = spec.map_extra;
            (*d).inner = inner.unwrap_or_default();
            (*d).data = layout.data;
            (*d).data_len = layout.data_len;
            (*d).aux = layout.aux;
            (*d).aux_len = layout.aux_len;
            (*d).elem_size = layout.elem_size;
            std::sync::atomic::fence(Ordering::Release);
            (*d).magic = DESC_MAGIC;
        }
        let layout = layout.counted();
        let data_addr = region.base() as u64 + layout.data;
        let value_blocks = value_blocks_of(&spec, &layout);
        let map = Map { region: region.clone(), desc, id: 0, name: name.to_string(), spec, inner_spec, ncpus, layout, data_addr, value_blocks };
        map.init_storage();
        let id = region.add_object(ObjectKind::Map, name, desc)?;
        Ok(Map { id, ..map })
    }

    /// The sizes (`data_len`, `aux_len`, `elem_size`; offsets 0) of the storage of a map of
    /// `spec` over `ncpus` CPUs: what a descriptor read from the region must say.
    fn storage_sizes(spec: &MapSpec, ncpus: u32) -> Option<Layout> {
        use MapType::*;
        let value = round8(spec.value_size as u64);
        let n = spec.max_entries as u64;
        let cpus = ncpus as u64;
        match spec.map_type {
            // Per-CPU: one block per CPU, from the first cache line boundary (see
            // `array::percpu_blocks`; the storage is 8-aligned, as opening checks).
            PercpuArray => {
                Some(Layout { data_len: percpu_block(n, value)?.checked_mul(cpus)?.checked_add(CACHE_LINE)?, elem_size: value, ..Layout::default() })
            }
            Array | ProgArray | ArrayOfMaps | CgroupArray => Some(Layout { data_len: value.checked_mul(n)?, elem_size: value, ..Layout::default() }),
            Hash | PercpuHash | LruHash | LruPercpuHash | HashOfMaps => hash::sizes(spec, cpus),
            LpmTrie => lpm::sizes(spec),
            Queue | Stack => Some(Layout { data_len: value.checked_mul(n + 1)?, elem_size: value, ..Layout::default() }),
            BloomFilter => bloom::sizes(spec),
            Ringbuf => ringbuf::sizes(spec),
            PerfEventArray => perf::sizes(cpus),
            StackTrace => stack_trace::sizes(spec),
        }
    }

    fn alloc_storage(region: &ShmRegion, spec: &MapSpec, ncpus: u32) -> Result<Layout, MapError> {
        use MapType::*;
        let cpus = ncpus as u64;
        let sizes = Self::storage_sizes(spec, ncpus).ok_or_else(|| invalid("map too large"))?;
        let layout = match spec.map_type {
            // BPF_F_MMAPABLE: whole pages, so that a loader can map the values (libbpf's
            // skeletons map global data this way).
            Array if spec.flags & BPF_F_MMAPABLE != 0 => Layout { data: region.alloc_pages(sizes.data_len.max(1).div_ceil(PAGE) * PAGE)?, ..sizes },
            Array | PercpuArray | ProgArray | ArrayOfMaps | CgroupArray | Queue | Stack => Layout { data: region.alloc(sizes.data_len)?, ..sizes },
            Hash | PercpuHash | LruHash | LruPercpuHash | HashOfMaps => hash::alloc(region, spec, cpus)?,
            LpmTrie => lpm::alloc(region, spec)?,
            BloomFilter => bloom::alloc(region, spec)?,
            Ringbuf => ringbuf::alloc(region, spec)?,
            PerfEventArray => perf::alloc(region, spec, cpus)?,
            StackTrace => stack_trace::alloc(region, spec)?,
        };
        Ok(layout)
    }

    fn init_storage(&self) {
        if self.spec.map_type.is_hash_like() {
            hash::init(self);
        }
    }

    /// Opens the map with object id `id`.
    pub fn open(region: &Arc<ShmRegion>, id: u32) -> Result<Map, MapError> {
        let obj = region.object(id).filter(|o| o.kind == ObjectKind::Map).ok_or(MapError::NoSuchMap(id))?;
        Self::open_at(region, id, &obj.name, obj.data)
    }

    fn open_at(region: &Arc<ShmRegion>, id: u32, name: &str, desc: u64) -> Result<Map, MapError> {
        let corrupt = || MapError::Corrupt(id);
        let p = region.ptr(desc, std::mem::size_of::<MapDesc>() as u64).ok_or_else(corrupt)?;
        if !desc.is_multiple_of(8) {
            return Err(corrupt());
        }
        let d = p as *const MapDesc;
        // SAFETY: inside the region and aligned; the immutable fields are plain integers, read
        // once here and validated before use.
        let (magic, spec, ncpus, layout, inner) = unsafe {
            (
                std::ptr::read_volatile(&(*d).magic),
                MapSpec {
                    map_type: MapType::from_u32((*d).map_type).ok_or_else(corrupt)?,
                    key_size: (*d).key_size,
                    value_size: (*d).value_size,
                    max_entries: (*d).max_entries,
                    flags: (*d).flags,
                    map_extra: (*d).map_extra,
                    inner_map_id: 0,
                },
                (*d).ncpus,
                Layout { data: (*d).data, data_len: (*d).data_len, aux: (*d).aux, aux_len: (*d).aux_len, elem_size: (*d).elem_size, elem_count: 0 },
                (*d).inner,
            )
        };
        if magic != DESC_MAGIC || validate(&MapSpec { max_entries: spec.max_entries.max(1), ..spec.clone() }).is_err() {
            return Err(corrupt());
        }
        if ncpus == 0 || ncpus > 1 << 16 {
            return Err(corrupt());
        }
        // The storage must have exactly the shape the spec implies (sizes, alignment), inside
        // the region: every later access trusts it.
        let want = Self::storage_sizes(&spec, ncpus).ok_or_else(corrupt)?;
        if (layout.data_len, layout.aux_len, layout.elem_size) != (want.data_len, want.aux_len, want.elem_size) {
            return Err(corrupt());
        }
        for (off, len) in [(layout.data, layout.data_len), (layout.aux, layout.aux_len)] {
            if len > 0 && (off % 8 != 0 || region.ptr(off, len).is_none()) {
                return Err(corrupt());
            }
        }
        if spec.map_type == MapType::PerfEventArray && layout.data % 4096 != 0 {
            return Err(corrupt());
        }
        if spec.map_type == MapType::Ringbuf && !ringbuf::shape_ok(&layout) {
            return Err(corrupt());
        }
        let layout = layout.counted();
        let inner_spec = match MapType::from_u32(inner[0]) {
            Some(t) if matches!(spec.map_type, MapType::ArrayOfMaps | MapType::HashOfMaps) => {
                Some(MapSpec { map_type: t, key_size: inner[1], value_size: inner[2], max_entries: inner[3], flags: inner[4], map_extra: 0, inner_map_id: 0 })
            }
            _ => None,
        };
        let data_addr = region.base() as u64 + layout.data;
        let value_blocks = value_blocks_of(&spec, &layout);
        Ok(Map { region: region.clone(), desc, id, name: name.to_string(), spec, inner_spec, ncpus, layout, data_addr, value_blocks })
    }

    /// Opens the map named `name` (the first one, if several share it).
    pub fn open_by_name(region: &Arc<ShmRegion>, name: &str) -> Result<Map, MapError> {
        let obj = region
            .objects()
            .into_iter()
            .find(|o| o.kind == ObjectKind::Map && o.name == name)
            .ok_or_else(|| MapError::Invalid(format!("no map named `{name}`")))?;
        Self::open_at(region, obj.id, &obj.name, obj.data)
    }

    /// Every map in the region.
    pub fn list(region: &Arc<ShmRegion>) -> Vec<Map> {
        region.objects_of_kind(ObjectKind::Map).into_iter().filter_map(|o| Self::open_at(region, o.id, &o.name, o.data).ok()).collect()
    }

    /// Removes the map from the region; its storage is freed after the region's grace period
    /// ([`ShmRegion::retire`]): a process running a program on it when its last holder let go
    /// finishes that run on memory nothing else uses. Use only when nothing holds the map.
    pub fn retire(self) {
        if self.region.remove_object(self.id).is_none() {
            return;
        }
        for off in [self.layout.data, self.layout.aux, self.desc] {
            if off != 0 {
                self.region.retire(off);
            }
        }
    }

    /// Object id in the region.
    pub fn id(&self) -> u32 {
        self.id
    }

    /// Name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Creation attributes.
    pub fn spec(&self) -> &MapSpec {
        &self.spec
    }

    /// Type.
    pub fn map_type(&self) -> MapType {
        self.spec.map_type
    }

    /// The region holding the map.
    pub fn region(&self) -> &Arc<ShmRegion> {
        &self.region
    }

    /// Number of per-CPU slots of a per-CPU map, or of possible CPUs for a perf event array
    /// (1 otherwise).
    pub fn ncpus(&self) -> u32 {
        self.ncpus
    }

    /// Bytes of a value as the syscall side sees it: per-CPU maps hold one 8-aligned slot per
    /// possible CPU.
    pub fn syscall_value_size(&self) -> usize {
        if self.spec.map_type.is_percpu() {
            round8(self.spec.value_size as u64) as usize * self.ncpus as usize
        } else {
            self.spec.value_size as usize
        }
    }

    /// Spec inner maps of a map-in-map must match.
    pub fn inner_spec(&self) -> Option<&MapSpec> {
        self.inner_spec.as_ref()
    }

    /// What `mmap` of this map's fd maps, as the kernel lays it out: (region offset, bytes).
    /// Arrays made with `BPF_F_MMAPABLE`: the values (whole pages); ring buffers: the consumer
    /// page, the producer page and the data. None for other maps.
    pub fn mmap_area(&self) -> Option<(u64, u64)> {
        let l = &self.layout;
        match self.spec.map_type {
            MapType::Array if self.spec.flags & BPF_F_MMAPABLE != 0 && l.data.is_multiple_of(PAGE) => Some((l.data, l.data_len.max(1).div_ceil(PAGE) * PAGE)),
            MapType::Ringbuf => Some((l.aux, l.aux_len + l.data_len)),
            _ => None,
        }
    }

    /// What `mmap` of the perf event bound to slot `cpu` of a PERF_EVENT_ARRAY maps: the
    /// ring's header page (`data_head`/`data_tail` where `perf_event_mmap_page` has them) and
    /// its data pages, as (region offset, bytes).
    pub fn perf_ring_area(&self, cpu: u32) -> Option<(u64, u64)> {
        (self.spec.map_type == MapType::PerfEventArray && cpu < self.ncpus)
            .then(|| (self.layout.data + cpu as u64 * self.layout.elem_size, self.layout.elem_size))
    }

    /// Sets the data size of the perf ring of slot `cpu` (a consumer mapping it chooses it, as
    /// with the kernel): a power of two from one page to [`MAX_RING_PAGES`] pages.
    pub fn set_perf_ring_size(&self, cpu: u32, bytes: u64) -> Result<(), Errno> {
        if self.spec.map_type != MapType::PerfEventArray {
            return Err(Errno::EINVAL);
        }
        perf::set_ring_size(self, cpu, bytes)
    }

    pub(crate) fn layout(&self) -> &Layout {
        &self.layout
    }

    pub(crate) fn desc(&self) -> &MapDesc {
        let p = self.region.ptr(self.desc, std::mem::size_of::<MapDesc>() as u64).expect("validated at open");
        // SAFETY: validated at open: inside the region, aligned; mutable fields are atomics.
        unsafe { &*(p as *const MapDesc) }
    }

    /// Takes the map's writer lock (tries, queues, rings and stack traces: one writer at a
    /// time; hash maps lock per bucket).
    pub(crate) fn write_lock(&self) -> bpftime_shm::ShmGuard<'_> {
        self.desc().lock.lock()
    }

    /// Number of elements (hash-like, queue, stack, lpm maps); max_entries for arrays.
    pub fn len(&self) -> u64 {
        if self.spec.map_type.is_array_like() {
            self.spec.max_entries as u64
        } else if self.spec.map_type.is_hash_like() {
            self.desc().count.load(Ordering::Relaxed).saturating_sub(self.shards_sum(CREDITS))
        } else {
            self.desc().count.load(Ordering::Relaxed)
        }
    }

    /// Whether [`Map::len`] is 0.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn check_key(&self, key: &[u8]) -> Result<(), Errno> {
        if key.len() != self.spec.key_size as usize {
            Err(Errno::EINVAL)
        } else {
            Ok(())
        }
    }

    fn check_value(&self, value: &[u8]) -> Result<(), Errno> {
        if value.len() != self.syscall_value_size() {
            Err(Errno::EINVAL)
        } else {
            Ok(())
        }
    }

    // ---- syscall side -------------------------------------------------------------------

    /// `BPF_MAP_LOOKUP_ELEM`: copies the value of `key` into `value`.
    pub fn lookup(&self, key: &[u8], value: &mut [u8]) -> Result<(), Errno> {
        use MapType::*;
        match self.spec.map_type {
            Queue | Stack => {
                self.check_value(value)?;
                return queue::peek(self, value);
            }
            BloomFilter => {
                self.check_value(value)?;
                return bloom::peek(self, value);
            }
            Ringbuf | PerfEventArray => return Err(Errno::ENOTSUPP),
            _ => {}
        }
        self.check_key(key)?;
        self.check_value(value)?;
        match self.spec.map_type {
            Array | PercpuArray | ProgArray | ArrayOfMaps | CgroupArray => array::lookup(self, key, value),
            Hash | PercpuHash | LruHash | LruPercpuHash | HashOfMaps => hash::lookup(self, key, value),
            LpmTrie => lpm::lookup(self, key, value),
            StackTrace => stack_trace::lookup(self, key, value),
            Queue | Stack | BloomFilter | Ringbuf | PerfEventArray => unreachable!(),
        }
    }

    /// How many updates and deletes system calls (loaders, the CLI) and programs' helper
    /// calls have made, so that a copy of the map elsewhere (on a GPU) knows cheaply when to
    /// look again. Values programs write through a looked-up pointer are not counted.
    pub fn host_writes(&self) -> u64 {
        self.shards_sum(WRITES)
    }

    /// `update` for a copy of this map elsewhere writing its entries back (a GPU's copy):
    /// not counted in [`Map::host_writes`], since that copy has them already.
    pub fn update_from_copy(&self, key: &[u8], value: &[u8], flags: u64) -> Result<(), Errno> {
        self.update_inner(key, value, flags)
    }

    /// `delete` for a copy of this map elsewhere (see [`Map::update_from_copy`]).
    pub fn delete_from_copy(&self, key: &[u8]) -> Result<(), Errno> {
        self.delete_inner(key)
    }

    /// Word `word` of shard `i` of [`MapDesc::shards`].
    fn shard(&self, i: usize, word: usize) -> &AtomicU64 {
        &self.desc().shards[SHARD_STRIDE * (1 + i) + word]
    }

    /// This CPU's word `word` of [`MapDesc::shards`].
    fn my_shard(&self, word: usize) -> &AtomicU64 {
        self.shard(current_cpu() as usize % SHARDS, word)
    }

    /// Word `word` summed over every shard.
    fn shards_sum(&self, word: usize) -> u64 {
        (0..SHARDS).map(|i| self.shard(i, word).load(Ordering::Acquire)).fold(0, u64::wrapping_add)
    }

    /// Counts a write in this CPU's shard.
    fn wrote(&self) {
        self.my_shard(WRITES).fetch_add(1, Ordering::AcqRel);
    }

    /// Takes one entry of a hash map's `max_entries` for a new key; false when the map is
    /// full. The budget is handed to CPUs in batches (`count` is what was handed out; each
    /// shard's [`CREDITS`], what it has not used), so that inserts and deletes on different
    /// CPUs touch lines of their own: a program that adds a key at a function's entry and
    /// deletes it at its return (the latency tools' pattern) took a locked add and a locked
    /// subtract on one word per call, which two CPUs took turns at. Exact: live entries are
    /// `count` less every shard's credits, and `count` never passes `max_entries`; once it
    /// is reached, credits other shards hold are taken.
    pub(crate) fn take_entry(&self) -> bool {
        let take_one = |credits: &AtomicU64| credits.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |have| have.checked_sub(1)).is_ok();
        let mine = self.my_shard(CREDITS);
        if take_one(mine) {
            return true;
        }
        let max = self.spec.max_entries as u64;
        // A batch only while the budget is far from spent: what is on its way to this shard is
        // in no shard meanwhile, and an insert elsewhere must not find the map full for it.
        let batch = |handed: u64| if max - handed > (SHARDS as u64 + 1) * CREDIT_BATCH { CREDIT_BATCH } else { 1 };
        if let Ok(handed) = self.desc().count.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |h| (h < max).then(|| h + batch(h))) {
            if batch(handed) > 1 {
                mine.fetch_add(batch(handed) - 1, Ordering::Relaxed);
            }
            return true;
        }
        // One at a time, so that no credit is ever in no shard. A credit given back to a shard
        // this scan has passed while one it has not reached is taken (keys deleted on one CPU
        // and inserted on another meanwhile) is missed: a few scans, not one.
        (0..4).any(|_| {
            (0..SHARDS).any(|i| take_one(self.shard(i, CREDITS)))
                || self.desc().count.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |h| (h < max).then_some(h + 1)).is_ok()
        })
    }

    /// Gives back an entry of a hash map's budget (a key deleted or evicted), to this CPU's
    /// credits; past twice a batch, a batch goes back to `count`.
    pub(crate) fn give_entry(&self) {
        let mine = self.my_shard(CREDITS);
        let have = mine.fetch_add(1, Ordering::Relaxed) + 1;
        if have > 2 * CREDIT_BATCH && mine.compare_exchange(have, have - CREDIT_BATCH, Ordering::Relaxed, Ordering::Relaxed).is_ok() {
            self.desc().count.fetch_sub(CREDIT_BATCH, Ordering::Relaxed);
        }
    }

    /// Sets a hash map's live entries to `live`, every shard's credits to none (nothing else
    /// may change the map meanwhile).
    pub(crate) fn reset_entries(&self, live: u64) {
        for i in 0..SHARDS {
            self.shard(i, CREDITS).store(0, Ordering::Relaxed);
        }
        self.desc().count.store(live, Ordering::Relaxed);
    }

    /// `BPF_MAP_UPDATE_ELEM`.
    pub fn update(&self, key: &[u8], value: &[u8], flags: u64) -> Result<(), Errno> {
        let r = self.update_inner(key, value, flags);
        self.wrote();
        r
    }

    fn update_inner(&self, key: &[u8], value: &[u8], flags: u64) -> Result<(), Errno> {
        use MapType::*;
        match self.spec.map_type {
            Queue | Stack => {
                self.check_value(value)?;
                return queue::push(self, value, flags);
            }
            BloomFilter => {
                self.check_value(value)?;
                return bloom::push(self, value, flags);
            }
            Ringbuf => return Err(Errno::ENOTSUPP),
            StackTrace => return Err(Errno::EINVAL),
            _ => {}
        }
        self.check_key(key)?;
        self.check_value(value)?;
        match self.spec.map_type {
            Array | PercpuArray | CgroupArray => array::update(self, key, value, flags),
            ProgArray | ArrayOfMaps | PerfEventArray => array::update_id(self, key, value, flags),
            Hash | PercpuHash | LruHash | LruPercpuHash | HashOfMaps => hash::update(self, key, value, flags),
            LpmTrie => lpm::update(self, key, value, flags),
            Queue | Stack | BloomFilter | Ringbuf | StackTrace => unreachable!(),
        }
    }

    /// `BPF_MAP_DELETE_ELEM`.
    pub fn delete(&self, key: &[u8]) -> Result<(), Errno> {
        let r = self.delete_inner(key);
        self.wrote();
        r
    }

    fn delete_inner(&self, key: &[u8]) -> Result<(), Errno> {
        use MapType::*;
        match self.spec.map_type {
            Queue | Stack => return Err(Errno::EINVAL),
            BloomFilter => return Err(Errno::EOPNOTSUPP),
            Ringbuf => return Err(Errno::ENOTSUPP),
            _ => {}
        }
        self.check_key(key)?;
        match self.spec.map_type {
            Array | PercpuArray => Err(Errno::EINVAL),
            CgroupArray => array::update(self, key, &[0; 4], BPF_ANY),
            ProgArray | ArrayOfMaps | PerfEventArray => array::delete_id(self, key),
            Hash | PercpuHash | LruHash | LruPercpuHash | HashOfMaps => hash::delete(self, key),
            LpmTrie => lpm::delete(self, key),
            StackTrace => stack_trace::delete(self, key),
            Queue | Stack | BloomFilter | Ringbuf => unreachable!(),
        }
    }

    /// `BPF_MAP_GET_NEXT_KEY`: the key after `key` (the first key when `key` is `None` or,
    /// for hash maps, not in the map); `ENOENT` after the last.
    pub fn next_key(&self, key: Option<&[u8]>, next: &mut [u8]) -> Result<(), Errno> {
        use MapType::*;
        match self.spec.map_type {
            Queue | Stack => return Err(Errno::EINVAL),
            BloomFilter => return Err(Errno::EOPNOTSUPP),
            Ringbuf => return Err(Errno::ENOTSUPP),
            _ => {}
        }
        if let Some(k) = key {
            self.check_key(k)?;
        }
        if next.len() != self.spec.key_size as usize {
            return Err(Errno::EINVAL);
        }
        match self.spec.map_type {
            Array | PercpuArray | ProgArray | ArrayOfMaps | PerfEventArray | CgroupArray => array::next_key(self, key, next),
            Hash | PercpuHash | LruHash | LruPercpuHash | HashOfMaps => hash::next_key(self, key, next),
            LpmTrie => lpm::next_key(self, key, next),
            StackTrace => stack_trace::next_key(self, key, next),
            Queue | Stack | BloomFilter | Ringbuf => unreachable!(),
        }
    }

    /// `BPF_MAP_LOOKUP_AND_DELETE_ELEM` (queue/stack pop; hash maps too).
    pub fn lookup_and_delete(&self, key: &[u8], value: &mut [u8]) -> Result<(), Errno> {
        let r = self.lookup_and_delete_inner(key, value);
        self.wrote();
        r
    }

    fn lookup_and_delete_inner(&self, key: &[u8], value: &mut [u8]) -> Result<(), Errno> {
        use MapType::*;
        match self.spec.map_type {
            Queue | Stack => {
                self.check_value(value)?;
                queue::pop(self, value)
            }
            Hash | PercpuHash | LruHash | LruPercpuHash => {
                self.check_key(key)?;
                self.check_value(value)?;
                hash::lookup_and_delete(self, key, value)
            }
            StackTrace => {
                self.lookup(key, value)?;
                stack_trace::delete(self, key)
            }
            // As the kernel: `ENOTSUPP` for the others.
            _ => Err(Errno::ENOTSUPP),
        }
    }

    /// Every key, in iteration order.
    pub fn keys(&self) -> Vec<Vec<u8>> {
        let mut keys = Vec::new();
        let mut cur: Option<Vec<u8>> = None;
        let mut next = vec![0u8; self.spec.key_size as usize];
        let limit = self.spec.max_entries as usize + 1;
        while keys.len() < limit && self.next_key(cur.as_deref(), &mut next).is_ok() {
            keys.push(next.clone());
            cur = Some(next.clone());
        }
        keys
    }

    /// The keys one `BPF_MAP_LOOKUP_BATCH` (or `..._AND_DELETE_BATCH`) call returns from a
    /// hash map: whole buckets from bucket `cursor` (0 = the start; then what the previous
    /// call returned), at most `room` keys, and the bucket to resume from (`None`: the walk
    /// reached the end), as the kernel's hash maps do (`ENOSPC` when the first bucket alone
    /// holds more than `room`). Other map types walk by key (see [`Map::next_key`]).
    pub fn batch_keys(&self, cursor: u32, room: usize) -> Result<(Vec<Vec<u8>>, Option<u32>), Errno> {
        if !self.spec.map_type.is_hash_like() {
            return Err(Errno::ENOTSUPP);
        }
        let buckets = hash::bucket_count(self);
        if cursor as u64 >= buckets {
            return Err(Errno::ENOENT);
        }
        let mut keys = Vec::new();
        let mut b = cursor as u64;
        while b < buckets {
            let more = hash::bucket_keys(self, b);
            if keys.len() + more.len() > room {
                if keys.is_empty() {
                    return Err(Errno::ENOSPC);
                }
                break;
            }
            keys.extend(more);
            b += 1;
        }
        Ok((keys, (b < buckets).then_some(b as u32)))
    }

    /// The number of buckets of a hash map (0 for other maps): where its batch walks end.
    pub fn bucket_count(&self) -> u64 {
        if self.spec.map_type.is_hash_like() {
            hash::bucket_count(self)
        } else {
            0
        }
    }

    // ---- program side -------------------------------------------------------------------

    /// For an array or per-CPU array map: the address of its first value, the distance
    /// between values and between CPUs' copies (0 for a plain array): value `i` is at
    /// `first + i * stride + current_cpu() * cpu_stride` for `i < max_entries`, what
    /// `lookup_ptr` returns; for callers that inline lookups.
    pub fn array_values(&self) -> Option<(u64, u64, u64)> {
        match self.spec.map_type {
            MapType::Array => Some((self.data_addr, self.layout.elem_size, 0)),
            // Not inlined where this process may see a CPU the map has no block for.
            MapType::PercpuArray if self.ncpus >= possible_cpus() => {
                let v = self.value_blocks;
                Some((self.region.base() as u64 + v.first, v.slot, v.block))
            }
            _ => None,
        }
    }

    /// Per-CPU arrays and hash maps: where values are.
    pub(crate) fn value_blocks(&self) -> ValueBlocks {
        self.value_blocks
    }

    /// `bpf_map_lookup_elem` from a program: the address of the value (this CPU's slot for
    /// per-CPU maps; the inner map's reference for map-in-map is resolved by the runtime).
    #[inline]
    pub fn lookup_ptr(&self, key: &[u8]) -> Option<*mut u8> {
        use MapType::*;
        if self.spec.map_type == Array {
            // The hottest lookup, inline: values are contiguous at `data_addr`.
            let idx = u32::from_le_bytes(key.get(..4)?.try_into().ok()?);
            if idx >= self.spec.max_entries {
                return None;
            }
            return Some((self.data_addr + idx as u64 * self.layout.elem_size) as *mut u8);
        }
        match self.spec.map_type {
            PercpuArray | PercpuHash | LruPercpuHash => self.lookup_ptr_on_cpu(key, current_cpu()),
            Array | ProgArray | ArrayOfMaps | CgroupArray => array::lookup_ptr_on(self, key, 0),
            Hash | LruHash | HashOfMaps => hash::lookup_ptr_on(self, key, 0),
            LpmTrie => lpm::lookup_ptr(self, key),
            StackTrace => stack_trace::lookup_ptr(self, key),
            _ => None,
        }
    }

    /// `bpf_map_lookup_percpu_elem` from a program: the address of CPU `cpu`'s value of a
    /// per-CPU map (None for another map type, a CPU past the possible ones, a missing key).
    /// (A process that sees more CPUs than the map's creator did may ask for one it has no
    /// values for.)
    pub fn lookup_ptr_on_cpu(&self, key: &[u8], cpu: u32) -> Option<*mut u8> {
        if cpu >= self.ncpus {
            return None;
        }
        match self.spec.map_type {
            MapType::PercpuArray => array::lookup_ptr_on(self, key, cpu),
            MapType::PercpuHash | MapType::LruPercpuHash => hash::lookup_ptr_on(self, key, cpu),
            _ => None,
        }
    }

    /// Where the map's key and value types are described.
    pub fn btf(&self) -> MapBtf {
        let [o, k, v] = &self.desc().btf;
        MapBtf { object: o.load(Ordering::Acquire), key_type: k.load(Ordering::Relaxed), value_type: v.load(Ordering::Relaxed) }
    }

    /// Makes the map read-only to system calls, in every process (`BPF_MAP_FREEZE`; programs
    /// still write it); false when it already was.
    pub fn freeze(&self) -> bool {
        self.desc().frozen.swap(1, Ordering::AcqRel) == 0
    }

    /// Bytes of the region the map takes: its descriptor and its storage (what `memlock`
    /// reports in the map's fdinfo, as the kernel reports a map's memory).
    pub fn memory_usage(&self) -> u64 {
        std::mem::size_of::<MapDesc>() as u64 + self.layout.data_len + self.layout.aux_len
    }

    /// Whether [`Map::freeze`] made it read-only to system calls.
    pub fn is_frozen(&self) -> bool {
        self.desc().frozen.load(Ordering::Acquire) != 0
    }

    /// Names this process as a holder of the map (it opened it by id or pin, not being the
    /// loader that created it): while it lives, that loader does not remove the map when it
    /// lets go of it (the region counts no other process's fds). A holder that is gone no
    /// longer counts (`bpftool map dump` while a tool runs leaves nothing behind).
    pub fn add_holder(&self) {
        // SAFETY: getpid(2) cannot fail.
        let me = unsafe { libc::getpid() } as u32;
        let slots = &self.desc().holders;
        if slots.iter().any(|h| h.load(Ordering::Acquire) == me) {
            return;
        }
        for h in slots {
            let pid = h.load(Ordering::Acquire);
            if (pid == 0 || (pid != u32::MAX && !process_alive(pid))) && h.compare_exchange(pid, me, Ordering::AcqRel, Ordering::Relaxed).is_ok() {
                return;
            }
        }
        // More than fit: held for good.
        slots[0].store(u32::MAX, Ordering::Release);
    }

    /// Records that the loader in this process created the map: it or, once it let go
    /// ([`Map::release_by_creator`]) or is gone, the last holder removes the map. Maps no loader
    /// created (`bpftime load OBJ`'s) are removed by no holder.
    pub fn set_creator(&self) {
        // SAFETY: getpid(2) cannot fail.
        self.desc().creator.store(unsafe { libc::getpid() } as u32, Ordering::Release);
    }

    /// The loader that created the map lets go of it (nothing of its own holds it any more):
    /// true when nobody else holds it either and the caller is the one to remove it; else the
    /// last holder to let go removes it ([`Map::holder_lets_go`]). Each side withdraws before
    /// it looks at the other (sequentially consistent), so at least one sees the other gone,
    /// and one compare-and-swap makes exactly one the remover.
    pub fn creator_lets_go(&self) -> bool {
        let d = self.desc();
        d.creator.store(CREATOR_RELEASED, Ordering::SeqCst);
        !self.held_elsewhere() && d.creator.compare_exchange(CREATOR_RELEASED, CREATOR_REMOVING, Ordering::SeqCst, Ordering::SeqCst).is_ok()
    }

    /// This process, a holder ([`Map::add_holder`]), lets go of the map: true when its loader
    /// let go too (or is gone), nobody else holds it, the caller is the one to remove it, and
    /// `kept` (something else keeps it) is false.
    pub fn holder_lets_go_unless(&self, kept: bool) -> bool {
        // SAFETY: getpid(2) cannot fail.
        let me = unsafe { libc::getpid() } as u32;
        let d = self.desc();
        for h in &d.holders {
            let _ = h.compare_exchange(me, 0, Ordering::SeqCst, Ordering::SeqCst);
        }
        let c = d.creator.load(Ordering::SeqCst);
        !kept && self.creator_gone(c) && !self.held_elsewhere() && d.creator.compare_exchange(c, CREATOR_REMOVING, Ordering::SeqCst, Ordering::SeqCst).is_ok()
    }

    /// Whether something outside this process keeps the map: another live process that opened
    /// it ([`Map::add_holder`]), its loader if that is another live process, or no loader at all
    /// (`bpftime load OBJ`'s maps stay until removed).
    pub fn kept_elsewhere(&self) -> bool {
        // SAFETY: getpid(2) cannot fail.
        let me = unsafe { libc::getpid() } as u32;
        let c = self.desc().creator.load(Ordering::SeqCst);
        self.held_elsewhere() || c == 0 || (c != me && c != CREATOR_RELEASED && c != CREATOR_REMOVING && self.region.owner_alive(c))
    }

    /// Whether a live process other than this one holds the map (see [`Map::add_holder`]).
    pub fn held_elsewhere(&self) -> bool {
        // SAFETY: getpid(2) cannot fail.
        self.held_by_others_than(unsafe { libc::getpid() } as u32)
    }

    /// Whether a live process other than `me` (or a child forked from one) holds the map.
    fn held_by_others_than(&self, me: u32) -> bool {
        self.desc().holders.iter().any(|h| {
            let pid = h.load(Ordering::SeqCst);
            pid == u32::MAX || (pid != 0 && pid != me && self.region.owner_alive(pid))
        })
    }

    /// Whether creator word `c` says the loader let go or is gone (with any child forked from
    /// it): maps no loader created (0) are never so.
    fn creator_gone(&self, c: u32) -> bool {
        c == CREATOR_RELEASED || (c != 0 && c != CREATOR_REMOVING && !self.region.owner_alive(c))
    }

    /// Whether every process that held the map is gone: the loader that created it (killed
    /// before it could let go, and any child forked from it) and every other holder, this
    /// process included. Programs, pins and maps of maps may still keep it: the caller looks.
    pub fn abandoned(&self) -> bool {
        self.creator_gone(self.desc().creator.load(Ordering::SeqCst)) && !self.held_by_others_than(0)
    }

    /// Claims an [`Map::abandoned`] map for removal: true for exactly one caller, who removes
    /// it ([`Map::retire`]).
    pub fn claim_abandoned(&self) -> bool {
        let d = self.desc();
        let c = d.creator.load(Ordering::SeqCst);
        self.creator_gone(c) && !self.held_by_others_than(0) && d.creator.compare_exchange(c, CREATOR_REMOVING, Ordering::SeqCst, Ordering::SeqCst).is_ok()
    }

    /// Records where the map's key and value types are described (once, right after creation,
    /// by whoever created it).
    pub fn set_btf(&self, btf: MapBtf) {
        let d = self.desc();
        d.btf[1].store(btf.key_type, Ordering::Relaxed);
        d.btf[2].store(btf.value_type, Ordering::Relaxed);
        d.btf[0].store(btf.object, Ordering::Release);
    }

    /// `bpf_for_each_map_elem`: `f(key, value address)` for each element in the kernel's order
    /// (arrays by index, hash maps bucket by bucket), this CPU's value for per-CPU maps, until
    /// `f` returns true; how many elements `f` saw. Other map types: `EINVAL`.
    pub fn for_each_elem(&self, f: &mut dyn FnMut(ElemKey, u64) -> bool) -> Result<u64, Errno> {
        use MapType::*;
        let cpu = if self.spec.map_type.is_percpu() { current_cpu().min(self.ncpus.saturating_sub(1)) } else { 0 };
        match self.spec.map_type {
            Array | PercpuArray => {
                for i in 0..self.spec.max_entries {
                    let value = array::lookup_ptr_on(self, &i.to_le_bytes(), cpu).ok_or(Errno::EINVAL)?;
                    if f(ElemKey::Index(i), value as u64) {
                        return Ok(i as u64 + 1);
                    }
                }
                Ok(self.spec.max_entries as u64)
            }
            Hash | PercpuHash | LruHash | LruPercpuHash => Ok(hash::for_each(self, cpu, &mut |k, v| f(ElemKey::At(k), v))),
            _ => Err(Errno::EINVAL),
        }
    }

    /// `bpf_map_update_elem` from a program (per-CPU maps: sets this CPU's slot).
    pub fn update_from_prog(&self, key: &[u8], value: &[u8], flags: u64) -> Result<(), Errno> {
        if !self.spec.map_type.is_percpu() {
            return self.update(key, value, flags);
        }
        let r = match self.spec.map_type {
            MapType::PercpuArray => array::update_percpu_one(self, key, value, flags),
            _ => hash::update_percpu_one(self, key, value, flags),
        };
        self.wrote();
        r
    }

    /// `bpf_map_push_elem`.
    pub fn push(&self, value: &[u8], flags: u64) -> Result<(), Errno> {
        self.check_value(value)?;
        match self.spec.map_type {
            MapType::Queue | MapType::Stack => queue::push(self, value, flags),
            MapType::BloomFilter => bloom::push(self, value, flags),
            _ => Err(Errno::EINVAL),
        }
    }

    /// `bpf_map_pop_elem`.
    pub fn pop(&self, value: &mut [u8]) -> Result<(), Errno> {
        self.check_value(value)?;
        match self.spec.map_type {
            MapType::Queue | MapType::Stack => queue::pop(self, value),
            _ => Err(Errno::EINVAL),
        }
    }

    /// `bpf_map_peek_elem`.
    pub fn peek(&self, value: &mut [u8]) -> Result<(), Errno> {
        self.check_value(value)?;
        match self.spec.map_type {
            MapType::Queue | MapType::Stack => queue::peek(self, value),
            MapType::BloomFilter => bloom::peek(self, value),
            _ => Err(Errno::EINVAL),
        }
    }

    /// The map's data area: an array's values (a per-CPU array's blocks), a hash map's elements
    /// (with their values, but for per-CPU maps, whose values follow the buckets).
    pub fn value_region(&self) -> (u64, u64) {
        (self.region.base() as u64 + self.layout.data, self.layout.data_len)
    }

    // ---- ring buffers and perf buffers ---------------------------------------------------

    /// `bpf_ringbuf_reserve`: space for a record of `size` bytes, or None when full.
    pub fn ringbuf_reserve(&self, size: u64) -> Option<*mut u8> {
        if self.spec.map_type != MapType::Ringbuf {
            return None;
        }
        ringbuf::reserve(self, size)
    }

    /// `bpf_ringbuf_output`: reserve, copy, submit.
    pub fn ringbuf_output(&self, data: &[u8]) -> Result<(), Errno> {
        if self.spec.map_type != MapType::Ringbuf {
            return Err(Errno::EINVAL);
        }
        ringbuf::output(self, data)
    }

    /// `bpf_ringbuf_query`.
    pub fn ringbuf_query(&self, what: u64) -> u64 {
        if self.spec.map_type != MapType::Ringbuf {
            return 0;
        }
        ringbuf::query(self, what)
    }

    /// Consumes every submitted record (what libbpf's `ring_buffer__consume` does).
    pub fn ringbuf_consume(&self, f: &mut dyn FnMut(&[u8])) -> usize {
        if self.spec.map_type != MapType::Ringbuf {
            return 0;
        }
        ringbuf::consume(self, f)
    }

    /// `bpf_perf_event_output` into the buffer of `cpu`.
    pub fn perf_output(&self, cpu: u32, data: &[u8]) -> Result<(), Errno> {
        if self.spec.map_type != MapType::PerfEventArray {
            return Err(Errno::EINVAL);
        }
        perf::output(self, cpu, data)
    }

    /// Counts `n` samples lost to the perf buffer of `cpu` by a producer elsewhere (the next
    /// sample that fits is preceded by a `PERF_RECORD_LOST` record, as in the kernel).
    pub fn perf_lost(&self, cpu: u32, n: u64) -> Result<(), Errno> {
        if self.spec.map_type != MapType::PerfEventArray {
            return Err(Errno::EINVAL);
        }
        perf::add_lost(self, cpu, n)
    }

    /// Counts `n` records lost to a ring buffer by a producer elsewhere (a GPU ring that was
    /// full), as records this ring had no room for are counted.
    pub fn ringbuf_lost(&self, n: u64) -> Result<(), Errno> {
        if self.spec.map_type != MapType::Ringbuf {
            return Err(Errno::EINVAL);
        }
        self.desc().lost.fetch_add(n, Ordering::Relaxed);
        Ok(())
    }

    /// Drains the perf buffer of every CPU.
    pub fn perf_consume(&self, f: &mut dyn FnMut(PerfRecord<'_>)) -> usize {
        if self.spec.map_type != MapType::PerfEventArray {
            return 0;
        }
        perf::consume(self, f)
    }

    /// The elements of a QUEUE or STACK, oldest first, without removing them.
    pub fn queue_items(&self) -> Vec<Vec<u8>> {
        queue::items(self)
    }

    /// Records lost because a ring or perf buffer was full.
    pub fn lost(&self) -> u64 {
        self.desc().lost.load(Ordering::Relaxed)
    }

    /// `bpf_get_stackid`: stores a stack, given as its frames' records (see
    /// [`Map::stack_frame_size`]; those past the map's depth are dropped), and returns its id.
    pub fn stack_store(&self, records: &[u8], flags: u64) -> Result<u32, Errno> {
        stack_trace::store(self, records, flags)
    }

    /// The size of a frame's record in this STACK_TRACE map: 8 (an address), or
    /// [`BUILD_ID_FRAME`] in a map made with [`BPF_F_STACK_BUILD_ID`].
    pub fn stack_frame_size(&self) -> usize {
        stack_trace::frame_size(self)
    }
}

/// Submits or discards a record reserved with [`Map::ringbuf_reserve`], found from its
/// address alone (as `bpf_ringbuf_submit` is). Returns false if `sample` is not a reserved
/// record of a ring buffer in `region`.
pub fn ringbuf_commit(region: &ShmRegion, sample: u64, discard: bool) -> bool {
    ringbuf::commit(region, sample, discard)
}
