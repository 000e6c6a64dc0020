//! An RTBL item's payload: the XEP-0377 report the service published with the domain, and
//! the `block-strangers` recommendation some lists add.
//!
//! Everything here is the service's text: clipped and escaped before it is kept, since it
//! reaches the store, the dashboard and refusal texts.

use crate::xml::Element;

/// XEP-0377 Spam Reporting, version 1.
pub const NS_REPORTING: &str = "urn:xmpp:reporting:1";
/// How much of a reason (a URI such as `urn:xmpp:reporting:spam`) is kept.
pub const MAX_REASON: usize = 128;
/// How much of a report's text is kept.
pub const MAX_TEXT: usize = 512;

/// What a listing says about a domain.
#[derive(Debug, Clone, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
pub struct Listing {
    /// The report's `reason` (`urn:xmpp:reporting:spam`, `…:abuse`), clipped.
    pub reason: Option<String>,
    /// The report's `<text>`, clipped and escaped.
    pub text: Option<String>,
    /// The list recommends refusing this domain's messages to local users who do not know
    /// the sender (a `<block-strangers/>` element, in whatever namespace the list uses).
    pub block_strangers: bool,
}

impl Listing {
    /// Read an `<item>`'s payload; an item without one is a listing without a report.
    pub fn from_item(item: &Element) -> Listing {
        let report = item.elements().find(|e| e.is("report", NS_REPORTING));
        let reason = report.and_then(|r| r.get_attr("reason")).map(|r| crate::text::clip(r.trim(), MAX_REASON).into_owned());
        let text = report
            .and_then(|r| r.elements().find(|t| t.name == "text" && t.ns == NS_REPORTING))
            .map(|t| t.text_content())
            .map(|t| crate::text::clip(t.trim(), MAX_TEXT).into_owned())
            .filter(|t| !t.is_empty());
        // Where lists put it varies: beside the report or inside it; the name is what counts.
        let block_strangers = item.elements().chain(report.into_iter().flat_map(|r| r.elements())).any(|e| e.name == "block-strangers");
        Listing { reason: reason.filter(|r| !r.is_empty()), text, block_strangers }
    }

    /// The reason in words, for refusal texts and the operator: the report's text, else the
    /// short form of its reason (`spam` for `urn:xmpp:reporting:spam`), else "listed".
    pub fn summary(&self) -> String {
        if let Some(t) = &self.text {
            return t.clone();
        }
        match self.reason.as_deref() {
            Some(r) => r.strip_prefix("urn:xmpp:reporting:").unwrap_or(r).to_owned(),
            None => "listed".to_owned(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn item(children: Vec<Element>) -> Element {
        let mut it = Element::new("item", "http://jabber.org/protocol/pubsub#event").attr("id", "spam.example");
        for c in children {
            it = it.child(c);
        }
        it
    }

    #[test]
    fn reads_the_report_and_the_recommendation() {
        let r = Element::new("report", NS_REPORTING)
            .attr("reason", "urn:xmpp:reporting:spam")
            .child(Element::new("text", NS_REPORTING).text("  bots\u{1b}[31m everywhere "));
        let l = Listing::from_item(&item(vec![r.clone()]));
        assert_eq!(l.reason.as_deref(), Some("urn:xmpp:reporting:spam"));
        assert_eq!(l.text.as_deref(), Some("bots\\x1b[31m everywhere"), "escaped, trimmed");
        assert!(!l.block_strangers);
        assert_eq!(l.summary(), "bots\\x1b[31m everywhere");
        let bs = Element::new("block-strangers", "urn:xmpp:jabberspam:0");
        assert!(Listing::from_item(&item(vec![r.clone(), bs.clone()])).block_strangers, "beside the report");
        assert!(Listing::from_item(&item(vec![r.child(bs)])).block_strangers, "inside the report");
    }

    #[test]
    fn no_payload_and_hostile_sizes() {
        let l = Listing::from_item(&item(vec![]));
        assert_eq!(l, Listing::default());
        assert_eq!(l.summary(), "listed");
        let r = Element::new("report", NS_REPORTING).attr("reason", "urn:xmpp:reporting:abuse");
        assert_eq!(Listing::from_item(&item(vec![r])).summary(), "abuse");
        let huge = "x".repeat(100_000);
        let r = Element::new("report", NS_REPORTING).attr("reason", huge.clone()).child(Element::new("text", NS_REPORTING).text(huge));
        let l = Listing::from_item(&item(vec![r]));
        assert!(l.reason.unwrap().len() < MAX_REASON + 32);
        assert!(l.text.unwrap().len() < MAX_TEXT + 32);
        // A report in another namespace is not XEP-0377's.
        let r = Element::new("report", "urn:xmpp:reporting:0").attr("reason", "spam");
        assert_eq!(Listing::from_item(&item(vec![r])).reason, None);
    }
}
