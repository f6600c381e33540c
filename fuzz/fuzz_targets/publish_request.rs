#![no_main]

// The query string, a NUL, then the body.
libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let (query, body) = match data.iter().position(|&b| b == 0) {
        Some(at) => (&data[..at], &data[at + 1..]),
        None => (&b""[..], data),
    };
    if let Ok(query) = std::str::from_utf8(query) {
        herald::fuzz::publish_request(query, body);
    }
});
