#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| herald::fuzz::token_claims(data));
