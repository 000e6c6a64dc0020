//! Render tests of every dashboard view with ratatui's TestBackend, at 80×24 and 200×60,
//! asserting what is on screen.

use drawbridge::control::Snapshot;
use drawbridge::dashboard::state::{Model, Prompt, View};
use drawbridge::dashboard::ui::draw;
use drawbridge::engine::Status;
use drawbridge::engine::events::*;
use drawbridge::policy::DomainState;
use drawbridge::store::DomainRecord;
use ratatui::Terminal;
use ratatui::backend::TestBackend;

fn conn(id: &str, dir: Direction, remote: &str, state: ConnState, pair: Option<PairStatus>, close: Option<&str>) -> ConnSnapshot {
    let now = now_ms();
    ConnSnapshot {
        id: id.into(),
        direction: dir,
        kind: Default::default(),
        local: Some("island.test".into()),
        remote: Some(remote.into()),
        peer_addr: Some("127.0.0.1:5269".into()),
        state,
        stream_id: Some("abc".into()),
        tls: Some(TlsInfo {
            version: "TLS 1.3".into(),
            cipher: "TLS13_AES_128_GCM_SHA256".into(),
            peer_cert: None,
            cert_verdict: Some(drawbridge::net::certs::CertVerdict::SelfSigned),
        }),
        pairs: pair
            .map(|s| vec![PairInfo { local: "island.test".into(), remote: remote.into(), status: s, method: AuthMethod::Dialback }])
            .unwrap_or_default(),
        opened_ms: now - 65_000,
        last_activity_ms: now - 2_000,
        stanzas_in: 42,
        stanzas_out: 17,
        bytes_in: 12_345,
        bytes_out: 6_789,
        close_reason: close.map(str::to_owned),
        limits: Some(drawbridge::engine::events::StreamLimits {
            max_bytes: 524_288,
            idle_seconds: None,
            peer_max_bytes: Some(10_000),
            peer_idle_seconds: Some(300),
        }),
    }
}

fn model() -> Model {
    let mut m = Model::new(true);
    let dom = |d: &str, s: DomainState, reason: Option<&str>| DomainRecord {
        domain: d.into(),
        state: s,
        reason: reason.map(str::to_owned),
        who: Some("root (uid 0)".into()),
        ..Default::default()
    };
    m.load(Snapshot {
        status: Status {
            version: "0.1.0".into(),
            domains: vec!["island.test".into()],
            listen: vec!["127.0.0.1:5269".into()],
            uptime_s: 3725,
            streams_in: 1,
            streams_out: 1,
            established: 2,
            require_encryption: true,
            mode: "approval".into(),
            approval_wait_s: 600,
            pending: 1,
            blocked: 1,
            blacklisted: 1,
            limits: vec![
                drawbridge::engine::limits::LimitUse { key: "limits.max_inbound".into(), used: 2, max: 10_000 },
                drawbridge::engine::limits::LimitUse { key: "limits.max_inbound_unauthenticated".into(), used: 950, max: 1000 },
            ],
            gateway: None,
            overflows: Default::default(),
            certificates: vec![],
            certs_warn_before_s: 14 * 86_400,
            store: Default::default(),
        },
        connections: vec![
            conn("aaaa1111", Direction::In, "friend.test", ConnState::Established, Some(PairStatus::Valid), None),
            conn("bbbb2222", Direction::Out, "friend.test", ConnState::Established, Some(PairStatus::Valid), None),
            conn(
                "cccc3333",
                Direction::In,
                "spoofer.test",
                ConnState::Closed,
                None,
                Some("sent <not-authorized/> (no domain is authenticated)"),
            ),
        ],
        domains: vec![
            dom("friend.test", DomainState::Approved, None),
            dom("newcomer.test", DomainState::Pending, None),
            dom("flood.test", DomainState::Blocked, Some("flooding")),
            dom("evil.test", DomainState::Blacklisted, Some("spam source")),
        ],
        outcomes: vec![
            VerificationOutcome {
                time_ms: now_ms(),
                stream: "cccc3333".into(),
                direction: Direction::In,
                local: "island.test".into(),
                remote: "spoofer.test".into(),
                method: AuthMethod::Dialback,
                result: VerificationResult::Invalid,
                reason: "spoofer.test's authoritative server said the dialback key is invalid".into(),
                peer_addr: None,
            },
            VerificationOutcome {
                time_ms: now_ms(),
                stream: "aaaa1111".into(),
                direction: Direction::In,
                local: "island.test".into(),
                remote: "friend.test".into(),
                method: AuthMethod::Dialback,
                result: VerificationResult::Valid,
                reason: "friend.test's authoritative server confirmed the dialback key".into(),
                peer_addr: None,
            },
        ],
        rtbl: Default::default(),
    });
    m
}

fn screen(m: &mut Model, w: u16, h: u16) -> String {
    let mut t = Terminal::new(TestBackend::new(w, h)).unwrap();
    t.draw(|f| draw(f, m)).unwrap();
    let buf = t.backend().buffer().clone();
    let mut s = String::new();
    for y in 0..h {
        for x in 0..w {
            s.push_str(buf[(x, y)].symbol());
        }
        s.push('\n');
    }
    s
}

#[test]
fn header_and_connections() {
    for (w, h) in [(80, 24), (200, 60)] {
        let mut m = model();
        let s = screen(&mut m, w, h);
        assert!(s.contains("drawbridge") && s.contains("island.test") && s.contains("mode approval"), "{s}");
        assert!(s.contains("pending 1") && s.contains("blocked 1") && s.contains("blacklisted 1"), "{s}");
        assert!(s.contains("1 Connections") && s.contains("4 Transcript"), "{s}");
        assert!(s.contains("friend.test") && s.contains("established") && s.contains("dialback ✓"), "{s}");
        assert!(s.contains("spoofer.test") && s.contains("closed"), "closed streams stay visible: {s}");
        assert!(s.contains("42/17"), "stanza counts: {s}");
        assert!(s.contains("k close"), "footer keys: {s}");
        if w == 200 {
            assert!(s.contains("max_inbound_unauthenticated 950/1000"), "the limit closest to full: {s}");
            assert!(s.contains("not-authorized"), "close reason column when wide: {s}");
            assert!(s.contains("TLS 1.3 TLS13_AES_128_GCM_SHA256"), "detail pane: {s}");
            assert!(s.contains("certificate verdict: self-signed"), "detail pane: {s}");
            assert!(s.contains("limits (XEP-0478): ours 524288 B; peer 10000 B, idle 300 s"), "the stream's limits: {s}");
        }
    }
}

#[test]
fn the_header_shows_the_internal_servers_reachability_in_gateway_mode() {
    let mut m = model();
    let s = screen(&mut m, 200, 40);
    assert!(!s.contains("internal"), "not in gateway mode: {s}");
    let gw = |reachable| drawbridge::engine::GatewayStatus {
        internal: "10.0.0.4:5269".into(),
        listen: vec!["10.0.0.5:5269".into()],
        auth: "pki".into(),
        ca_cert: "/var/lib/drawbridge/gateway/ca.pem".into(),
        reachable,
        last_error: None,
        streams_out: 0,
        streams_in: 0,
    };
    m.status.as_mut().unwrap().gateway = Some(gw(Some(false)));
    let s = screen(&mut m, 200, 40);
    assert!(s.contains("internal 10.0.0.4:5269 UNREACHABLE"), "{s}");
    m.status.as_mut().unwrap().gateway = Some(gw(Some(true)));
    let s = screen(&mut m, 200, 40);
    assert!(s.contains("internal 10.0.0.4:5269 up"), "{s}");
}

#[test]
fn internal_link_and_component_streams_carry_a_badge_and_filter_by_kind() {
    let mut m = model();
    let mut internal = conn("cccc3333", Direction::Out, "home.test", ConnState::Established, Some(PairStatus::Valid), None);
    internal.kind = drawbridge::events::StreamKind::Internal;
    let mut comp = conn("dddd4444", Direction::In, "pubsub.island.test", ConnState::Established, Some(PairStatus::Valid), None);
    comp.kind = drawbridge::events::StreamKind::Component;
    m.apply(drawbridge::events::Event::StreamOpened { stream: internal });
    m.apply(drawbridge::events::Event::StreamOpened { stream: comp });
    let s = screen(&mut m, 200, 40);
    assert!(s.contains("[internal] home.test") && s.contains("[component] pubsub.island.test") && s.contains("friend.test"), "{s}");
    m.set_filter("internal".into());
    let s = screen(&mut m, 200, 40);
    assert!(s.contains("[internal] home.test") && !s.contains("friend.test") && !s.contains("[component]"), "{s}");
}

#[test]
fn domains_pending_pinned_first() {
    for (w, h) in [(80, 24), (200, 60)] {
        let mut m = model();
        m.view = View::Domains;
        let s = screen(&mut m, w, h);
        let pending = s.find("newcomer.test").unwrap();
        for other in ["evil.test", "flood.test", "friend.test"] {
            assert!(pending < s.find(other).unwrap(), "pending first: {s}");
        }
        assert!(
            s.contains("PENDING") && s.contains("left") && s.contains("blacklisted") && s.contains("spam source") && s.contains("flooding"),
            "{s}"
        );
    }
}

#[test]
fn verifications_say_why() {
    let mut m = model();
    m.view = View::Verifications;
    let s = screen(&mut m, 200, 60);
    assert!(s.contains("invalid") && s.contains("said the dialback key is invalid"), "{s}");
    assert!(s.contains("valid") && s.contains("confirmed the dialback key"), "{s}");
    // Filtered by domain.
    m.set_filter("friend".into());
    let s = screen(&mut m, 80, 24);
    assert!(s.contains("friend.test") && !s.contains("spoofer.test"), "{s}");
}

#[test]
fn transcript_masks_keys_until_revealed() {
    let mut m = model();
    m.view = View::Transcript;
    let s = screen(&mut m, 80, 24);
    assert!(s.contains("press Enter"), "{s}");
    m.transcript_id = Some("aaaa1111".into());
    m.transcript = vec![
        TranscriptLine { time_ms: now_ms(), dir: "in".into(), text: "<stream:stream from='friend.test'>".into(), key: None },
        TranscriptLine {
            time_ms: now_ms(),
            dir: "in".into(),
            text: format!("<db:result from='friend.test' to='island.test'>{}</db:result>", drawbridge::xml::writer::KEY_MARKER),
            key: Some("deadbeefcafe".into()),
        },
        TranscriptLine { time_ms: now_ms(), dir: "out".into(), text: "<db:result type='valid'/>".into(), key: None },
    ];
    let s = screen(&mut m, 200, 60);
    assert!(s.contains("<< <stream:stream from='friend.test'>") && s.contains(">> <db:result type='valid'/>"), "{s}");
    assert!(s.contains("[dialback key hidden]") && !s.contains("deadbeefcafe"), "{s}");
    m.reveal = true;
    let s = screen(&mut m, 200, 60);
    assert!(s.contains("deadbeefcafe") && s.contains("keys revealed"), "{s}");
    let s = screen(&mut m, 80, 24);
    assert!(s.contains("following"), "{s}");
    // Search keeps matching lines only.
    m.set_filter("type='valid'".into());
    let s = screen(&mut m, 200, 60);
    assert!(s.contains(">> <db:result type='valid'/>") && !s.contains("<stream:stream from="), "{s}");
}

#[test]
fn domain_history_overlay() {
    let mut m = model();
    m.view = View::Domains;
    m.domain_report = Some(drawbridge::control::DomainReport {
        domain: "flood.test".into(),
        record: m.domains.get("flood.test").cloned(),
        verdict: "refused: flood.test is blocked: flooding".into(),
        outcomes: m.outcomes.iter().cloned().collect(),
        streams: vec![conn("x", Direction::In, "flood.test", ConnState::Closed, None, Some("policy: flood.test is blocked"))],
        policy_log: vec![drawbridge::store::PolicyAction {
            time_ms: now_ms(),
            who: "root (uid 0)".into(),
            action: "block".into(),
            domain: Some("flood.test".into()),
            reason: Some("flooding".into()),
        }],
        listings: vec![],
        live: Default::default(),
        store_error: None,
    });
    let s = screen(&mut m, 120, 40);
    for needle in
        ["Domain history", "refused: flood.test is blocked", "verifications", "streams", "policy log", "block by root (uid 0): flooding"]
    {
        assert!(s.contains(needle), "{needle}: {s}");
    }
}

/// Rows whose order by age and by remote differ (the newest is last by name), and a closed
/// row whose name sorts first: each order is seen, so a sort that does nothing fails.
#[test]
fn sorting_connections() {
    let mut m = model();
    for (id, remote, age_s) in [("dddd4444", "alpha.test", 3_600), ("eeee5555", "zulu.test", 1)] {
        let mut c = conn(id, Direction::In, remote, ConnState::Established, Some(PairStatus::Valid), None);
        c.opened_ms = now_ms() - age_s * 1000;
        m.apply(Event::StreamOpened { stream: c });
    }
    let mut c = conn("ffff6666", Direction::In, "aaa-closed.test", ConnState::Closed, None, Some("closed by the peer"));
    c.opened_ms = now_ms();
    m.apply(Event::StreamOpened { stream: c });
    // Each remote's first row on screen, in screen order.
    let order = |s: &str| {
        let mut rows: Vec<(usize, &str)> = ["alpha.test", "friend.test", "zulu.test", "aaa-closed.test"]
            .into_iter()
            .map(|r| (s.find(r).unwrap_or_else(|| panic!("{r} on screen: {s}")), r))
            .collect();
        rows.sort();
        rows.into_iter().map(|(_, r)| r).collect::<Vec<_>>()
    };
    let s = screen(&mut m, 120, 24);
    assert_eq!(order(&s), ["zulu.test", "friend.test", "alpha.test", "aaa-closed.test"], "newest first, closed last: {s}");
    m.cycle_sort(); // by remote
    let s = screen(&mut m, 120, 24);
    assert!(s.contains("by remote"), "{s}");
    assert_eq!(order(&s), ["alpha.test", "friend.test", "zulu.test", "aaa-closed.test"], "by name, closed last: {s}");
}

#[test]
fn prompts_and_help() {
    let mut m = model();
    m.prompt = Some(Prompt::Block { domain: "flood.test".into(), input: "2h flooding".into() });
    let s = screen(&mut m, 80, 24);
    assert!(s.contains("block flood.test"), "{s}");
    m.prompt = Some(Prompt::Keep { domain: "spam.example".into(), input: "confirmed".into() });
    let s = screen(&mut m, 120, 24);
    assert!(s.contains("keep spam.example's listing as your block") && s.contains("confirmed_"), "{s}");
    m.prompt = None;
    m.show_help = true;
    let s = screen(&mut m, 80, 24);
    assert!(s.contains("Keys") && s.contains("blacklist it with its subdomains"), "{s}");
    assert!(s.contains("explain: why the selected") && s.contains("keep a listed domain's block"), "{s}");
}

#[test]
fn only_visible_rows_at_scale() {
    let mut m = model();
    for i in 0..10_000 {
        m.apply(Event::StreamOpened {
            stream: conn(
                &format!("id{i:05}"),
                Direction::In,
                &format!("peer{i}.test"),
                ConnState::Established,
                Some(PairStatus::Valid),
                None,
            ),
        });
    }
    m.selected[0] = 5_000;
    let s = screen(&mut m, 120, 40);
    assert!(s.contains("10002 live"), "{}", s.lines().take(5).collect::<Vec<_>>().join("\n"));
    // The selected row is on screen.
    let sel = m.selected_conn().unwrap();
    assert!(s.contains(sel.remote.as_deref().unwrap()), "{s}");
}

/// What a service may put in a report: a terminal escape and a forged line.
const HOSTILE: &str = "bots\u{1b}[2J\nFORGED line";

fn rtbl_record(domain: &str, text: Option<&str>, retracted: Option<u64>) -> drawbridge::store::RtblRecord {
    drawbridge::store::RtblRecord {
        domain: domain.into(),
        service: "xmppbl.test".into(),
        node: "spam_source_domains".into(),
        reason: Some("urn:xmpp:reporting:spam".into()),
        text: text.map(str::to_owned),
        block_strangers: domain.starts_with("spam"),
        first_seen_ms: 1_767_225_600_000,
        last_seen_ms: 1_767_225_600_000,
        retracted_ms: retracted,
    }
}

fn feed_status(service: &str, state: drawbridge::rtbl::FeedState, entries: usize) -> drawbridge::rtbl::FeedStatus {
    drawbridge::rtbl::FeedStatus {
        service: service.into(),
        node: "spam_source_domains".into(),
        action: drawbridge::rtbl::Action::Flag,
        state,
        entries,
        last_sync_ms: Some(1_767_225_600_000),
        last_change_ms: Some(1_767_225_600_000),
        ignored_foreign: 0,
        ignored_invalid: 0,
        ignored_over_limit: 0,
        ignored_protected: 0,
    }
}

/// Two feeds: xmppbl.test subscribed, listing spam.example (with a hostile report) and
/// having retracted gone.example; other.test failing.
fn rtbl_report() -> drawbridge::engine::RtblReport {
    use drawbridge::engine::FeedReport;
    use drawbridge::rtbl::FeedState;
    drawbridge::engine::RtblReport {
        feeds: vec![
            FeedReport {
                status: feed_status("xmppbl.test", FeedState::Subscribed, 1),
                max_entries: 10_000,
                entries: vec![rtbl_record("gone.example", None, Some(1_767_229_200_000)), rtbl_record("spam.example", Some(HOSTILE), None)],
            },
            FeedReport {
                status: feed_status("other.test", FeedState::Error("no answer within 30s".into()), 0),
                max_entries: 10,
                entries: vec![],
            },
        ],
        inbox: Default::default(),
    }
}

fn no_raw_escapes(s: &str) {
    assert!(!s.contains('\u{1b}'), "a raw escape on screen: {s}");
    assert!(!s.lines().any(|l| l.trim_start().starts_with("FORGED")), "a forged line on screen: {s}");
}

#[test]
fn rtbl_view_lists_feeds_and_their_entries() {
    let mut m = model();
    m.view = View::Rtbl;
    let s = screen(&mut m, 80, 24);
    assert!(s.contains("5 RTBL") && s.contains("No real-time blocklists followed"), "{s}");
    m.set_rtbl(rtbl_report());
    for (w, h) in [(80, 24), (200, 60)] {
        let s = screen(&mut m, w, h);
        no_raw_escapes(&s);
        for needle in
            ["Real-time blocklists (2)", "xmppbl.test spam_source_domains", "subscribed", "other.test", "error: no answer", "spam.example"]
        {
            assert!(s.contains(needle), "{w}x{h}: {needle}: {s}");
        }
        assert!(s.contains("Listed domains (1 listed, 1 retracted kept)"), "{s}");
        assert!(s.contains("listed, block-strangers") && s.contains("retracted 2026-01-01 01:00:00"), "{s}");
        // In force first, then the retracted one.
        assert!(s.find("spam.example").unwrap() < s.find("gone.example").unwrap(), "{s}");
    }
    let s = screen(&mut m, 200, 60);
    assert!(s.contains("bots\\x1b[2J\\nFORGED line"), "the report, escaped: {s}");
    assert!(s.contains("ignored foreign/invalid/over"), "{s}");
    // The selected entry is the domain the keys act on (explain, approve, block…).
    assert_eq!(m.selected_domain().as_deref(), Some("spam.example"));
    m.move_selection(1);
    assert_eq!(m.selected_domain().as_deref(), Some("gone.example"));
    m.set_filter("gone".into());
    let s = screen(&mut m, 120, 30);
    assert!(s.contains("gone.example") && !s.contains("spam.example "), "filtered by domain: {s}");
}

#[test]
fn listed_domains_and_streams_are_marked() {
    let mut m = model();
    m.apply(Event::DomainChanged { record: DomainRecord { domain: "spam.example".into(), ..Default::default() } });
    m.apply(Event::StreamOpened {
        stream: conn("dddd4444", Direction::In, "spam.example", ConnState::Established, Some(PairStatus::Valid), None),
    });
    m.view = View::Domains;
    assert!(!screen(&mut m, 120, 30).contains("[listed]"), "nothing listed yet");
    m.set_rtbl(rtbl_report());
    let s = screen(&mut m, 120, 30);
    assert!(s.contains("spam.example [listed]"), "{s}");
    assert!(s.contains("listed by xmppbl.test: bots\\x1b[2J"), "the listing says why, escaped: {s}");
    assert!(!s.contains("friend.test [listed]") && !s.contains("gone.example"), "retracted is not listed: {s}");
    no_raw_escapes(&s);
    m.view = View::Connections;
    let s = screen(&mut m, 120, 30);
    assert!(s.contains("spam.example [listed]"), "{s}");
    assert!(!s.contains("friend.test [listed]"), "{s}");
    // A feed whose entries changed: the model asks for them again (the app does).
    assert!(!m.rtbl_stale);
    let mut st = feed_status("xmppbl.test", drawbridge::rtbl::FeedState::Subscribed, 1);
    m.apply(Event::Feed { status: st.clone() });
    assert!(!m.rtbl_stale, "the same entries");
    st.entries = 2;
    st.last_change_ms = Some(1_767_229_200_000);
    m.apply(Event::Feed { status: st });
    assert!(m.rtbl_stale, "entries changed");
    // The snapshot carries them (a dashboard attaching, or resynchronising).
    let mut fresh = Model::new(true);
    fresh.load(Snapshot {
        status: m.status.clone().unwrap(),
        connections: vec![],
        domains: vec![DomainRecord { domain: "spam.example".into(), ..Default::default() }],
        outcomes: vec![],
        rtbl: rtbl_report(),
    });
    fresh.view = View::Domains;
    assert!(screen(&mut fresh, 120, 30).contains("spam.example [listed]"));
}

#[test]
fn explain_overlay() {
    use drawbridge::engine::{DirectionExplained, ExplainReport, ExplainStep, ExplainVerdict};
    use drawbridge::policy::Rule;
    let mut m = model();
    let step = |rule, matched, found: &str, effect: &str, decided| ExplainStep {
        rule,
        matched,
        found: found.into(),
        effect: effect.into(),
        decided,
    };
    m.explain = Some(ExplainReport {
        domain: "spam.example".into(),
        verdict: ExplainVerdict::Refuse,
        reason: Some("spam.example is listed as a spam source by xmppbl.test: bots\u{1b}[2J".into()),
        decided_by: Rule::Rtbl,
        steps: vec![
            step(Rule::Blacklist, false, "no entry for it or a parent", "none", false),
            step(Rule::OperatorDecision, false, "none (unknown)", "none", false),
            step(Rule::Rtbl, true, "listed by xmppbl.test (action block)", "refused", true),
            step(Rule::FederationMode, true, "mode open", "allowed", false),
        ],
        marks: vec!["listed by xmppbl.test: bots".into()],
        directions: vec![DirectionExplained {
            direction: Direction::In,
            outcome: "refused with <policy-violation/> at its stream header".into(),
            requirements: vec!["STARTTLS before dialback or stanzas ([tls] require_encryption = true)".into()],
        }],
        last_verification: None,
        certificate: None,
        cert_auth_seen: false,
        downgrade: None,
        streams: vec![],
    });
    for (w, h) in [(80, 24), (160, 50)] {
        let s = screen(&mut m, w, h);
        no_raw_escapes(&s);
        for needle in
            ["Explain (any key closes)", "spam.example: refused", "decided by: real-time blocklist", "mark: listed by xmppbl.test"]
        {
            assert!(s.contains(needle), "{w}x{h}: {needle}: {s}");
        }
    }
    let s = screen(&mut m, 160, 50);
    assert!(s.contains("* real-time blocklist matched"), "the deciding rule starred: {s}");
    assert!(s.contains("a stream from it: refused with <policy-violation/>"), "{s}");
    assert!(s.contains("requires: STARTTLS"), "{s}");
    assert!(s.contains("bots\\x1b[2J"), "{s}");
}

#[test]
fn domain_history_shows_its_listings() {
    let mut m = model();
    m.view = View::Domains;
    m.domain_report = Some(drawbridge::control::DomainReport {
        domain: "spam.example".into(),
        record: None,
        verdict: "refused: spam.example is listed as a spam source by xmppbl.test".into(),
        outcomes: vec![],
        streams: vec![],
        policy_log: vec![],
        listings: vec![rtbl_record("spam.example", Some(HOSTILE), None), rtbl_record("spam.example", None, Some(1_767_229_200_000))],
        live: Default::default(),
        store_error: None,
    });
    let s = screen(&mut m, 160, 40);
    no_raw_escapes(&s);
    assert!(s.contains("real-time blocklists"), "{s}");
    assert!(s.contains("xmppbl.test node spam_source_domains: listed now; reason urn:xmpp:reporting:spam"), "{s}");
    assert!(s.contains("block-strangers") && s.contains("report: bots\\x1b[2J\\nFORGED line"), "{s}");
    assert!(s.contains("xmppbl.test node spam_source_domains: retracted 2026-01-01 01:00:00"), "{s}");
}

/// With NO_COLOR (the model's `no_color`, from the environment), no view draws a colour:
/// every cell keeps the terminal's own foreground and background. Without it, some do.
#[test]
fn no_color_draws_no_colours_in_any_view() {
    use ratatui::style::Color;
    let coloured = |m: &mut Model| {
        let mut t = Terminal::new(TestBackend::new(200, 60)).unwrap();
        t.draw(|f| draw(f, m)).unwrap();
        let buf = t.backend().buffer().clone();
        buf.content().iter().filter(|c| c.fg != Color::Reset || c.bg != Color::Reset).count()
    };
    for no_color in [true, false] {
        let mut m = model();
        m.no_color = no_color;
        m.set_rtbl(rtbl_report());
        let mut total = 0;
        for view in View::ALL {
            m.view = view;
            total += coloured(&mut m);
        }
        m.show_help = true;
        total += coloured(&mut m);
        assert_eq!(total == 0, no_color, "no_color {no_color}: {total} coloured cells");
    }
}

/// friend.test has one live stream each way (the model's two established streams) and 3 in,
/// 2 out that ended: the Domains view shows both, each under its own header — it showed the
/// ended ones alone under "streams in/out" (0/0 in the demo). Live counts follow the events.
#[test]
fn domains_show_live_and_closed_streams_apart() {
    let row = |s: &str, domain: &str| s.lines().find(|l| l.starts_with(domain)).unwrap_or_else(|| panic!("no {domain}: {s}")).to_owned();
    // The text of `line` under `header`'s columns (right edge of the header's column).
    let under = |s: &str, line: &str, header: &str| {
        let head = s.lines().find(|l| l.starts_with("domain")).unwrap();
        let at = head.find(header).unwrap_or_else(|| panic!("no {header:?} column: {s}"));
        let cell: String = line.chars().skip(at).take(header.chars().count()).collect();
        cell.trim().to_owned()
    };
    for (w, h) in [(80, 24), (200, 60)] {
        let mut m = model();
        let mut friend = m.domains.get("friend.test").cloned().unwrap();
        (friend.streams_in, friend.streams_out) = (3, 2);
        m.apply(Event::DomainChanged { record: friend });
        m.view = View::Domains;
        let s = screen(&mut m, w, h);
        let friend = row(&s, "friend.test");
        assert_eq!(under(&s, &friend, "live in/out"), "1/1", "{w}x{h}: {s}");
        assert_eq!(under(&s, &friend, "closed in/out"), "3/2", "{w}x{h}: {s}");
        let newcomer = row(&s, "newcomer.test");
        assert_eq!((under(&s, &newcomer, "live in/out"), under(&s, &newcomer, "closed in/out")), ("0/0".into(), "0/0".into()), "{s}");
        // Its outbound stream closes: live 1/0 (the history's count is the engine's to change).
        let mut out = m.conns.get("bbbb2222").cloned().unwrap();
        out.state = ConnState::Closed;
        m.apply(Event::StreamClosed { stream: out });
        let s = screen(&mut m, w, h);
        assert_eq!(under(&s, &row(&s, "friend.test"), "live in/out"), "1/0", "{w}x{h}: {s}");
    }
}

/// A remote domain whose last certificate expires within certs.warn_before is marked by its
/// name (yellow), one whose expired likewise (red), one far from it not at all; wide, every
/// domain's expiry date is in a column. Our own certificate: its date in the header, and a
/// warning at the start of the second line from certs.warn_before on.
#[test]
fn certificate_expiry_is_marked_for_domains_and_ours() {
    use drawbridge::engine::LocalCert;
    use ratatui::style::Color;
    let now = now_s();
    let day = 86_400;
    let with_cert = |domain: &str, left: i64| DomainRecord {
        domain: domain.into(),
        state: DomainState::Approved,
        cert: Some(RemoteCert {
            not_after_s: now + left,
            issuer: "CN=Peer CA".into(),
            subject: format!("CN={domain}"),
            fingerprint_sha256: "AB".into(),
            method: AuthMethod::SaslExternal,
            direction: Direction::In,
            seen_ms: now_ms(),
        }),
        ..Default::default()
    };
    let row = |s: &str, domain: &str| s.lines().find(|l| l.starts_with(domain)).unwrap_or_else(|| panic!("no {domain}: {s}")).to_owned();
    for (w, h) in [(80, 24), (200, 60)] {
        let mut m = model();
        m.no_color = false;
        for rec in [with_cert("a.test", 5 * day + 3600), with_cert("x.test", -3 * day), with_cert("far.test", 300 * day)] {
            m.apply(Event::DomainChanged { record: rec });
        }
        m.view = View::Domains;
        let s = screen(&mut m, w, h);
        assert!(row(&s, "a.test").contains("a.test [cert 5d]"), "{w}x{h}: {s}");
        assert!(row(&s, "x.test").contains("x.test [cert EXPIRED]"), "{w}x{h}: {s}");
        assert!(!row(&s, "far.test").contains("[cert"), "{w}x{h}: {s}");
        assert!(!row(&s, "friend.test").contains("[cert"), "no certificate, no mark: {s}");
        if w == 200 {
            assert!(s.contains("cert expires"), "{s}");
            let date = |left: i64| fmt_utc_s(now + left)[..10].to_owned();
            assert!(row(&s, "a.test").contains(&format!("{} in 5d", date(5 * day + 3600))), "{s}");
            assert!(row(&s, "x.test").contains(&format!("{} EXPIRED", date(-3 * day))), "{s}");
            assert!(row(&s, "far.test").contains(&date(300 * day)), "{s}");
        }
        // The marks' colours: yellow for expiring, red for expired.
        let mut t = Terminal::new(TestBackend::new(w, h)).unwrap();
        t.draw(|f| draw(f, &mut m)).unwrap();
        let buf = t.backend().buffer().clone();
        let colour_of = |needle: &str| {
            let y = (0..h).find(|&y| (0..w).map(|x| buf[(x, y)].symbol()).collect::<String>().contains(needle)).unwrap();
            let line: String = (0..w).map(|x| buf[(x, y)].symbol()).collect();
            let x = line.find(needle).unwrap() + 1;
            buf[(x as u16, y)].fg
        };
        assert_eq!(colour_of("[cert 5d]"), Color::Yellow);
        assert_eq!(colour_of("[cert EXPIRED]"), Color::Red);
    }

    // Ours, in the header.
    let local = |left: i64| LocalCert {
        certificate: "tls".into(),
        path: "/etc/drawbridge/cert.pem".into(),
        subject: "CN=island.test".into(),
        issuer: "CN=CA".into(),
        not_after_s: Some(now + left),
        expiry: None,
    };
    let mut m = model();
    m.status.as_mut().unwrap().certificates = vec![local(90 * day)];
    let s = screen(&mut m, 200, 60);
    assert!(s.contains(&format!("cert until {}", &fmt_utc_s(now + 90 * day)[..10])), "{s}");
    assert!(!s.contains("! cert"), "{s}");
    m.status.as_mut().unwrap().certificates = vec![local(3 * day + 3600)];
    for w in [80, 200] {
        let s = screen(&mut m, w, 24);
        assert!(s.contains(&format!("! cert expires {} (in 3 days)", &fmt_utc_s(now + 3 * day + 3600)[..10])), "{w}: {s}");
    }
    m.status.as_mut().unwrap().certificates = vec![local(-2 * day)];
    let s = screen(&mut m, 80, 24);
    assert!(s.contains("! cert EXPIRED 2 DAYS AGO"), "{s}");
}

/// A dry run shown before the operator confirms a change: what it would record, the streams
/// it would close, the domains it would turn, their history; the peer's words escaped; the
/// footer asks y/n; a long one scrolls.
#[test]
fn a_policy_change_shows_its_dry_run_before_it_asks() {
    use drawbridge::engine::{
        ClosingStream, DomainImpact, ExplainVerdict, Judgement, PolicyChange, PreviewLine, PreviewReport, StandingChange,
    };
    use drawbridge::policy::Rule;
    let allowed = Judgement { verdict: ExplainVerdict::Allow, reason: None, decided_by: Rule::FederationMode };
    let refused = |d: &str| Judgement {
        verdict: ExplainVerdict::Refuse,
        reason: Some(format!("{d} is blocked: flood\u{1b}[2J\nFORGED")),
        decided_by: Rule::OperatorDecision,
    };
    let impact = |d: &str| DomainImpact {
        domain: d.into(),
        before: allowed.clone(),
        after: refused(d),
        last_seen_ms: Some(now_ms()),
        streams: 4,
        stanzas_in: 42,
        stanzas_out: 17,
        live_streams: 2,
    };
    let preview = PreviewReport {
        change: "block flood.test".into(),
        changes: true,
        days: 30,
        history_days: 90,
        mode: None,
        records: vec![StandingChange {
            domain: "flood.test".into(),
            from: DomainState::Unknown,
            to: DomainState::Blocked,
            expires_ms: None,
            reason: Some("flood".into()),
        }],
        unchanged: vec![],
        invalid: vec![],
        target: Some(impact("flood.test")),
        closing: vec![ClosingStream {
            id: "c1".into(),
            direction: Direction::In,
            local: Some("island.test".into()),
            domain: "flood.test".into(),
            reason: "flood.test is blocked: flood".into(),
            stanzas_in: 42,
            stanzas_out: 0,
        }],
        newly_refused: vec![impact("flood.test")],
        newly_held: vec![],
        newly_allowed: vec![],
        seen: 3,
        source: None,
        generation: 7,
    };
    let change = PolicyChange::Block { domain: "flood.test".into(), for_secs: None, reason: Some("flood".into()) };
    let mut m = model();
    m.prompt = Some(Prompt::confirm(change.clone(), Box::new(preview.clone())));
    for (w, h) in [(80, 24), (200, 60)] {
        let s = screen(&mut m, w, h);
        no_raw_escapes(&s);
        assert!(s.contains("Dry run: nothing changed yet — apply it? y / n"), "{s}");
        assert!(s.contains("dry run: block flood.test"), "{s}");
        assert!(s.contains("would record flood.test: unknown → blocked (flood)"), "{s}");
        assert!(s.contains("would close 1 live stream(s):"), "{s}");
        assert!(s.contains("newly refused (1):"), "{s}");
        assert!(s.contains("\\x1b[2J\\nFORGED"), "escaped: {s}");
        assert!(s.contains("block flood.test? y applies it, n or Esc does not"), "the footer asks: {s}");
    }
    // Many domains: the overlay says where it is and scrolls.
    let many: Vec<DomainImpact> = (0..40).map(|i| impact(&format!("d{i:02}.test"))).collect();
    let long = PreviewReport { newly_refused: many, ..preview };
    let Some(Prompt::Confirm { change, preview, lines, .. }) = Some(Prompt::confirm(change, Box::new(long))) else { unreachable!() };
    m.prompt = Some(Prompt::Confirm { change: change.clone(), preview: preview.clone(), lines: lines.clone(), scroll: 30 });
    let s = screen(&mut m, 100, 24);
    assert!(s.contains("(31/") && s.contains("↑↓ scroll"), "{s}");
    assert!(s.contains("d11.test") && !s.contains("d00.test"), "{s}");
    assert!(lines.iter().any(|(_, l)| l.contains("\\x1b[2J\\nFORGED")), "escaped once, when the prompt opened");

    // The lines are the prompt's, made when it opened: a redraw neither makes them again
    // from the report nor draws those off screen.
    let made: std::sync::Arc<[(PreviewLine, String)]> =
        (0..100_000).map(|i| (PreviewLine::Plain, format!("line {i:06}"))).collect::<Vec<_>>().into();
    m.prompt = Some(Prompt::Confirm { change, preview, lines: made, scroll: 50_000 });
    let s = screen(&mut m, 100, 24);
    assert!(s.contains("line 050000") && s.contains("(50001/100000"), "{s}");
    assert!(!s.contains("line 049999") && !s.contains("d11.test"), "the stored lines, from the scroll on: {s}");
}

/// [`model`] on a shared store as node `edge-1`, with node `edge-2` (alive, one stream) and
/// node `edge-3` (silent).
fn clustered() -> Model {
    let mut m = model();
    let node = |name: &str, alive: bool, streams: usize| drawbridge::store::NodeStatus {
        node: name.into(),
        heartbeat_ms: now_ms(),
        started_ms: now_ms() - 60_000,
        stopped_ms: None,
        alive,
        streams,
        version: "0.1.0".into(),
        listen: vec![],
        age_ms: if alive { 300 } else { 45_000 },
    };
    let st = m.status.as_mut().unwrap();
    st.store = drawbridge::store::StoreStatus {
        backend: "postgres".into(),
        place: "PostgreSQL database drawbridge on /run/postgresql (store.postgres)".into(),
        node: Some("edge-1".into()),
        reachable: true,
        nodes: vec![node("edge-1", true, 3), node("edge-2", true, 1), node("edge-3", false, 4)],
        heartbeat_ms: 2000,
        node_timeout_ms: 10_000,
        ..Default::default()
    };
    let far = conn("ffff9999", Direction::In, "faraway.test", ConnState::Established, Some(PairStatus::Valid), None);
    m.set_cluster(drawbridge::engine::ClusterConnections {
        node: "edge-1".into(),
        streams: vec![
            // This node's own rows in the answer are left out: its table is fresher.
            drawbridge::store::NodeStream {
                node: "edge-1".into(),
                stream: conn("aaaa1111", Direction::In, "friend.test", ConnState::Established, None, None),
            },
            drawbridge::store::NodeStream { node: "edge-2".into(), stream: far },
        ],
        store_error: None,
    });
    m
}

#[test]
fn a_shared_store_shows_every_nodes_streams_with_their_node() {
    for (w, h) in [(80, 24), (200, 60)] {
        let mut m = clustered();
        let s = screen(&mut m, w, h);
        assert!(s.contains("node") && s.contains("faraway.test") && s.contains("friend.test"), "{s}");
        let row = |remote: &str| s.lines().find(|l| l.contains(remote)).unwrap_or_else(|| panic!("no row for {remote}: {s}")).to_owned();
        assert!(row("faraway.test").contains("edge-2"), "{s}");
        assert!(row("friend.test").contains("edge-1"), "this node's rows carry its name: {s}");
        assert_eq!(m.conn_rows().len(), 4, "three of this node, one of edge-2 (its copy of edge-1's row left out)");
        assert!(s.contains("! node edge-3 silent"), "the header's second line: {s}");
        if w == 200 {
            assert!(s.contains("nodes: every node"), "{s}");
            assert!(s.contains("node edge-1 (2/3 nodes alive)"), "the header: {s}");
            assert!(s.contains("1 live on 1 other node(s)"), "{s}");
        }
    }
    // On its own store: no node column, no node filter.
    let mut m = model();
    let s = screen(&mut m, 200, 60);
    assert!(!s.contains("nodes:") && !s.contains("edge-"), "{s}");
}

#[test]
fn the_node_filter_shows_this_nodes_streams_only() {
    let mut m = clustered();
    m.toggle_nodes();
    let s = screen(&mut m, 200, 60);
    assert!(!s.contains("faraway.test") && s.contains("friend.test"), "{s}");
    assert!(s.contains("nodes: this node (edge-1)") && s.contains("this node only"), "{s}");
    m.toggle_nodes();
    let s = screen(&mut m, 200, 60);
    assert!(s.contains("faraway.test"), "{s}");
    // The text filter matches a node's name too.
    m.set_filter("edge-2".into());
    let s = screen(&mut m, 200, 60);
    assert!(s.contains("faraway.test") && !s.contains("friend.test"), "{s}");
}

#[test]
fn another_nodes_stream_says_where_its_transcript_is() {
    let mut m = clustered();
    let i = (0..m.conn_rows().len())
        .find(|&i| {
            m.selected[0] = i;
            m.selected_node().is_some()
        })
        .expect("edge-2's row");
    m.selected[0] = i;
    assert_eq!(m.selected_node().as_deref(), Some("edge-2"));
    assert_eq!(m.selected_conn().unwrap().remote.as_deref(), Some("faraway.test"), "its domain, for a, b, e…");
    let s = screen(&mut m, 200, 60);
    assert!(s.contains("on node edge-2: attach to that node's dashboard for its transcript"), "{s}");
    // A stream of this node: no such note.
    let j = (0..m.conn_rows().len())
        .find(|&j| {
            m.selected[0] = j;
            m.selected_node().is_none()
        })
        .unwrap();
    m.selected[0] = j;
    let s = screen(&mut m, 200, 60);
    assert!(!s.contains("on node"), "{s}");
}

#[test]
fn hostile_node_names_are_escaped() {
    let mut m = clustered();
    let far = conn("eeee8888", Direction::Out, "x.test", ConnState::Established, None, None);
    m.set_cluster(drawbridge::engine::ClusterConnections {
        node: "edge-1".into(),
        streams: vec![drawbridge::store::NodeStream { node: HOSTILE.into(), stream: far }],
        store_error: None,
    });
    let s = screen(&mut m, 200, 60);
    no_raw_escapes(&s);
    assert!(s.contains("bots\\x1b"), "{s}");
}

#[test]
fn other_nodes_unreadable_are_said_so_not_shown_stale() {
    let mut m = clustered();
    m.cluster_failed("PostgreSQL database drawbridge on db (store.postgres): connection refused".into());
    let s = screen(&mut m, 200, 60);
    assert!(!s.contains("faraway.test") && s.contains("friend.test"), "{s}");
    assert!(s.contains("other nodes unreadable"), "{s}");
}
