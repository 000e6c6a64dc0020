//! A scrape of the running engine: what [`crate::metrics::encode`] needs, read when
//! Prometheus (or `ctl metrics`) asks — never on the stanza path.

use super::Shared;
use crate::metrics::{Process, Scrape};

/// The exposition, in the OpenMetrics text format.
pub(super) fn render(shared: &Shared) -> String {
    let (streams, live_stanzas, live_bytes) = shared.table.scrape();
    let (queued, queued_max) = shared.router.queued();
    let rtbl = shared
        .settings
        .rtbl
        .iter()
        .map(|f| {
            let n = shared.store.rtbl_status(&f.key()).ok().flatten().map_or(0, |s| s.entries as u64);
            ((f.service.clone(), f.node.clone()), n)
        })
        .collect();
    let per_domain = per_domain(shared);
    let warn = shared.settings.certs.warn_before;
    let mut not_afters = Vec::new();
    shared.policy.for_each_record(|r| not_afters.extend(r.cert.as_ref().map(|c| c.not_after_s)));
    let remote_certs = super::certs::remote_counts(&not_afters, crate::events::now_s(), warn);
    let local_certs = super::certs::local(shared).into_iter().filter_map(|c| Some((c.certificate, c.not_after_s?))).collect();
    crate::metrics::encode(
        shared.table.metrics(),
        &Scrape {
            streams,
            live_stanzas,
            live_bytes,
            queued,
            queued_max,
            rtbl,
            per_domain,
            limit_refusals: crate::limits::refusals(),
            decisions: shared.policy.decisions(),
            stanza_errors: crate::proto::stanza::errors_built(),
            remote_certs,
            local_certs,
            store: {
                let st = shared.store.status();
                (st.reachable, st.backlog as u64, st.dropped)
            },
            process: Process::read(),
        },
    )
}

/// `metrics.per_domain`: each domain's stanzas, (in, out): the recorded ones of its closed
/// streams and the live streams' counters.
fn per_domain(shared: &Shared) -> Vec<(String, (u64, u64))> {
    let wanted = &shared.settings.metrics.per_domain;
    if wanted.is_empty() {
        return Vec::new();
    }
    let mut out: Vec<(String, (u64, u64))> = wanted
        .iter()
        .map(|d| {
            let rec = shared.policy.record(d.as_str());
            (d.to_string(), rec.map_or((0, 0), |r| (r.stanzas_in, r.stanzas_out)))
        })
        .collect();
    for s in shared.table.snapshots(false) {
        let Some(remote) = s.remote.as_deref() else { continue };
        if let Some((_, (i, o))) = out.iter_mut().find(|(d, _)| d == remote) {
            *i += s.stanzas_in;
            *o += s.stanzas_out;
        }
    }
    out
}
