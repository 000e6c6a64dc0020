//! The control socket: transport only. The engine's [`Request`]s, [`Reply`]s and events as
//! JSON lines over a Unix socket (mode 0600); `drawbridge ctl` and `attach` are its clients.
//!
//! Protocol: the client writes one request per line, e.g. `{"cmd":"status"}`; the server
//! answers one line `{"ok":true,"data":…}` or `{"ok":false,"error":"…"}`. After
//! `{"cmd":"subscribe"}` the server writes one event per line until the client leaves.

use std::path::Path;

use serde::{Deserialize, Serialize};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::unix::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{UnixListener, UnixStream};

pub use crate::engine::{ChangeReport, DomainReport, KeepReport, ModeReport, PolicyChange, Reply, Request, RtblReport, Snapshot};
use crate::engine::{EngineError, EngineHandle};

/// One line from a client: an engine request, or the socket's own `subscribe`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    Request(Request),
    /// Switch this connection to the event stream.
    Subscribe,
}

#[derive(Serialize, Deserialize)]
#[serde(tag = "cmd", rename_all = "snake_case")]
enum Transport {
    Subscribe,
}

/// Written as the client sends it (a request's own JSON, or `{"cmd":"subscribe"}`).
impl Serialize for Command {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            Command::Request(r) => r.serialize(s),
            Command::Subscribe => Transport::Subscribe.serialize(s),
        }
    }
}

impl Reply {
    /// The payload as JSON (what the socket carries in [`Response::data`]).
    pub fn to_json(&self) -> serde_json::Value {
        let v = match self {
            Reply::Status(x) => serde_json::to_value(x),
            Reply::Streams(x) => serde_json::to_value(x),
            Reply::Text(x) => serde_json::to_value(x),
            Reply::Probe(x) => serde_json::to_value(x),
            Reply::Outcomes(x) => serde_json::to_value(x),
            Reply::Change(x) => serde_json::to_value(x),
            Reply::Mode(x) => serde_json::to_value(x),
            Reply::Domains(x) => serde_json::to_value(x),
            Reply::Domain(x) => serde_json::to_value(x),
            Reply::Explain(x) => serde_json::to_value(x),
            Reply::Rtbl(x) => serde_json::to_value(x),
            Reply::Keep(x) => serde_json::to_value(x),
            Reply::Import(x) => serde_json::to_value(x),
            Reply::Preview(x) => serde_json::to_value(x),
            Reply::Snapshot(x) => serde_json::to_value(x),
            Reply::Transcript(x) => serde_json::to_value(x),
            Reply::Certs(x) => serde_json::to_value(x),
            Reply::Cluster(x) => serde_json::to_value(x),
        };
        v.unwrap_or(serde_json::Value::Null)
    }

    /// A socket answer's payload, read as the reply to `req`.
    pub fn decode(req: &Request, data: serde_json::Value) -> Result<Reply, serde_json::Error> {
        use serde_json::from_value as v;
        Ok(match req {
            Request::Status => Reply::Status(v(data)?),
            Request::Connections { cluster: true, .. } => Reply::Cluster(v(data)?),
            Request::Connections { .. } | Request::History { .. } => Reply::Streams(v(data)?),
            Request::Close { .. } | Request::Reload | Request::Watch { .. } | Request::BlacklistExport | Request::Metrics => {
                Reply::Text(v(data)?)
            }
            Request::Probe { .. } => Reply::Probe(v(data)?),
            Request::Verifications { .. } => Reply::Outcomes(v(data)?),
            Request::Approve { .. } | Request::Block { .. } | Request::Blacklist { .. } | Request::Unblock { .. } => {
                Reply::Change(v(data)?)
            }
            Request::Mode { .. } => Reply::Mode(v(data)?),
            Request::Pending | Request::Domains { .. } => Reply::Domains(v(data)?),
            Request::Domain { .. } => Reply::Domain(v(data)?),
            Request::Explain { .. } => Reply::Explain(v(data)?),
            Request::Rtbl => Reply::Rtbl(v(data)?),
            Request::Keep { .. } => Reply::Keep(v(data)?),
            Request::BlacklistImport { .. } => Reply::Import(v(data)?),
            Request::Preview { .. } => Reply::Preview(v(data)?),
            Request::Change { change, .. } => match change {
                PolicyChange::Mode { .. } => Reply::Mode(v(data)?),
                PolicyChange::BlacklistImport { .. } => Reply::Import(v(data)?),
                _ => Reply::Change(v(data)?),
            },
            Request::Snapshot => Reply::Snapshot(v(data)?),
            Request::Transcript { .. } => Reply::Transcript(v(data)?),
            Request::Certs { .. } => Reply::Certs(v(data)?),
        })
    }
}

/// What the socket carries: `{"ok":true,"data":…}` or `{"ok":false,"error":"…"}`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Response {
    pub ok: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub data: Option<serde_json::Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

impl Response {
    fn err(msg: impl Into<String>) -> Response {
        Response { ok: false, data: None, error: Some(msg.into()) }
    }
}

impl From<Result<Reply, EngineError>> for Response {
    fn from(r: Result<Reply, EngineError>) -> Response {
        match r {
            Ok(reply) => Response { ok: true, data: Some(reply.to_json()), error: None },
            Err(e) => Response::err(e.to_string()),
        }
    }
}

/// Longest request line accepted.
const MAX_LINE: usize = 64 * 1024;

/// Serve the control socket at `server.control_socket` for as long as the engine runs.
pub fn start(engine: &mut crate::engine::Engine) -> Result<(), crate::engine::StartError> {
    let handle = engine.handle();
    let path = handle.settings().control_socket.clone();
    let l = bind(&path).map_err(|err| crate::engine::StartError::Control { path: path.display().to_string(), err })?;
    engine.spawn(serve(handle, l));
    Ok(())
}

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

pub async fn serve(engine: EngineHandle, listener: UnixListener) {
    loop {
        let accepted = tokio::select! {
            _ = engine.stopped() => return,
            a = listener.accept() => a,
        };
        match accepted {
            Ok((stream, _)) => {
                let client = client(engine.acting_as(peer_user(&stream)), stream);
                engine.spawn_task(client);
            }
            Err(e) => {
                tracing::warn!("control socket accept failed: {e}");
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            }
        }
    }
}

/// The Unix user on the other end (SO_PEERCRED), for attributing operator actions.
fn peer_user(stream: &UnixStream) -> String {
    match stream.peer_cred() {
        Ok(c) => {
            let uid = c.uid();
            // getpwuid_r: /etc/passwd and whatever else the system's NSS names users from.
            let name = nix::unistd::User::from_uid(uid.into()).ok().flatten().map(|u| u.name);
            match name {
                Some(n) => format!("{n} (uid {uid})"),
                None => format!("uid {uid}"),
            }
        }
        Err(_) => "unknown user".into(),
    }
}

async fn client(engine: EngineHandle, stream: UnixStream) {
    // Transcripts this connection follows: no longer once it leaves.
    let mut watching: Vec<String> = Vec::new();
    tokio::select! {
        _ = client_loop(&engine, stream, &mut watching) => {}
        _ = engine.stopped() => {}
    }
    for id in watching {
        let _ = engine.execute(Request::Watch { id, on: false }).await;
    }
}

/// One request line (JSON) as read from the socket.
pub fn parse_request(line: &[u8]) -> Result<Command, serde_json::Error> {
    let line = line.trim_ascii();
    match serde_json::from_slice::<Request>(line) {
        Ok(r) => Ok(Command::Request(r)),
        Err(e) => match serde_json::from_slice::<Transport>(line) {
            Ok(Transport::Subscribe) => Ok(Command::Subscribe),
            Err(_) => Err(e),
        },
    }
}

async fn client_loop(engine: &EngineHandle, stream: UnixStream, watching: &mut Vec<String>) {
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
        let req = match parse_request(line.as_bytes()) {
            Ok(Command::Request(r)) => r,
            Ok(Command::Subscribe) => return events(engine, &mut w).await,
            Err(e) => {
                if write_json(&mut w, &Response::err(format!("bad request: {e}"))).await.is_err() {
                    return;
                }
                continue;
            }
        };
        // A connection watches a stream at most once, and stops when it leaves.
        if let Request::Watch { id, on } = &req
            && *on == watching.contains(id)
        {
            let resp = match engine.connections(false).iter().any(|c| &c.id == id) {
                true => Response::from(Ok(Reply::Text("ok".into()))),
                false => Response::from(Err(EngineError::NoLiveStream(id.clone()))),
            };
            if write_json(&mut w, &resp).await.is_err() {
                return;
            }
            continue;
        }
        let watch = match &req {
            Request::Watch { id, on } => Some((id.clone(), *on)),
            _ => None,
        };
        let result = engine.execute(req).await;
        if let (Some((id, on)), Ok(_)) = (watch, &result) {
            if on {
                watching.push(id);
            } else {
                watching.retain(|x| *x != id);
            }
        }
        if write_json(&mut w, &Response::from(result)).await.is_err() {
            return;
        }
    }
}

/// The rest of a subscribed connection: "subscribed", then one event per line.
async fn events(engine: &EngineHandle, w: &mut tokio::net::unix::OwnedWriteHalf) {
    let mut rx = engine.subscribe().into_events();
    if write_json(w, &Response::from(Ok(Reply::Text("subscribed".into())))).await.is_err() {
        return;
    }
    loop {
        match rx.recv().await {
            Ok(ev) => {
                if write_json(w, &ev).await.is_err() {
                    return;
                }
            }
            Err(crate::events::bus::RecvError::Lagged(n)) => {
                // Lossy by design: tell the client so it can resynchronise from a snapshot.
                if write_json(w, &serde_json::json!({"event": "lagged", "missed": n})).await.is_err() {
                    return;
                }
            }
            Err(_) => return,
        }
    }
}

async fn write_json<W: AsyncWriteExt + Unpin>(w: &mut W, v: &impl Serialize) -> std::io::Result<()> {
    let mut s = serde_json::to_string(v).map_err(std::io::Error::other)?;
    s.push('\n');
    w.write_all(s.as_bytes()).await
}

/// Client side: send one request, read one response.
pub async fn request(path: &Path, req: &Request) -> Result<Response, ControlError> {
    let (r, mut w) = connect(path).await?.into_split();
    write_json(&mut w, req).await.map_err(ControlError::Io)?;
    read_response(&mut BufReader::new(r)).await
}

async fn connect(path: &Path) -> Result<UnixStream, ControlError> {
    UnixStream::connect(path).await.map_err(|e| ControlError::Connect { path: path.display().to_string(), err: e })
}

async fn read_response(r: &mut BufReader<OwnedReadHalf>) -> Result<Response, ControlError> {
    let mut line = String::new();
    r.read_line(&mut line).await.map_err(ControlError::Io)?;
    if line.is_empty() {
        return Err(ControlError::Io(std::io::Error::new(std::io::ErrorKind::UnexpectedEof, "the server closed the control connection")));
    }
    serde_json::from_str(&line).map_err(|e| ControlError::Io(std::io::Error::other(e)))
}

/// A client's connection kept open across requests (the dashboard over `attach`); one that
/// broke is opened again once.
pub struct Connection {
    path: std::path::PathBuf,
    conn: tokio::sync::Mutex<Option<(BufReader<OwnedReadHalf>, OwnedWriteHalf)>>,
}

impl Connection {
    pub fn new(path: std::path::PathBuf) -> Connection {
        Connection { path, conn: tokio::sync::Mutex::new(None) }
    }

    /// The engine's typed answer to `req`, or why there is none.
    pub async fn request(&self, req: &Request) -> Result<Reply, RequestError> {
        let mut guard = self.conn.lock().await;
        let mut broke = None;
        for _ in 0..2 {
            let (r, w) = match guard.as_mut() {
                Some(c) => c,
                None => {
                    let (r, w) = connect(&self.path).await?.into_split();
                    guard.insert((BufReader::new(r), w))
                }
            };
            let answer = match write_json(w, req).await {
                Ok(()) => read_response(r).await,
                Err(e) => Err(ControlError::Io(e)),
            };
            match answer {
                Ok(Response { ok: true, data, .. }) => return Ok(Reply::decode(req, data.unwrap_or_default())?),
                Ok(Response { error, .. }) => return Err(RequestError::Refused(error.unwrap_or_else(|| "failed".into()))),
                Err(e) => broke = Some(e),
            }
            *guard = None;
        }
        Err(broke.expect("two attempts").into())
    }
}

/// Why a request got no reply.
#[derive(Debug, thiserror::Error)]
pub enum RequestError {
    /// The engine refused it, in its words.
    #[error("{0}")]
    Refused(String),
    #[error(transparent)]
    Control(#[from] ControlError),
    #[error("unexpected answer: {0}")]
    Decode(#[from] serde_json::Error),
}

/// What a subscribed connection delivers.
#[derive(Debug)]
pub enum Delivered {
    Event(Box<crate::events::Event>),
    /// Events were lost (this subscriber fell behind): take a new snapshot.
    Lagged,
}

/// A connection turned into the engine's event stream.
pub struct Events {
    lines: tokio::io::Lines<BufReader<OwnedReadHalf>>,
    /// Closing it would end the subscription.
    _w: OwnedWriteHalf,
}

impl Events {
    /// Subscribe over the socket at `path`.
    pub async fn subscribe(path: &Path) -> Result<Events, ControlError> {
        let (r, mut w) = connect(path).await?.into_split();
        w.write_all(b"{\"cmd\":\"subscribe\"}\n").await.map_err(ControlError::Io)?;
        let mut r = BufReader::new(r);
        read_response(&mut r).await?;
        Ok(Events { lines: r.lines(), _w: w })
    }

    /// The next event; `None` once the server closed the connection.
    pub async fn next(&mut self) -> Option<Delivered> {
        loop {
            let line = self.lines.next_line().await.ok()??;
            match serde_json::from_str::<crate::events::Event>(&line) {
                Ok(ev) => return Some(Delivered::Event(Box::new(ev))),
                Err(_) if line.contains("\"lagged\"") => return Some(Delivered::Lagged),
                // An event this client does not know (a newer server): skipped.
                Err(_) => continue,
            }
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    #[error("cannot reach drawbridge at {path}: {err} (is `drawbridge serve` running with the same --config?)")]
    Connect { path: String, err: std::io::Error },
    #[error("control socket: {0}")]
    Io(std::io::Error),
}
