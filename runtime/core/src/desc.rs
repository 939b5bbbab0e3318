//! Fixed-layout descriptors kept in the region (programs, links): plain structs written and
//! read as bytes, with NUL-padded text fields (`bpftime_shm::text`).

use bpftime_shm::{ObjectKind, ShmError, ShmRegion};
use std::sync::atomic::Ordering;

/// A `repr(C)` struct of integers and byte arrays.
///
/// # Safety
/// The type has no padding and every bit pattern is a valid value, so it can be viewed as bytes
/// and rebuilt from any bytes.
pub(crate) unsafe trait Plain: Copy {}

/// Writes `desc` into the region and registers it as object `name` of `kind`; returns its id.
pub(crate) fn store<T: Plain>(region: &ShmRegion, kind: ObjectKind, name: &str, desc: &T) -> Result<u32, ShmError> {
    let off = region.alloc(std::mem::size_of::<T>() as u64)?;
    // SAFETY: `T: Plain` has no padding, so all its bytes are initialised.
    let bytes = unsafe { std::slice::from_raw_parts(desc as *const T as *const u8, std::mem::size_of::<T>()) };
    region.write(off, bytes);
    // The descriptor is complete before the object table names it.
    std::sync::atomic::fence(Ordering::Release);
    region.add_object(kind, name, off)
}

/// Reads a descriptor at `off`, or None if it lies outside the region.
pub(crate) fn load<T: Plain>(region: &ShmRegion, off: u64) -> Option<T> {
    let mut raw = vec![0u8; std::mem::size_of::<T>()];
    if !region.read(off, &mut raw) {
        return None;
    }
    // SAFETY: `raw` holds size_of::<T>() bytes and `T: Plain` accepts any bit pattern.
    Some(unsafe { std::ptr::read_unaligned(raw.as_ptr() as *const T) })
}

pub(crate) use bpftime_shm::text::{fill, text};
