#![no_main]
//! See drawbridge::fuzzing::framer; here also the heap budget: the peak heap while one input
//! is handled stays within drawbridge::fuzzing::heap_budget of its size.

use drawbridge::fuzzing::{HeapCounter, framer, heap_budget};

#[global_allocator]
static A: HeapCounter = HeapCounter;

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let base = HeapCounter::start();
    framer(data);
    let peak = HeapCounter::peak_since(base);
    assert!(peak <= heap_budget(data.len()), "{peak} bytes of heap for a {}-byte input", data.len());
});
