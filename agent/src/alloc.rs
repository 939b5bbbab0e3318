//! The agent's own memory allocator: size classes carved from `mmap`ed chunks, never libc's
//! `malloc`.
//!
//! Why: the agent lives inside someone else's process, and its programs may probe that
//! process's allocator. Memory the agent took from libc's malloc would show up in what the
//! programs count (frees of our own blocks, blocks that glibc's per-thread cache frees at
//! thread exit: a uprobe on `free` counted 18 calls where the kernel counts 10), and a probe
//! inside `malloc` (holding an arena lock) whose handler allocated would deadlock. With this
//! allocator nothing the agent allocates goes through libc.
//!
//! Small blocks (up to 32 KiB) come from per-class free lists, each behind a spin lock; the
//! locks are taken around `fork` so a child never inherits one held by a thread that does not
//! exist there. Large blocks are their own mappings. Small blocks are reused, never unmapped.

use std::alloc::{GlobalAlloc, Layout};
use std::ptr::null_mut;
use std::sync::atomic::{AtomicBool, AtomicPtr, Ordering};

const MIN_SHIFT: u32 = 4;
const MAX_SHIFT: u32 = 15;
const CLASSES: usize = (MAX_SHIFT - MIN_SHIFT + 1) as usize;
const PAGE: usize = 4096;
/// Bytes mapped at once to carve small blocks from.
const CHUNK: usize = 1 << 20;

/// A spin lock (no allocation, no futex: usable from inside the allocator).
struct SpinLock(AtomicBool);

impl SpinLock {
    const fn new() -> Self {
        SpinLock(AtomicBool::new(false))
    }

    fn lock(&self) {
        HELD.set(HELD.get() + 1);
        while self.0.compare_exchange_weak(false, true, Ordering::Acquire, Ordering::Relaxed).is_err() {
            std::hint::spin_loop();
            if self.0.load(Ordering::Relaxed) {
                std::thread::yield_now();
            }
        }
    }

    fn unlock(&self) {
        self.0.store(false, Ordering::Release);
        HELD.set(HELD.get() - 1);
    }
}

bpftime_tls::initial_exec! {
    /// Class locks this thread holds or waits for.
    static HELD: std::cell::Cell<u32> as "bpftime_agent_alloc_locks_held";
}

/// Whether this thread holds (or waits for) one of the allocator's locks, in any of its flows:
/// work of ours a signal handler left by `siglongjmp` then left it held for good.
pub fn held_by_this_thread() -> bool {
    HELD.get() != 0
}

/// One size class: a free list of blocks (the next pointer in each free block's first word)
/// and the unused tail of the chunk it carves from.
struct Class {
    lock: SpinLock,
    free: AtomicPtr<u8>,
    next: AtomicPtr<u8>,
    end: AtomicPtr<u8>,
}

impl Class {
    const fn new() -> Self {
        Class { lock: SpinLock::new(), free: AtomicPtr::new(null_mut()), next: AtomicPtr::new(null_mut()), end: AtomicPtr::new(null_mut()) }
    }
}

bpftime_tls::initial_exec! {
    /// This thread holds every lock (between `fork`'s prepare and after handlers): its own
    /// allocations then need none (other threads wait), e.g. while the agent intercepts the
    /// `fork` system call itself.
    static HOLDS_ALL: std::cell::Cell<bool> as "bpftime_agent_alloc_holds_all";
}

/// Takes a class lock unless this thread holds them all.
fn lock(c: &Class) -> bool {
    if HOLDS_ALL.get() {
        return false;
    }
    c.lock.lock();
    true
}

/// The allocator; `#[global_allocator]` in `lib.rs`.
pub struct AgentAlloc {
    classes: [Class; CLASSES],
}

impl AgentAlloc {
    /// An allocator with nothing mapped yet.
    pub const fn new() -> Self {
        AgentAlloc { classes: [const { Class::new() }; CLASSES] }
    }

    /// Takes every lock (before `fork`, so that no lock is held mid-update in the child).
    pub fn lock_all(&self) {
        for c in &self.classes {
            c.lock.lock();
        }
        HOLDS_ALL.set(true);
    }

    /// Releases what [`AgentAlloc::lock_all`] took (after `fork`, in parent and child).
    pub fn unlock_all(&self) {
        HOLDS_ALL.set(false);
        for c in &self.classes {
            c.lock.unlock();
        }
    }
}

impl Default for AgentAlloc {
    fn default() -> Self {
        Self::new()
    }
}

fn class_of(layout: &Layout) -> Option<usize> {
    let size = layout.size().max(layout.align()).max(1 << MIN_SHIFT);
    let shift = usize::BITS - (size - 1).leading_zeros();
    (shift <= MAX_SHIFT).then(|| (shift - MIN_SHIFT) as usize)
}

fn map(len: usize) -> *mut u8 {
    // SAFETY: an anonymous private mapping; no existing memory is affected (mmap(2)).
    let p = unsafe { libc::mmap(null_mut(), len, libc::PROT_READ | libc::PROT_WRITE, libc::MAP_PRIVATE | libc::MAP_ANONYMOUS, -1, 0) };
    if p == libc::MAP_FAILED {
        null_mut()
    } else {
        p as *mut u8
    }
}

fn large_len(layout: &Layout) -> usize {
    layout.size().div_ceil(PAGE) * PAGE
}

// SAFETY: blocks handed out are at least `layout.size()` bytes, aligned to `layout.align()`
// (classes are powers of two >= the alignment, carved at multiples of their size from
// page-aligned chunks; large blocks are page-aligned mappings and larger alignments are
// refused), and each block is handed out once until it is freed.
unsafe impl GlobalAlloc for AgentAlloc {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        if layout.align() > PAGE {
            return null_mut();
        }
        let Some(ci) = class_of(&layout) else { return map(large_len(&layout)) };
        let size = 1usize << (ci as u32 + MIN_SHIFT);
        let c = &self.classes[ci];
        let locked = lock(c);
        let head = c.free.load(Ordering::Relaxed);
        let block = if !head.is_null() {
            // SAFETY: a free block's first word holds the next free block (written by dealloc).
            c.free.store(unsafe { *(head as *mut *mut u8) }, Ordering::Relaxed);
            head
        } else {
            let mut next = c.next.load(Ordering::Relaxed);
            if next.is_null() || next == c.end.load(Ordering::Relaxed) {
                next = map(CHUNK);
                if next.is_null() {
                    if locked {
                        c.lock.unlock();
                    }
                    return null_mut();
                }
                // SAFETY: the chunk is CHUNK bytes long.
                c.end.store(unsafe { next.add(CHUNK) }, Ordering::Relaxed);
            }
            // SAFETY: CHUNK is a multiple of every class size, so the block fits in the chunk.
            c.next.store(unsafe { next.add(size) }, Ordering::Relaxed);
            next
        };
        if locked {
            c.lock.unlock();
        }
        block
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        let Some(ci) = class_of(&layout) else {
            // SAFETY: a large block is a mapping of exactly this length made by `alloc`.
            unsafe { libc::munmap(ptr as *mut libc::c_void, large_len(&layout)) };
            return;
        };
        let c = &self.classes[ci];
        let locked = lock(c);
        // SAFETY: the block is ours, at least 16 bytes and 8-aligned; it is free from now on, so
        // its first word can hold the list link.
        unsafe { *(ptr as *mut *mut u8) = c.free.load(Ordering::Relaxed) };
        c.free.store(ptr, Ordering::Relaxed);
        if locked {
            c.lock.unlock();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blocks_are_aligned_distinct_and_reused() {
        let a = AgentAlloc::new();
        let l = Layout::from_size_align(24, 8).unwrap();
        // SAFETY: layouts are non-zero; every block is freed with its own layout.
        unsafe {
            let x = a.alloc(l);
            let y = a.alloc(l);
            assert!(!x.is_null() && !y.is_null() && x != y);
            assert_eq!(x as usize % 32, 0);
            std::ptr::write_bytes(x, 1, 24);
            a.dealloc(x, l);
            assert_eq!(a.alloc(l), x, "a freed block is reused");
            let big = Layout::from_size_align(100_000, 64).unwrap();
            let z = a.alloc(big);
            assert_eq!(z as usize % PAGE, 0);
            std::ptr::write_bytes(z, 2, 100_000);
            a.dealloc(z, big);
            let aligned = Layout::from_size_align(8, 1024).unwrap();
            let w = a.alloc(aligned);
            assert_eq!(w as usize % 1024, 0);
            a.dealloc(w, aligned);
            a.dealloc(y, l);
        }
    }
}
