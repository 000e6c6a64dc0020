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
    let hosted = domains.iter().map(Domain::as_str).collect::<Vec<_>>().join(", ");
    let ca = ca_cert.display();
    let mut out = String::new();
    let mut line = |s: &str| {
        out.push_str(s);
        out.push('\n');
    };
    match server {
        InternalServer::Prosody => {
            line("-- drawbridge gateway: add to prosody.cfg.lua (Prosody 0.12; needs the lua-unbound package).");
            line(&format!("-- Every remote domain resolves to drawbridge's gateway listener ({listen}):"));
            line("unbound = { resolvconf = false; hoststxt = false;");
            line(&format!(
                "            options = {{ [\"local-zone:\"] = \". redirect\"; [\"local-data:\"] = \". 300 IN {record} {ip}\" }} }}"
            ));
            line("s2s_require_encryption = true");
            match g.auth {
                GatewayAuth::Pki => {
                    line("-- Remote domains prove themselves by certificates drawbridge mints with its gateway CA:");
                    line("s2s_secure_auth = true");
                    line(&format!("s2s_ssl = {{ cafile = \"{ca}\"; capath = false }}"));
                    line("-- Dialback is refused on the gateway's internal link (gateway.auth = \"pki\"):");
                    line("modules_disabled = { \"dialback\" }");
                    line(&format!(
                        "-- Prosody's own certificate for {hosted} must chain to gateway.internal_ca ({}) in drawbridge's",
                        g.internal_ca.as_deref().map_or("not set: required".into(), |p| p.display().to_string())
                    ));
                    line("-- configuration: drawbridge trusts that CA, and only it, for the internal server.");
                }
                GatewayAuth::Dialback => {
                    line("-- Dialback both ways (gateway.auth = \"dialback\"): keep mod_dialback; Prosody's callbacks for remote");
                    line("-- domains reach drawbridge through the resolver above, and drawbridge calls Prosody back directly.");
                    line("s2s_secure_auth = false");
                }
            }
            line(&format!("-- Prosody's s2s listener must be gateway.internal ({}):", g.internal));
            line(&format!("s2s_interfaces = {{ \"{}\" }}", g.internal.ip()));
            line(&format!("s2s_ports = {{ {} }}", g.internal.port()));
            line("-- Test domains under .test: libunbound keeps its built-in test. zone; use \"test. redirect\" / \"test. 300 IN A …\".");
        }
        InternalServer::Ejabberd => {
            line("# drawbridge gateway: ejabberd.yml (not covered by drawbridge's interop tests).");
            line("# ejabberd has no per-domain s2s route: point the resolver ejabberd uses (the host's, or a DNS view");
            line(&format!("# for it) at a zone that answers every name with {record} {ip}; ejabberd then connects to port 5269."));
            line("s2s_use_starttls: required");
            if g.auth == GatewayAuth::Pki {
                line(&format!("s2s_cafile: \"{ca}\"   # trust drawbridge's gateway CA for remote domains"));
                line("# and leave mod_s2s_dialback out of `modules:` (gateway.auth = \"pki\").");
            }
            line("listen:");
            line(&format!("  - port: {}", g.internal.port()));
            line(&format!("    ip: \"{}\"", g.internal.ip()));
            line("    module: ejabberd_s2s_in");
        }
        InternalServer::Openfire => {
            line("# drawbridge gateway: Openfire system properties (not covered by drawbridge's interop tests).");
            line("# Openfire routes s2s by a DNS override per remote domain (no wildcard): one entry per domain");
            line("# your users reach, e.g.");
            line(&format!("dnsutil.dnsOverride = {{remote.example,{ip}:{}}}", listen.port()));
            if g.auth == GatewayAuth::Pki {
                line(&format!("# Import {ca} into Openfire's server-to-server trust store (Server > TLS/SSL Certificates)."));
            }
            line(&format!("# Openfire's s2s listener must be gateway.internal ({}).", g.internal));
        }
    }
    let allow = g.allow.iter().map(|r| r.to_string()).collect::<Vec<_>>().join(", ");
    let c = if server == InternalServer::Prosody { "--" } else { "#" };
    line(&format!("{c} drawbridge accepts connections to {listen} from {allow} only (gateway.allow; by default gateway.internal's"));
    line(&format!("{c} address): the internal server's streams must leave from there, or list their address in gateway.allow."));
    if listen.port() != 5269 && server != InternalServer::Openfire {
        line(&format!(
            "-- WARNING: gateway.listen is on port {}, but the internal server connects to port 5269 (no SRV answer): listen on {ip}:5269.",
            listen.port()
        ));
    }
    line(&format!("-- The gateway CA certificate: {ca}"));
    line("-- (drawbridge keeps it readable by its own user only: copy it where the internal server can read it,");
    line("-- and use that path above; the key next to it never leaves drawbridge.)");
    Ok(out)
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
