//! The ordered event log: the one seam between the hub and where events live.
//!
//! Every store Herald runs on — the in-memory log here, the embedded durable
//! store, a shared Redis Streams or NATS JetStream engine — implements
//! [`EventLog`], and the hub needs nothing else from it. The contract:
//!
//! * **Ids.** The log assigns [`EventId`]s, strictly increasing across all
//!   topics, and never issues the same id twice for a data directory (or a
//!   cluster). One Last-Event-ID therefore names a point in *one* sequence,
//!   whatever mix of topics and patterns a connection reads.
//! * **Commit, then hand over, in order.** [`EventLog::append`] returns only
//!   once its events are stored with the configured durability. Every
//!   committed event — from this node or, clustered, from any node — is given
//!   to the [`CommitSink`] exactly once, in id order, by one caller at a time,
//!   and only after [`EventLog::read`] can return it. Fan-out relies on this
//!   to join replay and live delivery without gap or duplicate (see
//!   `stream.rs`). [`EventLog::attach`] says where that sequence stands
//!   when fan-out joins it (after a restart, not at zero).
//! * **Retention is visible.** Events leave history by count or age
//!   (eviction), or at the end of their `ttl` (expiry). [`EventLog::coverage`]
//!   tells whether a Last-Event-ID can still be resumed without a gap: an
//!   evicted matching event after it means no; an expired one does not count,
//!   its life simply ended.
//! * **Idempotency** lives in the log, so it holds across nodes: a draft
//!   whose `idempotency_key` was committed within the window is not committed
//!   again; its first id is returned with `duplicate: true`.

pub(crate) mod durable;
pub(crate) mod engine;
pub(crate) mod head;
pub(crate) mod journal;
pub(crate) mod memory;
#[cfg(feature = "nats")]
pub(crate) mod nats;
#[cfg(feature = "redis")]
pub(crate) mod redis;
#[cfg(any(feature = "redis", feature = "nats"))]
mod replica;

use std::sync::Arc;

use async_trait::async_trait;

use crate::values::event::{EventDraft, EventId, SharedEvent};
use crate::values::selector::Selector;

pub use durable::{DurableLog, Fsync, OpenError, OpenReport};
pub use engine::ConnectError;
pub use journal::JournalError;
pub use memory::{MemoryLog, MemoryLogSettings, Retention};

/// Receives committed events, in id order. Implemented by fan-out. It is
/// called with the log's history lock held, so it must not block: it
/// queues, and takes only locks that come after the history's in the
/// hub's lock order (`blocking.rs`, checked in debug builds).
pub trait CommitSink: Send + Sync + 'static {
    /// Events just committed, in id order, each once.
    fn committed(&self, events: &[SharedEvent]);

    /// Clustered: a control record, in its place among the events.
    fn control(&self, _record: &Control) {}

    /// Clustered, once at attach: what the engine's log holds that bears on
    /// users' inboxes (events addressed to users, control records), in log
    /// order, so that a node that starts rebuilds the same inboxes as
    /// every other node.
    fn recovered(&self, _entries: &[Entry]) {}
}

/// A record of a clustered log that is not an event: what one node tells
/// every other about a user's inbox (SPEC §7). Never sent to a client.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum Control {
    /// A connection of `user` received these events: direct messages that
    /// waited for the user stop waiting on every node.
    Delivered {
        /// The user.
        user: String,
        /// The events received.
        ids: Vec<EventId>,
    },
    /// `user` acknowledged these events.
    Acked {
        /// The user.
        user: String,
        /// The events acknowledged.
        ids: Vec<EventId>,
    },
    /// An admin closed this stream, or every stream of this user: the node
    /// holding them closes them (their clients reconnect).
    Close {
        /// The stream to close.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        connection: Option<String>,
        /// The user whose streams to close.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        user: Option<String>,
    },
}

/// A user's first stream on a presence topic opened on this node
/// (`joined`), or their last one here closed, with the `herald.presence`
/// event that announces it.
#[derive(Debug, Clone)]
pub struct PresenceUpdate {
    /// The presence topic.
    pub topic: crate::values::topic::Topic,
    /// The user who joined or left.
    pub user: String,
    /// Joined (`true`) or left.
    pub joined: bool,
    /// The `herald.presence` event published on the topic.
    pub announcement: EventDraft,
}

impl PresenceUpdate {
    /// A join or leave, with its announcement drafted.
    pub fn new(topic: crate::values::topic::Topic, user: String, joined: bool) -> PresenceUpdate {
        let announcement = EventDraft {
            event_type: Some(PRESENCE_EVENT.into()),
            data: serde_json::json!({
                "topic": topic.as_str(),
                "user": &user,
                "action": if joined { "join" } else { "leave" },
            })
            .to_string(),
            topics: vec![topic.clone()],
            ..Default::default()
        };
        PresenceUpdate {
            topic,
            user,
            joined,
            announcement,
        }
    }
}

/// The event type of join and leave events on presence topics.
pub const PRESENCE_EVENT: &str = "herald.presence";

/// The version a retained value must have for a change to commit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StateGuard {
    /// Names the value: topic, newline, key.
    pub slot: String,
    /// `None`: there must be no value.
    pub expect: Option<u64>,
    /// What it becomes, `{"version", "value"}` as JSON; `None` for a delete.
    pub entry: Option<String>,
}

/// A guarded change lost to another one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Conflict {
    /// The value's version in the engine now.
    pub current: Option<u64>,
    /// The log's last id when the guard failed: the change that won is at
    /// or below it.
    pub engine_head: EventId,
}

/// One record of a clustered log.
#[derive(Debug, Clone)]
pub enum Entry {
    /// A committed event, which the engine gives back by its id while it
    /// keeps it: past the replica's hot window it is held by its id only.
    Event(SharedEvent),
    /// A committed event the engine will not give back by its id later
    /// (NATS keeps only the last message of a state slot or a presence
    /// pair): the replica holds it whole while it is retained.
    Held(SharedEvent),
    /// A control record and its place in the log.
    Control {
        /// Its place in the log.
        id: EventId,
        /// The record.
        record: Control,
    },
    /// A record the engine holds that this node cannot decode (no writer of
    /// this version makes them): skipped, logged and counted, so that one bad
    /// record does not stop the node; its id is passed over.
    Unreadable {
        /// Its place in the log, passed over.
        id: EventId,
        /// Why it could not be decoded.
        reason: String,
    },
}

impl Entry {
    /// The record's place in the log.
    pub fn id(&self) -> EventId {
        match self {
            Entry::Event(e) | Entry::Held(e) => e.id,
            Entry::Control { id, .. } | Entry::Unreadable { id, .. } => *id,
        }
    }
}

/// Records this process skipped because it could not decode them (a
/// journal or inbox record whose CRC holds, a Redis or NATS message): no
/// writer of this version makes them, so any is worth a look. Counted for
/// `herald_unreadable_records_total` and logged where it is met.
static UNREADABLE: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

/// Counts one skipped unreadable record (see [`unreadable_records`]).
pub(crate) fn skipped_unreadable() {
    UNREADABLE.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
}

/// Unreadable records skipped since this process started.
pub fn unreadable_records() -> u64 {
    UNREADABLE.load(std::sync::atomic::Ordering::Relaxed)
}

/// Where a read starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReadFrom {
    /// Matching events with an id greater than this one.
    After(EventId),
    /// The last `n` matching events.
    Last(usize),
    /// Matching events published at or after this time (Unix ms).
    Since(u64),
}

/// A read of retained, unexpired events matching `selector`, oldest first.
#[derive(Debug, Clone, Copy)]
pub struct ReadRequest<'a> {
    /// Where the read starts.
    pub from: ReadFrom,
    /// No event after this id is returned: the caller's live queue has them.
    pub until: EventId,
    /// At most this many events (for [`ReadFrom::Last`], the smaller of the two).
    pub limit: usize,
    /// Which events match: topics, event types, the reader's user and claims.
    pub selector: &'a Selector,
}

/// Most candidate events one [`EventLog::read`] examines while it holds the
/// log's lock. A read whose filter passes few of them (an event type no
/// event has, a wildcard over many quiet topics) stops there and says where
/// to go on, so publishes never wait behind a scan that grows with the
/// retained log: [`read_all`] goes on, letting the lock go in between.
pub const SCAN_BUDGET: usize = 4096;

/// What one [`EventLog::read`] returns.
#[derive(Debug, Default)]
pub struct Page {
    /// Oldest first.
    pub events: Vec<SharedEvent>,
    /// Set when the read stopped at [`SCAN_BUDGET`] before it had `limit`
    /// events: the start and `until` of the read that goes on. For `After`
    /// and `Since` its events follow these; for `Last` they come before
    /// them, and it asks for the rest of the count.
    pub resume: Option<(ReadFrom, EventId)>,
}

/// Reads up to `limit` events (for `Last(n)`, `n` at most), following
/// pages that stopped at the scan budget. Fewer than `limit` events means
/// there are no more up to `until`.
pub async fn read_all<L: EventLog + ?Sized>(
    log: &L,
    mut request: ReadRequest<'_>,
) -> Result<Vec<SharedEvent>, LogError> {
    let limit = match request.from {
        ReadFrom::Last(n) => n.min(request.limit),
        _ => request.limit,
    };
    let mut out: Vec<SharedEvent> = Vec::new();
    loop {
        let page = log.read(request).await?;
        if matches!(request.from, ReadFrom::Last(_)) {
            let mut earlier = page.events;
            earlier.append(&mut out);
            out = earlier;
        } else {
            out.extend(page.events);
        }
        match page.resume {
            Some((from, until)) if out.len() < limit => {
                request.from = from;
                request.until = until;
                request.limit = limit - out.len();
                // Others (a publish, another replay) take the lock now.
                tokio::task::yield_now().await;
            }
            _ => return Ok(out),
        }
    }
}

/// Whether history can resume a stream after a given id.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Coverage {
    /// Every matching event after the id is still retained.
    Covered,
    /// This log never issued the id (another log, or the future).
    Unknown,
    /// Matching events after the id have been evicted.
    Expired,
}

impl Coverage {
    /// The `reason` of a `herald.reset` event.
    pub fn reset_reason(self) -> Option<&'static str> {
        match self {
            Coverage::Covered => None,
            Coverage::Unknown => Some("unknown_id"),
            Coverage::Expired => Some("history_expired"),
        }
    }
}

/// The result of appending one draft.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Appended {
    /// The event's id.
    pub id: EventId,
    /// True when the idempotency key was already committed: nothing new was
    /// stored or delivered, and `id` is the first publish's id.
    pub duplicate: bool,
}

/// Why the log could not serve a request.
#[derive(Debug, thiserror::Error)]
pub enum LogError {
    /// The store or engine cannot be reached or written now; retry later.
    #[error("event log unavailable: {0}")]
    Unavailable(String),
    /// The request failed for a reason retrying will not change.
    #[error("event log failure: {0}")]
    Failed(String),
}

/// The ordered event log. See the module documentation for the contract.
#[async_trait]
pub trait EventLog: Send + Sync + 'static {
    /// Connects the log to fan-out. Called once, before the first append.
    /// Returns the id of the last event committed before now (recovered
    /// from disk, or committed elsewhere in a cluster): every event up to it
    /// is readable, every later one will reach the sink.
    fn attach(&self, sink: Arc<dyn CommitSink>) -> EventId;

    /// Stores a batch, all or nothing, and returns one [`Appended`] per draft
    /// in order.
    async fn append(&self, drafts: Vec<EventDraft>) -> Result<Vec<Appended>, LogError>;

    /// One page of a read; see [`Page`] and [`read_all`], which callers use.
    async fn read(&self, request: ReadRequest<'_>) -> Result<Page, LogError>;

    /// Whether history still holds every event matching `selector` after
    /// `after` (a resume with `Last-Event-ID`).
    async fn coverage(&self, after: EventId, selector: &Selector) -> Result<Coverage, LogError>;

    /// Whether the log can take writes now: `Err` with the reason when its
    /// last write failed (a full disk, an unreachable engine). `/readyz`
    /// reports it.
    fn health(&self) -> Result<(), String> {
        Ok(())
    }

    /// Appends a retained value's change (SPEC §6) only if the value's
    /// version is still `guard.expect`. One node: the caller holds the
    /// state lock, so nothing else can change it; clustered, the engine
    /// checks, and a change made meanwhile through another node is a
    /// [`Conflict`].
    async fn append_guarded(
        &self,
        draft: EventDraft,
        _guard: StateGuard,
    ) -> Result<Result<Appended, Conflict>, LogError> {
        Ok(Ok(self.append(vec![draft]).await?.remove(0)))
    }

    /// Publishes presence announcements. One node: each is an event (the
    /// caller counts streams). Clustered: each is written only when it
    /// changes whether the user is on the topic on *any* node.
    async fn append_presence(&self, updates: Vec<PresenceUpdate>) -> Result<(), LogError> {
        let drafts = updates.into_iter().map(|u| u.announcement).collect();
        self.append(drafts).await.map(|_| ())
    }

    /// Clustered: the operations only a log shared by many nodes has.
    /// `None` on one node.
    fn cluster(&self) -> Option<&dyn ClusterLog> {
        None
    }

    /// True when other nodes share this log.
    fn clustered(&self) -> bool {
        self.cluster().is_some()
    }

    /// What this node's history holds and what the global caps pushed
    /// out (metrics).
    fn retention(&self) -> memory::Retention {
        memory::Retention::default()
    }

    /// A short name for logs and health output (`memory`, `redb`, `redis`…).
    fn kind(&self) -> &'static str;
}

/// What a log shared by the nodes of a cluster adds to [`EventLog`]
/// (Redis Streams, NATS JetStream). A node reaches it through
/// [`EventLog::cluster`]; single-node logs have none of it.
#[async_trait]
pub trait ClusterLog: Send + Sync {
    /// This node's name.
    fn node(&self) -> &str;

    /// The state of the connection to the engine.
    fn engine(&self) -> EngineStatus;

    /// Waits (briefly) until every event up to `id` is readable here. A
    /// node may not have read an id another node issued yet; a stream
    /// resuming from it waits for that before it starts.
    async fn catch_up(&self, id: EventId);

    /// Waits (briefly) until this node has applied everything the engine
    /// held when asked: one round trip to the engine, then the wait of
    /// [`ClusterLog::catch_up`]. A read after it sees every change that
    /// was acknowledged on any node before it.
    async fn catch_up_with_engine(&self) -> Result<(), LogError>;

    /// Every retained value as the engine holds it (`topic` newline `key`
    /// → `{"version", "value"}` JSON), with the log's last id at that
    /// instant: the state after every change up to that id.
    async fn retained_state(&self) -> Result<(EventId, Vec<(String, String)>), LogError>;

    /// Appends control records for every node to apply (in their place in
    /// the log, through [`CommitSink::control`]), and returns once this
    /// node has applied them.
    async fn append_control(&self, records: Vec<Control>) -> Result<(), LogError>;

    /// Publishes this node's numbers (a JSON object) where the other nodes
    /// read them; they expire unless reported again.
    async fn report_node(&self, node: &str, stats: serde_json::Value) -> Result<(), LogError>;

    /// The (topic, user) pairs the engine counts this node in. A node
    /// compares them with its streams now and then and announces the
    /// difference, which heals an announcement that failed or a node the
    /// others took for gone.
    async fn presence_here(&self) -> Result<Vec<(crate::values::topic::Topic, String)>, LogError>;

    /// Upkeep every node runs every few seconds (trimming the engine's
    /// log, retiring nodes that stopped reporting).
    async fn maintain(&self);

    /// The numbers every live node reported last.
    async fn nodes(&self) -> Result<Vec<serde_json::Value>, LogError>;
}

/// How a clustered log's engine connection stands (metrics, stats).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EngineStatus {
    /// The log is reading the engine now.
    pub connected: bool,
    /// Reconnect attempts since start.
    pub reconnects: u64,
}

/// Milliseconds since the Unix epoch.
pub(crate) fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}
