//! Hostile frames: CPU and peak heap per frame for the inputs a peer would build to make
//! drawbridge allocate or compute more than it received (issue 8), each parsed by the framer
//! and written back as the router would. Not a test: nothing here asserts.
//!
//! Run: `cargo bench --bench hostile`.

use std::time::Instant;

use drawbridge::xml::{Frame, Framer, writer::write_top};

#[global_allocator]
static A: drawbridge::fuzzing::HeapCounter = drawbridge::fuzzing::HeapCounter;

const HEADER: &str = "<?xml version='1.0'?><stream:stream xmlns='jabber:server' xmlns:stream='http://etherx.jabber.org/streams' xmlns:db='jabber:server:dialback' from='a.test' to='b.test' version='1.0'>";

fn ns_bomb(ns_len: usize, children: usize) -> String {
    format!("<message xmlns:p='urn:{}'>{}</message>", "n".repeat(ns_len), "<p:c/>".repeat(children))
}

fn attr_bomb(ns_len: usize, attrs: usize) -> String {
    let a: String = (0..attrs).map(|i| format!(" p:a{i}=''")).collect();
    format!("<message xmlns:p='urn:{}'{a}/>", "n".repeat(ns_len))
}

fn many_namespaces(n: usize) -> String {
    let d: String = (0..n).map(|i| format!(" xmlns:p{i}='urn:{i}'")).collect();
    let c: String = (0..n).map(|i| format!("<p{i}:c/>")).collect();
    format!("<message{d}>{c}</message>")
}

fn main() {
    let cases = [
        ("namespace bomb, 120 KB ns x 2 000 children", ns_bomb(120_000, 2_000)),
        ("namespace bomb x10, 20 KB ns x 20 000 children", ns_bomb(20_000, 20_000)),
        ("attribute bomb, 8 KB ns x 2 000 attributes", attr_bomb(8_000, 2_000)),
        ("attribute bomb x10, 8 KB ns x 19 000 attributes", attr_bomb(8_000, 19_000)),
        ("10 000 prefixes declared and used", many_namespaces(10_000)),
        ("31 levels deep x 4 000", "<a>".repeat(31).to_string() + &"</a><a>".repeat(4_000) + &"</a>".repeat(31)),
    ];
    println!("{:<50} {:>9} {:>11} {:>11} {:>9} {:>11}", "frame", "bytes", "parse µs", "peak heap", "x wire", "written");
    for (name, body) in cases {
        let frame = format!("{HEADER}{body}");
        let rounds = 20;
        let mut best = f64::MAX;
        let mut peak = 0;
        let mut written = 0;
        for _ in 0..rounds {
            let mut f = Framer::new(512 * 1024, 32);
            f.feed(frame.as_bytes());
            let base = drawbridge::fuzzing::HeapCounter::start();
            let t = Instant::now();
            let mut el = None;
            while let Ok(Some(fr)) = f.next_frame() {
                if let Frame::Element(e) = fr {
                    el = Some(e);
                }
            }
            best = best.min(t.elapsed().as_secs_f64() * 1e6);
            if let Some(e) = &el {
                let mut out = String::new();
                write_top(&mut out, e);
                written = out.len();
            }
            peak = drawbridge::fuzzing::HeapCounter::peak_since(base);
            drop(el);
        }
        println!("{name:<50} {:>9} {:>11.0} {:>11} {:>9.1} {:>11}", body.len(), best, peak, peak as f64 / body.len() as f64, written);
    }
}
