//! What a loader killed before it could let go leaves in the region: the kernel closes a dead
//! process's fds, and a link, program, map or BTF object that nothing else references goes
//! with them. Here no one is told, so whoever opens the region next (a loader's server at its
//! start, an agent following the table) removes what belonged to loaders that are gone, along
//! with their forked children (`ShmRegion::add_heir`).
//!
//! What keeps an object as in the kernel: a pin, a link (programs), a program that uses it or
//! a map of maps holding it (maps), a prog array kept by a live process or a pin (programs in
//! it), a map or program described by it (BTF), and any live process that holds it (maps name
//! their holders). Objects no loader made (`bpftime load OBJ`'s) stay until removed.

use crate::{btfs, links, pins, progs};
use bpftime_maps::{Map, MapType};
use bpftime_shm::ShmRegion;
use std::collections::{HashMap, HashSet};
use std::sync::Arc;

/// How many objects of each kind [`remove`] removed.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Removed {
    /// Links.
    pub links: usize,
    /// Programs.
    pub programs: usize,
    /// Maps.
    pub maps: usize,
    /// BTF objects.
    pub btfs: usize,
}

/// The object ids a map's values hold (their first four bytes: a map of maps' inner maps, a
/// prog array's programs; 0, an empty slot, left out).
pub fn ids_held(map: &Map) -> Vec<u32> {
    let mut v = vec![0u8; map.spec().value_size as usize];
    let mut ids = vec![];
    for k in map.keys() {
        if map.lookup(&k, &mut v).is_ok() {
            if let Some(id) = v.get(..4).map(|b| u32::from_le_bytes(b.try_into().expect("four bytes"))).filter(|&id| id != 0) {
                ids.push(id);
            }
        }
    }
    ids
}

/// Removes the links, programs, maps and BTF objects that only loaders now gone held, until
/// nothing more goes (a prog array gone lets its programs go, a program its maps).
pub fn remove(region: &Arc<ShmRegion>) -> Removed {
    let mut removed = Removed { links: links::remove_orphans(region), ..Removed::default() };
    // Owners are looked up once per call (kill(2) per pid, then the region's forked children).
    let mut alive: HashMap<u32, bool> = HashMap::new();
    let mut owner_alive = |pid: u32| *alive.entry(pid).or_insert_with(|| region.owner_alive(pid));
    // Most calls find nothing to do: only objects whose owner is gone are looked at further.
    let dead_programs = |owner_alive: &mut dyn FnMut(u32) -> bool| -> Vec<u32> {
        progs::ids(region).into_iter().filter(|&p| matches!(progs::owner_of(region, p), o if o != 0 && !owner_alive(o))).collect()
    };
    loop {
        let programs = dead_programs(&mut owner_alive);
        let maps: Vec<Map> = Map::list(region).into_iter().filter(Map::abandoned).collect();
        let btfs: Vec<u32> = btfs::list(region).into_iter().filter(|&b| matches!(btfs::owner_of(region, b), o if o != 0 && !owner_alive(o))).collect();
        if programs.is_empty() && maps.is_empty() && btfs.is_empty() {
            break;
        }
        let before = removed;
        let pinned: HashSet<u32> = pins::list(region).into_iter().map(|p| p.target).collect();
        let all_maps = Map::list(region);
        // Programs: not pinned, run by no link, in no prog array that something keeps.
        let kept_tables: HashSet<u32> =
            all_maps.iter().filter(|m| m.map_type() == MapType::ProgArray && (pinned.contains(&m.id()) || !m.abandoned())).flat_map(ids_held).collect();
        for p in programs {
            if !pinned.contains(&p) && !kept_tables.contains(&p) && !links::uses_program(region, p) {
                progs::remove(region, p);
                removed.programs += 1;
            }
        }
        // Maps: not pinned, used by no program left, held by no map of maps.
        let stored = progs::list(region);
        let used: HashSet<u32> = stored.iter().flat_map(|p| p.map_refs().into_iter().map(|(_, id)| id)).collect();
        let inner: HashSet<u32> = all_maps.iter().filter(|m| matches!(m.map_type(), MapType::ArrayOfMaps | MapType::HashOfMaps)).flat_map(ids_held).collect();
        for m in maps {
            if !pinned.contains(&m.id()) && !used.contains(&m.id()) && !inner.contains(&m.id()) && m.claim_abandoned() {
                m.retire();
                removed.maps += 1;
            }
        }
        // BTF: describing no map or program left.
        let described: HashSet<u32> =
            Map::list(region).iter().map(|m| m.btf().object).chain(progs::ids(region).into_iter().map(|p| progs::btf_of(region, p))).collect();
        for b in btfs {
            if !described.contains(&b) {
                btfs::remove(region, b);
                removed.btfs += 1;
            }
        }
        if removed == before {
            break;
        }
    }
    removed
}
