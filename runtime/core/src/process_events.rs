//! The process lifecycle and signal tracepoints in userspace (`sched/sched_process_exec`,
//! `sched/sched_process_exit`, `sched/sched_process_fork`, `sched/sched_process_wait`, `signal/signal_generate`,
//! `signal/signal_deliver`): the records their programs read,
//! laid out as the running kernel's tracefs `format` file describes the event (the layout
//! changes between kernels: `sched_process_fork` holds its names inline before 6.x and as
//! `__data_loc` strings after; `group_dead` is new), so that programs compiled against this
//! kernel's `vmlinux.h`, and bpftrace's `args`, read what the kernel would give them.
//! A traced process that reads them keeps them in the code cache beside the region, where
//! one that cannot read tracefs (in a container without it) finds them; without either, the
//! layout of the kernel these were written against (6.18) is used.

/// One field of an event record: its name, offset and size, and whether it is a
/// `__data_loc` string (a 32-bit word: the string's length above its offset in the record).
#[derive(Clone, Debug, PartialEq, Eq)]
struct Field {
    name: String,
    offset: usize,
    size: usize,
    data_loc: bool,
}

/// An event's record layout, from its `format` file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Format {
    /// The event's `common_type`.
    pub id: u16,
    fields: Vec<Field>,
    /// Bytes of the fixed part (the strings of `__data_loc` fields follow it).
    fixed: usize,
}

/// A value to put in a field of a record.
#[derive(Clone, Copy, Debug)]
pub enum Value<'a> {
    /// An integer, cut to the field's size.
    Int(i64),
    /// A string: copied NUL-terminated (and cut) into a `char[N]` field, or appended after
    /// the fixed part for a `__data_loc` one.
    Str(&'a [u8]),
}

/// The formats of the events we run, as Linux 6.18 gives them (for machines without tracefs).
const KNOWN: [(&str, &str); 6] = [
    (
        "sched/sched_process_exec",
        "ID: 0\nformat:\n\tfield:unsigned short common_type;\toffset:0;\tsize:2;\tsigned:0;\n\tfield:int common_pid;\toffset:4;\tsize:4;\tsigned:1;\n\n\tfield:__data_loc char[] filename;\toffset:8;\tsize:4;\tsigned:0;\n\tfield:pid_t pid;\toffset:12;\tsize:4;\tsigned:1;\n\tfield:pid_t old_pid;\toffset:16;\tsize:4;\tsigned:1;\n",
    ),
    (
        "sched/sched_process_exit",
        "ID: 0\nformat:\n\tfield:unsigned short common_type;\toffset:0;\tsize:2;\tsigned:0;\n\tfield:int common_pid;\toffset:4;\tsize:4;\tsigned:1;\n\n\tfield:char comm[16];\toffset:8;\tsize:16;\tsigned:0;\n\tfield:pid_t pid;\toffset:24;\tsize:4;\tsigned:1;\n\tfield:int prio;\toffset:28;\tsize:4;\tsigned:1;\n\tfield:bool group_dead;\toffset:32;\tsize:1;\tsigned:0;\n",
    ),
    (
        "sched/sched_process_fork",
        "ID: 0\nformat:\n\tfield:unsigned short common_type;\toffset:0;\tsize:2;\tsigned:0;\n\tfield:int common_pid;\toffset:4;\tsize:4;\tsigned:1;\n\n\tfield:__data_loc char[] parent_comm;\toffset:8;\tsize:4;\tsigned:0;\n\tfield:pid_t parent_pid;\toffset:12;\tsize:4;\tsigned:1;\n\tfield:__data_loc char[] child_comm;\toffset:16;\tsize:4;\tsigned:0;\n\tfield:pid_t child_pid;\toffset:20;\tsize:4;\tsigned:1;\n",
    ),
    (
        "sched/sched_process_wait",
        "ID: 0\nformat:\n\tfield:unsigned short common_type;\toffset:0;\tsize:2;\tsigned:0;\n\tfield:int common_pid;\toffset:4;\tsize:4;\tsigned:1;\n\n\tfield:__data_loc char[] comm;\toffset:8;\tsize:4;\tsigned:0;\n\tfield:pid_t pid;\toffset:12;\tsize:4;\tsigned:1;\n\tfield:int prio;\toffset:16;\tsize:4;\tsigned:1;\n",
    ),
    (
        "signal/signal_generate",
        "ID: 0\nformat:\n\tfield:unsigned short common_type;\toffset:0;\tsize:2;\tsigned:0;\n\tfield:int common_pid;\toffset:4;\tsize:4;\tsigned:1;\n\n\tfield:int sig;\toffset:8;\tsize:4;\tsigned:1;\n\tfield:int errno;\toffset:12;\tsize:4;\tsigned:1;\n\tfield:int code;\toffset:16;\tsize:4;\tsigned:1;\n\tfield:char comm[16];\toffset:20;\tsize:16;\tsigned:0;\n\tfield:pid_t pid;\toffset:36;\tsize:4;\tsigned:1;\n\tfield:int group;\toffset:40;\tsize:4;\tsigned:1;\n\tfield:int result;\toffset:44;\tsize:4;\tsigned:1;\n",
    ),
    (
        "signal/signal_deliver",
        "ID: 0\nformat:\n\tfield:unsigned short common_type;\toffset:0;\tsize:2;\tsigned:0;\n\tfield:int common_pid;\toffset:4;\tsize:4;\tsigned:1;\n\n\tfield:int sig;\toffset:8;\tsize:4;\tsigned:1;\n\tfield:int errno;\toffset:12;\tsize:4;\tsigned:1;\n\tfield:int code;\toffset:16;\tsize:4;\tsigned:1;\n\tfield:unsigned long sa_handler;\toffset:24;\tsize:8;\tsigned:0;\n\tfield:unsigned long sa_flags;\toffset:32;\tsize:8;\tsigned:0;\n",
    ),
];

/// Whether `event` (`sched/sched_process_exit`) is one of the process events we run.
pub fn is_process_event(event: &str) -> bool {
    KNOWN.iter().any(|&(name, _)| name == event)
}

impl Format {
    /// The layout of `event` (`sched/sched_process_exec`): tracefs's (kept in `cache` when
    /// given), else the one kept in `cache` by a process of this boot that could read tracefs,
    /// else the built-in one (with `common_type` 0); `None` for an event we do not run.
    pub fn of(event: &str, cache: Option<&bpftime_jit::cache::CodeCache>) -> Option<Format> {
        let tracefs =
            ["/sys/kernel/tracing", "/sys/kernel/debug/tracing"].iter().find_map(|root| std::fs::read_to_string(format!("{root}/events/{event}/format")).ok());
        Format::from_sources(event, tracefs, cache, &boot_id())
    }

    /// [`Format::of`] with tracefs's text given (`tracefs`), for boot `boot`.
    fn from_sources(event: &str, tracefs: Option<String>, cache: Option<&bpftime_jit::cache::CodeCache>, boot: &str) -> Option<Format> {
        let known = KNOWN.iter().find(|&&(name, _)| name == event)?.1;
        // (Per boot: ids and layouts are the running kernel's.)
        let key = format!("tracefs format {boot} {event}").into_bytes();
        if let Some(f) = tracefs.as_deref().and_then(Format::parse) {
            if let (Some(cache), Some(text)) = (cache, &tracefs) {
                if cache.load_blob(&key).as_deref() != Some(text.as_bytes()) {
                    cache.store_blob(&key, text.as_bytes());
                }
            }
            return Some(f);
        }
        let kept = cache.and_then(|c| c.load_blob(&key)).and_then(|b| String::from_utf8(b).ok());
        kept.as_deref().and_then(Format::parse).or_else(|| Format::parse(known))
    }

    /// Reads a tracefs `format` file (its `ID:` line and `field:TYPE NAME; offset:N; size:N;`
    /// lines).
    pub fn parse(text: &str) -> Option<Format> {
        let mut id = None;
        let mut fields = vec![];
        for line in text.lines().map(str::trim) {
            if let Some(v) = line.strip_prefix("ID:") {
                id = v.trim().parse().ok();
                continue;
            }
            let Some(rest) = line.strip_prefix("field:") else { continue };
            let mut parts = rest.split(';').map(str::trim);
            let decl = parts.next()?;
            let number = |key: &str, part: Option<&str>| part.and_then(|p| p.strip_prefix(key)).and_then(|v| v.parse::<usize>().ok());
            let offset = number("offset:", parts.next())?;
            let size = number("size:", parts.next())?;
            let data_loc = decl.starts_with("__data_loc");
            // The name is the declaration's last word, without an array's brackets.
            let name = decl.rsplit(' ').next()?.split('[').next()?.to_string();
            fields.push(Field { name, offset, size, data_loc });
        }
        let fixed = fields.iter().map(|f| f.offset + f.size).max()?;
        Some(Format { id: id?, fields, fixed })
    }

    /// The record of one event by thread `tid`: the common header, then each named value in
    /// the field of that name (fields not named stay zero, names the format lacks are left
    /// out), `__data_loc` strings after the fixed part, NUL-terminated, as the kernel appends them.
    pub fn record(&self, tid: u32, values: &[(&str, Value)]) -> Vec<u8> {
        let mut r = vec![0u8; self.fixed];
        let put = |r: &mut Vec<u8>, at: usize, size: usize, v: i64| {
            let bytes = v.to_le_bytes();
            r[at..at + size.min(8)].copy_from_slice(&bytes[..size.min(8)]);
        };
        for f in &self.fields {
            match f.name.as_str() {
                "common_type" => put(&mut r, f.offset, f.size, self.id as i64),
                "common_pid" => put(&mut r, f.offset, f.size, tid as i64),
                _ => {}
            }
        }
        for &(name, value) in values {
            let Some(f) = self.fields.iter().find(|f| f.name == name) else { continue };
            match value {
                Value::Int(v) => put(&mut r, f.offset, f.size, v),
                Value::Str(s) if f.data_loc => {
                    let s = &s[..s.iter().position(|&c| c == 0).unwrap_or(s.len())];
                    let (at, len) = (r.len(), s.len() + 1);
                    r.extend_from_slice(s);
                    r.push(0);
                    put(&mut r, f.offset, f.size.min(4), ((len << 16) | at) as i64);
                }
                Value::Str(s) => {
                    let n = s.len().min(f.size.saturating_sub(1));
                    r[f.offset..f.offset + n].copy_from_slice(&s[..n]);
                }
            }
        }
        r
    }
}

/// This boot's id (`/proc/sys/kernel/random/boot_id`), empty where it cannot be read.
fn boot_id() -> String {
    std::fs::read_to_string("/proc/sys/kernel/random/boot_id").map(|s| s.trim().to_string()).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A layout read from tracefs is kept in the code cache, where a process that cannot read
    /// tracefs finds it (its id included); with neither, the built-in one.
    #[test]
    fn formats_are_kept_for_processes_without_tracefs() {
        let dir = std::env::temp_dir().join(format!("bpftime-formats-{}", std::process::id()));
        let cache = bpftime_jit::cache::CodeCache::open(&dir, Default::default()).unwrap();
        let text = KNOWN[1].1.replace("ID: 0", "ID: 369").replace("group_dead;\toffset:32", "group_dead;\toffset:36");
        let read = Format::from_sources("sched/sched_process_exit", Some(text), Some(&cache), "boot-a").unwrap();
        assert_eq!(read.id, 369);
        let kept = Format::from_sources("sched/sched_process_exit", None, Some(&cache), "boot-a").unwrap();
        assert_eq!(kept, read);
        // Another boot's, or none: the built-in layout.
        let other = Format::from_sources("sched/sched_process_exit", None, Some(&cache), "boot-b").unwrap();
        assert_eq!(other, Format::parse(KNOWN[1].1).unwrap());
        assert_eq!(Format::from_sources("sched/sched_process_exit", None, None, "boot-a").unwrap().id, 0);
        assert!(Format::from_sources("sched/sched_switch", None, Some(&cache), "boot-a").is_none());
        let _ = std::fs::remove_dir_all(&dir);
    }

    fn u32_at(r: &[u8], at: usize) -> u32 {
        u32::from_le_bytes(r[at..at + 4].try_into().unwrap())
    }

    /// Every built-in layout reads, and a record carries the header, the integers and the
    /// strings where the format puts them.
    #[test]
    fn records_follow_the_format() {
        for (name, _) in KNOWN {
            assert!(Format::of(name, None).is_some(), "{name}");
        }
        let exec = Format::parse(KNOWN[0].1).unwrap();
        let r = exec.record(77, &[("filename", Value::Str(b"/bin/true")), ("pid", Value::Int(77)), ("old_pid", Value::Int(76))]);
        assert_eq!(u32_at(&r, 4), 77);
        let loc = u32_at(&r, 8);
        let (at, len) = ((loc & 0xffff) as usize, (loc >> 16) as usize);
        assert_eq!((at, len), (20, 10));
        assert_eq!(&r[at..at + len], b"/bin/true\0");
        assert_eq!((u32_at(&r, 12), u32_at(&r, 16)), (77, 76));
        let exit = Format::parse(KNOWN[1].1).unwrap();
        let r = exit.record(5, &[("comm", Value::Str(b"a-rather-long-thread-name")), ("group_dead", Value::Int(1)), ("nope", Value::Int(3))]);
        assert_eq!(r.len(), 33);
        assert_eq!(&r[8..24], b"a-rather-long-t\0");
        assert_eq!(r[32], 1);
        assert!(Format::parse("ID: 1\nformat:\n\tfield:int x;\toffset:zz;\tsize:4;\n").is_none());
    }

    /// On a machine with tracefs, the kernel's format for each event names the fields we fill.
    #[test]
    fn the_kernel_formats_name_our_fields() {
        let Some(exec) = ["/sys/kernel/tracing", "/sys/kernel/debug/tracing"]
            .iter()
            .find_map(|root| std::fs::read_to_string(format!("{root}/events/sched/sched_process_exec/format")).ok())
        else {
            return println!("skipping: tracefs is not mounted");
        };
        let f = Format::parse(&exec).unwrap();
        assert!(f.id != 0);
        for name in ["filename", "pid", "old_pid"] {
            assert!(f.fields.iter().any(|x| x.name == name), "{name}: {f:?}");
        }
    }
}
