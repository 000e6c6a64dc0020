//! [`EngineHandle`]: the one door into a running engine. Everything an operator can do goes
//! through [`EngineHandle::execute`]; what happens arrives through [`EngineHandle::subscribe`].

use std::sync::Arc;

use super::Shared;
use super::api::{EngineError, Listening, ProbeReport, Reply, Request, Snapshot, Status};
use super::commands;
use crate::config::Settings;
use crate::events::{ConnSnapshot, TranscriptLine, VerificationOutcome, bus};

/// A cheap, cloneable handle on the running engine, acting for one operator.
#[derive(Clone)]
pub struct EngineHandle {
    pub(super) shared: Arc<Shared>,
    /// Who the policy log names for the changes made through this handle.
    operator: Arc<str>,
}

impl EngineHandle {
    pub(super) fn new(shared: Arc<Shared>) -> EngineHandle {
        EngineHandle { shared, operator: "engine".into() }
    }

    /// The same engine, acting for `who` (a control socket's peer user, the dashboard's).
    pub fn acting_as(&self, who: impl Into<String>) -> EngineHandle {
        EngineHandle { shared: self.shared.clone(), operator: who.into().into() }
    }

    /// Who this handle acts for.
    pub fn operator(&self) -> &str {
        &self.operator
    }

    /// Run one operator request.
    pub async fn execute(&self, req: Request) -> Result<Reply, EngineError> {
        commands::execute(&self.shared, req, &self.operator).await
    }

    /// The engine's events: first the state now, then every change after it. Lossy: a
    /// subscriber that falls behind is told (`Lagged`) and should take a new snapshot.
    pub fn subscribe(&self) -> Subscription {
        // Subscribed before the snapshot is taken: no change falls between the two.
        let events = self.shared.events.subscribe();
        Subscription { snapshot: commands::snapshot(&self.shared), events }
    }

    /// The settings the engine runs with (read-only).
    pub fn settings(&self) -> &Settings {
        &self.shared.settings
    }

    /// Where the engine listens, as bound.
    pub fn listening(&self) -> &Listening {
        &self.shared.listening
    }

    /// Resolves when the engine begins to shut down.
    pub async fn stopped(&self) {
        self.shared.shutdown.cancelled().await
    }

    /// Run a task that the engine's shutdown waits for (a control client: it holds the
    /// handle, and so the store, whose lock must be free when shutdown returns).
    pub fn spawn_task(&self, task: impl std::future::Future<Output = ()> + Send + 'static) {
        self.shared.tasks.spawn(task);
    }

    /// `Request::Status`, typed.
    pub fn status(&self) -> Status {
        commands::status(&self.shared)
    }

    /// `Request::Connections`, typed.
    pub fn connections(&self, include_closed: bool) -> Vec<ConnSnapshot> {
        self.shared.table.snapshots(include_closed)
    }

    /// `Request::Probe`, typed.
    pub async fn probe(&self, domain: &str, from: Option<&str>) -> ProbeReport {
        commands::probe(&self.shared, domain, from).await
    }

    /// `Request::Verifications` for every domain (the newest 1000), typed.
    pub fn outcomes(&self) -> Vec<VerificationOutcome> {
        self.shared.recorder.outcomes()
    }

    /// `Request::Transcript`, typed: a live or recently closed stream's transcript.
    pub fn transcript(&self, id: &str) -> Option<Vec<TranscriptLine>> {
        self.shared.table.transcript(id)
    }

    /// Close a live stream with this reason (as `Request::Close` does); false when none has
    /// this id.
    pub fn close_stream(&self, id: &str, reason: &str) -> bool {
        commands::close_stream(&self.shared, id, reason)
    }
}

/// [`EngineHandle::subscribe`]: the state when it began, then the changes (it derefs to the
/// event receiver).
pub struct Subscription {
    pub snapshot: Snapshot,
    events: bus::Receiver,
}

impl Subscription {
    /// The changes only.
    pub fn into_events(self) -> bus::Receiver {
        self.events
    }
}

impl std::ops::Deref for Subscription {
    type Target = bus::Receiver;
    fn deref(&self) -> &bus::Receiver {
        &self.events
    }
}

impl std::ops::DerefMut for Subscription {
    fn deref_mut(&mut self) -> &mut bus::Receiver {
        &mut self.events
    }
}
