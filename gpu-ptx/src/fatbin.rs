//! CUDA fat binaries: the device code nvcc embeds in an application. Finds them in a file (or
//! behind a `__cudaFatBinaryWrapper`), lists their entries (PTX or ELF/cubin, target arch, PTX
//! version, compression), decompresses payloads (zstd from nvcc 13, LZ4 from older toolkits,
//! or plain), and lists the kernels of a PTX payload. Layout as measured in
//! `cuda-facts.md`; every offset is checked, a malformed fatbin is an error, never a panic.

use std::io::Read;

/// First word of a fatbin.
pub const FATBIN_MAGIC: u32 = 0xba55_ed50;
/// First word of a `__cudaFatBinaryWrapper` (magic, version, pointer to the fatbin).
pub const WRAPPER_MAGIC: u32 = 0x4662_43b1;
/// Entry flag: the payload is LZ4-compressed.
pub const FLAG_LZ4: u64 = 0x2000;
/// Entry flag: the payload is zstd-compressed.
pub const FLAG_ZSTD: u64 = 0x8000;
/// Most bytes a payload may decompress to.
const MAX_PAYLOAD: u64 = 1 << 30;

/// Why a fatbin could not be read.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("fatbin at {offset:#x}: {reason}")]
pub struct FatbinError {
    /// Offset of the fatbin (in the bytes given).
    pub offset: usize,
    /// What is wrong.
    pub reason: String,
}

/// What an entry holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EntryKind {
    /// PTX text.
    Ptx,
    /// A cubin (SASS for one architecture).
    Elf,
    /// Something else (the raw kind).
    Other(u16),
}

/// How a payload is stored.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Compression {
    /// As is.
    None,
    /// zstd (nvcc 13 by default).
    Zstd,
    /// LZ4 (older toolkits).
    Lz4,
}

impl Compression {
    /// Its name.
    pub fn name(self) -> &'static str {
        match self {
            Compression::None => "none",
            Compression::Zstd => "zstd",
            Compression::Lz4 => "lz4",
        }
    }
}

/// One entry of a fatbin.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FatbinEntry {
    /// What it holds.
    pub kind: EntryKind,
    /// Target architecture (75 for sm_75 / compute_75).
    pub arch: u32,
    /// Code version (major, minor): the PTX ISA version for PTX entries.
    pub version: (u16, u16),
    /// Raw flags.
    pub flags: u64,
    /// How the payload is stored.
    pub compression: Compression,
    /// Where the stored payload lies in the fatbin's bytes.
    pub payload: std::ops::Range<usize>,
    /// Size after decompression (0 when stored as is).
    pub uncompressed_size: u64,
}

/// A fatbin found in some bytes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Fatbin {
    /// Where it starts in the bytes it was found in.
    pub offset: usize,
    /// Its length (header included).
    pub len: usize,
    /// Its entries.
    pub entries: Vec<FatbinEntry>,
}

fn u16_at(b: &[u8], o: usize) -> Option<u16> {
    Some(u16::from_le_bytes(b.get(o..o + 2)?.try_into().ok()?))
}

fn u32_at(b: &[u8], o: usize) -> Option<u32> {
    Some(u32::from_le_bytes(b.get(o..o + 4)?.try_into().ok()?))
}

fn u64_at(b: &[u8], o: usize) -> Option<u64> {
    Some(u64::from_le_bytes(b.get(o..o + 8)?.try_into().ok()?))
}

/// Parses the fatbin starting at `bytes[0]` (reported at `offset`).
pub fn parse(bytes: &[u8], offset: usize) -> Result<Fatbin, FatbinError> {
    let bad = |reason: String| FatbinError { offset, reason };
    if u32_at(bytes, 0) != Some(FATBIN_MAGIC) {
        return Err(bad("no fatbin magic".into()));
    }
    let header = u16_at(bytes, 6).ok_or_else(|| bad("truncated header".into()))? as usize;
    let size = u64_at(bytes, 8).ok_or_else(|| bad("truncated header".into()))?;
    let end = (header as u64)
        .checked_add(size)
        .filter(|&e| e <= bytes.len() as u64)
        .ok_or_else(|| bad(format!("says {size} bytes of entries, {} are there", bytes.len().saturating_sub(header))))? as usize;
    let mut entries = vec![];
    let mut at = header;
    while at < end {
        let e = |what: &str| bad(format!("entry at {:#x}: {what}", at));
        let kind = u16_at(bytes, at).ok_or_else(|| e("truncated"))?;
        let ehdr = u32_at(bytes, at + 4).ok_or_else(|| e("truncated"))? as usize;
        let padded = u64_at(bytes, at + 8).ok_or_else(|| e("truncated"))?;
        let stored = u32_at(bytes, at + 0x10).ok_or_else(|| e("truncated"))? as u64;
        let (minor, major) = (u16_at(bytes, at + 0x18).ok_or_else(|| e("truncated"))?, u16_at(bytes, at + 0x1a).ok_or_else(|| e("truncated"))?);
        let arch = u32_at(bytes, at + 0x1c).ok_or_else(|| e("truncated"))?;
        let flags = u64_at(bytes, at + 0x28).ok_or_else(|| e("truncated"))?;
        let uncompressed = u64_at(bytes, at + 0x38).unwrap_or(0);
        if ehdr < 0x40 {
            return Err(e(&format!("header size {ehdr}")));
        }
        let start = at.checked_add(ehdr).ok_or_else(|| e("overflow"))?;
        let next =
            (start as u64).checked_add(padded).filter(|&n| n <= end as u64).ok_or_else(|| e(&format!("payload of {padded} bytes runs past the fatbin")))?
                as usize;
        let compression = if flags & FLAG_ZSTD != 0 {
            Compression::Zstd
        } else if flags & FLAG_LZ4 != 0 {
            Compression::Lz4
        } else {
            Compression::None
        };
        let stored_len = if compression == Compression::None || stored == 0 { padded } else { stored.min(padded) };
        entries.push(FatbinEntry {
            kind: match kind {
                1 => EntryKind::Ptx,
                2 => EntryKind::Elf,
                k => EntryKind::Other(k),
            },
            arch,
            version: (major, minor),
            flags,
            compression,
            payload: start..start + stored_len as usize,
            uncompressed_size: uncompressed,
        });
        at = next;
    }
    Ok(Fatbin { offset, len: end, entries })
}

/// Every fatbin in `bytes` (an executable, a library, an object): wherever the magic starts a
/// fatbin that parses, at 8-byte alignment as nvcc places them.
pub fn find_all(bytes: &[u8]) -> Vec<Result<Fatbin, FatbinError>> {
    let mut out = vec![];
    let mut at = 0;
    while at + 16 <= bytes.len() {
        if u32_at(bytes, at) == Some(FATBIN_MAGIC) {
            let r = parse(&bytes[at..], at);
            let skip = r.as_ref().map(|f| f.len.max(16)).unwrap_or(8);
            out.push(r);
            at += skip.div_ceil(8) * 8;
        } else {
            at += 8;
        }
    }
    out
}

impl FatbinEntry {
    /// The payload, decompressed (PTX without its trailing NUL padding).
    pub fn contents(&self, fatbin: &[u8]) -> Result<Vec<u8>, String> {
        let stored = fatbin.get(self.payload.clone()).ok_or("payload outside the fatbin")?;
        let mut out = match self.compression {
            Compression::None => stored.to_vec(),
            Compression::Zstd => {
                let mut d = ruzstd::decoding::StreamingDecoder::new(stored).map_err(|e| format!("zstd: {e}"))?;
                let mut v = Vec::with_capacity(self.uncompressed_size.min(MAX_PAYLOAD) as usize);
                d.by_ref().take(MAX_PAYLOAD).read_to_end(&mut v).map_err(|e| format!("zstd: {e}"))?;
                v
            }
            Compression::Lz4 => {
                if self.uncompressed_size > MAX_PAYLOAD {
                    return Err(format!("says it decompresses to {} bytes", self.uncompressed_size));
                }
                lz4_flex::block::decompress(stored, self.uncompressed_size as usize).map_err(|e| format!("lz4: {e}"))?
            }
        };
        if self.kind == EntryKind::Ptx {
            while out.last() == Some(&0) {
                out.pop();
            }
        }
        Ok(out)
    }
}

/// The C++ name of a mangled kernel name (`_Z10vector_addPKfS0_Pfi` -> `vector_add(float
/// const*, float const*, float*, int)`), also of a static kernel of a relocatable build
/// (see [`static_inner_name`]); None for a name that is not mangled.
pub fn demangle(name: &str) -> Option<String> {
    let name = static_inner_name(name).unwrap_or(name);
    // An empty parameter pack prints as `f<>(int, )`; c++filt says `f<>(int)`.
    Some(cpp_demangle::Symbol::new(name).ok()?.demangle().ok()?.replace(", )", ")"))
}

/// The mangled name inside the name nvcc gives a static (internal) kernel in a relocatable
/// (`-rdc`) build: `__nv_static_<N>__<N - 1 characters>_<mangled>`.
pub fn static_inner_name(name: &str) -> Option<&str> {
    let rest = name.strip_prefix("__nv_static_")?;
    let digits = rest.find(|c: char| !c.is_ascii_digit())?;
    let n: usize = rest[..digits].parse().ok()?;
    let inner = rest[digits..].strip_prefix("__")?.get(n..)?;
    inner.starts_with("_Z").then_some(inner)
}

/// A kernel (`.entry`) of a PTX module.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PtxKernel {
    /// Its (mangled) name.
    pub name: String,
    /// Sizes in bytes of its parameters.
    pub params: Vec<u32>,
}

/// Whether a fat binary is a unit of relocatable device code (`nvcc -rdc=true`): its machine
/// code entries are relocatable objects (ELF `ET_REL`) for the device linker, not cubins a
/// driver loads. Its kernels reach the GPU through the device-linked fat binary.
pub fn is_relocatable_unit(fatbin: &Fatbin, bytes: &[u8]) -> bool {
    fatbin
        .entries
        .iter()
        .filter(|e| e.kind == EntryKind::Elf)
        .filter_map(|e| e.contents(bytes).ok())
        .any(|elf| elf.get(..4) == Some(b"\x7fELF") && elf.get(16..18) == Some(&[1, 0]))
}

/// The kernels a PTX text defines, in order (not the ones it only declares).
pub fn ptx_kernels(ptx: &str) -> Vec<PtxKernel> {
    let lines: Vec<&str> = ptx.lines().collect();
    crate::patch::kernels(&lines).into_iter().map(|k| PtxKernel { name: k.name, params: k.params.into_iter().map(|p| p.1).collect() }).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(kind: u16, flags: u64, payload: &[u8], uncompressed: u64) -> Vec<u8> {
        let mut h = vec![0u8; 0x40];
        h[0..2].copy_from_slice(&kind.to_le_bytes());
        h[4..8].copy_from_slice(&0x40u32.to_le_bytes());
        let padded = payload.len().div_ceil(8) * 8;
        h[8..16].copy_from_slice(&(padded as u64).to_le_bytes());
        h[0x10..0x14].copy_from_slice(&(payload.len() as u32).to_le_bytes());
        h[0x1c..0x20].copy_from_slice(&75u32.to_le_bytes());
        h[0x28..0x30].copy_from_slice(&flags.to_le_bytes());
        h[0x38..0x40].copy_from_slice(&uncompressed.to_le_bytes());
        h.extend_from_slice(payload);
        h.resize(0x40 + padded, 0);
        h
    }

    fn fatbin(entries: &[Vec<u8>]) -> Vec<u8> {
        let body: Vec<u8> = entries.concat();
        let mut f = vec![];
        f.extend_from_slice(&FATBIN_MAGIC.to_le_bytes());
        f.extend_from_slice(&1u16.to_le_bytes());
        f.extend_from_slice(&16u16.to_le_bytes());
        f.extend_from_slice(&(body.len() as u64).to_le_bytes());
        f.extend_from_slice(&body);
        f
    }

    #[test]
    fn plain_and_lz4_payloads_and_kernels() {
        let ptx = b".visible .entry _Z3addPfS_i(.param .u64 a, .param .u64 b, .param .u32 n)\n{\nret;\n}\n";
        let lz = lz4_flex::block::compress(ptx);
        let f = fatbin(&[entry(2, 0x11, b"\x7fELF....", 0), entry(1, 0x11, ptx, 0), entry(1, 0x2011, &lz, ptx.len() as u64)]);
        let found = find_all(&[vec![0u8; 24], f.clone()].concat());
        assert_eq!(found.len(), 1);
        let fb = found[0].as_ref().unwrap();
        assert_eq!(fb.offset, 24);
        assert_eq!(
            fb.entries.iter().map(|e| (e.kind, e.compression)).collect::<Vec<_>>(),
            [(EntryKind::Elf, Compression::None), (EntryKind::Ptx, Compression::None), (EntryKind::Ptx, Compression::Lz4)]
        );
        for e in &fb.entries[1..] {
            assert_eq!(e.contents(&f).unwrap(), ptx);
        }
        let k = ptx_kernels(std::str::from_utf8(ptx).unwrap());
        assert_eq!(k, [PtxKernel { name: "_Z3addPfS_i".into(), params: vec![8, 8, 4] }]);
    }

    #[test]
    fn malformed_fatbins_are_errors() {
        let mut f = fatbin(&[entry(1, 0x11, b"abc", 0)]);
        f[8] = 0xff; // more entries than bytes
        assert!(parse(&f, 0).unwrap_err().reason.contains("bytes of entries"));
        let mut f = fatbin(&[entry(1, 0x11, b"abc", 0)]);
        f[16 + 8] = 0xf0; // a payload past the end
        assert!(parse(&f, 0).unwrap_err().reason.contains("runs past"));
        let f = fatbin(&[entry(1, 0x8011, b"not zstd", 100)]);
        assert!(parse(&f, 0).unwrap().entries[0].contents(&f).unwrap_err().starts_with("zstd"));
        // Every truncation of a valid fatbin is an error or a shorter fatbin, never a panic.
        let f = fatbin(&[entry(2, 0x11, b"\x7fELF", 0), entry(1, 0x11, b".entry k()", 0)]);
        for n in 0..f.len() {
            let _ = find_all(&f[..n]);
            if let Ok(fb) = parse(&f[..n], 0) {
                for e in &fb.entries {
                    let _ = e.contents(&f[..n]);
                }
            }
        }
    }
}
