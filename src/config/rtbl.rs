//! `[[rtbl]]`: the real-time blocklists followed (XEP-0060 nodes of spam-source domains)
//! and what a listing by each does.

use serde::Deserialize;

use super::{ConfigError, Ctx};
use crate::rtbl::familiar::FamiliarSettings;
use crate::rtbl::{Action, DEFAULT_MAX_ENTRIES, DEFAULT_NODE, FeedSettings};

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RtblFile {
    service: String,
    #[serde(default)]
    node: Option<String>,
    #[serde(default)]
    action: Option<String>,
    #[serde(default)]
    max_entries: Option<usize>,
}

/// `[strangers]`: the familiarity set of the `strangers` action.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(super) struct StrangersFile {
    max_pairs: Option<usize>,
    retention: Option<String>,
}

impl StrangersFile {
    pub fn validate(&self, cx: &Ctx<'_>) -> Result<FamiliarSettings, ConfigError> {
        let d = FamiliarSettings::default();
        let max_pairs = self.max_pairs.unwrap_or(d.max_pairs);
        if max_pairs == 0 {
            return Err(cx.bad("strangers.max_pairs", "must be greater than zero"));
        }
        Ok(FamiliarSettings { max_pairs, retention: cx.duration("strangers.retention", &self.retention, d.retention)? })
    }
}

/// A node name is an opaque string in XEP-0060; this bounds it and keeps it printable.
const MAX_NODE_LEN: usize = 256;

/// Every `[[rtbl]]` block; the same service and node twice is refused (one subscription each).
pub(super) fn validate(cx: &Ctx<'_>, blocks: &[RtblFile]) -> Result<Vec<FeedSettings>, ConfigError> {
    let mut feeds: Vec<FeedSettings> = Vec::new();
    for (i, b) in blocks.iter().enumerate() {
        let key = |k: &str| format!("rtbl[{i}].{k}");
        let service = match crate::proto::jid::Jid::split(b.service.trim()) {
            Some((j, d)) if j.resource.is_none() => match j.local {
                Some(l) => format!("{l}@{d}"),
                None => d.to_string(),
            },
            Some(_) => return Err(cx.bad(&key("service"), format!("{:?} has a resource; give the service's bare JID", b.service))),
            None => return Err(cx.bad(&key("service"), format!("{:?} is not a JID like \"xmppbl.org\"", b.service))),
        };
        let node = b.node.clone().unwrap_or_else(|| DEFAULT_NODE.to_owned());
        if node.is_empty() || node.len() > MAX_NODE_LEN || node.chars().any(crate::text::is_unsafe) {
            return Err(cx.bad(&key("node"), format!("{:?}: a node is 1 to {MAX_NODE_LEN} bytes of printable text", node)));
        }
        let action = match &b.action {
            None => Action::Flag,
            Some(a) => {
                Action::parse(a).ok_or_else(|| cx.bad(&key("action"), format!("{a:?} is not one of flag, strangers, hold, block")))?
            }
        };
        let max_entries = b.max_entries.unwrap_or(DEFAULT_MAX_ENTRIES);
        if max_entries == 0 {
            return Err(cx.bad(&key("max_entries"), "must be greater than zero"));
        }
        if feeds.iter().any(|f| f.service == service && f.node == node) {
            return Err(cx.bad(&key("service"), format!("{service} node {node} is followed twice; one [[rtbl]] block per feed")));
        }
        feeds.push(FeedSettings { service, node, action, max_entries });
    }
    Ok(feeds)
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::super::Settings;
    use crate::rtbl::{Action, DEFAULT_MAX_ENTRIES, DEFAULT_NODE};

    const BASE: &str = "[server]\ndomains = [\"a.test\"]\n";

    fn parse(text: &str) -> Result<Settings, String> {
        Settings::parse(&format!("{BASE}{text}"), Path::new("/etc/drawbridge.toml")).map_err(|e| e.to_string())
    }

    #[test]
    fn feeds_with_defaults() {
        let s = parse(
            "[[rtbl]]\nservice = \"XMPPBL.org\"\n[[rtbl]]\nservice = \"pubsub.b.test\"\nnode = \"mine\"\naction = \"block\"\nmax_entries = 5\n",
        )
        .unwrap();
        assert_eq!(s.rtbl.len(), 2);
        assert_eq!((s.rtbl[0].service.as_str(), s.rtbl[0].node.as_str()), ("xmppbl.org", DEFAULT_NODE));
        assert_eq!((s.rtbl[0].action, s.rtbl[0].max_entries), (Action::Flag, DEFAULT_MAX_ENTRIES));
        assert_eq!((s.rtbl[1].node.as_str(), s.rtbl[1].action, s.rtbl[1].max_entries), ("mine", Action::Block, 5));
        assert!(parse("").unwrap().rtbl.is_empty(), "none by default");
        assert_eq!(parse("[[rtbl]]\nservice = \"pep@b.test\"\naction = \"strangers\"\n").unwrap().rtbl[0].service, "pep@b.test");
        let s = parse("[strangers]\nmax_pairs = 10\nretention = \"30d\"\n").unwrap();
        assert_eq!((s.strangers.max_pairs, s.strangers.retention.as_secs()), (10, 30 * 86_400));
        assert_eq!(parse("").unwrap().strangers, crate::rtbl::familiar::FamiliarSettings::default());
        for (text, key) in [("max_pairs = 0", "strangers.max_pairs"), ("retention = \"0s\"", "strangers.retention")] {
            let e = parse(&format!("[strangers]\n{text}\n")).unwrap_err();
            assert!(e.contains(key) && e.contains("greater than zero"), "{e}");
        }
    }

    #[test]
    fn errors_name_the_key_and_the_file() {
        for (block, key, words) in [
            ("service = \"bad domain\"", "rtbl[0].service", "not a JID"),
            ("service = \"x.test/res\"", "rtbl[0].service", "resource"),
            ("service = \"x.test\"\naction = \"drop\"", "rtbl[0].action", "flag, strangers, hold, block"),
            ("service = \"x.test\"\nnode = \"\"", "rtbl[0].node", "1 to 256"),
            ("service = \"x.test\"\nmax_entries = 0", "rtbl[0].max_entries", "greater than zero"),
            ("service = \"x.test\"\nsevice = \"y\"", "rtbl[0]", "unknown field"),
        ] {
            let e = parse(&format!("[[rtbl]]\n{block}\n")).unwrap_err();
            assert!(e.contains("/etc/drawbridge.toml") && e.contains(key) && e.contains(words), "{block}: {e}");
        }
        let e = parse("[[rtbl]]\nservice = \"x.test\"\n[[rtbl]]\nservice = \"X.test\"\nnode = \"spam_source_domains\"\n").unwrap_err();
        assert!(e.contains("rtbl[1].service") && e.contains("twice"), "{e}");
    }
}
