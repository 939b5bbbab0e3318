//! Names this build's analysis of modules (`src/module_code.rs`, with the decoder it uses) so
//! that facts stored by another build are never read (see `module_code::FactsStore`).

use std::hash::{Hash, Hasher};

fn main() {
    let mut h = std::collections::hash_map::DefaultHasher::new();
    for input in ["src/module_code.rs", "../Cargo.lock"] {
        println!("cargo:rerun-if-changed={input}");
        std::fs::read(input).unwrap_or_else(|e| panic!("{input}: {e} (the module facts' build id needs it)")).hash(&mut h);
    }
    println!("cargo:rustc-env=BPFTIME_MODULE_FACTS_ID={:016x}", h.finish());
}
