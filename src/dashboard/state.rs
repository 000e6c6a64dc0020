//! The dashboard's model: built from a snapshot, kept current by events. Indexes per view
//! are rebuilt only when the data changed, never per frame.

use std::collections::{BTreeMap, HashMap, VecDeque};

use crate::engine::Snapshot;
use crate::engine::Status;
use crate::events::{ConnSnapshot, ConnState, Event, LiveStreams, TranscriptLine, VerificationOutcome};
use crate::policy::DomainState;
use crate::store::DomainRecord;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum View {
    Connections,
    Domains,
    Verifications,
    Transcript,
    /// The real-time blocklists followed: each feed's state, and the domains listed.
    Rtbl,
}

impl View {
    pub const ALL: [View; 5] = [View::Connections, View::Domains, View::Verifications, View::Transcript, View::Rtbl];

    pub fn index(self) -> usize {
        View::ALL.iter().position(|v| *v == self).unwrap_or(0)
    }

    pub fn title(self) -> &'static str {
        match self {
            View::Connections => "Connections",
            View::Domains => "Domains",
            View::Verifications => "Verifications",
            View::Transcript => "Transcript",
            View::Rtbl => "RTBL",
        }
    }
}

/// Order of the connections view.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SortBy {
    /// Live first, newest first; then closed.
    Age,
    Remote,
    State,
    Traffic,
}

impl SortBy {
    pub fn next(self) -> SortBy {
        match self {
            SortBy::Age => SortBy::Remote,
            SortBy::Remote => SortBy::State,
            SortBy::State => SortBy::Traffic,
            SortBy::Traffic => SortBy::Age,
        }
    }

    pub fn label(self) -> &'static str {
        match self {
            SortBy::Age => "newest",
            SortBy::Remote => "remote",
            SortBy::State => "state",
            SortBy::Traffic => "traffic",
        }
    }
}

/// A question the dashboard is asking the operator.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Prompt {
    /// `DURATION REASON` for a block (both optional).
    Block {
        domain: String,
        input: String,
    },
    Blacklist {
        domain: String,
        input: String,
    },
    /// An optional reason for keeping a listed domain's block as the operator's.
    Keep {
        domain: String,
        input: String,
    },
    ConfirmClose {
        id: String,
    },
    /// A policy change's dry run, shown before the operator applies it (y) or not
    /// ([`Prompt::confirm`]).
    Confirm {
        change: crate::engine::PolicyChange,
        preview: Box<crate::engine::PreviewReport>,
        /// The preview's lines, escaped, made once when the prompt opens: a redraw shows
        /// the slice on screen.
        lines: std::sync::Arc<[(crate::engine::PreviewLine, String)]>,
        /// The first line of the preview shown (↑ ↓ PgUp PgDn scroll).
        scroll: usize,
    },
    Filter {
        input: String,
    },
}

impl Prompt {
    /// The confirmation of `change` after its dry run, its lines made (and escaped: they
    /// carry peers' names and reasons) once.
    pub fn confirm(change: crate::engine::PolicyChange, preview: Box<crate::engine::PreviewReport>) -> Prompt {
        let lines = preview.lines().into_iter().map(|(kind, text)| (kind, crate::text::escape(&text).into_owned())).collect();
        Prompt::Confirm { change, preview, lines, scroll: 0 }
    }
}

/// Closed streams kept visible (dimmed) in the connections view.
const KEEP_CLOSED: usize = 200;
const KEEP_OUTCOMES: usize = 2000;
const SPARK_POINTS: usize = 30;

/// Transcript lines the view keeps while following a stream.
pub const TRANSCRIPT_VIEW_LINES: usize = 5000;
/// Bytes of one indented transcript line the view keeps.
pub const TRANSCRIPT_VIEW_BYTES: usize = 1 << 20;

/// A row of the connections view: a stream of this node (by id), or one another node
/// published (an index into [`Model::others`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ConnRow {
    Local(String),
    Other(usize),
}

pub struct Model {
    pub status: Option<Status>,
    pub conns: HashMap<String, ConnSnapshot>,
    /// A shared store: the other nodes' live streams, as they last published them (read
    /// every `cluster.heartbeat` while every node's streams are shown).
    pub others: Vec<crate::store::NodeStream>,
    /// Why the other nodes' streams could not be read last time.
    pub cluster_error: Option<String>,
    /// The connections view shows every node's streams (a shared store), not only this
    /// node's (`n` toggles).
    pub all_nodes: bool,
    closed_order: VecDeque<String>,
    pub domains: BTreeMap<String, DomainRecord>,
    pub outcomes: VecDeque<VerificationOutcome>,
    /// The real-time blocklist feeds' latest status, in configuration order of arrival.
    pub feeds: Vec<crate::rtbl::FeedStatus>,
    /// The feeds' entries as last asked for (`Request::Rtbl`, and in the snapshot).
    pub rtbl: crate::engine::RtblReport,
    /// The domains listed now, each with its listings in words: the "listed" marks.
    listed: HashMap<String, Vec<String>>,
    /// A feed's entries changed since [`Model::rtbl`] was read: ask again.
    pub rtbl_stale: bool,
    /// Bytes per second in+out per stream, newest last (sparklines).
    pub traffic: HashMap<String, VecDeque<u64>>,
    last_bytes: HashMap<String, u64>,
    pub transcript_id: Option<String>,
    pub transcript: Vec<TranscriptLine>,
    pub follow: bool,
    pub reveal: bool,
    pub transcript_scroll: usize,
    pub view: View,
    /// Selected row per view.
    pub selected: [usize; 5],
    pub filter: String,
    pub sort: SortBy,
    pub prompt: Option<Prompt>,
    pub message: Option<String>,
    pub show_help: bool,
    /// A domain's history, shown over the view (Enter in Domains; any key closes).
    pub domain_report: Option<crate::engine::DomainReport>,
    /// Why a domain is treated as it is (`e`), shown over the view; any key closes.
    pub explain: Option<crate::engine::ExplainReport>,
    pub no_color: bool,
    /// Something changed since the last frame.
    pub dirty: bool,
    conn_index: Vec<ConnRow>,
    domain_index: Vec<String>,
    /// The RTBL view's rows: (feed, entry) indexes into [`Model::rtbl`], listed first.
    rtbl_index: Vec<(usize, usize)>,
    rtbl_index_stale: bool,
    /// Connections index out of date.
    index_stale: bool,
    /// Domains index out of date (separate: 100 000 domains change rarely).
    domains_stale: bool,
    counts: Option<Counts>,
    /// Each domain's live streams (the Domains view), kept until a stream changes.
    live: Option<HashMap<String, LiveStreams>>,
}

/// What the header and titles count, kept until the data changes (not recounted per frame).
#[derive(Debug, Clone, Copy, Default)]
pub struct Counts {
    pub live_in: usize,
    pub live_out: usize,
    pub closed: usize,
    pub pending: usize,
    pub blocked: usize,
    pub blacklisted: usize,
}

impl Model {
    pub fn new(no_color: bool) -> Model {
        Model {
            status: None,
            conns: HashMap::new(),
            others: Vec::new(),
            cluster_error: None,
            all_nodes: true,
            closed_order: VecDeque::new(),
            domains: BTreeMap::new(),
            outcomes: VecDeque::new(),
            feeds: Vec::new(),
            rtbl: Default::default(),
            listed: HashMap::new(),
            rtbl_stale: false,
            traffic: HashMap::new(),
            last_bytes: HashMap::new(),
            transcript_id: None,
            transcript: Vec::new(),
            follow: true,
            reveal: false,
            transcript_scroll: 0,
            view: View::Connections,
            selected: [0; 5],
            filter: String::new(),
            sort: SortBy::Age,
            prompt: None,
            message: None,
            show_help: false,
            domain_report: None,
            explain: None,
            no_color,
            dirty: true,
            conn_index: Vec::new(),
            domain_index: Vec::new(),
            rtbl_index: Vec::new(),
            rtbl_index_stale: true,
            index_stale: true,
            domains_stale: true,
            counts: None,
            live: None,
        }
    }

    pub fn counts(&mut self) -> Counts {
        if let Some(c) = self.counts {
            return c;
        }
        let mut c = Counts::default();
        for s in self.conns.values() {
            match (s.state, s.direction) {
                (ConnState::Closed, _) => c.closed += 1,
                (_, crate::events::Direction::In) => c.live_in += 1,
                (_, crate::events::Direction::Out) => c.live_out += 1,
            }
        }
        for d in self.domains.values() {
            match d.state {
                DomainState::Pending => c.pending += 1,
                DomainState::Blocked => c.blocked += 1,
                DomainState::Blacklisted => c.blacklisted += 1,
                _ => {}
            }
        }
        self.counts = Some(c);
        c
    }

    /// `domain`'s streams open now, each way (see [`LiveStreams`]); counted once per change
    /// of the streams, not per frame.
    pub fn live_streams(&mut self, domain: &str) -> LiveStreams {
        let conns = &self.conns;
        self.live.get_or_insert_with(|| LiveStreams::by_domain(conns.values())).get(domain).copied().unwrap_or_default()
    }

    /// (Re)build from a snapshot (at start, and after the event stream lagged).
    pub fn load(&mut self, s: Snapshot) {
        self.status = Some(s.status);
        self.conns.clear();
        self.closed_order.clear();
        for c in s.connections {
            if c.state == ConnState::Closed {
                self.closed_order.push_back(c.id.clone());
            }
            self.conns.insert(c.id.clone(), c);
        }
        self.domains = s.domains.into_iter().map(|d| (d.domain.clone(), d)).collect();
        self.outcomes = s.outcomes.into_iter().collect();
        self.set_rtbl(s.rtbl);
        self.index_stale = true;
        self.domains_stale = true;
        self.counts = None;
        self.live = None;
        self.dirty = true;
    }

    pub fn apply(&mut self, ev: Event) {
        self.dirty = true;
        if matches!(ev, Event::StreamOpened { .. } | Event::StreamUpdated { .. } | Event::StreamClosed { .. } | Event::DomainChanged { .. })
        {
            self.counts = None;
        }
        if matches!(
            ev,
            Event::StreamOpened { .. } | Event::StreamUpdated { .. } | Event::StreamClosed { .. } | Event::PairAuthorised { .. }
        ) {
            self.live = None;
        }
        match ev {
            Event::StreamOpened { stream } => {
                self.conns.insert(stream.id.clone(), stream);
                self.index_stale = true;
            }
            Event::StreamUpdated { stream } => {
                if stream.state != ConnState::Closed || !self.conns.contains_key(&stream.id) {
                    self.conns.insert(stream.id.clone(), stream);
                }
            }
            Event::PairAuthorised { id, local, remote, method } => {
                if let Some(c) = self.conns.get_mut(&id) {
                    match c.pairs.iter_mut().find(|p| p.local == local && p.remote == remote) {
                        Some(p) => {
                            p.status = crate::events::PairStatus::Valid;
                            p.method = method;
                        }
                        None => c.pairs.push(crate::events::PairInfo { local, remote, status: crate::events::PairStatus::Valid, method }),
                    }
                }
            }
            Event::Verification { outcome } => {
                self.outcomes.push_front(outcome);
                self.outcomes.truncate(KEEP_OUTCOMES);
            }
            Event::Counters { streams } => {
                for s in streams {
                    let total = s.bytes_in + s.bytes_out;
                    let prev = self.last_bytes.insert(s.id.clone(), total).unwrap_or(total);
                    let t = self.traffic.entry(s.id.clone()).or_default();
                    t.push_back(total.saturating_sub(prev));
                    if t.len() > SPARK_POINTS {
                        t.pop_front();
                    }
                    if let Some(c) = self.conns.get_mut(&s.id) {
                        c.stanzas_in = s.stanzas_in;
                        c.stanzas_out = s.stanzas_out;
                        c.bytes_in = s.bytes_in;
                        c.bytes_out = s.bytes_out;
                        c.last_activity_ms = crate::events::now_ms();
                    }
                }
            }
            Event::StreamClosed { stream } => {
                self.closed_order.push_back(stream.id.clone());
                self.conns.insert(stream.id.clone(), stream);
                while self.closed_order.len() > KEEP_CLOSED {
                    if let Some(old) = self.closed_order.pop_front() {
                        self.conns.remove(&old);
                        self.traffic.remove(&old);
                        self.last_bytes.remove(&old);
                    }
                }
                self.index_stale = true;
            }
            Event::DomainChanged { record } => {
                self.domains.insert(record.domain.clone(), record);
                self.domains_stale = true;
            }
            Event::ModeChanged { mode } => {
                if let Some(s) = self.status.as_mut() {
                    s.mode = mode;
                }
            }
            Event::Transcript { id, line } => {
                if self.transcript_id.as_deref() == Some(id.as_str()) {
                    self.push_transcript(line);
                }
            }
            Event::Feed { status } => {
                // Its entries changed (their number, or the time of the last change): the
                // entries are asked for again (the app does, at most once a second).
                let entries_changed =
                    |f: &crate::rtbl::FeedStatus| f.entries != status.entries || f.last_change_ms != status.last_change_ms;
                match self.feeds.iter_mut().find(|f| f.service == status.service && f.node == status.node) {
                    Some(f) => {
                        self.rtbl_stale |= entries_changed(f);
                        *f = status;
                    }
                    None => {
                        self.rtbl_stale = true;
                        self.feeds.push(status);
                    }
                }
            }
        }
    }

    /// The feeds' entries as the engine gave them (`Request::Rtbl`): the RTBL view and the
    /// "listed" marks. Their statuses replace those kept from events (the store has them
    /// before the event is sent).
    pub fn set_rtbl(&mut self, r: crate::engine::RtblReport) {
        self.feeds = r.feeds.iter().map(|f| f.status.clone()).collect();
        self.listed = r.listed();
        self.rtbl = r;
        self.rtbl_stale = false;
        self.rtbl_index_stale = true;
        self.dirty = true;
    }

    /// Where a certificate valid until `not_after_s` stands now against the server's
    /// `certs.warn_before` (its default until a server says: an older one does not).
    pub fn cert_expiry(&self, not_after_s: i64) -> crate::events::CertExpiry {
        let warn = match self.status.as_ref().map_or(0, |s| s.certs_warn_before_s) {
            0 => crate::config::CertsSettings::default().warn_before,
            s => std::time::Duration::from_secs(s),
        };
        crate::events::CertExpiry::classify(not_after_s, crate::events::now_s(), warn)
    }

    /// The listings of a domain in force now, in words (`listed by xmppbl.org: spam`); empty
    /// when none lists it.
    pub fn listings(&self, domain: &str) -> &[String] {
        self.listed.get(domain).map_or(&[], Vec::as_slice)
    }

    /// Whether a stream's remote domain (any of its pairs') is listed.
    pub fn stream_listed(&self, c: &ConnSnapshot) -> bool {
        !self.listed.is_empty()
            && (c.pairs.iter().any(|p| self.listed.contains_key(&p.remote))
                || c.remote.as_ref().is_some_and(|r| self.listed.contains_key(r)))
    }

    /// The RTBL view's rows: (feed, entry) indexes into [`Model::rtbl`], the entries in force
    /// first, then the retracted ones; filtered by domain.
    pub fn rtbl_rows(&mut self) -> &[(usize, usize)] {
        if self.rtbl_index_stale {
            let f = self.filter.to_lowercase();
            let mut rows: Vec<(bool, &str, usize, usize)> = Vec::new();
            for (i, feed) in self.rtbl.feeds.iter().enumerate() {
                for (j, e) in feed.entries.iter().enumerate() {
                    if f.is_empty() || e.domain.contains(&f) {
                        rows.push((e.retracted_ms.is_some(), e.domain.as_str(), i, j));
                    }
                }
            }
            rows.sort();
            self.rtbl_index = rows.into_iter().map(|(_, _, i, j)| (i, j)).collect();
            self.rtbl_index_stale = false;
        }
        &self.rtbl_index
    }

    /// The RTBL view's selected entry.
    pub fn selected_entry(&mut self) -> Option<&crate::store::RtblRecord> {
        let i = self.selected[View::Rtbl.index()];
        let (f, e) = *self.rtbl_rows().get(i)?;
        self.rtbl.feeds.get(f)?.entries.get(e)
    }

    /// Show a transcript line: indented for reading (the engine keeps the wire bytes), at
    /// most [`TRANSCRIPT_VIEW_LINES`] kept while following.
    pub fn push_transcript(&mut self, mut line: TranscriptLine) {
        if line.text.starts_with('<') {
            line.text = crate::xml::pretty::indent(&line.text, TRANSCRIPT_VIEW_BYTES);
        }
        if self.transcript.len() >= TRANSCRIPT_VIEW_LINES {
            self.transcript.remove(0);
        }
        self.transcript.push(line);
    }

    fn reindex(&mut self) {
        let f = self.filter.to_lowercase();
        if self.index_stale {
            let here = self.node().unwrap_or_default().to_lowercase();
            let mut conns: Vec<(ConnRow, &ConnSnapshot)> = self
                .conns
                .values()
                .filter(|c| f.is_empty() || conn_matches(c, &f) || (!here.is_empty() && here.contains(&f)))
                .map(|c| (ConnRow::Local(c.id.clone()), c))
                .collect();
            if self.all_nodes {
                conns.extend(
                    self.others
                        .iter()
                        .enumerate()
                        .filter(|(_, o)| f.is_empty() || conn_matches(&o.stream, &f) || o.node.to_lowercase().contains(&f))
                        .map(|(i, o)| (ConnRow::Other(i), &o.stream)),
                );
            }
            // Live streams first (newest first), then closed ones (most recently closed first).
            let closed_last = |a: &ConnSnapshot, b: &ConnSnapshot| (a.state == ConnState::Closed).cmp(&(b.state == ConnState::Closed));
            match self.sort {
                SortBy::Age => conns.sort_by(|(_, a), (_, b)| closed_last(a, b).then(b.opened_ms.cmp(&a.opened_ms))),
                SortBy::Remote => {
                    conns.sort_by(|(_, a), (_, b)| closed_last(a, b).then(a.remote.cmp(&b.remote)).then(b.opened_ms.cmp(&a.opened_ms)))
                }
                SortBy::State => conns.sort_by(|(_, a), (_, b)| a.state.as_str().cmp(b.state.as_str()).then(b.opened_ms.cmp(&a.opened_ms))),
                SortBy::Traffic => {
                    conns.sort_by(|(_, a), (_, b)| closed_last(a, b).then((b.bytes_in + b.bytes_out).cmp(&(a.bytes_in + a.bytes_out))))
                }
            }
            self.conn_index = conns.into_iter().map(|(row, _)| row).collect();
            self.index_stale = false;
        }
        if !self.domains_stale {
            return;
        }
        let mut doms: Vec<&DomainRecord> = self.domains.values().filter(|d| f.is_empty() || d.domain.contains(&f)).collect();
        // Pending approvals pinned at the top.
        doms.sort_by(|a, b| (b.state == DomainState::Pending).cmp(&(a.state == DomainState::Pending)).then(a.domain.cmp(&b.domain)));
        self.domain_index = doms.into_iter().map(|d| d.domain.clone()).collect();
        self.domains_stale = false;
    }

    pub fn cycle_sort(&mut self) {
        self.sort = self.sort.next();
        self.index_stale = true;
        self.dirty = true;
    }

    pub fn set_filter(&mut self, f: String) {
        self.filter = f;
        self.index_stale = true;
        self.domains_stale = true;
        self.rtbl_index_stale = true;
        self.selected = [0; 5];
        self.dirty = true;
    }

    pub fn conn_rows(&mut self) -> &[ConnRow] {
        self.reindex();
        &self.conn_index
    }

    /// A row's stream, and the other node that has it (`None`: this node's).
    pub fn conn(&self, row: &ConnRow) -> Option<(&ConnSnapshot, Option<&str>)> {
        match row {
            ConnRow::Local(id) => self.conns.get(id).map(|c| (c, None)),
            ConnRow::Other(i) => self.others.get(*i).map(|o| (&o.stream, Some(o.node.as_str()))),
        }
    }

    /// This node's name on a shared store (`[cluster] node`); `None` on its own store.
    pub fn node(&self) -> Option<&str> {
        self.status.as_ref().filter(|s| s.store.backend == "postgres").and_then(|s| s.store.node.as_deref())
    }

    /// Several nodes share the store: the connections view has a node column, `n` filters.
    pub fn clustered(&self) -> bool {
        self.node().is_some()
    }

    /// The other nodes' streams as read (`Request::Connections { cluster: true }`); this
    /// node's rows in it are left out (its own table is fresher).
    pub fn set_cluster(&mut self, r: crate::engine::ClusterConnections) {
        self.others = r.streams.into_iter().filter(|s| s.node != r.node).collect();
        self.cluster_error = r.store_error;
        self.index_stale = true;
        self.dirty = true;
    }

    /// The other nodes' streams could not be read: none shown (rather than old ones), and why.
    pub fn cluster_failed(&mut self, why: String) {
        self.others.clear();
        self.cluster_error = Some(why);
        self.index_stale = true;
        self.dirty = true;
    }

    /// `n`: every node's streams, or this node's only.
    pub fn toggle_nodes(&mut self) {
        self.all_nodes = !self.all_nodes;
        self.selected[View::Connections.index()] = 0;
        self.index_stale = true;
        self.dirty = true;
    }

    /// The other node that has the selected stream (`None`: this node's, or none selected).
    pub fn selected_node(&mut self) -> Option<String> {
        let i = self.selected[View::Connections.index()];
        match self.conn_rows().get(i)?.clone() {
            ConnRow::Local(_) => None,
            ConnRow::Other(j) => self.others.get(j).map(|o| o.node.clone()),
        }
    }

    pub fn domain_rows(&mut self) -> &[String] {
        self.reindex();
        &self.domain_index
    }

    pub fn outcome_rows(&self) -> Vec<&VerificationOutcome> {
        let f = self.filter.to_lowercase();
        self.outcomes.iter().filter(|o| f.is_empty() || o.remote.contains(&f) || format!("{:?}", o.result).to_lowercase() == f).collect()
    }

    pub fn row_count(&mut self) -> usize {
        match self.view {
            View::Connections => self.conn_rows().len(),
            View::Domains => self.domain_rows().len(),
            View::Verifications => self.outcome_rows().len(),
            View::Transcript => self.transcript.len(),
            View::Rtbl => self.rtbl_rows().len(),
        }
    }

    pub fn selected_conn(&mut self) -> Option<ConnSnapshot> {
        let i = self.selected[View::Connections.index()];
        let row = self.conn_rows().get(i)?.clone();
        self.conn(&row).map(|(c, _)| c.clone())
    }

    pub fn selected_domain(&mut self) -> Option<String> {
        match self.view {
            View::Domains => {
                let i = self.selected[View::Domains.index()];
                self.domain_rows().get(i).cloned()
            }
            View::Connections => self.selected_conn().and_then(|c| c.pairs.first().map(|p| p.remote.clone()).or(c.remote)),
            View::Verifications => {
                let i = self.selected[View::Verifications.index()];
                self.outcome_rows().get(i).map(|o| o.remote.clone())
            }
            View::Transcript => self.transcript_id.clone().and_then(|id| self.conns.get(&id).and_then(|c| c.remote.clone())),
            View::Rtbl => self.selected_entry().map(|e| e.domain.clone()),
        }
    }

    pub fn move_selection(&mut self, delta: isize) {
        let n = self.row_count();
        let v = self.view.index();
        if self.view == View::Transcript {
            self.follow = false;
            let max = n.saturating_sub(1) as isize;
            self.transcript_scroll = (self.transcript_scroll as isize + delta).clamp(0, max) as usize;
        } else if n == 0 {
            self.selected[v] = 0;
        } else {
            self.selected[v] = (self.selected[v] as isize + delta).clamp(0, n as isize - 1) as usize;
        }
        self.dirty = true;
    }

    pub fn pending_count(&mut self) -> usize {
        self.counts().pending
    }
}

fn conn_matches(c: &ConnSnapshot, f: &str) -> bool {
    c.remote.as_deref().is_some_and(|r| r.contains(f))
        || c.local.as_deref().is_some_and(|l| l.contains(f))
        || c.id.starts_with(f)
        || c.state.as_str() == f
        || c.pairs.iter().any(|p| p.remote.contains(f))
        // "internal" (gateway mode's internal link) and "component" filter by kind.
        || (!c.kind.is_federation() && kind_name(c.kind) == f)
}

/// The kind's name, as the filter and the badge use it.
pub fn kind_name(k: crate::events::StreamKind) -> &'static str {
    match k {
        crate::events::StreamKind::Federation => "federation",
        crate::events::StreamKind::Internal => "internal",
        crate::events::StreamKind::Component => "component",
    }
}
