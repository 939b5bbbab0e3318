//! Landings: jump targets chosen so that a kernel uprobe placed on a patched function later
//! cannot run the middle of our jump.
//!
//! A kernel uprobe registered on a function the agent has already patched writes its `int3`
//! over the first byte of our 5-byte jump (the kernel keeps the file's byte to itself and does
//! not look at ours), runs the function's original first instruction out of line and resumes
//! the thread after that instruction: inside our jump's displacement. Where the displacement's
//! byte at that spot is `0xcc`, the thread traps there at once, and the SIGTRAP handler sends
//! it to the trampoline's copy of the next instruction (`patch::on_sigtrap`), until the agent's
//! link thread sees the foreign `int3` and gives the function its own bytes back
//! (`hook::yield_to_foreign_breakpoints`). The displacement is the distance to the jump's
//! target, so the target is chosen: a landing, a `jmp` to the stub placed where that byte of
//! the distance comes out as `0xcc`.
//!
//! Byte `k` of the distance is `0xcc` in windows `2^(8k)` bytes wide every `2^(8k+8)` bytes:
//! any page has some for `k = 0`, a 68 KiB block for every jump for `k = 1`, and for `k = 2`
//! and `k = 3` the landing pages go in a window near the site (12.75 MiB above it, 3.25 MiB
//! below it, or every 16 MiB on; 832 MiB below it). Where none can be had (a non-PIE
//! executable low in memory for `k = 3`), the jump has no such `int3`, and says so.

use crate::patch;
use std::sync::Mutex;

const PAGE: u64 = 4096;
/// A `jmp rel32`.
const JMP: u64 = 5;

/// A page of landings: which of its bytes are taken, a bit each.
struct LandingPage {
    at: u64,
    used: [u64; (PAGE / 64) as usize],
    /// Every byte below this offset is taken (a search starts here: landings that may go
    /// anywhere in the page fill it from the bottom).
    low: u64,
}

impl LandingPage {
    fn new(at: u64) -> LandingPage {
        LandingPage { at, used: [0; (PAGE / 64) as usize], low: 0 }
    }

    fn is_used(&self, b: u64) -> bool {
        self.used[(b / 64) as usize] & (1 << (b % 64)) != 0
    }

    fn free(&self, off: u64) -> bool {
        (off..off + JMP).all(|b| !self.is_used(b))
    }

    fn take(&mut self, off: u64) {
        for b in off..off + JMP {
            self.used[(b / 64) as usize] |= 1 << (b % 64);
        }
        while self.low < PAGE && self.is_used(self.low) {
            self.low += 1;
        }
    }
}

static PAGES: Mutex<Vec<LandingPage>> = Mutex::new(Vec::new());

/// Whether `t - from`, as a jump displacement from `from` (the address after the jump), fits
/// a rel32 and has byte `k` equal to `0xcc`.
pub(crate) fn guards(from: u64, k: u32, t: u64) -> bool {
    let d = t.wrapping_sub(from) as i64;
    i32::try_from(d).is_ok() && (d as u64 >> (8 * k)) & 0xff == 0xcc
}

/// The addresses `t` in `[lo, hi)` that [`guards`] `from` at byte `k`, in order.
fn guarding(from: u64, k: u32, lo: u64, hi: u64) -> impl Iterator<Item = u64> {
    let (width, period) = (1i128 << (8 * k), 1i128 << (8 * k + 8));
    let (dlo, dhi) = (lo as i128 - from as i128, hi as i128 - from as i128);
    // The window at or before `lo`, then one every period, each clipped to [lo, hi).
    let first = dlo - (dlo - 0xcc * width).rem_euclid(period);
    (0..)
        .map(move |j| first + j * period)
        .take_while(move |&w| w < dhi)
        .flat_map(move |w| (w.max(dlo)..(w + width).min(dhi)).map(move |d| (from as i128 + d) as u64))
        .filter(move |&t| guards(from, k, t))
}

/// A landing for a jump whose next instruction is at `from`: the address of a new `jmp target`
/// where [`guards`] holds for byte `k`, or None where no memory in reach can have one.
pub(crate) fn landing(from: u64, k: u32, target: u64) -> Option<u64> {
    let mut pages = PAGES.lock().unwrap_or_else(|e| e.into_inner());
    let at = find(&mut pages, from, k, target).or_else(|| {
        add_pages(&mut pages, from, k)?;
        find(&mut pages, from, k, target)
    })?;
    let rel = i32::try_from(target.wrapping_sub(at + JMP) as i64).ok()?;
    let mut jmp = [0xe9, 0, 0, 0, 0];
    jmp[1..].copy_from_slice(&rel.to_le_bytes());
    patch::write_code(at, &jmp).ok()?;
    Some(at)
}

/// A free place in `pages` for the landing, taken.
fn find(pages: &mut [LandingPage], from: u64, k: u32, target: u64) -> Option<u64> {
    for p in pages.iter_mut() {
        let reaches = |t: u64| i32::try_from(target.wrapping_sub(t + JMP) as i64).is_ok();
        if p.low + JMP > PAGE {
            continue;
        }
        let hit = guarding(from, k, p.at + p.low, p.at + PAGE - JMP + 1).find(|&t| p.free(t - p.at) && reaches(t));
        if let Some(t) = hit {
            p.take(t - p.at);
            return Some(t);
        }
    }
    None
}

/// Maps pages where landings for `from` at byte `k` can go (filled with `int3`, executable).
fn add_pages(pages: &mut Vec<LandingPage>, from: u64, k: u32) -> Option<()> {
    let (at, n) = match k {
        0 => (patch::alloc_near(from, PAGE as usize)?, 1),
        // Any 64 KiB holds a window for every jump: one block serves them all.
        1 => (patch::alloc_near(from, (17 * PAGE) as usize)?, 17),
        _ => {
            let (width, period) = (1i128 << (8 * k), 1i128 << (8 * k + 8));
            let block = 16 * PAGE;
            // The windows within 1 GiB (the reach of the site's pages), nearest first.
            let mut windows: Vec<i128> = (-64..64).map(|m| 0xcc * width + m * period).filter(|d| d.abs() < 1 << 30).collect();
            windows.sort_by_key(|d| d.abs());
            let at = windows.iter().find_map(|&d| {
                let lo = from as i128 + d;
                if lo < 0x10000 || lo + width > 1 << 47 {
                    return None;
                }
                let start = (lo as u64).div_ceil(PAGE) * PAGE;
                (0..(width as u64 / block).clamp(1, 64)).find_map(|j| patch::map_at(start + j * block, block as usize))
            })?;
            (at, 16)
        }
    };
    // SAFETY: `at` is a fresh read-write mapping of `n` pages.
    unsafe { std::ptr::write_bytes(at as *mut u8, 0xcc, (n * PAGE) as usize) };
    patch::make_executable(at, (n * PAGE) as usize).ok()?;
    pages.extend((0..n).map(|i| LandingPage::new(at + i * PAGE)));
    Some(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn landings_put_0xcc_in_the_chosen_byte_and_jump_to_their_target() {
        let from = crate::patch::alloc_near(landings_put_0xcc_in_the_chosen_byte_and_jump_to_their_target as *const () as u64, 4096).unwrap() + 100;
        for k in 0..4 {
            for _ in 0..3 {
                let t = landing(from, k, from + 64).expect("a landing");
                let d = (t.wrapping_sub(from) as i64 as i32).to_le_bytes();
                assert_eq!(d[k as usize], 0xcc, "byte {k} of {t:#x} - {from:#x}");
                let code = crate::patch::read_code(t, 5).unwrap();
                assert_eq!(code[0], 0xe9);
                let rel = i32::from_le_bytes(code[1..].try_into().unwrap()) as i64;
                assert_eq!((t as i64 + 5 + rel) as u64, from + 64);
            }
        }
    }

    #[test]
    fn thousands_of_landings_do_not_overlap() {
        let from = crate::patch::alloc_near(thousands_of_landings_do_not_overlap as *const () as u64, 4096).unwrap() + 7;
        let mut all: Vec<u64> = (0..3000).map(|i| landing(from + (i % 5), 3, from).expect("a landing")).collect();
        all.sort();
        assert!(all.windows(2).all(|w| w[1] >= w[0] + JMP), "landings overlap");
    }

    #[test]
    fn the_guarding_addresses_of_a_range_are_all_and_only_those() {
        let from = 0x5555_0000_1234u64;
        for k in 0..2 {
            for lo in [from + 0xc000 - 77, from - 0x3_4000 - 1, from + 0x1_0000] {
                let got: Vec<u64> = guarding(from, k, lo, lo + 3 * 4096).collect();
                let want: Vec<u64> = (lo..lo + 3 * 4096).filter(|&t| guards(from, k, t)).collect();
                assert_eq!(got, want, "k {k} lo {lo:#x}");
            }
        }
        assert_eq!(guarding(from, 1, from + 0xc000, from + 0xd000).count(), 256);
        assert_eq!(guarding(from, 3, from - 0x3400_0000 - 10, from - 0x3400_0000 + 10).count(), 10);
    }
}
