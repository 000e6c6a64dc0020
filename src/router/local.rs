//! Services of the hosted domains themselves: XEP-0199 ping, XEP-0030 disco#info,
//! XEP-0092 version; everything else answered as RFC 6120/6121 say for a server without
//! user accounts. Also completes the iq requests drawbridge itself sent (probes).

use std::collections::HashMap;
use std::sync::Mutex;

use tokio::sync::oneshot;

use crate::proto::jid::Jid;
use crate::proto::ns;
use crate::proto::stanza::{StanzaErrorCondition as C, error_reply};
use crate::xml::Element;

#[derive(Default)]
pub struct LocalServices {
    /// iq ids we sent, waiting for their result or error.
    pending: Mutex<HashMap<String, oneshot::Sender<Element>>>,
}

impl LocalServices {
    /// Register an iq we are about to send; its answer arrives on the receiver.
    pub fn expect_reply(&self, id: &str) -> oneshot::Receiver<Element> {
        let (tx, rx) = oneshot::channel();
        self.pending.lock().unwrap().insert(id.to_owned(), tx);
        rx
    }

    /// Whether `st` answers an iq drawbridge sent itself (a probe).
    pub fn awaits(&self, st: &Element) -> bool {
        st.name.as_ref() == "iq"
            && matches!(st.get_attr("type"), Some("result" | "error"))
            && st.get_attr("id").is_some_and(|id| self.pending.lock().unwrap().contains_key(id))
    }

    pub fn forget(&self, id: &str) {
        self.pending.lock().unwrap().remove(id);
    }

    /// Handle a stanza addressed to a hosted domain; the reply (if any) to route.
    pub fn handle(&self, st: &Element) -> Option<Element> {
        let to = st.get_attr("to").and_then(Jid::parse)?;
        let typ = st.get_attr("type").unwrap_or("");
        match &*st.name {
            "iq" => match typ {
                "result" | "error" => {
                    if let Some(id) = st.get_attr("id")
                        && let Some(tx) = self.pending.lock().unwrap().remove(id)
                    {
                        let _ = tx.send(st.clone());
                    }
                    None
                }
                "get" | "set" => {
                    if to.local.is_some() {
                        // No user accounts here (RFC 6121 §8.5.2.1.3 / §8.5.3.1).
                        return error_reply(st, C::ServiceUnavailable, None);
                    }
                    let Some(payload) = st.elements().next() else {
                        return error_reply(st, C::BadRequest, Some("iq without a payload"));
                    };
                    if st.elements().count() != 1 {
                        return error_reply(st, C::BadRequest, Some("iq with more than one payload"));
                    }
                    match (typ, &*payload.name, &*payload.ns) {
                        ("get", "ping", ns::PING) => Some(result_for(st)),
                        ("get", "query", ns::DISCO_INFO) if payload.get_attr("node").is_none() => {
                            let mut q = Element::new("query", ns::DISCO_INFO).child(
                                Element::new("identity", ns::DISCO_INFO)
                                    .attr("category", "server")
                                    .attr("type", "im")
                                    .attr("name", "drawbridge"),
                            );
                            for f in [ns::DISCO_INFO, ns::PING, ns::VERSION] {
                                q = q.child(Element::new("feature", ns::DISCO_INFO).attr("var", f));
                            }
                            Some(result_for(st).child(q))
                        }
                        ("get", "query", ns::VERSION) => Some(
                            result_for(st).child(
                                Element::new("query", ns::VERSION)
                                    .child(Element::new("name", ns::VERSION).text("drawbridge"))
                                    .child(Element::new("version", ns::VERSION).text(env!("CARGO_PKG_VERSION"))),
                            ),
                        ),
                        _ => error_reply(st, C::ServiceUnavailable, None),
                    }
                }
                _ => error_reply(st, C::BadRequest, Some("iq type must be get, set, result or error")),
            },
            "message" => match typ {
                // RFC 6121 §8.5.2.1.1: groupchat and headline to a non-existent user are dropped
                // silently; error messages are never answered.
                "groupchat" | "headline" | "error" => None,
                _ => error_reply(st, C::ServiceUnavailable, Some("there are no user accounts on this server")),
            },
            // RFC 6121 §8.5.2.1.2 / §8.5.2.2.2: presence to an unknown user is silently ignored.
            _ => None,
        }
    }
}

fn result_for(st: &Element) -> Element {
    let mut r = Element::new("iq", ns::SERVER).attr("type", "result");
    if let Some(id) = st.get_attr("id") {
        r.set_attr("id", id);
    }
    if let Some(to) = st.get_attr("to") {
        r.set_attr("from", to);
    }
    if let Some(from) = st.get_attr("from") {
        r.set_attr("to", from);
    }
    r
}
