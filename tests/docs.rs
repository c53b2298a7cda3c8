//! The front door and the pages behind it: the README stays short, and every link in it and in
//! `docs/` resolves inside the repository, to a file and, where it names one, a heading.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

const ROOT: &str = env!("CARGO_MANIFEST_DIR");

/// GitHub's anchor of a heading: lower case, punctuation dropped, spaces as hyphens.
fn slug(heading: &str) -> String {
    heading
        .trim()
        .to_lowercase()
        .chars()
        .filter(|c| c.is_alphanumeric() || *c == '-' || *c == ' ' || *c == '_')
        .collect::<String>()
        .replace(' ', "-")
}

fn anchors(text: &str) -> BTreeSet<String> {
    text.lines()
        .filter(|l| l.starts_with('#'))
        .map(|l| slug(l.trim_start_matches('#')))
        .collect()
}

/// The `(label)(target)` links of a Markdown text, outside code blocks and code spans.
fn links(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut fenced = false;
    for line in text.lines() {
        if line.trim_start().starts_with("```") {
            fenced = !fenced;
            continue;
        }
        if fenced {
            continue;
        }
        // Drop code spans.
        let plain: String = line.split('`').step_by(2).collect::<Vec<_>>().join(" ");
        let mut rest = plain.as_str();
        while let Some(i) = rest.find("](") {
            let after = &rest[i + 2..];
            let Some(end) = after.find(')') else { break };
            out.push(after[..end].to_string());
            rest = &after[end..];
        }
    }
    out
}

fn pages() -> Vec<PathBuf> {
    let mut all = vec![Path::new(ROOT).join("README.md")];
    for e in std::fs::read_dir(Path::new(ROOT).join("docs")).unwrap() {
        let p = e.unwrap().path();
        if p.extension().is_some_and(|x| x == "md") {
            all.push(p);
        }
    }
    all
}

#[test]
fn every_link_resolves_inside_the_repository() {
    let mut broken = Vec::new();
    for page in pages() {
        let text = std::fs::read_to_string(&page).unwrap();
        for link in links(&text) {
            if link.starts_with("http://") || link.starts_with("https://") {
                continue;
            }
            let (path, anchor) = link.split_once('#').unwrap_or((&link, ""));
            let target = if path.is_empty() {
                page.clone()
            } else {
                page.parent().unwrap().join(path)
            };
            let Ok(target) = target.canonicalize() else {
                broken.push(format!("{}: {link} (no such file)", page.display()));
                continue;
            };
            if !target.starts_with(ROOT) {
                broken.push(format!(
                    "{}: {link} (outside the repository)",
                    page.display()
                ));
                continue;
            }
            if !anchor.is_empty() {
                let text = std::fs::read_to_string(&target).unwrap_or_default();
                if !anchors(&text).contains(anchor) {
                    broken.push(format!("{}: {link} (no such heading)", page.display()));
                }
            }
        }
    }
    assert!(broken.is_empty(), "broken links:\n{}", broken.join("\n"));
}

#[test]
fn the_readme_is_a_front_door() {
    let readme = std::fs::read_to_string(Path::new(ROOT).join("README.md")).unwrap();
    let lines = readme.lines().count();
    assert!(lines <= 300, "README.md has {lines} lines");
    for page in [
        "spec",
        "commands",
        "engine",
        "partitions",
        "boot",
        "configuration",
        "deploy",
        "faults",
        "benchmarks",
        "testing",
    ] {
        assert!(
            readme.contains(&format!("docs/{page}.md")),
            "README.md does not link docs/{page}.md"
        );
    }
}

/// No page is left with a placeholder for a figure or a sentence still to write.
#[test]
fn no_page_holds_a_placeholder() {
    let mut pages = vec![PathBuf::from(ROOT).join("README.md")];
    for e in std::fs::read_dir(PathBuf::from(ROOT).join("docs")).unwrap() {
        pages.push(e.unwrap().path());
    }
    let placeholder = |word: &str| {
        let w = word.trim_matches(|c: char| !c.is_alphanumeric() && c != '_');
        ["TODO", "TBD", "FIXME", "XXX"].contains(&w)
            || (w.ends_with("_FIGURES") || w.ends_with("_SUMMARY"))
                && w.chars().all(|c| c.is_ascii_uppercase() || c == '_')
    };
    let found: Vec<String> = pages
        .iter()
        .flat_map(|p| {
            let text = std::fs::read_to_string(p).unwrap();
            text.split_whitespace()
                .filter(|w| placeholder(w))
                .map(|w| format!("{}: {w}", p.display()))
                .collect::<Vec<_>>()
        })
        .collect();
    assert!(found.is_empty(), "{found:?}");
    assert!(placeholder("BOOT_FIGURES") && placeholder("(TODO)") && !placeholder("DATABASE_URL"));
}
