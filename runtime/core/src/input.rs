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
    let shown = || path.display().to_string();
    let io = |source| InputError::Io { path: shown(), source };
    let file = std::fs::OpenOptions::new().read(true).custom_flags(libc::O_NONBLOCK | libc::O_CLOEXEC).open(path).map_err(io)?;
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
    Ok(bytes)
}

/// An eBPF object, or an ahead-of-time object (`bpftime aot compile`) with the eBPF object it
/// carries: `(object, Some(aot))`. Load it with [`Runtime::load_object_with`](crate::Runtime::load_object_with).
pub fn parse_object(bytes: &[u8]) -> Result<(bpftime_object::Object, Option<bpftime_jit::aot::AotObject>), String> {
    match bpftime_jit::aot::read(bytes).map_err(|e| e.to_string())? {
        Some(aot) => Ok((bpftime_object::Object::parse(&aot.bpf_object).map_err(|e| format!("the eBPF object inside: {e}"))?, Some(aot))),
        None => Ok((bpftime_object::Object::parse(bytes).map_err(|e| e.to_string())?, None)),
    }
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
