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
//!
//! Re-entered: a signal handler (ours, or the application's running through our wrapper) that
//! interrupts this thread inside a class's lock and allocates from that class again would wait
//! for itself for ever, and every other thread with it. Such an allocation is its own mapping
//! instead, and such a free goes on a lock-free list that the class takes back the next time it
//! is locked.

use std::alloc::{GlobalAlloc, Layout};
use std::ptr::null_mut;
use std::sync::atomic::{compiler_fence, AtomicBool, AtomicPtr, Ordering};

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
        while self.0.compare_exchange_weak(false, true, Ordering::Acquire, Ordering::Relaxed).is_err() {
            std::hint::spin_loop();
            if self.0.load(Ordering::Relaxed) {
                std::thread::yield_now();
            }
        }
    }

    /// Takes the lock if it is free, without waiting.
    fn try_lock(&self) -> bool {
        self.0.compare_exchange(false, true, Ordering::Acquire, Ordering::Relaxed).is_ok()
    }

    fn unlock(&self) {
        self.0.store(false, Ordering::Release);
    }
}

/// Whether this thread holds (or waits for) one of the allocator's locks, in any of its flows
/// (a class it is in, or the locks it took for a `fork`): work of ours a signal handler left by
/// `siglongjmp` then left it held for good.
pub fn held_by_this_thread() -> bool {
    OWNED.get() != 0 || FORK_HELD.get() != 0
}

/// One size class: a free list of blocks (the next pointer in each free block's first word),
/// the unused tail of the chunk it carves from, and blocks freed by a flow that found the lock
/// held by its own thread (pushed without the lock, taken back whole under it).
struct Class {
    lock: SpinLock,
    free: AtomicPtr<u8>,
    next: AtomicPtr<u8>,
    end: AtomicPtr<u8>,
    pending: AtomicPtr<u8>,
}

impl Class {
    const fn new() -> Self {
        Class {
            lock: SpinLock::new(),
            free: AtomicPtr::new(null_mut()),
            next: AtomicPtr::new(null_mut()),
            end: AtomicPtr::new(null_mut()),
            pending: AtomicPtr::new(null_mut()),
        }
    }

    /// Puts `block` on the pending list, without the lock (any thread, any flow).
    fn push_pending(&self, block: *mut u8) {
        let mut head = self.pending.load(Ordering::Relaxed);
        loop {
            // SAFETY: a free block of this class (at least 16 bytes, 8-aligned) that nobody
            // else reaches until it is on the list: its first word holds the link.
            unsafe { *(block as *mut *mut u8) = head };
            match self.pending.compare_exchange_weak(head, block, Ordering::Release, Ordering::Relaxed) {
                Ok(_) => return,
                Err(now) => head = now,
            }
        }
    }
}

bpftime_tls::initial_exec! {
    /// The classes whose locks this thread took for a `fork` (between its prepare and after
    /// handlers, bit per class): its own allocations then take none (other threads wait), e.g.
    /// while the agent intercepts the `fork` system call itself.
    static FORK_HELD: std::cell::Cell<u32> as "bpftime_agent_alloc_fork_held";
}

bpftime_tls::initial_exec! {
    /// The classes a flow of this thread is in (bit per class): taking its lock, holding it, or
    /// using the class under the locks taken for a `fork`. Set before and cleared after, so that
    /// a flow interrupting another anywhere in between finds it set.
    static OWNED: std::cell::Cell<u32> as "bpftime_agent_alloc_owned";
}

bpftime_tls::initial_exec! {
    /// The classes whose lock a flow of this thread holds for an allocation (bit per class,
    /// set once taken, cleared before it is released): what a `fork` made from a signal handler
    /// cannot wait for.
    static HOLDING: std::cell::Cell<u32> as "bpftime_agent_alloc_holding";
}

/// How a class was entered.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Entry {
    /// Its lock taken by this flow: released by [`release`].
    Locked,
    /// This thread holds its lock for a `fork`: used without taking it.
    ForkHeld,
    /// Entered again by a flow that interrupted another of this thread in it (a signal
    /// handler's allocation): with the lock where it was free (the interrupted flow is not
    /// inside; it may wait for it), else the class must not be touched.
    Reentered { locked: bool },
}

/// Enters class `ci`: its lock, unless a flow of this thread is in it already.
fn enter(c: &Class, ci: usize) -> Entry {
    let bit = 1u32 << ci;
    if OWNED.get() & bit != 0 {
        return Entry::Reentered { locked: c.lock.try_lock() };
    }
    OWNED.set(OWNED.get() | bit);
    compiler_fence(Ordering::SeqCst);
    if FORK_HELD.get() & bit != 0 {
        return Entry::ForkHeld;
    }
    c.lock.lock();
    HOLDING.set(HOLDING.get() | bit);
    Entry::Locked
}

/// Leaves class `ci` as [`enter`] entered it.
fn release(c: &Class, ci: usize, entry: Entry) {
    let bit = 1u32 << ci;
    match entry {
        Entry::Locked => {
            HOLDING.set(HOLDING.get() & !bit);
            compiler_fence(Ordering::SeqCst);
            c.lock.unlock();
        }
        Entry::ForkHeld => {}
        Entry::Reentered { locked } => {
            if locked {
                c.lock.unlock();
            }
            return;
        }
    }
    compiler_fence(Ordering::SeqCst);
    OWNED.set(OWNED.get() & !bit);
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

    /// Takes every lock (before `fork`, so that no lock is held mid-update in the child), but
    /// those a flow of this thread holds (a `fork` from a signal handler that interrupted an
    /// allocation): that flow goes on in the child too, and releases them there. Each class is
    /// marked as entered while its lock changes hands, so that a flow landing meanwhile does not
    /// wait for this one.
    pub fn lock_all(&self) {
        for (ci, c) in self.classes.iter().enumerate() {
            let bit = 1u32 << ci;
            if HOLDING.get() & bit != 0 {
                continue;
            }
            let before = OWNED.get() & bit;
            OWNED.set(OWNED.get() | bit);
            compiler_fence(Ordering::SeqCst);
            c.lock.lock();
            FORK_HELD.set(FORK_HELD.get() | bit);
            compiler_fence(Ordering::SeqCst);
            // (A flow this one interrupted while it waited for the lock keeps its mark.)
            OWNED.set(OWNED.get() & !bit | before);
        }
    }

    /// Releases what [`AgentAlloc::lock_all`] took (after `fork`, in parent and child).
    pub fn unlock_all(&self) {
        for (ci, c) in self.classes.iter().enumerate() {
            let bit = 1u32 << ci;
            if FORK_HELD.get() & bit == 0 {
                continue;
            }
            let before = OWNED.get() & bit;
            OWNED.set(OWNED.get() | bit);
            compiler_fence(Ordering::SeqCst);
            FORK_HELD.set(FORK_HELD.get() & !bit);
            c.lock.unlock();
            compiler_fence(Ordering::SeqCst);
            OWNED.set(OWNED.get() & !bit | before);
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
        let entry = enter(c, ci);
        if entry == (Entry::Reentered { locked: false }) {
            // Whole pages of its own (a class block's size and alignment at most a page's, or
            // page multiples beyond), freed to the class like any of its blocks.
            return map(size.div_ceil(PAGE) * PAGE);
        }
        let mut head = c.free.load(Ordering::Relaxed);
        if head.is_null() {
            // Blocks freed meanwhile by flows that found the lock held by their own thread.
            head = c.pending.swap(null_mut(), Ordering::Acquire);
        }
        let block = if !head.is_null() {
            // SAFETY: a free block's first word holds the next free block (written by dealloc).
            c.free.store(unsafe { *(head as *mut *mut u8) }, Ordering::Relaxed);
            head
        } else {
            let mut next = c.next.load(Ordering::Relaxed);
            if next.is_null() || next == c.end.load(Ordering::Relaxed) {
                next = map(CHUNK);
                if next.is_null() {
                    release(c, ci, entry);
                    return null_mut();
                }
                // SAFETY: the chunk is CHUNK bytes long.
                c.end.store(unsafe { next.add(CHUNK) }, Ordering::Relaxed);
            }
            // SAFETY: CHUNK is a multiple of every class size, so the block fits in the chunk.
            c.next.store(unsafe { next.add(size) }, Ordering::Relaxed);
            next
        };
        release(c, ci, entry);
        block
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        let Some(ci) = class_of(&layout) else {
            // SAFETY: a large block is a mapping of exactly this length made by `alloc`.
            unsafe { libc::munmap(ptr as *mut libc::c_void, large_len(&layout)) };
            return;
        };
        let c = &self.classes[ci];
        let entry = enter(c, ci);
        if entry == (Entry::Reentered { locked: false }) {
            c.push_pending(ptr);
            return;
        }
        // SAFETY: the block is ours, at least 16 bytes and 8-aligned; it is free from now on, so
        // its first word can hold the list link.
        unsafe { *(ptr as *mut *mut u8) = c.free.load(Ordering::Relaxed) };
        c.free.store(ptr, Ordering::Relaxed);
        release(c, ci, entry);
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

    /// A flow that interrupts this thread inside a class's lock (a signal handler) allocates and
    /// frees in that class without waiting for itself; what it freed is used again afterwards.
    #[test]
    fn a_flow_inside_a_class_lock_is_not_waited_for() {
        let a = AgentAlloc::new();
        let l = Layout::from_size_align(48, 8).unwrap();
        let ci = class_of(&l).unwrap();
        let c = &a.classes[ci];
        // SAFETY: layouts are non-zero; every block is freed with its own layout.
        unsafe {
            let outer = a.alloc(l);
            // What the interrupted flow holds, as a handler landing inside `alloc` finds it.
            assert!(!held_by_this_thread());
            let entry = enter(c, ci);
            assert!(entry == Entry::Locked && held_by_this_thread());
            let inner = a.alloc(l);
            assert!(!inner.is_null() && inner != outer);
            assert_eq!(inner as usize % PAGE, 0, "a mapping of its own");
            std::ptr::write_bytes(inner, 3, 48);
            a.dealloc(inner, l);
            a.dealloc(outer, l);
            assert!(c.free.load(Ordering::Relaxed).is_null(), "the class was not touched");
            release(c, ci, entry);
            assert_eq!(OWNED.get(), 0);
            assert!(!held_by_this_thread());
            // Both frees are taken back once the lock is free: the last one first.
            assert_eq!(a.alloc(l), outer);
            assert_eq!(a.alloc(l), inner);
            // A flow that interrupts one still waiting for the lock (or one that left the class
            // by `siglongjmp`) finds it free: it takes it and uses the class.
            a.dealloc(inner, l);
            OWNED.set(1 << ci);
            assert_eq!(a.alloc(l), inner);
            assert!(!c.lock.0.load(Ordering::Relaxed) && OWNED.get() == 1 << ci);
            OWNED.set(0);
        }
    }

    /// Around a `fork` made by a flow that interrupted an allocation, the class that flow is
    /// inside is left to it, the others taken.
    #[test]
    fn fork_locks_leave_the_class_an_interrupted_flow_holds() {
        let a = AgentAlloc::new();
        let l = Layout::from_size_align(100, 8).unwrap();
        let ci = class_of(&l).unwrap();
        let entry = enter(&a.classes[ci], ci);
        a.lock_all();
        assert_eq!(FORK_HELD.get(), !(1u32 << ci) & ((1 << CLASSES) - 1));
        assert_eq!(OWNED.get(), 1 << ci, "only the interrupted flow's mark");
        // SAFETY: a non-zero layout, freed with its own layout.
        unsafe {
            let p = a.alloc(l);
            assert_eq!(p as usize % PAGE, 0, "a mapping of its own");
            a.dealloc(p, l);
            let other = Layout::from_size_align(16, 8).unwrap();
            let q = a.alloc(other);
            assert!(!q.is_null());
            a.dealloc(q, other);
        }
        a.unlock_all();
        release(&a.classes[ci], ci, entry);
        assert!(a.classes.iter().all(|c| !c.lock.0.load(Ordering::Relaxed)));
        assert_eq!((OWNED.get(), HOLDING.get(), FORK_HELD.get()), (0, 0, 0));
        assert!(!held_by_this_thread());
    }
}
