//! `[auth]` and `[[domain]]`: how peers must authenticate and encrypt, in general and per
//! remote domain.

use serde::Deserialize;

use super::{AuthMode, ConfigError, Ctx, DomainRule, Security};
use crate::domain::Domain;

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(super) struct AuthFile {
    mode: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct DomainFile {
    name: String,
    #[serde(default)]
    auth: Option<String>,
    #[serde(default)]
    require_encryption: Option<bool>,
}

/// `key`'s authentication mode.
fn auth_mode(cx: &Ctx<'_>, key: &str, m: &str) -> Result<AuthMode, ConfigError> {
    AuthMode::parse(m).ok_or_else(|| cx.bad(key, format!("{m:?} is not one of cert-or-dialback, cert-only")))
}

/// The rules: `[auth]`'s, `[tls] require_encryption`, and one `[[domain]]` block per domain.
pub(super) fn validate(cx: &Ctx<'_>, auth: &AuthFile, blocks: &[DomainFile], require_encryption: bool) -> Result<Security, ConfigError> {
    let auth = match &auth.mode {
        None => AuthMode::CertOrDialback,
        Some(m) => auth_mode(cx, "auth.mode", m)?,
    };
    let mut rules: Vec<DomainRule> = Vec::new();
    for (i, d) in blocks.iter().enumerate() {
        let name = Domain::parse(&d.name).map_err(|e| cx.bad(&format!("domain[{i}].name"), format!("{:?}: {e}", d.name)))?;
        if rules.iter().any(|r| r.name == name) {
            return Err(cx.bad(&format!("domain[{i}].name"), format!("{name} has two [[domain]] blocks")));
        }
        let auth = d.auth.as_deref().map(|a| auth_mode(cx, &format!("domain[{i}].auth"), a)).transpose()?;
        rules.push(DomainRule { name, auth, require_encryption: d.require_encryption });
    }
    Ok(Security { auth, require_encryption, rules })
}
