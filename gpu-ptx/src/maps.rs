//! Maps on the GPU: one device allocation, the *arena*, holds a table of map descriptors and
//! every map's storage; programs and helpers address it from `ARENA_LO` in the run state.
//!
//! ```text
//! arena: [header 64 B][descriptor 0][descriptor 1]...[storage of map 0][storage of map 1]...
//! ```
//! A map reference in a program is `MAP_TAG | slot`; `lddw` of a map value becomes the arena
//! address of the value's storage (read from the descriptor at run time).

/// Bytes of the arena header.
pub const HEADER_SIZE: u64 = 64;
/// Bytes of one descriptor.
pub const DESC_SIZE: u64 = 64;

/// Offsets of a descriptor's fields.
pub mod desc {
    /// u32: map type (kernel numbering, or bpftime's GPU types).
    pub const TYPE: u64 = 0;
    /// u32: key size.
    pub const KEY_SIZE: u64 = 4;
    /// u32: value size.
    pub const VALUE_SIZE: u64 = 8;
    /// u32: capacity.
    pub const MAX_ENTRIES: u64 = 12;
    /// u64: arena offset of the storage.
    pub const DATA_OFF: u64 = 16;
    /// u64: bytes of storage.
    pub const DATA_LEN: u64 = 24;
    /// u32: slots per entry for per-SM maps (1 otherwise).
    pub const SLOTS: u64 = 32;
    /// u32: bytes from one slot of a value to the next (value size rounded up to 8).
    pub const STRIDE: u64 = 36;
    /// u64: records dropped because a ring was full.
    pub const LOST: u64 = 40;
}

/// Arena offset of the descriptor of `slot`.
pub fn descriptor_offset(slot: u32) -> u64 {
    HEADER_SIZE + DESC_SIZE * slot as u64
}
