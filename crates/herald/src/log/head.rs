//! Reading what the index needs of a journal record (its head) straight
//! from the record's JSON, without a JSON parser: recovery reads every
//! record so, and reads whole only the newest (see `durable.rs`).
//!
//! The scanner knows the one shape the journal writes (`Record`'s fields,
//! in its order of serialization or any other) and gives up, returning
//! `None`, on anything else: an unknown field, a `\u` escape, a string it
//! must copy that holds an escape. The caller then reads the record with
//! serde, which is slower and always right. The record's CRC has held, so
//! the bytes are what the hub wrote; text the index only measures (the
//! data) is not checked for UTF-8 here, it is when the event is read whole.

use crate::values::sse::DataShape;

/// A record's head: what the index keeps of a cold event, and what its
/// [`retained_cost`](super::memory) counts. Its text is `&str` borrowed
/// from the record, or a [`Span`] of the segment it was read from (to go
/// from the thread that reads segments to the one that takes them in).
#[derive(Debug, PartialEq)]
pub(crate) struct RecordHead<S> {
    pub id: u64,
    pub ts: u64,
    pub topics: TopicNames<S>,
    pub event_type: Option<S>,
    pub data: DataShape,
    pub users: Vec<S>,
    pub broadcast: bool,
    pub ttl_secs: Option<u64>,
    pub coalesce_key: Option<S>,
    pub idempotency_key: Option<S>,
}

/// A record's topic names; one (most events) without an allocation.
#[derive(Debug, PartialEq)]
pub(crate) struct TopicNames<S> {
    first: Option<S>,
    rest: Vec<S>,
}

impl<S> Default for TopicNames<S> {
    fn default() -> Self {
        TopicNames {
            first: None,
            rest: Vec::new(),
        }
    }
}

impl<S: Copy> TopicNames<S> {
    pub(crate) fn iter(&self) -> impl Iterator<Item = S> + '_ {
        self.first.into_iter().chain(self.rest.iter().copied())
    }

    pub(crate) fn len(&self) -> usize {
        usize::from(self.first.is_some()) + self.rest.len()
    }

    fn push(&mut self, name: S) {
        match self.first {
            None => self.first = Some(name),
            Some(_) => self.rest.push(name),
        }
    }
}

/// Where a string lies in a segment's bytes.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct Span {
    start: u32,
    len: u32,
}

impl<S: Copy> RecordHead<S> {
    /// The same head with its text as `f` makes it.
    pub(crate) fn map<T: Copy>(self, mut f: impl FnMut(S) -> T) -> RecordHead<T> {
        let mut topics = TopicNames::default();
        self.topics.iter().for_each(|t| topics.push(f(t)));
        RecordHead {
            id: self.id,
            ts: self.ts,
            topics,
            event_type: self.event_type.map(&mut f),
            data: self.data,
            users: self.users.into_iter().map(&mut f).collect(),
            broadcast: self.broadcast,
            ttl_secs: self.ttl_secs,
            coalesce_key: self.coalesce_key.map(&mut f),
            idempotency_key: self.idempotency_key.map(&mut f),
        }
    }
}

impl RecordHead<&str> {
    /// Where each string lies in `segment`, which holds the record.
    pub(crate) fn spans(self, segment: &[u8]) -> RecordHead<Span> {
        let base = segment.as_ptr() as usize;
        self.map(|s| {
            let start = s.as_ptr() as usize - base;
            debug_assert!(start + s.len() <= segment.len());
            Span {
                start: start as u32,
                len: s.len() as u32,
            }
        })
    }
}

impl RecordHead<Span> {
    /// The head borrowing its text from `segment` again.
    pub(crate) fn text(self, segment: &[u8]) -> RecordHead<&str> {
        self.map(|span| {
            let start = span.start as usize;
            std::str::from_utf8(&segment[start..start + span.len as usize])
                .expect("text checked when the head was read")
        })
    }
}

impl<'a> RecordHead<&'a str> {
    /// The head of the record `body`; `None` when the scanner gives up
    /// (the caller reads the record whole).
    pub(crate) fn read(body: &'a [u8]) -> Option<RecordHead<&'a str>> {
        Scanner { bytes: body, at: 0 }.record()
    }
}

/// Just past the JSON value that starts at `start`, written compact as
/// serde_json writes it; `None` on anything else. A NATS read steps over
/// the events of a batch it does not want with it.
#[cfg(feature = "nats")]
pub(crate) fn value_end(bytes: &[u8], start: usize) -> Option<usize> {
    let mut scanner = Scanner { bytes, at: start };
    scanner.skip_value(0)?;
    Some(scanner.at)
}

struct Scanner<'a> {
    bytes: &'a [u8],
    at: usize,
}

impl<'a> Scanner<'a> {
    fn record(mut self) -> Option<RecordHead<&'a str>> {
        let mut head = RecordHead {
            id: 0,
            ts: 0,
            topics: TopicNames::default(),
            event_type: None,
            data: DataShape::default(),
            users: Vec::new(),
            broadcast: false,
            ttl_secs: None,
            coalesce_key: None,
            idempotency_key: None,
        };
        // Fields every record has; a record without one is read whole.
        let (mut id, mut ts, mut topics, mut data, mut target) =
            (false, false, false, false, false);
        self.byte(b'{')?;
        if !self.peek_is(b'}') {
            loop {
                let key = self.plain_bytes()?;
                self.byte(b':')?;
                match key {
                    b"id" => (head.id, id) = (self.number()?, true),
                    b"ts" => (head.ts, ts) = (self.number()?, true),
                    b"topics" => {
                        self.strings(|name| head.topics.push(name))?;
                        topics = true;
                    }
                    b"event_type" => head.event_type = self.null_or(Self::plain_string)?,
                    b"data" => (head.data, data) = (self.data()?, true),
                    b"target" => {
                        self.target(&mut head)?;
                        target = true;
                    }
                    b"ttl_secs" => head.ttl_secs = self.null_or(Self::number)?,
                    b"coalesce_key" => head.coalesce_key = self.null_or(Self::plain_string)?,
                    b"idempotency_key" => {
                        head.idempotency_key = self.null_or(Self::plain_string)?
                    }
                    b"require_ack" => {
                        self.boolean()?;
                    }
                    _ => return None,
                }
                if self.peek_is(b',') {
                    self.at += 1;
                    continue;
                }
                break;
            }
        }
        self.byte(b'}')?;
        (self.at == self.bytes.len() && id && ts && topics && data && target).then_some(head)
    }

    fn target(&mut self, head: &mut RecordHead<&'a str>) -> Option<()> {
        self.byte(b'{')?;
        if self.peek_is(b'}') {
            self.at += 1;
            return Some(());
        }
        loop {
            let key = self.plain_bytes()?;
            self.byte(b':')?;
            match key {
                b"users" => self.strings(|u| head.users.push(u))?,
                b"broadcast" => head.broadcast = self.boolean()?,
                // Connections and filters: not the index's business.
                b"connections" | b"filter" => self.skip_value(0)?,
                _ => return None,
            }
            if self.peek_is(b',') {
                self.at += 1;
                continue;
            }
            return self.byte(b'}');
        }
    }

    fn peek_is(&self, b: u8) -> bool {
        self.bytes.get(self.at) == Some(&b)
    }

    fn byte(&mut self, b: u8) -> Option<()> {
        self.peek_is(b).then(|| self.at += 1)
    }

    fn literal(&mut self, word: &[u8]) -> bool {
        let found = self.bytes[self.at..].starts_with(word);
        if found {
            self.at += word.len();
        }
        found
    }

    fn null_or<T>(&mut self, value: impl FnOnce(&mut Self) -> Option<T>) -> Option<Option<T>> {
        match self.literal(b"null") {
            true => Some(None),
            false => value(self).map(Some),
        }
    }

    fn boolean(&mut self) -> Option<bool> {
        if self.literal(b"true") {
            Some(true)
        } else if self.literal(b"false") {
            Some(false)
        } else {
            None
        }
    }

    /// An unsigned integer, as serde_json writes one.
    fn number(&mut self) -> Option<u64> {
        let start = self.at;
        let mut n: u64 = 0;
        while let Some(d) = self.bytes.get(self.at).filter(|b| b.is_ascii_digit()) {
            n = n.checked_mul(10)?.checked_add(u64::from(d - b'0'))?;
            self.at += 1;
        }
        (self.at > start).then_some(n)
    }

    /// A string without escapes, borrowed (`None` on an escape).
    fn plain_string(&mut self) -> Option<&'a str> {
        std::str::from_utf8(self.plain_bytes()?).ok()
    }

    /// [`Scanner::plain_string`]'s bytes. (The journal's writer escapes
    /// every control character, so a quote or a backslash ends the run.)
    fn plain_bytes(&mut self) -> Option<&'a [u8]> {
        self.byte(b'"')?;
        let start = self.at;
        let len = memchr::memchr2(b'"', b'\\', &self.bytes[start..])?;
        if self.bytes[start + len] != b'"' {
            return None;
        }
        self.at = start + len + 1;
        Some(&self.bytes[start..start + len])
    }

    /// An array of strings without escapes.
    fn strings(&mut self, mut each: impl FnMut(&'a str)) -> Option<()> {
        self.byte(b'[')?;
        if self.peek_is(b']') {
            self.at += 1;
            return Some(());
        }
        loop {
            each(self.plain_string()?);
            if self.peek_is(b',') {
                self.at += 1;
                continue;
            }
            return self.byte(b']');
        }
    }

    /// The data string's decoded length and line breaks, escapes and all
    /// (but `\u`: the record is then read whole).
    fn data(&mut self) -> Option<DataShape> {
        self.byte(b'"')?;
        let mut shape = DataShape::default();
        let mut after_cr = false;
        loop {
            // Plain bytes up to the next quote or escape.
            let run = memchr::memchr2(b'"', b'\\', &self.bytes[self.at..])?;
            if run > 0 {
                shape.len += run;
                after_cr = false;
            }
            self.at += run;
            match self.bytes[self.at] {
                b'"' => {
                    self.at += 1;
                    return Some(shape);
                }
                b'\\' => {
                    let escaped = *self.bytes.get(self.at + 1)?;
                    self.at += 2;
                    shape.len += 1;
                    match escaped {
                        b'r' => {
                            shape.breaks += 1;
                            shape.break_bytes += 1;
                            after_cr = true;
                            continue;
                        }
                        b'n' if after_cr => shape.break_bytes += 1,
                        b'n' => {
                            shape.breaks += 1;
                            shape.break_bytes += 1;
                        }
                        b'"' | b'\\' | b'/' | b'b' | b'f' | b't' => {}
                        _ => return None,
                    }
                    after_cr = false;
                }
                _ => unreachable!("memchr2 stops at a quote or a backslash"),
            }
        }
    }

    /// Skips any JSON value (a filter's), nested at most 128 deep.
    fn skip_value(&mut self, depth: usize) -> Option<()> {
        if depth > 128 {
            return None;
        }
        match *self.bytes.get(self.at)? {
            b'"' => {
                self.at += 1;
                loop {
                    // After an escape, `at` may be past the end.
                    let run = memchr::memchr2(b'"', b'\\', self.bytes.get(self.at..)?)?;
                    self.at += run;
                    if self.bytes[self.at] == b'"' {
                        self.at += 1;
                        return Some(());
                    }
                    self.at += 2;
                }
            }
            open @ (b'[' | b'{') => {
                let close = if open == b'[' { b']' } else { b'}' };
                self.at += 1;
                if self.peek_is(close) {
                    self.at += 1;
                    return Some(());
                }
                loop {
                    if open == b'{' {
                        self.skip_value(depth + 1)?;
                        self.byte(b':')?;
                    }
                    self.skip_value(depth + 1)?;
                    if self.peek_is(b',') {
                        self.at += 1;
                        continue;
                    }
                    return self.byte(close);
                }
            }
            _ => {
                // A number or a literal: up to the next delimiter.
                let run = self.bytes[self.at..]
                    .iter()
                    .position(|&b| matches!(b, b',' | b']' | b'}'))?;
                (run > 0).then(|| self.at += run)
            }
        }
    }
}

/// For the journal's fuzz target: a head read from any record body is
/// that of the event the body decodes to whole (when it decodes).
#[cfg(feature = "fuzzing")]
pub(crate) fn fuzz_head(body: &[u8]) {
    let Some(head) = RecordHead::read(body) else {
        return;
    };
    let Ok(record) = crate::values::json::from_slice::<super::journal::Record>(body) else {
        return;
    };
    let event = record.into_event();
    assert_eq!((head.id, head.ts), (event.id.0, event.published_at_ms));
    assert!(head
        .topics
        .iter()
        .eq(event.topics.iter().map(|t| t.as_str())));
    assert_eq!(head.event_type, event.event_type.as_deref());
    assert_eq!(head.data, DataShape::of(&event.data));
    assert!(head
        .users
        .iter()
        .copied()
        .eq(event.target.users.iter().map(String::as_str)));
    assert_eq!(head.broadcast, event.target.broadcast);
    assert_eq!(head.coalesce_key, event.coalesce_key.as_deref());
    assert_eq!(head.idempotency_key, event.idempotency_key.as_deref());
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;
    use crate::log::journal::Record;
    use crate::values::event::{Event, EventDraft, EventId, Target};
    use crate::values::topic::Topic;

    fn text() -> impl Strategy<Value = String> {
        // Plain text, line breaks, quotes, backslashes, control and
        // non-ASCII characters: every escape serde_json writes.
        "([a-z \"\\\\/]|\r|\n|\r\n|\t|\u{1}|\u{7f}|é|\u{2028}|😀){0,24}"
    }

    fn key() -> impl Strategy<Value = Option<String>> {
        proptest::option::of("[a-z0-9-]{1,12}|\"x\"")
    }

    prop_compose! {
        fn draft()(
            topics in proptest::collection::vec("[a-z]{1,6}(/[a-z0-9]{1,4}){0,2}", 0..4),
            event_type in proptest::option::of("[a-z.]{1,10}|herald\\.presence|a\"b"),
            data in text(),
            users in proptest::collection::vec("[a-z]{1,6}|\"u\"", 0..3),
            connections in proptest::collection::vec("[a-z0-9]{1,6}", 0..2),
            broadcast in any::<bool>(),
            filter in proptest::option::of(("[a-z]{1,4}", "[a-z\"\\[{]{0,6}", 0u32..100)),
            ttl_secs in proptest::option::of(0u64..100_000),
            coalesce_key in key(),
            idempotency_key in key(),
            require_ack in any::<bool>(),
        ) -> EventDraft {
            EventDraft {
                topics: topics.iter().map(|t| Topic::new(t).unwrap()).collect(),
                event_type,
                data,
                target: Target {
                    users,
                    connections,
                    broadcast,
                    filter: filter.map(|(k, s, n)| {
                        [(k, serde_json::json!({"s": s, "n": [n, {"deep": [[]]}], "t": true, "f": null}))]
                            .into_iter()
                            .collect()
                    }),
                },
                ttl_secs,
                coalesce_key,
                idempotency_key,
                require_ack,
            }
        }
    }

    fn scan(bytes: &[u8]) -> Option<RecordHead<&str>> {
        Scanner { bytes, at: 0 }.record()
    }

    /// A head's fields, owned, in [`RecordHead`]'s order.
    type Fields = (
        u64,
        u64,
        Vec<String>,
        Option<String>,
        DataShape,
        Vec<String>,
        bool,
        Option<u64>,
        Option<String>,
        Option<String>,
    );

    /// What the head of `event` must be, from the event itself.
    fn expected(event: &Event) -> Fields {
        (
            event.id.0,
            event.published_at_ms,
            event.topics.iter().map(|t| t.as_str().to_owned()).collect(),
            event.event_type.as_deref().map(Into::into),
            DataShape::of(&event.data),
            event.target.users.clone(),
            event.target.broadcast,
            event
                .expires_at_ms
                .map(|e| (e - event.published_at_ms) / 1000),
            event.coalesce_key.as_deref().map(Into::into),
            event.idempotency_key.as_deref().map(Into::into),
        )
    }

    fn got(head: &RecordHead<&str>) -> Fields {
        (
            head.id,
            head.ts,
            head.topics.iter().map(Into::into).collect(),
            head.event_type.map(Into::into),
            head.data,
            head.users.iter().map(|u| u.to_string()).collect(),
            head.broadcast,
            head.ttl_secs,
            head.coalesce_key.map(Into::into),
            head.idempotency_key.map(Into::into),
        )
    }

    proptest! {
        /// Any record the journal writes reads back to the event's head:
        /// by the scanner when it can (else it is read whole), never wrongly.
        #[test]
        fn heads_are_the_events(draft in draft(), id in 1u64..u64::MAX / 2, ts in 0u64..u64::MAX / 4) {
            let event = Event::commit(draft, EventId(id), ts);
            let body = serde_json::to_vec(&Record::of(&event)).unwrap();
            if let Some(head) = scan(&body) {
                prop_assert_eq!(got(&head), expected(&event));
            }
            if let Some(head) = RecordHead::read(&body) {
                prop_assert_eq!(got(&head), expected(&event));
                // Through spans of a larger buffer and back.
                let mut segment = b"prefix".to_vec();
                segment.extend_from_slice(&body);
                let head = RecordHead::read(&segment[6..]).unwrap().spans(&segment);
                prop_assert_eq!(got(&head.text(&segment)), expected(&event));
            }
        }
    }

    /// The scanner reads what the journal writes most: plain records,
    /// with escapes in their data.
    #[test]
    fn plain_records_are_scanned() {
        let draft = EventDraft {
            topics: vec![Topic::new("room/1").unwrap()],
            data: "{\"n\": 1}\r\nnext\\".into(),
            target: Target {
                users: vec!["ann".into()],
                ..Default::default()
            },
            idempotency_key: Some("k-1".into()),
            ..Default::default()
        };
        let event = Event::commit(draft, EventId(7), 9);
        let body = serde_json::to_vec(&Record::of(&event)).unwrap();
        let head = Scanner {
            bytes: &body,
            at: 0,
        }
        .record()
        .expect("scanned");
        assert_eq!(got(&head), expected(&event));
        // Cut short, or with a field it does not know: not scanned.
        assert!(Scanner {
            bytes: &body[..body.len() - 1],
            at: 0
        }
        .record()
        .is_none());
        let mut other = body.clone();
        other.splice(1..1, b"\"new\":1,".iter().copied());
        assert!(Scanner {
            bytes: &other,
            at: 0
        }
        .record()
        .is_none());
    }
}
