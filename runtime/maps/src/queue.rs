//! QUEUE (FIFO) and STACK (LIFO): a ring of `max_entries + 1` slots under the map lock, with
//! the kernel's rules: pushing onto a full map fails with E2BIG unless `BPF_EXIST` asks to
//! overwrite the oldest element. Callers (`Map`) check value lengths.

use crate::{Errno, Map, MapType, BPF_EXIST, BPF_NOEXIST};
use std::sync::atomic::Ordering;

/// The ring's slot count and its current head and tail (read under the map lock).
fn positions(map: &Map) -> (u64, u64, u64) {
    let n = map.spec().max_entries as u64 + 1;
    let d = map.desc();
    (n, d.head.load(Ordering::Relaxed) % n, d.tail.load(Ordering::Relaxed) % n)
}

fn slot(map: &Map, i: u64) -> u64 {
    map.layout().data + i * map.layout().elem_size
}

pub(crate) fn push(map: &Map, value: &[u8], flags: u64) -> Result<(), Errno> {
    if flags & BPF_NOEXIST != 0 || flags > BPF_EXIST {
        return Err(Errno::EINVAL);
    }
    let d = map.desc();
    let _g = map.write_lock();
    let (n, head, mut tail) = positions(map);
    if (head + 1) % n == tail {
        if flags & BPF_EXIST == 0 {
            return Err(Errno::E2BIG);
        }
        tail = (tail + 1) % n;
        d.tail.store(tail, Ordering::Relaxed);
        d.count.fetch_sub(1, Ordering::Relaxed);
    }
    map.region().write(slot(map, head), value);
    d.head.store((head + 1) % n, Ordering::Relaxed);
    d.count.fetch_add(1, Ordering::Relaxed);
    Ok(())
}

fn take(map: &Map, value: &mut [u8], remove: bool) -> Result<(), Errno> {
    let d = map.desc();
    let _g = map.write_lock();
    let (n, head, tail) = positions(map);
    if head == tail {
        return Err(Errno::ENOENT);
    }
    if map.map_type() == MapType::Queue {
        map.region().read(slot(map, tail), value);
        if remove {
            d.tail.store((tail + 1) % n, Ordering::Relaxed);
        }
    } else {
        let top = (head + n - 1) % n;
        map.region().read(slot(map, top), value);
        if remove {
            d.head.store(top, Ordering::Relaxed);
        }
    }
    if remove {
        d.count.fetch_sub(1, Ordering::Relaxed);
    }
    Ok(())
}

pub(crate) fn pop(map: &Map, value: &mut [u8]) -> Result<(), Errno> {
    take(map, value, true)
}

pub(crate) fn peek(map: &Map, value: &mut [u8]) -> Result<(), Errno> {
    take(map, value, false)
}

pub(crate) fn items(map: &Map) -> Vec<Vec<u8>> {
    let _g = map.write_lock();
    let (n, head, mut i) = positions(map);
    let mut out = vec![];
    while i != head && out.len() < n as usize {
        let mut v = vec![0u8; map.spec().value_size as usize];
        map.region().read(slot(map, i), &mut v);
        out.push(v);
        i = (i + 1) % n;
    }
    out
}
