//! The kernel's ABI as the server reads it: bpf() command numbers, `union bpf_attr` and
//! `struct perf_event_attr` as byte buffers with little-endian fields at the UAPI offsets
//! (include/uapi/linux/bpf.h, include/uapi/linux/perf_event.h).

/// `BPF_MAP_CREATE`.
pub const MAP_CREATE: u32 = 0;
/// `BPF_MAP_LOOKUP_ELEM`.
pub const MAP_LOOKUP_ELEM: u32 = 1;
/// `BPF_MAP_UPDATE_ELEM`.
pub const MAP_UPDATE_ELEM: u32 = 2;
/// `BPF_MAP_DELETE_ELEM`.
pub const MAP_DELETE_ELEM: u32 = 3;
/// `BPF_MAP_GET_NEXT_KEY`.
pub const MAP_GET_NEXT_KEY: u32 = 4;
/// `BPF_PROG_LOAD`.
pub const PROG_LOAD: u32 = 5;
/// `BPF_PROG_TEST_RUN` (`BPF_PROG_RUN`).
pub const PROG_TEST_RUN: u32 = 10;
/// `BPF_OBJ_PIN`.
pub const OBJ_PIN: u32 = 6;
/// `BPF_OBJ_GET`.
pub const OBJ_GET: u32 = 7;
/// `BPF_F_PATH_FD`: `attr.path_fd` is the directory a relative pin path starts from.
pub const BPF_F_PATH_FD: u32 = 1 << 14;
/// `BPF_PROG_GET_NEXT_ID`.
pub const PROG_GET_NEXT_ID: u32 = 11;
/// `BPF_MAP_GET_NEXT_ID`.
pub const MAP_GET_NEXT_ID: u32 = 12;
/// `BPF_PROG_GET_FD_BY_ID`.
pub const PROG_GET_FD_BY_ID: u32 = 13;
/// `BPF_MAP_GET_FD_BY_ID`.
pub const MAP_GET_FD_BY_ID: u32 = 14;
/// `BPF_OBJ_GET_INFO_BY_FD`.
pub const OBJ_GET_INFO_BY_FD: u32 = 15;
/// `BPF_BTF_LOAD`.
pub const BTF_LOAD: u32 = 18;
/// `BPF_MAP_LOOKUP_AND_DELETE_ELEM`.
pub const MAP_LOOKUP_AND_DELETE_ELEM: u32 = 21;
/// `BPF_MAP_FREEZE`.
pub const MAP_FREEZE: u32 = 22;
/// `BPF_BTF_GET_FD_BY_ID`.
pub const BTF_GET_FD_BY_ID: u32 = 19;
/// `BPF_BTF_GET_NEXT_ID`.
pub const BTF_GET_NEXT_ID: u32 = 23;
/// `BPF_MAP_LOOKUP_BATCH`.
pub const MAP_LOOKUP_BATCH: u32 = 24;
/// `BPF_MAP_LOOKUP_AND_DELETE_BATCH`.
pub const MAP_LOOKUP_AND_DELETE_BATCH: u32 = 25;
/// `BPF_MAP_UPDATE_BATCH`.
pub const MAP_UPDATE_BATCH: u32 = 26;
/// `BPF_MAP_DELETE_BATCH`.
pub const MAP_DELETE_BATCH: u32 = 27;
/// `BPF_LINK_CREATE`.
pub const LINK_CREATE: u32 = 28;
/// `BPF_TASK_FD_QUERY`.
pub const TASK_FD_QUERY: u32 = 20;
/// `BPF_RAW_TRACEPOINT_OPEN`.
pub const RAW_TRACEPOINT_OPEN: u32 = 17;
/// `BPF_LINK_GET_FD_BY_ID`.
pub const LINK_GET_FD_BY_ID: u32 = 30;
/// `BPF_LINK_GET_NEXT_ID`.
pub const LINK_GET_NEXT_ID: u32 = 31;
/// `BPF_LINK_DETACH`.
pub const LINK_DETACH: u32 = 34;

/// `BPF_F_LOCK`: the only flag batch operations take per element.
pub const BPF_F_LOCK: u64 = 4;

/// `BPF_PERF_EVENT`: the attach type of a link to a perf event.
pub const BPF_PERF_EVENT: u32 = 41;
/// `BPF_TRACE_UPROBE_MULTI`: the attach type of a `uprobe_multi` link.
pub const BPF_TRACE_UPROBE_MULTI: u32 = 48;
/// `BPF_F_UPROBE_MULTI_RETURN`: a `uprobe_multi` link of return probes.
pub const BPF_F_UPROBE_MULTI_RETURN: u32 = 1;
/// `PERF_EVENT_IOC_ENABLE`: `_IO('$', 0)`.
pub const PERF_EVENT_IOC_ENABLE: u64 = 0x2400;
/// `PERF_EVENT_IOC_DISABLE`: `_IO('$', 1)`.
pub const PERF_EVENT_IOC_DISABLE: u64 = 0x2401;
/// `PERF_EVENT_IOC_SET_BPF`: `_IOW('$', 8, __u32)`.
pub const PERF_EVENT_IOC_SET_BPF: u64 = 0x4004_2408;

/// Bytes of `union bpf_attr` we read (the caller's size, zero-padded, as the kernel does).
pub const ATTR_SIZE: usize = 256;

/// An attribute block: `union bpf_attr` or `struct perf_event_attr`.
pub struct Attr(pub Vec<u8>);

impl Attr {
    /// The caller's `size` bytes, zero-padded to [`ATTR_SIZE`].
    pub fn from_bytes(mut b: Vec<u8>) -> Attr {
        b.resize(b.len().max(ATTR_SIZE), 0);
        Attr(b)
    }

    /// The u32 at `at`.
    pub fn u32(&self, at: usize) -> u32 {
        u32::from_le_bytes(self.0[at..at + 4].try_into().expect("4 bytes inside the padded block"))
    }

    /// The u64 at `at`.
    pub fn u64(&self, at: usize) -> u64 {
        u64::from_le_bytes(self.0[at..at + 8].try_into().expect("8 bytes inside the padded block"))
    }

    /// Sets the u32 at `at` (a field the kernel writes back).
    pub fn set_u32(&mut self, at: usize, v: u32) {
        self.0[at..at + 4].copy_from_slice(&v.to_le_bytes());
    }

    /// Sets the u64 at `at` (a field the kernel writes back).
    pub fn set_u64(&mut self, at: usize, v: u64) {
        self.0[at..at + 8].copy_from_slice(&v.to_le_bytes());
    }

    /// The 16-byte object name at `at` (`map_name`, `prog_name`), checked as the kernel's
    /// `bpf_obj_name_cpy` checks it: letters, digits, `_` and `.` up to a NUL within the 16
    /// bytes, else `EINVAL`.
    pub fn obj_name(&self, at: usize) -> Result<String, crate::server::Errno> {
        let b = &self.0[at..at + 16];
        let end = b.iter().position(|&c| c == 0).ok_or(libc::EINVAL)?;
        if !b[..end].iter().all(|&c| c.is_ascii_alphanumeric() || c == b'_' || c == b'.') {
            return Err(libc::EINVAL);
        }
        Ok(String::from_utf8_lossy(&b[..end]).into_owned())
    }
}

/// The section name a program of kernel `prog_type` (and expected attach type) is stored under
/// (the kernel knows no sections; the agent and `bpftime prog list` read this).
pub fn section_of(prog_type: u32, _expected_attach_type: u32) -> &'static str {
    match prog_type {
        1 => "socket",
        2 => "uprobe",
        5 => "tracepoint",
        7 => "perf_event",
        17 => "raw_tracepoint",
        26 => "tracing",
        _ => "unknown",
    }
}

/// The kernel program type of a stored section (for `bpf_prog_info`).
pub fn prog_type_of(section: &str) -> u32 {
    match section.split('/').next().unwrap_or("") {
        "socket" => 1,
        "uprobe" | "uretprobe" | "kprobe" | "kretprobe" | "usdt" => 2,
        "tracepoint" | "tp" => 5,
        "perf_event" => 7,
        "raw_tracepoint" | "raw_tp" => 17,
        "tracing" | "fentry" | "fexit" => 26,
        _ => 0,
    }
}
