//! Events: what a publisher asks for ([`EventDraft`]) and what the log
//! commits ([`Event`], with its id, time and encoded SSE frame).

use std::sync::Arc;

use bytes::Bytes;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

pub use crate::values::id::EventId;
use crate::values::sse;
use crate::values::topic::Topic;

/// Who an event is addressed to besides (or instead of) its topics.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Target {
    /// Every connection of these users (`sub` of their token).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub users: Vec<String>,
    /// These connections, by the id sent in `herald.connected`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub connections: Vec<String>,
    /// Every connection.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub broadcast: bool,
    /// Claims (of the token's `herald.meta`) every receiver must have.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub filter: Option<Map<String, Value>>,
}

impl Target {
    /// True when the event names users or connections.
    pub fn is_addressed(&self) -> bool {
        !self.users.is_empty() || !self.connections.is_empty()
    }
}

/// Every claim named in `filter` must equal the connection's, or intersect
/// it when either side is an array.
pub(crate) fn filter_matches(filter: &Map<String, Value>, meta: &Map<String, Value>) -> bool {
    filter.iter().all(|(name, want)| {
        let Some(have) = meta.get(name) else {
            return false;
        };
        match (want, have) {
            (Value::Array(w), Value::Array(h)) => w.iter().any(|x| h.contains(x)),
            (Value::Array(w), h) => w.contains(h),
            (w, Value::Array(h)) => h.contains(w),
            (w, h) => w == h,
        }
    })
}

/// A validated event, before the log gives it an id.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct EventDraft {
    /// The topics it is published on (maybe none: a direct event).
    pub topics: Vec<Topic>,
    /// `None` is the default SSE type `message`.
    pub event_type: Option<String>,
    /// The `data:` text.
    pub data: String,
    /// Who else receives it: users, connections, everyone, and a filter.
    pub target: Target,
    /// Seconds of life in history.
    pub ttl_secs: Option<u64>,
    /// See [`PublishRequest::coalesce_key`](crate::PublishRequest).
    pub coalesce_key: Option<String>,
    /// See [`PublishRequest::idempotency_key`](crate::PublishRequest).
    pub idempotency_key: Option<String>,
    /// Stays pending for each user in `target.users` until acknowledged
    /// (SPEC §7).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub require_ack: bool,
}

/// A committed event. Shared (`Arc<Event>`) by the log, every subscriber
/// queue and every replay.
#[derive(Debug)]
pub struct Event {
    /// Its place in the log.
    pub id: EventId,
    /// Milliseconds since the Unix epoch; never decreases along the log.
    pub published_at_ms: u64,
    /// When it leaves history (Unix ms); `None`: by the caps only.
    pub expires_at_ms: Option<u64>,
    /// The topics it was published on.
    pub topics: Box<[Topic]>,
    /// The SSE type; `None` is `message`.
    pub event_type: Option<Box<str>>,
    /// The `data:` text.
    pub data: Box<str>,
    /// Who else receives it.
    pub target: Target,
    /// Its coalesce key, if any.
    pub coalesce_key: Option<Box<str>>,
    /// Its idempotency key, if any.
    pub idempotency_key: Option<Box<str>>,
    /// Stays pending for its users until acknowledged.
    pub require_ack: bool,
    /// The event as SSE bytes, encoded once and written to every subscriber.
    pub frame: Bytes,
    /// When this process committed (or loaded) it: for latency metrics.
    pub committed_at: std::time::Instant,
}

impl Event {
    /// Gives a draft its place in the log. Logs call this when they commit
    /// and again when they load stored events.
    pub fn commit(draft: EventDraft, id: EventId, published_at_ms: u64) -> Event {
        let frame = sse::encode_event(Some(id), draft.event_type.as_deref(), &draft.data);
        Event {
            id,
            published_at_ms,
            expires_at_ms: draft
                .ttl_secs
                .map(|s| published_at_ms.saturating_add(s.saturating_mul(1000))),
            topics: draft.topics.into(),
            event_type: draft.event_type.map(Into::into),
            data: draft.data.into(),
            target: draft.target,
            coalesce_key: draft.coalesce_key.map(Into::into),
            idempotency_key: draft.idempotency_key.map(Into::into),
            require_ack: draft.require_ack,
            frame,
            committed_at: std::time::Instant::now(),
        }
    }

    /// The draft this event was committed from (what a store persists).
    pub fn to_draft(&self) -> EventDraft {
        EventDraft {
            topics: self.topics.to_vec(),
            event_type: self.event_type.as_deref().map(Into::into),
            data: self.data.to_string(),
            target: self.target.clone(),
            ttl_secs: self
                .expires_at_ms
                .map(|e| (e - self.published_at_ms) / 1000),
            coalesce_key: self.coalesce_key.as_deref().map(Into::into),
            idempotency_key: self.idempotency_key.as_deref().map(Into::into),
            require_ack: self.require_ack,
        }
    }

    /// The SSE type, `message` when none was given.
    pub fn type_name(&self) -> &str {
        self.event_type.as_deref().unwrap_or("message")
    }

    /// Whether its time in history is over at `now_ms`.
    pub fn is_expired(&self, now_ms: u64) -> bool {
        self.expires_at_ms.is_some_and(|e| e <= now_ms)
    }
}

/// Shared handle to a committed event.
pub(crate) type SharedEvent = Arc<Event>;

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn map(v: Value) -> Map<String, Value> {
        v.as_object().unwrap().clone()
    }

    #[test]
    fn event_ids_parse_strictly() {
        assert_eq!("42".parse::<EventId>(), Ok(EventId(42)));
        for bad in ["", "-1", "+1", " 1", "1a", "99999999999999999999999"] {
            assert!(bad.parse::<EventId>().is_err(), "{bad}");
        }
    }

    #[test]
    fn filters_compare_and_intersect() {
        let meta = map(json!({"role": ["admin", "ops"], "tenant": "acme"}));
        assert!(filter_matches(&map(json!({"tenant": "acme"})), &meta));
        assert!(!filter_matches(&map(json!({"tenant": "other"})), &meta));
        assert!(filter_matches(&map(json!({"role": "ops"})), &meta));
        assert!(filter_matches(&map(json!({"role": ["x", "admin"]})), &meta));
        assert!(!filter_matches(&map(json!({"role": ["x"]})), &meta));
        assert!(!filter_matches(&map(json!({"plan": "pro"})), &meta));
        assert!(filter_matches(
            &map(json!({"tenant": ["acme", "b"]})),
            &meta
        ));
        assert!(filter_matches(&map(json!({})), &Map::new()));
    }

    #[test]
    fn draft_round_trips_through_commit() {
        let draft = EventDraft {
            topics: vec![Topic::new("a/b").unwrap()],
            event_type: Some("x".into()),
            data: "hi".into(),
            ttl_secs: Some(30),
            ..Default::default()
        };
        let e = Event::commit(draft.clone(), EventId(3), 1_000);
        assert_eq!(e.expires_at_ms, Some(31_000));
        assert_eq!(e.to_draft(), draft);
    }
}
