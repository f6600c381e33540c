//! The crate's modules in layers, and a check that each uses only modules
//! in layers below its own (docs/ARCHITECTURE.md draws them). A module is
//! a file of `src/` or a folder of them (`log/`, `hub/`, …); a use is any
//! `crate::name` path outside a comment.

use std::collections::BTreeSet;
use std::path::Path;

/// Bottom first. Modules of one layer may not use each other either.
const LAYERS: &[&[&str]] = &[
    &["topic", "id", "json", "schema", "blocking"],
    &["pattern", "sse"],
    &["event"],
    &["selector"],
    &["log"],
    &["config"],
    &["auth", "limits", "rate"],
    &["publish", "subscribe"],
    &["inbox"],
    &["connection", "index", "handoff"],
    &["fanout"],
    &["metrics"],
    &["state"],
    &["stream", "poll"],
    &["hub"],
    &["http"],
    &["server"],
    &["fuzz"],
];

fn rank(module: &str) -> Option<usize> {
    LAYERS.iter().position(|layer| layer.contains(&module))
}

fn rust_files(dir: &Path, out: &mut Vec<std::path::PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// The module a file belongs to: its first path component under `src/`.
fn module_of(src: &Path, file: &Path) -> String {
    let rel = file.strip_prefix(src).unwrap();
    let first = rel
        .components()
        .next()
        .unwrap()
        .as_os_str()
        .to_string_lossy();
    first.trim_end_matches(".rs").to_owned()
}

/// Every `crate::name` outside `//` comments.
fn uses(text: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    for line in text.lines().filter(|l| !l.trim_start().starts_with("//")) {
        let mut rest = line;
        while let Some(at) = rest.find("crate::") {
            rest = &rest[at + "crate::".len()..];
            let name: String = rest
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                .collect();
            out.insert(name);
        }
    }
    out
}

#[test]
fn every_module_uses_only_the_layers_below_it() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    rust_files(&src, &mut files);
    let mut unranked = BTreeSet::new();
    let mut upward = BTreeSet::new();
    for file in &files {
        let module = module_of(&src, file);
        if module == "lib" {
            continue;
        }
        let Some(own) = rank(&module) else {
            unranked.insert(module);
            continue;
        };
        let text = std::fs::read_to_string(file).unwrap();
        for used in uses(&text) {
            if used == module {
                continue;
            }
            match rank(&used) {
                Some(r) if r >= own => {
                    let rel = file.strip_prefix(&src).unwrap().display().to_string();
                    upward.insert(format!("{rel} uses crate::{used}"));
                }
                _ => {}
            }
        }
    }
    assert!(
        unranked.is_empty(),
        "modules missing from LAYERS in {}: {unranked:?}",
        file!()
    );
    assert!(
        upward.is_empty(),
        "uses of a module in the same layer or above (see docs/ARCHITECTURE.md):\n{}",
        upward.into_iter().collect::<Vec<_>>().join("\n")
    );
}

#[test]
fn the_check_sees_a_use_upward() {
    let found =
        uses("use crate::hub::Hub;\n// crate::http in a comment\nlet x = crate::log::now_ms();");
    assert_eq!(
        found,
        ["hub", "log"]
            .into_iter()
            .map(String::from)
            .collect::<BTreeSet<_>>()
    );
    assert!(rank("hub") > rank("stream"), "the hub is above the stream");
}
