//! Thread-locals in the initial-exec TLS model, for code that runs inside probe hits.
//!
//! What it is: one macro, [`initial_exec!`], that declares a thread-local `Cell` (zero at each
//! thread's start) whose every access is two instructions: a load of its offset from the GOT
//! and an add of the thread pointer (`%fs:0`). What it is not: a general `thread_local!` (no
//! initialiser but zero, no destructor, only types whose all-zero bytes are a valid value).
//!
//! Why: in a shared library (the agent, the syscall server) Rust's `thread_local!` uses the
//! general-dynamic model, so each access is a call to glibc's `__tls_get_addr` (about 16
//! instructions with the call). A probe hit that runs bpftrace's `count()` touched six
//! thread-locals that way. Rust cannot ask for another model on stable, so the variable is
//! defined in assembly (`.tbss`) and read through its `@GOTTPOFF` slot.
//!
//! The price: the linker marks a shared library that uses one `DF_STATIC_TLS`, so glibc gives
//! its whole TLS block static room in every thread, existing ones included, also when the
//! library comes by `dlopen` (the agent's `bpftime attach`); glibc keeps some surplus for that,
//! and a `dlopen` that finds none left fails with its reason. In an executable the linker
//! turns the access into one `mov` from `%fs`.
//!
//! Used by `bpftime-shm`, `bpftime-maps`, `bpftime-vm` and `bpftime-runtime` for the
//! thread-locals on a hit's path; the hook engine (`bpftime-attach`) keeps its own block,
//! written the same way.
//!
//! See the x86-64 psABI's TLS models (Drepper, "ELF Handling For Thread-Local Storage",
//! <https://www.akkadia.org/drepper/tls.pdf>, section 4.3.6).

#![no_std]

/// Types whose all-zero bytes are a valid value with no destructor: what an [`initial_exec!`]
/// variable may hold (its storage is `.tbss`, zeroed for each thread by the loader).
///
/// # Safety
/// All-zero bytes must be a valid value of the type, and the type must need no drop.
pub unsafe trait Zeroed {}

// SAFETY: integers, `bool`, pointers and `Cell`s of them are valid as all-zero bytes (0,
// false, null) and have no destructor.
unsafe impl Zeroed for core::cell::Cell<u8> {}
// SAFETY: as above.
unsafe impl Zeroed for core::cell::Cell<u32> {}
// SAFETY: as above.
unsafe impl Zeroed for core::cell::Cell<u64> {}
// SAFETY: as above.
unsafe impl Zeroed for core::cell::Cell<usize> {}
// SAFETY: as above.
unsafe impl Zeroed for core::cell::Cell<bool> {}
// SAFETY: as above (null).
unsafe impl<T> Zeroed for core::cell::Cell<*mut T> {}

/// Declares `static NAME: Cell<T> as "symbol";`: a zero-initialised thread-local reached as
/// `NAME.get()` / `NAME.set(v)` (the unit value `NAME` dereferences to this thread's cell).
/// `symbol` is the assembly name of its storage and must be unique in the final link (prefix it
/// with the crate's name).
///
/// ```
/// bpftime_tls::initial_exec! {
///     /// How deep this thread is in our work.
///     static DEPTH: core::cell::Cell<u32> as "bpftime_tls_doc_depth";
/// }
///
/// fn main() {
///     DEPTH.set(DEPTH.get() + 1);
///     assert_eq!(DEPTH.get(), 1);
///     assert_eq!(std::thread::spawn(|| DEPTH.get()).join().unwrap(), 0);
/// }
/// ```
#[macro_export]
macro_rules! initial_exec {
    ($(#[$attr:meta])* $vis:vis static $name:ident: $ty:ty as $sym:literal;) => {
        $(#[$attr])*
        #[allow(non_camel_case_types)]
        #[derive(Clone, Copy)]
        $vis struct $name;

        const _: () = {
            const fn zeroed<T: $crate::Zeroed>() {}
            zeroed::<$ty>();
        };

        #[cfg(target_arch = "x86_64")]
        ::core::arch::global_asm!(
            ".pushsection .tbss,\"awT\",@nobits",
            ".p2align {align}",
            concat!(".globl ", $sym),
            concat!(".hidden ", $sym),
            concat!(".type ", $sym, ", @tls_object"),
            concat!(".size ", $sym, ", {size}"),
            concat!($sym, ":"),
            ".zero {size}",
            ".popsection",
            align = const ::core::mem::align_of::<$ty>().trailing_zeros(),
            size = const ::core::mem::size_of::<$ty>(),
        );

        impl ::core::ops::Deref for $name {
            type Target = $ty;

            #[inline(always)]
            fn deref(&self) -> &$ty {
                #[cfg(target_arch = "x86_64")]
                {
                    let p: *const $ty;
                    // SAFETY: the initial-exec sequence for the symbol defined above (x86-64
                    // psABI): its offset from the thread pointer, read from the GOT, added to
                    // `%fs:0`, the thread pointer. The result is this thread's copy, zeroed at
                    // the thread's start (a valid value: `Zeroed`), alive as long as the
                    // thread; the reference is `!Send` (a `Cell` is `!Sync`), so it stays on
                    // this thread.
                    unsafe {
                        ::core::arch::asm!(
                            concat!("mov {p}, qword ptr [rip + ", $sym, "@GOTTPOFF]"),
                            "add {p}, qword ptr fs:[0]",
                            p = out(reg) p,
                            options(nostack, pure, readonly),
                        );
                        &*p
                    }
                }
                #[cfg(not(target_arch = "x86_64"))]
                {
                    ::std::thread_local! {
                        static CELL: $ty = const { unsafe { ::core::mem::zeroed() } };
                    }
                    // SAFETY: a const-initialised thread-local without a destructor lives as
                    // long as its thread; the reference is `!Send` like the cell.
                    CELL.with(|c| unsafe { &*(c as *const $ty) })
                }
            }
        }
    };
}
