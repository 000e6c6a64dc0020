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
    Approve {
        domain: String,
        #[serde(default)]
        reason: Option<String>,
    },
    Block {
        domain: String,
        /// Seconds until the block lifts by itself.
        #[serde(default)]
        for_secs: Option<u64>,
        #[serde(default)]
        reason: Option<String>,
    },
    Blacklist {
        domain: String,
        reason: String,
    },
    Unblock {
        domain: String,
    },
    Mode {
        mode: String,
    },
    Pending,
    Domains {
        #[serde(default)]
        state: Option<String>,
    },
    Domain {
        domain: String,
    },
    History {
        #[serde(default)]
        domain: Option<String>,
        #[serde(default)]
        limit: Option<usize>,
    },
    BlacklistImport {
        text: String,
        #[serde(default)]
        source: Option<String>,
        #[serde(default)]
        dry_run: bool,
    },
    BlacklistExport,
    /// Re-read certificates and keys.
    Reload,
    /// Everything a dashboard needs to (re)build its model.
    Snapshot,
    /// A stream's transcript (live or recently closed).
    Transcript {
        id: String,
    },
    /// Start/stop recording an established stream's transcript for this client (stops when
    /// the client disconnects).
    Watch {
        id: String,
        on: bool,
    },
    Subscribe,
}

/// `Request::Snapshot`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Snapshot {
    pub status: crate::engine::Status,
    pub connections: Vec<crate::events::ConnSnapshot>,
    pub domains: Vec<crate::store::DomainRecord>,
    pub outcomes: Vec<crate::events::VerificationOutcome>,
}

/// `ctl domain`: everything known about one domain.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DomainReport {
    pub domain: String,
    pub record: Option<crate::store::DomainRecord>,
    /// The verdict policy gives it now, in words.
    pub verdict: String,
    pub outcomes: Vec<crate::events::VerificationOutcome>,
    pub streams: Vec<crate::events::ConnSnapshot>,
    pub policy_log: Vec<crate::store::PolicyAction>,
}

/// The answer to a policy change.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ChangeReport {
    pub record: crate::store::DomainRecord,
    pub changed: bool,
    pub closed_streams: Vec<String>,
}

/// `ctl mode`: the mode now and the streams it closed.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ModeReport {
    pub mode: String,
    pub closed_streams: Vec<String>,
}

/// The engine's typed answer to a [`Request`]. In the process (the dashboard) it is used as
/// it is; only on the socket does it become JSON (the payload alone, in [`Response::data`]),
/// and [`Reply::decode`] turns it back knowing the request.
#[derive(Debug, Clone)]
pub enum Reply {
    Status(Box<crate::engine::Status>),
    /// A stream list: `connections`, `history`.
    Streams(Vec<crate::events::ConnSnapshot>),
    /// Done, in words (`close`, `reload`, `watch`, `subscribe`; the blacklist export).
    Text(String),
    Probe(Box<crate::engine::ProbeReport>),
    Outcomes(Vec<crate::events::VerificationOutcome>),
    Change(Box<ChangeReport>),
    Mode(ModeReport),
    Domains(Vec<crate::policy::DomainRecord>),
    Domain(Box<DomainReport>),
    Import(Box<crate::engine::ImportReport>),
    Snapshot(Box<Snapshot>),
    Transcript(Vec<crate::events::TranscriptLine>),
}

impl Reply {
    /// The payload as JSON (for the socket).
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
            Reply::Import(x) => serde_json::to_value(x),
            Reply::Snapshot(x) => serde_json::to_value(x),
            Reply::Transcript(x) => serde_json::to_value(x),
        };
        v.unwrap_or(serde_json::Value::Null)
    }

    /// A socket answer's payload, read as the reply to `req`.
    pub fn decode(req: &Request, data: serde_json::Value) -> Result<Reply, serde_json::Error> {
        use serde_json::from_value as v;
        Ok(match req {
            Request::Status => Reply::Status(v(data)?),
            Request::Connections { .. } | Request::History { .. } => Reply::Streams(v(data)?),
            Request::Close { .. } | Request::Reload | Request::Watch { .. } | Request::Subscribe | Request::BlacklistExport => {
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
            Request::BlacklistImport { .. } => Reply::Import(v(data)?),
            Request::Snapshot => Reply::Snapshot(v(data)?),
            Request::Transcript { .. } => Reply::Transcript(v(data)?),
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

impl From<Result<Reply, String>> for Response {
    fn from(r: Result<Reply, String>) -> Response {
        match r {
            Ok(reply) => Response { ok: true, data: Some(reply.to_json()), error: None },
            Err(e) => Response::err(e),
        }
    }
}

fn text(s: impl Into<String>) -> Result<Reply, String> {
    Ok(Reply::Text(s.into()))
}

/// Longest request line accepted.
const MAX_LINE: usize = 64 * 1024;

/// Serve the control socket at `server.control_socket` for as long as the engine runs.
pub fn start(engine: &mut crate::engine::Engine) -> Result<(), crate::engine::EngineError> {
    let shared = engine.shared.clone();
    let path = shared.settings.control_socket.clone();
    let l = bind(&path).map_err(|err| crate::engine::EngineError::Control { path: path.display().to_string(), err })?;
    engine.spawn(serve(shared, l));
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

pub async fn serve(shared: Arc<Shared>, listener: UnixListener) {
    loop {
        let accepted = tokio::select! {
            _ = shared.shutdown.cancelled() => return,
            a = listener.accept() => a,
        };
        match accepted {
            Ok((stream, _)) => {
                let who = peer_user(&stream);
                shared.tasks.spawn(client(shared.clone(), stream, who));
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

async fn client(shared: Arc<Shared>, stream: UnixStream, who: String) {
    let mut watching: Vec<String> = Vec::new();
    tokio::select! {
        _ = client_loop(&shared, stream, &who, &mut watching) => {}
        _ = shared.shutdown.cancelled() => {}
    }
    for id in watching {
        if let Some(e) = shared.table.get(&id) {
            e.watch(false);
        }
    }
}

/// One request line (JSON) as read from the socket.
pub fn parse_request(line: &[u8]) -> Result<Request, serde_json::Error> {
    serde_json::from_slice(line.trim_ascii())
}

async fn client_loop(shared: &Arc<Shared>, stream: UnixStream, who: &str, watching: &mut Vec<String>) {
    let (r, mut w) = stream.into_split();
    let mut lines = BufReader::new(r);
    let mut line = String::new();
    let shared = shared.clone();
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
        let req: Request = match parse_request(line.as_bytes()) {
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
            if write_json(&mut w, &Response::from(text("subscribed"))).await.is_err() {
                return;
            }
            loop {
                match rx.recv().await {
                    Ok(ev) => {
                        if write_json(&mut w, &ev).await.is_err() {
                            return;
                        }
                    }
                    Err(crate::events::bus::RecvError::Lagged(n)) => {
                        // Lossy by design: tell the client so it can resynchronise from a snapshot.
                        if write_json(&mut w, &serde_json::json!({"event": "lagged", "missed": n})).await.is_err() {
                            return;
                        }
                    }
                    Err(_) => return,
                }
            }
        }
        if let Request::Watch { id, on } = &req {
            let resp = match shared.table.get(id) {
                Some(e) => {
                    if *on && !watching.contains(id) {
                        e.watch(true);
                        watching.push(id.clone());
                    } else if !*on && watching.contains(id) {
                        e.watch(false);
                        watching.retain(|x| x != id);
                    }
                    Response::from(text("ok"))
                }
                None => Response::err(format!("no live stream with id {id}")),
            };
            if write_json(&mut w, &resp).await.is_err() {
                return;
            }
            continue;
        }
        let resp = Response::from(handle(&shared, req, who).await);
        if write_json(&mut w, &resp).await.is_err() {
            return;
        }
    }
}

async fn handle(shared: &Arc<Shared>, req: Request, who: &str) -> Result<Reply, String> {
    use crate::domain::Domain;
    use crate::policy::{Change, DomainState, Mode};
    let parse = |d: &str| Domain::parse(d).map_err(|e| format!("{d:?} is not a valid domain: {e}"));
    let change = |domain: String, change: Change, reason: Option<String>| {
        let shared = shared.clone();
        let who = who.to_owned();
        async move {
            let d = match Domain::parse(&domain) {
                Ok(d) => d,
                Err(e) => return Err(format!("{domain:?} is not a valid domain: {e}")),
            };
            if shared.is_server_domain(&d) {
                return Err(format!("{d} is hosted here; policy applies to remote domains"));
            }
            match engine::change_domain(&shared, &d, change, &who, reason.as_deref()).await {
                Ok((record, changed, closed_streams)) => Ok(Reply::Change(Box::new(ChangeReport { record, changed, closed_streams }))),
                Err(e) => Err(format!("not saved (the previous policy stays in force): {e}")),
            }
        }
    };
    match req {
        Request::Status => Ok(Reply::Status(Box::new(engine::status(shared)))),
        Request::Connections { closed } => Ok(Reply::Streams(shared.table.snapshots(closed))),
        Request::Close { id } => {
            if engine::close_stream(shared, &id, "closed by the operator (ctl close)") {
                text(format!("closing stream {id}"))
            } else {
                Err(format!("no live stream with id {id} (see `drawbridge ctl connections`)"))
            }
        }
        Request::Probe { domain, from } => Ok(Reply::Probe(Box::new(engine::probe(shared, &domain, from.as_deref()).await))),
        Request::Verifications { domain, limit } => {
            shared.outcomes_for(domain.as_deref(), limit.unwrap_or(50)).map(Reply::Outcomes).map_err(|e| e.to_string())
        }
        Request::History { domain, limit } => {
            shared.store.history(domain.as_deref(), limit.unwrap_or(50)).map(Reply::Streams).map_err(|e| e.to_string())
        }
        Request::Approve { domain, reason } => change(domain, Change::Approve, reason).await,
        Request::Block { domain, for_secs, reason } => {
            let expires_ms = for_secs.map(|s| crate::events::now_ms() + s * 1000);
            change(domain, Change::Block { expires_ms }, reason).await
        }
        Request::Blacklist { domain, reason } => {
            if reason.trim().is_empty() {
                return Err("a blacklist entry needs a reason (--reason)".into());
            }
            change(domain, Change::Blacklist { source: "operator".into() }, Some(reason)).await
        }
        Request::Unblock { domain } => change(domain, Change::Unblock, None).await,
        Request::Mode { mode } => match Mode::parse(&mode) {
            Some(m) => match engine::change_mode(shared, m, who).await {
                Ok(closed_streams) => Ok(Reply::Mode(ModeReport { mode: m.as_str().to_owned(), closed_streams })),
                Err(e) => Err(format!("not saved (the previous policy stays in force): {e}")),
            },
            None => Err(format!("{mode:?} is not a mode: open, approval or allowlist")),
        },
        Request::Pending => Ok(Reply::Domains(shared.policy.records(Some(DomainState::Pending)))),
        Request::Domains { state } => match state.as_deref().map(|s| DomainState::parse(s).ok_or(s)) {
            Some(Err(s)) => Err(format!("{s:?} is not a state: unknown, pending, approved, blocked, blacklisted")),
            Some(Ok(st)) => Ok(Reply::Domains(shared.policy.records(Some(st)))),
            None => Ok(Reply::Domains(shared.policy.records(None))),
        },
        Request::Domain { domain } => {
            let d = parse(&domain)?;
            let verdict = match shared.policy.verdict(&d) {
                crate::policy::Verdict::Allow => "allowed to federate".to_owned(),
                crate::policy::Verdict::Hold => "held until approved (policy mode approval)".to_owned(),
                crate::policy::Verdict::Refuse(why) => format!("refused: {why}"),
            };
            let store = &shared.store;
            let report = (|| -> Result<DomainReport, crate::store::StoreError> {
                Ok(DomainReport {
                    domain: d.to_string(),
                    record: shared.policy.record(d.as_str()),
                    verdict,
                    outcomes: shared.outcomes_for(Some(d.as_str()), 10)?,
                    streams: store.history(Some(d.as_str()), 10)?,
                    policy_log: store.policy_log(Some(d.as_str()), 10)?,
                })
            })();
            report.map(|r| Reply::Domain(Box::new(r))).map_err(|e| e.to_string())
        }
        Request::BlacklistImport { text: list, source, dry_run } => {
            let source = source.unwrap_or_else(|| "import".into());
            match engine::import_blacklist(shared, &list, &source, who, dry_run).await {
                Ok(r) => Ok(Reply::Import(Box::new(r))),
                Err(e) => Err(format!("not saved (the previous policy stays in force): {e}")),
            }
        }
        Request::BlacklistExport => text(crate::policy::export_blacklist(&shared.policy.records(Some(DomainState::Blacklisted)))),
        Request::Snapshot => Ok(Reply::Snapshot(Box::new(snapshot(shared)))),
        Request::Reload => shared.reload_tls().map(Reply::Text),
        Request::Transcript { id } => match shared.table.transcript(&id) {
            Some(t) => Ok(Reply::Transcript(t)),
            None => Err(format!("no stream with id {id} (live or recently closed)")),
        },
        Request::Subscribe | Request::Watch { .. } => Err("handled by the connection loop".into()),
    }
}

/// A request from the in-process dashboard (no socket; `Watch` applies directly).
pub async fn handle_local(shared: &Arc<Shared>, req: Request, who: &str) -> Result<Reply, String> {
    if let Request::Watch { id, on } = &req {
        return match shared.table.get(id) {
            Some(e) => {
                e.watch(*on);
                text("ok")
            }
            None => Err(format!("no live stream with id {id}")),
        };
    }
    handle(shared, req, who).await
}

pub fn snapshot(shared: &Shared) -> Snapshot {
    Snapshot {
        status: engine::status(shared),
        connections: shared.table.snapshots(true),
        domains: shared.policy.records(None),
        outcomes: shared.outcomes_for(None, 500).unwrap_or_default(),
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
