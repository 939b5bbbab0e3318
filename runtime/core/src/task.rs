//! `bpf_get_current_task` in userspace: a stand-in `struct task_struct` per thread, laid out
//! from the kernel's BTF (`/sys/kernel/btf/vmlinux`), so that programs compiled against
//! `vmlinux.h` and relocated by CO-RE read real values where they read the fields tools use:
//! `pid` (the thread id), `tgid` (the process id), `comm`, and `real_parent`/`parent` (a
//! stand-in parent whose `pid` and `tgid` are the parent process's). Every other field reads
//! as zero.

use bpftime_object::btf::{Btf, Kind};
use std::cell::Cell;
use std::sync::OnceLock;

/// Byte offsets of the fields we fill, and the struct's size.
#[derive(Clone, Copy, Debug)]
struct Layout {
    size: usize,
    pid: usize,
    tgid: usize,
    comm: usize,
    real_parent: usize,
    parent: usize,
}

fn layout() -> Option<Layout> {
    static LAYOUT: OnceLock<Option<Layout>> = OnceLock::new();
    *LAYOUT.get_or_init(|| {
        let btf = Btf::parse(&std::fs::read("/sys/kernel/btf/vmlinux").ok()?).ok()?;
        let id = *btf.find(Kind::Struct, "task_struct").first()?;
        let t = btf.get(id).ok()?;
        let at = |name: &str| t.members.iter().find(|m| m.name == name).map(|m| (m.offset / 8) as usize);
        Some(Layout {
            size: t.size_or_type as usize,
            pid: at("pid")?,
            tgid: at("tgid")?,
            comm: at("comm")?,
            real_parent: at("real_parent")?,
            parent: at("parent")?,
        })
    })
}

thread_local! {
    /// This thread's stand-in task (and its parent's), made on first use; kept for the
    /// thread's life (a few kilobytes per thread that asks).
    static TASK: Cell<usize> = const { Cell::new(0) };
}

fn put32(buf: &mut [u8], at: usize, v: u32) {
    buf[at..at + 4].copy_from_slice(&v.to_le_bytes());
}

/// The address of this thread's stand-in `task_struct`, refreshed (ids and name) on each call;
/// 0 when the kernel's BTF cannot be read.
pub fn current_task(pid: u32, tid: u32, comm: &[u8]) -> u64 {
    let Some(l) = layout() else { return 0 };
    TASK.try_with(|cell| {
        if cell.get() == 0 {
            let both: &'static mut [u8] = Box::leak(vec![0u8; 2 * l.size].into_boxed_slice());
            cell.set(both.as_mut_ptr() as usize);
        }
        // SAFETY: the 2 * size bytes leaked above for this thread, only used by this thread.
        let both = unsafe { std::slice::from_raw_parts_mut(cell.get() as *mut u8, 2 * l.size) };
        let (task, parent) = both.split_at_mut(l.size);
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
