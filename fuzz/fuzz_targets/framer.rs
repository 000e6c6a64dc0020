#![no_main]
//! See drawbridge::fuzzing::framer.
libfuzzer_sys::fuzz_target!(|data: &[u8]| drawbridge::fuzzing::framer(data));
