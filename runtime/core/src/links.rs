//! Links in the shared region: a program attached (or to be attached) somewhere. The agent in
//! a traced process reads them and attaches what they name.

use crate::desc::{self, Plain};
use bpftime_object::ProgramKind;
use bpftime_shm::{ObjectKind, ShmError, ShmRegion};

const LINK_MAGIC: u64 = 0x6270_665f_6c69_6e6b; // "bpf_link"
const TARGET_LEN: usize = 512;

#[repr(C)]
#[derive(Clone, Copy)]
struct LinkDesc {
    magic: u64,
    prog: u32,
    retprobe: u32,
    cookie: u64,
    target: [u8; TARGET_LEN],
}

// SAFETY: integers and a byte array, sizes multiples of 8: no padding, any bit pattern valid.
unsafe impl Plain for LinkDesc {}

/// A uprobe link: program `prog` on `target` (`BINARY:FUNCTION[+OFFSET]` or `BINARY:OFFSET`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UprobeLink {
    /// Object id of the link.
    pub id: u32,
    /// The link's name (its program's function name).
    pub name: String,
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
    desc::fill(&mut desc.target, target);
    desc::store(region, ObjectKind::Link, name, &desc)
}

/// What [`store_uprobes`] did.
#[derive(Clone, Debug, Default)]
pub struct StoredUprobes {
    /// The links written.
    pub links: Vec<UprobeLink>,
    /// (program, section) of uprobe programs whose section names no `BINARY:FUNCTION`.
    pub no_target: Vec<(String, String)>,
}

/// Writes a link for each uprobe/uretprobe program (`(name, section, program id)`, as
/// [`crate::LoadedObject::programs`] lists them) whose section names where to attach in the
/// libbpf spelling (`uprobe/BINARY:FUNCTION[+OFFSET]`, `uretprobe/...`).
pub fn store_uprobes(region: &ShmRegion, programs: &[(String, String, u32)]) -> Result<StoredUprobes, ShmError> {
    let mut out = StoredUprobes::default();
    for (name, section, prog) in programs {
        let ProgramKind::Uprobe { retprobe, target } = ProgramKind::from_section(section) else { continue };
        if !target.contains(':') {
            out.no_target.push((name.clone(), section.clone()));
            continue;
        }
        let id = store(region, name, *prog, &target, retprobe, 0)?;
        out.links.push(UprobeLink { id, name: name.clone(), prog: *prog, target, retprobe, cookie: 0 });
    }
    Ok(out)
}

/// Every uprobe link in the region.
pub fn list(region: &ShmRegion) -> Vec<UprobeLink> {
    region
        .objects()
        .into_iter()
        .filter(|o| o.kind == ObjectKind::Link)
        .filter_map(|o| {
            let d: LinkDesc = desc::load(region, o.data)?;
            if d.magic != LINK_MAGIC {
                return None;
            }
            Some(UprobeLink {
                id: o.id,
                name: o.name,
                prog: d.prog,
                target: desc::text(&d.target),
                retprobe: d.retprobe != 0,
                cookie: d.cookie,
            })
        })
        .collect()
}
