//! The control socket: the engine's commands and events as JSON lines over a Unix socket
//! (mode 0600). `drawbridge ctl` is a client; the dashboard's `attach` will be another.
//!
//! Protocol: the client writes one request per line, e.g. `{"cmd":"status"}`; the server
//! answers one line `{"ok":true,"data":…}` or `{"ok":false,"error":"…"}`. After
//! `{"cmd":"subscribe"}` the server writes one event per line until the client leaves.

use std::path::Path;
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{UnixListener, UnixStream};

use crate::engine::{self, Shared};

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(tag = "cmd", rename_all = "snake_case")]
pub enum Request {
    Status,
    Connections {
        #[serde(default)]
        closed: bool,
    },
    Close {
        id: String,
    },
    Probe {
        domain: String,
        #[serde(default)]
        from: Option<String>,
    },
    Verifications {
        #[serde(default)]
        domain: Option<String>,
        #[serde(default)]
        limit: Option<usize>,
    },
    Subscribe,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Response {
    pub ok: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub data: Option<serde_json::Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

impl Response {
    fn ok(data: impl Serialize) -> Response {
        Response { ok: true, data: Some(serde_json::to_value(data).unwrap_or(serde_json::Value::Null)), error: None }
    }
    fn err(msg: impl Into<String>) -> Response {
        Response { ok: false, data: None, error: Some(msg.into()) }
    }
}

/// Longest request line accepted.
const MAX_LINE: usize = 64 * 1024;

/// Bind the socket: refuse if a live server answers there, replace a stale file, mode 0600.
pub fn bind(path: &Path) -> std::io::Result<UnixListener> {
    use std::os::unix::fs::PermissionsExt;
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir)?;
    }
    if path.exists() {
        if std::os::unix::net::UnixStream::connect(path).is_ok() {
            return Err(std::io::Error::new(std::io::ErrorKind::AddrInUse, "another drawbridge is serving this control socket"));
        }
        std::fs::remove_file(path)?;
    }
    // Create it private from the start, not chmod after (no window for other users).
    let old = unsafe_umask(0o177);
    let l = UnixListener::bind(path);
    unsafe_umask(old);
    let l = l?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
    Ok(l)
}

fn unsafe_umask(mask: u32) -> u32 {
    // SAFETY: umask is always safe to call; it only swaps the process file-creation mask.
    unsafe { libc_umask(mask) }
}

unsafe extern "C" {
    #[link_name = "umask"]
    fn libc_umask(mask: u32) -> u32;
}

pub async fn serve(shared: Arc<Shared>, listener: UnixListener) {
    loop {
        let accepted = tokio::select! {
            _ = shared.shutdown.cancelled() => return,
            a = listener.accept() => a,
        };
        match accepted {
            Ok((stream, _)) => {
                tokio::spawn(client(shared.clone(), stream));
            }
            Err(e) => {
                tracing::warn!("control socket accept failed: {e}");
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            }
        }
    }
}

async fn client(shared: Arc<Shared>, stream: UnixStream) {
    let (r, mut w) = stream.into_split();
    let mut lines = BufReader::new(r);
    let mut line = String::new();
    loop {
        line.clear();
        let n = match (&mut lines).take(MAX_LINE as u64).read_line(&mut line).await {
            Ok(n) => n,
            Err(_) => return,
        };
        if n == 0 {
            return;
        }
        if !line.ends_with('\n') && n >= MAX_LINE {
            let _ = write_json(&mut w, &Response::err(format!("request longer than {MAX_LINE} bytes"))).await;
            return;
        }
        let req: Request = match serde_json::from_str(line.trim()) {
            Ok(r) => r,
            Err(e) => {
                if write_json(&mut w, &Response::err(format!("bad request: {e}"))).await.is_err() {
                    return;
                }
                continue;
            }
        };
        if req == Request::Subscribe {
            let mut rx = shared.events.subscribe();
            if write_json(&mut w, &Response::ok("subscribed")).await.is_err() {
                return;
            }
            loop {
                match rx.recv().await {
                    Ok(ev) => {
                        if write_json(&mut w, &ev).await.is_err() {
                            return;
                        }
                    }
                    Err(tokio::sync::broadcast::error::RecvError::Lagged(n)) => {
                        // Lossy by design: tell the client so it can resynchronise from a snapshot.
                        if write_json(&mut w, &serde_json::json!({"event": "lagged", "missed": n})).await.is_err() {
                            return;
                        }
                    }
                    Err(_) => return,
                }
            }
        }
        let resp = handle(&shared, req).await;
        if write_json(&mut w, &resp).await.is_err() {
            return;
        }
    }
}

async fn handle(shared: &Arc<Shared>, req: Request) -> Response {
    match req {
        Request::Status => Response::ok(engine::status(shared)),
        Request::Connections { closed } => Response::ok(shared.table.snapshots(closed)),
        Request::Close { id } => {
            if engine::close_stream(shared, &id, "closed by the operator (ctl close)") {
                Response::ok(format!("closing stream {id}"))
            } else {
                Response::err(format!("no live stream with id {id} (see `drawbridge ctl connections`)"))
            }
        }
        Request::Probe { domain, from } => Response::ok(engine::probe(shared, &domain, from.as_deref()).await),
        Request::Verifications { domain, limit } => {
            let mut v = shared.outcomes();
            if let Some(d) = domain {
                v.retain(|o| o.remote == d);
            }
            v.reverse();
            v.truncate(limit.unwrap_or(50));
            Response::ok(v)
        }
        Request::Subscribe => Response::err("subscribe is handled by the connection loop"),
    }
}

async fn write_json<W: AsyncWriteExt + Unpin>(w: &mut W, v: &impl Serialize) -> std::io::Result<()> {
    let mut s = serde_json::to_string(v).map_err(std::io::Error::other)?;
    s.push('\n');
    w.write_all(s.as_bytes()).await
}

/// Client side: send one request, read one response.
pub async fn request(path: &Path, req: &Request) -> Result<Response, ControlError> {
    let stream = UnixStream::connect(path).await.map_err(|e| ControlError::Connect { path: path.display().to_string(), err: e })?;
    let (r, mut w) = stream.into_split();
    write_json(&mut w, req).await.map_err(ControlError::Io)?;
    let mut line = String::new();
    BufReader::new(r).read_line(&mut line).await.map_err(ControlError::Io)?;
    if line.is_empty() {
        return Err(ControlError::Io(std::io::Error::new(std::io::ErrorKind::UnexpectedEof, "the server closed the control connection")));
    }
    serde_json::from_str(&line).map_err(|e| ControlError::Io(std::io::Error::other(e)))
}

#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    #[error("cannot reach drawbridge at {path}: {err} (is `drawbridge serve` running with the same --config?)")]
    Connect { path: String, err: std::io::Error },
    #[error("control socket: {0}")]
    Io(std::io::Error),
}
