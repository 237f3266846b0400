//! The design lives in the repository: no source, pipeline, schema, benchmark, script or README line cites design
//! notes kept outside it, and every `docs/<file>.md#<anchor>` reference (and every link between the docs files)
//! lands on a heading that exists, so a reader who follows one finds the section it means.

use std::fs;
use std::path::{Path, PathBuf};

/// Where references to the design are made, relative to the repository root.
const CITING: [&str; 10] = [
    "src",
    "pipelines",
    "schemas",
    "benches",
    "examples",
    "tests",
    "scripts",
    ".ci",
    "build.rs",
    "README.md",
];

/// Citations of design notes that users of the repository do not have.
const OUTSIDE: [&str; 4] = ["DESIGN §", "DESIGN.md", "DESIGN section", "../shared"];

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// Every text file under `path` (or `path` itself), skipping binary fixtures and this file, which names the
/// citations it looks for.
fn text_files(path: &Path) -> Vec<(PathBuf, String)> {
    if path.is_dir() {
        let mut entries: Vec<PathBuf> = fs::read_dir(path)
            .unwrap()
            .map(|e| e.unwrap().path())
            .collect();
        entries.sort();
        return entries.iter().flat_map(|p| text_files(p)).collect();
    }
    if path.ends_with(file!()) {
        return Vec::new();
    }
    match String::from_utf8(fs::read(path).unwrap()) {
        Ok(text) => vec![(path.to_path_buf(), text)],
        Err(_) => Vec::new(),
    }
}

fn citing_files() -> Vec<(PathBuf, String)> {
    CITING
        .iter()
        .flat_map(|place| text_files(&root().join(place)))
        .collect()
}

/// `path:line: text` for a problem found on line `line` (0-based) of `path`.
fn located(path: &Path, line: usize, text: &str) -> String {
    let relative = path.strip_prefix(root()).unwrap_or(path);
    format!("{}:{}: {text}", relative.display(), line + 1)
}

/// GitHub's anchor for a heading: lower case, spaces to `-`, every other character but letters, digits, `-` and
/// `_` dropped.
fn anchor(heading: &str) -> String {
    heading
        .trim()
        .to_lowercase()
        .chars()
        .filter_map(|c| match c {
            ' ' => Some('-'),
            c if c.is_alphanumeric() || c == '-' || c == '_' => Some(c),
            _ => None,
        })
        .collect()
}

/// The anchors of a markdown file's headings, ignoring `#` lines inside code blocks.
fn anchors(markdown: &str) -> Vec<String> {
    let mut in_code = false;
    let mut out = Vec::new();
    for line in markdown.lines() {
        if line.trim_start().starts_with("```") {
            in_code = !in_code;
        } else if !in_code && line.starts_with('#') {
            out.push(anchor(line.trim_start_matches('#')));
        }
    }
    out
}

/// Whether `file` (a name under docs/) exists and, when `fragment` is given, has a heading with that anchor.
fn resolves(file: &str, fragment: Option<&str>) -> Result<(), String> {
    let path = root().join("docs").join(file);
    let text = fs::read_to_string(&path).map_err(|_| format!("docs/{file} does not exist"))?;
    match fragment {
        Some(wanted) if !anchors(&text).iter().any(|a| a == wanted) => {
            Err(format!("docs/{file} has no heading #{wanted}"))
        }
        _ => Ok(()),
    }
}

fn is_name_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || c == '-' || c == '_'
}

/// The `(file, anchor)` of each `docs/<file>.md[#anchor]` reference in `line`.
fn doc_references(line: &str) -> Vec<(String, Option<String>)> {
    line.match_indices("docs/")
        .filter_map(|(at, _)| {
            let rest = &line[at + "docs/".len()..];
            let name_len = rest.find(|c| !is_name_char(c)).unwrap_or(rest.len());
            let after = rest[name_len..].strip_prefix(".md")?;
            let fragment = after.strip_prefix('#').map(|f| {
                let len = f.find(|c| !is_name_char(c)).unwrap_or(f.len());
                f[..len].to_string()
            });
            Some((format!("{}.md", &rest[..name_len]), fragment))
        })
        .collect()
}

/// The `(file, anchor)` of each relative markdown link `](file.md#anchor)` or `](#anchor)` in a docs file's
/// `line`; a link without a file points into `this` file.
fn markdown_links(line: &str, this: &str) -> Vec<(String, Option<String>)> {
    line.match_indices("](")
        .filter_map(|(at, _)| {
            let target = &line[at + 2..];
            let target = &target[..target.find(')')?];
            if target.contains("://") {
                return None;
            }
            let (file, fragment) = match target.split_once('#') {
                Some((file, fragment)) => (file, Some(fragment.to_string())),
                None => (target, None),
            };
            let file = if file.is_empty() { this } else { file };
            file.ends_with(".md")
                .then(|| (file.trim_start_matches("./").to_string(), fragment))
        })
        .collect()
}

fn docs_files() -> Vec<(String, String)> {
    text_files(&root().join("docs"))
        .into_iter()
        .map(|(path, text)| {
            let name = path.file_name().unwrap().to_string_lossy().into_owned();
            (name, text)
        })
        .collect()
}

#[test]
fn nothing_cites_design_notes_outside_the_repository() {
    let mut found = Vec::new();
    for (path, text) in citing_files() {
        for (n, line) in text.lines().enumerate() {
            if OUTSIDE.iter().any(|citation| line.contains(citation)) {
                found.push(located(&path, n, line.trim()));
            }
        }
    }
    assert!(
        found.is_empty(),
        "citations of design notes outside the repository (point at docs/ instead):\n{}",
        found.join("\n")
    );
}

#[test]
fn every_docs_reference_lands_on_a_heading() {
    let mut broken = Vec::new();
    let mut references = 0;
    for (path, text) in citing_files() {
        for (n, line) in text.lines().enumerate() {
            for (file, fragment) in doc_references(line) {
                references += 1;
                if let Err(e) = resolves(&file, fragment.as_deref()) {
                    broken.push(located(&path, n, &e));
                }
            }
        }
    }
    assert!(
        references > 50,
        "only {references} docs/ references found: is the scan looking in the right places?"
    );
    assert!(
        broken.is_empty(),
        "docs/ references that lead nowhere:\n{}",
        broken.join("\n")
    );
}

#[test]
fn every_link_between_docs_files_lands_on_a_heading() {
    let mut broken = Vec::new();
    for (name, text) in docs_files() {
        for (n, line) in text.lines().enumerate() {
            for (file, fragment) in markdown_links(line, &name) {
                if let Err(e) = resolves(&file, fragment.as_deref()) {
                    broken.push(format!("docs/{name}:{}: {e}", n + 1));
                }
            }
        }
    }
    assert!(
        broken.is_empty(),
        "links in docs/ that lead nowhere:\n{}",
        broken.join("\n")
    );
}

#[test]
fn anchors_are_githubs() {
    assert_eq!(
        anchor(" Positive-aware false-negative filter"),
        "positive-aware-false-negative-filter"
    );
    assert_eq!(
        anchor("Config files: transformers 4/5"),
        "config-files-transformers-45"
    );
    assert_eq!(anchor("The τ-mask (`tau`)"), "the-τ-mask-tau");
    assert_eq!(
        doc_references("see docs/mining.md#false-negative-filter, and docs/design.md."),
        [
            (
                "mining.md".to_string(),
                Some("false-negative-filter".to_string())
            ),
            ("design.md".to_string(), None)
        ]
    );
}
