//! What Redis holds, as Herald reads and writes it: key names, stream ids,
//! stream entries and the records one append writes. Pure: no connection.

use std::sync::Arc;

use redis::Value;

use crate::log::engine::ConnectError;
use crate::log::{Control, Entry};
use crate::values::event::{Event, EventDraft, EventId};
use crate::values::topic::Topic;

pub(super) struct Keys {
    pub(super) log: String,
    pub(super) seq: String,
    pub(super) first: String,
    pub(super) idem_prefix: String,
    pub(super) nodes: String,
    pub(super) state: String,
    pub(super) presence_prefix: String,
    pub(super) node_presence_prefix: String,
}

impl Keys {
    /// The set of nodes where `user` has a stream on presence topic `topic`.
    pub(super) fn presence(&self, topic: &str, user: &str) -> String {
        format!("{}{topic}\n{user}", self.presence_prefix)
    }

    /// The (topic, user) of a presence set's key.
    pub(super) fn pair(&self, set: &str) -> Option<(Topic, String)> {
        let (topic, user) = set.strip_prefix(&self.presence_prefix)?.split_once('\n')?;
        Some((Topic::new(topic).ok()?, user.to_owned()))
    }

    /// The presence sets a node is in.
    pub(super) fn node_presence(&self, node: &str) -> String {
        format!("{}{node}", self.node_presence_prefix)
    }

    pub(super) fn new(name: &str) -> Keys {
        Keys {
            log: format!("{{{name}}}:log"),
            seq: format!("{{{name}}}:seq"),
            first: format!("{{{name}}}:first"),
            idem_prefix: format!("{{{name}}}:idem:"),
            nodes: format!("{{{name}}}:nodes"),
            state: format!("{{{name}}}:state"),
            presence_prefix: format!("{{{name}}}:presence:"),
            node_presence_prefix: format!("{{{name}}}:node-presence:"),
        }
    }
}

/// Herald id `n` as a stream id.
pub(super) fn stream_id(id: u64) -> String {
    format!("{}-{}", id / 1000, id % 1000)
}

/// A stream id as a Herald id.
pub(super) fn herald_id(stream_id: &str) -> Option<u64> {
    let (ms, seq) = stream_id.split_once('-')?;
    let (ms, seq): (u64, u64) = (ms.parse().ok()?, seq.parse().ok()?);
    (seq < 1000).then(|| ms * 1000 + seq)
}

/// Decodes `XRANGE`/`XREAD` entries (`[[id, [field, value…]]…]`).
pub(super) fn decode_entries(value: Value) -> Result<Vec<Entry>, ConnectError> {
    let Value::Array(entries) = value else {
        return Ok(Vec::new());
    };
    let mut out = Vec::with_capacity(entries.len());
    for entry in entries {
        let corrupt = |id: &str, reason: &str| ConnectError::Corrupt {
            id: id.to_owned(),
            reason: reason.to_owned(),
        };
        let Value::Array(mut parts) = entry else {
            return Err(corrupt("?", "an entry is not [id, fields]"));
        };
        if parts.len() != 2 {
            return Err(corrupt("?", "an entry is not [id, fields]"));
        }
        let fields = parts.pop().expect("two parts");
        let sid: String = redis::from_redis_value(parts.pop().expect("two parts"))
            .map_err(|e| corrupt("?", &e.to_string()))?;
        let id = herald_id(&sid).ok_or_else(|| corrupt(&sid, "not an id Herald issued"))?;
        let Value::Array(fields) = fields else {
            return Err(corrupt(&sid, "no fields"));
        };
        let mut decoded = None;
        for pair in fields.chunks(2) {
            let [Value::BulkString(name), Value::BulkString(data)] = pair else {
                continue;
            };
            let unreadable = |e: serde_json::Error| Entry::Unreadable {
                id: EventId(id),
                reason: format!("entry {sid}: {e}"),
            };
            decoded = match &name[..] {
                b"d" => Some(match crate::values::json::from_slice::<EventDraft>(data) {
                    Ok(draft) => {
                        Entry::Event(Arc::new(Event::commit(draft, EventId(id), id / 1000)))
                    }
                    Err(e) => unreadable(e),
                }),
                b"c" => Some(match crate::values::json::from_slice::<Control>(data) {
                    Ok(record) => Entry::Control {
                        id: EventId(id),
                        record,
                    },
                    Err(e) => unreadable(e),
                }),
                _ => continue,
            };
        }
        out.push(decoded.ok_or_else(|| corrupt(&sid, "neither field d nor c"))?);
    }
    Ok(out)
}

/// What one append writes.
pub(super) enum Record<'a> {
    Event(&'a EventDraft),
    Control(&'a Control),
    /// A presence announcement, written only if the node's joining (or
    /// leaving) the set of nodes where the user is on the topic makes the
    /// set non-empty (or empty).
    Presence {
        joined: bool,
        set: String,
        draft: &'a EventDraft,
    },
}

/// The highest id trimmed from the stream, from its `XINFO STREAM` (0:
/// none): when fewer entries remain than were ever added, everything
/// before the first remaining one is gone. (`max-deleted-entry-id` would
/// say it, but Redis 7.0 moves it on `XDEL` only, not on `XTRIM`.)
pub(super) fn trimmed_from_info(info: Value) -> u64 {
    let pairs: Vec<(Value, Value)> = match info {
        Value::Map(pairs) => pairs,
        Value::Array(items) => {
            let mut pairs = Vec::new();
            let mut items = items.into_iter();
            while let (Some(k), Some(v)) = (items.next(), items.next()) {
                pairs.push((k, v));
            }
            pairs
        }
        _ => return 0,
    };
    let (mut length, mut added, mut first, mut last) = (0u64, 0u64, None, None);
    for (k, v) in pairs {
        let Ok(k) = redis::from_redis_value::<String>(k) else {
            continue;
        };
        match k.as_str() {
            "length" => length = redis::from_redis_value(v).unwrap_or(0),
            "entries-added" => added = redis::from_redis_value(v).unwrap_or(0),
            "recorded-first-entry-id" => {
                first = redis::from_redis_value::<String>(v)
                    .ok()
                    .and_then(|id| herald_id(&id))
            }
            "last-generated-id" => {
                last = redis::from_redis_value::<String>(v)
                    .ok()
                    .and_then(|id| herald_id(&id))
            }
            _ => {}
        }
    }
    if added <= length {
        return 0;
    }
    match (length, first, last) {
        (0, _, Some(last)) => last,
        (_, Some(first), _) => first.saturating_sub(1),
        _ => 0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bulk(s: &str) -> Value {
        Value::BulkString(s.as_bytes().to_vec())
    }

    fn entry(id: &str, fields: &[(&str, &str)]) -> Value {
        let fields = fields
            .iter()
            .flat_map(|(k, v)| [bulk(k), bulk(v)])
            .collect();
        Value::Array(vec![bulk(id), Value::Array(fields)])
    }

    #[test]
    fn ids_map_to_stream_ids_and_back() {
        for id in [1, 999, 1000, 1_764_000_000_123_456, u64::MAX / 1000 * 1000] {
            assert_eq!(herald_id(&stream_id(id)), Some(id), "{id}");
        }
        assert_eq!(stream_id(1_764_000_000_123_456), "1764000000123-456");
        assert_eq!(herald_id("12-1000"), None);
        assert_eq!(herald_id("12"), None);
        assert_eq!(herald_id("a-1"), None);
    }

    #[test]
    fn keys_share_one_hash_slot_and_presence_sets_name_their_pair() {
        let keys = Keys::new("app");
        for key in [&keys.log, &keys.seq, &keys.first, &keys.nodes, &keys.state] {
            assert!(key.starts_with("{app}:"), "{key}");
        }
        let set = keys.presence("rooms/1", "ann");
        assert!(set.starts_with("{app}:"));
        assert_eq!(
            keys.pair(&set),
            Some((Topic::new("rooms/1").unwrap(), "ann".into()))
        );
        // Another log's set, or a user with the separator, is not ours.
        assert_eq!(Keys::new("other").pair(&set), None);
        assert_eq!(keys.pair("{app}:presence:no-user"), None);
        assert_eq!(keys.node_presence("n1"), "{app}:node-presence:n1");
    }

    #[test]
    fn entries_decode_to_events_controls_and_unreadable_records() {
        let draft = serde_json::to_string(&EventDraft {
            topics: vec![Topic::new("a").unwrap()],
            data: "hi".into(),
            ..Default::default()
        })
        .unwrap();
        let control = serde_json::to_string(&Control::Acked {
            user: "ann".into(),
            ids: vec![EventId(5)],
        })
        .unwrap();
        let page = Value::Array(vec![
            entry("1-5", &[("d", &draft)]),
            entry("1-6", &[("c", &control)]),
            entry("1-7", &[("d", "{not json")]),
        ]);
        let entries = decode_entries(page).unwrap();
        assert_eq!(entries.len(), 3);
        match &entries[0] {
            Entry::Event(e) => {
                assert_eq!((e.id, &*e.data), (EventId(1005), "hi"));
                assert_eq!(e.published_at_ms, 1, "the stream id's ms part");
            }
            other => panic!("{other:?}"),
        }
        assert!(matches!(
            &entries[1],
            Entry::Control {
                id: EventId(1006),
                ..
            }
        ));
        assert!(matches!(
            &entries[2],
            Entry::Unreadable {
                id: EventId(1007),
                ..
            }
        ));
        // Nothing (no stream yet) is no entries.
        assert!(decode_entries(Value::Nil).unwrap().is_empty());
    }

    #[test]
    fn an_entry_herald_did_not_write_is_corrupt() {
        for bad in [
            entry("1-1000", &[("d", "{}")]),
            entry("1-1", &[("x", "{}")]),
            Value::Array(vec![bulk("1-1")]),
            bulk("1-1"),
        ] {
            assert!(
                matches!(
                    decode_entries(Value::Array(vec![bad.clone()])),
                    Err(ConnectError::Corrupt { .. })
                ),
                "{bad:?}"
            );
        }
    }

    fn info(length: u64, added: u64, first: &str, last: &str) -> Value {
        Value::Map(vec![
            (bulk("length"), Value::Int(length as i64)),
            (bulk("entries-added"), Value::Int(added as i64)),
            (bulk("recorded-first-entry-id"), bulk(first)),
            (bulk("last-generated-id"), bulk(last)),
        ])
    }

    #[test]
    fn trimming_is_read_from_the_stream_info() {
        // Never trimmed.
        assert_eq!(trimmed_from_info(info(3, 3, "1-1", "1-3")), 0);
        // Trimmed: everything before the first remaining entry is gone.
        assert_eq!(trimmed_from_info(info(2, 5, "2-4", "2-5")), 2003);
        // Trimmed to nothing: everything up to the last id is gone.
        assert_eq!(trimmed_from_info(info(0, 5, "0-0", "2-5")), 2005);
        // RESP2 answers a flat array of pairs.
        let flat = Value::Array(vec![
            bulk("length"),
            Value::Int(1),
            bulk("entries-added"),
            Value::Int(4),
            bulk("recorded-first-entry-id"),
            bulk("3-0"),
        ]);
        assert_eq!(trimmed_from_info(flat), 2999);
        assert_eq!(trimmed_from_info(Value::Nil), 0);
    }
}
