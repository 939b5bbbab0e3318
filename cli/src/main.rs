//! `bpftime`: run and inspect eBPF programs.

use bpftime_cli::{load_program_file, make_engine, EngineKind};
use bpftime_vm::conformance::parse_hex_bytes;
use bpftime_vm::exec::{run, Context, HelperTable, RunOptions, DEFAULT_LOOP_BUDGET};
use bpftime_vm::insn::decode;
use bpftime_vm::{disasm, verify, NoMaps};
use clap::{Parser, Subcommand};
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

/// A userspace eBPF runtime.
#[derive(Parser)]
#[command(name = "bpftime", version, about)]
struct Cli {
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
}

#[derive(Subcommand)]
enum VmCommand {
    /// Verify and run a program; print r0.
    Run {
        /// Raw bytecode, or a clang-built eBPF object.
        file: PathBuf,
        /// Program of the object to run (function or section name).
        #[arg(long)]
        section: Option<String>,
        /// Input memory as hex bytes (r1 points at it, r2 is its length).
        #[arg(long)]
        mem: Option<String>,
        /// Execution engine.
        #[arg(long, value_enum, default_value_t = EngineKind::Jit)]
        engine: EngineKind,
        /// Backward jumps allowed before the run is stopped.
        #[arg(long, default_value_t = DEFAULT_LOOP_BUDGET)]
        budget: u64,
    },
    /// Print a program in llvm-objdump syntax.
    Disasm {
        /// Raw bytecode, or a clang-built eBPF object.
        file: PathBuf,
        /// Program of the object (function or section name).
        #[arg(long)]
        section: Option<String>,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match dispatch(cli.command) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("bpftime: {e}");
            ExitCode::FAILURE
        }
    }
}

fn dispatch(cmd: Command) -> Result<(), String> {
    match cmd {
        Command::Vm { command: VmCommand::Run { file, section, mem, engine, budget } } => {
            let loaded = load_program_file(&file, section.as_deref())?;
            if let Some(why) = &loaded.unresolved {
                return Err(format!("{}: {why}", loaded.origin));
            }
            let program = verify(&loaded.insns, Arc::new(HelperTable::new()), &NoMaps)
                .map_err(|e| format!("{}: verifier: {e}", loaded.origin))?;
            let engine = make_engine(engine, Arc::new(program))?;
            let mut mem = match mem {
                Some(h) => parse_hex_bytes(&h).map_err(|e| format!("--mem: {e}"))?,
                None => Vec::new(),
            };
            let ctx = if mem.is_empty() { Context::None } else { Context::Mem(&mut mem) };
            let opts = RunOptions { budget, ..RunOptions::default() };
            let r0 = run(engine.as_ref(), ctx, &opts).map_err(|e| format!("{}: {e}", loaded.origin))?;
            println!("r0 = {r0:#x} ({})", r0 as i64);
            Ok(())
        }
        Command::Vm { command: VmCommand::Disasm { file, section } } => {
            let loaded = load_program_file(&file, section.as_deref())?;
            let insns = decode(&loaded.insns).map_err(|e| format!("{}: {e}", loaded.origin))?;
            print!("{}", disasm::disassemble(&insns));
            Ok(())
        }
    }
}
