//! Raw system calls (so that what we pass on reaches the kernel exactly as the loader made it,
//! without going back through our own interposed symbols) and the mapping of region pages.

use std::ffi::{c_int, c_long, c_void};

/// `syscall` instruction with six arguments; returns the kernel's value (-errno on error).
pub fn syscall6(n: c_long, a: [c_long; 6]) -> i64 {
    let ret: i64;
    // SAFETY: a plain system call; the kernel validates every argument (pointers included) as it
    // does for the loader's own call, which this is. rcx and r11 are clobbered by `syscall`.
    unsafe {
        std::arch::asm!(
            "syscall",
            inlateout("rax") n => ret,
            in("rdi") a[0], in("rsi") a[1], in("rdx") a[2], in("r10") a[3], in("r8") a[4], in("r9") a[5],
            lateout("rcx") _, lateout("r11") _,
            options(nostack),
        );
    }
    ret
}

/// A raw result as `Ok(value)` or `Err(errno)`.
pub fn result(r: i64) -> Result<i64, i32> {
    if (-4095..0).contains(&r) {
        Err(-r as i32)
    } else {
        Ok(r)
    }
}

/// Sets this thread's `errno`.
pub fn set_errno(e: i32) {
    // SAFETY: __errno_location returns this thread's errno slot.
    unsafe { *libc::__errno_location() = e };
}

/// glibc's convention: the value, or -1 with `errno` set.
pub fn to_c(r: Result<i64, i32>) -> c_long {
    match r {
        Ok(v) => v as c_long,
        Err(e) => {
            set_errno(e);
            -1
        }
    }
}

/// Makes eventfd `fd` readable (`on`) or not.
pub fn eventfd_signal(fd: i32, on: bool) {
    let mut v = 1u64;
    let nr = if on { libc::SYS_write } else { libc::SYS_read };
    syscall6(nr, [fd as c_long, &mut v as *mut u64 as c_long, 8, 0, 0, 0]);
}

/// Maps `n` bytes of the region (mapped at `base`) from offset `src` for a loader's `mmap`
/// of `len` bytes at `addr` (`MAP_FIXED` or anywhere): a second mapping of the same shared
/// pages (`mremap` with old size 0), inside a reservation of the whole `len`.
pub fn map_region_pages(base: *mut u8, src: u64, n: u64, addr: *mut c_void, len: usize, prot: c_int, flags: c_int) -> Result<*mut c_void, i32> {
    let n = n.div_ceil(4096) * 4096;
    let target = if flags & libc::MAP_FIXED != 0 {
        addr as i64
    } else {
        // A reservation of the whole length: what lies past the map's pages stays PROT_NONE,
        // and the loader's munmap of `len` removes all of it.
        result(syscall6(libc::SYS_mmap, [0, len as c_long, libc::PROT_NONE as c_long, (libc::MAP_PRIVATE | libc::MAP_ANONYMOUS) as c_long, -1, 0]))?
    };
    let source = base as i64 + src as i64;
    let moved = result(syscall6(
        libc::SYS_mremap,
        [source as c_long, 0, n.min(len as u64) as c_long, (libc::MREMAP_MAYMOVE | libc::MREMAP_FIXED) as c_long, target as c_long, 0],
    ))?;
    if prot & libc::PROT_WRITE == 0 {
        result(syscall6(libc::SYS_mprotect, [moved as c_long, n.min(len as u64) as c_long, prot as c_long, 0, 0, 0]))?;
    }
    Ok(moved as *mut c_void)
}
