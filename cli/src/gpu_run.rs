//! `bpftime vm ptx` and `bpftime vm run --engine gpu|ptx`: a program on the GPU, or on the
//! PTX interpreter (the same PTX, executed without a GPU).

use bpftime_gpu_ptx::interp::{Launch, Machine, Module};
use bpftime_gpu_ptx::{state, Target, RUN_KERNEL, RUN_OUT_STRIDE};
use bpftime_object::Object;
use bpftime_runtime::gpu::{describe_arena, gpu_program, gpu_program_from_raw, trace_lines, GpuProgram};
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
            &[ctx, mem.len() as u64, arena, g.layout.size, budget, std::process::id() as u64 * 0x1_0000_0001, out, threads.max(1) as u64],
            Launch { blocks, threads: per_block, sms: SIMULATED_SMS },
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
    let mut r = bpftime_cuda::run(&dev, &g.ptx, &g.arena, mem, threads, budget).map_err(|e| e.to_string())?;
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
