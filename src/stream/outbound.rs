//! Outbound streams: we are the Originating Server (XEP-0220 §2.1.1) for one domain pair,
//! and carry the Receiving Server's `db:verify` requests to the peer as its Authoritative
//! Server (§2.1.2).
//!
//! States, in order: Connecting (DNS + TCP) → Tls (STARTTLS) → Authenticating (our
//! `db:result` sent) → Established (stanzas flow) → Closing. Failure at any step bounces the
//! queued stanzas with the reason and fails the queued verifications.

use std::collections::HashMap;
use std::sync::Arc;

use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tokio::time::{Instant, sleep_until};

use super::conn::{Conn, ConnError, Transport};
use crate::domain::Domain;
use crate::engine::Shared;
use crate::engine::events::*;
use crate::engine::table::ConnEntry;
use crate::proto::dialback::{self, Answer, DbElement};
use crate::proto::ns;
use crate::proto::stanza::{ErrorType, error_reply};
use crate::proto::stream::{StreamError, StreamErrorCondition, check_header, header};
use crate::router::VerifyRequest;
use crate::xml::{Element, Frame};

/// Why an outbound stream could not be set up or ended, and the stanza error condition
/// queued stanzas bounce with (RFC 6120 §8.3.3).
#[derive(Debug, Clone)]
struct Failure {
    condition: &'static str,
    reason: String,
}

impl Failure {
    fn new(reason: impl Into<String>) -> Failure {
        Failure { condition: "remote-server-not-found", reason: reason.into() }
    }
    fn timeout(reason: impl Into<String>) -> Failure {
        Failure { condition: "remote-server-timeout", reason: reason.into() }
    }
    fn policy(reason: impl Into<String>) -> Failure {
        Failure { condition: "policy-violation", reason: reason.into() }
    }
}

/// How a session ended.
enum End {
    /// Could not be set up, or broke: bounce what is queued.
    Failed(Failure, Option<Conn>),
    /// Idle timeout, shutdown or operator: close cleanly.
    Closed { conn: Conn, error: Option<StreamError>, reason: String },
    /// The peer closed or broke the stream after it was established.
    Lost { conn: Option<Conn>, peer_closed: bool, reason: String },
}

struct Out<'a> {
    shared: &'a Arc<Shared>,
    local: Domain,
    remote: Domain,
    entry: Arc<ConnEntry>,
    /// `db:verify` requests sent, by stream id, waiting for the answer.
    verifying: HashMap<String, Vec<crate::router::VerifyReply>>,
}

pub async fn run(
    shared: Arc<Shared>,
    local: Domain,
    remote: Domain,
    entry: Arc<ConnEntry>,
    mut stanzas: crate::router::queue::QueueRx,
    mut verifies: mpsc::Receiver<VerifyRequest>,
) {
    let mut out = Out { shared: &shared, local: local.clone(), remote: remote.clone(), entry: entry.clone(), verifying: HashMap::new() };
    let end = out.session(&mut stanzas, &mut verifies).await;
    // No new work can reach us once the handle is gone and the queues are closed.
    shared.router.remove(&local, &remote, &entry.id);
    stanzas.close();
    verifies.close();
    let close_timeout = shared.settings.timeouts.close;
    let reason = match end {
        End::Failed(f, conn) => {
            tracing::warn!(stream = %entry.id, %local, %remote, "outbound stream to {remote} failed: {}", f.reason);
            let cond = f.condition;
            let text = if cond == "policy-violation" { f.reason.clone() } else { format!("{remote}: {}", f.reason) };
            out.fail_verifies(&f);
            while let Ok(v) = verifies.try_recv() {
                let _ = v.reply.send(verify_failure(&remote, &f));
            }
            // The table says why before anyone hears back: a sender that gets the bounce
            // finds the failed stream and its reason in the connection table.
            shared.stream_closed(&entry, &f.reason);
            while let Ok(st) = stanzas.try_recv() {
                if let Some(b) = error_reply(&st, bounce_type(cond), cond, Some(&text)) {
                    shared.router.route(&shared, b).await;
                }
            }
            if let Some(mut c) = conn {
                let error = (cond == "policy-violation").then(|| StreamError::new(StreamErrorCondition::PolicyViolation, f.reason.clone()));
                c.close(error.as_ref(), close_timeout, false).await;
            }
            return;
        }
        End::Closed { mut conn, error, reason } => {
            // Whatever was queued before the handle went away still goes out on this stream.
            while let Ok(st) = stanzas.try_recv() {
                conn.send(&st);
                entry.stanza_out();
            }
            let f = Failure::new("stream closed");
            out.fail_verifies(&f);
            while let Ok(v) = verifies.try_recv() {
                let _ = v.reply.send(verify_failure(&remote, &f));
            }
            entry.set_state(ConnState::Closing);
            conn.close(error.as_ref(), close_timeout, false).await;
            reason
        }
        End::Lost { conn, peer_closed, reason } => {
            tracing::info!(stream = %entry.id, %local, %remote, "outbound stream to {remote} ended: {reason}");
            out.fail_verifies(&Failure::new(reason.clone()));
            while let Ok(v) = verifies.try_recv() {
                let _ = v.reply.send(verify_failure(&remote, &Failure::new(reason.clone())));
            }
            // Stanzas queued behind a lost stream get a new stream (once; its failure bounces).
            let mut rest = Vec::new();
            while let Ok(st) = stanzas.try_recv() {
                rest.push(st);
            }
            if let Some(mut c) = conn {
                entry.set_state(ConnState::Closing);
                c.close(None, close_timeout, peer_closed).await;
            }
            for st in rest {
                shared.router.route(&shared, st).await;
            }
            reason
        }
    };
    shared.stream_closed(&entry, &reason);
}

/// What the peer that asked for a verification learns: the condition, in neutral words (no
/// address, no kind of connect failure); the full reason reaches the operator.
fn verify_failure(remote: &Domain, f: &Failure) -> (Answer, Option<String>) {
    let answer = if f.condition == "remote-server-timeout" {
        Answer::error("remote-server-timeout", format!("{remote}'s authoritative server did not answer in time"))
    } else {
        Answer::error("remote-connection-failed", format!("{remote}'s authoritative server could not be reached"))
    };
    (answer, Some(f.reason.clone()))
}

/// RFC 6120 §8.3.3: remote-server-timeout is a `wait` error; remote-server-not-found and
/// policy-violation are `cancel`.
fn bounce_type(cond: &str) -> ErrorType {
    if cond == "remote-server-timeout" { ErrorType::Wait } else { ErrorType::Cancel }
}

impl Out<'_> {
    fn fail_verifies(&mut self, f: &Failure) {
        for (_, waiters) in self.verifying.drain() {
            for w in waiters {
                let _ = w.send(verify_failure(&self.remote, f));
            }
        }
    }

    async fn session(&mut self, stanzas: &mut crate::router::queue::QueueRx, verifies: &mut mpsc::Receiver<VerifyRequest>) -> End {
        let t = self.shared.settings.timeouts.clone();
        self.entry.set_state(ConnState::Connecting);
        let (tcp, direct) = tokio::select! {
            r = self.connect() => match r {
                Ok(x) => x,
                Err(f) => return End::Failed(f, None),
            },
            _ = self.entry.cancel.cancelled() => return End::Failed(Failure::new(self.cancel_reason()), None),
        };
        let limits = &self.shared.settings.limits;
        let mut conn = Conn::new(Transport::Plain(tcp), self.entry.clone(), limits, t.write);
        let deadline = Instant::now() + t.negotiation;
        let negotiated = tokio::select! {
            r = async {
                if direct {
                    // XEP-0368: TLS from the first byte, then the stream.
                    self.entry.set_state(ConnState::Tls);
                    self.tls_client(&mut conn, true).await?;
                }
                self.negotiate(&mut conn).await
            } => r,
            _ = sleep_until(deadline) => Err(Failure::timeout(format!("stream negotiation took longer than {}s (timeouts.negotiation)", t.negotiation.as_secs()))),
            _ = self.entry.cancel.cancelled() => Err(Failure::new(self.cancel_reason())),
        };
        let (stream_id, by_sasl) = match negotiated {
            Ok(r) => r,
            Err(f) => return End::Failed(f, Some(conn)),
        };
        if by_sasl {
            self.entry.set_pair(&self.local, &self.remote, PairStatus::Valid, AuthMethod::SaslExternal);
            self.entry.set_state(ConnState::Established);
            self.outcome_with(
                AuthMethod::SaslExternal,
                VerificationResult::Valid,
                format!("{} accepted our certificate (SASL EXTERNAL)", self.remote),
            );
            return self.established(conn, stanzas, verifies).await;
        }

        if let (crate::config::AuthMode::CertOnly, rule) = self.shared.settings.security.auth_for(self.remote.as_str()) {
            return End::Failed(
                Failure::new(format!("{} did not accept our certificate (SASL EXTERNAL) and {rule} forbids dialback", self.remote)),
                Some(conn),
            );
        }

        // Dialback, Originating Server role (XEP-0220 §2.1.1).
        self.entry.set_state(ConnState::Authenticating);
        let key = dialback::derive_key(&self.shared.secret, self.remote.as_str(), self.local.as_str(), &stream_id);
        conn.send(&dialback::result_request(self.local.as_str(), self.remote.as_str(), &key));
        self.entry.set_pair(&self.local, &self.remote, PairStatus::Pending, AuthMethod::Dialback);
        if let Err(e) = conn.flush().await {
            return End::Failed(Failure::new(format!("write failed: {e}")), None);
        }
        let auth_deadline = Instant::now() + t.dialback;
        loop {
            tokio::select! {
                biased;
                _ = self.entry.cancel.cancelled() => return End::Failed(Failure::new(self.cancel_reason()), Some(conn)),
                v = verifies.recv() => if let Some(v) = v {
                    self.send_verify(&mut conn, v);
                    if let Err(e) = conn.flush().await {
                        return End::Failed(Failure::new(format!("write failed: {e}")), None);
                    }
                },
                _ = sleep_until(auth_deadline) => {
                    return End::Failed(Failure::timeout(format!("no dialback answer from {} within {}s (timeouts.dialback)", self.remote, t.dialback.as_secs())), Some(conn));
                }
                f = conn.read_frame() => match f {
                    Ok(Frame::Element(el)) => {
                        if let Some(db) = DbElement::parse(&el) {
                            let ours = !db.verify && db.from == self.remote.as_str() && db.to == self.local.as_str();
                            if let (true, Some(answer)) = (ours, db.answer.clone()) {
                                match answer {
                                    Answer::Valid => break,
                                    a => {
                                        self.entry.remove_pair(&self.local, &self.remote);
                                        self.outcome(VerificationResult::Invalid, format!("{} answered our dialback with {}", self.remote, a.describe()));
                                        return End::Failed(Failure::new(format!("dialback: {} answered {}", self.remote, a.describe())), Some(conn));
                                    }
                                }
                            }
                            self.on_dialback(&db);
                        } else if let Some(f) = peer_error(&el) {
                            return End::Failed(f, None);
                        }
                    }
                    Ok(Frame::StreamClose) => return End::Failed(Failure::new("the peer closed the stream during dialback"), Some(conn)),
                    Ok(Frame::StreamOpen(_)) => {}
                    Err(e) => return End::Failed(Failure::new(format!("during dialback: {e}")), None),
                }
            }
        }
        self.entry.set_pair(&self.local, &self.remote, PairStatus::Valid, AuthMethod::Dialback);
        self.entry.set_state(ConnState::Established);
        self.outcome(VerificationResult::Valid, format!("{} accepted our dialback key", self.remote));
        self.established(conn, stanzas, verifies).await
    }

    /// Established: policy hold if any, then stanzas flow.
    async fn established(
        &mut self,
        mut conn: Conn,
        stanzas: &mut crate::router::queue::QueueRx,
        verifies: &mut mpsc::Receiver<VerifyRequest>,
    ) -> End {
        let t = self.shared.settings.timeouts.clone();

        // Policy: in approval mode an undecided domain's traffic waits for the operator.
        let mut policy_changes = self.shared.policy.subscribe();
        let hold_until = Instant::now() + self.shared.settings.policy.approval_wait;
        loop {
            match self.shared.policy.verdict(&self.remote) {
                crate::policy::Verdict::Allow => break,
                crate::policy::Verdict::Refuse(why) => return End::Failed(Failure::policy(why), Some(conn)),
                crate::policy::Verdict::Hold => {
                    self.shared.mark_pending(&self.remote);
                    tracing::info!(stream = %self.entry.id, "holding traffic to {}: awaiting approval", self.remote);
                }
            }
            tokio::select! {
                biased;
                _ = self.entry.cancel.cancelled() => return End::Failed(Failure::new(self.cancel_reason()), Some(conn)),
                _ = policy_changes.changed() => {}
                _ = sleep_until(hold_until) => {
                    return End::Failed(Failure::policy(format!("{} awaits approval by the operator (policy mode approval)", self.remote)), Some(conn));
                }
                v = verifies.recv() => if let Some(v) = v {
                    self.send_verify(&mut conn, v);
                    if let Err(e) = conn.flush().await {
                        return End::Failed(Failure::new(format!("write failed: {e}")), None);
                    }
                },
                f = conn.read_frame() => match f {
                    Ok(Frame::Element(el)) => {
                        if let Some(db) = DbElement::parse(&el) {
                            self.on_dialback(&db);
                        } else if let Some(f) = peer_error(&el) {
                            return End::Failed(f, None);
                        }
                    }
                    Ok(Frame::StreamOpen(_)) => {}
                    Ok(Frame::StreamClose) => return End::Failed(Failure::new("the peer closed the stream"), Some(conn)),
                    Err(e) => return End::Failed(Failure::new(e.to_string()), None),
                },
            }
        }

        // Established: stanzas flow; whitespace keepalives when idle (RFC 6120 §4.6.1).
        let mut last_write = Instant::now();
        let mut last_stanza = Instant::now();
        loop {
            let keepalive_at = last_write + t.keepalive;
            let idle_at = last_stanza + t.idle_outbound;
            tokio::select! {
                biased;
                _ = self.entry.cancel.cancelled() => {
                    let (reason, error) = match self.entry.close_request() {
                        Some(r) => r,
                        None => ("server shutting down".into(), Some(StreamError::new(StreamErrorCondition::SystemShutdown, "server shutting down"))),
                    };
                    return End::Closed { conn, error, reason };
                }
                f = conn.read_frame() => match f {
                    Ok(Frame::Element(el)) => {
                        if let Some(db) = DbElement::parse(&el) {
                            self.on_dialback(&db);
                        } else if let Some(f) = peer_error(&el) {
                            return End::Lost { conn: None, peer_closed: true, reason: f.reason };
                        } else {
                            tracing::debug!(stream = %self.entry.id, element = %el.describe(), "ignoring an element on an outbound stream");
                        }
                    }
                    Ok(Frame::StreamClose) => return End::Lost { conn: Some(conn), peer_closed: true, reason: "closed by the peer".into() },
                    Ok(Frame::StreamOpen(_)) => {}
                    Err(ConnError::Eof) => return End::Lost { conn: None, peer_closed: true, reason: "connection closed by the peer".into() },
                    Err(e) => return End::Lost { conn: None, peer_closed: false, reason: e.to_string() },
                },
                s = stanzas.recv() => {
                    let Some(st) = s else { return End::Closed { conn, error: None, reason: "router gone".into() } };
                    conn.send(&st);
                    self.entry.stanza_out();
                    // Batch what is already queued into the same write (few TLS records).
                    let mut batched = 1;
                    while batched < 64 {
                        match stanzas.try_recv() {
                            Ok(st) => { conn.send(&st); self.entry.stanza_out(); batched += 1; }
                            Err(_) => break,
                        }
                    }
                    if let Err(e) = conn.flush().await {
                        return End::Lost { conn: None, peer_closed: false, reason: format!("write failed: {e}") };
                    }
                    last_write = Instant::now();
                    last_stanza = last_write;
                }
                v = verifies.recv() => if let Some(v) = v {
                    self.send_verify(&mut conn, v);
                    if let Err(e) = conn.flush().await {
                        return End::Lost { conn: None, peer_closed: false, reason: format!("write failed: {e}") };
                    }
                    last_write = Instant::now();
                },
                _ = sleep_until(keepalive_at) => {
                    conn.send_raw(" ");
                    if let Err(e) = conn.flush().await {
                        return End::Lost { conn: None, peer_closed: false, reason: format!("keepalive failed: {e}") };
                    }
                    last_write = Instant::now();
                }
                _ = sleep_until(idle_at) => {
                    // Take the handle away first so new stanzas start a fresh stream.
                    self.shared.router.remove(&self.local, &self.remote, &self.entry.id);
                    return End::Closed { conn, error: None, reason: format!("idle for {}s (timeouts.idle_outbound)", t.idle_outbound.as_secs()) };
                }
            }
        }
    }

    fn cancel_reason(&self) -> String {
        self.entry.close_request().map(|(r, _)| r).unwrap_or_else(|| "server shutting down".into())
    }

    fn outcome(&self, result: VerificationResult, reason: String) {
        self.outcome_with(AuthMethod::Dialback, result, reason)
    }

    fn outcome_with(&self, method: AuthMethod, result: VerificationResult, reason: String) {
        self.shared.record_outcome(VerificationOutcome {
            time_ms: now_ms(),
            stream: self.entry.id.clone(),
            direction: Direction::Out,
            local: self.local.to_string(),
            remote: self.remote.to_string(),
            method,
            result,
            reason,
            peer_addr: self.entry.peer_addr(),
        });
    }

    /// Judge the peer's certificate for the domain we dialled; recorded as an outcome.
    fn judge_cert(&self, chain: &[rustls::pki_types::CertificateDer<'static>]) -> crate::net::certs::CertVerdict {
        let verdict = self.shared.tls().judge.judge(chain, self.remote.as_str(), rustls::pki_types::UnixTime::now());
        let result = if verdict.is_valid() { VerificationResult::Valid } else { VerificationResult::Invalid };
        self.outcome_with(AuthMethod::Certificate, result, format!("certificate for {}: {verdict}", self.remote));
        verdict
    }

    fn send_verify(&mut self, conn: &mut Conn, v: VerifyRequest) {
        conn.send(&dialback::verify_request(self.local.as_str(), self.remote.as_str(), &v.stream_id, &v.key));
        self.verifying.entry(v.stream_id).or_default().push(v.reply);
    }

    /// A dialback element received on this stream: answers to our `db:verify` requests.
    fn on_dialback(&mut self, db: &DbElement) {
        if db.verify
            && let (Some(answer), Some(id)) = (&db.answer, &db.id)
            && db.from == self.remote.as_str()
            && db.to == self.local.as_str()
            && let Some(waiters) = self.verifying.remove(id)
        {
            for w in waiters {
                let _ = w.send((answer.clone(), None));
            }
            return;
        }
        let clip = crate::xml::element::clip;
        tracing::debug!(stream = %self.entry.id, "ignoring unexpected dialback element from {} to {}", clip(&db.from, 64), clip(&db.to, 64));
    }

    /// DNS (overrides, SRV, fallback), then TCP to each address in order until one answers:
    /// at most `[outbound] max_targets` targets and `max_addresses` addresses each, never
    /// an address in `[outbound] deny`, and one of `max_dials` dial slots held meanwhile.
    /// The full story goes to the log and the table; what peers learn is neutral.
    async fn connect(&self) -> Result<(TcpStream, bool), Failure> {
        let out = &self.shared.settings.outbound;
        if crate::net::dial::is_ip_literal(self.remote.as_str()) {
            return Err(Failure::new(format!("{} is an IP address, not a federation domain", self.remote)));
        }
        let _slot = match self.shared.dials.clone().try_acquire_owned() {
            Ok(p) => p,
            Err(_) => {
                crate::engine::limits::refused_once("outbound.max_dials", "*", || {
                    format!("{} outbound connection attempts in progress (outbound.max_dials); further dials wait", out.max_dials)
                });
                self.shared.dials.clone().acquire_owned().await.map_err(|_| Failure::new("shutting down"))?
            }
        };
        let resolver = &self.shared.resolver;
        let budget = self.shared.settings.dns.timeout * 4;
        let targets = match tokio::time::timeout(budget, resolver.targets(&self.remote)).await {
            Ok(Ok(t)) => t,
            Ok(Err(e)) => return Err(Failure::new(e.to_string())),
            Err(_) => {
                return Err(Failure::timeout(format!("DNS: no answer for {} within {}s (dns.timeout)", self.remote, budget.as_secs())));
            }
        };
        let connect_timeout = self.shared.settings.timeouts.connect;
        let mut tried = Vec::new();
        if targets.len() > out.max_targets {
            tried.push(format!("{} SRV targets, only the first {} tried (outbound.max_targets)", targets.len(), out.max_targets));
        }
        for target in targets.iter().take(out.max_targets) {
            let addrs = match tokio::time::timeout(budget, resolver.addresses(target)).await {
                Ok(Ok(a)) => a,
                Ok(Err(e)) => {
                    tried.push(format!("{target}: {e}"));
                    continue;
                }
                Err(_) => {
                    tried.push(format!("{target}: DNS timeout"));
                    continue;
                }
            };
            for addr in addrs.into_iter().take(out.max_addresses) {
                if let Some(range) = crate::net::dial::denied(&out.deny, addr.ip()) {
                    tried.push(format!("{addr} ({target}): in {range}, which outbound.deny forbids"));
                    continue;
                }
                match tokio::time::timeout(connect_timeout, TcpStream::connect(addr)).await {
                    Ok(Ok(tcp)) => {
                        let _ = tcp.set_nodelay(true);
                        self.entry.set_peer_addr(addr);
                        tracing::debug!(stream = %self.entry.id, %addr, %target, "connected to {}", self.remote);
                        return Ok((tcp, target.source == crate::net::resolve::TargetSource::SrvDirectTls));
                    }
                    Ok(Err(e)) => tried.push(format!("{addr} ({target}): {e}")),
                    Err(_) => tried.push(format!("{addr} ({target}): no answer within {}s (timeouts.connect)", connect_timeout.as_secs())),
                }
            }
        }
        let all_timeouts = !tried.is_empty() && tried.iter().all(|t| t.contains("no answer within"));
        let reason = format!("connect: {}", tried.join("; "));
        Err(if all_timeouts { Failure::timeout(reason) } else { Failure::new(reason) })
    }

    /// Stream headers and features, STARTTLS and the restart, then SASL EXTERNAL when the peer
    /// offers it. Returns the peer's stream id and whether SASL authenticated us.
    async fn negotiate(&self, conn: &mut Conn) -> Result<(String, bool), Failure> {
        let (require_tls, tls_rule) = self.shared.settings.security.require_encryption_for(self.remote.as_str());
        loop {
            conn.send_raw(&header(Some(self.local.as_str()), Some(self.remote.as_str()), None));
            conn.flush().await.map_err(|e| Failure::new(format!("write failed: {e}")))?;
            let h = match conn.read_frame().await.map_err(|e| Failure::new(format!("reading the stream header: {e}")))? {
                Frame::StreamOpen(h) => h,
                _ => return Err(Failure::new("the peer did not open a stream")),
            };
            if let Err(e) = check_header(&h) {
                conn.send(&e.to_element());
                let _ = conn.flush().await;
                return Err(Failure::new(format!("bad stream header from the peer: {e}")));
            }
            let stream_id = h.id.clone().filter(|i| !i.is_empty());
            let features = match conn.read_frame().await.map_err(|e| Failure::new(format!("reading stream features: {e}")))? {
                Frame::Element(el) if el.is("features", ns::STREAMS) => el,
                Frame::Element(el) => {
                    return Err(peer_error(&el).unwrap_or_else(|| Failure::new(format!("expected stream features, got {}", el.describe()))));
                }
                Frame::StreamClose => return Err(Failure::new("the peer closed the stream")),
                Frame::StreamOpen(_) => return Err(Failure::new("unexpected second stream header")),
            };
            if conn.io.is_tls() {
                conn.entry.set_stream_id(stream_id.as_deref().unwrap_or(""));
                let external = features
                    .get_child("mechanisms", ns::SASL)
                    .is_some_and(|m| m.elements().any(|x| x.name == "mechanism" && x.text_content().trim() == "EXTERNAL"));
                if external && self.sasl_external(conn).await? {
                    return Ok((stream_id.unwrap_or_default(), true));
                }
                return stream_id
                    .map(|id| (id, false))
                    .ok_or_else(|| Failure::new("the peer's stream header has no id, so dialback is impossible"));
            }
            if !features.has_child("starttls", ns::TLS) {
                if let (crate::config::AuthMode::CertOnly, rule) = self.shared.settings.security.auth_for(self.remote.as_str()) {
                    return Err(Failure::policy(format!(
                        "{} does not offer STARTTLS, so it cannot prove itself by certificate as required ({rule})",
                        self.remote
                    )));
                }
                if require_tls {
                    return Err(Failure::new(format!("{} does not offer STARTTLS and encryption is required ({tls_rule})", self.remote)));
                }
                conn.entry.set_stream_id(stream_id.as_deref().unwrap_or(""));
                return stream_id
                    .map(|id| (id, false))
                    .ok_or_else(|| Failure::new("the peer's stream header has no id, so dialback is impossible"));
            }
            // STARTTLS (RFC 6120 §5.4.2).
            self.entry.set_state(ConnState::Tls);
            conn.send(&Element::new("starttls", ns::TLS));
            conn.flush().await.map_err(|e| Failure::new(format!("write failed: {e}")))?;
            match conn.read_frame().await.map_err(|e| Failure::new(format!("STARTTLS: {e}")))? {
                Frame::Element(el) if el.is("proceed", ns::TLS) => {}
                Frame::Element(el) if el.is("failure", ns::TLS) => {
                    return Err(Failure::new("TLS: the peer answered STARTTLS with <failure/>"));
                }
                _ => return Err(Failure::new("TLS: unexpected answer to STARTTLS")),
            }
            if conn.framer.pending() > 0 {
                return Err(Failure::new("TLS: data after <proceed/> (plaintext injection); refusing to continue"));
            }
            self.tls_client(conn, false).await?;
            conn.restart();
        }
    }
}

impl Out<'_> {
    /// The TLS handshake as a client (after STARTTLS, or at once for direct TLS).
    async fn tls_client(&self, conn: &mut Conn, direct: bool) -> Result<(), Failure> {
        let Transport::Plain(tcp) = std::mem::replace(&mut conn.io, Transport::Gone) else {
            return Err(Failure::new("TLS: transport in an unexpected state"));
        };
        let mut config = self.shared.tls().client_config(&self.local);
        if direct {
            // XEP-0368 §3: ALPN "xmpp-server" on direct TLS.
            let mut c = (*config).clone();
            c.alpn_protocols = vec![b"xmpp-server".to_vec()];
            config = std::sync::Arc::new(c);
        }
        let connector = tokio_rustls::TlsConnector::from(config);
        let name = rustls::pki_types::ServerName::try_from(self.remote.ascii().into_owned())
            .map_err(|e| Failure::new(format!("TLS: {} is not a valid TLS server name: {e}", self.remote)))?;
        let tls = connector.connect(name, tcp).await.map_err(|e| Failure::new(format!("TLS handshake: {e}")))?;
        let (_, session) = tls.get_ref();
        let verdict = self.judge_cert(session.peer_certificates().unwrap_or(&[]));
        let valid = verdict.is_valid();
        let shown = verdict.to_string();
        self.entry.tls_established(if direct { "direct TLS (XEP-0368)" } else { "TLS" }, session, Some(verdict));
        conn.io = Transport::Tls(Box::new(tokio_rustls::TlsStream::Client(tls)));
        // Where policy wants certificates, whoever answers DNS for the domain must prove it
        // by one before a stanza leaves (RFC 6120 §13.7.2, XEP-0178).
        if !valid && let (crate::config::AuthMode::CertOnly, rule) = self.shared.settings.security.auth_for(self.remote.as_str()) {
            return Err(Failure::policy(format!(
                "{}'s certificate is not valid for it ({shown}) and certificates are required ({rule}); nothing was sent",
                self.remote
            )));
        }
        Ok(())
    }
}

impl Out<'_> {
    /// SASL EXTERNAL towards the peer (RFC 6120 §6.4.1, XEP-0178 §3); on `<success/>` the
    /// stream restarts. `Ok(false)`: the peer refused, dialback follows on this stream.
    async fn sasl_external(&self, conn: &mut Conn) -> Result<bool, Failure> {
        conn.send(&Element::new("auth", ns::SASL).attr("mechanism", "EXTERNAL").text("="));
        conn.flush().await.map_err(|e| Failure::new(format!("write failed: {e}")))?;
        match conn.read_frame().await.map_err(|e| Failure::new(format!("SASL: {e}")))? {
            Frame::Element(el) if el.is("success", ns::SASL) => {}
            Frame::Element(el) if el.is("failure", ns::SASL) => {
                let cond = el.elements().find(|e| e.name != "text").map(|e| e.name.to_string()).unwrap_or_default();
                let text = el.get_child("text", ns::SASL).map(|t| t.text_content()).unwrap_or_default();
                tracing::info!(stream = %self.entry.id, "{} refused SASL EXTERNAL: {cond} {text}; falling back to dialback", self.remote);
                self.outcome_with(
                    AuthMethod::SaslExternal,
                    VerificationResult::Invalid,
                    format!("{} refused our certificate (SASL EXTERNAL <{cond}/> {text}); falling back to dialback", self.remote),
                );
                return Ok(false);
            }
            _ => return Err(Failure::new("SASL: unexpected answer to <auth/>")),
        }
        // RFC 6120 §6.4.6: restart the stream.
        conn.restart();
        conn.send_raw(&header(Some(self.local.as_str()), Some(self.remote.as_str()), None));
        conn.flush().await.map_err(|e| Failure::new(format!("write failed: {e}")))?;
        match conn.read_frame().await.map_err(|e| Failure::new(format!("after SASL: {e}")))? {
            Frame::StreamOpen(h) => conn.entry.set_stream_id(h.id.as_deref().unwrap_or("")),
            _ => return Err(Failure::new("the peer did not restart the stream after SASL")),
        }
        match conn.read_frame().await.map_err(|e| Failure::new(format!("after SASL: {e}")))? {
            Frame::Element(el) if el.is("features", ns::STREAMS) => Ok(true),
            _ => Err(Failure::new("no stream features after SASL")),
        }
    }
}

/// A `<stream:error/>` from the peer, as a failure.
fn peer_error(el: &Element) -> Option<Failure> {
    el.is("error", ns::STREAMS).then(|| Failure::new(format!("the peer sent stream error {}", StreamError::from_element(el))))
}
