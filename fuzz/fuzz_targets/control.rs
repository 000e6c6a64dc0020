#![no_main]
//! See drawbridge::fuzzing::control.
libfuzzer_sys::fuzz_target!(|data: &[u8]| drawbridge::fuzzing::control(data));
