//! `bpftime attach PID` and `bpftime detach PID`: probes in a process that was started
//! without the agent, and their removal, with the process running on.

use crate::inject;
use bpftime_object::Object;
use bpftime_runtime::input::read_program_file;
use bpftime_runtime::links::{self, LinkState};
use bpftime_runtime::{EngineKind, Runtime};
use bpftime_shm::{ShmRegion, DEFAULT_SIZE};
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Loads `program` (if given) into region `shm` with links for process `pid` only, then loads
/// the agent into the process and starts it there. Says what got attached.
pub fn attach(pid: u32, program: Option<&Path>, engine: EngineKind, shm: &str, agent: &Path) -> Result<i32, String> {
    let exe = std::fs::read_link(format!("/proc/{pid}/exe")).map_err(|e| format!("process {pid}: {e}"))?;
    let region = Arc::new(ShmRegion::open_or_create(shm, DEFAULT_SIZE).map_err(|e| e.to_string())?);
    let mine: Vec<u32> = if let Some(path) = program {
        let shown = path.display().to_string();
        let bytes = read_program_file(path).map_err(|e| format!("{shown}: {e}"))?;
        let obj = Object::parse(&bytes).map_err(|e| format!("{shown}: {e}"))?;
        let loaded = Runtime::new(region.clone(), engine).load_object(&obj).map_err(|e| format!("{shown}: {e}"))?;
        for (name, section, why) in &loaded.refused {
            eprintln!("bpftime: {shown}: `{name}` (section `{section}`) is not loaded: {why}");
        }
        let stored = links::store_uprobes_for(&region, &loaded.programs, Some(&exe), pid).map_err(|e| e.to_string())?;
        for s in &stored.skipped {
            eprintln!("bpftime: {shown}: {s}");
        }
        stored.links.iter().map(|l| l.id).collect()
    } else {
        vec![]
    };
    if !inject::inject(pid, agent, shm)? {
        eprintln!("bpftime: an agent already runs in process {pid}; it follows region `{shm}` only if it was started with it");
    }
    for l in links::list(&region).into_iter().filter(|l| mine.contains(&l.id) || (mine.is_empty() && (l.pid == 0 || l.pid == pid))) {
        let note = match (l.kind, l.state) {
            (links::LinkKind::CudaKernel, LinkState::Waiting) => " (a CUDA kernel probe: it attaches at the kernel's next launch)",
            _ => "",
        };
        eprintln!("bpftime: link {} `{}` on {}: {:?}{note}", l.id, l.name, l.target, l.state);
    }
    Ok(0)
}

/// Whether the code at `addr` in process `pid` is the file's again (no probe left there).
fn code_is_original(pid: u32, addr: u64) -> bool {
    use std::os::unix::fs::FileExt;
    let maps = bpftime_attach::procmaps::mappings_of_process(pid);
    let Some(m) = maps.iter().find(|m| m.start <= addr && addr < m.end && !m.path.is_empty()) else { return true };
    let (mut now, mut file) = ([0u8; 1], [0u8; 1]);
    let read_mem = std::fs::File::open(format!("/proc/{pid}/mem")).and_then(|f| f.read_exact_at(&mut now, addr));
    let read_file = std::fs::File::open(&m.path).and_then(|f| f.read_exact_at(&mut file, addr - m.start + m.offset));
    read_mem.is_err() || read_file.is_err() || now == file
}

/// Removes the links made for process `pid` (by `bpftime attach --program`); the agent there
/// detaches their probes, and this waits (up to 5 s) until the process's code is its own again.
pub fn detach(pid: u32, shm: &str) -> Result<i32, String> {
    let region = ShmRegion::open(shm).map_err(|e| e.to_string())?;
    let mine: Vec<links::UprobeLink> = links::list(&region).into_iter().filter(|l| l.pid == pid).collect();
    if mine.is_empty() {
        return Err(format!("no links for process {pid} in region `{shm}`"));
    }
    let sites: Vec<u64> = mine
        .iter()
        .filter(|l| l.kind == links::LinkKind::Uprobe && l.state == LinkState::Attached)
        .filter_map(|l| bpftime_attach::Target::parse(&l.target).ok())
        .filter_map(|t| bpftime_attach::resolve_in_process(pid, &t).ok())
        .map(|r| r.addr)
        .collect();
    for l in &mine {
        links::remove(&region, l.id);
    }
    let deadline = Instant::now() + Duration::from_secs(5);
    while !sites.iter().all(|&a| code_is_original(pid, a)) {
        if Instant::now() > deadline || !Path::new(&format!("/proc/{pid}")).exists() {
            return Err(format!("process {pid} still has probes after 5 s (is its agent following the region's links?)"));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    eprintln!("bpftime: {} links of process {pid} removed; its code is its own again", mine.len());
    Ok(0)
}
