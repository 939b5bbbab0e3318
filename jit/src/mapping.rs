//! Mapping linked code into this process: the code read-only and executable, its import table
//! right after it (the code reaches the table PC-relatively) read-only once filled. No page
//! is ever writable and executable at once.
//!
//! See mmap(2) <https://man7.org/linux/man-pages/man2/mmap.2.html> and mprotect(2)
//! <https://man7.org/linux/man-pages/man2/mprotect.2.html>.

use std::fs::File;
use std::io;
use std::os::fd::AsRawFd;

/// The system's page size.
pub(crate) fn page_size() -> usize {
    // SAFETY: sysconf reads a constant of the system and has no preconditions.
    let n = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    if n > 0 {
        n as usize
    } else {
        4096
    }
}

/// Code and its import table, mapped; unmapped on drop.
pub(crate) struct CodeMapping {
    base: *mut u8,
    len: usize,
    code_len: usize,
}

fn check(rc: libc::c_int) -> io::Result<()> {
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

impl CodeMapping {
    /// Reserves `table_offset` bytes for code and a table of `slots` words after it, nothing
    /// accessible yet.
    fn reserve(table_offset: usize, slots: usize) -> io::Result<CodeMapping> {
        let page = page_size();
        if table_offset == 0 || !table_offset.is_multiple_of(page) {
            return Err(io::Error::new(io::ErrorKind::InvalidData, format!("code size {table_offset} is not a multiple of the page size {page}")));
        }
        let len = table_offset + (slots * 8).max(1).next_multiple_of(page);
        // SAFETY: a fresh anonymous mapping at an address of the kernel's choosing; it
        // aliases nothing.
        let base = unsafe { libc::mmap(std::ptr::null_mut(), len, libc::PROT_NONE, libc::MAP_PRIVATE | libc::MAP_ANONYMOUS, -1, 0) };
        if base == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        Ok(CodeMapping { base: base as *mut u8, len, code_len: table_offset })
    }

    /// Fills the table with `values` and makes it read-only.
    fn fill_table(&mut self, values: &[u64]) -> io::Result<()> {
        let table = self.code_len;
        // SAFETY: `[table, len)` lies inside our reservation, which nothing else uses.
        check(unsafe { libc::mprotect(self.base.add(table) as *mut _, self.len - table, libc::PROT_READ | libc::PROT_WRITE) })?;
        for (i, v) in values.iter().enumerate() {
            // SAFETY: slot i is inside the table part (sized for `values` in `reserve`),
            // now writable, and 8-aligned (page-aligned start).
            unsafe { (self.base.add(table) as *mut u64).add(i).write(*v) };
        }
        // SAFETY: as above.
        check(unsafe { libc::mprotect(self.base.add(table) as *mut _, self.len - table, libc::PROT_READ) })
    }

    /// Copies `code` (at most `table_offset` bytes) and maps it executable, with `values` in
    /// the table after it.
    pub(crate) fn from_bytes(code: &[u8], table_offset: usize, values: &[u64]) -> io::Result<CodeMapping> {
        if code.len() > table_offset {
            return Err(io::Error::new(io::ErrorKind::InvalidData, "code overlaps its table"));
        }
        let mut m = Self::reserve(table_offset, values.len())?;
        // SAFETY: the code part of our reservation: writable while we copy, executable after,
        // never both.
        unsafe {
            check(libc::mprotect(m.base as *mut _, table_offset, libc::PROT_READ | libc::PROT_WRITE))?;
            std::ptr::copy_nonoverlapping(code.as_ptr(), m.base, code.len());
            check(libc::mprotect(m.base as *mut _, table_offset, libc::PROT_READ | libc::PROT_EXEC))?;
        }
        m.fill_table(values)?;
        Ok(m)
    }

    /// Maps the first `table_offset` bytes of `file` (code) read-only and executable, shared
    /// with every process that maps it, with `values` in a private table after it.
    pub(crate) fn from_file(file: &File, table_offset: usize, values: &[u64]) -> io::Result<CodeMapping> {
        let mut m = Self::reserve(table_offset, values.len())?;
        // SAFETY: replaces the code part of our own reservation (MAP_FIXED inside it) with a
        // read-only view of the file; the file's later changes cannot make it writable.
        let p =
            unsafe { libc::mmap(m.base as *mut _, table_offset, libc::PROT_READ | libc::PROT_EXEC, libc::MAP_PRIVATE | libc::MAP_FIXED, file.as_raw_fd(), 0) };
        if p == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        m.fill_table(values)?;
        Ok(m)
    }

    /// The address of byte `offset` of the code.
    pub(crate) fn code_at(&self, offset: usize) -> *const u8 {
        debug_assert!(offset < self.code_len);
        self.base.wrapping_add(offset)
    }

    /// Bytes of code (page-rounded).
    pub(crate) fn code_len(&self) -> usize {
        self.code_len
    }
}

// SAFETY: the code is read-only and executable and the table read-only once made: nothing
// writes through the mapping after construction; `Drop` (unmapping) needs the last owner.
unsafe impl Send for CodeMapping {}
// SAFETY: see `Send`: shared use only reads.
unsafe impl Sync for CodeMapping {}

/// Mappings of code cache entries in this process, by entry name and import table: programs
/// with the same code and the same imports (a bpftrace wildcard loads one program per probe,
/// each the same) share one mapping, not two mappings of their own each (a thousand probes
/// made `/proc/self/maps`, which each attach reads, thousands of lines long).
type SharedMappings = std::collections::HashMap<(String, Vec<u64>), std::sync::Weak<CodeMapping>>;

static SHARED: std::sync::Mutex<Option<SharedMappings>> = std::sync::Mutex::new(None);

/// The mapping of entry `name` with import table `values`: one already made in this process
/// where one lives, else `make`'s, kept for the next.
pub(crate) fn shared(name: &str, values: &[u64], make: impl FnOnce() -> io::Result<CodeMapping>) -> io::Result<std::sync::Arc<CodeMapping>> {
    let mut guard = SHARED.lock().unwrap_or_else(|e| e.into_inner());
    let map = guard.get_or_insert_with(Default::default);
    let key = (name.to_string(), values.to_vec());
    if let Some(m) = map.get(&key).and_then(std::sync::Weak::upgrade) {
        return Ok(m);
    }
    let m = std::sync::Arc::new(make()?);
    // Dead entries are swept out each time the table's size reaches a power of two (64 on).
    if map.len() >= 64 && map.len().is_power_of_two() {
        map.retain(|_, w| w.strong_count() > 0);
    }
    map.insert(key, std::sync::Arc::downgrade(&m));
    Ok(m)
}

impl Drop for CodeMapping {
    fn drop(&mut self) {
        // SAFETY: our own mapping; its owner (a JitProgram) runs no code from it any more.
        unsafe { libc::munmap(self.base as *mut _, self.len) };
    }
}
