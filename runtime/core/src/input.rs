//! Reading program files that a user (or an environment variable) names, without trusting
//! what the path is: `/dev/zero` would be read until memory runs out, a FIFO would block the
//! traced application forever. Only regular files are read, up to [`MAX_INPUT`] bytes.

use std::io::Read;
use std::os::unix::fs::{FileTypeExt, OpenOptionsExt};
use std::path::Path;

/// The largest program file read (an object with a large BTF section is a few MiB).
pub const MAX_INPUT: u64 = 256 << 20;

/// Why an input file was not read.
#[derive(Debug, thiserror::Error)]
pub enum InputError {
    #[error("{path}: {source}")]
    Io { path: String, source: std::io::Error },
    #[error("{path}: not a regular file ({kind}); give the path of an eBPF object or bytecode file")]
    NotRegular { path: String, kind: &'static str },
    #[error("{path}: larger than {max} bytes; not an eBPF program file")]
    TooLarge { path: String, max: u64 },
}

/// Reads the regular file at `path` (at most [`MAX_INPUT`] bytes).
pub fn read_program_file(path: &Path) -> Result<Vec<u8>, InputError> {
    read_regular_file(path, MAX_INPUT)
}

/// Reads the regular file at `path`, refusing anything else (device, FIFO, socket, directory)
/// and files longer than `max` bytes. Opening never blocks (`O_NONBLOCK`), and the type is
/// checked on the opened file, so a path swapped between check and read cannot slip through.
pub fn read_regular_file(path: &Path, max: u64) -> Result<Vec<u8>, InputError> {
    read_file(path, max, 0).map(|(bytes, _)| bytes)
}

/// [`read_regular_file`] with extra open flags, and the file's metadata.
fn read_file(path: &Path, max: u64, flags: libc::c_int) -> Result<(Vec<u8>, std::fs::Metadata), InputError> {
    let shown = || path.display().to_string();
    let io = |source| InputError::Io { path: shown(), source };
    let file = std::fs::OpenOptions::new().read(true).custom_flags(libc::O_NONBLOCK | libc::O_CLOEXEC | flags).open(path).map_err(io)?;
    let meta = file.metadata().map_err(io)?;
    let ft = meta.file_type();
    if !ft.is_file() {
        let kind = if ft.is_dir() {
            "a directory"
        } else if ft.is_fifo() {
            "a FIFO"
        } else if ft.is_char_device() || ft.is_block_device() {
            "a device"
        } else if ft.is_socket() {
            "a socket"
        } else {
            "not a plain file"
        };
        return Err(InputError::NotRegular { path: shown(), kind });
    }
    if meta.len() > max {
        return Err(InputError::TooLarge { path: shown(), max });
    }
    let mut bytes = Vec::with_capacity(meta.len() as usize);
    // The file may grow while we read: never take more than `max` bytes.
    file.take(max + 1).read_to_end(&mut bytes).map_err(io)?;
    if bytes.len() as u64 > max {
        return Err(InputError::TooLarge { path: shown(), max });
    }
    Ok((bytes, meta))
}

/// An object file as read by [`read_object_file`].
pub struct ObjectFile {
    /// The eBPF object.
    pub object: bpftime_object::Object,
    /// Its machine code, when the file is an ahead-of-time object whose code may be run.
    pub aot: Option<bpftime_jit::aot::AotObject>,
    /// What to tell the user: an ahead-of-time object whose code is not used, and why.
    pub note: Option<String>,
}

/// Reads an eBPF object file, or an ahead-of-time object (`bpftime aot compile`). Machine code
/// runs unverified in every traced process, so an ahead-of-time object's code is taken only
/// when asked for (`native`: `--aot`, `BPFTIME_AOT=1`) and the file is trusted as code is: not
/// a link, owned by this user or root, writable by no one else. Otherwise the eBPF object it
/// carries is used (verified and compiled like any), and `note` says so. Load the result with
/// [`Runtime::load_object_with`](crate::Runtime::load_object_with).
pub fn read_object_file(path: &Path, native: bool) -> Result<ObjectFile, String> {
    use std::os::unix::fs::MetadataExt;
    let shown = path.display();
    let (bytes, meta) = read_file(path, MAX_INPUT, if native { libc::O_NOFOLLOW } else { 0 }).map_err(|e| e.to_string())?;
    let parse = |b: &[u8]| bpftime_object::Object::parse(b).map_err(|e| format!("{shown}: {e}"));
    let Some(aot) = bpftime_jit::aot::read(&bytes).map_err(|e| format!("{shown}: {e}"))? else {
        return Ok(ObjectFile { object: parse(&bytes)?, aot: None, note: None });
    };
    let object = parse(&aot.bpf_object)?;
    if !native {
        let note = format!("{shown} is an ahead-of-time object: its eBPF object is verified and compiled here (--aot or BPFTIME_AOT=1 runs its machine code)");
        return Ok(ObjectFile { object, aot: None, note: Some(note) });
    }
    // SAFETY: geteuid(2) cannot fail.
    let me = unsafe { libc::geteuid() };
    if (meta.uid() != me && meta.uid() != 0) || meta.mode() & 0o022 != 0 {
        return Err(format!(
            "{shown}: machine code is run only from files owned by you or root that no one else may write (owner uid {}, mode {:04o})",
            meta.uid(),
            meta.mode() & 0o7777
        ));
    }
    Ok(ObjectFile { object, aot: Some(aot), note: None })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn devices_fifos_directories_and_large_files_are_refused() {
        let e = read_program_file(Path::new("/dev/zero")).unwrap_err();
        assert!(e.to_string().contains("not a regular file (a device)"), "{e}");
        let e = read_program_file(Path::new("/tmp")).unwrap_err();
        assert!(e.to_string().contains("a directory"), "{e}");
        let dir = std::env::temp_dir().join(format!("bpftime-input-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let fifo = dir.join("fifo");
        let c = std::ffi::CString::new(fifo.to_str().unwrap()).unwrap();
        // SAFETY: mkfifo(3) with a NUL-terminated path.
        assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
        let e = read_program_file(&fifo).unwrap_err();
        assert!(e.to_string().contains("a FIFO"), "{e}");
        let big = dir.join("big");
        std::fs::write(&big, vec![0u8; 100]).unwrap();
        assert!(matches!(read_regular_file(&big, 99), Err(InputError::TooLarge { .. })));
        assert_eq!(read_regular_file(&big, 100).unwrap().len(), 100);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
