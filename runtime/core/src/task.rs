//! `bpf_get_current_task` in userspace: a stand-in `struct task_struct` per thread, laid out
//! from the kernel's BTF (`/sys/kernel/btf/vmlinux`), so that programs compiled against
//! `vmlinux.h` and relocated by CO-RE read real values where they read the fields tools use:
//! `pid` (the thread id), `tgid` (the process id), `comm`, `real_parent`/`parent` (a
//! stand-in parent whose `pid` and `tgid` are the parent process's), and `nsproxy`, whose
//! namespaces (`mnt_ns`, `pid_ns_for_children`, `net_ns`, `uts_ns`, `ipc_ns`, `cgroup_ns`,
//! `time_ns`) carry their `ns.inum`, the inode number `/proc/self/ns/*` shows (tools filter
//! and print mount namespaces by it), and `mm`, whose bounds of code, data, heap, stack,
//! arguments and environment (`arg_start`...) are `/proc/self/stat`'s. Every other field reads
//! as zero.

use bpftime_object::btf::{Btf, Kind};
use std::cell::Cell;
use std::sync::OnceLock;

/// Byte offsets of the fields we fill, and the struct's size.
#[derive(Clone, Debug)]
struct Layout {
    size: usize,
    pid: usize,
    tgid: usize,
    comm: usize,
    real_parent: usize,
    parent: usize,
    /// `task_struct.nsproxy` and what it points to, where the kernel's BTF describes them.
    nsproxy: Option<NsLayout>,
    /// `task_struct.mm` and the fields of `struct mm_struct` we fill.
    mm: Option<MmLayout>,
}

/// Where a stand-in `struct mm_struct` keeps the bounds `/proc/PID/stat` gives: its offset in
/// `task_struct`, its size, and per field its offset and `stat` field (1 = the pid).
#[derive(Clone, Debug)]
struct MmLayout {
    in_task: usize,
    size: usize,
    fields: Vec<(usize, usize)>,
}

/// `struct mm_struct` members and the `/proc/PID/stat` fields (proc(5)) that hold them.
const MM_FIELDS: [(&str, usize); 10] = [
    ("start_code", 26),
    ("end_code", 27),
    ("start_stack", 28),
    ("start_data", 45),
    ("end_data", 46),
    ("start_brk", 47),
    ("arg_start", 48),
    ("arg_end", 49),
    ("env_start", 50),
    ("env_end", 51),
];

/// Where a stand-in `struct nsproxy` keeps its namespace pointers, and where each namespace
/// keeps `ns.inum`.
#[derive(Clone, Debug)]
struct NsLayout {
    /// Offset of `nsproxy` in `task_struct`.
    in_task: usize,
    /// Bytes of `struct nsproxy`.
    size: usize,
    /// Per namespace: its pointer's offset in `nsproxy`, its `/proc/self/ns` name, and the
    /// offset of `ns.inum` in the namespace's struct.
    spaces: Vec<(usize, &'static str, usize)>,
}

/// `nsproxy` member and `/proc/self/ns` entry of each namespace we describe.
const NAMESPACES: [(&str, &str); 7] = [
    ("mnt_ns", "mnt"),
    ("pid_ns_for_children", "pid_for_children"),
    ("net_ns", "net"),
    ("uts_ns", "uts"),
    ("ipc_ns", "ipc"),
    ("cgroup_ns", "cgroup"),
    ("time_ns", "time"),
];

/// Byte offset of member `name` of struct `id`, and the member's type (modifiers skipped);
/// found inside anonymous struct and union members too (where `mm_struct` keeps its fields).
fn member(btf: &Btf, id: u32, name: &str) -> Option<(usize, u32)> {
    let t = btf.get(id).ok()?;
    if let Some(m) = t.members.iter().find(|m| m.name == name) {
        return Some(((t.member_bit_offset(m) / 8) as usize, btf.skip_mods(m.type_id).ok()?));
    }
    t.members.iter().filter(|m| m.name.is_empty()).find_map(|m| {
        let (off, ty) = member(btf, btf.skip_mods(m.type_id).ok()?, name)?;
        Some((off + (t.member_bit_offset(m) / 8) as usize, ty))
    })
}

/// The struct a pointer-typed member points to.
fn pointee(btf: &Btf, ptr: u32) -> Option<u32> {
    let t = btf.get(ptr).ok()?;
    (t.kind == Kind::Ptr).then(|| btf.skip_mods(t.size_or_type).ok()).flatten()
}

fn mm_layout(btf: &Btf, task: u32) -> Option<MmLayout> {
    let (in_task, ptr) = member(btf, task, "mm")?;
    let mm = pointee(btf, ptr)?;
    let size = btf.size_of(mm).ok()? as usize;
    let fields = MM_FIELDS.iter().filter_map(|&(name, stat)| member(btf, mm, name).map(|(at, _)| (at, stat))).filter(|&(at, _)| at + 8 <= size).collect();
    Some(MmLayout { in_task, size, fields })
}

fn ns_layout(btf: &Btf, task: u32) -> Option<NsLayout> {
    let (in_task, ptr) = member(btf, task, "nsproxy")?;
    let nsproxy = pointee(btf, ptr)?;
    let size = btf.size_of(nsproxy).ok()? as usize;
    let spaces = NAMESPACES
        .iter()
        .filter_map(|&(field, proc_name)| {
            let (at, ptr) = member(btf, nsproxy, field)?;
            let (ns, common) = member(btf, pointee(btf, ptr)?, "ns")?;
            let (inum, _) = member(btf, common, "inum")?;
            Some((at, proc_name, ns + inum))
        })
        .collect();
    Some(NsLayout { in_task, size, spaces })
}

fn layout() -> Option<&'static Layout> {
    static LAYOUT: OnceLock<Option<Layout>> = OnceLock::new();
    LAYOUT
        .get_or_init(|| {
            let btf = Btf::parse(&std::fs::read("/sys/kernel/btf/vmlinux").ok()?).ok()?;
            let id = *btf.find(Kind::Struct, "task_struct").first()?;
            let t = btf.get(id).ok()?;
            let at = |name: &str| member(&btf, id, name).map(|(off, _)| off);
            Some(Layout {
                size: t.size_or_type as usize,
                pid: at("pid")?,
                tgid: at("tgid")?,
                comm: at("comm")?,
                real_parent: at("real_parent")?,
                parent: at("parent")?,
                nsproxy: ns_layout(&btf, id),
                mm: mm_layout(&btf, id),
            })
        })
        .as_ref()
}

/// Room for each stand-in namespace struct: enough for any `ns.inum` offset we accept.
const NS_ROOM: usize = 256;

/// Bytes of one thread's stand-ins: its task, its parent, the mm, the nsproxy and the
/// namespaces.
fn stand_in_size(l: &Layout) -> usize {
    2 * l.size + mm_size(l) + l.nsproxy.as_ref().map_or(0, |ns| ns.size + NAMESPACES.len() * NS_ROOM)
}

/// Bytes of the stand-in mm, rounded to 8.
fn mm_size(l: &Layout) -> usize {
    l.mm.as_ref().map_or(0, |m| m.size.div_ceil(8) * 8)
}

/// Fills the stand-in mm (`room`, at `base`) of `task` from `/proc/self/stat`: the bounds of
/// the process's code, data, heap, stack, arguments and environment.
fn fill_mm(m: &MmLayout, task: &mut [u8], room: &mut [u8], base: u64) {
    let Ok(stat) = std::fs::read_to_string("/proc/self/stat") else { return };
    // Fields after the name (which may hold spaces and parentheses) start at the third.
    let Some((_, rest)) = stat.rsplit_once(')') else { return };
    let fields: Vec<u64> = rest.split_whitespace().map(|f| f.parse().unwrap_or(0)).collect();
    for &(at, stat_field) in &m.fields {
        if let Some(&v) = fields.get(stat_field - 3) {
            room[at..at + 8].copy_from_slice(&v.to_le_bytes());
        }
    }
    task[m.in_task..m.in_task + 8].copy_from_slice(&base.to_le_bytes());
}

/// Fills the stand-in nsproxy (`room` holds it and then the namespaces) of `task` at `base`.
fn fill_namespaces(ns: &NsLayout, task: &mut [u8], room: &mut [u8], base: u64) {
    use std::os::unix::fs::MetadataExt;
    let (proxy, spaces) = room.split_at_mut(ns.size);
    for (i, &(at, proc_name, inum)) in ns.spaces.iter().enumerate() {
        if inum + 4 > NS_ROOM || at + 8 > ns.size {
            continue;
        }
        let space = &mut spaces[i * NS_ROOM..(i + 1) * NS_ROOM];
        let ino = std::fs::metadata(format!("/proc/self/ns/{proc_name}")).map_or(0, |m| m.ino() as u32);
        put32(space, inum, ino);
        let addr = base + (ns.size + i * NS_ROOM) as u64;
        proxy[at..at + 8].copy_from_slice(&addr.to_le_bytes());
    }
    task[ns.in_task..ns.in_task + 8].copy_from_slice(&base.to_le_bytes());
}

thread_local! {
    /// This thread's stand-in task (and its parent's), made on first use; kept for the
    /// thread's life (a few kilobytes per thread that asks).
    static TASK: Cell<usize> = const { Cell::new(0) };
}

fn put32(buf: &mut [u8], at: usize, v: u32) {
    buf[at..at + 4].copy_from_slice(&v.to_le_bytes());
}

/// Reads the kernel's BTF for the stand-ins' layout now, rather than at the first call.
pub fn warm_up() {
    let _ = layout();
}

/// The address of this thread's stand-in `task_struct`, refreshed (ids and name) on each call;
/// 0 when the kernel's BTF cannot be read.
pub fn current_task(pid: u32, tid: u32, comm: &[u8]) -> u64 {
    current_task_block(pid, tid, comm).map_or(0, |(task, _)| task)
}

/// [`current_task`], with the length of the block it starts (the stand-in task, its parent,
/// nsproxy and namespaces: everything its pointers reach), which lives as long as the thread.
pub fn current_task_block(pid: u32, tid: u32, comm: &[u8]) -> Option<(u64, u64)> {
    let l = layout()?;
    let task = fill_current_task(l, pid, tid, comm);
    (task != 0).then(|| (task, stand_in_size(l) as u64))
}

fn fill_current_task(l: &Layout, pid: u32, tid: u32, comm: &[u8]) -> u64 {
    let size = stand_in_size(l);
    TASK.try_with(|cell| {
        let fresh = cell.get() == 0;
        if fresh {
            let all: &'static mut [u8] = Box::leak(vec![0u8; size].into_boxed_slice());
            cell.set(all.as_mut_ptr() as usize);
        }
        // SAFETY: the `size` bytes leaked above for this thread, only used by this thread.
        let all = unsafe { std::slice::from_raw_parts_mut(cell.get() as *mut u8, size) };
        let (task, rest) = all.split_at_mut(l.size);
        let (parent, rest) = rest.split_at_mut(l.size);
        let (mm, room) = rest.split_at_mut(mm_size(l));
        if fresh {
            // Namespaces change rarely (unshare, setns), the bounds the mm holds as rarely
            // (an exec, which starts afresh): read once per thread.
            if let Some(ns) = &l.nsproxy {
                let base = room.as_ptr() as u64;
                fill_namespaces(ns, task, room, base);
            }
            if let Some(m) = &l.mm {
                let base = mm.as_ptr() as u64;
                fill_mm(m, task, mm, base);
            }
        }
        put32(task, l.pid, tid);
        put32(task, l.tgid, pid);
        let n = comm.len().min(15);
        task[l.comm..l.comm + 16].fill(0);
        task[l.comm..l.comm + n].copy_from_slice(&comm[..n]);
        // SAFETY: getppid cannot fail.
        let ppid = unsafe { libc::getppid() } as u32;
        put32(parent, l.pid, ppid);
        put32(parent, l.tgid, ppid);
        let parent_addr = (parent.as_ptr() as u64).to_le_bytes();
        task[l.real_parent..l.real_parent + 8].copy_from_slice(&parent_addr);
        task[l.parent..l.parent + 8].copy_from_slice(&parent_addr);
        cell.get() as u64
    })
    .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::MetadataExt;

    /// The stand-in's `nsproxy->mnt_ns->ns.inum` is this process's mount namespace, at the
    /// offsets the kernel's BTF gives (skipped where the kernel has no BTF).
    #[test]
    fn namespaces_carry_their_inode_numbers() {
        let Some(l) = layout() else {
            println!("skipping: no /sys/kernel/btf/vmlinux");
            return;
        };
        let ns = l.nsproxy.as_ref().expect("the kernel's BTF describes nsproxy");
        let task = current_task(1, 2, b"x");
        let read = |addr: u64, off: usize, n: usize| -> Vec<u8> {
            // SAFETY: addresses inside this thread's stand-ins, which live for the thread.
            unsafe { std::slice::from_raw_parts((addr as usize + off) as *const u8, n) }.to_vec()
        };
        let u64_at = |addr: u64, off: usize| u64::from_le_bytes(read(addr, off, 8).try_into().unwrap());
        let proxy = u64_at(task, ns.in_task);
        let &(at, _, inum) = ns.spaces.iter().find(|s| s.1 == "mnt").expect("mnt_ns");
        let mnt = u64_at(proxy, at);
        let got = u32::from_le_bytes(read(mnt, inum, 4).try_into().unwrap());
        assert_eq!(got, std::fs::metadata("/proc/self/ns/mnt").unwrap().ino() as u32);
        assert!(ns.spaces.len() >= 6, "{:?}", ns.spaces);
    }
}
