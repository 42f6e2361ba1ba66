//! The layer rule (docs/DESIGN.md, "Layers"): a module of `src/` uses only modules of the layers below its own,
//! never one above it nor one beside it. The table is read from DESIGN.md, so it is written once; every
//! `crate::` path of the library's non-test code is checked against it, `use` lines and inline paths alike,
//! and every module must have a row.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// Layer number (0 the top) of each top-level module, from the table under "## Layers" in DESIGN.md: rows
/// `| n | `a`, `b` | ... |`.
fn layers() -> BTreeMap<String, usize> {
    let design = std::fs::read_to_string(root().join("docs/DESIGN.md")).expect("DESIGN.md");
    let section = design
        .split("\n## Layers\n")
        .nth(1)
        .expect("DESIGN.md has a section \"## Layers\"");
    let section = section.split("\n## ").next().unwrap_or(section);
    let mut out = BTreeMap::new();
    for line in section.lines().filter(|l| l.starts_with('|')) {
        let cells: Vec<&str> = line.split('|').map(str::trim).collect();
        let Some(n) = cells.get(1).and_then(|c| c.parse::<usize>().ok()) else {
            continue;
        };
        for m in cells[2].split(',') {
            let m = m.trim().trim_matches('`');
            assert!(
                out.insert(m.to_string(), n).is_none(),
                "module {m} has two rows in DESIGN.md's layer table"
            );
        }
    }
    assert!(!out.is_empty(), "no rows found in DESIGN.md's layer table");
    out
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for e in std::fs::read_dir(dir).expect("read src") {
        let p = e.expect("entry").path();
        if p.is_dir() {
            rust_files(&p, out);
        } else if p.extension().is_some_and(|x| x == "rs") {
            out.push(p);
        }
    }
}

/// A file's top-level module (`src/node/join.rs` → `node`), or `None` for the crate's root files.
fn module_of(rel: &Path) -> Option<String> {
    let first = rel
        .components()
        .next()?
        .as_os_str()
        .to_string_lossy()
        .to_string();
    let name = first.strip_suffix(".rs").unwrap_or(&first).to_string();
    (name != "lib" && name != "main").then_some(name)
}

/// Whether a file holds only tests (`tests.rs`, `conf_tests.rs`, `tests_values.rs`).
fn is_test_file(rel: &Path) -> bool {
    let stem = rel
        .file_stem()
        .map(|s| s.to_string_lossy().to_string())
        .unwrap_or_default();
    stem == "tests" || stem.ends_with("_tests") || stem.starts_with("tests_")
}

/// The code of `text` without comments and without the items marked `#[cfg(test)]` (a `mod` block or one
/// item, up to its closing brace at the same indentation).
fn non_test_code(text: &str) -> Vec<(usize, String)> {
    let mut out = Vec::new();
    let mut skip_until: Option<String> = None;
    let mut skipping_next_item = false;
    for (i, line) in text.lines().enumerate() {
        let trimmed = line.trim_start();
        if let Some(end) = &skip_until {
            if line.starts_with(end.as_str()) && line.trim() == "}" {
                skip_until = None;
            }
            continue;
        }
        if trimmed.starts_with("#[cfg(test)]") {
            skipping_next_item = true;
            continue;
        }
        if skipping_next_item {
            if trimmed.starts_with("#[") {
                continue;
            }
            skipping_next_item = false;
            let indent = &line[..line.len() - trimmed.len()];
            if !trimmed.ends_with(';') {
                skip_until = Some(format!("{indent}}}"));
            }
            continue;
        }
        let code = match line.find("//") {
            Some(at) => &line[..at],
            None => line,
        };
        out.push((i + 1, code.to_string()));
    }
    out
}

/// Lines kept by [`non_test_code`] as one text, with each of its lines' number in the file.
fn joined(kept: &[(usize, String)]) -> (String, Vec<usize>) {
    let text = kept
        .iter()
        .map(|(_, c)| c.as_str())
        .collect::<Vec<_>>()
        .join("\n");
    (text, kept.iter().map(|(n, _)| *n).collect())
}

/// The top-level modules a piece of code names through `crate::`, with the byte offset of each:
/// `crate::a::b`, and `use crate::{a, b::{c, d}}` (a group may span lines).
fn crate_paths(code: &str) -> Vec<(usize, String)> {
    let ident = |s: &str| -> String {
        s.trim_start()
            .chars()
            .take_while(|c| c.is_alphanumeric() || *c == '_')
            .collect()
    };
    let mut out = Vec::new();
    let mut from = 0;
    while let Some(found) = code[from..].find("crate::") {
        let at = from + found;
        from = at + "crate::".len();
        let before = code[..at].chars().last();
        if before.is_some_and(|c| c.is_alphanumeric() || c == '_') {
            continue; // `harmonylite_crate::` and the like
        }
        let rest = &code[from..];
        let Some(group) = rest.strip_prefix('{') else {
            let name = ident(rest);
            if !name.is_empty() {
                out.push((at, name));
            }
            continue;
        };
        // The names at depth 0 of the group: the first word after `{` and after each top-level comma.
        let mut depth = 0;
        let mut expect_name = true;
        for (i, c) in group.char_indices() {
            match c {
                '{' => depth += 1,
                '}' if depth == 0 => break,
                '}' => depth -= 1,
                ',' if depth == 0 => expect_name = true,
                c if expect_name && !c.is_whitespace() => {
                    expect_name = false;
                    let name = ident(&group[i..]);
                    if !name.is_empty() {
                        out.push((at, name));
                    }
                }
                _ => {}
            }
        }
    }
    out
}

#[test]
fn no_module_uses_one_above_it_or_beside_it() {
    let table = layers();
    let src = root().join("src");
    let mut files = Vec::new();
    rust_files(&src, &mut files);
    files.sort();
    let mut modules = BTreeSet::new();
    let mut violations = Vec::new();
    for file in &files {
        let rel = file.strip_prefix(&src).expect("under src");
        let Some(module) = module_of(rel) else {
            continue;
        };
        modules.insert(module.clone());
        if is_test_file(rel) {
            continue;
        }
        let Some(&mine) = table.get(&module) else {
            continue; // reported below
        };
        let text = std::fs::read_to_string(file).expect("read source");
        let (code, lines) = joined(&non_test_code(&text));
        for (at, used) in crate_paths(&code) {
            let line = lines[code[..at].matches('\n').count()];
            if used == module || used == "self" {
                continue;
            }
            match table.get(&used) {
                Some(&theirs) if theirs > mine => {}
                Some(&theirs) => violations.push(format!(
                    "src/{}:{line}: `crate::{used}` (layer {theirs}) from {module} (layer {mine}): {}",
                    rel.display(),
                    if theirs == mine { "same layer" } else { "points up" }
                )),
                None => violations.push(format!(
                    "src/{}:{line}: `crate::{used}` is not a module in the layer table",
                    rel.display()
                )),
            }
        }
    }
    let missing: Vec<&String> = modules.iter().filter(|m| !table.contains_key(*m)).collect();
    assert!(
        missing.is_empty(),
        "modules without a row in DESIGN.md's layer table: {missing:?}"
    );
    let gone: Vec<&String> = table.keys().filter(|m| !modules.contains(*m)).collect();
    assert!(
        gone.is_empty(),
        "the layer table names modules that do not exist: {gone:?}"
    );
    assert!(
        violations.is_empty(),
        "imports against the layer rule (DESIGN.md, \"Layers\"):\n{}",
        violations.join("\n")
    );
}

#[test]
fn the_checker_sees_use_groups_inline_paths_and_skips_tests_and_comments() {
    let names =
        |code: &str| -> Vec<String> { crate_paths(code).into_iter().map(|(_, n)| n).collect() };
    assert_eq!(
        names("use crate::{\n    config::{Config, Mode},\n    wire,\n    retry::Backoff,\n};"),
        ["config", "wire", "retry"]
    );
    assert_eq!(
        names("let x = crate::node::membership::removed(js); f(crate::ops::x)"),
        ["node", "ops"]
    );
    let code = "use crate::a;\n// crate::b in a comment\nfn f() {} // crate::c\n#[cfg(test)]\nmod tests {\n    use crate::d;\n}\n#[cfg(test)]\nfn g() {\n    crate::e::x();\n}\nuse crate::f;\n";
    let (text, lines) = joined(&non_test_code(code));
    let seen: Vec<(usize, String)> = crate_paths(&text)
        .into_iter()
        .map(|(at, n)| (lines[text[..at].matches('\n').count()], n))
        .collect();
    assert_eq!(seen, [(1, "a".to_string()), (12, "f".to_string())]);
}
