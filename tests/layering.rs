//! The module layering, enforced: each top-level module of `src/` may name (`crate::…`)
//! only modules below it. Bottom up, as README's architecture section draws it:
//! peer text escaping, shared types → XML and protocol (the sans-I/O stream machine) → network → policy →
//! store → configuration → secret files → events, limits, connection table → router → stream drivers →
//! engine → control socket → dashboard → the demo and the fuzz bodies.

use std::collections::BTreeSet;
use std::path::Path;

const LAYERS: &[&[&str]] = &[
    // Peer text made safe to log and print: below everything that handles it.
    &["text"],
    &["domain"],
    &["types"],
    &["xml"],
    &["proto"],
    &["net"],
    // Real-time blocklists: the sans-I/O subscriber and its entries (policy applies them).
    &["rtbl"],
    &["policy"],
    &["store"],
    &["config"],
    &["secrets"],
    &["events"],
    &["limits"],
    &["table"],
    &["router"],
    &["stream"],
    &["gateway"],
    &["engine"],
    &["control"],
    &["dashboard"],
    &["demo", "fuzzing"],
];

fn layer(module: &str) -> Option<usize> {
    LAYERS.iter().position(|l| l.contains(&module))
}

fn rust_files(dir: &Path, out: &mut Vec<std::path::PathBuf>) {
    for e in std::fs::read_dir(dir).unwrap().flatten() {
        let p = e.path();
        if p.is_dir() {
            rust_files(&p, out);
        } else if p.extension().is_some_and(|x| x == "rs") {
            out.push(p);
        }
    }
}

#[test]
fn no_module_names_one_above_it() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    rust_files(&src, &mut files);
    let mut violations = BTreeSet::new();
    let mut seen = BTreeSet::new();
    for f in files {
        let rel = f.strip_prefix(&src).unwrap();
        let top = rel.iter().next().unwrap().to_string_lossy().trim_end_matches(".rs").to_owned();
        if top == "main" || top == "lib" {
            continue;
        }
        let own = layer(&top).unwrap_or_else(|| panic!("src/{top}: a module with no layer; add it to LAYERS (and README)"));
        seen.insert(top.clone());
        let text = std::fs::read_to_string(&f).unwrap();
        for (i, _) in text.match_indices("crate::") {
            let name: String = text[i + 7..].chars().take_while(|c| c.is_ascii_lowercase() || *c == '_').collect();
            if name.is_empty() || name == top {
                continue;
            }
            let theirs = layer(&name).unwrap_or_else(|| panic!("{}: crate::{name} has no layer", rel.display()));
            if theirs > own {
                violations.insert(format!("{} ({top}) names crate::{name}, a layer above it", rel.display()));
            }
        }
    }
    assert!(violations.is_empty(), "layering broken:\n{}", violations.into_iter().collect::<Vec<_>>().join("\n"));
    // The check looked at every layer (a renamed module would otherwise slip out of it).
    for l in LAYERS.iter().flat_map(|l| l.iter()) {
        assert!(seen.contains(*l), "LAYERS names {l}, which src/ no longer has");
    }
}
