//! Memory the loader handed us by address (keys, values, instructions, log buffers), read and
//! written with `process_vm_readv`/`process_vm_writev` on our own process, so that a bad
//! address is `EFAULT`, as the kernel answers, never a crash.
//! See <https://man7.org/linux/man-pages/man2/process_vm_readv.2.html>.

/// Reads `len` bytes at address `addr` of this process.
pub fn read(addr: u64, len: usize) -> Result<Vec<u8>, i32> {
    let mut buf = vec![0u8; len];
    if len == 0 {
        return Ok(buf);
    }
    if addr == 0 {
        return Err(libc::EFAULT);
    }
    let local = libc::iovec { iov_base: buf.as_mut_ptr().cast(), iov_len: len };
    let remote = libc::iovec { iov_base: addr as *mut libc::c_void, iov_len: len };
    // SAFETY: `local` covers our own buffer; the kernel checks `remote` and fails with EFAULT.
    let n = unsafe { libc::process_vm_readv(libc::getpid(), &local, 1, &remote, 1, 0) };
    if n == len as isize {
        Ok(buf)
    } else {
        Err(libc::EFAULT)
    }
}

/// Writes `data` at address `addr` of this process.
pub fn write(addr: u64, data: &[u8]) -> Result<(), i32> {
    if data.is_empty() {
        return Ok(());
    }
    if addr == 0 {
        return Err(libc::EFAULT);
    }
    let local = libc::iovec { iov_base: data.as_ptr() as *mut libc::c_void, iov_len: data.len() };
    let remote = libc::iovec { iov_base: addr as *mut libc::c_void, iov_len: data.len() };
    // SAFETY: `local` covers our own buffer (only read); the kernel checks `remote`.
    let n = unsafe { libc::process_vm_writev(libc::getpid(), &local, 1, &remote, 1, 0) };
    if n == data.len() as isize {
        Ok(())
    } else {
        Err(libc::EFAULT)
    }
}

/// A NUL-terminated string at `addr` (at most `max` bytes).
pub fn read_cstr(addr: u64, max: usize) -> Result<String, i32> {
    let mut out = vec![];
    let mut at = addr;
    while out.len() < max {
        // Page by page: a string may end just before an unmapped page.
        let chunk = (4096 - (at % 4096) as usize).min(max - out.len());
        let bytes = read(at, chunk)?;
        if let Some(end) = bytes.iter().position(|&b| b == 0) {
            out.extend_from_slice(&bytes[..end]);
            return Ok(String::from_utf8_lossy(&out).into_owned());
        }
        out.extend_from_slice(&bytes);
        at += chunk as u64;
    }
    Err(libc::E2BIG)
}
