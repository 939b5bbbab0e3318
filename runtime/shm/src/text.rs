//! Fixed-size, NUL-padded text fields, as names and targets are kept in the region.

/// The text of a NUL-padded field.
pub fn text(bytes: &[u8]) -> String {
    let end = bytes.iter().position(|&b| b == 0).unwrap_or(bytes.len());
    String::from_utf8_lossy(&bytes[..end]).to_string()
}

/// Fills a NUL-padded field with `s`, cut to leave room for the final NUL.
pub fn fill(dst: &mut [u8], s: &str) {
    let n = s.len().min(dst.len().saturating_sub(1));
    dst[..n].copy_from_slice(&s.as_bytes()[..n]);
}
