//! Dashboard at scale: 10 000 live streams and 100 000 domains. Measures the frame time of
//! each view and keystroke-to-frame latency (intent applied + frame drawn) on a 200×60
//! TestBackend. Run: `cargo bench --bench dashboard`.

use std::time::Instant;

use crossterm::event::{KeyCode, KeyEvent, KeyModifiers};
use drawbridge::dashboard::input::{Intent, intent};
use drawbridge::dashboard::state::{Model, View};
use drawbridge::dashboard::ui::draw;
use drawbridge::engine::events::*;
use drawbridge::policy::DomainState;
use drawbridge::store::DomainRecord;
use ratatui::Terminal;
use ratatui::backend::TestBackend;

fn main() {
    let mut m = Model::new(false);
    let now = now_ms();
    for i in 0..10_000u64 {
        m.apply(Event::StreamOpened {
            stream: ConnSnapshot {
                id: format!("{i:032x}"),
                direction: if i % 2 == 0 { Direction::In } else { Direction::Out },
                kind: Default::default(),
                local: Some("island.example".into()),
                remote: Some(format!("peer{}.example", i / 2)),
                peer_addr: Some("192.0.2.1:5269".into()),
                state: ConnState::Established,
                stream_id: None,
                tls: None,
                pairs: vec![PairInfo {
                    local: "island.example".into(),
                    remote: format!("peer{}.example", i / 2),
                    status: PairStatus::Valid,
                    method: AuthMethod::Dialback,
                }],
                opened_ms: now - i * 1000,
                last_activity_ms: now,
                stanzas_in: i,
                stanzas_out: i,
                bytes_in: i * 100,
                bytes_out: i * 100,
                close_reason: None,
                limits: None,
            },
        });
    }
    for i in 0..100_000u64 {
        let state = match i % 50 {
            0 => DomainState::Blacklisted,
            1 => DomainState::Blocked,
            2 => DomainState::Pending,
            _ => DomainState::Approved,
        };
        m.apply(Event::DomainChanged { record: DomainRecord { domain: format!("domain{i}.example"), state, ..Default::default() } });
    }
    let mut term = Terminal::new(TestBackend::new(200, 60)).unwrap();
    for view in View::ALL {
        m.view = view;
        term.draw(|f| draw(f, &mut m)).unwrap(); // builds the index once
        let n = 50;
        let t0 = Instant::now();
        for _ in 0..n {
            term.draw(|f| draw(f, &mut m)).unwrap();
        }
        println!("{:<14} frame: {:.2} ms", view.title(), t0.elapsed().as_secs_f64() * 1000.0 / n as f64);
    }
    // Keystroke → frame: move the selection and redraw, in the two big views.
    for view in [View::Connections, View::Domains] {
        m.view = view;
        let n = 200;
        let t0 = Instant::now();
        for _ in 0..n {
            let i = intent(KeyEvent::new(KeyCode::Down, KeyModifiers::NONE), false);
            assert_eq!(i, Intent::Down);
            m.move_selection(1);
            term.draw(|f| draw(f, &mut m)).unwrap();
        }
        println!("{:<14} keystroke to frame: {:.2} ms", view.title(), t0.elapsed().as_secs_f64() * 1000.0 / n as f64);
    }
    // A change in the data and the next frame: that view's index is rebuilt once.
    m.view = View::Connections;
    let t0 = Instant::now();
    let closing = ConnSnapshot { state: ConnState::Closed, ..m.selected_conn().unwrap() };
    m.apply(Event::StreamClosed { stream: closing });
    term.draw(|f| draw(f, &mut m)).unwrap();
    println!("stream event + reindex (10 000) + frame: {:.2} ms", t0.elapsed().as_secs_f64() * 1000.0);
    m.view = View::Domains;
    let t0 = Instant::now();
    m.apply(Event::DomainChanged {
        record: DomainRecord { domain: "new.example".into(), state: DomainState::Pending, ..Default::default() },
    });
    term.draw(|f| draw(f, &mut m)).unwrap();
    println!("domain event + reindex (100 000) + frame: {:.2} ms", t0.elapsed().as_secs_f64() * 1000.0);
}
