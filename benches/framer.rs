//! Throughput of the XML framer + element tree on a recorded-style s2s stream of small
//! stanzas (assets/bench/s2s-small-stanzas.xml, ~200 bytes each), on one core.
//!
//! Run: `cargo bench --bench framer`. Prints MB/s and stanzas/s. Not a test: nothing here
//! asserts a speed.

use std::time::{Duration, Instant};

use drawbridge::xml::{Frame, Framer};

fn main() {
    let text = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/assets/bench/s2s-small-stanzas.xml")).expect("bench asset");
    let split = text.find('\n').unwrap() + 1;
    let (header, body) = text.split_at(split);
    let per_copy = body.lines().count();
    // A long stream: the body repeated, read in 16 KiB chunks as a socket would deliver it.
    let copies = 200;
    let stream: Vec<u8> =
        std::iter::once(header.as_bytes()).chain(std::iter::repeat_n(body.as_bytes(), copies)).flatten().copied().collect();
    let chunk = 16 * 1024;

    let run = || {
        let mut f = Framer::new(256 * 1024, 32);
        let mut n = 0usize;
        for c in stream.chunks(chunk) {
            f.feed(c);
            while let Some(fr) = f.next_frame().expect("valid stream") {
                if let Frame::Element(e) = fr {
                    std::hint::black_box(&e);
                    n += 1;
                }
            }
        }
        n
    };
    if std::env::var_os("BASELINE").is_some() {
        let big: String = std::iter::repeat_n(body, 20).collect();
        baseline(&big);
        breakdown(body);
    }
    // Warm up, then measure for at least 3 s.
    assert_eq!(run(), per_copy * copies);
    let mut rounds = 0u32;
    let mut stanzas = 0usize;
    let t0 = Instant::now();
    while t0.elapsed() < Duration::from_secs(3) {
        stanzas += run();
        rounds += 1;
    }
    let secs = t0.elapsed().as_secs_f64();
    let bytes = stream.len() as f64 * rounds as f64;
    println!(
        "framer + element tree, one core: {:.0} MB/s, {:.0} stanzas/s ({} stanzas of {:.0} bytes avg, {} rounds, {:.2} s)",
        bytes / secs / 1e6,
        stanzas as f64 / secs,
        stanzas,
        body.len() as f64 / per_copy as f64,
        rounds,
        secs
    );
}

#[allow(dead_code)]
fn baseline(body: &str) {
    use quick_xml::events::Event;
    let t0 = Instant::now();
    let mut rounds = 0;
    while t0.elapsed() < Duration::from_secs(2) {
        let mut r = quick_xml::Reader::from_str(body);
        let mut n = 0usize;
        loop {
            match r.read_event().unwrap() {
                Event::Eof => break,
                Event::Start(s) | Event::Empty(s) => {
                    for a in s.attributes() {
                        std::hint::black_box(a.unwrap());
                    }
                    n += 1
                }
                e => {
                    std::hint::black_box(e);
                }
            }
        }
        std::hint::black_box(n);
        rounds += 1;
    }
    let secs = t0.elapsed().as_secs_f64();
    println!("baseline: quick-xml events + attributes alone: {:.0} MB/s", body.len() as f64 * rounds as f64 / secs / 1e6);
}

#[allow(dead_code)]
fn breakdown(body: &str) {
    use quick_xml::events::Event;
    let stanzas: Vec<&str> = body.lines().collect();
    let base = vec![
        (String::new(), "jabber:server".to_string()),
        ("stream".into(), "http://etherx.jabber.org/streams".into()),
        ("db".into(), "jabber:server:dialback".into()),
    ];
    let time = |name: &str, f: &dyn Fn()| {
        let t0 = Instant::now();
        let mut rounds = 0;
        while t0.elapsed() < Duration::from_secs(1) {
            f();
            rounds += 1;
        }
        let per = t0.elapsed().as_secs_f64() / (rounds * stanzas.len()) as f64;
        println!("  {name}: {:.0} ns per stanza", per * 1e9);
    };
    time("utf-8 check", &|| {
        for s in &stanzas {
            std::hint::black_box(std::str::from_utf8(std::hint::black_box(s.as_bytes())).unwrap());
        }
    });
    time("quick-xml events per stanza", &|| {
        for s in &stanzas {
            let mut r = quick_xml::Reader::from_str(s);
            loop {
                match r.read_event().unwrap() {
                    Event::Eof => break,
                    Event::Start(s) | Event::Empty(s) => {
                        for a in s.attributes() {
                            std::hint::black_box(a.unwrap());
                        }
                    }
                    e => {
                        std::hint::black_box(e);
                    }
                }
            }
        }
    });
    time("parse_fragment (tree)", &|| {
        for s in &stanzas {
            std::hint::black_box(drawbridge::xml::framer::parse_fragment(s, &base, 32).unwrap());
        }
    });
    time("drop of trees", &|| {
        let v: Vec<_> = stanzas.iter().map(|s| drawbridge::xml::framer::parse_fragment(s, &base, 32).unwrap()).collect();
        drop(v);
    });
}
