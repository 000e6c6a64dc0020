#![no_main]
//! See drawbridge::fuzzing::config.
libfuzzer_sys::fuzz_target!(|data: &[u8]| drawbridge::fuzzing::config(data));
