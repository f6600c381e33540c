//! Answering a long poll (see [`crate::delivery::poll`]).

use std::time::Duration;

use super::{Hub, Opening};
use crate::delivery::poll::{PollAnswer, Polled, MAX_TIMEOUT};
use crate::log::ReadRequest;
use crate::requests::subscribe::{Start, SubscribeError, SubscribeRequest};
use crate::values::event::{EventId, SharedEvent};

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
                until.saturating_sub(crate::access::auth::now_secs()),
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
