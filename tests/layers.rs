//! The shape of `src/`, checked: no two modules import each other, directly
//! or through others, and nothing below the wire layer knows a transport
//! (tonic, axum, the `wire` modules; `auth::jwks` fetching keys with hyper
//! is a client, not a transport of this service).
//!
//! Modules are the files under `src/` (a folder's `mod.rs` is the folder).
//! A reference from one module to another (`crate::a::b`, `super::x`) is an
//! edge between the two siblings that contain them, under their nearest
//! common parent: `wire::http` using `wire::convert` is an edge
//! http -> convert under `wire`. A parent using its child, or a child its
//! parent (`super::Thing` in `store::sled`), is not an edge: that is what a
//! module and its parts are. A cycle among siblings is a failure.

use std::{
    collections::{BTreeMap, BTreeSet},
    path::{Path, PathBuf},
};

/// Every module of the crate: its path (`["wire", "http"]`) and source.
fn modules() -> Vec<(Vec<String>, String)> {
    fn walk(dir: &Path, out: &mut Vec<PathBuf>) {
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                walk(&path, out);
            } else if path.extension().is_some_and(|e| e == "rs") {
                out.push(path);
            }
        }
    }
    // CHAT_LAYERS_SRC: another checkout's src/, to see the check fail there.
    let src = std::env::var_os("CHAT_LAYERS_SRC")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("src"));
    let mut files = Vec::new();
    walk(&src, &mut files);
    files
        .into_iter()
        // The binaries are crates of their own.
        .filter(|f| !f.starts_with(src.join("bin")) && !f.ends_with("main.rs"))
        .map(|f| {
            let rel = f.strip_prefix(&src).unwrap().with_extension("");
            let mut path: Vec<String> = rel
                .iter()
                .map(|p| p.to_string_lossy().into_owned())
                .collect();
            if matches!(path.last().map(String::as_str), Some("mod" | "lib")) {
                path.pop();
            }
            (path, std::fs::read_to_string(&f).unwrap())
        })
        .collect()
}

/// The paths a use tree names, in full: `a::{b::c, d}` is `a::b::c` and
/// `a::d`. `text` starts at the tree; it ends where the tree does.
fn expand(prefix: &[String], text: &str, out: &mut Vec<Vec<String>>) {
    let mut path = prefix.to_vec();
    let mut rest = text.trim_start();
    loop {
        if let Some(group) = rest.strip_prefix('{') {
            // Split the group at its top-level commas.
            let (mut depth, mut start) = (0, 0);
            for (i, c) in group.char_indices() {
                match c {
                    '{' => depth += 1,
                    '}' if depth == 0 => {
                        expand(&path, &group[start..i], out);
                        return;
                    }
                    '}' => depth -= 1,
                    ',' if depth == 0 => {
                        expand(&path, &group[start..i], out);
                        start = i + 1;
                    }
                    _ => {}
                }
            }
            return;
        }
        let name: String = rest
            .chars()
            .take_while(|c| c.is_alphanumeric() || *c == '_')
            .collect();
        if name.is_empty() {
            break;
        }
        path.push(name.clone());
        rest = &rest[name.len()..];
        match rest.strip_prefix("::") {
            Some(more) => rest = more.trim_start(),
            None => break,
        }
    }
    out.push(path);
}

/// The module paths a source refers to (`crate::…`, `super::…`, in `use`
/// trees or inline), resolved against `at`, the module the source is.
fn references(at: &[String], source: &str) -> Vec<Vec<String>> {
    let code: String = source
        .lines()
        .map(|l| l.split("//").next().unwrap_or_default())
        .collect::<Vec<_>>()
        .join("\n");
    let mut found = Vec::new();
    let parent = at[..at.len().saturating_sub(1)].to_vec();
    for (root, base) in [("crate::", Vec::new()), ("super::", parent)] {
        for (i, _) in code.match_indices(root) {
            let before = code[..i].chars().next_back();
            if before.is_some_and(|c| c.is_alphanumeric() || c == '_' || c == ':' || c == '$') {
                continue;
            }
            expand(&base, &code[i + root.len()..], &mut found);
        }
    }
    found
}

#[test]
fn no_two_modules_under_src_import_each_other() {
    let modules = modules();
    let known: BTreeSet<Vec<String>> = modules.iter().map(|(p, _)| p.clone()).collect();
    // (parent, from sibling) -> to siblings
    let mut edges: BTreeMap<(Vec<String>, String), BTreeSet<String>> = BTreeMap::new();
    for (from, source) in &modules {
        for mut to in references(from, source) {
            while !to.is_empty() && !known.contains(&to) {
                to.pop();
            }
            let common = from.iter().zip(&to).take_while(|(a, b)| a == b).count();
            if common == from.len() || common == to.len() {
                continue; // itself, a parent or a child
            }
            edges
                .entry((from[..common].to_vec(), from[common].clone()))
                .or_default()
                .insert(to[common].clone());
        }
    }
    // A cycle: a sibling that reaches itself.
    let mut cycles = Vec::new();
    for (parent, start) in edges.keys() {
        let mut stack = vec![(start.clone(), vec![start.clone()])];
        let mut seen = BTreeSet::new();
        while let Some((at, trail)) = stack.pop() {
            for next in edges
                .get(&(parent.clone(), at.clone()))
                .into_iter()
                .flatten()
            {
                if next == start {
                    let mut cycle = trail.clone();
                    cycle.push(next.clone());
                    cycles.push(format!(
                        "crate::{}: {}",
                        parent.join("::"),
                        cycle.join(" -> ")
                    ));
                } else if seen.insert(next.clone()) {
                    let mut longer = trail.clone();
                    longer.push(next.clone());
                    stack.push((next.clone(), longer));
                }
            }
        }
    }
    assert!(
        cycles.is_empty(),
        "modules that import each other:\n{}",
        cycles.join("\n")
    );
    // The check sees the edges it should (it could not fail otherwise).
    let wire = |m: &str| (vec!["wire".to_string()], m.to_string());
    assert!(edges[&wire("http")].contains("calls"), "{edges:?}");
    assert!(edges[&(Vec::new(), "chat".to_string())].contains("store"));
}

#[test]
fn nothing_below_the_wire_layer_knows_a_transport() {
    let below = ["chat", "store", "model", "transfer", "auth", "metrics"];
    let mut found = Vec::new();
    for (path, source) in modules() {
        if !path.first().is_some_and(|m| below.contains(&m.as_str())) {
            continue;
        }
        for (n, line) in source.lines().enumerate() {
            let code = line.split("//").next().unwrap_or_default();
            for word in ["tonic", "axum", "crate::wire"] {
                if code.contains(word) {
                    found.push(format!("{}:{}: {}", path.join("/"), n + 1, line.trim()));
                }
            }
        }
    }
    assert!(
        found.is_empty(),
        "transports below the wire layer:\n{}",
        found.join("\n")
    );
}
