//! What docs/layout.md says of the sources' shape: no module imports one that imports it back
//! (directly or through others; a module and its own submodules excepted), and no function much
//! longer than 60 lines. Read from the files, as a reviewer would.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

fn sources(dir: &Path, out: &mut Vec<PathBuf>) {
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            sources(&p, out);
        } else if p.extension().is_some_and(|x| x == "rs") {
            out.push(p);
        }
    }
}

/// `src/engine/ops/fk.rs` -> `engine::ops::fk`; `src/engine/mod.rs` -> `engine`.
fn module_of(path: &Path) -> String {
    let rel = path.strip_prefix("src").unwrap().with_extension("");
    let parts: Vec<String> = rel
        .iter()
        .map(|s| s.to_string_lossy().into_owned())
        .filter(|s| s != "mod" && s != "lib" && s != "main")
        .collect();
    parts.join("::")
}

fn is_within(m: &str, ancestor: &str) -> bool {
    ancestor.is_empty() || m == ancestor || m.starts_with(&format!("{ancestor}::"))
}

/// The modules `text` (of module `me`) names through `crate::` or `super::` paths.
fn imports(me: &str, text: &str, modules: &BTreeSet<String>) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    let code: String = text
        .lines()
        .filter(|l| !l.trim_start().starts_with("//"))
        .collect::<Vec<_>>()
        .join("\n");
    let parent = |m: &str| {
        m.rsplit_once("::")
            .map_or(String::new(), |(p, _)| p.to_string())
    };
    for (prefix, base) in [("crate::", String::new()), ("super::", parent(me))] {
        for (i, _) in code.match_indices(prefix) {
            if prefix == "super::" && code[..i].ends_with("::") {
                continue;
            }
            for path in paths_at(&code[i + prefix.len()..]) {
                let mut cur = base.clone();
                let mut found = None;
                for seg in path.split("::").filter(|s| !s.is_empty()) {
                    let next = if cur.is_empty() {
                        seg.to_string()
                    } else {
                        format!("{cur}::{seg}")
                    };
                    if !modules.contains(&next) {
                        break;
                    }
                    found = Some(next.clone());
                    cur = next;
                }
                if let Some(m) = found {
                    out.insert(m);
                }
            }
        }
    }
    out
}

/// The paths a `crate::`/`super::` reference names: `a::b::C`, or each item of a braced group
/// (`{a::X, b::{Y, Z}}` gives `a::X`, `b::Y`, `b::Z`).
fn paths_at(text: &str) -> Vec<String> {
    let head: String = text
        .chars()
        .take_while(|c| c.is_alphanumeric() || *c == '_' || *c == ':')
        .collect();
    let rest = &text[head.len()..];
    if !rest.starts_with('{') {
        return vec![head];
    }
    let mut depth = 0;
    let mut end = rest.len();
    for (i, c) in rest.char_indices() {
        match c {
            '{' => depth += 1,
            '}' => {
                depth -= 1;
                if depth == 0 {
                    end = i;
                    break;
                }
            }
            _ => {}
        }
    }
    let inner = &rest[1..end];
    let mut items = Vec::new();
    let (mut depth, mut start) = (0, 0);
    for (i, c) in inner.char_indices() {
        match c {
            '{' => depth += 1,
            '}' => depth -= 1,
            ',' if depth == 0 => {
                items.push(&inner[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    items.push(&inner[start..]);
    items
        .into_iter()
        .map(str::trim)
        .filter(|item| !item.is_empty())
        .flat_map(|item| paths_at(item).into_iter().map(|p| format!("{head}{p}")))
        .collect()
}

#[test]
fn no_module_imports_one_that_imports_it_back() {
    let mut files = Vec::new();
    sources(Path::new("src"), &mut files);
    let modules: BTreeSet<String> = files.iter().map(|f| module_of(f)).collect();
    let mut edges: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for f in &files {
        let me = module_of(f);
        let text = std::fs::read_to_string(f).unwrap();
        let to: BTreeSet<String> = imports(&me, &text, &modules)
            .into_iter()
            .filter(|n| !is_within(n, &me) && !is_within(&me, n))
            .collect();
        edges.entry(me).or_default().extend(to);
    }
    // A path back from each edge's target to its source is a cycle.
    let mut cycles = Vec::new();
    for (from, tos) in &edges {
        for to in tos {
            let mut seen = BTreeSet::new();
            let mut stack = vec![vec![to.clone()]];
            while let Some(path) = stack.pop() {
                let last = path.last().unwrap().clone();
                if last == *from {
                    cycles.push(format!("{from} -> {}", path.join(" -> ")));
                    break;
                }
                if !seen.insert(last.clone()) {
                    continue;
                }
                for next in edges.get(&last).into_iter().flatten() {
                    let mut p = path.clone();
                    p.push(next.clone());
                    stack.push(p);
                }
            }
        }
    }
    assert!(cycles.is_empty(), "import cycles:\n{}", cycles.join("\n"));
    // The check itself finds a cycle where there is one.
    let pair: BTreeSet<String> = ["a", "b"].iter().map(|s| s.to_string()).collect();
    assert!(imports("a", "use crate::b::X;", &pair).contains("b"));
    assert!(imports("b", "use super::a::Y;", &pair).contains("a"));
    assert!(imports("b", "use crate::{a::{X, Y}, c};", &pair).contains("a"));
}

/// The functions of `text` (by `fn` at the start of a line and the brace that closes it) longer
/// than `limit` lines, as `name (n lines)`.
fn long_functions(text: &str, limit: usize) -> Vec<String> {
    let lines: Vec<&str> = text.lines().collect();
    let mut out = Vec::new();
    for (i, l) in lines.iter().enumerate() {
        let t = l.trim_start();
        // `fn`, after any of: a visibility, async, const, unsafe.
        let before_fn = t.split("fn ").next().unwrap_or("");
        let starts = t.contains("fn ")
            && before_fn.split_whitespace().all(|w| {
                [
                    "pub",
                    "pub(crate)",
                    "pub(super)",
                    "async",
                    "const",
                    "unsafe",
                ]
                .contains(&w)
            });
        if !starts || t.ends_with(';') {
            continue;
        }
        let indent = l.len() - t.len();
        let close = " ".repeat(indent) + "}";
        let Some(len) = lines[i..].iter().position(|x| *x == close) else {
            continue;
        };
        if len + 1 > limit {
            let name: String = t
                .split("fn ")
                .nth(1)
                .unwrap_or("")
                .chars()
                .take_while(|c| c.is_alphanumeric() || *c == '_')
                .collect();
            out.push(format!("{name} ({} lines)", len + 1));
        }
    }
    out
}

/// "No function longer than about 60 lines": none over 66 (a tenth over), in src/.
#[test]
fn no_function_is_much_longer_than_sixty_lines() {
    let mut files = Vec::new();
    sources(Path::new("src"), &mut files);
    let long: Vec<String> = files
        .iter()
        .flat_map(|f| {
            let text = std::fs::read_to_string(f).unwrap();
            long_functions(&text, 66)
                .into_iter()
                .map(move |l| format!("{}: {l}", f.display()))
        })
        .collect();
    assert!(long.is_empty(), "{}", long.join("\n"));
    let sample = format!("fn f() {{\n{}}}\n", "    x();\n".repeat(70));
    assert_eq!(long_functions(&sample, 66), ["f (72 lines)"]);
    let sample = format!("pub async fn g() {{\n{}}}\n", "    x();\n".repeat(70));
    assert_eq!(long_functions(&sample, 66), ["g (72 lines)"]);
}
