//! The code cache: machine code for a program is compiled once and mapped, read-only and
//! executable, by every process that runs the same program on the same maps.
//!
//! An entry is a file named by a hash of its key: the code generator's identity (target, CPU
//! features, options, this build; [`code_generator_id`](crate::code_generator_id)) and the
//! verifier's inputs ([`bpftime_vm::record::inputs`]). It holds the code linked
//! position-independently ([`link`](crate::link)), the key itself (compared byte for byte, so a
//! hash collision only costs a compile) and the verification record, so a hit neither verifies
//! nor compiles: it resolves the program's maps, maps the code and fills the import table.
//!
//! File layout: the code, page-aligned from offset 0 (it is mapped straight from the file),
//! then a trailer (key, record, table symbols, function symbols), then a 16-byte footer (the
//! trailer's offset and a magic). Entries are written to a temporary file and renamed, never
//! changed afterwards.
//!
//! Trust: a hit runs the entry's code and believes its record, so only entries that nobody but
//! this user (or root) could have written are used: the directory and the file must be owned by
//! this user or root and writable by no one else. Anything else is compiled afresh.

use crate::files::Dir;
use crate::link::{link, FunctionSpan, Image};
use crate::mapping::{page_size, CodeMapping};
use crate::{code_generator_id, compile_object, JitError, JitOptions, JitProgram};
use bpftime_vm::exec::HelperTable;
use bpftime_vm::record::{self, helpers_fingerprint};
use bpftime_vm::{verify_with, Checks, LddwResolver, RawInsn, VerifyError};
use std::collections::HashMap;
use std::hash::{Hash, Hasher};
use std::io::{self, Write};
use std::os::unix::fs::{DirBuilderExt, FileExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

const FOOTER_MAGIC: &[u8; 8] = b"BPFCODE1";
/// The start of an entry made by [`CodeCache::store_blob`].
const BLOB_MAGIC: &[u8; 8] = b"BPFBLOB1";
/// The largest blob entry read or written.
const MAX_BLOB: u64 = 64 << 20;

/// A blob's key as stored: its own domain, then the caller's key (which names its own build).
fn blob_key(key: &[u8]) -> Vec<u8> {
    [b"blob\0".as_slice(), key].concat()
}
/// Entries kept: past this many, or [`MAX_BYTES`] in all, the oldest are removed (the cache
/// usually lives in memory, `/dev/shm`, and programs change).
const MAX_ENTRIES: usize = 1024;
/// Bytes of entries kept (see [`MAX_ENTRIES`]).
const MAX_BYTES: u64 = 128 << 20;
/// Age after which a temporary file is the leftover of a writer that died.
const STALE_TEMP: std::time::Duration = std::time::Duration::from_secs(60);
/// Bytes read at once from an entry's end (its trailer is usually smaller).
const TAIL_READ: u64 = 64 << 10;
/// The largest trailer read (keys hold the bytecode: 8 MiB is a million instructions).
const MAX_TRAILER: u64 = 64 << 20;
/// The symbol programs are compiled under in cache entries.
const PREFIX: &str = "bpf";

/// Why a program could not be made runnable.
#[derive(Debug, thiserror::Error)]
pub enum CacheError {
    /// The verifier rejected it.
    #[error(transparent)]
    Verify(#[from] VerifyError),
    /// It could not be compiled or its code loaded.
    #[error(transparent)]
    Jit(#[from] JitError),
}

/// How a program got its code.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// Mapped from an entry: neither verified nor compiled here.
    Hit,
    /// Verified and compiled here, and stored for the next process.
    Stored,
    /// Verified and compiled here, not stored (why).
    NotStored(String),
    /// Taken from an ahead-of-time object ([`aot`](crate::aot)): not compiled here.
    Aot,
}

impl std::fmt::Display for Outcome {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Outcome::Hit => write!(f, "hit (mapped; not verified or compiled here)"),
            Outcome::Stored => write!(f, "miss (compiled and stored)"),
            Outcome::NotStored(why) => write!(f, "miss (compiled, not stored: {why})"),
            Outcome::Aot => write!(f, "ahead-of-time code (not compiled here)"),
        }
    }
}

/// Makes the keys code is cached under (and `bpftime aot` objects are checked against).
pub struct Keys {
    opts: JitOptions,
    generator: String,
    /// The last helper table seen, with its fingerprint (tables are few and long-lived).
    helpers: Mutex<Option<(Arc<HelperTable>, Arc<Vec<u8>>)>>,
}

impl Keys {
    /// Keys for code compiled with `opts` on this host, by this build.
    pub fn new(opts: JitOptions) -> Result<Keys, JitError> {
        Ok(Keys { opts, generator: code_generator_id(opts)?, helpers: Mutex::new(None) })
    }

    fn fingerprint(&self, helpers: &Arc<HelperTable>) -> Arc<Vec<u8>> {
        let mut memo = self.helpers.lock().unwrap_or_else(|e| e.into_inner());
        match &*memo {
            Some((table, fp)) if Arc::ptr_eq(table, helpers) => fp.clone(),
            _ => {
                let fp = Arc::new(helpers_fingerprint(helpers));
                *memo = Some((helpers.clone(), fp.clone()));
                fp
            }
        }
    }

    /// The key of bytecode `raw`: the code generator's identity and the verifier's inputs.
    /// Fails where the program's map references do not resolve.
    pub fn key(&self, raw: &[RawInsn], helpers: &Arc<HelperTable>, resolver: &dyn LddwResolver, checks: Checks) -> Result<Vec<u8>, record::RecordError> {
        let inputs = record::inputs(raw, &self.fingerprint(helpers), resolver, checks)?;
        let mut key = Vec::with_capacity(self.generator.len() + 1 + inputs.len());
        key.extend_from_slice(self.generator.as_bytes());
        key.push(0);
        key.extend_from_slice(&inputs);
        Ok(key)
    }
}

/// A code cache in one directory.
pub struct CodeCache {
    dir: PathBuf,
    /// The directory, held open (see [`Dir`]).
    handle: Dir,
    keys: Keys,
}

impl std::fmt::Debug for CodeCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CodeCache").field("dir", &self.dir).finish()
    }
}

/// Whether `meta` belongs to this user or root and no one else can write it.
fn trusted(meta: &std::fs::Metadata) -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    let me = unsafe { libc::geteuid() };
    (meta.uid() == me || meta.uid() == 0) && meta.mode() & 0o022 == 0
}

fn io_err(e: impl std::fmt::Display) -> JitError {
    JitError::Load(e.to_string())
}

/// A 128-bit hash of `bytes`, as 32 hex digits (a file name, not a proof: keys are compared).
fn hex_hash(bytes: &[u8]) -> String {
    let mut out = String::new();
    for seed in [0x6270_6674_696d_6531u64, 0x636f_6465_6361_6368] {
        let mut h = std::collections::hash_map::DefaultHasher::new();
        seed.hash(&mut h);
        bytes.hash(&mut h);
        out.push_str(&format!("{:016x}", h.finish()));
    }
    out
}

/// An entry's trailer, parsed.
struct Trailer {
    key: Vec<u8>,
    record: Vec<u8>,
    /// The symbol the program's code was compiled under.
    prefix: String,
    table_offset: usize,
    image: Image,
}

fn put(out: &mut Vec<u8>, bytes: &[u8]) {
    out.extend_from_slice(&(bytes.len() as u64).to_le_bytes());
    out.extend_from_slice(bytes);
}

struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn u64(&mut self) -> Option<u64> {
        let (head, rest) = self.0.split_first_chunk::<8>()?;
        self.0 = rest;
        Some(u64::from_le_bytes(*head))
    }

    fn bytes(&mut self) -> Option<&'a [u8]> {
        let n = usize::try_from(self.u64()?).ok()?;
        let (head, rest) = (self.0.get(..n)?, self.0.get(n..)?);
        self.0 = rest;
        Some(head)
    }

    fn string(&mut self) -> Option<String> {
        String::from_utf8(self.bytes()?.to_vec()).ok()
    }
}

fn encode_trailer(key: &[u8], record: &[u8], prefix: &str, image: &Image) -> Vec<u8> {
    let mut out = Vec::new();
    put(&mut out, key);
    put(&mut out, record);
    put(&mut out, prefix.as_bytes());
    out.extend_from_slice(&(image.code.len() as u64).to_le_bytes());
    out.extend_from_slice(&(image.table.len() as u64).to_le_bytes());
    for name in &image.table {
        put(&mut out, name.as_bytes());
    }
    let mut functions: Vec<_> = image.functions.iter().collect();
    functions.sort();
    out.extend_from_slice(&(functions.len() as u64).to_le_bytes());
    for (name, f) in functions {
        put(&mut out, name.as_bytes());
        out.extend_from_slice(&(f.at as u64).to_le_bytes());
        out.extend_from_slice(&(f.size as u64).to_le_bytes());
    }
    out
}

fn decode_trailer(bytes: &[u8], table_offset: usize) -> Option<Trailer> {
    let mut r = Reader(bytes);
    let key = r.bytes()?.to_vec();
    let record = r.bytes()?.to_vec();
    let prefix = r.string()?;
    let code_len = usize::try_from(r.u64()?).ok()?;
    let table = (0..r.u64()?).map(|_| r.string()).collect::<Option<Vec<_>>>()?;
    let mut functions = HashMap::new();
    for _ in 0..r.u64()? {
        let name = r.string()?;
        let at = usize::try_from(r.u64()?).ok().filter(|&at| at < code_len)?;
        let size = usize::try_from(r.u64()?).ok().filter(|&n| n <= code_len - at)?;
        functions.insert(name, FunctionSpan { at, size });
    }
    (code_len <= table_offset).then_some(Trailer { key, record, prefix, table_offset, image: Image { code: Vec::new(), table_offset, table, functions } })
}

impl CodeCache {
    /// The cache in directory `dir`, made (mode 0755) if missing. Fails if it cannot be made
    /// or is not trusted (a link, owned by someone else, or writable by others).
    pub fn open(dir: &Path, opts: JitOptions) -> Result<CodeCache, JitError> {
        match std::fs::DirBuilder::new().mode(0o755).create(dir) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
            Err(e) => return Err(io_err(format!("{}: {e}", dir.display()))),
        }
        // Not followed if a link: whoever made the link (in /dev/shm, anyone) would choose
        // where we read code from and write files to. Held open from now on.
        let untrusted = || io_err(format!("{}: not a directory owned by this user or root and writable only by its owner", dir.display()));
        let (handle, meta) =
            Dir::open(dir).map_err(|e| if e.raw_os_error() == Some(libc::ELOOP) { untrusted() } else { io_err(format!("{}: {e}", dir.display())) })?;
        if !meta.is_dir() || !trusted(&meta) {
            return Err(untrusted());
        }
        Ok(CodeCache { dir: dir.to_path_buf(), handle, keys: Keys::new(opts)? })
    }

    /// The directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The keys entries are stored under.
    pub fn keys(&self) -> &Keys {
        &self.keys
    }

    /// The runnable program for bytecode `raw` (map references resolved by `resolver`): from
    /// the cache when an entry for exactly these inputs exists, else verified, compiled and
    /// stored. A rejected program gets the verifier's error, as [`verify_with`] gives it; code
    /// that cannot go through the cache is compiled in this process as the JIT does.
    pub fn program(
        &self,
        raw: &[RawInsn],
        helpers: &Arc<HelperTable>,
        resolver: &dyn LddwResolver,
        checks: Checks,
    ) -> Result<(JitProgram, Outcome), CacheError> {
        let Ok(key) = self.keys.key(raw, helpers, resolver, checks) else {
            // The verifier says why, with its own words.
            let program = verify_with(raw, helpers.clone(), resolver, checks)?;
            return Ok((JitProgram::compile_with(Arc::new(program), self.keys.opts)?, Outcome::NotStored("unresolved inputs".into())));
        };
        let name = hex_hash(&key);
        let why_missed = match self.load(&name, &key, raw, helpers, resolver) {
            Ok(jit) => return Ok((jit, Outcome::Hit)),
            Err(e) => e,
        };
        let program = Arc::new(verify_with(raw, helpers.clone(), resolver, checks)?);
        let cached = compile_object(&[(PREFIX, &program)], self.keys.opts).and_then(|object| link(&object)).and_then(|image| {
            let stored = self.store(&name, &key, &program.record(), PREFIX, &image);
            Ok((image.load(program.clone(), PREFIX)?, stored))
        });
        Ok(match cached {
            Ok((jit, Ok(()))) => (jit, Outcome::Stored),
            Ok((jit, Err(e))) => (jit, Outcome::NotStored(format!("{why_missed}; storing: {e}"))),
            Err(e) => (JitProgram::compile_with(program, self.keys.opts)?, Outcome::NotStored(format!("{why_missed}; {e}"))),
        })
    }

    /// Maps entry `name` if it is trusted and made for exactly `key`.
    fn load(&self, name: &str, key: &[u8], raw: &[RawInsn], helpers: &Arc<HelperTable>, resolver: &dyn LddwResolver) -> Result<JitProgram, JitError> {
        let file = self.handle.open_entry(name).map_err(io_err)?;
        let meta = file.metadata().map_err(io_err)?;
        if !meta.is_file() || !trusted(&meta) {
            return Err(io_err(format!("{name}: not trusted (owner or mode)")));
        }
        let len = meta.len();
        let malformed = || io_err(format!("{name}: malformed entry"));
        // One read of the file's end usually holds the footer and the whole trailer.
        let tail_start = len.saturating_sub(TAIL_READ);
        let mut tail = vec![0u8; (len - tail_start) as usize];
        file.read_exact_at(&mut tail, tail_start).map_err(io_err)?;
        let footer = tail.len().checked_sub(16).map(|at| &tail[at..]).ok_or_else(malformed)?;
        if &footer[8..] != FOOTER_MAGIC {
            return Err(malformed());
        }
        let table_offset = u64::from_le_bytes(footer[..8].try_into().expect("8 bytes"));
        let trailer_len = table_offset.checked_add(16).and_then(|end| len.checked_sub(end)).filter(|&n| n <= MAX_TRAILER).ok_or_else(malformed)?;
        let bytes = if table_offset >= tail_start {
            tail[(table_offset - tail_start) as usize..tail.len() - 16].to_vec()
        } else {
            let mut bytes = vec![0u8; trailer_len as usize];
            file.read_exact_at(&mut bytes, table_offset).map_err(io_err)?;
            bytes
        };
        let trailer = decode_trailer(&bytes, table_offset as usize).ok_or_else(malformed)?;
        if trailer.key != key {
            return Err(io_err("an entry for other inputs has the same name"));
        }
        let program = Arc::new(record::restore(raw, helpers.clone(), resolver, &trailer.record).map_err(io_err)?);
        let values = trailer.image.table_values(&program, &trailer.prefix)?;
        let mapping = crate::mapping::shared(name, &values, || match CodeMapping::from_file(&file, trailer.table_offset, &values) {
            // A file system mounted noexec: copy the code instead (still neither verified
            // nor compiled here).
            Err(e) if matches!(e.raw_os_error(), Some(libc::EPERM | libc::EACCES)) => {
                let mut code = vec![0u8; trailer.table_offset];
                file.read_exact_at(&mut code, 0)?;
                CodeMapping::from_bytes(&code, trailer.table_offset, &values)
            }
            r => r,
        })
        .map_err(io_err)?;
        trailer.image.finish(program, &trailer.prefix, mapping)
    }

    /// Stores code compiled elsewhere (an [`aot`](crate::aot) object's): `image` holds the
    /// program under symbol `prefix`, compiled for `key` with verification record `record`.
    pub fn install(&self, key: &[u8], record: &[u8], prefix: &str, image: &Image) -> Result<(), JitError> {
        self.store(&hex_hash(key), key, record, prefix, image)
    }

    /// Writes entry `name` (to a temporary file renamed into place: readers see all or
    /// nothing, on disk too: the file is synced first).
    fn store(&self, name: &str, key: &[u8], record: &[u8], prefix: &str, image: &Image) -> Result<(), JitError> {
        if !image.table_offset.is_multiple_of(page_size()) {
            return Err(io_err("code not page-aligned"));
        }
        self.write_entry(name, |file| {
            let mut code = image.code.clone();
            code.resize(image.table_offset, 0xcc);
            file.write_all(&code)?;
            file.write_all(&encode_trailer(key, record, prefix, image))?;
            file.write_all(&(image.table_offset as u64).to_le_bytes())?;
            file.write_all(FOOTER_MAGIC)
        })
        .map_err(io_err)
    }

    /// Writes entry `name` with `write` into a temporary file, synced, then renamed into place
    /// (readers see all or nothing), and prunes the cache.
    fn write_entry(&self, name: &str, write: impl FnOnce(&mut std::fs::File) -> io::Result<()>) -> io::Result<()> {
        let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.subsec_nanos()).unwrap_or(0);
        let tmp = format!(".{name}.{}.{nanos}", std::process::id());
        let mut file = self.handle.create_new(&tmp, 0o644)?;
        let result = write(&mut file).and_then(|()| file.sync_all()).and_then(|()| self.handle.rename(&tmp, name));
        if result.is_err() {
            let _ = self.handle.remove(&tmp);
        }
        result?;
        self.prune();
        Ok(())
    }

    /// Bytes of another kind kept under `key` by [`CodeCache::store_blob`] (another layer's
    /// analysis of a file, say), with the trust rules of code: None unless the entry is this
    /// user's or root's, writable by no one else, and made for exactly `key`.
    pub fn load_blob(&self, key: &[u8]) -> Option<Vec<u8>> {
        let key = blob_key(key);
        let file = self.handle.open_entry(&hex_hash(&key)).ok()?;
        let meta = file.metadata().ok()?;
        if !meta.is_file() || !trusted(&meta) || meta.len() > MAX_BLOB {
            return None;
        }
        let mut bytes = Vec::with_capacity(meta.len() as usize);
        std::io::Read::read_to_end(&mut &file, &mut bytes).ok()?;
        let mut r = Reader(bytes.strip_prefix(BLOB_MAGIC)?);
        (r.bytes()? == key).then(|| r.bytes().map(<[u8]>::to_vec))?
    }

    /// Keeps `data` under `key` for [`CodeCache::load_blob`] (best effort: a failure only
    /// means it is made again).
    pub fn store_blob(&self, key: &[u8], data: &[u8]) {
        let key = blob_key(key);
        if data.len() as u64 + key.len() as u64 + 32 > MAX_BLOB {
            return;
        }
        let mut bytes = BLOB_MAGIC.to_vec();
        put(&mut bytes, &key);
        put(&mut bytes, data);
        let _ = self.write_entry(&hex_hash(&key), |file| file.write_all(&bytes));
    }

    /// Removes the oldest entries beyond [`MAX_ENTRIES`] or [`MAX_BYTES`], and temporary files
    /// left by writers that died. A process that maps a removed entry keeps its mapping.
    fn prune(&self) {
        let Ok(all) = self.handle.entries() else { return };
        let now = std::time::SystemTime::now();
        let age = |m: &std::fs::Metadata| m.modified().ok().and_then(|t| now.duration_since(t).ok()).unwrap_or_default();
        let mut entries = vec![];
        // Only files of ours: entries (32 hex digits) and temporary files (`.ENTRY.PID.NANOS`);
        // whatever else a misconfigured directory holds is never touched.
        let is_entry = |n: &str| n.len() == 32 && n.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b));
        let is_temp = |n: &str| n.strip_prefix('.').and_then(|r| r.split_once('.')).is_some_and(|(e, rest)| is_entry(e) && rest.split('.').count() == 2);
        for (name, meta) in all.into_iter().filter(|(n, m)| m.is_file() && (is_entry(n) || is_temp(n))) {
            if name.starts_with('.') {
                if age(&meta) > STALE_TEMP {
                    let _ = self.handle.remove(&name);
                }
            } else {
                entries.push((age(&meta), meta.len(), name));
            }
        }
        // Newest first: keep a prefix within both limits.
        entries.sort();
        let mut bytes = 0;
        for (i, (_, len, name)) in entries.iter().enumerate() {
            bytes += len;
            if i >= MAX_ENTRIES || bytes > MAX_BYTES {
                let _ = self.handle.remove(name);
            }
        }
    }
}
