//! The SSE wire format (SPEC §3): encoding only, never parsing.
//!
//! Every published event is encoded here exactly once, at commit; the
//! resulting [`Bytes`] are shared by all of its subscribers. A payload is cut
//! into `data:` lines at every LF, CR and CRLF, so nothing a publisher sends
//! can end an event early or inject a field. Event names and ids are checked
//! for CR/LF at the edge (publish validation) and asserted again here.

use bytes::{BufMut, Bytes, BytesMut};

use crate::values::id::EventId;

/// Sent when nothing else was sent for the heartbeat interval.
pub(crate) const HEARTBEAT: &[u8] = b": ping\n\n";

/// Encodes one event. `event_type` is `None` for the default type `message`.
pub(crate) fn encode_event(id: Option<EventId>, event_type: Option<&str>, data: &str) -> Bytes {
    let mut buf = BytesMut::with_capacity(data.len() + 32 + event_type.map_or(0, str::len));
    write_event(&mut buf, id, event_type, data);
    buf.freeze()
}

/// Appends one event to `buf`.
pub(crate) fn write_event(
    buf: &mut BytesMut,
    id: Option<EventId>,
    event_type: Option<&str>,
    data: &str,
) {
    if let Some(id) = id {
        buf.put_slice(b"id: ");
        let _ = std::fmt::Write::write_fmt(buf, format_args!("{}", id.0));
        buf.put_u8(b'\n');
    }
    if let Some(ty) = event_type {
        debug_assert!(
            !ty.contains(['\r', '\n']),
            "event names are validated at the edge"
        );
        buf.put_slice(b"event: ");
        buf.put_slice(ty.as_bytes());
        buf.put_u8(b'\n');
    }
    for line in lines(data) {
        buf.put_slice(b"data: ");
        buf.put_slice(line.as_bytes());
        buf.put_u8(b'\n');
    }
    buf.put_u8(b'\n');
}

/// What the length of an event's encoding depends on in its data: its
/// length and its line breaks (`\r\n` one break of two bytes).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct DataShape {
    /// Bytes.
    pub len: usize,
    /// Line breaks.
    pub breaks: usize,
    /// Bytes the line breaks take.
    pub break_bytes: usize,
}

impl DataShape {
    /// The shape of `data` (the journal's head scanner measures it without
    /// decoding; this is what it must agree with).
    #[cfg(any(test, feature = "fuzzing"))]
    pub(crate) fn of(data: &str) -> DataShape {
        let mut shape = DataShape {
            len: data.len(),
            ..DataShape::default()
        };
        let bytes = data.as_bytes();
        let mut i = 0;
        while i < bytes.len() {
            match bytes[i] {
                b'\r' if bytes.get(i + 1) == Some(&b'\n') => {
                    shape.breaks += 1;
                    shape.break_bytes += 2;
                    i += 1;
                }
                b'\r' | b'\n' => {
                    shape.breaks += 1;
                    shape.break_bytes += 1;
                }
                _ => {}
            }
            i += 1;
        }
        shape
    }
}

/// The length of what [`encode_event`] makes of an event with this id, type
/// and data (by its shape), without making it.
pub(crate) fn encoded_len(
    id: Option<EventId>,
    event_type: Option<&str>,
    data: &DataShape,
) -> usize {
    let id = id.map_or(0, |id| "id: \n".len() + digits(id.0));
    let ty = event_type.map_or(0, |t| "event: \n".len() + t.len());
    // Each line is framed by "data: " and "\n"; the breaks between them
    // are not written.
    let data = (data.breaks + 1) * "data: \n".len() + data.len - data.break_bytes;
    id + ty + data + 1
}

fn digits(mut n: u64) -> usize {
    let mut d = 1;
    while n >= 10 {
        n /= 10;
        d += 1;
    }
    d
}

/// Appends a `retry:` field (a block of its own, which dispatches no event).
pub(crate) fn write_retry(buf: &mut BytesMut, ms: u64) {
    buf.put_slice(b"retry: ");
    buf.put_slice(ms.to_string().as_bytes());
    buf.put_slice(b"\n\n");
}

/// An `id:` field alone: it sets the client's Last-Event-ID (empty: none)
/// and dispatches no event (HTML's SSE parser ignores a block without data,
/// but keeps its id).
pub(crate) fn write_position(buf: &mut BytesMut, id: &str) {
    debug_assert!(!id.contains(['\r', '\n']));
    buf.put_slice(b"id: ");
    buf.put_slice(id.as_bytes());
    buf.put_slice(b"\n\n");
}

/// Splits at LF, CR and CRLF. Always yields at least one (maybe empty) line,
/// so an empty payload still dispatches an event with empty data.
fn lines(data: &str) -> impl Iterator<Item = &str> {
    let mut rest = Some(data);
    std::iter::from_fn(move || {
        let s = rest?;
        // A byte search: both are ASCII, so never inside a character.
        match s.bytes().position(|b| b == b'\r' || b == b'\n') {
            None => {
                rest = None;
                Some(s)
            }
            Some(i) => {
                let skip = if s[i..].starts_with("\r\n") { 2 } else { 1 };
                rest = Some(&s[i + skip..]);
                Some(&s[..i])
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use eventsource_stream::Eventsource;
    use futures_util::{FutureExt, StreamExt};
    use proptest::prelude::*;

    proptest! {
        /// The length is that of the encoding, whatever the data's lines.
        #[test]
        fn encoded_len_is_the_encodings(
            id in proptest::option::of(0u64..u64::MAX),
            ty in proptest::option::of("[a-z.]{0,12}"),
            data in "(\\PC|\r|\n|\r\n){0,40}",
        ) {
            let id = id.map(EventId);
            prop_assert_eq!(
                encoded_len(id, ty.as_deref(), &DataShape::of(&data)),
                encode_event(id, ty.as_deref(), &data).len()
            );
        }
    }

    /// Parses `bytes` with an independent, conforming SSE parser.
    fn parse(bytes: Bytes) -> Vec<eventsource_stream::Event> {
        let stream = futures_util::stream::iter([Ok::<_, std::convert::Infallible>(bytes)]);
        // A stream over a ready iterator completes without ever waiting.
        stream
            .eventsource()
            .map(|e| e.expect("parse"))
            .collect::<Vec<_>>()
            .now_or_never()
            .expect("ready")
    }

    /// What SPEC §3 says arrives: every CR, LF and CRLF becomes an LF.
    fn expected_data(data: &str) -> String {
        data.replace("\r\n", "\n").replace('\r', "\n")
    }

    #[test]
    fn encodes_fields_in_order() {
        let b = encode_event(Some(EventId(7)), Some("progress"), "a\nb");
        assert_eq!(&b[..], b"id: 7\nevent: progress\ndata: a\ndata: b\n\n");
        let b = encode_event(None, None, "");
        assert_eq!(&b[..], b"data: \n\n");
    }

    #[test]
    fn line_breaks_of_every_kind() {
        for (data, want) in [
            ("a\r\nb", "a\nb"),
            ("a\rb", "a\nb"),
            ("a\n\rb", "a\n\nb"),
            ("\n", "\n"),
            ("a\r\n", "a\n"),
            ("\r\r", "\n\n"),
        ] {
            let events = parse(encode_event(Some(EventId(1)), None, data));
            assert_eq!(events.len(), 1, "{data:?}");
            assert_eq!(events[0].data, want, "{data:?}");
        }
    }

    #[test]
    fn payload_cannot_inject_fields() {
        let evil = "x\n\nid: 999\nevent: herald.reset\ndata: pwned\n\n";
        let events = parse(encode_event(Some(EventId(5)), Some("chat"), evil));
        assert_eq!(events.len(), 1);
        assert_eq!(events[0].id, "5");
        assert_eq!(events[0].event, "chat");
        assert_eq!(events[0].data, expected_data(evil));
    }

    proptest! {
        /// Any payload — NUL, CR, LF, CRLF, non-ASCII, leading spaces and
        /// colons included — comes back from a conforming parser as one
        /// event with the same data (line breaks normalised to LF).
        #[test]
        fn any_payload_round_trips(
            data in "(\\PC|[\r\n\0 :]|\r\n){0,64}",
            ty in proptest::option::of("[a-z][a-z0-9._-]{0,12}"),
            id in 1u64..u64::MAX,
        ) {
            let events = parse(encode_event(Some(EventId(id)), ty.as_deref(), &data));
            prop_assert_eq!(events.len(), 1);
            prop_assert_eq!(&events[0].data, &expected_data(&data));
            prop_assert_eq!(&events[0].id, &id.to_string());
            prop_assert_eq!(&events[0].event, ty.as_deref().unwrap_or("message"));
        }

        /// Many events back to back stay separate.
        #[test]
        fn concatenated_events_stay_separate(datas in prop::collection::vec("(\\PC|[\r\n])*", 1..8)) {
            let mut buf = BytesMut::new();
            for (i, d) in datas.iter().enumerate() {
                write_event(&mut buf, Some(EventId(i as u64 + 1)), None, d);
            }
            let events = parse(buf.freeze());
            prop_assert_eq!(events.len(), datas.len());
            for (e, d) in events.iter().zip(&datas) {
                prop_assert_eq!(&e.data, &expected_data(d));
            }
        }
    }
}
