//! Certificate expiry: the forecast of the remote domains' certificates (`ctl certs`, the
//! expiring-certificates metric), our own certificates' expiry (`ctl status`, the metric,
//! the log from `certs.warn_before` on), all reckoned by [`CertExpiry::classify`].

use std::time::Duration;

use super::Shared;
use super::api::{CertsReport, LocalCert, RemoteCertRow};
use crate::events::*;
use crate::store::DomainRecord;

/// How often our own certificates' expiry is checked and, from `certs.warn_before` on,
/// warned about in the log (and once at start, and at every reload).
pub const LOCAL_CHECK_INTERVAL: Duration = Duration::from_secs(24 * 3600);

/// The remote domains' certificates, soonest expiry first (then by domain); with
/// `within`, only those expiring within it or expired (`ctl certs --expiring 30d`).
pub fn remote_rows(records: &[DomainRecord], now_s: i64, warn_before: Duration, within: Option<Duration>) -> Vec<RemoteCertRow> {
    let mut rows: Vec<RemoteCertRow> = records
        .iter()
        .filter_map(|r| {
            let cert = r.cert.clone()?;
            if within.is_some_and(|w| CertExpiry::classify(cert.not_after_s, now_s, w) == CertExpiry::Ok) {
                return None;
            }
            Some(RemoteCertRow {
                domain: r.domain.clone(),
                expiry: CertExpiry::classify(cert.not_after_s, now_s, warn_before),
                last_seen_ms: r.last_seen_ms,
                cert,
            })
        })
        .collect();
    rows.sort_by(|a, b| a.cert.not_after_s.cmp(&b.cert.not_after_s).then_with(|| a.domain.cmp(&b.domain)));
    rows
}

/// How many remote domains' certificates are expiring and how many expired (the metric),
/// of their notAfters.
pub fn remote_counts(not_afters: &[i64], now_s: i64, warn_before: Duration) -> (u64, u64) {
    let (mut expiring, mut expired) = (0, 0);
    for &t in not_afters {
        match CertExpiry::classify(t, now_s, warn_before) {
            CertExpiry::Ok => {}
            CertExpiry::Expiring => expiring += 1,
            CertExpiry::Expired => expired += 1,
        }
    }
    (expiring, expired)
}

/// Our certificates: the one presented to peers (`tls`: `[tls] cert`, or the self-signed
/// one drawbridge made) and, in gateway mode, the CA the internal server trusts
/// (`gateway-ca`: every certificate the gateway mints is signed by it).
pub fn local(shared: &Shared) -> Vec<LocalCert> {
    let (now, warn) = (now_s(), shared.settings.certs.warn_before);
    let s = &shared.settings;
    let tls_path = s.tls.cert.clone().unwrap_or_else(|| s.data_dir.join("tls").join("cert.pem"));
    let mut v = vec![LocalCert::of("tls", &shared.tls.get().our_cert, &tls_path.display().to_string(), now, warn)];
    if let Some(ca) = &shared.gateway_ca {
        let info = PeerCertInfo::from_der(ca.cert());
        v.push(LocalCert::of("gateway-ca", &info, &ca.cert_path().display().to_string(), now, warn));
    }
    v
}

impl LocalCert {
    pub fn of(which: &str, c: &PeerCertInfo, path: &str, now_s: i64, warn_before: Duration) -> LocalCert {
        LocalCert {
            certificate: which.to_owned(),
            path: path.to_owned(),
            subject: c.subject.clone(),
            issuer: c.issuer.clone(),
            not_after_s: c.not_after_s,
            expiry: c.not_after_s.map(|t| CertExpiry::classify(t, now_s, warn_before)),
        }
    }

    /// The log line for this certificate at `now_s`: a warning from `warn_before` on, an
    /// error once it expired (peers refuse it: RFC 6125 / RFC 5280 §4.1.2.5), nothing before.
    pub fn log_line(&self, now_s: i64, warn_before: Duration) -> Option<(tracing::Level, String)> {
        let t = self.not_after_s?;
        let when = format!("{} ({})", expiry_in_words(t, now_s), fmt_utc_s(t));
        let fix = match self.certificate.as_str() {
            "gateway-ca" => "renew it (gateway.ca_cert) and restart drawbridge; the internal server must trust the new one",
            _ => "renew it (tls.cert / tls.key), then `drawbridge ctl reload`",
        };
        let what = format!("our certificate {} ({}, {})", self.certificate, self.path, self.subject);
        match CertExpiry::classify(t, now_s, warn_before) {
            CertExpiry::Ok => None,
            CertExpiry::Expiring => Some((
                tracing::Level::WARN,
                format!("{what} expires {when}, within certs.warn_before ({}): {fix}", span_in_words(warn_before)),
            )),
            CertExpiry::Expired => Some((tracing::Level::ERROR, format!("{what} {when}: peers refuse it; {fix}"))),
        }
    }
}

/// Log our certificates' expiry where it is near or past ([`LocalCert::log_line`]).
pub fn check_local(shared: &Shared) {
    let (now, warn) = (now_s(), shared.settings.certs.warn_before);
    for c in local(shared) {
        match c.log_line(now, warn) {
            Some((tracing::Level::ERROR, line)) => tracing::error!("{line}"),
            Some((_, line)) => tracing::warn!("{line}"),
            None => {}
        }
    }
}

/// Our certificates checked at start, then every [`LOCAL_CHECK_INTERVAL`].
pub async fn local_loop(shared: std::sync::Arc<Shared>) {
    let mut tick = tokio::time::interval(LOCAL_CHECK_INTERVAL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = shared.shutdown.cancelled() => return,
            _ = tick.tick() => check_local(&shared),
        }
    }
}

/// `ctl certs`.
pub fn report(shared: &Shared, within: Option<Duration>) -> CertsReport {
    let (now, warn) = (now_s(), shared.settings.certs.warn_before);
    CertsReport {
        now_s: now,
        warn_before_s: warn.as_secs(),
        expiring_within_s: within.map(|w| w.as_secs()),
        local: local(shared),
        domains: remote_rows(&shared.policy.records(None), now, warn, within),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const DAY: i64 = 86_400;
    const NOW: i64 = 1_800_000_000;

    fn rec(domain: &str, not_after: Option<i64>) -> DomainRecord {
        DomainRecord {
            domain: domain.into(),
            last_seen_ms: Some(5),
            cert: not_after.map(|t| RemoteCert {
                not_after_s: t,
                issuer: "CN=CA".into(),
                subject: format!("CN={domain}"),
                fingerprint_sha256: "AB".into(),
                method: AuthMethod::SaslExternal,
                direction: Direction::In,
                seen_ms: 4,
            }),
            ..Default::default()
        }
    }

    #[test]
    fn remote_certificates_soonest_first_filtered_and_counted() {
        let warn = Duration::from_secs(14 * DAY as u64);
        let recs = vec![
            rec("far.test", Some(NOW + 300 * DAY)),
            rec("none.test", None),
            rec("soon.test", Some(NOW + 10 * DAY)),
            rec("gone.test", Some(NOW - 2 * DAY)),
            rec("month.test", Some(NOW + 20 * DAY)),
            rec("also-soon.test", Some(NOW + 10 * DAY)),
        ];
        let rows = remote_rows(&recs, NOW, warn, None);
        let names: Vec<(&str, CertExpiry)> = rows.iter().map(|r| (r.domain.as_str(), r.expiry)).collect();
        assert_eq!(
            names,
            [
                ("gone.test", CertExpiry::Expired),
                ("also-soon.test", CertExpiry::Expiring),
                ("soon.test", CertExpiry::Expiring),
                ("month.test", CertExpiry::Ok),
                ("far.test", CertExpiry::Ok),
            ],
            "a domain with no certificate is not listed; ties by name"
        );
        assert_eq!(rows[0].last_seen_ms, Some(5));
        // --expiring 30d: what expires within it, the expired included.
        let within = remote_rows(&recs, NOW, warn, Some(Duration::from_secs(30 * DAY as u64)));
        assert_eq!(
            within.iter().map(|r| r.domain.as_str()).collect::<Vec<_>>(),
            ["gone.test", "also-soon.test", "soon.test", "month.test"]
        );
        let not_afters: Vec<i64> = recs.iter().filter_map(|r| Some(r.cert.as_ref()?.not_after_s)).collect();
        assert_eq!(remote_counts(&not_afters, NOW, warn), (2, 1));
        assert_eq!(remote_counts(&not_afters, NOW, Duration::from_secs(60 * DAY as u64)), (3, 1));
    }

    #[test]
    fn our_certificate_is_warned_about_then_an_error() {
        let warn = Duration::from_secs(14 * DAY as u64);
        let info = |t: Option<i64>| PeerCertInfo {
            subject: "CN=a.test".into(),
            issuer: "CN=CA".into(),
            names: vec![],
            not_after: String::new(),
            not_after_s: t,
            fingerprint_sha256: String::new(),
        };
        let c = LocalCert::of("tls", &info(Some(NOW + 30 * DAY)), "/etc/a.crt", NOW, warn);
        assert_eq!(c.expiry, Some(CertExpiry::Ok));
        assert_eq!(c.log_line(NOW, warn), None);
        let (level, line) = c.log_line(NOW + 20 * DAY, warn).unwrap();
        assert_eq!(level, tracing::Level::WARN);
        assert!(line.contains("our certificate tls (/etc/a.crt, CN=a.test) expires in 10 days (2027-02-14"), "{line}");
        assert!(line.contains("within certs.warn_before (14 days)") && line.contains("`drawbridge ctl reload`"), "{line}");
        let (level, line) = c.log_line(NOW + 31 * DAY, warn).unwrap();
        assert_eq!(level, tracing::Level::ERROR);
        assert!(line.contains("expired 1 day ago") && line.contains("peers refuse it"), "{line}");
        let ca = LocalCert::of("gateway-ca", &info(Some(NOW)), "/d/gateway/ca.pem", NOW, warn);
        assert!(ca.log_line(NOW + 1, warn).unwrap().1.contains("gateway.ca_cert"));
        // An unreadable expiry: nothing to say.
        assert_eq!(LocalCert::of("tls", &info(None), "/x", NOW, warn).log_line(NOW, warn), None);
    }
}
