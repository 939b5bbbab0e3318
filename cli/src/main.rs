//! `bpftime`: run and inspect eBPF programs, and manage the shared-memory region.

mod attach_pid;
mod cuda_inspect;
mod dump;
mod gpu_run;
mod inject;
mod native;
mod run;
mod supervise;

use bpftime_cli::load_program_file;
use bpftime_gpu_ptx::Target;
use bpftime_maps::Map;
use bpftime_object::Object;
use bpftime_runtime::input::read_program_file;
use bpftime_runtime::links::{self, UprobeLink};
use bpftime_runtime::{progs, trace::TracePipe, EngineKind, Runtime};
use bpftime_shm::{default_name, ObjectKind, ShmRegion, DEFAULT_SIZE};
use bpftime_vm::conformance::parse_hex_bytes;
use bpftime_vm::disasm;
use bpftime_vm::exec::{Context, Fault};
use bpftime_vm::insn::decode;
use bpftime_vm::Checks;
use clap::{Parser, Subcommand};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;

/// The default loop budget of `vm run`: generous (seconds of work), since a run there is a
/// deliberate computation that the user can interrupt, not a probe in someone's application.
const VM_RUN_BUDGET: u64 = 1 << 34;

/// Where `vm run` runs a program.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
enum VmEngine {
    /// The Cranelift JIT.
    Jit,
    /// The interpreter.
    Interp,
    /// The CUDA device (one thread per run, `--threads N`).
    Gpu,
    /// The PTX the GPU would run, on the PTX interpreter.
    Ptx,
}

/// A userspace eBPF runtime.
#[derive(Parser)]
#[command(name = "bpftime", version, about)]
struct Cli {
    /// Shared-memory region name (default: $BPFTIME_SHM, else `bpftime`).
    #[arg(long, global = true)]
    shm: Option<String>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// The virtual machine on its own: run or disassemble a program.
    Vm {
        #[command(subcommand)]
        command: VmCommand,
    },
    /// Create, inspect or remove the shared-memory region.
    Shm {
        #[command(subcommand)]
        command: ShmCommand,
    },
    /// Load an object's maps and programs into the shared-memory region.
    Load {
        /// A clang-built eBPF object (or, with `-- LOADER ARGS...`, nothing).
        file: Option<PathBuf>,
        /// An unmodified loader (a libbpf tool) run with the syscall server preloaded: its maps,
        /// programs and links go into the region (created when missing) instead of the kernel.
        #[arg(last = true)]
        loader: Vec<String>,
        /// With a loader: program types that cannot run in userspace (kprobes, kernel
        /// tracepoints, XDP, fentry...) go to the kernel as they are, with the maps they use.
        #[arg(long)]
        kernel_passthrough: bool,
        /// FILE is an ahead-of-time object (`bpftime aot compile`) whose machine code is to be
        /// run (else only the eBPF object it carries is used). It must be owned by you or root
        /// and writable by no one else.
        #[arg(long)]
        aot: bool,
    },
    /// Maps in the shared-memory region.
    Map {
        #[command(subcommand)]
        command: MapCommand,
    },
    /// Programs in the shared-memory region.
    Prog {
        #[command(subcommand)]
        command: ProgCommand,
    },
    /// Links in the shared-memory region: which program attaches where, and how far it got.
    Link {
        #[command(subcommand)]
        command: LinkCommand,
    },
    /// Run a command with the agent preloaded (probes from --program, or from the region's links).
    Start {
        /// An eBPF object whose uprobe sections the agent attaches itself.
        #[arg(long)]
        program: Option<PathBuf>,
        /// Loop budget of one probe hit (default: about a millisecond of work).
        #[arg(long)]
        budget: Option<u64>,
        /// The command and its arguments.
        #[arg(last = true, required = true)]
        command: Vec<String>,
    },
    /// Attach probes to a running process started without the agent: the agent is loaded
    /// into it (ptrace, then dlopen in the process) and attaches the region's links for it.
    Attach {
        /// The process.
        pid: u32,
        /// An eBPF object to load into the region first, its links for this process only.
        #[arg(long)]
        program: Option<PathBuf>,
        /// Execution engine in the process.
        #[arg(long, default_value = "jit")]
        engine: EngineKind,
    },
    /// Remove what `bpftime attach --program` attached to a process; it runs on untouched.
    Detach {
        /// The process.
        pid: u32,
    },
    /// Load an object into a fresh region, run a command with its uprobes attached, then print
    /// the object's maps.
    Run {
        /// A clang-built eBPF object.
        file: PathBuf,
        /// JSON lines: one per ring/perf buffer record, then one with the exit code and maps.
        #[arg(long)]
        json: bool,
        /// Write our output (records, maps) to FILE instead of stderr.
        #[arg(long)]
        output: Option<PathBuf>,
        /// Execution engine in the traced process.
        #[arg(long, default_value = "jit")]
        engine: EngineKind,
        /// Memory checks kept at run time: `unproven` (those the verifier could not prove in
        /// bounds) or `all`.
        #[arg(long, default_value = "unproven")]
        checks: Checks,
        /// Loop budget of one probe hit (default: about a millisecond of work).
        #[arg(long)]
        budget: Option<u64>,
        /// Size of the region holding the maps (suffixes K, M, G).
        #[arg(long, default_value = "64M")]
        shm_size: String,
        /// Attach only this program (function or section name; repeatable). Default: all.
        #[arg(long = "program")]
        programs: Vec<String>,
        /// Attach program PROG (function or section name) to BINARY:FUNCTION[+OFFSET], for
        /// sections that name no target (`SEC("uprobe")`) or name another one; repeatable.
        #[arg(long = "attach", value_name = "PROG=TARGET")]
        attach: Vec<String>,
        /// Set a global variable before loading (`const volatile` settings, as a skeleton's
        /// user does): an integer, or a string for a char array; repeatable.
        #[arg(long = "set", value_name = "NAME=VALUE")]
        set: Vec<String>,
        /// Set a map's max_entries before loading; repeatable.
        #[arg(long = "map-size", value_name = "NAME=N")]
        map_size: Vec<String>,
        /// FILE is an ahead-of-time object (`bpftime aot compile`) whose machine code is to be
        /// run (else only the eBPF object it carries is used). It must be owned by you or root
        /// and writable by no one else.
        #[arg(long)]
        aot: bool,
        /// The command and its arguments.
        #[arg(last = true, required = true)]
        command: Vec<String>,
    },
    /// Ahead-of-time compilation: machine code for hosts where nothing may be compiled at run time.
    Aot {
        #[command(subcommand)]
        command: AotCommand,
    },
    /// CUDA binaries: the device code they embed.
    Cuda {
        #[command(subcommand)]
        command: CudaCommand,
    },
    /// Print bpf_trace_printk output as it arrives.
    Trace {
        /// Print what is there and exit instead of following.
        #[arg(long)]
        no_follow: bool,
    },
}

#[derive(Subcommand)]
enum VmCommand {
    /// Verify and run a program; print r0 (and with --dump-maps, every map afterwards).
    Run {
        /// Raw bytecode, or a clang-built eBPF object.
        file: PathBuf,
        /// Program of the object to run (function or section name).
        #[arg(long)]
        section: Option<String>,
        /// Input memory as hex bytes (r1 points at it, r2 is its length).
        #[arg(long)]
        mem: Option<String>,
        /// Execution engine: jit, interp, gpu (the CUDA device), or ptx (the same PTX on the
        /// PTX interpreter, no GPU needed).
        #[arg(long, default_value = "jit")]
        engine: VmEngine,
        /// GPU engines: threads to run the program on (each with its own copy of --mem).
        #[arg(long, default_value_t = 1)]
        threads: u32,
        /// GPU engines: the PTX target (default: the device's, or sm_75).
        #[arg(long)]
        sm: Option<String>,
        /// GPU engines: 64-bit atomic adds into arrays go to per-SM shards summed after the
        /// run (a hot counter stops serialising the GPU; the program does not see its own adds).
        #[arg(long)]
        shard_adds: bool,
        /// Print every map after the run.
        #[arg(long)]
        dump_maps: bool,
        /// CPU engines: memory checks kept at run time, `unproven` or `all`.
        #[arg(long, default_value = "unproven")]
        checks: Checks,
        /// With --dump-maps: print JSON.
        #[arg(long)]
        json: bool,
        /// Loop budget: instructions' worth of loop work (a taken backward jump costs its loop's
        /// length, a bpf_loop callback its function's) before the run is stopped.
        #[arg(long, default_value_t = VM_RUN_BUDGET)]
        budget: u64,
    },
    /// Print the PTX a program becomes on the GPU.
    Ptx {
        /// Raw bytecode, or a clang-built eBPF object.
        file: PathBuf,
        /// Program of the object (function or section name).
        #[arg(long)]
        section: Option<String>,
        /// Target (sm_75 .. sm_120).
        #[arg(long, default_value = "sm_75")]
        sm: String,
        /// Shard 64-bit atomic adds into arrays per SM (see `vm run --shard-adds`).
        #[arg(long)]
        shard_adds: bool,
    },
    /// Print a program in llvm-objdump syntax.
    Disasm {
        /// Raw bytecode, or a clang-built eBPF object.
        file: PathBuf,
        /// Program of the object (function or section name).
        #[arg(long)]
        section: Option<String>,
        /// Verify it (maps created as for `vm run`) and mark each memory access proven in
        /// bounds or checked at run time.
        #[arg(long)]
        proofs: bool,
        /// Print the x86-64 machine code the JIT makes of it instead (each function, Intel
        /// syntax).
        #[arg(long, conflicts_with = "proofs")]
        native: bool,
    },
}

#[derive(Subcommand)]
enum AotCommand {
    /// Compile OBJ's programs into a relocatable object (x86-64 ELF) that `bpftime load`,
    /// `bpftime run` and `BPFTIME_PROGRAM` accept in place of OBJ: its code is used where it
    /// was compiled for the same build, CPU features and maps (else the program is compiled).
    Compile {
        /// The eBPF object.
        object: PathBuf,
        /// Where to write the compiled object.
        #[arg(short, long)]
        output: PathBuf,
    },
}

#[derive(Subcommand)]
enum CudaCommand {
    /// Write the PTX of every module of BINARY with OBJ's kprobe/KERNEL (entry) and
    /// kretprobe/KERNEL (exit) programs spliced into its kernels.
    Patch {
        /// The eBPF object with the GPU probes.
        object: PathBuf,
        /// The CUDA executable, library or object.
        binary: PathBuf,
        /// Where to write the patched PTX.
        #[arg(short, long)]
        output: PathBuf,
        /// Splice only this program (name or section; repeat for several). Default: all.
        #[arg(long)]
        program: Vec<String>,
    },
    /// List the fatbins, their entries and kernels, and which kernels can be instrumented.
    Inspect {
        /// An executable, library or object built by nvcc.
        binary: PathBuf,
        #[arg(long)]
        json: bool,
    },
}

#[derive(Subcommand)]
enum ShmCommand {
    /// Create the region (mode 0600, or 0660 shared with --group).
    Create {
        /// Size in bytes (suffixes K, M, G allowed); by default what `bpftime load` makes for a
        /// loader: 1 GiB, or half of what /dev/shm has free (pages take memory once used).
        #[arg(long)]
        size: Option<String>,
        /// Share the region with this group: its members open it with BPFTIME_SHM_GROUP=1.
        #[arg(long)]
        group: Option<String>,
    },
    /// Show the region's size, use and objects.
    Info,
    /// Remove the region.
    Remove,
}

#[derive(Subcommand)]
enum MapCommand {
    /// List the maps.
    List {
        #[arg(long)]
        json: bool,
    },
    /// Print a map's entries (by name or id).
    Dump {
        map: String,
        #[arg(long)]
        json: bool,
    },
}

#[derive(Subcommand)]
enum ProgCommand {
    /// List the programs.
    List {
        #[arg(long)]
        json: bool,
    },
    /// Run a program of the region on the GPU as a kernel of its own, over the region's maps
    /// (copied to the device, and the changes back): bpftime's `run-on-cuda`, for
    /// `kprobe/__directly_run` programs a loader left in the region.
    Run {
        /// Program id or name.
        prog: String,
        /// gpu (the CUDA device) or ptx (the same PTX on the PTX interpreter).
        #[arg(long, value_enum, default_value = "gpu")]
        engine: VmEngine,
        /// Blocks in x, y and z (`4` or `4,4`: missing ones are 1).
        #[arg(long, default_value = "1")]
        grid: String,
        /// Threads per block in x, y and z.
        #[arg(long, default_value = "1")]
        block: String,
        /// Loop budget of each thread.
        #[arg(long, default_value_t = VM_RUN_BUDGET)]
        budget: u64,
    },
}

#[derive(Subcommand)]
enum LinkCommand {
    /// List the links.
    List {
        #[arg(long)]
        json: bool,
    },
}

fn main() -> ExitCode {
    // Like other Unix tools, end quietly when the reader of our output goes away (`| head`).
    // SAFETY: restoring the default action of SIGPIPE before any thread is started.
    unsafe { libc::signal(libc::SIGPIPE, libc::SIG_DFL) };
    let cli = Cli::parse();
    let shm = cli.shm.unwrap_or_else(default_name);
    match dispatch(cli.command, &shm) {
        Ok(code) => ExitCode::from(code.clamp(0, 255) as u8),
        Err(e) => {
            eprintln!("bpftime: {e}");
            ExitCode::FAILURE
        }
    }
}

/// The gid of group `name` (or a number).
fn group_id(name: &str) -> Result<u32, String> {
    if let Ok(n) = name.parse::<u32>() {
        return Ok(n);
    }
    let c = std::ffi::CString::new(name).map_err(|e| e.to_string())?;
    // SAFETY: getgrnam(3) with a NUL-terminated name; the result is read at once, before any
    // other call that could reuse its static storage.
    let g = unsafe { libc::getgrnam(c.as_ptr()) };
    if g.is_null() {
        return Err(format!("no group `{name}`"));
    }
    // SAFETY: non-null result of getgrnam(3).
    Ok(unsafe { (*g).gr_gid })
}

fn parse_size(s: &str) -> Result<u64, String> {
    let s = s.trim();
    let (num, mul) = match s.chars().last() {
        Some('K' | 'k') => (&s[..s.len() - 1], 1 << 10),
        Some('M' | 'm') => (&s[..s.len() - 1], 1 << 20),
        Some('G' | 'g') => (&s[..s.len() - 1], 1 << 30),
        _ => (s, 1),
    };
    num.parse::<u64>().map(|n| n * mul).map_err(|_| format!("bad size `{s}`"))
}

fn open_region(name: &str) -> Result<Arc<ShmRegion>, String> {
    ShmRegion::open(name).map(Arc::new).map_err(|e| e.to_string())
}

fn find_map(region: &Arc<ShmRegion>, which: &str) -> Result<Map, String> {
    match which.parse::<u32>() {
        Ok(id) => Map::open(region, id).map_err(|e| e.to_string()),
        Err(_) => Map::open_by_name(region, which).map_err(|e| e.to_string()),
    }
}

fn print_maps(maps: &[Map], json: bool) {
    if json {
        let all: Vec<_> = maps.iter().map(dump::json).collect();
        println!("{}", serde_json::to_string_pretty(&all).expect("JSON values serialise"));
    } else {
        for m in maps {
            print!("{}", dump::human(m));
        }
    }
}

struct RunArgs<'a> {
    file: &'a Path,
    section: Option<&'a str>,
    mem: Option<String>,
    engine: EngineKind,
    checks: Checks,
    dump_maps: bool,
    json: bool,
    budget: u64,
}

/// Loads the program of `file` (an object, with its maps, or raw bytecode) into `rt`'s region:
/// its id, a name to show, and the object's maps.
fn load_for_vm(rt: &Runtime, file: &Path, section: Option<&str>) -> Result<(u32, String, Vec<Map>), String> {
    let bytes = read_program_file(file).map_err(|e| e.to_string())?;
    Ok(if Object::is_elf(&bytes) {
        let obj = Object::parse(&bytes).map_err(|e| format!("{}: {e}", file.display()))?;
        let p = obj.program(section).map_err(|e| format!("{}: {e}", file.display()))?;
        let (name, sec) = (p.name.clone(), p.section.clone());
        let loaded = rt.load_object(&obj).map_err(|e| format!("{}: {e}", file.display()))?;
        let id = loaded.programs.iter().find(|x| x.0 == name && x.1 == sec).map(|x| x.2).expect("loaded program");
        (id, format!("{name} ({sec})"), loaded.maps)
    } else {
        let loaded = load_program_file(file, section)?;
        // Raw bytecode names no license; the VM on its own runs it as a GPL program would run.
        let id = progs::store(rt.region(), "raw", "vm", "GPL", &loaded.insns).map_err(|e| e.to_string())?;
        (id, loaded.origin, vec![])
    })
}

fn vm_run(a: RunArgs) -> Result<(), String> {
    let RunArgs { file, section, mem, engine, checks, dump_maps, json, budget } = a;
    let region = Arc::new(ShmRegion::anonymous(DEFAULT_SIZE).map_err(|e| e.to_string())?);
    let mut rt = Runtime::new(region, engine);
    rt.set_loop_budget(budget);
    rt.set_checks(checks);
    let (id, origin, maps) = load_for_vm(&rt, file, section)?;
    let prog = rt.program(id).map_err(|e| e.to_string())?;
    let mut mem = match mem {
        Some(h) => parse_hex_bytes(&h).map_err(|e| format!("--mem: {e}"))?,
        None => Vec::new(),
    };
    let ctx = if mem.is_empty() { Context::None } else { Context::Mem(&mut mem) };
    let r0 = rt.run(&prog, ctx, 0, 0, false).map_err(|e| {
        let hint = if e.fault == Fault::LoopBudget { format!("; raise the budget with --budget N (now {budget})") } else { String::new() };
        format!("{origin}: {e}{hint}")
    })?;
    if let Some(pipe) = TracePipe::existing(rt.region()) {
        for line in pipe.read_from(0).0 {
            eprintln!("{line}");
        }
    }
    if dump_maps && json {
        let out = serde_json::json!({ "r0": r0, "maps": maps.iter().map(dump::json).collect::<Vec<_>>() });
        println!("{}", serde_json::to_string_pretty(&out).expect("JSON values serialise"));
        return Ok(());
    }
    println!("r0 = {r0:#x} ({})", r0 as i64);
    if dump_maps {
        print_maps(&maps, false);
    }
    Ok(())
}

/// The GPU options of `vm run`.
struct GpuArgs {
    simulate: bool,
    threads: u32,
    sm: Option<String>,
    shard_adds: bool,
}

/// How many GPU threads ended each way (`r0 = V` or the fault).
fn outcome_counts(outcomes: &[Result<u64, bpftime_vm::RunError>]) -> std::collections::BTreeMap<String, u32> {
    let mut kinds = std::collections::BTreeMap::new();
    for o in outcomes {
        *kinds
            .entry(match o {
                Ok(v) => format!("r0 = {v:#x}"),
                Err(e) => e.to_string(),
            })
            .or_default() += 1;
    }
    kinds
}

/// `vm run --engine gpu|ptx`.
fn vm_run_gpu(file: &Path, section: Option<&str>, mem: Option<String>, gpu: GpuArgs, dump_maps: bool, budget: u64) -> Result<i32, String> {
    let GpuArgs { simulate, threads, sm, shard_adds } = gpu;
    let mem = match mem {
        Some(h) => parse_hex_bytes(&h).map_err(|e| format!("--mem: {e}"))?,
        None => Vec::new(),
    };
    let target = sm.as_deref().map(Target::parse).transpose()?;
    let r = gpu_run::run(file, section, target, shard_adds, &mem, threads, budget, simulate)?;
    // Where the CPU engines print `bpf_trace_printk` outside a region: standard error.
    for l in &r.trace.0 {
        eprintln!("{l}");
    }
    if r.trace.1 > 0 {
        eprintln!("bpftime: {} trace lines lost (the GPU's trace ring was full)", r.trace.1);
    }
    let first = r.outcomes.first().cloned().unwrap_or(Ok(0));
    if threads > 1 {
        let time = r.micros.map(|us| format!(" in {us:.1} us")).unwrap_or_default();
        eprintln!("{threads} threads on {}{time}", r.device);
        for (k, n) in outcome_counts(&r.outcomes) {
            eprintln!("  {n} x {k}");
        }
    }
    match first {
        Ok(r0) => println!("r0 = {r0:#x} ({})", r0 as i64),
        Err(e) => {
            let hint = if e.fault == Fault::LoopBudget { format!("; raise the budget with --budget N (now {budget})") } else { String::new() };
            return Err(format!("{}: {e}{hint}", file.display()));
        }
    }
    if dump_maps {
        // The GPU's maps, copied into an object's host maps where they can be (the same dump
        // as the CPU engines print), read straight from the arena otherwise.
        match copied_back(file, section, &r) {
            Some(maps) => print_maps(&maps, false),
            None => {
                for l in &r.maps {
                    println!("{l}");
                }
            }
        }
    }
    Ok(0)
}

/// The object's maps in a fresh region, filled from a GPU run's arena; None for raw bytecode or
/// maps that cannot be copied.
fn copied_back(file: &Path, section: Option<&str>, r: &gpu_run::Report) -> Option<Vec<Map>> {
    let bytes = read_program_file(file).ok()?;
    if !Object::is_elf(&bytes) {
        return None;
    }
    let obj = Object::parse(&bytes).ok()?;
    let rt = Runtime::new(Arc::new(ShmRegion::anonymous(DEFAULT_SIZE).ok()?), EngineKind::Interp);
    let loaded = rt.load_object(&obj).ok()?;
    let (layout, arena) = (r.layout.as_ref()?, r.arena.as_ref()?);
    let mut maps = vec![];
    for (slot, placed) in layout.maps.iter().enumerate().filter(|(slot, _)| layout.trace_slot != Some(*slot)) {
        let host = loaded.maps.iter().find(|m| m.name() == placed.spec.name)?;
        bpftime_runtime::gpu::write_back(layout, arena, None, slot, host).ok()?;
        maps.push(host.clone());
    }
    let _ = section;
    Some(maps)
}

/// Writes the links of an object's uprobe programs (see `links::store_uprobes`), saying which
/// programs are not attached and why.
fn store_links(region: &std::sync::Arc<ShmRegion>, programs: &[(String, String, u32)]) -> Result<Vec<UprobeLink>, String> {
    let stored = links::store_uprobes(region, programs).map_err(|e| e.to_string())?;
    for s in &stored.skipped {
        eprintln!("bpftime: {s}");
    }
    Ok(stored.links)
}

/// The agent library: `$BPFTIME_AGENT`, or `libbpftime.so` beside this executable; either way
/// with `libbpftime_early.so` beside it (the agent needs it: see `agent/early/early.c`).
fn agent_path() -> Result<PathBuf, String> {
    let p = match std::env::var_os("BPFTIME_AGENT") {
        Some(p) => {
            let p = PathBuf::from(p);
            if !p.exists() {
                return Err(format!("the agent {} (from BPFTIME_AGENT) does not exist", p.display()));
            }
            p
        }
        None => {
            let p = std::env::current_exe().map_err(|e| e.to_string())?.with_file_name("libbpftime.so");
            if !p.exists() {
                return Err(format!("the agent {} is missing (build it with `cargo build -p bpftime-agent`, or set BPFTIME_AGENT)", p.display()));
            }
            p
        }
    };
    let early = p.with_file_name("libbpftime_early.so");
    if !early.exists() {
        return Err(format!("{} is missing: the agent needs it beside it (cargo builds it with the agent)", early.display()));
    }
    // Absolute: the agent recognises its own folder in the loader's paths by it.
    Ok(p.canonicalize().unwrap_or(p))
}

/// `LD_PRELOAD` with `libs` first, in order, then whatever it already names.
fn preload_with(libs: &[&Path]) -> String {
    let ours: Vec<String> = libs.iter().map(|l| l.display().to_string()).collect();
    match std::env::var("LD_PRELOAD") {
        Ok(p) if !p.is_empty() => format!("{}:{p}", ours.join(":")),
        _ => ours.join(":"),
    }
}

/// `LD_AUDIT` with the agent's audit library first (`libbpftime_audit.so` beside the agent: it
/// records the dynamic loader's system calls, made before the agent can run, for the agent to
/// run its system call programs on; see `agent/early/audit.c`), then whatever it already names.
/// None when the library is missing.
fn audit_with(agent: &Path) -> Option<String> {
    let lib = agent.with_file_name(bpftime_launch::AUDIT_LIBRARY);
    if !lib.exists() {
        return None;
    }
    let lib = lib.display().to_string();
    Some(match std::env::var("LD_AUDIT") {
        // Once (a `bpftime start` under another).
        Ok(a) if a.split(':').any(|l| l == lib) => a,
        Ok(a) if !a.is_empty() => format!("{lib}:{a}"),
        _ => lib,
    })
}

/// Whether `program` (a path, or a name looked up in `PATH`) is an ELF executable without a
/// program interpreter (`PT_INTERP`): statically linked, so that no `LD_PRELOAD` reaches it.
fn statically_linked(program: &str) -> bool {
    let Some(data) = bpftime_launch::program_path(program.as_ref()).and_then(|p| std::fs::read(p).ok()) else { return false };
    let Ok(elf) = object::read::elf::ElfFile64::<object::Endianness>::parse(&*data) else { return false };
    use object::read::elf::ProgramHeader;
    let endian = elf.endian();
    !elf.elf_program_headers().iter().any(|ph| ph.p_type(endian) == object::elf::PT_INTERP)
}

/// `GLIBC_TUNABLES` for `program` started with the audit library, where its libraries need a
/// larger room for static thread-locals than glibc keeps (see `bpftime_launch`); None where the
/// environment's does.
fn tunables_for_static_tls(program: &str) -> Option<String> {
    let exe = bpftime_launch::program_path(program.as_ref())?;
    let need = bpftime_launch::static_tls_of_libraries(&exe, std::env::var_os("LD_LIBRARY_PATH").as_deref());
    bpftime_launch::tunables_for(std::env::var("GLIBC_TUNABLES").ok().as_deref(), need)
}

/// `command` with the agent preloaded (after any LD_PRELOAD already set), its start's
/// `execve` traced. A statically linked program is run all the same, with a word that its
/// probes cannot attach.
pub(crate) fn agent_command(agent: &Path, command: &[String]) -> std::process::Command {
    if statically_linked(&command[0]) {
        eprintln!(
            "bpftime: `{}` is statically linked: LD_PRELOAD cannot load the agent into it, so its probes will not attach (bpftime attach cannot either)",
            command[0]
        );
    }
    let mut cmd = std::process::Command::new(&command[0]);
    // The execve that starts it is made here, without the agent: the agent runs its entry
    // programs (`sys_enter_execve`) in the new image, under our name (the kernel's programs see
    // the caller's).
    cmd.args(&command[1..]).env("LD_PRELOAD", preload_with(&[agent])).env("BPFTIME_EXEC_UNTRACED", "bpftime");
    if let Some(audit) = audit_with(agent) {
        cmd.env("LD_AUDIT", audit);
        if let Some(tunables) = tunables_for_static_tls(&command[0]) {
            cmd.env("GLIBC_TUNABLES", tunables);
        }
    }
    cmd
}

/// The exit status of a finished command, as a shell reports it (128 + signal).
fn exit_code(status: std::process::ExitStatus) -> i32 {
    status.code().unwrap_or_else(|| 128 + std::os::unix::process::ExitStatusExt::signal(&status).unwrap_or(0))
}

fn dispatch(cmd: Command, shm: &str) -> Result<i32, String> {
    match cmd {
        Command::Start { program, budget, command } => {
            // Refuse a region we must not trust before running anything (the agent would too).
            if let Err(e @ bpftime_shm::ShmError::Untrusted { .. }) = ShmRegion::open(shm) {
                return Err(e.to_string());
            }
            let mut cmd = agent_command(&agent_path()?, &command);
            cmd.env("BPFTIME_SHM", shm);
            if let Some(p) = program {
                let p = std::fs::canonicalize(&p).map_err(|e| format!("{}: {e}", p.display()))?;
                cmd.env("BPFTIME_PROGRAM", p);
            }
            if let Some(b) = budget {
                cmd.env("BPFTIME_BUDGET", b.to_string());
            }
            let status = supervise::run_forwarding(&mut cmd).map_err(|e| format!("{}: {e}", command[0]))?;
            Ok(exit_code(status))
        }
        Command::Attach { pid, program, engine } => attach_pid::attach(pid, program.as_deref(), engine, shm, &agent_path()?),
        Command::Detach { pid } => attach_pid::detach(pid, shm),
        Command::Run { file, json, output, engine, checks, budget, shm_size, programs, attach, set, map_size, aot, command } => run::run(run::RunRequest {
            file,
            json,
            output,
            engine,
            checks,
            budget,
            shm_size: parse_size(&shm_size)?,
            programs,
            attach,
            set,
            map_size,
            aot,
            agent: agent_path()?,
            command,
        }),
        Command::Vm { command: VmCommand::Run { file, section, mem, engine, threads, sm, shard_adds, dump_maps, checks, json, budget } } => {
            let cpu = match engine {
                VmEngine::Jit => EngineKind::Jit,
                VmEngine::Interp => EngineKind::Interp,
                VmEngine::Gpu | VmEngine::Ptx => {
                    let gpu = GpuArgs { simulate: engine == VmEngine::Ptx, threads, sm, shard_adds };
                    return vm_run_gpu(&file, section.as_deref(), mem, gpu, dump_maps, budget);
                }
            };
            vm_run(RunArgs { file: &file, section: section.as_deref(), mem, engine: cpu, checks, dump_maps, json, budget }).map(|()| 0)
        }
        Command::Vm { command: VmCommand::Ptx { file, section, sm, shard_adds } } => {
            let target = Target { shard_atomic_adds: shard_adds, ..Target::parse(&sm)? };
            let g = gpu_run::prepare(&file, section.as_deref(), target, 1)?;
            print!("{}", g.ptx);
            Ok(0)
        }
        Command::Vm { command: VmCommand::Disasm { file, section, native: true, .. } } => {
            let region = Arc::new(ShmRegion::anonymous(DEFAULT_SIZE).map_err(|e| e.to_string())?);
            let rt = Runtime::new(region, EngineKind::Interp);
            let (id, _, _) = load_for_vm(&rt, &file, section.as_deref())?;
            let prog = rt.program(id).map_err(|e| e.to_string())?;
            let jit = bpftime_jit::JitProgram::compile(prog.program.clone()).map_err(|e| e.to_string())?;
            print!("{}", native::disassemble(&jit));
            Ok(0)
        }
        Command::Vm { command: VmCommand::Disasm { file, section, proofs: true, .. } } => {
            let region = Arc::new(ShmRegion::anonymous(DEFAULT_SIZE).map_err(|e| e.to_string())?);
            let rt = Runtime::new(region, EngineKind::Interp);
            let (id, _, _) = load_for_vm(&rt, &file, section.as_deref())?;
            let prog = rt.program(id).map_err(|e| e.to_string())?;
            print!("{}", disasm::disassemble_with_proofs(&prog.program));
            Ok(0)
        }
        Command::Vm { command: VmCommand::Disasm { file, section, proofs: false, .. } } => {
            let loaded = load_program_file(&file, section.as_deref())?;
            let insns = decode(&loaded.insns).map_err(|e| format!("{}: {e}", loaded.origin))?;
            print!("{}", disasm::disassemble(&insns));
            Ok(0)
        }
        Command::Aot { command: AotCommand::Compile { object, output } } => {
            let bytes = read_program_file(&object).map_err(|e| e.to_string())?;
            let obj = Object::parse(&bytes).map_err(|e| format!("{}: {e}", object.display()))?;
            let (compiled, left_out) = Runtime::aot_compile(&obj, &bytes).map_err(|e| format!("{}: {e}", object.display()))?;
            for (name, why) in &left_out {
                eprintln!("bpftime: {}: `{name}` is not compiled: {why}", object.display());
            }
            std::fs::write(&output, &compiled).map_err(|e| format!("{}: {e}", output.display()))?;
            let count = obj.programs.len() - left_out.len();
            println!("{}: {count} program(s), {} bytes", output.display(), compiled.len());
            Ok(0)
        }
        Command::Cuda { command: CudaCommand::Patch { object, binary, output, program } } => {
            print!("{}", cuda_inspect::patch(&object, &binary, &output, &program)?);
            Ok(0)
        }
        Command::Cuda { command: CudaCommand::Inspect { binary, json } } => {
            print!("{}", cuda_inspect::inspect(&binary, json)?);
            Ok(0)
        }
        Command::Shm { command: ShmCommand::Create { size, group } } => {
            let size = match size {
                Some(size) => parse_size(&size)?,
                None => bpftime_shm::loader_size(),
            };
            let r = match group {
                Some(g) => ShmRegion::create_for_group(shm, size, group_id(&g)?),
                None => ShmRegion::create(shm, size),
            }
            .map_err(|e| e.to_string())?;
            println!("created {} ({} bytes)", r.path().map(|p| p.display().to_string()).unwrap_or_default(), r.size());
            Ok(0)
        }
        Command::Shm { command: ShmCommand::Info } => {
            let r = open_region(shm)?;
            println!("region `{}` at {}", r.name(), r.path().map(|p| p.display().to_string()).unwrap_or_default());
            println!("  size {} bytes, {} in use", r.size(), r.used());
            let objs = r.objects();
            let count = |k| objs.iter().filter(|o| o.kind == k).count();
            println!("  {} maps, {} programs, {} links", count(ObjectKind::Map), count(ObjectKind::Program), count(ObjectKind::Link));
            Ok(0)
        }
        Command::Shm { command: ShmCommand::Remove } => {
            ShmRegion::remove(shm).map_err(|e| e.to_string())?;
            println!("removed region `{shm}`");
            Ok(0)
        }
        Command::Load { file: None, loader, kernel_passthrough, aot, .. } if !loader.is_empty() => {
            if aot {
                return Err(
                    "bpftime load: --aot takes an ahead-of-time object (bpftime load --aot OBJ); a loader's programs are compiled when it loads them".into()
                );
            }
            // The region must exist before the loader and be ours (the server would refuse it).
            match ShmRegion::open(shm) {
                Ok(_) => {}
                Err(bpftime_shm::ShmError::Missing(_)) => {
                    ShmRegion::create(shm, bpftime_shm::loader_size()).map_err(|e| e.to_string())?;
                }
                Err(e) => return Err(e.to_string()),
            }
            let server = agent_path()?.with_file_name("libbpftime_syscall_server.so");
            if !server.exists() {
                return Err(format!("the syscall server {} is missing (build the workspace)", server.display()));
            }
            let mut cmd = std::process::Command::new(&loader[0]);
            // The agent too, after the server: the loader is traced as the kernel traces every
            // process (its probes on itself fire), the server's own work is not.
            let agent = agent_path()?;
            cmd.args(&loader[1..]).env("LD_PRELOAD", preload_with(&[&server, &agent]));
            // What the loader starts (`bpftrace -c CMD`) is traced: it gets the agent (its server
            // marks their execve, which the loader makes, for the agent to trace).
            cmd.env("BPFTIME_CHILD_PRELOAD", preload_with(&[&agent]));
            if let Some(audit) = audit_with(&agent) {
                cmd.env("BPFTIME_CHILD_AUDIT", audit);
            }
            cmd.env("BPFTIME_SHM", shm);
            // Probes for a process started without the agent load it there (`bpftime attach`).
            if let Ok(me) = std::env::current_exe() {
                cmd.env("BPFTIME_CLI", me);
            }
            if kernel_passthrough {
                cmd.env("BPFTIME_KERNEL_PASSTHROUGH", "1");
            }
            let status = supervise::run_forwarding(&mut cmd).map_err(|e| format!("{}: {e}", loader[0]))?;
            Ok(exit_code(status))
        }
        Command::Load { file, aot, .. } => {
            let file = file.ok_or("bpftime load: give an object (bpftime load OBJ) or a loader (bpftime load -- LOADER ARGS)")?;
            let read = bpftime_runtime::input::read_object_file(&file, aot)?;
            if let Some(note) = &read.note {
                eprintln!("bpftime: {note}");
            }
            let (obj, aot) = (read.object, read.aot);
            let region = open_region(shm)?;
            let mut rt = Runtime::new(region.clone(), EngineKind::Jit);
            // Compiled here, once: the processes that attach these programs map the code.
            if let Err(e) = rt.use_code_cache_from_env() {
                eprintln!("bpftime: {e}");
            }
            let loaded = rt.load_object_with(&obj, aot.as_ref()).map_err(|e| format!("{}: {e}", file.display()))?;
            for (name, section, why) in &loaded.refused {
                eprintln!("bpftime: {}: `{name}` (section `{section}`) is not loaded: {why}", file.display());
            }
            for (name, why) in &loaded.aot_unused {
                eprintln!("bpftime: {}: `{name}`: ahead-of-time code not used ({why})", file.display());
            }
            for m in &loaded.maps {
                println!("map {} `{}` ({})", m.id(), m.name(), m.map_type().name());
            }
            for (name, section, id) in &loaded.programs {
                println!("prog {id} `{name}` ({section})");
            }
            for l in store_links(&region, &loaded.programs)? {
                println!("link {} `{}` -> {}", l.id, l.name, l.target);
            }
            Ok(0)
        }
        Command::Map { command: MapCommand::List { json } } => {
            let region = open_region(shm)?;
            let maps = Map::list(&region);
            if json {
                let all: Vec<_> = maps
                    .iter()
                    .map(|m| serde_json::json!({"id": m.id(), "name": m.name(), "type": m.map_type().name(), "key_size": m.spec().key_size, "value_size": m.spec().value_size, "max_entries": m.spec().max_entries}))
                    .collect();
                println!("{}", serde_json::to_string_pretty(&all).expect("JSON values serialise"));
            } else {
                for m in &maps {
                    println!("{}", dump::header(m));
                }
            }
            Ok(0)
        }
        Command::Map { command: MapCommand::Dump { map, json } } => {
            let region = open_region(shm)?;
            let m = find_map(&region, &map)?;
            if json {
                println!("{}", serde_json::to_string_pretty(&dump::json(&m)).expect("JSON values serialise"));
            } else {
                print!("{}", dump::human(&m));
            }
            Ok(0)
        }
        Command::Prog { command: ProgCommand::Run { prog, engine, grid, block, budget } } => {
            let region = open_region(shm)?;
            let id = match prog.parse::<u32>() {
                Ok(id) => id,
                Err(_) => progs::list(&region).iter().find(|p| p.name == prog).map(|p| p.id).ok_or_else(|| format!("no program named `{prog}`"))?,
            };
            let simulate = match engine {
                VmEngine::Gpu => false,
                VmEngine::Ptx => true,
                _ => return Err("--engine: gpu or ptx".into()),
            };
            let dims = |s: &str, what: &str| -> Result<[u32; 3], String> {
                let mut d = [1u32; 3];
                for (i, v) in s.split(',').enumerate() {
                    *d.get_mut(i).ok_or_else(|| format!("--{what}: at most x,y,z"))? =
                        v.trim().parse().map_err(|_| format!("--{what}: `{v}` is not a number"))?;
                }
                Ok(d)
            };
            let r = gpu_run::run_region_program(&region, id, dims(&grid, "grid")?, dims(&block, "block")?, budget, simulate)?;
            let time = r.micros.map(|us| format!(" in {us:.1} us")).unwrap_or_default();
            println!("{} threads on {}{time}", r.outcomes.len(), r.device);
            for (k, n) in outcome_counts(&r.outcomes) {
                println!("  {n} x {k}");
            }
            for e in &r.maps {
                eprintln!("bpftime: {e}");
            }
            Ok(0)
        }
        Command::Prog { command: ProgCommand::List { json } } => {
            let region = open_region(shm)?;
            let list = progs::list(&region);
            if json {
                let all: Vec<_> = list
                    .iter()
                    .map(|p| {
                        serde_json::json!({"id": p.id, "name": p.name, "section": p.section, "insns": p.insns.len(), "license": p.license,
                            "recursion_misses": p.recursion_misses})
                    })
                    .collect();
                println!("{}", serde_json::to_string_pretty(&all).expect("JSON values serialise"));
            } else {
                for p in &list {
                    let misses = if p.recursion_misses != 0 { format!(", {} recursion_misses", p.recursion_misses) } else { String::new() };
                    println!("prog {} `{}` ({}), {} insns, license {}{misses}", p.id, p.name, p.section, p.insns.len(), p.license);
                }
            }
            Ok(0)
        }
        Command::Link { command: LinkCommand::List { json } } => {
            let region = open_region(shm)?;
            let list = links::list(&region);
            let pins = bpftime_runtime::pins::list(&region);
            let pinned = |id: u32| pins.iter().filter(|p| p.target == id).map(|p| p.path.clone()).collect::<Vec<_>>();
            let kind = |l: &UprobeLink| match (l.kind, l.retprobe) {
                (links::LinkKind::CudaKernel, false) => "cuda kernel entry",
                (links::LinkKind::CudaKernel, true) => "cuda kernel exit",
                (links::LinkKind::Syscall, _) => "syscall",
                (links::LinkKind::Profile, _) => "profile",
                (_, false) => "uprobe",
                (_, true) => "uretprobe",
            };
            if json {
                let all: Vec<_> = list
                    .iter()
                    .map(|l| {
                        serde_json::json!({"id": l.id, "program": l.prog, "name": l.name, "kind": kind(l), "target": l.target, "state": format!("{:?}", l.state),
                            "pid": l.pid, "cookie": l.cookie, "semaphore": l.ref_ctr, "pinned": pinned(l.id)})
                    })
                    .collect();
                println!("{}", serde_json::to_string_pretty(&all).expect("JSON values serialise"));
            } else {
                for l in &list {
                    let pid = if l.pid != 0 { format!(", pid {}", l.pid) } else { String::new() };
                    let sem = if l.ref_ctr != 0 { format!(", semaphore at {:#x}", l.ref_ctr) } else { String::new() };
                    let pins: String = pinned(l.id).iter().map(|p| format!(", pinned at {p}")).collect();
                    println!("link {} `{}` (prog {}): {} {} ({:?}{pid}{sem}{pins})", l.id, l.name, l.prog, kind(l), l.target, l.state);
                }
            }
            Ok(0)
        }
        Command::Trace { no_follow } => {
            let region = open_region(shm)?;
            let pipe = TracePipe::open(&region).map_err(|e| e.to_string())?;
            let mut pos = if no_follow { 0 } else { pipe.position() };
            loop {
                let (lines, next) = pipe.read_from(pos);
                for l in lines {
                    println!("{l}");
                }
                pos = next;
                if no_follow {
                    return Ok(0);
                }
                std::thread::sleep(std::time::Duration::from_millis(100));
            }
        }
    }
}
