//! The VM workloads' ratios in one interleaved run: native code, our JIT (through a `Runner`,
//! as probe hits run) and rbpf's JIT take turns, a short batch each per round, for many rounds;
//! each ratio is the median of its per-round ratios, each time the median of its rounds, all
//! in thread CPU time. On a shared VM whose speed drifts over seconds, criterion's one engine
//! after another moves a row by up to 1.7x between runs; taking turns keeps the ratios steady.
//!
//! `cargo bench -p bpftime-benches --bench vm_ratios` prints a table; without `--bench` (as
//! `cargo test --all-targets` runs it) each engine runs each workload once and the results are
//! compared.

use bpftime_benches::{as_bytes, workloads};
use bpftime_jit::JitProgram;
use bpftime_object::Object;
use bpftime_vm::exec::{Context, HelperTable, Runner, SharedEngine};
use bpftime_vm::insn::to_bytecode;
use bpftime_vm::{verify, NoMaps};
use std::hint::black_box;
use std::sync::Arc;

/// Rounds per workload, and CPU time per batch in a round.
const ROUNDS: usize = 61;
const BATCH_NS: u64 = 2_000_000;

/// The calling thread's CPU time in nanoseconds ([clock_gettime(2)]).
///
/// [clock_gettime(2)]: https://man7.org/linux/man-pages/man2/clock_gettime.2.html
fn cpu_ns() -> u64 {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: `ts` is a valid timespec to write; the clock id is a constant Linux knows.
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    assert_eq!(rc, 0, "clock_gettime(CLOCK_THREAD_CPUTIME_ID)");
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// One engine running one workload: returns its result.
type Run<'a> = Box<dyn FnMut() -> u64 + 'a>;

fn main() {
    let timed = std::env::args().any(|a| a == "--bench");
    let filter: Option<String> = std::env::args().skip(1).find(|a| !a.starts_with('-'));
    let names = ["native", "bpftime JIT", "rbpf JIT"];
    let mut rows = vec![];
    for w in workloads().into_iter().filter(|w| filter.as_ref().is_none_or(|f| w.name.contains(f.as_str()))) {
        let obj = Object::parse(w.object).expect("workload object parses");
        let code = obj.program(None).expect("one program").insns.clone();
        let bytes = to_bytecode(&code);
        let prog = Arc::new(verify(&code, Arc::new(HelperTable::new()), &NoMaps).expect("verifies"));
        let jit: SharedEngine = Arc::new(JitProgram::compile(prog).expect("compiles"));
        let mut rbpf_jit = rbpf::EbpfVmRaw::new(Some(&bytes)).expect("rbpf accepts the program");
        rbpf_jit.jit_compile().expect("rbpf JIT compiles");
        let mut runner = Runner::new(&[], u64::MAX);
        // One input for every engine (their writes leave it as it was for the next), so that
        // none finds it colder in the cache than another.
        let mut input = w.input.clone();
        let m = as_bytes(&mut input).as_mut_ptr_range();
        let len = w.input.len() * 8;
        // SAFETY: `m` spans `input`, which outlives every engine; the engines run one at a time.
        let mem = || unsafe { std::slice::from_raw_parts_mut(m.start, len) };
        let native = w.native;
        let mut engines: [Run; 3] = [
            // SAFETY: the native workload reads and writes only inside its input, as laid out.
            Box::new(|| unsafe { native(black_box(m.start)) }),
            Box::new(|| runner.run(&jit, Context::Mem(black_box(mem())), std::ptr::null_mut()).expect("runs")),
            // SAFETY: rbpf's JIT code touches only the memory it is given for this program.
            Box::new(|| unsafe { rbpf_jit.execute_program_jit(black_box(mem())) }.expect("rbpf JIT runs")),
        ];
        let results: Vec<u64> = engines.iter_mut().map(|e| e()).collect();
        assert!(results.iter().all(|&r| r == results[0]), "{}: results differ (native, ours, rbpf): {results:?}", w.name);
        if !timed {
            println!("{}: {:#x} from every engine", w.name, results[0]);
            continue;
        }
        // Batch sizes: about BATCH_NS of CPU time each.
        let batch: Vec<u64> = engines
            .iter_mut()
            .map(|e| {
                let t = cpu_ns();
                let mut n = 0;
                while cpu_ns() - t < BATCH_NS / 4 {
                    e();
                    n += 1;
                }
                (n * 4).max(1)
            })
            .collect();
        let mut per_call = [vec![], vec![], vec![]];
        let (mut to_rbpf, mut to_native) = (vec![], vec![]);
        for round in 0..ROUNDS {
            let mut t = [0f64; 3];
            // Each round starts with a different engine.
            for k in 0..3 {
                let i = (round + k) % 3;
                let start = cpu_ns();
                for _ in 0..batch[i] {
                    black_box(engines[i]());
                }
                t[i] = (cpu_ns() - start) as f64 / batch[i] as f64;
            }
            for i in 0..3 {
                per_call[i].push(t[i]);
            }
            to_rbpf.push(t[1] / t[2]);
            to_native.push(t[1] / t[0]);
        }
        let times: Vec<f64> = per_call.into_iter().map(median).collect();
        rows.push((w.name, times, median(to_rbpf), median(to_native)));
    }
    if !timed {
        return;
    }
    println!("| workload | {} | JIT / rbpf JIT | JIT / native |", names.join(" | "));
    println!("| --- | ---: | ---: | ---: | ---: | ---: |");
    let show = |ns: f64| {
        if ns >= 1e6 {
            format!("{:.3} ms", ns / 1e6)
        } else if ns >= 1e3 {
            format!("{:.2} µs", ns / 1e3)
        } else {
            format!("{ns:.1} ns")
        }
    };
    for (name, times, to_rbpf, to_native) in &rows {
        println!("| {name} | {} | {to_rbpf:.2}x | {to_native:.2}x |", times.iter().map(|&t| show(t)).collect::<Vec<_>>().join(" | "));
    }
    let geomean = |f: &dyn Fn(&(&str, Vec<f64>, f64, f64)) -> f64| (rows.iter().map(|r| f(r).ln()).sum::<f64>() / rows.len() as f64).exp();
    println!(
        "geometric mean over {} workloads: JIT / rbpf JIT {:.2}x, JIT / native {:.2}x, rbpf JIT / native {:.2}x",
        rows.len(),
        geomean(&|r| r.2),
        geomean(&|r| r.3),
        geomean(&|r| r.1[2] / r.1[0])
    );
}
