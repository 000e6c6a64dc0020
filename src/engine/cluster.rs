//! Several nodes on one shared store (issue 20): this node follows the policy changes the
//! others make. A change another node's operator made takes effect here as a local one
//! would: the live policy, the streams it now refuses closed, the held ones re-judged (the
//! policy's generation wakes them), the dashboard told.

use std::sync::Arc;
use std::time::Duration;

use super::{Shared, commands};
use crate::events::Event;

/// Apply the other nodes' changes as their notices arrive (coalesced: a burst of notices is
/// one read). A read that fails is retried after a pause; its notices are kept.
pub(super) async fn follow(shared: Arc<Shared>) {
    let Some(pg) = shared.store.postgres() else { return };
    loop {
        tokio::select! {
            _ = shared.shutdown.cancelled() => return,
            _ = pg.noticed() => {}
        }
        match pg.take_changes().await {
            Ok(changes) => {
                let before = shared.policy.mode();
                let records = shared.policy.apply_remote(changes.mode, &changes.decisions);
                if records.is_empty() && changes.mode.is_none_or(|m| m == before) {
                    continue;
                }
                if let Some(m) = changes.mode.filter(|m| *m != before) {
                    tracing::info!("another node changed the mode to {}", m.as_str());
                    let _ = shared.events.send(Event::ModeChanged { mode: m.as_str().to_owned() });
                }
                for record in records {
                    tracing::info!("another node changed {}: now {}", crate::text::escape(&record.domain), record.state.as_str());
                    let _ = shared.events.send(Event::DomainChanged { record });
                }
                commands::enforce(&shared);
            }
            Err(e) => {
                tracing::warn!("cluster: the other nodes' policy changes could not be read: {e}; retrying");
                tokio::select! {
                    _ = shared.shutdown.cancelled() => return,
                    _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                }
            }
        }
    }
}
