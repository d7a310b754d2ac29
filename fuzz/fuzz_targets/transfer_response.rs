#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| bitswarm_protocols::fuzz::transfer_response(data));
