//! Bursts on one verified stream: a peer keeps thousands of pings outstanding and gets every
//! answer (the link's queue is bounded in bytes; when it is full the stream that read the
//! pings waits for room instead of dropping the answers); a link that makes no progress
//! bounces requests after `timeouts.write`, with memory bounded.

mod common;

use std::collections::HashSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use common::*;
use drawbridge::engine::events::Direction;

/// A ping whose id is padded to `pad` bytes (the answer carries it back: its size is what
/// fills the kernel's buffers and then the link's queue).
fn ping(id: u64, pad: usize) -> String {
    format!("<iq type='get' id='b{id}-{:x<pad$}' from='g.test' to='a.test'><ping xmlns='urn:xmpp:ping'/></iq>", "")
}

/// `total` pings from g.test to a.test with `window` outstanding at once; every one must be
/// answered, each exactly once. The generator starts reading the answers only once the
/// server has read the first window, or stopped reading it for a second (pushing back): the
/// answers exceed what the kernel buffers on loopback, so they meet the link's queue at
/// once.
async fn keep_outstanding(extra: &str, window: u64, total: u64, pad: usize) {
    let dns = Dns::start().await;
    let server = start_server("a.test", &dns, extra).await;
    // A peer with an ordinary receive window (the kernel's autotuning on loopback would
    // otherwise absorb megabytes of answers before the server's queue saw any).
    let sock = tokio::net::TcpSocket::new_v4().unwrap();
    sock.set_recv_buffer_size(64 * 1024).unwrap();
    sock.bind("127.0.0.1:0".parse().unwrap()).unwrap();
    let listener = sock.listen(16).unwrap();
    dns.add_a("xmpp.g.test", std::net::Ipv4Addr::LOCALHOST).await;
    dns.add_srv("g.test", 0, 5, "xmpp.g.test", listener.local_addr().unwrap().port()).await;
    let HandPlayed { mut to_server, mut from_server } = hand_played_on(&server, "g.test", listener).await;
    let answered = Arc::new(AtomicU64::new(0));
    let t0 = Instant::now();
    // The generator's reader starts once the first window is written: a healthy peer that is
    // busy for a moment, as a real one is — the answers meet the link's queue at once.
    let (first_window_sent, start_reading) = tokio::sync::oneshot::channel::<()>();
    let reader = {
        let answered = answered.clone();
        tokio::spawn(async move {
            let _ = start_reading.await;
            let mut seen = HashSet::new();
            while (seen.len() as u64) < total {
                let el = from_server.next_el().await.expect("the server's stream ended before every answer");
                if el.name.as_ref() != "iq" {
                    continue;
                }
                assert_eq!(el.get_attr("type"), Some("result"), "{}", el.to_xml());
                let id = el.get_attr("id").unwrap().to_owned();
                assert!(seen.insert(id.clone()), "answered twice: {id}");
                answered.fetch_add(1, Ordering::Relaxed);
            }
            from_server
        })
    };
    // The reader's start: once the server has read the whole first window, or stopped
    // reading it for a second (pushing back).
    let watcher = {
        let engine_stanzas_in = {
            let engine = server.engine.handle();
            move || engine.connections(false).into_iter().filter(|c| c.direction == Direction::In).map(|c| c.stanzas_in).max().unwrap_or(0)
        };
        tokio::spawn(async move {
            let (mut last, mut since) = (0, Instant::now());
            loop {
                let now = engine_stanzas_in();
                if now >= window.min(total) || (last > 0 && since.elapsed() > Duration::from_secs(1)) {
                    let _ = first_window_sent.send(());
                    return;
                }
                if now != last {
                    (last, since) = (now, Instant::now());
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        })
    };
    let mut sent = 0u64;
    while sent < total {
        let outstanding = sent - answered.load(Ordering::Relaxed);
        if outstanding >= window {
            tokio::time::sleep(Duration::from_millis(1)).await;
            continue;
        }
        let mut batch = String::new();
        for _ in 0..(window - outstanding).min(total - sent).min(500) {
            batch.push_str(&ping(sent, pad));
            sent += 1;
        }
        to_server.send(&batch).await;
    }
    watcher.await.unwrap();
    // Generous for a busy machine; a lost answer makes this fail, not hang.
    let _from_server = tokio::time::timeout(*LOADED, reader)
        .await
        .unwrap_or_else(|_| panic!("{} of {total} pings answered", answered.load(Ordering::Relaxed)))
        .unwrap();
    eprintln!("{total} pings, {window} outstanding: every answer in {:?}", t0.elapsed());
    let o = server.engine.status().overflows;
    assert_eq!((o.bounced, o.dropped), (0, 0), "nothing bounced or dropped");
    drop(to_server);
}

/// The report's run: 5 000 pings outstanding met a 1 024-stanza queue and lost the rest.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn five_thousand_pings_outstanding_are_all_answered() {
    keep_outstanding("", 5_000, 5_000, 1_500).await;
}

/// Twice the queue's bytes beyond what the kernel buffers: the stream that reads the pings
/// waits for room.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fifty_thousand_pings_outstanding_are_all_answered() {
    keep_outstanding("", 50_000, 50_000, 100).await;
}
