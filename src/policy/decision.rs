//! The one decision about a remote domain, and its trace.
//!
//! [`evaluate`] applies the rules in order and is the only code that decides: streams get
//! its verdict through [`decide`] (nothing recorded, nothing formatted that the verdict does
//! not need), operators get the same run through [`explain`] with every rule recorded —
//! matched or not, its effect, and which rule decided — so `explain` cannot diverge from
//! what really happens.
//!
//! The order: a blacklist entry (the domain's own or a parent's) refuses whatever else is
//! known; then the operator's decision (a timed block that has expired no longer counts);
//! then the real-time blocklist listings; then the federation mode. A listing never
//! loosens the mode (the stricter of the two decides) and never overrides the operator.
//! Authentication and encryption requirements are recorded after the verdict: they do not
//! decide whether a domain federates, only how it must prove itself.

use serde::{Deserialize, Serialize};

use super::{DomainState, Mode, Standing, Verdict};
use crate::rtbl::Action;
use crate::types::{AuthMode, Security, fmt_utc};

/// A blacklist entry that covers the domain: its own or a parent's.
#[derive(Debug, Clone, Copy)]
pub struct BlacklistHit<'a> {
    /// The entry (the domain itself or a parent).
    pub entry: &'a str,
    pub reason: Option<&'a str>,
    /// Who put it there: `operator` or an imported list's name.
    pub source: Option<&'a str>,
}

/// The domain listed by one real-time blocklist feed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Listed {
    pub service: String,
    pub node: String,
    pub action: Action,
    /// The listing's reason in words (the report's text or its reason).
    pub reason: String,
    /// The list recommends refusing strangers' messages from this domain.
    pub block_strangers: bool,
}

/// Everything the decision looks at.
#[derive(Debug, Clone, Copy)]
pub struct Facts<'a> {
    pub mode: Mode,
    pub domain: &'a str,
    /// The operator's decision about the domain itself.
    pub own: Option<&'a Standing>,
    pub blacklisted_by: Option<BlacklistHit<'a>>,
    pub listings: &'a [Listed],
    /// The authentication rules, for the trace only (they never change the verdict).
    pub security: Option<&'a Security>,
    pub now_ms: u64,
}

/// The rules, in the order they are applied.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Rule {
    Blacklist,
    OperatorDecision,
    Rtbl,
    FederationMode,
    Authentication,
    Encryption,
}

impl Rule {
    pub const ALL: [Rule; 6] =
        [Rule::Blacklist, Rule::OperatorDecision, Rule::Rtbl, Rule::FederationMode, Rule::Authentication, Rule::Encryption];

    pub fn as_str(self) -> &'static str {
        match self {
            Rule::Blacklist => "blacklist",
            Rule::OperatorDecision => "operator decision",
            Rule::Rtbl => "real-time blocklist",
            Rule::FederationMode => "federation mode",
            Rule::Authentication => "authentication",
            Rule::Encryption => "encryption",
        }
    }
}

/// One rule as applied to the domain.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Step {
    pub rule: Rule,
    pub matched: bool,
    /// What the rule found, in words.
    pub found: String,
    /// What it does (or would have done, when an earlier rule decided).
    pub effect: String,
    /// This rule gave the verdict.
    pub decided: bool,
}

/// The decision with every rule that was looked at.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Trace {
    pub domain: String,
    #[serde(serialize_with = "verdict_json")]
    pub verdict: Verdict,
    pub decided_by: Rule,
    pub steps: Vec<Step>,
    /// Marks the operator sees wherever the domain appears ("listed by …"), whatever the
    /// verdict.
    pub marks: Vec<String>,
}

fn verdict_json<S: serde::Serializer>(v: &Verdict, s: S) -> Result<S::Ok, S::Error> {
    use serde::ser::SerializeStruct;
    let mut st = s.serialize_struct("Verdict", 2)?;
    let (name, reason) = match v {
        Verdict::Allow => ("allow", None),
        Verdict::Hold => ("hold", None),
        Verdict::Refuse(r) => ("refuse", Some(r.as_str())),
    };
    st.serialize_field("verdict", name)?;
    st.serialize_field("reason", &reason)?;
    st.end()
}

/// Where the rules' findings go: nowhere (a stream's verdict) or into a [`Trace`].
pub trait Record {
    /// Whether later rules are still looked at once one has decided.
    const ALL: bool;
    /// `found` and `effect` are only called when recording.
    fn step(&mut self, rule: Rule, matched: bool, decided: bool, found: impl FnOnce() -> String, effect: impl FnOnce() -> String);
    fn mark(&mut self, mark: impl FnOnce() -> String);
}

/// Records nothing: the verdict alone.
pub struct Quiet;

impl Record for Quiet {
    const ALL: bool = false;
    fn step(&mut self, _: Rule, _: bool, _: bool, _: impl FnOnce() -> String, _: impl FnOnce() -> String) {}
    fn mark(&mut self, _: impl FnOnce() -> String) {}
}

/// Records every rule.
#[derive(Default)]
pub struct Steps {
    pub steps: Vec<Step>,
    pub marks: Vec<String>,
}

impl Record for Steps {
    const ALL: bool = true;
    fn step(&mut self, rule: Rule, matched: bool, decided: bool, found: impl FnOnce() -> String, effect: impl FnOnce() -> String) {
        self.steps.push(Step { rule, matched, found: found(), effect: effect(), decided });
    }
    fn mark(&mut self, mark: impl FnOnce() -> String) {
        self.marks.push(mark());
    }
}

fn why(reason: Option<&str>) -> String {
    reason.map(|r| format!(": {r}")).unwrap_or_default()
}

/// How strict a verdict is: a listing may tighten the mode's verdict, never loosen it.
fn strictness(v: &Verdict) -> u8 {
    match v {
        Verdict::Allow => 0,
        Verdict::Hold => 1,
        Verdict::Refuse(_) => 2,
    }
}

/// The decision, rule by rule; the verdict and the rule that gave it.
pub fn evaluate<R: Record>(f: &Facts<'_>, rec: &mut R) -> (Verdict, Rule) {
    let domain = f.domain;
    let mut decided: Option<(Verdict, Rule)> = None;

    // 1. A blacklist entry: the domain's own or a parent's.
    match f.blacklisted_by {
        Some(hit) => {
            let v = Verdict::Refuse(if hit.entry == domain {
                format!("{domain} is blacklisted{}", why(hit.reason))
            } else {
                format!("{domain} is blacklisted through {}{}", hit.entry, why(hit.reason))
            });
            if !R::ALL {
                return (v, Rule::Blacklist);
            }
            rec.step(
                Rule::Blacklist,
                true,
                true,
                || {
                    let whose =
                        if hit.entry == domain { "its own entry".to_owned() } else { format!("the entry for its parent {}", hit.entry) };
                    format!("{whose}{}, source {}", why(hit.reason), hit.source.unwrap_or("operator"))
                },
                || "refused".into(),
            );
            decided = Some((v, Rule::Blacklist));
        }
        None => rec.step(Rule::Blacklist, false, false, || format!("no entry for {domain} or a parent"), || "none".into()),
    }

    // 2. The operator's decision (an expired timed block has lifted by itself).
    let state = f.own.map_or(DomainState::Unknown, |s| s.effective(f.now_ms));
    let own_verdict = match state {
        DomainState::Blocked => {
            let why = why(f.own.and_then(|s| s.reason.as_deref()));
            Some(Verdict::Refuse(format!("{domain} is blocked{why}")))
        }
        DomainState::Blacklisted => Some(Verdict::Refuse(format!("{domain} is blacklisted"))),
        DomainState::Approved => Some(Verdict::Allow),
        DomainState::Unknown | DomainState::Pending => None,
    };
    let first = decided.is_none();
    match own_verdict {
        Some(v) => {
            if !R::ALL && first {
                return (v, Rule::OperatorDecision);
            }
            rec.step(
                Rule::OperatorDecision,
                true,
                first,
                || {
                    let mut s = format!("{}{}", state.as_str(), why(f.own.and_then(|s| s.reason.as_deref())));
                    if let Some(t) = f.own.and_then(|s| s.expires_ms) {
                        s.push_str(&format!(", until {}", fmt_utc(t)));
                    }
                    s
                },
                || match state {
                    DomainState::Approved => "allowed, whatever a listing or the mode says".into(),
                    _ => "refused".into(),
                },
            );
            if first {
                decided = Some((v, Rule::OperatorDecision));
            }
        }
        None => rec.step(
            Rule::OperatorDecision,
            false,
            false,
            || match f.own {
                Some(s) if s.state == DomainState::Blocked => {
                    format!("the block ended at {}; back to {}", s.expires_ms.map(fmt_utc).unwrap_or_default(), s.previous.as_str())
                }
                _ => format!("none ({})", state.as_str()),
            },
            || "none".into(),
        ),
    }

    // 3. Real-time blocklist listings: every one is a mark; the strictest action counts.
    let mut listing_verdict: Option<(Verdict, &Listed)> = None;
    for l in f.listings {
        rec.mark(|| format!("listed by {}: {}", l.service, l.reason));
        let v = match l.action {
            Action::Block => Some(Verdict::Refuse(format!(
                "{domain} is listed as a spam source by {} (node {}, action block): {}",
                l.service, l.node, l.reason
            ))),
            Action::Hold => Some(Verdict::Hold),
            Action::Flag | Action::Strangers => None,
        };
        if let Some(v) = v
            && listing_verdict.as_ref().is_none_or(|(w, _)| strictness(&v) > strictness(w))
        {
            listing_verdict = Some((v, l));
        }
    }

    // 4. The federation mode, for a domain the operator has not decided about.
    let mode_verdict = match f.mode {
        Mode::Open => Verdict::Allow,
        Mode::Approval => Verdict::Hold,
        Mode::Allowlist => Verdict::Refuse(format!("{domain} is not on the allowlist (policy mode allowlist)")),
    };
    let listing_decides = decided.is_none() && listing_verdict.as_ref().is_some_and(|(v, _)| strictness(v) > strictness(&mode_verdict));
    if !R::ALL && decided.is_none() {
        return match listing_verdict {
            Some((v, _)) if listing_decides => (v, Rule::Rtbl),
            _ => (mode_verdict, Rule::FederationMode),
        };
    }
    if f.listings.is_empty() {
        rec.step(Rule::Rtbl, false, false, || format!("{domain} is on no followed list"), || "none".into());
    }
    for l in f.listings {
        let this_decides = listing_decides && listing_verdict.as_ref().is_some_and(|(_, w)| std::ptr::eq(*w, l));
        rec.step(
            Rule::Rtbl,
            true,
            this_decides,
            || {
                let advice = if l.block_strangers { "; the list recommends refusing strangers" } else { "" };
                format!("listed by {} (node {}): {}{advice}", l.service, l.node, l.reason)
            },
            || {
                let effect = match l.action {
                    Action::Flag => "flag: allowed, marked as listed".to_owned(),
                    Action::Strangers => {
                        "strangers: messages and subscription requests to local users who never wrote to the sender are refused".into()
                    }
                    Action::Hold => "hold: waits for the operator in the approval inbox".into(),
                    Action::Block => "block: refused".into(),
                };
                match &decided {
                    Some((_, Rule::OperatorDecision)) => format!("{effect} (overridden by the operator's decision)"),
                    Some(_) => format!("{effect} (an earlier rule decided)"),
                    None if matches!(l.action, Action::Hold | Action::Block) && !this_decides => {
                        format!("{effect} (the mode is as strict or stricter)")
                    }
                    None => effect,
                }
            },
        );
    }
    if listing_decides && let Some((v, _)) = listing_verdict {
        decided = Some((v, Rule::Rtbl));
    }
    let mode_decides = decided.is_none();
    rec.step(
        Rule::FederationMode,
        true,
        mode_decides,
        || format!("mode {}", f.mode.as_str()),
        || {
            let effect = match f.mode {
                Mode::Open => "allowed",
                Mode::Approval => "held until the operator decides",
                Mode::Allowlist => "refused: not approved",
            };
            if mode_decides { effect.to_owned() } else { format!("{effect}, for a domain no earlier rule decided") }
        },
    );
    if mode_decides {
        decided = Some((mode_verdict, Rule::FederationMode));
    }

    // 5. How the domain must authenticate and encrypt (recorded, never deciding).
    if let Some(sec) = f.security {
        let (auth, rule) = sec.auth_for(domain);
        rec.step(
            Rule::Authentication,
            rule.starts_with("[[domain]]"),
            false,
            || rule.clone(),
            || match auth {
                AuthMode::CertOnly => "a valid certificate is required; dialback is refused".into(),
                AuthMode::CertOrDialback => "a valid certificate, else Server Dialback".into(),
            },
        );
        let (tls, rule) = sec.require_encryption_for(domain);
        rec.step(
            Rule::Encryption,
            rule.starts_with("[[domain]]"),
            false,
            || rule.clone(),
            || if tls { "TLS required".into() } else { "TLS optional".into() },
        );
    }
    decided.expect("the mode always decides when nothing before it did")
}

/// The verdict for a stream (nothing recorded).
pub fn decide(f: &Facts<'_>) -> Verdict {
    evaluate(f, &mut Quiet).0
}

/// The decision and the rule that made it.
pub fn decide_by(f: &Facts<'_>) -> (Verdict, Rule) {
    evaluate(f, &mut Quiet)
}

/// The same decision with every rule recorded.
pub fn explain(f: &Facts<'_>) -> Trace {
    let mut rec = Steps::default();
    let (verdict, decided_by) = evaluate(f, &mut rec);
    Trace { domain: f.domain.to_owned(), verdict, decided_by, steps: rec.steps, marks: rec.marks }
}

/// What an inbound stanza is, as far as the `strangers` action cares.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Inbound {
    Message,
    /// A `<presence type='subscribe'>`.
    SubscriptionRequest,
    /// Everything else passes.
    Other,
}

/// The `strangers` action for one stanza from `f.domain` to a local user: the refusal's
/// text when a feed with that action lists the domain, the operator has not decided about
/// it, and the user never wrote to the sender (`familiar` is asked only then).
pub fn strangers(f: &Facts<'_>, inbound: Inbound, familiar: impl FnOnce() -> bool) -> Option<String> {
    if inbound == Inbound::Other {
        return None;
    }
    let decided = f.own.is_some_and(|s| !matches!(s.effective(f.now_ms), DomainState::Unknown | DomainState::Pending));
    if decided {
        return None;
    }
    let l = f.listings.iter().find(|l| l.action == Action::Strangers)?;
    if familiar() {
        return None;
    }
    Some(format!("{} is listed as a spam source by {}", f.domain, l.service))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::Domain;
    use crate::types::DomainRule;

    fn listed(service: &str, action: Action) -> Listed {
        Listed { service: service.into(), node: "spam_source_domains".into(), action, reason: "spam".into(), block_strangers: false }
    }

    fn standing(state: DomainState, expires_ms: Option<u64>) -> Standing {
        Standing { state, reason: Some("said so".into()), expires_ms, previous: DomainState::Approved }
    }

    /// The verdict for every combination of mode, operator decision (with a live and an
    /// expired timed block), blacklist hit and listings: the trace's verdict is the
    /// decision's, exactly one rule decided and it is the one named.
    #[test]
    fn the_trace_concludes_what_the_decision_decides_for_every_case() {
        let standings = [
            None,
            Some(standing(DomainState::Unknown, None)),
            Some(standing(DomainState::Pending, None)),
            Some(standing(DomainState::Approved, None)),
            Some(standing(DomainState::Blocked, None)),
            Some(standing(DomainState::Blocked, Some(500))),
            Some(standing(DomainState::Blocked, Some(2000))),
            Some(standing(DomainState::Blacklisted, None)),
        ];
        let hits = [None, Some(("x.example", Some("spam"))), Some(("example", None))];
        let listings = [
            vec![],
            vec![listed("a.test", Action::Flag)],
            vec![listed("a.test", Action::Strangers)],
            vec![listed("a.test", Action::Hold)],
            vec![listed("a.test", Action::Block)],
            vec![listed("a.test", Action::Flag), listed("b.test", Action::Hold), listed("c.test", Action::Block)],
        ];
        let security = Security {
            auth: AuthMode::CertOrDialback,
            require_encryption: true,
            rules: vec![DomainRule { name: Domain::parse("x.example").unwrap(), auth: Some(AuthMode::CertOnly), require_encryption: None }],
        };
        let mut n = 0;
        for mode in [Mode::Open, Mode::Approval, Mode::Allowlist] {
            for own in &standings {
                for hit in &hits {
                    for ls in &listings {
                        for sec in [None, Some(&security)] {
                            let f = Facts {
                                mode,
                                domain: "x.example",
                                own: own.as_ref(),
                                blacklisted_by: hit.map(|(entry, reason)| BlacklistHit { entry, reason, source: Some("operator") }),
                                listings: ls,
                                security: sec,
                                now_ms: 1000,
                            };
                            let v = decide(&f);
                            let t = explain(&f);
                            assert_eq!(t.verdict, v, "{f:?}");
                            assert_eq!(evaluate(&f, &mut Quiet).1, t.decided_by, "{f:?}");
                            let deciding: Vec<&Step> = t.steps.iter().filter(|s| s.decided).collect();
                            assert_eq!(deciding.len(), 1, "{f:?}: {t:?}");
                            assert_eq!(deciding[0].rule, t.decided_by);
                            assert!(deciding[0].matched);
                            assert_eq!(t.marks.len(), ls.len(), "every listing is a mark");
                            assert_eq!(t.steps.iter().filter(|s| s.rule == Rule::Authentication).count(), usize::from(sec.is_some()));
                            // Rules appear in their order.
                            let order: Vec<Rule> = t.steps.iter().map(|s| s.rule).collect();
                            let mut sorted = order.clone();
                            sorted.sort_by_key(|r| *r as u8);
                            assert_eq!(order, sorted);
                            n += 1;
                        }
                    }
                }
            }
        }
        assert_eq!(n, 3 * 8 * 3 * 6 * 2);
    }

    fn verdict(mode: Mode, own: Option<Standing>, ls: &[Listed]) -> (Verdict, Rule) {
        let t = explain(&Facts {
            mode,
            domain: "x.example",
            own: own.as_ref(),
            blacklisted_by: None,
            listings: ls,
            security: None,
            now_ms: 1000,
        });
        (t.verdict, t.decided_by)
    }

    #[test]
    fn what_each_action_does_and_the_operator_wins() {
        let block = [listed("xmppbl.org", Action::Block)];
        let (v, r) = verdict(Mode::Open, None, &block);
        assert_eq!(
            v,
            Verdict::Refuse("x.example is listed as a spam source by xmppbl.org (node spam_source_domains, action block): spam".into())
        );
        assert_eq!(r, Rule::Rtbl);
        assert_eq!(verdict(Mode::Open, None, &[listed("s", Action::Hold)]), (Verdict::Hold, Rule::Rtbl));
        assert_eq!(verdict(Mode::Open, None, &[listed("s", Action::Flag)]), (Verdict::Allow, Rule::FederationMode));
        assert_eq!(verdict(Mode::Open, None, &[listed("s", Action::Strangers)]), (Verdict::Allow, Rule::FederationMode));
        // The operator's approve overrides any listing; a pending domain is no decision.
        assert_eq!(verdict(Mode::Open, Some(standing(DomainState::Approved, None)), &block), (Verdict::Allow, Rule::OperatorDecision));
        assert_eq!(verdict(Mode::Open, Some(standing(DomainState::Pending, None)), &block).1, Rule::Rtbl);
        // A listing never loosens the mode: hold in allowlist mode stays refused.
        let (v, r) = verdict(Mode::Allowlist, None, &[listed("s", Action::Hold)]);
        assert!(matches!(v, Verdict::Refuse(ref w) if w.contains("allowlist")) && r == Rule::FederationMode);
        assert_eq!(verdict(Mode::Approval, None, &[listed("s", Action::Hold)]), (Verdict::Hold, Rule::FederationMode));
        // The strictest listing counts.
        let several = [listed("a", Action::Hold), listed("b", Action::Block), listed("c", Action::Flag)];
        assert!(matches!(verdict(Mode::Open, None, &several), (Verdict::Refuse(w), Rule::Rtbl) if w.contains(" by b ")));
        // An expired timed block is no decision: the listing decides.
        let lapsed = Standing { previous: DomainState::Unknown, ..standing(DomainState::Blocked, Some(999)) };
        assert_eq!(verdict(Mode::Open, Some(lapsed), &several).1, Rule::Rtbl);
        // ... and one that returns to an approval is the operator's approve again.
        assert_eq!(
            verdict(Mode::Open, Some(standing(DomainState::Blocked, Some(999))), &several),
            (Verdict::Allow, Rule::OperatorDecision)
        );
        assert_eq!(verdict(Mode::Open, Some(standing(DomainState::Blocked, Some(1001))), &several).1, Rule::OperatorDecision);
    }

    #[test]
    fn the_trace_reads_as_the_operator_needs_it() {
        let own = standing(DomainState::Approved, None);
        let ls = [listed("xmppbl.org", Action::Block)];
        let sec = Security {
            auth: AuthMode::CertOrDialback,
            require_encryption: true,
            rules: vec![DomainRule {
                name: Domain::parse("chat.evil.example").unwrap(),
                auth: Some(AuthMode::CertOnly),
                require_encryption: None,
            }],
        };
        let f = Facts {
            mode: Mode::Open,
            domain: "chat.evil.example",
            own: Some(&own),
            blacklisted_by: Some(BlacklistHit { entry: "evil.example", reason: Some("spam"), source: Some("jabberspam") }),
            listings: &ls,
            security: Some(&sec),
            now_ms: 0,
        };
        let t = explain(&f);
        assert_eq!(t.verdict, Verdict::Refuse("chat.evil.example is blacklisted through evil.example: spam".into()));
        let lines: Vec<String> = t
            .steps
            .iter()
            .map(|s| format!("{} {} {} -> {}{}", s.rule.as_str(), s.matched, s.found, s.effect, if s.decided { " *" } else { "" }))
            .collect();
        assert_eq!(
            lines,
            [
                "blacklist true the entry for its parent evil.example: spam, source jabberspam -> refused *",
                "operator decision true approved: said so -> allowed, whatever a listing or the mode says",
                "real-time blocklist true listed by xmppbl.org (node spam_source_domains): spam -> block: refused (an earlier rule decided)",
                "federation mode true mode open -> allowed, for a domain no earlier rule decided",
                "authentication true [[domain]] chat.evil.example: auth = \"cert-only\" -> a valid certificate is required; dialback is refused",
                "encryption false [tls] require_encryption = true -> TLS required",
            ]
        );
        assert_eq!(t.marks, ["listed by xmppbl.org: spam"]);
        let advised = [Listed { block_strangers: true, ..listed("xmppbl.org", Action::Flag) }];
        let t2 = explain(&Facts { listings: &advised, ..f });
        assert!(t2.steps.iter().any(|s| s.rule == Rule::Rtbl && s.found.ends_with("spam; the list recommends refusing strangers")));
        let json = serde_json::to_value(&t).unwrap();
        assert_eq!(json["verdict"]["verdict"], "refuse");
        assert_eq!(json["decided_by"], "blacklist");
    }

    #[test]
    fn strangers_are_refused_messages_and_subscriptions_only() {
        let ls = [listed("a.test", Action::Flag), listed("xmppbl.org", Action::Strangers)];
        let facts = |own: Option<&'static Standing>, ls: &'static [Listed]| Facts {
            mode: Mode::Open,
            domain: "spam.example",
            own,
            blacklisted_by: None,
            listings: ls,
            security: None,
            now_ms: 1000,
        };
        let ls: &'static [Listed] = Box::leak(Box::new(ls));
        let f = facts(None, ls);
        let refusal = Some("spam.example is listed as a spam source by xmppbl.org".to_owned());
        assert_eq!(strangers(&f, Inbound::Message, || false), refusal);
        assert_eq!(strangers(&f, Inbound::SubscriptionRequest, || false), refusal);
        assert_eq!(strangers(&f, Inbound::Message, || true), None, "the user wrote to the sender before");
        assert_eq!(strangers(&f, Inbound::Other, || panic!("not asked")), None);
        // The operator's decision passes it; a pending domain is no decision.
        let approved: &'static Standing = Box::leak(Box::new(standing(DomainState::Approved, None)));
        assert_eq!(strangers(&facts(Some(approved), ls), Inbound::Message, || false), None);
        let pending: &'static Standing = Box::leak(Box::new(standing(DomainState::Pending, None)));
        assert_eq!(strangers(&facts(Some(pending), ls), Inbound::Message, || false), refusal);
        // Flag alone refuses nothing.
        assert_eq!(strangers(&facts(None, &ls[..1]), Inbound::Message, || false), None);
        assert_eq!(decide(&f), Verdict::Allow, "the stream itself is allowed");
    }
}
