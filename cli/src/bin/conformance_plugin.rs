//! `bpftime-conformance-plugin`: the plugin the official bpf_conformance runner drives.
//!
//! Protocol: `plugin [MEM] [--engine jit|interp]`; MEM (present only when the test has input
//! memory) is one argument of hex bytes; the program arrives on standard input as hex text.
//! Prints r0 in hex and exits 0, or prints the error to standard error and exits 1.

use bpftime_runtime::EngineKind;
use bpftime_vm::conformance::{helper_table, parse_hex_bytes};
use bpftime_vm::exec::{run, Context, RunOptions};
use bpftime_vm::{verify_bytecode, NoMaps};
use clap::Parser;
use std::io::Read;
use std::process::ExitCode;
use std::sync::Arc;

#[derive(Parser)]
#[command(name = "bpftime-conformance-plugin", about = "bpf_conformance plugin for bpftime-rs")]
struct Args {
    /// Input memory as hex bytes.
    mem: Option<String>,
    /// Execution engine.
    #[arg(long, default_value = "jit")]
    engine: EngineKind,
}

fn main() -> ExitCode {
    match run_plugin() {
        Ok(r0) => {
            println!("{r0:x}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("{e}");
            ExitCode::FAILURE
        }
    }
}

fn run_plugin() -> Result<u64, String> {
    let args = Args::parse();
    let mut text = String::new();
    std::io::stdin().read_to_string(&mut text).map_err(|e| format!("reading the program: {e}"))?;
    let code = parse_hex_bytes(&text)?;
    let program = verify_bytecode(&code, Arc::new(helper_table()), &NoMaps).map_err(|e| format!("verifier: {e}"))?;
    let engine = args.engine.build(Arc::new(program)).map_err(|e| format!("jit: {e}"))?;
    let mut mem = match args.mem {
        Some(m) => parse_hex_bytes(&m)?,
        None => Vec::new(),
    };
    let ctx = if mem.is_empty() { Context::None } else { Context::Mem(&mut mem) };
    run(engine.as_ref(), ctx, &RunOptions::default()).map_err(|e| e.to_string())
}
