//! Shared test support: locating the conformance vectors and running a program on every engine.

pub mod clang;
pub mod cuda_tools;
pub mod datatest;
pub mod gpu;
pub mod kernel;
pub mod progen;
pub mod rng;

use std::path::PathBuf;

/// Root of the repository.
/// `$BPFTIME_REPO_ROOT` overrides it, for test binaries built on one machine and run on
/// another (`scripts/gpu-check.sh`).
pub fn repo_root() -> PathBuf {
    if let Some(r) = std::env::var_os("BPFTIME_REPO_ROOT") {
        return PathBuf::from(r);
    }
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).parent().expect("tests/ has a parent").to_path_buf()
}

/// Removes a test's region and the code cache beside it, whether or not they exist.
pub fn remove_region(name: &str) {
    let _ = bpftime_shm::ShmRegion::remove(name);
}

/// The conformance folder: `$BPFTIME_CONFORMANCE_DIR`, or `../shared/conformance` beside the
/// repository.
pub fn conformance_dir() -> PathBuf {
    std::env::var_os("BPFTIME_CONFORMANCE_DIR").map(PathBuf::from).unwrap_or_else(|| repo_root().join("../shared/conformance"))
}

/// One conformance vector.
#[derive(Debug, Clone)]
pub struct Vector {
    pub name: String,
    pub program: Vec<u8>,
    pub mem: Vec<u8>,
    pub result: u64,
}

/// Reads `vectors.jsonl`; `None` when the folder is absent.
pub fn conformance_vectors() -> Option<Vec<Vector>> {
    let path = conformance_dir().join("vectors.jsonl");
    let text = std::fs::read_to_string(&path).ok()?;
    let vectors = text
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).expect("vector is JSON");
            let s = |k: &str| v[k].as_str().unwrap_or_default().to_string();
            Vector {
                name: s("name"),
                program: bpftime_vm::conformance::parse_hex_bytes(&s("program")).expect("program hex"),
                mem: bpftime_vm::conformance::parse_hex_bytes(&s("mem")).expect("mem hex"),
                result: bpftime_vm::conformance::parse_result(&s("result")).expect("result"),
            }
        })
        .collect();
    Some(vectors)
}
