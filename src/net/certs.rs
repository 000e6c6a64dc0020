//! Judging a peer's certificate for a domain (RFC 6125 / RFC 9525, XEP-0178): the chain to
//! the trust roots (the system's plus `[tls] ca_file`), the validity dates, and the name —
//! DNS-ID (a wildcard only as the whole left-most label), SRV-ID `_xmpp-server.DOMAIN`, or
//! XmppAddr. Server-auth-only certificates are accepted as client certificates (peers
//! present their server certificate). The verdict is a value with a reason in words.

use std::sync::Arc;

use rustls::RootCertStore;
use rustls::pki_types::{CertificateDer, UnixTime};

pub use crate::types::CertVerdict;

/// id-on-xmppAddr (RFC 6120 §13.7.1.4).
const OID_XMPP_ADDR: &str = "1.3.6.1.5.5.7.8.5";
/// id-on-dnsSRV (RFC 4985).
const OID_SRV_NAME: &str = "1.3.6.1.5.5.7.8.7";

/// Bytes kept of one name a peer's certificate carries (subject, issuer, a SAN), escaped
/// ([`crate::text::clip`]): what reaches the connection table, outcomes, logs and screens.
pub const CERT_NAME_MAX: usize = 256;
/// Names kept of a certificate's SANs for display (matching looks at all of them).
pub const CERT_NAMES_KEPT: usize = 8;

/// A certificate's name as it may be kept: escaped and clipped at [`CERT_NAME_MAX`].
pub fn kept_name(s: &str) -> String {
    crate::text::clip(s, CERT_NAME_MAX).into_owned()
}

/// At most [`CERT_NAMES_KEPT`] of `names`, each [`kept_name`], and a last entry saying how
/// many more there were: a certificate with thousands of 30 KB names leaves a few lines.
pub fn kept_names<S: AsRef<str>>(names: impl ExactSizeIterator<Item = S>) -> Vec<String> {
    let total = names.len();
    let mut v: Vec<String> = names.take(CERT_NAMES_KEPT).map(|n| kept_name(n.as_ref())).collect();
    if total > CERT_NAMES_KEPT {
        v.push(format!("… ({} more)", total - CERT_NAMES_KEPT));
    }
    v
}

/// The names a certificate carries, by kind.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct CertNames {
    pub dns: Vec<String>,
    pub srv: Vec<String>,
    pub xmpp: Vec<String>,
}

impl CertNames {
    pub fn from_der(der: &[u8]) -> CertNames {
        let mut n = CertNames::default();
        let Ok((_, cert)) = x509_parser::parse_x509_certificate(der) else { return n };
        if let Ok(Some(san)) = cert.subject_alternative_name() {
            for g in &san.value.general_names {
                match g {
                    x509_parser::extensions::GeneralName::DNSName(d) => n.dns.push(d.to_ascii_lowercase()),
                    x509_parser::extensions::GeneralName::OtherName(oid, value) => {
                        let Some(s) = der_string(value) else { continue };
                        match oid.to_id_string().as_str() {
                            OID_XMPP_ADDR => n.xmpp.push(s),
                            OID_SRV_NAME => n.srv.push(s.to_ascii_lowercase()),
                            _ => {}
                        }
                    }
                    _ => {}
                }
            }
        }
        n
    }

    /// The names, for messages: a few, escaped and clipped ([`kept_names`]).
    pub fn all(&self) -> Vec<String> {
        let xmpp = self.xmpp.iter().map(|x| format!("xmpp:{x}"));
        let all: Vec<String> = self.dns.iter().chain(&self.srv).cloned().chain(xmpp).collect();
        kept_names(all.iter())
    }

    /// RFC 6125 §6 / XEP-0178: does any identifier match `domain`?
    /// Names compare as A-labels: DNS-IDs and SRV-IDs carry them already; an XmppAddr is
    /// UTF-8 and may carry U-labels (RFC 6120 §13.7.1.4), so it is mapped first.
    pub fn matches(&self, domain: &str) -> bool {
        let ascii = |d: &str| crate::domain::Domain::parse(d).map(|d| d.ascii().into_owned());
        let domain = ascii(domain).unwrap_or_else(|_| domain.to_ascii_lowercase());
        self.dns.iter().any(|p| dns_id_matches(p, &domain))
            || self.srv.iter().any(|s| srv_id_matches(s, &domain))
            || self.xmpp.iter().any(|x| ascii(x).is_ok_and(|d| d == domain))
    }
}

/// The string inside an otherName value: `[0] EXPLICIT` around a UTF8String or IA5String
/// (x509-parser hands over the bytes of the explicit tag or of its content).
fn der_string(value: &[u8]) -> Option<String> {
    let mut v = value;
    for _ in 0..2 {
        let (tag, content) = der_tlv(v)?;
        match tag {
            0x0c | 0x16 => return String::from_utf8(content.to_vec()).ok(),
            0xa0 => v = content,
            _ => return None,
        }
    }
    None
}

fn der_tlv(b: &[u8]) -> Option<(u8, &[u8])> {
    let tag = *b.first()?;
    let first = *b.get(1)? as usize;
    let (len, start) = if first < 0x80 {
        (first, 2)
    } else {
        let n = first & 0x7f;
        if n == 0 || n > 3 {
            return None;
        }
        let mut len = 0usize;
        for i in 0..n {
            len = (len << 8) | *b.get(2 + i)? as usize;
        }
        (len, 2 + n)
    };
    Some((tag, b.get(start..start + len)?))
}

/// DNS-ID: exact, or a wildcard that is the whole left-most label and stands for exactly
/// one label (RFC 6125 §6.4.3; RFC 9525 §6.3).
pub fn dns_id_matches(pattern: &str, domain: &str) -> bool {
    let pattern = pattern.trim_end_matches('.').to_ascii_lowercase();
    let domain = domain.trim_end_matches('.');
    match pattern.strip_prefix("*.") {
        Some(rest) => match domain.split_once('.') {
            Some((first, tail)) => !first.is_empty() && tail == rest && rest.contains('.'),
            None => false,
        },
        None => !pattern.contains('*') && pattern == domain,
    }
}

/// SRV-ID `_xmpp-server.DOMAIN` (RFC 6125 §6.5, XEP-0178).
pub fn srv_id_matches(srv: &str, domain: &str) -> bool {
    srv.strip_prefix("_xmpp-server.").is_some_and(|d| d.trim_end_matches('.').eq_ignore_ascii_case(domain))
}

/// The trust roots and the judge.
pub struct CertJudge {
    roots: Arc<RootCertStore>,
    algs: rustls::crypto::WebPkiSupportedAlgorithms,
}

impl CertJudge {
    /// The system's roots (when readable) plus `extra` (from `[tls] ca_file`).
    pub fn new(extra: &[CertificateDer<'static>], system: bool) -> CertJudge {
        let mut roots = RootCertStore::empty();
        if system {
            let found = rustls_native_certs::load_native_certs();
            let (added, _) = roots.add_parsable_certificates(found.certs);
            tracing::debug!(roots = added, "system trust roots loaded");
        }
        roots.add_parsable_certificates(extra.iter().cloned());
        CertJudge { roots: Arc::new(roots), algs: super::tls::provider().signature_verification_algorithms }
    }

    /// Judge `chain` (end entity first) for `domain` at `now`.
    pub fn judge(&self, chain: &[CertificateDer<'_>], domain: &str, now: UnixTime) -> CertVerdict {
        let Some(ee) = chain.first() else { return CertVerdict::NoCertificate };
        let parsed = match rustls::server::ParsedCertificate::try_from(ee) {
            Ok(p) => p,
            Err(e) => return CertVerdict::Invalid(kept_name(&e.to_string())),
        };
        // The peer's names, escaped and clipped before they go anywhere (a verdict is logged,
        // stored with the outcome and shown).
        let info = x509_parser::parse_x509_certificate(ee).ok().map(|(_, c)| {
            (
                kept_name(&c.subject().to_string()),
                kept_name(&c.issuer().to_string()),
                c.validity().not_before.to_string(),
                c.validity().not_after.to_string(),
            )
        });
        let (subject, issuer, not_before, not_after) = info.unwrap_or_default();
        if let Err(e) = rustls::client::verify_server_cert_signed_by_trust_anchor(&parsed, &self.roots, &chain[1..], now, self.algs.all) {
            use rustls::CertificateError as CE;
            return match e {
                rustls::Error::InvalidCertificate(CE::Expired | CE::ExpiredContext { .. }) => CertVerdict::Expired(not_after),
                rustls::Error::InvalidCertificate(CE::NotValidYet | CE::NotValidYetContext { .. }) => CertVerdict::NotYetValid(not_before),
                rustls::Error::InvalidCertificate(CE::UnknownIssuer) if subject == issuer && chain.len() == 1 => CertVerdict::SelfSigned,
                rustls::Error::InvalidCertificate(CE::UnknownIssuer) => CertVerdict::UntrustedIssuer(issuer),
                other => CertVerdict::Invalid(kept_name(&other.to_string())),
            };
        }
        let names = CertNames::from_der(ee);
        if names.matches(domain) { CertVerdict::Valid } else { CertVerdict::NameMismatch(names.all()) }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rcgen::{BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair, KeyUsagePurpose, SanType};

    #[test]
    fn dns_id_rules() {
        assert!(dns_id_matches("example.org", "example.org"));
        assert!(dns_id_matches("EXAMPLE.org.", "example.org"));
        assert!(dns_id_matches("*.example.org", "chat.example.org"));
        assert!(!dns_id_matches("*.example.org", "example.org"), "the wildcard stands for one label");
        assert!(!dns_id_matches("*.example.org", "a.b.example.org"));
        assert!(!dns_id_matches("*.org", "example.org"), "no wildcard right under a TLD");
        assert!(!dns_id_matches("c*.example.org", "chat.example.org"), "a wildcard only as a whole label");
        assert!(!dns_id_matches("chat.*.org", "chat.example.org"));
    }

    #[test]
    fn srv_id_and_xmpp_addr() {
        assert!(srv_id_matches("_xmpp-server.example.org", "example.org"));
        assert!(!srv_id_matches("_xmpp-client.example.org", "example.org"));
        assert!(!srv_id_matches("_xmpp-server.example.org", "other.org"));
        let n = CertNames { dns: vec!["xn--bse-sna.example".into()], srv: vec![], xmpp: vec!["bücher.example".into()] };
        assert!(n.matches("böse.example") && n.matches("xn--bse-sna.example"), "DNS-ID A-label for a U-label domain");
        assert!(n.matches("xn--bcher-kva.example"), "XmppAddr U-label for an A-label domain");
        let n = CertNames { dns: vec![], srv: vec![], xmpp: vec!["Example.org".into()] };
        assert!(n.matches("example.org"));
    }

    struct Ca {
        cert: rcgen::Certificate,
        key: KeyPair,
        params: CertificateParams,
    }

    fn ca(name: &str) -> Ca {
        let mut params = CertificateParams::new(vec![]).unwrap();
        params.distinguished_name.push(DnType::CommonName, name);
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let key = KeyPair::generate().unwrap();
        let cert = params.self_signed(&key).unwrap();
        Ca { cert, key, params }
    }

    fn leaf(ca: &Ca, sans: Vec<SanType>, eku: Vec<ExtendedKeyUsagePurpose>, dates: Option<(i32, i32)>) -> CertificateDer<'static> {
        let mut params = CertificateParams::new(vec![]).unwrap();
        params.distinguished_name.push(DnType::CommonName, "leaf");
        params.subject_alt_names = sans;
        params.extended_key_usages = eku;
        if let Some((from, to)) = dates {
            params.not_before = rcgen::date_time_ymd(from, 1, 1);
            params.not_after = rcgen::date_time_ymd(to, 1, 1);
        }
        let key = KeyPair::generate().unwrap();
        let issuer = rcgen::Issuer::from_params(&ca.params, &ca.key);
        params.signed_by(&key, &issuer).unwrap().der().clone()
    }

    fn dns(d: &str) -> SanType {
        SanType::DnsName(d.try_into().unwrap())
    }

    #[test]
    fn verdicts() {
        let ca1 = ca("Test CA");
        let other = ca("Other CA");
        let judge = CertJudge::new(&[ca1.cert.der().clone()], false);
        let now = UnixTime::now();
        let server = vec![ExtendedKeyUsagePurpose::ServerAuth];
        let good = leaf(&ca1, vec![dns("a.example"), dns("*.a.example")], server.clone(), None);
        assert_eq!(judge.judge(std::slice::from_ref(&good), "a.example", now), CertVerdict::Valid);
        assert_eq!(judge.judge(std::slice::from_ref(&good), "chat.a.example", now), CertVerdict::Valid);
        assert_eq!(judge.judge(&[good], "b.example", now).to_string(), "name mismatch: certificate names a.example, *.a.example");
        let expired = leaf(&ca1, vec![dns("a.example")], server.clone(), Some((2020, 2021)));
        assert!(matches!(judge.judge(&[expired], "a.example", now), CertVerdict::Expired(d) if d.contains("2021")));
        let future = leaf(&ca1, vec![dns("a.example")], server.clone(), Some((2090, 2091)));
        assert!(matches!(judge.judge(&[future], "a.example", now), CertVerdict::NotYetValid(_)));
        let untrusted = leaf(&other, vec![dns("a.example")], server.clone(), None);
        assert_eq!(judge.judge(&[untrusted], "a.example", now).to_string(), "untrusted issuer (CN=Other CA)");
        let selfsigned = rcgen::generate_simple_self_signed(vec!["a.example".to_owned()]).unwrap().cert.der().clone();
        assert_eq!(judge.judge(&[selfsigned], "a.example", now), CertVerdict::SelfSigned);
        assert_eq!(judge.judge(&[], "a.example", now), CertVerdict::NoCertificate);
        // XmppAddr and SRV-ID (as UTF8String otherNames) from a real certificate; webpki checks
        // the chain, the names are ours (a certificate with no DNS-ID at all).
        let xmpp = leaf(
            &ca1,
            vec![SanType::OtherName((vec![1, 3, 6, 1, 5, 5, 7, 8, 5], "x.example".into())), dns("other.example")],
            server.clone(),
            None,
        );
        let names = CertNames::from_der(&xmpp);
        assert_eq!(names.xmpp, vec!["x.example".to_owned()]);
        assert_eq!(judge.judge(&[xmpp], "x.example", now), CertVerdict::Valid);
        let srv = leaf(
            &ca1,
            vec![SanType::OtherName((vec![1, 3, 6, 1, 5, 5, 7, 8, 7], "_xmpp-server.s.example".into())), dns("other.example")],
            server.clone(),
            None,
        );
        assert_eq!(judge.judge(&[srv], "s.example", now), CertVerdict::Valid);
        // No EKU at all, or server-auth only: both accepted (peers present server certificates).
        let no_eku = leaf(&ca1, vec![dns("a.example")], vec![], None);
        assert_eq!(judge.judge(&[no_eku], "a.example", now), CertVerdict::Valid);
    }

    /// A certificate's names are the peer's text: whatever they carry (terminal escapes, a
    /// forged line, 30 KB, hundreds of SANs), what is kept of them is a few escaped lines.
    #[test]
    fn names_are_escaped_and_clipped_at_ingestion() {
        let hostile = "Evil\x1b]0;title\x07\x1b[2J\nvalid sasl-external";
        let mut ca1 = ca(hostile);
        let judge = CertJudge::new(&[], false);
        let now = UnixTime::now();
        let long = format!("{}.example", "a".repeat(30_000));
        let mut sans = vec![dns(&long), dns("x\x1b[31m.example")];
        sans.extend((0..50).map(|i| dns(&format!("n{i}.example"))));
        let mut params = CertificateParams::new(vec![]).unwrap();
        params.distinguished_name.push(DnType::CommonName, format!("{hostile}{}", "b".repeat(30_000)));
        params.subject_alt_names = sans;
        let key = KeyPair::generate().unwrap();
        let issuer = rcgen::Issuer::from_params(&ca1.params, &ca1.key);
        let der = params.signed_by(&key, &issuer).unwrap().der().clone();

        let clean = |s: &str| !s.chars().any(crate::text::is_unsafe) && s.len() <= CERT_NAME_MAX + 32;
        let info = crate::types::PeerCertInfo::from_der(&der);
        assert!(clean(&info.subject) && info.subject.contains("\\x1b]0;title\\x07"), "{}", info.subject);
        assert!(clean(&info.issuer) && info.issuer.contains("\\nvalid"), "{}", info.issuer);
        assert_eq!(info.names.len(), CERT_NAMES_KEPT + 1, "{:?}", info.names);
        assert!(info.names.iter().all(|n| clean(n)), "{:?}", info.names);
        assert_eq!(info.names[1], "x\\x1b[31m.example");
        assert_eq!(info.names[CERT_NAMES_KEPT], "… (44 more)");

        // The verdicts carry the issuer (untrusted) or the names (mismatch): kept alike.
        let v = judge.judge(std::slice::from_ref(&der), "a.example", now);
        let CertVerdict::UntrustedIssuer(i) = &v else { panic!("{v:?}") };
        assert!(clean(i), "{i}");
        ca1.params.distinguished_name = rcgen::DistinguishedName::new();
        ca1.params.distinguished_name.push(DnType::CommonName, "Test CA");
        ca1.cert = ca1.params.self_signed(&ca1.key).unwrap();
        let issuer = rcgen::Issuer::from_params(&ca1.params, &ca1.key);
        let der = params.signed_by(&key, &issuer).unwrap().der().clone();
        let judge = CertJudge::new(&[ca1.cert.der().clone()], false);
        let v = judge.judge(&[der], "other.example", now);
        let CertVerdict::NameMismatch(names) = &v else { panic!("{v:?}") };
        assert!(names.len() == CERT_NAMES_KEPT + 1 && names.iter().all(|n| clean(n)), "{names:?}");
        assert!(v.to_string().len() < 4096, "{v}");
    }
}
