#![no_main]
//! See drawbridge::fuzzing::component: the component role (XEP-0114) of the stream machine.

libfuzzer_sys::fuzz_target!(|data: &[u8]| drawbridge::fuzzing::component(data));
