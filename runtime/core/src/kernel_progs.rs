//! Programs of the kernel that a PROG_ARRAY names (bpftime's userspace-to-kernel tail call: a
//! loader stores a kernel program's fd in the array, the syscall server keeps its kernel id
//! with [`bpftime_maps::KERNEL_PROGRAM`]). A tail call into one runs it in the kernel with
//! `BPF_PROG_TEST_RUN` on the first [`CTX_BYTES`] bytes of the caller's context (the kernel
//! test-runs raw tracepoint programs, bpftime's loaders load them so under `BPFTIME_USED`);
//! its return value ends the chain, as a tail call's target does.
//!
//! See bpf(2) and the kernel's `union bpf_attr` (`BPF_PROG_GET_FD_BY_ID`, `BPF_PROG_TEST_RUN`).

use bpftime_maps::Errno;
use std::collections::HashMap;
use std::os::fd::{FromRawFd, OwnedFd};
use std::sync::{Mutex, OnceLock};

/// Context bytes handed to the kernel program (bpftime hands 64).
pub const CTX_BYTES: usize = 64;

const BPF_PROG_TEST_RUN: i64 = 10;
const BPF_PROG_GET_FD_BY_ID: i64 = 13;

/// `bpf(cmd, attr)`: the result, or the errno.
fn bpf(cmd: i64, attr: &mut [u8; 80]) -> Result<i64, Errno> {
    // SAFETY: bpf(2) reads and writes at most `attr.len()` bytes of `attr`, which lives for
    // the call; the commands used here take no other pointers but those set in `attr`, which
    // point at live buffers of the sizes given.
    let r = unsafe { libc::syscall(libc::SYS_bpf, cmd, attr.as_mut_ptr(), attr.len() as u32) };
    if r < 0 {
        Err(Errno(std::io::Error::last_os_error().raw_os_error().unwrap_or(libc::EINVAL)))
    } else {
        Ok(r)
    }
}

/// This process's fds of kernel programs, by kernel id (opened once: a tail call is a hot path).
fn fds() -> &'static Mutex<HashMap<u32, OwnedFd>> {
    static FDS: OnceLock<Mutex<HashMap<u32, OwnedFd>>> = OnceLock::new();
    FDS.get_or_init(Mutex::default)
}

/// Runs kernel program `id` on `ctx` (cut or zero-padded to [`CTX_BYTES`]): its return value.
pub fn run(id: u32, ctx: &[u8]) -> Result<u64, Errno> {
    let mut fds = fds().lock().unwrap_or_else(|e| e.into_inner());
    let fd = match fds.get(&id) {
        Some(fd) => std::os::fd::AsRawFd::as_raw_fd(fd),
        None => {
            let mut attr = [0u8; 80];
            attr[..4].copy_from_slice(&id.to_le_bytes());
            let raw = bpf(BPF_PROG_GET_FD_BY_ID, &mut attr)? as i32;
            // SAFETY: the kernel just returned this fd to us; nothing else owns it.
            fds.insert(id, unsafe { OwnedFd::from_raw_fd(raw) });
            raw
        }
    };
    drop(fds);
    let mut context = [0u8; CTX_BYTES];
    let n = ctx.len().min(CTX_BYTES);
    context[..n].copy_from_slice(&ctx[..n]);
    let mut attr = [0u8; 80];
    attr[..4].copy_from_slice(&(fd as u32).to_le_bytes());
    attr[40..44].copy_from_slice(&(CTX_BYTES as u32).to_le_bytes());
    attr[48..56].copy_from_slice(&(context.as_ptr() as u64).to_le_bytes());
    bpf(BPF_PROG_TEST_RUN, &mut attr)?;
    Ok(u32::from_le_bytes(attr[4..8].try_into().expect("4 bytes")) as u64)
}
