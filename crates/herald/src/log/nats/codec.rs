//! What the stream holds, as Herald reads it: message batches, subjects,
//! and the decoder every node runs over the log in the same order, so that
//! every node derives the same ids, idempotency answers, retained values
//! and presence from it. Pure: no connection.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::Arc;
#[cfg(any(test, feature = "fuzzing"))]
use std::time::Duration;

use serde::de::{DeserializeSeed, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};
use serde::{Deserialize, Serialize};

use super::MAX_RECORDS;
use crate::log::engine::ClusterOptions;
use crate::log::memory::MemoryLogSettings;
use crate::log::{Appended, Control, Entry};
use crate::values::event::{Event, EventDraft, EventId};

/// The version in a retained value's `{version, value}` JSON.
pub(super) fn entry_version(entry: &str) -> Option<u64> {
    crate::values::json::from_slice::<serde_json::Value>(entry.as_bytes()).ok()?["version"].as_u64()
}

/// One message of the log.
#[derive(Debug, Default, Serialize, Deserialize)]
pub(super) struct Batch {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub(super) events: Vec<EventDraft>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub(super) controls: Vec<Control>,
}

/// The events at `wanted` (indexes, ascending) of a log message's batch,
/// each with its index; the others are skipped, not built. What a read of
/// one topic needs from a message that carries many.
///
/// A batch as Herald writes it is split into its events by
/// [`event_spans`] and only the wanted ones are parsed; anything else goes
/// through serde, which skips the others by parsing them too (most of a
/// sparse read's time before the split).
pub(super) fn batch_events(
    payload: &[u8],
    wanted: &[usize],
) -> serde_json::Result<Vec<(usize, EventDraft)>> {
    let Some(spans) = event_spans(payload) else {
        return crate::values::json::from_slice_seed(payload, Message(wanted));
    };
    wanted
        .iter()
        .filter_map(|&at| Some((at, spans.get(at)?.clone())))
        .map(|(at, span)| Ok((at, crate::values::json::from_slice(&payload[span])?)))
        .collect()
}

/// Where each event of a batch lies in `payload`, found without a JSON
/// parser when the payload has the shape Herald writes: `{"events":[`,
/// objects separated by commas, `]`, then `}` or `,"controls":[…]}`, no
/// whitespace between. `None` on any other shape. Each event is stepped
/// over by the journal's head scanner; what is wanted is parsed
/// afterwards, in full.
fn event_spans(payload: &[u8]) -> Option<Vec<std::ops::Range<usize>>> {
    const HEAD: &[u8] = b"{\"events\":[";
    const CONTROLS: &[u8] = b",\"controls\":[";
    if !payload.starts_with(HEAD) {
        return None;
    }
    let mut at = HEAD.len();
    let mut spans = Vec::new();
    if payload.get(at) == Some(&b']') {
        at += 1;
    } else {
        loop {
            if payload.get(at) != Some(&b'{') {
                return None;
            }
            let end = crate::log::head::value_end(payload, at)?;
            spans.push(at..end);
            at = end + 1;
            match payload.get(end)? {
                b',' => {}
                b']' => break,
                _ => return None,
            }
        }
    }
    let rest = &payload[at..];
    let ends = rest == b"}" || (rest.starts_with(CONTROLS) && rest.ends_with(b"]}"));
    ends.then_some(spans)
}

/// The batch object: `events` through [`Picks`], the rest skipped.
struct Message<'a>(&'a [usize]);

impl<'de> DeserializeSeed<'de> for Message<'_> {
    type Value = Vec<(usize, EventDraft)>;

    fn deserialize<D: Deserializer<'de>>(self, de: D) -> Result<Self::Value, D::Error> {
        // As a struct, so the array form reaches `visit_seq` as it does
        // for the derived `Batch`.
        de.deserialize_struct("Batch", &["events", "controls"], self)
    }
}

impl<'de> Visitor<'de> for Message<'_> {
    type Value = Vec<(usize, EventDraft)>;

    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("a batch of events")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let mut events = Vec::new();
        while let Some(key) = map.next_key::<std::borrow::Cow<'de, str>>()? {
            match &*key {
                "events" => events = map.next_value_seed(Picks(self.0))?,
                _ => {
                    map.next_value::<IgnoredAny>()?;
                }
            }
        }
        Ok(events)
    }

    /// The form serde also reads a struct in: `[events, controls]`.
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
        let events = seq.next_element_seed(Picks(self.0))?.unwrap_or_default();
        while seq.next_element::<IgnoredAny>()?.is_some() {}
        Ok(events)
    }
}

/// The wanted elements of the events array.
struct Picks<'a>(&'a [usize]);

impl<'de> DeserializeSeed<'de> for Picks<'_> {
    type Value = Vec<(usize, EventDraft)>;

    fn deserialize<D: Deserializer<'de>>(self, de: D) -> Result<Self::Value, D::Error> {
        de.deserialize_seq(self)
    }
}

impl<'de> Visitor<'de> for Picks<'_> {
    type Value = Vec<(usize, EventDraft)>;

    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("an array of events")
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
        let mut out = Vec::with_capacity(self.0.len());
        let mut wanted = self.0.iter().copied().peekable();
        let mut index = 0;
        loop {
            let more = match wanted.peek() {
                Some(&at) if at == index => match seq.next_element::<EventDraft>()? {
                    Some(draft) => {
                        out.push((index, draft));
                        wanted.next();
                        true
                    }
                    None => false,
                },
                _ => seq.next_element::<IgnoredAny>()?.is_some(),
            };
            if !more {
                return Ok(out);
            }
            index += 1;
        }
    }
}

/// Turns messages into log entries, the same way on every node.
pub(super) struct Decoder {
    pub(super) base: u64,
    pub(super) window_ms: u64,
    pub(super) max_keys: usize,
    pub(super) node: String,
    /// Idempotency keys: first id and the log time their window ends.
    pub(super) keys: HashMap<String, (u64, u64)>,
    pub(super) key_order: VecDeque<(String, u64)>,
    /// The last sequence applied.
    pub(super) last_seq: u64,
    pub(super) last_ms: u64,
    /// What this node's own appends came to, by sequence, until read.
    pub(super) outcomes: BTreeMap<u64, Vec<Appended>>,
    /// Subject names.
    pub(super) subjects: Subjects,
    /// Sequence and publish time of the log messages still in the stream.
    pub(super) log_seqs: VecDeque<(u64, u64)>,
    /// Everything up to this sequence left the log subject (0: nothing).
    pub(super) floor_seq: u64,
    /// A floor the replica has not been told of yet.
    pub(super) new_floor: Option<u64>,
    /// Retained values: slot → (sequence of its last change, `{version,
    /// value}` JSON or `None` once deleted).
    pub(super) state: HashMap<String, (u64, Option<String>)>,
    /// Presence: (topic, user) → (sequence and log time of its last
    /// change, nodes).
    pub(super) presence: HashMap<(String, String), (u64, u64, Vec<String>)>,
}

/// The subjects of a cluster's stream.
#[derive(Debug, Clone)]
pub(super) struct Subjects {
    /// `{name}.log`: events and control records.
    pub(super) log: String,
    /// `{name}.floor`: how far the log subject was trimmed.
    pub(super) floor: String,
    /// `{name}.state.<hex of topic\nkey>`: the last change of a value.
    pub(super) state: String,
    /// `{name}.pres.<hex of topic\nuser>`: the nodes where a user is on a
    /// presence topic.
    pub(super) presence: String,
}

impl Subjects {
    pub(super) fn new(name: &str) -> Subjects {
        Subjects {
            log: format!("{name}.log"),
            floor: format!("{name}.floor"),
            state: format!("{name}.state."),
            presence: format!("{name}.pres."),
        }
    }
}

pub(super) fn hex(text: &str) -> String {
    text.bytes().map(|b| format!("{b:02x}")).collect()
}

pub(super) fn unhex(text: &str) -> Option<String> {
    let bytes: Option<Vec<u8>> = (0..text.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(text.get(i..i + 2)?, 16).ok())
        .collect();
    String::from_utf8(bytes?).ok()
}

/// A change of a retained value (subject `…state.<slot>`).
#[derive(Debug, Serialize, Deserialize)]
pub(super) struct StateChange {
    pub(super) event: EventDraft,
    /// `{version, value}` as JSON; `None`: deleted.
    pub(super) entry: Option<String>,
}

/// The nodes where a user is on a presence topic (subject `…pres.<pair>`),
/// with the announcement the change makes, if any.
#[derive(Debug, Serialize, Deserialize)]
pub(super) struct PresenceSet {
    pub(super) nodes: Vec<String>,
    pub(super) announcement: Option<EventDraft>,
}

/// `…floor`: the log subject holds nothing at or below this sequence.
#[derive(Debug, Serialize, Deserialize)]
pub(super) struct Floor {
    pub(super) through: u64,
}

impl Decoder {
    pub(super) fn new(
        base: u64,
        settings: &MemoryLogSettings,
        options: &ClusterOptions,
        last_seq: u64,
    ) -> Decoder {
        Decoder {
            base,
            window_ms: settings.idempotency_window.as_millis().max(1) as u64,
            max_keys: settings.max_idempotency_keys,
            node: options.node.clone(),
            keys: HashMap::new(),
            key_order: VecDeque::new(),
            last_seq,
            last_ms: 0,
            outcomes: BTreeMap::new(),
            subjects: Subjects::new(&options.name),
            log_seqs: VecDeque::new(),
            floor_seq: 0,
            new_floor: None,
            state: HashMap::new(),
            presence: HashMap::new(),
        }
    }

    pub(super) fn id(&self, seq: u64, index: usize) -> u64 {
        self.base + seq * MAX_RECORDS as u64 + index as u64
    }

    pub(super) fn forget_keys(&mut self, now: u64) {
        while let Some((_, until)) = self.key_order.front() {
            if *until > now && self.key_order.len() <= self.max_keys {
                break;
            }
            let (key, until) = self.key_order.pop_front().expect("present");
            if self.keys.get(&key).is_some_and(|(_, u)| *u == until) {
                self.keys.remove(&key);
            }
        }
    }

    /// The entries of the message at `seq` on `subject`. Everything is
    /// judged by the log alone (idempotency by log time, never the local
    /// clock), so every node judges alike.
    pub(super) fn decode(
        &mut self,
        seq: u64,
        published_ms: u64,
        subject: &str,
        from: Option<&str>,
        payload: &[u8],
    ) -> Result<Vec<Entry>, String> {
        let ts = published_ms.max(self.last_ms);
        self.last_ms = ts;
        self.last_seq = seq;
        let bad = |e: serde_json::Error| e.to_string();
        if subject == self.subjects.log {
            self.log_seqs.push_back((seq, ts));
            return self.decode_batch(seq, ts, from, payload);
        }
        if subject == self.subjects.floor {
            let floor: Floor = crate::values::json::from_slice(payload).map_err(bad)?;
            if floor.through > self.floor_seq {
                self.floor_seq = floor.through;
                while self
                    .log_seqs
                    .front()
                    .is_some_and(|(s, _)| *s <= floor.through)
                {
                    self.log_seqs.pop_front();
                }
                self.new_floor = Some(self.id(floor.through, MAX_RECORDS - 1));
            }
            return Ok(Vec::new());
        }
        if let Some(slot) = subject.strip_prefix(&self.subjects.state) {
            let slot = unhex(slot).ok_or("a state subject that is not hex")?;
            let change: StateChange = crate::values::json::from_slice(payload).map_err(bad)?;
            self.state.insert(slot, (seq, change.entry));
            let id = EventId(self.id(seq, 0));
            return Ok(vec![Entry::Held(Arc::new(Event::commit(
                change.event,
                id,
                ts,
            )))]);
        }
        if let Some(pair) = subject.strip_prefix(&self.subjects.presence) {
            let pair = unhex(pair).ok_or("a presence subject that is not hex")?;
            let (topic, user) = pair
                .split_once('\n')
                .ok_or("a presence pair without user")?;
            let set: PresenceSet = crate::values::json::from_slice(payload).map_err(bad)?;
            self.presence
                .insert((topic.to_owned(), user.to_owned()), (seq, ts, set.nodes));
            let id = EventId(self.id(seq, 0));
            return Ok(set
                .announcement
                .map(|draft| Entry::Held(Arc::new(Event::commit(draft, id, ts))))
                .into_iter()
                .collect());
        }
        Ok(Vec::new())
    }

    pub(super) fn decode_batch(
        &mut self,
        seq: u64,
        ts: u64,
        from: Option<&str>,
        payload: &[u8],
    ) -> Result<Vec<Entry>, String> {
        let batch: Batch = crate::values::json::from_slice(payload).map_err(|e| e.to_string())?;
        if batch.events.len() + batch.controls.len() > MAX_RECORDS {
            return Err(format!("more than {MAX_RECORDS} records in one message"));
        }
        self.forget_keys(ts);
        let mut entries = Vec::with_capacity(batch.events.len() + batch.controls.len());
        let mut outcome = Vec::with_capacity(batch.events.len());
        let events = batch.events.len();
        for (i, draft) in batch.events.into_iter().enumerate() {
            let id = self.id(seq, i);
            if let Some(key) = &draft.idempotency_key {
                if let Some(&(first, until)) = self.keys.get(key) {
                    if until > ts {
                        outcome.push(Appended {
                            id: EventId(first),
                            duplicate: true,
                        });
                        continue;
                    }
                }
                let until = ts + self.window_ms;
                self.keys.insert(key.clone(), (id, until));
                self.key_order.push_back((key.clone(), until));
            }
            entries.push(Entry::Event(Arc::new(Event::commit(
                draft,
                EventId(id),
                ts,
            ))));
            outcome.push(Appended {
                id: EventId(id),
                duplicate: false,
            });
        }
        for (j, record) in batch.controls.into_iter().enumerate() {
            entries.push(Entry::Control {
                id: EventId(self.id(seq, events + j)),
                record,
            });
        }
        // Only appends of events wait for an answer (control records do not).
        if from == Some(self.node.as_str()) && !outcome.is_empty() {
            // Answers nobody came for (a publisher that gave up) go after a
            // while.
            if self.outcomes.len() > 10_000 {
                let keep = self.outcomes.split_off(&seq.saturating_sub(10_000));
                self.outcomes = keep;
            }
            self.outcomes.insert(seq, outcome);
        }
        Ok(entries)
    }
}

/// A decoder for a node named `node` of a cluster named `herald`, outside
/// any engine connection (unit tests, fuzzing).
#[cfg(any(test, feature = "fuzzing"))]
pub(super) fn standalone_decoder(
    node: &str,
    first_id: u64,
    max_events_per_topic: usize,
    idempotency_window: Duration,
    max_idempotency_keys: usize,
) -> Decoder {
    let settings = MemoryLogSettings {
        idempotency_window,
        max_idempotency_keys,
        ..MemoryLogSettings::unbounded(max_events_per_topic)
    };
    let options = ClusterOptions {
        name: "herald".into(),
        max_log_events: 0,
        connect_timeout: Duration::from_secs(1),
        apply_timeout: Duration::from_secs(1),
        node: node.into(),
        data_dir: None,
    };
    Decoder::new(first_id, &settings, &options, 0)
}

/// Fuzzing entry: a sequence of messages (`kind` picks the subject) through
/// one node's decoder, as its tail would apply them. Never panics, ids only
/// grow. A log message's events picked out by a read (every `kind`-th)
/// are those its whole decoding holds at the same indexes.
#[cfg(feature = "fuzzing")]
pub fn fuzz_messages(messages: &[(u8, Vec<u8>)]) {
    let mut decoder = standalone_decoder("fuzz", 1 << 40, 16, Duration::from_secs(60), 64);
    let mut last_id = 0;
    for (i, (kind, payload)) in messages.iter().enumerate() {
        if let Ok(batch) = crate::values::json::from_slice::<Batch>(payload) {
            let step = usize::from(*kind).max(1);
            let wanted: Vec<usize> = (0..batch.events.len() + 2).step_by(step).collect();
            let picked = batch_events(payload, &wanted).expect("a batch reads either way");
            let expected: Vec<(usize, &EventDraft)> = wanted
                .iter()
                .filter_map(|&at| batch.events.get(at).map(|d| (at, d)))
                .collect();
            assert_eq!(picked.len(), expected.len());
            for ((at, draft), (want_at, want)) in picked.iter().zip(expected) {
                assert_eq!(*at, want_at);
                assert_eq!(
                    serde_json::to_value(draft).ok(),
                    serde_json::to_value(want).ok()
                );
            }
        }
        let subject = match kind % 4 {
            0 => "herald.log".to_owned(),
            1 => "herald.floor".to_owned(),
            2 => format!("herald.state.{}", hex("t\nk")),
            _ => format!("herald.pres.{}", hex("t\nu")),
        };
        let seq = i as u64 + 1;
        if let Ok(entries) = decoder.decode(seq, 1000 + seq, &subject, None, payload) {
            for entry in entries {
                let id = entry.id().0;
                assert!(id > last_id, "ids grow");
                last_id = id;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn decoder(window_ms: u64) -> Decoder {
        standalone_decoder("me", 1_000_000, 10, Duration::from_millis(window_ms), 100)
    }

    fn keyed(key: &str) -> EventDraft {
        EventDraft {
            data: "x".into(),
            idempotency_key: Some(key.into()),
            ..Default::default()
        }
    }

    fn payload(events: Vec<EventDraft>) -> Vec<u8> {
        serde_json::to_vec(&Batch {
            events,
            controls: Vec::new(),
        })
        .unwrap()
    }

    #[test]
    fn ids_follow_the_sequence_and_keys_repeat_by_log_time() {
        let mut d = decoder(1000);
        let first = d
            .decode(
                1,
                5_000,
                "herald.log",
                Some("me"),
                &payload(vec![keyed("k"), keyed("k")]),
            )
            .unwrap();
        // The second draft repeats the first's key within the batch.
        assert_eq!(first.len(), 1);
        assert_eq!(first[0].id(), EventId(1_000_000 + 1024));
        assert_eq!(
            d.outcomes[&1],
            [
                Appended {
                    id: EventId(1_001_024),
                    duplicate: false
                },
                Appended {
                    id: EventId(1_001_024),
                    duplicate: true
                }
            ]
        );
        // Another node's message within the window: a duplicate, no entry.
        assert!(d
            .decode(
                2,
                5_999,
                "herald.log",
                Some("other"),
                &payload(vec![keyed("k")])
            )
            .unwrap()
            .is_empty());
        assert!(!d.outcomes.contains_key(&2));
        // At the window's end (log time, not the clock): new again.
        let later = d
            .decode(3, 6_000, "herald.log", None, &payload(vec![keyed("k")]))
            .unwrap();
        assert_eq!(later[0].id(), EventId(1_000_000 + 3 * 1024));
    }

    #[test]
    fn slots_and_pairs_travel_as_hex() {
        for text in ["rooms/1\nann", "", "é\n✓"] {
            assert_eq!(unhex(&hex(text)).as_deref(), Some(text));
        }
        assert_eq!(hex("a\nb"), "610a62");
        assert_eq!(unhex("6"), None, "odd length");
        assert_eq!(unhex("zz"), None);
        assert_eq!(unhex("ff"), None, "not UTF-8");
        assert_eq!(entry_version(r#"{"version":3,"value":1}"#), Some(3));
        assert_eq!(entry_version("{"), None);
    }

    #[test]
    fn controls_follow_the_events_of_their_message_and_only_own_appends_wait() {
        let mut d = decoder(1000);
        let batch = serde_json::to_vec(&Batch {
            events: vec![keyed("a"), keyed("b")],
            controls: vec![Control::Acked {
                user: "ann".into(),
                ids: vec![EventId(1)],
            }],
        })
        .unwrap();
        let entries = d.decode(2, 100, "herald.log", Some("me"), &batch).unwrap();
        let ids: Vec<u64> = entries.iter().map(|e| e.id().0).collect();
        let base = 1_000_000 + 2 * MAX_RECORDS as u64;
        assert_eq!(ids, [base, base + 1, base + 2]);
        assert!(matches!(entries[2], Entry::Control { .. }));
        assert_eq!(
            d.outcomes[&2].len(),
            2,
            "this node's publisher reads its answer"
        );
        d.decode(
            3,
            100,
            "herald.log",
            Some("other"),
            &payload(vec![keyed("c")]),
        )
        .unwrap();
        assert!(!d.outcomes.contains_key(&3), "another node's append");
        let too_many = payload((0..=MAX_RECORDS).map(|_| EventDraft::default()).collect());
        assert!(d.decode(4, 100, "herald.log", None, &too_many).is_err());
    }

    #[test]
    fn batches_as_herald_writes_them_are_split_without_a_parser() {
        let tricky = EventDraft {
            topics: vec![crate::values::topic::Topic::new("a/b").unwrap()],
            event_type: Some("t\"}]".into()),
            data: "{\"x\": [1, \"]\\\\\"}\"], \"\\u00e9\": {}}".into(),
            idempotency_key: Some("k\\".into()),
            ..Default::default()
        };
        let drafts = vec![keyed("a"), tricky, keyed("c")];
        let mut written = payload(drafts.clone());
        let with_controls = serde_json::to_vec(&Batch {
            events: drafts.clone(),
            controls: vec![Control::Acked {
                user: "u".into(),
                ids: vec![EventId(1)],
            }],
        })
        .unwrap();
        for bytes in [&written, &with_controls] {
            let spans = event_spans(bytes).expect("Herald's own shape");
            assert_eq!(spans.len(), 3);
            for (span, draft) in spans.into_iter().zip(&drafts) {
                assert_eq!(bytes[span], serde_json::to_vec(draft).unwrap()[..]);
            }
            let picked = batch_events(bytes, &[1, 2]).unwrap();
            let json = |d: &EventDraft| serde_json::to_value(d).unwrap();
            assert_eq!(json(&picked[0].1), json(&drafts[1]));
            assert_eq!(json(&picked[1].1), json(&drafts[2]));
        }
        assert_eq!(event_spans(b"{\"events\":[]}"), Some(Vec::new()));
        // Any other shape is left to serde.
        for other in [
            &b"{\"events\": [{}]}"[..],
            b"{\"controls\":[],\"events\":[{}]}",
            b"{\"events\":[{}],\"later\":1}",
            b"{\"events\":[1]}",
            b"{\"events\":[{}] }",
            b"[[{}],[]]",
        ] {
            assert_eq!(
                event_spans(other),
                None,
                "{}",
                String::from_utf8_lossy(other)
            );
        }
        // Cut anywhere, Herald's shape is never split into events.
        written.truncate(written.len() - 1);
        for end in 0..written.len() {
            assert_eq!(event_spans(&written[..end]), None, "{end}");
        }
        // A wanted event that does not parse is an error, as through serde.
        let good = serde_json::to_string(&keyed("a")).unwrap();
        let broken = format!(r#"{{"events":[{good},{{"data":7}}]}}"#);
        assert!(event_spans(broken.as_bytes()).is_some());
        assert!(batch_events(broken.as_bytes(), &[0]).is_ok());
        assert!(batch_events(broken.as_bytes(), &[1]).is_err());
    }

    #[test]
    fn a_read_picks_the_events_it_wants_out_of_a_batch() {
        let drafts: Vec<EventDraft> = (0..6).map(|i| keyed(&format!("k{i}"))).collect();
        let whole = payload(drafts.clone());
        let keys = |picked: Vec<(usize, EventDraft)>| {
            picked
                .into_iter()
                .map(|(i, d)| (i, d.idempotency_key.unwrap()))
                .collect::<Vec<_>>()
        };
        assert_eq!(
            keys(batch_events(&whole, &[1, 3, 5]).unwrap()),
            [(1, "k1".into()), (3, "k3".into()), (5, "k5".into())]
        );
        assert_eq!(
            keys(batch_events(&whole, &[0]).unwrap()),
            [(0, "k0".into())]
        );
        assert!(batch_events(&whole, &[]).unwrap().is_empty());
        assert_eq!(
            keys(batch_events(&whole, &[4, 9]).unwrap()),
            [(4, "k4".into())],
            "past the end: what there is"
        );
        // Controls first, unknown fields skipped, as a newer writer might.
        let json = serde_json::to_value(&drafts[..2]).unwrap();
        let reordered = serde_json::json!({"controls": [], "later": {"x": [1]}, "events": json});
        let bytes = serde_json::to_vec(&reordered).unwrap();
        assert_eq!(
            keys(batch_events(&bytes, &[1]).unwrap()),
            [(1, "k1".into())]
        );
        assert!(batch_events(b"{\"events\": [1]}", &[0]).is_err());
        assert!(batch_events(b"7", &[0]).is_err());
        // The array form serde also reads a struct in, as `Batch` reads it.
        let array = serde_json::to_vec(&serde_json::json!([json, []])).unwrap();
        assert_eq!(
            keys(batch_events(&array, &[0]).unwrap()),
            [(0, "k0".into())]
        );
        assert!(batch_events(b" [ ] ", &[0]).unwrap().is_empty());
    }

    #[test]
    fn state_presence_and_floor_subjects_decode_to_what_they_hold() {
        let mut d = decoder(1000);
        let change = StateChange {
            event: EventDraft {
                data: "v".into(),
                ..Default::default()
            },
            entry: Some(r#"{"version":1,"value":"v"}"#.into()),
        };
        let subject = format!("herald.state.{}", hex("t\nk"));
        let entries = d
            .decode(
                5,
                100,
                &subject,
                None,
                &serde_json::to_vec(&change).unwrap(),
            )
            .unwrap();
        assert_eq!(entries[0].id(), EventId(d.id(5, 0)));
        assert!(
            matches!(entries[0], Entry::Held(_)),
            "a slot's message is rolled up by the next change: held whole"
        );
        assert_eq!(d.state["t\nk"], (5, change.entry.clone()));
        assert!(d.decode(6, 100, "herald.state.zz", None, b"{}").is_err());

        let pair = format!("herald.pres.{}", hex("rooms/1\nann"));
        let quiet = PresenceSet {
            nodes: vec!["n1".into()],
            announcement: None,
        };
        let entries = d
            .decode(7, 100, &pair, None, &serde_json::to_vec(&quiet).unwrap())
            .unwrap();
        assert!(entries.is_empty(), "a change that announces nothing");
        assert_eq!(d.presence[&("rooms/1".into(), "ann".into())].2, ["n1"]);
        let no_user = format!("herald.pres.{}", hex("rooms/1"));
        assert!(d
            .decode(8, 100, &no_user, None, &serde_json::to_vec(&quiet).unwrap())
            .is_err());

        d.decode(9, 100, "herald.log", None, &payload(vec![keyed("x")]))
            .unwrap();
        let floor = serde_json::to_vec(&Floor { through: 9 }).unwrap();
        d.decode(10, 100, "herald.floor", None, &floor).unwrap();
        assert_eq!(d.floor_seq, 9);
        assert_eq!(d.new_floor, Some(d.id(9, MAX_RECORDS - 1)));
        assert!(d.log_seqs.is_empty(), "everything up to the floor left");
        // A subject of a newer version is passed over, not an error.
        assert!(d
            .decode(11, 100, "herald.other", None, b"?")
            .unwrap()
            .is_empty());
    }
}
