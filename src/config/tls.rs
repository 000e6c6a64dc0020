//! `[tls]`: the certificate and key presented, extra trust anchors, and whether peers must
//! encrypt.

use serde::Deserialize;

use super::{ConfigError, Ctx, TlsSettings};

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(super) struct TlsFile {
    cert: Option<String>,
    key: Option<String>,
    ca_file: Option<String>,
    require_encryption: bool,
}

impl Default for TlsFile {
    fn default() -> Self {
        TlsFile { cert: None, key: None, ca_file: None, require_encryption: true }
    }
}

impl TlsFile {
    /// A certificate comes with its key: both or neither.
    pub fn validate(&self, cx: &Ctx<'_>) -> Result<TlsSettings, ConfigError> {
        let tls = TlsSettings {
            cert: self.cert.as_deref().map(|p| cx.resolve(p)),
            key: self.key.as_deref().map(|p| cx.resolve(p)),
            ca_file: self.ca_file.as_deref().map(|p| cx.resolve(p)),
            require_encryption: self.require_encryption,
        };
        match (&tls.cert, &tls.key) {
            (Some(_), None) => Err(cx.bad("tls.key", "tls.cert is set, so tls.key (the PEM private key) is required")),
            (None, Some(_)) => Err(cx.bad("tls.cert", "tls.key is set, so tls.cert (the PEM certificate chain) is required")),
            _ => Ok(tls),
        }
    }
}
