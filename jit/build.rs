//! Names this build of the compiler for the code cache: a hash of the sources that decide what
//! code is generated (this crate's and the VM's) and of the locked dependency versions
//! (Cranelift's). A cache entry made by any other build is never used.

use std::hash::{Hash, Hasher};
use std::path::Path;

fn hash_tree(dir: &Path, h: &mut impl Hasher) {
    let mut entries: Vec<_> = std::fs::read_dir(dir).map(|d| d.flatten().map(|e| e.path()).collect()).unwrap_or_default();
    entries.sort();
    for path in entries {
        if path.is_dir() {
            hash_tree(&path, h);
        } else if let Ok(bytes) = std::fs::read(&path) {
            path.file_name().hash(h);
            bytes.hash(h);
        }
    }
}

fn main() {
    let manifest = std::env::var("CARGO_MANIFEST_DIR").expect("cargo sets CARGO_MANIFEST_DIR");
    let root = Path::new(&manifest);
    let inputs = [root.join("src"), root.join("../runtime/vm/src"), root.join("../Cargo.lock")];
    let mut h = std::collections::hash_map::DefaultHasher::new();
    for input in &inputs {
        println!("cargo:rerun-if-changed={}", input.display());
        // A missing input would leave code from another VM or Cranelift under the same id.
        assert!(input.exists(), "{} is missing: the code cache's build id needs it", input.display());
        if input.is_dir() {
            hash_tree(input, &mut h);
        } else if let Ok(bytes) = std::fs::read(input) {
            bytes.hash(&mut h);
        }
    }
    env!("CARGO_PKG_VERSION").hash(&mut h);
    println!("cargo:rustc-env=BPFTIME_JIT_BUILD_ID={:016x}", h.finish());
}
