//! `[components]` and `[[component]]`: external components (XEP-0114) — where they
//! connect, and each one's domain and shared secret.

use std::net::SocketAddr;
use std::path::PathBuf;

use serde::Deserialize;

use super::{ConfigError, Ctx};
use crate::domain::Domain;

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(super) struct ComponentsFile {
    listen: Vec<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct ComponentFile {
    domain: String,
    #[serde(default)]
    secret: Option<String>,
    /// A file holding the secret (so it need not live in the config).
    #[serde(default)]
    secret_file: Option<String>,
}

/// External components (XEP-0114): where they connect, and each one's domain and secret.
#[derive(Debug, Clone, Default)]
pub struct ComponentSettings {
    pub listen: Vec<SocketAddr>,
    pub list: Vec<ComponentDef>,
}

#[derive(Clone)]
pub struct ComponentDef {
    pub domain: Domain,
    /// The shared secret of the `jabber:component:accept` handshake.
    pub secret: String,
    /// Where the secret was read from (`secret_file`); `None`: from the config file itself.
    pub secret_file: Option<PathBuf>,
}

/// The secret stays out of logs and debug output.
impl std::fmt::Debug for ComponentDef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ComponentDef")
            .field("domain", &self.domain)
            .field("secret", &"(hidden)")
            .field("secret_file", &self.secret_file)
            .finish()
    }
}

impl ComponentSettings {
    pub fn domains(&self) -> impl Iterator<Item = &Domain> {
        self.list.iter().map(|c| &c.domain)
    }
}

/// Why nested component domains are refused (see [`own_domain`]).
const NESTED: &str =
    "a component answers for its whole subtree, so one would take the other's traffic; give each component a domain outside the others'";

/// `hosted`: `server.domains`; `taken`: the other kinds' listeners.
pub(super) fn validate(
    cx: &Ctx<'_>,
    section: &ComponentsFile,
    blocks: &[ComponentFile],
    hosted: &[Domain],
    taken: &[SocketAddr],
) -> Result<ComponentSettings, ConfigError> {
    let mut components = ComponentSettings::default();
    for (i, a) in section.listen.iter().enumerate() {
        let key = format!("components.listen[{i}]");
        let addr: SocketAddr = a.parse().map_err(|_| cx.bad(&key, format!("{a:?} is not an address like \"127.0.0.1:5347\"")))?;
        if addr.port() != 0 && taken.contains(&addr) {
            return Err(cx.bad(&key, format!("{addr} is already a listener of another kind; components need an address of their own")));
        }
        components.listen.push(addr);
    }
    for (i, c) in blocks.iter().enumerate() {
        let domain = own_domain(cx, i, &c.domain, &components.list, hosted)?;
        let (secret, secret_file) = c.secret(cx, i)?;
        components.list.push(ComponentDef { domain, secret, secret_file });
    }
    if !components.list.is_empty() && components.listen.is_empty() {
        return Err(cx.bad("components.listen", "[[component]] blocks are configured, so an address for them to connect to is required"));
    }
    Ok(components)
}

/// Component `i`'s domain: one of its own. A component owns its domain and every subdomain
/// of it (the router and what the component may send from). Nested with another component,
/// one of them would answer for the other; around a hosted domain, it would take that
/// domain's traffic. A component *under* a hosted domain (pubsub.example.org) is the usual
/// layout and no overlap: a hosted domain is only itself.
fn own_domain(cx: &Ctx<'_>, i: usize, name: &str, before: &[ComponentDef], hosted: &[Domain]) -> Result<Domain, ConfigError> {
    let key = format!("component[{i}].domain");
    let domain = Domain::parse(name).map_err(|e| cx.bad(&key, format!("{name:?}: {e}")))?;
    if hosted.contains(&domain) {
        return Err(cx.bad(&key, format!("{domain} is in server.domains; a component needs a domain of its own (e.g. a subdomain)")));
    }
    for (j, other) in before.iter().enumerate() {
        let other_key = format!("component[{j}].domain");
        if domain == other.domain {
            return Err(cx.bad(&key, format!("{domain} has two [[component]] blocks")));
        } else if domain.is_subdomain_of(&other.domain) {
            return Err(cx.bad(&key, format!("{:?} lies under {other_key} {:?}: {}", domain.as_str(), other.domain.as_str(), NESTED)));
        } else if other.domain.is_subdomain_of(&domain) {
            return Err(cx.bad(&key, format!("{:?} lies around {other_key} {:?}: {}", domain.as_str(), other.domain.as_str(), NESTED)));
        }
    }
    if let Some((j, h)) = hosted.iter().enumerate().find(|(_, h)| h.is_subdomain_of(&domain)) {
        return Err(cx.bad(
            &key,
            format!(
                "{:?} lies around server.domains[{j}] {:?}: the component would take that hosted domain's traffic; give the component a name of its own (e.g. a subdomain of a hosted domain)",
                domain.as_str(),
                h.as_str()
            ),
        ));
    }
    Ok(domain)
}

impl ComponentFile {
    /// The shared secret, from the config or from `secret_file` (and that file), at least
    /// 16 characters.
    fn secret(&self, cx: &Ctx<'_>, i: usize) -> Result<(String, Option<PathBuf>), ConfigError> {
        let (secret, secret_file) = match (&self.secret, &self.secret_file) {
            (Some(_), Some(_)) => return Err(cx.bad(&format!("component[{i}].secret_file"), "set either secret or secret_file, not both")),
            (None, None) => {
                return Err(cx.bad(
                    &format!("component[{i}].secret"),
                    "required (or secret_file: a file holding it): the shared secret of the component's handshake",
                ));
            }
            (Some(s), None) => (s.clone(), None),
            (None, Some(sf)) => {
                let p = cx.resolve(sf);
                (read_secret_file(cx, &format!("component[{i}].secret_file"), &p)?, Some(p))
            }
        };
        if secret.chars().count() < 16 {
            let (key, whose) = match &secret_file {
                Some(p) => (format!("component[{i}].secret_file"), format!("the secret in {}", p.display())),
                None => (format!("component[{i}].secret"), "it".to_owned()),
            };
            return Err(cx.bad(&key, format!("{whose} must be at least 16 characters (it is all that authenticates the component)")));
        }
        Ok((secret, secret_file))
    }
}

/// The secret in the file `p` (named by `key`), without its trailing line break.
fn read_secret_file(cx: &Ctx<'_>, key: &str, p: &std::path::Path) -> Result<String, ConfigError> {
    // A secret is a line: a device, a FIFO or a huge file named by mistake is
    // refused, not read. Judged on the opened file (no window for the path to
    // change between the look and the read), opened without blocking (a FIFO
    // with no writer would hold start-up), read 4096 bytes at most whatever its
    // size said.
    use std::io::Read;
    use std::os::unix::fs::OpenOptionsExt;
    let cannot = |e: std::io::Error| cx.bad(key, format!("{}: cannot read it: {e}", p.display()));
    let f = std::fs::OpenOptions::new().read(true).custom_flags(libc::O_NONBLOCK).open(p).map_err(cannot)?;
    let m = f.metadata().map_err(cannot)?;
    if !m.is_file() {
        return Err(cx.bad(key, format!("{}: not a regular file", p.display())));
    }
    let mut bytes = Vec::new();
    f.take(4097).read_to_end(&mut bytes).map_err(cannot)?;
    if m.len() > 4096 || bytes.len() > 4096 {
        return Err(cx.bad(
            key,
            format!("{}: {} bytes; a secret file holds one line (4096 bytes at most)", p.display(), m.len().max(bytes.len() as u64)),
        ));
    }
    let text = String::from_utf8(bytes).map_err(|_| cx.bad(key, format!("{}: cannot read it: not UTF-8", p.display())))?;
    // A file written by `echo` or an editor ends with a line break; it is no part of the secret.
    Ok(text.trim_end_matches(['\n', '\r']).to_owned())
}
