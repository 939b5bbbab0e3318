//! Printing maps for people (`map dump`, `--dump-maps`) and for scripts (`--json`).

use bpftime_maps::{Map, MapType};
use bpftime_object::btf::Btf;
use serde_json::{json, Value};
use std::fmt::Write;

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect::<Vec<_>>().join(" ")
}

/// The bytes as an unsigned integer when they have an integer's size.
fn as_uint(b: &[u8]) -> Option<u64> {
    match b.len() {
        1 => Some(b[0] as u64),
        2 => Some(u16::from_le_bytes(b.try_into().ok()?) as u64),
        4 => Some(u32::from_le_bytes(b.try_into().ok()?) as u64),
        8 => Some(u64::from_le_bytes(b.try_into().ok()?)),
        _ => None,
    }
}

fn show(b: &[u8]) -> String {
    match as_uint(b) {
        Some(v) => format!("{v}"),
        None => hex(b),
    }
}

fn bytes_json(b: &[u8]) -> Value {
    let mut o = json!({ "hex": hex(b) });
    if let Some(v) = as_uint(b) {
        o["u64"] = json!(v);
    }
    o
}

/// The BTF types a map's creator gave for its keys and values (a libbpf loader, `bpftime
/// load`): structs print field by field, char arrays as strings, signed integers signed.
struct Types {
    btf: Btf,
    key: u32,
    value: u32,
}

impl Types {
    fn of(m: &Map) -> Option<Types> {
        let b = m.btf();
        if b.object == 0 {
            return None;
        }
        let btf = Btf::parse(&bpftime_runtime::btfs::load(m.region(), b.object)?).ok()?;
        Some(Types { btf, key: b.key_type, value: b.value_type })
    }

    fn key(t: Option<&Types>, b: &[u8]) -> String {
        match t {
            Some(t) if t.key != 0 => t.btf.format_value(t.key, b),
            _ => show(b),
        }
    }

    fn value(t: Option<&Types>, b: &[u8]) -> String {
        match t {
            Some(t) if t.value != 0 => t.btf.format_value(t.value, b),
            _ => show(b),
        }
    }
}

/// One-line summary of a map.
pub fn header(m: &Map) -> String {
    let s = m.spec();
    let mut threads = bpftime_runtime::gpu::per_thread_slots(s).map(|n| format!(" per GPU thread ({n} threads)")).unwrap_or_default();
    if bpftime_runtime::gpu::in_host_memory(s) {
        threads += " in host memory for the GPU";
    }
    format!(
        "map {} `{}`: {}{threads}, key {} B, value {} B, max_entries {}, flags {:#x}",
        m.id(),
        m.name(),
        m.map_type().name(),
        s.key_size,
        s.value_size,
        s.max_entries,
        s.flags
    )
}

/// Every entry of a map, as (key, per-slot values).
fn entries(m: &Map) -> Vec<(Vec<u8>, Vec<Vec<u8>>)> {
    let vs = m.spec().value_size as usize;
    let stride = (vs.div_ceil(8)) * 8;
    let mut out = vec![];
    for k in m.keys() {
        let mut v = vec![0u8; m.syscall_value_size()];
        if m.lookup(&k, &mut v).is_err() {
            continue;
        }
        let slots = match bpftime_runtime::gpu::per_thread_slots(m.spec()) {
            // Each GPU thread's value, one after the other.
            Some(threads) => v.chunks((vs / threads as usize).max(1)).map(<[u8]>::to_vec).collect(),
            None if m.map_type().is_percpu() => v.chunks(stride).map(|c| c[..vs].to_vec()).collect(),
            None => vec![v],
        };
        out.push((k, slots));
    }
    out
}

/// A map for people.
pub fn human(m: &Map) -> String {
    let mut s = header(m);
    s.push('\n');
    match m.map_type() {
        MapType::Queue | MapType::Stack => {
            for (i, v) in m.queue_items().iter().enumerate() {
                let _ = writeln!(s, "  [{i}] {}", show(v));
            }
        }
        MapType::Ringbuf => {
            let _ = writeln!(
                s,
                "  {} bytes waiting, producer at {}, consumer at {}, {} lost",
                m.ringbuf_query(0),
                m.ringbuf_query(3),
                m.ringbuf_query(2),
                m.lost()
            );
        }
        MapType::PerfEventArray => {
            let readers: Vec<String> = m.perf_readers().iter().map(u32::to_string).collect();
            let readers = if readers.is_empty() { "no reader".to_string() } else { format!("readers on CPUs {}", readers.join(", ")) };
            let _ = writeln!(s, "  {readers}; {} lost samples", m.lost());
        }
        MapType::BloomFilter => {
            let _ = writeln!(s, "  (a bloom filter cannot be listed)");
        }
        _ => {
            let list = entries(m);
            let types = Types::of(m);
            let types = types.as_ref();
            // Arrays always hold max_entries elements: show the ones that are not all zeros.
            let array = matches!(m.map_type(), MapType::Array | MapType::PercpuArray);
            let mut hidden = 0;
            for (k, slots) in &list {
                if array && slots.iter().all(|v| v.iter().all(|&b| b == 0)) {
                    hidden += 1;
                    continue;
                }
                if slots.len() == 1 {
                    let _ = writeln!(s, "  {} => {}", Types::key(types, k), Types::value(types, &slots[0]));
                } else {
                    // Runs of one value shown once (`V x N`): a value per GPU thread is long.
                    let mut per: Vec<String> = vec![];
                    for run in slots.chunk_by(|a, b| a == b) {
                        per.push(if run.len() > 2 {
                            format!("{} x {}", Types::value(types, &run[0]), run.len())
                        } else {
                            run.iter().map(|v| Types::value(types, v)).collect::<Vec<_>>().join(", ")
                        });
                    }
                    let sum: Option<u64> = slots.iter().map(|v| as_uint(v)).sum();
                    let total = sum.map(|t| format!(" (sum {t})")).unwrap_or_default();
                    let _ = writeln!(s, "  {} => [{}]{total}", Types::key(types, k), per.join(", "));
                }
            }
            if hidden > 0 {
                let _ = writeln!(s, "  ({} entries, {hidden} all-zero not shown)", list.len());
            } else {
                let _ = writeln!(s, "  ({} entries)", list.len());
            }
        }
    }
    s
}

/// A map for scripts.
pub fn json(m: &Map) -> Value {
    let s = m.spec();
    let mut o = json!({
        "id": m.id(),
        "name": m.name(),
        "type": m.map_type().name(),
        "key_size": s.key_size,
        "value_size": s.value_size,
        "max_entries": s.max_entries,
        "flags": s.flags,
    });
    match m.map_type() {
        MapType::Queue | MapType::Stack => {
            o["values"] = Value::Array(m.queue_items().iter().map(|v| bytes_json(v)).collect());
        }
        MapType::Ringbuf => {
            o["available_bytes"] = json!(m.ringbuf_query(0));
            o["lost"] = json!(m.lost());
        }
        MapType::PerfEventArray => o["lost"] = json!(m.lost()),
        MapType::BloomFilter => {}
        _ => {
            let list: Vec<Value> = entries(m)
                .iter()
                .map(|(k, slots)| {
                    let mut e = json!({ "key": bytes_json(k) });
                    if slots.len() == 1 {
                        e["value"] = bytes_json(&slots[0]);
                    } else {
                        e["values"] = Value::Array(slots.iter().map(|v| bytes_json(v)).collect());
                    }
                    e
                })
                .collect();
            o["entries"] = Value::Array(list);
        }
    }
    o
}
