//! The helpers GPU programs get: maps in the device arena (lookup, update, delete for arrays,
//! per-SM arrays and hashes), time, ids, output to device rings, `bpf_loop`, and bpftime's GPU
//! helper ids (501-511) so its GPU programs run unmodified. Semantics follow the CPU helpers:
//! the same errnos, NULL for a failed lookup, key and value pointers checked against the
//! regions a program may touch.
//!
//! Helpers share a few PTX support functions (range checks, map descriptors, hashing, copies),
//! [`SUPPORT`], emitted into every module that calls a helper.

use crate::helpers::{GpuHelper, HelperSet};
use crate::maps::{desc, header, HASH_BUSY, HASH_DELETED, HASH_FULL};
use crate::state::{off, FAULT_BAD_CALLBACK, FAULT_NESTED_CALLBACK, STATUS_EXIT_THREAD, STATUS_FAULT, STATUS_STOPPED};
use crate::translate::{function_name, MAP_TAG};
use bpftime_vm::Program;

/// Replaces `{NAME}` tokens with the layout constants.
fn fill(template: &str) -> String {
    let constants: [(&str, u64); 42] = [
        ("{STACK_LO}", off::STACK_LO as u64),
        ("{STACK_LEN}", off::STACK_LEN as u64),
        ("{CTX_LO}", off::CTX_LO as u64),
        ("{CTX_LEN}", off::CTX_LEN as u64),
        ("{CTX_WLEN}", off::CTX_WLEN as u64),
        ("{ARENA_LO}", off::ARENA_LO as u64),
        ("{ARENA_LEN}", off::ARENA_LEN as u64),
        ("{STATUS}", off::STATUS as u64),
        ("{STOP_VALUE}", off::STOP_VALUE as u64),
        ("{PID_TGID}", off::PID_TGID as u64),
        ("{FAULT_INSN}", off::FAULT_INSN as u64),
        ("{FAULT_KIND}", off::FAULT_KIND as u64),
        ("{FAULT_ARG}", off::FAULT_ARG as u64),
        ("{FAULT_ARG2}", off::FAULT_ARG2 as u64),
        ("{IN_CALLBACK}", off::IN_CALLBACK as u64),
        ("{MAP_TAG_HI}", MAP_TAG >> 48),
        ("{NMAPS}", header::NMAPS),
        ("{PER_THREAD_ARRAY}", crate::maps::PER_THREAD_ARRAY as u64),
        ("{TRACE_SLOT}", header::TRACE_SLOT),
        ("{TRACE_TEXT_MAX}", crate::maps::TRACE_TEXT_MAX),
        ("{D_TYPE}", desc::TYPE),
        ("{D_KEY}", desc::KEY_SIZE),
        ("{D_VALUE}", desc::VALUE_SIZE),
        ("{D_MAX}", desc::MAX_ENTRIES),
        ("{D_DATA}", desc::DATA_OFF),
        ("{D_DATA_LEN}", desc::DATA_LEN),
        ("{D_SLOTS}", desc::SLOTS),
        ("{D_STRIDE}", desc::STRIDE),
        ("{D_COUNT}", desc::COUNT),
        ("{D_LOST}", desc::LOST),
        ("{D_CAP}", desc::CAPACITY),
        ("{D_ENTRY}", desc::ENTRY_SIZE),
        ("{D_KOFF}", desc::KEY_OFF),
        ("{D_HEAD}", desc::HEAD),
        ("{D_CHUNK}", desc::CHUNK),
        ("{H_NSM}", header::NSM),
        ("{CURSOR_STRIDE}", crate::maps::CURSOR_STRIDE),
        ("{HASH_BUSY}", HASH_BUSY as u64),
        ("{HASH_FULL}", HASH_FULL as u64),
        ("{HASH_DELETED}", HASH_DELETED as u64),
        ("{STATUS_FAULT}", STATUS_FAULT as u64),
        ("{STATUS_STOPPED}", STATUS_STOPPED as u64),
    ];
    let template = template.replace("{GLOBAL_THREAD_ID}", &global_thread_id());
    constants.iter().fold(template, |s, (k, v)| s.replace(k, &v.to_string()))
}

/// Support functions: (prototype, definition).
pub fn support() -> Vec<(String, String)> {
    SUPPORT
        .iter()
        .map(|def| {
            let def = fill(def);
            let proto = def.lines().find(|l| l.starts_with(".func")).expect("a .func line").to_string() + ";";
            (proto, def)
        })
        .collect()
}

/// PTX support functions shared by the helpers.
pub const SUPPORT: &[&str] = &[
    // ok = whether [addr, addr+len) lies in one region a program may touch (writable when
    // `write`): the stack, the context, the arena, a map kept in host memory. len 0 is always
    // fine.
    r#".func (.reg .b64 %ok) bpf_range_ok(.reg .b64 %st, .reg .b64 %addr, .reg .b64 %len, .reg .b64 %write)
{
.reg .b64 %lo, %n, %x, %e;
.reg .pred %p, %w;
mov.b64 %ok, 1;
setp.eq.u64 %p, %len, 0;
@%p ret;
ld.u64 %lo, [%st+{STACK_LO}];
ld.u64 %n, [%st+{STACK_LEN}];
sub.u64 %x, %addr, %lo;
setp.lt.u64 %p, %x, %n;
setp.le.and.u64 %p, %len, %n, %p;
add.u64 %e, %x, %len;
setp.le.and.u64 %p, %e, %n, %p;
@%p ret;
ld.u64 %lo, [%st+{CTX_LO}];
setp.ne.u64 %w, %write, 0;
@%w ld.u64 %n, [%st+{CTX_WLEN}];
@!%w ld.u64 %n, [%st+{CTX_LEN}];
sub.u64 %x, %addr, %lo;
setp.lt.u64 %p, %x, %n;
setp.le.and.u64 %p, %len, %n, %p;
add.u64 %e, %x, %len;
setp.le.and.u64 %p, %e, %n, %p;
@%p ret;
ld.u64 %lo, [%st+{ARENA_LO}];
ld.u64 %n, [%st+{ARENA_LEN}];
sub.u64 %x, %addr, %lo;
setp.lt.u64 %p, %x, %n;
setp.le.and.u64 %p, %len, %n, %p;
add.u64 %e, %x, %len;
setp.le.and.u64 %p, %e, %n, %p;
@%p ret;
call.uni (%ok), bpf_host_ok, (%st, %addr, %len);
ret;
}"#,
    // d = the descriptor of map reference `ref`, or 0.
    r#".func (.reg .b64 %d) bpf_map_desc(.reg .b64 %st, .reg .b64 %ref)
{
.reg .b64 %t, %lo, %n;
.reg .b32 %w;
.reg .pred %p;
mov.b64 %d, 0;
shr.u64 %t, %ref, 48;
setp.ne.u64 %p, %t, {MAP_TAG_HI};
@%p ret;
and.b64 %t, %ref, 0xffffffff;
ld.u64 %lo, [%st+{ARENA_LO}];
setp.eq.u64 %p, %lo, 0;
@%p ret;
ld.u32 %w, [%lo+{NMAPS}];
cvt.u64.u32 %n, %w;
setp.ge.u64 %p, %t, %n;
@%p ret;
mul.lo.u64 %t, %t, 64;
add.u64 %t, %t, 64;
add.u64 %d, %lo, %t;
ret;
}"#,
    // h = FNV-1a over [key, key+len).
    r#".func (.reg .b64 %h) bpf_fnv(.reg .b64 %key, .reg .b64 %len)
{
.reg .b64 %i, %a, %b;
.reg .b32 %w;
.reg .pred %p;
mov.b64 %h, 0xcbf29ce484222325;
mov.b64 %i, 0;
$loop:
setp.ge.u64 %p, %i, %len;
@%p ret;
add.u64 %a, %key, %i;
ld.u8 %w, [%a];
cvt.u64.u32 %b, %w;
xor.b64 %h, %h, %b;
mul.lo.u64 %h, %h, 0x100000001b3;
add.u64 %i, %i, 1;
bra $loop;
}"#,
    // eq = whether [a, a+len) and [b, b+len) hold the same bytes (read past the SM's L1 cache:
    // a hash key another SM just wrote must not be compared with a stale copy).
    r#".func (.reg .b64 %eq) bpf_memeq(.reg .b64 %a, .reg .b64 %b, .reg .b64 %len)
{
.reg .b64 %i, %x, %y;
.reg .b32 %u, %v;
.reg .pred %p;
mov.b64 %eq, 0;
mov.b64 %i, 0;
$loop:
setp.ge.u64 %p, %i, %len;
@%p bra $same;
add.u64 %x, %a, %i;
add.u64 %y, %b, %i;
ld.volatile.u8 %u, [%x];
ld.volatile.u8 %v, [%y];
setp.ne.u32 %p, %u, %v;
@%p ret;
add.u64 %i, %i, 1;
bra $loop;
$same:
mov.b64 %eq, 1;
ret;
}"#,
    // Copies len bytes from src to dst (8 at a time when both are aligned).
    r#".func (.reg .b64 %done) bpf_memcpy(.reg .b64 %dst, .reg .b64 %src, .reg .b64 %len)
{
.reg .b64 %i, %x, %y, %v, %t;
.reg .b32 %u;
.reg .pred %p;
mov.b64 %i, 0;
or.b64 %t, %dst, %src;
or.b64 %t, %t, %len;
and.b64 %t, %t, 7;
setp.ne.u64 %p, %t, 0;
@%p bra $bytes;
$words:
setp.ge.u64 %p, %i, %len;
@%p bra $end;
add.u64 %x, %dst, %i;
add.u64 %y, %src, %i;
ld.u64 %v, [%y];
st.u64 [%x], %v;
add.u64 %i, %i, 8;
bra $words;
$bytes:
setp.ge.u64 %p, %i, %len;
@%p bra $end;
add.u64 %x, %dst, %i;
add.u64 %y, %src, %i;
ld.u8 %u, [%y];
st.u8 [%x], %u;
add.u64 %i, %i, 1;
bra $bytes;
$end:
mov.b64 %done, %len;
ret;
}"#,
    // v = the u32 at addr (any alignment).
    r#".func (.reg .b64 %v) bpf_load_u32(.reg .b64 %addr)
{
.reg .b64 %b;
.reg .b32 %w;
ld.u8 %w, [%addr+3];
cvt.u64.u32 %v, %w;
ld.u8 %w, [%addr+2];
cvt.u64.u32 %b, %w;
shl.b64 %v, %v, 8;
or.b64 %v, %v, %b;
ld.u8 %w, [%addr+1];
cvt.u64.u32 %b, %w;
shl.b64 %v, %v, 8;
or.b64 %v, %v, %b;
ld.u8 %w, [%addr];
cvt.u64.u32 %b, %w;
shl.b64 %v, %v, 8;
or.b64 %v, %v, %b;
ret;
}"#,
    // e = the entry of `key` in hash map `d` (0 if absent). With `create`, claims a slot when
    // absent (e = 0 when none is left): the key's own deleted entry if it has one, else the
    // first empty slot. A key has at most one slot in its probe sequence (inserts never pass
    // its deleted entry), so a key deleted and inserted again every launch reuses its slot; a
    // slot being written by another thread is waited for, so one key never gets two entries.
    // e = a slot for `key` in hash map `d` taken from an entry in state `victim` (FULL: a live
    // entry, evicted; DELETED: another key's deleted entry, reused) when an insert found no free
    // slot: the key's entry if another thread inserted it meanwhile (FULL), else the first entry
    // in state `victim` on the key's probe sequence before its first empty slot, given the key
    // (BUSY, values zeroed); 0 when there is none. A slot another thread is writing is waited
    // for and a lost race starts over, so two threads inserting one new key end with one entry,
    // except where a third changes an entry ahead of both in that instant (then the key has a
    // second entry, which lookups do not reach and a delete leaves).
    r#".func (.reg .b64 %e) bpf_hash_rekey(.reg .b64 %st, .reg .b64 %d, .reg .b64 %key, .reg .b64 %victim)
{
.reg .b64 %lo, %data, %ks, %h, %cap, %i, %n, %esz, %t, %eq, %spin, %tries, %kb;
.reg .b32 %w, %hw, %vw;
.reg .pred %p;
cvt.u32.u64 %vw, %victim;
mov.b64 %tries, 0;
$again:
call.uni (%e), bpf_hash_find, (%st, %d, %key, 0);
setp.ne.u64 %p, %e, 0;
@%p ret;
add.u64 %tries, %tries, 1;
setp.gt.u64 %p, %tries, 16;
@%p ret;
ld.u64 %lo, [%st+{ARENA_LO}];
ld.u64 %data, [%d+{D_DATA}];
add.u64 %data, %data, %lo;
ld.u32 %w, [%d+{D_KEY}];
cvt.u64.u32 %ks, %w;
ld.u32 %w, [%d+{D_CAP}];
cvt.u64.u32 %cap, %w;
ld.u32 %w, [%d+{D_ENTRY}];
cvt.u64.u32 %esz, %w;
call.uni (%h), bpf_fnv, (%key, %ks);
cvt.u32.u64 %hw, %h;
or.b32 %hw, %hw, 1;
mov.b64 %n, 0;
$probe:
setp.ge.u64 %p, %n, %cap;
@%p ret;
add.u64 %i, %h, %n;
sub.u64 %t, %cap, 1;
and.b64 %i, %i, %t;
mul.lo.u64 %t, %i, %esz;
add.u64 %t, %t, %data;
mov.b64 %spin, 0;
$look:
ld.volatile.u32 %w, [%t];
setp.eq.u32 %p, %w, 0;
@%p ret;
setp.eq.u32 %p, %w, {HASH_BUSY};
@!%p bra $settled;
add.u64 %spin, %spin, 1;
setp.lt.u64 %p, %spin, 1000000;
@%p bra $look;
ret;
$settled:
setp.ne.u32 %p, %w, %vw;
@%p bra $next;
atom.global.cas.b32 %w, [%t], %vw, {HASH_BUSY};
setp.ne.u32 %p, %w, %vw;
@%p bra $again;
st.u32 [%t+4], %hw;
add.u64 %kb, %t, {D_KOFF};
call.uni (%eq), bpf_memcpy, (%kb, %key, %ks);
add.u64 %i, %ks, 15;
and.b64 %i, %i, -8;
$zero:
setp.ge.u64 %p, %i, %esz;
@%p bra $taken;
add.u64 %eq, %t, %i;
st.u64 [%eq], 0;
add.u64 %i, %i, 8;
bra $zero;
$taken:
mov.b64 %e, %t;
ret;
$next:
add.u64 %n, %n, 1;
bra $probe;
}"#,
    // e = a slot for `key` in LRU hash map `d` at its capacity: the first live entry of the
    // key's probe sequence before a free slot, evicted and given the key (`bpf_hash_rekey`);
    // else the table's first live entry deleted and a free slot of the key's claimed (BUSY),
    // the count kept; 0 when none can be had. The kernel's LRU is approximate too; this one
    // evicts whichever live entry probing meets first.
    r#".func (.reg .b64 %e) bpf_hash_evict(.reg .b64 %st, .reg .b64 %d, .reg .b64 %key)
{
.reg .b64 %lo, %data, %cap, %esz, %t, %end, %c, %eq;
.reg .b32 %w;
.reg .pred %p;
call.uni (%e), bpf_hash_rekey, (%st, %d, %key, {HASH_FULL});
setp.ne.u64 %p, %e, 0;
@%p ret;
ld.u64 %lo, [%st+{ARENA_LO}];
ld.u64 %data, [%d+{D_DATA}];
add.u64 %data, %data, %lo;
ld.u32 %w, [%d+{D_CAP}];
cvt.u64.u32 %cap, %w;
ld.u32 %w, [%d+{D_ENTRY}];
cvt.u64.u32 %esz, %w;
mul.lo.u64 %end, %cap, %esz;
add.u64 %end, %end, %data;
mov.b64 %t, %data;
$scan:
setp.ge.u64 %p, %t, %end;
@%p ret;
atom.global.cas.b32 %w, [%t], {HASH_FULL}, {HASH_DELETED};
add.u64 %t, %t, %esz;
setp.ne.u32 %p, %w, {HASH_FULL};
@%p bra $scan;
add.u64 %c, %d, {D_COUNT};
atom.global.add.u64 %eq, [%c], -1;
call.uni (%e), bpf_hash_find, (%st, %d, %key, 1);
setp.eq.u64 %p, %e, 0;
@%p ret;
ld.volatile.u32 %w, [%e];
setp.ne.u32 %p, %w, {HASH_BUSY};
@%p ret;
atom.global.add.u64 %eq, [%c], 1;
ret;
}"#,
    r#".func (.reg .b64 %e) bpf_hash_find(.reg .b64 %st, .reg .b64 %d, .reg .b64 %key, .reg .b64 %create)
{
.reg .b64 %lo, %data, %ks, %h, %cap, %i, %n, %esz, %t, %eq, %spin;
.reg .b32 %w, %hw, %old;
.reg .pred %p;
mov.b64 %e, 0;
ld.u64 %lo, [%st+{ARENA_LO}];
ld.u64 %data, [%d+{D_DATA}];
add.u64 %data, %data, %lo;
ld.u32 %w, [%d+{D_KEY}];
cvt.u64.u32 %ks, %w;
ld.u32 %w, [%d+{D_CAP}];
cvt.u64.u32 %cap, %w;
ld.u32 %w, [%d+{D_ENTRY}];
cvt.u64.u32 %esz, %w;
call.uni (%h), bpf_fnv, (%key, %ks);
cvt.u32.u64 %hw, %h;
or.b32 %hw, %hw, 1;
mov.b64 %n, 0;
$probe:
setp.ge.u64 %p, %n, %cap;
@%p ret;
add.u64 %i, %h, %n;
sub.u64 %t, %cap, 1;
and.b64 %i, %i, %t;
mul.lo.u64 %t, %i, %esz;
add.u64 %t, %t, %data;
mov.b64 %spin, 0;
$look:
ld.volatile.u32 %w, [%t];
setp.eq.u32 %p, %w, 0;
@%p bra $empty;
setp.eq.u32 %p, %w, {HASH_BUSY};
@!%p bra $full;
add.u64 %spin, %spin, 1;
setp.lt.u64 %p, %spin, 1000000;
@%p bra $look;
bra $next;
$full:
mov.b32 %old, %w;
ld.volatile.u32 %w, [%t+4];
setp.ne.u32 %p, %w, %hw;
@%p bra $next;
add.u64 %eq, %t, {D_KOFF};
call.uni (%eq), bpf_memeq, (%eq, %key, %ks);
setp.eq.u64 %p, %eq, 0;
@%p bra $next;
setp.eq.u32 %p, %old, {HASH_FULL};
@%p bra $found;
setp.ne.u32 %p, %old, {HASH_DELETED};
@%p bra $next;
// The key's deleted entry: the key is absent; an insert takes the entry back.
setp.eq.u64 %p, %create, 0;
@%p ret;
atom.global.cas.b32 %w, [%t], {HASH_DELETED}, {HASH_BUSY};
setp.ne.u32 %p, %w, {HASH_DELETED};
@%p bra $look;
// Its old values go (a per-CPU map's other slots read 0 after an insert, as the kernel's).
mov.b64 %e, %t;
add.u64 %i, %ks, 15;
and.b64 %i, %i, -8;
$zero:
setp.ge.u64 %p, %i, %esz;
@%p ret;
add.u64 %eq, %t, %i;
st.u64 [%eq], 0;
add.u64 %i, %i, 8;
bra $zero;
$found:
mov.b64 %e, %t;
ret;
$next:
add.u64 %n, %n, 1;
bra $probe;
$empty:
setp.eq.u64 %p, %create, 0;
@%p ret;
atom.global.cas.b32 %old, [%t], 0, {HASH_BUSY};
setp.ne.u32 %p, %old, 0;
@%p bra $look;
st.u32 [%t+4], %hw;
add.u64 %eq, %t, {D_KOFF};
call.uni (%eq), bpf_memcpy, (%eq, %key, %ks);
mov.b64 %e, %t;
ret;
}"#,
];

/// Pieces of the map helpers: the entry address of `%a2`'s key in map `%d` (array-like maps
/// index by the u32 key, hash maps look it up), and `%sm`, the offset of this access's value
/// slot in an entry: this SM's (per-CPU maps), this thread's (per-thread arrays: past the
/// map's threads, the key is missing), or the only one.
const MAP_PROLOGUE: &str = r#".reg .b64 %d, %ks, %ok, %idx, %max, %lo, %data, %stride, %slots, %sm, %e, %t, %vs, %cnt, %voff, %gx, %gy, %gz, %gw, %gh;
.reg .b32 %w, %ty, %g1, %g2;
.reg .pred %p, %q;
call.uni (%d), bpf_map_desc, (%st, %a1);
setp.eq.u64 %p, %d, 0;
@%p bra $einval;
ld.u32 %w, [%d+{D_KEY}];
cvt.u64.u32 %ks, %w;
call.uni (%ok), bpf_range_ok, (%st, %a2, %ks, 0);
setp.eq.u64 %p, %ok, 0;
@%p bra $efault;
ld.u64 %lo, [%st+{ARENA_LO}];
ld.u64 %data, [%d+{D_DATA}];
add.u64 %data, %data, %lo;
ld.u32 %w, [%d+{D_STRIDE}];
cvt.u64.u32 %stride, %w;
ld.u32 %w, [%d+{D_SLOTS}];
cvt.u64.u32 %slots, %w;
ld.u32 %w, [%d+{D_VALUE}];
cvt.u64.u32 %vs, %w;
mov.u32 %w, %smid;
cvt.u64.u32 %sm, %w;
rem.u64 %sm, %sm, %slots;
mul.lo.u64 %sm, %sm, %stride;
ld.u32 %ty, [%d+{D_TYPE}];
add.u64 %voff, %ks, 15;
and.b64 %voff, %voff, -8;
setp.ne.u32 %p, %ty, {PER_THREAD_ARRAY};
@%p bra $slot_known;
{GLOBAL_THREAD_ID}setp.ge.u64 %p, %t, %slots;
@%p bra $missing;
mul.lo.u64 %sm, %t, %stride;
$slot_known:
"#;

/// `%t` = the global thread id, as bpftime numbers GPU threads: (z * height + y) * width + x,
/// each coordinate `ctaid * ntid + tid`, width and height the grid's in threads.
pub(crate) fn global_thread_id() -> String {
    let mut s = String::new();
    let product = |out: &str, a: &str, b: &str| format!("mov.u32 %g1, {a};\nmov.u32 %g2, {b};\nmul.wide.u32 {out}, %g1, %g2;\n");
    for c in ["x", "y", "z"] {
        s += &product(&format!("%g{c}"), &format!("%ctaid.{c}"), &format!("%ntid.{c}"));
        s += &format!("mov.u32 %g1, %tid.{c};\ncvt.u64.u32 %t, %g1;\nadd.u64 %g{c}, %g{c}, %t;\n");
    }
    s += &product("%gw", "%nctaid.x", "%ntid.x");
    s += &product("%gh", "%nctaid.y", "%ntid.y");
    s + "mul.lo.u64 %t, %gz, %gh;\nadd.u64 %t, %t, %gy;\nmul.lo.u64 %t, %t, %gw;\nadd.u64 %t, %t, %gx;\n"
}

/// Whether the type in `%ty` is a hash (sets %p).
const IS_HASH: &str = "setp.eq.u32 %p, %ty, 1;\nsetp.eq.or.u32 %p, %ty, 5, %p;\nsetp.eq.or.u32 %p, %ty, 9, %p;\nsetp.eq.or.u32 %p, %ty, 10, %p;\nsetp.eq.or.u32 %p, %ty, 1501, %p;\n";

/// `%e` = the array entry of the u32 key at %a2 (jumps to $missing past the end).
const ARRAY_ENTRY: &str = r#"call.uni (%idx), bpf_load_u32, (%a2);
ld.u32 %w, [%d+{D_MAX}];
cvt.u64.u32 %max, %w;
setp.ge.u64 %p, %idx, %max;
@%p bra $missing;
mul.lo.u64 %e, %idx, %stride;
mul.lo.u64 %e, %e, %slots;
add.u64 %e, %e, %data;
"#;

/// The check of the key pointer in [`MAP_PROLOGUE`] (the same text).
const KEY_CHECK: &str = "call.uni (%ok), bpf_range_ok, (%st, %a2, %ks, 0);\nsetp.eq.u64 %p, %ok, 0;\n@%p bra $efault;\n";
/// The check of the value pointer of `bpf_map_update_elem`.
const VALUE_CHECK: &str = "call.uni (%ok), bpf_range_ok, (%st, %a3, %vs, 0);\nsetp.eq.u64 %p, %ok, 0;\n@%p bra $efault;\n";

/// A helper's body without the given checks of pointers the verifier proved (its trusted
/// variant, see [`GpuHelper::with_trusted_args`]); each check must be there.
fn trusted(body: &str, checks: &[&str]) -> String {
    checks.iter().fold(body.to_string(), |b, c| {
        assert!(b.contains(c), "no check `{c}` to take out");
        b.replacen(c, "", 1)
    })
}

/// The check of a ring output's data (`{data}`, `{len}` bytes).
fn data_check(data: &str, len: &str) -> String {
    format!("call.uni (%ok), bpf_range_ok, (%st, {data}, {len}, 0);\nsetp.eq.u64 %p, %ok, 0;\n@%p bra $efault;\n")
}

fn map_lookup() -> String {
    fill(&format!(
        "{MAP_PROLOGUE}{IS_HASH}@%p bra $hash;\n{ARRAY_ENTRY}add.u64 %ret, %e, %sm;\nret;\n$hash:\ncall.uni (%e), bpf_hash_find, (%st, %d, %a2, 0);\nsetp.eq.u64 %p, %e, 0;\n@%p bra $missing;\nadd.u64 %e, %e, %voff;\nadd.u64 %ret, %e, %sm;\nret;\n$missing:\n$einval:\n$efault:\nmov.b64 %ret, 0;\nret;"
    ))
}

fn map_update() -> String {
    fill(&format!(
        "{MAP_PROLOGUE}{VALUE_CHECK}setp.gt.u64 %p, %a4, 2;\n@%p bra $einval;\n{IS_HASH}@%p bra $hash;\nsetp.eq.u64 %p, %a4, 1;\n@%p bra $eexist;\n{ARRAY_ENTRY}add.u64 %e, %e, %sm;\ncall.uni (%t), bpf_memcpy, (%e, %a3, %vs);\nmov.b64 %ret, 0;\nret;\n$missing:\nmov.b64 %ret, -7;\nret;\n\
$hash:\ncall.uni (%e), bpf_hash_find, (%st, %d, %a2, 0);\nsetp.ne.u64 %p, %e, 0;\n@%p bra $found;\nsetp.eq.u64 %p, %a4, 2;\n@%p bra $enoent;\n\
call.uni (%e), bpf_hash_find, (%st, %d, %a2, 1);\nsetp.ne.u64 %p, %e, 0;\n@%p bra $claimed;\n\
// No free slot on the key's probe sequence: another key's deleted entry there is reused (keys\n\
// that keep changing would fill the table with deleted entries).\n\
call.uni (%e), bpf_hash_rekey, (%st, %d, %a2, {{HASH_DELETED}});\nsetp.eq.u64 %p, %e, 0;\n@%p bra $full;\n$claimed:\n\
// A slot we claimed is BUSY; one another thread filled meanwhile is FULL (then it is an update).\n\
ld.volatile.u32 %w, [%e];\nsetp.eq.u32 %p, %w, {{HASH_BUSY}};\n@!%p bra $found;\n\
// Room for one more? Counted only now that the slot is ours: of the threads inserting one key,\n\
// one claims a slot, so a crowd inserting a few keys does not read as a full map.\n\
ld.u32 %w, [%d+{{D_MAX}}];\ncvt.u64.u32 %max, %w;\nadd.u64 %t, %d, {{D_COUNT}};\natom.global.add.u64 %cnt, [%t], 1;\nsetp.ge.u64 %p, %cnt, %max;\n@%p bra $over;\n\
add.u64 %t, %e, %voff;\nadd.u64 %t, %t, %sm;\ncall.uni (%ok), bpf_memcpy, (%t, %a3, %vs);\nmembar.gl;\nst.volatile.u32 [%e], {{HASH_FULL}};\nmov.b64 %ret, 0;\nret;\n\
$found:\nsetp.eq.u64 %p, %a4, 1;\n@%p bra $eexist;\nadd.u64 %t, %e, %voff;\nadd.u64 %t, %t, %sm;\ncall.uni (%ok), bpf_memcpy, (%t, %a3, %vs);\nmov.b64 %ret, 0;\nret;\n\
// Over the count: the slot goes back as the key's deleted entry (the key stays absent; threads\n\
// waiting on the slot read it so), and the count as it was.\n\
$over:\natom.global.add.u64 %cnt, [%t], -1;\nmembar.gl;\nst.volatile.u32 [%e], {{HASH_DELETED}};\n$full:\n\
// An LRU hash makes room: a live entry of the key's probe sequence goes (the count stays).\n\
setp.eq.u32 %p, %ty, 9;\nsetp.eq.or.u32 %p, %ty, 10, %p;\n@!%p bra $e2big;\n\
call.uni (%e), bpf_hash_evict, (%st, %d, %a2);\nsetp.eq.u64 %p, %e, 0;\n@%p bra $e2big;\n\
ld.volatile.u32 %w, [%e];\nsetp.eq.u32 %p, %w, {{HASH_BUSY}};\n@!%p bra $found;\n\
add.u64 %t, %e, %voff;\nadd.u64 %t, %t, %sm;\ncall.uni (%ok), bpf_memcpy, (%t, %a3, %vs);\nmembar.gl;\nst.volatile.u32 [%e], {{HASH_FULL}};\nmov.b64 %ret, 0;\nret;\n\
$e2big:\nmov.b64 %ret, -7;\nret;\n\
$eexist:\nmov.b64 %ret, -17;\nret;\n$enoent:\nmov.b64 %ret, -2;\nret;\n$einval:\nmov.b64 %ret, -22;\nret;\n$efault:\nmov.b64 %ret, -14;\nret;"
    ))
}

fn map_delete() -> String {
    fill(&format!(
        "{MAP_PROLOGUE}{IS_HASH}@!%p bra $einval;\ncall.uni (%e), bpf_hash_find, (%st, %d, %a2, 0);\nsetp.eq.u64 %p, %e, 0;\n@%p bra $enoent;\n\
// A deleted entry keeps its key (only that key's insert takes it back), so lookups need no locks.\n\
st.volatile.u32 [%e], 3;\nadd.u64 %t, %d, {{D_COUNT}};\natom.global.add.u64 %cnt, [%t], -1;\nmov.b64 %ret, 0;\nret;\n\
$enoent:\nmov.b64 %ret, -2;\nret;\n$missing:\n$einval:\nmov.b64 %ret, -22;\nret;\n$efault:\nmov.b64 %ret, -14;\nret;"
    ))
}

/// `bpf_ringbuf_output` / `bpf_perf_event_output` into ring `{map}`: a record (header with
/// the written bit, `{source}` and the length, then the data) reserved from the ring. A ring
/// with chunks ([`crate::maps::desc::CHUNK`]) serves the record from this SM's chunk (its
/// cursor, [`crate::maps::ArenaLayout::ring_cursors`]): the one thread whose reservation
/// passes the chunk's end takes the next chunk from the head and hands it on, the others
/// of the SM wait for it and try again, so the head sees one atomic per chunk, not one per
/// record. -ENOSPC (counted lost) once the ring is full. With `flags` (a register), anything
/// but the wake-up flags (`BPF_RB_NO_WAKEUP | BPF_RB_FORCE_WAKEUP`) is -EINVAL, as in the kernel.
fn ring_output(map: &str, data: &str, len: &str, source: &str, flags: Option<&str>) -> String {
    fill(&format!(
        ".reg .b64 %d, %ok, %lo, %data, %cap, %need, %pos, %t, %hdr, %chunk, %cur, %old, %idx, %used, %limit, %spin;\n.reg .b32 %ty, %cw;\n.reg .pred %p;\n.reg .pred %q;\n{WARP_ADD_REGS}\
call.uni (%d), bpf_map_desc, (%st, {map});\nsetp.eq.u64 %p, %d, 0;\n@%p bra $einval;\n{flags_check}\
ld.u32 %ty, [%d+{{D_TYPE}}];\nsetp.ne.u32 %p, %ty, 4;\nsetp.ne.and.u32 %p, %ty, 27, %p;\nsetp.ne.and.u32 %p, %ty, 1527, %p;\n@%p bra $einval;\n\
{check}ld.u64 %lo, [%st+{{ARENA_LO}}];\nld.u64 %data, [%d+{{D_DATA}}];\nadd.u64 %data, %data, %lo;\nld.u64 %cap, [%d+{{D_DATA_LEN}}];\n\
add.u64 %need, {len}, 15;\nand.b64 %need, %need, -8;\n\
ld.u32 %cw, [%d+{{D_CHUNK}}];\ncvt.u64.u32 %chunk, %cw;\nsetp.eq.u64 %p, %chunk, 0;\n@%p bra $direct;\nsetp.gt.u64 %p, %need, %chunk;\n@%p bra $big;\n\
// This SM's cursor, after the records.\n\
ld.u32 %ty, [%lo+{{H_NSM}}];\nmov.u32 %cw, %smid;\nrem.u32 %cw, %cw, %ty;\nmul.wide.u32 %cur, %cw, {{CURSOR_STRIDE}};\n\
add.u64 %t, %cap, {{CURSOR_STRIDE}};\nsub.u64 %t, %t, 1;\nand.b64 %t, %t, -{{CURSOR_STRIDE}};\nadd.u64 %cur, %cur, %t;\nadd.u64 %cur, %cur, %data;\n\
$retry:\n{cursor_add}shr.u64 %idx, %old, 32;\nand.b64 %used, %old, 0xffffffff;\nsetp.eq.u64 %p, %idx, 0xffffffff;\n@%p bra $sm_lost;\n\
// No chunk yet (index 0): the first thread takes one.\n\
setp.eq.u64 %q, %idx, 0;\nselp.b64 %limit, 0, %chunk, %q;\nadd.u64 %t, %used, %need;\nsetp.le.u64 %p, %t, %limit;\n@%p bra $in_chunk;\nsetp.le.u64 %p, %used, %limit;\n@%p bra $refill;\n\
mov.b64 %spin, 0;\n$wait:\nld.volatile.u64 %t, [%cur];\nshr.u64 %t, %t, 32;\nsetp.ne.u64 %p, %t, %idx;\n@%p bra $retry;\nadd.u64 %spin, %spin, 1;\nsetp.lt.u64 %p, %spin, 1000000;\n@%p bra $wait;\nbra $sm_lost;\n\
$in_chunk:\nsub.u64 %pos, %idx, 1;\nshl.b64 %pos, %pos, 3;\nadd.u64 %pos, %pos, %used;\nbra $write;\n\
$refill:\nadd.u64 %t, %d, {{D_HEAD}};\natom.global.add.u64 %pos, [%t], %chunk;\nadd.u64 %t, %pos, %chunk;\nsetp.gt.u64 %p, %t, %cap;\n@%p bra $exhausted;\n\
shr.u64 %t, %pos, 3;\nadd.u64 %t, %t, 1;\nshl.b64 %t, %t, 32;\nor.b64 %t, %t, %need;\nst.volatile.u64 [%cur], %t;\nbra $write;\n\
$exhausted:\nmov.b64 %t, 0xffffffff00000000;\nst.volatile.u64 [%cur], %t;\n\
$sm_lost:\nadd.u64 %t, %cur, 8;\nred.global.add.u64 [%t], 1;\nmov.b64 %ret, -28;\nret;\n\
// Larger than a chunk: whole chunks from the head.\n\
$big:\nrem.u64 %t, %need, %chunk;\nsub.u64 %t, %chunk, %t;\nrem.u64 %t, %t, %chunk;\nadd.u64 %limit, %need, %t;\n\
add.u64 %t, %d, {{D_HEAD}};\natom.global.add.u64 %pos, [%t], %limit;\nadd.u64 %t, %pos, %limit;\nsetp.gt.u64 %p, %t, %cap;\n@%p bra $lost;\nbra $write;\n\
$direct:\nadd.u64 %t, %d, {{D_HEAD}};\n{head_add}add.u64 %t, %pos, %need;\nsetp.gt.u64 %p, %t, %cap;\n@%p bra $lost;\n\
$write:\nadd.u64 %pos, %pos, %data;\nshl.b64 %hdr, {source}, 32;\nor.b64 %hdr, %hdr, {len};\nor.b64 %hdr, %hdr, 0x8000000000000000;\nst.u64 [%pos], %hdr;\nadd.u64 %pos, %pos, 8;\ncall.uni (%ok), bpf_memcpy, (%pos, {data}, {len});\nmov.b64 %ret, 0;\nret;\n\
$lost:\nadd.u64 %t, %d, {{D_LOST}};\nred.global.add.u64 [%t], 1;\nmov.b64 %ret, -28;\nret;\n\
$einval:\nmov.b64 %ret, -22;\nret;\n$efault:\nmov.b64 %ret, -14;\nret;",
        check = data_check(data, len),
        flags_check = flags.map_or(String::new(), |f| format!("and.b64 %t, {f}, -4;\nsetp.ne.u64 %p, %t, 0;\n@%p bra $einval;\n")),
        cursor_add = warp_fetch_add("%old", "%cur", "%need", "cursor"),
        head_add = warp_fetch_add("%pos", "%t", "%need", "head"),
    ))
}

/// The registers [`warp_fetch_add`] uses: declared once in a function that uses it.
const WARP_ADD_REGS: &str = ".reg .b32 %wf_m, %wf_l, %wf_g, %wf_r, %wf_x<4>;\n.reg .b64 %wf_a, %wf_v, %wf_o;\n.reg .pred %wf_s, %wf_p;\n";

/// `atom.global.add.u64 {dest}, [{addr}], {val}` (registers) shared by the lanes of a warp
/// that reach it together: lanes adding the same addend to the same address add once, through
/// the lowest of them, and each gets the old value it would have got had they added one after
/// another in lane order; lanes with another address or addend do the same among themselves
/// next (one round per distinct pair). Lanes that reserve space in a ring all add to one
/// cursor, and atomics on one address serialise in the L2 (cuda-facts.md): this makes one of a
/// warp's 32. `tag` names its loop's label apart from another use in the same function.
fn warp_fetch_add(dest: &str, addr: &str, val: &str, tag: &str) -> String {
    "activemask.b32 %wf_m;\n$wf_TAG:\nbrev.b32 %wf_l, %wf_m;\nclz.b32 %wf_l, %wf_l;\n\
mov.b64 {%wf_x0, %wf_x1}, ADDR;\nmov.b64 {%wf_x2, %wf_x3}, VAL;\n\
shfl.sync.idx.b32 %wf_x0, %wf_x0, %wf_l, 31, %wf_m;\nshfl.sync.idx.b32 %wf_x1, %wf_x1, %wf_l, 31, %wf_m;\n\
shfl.sync.idx.b32 %wf_x2, %wf_x2, %wf_l, 31, %wf_m;\nshfl.sync.idx.b32 %wf_x3, %wf_x3, %wf_l, 31, %wf_m;\n\
mov.b64 %wf_a, {%wf_x0, %wf_x1};\nmov.b64 %wf_v, {%wf_x2, %wf_x3};\n\
setp.eq.u64 %wf_s, %wf_a, ADDR;\nsetp.eq.and.u64 %wf_s, %wf_v, VAL, %wf_s;\nvote.sync.ballot.b32 %wf_g, %wf_s, %wf_m;\n\
mov.u32 %wf_r, %lanemask_lt;\nand.b32 %wf_r, %wf_r, %wf_g;\npopc.b32 %wf_r, %wf_r;\n\
popc.b32 %wf_x0, %wf_g;\ncvt.u64.u32 %wf_o, %wf_x0;\nmul.lo.u64 %wf_o, %wf_o, VAL;\n\
setp.eq.and.u32 %wf_p, %wf_r, 0, %wf_s;\n@%wf_p atom.global.add.u64 %wf_o, [ADDR], %wf_o;\n\
mov.b64 {%wf_x0, %wf_x1}, %wf_o;\nshfl.sync.idx.b32 %wf_x0, %wf_x0, %wf_l, 31, %wf_m;\nshfl.sync.idx.b32 %wf_x1, %wf_x1, %wf_l, 31, %wf_m;\n\
mov.b64 %wf_a, {%wf_x0, %wf_x1};\ncvt.u64.u32 %wf_v, %wf_r;\nmad.lo.u64 %wf_a, %wf_v, VAL, %wf_a;\n\
not.b32 %wf_g, %wf_g;\nand.b32 %wf_m, %wf_m, %wf_g;\n@!%wf_s bra $wf_TAG;\nmov.b64 DEST, %wf_a;\n"
        .replace("ADDR", addr)
        .replace("VAL", val)
        .replace("DEST", dest)
        .replace("TAG", tag)
}

/// `bpf_trace_printk(fmt, size, a1, a2, a3)` and bpftime's `puts(str)` (501): a
/// [`crate::maps::TraceRecord`] in the arena's trace ring (its slot in the arena header), which
/// the host formats and prints where CPU programs' `bpf_trace_printk` goes. printk returns the
/// bytes of the format kept, puts 0; both -EINVAL without a trace ring, -EFAULT for a format
/// outside the program's memory, -ENOSPC when the ring is full.
fn trace_output(puts: bool) -> String {
    let mut s = String::from(WARP_ADD_REGS);
    s.push_str(
        ".reg .b64 %lo, %ref, %d, %ok, %data, %cap, %need, %pos, %t, %hdr, %n, %sm, %zero;\n.reg .b32 %w;\n.reg .pred %p;\n\
ld.u64 %lo, [%st+{ARENA_LO}];\nsetp.eq.u64 %p, %lo, 0;\n@%p bra $einval;\nld.u32 %w, [%lo+{TRACE_SLOT}];\nsetp.eq.u32 %p, %w, 0;\n@%p bra $einval;\n\
sub.u32 %w, %w, 1;\ncvt.u64.u32 %ref, %w;\nmov.b64 %t, {MAP_TAG_HI};\nshl.b64 %t, %t, 48;\nor.b64 %ref, %ref, %t;\n\
call.uni (%d), bpf_map_desc, (%st, %ref);\nsetp.eq.u64 %p, %d, 0;\n@%p bra $einval;\n",
    );
    if puts {
        // The string's length: up to its NUL, the end of readable memory or the cap.
        s.push_str(
            "mov.b64 %n, 0;\n$scan:\nsetp.ge.u64 %p, %n, {TRACE_TEXT_MAX};\n@%p bra $scanned;\nadd.u64 %t, %a1, %n;\n\
call.uni (%ok), bpf_range_ok, (%st, %t, 1, 0);\nsetp.eq.u64 %p, %ok, 0;\n@%p bra $scanned;\n\
ld.u8 %w, [%t];\nsetp.eq.u32 %p, %w, 0;\n@%p bra $scanned;\nadd.u64 %n, %n, 1;\nbra $scan;\n$scanned:\n\
setp.ne.u64 %p, %n, 0;\n@%p bra $text;\ncall.uni (%ok), bpf_range_ok, (%st, %a1, 1, 0);\nsetp.eq.u64 %p, %ok, 0;\n@%p bra $efault;\n$text:\n",
        );
    } else {
        s.push_str("min.u64 %n, %a2, {TRACE_TEXT_MAX};\ncall.uni (%ok), bpf_range_ok, (%st, %a1, %n, 0);\nsetp.eq.u64 %p, %ok, 0;\n@%p bra $efault;\n");
    }
    // Reserve header + 40 bytes + the text, rounded to 8; write kind and length, the
    // arguments, the arena's address (for `%s` arguments in it), the text.
    s.push_str(
        "ld.u64 %data, [%d+{D_DATA}];\nadd.u64 %data, %data, %lo;\nld.u64 %cap, [%d+{D_DATA_LEN}];\n\
add.u64 %need, %n, 55;\nand.b64 %need, %need, -8;\n\
add.u64 %t, %d, {D_HEAD};\n",
    );
    s.push_str(&warp_fetch_add("%pos", "%t", "%need", "head"));
    s.push_str(
        "add.u64 %t, %pos, %need;\nsetp.gt.u64 %p, %t, %cap;\n@%p bra $lost;\n\
add.u64 %pos, %pos, %data;\nmov.u32 %w, %smid;\ncvt.u64.u32 %sm, %w;\nshl.b64 %hdr, %sm, 32;\nadd.u64 %t, %n, 40;\nor.b64 %hdr, %hdr, %t;\nor.b64 %hdr, %hdr, 0x8000000000000000;\nst.u64 [%pos], %hdr;\nst.u64 [%pos+40], %lo;\n",
    );
    if puts {
        s.push_str("mov.b64 %t, 1;\nshl.b64 %t, %t, 32;\nor.b64 %t, %t, %n;\nst.u64 [%pos+8], %t;\nmov.b64 %zero, 0;\nst.u64 [%pos+16], %zero;\nst.u64 [%pos+24], %zero;\nst.u64 [%pos+32], %zero;\n");
    } else {
        s.push_str("st.u64 [%pos+8], %n;\nst.u64 [%pos+16], %a3;\nst.u64 [%pos+24], %a4;\nst.u64 [%pos+32], %a5;\n");
    }
    s.push_str("add.u64 %pos, %pos, 48;\ncall.uni (%ok), bpf_memcpy, (%pos, %a1, %n);\n");
    s.push_str(if puts { "mov.b64 %ret, 0;\nret;\n" } else { "mov.b64 %ret, %n;\nret;\n" });
    s.push_str("$lost:\nadd.u64 %t, %d, {D_LOST};\natom.global.add.u64 %ok, [%t], 1;\nmov.b64 %ret, -28;\nret;\n$einval:\nmov.b64 %ret, -22;\nret;\n$efault:\nmov.b64 %ret, -14;\nret;");
    fill(&s)
}

/// Writes the three values %x, %y, %z through the pointers %a1-%a3 as u64s, as bpftime's GPU
/// id helpers do (its programs pass `u64 *`); a pointer to fewer than 8 writable bytes is
/// skipped.
fn write_xyz(read: &str) -> String {
    let mut s = format!(".reg .b64 %ok;\n.reg .b32 %x, %y, %z, %zero;\n.reg .pred %p;\nmov.u32 %zero, 0;\n{read}");
    for (i, r) in ["%x", "%y", "%z"].iter().enumerate() {
        let a = format!("%a{}", i + 1);
        s.push_str(&format!("call.uni (%ok), bpf_range_ok, (%st, {a}, 8, 1);\nsetp.ne.u64 %p, %ok, 0;\n"));
        for byte in 0..4 {
            s.push_str(&format!("@%p st.u8 [{a}+{byte}], {r};\nshr.b32 {r}, {r}, 8;\n"));
        }
        for byte in 4..8 {
            s.push_str(&format!("@%p st.u8 [{a}+{byte}], %zero;\n"));
        }
    }
    s.push_str("mov.b64 %ret, 0;\nret;");
    s
}

/// `bpf_get_current_comm(buf, size)`: the host process's name, as the CPU's: `buf` zeroed,
/// then up to `size - 1` bytes of the name; -EINVAL for size 0, -EFAULT for a buffer the
/// program may not write.
fn current_comm() -> String {
    // The name is read as two words (byte i of it: byte i % 8 of word i / 8), so that what the
    // helper reads of the state is plain to see (see `crate::patch`).
    format!(
        ".reg .b64 %ok, %n, %i, %dst, %c0, %c1, %x, %sh;\n.reg .b32 %w, %s;\n.reg .pred %p;\n\
setp.eq.u64 %p, %a2, 0;\n@%p bra $einval;\n\
call.uni (%ok), bpf_range_ok, (%st, %a1, %a2, 1);\nsetp.eq.u64 %p, %ok, 0;\n@%p bra $efault;\n\
mov.b64 %i, 0;\n$zero:\nsetp.ge.u64 %p, %i, %a2;\n@%p bra $copy;\nadd.u64 %dst, %a1, %i;\nst.u8 [%dst], 0;\nadd.u64 %i, %i, 1;\nbra $zero;\n\
$copy:\nld.u64 %c0, [%st+{comm}];\nld.u64 %c1, [%st+{comm_hi}];\nsub.u64 %n, %a2, 1;\nmin.u64 %n, %n, 15;\nmov.b64 %i, 0;\n\
$loop:\nsetp.ge.u64 %p, %i, %n;\n@%p bra $done;\nsetp.lt.u64 %p, %i, 8;\nselp.b64 %x, %c0, %c1, %p;\nand.b64 %sh, %i, 7;\ncvt.u32.u64 %s, %sh;\nshl.b32 %s, %s, 3;\n\
shr.u64 %x, %x, %s;\ncvt.u32.u64 %w, %x;\nand.b32 %w, %w, 255;\nsetp.eq.u32 %p, %w, 0;\n@%p bra $done;\n\
add.u64 %dst, %a1, %i;\nst.u8 [%dst], %w;\nadd.u64 %i, %i, 1;\nbra $loop;\n\
$done:\nmov.b64 %ret, 0;\nret;\n$einval:\nmov.b64 %ret, -22;\nret;\n$efault:\nmov.b64 %ret, -14;\nret;",
        comm = off::COMM,
        comm_hi = off::COMM + 8
    )
}

/// `bpf_get_prandom_u32`: a 32-bit pseudo-random number, SplitMix64 over the thread's clock,
/// the global timer and its global thread id (no state: threads and calls differ by their
/// clocks and ids).
fn prandom() -> String {
    fill(
        ".reg .b64 %x, %z, %gx, %gy, %gz, %gw, %gh, %t;\n.reg .b32 %g1, %g2;\n\
mov.u64 %x, %clock64;\nmov.u64 %z, %globaltimer;\nmad.lo.u64 %x, %x, 0x9E3779B97F4A7C15, %z;\n\
{GLOBAL_THREAD_ID}mul.lo.u64 %t, %t, 0x9E3779B97F4A7C15;\nxor.b64 %x, %x, %t;\n\
add.u64 %x, %x, 0x9E3779B97F4A7C15;\n\
shr.b64 %z, %x, 30;\nxor.b64 %x, %x, %z;\nmul.lo.u64 %x, %x, 0xBF58476D1CE4E5B9;\n\
shr.b64 %z, %x, 27;\nxor.b64 %x, %x, %z;\nmul.lo.u64 %x, %x, 0x94D049BB133111EB;\n\
shr.b64 %z, %x, 31;\nxor.b64 %x, %x, %z;\nand.b64 %ret, %x, 0xffffffff;\nret;",
    )
}

fn special(name: &str) -> String {
    format!(".reg .b32 %w;\nmov.u32 %w, {name};\ncvt.u64.u32 %ret, %w;\nret;")
}

/// `bpf_loop(n, callback, ctx, flags)`: calls the callback (a function of the program, by its
/// first slot) with (i, ctx) until it returns 1 or n calls; each call charges the function's
/// length to the loop budget, as on the CPU. Dispatches over the program's callbacks. Too many
/// iterations answer -E2BIG in 32 bits, as the CPU helper and the kernel's inlined loop do.
fn bpf_loop(prog: &Program) -> String {
    let mut s = String::from(".reg .b64 %i, %r, %fp, %bud, %cost;\n.reg .b32 %w;\n.reg .pred %p;\n");
    s.push_str("setp.ne.u64 %p, %a4, 0;\n@%p bra $einval;\nsetp.gt.u64 %p, %a1, 8388608;\n@%p bra $e2big;\n");
    s.push_str(&format!("ld.u32 %w, [%st+{}];\nsetp.ne.u32 %p, %w, 0;\n@%p bra $nested;\n", off::IN_CALLBACK));
    s.push_str("mov.b64 %i, 0;\n$loop:\nsetp.ge.u64 %p, %i, %a1;\n@%p bra $done;\n");
    let callbacks: Vec<(usize, usize, usize)> = prog.functions().iter().enumerate().filter(|(_, f)| f.callback).map(|(i, f)| (i, f.start, f.len())).collect();
    for (i, start, len) in &callbacks {
        let frames = prog.function_depth(*i).clamp(1, bpftime_vm::exec::MAX_CALL_DEPTH);
        s.push_str(&format!("setp.ne.u64 %p, %a2, {start};\n@%p bra $not{i};\nmov.b64 %cost, {len};\n"));
        // Callbacks run on the bottom frames of the stack, as on the CPU.
        s.push_str(&format!("ld.u64 %fp, [%st+{}];\nadd.u64 %fp, %fp, {};\n", off::STACK_LO, frames * bpftime_vm::exec::FRAME_SIZE));
        s.push_str(&format!(
            "ld.u64 %bud, [%st+{b}];\nsetp.lt.u64 %p, %bud, %cost;\n@%p bra $budget;\nsub.u64 %bud, %bud, %cost;\nst.u64 [%st+{b}], %bud;\n",
            b = off::BUDGET
        ));
        s.push_str(&format!(
            "st.u32 [%st+{ic}], 1;\ncall.uni (%r), {}, (%st, %fp, %i, %a3, 0, 0, 0);\nst.u32 [%st+{ic}], 0;\nbra $called;\n$not{i}:\n",
            function_name(*i),
            ic = off::IN_CALLBACK
        ));
    }
    s.push_str(&format!(
        "st.u32 [%st+{}], {STATUS_FAULT};\nst.u32 [%st+{}], -1;\nst.u32 [%st+{}], {FAULT_BAD_CALLBACK};\nst.u64 [%st+{}], %a2;\nmov.b64 %ret, 0;\nret;\n",
        off::STATUS,
        off::FAULT_INSN,
        off::FAULT_KIND,
        off::FAULT_ARG
    ));
    s.push_str(&format!(
        "$called:\nld.u32 %w, [%st+{}];\nsetp.ne.u32 %p, %w, 0;\n@%p bra $stop;\nadd.u64 %i, %i, 1;\nsetp.eq.u64 %p, %r, 1;\n@%p bra $done;\nbra $loop;\n",
        off::STATUS
    ));
    s.push_str(
        "$done:\nmov.b64 %ret, %i;\nret;\n$stop:\nmov.b64 %ret, 0;\nret;\n$einval:\nmov.b64 %ret, -22;\nret;\n$e2big:\nmov.b64 %ret, 0xfffffff9;\nret;\n",
    );
    s.push_str(&format!(
        "$budget:\nst.u32 [%st+{}], {STATUS_FAULT};\nst.u32 [%st+{}], -1;\nst.u32 [%st+{}], {};\nmov.b64 %ret, 0;\nret;\n",
        off::STATUS,
        off::FAULT_INSN,
        off::FAULT_KIND,
        crate::state::FAULT_LOOP_BUDGET
    ));
    s.push_str(&format!(
        "$nested:\nst.u32 [%st+{}], {STATUS_FAULT};\nst.u32 [%st+{}], -1;\nst.u32 [%st+{}], {FAULT_NESTED_CALLBACK};\nst.u64 [%st+{}], %a2;\nmov.b64 %ret, 0;\nret;",
        off::STATUS,
        off::FAULT_INSN,
        off::FAULT_KIND,
        off::FAULT_ARG
    ));
    s
}

/// The helpers GPU programs get.
pub fn standard() -> HelperSet {
    let timer = ".reg .b64 %t;\nmov.u64 %t, %globaltimer;\nmov.b64 %ret, %t;\nret;";
    // The host's clocks: `%globaltimer` (its CLOCK_REALTIME) plus the offset the host set.
    let host_clock = |field: u32| format!(".reg .b64 %t, %o;\nmov.u64 %t, %globaltimer;\nld.u64 %o, [%st+{field}];\nadd.u64 %ret, %t, %o;\nret;");
    let ring = ring_output("%a1", "%a2", "%a3", "0", Some("%a4"));
    // A perf buffer is a ring whose records carry the SM (the CPU, as perf output's source).
    let perf = ring_output("%a2", "%a4", "%a5", "%sm", None)
        .replace(".reg .pred %p;\n", ".reg .pred %p;\n.reg .b64 %sm;\n.reg .b32 %smw;\nmov.u32 %smw, %smid;\ncvt.u64.u32 %sm, %smw;\n");
    HelperSet::new()
        .with(GpuHelper::ptx(1, "bpf_map_lookup_elem", map_lookup()).with_trusted_args(trusted(&map_lookup(), &[KEY_CHECK]), |a| a.key))
        .with(GpuHelper::ptx(2, "bpf_map_update_elem", map_update()).with_trusted_args(trusted(&map_update(), &[KEY_CHECK, VALUE_CHECK]), |a| a.key && a.value))
        .with(GpuHelper::ptx(3, "bpf_map_delete_elem", map_delete()).with_trusted_args(trusted(&map_delete(), &[KEY_CHECK]), |a| a.key))
        .with(GpuHelper::ptx(5, "bpf_ktime_get_ns", host_clock(off::CLOCK_MONOTONIC)))
        .with(GpuHelper::ptx(6, "bpf_trace_printk", trace_output(false)))
        .with(GpuHelper::ptx(7, "bpf_get_prandom_u32", prandom()))
        .with(GpuHelper::ptx(8, "bpf_get_smp_processor_id", special("%smid")))
        .with(GpuHelper::ptx(14, "bpf_get_current_pid_tgid", format!("ld.u64 %ret, [%st+{}];\nret;", off::PID_TGID)))
        .with(GpuHelper::ptx(15, "bpf_get_current_uid_gid", format!("ld.u64 %ret, [%st+{}];\nret;", off::UID_GID)))
        .with(GpuHelper::ptx(16, "bpf_get_current_comm", current_comm()))
        .with(GpuHelper::ptx(25, "bpf_perf_event_output", perf.clone()).with_trusted_args(trusted(&perf, &[&data_check("%a4", "%a5")]), |a| a.sized(4)))
        .with(GpuHelper::ptx(125, "bpf_ktime_get_boot_ns", host_clock(off::CLOCK_BOOTTIME)))
        .with(GpuHelper::ptx(160, "bpf_ktime_get_coarse_ns", host_clock(off::CLOCK_MONOTONIC)))
        .with(GpuHelper::ptx(130, "bpf_ringbuf_output", ring.clone()).with_trusted_args(trusted(&ring, &[&data_check("%a2", "%a3")]), |a| a.sized(2)))
        .with(GpuHelper::per_program(181, "bpf_loop", bpf_loop))
        .with(GpuHelper::ptx(501, "bpftime_puts", trace_output(true)))
        .with(GpuHelper::ptx(502, "bpftime_get_globaltimer", timer))
        .with(GpuHelper::ptx(503, "bpftime_get_block_idx", write_xyz("mov.u32 %x, %ctaid.x;\nmov.u32 %y, %ctaid.y;\nmov.u32 %z, %ctaid.z;\n")))
        .with(GpuHelper::ptx(504, "bpftime_get_block_dim", write_xyz("mov.u32 %x, %ntid.x;\nmov.u32 %y, %ntid.y;\nmov.u32 %z, %ntid.z;\n")))
        .with(GpuHelper::ptx(505, "bpftime_get_thread_idx", write_xyz("mov.u32 %x, %tid.x;\nmov.u32 %y, %tid.y;\nmov.u32 %z, %tid.z;\n")))
        .with(GpuHelper::ptx(506, "bpftime_membar", "membar.sys;\nmov.b64 %ret, 0;\nret;"))
        .with(GpuHelper::ptx(
            507,
            "bpftime_exit",
            format!("st.u32 [%st+{}], {STATUS_EXIT_THREAD};\nst.u64 [%st+{}], 0;\nmov.b64 %ret, 0;\nret;", off::STATUS, off::STOP_VALUE),
        ))
        .with(GpuHelper::ptx(508, "bpftime_get_grid_dim", write_xyz("mov.u32 %x, %nctaid.x;\nmov.u32 %y, %nctaid.y;\nmov.u32 %z, %nctaid.z;\n")))
        .with(GpuHelper::ptx(509, "bpftime_get_sm_id", special("%smid")))
        .with(GpuHelper::ptx(510, "bpftime_get_warp_id", special("%warpid")))
        .with(GpuHelper::ptx(511, "bpftime_get_lane_id", special("%laneid")))
        .with_support(support())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::interp::{Launch, Machine, Module};

    /// Lanes adding 8 or 16 to one of three counters (six pairs in a warp), in two blocks of
    /// 40 threads (a full warp and 8 lanes): each lane's old value is where it would be had
    /// every add been made alone, one after another; the counters start where adding carries
    /// into the high half, and wraps.
    #[test]
    fn warp_shared_adds_give_each_lane_its_place_in_one_order() {
        let ptx = format!(
            ".version 7.0\n.target sm_75\n.address_size 64\n.visible .entry adds(.param .u64 counters, .param .u64 out)\n{{\n\
.reg .b64 %old, %addr, %val, %t, %o;\n.reg .b32 %tid, %k;\n{WARP_ADD_REGS}\
ld.param.u64 %addr, [counters];\nld.param.u64 %o, [out];\nmov.u32 %tid, %tid.x;\n\
rem.u32 %k, %tid, 3;\nmul.wide.u32 %t, %k, 8;\nadd.u64 %addr, %addr, %t;\n\
rem.u32 %k, %tid, 2;\nadd.u32 %k, %k, 1;\nmul.wide.u32 %val, %k, 8;\n{}\
mov.u32 %k, %ctaid.x;\nmad.lo.u32 %k, %k, 40, %tid;\nmul.wide.u32 %t, %k, 16;\nadd.u64 %t, %o, %t;\nst.global.u64 [%t], %old;\nst.global.u64 [%t+8], %val;\nret;\n}}\n",
            warp_fetch_add("%old", "%addr", "%val", "t")
        );
        let mut m = Machine::new(Module::parse(&ptx).unwrap());
        let starts = [(1u64 << 32) - 100, u64::MAX - 300, 5];
        let counters = m.memory.alloc(24);
        let bytes: Vec<u8> = starts.iter().flat_map(|s| s.to_le_bytes()).collect();
        m.memory.write(counters, &bytes).unwrap();
        let out = m.memory.alloc(16 * 80);
        m.launch("adds", &[counters, out], Launch::linear(2, 40, 1)).unwrap();
        let word = |b: &[u8]| u64::from_le_bytes(b.try_into().unwrap());
        let rows: Vec<(u64, u64)> = m.memory.read(out, 16 * 80).unwrap().chunks(16).map(|c| (word(&c[..8]), word(&c[8..]))).collect();
        let finals: Vec<u64> = m.memory.read(counters, 24).unwrap().chunks(8).map(word).collect();
        for (c, &start) in starts.iter().enumerate() {
            // This counter's adds, by where they landed: each starts where the last ended.
            let mut adds: Vec<(u64, u64)> =
                rows.iter().enumerate().filter(|(i, _)| (i % 40) % 3 == c).map(|(_, &(old, val))| (old.wrapping_sub(start), val)).collect();
            adds.sort();
            let mut at = 0u64;
            for &(rel, val) in &adds {
                assert_eq!(rel, at, "counter {c}: {adds:?}");
                at += val;
            }
            assert_eq!(finals[c], start.wrapping_add(at), "counter {c}");
        }
        // One add per pair per warp: at most 6 in each of the four warps, not one a lane.
        assert!(m.atoms <= 24, "{} atomics for 80 lanes", m.atoms);
    }
}
