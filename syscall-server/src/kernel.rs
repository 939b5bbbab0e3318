//! `--kernel-passthrough` (`BPFTIME_KERNEL_PASSTHROUGH=1`): what the region cannot run goes to
//! the kernel as it is, so that a tool mixing kernel and user probes still starts.
//!
//! - Program types only the kernel runs (XDP, tc, cgroup, fentry, LSM...) load into the
//!   kernel at once. The types we run (kprobe-type programs, which uprobes use, tracepoints,
//!   raw tracepoints, perf events) load into the region; the first time one is attached to a
//!   kernel event (a kprobe or kernel tracepoint perf event, a raw tracepoint other than
//!   `sys_enter`/`sys_exit`) it is loaded into the kernel too.
//! - A map a kernel program uses moves to the kernel: a kernel map is made with the same
//!   attributes and contents, and every fd of ours naming it becomes (`dup3`) that kernel map's
//!   fd, so the loader's lookups, `mmap` and `epoll` reach the kernel's copy. The region's copy
//!   stays for programs running in traced processes: a map shared by a kernel probe and a user
//!   probe is two maps.
//! - Map types only the kernel has, commands on kernel fds and commands we do not implement
//!   (BTF among them) go to the kernel.

use crate::attr::{self, Attr};
use crate::raw;
use crate::server::{Errno, Handle, PerfOutput, Server};
use bpftime_maps::{Map, MapType};
use std::collections::HashMap;
use std::ffi::{c_long, CString};
use std::sync::Mutex;

/// What passthrough keeps: how maps were made, which moved, which programs the kernel has.
#[derive(Default)]
pub struct Passthrough {
    /// `MAP_CREATE` attributes of each map made here (region id -> bytes).
    pub(crate) map_attrs: Mutex<HashMap<u32, Vec<u8>>>,
    /// Maps moved to the kernel (region id -> kernel fd).
    maps: Mutex<HashMap<u32, i32>>,
    /// The kernel's ids of moved maps (kernel map id -> region id).
    kernel_ids: Mutex<HashMap<u32, u32>>,
    /// Programs loaded into the kernel too (region id -> kernel fd).
    progs: Mutex<HashMap<u32, i32>>,
    /// How to load a region program into the kernel when it is attached there.
    pub(crate) deferred: Mutex<HashMap<u32, Deferred>>,
}

/// A region program as the kernel would load it: its `PROG_LOAD` attributes and instructions
/// with region map ids in `lddw`.
pub(crate) struct Deferred {
    pub(crate) attr: Vec<u8>,
    pub(crate) insns: Vec<bpftime_vm::insn::RawInsn>,
    pub(crate) license: String,
}

/// `bpf(cmd, attr)` in the kernel.
pub fn bpf(cmd: u32, attr: &mut [u8]) -> Result<i64, Errno> {
    raw::result(raw::syscall6(libc::SYS_bpf, [cmd as c_long, attr.as_mut_ptr() as c_long, attr.len() as c_long, 0, 0, 0]))
}

/// The kernel id of the kernel program behind fd `fd` of this process, None if it is not one.
pub fn program_id(fd: i32) -> Option<u32> {
    let link = std::fs::read_link(format!("/proc/self/fd/{fd}")).ok()?;
    if link.as_os_str() != "anon_inode:bpf-prog" {
        return None;
    }
    // struct bpf_prog_info starts with its type and id (u32 each).
    let mut info = [0u8; 8];
    let mut a = [0u8; 16];
    a[..4].copy_from_slice(&(fd as u32).to_le_bytes());
    a[4..8].copy_from_slice(&(info.len() as u32).to_le_bytes());
    a[8..16].copy_from_slice(&(info.as_mut_ptr() as u64).to_le_bytes());
    bpf(attr::OBJ_GET_INFO_BY_FD, &mut a).ok()?;
    Some(u32::from_le_bytes(info[4..8].try_into().ok()?))
}

/// Program types that run in the region (the rest are the kernel's).
fn runs_here(prog_type: u32) -> bool {
    // KPROBE (uprobes), TRACEPOINT, PERF_EVENT, RAW_TRACEPOINT.
    matches!(prog_type, 2 | 5 | 7 | 17)
}

/// Map types whose values are not plain data (fds, ids, records): a moved map starts empty.
fn plain_values(t: MapType) -> bool {
    !matches!(
        t,
        MapType::PerfEventArray
            | MapType::Ringbuf
            | MapType::ProgArray
            | MapType::ArrayOfMaps
            | MapType::HashOfMaps
            | MapType::Queue
            | MapType::Stack
            | MapType::BloomFilter
            | MapType::StackTrace
            | MapType::CgroupArray
    )
}

/// The kernel's id of the map behind kernel fd `fd` (`BPF_OBJ_GET_INFO_BY_FD`: `bpf_map_info`
/// starts with its type and id).
fn kernel_map_id(fd: i32) -> Option<u32> {
    let mut info = [0u8; 80];
    let mut a = vec![0u8; attr::ATTR_SIZE];
    a[0..4].copy_from_slice(&(fd as u32).to_le_bytes());
    a[4..8].copy_from_slice(&(info.len() as u32).to_le_bytes());
    a[8..16].copy_from_slice(&(info.as_mut_ptr() as u64).to_le_bytes());
    bpf(attr::OBJ_GET_INFO_BY_FD, &mut a).ok()?;
    Some(u32::from_le_bytes(info[4..8].try_into().ok()?))
}

fn serialise(insns: &[bpftime_vm::insn::RawInsn]) -> Vec<u8> {
    insns.iter().flat_map(|i| i.to_bytes()).collect()
}

impl Server {
    /// Whether command `cmd` belongs to the kernel under passthrough: one on an fd that is not
    /// ours, or one we do not implement.
    pub fn for_kernel(&self, cmd: u32, a: &Attr) -> bool {
        if self.kernel.is_none() {
            return false;
        }
        let theirs = |fd: u32| self.handle(fd as i32).is_none();
        match cmd {
            attr::MAP_CREATE
            | attr::PROG_LOAD
            | attr::OBJ_GET
            | attr::MAP_GET_NEXT_ID
            | attr::PROG_GET_NEXT_ID
            | attr::LINK_GET_NEXT_ID
            | attr::MAP_GET_FD_BY_ID
            | attr::PROG_GET_FD_BY_ID
            | attr::LINK_GET_FD_BY_ID => false,
            attr::MAP_LOOKUP_ELEM
            | attr::MAP_UPDATE_ELEM
            | attr::MAP_DELETE_ELEM
            | attr::MAP_GET_NEXT_KEY
            | attr::MAP_LOOKUP_AND_DELETE_ELEM
            | attr::MAP_FREEZE
            | attr::OBJ_GET_INFO_BY_FD
            | attr::LINK_DETACH
            | attr::LINK_CREATE => theirs(a.u32(0)),
            attr::MAP_LOOKUP_BATCH | attr::MAP_LOOKUP_AND_DELETE_BATCH | attr::MAP_UPDATE_BATCH | attr::MAP_DELETE_BATCH => theirs(a.u32(36)),
            attr::OBJ_PIN => theirs(a.u32(8)),
            attr::RAW_TRACEPOINT_OPEN => theirs(a.u32(8)),
            _ => true,
        }
    }

    /// Whether `PROG_LOAD` of this program goes straight to the kernel.
    pub(crate) fn load_in_kernel(&self, a: &Attr) -> bool {
        self.kernel.is_some() && !runs_here(a.u32(0))
    }

    /// `PROG_LOAD` in the kernel, now: the loader's attributes, with every map of ours the
    /// program names moved to the kernel.
    pub(crate) fn kernel_prog_load(&self, a: &mut Attr) -> Result<i64, Errno> {
        let insns = crate::server::program_with_maps(a, |fd| match self.handle(fd as i32) {
            Some(Handle::Map(id)) => self.move_map(id).map(|k| k as u32),
            _ => Ok(fd),
        })?;
        let code = serialise(&insns);
        let original = a.u64(8);
        a.0[8..16].copy_from_slice(&(code.as_ptr() as u64).to_le_bytes());
        let r = bpf(attr::PROG_LOAD, &mut a.0);
        a.0[8..16].copy_from_slice(&original.to_le_bytes());
        r
    }

    /// The kernel's fd for region program `id`, loading it there on first use (its maps move).
    pub(crate) fn kernel_prog(&self, id: u32) -> Result<i32, Errno> {
        let k = self.kernel.as_ref().ok_or(libc::EINVAL)?;
        if let Some(&fd) = Self::lock(&k.progs).get(&id) {
            return Ok(fd);
        }
        let (mut a, mut insns, license) = {
            let deferred = Self::lock(&k.deferred);
            let d = deferred.get(&id).ok_or(libc::EINVAL)?;
            (d.attr.clone(), d.insns.clone(), CString::new(d.license.clone()).unwrap_or_default())
        };
        crate::server::rewrite_map_refs(&mut insns, |insn| match insn.src {
            1 | 2 => self.move_map(insn.imm as u32).map(|k| Some(k as u32)),
            _ => Ok(None),
        })?;
        let code = serialise(&insns);
        a.resize(a.len().max(attr::ATTR_SIZE), 0);
        a[4..8].copy_from_slice(&(insns.len() as u32).to_le_bytes());
        a[8..16].copy_from_slice(&(code.as_ptr() as u64).to_le_bytes());
        a[16..24].copy_from_slice(&(license.as_ptr() as u64).to_le_bytes());
        // The loader's buffers (log, BTF line and function info, fd_array, CO-RE records) may
        // be gone by now: the program is loaded without them (its relocations are applied).
        for (at, len) in [(24, 16), (72, 48), (120, 24)] {
            a[at..at + len].fill(0);
        }
        let fd = bpf(attr::PROG_LOAD, &mut a)? as i32;
        Self::lock(&k.progs).insert(id, fd);
        Ok(fd)
    }

    /// The kernel map fd of region map `id`, moving it there on first use: a kernel map with
    /// the attributes it was made with and its contents; every fd of ours naming it becomes
    /// the kernel map's.
    fn move_map(&self, id: u32) -> Result<i32, Errno> {
        let k = self.kernel.as_ref().ok_or(libc::EINVAL)?;
        if let Some(&fd) = Self::lock(&k.maps).get(&id) {
            return Ok(fd);
        }
        let map = Map::open(self.region(), id).map_err(|_| libc::EBADF)?;
        let mut a = match Self::lock(&k.map_attrs).get(&id) {
            Some(a) => a.clone(),
            None => {
                // Made by another process: the same shape.
                let s = map.spec();
                let mut a = vec![0u8; attr::ATTR_SIZE];
                for (at, v) in [(0, s.map_type as u32), (4, s.key_size), (8, s.value_size), (12, s.max_entries), (16, s.flags)] {
                    a[at..at + 4].copy_from_slice(&v.to_le_bytes());
                }
                a
            }
        };
        if let Some(inner) = (map.spec().inner_map_id != 0).then_some(map.spec().inner_map_id) {
            let inner = self.move_map(inner)?;
            a[20..24].copy_from_slice(&(inner as u32).to_le_bytes());
        }
        let fd = bpf(attr::MAP_CREATE, &mut a)? as i32;
        if plain_values(map.map_type()) {
            let mut value = vec![0u8; map.syscall_value_size()];
            for key in map.keys() {
                if map.lookup(&key, &mut value).is_ok() {
                    let mut u = vec![0u8; attr::ATTR_SIZE];
                    u[0..4].copy_from_slice(&(fd as u32).to_le_bytes());
                    u[8..16].copy_from_slice(&(key.as_ptr() as u64).to_le_bytes());
                    u[16..24].copy_from_slice(&(value.as_ptr() as u64).to_le_bytes());
                    bpf(attr::MAP_UPDATE_ELEM, &mut u)?;
                }
            }
        }
        if map.is_frozen() {
            let mut f = vec![0u8; attr::ATTR_SIZE];
            f[0..4].copy_from_slice(&(fd as u32).to_le_bytes());
            bpf(attr::MAP_FREEZE, &mut f)?;
        }
        let mut fds = Self::lock(&self.fds);
        let ours: Vec<i32> = fds.iter().filter(|(_, h)| matches!(h, Handle::Map(m) if *m == id)).map(|(fd, _)| *fd).collect();
        for mine in ours {
            raw::result(raw::syscall6(libc::SYS_dup3, [fd as c_long, mine as c_long, libc::O_CLOEXEC as c_long, 0, 0, 0]))?;
            fds.remove(&mine);
        }
        drop(fds);
        if std::env::var_os("BPFTIME_VERBOSE").is_some() {
            eprintln!("bpftime: map `{}` moved to the kernel (a kernel program uses it); programs in traced processes keep the region's copy", map.name());
        }
        Self::lock(&k.maps).insert(id, fd);
        if let Some(kid) = kernel_map_id(fd) {
            Self::lock(&k.kernel_ids).insert(kid, id);
        }
        // Perf events already in its slots: the kernel's records reach their rings too.
        if map.map_type() == MapType::PerfEventArray {
            let bound: Vec<(u32, usize)> = Self::lock(&self.fds)
                .values()
                .filter_map(|h| match h {
                    Handle::PerfOutput(p @ PerfOutput { bound: Some((m, slot)), .. }) if *m == id => Some((*slot, p.ring_pages())),
                    _ => None,
                })
                .collect();
            for (slot, pages) in bound {
                crate::relay::start(fd, map.clone(), slot, pages)?;
            }
        }
        Ok(fd)
    }

    /// The region id of the map moved to the kernel that kernel fd `fd` names.
    pub(crate) fn moved_map(&self, fd: u32) -> Option<u32> {
        let k = self.kernel.as_ref()?;
        let kid = kernel_map_id(fd as i32)?;
        Self::lock(&k.kernel_ids).get(&kid).copied()
    }

    /// `MAP_UPDATE_ELEM` on a map moved to the kernel that puts one of our perf events in a
    /// PERF_EVENT_ARRAY slot: the region's slot gets the event (the loader reads its ring) and
    /// the kernel's a twin relayed into it (None: not such a call).
    pub(crate) fn kernel_perf_update(&self, a: &Attr) -> Option<Result<i64, Errno>> {
        self.kernel.as_ref()?;
        let value = crate::user::read(a.u64(16), 4).ok()?;
        let perf_fd = i32::from_le_bytes(value[..4].try_into().ok()?);
        let Some(Handle::PerfOutput(perf)) = self.handle(perf_fd) else { return None };
        let id = self.moved_map(a.u32(0))?;
        Some((|| {
            let map = Map::open(self.region(), id).map_err(|_| libc::EBADF)?;
            let key = crate::user::read(a.u64(8), 4)?;
            let slot = u32::from_le_bytes(key[..4].try_into().map_err(|_| libc::EINVAL)?);
            let value = self.value_in(&map, &key, value)?;
            map.update(&key, &value, a.u64(24)).map_err(|e| e.0)?;
            crate::relay::start(a.u32(0) as i32, map, slot, perf.ring_pages())?;
            Ok(0)
        })())
    }

    /// `PERF_EVENT_IOC_SET_BPF` on a kernel perf event with a program of ours: the program,
    /// loaded into the kernel, is attached there, or without `--kernel-passthrough` refused
    /// with the reason (None: not such a call).
    pub fn kernel_set_bpf(&self, fd: i32, request: u64, arg: u64) -> Option<Result<i64, Errno>> {
        if request != attr::PERF_EVENT_IOC_SET_BPF || self.handle(fd).is_some() {
            return None;
        }
        let Some(Handle::Prog(id)) = self.handle(arg as i32) else { return None };
        if self.kernel.is_none() {
            return Some(Err(self.kernel_event_refused(id, fd)));
        }
        Some(self.kernel_prog(id).and_then(|kfd| raw::result(raw::syscall6(libc::SYS_ioctl, [fd as c_long, request as c_long, kfd as c_long, 0, 0, 0]))))
    }

    /// `LINK_CREATE` (or a raw tracepoint) of a program of ours on something of the kernel's:
    /// the same call with the program loaded into the kernel; `prog_at` is where the attribute
    /// holds the program's fd.
    pub(crate) fn kernel_attach(&self, cmd: u32, a: &Attr, prog: u32, prog_at: usize) -> Result<i64, Errno> {
        let kfd = self.kernel_prog(prog)?;
        let mut k = a.0.clone();
        k[prog_at..prog_at + 4].copy_from_slice(&(kfd as u32).to_le_bytes());
        bpf(cmd, &mut k)
    }
}
