//! TLS (tokio-rustls, ring provider): our certificate per hosted domain, permissive peer
//! verifiers that still check handshake signatures, and the facts recorded about a peer's
//! certificate.
//!
//! The verifiers let every handshake finish (an untrusted certificate must not stop dialback
//! from following), still checking the handshake signatures; the certificate is judged
//! afterwards for the claimed domain by [`crate::net::certs`].

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{CryptoProvider, WebPkiSupportedAlgorithms};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls::{ClientConfig, DigitallySignedStruct, DistinguishedName, ServerConfig, SignatureScheme};
use sha2::{Digest, Sha256};

use crate::domain::Domain;

/// `[tls]`: our certificate, extra trust roots, and whether peers must encrypt.
#[derive(Debug, Clone)]
pub struct TlsSettings {
    /// PEM certificate chain and key; both `None` → a self-signed certificate in the data dir.
    pub cert: Option<PathBuf>,
    pub key: Option<PathBuf>,
    pub ca_file: Option<PathBuf>,
    pub require_encryption: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("TLS certificate {path}: {msg} (check tls.cert)")]
    Cert { path: PathBuf, msg: String },
    #[error("TLS key {path}: {msg} (check tls.key)")]
    Key { path: PathBuf, msg: String },
    #[error("cannot create the self-signed certificate in {path}: {msg}")]
    SelfSigned { path: PathBuf, msg: String },
    #[error("TLS trust roots {path}: {msg} (check tls.ca_file)")]
    CaFile { path: PathBuf, msg: String },
    #[error("TLS setup: {0}")]
    Setup(String),
}

pub fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

impl PeerCertInfo {
    pub fn from_der(der: &[u8]) -> PeerCertInfo {
        use crate::net::certs::{kept_name, kept_names};
        let fp = Sha256::digest(der).iter().map(|b| format!("{b:02X}")).collect::<Vec<_>>().join(":");
        match x509_parser::parse_x509_certificate(der) {
            Ok((_, cert)) => {
                // Peer-chosen text, kept escaped and clipped: a few names of ~256 bytes.
                let mut names = Vec::new();
                if let Ok(Some(san)) = cert.subject_alternative_name() {
                    for n in &san.value.general_names {
                        if let x509_parser::extensions::GeneralName::DNSName(d) = n {
                            names.push(*d);
                        }
                    }
                }
                PeerCertInfo {
                    subject: kept_name(&cert.subject().to_string()),
                    issuer: kept_name(&cert.issuer().to_string()),
                    names: kept_names(names.iter()),
                    not_after: cert.validity().not_after.to_string(),
                    not_after_s: Some(cert.validity().not_after.timestamp()),
                    fingerprint_sha256: fp,
                }
            }
            Err(e) => PeerCertInfo {
                // (x509-parser's error may quote the certificate.)
                subject: kept_name(&format!("(unparseable certificate: {e})")),
                issuer: String::new(),
                names: Vec::new(),
                not_after: String::new(),
                not_after_s: None,
                fingerprint_sha256: fp,
            },
        }
    }
}

/// The facts of a certificate seen on a stream, shared by every stream that presented the
/// same one: a peer's streams all carry its certificate (often with many names), and one
/// copy serves them all. Dead entries are swept when the index grows.
pub fn peer_cert_info(der: &[u8]) -> Arc<PeerCertInfo> {
    static SEEN: std::sync::Mutex<Option<HashMap<[u8; 32], std::sync::Weak<PeerCertInfo>>>> = std::sync::Mutex::new(None);
    let key: [u8; 32] = Sha256::digest(der).into();
    let mut guard = SEEN.lock().unwrap_or_else(|e| e.into_inner());
    let seen = guard.get_or_insert_with(HashMap::new);
    if let Some(info) = seen.get(&key).and_then(std::sync::Weak::upgrade) {
        return info;
    }
    if seen.len() >= 1024 {
        seen.retain(|_, w| w.strong_count() > 0);
    }
    let info = Arc::new(PeerCertInfo::from_der(der));
    seen.insert(key, Arc::downgrade(&info));
    info
}

/// TLS version and cipher suite of an established session.
pub fn session_facts(conn: &rustls::CommonState) -> (String, String) {
    let version = match conn.protocol_version() {
        Some(rustls::ProtocolVersion::TLSv1_3) => "TLS 1.3".to_owned(),
        Some(rustls::ProtocolVersion::TLSv1_2) => "TLS 1.2".to_owned(),
        Some(v) => format!("{v:?}"),
        None => "unknown".into(),
    };
    let cipher = conn.negotiated_cipher_suite().map(|c| format!("{:?}", c.suite())).unwrap_or_default();
    (version, cipher)
}

/// The TLS context in force: replaced as a whole on reload; a stream takes the current one
/// at its handshake.
pub struct CurrentTls(std::sync::RwLock<Arc<TlsContext>>);

impl CurrentTls {
    pub fn new(ctx: TlsContext) -> CurrentTls {
        CurrentTls(std::sync::RwLock::new(Arc::new(ctx)))
    }

    pub fn get(&self) -> Arc<TlsContext> {
        self.0.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    pub fn set(&self, ctx: TlsContext) {
        *self.0.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(ctx);
    }
}

impl crate::proto::machine::CertJudge for CurrentTls {
    fn judge(&self, chain: &[CertificateDer<'_>], domain: &Domain, at: rustls::pki_types::UnixTime) -> crate::types::CertVerdict {
        self.get().judge.judge(chain, domain.as_str(), at)
    }
}

pub use crate::types::PeerCertInfo;

/// Everything TLS needs, built once at start.
pub struct TlsContext {
    server: HashMap<Domain, Arc<ServerConfig>>,
    client: HashMap<Domain, Arc<ClientConfig>>,
    default_domain: Domain,
    /// The certificate chain we present (for the operator).
    pub our_cert: PeerCertInfo,
    /// Extra trust roots from `[tls] ca_file` (used to judge peer certificates).
    pub extra_roots: Vec<CertificateDer<'static>>,
    /// Judges peer certificates against the system's roots and `extra_roots`.
    pub judge: super::certs::CertJudge,
}

impl TlsContext {
    /// Load `[tls] cert/key`, or create (once) and reuse a self-signed certificate for the
    /// hosted domains in `data_dir/tls/`.
    pub fn load(settings: &TlsSettings, domains: &[Domain], data_dir: &Path) -> Result<TlsContext, TlsError> {
        let (cert_path, key_path) = match (&settings.cert, &settings.key) {
            (Some(c), Some(k)) => (c.clone(), k.clone()),
            _ => ensure_self_signed(domains, &data_dir.join("tls"))?,
        };
        let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(&cert_path)
            .map_err(|e| TlsError::Cert { path: cert_path.clone(), msg: e.to_string() })?
            .collect::<Result<_, _>>()
            .map_err(|e| TlsError::Cert { path: cert_path.clone(), msg: e.to_string() })?;
        if chain.is_empty() {
            return Err(TlsError::Cert { path: cert_path, msg: "no PEM certificate found".into() });
        }
        let key = PrivateKeyDer::from_pem_file(&key_path).map_err(|e| TlsError::Key { path: key_path.clone(), msg: e.to_string() })?;
        let mut ctx = Self::from_parts(chain, key, domains).map_err(|e| match e {
            TlsError::Setup(msg) => TlsError::Key { path: key_path, msg },
            e => e,
        })?;
        if let Some(ca) = &settings.ca_file {
            ctx.extra_roots = load_roots(ca)?;
        }
        ctx.judge = super::certs::CertJudge::new(&ctx.extra_roots, true);
        Ok(ctx)
    }

    pub fn from_parts(
        chain: Vec<CertificateDer<'static>>,
        key: PrivateKeyDer<'static>,
        domains: &[Domain],
    ) -> Result<TlsContext, TlsError> {
        let provider = provider();
        let signing = provider.key_provider.load_private_key(key.clone_key()).map_err(|e| TlsError::Setup(e.to_string()))?;
        let certified = Arc::new(CertifiedKey::new(chain.clone(), signing));
        let our_cert = PeerCertInfo::from_der(&chain[0]);
        let mut server = HashMap::new();
        let mut client = HashMap::new();
        // One chain serves every hosted domain today; the map is per domain so each can
        // get its own certificate without touching the stream code. SNI carries A-labels.
        let by_name: HashMap<String, Arc<CertifiedKey>> =
            domains.iter().map(|d| (d.ascii().to_ascii_lowercase(), certified.clone())).collect();
        for d in domains {
            // Without SNI (Prosody sends none on STARTTLS) the stream's `to` picks the config,
            // and so the certificate.
            let resolver = Arc::new(DomainCert { by_name: by_name.clone(), fallback: by_name[&d.ascii().to_ascii_lowercase()].clone() });
            server.insert(d.clone(), Arc::new(server_config_with(resolver)?));
            client.insert(d.clone(), Arc::new(client_config_with(chain.clone(), key.clone_key())?));
        }
        Ok(TlsContext {
            server,
            client,
            default_domain: domains[0].clone(),
            our_cert,
            extra_roots: Vec::new(),
            judge: super::certs::CertJudge::new(&[], false),
        })
    }

    /// Server config for a stream addressed to `local` (the header's `to`, since some peers,
    /// Prosody among them, send no SNI).
    pub fn server_config(&self, local: &Domain) -> Arc<ServerConfig> {
        self.server.get(local).or_else(|| self.server.get(&self.default_domain)).cloned().expect("a config per hosted domain")
    }

    pub fn client_config(&self, local: &Domain) -> Arc<ClientConfig> {
        self.client.get(local).or_else(|| self.client.get(&self.default_domain)).cloned().expect("a config per hosted domain")
    }
}

/// A server config presenting one certificate whatever the SNI (the gateway's per-remote-
/// domain certificates: the stream's `to` chose it).
pub fn single_cert_server_config(chain: Vec<CertificateDer<'static>>, key: PrivateKeyDer<'static>) -> Result<ServerConfig, TlsError> {
    let signing = provider().key_provider.load_private_key(key).map_err(|e| TlsError::Setup(e.to_string()))?;
    let certified = Arc::new(CertifiedKey::new(chain, signing));
    server_config_with(Arc::new(DomainCert { by_name: HashMap::new(), fallback: certified }))
}

/// How every s2s server config is built: any client certificate requested and recorded
/// (judged once the claimed domain is known), ALPN for direct TLS, no resumption.
fn server_config_with(resolver: Arc<dyn ResolvesServerCert>) -> Result<ServerConfig, TlsError> {
    let provider = provider();
    let algs = provider.signature_verification_algorithms;
    let mut sc = ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| TlsError::Setup(e.to_string()))?
        .with_client_cert_verifier(Arc::new(RecordingVerifier { algs }))
        .with_cert_resolver(resolver);
    // XEP-0368 §3: direct TLS negotiates ALPN "xmpp-server" (STARTTLS peers send none).
    sc.alpn_protocols = vec![b"xmpp-server".to_vec()];
    // No session resumption: s2s streams live long and reconnect rarely, and every
    // ticket kept (with the peer's chain) would cost memory per peer for nothing.
    sc.send_tls13_tickets = 0;
    sc.session_storage = Arc::new(rustls::server::NoServerSessionStorage {});
    Ok(sc)
}

/// How every s2s client config is built: our certificate offered for SASL EXTERNAL, the
/// peer's recorded (judged by the machine), no resumption.
pub fn client_config_with(chain: Vec<CertificateDer<'static>>, key: PrivateKeyDer<'static>) -> Result<ClientConfig, TlsError> {
    let provider = provider();
    let algs = provider.signature_verification_algorithms;
    let mut cc = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| TlsError::Setup(e.to_string()))?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(RecordingVerifier { algs }))
        .with_client_auth_cert(chain, key)
        .map_err(|e| TlsError::Setup(e.to_string()))?;
    cc.resumption = rustls::client::Resumption::disabled();
    Ok(cc)
}

/// PEM trust roots; at least one certificate, each parseable.
fn load_roots(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let err = |msg: String| TlsError::CaFile { path: path.to_owned(), msg };
    let roots: Vec<CertificateDer<'static>> =
        CertificateDer::pem_file_iter(path).map_err(|e| err(e.to_string()))?.collect::<Result<_, _>>().map_err(|e| err(e.to_string()))?;
    if roots.is_empty() {
        return Err(err("no PEM certificate found".into()));
    }
    for (i, r) in roots.iter().enumerate() {
        x509_parser::parse_x509_certificate(r).map_err(|e| err(format!("certificate #{}: {e}", i + 1)))?;
    }
    Ok(roots)
}

/// Creates the self-signed certificate on first start and keeps it.
fn ensure_self_signed(domains: &[Domain], dir: &Path) -> Result<(PathBuf, PathBuf), TlsError> {
    let cert = dir.join("cert.pem");
    let key = dir.join("key.pem");
    if cert.exists() && key.exists() {
        return Ok((cert, key));
    }
    let err = |msg: String| TlsError::SelfSigned { path: dir.to_owned(), msg };
    std::fs::create_dir_all(dir).map_err(|e| err(e.to_string()))?;
    let mut names = Vec::new();
    for d in domains {
        names.push(d.ascii().into_owned());
        names.push(format!("*.{}", d.ascii()));
    }
    let ck = rcgen::generate_simple_self_signed(names).map_err(|e| err(e.to_string()))?;
    write_private(&key, ck.signing_key.serialize_pem().as_bytes()).map_err(|e| err(e.to_string()))?;
    std::fs::write(&cert, ck.cert.pem()).map_err(|e| err(e.to_string()))?;
    tracing::info!(cert = %cert.display(), "created a self-signed certificate for {}", domains.iter().map(|d| d.as_str()).collect::<Vec<_>>().join(", "));
    Ok((cert, key))
}

fn write_private(path: &Path, data: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new().write(true).create(true).truncate(true).mode(0o600).open(path)?;
    f.write_all(data)?;
    f.sync_all()
}

/// Serves our certificate by SNI, else for the stream's hosted domain.
#[derive(Debug)]
struct DomainCert {
    by_name: HashMap<String, Arc<CertifiedKey>>,
    fallback: Arc<CertifiedKey>,
}

impl ResolvesServerCert for DomainCert {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        match hello.server_name() {
            Some(sni) => Some(self.by_name.get(&sni.to_ascii_lowercase()).unwrap_or(&self.fallback).clone()),
            None => Some(self.fallback.clone()),
        }
    }
}

/// Accepts any peer certificate so the handshake completes (the certificate is judged once
/// the claimed domain is known), while still verifying the handshake signatures against it.
#[derive(Debug)]
struct RecordingVerifier {
    algs: WebPkiSupportedAlgorithms,
}

impl ClientCertVerifier for RecordingVerifier {
    fn offer_client_auth(&self) -> bool {
        true
    }
    fn client_auth_mandatory(&self) -> bool {
        false
    }
    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        &[]
    }
    fn verify_client_cert(
        &self,
        _: &CertificateDer<'_>,
        _: &[CertificateDer<'_>],
        _: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        Ok(ClientCertVerified::assertion())
    }
    fn verify_tls12_signature(
        &self,
        m: &[u8],
        c: &CertificateDer<'_>,
        d: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(m, c, d, &self.algs)
    }
    fn verify_tls13_signature(
        &self,
        m: &[u8],
        c: &CertificateDer<'_>,
        d: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(m, c, d, &self.algs)
    }
    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algs.supported_schemes()
    }
}

impl ServerCertVerifier for RecordingVerifier {
    fn verify_server_cert(
        &self,
        _: &CertificateDer<'_>,
        _: &[CertificateDer<'_>],
        _: &ServerName<'_>,
        _: &[u8],
        _: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }
    fn verify_tls12_signature(
        &self,
        m: &[u8],
        c: &CertificateDer<'_>,
        d: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(m, c, d, &self.algs)
    }
    fn verify_tls13_signature(
        &self,
        m: &[u8],
        c: &CertificateDer<'_>,
        d: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(m, c, d, &self.algs)
    }
    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algs.supported_schemes()
    }
}
