//! The crate's modules in layers, and a check that each uses only modules
//! in layers below its own (docs/ARCHITECTURE.md draws them). A module is
//! a file of `src/` or a folder of them (`log/`, `hub/`, …); the layer
//! folders (`values/`, `access/`, `requests/`, `delivery/`) only group, so
//! each file or folder inside one is a module of its own. A use is any
//! `crate::name` (or `crate::group::name`) path outside a comment.

use std::collections::BTreeSet;
use std::path::Path;

/// Bottom first. Modules of one layer may not use each other either.
const LAYERS: &[&[&str]] = &[
    &["topic", "id", "json", "schema", "blocking", "hangup"],
    &["pattern", "sse"],
    &["event"],
    &["selector"],
    &["log"],
    &["config"],
    &["auth", "limits", "rate"],
    &["publish", "subscribe"],
    &["inbox", "outlet"],
    &["connection", "index", "handoff"],
    &["courier"],
    &["fanout"],
    &["metrics"],
    &["state"],
    &["stream", "poll"],
    &["hub"],
    &["http"],
    &["server"],
    &["fuzz"],
];

/// Folders that group modules of neighbouring layers; `src/` shows them.
const GROUPS: &[&str] = &["values", "access", "requests", "delivery"];

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

/// The module a file belongs to: its first path component under `src/`,
/// or its second under a group folder (`None` for a group's `mod.rs`,
/// which only declares).
fn module_of(src: &Path, file: &Path) -> Option<String> {
    let rel = file.strip_prefix(src).unwrap();
    let parts: Vec<String> = rel
        .components()
        .map(|c| {
            c.as_os_str()
                .to_string_lossy()
                .trim_end_matches(".rs")
                .to_owned()
        })
        .collect();
    if GROUPS.contains(&parts[0].as_str()) {
        return parts.get(1).filter(|p| *p != "mod").cloned();
    }
    Some(parts[0].clone())
}

fn ident(text: &str) -> String {
    text.chars()
        .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
        .collect()
}

/// Every `crate::name` outside `//` comments.
fn uses(text: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    for line in text.lines().filter(|l| !l.trim_start().starts_with("//")) {
        let mut rest = line;
        while let Some(at) = rest.find("crate::") {
            rest = &rest[at + "crate::".len()..];
            let mut name = ident(rest);
            if GROUPS.contains(&name.as_str()) && rest[name.len()..].starts_with("::") {
                name = ident(&rest[name.len() + 2..]);
            }
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
        let Some(module) = module_of(&src, file) else {
            continue;
        };
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
        uses("use crate::hub::Hub;\n// crate::http in a comment\nlet x = crate::log::now_ms();\nuse crate::delivery::stream::Writer;");
    assert_eq!(
        found,
        ["hub", "log", "stream"]
            .into_iter()
            .map(String::from)
            .collect::<BTreeSet<_>>()
    );
    assert!(rank("hub") > rank("stream"), "the hub is above the stream");
}
