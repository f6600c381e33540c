//! Entry points for the fuzz targets in `fuzz/` (cargo feature `fuzzing`):
//! every parser that reads bytes from outside the process, or back from a
//! store. Each entry asserts what must hold for any input, beyond "does not
//! crash".

use std::path::Path;

use crate::log::journal::{decode_records, frame, frame_event};
use crate::log::Control;
use crate::values::event::{Event, EventDraft, EventId};

pub use crate::access::auth::fuzz_claims as token_claims;
pub use crate::http::fuzz_publish as publish_request;
pub use crate::log::nats::fuzz_messages as nats_messages;
pub use crate::requests::subscribe::fuzz_query as subscribe_query;

/// The request-head parsers of the paths beside hyper: a refusal is 400 or
/// 431, nothing else; the publish path's parts lie inside its head. The
/// bytes go to the publish parser as they are and after `POST /v1/publish`
/// (the only heads it takes further than the request line).
pub fn request_head(bytes: &[u8]) {
    if let Some(status) = crate::server::fuzz_head(bytes) {
        assert!(status == 400 || status == 431, "{status}");
    }
    crate::server::fuzz_publish_head(bytes);
    let mut publish = b"POST /v1/publish".to_vec();
    publish.extend_from_slice(bytes);
    crate::server::fuzz_publish_head(&publish);
}

/// `bytes` as they are, or — when the first byte is odd — the lines of the
/// rest framed as whole records (length and CRC right), so the fuzzer
/// reaches the record decoder without guessing CRCs.
fn records(bytes: &[u8]) -> Vec<u8> {
    match bytes.split_first() {
        Some((mode, rest)) if mode & 1 == 1 => {
            let mut out = Vec::new();
            for body in rest.split(|&b| b == b'\n') {
                frame(body, &mut out);
            }
            out
        }
        _ => bytes.to_vec(),
    }
}

/// A journal segment: whatever decodes, encodes again to a segment that
/// decodes to the same events, whole; and the head recovery reads of each
/// record (`log/head.rs`, a scanner of its own) is that event's.
pub fn journal_segment(bytes: &[u8]) {
    let bytes = &records(bytes)[..];
    let mut rest = bytes;
    while let Some((body, size)) = crate::log::journal::unframe(rest) {
        crate::log::head::fuzz_head(body);
        rest = &rest[size..];
    }
    let mut events = Vec::new();
    let (end, _) = decode_records(bytes, &mut events, Path::new("fuzz"));
    assert!(end <= bytes.len());
    let mut again = Vec::new();
    for event in &events {
        frame_event(event, &mut again);
    }
    let mut back = Vec::new();
    let (end, _) = decode_records(&again, &mut back, Path::new("fuzz"));
    assert_eq!(end, again.len());
    assert_eq!(back.len(), events.len());
    for (a, b) in events.iter().zip(&back) {
        assert_eq!((a.id, &a.frame), (b.id, &b.frame));
    }
}

/// A record field as the Redis engine stores it (`d`: an event draft, `c`:
/// a control record): decoded, encoded, decoded again to the same.
pub fn engine_record(bytes: &[u8]) {
    if let Ok(draft) = crate::values::json::from_slice::<EventDraft>(bytes) {
        let event = Event::commit(draft, EventId(7), 7);
        let text = serde_json::to_vec(&event.to_draft()).expect("drafts encode");
        let again: EventDraft =
            crate::values::json::from_slice(&text).expect("what was read reads again");
        assert_eq!(Event::commit(again, EventId(7), 7).frame, event.frame);
    }
    if let Ok(control) = crate::values::json::from_slice::<Control>(bytes) {
        let text = serde_json::to_vec(&control).expect("controls encode");
        assert!(crate::values::json::from_slice::<Control>(&text).is_ok());
    }
}

/// An inbox file (raw, or lines framed as records as for the journal):
/// replayed, its counts agree and each inbox stays within its bound.
pub fn inbox_file(bytes: &[u8]) {
    crate::delivery::inbox::fuzz_inbox_file(&records(bytes));
}
