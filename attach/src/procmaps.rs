//! `/proc/self/maps`: which files are mapped where.

/// One line of `/proc/self/maps`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Mapping {
    /// First address.
    pub start: u64,
    /// One past the last address.
    pub end: u64,
    /// Permissions, e.g. `r-xp`.
    pub perms: String,
    /// Offset in the file of `start`.
    pub offset: u64,
    /// The file's device, as `major:minor` in hex (`00:00` for anonymous memory).
    pub dev: String,
    /// The file's inode (0 for anonymous memory).
    pub inode: u64,
    /// Path of the file (empty for anonymous memory).
    pub path: String,
}

/// A batch of work on one thread that takes the maps as read at its start
/// ([`with_one_read`]).
struct Batch {
    tid: i32,
    /// Which batch (from [`BATCHES`]): see [`due_in_batch`].
    seq: u64,
    maps: std::sync::Arc<Vec<Mapping>>,
}

/// The batches under way, on whichever threads.
static BATCHES_ON: std::sync::Mutex<Vec<Batch>> = std::sync::Mutex::new(Vec::new());
/// Batches begun.
static BATCHES: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

/// The calling thread's batch: its number and maps. None outside one, and when the list is
/// busy: a signal handler (a system call site rewritten from SIGSYS) never waits for it, it
/// reads the maps afresh.
fn current_batch() -> Option<(u64, std::sync::Arc<Vec<Mapping>>)> {
    // SAFETY: gettid has no preconditions.
    let me = unsafe { libc::gettid() };
    let on = BATCHES_ON.try_lock().ok()?;
    on.iter().rev().find(|b| b.tid == me).map(|b| (b.seq, b.maps.clone()))
}

/// Parses the maps of this process (as read at the start of the calling thread's
/// [`with_one_read`], inside one).
pub fn mappings() -> std::sync::Arc<Vec<Mapping>> {
    match current_batch() {
        Some((_, maps)) => maps,
        None => std::sync::Arc::new(read("/proc/self/maps")),
    }
}

/// Runs `f` with the calling thread's reads of this process's maps answered from one read made
/// now: attaching a thousand probes read them thousands of times, each read longer than the
/// last (the kernel formats every mapping, and the probes' stubs add some), which took most of
/// the seconds a bpftrace wildcard probe on libc cost a process at start. What `f` does itself
/// (stub pages) is anonymous memory it does not look up; a library mapped by another thread
/// meanwhile is seen by the next read (a probe on it waits for its `dlopen`, as before).
pub fn with_one_read<R>(f: impl FnOnce() -> R) -> R {
    // SAFETY: gettid has no preconditions.
    let tid = unsafe { libc::gettid() };
    let seq = BATCHES.fetch_add(1, std::sync::atomic::Ordering::Relaxed) + 1;
    let batch = Batch { tid, seq, maps: std::sync::Arc::new(read("/proc/self/maps")) };
    /// Takes this batch off the list, also when `f` panics (other threads' stay).
    struct Done(u64);
    impl Drop for Done {
        fn drop(&mut self) {
            BATCHES_ON.lock().unwrap_or_else(|e| e.into_inner()).retain(|b| b.seq != self.0);
        }
    }
    BATCHES_ON.lock().unwrap_or_else(|e| e.into_inner()).push(batch);
    let _done = Done(seq);
    f()
}

/// Whether work that depends only on which files are mapped where is due now: always outside
/// a [`with_one_read`] batch, and once per batch inside one (`done` remembers which batch did
/// it last).
pub fn due_in_batch(done: &std::sync::atomic::AtomicU64) -> bool {
    match current_batch() {
        Some((seq, _)) => done.swap(seq, std::sync::atomic::Ordering::AcqRel) != seq,
        None => true,
    }
}

/// Parses the maps of process `pid` (ptrace access mode is needed to read them).
pub fn mappings_of_process(pid: u32) -> Vec<Mapping> {
    read(&format!("/proc/{pid}/maps"))
}

/// This process's maps as they are now, read afresh even inside a batch (where free address
/// space is looked for).
pub(crate) fn read_fresh() -> Vec<Mapping> {
    read("/proc/self/maps")
}

fn read(path: &str) -> Vec<Mapping> {
    std::fs::read_to_string(path).unwrap_or_default().lines().filter_map(parse_line).collect()
}

fn parse_line(line: &str) -> Option<Mapping> {
    let mut f = line.split_whitespace();
    let (range, perms, offset) = (f.next()?, f.next()?, f.next()?);
    let dev = f.next()?.to_string();
    let inode = f.next()?.parse().ok()?;
    let path = f.collect::<Vec<_>>().join(" ");
    let (s, e) = range.split_once('-')?;
    Some(Mapping {
        start: u64::from_str_radix(s, 16).ok()?,
        end: u64::from_str_radix(e, 16).ok()?,
        perms: perms.to_string(),
        offset: u64::from_str_radix(offset, 16).ok()?,
        dev,
        inode,
        path,
    })
}

/// The mapping holding `addr`.
pub fn mapping_of(addr: u64) -> Option<Mapping> {
    mappings().iter().find(|m| m.start <= addr && addr < m.end).cloned()
}

/// Opens file `path` for reading; where its directory is closed to this process (one that gave
/// up root after it started, its executable in a directory only root may enter), the
/// executable is still opened through `/proc/self/exe`, a link the kernel follows without
/// looking at the directories on the way.
pub fn open_path(path: &str) -> std::io::Result<std::fs::File> {
    match std::fs::File::open(path) {
        Err(e) if e.kind() == std::io::ErrorKind::PermissionDenied => {
            let exe = std::fs::read_link("/proc/self/exe").map_err(|_| std::io::Error::from(e.kind()))?;
            if exe.as_os_str() == path {
                std::fs::File::open("/proc/self/exe")
            } else {
                Err(e)
            }
        }
        r => r,
    }
}

/// What file `path` is (stat(2)), through [`open_path`] where its directory is closed.
pub fn metadata_of_path(path: &str) -> std::io::Result<std::fs::Metadata> {
    match std::fs::metadata(path) {
        Err(e) if e.kind() == std::io::ErrorKind::PermissionDenied => open_path(path)?.metadata(),
        r => r,
    }
}

/// The file mapped by `m`, if it is still the one mapped (same device and inode).
pub fn open_mapped_file(m: &Mapping) -> Option<std::fs::File> {
    use std::os::unix::fs::MetadataExt;
    if m.inode == 0 || !m.path.starts_with('/') {
        return None;
    }
    let file = open_path(&m.path).ok()?;
    let meta = file.metadata().ok()?;
    let (major, minor) = m.dev.split_once(':')?;
    let dev = libc::makedev(u32::from_str_radix(major, 16).ok()?, u32::from_str_radix(minor, 16).ok()?);
    (meta.ino() == m.inode && meta.dev() == dev).then_some(file)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_lines() {
        let m = parse_line("7f0000001000-7f0000002000 r-xp 00001000 fd:01 1234   /usr/lib/libc.so.6").unwrap();
        assert_eq!((m.start, m.end, m.offset), (0x7f00_0000_1000, 0x7f00_0000_2000, 0x1000));
        assert_eq!(m.path, "/usr/lib/libc.so.6");
        assert_eq!((m.dev.as_str(), m.inode), ("fd:01", 1234));
        assert!(parse_line("garbage").is_none());
        assert!(!mappings().is_empty());
    }
}
