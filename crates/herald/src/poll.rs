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

use std::time::Duration;

use crate::event::{EventId, SharedEvent};
use crate::hub::{Hub, Opening};
use crate::log::ReadRequest;
use crate::subscribe::{Refusal, Start, SubscribeError, SubscribeRequest};

/// Default wait, below the 30 s idle timeout of many proxies.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(25);
/// Longest wait a poll may ask for.
pub const MAX_TIMEOUT: Duration = Duration::from_secs(120);

/// What a long poll gives back.
#[derive(Debug)]
pub enum Polled {
    Answer(PollAnswer),
    /// Refused for now (limits, shutdown); the client should retry later.
    Refused(Refusal),
}

/// One poll's answer.
#[derive(Debug)]
pub struct PollAnswer {
    pub events: Vec<SharedEvent>,
    /// Where the next poll continues (its `lastEventId`).
    pub last_event_id: EventId,
    /// Set when the given id could not be resumed (`herald.reset` on SSE).
    pub reset: Option<&'static str>,
}

/// Unregisters the poll's connection however the poll ends.
struct Registered<'a>(&'a Hub, u64);

impl Drop for Registered<'_> {
    fn drop(&mut self) {
        self.0.fanout().unregister(self.1);
    }
}

impl Hub {
    /// Answers one long poll (see the module documentation).
    pub async fn poll(
        &self,
        request: SubscribeRequest,
        timeout: Duration,
    ) -> Result<Polled, SubscribeError> {
        let mut request = request;
        request.long_poll = true;
        let opened = match self.open(request).await? {
            Opening::Opened(opened) => opened,
            Opening::Refused(refusal) => return Ok(Polled::Refused(refusal)),
        };
        let _registered = Registered(self, opened.conn.key);
        let _permit = opened.permit;
        let conn = opened.conn;
        let limit = self.config().stream.replay_batch;
        // What waited for the user comes first; it does not move
        // `last_event_id`, which follows the log.
        let waiting = opened.waiting;
        let answer = |events: Vec<SharedEvent>, last: EventId| {
            let last_event_id = events.last().map_or(last, |e| e.id);
            if !waiting.is_empty() {
                self.waited_events_delivered(&conn, &waiting);
            }
            let skip = |e: &SharedEvent| waiting.iter().any(|w| w.id == e.id);
            let events = waiting
                .iter()
                .cloned()
                .chain(events.into_iter().filter(|e| !skip(e)))
                .collect();
            Ok(Polled::Answer(PollAnswer {
                last_event_id,
                events,
                reset: None,
            }))
        };
        // Live events start after the head, or after the id the client
        // resumes from when that is later (fan-out may not have dispatched
        // an event its publisher was already answered for).
        let since = opened
            .position
            .parse()
            .map_or(opened.head, |p: u64| opened.head.max(EventId(p)));
        match opened.start {
            Start::Reset(coverage) => {
                let mut reset = answer(Vec::new(), opened.head);
                if let Ok(Polled::Answer(a)) = &mut reset {
                    a.reset = coverage.reset_reason();
                }
                return reset;
            }
            Start::Replay(from) => {
                let request = ReadRequest {
                    from,
                    until: opened.head,
                    limit,
                    selector: &conn.selector,
                };
                let page = crate::log::read_all(&**self.log(), request).await?;
                if !page.is_empty() || !waiting.is_empty() {
                    return answer(page, opened.head);
                }
            }
            Start::Live if !waiting.is_empty() => return answer(Vec::new(), since),
            Start::Live => {}
        }
        // Nothing waiting up to the head: wait for live events, no longer
        // than the timeout nor the token's life.
        let mut wait = timeout.min(MAX_TIMEOUT);
        if let Some(until) = opened.valid_until {
            wait = wait.min(Duration::from_secs(
                until.saturating_sub(crate::auth::now_secs()),
            ));
        }
        let deadline = tokio::time::Instant::now() + wait;
        let shutdown = self.shutdown_started();
        tokio::pin!(shutdown);
        loop {
            let mut events = Vec::new();
            let closed = conn.drain(&mut events);
            events.retain(|e| e.id > since);
            if !events.is_empty() || closed.is_some() || self.is_shutting_down() {
                return answer(events, since);
            }
            tokio::select! {
                _ = conn.ready() => {}
                _ = tokio::time::sleep_until(deadline) => return answer(Vec::new(), since),
                _ = &mut shutdown => {}
            }
        }
    }
}
