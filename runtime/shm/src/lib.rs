//! # bpftime-shm: the shared-memory region
//!
//! What it is: one file under /dev/shm per region name (`BPFTIME_SHM`, default `bpftime`),
//! mode 0600, mapped shared by the loader, every traced process and the CLI. It holds a
//! header (magic, layout version), an allocator and an object table (maps, programs, links)
//! whose entries point at their data by offset, never by pointer. [`ShmLock`] is the
//! process-shared lock that recovers from holders that die.
//!
//! What it is not: it knows nothing of what maps or programs mean (`bpftime-maps` does).
//!
//! Unsafe code is confined to this crate's raw access to the mapping; every offset is
//! bounds-checked, because any process (and any eBPF program) can write into the region.

pub mod ids;
pub mod lock;
pub mod region;
pub mod text;

pub use lock::{process_alive, ShmGuard, ShmLock};
pub use region::{
    default_name, loader_size, path_of, ObjectInfo, ObjectKind, RunSlot, ShmError, ShmRegion, Span, Words, DEFAULT_SIZE, LOADER_SIZE, MIN_SIZE, RETIRE_GRACE,
};
