//! How the dashboard reaches the engine: its [`EngineHandle`] in the same process, or the
//! control socket (`drawbridge attach`). Both carry the same requests, replies and events.

use std::path::PathBuf;

use tokio::sync::mpsc;

use crate::control::{Connection, Delivered, Events};
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
    Socket { path: PathBuf, conn: Connection },
}

impl Client {
    pub fn in_process(engine: EngineHandle) -> Client {
        let who = std::env::var("USER").map(|u| format!("{u} (dashboard)")).unwrap_or_else(|_| "dashboard".into());
        Client::InProcess(engine.acting_as(who))
    }

    pub fn socket(path: PathBuf) -> Client {
        Client::Socket { conn: Connection::new(path.clone()), path }
    }

    /// The engine's typed answer, or why there is none (in words, for the footer).
    pub async fn request(&self, req: Request) -> Result<Reply, String> {
        match self {
            Client::InProcess(engine) => engine.execute(req).await.map_err(|e| e.to_string()),
            Client::Socket { conn, .. } => conn.request(&req).await.map_err(|e| e.to_string()),
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
                let mut events = Events::subscribe(path).await.map_err(|e| e.to_string())?;
                tokio::spawn(async move {
                    loop {
                        let item = match events.next().await {
                            Some(Delivered::Event(ev)) => Incoming::Event(ev),
                            Some(Delivered::Lagged) => Incoming::Resync,
                            None => Incoming::Gone("the server closed the control connection".into()),
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
