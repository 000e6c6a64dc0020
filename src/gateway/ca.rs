//! The gateway's private CA: in gateway mode drawbridge speaks to the internal server *as*
//! each remote domain, so it needs a certificate naming that domain which the internal server
//! trusts (Prosody: `s2s_ssl = { cafile = <this CA> }` with `s2s_secure_auth = true`). The CA
//! mints one per remote domain on demand, keeps it in memory and on disk, and mints anew
//! before it expires.
//!
//! Files (created 0600 in a 0700 directory unless the operator gives their own CA):
//! `DATA_DIR/gateway/ca.pem`, `ca.key`, and `minted/<A-label>.pem` (certificate + key).
//! A minted certificate names the domain as a DNS-ID (RFC 6125 §6.4, what Prosody checks) and
//! as an XmppAddr (XEP-0178 §3), is valid for [`VALIDITY`], and is renewed once less than
//! [`RENEW_BEFORE`] remains.

use std::collections::HashMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use rcgen::{BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose, SanType};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

use crate::domain::Domain;
use crate::types::FixedWindow;

/// How long a minted certificate is valid.
pub const VALIDITY: Duration = Duration::from_secs(90 * 24 * 3600);
/// A minted certificate with less than this left is minted anew.
pub const RENEW_BEFORE: Duration = Duration::from_secs(30 * 24 * 3600);
/// Validity of a CA created by drawbridge.
const CA_VALIDITY: Duration = Duration::from_secs(10 * 365 * 24 * 3600);
/// `gateway.mints_per_minute` by default: far above what new remote domains need, far below
/// what would let a peer fill the disk or the CPU.
pub const DEFAULT_MINTS_PER_MINUTE: u32 = 60;
/// Minted certificates kept in memory at most (each is small; the files stay).
const MAX_CACHED: usize = 10_000;
/// `gateway.max_minted` by default: minted certificates kept on disk at most (a few KB
/// each); past it the oldest are removed first.
pub const DEFAULT_MAX_MINTED: usize = 10_000;
/// Expired minted files are looked for at most this often (and whenever the cap is passed).
const PRUNE_EVERY: Duration = Duration::from_secs(3600);

#[derive(Debug, thiserror::Error)]
pub enum CaError {
    #[error("{path}: {why} (gateway.ca_cert / gateway.ca_key)")]
    File { path: PathBuf, why: String },
    #[error("gateway.ca_cert and gateway.ca_key go together: set both or neither (neither: a CA is created in {0})")]
    HalfConfigured(PathBuf),
    #[error("{path}: {why} (gateway.internal_ca)")]
    InternalCa { path: PathBuf, why: String },
    #[error("minting a certificate for {domain}: {why}")]
    Mint { domain: Domain, why: String },
    #[error("not minting a certificate for {domain}: {limit} new certificates in the last minute already (gateway.mints_per_minute)")]
    Busy { domain: Domain, limit: u32 },
}

/// A certificate for one remote domain with its key.
pub struct Minted {
    /// The leaf, then the CA.
    pub chain: Vec<CertificateDer<'static>>,
    pub key: PrivateKeyDer<'static>,
    pub not_after: SystemTime,
}

impl Minted {
    fn due(&self, now: SystemTime) -> bool {
        !self.not_after.duration_since(now).is_ok_and(|left| left > RENEW_BEFORE)
    }
}

pub struct GatewayCa {
    cert: CertificateDer<'static>,
    cert_path: PathBuf,
    key: KeyPair,
    minted_dir: PathBuf,
    cache: Mutex<HashMap<Domain, Arc<Minted>>>,
    /// New certificates per minute at most: a peer on `gateway.listen` names the domain
    /// before it authenticates, and each new one costs a key, a signature and a file.
    mints_per_minute: u32,
    /// (minute, certificates minted in it).
    minted_now: Mutex<FixedWindow<SystemTime>>,
    /// Minted files kept at most (`gateway.max_minted`).
    max_minted: usize,
    /// (files on disk as last counted plus those minted since, when the directory was last pruned).
    on_disk: Mutex<(usize, Option<SystemTime>)>,
}

impl GatewayCa {
    /// The operator's CA (`ca_cert` + `ca_key`), or drawbridge's own in `data_dir/gateway/`,
    /// created on first use.
    pub fn open(ca_cert: Option<&Path>, ca_key: Option<&Path>, data_dir: &Path) -> Result<GatewayCa, CaError> {
        let dir = data_dir.join("gateway");
        let (cert_path, key_path) = match (ca_cert, ca_key) {
            (Some(c), Some(k)) => (c.to_owned(), k.to_owned()),
            (None, None) => {
                let (c, k) = (dir.join("ca.pem"), dir.join("ca.key"));
                if !c.exists() && !k.exists() {
                    create_ca(&dir, &c)?;
                }
                (c, k)
            }
            _ => return Err(CaError::HalfConfigured(dir)),
        };
        let file_err = |path: &Path, why: String| CaError::File { path: path.to_owned(), why };
        let cert_pem = std::fs::read_to_string(&cert_path).map_err(|e| file_err(&cert_path, e.to_string()))?;
        let key_pem = std::fs::read_to_string(&key_path).map_err(|e| file_err(&key_path, e.to_string()))?;
        let cert =
            CertificateDer::from_pem_slice(cert_pem.as_bytes()).map_err(|e| file_err(&cert_path, format!("no PEM certificate: {e}")))?;
        let key = KeyPair::from_pem(&key_pem).map_err(|e| file_err(&key_path, format!("no usable PEM private key: {e}")))?;
        // The key must be the certificate's, or everything minted would fail to verify.
        Issuer::from_ca_cert_der(&cert, &key).map_err(|e| file_err(&cert_path, format!("not a usable CA certificate: {e}")))?;
        let (_, parsed) =
            x509_parser::parse_x509_certificate(&cert).map_err(|e| file_err(&cert_path, format!("unparseable certificate: {e}")))?;
        if parsed.public_key().subject_public_key.data.as_ref() != key.public_key_raw() {
            return Err(file_err(&key_path, format!("this key does not belong to the certificate in {}", cert_path.display())));
        }
        let minted_dir = dir.join("minted");
        create_private_dir(&minted_dir)?;
        Ok(GatewayCa {
            cert,
            cert_path,
            key,
            minted_dir,
            cache: Mutex::new(HashMap::new()),
            mints_per_minute: DEFAULT_MINTS_PER_MINUTE,
            minted_now: Mutex::new(FixedWindow::default()),
            max_minted: DEFAULT_MAX_MINTED,
            on_disk: Mutex::new((0, None)),
        })
    }

    /// At most `max` minted certificates on disk (`gateway.max_minted`); the directory is
    /// pruned now.
    pub fn with_max_minted(mut self, max: usize, now: SystemTime) -> GatewayCa {
        self.max_minted = max;
        self.prune(now);
        self
    }

    /// Remove minted files that expired (a file's modification time is when it was minted;
    /// one in use is renewed before it expires, so an expired file is one nobody used for
    /// [`VALIDITY`] − [`RENEW_BEFORE`]), then the oldest past `max_minted`. Returns how many
    /// are left.
    pub fn prune(&self, now: SystemTime) -> usize {
        let mut files: Vec<(SystemTime, PathBuf)> = std::fs::read_dir(&self.minted_dir)
            .into_iter()
            .flatten()
            .flatten()
            .filter(|e| e.path().extension().is_some_and(|x| x == "pem"))
            .filter_map(|e| Some((e.metadata().ok()?.modified().ok()?, e.path())))
            .collect();
        let before = files.len();
        files.retain(|(minted, path)| {
            let expired = *minted + VALIDITY <= now;
            if expired {
                let _ = std::fs::remove_file(path);
            }
            !expired
        });
        if files.len() > self.max_minted {
            files.sort();
            let excess = files.len() - self.max_minted;
            for (_, path) in files.drain(..excess) {
                let _ = std::fs::remove_file(path);
            }
        }
        if files.len() < before {
            let (mut cache, removed) = (self.cache.lock().unwrap(), before - files.len());
            // What was removed from disk is not served from memory either.
            cache.retain(|d, _| self.minted_dir.join(format!("{}.pem", d.ascii())).exists());
            tracing::info!(removed, kept = files.len(), "gateway: pruned minted certificates (expired, or past gateway.max_minted)");
        }
        *self.on_disk.lock().unwrap() = (files.len(), Some(now));
        files.len()
    }

    /// After a mint: one more on disk; prune when past the cap or not pruned for a while.
    fn minted_one(&self, now: SystemTime) {
        let due = {
            let mut d = self.on_disk.lock().unwrap();
            d.0 += 1;
            d.0 > self.max_minted || d.1.is_none_or(|last| now.duration_since(last).is_ok_and(|e| e >= PRUNE_EVERY))
        };
        if due {
            self.prune(now);
        }
    }

    /// The CA certificate's file: the internal server's trust anchor for the gateway.
    pub fn cert_path(&self) -> &Path {
        &self.cert_path
    }

    pub fn cert(&self) -> &CertificateDer<'static> {
        &self.cert
    }

    /// A certificate for `domain`: the cached one, else the one on disk, else a new one —
    /// whichever is not due for renewal at `now`.
    pub fn certificate_for(&self, domain: &Domain, now: SystemTime) -> Result<Arc<Minted>, CaError> {
        if let Some(m) = self.cache.lock().unwrap().get(domain)
            && !m.due(now)
        {
            return Ok(m.clone());
        }
        let path = self.minted_dir.join(format!("{}.pem", domain.ascii()));
        let minted = match self.load(&path).filter(|m| !m.due(now)) {
            Some(m) => m,
            None => {
                self.take_mint(domain, now)?;
                let (m, pem) = self.mint(domain, now)?;
                write_private(&path, pem.as_bytes(), now).map_err(|why| CaError::Mint { domain: domain.clone(), why })?;
                self.minted_one(now);
                m
            }
        };
        let minted = Arc::new(minted);
        let mut cache = self.cache.lock().unwrap();
        if cache.len() >= MAX_CACHED {
            cache.clear();
        }
        cache.insert(domain.clone(), minted.clone());
        Ok(minted)
    }

    /// At most `gateway.mints_per_minute` new certificates a minute (renewals included).
    pub fn with_mint_limit(mut self, per_minute: u32) -> GatewayCa {
        self.mints_per_minute = per_minute;
        self
    }

    fn take_mint(&self, domain: &Domain, now: SystemTime) -> Result<(), CaError> {
        let mut m = self.minted_now.lock().unwrap_or_else(|e| e.into_inner());
        match m.take(now, Duration::from_secs(60), self.mints_per_minute.into()) {
            Some(_) => Ok(()),
            None => Err(CaError::Busy { domain: domain.clone(), limit: self.mints_per_minute }),
        }
    }

    /// A minted certificate from disk, if it is one of ours (a file from another CA, after the
    /// operator replaced it, is minted anew).
    fn load(&self, path: &Path) -> Option<Minted> {
        let pem = std::fs::read(path).ok()?;
        let leaf = CertificateDer::pem_slice_iter(&pem).next()?.ok()?;
        let key = PrivateKeyDer::from_pem_slice(&pem).ok()?;
        let (_, parsed) = x509_parser::parse_x509_certificate(&leaf).ok()?;
        let (_, ca) = x509_parser::parse_x509_certificate(&self.cert).ok()?;
        parsed.verify_signature(Some(ca.public_key())).ok()?;
        let not_after = SystemTime::UNIX_EPOCH + Duration::from_secs(parsed.validity().not_after.timestamp().max(0) as u64);
        Some(Minted { chain: vec![leaf.clone(), self.cert.clone()], key, not_after })
    }

    fn mint(&self, domain: &Domain, now: SystemTime) -> Result<(Minted, String), CaError> {
        let err = |why: String| CaError::Mint { domain: domain.clone(), why };
        let ascii = domain.ascii().into_owned();
        let mut params = CertificateParams::new(vec![ascii.clone()]).map_err(|e| err(e.to_string()))?;
        params.distinguished_name.push(DnType::CommonName, ascii);
        // XmppAddr (id-on-xmppAddr, 1.3.6.1.5.5.7.8.5) carries the U-label (XEP-0178 §3).
        params.subject_alt_names.push(SanType::OtherName((vec![1, 3, 6, 1, 5, 5, 7, 8, 5], domain.as_str().into())));
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth, ExtendedKeyUsagePurpose::ClientAuth];
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        // An hour back: clocks of the internal server may be a little behind.
        params.not_before = (now - Duration::from_secs(3600)).into();
        let not_after = now + VALIDITY;
        params.not_after = not_after.into();
        params.serial_number = Some(serial(now).into());
        let key = KeyPair::generate().map_err(|e| err(e.to_string()))?;
        let issuer = Issuer::from_ca_cert_der(&self.cert, &self.key).map_err(|e| err(e.to_string()))?;
        let cert = params.signed_by(&key, &issuer).map_err(|e| err(e.to_string()))?;
        let pem = format!("{}{}", cert.pem(), key.serialize_pem());
        let der = PrivateKeyDer::try_from(key.serialize_der()).map_err(|e| err(e.to_string()))?;
        // rcgen's dates have second precision.
        let not_after =
            SystemTime::UNIX_EPOCH + Duration::from_secs(not_after.duration_since(SystemTime::UNIX_EPOCH).unwrap_or_default().as_secs());
        Ok((Minted { chain: vec![cert.der().clone(), self.cert.clone()], key: der, not_after }, pem))
    }
}

/// A serial number unique per mint: the time in nanoseconds and a counter (positive, ≤ 20 bytes).
fn serial(now: SystemTime) -> Vec<u8> {
    static COUNTER: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let n = COUNTER.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let t = now.duration_since(SystemTime::UNIX_EPOCH).unwrap_or_default().as_nanos() as u64;
    let mut s = vec![0x01];
    s.extend_from_slice(&t.to_be_bytes());
    s.extend_from_slice(&n.to_be_bytes());
    s
}

fn create_ca(dir: &Path, cert_path: &Path) -> Result<(), CaError> {
    let (cert, key) = new_ca().map_err(|why| CaError::File { path: cert_path.to_owned(), why })?;
    write_ca(dir, &cert, &key)?;
    tracing::info!("created the gateway CA: {}", cert_path.display());
    Ok(())
}

/// A new gateway CA: its certificate and its private key, PEM.
pub fn new_ca() -> Result<(String, String), String> {
    let mut params = CertificateParams::new(vec![]).map_err(|e| e.to_string())?;
    params.distinguished_name.push(DnType::CommonName, "drawbridge gateway CA");
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    let now = SystemTime::now();
    params.not_before = (now - Duration::from_secs(3600)).into();
    params.not_after = (now + CA_VALIDITY).into();
    let key = KeyPair::generate().map_err(|e| e.to_string())?;
    let cert = params.self_signed(&key).map_err(|e| e.to_string())?;
    Ok((cert.pem(), key.serialize_pem()))
}

/// Keep this CA (PEM) where [`GatewayCa::open`] finds the one drawbridge made itself
/// (`DATA_DIR/gateway/ca.pem`, `ca.key`): with several nodes, the one the first node made,
/// so what any node mints is valid on all of them. Unchanged files are left alone.
pub fn write_ca(dir: &Path, cert_pem: &str, key_pem: &str) -> Result<(), CaError> {
    let err = |path: &Path, why: String| CaError::File { path: path.to_owned(), why };
    create_private_dir(dir)?;
    let (cert_path, key_path) = (dir.join("ca.pem"), dir.join("ca.key"));
    if std::fs::read_to_string(&cert_path).is_ok_and(|c| c == cert_pem) && std::fs::read_to_string(&key_path).is_ok_and(|k| k == key_pem) {
        return Ok(());
    }
    let now = SystemTime::now();
    // The key first: a certificate without its key would be unusable after a crash.
    write_private(&key_path, key_pem.as_bytes(), now).map_err(|why| err(&key_path, why))?;
    write_private(&cert_path, cert_pem.as_bytes(), now).map_err(|why| err(&cert_path, why))?;
    Ok(())
}

fn create_private_dir(dir: &Path) -> Result<(), CaError> {
    use std::os::unix::fs::DirBuilderExt;
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(|e| CaError::File { path: dir.to_owned(), why: format!("cannot create the directory: {e}") })
}

/// Write a file only we can read, durably: a temporary file, fsync, rename, fsync the
/// directory (a crash leaves the old file or the new one, never half of one).
fn write_private(path: &Path, bytes: &[u8], now: SystemTime) -> Result<(), String> {
    use std::os::unix::fs::OpenOptionsExt;
    let tmp = path.with_extension("tmp");
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)
        .map_err(|e| format!("cannot write {}: {e}", tmp.display()))?;
    // The modification time says when it was made (pruning reads it).
    f.write_all(bytes)
        .and_then(|_| f.set_modified(now))
        .and_then(|_| f.sync_all())
        .map_err(|e| format!("cannot write {}: {e}", tmp.display()))?;
    std::fs::rename(&tmp, path).map_err(|e| format!("cannot rename {} to {}: {e}", tmp.display(), path.display()))?;
    if let Some(dir) = path.parent() {
        let _ = std::fs::File::open(dir).and_then(|d| d.sync_all());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use super::*;
    use crate::net::certs::CertJudge;
    use crate::types::CertVerdict;

    fn judge_with(ca: &GatewayCa) -> CertJudge {
        CertJudge::new(&[ca.cert().clone()], false)
    }

    #[test]
    fn mints_a_certificate_the_ca_vouches_for() {
        let dir = tempfile::tempdir().unwrap();
        let ca = GatewayCa::open(None, None, dir.path()).unwrap();
        let remote = Domain::parse("remote.example").unwrap();
        let now = SystemTime::now();
        let m = ca.certificate_for(&remote, now).unwrap();
        let at = rustls::pki_types::UnixTime::now();
        assert_eq!(judge_with(&ca).judge(&m.chain, "remote.example", at), CertVerdict::Valid);
        assert!(matches!(judge_with(&ca).judge(&m.chain, "other.example", at), CertVerdict::NameMismatch(_)), "it names only its domain");
        assert!(m.not_after > now + VALIDITY - Duration::from_secs(2));
        // The files are the operator's only.
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&dir.path().join("gateway")), 0o700);
        assert_eq!(mode(&dir.path().join("gateway/ca.key")), 0o600);
        assert_eq!(mode(&dir.path().join("gateway/minted/remote.example.pem")), 0o600);
        // A key rustls accepts, matching the certificate.
        let signing = rustls::crypto::ring::default_provider().key_provider.load_private_key(m.key.clone_key()).unwrap();
        assert!(rustls::sign::CertifiedKey::new(m.chain.clone(), signing).keys_match().is_ok());
    }

    #[test]
    fn new_certificates_per_minute_are_capped_cached_ones_are_not() {
        let dir = tempfile::tempdir().unwrap();
        let ca = GatewayCa::open(None, None, dir.path()).unwrap().with_mint_limit(2);
        let d = |s: &str| Domain::parse(s).unwrap();
        let t0 = SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000 / 60 * 60);
        ca.certificate_for(&d("a.example"), t0).unwrap();
        ca.certificate_for(&d("b.example"), t0 + Duration::from_secs(1)).unwrap();
        let e = ca.certificate_for(&d("c.example"), t0 + Duration::from_secs(2)).err().expect("the third new one in a minute");
        assert!(e.to_string().contains("gateway.mints_per_minute"), "{e}");
        assert!(!dir.path().join("gateway/minted/c.example.pem").exists(), "nothing written");
        // Known domains still get theirs (memory, then disk after a restart).
        ca.certificate_for(&d("a.example"), t0 + Duration::from_secs(3)).unwrap();
        let again = GatewayCa::open(None, None, dir.path()).unwrap().with_mint_limit(1);
        again.certificate_for(&d("x.example"), t0 + Duration::from_secs(4)).unwrap();
        again.certificate_for(&d("b.example"), t0 + Duration::from_secs(5)).unwrap();
        // The next minute, minting goes on.
        ca.certificate_for(&d("c.example"), t0 + Duration::from_secs(60)).unwrap();
    }

    #[test]
    fn an_idn_domain_gets_its_a_label_and_its_u_label() {
        let dir = tempfile::tempdir().unwrap();
        let ca = GatewayCa::open(None, None, dir.path()).unwrap();
        let m = ca.certificate_for(&Domain::parse("bücher.example").unwrap(), SystemTime::now()).unwrap();
        let at = rustls::pki_types::UnixTime::now();
        assert_eq!(judge_with(&ca).judge(&m.chain, "xn--bcher-kva.example", at), CertVerdict::Valid);
        let names = crate::net::certs::CertNames::from_der(&m.chain[0]);
        assert_eq!(names.xmpp, vec!["bücher.example".to_owned()]);
        assert!(dir.path().join("gateway/minted/xn--bcher-kva.example.pem").exists());
    }

    #[test]
    fn kept_across_restarts_and_renewed_before_expiry() {
        let dir = tempfile::tempdir().unwrap();
        let remote = Domain::parse("remote.example").unwrap();
        let now = SystemTime::now();
        let first = GatewayCa::open(None, None, dir.path()).unwrap().certificate_for(&remote, now).unwrap();
        // A new process: the same CA and the same certificate, from disk.
        let ca = GatewayCa::open(None, None, dir.path()).unwrap();
        let again = ca.certificate_for(&remote, now + Duration::from_secs(3600)).unwrap();
        assert!(again.chain == first.chain, "the minted certificate survives a restart");
        // Within RENEW_BEFORE of its end: a new one, persisted in its place.
        let later = now + VALIDITY - RENEW_BEFORE + Duration::from_secs(60);
        let renewed = ca.certificate_for(&remote, later).unwrap();
        assert!(renewed.chain[0] != first.chain[0], "renewed");
        assert!(renewed.not_after > first.not_after);
        let reopened = GatewayCa::open(None, None, dir.path()).unwrap();
        assert!(reopened.certificate_for(&remote, later).unwrap().chain[0] == renewed.chain[0], "the renewal was persisted");
    }

    #[test]
    fn operator_ca_files_are_checked() {
        let dir = tempfile::tempdir().unwrap();
        let own = GatewayCa::open(None, None, dir.path()).unwrap();
        let (cert, key) = (dir.path().join("gateway/ca.pem"), dir.path().join("gateway/ca.key"));
        // The operator's CA (here: files made above) is used as given.
        let other = tempfile::tempdir().unwrap();
        let ca = GatewayCa::open(Some(&cert), Some(&key), other.path()).unwrap();
        assert!(ca.cert() == own.cert());
        assert_eq!(ca.cert_path(), cert.as_path());
        // Half a configuration, a missing file, a key of another CA: each named.
        let e = GatewayCa::open(Some(&cert), None, other.path()).err().unwrap().to_string();
        assert!(e.contains("set both or neither"), "{e}");
        let e = GatewayCa::open(Some(&dir.path().join("nope.pem")), Some(&key), other.path()).err().unwrap().to_string();
        assert!(e.contains("nope.pem") && e.contains("gateway.ca_cert"), "{e}");
        let third = tempfile::tempdir().unwrap();
        GatewayCa::open(None, None, third.path()).unwrap();
        let e = GatewayCa::open(Some(&cert), Some(&third.path().join("gateway/ca.key")), other.path()).err().unwrap().to_string();
        assert!(e.contains("does not belong"), "{e}");
    }

    #[test]
    fn a_minted_file_from_another_ca_is_replaced() {
        let dir = tempfile::tempdir().unwrap();
        let remote = Domain::parse("remote.example").unwrap();
        let now = SystemTime::now();
        let old = GatewayCa::open(None, None, dir.path()).unwrap().certificate_for(&remote, now).unwrap();
        // The operator replaces the CA (a new one is created); the old minted file stays.
        std::fs::remove_file(dir.path().join("gateway/ca.pem")).unwrap();
        std::fs::remove_file(dir.path().join("gateway/ca.key")).unwrap();
        let ca = GatewayCa::open(None, None, dir.path()).unwrap();
        let m = ca.certificate_for(&remote, now).unwrap();
        assert!(m.chain[0] != old.chain[0]);
        assert_eq!(judge_with(&ca).judge(&m.chain, "remote.example", rustls::pki_types::UnixTime::now()), CertVerdict::Valid);
    }

    #[test]
    fn minted_files_are_bounded_expired_ones_and_the_oldest_past_the_cap_removed() {
        let dir = tempfile::tempdir().unwrap();
        let t0 = SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000);
        let ca = GatewayCa::open(None, None, dir.path()).unwrap().with_max_minted(3, t0).with_mint_limit(1000);
        let d = |s: &str| Domain::parse(s).unwrap();
        let file = |s: &str| dir.path().join(format!("gateway/minted/{s}.pem"));
        for (i, name) in ["a.example", "b.example", "c.example", "d.example"].iter().enumerate() {
            ca.certificate_for(&d(name), t0 + Duration::from_secs(60 * i as u64)).unwrap();
        }
        // The cap: the oldest went first.
        assert!(!file("a.example").exists() && file("b.example").exists() && file("d.example").exists());
        assert_eq!(ca.prune(t0 + Duration::from_secs(300)), 3);
        // b is renewed (in use); c and d are never asked for again and expire.
        let renew = t0 + VALIDITY - RENEW_BEFORE + Duration::from_secs(3600);
        ca.certificate_for(&d("b.example"), renew).unwrap();
        assert_eq!(ca.prune(t0 + VALIDITY + Duration::from_secs(600)), 1);
        assert!(file("b.example").exists() && !file("c.example").exists() && !file("d.example").exists());
        // A new process finds the same bound.
        let again = GatewayCa::open(None, None, dir.path()).unwrap().with_max_minted(3, renew + VALIDITY);
        assert_eq!(again.prune(renew + VALIDITY), 0, "b expired too, unused since");
    }
}
