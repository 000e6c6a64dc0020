//! Several nodes on one shared store (issue 20): this node follows the policy changes the
//! others make, and shows itself to them. A change another node's operator made takes
//! effect here as a local one would: the live policy, the streams it now refuses closed, the
//! held ones re-judged (the policy's generation wakes them), the dashboard told. Every
//! `[cluster] heartbeat` this node publishes its live streams and its heartbeat
//! ([`publish`]): the cluster's view (`ctl connections --cluster`, `ctl status`, the
//! dashboard) is made of what the nodes publish.

use std::sync::Arc;
use std::time::Duration;

use super::{Shared, commands};
use crate::events::{Event, now_ms};

/// Apply the other nodes' changes as their notices arrive (coalesced: a burst of notices is
/// one read). A read that fails is retried after a pause; its notices are kept.
pub(super) async fn follow(shared: Arc<Shared>) {
    let Some(pg) = shared.store.postgres() else { return };
    loop {
        tokio::select! {
            _ = shared.shutdown.cancelled() => return,
            _ = pg.noticed() => {}
        }
        // Read and applied between this node's own changes (see `Policy::between_changes`).
        let applied = shared
            .policy
            .between_changes(async {
                let changes = pg.take_changes().await?;
                let before = shared.policy.mode();
                let records = shared.policy.apply_remote(changes.mode, &changes.decisions);
                Ok::<_, crate::store::StoreError>((before, changes.mode, records))
            })
            .await;
        match applied {
            Ok((before, mode, records)) => {
                if records.is_empty() && mode.is_none_or(|m| m == before) {
                    continue;
                }
                if let Some(m) = mode.filter(|m| *m != before) {
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

/// Every `cluster.heartbeat`: this node's live streams (those that changed) and its
/// heartbeat into the shared store, and the nodes read back for `ctl status`. Off the
/// stanza path; a publish the database cannot take is skipped, not queued (the next one
/// writes everything again). Ends at shutdown (which marks the node stopped), or when a test
/// silences the node ([`Shared::heartbeat`]).
pub(super) async fn publish(shared: Arc<Shared>) {
    if shared.store.postgres().is_none() {
        return;
    }
    let cluster = &shared.settings.store.cluster;
    let me = crate::store::NodeInfo {
        version: env!("CARGO_PKG_VERSION").into(),
        listen: shared.listening.federation.iter().map(|a| a.to_string()).collect(),
        started_ms: now_ms().saturating_sub(shared.started.elapsed().as_millis() as u64),
    };
    let mut tick = tokio::time::interval(cluster.heartbeat);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    let mut failing = false;
    loop {
        tokio::select! {
            _ = shared.shutdown.cancelled() => return,
            _ = shared.heartbeat.cancelled() => return,
            _ = tick.tick() => {}
        }
        match shared.store.publish(&shared.table.snapshots(false), &me).await {
            Ok(()) if failing => {
                tracing::info!("cluster: this node's streams and heartbeat are published again");
                failing = false;
            }
            Ok(()) => {}
            Err(e) if !failing => {
                tracing::warn!(
                    "cluster: this node's streams and heartbeat could not be published: {e}; the other nodes take it for gone after their cluster.node_timeout; trying again every {}",
                    humantime::format_duration(cluster.heartbeat)
                );
                failing = true;
            }
            Err(_) => {}
        }
    }
}
