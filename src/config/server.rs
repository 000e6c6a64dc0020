//! `[server]`: the hosted domains, the public listeners, the data directory and the
//! control socket.

use std::net::SocketAddr;
use std::path::PathBuf;

use serde::Deserialize;

use super::{ConfigError, Ctx};
use crate::domain::Domain;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(super) struct ServerFile {
    domains: Vec<String>,
    listen: Vec<String>,
    direct_tls: Vec<String>,
    data_dir: String,
    control_socket: Option<String>,
}

impl Default for ServerFile {
    fn default() -> Self {
        ServerFile {
            domains: vec!["localhost".into()],
            listen: vec!["127.0.0.1:5269".into()],
            direct_tls: Vec::new(),
            data_dir: "./drawbridge-data".into(),
            control_socket: None,
        }
    }
}

/// `[server]`, validated.
pub(super) struct Server {
    pub domains: Vec<Domain>,
    pub listen: Vec<SocketAddr>,
    pub direct_tls: Vec<SocketAddr>,
    pub data_dir: PathBuf,
    pub control_socket: PathBuf,
}

impl Server {
    /// The public listeners (plain and direct TLS): the other doors need addresses of their own.
    pub fn public_listeners(&self) -> Vec<SocketAddr> {
        self.listen.iter().chain(&self.direct_tls).copied().collect()
    }
}

impl ServerFile {
    pub fn validate(&self, cx: &Ctx<'_>) -> Result<Server, ConfigError> {
        if self.domains.is_empty() {
            return Err(cx.bad("server.domains", "at least one hosted domain is required"));
        }
        let mut domains = Vec::new();
        for (i, d) in self.domains.iter().enumerate() {
            let dom = Domain::parse(d).map_err(|e| cx.bad(&format!("server.domains[{i}]"), format!("{d:?}: {e}")))?;
            if domains.contains(&dom) {
                return Err(cx.bad(&format!("server.domains[{i}]"), format!("{d:?} is listed twice")));
            }
            domains.push(dom);
        }
        let listen = cx.addresses("server.listen", &self.listen, "\"127.0.0.1:5269\" or \"[::]:5269\"")?;
        let direct_tls = cx.addresses("server.direct_tls", &self.direct_tls, "\"0.0.0.0:5270\"")?;
        if self.data_dir.trim().is_empty() {
            return Err(cx.bad("server.data_dir", "must not be empty"));
        }
        let data_dir = cx.resolve(&self.data_dir);
        let control_socket = match &self.control_socket {
            Some(s) if s.trim().is_empty() => return Err(cx.bad("server.control_socket", "must not be empty")),
            Some(s) => cx.resolve(s),
            None => data_dir.join("control.sock"),
        };
        Ok(Server { domains, listen, direct_tls, data_dir, control_socket })
    }
}
