//! Relocatable device code (`nvcc -rdc=true`): one PTX unit per source file, linked into one
//! module as the driver's JIT linker (`cuLink*`) and `nvlink` link them. `.visible` symbols are
//! shared by every unit, one `.weak` definition of a name is kept (a template's kernel is one in
//! every unit that instantiates it), `.extern` declarations name another unit's definition, and
//! each unit's internal symbols stay its own.
//!
//! [`link_units`] writes the linked module as one PTX text (internal symbols of the units after
//! the first renamed apart), for the PTX interpreter and the stand-in driver, which run module
//! texts (the agent hands the units to the real driver's linker instead);
//! [`unresolved_functions`] names what the units call and none defines (the device runtime).

use std::collections::HashMap;

/// How a top-level symbol is linked.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Linkage {
    /// No linking directive: the unit's own.
    Internal,
    Visible,
    Weak,
    /// Declared here, defined in another unit.
    Extern,
}

/// A top-level item of a unit: a function, kernel or module variable.
#[derive(Clone, Debug)]
struct Item {
    name: String,
    linkage: Linkage,
    /// A definition (a body, or a variable that is not `.extern`), not a declaration.
    defines: bool,
    kernel: bool,
    /// A `.func` or `.entry` (not a variable).
    function: bool,
    /// Its lines, `first..end`.
    first: usize,
    end: usize,
}

const LINKAGES: [(&str, Linkage); 4] = [(".visible", Linkage::Visible), (".weak", Linkage::Weak), (".common", Linkage::Weak), (".extern", Linkage::Extern)];
const KINDS: [&str; 5] = [".func", ".entry", ".global", ".const", ".shared"];

/// The part of a line before its `//` comment.
fn code(line: &str) -> &str {
    line.split_once("//").map_or(line, |(c, _)| c)
}

/// The top-level items of a PTX unit.
fn items(lines: &[&str]) -> Vec<Item> {
    let mut out = vec![];
    let mut depth = 0i32;
    let mut i = 0;
    while i < lines.len() {
        let t = code(lines[i]).trim();
        if depth != 0 || t.is_empty() {
            depth += t.matches('{').count() as i32 - t.matches('}').count() as i32;
            i += 1;
            continue;
        }
        let mut rest = t;
        let mut linkage = Linkage::Internal;
        for (word, l) in LINKAGES {
            if let Some(r) = rest.strip_prefix(word).filter(|r| r.starts_with(char::is_whitespace)) {
                linkage = l;
                rest = r.trim_start();
            }
        }
        let Some(kind) = KINDS.iter().find(|k| rest.strip_prefix(**k).is_some_and(|r| r.starts_with(char::is_whitespace) || r.is_empty())) else {
            depth += t.matches('{').count() as i32 - t.matches('}').count() as i32;
            i += 1;
            continue;
        };
        let function = matches!(*kind, ".func" | ".entry");
        // The header runs to its `{` (a definition) or `;` (a declaration or variable).
        let first = i;
        let mut header = String::new();
        let mut body = false;
        while i < lines.len() {
            let c = code(lines[i]);
            if let Some(at) = c.find(['{', ';']) {
                // A variable's initialiser (`= {1, 2}`) is not a body.
                let brace = c.as_bytes()[at] == b'{' && (function || !c[..at].contains('='));
                header.push_str(&c[..if brace { at } else { c.len() }]);
                body = brace;
                break;
            }
            header.push_str(c);
            header.push(' ');
            i += 1;
        }
        let name = if function { function_name(&header[header.find(kind).unwrap_or(0) + kind.len()..]) } else { variable_name(&header) };
        // A body: to its closing brace.
        if body {
            let mut d = 0i32;
            while i < lines.len() {
                let c = code(lines[i]);
                d += c.matches('{').count() as i32 - c.matches('}').count() as i32;
                i += 1;
                if d <= 0 {
                    break;
                }
            }
        } else {
            i += 1;
        }
        let defines = if function { body } else { linkage != Linkage::Extern };
        out.push(Item { name, linkage, defines, kernel: *kind == ".entry", function, first, end: i });
    }
    out
}

/// A function's name from what follows `.func`/`.entry`: after an optional `(return)` group,
/// before its parameters.
fn function_name(rest: &str) -> String {
    let mut r = rest.trim_start();
    if r.starts_with('(') {
        r = r.find(')').map_or("", |c| &r[c + 1..]).trim_start();
    }
    // `.attribute(.unified(...))` before the name.
    if let Some(a) = r.strip_prefix(".attribute") {
        let mut depth = 0;
        let end = a.char_indices().find(|&(_, c)| {
            depth += (c == '(') as i32 - (c == ')') as i32;
            c == ')' && depth == 0
        });
        r = end.map_or("", |(i, _)| &a[i + 1..]).trim_start();
    }
    r.split(|c: char| c == '(' || c == ';' || c.is_whitespace()).next().unwrap_or("").to_string()
}

/// A variable's name: the last word before `[`, `=` or `;`.
fn variable_name(decl: &str) -> String {
    let d = decl.split('=').next().unwrap_or("").trim().trim_end_matches(';').trim();
    d.split_whitespace().last().unwrap_or("").split('[').next().unwrap_or("").to_string()
}

/// The functions and kernels a PTX text declares or defines, each once, in order.
pub(crate) fn function_names(text: &str) -> Vec<String> {
    let mut out: Vec<String> = vec![];
    for it in items(&text.lines().collect::<Vec<_>>()).into_iter().filter(|it| it.function) {
        if !out.contains(&it.name) {
            out.push(it.name);
        }
    }
    out
}

/// Functions the units call (`.extern .func`) and none of them defines: what the driver itself
/// provides (`vprintf`, `malloc`) or a library must (the device runtime's `__cudaCDP2...` and
/// `cuda...` functions of kernels that launch kernels, in `libcudadevrt.a`).
pub fn unresolved_functions(units: &[&str]) -> Vec<String> {
    let all: Vec<Vec<Item>> = units.iter().map(|u| items(&u.lines().collect::<Vec<_>>())).collect();
    let defined: std::collections::HashSet<&str> = all.iter().flatten().filter(|it| it.defines).map(|it| it.name.as_str()).collect();
    let mut out: Vec<String> = all
        .iter()
        .flatten()
        .filter(|it| it.function && it.linkage == Linkage::Extern && !it.defines && !it.kernel && !defined.contains(it.name.as_str()))
        .map(|it| it.name.clone())
        .collect();
    out.sort();
    out.dedup();
    out
}

/// Replaces whole identifiers of `line` found in `renames`.
fn rename(line: &str, renames: &HashMap<String, String>) -> String {
    let mut out = String::with_capacity(line.len());
    let mut chars = line.char_indices().peekable();
    let ident_start = |c: char| c.is_ascii_alphabetic() || c == '_' || c == '$' || c == '%';
    let ident = |c: char| c.is_ascii_alphanumeric() || c == '_' || c == '$';
    let mut prev = ' ';
    while let Some((at, c)) = chars.next() {
        // An identifier, not the tail of a directive or number (`.u32`, `0f3F800000`).
        if ident_start(c) && !(prev == '.' || ident(prev)) {
            let mut end = at + c.len_utf8();
            while let Some(&(j, d)) = chars.peek() {
                if !ident(d) {
                    break;
                }
                end = j + d.len_utf8();
                chars.next();
            }
            let word = &line[at..end];
            out.push_str(renames.get(word).map_or(word, String::as_str));
            prev = 'a';
            continue;
        }
        out.push(c);
        prev = c;
    }
    out
}

/// Links PTX units into one module text: the first unit's header, every unit's items, one
/// definition per shared name (a `.visible` one over `.weak` ones, else the first `.weak`),
/// the internal symbols of units after the first renamed `NAME$uN`. Two `.visible`
/// definitions of a name are an error, as they are to the driver's linker.
pub fn link_units(units: &[&str]) -> Result<String, String> {
    let lines: Vec<Vec<&str>> = units.iter().map(|u| u.lines().collect()).collect();
    let all: Vec<Vec<Item>> = lines.iter().map(|l| items(l)).collect();
    // Which unit's definition of each shared name is kept.
    let mut kept: HashMap<&str, (usize, Linkage)> = HashMap::new();
    for (u, its) in all.iter().enumerate() {
        for it in its.iter().filter(|it| it.defines && matches!(it.linkage, Linkage::Visible | Linkage::Weak)) {
            match kept.get(it.name.as_str()) {
                Some(&(other, Linkage::Visible)) if it.linkage == Linkage::Visible && other != u => {
                    return Err(format!("`{}` is defined in units {other} and {u}", it.name));
                }
                Some(&(_, Linkage::Visible)) => {}
                Some(_) if it.linkage == Linkage::Weak => {}
                _ => {
                    kept.insert(&it.name, (u, it.linkage));
                }
            }
        }
    }
    let mut text = String::new();
    for (u, (ls, its)) in lines.iter().zip(&all).enumerate() {
        let renames: HashMap<String, String> = if u == 0 {
            HashMap::new()
        } else {
            // Kernels keep their names: the runtime finds them by name, and nvcc makes a static
            // kernel's name unique.
            its.iter().filter(|it| it.linkage == Linkage::Internal && !it.kernel).map(|it| (it.name.clone(), format!("{}$u{u}", it.name))).collect()
        };
        let dropped = |li: usize| {
            its.iter().any(|it| {
                li >= it.first
                    && li < it.end
                    && it.defines
                    && matches!(it.linkage, Linkage::Visible | Linkage::Weak)
                    && kept.get(it.name.as_str()).is_some_and(|&(k, _)| k != u)
            })
        };
        for (li, line) in ls.iter().enumerate() {
            let t = line.trim_start();
            if u > 0 && (t.starts_with(".version") || t.starts_with(".target") || t.starts_with(".address_size")) {
                continue;
            }
            if dropped(li) {
                continue;
            }
            text.push_str(&rename(line, &renames));
            text.push('\n');
        }
    }
    Ok(text)
}

#[cfg(test)]
mod tests {
    use super::*;

    const A: &str = ".version 8.0\n.target sm_75\n.address_size 64\n\n.extern .global .align 4 .u32 shared_count;\n.global .align 4 .u32 mine;\n.func  (.param .b32 func_retval0) helper(\n\t.param .b32 helper_param_0\n)\n;\n.func  (.param .b32 func_retval0) helper(\n\t.param .b32 helper_param_0\n)\n{\n\tret;\n}\n.visible .entry ka(\n\t.param .u64 ka_param_0\n)\n{\n\t{ // callseq 0, 0\n\t}\n\tld.global.u32 %r1, [mine];\n\tret;\n}\n.weak .entry kt(\n)\n{\n\tret;\n}\n";
    const B: &str = ".version 8.0\n.target sm_75\n.address_size 64\n\n.visible .global .align 4 .u32 shared_count;\n.global .align 4 .u32 mine;\n.global .align 1 .b8 $str[3] = {104, 105, 0};\n.func  (.param .b32 func_retval0) helper(\n\t.param .b32 helper_param_0\n)\n{\n\tret;\n}\n.visible .entry kb(\n)\n{\n\tld.global.u32 %r1, [mine];\n\tmov.u64 %rd1, $str;\n\tret;\n}\n.weak .entry kt(\n)\n{\n\tret;\n}\n";

    #[test]
    fn items_are_found_with_their_linkage() {
        let lines: Vec<&str> = A.lines().collect();
        let its = items(&lines);
        let names: Vec<(&str, Linkage, bool)> = its.iter().map(|i| (i.name.as_str(), i.linkage, i.defines)).collect();
        assert_eq!(
            names,
            [
                ("shared_count", Linkage::Extern, false),
                ("mine", Linkage::Internal, true),
                ("helper", Linkage::Internal, false),
                ("helper", Linkage::Internal, true),
                ("ka", Linkage::Visible, true),
                ("kt", Linkage::Weak, true),
            ]
        );
        assert_eq!(function_name(" .attribute(.unified(0x1, 0x2)) f(\n"), "f");
    }

    #[test]
    fn linking_keeps_one_weak_definition_and_renames_internal_symbols_apart() {
        let linked = link_units(&[A, B]).unwrap();
        assert_eq!(linked.matches(".version").count(), 1);
        assert_eq!(linked.matches(".weak .entry kt(").count(), 1, "{linked}");
        assert!(linked.contains(".global .align 4 .u32 mine$u1;") && linked.contains("[mine$u1]") && linked.contains("[mine]"), "{linked}");
        assert!(linked.contains(") helper$u1(") && linked.contains(".b8 $str$u1[3] = {104, 105, 0};") && linked.contains("mov.u64 %rd1, $str$u1;"), "{linked}");
        assert!(linked.contains(".visible .global .align 4 .u32 shared_count;") && !linked.contains("shared_count$"), "{linked}");
        // Directives and registers are not identifiers to rename.
        assert!(linked.contains("ld.global.u32 %r1"), "{linked}");
        let twice = link_units(&[B, B]).unwrap_err();
        assert!(twice.contains("`shared_count` is defined in units 0 and 1"), "{twice}");
        assert_eq!(link_units(&[A]).unwrap(), A);
    }

    #[test]
    fn functions_no_unit_defines_are_named() {
        let calls = ".extern .func  (.param .b64 func_retval0) __cudaCDP2GetParameterBufferV2\n(\n\t.param .b64 p\n)\n;\n.extern .func  (.param .b32 func_retval0) helper\n(\n)\n;\n";
        let defines = ".visible .func  (.param .b32 func_retval0) helper(\n)\n{\n\tret;\n}\n";
        assert_eq!(unresolved_functions(&[calls, defines]), ["__cudaCDP2GetParameterBufferV2"]);
        assert_eq!(unresolved_functions(&[A, B]), Vec::<String>::new(), "variables are not functions");
    }
}
