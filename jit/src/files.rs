//! The code cache's directory, held open: entries are opened, created, renamed and removed
//! relative to it, so the directory checked when the cache was opened is the one used,
//! whatever later happens to its path (removed and replaced by a link, say). Entries are never
//! followed if they are links, and opening one never blocks (a FIFO).
//!
//! See openat(2) <https://man7.org/linux/man-pages/man2/openat.2.html>, renameat(2)
//! <https://man7.org/linux/man-pages/man2/renameat.2.html> and unlinkat(2).

use std::ffi::CString;
use std::fs::{File, Metadata};
use std::io;
use std::os::fd::{AsRawFd, FromRawFd};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

/// An open directory, used only while its descriptor is still that directory: the traced
/// application may close every descriptor it did not open itself (daemons do, with
/// `close_range`) and get the number back for one of its own, and then nothing is created or
/// removed through it, and it is never closed by us.
pub(crate) struct Dir {
    fd: libc::c_int,
    /// What it is (device, inode), from when it was opened.
    id: (u64, u64),
}

fn c_name(name: &str) -> io::Result<CString> {
    if name.contains('/') {
        return Err(io::Error::new(io::ErrorKind::InvalidInput, "a name, not a path"));
    }
    CString::new(name).map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "NUL in a name"))
}

fn fd_result(fd: libc::c_int) -> io::Result<File> {
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: a file descriptor just returned to us, owned by nobody else.
    Ok(unsafe { File::from_raw_fd(fd) })
}

/// Lowest descriptor number a long-lived descriptor of ours takes.
const HIGH_FD: libc::c_int = 900;

/// `file` moved to a descriptor number at or above [`HIGH_FD`] where the limit allows: the
/// traced application then gets the numbers it gets without us (its first `open` is fd 3).
/// See fcntl(2) `F_DUPFD_CLOEXEC` <https://man7.org/linux/man-pages/man2/fcntl.2.html>.
fn above_application_fds(file: File) -> File {
    // SAFETY: fcntl(2) on a descriptor we own; the new descriptor is owned by nobody else.
    let high = unsafe { libc::fcntl(file.as_raw_fd(), libc::F_DUPFD_CLOEXEC, HIGH_FD) };
    fd_result(high).unwrap_or(file)
}

impl Dir {
    /// Opens the directory at `path` (not a link to one) and says what it is.
    pub(crate) fn open(path: &Path) -> io::Result<(Dir, Metadata)> {
        let c = CString::new(path.as_os_str().as_bytes()).map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "NUL in a path"))?;
        // SAFETY: open(2) of a NUL-terminated path; the result is checked.
        let dir = above_application_fds(fd_result(unsafe { libc::open(c.as_ptr(), libc::O_RDONLY | libc::O_DIRECTORY | libc::O_NOFOLLOW | libc::O_CLOEXEC) })?);
        let meta = dir.metadata()?;
        use std::os::fd::IntoRawFd;
        use std::os::unix::fs::MetadataExt;
        Ok((Dir { id: (meta.dev(), meta.ino()), fd: dir.into_raw_fd() }, meta))
    }

    /// The descriptor, if it is still this directory's.
    fn fd(&self) -> io::Result<libc::c_int> {
        // SAFETY: a zeroed `stat` is a valid value (integers); fstat below fills it.
        let mut st: libc::stat = unsafe { std::mem::zeroed() };
        // SAFETY: fstat(2) with a valid out pointer; a closed descriptor only fails.
        let stated = unsafe { libc::fstat(self.fd, &mut st) } == 0;
        if stated && (st.st_dev, st.st_ino) == self.id {
            Ok(self.fd)
        } else {
            Err(io::Error::other("the code cache's directory descriptor was closed by the application"))
        }
    }

    /// Opens entry `name` for reading.
    pub(crate) fn open_entry(&self, name: &str) -> io::Result<File> {
        let c = c_name(name)?;
        // SAFETY: openat(2) relative to our directory fd with a NUL-terminated name.
        fd_result(unsafe { libc::openat(self.fd()?, c.as_ptr(), libc::O_RDONLY | libc::O_NOFOLLOW | libc::O_NONBLOCK | libc::O_CLOEXEC) })
    }

    /// Creates entry `name`, which must not exist, for writing, with `mode` (less the umask).
    pub(crate) fn create_new(&self, name: &str, mode: libc::mode_t) -> io::Result<File> {
        let c = c_name(name)?;
        let flags = libc::O_WRONLY | libc::O_CREAT | libc::O_EXCL | libc::O_NOFOLLOW | libc::O_CLOEXEC;
        // SAFETY: as above; O_CREAT takes the mode as the third argument.
        fd_result(unsafe { libc::openat(self.fd()?, c.as_ptr(), flags, mode as libc::c_uint) })
    }

    /// Renames entry `from` to `to`, replacing `to`.
    pub(crate) fn rename(&self, from: &str, to: &str) -> io::Result<()> {
        let (f, t) = (c_name(from)?, c_name(to)?);
        let fd = self.fd()?;
        // SAFETY: renameat(2) within our directory with NUL-terminated names.
        if unsafe { libc::renameat(fd, f.as_ptr(), fd, t.as_ptr()) } == 0 {
            Ok(())
        } else {
            Err(io::Error::last_os_error())
        }
    }

    /// The entries (names and what they are, links not followed), through `/proc/self/fd`:
    /// this directory, whatever its path has become.
    pub(crate) fn entries(&self) -> io::Result<Vec<(String, Metadata)>> {
        let mut out = vec![];
        for e in std::fs::read_dir(format!("/proc/self/fd/{}", self.fd()?))? {
            let e = e?;
            if let (Ok(name), Ok(meta)) = (e.file_name().into_string(), e.metadata()) {
                out.push((name, meta));
            }
        }
        Ok(out)
    }

    /// Removes entry `name`.
    pub(crate) fn remove(&self, name: &str) -> io::Result<()> {
        let c = c_name(name)?;
        // SAFETY: unlinkat(2) within our directory with a NUL-terminated name.
        if unsafe { libc::unlinkat(self.fd()?, c.as_ptr(), 0) } == 0 {
            Ok(())
        } else {
            Err(io::Error::last_os_error())
        }
    }
}

impl Drop for Dir {
    fn drop(&mut self) {
        if let Ok(fd) = self.fd() {
            // SAFETY: our own descriptor, still this directory.
            unsafe { libc::close(fd) };
        }
    }
}
