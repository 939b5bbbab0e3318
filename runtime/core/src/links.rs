//! Links in the shared region: a program attached (or to be attached) somewhere. The agent in
//! a traced process reads them and attaches what they name.

use bpftime_shm::{ObjectKind, ShmError, ShmRegion};
use std::sync::atomic::Ordering;

const LINK_MAGIC: u64 = 0x6270_665f_6c69_6e6b; // "bpf_link"
const TARGET_LEN: usize = 512;

#[repr(C)]
struct LinkDesc {
    magic: u64,
    prog: u32,
    retprobe: u32,
    cookie: u64,
    target: [u8; TARGET_LEN],
}

/// A uprobe link: program `prog` on `target` (`BINARY:FUNCTION[+OFFSET]` or `BINARY:OFFSET`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UprobeLink {
    /// Object id of the link.
    pub id: u32,
    /// Program id.
    pub prog: u32,
    /// Where to attach.
    pub target: String,
    /// uretprobe rather than uprobe.
    pub retprobe: bool,
    /// `bpf_get_attach_cookie`.
    pub cookie: u64,
}

/// Stores a link; returns its id.
pub fn store(region: &ShmRegion, name: &str, prog: u32, target: &str, retprobe: bool, cookie: u64) -> Result<u32, ShmError> {
    let mut desc = LinkDesc { magic: LINK_MAGIC, prog, retprobe: retprobe as u32, cookie, target: [0; TARGET_LEN] };
    let n = target.len().min(TARGET_LEN - 1);
    desc.target[..n].copy_from_slice(&target.as_bytes()[..n]);
    let off = region.alloc(std::mem::size_of::<LinkDesc>() as u64)?;
    // SAFETY: LinkDesc is plain integers and bytes; viewing it as bytes is sound.
    let bytes = unsafe { std::slice::from_raw_parts(&desc as *const LinkDesc as *const u8, std::mem::size_of::<LinkDesc>()) };
    region.write(off, bytes);
    std::sync::atomic::fence(Ordering::Release);
    region.add_object(ObjectKind::Link, name, off)
}

/// Every uprobe link in the region.
pub fn list(region: &ShmRegion) -> Vec<UprobeLink> {
    region
        .objects()
        .into_iter()
        .filter(|o| o.kind == ObjectKind::Link)
        .filter_map(|o| {
            let mut raw = vec![0u8; std::mem::size_of::<LinkDesc>()];
            if !region.read(o.data, &mut raw) {
                return None;
            }
            // SAFETY: `raw` holds a LinkDesc's bytes; any bit pattern is a valid LinkDesc.
            let d: LinkDesc = unsafe { std::ptr::read_unaligned(raw.as_ptr() as *const LinkDesc) };
            if d.magic != LINK_MAGIC {
                return None;
            }
            let end = d.target.iter().position(|&b| b == 0).unwrap_or(TARGET_LEN);
            Some(UprobeLink {
                id: o.id,
                prog: d.prog,
                target: String::from_utf8_lossy(&d.target[..end]).to_string(),
                retprobe: d.retprobe != 0,
                cookie: d.cookie,
            })
        })
        .collect()
}
