//! Subscribe requests (SPEC §3): parameters, validation, and where a new
//! stream starts — resume after a Last-Event-ID, a `history`/`since`
//! backlog, or live only.

use std::net::IpAddr;

use crate::access::auth::{AuthError, Identity};
use crate::access::limits::LimitRefusal;
use crate::log::{Coverage, LogError, ReadFrom};
use crate::values::event::EventId;
use crate::values::pattern::Pattern;
use crate::values::topic::TopicError;

/// What a subscriber asks for, parsed from the query string and headers.
#[derive(Debug, Clone, Default)]
pub struct SubscribeRequest {
    /// `topic=` (repeatable).
    pub topics: Vec<String>,
    /// `Last-Event-ID` header, else the `lastEventId` parameter.
    pub last_event_id: Option<String>,
    /// `history=N`: the last N matching events, on a fresh connect.
    pub history: Option<usize>,
    /// `since=UNIX_MS`: matching events published at or after, on a fresh connect.
    pub since: Option<u64>,
    /// `event=` (repeatable): only these types.
    pub event_types: Vec<String>,
    /// The client's address, for per-address limits.
    pub peer: Option<IpAddr>,
    /// Who is asking; `None` is an anonymous caller (in dev mode, anyone).
    pub identity: Option<Identity>,
    /// Thrown by the hub when the stream must end at once (its queue
    /// overflowed), so the transport can drop a socket whose writes are
    /// blocked.
    pub transport: Option<crate::Hangup>,
    /// A long poll: a connection for one answer, which joins and leaves no
    /// topic in presence events.
    pub(crate) long_poll: bool,
}

impl SubscribeRequest {
    /// Parses a query string. Unknown parameters are ignored, so clients
    /// can add cache-busters and tokens.
    pub fn from_query(query: &str) -> Result<SubscribeRequest, SubscribeError> {
        let mut req = SubscribeRequest::default();
        for (key, value) in form_urlencoded::parse(query.as_bytes()) {
            match &*key {
                "topic" => req.topics.push(value.into_owned()),
                "event" => req.event_types.push(value.into_owned()),
                "lastEventId" => req.last_event_id = Some(value.into_owned()),
                "history" => {
                    let n = value.parse().map_err(|_| {
                        SubscribeError::BadParameter("history", "must be a whole number".into())
                    })?;
                    req.history = Some(n);
                }
                "since" => {
                    let ms = value.parse().map_err(|_| {
                        SubscribeError::BadParameter(
                            "since",
                            "must be a Unix time in milliseconds".into(),
                        )
                    })?;
                    req.since = Some(ms);
                }
                _ => {}
            }
        }
        Ok(req)
    }
}

/// Why a stream was refused before it started (a final refusal).
#[derive(Debug, thiserror::Error)]
pub enum SubscribeError {
    /// A pattern is not a valid pattern.
    #[error("pattern {0:?} {1}")]
    BadPattern(String, TopicError),
    #[error("{count} topics asked; the limit per connection is {limit}")]
    /// More topics than a connection may subscribe to.
    TooManyTopics {
        /// Topics asked.
        count: usize,
        /// `limits.max_topics_per_connection`.
        limit: usize,
    },
    /// A query parameter is not valid (the parameter, and why).
    #[error("`{0}` {1}")]
    BadParameter(&'static str, String),
    /// The subscriber may not read this.
    #[error(transparent)]
    Auth(#[from] AuthError),
    /// History could not be read.
    #[error(transparent)]
    Log(#[from] LogError),
}

/// A temporary refusal: answered `200` with `herald.refused` so that
/// EventSource clients come back by themselves.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    /// A stable code, e.g. `too_many_connections`.
    pub error: &'static str,
    /// What happened, for people.
    pub message: &'static str,
    /// Jittered wait before the client tries again.
    pub retry_after_ms: u64,
}

impl Refusal {
    pub(crate) fn limit(reason: LimitRefusal, retry_after_ms: u64) -> Refusal {
        Refusal {
            error: reason.code(),
            message: reason.message(),
            retry_after_ms,
        }
    }

    pub(crate) fn shutting_down(retry_after_ms: u64) -> Refusal {
        Refusal {
            error: "shutting_down",
            message: "the hub is shutting down; try again shortly",
            retry_after_ms,
        }
    }
}

/// Parses and checks the patterns.
pub(crate) fn parse_patterns(
    topics: &[String],
    limit: usize,
) -> Result<Vec<Pattern>, SubscribeError> {
    if limit != 0 && topics.len() > limit {
        return Err(SubscribeError::TooManyTopics {
            count: topics.len(),
            limit,
        });
    }
    let mut patterns: Vec<Pattern> = Vec::with_capacity(topics.len());
    for t in topics {
        let p = Pattern::parse(t).map_err(|e| SubscribeError::BadPattern(t.clone(), e))?;
        if !patterns.contains(&p) {
            patterns.push(p);
        }
    }
    Ok(patterns)
}

/// Checks `event=` names: the same rule as for publishing, without the
/// reserved prefix (asking only for `herald.*` types is merely useless).
pub(crate) fn parse_event_types(types: &[String]) -> Result<Option<Vec<Box<str>>>, SubscribeError> {
    if types.is_empty() {
        return Ok(None);
    }
    for t in types {
        if t.is_empty() || t.len() > 256 || t.chars().any(char::is_control) {
            return Err(SubscribeError::BadParameter(
                "event",
                format!("{t:?} is not an event name"),
            ));
        }
    }
    Ok(Some(types.iter().map(|t| t.as_str().into()).collect()))
}

/// Where a stream's backlog starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Start {
    /// Live only.
    Live,
    /// Replay from the log first.
    Replay(ReadFrom),
    /// The Last-Event-ID cannot be resumed: tell the client, then go live.
    Reset(Coverage),
}

/// What a Last-Event-ID resolves to before history is consulted.
pub(crate) fn parse_last_event_id(raw: &str) -> Option<EventId> {
    raw.trim().parse().ok()
}

/// Fuzzing entry: a subscribe query string through parsing; patterns that
/// parse print back to themselves and cover what they match.
#[cfg(feature = "fuzzing")]
pub fn fuzz_query(query: &str) {
    let Ok(request) = SubscribeRequest::from_query(query) else {
        return;
    };
    let _ = parse_event_types(&request.event_types);
    let Ok(patterns) = parse_patterns(&request.topics, 64) else {
        return;
    };
    for p in &patterns {
        let again = Pattern::parse(p.as_str()).expect("a parsed pattern parses again");
        assert_eq!(again.as_str(), p.as_str());
        assert!(p.covers(p));
        if let Ok(topic) = crate::values::topic::Topic::new(p.as_str()) {
            assert!(p.matches(&topic));
        }
    }
}
