//! Publish requests (SPEC §4): the JSON a publisher sends, and its
//! validation into an [`EventDraft`] the log can commit.

use serde::{Deserialize, Deserializer, Serialize};
use serde_json::{Map, Value};

use crate::access::auth::{AuthError, Identity, Proof, Rights};
use crate::config::LimitsConfig;
use crate::log::LogError;
use crate::values::event::{EventDraft, Target};
use crate::values::topic::{Topic, TopicError};

/// Longest event name, idempotency or coalesce key, user or connection id,
/// in characters.
pub(crate) const MAX_NAME_CHARS: usize = 256;

/// The event type of retained-state changes (SPEC §6). Only the hub
/// publishes it, from the state API: a publisher that could send it would
/// rewrite retained values behind the versions' back.
pub(crate) const STATE_EVENT: &str = "state";

/// One event to publish, as in the body of `POST /v1/publish`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PublishRequest {
    /// The topic to publish on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<crate::values::schema::TopicName>)]
    pub topic: Option<String>,
    /// Topics to publish on, each receiving the one event.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schema(value_type = Vec<crate::values::schema::TopicName>)]
    pub topics: Vec<String>,
    /// SSE event type; absent or `message` is the default type.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<crate::values::schema::PublishedEventName>)]
    pub event: Option<String>,
    /// A string is sent as is; any other JSON value as compact JSON.
    #[serde(
        default,
        deserialize_with = "present",
        skip_serializing_if = "Option::is_none"
    )]
    pub data: Option<Value>,
    /// Not supported yet (retained state): refused when set.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    #[schema(ignore)]
    pub retain: bool,
    /// Not supported yet (retained state): refused when set.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(ignore)]
    pub key: Option<String>,
    /// Seconds the event stays in history (0: delivered live, never replayed).
    #[serde(
        default,
        deserialize_with = "whole_seconds",
        skip_serializing_if = "Option::is_none"
    )]
    pub ttl: Option<u64>,
    /// Users or connections to address directly.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub to: Option<PublishTo>,
    /// Every connection receives it, whatever it subscribed to.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub broadcast: bool,
    /// Only connections whose verified `herald.meta` claims hold these
    /// values receive it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Object>)]
    pub filter: Option<Map<String, Value>>,
    /// Keep the event pending for each of `to.users` until they
    /// `POST /v1/ack` its id (or its `ttl` ends); each new connection of
    /// theirs receives pending events first. Needs `to.users`.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub require_ack: bool,
    /// A later event with the same key and topic replaces this one in
    /// history and in queues not yet written.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<crate::values::schema::ShortName>)]
    pub coalesce_key: Option<String>,
    /// A publish repeated with the same key (within
    /// `history.idempotency_window_secs`) is stored once and answered
    /// with the first id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<crate::values::schema::ShortName>)]
    pub idempotency_key: Option<String>,
}

/// `to`: direct addressing.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PublishTo {
    /// Every connection of these users.
    #[serde(default)]
    #[schema(value_type = Vec<crate::values::schema::ShortName>)]
    pub users: Vec<String>,
    /// These connections (ids from `herald.connected`).
    #[serde(default)]
    #[schema(value_type = Vec<crate::values::schema::ShortName>)]
    pub connections: Vec<String>,
}

/// A whole number of seconds; `30.0` is as good as `30` (JSON has one
/// number type), `30.5` is not.
fn whole_seconds<'de, D: Deserializer<'de>>(d: D) -> Result<Option<u64>, D::Error> {
    let Some(n) = Option::<serde_json::Number>::deserialize(d)? else {
        return Ok(None);
    };
    if let Some(v) = n.as_u64() {
        return Ok(Some(v));
    }
    match n.as_f64() {
        Some(f) if f >= 0.0 && f.fract() == 0.0 && f < u64::MAX as f64 => Ok(Some(f as u64)),
        _ => Err(serde::de::Error::custom(format!(
            "`ttl` must be a whole number of seconds, got {n}"
        ))),
    }
}

/// Tells an explicit `"data": null` (sent as `null`) from no `data` (empty).
fn present<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Value>, D::Error> {
    Value::deserialize(d).map(Some)
}

impl PublishRequest {
    /// An event on one topic.
    pub fn topic(topic: impl Into<String>, data: impl Into<Value>) -> PublishRequest {
        PublishRequest {
            topic: Some(topic.into()),
            data: Some(data.into()),
            ..Default::default()
        }
    }

    /// Sets the SSE event type.
    pub fn event(mut self, event: impl Into<String>) -> PublishRequest {
        self.event = Some(event.into());
        self
    }
}

/// Why a publish was refused.
#[derive(Debug, thiserror::Error)]
pub enum PublishError {
    /// No topic, target or broadcast.
    #[error("an event needs at least one of `topic`, `topics`, `to` or `broadcast`")]
    NoDestination,
    /// A topic is not a valid topic.
    #[error("topic {0:?} {1}")]
    BadTopic(String, TopicError),
    /// The event type is not a valid name (or is reserved).
    #[error("event names {1}; got {0:?}")]
    BadEventName(String, &'static str),
    /// A field is not valid (the field, and why).
    #[error("`{0}` {1}")]
    BadField(&'static str, String),
    #[error("event data is {size} bytes; the limit is {limit}")]
    /// The data is larger than `limits.max_event_bytes`.
    TooLarge {
        /// Its size in bytes.
        size: usize,
        /// The limit.
        limit: usize,
    },
    /// A field this version does not support yet.
    #[error("`{0}` is not supported by this version of Herald yet")]
    Unsupported(&'static str),
    /// A batch without events.
    #[error("a batch needs at least one event")]
    EmptyBatch,
    /// A batch with more events than allowed.
    #[error("a batch holds at most {0} events")]
    BatchTooLarge(usize),
    /// One event of a batch was refused, so the batch was.
    #[error("event {index} of the batch: {source}")]
    InBatch {
        /// Its position in the batch, from 0.
        index: usize,
        /// Why it was refused.
        source: Box<PublishError>,
    },
    /// The publisher may not publish this.
    #[error(transparent)]
    Auth(#[from] crate::access::auth::AuthError),
    /// The log could not store it.
    #[error(transparent)]
    Log(#[from] LogError),
}

/// Whether `identity` may publish `draft`. Broadcasts and events without
/// topics reach connections whatever they subscribed to, so they need
/// admin rights (an API key or `herald.admin`).
pub(crate) fn check_rights(identity: &Identity, draft: &EventDraft) -> Result<(), AuthError> {
    if identity.publish == Rights::All {
        return Ok(());
    }
    let needs_token = || AuthError::Missing("publishing needs a token or an API key".into());
    if draft.target.broadcast || draft.topics.is_empty() {
        return match (identity.admin, identity.proof) {
            (true, _) => Ok(()),
            (false, Proof::Anonymous) => Err(needs_token()),
            (false, _) => Err(AuthError::Forbidden(
                "broadcasts and events without topics need herald.admin or an API key".into(),
            )),
        };
    }
    match draft
        .topics
        .iter()
        .find(|t| !identity.publish.allows_topic(t))
    {
        None => Ok(()),
        Some(_) if identity.proof == Proof::Anonymous => Err(needs_token()),
        Some(topic) => Err(AuthError::Forbidden(format!(
            "the token may not publish to {topic}"
        ))),
    }
}

fn check_name(field: &'static str, value: &str) -> Result<(), PublishError> {
    if value.is_empty() {
        return Err(PublishError::BadField(field, "must not be empty".into()));
    }
    let chars = value.chars().count();
    if chars > MAX_NAME_CHARS {
        return Err(PublishError::BadField(
            field,
            format!("is {chars} characters; the limit is {MAX_NAME_CHARS}"),
        ));
    }
    Ok(())
}

fn check_event_name(name: &str) -> Result<(), PublishError> {
    let bad = |why| Err(PublishError::BadEventName(name.into(), why));
    if name.is_empty() || name.chars().count() > MAX_NAME_CHARS {
        return bad("must be 1 to 256 characters");
    }
    if name.chars().any(char::is_control) {
        return bad("must not contain CR, LF or other control characters");
    }
    if name.starts_with("herald.") {
        return bad("starting with `herald.` are reserved for the hub");
    }
    if name == STATE_EVENT {
        return bad(
            "`state` is reserved for the hub: retained state changes only through /v1/state",
        );
    }
    Ok(())
}

/// Validates one request into a draft.
pub(crate) fn validate(
    req: PublishRequest,
    limits: &LimitsConfig,
) -> Result<EventDraft, PublishError> {
    if req.retain || req.key.is_some() {
        return Err(PublishError::Unsupported(if req.retain {
            "retain"
        } else {
            "key"
        }));
    }
    if req.require_ack {
        let users = req.to.as_ref().map_or(0, |to| to.users.len());
        if users == 0 || req.broadcast {
            return Err(PublishError::BadField(
                "require_ack",
                "needs `to.users` and no `broadcast`: acknowledgements are kept per user".into(),
            ));
        }
    }
    let mut topics: Vec<Topic> = Vec::with_capacity(req.topics.len() + 1);
    for name in req.topic.iter().chain(&req.topics) {
        let topic = Topic::new(name).map_err(|e| PublishError::BadTopic(name.clone(), e))?;
        if !topics.contains(&topic) {
            topics.push(topic);
        }
    }
    if topics.len() > limits.max_topics_per_event {
        return Err(PublishError::BadField(
            "topics",
            format!(
                "names {} topics; the limit is {}",
                topics.len(),
                limits.max_topics_per_event
            ),
        ));
    }
    let to = req.to.unwrap_or_default();
    for (field, names) in [("to.users", &to.users), ("to.connections", &to.connections)] {
        if names.len() > limits.max_recipients {
            return Err(PublishError::BadField(
                field,
                format!(
                    "names {} recipients; the limit is {} (limits.max_recipients)",
                    names.len(),
                    limits.max_recipients
                ),
            ));
        }
    }
    for user in &to.users {
        check_name("to.users", user)?;
    }
    for conn in &to.connections {
        check_name("to.connections", conn)?;
    }
    if let Some(filter) = &req.filter {
        // Kept in the log with the event: bounded so every store reads it back.
        let depth = 1 + filter
            .values()
            .map(crate::values::json::depth)
            .max()
            .unwrap_or(0);
        if depth > crate::values::json::MAX_DEPTH {
            return Err(PublishError::BadField(
                "filter",
                format!(
                    "nests {depth} levels deep; the limit is {}",
                    crate::values::json::MAX_DEPTH
                ),
            ));
        }
    }
    let target = Target {
        users: to.users,
        connections: to.connections,
        broadcast: req.broadcast,
        filter: req.filter,
    };
    if topics.is_empty() && !target.is_addressed() && !target.broadcast {
        return Err(PublishError::NoDestination);
    }
    let event_type = match req.event {
        Some(name) => {
            check_event_name(&name)?;
            (name != "message").then_some(name)
        }
        None => None,
    };
    for (field, key) in [
        ("coalesce_key", &req.coalesce_key),
        ("idempotency_key", &req.idempotency_key),
    ] {
        if let Some(key) = key {
            check_name(field, key)?;
        }
    }
    let data = match req.data {
        None => String::new(),
        Some(Value::String(s)) => s,
        Some(other) => other.to_string(),
    };
    if data.len() > limits.max_event_bytes {
        return Err(PublishError::TooLarge {
            size: data.len(),
            limit: limits.max_event_bytes,
        });
    }
    Ok(EventDraft {
        topics,
        event_type,
        data,
        target,
        ttl_secs: req.ttl,
        coalesce_key: req.coalesce_key,
        idempotency_key: req.idempotency_key,
        require_ack: req.require_ack,
    })
}

/// Validates a batch: every event, or none.
pub(crate) fn validate_batch(
    reqs: Vec<PublishRequest>,
    limits: &LimitsConfig,
) -> Result<Vec<EventDraft>, PublishError> {
    if reqs.is_empty() {
        return Err(PublishError::EmptyBatch);
    }
    if reqs.len() > limits.max_batch {
        return Err(PublishError::BatchTooLarge(limits.max_batch));
    }
    let single = reqs.len() == 1;
    reqs.into_iter()
        .enumerate()
        .map(|(index, r)| {
            validate(r, limits).map_err(|e| match single {
                true => e,
                false => PublishError::InBatch {
                    index,
                    source: Box::new(e),
                },
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn parse(v: Value) -> Result<EventDraft, PublishError> {
        let req: PublishRequest = serde_json::from_value(v).expect("well-formed request");
        validate(req, &LimitsConfig::default())
    }

    #[test]
    fn data_strings_pass_and_values_become_compact_json() {
        assert_eq!(
            parse(json!({"topic": "a", "data": "hi"})).unwrap().data,
            "hi"
        );
        assert_eq!(
            parse(json!({"topic": "a", "data": {"x": [1, 2]}}))
                .unwrap()
                .data,
            r#"{"x":[1,2]}"#
        );
        assert_eq!(
            parse(json!({"topic": "a", "data": null})).unwrap().data,
            "null"
        );
        assert_eq!(parse(json!({"topic": "a"})).unwrap().data, "");
    }

    #[test]
    fn topics_merge_and_dedupe() {
        let d = parse(json!({"topic": "a", "topics": ["b", "a"]})).unwrap();
        let names: Vec<&str> = d.topics.iter().map(Topic::as_str).collect();
        assert_eq!(names, ["a", "b"]);
    }

    #[test]
    fn refusals() {
        assert!(matches!(
            parse(json!({"data": "x"})),
            Err(PublishError::NoDestination)
        ));
        assert!(matches!(
            parse(json!({"topic": "a b"})),
            Err(PublishError::BadTopic(..))
        ));
        assert!(matches!(
            parse(json!({"topic": "a/*"})),
            Err(PublishError::BadTopic(..))
        ));
        for name in ["a\nb", "a\rb", "", "herald.connected", "state"] {
            assert!(
                matches!(
                    parse(json!({"topic": "a", "event": name})),
                    Err(PublishError::BadEventName(..))
                ),
                "{name:?}"
            );
        }
        let big = "x".repeat(64 * 1024 + 1);
        assert!(matches!(
            parse(json!({"topic": "a", "data": big})),
            Err(PublishError::TooLarge { .. })
        ));
        assert!(matches!(
            parse(json!({"topic": "a", "retain": true})),
            Err(PublishError::Unsupported(_))
        ));
        assert!(
            serde_json::from_value::<PublishRequest>(json!({"topic": "a", "topci": 1})).is_err()
        );
        assert!(serde_json::from_value::<PublishRequest>(json!({"topic": 5})).is_err());
    }

    #[test]
    fn message_is_the_default_type() {
        assert_eq!(
            parse(json!({"topic": "a", "event": "message"}))
                .unwrap()
                .event_type,
            None
        );
    }

    #[test]
    fn batches_name_the_bad_event() {
        let reqs = vec![
            PublishRequest::topic("a", "x"),
            PublishRequest::topic("b c", "y"),
        ];
        let err = validate_batch(reqs, &LimitsConfig::default()).unwrap_err();
        assert!(
            err.to_string()
                .starts_with("event 1 of the batch: topic \"b c\""),
            "{err}"
        );
        assert!(matches!(
            validate_batch(vec![], &LimitsConfig::default()),
            Err(PublishError::EmptyBatch)
        ));
    }
}
