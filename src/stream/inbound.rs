//! Inbound streams: we are the Receiving Server (XEP-0220 §2.1.1–2.1.3) for every domain
//! pair the peer claims, and the Authoritative Server (§2.1.2) for `db:verify` about keys
//! we issued.
//!
//! States: ExpectHeader → (STARTTLS → restart, everything learned before TLS forgotten) →
//! Negotiating (features sent; dialback under way) → Established (≥ 1 pair valid) → Closing.
//! Stanzas are routed only when their (to, from) domain pair is valid on this stream.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;

use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tokio::time::{Instant, sleep_until};

use super::conn::{Conn, ConnError, Transport};
use crate::domain::Domain;
use crate::engine::Shared;
use crate::engine::events::*;
use crate::engine::limits::{InboundSlot, Refused, VerificationBudget};
use crate::engine::table::{ConnEntry, random_id};
use crate::proto::dialback::{self, Answer, DbElement};
use crate::proto::ns;
use crate::proto::stanza::is_stanza;
use crate::proto::stream::{StreamError, StreamErrorCondition as C, check_header, header};
use crate::xml::{Element, Frame, XmlError};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Pair {
    /// `db:result` received, the authoritative server asked.
    Verifying,
    /// Verified; the policy holds it until the operator decides (stanzas kept, not routed).
    Held,
    Valid,
}

/// The answer of a verification started for a pair.
struct Verified {
    local: Domain,
    remote: Domain,
    answer: Answer,
    /// For the operator: the full reason behind an error answer.
    detail: Option<String>,
    method: AuthMethod,
}

/// How the session ended: the stream error to send (if any) and what to record.
struct End {
    error: Option<StreamError>,
    peer_closed: bool,
    reason: String,
}

impl End {
    fn error(condition: C, text: impl Into<String>) -> End {
        let e = StreamError::new(condition, text);
        End { reason: format!("sent {e}"), error: Some(e), peer_closed: false }
    }
}

struct In<'a> {
    shared: &'a Arc<Shared>,
    entry: Arc<ConnEntry>,
    secure: bool,
    stream_id: String,
    pairs: HashMap<(Domain, Domain), Pair>,
    done_tx: mpsc::Sender<Verified>,
    /// Stanzas of held pairs, in arrival order, and their weight in bytes.
    held: std::collections::VecDeque<Element>,
    held_bytes: usize,
    hold_until: Option<Instant>,
    /// The domain the peer's certificate is valid for (the header's 'from'), after TLS.
    cert_valid_for: Option<Domain>,
    /// SASL EXTERNAL succeeded on this stream (no second SASL after the restart).
    sasl_done: bool,
    /// The header's 'from': the peer's per-domain security rules apply from the start.
    peer: Option<Domain>,
    /// Direct TLS: the peer's chain, judged when the header names the claimed domain.
    direct_chain: Option<Vec<rustls::pki_types::CertificateDer<'static>>>,
    /// The verdict on the peer's certificate, for SASL failure texts.
    cert_verdict: Option<crate::net::certs::CertVerdict>,
    /// This stream's place under the connection limits.
    slot: InboundSlot,
    /// Dialback requests started on this stream (`limits.verifications_per_minute`).
    verifications: VerificationBudget,
}

pub async fn run(shared: Arc<Shared>, tcp: TcpStream, peer: SocketAddr, slot: InboundSlot) {
    let entry = shared.table.open(Direction::In, &shared.shutdown);
    entry.set_peer_addr(peer);
    serve(shared, entry, Transport::Plain(tcp), None, slot).await;
}

/// XEP-0368: TLS from the first byte (the certificate is picked by SNI), then the stream.
pub async fn run_direct(shared: Arc<Shared>, tcp: TcpStream, peer: SocketAddr, slot: InboundSlot) {
    let entry = shared.table.open(Direction::In, &shared.shutdown);
    entry.set_peer_addr(peer);
    entry.set_state(ConnState::Tls);
    let handshake = async {
        let start = tokio_rustls::LazyConfigAcceptor::new(rustls::server::Acceptor::default(), tcp).await?;
        let sni = start.client_hello().server_name().and_then(|n| Domain::parse(n).ok()).filter(|d| shared.is_hosted(d));
        let local = sni.unwrap_or_else(|| shared.settings.domains[0].clone());
        start.into_stream(shared.tls().server_config(&local)).await
    };
    let tls = match tokio::time::timeout(shared.settings.timeouts.negotiation, handshake).await {
        Ok(Ok(tls)) => tls,
        Ok(Err(e)) => return shared.stream_closed(&entry, &format!("direct TLS handshake failed: {e}")),
        Err(_) => return shared.stream_closed(&entry, "direct TLS handshake timed out (timeouts.negotiation)"),
    };
    let (_, session) = tls.get_ref();
    let chain: Vec<rustls::pki_types::CertificateDer<'static>> = session.peer_certificates().map(|c| c.to_vec()).unwrap_or_default();
    entry.tls_established("direct TLS (XEP-0368)", session, None);
    serve(shared, entry, Transport::Tls(Box::new(tokio_rustls::TlsStream::Server(tls))), Some(chain), slot).await;
}

/// The stream over an accepted connection; `direct_chain` is the peer's certificate chain
/// when TLS came first (judged once the header names the claimed domain).
async fn serve(
    shared: Arc<Shared>,
    entry: Arc<ConnEntry>,
    io: Transport,
    direct_chain: Option<Vec<rustls::pki_types::CertificateDer<'static>>>,
    slot: InboundSlot,
) {
    let peer = entry.peer_addr().unwrap_or_default();
    let limits = &shared.settings.limits;
    let secure = io.is_tls();
    let mut conn = Conn::new(io, entry.clone(), limits, shared.settings.timeouts.write);
    let (done_tx, mut done_rx) = mpsc::channel(16);
    let mut st = In {
        shared: &shared,
        entry: entry.clone(),
        secure,
        stream_id: String::new(),
        pairs: HashMap::new(),
        done_tx,
        held: Default::default(),
        held_bytes: 0,
        hold_until: None,
        cert_valid_for: None,
        sasl_done: false,
        peer: None,
        direct_chain,
        cert_verdict: None,
        slot,
        verifications: VerificationBudget::default(),
    };
    let end = st.session(&mut conn, &mut done_rx).await;
    match &end.error {
        Some(e) => tracing::warn!(stream = %entry.id, %peer, "closing inbound stream: {e}"),
        None => tracing::info!(stream = %entry.id, %peer, "inbound stream ended: {}", end.reason),
    }
    entry.set_state(ConnState::Closing);
    conn.close(end.error.as_ref(), shared.settings.timeouts.close, end.peer_closed).await;
    shared.stream_closed(&entry, &end.reason);
}

impl In<'_> {
    async fn session(&mut self, conn: &mut Conn, done_rx: &mut mpsc::Receiver<Verified>) -> End {
        let t = self.shared.settings.timeouts.clone();
        let deadline = Instant::now() + t.negotiation;
        let mut policy_changes = self.shared.policy.subscribe();
        'stream: loop {
            // ExpectHeader.
            let header_frame = tokio::select! {
                f = conn.read_frame() => f,
                _ = sleep_until(deadline) => return self.timeout(),
                _ = self.entry.cancel.cancelled() => return self.cancelled(),
            };
            let h = match header_frame {
                Ok(Frame::StreamOpen(h)) => h,
                Ok(_) => return End::error(C::NotWellFormed, "expected a stream header"),
                Err(e) => return self.read_error(conn, e, true).await,
            };
            self.stream_id = random_id();
            self.entry.set_stream_id(&self.stream_id);
            let local = h.to.as_deref().and_then(|t| Domain::parse(t).ok());
            let reply_from = local.as_ref().filter(|d| self.shared.is_hosted(d)).unwrap_or(&self.shared.settings.domains[0]).clone();
            // RFC 6120 §4.9.1.2: a stream error is sent after our own header.
            conn.send_raw(&header(
                Some(reply_from.as_str()),
                h.from.as_deref().filter(|f| Domain::parse(f).is_ok()),
                Some(&self.stream_id),
            ));
            if let Err(e) = check_header(&h) {
                return End { reason: format!("sent {e}"), error: Some(e), peer_closed: false };
            }
            let clip = crate::xml::element::clip;
            let Some(local) = local.filter(|d| self.shared.is_hosted(d)) else {
                return End::error(
                    C::HostUnknown,
                    format!("{} is not served here", clip(h.to.as_deref().unwrap_or("(no 'to' attribute)"), 64)),
                );
            };
            // RFC 6120 §4.7.1: a 'from' that is not a domain (too long, bad characters, an
            // IP address) ends the stream before anything is stored or logged in full.
            if let Some(from) = h.from.as_deref() {
                match Domain::parse(from) {
                    Ok(d) if !crate::net::dial::is_ip_literal(d.as_str()) => {}
                    Ok(_) => return End::error(C::InvalidFrom, "the 'from' of an s2s stream must be a domain, not an IP address"),
                    Err(e) => {
                        return End::error(C::InvalidFrom, format!("{:?} is not a domain: {}", clip(from, 64), clip(&e.to_string(), 96)));
                    }
                }
            }
            self.entry.set_domains(Some(local.as_str()), h.from.as_deref());
            self.peer = h.from.as_deref().and_then(|f| Domain::parse(f).ok());
            if let (Some(chain), Some(claimed)) = (self.direct_chain.take(), self.peer.clone()) {
                let verdict = self.judge_cert(&chain, &claimed);
                if verdict.is_valid() {
                    self.cert_valid_for = Some(claimed);
                }
                self.cert_verdict = Some(verdict.clone());
                if let Some(mut tls) = self.entry.snapshot().tls {
                    tls.cert_verdict = Some(verdict);
                    self.entry.set_tls(tls);
                }
            }
            // Policy, as early as possible: the header's 'from', before TLS.
            if let Some(from) = h.from.as_deref().and_then(|f| Domain::parse(f).ok())
                && let crate::policy::Verdict::Refuse(why) = self.shared.policy.verdict(&from)
            {
                let local = h.to.as_deref().and_then(|t| Domain::parse(t).ok()).unwrap_or_else(|| self.shared.settings.domains[0].clone());
                self.record_with(
                    &local,
                    &from,
                    AuthMethod::Policy,
                    VerificationResult::Refused,
                    format!("refused at the stream header: {why}"),
                );
                return End::error(C::PolicyViolation, why);
            }

            // Features (RFC 6120 §4.3.2): STARTTLS until TLS; dialback once encryption allows it.
            let (require_tls, _) = self.require_tls();
            let mut features = Element::new("features", ns::STREAMS);
            if !self.secure {
                let mut tls = Element::new("starttls", ns::TLS);
                if require_tls {
                    tls = tls.child(Element::new("required", ns::TLS));
                }
                features = features.child(tls);
            }
            // SASL EXTERNAL only when the certificate is valid for the header's 'from'
            // (XEP-0178 §2); dialback stays offered alongside.
            if self.secure && !self.sasl_done && self.cert_valid_for.is_some() {
                features = features.child(Element::new("mechanisms", ns::SASL).child(Element::new("mechanism", ns::SASL).text("EXTERNAL")));
            }
            if (self.secure || !require_tls) && self.dialback_allowed(self.peer.as_ref()).is_ok() {
                features =
                    features.child(Element::new("dialback", ns::DIALBACK_FEATURE).child(Element::new("errors", ns::DIALBACK_FEATURE)));
            }
            conn.send(&features);
            if let Err(e) = conn.flush().await {
                return End { error: None, peer_closed: false, reason: format!("write failed: {e}") };
            }
            let authenticated = self.pairs.values().any(|p| matches!(p, Pair::Valid | Pair::Held));
            self.entry.set_state(match (authenticated, self.secure) {
                (true, _) => ConnState::Established,
                (false, true) => ConnState::Authenticating,
                (false, false) => ConnState::Tls,
            });

            loop {
                let authenticated = self.pairs.values().any(|p| matches!(p, Pair::Valid | Pair::Held));
                let hold_until = self.hold_until;
                conn.set_deadline((!authenticated).then_some(deadline));
                let idle_at = conn.last_read + t.idle_inbound;
                tokio::select! {
                    biased;
                    _ = self.entry.cancel.cancelled() => return self.cancelled(),
                    Some(v) = done_rx.recv() => {
                        if let Some(end) = self.on_verified(conn, v) {
                            return end;
                        }
                        if let Err(e) = conn.flush().await {
                            return End { error: None, peer_closed: false, reason: format!("write failed: {e}") };
                        }
                    }
                    _ = policy_changes.changed() => {
                        if let Some(end) = self.review_held().await {
                            return end;
                        }
                    }
                    _ = sleep_until(hold_until.unwrap_or(deadline)), if hold_until.is_some() => {
                        let waiting: Vec<String> = self.pairs.iter().filter(|(_, p)| **p == Pair::Held).map(|((_, r), _)| r.to_string()).collect();
                        return End::error(C::PolicyViolation, format!("{} awaits approval by the operator (policy mode approval)", waiting.join(", ")));
                    }
                    _ = sleep_until(deadline), if !authenticated => return self.timeout(),
                    // Keepalives move `last_read` without ending this select: look again.
                    _ = sleep_until(idle_at), if authenticated => {
                        if conn.last_read + t.idle_inbound > Instant::now() {
                            continue;
                        }
                        return End::error(
                            C::ConnectionTimeout,
                            format!("no traffic for {}s (timeouts.idle_inbound)", t.idle_inbound.as_secs()),
                        );
                    }
                    f = conn.read_frame() => {
                        let el = match f {
                            Ok(Frame::Element(el)) => el,
                            Ok(Frame::StreamClose) => return End { error: None, peer_closed: true, reason: "closed by the peer".into() },
                            Ok(Frame::StreamOpen(_)) => return End::error(C::NotWellFormed, "unexpected stream header"),
                            Err(e) => return self.read_error(conn, e, false).await,
                        };
                        if el.is("abort", ns::SASL) {
                            // RFC 6120 §6.4.4: the initiator gave up; dialback remains possible.
                            conn.send(&Element::new("failure", ns::SASL).child(Element::new("aborted", ns::SASL)));
                            if let Err(e) = conn.flush().await {
                                return End { error: None, peer_closed: false, reason: format!("write failed: {e}") };
                            }
                            continue;
                        }
                        if el.is("auth", ns::SASL) {
                            match self.sasl_external(conn, &local, &el).await {
                                Ok(true) => continue 'stream,
                                Ok(false) => {
                                    if let Err(e) = conn.flush().await {
                                        return End { error: None, peer_closed: false, reason: format!("write failed: {e}") };
                                    }
                                    continue;
                                }
                                Err(end) => return end,
                            }
                        }
                        if el.is("starttls", ns::TLS) {
                            match self.starttls(conn, &local, deadline).await {
                                Ok(()) => continue 'stream,
                                Err(end) => return end,
                            }
                        }
                        if let Some(end) = self.on_element(conn, el).await {
                            return end;
                        }
                        if let Err(e) = conn.flush().await {
                            return End { error: None, peer_closed: false, reason: format!("write failed: {e}") };
                        }
                    }
                }
            }
        }
    }

    fn cancelled(&self) -> End {
        match self.entry.close_request() {
            Some((reason, error)) => End { error, peer_closed: false, reason },
            None => End::error(C::SystemShutdown, "server shutting down"),
        }
    }

    fn timeout(&self) -> End {
        let secs = self.shared.settings.timeouts.negotiation.as_secs();
        End::error(C::ConnectionTimeout, format!("stream not authenticated within {secs}s (timeouts.negotiation)"))
    }

    async fn read_error(&self, conn: &mut Conn, e: ConnError, before_header: bool) -> End {
        let end = match e {
            ConnError::Eof => return End { error: None, peer_closed: true, reason: "connection closed by the peer".into() },
            ConnError::Io(e) => return End { error: None, peer_closed: true, reason: format!("I/O error: {e}") },
            ConnError::Peer(e) => return End { error: None, peer_closed: true, reason: format!("peer sent {e}") },
            ConnError::Xml(XmlError::Restricted(m)) => End::error(C::RestrictedXml, m),
            ConnError::Xml(e @ (XmlError::TooLarge { .. } | XmlError::TooDeep { .. })) => End::error(C::PolicyViolation, e.to_string()),
            ConnError::Xml(XmlError::TextAtTopLevel) => End::error(C::BadFormat, "character data between stanzas"),
            ConnError::Xml(XmlError::NotWellFormed(m)) => End::error(C::NotWellFormed, m),
        };
        if before_header {
            // We owe the peer a stream header before any stream error (RFC 6120 §4.9.1.2).
            conn.send_raw(&header(Some(self.shared.settings.domains[0].as_str()), None, Some(&random_id())));
        }
        end
    }

    /// STARTTLS (RFC 6120 §5.4.3): `<proceed/>`, the handshake, and a fresh stream.
    async fn starttls(&mut self, conn: &mut Conn, local: &Domain, deadline: Instant) -> Result<(), End> {
        if self.secure {
            return Err(End::error(C::PolicyViolation, "TLS is already established on this stream"));
        }
        if conn.framer.pending() > 0 {
            return Err(End::error(
                C::PolicyViolation,
                "data sent after <starttls/> before the TLS handshake (possible plaintext injection)",
            ));
        }
        conn.send(&Element::new("proceed", ns::TLS));
        conn.flush().await.map_err(|e| End { error: None, peer_closed: false, reason: format!("write failed: {e}") })?;
        let Transport::Plain(tcp) = std::mem::replace(&mut conn.io, Transport::Gone) else {
            return Err(End { error: None, peer_closed: false, reason: "transport in an unexpected state".into() });
        };
        let acceptor = tokio_rustls::TlsAcceptor::from(self.shared.tls().server_config(local));
        let tls = match tokio::time::timeout_at(deadline, acceptor.accept(tcp)).await {
            Ok(Ok(tls)) => tls,
            Ok(Err(e)) => return Err(End { error: None, peer_closed: true, reason: format!("TLS handshake failed: {e}") }),
            Err(_) => return Err(End { error: None, peer_closed: true, reason: "TLS handshake timed out (timeouts.negotiation)".into() }),
        };
        let (_, session) = tls.get_ref();
        let claimed = self.entry.snapshot().remote.and_then(|r| Domain::parse(&r).ok());
        let cert_verdict = claimed.as_ref().map(|d| self.judge_cert(session.peer_certificates().unwrap_or(&[]), d));
        self.cert_valid_for = claimed.filter(|_| cert_verdict.as_ref().is_some_and(|v| v.is_valid()));
        self.cert_verdict = cert_verdict.clone();
        self.entry.tls_established("TLS", session, cert_verdict);
        conn.io = Transport::Tls(Box::new(tokio_rustls::TlsStream::Server(tls)));
        conn.restart();
        // Everything learned before TLS is forgotten.
        self.secure = true;
        self.pairs.clear();
        self.entry.reset_pairs();
        Ok(())
    }

    /// Whether this peer must use TLS, and the rule that says so.
    fn require_tls(&self) -> (bool, String) {
        self.shared.settings.security.require_encryption_for(self.peer.as_ref().map_or("", |d| d.as_str()))
    }

    /// Dialback is allowed for `domain` unless a cert-only rule applies (the rule as error).
    fn dialback_allowed(&self, domain: Option<&Domain>) -> Result<(), String> {
        let Some(d) = domain else { return Ok(()) };
        match self.shared.settings.security.auth_for(d.as_str()) {
            (crate::config::AuthMode::CertOnly, rule) => Err(rule),
            _ => Ok(()),
        }
    }

    /// SASL EXTERNAL (RFC 6120 §6.4, XEP-0178 §2): `Ok(true)` on success (the stream
    /// restarts), `Ok(false)` after a `<failure/>` (dialback remains possible).
    async fn sasl_external(&mut self, conn: &mut Conn, local: &Domain, el: &Element) -> Result<bool, End> {
        let failure = |cond: &str, text: String| {
            Element::new("failure", ns::SASL).child(Element::new(cond, ns::SASL)).child(Element::new("text", ns::SASL).text(text))
        };
        let offered = self.secure && !self.sasl_done && self.cert_valid_for.is_some();
        if el.get_attr("mechanism") != Some("EXTERNAL") {
            conn.send(&failure("invalid-mechanism", "only EXTERNAL is offered".into()));
            return Ok(false);
        }
        if !offered {
            // XEP-0178 §2: a certificate that does not authenticate the peer → not-authorized.
            let why = match (&self.cert_verdict, &self.peer) {
                (Some(v), Some(p)) => format!("the certificate is not valid for {p}: {v}; use dialback"),
                _ => "no certificate valid for the stream's 'from' was presented; use dialback".to_owned(),
            };
            conn.send(&failure("not-authorized", why));
            return Ok(false);
        }
        let domain = self.cert_valid_for.clone().expect("offered implies a valid certificate");
        match crate::proto::sasl::authzid(&el.text_content()) {
            Err(e) => {
                conn.send(&failure("incorrect-encoding", e.to_string()));
                return Ok(false);
            }
            Ok(Some(id)) if !id.eq_ignore_ascii_case(domain.as_str()) => {
                conn.send(&failure("invalid-authzid", format!("the certificate is for {domain}, not {id}")));
                return Ok(false);
            }
            Ok(_) => {}
        }
        let status = match self.shared.policy.verdict(&domain) {
            crate::policy::Verdict::Refuse(why) => return Err(End::error(C::PolicyViolation, why)),
            crate::policy::Verdict::Allow => Pair::Valid,
            crate::policy::Verdict::Hold => {
                self.shared.mark_pending(&domain);
                self.hold_until.get_or_insert(Instant::now() + self.shared.settings.policy.approval_wait);
                Pair::Held
            }
        };
        conn.send(&Element::new("success", ns::SASL));
        conn.flush().await.map_err(|e| End { error: None, peer_closed: false, reason: format!("write failed: {e}") })?;
        conn.restart();
        self.sasl_done = true;
        self.pairs.insert((local.clone(), domain.clone()), status);
        let ps = if status == Pair::Valid { PairStatus::Valid } else { PairStatus::Held };
        self.entry.set_pair(local, &domain, ps, AuthMethod::SaslExternal);
        self.established()?;
        self.record_with(
            local,
            &domain,
            AuthMethod::SaslExternal,
            VerificationResult::Valid,
            format!("SASL EXTERNAL: the certificate is valid for {domain}"),
        );
        Ok(true)
    }

    /// Judge the peer's certificate for the domain it claims; recorded as an outcome.
    fn judge_cert(&self, chain: &[rustls::pki_types::CertificateDer<'static>], claimed: &Domain) -> crate::net::certs::CertVerdict {
        let verdict = self.shared.tls().judge.judge(chain, claimed.as_str(), rustls::pki_types::UnixTime::now());
        let local =
            self.entry.snapshot().local.and_then(|l| Domain::parse(&l).ok()).unwrap_or_else(|| self.shared.settings.domains[0].clone());
        let result = if verdict.is_valid() { VerificationResult::Valid } else { VerificationResult::Invalid };
        self.record_with(&local, claimed, AuthMethod::Certificate, result, format!("certificate for {claimed}: {verdict}"));
        verdict
    }

    /// One top-level element after the features. `Some(end)` closes the stream.
    async fn on_element(&mut self, conn: &mut Conn, el: Element) -> Option<End> {
        // A `[[domain]] require_encryption = false` exemption holds for that domain's own
        // dialback and stanzas only, never for whatever else the header's claimant sends.
        let require_tls_for = |d: &str| self.shared.settings.security.require_encryption_for(d);
        if el.ns == ns::DIALBACK {
            let Some(db) = DbElement::parse(&el) else {
                return Some(End::error(C::ImproperAddressing, "dialback element without 'from' and 'to'"));
            };
            let (require_tls, tls_rule) = require_tls_for(Domain::parse(&db.from).as_ref().map_or("", |d| d.as_str()));
            if !self.secure && require_tls {
                return Some(End::error(
                    C::PolicyViolation,
                    format!("dialback before TLS: encryption is required ({tls_rule}); STARTTLS first"),
                ));
            }
            return match (db.verify, &db.answer) {
                (false, None) => self.on_db_result(conn, db),
                (true, None) => {
                    self.on_db_verify(conn, db);
                    None
                }
                _ => {
                    tracing::debug!(stream = %self.entry.id, "ignoring a dialback answer on an inbound stream");
                    None
                }
            };
        }
        if is_stanza(&el) {
            if !self.secure {
                let from_domain = el.get_attr("from").and_then(crate::proto::jid::domain_of);
                let (require_tls, tls_rule) = require_tls_for(from_domain.as_ref().map_or("", |d| d.as_str()));
                if require_tls {
                    return Some(End::error(C::PolicyViolation, format!("stanza before TLS: encryption is required ({tls_rule})")));
                }
            }
            return self.on_stanza(el).await;
        }
        Some(End::error(C::UnsupportedStanzaType, format!("{} is not supported here", el.describe())))
    }

    /// Receiving Server: `<db:result from=O to=R>key</db:result>`.
    fn on_db_result(&mut self, conn: &mut Conn, db: DbElement) -> Option<End> {
        let Ok(remote) = Domain::parse(&db.from) else {
            return Some(End::error(C::InvalidFrom, format!("{:?} is not a valid domain", crate::xml::element::clip(&db.from, 64))));
        };
        if crate::net::dial::is_ip_literal(remote.as_str()) {
            // Nothing to call back: an address is not a domain with an authoritative server.
            return Some(End::error(C::ImproperAddressing, "dialback is for domains, not IP addresses"));
        }
        let local = match Domain::parse(&db.to) {
            Ok(d) if self.shared.is_hosted(&d) => d,
            _ => {
                conn.send(&dialback::result_answer(
                    &db.to,
                    &db.from,
                    &Answer::error("item-not-found", format!("{} is not served here", crate::xml::element::clip(&db.to, 64))),
                ));
                return None;
            }
        };
        if self.shared.is_hosted(&remote) {
            self.refuse(
                conn,
                &local,
                &remote,
                Answer::Invalid,
                VerificationResult::Invalid,
                format!("claims to be {remote}, a domain hosted here"),
            );
            return None;
        }
        // Certificates only for this peer: no dialback (the rule is named in the error).
        if let Err(rule) = self.dialback_allowed(Some(&remote)) {
            return Some(End::error(
                C::NotAuthorized,
                format!("dialback is not accepted for {remote} ({rule}); authenticate with a valid certificate (SASL EXTERNAL)"),
            ));
        }
        // Refused domains are cut off before any callback is spent on them.
        if let crate::policy::Verdict::Refuse(why) = self.shared.policy.verdict(&remote) {
            return Some(End::error(C::PolicyViolation, why));
        }
        match self.pairs.get(&(local.clone(), remote.clone())) {
            Some(Pair::Valid | Pair::Held) => {
                conn.send(&dialback::result_answer(local.as_str(), remote.as_str(), &Answer::Valid));
                return None;
            }
            Some(Pair::Verifying) => {
                // XEP-0220 §2.1: a second db:result for a pair being verified starts nothing new.
                tracing::info!(stream = %self.entry.id, "{remote} → {local}: db:result ignored, already being verified");
                return None;
            }
            None => {}
        }
        if self.pairs.len() >= self.shared.settings.limits.max_pairs_per_stream {
            conn.send(&dialback::result_answer(
                local.as_str(),
                remote.as_str(),
                &Answer::error("resource-constraint", "too many domain pairs on this stream (limits.max_pairs_per_stream)"),
            ));
            return None;
        }
        let in_flight = self.pairs.values().filter(|p| **p == Pair::Verifying).count();
        match self.verifications.start(Instant::now().into_std(), in_flight, &self.shared.settings.limits) {
            Ok(()) => {}
            Err(Refused(key @ "limits.max_verifications_in_flight")) => {
                conn.send(&dialback::result_answer(
                    local.as_str(),
                    remote.as_str(),
                    &Answer::error("resource-constraint", format!("too many verifications under way on this stream ({key}); try again")),
                ));
                return None;
            }
            Err(Refused(key)) => return Some(End::error(C::PolicyViolation, format!("too many dialback requests on this stream ({key})"))),
        }
        if db.key.is_empty() {
            self.refuse(conn, &local, &remote, Answer::Invalid, VerificationResult::Invalid, "sent an empty dialback key".into());
            return None;
        }
        self.pairs.insert((local.clone(), remote.clone()), Pair::Verifying);
        if self.cert_valid_for.as_ref() == Some(&remote) {
            // XEP-0344 §2.2: the TLS certificate already proves the claim; no callback.
            tracing::info!(stream = %self.entry.id, "{remote} → {local}: certificate valid for {remote}, dialback accepted without the callback");
            return self.on_verified(
                conn,
                Verified { local, remote, answer: Answer::Valid, detail: None, method: AuthMethod::DialbackWithValidCert },
            );
        }
        self.entry.set_pair(&local, &remote, PairStatus::Pending, AuthMethod::Dialback);
        tracing::info!(stream = %self.entry.id, "{remote} → {local}: asking {remote}'s authoritative server (db:verify)");
        let (shared, tx, id, key) = (self.shared.clone(), self.done_tx.clone(), self.stream_id.clone(), db.key);
        self.shared.tasks.spawn(async move {
            let (answer, detail) = shared.router.verify(&shared, &local, &remote, &id, &key).await;
            let _ = tx.send(Verified { local, remote, answer, detail, method: AuthMethod::Dialback }).await;
        });
        None
    }

    /// The authoritative server answered: authorise the pair (or hold it for approval), or
    /// refuse it.
    fn on_verified(&mut self, conn: &mut Conn, v: Verified) -> Option<End> {
        let key = (v.local.clone(), v.remote.clone());
        if self.pairs.get(&key) != Some(&Pair::Verifying) {
            return None; // forgotten by a stream restart
        }
        match v.answer {
            Answer::Valid => {
                let reason = if v.method == AuthMethod::DialbackWithValidCert {
                    format!("dialback without the callback: the certificate is valid for {}", v.remote)
                } else {
                    format!("{}'s authoritative server confirmed the dialback key", v.remote)
                };
                self.record_with(&v.local, &v.remote, v.method, VerificationResult::Valid, reason);
                // Policy again, for every domain that authenticates on the stream.
                let status = match self.shared.policy.verdict(&v.remote) {
                    crate::policy::Verdict::Refuse(why) => return Some(End::error(C::PolicyViolation, why)),
                    crate::policy::Verdict::Allow => Pair::Valid,
                    crate::policy::Verdict::Hold => {
                        self.shared.mark_pending(&v.remote);
                        self.hold_until.get_or_insert(Instant::now() + self.shared.settings.policy.approval_wait);
                        tracing::info!(stream = %self.entry.id, "{} verified; held until the operator approves it", v.remote);
                        Pair::Held
                    }
                };
                self.pairs.insert(key, status);
                let ps = if status == Pair::Valid { PairStatus::Valid } else { PairStatus::Held };
                self.entry.set_pair(&v.local, &v.remote, ps, v.method);
                if let Err(end) = self.established() {
                    return Some(end);
                }
                conn.send(&dialback::result_answer(v.local.as_str(), v.remote.as_str(), &Answer::Valid));
            }
            Answer::Invalid => {
                let reason = format!(
                    "{}'s authoritative server said the dialback key is invalid: the peer at {} is not {} (spoofing, or a key from another stream)",
                    v.remote,
                    self.entry.peer_addr().unwrap_or_default(),
                    v.remote
                );
                self.refuse(conn, &v.local, &v.remote, Answer::Invalid, VerificationResult::Invalid, reason);
            }
            Answer::Error { condition, text } => {
                let result = if condition == "remote-server-timeout" { VerificationResult::Timeout } else { VerificationResult::Error };
                // The peer gets the neutral text; the operator the full reason.
                let reason = format!(
                    "could not verify with {}'s authoritative server: <{condition}/> {}",
                    v.remote,
                    v.detail.clone().or_else(|| text.clone()).unwrap_or_default()
                );
                self.refuse(conn, &v.local, &v.remote, Answer::Error { condition, text }, result, reason);
            }
        }
        None
    }

    /// The policy changed: release held pairs that are now allowed (their stanzas routed in
    /// order), close on a refusal.
    async fn review_held(&mut self) -> Option<End> {
        let held: Vec<(Domain, Domain)> = self.pairs.iter().filter(|(_, p)| **p == Pair::Held).map(|(k, _)| k.clone()).collect();
        if held.is_empty() {
            return None;
        }
        for (local, remote) in held {
            match self.shared.policy.verdict(&remote) {
                crate::policy::Verdict::Hold => {}
                crate::policy::Verdict::Refuse(why) => return Some(End::error(C::PolicyViolation, why)),
                crate::policy::Verdict::Allow => {
                    tracing::info!(stream = %self.entry.id, "{remote} approved; releasing its held stanzas");
                    self.pairs.insert((local.clone(), remote.clone()), Pair::Valid);
                    // Keep how the pair authenticated (dialback, certificate, SASL EXTERNAL).
                    let method = self
                        .entry
                        .snapshot()
                        .pairs
                        .iter()
                        .find(|p| p.local == local.as_str() && p.remote == remote.as_str())
                        .map_or(AuthMethod::Dialback, |p| p.method);
                    self.entry.set_pair(&local, &remote, PairStatus::Valid, method);
                }
            }
        }
        // Route, in arrival order, what is no longer held.
        let mut still = std::collections::VecDeque::new();
        while let Some(st) = self.held.pop_front() {
            if self.pair_of(&st).is_some_and(|k| self.pairs.get(&k) == Some(&Pair::Valid)) {
                self.deliver(st).await;
            } else {
                still.push_back(st);
            }
        }
        self.held_bytes = still.iter().map(Element::weight).sum();
        self.held = still;
        if !self.pairs.values().any(|p| *p == Pair::Held) {
            self.hold_until = None;
        }
        None
    }

    fn pair_of(&self, st: &Element) -> Option<(Domain, Domain)> {
        let from = crate::proto::jid::domain_of(st.get_attr("from")?)?;
        let to = crate::proto::jid::domain_of(st.get_attr("to")?)?;
        Some((to, from))
    }

    fn refuse(&mut self, conn: &mut Conn, local: &Domain, remote: &Domain, answer: Answer, result: VerificationResult, reason: String) {
        self.pairs.remove(&(local.clone(), remote.clone()));
        self.entry.remove_pair(local, remote);
        conn.send(&dialback::result_answer(local.as_str(), remote.as_str(), &answer));
        self.record(local, remote, result, reason);
    }

    /// A domain authenticated: the stream counts as established from now on (against
    /// `limits.max_inbound`, no longer against the unauthenticated limits).
    fn established(&mut self) -> Result<(), End> {
        if let Err(Refused(key)) = self.slot.authenticated(&self.shared.settings.limits) {
            crate::engine::limits::refused_once(key, "*", || format!("refusing an authenticated inbound stream: {key} reached"));
            return Err(End::error(C::ResourceConstraint, format!("too many authenticated inbound streams ({key})")));
        }
        self.entry.set_state(ConnState::Established);
        Ok(())
    }

    fn record(&self, local: &Domain, remote: &Domain, result: VerificationResult, reason: String) {
        self.record_with(local, remote, AuthMethod::Dialback, result, reason)
    }

    fn record_with(&self, local: &Domain, remote: &Domain, method: AuthMethod, result: VerificationResult, reason: String) {
        self.shared.record_outcome(VerificationOutcome {
            time_ms: now_ms(),
            stream: self.entry.id.clone(),
            direction: Direction::In,
            local: local.to_string(),
            remote: remote.to_string(),
            method,
            result,
            reason,
            peer_addr: self.entry.peer_addr(),
        });
    }

    /// Authoritative Server: `<db:verify from=R to=O id=…>key</db:verify>`.
    fn on_db_verify(&mut self, conn: &mut Conn, db: DbElement) {
        let id = db.id.clone().unwrap_or_default();
        let hosted = Domain::parse(&db.to).ok().filter(|d| self.shared.is_hosted(d));
        let answer = match hosted {
            None => Answer::error("item-not-found", format!("{} is not served here", crate::xml::element::clip(&db.to, 64))),
            Some(_) if id.is_empty() => Answer::Invalid,
            Some(d) => {
                if dialback::verify_key(&self.shared.secret, &db.from, d.as_str(), &id, &db.key) {
                    Answer::Valid
                } else {
                    Answer::Invalid
                }
            }
        };
        let clip = crate::xml::element::clip;
        tracing::info!(
            stream = %self.entry.id,
            "authoritative answer to {} about {} (stream {}): {}",
            clip(&db.from, 64),
            clip(&db.to, 64),
            clip(&id, 64),
            answer.describe()
        );
        conn.send(&dialback::verify_answer(&db.to, &db.from, &id, &answer));
    }

    /// RFC 6120 §8.1.1.2 / §4.9.3: addressing checks, then routing.
    async fn on_stanza(&mut self, el: Element) -> Option<End> {
        if !self.pairs.values().any(|p| matches!(p, Pair::Valid | Pair::Held)) {
            return Some(End::error(C::NotAuthorized, "no domain is authenticated on this stream yet"));
        }
        let (Some(from), Some(to)) = (el.get_attr("from"), el.get_attr("to")) else {
            return Some(End::error(C::ImproperAddressing, "stanzas between servers need 'from' and 'to'"));
        };
        let clip = crate::xml::element::clip;
        let Some(from_dom) = crate::proto::jid::domain_of(from) else {
            return Some(End::error(C::InvalidFrom, format!("{:?} is not a valid address", clip(from, 64))));
        };
        let Some(to_dom) = crate::proto::jid::domain_of(to) else {
            return Some(End::error(C::ImproperAddressing, format!("{:?} is not a valid address", clip(to, 64))));
        };
        if !self.shared.is_hosted(&to_dom) {
            return Some(End::error(C::HostUnknown, format!("{to_dom} is not served here")));
        }
        match self.pairs.get(&(to_dom.clone(), from_dom.clone())) {
            Some(Pair::Valid) => {}
            Some(Pair::Held) => {
                let limits = &self.shared.settings.limits;
                let w = el.weight();
                if self.held.len() >= limits.outbound_queue || self.held_bytes + w > limits.outbound_queue_bytes {
                    return Some(End::error(
                        C::PolicyViolation,
                        format!(
                            "{from_dom} awaits approval and sent more stanzas than are kept meanwhile (limits.outbound_queue, limits.outbound_queue_bytes)"
                        ),
                    ));
                }
                self.held_bytes += w;
                self.held.push_back(el);
                return None;
            }
            Some(Pair::Verifying) => return Some(End::error(C::InvalidFrom, format!("{from_dom} is still being verified for {to_dom}"))),
            None => return Some(End::error(C::InvalidFrom, format!("{from_dom} is not authenticated for {to_dom} on this stream"))),
        }
        self.deliver(el).await;
        None
    }

    /// A stanza of an authorised pair: checked (RFC 6120 §8: a malformed one is answered,
    /// never an error or a result, and not routed), then routed.
    async fn deliver(&self, el: Element) {
        self.entry.stanza_in();
        if let Err((etype, condition, text)) = crate::proto::stanza::check(&el) {
            tracing::debug!(stream = %self.entry.id, stanza = %el.describe(), "{condition}: {text}");
            if let Some(reply) = crate::proto::stanza::error_reply(&el, etype, condition, Some(text)) {
                self.shared.router.route(self.shared, reply).await;
            }
            return;
        }
        self.shared.router.route(self.shared, el).await;
    }
}
