//! Gateway mode: drawbridge in front of an existing XMPP server (Prosody, ejabberd,
//! Openfire) that really hosts `server.domains`.
//!
//! ```text
//!   world ── s2s ──▶ drawbridge ── "as R" ──▶ internal server   (world → internal)
//!   world ◀── s2s ── drawbridge ◀── s2s ──── internal server   (internal → world, gateway.listen)
//! ```
//!
//! The world federates with drawbridge under its usual rules (authentication, policy,
//! approval, transcripts). A stanza from remote domain R to hosted domain H is then carried
//! on the **internal link**: an outbound stream drawbridge opens to `gateway.internal` for
//! the pair (R, H), speaking *as R* — with a certificate for R minted by the gateway CA
//! ([`ca`]) and SASL EXTERNAL (`auth = "pki"`), or by dialback whose callback for R the
//! internal server makes to drawbridge itself (`auth = "dialback"`). The internal server's own
//! streams to the world arrive at `gateway.listen`, addressed to R: drawbridge presents R's
//! minted certificate (chosen by the stream's `to`: Prosody sends no SNI), authenticates the
//! internal server as H (its certificate, trusted through `[tls] ca_file`, or dialback called
//! back at `gateway.internal` over the internal link — never through DNS), and routes its
//! stanzas into its normal federation, where the policy applies as to any stanza of ours.
//!
//! Everything here is the same stream machine and drivers as federation; what differs is
//! their environment ([`internal_env`]: the world is what is "served" on this side, only the
//! hosted domains may be peers, the auth mode of `gateway.auth`), their certificates
//! ([`GatewayTls`]) and where outbound streams connect (`Caps::internal`).

pub mod ca;
pub mod setup;

use std::sync::Arc;
use std::time::SystemTime;

use crate::config::{GatewayAuth, Settings};
use crate::domain::Domain;
use crate::net::tls::{client_config_with, single_cert_server_config};
use crate::proto::machine::{Env, PolicyView, StreamIds};
use crate::stream::TlsConfigs;
use crate::types::{AuthMode, Security, Verdict};

pub use ca::GatewayCa;

/// Certificates on the internal link: the one minted for the remote domain drawbridge stands
/// in for (the stream's local domain on this side).
pub struct GatewayTls {
    pub ca: Arc<GatewayCa>,
}

impl GatewayTls {
    fn minted(&self, local: &Domain) -> Result<Arc<ca::Minted>, crate::stream::TlsConfigError> {
        self.ca.certificate_for(local, SystemTime::now()).map_err(|e| {
            match &e {
                // A budget running out is logged once a minute, not once per stream.
                ca::CaError::Busy { .. } => {
                    crate::limits::refused_once(crate::limits::LimitKey::GatewayMintsPerMinute, "*", || format!("gateway: {e}"))
                }
                _ => tracing::error!("gateway: {e}"),
            }
            crate::stream::TlsConfigError::NoCertificate { domain: local.clone(), source: Box::new(e) }
        })
    }
}

impl TlsConfigs for GatewayTls {
    fn server_config(&self, local: &Domain) -> Result<Arc<rustls::ServerConfig>, crate::stream::TlsConfigError> {
        let m = self.minted(local)?;
        Ok(Arc::new(single_cert_server_config(m.chain.clone(), m.key.clone_key())?))
    }

    fn client_config(&self, local: &Domain) -> Result<Arc<rustls::ClientConfig>, crate::stream::TlsConfigError> {
        let m = self.minted(local)?;
        Ok(Arc::new(client_config_with(m.chain.clone(), m.key.clone_key())?))
    }
}

/// Who may be a peer on the internal link: the internal server's domains (`server.domains`)
/// and nobody else. Anyone else reaching `gateway.listen` is refused at its stream header.
pub struct InternalPeers {
    /// `server.domains`: the internal server's.
    internal_domains: Vec<Domain>,
}

impl PolicyView for InternalPeers {
    fn verdict(&self, remote: &Domain) -> Verdict {
        if self.internal_domains.contains(remote) {
            Verdict::Allow
        } else {
            Verdict::Refuse(format!(
                "only the internal server's domains ({}) may connect to the gateway listener (gateway.listen); {remote} is not one",
                self.internal_domains.iter().map(Domain::as_str).collect::<Vec<_>>().join(", ")
            ))
        }
    }
}

/// The internal server's trust anchor (`gateway.internal_ca`), and nothing else: under
/// `pki` its certificate must chain to it — not to the system roots or `[tls] ca_file`,
/// under which a public CA's certificate for the hosted domain (drawbridge's own, in the
/// normal deployment) would pass for the internal server (issue 16). Without one (under
/// `dialback`), no certificate is valid on the internal link and dialback decides.
pub struct InternalTrust(crate::net::certs::CertJudge);

impl InternalTrust {
    pub fn load(path: Option<&std::path::Path>) -> Result<InternalTrust, ca::CaError> {
        let Some(path) = path else { return Ok(InternalTrust(crate::net::certs::CertJudge::new(&[], false))) };
        let err = |why: String| ca::CaError::InternalCa { path: path.to_owned(), why };
        let roots: Vec<rustls::pki_types::CertificateDer<'static>> = rustls::pki_types::pem::PemObject::pem_file_iter(path)
            .map_err(|e| err(e.to_string()))?
            .collect::<Result<_, _>>()
            .map_err(|e| err(e.to_string()))?;
        if roots.is_empty() {
            return Err(err("no PEM certificate found".into()));
        }
        for (i, r) in roots.iter().enumerate() {
            x509_parser::parse_x509_certificate(r).map_err(|e| err(format!("certificate #{}: {e}", i + 1)))?;
        }
        Ok(InternalTrust(crate::net::certs::CertJudge::new(&roots, false)))
    }
}

impl crate::proto::machine::CertJudge for InternalTrust {
    fn judge(
        &self,
        chain: &[rustls::pki_types::CertificateDer<'_>],
        domain: &Domain,
        at: rustls::pki_types::UnixTime,
    ) -> crate::types::CertVerdict {
        self.0.judge(chain, domain.as_str(), at)
    }
}

/// Whether `ip` may connect to `gateway.listen` (`gateway.allow`, by default the address of
/// `gateway.internal`): anyone else is dropped before a byte is read.
pub fn allowed(g: &crate::config::GatewaySettings, ip: std::net::IpAddr) -> bool {
    g.allow.iter().any(|r| r.contains(ip))
}

/// The rules of the internal link: `pki` accepts certificates only (dialback is refused
/// both ways); `dialback` allows it. Encryption as `[tls] require_encryption` says.
pub fn internal_security(auth: GatewayAuth, require_encryption: bool) -> Security {
    let auth = match auth {
        GatewayAuth::Pki => AuthMode::CertOnly,
        GatewayAuth::Dialback => AuthMode::CertOrDialback,
    };
    Security { auth, require_encryption, rules: Vec::new() }
}

/// The stream machines' environment on the internal link, from federation's: the world is
/// served on this side (`serves_world`), the internal server's domains are the only peers,
/// and the auth mode is `gateway.auth`'s. Dialback keys are the same secret, so the keys
/// drawbridge sends as R verify when the internal server calls R back at drawbridge.
pub fn internal_env(federation: &Env, settings: &Settings, auth: GatewayAuth, ids: Arc<StreamIds>, trust: Arc<InternalTrust>) -> Env {
    Env {
        hosted: settings.domains.clone(),
        serves_world: true,
        with_subdomains: Vec::new(),
        timeouts: federation.timeouts.clone(),
        limits: federation.limits.clone(),
        security: internal_security(auth, settings.tls.require_encryption),
        keys: federation.keys.clone(),
        policy: Arc::new(InternalPeers { internal_domains: settings.domains.clone() }),
        certs: trust,
        stream_ids: {
            let ids = ids.clone();
            Box::new(move || ids.issue())
        },
        issued_here: Box::new(move |id| ids.issued_here(id)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_internal_servers_domains_are_peers() {
        let d = |s: &str| Domain::parse(s).unwrap();
        let p = InternalPeers { internal_domains: vec![d("h.test"), d("h2.test")] };
        assert_eq!(p.verdict(&d("h2.test")), Verdict::Allow);
        let Verdict::Refuse(why) = p.verdict(&d("stranger.test")) else { panic!("a stranger is refused") };
        assert!(why.contains("gateway.listen") && why.contains("h.test, h2.test") && why.contains("stranger.test"), "{why}");
    }

    #[test]
    fn the_internal_ca_file_is_checked_and_named() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("nope.pem");
        let e = InternalTrust::load(Some(&missing)).err().unwrap().to_string();
        assert!(e.contains("nope.pem") && e.contains("gateway.internal_ca"), "{e}");
        let empty = dir.path().join("empty.pem");
        std::fs::write(&empty, "not a certificate\n").unwrap();
        let e = InternalTrust::load(Some(&empty)).err().unwrap().to_string();
        assert!(e.contains("no PEM certificate") && e.contains("gateway.internal_ca"), "{e}");
        // A CA that is one: its certificates are valid, the minted ones (another CA) are not.
        let ca = GatewayCa::open(None, None, dir.path()).unwrap();
        let trust = InternalTrust::load(Some(ca.cert_path())).unwrap();
        let d = Domain::parse("h.test").unwrap();
        let m = ca.certificate_for(&d, SystemTime::now()).unwrap();
        let at = rustls::pki_types::UnixTime::now();
        use crate::proto::machine::CertJudge;
        assert!(trust.judge(&m.chain, &d, at).is_valid());
        let other = tempfile::tempdir().unwrap();
        let stranger = GatewayCa::open(None, None, other.path()).unwrap().certificate_for(&d, SystemTime::now()).unwrap();
        assert!(!trust.judge(&stranger.chain, &d, at).is_valid(), "another CA's certificate for the same domain");
        // None (dialback): nothing is valid, dialback decides.
        assert!(!InternalTrust::load(None).unwrap().judge(&m.chain, &d, at).is_valid());
    }

    #[test]
    fn pki_refuses_dialback_on_the_internal_link() {
        assert_eq!(internal_security(GatewayAuth::Pki, true).auth_for("h.test").0, AuthMode::CertOnly);
        assert_eq!(internal_security(GatewayAuth::Dialback, true).auth_for("h.test").0, AuthMode::CertOrDialback);
        assert!(internal_security(GatewayAuth::Dialback, true).require_encryption_for("h.test").0);
    }
}
