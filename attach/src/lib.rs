//! # bpftime-attach (planned)
//!
//! Will hold the x86_64 inline-hook engine (iced-x86), uprobe/uretprobe attachment and symbol
//! resolution, and the CUDA driver interposition. Empty until the uprobe issue is taken.
