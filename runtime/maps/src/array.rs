//! ARRAY, PERCPU_ARRAY, and the id arrays (PROG_ARRAY, ARRAY_OF_MAPS, PERF_EVENT_ARRAY).
//!
//! Values are contiguous, one 8-aligned stride per index (per-CPU: a block of them per CPU, see
//! [`percpu_blocks`]). Elements always exist: updates overwrite in place and deletes are refused, as in
//! the kernel. Id arrays hold a u32 object id per index, 0 meaning empty.

use crate::{check_update_flags, current_cpu, round8, Errno, Layout, Map, MapSpec, MapType, ValueBlocks, BPF_ANY, BPF_NOEXIST, CACHE_LINE};
use bpftime_shm::ObjectKind;
use std::sync::atomic::Ordering;

fn index(key: &[u8]) -> u32 {
    u32::from_le_bytes(key[..4].try_into().expect("key_size checked to be 4"))
}

fn slot(map: &Map, idx: u32, cpu: u32) -> u64 {
    let l = map.layout();
    if map.map_type() == MapType::PercpuArray {
        return map.value_blocks().value_at(idx as u64, cpu);
    }
    l.data + idx as u64 * l.elem_size
}

/// A per-CPU array's values: CPU `c`'s block (its value of every index, in whole cache lines,
/// so that CPUs writing their own values never share a line) starts at `first + c * block`,
/// `first` being the first cache line boundary of the storage.
pub(crate) fn percpu_blocks(spec: &MapSpec, l: &Layout) -> ValueBlocks {
    let block = crate::percpu_block(spec.max_entries as u64, l.elem_size).expect("a validated spec");
    ValueBlocks { first: l.data.next_multiple_of(CACHE_LINE), block, slot: l.elem_size, lead: 0 }
}

pub(crate) fn lookup(map: &Map, key: &[u8], value: &mut [u8]) -> Result<(), Errno> {
    let idx = index(key);
    if idx >= map.spec().max_entries {
        return Err(Errno::ENOENT);
    }
    let r = map.region();
    match map.map_type() {
        MapType::PercpuArray => {
            let stride = round8(map.spec().value_size as u64) as usize;
            for cpu in 0..map.ncpus() {
                let chunk = &mut value[cpu as usize * stride..][..stride];
                let vs = map.spec().value_size as usize;
                r.read(slot(map, idx, cpu), &mut chunk[..vs]);
                chunk[vs..].fill(0);
            }
        }
        MapType::ProgArray | MapType::ArrayOfMaps => {
            let id = r.atomic_u32(slot(map, idx, 0)).map(|a| a.load(Ordering::Acquire)).unwrap_or(0);
            if id == 0 {
                return Err(Errno::ENOENT);
            }
            value.copy_from_slice(&id.to_le_bytes());
        }
        _ => {
            r.read(slot(map, idx, 0), value);
        }
    }
    Ok(())
}

/// The index an update writes, after the checks every array update makes.
fn update_index(map: &Map, key: &[u8], flags: u64) -> Result<u32, Errno> {
    check_update_flags(flags)?;
    let idx = index(key);
    if idx >= map.spec().max_entries {
        return Err(Errno::E2BIG);
    }
    if flags == BPF_NOEXIST {
        // Every element of an array exists.
        return Err(Errno::EEXIST);
    }
    Ok(idx)
}

pub(crate) fn update(map: &Map, key: &[u8], value: &[u8], flags: u64) -> Result<(), Errno> {
    let idx = update_index(map, key, flags)?;
    let r = map.region();
    if map.map_type() == MapType::PercpuArray {
        let stride = round8(map.spec().value_size as u64) as usize;
        let vs = map.spec().value_size as usize;
        for cpu in 0..map.ncpus() {
            r.write(slot(map, idx, cpu), &value[cpu as usize * stride..][..vs]);
        }
    } else {
        r.write(slot(map, idx, 0), value);
    }
    Ok(())
}

pub(crate) fn update_percpu_one(map: &Map, key: &[u8], value: &[u8], flags: u64) -> Result<(), Errno> {
    if key.len() != 4 || value.len() != map.spec().value_size as usize {
        return Err(Errno::EINVAL);
    }
    let idx = update_index(map, key, flags)?;
    let cpu = current_cpu();
    if cpu >= map.ncpus() {
        return Err(Errno::EINVAL);
    }
    map.region().write(slot(map, idx, cpu), value);
    Ok(())
}

/// Updates an id array: the value is the id of a program (PROG_ARRAY), of a map shaped like
/// the inner template (ARRAY_OF_MAPS), or a CPU/buffer number (PERF_EVENT_ARRAY).
pub(crate) fn update_id(map: &Map, key: &[u8], value: &[u8], flags: u64) -> Result<(), Errno> {
    if flags != BPF_ANY {
        return Err(Errno::EINVAL);
    }
    let idx = index(key);
    if idx >= map.spec().max_entries {
        return Err(Errno::E2BIG);
    }
    let id = u32::from_le_bytes(value[..4].try_into().expect("value_size 4"));
    let r = map.region();
    match map.map_type() {
        // A kernel program (see `KERNEL_PROGRAM`): the syscall side checked it.
        MapType::ProgArray if id & crate::KERNEL_PROGRAM != 0 => {}
        MapType::ProgArray if r.object(id).map(|o| o.kind) != Some(ObjectKind::Program) => {
            return Err(Errno::EBADF);
        }
        MapType::ArrayOfMaps => check_inner(map, id)?,
        _ => {}
    }
    let stored = if map.map_type() == MapType::PerfEventArray { id.wrapping_add(1) } else { id };
    r.atomic_u32(slot(map, idx, 0)).ok_or(Errno::EFAULT)?.store(stored, Ordering::Release);
    Ok(())
}

/// Checks that map `id` exists and has the shape of the map-in-map's inner template.
pub(crate) fn check_inner(map: &Map, id: u32) -> Result<(), Errno> {
    let inner = Map::open(map.region(), id).map_err(|_| Errno::EBADF)?;
    let want = map.inner_spec().ok_or(Errno::EINVAL)?;
    let got = inner.spec();
    if got.map_type != want.map_type || got.key_size != want.key_size || got.value_size != want.value_size {
        return Err(Errno::EINVAL);
    }
    Ok(())
}

pub(crate) fn delete_id(map: &Map, key: &[u8]) -> Result<(), Errno> {
    let idx = index(key);
    if idx >= map.spec().max_entries {
        return Err(Errno::E2BIG);
    }
    let a = map.region().atomic_u32(slot(map, idx, 0)).ok_or(Errno::EFAULT)?;
    if a.swap(0, Ordering::AcqRel) == 0 {
        Err(Errno::ENOENT)
    } else {
        Ok(())
    }
}

pub(crate) fn next_key(map: &Map, key: Option<&[u8]>, next: &mut [u8]) -> Result<(), Errno> {
    let max = map.spec().max_entries;
    let n = match key.map(index) {
        None => 0,
        Some(i) if i >= max => 0,
        Some(i) if i == max - 1 => return Err(Errno::ENOENT),
        Some(i) => i + 1,
    };
    next.copy_from_slice(&n.to_le_bytes());
    Ok(())
}

/// The address of `key`'s value in CPU `cpu`'s slots (`cpu` below the map's CPU count; 0 for
/// a map that is not per-CPU).
#[inline]
pub(crate) fn lookup_ptr_on(map: &Map, key: &[u8], cpu: u32) -> Option<*mut u8> {
    if key.len() != 4 {
        return None;
    }
    let idx = index(key);
    if idx >= map.spec().max_entries {
        return None;
    }
    map.region().ptr(slot(map, idx, cpu), map.spec().value_size as u64)
}

/// The id stored at `idx` of an id array (0 = empty); PERF_EVENT_ARRAY entries are set+1.
pub(crate) fn id_at(map: &Map, idx: u32) -> u32 {
    if idx >= map.spec().max_entries {
        return 0;
    }
    map.region().atomic_u32(slot(map, idx, 0)).map(|a| a.load(Ordering::Acquire)).unwrap_or(0)
}

impl Map {
    /// The object id stored at `index` of a PROG_ARRAY or ARRAY_OF_MAPS (None when empty).
    pub fn id_at(&self, index: u32) -> Option<u32> {
        match self.map_type() {
            MapType::ProgArray | MapType::ArrayOfMaps => Some(id_at(self, index)).filter(|&id| id != 0),
            _ => None,
        }
    }

    /// The CPUs of a PERF_EVENT_ARRAY whose slot holds a perf event (a reader's ring: libbpf's
    /// `perf_buffer__new` stores one per CPU after mapping it); empty for other maps.
    pub fn perf_readers(&self) -> Vec<u32> {
        if self.map_type() != MapType::PerfEventArray {
            return vec![];
        }
        (0..self.spec().max_entries.min(self.ncpus())).filter(|&cpu| id_at(self, cpu) != 0).collect()
    }
}
