//! Reading and writing arbitrary addresses of this process without ever faulting, for the
//! probe_read/probe_write helpers: `process_vm_readv(2)`/`process_vm_writev(2)` on our own pid
//! return EFAULT for unmapped memory instead of raising SIGSEGV.

/// Copies `dst.len()` bytes from `addr`; false (with `dst` zeroed) if any byte is unreadable.
pub fn read(addr: u64, dst: &mut [u8]) -> bool {
    if dst.is_empty() {
        return true;
    }
    let local = libc::iovec { iov_base: dst.as_mut_ptr() as *mut libc::c_void, iov_len: dst.len() };
    let remote = libc::iovec { iov_base: addr as *mut libc::c_void, iov_len: dst.len() };
    // SAFETY: the local iovec covers `dst`, writable for its length; the remote one names
    // memory the kernel checks, failing with EFAULT rather than faulting (process_vm_readv(2)).
    let n = unsafe { libc::process_vm_readv(libc::getpid(), &local, 1, &remote, 1, 0) };
    if n == dst.len() as isize {
        true
    } else {
        dst.fill(0);
        false
    }
}

/// Copies `src` to `addr`; false if any byte is not writable.
pub fn write(addr: u64, src: &[u8]) -> bool {
    if src.is_empty() {
        return true;
    }
    let local = libc::iovec { iov_base: src.as_ptr() as *mut libc::c_void, iov_len: src.len() };
    let remote = libc::iovec { iov_base: addr as *mut libc::c_void, iov_len: src.len() };
    // SAFETY: the local iovec covers `src`, readable; the kernel checks the remote range
    // (process_vm_writev(2)).
    let n = unsafe { libc::process_vm_writev(libc::getpid(), &local, 1, &remote, 1, 0) };
    n == src.len() as isize
}

/// Reads a NUL-terminated string of at most `dst.len() - 1` bytes into `dst`, NUL included.
/// Returns the bytes written including the NUL, or None if the first byte is unreadable.
/// Reads page by page, so a string that ends just before an unmapped page is still read.
pub fn read_str(addr: u64, dst: &mut [u8]) -> Option<usize> {
    if dst.is_empty() {
        return Some(0);
    }
    let max = dst.len() - 1;
    let mut done = 0;
    while done < max {
        let a = addr + done as u64;
        let to_page_end = (4096 - (a % 4096)) as usize;
        let chunk = to_page_end.min(max - done);
        if !read(a, &mut dst[done..done + chunk]) {
            if done == 0 {
                return None;
            }
            break;
        }
        if let Some(nul) = dst[done..done + chunk].iter().position(|&b| b == 0) {
            return Some(done + nul + 1);
        }
        done += chunk;
    }
    dst[done] = 0;
    Some(done + 1)
}
