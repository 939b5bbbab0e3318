//! The region: a file under /dev/shm (or an anonymous memfd) mapped shared, with a header, an
//! allocator and an object table. Everything inside is addressed by byte offsets from the start
//! of the region, since every process maps it at a different address.
//!
//! Any process (and any eBPF program, through map values) can write into the region, so its
//! contents are never trusted: every offset is bounds-checked before it becomes a pointer.

use crate::lock::{process_alive, ShmLock};
use memmap2::MmapRaw;
use std::fs::{File, OpenOptions};
use std::os::unix::fs::OpenOptionsExt;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};

/// First bytes of every region.
pub const MAGIC: [u8; 8] = *b"BPFTIMRS";
/// Version of the layout below; a region of another version is refused.
pub const LAYOUT_VERSION: u32 = 25;
/// Default region size.
pub const DEFAULT_SIZE: u64 = 64 << 20;
/// Largest region `bpftime load` creates for a loader (see [`loader_size`]).
pub const LOADER_SIZE: u64 = 1 << 30;

/// The size of a region made for an unmodified loader, whose maps are sized for the kernel
/// (bpftrace's stack maps take 130 MiB): [`LOADER_SIZE`], or half of what `/dev/shm` has free
/// when that is less (a region's pages take memory only once used, but a tmpfs that runs out
/// under a mapping faults), and never less than [`DEFAULT_SIZE`].
pub fn loader_size() -> u64 {
    let mut st = std::mem::MaybeUninit::<libc::statvfs>::zeroed();
    // SAFETY: statvfs(3) writes the struct it is given; the path is NUL-terminated.
    let ok = unsafe { libc::statvfs(c"/dev/shm".as_ptr(), st.as_mut_ptr()) } == 0;
    if !ok {
        return DEFAULT_SIZE;
    }
    // SAFETY: initialised by the successful call above.
    let st = unsafe { st.assume_init() };
    let free = st.f_bavail.saturating_mul(st.f_frsize);
    (free / 2 / PAGE * PAGE).clamp(DEFAULT_SIZE, LOADER_SIZE)
}

/// Smallest region accepted.
pub const MIN_SIZE: u64 = 1 << 20;
/// Default region name (`BPFTIME_SHM` overrides it).
pub const DEFAULT_NAME: &str = "bpftime";
/// Entries of the object table in the header, and in each chunk the table grows by (allocated
/// from the region as it fills: a bpftrace wildcard probe on libc makes thousands of links).
pub const TABLE_CHUNK: u32 = 1024;
/// Most chunks of the object table, the header's included.
const TABLE_CHUNKS: usize = 64;
/// Capacity of the object table.
pub const OBJECT_CAPACITY: u32 = TABLE_CHUNK * TABLE_CHUNKS as u32;
/// Longest object name kept (bytes; longer names are cut).
pub const NAME_LEN: usize = 64;
const PAGE: u64 = 4096;
/// Size classes are powers of two from 32 bytes up to 1 MiB; larger blocks are page-rounded.
const MIN_CLASS_SHIFT: u32 = 5;
const MAX_CLASS_SHIFT: u32 = 20;
const NCLASSES: usize = (MAX_CLASS_SHIFT - MIN_CLASS_SHIFT + 1) as usize;
const BLOCK_HEADER: u64 = 16;
const BLOCK_MAGIC: u32 = 0xb10c_f7ee;
/// Longest walk of an allocator free list (a corrupted list may loop).
const MAX_LIST_WALK: u32 = 1 << 16;
/// Environment variable that opts into group-shared regions (see [`Trust`]).
pub const GROUP_ENV: &str = "BPFTIME_SHM_GROUP";

/// Why a region operation failed.
#[derive(Debug, thiserror::Error)]
pub enum ShmError {
    #[error("shared memory region `{0}` does not exist (create it with `bpftime shm create`)")]
    Missing(String),
    #[error("shared memory region `{0}` already exists")]
    Exists(String),
    #[error("shared memory region `{name}` has layout version {found}, this build needs {LAYOUT_VERSION}")]
    IncompatibleVersion { name: String, found: u32 },
    #[error("`{0}` is not a bpftime shared memory region (bad magic or size)")]
    NotARegion(String),
    #[error("shared memory region `{name}` is full ({size} bytes; asked for {want} more)")]
    Full { name: String, size: u64, want: u64 },
    #[error("the object table of region `{0}` is full ({OBJECT_CAPACITY} objects)")]
    TableFull(String),
    #[error("invalid region name `{0}`: use letters, digits, `-`, `_` and `.`")]
    BadName(String),
    #[error("region size {0} is smaller than the minimum {MIN_SIZE}")]
    TooSmall(u64),
    #[error("refusing shared memory region `{name}` ({path}): {reason}")]
    Untrusted { name: String, path: String, reason: String },
    #[error("{path}: {source}")]
    Io { path: String, source: std::io::Error },
}

/// Kinds of objects in the table.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u32)]
pub enum ObjectKind {
    /// A map.
    Map = 1,
    /// A program.
    Program = 2,
    /// A link (a program attached somewhere).
    Link = 3,
    /// A pinned path naming another object (`BPF_OBJ_PIN`).
    Pin = 4,
    /// Type information (BTF) a loader gave, which maps name their key and value types in.
    Btf = 5,
}

impl ObjectKind {
    fn from_u32(v: u32) -> Option<Self> {
        Some(match v {
            1 => ObjectKind::Map,
            2 => ObjectKind::Program,
            3 => ObjectKind::Link,
            4 => ObjectKind::Pin,
            5 => ObjectKind::Btf,
            _ => return None,
        })
    }
}

/// One row of the object table.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ObjectInfo {
    /// Kind.
    pub kind: ObjectKind,
    /// Id, unique in the region, never reused.
    pub id: u32,
    /// Name.
    pub name: String,
    /// Offset of the kind-specific descriptor.
    pub data: u64,
}

#[repr(C)]
struct Header {
    magic: [u8; 8],
    version: u32,
    header_size: u32,
    size: u64,
    alloc_lock: ShmLock,
    bump: AtomicU64,
    used: AtomicU64,
    free: [AtomicU64; NCLASSES],
    large_free: AtomicU64,
    table_lock: ShmLock,
    next_id: AtomicU32,
    table_cap: u32,
    table_off: u64,
    /// Offset of the trace pipe ring (see `trace`), 0 if none.
    pub trace_off: AtomicU64,
    /// Bumped when a record is published while someone waits (see
    /// [`ShmRegion::records_published`]); a futex word.
    record_seq: AtomicU32,
    /// Non-zero while a reader waits for records.
    record_waiters: AtomicU32,
    /// Bumped whenever an object is added to or removed from the table (see
    /// [`ShmRegion::table_changes`]); a futex word.
    table_seq: AtomicU32,
    /// Offsets of the table's further chunks ([`TABLE_CHUNK`] entries each), 0 where none yet.
    table_more: [AtomicU64; TABLE_CHUNKS - 1],
    /// One per CPU: held by the program run that uses that CPU's per-CPU values (see
    /// [`ShmRegion::run_slots`]).
    run_slots: [RunSlot; RUN_SLOTS],
    /// How many `graves` hold a block.
    graves_used: AtomicU32,
    /// Blocks retired (see [`ShmRegion::retire`]), freed once their grace period is over.
    graves: [Grave; GRAVES],
    /// The processes that run programs from the region (see [`ShmRegion::register_runner`]).
    runners: [Runner; RUNNERS],
    /// Forked children of loaders, holding copies of their fds (see [`ShmRegion::add_heir`]).
    heirs: [Heir; HEIRS],
}

/// A process forked from a loader (`heir`, 0: a free slot) and the loader it was forked from
/// (`owner`): it holds copies of the loader's fds, so what the loader made stays while it
/// lives and runs the program it was forked with (`exe`: the device and inode of its
/// executable then; an `exec` closes the loader's fds, which are close-on-exec).
#[repr(C)]
struct Heir {
    owner: AtomicU32,
    heir: AtomicU32,
    exe: [AtomicU64; 2],
}

/// How many forked children of loaders the region keeps track of (more are not known: what
/// their loader made goes with the loader).
const HEIRS: usize = 256;

/// A process that runs programs from the region: its pid (0: a free slot), the thread that
/// follows the table for it (gone with an `exec` that drops the agent, or with the process,
/// zombie or not), the table change count whose removals it has taken in (see
/// [`ShmRegion::caught_up`]) and the one its last look at the table was made at (see
/// [`ShmRegion::refreshed`]).
#[repr(C)]
struct Runner {
    pid: AtomicU32,
    tid: AtomicU32,
    seen: AtomicU32,
    refreshed: AtomicU32,
}

/// How many processes can say what they have taken in (more are not waited for).
const RUNNERS: usize = 1024;

/// A retired block: its payload offset (0: the grave is free), when it was retired
/// (`CLOCK_MONOTONIC` ns, the same clock in every process) and the table's change count then.
#[repr(C)]
struct Grave {
    off: AtomicU64,
    at: AtomicU64,
    seq: AtomicU64,
}

/// How many blocks can wait for their grace period at once (more are not freed at all).
const GRAVES: usize = 4096;

/// How long a retired block stays untouched: longer than any process runs a program it was
/// just told to let go of (an agent detaches a link's probes as soon as the link goes).
pub const RETIRE_GRACE: std::time::Duration = std::time::Duration::from_secs(2);

/// How many CPUs have a run slot (runs on CPUs past these use their CPU without one).
pub const RUN_SLOTS: usize = 256;

/// A CPU's run slot: the kernel runs a probe's program with preemption disabled, so no other
/// run on that CPU comes between its lookup of a per-CPU value and its update (bpftrace's
/// `count()` and `sum()` do exactly that). A preempted thread keeps running its program here,
/// so a program run that uses per-CPU values holds its CPU's slot, in every process sharing
/// the region; another thread that finds it taken uses a free CPU's values instead.
#[repr(C, align(64))]
#[derive(Debug, Default)]
pub struct RunSlot {
    /// Held for the run (dead holders are taken over, as for any region lock).
    pub lock: ShmLock,
}

#[repr(C)]
struct Entry {
    kind: AtomicU32,
    id: AtomicU32,
    data: AtomicU64,
    name: [AtomicU64; NAME_LEN / 8],
}

/// Size of the header.
const HEADER_SIZE: u64 = std::mem::size_of::<Header>() as u64;
/// Where the object table starts: a constant of the layout, checked against the header at open.
const TABLE_OFF: u64 = HEADER_SIZE.div_ceil(64) * 64;
const ENTRY_SIZE: u64 = std::mem::size_of::<Entry>() as u64;
/// Where allocations start: the first page after the object table.
const DATA_START: u64 = (TABLE_OFF + TABLE_CHUNK as u64 * ENTRY_SIZE).div_ceil(PAGE) * PAGE;
/// Bytes of a chunk of the table.
const CHUNK_BYTES: u64 = TABLE_CHUNK as u64 * ENTRY_SIZE;

/// Who may have written a region this process opens.
///
/// A region holds programs that the agent runs inside traced processes and maps that tools read,
/// so a region another user can write is code injection into whoever opens it (`/dev/shm` is
/// world-writable). By default a region must be a regular file (not a symbolic link, FIFO or
/// device) owned by the opening user, with no permission bits for the group or others.
///
/// Group mode (`BPFTIME_SHM_GROUP=1`, for a region made with `bpftime shm create --group G`)
/// also accepts group read/write bits, and a region owned by root: the user asks to share a
/// region with the members of its group, and trusts them and root. Bits for others are never
/// accepted.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Trust {
    /// The effective uid of this process.
    pub euid: u32,
    /// Whether group mode was asked for.
    pub group: bool,
}

impl Trust {
    /// This process's trust: its effective uid, and group mode from `BPFTIME_SHM_GROUP`.
    pub fn from_env() -> Trust {
        let group = std::env::var(GROUP_ENV).is_ok_and(|v| !v.is_empty() && v != "0");
        // SAFETY: geteuid(2) has no preconditions and cannot fail.
        let euid = unsafe { libc::geteuid() };
        Trust { euid, group }
    }

    /// Whether a file with this metadata may be used as a region; the reason (with the fix)
    /// when not.
    pub fn check(&self, meta: &std::fs::Metadata) -> Result<(), String> {
        use std::os::unix::fs::MetadataExt;
        let ft = meta.file_type();
        if !ft.is_file() {
            return Err(format!("it is not a regular file ({}); remove it and create the region again", describe_type(&ft)));
        }
        let (uid, mode) = (meta.uid(), meta.mode() & 0o7777);
        let fix_owner = "remove it (`rm` as its owner or root) and create your own with `bpftime shm create`, or use another name (BPFTIME_SHM=NAME)";
        if uid != self.euid && !(self.group && uid == 0) {
            let hint = if self.group { "" } else { "; a root-owned region shared with a group needs BPFTIME_SHM_GROUP=1" };
            return Err(format!(
                "it is owned by uid {uid}, not by you (uid {}): another user's region could run their code in your processes; {fix_owner}{hint}",
                self.euid
            ));
        }
        if mode & 0o007 != 0 {
            return Err(format!("its mode {mode:04o} lets every user write or read it; {fix_owner}"));
        }
        if mode & 0o070 != 0 && !self.group {
            return Err(format!(
                "its mode {mode:04o} gives its group access; set BPFTIME_SHM_GROUP=1 if you mean to share it with that group, or `chmod 600` it"
            ));
        }
        if mode & 0o7000 != 0 {
            return Err(format!("its mode {mode:04o} has setuid, setgid or sticky bits; {fix_owner}"));
        }
        Ok(())
    }
}

fn describe_type(ft: &std::fs::FileType) -> &'static str {
    use std::os::unix::fs::FileTypeExt;
    if ft.is_dir() {
        "a directory"
    } else if ft.is_symlink() {
        "a symbolic link"
    } else if ft.is_fifo() {
        "a FIFO"
    } else if ft.is_socket() {
        "a socket"
    } else if ft.is_block_device() || ft.is_char_device() {
        "a device"
    } else {
        "not a plain file"
    }
}

/// A mapped region.
pub struct ShmRegion {
    map: MmapRaw,
    name: String,
    path: Option<PathBuf>,
}

// SAFETY: the mapping is shared memory accessed only through atomics, bounds-checked raw
// pointers and the region's locks; the handle itself is immutable after construction.
unsafe impl Send for ShmRegion {}
// SAFETY: see Send.
unsafe impl Sync for ShmRegion {}

impl std::fmt::Debug for ShmRegion {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ShmRegion").field("name", &self.name).field("size", &self.size()).finish()
    }
}

fn check_name(name: &str) -> Result<(), ShmError> {
    let ok = !name.is_empty() && name.len() <= 200 && !name.starts_with('.') && name.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
    if ok {
        Ok(())
    } else {
        Err(ShmError::BadName(name.to_string()))
    }
}

/// The region name to use: `$BPFTIME_SHM` or `bpftime`.
pub fn default_name() -> String {
    std::env::var("BPFTIME_SHM").ok().filter(|s| !s.is_empty()).unwrap_or_else(|| DEFAULT_NAME.to_string())
}

/// Where a named region lives.
pub fn path_of(name: &str) -> PathBuf {
    PathBuf::from("/dev/shm").join(name)
}

fn io_err(path: &std::path::Path) -> impl FnOnce(std::io::Error) -> ShmError + '_ {
    move |source| ShmError::Io { path: path.display().to_string(), source }
}

impl ShmRegion {
    /// Creates the named region (mode 0600); fails if it exists.
    pub fn create(name: &str, size: u64) -> Result<ShmRegion, ShmError> {
        Self::create_with(name, size, None)
    }

    /// Creates the named region shared with group `gid` (mode 0660): its members open it with
    /// `BPFTIME_SHM_GROUP=1` (see [`Trust`]).
    pub fn create_for_group(name: &str, size: u64, gid: u32) -> Result<ShmRegion, ShmError> {
        Self::create_with(name, size, Some(gid))
    }

    fn create_with(name: &str, size: u64, group: Option<u32>) -> Result<ShmRegion, ShmError> {
        check_name(name)?;
        if size < MIN_SIZE {
            return Err(ShmError::TooSmall(size));
        }
        let path = path_of(name);
        let file = OpenOptions::new().read(true).write(true).create_new(true).mode(0o600).open(&path).map_err(|e| {
            if e.kind() == std::io::ErrorKind::AlreadyExists {
                ShmError::Exists(name.to_string())
            } else {
                ShmError::Io { path: path.display().to_string(), source: e }
            }
        })?;
        if let Some(gid) = group {
            use std::os::unix::fs::PermissionsExt;
            let shared = std::os::unix::fs::fchown(&file, None, Some(gid)).and_then(|()| file.set_permissions(std::fs::Permissions::from_mode(0o660)));
            if let Err(e) = shared {
                let _ = std::fs::remove_file(&path);
                return Err(ShmError::Io { path: path.display().to_string(), source: e });
            }
        }
        let region = Self::init(file, name, size, Some(path.clone()));
        if region.is_err() {
            let _ = std::fs::remove_file(&path);
        }
        region
    }

    /// Opens an existing named region, checking who may have written it (see [`Trust`]) and
    /// its magic, version and layout.
    pub fn open(name: &str) -> Result<ShmRegion, ShmError> {
        check_name(name)?;
        let path = path_of(name);
        let shown = path.display().to_string();
        let untrusted = |reason: String| ShmError::Untrusted { name: name.to_string(), path: shown.clone(), reason };
        // O_NOFOLLOW: a symbolic link planted in the world-writable /dev/shm is refused, not
        // followed; O_NONBLOCK: a FIFO planted there cannot block us before the checks.
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK | libc::O_CLOEXEC)
            .open(&path)
            .map_err(|e| match e.raw_os_error() {
                Some(libc::ENOENT) => ShmError::Missing(name.to_string()),
                Some(libc::ELOOP) => untrusted("it is a symbolic link; remove it and create the region again".into()),
                Some(libc::EACCES) => untrusted(format!(
                    "permission denied: it belongs to another user; use your own region (BPFTIME_SHM=NAME) or, for a region shared by a group, see `bpftime shm create --group` ({e})"
                )),
                _ => ShmError::Io { path: shown.clone(), source: e },
            })?;
        let meta = file.metadata().map_err(io_err(&path))?;
        Trust::from_env().check(&meta).map_err(untrusted)?;
        let len = meta.len();
        if len < DATA_START || len > isize::MAX as u64 {
            return Err(ShmError::NotARegion(name.to_string()));
        }
        let map = MmapRaw::map_raw(&file).map_err(io_err(&path))?;
        let region = ShmRegion { map, name: name.to_string(), path: Some(path) };
        let h = region.header();
        if h.magic != MAGIC {
            return Err(ShmError::NotARegion(name.to_string()));
        }
        if h.version != LAYOUT_VERSION {
            return Err(ShmError::IncompatibleVersion { name: name.to_string(), found: h.version });
        }
        if h.size != len || h.header_size as u64 != HEADER_SIZE || h.table_off != TABLE_OFF || h.table_cap != TABLE_CHUNK {
            return Err(ShmError::NotARegion(name.to_string()));
        }
        Ok(region)
    }

    /// Opens the named region, creating it with `size` bytes if it does not exist.
    pub fn open_or_create(name: &str, size: u64) -> Result<ShmRegion, ShmError> {
        match Self::open(name) {
            Err(ShmError::Missing(_)) => match Self::create(name, size) {
                Err(ShmError::Exists(_)) => Self::open(name),
                r => r,
            },
            r => r,
        }
    }

    /// A private region backed by an anonymous memory file (for one process, e.g. `vm run`).
    pub fn anonymous(size: u64) -> Result<ShmRegion, ShmError> {
        if size < MIN_SIZE {
            return Err(ShmError::TooSmall(size));
        }
        // SAFETY: memfd_create with a valid NUL-terminated name; the fd is owned by the File
        // built from it below (memfd_create(2)).
        let fd = unsafe { libc::memfd_create(c"bpftime-anon".as_ptr(), libc::MFD_CLOEXEC) };
        if fd < 0 {
            return Err(ShmError::Io { path: "memfd".into(), source: std::io::Error::last_os_error() });
        }
        // SAFETY: fd is a fresh, valid descriptor that nothing else owns.
        let file = unsafe { <File as std::os::fd::FromRawFd>::from_raw_fd(fd) };
        Self::init(file, "(anonymous)", size, None)
    }

    /// Removes the named region's file and the code cache beside it; processes that mapped it keep their mapping.
    pub fn remove(name: &str) -> Result<(), ShmError> {
        check_name(name)?;
        let path = path_of(name);
        std::fs::remove_file(&path).map_err(|e| {
            if e.kind() == std::io::ErrorKind::NotFound {
                ShmError::Missing(name.to_string())
            } else {
                ShmError::Io { path: path.display().to_string(), source: e }
            }
        })?;
        // The code cache beside it, if any (`NAME.code`).
        let _ = std::fs::remove_dir_all(path_of(&format!("{name}.code")));
        Ok(())
    }

    fn init(file: File, name: &str, size: u64, path: Option<PathBuf>) -> Result<ShmRegion, ShmError> {
        let shown = path.as_ref().map(|p| p.display().to_string()).unwrap_or_else(|| name.to_string());
        let size = size.div_ceil(PAGE) * PAGE;
        file.set_len(size).map_err(|e| ShmError::Io { path: shown.clone(), source: e })?;
        let map = MmapRaw::map_raw(&file).map_err(|e| ShmError::Io { path: shown, source: e })?;
        let region = ShmRegion { map, name: name.to_string(), path };
        let hp = region.map.as_mut_ptr() as *mut Header;
        // SAFETY: the mapping is at least MIN_SIZE bytes, page aligned, zero-filled (fresh file),
        // and not yet visible to any other process through a valid magic; we write the header
        // fields before the magic.
        unsafe {
            (*hp).version = LAYOUT_VERSION;
            (*hp).header_size = HEADER_SIZE as u32;
            (*hp).size = size;
            (*hp).table_cap = TABLE_CHUNK;
            (*hp).table_off = TABLE_OFF;
            (*hp).next_id.store(1, Ordering::Relaxed);
            (*hp).bump.store(DATA_START, Ordering::Relaxed);
            std::sync::atomic::fence(Ordering::Release);
            (*hp).magic = MAGIC;
        }
        Ok(region)
    }

    fn header(&self) -> &Header {
        // SAFETY: every constructor checked the mapping holds a Header at offset 0; its
        // mutable fields are atomics or locks.
        unsafe { &*(self.map.as_ptr() as *const Header) }
    }

    /// The CPUs' run slots (see [`RunSlot`]).
    pub fn run_slots(&self) -> &[RunSlot] {
        &self.header().run_slots
    }

    /// Says that a ring buffer or perf buffer record was just published: wakes the readers
    /// waiting in [`ShmRegion::wait_for_records`] (the syscall server, which makes a loader's
    /// ring fd readable). Costs a fence and a load while nobody waits, and one `futex` call for
    /// the first record after a reader starts waiting, as the kernel wakes a ring's reader once
    /// it has caught up.
    pub fn records_published(&self) {
        let h = self.header();
        std::sync::atomic::fence(Ordering::SeqCst);
        if h.record_waiters.load(Ordering::Relaxed) != 0 && h.record_waiters.swap(0, Ordering::AcqRel) != 0 {
            h.record_seq.fetch_add(1, Ordering::Release);
            wake_all(&h.record_seq);
        }
    }

    /// Starts waiting for records: returns the token for [`ShmRegion::wait_for_records`]. Look
    /// at the rings after this call and before waiting, so that a record published in between
    /// is seen either there or as a wake-up.
    pub fn arm_record_wait(&self) -> u32 {
        let h = self.header();
        let seq = h.record_seq.load(Ordering::Acquire);
        h.record_waiters.store(1, Ordering::Relaxed);
        std::sync::atomic::fence(Ordering::SeqCst);
        seq
    }

    /// Sleeps until a record is published after [`ShmRegion::arm_record_wait`] returned `token`,
    /// or for `timeout` at most.
    pub fn wait_for_records(&self, token: u32, timeout: std::time::Duration) {
        wait_while(&self.header().record_seq, token, timeout);
    }

    /// The region's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The file backing a named region.
    pub fn path(&self) -> Option<&std::path::Path> {
        self.path.as_deref()
    }

    /// Size in bytes.
    pub fn size(&self) -> u64 {
        self.map.len() as u64
    }

    /// Bytes handed out by the allocator and not freed.
    pub fn used(&self) -> u64 {
        self.header().used.load(Ordering::Relaxed)
    }

    /// Where the header and the object table's first chunk lie: `[0, end)` (for tools and
    /// tests that look at the raw layout).
    pub fn table_end() -> u64 {
        TABLE_OFF + CHUNK_BYTES
    }

    /// Address where this process mapped the region.
    pub fn base(&self) -> *mut u8 {
        self.map.as_mut_ptr()
    }

    /// The mapping as two plain words, for hot paths (see [`Span`]).
    #[inline]
    pub fn span(&self) -> Span<'_> {
        Span { base: self.base(), size: self.size(), _region: std::marker::PhantomData }
    }

    /// The pointer for `[off, off + len)` if that lies inside the region.
    #[inline]
    pub fn ptr(&self, off: u64, len: u64) -> Option<*mut u8> {
        self.span().ptr(off, len)
    }

    /// The offset of an address inside the region.
    pub fn offset_of(&self, addr: u64) -> Option<u64> {
        let off = addr.checked_sub(self.base() as u64)?;
        (off > 0 && off < self.size()).then_some(off)
    }

    /// An atomic u64 at `off` (8-aligned, inside the region).
    #[inline]
    pub fn atomic_u64(&self, off: u64) -> Option<&AtomicU64> {
        self.span().atomic_u64(off)
    }

    /// An atomic u32 at `off` (4-aligned, inside the region).
    #[inline]
    pub fn atomic_u32(&self, off: u64) -> Option<&AtomicU32> {
        self.span().atomic_u32(off)
    }

    /// A lock at `off` (8-aligned, inside the region).
    #[inline]
    pub fn lock_at(&self, off: u64) -> Option<&ShmLock> {
        self.span().lock_at(off)
    }

    /// Copies bytes out of the region; false if the range is outside it.
    pub fn read(&self, off: u64, buf: &mut [u8]) -> bool {
        match self.ptr(off, buf.len() as u64) {
            Some(p) => {
                // SAFETY: the range is inside the mapping. Other processes may write it at the
                // same time (eBPF map semantics allow torn values); the copy is of plain bytes.
                // Word-sized copies avoid a call to memcpy on the hottest paths (keys, values).
                unsafe {
                    match buf.len() {
                        4 => buf.copy_from_slice(&(p as *const [u8; 4]).read_unaligned()),
                        8 => buf.copy_from_slice(&(p as *const [u8; 8]).read_unaligned()),
                        n => std::ptr::copy_nonoverlapping(p, buf.as_mut_ptr(), n),
                    }
                }
                true
            }
            None => false,
        }
    }

    /// Copies bytes into the region; false if the range is outside it.
    pub fn write(&self, off: u64, data: &[u8]) -> bool {
        match self.ptr(off, data.len() as u64) {
            Some(p) => {
                // SAFETY: the range is inside the mapping (see `read` about concurrent access).
                unsafe {
                    match data.len() {
                        4 => (p as *mut [u8; 4]).write_unaligned(data.try_into().expect("4 bytes")),
                        8 => (p as *mut [u8; 8]).write_unaligned(data.try_into().expect("8 bytes")),
                        n => std::ptr::copy_nonoverlapping(data.as_ptr(), p, n),
                    }
                }
                true
            }
            None => false,
        }
    }

    /// Fills `[off, off + len)` with zeros.
    pub fn zero(&self, off: u64, len: u64) -> bool {
        match self.ptr(off, len) {
            Some(p) => {
                // SAFETY: inside the mapping.
                unsafe { std::ptr::write_bytes(p, 0, len as usize) };
                true
            }
            None => false,
        }
    }

    fn full(&self, want: u64) -> ShmError {
        ShmError::Full { name: self.name.clone(), size: self.size(), want }
    }

    /// Allocates `size` zeroed bytes aligned to 16 (or to a page for large blocks); returns the
    /// offset of the first byte.
    pub fn alloc(&self, size: u64) -> Result<u64, ShmError> {
        self.alloc_inner(size, false)
    }

    /// Allocates `size` zeroed bytes starting on a page boundary (for memory that is mapped on
    /// its own, such as ring buffer pages).
    pub fn alloc_pages(&self, size: u64) -> Result<u64, ShmError> {
        self.alloc_inner(size, true)
    }

    fn alloc_inner(&self, size: u64, page_aligned: bool) -> Result<u64, ShmError> {
        let h = self.header();
        let need = size.max(1).checked_add(BLOCK_HEADER).filter(|&n| n <= self.size()).ok_or_else(|| self.full(size))?;
        let (class, block) = if need <= 1 << MAX_CLASS_SHIFT && !page_aligned {
            let shift = (64 - (need - 1).leading_zeros()).max(MIN_CLASS_SHIFT);
            ((shift - MIN_CLASS_SHIFT) as usize, 1u64 << shift)
        } else {
            (usize::MAX, need.div_ceil(PAGE) * PAGE)
        };
        let _g = h.alloc_lock.lock();
        self.reap_locked(RETIRE_GRACE);
        let reused = if class != usize::MAX { self.pop_free(&h.free[class], block) } else { self.take_large(block) };
        let block_off = match reused {
            Some(off) => off,
            None => self.bump(block, if class != usize::MAX { BLOCK_HEADER } else { PAGE })?,
        };
        // Block header: class (or u32::MAX for large), magic, block size.
        let class_word = if class == usize::MAX { u32::MAX } else { class as u32 };
        let hdr = self.atomic_u64(block_off).ok_or_else(|| self.full(size))?;
        hdr.store(class_word as u64 | (BLOCK_MAGIC as u64) << 32, Ordering::Relaxed);
        self.atomic_u64(block_off + 8).ok_or_else(|| self.full(size))?.store(block, Ordering::Relaxed);
        // Memory past the frontier has never been handed out: it is still the zeroes the file
        // was created with, and pages nobody touches take no memory (a large map costs what
        // it uses). A reused block is cleared. (Its pages are not given back to the system:
        // memory a GPU registered stays the same pages.)
        if reused.is_some() {
            self.zero(block_off + BLOCK_HEADER, block - BLOCK_HEADER);
        }
        h.used.fetch_add(block, Ordering::Relaxed);
        Ok(block_off + BLOCK_HEADER)
    }

    /// Whether `[off, off + block)` can be a block: 16-aligned, after the object table, inside
    /// the region. Offsets read from the region's free lists are checked with this before use.
    fn block_fits(&self, off: u64, block: u64) -> bool {
        off >= DATA_START && off.is_multiple_of(16) && off.checked_add(block).is_some_and(|end| end <= self.size())
    }

    /// Bumps the never-used frontier; the block's payload is aligned to `align`.
    fn bump(&self, block: u64, align: u64) -> Result<u64, ShmError> {
        let h = self.header();
        // A frontier outside [DATA_START, size] was scribbled on: nothing more can be handed
        // out safely (blocks below it may be live).
        let cur = h.bump.load(Ordering::Relaxed);
        if !(DATA_START..=self.size()).contains(&cur) {
            return Err(self.full(block));
        }
        // Payload (block + 16) aligned to `align`.
        let payload = (cur + BLOCK_HEADER).div_ceil(align) * align;
        let start = payload - BLOCK_HEADER;
        if start.checked_add(block).is_none_or(|end| end > self.size()) {
            return Err(self.full(block));
        }
        h.bump.store(start + block, Ordering::Relaxed);
        Ok(start)
    }

    fn pop_free(&self, head: &AtomicU64, block: u64) -> Option<u64> {
        let off = head.load(Ordering::Relaxed);
        if off == 0 {
            return None;
        }
        if !self.block_fits(off, block) {
            // A scribbled list: drop it (its blocks leak) rather than hand out a bad block.
            head.store(0, Ordering::Relaxed);
            return None;
        }
        // The next link is kept in the freed payload's first word.
        let next = self.atomic_u64(off + BLOCK_HEADER)?.load(Ordering::Relaxed);
        head.store(next, Ordering::Relaxed);
        Some(off)
    }

    fn take_large(&self, block: u64) -> Option<u64> {
        // First fit in the list of freed large blocks (exact size only, to keep it simple).
        // The walk is bounded: a scribbled list may loop.
        let h = self.header();
        let mut link = &h.large_free;
        for _ in 0..MAX_LIST_WALK {
            let off = link.load(Ordering::Relaxed);
            if off == 0 || !self.block_fits(off, PAGE) {
                if off != 0 {
                    link.store(0, Ordering::Relaxed);
                }
                return None;
            }
            let size = self.atomic_u64(off + 8)?.load(Ordering::Relaxed);
            let next_link = self.atomic_u64(off + BLOCK_HEADER)?;
            if size == block && self.block_fits(off, block) {
                link.store(next_link.load(Ordering::Relaxed), Ordering::Relaxed);
                return Some(off);
            }
            link = next_link;
        }
        None
    }

    /// Frees a block returned by [`ShmRegion::alloc`]. Offsets that are not live blocks are
    /// ignored (the region may have been scribbled on; freeing must never corrupt it further).
    pub fn free(&self, payload: u64) {
        let _g = self.header().alloc_lock.lock();
        self.free_locked(payload);
    }

    /// [`ShmRegion::free`] with the allocator's lock held.
    fn free_locked(&self, payload: u64) {
        let h = self.header();
        let Some(block_off) = payload.checked_sub(BLOCK_HEADER) else { return };
        if !self.block_fits(block_off, BLOCK_HEADER + 8) {
            return;
        }
        let (Some(hdr), Some(size)) = (self.atomic_u64(block_off), self.atomic_u64(block_off + 8)) else { return };
        let word = hdr.load(Ordering::Relaxed);
        if (word >> 32) as u32 != BLOCK_MAGIC {
            return;
        }
        let class = word as u32;
        let block = size.load(Ordering::Relaxed);
        let Some(link) = self.atomic_u64(payload) else { return };
        let head = if class == u32::MAX {
            &h.large_free
        } else if (class as usize) < NCLASSES && block == 1 << (class + MIN_CLASS_SHIFT) {
            &h.free[class as usize]
        } else {
            return;
        };
        if !self.block_fits(block_off, block) {
            return;
        }
        // Mark free (so a second free is ignored) and push.
        hdr.store(0, Ordering::Relaxed);
        link.store(head.load(Ordering::Relaxed), Ordering::Relaxed);
        head.store(block_off, Ordering::Relaxed);
        let used = h.used.load(Ordering::Relaxed);
        h.used.store(used.saturating_sub(block), Ordering::Relaxed);
    }

    /// Frees a block returned by [`ShmRegion::alloc`] once [`RETIRE_GRACE`] has passed (at a
    /// later allocation): for what another process may still be using for a moment, such as
    /// the storage of a map whose last program was detached while a thread was running it.
    /// Where too many blocks wait already, this one is never freed.
    pub fn retire(&self, payload: u64) {
        let h = self.header();
        let _g = h.alloc_lock.lock();
        self.reap_locked(RETIRE_GRACE);
        let now = monotonic_ns();
        if let Some(g) = h.graves.iter().find(|g| g.off.load(Ordering::Relaxed) == 0) {
            g.at.store(now, Ordering::Relaxed);
            g.seq.store(h.table_seq.load(Ordering::Acquire) as u64, Ordering::Relaxed);
            g.off.store(payload, Ordering::Relaxed);
            h.graves_used.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Says that this process runs programs from the region, followed by the calling thread,
    /// which has taken in every removal up to table change count `seen`: blocks retired later
    /// are freed only once it has taken their removal in ([`ShmRegion::caught_up`]) or the
    /// thread is gone. A process stopped (SIGSTOP, a debugger) while its probes still run a
    /// removed map's program then finds that map's storage as it was when it goes on. Returns
    /// its slot (None: no slot left, the process is not waited for).
    pub fn register_runner(&self, seen: u32) -> Option<usize> {
        // SAFETY: getpid(2) and gettid(2) cannot fail.
        let (me, tid) = unsafe { (libc::getpid() as u32, libc::syscall(libc::SYS_gettid) as u32) };
        let h = self.header();
        // Ours already (a forked child's parent slot is not: its pid differs), or a free one,
        // or a gone runner's.
        // (A slot of an image this process exec'd from is not ours: its follower is gone.)
        let ours = h.runners.iter().position(|r| r.pid.load(Ordering::Acquire) == me && runner_alive(me, r.tid.load(Ordering::Acquire)));
        let slot = ours.or_else(|| {
            h.runners.iter().position(|r| {
                let pid = r.pid.load(Ordering::Acquire);
                (pid == 0 || !runner_alive(pid, r.tid.load(Ordering::Acquire))) && r.pid.compare_exchange(pid, me, Ordering::AcqRel, Ordering::Relaxed).is_ok()
            })
        })?;
        let r = &h.runners[slot];
        r.seen.store(seen, Ordering::Release);
        // Behind `seen` until it says what it has taken in (`refreshed`): its first look at
        // the table may still be under way. (A slot it had already keeps what it said.)
        if ours.is_none() {
            r.refreshed.store(seen.wrapping_sub(1), Ordering::Release);
        }
        r.tid.store(tid, Ordering::Release);
        r.pid.store(me, Ordering::Release);
        Some(slot)
    }

    /// Says that this process, just forked from process `parent` (a loader, or a child forked
    /// from one), holds copies of its fds: the objects the loader made stay while either lives
    /// ([`ShmRegion::owner_alive`]), as the kernel keeps an object while any process holds an
    /// fd of it (a loader that forks a daemon and exits). The loader `parent` was itself forked
    /// from is recorded too, so that a chain of forks holds without its middle. Slots of gone
    /// children are reused; with none left it is not known. Only system calls: for a
    /// `pthread_atfork` child handler.
    pub fn add_heir(&self, parent: u32) {
        // SAFETY: getpid(2) cannot fail.
        let me = unsafe { libc::getpid() } as u32;
        if parent == 0 || parent == me {
            return;
        }
        let heirs = &self.header().heirs;
        // The parent's own loader: of the owners it is recorded under, one that is no
        // process's heir itself (a chain of forks names its root).
        let is_heir = |pid: u32| heirs.iter().any(|h| h.heir.load(Ordering::Acquire) == pid);
        let owners = || heirs.iter().filter(|h| h.heir.load(Ordering::Acquire) == parent).map(|h| h.owner.load(Ordering::Acquire));
        let root = owners().find(|&o| !is_heir(o)).or_else(|| owners().next());
        let exe = exe_identity(c"/proc/self/exe");
        for owner in std::iter::once(parent).chain(root.filter(|&r| r != parent && r != 0)) {
            for h in heirs {
                let pid = h.heir.load(Ordering::Acquire);
                let mine = pid == me && h.owner.load(Ordering::Acquire) == owner;
                if mine || ((pid == 0 || !process_alive(pid)) && h.heir.compare_exchange(pid, me, Ordering::AcqRel, Ordering::Relaxed).is_ok()) {
                    h.owner.store(owner, Ordering::Release);
                    h.exe[0].store(exe.0, Ordering::Release);
                    h.exe[1].store(exe.1, Ordering::Release);
                    break;
                }
            }
        }
    }

    /// Whether the objects loader `owner` made are still held by a process: the loader itself,
    /// or a process forked from it (or from such a process) that lives and has not run another
    /// program since ([`ShmRegion::add_heir`]). 0 is no loader: false.
    pub fn owner_alive(&self, owner: u32) -> bool {
        if process_alive(owner) {
            return true;
        }
        let heirs = &self.header().heirs;
        let mut dead = vec![owner];
        // A chain of forks is followed a few levels down (each child also names the loader).
        for _ in 0..4 {
            let next: Vec<(u32, (u64, u64))> = heirs
                .iter()
                .filter(|h| dead.contains(&h.owner.load(Ordering::Acquire)))
                .map(|h| (h.heir.load(Ordering::Acquire), (h.exe[0].load(Ordering::Acquire), h.exe[1].load(Ordering::Acquire))))
                .filter(|&(pid, _)| pid != 0 && !dead.contains(&pid))
                .collect();
            if next.is_empty() {
                return false;
            }
            if next.iter().any(|&(pid, exe)| process_alive(pid) && still_runs(pid, exe)) {
                return true;
            }
            dead.extend(next.into_iter().map(|(pid, _)| pid));
        }
        false
    }

    /// Says that the process in runner slot `slot` has taken in every removal up to table
    /// change count `seen` (it no longer runs anything they removed). A slot since taken by
    /// another process is left alone.
    pub fn caught_up(&self, slot: usize, seen: u32) {
        // SAFETY: getpid(2) cannot fail.
        let me = unsafe { libc::getpid() } as u32;
        if let Some(r) = self.header().runners.get(slot).filter(|r| r.pid.load(Ordering::Acquire) == me) {
            r.seen.store(seen, Ordering::Release);
        }
    }

    /// Says that this process (its runner `slot`) has looked at the table as of change count
    /// `seen` and acted on it: its probes for the links then in the table are in place.
    pub fn refreshed(&self, slot: usize, seen: u32) {
        // SAFETY: getpid(2) cannot fail.
        let me = unsafe { libc::getpid() } as u32;
        if let Some(r) = self.header().runners.get(slot).filter(|r| r.pid.load(Ordering::Acquire) == me) {
            r.refreshed.store(seen, Ordering::Release);
        }
    }

    /// Waits (up to `timeout`) until every live runner not `skipped` has looked at the table
    /// as of change count `change` or later ([`ShmRegion::refreshed`]), as a kernel attach is
    /// in force when it returns: this process's own too (a loader's agent, which traces the
    /// loader). Returns the runners' pids that had not by then.
    pub fn wait_for_runners(&self, change: u32, timeout: std::time::Duration, skipped: impl Fn(u32) -> bool) -> Vec<u32> {
        let h = self.header();
        let deadline = std::time::Instant::now() + timeout;
        let mut pause = std::time::Duration::from_micros(100);
        loop {
            let lagging: Vec<u32> = h
                .runners
                .iter()
                .filter_map(|r| {
                    let pid = r.pid.load(Ordering::Acquire);
                    // Counts wrap: behind means before `change` by less than half the range.
                    let behind = (r.refreshed.load(Ordering::Acquire).wrapping_sub(change) as i32) < 0;
                    (pid != 0 && behind && !skipped(pid) && runner_alive(pid, r.tid.load(Ordering::Acquire))).then_some(pid)
                })
                .collect();
            if lagging.is_empty() || std::time::Instant::now() >= deadline {
                return lagging;
            }
            std::thread::sleep(pause);
            pause = (pause * 2).min(std::time::Duration::from_millis(5));
        }
    }

    /// The oldest change count a live runner has not taken in (None: all caught up, or none).
    /// Counts are compared as offsets behind the current one (they wrap).
    fn oldest_unseen_change(&self) -> Option<u32> {
        let h = self.header();
        let now = h.table_seq.load(Ordering::Acquire);
        h.runners
            .iter()
            .filter_map(|r| {
                let pid = r.pid.load(Ordering::Acquire);
                if pid == 0 {
                    return None;
                }
                if !runner_alive(pid, r.tid.load(Ordering::Acquire)) {
                    let _ = r.pid.compare_exchange(pid, 0, Ordering::AcqRel, Ordering::Relaxed);
                    return None;
                }
                let seen = r.seen.load(Ordering::Acquire);
                let behind = now.wrapping_sub(seen) as i32;
                (behind > 0).then_some((behind, seen))
            })
            .max_by_key(|&(behind, _)| behind)
            .map(|(_, seen)| seen)
    }

    /// Frees the retired blocks that have waited `grace` (see [`ShmRegion::retire`]; the
    /// allocator does this itself with [`RETIRE_GRACE`]).
    pub fn reap_retired(&self, grace: std::time::Duration) {
        let _g = self.header().alloc_lock.lock();
        self.reap_locked(grace);
    }

    fn reap_locked(&self, grace: std::time::Duration) {
        let h = self.header();
        if h.graves_used.load(Ordering::Relaxed) == 0 {
            return;
        }
        let now = monotonic_ns();
        // The oldest table change a live runner has not taken in yet: what was retired at or
        // after it may still be in use there.
        let oldest_unseen = self.oldest_unseen_change();
        let mut left = 0;
        for g in &h.graves {
            let off = g.off.load(Ordering::Relaxed);
            if off == 0 {
                continue;
            }
            let seen_everywhere = oldest_unseen.is_none_or(|o| (g.seq.load(Ordering::Relaxed) as u32).wrapping_sub(o) as i32 <= 0);
            if seen_everywhere && now.saturating_sub(g.at.load(Ordering::Relaxed)) >= grace.as_nanos() as u64 {
                g.off.store(0, Ordering::Relaxed);
                self.free_locked(off);
            } else {
                left += 1;
            }
        }
        h.graves_used.store(left, Ordering::Relaxed);
    }

    /// Where chunk `c` of the table starts, if it has one: the header's first, then those
    /// allocated as it filled (an offset that does not leave room for a chunk inside the
    /// region, a scribbled header, counts as none).
    fn chunk_at(&self, c: usize) -> Option<u64> {
        if c == 0 {
            return Some(TABLE_OFF);
        }
        let off = self.header().table_more.get(c - 1)?.load(Ordering::Acquire);
        (off >= DATA_START && off.is_multiple_of(8) && off.checked_add(CHUNK_BYTES).is_some_and(|end| end <= self.size())).then_some(off)
    }

    /// Entry `k` of the chunk at `chunk` (from [`ShmRegion::chunk_at`]).
    fn entry(&self, chunk: u64, k: u32) -> &Entry {
        let off = chunk + (k % TABLE_CHUNK) as u64 * ENTRY_SIZE;
        // SAFETY: `chunk_at` gave a chunk inside the mapping (the header's, [TABLE_OFF,
        // DATA_START), which every constructor made sure the mapping holds, or one checked to
        // fit), 8-aligned; Entry is all atomics, so any bytes there are a valid Entry. The first
        // chunk's place is a constant of the layout, never read from the (writable) header.
        unsafe { &*(self.base().add(off as usize) as *const Entry) }
    }

    /// Every entry of the table, chunk after chunk.
    fn entries(&self) -> impl Iterator<Item = &Entry> {
        (0..TABLE_CHUNKS).filter_map(|c| self.chunk_at(c)).flat_map(move |chunk| (0..TABLE_CHUNK).map(move |k| self.entry(chunk, k)))
    }

    /// Adds an object to the table; returns its new id.
    pub fn add_object(&self, kind: ObjectKind, name: &str, data: u64) -> Result<u32, ShmError> {
        let h = self.header();
        let _g = h.table_lock.lock();
        let e = match self.entries().find(|e| e.kind.load(Ordering::Relaxed) == 0) {
            Some(e) => e,
            None => {
                // Full: a new chunk (allocations are zeroed: free entries).
                let slot = h.table_more.iter().find(|m| m.load(Ordering::Relaxed) == 0).ok_or_else(|| ShmError::TableFull(self.name.clone()))?;
                let chunk = self.alloc(CHUNK_BYTES)?;
                slot.store(chunk, Ordering::Release);
                self.entry(chunk, 0)
            }
        };
        let id = h.next_id.fetch_add(1, Ordering::Relaxed);
        let mut bytes = [0u8; NAME_LEN];
        crate::text::fill(&mut bytes, name);
        for (k, w) in e.name.iter().enumerate() {
            w.store(u64::from_le_bytes(bytes[8 * k..8 * k + 8].try_into().expect("8 bytes")), Ordering::Relaxed);
        }
        e.id.store(id, Ordering::Relaxed);
        e.data.store(data, Ordering::Relaxed);
        e.kind.store(kind as u32, Ordering::Release);
        self.table_changed();
        Ok(id)
    }

    /// Bumps the table's change count and wakes whoever waits in
    /// [`ShmRegion::wait_for_table_change`] (objects come and go at human rates: always woken).
    fn table_changed(&self) {
        let h = self.header();
        h.table_seq.fetch_add(1, Ordering::Release);
        wake_all(&h.table_seq);
    }

    /// How many times objects were added to or removed from the table: take it before looking
    /// at the table, then [`ShmRegion::wait_for_table_change`] with it.
    pub fn table_changes(&self) -> u32 {
        self.header().table_seq.load(Ordering::Acquire)
    }

    /// Sleeps until the table changes after [`ShmRegion::table_changes`] returned `seen`, or
    /// for `timeout` at most (returns at once if it changed already).
    pub fn wait_for_table_change(&self, seen: u32, timeout: std::time::Duration) {
        wait_while(&self.header().table_seq, seen, timeout);
    }

    /// Removes an object from the table (its data is freed by the caller).
    pub fn remove_object(&self, id: u32) -> Option<ObjectInfo> {
        let _g = self.header().table_lock.lock();
        let e = self.find_entry(id)?;
        let info = self.info(e);
        e.kind.store(0, Ordering::Release);
        self.table_changed();
        info
    }

    /// The table entry of live object `id`.
    fn find_entry(&self, id: u32) -> Option<&Entry> {
        self.entries().find(|e| e.kind.load(Ordering::Acquire) != 0 && e.id.load(Ordering::Relaxed) == id)
    }

    fn info(&self, e: &Entry) -> Option<ObjectInfo> {
        let kind = ObjectKind::from_u32(e.kind.load(Ordering::Acquire))?;
        let mut bytes = [0u8; NAME_LEN];
        for (chunk, w) in bytes.chunks_exact_mut(8).zip(&e.name) {
            chunk.copy_from_slice(&w.load(Ordering::Relaxed).to_le_bytes());
        }
        Some(ObjectInfo { kind, id: e.id.load(Ordering::Relaxed), name: crate::text::text(&bytes), data: e.data.load(Ordering::Relaxed) })
    }

    /// Every object, in table order.
    pub fn objects(&self) -> Vec<ObjectInfo> {
        self.entries().filter_map(|e| self.info(e)).collect()
    }

    /// The objects of one kind, in table order (the names of others are not read).
    pub fn objects_of_kind(&self, kind: ObjectKind) -> Vec<ObjectInfo> {
        self.entries().filter(|e| e.kind.load(Ordering::Acquire) == kind as u32).filter_map(|e| self.info(e)).collect()
    }

    /// The ids and descriptor offsets of the objects of one kind, in table order (names are
    /// not read: cheap enough to call once per closed fd with thousands of objects).
    pub fn ids_of_kind(&self, kind: ObjectKind) -> Vec<(u32, u64)> {
        self.entries()
            .filter(|e| e.kind.load(Ordering::Acquire) == kind as u32)
            .map(|e| (e.id.load(Ordering::Relaxed), e.data.load(Ordering::Relaxed)))
            .collect()
    }

    /// The object with this id.
    pub fn object(&self, id: u32) -> Option<ObjectInfo> {
        self.info(self.find_entry(id)?)
    }

    /// Where live object `id` keeps its data, if it is of `kind`; reads no name and allocates
    /// nothing (for probe hits that count a miss).
    pub fn object_data(&self, id: u32, kind: ObjectKind) -> Option<u64> {
        let e = self.find_entry(id)?;
        (ObjectKind::from_u32(e.kind.load(Ordering::Acquire))? == kind).then(|| e.data.load(Ordering::Relaxed))
    }

    /// Offset of the trace pipe (`size` bytes), allocating it on first use.
    pub fn trace_ring(&self, size: u64) -> Result<u64, ShmError> {
        let h = self.header();
        if let Some(off) = self.existing_trace_ring(size) {
            return Ok(off);
        }
        let _g = h.table_lock.lock();
        if let Some(off) = self.existing_trace_ring(size) {
            return Ok(off);
        }
        let off = self.alloc(size)?;
        h.trace_off.store(off, Ordering::Release);
        Ok(off)
    }

    /// Offset of the trace pipe if one of `size` bytes exists. A recorded offset that does not
    /// leave room for it inside the region (a scribbled header) counts as none.
    pub fn existing_trace_ring(&self, size: u64) -> Option<u64> {
        let off = self.header().trace_off.load(Ordering::Acquire);
        (off != 0 && self.block_fits(off.checked_sub(BLOCK_HEADER)?, size.checked_add(BLOCK_HEADER)?)).then_some(off)
    }
}

/// Whether thread `tid` of process `pid` exists (tgkill(2) with signal 0: anything but
/// ESRCH; a pid or tid out of range, as a scribbled slot may hold, counts as gone).
fn runner_alive(pid: u32, tid: u32) -> bool {
    if pid == 0 || tid == 0 || pid > i32::MAX as u32 || tid > i32::MAX as u32 {
        return false;
    }
    // SAFETY: tgkill(2) with signal 0 only checks that the thread exists.
    let r = unsafe { libc::syscall(libc::SYS_tgkill, pid as libc::pid_t, tid as libc::pid_t, 0) };
    r == 0 || std::io::Error::last_os_error().raw_os_error() != Some(libc::ESRCH)
}

/// The device and inode of the file at `path` (0, 0 where it cannot be read).
fn exe_identity(path: &std::ffi::CStr) -> (u64, u64) {
    // SAFETY: stat(2) into a zeroed struct of ours, with a NUL-terminated path.
    unsafe {
        let mut st: libc::stat = std::mem::zeroed();
        if libc::stat(path.as_ptr(), &mut st) != 0 {
            return (0, 0);
        }
        (st.st_dev, st.st_ino)
    }
}

/// Whether process `pid` still runs the executable it had when it was recorded (`exe`, see
/// [`exe_identity`]); where either cannot be told (another user's process), it is taken to.
fn still_runs(pid: u32, exe: (u64, u64)) -> bool {
    let Ok(path) = std::ffi::CString::new(format!("/proc/{pid}/exe")) else { return true };
    let now = exe_identity(&path);
    exe == (0, 0) || now == (0, 0) || now == exe
}

/// `CLOCK_MONOTONIC` in nanoseconds.
fn monotonic_ns() -> u64 {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: clock_gettime(2) writes the timespec it is given.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// Wakes every process waiting on `word`, a futex word of the shared mapping (futex(2)
/// FUTEX_WAKE, not a private futex: waiters are other processes).
fn wake_all(word: &AtomicU32) {
    // SAFETY: FUTEX_WAKE only reads the address of an aligned u32 that lives in the mapping.
    unsafe { libc::syscall(libc::SYS_futex, word.as_ptr(), libc::FUTEX_WAKE, i32::MAX, 0usize, 0usize, 0u32) };
}

/// Sleeps while `word` holds `value`, until woken by [`wake_all`] or for `timeout` at most
/// (futex(2) FUTEX_WAIT; returns at once if the word no longer holds `value`).
fn wait_while(word: &AtomicU32, value: u32, timeout: std::time::Duration) {
    let ts = libc::timespec { tv_sec: timeout.as_secs() as libc::time_t, tv_nsec: timeout.subsec_nanos() as libc::c_long };
    // SAFETY: FUTEX_WAIT on an aligned u32 of the mapping, with a relative timeout that lives
    // across the call.
    unsafe { libc::syscall(libc::SYS_futex, word.as_ptr(), libc::FUTEX_WAIT, value, &ts as *const libc::timespec, 0usize, 0u32) };
}

/// Where a region is mapped in this process and how long it is, copied out of it: the accessors
/// of [`ShmRegion`] (bounds and alignment checked the same way), for hot paths that make many
/// accesses in a row. The two words stay in registers, where through the region they are loaded
/// again after every atomic access.
#[derive(Clone, Copy, Debug)]
pub struct Span<'a> {
    base: *mut u8,
    size: u64,
    _region: std::marker::PhantomData<&'a ShmRegion>,
}

impl<'a> Span<'a> {
    /// The pointer for `[off, off + len)` if that lies inside the region.
    #[inline]
    pub fn ptr(self, off: u64, len: u64) -> Option<*mut u8> {
        let end = off.checked_add(len)?;
        if off == 0 || end > self.size {
            return None;
        }
        // SAFETY: off + len <= size, so the result stays inside the mapping (one past its end
        // only for an empty range).
        Some(unsafe { self.base.add(off as usize) })
    }

    /// An atomic u64 at `off` (8-aligned, inside the region).
    #[inline]
    pub fn atomic_u64(self, off: u64) -> Option<&'a AtomicU64> {
        if !off.is_multiple_of(8) {
            return None;
        }
        let p = self.ptr(off, 8)?;
        // SAFETY: inside the mapping, which outlives 'a, and aligned; AtomicU64 has no invalid
        // bit patterns and concurrent access through atomics is defined.
        Some(unsafe { &*(p as *const AtomicU64) })
    }

    /// Replaces the 16 bytes at `off` (16-aligned, inside the region: two 8-byte words, low
    /// first) with `new` if they equal `current`, in one atomic step (x86-64's
    /// `lock cmpxchg16b`, which 8-byte atomic loads and stores of either word see whole).
    /// Whether they were replaced; None for a range outside the region or misaligned, or where
    /// the CPU has no 16-byte compare-and-swap.
    #[inline]
    pub fn compare_exchange_pair(self, off: u64, current: [u64; 2], new: [u64; 2]) -> Option<bool> {
        #[cfg(target_arch = "x86_64")]
        {
            if !off.is_multiple_of(16) || !std::arch::is_x86_feature_detected!("cmpxchg16b") {
                return None;
            }
            let p = self.ptr(off, 16)? as *mut u128;
            let pair = |w: [u64; 2]| w[0] as u128 | (w[1] as u128) << 64;
            // SAFETY: the 16 bytes are inside the mapping, which outlives 'a, and 16-aligned;
            // the CPU has the instruction (checked above). Other flows touch the words only
            // through atomics, and a locked 16-byte exchange is atomic with respect to them.
            let seen = unsafe { compare_exchange_16(p, pair(current), pair(new)) };
            Some(seen == pair(current))
        }
        #[cfg(not(target_arch = "x86_64"))]
        {
            let _ = (off, current, new);
            None
        }
    }

    /// An atomic u32 at `off` (4-aligned, inside the region).
    #[inline]
    pub fn atomic_u32(self, off: u64) -> Option<&'a AtomicU32> {
        if !off.is_multiple_of(4) {
            return None;
        }
        let p = self.ptr(off, 4)?;
        // SAFETY: as for atomic_u64.
        Some(unsafe { &*(p as *const AtomicU32) })
    }

    /// The `N` bytes at `off` (8-aligned, inside the region), checked once: the words in them
    /// are then reached without further checks.
    #[inline]
    pub fn words<const N: usize>(self, off: u64) -> Option<Words<'a, N>> {
        if !off.is_multiple_of(8) {
            return None;
        }
        Some(Words { p: self.ptr(off, N as u64)?, _region: std::marker::PhantomData })
    }

    /// A lock at `off` (8-aligned, inside the region).
    #[inline]
    pub fn lock_at(self, off: u64) -> Option<&'a ShmLock> {
        if !off.is_multiple_of(8) {
            return None;
        }
        let p = self.ptr(off, std::mem::size_of::<ShmLock>() as u64)?;
        // SAFETY: inside the mapping and aligned; ShmLock is two u32s, any bits are valid.
        Some(unsafe { &*(p as *const ShmLock) })
    }
}

/// `N` bytes of a region at an 8-aligned offset, their bounds checked when made
/// ([`Span::words`]): a record's header whose fields are read one after another.
#[derive(Clone, Copy, Debug)]
pub struct Words<'a, const N: usize> {
    p: *mut u8,
    _region: std::marker::PhantomData<&'a ShmRegion>,
}

impl<'a, const N: usize> Words<'a, N> {
    /// The atomic u64 at byte `AT` (a multiple of 8, at most `N - 8`: checked when compiled).
    #[inline]
    pub fn u64_at<const AT: usize>(self) -> &'a AtomicU64 {
        const { assert!(AT.is_multiple_of(8) && AT + 8 <= N) };
        // SAFETY: `[p, p + N)` is inside the mapping (checked by `Span::words`) and `p` is
        // 8-aligned (region offsets of 8-aligned mappings); `AT + 8 <= N` and `AT` keeps the
        // alignment (checked at compile time above). Any bits are a valid AtomicU64.
        unsafe { &*(self.p.add(AT) as *const AtomicU64) }
    }

    /// The atomic u32 at byte `AT` (a multiple of 4, at most `N - 4`: checked when compiled).
    #[inline]
    pub fn u32_at<const AT: usize>(self) -> &'a AtomicU32 {
        const { assert!(AT.is_multiple_of(4) && AT + 4 <= N) };
        // SAFETY: as for `u64_at`.
        unsafe { &*(self.p.add(AT) as *const AtomicU32) }
    }
}

/// `lock cmpxchg16b` on `p`: the 16 bytes found there (`new` was stored if they were `current`).
///
/// # Safety
/// `p` is valid for reads and writes of 16 bytes, 16-aligned, accessed by others only through
/// atomics; the CPU has `cmpxchg16b`.
#[cfg(target_arch = "x86_64")]
#[inline]
unsafe fn compare_exchange_16(p: *mut u128, current: u128, new: u128) -> u128 {
    let (mut lo, mut hi) = (current as u64, (current >> 64) as u64);
    // SAFETY: the caller's contract is the instruction's (a locked read-modify-write of 16
    // aligned bytes, a full barrier). rbx is reserved by the compiler: the new low word goes
    // through it and it is restored.
    unsafe {
        std::arch::asm!(
            "xchg {new_lo}, rbx",
            "lock cmpxchg16b xmmword ptr [{p}]",
            "mov rbx, {new_lo}",
            p = in(reg) p,
            new_lo = inout(reg) new as u64 => _,
            in("rcx") (new >> 64) as u64,
            inout("rax") lo,
            inout("rdx") hi,
            options(nostack),
        );
    }
    lo as u128 | (hi as u128) << 64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pairs_are_replaced_only_when_both_words_match() {
        let r = ShmRegion::anonymous(1 << 20).unwrap();
        let off = r.alloc(32).unwrap().next_multiple_of(16);
        let span = r.span();
        span.atomic_u64(off).unwrap().store(7, Ordering::Relaxed);
        span.atomic_u64(off + 8).unwrap().store(9, Ordering::Relaxed);
        assert_eq!(span.compare_exchange_pair(off, [7, 8], [1, 2]), Some(false));
        assert_eq!(span.compare_exchange_pair(off, [6, 9], [1, 2]), Some(false));
        assert_eq!(span.compare_exchange_pair(off, [7, 9], [1, 2]), Some(true));
        assert_eq!((span.atomic_u64(off).unwrap().load(Ordering::Relaxed), span.atomic_u64(off + 8).unwrap().load(Ordering::Relaxed)), (1, 2));
        assert_eq!(span.compare_exchange_pair(off + 8, [2, 0], [0, 0]), None, "misaligned");
        assert_eq!(span.compare_exchange_pair(r.size(), [0, 0], [0, 0]), None, "outside");
    }

    #[test]
    fn alloc_free_reuse_and_full() {
        let r = ShmRegion::anonymous(8 << 20).unwrap();
        let a = r.alloc(100).unwrap();
        let b = r.alloc(100).unwrap();
        assert_ne!(a, b);
        assert_eq!(a % 16, 0);
        assert!(r.write(a, &[7; 100]));
        r.free(a);
        r.free(a); // double free is ignored
        let c = r.alloc(90).unwrap();
        assert_eq!(c, a, "same class reuses the freed block");
        let mut buf = [1u8; 90];
        assert!(r.read(c, &mut buf));
        assert_eq!(buf, [0; 90], "allocations are zeroed");
        let big = r.alloc(16 << 20);
        assert!(matches!(big, Err(ShmError::Full { .. })), "{big:?}");
        let large = r.alloc(2 << 20).unwrap();
        assert_eq!(large % 4096, 0, "large blocks are page aligned");
        r.free(large);
        assert_eq!(r.alloc(2 << 20).unwrap(), large, "a freed large block of the same size is reused");
    }

    /// A reader waiting for records wakes when one is published, long before its timeout;
    /// a record published between arming and waiting is not missed either.
    #[test]
    fn record_waiters_wake_on_publication() {
        let r = std::sync::Arc::new(ShmRegion::anonymous(MIN_SIZE).unwrap());
        let long = std::time::Duration::from_secs(60);
        // Published before the wait: the wait returns at once.
        let token = r.arm_record_wait();
        r.records_published();
        let t = std::time::Instant::now();
        r.wait_for_records(token, long);
        assert!(t.elapsed() < long / 2, "a publication between arming and waiting is seen");
        // Published while waiting, from another thread.
        let token = r.arm_record_wait();
        let p = r.clone();
        let publisher = std::thread::spawn(move || {
            std::thread::sleep(std::time::Duration::from_millis(50));
            p.records_published();
        });
        let t = std::time::Instant::now();
        r.wait_for_records(token, long);
        assert!(t.elapsed() < long / 2, "woken by the publication");
        publisher.join().unwrap();
    }

    #[test]
    fn bounds_are_checked() {
        let r = ShmRegion::anonymous(MIN_SIZE).unwrap();
        assert!(r.ptr(0, 8).is_none(), "offset 0 is null");
        assert!(r.ptr(MIN_SIZE - 4, 8).is_none());
        assert!(r.ptr(u64::MAX - 2, 8).is_none());
        assert!(r.atomic_u64(4097).is_none(), "misaligned");
    }

    #[test]
    fn object_table() {
        let r = ShmRegion::anonymous(MIN_SIZE).unwrap();
        let id1 = r.add_object(ObjectKind::Map, "counts", 4096).unwrap();
        let id2 = r.add_object(ObjectKind::Program, "a-very-long-name-".repeat(10).as_str(), 8192).unwrap();
        assert!(id2 > id1);
        let objs = r.objects();
        assert_eq!(objs.len(), 2);
        assert_eq!(objs[0].name, "counts");
        assert_eq!(objs[1].name.len(), NAME_LEN - 1);
        assert_eq!(r.remove_object(id1).unwrap().kind, ObjectKind::Map);
        assert_eq!(r.objects().len(), 1);
    }

    /// A retired block is not handed out again before its grace period (a process may still
    /// be writing it); after it, it is. A freed large block comes back cleared.
    #[test]
    fn retired_blocks_wait_for_their_grace_and_large_ones_come_back_clean() {
        let r = ShmRegion::anonymous(MIN_SIZE.max(8 << 20)).unwrap();
        let a = r.alloc(100).unwrap();
        r.retire(a);
        let b = r.alloc(100).unwrap();
        assert_ne!(a, b, "a retired block is not reused at once");
        r.reap_retired(std::time::Duration::ZERO);
        assert_eq!(r.alloc(100).unwrap(), a, "reused after its grace");
        for page_aligned in [false, true] {
            let len = 5 * PAGE + 100;
            let alloc = |r: &ShmRegion| if page_aligned { r.alloc_pages(len) } else { r.alloc(len) }.unwrap();
            let big = alloc(&r);
            assert!(r.write(big, &vec![0xabu8; len as usize]));
            let used = r.used();
            r.free(big);
            assert!(r.used() < used);
            assert_eq!(alloc(&r), big, "the same size is reused");
            let mut back = vec![1u8; len as usize];
            assert!(r.read(big, &mut back));
            assert!(back.iter().all(|&b| b == 0), "page-aligned {page_aligned}: a reused block is clean");
        }
    }

    /// A block retired after a change a runner has not taken in waits for it, however long
    /// (a traced process stopped with its probes in place), then is freed.
    #[test]
    fn retired_blocks_wait_for_every_live_runner() {
        let r = ShmRegion::anonymous(MIN_SIZE.max(8 << 20)).unwrap();
        let slot = r.register_runner(r.table_changes()).expect("a runner slot");
        let id = r.add_object(ObjectKind::Map, "m", 0).unwrap();
        r.remove_object(id).unwrap();
        let a = r.alloc(100).unwrap();
        r.retire(a);
        r.reap_retired(std::time::Duration::ZERO);
        assert_ne!(r.alloc(100).unwrap(), a, "the runner has not taken the removal in");
        r.caught_up(slot, r.table_changes());
        r.reap_retired(std::time::Duration::ZERO);
        assert_eq!(r.alloc(100).unwrap(), a, "freed once it has");
    }

    /// Thousands of objects (a bpftrace wildcard probe's links): the table grows past the
    /// header's chunk, another process's mapping sees every one, and freed entries are reused
    /// before the table grows again.
    #[test]
    fn the_object_table_grows_in_chunks() {
        let name = format!("bpftime-test-table-{}", std::process::id());
        let _ = ShmRegion::remove(&name);
        let r = ShmRegion::create(&name, 8 << 20).unwrap();
        let n = 3 * TABLE_CHUNK as usize - 100;
        let ids: Vec<u32> = (0..n).map(|i| r.add_object(ObjectKind::Link, &format!("link-{i}"), 64 + i as u64).unwrap()).collect();
        let other = ShmRegion::open(&name).unwrap();
        let seen = other.objects();
        assert_eq!(seen.len(), n);
        assert_eq!(seen.iter().map(|o| o.id).collect::<std::collections::BTreeSet<_>>().len(), n, "ids unique");
        assert_eq!(other.object(ids[n - 1]).unwrap().name, format!("link-{}", n - 1));
        let chunks = |r: &ShmRegion| (0..TABLE_CHUNKS).filter(|&c| r.chunk_at(c).is_some()).count();
        assert_eq!(chunks(&other), 3);
        for &id in ids.iter().step_by(2) {
            r.remove_object(id).unwrap();
        }
        let used = r.used();
        for i in 0..n / 2 {
            r.add_object(ObjectKind::Link, &format!("again-{i}"), 1).unwrap();
        }
        assert_eq!((chunks(&r), r.used()), (3, used), "freed entries reused, nothing allocated");
        assert_eq!(other.objects().len(), n);
        ShmRegion::remove(&name).unwrap();
    }

    #[test]
    fn named_create_open_remove() {
        let name = format!("bpftime-test-{}", std::process::id());
        let _ = ShmRegion::remove(&name);
        assert!(matches!(ShmRegion::open(&name), Err(ShmError::Missing(_))));
        let r = ShmRegion::create(&name, MIN_SIZE).unwrap();
        let id = r.add_object(ObjectKind::Map, "m", 64).unwrap();
        assert!(matches!(ShmRegion::create(&name, MIN_SIZE), Err(ShmError::Exists(_))));
        let r2 = ShmRegion::open(&name).unwrap();
        assert_eq!(r2.object(id).unwrap().name, "m");
        let mode = std::fs::metadata(path_of(&name)).unwrap();
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(mode.permissions().mode() & 0o777, 0o600);
        ShmRegion::remove(&name).unwrap();
        assert!(matches!(ShmRegion::open(&name), Err(ShmError::Missing(_))));
        assert!(matches!(ShmRegion::open("../etc/passwd"), Err(ShmError::BadName(_))));
    }

    #[test]
    fn foreign_files_and_versions_are_refused() {
        let name = format!("bpftime-test-foreign-{}", std::process::id());
        std::fs::write(path_of(&name), vec![0u8; 2 << 20]).unwrap();
        assert!(matches!(ShmRegion::open(&name), Err(ShmError::Untrusted { .. })), "mode 0644 is refused");
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(path_of(&name), std::fs::Permissions::from_mode(0o600)).unwrap();
        assert!(matches!(ShmRegion::open(&name), Err(ShmError::NotARegion(_))));
        let _ = std::fs::remove_file(path_of(&name));
        let r = ShmRegion::create(&name, MIN_SIZE).unwrap();
        // Pretend a future layout.
        // SAFETY: test-only write of the version field of our own fresh region.
        unsafe { (*(r.base() as *mut Header)).version = 99 };
        assert!(matches!(ShmRegion::open(&name), Err(ShmError::IncompatibleVersion { found: 99, .. })));
        ShmRegion::remove(&name).unwrap();
    }

    #[test]
    fn trust_rules() {
        use std::os::unix::fs::PermissionsExt;
        let dir = std::env::temp_dir().join(format!("bpftime-trust-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("r");
        std::fs::write(&file, b"x").unwrap();
        let me = Trust::from_env().euid;
        let mode = |m: u32| {
            std::fs::set_permissions(&file, std::fs::Permissions::from_mode(m)).unwrap();
            std::fs::metadata(&file).unwrap()
        };
        let mine = Trust { euid: me, group: false };
        assert_eq!(mine.check(&mode(0o600)), Ok(()));
        assert_eq!(mine.check(&mode(0o400)), Ok(()));
        let e = mine.check(&mode(0o660)).unwrap_err();
        assert!(e.contains("BPFTIME_SHM_GROUP=1"), "{e}");
        assert_eq!(Trust { euid: me, group: true }.check(&mode(0o660)), Ok(()));
        let e = Trust { euid: me, group: true }.check(&mode(0o606)).unwrap_err();
        assert!(e.contains("every user"), "{e}");
        let e = Trust { euid: me + 1, group: false }.check(&mode(0o600)).unwrap_err();
        assert!(e.contains(&format!("owned by uid {me}")), "{e}");
        if me == 0 {
            // A root-owned region is trusted by another user only in group mode.
            assert_eq!(Trust { euid: 1000, group: true }.check(&mode(0o660)), Ok(()));
            assert!(Trust { euid: 1000, group: false }.check(&mode(0o600)).is_err());
        }
        let e = mine.check(&std::fs::metadata(&dir).unwrap()).unwrap_err();
        assert!(e.contains("directory"), "{e}");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn links_fifos_and_foreign_modes_are_refused_at_open() {
        use std::os::unix::fs::PermissionsExt;
        let name = format!("bpftime-test-untrusted-{}", std::process::id());
        let path = path_of(&name);
        // A symbolic link planted in /dev/shm.
        std::os::unix::fs::symlink("/etc/passwd", &path).unwrap();
        let e = ShmRegion::open(&name).unwrap_err();
        assert!(matches!(e, ShmError::Untrusted { .. }) && e.to_string().contains("symbolic link"), "{e}");
        std::fs::remove_file(&path).unwrap();
        // A FIFO must not block the opener.
        let c = std::ffi::CString::new(path.to_str().unwrap()).unwrap();
        // SAFETY: mkfifo(3) with a NUL-terminated path.
        assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
        let e = ShmRegion::open(&name).unwrap_err();
        assert!(e.to_string().contains("FIFO"), "{e}");
        std::fs::remove_file(&path).unwrap();
        // A real region made world-writable.
        drop(ShmRegion::create(&name, MIN_SIZE).unwrap());
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o666)).unwrap();
        let e = ShmRegion::open(&name).unwrap_err();
        assert!(e.to_string().contains("every user"), "{e}");
        ShmRegion::remove(&name).unwrap();
    }

    #[test]
    fn scribbled_allocator_state_is_survived() {
        let r = ShmRegion::anonymous(MIN_SIZE).unwrap();
        let a = r.alloc(100).unwrap();
        r.free(a);
        // SAFETY: test-only writes into our own private region's header.
        let h = unsafe { &*(r.base() as *const Header) };
        // A free list pointing into the header, a looping large list, a wild frontier.
        h.free[2].store(8, Ordering::Relaxed);
        let big = r.alloc(2 << 16).unwrap();
        r.free(big);
        r.write(big, &(big - BLOCK_HEADER).to_le_bytes());
        assert!(r.alloc(100).is_ok());
        assert!(r.alloc(3 << 16).is_ok(), "a looping large list ends the walk");
        h.bump.store(u64::MAX - 3, Ordering::Relaxed);
        assert!(matches!(r.alloc(1 << 16), Err(ShmError::Full { .. })));
        h.trace_off.store(r.size() - 8, Ordering::Relaxed);
        assert_eq!(r.existing_trace_ring(4096), None);
    }
}
