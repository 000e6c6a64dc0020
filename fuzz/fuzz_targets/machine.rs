#![no_main]
//! See drawbridge::fuzzing::machine: input sequences for the sans-I/O stream machine.

libfuzzer_sys::fuzz_target!(|data: &[u8]| drawbridge::fuzzing::machine(data));
