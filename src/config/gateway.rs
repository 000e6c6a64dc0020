//! `[gateway]`: drawbridge in front of an internal XMPP server — where that server listens,
//! where its streams arrive, how the two authenticate each other, and the CA that mints the
//! certificates drawbridge presents for remote domains.

use std::net::SocketAddr;
use std::path::PathBuf;

use serde::Deserialize;

use super::{ConfigError, Ctx};
use crate::net::dial::IpRange;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct GatewayFile {
    internal: String,
    #[serde(default)]
    listen: Vec<String>,
    #[serde(default)]
    auth: Option<String>,
    #[serde(default)]
    ca_cert: Option<String>,
    #[serde(default)]
    ca_key: Option<String>,
    #[serde(default)]
    mints_per_minute: Option<u32>,
    #[serde(default)]
    internal_ca: Option<String>,
    #[serde(default)]
    allow: Option<Vec<String>>,
    #[serde(default)]
    max_minted: Option<usize>,
}

/// `[gateway]`: the internal server that really hosts `server.domains`, and how drawbridge
/// speaks to it.
#[derive(Debug, Clone)]
pub struct GatewaySettings {
    /// The internal server's s2s listener: world → internal streams go here (never DNS).
    pub internal: SocketAddr,
    /// Where drawbridge accepts the internal server's streams to the world.
    pub listen: Vec<SocketAddr>,
    pub auth: GatewayAuth,
    /// The operator's CA for the certificates drawbridge presents as remote domains
    /// (both or neither; neither: one is created in `DATA_DIR/gateway/`).
    pub ca_cert: Option<PathBuf>,
    pub ca_key: Option<PathBuf>,
    /// New certificates minted per minute at most (spent only on the internal server's
    /// streams and on authenticated world domains).
    pub mints_per_minute: u32,
    /// The trust anchor for the internal server's certificate (PEM), and the only one: not
    /// the system roots, not `[tls] ca_file`. Required under `pki`.
    pub internal_ca: Option<PathBuf>,
    /// Who may connect to `gateway.listen`: these addresses/ranges (by default the address of
    /// `gateway.internal`); anyone else is dropped before anything is read.
    pub allow: Vec<IpRange>,
    /// Minted certificates kept on disk at most (the oldest go first; expired ones always).
    pub max_minted: usize,
}

/// How the internal link authenticates, both ways (`gateway.auth`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GatewayAuth {
    /// Certificates: minted ones for the remote domains, the internal server's own for its
    /// domains; SASL EXTERNAL (XEP-0178). Dialback is refused on the internal link.
    Pki,
    /// Server Dialback (XEP-0220) answered by drawbridge for the remote domains and by the
    /// internal server for its own; never a callback into the world.
    Dialback,
}

impl GatewayAuth {
    pub fn as_str(self) -> &'static str {
        match self {
            GatewayAuth::Pki => "pki",
            GatewayAuth::Dialback => "dialback",
        }
    }
}

/// The gateway's certificate files: the minting CA's, and the internal server's anchor.
struct Trust {
    ca_cert: Option<PathBuf>,
    ca_key: Option<PathBuf>,
    internal_ca: Option<PathBuf>,
}

impl GatewayFile {
    /// `public`: the public listeners, which the gateway's may not share.
    pub fn validate(&self, cx: &Ctx<'_>, public: &[SocketAddr]) -> Result<GatewaySettings, ConfigError> {
        let (internal, listen) = self.addresses(cx, public)?;
        let auth = match self.auth.as_deref() {
            None | Some("pki") => GatewayAuth::Pki,
            Some("dialback") => GatewayAuth::Dialback,
            Some(a) => return Err(cx.bad("gateway.auth", format!("{a:?} is not one of pki, dialback"))),
        };
        let Trust { ca_cert, ca_key, internal_ca } = self.trust(cx, auth)?;
        let mints_per_minute = self.mints_per_minute.unwrap_or(60);
        if mints_per_minute == 0 {
            return Err(cx.bad("gateway.mints_per_minute", "must be at least 1"));
        }
        let allow = self.allow(cx, internal)?;
        let max_minted = self.max_minted.unwrap_or(10_000);
        if max_minted < 10 {
            return Err(cx.bad("gateway.max_minted", format!("{max_minted} is too small (at least 10)")));
        }
        Ok(GatewaySettings { internal, listen, auth, ca_cert, ca_key, mints_per_minute, internal_ca, allow, max_minted })
    }

    /// The internal server's address, and the gateway's listeners: at least one, none shared
    /// with the public ones, and not the internal server itself.
    fn addresses(&self, cx: &Ctx<'_>, public: &[SocketAddr]) -> Result<(SocketAddr, Vec<SocketAddr>), ConfigError> {
        let internal: SocketAddr = self.internal.parse().map_err(|_| {
            cx.bad(
                "gateway.internal",
                format!("{:?} is not an address like \"10.0.0.4:5269\" (the internal server's s2s port)", self.internal),
            )
        })?;
        if self.listen.is_empty() {
            return Err(cx.bad("gateway.listen", "at least one address is required: where the internal server's s2s streams arrive"));
        }
        let listen = cx.addresses("gateway.listen", &self.listen, "\"10.0.0.5:5269\"")?;
        for (i, addr) in listen.iter().enumerate() {
            if addr.port() != 0 && public.contains(addr) {
                return Err(cx.bad(
                    &format!("gateway.listen[{i}]"),
                    format!("{addr} is also in server.listen or server.direct_tls; the gateway listener must be an address of its own"),
                ));
            }
        }
        if listen.contains(&internal) {
            return Err(cx.bad("gateway.internal", format!("{internal} is also in gateway.listen: drawbridge would talk to itself")));
        }
        Ok((internal, listen))
    }

    /// The operator's CA (both files or neither) and the internal server's trust anchor
    /// (required under `pki`).
    fn trust(&self, cx: &Ctx<'_>, auth: GatewayAuth) -> Result<Trust, ConfigError> {
        let (ca_cert, ca_key) = (self.ca_cert.as_deref().map(|p| cx.resolve(p)), self.ca_key.as_deref().map(|p| cx.resolve(p)));
        match (&ca_cert, &ca_key) {
            (Some(_), None) => {
                return Err(cx.bad("gateway.ca_key", "gateway.ca_cert is set, so gateway.ca_key (its PEM key) is required"));
            }
            (None, Some(_)) => {
                return Err(cx.bad("gateway.ca_cert", "gateway.ca_key is set, so gateway.ca_cert (the CA's PEM certificate) is required"));
            }
            _ => {}
        }
        let internal_ca = self.internal_ca.as_deref().map(|p| cx.resolve(p));
        if auth == GatewayAuth::Pki && internal_ca.is_none() {
            return Err(cx.bad(
                "gateway.internal_ca",
                "required under auth = \"pki\": the CA (PEM) the internal server's certificate chains to — trusted for the internal server only, instead of the system roots and [tls] ca_file",
            ));
        }
        Ok(Trust { ca_cert, ca_key, internal_ca })
    }

    /// Who may connect to `gateway.listen`: the list, or by default the internal server's
    /// address; never nobody.
    fn allow(&self, cx: &Ctx<'_>, internal: SocketAddr) -> Result<Vec<IpRange>, ConfigError> {
        match &self.allow {
            None => Ok(vec![IpRange::parse(&internal.ip().to_string()).map_err(|e| cx.bad("gateway.internal", e))?]),
            Some(list) if list.is_empty() => Err(
                cx.bad("gateway.allow", "empty: nobody could connect to gateway.listen (leave it out to allow gateway.internal's address)")
            ),
            Some(list) => {
                list.iter().enumerate().map(|(i, r)| IpRange::parse(r).map_err(|e| cx.bad(&format!("gateway.allow[{i}]"), e))).collect()
            }
        }
    }
}
