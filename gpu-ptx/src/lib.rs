//! # bpftime-gpu-ptx (planned)
//!
//! Will translate verified eBPF programs to PTX, parse CUDA fatbins, and splice probes into the
//! entry and exit of `__global__` functions. Depends on `bpftime-vm` only. Empty until the GPU
//! issue is taken; nothing here is claimed to work yet.
