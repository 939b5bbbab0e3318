//! `/proc/self/maps`: which files are mapped where.

/// One line of `/proc/self/maps`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Mapping {
    /// First address.
    pub start: u64,
    /// One past the last address.
    pub end: u64,
    /// Permissions, e.g. `r-xp`.
    pub perms: String,
    /// Offset in the file of `start`.
    pub offset: u64,
    /// The file's device, as `major:minor` in hex (`00:00` for anonymous memory).
    pub dev: String,
    /// The file's inode (0 for anonymous memory).
    pub inode: u64,
    /// Path of the file (empty for anonymous memory).
    pub path: String,
}

/// Parses the maps of this process.
pub fn mappings() -> Vec<Mapping> {
    read("/proc/self/maps")
}

/// Parses the maps of process `pid` (ptrace access mode is needed to read them).
pub fn mappings_of_process(pid: u32) -> Vec<Mapping> {
    read(&format!("/proc/{pid}/maps"))
}

fn read(path: &str) -> Vec<Mapping> {
    std::fs::read_to_string(path).unwrap_or_default().lines().filter_map(parse_line).collect()
}

fn parse_line(line: &str) -> Option<Mapping> {
    let mut f = line.split_whitespace();
    let (range, perms, offset) = (f.next()?, f.next()?, f.next()?);
    let dev = f.next()?.to_string();
    let inode = f.next()?.parse().ok()?;
    let path = f.collect::<Vec<_>>().join(" ");
    let (s, e) = range.split_once('-')?;
    Some(Mapping {
        start: u64::from_str_radix(s, 16).ok()?,
        end: u64::from_str_radix(e, 16).ok()?,
        perms: perms.to_string(),
        offset: u64::from_str_radix(offset, 16).ok()?,
        dev,
        inode,
        path,
    })
}

/// The mapping holding `addr`.
pub fn mapping_of(addr: u64) -> Option<Mapping> {
    mappings().into_iter().find(|m| m.start <= addr && addr < m.end)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_lines() {
        let m = parse_line("7f0000001000-7f0000002000 r-xp 00001000 fd:01 1234   /usr/lib/libc.so.6").unwrap();
        assert_eq!((m.start, m.end, m.offset), (0x7f00_0000_1000, 0x7f00_0000_2000, 0x1000));
        assert_eq!(m.path, "/usr/lib/libc.so.6");
        assert_eq!((m.dev.as_str(), m.inode), ("fd:01", 1234));
        assert!(parse_line("garbage").is_none());
        assert!(!mappings().is_empty());
    }
}
