#![no_main]
//! See drawbridge::fuzzing::framer; here also the heap budget: the peak heap while one input
//! is handled stays within drawbridge::fuzzing::heap_budget of its size.

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicUsize, Ordering};

struct Counting;
static LIVE: AtomicUsize = AtomicUsize::new(0);
static PEAK: AtomicUsize = AtomicUsize::new(0);

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, l: Layout) -> *mut u8 {
        let p = unsafe { System.alloc(l) };
        if !p.is_null() {
            PEAK.fetch_max(LIVE.fetch_add(l.size(), Ordering::Relaxed) + l.size(), Ordering::Relaxed);
        }
        p
    }
    unsafe fn dealloc(&self, p: *mut u8, l: Layout) {
        unsafe { System.dealloc(p, l) };
        LIVE.fetch_sub(l.size(), Ordering::Relaxed);
    }
}

#[global_allocator]
static A: Counting = Counting;

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let base = LIVE.load(Ordering::Relaxed);
    PEAK.store(base, Ordering::Relaxed);
    drawbridge::fuzzing::framer(data);
    let peak = PEAK.load(Ordering::Relaxed) - base;
    assert!(peak <= drawbridge::fuzzing::heap_budget(data.len()), "{peak} bytes of heap for a {}-byte input", data.len());
});
