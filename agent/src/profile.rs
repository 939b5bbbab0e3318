//! CPU-time sampling programs (`perf_event` programs on a CPU-clock event: bpftrace's
//! `profile`, libbpf-tools' `profile`): the region's profile links for this process become a
//! table the hook engine's sampling signal runs (see `bpftime_attach::sampling`), each program
//! on a `bpf_perf_event_data` of the interrupted thread's registers, the event's period and
//! no address, as the kernel runs it on the task its timer interrupts.

use bpftime_attach::sampling;
use bpftime_attach::PtRegs;
use bpftime_runtime::links::{self, LinkKind, LinkState, ProfileTarget, UprobeLink};
use bpftime_runtime::{ProbeProgram, Runtime};
use std::sync::atomic::{AtomicBool, AtomicPtr, Ordering};

/// A program sampling where its link says.
struct Sampler {
    probe: ProbeProgram,
    target: ProfileTarget,
    /// Its first failure was said (no lock: this runs in a signal handler).
    reported: AtomicBool,
}

/// The samplers, swapped whole when links come or go (old tables are leaked: a thread may
/// still be running one).
struct Table {
    runtime: &'static Runtime,
    samplers: Vec<Sampler>,
}

static TABLE: AtomicPtr<Table> = AtomicPtr::new(std::ptr::null_mut());

/// Size of `struct bpf_perf_event_data`: `pt_regs`, `sample_period`, `addr`.
const PERF_EVENT_DATA_SIZE: usize = 168 + 8 + 8;

/// Builds the table from the profile links for this process (`all`) and sets the sampling
/// timers their periods need; raises the links' states.
pub fn update(runtime: &'static Runtime, all: &[UprobeLink]) {
    let mine: Vec<&UprobeLink> = all.iter().filter(|l| l.kind == LinkKind::Profile && crate::glue::for_this_process(l)).collect();
    if mine.is_empty() && TABLE.load(Ordering::Acquire).is_null() {
        return;
    }
    // Made again only when the links change (each refresh would leak a table otherwise).
    static LAST: crate::glue::LinkSet = crate::glue::LinkSet::new();
    if !LAST.changed(&mine) {
        return;
    }
    let mut samplers = vec![];
    let mut attached = vec![];
    for l in mine {
        let Some(target) = ProfileTarget::parse(&l.target) else {
            links::raise_state(runtime.region(), l.id, LinkState::Failed);
            eprintln!("bpftime: link {} (`{}`): not a sampling target: `{}`", l.id, l.name, l.target);
            continue;
        };
        match runtime.program(l.prog) {
            Ok(program) => {
                let probe = ProbeProgram { program, cookie: l.cookie, func_ip: 0, caller_at_sp: false };
                samplers.push(Sampler { probe, target, reported: AtomicBool::new(false) });
                attached.push(l.id);
            }
            Err(e) => eprintln!("bpftime: link {} (`{}`): {e}", l.id, l.name),
        }
    }
    let mut periods: Vec<u64> = samplers.iter().map(|s| s.target.period_ns).collect();
    periods.sort_unstable();
    periods.dedup();
    TABLE.store(Box::into_raw(Box::new(Table { runtime, samplers })), Ordering::Release);
    if let Err(e) = sampling::set_periods(&periods, on_sample) {
        eprintln!("bpftime: CPU-time sampling cannot start here: {e}");
        for id in attached {
            links::raise_state(runtime.region(), id, LinkState::Failed);
        }
        return;
    }
    for id in attached {
        links::raise_state(runtime.region(), id, LinkState::Attached);
    }
}

/// A sample of this thread: the programs of its period whose CPU and thread match, each run
/// once for every period that ran out.
fn on_sample(regs: &PtRegs, period_ns: u64, runs: u32, level: usize) {
    let table = TABLE.load(Ordering::Acquire);
    if table.is_null() {
        return;
    }
    // SAFETY: tables are leaked boxes, never freed, only replaced.
    let table = unsafe { &*table };
    // SAFETY: sched_getcpu(3) reads the CPU from the vDSO or rseq area: no locks.
    let cpu = u32::try_from(unsafe { libc::sched_getcpu() }).ok();
    let tid = bpftime_shm::ids::thread_id();
    let mut ctx = [0u8; PERF_EVENT_DATA_SIZE];
    ctx[..168].copy_from_slice(regs.as_bytes());
    ctx[168..176].copy_from_slice(&period_ns.to_le_bytes());
    for s in &table.samplers {
        let t = &s.target;
        if t.period_ns != period_ns || t.cpu.is_some_and(|c| Some(c) != cpu) || t.thread.is_some_and(|th| th != tid) {
            continue;
        }
        for _ in 0..runs {
            if let Err(err) = table.runtime.run_probe(&s.probe, &ctx, level) {
                if !s.reported.swap(true, Ordering::Relaxed) {
                    eprintln!("bpftime: program `{}` failed: {err} (reported once)", s.probe.program.name);
                }
                break;
            }
        }
    }
}
