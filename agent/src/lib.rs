//! # libbpftime.so (planned)
//!
//! The agent: preloaded into a process, it will attach the programs found in shared memory.
//! Thin glue over `bpftime-attach`. Empty until the uprobe issue is taken.
