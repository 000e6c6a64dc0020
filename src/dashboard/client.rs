//! How the dashboard reaches the engine: its [`EngineHandle`] in the same process, or the
//! control socket (`drawbridge attach`). Both carry the same requests, replies and events.

use std::path::PathBuf;

use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::UnixStream;
use tokio::net::unix::{OwnedReadHalf, OwnedWriteHalf};
use tokio::sync::{Mutex, mpsc};

use crate::control::Response;
use crate::engine::{EngineHandle, Reply, Request, Snapshot};
use crate::events::Event;

/// What arrives from the engine.
#[derive(Debug)]
pub enum Incoming {
    Event(Box<Event>),
    /// Events were lost (the dashboard lagged): reload a snapshot.
    Resync,
    /// The engine went away.
    Gone(String),
}

pub enum Client {
    InProcess(EngineHandle),
    Socket { path: PathBuf, conn: Mutex<Option<(BufReader<OwnedReadHalf>, OwnedWriteHalf)>> },
}

impl Client {
    pub fn in_process(engine: EngineHandle) -> Client {
        let who = std::env::var("USER").map(|u| format!("{u} (dashboard)")).unwrap_or_else(|_| "dashboard".into());
        Client::InProcess(engine.acting_as(who))
    }

    pub fn socket(path: PathBuf) -> Client {
        Client::Socket { path, conn: Mutex::new(None) }
    }

    /// The engine's typed answer: in the process directly, over the socket decoded from
    /// the JSON line.
    pub async fn request(&self, req: Request) -> Result<Reply, String> {
        match self {
            Client::InProcess(engine) => engine.execute(req).await.map_err(|e| e.to_string()),
            Client::Socket { path, conn } => {
                let mut guard = conn.lock().await;
                for attempt in 0..2 {
                    if guard.is_none() {
                        match UnixStream::connect(path).await {
                            Ok(s) => {
                                let (r, w) = s.into_split();
                                *guard = Some((BufReader::new(r), w));
                            }
                            Err(e) => return Err(format!("cannot reach drawbridge at {}: {e}", path.display())),
                        }
                    }
                    let (r, w) = guard.as_mut().expect("connected");
                    let mut line = serde_json::to_string(&req).unwrap_or_default();
                    line.push('\n');
                    let mut answer = String::new();
                    let ok = w.write_all(line.as_bytes()).await.is_ok() && r.read_line(&mut answer).await.map(|n| n > 0).unwrap_or(false);
                    if ok && let Ok(resp) = serde_json::from_str::<Response>(&answer) {
                        return match (resp.ok, resp.data, resp.error) {
                            (true, data, _) => Reply::decode(&req, data.unwrap_or_default()).map_err(|e| format!("unexpected answer: {e}")),
                            (false, _, e) => Err(e.unwrap_or_else(|| "failed".into())),
                        };
                    }
                    *guard = None;
                    if attempt == 1 {
                        break;
                    }
                }
                Err("the control connection broke".into())
            }
        }
    }

    pub async fn snapshot(&self) -> Result<Snapshot, String> {
        match self.request(Request::Snapshot).await? {
            Reply::Snapshot(s) => Ok(*s),
            other => Err(format!("not a snapshot: {other:?}")),
        }
    }

    /// The engine's events, forwarded by a task of their own.
    pub async fn events(&self) -> Result<mpsc::Receiver<Incoming>, String> {
        let (tx, rx) = mpsc::channel(4096);
        match self {
            Client::InProcess(engine) => {
                let mut sub = engine.subscribe().into_events();
                tokio::spawn(async move {
                    loop {
                        let item = match sub.recv().await {
                            Ok(ev) => Incoming::Event(Box::new(ev)),
                            Err(crate::events::bus::RecvError::Lagged(_)) => Incoming::Resync,
                            Err(_) => Incoming::Gone("engine stopped".into()),
                        };
                        let gone = matches!(item, Incoming::Gone(_));
                        if tx.send(item).await.is_err() || gone {
                            return;
                        }
                    }
                });
            }
            Client::Socket { path, .. } => {
                let s = UnixStream::connect(path)
                    .await
                    .map_err(|e| format!("cannot reach drawbridge at {}: {e} (is `drawbridge serve` running?)", path.display()))?;
                let (r, mut w) = s.into_split();
                w.write_all(b"{\"cmd\":\"subscribe\"}\n").await.map_err(|e| e.to_string())?;
                let mut lines = BufReader::new(r).lines();
                tokio::spawn(async move {
                    let _keep = w;
                    let _ = lines.next_line().await; // the "subscribed" answer
                    loop {
                        let item = match lines.next_line().await {
                            Ok(Some(l)) => match serde_json::from_str::<Event>(&l) {
                                Ok(ev) => Incoming::Event(Box::new(ev)),
                                Err(_) if l.contains("\"lagged\"") => Incoming::Resync,
                                Err(_) => continue,
                            },
                            Ok(None) | Err(_) => Incoming::Gone("the server closed the control connection".into()),
                        };
                        let gone = matches!(item, Incoming::Gone(_));
                        if tx.send(item).await.is_err() || gone {
                            return;
                        }
                    }
                });
            }
        }
        Ok(rx)
    }
}
