//! The layers of `src/` (see `src/lib.rs`): every `crate::` and `super::`
//! path outside test modules is an arrow from its file to the module it
//! names. An arrow may only point to a layer the rule below allows, and the
//! arrows never close a circle.
//!
//! A folder is one module: its files may use the items of its `mod.rs`
//! (`super::App`), and `mod.rs` uses theirs. Any other two files, in one
//! folder or across folders, never reach each other both ways.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// What each layer may import, besides itself. `main` and `lib` may import
/// anything; `init` is the composition root.
const RULE: &[(&str, &[&str])] = &[
    (
        "init",
        &[
            "inbound", "app", "config", "error", "intake", "adapters", "domain", "ops", "support",
        ],
    ),
    (
        "inbound",
        &[
            "app", "config", "error", "intake", "domain", "ops", "support",
        ],
    ),
    (
        "app",
        &["config", "error", "intake", "domain", "ops", "support"],
    ),
    ("config", &["intake", "domain", "support"]),
    ("error", &["intake", "domain", "support"]),
    ("intake", &["domain", "ops", "support"]),
    ("adapters", &["domain", "ops", "support"]),
    ("domain", &["ops", "support"]),
    ("ops", &[]),
    ("support", &[]),
];

fn src() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("src")
}

/// Every `.rs` file under `src/`, as its module path (`app::tracking`;
/// `mod.rs` names its folder; `lib.rs` and `main.rs` are the root).
fn modules() -> BTreeMap<String, PathBuf> {
    fn walk(dir: &Path, out: &mut Vec<PathBuf>) {
        for entry in std::fs::read_dir(dir).unwrap() {
            let p = entry.unwrap().path();
            if p.is_dir() {
                walk(&p, out);
            } else if p.extension().is_some_and(|e| e == "rs") {
                out.push(p);
            }
        }
    }
    let mut files = Vec::new();
    walk(&src(), &mut files);
    files
        .into_iter()
        .map(|p| {
            let rel = p.strip_prefix(src()).unwrap().with_extension("");
            let mut parts: Vec<String> = rel
                .components()
                .map(|c| c.as_os_str().to_string_lossy().into_owned())
                .collect();
            if matches!(
                parts.last().map(String::as_str),
                Some("mod" | "lib" | "main")
            ) {
                parts.pop();
            }
            let name = if parts.is_empty() {
                format!("<{}>", p.file_stem().unwrap().to_string_lossy())
            } else {
                parts.join("::")
            };
            (name, p)
        })
        .collect()
}

/// The code without comments and without the test module at its end.
fn code(text: &str) -> String {
    let mut out = String::new();
    let mut lines = text.lines().peekable();
    while let Some(line) = lines.next() {
        let t = line.trim_start();
        if t.starts_with("#[cfg(test)]")
            && lines
                .peek()
                .is_some_and(|n| n.trim_start().starts_with("mod "))
        {
            break;
        }
        if t.starts_with("//") {
            continue;
        }
        out.push_str(line.split(" // ").next().unwrap_or(""));
        out.push('\n');
    }
    out
}

/// The paths a `use` tree names, expanded: `a::{b, c::{d}}` gives `a::b`,
/// `a::c::d`.
fn expand(prefix: &str, tree: &str, out: &mut Vec<String>) {
    let tree = tree.trim();
    if let Some(open) = tree.find('{') {
        let head = tree[..open].trim_end_matches("::").trim();
        let inner = &tree[open + 1..tree.rfind('}').unwrap_or(tree.len())];
        let base = join(prefix, head);
        let (mut depth, mut start) = (0, 0);
        for (i, c) in inner.char_indices() {
            match c {
                '{' => depth += 1,
                '}' => depth -= 1,
                ',' if depth == 0 => {
                    expand(&base, &inner[start..i], out);
                    start = i + 1;
                }
                _ => {}
            }
        }
        expand(&base, &inner[start..], out);
    } else if !tree.is_empty() {
        let path = tree.split(" as ").next().unwrap().trim();
        out.push(join(prefix, path));
    }
}

fn join(a: &str, b: &str) -> String {
    match (a.is_empty(), b.is_empty()) {
        (true, _) => b.to_string(),
        (_, true) => a.to_string(),
        _ => format!("{a}::{b}"),
    }
}

/// Every path of ours a file names: its `use` trees, and `crate::`,
/// `super::` paths in its code.
fn paths(code: &str) -> Vec<String> {
    let mut out = Vec::new();
    // A `use` item starts a line (after `pub` or `pub(crate)`) and runs to
    // its `;`.
    let mut offset = 0;
    for line in code.split_inclusive('\n') {
        let t = line.trim_start();
        let t = t
            .strip_prefix("pub(crate) ")
            .or_else(|| t.strip_prefix("pub "))
            .unwrap_or(t);
        if let Some(rest) = t.strip_prefix("use ") {
            let at = offset + (line.len() - rest.len());
            let tail = &code[at..];
            expand("", &tail[..tail.find(';').unwrap_or(tail.len())], &mut out);
        }
        offset += line.len();
    }
    for start in ["crate::", "super::"] {
        let mut from = 0;
        while let Some(i) = code[from..].find(start) {
            let at = from + i;
            let prev = code[..at].chars().last();
            let path: String = code[at..]
                .chars()
                .take_while(|c| c.is_alphanumeric() || *c == '_' || *c == ':')
                .collect();
            if prev.is_none_or(|c| !(c.is_alphanumeric() || c == '_' || c == ':')) {
                out.push(path.trim_end_matches(':').to_string());
            }
            from = at + start.len();
        }
    }
    out
}

/// The module a path names, from the file `from`: the longest prefix that
/// is a file of ours.
fn resolve(from: &str, path: &str, modules: &BTreeMap<String, PathBuf>) -> Option<String> {
    let mut parts: Vec<&str> = path.split("::").filter(|s| !s.is_empty()).collect();
    let mut base: Vec<String> = if from.starts_with('<') {
        Vec::new()
    } else {
        from.split("::").map(str::to_string).collect()
    };
    match parts.first() {
        Some(&"crate") => {
            base.clear();
            parts.remove(0);
        }
        Some(&"super") => {
            while parts.first() == Some(&"super") {
                parts.remove(0);
                base.pop();
            }
        }
        Some(&"self") => {
            parts.remove(0);
        }
        _ => return None,
    }
    let full: Vec<String> = base
        .into_iter()
        .chain(parts.iter().map(|s| s.to_string()))
        .collect();
    (1..=full.len())
        .rev()
        .map(|n| full[..n].join("::"))
        .find(|m| modules.contains_key(m))
}

fn layer(module: &str) -> &str {
    module.split("::").next().unwrap()
}

fn arrows() -> BTreeSet<(String, String)> {
    let modules = modules();
    let mut arrows = BTreeSet::new();
    for (name, file) in &modules {
        let code = code(&std::fs::read_to_string(file).unwrap());
        for p in paths(&code) {
            // `use` trees that start with an outside crate or `std` name
            // nothing of ours.
            if !(p.starts_with("crate") || p.starts_with("super") || p.starts_with("self")) {
                continue;
            }
            if let Some(to) = resolve(name, &p, &modules)
                && &to != name
            {
                arrows.insert((name.clone(), to));
            }
        }
    }
    arrows
}

#[test]
fn imports_point_only_down() {
    let rule: BTreeMap<&str, &[&str]> = RULE.iter().copied().collect();
    let mut wrong = Vec::new();
    for (from, to) in arrows() {
        let (a, b) = (layer(&from), layer(&to));
        if a == b || a.starts_with('<') {
            continue;
        }
        match rule.get(a) {
            Some(allowed) if allowed.contains(&b) => {}
            Some(_) => wrong.push(format!("{from} -> {to}")),
            None => wrong.push(format!("{from}: the layer '{a}' is not in the rule")),
        }
    }
    assert!(
        wrong.is_empty(),
        "arrows that point up:\n{}",
        wrong.join("\n")
    );
}

#[test]
fn no_circles() {
    // A file's use of its folder's `mod.rs` (an ancestor) is not an arrow
    // between modules: a folder is one module.
    let graph: BTreeMap<String, BTreeSet<String>> = arrows()
        .into_iter()
        .filter(|(from, to)| !from.starts_with(&format!("{to}::")))
        .fold(BTreeMap::new(), |mut g, (from, to)| {
            g.entry(from).or_default().insert(to);
            g
        });
    // Each file: is it reachable from any file it reaches?
    let reach = |start: &String| -> BTreeSet<String> {
        let mut seen = BTreeSet::new();
        let mut todo: Vec<&String> = graph.get(start).into_iter().flatten().collect();
        while let Some(n) = todo.pop() {
            if seen.insert(n.clone()) {
                todo.extend(graph.get(n).into_iter().flatten());
            }
        }
        seen
    };
    let circles: Vec<String> = graph
        .keys()
        .filter(|m| reach(m).contains(*m))
        .map(|m| {
            let back: Vec<&String> = graph[m].iter().filter(|n| reach(n).contains(m)).collect();
            format!("{m} <-> {back:?}")
        })
        .collect();
    assert!(
        circles.is_empty(),
        "import circles:\n{}",
        circles.join("\n")
    );
}

/// The scan itself: it sees the arrows this file's rule is about.
#[test]
fn the_scan_reads_use_trees_and_paths() {
    let mut out = Vec::new();
    expand(
        "",
        "crate::{app::{App, Ports}, domain::model::Ticket as T}",
        &mut out,
    );
    assert_eq!(
        out,
        [
            "crate::app::App",
            "crate::app::Ports",
            "crate::domain::model::Ticket"
        ]
    );
    let p = paths("fn f() { let x = crate::support::time::unix_now(); }\nuse super::App;");
    assert!(p.contains(&"super::App".to_string()), "{p:?}");
    assert!(
        p.contains(&"crate::support::time::unix_now".to_string()),
        "{p:?}"
    );
    let modules = modules();
    assert_eq!(
        resolve("app::work", "super::audit::Origin", &modules).as_deref(),
        Some("app::audit")
    );
    assert_eq!(
        resolve("inbound::http", "crate::domain::model::Ticket", &modules).as_deref(),
        Some("domain::model")
    );
    assert!(arrows().contains(&("app::work".to_string(), "domain::queue".to_string())));
}
