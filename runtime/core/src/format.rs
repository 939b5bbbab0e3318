//! The printf of `bpf_trace_printk`, `bpf_trace_vprintk` and `bpf_snprintf`: [`check`] says
//! which formats the kernel takes (the helpers refuse the others); [`format`] prints `%d %i %u
//! %x %X %o %c %s %p %%` with the `l`, `ll`, `h`, `hh`, `z` length modifiers, flags `-0+ #`,
//! width and precision, `%px`, `%pks`, `%pus` and `%pI4`-like addresses (the GPU's records are
//! printed without the check). `%s` arguments are addresses read without faulting (one that
//! cannot be read prints nothing, as in the kernel).

use crate::user_mem;

/// Whether the kernel's printf helpers take `fmt` (without its NUL) with `num_args` arguments
/// (its `bpf_bprintf_prepare`): printable ASCII and white space only; conversions `%d %i %u
/// %x %X` (with `l` or `ll`), `%c`, `%s`, `%p` with `x K s S B ks us I4 i4 I6 i6` or alone, and
/// `%%`; flags `0 + - space` and a width, no precision; a string conversion ends the word; no more
/// conversions than arguments. The others are refused with -EINVAL.
pub fn check(fmt: &[u8], num_args: usize) -> bool {
    let at = |i: usize| fmt.get(i).copied().unwrap_or(0);
    // The C library's isspace: Rust's ASCII white space and \v.
    let is_space = |c: u8| c.is_ascii_whitespace() || c == 0x0b;
    let ends_word = |c: u8| c == 0 || is_space(c) || c.is_ascii_punctuation();
    let mut specs = 0;
    let mut i = 0;
    while i < fmt.len() {
        let c = fmt[i];
        // isprint or isspace, in ASCII.
        if !(c.is_ascii_graphic() || c == b' ' || is_space(c)) {
            return false;
        }
        if c != b'%' {
            i += 1;
            continue;
        }
        if at(i + 1) == b'%' {
            i += 2;
            continue;
        }
        if specs >= num_args {
            return false;
        }
        specs += 1;
        i += 1;
        while matches!(at(i), b'0' | b'+' | b'-' | b' ') {
            i += 1;
        }
        if matches!(at(i), b'1'..=b'9') {
            while at(i).is_ascii_digit() {
                i += 1;
            }
        }
        match at(i) {
            b'p' => match (at(i + 1), at(i + 2)) {
                (next, _) if ends_word(next) => i += 1,
                (b'k' | b'u', b's') if ends_word(at(i + 3)) => i += 3,
                (b'K' | b'x' | b's' | b'S' | b'B', _) => i += 2,
                (b'i' | b'I', b'4' | b'6') => i += 3,
                _ => return false,
            },
            b's' if ends_word(at(i + 1)) => i += 1,
            b'c' => i += 1,
            _ => {
                for _ in 0..2 {
                    if at(i) == b'l' {
                        i += 1;
                    }
                }
                if !matches!(at(i), b'd' | b'i' | b'u' | b'x' | b'X') {
                    return false;
                }
                i += 1;
            }
        }
    }
    true
}

/// Formats `fmt` with 64-bit `args`; missing arguments print as 0.
pub fn format(fmt: &[u8], args: &[u64]) -> Vec<u8> {
    format_with(fmt, args, &user_mem::read_str, &user_mem::read)
}

/// [`format`], with `%s` arguments read by `read_str` (which fills a buffer with the string
/// and its NUL, returning the bytes written, as [`user_mem::read_str`] does; None: a fault)
/// and the bytes `%pI4`-like arguments point to by `read_bytes` (false: a fault).
pub fn format_with(fmt: &[u8], args: &[u64], read_str: &dyn Fn(u64, &mut [u8]) -> Option<usize>, read_bytes: &dyn Fn(u64, &mut [u8]) -> bool) -> Vec<u8> {
    let mut out = Vec::new();
    let mut args = args.iter().copied();
    let mut i = 0;
    while i < fmt.len() {
        let c = fmt[i];
        if c != b'%' {
            out.push(c);
            i += 1;
            continue;
        }
        i += 1;
        let mut flags = Vec::new();
        while i < fmt.len() && b"-0+ #".contains(&fmt[i]) {
            flags.push(fmt[i]);
            i += 1;
        }
        let mut width = 0usize;
        while i < fmt.len() && fmt[i].is_ascii_digit() {
            width = width * 10 + (fmt[i] - b'0') as usize;
            i += 1;
        }
        let mut precision = None;
        if i < fmt.len() && fmt[i] == b'.' {
            i += 1;
            let mut p = 0;
            while i < fmt.len() && fmt[i].is_ascii_digit() {
                p = p * 10 + (fmt[i] - b'0') as usize;
                i += 1;
            }
            precision = Some(p);
        }
        let mut bits = 32;
        while i < fmt.len() && b"lhz".contains(&fmt[i]) {
            bits = match fmt[i] {
                b'l' | b'z' => 64,
                b'h' if bits == 16 => 8,
                _ => 16,
            };
            i += 1;
        }
        let Some(&conv) = fmt.get(i) else { break };
        i += 1;
        let body: Vec<u8> = match conv {
            b'%' => {
                out.push(b'%');
                continue;
            }
            b'd' | b'i' => {
                let v = args.next().unwrap_or(0);
                let v = match bits {
                    8 => v as i8 as i64,
                    16 => v as i16 as i64,
                    32 => v as i32 as i64,
                    _ => v as i64,
                };
                let s = v.to_string();
                if v >= 0 && flags.contains(&b'+') {
                    format!("+{s}").into_bytes()
                } else if v >= 0 && flags.contains(&b' ') {
                    format!(" {s}").into_bytes()
                } else {
                    s.into_bytes()
                }
            }
            b'u' | b'x' | b'X' | b'o' => {
                let v = args.next().unwrap_or(0);
                let v = if bits == 64 { v } else { v & ((1u64 << bits) - 1) };
                let s = match conv {
                    b'u' => v.to_string(),
                    b'x' => format!("{v:x}"),
                    b'X' => format!("{v:X}"),
                    _ => format!("{v:o}"),
                };
                let prefix = match (flags.contains(&b'#'), conv) {
                    (true, b'x') => "0x",
                    (true, b'X') => "0X",
                    (true, b'o') => "0",
                    _ => "",
                };
                format!("{prefix}{s}").into_bytes()
            }
            b'p' => {
                let v = args.next().unwrap_or(0);
                match fmt.get(i..i + 2).unwrap_or(&fmt[i..]) {
                    // `%pks`, `%pus`: a string, as `%s`.
                    [b'k' | b'u', b's', ..] => {
                        i += 2;
                        string_at(v, precision, read_str)
                    }
                    // `%pI4`, `%pi4`, `%pI6`, `%pi6`: the address `v` points to (zeros where it
                    // cannot be read, as in the kernel).
                    [kind @ (b'I' | b'i'), family @ (b'4' | b'6')] => {
                        i += 2;
                        let mut ip = [0u8; 16];
                        let ip = &mut ip[..if *family == b'4' { 4 } else { 16 }];
                        if !read_bytes(v, ip) {
                            ip.fill(0);
                        }
                        ip_address(ip, *kind == b'I')
                    }
                    // `%px`, and kernel pointers (`%pK`, `%ps`, `%pS`, `%pB`, printed by the
                    // kernel as symbols, here as `%px`): the raw value, 16 hex digits.
                    [b'x' | b'K' | b's' | b'S' | b'B', ..] => {
                        i += 1;
                        format!("{v:016x}").into_bytes()
                    }
                    // `%p` alone: the kernel prints a hash of the value, 16 hex digits; the
                    // value here.
                    _ => format!("{v:016x}").into_bytes(),
                }
            }
            b'c' => vec![args.next().unwrap_or(0) as u8],
            b's' => string_at(args.next().unwrap_or(0), precision, read_str),
            other => {
                // Unknown conversion: print it as written.
                out.push(b'%');
                out.push(other);
                continue;
            }
        };
        let pad = width.saturating_sub(body.len());
        if flags.contains(&b'-') {
            out.extend_from_slice(&body);
            out.extend(std::iter::repeat_n(b' ', pad));
        } else if flags.contains(&b'0') && conv != b's' && conv != b'c' {
            let (sign, digits) = if body.first().is_some_and(|c| *c == b'-' || *c == b'+') { body.split_at(1) } else { (&body[..0], &body[..]) };
            out.extend_from_slice(sign);
            out.extend(std::iter::repeat_n(b'0', pad));
            out.extend_from_slice(digits);
        } else {
            out.extend(std::iter::repeat_n(b' ', pad));
            out.extend_from_slice(&body);
        }
    }
    out
}

/// An IPv4 (4 bytes) or IPv6 (16) address as the kernel's `%pI4`/`%pI6` print it (`dotted`:
/// `1.2.3.4`, eight colon-separated groups of four hex digits) or `%pi4`/`%pi6` (`001.002.003.004`,
/// 32 hex digits).
fn ip_address(ip: &[u8], dotted: bool) -> Vec<u8> {
    let text = match (ip.len(), dotted) {
        (4, true) => ip.iter().map(u8::to_string).collect::<Vec<_>>().join("."),
        (4, false) => ip.iter().map(|b| format!("{b:03}")).collect::<Vec<_>>().join("."),
        (_, true) => ip.chunks(2).map(|g| format!("{:02x}{:02x}", g[0], g[1])).collect::<Vec<_>>().join(":"),
        (_, false) => ip.iter().map(|b| format!("{b:02x}")).collect(),
    };
    text.into_bytes()
}

/// A `%s` argument's string (up to 255 bytes, cut at `precision`); nothing where it cannot be
/// read (the kernel's helpers print an empty string there).
fn string_at(addr: u64, precision: Option<usize>, read_str: &dyn Fn(u64, &mut [u8]) -> Option<usize>) -> Vec<u8> {
    let mut buf = [0u8; 256];
    match read_str(addr, &mut buf) {
        Some(n) => {
            let s = &buf[..n.saturating_sub(1)];
            s[..precision.unwrap_or(s.len()).min(s.len())].to_vec()
        }
        None => Vec::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::format;

    #[test]
    fn conversions() {
        let s = b"str\0";
        let out = format(
            b"a=%d b=%u c=%x d=%lld e=%5d|%-4u|%03d %s %c %% %llx %#x",
            &[(-1i64) as u64, 7, 255, (-5i64) as u64, 42, 3, 7, s.as_ptr() as u64, b'Z' as u64, u64::MAX, 16],
        );
        assert_eq!(String::from_utf8(out).unwrap(), "a=-1 b=7 c=ff d=-5 e=   42|3   |007 str Z % ffffffffffffffff 0x10");
    }

    #[test]
    fn bad_string_pointer_does_not_fault() {
        assert_eq!(format(b"<%s>!", &[8]), b"<>!");
    }
}
