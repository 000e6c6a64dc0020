//! The module layering, enforced: each top-level module of `src/` may name (`crate::…`)
//! only modules below it. Bottom up, as README's architecture section draws it:
//! peer text escaping, shared types → XML and protocol (the sans-I/O stream machine) → network → policy →
//! store → configuration → secret files → events, limits, connection table → router → stream drivers →
//! engine → control socket → dashboard → the demo and the fuzz bodies.
//! And the engine's door: only the engine acts on the policy, the store and the table.

use std::collections::BTreeSet;
use std::path::Path;

const LAYERS: &[&[&str]] = &[
    // Peer text made safe to log and print: below everything that handles it.
    &["text", "latency"],
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
    &["metrics"],
    &["table"],
    &["router"],
    &["stream"],
    &["gateway"],
    &["engine"],
    &["control"],
    &["dashboard"],
    &["demo", "fuzzing", "cli"],
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

/// Calls that act on the policy, the store or the table on someone's behalf (a standing or the
/// mode changed, a record written, a stream closed or watched), each with the module that
/// defines it (the policy persists its own decisions through the store's `PolicyStore`).
/// Outside `src/engine/` and those modules none may appear: an operator's action
/// is a `Request` to the engine, never a reach into its parts.
const ACTS: &[(&[&str], &str)] = &[
    (&["policy"], "policy.apply("),
    (&["policy"], ".set_mode("),
    (&["policy"], ".blacklist_many("),
    (&["policy"], ".expire_blocks("),
    (&["policy"], ".mark_pending("),
    (&["policy"], "policy.note("),
    (&["store", "policy"], ".put_domain("),
    (&["store", "policy"], ".put_domains("),
    (&["store", "policy"], ".log_action("),
    (&["store"], ".add_outcome("),
    (&["store"], ".add_history("),
    (&["store"], ".snapshot_open("),
    (&["store"], ".recover_open("),
    (&["store"], "store.prune("),
    (&["store", "policy"], "store.flush("),
    (&["table"], ".request_close("),
    (&["table"], ".request_close_with("),
    (&["table"], ".watch("),
];

/// Writing a stream's row: the data path's (the engine and the stream drivers that observe
/// the stream), nobody else's.
const ROW_WRITES: &[&str] = &[
    // The one fold (`ConnEntry::apply`): the driver's own observations, and the machine's.
    "Observation::",
    ".apply(&Observed",
    ".apply(&crate::proto::machine::Observed",
    "entry.apply(",
];

/// The acts found in one file of module `top` (comment lines left out).
fn acts_in(top: &str, text: &str) -> Vec<String> {
    let mut found = Vec::new();
    for line in text.lines().filter(|l| !l.trim_start().starts_with("//")) {
        for (owners, call) in ACTS {
            if top != "engine" && !owners.contains(&top) && line.contains(call) {
                found.push(format!("{call} (the {}'s)", owners[0]));
            }
        }
        // One finding per line (a call can match more than one pattern).
        if let Some(call) = ROW_WRITES.iter().find(|c| line.contains(*c))
            && !["engine", "stream", "table"].contains(&top)
        {
            found.push(format!("{call} (a table row)"));
        }
    }
    found
}

#[test]
fn only_the_engine_acts_on_policy_store_and_table() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    rust_files(&src, &mut files);
    let mut violations = BTreeSet::new();
    for f in files {
        let rel = f.strip_prefix(&src).unwrap();
        let top = rel.iter().next().unwrap().to_string_lossy().trim_end_matches(".rs").to_owned();
        for act in acts_in(&top, &std::fs::read_to_string(&f).unwrap()) {
            violations.insert(format!("{}: {act}", rel.display()));
        }
    }
    assert!(violations.is_empty(), "acting outside the engine:\n{}", violations.into_iter().collect::<Vec<_>>().join("\n"));
}

/// The check sees what it must (it would pass on anything otherwise).
#[test]
fn the_act_check_catches_a_reach_past_the_engine() {
    let dashboard = "let _ = shared.policy.apply(&d, Change::Approve, who, None).await;\n entry.request_close(\"bye\");";
    assert_eq!(acts_in("dashboard", dashboard).len(), 2);
    assert_eq!(acts_in("control", "e.watch(true);\n// e.watch(true) in a comment").len(), 1);
    assert_eq!(acts_in("router", "entry.apply(&Observed::State(ConnState::Closed));").len(), 1);
    assert_eq!(acts_in("control", "row.apply(Observation::Closing);").len(), 1);
    assert!(acts_in("engine", dashboard).is_empty());
    assert!(acts_in("stream", "entry.apply(&Observed::State(ConnState::Closed));").is_empty());
}
