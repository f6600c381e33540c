//! One subscriber's state, shared by fan-out (which fills its queue) and its
//! stream writer (which empties it).
//!
//! The queue is bounded by `stream.queue_capacity` events. What happens when
//! it is full is the `stream.overflow` policy: `disconnect` closes the stream
//! (the client resumes from history with Last-Event-ID, so nothing is lost
//! while history covers it); `drop_oldest` and `drop_newest` keep the stream
//! and count each dropped event. Either way a slow reader costs at most
//! `queue_capacity` shared event handles, never an unbounded buffer.
//!
//! The queue lock is a `parking_lot::Mutex`: fan-out holds it for a push,
//! the writer for a swap of the whole deque, neither across an await.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use parking_lot::Mutex;

use crate::config::Overflow;
use crate::delivery::outlet::{Chunk, Outlet};
use crate::values::event::SharedEvent;
use crate::values::pattern::Pattern;
use crate::values::selector::Selector;

/// Why a stream was closed by the hub rather than by its client.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum CloseReason {
    /// The queue overflowed under the `disconnect` policy.
    Overflow,
    /// An operator or the hub closed it.
    Closed,
}

/// The courier is sending into a stream's socket; its writer waits.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct Sending;

/// What the courier sends into a parked socket, taken out of the queue.
struct ParkedSend {
    outlet: Arc<Outlet>,
    data: bytes::Bytes,
    /// Events that were queued.
    depth: usize,
    /// When the oldest of them was committed.
    oldest: Instant,
}

/// What happened to one offered event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Offered {
    Queued,
    /// Already queued through another matching pattern.
    Duplicate,
    /// Dropped by `drop_newest`, or the oldest was dropped by `drop_oldest`.
    Dropped,
    /// The queue overflowed and the stream is closing (`disconnect`).
    Disconnected,
    /// The stream was already closing.
    Closed,
    /// Queued for a stream that is idle with its socket parked: hand it to
    /// the courier, which writes it (`courier.rs`).
    ForCourier,
}

pub(crate) struct Connection {
    /// Internal key of the fan-out registry and index.
    pub key: u64,
    /// Public id, sent in `herald.connected` and used by `to.connections`.
    pub id: Arc<str>,
    /// Who the connection is and what it joined with (its replay used
    /// these patterns).
    pub selector: Selector,
    /// The patterns it receives now, once `POST
    /// /v1/connections/{id}/subscriptions` changed them from the
    /// selector's (`None` until then, as for most connections). Fan-out's
    /// index follows them; only fan-out writes them, under its registry
    /// lock.
    /// (A thin box: 16 bytes in every connection instead of a `Vec`'s 32.)
    #[allow(clippy::box_collection)]
    changed_patterns: Mutex<Option<Box<Vec<Pattern>>>>,
    /// What its token may read, for changes of its subscriptions.
    pub rights: crate::access::auth::Rights,
    /// An SSE stream, not a long poll: its user's joins and leaves of
    /// presence topics are announced (long polls come and go with every
    /// answer), and it gets a `: ping` after a quiet heartbeat interval.
    pub is_stream: bool,
    /// When its writer last wrote ([`clock_ms`]).
    last_write_ms: AtomicU64,
    /// Set by the hub's heartbeat tick ([`Connection::ping_if_quiet`]),
    /// taken by the writer.
    ping_due: AtomicBool,
    capacity: usize,
    overflow: Overflow,
    /// Highest id ever offered. Fan-out offers events in id order, so an id
    /// at or below it was already queued through another pattern.
    last_offered: AtomicU64,
    queue: Mutex<Queue>,
    /// Raised by [`Connection::wake`], taken by the writer. A flag and a
    /// waker rather than a `Notify`: the writer polls it by hand, so an
    /// idle stream keeps no waiter of its own.
    wake: crate::hangup::Signal,
    dropped: AtomicU64,
    /// Thrown when the stream must end at once. The transport (see
    /// `server.rs`) then drops the socket: a reader that stopped reading
    /// blocks every write, so the stream itself would never get to end.
    transport: Option<crate::Hangup>,
}

struct Queue {
    items: VecDeque<SharedEvent>,
    closed: Option<CloseReason>,
    /// The stream's socket while its writer is idle (parked): the courier
    /// writes what is queued. Taken back by the writer's next drain.
    outlet: Option<Arc<Outlet>>,
    /// Id of the last event written, as the writer left it when it parked
    /// and the courier moved it since: the writer's floor when it drains.
    written: u64,
    /// The courier is sending into the parked socket, without the lock.
    sending: bool,
    /// The writer was polled while the courier was sending: wake it after.
    writer_waiting: bool,
}

impl Connection {
    pub(crate) fn new(
        key: u64,
        id: Arc<str>,
        selector: Selector,
        capacity: usize,
        overflow: Overflow,
        transport: Option<crate::Hangup>,
    ) -> Connection {
        Connection {
            key,
            id,
            changed_patterns: Mutex::new(None),
            rights: crate::access::auth::Rights::All,
            selector,
            is_stream: false,
            last_write_ms: AtomicU64::new(clock_ms()),
            ping_due: AtomicBool::new(false),
            capacity: capacity.max(1),
            overflow,
            last_offered: AtomicU64::new(0),
            queue: Mutex::new(Queue {
                items: VecDeque::new(),
                closed: None,
                outlet: None,
                written: 0,
                sending: false,
                writer_waiting: false,
            }),
            wake: Default::default(),
            dropped: AtomicU64::new(0),
            transport,
        }
    }

    /// Queues `event` for this connection. Called by fan-out only, in id order.
    pub(crate) fn offer(&self, event: &SharedEvent) -> Offered {
        if self.last_offered.fetch_max(event.id.0, Ordering::Relaxed) >= event.id.0 {
            return Offered::Duplicate;
        }
        let mut q = self.queue.lock();
        if q.closed.is_some() {
            return Offered::Closed;
        }
        if let Some(key) = event.coalesce_key.as_deref() {
            // Only the newest of a coalesce key waits in the queue; removing
            // the older one keeps the rest in id order.
            if let Some(pos) = q
                .items
                .iter()
                .position(|e| e.coalesce_key.as_deref() == Some(key))
            {
                q.items.remove(pos);
            }
        }
        let mut outcome = Offered::Queued;
        if q.items.len() >= self.capacity {
            match self.overflow {
                Overflow::Disconnect => {
                    q.closed = Some(CloseReason::Overflow);
                    q.items = VecDeque::new();
                    q.outlet = None;
                    drop(q);
                    self.end_transport();
                    return Offered::Disconnected;
                }
                Overflow::DropNewest => {
                    self.dropped.fetch_add(1, Ordering::Relaxed);
                    return Offered::Dropped;
                }
                Overflow::DropOldest => {
                    q.items.pop_front();
                    self.dropped.fetch_add(1, Ordering::Relaxed);
                    outcome = Offered::Dropped;
                }
            }
        }
        let was_empty = q.items.is_empty();
        q.items.push_back(event.clone());
        let parked = q.outlet.is_some();
        drop(q);
        if was_empty {
            if parked {
                return Offered::ForCourier;
            }
            self.wake();
        }
        outcome
    }

    /// Moves every waiting event into `out`; returns why the connection
    /// must close, if it must (a long poll's drain: it never parks).
    pub(crate) fn drain(&self, out: &mut Vec<SharedEvent>) -> Option<CloseReason> {
        let mut q = self.queue.lock();
        out.extend(q.items.drain(..));
        q.closed
    }

    /// A stream writer's drain: moves every waiting event into `out` and
    /// takes the socket back from the courier, if it was parked; raises
    /// `last_written` to what the courier wrote meanwhile. Returns why the
    /// stream must close, if it must; `Err(Sending)` while the courier
    /// sends into the socket: the writer is woken once it is done.
    pub(crate) fn take_back(
        &self,
        out: &mut Vec<SharedEvent>,
        last_written: &mut u64,
    ) -> Result<Option<CloseReason>, Sending> {
        let mut q = self.queue.lock();
        if q.sending {
            q.writer_waiting = true;
            return Err(Sending);
        }
        out.extend(q.items.drain(..));
        q.outlet = None;
        *last_written = (*last_written).max(q.written);
        Ok(q.closed)
    }

    /// Parks the stream's socket while its writer is idle: what is queued
    /// next, the courier writes. `false` when something is queued or the
    /// stream is closing: the writer drains again instead. Not parked (but
    /// `true`: the writer waits) while bytes a courier left wait for the
    /// socket's task, which sends them first.
    pub(crate) fn park(&self, outlet: &Arc<Outlet>, last_written: u64) -> bool {
        let mut q = self.queue.lock();
        if !q.items.is_empty() || q.closed.is_some() {
            return false;
        }
        q.written = last_written;
        if !outlet.has_leftover() {
            q.outlet = Some(outlet.clone());
        }
        true
    }

    /// Takes the socket back from the courier for good (the writer is gone).
    pub(crate) fn unpark(&self) {
        self.queue.lock().outlet = None;
    }

    /// The courier's turn: writes what is queued into the parked socket, in
    /// one send, and notes it. The queue's lock is not held while it sends
    /// (fan-out would wait on it, and on a busy core spin): the events go
    /// out of the queue first, and their bytes the socket does not take
    /// are left in the outlet, for the stream's task to send first; the
    /// stream then goes back to its writer, woken. A writer polled
    /// meanwhile waits for the send to end ([`Connection::take_back`]).
    /// Returns what it wrote: how many events were queued, and how long
    /// the oldest of them waited since its commit.
    pub(crate) fn write_parked(&self) -> Option<(usize, Duration)> {
        let send = self.begin_send()?;
        let now = Instant::now();
        let sent = send.outlet.write_or_keep(&send.data);
        self.wrote(clock_ms_at(now));
        self.end_send(sent.unwrap_or(false));
        Some((send.depth, now.saturating_duration_since(send.oldest)))
    }

    /// The first half of [`Connection::write_parked`], under the lock:
    /// takes the events to send out of the queue and marks the send.
    fn begin_send(&self) -> Option<ParkedSend> {
        let mut guard = self.queue.lock();
        let q = &mut *guard;
        // `None`: its writer took the socket back and drained the queue.
        if q.outlet.is_none() || q.closed.is_some() {
            return None;
        }
        let depth = q.items.len();
        let oldest = q.items.front()?.committed_at;
        let (data, taken) = Chunk::gather(&q.items, &mut q.written, &[]);
        q.items.drain(..taken);
        // Only events already written were queued.
        let data = data?;
        let outlet = q.outlet.clone()?;
        q.sending = true;
        Some(ParkedSend {
            outlet,
            data,
            depth,
            oldest,
        })
    }

    /// The second half, under the lock again: `whole` when the socket
    /// took every byte. Otherwise (a part went, or none, or the socket
    /// failed) the stream goes back to its writer, woken; so it does when
    /// more was queued meanwhile, or when the writer was polled during the
    /// send.
    fn end_send(&self, whole: bool) {
        let mut q = self.queue.lock();
        q.sending = false;
        let mut wake = std::mem::take(&mut q.writer_waiting);
        if !whole || (!q.items.is_empty() && q.outlet.is_some()) {
            q.outlet = None;
            wake = true;
        }
        drop(q);
        if wake {
            self.wake();
        }
    }

    /// Waits until an event is queued or the connection is closed. A wake-up
    /// that arrives between a `drain` and this call is kept, not lost.
    pub(crate) async fn ready(&self) {
        std::future::poll_fn(|cx| self.poll_ready(cx)).await
    }

    /// [`Connection::ready`] by hand: `Ready` once woken since it was last
    /// ready, else `Pending` with `cx`'s waker kept for the next wake-up.
    /// One task waits on a connection (its stream's, or its long poll's).
    pub(crate) fn poll_ready(&self, cx: &mut Context<'_>) -> Poll<()> {
        self.wake.poll_take(cx)
    }

    /// Wakes its writer (events queued, the stream closed, a heartbeat
    /// due, the hub shutting down).
    pub(crate) fn wake(&self) {
        self.wake.raise();
    }

    /// Closes the stream from the hub's side: its writer flushes what is
    /// queued, sends `retry:` and ends it, so the client comes back.
    pub(crate) fn close(&self, reason: CloseReason) {
        let mut q = self.queue.lock();
        if q.closed.is_none() {
            q.closed = Some(reason);
        }
        drop(q);
        self.wake();
    }

    fn end_transport(&self) {
        self.wake();
        if let Some(transport) = &self.transport {
            transport.hang_up();
        }
    }

    /// Notes that its writer wrote at `at_ms` ([`clock_ms`]).
    pub(crate) fn wrote(&self, at_ms: u64) {
        self.last_write_ms.store(at_ms, Ordering::Relaxed);
    }

    /// Whether a heartbeat is due; taking it clears it.
    pub(crate) fn take_ping(&self) -> bool {
        self.ping_due.load(Ordering::Relaxed) && self.ping_due.swap(false, Ordering::Relaxed)
    }

    /// Marks a heartbeat due and wakes the writer when the stream has
    /// written nothing for `every_ms` (called by the hub's heartbeat tick).
    pub(crate) fn ping_if_quiet(&self, now_ms: u64, every_ms: u64) {
        if !self.is_stream {
            return;
        }
        let quiet = now_ms.saturating_sub(self.last_write_ms.load(Ordering::Relaxed));
        if quiet >= every_ms && !self.ping_due.swap(true, Ordering::Relaxed) {
            self.wake();
        }
    }

    /// Events dropped by `drop_oldest`/`drop_newest` so far.
    pub(crate) fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }

    /// The patterns it receives now.
    pub(crate) fn patterns(&self) -> Vec<Pattern> {
        self.with_patterns(<[Pattern]>::to_vec)
    }

    /// Runs `f` on the patterns it receives now, under their lock.
    pub(crate) fn with_patterns<R>(&self, f: impl FnOnce(&[Pattern]) -> R) -> R {
        let changed = self.changed_patterns.lock();
        f(changed.as_deref().map_or(&self.selector.patterns, |v| v))
    }

    /// Runs `f` on the patterns it receives now, to change them (fan-out
    /// only, under its registry lock).
    pub(crate) fn change_patterns<R>(&self, f: impl FnOnce(&mut Vec<Pattern>) -> R) -> R {
        let mut changed = self.changed_patterns.lock();
        f(changed.get_or_insert_with(|| Box::new(self.selector.patterns.clone())))
    }

    pub(crate) fn queued(&self) -> usize {
        self.queue.lock().items.len()
    }
}

/// Milliseconds on a monotonic clock that starts with the process: when
/// streams last wrote, for the heartbeat tick.
pub(crate) fn clock_ms() -> u64 {
    clock_ms_at(Instant::now())
}

/// [`clock_ms`] at `at`.
pub(crate) fn clock_ms_at(at: Instant) -> u64 {
    static START: OnceLock<Instant> = OnceLock::new();
    let start = *START.get_or_init(Instant::now);
    at.saturating_duration_since(start).as_millis() as u64
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::values::event::{Event, EventDraft, EventId};
    use crate::values::topic::Topic;

    /// A connection `c` with key `key` and no patterns, for tests.
    pub(crate) fn test_connection(key: u64, capacity: usize, overflow: Overflow) -> Connection {
        let selector = Selector {
            connection_id: "c".into(),
            patterns: vec![],
            event_types: None,
            user: None,
            meta: Default::default(),
        };
        Connection::new(key, "c".into(), selector, capacity, overflow, None)
    }

    fn conn(capacity: usize, overflow: Overflow) -> Connection {
        test_connection(1, capacity, overflow)
    }

    fn ev(id: u64, coalesce: Option<&str>) -> SharedEvent {
        let draft = EventDraft {
            topics: vec![Topic::new("t").unwrap()],
            coalesce_key: coalesce.map(Into::into),
            ..Default::default()
        };
        Arc::new(Event::commit(draft, EventId(id), 0))
    }

    fn drained(c: &Connection) -> (Vec<u64>, Option<CloseReason>) {
        let mut out = Vec::new();
        let closed = c.drain(&mut out);
        (out.iter().map(|e| e.id.0).collect(), closed)
    }

    #[test]
    fn drop_newest_keeps_the_first() {
        let c = conn(2, Overflow::DropNewest);
        for id in 1..=4 {
            c.offer(&ev(id, None));
        }
        assert_eq!(drained(&c), (vec![1, 2], None));
        assert_eq!(c.dropped(), 2);
    }

    #[test]
    fn drop_oldest_keeps_the_last() {
        let c = conn(2, Overflow::DropOldest);
        for id in 1..=4 {
            c.offer(&ev(id, None));
        }
        assert_eq!(drained(&c), (vec![3, 4], None));
        assert_eq!(c.dropped(), 2);
    }

    #[test]
    fn disconnect_closes_and_frees_the_queue() {
        let c = conn(2, Overflow::Disconnect);
        assert_eq!(c.offer(&ev(1, None)), Offered::Queued);
        assert_eq!(c.offer(&ev(2, None)), Offered::Queued);
        assert_eq!(c.offer(&ev(3, None)), Offered::Disconnected);
        assert_eq!(c.offer(&ev(4, None)), Offered::Closed);
        assert_eq!(drained(&c), (vec![], Some(CloseReason::Overflow)));
    }

    #[test]
    fn a_ping_is_due_once_per_quiet_interval_and_only_for_streams() {
        let mut stream = conn(10, Overflow::Disconnect);
        stream.is_stream = true;
        stream.wrote(1_000);
        stream.ping_if_quiet(1_999, 1_000);
        assert!(!stream.take_ping(), "not quiet for an interval yet");
        stream.ping_if_quiet(2_000, 1_000);
        stream.ping_if_quiet(2_250, 1_000);
        assert!(stream.take_ping());
        assert!(!stream.take_ping(), "taken once");
        stream.wrote(2_300);
        stream.ping_if_quiet(3_000, 1_000);
        assert!(!stream.take_ping(), "a write starts the interval again");
        let poll = conn(10, Overflow::Disconnect);
        poll.wrote(0);
        poll.ping_if_quiet(10_000, 1_000);
        assert!(!poll.take_ping(), "long polls get no heartbeats");
    }

    /// Whether its writer was woken (taking the wake-up).
    fn woken(c: &Connection) -> bool {
        let mut cx = Context::from_waker(std::task::Waker::noop());
        c.poll_ready(&mut cx).is_ready()
    }

    #[tokio::test]
    async fn a_writer_polled_during_a_courier_send_waits_for_it_and_is_woken_after() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let client = tokio::net::TcpStream::connect(listener.local_addr().unwrap());
        let (_client, accepted) = tokio::join!(client, listener.accept());
        let outlet = Arc::new(Outlet::new(accepted.unwrap().0, true));
        let c = conn(10, Overflow::Disconnect);
        assert!(c.park(&outlet, 0));
        assert_eq!(c.offer(&ev(1, None)), Offered::ForCourier);
        woken(&c);
        let send = c.begin_send().expect("an event to send");
        // Polled now, the writer takes neither the socket nor the events.
        let (mut out, mut floor) = (Vec::new(), 0);
        assert!(c.take_back(&mut out, &mut floor).is_err());
        assert!(out.is_empty());
        assert!(!woken(&c), "not before the send is over");
        assert!(send.outlet.write_or_keep(&send.data).unwrap());
        c.end_send(true);
        assert!(woken(&c), "woken once the send is over");
        c.take_back(&mut out, &mut floor).unwrap();
        assert_eq!(floor, 1, "what the courier sent is not written again");
        assert!(c.begin_send().is_none(), "the writer has the socket back");
    }

    #[test]
    fn duplicates_and_coalescing() {
        let c = conn(10, Overflow::Disconnect);
        assert_eq!(c.offer(&ev(1, Some("k"))), Offered::Queued);
        assert_eq!(c.offer(&ev(1, Some("k"))), Offered::Duplicate);
        c.offer(&ev(2, None));
        c.offer(&ev(3, Some("k")));
        assert_eq!(drained(&c), (vec![2, 3], None));
    }
}
