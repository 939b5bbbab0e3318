//! What the bpf_conformance suite expects of a runtime: its "unwind" helper and its hex text.
//!
//! Shared by the conformance plugin binary and the conformance tests.

use crate::exec::{HelperTable, RunState};

/// Id of the suite's unwind helper.
pub const UNWIND_HELPER_ID: u32 = 5;

/// The suite's helper 5: returns its argument, and when that is 0 the program ends at once with
/// r0 = 0.
pub extern "C" fn unwind(r1: u64, _: u64, _: u64, _: u64, _: u64, state: &mut RunState) -> u64 {
    if r1 == 0 {
        state.stop(0);
    }
    r1
}

/// The helper table the suite's programs are written against.
pub fn helper_table() -> HelperTable {
    let mut t = HelperTable::new();
    t.register(UNWIND_HELPER_ID, "unwind", unwind);
    t
}

/// Parses whitespace-separated hex bytes (`"b7 00 00 00"` or `"00  01  ff  "`).
pub fn parse_hex_bytes(text: &str) -> Result<Vec<u8>, String> {
    text.split_whitespace()
        .flat_map(|tok| {
            // Accept both "b7" and runs such as "b7000000".
            let tok = tok.trim_start_matches("0x");
            (0..tok.len().div_ceil(2)).map(move |i| &tok[2 * i..(2 * i + 2).min(tok.len())])
        })
        .map(|b| u8::from_str_radix(b, 16).map_err(|_| format!("bad hex byte `{b}`")))
        .collect()
}

/// Parses an expected result: hex with `0x`, or decimal.
pub fn parse_result(text: &str) -> Result<u64, String> {
    let t = text.trim();
    let parsed = match t.strip_prefix("0x").or_else(|| t.strip_prefix("0X")) {
        Some(h) => u64::from_str_radix(h, 16),
        None => t.parse::<i64>().map(|v| v as u64).or_else(|_| t.parse::<u64>()),
    };
    parsed.map_err(|_| format!("bad result `{t}`"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hex_forms() {
        assert_eq!(parse_hex_bytes("00  01  ff  ").unwrap(), vec![0, 1, 0xff]);
        assert_eq!(parse_hex_bytes("b7 00\n0a").unwrap(), vec![0xb7, 0, 0x0a]);
        assert!(parse_hex_bytes("zz").is_err());
        assert_eq!(parse_result("0x0000000080000000").unwrap(), 0x8000_0000);
        assert_eq!(parse_result("-1").unwrap(), u64::MAX);
    }
}
