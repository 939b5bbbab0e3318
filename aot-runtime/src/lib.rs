//! # libbpftime_aot.a: eBPF programs compiled ahead of time, in a C program
//!
//! `bpftime aot compile OBJ -o OUT.o` writes a relocatable object holding the machine code of
//! `OBJ`'s programs (see [`bpftime_jit::aot`]). Linked into a C program with this library, the
//! C API of `include/bpftime_aot.h` loads the object's maps and runs its programs: the code the
//! system linker placed, where its key says it was compiled for this build, CPU and maps; the
//! interpreter otherwise. Nothing is compiled at run time.

/// `eprintln!` that never panics: std's panics when stderr cannot be written (a closed pipe in
/// a process that ignores SIGPIPE gives EPIPE), which inside someone else's process would end
/// our work half done or, across `extern "C"`, abort the process. A message that cannot be
/// written is dropped. (Defined before the modules, so that it is the `eprintln!` they use.)
macro_rules! eprintln {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        let _ = writeln!(std::io::stderr(), $($arg)*);
    }};
}

mod linked;

use bpftime_maps::Map;
use bpftime_object::Object;
use bpftime_runtime::{EngineKind, LoadedProgram, Runtime};
use bpftime_shm::ShmRegion;
use bpftime_vm::exec::Context;
use std::collections::HashMap;
use std::ffi::{c_char, c_int, CStr};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::Arc;

/// Bytes of a private region.
const PRIVATE_REGION: u64 = 64 << 20;

/// What `bpftime_aot_open` returns.
pub struct Aot {
    runtime: Runtime,
    programs: HashMap<String, Arc<LoadedProgram>>,
    /// Programs running in the interpreter, and why.
    interpreted: HashMap<String, String>,
    maps: HashMap<String, Map>,
    /// Held while this handle's programs run the linked code (released last, on close).
    _claim: Option<linked::CodeClaim>,
}

impl Aot {
    fn open(shm_name: Option<&str>) -> Result<Aot, String> {
        let region = match shm_name {
            Some(name) => ShmRegion::open_or_create(name, PRIVATE_REGION),
            None => ShmRegion::anonymous(PRIVATE_REGION),
        }
        .map_err(|e| format!("region: {e}"))?;
        let mut runtime = Runtime::new(Arc::new(region), EngineKind::Interp);
        if let Ok(checks) = std::env::var("BPFTIME_CHECKS") {
            runtime.set_checks(checks.parse().map_err(|e| format!("BPFTIME_CHECKS={e}"))?);
        }
        let object = Object::parse(linked::bpf_object()).map_err(|e| format!("the linked eBPF object: {e}"))?;
        let loaded = runtime.load_object(&object).map_err(|e| e.to_string())?;
        let linked = linked::programs().map_err(|e| e.to_string())?;
        let entries: Vec<_> = linked.values().map(|l| l.entry.clone()).collect();
        // The linked code has one set of slots: one handle at a time runs it.
        let claim = linked::CodeClaim::take();
        let mut interpreted: HashMap<String, String> = match &claim {
            Some(claim) => runtime.use_linked_aot(&entries, &loaded.programs, |entry, program| linked[&entry.name].bind(program, claim)).into_iter().collect(),
            None => loaded.programs.iter().map(|p| (p.0.clone(), "another open handle runs the compiled code".to_string())).collect(),
        };
        let mut programs = HashMap::new();
        for (name, _, id) in &loaded.programs {
            let program = runtime.program(*id).map_err(|e| e.to_string())?;
            programs.insert(name.clone(), program);
        }
        for (name, _, why) in loaded.refused {
            interpreted.remove(&name);
            eprintln!("bpftime_aot: program `{name}` is not loaded: {why}");
        }
        let maps = loaded.maps.into_iter().map(|m| (m.name().to_string(), m)).collect();
        Ok(Aot { runtime, programs, interpreted, maps, _claim: claim })
    }

    fn run(&self, program: &str, ctx: &mut [u8]) -> Result<u64, c_int> {
        let p = self.programs.get(program).ok_or(-libc::ENOENT)?;
        self.runtime.run(p, Context::Mem(ctx), 0, 0, false).map_err(|_| -libc::EFAULT)
    }

    fn map(&self, name: &str) -> Result<&Map, c_int> {
        self.maps.get(name).ok_or(-libc::ENOENT)
    }
}

/// Runs `f`, turning a panic into `fallback` (no unwinding into C).
fn guard<T>(fallback: T, f: impl FnOnce() -> T) -> T {
    catch_unwind(AssertUnwindSafe(f)).unwrap_or(fallback)
}

/// Writes `msg` NUL-terminated into the `len` bytes at `buf` (cut to fit), when not NULL.
///
/// # Safety
/// `buf` is NULL or valid for writes of `len` bytes.
unsafe fn write_message(buf: *mut c_char, len: usize, msg: &str) {
    if buf.is_null() || len == 0 {
        return;
    }
    let n = msg.len().min(len - 1);
    // SAFETY: per the contract, `len` writable bytes; we write `n + 1 <= len`.
    unsafe {
        std::ptr::copy_nonoverlapping(msg.as_ptr() as *const c_char, buf, n);
        buf.add(n).write(0);
    }
}

/// The string at `s`, if it is a non-NULL UTF-8 C string.
///
/// # Safety
/// `s` is NULL or a NUL-terminated string that outlives the call.
unsafe fn text<'a>(s: *const c_char) -> Option<&'a str> {
    // SAFETY: per the contract.
    (!s.is_null()).then(|| unsafe { CStr::from_ptr(s) }.to_str().ok()).flatten()
}

/// See `bpftime_aot.h`.
///
/// # Safety
/// `shm_name` is NULL or a C string; `err` is NULL or valid for writes of `err_len` bytes.
#[no_mangle]
pub unsafe extern "C" fn bpftime_aot_open(shm_name: *const c_char, err: *mut c_char, err_len: usize) -> *mut Aot {
    let result = guard(Err("internal error (a panic)".to_string()), || {
        // SAFETY: per this function's contract.
        let name = if shm_name.is_null() { None } else { Some(unsafe { text(shm_name) }.ok_or("the region name is not UTF-8")?) };
        Aot::open(name)
    });
    match result {
        Ok(aot) => Box::into_raw(Box::new(aot)),
        Err(msg) => {
            // SAFETY: per this function's contract.
            unsafe { write_message(err, err_len, &msg) };
            std::ptr::null_mut()
        }
    }
}

/// See `bpftime_aot.h`.
///
/// # Safety
/// `aot` is NULL or from `bpftime_aot_open` and not closed; `program` a C string; `ctx` valid
/// for reads and writes of `ctx_len` bytes (or NULL with 0); `r0` NULL or writable.
#[no_mangle]
pub unsafe extern "C" fn bpftime_aot_run(aot: *const Aot, program: *const c_char, ctx: *mut u8, ctx_len: usize, r0: *mut u64) -> c_int {
    guard(-libc::EFAULT, || {
        // SAFETY: per this function's contract.
        let (Some(aot), Some(program), false) = (unsafe { aot.as_ref() }, unsafe { text(program) }, r0.is_null()) else { return -libc::EINVAL };
        let ctx: &mut [u8] = match (ctx.is_null(), ctx_len) {
            (true, 0) => &mut [],
            (true, _) => return -libc::EINVAL,
            // SAFETY: per the contract, `ctx_len` bytes the caller lends us for the run.
            (false, _) => unsafe { std::slice::from_raw_parts_mut(ctx, ctx_len) },
        };
        match aot.run(program, ctx) {
            Ok(v) => {
                // SAFETY: checked non-NULL; writable per the contract.
                unsafe { r0.write(v) };
                0
            }
            Err(e) => e,
        }
    })
}

/// See `bpftime_aot.h`.
///
/// # Safety
/// As for `bpftime_aot_run`; `why` NULL or valid for writes of `why_len` bytes.
#[no_mangle]
pub unsafe extern "C" fn bpftime_aot_native(aot: *const Aot, program: *const c_char, why: *mut c_char, why_len: usize) -> c_int {
    guard(-libc::EFAULT, || {
        // SAFETY: per this function's contract.
        let (Some(aot), Some(program)) = (unsafe { aot.as_ref() }, unsafe { text(program) }) else { return -libc::EINVAL };
        if !aot.programs.contains_key(program) {
            return -libc::ENOENT;
        }
        match aot.interpreted.get(program) {
            Some(reason) => {
                // SAFETY: per this function's contract.
                unsafe { write_message(why, why_len, reason) };
                0
            }
            None => 1,
        }
    })
}

/// The map a map call names, its key, and its value's size as bpf(2) callers see it.
///
/// # Safety
/// As for `bpftime_aot_map_lookup`: `aot` NULL or open, `map` a C string, `key` NULL or
/// readable for the map's key size.
unsafe fn map_call<'a>(aot: *const Aot, map: *const c_char, key: *const u8, value_is_null: bool) -> Result<(&'a Map, &'a [u8], usize), c_int> {
    // SAFETY: per this function's contract.
    let (Some(aot), Some(name)) = (unsafe { aot.as_ref() }, unsafe { text(map) }) else { return Err(-libc::EINVAL) };
    let map = aot.map(name)?;
    let key_size = map.spec().key_size as usize;
    // Queues, stacks and bloom filters have no key: NULL is fine there, as for bpf(2).
    if (key.is_null() && key_size > 0) || value_is_null {
        return Err(-libc::EINVAL);
    }
    let key: &[u8] = if key_size == 0 {
        &[]
    } else {
        // SAFETY: per the contract, the map's key size.
        unsafe { std::slice::from_raw_parts(key, key_size) }
    };
    Ok((map, key, map.syscall_value_size()))
}

/// See `bpftime_aot.h`.
///
/// # Safety
/// As for `bpftime_aot_run`; `key` readable for the map's key size, `value` writable for its
/// value size (per-CPU: one 8-aligned value per possible CPU).
#[no_mangle]
pub unsafe extern "C" fn bpftime_aot_map_lookup(aot: *const Aot, map: *const c_char, key: *const u8, value: *mut u8) -> c_int {
    guard(-libc::EFAULT, || {
        // SAFETY: per this function's contract.
        let (map, key, value_size) = match unsafe { map_call(aot, map, key, value.is_null()) } {
            Ok(call) => call,
            Err(e) => return e,
        };
        // SAFETY: per the contract, writable for the value size.
        let value = unsafe { std::slice::from_raw_parts_mut(value, value_size) };
        map.lookup(key, value).map_or_else(|e| -e.0, |()| 0)
    })
}

/// See `bpftime_aot.h`.
///
/// # Safety
/// As for `bpftime_aot_map_lookup`, with `value` readable.
#[no_mangle]
pub unsafe extern "C" fn bpftime_aot_map_update(aot: *const Aot, map: *const c_char, key: *const u8, value: *const u8, flags: u64) -> c_int {
    guard(-libc::EFAULT, || {
        // SAFETY: per this function's contract.
        let (map, key, value_size) = match unsafe { map_call(aot, map, key, value.is_null()) } {
            Ok(call) => call,
            Err(e) => return e,
        };
        // SAFETY: per the contract, readable for the value size.
        let value = unsafe { std::slice::from_raw_parts(value, value_size) };
        map.update(key, value, flags).map_or_else(|e| -e.0, |()| 0)
    })
}

/// See `bpftime_aot.h`.
///
/// # Safety
/// `aot` is NULL or open; `map` a C string.
#[no_mangle]
pub unsafe extern "C" fn bpftime_aot_map_value_size(aot: *const Aot, map: *const c_char) -> i64 {
    guard(-libc::EFAULT as i64, || {
        // SAFETY: per this function's contract.
        let (Some(aot), Some(name)) = (unsafe { aot.as_ref() }, unsafe { text(map) }) else { return -libc::EINVAL as i64 };
        aot.map(name).map_or_else(|e| e as i64, |m| m.syscall_value_size() as i64)
    })
}

/// See `bpftime_aot.h`.
///
/// # Safety
/// `aot` is NULL or from `bpftime_aot_open`, not closed, and no other call on it is running.
#[no_mangle]
pub unsafe extern "C" fn bpftime_aot_close(aot: *mut Aot) {
    if !aot.is_null() {
        // SAFETY: per the contract, ours (Box::into_raw) and no longer used by anyone.
        guard((), || drop(unsafe { Box::from_raw(aot) }));
    }
}
