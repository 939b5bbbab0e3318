//! # libbpftime_syscall_server.so (planned)
//!
//! Will answer the bpf()/perf_event_open/ioctl/mmap calls of an unmodified libbpf loader and
//! keep maps, programs and links in shared memory. Empty until its issue is taken.
