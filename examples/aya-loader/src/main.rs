//! count_calls in Rust with aya: loads an eBPF object, attaches each `uprobe/FUNC` /
//! `uretprobe/FUNC` program to FUNC of BINARY, says "attached N", waits for a line on stdin,
//! then prints the `stats` map. Runs against the kernel and, preloaded with the syscall server
//! (`bpftime load -- count-calls-aya ...`), against bpftime.
//! Usage: count-calls-aya OBJ BINARY

use aya::maps::Array;
use aya::programs::UProbe;
use aya::Ebpf;
use std::io::BufRead;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().collect();
    if args.len() != 3 {
        eprintln!("usage: {} OBJ BINARY", args[0]);
        std::process::exit(2);
    }
    let mut bpf = Ebpf::load_file(&args[1])?;
    let names: Vec<String> = bpf.programs().map(|(name, _)| name.to_string()).collect();
    let mut links = 0;
    for name in &names {
        // The function each program of examples/bpf/loader_calls.bpf.c probes.
        let func = if name.starts_with("add") { "add" } else { "fact" };
        let p: &mut UProbe = bpf.program_mut(name).ok_or("no such program")?.try_into()?;
        p.load()?;
        p.attach(Some(func), 0, &args[2], None)?;
        links += 1;
    }
    println!("attached {links}");
    let mut line = String::new();
    std::io::stdin().lock().read_line(&mut line)?;
    let stats: Array<_, u64> = Array::try_from(bpf.map("stats").ok_or("no stats map")?)?;
    for k in 0..stats.len() {
        println!("stats[{k}] = {}", stats.get(&k, 0)?);
    }
    Ok(())
}
