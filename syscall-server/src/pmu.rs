//! The perf PMUs through which libbpf opens probes, as sysfs describes them
//! (`/sys/bus/event_source/devices/{uprobe,kprobe}/type` and `format/retprobe`).
//!
//! A kprobe event whose function the kernel does not have is a CUDA kernel probe (bpftime's
//! `SEC("kprobe/KERNEL")` programs, attached by an unmodified libbpf loader): ours. A kernel
//! without kprobes has no kprobe PMU, and libbpf would then write tracefs `kprobe_events`,
//! which such a kernel lacks too; there the PMU's two files read as a stand-in (a type no
//! PMU has, retprobe bit 0), through the `fopen` the server interposes, so that CUDA kernel
//! probes still attach.

use std::collections::HashSet;
use std::ffi::CStr;
use std::sync::OnceLock;

const DEVICES: &str = "/sys/bus/event_source/devices";
const KPROBE_TYPE: &str = "/sys/bus/event_source/devices/kprobe/type";
const KPROBE_RETPROBE: &str = "/sys/bus/event_source/devices/kprobe/format/retprobe";

/// A probe PMU: its perf type and the `config` bit that makes a return probe.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Pmu {
    /// `perf_event_attr.type`.
    pub perf_type: u32,
    /// The bit of `config` set for a return probe.
    pub retprobe_bit: u32,
}

fn read_u32(path: &str, prefix: &str) -> Option<u32> {
    let s = std::fs::read_to_string(path).ok()?;
    s.trim().strip_prefix(prefix)?.trim().parse().ok()
}

/// The uprobe PMU, None when the kernel has none.
pub fn uprobe() -> Option<Pmu> {
    let perf_type = read_u32(&format!("{DEVICES}/uprobe/type"), "")?;
    Some(Pmu { perf_type, retprobe_bit: read_u32(&format!("{DEVICES}/uprobe/format/retprobe"), "config:").unwrap_or(0) })
}

/// The kprobe PMU, and whether it is the stand-in (the kernel has none).
fn kprobe_pmu() -> &'static (Pmu, bool) {
    static PMU: OnceLock<(Pmu, bool)> = OnceLock::new();
    PMU.get_or_init(|| match read_u32(KPROBE_TYPE, "") {
        Some(perf_type) => (Pmu { perf_type, retprobe_bit: read_u32(KPROBE_RETPROBE, "config:").unwrap_or(0) }, false),
        None => {
            // One past every PMU type the kernel has: no event of the kernel's is taken for it.
            let used = std::fs::read_dir(DEVICES)
                .map(|d| d.filter_map(|e| e.ok()).filter_map(|e| read_u32(&e.path().join("type").to_string_lossy(), "")).max().unwrap_or(0))
                .unwrap_or(0);
            (Pmu { perf_type: used.max(31) + 1, retprobe_bit: 0 }, true)
        }
    })
}

/// The kprobe PMU (the stand-in where the kernel has none).
pub fn kprobe() -> Pmu {
    kprobe_pmu().0
}

/// What the stand-in kprobe PMU's sysfs file `path` reads as; None for any other path, or
/// when the kernel has a kprobe PMU of its own.
pub fn stand_in_file(path: &CStr) -> Option<&'static CStr> {
    let path = path.to_bytes();
    if path != KPROBE_TYPE.as_bytes() && path != KPROBE_RETPROBE.as_bytes() {
        return None;
    }
    let (pmu, stand_in) = kprobe_pmu();
    if !stand_in {
        return None;
    }
    static TEXTS: OnceLock<(std::ffi::CString, std::ffi::CString)> = OnceLock::new();
    let (ty, bit) = TEXTS.get_or_init(|| {
        let text = |s: String| std::ffi::CString::new(s).unwrap_or_default();
        (text(format!("{}\n", pmu.perf_type)), text(format!("config:{}\n", pmu.retprobe_bit)))
    });
    Some(if path == KPROBE_TYPE.as_bytes() { ty } else { bit })
}

/// Whether the running kernel has a function (or any symbol) named `name` (`/proc/kallsyms`,
/// read once).
pub fn is_kernel_symbol(name: &str) -> bool {
    static SYMBOLS: OnceLock<HashSet<String>> = OnceLock::new();
    SYMBOLS
        .get_or_init(|| {
            let text = std::fs::read_to_string("/proc/kallsyms").unwrap_or_default();
            text.lines().filter_map(|l| l.split_whitespace().nth(2)).map(str::to_string).collect()
        })
        .contains(name)
}
