//! # bpftime-gpu-ptx: eBPF on the GPU
//!
//! What it is: the second backend beside the Cranelift JIT. [`translate()`] turns a verified
//! [`bpftime_vm::Program`] into a PTX module (a `.func` per eBPF function, the helpers it calls
//! as PTX functions, and a one-thread-per-run kernel), with the interpreter's semantics: the
//! same arithmetic, the same memory checks (a fault ends the run, never the GPU kernel), the
//! same loop budget. [`interp`] executes exactly that PTX subset, so machines without a GPU
//! still run what we emit; [`state`] is the ABI of the per-thread run state, [`maps`] the
//! layout of maps in device memory.
//!
//! [`fatbin`] reads the device code CUDA applications embed.
//!
//! What it is not: it loads nothing onto a GPU and knows nothing of CUDA applications (the
//! CUDA driver access and the interposition sit above it). Depends on `bpftime-vm` only.

pub mod fatbin;
pub mod helpers;
pub mod interp;
pub mod link;
pub mod maps;
pub mod patch;
pub mod stack;
pub mod state;
pub mod std_helpers;
pub mod translate;

pub use helpers::{GpuHelper, HelperSet};
pub use translate::{translate, LddwMap, LddwMaps, Target, TranslateError, MAP_TAG, RUN_KERNEL, RUN_OUT_STRIDE};
