//! The SSE stream of one connection: the last step of the hot path.
//!
//! A stream writes, in order: `retry:` and `herald.connected`; on a fresh
//! connect one `state` event per retained key (`state.rs`); then either
//! `herald.reset` or the backlog read from the log in pages (never more than
//! `stream.replay_batch` events in memory); then live events from the
//! connection's queue; a `: ping` after each quiet heartbeat interval; and on
//! shutdown what is still queued, a jittered `retry:`, and the end.
//!
//! Exactly once, without gap: the connection joins fan-out *before* the
//! backlog is read, and learns the id `head` of the last event dispatched
//! before it joined (see `fanout.rs`). The backlog covers ids up to `head`;
//! the queue holds everything after. The writer tracks the last id it wrote
//! and skips anything at or below it, so an event can never be written twice.
//!
//! A live stream served on the server's socket path that finds nothing
//! queued parks its socket in its connection: its next events are written
//! by the courier (`courier.rs`) without waking it, and it takes the socket
//! back on its next drain.
//!
//! Everything waiting for the connection when the writer wakes goes out as
//! one chunk (one write), up to [`CHUNK_BYTES`]: past that the rest waits,
//! as shared handles, for the next chunk. So a client that stops reading
//! holds at most one chunk of copied bytes, whatever its backlog, inbox or
//! queue (the server closes a socket that accepts nothing for
//! `stream.write_timeout_secs`). Dropping the stream — the client went away, a write
//! failed, the stream ended — unregisters the connection and frees its slot.

use std::collections::VecDeque;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use futures_util::Stream;
use tokio::time::Sleep;

use crate::access::limits::ConnectionPermit;
use crate::config::Config;
use crate::delivery::connection::{clock_ms, clock_ms_at, CloseReason, Connection};
use crate::delivery::fanout::Fanout;
use crate::delivery::state::SnapshotCursor;
use crate::log::{EventLog, ReadFrom, ReadRequest};
use crate::metrics::Metrics;
use crate::requests::subscribe::Start;
use crate::values::event::{EventId, SharedEvent};
use crate::values::selector::Selector;
use crate::values::sse;

pub(crate) use crate::delivery::outlet::CHUNK_BYTES;
use crate::delivery::outlet::{Chunk, Outlet};

/// The body of an SSE response: chunks of encoded events.
pub(crate) type EventStream = Pin<Box<dyn EventSource>>;

/// One stream's SSE bytes, in chunks as they are ready: write each as it
/// comes, as the body of the response (see [`crate::Hub::subscribe`]).
pub struct EventBody(EventStream);

impl EventBody {
    /// The stream inside, for the server's socket path.
    pub(crate) fn into_inner(self) -> EventStream {
        self.0
    }
}

impl Stream for EventBody {
    type Item = Bytes;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Bytes>> {
        self.0.as_mut().poll_next(cx)
    }
}

/// A response body the server's socket path can hand its socket to.
pub(crate) trait EventSource: Stream<Item = Bytes> + Send {
    /// Gives the stream the socket its chunks are written to: while it
    /// has nothing queued, it parks the socket for the courier
    /// (`courier.rs`), which writes its next events without waking it.
    /// Streams served through hyper (HTTP/2, an embedding program) never
    /// get one, and other bodies ignore it.
    fn attach(self: Pin<&mut Self>, _outlet: Arc<Outlet>) {}
}

/// What a stream needs from the hub around it (`hub/open.rs` implements
/// it for [`crate::Hub`]).
pub(crate) trait StreamHost: Clone + Send + Sync + 'static {
    fn config(&self) -> &Config;
    fn log(&self) -> &Arc<dyn EventLog>;
    fn metrics(&self) -> &Arc<Metrics>;
    fn fanout(&self) -> &Arc<Fanout>;
    /// Whether the hub is shutting down; when it begins to, it wakes
    /// every connection.
    fn is_shutting_down(&self) -> bool;
    /// A reconnect delay for the `retry:` a stream ends with.
    fn jittered_retry_ms(&self) -> u64;
    /// The connection received what waited for its user (the preamble
    /// carrying it is written).
    fn waited_events_delivered(&self, conn: &Connection, events: &[SharedEvent]);
    /// The next page of a fresh stream's retained state. Boxed: it runs a
    /// few times per stream at most, and inline its state would make every
    /// stream's future larger for as long as the stream lives.
    fn state_page<'a>(
        &'a self,
        selector: &'a Selector,
        cursor: &'a mut SnapshotCursor,
    ) -> Pin<Box<dyn std::future::Future<Output = Option<Bytes>> + Send + 'a>>;
}

/// A registered connection and where its backlog starts.
pub(crate) struct Opened {
    pub conn: Arc<Connection>,
    pub permit: crate::access::limits::ConnectionPermit,
    pub head: EventId,
    pub start: Start,
    pub valid_until: Option<u64>,
    /// A fresh stream sends its topics' retained state (SPEC §6): the
    /// first page, read here before the stream starts (so a change made
    /// once a client has its `herald.connected` reaches it live), and where
    /// the rest is read from, page by page as the client takes it.
    pub snapshot: Option<(Bytes, SnapshotCursor)>,
    /// What waited for the user (SPEC §7), sent before anything else.
    pub waiting: Vec<SharedEvent>,
    /// The Last-Event-ID the stream stands at before its backlog: sent
    /// after the waiting events, whose ids may lie anywhere.
    pub position: String,
}

pub(crate) struct Writer<H: StreamHost> {
    hub: H,
    conn: Arc<Connection>,
    _permit: ConnectionPermit,
    /// What the stream writes before it goes live; `None` once it is live.
    /// Boxed and dropped then: every idle stream would otherwise carry it.
    opening: Option<Box<Opening>>,
    /// Id of the last event written; nothing at or below it is written again.
    last_written: u64,
    /// When the connection's token stops being valid: the stream then
    /// sends `herald.token_expired` and ends.
    token_expiry: Option<Pin<Box<Sleep>>>,
    scratch: Vec<SharedEvent>,
    /// The socket its chunks go to, when the server's socket path serves
    /// it: parked in the connection while the stream is idle.
    outlet: Option<Arc<Outlet>>,
    finished: bool,
}

/// What a stream writes before it goes live, in this order.
struct Opening {
    /// What goes before the state snapshot, in parts (shared, not yet copied).
    preamble: VecDeque<Bytes>,
    /// Events from the user's inbox in the preamble: once the preamble has
    /// been written, direct messages among them stop waiting.
    waited: Option<Vec<SharedEvent>>,
    /// A fresh stream's retained state, read a page at a time.
    snapshot: Option<SnapshotCursor>,
    /// What goes after the snapshot and before the backlog (`herald.reset`).
    after_snapshot: Bytes,
    /// The backlog still to read, and the id it stops at.
    replay: Option<(ReadFrom, EventId)>,
    /// Ids of the events that waited, sorted: the backlog does not write
    /// them again.
    skip: Vec<u64>,
}

impl<H: StreamHost> Writer<H> {
    pub(crate) fn new(hub: H, opened: Opened) -> Writer<H> {
        let Opened {
            conn,
            permit,
            head,
            start,
            valid_until,
            snapshot,
            waiting,
            position,
        } = opened;
        let config = hub.config();
        let mut preamble = BytesMut::new();
        sse::write_retry(&mut preamble, config.stream.retry_ms);
        let connected = serde_json::json!({
            "connection_id": &*conn.id,
            "topics": conn.selector.patterns.iter().map(|p| p.as_str()).collect::<Vec<_>>(),
            "heartbeat_secs": config.stream.heartbeat_secs,
        });
        sse::write_event(
            &mut preamble,
            None,
            Some("herald.connected"),
            &connected.to_string(),
        );
        // What waited for the user comes first (SPEC §7). Its ids may lie
        // anywhere, so an `id:` field without data (which sets a client's
        // Last-Event-ID and dispatches nothing) then puts the stream back
        // where its backlog starts.
        let mut skip: Vec<u64> = waiting.iter().map(|e| e.id.0).collect();
        let mut parts = VecDeque::with_capacity(waiting.len() + 4);
        parts.push_back(preamble.split().freeze());
        parts.extend(waiting.iter().map(|e| e.frame.clone()));
        if !waiting.is_empty() {
            sse::write_position(&mut preamble, &position);
        }
        // A fresh stream's retained state comes right after (SPEC §6).
        parts.push_back(preamble.split().freeze());
        let snapshot = snapshot.map(|(first, rest)| {
            parts.push_back(first);
            rest
        });
        let replay = match start {
            Start::Live => None,
            Start::Replay(from) => Some((from, head)),
            Start::Reset(coverage) => {
                let reset = serde_json::json!({ "reason": coverage.reset_reason() });
                // The id moves the client's Last-Event-ID to the point the
                // live stream starts from, so a reconnect does not reset again.
                let id = (head.0 != 0).then_some(head);
                sse::write_event(&mut preamble, id, Some("herald.reset"), &reset.to_string());
                None
            }
        };
        parts.retain(|p| !p.is_empty());
        Writer {
            hub,
            conn,
            _permit: permit,
            opening: Some(Box::new(Opening {
                preamble: parts,
                waited: (!waiting.is_empty()).then_some(waiting),
                snapshot,
                after_snapshot: preamble.freeze(),
                replay,
                skip: match replay.is_some() {
                    true => {
                        skip.sort_unstable();
                        skip
                    }
                    false => Vec::new(),
                },
            })),
            // Nothing at or below where the stream starts is written: a
            // client resuming from an id fan-out has not dispatched yet
            // (answered before the dispatch, or read on another node)
            // would otherwise get that event again from its live queue.
            last_written: position.parse().unwrap_or(0),
            token_expiry: valid_until.map(|until| {
                let left = until.saturating_sub(crate::access::auth::now_secs());
                Box::pin(tokio::time::sleep(Duration::from_secs(left)))
            }),
            scratch: Vec::new(),
            outlet: None,
            finished: false,
        }
    }

    pub(crate) fn into_stream(self) -> EventBody {
        EventBody(Box::pin(Body {
            writer: Some(self),
            step: None,
        }))
    }

    /// Notes a write, for the hub's heartbeat tick (`Connection::ping_if_quiet`):
    /// a write does not touch a timer.
    fn wrote(&mut self) {
        self.conn.wrote(clock_ms());
    }

    /// Encodes events from the front of `scratch` that are newer than the
    /// last written, up to [`CHUNK_BYTES`]; the rest stay for the next call.
    /// `None` when none were left to write (`scratch` is then empty).
    fn take_scratch(&mut self) -> Option<Bytes> {
        let skip = self.opening.as_ref().map_or(&[][..], |o| &o.skip[..]);
        let (chunk, taken) = Chunk::gather(&self.scratch, &mut self.last_written, skip);
        self.scratch.drain(..taken);
        chunk
    }

    /// The next chunk of the opening: `None` once it is all written (the
    /// stream goes live), `Some(None)` when the stream must end.
    async fn next_opening_chunk(&mut self) -> Option<Option<Bytes>> {
        let opening = self.opening.as_mut()?;
        if !opening.preamble.is_empty() {
            let mut chunk = Chunk::default();
            while let Some(part) = opening.preamble.front() {
                if !chunk.add(part) {
                    break;
                }
                opening.preamble.pop_front();
            }
            self.wrote();
            return Some(chunk.done());
        }
        if let Some(waited) = opening.waited.take() {
            // Asked for more: the preamble is written.
            self.hub.waited_events_delivered(&self.conn, &waited);
        }
        let opening = self.opening.as_mut()?;
        if let Some(cursor) = opening.snapshot.as_mut() {
            let hub = self.hub.clone();
            if let Some(page) = hub.state_page(&self.conn.selector, cursor).await {
                self.wrote();
                return Some(Some(page));
            }
            self.opening.as_mut()?.snapshot = None;
        }
        let opening = self.opening.as_mut()?;
        if !opening.after_snapshot.is_empty() {
            let chunk = std::mem::take(&mut opening.after_snapshot);
            self.wrote();
            return Some(Some(chunk));
        }
        loop {
            // What is left of the last page goes first.
            if let Some(chunk) = self.take_scratch() {
                self.wrote();
                return Some(Some(chunk));
            }
            let (from, until) = self.opening.as_ref()?.replay?;
            let hub = self.hub.clone();
            let limit = hub.config().stream.replay_batch;
            let request = ReadRequest {
                from,
                until,
                limit,
                selector: &self.conn.selector,
            };
            // Boxed, as `state_page`: a stream lives long, a replay briefly.
            let page = match Box::pin(crate::log::read_all(&**hub.log(), request)).await {
                Ok(page) => page,
                Err(err) => {
                    crate::metrics::Metrics::add(&hub.metrics().log_errors, 1);
                    // Going on would leave a gap; end the stream and let the
                    // client resume with its Last-Event-ID.
                    tracing::warn!(connection = %self.conn.id, %err, "replay failed; closing stream");
                    return Some(None);
                }
            };
            let more = page.len() == limit && !matches!(from, ReadFrom::Last(_));
            self.opening.as_mut()?.replay = match (more, page.last()) {
                (true, Some(last)) => Some((ReadFrom::After(last.id), until)),
                _ => None,
            };
            self.scratch = page;
        }
    }

    /// The next chunk of a live stream: what its queue holds, a heartbeat,
    /// or its end. Polled by hand: an idle stream waits in its connection
    /// (a flag and a waker), not in a future of its own.
    fn poll_live(&mut self, cx: &mut Context<'_>) -> Poll<Option<Bytes>> {
        loop {
            if self.finished {
                return Poll::Ready(None);
            }
            let mut scratch = std::mem::take(&mut self.scratch);
            let taken = self.conn.take_back(&mut scratch, &mut self.last_written);
            self.scratch = scratch;
            let Ok(closed) = taken else {
                // The courier is sending into the socket; it wakes us after.
                ready!(self.conn.poll_ready(cx));
                continue;
            };
            if closed == Some(CloseReason::Overflow) {
                // The client resumes from history; what is queued is stale.
                return Poll::Ready(None);
            }
            let now = std::time::Instant::now();
            if let Some(oldest) = self.scratch.first() {
                let metrics = self.hub.metrics();
                metrics.queue_depth.observe(self.scratch.len() as f64);
                metrics.write_latency.observe(
                    now.saturating_duration_since(oldest.committed_at)
                        .as_secs_f64(),
                );
            }
            if let Some(chunk) = self.take_scratch() {
                self.conn.wrote(clock_ms_at(now));
                return Poll::Ready(Some(chunk));
            }
            // The hub wakes every stream when it begins to shut down
            // (`Hub::shutdown`).
            if closed.is_some() || self.hub.is_shutting_down() {
                self.finished = true;
                let mut buf = BytesMut::new();
                sse::write_retry(&mut buf, self.hub.jittered_retry_ms());
                return Poll::Ready(Some(buf.freeze()));
            }
            if self.conn.take_ping() {
                // Quiet for a heartbeat interval (the hub's tick saw it).
                self.wrote();
                return Poll::Ready(Some(Bytes::from_static(sse::HEARTBEAT)));
            }
            if let Some(expiry) = self.token_expiry.as_mut() {
                if expiry.as_mut().poll(cx).is_ready() {
                    self.finished = true;
                    let mut buf = BytesMut::new();
                    let data = serde_json::json!({ "reason": "token_expired" });
                    sse::write_event(
                        &mut buf,
                        None,
                        Some("herald.token_expired"),
                        &data.to_string(),
                    );
                    return Poll::Ready(Some(buf.freeze()));
                }
            }
            // Idle: the courier writes what comes next, unless something
            // came meanwhile.
            if let Some(outlet) = &self.outlet {
                if !self.conn.park(outlet, self.last_written) {
                    continue;
                }
            }
            ready!(self.conn.poll_ready(cx));
        }
    }
}

/// A stream's body: its writer, polled by hand once it is live. Until
/// then each step of the opening (which reads state and history, and
/// awaits those reads) runs as a boxed future that owns the writer and
/// gives it back: an opening is brief, a live stream long, and a live
/// stream keeps only the writer's own fields.
struct Body<H: StreamHost> {
    /// `None` while a step of the opening has it.
    writer: Option<Writer<H>>,
    step: Option<OpeningStep<H>>,
}

/// One step of the opening, with the writer it borrowed: `None` when the
/// opening is all written, `Some(None)` when the stream must end.
type OpeningStep<H> = Pin<Box<dyn Future<Output = (Writer<H>, Option<Option<Bytes>>)> + Send>>;

// Nothing in it is pinned in place: the writer moves in and out of its
// steps, which are boxed.
impl<H: StreamHost> Unpin for Body<H> {}

impl<H: StreamHost> EventSource for Body<H> {
    fn attach(mut self: Pin<&mut Self>, outlet: Arc<Outlet>) {
        // Attached before the first poll, while the body holds its writer;
        // kept only if the courier runs (a hub built outside a runtime
        // starts no tasks).
        if let Some(writer) = self.writer.as_mut() {
            if writer.hub.fanout().courier().is_running() {
                writer.outlet = Some(outlet);
            }
        }
    }
}

impl<H: StreamHost> Stream for Body<H> {
    type Item = Bytes;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Bytes>> {
        let this = &mut *self;
        loop {
            if let Some(step) = this.step.as_mut() {
                let (writer, out) = ready!(step.as_mut().poll(cx));
                this.step = None;
                let writer = this.writer.insert(writer);
                match out {
                    Some(Some(chunk)) => return Poll::Ready(Some(chunk)),
                    Some(None) => {
                        writer.opening = None;
                        writer.finished = true;
                        return Poll::Ready(None);
                    }
                    // Live events all lie above what waited.
                    None => writer.opening = None,
                }
            }
            let Some(writer) = this.writer.as_mut() else {
                return Poll::Ready(None);
            };
            if writer.opening.is_none() {
                return writer.poll_live(cx);
            }
            let mut writer = this.writer.take().expect("the writer is here");
            this.step = Some(Box::pin(async move {
                let out = writer.next_opening_chunk().await;
                (writer, out)
            }));
        }
    }
}

impl<H: StreamHost> Drop for Writer<H> {
    fn drop(&mut self) {
        // The courier no longer writes into its socket, which closes.
        self.conn.unpark();
        self.hub.fanout().unregister(self.conn.key);
        tracing::debug!(connection = %self.conn.id, "stream closed");
    }
}
