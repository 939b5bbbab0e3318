//! `bpftime vm ptx` and `bpftime vm run --engine gpu|ptx`: a program on the GPU, or on the
//! PTX interpreter (the same PTX, executed without a GPU).

use bpftime_gpu_ptx::interp::{Launch, Machine, Module};
use bpftime_gpu_ptx::{state, Target, RUN_KERNEL, RUN_OUT_STRIDE};
use bpftime_object::Object;
use bpftime_runtime::gpu::{describe_arena, gpu_program, gpu_program_from_raw, host_words, realtime_ns, trace_lines, GpuProgram};
use bpftime_runtime::input::read_program_file;
use bpftime_vm::insn::parse_bytecode;
use bpftime_vm::RunError;
use std::path::Path;

/// SMs the PTX interpreter pretends to have.
const SIMULATED_SMS: u32 = 4;

/// Prepares `file`'s program for the GPU.
pub fn prepare(file: &Path, section: Option<&str>, target: Target, nsm: u32) -> Result<GpuProgram, String> {
    let bytes = read_program_file(file).map_err(|e| e.to_string())?;
    let shown = file.display();
    if Object::is_elf(&bytes) {
        let obj = Object::parse(&bytes).map_err(|e| format!("{shown}: {e}"))?;
        gpu_program(&obj, section, target, nsm).map_err(|e| format!("{shown}: {e}"))
    } else {
        let raw = parse_bytecode(&bytes).map_err(|e| format!("{shown}: {e}"))?;
        gpu_program_from_raw(&raw, target).map_err(|e| format!("{shown}: {e}"))
    }
}

/// What a GPU or simulated run printed.
pub struct Report {
    /// Outcome per thread.
    pub outcomes: Vec<Result<u64, RunError>>,
    /// Map dump lines.
    pub maps: Vec<String>,
    /// What `bpf_trace_printk` and `puts` printed, as trace pipe lines, and how many lines the
    /// full ring dropped.
    pub trace: (Vec<String>, u64),
    /// The device, for the header line.
    pub device: String,
    /// Kernel time, when measured on a device.
    pub micros: Option<f64>,
    /// Where the maps were, and the arena afterwards (for copying them to host maps).
    pub layout: Option<bpftime_gpu_ptx::maps::ArenaLayout>,
    /// The arena after the run.
    pub arena: Option<Vec<u8>>,
}

/// Runs region program `prog` on the GPU (`simulate` false) or on the PTX interpreter, as a
/// kernel of `grid` blocks of `block` threads, over the region's maps: their values go to the
/// device arena first and what changed comes back after, trace lines into the region's trace
/// pipe. The report's `maps` holds what could not be copied back.
pub fn run_region_program(
    region: &std::sync::Arc<bpftime_shm::ShmRegion>,
    prog: u32,
    grid: [u32; 3],
    block: [u32; 3],
    budget: u64,
    simulate: bool,
) -> Result<Report, String> {
    use bpftime_runtime::links::{LinkKind, LinkScope, LinkState, UprobeLink};
    let name = bpftime_runtime::progs::load(region, prog).map(|p| p.name).ok_or_else(|| format!("no program {prog} in the region"))?;
    // The program as a CUDA kernel probe would be prepared: maps to arena slots, GPU helpers.
    let scope = LinkScope::default();
    let link = UprobeLink {
        id: 0,
        name: name.clone(),
        prog,
        target: String::new(),
        retprobe: false,
        replace: false,
        cookie: 0,
        state: LinkState::Stored,
        kind: LinkKind::CudaKernel,
        pid: scope.pid,
        ref_ctr: 0,
        owner: 0,
        fd: None,
    };
    let (probes, failed) = bpftime_runtime::gpu::GpuProbes::prepare(region, &[link]);
    if let Some((_, _, why)) = failed.first() {
        return Err(format!("`{name}`: {why}"));
    }
    let (device, nsm, target) = if simulate {
        (format!("PTX interpreter ({SIMULATED_SMS} simulated SMs)"), SIMULATED_SMS, Target::default())
    } else {
        let dev = bpftime_cuda::Device::open(0).map_err(|e| format!("--engine gpu: {e}; `--engine ptx` runs the same PTX on the PTX interpreter"))?;
        let info = dev.info().map_err(|e| e.to_string())?;
        (format!("{} (sm_{}, {} SMs)", info.name, info.sm, info.sms), info.sms, Target::sm(info.sm.clamp(75, 120)))
    };
    let target = Target { shard_atomic_adds: true, ..target };
    let layout = probes.layout(nsm, false)?;
    let image = probes.arena_image(&layout, region);
    let ptx = probes.translate(target)?.pop().map(|p| p.ptx).ok_or("nothing to run")?;
    let (outcomes, mut arena, micros) = if simulate {
        let mut m = Machine::new(Module::parse(&ptx).map_err(|e| e.to_string())?);
        m.set_global_timer(realtime_ns());
        let host = host_words().words();
        let at = m.memory.alloc(layout.size);
        m.memory.write(at, &image).map_err(|e| e.to_string())?;
        let launch = Launch { grid: grid.map(|d| d.max(1)), block: block.map(|d| d.max(1)), sms: SIMULATED_SMS };
        let total = launch.blocks() as u64 * launch.threads() as u64;
        let out = m.memory.alloc(RUN_OUT_STRIDE * total);
        m.launch(
            RUN_KERNEL,
            &[0, 0, at, layout.size, budget, std::process::id() as u64 * 0x1_0000_0001, host[0], host[1], host[2], host[3], host[4], out, total],
            launch,
        )
        .map_err(|e| format!("PTX interpreter: {e}"))?;
        let raw = m.memory.read(out, RUN_OUT_STRIDE * total).map_err(|e| e.to_string())?;
        let outcomes =
            raw.chunks_exact(RUN_OUT_STRIDE as usize).map(|c| state::outcome(&c[8..], u64::from_le_bytes(c[..8].try_into().expect("8 bytes")))).collect();
        (outcomes, m.memory.read(at, layout.size).map_err(|e| e.to_string())?, None)
    } else {
        let dev = bpftime_cuda::Device::open(0).map_err(|e| e.to_string())?;
        let r = bpftime_cuda::run_grid(&dev, &ptx, &image, &[], grid, block, budget, host_words()).map_err(|e| e.to_string())?;
        (r.outcomes, r.arena, Some(r.micros))
    };
    let mut prev = image.clone();
    layout.fold_shards(&mut prev);
    let errors = probes.write_back(&layout, &mut arena, Some(&prev), region, None);
    Ok(Report { outcomes, maps: errors, trace: (vec![], 0), device, micros, layout: None, arena: None })
}

/// Runs on the GPU (`simulate` false) or on the PTX interpreter.
#[allow(clippy::too_many_arguments)]
pub fn run(
    file: &Path,
    section: Option<&str>,
    sm: Option<Target>,
    shard: bool,
    mem: &[u8],
    threads: u32,
    budget: u64,
    simulate: bool,
) -> Result<Report, String> {
    let sm = sm.map(|t| Target { shard_atomic_adds: shard, ..t });
    if simulate {
        let target = sm.unwrap_or(Target { shard_atomic_adds: shard, ..Target::default() });
        let g = prepare(file, section, target, SIMULATED_SMS)?;
        let mut m = Machine::new(Module::parse(&g.ptx).map_err(|e| e.to_string())?);
        m.set_global_timer(realtime_ns());
        let host = host_words().words();
        let arena = m.memory.alloc(g.layout.size);
        m.memory.write(arena, &g.arena).map_err(|e| e.to_string())?;
        let per_block = threads.clamp(1, 256);
        let blocks = threads.max(1).div_ceil(per_block);
        let total = (blocks * per_block) as u64;
        let ctx = m.memory.alloc((mem.len() as u64 * total).max(1));
        for t in 0..total {
            m.memory.write(ctx + t * mem.len() as u64, mem).map_err(|e| e.to_string())?;
        }
        let out = m.memory.alloc(RUN_OUT_STRIDE * total);
        m.launch(
            RUN_KERNEL,
            &[
                ctx,
                mem.len() as u64,
                arena,
                g.layout.size,
                budget,
                std::process::id() as u64 * 0x1_0000_0001,
                host[0],
                host[1],
                host[2],
                host[3],
                host[4],
                out,
                threads.max(1) as u64,
            ],
            Launch::linear(blocks, per_block, SIMULATED_SMS),
        )
        .map_err(|e| format!("PTX interpreter: {e}"))?;
        let raw = m.memory.read(out, RUN_OUT_STRIDE * total).map_err(|e| e.to_string())?;
        let outcomes = raw
            .chunks_exact(RUN_OUT_STRIDE as usize)
            .take(threads.max(1) as usize)
            .map(|c| state::outcome(&c[8..], u64::from_le_bytes(c[..8].try_into().expect("8 bytes"))))
            .collect();
        let mut image = m.memory.read(arena, g.layout.size).map_err(|e| e.to_string())?;
        g.layout.fold_shards(&mut image);
        return Ok(Report {
            outcomes,
            maps: describe_arena(&g.layout, &image),
            trace: trace_lines(&g.layout, &image),
            device: format!("PTX interpreter (sm_{}, {SIMULATED_SMS} simulated SMs)", target.sm),
            micros: None,
            layout: Some(g.layout.clone()),
            arena: Some(image),
        });
    }
    let dev = bpftime_cuda::Device::open(0).map_err(|e| format!("--engine gpu: {e}; `--engine ptx` runs the same PTX on the PTX interpreter"))?;
    let info = dev.info().map_err(|e| e.to_string())?;
    let target = sm.unwrap_or(Target { shard_atomic_adds: shard, ..Target::sm(info.sm.clamp(75, 120)) });
    let g = prepare(file, section, target, info.sms)?;
    let mut r = bpftime_cuda::run(&dev, &g.ptx, &g.arena, mem, threads, budget, host_words()).map_err(|e| e.to_string())?;
    g.layout.fold_shards(&mut r.arena);
    Ok(Report {
        outcomes: r.outcomes,
        maps: describe_arena(&g.layout, &r.arena),
        trace: trace_lines(&g.layout, &r.arena),
        device: format!("{} (sm_{}, {} SMs)", info.name, info.sm, info.sms),
        micros: Some(r.micros),
        layout: Some(g.layout.clone()),
        arena: Some(r.arena),
    })
}
