//! Data flows one way through the stage modules: a stage may read what an earlier stage declares, never what a
//! later one does, and the libraries the stages share (models, media, dataset, optim, charts, ...) import no stage
//! at all. A reader can then follow the pipeline front to back without being sent forward and back again.
//!
//! The check reads the sources: every path that starts with `crate::`, including the names inside a
//! `use crate::{...}` group, is resolved to its top-level module.

use std::fs;
use std::path::{Path, PathBuf};

/// The stages in data-flow order.
const STAGES: [&str; 10] = [
    "world", "ingest", "embedder", "embed", "mine", "shards", "train", "eval", "report", "release",
];

/// Modules every stage may use, which must therefore use no stage.
const LIBRARIES: [&str; 14] = [
    "atomic",
    "charts",
    "dataset",
    "device",
    "digest",
    "distributed",
    "malloc",
    "media",
    "modality",
    "models",
    "optim",
    "progress",
    "schema",
    "shard",
];

/// Modules that sit above the stages and may use all of them (the memory plan reads every stage's config).
const ORCHESTRATION: [&str; 7] = [
    "cli", "inspect", "lib", "main", "pipeline", "plan", "stages",
];

fn src() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("src")
}

/// The `.rs` files of a top-level module: `src/<name>.rs` and everything under `src/<name>/`.
fn module_files(name: &str) -> Vec<PathBuf> {
    let mut files = Vec::new();
    let single = src().join(format!("{name}.rs"));
    if single.is_file() {
        files.push(single);
    }
    collect_rs(&src().join(name), &mut files);
    files.sort();
    files
}

fn collect_rs(dir: &Path, out: &mut Vec<PathBuf>) {
    let Ok(entries) = fs::read_dir(dir) else {
        return;
    };
    for entry in entries {
        let path = entry.unwrap().path();
        if path.is_dir() {
            collect_rs(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// The source with `//` comments removed, so doc links to other modules do not count as imports.
fn code_only(source: &str) -> String {
    source
        .lines()
        .map(|line| match line.find("//") {
            Some(at) if !line[..at].contains('"') => &line[..at],
            _ => line,
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// The top-level modules a source names through `crate::`, with the 1-based line of each mention.
fn crate_modules(source: &str) -> Vec<(String, usize)> {
    let code = code_only(source);
    let mut found = Vec::new();
    let mut rest = code.as_str();
    let mut offset = 0;
    while let Some(at) = rest.find("crate::") {
        let start = offset + at + "crate::".len();
        let line = code[..start].matches('\n').count() + 1;
        let after = &code[start..];
        if let Some(group) = after.strip_prefix('{') {
            found.extend(group_heads(group).into_iter().map(|m| (m, line)));
        } else {
            found.push((identifier(after), line));
        }
        offset = start;
        rest = &code[offset..];
    }
    found
}

/// The first path segment of every item in a `{...}` group (the text just after its opening brace).
fn group_heads(group: &str) -> Vec<String> {
    let mut heads = Vec::new();
    let mut depth = 0usize;
    let mut at_item_start = true;
    for (i, c) in group.char_indices() {
        match c {
            '{' => depth += 1,
            '}' if depth == 0 => break,
            '}' => depth -= 1,
            ',' if depth == 0 => at_item_start = true,
            c if at_item_start && depth == 0 && (c.is_alphanumeric() || c == '_') => {
                heads.push(identifier(&group[i..]));
                at_item_start = false;
            }
            _ => {}
        }
    }
    heads
}

fn identifier(text: &str) -> String {
    text.chars()
        .take_while(|c| c.is_alphanumeric() || *c == '_')
        .collect()
}

/// Every use of a forbidden module from `module`'s files, as "file:line uses crate::x".
fn violations(module: &str, forbidden: &[&str]) -> Vec<String> {
    let mut found = Vec::new();
    for file in module_files(module) {
        let source = fs::read_to_string(&file).unwrap();
        for (used, line) in crate_modules(&source) {
            if forbidden.contains(&used.as_str()) {
                let shown = file.strip_prefix(src()).unwrap().display();
                found.push(format!("src/{shown}:{line} uses crate::{used}"));
            }
        }
    }
    found
}

#[test]
fn no_stage_imports_a_later_stage() {
    let mut found = Vec::new();
    for (i, stage) in STAGES.iter().enumerate() {
        assert!(
            !module_files(stage).is_empty(),
            "stage module {stage} not found"
        );
        found.extend(violations(stage, &STAGES[i + 1..]));
    }
    assert!(
        found.is_empty(),
        "stages must import only earlier stages ({}):\n{}",
        STAGES.join(" -> "),
        found.join("\n")
    );
}

#[test]
fn the_shared_libraries_import_no_stage_and_no_orchestration() {
    let above: Vec<&str> = STAGES.iter().chain(ORCHESTRATION.iter()).copied().collect();
    let found: Vec<String> = LIBRARIES
        .iter()
        .flat_map(|library| violations(library, &above))
        .collect();
    assert!(
        found.is_empty(),
        "shared libraries must not import stages or the runner:\n{}",
        found.join("\n")
    );
}

/// A module that is in none of the lists would escape both checks, so every top-level module must be placed.
#[test]
fn every_top_level_module_has_a_place_in_the_order() {
    let placed: Vec<&str> = STAGES
        .iter()
        .chain(LIBRARIES.iter())
        .chain(ORCHESTRATION.iter())
        .copied()
        .collect();
    let mut unplaced = Vec::new();
    for entry in fs::read_dir(src()).unwrap() {
        let path = entry.unwrap().path();
        let name = path.file_stem().unwrap().to_string_lossy().into_owned();
        if !placed.contains(&name.as_str()) {
            unplaced.push(name);
        }
    }
    unplaced.sort();
    assert!(
        unplaced.is_empty(),
        "place these modules among the stages, the shared libraries or the orchestration: {unplaced:?}"
    );
}

#[test]
fn the_scan_sees_grouped_nested_and_plain_paths() {
    let source = "use crate::{eval::X, train::{a, b}, report};\n// crate::release is only a comment\nlet y = crate::mine::f();\n";
    let found = crate_modules(source);
    let names: Vec<&str> = found.iter().map(|(m, _)| m.as_str()).collect();
    assert_eq!(names, ["eval", "train", "report", "mine"]);
    assert_eq!(found[3].1, 3);
}
