//! `bpf_get_current_task` in userspace: a stand-in `struct task_struct` per thread, laid out
//! from the kernel's BTF (`/sys/kernel/btf/vmlinux`), so that programs compiled against
//! `vmlinux.h` and relocated by CO-RE read real values where they read the fields tools use:
//! `pid` (the thread id), `tgid` (the process id), `comm`, `real_parent`/`parent` (a
//! stand-in parent whose `pid` and `tgid` are the parent process's), `group_leader` (the task
//! itself in the main thread; in another thread a stand-in for the main thread, with the
//! process's name as `/proc/self/comm` gave it at the thread's first call, and the same
//! parent, namespaces and mm), and `nsproxy`, whose
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
    group_leader: usize,
    /// `task_struct.exit_code` and `start_time`, where the kernel's BTF has them.
    exit_code: Option<usize>,
    start_time: Option<usize>,
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

/// The stand-ins' layout, once known (from the kernel's BTF or the code cache).
static LAYOUT: OnceLock<Option<Layout>> = OnceLock::new();

fn layout() -> Option<&'static Layout> {
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
                group_leader: at("group_leader")?,
                exit_code: at("exit_code").filter(|&o| o + 4 <= t.size_or_type as usize),
                start_time: at("start_time").filter(|&o| o + 8 <= t.size_or_type as usize),
                nsproxy: ns_layout(&btf, id),
                mm: mm_layout(&btf, id),
            })
        })
        .as_ref()
}

/// Room for each stand-in namespace struct: enough for any `ns.inum` offset we accept.
const NS_ROOM: usize = 256;

/// Bytes of one thread's stand-ins: its task, its parent, its group leader, the mm, the
/// nsproxy and the namespaces.
fn stand_in_size(l: &Layout) -> usize {
    3 * l.size + mm_size(l) + l.nsproxy.as_ref().map_or(0, |ns| ns.size + NAMESPACES.len() * NS_ROOM)
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

bpftime_tls::initial_exec! {
    /// This thread's stand-in task (and its parent's), made on first use; kept for the
    /// thread's life (a few kilobytes per thread that asks).
    static TASK: Cell<usize> as "bpftime_runtime_task";
}

bpftime_tls::initial_exec! {
    /// The `exit_code` this thread's task shows: 0 until it exits.
    static EXIT_CODE: Cell<u32> as "bpftime_runtime_exit_code";
}

/// Sets the `exit_code` this thread's stand-in task shows to programs from now on, as the
/// kernel's `task_struct` holds it while the thread exits: the status in bits 8-15, a signal
/// that ended it in the low bits (wait(2)'s encoding).
pub fn set_exit_code(code: i32) {
    EXIT_CODE.set(code as u32);
}

/// When the thread `stat` (a `/proc/.../stat` file) describes started, on the monotonic clock
/// in nanoseconds, as `task_struct.start_time` holds it (what `bpf_ktime_get_ns` reads): its
/// field 22 is the boot-time clock in clock ticks, which also counts time suspended.
fn start_time_ns(stat: &str) -> u64 {
    let Some((_, rest)) = stat.rsplit_once(')') else { return 0 };
    let ticks: u64 = rest.split_whitespace().nth(22 - 3).and_then(|f| f.parse().ok()).unwrap_or(0);
    // SAFETY: sysconf(3) has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as u64;
    let now = |clock| {
        let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
        // SAFETY: clock_gettime(2) writes the timespec.
        unsafe { libc::clock_gettime(clock, &mut ts) };
        ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
    };
    let suspended = now(libc::CLOCK_BOOTTIME).saturating_sub(now(libc::CLOCK_MONOTONIC));
    ticks.saturating_mul(1_000_000_000 / hz).saturating_sub(suspended)
}

fn put32(buf: &mut [u8], at: usize, v: u32) {
    buf[at..at + 4].copy_from_slice(&v.to_le_bytes());
}

/// Reads the kernel's BTF for the stand-ins' layout now, rather than at the first call; with a
/// code cache, takes the layout a process of this boot kept there instead (parsing the
/// kernel's 5 MiB of BTF costs each traced process tens of milliseconds), or keeps it there.
pub fn warm_up(cache: Option<&bpftime_jit::cache::CodeCache>) {
    let key = || {
        // The running kernel (its BTF does not change within a boot) and its BTF's size.
        let boot = std::fs::read_to_string("/proc/sys/kernel/random/boot_id").ok()?;
        let size = std::fs::metadata("/sys/kernel/btf/vmlinux").ok()?.len();
        Some(format!("task layout 3 {} {size}", boot.trim()).into_bytes())
    };
    if let (Some(cache), None, Some(key)) = (cache, LAYOUT.get(), key()) {
        match cache.load_blob(&key).and_then(|b| decode_layout(&b)) {
            Some(l) => {
                let _ = LAYOUT.set(Some(l));
            }
            None => {
                if let Some(l) = layout() {
                    cache.store_blob(&key, &encode_layout(l));
                }
            }
        }
    }
    let _ = layout();
}

/// [`Layout`] as little-endian words, for the code cache.
fn encode_layout(l: &Layout) -> Vec<u8> {
    let mut w: Vec<u64> = [l.size, l.pid, l.tgid, l.comm, l.real_parent, l.parent, l.group_leader].iter().map(|&v| v as u64).collect();
    // (An absent field: past any task.)
    w.extend([l.exit_code, l.start_time].map(|f| f.map_or(u64::MAX, |v| v as u64)));
    match &l.nsproxy {
        Some(ns) => {
            w.extend([1, ns.in_task as u64, ns.size as u64, ns.spaces.len() as u64]);
            for &(at, name, inum) in &ns.spaces {
                let index = NAMESPACES.iter().position(|&(_, n)| n == name).unwrap_or(usize::MAX);
                w.extend([at as u64, index as u64, inum as u64]);
            }
        }
        None => w.push(0),
    }
    match &l.mm {
        Some(m) => {
            w.extend([1, m.in_task as u64, m.size as u64, m.fields.len() as u64]);
            for &(at, stat) in &m.fields {
                w.extend([at as u64, stat as u64]);
            }
        }
        None => w.push(0),
    }
    w.iter().flat_map(|v| v.to_le_bytes()).collect()
}

/// A layout [`encode_layout`] wrote, if every place it names lies within the stand-ins as
/// [`fill_current_task`] writes them (the cache is trusted as code is, and checked anyway).
fn decode_layout(bytes: &[u8]) -> Option<Layout> {
    const MOST: usize = 1 << 16;
    let mut words = bytes.chunks_exact(8).map(|c| u64::from_le_bytes(c.try_into().unwrap_or_default()) as usize);
    let mut next = || words.next();
    let size = next().filter(|&s| s <= MOST)?;
    let within = |at: usize, width: usize, size: usize| at.checked_add(width).is_some_and(|end| end <= size);
    let field = |at: usize, width: usize| within(at, width, size).then_some(at);
    let (pid, tgid, comm) = (field(next()?, 4)?, field(next()?, 4)?, field(next()?, 16)?);
    let (real_parent, parent, group_leader) = (field(next()?, 8)?, field(next()?, 8)?, field(next()?, 8)?);
    let optional = |at: usize, width: usize| if at == usize::MAX { Some(None) } else { field(at, width).map(Some) };
    let (exit_code, start_time) = (optional(next()?, 4)?, optional(next()?, 8)?);
    let nsproxy = match next()? {
        0 => None,
        1 => {
            let in_task = field(next()?, 8)?;
            let ns_size = next().filter(|&s| s <= MOST)?;
            let n = next().filter(|&n| n <= NAMESPACES.len())?;
            let mut spaces = Vec::with_capacity(n);
            for _ in 0..n {
                // (Places outside the stand-ins are skipped where they are filled.)
                let at = next().filter(|&at| at <= MOST)?;
                let name = NAMESPACES.get(next()?)?.1;
                let inum = next().filter(|&i| i <= MOST)?;
                spaces.push((at, name, inum));
            }
            Some(NsLayout { in_task, size: ns_size, spaces })
        }
        _ => return None,
    };
    let mm = match next()? {
        0 => None,
        1 => {
            let in_task = field(next()?, 8)?;
            let mm_size = next().filter(|&s| s <= MOST)?;
            let n = next().filter(|&n| n <= MM_FIELDS.len())?;
            let mut fields = Vec::with_capacity(n);
            for _ in 0..n {
                let at = next().filter(|&at| within(at, 8, mm_size))?;
                let stat = next().filter(|&f| (3..=64).contains(&f))?;
                fields.push((at, stat));
            }
            Some(MmLayout { in_task, size: mm_size, fields })
        }
        _ => return None,
    };
    next().is_none().then_some(Layout { size, pid, tgid, comm, real_parent, parent, group_leader, exit_code, start_time, nsproxy, mm })
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
    let cell = &*TASK;
    let fresh = cell.get() == 0;
    if fresh {
        let all: &'static mut [u8] = Box::leak(vec![0u8; size].into_boxed_slice());
        cell.set(all.as_mut_ptr() as usize);
    }
    // SAFETY: the `size` bytes leaked above for this thread, only used by this thread.
    let all = unsafe { std::slice::from_raw_parts_mut(cell.get() as *mut u8, size) };
    let (task, rest) = all.split_at_mut(l.size);
    let (parent, rest) = rest.split_at_mut(l.size);
    let (leader, rest) = rest.split_at_mut(l.size);
    let (mm, room) = rest.split_at_mut(mm_size(l));
    if fresh {
        // Namespaces change rarely (unshare, setns), the bounds the mm holds as rarely
        // (an exec, which starts afresh): read once per thread.
        if let Some(ns) = &l.nsproxy {
            let base = room.as_ptr() as u64;
            fill_namespaces(ns, task, room, base);
            leader[ns.in_task..ns.in_task + 8].copy_from_slice(&base.to_le_bytes());
        }
        if let Some(m) = &l.mm {
            let base = mm.as_ptr() as u64;
            fill_mm(m, task, mm, base);
            leader[m.in_task..m.in_task + 8].copy_from_slice(&base.to_le_bytes());
        }
        if let Some(at) = l.start_time {
            let started = |path: &str| start_time_ns(&std::fs::read_to_string(path).unwrap_or_default()).to_le_bytes();
            task[at..at + 8].copy_from_slice(&started("/proc/thread-self/stat"));
            leader[at..at + 8].copy_from_slice(&started("/proc/self/stat"));
        }
        // Another thread's leader: the main thread, with the process's id, name and parent
        // (which only the main thread's own calls give otherwise); none of it changes while
        // this thread lives (a fork keeps only the forking thread, the child's main thread).
        if pid != tid {
            let name = std::fs::read("/proc/self/comm").unwrap_or_default();
            put_comm(leader, l.comm, name.strip_suffix(b"\n").unwrap_or(&name));
            put32(leader, l.pid, pid);
            put32(leader, l.tgid, pid);
            let parent_addr = (parent.as_ptr() as u64).to_le_bytes();
            leader[l.real_parent..l.real_parent + 8].copy_from_slice(&parent_addr);
            leader[l.parent..l.parent + 8].copy_from_slice(&parent_addr);
            let own = (leader.as_ptr() as u64).to_le_bytes();
            leader[l.group_leader..l.group_leader + 8].copy_from_slice(&own);
        }
    }
    put32(task, l.pid, tid);
    put32(task, l.tgid, pid);
    put_comm(task, l.comm, comm);
    if let Some(at) = l.exit_code {
        put32(task, at, EXIT_CODE.get());
    }
    // SAFETY: getppid cannot fail.
    let ppid = unsafe { libc::getppid() } as u32;
    put32(parent, l.pid, ppid);
    put32(parent, l.tgid, ppid);
    let parent_addr = (parent.as_ptr() as u64).to_le_bytes();
    task[l.real_parent..l.real_parent + 8].copy_from_slice(&parent_addr);
    task[l.parent..l.parent + 8].copy_from_slice(&parent_addr);
    // The main thread leads its group itself (a forked child's main thread is the thread that
    // forked, whose stand-in goes on from the parent's).
    let leader_addr = if pid == tid { task.as_ptr() as u64 } else { leader.as_ptr() as u64 };
    task[l.group_leader..l.group_leader + 8].copy_from_slice(&leader_addr.to_le_bytes());
    cell.get() as u64
}

/// Writes `name` (at most 15 bytes, NUL-padded) as the `comm` at `at` of a stand-in task.
fn put_comm(task: &mut [u8], at: usize, name: &[u8]) {
    let n = name.len().min(15);
    task[at..at + 16].fill(0);
    task[at..at + n].copy_from_slice(&name[..n]);
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The layout kept in the code cache reads back as it was made; one that names a place
    /// outside the stand-ins, or is cut or longer, is refused.
    #[test]
    fn a_kept_layout_reads_back_as_made_and_a_bad_one_is_refused() {
        let Some(l) = layout() else { return println!("skipping: no /sys/kernel/btf/vmlinux") };
        let bytes = encode_layout(l);
        let back = decode_layout(&bytes).expect("decoded");
        assert_eq!(encode_layout(&back), bytes);
        assert!(l.nsproxy.is_some() && l.mm.is_some(), "this kernel's BTF describes both");
        let mut bad = bytes.clone();
        // `comm` (16 bytes) 8 bytes before the task's end.
        bad[24..32].copy_from_slice(&(l.size as u64 - 8).to_le_bytes());
        assert!(decode_layout(&bad).is_none());
        assert!(decode_layout(&bytes[..bytes.len() - 8]).is_none());
        let mut longer = bytes.clone();
        longer.extend([0u8; 8]);
        assert!(decode_layout(&longer).is_none());
    }
    use std::os::unix::fs::MetadataExt;

    /// `group_leader`: in a thread other than the main one, a stand-in with the process's id
    /// and name (`/proc/self/comm`) and the same parent; in the main thread, the task itself
    /// (syscount -P prints `current->group_leader->comm`).
    #[test]
    fn the_group_leader_is_the_main_thread() {
        let Some(l) = layout() else { return println!("skipping: no /sys/kernel/btf/vmlinux") };
        let l = l.clone();
        std::thread::spawn(move || {
            let word = |addr: u64, off: usize| -> u64 {
                // SAFETY: addresses inside this thread's stand-ins, which live for the thread.
                unsafe { std::ptr::read_unaligned((addr as usize + off) as *const u64) }
            };
            let task = current_task(4242, 4343, b"worker");
            let leader = word(task, l.group_leader);
            assert!(leader != 0 && leader != task);
            assert_eq!(word(leader, l.pid) as u32, 4242);
            assert_eq!(word(leader, l.tgid) as u32, 4242);
            assert_eq!(word(leader, l.real_parent), word(task, l.real_parent));
            assert_eq!(word(leader, l.group_leader), leader);
            let name = std::fs::read_to_string("/proc/self/comm").unwrap();
            // SAFETY: as above.
            let comm = unsafe { std::slice::from_raw_parts((leader as usize + l.comm) as *const u8, 16) };
            assert_eq!(&comm[..name.trim_end().len()], name.trim_end().as_bytes());
            assert_eq!(comm[name.trim_end().len()], 0);
            if let Some(ns) = &l.nsproxy {
                assert_eq!(word(leader, ns.in_task), word(task, ns.in_task));
            }
            // The same thread as its process's main thread (a forked child's).
            let task = current_task(4343, 4343, b"worker");
            assert_eq!(word(task, l.group_leader), task);
        })
        .join()
        .unwrap();
    }

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
