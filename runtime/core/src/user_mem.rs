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

/// Copies bytes from `addr` into `dst` until the first unreadable byte; returns how many.
fn read_prefix(addr: u64, dst: &mut [u8]) -> usize {
    if dst.is_empty() {
        return 0;
    }
    let local = libc::iovec { iov_base: dst.as_mut_ptr() as *mut libc::c_void, iov_len: dst.len() };
    let remote = libc::iovec { iov_base: addr as *mut libc::c_void, iov_len: dst.len() };
    // SAFETY: as in `read`; a partial read returns the bytes copied before the unreadable one.
    let n = unsafe { libc::process_vm_readv(libc::getpid(), &local, 1, &remote, 1, 0) };
    n.max(0) as usize
}

/// `bpf_probe_read_user_str` as x86-64 Linux does it (`strncpy_from_user_nofault`): copies the
/// NUL-terminated string at `addr` into `dst` and returns the bytes copied, NUL included; a
/// string that does not fit is cut and NUL-terminated (result `dst.len()`); an empty `dst`
/// gives 0. When a byte before the NUL is unreadable, `dst` is zeroed and the result is None
/// (`-EFAULT`).
///
/// What is left after the NUL matches the kernel too, so that a string used as a map key
/// gives one key whatever follows it in memory: the kernel copies 8-byte words and, in the word
/// holding the NUL, zeroes the bytes after it; bytes of `dst` after that word are untouched.
/// Near the end of `dst` (less than a word left) or when the word reaches into an unreadable
/// page it copies byte by byte and stops at the NUL.
pub fn read_str(addr: u64, dst: &mut [u8]) -> Option<usize> {
    let count = dst.len();
    if count == 0 {
        return Some(0);
    }
    let mut done = 0;
    // The source is read in chunks that stay inside one page, through a scratch buffer, so
    // that nothing after the NUL is written to `dst`.
    let mut scratch = [0u8; 256];
    while done < count {
        let a = addr.wrapping_add(done as u64);
        let to_page_end = (4096 - a % 4096) as usize;
        let want = scratch.len().min(to_page_end).min(count - done);
        let got = read_prefix(a, &mut scratch[..want]);
        if got == 0 {
            dst.fill(0);
            return None;
        }
        if let Some(p) = scratch[..got].iter().position(|&b| b == 0) {
            let nul = done + p;
            dst[done..=nul].copy_from_slice(&scratch[..=p]);
            // The word holding the NUL: written whole (tail zeroed) when the kernel's word loop
            // reached it, i.e. it lies inside `dst` and all its source bytes are readable.
            let word = nul & !7;
            if word + 8 <= count && word_readable(addr, word, done + got) {
                dst[nul + 1..word + 8].fill(0);
            }
            return Some(nul + 1);
        }
        dst[done..done + got].copy_from_slice(&scratch[..got]);
        done += got;
    }
    dst[count - 1] = 0;
    Some(count)
}

/// Whether the 8 source bytes at `addr + word` are readable, knowing the first `known` are.
fn word_readable(addr: u64, word: usize, known: usize) -> bool {
    if word + 8 <= known {
        return true;
    }
    let mut rest = [0u8; 8];
    let n = word + 8 - known;
    read_prefix(addr.wrapping_add(known as u64), &mut rest[..n]) == n
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read(s: &[u8], size: usize) -> (Option<usize>, Vec<u8>) {
        let mut dst = vec![0xaa; size];
        let r = read_str(s.as_ptr() as u64, &mut dst);
        (r, dst)
    }

    #[test]
    fn copies_like_the_kernel() {
        let (r, d) = read(b"abc\0XXXXXXXXXXXXXXXX", 16);
        assert_eq!(r, Some(4));
        assert_eq!(&d, b"abc\0\0\0\0\0\xaa\xaa\xaa\xaa\xaa\xaa\xaa\xaa", "word tail zeroed, the rest untouched");
        let (r, d) = read(b"0123456789abcdefgh\0", 16);
        assert_eq!((r, &d[..]), (Some(16), &b"0123456789abcde\0"[..]), "cut and terminated");
        let (r, d) = read(b"0123456789abc\0ZZ", 15);
        assert_eq!((r, &d[..]), (Some(14), &b"0123456789abc\0\xaa"[..]), "byte by byte in the last partial word");
        assert_eq!(read(b"x\0", 0), (Some(0), vec![]));
        let mut dst = [0xaau8; 8];
        assert_eq!(read_str(0, &mut dst), None);
        assert_eq!(dst, [0; 8], "zeroed on a fault");
    }
}
