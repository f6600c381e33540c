//! Long polling (`GET /v1/poll`, SPEC §8): the same subscription as SSE,
//! answered as one JSON batch, for clients and proxies that cannot hold a
//! stream open.
//!
//! Each poll opens a connection exactly as a stream does (rights, limits,
//! registration with fan-out before the backlog is read) and ends it before
//! answering. A backlog (`lastEventId`, `history`, `since`) is answered at
//! once, at most `stream.replay_batch` events; otherwise the poll waits for
//! live events until its timeout. The answer's `last_event_id` is where the
//! next poll continues: the last event returned, or, when none was, the
//! hub's head at the time (nothing matching was missed up to it). So a
//! client that always sends back `last_event_id` receives every event
//! exactly once, as a stream would.
//!
//! This file holds what a poll answers; `hub/poll.rs` answers it.

use std::time::Duration;

use crate::requests::subscribe::Refusal;
use crate::values::event::{EventId, SharedEvent};

/// Default wait, below the 30 s idle timeout of many proxies.
pub(crate) const DEFAULT_TIMEOUT: Duration = Duration::from_secs(25);
/// Longest wait a poll may ask for.
pub(crate) const MAX_TIMEOUT: Duration = Duration::from_secs(120);

/// What a long poll gives back.
#[derive(Debug)]
pub enum Polled {
    /// Events (maybe none, at the timeout), and where to go on.
    Answer(PollAnswer),
    /// Refused for now (limits, shutdown); the client should retry later.
    Refused(Refusal),
}

/// One poll's answer.
#[derive(Debug)]
pub struct PollAnswer {
    /// What the poll receives, oldest first.
    pub events: Vec<SharedEvent>,
    /// Where the next poll continues (its `lastEventId`).
    pub last_event_id: EventId,
    /// Set when the given id could not be resumed (`herald.reset` on SSE).
    pub reset: Option<&'static str>,
}
