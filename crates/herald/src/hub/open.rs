//! Opening a stream or a long poll: the checks, the limits, the
//! registration with fan-out and where the backlog starts; and changing an
//! open stream's subscriptions.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use bytes::Bytes;

use super::Hub;
use crate::access::auth::{now_secs, AuthError, Proof};
use crate::access::limits::LimitRefusal;
use crate::config::Config;
use crate::delivery::connection::Connection;
use crate::delivery::fanout::Fanout;
use crate::delivery::stream::{EventBody, Opened, StreamHost, Writer};
use crate::log::{EventLog, ReadFrom};
use crate::metrics::Metrics;
use crate::requests::subscribe::{
    parse_event_types, parse_last_event_id, parse_patterns, Refusal, Start, SubscribeError,
    SubscribeRequest,
};
use crate::values::event::{EventId, SharedEvent};
use crate::values::pattern::Pattern;
use crate::values::selector::Selector;

/// Why a change of an open stream's subscriptions was refused.
#[derive(Debug, thiserror::Error)]
pub enum ResubscribeError {
    /// No open stream has this connection id (on this node).
    #[error("no open connection has the id {0:?}")]
    UnknownConnection(String),
    /// A pattern or parameter was refused.
    #[error(transparent)]
    Subscribe(#[from] SubscribeError),
    /// The caller may not change this stream.
    #[error(transparent)]
    Auth(#[from] AuthError),
}

/// What [`Hub::open`] gives back.
pub(crate) enum Opening {
    Opened(Opened),
    /// Refused for now (limits, shutdown); the client should retry later.
    Refused(Refusal),
}

/// What `subscribe` gives back.
pub enum Subscription {
    /// An open stream; its connection id is in `herald.connected`.
    Stream {
        /// The stream's connection id, for direct events and the admin API.
        connection_id: Arc<str>,
        /// The SSE bytes, to be written as the response body.
        body: EventBody,
    },
    /// Refused for now (limits, shutdown); the client should retry later.
    Refused(Refusal),
}

impl Hub {
    /// Opens a stream, or says why not (see SPEC §3).
    pub async fn subscribe(
        &self,
        request: SubscribeRequest,
    ) -> Result<Subscription, SubscribeError> {
        let opened = match self.open(request).await? {
            Opening::Opened(opened) => opened,
            Opening::Refused(refusal) => return Ok(Subscription::Refused(refusal)),
        };
        let connection_id = opened.conn.id.clone();
        let writer = Writer::new(self.clone(), opened);
        Ok(Subscription::Stream {
            connection_id,
            body: writer.into_stream(),
        })
    }

    /// What SSE streams and long polls share: checks, limits, registration
    /// with fan-out, and where the backlog starts. The connection is
    /// registered; whoever holds the result must unregister it when done.
    pub(crate) async fn open(&self, request: SubscribeRequest) -> Result<Opening, SubscribeError> {
        let config = &self.shared.config;
        let patterns = parse_patterns(&request.topics, config.limits.max_topics_per_connection)?;
        let event_types = parse_event_types(&request.event_types)?;
        if let Some(n) = request.history {
            if n > config.stream.max_history {
                return Err(SubscribeError::BadParameter(
                    "history",
                    format!(
                        "asks for {n} events; the limit is {}",
                        config.stream.max_history
                    ),
                ));
            }
        }
        let identity = match request.identity.clone() {
            Some(identity) => identity,
            None => self.authenticate(None).await?,
        };
        if let Some(denied) = patterns.iter().find(|p| !identity.subscribe.allows(p)) {
            return Err(SubscribeError::Auth(match identity.proof {
                Proof::Anonymous => AuthError::Missing(format!("reading {denied} needs a token")),
                _ => AuthError::Forbidden(format!("the token may not read {denied}")),
            }));
        }
        if identity.valid_until.is_some_and(|t| t <= now_secs()) {
            return Err(SubscribeError::Auth(AuthError::Expired));
        }
        if self.is_shutting_down() {
            self.shared.metrics.stream_refused("shutting_down");
            return Ok(Opening::Refused(Refusal::shutting_down(
                self.jittered_retry_ms(),
            )));
        }
        if let Some(ip) = request.peer {
            if let Err(wait) = self.shared.rates.check_connect(ip) {
                let retry = (wait.as_millis() as u64).max(self.jittered_retry_ms());
                let refusal = Refusal::limit(LimitRefusal::ConnectRate, retry);
                self.shared.metrics.stream_refused(refusal.error);
                return Ok(Opening::Refused(refusal));
            }
        }
        let user = identity.user.as_deref();
        let permit = match self.shared.limiter.try_acquire(request.peer, user) {
            Ok(permit) => permit,
            Err(reason) => {
                self.shared.metrics.stream_refused(reason.code());
                return Ok(Opening::Refused(Refusal::limit(
                    reason,
                    self.jittered_retry_ms(),
                )));
            }
        };
        let key = self.shared.next_key.fetch_add(1, Ordering::Relaxed);
        let connection_id: Arc<str> = new_connection_id(key).into();
        let selector = Selector {
            connection_id: connection_id.clone(),
            patterns,
            event_types,
            user: identity.user.clone(),
            meta: identity.meta.clone(),
        };
        let mut conn = Connection::new(
            key,
            connection_id.clone(),
            selector,
            config.stream.queue_capacity,
            config.stream.overflow,
            request.transport.clone(),
        );
        conn.rights = identity.subscribe.clone();
        conn.is_stream = !request.long_poll;
        let conn = Arc::new(conn);
        let resumed_after = request
            .last_event_id
            .as_deref()
            .and_then(parse_last_event_id);
        if let Some(after) = resumed_after {
            // Clustered, the id may come from a node ahead of this one.
            if let Some(cluster) = self.shared.log.cluster() {
                cluster.catch_up(after).await;
            }
        }
        let head = self.shared.fanout.register(conn.clone());
        // From here on the writer owns the registration: dropping it (on any
        // error below too) unregisters the connection.
        let start = match self.start(&request, &conn, head).await {
            Ok(start) => {
                let m = &self.shared.metrics;
                match start {
                    Start::Replay(_) => Metrics::add(&m.replays, 1),
                    Start::Reset(crate::log::Coverage::Expired) => {
                        Metrics::add(&m.resets_expired, 1)
                    }
                    Start::Reset(_) => Metrics::add(&m.resets_unknown, 1),
                    Start::Live => {}
                }
                start
            }
            Err(err) => {
                if matches!(err, SubscribeError::Log(_)) {
                    Metrics::add(&self.shared.metrics.log_errors, 1);
                }
                self.shared.fanout.unregister(key);
                return Err(err);
            }
        };
        // Long polls answer events only: no snapshot to build and drop.
        let snapshot = match (&request.last_event_id, request.long_poll) {
            (None, false) => match crate::delivery::state::SnapshotCursor::new(&conn.selector) {
                Some(mut cursor) => {
                    let first = self.state_page(&conn.selector, &mut cursor).await;
                    Some((first.unwrap_or_default(), cursor))
                }
                None => None,
            },
            _ => None,
        };
        let waiting = match &conn.selector.user {
            Some(user) => {
                let mut waiting = self
                    .shared
                    .inboxes()
                    .waiting_for(user, &conn.selector, head);
                // A direct message at or below the id a client resumes from
                // reached it already (on another stream, or another node
                // whose word has not arrived yet); one awaiting an
                // acknowledgement comes again until it is acknowledged.
                if let Some(after) = resumed_after {
                    waiting.retain(|e| e.require_ack || e.id > after);
                }
                waiting
            }
            None => Vec::new(),
        };
        let position = match start {
            Start::Replay(ReadFrom::After(id)) => id.to_string(),
            Start::Replay(_) => String::new(),
            Start::Live => match resumed_after {
                Some(id) => id.to_string(),
                None if head.0 == 0 => String::new(),
                None => head.to_string(),
            },
            Start::Reset(_) => head.to_string(),
        };
        Ok(Opening::Opened(Opened {
            conn,
            permit,
            head,
            start,
            valid_until: identity.valid_until,
            snapshot,
            waiting,
            position,
        }))
    }

    async fn start(
        &self,
        request: &SubscribeRequest,
        conn: &Connection,
        head: EventId,
    ) -> Result<Start, SubscribeError> {
        if let Some(raw) = &request.last_event_id {
            let Some(after) = parse_last_event_id(raw) else {
                return Ok(Start::Reset(crate::log::Coverage::Unknown));
            };
            let coverage = self.shared.log.coverage(after, &conn.selector).await?;
            return Ok(match coverage.reset_reason() {
                None if after >= head => Start::Live,
                None => Start::Replay(ReadFrom::After(after)),
                Some(_) => Start::Reset(coverage),
            });
        }
        Ok(match (request.history, request.since) {
            (Some(0), None) | (None, None) => Start::Live,
            (_, Some(ms)) => Start::Replay(ReadFrom::Since(ms)),
            (Some(n), None) => Start::Replay(ReadFrom::Last(n)),
        })
    }

    /// Adds and removes patterns of an open stream, with the same checks
    /// as subscribing: valid patterns, the connection's own token rights,
    /// `limits.max_topics_per_connection`. Events of added patterns arrive
    /// from now on (no backlog).
    pub fn resubscribe(
        &self,
        id: &str,
        add: &[String],
        remove: &[String],
    ) -> Result<Vec<Pattern>, ResubscribeError> {
        let conn = self
            .shared
            .fanout
            .connection(id)
            .ok_or_else(|| ResubscribeError::UnknownConnection(id.to_owned()))?;
        let add = parse_patterns(add, 0)?;
        let remove = parse_patterns(remove, 0)?;
        if let Some(denied) = add.iter().find(|p| !conn.rights.allows(p)) {
            return Err(ResubscribeError::Auth(AuthError::Forbidden(format!(
                "the connection's token may not read {denied}"
            ))));
        }
        let limit = self.shared.config.limits.max_topics_per_connection;
        // The same order as `Fanout::resubscribe`: removals, then additions.
        let mut result = conn.patterns();
        result.retain(|p| !remove.contains(p));
        for p in &add {
            if !result.contains(p) {
                result.push(p.clone());
            }
        }
        let after = result.len();
        if limit != 0 && after > limit {
            return Err(SubscribeError::TooManyTopics {
                count: after,
                limit,
            }
            .into());
        }
        self.shared
            .fanout
            .resubscribe(conn.key, &add, &remove)
            .ok_or_else(|| ResubscribeError::UnknownConnection(id.to_owned()))
    }
}

/// Public connection ids: not sequential, so one stream's id does not give
/// away its neighbours'.
fn new_connection_id(key: u64) -> String {
    format!("c{key:x}-{:016x}", fastrand::u64(..))
}

impl StreamHost for Hub {
    fn config(&self) -> &Config {
        &self.shared.config
    }

    fn log(&self) -> &Arc<dyn EventLog> {
        &self.shared.log
    }

    fn metrics(&self) -> &Arc<Metrics> {
        &self.shared.metrics
    }

    fn fanout(&self) -> &Arc<Fanout> {
        &self.shared.fanout
    }

    fn is_shutting_down(&self) -> bool {
        Hub::is_shutting_down(self)
    }

    fn jittered_retry_ms(&self) -> u64 {
        Hub::jittered_retry_ms(self)
    }

    fn waited_events_delivered(&self, conn: &Connection, events: &[SharedEvent]) {
        Hub::waited_events_delivered(self, conn, events)
    }

    fn state_page<'a>(
        &'a self,
        selector: &'a Selector,
        cursor: &'a mut crate::delivery::state::SnapshotCursor,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = Option<Bytes>> + Send + 'a>> {
        Box::pin(Hub::state_page(self, selector, cursor))
    }
}
