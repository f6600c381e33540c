#![no_main]

// Messages as (subject kind, payload) pairs: a kind byte, a length byte,
// then that many payload bytes; repeated.
libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let mut messages = Vec::new();
    let mut rest = data;
    while let [kind, len, tail @ ..] = rest {
        let len = (*len as usize).min(tail.len());
        messages.push((*kind, tail[..len].to_vec()));
        rest = &tail[len..];
    }
    herald::fuzz::nats_messages(&messages);
});
