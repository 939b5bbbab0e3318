//! Map references as programs see them: `lddw rX, map` loads an opaque value that helpers
//! turn back into the map. The value is a tag plus an index into a process-wide table of open
//! maps, so a program that passes a forged value to a helper gets an error, not a wild
//! pointer.

use bpftime_maps::Map;
use std::collections::HashMap;
use std::sync::atomic::{AtomicPtr, AtomicUsize, Ordering};
use std::sync::RwLock;

/// High bits of every map reference.
pub const MAP_REF_TAG: u64 = 0xbf7f_0000_0000_0000;
const CAPACITY: usize = 1 << 14;

static SLOTS: [AtomicPtr<Map>; CAPACITY] = [const { AtomicPtr::new(std::ptr::null_mut()) }; CAPACITY];
static NEXT: AtomicUsize = AtomicUsize::new(0);
/// (region base address, map id) -> reference.
static INDEX: RwLock<Option<HashMap<(usize, u32), u64>>> = RwLock::new(None);

/// The reference programs use for `map`, registering it on first use. Maps stay registered for
/// the life of the process. Returns None when the table is full.
pub fn map_ref(map: &Map) -> Option<u64> {
    let key = (map.region().base() as usize, map.id());
    let mut index = INDEX.write().unwrap_or_else(|e| e.into_inner());
    let index = index.get_or_insert_with(HashMap::new);
    if let Some(&r) = index.get(&key) {
        return Some(r);
    }
    let i = NEXT.fetch_add(1, Ordering::Relaxed);
    if i >= CAPACITY {
        return None;
    }
    let leaked: &'static mut Map = Box::leak(Box::new(map.clone()));
    SLOTS[i].store(leaked, Ordering::Release);
    let r = MAP_REF_TAG | i as u64;
    index.insert(key, r);
    Some(r)
}

/// The reference of map `id` in the region `outer` lives in (a map-in-map lookup's result):
/// a shared-lock lookup once the map is registered, opening it only the first time.
pub(crate) fn map_ref_by_id(outer: &Map, id: u32) -> Option<u64> {
    if id == 0 {
        return None;
    }
    let key = (outer.region().base() as usize, id);
    if let Some(&r) = INDEX.read().unwrap_or_else(|e| e.into_inner()).as_ref().and_then(|i| i.get(&key)) {
        return Some(r);
    }
    map_ref(&Map::open(outer.region(), id).ok()?)
}

/// The map behind a reference, if it is one.
#[inline]
pub fn map_of(r: u64) -> Option<&'static Map> {
    if r & 0xffff_0000_0000_0000 != MAP_REF_TAG {
        return None;
    }
    let i = (r & 0xffff_ffff) as usize;
    let p = SLOTS.get(i)?.load(Ordering::Acquire);
    // SAFETY: non-null slots hold maps leaked by `map_ref`, never freed or mutated.
    unsafe { p.as_ref() }
}
