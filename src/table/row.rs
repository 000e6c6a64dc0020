//! A stream's row: what the connection table shows of it, nothing else. It changes only by
//! folding observations through [`Row::apply`] — its machine's and its driver's — and each
//! fold says which event (if any) tells the views; `ConnEntry::apply` sends it.

use std::net::SocketAddr;

use super::{compact_cert, compact_verdict};
use crate::events::*;
use crate::proto::machine::Observed;

/// What a stream's row is folded from.
#[derive(Debug)]
pub enum Observation<'a> {
    /// What the stream's machine observed (outcomes and pending domains are not the row's:
    /// they fold to nothing).
    Machine(&'a Observed),
    /// The driver dials (an outbound stream before its connection).
    Dialling,
    /// The socket's other end.
    PeerAddr(SocketAddr),
    /// The driver's TLS handshake before any stream (direct TLS, XEP-0368).
    DirectTls,
    /// A TLS session is up (`how`: "TLS" or "direct TLS (XEP-0368)", for the transcript).
    Tls { how: &'static str, info: TlsInfo },
    /// The closing handshake began.
    Closing,
    /// The stream ended (the first reason stays); the row is final from here on.
    Closed { reason: &'a str },
}

impl<'a> From<&'a Observed> for Observation<'a> {
    fn from(o: &'a Observed) -> Self {
        Observation::Machine(o)
    }
}

/// What folding an observation changed, and so which event tells the views.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Change {
    /// The row changed: `Event::StreamUpdated` with the whole row.
    Updated,
    /// A pair became valid (or valid by another method): `Event::PairAuthorised`, the delta
    /// the views apply.
    Authorised,
    /// The row is final: `Event::StreamClosed`, sent by the table once the row is among
    /// the closed ones.
    Closed,
}

/// The row's own facts (the entry adds its id, direction, kind, open time and counters).
#[derive(Debug, Default, Clone)]
pub struct Row {
    pub local: Option<String>,
    pub remote: Option<String>,
    pub peer_addr: Option<String>,
    /// `None` until anyone says: shown as connecting.
    pub state: Option<ConnState>,
    pub stream_id: Option<String>,
    pub tls: Option<TlsInfo>,
    pub pairs: Vec<PairInfo>,
    /// Set once, when the stream is closed through the table.
    pub close_reason: Option<String>,
    pub limits: Option<StreamLimits>,
}

/// `slot` takes `v` if it differs (whether it did).
fn set<T: PartialEq>(slot: &mut T, v: T) -> bool {
    if *slot == v {
        return false;
    }
    *slot = v;
    true
}

impl Row {
    /// The fold: the row after `o`, and the one event that says so (`None`: nothing
    /// changed, no event). A closed row stays as it closed.
    pub fn apply(&mut self, o: &Observation<'_>) -> Option<Change> {
        if self.close_reason.is_some() {
            return None;
        }
        let changed = match o {
            Observation::Machine(o) => return self.machine(o),
            Observation::Dialling => set(&mut self.state, Some(ConnState::Connecting)),
            Observation::PeerAddr(a) => set(&mut self.peer_addr, Some(a.to_string())),
            Observation::DirectTls => set(&mut self.state, Some(ConnState::Tls)),
            Observation::Tls { info, .. } => {
                // The row keeps certificate facts compacted (bounded whatever the peer sent).
                let info = TlsInfo {
                    version: info.version.clone(),
                    cipher: info.cipher.clone(),
                    peer_cert: info.peer_cert.clone().map(compact_cert),
                    cert_verdict: info.cert_verdict.clone().map(compact_verdict),
                };
                set(&mut self.tls, Some(info))
            }
            Observation::Closing => set(&mut self.state, Some(ConnState::Closing)),
            Observation::Closed { reason } => {
                self.state = Some(ConnState::Closed);
                self.close_reason = Some((*reason).to_owned());
                return Some(Change::Closed);
            }
        };
        changed.then_some(Change::Updated)
    }

    fn machine(&mut self, o: &Observed) -> Option<Change> {
        let changed = match o {
            Observed::State(s) => set(&mut self.state, Some(*s)),
            Observed::Domains { local, remote } => {
                let l = local.is_some() && set(&mut self.local, local.clone());
                let r = remote.is_some() && set(&mut self.remote, remote.clone());
                l || r
            }
            Observed::StreamId(id) => set(&mut self.stream_id, Some(id.clone())),
            Observed::Pair { local, remote, status, method } => {
                let (status, method) = (*status, *method);
                match self.pairs.iter_mut().find(|p| p.local == local.as_str() && p.remote == remote.as_str()) {
                    Some(p) if (p.status, p.method) == (status, method) => return None,
                    Some(p) => (p.status, p.method) = (status, method),
                    None => self.pairs.push(PairInfo { local: local.to_string(), remote: remote.to_string(), status, method }),
                }
                return Some(if status == PairStatus::Valid { Change::Authorised } else { Change::Updated });
            }
            Observed::PairRemoved { local, remote } => {
                let before = self.pairs.len();
                self.pairs.retain(|p| !(p.local == local.as_str() && p.remote == remote.as_str()));
                self.pairs.len() != before
            }
            Observed::PairsReset => {
                let any = !self.pairs.is_empty();
                self.pairs.clear();
                any
            }
            Observed::Limits(l) => set(&mut self.limits, Some(*l)),
            // A verdict about the certificate of the TLS session (none without one).
            Observed::Certificate(verdict) => match &mut self.tls {
                Some(tls) => set(&mut tls.cert_verdict, Some(compact_verdict(verdict.clone()))),
                None => false,
            },
            Observed::Outcome { .. } | Observed::Pending(_) => false,
        };
        changed.then_some(Change::Updated)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::Domain;
    use crate::types::CertVerdict;

    fn d(s: &str) -> Domain {
        Domain::parse(s).unwrap()
    }

    fn pair(status: PairStatus, method: AuthMethod) -> Observed {
        Observed::Pair { local: d("here.test"), remote: d("there.test"), status, method }
    }

    fn tls() -> TlsInfo {
        TlsInfo { version: "TLSv1.3".into(), cipher: "X".into(), peer_cert: None, cert_verdict: None }
    }

    /// Folds `o` into `row`: the change, and that a second fold of it changes nothing.
    fn once(row: &mut Row, o: &Observation<'_>) -> Option<Change> {
        let c = row.apply(o);
        let before = row.clone();
        assert_eq!(row.apply(o), None, "{o:?} folded twice changed the row again");
        assert_eq!(format!("{row:?}"), format!("{before:?}"));
        c
    }

    #[test]
    fn each_observation_changes_the_row_with_one_event_or_nothing() {
        let mut r = Row::default();
        let u = Some(Change::Updated);
        assert_eq!(once(&mut r, &Observation::Dialling), u);
        assert_eq!(r.state, Some(ConnState::Connecting));
        assert_eq!(once(&mut r, &Observation::PeerAddr("127.0.0.1:5269".parse().unwrap())), u);
        assert_eq!(r.peer_addr.as_deref(), Some("127.0.0.1:5269"));
        assert_eq!(once(&mut r, &Observation::DirectTls), u);
        assert_eq!(r.state, Some(ConnState::Tls));
        assert_eq!(once(&mut r, &Observation::Tls { how: "TLS", info: tls() }), u);
        assert_eq!(r.tls, Some(tls()));
        let domains = Observed::Domains { local: Some("here.test".into()), remote: None };
        assert_eq!(once(&mut r, &(&domains).into()), u);
        // A side not named is kept.
        let domains = Observed::Domains { local: None, remote: Some("there.test".into()) };
        assert_eq!(once(&mut r, &(&domains).into()), u);
        assert_eq!((r.local.as_deref(), r.remote.as_deref()), (Some("here.test"), Some("there.test")));
        assert_eq!(once(&mut r, &(&Observed::StreamId("s1".into())).into()), u);
        assert_eq!(r.stream_id.as_deref(), Some("s1"));
        let verdict = Observed::Certificate(CertVerdict::Valid);
        assert_eq!(once(&mut r, &(&verdict).into()), u);
        assert_eq!(r.tls.as_ref().unwrap().cert_verdict, Some(CertVerdict::Valid));
        let limits = StreamLimits { max_bytes: 10, idle_seconds: None, peer_max_bytes: Some(5), peer_idle_seconds: None };
        assert_eq!(once(&mut r, &(&Observed::Limits(limits)).into()), u);
        assert_eq!(r.limits, Some(limits));
        assert_eq!(once(&mut r, &(&pair(PairStatus::Pending, AuthMethod::Dialback)).into()), u);
        assert_eq!(once(&mut r, &(&pair(PairStatus::Valid, AuthMethod::Dialback)).into()), Some(Change::Authorised));
        assert_eq!((r.pairs.len(), r.pairs[0].status), (1, PairStatus::Valid));
        assert_eq!(once(&mut r, &(&Observed::State(ConnState::Established)).into()), u);
        assert_eq!(once(&mut r, &(&Observed::PairsReset).into()), u);
        assert!(r.pairs.is_empty());
        r.apply(&(&pair(PairStatus::Valid, AuthMethod::SaslExternal)).into());
        let removed = Observed::PairRemoved { local: d("here.test"), remote: d("there.test") };
        assert_eq!(once(&mut r, &(&removed).into()), u);
        assert!(r.pairs.is_empty());
        assert_eq!(once(&mut r, &Observation::Closing), u);
        assert_eq!(r.state, Some(ConnState::Closing));
        // What is not the row's folds to nothing.
        let before = format!("{r:?}");
        assert_eq!(r.apply(&(&Observed::Pending(d("there.test"))).into()), None);
        let outcome = Observed::Outcome {
            local: d("here.test"),
            remote: d("there.test"),
            method: AuthMethod::Dialback,
            result: VerificationResult::Valid,
            reason: "x".into(),
        };
        assert_eq!(r.apply(&(&outcome).into()), None);
        assert_eq!(format!("{r:?}"), before);
    }

    #[test]
    fn a_verdict_without_a_tls_session_changes_nothing() {
        let mut r = Row::default();
        assert_eq!(r.apply(&(&Observed::Certificate(CertVerdict::Valid)).into()), None);
        assert!(r.tls.is_none());
    }

    #[test]
    fn a_closed_row_is_final_and_keeps_its_first_reason() {
        let mut r = Row::default();
        assert_eq!(r.apply(&Observation::Closed { reason: "gone" }), Some(Change::Closed));
        assert_eq!((r.state, r.close_reason.as_deref()), (Some(ConnState::Closed), Some("gone")));
        assert_eq!(r.apply(&Observation::Closed { reason: "again" }), None);
        // The closing handshake after the close (a failed outbound stream says why first)
        // does not bring the row back.
        assert_eq!(r.apply(&Observation::Closing), None);
        assert_eq!(r.apply(&(&Observed::State(ConnState::Established)).into()), None);
        assert_eq!((r.state, r.close_reason.as_deref()), (Some(ConnState::Closed), Some("gone")));
    }

    #[test]
    fn the_row_keeps_certificate_facts_compacted() {
        let big = "n".repeat(30_000);
        let mut r = Row::default();
        let info = TlsInfo { cert_verdict: Some(CertVerdict::UntrustedIssuer(big.clone())), ..tls() };
        r.apply(&Observation::Tls { how: "TLS", info });
        assert!(r.tls.as_ref().unwrap().cert_verdict.as_ref().unwrap().to_string().len() < 1024);
        r.apply(&(&Observed::Certificate(CertVerdict::Invalid(big))).into());
        assert!(r.tls.as_ref().unwrap().cert_verdict.as_ref().unwrap().to_string().len() < 1024);
    }
}
