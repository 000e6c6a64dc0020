//! `drawbridge gateway setup prosody|ejabberd|openfire`: what the internal server's
//! configuration needs for this drawbridge, from its `[gateway]` section. Prosody's lines
//! are what the interop tests run; for ejabberd and Openfire the known limits are said.

use std::net::SocketAddr;
use std::path::Path;

use crate::config::{GatewayAuth, GatewaySettings};
use crate::domain::Domain;

/// The internal servers `setup` knows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InternalServer {
    Prosody,
    Ejabberd,
    Openfire,
}

impl InternalServer {
    pub fn parse(s: &str) -> Option<InternalServer> {
        match s {
            "prosody" => Some(InternalServer::Prosody),
            "ejabberd" => Some(InternalServer::Ejabberd),
            "openfire" => Some(InternalServer::Openfire),
            _ => None,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum SetupError {
    #[error("gateway.listen {0} is a wildcard address: the internal server needs one it can connect to (e.g. \"10.0.0.5:5269\")")]
    Wildcard(SocketAddr),
}

/// The lines for `server`'s configuration. The internal server reaches drawbridge by
/// resolving every remote domain to the first `gateway.listen` address; Prosody and ejabberd
/// then connect to port 5269 there (no SRV answer), hence the warning for another port.
pub fn setup(server: InternalServer, g: &GatewaySettings, domains: &[Domain], ca_cert: &Path) -> Result<String, SetupError> {
    let listen = g.listen[0];
    if listen.ip().is_unspecified() {
        return Err(SetupError::Wildcard(listen));
    }
    let (ip, record) = match listen.ip() {
        std::net::IpAddr::V4(v4) => (v4.to_string(), "A"),
        std::net::IpAddr::V6(v6) => (v6.to_string(), "AAAA"),
    };
    let t =
        Target { g, listen, ip, record, hosted: domains.iter().map(Domain::as_str).collect::<Vec<_>>().join(", "), ca: ca_cert.display() };
    let mut out = String::new();
    match server {
        InternalServer::Prosody => prosody(&mut out, &t),
        InternalServer::Ejabberd => ejabberd(&mut out, &t),
        InternalServer::Openfire => openfire(&mut out, &t),
    }
    common(&mut out, server, &t);
    Ok(out)
}

/// What every server's lines are made of: the gateway settings, where drawbridge listens
/// for the internal server and the DNS record that leads there.
struct Target<'a> {
    g: &'a GatewaySettings,
    listen: SocketAddr,
    ip: String,
    record: &'static str,
    /// The domains drawbridge serves, comma-separated.
    hosted: String,
    /// The gateway CA certificate's path.
    ca: std::path::Display<'a>,
}

fn line(out: &mut String, s: &str) {
    out.push_str(s);
    out.push('\n');
}

/// Prosody 0.12: every remote domain resolved to the gateway listener by lua-unbound; the
/// interop tests run these lines.
fn prosody(out: &mut String, t: &Target) {
    let Target { g, listen, ip, record, hosted, ca } = t;
    line(out, "-- drawbridge gateway: add to prosody.cfg.lua (Prosody 0.12; needs the lua-unbound package).");
    line(out, &format!("-- Every remote domain resolves to drawbridge's gateway listener ({listen}):"));
    line(out, "unbound = { resolvconf = false; hoststxt = false;");
    line(
        out,
        &format!("            options = {{ [\"local-zone:\"] = \". redirect\"; [\"local-data:\"] = \". 300 IN {record} {ip}\" }} }}"),
    );
    line(out, "s2s_require_encryption = true");
    match g.auth {
        GatewayAuth::Pki => {
            line(out, "-- Remote domains prove themselves by certificates drawbridge mints with its gateway CA:");
            line(out, "s2s_secure_auth = true");
            line(out, &format!("s2s_ssl = {{ cafile = \"{ca}\"; capath = false }}"));
            line(out, "-- Dialback is refused on the gateway's internal link (gateway.auth = \"pki\"):");
            line(out, "modules_disabled = { \"dialback\" }");
            line(
                out,
                &format!(
                    "-- Prosody's own certificate for {hosted} must chain to gateway.internal_ca ({}) in drawbridge's",
                    g.internal_ca.as_deref().map_or("not set: required".into(), |p| p.display().to_string())
                ),
            );
            line(out, "-- configuration: drawbridge trusts that CA, and only it, for the internal server.");
        }
        GatewayAuth::Dialback => {
            line(out, "-- Dialback both ways (gateway.auth = \"dialback\"): keep mod_dialback; Prosody's callbacks for remote");
            line(out, "-- domains reach drawbridge through the resolver above, and drawbridge calls Prosody back directly.");
            line(out, "s2s_secure_auth = false");
        }
    }
    line(out, &format!("-- Prosody's s2s listener must be gateway.internal ({}):", g.internal));
    line(out, &format!("s2s_interfaces = {{ \"{}\" }}", g.internal.ip()));
    line(out, &format!("s2s_ports = {{ {} }}", g.internal.port()));
    line(out, "-- Test domains under .test: libunbound keeps its built-in test. zone; use \"test. redirect\" / \"test. 300 IN A …\".");
}

/// ejabberd: no per-domain route, so the resolver it uses must answer every name.
fn ejabberd(out: &mut String, t: &Target) {
    let Target { g, ip, record, ca, .. } = t;
    line(out, "# drawbridge gateway: ejabberd.yml (not covered by drawbridge's interop tests).");
    line(out, "# ejabberd has no per-domain s2s route: point the resolver ejabberd uses (the host's, or a DNS view");
    line(out, &format!("# for it) at a zone that answers every name with {record} {ip}; ejabberd then connects to port 5269."));
    line(out, "s2s_use_starttls: required");
    if g.auth == GatewayAuth::Pki {
        line(out, &format!("s2s_cafile: \"{ca}\"   # trust drawbridge's gateway CA for remote domains"));
        line(out, "# and leave mod_s2s_dialback out of `modules:` (gateway.auth = \"pki\").");
    }
    line(out, "listen:");
    line(out, &format!("  - port: {}", g.internal.port()));
    line(out, &format!("    ip: \"{}\"", g.internal.ip()));
    line(out, "    module: ejabberd_s2s_in");
}

/// Openfire: a DNS override per remote domain.
fn openfire(out: &mut String, t: &Target) {
    let Target { g, listen, ip, ca, .. } = t;
    line(out, "# drawbridge gateway: Openfire system properties (not covered by drawbridge's interop tests).");
    line(out, "# Openfire routes s2s by a DNS override per remote domain (no wildcard): one entry per domain");
    line(out, "# your users reach, e.g.");
    line(out, &format!("dnsutil.dnsOverride = {{remote.example,{ip}:{}}}", listen.port()));
    if g.auth == GatewayAuth::Pki {
        line(out, &format!("# Import {ca} into Openfire's server-to-server trust store (Server > TLS/SSL Certificates)."));
    }
    line(out, &format!("# Openfire's s2s listener must be gateway.internal ({}).", g.internal));
}

/// The lines every server gets: who may connect, a wrong port, where the CA certificate is.
fn common(out: &mut String, server: InternalServer, t: &Target) {
    let Target { g, listen, ip, ca, .. } = t;
    let allow = g.allow.iter().map(|r| r.to_string()).collect::<Vec<_>>().join(", ");
    let c = if server == InternalServer::Prosody { "--" } else { "#" };
    line(out, &format!("{c} drawbridge accepts connections to {listen} from {allow} only (gateway.allow; by default gateway.internal's"));
    line(out, &format!("{c} address): the internal server's streams must leave from there, or list their address in gateway.allow."));
    if listen.port() != 5269 && server != InternalServer::Openfire {
        line(
            out,
            &format!(
                "-- WARNING: gateway.listen is on port {}, but the internal server connects to port 5269 (no SRV answer): listen on {ip}:5269.",
                listen.port()
            ),
        );
    }
    line(out, &format!("-- The gateway CA certificate: {ca}"));
    line(out, "-- (drawbridge keeps it readable by its own user only: copy it where the internal server can read it,");
    line(out, "-- and use that path above; the key next to it never leaves drawbridge.)");
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(auth: GatewayAuth, listen: &str) -> GatewaySettings {
        GatewaySettings {
            internal: "10.0.0.4:5269".parse().unwrap(),
            listen: vec![listen.parse().unwrap()],
            auth,
            ca_cert: None,
            ca_key: None,
            mints_per_minute: 60,
            internal_ca: Some("/etc/drawbridge/internal-ca.pem".into()),
            allow: vec![crate::net::dial::IpRange::parse("10.0.0.4").unwrap()],
            max_minted: 10_000,
        }
    }

    #[test]
    fn prosody_pki_lines() {
        let d = [Domain::parse("h.example").unwrap()];
        let out = setup(InternalServer::Prosody, &settings(GatewayAuth::Pki, "10.0.0.5:5269"), &d, Path::new("/var/lib/db/gateway/ca.pem"))
            .unwrap();
        for needle in [
            "[\"local-zone:\"] = \". redirect\"; [\"local-data:\"] = \". 300 IN A 10.0.0.5\"",
            "s2s_secure_auth = true",
            "s2s_ssl = { cafile = \"/var/lib/db/gateway/ca.pem\"; capath = false }",
            "modules_disabled = { \"dialback\" }",
            "s2s_interfaces = { \"10.0.0.4\" }",
            "Prosody's own certificate for h.example must chain to gateway.internal_ca (/etc/drawbridge/internal-ca.pem)",
            "accepts connections to 10.0.0.5:5269 from 10.0.0.4/32 only (gateway.allow",
        ] {
            assert!(out.contains(needle), "{needle:?} missing from:\n{out}");
        }
        assert!(!out.contains("WARNING"), "{out}");
    }

    #[test]
    fn dialback_keeps_mod_dialback_and_odd_ports_are_warned_about() {
        let d = [Domain::parse("h.example").unwrap()];
        let out = setup(InternalServer::Prosody, &settings(GatewayAuth::Dialback, "[fd00::5]:5299"), &d, Path::new("ca.pem")).unwrap();
        assert!(out.contains("IN AAAA fd00::5") && out.contains("s2s_secure_auth = false") && !out.contains("modules_disabled"), "{out}");
        assert!(out.contains("WARNING: gateway.listen is on port 5299"), "{out}");
        let e = setup(InternalServer::Ejabberd, &settings(GatewayAuth::Pki, "0.0.0.0:5269"), &d, Path::new("ca.pem")).unwrap_err();
        assert!(e.to_string().contains("wildcard"), "{e}");
        let out = setup(InternalServer::Openfire, &settings(GatewayAuth::Pki, "10.0.0.5:5269"), &d, Path::new("ca.pem")).unwrap();
        assert!(out.contains("dnsutil.dnsOverride = {remote.example,10.0.0.5:5269}"), "{out}");
    }
}
