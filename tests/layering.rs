//! The layer rule of `src/lib.rs`, enforced: every `crate::<module>` import
//! in `src/**.rs` must go down the table below (or sideways where the table
//! says so). A module that imports from a layer above it fails this test
//! with the file and line, before it can grow into an import cycle.

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};

/// Each top-level module and the modules it may import from: the layers of
/// `lib.rs`, each row the one below it plus what that adds.
fn allowed() -> BTreeMap<&'static str, Vec<&'static str>> {
    let with = |base: &[&'static str], more: &[&'static str]| -> Vec<&'static str> {
        more.iter().chain(base).copied().collect()
    };
    // foundations: only wire below them (blocking: wire and tls)
    let foundations = ["blocking", "tls", "ops", "config", "error", "sys", "wire"];
    // stages, with the sideways plug-ins named in lib.rs
    let below_worker = with(
        &foundations,
        &[
            "gate",
            "route",
            "cache",
            "downstream",
            "relay",
            "upstream",
            "acme",
        ],
    );
    let below_handlers = with(&below_worker, &["worker", "landing"]);
    let below_conn = with(&below_worker, &["worker", "pull", "token", "local"]);
    let mut t = BTreeMap::new();
    t.insert("wire", vec![]);
    t.insert("sys", vec![]);
    t.insert("tls", vec!["wire"]);
    t.insert("blocking", vec!["wire", "tls"]);
    t.insert("error", vec!["wire"]);
    // `config check` asks tls whether a certificate fits its key.
    t.insert("config", vec!["wire", "tls"]);
    t.insert("ops", vec!["wire", "config", "error", "sys"]);
    t.insert("upstream", foundations.to_vec());
    t.insert("route", foundations.to_vec());
    t.insert("gate", foundations.to_vec());
    t.insert("acme", foundations.to_vec());
    t.insert("cache", with(&foundations, &["relay", "upstream"]));
    t.insert("relay", with(&foundations, &["upstream"]));
    // the pacer of shaped bodies sits in the metered client stream
    t.insert("downstream", with(&foundations, &["relay", "gate"]));
    t.insert("worker", below_worker.clone());
    t.insert("pull", below_handlers.clone());
    t.insert("local", below_handlers.clone());
    t.insert("landing", below_handlers.clone());
    t.insert("token", with(&below_worker, &["worker", "pull"]));
    t.insert("conn", below_conn);
    t.insert(
        "server",
        with(&below_worker, &["conn", "worker"])
            .into_iter()
            .filter(|m| *m != "route")
            .collect(),
    );
    t
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for e in fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            rust_files(&p, out);
        } else if p.extension().is_some_and(|x| x == "rs") {
            out.push(p);
        }
    }
}

/// The top-level module a file belongs to (`src/relay/tls.rs` -> `relay`).
fn module_of(src: &Path, file: &Path) -> Option<String> {
    let rel = file.strip_prefix(src).ok()?;
    let first = rel.components().next()?.as_os_str().to_str()?;
    Some(first.trim_end_matches(".rs").to_string())
}

/// Modules named by `crate::<m>` anywhere on a line: in `use` items, in
/// paths, and in `use crate::{a, b}` groups.
fn imported(line: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut rest = line;
    while let Some(i) = rest.find("crate::") {
        rest = &rest[i + "crate::".len()..];
        if let Some(group) = rest.strip_prefix('{') {
            let end = group.find('}').unwrap_or(group.len());
            for item in group[..end].split(',') {
                let name: String = item
                    .trim()
                    .chars()
                    .take_while(|c| c.is_alphanumeric() || *c == '_')
                    .collect();
                if !name.is_empty() {
                    out.push(name);
                }
            }
        } else {
            let name: String = rest
                .chars()
                .take_while(|c| c.is_alphanumeric() || *c == '_')
                .collect();
            if !name.is_empty() {
                out.push(name);
            }
        }
    }
    out
}

#[test]
fn modules_import_only_from_layers_below() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let table = allowed();
    let mut files = Vec::new();
    rust_files(&src, &mut files);
    files.sort();
    let mut violations = Vec::new();
    let mut seen = 0;
    for f in &files {
        let Some(from) = module_of(&src, f) else {
            continue;
        };
        if from == "main" || from == "lib" {
            continue; // the binary and the crate map sit above everything
        }
        let Some(may) = table.get(from.as_str()) else {
            violations.push(format!(
                "{}: module `{from}` is not in the layer table of tests/layering.rs",
                f.display()
            ));
            continue;
        };
        let text = fs::read_to_string(f).unwrap();
        for (n, line) in text.lines().enumerate() {
            let code = line.split("//").next().unwrap_or("");
            for to in imported(code) {
                seen += 1;
                // `crate::event!` is the log macro, which lives in ops.
                let to = if to == "event" { "ops".to_string() } else { to };
                if to != from && !may.contains(&to.as_str()) {
                    violations.push(format!(
                        "{}:{}: `{from}` imports from `{to}`, which is not below it",
                        f.display(),
                        n + 1
                    ));
                }
            }
        }
    }
    assert!(
        seen > 100,
        "only {seen} crate imports found: is the scan broken?"
    );
    assert!(violations.is_empty(), "{}", violations.join("\n"));
}

#[test]
fn the_scan_sees_grouped_and_path_imports() {
    assert_eq!(
        imported("use crate::{local, pull, token};"),
        ["local", "pull", "token"]
    );
    assert_eq!(
        imported("let x = crate::relay::io::write(crate::wire::http::X);"),
        ["relay", "wire"]
    );
    assert!(imported("// no imports here").is_empty());
}

#[test]
fn every_module_has_a_row_and_every_row_a_module() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let lib = fs::read_to_string(src.join("lib.rs")).unwrap();
    let declared: Vec<&str> = lib
        .lines()
        .filter_map(|l| l.trim().strip_prefix("pub mod "))
        .map(|l| l.trim_end_matches(';'))
        .collect();
    let table = allowed();
    for m in &declared {
        assert!(
            table.contains_key(m),
            "module `{m}` has no row in the layer table"
        );
    }
    for m in table.keys() {
        assert!(
            declared.contains(m),
            "the layer table names `{m}`, which lib.rs does not declare"
        );
    }
}
