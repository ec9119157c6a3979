//! Lower layers never import higher ones. Every `.rs` file under `src/` is read, comments and
//! string literals are blanked out, and each `crate::name` path (including every top-level name in
//! a `crate::{ … }` tree, nested braces and all) is checked against the rules of the file's layer.
use std::{
    collections::BTreeSet,
    fs, io,
    path::{Path, PathBuf},
};

/// What a layer may reference, by top-level module.
enum Rule {
    /// Only these (its own module included).
    Only(&'static [&'static str]),
    /// Anything but these.
    Not(&'static [&'static str]),
}

/// (layer = first path component under `src/`, rule).
const RULES: &[(&str, Rule)] = &[
    ("types", Rule::Only(&["types"])),
    ("config", Rule::Only(&["config", "types"])),
    ("store", Rule::Only(&["store", "types", "config", "error"])),
    (
        "upstream",
        Rule::Not(&["http", "state", "jobs", "store", "webhooks"]),
    ),
    (
        "tenants",
        Rule::Not(&["http", "state", "jobs", "store", "webhooks"]),
    ),
    ("webhooks", Rule::Not(&["http", "state", "jobs"])),
    ("jobs", Rule::Not(&["http", "state"])),
];

impl Rule {
    fn allows(&self, module: &str) -> bool {
        match self {
            Self::Only(allowed) => allowed.contains(&module),
            Self::Not(refused) => !refused.contains(&module),
        }
    }
}

/// The source with comments, string literals and char literals replaced by spaces (newlines kept,
/// so line numbers still hold).
fn blank_comments_and_strings(source: &str) -> String {
    let chars: Vec<char> = source.chars().collect();
    let mut out = String::with_capacity(source.len());
    let blank = |c: char| if c == '\n' { '\n' } else { ' ' };
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        let next = chars.get(i + 1).copied();
        if c == '/' && next == Some('/') {
            while i < chars.len() && chars[i] != '\n' {
                out.push(' ');
                i += 1;
            }
        } else if c == '/' && next == Some('*') {
            // Block comments nest in Rust.
            let mut depth = 0;
            while i < chars.len() {
                if chars[i] == '/' && chars.get(i + 1) == Some(&'*') {
                    depth += 1;
                    out.push_str("  ");
                    i += 2;
                } else if chars[i] == '*' && chars.get(i + 1) == Some(&'/') {
                    depth -= 1;
                    out.push_str("  ");
                    i += 2;
                    if depth == 0 {
                        break;
                    }
                } else {
                    out.push(blank(chars[i]));
                    i += 1;
                }
            }
        } else if let Some(hashes) = raw_string_start(&chars, i) {
            // r"…", r#"…"#, br##"…"##: no escapes; ends at `"` followed by as many `#`.
            let open = hashes.prefix_len;
            out.extend(std::iter::repeat_n(' ', open));
            i += open;
            while i < chars.len() {
                if chars[i] == '"'
                    && chars[i + 1..]
                        .iter()
                        .take(hashes.count)
                        .filter(|c| **c == '#')
                        .count()
                        == hashes.count
                {
                    out.extend(std::iter::repeat_n(' ', 1 + hashes.count));
                    i += 1 + hashes.count;
                    break;
                }
                out.push(blank(chars[i]));
                i += 1;
            }
        } else if c == '"' {
            out.push(' ');
            i += 1;
            while i < chars.len() && chars[i] != '"' {
                if chars[i] == '\\' {
                    out.push(' ');
                    i += 1;
                }
                if let Some(&c) = chars.get(i) {
                    out.push(blank(c));
                }
                i += 1;
            }
            out.push(' ');
            i += 1;
        } else if c == '\'' && is_char_literal(&chars, i) {
            out.push(' ');
            i += 1;
            while i < chars.len() && chars[i] != '\'' {
                if chars[i] == '\\' {
                    out.push(' ');
                    i += 1;
                }
                out.push(' ');
                i += 1;
            }
            out.push(' ');
            i += 1;
        } else {
            out.push(c);
            i += 1;
        }
    }
    out
}

struct RawStart {
    /// Characters up to and including the opening `"`.
    prefix_len: usize,
    count: usize,
}

/// Whether a raw string literal (`r"`, `r#"`, `br#"`, …) starts at `i`.
fn raw_string_start(chars: &[char], i: usize) -> Option<RawStart> {
    if i > 0 && is_ident(chars[i - 1]) {
        return None;
    }
    let mut j = i;
    if chars.get(j) == Some(&'b') || chars.get(j) == Some(&'c') {
        j += 1;
    }
    if chars.get(j) != Some(&'r') {
        return None;
    }
    j += 1;
    let mut count = 0;
    while chars.get(j) == Some(&'#') {
        count += 1;
        j += 1;
    }
    (chars.get(j) == Some(&'"')).then_some(RawStart {
        prefix_len: j + 1 - i,
        count,
    })
}

/// `'x'`, `'\n'`, `'\u{1F600}'` are char literals; `'a` in `&'a str` is a lifetime.
fn is_char_literal(chars: &[char], i: usize) -> bool {
    matches!(
        (chars.get(i + 1), chars.get(i + 2)),
        (Some('\\'), _) | (Some(_), Some('\''))
    )
}

fn is_ident(c: char) -> bool {
    c.is_alphanumeric() || c == '_'
}

/// Skips whitespace from `i`.
fn skip_space(chars: &[char], mut i: usize) -> usize {
    while chars.get(i).is_some_and(|c| c.is_whitespace()) {
        i += 1;
    }
    i
}

/// Reads an identifier at `i`: (the identifier, the index after it).
fn ident_at(chars: &[char], i: usize) -> Option<(String, usize)> {
    let mut j = i;
    while chars.get(j).copied().is_some_and(is_ident) {
        j += 1;
    }
    (j > i).then(|| (chars[i..j].iter().collect(), j))
}

/// Every top-level crate module a (blanked) source references, with the 1-based line.
fn crate_references(blanked: &str) -> Vec<(String, usize)> {
    let chars: Vec<char> = blanked.chars().collect();
    let line_of = |i: usize| 1 + chars[..i].iter().filter(|c| **c == '\n').count();
    let mut found = Vec::new();
    let mut i = 0;
    while i + 5 <= chars.len() {
        let is_crate = chars[i..i + 5].iter().copied().eq("crate".chars())
            && (i == 0 || !is_ident(chars[i - 1]))
            && !chars.get(i + 5).copied().is_some_and(is_ident);
        if !is_crate {
            i += 1;
            continue;
        }
        let at = i;
        i += 5;
        let j = skip_space(&chars, i);
        if chars.get(j) != Some(&':') || chars.get(j + 1) != Some(&':') {
            continue;
        }
        let j = skip_space(&chars, j + 2);
        if chars.get(j) == Some(&'{') {
            let (names, end) = brace_group_heads(&chars, j);
            found.extend(names.into_iter().map(|name| (name, line_of(at))));
            i = end;
        } else if let Some((name, end)) = ident_at(&chars, j) {
            // `crate::some_macro!` is a macro exported at the root, not a module.
            if chars.get(skip_space(&chars, end)) != Some(&'!') {
                found.push((name, line_of(at)));
            }
            i = end;
        }
    }
    found
}

/// The first name of every item in the brace group opening at `open` (`{a::b, c, d::{e, f}}` →
/// `a`, `c`, `d`); `self` and globs name the root itself and are kept as written. Returns the
/// names and the index after the closing brace.
fn brace_group_heads(chars: &[char], open: usize) -> (Vec<String>, usize) {
    let mut names = Vec::new();
    let mut depth = 0;
    let mut expect_head = true;
    let mut i = open;
    while i < chars.len() {
        match chars[i] {
            '{' => {
                depth += 1;
                expect_head = depth == 1;
                i += 1;
            }
            '}' => {
                depth -= 1;
                i += 1;
                if depth == 0 {
                    break;
                }
            }
            ',' if depth == 1 => {
                expect_head = true;
                i += 1;
            }
            '*' if depth == 1 && expect_head => {
                names.push("*".to_owned());
                expect_head = false;
                i += 1;
            }
            c if depth == 1 && expect_head && is_ident(c) => {
                if let Some((name, end)) = ident_at(chars, i) {
                    names.push(name);
                    i = end;
                }
                expect_head = false;
            }
            _ => i += 1,
        }
    }
    names.retain(|name| name != "self");
    (names, i)
}

fn rust_files(dir: &Path, files: &mut Vec<PathBuf>) -> io::Result<()> {
    for entry in fs::read_dir(dir)? {
        let path = entry?.path();
        if path.is_dir() {
            rust_files(&path, files)?;
        } else if path.extension().is_some_and(|e| e == "rs") {
            files.push(path);
        }
    }
    Ok(())
}

/// The layer a file under `src/` belongs to: `src/jobs/engine.rs` and `src/jobs.rs` are `jobs`.
fn layer_of(relative: &Path) -> Option<String> {
    let first = relative.components().next()?.as_os_str().to_str()?;
    Some(first.strip_suffix(".rs").unwrap_or(first).to_owned())
}

#[test]
fn lower_layers_never_import_higher_ones() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    rust_files(&src, &mut files).unwrap();
    files.sort();
    let mut checked = BTreeSet::new();
    let mut violations = Vec::new();
    for file in &files {
        let relative = file.strip_prefix(&src).unwrap();
        let Some(layer) = layer_of(relative) else {
            continue;
        };
        let Some((_, rule)) = RULES.iter().find(|(name, _)| *name == layer) else {
            continue;
        };
        checked.insert(layer.clone());
        let source = fs::read_to_string(file).unwrap();
        for (module, line) in crate_references(&blank_comments_and_strings(&source)) {
            if !rule.allows(&module) {
                violations.push(format!(
                    "src/{}:{line}: crate::{module}",
                    relative.display()
                ));
            }
        }
    }
    // Every layer the rules name exists, so a rename cannot silently switch a rule off.
    let named: BTreeSet<String> = RULES.iter().map(|(n, _)| (*n).to_owned()).collect();
    assert_eq!(checked, named, "layers named in RULES but not found");
    assert!(
        violations.is_empty(),
        "{} upward reference(s):\n  {}",
        violations.len(),
        violations.join("\n  ")
    );
}

#[test]
fn comments_and_strings_do_not_count_but_every_path_form_does() {
    let source = r##"
//! Talks about crate::http in a doc comment.
use crate::{
    config::{self, Config},
    types::{JobId, /* crate::state */ JobKind},
    store, error::{ErrorChain, nested::{Deep}},
    *,
};
use crate::upstream::UpstreamClient;
pub(crate) fn f<'a>(x: &'a str) -> char {
    let _ = "crate::jobs in a string";
    let _ = r#"crate::webhooks "quoted" in a raw string"#;
    let _ = 'c';
    crate :: retry::parse();
    crate::some_macro!();
    $crate::cache::get();
    let _ = '\'';
    crate::{self, telemetry};
    'x'
}
"##;
    let found: Vec<(String, usize)> = crate_references(&blank_comments_and_strings(source));
    let names: Vec<&str> = found.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(
        names,
        [
            "config",
            "types",
            "store",
            "error",
            "*",
            "upstream",
            "retry",
            "cache",
            "telemetry"
        ]
    );
    let lines: Vec<usize> = found.iter().map(|(_, l)| *l).collect();
    assert_eq!(lines, [3, 3, 3, 3, 3, 9, 14, 16, 18]);
}

#[test]
fn rules_allow_and_refuse_as_written() {
    let rule = |layer: &str| &RULES.iter().find(|(n, _)| *n == layer).unwrap().1;
    assert!(rule("types").allows("types"));
    assert!(!rule("types").allows("config"));
    assert!(rule("store").allows("error"));
    assert!(!rule("store").allows("jobs"));
    assert!(rule("upstream").allows("retry"));
    assert!(!rule("upstream").allows("store"));
    assert!(rule("webhooks").allows("store"));
    assert!(!rule("webhooks").allows("jobs"));
    assert!(rule("jobs").allows("webhooks"));
    assert!(!rule("jobs").allows("state"));
    assert_eq!(
        layer_of(Path::new("jobs/merge/scan.rs")).as_deref(),
        Some("jobs")
    );
    assert_eq!(layer_of(Path::new("retry.rs")).as_deref(), Some("retry"));
}
